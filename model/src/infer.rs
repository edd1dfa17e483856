//! Incremental (KV-cached) forward passes for inference.
//!
//! The new tokens of every sequence in the batch are packed into one `[N, C]` matrix, so the
//! dense parts (LayerNorm, projections, MLP, head) run as one batch whatever each sequence's
//! length; only attention is done per sequence, reading that sequence's cache. No padding is
//! needed, so prompts of different lengths give exactly what they would give alone.

use polylm_engine::{no_grad, DType, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::gpt::{check_ids, Gpt};
use crate::kv_cache::KvCache;

/// Which logits an incremental step returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// One row per new token.
    All,
    /// Only each sequence's last new token (what sampling needs).
    Last,
}

impl Gpt {
    /// Feeds `chunks[b]` (possibly empty) as the next tokens of sequence `b` of `cache` and
    /// returns, per sequence, the logits (`vocab` values per returned row, f32) of the rows
    /// chosen by `rows`. The cache advances by each chunk's length.
    pub fn forward_cached(
        &self,
        cache: &mut KvCache,
        chunks: &[&[u32]],
        rows: LogitRows,
    ) -> Result<Vec<Vec<f32>>> {
        let _guard = no_grad();
        let cfg = self.config();
        let (heads, head_dim) = cache.dims();
        if chunks.len() != cache.batch() || heads != cfg.heads || head_dim != cfg.head_dim() {
            return Err(ModelError::BadInput(format!(
                "{} chunks for a cache of {} sequences ({heads} heads of {head_dim})",
                chunks.len(),
                cache.batch()
            )));
        }
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        // Per packed row: (sequence, absolute position).
        let mut meta = Vec::new();
        for (b, chunk) in chunks.iter().enumerate() {
            let start = cache.len(b);
            let end = start + chunk.len();
            if end > cache.capacity() {
                return Err(ModelError::SequenceTooLong { len: end, context: cache.capacity() });
            }
            check_ids(chunk, cfg.vocab_size)?;
            ids.extend_from_slice(chunk);
            pos.extend((start..end).map(|p| p as u32));
            meta.extend((start..end).map(|p| (b, p)));
        }
        let n = ids.len();
        if n == 0 {
            return Ok(vec![Vec::new(); chunks.len()]);
        }
        let p = self.params();
        let (c, eps, dtype) = (cfg.hidden, cfg.layer_norm_eps, self.dtype());
        let mut x = gather_rows(&p.wte, &ids)?.add(&gather_rows(&p.wpe, &pos)?)?;
        for (layer, bp) in p.blocks.iter().enumerate() {
            let ln1 = x.layer_norm(&bp.ln_1_weight, &bp.ln_1_bias, eps)?;
            let qkv = ln1.linear(&bp.attn_weight, &bp.attn_bias)?.to_dtype(DType::F32)?.to_vec::<f32>()?;
            for (row, &(b, p)) in meta.iter().enumerate() {
                let r = &qkv[row * 3 * c..(row + 1) * 3 * c];
                cache.write(b, layer, p, &r[c..2 * c], &r[2 * c..]);
            }
            let mut att = vec![0f32; n * c];
            let cache_ref = &*cache;
            att.par_chunks_mut(c).zip(meta.par_iter()).enumerate().for_each(|(row, (out, &(b, p)))| {
                let q = &qkv[row * 3 * c..row * 3 * c + c];
                attend_row(cache_ref, layer, b, p, q, out);
            });
            let att = Tensor::from_vec(att, &[n, c])?.to_dtype(dtype)?;
            let attn_out = att.linear(&bp.attn_proj_weight, &bp.attn_proj_bias)?;
            let ln2;
            (x, ln2) = x.add_layer_norm(&attn_out, &bp.ln_2_weight, &bp.ln_2_bias, eps)?;
            let up = ln2.linear_gelu(&bp.fc_weight, &bp.fc_bias)?;
            x = x.add(&up.linear(&bp.mlp_proj_weight, &bp.mlp_proj_bias)?)?;
        }
        for (b, chunk) in chunks.iter().enumerate() {
            cache.advance(b, chunk.len());
        }
        // Rows whose logits are wanted, and how many belong to each sequence.
        let mut picks = Vec::new();
        let mut counts = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for chunk in chunks {
            match rows {
                LogitRows::All => {
                    picks.extend(row..row + chunk.len());
                    counts.push(chunk.len());
                }
                LogitRows::Last if !chunk.is_empty() => {
                    picks.push(row + chunk.len() - 1);
                    counts.push(1);
                }
                LogitRows::Last => counts.push(0),
            }
            row += chunk.len();
        }
        let x = if picks.len() == n {
            x
        } else {
            let parts: Vec<Tensor> = picks.iter().map(|&r| x.narrow(0, r, 1)).collect::<Result<_, _>>()?;
            Tensor::concat(&parts, 0)?
        };
        let h = x.layer_norm(&p.ln_f_weight, &p.ln_f_bias, eps)?;
        let logits = h.matmul_t(&p.wte)?.to_dtype(DType::F32)?.to_vec::<f32>()?;
        let v = cfg.vocab_size;
        let mut out = Vec::with_capacity(chunks.len());
        let mut at = 0;
        for k in counts {
            out.push(logits[at * v..(at + k) * v].to_vec());
            at += k;
        }
        Ok(out)
    }
}

/// Rows `ids` of a `[rows, dim]` table as `[ids.len(), dim]`, copying only those rows.
///
/// The engine's `embedding` op copies the whole table before gathering (it reads it through
/// `contiguous_storage`), which per decoded token means the full `[V, C]` embedding; without
/// a graph to record, row views and one concat do the same job at the cost of the rows alone.
fn gather_rows(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let rows: Vec<Tensor> = ids.iter().map(|&i| table.narrow(0, i as usize, 1)).collect::<Result<_, _>>()?;
    Ok(Tensor::concat(&rows, 0)?)
}

/// Causal attention of one query row (all heads) at absolute position `pos` of sequence
/// `seq` over the cached keys and values of positions `0..=pos`.
fn attend_row(cache: &KvCache, layer: usize, seq: usize, pos: usize, q: &[f32], out: &mut [f32]) {
    let (heads, d) = cache.dims();
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; pos + 1];
    for h in 0..heads {
        let (keys, values) = cache.head(seq, layer, h, pos + 1);
        let qh = &q[h * d..(h + 1) * d];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let k = &keys[j * d..(j + 1) * d];
            *s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
            max = max.max(*s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let o = &mut out[h * d..(h + 1) * d];
        o.fill(0.0);
        for (j, &w) in scores.iter().enumerate() {
            let w = w / total;
            for (oi, vi) in o.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                *oi += w * vi;
            }
        }
    }
}
