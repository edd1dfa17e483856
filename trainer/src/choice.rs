//! Zero-shot multiple choice scored by log-likelihood (the paper's XNLI / XCOPA / PAWS-X /
//! XWinograd style of evaluation).
//!
//! Each item is a prompt and several choices; the model's score of a choice is
//! `log P(choice tokens | prompt tokens)`, summed over the choice's tokens. The prediction is
//! the choice of highest score ([`ChoiceReport::accuracy`]) or of highest score per token
//! ([`ChoiceReport::accuracy_norm`], which does not favour short choices).
//!
//! Tokens: the prompt is tokenized alone and the choice's tokens are what tokenizing
//! `prompt + choice` adds after the prompt's tokens; where tokenization merges across the
//! boundary (the prompt's tokens are not a prefix of the whole), the prompt and the choice are
//! tokenized separately and concatenated. An empty prompt is replaced by the end-of-sequence
//! token, so that the first choice token has a context. A sequence longer than the model's
//! context loses tokens on the left.
//!
//! The choices of an item run as one batch (padded on the right, which causal attention makes
//! harmless), under [`polylm_engine::no_grad`]; only the logit rows that predict choice tokens
//! are brought to the host, where the log-softmax is taken in f64.

use std::path::{Path, PathBuf};

use polylm_engine::{no_grad, DType};
use polylm_model::{Batch, Gpt, ModelError};
use polylm_tokenizer::cli::AnyModel;
use polylm_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors of multiple-choice evaluation: file errors name the file and the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// The file could not be read or a line is not a valid item (names file and line).
    #[error(transparent)]
    Jsonl(#[from] crate::jsonl::JsonlError),
    /// A gold index that names no choice.
    #[error("{}:{line}: gold {gold} is out of range for {choices} choices", path.display())]
    GoldOutOfRange {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The gold index given.
        gold: u64,
        /// The number of choices.
        choices: usize,
    },
    /// A file that holds no items (an accuracy over nothing would read as 0).
    #[error("{}: holds no items (one JSON object per line: {{\"prompt\", \"choices\", \"gold\"}})", path.display())]
    NoItems {
        /// The file.
        path: PathBuf,
    },
    /// An item that cannot be scored (no choices, gold out of range, an empty choice, ...).
    #[error("item {item}: {reason}")]
    BadItem {
        /// Index of the item.
        item: usize,
        /// What is wrong.
        reason: String,
    },
    /// A model too small to score anything, or without an end-of-sequence token when one is
    /// needed.
    #[error("cannot score: {0}")]
    Unscorable(String),
    /// An error from the model or the engine.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<polylm_engine::Error> for ChoiceError {
    fn from(e: polylm_engine::Error) -> Self {
        ChoiceError::Model(ModelError::Engine(e))
    }
}

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceItem {
    /// The context the choices continue.
    pub prompt: String,
    /// The candidate continuations (at least one).
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

/// Reads multiple-choice items: `{"prompt": str, "choices": [str, ...], "gold": int}` per line
/// (JSON Lines; blank lines skipped) or as one JSON array (other fields ignored). There must be at least one
/// choice, none empty, and `gold` must name one of them. Errors name the file and the line.
pub fn load_choices(path: &Path) -> Result<Vec<ChoiceItem>, ChoiceError> {
    let bytes = crate::jsonl::read(path)?;
    parse_choices(&bytes, path)
}

/// Parses multiple-choice items from memory, JSON Lines or a JSON array (see [`load_choices`]); `path` only names the
/// source in errors.
pub fn parse_choices(bytes: &[u8], path: &Path) -> Result<Vec<ChoiceItem>, ChoiceError> {
    let records = crate::jsonl::records(bytes, path, r#"{"prompt", "choices", "gold"}"#)?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let prompt = r.string("prompt")?;
        let Value::Array(list) = r.field("choices")? else {
            return Err(r.wrong("choices", "an array of strings").into());
        };
        let choices = list
            .iter()
            .map(|c| match c {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                Value::String(_) => Err(r.wrong("choices", "an array of non-empty strings")),
                _ => Err(r.wrong("choices", "an array of strings")),
            })
            .collect::<Result<Vec<String>, _>>()?;
        if choices.is_empty() {
            return Err(r.wrong("choices", "a non-empty array of strings").into());
        }
        let gold = r.field("gold")?.as_u64().ok_or_else(|| r.wrong("gold", "a non-negative integer"))?;
        if gold >= choices.len() as u64 {
            return Err(ChoiceError::GoldOutOfRange {
                path: path.to_path_buf(),
                line: r.line,
                gold,
                choices: choices.len(),
            });
        }
        out.push(ChoiceItem { prompt, choices, gold: gold as usize });
    }
    if out.is_empty() {
        return Err(ChoiceError::NoItems { path: path.to_path_buf() });
    }
    Ok(out)
}

/// The scores of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceScore {
    /// Per choice: the summed log-likelihood of its tokens given the prompt (natural log).
    pub loglik: Vec<f64>,
    /// Per choice: the number of tokens scored.
    pub tokens: Vec<usize>,
    /// The gold index.
    pub gold: usize,
    /// The choice of highest `loglik` (the first on ties).
    pub predicted: usize,
    /// The choice of highest `loglik / tokens` (the first on ties).
    pub predicted_norm: usize,
}

