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
use crate::simd::SimdLevel;

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

/// Whether a kernel on `T` at `level` should take its explicit AVX-512 f32 path (`T` is `f32`,
/// `level` is [`SimdLevel::Avx512`] and the CPU supports it).
#[inline(always)]
pub(crate) fn avx512_f32<T: 'static>(level: SimdLevel) -> bool {
    cfg!(target_arch = "x86_64") && is::<T, f32>() && level == SimdLevel::Avx512 && level.is_supported()
}

/// `x` as `&[f32]`; only called when `T` is `f32` (checked).
#[inline(always)]
pub(crate) fn as_f32<T: 'static>(x: &[T]) -> &[f32] {
    assert!(is::<T, f32>());
    // SAFETY: the assert guarantees `T == f32`, so the slice is reinterpreted as itself.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
}

/// `x` as `&mut [f32]`; only called when `T` is `f32` (checked).
#[inline(always)]
pub(crate) fn as_f32_mut<T: 'static>(x: &mut [T]) -> &mut [f32] {
    assert!(is::<T, f32>());
    // SAFETY: the assert guarantees `T == f32`; the borrow is moved into the result.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
}

/// Explicit AVX-512 f32 building blocks (16 lanes per `__m512`) for the hand-written row loops
/// of the kernels. Every function needs AVX-512F (and DQ where stated), which the callers check
/// with [`avx512_f32`] before entering a `#[target_feature]` function.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes per vector.
    pub(crate) const W: usize = 16;

    /// The mask of the first `n` lanes (`n < 16`).
    #[inline(always)]
    pub(crate) fn tail_mask(n: usize) -> __mmask16 {
        debug_assert!(n < W);
        ((1u32 << n) - 1) as __mmask16
    }

    /// Loads 16 values from `x[i..i + 16]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn load(x: &[f32], i: usize) -> __m512 {
        assert!(i + W <= x.len());
        // SAFETY: the assert keeps the 16 lanes inside `x`; unaligned loads are allowed.
        unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) }
    }

    /// Loads the lanes of `m` from `x[i..]` (zero elsewhere).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn load_mask(x: &[f32], i: usize, m: __mmask16) -> __m512 {
        assert!(i + (16 - m.leading_zeros() as usize) <= x.len());
        // SAFETY: the assert keeps every lane selected by `m` inside `x`; masked-off lanes are
        // not accessed (AVX-512 masked loads suppress their faults).
        unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().add(i)) }
    }

    /// Stores 16 values to `x[i..i + 16]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn store(x: &mut [f32], i: usize, v: __m512) {
        assert!(i + W <= x.len());
        // SAFETY: the assert keeps the 16 lanes inside `x`; unaligned stores are allowed.
        unsafe { _mm512_storeu_ps(x.as_mut_ptr().add(i), v) }
    }

    /// Stores the lanes of `m` to `x[i..]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn store_mask(x: &mut [f32], i: usize, m: __mmask16, v: __m512) {
        assert!(i + (16 - m.leading_zeros() as usize) <= x.len());
        // SAFETY: the assert keeps every lane selected by `m` inside `x`; masked-off lanes are
        // neither written nor faulted on.
        unsafe { _mm512_mask_storeu_ps(x.as_mut_ptr().add(i), m, v) }
    }

    /// Horizontal sum.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// Horizontal maximum.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn hmax(v: __m512) -> f32 {
        _mm512_reduce_max_ps(v)
    }

    /// Prefetches the cache line holding `x[i]` into L1 (any `i`: nothing is dereferenced).
    #[inline(always)]
    pub(crate) fn prefetch(x: &[f32], i: usize) {
        // SAFETY: a prefetch never faults, whatever the address; `wrapping_add` keeps the
        // pointer arithmetic defined past the end of the slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().wrapping_add(i).cast()) }
    }

    #[inline(always)]
    pub(crate) fn splat(v: f32) -> __m512 {
        // SAFETY: a broadcast has no memory or feature requirement beyond AVX-512F, which
        // every caller (all `#[target_feature(enable = "avx512f")]`) has.
        unsafe { _mm512_set1_ps(v) }
    }

    /// Rounds to the nearest integer (ties to even), as a float.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round(x: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
    }

    /// 2^w for |w| ≤ 126 (callers clamp): `2^f·2^n` with `n = round(w)`, `f = w − n` exact, and
    /// a degree-5 minimax polynomial for 2^f on [−½, ½] (relative error 7.5·10⁻⁸, ≈ 2·10⁻⁷
    /// with rounding).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp2_bounded(w: __m512) -> __m512 {
        let n = round(w);
        let f = _mm512_sub_ps(w, n);
        let mut p = splat(1.327_647_2e-3);
        p = _mm512_fmadd_ps(p, f, splat(9.675_542e-3));
        p = _mm512_fmadd_ps(p, f, splat(5.550_713e-2));
        p = _mm512_fmadd_ps(p, f, splat(2.402_212e-1));
        p = _mm512_fmadd_ps(p, f, splat(6.931_469_4e-1));
        p = _mm512_fmadd_ps(p, f, splat(1.000_000_1));
        _mm512_scalef_ps(p, n)
    }

    /// e^x for `x ≤ 88` (larger values may give +∞ or NaN): Cody–Waite reduction by ln 2 and a
    /// degree-5 minimax polynomial on [−ln2/2, ln2/2] (relative error ≈ 2·10⁻⁷). Below −104
    /// (including −∞) the result is 0; NaN propagates.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp_le88(x: __m512) -> __m512 {
        const C1: f32 = 0.693_359_4; // ln 2, high part (exact in few bits)
        const C2: f32 = -2.121_944_4e-4; // ln 2, low part
                                         // `max(lo, x)` returns its second operand, `x`, when that is NaN.
        let x = _mm512_max_ps(splat(-104.0), x);
        let n = round(_mm512_mul_ps(x, splat(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, splat(C1), x);
        let r = _mm512_fnmadd_ps(n, splat(C2), r);
        let mut p = splat(8.297_655e-3);
        p = _mm512_fmadd_ps(p, r, splat(4.191_538_3e-2));
        p = _mm512_fmadd_ps(p, r, splat(1.666_757_5e-1));
        p = _mm512_fmadd_ps(p, r, splat(4.999_889_4e-1));
        p = _mm512_fmadd_ps(p, r, splat(9.999_997e-1));
        p = _mm512_fmadd_ps(p, r, splat(1.000_000_1));
        _mm512_scalef_ps(p, n)
    }

    /// `a / d` to about one ulp: a 14-bit reciprocal estimate refined by one Newton–Raphson
    /// step. `d` must be finite and normal-range (`1 ≤ d ≤ 2¹²⁷` for the kernels).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn div_nr(a: __m512, d: __m512) -> __m512 {
        // Refining the reciprocal (rather than the quotient) keeps `±∞ / 1 = ±∞`.
        _mm512_mul_ps(a, recip_nr(d))
    }

    /// `1 / d` to about one ulp (see [`div_nr`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn recip_nr(d: __m512) -> __m512 {
        let r = _mm512_rcp14_ps(d);
        let e = _mm512_fnmadd_ps(d, r, splat(1.0));
        _mm512_fmadd_ps(r, e, r)
    }

    /// Clamps every lane to [−c, c] (`c ≥ 0`); a NaN lane becomes a value in that range, so a
    /// caller that must propagate NaN has to do so through another operand.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(crate) fn clamp_abs(x: __m512, c: f32) -> __m512 {
        // imm 0b0010: the smaller magnitude, with the sign of the first operand.
        _mm512_range_ps::<0b0010>(x, splat(c))
    }
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_relative_error() {
        use std::arch::x86_64::*;
        if !SimdLevel::Avx512.is_supported() {
            return;
        }
        #[target_feature(enable = "avx512f,avx512dq")]
        fn eval(x: f32) -> [f32; 4] {
            let v = _mm512_set1_ps(x);
            let d = _mm512_set1_ps(1.0 + x.abs());
            [
                _mm512_cvtss_f32(avx512::exp2_bounded(avx512::clamp_abs(v, 126.0))),
                _mm512_cvtss_f32(avx512::exp_le88(v)),
                _mm512_cvtss_f32(avx512::div_nr(v, d)),
                _mm512_cvtss_f32(avx512::recip_nr(d)),
            ]
        }
        let (mut e2, mut e, mut dv) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..=400_000 {
            let x = (-104.0 + 192.0 * i as f64 / 400_000.0) as f32;
            // SAFETY: AVX-512F/DQ support was checked above.
            let [a, b, c, r] = unsafe { eval(x) };
            let xd = x as f64;
            if xd.abs() <= 126.0 {
                e2 = e2.max((a as f64 / xd.exp2() - 1.0).abs());
            }
            if (-87.0..=88.0).contains(&xd) {
                e = e.max((b as f64 / xd.exp() - 1.0).abs());
            }
            let den = 1.0 + xd.abs();
            if xd != 0.0 {
                dv = dv.max((c as f64 / (xd / den) - 1.0).abs());
            }
            dv = dv.max((r as f64 * den - 1.0).abs());
        }
        assert!(e2 < 3e-7 && e < 3e-7 && dv < 2.5e-7, "exp2 {e2:e}, exp {e:e}, div {dv:e}");
        // SAFETY: as above.
        let [a, b, ..] = unsafe { eval(f32::NEG_INFINITY) };
        assert!((a as f64 / 2f64.powi(-126) - 1.0).abs() < 3e-7 && b == 0.0, "{a} {b}");
        // SAFETY: as above.
        let [a, b, ..] = unsafe { eval(f32::NAN) };
        // `clamp_abs` does not keep NaN (the GeLU kernels multiply by the NaN input afterwards).
        assert!(a.is_finite() && b.is_nan(), "{a} {b}");
    }

    #[test]
    fn real_is_exact_for_f64() {
        assert_eq!(0.3f64.fexp::<true>(), 0.3f64.exp());
        assert_eq!(2.0f64.madd::<true>(3.0, 1.0), 7.0);
    }
}
