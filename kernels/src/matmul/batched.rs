//! Batched products: many small GEMMs of one shape, in parallel over the batch when each is too
//! small to be worth splitting itself.

use rayon::prelude::*;

use super::{gemm_with, MatMut, MatRef, PARALLEL_MIN_WORK};
use crate::float::Elem;
use crate::simd::SimdLevel;

/// Why [`gemm_batched`] refused a batch (nothing was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// `a_offsets`, `b_offsets` and the number of C matrices disagree.
    CountMismatch,
    /// Inner dimensions of the A and B templates differ.
    ShapeMismatch,
    /// Batch element `index` of operand `operand` (`'A'`, `'B'` or `'C'`) does not fit its slice,
    /// or C's layout would make two outputs overlap.
    OutOfBounds {
        /// The operand.
        operand: char,
        /// The batch element.
        index: usize,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::CountMismatch => write!(f, "gemm_batched: offset lists and C batch count differ"),
            BatchError::ShapeMismatch => write!(f, "gemm_batched: inner dimensions differ"),
            BatchError::OutOfBounds { operand, index } => {
                write!(f, "gemm_batched: {operand} of batch element {index} does not fit its storage")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// The C side of a batch: `count` row-major `m×n` matrices with row stride `ldc`, matrix `i`
/// starting at `data[i·batch_stride]` (so outputs never overlap when
/// `batch_stride >= (m-1)·ldc + n`).
#[derive(Debug)]
pub struct BatchMut<'a> {
    /// The storage of all outputs.
    pub data: &'a mut [f32],
    /// Number of matrices.
    pub count: usize,
    /// Row stride inside each matrix (`>= n`).
    pub ldc: usize,
    /// Distance between consecutive matrices.
    pub batch_stride: usize,
}

/// `C_i = alpha·A_i·B_i + beta·C_i` for every batch element `i`, where `A_i` is the template `a`
/// (its shape and strides) shifted by `a_offsets[i]` elements in `a.data()`, likewise `B_i`,
/// and `C_i` is the `i`-th matrix of `c`. Offsets may repeat (broadcast operands).
///
/// Elements that are small (`m·n·k` below [`PARALLEL_MIN_WORK`]) run in parallel over the batch,
/// each on one thread; larger ones run one after another, each parallel inside. All views are
/// checked before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn gemm_batched<A: Elem, B: Elem>(
    level: SimdLevel,
    alpha: f32,
    a: MatRef<'_, A>,
    a_offsets: &[usize],
    b: MatRef<'_, B>,
    b_offsets: &[usize],
    beta: f32,
    c: BatchMut<'_>,
) -> Result<(), BatchError> {
    let count = c.count;
    if a_offsets.len() != count || b_offsets.len() != count {
        return Err(BatchError::CountMismatch);
    }
    if a.cols != b.rows {
        return Err(BatchError::ShapeMismatch);
    }
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if count == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    let shifted_a = |i: usize| {
        let off = a_offsets[i];
        a.data
            .get(off..)
            .and_then(|d| MatRef::new(d, m, k, a.row_stride, a.col_stride))
            .ok_or(BatchError::OutOfBounds { operand: 'A', index: i })
    };
    let shifted_b = |i: usize| {
        let off = b_offsets[i];
        b.data
            .get(off..)
            .and_then(|d| MatRef::new(d, k, n, b.row_stride, b.col_stride))
            .ok_or(BatchError::OutOfBounds { operand: 'B', index: i })
    };
    let views: Vec<(MatRef<'_, A>, MatRef<'_, B>)> =
        (0..count).map(|i| Ok((shifted_a(i)?, shifted_b(i)?))).collect::<Result<_, BatchError>>()?;
    let span = (m - 1).checked_mul(c.ldc).and_then(|v| v.checked_add(n));
    let bad_c = |index| BatchError::OutOfBounds { operand: 'C', index };
    let span = span.ok_or(bad_c(0))?;
    let last_start = (count - 1).checked_mul(c.batch_stride).ok_or(bad_c(count - 1))?;
    let fits = matches!(last_start.checked_add(span), Some(end) if end <= c.data.len());
    if c.ldc < n || (count > 1 && c.batch_stride < span) || !fits {
        return Err(bad_c(count - 1));
    }
    let stride = if count > 1 { c.batch_stride } else { span };
    let run = |(i, chunk): (usize, &mut [f32])| {
        let (av, bv) = views[i];
        // In range: chunk i starts at i·stride and holds at least `span` elements (checked above).
        if let Some(cv) = MatMut::new(&mut chunk[..span], m, n, c.ldc) {
            gemm_with(level, alpha, av, bv, beta, cv);
        }
    };
    if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK && count > 1 {
        c.data.par_chunks_mut(stride).take(count).enumerate().for_each(run);
    } else {
        c.data.chunks_mut(stride).take(count).enumerate().for_each(run);
    }
    Ok(())
}
