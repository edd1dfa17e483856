//! Ops with a scalar: `a·x + b` (covering add/sub/mul/div by a scalar and negation), and
//! powers `x^p`.

use polylm_kernels::cuda::elementwise::UnaryOp;
use polylm_kernels::elementwise;
use polylm_kernels::Float;

use crate::autograd::BackwardOp;
use crate::dtype::CpuFloat;
use crate::{Error, Result, Tensor};

use super::with_compute_type;

struct AffineBackward {
    scale: f64,
}
impl BackwardOp for AffineBackward {
    fn name(&self) -> &'static str {
        "affine"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.affine(self.scale, 0.0)?)])
    }
}

struct PowBackward {
    exponent: f64,
}
impl BackwardOp for PowBackward {
    fn name(&self) -> &'static str {
        "powf"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let d = inputs[0].powf(self.exponent - 1.0)?.affine(self.exponent, 0.0)?;
        Ok(vec![Some(g.mul(&d)?)])
    }
}

fn map_impl<T: CpuFloat>(x: &Tensor, f: impl Fn(T) -> T + Sync) -> Result<Tensor> {
    let v = x.values::<T>();
    let mut out = vec![T::ZERO; v.len()];
    elementwise::map(&v, &mut out, f);
    Tensor::from_compute(out, x.shape(), x.dtype())
}

/// The GPU path of the elementwise maps.
pub(crate) fn gpu_map(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    use crate::cuda::{alloc_like, cuda_err, dense};
    crate::cuda::with_gpu_type!(x.dtype(), T => {
        let v = dense::<T>(x)?;
        let mut out = alloc_like::<T>(x, v.len())?;
        if !v.is_empty() {
            polylm_kernels::cuda::elementwise::map(op, &v, &mut out).map_err(cuda_err("map"))?;
        }
        Ok(Tensor::from_gpu(out, x.shape()))
    })
}

impl Tensor {
    /// `scale·self + shift` elementwise.
    pub fn affine(&self, scale: f64, shift: f64) -> Result<Tensor> {
        let out = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => {
                let (s, b) = (T::from_f64(scale), T::from_f64(shift));
                map_impl::<T>(self, move |v| v * s + b)
            })?
        } else {
            gpu_map(self, UnaryOp::Affine { alpha: scale as f32, beta: shift as f32 })?
        };
        Ok(Tensor::from_op(out, AffineBackward { scale }, vec![self.clone()]))
    }
    /// `self + value`.
    pub fn add_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(1.0, value)
    }
    /// `self - value`.
    pub fn sub_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(1.0, -value)
    }
    /// `self · value`.
    pub fn mul_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(value, 0.0)
    }
    /// `self / value`; dividing by zero is an error rather than a tensor of infinities.
    pub fn div_scalar(&self, value: f64) -> Result<Tensor> {
        if value == 0.0 {
            return Err(Error::InvalidArgument { op: "div_scalar", reason: "division by zero".into() });
        }
        self.affine(1.0 / value, 0.0)
    }
    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }

    /// `self^exponent` elementwise (NaN for negative bases with non-integer exponents).
    pub fn powf(&self, exponent: f64) -> Result<Tensor> {
        let out = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => {
                map_impl::<T>(self, move |v| T::from_f64(v.to_f64().powf(exponent)))
            })?
        } else if exponent == 2.0 {
            gpu_map(self, UnaryOp::Square)?
        } else {
            gpu_map(self, UnaryOp::Powf(exponent as f32))?
        };
        Ok(Tensor::from_op(out, PowBackward { exponent }, vec![self.clone()]))
    }

    /// `self²` elementwise.
    pub fn sqr(&self) -> Result<Tensor> {
        self.powf(2.0)
    }
}
