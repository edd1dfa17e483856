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

/// The single-axis reductions `(outer, len, inner)` that sum `shape` over the masked axes one
/// after another (each run of adjacent masked axes as one axis: summing a bias gradient over
/// batch and time is one pass over `batch·time` rows), and the kept-dims shape at the end.
fn reduction_steps(shape: &[usize], axes: &[bool]) -> (Vec<(usize, usize, usize)>, Vec<usize>) {
    let mut shape = shape.to_vec();
    let mut steps = Vec::new();
    let mut ax = 0;
    while ax < shape.len() {
        if !axes.get(ax).copied().unwrap_or(false) {
            ax += 1;
            continue;
        }
        let end = (ax..shape.len()).find(|&a| !axes.get(a).copied().unwrap_or(false)).unwrap_or(shape.len());
        let outer: usize = shape[..ax].iter().product();
        let len: usize = shape[ax..end].iter().product();
        let inner: usize = shape[end..].iter().product();
        steps.push((outer, len, inner));
        shape[ax..end].iter_mut().for_each(|d| *d = 1);
        ax = end;
    }
    (steps, shape)
}

fn sum_impl<T: CpuFloat>(x: &Tensor, axes: &[bool]) -> Result<(Vec<T>, Vec<usize>)> {
    let mut data = x.values::<T>().into_owned();
    let (steps, shape) = reduction_steps(x.shape(), axes);
    for (outer, len, inner) in steps {
        let mut out = vec![T::ZERO; outer * inner];
        reduce::sum_axis(&data, outer, len, inner, &mut out);
        data = out;
    }
    Ok((data, shape))
}

/// The GPU path: one reduction per summed axis over the dense values, in f32.
fn gpu_sum<T: crate::cuda::GpuElem>(x: &Tensor, axes: &[bool]) -> Result<(Tensor, Vec<usize>)> {
    use crate::cuda::{cuda_err, dense, Dense};
    let mut data = dense::<T>(x)?;
    let (steps, shape) = reduction_steps(x.shape(), axes);
    for (outer, len, inner) in steps {
        let mut out = data.device().alloc::<T>(outer * inner).map_err(cuda_err("sum"))?;
        if outer * inner > 0 {
            if len == 0 {
                polylm_kernels::cuda::elementwise::fill(&mut out, 0.0).map_err(cuda_err("sum"))?;
            } else {
                polylm_kernels::cuda::elementwise::sum_axis(&data, outer, len, inner, &mut out)
                    .map_err(cuda_err("sum"))?;
            }
        }
        data = Dense::Owned(out);
    }
    let buf = match data {
        Dense::Owned(b) => b,
        // Nothing was summed: a copy, so the result does not alias the input.
        Dense::Borrowed(b) => {
            let mut copy = b.device().alloc::<T>(b.len()).map_err(cuda_err("sum"))?;
            b.device().copy(b, &mut copy).map_err(cuda_err("sum"))?;
            copy
        }
    };
    Ok((Tensor::from_gpu(buf, &shape), shape))
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
        let (out, keep_shape) = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => {
                let (v, s) = sum_impl::<T>(self, &mask)?;
                (Tensor::from_compute(v, &s, self.dtype())?, s)
            })
        } else {
            crate::cuda::with_gpu_type!(self.dtype(), T => gpu_sum::<T>(self, &mask))?
        };
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

#[cfg(test)]
mod tests {
    use super::reduction_steps;

    #[test]
    fn adjacent_axes_are_summed_in_one_step() {
        // A bias gradient: [batch, time, channels] over batch and time is one pass.
        assert_eq!(
            reduction_steps(&[4, 2048, 6144], &[true, true, false]),
            (vec![(1, 8192, 6144)], vec![1, 1, 6144])
        );
        // Separated axes take a step each; the second sees the first already summed.
        assert_eq!(
            reduction_steps(&[2, 3, 5, 7], &[true, false, true, true]),
            (vec![(1, 2, 105), (3, 35, 1)], vec![1, 3, 1, 1])
        );
        assert_eq!(reduction_steps(&[2, 3], &[false, false]), (vec![], vec![2, 3]));
        assert_eq!(reduction_steps(&[6], &[true]), (vec![(1, 6, 1)], vec![1]));
    }
}
