//! Writing a `tokenizer.json`, and turning our own [`BpeModel`] into an [`HfTokenizer`].
//!
//! Our model maps onto `tokenizers` parts one to one:
//!
//! | ours | `tokenizer.json` |
//! |---|---|
//! | Unicode form (none / NFC / NFKC) | normaliser `NFC` / `NFKC` |
//! | spaces become `▁`, dummy `▁` prefix | `Replace(" " → "▁")`, `Prepend("▁")` |
//! | a word starts at a `▁` (runs: see [`crate::pretokenize`]); digits alone | `Split(META_RUNS_PATTERN, Isolated)`, `Digits(individual)` |
//! | specials, `<0xNN>` bytes, ranked merges | `BPE` with `byte_fallback`, specials as added tokens |
//! | decode | `Replace("▁" → " ")`, `ByteFallback`, `Fuse`, `Strip(" ", 1, 0)` |
//!
//! Our tokenizer treats special tokens written in the text as plain text; in Python set
//! `tok.encode_special_tokens = True` for the same ids on such texts (the exported
//! [`HfTokenizer`] has it on).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::bytelevel::GPT2_PATTERN;
use crate::error::Result;
use crate::hf::base64;
use crate::hf::bpe::HfBpe;
use crate::hf::steps::{Behavior, Decode, Normalize, PreTokenize, Prepend};
use crate::hf::unigram::HfUnigram;
use crate::hf::HfModel;
use crate::hf::{vocab_map, AddedToken, HfTokenizer};
use crate::json::write_atomic;
use crate::model::{BpeModel, DEFAULT_SPECIALS};
use crate::normalize::{NormalizerKind, META};
use crate::pretokenize::META_RUNS_PATTERN;

fn scheme(p: Prepend) -> &'static str {
    match p {
        Prepend::Always => "always",
        Prepend::First => "first",
        Prepend::Never => "never",
    }
}

fn behavior(b: Behavior) -> &'static str {
    match b {
        Behavior::Removed => "Removed",
        Behavior::Isolated => "Isolated",
        Behavior::MergedWithPrevious => "MergedWithPrevious",
        Behavior::MergedWithNext => "MergedWithNext",
        Behavior::Contiguous => "Contiguous",
    }
}

fn normalizer_json(n: &Normalize) -> Value {
    match n {
        Normalize::Nfc => json!({"type": "NFC"}),
        Normalize::Nfd => json!({"type": "NFD"}),
        Normalize::Nfkc => json!({"type": "NFKC"}),
        Normalize::Nfkd => json!({"type": "NFKD"}),
        Normalize::Lowercase => json!({"type": "Lowercase"}),
        Normalize::Prepend(p) => json!({"type": "Prepend", "prepend": p}),
        Normalize::Replace(a, b) => json!({"type": "Replace", "pattern": {"String": a}, "content": b}),
        Normalize::ReplaceRegex(r, b) => {
            json!({"type": "Replace", "pattern": {"Regex": r.as_str()}, "content": b})
        }
        Normalize::Strip(l, r) => json!({"type": "Strip", "strip_left": l, "strip_right": r}),
        Normalize::StripAccents => json!({"type": "StripAccents"}),
        Normalize::Precompiled(map) => {
            json!({"type": "Precompiled", "precompiled_charsmap": base64::encode(&map.to_bytes())})
        }
    }
}

fn pre_tokenizer_json(p: &PreTokenize) -> Value {
    match p {
        PreTokenize::ByteLevel { add_prefix_space, use_regex } => json!({
            "type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": use_regex
        }),
        PreTokenize::Metaspace { replacement, prepend, split } => json!({
            "type": "Metaspace", "replacement": replacement.to_string(), "prepend_scheme": scheme(*prepend), "split": split
        }),
        PreTokenize::SplitString { pattern, behavior: b, invert } => json!({
            "type": "Split", "pattern": {"String": pattern}, "behavior": behavior(*b), "invert": invert
        }),
        PreTokenize::SplitRegex { regex, behavior: b, invert } => json!({
            "type": "Split", "pattern": {"Regex": regex.as_str()}, "behavior": behavior(*b), "invert": invert
        }),
        PreTokenize::WhitespaceSplit => json!({"type": "WhitespaceSplit"}),
        PreTokenize::SplitGpt2 { behavior: b, invert } => json!({
            "type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": behavior(*b), "invert": invert
        }),
        PreTokenize::SplitMetaRuns { behavior: b, invert } => json!({
            "type": "Split", "pattern": {"Regex": META_RUNS_PATTERN}, "behavior": behavior(*b), "invert": invert
        }),
        PreTokenize::Digits { individual } => json!({"type": "Digits", "individual_digits": individual}),
    }
}

