//! Vectorisable math shared by the row kernels (softmax, layernorm, GeLU, cross-entropy,
//! attention).
//!
//! * [`Real`] extends every [`Float`] with `fexp`/`madd`/`vmax`. For `f32` the
//!   exponential is a branch-free polynomial approximation (relative error ≈ 2·10⁻⁷) that
//!   the compiler vectorises; every other type
//!   (`f64`, used by gradient checks) keeps the exact libm functions. The type test is a
//!   `TypeId` comparison that folds away after monomorphisation.
//! * [`simd_dispatch!`] runs a (serial) kernel body inside a `#[target_feature]` wrapper chosen
//!   at run time from a [`SimdLevel`], so the same portable Rust is compiled three times:
//!   baseline, AVX2+FMA and AVX-512.
//!
//! This module is private to the crate.

use std::any::TypeId;

use crate::float::Float;

#[inline(always)]
fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// Reinterprets a value of type `T` as `U`; only called when `T` and `U` are the same type.
#[inline(always)]
fn same<T: Copy + 'static, U: Copy + 'static>(v: T) -> U {
    assert!(is::<T, U>());
    // SAFETY: the assert guarantees `T == U`, so size, alignment and validity are identical.
    unsafe { std::mem::transmute_copy::<T, U>(&v) }
}

/// Lower clamp of [`exp_f32`]: below it the result is flushed to zero.
const EXP_LO: f32 = -87.0;
/// Upper limit of [`exp_f32`]: above it the result is +∞ (e⁸⁸ ≈ 1.65·10³⁸ is still finite).
const EXP_HI: f32 = 88.0;

/// Branch-free e^x for f32 (Cephes polynomial on a range reduction by ln 2).
///
/// Relative error ≈ 2·10⁻⁷ on `[-87, 88]`; `x < -87` (including −∞) gives 0, `x > 88` gives
/// +∞ and NaN propagates. Written without branches or calls so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer.
    const C1: f32 = 0.693_359_4; // ln 2, high part (exact in few bits)
    const C2: f32 = -2.121_944_4e-4; // ln 2, low part
    let xc = if x < EXP_LO { EXP_LO } else { x };
    let xc = if xc > EXP_HI { EXP_HI } else { xc };
    let t = xc.madd::<FMA>(LOG2E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = (-n).madd::<FMA>(C2, (-n).madd::<FMA>(C1, xc));
    let z = r * r;
    let mut p = 1.987_569_1e-4_f32;
    p = p.madd::<FMA>(r, 1.398_199_9e-3);
    p = p.madd::<FMA>(r, 8.333_452e-3);
    p = p.madd::<FMA>(r, 4.166_579_6e-2);
    p = p.madd::<FMA>(r, 1.666_666_5e-1);
    p = p.madd::<FMA>(r, 0.5);
    let y = p.madd::<FMA>(z, r) + 1.0;
    let pow2 = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let res = y * pow2;
    let res = if x < EXP_LO { 0.0 } else { res };
    if x > EXP_HI {
        f32::INFINITY
    } else {
        res
    }
}

/// Vectorisable extensions of [`Float`]; see the module docs.
pub(crate) trait Real: Float {
    /// e^self: fast polynomial for f32 (fused when `FMA`), exact for every other type.
    fn fexp<const FMA: bool>(self) -> Self;
    /// `self * b + c`, fused when `FMA` (only set inside an FMA-enabled dispatch arm).
    fn madd<const FMA: bool>(self, b: Self, c: Self) -> Self;
    /// The larger of the two, as a plain compare-select (vectorises; NaN handling unspecified).
    fn vmax(self, o: Self) -> Self;
}

impl<T: Float> Real for T {
    #[inline(always)]
    fn fexp<const FMA: bool>(self) -> T {
        if is::<T, f32>() {
            same::<f32, T>(exp_f32::<FMA>(same::<T, f32>(self)))
        } else {
            self.exp()
        }
    }
    #[inline(always)]
    fn madd<const FMA: bool>(self, b: T, c: T) -> T {
        if FMA && is::<T, f32>() {
            same::<f32, T>(same::<T, f32>(self).mul_add(same::<T, f32>(b), same::<T, f32>(c)))
        } else if FMA && is::<T, f64>() {
            same::<f64, T>(same::<T, f64>(self).mul_add(same::<T, f64>(b), same::<T, f64>(c)))
        } else {
            self * b + c
        }
    }
    #[inline(always)]
    fn vmax(self, o: T) -> T {
        if self > o {
            self
        } else {
            o
        }
    }
}

