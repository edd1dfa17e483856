//! LayerNorm over the last axis, fused forward and backward.

use polylm_kernels::layernorm;

use crate::autograd::BackwardOp;
use crate::dtype::{CpuFloat, SavedValues};
use crate::{Error, Result, Tensor};

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
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let (dx, dw, db) = match (self.mean.gpu(), self.rstd.gpu()) {
            (Some(mean), Some(rstd)) => {
                crate::cuda::with_gpu_type!(x.dtype(), T => gpu::backward::<T>(x, w, mean, rstd, g))?
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
        let (out, mean, rstd) = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => {
                let (out, mean, rstd) = forward_impl::<T>(self, weight, bias, eps)?;
                (out, T::save(mean), T::save(rstd))
            })
        } else {
            let (out, mean, rstd) =
                crate::cuda::with_gpu_type!(self.dtype(), T => gpu::forward::<T>(self, weight, bias, eps))?;
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
    use polylm_kernels::cuda::layernorm::{layernorm_backward, layernorm_forward};

    use crate::cuda::{alloc_like, cuda_err, dense, GpuElem};
    use crate::{Result, Tensor};

    pub(super) fn forward<T: GpuElem>(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cols = w.numel();
        let rows = x.numel() / cols.max(1);
        let (xv, wv, bv) = (dense::<T>(x)?, dense::<T>(w)?, dense::<T>(b)?);
        let mut out = alloc_like::<T>(x, xv.len())?;
        let dev = xv.device().clone();
        let mut mean = dev.alloc::<f32>(rows).map_err(cuda_err("layer_norm"))?;
        let mut rstd = dev.alloc::<f32>(rows).map_err(cuda_err("layer_norm"))?;
        if rows > 0 && cols > 0 {
            layernorm_forward(&xv, None, &wv, &bv, eps as f32, cols, &mut out, &mut mean, &mut rstd)
                .map_err(cuda_err("layer_norm"))?;
        }
        Ok((
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
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cols = w.numel();
        let (xv, wv, gv) = (dense::<T>(x)?, dense::<T>(w)?, dense::<T>(g)?);
        let (mv, rv) = (dense::<f32>(mean)?, dense::<f32>(rstd)?);
        let mut dx = alloc_like::<T>(x, xv.len())?;
        let mut dw = alloc_like::<T>(w, cols)?;
        let mut db = alloc_like::<T>(w, cols)?;
        if xv.is_empty() {
            polylm_kernels::cuda::elementwise::fill(&mut dw, 0.0).map_err(cuda_err("layer_norm backward"))?;
            polylm_kernels::cuda::elementwise::fill(&mut db, 0.0).map_err(cuda_err("layer_norm backward"))?;
        } else {
            layernorm_backward(&xv, &wv, &mv, &rv, &gv, None, cols, &mut dx, &mut dw, &mut db, false)
                .map_err(cuda_err("layer_norm backward"))?;
        }
        Ok((
            Tensor::from_gpu(dx, x.shape()),
            Tensor::from_gpu(dw, w.shape()),
            Tensor::from_gpu(db, w.shape()),
        ))
    }
}
