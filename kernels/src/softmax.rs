//! Softmax over the last dimension, forward and backward.
//!
//! Forward subtracts the row maximum before exponentiating so that large logits never overflow.
//! Backward uses the saved output: `dx = y ⊙ (dy − ⟨y, dy⟩)`.

use rayon::prelude::*;

use crate::float::Float;

/// `out[r] = softmax(x[r])` for each row of `cols` values.
pub fn softmax_forward<T: Float>(x: &[T], cols: usize, out: &mut [T]) {
    if cols == 0 {
        return;
    }
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, xr)| {
        let mut m = T::NEG_INFINITY;
        for &v in xr {
            m = m.max(v);
        }
        let mut s = T::ZERO;
        for (o, &v) in o.iter_mut().zip(xr) {
            *o = (v - m).exp();
            s += *o;
        }
        let inv = T::ONE / s;
        o.iter_mut().for_each(|v| *v *= inv);
    });
}

/// `dx = y ⊙ (dy − Σ y·dy)` row by row, from the forward output `y`.
pub fn softmax_backward<T: Float>(y: &[T], dy: &[T], cols: usize, dx: &mut [T]) {
    if cols == 0 {
        return;
    }
    dx.par_chunks_mut(cols)
        .zip(y.par_chunks(cols).zip(dy.par_chunks(cols)))
        .for_each(|(d, (yr, gr))| {
            let mut dot = T::ZERO;
            for (&a, &b) in yr.iter().zip(gr) {
                dot += a * b;
            }
            for (d, (&a, &b)) in d.iter_mut().zip(yr.iter().zip(gr)) {
                *d = a * (b - dot);
            }
        });
}
