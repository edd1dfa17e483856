//! Softmax over the last dimension, forward and backward.
//!
//! Forward subtracts the row maximum before exponentiating so that large logits never overflow.
//! Backward uses the saved output: `dx = y ⊙ (dy − ⟨y, dy⟩)`.
//!
//! Rows are processed in groups of about `TASK_ELEMS` elements per rayon task; inside a task
//! the row loops are lane-parallel (vectorisable) and compiled for the best instruction set
//! found at run time. For f32 the exponential is the fast polynomial of `fastmath`; f64 keeps
//! libm's `exp`.

use rayon::prelude::*;

use crate::float::Float;
use crate::simd::SimdLevel;

use crate::fastmath::{self, simd_dispatch, Real};

/// Target number of elements per rayon task for the row-wise kernels.
pub(crate) const TASK_ELEMS: usize = 1 << 15;

/// Rows per rayon task for rows of `cols` elements (at least one).
#[inline]
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (TASK_ELEMS / cols.max(1)).max(1)
}

/// `out[r] = softmax(x[r])` for each row of `cols` values.
pub fn softmax_forward<T: Float>(x: &[T], cols: usize, out: &mut [T]) {
    softmax_forward_with(x, cols, out, SimdLevel::detect());
}

fn softmax_forward_with<T: Float>(x: &[T], cols: usize, out: &mut [T], level: SimdLevel) {
    if cols == 0 {
        return;
    }
    let chunk = rows_per_task(cols) * cols;
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, xs)| {
        #[cfg(target_arch = "x86_64")]
        if fastmath::avx512_f32::<T>(level) {
            let (xs, o) = (fastmath::as_f32(xs), fastmath::as_f32_mut(o));
            // SAFETY: `avx512_f32` checked that the CPU supports AVX-512F.
            return unsafe { avx512::softmax_rows(xs, cols, o) };
        }
        simd_dispatch!(level, FMA => softmax_rows::<T, FMA>(xs, cols, o))
    });
}

/// The f32 forward row loop written with AVX-512 intrinsics.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::fastmath::avx512::{
        exp_le88, hmax, hsum, load, load_mask, splat, store, store_mask, tail_mask, W,
    };

    /// Softmax of each row of `cols` values: a max pass over memory, then exponentials and
    /// their sum, then the scaling, both over the row while it sits in L1.
    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_rows(x: &[f32], cols: usize, out: &mut [f32]) {
        let full = cols / W * W;
        let tail = tail_mask(cols - full);
        for (o, xr) in out.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
            let mut mv = splat(f32::NEG_INFINITY);
            for i in (0..full).step_by(W) {
                mv = _mm512_max_ps(mv, load(xr, i));
            }
            if full < cols {
                mv = _mm512_mask_max_ps(mv, tail, mv, load_mask(xr, full, tail));
            }
            let shift = splat(hmax(mv));
            let mut sum = splat(0.0);
            for i in (0..full).step_by(W) {
                let e = exp_le88(_mm512_sub_ps(load(xr, i), shift));
                sum = _mm512_add_ps(sum, e);
                store(o, i, e);
            }
            if full < cols {
                let e = exp_le88(_mm512_sub_ps(load_mask(xr, full, tail), shift));
                sum = _mm512_mask_add_ps(sum, tail, sum, e);
                store_mask(o, full, tail, e);
            }
            let inv = splat(1.0 / hsum(sum));
            for i in (0..full).step_by(W) {
                store(o, i, _mm512_mul_ps(load(o, i), inv));
            }
            if full < cols {
                store_mask(o, full, tail, _mm512_mul_ps(load_mask(o, full, tail), inv));
            }
        }
    }
}

