//! Bias + GeLU (tanh approximation), fused, forward and backward.
//!
//! `y = gelu(x + bias)` with `gelu(u) = 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³)))`, the form
//! GPT-2 and PolyLM use. The bias (length `cols`) is broadcast over rows; pass `None` for a
//! plain GeLU. Backward recomputes `u` from the saved input instead of storing it.
//!
//! The row kernels use the identity `½(1 + tanh z) = σ(2z) = 1/(1 + e^{−2z})`, so each element
//! costs one exponential and one division, with no cancellation for large negative inputs
//! (where `1 + tanh z` would lose all its digits). The loops are branch-free and vectorise
//! (compiled for the best instruction set found at run time); for f32 the exponential is the
//! fast polynomial of `fastmath` (relative error ≈ 2·10⁻⁷), for f64 it is libm's. The scalar
//! [`gelu`] and [`gelu_grad`] stay exactly as before.

use rayon::prelude::*;

use crate::fastmath::{self, simd_dispatch, Real};
use crate::float::Float;
use crate::simd::SimdLevel;
use crate::softmax::rows_per_task;

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

/// [`gelu`] in the form `u·σ(2z) = u / (1 + e^{−2z})`, `z = √(2/π)(u + 0.044715u³)`, which
/// equals `½u(1 + tanh z)` but needs one exponential and no cancelling subtraction.
#[inline(always)]
fn gelu_fast<T: Real, const FMA: bool>(u: T) -> T {
    let c2 = T::from_f64(-2.0 * SQRT_2_OVER_PI);
    let ac2 = T::from_f64(-2.0 * CUBIC * SQRT_2_OVER_PI);
    let e = (u * (u * u).madd::<FMA>(ac2, c2)).fexp::<FMA>();
    u / (T::ONE + e)
}

/// [`gelu_grad`] in the sigmoid form: with `s = σ(2z) = 1/(1 + E)`, `E = e^{−2z}`,
/// `½(1 + tanh z) = s` and `½(1 − tanh² z) = 2s(1 − s) = 2E·s²`, so
/// `gelu'(u) = s + 2u·E·s²·√(2/π)(1 + 3·0.044715u²)`.
#[inline(always)]
fn gelu_grad_fast<T: Real, const FMA: bool>(u: T) -> T {
    let c = T::from_f64(SQRT_2_OVER_PI);
    let c2 = T::from_f64(-2.0 * SQRT_2_OVER_PI);
    let ac2 = T::from_f64(-2.0 * CUBIC * SQRT_2_OVER_PI);
    let ac3 = T::from_f64(3.0 * CUBIC * SQRT_2_OVER_PI);
    let u2 = u * u;
    // Clamped so that E stays finite (E·s would be ∞·0 otherwise); past it gelu' < 10⁻³².
    let arg = u * u2.madd::<FMA>(ac2, c2);
    let limit = T::from_f64(80.0);
    let e = (if arg > limit { limit } else { arg }).fexp::<FMA>();
    let s = T::ONE / (T::ONE + e);
    let dz = u2.madd::<FMA>(ac3, c);
    // (E·s) ≤ 1 and (2u·s) stay finite for any finite u.
    ((e * s) * ((u + u) * s)).madd::<FMA>(dz, s)
}

/// `out[r, c] = gelu(x[r, c] + bias[c])` (or `gelu(x)` without a bias).
pub fn bias_gelu_forward<T: Float>(x: &[T], bias: Option<&[T]>, cols: usize, out: &mut [T]) {
    bias_gelu_forward_with(x, bias, cols, out, SimdLevel::detect());
}

