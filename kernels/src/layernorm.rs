//! LayerNorm over the last dimension, forward and backward fused.
//!
//! Forward normalises each row of `cols` values to zero mean and unit variance (biased
//! variance, as PyTorch and GPT-2 do), then applies `weight` and `bias`; it saves the row mean
//! and reciprocal standard deviation for the backward pass, which then needs one read of `x`
//! and `dout` per row.
//!
//! Both passes are memory-bound: each rayon task takes a group of rows (about 32 K elements),
//! and each row is read from memory once (the second and third sweeps over it hit L1). The row
//! loops use lane accumulators so they vectorise, and are compiled for the best instruction set
//! found at run time.

use rayon::prelude::*;

use crate::fastmath::{self, simd_dispatch, Real, LANES};
use crate::float::Float;
use crate::simd::SimdLevel;
use crate::softmax::rows_per_task;

/// `out = (x - mean) * rstd * weight + bias` row by row; writes `mean` and `rstd` per row.
///
/// `x` and `out` hold `rows * cols` values; `weight`, `bias` hold `cols`; `mean`, `rstd` hold `rows`.
#[allow(clippy::too_many_arguments)]
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
    layernorm_forward_with(x, weight, bias, eps, cols, out, mean, rstd, SimdLevel::detect());
}

#[allow(clippy::too_many_arguments)]
fn layernorm_forward_with<T: Float>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    eps: T,
    cols: usize,
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    level: SimdLevel,
) {
    if cols == 0 {
        return;
    }
    let (weight, bias) = (&weight[..cols], &bias[..cols]);
    let rpt = rows_per_task(cols);
    out.par_chunks_mut(rpt * cols)
        .zip(x.par_chunks(rpt * cols))
        .zip(mean.par_chunks_mut(rpt).zip(rstd.par_chunks_mut(rpt)))
        .for_each(|((o, xs), (m, r))| {
            simd_dispatch!(level, FMA => forward_rows::<T, FMA>(xs, weight, bias, eps, cols, o, m, r))
        });
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows<T: Real, const FMA: bool>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    eps: T,
    cols: usize,
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    let n = T::from_usize(cols);
    for (((o, xr), m), r) in out.chunks_exact_mut(cols).zip(x.chunks_exact(cols)).zip(mean).zip(rstd) {
        let mu = fastmath::sum(xr) / n;
        // Centred second pass (the row is in L1): no cancellation for rows with a large mean.
        let mut acc = [T::ZERO; LANES];
        let mut it = xr.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                let d = c[l] - mu;
                acc[l] = d.madd::<FMA>(d, acc[l]);
            }
        }
        let mut var = T::ZERO;
        for &v in it.remainder() {
            let d = v - mu;
            var = d.madd::<FMA>(d, var);
        }
        let var = fastmath::hsum(acc) + var;
        let rs = T::ONE / (var / n + eps).sqrt();
        for (((o, &v), &w), &b) in o.iter_mut().zip(xr).zip(weight).zip(bias) {
            *o = ((v - mu) * rs).madd::<FMA>(w, b);
        }
        *m = mu;
        *r = rs;
    }
}

/// Gradients of [`layernorm_forward`]: writes `dx`, and writes (`=`) `dweight` and `dbias`.
#[allow(clippy::too_many_arguments)]
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
    layernorm_backward_with(x, weight, mean, rstd, dout, cols, dx, dweight, dbias, SimdLevel::detect());
}

