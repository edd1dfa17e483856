//! Per-language validation loss and bits per byte.
//!
//! For each language of a split, whole documents (in file order) are laid out as
//! `[eos, doc1, eos, doc2, eos, ...]` until at least `max_tokens_per_lang` text tokens are
//! taken, and cut into windows of `seq + 1` tokens that overlap by one (window `k` covers
//! positions `k·seq ..= k·seq + seq`; the last one is padded), so every position after the
//! first is predicted exactly once. Targets that are the end-of-sequence token (or padding)
//! are ignored, so the loss counts text tokens only: `loss` is the mean in nats per token and
//! `bpb = total nats / ln 2 / UTF-8 bytes` of those documents, which compares models with
//! different tokenizers.

use polylm_engine::no_grad;
use polylm_model::{Batch, Gpt};
use serde::Serialize;

use super::dataset::Dataset;
use super::error::{DataError, Result};

/// The target id that [`validate`] gives ignored positions.
pub const IGNORE_ID: u32 = u32::MAX;

/// At most this many logits are materialised per forward pass (`batch` is lowered to fit).
pub const MAX_LOGITS: usize = 1 << 26;

/// Validation result of one language.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LangEval {
    /// Language code.
    pub lang: String,
    /// Text tokens scored (separators not counted).
    pub tokens: u64,
    /// UTF-8 bytes of the scored documents.
    pub bytes: u64,
    /// Mean loss in nats per text token.
    pub loss: f64,
    /// Bits per UTF-8 byte: total nats / ln 2 / bytes.
    pub bpb: f64,
}

/// Evaluates `model` on every language of `split` (see the module documentation). `seq` must
/// not exceed the model's context; `batch` windows are scored per forward pass (fewer when
/// `batch · seq · vocab` exceeds [`MAX_LOGITS`]);
/// `max_tokens_per_lang` bounds the text tokens per language (whole documents are taken, so
/// the last may go past it; `u64::MAX` for all). Runs without recording gradients, on the
/// model's device.
pub fn validate(
    model: &Gpt,
    dataset: &Dataset,
    split: &str,
    seq: usize,
    batch: usize,
    max_tokens_per_lang: u64,
) -> Result<Vec<LangEval>> {
    if seq == 0 || batch == 0 {
        return Err(DataError::BadInput(format!("validation windows of [{batch}, {seq}]")));
    }
    let langs = dataset.langs(split);
    if langs.is_empty() {
        return Err(DataError::NoData(format!(
            "the dataset in {} has no {split:?} split",
            dataset.dir().display()
        )));
    }
    let eos = dataset.eos_id();
    // The loss materialises `[rows, seq, vocab]` logits: keep them under MAX_LOGITS.
    let per_row = seq.saturating_mul(model.config().vocab_size).max(1);
    let rows_per_pass = batch.min((MAX_LOGITS / per_row).max(1));
    let _guard = no_grad();
    let mut out = Vec::with_capacity(langs.len());
    for lang in langs {
        let shard = dataset.shard(split, &lang)?;
        let mut stream = vec![eos];
        let (mut tokens, mut bytes) = (0u64, 0u64);
        for i in 0..shard.num_docs() {
            if tokens >= max_tokens_per_lang {
                break;
            }
            let meta = shard.doc_meta(i);
            if meta.tokens == 0 {
                continue;
            }
            shard.doc_tokens(i, &mut stream);
            stream.push(eos);
            tokens += u64::from(meta.tokens);
            bytes += u64::from(meta.bytes);
        }
        if tokens == 0 {
            continue;
        }
        let windows = (stream.len() - 1).div_ceil(seq);
        let mut nats = 0.0f64;
        let mut counted = 0u64;
        let mut ids = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        let mut w = 0;
        while w < windows {
            let rows = rows_per_pass.min(windows - w);
            ids.clear();
            targets.clear();
            let mut n = 0u64;
            for k in w..w + rows {
                let start = k * seq;
                for j in 0..seq {
                    let p = start + j;
                    ids.push(stream.get(p).copied().unwrap_or(eos));
                    let t = stream.get(p + 1).copied().filter(|&t| t != eos).unwrap_or(IGNORE_ID);
                    n += u64::from(t != IGNORE_ID);
                    targets.push(t);
                }
            }
            w += rows;
            if n == 0 {
                continue;
            }
            let b = Batch { ids: &ids, batch: rows, seq };
            let mean = model
                .loss(&b, &targets, Some(IGNORE_ID))?
                .to_scalar()
                .map_err(polylm_model::ModelError::from)?;
            nats += mean * n as f64;
            counted += n;
        }
        out.push(LangEval {
            lang,
            tokens: counted,
            bytes,
            loss: nats / counted.max(1) as f64,
            bpb: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
        });
    }
    Ok(out)
}