fn decoder_json(d: &Decode) -> Value {
    match d {
        Decode::ByteLevel => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true})
        }
        Decode::Metaspace { replacement, prepend } => json!({
            "type": "Metaspace", "replacement": replacement.to_string(), "prepend_scheme": scheme(*prepend), "split": true
        }),
        Decode::Replace(a, b) => json!({"type": "Replace", "pattern": {"String": a}, "content": b}),
        Decode::ByteFallback => json!({"type": "ByteFallback"}),
        Decode::Fuse => json!({"type": "Fuse"}),
        Decode::Strip { content, start, stop } => {
            json!({"type": "Strip", "content": content.to_string(), "start": start, "stop": stop})
        }
    }
}

/// One step as itself, several as a `Sequence`, none as `null`.
fn sequence(mut items: Vec<Value>, key: &str) -> Value {
    match items.len() {
        0 => Value::Null,
        1 => items.remove(0),
        _ => {
            let mut m = Map::new();
            m.insert("type".into(), "Sequence".into());
            m.insert(key.into(), Value::Array(items));
            Value::Object(m)
        }
    }
}

fn model_json(m: &HfModel) -> Value {
    match m {
        HfModel::Bpe(m) => bpe_json(m),
        HfModel::Unigram(m) => unigram_json(m),
    }
}

fn unigram_json(m: &HfUnigram) -> Value {
    let vocab: Vec<Value> = m.pieces.iter().map(|(p, s)| json!([p, s])).collect();
    json!({"type": "Unigram", "unk_id": m.unk_id, "vocab": vocab, "byte_fallback": m.byte_fallback})
}

fn bpe_json(m: &HfBpe) -> Value {
    let mut vocab: Vec<(&String, &u32)> = m.vocab.iter().collect();
    vocab.sort_by_key(|&(_, id)| *id);
    let vocab: Map<String, Value> = vocab.into_iter().map(|(t, &id)| (t.clone(), Value::from(id))).collect();
    let merges: Vec<Value> = m.merges.iter().map(|(a, b)| json!([a, b])).collect();
    json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": m.unk.as_ref().map(|(t, _)| t.clone()),
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": m.fuse_unk,
        "byte_fallback": m.byte_fallback(),
        "ignore_merges": m.ignore_merges,
        "vocab": vocab,
        "merges": merges,
    })
}

impl HfTokenizer {
    /// The same tokenizer as our [`BpeModel`] (see the module docs): identical ids for every
    /// text, in this crate and in Hugging Face `tokenizers`.
    pub fn from_bpe_model(model: &BpeModel) -> Result<Self> {
        let n = model.normalizer();
        let meta = META.to_string();
        let mut normalizers = Vec::new();
        match n.kind {
            NormalizerKind::None => {}
            NormalizerKind::Nfc => normalizers.push(Normalize::Nfc),
            NormalizerKind::Nfkc => normalizers.push(Normalize::Nfkc),
        }
        normalizers.push(Normalize::Replace(" ".into(), meta.clone()));
        if n.add_dummy_prefix {
            normalizers.push(Normalize::Prepend(meta.clone()));
        }
        let pre = vec![
            PreTokenize::SplitMetaRuns { behavior: Behavior::Isolated, invert: false },
            PreTokenize::Digits { individual: true },
        ];
        let mut decoders = vec![Decode::Replace(meta, " ".into()), Decode::ByteFallback, Decode::Fuse];
        if n.add_dummy_prefix {
            decoders.push(Decode::Strip { content: ' ', start: 1, stop: 0 });
        }
        let vocab = vocab_map(model.pieces().iter().enumerate().map(|(i, p)| (p.clone(), i as u32)))?;
        let unk = model.special_id(DEFAULT_SPECIALS[0]).map(|_| DEFAULT_SPECIALS[0].to_string());
        let bpe = HfBpe::new(vocab, model.merge_strings(), unk, true, false, false)?;
        let added = model
            .specials()
            .iter()
            .enumerate()
            .map(|(i, s)| AddedToken {
                id: i as u32,
                content: s.clone(),
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: true,
            })
            .collect();
        let mut tok = Self::from_parts(normalizers, pre, HfModel::Bpe(bpe), decoders, added)?;
        tok.set_encode_special_tokens(true);
        Ok(tok)
    }

    /// The `tokenizer.json` text of this tokenizer (no post-processor, no padding or
    /// truncation).
    pub fn to_json_string(&self) -> String {
        let added: Vec<Value> = self
            .added
            .iter()
            .map(|a| {
                json!({"id": a.id, "content": a.content, "single_word": a.single_word, "lstrip": a.lstrip,
                       "rstrip": a.rstrip, "normalized": a.normalized, "special": a.special})
            })
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": sequence(self.normalizers.iter().map(normalizer_json).collect(), "normalizers"),
            "pre_tokenizer": sequence(self.pre_tokenizers.iter().map(pre_tokenizer_json).collect(), "pretokenizers"),
            "post_processor": null,
            "decoder": sequence(self.decoders.iter().map(decoder_json).collect(), "decoders"),
            "model": model_json(&self.model),
        });
        serde_json::to_string(&doc).expect("serialising JSON values cannot fail")
    }

    /// Save as a `tokenizer.json` file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_json_string().as_bytes())
    }
}
