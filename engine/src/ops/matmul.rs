//! Matrix products: 2-D and batched with broadcast batch axes. Operands are passed to the
//! kernel as strided views, so a transposed operand (`x.t()`) is never materialised.

use polylm_kernels::matmul::{gemm_batched, gemm_f64, BatchMut, MatMut, MatRef};
use polylm_kernels::{Elem, SimdLevel};

use crate::autograd::{take_pending_like, BackwardOp};
use crate::layout::{broadcast_shape, Layout};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Tensor};

use super::check_same;

/// The backward of a product (also that of the fused layers in `linear`).
pub(super) struct MatmulBackward;

impl BackwardOp for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    /// A gradient an input has gathered so far (a weight's from earlier micro-batches or head
    /// chunks) is accumulated by the gradient's product itself (`beta = 1`), in place when
    /// nothing else holds it.
    fn folds_pending(&self) -> bool {
        true
    }

    fn backward_folding(
        &self,
        g: &Tensor,
        inputs: &[Tensor],
        pending: &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let ga = if !a.requires_grad_flag() {
            None
        } else if a.shape()[..a.rank() - 2] == g.shape()[..g.rank() - 2] {
            // A not broadcast over the batch: dA = G·Bᵀ has A's shape.
            Some(g.product(&b.t()?, take_pending_like(&mut pending[0], a))?)
        } else {
            Some(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?)
        };
        let gb = if !b.requires_grad_flag() {
            None
        } else if b.rank() == 2 && is_transposed_matrix(b) {
            // B is the transpose of a row-major matrix (a tied LM head's embedding used as
            // `x.matmul(&w.t())`): make its gradient in that matrix's layout, (Gᵀ·A)ᵀ, so that
            // the transpose back to the matrix, and the gradient added into the matrix's, are
            // dense. (Aᵀ·G would come back transposed, and every add into the matrix's
            // gradient would read it across rows.) [`Tensor::matmul_t`] avoids the view.
            let (a2, g2) = (a.flatten_to_2d()?, g.flatten_to_2d()?);
            Some(g2.t()?.matmul(&a2)?.t()?)
        } else if b.rank() == 2 {
            // Fold any batch into the rows: dB = A₂ᵀ·G₂ in one product, no batched temporary.
            let (at, g2) = (a.flatten_to_2d()?.t()?, g.flatten_to_2d()?);
            Some(at.product(&g2, take_pending_like(&mut pending[1], b))?)
        } else {
            Some(a.t()?.matmul(g)?.sum_to_shape(b.shape())?)
        };
        Ok(vec![ga, gb])
    }
}

/// The backward of [`Tensor::matmul_t`] (`A·Bᵀ`): dA = G·B and dB = Gᵀ·A, both in their
/// operands' own layouts, each accumulated into a gradient gathered so far as
/// [`MatmulBackward`] does.
struct MatmulTBackward;

impl BackwardOp for MatmulTBackward {
    fn name(&self) -> &'static str {
        "matmul_t"
    }
    fn folds_pending(&self) -> bool {
        true
    }
    fn backward_folding(
        &self,
        g: &Tensor,
        inputs: &[Tensor],
        pending: &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let ga = match a.requires_grad_flag() {
            true => Some(g.product(b, take_pending_like(&mut pending[0], a))?),
            false => None,
        };
        let gb = match b.requires_grad_flag() {
            true => {
                let (gt, a2) = (g.flatten_to_2d()?.t()?, a.flatten_to_2d()?);
                Some(gt.product(&a2, take_pending_like(&mut pending[1], b))?)
            }
            false => None,
        };
        Ok(vec![ga, gb])
    }
}

/// Whether the 2-D `t` is a transposed view of a dense row-major matrix (strides `[1, rows]`),
/// and not itself row-major.
fn is_transposed_matrix(t: &Tensor) -> bool {
    let (shape, strides) = (t.shape(), t.layout().strides());
    shape[0] > 1 && shape[1] > 1 && strides == [1, shape[0]]
}

/// One operand of a product: its storage slice and the view into it.
struct Operand<'a, T> {
    data: &'a [T],
    layout: &'a Layout,
}

/// Where batch element `index` (row-major over the broadcast `batch`) of an operand with
/// `layout` starts in its storage.
fn batch_offset(layout: &Layout, batch: &[usize], mut index: usize) -> usize {
    let r = layout.rank();
    let strides = layout.broadcast_strides(&[batch, &layout.shape()[r - 2..]].concat());
    let mut off = layout.offset();
    for ax in (0..batch.len()).rev() {
        off += (index % batch[ax]) * strides[ax];
        index /= batch[ax];
    }
    off
}

