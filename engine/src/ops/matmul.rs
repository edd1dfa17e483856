//! Matrix products: 2-D and batched with broadcast batch axes. Operands are passed to the
//! kernel as strided views, so a transposed operand (`x.t()`) is never materialised.

use polylm_kernels::matmul::{gemm_batched, gemm_f64, BatchMut, MatMut, MatRef};
use polylm_kernels::{Elem, SimdLevel};

use crate::autograd::BackwardOp;
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
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let ga =
            if a.requires_grad_flag() { Some(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?) } else { None };
        let gb = if !b.requires_grad_flag() {
            None
        } else if b.rank() == 2 && is_transposed_matrix(b) {
            // B is the transpose of a row-major matrix (a tied LM head's embedding): make its
            // gradient in that matrix's layout, (Gᵀ·A)ᵀ, so that the transpose back to the
            // matrix, and the gradient added into the matrix's, are dense. (Aᵀ·G would come
            // back transposed, and every add into the matrix's gradient would read it across
            // rows.)
            let (a2, g2) = (a.flatten_to_2d()?, g.flatten_to_2d()?);
            Some(g2.t()?.matmul(&a2)?.t()?)
        } else if b.rank() == 2 && a.rank() > 2 {
            // Fold the batch into the rows: dB = A₂ᵀ·G₂ in one product, no batched temporary.
            Some(a.flatten_to_2d()?.t()?.matmul(&g.flatten_to_2d()?)?)
        } else {
            Some(a.t()?.matmul(g)?.sum_to_shape(b.shape())?)
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
/// parallel over the batch when each product is too small to split.
fn batched_f32<A: Elem, B: Elem>(
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    batch: &[usize],
    out: &mut [f32],
) -> Result<()> {
    let count: usize = batch.iter().product();
    let (a_tmpl, b_tmpl) = (a.view(a.data)?, b.view(b.data)?);
    let (m, n) = (a_tmpl.rows(), b_tmpl.cols());
    let a_offsets: Vec<usize> = (0..count).map(|i| a.offset(batch, i)).collect();
    let b_offsets: Vec<usize> = (0..count).map(|i| b.offset(batch, i)).collect();
    let c = BatchMut { data: out, count, ldc: n, batch_stride: m * n };
    gemm_batched(SimdLevel::detect(), 1.0, a_tmpl, &a_offsets, b_tmpl, &b_offsets, 0.0, c).map_err(|e| {
        Error::BadShape { op: "matmul", shape: a.layout.shape().to_vec(), reason: e.to_string() }
    })
}

/// f64 products of every batch element into `out` (`[batch, m, n]`, row-major).
fn batched_f64(a: Operand<'_, f64>, b: Operand<'_, f64>, batch: &[usize], out: &mut [f64]) -> Result<()> {
    let count: usize = batch.iter().product();
    let r = a.layout.rank();
    let (m, n) = (a.layout.shape()[r - 2], b.layout.shape()[b.layout.rank() - 1]);
    for (i, c) in out.chunks_mut((m * n).max(1)).take(count).enumerate() {
        let cv = MatMut::row_major(c, m, n).expect("output chunk has m·n elements");
        gemm_f64(1.0, a.matrix(batch, i)?, b.matrix(batch, i)?, 0.0, cv);
    }
    Ok(())
}

impl Tensor {
    /// Matrix product over the last two axes: `[..., m, k] · [..., k, n] → [..., m, n]`,
    /// with the batch axes broadcast (NumPy rules). Both operands need at least two axes.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
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
        // [..., m, k] · [k, n] with a contiguous lhs: fold the batch into m.
        if rb == 2 && ra > 2 && self.is_contiguous() {
            let rows: usize = self.shape()[..ra - 1].iter().product();
            let flat = self.with_layout(Layout::new(vec![rows, k], vec![k, 1], self.layout().offset()));
            let out2 = crate::autograd::with_no_grad(|| flat.matmul(rhs))?;
            let mut shape = self.shape().to_vec();
            shape[ra - 1] = n;
            let out = out2.with_layout(Layout::contiguous(&shape));
            return Ok(Tensor::from_op(out, MatmulBackward, vec![self.clone(), rhs.clone()]));
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
        let numel: usize = shape.iter().product();
        let (al, bl) = (self.layout(), rhs.layout());
        let (Some(sa), Some(sb)) = (self.storage().cpu(), rhs.storage().cpu()) else {
            let out = crate::cuda::with_gpu_type!(self.dtype(), T => gpu::matmul::<T>(self, rhs, &batch))?;
            return Ok(Tensor::from_op(out, MatmulBackward, vec![self.clone(), rhs.clone()]));
        };
        let out = match (sa, sb) {
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let mut out = vec![0f64; numel];
                batched_f64(
                    Operand { data: a, layout: al },
                    Operand { data: b, layout: bl },
                    &batch,
                    &mut out,
                )?;
                Tensor::from_vec(out, &shape)?
            }
            (sa, sb) => {
                // f32, bf16 and f16 operands all accumulate into f32.
                let mut out = vec![0f32; numel];
                macro_rules! product {
                    ($a:expr, $b:expr) => {
                        batched_f32(
                            Operand { data: $a, layout: al },
                            Operand { data: $b, layout: bl },
                            &batch,
                            &mut out,
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
        Ok(Tensor::from_op(out, MatmulBackward, vec![self.clone(), rhs.clone()]))
    }
}

/// Whether bf16/f16 products on a GPU run on the tensor-core kernel (`POLYLM_GPU_MATMUL=tc`).
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

    /// Whether bf16/f16 products run on the tensor-core kernel (`matmul_tc`) rather than the
    /// simple tiled one: `POLYLM_GPU_MATMUL=tc` turns it on. It stays off by default until
    /// the tensor-core kernel has passed its GPU tests (see docs/gpu-results.md).
    pub(super) fn tensor_cores() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("POLYLM_GPU_MATMUL").is_ok_and(|v| v == "tc"))
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

    pub(super) fn matmul<T: Gemm>(a: &Tensor, b: &Tensor, batch: &[usize]) -> Result<Tensor> {
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
        let mut out = abuf.device().alloc::<T>(count * m * n).map_err(cuda_err("matmul"))?;
        let dims = GemmDims { m, n, k, batch: count, alpha: 1.0, beta: 0.0 };
        if k == 0 {
            polylm_kernels::cuda::elementwise::fill(&mut out, 0.0).map_err(cuda_err("matmul"))?;
        } else if count * m * n > 0 {
            T::product(
                dims,
                view(abuf, a.layout(), a_first, a_step),
                view(bbuf, b.layout(), b_first, b_step),
                &mut out,
            )
            .map_err(cuda_err("matmul"))?;
        }
        Ok(Tensor::from_gpu(out, &shape))
    }
}
