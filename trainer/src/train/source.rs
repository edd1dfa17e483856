//! Where a run's batches come from: the [`BatchSource`] trait, the pretraining sampler over
//! shards, the SFT packer, and one data-parallel rank's slice of a global stream.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::data::BatchSampler;
use crate::error::{Result, TrainError};
use crate::sft::{self, SftPacker};

/// One micro-batch from a data source.
#[derive(Clone, Debug)]
pub struct StepBatch {
    /// Input ids `[batch, seq]`.
    pub ids: Vec<u32>,
    /// Target ids `[batch, seq]`.
    pub targets: Vec<u32>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Targets equal to this are not counted in the loss.
    pub ignore: Option<u32>,
    /// Tokens of each language in this batch.
    pub lang_tokens: BTreeMap<String, u64>,
    /// The curriculum stage it was drawn for.
    pub stage: Option<String>,
}

/// Where the training batches come from: a deterministic stream whose position can be saved
/// and restored exactly.
pub trait BatchSource {
    /// The next micro-batch of `batch` sequences for optimiser step `step` after `tokens`
    /// training tokens.
    fn next_batch(&mut self, batch: usize, step: u64, tokens: u64) -> Result<StepBatch>;
    /// The stream's position.
    fn state(&self) -> Value;
    /// Moves the stream to a saved position.
    fn restore(&mut self, state: &Value) -> Result<()>;
}

/// Pretraining batches: the language-mixture sampler over prepared shards.
pub struct ShardSource {
    pub(super) sampler: BatchSampler,
    pub(super) curriculum_names: Vec<String>,
}

impl BatchSource for ShardSource {
    fn next_batch(&mut self, batch: usize, step: u64, tokens: u64) -> Result<StepBatch> {
        let b = self.sampler.next_batch(batch, step, tokens)?;
        Ok(StepBatch {
            ids: b.ids,
            targets: b.targets,
            batch: b.batch,
            seq: b.seq,
            ignore: None,
            lang_tokens: b.lang_tokens,
            stage: self.curriculum_names.get(b.stage).cloned(),
        })
    }

    fn state(&self) -> Value {
        serde_json::to_value(self.sampler.state()).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        let s = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Usage(format!("the checkpoint's data position is unreadable: {e}")))?;
        Ok(self.sampler.restore(s)?)
    }
}

/// Instruction-tuning batches: packed MultiAlpaca examples, loss on responses only.
pub struct SftSource {
    pub(super) packer: SftPacker,
}

impl BatchSource for SftSource {
    fn next_batch(&mut self, batch: usize, _step: u64, _tokens: u64) -> Result<StepBatch> {
        let b = self.packer.next_batch(batch);
        let mut lang_tokens = BTreeMap::new();
        lang_tokens.insert("response".to_string(), b.response_tokens as u64);
        Ok(StepBatch {
            ids: b.ids,
            targets: b.targets,
            batch: b.batch,
            seq: b.seq,
            ignore: Some(sft::IGNORE),
            lang_tokens,
            stage: None,
        })
    }

    fn state(&self) -> Value {
        serde_json::to_value(self.packer.state()).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        let s = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Usage(format!("the checkpoint's data position is unreadable: {e}")))?;
        self.packer.restore(s)?;
        Ok(())
    }
}

/// One rank's block of a global stream: of each global micro-batch of `batch × world` rows
/// drawn from `inner`, rank `rank` keeps rows `rank·batch .. (rank+1)·batch`. The position is
/// the inner (global) stream's, the same on every rank. `lang_tokens` stay the global batch's
/// (what rank 0 logs).
pub(super) struct RankSlice {
    pub(super) inner: Box<dyn BatchSource>,
    pub(super) rank: usize,
    pub(super) world: usize,
}

impl BatchSource for RankSlice {
    fn next_batch(&mut self, batch: usize, step: u64, tokens: u64) -> Result<StepBatch> {
        let mut b = self.inner.next_batch(batch * self.world, step, tokens)?;
        let rows = self.rank * batch * b.seq..(self.rank + 1) * batch * b.seq;
        b.ids = b.ids[rows.clone()].to_vec();
        b.targets = b.targets[rows].to_vec();
        b.batch = batch;
        Ok(b)
    }

    fn state(&self) -> Value {
        self.inner.state()
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        self.inner.restore(state)
    }
}
