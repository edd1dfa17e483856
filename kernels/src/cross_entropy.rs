//! Cross-entropy fused with log-softmax, chunked over the vocabulary.
//!
//! For each row of logits the log-sum-exp is accumulated chunk by chunk with a running maximum,
//! so a 256,000-entry vocabulary is read in cache-sized pieces and no probability row is ever
//! stored. The backward pass writes `dlogits = (softmax − onehot)·dloss` chunk by chunk straight
//! into the gradient buffer. Rows whose target equals the ignore index get zero loss and zero
//! gradient.
//!
//! Each chunk is handled by vectorised lane loops (max, then Σ e^(v − max) while the chunk is
//! in L1), compiled for the best instruction set found at run time; f32 uses the fast
//! polynomial exponential, f64 libm's. Work is parallel over rows and, when there are too few
//! rows to keep every thread busy (e.g. 4 rows × 256,000), over the chunks of each row too.

use rayon::prelude::*;

use crate::fastmath::{self, simd_dispatch, Real};
use crate::float::Float;
use crate::simd::SimdLevel;

/// Vocabulary entries processed per chunk.
pub const VOCAB_CHUNK: usize = 4096;

/// Whether rows are few enough (relative to the thread count) to split each row over chunks.
fn split_rows(rows: usize, vocab: usize) -> bool {
    vocab > VOCAB_CHUNK && rows < 4 * rayon::current_num_threads()
}

/// Running (max, Σ e^(v − max)) of a chunk.
#[inline(always)]
fn chunk_stats<T: Real, const FMA: bool>(chunk: &[T]) -> (T, T) {
    let m = fastmath::max(chunk);
    (m, fastmath::sum_exp_shift::<T, FMA>(chunk, m))
}

/// Merges two (max, sum) pairs.
#[inline(always)]
fn combine<T: Float>((m1, s1): (T, T), (m2, s2): (T, T)) -> (T, T) {
    if s1 == T::ZERO {
        return (m1.max(m2), s2);
    }
    if s2 == T::ZERO {
        return (m1.max(m2), s1);
    }
    if m1 >= m2 {
        (m1, s1 + s2 * (m2 - m1).exp())
    } else {
        (m2, s2 + s1 * (m1 - m2).exp())
    }
}

#[inline(always)]
fn row_stats<T: Real, const FMA: bool>(row: &[T]) -> (T, T) {
    let mut acc = (T::NEG_INFINITY, T::ZERO);
    for chunk in row.chunks(VOCAB_CHUNK) {
        acc = combine(acc, chunk_stats::<T, FMA>(chunk));
    }
    acc
}

/// [`chunk_stats`] (or [`row_stats`] when `whole_row`) for the instruction set `level`.
fn stats_with<T: Float>(level: SimdLevel, chunk: &[T], whole_row: bool) -> (T, T) {
    #[cfg(target_arch = "x86_64")]
    if fastmath::avx512_f32::<T>(level) {
        let mut acc = (T::NEG_INFINITY, T::ZERO);
        for c in fastmath::as_f32(chunk).chunks(VOCAB_CHUNK) {
            // SAFETY: `avx512_f32` checked that the CPU supports AVX-512F.
            let (m, s) = unsafe { avx512::chunk_stats(c) };
            acc = combine(acc, (T::from_f64(m as f64), T::from_f64(s as f64)));
        }
        return acc;
    }
    if whole_row {
        simd_dispatch!(level, FMA => row_stats::<T, FMA>(chunk))
    } else {
        simd_dispatch!(level, FMA => chunk_stats::<T, FMA>(chunk))
    }
}

/// [`grad_chunk`] for the instruction set `level`.
fn grad_with<T: Float>(level: SimdLevel, row: &[T], log_z: T, g: T, d: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if fastmath::avx512_f32::<T>(level) {
        let (row, d) = (fastmath::as_f32(row), fastmath::as_f32_mut(d));
        let (log_z, g) = (log_z.to_f64() as f32, g.to_f64() as f32);
        // SAFETY: `avx512_f32` checked that the CPU supports AVX-512F.
        return unsafe { avx512::grad_chunk(row, log_z, g, d) };
    }
    simd_dispatch!(level, FMA => grad_chunk::<T, FMA>(row, log_z, g, d))
}

