//! LayerNorm over the last axis, fused forward and backward; on the GPU also fused with the
//! residual add before it ([`Tensor::add_layer_norm`]) and, in the backward pass, with the
//! gradient already flowing on the residual stream.

use polylm_kernels::layernorm;

use crate::autograd::{take_pending_like, BackwardOp};
use crate::dtype::{CpuFloat, SavedValues};
use crate::{Error, Result, Tensor};

use super::binary::BinaryBackward;
use super::{check_same, with_compute_type};

struct LayerNormBackward {
    /// Mean of each row.
    mean: SavedValues,
    /// Reciprocal standard deviation of each row.
    rstd: SavedValues,
}

impl BackwardOp for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    /// On the GPU the input's gradient gathered so far (the residual stream's, when the input
    /// is a residual stream) is added by the backward kernel itself.
    fn folds_pending(&self) -> bool {
        self.mean.gpu().is_some()
    }

    fn backward_folding(
        &self,
        g: &Tensor,
        inputs: &[Tensor],
        pending: &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let (dx, dw, db) = match (self.mean.gpu(), self.rstd.gpu()) {
            (Some(mean), Some(rstd)) => {
                let residual = take_pending_like(&mut pending[0], x);
                crate::cuda::with_gpu_type!(x.dtype(), T => {
                    gpu::backward::<T>(x, w, mean, rstd, g, residual.as_ref())
                })?
            }
            _ => with_compute_type!(x.dtype(), T => backward_impl::<T>(self, x, w, g))?,
        };
        Ok(vec![Some(dx), Some(dw), Some(db)])
    }
}

fn backward_impl<T: CpuFloat>(
    b: &LayerNormBackward,
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mean = T::saved(&b.mean).expect("saved in the compute type of the same dtype");
    let rstd = T::saved(&b.rstd).expect("saved in the compute type of the same dtype");
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
    layernorm::layernorm_forward(&xv, &wv, &bv, T::from_f64(eps), cols, &mut out, &mut mean, &mut rstd);
    Ok((Tensor::from_compute(out, x.shape(), x.dtype())?, mean, rstd))
}

/// Checks a layer norm's operands: `weight` and `bias` of shape `[last axis of x]` on x's device
/// and dtype, `eps` positive.
fn check_layer_norm(op: &'static str, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<()> {
    check_same(op, x, weight)?;
    check_same(op, x, bias)?;
    let cols = *x.shape().last().ok_or_else(|| Error::BadShape {
        op,
        shape: vec![],
        reason: "needs at least one axis".into(),
    })?;
    for p in [weight, bias] {
        if p.shape() != [cols] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: p.shape().to_vec() });
        }
    }
    if eps.is_nan() || eps <= 0.0 {
        return Err(Error::InvalidArgument { op, reason: format!("eps must be positive, got {eps}") });
    }
    Ok(())
}

impl Tensor {
    /// `(self + delta, layer_norm(self + delta))`: a residual stream's next value and its layer
    /// norm, as a pre-LayerNorm block needs them. The same values and gradients as
    /// [`Tensor::add`] then [`Tensor::layer_norm`]; on the GPU (same shapes and dtype) one
    /// kernel computes both, reading the stream once.
    pub fn add_layer_norm(
        &self,
        delta: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        check_same("add_layer_norm", self, delta)?;
        if self.device().is_cpu() || self.shape() != delta.shape() {
            let sum = self.add(delta)?;
            let normed = sum.layer_norm(weight, bias, eps)?;
            return Ok((sum, normed));
        }
        check_layer_norm("add_layer_norm", self, weight, bias, eps)?;
        let (sum, out, mean, rstd) = crate::cuda::with_gpu_type!(self.dtype(), T => {
            gpu::forward::<T>(self, Some(delta), weight, bias, eps)
        })?;
        let sum = Tensor::from_op(
            sum.ok_or_else(|| Error::InvalidArgument {
                op: "add_layer_norm",
                reason: "the fused kernel returned no sum (internal error)".into(),
            })?,
            BinaryBackward::add(),
            vec![self.clone(), delta.clone()],
        );
        let back = LayerNormBackward { mean: SavedValues::Gpu(mean), rstd: SavedValues::Gpu(rstd) };
        let normed = Tensor::from_op(out, back, vec![sum.clone(), weight.clone(), bias.clone()]);
        Ok((sum, normed))
    }