impl ChoiceScore {
    /// From the log-likelihoods and token counts of the choices.
    pub fn new(loglik: Vec<f64>, tokens: Vec<usize>, gold: usize) -> ChoiceScore {
        let norm: Vec<f64> = loglik.iter().zip(&tokens).map(|(&l, &n)| l / n.max(1) as f64).collect();
        ChoiceScore { predicted: argmax(&loglik), predicted_norm: argmax(&norm), loglik, tokens, gold }
    }

    /// Whether the summed log-likelihood picks the gold choice.
    pub fn correct(&self) -> bool {
        self.predicted == self.gold
    }

    /// Whether the per-token log-likelihood picks the gold choice.
    pub fn correct_norm(&self) -> bool {
        self.predicted_norm == self.gold
    }
}

/// Index of the largest value, the first on ties (NaN never wins).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || (v[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

/// Results over a set of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceReport {
    /// Number of items.
    pub items: usize,
    /// Fraction of items whose summed log-likelihood picks the gold choice (0 with no items).
    pub accuracy: f64,
    /// Fraction of items whose per-token log-likelihood picks the gold choice.
    pub accuracy_norm: f64,
    /// Per-item scores, in input order.
    pub scores: Vec<ChoiceScore>,
}

impl ChoiceReport {
    /// The report of per-item scores.
    pub fn from_scores(scores: Vec<ChoiceScore>) -> ChoiceReport {
        let n = scores.len();
        let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        ChoiceReport {
            items: n,
            accuracy: frac(scores.iter().filter(|s| s.correct()).count()),
            accuracy_norm: frac(scores.iter().filter(|s| s.correct_norm()).count()),
            scores,
        }
    }
}

/// What scoring needs of a tokenizer: text to ids, and the end-of-text id that stands for an
/// empty prompt. Ours and every format `polylm tokenizer` reads (a Hugging Face
/// `tokenizer.json`, a SentencePiece `.model`) are one.
pub trait TextEncoder {
    /// Text to ids.
    fn encode_text(&self, text: &str) -> Vec<u32>;
    /// The end-of-text id, if the tokenizer has one.
    fn end_of_text(&self) -> Option<u32>;
}

impl TextEncoder for Tokenizer {
    fn encode_text(&self, text: &str) -> Vec<u32> {
        self.encode(text)
    }

    fn end_of_text(&self) -> Option<u32> {
        self.model().special_id("</s>")
    }
}

impl TextEncoder for AnyModel {
    fn encode_text(&self, text: &str) -> Vec<u32> {
        self.encode(text)
    }

    fn end_of_text(&self) -> Option<u32> {
        self.boundary_id(false)
    }
}

/// The token ids of a prompt and of one choice continuing it (see the module docs): the
/// choice's ids are the suffix that tokenizing `prompt + choice` adds after the prompt's ids,
/// or the choice tokenized alone when tokenization merges across the boundary.
pub fn choice_tokens(
    tokenizer: &(impl TextEncoder + ?Sized),
    prompt: &str,
    choice: &str,
) -> (Vec<u32>, Vec<u32>) {
    let p = tokenizer.encode_text(prompt);
    let whole = tokenizer.encode_text(&format!("{prompt}{choice}"));
    if whole.len() > p.len() && whole.starts_with(&p) {
        let c = whole[p.len()..].to_vec();
        (p, c)
    } else {
        (p, tokenizer.encode_text(choice))
    }
}

