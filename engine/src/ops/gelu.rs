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
        let (dx, db) = with_compute_type!(x.dtype(), T => backward_impl::<T>(x, bias, g))?;
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

impl Tensor {
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
        let out = with_compute_type!(self.dtype(), T => forward_impl::<T>(self, Some(bias)))?;
        Ok(Tensor::from_op(out, BiasGeluBackward { has_bias: true }, vec![self.clone(), bias.clone()]))
    }

    /// GeLU (tanh form) elementwise.
    pub fn gelu(&self) -> Result<Tensor> {
        let out = with_compute_type!(self.dtype(), T => forward_impl::<T>(self, None))?;
        Ok(Tensor::from_op(out, BiasGeluBackward { has_bias: false }, vec![self.clone()]))
    }
}
