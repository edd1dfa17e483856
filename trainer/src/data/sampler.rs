//! Packing and the language mixture: batches of fixed-length rows, deterministic for a seed
//! and exactly resumable.
//!
//! Each language (or the bilingual `pairs` split, or either restricted to a subset) is a
//! *stream*: its documents in a seeded random order that changes every epoch, each followed by
//! the end-of-sequence token, concatenated without padding. A row first draws its stream from
//! the current curriculum stage's weights (a seeded RNG), then reads `seq + 1` tokens from it:
//! `ids` are the first `seq`, `targets` the last `seq`. The stream then advances by `seq`
//! tokens, so the next row of that stream starts with this row's last token: concatenating a
//! stream's rows' `ids` gives back the stream exactly, and every token is a target once.
//!
//! [`BatchSampler::state`] captures the RNG and every stream's cursor (epoch, position in the
//! epoch's order, offset in the document); [`BatchSampler::restore`] continues with exactly the
//! same batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::curriculum::{subset_docs, Curriculum, PAIRS, TRAIN};
use super::dataset::Dataset;
use super::error::{DataError, Result};
use super::manifest::fnv1a64;

/// The splitmix64 generator: 64 bits of state, serialisable, good enough for sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    /// The state.
    pub state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Where a stream is: epoch, position in the epoch's document order, token offset in the
/// document (equal to the document's length when its end-of-sequence token is next).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCursor {
    /// Documents in the stream (checked on restore).
    pub docs: u64,
    /// Completed passes over the stream.
    pub epoch: u64,
    /// Position in this epoch's order.
    pub position: u64,
    /// Token offset within the current document.
    pub offset: u64,
}

/// Everything needed to continue sampling exactly where a [`BatchSampler`] was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The seed the sampler was built with.
    pub seed: u64,
    /// The row length.
    pub seq: usize,
    /// The row-language RNG.
    pub rng: SplitMix64,
    /// Cursor of every stream used so far, by stream name (`en`, `en@hq`, `pairs`, ...).
    pub streams: BTreeMap<String, StreamCursor>,
    /// Input tokens drawn so far per language (`pairs` for bilingual rows).
    pub tokens_seen: BTreeMap<String, u64>,
}

/// One training batch: `[batch, seq]` ids and their next-token targets.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBatch {
    /// Input ids, row-major `[batch, seq]`.
    pub ids: Vec<u32>,
    /// Targets: each row's ids shifted left by one (with the following token at the end).
    pub targets: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Input tokens per language in this batch.
    pub lang_tokens: BTreeMap<String, u64>,
    /// The curriculum stage the batch was drawn under.
    pub stage: usize,
    /// The language (or `pairs`) of each row.
    pub row_langs: Vec<String>,
}

#[derive(Debug)]
struct Stream {
    /// (shard number in `BatchSampler::shards`, document) of every document.
    docs: Vec<(u32, u32)>,
    perm_epoch: Option<u64>,
    perm: Vec<u32>,
    key_hash: u64,
}

impl Stream {
    /// Computes (once per epoch) the epoch's document order: a Fisher–Yates shuffle seeded by
    /// the sampler's seed, the stream's name and the epoch.
    fn order(&mut self, seed: u64, epoch: u64) {
        if self.perm_epoch == Some(epoch) {
            return;
        }
        let mut rng = SplitMix64::new(mix(seed ^ self.key_hash).wrapping_add(mix(epoch.wrapping_add(1))));
        let len = self.docs.len();
        self.perm.clear();
        self.perm.extend(0..len as u32);
        for i in (1..len).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            self.perm.swap(i, j);
        }
        self.perm_epoch = Some(epoch);
    }
}

