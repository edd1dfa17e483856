//! LayerNorm over the last dimension, forward and backward fused.
//!
//! Forward normalises each row of `cols` values to zero mean and unit variance (biased
//! variance, as PyTorch and GPT-2 do), then applies `weight` and `bias`; it saves the row mean
//! and reciprocal standard deviation for the backward pass, which then needs one read of `x`
//! and `dout` per row.

use rayon::prelude::*;

use crate::float::Float;

/// Rows handled per rayon task when reducing parameter gradients.
const ROWS_PER_TASK: usize = 64;

/// `out = (x - mean) * rstd * weight + bias` row by row; writes `mean` and `rstd` per row.
///
/// `x` and `out` hold `rows * cols` values; `weight`, `bias` hold `cols`; `mean`, `rstd` hold `rows`.
pub fn layernorm_forward<T: Float>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    eps: T,
    cols: usize,
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    if cols == 0 {
        return;
    }
    let n = T::from_usize(cols);
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, xr), (m, r))| {
            let mut sum = T::ZERO;
            for &v in xr {
                sum += v;
            }
            let mu = sum / n;
            let mut var = T::ZERO;
            for &v in xr {
                let d = v - mu;
                var += d * d;
            }
            let rs = T::ONE / (var / n + eps).sqrt();
            for (((o, &v), &w), &b) in o.iter_mut().zip(xr).zip(weight).zip(bias) {
                *o = (v - mu) * rs * w + b;
            }
            *m = mu;
            *r = rs;
        });
}

/// Gradients of [`layernorm_forward`]: writes `dx`, and writes (`=`) `dweight` and `dbias`.
pub fn layernorm_backward<T: Float>(
    x: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    dout: &[T],
    cols: usize,
    dx: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
) {
    dweight.iter_mut().for_each(|v| *v = T::ZERO);
    dbias.iter_mut().for_each(|v| *v = T::ZERO);
    if cols == 0 {
        return;
    }
    let n = T::from_usize(cols);
    let (dw, db) = dx
        .par_chunks_mut(cols * ROWS_PER_TASK)
        .zip(x.par_chunks(cols * ROWS_PER_TASK))
        .zip(dout.par_chunks(cols * ROWS_PER_TASK))
        .zip(mean.par_chunks(ROWS_PER_TASK).zip(rstd.par_chunks(ROWS_PER_TASK)))
        .map(|(((dxb, xb), db), (mb, rb))| {
            let mut dw = vec![T::ZERO; cols];
            let mut dbias = vec![T::ZERO; cols];
            for (r, ((dxr, xr), dor)) in
                dxb.chunks_mut(cols).zip(xb.chunks(cols)).zip(db.chunks(cols)).enumerate()
            {
                let (mu, rs) = (mb[r], rb[r]);
                // dxhat = dout * w; dx = rs * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                let mut sum_g = T::ZERO;
                let mut sum_gx = T::ZERO;
                for (i, (&v, &g)) in xr.iter().zip(dor).enumerate() {
                    let xhat = (v - mu) * rs;
                    let gh = g * weight[i];
                    sum_g += gh;
                    sum_gx += gh * xhat;
                    dw[i] += g * xhat;
                    dbias[i] += g;
                }
                let mg = sum_g / n;
                let mgx = sum_gx / n;
                for (i, (d, (&v, &g))) in dxr.iter_mut().zip(xr.iter().zip(dor)).enumerate() {
                    let xhat = (v - mu) * rs;
                    *d = rs * (g * weight[i] - mg - xhat * mgx);
                }
            }
            (dw, dbias)
        })
        .reduce(
            || (vec![T::ZERO; cols], vec![T::ZERO; cols]),
            |(mut aw, mut ab), (bw, bb)| {
                aw.iter_mut().zip(&bw).for_each(|(a, &b)| *a += b);
                ab.iter_mut().zip(&bb).for_each(|(a, &b)| *a += b);
                (aw, ab)
            },
        );
    dweight.copy_from_slice(&dw);
    dbias.copy_from_slice(&db);
}
