//! LayerNorm over the last axis, fused forward and backward.

use polylm_kernels::layernorm;
use polylm_kernels::Float;

use crate::autograd::BackwardOp;
use crate::dtype::CpuFloat;
use crate::{Error, Result, Tensor};

use super::{check_same, with_compute_type};

/// Row statistics saved by the forward pass, in the compute type.
enum Stats {
    F32 { mean: Vec<f32>, rstd: Vec<f32> },
    F64 { mean: Vec<f64>, rstd: Vec<f64> },
}

struct LayerNormBackward {
    stats: Stats,
}

impl BackwardOp for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let (dx, dw, db) = match &self.stats {
            Stats::F32 { mean, rstd } => backward_impl::<f32>(x, w, g, mean, rstd)?,
            Stats::F64 { mean, rstd } => backward_impl::<f64>(x, w, g, mean, rstd)?,
        };
        Ok(vec![Some(dx), Some(dw), Some(db)])
    }
}

fn backward_impl<T: CpuFloat>(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    mean: &[T],
    rstd: &[T],
) -> Result<(Tensor, Tensor, Tensor)> {
    let cols = w.numel();
    let (xv, wv, gv) = (x.values::<T>(), w.values::<T>(), g.values::<T>());
    let mut dx = vec![T::ZERO; xv.len()];
    let mut dw = vec![T::ZERO; cols];
    let mut db = vec![T::ZERO; cols];
    layernorm::layernorm_backward(&xv, &wv, mean, rstd, &gv, cols, &mut dx, &mut dw, &mut db);
    Ok((
        Tensor::from_compute(dx, x.shape(), x.dtype())?,
        Tensor::from_compute(dw, w.shape(), w.dtype())?,
        Tensor::from_compute(db, w.shape(), w.dtype())?,
    ))
}

fn forward_impl<T: CpuFloat>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<(Tensor, Vec<T>, Vec<T>)> {
    let cols = w.numel();
    let rows = x.numel() / cols.max(1);
    let (xv, wv, bv) = (x.values::<T>(), w.values::<T>(), b.values::<T>());
    let mut out = vec![T::ZERO; xv.len()];
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    layernorm::layernorm_forward(
        &xv,
        &wv,
        &bv,
        T::from_f64(eps),
        cols,
        &mut out,
        &mut mean,
        &mut rstd,
    );
    Ok((Tensor::from_compute(out, x.shape(), x.dtype())?, mean, rstd))
}

impl Tensor {
    /// LayerNorm over the last axis: `(x − mean)/sqrt(var + eps)·weight + bias` with the biased
    /// variance; `weight` and `bias` have shape `[last axis]`.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        check_same("layer_norm", self, weight)?;
        check_same("layer_norm", self, bias)?;
        let cols = *self.shape().last().ok_or_else(|| Error::BadShape {
            op: "layer_norm",
            shape: vec![],
            reason: "needs at least one axis".into(),
        })?;
        for p in [weight, bias] {
            if p.shape() != [cols] {
                return Err(Error::ShapeMismatch {
                    op: "layer_norm",
                    lhs: self.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                });
            }
        }
        if eps.is_nan() || eps <= 0.0 {
            return Err(Error::InvalidArgument {
                op: "layer_norm",
                reason: format!("eps must be positive, got {eps}"),
            });
        }
        let (out, stats) = with_compute_type!(self.dtype(), T => {
            let (out, mean, rstd) = forward_impl::<T>(self, weight, bias, eps)?;
            (out, <T as StatsOf>::wrap(mean, rstd))
        });
        Ok(Tensor::from_op(
            out,
            LayerNormBackward { stats },
            vec![self.clone(), weight.clone(), bias.clone()],
        ))
    }
}

trait StatsOf: Float {
    fn wrap(mean: Vec<Self>, rstd: Vec<Self>) -> Stats;
}
impl StatsOf for f32 {
    fn wrap(mean: Vec<f32>, rstd: Vec<f32>) -> Stats {
        Stats::F32 { mean, rstd }
    }
}
impl StatsOf for f64 {
    fn wrap(mean: Vec<f64>, rstd: Vec<f64>) -> Stats {
        Stats::F64 { mean, rstd }
    }
}
