//! Reductions: sums over one axis of a contiguous tensor viewed as `[outer, len, inner]`.

use rayon::prelude::*;

use crate::float::Float;

/// `out[o, i] = Σ_l x[o, l, i]` for `x` of shape `[outer, len, inner]` (contiguous).
pub fn sum_axis<T: Float>(x: &[T], outer: usize, len: usize, inner: usize, out: &mut [T]) {
    if inner == 0 || outer == 0 {
        return;
    }
    if len == 0 {
        out.iter_mut().for_each(|v| *v = T::ZERO);
        return;
    }
    if inner == 1 {
        out.par_iter_mut().zip(x.par_chunks(len)).for_each(|(o, row)| {
            // Pairwise-friendly: accumulate in 8 lanes, then combine.
            let mut lanes = [T::ZERO; 8];
            let mut it = row.chunks_exact(8);
            for c in &mut it {
                for (l, &v) in lanes.iter_mut().zip(c) {
                    *l += v;
                }
            }
            let mut s = T::ZERO;
            for &v in it.remainder() {
                s += v;
            }
            for l in lanes {
                s += l;
            }
            *o = s;
        });
        return;
    }
    // Parallel over the outer index and over column blocks of `inner`.
    const COLS: usize = 1024;
    out.par_chunks_mut(inner).enumerate().for_each(|(o, orow)| {
        let block = &x[o * len * inner..(o + 1) * len * inner];
        orow.par_chunks_mut(COLS).enumerate().for_each(|(cb, ocols)| {
            let c0 = cb * COLS;
            ocols.iter_mut().for_each(|v| *v = T::ZERO);
            for l in 0..len {
                let src = &block[l * inner + c0..l * inner + c0 + ocols.len()];
                ocols.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            }
        });
    });
}

/// Sum of squares of all elements (for gradient norms), accumulated in f64.
pub fn sum_squares<T: Float>(x: &[T]) -> f64 {
    x.par_chunks(1 << 14).map(|c| c.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>()).sum()
}