/// The f32 chunk loops written with AVX-512 intrinsics.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::fastmath::avx512::{
        exp_le88, hmax, hsum, load, load_mask, splat, store, store_mask, tail_mask, W,
    };

    /// (max, Σ e^(v − max)) of a chunk (−∞, 0 for an empty one).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chunk_stats(c: &[f32]) -> (f32, f32) {
        let n = c.len();
        let ninf = splat(f32::NEG_INFINITY);
        let (mut m0, mut m1, mut m2, mut m3) = (ninf, ninf, ninf, ninf);
        let mut i = 0;
        while i + 4 * W <= n {
            m0 = _mm512_max_ps(m0, load(c, i));
            m1 = _mm512_max_ps(m1, load(c, i + W));
            m2 = _mm512_max_ps(m2, load(c, i + 2 * W));
            m3 = _mm512_max_ps(m3, load(c, i + 3 * W));
            i += 4 * W;
        }
        while i + W <= n {
            m0 = _mm512_max_ps(m0, load(c, i));
            i += W;
        }
        if i < n {
            let k = tail_mask(n - i);
            m1 = _mm512_mask_max_ps(m1, k, m1, load_mask(c, i, k));
        }
        let m = hmax(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
        let mv = splat(m);
        let z = _mm512_setzero_ps();
        let (mut s0, mut s1) = (z, z);
        let mut i = 0;
        while i + 2 * W <= n {
            s0 = _mm512_add_ps(s0, exp_le88(_mm512_sub_ps(load(c, i), mv)));
            s1 = _mm512_add_ps(s1, exp_le88(_mm512_sub_ps(load(c, i + W), mv)));
            i += 2 * W;
        }
        if i + W <= n {
            s0 = _mm512_add_ps(s0, exp_le88(_mm512_sub_ps(load(c, i), mv)));
            i += W;
        }
        if i < n {
            let k = tail_mask(n - i);
            let e = exp_le88(_mm512_sub_ps(load_mask(c, i, k), mv));
            s1 = _mm512_mask_add_ps(s1, k, s1, e);
        }
        (m, hsum(_mm512_add_ps(s0, s1)))
    }

    /// `d = e^(v − log_z) · g` elementwise.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_chunk(row: &[f32], log_z: f32, g: f32, d: &mut [f32]) {
        let n = row.len().min(d.len());
        let (lz, gv) = (splat(log_z), splat(g));
        let mut i = 0;
        while i + W <= n {
            store(d, i, _mm512_mul_ps(exp_le88(_mm512_sub_ps(load(row, i), lz)), gv));
            i += W;
        }
        if i < n {
            let k = tail_mask(n - i);
            store_mask(d, i, k, _mm512_mul_ps(exp_le88(_mm512_sub_ps(load_mask(row, i, k), lz)), gv));
        }
    }
}

/// Writes per-row `loss[r] = lse[r] − logits[r, target[r]]` and the row log-sum-exp `lse[r]`.
///
/// Rows whose target is `ignore_index` get `loss = 0` (their `lse` is still computed).
/// Every target must be `< vocab` or equal to `ignore_index` (the engine checks).
pub fn cross_entropy_forward<T: Float>(
    logits: &[T],
    targets: &[u32],
    vocab: usize,
    ignore_index: Option<u32>,
    loss: &mut [T],
    lse: &mut [T],
) {
    cross_entropy_forward_with(logits, targets, vocab, ignore_index, loss, lse, SimdLevel::detect());
}

fn cross_entropy_forward_with<T: Float>(
    logits: &[T],
    targets: &[u32],
    vocab: usize,
    ignore_index: Option<u32>,
    loss: &mut [T],
    lse: &mut [T],
    level: SimdLevel,
) {
    if vocab == 0 {
        return;
    }
    let rows = loss.len().min(lse.len()).min(targets.len()).min(logits.len() / vocab);
    let split = split_rows(rows, vocab);
    let finish = |l: &mut T, s: &mut T, row: &[T], t: u32, (m, sum): (T, T)| {
        let log_z = m + sum.ln();
        *s = log_z;
        *l = if Some(t) == ignore_index { T::ZERO } else { log_z - row[t as usize] };
    };
    loss[..rows]
        .par_iter_mut()
        .zip(lse[..rows].par_iter_mut())
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .with_min_len(if split { 1 } else { (8 * VOCAB_CHUNK / vocab).max(1) })
        .for_each(|((l, s), (row, &t))| {
            let stats = if split {
                row.par_chunks(VOCAB_CHUNK)
                    .map(|c| stats_with(level, c, false))
                    .reduce(|| (T::NEG_INFINITY, T::ZERO), combine)
            } else {
                stats_with(level, row, true)
            };
            finish(l, s, row, t, stats);
        });
}

/// Writes `dlogits[r] = (softmax(logits[r]) − onehot(target[r])) · dloss[r]`, zero for ignored rows.
pub fn cross_entropy_backward<T: Float>(
    logits: &[T],
    targets: &[u32],
    lse: &[T],
    dloss: &[T],
    vocab: usize,
    ignore_index: Option<u32>,
    dlogits: &mut [T],
) {
    cross_entropy_backward_with(
        logits,
        targets,
        lse,
        dloss,
        vocab,
        ignore_index,
        dlogits,
        SimdLevel::detect(),
    );
}