#[inline(always)]
fn softmax_rows<T: Real, const FMA: bool>(x: &[T], cols: usize, out: &mut [T]) {
    for (o, xr) in out.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
        let m = fastmath::max(xr);
        let s = fastmath::exp_shift_sum::<T, FMA>(xr, m, o);
        let inv = T::ONE / s;
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `dx = y ⊙ (dy − Σ y·dy)` row by row, from the forward output `y`.
pub fn softmax_backward<T: Float>(y: &[T], dy: &[T], cols: usize, dx: &mut [T]) {
    softmax_backward_with(y, dy, cols, dx, SimdLevel::detect());
}

fn softmax_backward_with<T: Float>(y: &[T], dy: &[T], cols: usize, dx: &mut [T], level: SimdLevel) {
    if cols == 0 {
        return;
    }
    let chunk = rows_per_task(cols) * cols;
    dx.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk))).for_each(
        |(d, (ys, gs))| simd_dispatch!(level, FMA => softmax_backward_rows::<T, FMA>(ys, gs, cols, d)),
    );
}

#[inline(always)]
fn softmax_backward_rows<T: Real, const FMA: bool>(y: &[T], dy: &[T], cols: usize, dx: &mut [T]) {
    for (d, (yr, gr)) in dx.chunks_exact_mut(cols).zip(y.chunks_exact(cols).zip(dy.chunks_exact(cols))) {
        let dot = fastmath::dot::<T, FMA>(yr, gr);
        for (d, (&a, &b)) in d.iter_mut().zip(yr.iter().zip(gr)) {
            *d = a * (b - dot);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the kernel tests of this crate's row kernels.

    /// A tiny xorshift generator (no external crates).
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        /// Uniform in [0, 1).
        pub fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Uniform in [lo, hi).
        pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.unit()
        }
        /// Uniform integer in [lo, hi].
        pub fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
        }
        pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
            (0..n).map(|_| self.uniform(lo, hi)).collect()
        }
    }

    pub fn to_f32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// Asserts `|got − want| ≤ atol + rtol·|want|` elementwise.
    pub fn assert_close<T: crate::float::Float>(got: &[T], want: &[f64], rtol: f64, atol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let g = g.to_f64();
            let err = (g - w).abs();
            assert!(err <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w} (err {err:e})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    fn reference(x: &[f64], cols: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for row in x.chunks(cols) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            out.extend(row.iter().map(|v| (v - m).exp() / z));
        }
        out
    }

    fn reference_backward(y: &[f64], dy: &[f64], cols: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for (yr, gr) in y.chunks(cols).zip(dy.chunks(cols)) {
            let dot: f64 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            out.extend(yr.iter().zip(gr).map(|(a, b)| a * (b - dot)));
        }
        out
    }

    #[test]
    fn matches_reference() {
        let mut rng = Rng::new(7);
        for case in 0..40 {
            let rows = rng.range(1, 9);
            let cols = if case % 5 == 0 { rng.range(1, 3000) } else { rng.range(1, 70) };
            let x = rng.vec(rows * cols, -8.0, 8.0);
            let dy = rng.vec(rows * cols, -1.0, 1.0);
            let want = reference(&x, cols);
            let want_dx = reference_backward(&want, &dy, cols);
            for level in SimdLevel::all_supported() {
                let mut out = vec![0.0f64; x.len()];
                softmax_forward_with(&x, cols, &mut out, level);
                assert_close(&out, &want, 1e-12, 1e-15, "softmax f64");
                let mut dx = vec![0.0f64; x.len()];
                softmax_backward_with(&want, &dy, cols, &mut dx, level);
                assert_close(&dx, &want_dx, 1e-12, 1e-14, "softmax bwd f64");

                let (x32, y32, dy32) = (to_f32(&x), to_f32(&want), to_f32(&dy));
                let mut out = vec![0.0f32; x.len()];
                softmax_forward_with(&x32, cols, &mut out, level);
                let want32 = reference(&x32.iter().map(|&v| v as f64).collect::<Vec<_>>(), cols);
                assert_close(&out, &want32, 2e-6, 1e-9, "softmax f32");
                let mut dx = vec![0.0f32; x.len()];
                softmax_backward_with(&y32, &dy32, cols, &mut dx, level);
                let y64: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
                let g64: Vec<f64> = dy32.iter().map(|&v| v as f64).collect();
                assert_close(&dx, &reference_backward(&y64, &g64, cols), 1e-5, 1e-7, "softmax bwd f32");
            }
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let x = [1000.0f32, 999.0, -1000.0];
        let mut out = [0.0f32; 3];
        softmax_forward(&x, 3, &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
