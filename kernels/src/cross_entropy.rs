//! Cross-entropy fused with log-softmax, chunked over the vocabulary.
//!
//! For each row of logits the log-sum-exp is accumulated chunk by chunk with a running maximum,
//! so a 256,000-entry vocabulary is read in cache-sized pieces and no probability row is ever
//! stored. The backward pass writes `dlogits = (softmax − onehot)·dloss` chunk by chunk straight
//! into the gradient buffer. Rows whose target equals the ignore index get zero loss and zero
//! gradient.

use rayon::prelude::*;

use crate::float::Float;

/// Vocabulary entries processed per chunk.
pub const VOCAB_CHUNK: usize = 4096;

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
    if vocab == 0 {
        return;
    }
    loss.par_iter_mut()
        .zip(lse.par_iter_mut())
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .for_each(|((l, s), (row, &t))| {
            let mut m = T::NEG_INFINITY;
            let mut sum = T::ZERO;
            for chunk in row.chunks(VOCAB_CHUNK) {
                let mut cm = T::NEG_INFINITY;
                for &v in chunk {
                    cm = cm.max(v);
                }
                if cm > m {
                    sum *= (m - cm).exp();
                    m = cm;
                }
                for &v in chunk {
                    sum += (v - m).exp();
                }
            }
            let log_z = m + sum.ln();
            *s = log_z;
            *l = if Some(t) == ignore_index { T::ZERO } else { log_z - row[t as usize] };
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
    if vocab == 0 {
        return;
    }
    dlogits
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter().zip(lse.par_iter().zip(dloss.par_iter())))
        .for_each(|((d, row), (&t, (&log_z, &g)))| {
            if Some(t) == ignore_index {
                d.iter_mut().for_each(|x| *x = T::ZERO);
                return;
            }
            for (dc, rc) in d.chunks_mut(VOCAB_CHUNK).zip(row.chunks(VOCAB_CHUNK)) {
                for (x, &v) in dc.iter_mut().zip(rc) {
                    *x = (v - log_z).exp() * g;
                }
            }
            d[t as usize] -= g;
        });
}
