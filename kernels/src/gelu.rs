//! Bias + GeLU (tanh approximation), fused, forward and backward.
//!
//! `y = gelu(x + bias)` with `gelu(u) = 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³)))`, the form
//! GPT-2 and PolyLM use. The bias (length `cols`) is broadcast over rows; pass `None` for a
//! plain GeLU. Backward recomputes `u` from the saved input instead of storing it.

use rayon::prelude::*;

use crate::float::Float;

const CHUNK: usize = 1 << 14;

/// √(2/π).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation.
const CUBIC: f64 = 0.044_715;

/// GeLU (tanh form) of one value.
#[inline(always)]
pub fn gelu<T: Float>(u: T) -> T {
    let c = T::from_f64(SQRT_2_OVER_PI);
    let a = T::from_f64(CUBIC);
    let half = T::from_f64(0.5);
    half * u * (T::ONE + (c * (u + a * u * u * u)).tanh())
}

/// Derivative of [`gelu`] at `u`.
#[inline(always)]
pub fn gelu_grad<T: Float>(u: T) -> T {
    let c = T::from_f64(SQRT_2_OVER_PI);
    let a = T::from_f64(CUBIC);
    let half = T::from_f64(0.5);
    let three_a = T::from_f64(3.0 * CUBIC);
    let t = (c * (u + a * u * u * u)).tanh();
    half * (T::ONE + t) + half * u * (T::ONE - t * t) * c * (T::ONE + three_a * u * u)
}

/// `out[r, c] = gelu(x[r, c] + bias[c])` (or `gelu(x)` without a bias).
pub fn bias_gelu_forward<T: Float>(x: &[T], bias: Option<&[T]>, cols: usize, out: &mut [T]) {
    if cols == 0 {
        return;
    }
    let chunk = (CHUNK / cols).max(1) * cols;
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, xs)| {
        for (orow, xrow) in o.chunks_mut(cols).zip(xs.chunks(cols)) {
            match bias {
                Some(b) => {
                    for ((o, &v), &bv) in orow.iter_mut().zip(xrow).zip(b) {
                        *o = gelu(v + bv);
                    }
                }
                None => {
                    for (o, &v) in orow.iter_mut().zip(xrow) {
                        *o = gelu(v);
                    }
                }
            }
        }
    });
}

/// Writes `dx = dout · gelu'(x + bias)` and, when given, `dbias = Σ_rows dx` (`=`).
pub fn bias_gelu_backward<T: Float>(
    x: &[T],
    bias: Option<&[T]>,
    dout: &[T],
    cols: usize,
    dx: &mut [T],
    dbias: Option<&mut [T]>,
) {
    if cols == 0 {
        return;
    }
    let chunk = (CHUNK / cols).max(1) * cols;
    let partial = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(dout.par_chunks(chunk))
        .map(|((d, xs), gs)| {
            let mut db = vec![T::ZERO; if bias.is_some() { cols } else { 0 }];
            for ((drow, xrow), grow) in d.chunks_mut(cols).zip(xs.chunks(cols)).zip(gs.chunks(cols)) {
                for (c, ((d, &v), &g)) in drow.iter_mut().zip(xrow).zip(grow).enumerate() {
                    let u = match bias {
                        Some(b) => v + b[c],
                        None => v,
                    };
                    *d = g * gelu_grad(u);
                    if let Some(acc) = db.get_mut(c) {
                        *acc += *d;
                    }
                }
            }
            db
        })
        .reduce(Vec::new, |mut a, b| {
            if a.is_empty() {
                return b;
            }
            a.iter_mut().zip(&b).for_each(|(x, &y)| *x += y);
            a
        });
    if let Some(dbias) = dbias {
        dbias.iter_mut().for_each(|v| *v = T::ZERO);
        dbias.iter_mut().zip(&partial).for_each(|(d, &p)| *d = p);
    }
}
