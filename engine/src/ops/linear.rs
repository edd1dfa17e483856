//! Fully connected layers over the last axis: `x·w + b` ([`Tensor::linear`]) and
//! `gelu(x·w + b)` ([`Tensor::linear_gelu`]).
//!
//! Where the product runs on the GPU's tensor-core kernel (bf16/f16, unless
//! `POLYLM_GPU_MATMUL=simple`), the bias, and the GeLU with its pre-activation saved for the
//! backward pass, are fused into the product's store: one pass over the output instead of
//! two or three. Everywhere else a layer is the composition `x.matmul(w)?.add(b)` (or
//! `.bias_gelu(b)`), so the CPU results are those of the separate ops, bit for bit. The
//! gradients are the same either way: dB is the column sum of the output gradient (after
//! GeLU's derivative), dX and dW those of the product.

use crate::autograd::BackwardOp;
use crate::{Error, Result, Tensor};

use super::check_same;
use super::matmul::MatmulBackward;

/// The backward of a fused layer; `pre` is the saved pre-activation of `linear_gelu`.
struct LinearBackward {
    pre: Option<Tensor>,
}

impl BackwardOp for LinearBackward {
    fn name(&self) -> &'static str {
        if self.pre.is_some() {
            "linear_gelu"
        } else {
            "linear"
        }
    }
    /// The product's gradients accumulate into those gathered so far, as a product's do.
    fn folds_pending(&self) -> bool {
        true
    }

    fn backward_folding(
        &self,
        g: &Tensor,
        inputs: &[Tensor],
        pending: &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, w, b) = (&inputs[0], &inputs[1], &inputs[2]);
        let (dpre, db) = match &self.pre {
            Some(pre) => {
                let (dpre, db) = super::gelu::gelu_backward_with_bias_grad(pre, g)?;
                (dpre, Some(db))
            }
            None => (g.clone(), b.requires_grad_flag().then(|| g.sum_to_shape(b.shape())).transpose()?),
        };
        let mut grads = MatmulBackward.backward_folding(&dpre, &[x.clone(), w.clone()], &mut pending[..2])?;
        grads.push(db.filter(|_| b.requires_grad_flag()));
        Ok(grads)
    }
}

/// Checks a layer's operands: `w` is `[k, n]` with `k` the last axis of `x`, `b` is `[n]`.
fn check(op: &'static str, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<()> {
    check_same(op, x, w)?;
    check_same(op, x, b)?;
    let k = x.shape().last().copied();
    if x.rank() < 2 || w.rank() != 2 || Some(w.shape()[0]) != k {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: w.shape().to_vec() });
    }
    if b.shape() != [w.shape()[1]] {
        return Err(Error::ShapeMismatch { op, lhs: w.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    Ok(())
}

impl Tensor {
    /// `self · w + b` over the last axis: `[..., k] · [k, n] + [n] → [..., n]` (at least two
    /// axes in `self`).
    pub fn linear(&self, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        check("linear", self, w, b)?;
        match gpu::fused(self, w, b, gpu::Activation::None)? {
            Some((out, _)) => Ok(Tensor::from_op(
                out,
                LinearBackward { pre: None },
                vec![self.clone(), w.clone(), b.clone()],
            )),
            None => self.matmul(w)?.add(b),
        }
    }

    /// `gelu(self · w + b)` (tanh form) over the last axis; see [`Tensor::linear`]. On the
    /// fused GPU path the pre-activation is stored for the backward only when a gradient will
    /// be taken (not in the forward pass of activation recomputation, which runs without
    /// gradients).
    pub fn linear_gelu(&self, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        check("linear_gelu", self, w, b)?;
        let recorded =
            crate::autograd::is_grad_enabled() && [self, w, b].iter().any(|t| t.requires_grad_flag());
        let activation = if recorded { gpu::Activation::GeluSaved } else { gpu::Activation::Gelu };
        match gpu::fused(self, w, b, activation)? {
            Some((out, pre)) => {
                Ok(Tensor::from_op(out, LinearBackward { pre }, vec![self.clone(), w.clone(), b.clone()]))
            }
            None => self.matmul(w)?.bias_gelu(b),
        }
    }
}

/// The fused GPU path.
mod gpu {
    use half::{bf16, f16};
    use polylm_kernels::cuda::matmul::{GemmDims, MatView};
    use polylm_kernels::cuda::matmul_tc::{gemm_tc, Epilogue, TensorCoreElem};

    use crate::cuda::{alloc_like, cuda_err, dense, GpuElem};
    use crate::{DType, Result, Tensor};

    /// What follows the bias in the fused epilogue.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Activation {
        /// Nothing: `x·w + b`.
        None,
        /// GeLU, the pre-activation not kept (no backward will need it).
        Gelu,
        /// GeLU, the pre-activation stored for the backward.
        GeluSaved,
    }

    /// `x·w + b` (and its GeLU, with the pre-activation when asked) in one product with the
    /// epilogue fused, or `None` when the tensor-core path does not take it (the CPU, f32,
    /// `POLYLM_GPU_MATMUL=simple`, a strided `x`, an empty product).
    pub(super) fn fused(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        activation: Activation,
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        if x.device().is_cpu()
            || !super::super::matmul::tensor_cores()
            || !x.is_contiguous()
            || x.numel() == 0
        {
            return Ok(None);
        }
        match x.dtype() {
            DType::BF16 => run::<bf16>(x, w, b, activation).map(Some),
            DType::F16 => run::<f16>(x, w, b, activation).map(Some),
            _ => Ok(None),
        }
    }

    fn run<T: GpuElem + TensorCoreElem>(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        activation: Activation,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let rows = x.numel() / k;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let (xbuf, wbuf) = (x.gpu_buf::<T>()?, w.gpu_buf::<T>()?);
        let bias = dense::<T>(b)?;
        let ws = w.layout().strides();
        let a =
            MatView { buf: xbuf, offset: x.layout().offset(), row_stride: k, col_stride: 1, batch_stride: 0 };
        let bv = MatView {
            buf: wbuf,
            offset: w.layout().offset(),
            row_stride: ws[0],
            col_stride: ws[1],
            batch_stride: 0,
        };
        let dims = GemmDims { m: rows, n, k, batch: 1, alpha: 1.0, beta: 0.0 };
        let mut out = alloc_like::<T>(x, rows * n)?;
        let mut pre =
            (activation == Activation::GeluSaved).then(|| alloc_like::<T>(x, rows * n)).transpose()?;
        let (epilogue, op) = match activation {
            Activation::None => (Epilogue::Bias(&bias), "linear"),
            _ => (Epilogue::BiasGelu { bias: &bias, pre_activation: pre.as_mut() }, "linear_gelu"),
        };
        gemm_tc(dims, a, bv, &mut out, epilogue).map_err(cuda_err(op))?;
        Ok((Tensor::from_gpu(out, &shape), pre.map(|p| Tensor::from_gpu(p, &shape))))
    }
}