#[allow(clippy::too_many_arguments)]
fn layernorm_backward_with<T: Float>(
    x: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    dout: &[T],
    cols: usize,
    dx: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
    level: SimdLevel,
) {
    dweight.iter_mut().for_each(|v| *v = T::ZERO);
    dbias.iter_mut().for_each(|v| *v = T::ZERO);
    if cols == 0 {
        return;
    }
    let weight = &weight[..cols];
    let rpt = rows_per_task(cols);
    let (dw, db) = dx
        .par_chunks_mut(cols * rpt)
        .zip(x.par_chunks(cols * rpt))
        .zip(dout.par_chunks(cols * rpt))
        .zip(mean.par_chunks(rpt).zip(rstd.par_chunks(rpt)))
        .fold(
            || (vec![T::ZERO; cols], vec![T::ZERO; cols]),
            |(mut dw, mut db), (((dxb, xb), gb), (mb, rb))| {
                #[cfg(target_arch = "x86_64")]
                if fastmath::avx512_f32::<T>(level) {
                    use fastmath::{as_f32, as_f32_mut};
                    // SAFETY: `avx512_f32` checked that the CPU supports AVX-512F.
                    unsafe {
                        avx512::backward(
                            as_f32(xb),
                            as_f32(weight),
                            as_f32(mb),
                            as_f32(rb),
                            as_f32(gb),
                            cols,
                            as_f32_mut(dxb),
                            as_f32_mut(&mut dw),
                            as_f32_mut(&mut db),
                        )
                    };
                    return (dw, db);
                }
                simd_dispatch!(level, FMA => backward_rows::<T, FMA>(
                    xb, weight, mb, rb, gb, cols, dxb, &mut dw, &mut db
                ));
                (dw, db)
            },
        )
        .reduce(
            || (vec![T::ZERO; cols], vec![T::ZERO; cols]),
            |(mut aw, mut ab), (bw, bb)| {
                aw.iter_mut().zip(&bw).for_each(|(a, &b)| *a += b);
                ab.iter_mut().zip(&bb).for_each(|(a, &b)| *a += b);
                (aw, ab)
            },
        );
    dweight[..cols].copy_from_slice(&dw);
    dbias[..cols].copy_from_slice(&db);
}

/// Backward of a group of rows; accumulates (`+=`) into `dw`, `db`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows<T: Real, const FMA: bool>(
    x: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    dout: &[T],
    cols: usize,
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
) {
    let n = T::from_usize(cols);
    let (dw, db) = (&mut dw[..cols], &mut db[..cols]);
    for (((dxr, xr), gr), (&mu, &rs)) in dx
        .chunks_exact_mut(cols)
        .zip(x.chunks_exact(cols))
        .zip(dout.chunks_exact(cols))
        .zip(mean.iter().zip(rstd))
    {
        // dxhat = dout·w; dx = rs·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)).
        let mut acc_g = [T::ZERO; LANES];
        let mut acc_gx = [T::ZERO; LANES];
        let full = cols / LANES * LANES;
        for c0 in (0..full).step_by(LANES) {
            let (xc, gc, wc) = (&xr[c0..c0 + LANES], &gr[c0..c0 + LANES], &weight[c0..c0 + LANES]);
            let (dwc, dbc) = (&mut dw[c0..c0 + LANES], &mut db[c0..c0 + LANES]);
            for l in 0..LANES {
                let xhat = (xc[l] - mu) * rs;
                let g = gc[l];
                let gh = g * wc[l];
                acc_g[l] += gh;
                acc_gx[l] = gh.madd::<FMA>(xhat, acc_gx[l]);
                dwc[l] = g.madd::<FMA>(xhat, dwc[l]);
                dbc[l] += g;
            }
        }
        let (mut sum_g, mut sum_gx) = (T::ZERO, T::ZERO);
        for i in full..cols {
            let xhat = (xr[i] - mu) * rs;
            let g = gr[i];
            let gh = g * weight[i];
            sum_g += gh;
            sum_gx = gh.madd::<FMA>(xhat, sum_gx);
            dw[i] = g.madd::<FMA>(xhat, dw[i]);
            db[i] += g;
        }
        let mg = (fastmath::hsum(acc_g) + sum_g) / n;
        let mgx = (fastmath::hsum(acc_gx) + sum_gx) / n;
        for ((d, (&v, &g)), &w) in dxr.iter_mut().zip(xr.iter().zip(gr)).zip(weight) {
            let xhat = (v - mu) * rs;
            *d = rs * (g * w - mg - xhat * mgx);
        }
    }
}