    /// LayerNorm over the last axis: `(x − mean)/sqrt(var + eps)·weight + bias` with the biased
    /// variance; `weight` and `bias` have shape `[last axis]`.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        check_layer_norm("layer_norm", self, weight, bias, eps)?;
        let (out, mean, rstd) = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => {
                let (out, mean, rstd) = forward_impl::<T>(self, weight, bias, eps)?;
                (out, T::save(mean), T::save(rstd))
            })
        } else {
            let (_, out, mean, rstd) = crate::cuda::with_gpu_type!(self.dtype(), T => gpu::forward::<T>(self, None, weight, bias, eps))?;
            (out, SavedValues::Gpu(mean), SavedValues::Gpu(rstd))
        };
        Ok(Tensor::from_op(
            out,
            LayerNormBackward { mean, rstd },
            vec![self.clone(), weight.clone(), bias.clone()],
        ))
    }
}

/// The GPU paths; the row statistics stay on the device as f32 tensors.
mod gpu {
    use polylm_kernels::cuda::layernorm::{layernorm_backward, layernorm_forward, ResidualAdd};

    use crate::cuda::{alloc_like, cuda_err, dense, GpuElem};
    use crate::{Result, Tensor};

    /// The layer norm of `x` (of `x + delta` when given, which is returned too), with the row
    /// statistics.
    #[allow(clippy::type_complexity)]
    pub(super) fn forward<T: GpuElem>(
        x: &Tensor,
        delta: Option<&Tensor>,
        w: &Tensor,
        b: &Tensor,
        eps: f64,
    ) -> Result<(Option<Tensor>, Tensor, Tensor, Tensor)> {
        let cols = w.numel();
        let rows = x.numel() / cols.max(1);
        let (xv, wv, bv) = (dense::<T>(x)?, dense::<T>(w)?, dense::<T>(b)?);
        let dv = delta.map(dense::<T>).transpose()?;
        let mut out = alloc_like::<T>(x, xv.len())?;
        let mut sum = delta.map(|_| alloc_like::<T>(x, xv.len())).transpose()?;
        let dev = xv.device().clone();
        let mut mean = dev.alloc::<f32>(rows).map_err(cuda_err("layer_norm"))?;
        let mut rstd = dev.alloc::<f32>(rows).map_err(cuda_err("layer_norm"))?;
        if rows > 0 && cols > 0 {
            let residual = match (&dv, &mut sum) {
                (Some(residual), Some(sum_out)) => Some(ResidualAdd { residual, sum_out }),
                _ => None,
            };
            layernorm_forward(&xv, residual, &wv, &bv, eps as f32, cols, &mut out, &mut mean, &mut rstd)
                .map_err(cuda_err("layer_norm"))?;
        }
        Ok((
            sum.map(|s| Tensor::from_gpu(s, x.shape())),
            Tensor::from_gpu(out, x.shape()),
            Tensor::from_gpu(mean, &[rows]),
            Tensor::from_gpu(rstd, &[rows]),
        ))
    }

    pub(super) fn backward<T: GpuElem>(
        x: &Tensor,
        w: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        g: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cols = w.numel();
        let (xv, wv, gv) = (dense::<T>(x)?, dense::<T>(w)?, dense::<T>(g)?);
        let resid = residual.map(dense::<T>).transpose()?;
        let (mv, rv) = (dense::<f32>(mean)?, dense::<f32>(rstd)?);
        let mut dx = alloc_like::<T>(x, xv.len())?;
        let mut dw = alloc_like::<T>(w, cols)?;
        let mut db = alloc_like::<T>(w, cols)?;
        if xv.is_empty() {
            polylm_kernels::cuda::elementwise::fill(&mut dw, 0.0).map_err(cuda_err("layer_norm backward"))?;
            polylm_kernels::cuda::elementwise::fill(&mut db, 0.0).map_err(cuda_err("layer_norm backward"))?;
        } else {
            let dres = resid.as_deref();
            layernorm_backward(&xv, &wv, &mv, &rv, &gv, dres, cols, &mut dx, &mut dw, &mut db, false)
                .map_err(cuda_err("layer_norm backward"))?;
        }
        Ok((
            Tensor::from_gpu(dx, x.shape()),
            Tensor::from_gpu(dw, w.shape()),
            Tensor::from_gpu(db, w.shape()),
        ))
    }
}