impl<'a, T: Copy> Operand<'a, T> {
    /// Where batch element `index` (row-major over the broadcast `batch`) starts in `data`.
    fn offset(&self, batch: &[usize], index: usize) -> usize {
        batch_offset(self.layout, batch, index)
    }

    /// The matrix of batch element `index` as a strided view.
    fn matrix(&self, batch: &[usize], index: usize) -> Result<MatRef<'a, T>> {
        let off = self.offset(batch, index);
        self.view(self.data.get(off..).unwrap_or_default())
    }

    /// The operand's matrix shape and strides over `data`.
    fn view(&self, data: &'a [T]) -> Result<MatRef<'a, T>> {
        let (shape, strides, r) = (self.layout.shape(), self.layout.strides(), self.layout.rank());
        MatRef::new(data, shape[r - 2], shape[r - 1], strides[r - 2], strides[r - 1]).ok_or_else(|| {
            Error::BadShape {
                op: "matmul",
                shape: shape.to_vec(),
                reason: "view does not fit its storage".into(),
            }
        })
    }
}

/// f32-accumulating products of every batch element into `out` (`[batch, m, n]`, row-major),
/// added to what `out` holds when `accumulate`, parallel over the batch when each product is
/// too small to split.
fn batched_f32<A: Elem, B: Elem>(
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    batch: &[usize],
    out: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let count: usize = batch.iter().product();
    let (a_tmpl, b_tmpl) = (a.view(a.data)?, b.view(b.data)?);
    let (m, n) = (a_tmpl.rows(), b_tmpl.cols());
    let a_offsets: Vec<usize> = (0..count).map(|i| a.offset(batch, i)).collect();
    let b_offsets: Vec<usize> = (0..count).map(|i| b.offset(batch, i)).collect();
    let c = BatchMut { data: out, count, ldc: n, batch_stride: m * n };
    let beta = if accumulate { 1.0 } else { 0.0 };
    gemm_batched(SimdLevel::detect(), 1.0, a_tmpl, &a_offsets, b_tmpl, &b_offsets, beta, c).map_err(|e| {
        Error::BadShape { op: "matmul", shape: a.layout.shape().to_vec(), reason: e.to_string() }
    })
}

/// f64 products of every batch element into `out` (`[batch, m, n]`, row-major), added to what
/// `out` holds when `accumulate`.
fn batched_f64(
    a: Operand<'_, f64>,
    b: Operand<'_, f64>,
    batch: &[usize],
    out: &mut [f64],
    accumulate: bool,
) -> Result<()> {
    let count: usize = batch.iter().product();
    let r = a.layout.rank();
    let (m, n) = (a.layout.shape()[r - 2], b.layout.shape()[b.layout.rank() - 1]);
    let beta = if accumulate { 1.0 } else { 0.0 };
    for (i, c) in out.chunks_mut((m * n).max(1)).take(count).enumerate() {
        let cv = MatMut::row_major(c, m, n).expect("output chunk has m·n elements");
        gemm_f64(1.0, a.matrix(batch, i)?, b.matrix(batch, i)?, beta, cv);
    }
    Ok(())
}

