//! Sum and mean over axes.

use polylm_kernels::reduce;

use crate::autograd::BackwardOp;
use crate::dtype::CpuFloat;
use crate::{Error, Result, Tensor};

use super::with_compute_type;

struct SumBackward {
    input_shape: Vec<usize>,
    keepdim_shape: Vec<usize>,
    scale: f64,
}
impl BackwardOp for SumBackward {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let g = g.reshape(&self.keepdim_shape)?.expand(&self.input_shape)?.contiguous()?;
        let g = if self.scale != 1.0 { g.affine(self.scale, 0.0)? } else { g };
        Ok(vec![Some(g)])
    }
}

fn sum_impl<T: CpuFloat>(x: &Tensor, axes: &[bool]) -> Result<(Vec<T>, Vec<usize>)> {
    let mut data = x.values::<T>().into_owned();
    let mut shape = x.shape().to_vec();
    for (ax, &reduce_it) in axes.iter().enumerate() {
        if !reduce_it {
            continue;
        }
        let outer: usize = shape[..ax].iter().product();
        let inner: usize = shape[ax + 1..].iter().product();
        let mut out = vec![T::ZERO; outer * inner];
        reduce::sum_axis(&data, outer, shape[ax], inner, &mut out);
        data = out;
        shape[ax] = 1;
    }
    Ok((data, shape))
}

impl Tensor {
    /// Sum over `axes`; reduced axes are kept with size 1 when `keepdim`, else removed.
    pub fn sum(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let rank = self.rank();
        let mut mask = vec![false; rank];
        for &a in axes {
            if a >= rank {
                return Err(Error::AxisOutOfRange { op: "sum", axis: a, rank });
            }
            mask[a] = true;
        }
        let (out, keep_shape) = with_compute_type!(self.dtype(), T => {
            let (v, s) = sum_impl::<T>(self, &mask)?;
            (Tensor::from_compute(v, &s, self.dtype())?, s)
        });
        let final_shape: Vec<usize> = if keepdim {
            keep_shape.clone()
        } else {
            self.shape().iter().enumerate().filter(|(i, _)| !mask[*i]).map(|(_, &d)| d).collect()
        };
        let out = crate::autograd::with_no_grad(|| out.reshape(&final_shape))?;
        let back = SumBackward { input_shape: self.shape().to_vec(), keepdim_shape: keep_shape, scale: 1.0 };
        Ok(Tensor::from_op(out, back, vec![self.clone()]))
    }

    /// Mean over `axes`; reduced axes are kept with size 1 when `keepdim`, else removed.
    pub fn mean(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let mut unique = axes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let count: usize = unique.iter().filter_map(|&a| self.shape().get(a)).product();
        if count == 0 {
            return Err(Error::InvalidArgument {
                op: "mean",
                reason: format!("mean over an empty axis of {:?}", self.shape()),
            });
        }
        self.sum(axes, keepdim)?.affine(1.0 / count as f64, 0.0)
    }

    /// Sum of every element, as a tensor of shape `[]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum(&axes, false)
    }

    /// Mean of every element, as a tensor of shape `[]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.mean(&axes, false)
    }
}
