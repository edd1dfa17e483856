//! Choosing the next token from logits: repetition penalty, then greedy (temperature 0) or
//! temperature, top-k and top-p (nucleus) sampling, in that order.

use polylm_engine::Rng;

use crate::error::{ModelError, Result};

/// How to pick tokens and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (1 keeps all); in `(0, 1]`.
    pub top_p: f32,
    /// CTRL-style penalty on tokens already in the sequence (prompt included): positive logits
    /// are divided by it, negative ones multiplied; 1 disables it.
    pub repetition_penalty: f32,
    /// The most new tokens per sequence.
    pub max_new_tokens: usize,
    /// Stop a sequence when it samples this token (not included in the output).
    pub eos_token_id: Option<u32>,
    /// Seed of the sampling random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding of up to 32 tokens with no stop token.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
            max_new_tokens: 32,
            eos_token_id: None,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks every parameter's domain against a vocabulary of `vocab` tokens.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let bad = |name, value: String, reason| Err(ModelError::InvalidSampling { name, value, reason });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature.to_string(), "must be finite and >= 0 (0 is greedy)");
        }
        if self.top_k == Some(0) {
            return bad("top_k", "0".into(), "must be >= 1 (or None to keep every token)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "must be in (0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", self.repetition_penalty.to_string(), "must be finite and > 0");
        }
        if let Some(eos) = self.eos_token_id {
            if eos as usize >= vocab {
                return bad("eos_token_id", eos.to_string(), "must be inside the vocabulary");
            }
        }
        Ok(())
    }
}

/// A token chooser: the parameters and a seeded random stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    seen: Vec<bool>,
}

impl Sampler {
    /// A sampler over `vocab` tokens; the parameters are validated.
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Sampler> {
        params.validate(vocab)?;
        let rng = Rng::new(params.seed);
        Ok(Sampler { params, rng, seen: vec![false; vocab] })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry, modified in place) for
    /// a sequence whose tokens so far are `history`. Returns an error when the logits have the
    /// wrong length or are not finite.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        if logits.len() != self.seen.len() || logits.is_empty() {
            return Err(ModelError::BadInput(format!(
                "{} logits for a vocabulary of {}",
                logits.len(),
                self.seen.len()
            )));
        }
        if let Some(i) = logits.iter().position(|l| l.is_nan()) {
            return Err(ModelError::BadInput(format!(
                "the model's logit for token {i} is NaN (non-finite weights: a damaged or diverged checkpoint?)"
            )));
        }
        let penalty = self.params.repetition_penalty;
        if penalty != 1.0 {
            self.seen.fill(false);
            for &t in history {
                if let Some(s) = self.seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in logits.iter_mut().zip(&self.seen).filter(|(_, &s)| s) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let t = self.params.temperature;
        // Candidates sorted by logit, descending (ties by id for determinism).
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if let Some(k) = self.params.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0] as usize] / t;
        let mut probs: Vec<f64> =
            order.iter().map(|&i| f64::from(logits[i as usize] / t - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= f64::from(self.params.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.uniform() * total;
        for (&id, &p) in order.iter().zip(&probs) {
            if u < p {
                return Ok(id);
            }
            u -= p;
        }
        Ok(*order.last().expect("at least one candidate is kept"))
    }
}

/// The index of the largest value (the first one on ties).
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
