//! The key/value cache of incremental decoding: for each sequence of a batch and each layer,
//! the keys and values of every position decoded so far, laid out `[heads, capacity,
//! head_dim]` in f32 and allocated once.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Keys and values of one sequence, per layer.
#[derive(Clone, Debug)]
struct SeqCache {
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// Cached keys and values for a batch of sequences, each with its own length.
#[derive(Clone, Debug)]
pub struct KvCache {
    heads: usize,
    head_dim: usize,
    capacity: usize,
    seqs: Vec<SeqCache>,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` tokens each (at most the
    /// model's context).
    pub fn new(config: &ModelConfig, batch: usize, capacity: usize) -> Result<KvCache> {
        config.validate()?;
        if capacity > config.context {
            return Err(ModelError::SequenceTooLong { len: capacity, context: config.context });
        }
        let per_layer = config.heads * capacity * config.head_dim();
        let seq = SeqCache {
            len: 0,
            keys: vec![vec![0.0; per_layer]; config.layers],
            values: vec![vec![0.0; per_layer]; config.layers],
        };
        Ok(KvCache { heads: config.heads, head_dim: config.head_dim(), capacity, seqs: vec![seq; batch] })
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.seqs.len()
    }

    /// Tokens cached for sequence `seq` (0 for a sequence index out of range).
    pub fn len(&self, seq: usize) -> usize {
        self.seqs.get(seq).map_or(0, |s| s.len)
    }

    /// Whether no sequence has any cached token.
    pub fn is_empty(&self) -> bool {
        self.seqs.iter().all(|s| s.len == 0)
    }

    /// The most tokens a sequence can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Heads and head size.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.heads, self.head_dim)
    }

    /// Writes the keys and values of one new token (`k`, `v` of length heads·head_dim, head
    /// after head) at position `pos` of sequence `seq`, layer `layer`.
    pub(crate) fn write(&mut self, seq: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (h, d, cap) = (self.heads, self.head_dim, self.capacity);
        let s = &mut self.seqs[seq];
        for head in 0..h {
            let dst = (head * cap + pos) * d;
            s.keys[layer][dst..dst + d].copy_from_slice(&k[head * d..(head + 1) * d]);
            s.values[layer][dst..dst + d].copy_from_slice(&v[head * d..(head + 1) * d]);
        }
    }

    /// Keys and values of positions `0..len` of one head: two slices of `len·head_dim`.
    pub(crate) fn head(&self, seq: usize, layer: usize, head: usize, len: usize) -> (&[f32], &[f32]) {
        let (d, cap) = (self.head_dim, self.capacity);
        let s = &self.seqs[seq];
        let start = head * cap * d;
        (&s.keys[layer][start..start + len * d], &s.values[layer][start..start + len * d])
    }

    /// Marks `n` more tokens of sequence `seq` as cached.
    pub(crate) fn advance(&mut self, seq: usize, n: usize) {
        self.seqs[seq].len += n;
    }
}
