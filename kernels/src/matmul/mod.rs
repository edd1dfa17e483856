//! Dense matrix products `C = alpha·A·B + beta·C` on strided views.
//!
//! Operands are [`MatRef`] views with independent row and column strides, so a transposed
//! operand is just a view with its strides swapped ([`MatRef::t`]): no transpose is ever
//! materialised. `A` and `B` may be stored as f32, bf16 or f16 ([`Elem`]); they are widened to
//! f32 while being packed and accumulated in f32. [`gemm_f64`] is a plain blocked product for
//! f64 gradient checks.

use crate::float::Elem;
use crate::simd::SimdLevel;

/// A read-only strided matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A view, or `None` if some element `(i, j)` would fall outside `data`.
    pub fn new(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Option<Self> {
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(row_stride)?
                .checked_add((cols - 1).checked_mul(col_stride)?)?;
            if last >= data.len() {
                return None;
            }
        }
        Some(MatRef { data, rows, cols, row_stride, col_stride })
    }

    /// A dense row-major view (`row_stride = cols`, `col_stride = 1`).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance between consecutive rows, in elements.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// Distance between consecutive columns, in elements.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }
    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Element `(i, j)`; panics when out of range.
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A mutable matrix with unit column stride: element `(i, j)` is `data[i * row_stride + j]`.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// A view, or `None` if it would not fit in `data` or `row_stride < cols`.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, row_stride: usize) -> Option<Self> {
        if rows > 0 && cols > 0 {
            if row_stride < cols {
                return None;
            }
            let last = (rows - 1).checked_mul(row_stride)?.checked_add(cols - 1)?;
            if last >= data.len() {
                return None;
            }
        }
        Some(MatMut { data, rows, cols, row_stride })
    }

    /// A dense row-major view.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, rows, cols, cols)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance between consecutive rows, in elements.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// The underlying slice.
    pub fn data_mut(&mut self) -> &mut [T] {
        self.data
    }
}

fn check_dims<A, B, C>(a: &MatRef<'_, A>, b: &MatRef<'_, B>, c: &MatMut<'_, C>) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ ({}x{} · {}x{})", a.rows, a.cols, b.rows, b.cols);
    assert_eq!(c.rows, a.rows, "gemm: C has {} rows, A has {}", c.rows, a.rows);
    assert_eq!(c.cols, b.cols, "gemm: C has {} cols, B has {}", c.cols, b.cols);
}

/// `C = alpha·A·B + beta·C` in f32 with the best SIMD level of this CPU.
///
/// When `beta == 0` the previous contents of `C` are ignored (NaNs there do not propagate).
/// Panics if the dimensions disagree; the engine checks them first and reports a typed error.
pub fn gemm<A: Elem, B: Elem>(alpha: f32, a: MatRef<'_, A>, b: MatRef<'_, B>, beta: f32, c: MatMut<'_, f32>) {
    gemm_with(SimdLevel::detect(), alpha, a, b, beta, c)
}

/// [`gemm`] on an explicitly chosen SIMD level (which must be supported by this CPU).
pub fn gemm_with<A: Elem, B: Elem>(
    level: SimdLevel,
    alpha: f32,
    a: MatRef<'_, A>,
    b: MatRef<'_, B>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    check_dims(&a, &b, &c);
    let _ = level; // the fast packed kernels replace this plain loop
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let ldc = c.row_stride;
    use rayon::prelude::*;
    c.data.par_chunks_mut(ldc.max(1)).take(m).enumerate().for_each(|(i, crow)| {
        let mut acc = vec![0f32; n];
        for p in 0..k {
            let av = a.at(i, p).to_f32();
            for (j, accj) in acc.iter_mut().enumerate() {
                *accj += av * b.at(p, j).to_f32();
            }
        }
        for (j, accj) in acc.iter().enumerate() {
            crow[j] = if beta == 0.0 { alpha * accj } else { alpha * accj + beta * crow[j] };
        }
    });
}

/// `C = alpha·A·B + beta·C` in f64 (used by gradient checks; correct rather than fast).
pub fn gemm_f64(alpha: f64, a: MatRef<'_, f64>, b: MatRef<'_, f64>, beta: f64, c: MatMut<'_, f64>) {
    check_dims(&a, &b, &c);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let ldc = c.row_stride;
    use rayon::prelude::*;
    c.data.par_chunks_mut(ldc.max(1)).take(m).enumerate().for_each(|(i, crow)| {
        let mut acc = vec![0f64; n];
        for p in 0..k {
            let av = a.at(i, p);
            for (j, accj) in acc.iter_mut().enumerate() {
                *accj += av * b.at(p, j);
            }
        }
        for (j, accj) in acc.iter().enumerate() {
            crow[j] = if beta == 0.0 { alpha * accj } else { alpha * accj + beta * crow[j] };
        }
    });
}
