//! Elementwise add, sub, mul and div with NumPy broadcasting, and the reduction of a
//! broadcast gradient back to an operand's shape.

use polylm_kernels::elementwise::{self, BinaryOp, Strided};

use crate::autograd::BackwardOp;
use crate::dtype::CpuFloat;
use crate::layout::{broadcast_shape, contiguous_strides};
use crate::{Result, Tensor};

use super::{check_same, with_compute_type};

pub(super) struct BinaryBackward {
    op: BinaryOp,
}

impl BinaryBackward {
    /// The backward of `a + b`, for ops that compute a sum inside a fused kernel.
    pub(super) fn add() -> BinaryBackward {
        BinaryBackward { op: BinaryOp::Add }
    }
}

impl BackwardOp for BinaryBackward {
    fn name(&self) -> &'static str {
        match self.op {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }

    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let (ga, gb) = match self.op {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (g.clone(), g.neg()?),
            BinaryOp::Mul => (g.mul(b)?, g.mul(a)?),
            BinaryOp::Div => {
                let ga = g.div(b)?;
                // d(a/b)/db = -a/b² = -(a/b)/b
                let gb = ga.mul(a)?.div(b)?.neg()?;
                (ga, gb)
            }
        };
        let ga = a.requires_grad_flag().then(|| ga.sum_to_shape(a.shape())).transpose()?;
        let gb = b.requires_grad_flag().then(|| gb.sum_to_shape(b.shape())).transpose()?;
        Ok(vec![ga, gb])
    }
}

fn binary_impl<T: CpuFloat>(op: BinaryOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let av = a.values::<T>();
    let bv = b.values::<T>();
    // `values` is row-major dense, so broadcasting only needs contiguous strides zeroed on
    // the broadcast axes.
    let a_strides = broadcast_dense_strides(a.shape(), shape);
    let b_strides = broadcast_dense_strides(b.shape(), shape);
    let mut out = vec![T::ZERO; shape.iter().product()];
    elementwise::binary(
        op,
        shape,
        Strided { data: &av, offset: 0, strides: &a_strides },
        Strided { data: &bv, offset: 0, strides: &b_strides },
        &mut out,
    );
    Tensor::from_compute(out, shape, a.dtype())
}

/// The GPU path: both operands are read in place through their (broadcast) strides.
fn gpu_binary<T: crate::cuda::GpuElem>(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
) -> Result<Tensor> {
    use polylm_kernels::cuda::elementwise::{self as gpu, BinaryOp as GpuOp, DeviceStrided};
    let gop = match op {
        BinaryOp::Add => GpuOp::Add,
        BinaryOp::Sub => GpuOp::Sub,
        BinaryOp::Mul => GpuOp::Mul,
        BinaryOp::Div => GpuOp::Div,
    };
    let (sa, sb) = (a.layout().broadcast_strides(shape), b.layout().broadcast_strides(shape));
    let n = shape.iter().product();
    let mut out = crate::cuda::alloc_like::<T>(a, n)?;
    if n > 0 {
        gpu::binary(
            gop,
            shape,
            DeviceStrided { buf: a.gpu_buf::<T>()?, offset: a.layout().offset(), strides: &sa },
            DeviceStrided { buf: b.gpu_buf::<T>()?, offset: b.layout().offset(), strides: &sb },
            &mut out,
        )
        .map_err(crate::cuda::cuda_err("binary"))?;
    }
    Ok(Tensor::from_gpu(out, shape))
}

/// Strides of a dense tensor of `shape` read as if broadcast to `target`.
fn broadcast_dense_strides(shape: &[usize], target: &[usize]) -> Vec<usize> {
    let dense = contiguous_strides(shape);
    let pad = target.len() - shape.len();
    let mut out = vec![0; target.len()];
    for (i, (&d, &s)) in shape.iter().zip(&dense).enumerate() {
        out[pad + i] = if d == 1 { 0 } else { s };
    }
    out
}

impl Tensor {
    fn binary(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        check_same(name, self, rhs)?;
        let shape = broadcast_shape(name, self.shape(), rhs.shape())?;
        let out = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => binary_impl::<T>(op, self, rhs, &shape))?
        } else {
            crate::cuda::with_gpu_type!(self.dtype(), T => gpu_binary::<T>(op, self, rhs, &shape))?
        };
        Ok(Tensor::from_op(out, BinaryBackward { op }, vec![self.clone(), rhs.clone()]))
    }

    /// `self + rhs`, broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add, "add")
    }
    /// `self - rhs`, broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub, "sub")
    }
    /// `self * rhs` elementwise, broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul, "mul")
    }
    /// `self / rhs` elementwise, broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div, "div")
    }

    /// Sums a (broadcast) tensor down to `shape`: leading extra axes and axes where `shape`
    /// has size 1 are summed away. Used by backward rules of broadcasting ops.
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let target = broadcast_shape("sum_to_shape", shape, self.shape())?;
        if target != self.shape() {
            return Err(crate::Error::ShapeMismatch {
                op: "sum_to_shape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        let pad = self.rank() - shape.len();
        let axes: Vec<usize> =
            (0..self.rank()).filter(|&i| i < pad || (shape[i - pad] == 1 && self.shape()[i] != 1)).collect();
        let summed = self.sum(&axes, true)?;
        summed.reshape(shape)
    }
}
