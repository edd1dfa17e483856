//! Softmax over the last axis.

use polylm_kernels::softmax;
use polylm_kernels::Float;

use crate::autograd::BackwardOp;
use crate::dtype::CpuFloat;
use crate::{Error, Result, Tensor};

use super::with_compute_type;

struct SoftmaxBackward {
    output: Tensor,
}
impl BackwardOp for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let y = &self.output;
        if !y.device().is_cpu() {
            return Ok(vec![Some(crate::cuda::with_gpu_type!(y.dtype(), T => gpu::backward::<T>(y, g))?)]);
        }
        let dx = with_compute_type!(y.dtype(), T => {
            let cols = *y.shape().last().unwrap_or(&1);
            let (yv, gv) = (y.values::<T>(), g.values::<T>());
            let mut dx = vec![T::ZERO; yv.len()];
            softmax::softmax_backward(&yv, &gv, cols, &mut dx);
            Tensor::from_compute(dx, y.shape(), y.dtype())
        })?;
        Ok(vec![Some(dx)])
    }
}

fn forward_impl<T: CpuFloat>(x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let xv = x.values::<T>();
    let mut out = vec![T::ZERO; xv.len()];
    softmax::softmax_forward(&xv, cols, &mut out);
    Tensor::from_compute(out, x.shape(), x.dtype())
}

impl Tensor {
    /// Softmax over the last axis (numerically stable: the row maximum is subtracted first).
    pub fn softmax(&self) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::BadShape {
                op: "softmax",
                shape: vec![],
                reason: "needs at least one axis".into(),
            });
        }
        let out = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => forward_impl::<T>(self))?
        } else {
            crate::cuda::with_gpu_type!(self.dtype(), T => gpu::forward::<T>(self))?
        };
        let saved = out.detach();
        Ok(Tensor::from_op(out, SoftmaxBackward { output: saved }, vec![self.clone()]))
    }
}

/// The GPU paths.
mod gpu {
    use polylm_kernels::cuda::softmax::{softmax_backward, softmax_forward};

    use crate::cuda::{alloc_like, cuda_err, dense, GpuElem};
    use crate::{Result, Tensor};

    pub(super) fn forward<T: GpuElem>(x: &Tensor) -> Result<Tensor> {
        let cols = *x.shape().last().unwrap_or(&1);
        let xv = dense::<T>(x)?;
        let mut out = alloc_like::<T>(x, xv.len())?;
        if !xv.is_empty() {
            softmax_forward(&xv, cols, &mut out).map_err(cuda_err("softmax"))?;
        }
        Ok(Tensor::from_gpu(out, x.shape()))
    }

    pub(super) fn backward<T: GpuElem>(y: &Tensor, g: &Tensor) -> Result<Tensor> {
        let cols = *y.shape().last().unwrap_or(&1);
        let (yv, gv) = (dense::<T>(y)?, dense::<T>(g)?);
        let mut dx = alloc_like::<T>(y, yv.len())?;
        if !yv.is_empty() {
            softmax_backward(&yv, &gv, cols, &mut dx).map_err(cuda_err("softmax backward"))?;
        }
        Ok(Tensor::from_gpu(dx, y.shape()))
    }
}