#[allow(clippy::too_many_arguments)]
fn cross_entropy_backward_with<T: Float>(
    logits: &[T],
    targets: &[u32],
    lse: &[T],
    dloss: &[T],
    vocab: usize,
    ignore_index: Option<u32>,
    dlogits: &mut [T],
    level: SimdLevel,
) {
    if vocab == 0 {
        return;
    }
    let rows = (dlogits.len() / vocab).min(targets.len());
    let split = split_rows(rows, vocab);
    dlogits
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter().zip(lse.par_iter().zip(dloss.par_iter())))
        .with_min_len(if split { 1 } else { (8 * VOCAB_CHUNK / vocab).max(1) })
        .for_each(|((d, row), (&t, (&log_z, &g)))| {
            if Some(t) == ignore_index {
                d.iter_mut().for_each(|x| *x = T::ZERO);
                return;
            }
            if split {
                d.par_chunks_mut(VOCAB_CHUNK)
                    .zip(row.par_chunks(VOCAB_CHUNK))
                    .for_each(|(dc, rc)| grad_with(level, rc, log_z, g, dc));
            } else {
                grad_with(level, row, log_z, g, d);
            }
            d[t as usize] -= g;
        });
}

/// `d = e^(v − log_z) · g` elementwise.
#[inline(always)]
fn grad_chunk<T: Real, const FMA: bool>(row: &[T], log_z: T, g: T, d: &mut [T]) {
    for (x, &v) in d.iter_mut().zip(row) {
        *x = (v - log_z).fexp::<FMA>() * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::test_util::*;

    /// Naive reference: (loss, lse, dlogits) with the full softmax row.
    fn reference(
        logits: &[f64],
        targets: &[u32],
        dloss: &[f64],
        vocab: usize,
        ignore: Option<u32>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut loss, mut lse, mut d) = (vec![], vec![], vec![]);
        for ((row, &t), &g) in logits.chunks(vocab).zip(targets).zip(dloss) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            lse.push(z);
            let ignored = Some(t) == ignore;
            loss.push(if ignored { 0.0 } else { z - row[t as usize] });
            for (j, &v) in row.iter().enumerate() {
                let onehot = if j == t as usize { 1.0 } else { 0.0 };
                d.push(if ignored { 0.0 } else { ((v - z).exp() - onehot) * g });
            }
        }
        (loss, lse, d)
    }

    fn check(rows: usize, vocab: usize, rng: &mut Rng, spread: f64) {
        let logits = rng.vec(rows * vocab, -spread, spread);
        let ignore = Some(vocab as u32 + 5).filter(|_| rng.range(0, 1) == 1).or(Some(0));
        let targets: Vec<u32> = (0..rows)
            .map(|_| if rng.range(0, 4) == 0 { ignore.unwrap() } else { rng.range(0, vocab - 1) as u32 })
            .collect();
        let dloss = rng.vec(rows, 0.1, 2.0);
        let (want_loss, want_lse, want_d) = reference(&logits, &targets, &dloss, vocab, ignore);
        for level in SimdLevel::all_supported() {
            let (mut loss, mut lse) = (vec![9.0; rows], vec![9.0; rows]);
            cross_entropy_forward_with(&logits, &targets, vocab, ignore, &mut loss, &mut lse, level);
            assert_close(&loss, &want_loss, 1e-12, 1e-12, "ce loss f64");
            assert_close(&lse, &want_lse, 1e-12, 1e-12, "ce lse f64");
            let mut d = vec![9.0; rows * vocab];
            cross_entropy_backward_with(&logits, &targets, &lse, &dloss, vocab, ignore, &mut d, level);
            assert_close(&d, &want_d, 1e-12, 1e-15, "ce dlogits f64");

            let (l32, dl32) = (to_f32(&logits), to_f32(&dloss));
            let up = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
            let (wl, ws, wd) = reference(&up(&l32), &targets, &up(&dl32), vocab, ignore);
            let (mut loss, mut lse) = (vec![9.0f32; rows], vec![9.0f32; rows]);
            cross_entropy_forward_with(&l32, &targets, vocab, ignore, &mut loss, &mut lse, level);
            assert_close(&loss, &wl, 1e-5, 1e-5, "ce loss f32");
            assert_close(&lse, &ws, 1e-6, 1e-6, "ce lse f32");
            let mut d = vec![9.0f32; rows * vocab];
            cross_entropy_backward_with(&l32, &targets, &lse, &dl32, vocab, ignore, &mut d, level);
            assert_close(&d, &wd, 1e-5, 1e-7, "ce dlogits f32");
        }
    }

    #[test]
    fn matches_reference() {
        let mut rng = Rng::new(19);
        for case in 0..24 {
            let rows = rng.range(1, 5);
            let vocab = if case % 3 == 0 { rng.range(4000, 9000) } else { rng.range(1, 300) };
            check(rows, vocab, &mut rng, if case % 2 == 0 { 4.0 } else { 30.0 });
        }
        // Many rows (row-parallel path) crossing the chunk boundary.
        check(40, 4097, &mut rng, 10.0);
        check(3, 1, &mut rng, 10.0);
    }
}
