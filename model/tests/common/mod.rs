//! Helpers shared by the model's tests: tensor comparison, a reference AdamW, small configs.

#![allow(dead_code)]

use polylm_engine::{Rng, Tensor};
use polylm_model::{Gpt, ModelConfig};

/// Largest absolute difference divided by the largest reference magnitude (the ∞-norm
/// relative error), so that elements near zero are judged on the tensor's scale.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f64, |m, &w| m.max(f64::from(w).abs())).max(1e-30);
    let diff = got.iter().zip(want).fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - f64::from(w)).abs()));
    diff / scale
}

/// Panics with the name and the error when `rel_err(got, want) > tol`; returns the error.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    let e = rel_err(got, want);
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.1e}");
    assert!(got.iter().all(|x| x.is_finite()), "{name}: non-finite values");
    e
}

/// A small random config (vocab, layers, hidden, heads, ffn, context).
pub fn small_config(
    vocab: usize,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
    context: usize,
) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        layers,
        hidden,
        heads,
        ffn,
        context,
        layer_norm_eps: 1e-5,
        init_std: 0.02,
        eos_token_id: None,
    }
}

/// Perturbs every parameter of `model` by normal noise of `std` (LayerNorm weights stay
/// near one), so that no parameter is exactly 0 or 1 and the logits are far from uniform.
pub fn perturb(model: &mut Gpt, std: f64, seed: u64) {
    let mut rng = Rng::new(seed);
    for (_, t) in model.params_mut().named_mut() {
        let noise = Tensor::randn(t.shape(), std, t.dtype(), &mut rng).unwrap();
        *t = t.detach().add(&noise).unwrap().requires_grad();
    }
}

/// Random token ids below `vocab`.
pub fn random_ids(n: usize, vocab: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// The next-token targets of `[batch, seq]` ids, the last position of each row ignored
/// (`u32::MAX`): what Hugging Face's `labels = input_ids` loss computes.
pub fn shifted_targets(ids: &[u32], batch: usize, seq: usize) -> Vec<u32> {
    let mut t = vec![u32::MAX; ids.len()];
    for b in 0..batch {
        for s in 0..seq - 1 {
            t[b * seq + s] = ids[b * seq + s + 1];
        }
    }
    t
}

/// A plain reference AdamW (PyTorch's `torch.optim.AdamW` update, in f64): decoupled weight
/// decay `p ← p·(1 − lr·wd)` on parameters with two or more axes, then
/// `p ← p − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)`. The trainer owns the real
/// optimizer; this one exists to check the model's gradients through several steps.
pub struct RefAdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    step: i32,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

impl RefAdamW {
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> RefAdamW {
        RefAdamW { lr, beta1, beta2, eps, weight_decay, step: 0, m: Vec::new(), v: Vec::new() }
    }

    /// One step over every parameter of `model` using its accumulated gradients.
    pub fn step(&mut self, model: &mut Gpt) {
        self.step += 1;
        let (bc1, bc2) = (1.0 - self.beta1.powi(self.step), 1.0 - self.beta2.powi(self.step));
        let mut params = model.params_mut().named_mut();
        if self.m.is_empty() {
            self.m = params.iter().map(|(_, t)| vec![0.0; t.numel()]).collect();
            self.v = self.m.clone();
        }
        for (i, (name, t)) in params.iter_mut().enumerate() {
            let g = t.grad().unwrap_or_else(|| panic!("{name} has no gradient")).to_vec_f64();
            let mut p = t.to_vec_f64();
            let decay = if t.rank() >= 2 { self.weight_decay } else { 0.0 };
            for j in 0..p.len() {
                self.m[i][j] = self.beta1 * self.m[i][j] + (1.0 - self.beta1) * g[j];
                self.v[i][j] = self.beta2 * self.v[i][j] + (1.0 - self.beta2) * g[j] * g[j];
                p[j] *= 1.0 - self.lr * decay;
                let denom = self.v[i][j].sqrt() / bc2.sqrt() + self.eps;
                p[j] -= self.lr / bc1 * self.m[i][j] / denom;
            }
            let shape = t.shape().to_vec();
            let dtype = t.dtype();
            **t = Tensor::from_vec(p, &shape).unwrap().to_dtype(dtype).unwrap().requires_grad();
        }
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `<tmp>/polylm-model-<tag>-<pid>-<n>` (n unique within the process).
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("polylm-model-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}