/// Log-likelihood of each choice continuation given the context ids, as `(sum of log P over
/// the scored tokens, tokens scored)`. The choices run as one padded batch through
/// [`Gpt::logits`] under `no_grad`. A sequence longer than the model's context loses tokens on
/// the left (a choice token whose predecessor is cut off is not scored); `context` must not be
/// empty and every choice must have a token.
pub fn score_continuations(
    model: &Gpt,
    context: &[u32],
    choices: &[Vec<u32>],
) -> Result<Vec<(f64, usize)>, ChoiceError> {
    let ctx_len = model.config().context;
    if ctx_len < 2 {
        return Err(ChoiceError::Unscorable(format!("model context {ctx_len} is shorter than 2 tokens")));
    }
    if context.is_empty() {
        return Err(ChoiceError::Unscorable("empty context".into()));
    }
    if choices.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = choices.iter().position(Vec::is_empty) {
        return Err(ChoiceError::Unscorable(format!("choice {i} has no tokens")));
    }
    // Per choice: the (left-truncated) sequence and the index in it of the first scored token.
    let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(choices.len());
    let mut firsts: Vec<usize> = Vec::with_capacity(choices.len());
    for c in choices {
        let mut s: Vec<u32> = context.iter().chain(c).copied().collect();
        let cut = s.len().saturating_sub(ctx_len);
        s.drain(..cut);
        // The choice starts at context.len() - cut; its first token needs a predecessor.
        let first = context.len().saturating_sub(cut).max(1);
        firsts.push(first);
        seqs.push(s);
    }
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let lo = firsts.iter().copied().min().unwrap_or(1) - 1; // first logit row needed
    let rows = t - 1 - lo; // logit rows lo..t-1 predict tokens lo+1..t
    let mut ids = Vec::with_capacity(seqs.len() * t);
    for s in &seqs {
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(0u32, t - s.len()));
    }
    let vocab = model.config().vocab_size;
    let logits = {
        let _guard = no_grad();
        let all = model.logits(&Batch { ids: &ids, batch: seqs.len(), seq: t })?;
        all.narrow(1, lo, rows)?.to_dtype(DType::F32)?.to_vec::<f32>()?
    };
    let mut out = Vec::with_capacity(seqs.len());
    for (b, (s, &first)) in seqs.iter().zip(&firsts).enumerate() {
        let mut sum = 0.0;
        let mut n = 0;
        for (pos, &target) in s.iter().enumerate().skip(first) {
            let r = b * rows + pos - 1 - lo;
            sum += log_softmax_at(&logits[r * vocab..(r + 1) * vocab], target as usize);
            n += 1;
        }
        out.push((sum, n));
    }
    Ok(out)
}

/// `log softmax(row)[target]`, in f64.
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

/// Scores every item (see the module docs) and reports the accuracy with summed and with
/// per-token log-likelihoods.
pub fn score_choices(
    model: &Gpt,
    tokenizer: &(impl TextEncoder + ?Sized),
    items: &[ChoiceItem],
) -> Result<ChoiceReport, ChoiceError> {
    let eos = model.config().eos_token_id.or_else(|| tokenizer.end_of_text());
    let mut scores = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let bad = |reason: String| ChoiceError::BadItem { item: i, reason };
        if item.choices.is_empty() {
            return Err(bad("no choices".into()));
        }
        if item.gold >= item.choices.len() {
            return Err(bad(format!(
                "gold {} is out of range for {} choices",
                item.gold,
                item.choices.len()
            )));
        }
        let mut context = tokenizer.encode_text(&item.prompt);
        let mut conts = Vec::with_capacity(item.choices.len());
        for (k, choice) in item.choices.iter().enumerate() {
            let (_, c) = choice_tokens(tokenizer, &item.prompt, choice);
            if c.is_empty() {
                return Err(bad(format!("choice {k} ({choice:?}) has no tokens")));
            }
            conts.push(c);
        }
        if context.is_empty() {
            let eos =
                eos.ok_or_else(|| bad("empty prompt and no end-of-sequence token to stand for it".into()))?;
            context.push(eos);
        }
        let scored = score_continuations(model, &context, &conts)?;
        let (loglik, tokens): (Vec<f64>, Vec<usize>) = scored.into_iter().unzip();
        scores.push(ChoiceScore::new(loglik, tokens, item.gold));
    }
    Ok(ChoiceReport::from_scores(scores))
}
