//! Matrix-vector products for the skinny shapes `m == 1` and `n == 1`, where packing a whole
//! operand into register tiles would waste most of the tile.

use rayon::prelude::*;

use crate::float::Elem;

/// A strided matrix `M` (`len × k`): value `(t, p)` is `data[t·t_stride + p·p_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub t_stride: usize,
    pub p_stride: usize,
}

/// `y[t·y_stride] = alpha·Σ_p M(t, p)·x(p) + beta·y[t·y_stride]` for `t < len`, where `x` has `k`
/// values `x_data[p·x_stride]`. With `beta == 0` the old `y` is not read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv<T: Elem, X: Elem>(
    len: usize,
    k: usize,
    mat: Mat<'_, T>,
    x_data: &[X],
    x_stride: usize,
    alpha: f32,
    beta: f32,
    y: &mut [f32],
    y_stride: usize,
) {
    let x: Vec<f32> = (0..k).map(|p| x_data[p * x_stride].to_f32()).collect();
    let mut acc = vec![0f32; len];
    let chunk = if len * k >= 1 << 18 && rayon::current_num_threads() > 1 {
        len.div_ceil(4 * rayon::current_num_threads()).next_multiple_of(64)
    } else {
        len.max(1)
    };
    let run = |(ci, out): (usize, &mut [f32])| rows(mat, &x, ci * chunk, out);
    if chunk >= len {
        run((0, &mut acc[..]));
    } else {
        acc.par_chunks_mut(chunk).enumerate().for_each(run);
    }
    for (t, a) in acc.iter().enumerate() {
        let yv = &mut y[t * y_stride];
        *yv = if beta == 0.0 { alpha * a } else { alpha * a + beta * *yv };
    }
}

/// `out[i] = Σ_p M(t0 + i, p)·x[p]`.
fn rows<T: Elem>(mat: Mat<'_, T>, x: &[f32], t0: usize, out: &mut [f32]) {
    let Mat { data, t_stride, p_stride } = mat;
    let len = out.len();
    if t_stride == 1 && len > 1 {
        // Columns of M are contiguous: accumulate x(p)·M(:, p) (an axpy per p).
        for (p, &xp) in x.iter().enumerate() {
            let start = t0 + p * p_stride;
            for (o, m) in out.iter_mut().zip(&data[start..start + len]) {
                *o += xp * m.to_f32();
            }
        }
    } else if p_stride == 1 {
        // Rows of M are contiguous: one dot product per row, 16 partial sums so it vectorises.
        for (i, o) in out.iter_mut().enumerate() {
            let start = (t0 + i) * t_stride;
            *o = dot(&data[start..start + x.len()], x);
        }
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            let base = (t0 + i) * t_stride;
            *o = x.iter().enumerate().map(|(p, &xp)| data[base + p * p_stride].to_f32() * xp).sum();
        }
    }
}

fn dot<T: Elem>(row: &[T], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (rc, xc) = (row.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = rc.remainder().iter().zip(xc.remainder()).map(|(r, &xv)| r.to_f32() * xv).sum();
    for (r, xv) in rc.zip(xc) {
        for ((l, rv), &xv) in lanes.iter_mut().zip(r).zip(xv) {
            *l += rv.to_f32() * xv;
        }
    }
    lanes.iter().sum::<f32>() + tail
}
