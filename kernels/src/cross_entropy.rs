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
                    .map(|c| simd_dispatch!(level, FMA => chunk_stats::<T, FMA>(c)))
                    .reduce(|| (T::NEG_INFINITY, T::ZERO), combine)
            } else {
                simd_dispatch!(level, FMA => row_stats::<T, FMA>(row))
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
                d.par_chunks_mut(VOCAB_CHUNK).zip(row.par_chunks(VOCAB_CHUNK)).for_each(
                    |(dc, rc)| simd_dispatch!(level, FMA => grad_chunk::<T, FMA>(rc, log_z, g, dc)),
                );
            } else {
                simd_dispatch!(level, FMA => grad_chunk::<T, FMA>(row, log_z, g, d));
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