/// Accumulator lanes used by the vectorisable reductions (one AVX-512 f32 register).
pub(crate) const LANES: usize = 16;

/// A register-sized group of [`LANES`] values, passed by value so that the compiler keeps it
/// in a vector register (an accumulator array indexed in a loop may be left in memory).
#[derive(Clone, Copy)]
struct V<T>([T; LANES]);

#[allow(clippy::needless_range_loop)] // lane loops written for the vectoriser
impl<T: Real> V<T> {
    #[inline(always)]
    fn splat(v: T) -> Self {
        V([v; LANES])
    }
    #[inline(always)]
    fn load(x: &[T]) -> Self {
        let mut r = [T::ZERO; LANES];
        r.copy_from_slice(&x[..LANES]);
        V(r)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for l in 0..LANES {
            r[l] = self.0[l] + o.0[l];
        }
        V(r)
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        let mut r = self.0;
        for l in 0..LANES {
            r[l] = self.0[l].vmax(o.0[l]);
        }
        V(r)
    }
    #[inline(always)]
    fn madd<const FMA: bool>(self, b: Self, c: Self) -> Self {
        let mut r = self.0;
        for l in 0..LANES {
            r[l] = self.0[l].madd::<FMA>(b.0[l], c.0[l]);
        }
        V(r)
    }
}

/// Width of the main loop of the reductions: four independent [`V`] accumulators.
const WIDE: usize = 4 * LANES;

/// Σ xᵢ with independent accumulators (vectorises; order differs from a serial sum).
#[inline(always)]
pub(crate) fn sum<T: Real>(x: &[T]) -> T {
    let z = V::splat(T::ZERO);
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let mut it = x.chunks_exact(WIDE);
    for c in &mut it {
        a0 = a0.add(V::load(c));
        a1 = a1.add(V::load(&c[LANES..]));
        a2 = a2.add(V::load(&c[2 * LANES..]));
        a3 = a3.add(V::load(&c[3 * LANES..]));
    }
    let mut it = it.remainder().chunks_exact(LANES);
    for c in &mut it {
        a0 = a0.add(V::load(c));
    }
    let mut s = T::ZERO;
    for &v in it.remainder() {
        s += v;
    }
    hsum(a0.add(a1).add(a2.add(a3)).0) + s
}

/// Σ aᵢ·bᵢ with independent accumulators.
#[inline(always)]
pub(crate) fn dot<T: Real, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let z = V::splat(T::ZERO);
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let mut ia = a.chunks_exact(WIDE);
    let mut ib = b.chunks_exact(WIDE);
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        a0 = V::load(ca).madd::<FMA>(V::load(cb), a0);
        a1 = V::load(&ca[LANES..]).madd::<FMA>(V::load(&cb[LANES..]), a1);
        a2 = V::load(&ca[2 * LANES..]).madd::<FMA>(V::load(&cb[2 * LANES..]), a2);
        a3 = V::load(&ca[3 * LANES..]).madd::<FMA>(V::load(&cb[3 * LANES..]), a3);
    }
    let mut ia = ia.remainder().chunks_exact(LANES);
    let mut ib = ib.remainder().chunks_exact(LANES);
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        a0 = V::load(ca).madd::<FMA>(V::load(cb), a0);
    }
    let mut s = T::ZERO;
    for (&x, &y) in ia.remainder().iter().zip(ib.remainder()) {
        s = x.madd::<FMA>(y, s);
    }
    hsum(a0.add(a1).add(a2.add(a3)).0) + s
}

/// max xᵢ (−∞ for an empty slice) with independent lanes.
#[inline(always)]
pub(crate) fn max<T: Real>(x: &[T]) -> T {
    let z = V::splat(T::NEG_INFINITY);
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let mut it = x.chunks_exact(WIDE);
    for c in &mut it {
        a0 = a0.max(V::load(c));
        a1 = a1.max(V::load(&c[LANES..]));
        a2 = a2.max(V::load(&c[2 * LANES..]));
        a3 = a3.max(V::load(&c[3 * LANES..]));
    }
    let mut it = it.remainder().chunks_exact(LANES);
    for c in &mut it {
        a0 = a0.max(V::load(c));
    }
    let mut m = T::NEG_INFINITY;
    for &v in it.remainder() {
        m = m.vmax(v);
    }
    for a in a0.max(a1).max(a2.max(a3)).0 {
        m = m.vmax(a);
    }
    m
}

