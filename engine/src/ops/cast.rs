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

impl Tensor {
    /// This tensor converted to `dtype` (rounding to nearest even); itself if already `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let out = self.cast_storage(dtype)?;
        Ok(Tensor::from_op(out, CastBackward { from: self.dtype() }, vec![self.clone()]))
    }
}