fn bias_gelu_forward_with<T: Float>(
    x: &[T],
    bias: Option<&[T]>,
    cols: usize,
    out: &mut [T],
    level: SimdLevel,
) {
    if cols == 0 {
        return;
    }
    let chunk = rows_per_task(cols) * cols;
    let bias = bias.map(|b| &b[..cols]);
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, xs)| {
        #[cfg(target_arch = "x86_64")]
        if fastmath::avx512_f32::<T>(level) {
            let (xs, o, b) = (fastmath::as_f32(xs), fastmath::as_f32_mut(o), bias.map(fastmath::as_f32));
            // SAFETY: `avx512_f32` checked that the CPU supports AVX-512 (F and DQ).
            return unsafe { avx512::forward(xs, b, cols, o) };
        }
        simd_dispatch!(level, FMA => forward_rows::<T, FMA>(xs, bias, cols, o))
    });
}

#[inline(always)]
fn forward_rows<T: Real, const FMA: bool>(x: &[T], bias: Option<&[T]>, cols: usize, out: &mut [T]) {
    match bias {
        Some(b) => {
            for (orow, xrow) in out.chunks_mut(cols).zip(x.chunks(cols)) {
                for ((o, &v), &bv) in orow.iter_mut().zip(xrow).zip(b) {
                    *o = gelu_fast::<T, FMA>(v + bv);
                }
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = gelu_fast::<T, FMA>(v);
            }
        }
    }
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
    bias_gelu_backward_with(x, bias, dout, cols, dx, dbias, SimdLevel::detect());
}

fn bias_gelu_backward_with<T: Float>(
    x: &[T],
    bias: Option<&[T]>,
    dout: &[T],
    cols: usize,
    dx: &mut [T],
    dbias: Option<&mut [T]>,
    level: SimdLevel,
) {
    if cols == 0 {
        return;
    }
    let chunk = rows_per_task(cols) * cols;
    let bias = bias.map(|b| &b[..cols]);
    let want_db = bias.is_some() && dbias.is_some();
    let partial = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(dout.par_chunks(chunk))
        .fold(
            || vec![T::ZERO; if want_db { cols } else { 0 }],
            |mut db, ((d, xs), gs)| {
                #[cfg(target_arch = "x86_64")]
                if fastmath::avx512_f32::<T>(level) {
                    let (xs, gs, d) = (fastmath::as_f32(xs), fastmath::as_f32(gs), fastmath::as_f32_mut(d));
                    let (b, dbf) = (bias.map(fastmath::as_f32), fastmath::as_f32_mut(&mut db));
                    // SAFETY: `avx512_f32` checked that the CPU supports AVX-512 (F and DQ).
                    unsafe { avx512::backward(xs, b, gs, cols, d, dbf) };
                    return db;
                }
                simd_dispatch!(level, FMA => backward_rows::<T, FMA>(xs, bias, gs, cols, d, &mut db));
                db
            },
        )
        .reduce(Vec::new, |mut a, b| {
            if a.is_empty() {
                return b;
            }
            a.iter_mut().zip(&b).for_each(|(x, &y)| *x += y);
            a
        });
    if let Some(dbias) = dbias {
        // `partial` is empty when there were no rows: the bias gradient is then zero.
        match partial.len() {
            0 => dbias.fill(T::ZERO),
            _ => dbias.copy_from_slice(&partial),
        }
    }
}

/// Backward of a group of rows; accumulates `Σ dx` per column into `db` when it is non-empty.
#[inline(always)]
fn backward_rows<T: Real, const FMA: bool>(
    x: &[T],
    bias: Option<&[T]>,
    dout: &[T],
    cols: usize,
    dx: &mut [T],
    db: &mut [T],
) {
    match bias {
        Some(b) => {
            for ((drow, xrow), grow) in dx.chunks_mut(cols).zip(x.chunks(cols)).zip(dout.chunks(cols)) {
                for ((d, &v), (&g, &bv)) in drow.iter_mut().zip(xrow).zip(grow.iter().zip(b)) {
                    *d = g * gelu_grad_fast::<T, FMA>(v + bv);
                }
                if !db.is_empty() {
                    for (a, &d) in db.iter_mut().zip(drow.iter()) {
                        *a += d;
                    }
                }
            }
        }
        None => {
            for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dout) {
                *d = g * gelu_grad_fast::<T, FMA>(v);
            }
        }
    }
}

