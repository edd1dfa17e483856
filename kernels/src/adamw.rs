//! AdamW on the CPU: one step over one parameter tensor, in the arithmetic PyTorch's AdamW
//! uses (decoupled weight decay first, then the bias-corrected update), so that results can
//! be compared with PyTorch and with the fused CUDA kernel (`cuda/optim.cu`).

use rayon::prelude::*;

/// AdamW's hyper-parameters for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay (PolyLM: 0.9).
    pub beta1: f32,
    /// Second-moment decay (PolyLM: 0.95).
    pub beta2: f32,
    /// Denominator epsilon (PolyLM: 1e-8).
    pub eps: f32,
    /// Decoupled weight decay of this tensor (0 for biases and 1-D parameters).
    pub weight_decay: f32,
}

/// One AdamW step at `step` (counting from 1) with gradients multiplied by `grad_scale`
/// (the clipping factor, or 1):
///
/// ```text
/// g = grad · grad_scale
/// m = β1·m + (1 − β1)·g          v = β2·v + (1 − β2)·g²
/// p = p·(1 − lr·wd) − (lr / (1 − β1^step)) · m / (√v / √(1 − β2^step) + eps)
/// ```
///
/// All slices must have the same length.
pub fn adamw_step(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    config: &AdamWConfig,
    step: u64,
    grad_scale: f32,
) {
    let bias_correction1 = (1.0 - f64::from(config.beta1).powf(step as f64)) as f32;
    let bias_correction2 = (1.0 - f64::from(config.beta2).powf(step as f64)) as f32;
    let step_size = config.lr / bias_correction1;
    let bc2_sqrt = bias_correction2.sqrt();
    let decay = 1.0 - config.lr * config.weight_decay;
    let (b1, b2, eps) = (config.beta1, config.beta2, config.eps);
    param
        .par_iter_mut()
        .zip(grad.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .with_min_len(4096)
        .for_each(|((p, &g), (mi, vi))| {
            let g = g * grad_scale;
            *mi = b1 * *mi + (1.0 - b1) * g;
            *vi = b2 * *vi + (1.0 - b2) * g * g;
            let denom = vi.sqrt() / bc2_sqrt + eps;
            *p = *p * decay - step_size * (*mi / denom);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_about_lr_against_its_gradient() {
        // At step 1 the bias-corrected update is g/|g| (up to eps): each weight moves by lr.
        let config = AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 };
        let mut p = vec![0.3f32, -0.7, 1.25];
        let g = [0.5f32, -2.0, 0.125];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adamw_step(&mut p, &g, &mut m, &mut v, &config, 1, 1.0);
        for ((after, before), grad) in p.iter().zip([0.3f32, -0.7, 1.25]).zip(g) {
            let moved = before - after;
            assert!((moved - 0.01 * grad.signum()).abs() < 1e-6, "{moved}");
        }
    }

    #[test]
    fn weight_decay_is_decoupled_and_scales_the_weight() {
        let config = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.5 };
        let mut p = vec![2.0f32];
        let (mut m, mut v) = (vec![0.0], vec![0.0]);
        // A zero gradient leaves only the decay: p·(1 − lr·wd).
        adamw_step(&mut p, &[0.0], &mut m, &mut v, &config, 3, 1.0);
        assert!((p[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6, "{}", p[0]);
    }
}