/// Draws packed, language-mixed training batches (see the module documentation).
#[derive(Debug)]
pub struct BatchSampler {
    dataset: Arc<Dataset>,
    curriculum: Curriculum,
    seq: usize,
    seed: u64,
    rng: SplitMix64,
    /// (split, lang) of every shard a stream reads.
    shards: Vec<(String, String)>,
    streams: BTreeMap<String, Stream>,
    cursors: BTreeMap<String, StreamCursor>,
    tokens_seen: BTreeMap<String, u64>,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl BatchSampler {
    /// A sampler of rows of `seq` tokens (`seq` ≥ 1) over the dataset's train (and pairs)
    /// split.
    pub fn new(dataset: Arc<Dataset>, curriculum: Curriculum, seq: usize, seed: u64) -> BatchSampler {
        BatchSampler {
            dataset,
            curriculum,
            seq,
            seed,
            rng: SplitMix64::new(mix(seed ^ 0x005e_ed0f_1a96_da7a)),
            shards: Vec::new(),
            streams: BTreeMap::new(),
            cursors: BTreeMap::new(),
            tokens_seen: BTreeMap::new(),
        }
    }

    /// The curriculum.
    pub fn curriculum(&self) -> &Curriculum {
        &self.curriculum
    }

    /// The row length.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Input tokens drawn so far per language (`pairs` for bilingual rows).
    pub fn tokens_seen(&self) -> &BTreeMap<String, u64> {
        &self.tokens_seen
    }

    /// The stream name of `lang` under `subset`.
    fn stream_key(lang: &str, subset: Option<&str>) -> String {
        match subset {
            Some(s) => format!("{lang}@{s}"),
            None => lang.to_string(),
        }
    }

    fn shard_no(&mut self, split: &str, lang: &str) -> u32 {
        if let Some(i) = self.shards.iter().position(|(s, l)| s == split && l == lang) {
            return i as u32;
        }
        self.shards.push((split.to_string(), lang.to_string()));
        (self.shards.len() - 1) as u32
    }

    /// Builds (once) the stream named `key`.
    fn ensure_stream(&mut self, key: &str) -> Result<()> {
        if self.streams.contains_key(key) {
            return Ok(());
        }
        let (lang, subset) = match key.split_once('@') {
            Some((l, s)) => (l, Some(s)),
            None => (key, None),
        };
        let sources = match subset {
            None => None,
            Some(s) => Some(
                self.curriculum
                    .subset_sources(s)
                    .ok_or_else(|| DataError::BadState(format!("stream {key:?}: unknown subset {s:?}")))?
                    .to_vec(),
            ),
        };
        let dataset = Arc::clone(&self.dataset);
        let parts: Vec<(String, String)> = if lang == PAIRS {
            dataset.langs(PAIRS).into_iter().map(|l| (PAIRS.to_string(), l)).collect()
        } else {
            dataset.shard(TRAIN, lang)?;
            vec![(TRAIN.to_string(), lang.to_string())]
        };
        let mut docs = Vec::new();
        for (split, l) in &parts {
            let shard = dataset.shard(split, l)?;
            let no = self.shard_no(split, l);
            docs.extend(subset_docs(shard, sources.as_deref()).into_iter().map(|d| (no, d)));
        }
        if docs.is_empty() {
            return Err(DataError::NoData(format!("stream {key:?} has no documents")));
        }
        let stream = Stream { docs, perm_epoch: None, perm: Vec::new(), key_hash: fnv1a64(key.as_bytes()) };
        self.streams.insert(key.to_string(), stream);
        Ok(())
    }

    /// Appends `n` tokens of stream `key` to `out`, advancing `cursor`.
    fn take(&mut self, key: &str, cursor: &mut StreamCursor, mut n: usize, out: &mut Vec<u32>) -> Result<()> {
        let eos = self.dataset.eos_id();
        let seed = self.seed;
        let stream =
            self.streams.get_mut(key).ok_or_else(|| DataError::BadState(format!("no stream {key:?}")))?;
        while n > 0 {
            stream.order(seed, cursor.epoch);
            let (shard_no, doc) = stream.docs[stream.perm[cursor.position as usize] as usize];
            let (split, lang) = &self.shards[shard_no as usize];
            let shard = self.dataset.shard(split, lang)?;
            let len = u64::from(shard.doc_meta(doc as usize).tokens);
            if cursor.offset < len {
                let k = (len - cursor.offset).min(n as u64);
                shard.doc_tokens_range(
                    doc as usize,
                    cursor.offset as usize..(cursor.offset + k) as usize,
                    out,
                );
                cursor.offset += k;
                n -= k as usize;
            } else {
                out.push(eos);
                n -= 1;
                cursor.offset = 0;
                cursor.position += 1;
                if cursor.position == stream.docs.len() as u64 {
                    cursor.position = 0;
                    cursor.epoch = cursor.epoch.wrapping_add(1);
                }
            }
        }
        Ok(())
    }

    /// Draws the batch for `step` (the curriculum stage is chosen from `step` and
    /// `tokens_so_far`): `batch` rows, each from one language (see the module documentation).
    pub fn next_batch(&mut self, batch: usize, step: u64, tokens_so_far: u64) -> Result<TrainBatch> {
        if batch == 0 || self.seq == 0 {
            return Err(DataError::BadInput(format!("cannot draw a batch of [{batch}, {}]", self.seq)));
        }
        let stage = self.curriculum.stage_at(step, tokens_so_far);
        let weights: Vec<(String, f64)> = self.curriculum.weights(stage).to_vec();
        let subset = self.curriculum.stage_subset(stage).map(str::to_string);
        let seq = self.seq;
        let mut ids = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        let mut lang_tokens: BTreeMap<String, u64> = BTreeMap::new();
        let mut row_langs = Vec::with_capacity(batch);
        let mut row = Vec::with_capacity(seq + 1);
        for _ in 0..batch {
            let r = self.rng.next_f64();
            let mut acc = 0.0;
            let mut lang = weights.last().map(|(l, _)| l.as_str()).unwrap_or_default();
            for (l, w) in &weights {
                acc += w;
                if r < acc {
                    lang = l.as_str();
                    break;
                }
            }
            let key = Self::stream_key(lang, subset.as_deref());
            self.ensure_stream(&key)?;
            let mut cursor = self.cursors.get(&key).cloned().unwrap_or_else(|| StreamCursor {
                docs: self.streams[&key].docs.len() as u64,
                ..Default::default()
            });
            row.clear();
            self.take(&key, &mut cursor, seq, &mut row)?;
            let mut peek = cursor.clone();
            self.take(&key, &mut peek, 1, &mut row)?;
            self.cursors.insert(key, cursor);
            ids.extend_from_slice(&row[..seq]);
            targets.extend_from_slice(&row[1..]);
            *lang_tokens.entry(lang.to_string()).or_default() += seq as u64;
            *self.tokens_seen.entry(lang.to_string()).or_default() += seq as u64;
            row_langs.push(lang.to_string());
        }
        Ok(TrainBatch { ids, targets, batch, seq, lang_tokens, stage, row_langs })
    }

    /// The sampler's position, to save in a checkpoint.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            seq: self.seq,
            rng: self.rng,
            streams: self.cursors.clone(),
            tokens_seen: self.tokens_seen.clone(),
        }
    }

    /// Continues from a saved position; the following batches are exactly those the saving
    /// sampler would have drawn. The state must come from a sampler with the same seed, row
    /// length and dataset ([`DataError::BadState`] names what differs).
    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        if state.seed != self.seed {
            return Err(DataError::BadState(format!(
                "saved with seed {}, this run uses {}",
                state.seed, self.seed
            )));
        }
        if state.seq != self.seq {
            return Err(DataError::BadState(format!(
                "saved with rows of {} tokens, this run uses {}",
                state.seq, self.seq
            )));
        }
        for (key, c) in &state.streams {
            self.ensure_stream(key).map_err(|e| DataError::BadState(format!("stream {key:?}: {e}")))?;
            let stream = &self.streams[key];
            let n = stream.docs.len() as u64;
            if c.docs != n {
                return Err(DataError::BadState(format!(
                    "stream {key:?} had {} documents, the dataset now gives {n}",
                    c.docs
                )));
            }
            if c.position >= n {
                return Err(DataError::BadState(format!(
                    "stream {key:?}: position {} of {n} documents",
                    c.position
                )));
            }
        }
        // Offsets are checked against the document they point into.
        for (key, c) in &state.streams {
            let len = self.doc_len(key, c)?;
            if c.offset > len {
                return Err(DataError::BadState(format!(
                    "stream {key:?}: offset {} in a document of {len} tokens",
                    c.offset
                )));
            }
        }
        self.rng = state.rng;
        self.cursors = state.streams;
        self.tokens_seen = state.tokens_seen;
        Ok(())
    }

    /// Length of the document `c` points at in stream `key`.
    fn doc_len(&mut self, key: &str, c: &StreamCursor) -> Result<u64> {
        let seed = self.seed;
        let stream =
            self.streams.get_mut(key).ok_or_else(|| DataError::BadState(format!("no stream {key:?}")))?;
        stream.order(seed, c.epoch);
        let (shard_no, doc) = stream.docs[stream.perm[c.position as usize] as usize];
        let (split, lang) = &self.shards[shard_no as usize];
        Ok(u64::from(self.dataset.shard(split, lang)?.doc_meta(doc as usize).tokens))
    }
}
