//! Text generation: batched prompts of different lengths decoded incrementally through a
//! [`KvCache`], each sequence stopping at its end-of-sequence token, at `max_new_tokens`, or
//! when it fills the context. A cache-free twin recomputes the whole sequence at every step
//! (the reference for tests and for the speed comparison).

use polylm_engine::no_grad;

use crate::error::{ModelError, Result};
use crate::gpt::{check_ids, Batch, Gpt};
use crate::infer::LogitRows;
use crate::kv_cache::KvCache;
use crate::sampling::{Sampler, SamplingParams};

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced the end-of-sequence token.
    Eos,
    /// It produced `max_new_tokens` tokens.
    Length,
    /// It reached the model's context length.
    ContextFull,
}

/// One sequence's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The new tokens (without the prompt and without the end-of-sequence token).
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
}

impl Gpt {
    fn check_prompts(&self, prompts: &[Vec<u32>]) -> Result<()> {
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ModelError::BadInput(format!("prompt {i} is empty")));
            }
            if p.len() > self.config().context {
                return Err(ModelError::SequenceTooLong { len: p.len(), context: self.config().context });
            }
            check_ids(p, self.config().vocab_size)?;
        }
        Ok(())
    }

    /// Generates a continuation of each prompt with the KV cache.
    pub fn generate(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Generation>> {
        self.run_generation(prompts, params, true)
    }

    /// Generates like [`Gpt::generate`] but without a cache: every step recomputes the whole
    /// sequence with the training forward pass. Slow; the reference the cached path is
    /// tested and timed against.
    pub fn generate_uncached(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
    ) -> Result<Vec<Generation>> {
        self.run_generation(prompts, params, false)
    }

    fn run_generation(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        cached: bool,
    ) -> Result<Vec<Generation>> {
        let cfg = self.config();
        self.check_prompts(prompts)?;
        let mut sampler = Sampler::new(params.clone(), cfg.vocab_size)?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let capacity = cfg.context.min(longest.saturating_add(params.max_new_tokens));
        let mut cache = if cached { Some(KvCache::new(cfg, prompts.len(), capacity)?) } else { None };
        let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
        let mut out: Vec<Generation> =
            prompts.iter().map(|_| Generation { tokens: Vec::new(), finish: FinishReason::Length }).collect();
        let mut active: Vec<bool> = vec![true; prompts.len()];
        // What each active sequence feeds next: the prompt first, then its last token.
        let mut pending: Vec<Vec<u32>> = prompts.to_vec();
        for (i, s) in seqs.iter().enumerate() {
            if let Some(reason) = self.stop_reason(s.len(), 0, params) {
                out[i].finish = reason;
                active[i] = false;
                pending[i].clear();
            }
        }
        while active.iter().any(|&a| a) {
            let logits = match cache.as_mut() {
                Some(cache) => {
                    let chunks: Vec<&[u32]> = pending.iter().map(Vec::as_slice).collect();
                    self.forward_cached(cache, &chunks, LogitRows::Last)?
                }
                None => self.last_logits_uncached(&seqs, &active)?,
            };
            for (i, mut row) in logits.into_iter().enumerate() {
                if !active[i] {
                    continue;
                }
                let token = sampler.sample(&mut row, &seqs[i])?;
                pending[i].clear();
                if Some(token) == params.eos_token_id {
                    out[i].finish = FinishReason::Eos;
                    active[i] = false;
                    continue;
                }
                seqs[i].push(token);
                out[i].tokens.push(token);
                pending[i].push(token);
                if let Some(reason) = self.stop_reason(seqs[i].len(), out[i].tokens.len(), params) {
                    out[i].finish = reason;
                    active[i] = false;
                    pending[i].clear();
                }
            }
        }
        Ok(out)
    }

    fn stop_reason(&self, len: usize, generated: usize, params: &SamplingParams) -> Option<FinishReason> {
        if generated >= params.max_new_tokens {
            Some(FinishReason::Length)
        } else if len >= self.config().context {
            Some(FinishReason::ContextFull)
        } else {
            None
        }
    }

    /// The last row of logits of each active sequence, by a full forward pass of each.
    fn last_logits_uncached(&self, seqs: &[Vec<u32>], active: &[bool]) -> Result<Vec<Vec<f32>>> {
        let _guard = no_grad();
        let v = self.config().vocab_size;
        let mut out = Vec::with_capacity(seqs.len());
        for (s, &a) in seqs.iter().zip(active) {
            if !a {
                out.push(Vec::new());
                continue;
            }
            let logits = self.logits(&Batch { ids: s, batch: 1, seq: s.len() })?;
            let last = logits.narrow(1, s.len() - 1, 1)?.to_dtype(polylm_engine::DType::F32)?;
            let row = last.to_vec::<f32>()?;
            debug_assert_eq!(row.len(), v);
            out.push(row);
        }
        Ok(out)
    }
}
