//! GeLU (tanh form) with an optional bias add fused in front: `gelu(x + bias)`.

use polylm_kernels::gelu;

use crate::autograd::BackwardOp;
use crate::dtype::CpuFloat;
use crate::{Error, Result, Tensor};

use super::{check_same, with_compute_type};

struct BiasGeluBackward {
    has_bias: bool,
}

impl BackwardOp for BiasGeluBackward {
    fn name(&self) -> &'static str {
        "bias_gelu"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let bias = if self.has_bias { Some(&inputs[1]) } else { None };
        let (dx, db) = if x.device().is_cpu() {
            with_compute_type!(x.dtype(), T => backward_impl::<T>(x, bias, g))?
        } else {
            crate::cuda::with_gpu_type!(x.dtype(), T => gpu::backward::<T>(x, bias, g))?
        };
        Ok(if self.has_bias { vec![Some(dx), db] } else { vec![Some(dx)] })
    }
}

fn backward_impl<T: CpuFloat>(
    x: &Tensor,
    bias: Option<&Tensor>,
    g: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let cols = *x.shape().last().unwrap_or(&1);
    let xv = x.values::<T>();
    let bv = bias.map(|b| b.values::<T>());
    let gv = g.values::<T>();
    let mut dx = vec![T::ZERO; xv.len()];
    let mut db = bias.map(|_| vec![T::ZERO; cols]);
    gelu::bias_gelu_backward(&xv, bv.as_deref(), &gv, cols, &mut dx, db.as_deref_mut());
    let db = match (db, bias) {
        (Some(d), Some(b)) => Some(Tensor::from_compute(d, b.shape(), b.dtype())?),
        _ => None,
    };
    Ok((Tensor::from_compute(dx, x.shape(), x.dtype())?, db))
}

fn forward_impl<T: CpuFloat>(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let xv = x.values::<T>();
    let bv = bias.map(|b| b.values::<T>());
    let mut out = vec![T::ZERO; xv.len()];
    gelu::bias_gelu_forward(&xv, bv.as_deref(), cols, &mut out);
    Tensor::from_compute(out, x.shape(), x.dtype())
}

/// The gradients of `gelu(pre)` with respect to `pre` and to the bias already inside `pre`
/// (the column sums of the first): the backward of a fused `linear_gelu`.
pub(super) fn gelu_backward_with_bias_grad(pre: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let cols = *pre.shape().last().unwrap_or(&1);
    if pre.device().is_cpu() {
        let (dpre, _) = with_compute_type!(pre.dtype(), T => backward_impl::<T>(pre, None, g))?;
        let db = dpre.sum_to_shape(&[cols])?;
        return Ok((dpre, db));
    }
    crate::cuda::with_gpu_type!(pre.dtype(), T => gpu::backward_from_pre::<T>(pre, g))
}

impl Tensor {
    fn bias_gelu_forward(&self, bias: Option<&Tensor>) -> Result<Tensor> {
        if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => forward_impl::<T>(self, bias))
        } else {
            crate::cuda::with_gpu_type!(self.dtype(), T => gpu::forward::<T>(self, bias))
        }
    }

    /// `gelu(self + bias)` with GeLU in its tanh form; `bias` has shape `[last axis]`.
    pub fn bias_gelu(&self, bias: &Tensor) -> Result<Tensor> {
        check_same("bias_gelu", self, bias)?;
        let cols = self.shape().last().copied();
        if self.rank() == 0 || bias.shape() != [cols.unwrap_or(0)] {
            return Err(Error::ShapeMismatch {
                op: "bias_gelu",
                lhs: self.shape().to_vec(),
                rhs: bias.shape().to_vec(),
            });
        }
        let out = self.bias_gelu_forward(Some(bias))?;
        Ok(Tensor::from_op(out, BiasGeluBackward { has_bias: true }, vec![self.clone(), bias.clone()]))
    }

    /// GeLU (tanh form) elementwise.
    pub fn gelu(&self) -> Result<Tensor> {
        let out = self.bias_gelu_forward(None)?;
        Ok(Tensor::from_op(out, BiasGeluBackward { has_bias: false }, vec![self.clone()]))
    }
}

/// The GPU paths.
mod gpu {
    use polylm_kernels::cuda::gelu::{bias_gelu_backward, bias_gelu_forward};

    use crate::cuda::{alloc_like, cuda_err, dense, Dense, GpuElem};
    use crate::{Result, Tensor};

    fn cols_of(x: &Tensor) -> usize {
        (*x.shape().last().unwrap_or(&1)).max(1)
    }

    pub(super) fn forward<T: GpuElem>(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let xv = dense::<T>(x)?;
        let bv: Option<Dense<'_, T>> = bias.map(dense::<T>).transpose()?;
        let mut out = alloc_like::<T>(x, xv.len())?;
        if !xv.is_empty() {
            bias_gelu_forward(&xv, bv.as_deref(), cols_of(x), &mut out).map_err(cuda_err("bias_gelu"))?;
        }
        Ok(Tensor::from_gpu(out, x.shape()))
    }

    /// dpre and the bias gradient (column sums of dpre) from the pre-activation, in one pass.
    pub(super) fn backward_from_pre<T: GpuElem>(pre: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let cols = cols_of(pre);
        let (pv, gv) = (dense::<T>(pre)?, dense::<T>(g)?);
        let mut dpre = alloc_like::<T>(pre, pv.len())?;
        let mut db = alloc_like::<T>(pre, cols)?;
        if pv.is_empty() {
            polylm_kernels::cuda::elementwise::fill(&mut db, 0.0)
                .map_err(cuda_err("linear_gelu backward"))?;
        } else {
            bias_gelu_backward(&pv, None, &gv, cols, &mut dpre, Some(&mut db), false)
                .map_err(cuda_err("linear_gelu backward"))?;
        }
        Ok((Tensor::from_gpu(dpre, pre.shape()), Tensor::from_gpu(db, &[cols])))
    }

    pub(super) fn backward<T: GpuElem>(
        x: &Tensor,
        bias: Option<&Tensor>,
        g: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let cols = cols_of(x);
        let (xv, gv) = (dense::<T>(x)?, dense::<T>(g)?);
        let bv: Option<Dense<'_, T>> = bias.map(dense::<T>).transpose()?;
        let mut dx = alloc_like::<T>(x, xv.len())?;
        let mut db = bias.map(|b| alloc_like::<T>(b, cols)).transpose()?;
        if xv.is_empty() {
            if let Some(d) = db.as_mut() {
                polylm_kernels::cuda::elementwise::fill(d, 0.0).map_err(cuda_err("bias_gelu backward"))?;
            }
        } else {
            bias_gelu_backward(&xv, bv.as_deref(), &gv, cols, &mut dx, db.as_mut(), false)
                .map_err(cuda_err("bias_gelu backward"))?;
        }
        let db = match (db, bias) {
            (Some(d), Some(b)) => Some(Tensor::from_gpu(d, b.shape())),
            _ => None,
        };
        Ok((Tensor::from_gpu(dx, x.shape()), db))
    }
}