/// The f32 backward row loop written with AVX-512 intrinsics.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::fastmath::avx512::{hsum, load, load_mask, prefetch, splat, store, store_mask, tail_mask, W};

    /// Same contract as [`super::backward_rows`] for f32.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn backward(
        x: &[f32],
        weight: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dout: &[f32],
        cols: usize,
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let rows =
            (x.len() / cols).min(dout.len() / cols).min(dx.len() / cols).min(mean.len()).min(rstd.len());
        let (weight, dw, db) = (&weight[..cols], &mut dw[..cols], &mut db[..cols]);
        let full = cols / W * W;
        let tail = (full < cols).then(|| tail_mask(cols - full));
        let inv_n = 1.0 / cols as f32;
        for r in 0..rows {
            let off = r * cols;
            let (xr, gr, dxr) = (&x[off..off + cols], &dout[off..off + cols], &mut dx[off..off + cols]);
            let (rs, mrs) = (splat(rstd[r]), splat(-mean[r] * rstd[r]));
            // Pass 1 (reads the row from memory): Σ g·w, Σ g·w·xhat, and dw += g·xhat, db += g.
            let (mut ag, mut agx) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut step1 = |i: usize, m: Option<__mmask16>| {
                let ld = |s: &[f32]| match m {
                    None => load(s, i),
                    Some(m) => load_mask(s, i, m),
                };
                let (xv, gv) = (ld(xr), ld(gr));
                let xhat = _mm512_fmadd_ps(xv, rs, mrs);
                let gh = _mm512_mul_ps(gv, ld(weight));
                ag = _mm512_add_ps(ag, gh);
                agx = _mm512_fmadd_ps(gh, xhat, agx);
                let (w1, b1) = (_mm512_fmadd_ps(gv, xhat, ld(dw)), _mm512_add_ps(gv, ld(db)));
                match m {
                    None => {
                        store(dw, i, w1);
                        store(db, i, b1);
                    }
                    Some(m) => {
                        store_mask(dw, i, m, w1);
                        store_mask(db, i, m, b1);
                    }
                }
            };
            let mut i = 0;
            while i < full {
                // Bring the lines of `dx` in ahead of the second pass's stores.
                prefetch(dxr, i);
                step1(i, None);
                i += W;
            }
            if let Some(m) = tail {
                step1(full, Some(m));
            }
            // dx = rs·(g·w − mean(g·w) − xhat·mean(g·w·xhat)) (the row is now in L1).
            let c0 = splat(-hsum(ag) * inv_n * rstd[r]);
            let c1 = splat(-hsum(agx) * inv_n * rstd[r]);
            let step2 = |i: usize, m: Option<__mmask16>, dxr: &mut [f32]| {
                let ld = |s: &[f32]| match m {
                    None => load(s, i),
                    Some(m) => load_mask(s, i, m),
                };
                let xhat = _mm512_fmadd_ps(ld(xr), rs, mrs);
                let gh = _mm512_mul_ps(ld(gr), ld(weight));
                let d = _mm512_fmadd_ps(gh, rs, _mm512_fmadd_ps(xhat, c1, c0));
                match m {
                    None => store(dxr, i, d),
                    Some(m) => store_mask(dxr, i, m, d),
                }
            };
            let mut i = 0;
            while i < full {
                step2(i, None, dxr);
                i += W;
            }
            if let Some(m) = tail {
                step2(full, Some(m), dxr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::test_util::*;

    struct Ref {
        out: Vec<f64>,
        mean: Vec<f64>,
        rstd: Vec<f64>,
        dx: Vec<f64>,
        dw: Vec<f64>,
        db: Vec<f64>,
    }

    /// Naive per-element reference; the backward is the analytic gradient written element-wise.
    fn reference(x: &[f64], w: &[f64], b: &[f64], g: &[f64], eps: f64, cols: usize) -> Ref {
        let rows = x.len() / cols;
        let n = cols as f64;
        let mut r = Ref {
            out: vec![0.0; x.len()],
            mean: vec![0.0; rows],
            rstd: vec![0.0; rows],
            dx: vec![0.0; x.len()],
            dw: vec![0.0; cols],
            db: vec![0.0; cols],
        };
        for i in 0..rows {
            let xr = &x[i * cols..][..cols];
            let mu = xr.iter().sum::<f64>() / n;
            let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
            let rs = 1.0 / (var + eps).sqrt();
            r.mean[i] = mu;
            r.rstd[i] = rs;
            let xhat: Vec<f64> = xr.iter().map(|v| (v - mu) * rs).collect();
            for c in 0..cols {
                r.out[i * cols + c] = xhat[c] * w[c] + b[c];
                r.dw[c] += g[i * cols + c] * xhat[c];
                r.db[c] += g[i * cols + c];
            }
            // dx_c = Σ_k g_k w_k ∂xhat_k/∂x_c, ∂xhat_k/∂x_c = rs (δ_kc − 1/n − xhat_k xhat_c / n).
            for c in 0..cols {
                let mut s = 0.0;
                for k in 0..cols {
                    let delta = if k == c { 1.0 } else { 0.0 };
                    s += g[i * cols + k] * w[k] * rs * (delta - 1.0 / n - xhat[k] * xhat[c] / n);
                }
                r.dx[i * cols + c] = s;
            }
        }
        r
    }

    #[test]
    fn matches_reference() {
        let mut rng = Rng::new(11);
        for case in 0..30 {
            let rows = rng.range(1, 7);
            let cols = if case % 6 == 0 { rng.range(100, 400) } else { rng.range(1, 70) };
            let offset = rng.uniform(-3.0, 3.0);
            let x = rng.vec(rows * cols, -2.0 + offset, 2.0 + offset);
            let w = rng.vec(cols, 0.5, 1.5);
            let b = rng.vec(cols, -0.5, 0.5);
            let g = rng.vec(rows * cols, -1.0, 1.0);
            let eps = 1e-5;
            let want = reference(&x, &w, &b, &g, eps, cols);
            for level in SimdLevel::all_supported() {
                let (mut out, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
                layernorm_forward_with(&x, &w, &b, eps, cols, &mut out, &mut mean, &mut rstd, level);
                assert_close(&out, &want.out, 1e-12, 1e-12, "ln out f64");
                assert_close(&mean, &want.mean, 1e-12, 1e-12, "ln mean f64");
                assert_close(&rstd, &want.rstd, 1e-12, 1e-12, "ln rstd f64");
                let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![9.0; cols], vec![9.0; cols]);
                layernorm_backward_with(&x, &w, &mean, &rstd, &g, cols, &mut dx, &mut dw, &mut db, level);
                assert_close(&dx, &want.dx, 1e-10, 1e-11, "ln dx f64");
                assert_close(&dw, &want.dw, 1e-12, 1e-12, "ln dw f64");
                assert_close(&db, &want.db, 1e-12, 1e-12, "ln db f64");

                let (x32, w32, b32, g32) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&g));
                let (mut out, mut mean, mut rstd) =
                    (vec![0.0f32; x.len()], vec![0.0f32; rows], vec![0.0f32; rows]);
                layernorm_forward_with(
                    &x32, &w32, &b32, eps as f32, cols, &mut out, &mut mean, &mut rstd, level,
                );
                let up = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
                let want32 = reference(&up(&x32), &up(&w32), &up(&b32), &up(&g32), eps, cols);
                assert_close(&out, &want32.out, 1e-5, 1e-5, "ln out f32");
                assert_close(&mean, &want32.mean, 1e-5, 1e-6, "ln mean f32");
                assert_close(&rstd, &want32.rstd, 1e-5, 1e-6, "ln rstd f32");
                let (mut dx, mut dw, mut db) =
                    (vec![0.0f32; x.len()], vec![9.0f32; cols], vec![9.0f32; cols]);
                layernorm_backward_with(
                    &x32, &w32, &mean, &rstd, &g32, cols, &mut dx, &mut dw, &mut db, level,
                );
                let scale = rows as f64;
                assert_close(&dx, &want32.dx, 1e-4, 1e-5, "ln dx f32");
                assert_close(&dw, &want32.dw, 1e-5, 1e-5 * scale, "ln dw f32");
                assert_close(&db, &want32.db, 1e-5, 1e-5 * scale, "ln db f32");
            }
        }
    }

    #[test]
    fn many_rows_reduce_parameter_gradients() {
        // More rows than one task holds, so dweight/dbias are reduced across tasks.
        let (rows, cols) = (300, 200);
        let mut rng = Rng::new(3);
        let x = rng.vec(rows * cols, -2.0, 2.0);
        let w = rng.vec(cols, 0.5, 1.5);
        let b = rng.vec(cols, -0.5, 0.5);
        let g = rng.vec(rows * cols, -1.0, 1.0);
        let want = reference(&x, &w, &b, &g, 1e-5, cols);
        let (mut out, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(&x, &w, &b, 1e-5, cols, &mut out, &mut mean, &mut rstd);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; cols], vec![0.0; cols]);
        layernorm_backward(&x, &w, &mean, &rstd, &g, cols, &mut dx, &mut dw, &mut db);
        assert_close(&dw, &want.dw, 1e-12, 1e-11, "dw");
        assert_close(&db, &want.db, 1e-12, 1e-11, "db");
        assert_close(&dx, &want.dx, 1e-10, 1e-11, "dx");
    }
}