/// The f32 row loops written with AVX-512 intrinsics (see [`fastmath::avx512`]): the sigmoid
/// form above in base 2, `u·σ(2z) = u / (1 + 2^w)` with `w = −2·log₂e·z`, an exponent clamped
/// once to ±126 (so `1 + 2^w` stays finite and the results keep their limits), and the division
/// done as a reciprocal estimate refined by one Newton–Raphson step.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{CUBIC, SQRT_2_OVER_PI};
    use crate::fastmath::avx512::{
        clamp_abs, div_nr, exp2_bounded, load, load_mask, prefetch, recip_nr, store, store_mask, tail_mask, W,
    };

    /// `w = u·(A·u² + B)` = −2·log₂e·√(2/π)(u + 0.044715u³).
    const B: f32 = (-2.0 * SQRT_2_OVER_PI * std::f64::consts::LOG2_E) as f32;
    const A: f32 = (-2.0 * SQRT_2_OVER_PI * CUBIC * std::f64::consts::LOG2_E) as f32;
    /// `2·dz/du = 2√(2/π)(1 + 3·0.044715u²)` = `A3·u² + C2`.
    const C2: f32 = (2.0 * SQRT_2_OVER_PI) as f32;
    const A3: f32 = (6.0 * SQRT_2_OVER_PI * CUBIC) as f32;
    /// Software prefetch distance in elements (1 KiB: measured best for these streams).
    const PF: usize = 256;

    /// Bound on |w|: 2^126 + 1 is finite and its reciprocal normal.
    const W_MAX: f32 = 126.0;

    /// `(u, u², 2^w)` for a vector of GeLU inputs.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn pow_term(u: __m512) -> (__m512, __m512) {
        let u2 = _mm512_mul_ps(u, u);
        let w = _mm512_mul_ps(u, _mm512_fmadd_ps(u2, _mm512_set1_ps(A), _mm512_set1_ps(B)));
        (u2, exp2_bounded(clamp_abs(w, W_MAX)))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn gelu(u: __m512) -> __m512 {
        let (_, e) = pow_term(u);
        div_nr(u, _mm512_add_ps(e, _mm512_set1_ps(1.0)))
    }

    /// gelu'(u) = s + 2u·E·s²·dz, `E = 2^w`, `s = 1/(1 + E)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn gelu_grad(u: __m512) -> __m512 {
        let (u2, e) = pow_term(u);
        let s = recip_nr(_mm512_add_ps(e, _mm512_set1_ps(1.0)));
        let dz2 = _mm512_fmadd_ps(u2, _mm512_set1_ps(A3), _mm512_set1_ps(C2));
        let k = _mm512_mul_ps(_mm512_mul_ps(e, s), _mm512_mul_ps(u, s));
        _mm512_fmadd_ps(k, dz2, s)
    }

    /// `out = gelu(x + b)` over one span (`b` as long as `x`, or absent).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn forward_span(x: &[f32], b: Option<&[f32]>, out: &mut [f32]) {
        let n = x.len().min(out.len());
        let input = |i: usize, m: Option<__mmask16>| {
            let (mut u, bv) = match m {
                None => (load(x, i), b.map(|b| load(b, i))),
                Some(m) => (load_mask(x, i, m), b.map(|b| load_mask(b, i, m))),
            };
            if let Some(bv) = bv {
                u = _mm512_add_ps(u, bv);
            }
            u
        };
        let mut i = 0;
        while i + W <= n {
            prefetch(x, i + PF);
            store(out, i, gelu(input(i, None)));
            i += W;
        }
        if i < n {
            let m = tail_mask(n - i);
            store_mask(out, i, m, gelu(input(i, Some(m))));
        }
    }

    /// Forward over whole rows of `cols` values (`bias` has `cols` values).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn forward(x: &[f32], bias: Option<&[f32]>, cols: usize, out: &mut [f32]) {
        match bias {
            Some(b) => {
                for (o, xr) in out.chunks_mut(cols).zip(x.chunks(cols)) {
                    forward_span(xr, Some(&b[..xr.len()]), o);
                }
            }
            None => forward_span(x, None, out),
        }
    }

    /// `dx = g·gelu'(x + b)` over one span, and `db += dx` when `db` is given.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn backward_span(x: &[f32], b: Option<&[f32]>, g: &[f32], dx: &mut [f32], mut db: Option<&mut [f32]>) {
        let n = x.len().min(g.len()).min(dx.len());
        let mut step = |i: usize, m: Option<__mmask16>, dx: &mut [f32]| {
            let ld = |s: &[f32]| match m {
                None => load(s, i),
                Some(m) => load_mask(s, i, m),
            };
            let mut u = ld(x);
            if let Some(b) = b {
                u = _mm512_add_ps(u, ld(b));
            }
            let d = _mm512_mul_ps(ld(g), gelu_grad(u));
            match m {
                None => store(dx, i, d),
                Some(m) => store_mask(dx, i, m, d),
            }
            if let Some(db) = db.as_deref_mut() {
                let acc = _mm512_add_ps(ld(db), d);
                match m {
                    None => store(db, i, acc),
                    Some(m) => store_mask(db, i, m, acc),
                }
            }
        };
        let mut i = 0;
        while i + W <= n {
            prefetch(x, i + PF);
            prefetch(g, i + PF);
            step(i, None, dx);
            i += W;
        }
        if i < n {
            step(i, Some(tail_mask(n - i)), dx);
        }
    }

    /// Backward over whole rows; `db` (`cols` values, or empty for none) accumulates `Σ dx`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn backward(
        x: &[f32],
        bias: Option<&[f32]>,
        dout: &[f32],
        cols: usize,
        dx: &mut [f32],
        db: &mut [f32],
    ) {
        match bias {
            Some(b) => {
                for ((d, xr), gr) in dx.chunks_mut(cols).zip(x.chunks(cols)).zip(dout.chunks(cols)) {
                    let dbr = if db.is_empty() { None } else { Some(&mut db[..xr.len()]) };
                    backward_span(xr, Some(&b[..xr.len()]), gr, d, dbr);
                }
            }
            None => backward_span(x, None, dout, dx, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::test_util::*;

    fn ref_gelu(u: f64) -> f64 {
        0.5 * u * (1.0 + (SQRT_2_OVER_PI * (u + CUBIC * u * u * u)).tanh())
    }

    fn ref_grad(u: f64) -> f64 {
        let inner = SQRT_2_OVER_PI * (u + CUBIC * u * u * u);
        let t = inner.tanh();
        let dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * u * u);
        0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * dinner
    }

    #[test]
    fn matches_reference() {
        let mut rng = Rng::new(5);
        for case in 0..30 {
            let rows = rng.range(1, 8);
            let cols = if case % 5 == 0 { rng.range(100, 5000) } else { rng.range(1, 70) };
            let x = rng.vec(rows * cols, -6.0, 6.0);
            let b = rng.vec(cols, -1.0, 1.0);
            let g = rng.vec(rows * cols, -1.0, 1.0);
            for with_bias in [true, false] {
                let u: Vec<f64> =
                    x.iter().enumerate().map(|(i, &v)| if with_bias { v + b[i % cols] } else { v }).collect();
                let want: Vec<f64> = u.iter().map(|&v| ref_gelu(v)).collect();
                let want_dx: Vec<f64> = u.iter().zip(&g).map(|(&v, &gg)| gg * ref_grad(v)).collect();
                let mut want_db = vec![0.0; cols];
                for (i, d) in want_dx.iter().enumerate() {
                    want_db[i % cols] += d;
                }
                let bias = with_bias.then_some(&b[..]);
                for level in SimdLevel::all_supported() {
                    let mut out = vec![0.0; x.len()];
                    bias_gelu_forward_with(&x, bias, cols, &mut out, level);
                    assert_close(&out, &want, 1e-12, 1e-14, "gelu f64");
                    let mut dx = vec![0.0; x.len()];
                    let mut db = vec![7.0; cols];
                    bias_gelu_backward_with(&x, bias, &g, cols, &mut dx, Some(&mut db), level);
                    assert_close(&dx, &want_dx, 1e-12, 1e-14, "gelu dx f64");
                    if with_bias {
                        assert_close(&db, &want_db, 1e-12, 1e-12, "gelu db f64");
                    } else {
                        assert!(db.iter().all(|&v| v == 0.0));
                    }

                    // f32: inputs rounded to f32, reference in f64 on the rounded values.
                    let (x32, b32, g32) = (to_f32(&x), to_f32(&b), to_f32(&g));
                    let u32_: Vec<f64> = x32
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| if with_bias { (v + b32[i % cols]) as f64 } else { v as f64 })
                        .collect();
                    let want32: Vec<f64> = u32_.iter().map(|&v| ref_gelu(v)).collect();
                    let want_dx32: Vec<f64> =
                        u32_.iter().zip(&g32).map(|(&v, &gg)| gg as f64 * ref_grad(v)).collect();
                    let mut db32w = vec![0.0; cols];
                    for (i, d) in want_dx32.iter().enumerate() {
                        db32w[i % cols] += d;
                    }
                    let bias32 = with_bias.then_some(&b32[..]);
                    let mut out = vec![0.0f32; x.len()];
                    bias_gelu_forward_with(&x32, bias32, cols, &mut out, level);
                    assert_close(&out, &want32, 2e-6, 2e-7, "gelu f32");
                    let mut dx = vec![0.0f32; x.len()];
                    let mut db = vec![7.0f32; cols];
                    bias_gelu_backward_with(&x32, bias32, &g32, cols, &mut dx, Some(&mut db), level);
                    assert_close(&dx, &want_dx32, 2e-6, 2e-7, "gelu dx f32");
                    if with_bias {
                        assert_close(&db, &db32w, 1e-5, 1e-6 * rows as f64, "gelu db f32");
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        let xs = [-1e4, -300.0, -100.0, -20.0, -9.7, -9.0, 9.0, 20.0, 100.0, 1e4];
        for level in SimdLevel::all_supported() {
            let x32: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
            let g32 = vec![1.0f32; xs.len()];
            let (mut out, mut dx) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
            bias_gelu_forward_with(&x32, None, xs.len(), &mut out, level);
            bias_gelu_backward_with(&x32, None, &g32, xs.len(), &mut dx, None, level);
            let want: Vec<f64> = xs.iter().map(|&u| ref_gelu(u)).collect();
            let want_dx: Vec<f64> = xs.iter().map(|&u| ref_grad(u)).collect();
            assert_close(&out, &want, 1e-6, 1e-6, "gelu extreme f32");
            assert_close(&dx, &want_dx, 1e-6, 1e-6, "gelu' extreme f32");
            let (mut out, mut dx) = (vec![0.0f64; xs.len()], vec![0.0f64; xs.len()]);
            bias_gelu_forward_with(&xs, None, xs.len(), &mut out, level);
            bias_gelu_backward_with(&xs, None, &[1.0; 10], xs.len(), &mut dx, None, level);
            assert_close(&out, &want, 1e-12, 1e-14, "gelu extreme f64");
            assert_close(&dx, &want_dx, 1e-12, 1e-14, "gelu' extreme f64");
        }
    }

    #[test]
    fn scalar_functions_match_reference() {
        for i in -100..=100 {
            let u = i as f64 * 0.07;
            assert!((gelu(u) - ref_gelu(u)).abs() < 1e-14);
            assert!((gelu_grad(u) - ref_grad(u)).abs() < 1e-14);
        }
    }
}