impl Tensor {
    /// Matrix product over the last two axes: `[..., m, k] · [..., k, n] → [..., m, n]`,
    /// with the batch axes broadcast (NumPy rules). Both operands need at least two axes.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.product(rhs, None)?;
        Ok(Tensor::from_op(out, MatmulBackward, vec![self.clone(), rhs.clone()]))
    }

    /// `self · rhsᵀ` for a 2-D `rhs` `[n, k]`: `[..., m, k] → [..., m, n]`, what
    /// `self.matmul(&rhs.t()?)` computes. The graph records `rhs` itself rather than a
    /// transposed view of it, so its gradient (Gᵀ·A) is made in its own layout and, when it
    /// already holds one (a tied LM head's embedding over several head chunks, or any weight
    /// over micro-batches), is accumulated by the product in place.
    pub fn matmul_t(&self, rhs: &Tensor) -> Result<Tensor> {
        if rhs.rank() != 2 {
            return Err(Error::ShapeMismatch {
                op: "matmul_t (needs a 2-D right operand)",
                lhs: self.shape().to_vec(),
                rhs: rhs.shape().to_vec(),
            });
        }
        let out = self.product(&rhs.t()?, None)?;
        Ok(Tensor::from_op(out, MatmulTBackward, vec![self.clone(), rhs.clone()]))
    }

    /// The product of [`Tensor::matmul`] without recording it, added to `acc` when given
    /// (`acc` must have the product's shape, dtype and device). The sum is made by the product
    /// itself (`C = A·B + C`, one rounding), into `acc`'s own buffer when nothing else holds
    /// it and it is dense, else into a new one.
    pub(crate) fn product(&self, rhs: &Tensor, acc: Option<Tensor>) -> Result<Tensor> {
        check_same("matmul", self, rhs)?;
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra < 2 || rb < 2 {
            return Err(Error::ShapeMismatch {
                op: "matmul (needs rank >= 2)",
                lhs: self.shape().to_vec(),
                rhs: rhs.shape().to_vec(),
            });
        }
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (rhs.shape()[rb - 2], rhs.shape()[rb - 1]);
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().to_vec(),
                rhs: rhs.shape().to_vec(),
            });
        }
        let batch =
            broadcast_shape("matmul", &self.shape()[..ra - 2], &rhs.shape()[..rb - 2]).map_err(|_| {
                Error::ShapeMismatch {
                    op: "matmul (batch axes)",
                    lhs: self.shape().to_vec(),
                    rhs: rhs.shape().to_vec(),
                }
            })?;
        let mut shape = batch.clone();
        shape.extend([m, n]);
        if let Some(acc) = &acc {
            check_same("matmul (accumulator)", self, acc)?;
            if acc.shape() != shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    op: "matmul (accumulator)",
                    lhs: shape,
                    rhs: acc.shape().to_vec(),
                });
            }
        }
        // [..., m, k] · [k, n] with a contiguous lhs: fold the batch into m.
        if rb == 2 && ra > 2 && self.is_contiguous() && acc.is_none() {
            let rows: usize = self.shape()[..ra - 1].iter().product();
            let flat = self.with_layout(Layout::new(vec![rows, k], vec![k, 1], self.layout().offset()));
            return Ok(flat.product(rhs, None)?.with_layout(Layout::contiguous(&shape)));
        }
        let (al, bl) = (self.layout(), rhs.layout());
        let (Some(sa), Some(sb)) = (self.storage().cpu(), rhs.storage().cpu()) else {
            return crate::cuda::with_gpu_type!(self.dtype(), T => gpu::matmul::<T>(self, rhs, &batch, acc));
        };
        let numel: usize = shape.iter().product();
        let accumulate = acc.is_some();
        // The accumulator's own buffer when it can be written in place, else its values copied
        // (zeros without one); f32, bf16 and f16 products all accumulate in f32.
        let out = match (sa, sb) {
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let mut out = acc.map_or_else(|| vec![0f64; numel], Tensor::into_compute_values);
                let (a, b) = (Operand { data: a, layout: al }, Operand { data: b, layout: bl });
                batched_f64(a, b, &batch, &mut out, accumulate)?;
                Tensor::from_vec(out, &shape)?
            }
            (sa, sb) => {
                let mut out = acc.map_or_else(|| vec![0f32; numel], Tensor::into_compute_values);
                macro_rules! product {
                    ($a:expr, $b:expr) => {
                        batched_f32(
                            Operand { data: $a, layout: al },
                            Operand { data: $b, layout: bl },
                            &batch,
                            &mut out,
                            accumulate,
                        )
                    };
                }
                match (sa, sb) {
                    (CpuStorage::F32(a), CpuStorage::F32(b)) => product!(a, b)?,
                    (CpuStorage::BF16(a), CpuStorage::BF16(b)) => product!(a, b)?,
                    (CpuStorage::F16(a), CpuStorage::F16(b)) => product!(a, b)?,
                    _ => unreachable!("dtypes were checked equal"),
                }
                Tensor::from_compute(out, &shape, self.dtype())?
            }
        };
        debug_assert!(out.dtype() == self.dtype() || self.dtype() == DType::F64);
        Ok(out)
    }
}

/// Whether bf16/f16 products on a GPU run on the tensor-core kernel (unless
/// `POLYLM_GPU_MATMUL=simple`).
pub(super) fn tensor_cores() -> bool {
    gpu::tensor_cores()
}

