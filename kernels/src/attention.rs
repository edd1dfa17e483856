//! Causal scaled-dot-product attention, the CPU twin of flash attention.
//!
//! `out_i = Σ_{j ≤ i} softmax_j(scale · q_i·k_j) · v_j` for every head. Scores are produced
//! block by block with an online (running max, running sum) softmax, so memory is O(T·d) per
//! head: no T×T score or probability matrix is ever held. The forward pass saves one
//! log-sum-exp per query row; the backward pass recomputes the probabilities from it.
//!
//! Layout: `q`, `k`, `v`, `out` and their gradients are contiguous `[heads, seq, head_dim]`
//! (batch and heads flattened together); `lse` is `[heads, seq]`.

use rayon::prelude::*;

use crate::float::Float;

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch × heads: independent attention problems.
    pub heads: usize,
    /// Sequence length (queries and keys).
    pub seq: usize,
    /// Size of one head.
    pub head_dim: usize,
}

impl AttentionDims {
    /// Elements of one `[heads, seq, head_dim]` tensor.
    pub fn qkv_len(&self) -> usize {
        self.heads * self.seq * self.head_dim
    }
    /// Elements of the `[heads, seq]` log-sum-exp.
    pub fn lse_len(&self) -> usize {
        self.heads * self.seq
    }
}

#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// Forward pass: writes `out` and the per-row log-sum-exp of the scaled scores `lse`.
pub fn causal_attention_forward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: AttentionDims,
    scale: T,
    out: &mut [T],
    lse: &mut [T],
) {
    let AttentionDims { seq, head_dim: d, .. } = dims;
    if seq == 0 || d == 0 {
        return;
    }
    let head = seq * d;
    out.par_chunks_mut(head)
        .zip(lse.par_chunks_mut(seq))
        .enumerate()
        .for_each(|(h, (o, l))| {
            let (qh, kh, vh) = (&q[h * head..][..head], &k[h * head..][..head], &v[h * head..][..head]);
            for i in 0..seq {
                let qi = &qh[i * d..][..d];
                let oi = &mut o[i * d..][..d];
                oi.iter_mut().for_each(|x| *x = T::ZERO);
                let mut m = T::NEG_INFINITY;
                let mut s = T::ZERO;
                for j in 0..=i {
                    let score = scale * dot(qi, &kh[j * d..][..d]);
                    if score > m {
                        let c = (m - score).exp();
                        s *= c;
                        oi.iter_mut().for_each(|x| *x *= c);
                        m = score;
                    }
                    let p = (score - m).exp();
                    s += p;
                    for (x, &vv) in oi.iter_mut().zip(&vh[j * d..][..d]) {
                        *x += p * vv;
                    }
                }
                let inv = T::ONE / s;
                oi.iter_mut().for_each(|x| *x *= inv);
                l[i] = m + s.ln();
            }
        });
}

/// Backward pass: writes `dq`, `dk` and `dv` from the saved `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    dims: AttentionDims,
    scale: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let AttentionDims { seq, head_dim: d, .. } = dims;
    if seq == 0 || d == 0 {
        return;
    }
    let head = seq * d;
    dq.par_chunks_mut(head)
        .zip(dk.par_chunks_mut(head).zip(dv.par_chunks_mut(head)))
        .enumerate()
        .for_each(|(h, (dqh, (dkh, dvh)))| {
            let r = h * head..(h + 1) * head;
            let (qh, kh, vh, oh, gh) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &out[r.clone()], &dout[r]);
            let lh = &lse[h * seq..][..seq];
            dkh.iter_mut().for_each(|x| *x = T::ZERO);
            dvh.iter_mut().for_each(|x| *x = T::ZERO);
            for i in 0..seq {
                let qi = &qh[i * d..][..d];
                let gi = &gh[i * d..][..d];
                let delta = dot(gi, &oh[i * d..][..d]);
                let dqi = &mut dqh[i * d..][..d];
                dqi.iter_mut().for_each(|x| *x = T::ZERO);
                for j in 0..=i {
                    let kj = &kh[j * d..][..d];
                    let p = (scale * dot(qi, kj) - lh[i]).exp();
                    let dp = dot(gi, &vh[j * d..][..d]);
                    let ds = p * (dp - delta) * scale;
                    for (x, &kk) in dqi.iter_mut().zip(kj) {
                        *x += ds * kk;
                    }
                    for (x, &qq) in dkh[j * d..][..d].iter_mut().zip(qi) {
                        *x += ds * qq;
                    }
                    for (x, &gg) in dvh[j * d..][..d].iter_mut().zip(gi) {
                        *x += p * gg;
                    }
                }
            }
        });
}
