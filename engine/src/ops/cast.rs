//! Casts between dtypes. The gradient is cast back to the input's dtype.

use crate::autograd::BackwardOp;
use crate::{DType, Result, Tensor};

struct CastBackward {
    from: DType,
}
impl BackwardOp for CastBackward {
    fn name(&self) -> &'static str {
        "to_dtype"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.to_dtype(self.from)?)])
    }
}

/// The GPU path: a cast kernel over the dense values.
fn gpu_cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    use crate::cuda::{cuda_err, dense, with_gpu_type};
    with_gpu_type!(x.dtype(), S => {
        let v = dense::<S>(x)?;
        with_gpu_type!(dtype, D => {
            let mut out = v.device().alloc::<D>(v.len()).map_err(cuda_err("to_dtype"))?;
            if !v.is_empty() {
                polylm_kernels::cuda::elementwise::cast(&v, &mut out).map_err(cuda_err("to_dtype"))?;
            }
            Ok(Tensor::from_gpu(out, x.shape()))
        })
    })
}

impl Tensor {
    /// This tensor converted to `dtype` (rounding to nearest even); itself if already `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let out = if self.device().is_cpu() { self.cast_storage(dtype)? } else { gpu_cast(self, dtype)? };
        Ok(Tensor::from_op(out, CastBackward { from: self.dtype() }, vec![self.clone()]))
    }
}