/// The GPU path: one launch of the tiled product when each operand's batch elements are
/// evenly spaced in its storage (always true after making it dense), with strided matrices.
mod gpu {
    use std::sync::OnceLock;

    use half::{bf16, f16};
    use polylm_kernels::cuda::matmul::{gemm, GemmDims, MatView};
    use polylm_kernels::cuda::matmul_tc::{gemm_tc, Epilogue};
    use polylm_kernels::cuda::{CudaResult, DeviceBuf};

    use super::batch_offset;
    use crate::cuda::{cuda_err, GpuElem};
    use crate::layout::Layout;
    use crate::{Result, Tensor};

    /// Whether bf16/f16 products run on the tensor-core kernel (`matmul_tc`, which passed its
    /// tests on an H200, docs/gpu-results.md) rather than the simple tiled one: yes unless
    /// `POLYLM_GPU_MATMUL=simple`.
    pub(super) fn tensor_cores() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("POLYLM_GPU_MATMUL").map_or(true, |v| v != "simple"))
    }

    /// The product kernel of each element type.
    pub(super) trait Gemm: GpuElem {
        /// `c = a · b` for `dims`.
        fn product(
            dims: GemmDims,
            a: MatView<'_, Self>,
            b: MatView<'_, Self>,
            c: &mut DeviceBuf<Self>,
        ) -> CudaResult<()>;
    }

    impl Gemm for f32 {
        fn product(
            dims: GemmDims,
            a: MatView<'_, f32>,
            b: MatView<'_, f32>,
            c: &mut DeviceBuf<f32>,
        ) -> CudaResult<()> {
            gemm(dims, a, b, c, None)
        }
    }

    macro_rules! tensor_core_gemm {
        ($t:ty) => {
            impl Gemm for $t {
                fn product(
                    dims: GemmDims,
                    a: MatView<'_, $t>,
                    b: MatView<'_, $t>,
                    c: &mut DeviceBuf<$t>,
                ) -> CudaResult<()> {
                    if tensor_cores() {
                        gemm_tc(dims, a, b, c, Epilogue::None)
                    } else {
                        gemm(dims, a, b, c, None)
                    }
                }
            }
        };
    }
    tensor_core_gemm!(bf16);
    tensor_core_gemm!(f16);

    /// Evenly spaced batch offsets `(first, step)`, if they are.
    fn progression(layout: &Layout, batch: &[usize]) -> Option<(usize, usize)> {
        let count: usize = batch.iter().product();
        let first = batch_offset(layout, batch, 0);
        let step = if count > 1 { batch_offset(layout, batch, 1).checked_sub(first)? } else { 0 };
        (0..count).all(|i| batch_offset(layout, batch, i) == first + i * step).then_some((first, step))
    }

    /// `a·b` over the broadcast `batch`, added to `acc` when given (in its own buffer when it
    /// can be written in place, else by an add).
    pub(super) fn matmul<T: Gemm>(
        a: &Tensor,
        b: &Tensor,
        batch: &[usize],
        acc: Option<Tensor>,
    ) -> Result<Tensor> {
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
        let count: usize = batch.iter().product();
        let mut shape = batch.to_vec();
        shape.extend([m, n]);
        // Each operand with its batch elements evenly spaced (a dense expanded copy when they
        // are not), with the first element's offset and the step.
        let spaced = |t: &Tensor| -> Result<(Tensor, usize, usize)> {
            if let Some((first, step)) = progression(t.layout(), batch) {
                return Ok((t.clone(), first, step));
            }
            let r = t.rank();
            let dense = t.expand(&[batch, &t.shape()[r - 2..]].concat())?.contiguous()?;
            let (first, step) = progression(dense.layout(), batch).unwrap_or_default();
            Ok((dense, first, step))
        };
        let (a, a_first, a_step) = spaced(a)?;
        let (b, b_first, b_step) = spaced(b)?;
        let (abuf, bbuf) = (a.gpu_buf::<T>()?, b.gpu_buf::<T>()?);
        let view = |buf, l: &Layout, first, step| {
            let (s, r) = (l.strides(), l.rank());
            MatView { buf, offset: first, row_stride: s[r - 2], col_stride: s[r - 1], batch_stride: step }
        };
        let run = |out: &mut DeviceBuf<T>, beta: f32| -> Result<()> {
            if k == 0 {
                if beta == 0.0 {
                    polylm_kernels::cuda::elementwise::fill(out, 0.0).map_err(cuda_err("matmul"))?;
                }
            } else if count * m * n > 0 {
                let dims = GemmDims { m, n, k, batch: count, alpha: 1.0, beta };
                let (av, bv) =
                    (view(abuf, a.layout(), a_first, a_step), view(bbuf, b.layout(), b_first, b_step));
                T::product(dims, av, bv, out).map_err(cuda_err("matmul"))?;
            }
            Ok(())
        };
        match acc {
            None => {
                let mut out = abuf.device().alloc::<T>(count * m * n).map_err(cuda_err("matmul"))?;
                run(&mut out, 0.0)?;
                Ok(Tensor::from_gpu(out, &shape))
            }
            Some(mut acc) => match acc.gpu_buf_mut::<T>() {
                Some(c) => {
                    run(c, 1.0)?;
                    Ok(acc)
                }
                // Shared or strided: a new product, added.
                None => acc.add(&matmul::<T>(&a, &b, batch, None)?),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::CpuStorage;
    use crate::{DType, Tensor};

    fn f32_ptr(t: &Tensor) -> *const f32 {
        match t.storage().cpu() {
            Some(CpuStorage::F32(v)) => v.as_ptr(),
            _ => panic!("an f32 CPU tensor"),
        }
    }

    fn operands() -> (Tensor, Tensor) {
        let a = Tensor::from_vec(vec![1.5f32, -2.0, 0.25, 3.0, -0.5, 1.25], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.75, -1.5, 0.125], &[3, 2]).unwrap();
        (a, b)
    }

    #[test]
    fn an_unshared_dense_accumulator_is_written_in_place() {
        let (a, b) = operands();
        let acc = Tensor::from_vec(vec![10.0f32, 20.0, 30.0, 40.0], &[2, 2]).unwrap();
        let before = f32_ptr(&acc);
        let out = a.product(&b, Some(acc)).unwrap();
        assert_eq!(f32_ptr(&out), before, "the product accumulated into the accumulator's buffer");
        let want: Vec<f32> = a
            .matmul(&b)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip([10.0, 20.0, 30.0, 40.0])
            .map(|(p, c)| p + c)
            .collect();
        assert_eq!(out.to_vec::<f32>().unwrap(), want);
    }

    #[test]
    fn a_shared_or_strided_accumulator_is_never_written() {
        let (a, b) = operands();
        let values = vec![10.0f32, 20.0, 30.0, 40.0];
        let acc = Tensor::from_vec(values.clone(), &[2, 2]).unwrap();
        let held = acc.clone();
        let out = a.product(&b, Some(acc)).unwrap();
        assert!(!out.shares_storage_with(&held), "a held accumulator gets a new buffer");
        assert_eq!(held.to_vec::<f32>().unwrap(), values, "and keeps its values");
        // A transposed view: dense storage, but not row-major.
        let acc_t = Tensor::from_vec(values.clone(), &[2, 2]).unwrap().t().unwrap();
        let want: Vec<f64> = a.matmul(&b).unwrap().add(&acc_t).unwrap().to_vec_f64();
        assert_eq!(a.product(&b, Some(acc_t)).unwrap().to_vec_f64(), want);
        // bf16 accumulates in f32 and rounds once.
        let (a16, b16) = (a.to_dtype(DType::BF16).unwrap(), b.to_dtype(DType::BF16).unwrap());
        let acc16 = Tensor::from_vec(values, &[2, 2]).unwrap().to_dtype(DType::BF16).unwrap();
        let got = a16.product(&b16, Some(acc16)).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let exact = a16.to_dtype(DType::F64).unwrap().matmul(&b16.to_dtype(DType::F64).unwrap()).unwrap();
        let exact: Vec<f64> =
            exact.to_vec_f64().iter().zip([10.0, 20.0, 30.0, 40.0]).map(|(p, c)| p + c).collect();
        let rounded: Vec<f64> = exact.iter().map(|&v| half::bf16::from_f64(v).to_f64()).collect();
        assert_eq!(got.to_vec_f64(), rounded);
    }

    #[test]
    fn an_accumulator_of_another_shape_or_dtype_is_an_error() {
        let (a, b) = operands();
        assert!(a.product(&b, Some(Tensor::zeros(&[2, 3], DType::F32).unwrap())).is_err());
        assert!(a.product(&b, Some(Tensor::zeros(&[2, 2], DType::F64).unwrap())).is_err());
    }
}