/// `out[i] = e^(x[i] − shift)` (a pure map, which vectorises cleanly).
#[inline(always)]
pub(crate) fn exp_shift<T: Real, const FMA: bool>(x: &[T], shift: T, out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - shift).fexp::<FMA>();
    }
}

/// `out[i] = e^(x[i] − shift)`, returning Σ out (map, then sum while `out` is in L1).
#[inline(always)]
pub(crate) fn exp_shift_sum<T: Real, const FMA: bool>(x: &[T], shift: T, out: &mut [T]) -> T {
    let n = x.len().min(out.len());
    exp_shift::<T, FMA>(&x[..n], shift, &mut out[..n]);
    sum(&out[..n])
}

/// `x ← e^(x − shift)` in place, returning the sum.
#[inline(always)]
pub(crate) fn exp_shift_sum_inplace<T: Real, const FMA: bool>(x: &mut [T], shift: T) -> T {
    for v in x.iter_mut() {
        *v = (*v - shift).fexp::<FMA>();
    }
    sum(x)
}

/// Σ e^(xᵢ − shift) without storing the terms (they pass through a small stack buffer).
#[inline(always)]
pub(crate) fn sum_exp_shift<T: Real, const FMA: bool>(x: &[T], shift: T) -> T {
    const BUF: usize = 256;
    let mut buf = [T::ZERO; BUF];
    let mut s = T::ZERO;
    for c in x.chunks(BUF) {
        let b = &mut buf[..c.len()];
        exp_shift::<T, FMA>(c, shift, b);
        s += sum(b);
    }
    s
}

/// Pairwise sum of the lanes.
#[inline(always)]
pub(crate) fn hsum<T: Real>(mut acc: [T; LANES]) -> T {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            let hi = acc[l + w];
            acc[l] += hi;
        }
        w /= 2;
    }
    acc[0]
}

/// Calls `f` inside a function compiled with AVX-512 (F, VL, BW, DQ), AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support those features (`SimdLevel::Avx512.is_supported()`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2")]
pub(crate) unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Calls `f` inside a function compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`SimdLevel::Avx2Fma.is_supported()`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2")]
pub(crate) unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `simd_dispatch!(level, FMA => body)` evaluates `body` (a serial kernel; keep rayon calls
/// outside) compiled for the instruction set `level`, with the `const FMA: bool` named by the
/// caller set to whether fused multiply-add is available. Every helper the body calls must be
/// `#[inline(always)]` so that it is compiled with the wrapper's features.
macro_rules! simd_dispatch {
    ($level:expr, $fma:ident => $body:expr) => {{
        let level: $crate::simd::SimdLevel = $level;
        match level {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::SimdLevel::Avx512 if level.is_supported() => {
                #[allow(dead_code)]
                const $fma: bool = true;
                // SAFETY: `is_supported` checked that the CPU has AVX-512F/VL/BW/DQ, AVX2, FMA.
                unsafe {
                    $crate::fastmath::run_avx512(
                        #[inline(always)]
                        || $body,
                    )
                }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::simd::SimdLevel::Avx2Fma | $crate::simd::SimdLevel::Avx512
                if $crate::simd::SimdLevel::Avx2Fma.is_supported() =>
            {
                #[allow(dead_code)]
                const $fma: bool = true;
                // SAFETY: `is_supported` checked that the CPU has AVX2 and FMA.
                unsafe {
                    $crate::fastmath::run_avx2(
                        #[inline(always)]
                        || $body,
                    )
                }
            }
            _ => {
                #[allow(dead_code)]
                const $fma: bool = false;
                $body
            }
        }
    }};
}
pub(crate) use simd_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_relative_error() {
        let mut worst = 0.0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -87.0 + 175.0 * i as f64 / n as f64;
            let x32 = x as f32;
            let exact = (x32 as f64).exp();
            let got = exp_f32::<false>(x32) as f64;
            let got_fma = exp_f32::<true>(x32) as f64;
            worst = worst.max(((got_fma - exact) / exact).abs());
            worst = worst.max(((got - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "exp_f32 worst relative error {worst}");
        assert_eq!(exp_f32::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32::<false>(-100.0), 0.0);
        assert_eq!(exp_f32::<false>(0.0), 1.0);
        assert_eq!(exp_f32::<false>(100.0), f32::INFINITY);
        assert!(exp_f32::<false>(f32::NAN).is_nan());
    }

    #[test]
    fn real_is_exact_for_f64() {
        assert_eq!(0.3f64.fexp::<true>(), 0.3f64.exp());
        assert_eq!(2.0f64.madd::<true>(3.0, 1.0), 7.0);
    }
}
