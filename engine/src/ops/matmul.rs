//! Matrix products: 2-D and batched with broadcast batch axes. Operands are passed to the
//! kernel as strided views, so a transposed operand (`x.t()`) is never materialised.

use polylm_kernels::matmul::{gemm, gemm_f64, MatMut, MatRef};

use crate::autograd::BackwardOp;
use crate::layout::{broadcast_shape, Layout};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Tensor};

use super::check_same;

struct MatmulBackward;

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
        } else if b.rank() == 2 && a.rank() > 2 {
            // Fold the batch into the rows: dB = A₂ᵀ·G₂ in one product, no batched temporary.
            Some(a.flatten_to_2d()?.t()?.matmul(&g.flatten_to_2d()?)?)
        } else {
            Some(a.t()?.matmul(g)?.sum_to_shape(b.shape())?)
        };
        Ok(vec![ga, gb])
    }
}

/// Offset of batch element `index` (row-major over `batch`) in a view with these batch strides.
fn batch_offset(batch: &[usize], strides: &[usize], mut index: usize) -> usize {
    let mut off = 0;
    for ax in (0..batch.len()).rev() {
        off += (index % batch[ax]) * strides[ax];
        index /= batch[ax];
    }
    off
}

/// The 2-D strided view of batch element `index`.
fn mat_view<'a, T: Copy>(
    data: &'a [T],
    layout: &Layout,
    batch: &[usize],
    index: usize,
) -> Result<MatRef<'a, T>> {
    let r = layout.rank();
    let strides = layout.broadcast_strides(&[batch, &layout.shape()[r - 2..]].concat());
    let off = layout.offset() + batch_offset(batch, &strides[..batch.len()], index);
    let (rows, cols) = (layout.shape()[r - 2], layout.shape()[r - 1]);
    let (rs, cs) = (layout.strides()[r - 2], layout.strides()[r - 1]);
    MatRef::new(&data[off.min(data.len())..], rows, cols, rs, cs).ok_or_else(|| Error::BadShape {
        op: "matmul",
        shape: layout.shape().to_vec(),
        reason: "view does not fit its storage".into(),
    })
}

/// One operand of a product: its storage slice and the view into it.
struct Operand<'a, T> {
    data: &'a [T],
    layout: &'a Layout,
}

/// Runs `product` once per batch element, writing `out` (`[batch, m, n]`, row-major).
fn batched<A: Copy, B: Copy, C>(
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    batch: &[usize],
    out: &mut [C],
    product: impl Fn(MatRef<'_, A>, MatRef<'_, B>, MatMut<'_, C>),
) -> Result<()> {
    let count: usize = batch.iter().product();
    let (m, n) = (a.layout.shape()[a.layout.rank() - 2], b.layout.shape()[b.layout.rank() - 1]);
    for (i, c) in out.chunks_mut((m * n).max(1)).take(count).enumerate() {
        let av = mat_view(a.data, a.layout, batch, i)?;
        let bv = mat_view(b.data, b.layout, batch, i)?;
        product(av, bv, MatMut::row_major(c, m, n).expect("output chunk has m·n elements"));
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
        macro_rules! product {
            ($a:expr, $b:expr, $out:expr, $gemm:expr) => {
                batched(
                    Operand { data: $a, layout: al },
                    Operand { data: $b, layout: bl },
                    &batch,
                    $out,
                    $gemm,
                )
            };
        }
        let out = match (self.storage().cpu(), rhs.storage().cpu()) {
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let mut out = vec![0f64; numel];
                product!(a, b, &mut out, |x, y, c| gemm_f64(1.0, x, y, 0.0, c))?;
                Tensor::from_vec(out, &shape)?
            }
            (sa, sb) => {
                // f32, bf16 and f16 operands all accumulate into f32.
                let mut out = vec![0f32; numel];
                match (sa, sb) {
                    (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                        product!(a, b, &mut out, |x, y, c| gemm(1.0, x, y, 0.0, c))?
                    }
                    (CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
                        product!(a, b, &mut out, |x, y, c| gemm(1.0, x, y, 0.0, c))?
                    }
                    (CpuStorage::F16(a), CpuStorage::F16(b)) => {
                        product!(a, b, &mut out, |x, y, c| gemm(1.0, x, y, 0.0, c))?
                    }
                    _ => unreachable!("dtypes were checked equal"),
                }
                Tensor::from_compute(out, &shape, self.dtype())?
            }
        };
        debug_assert!(out.dtype() == self.dtype() || self.dtype() == DType::F64);
        Ok(Tensor::from_op(out, MatmulBackward, vec![self.clone(), rhs.clone()]))
    }
}
