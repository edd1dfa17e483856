//! Reading the parts of a `tokenizer.json` into the steps of [`super::steps`] and the
//! [`super::bpe::HfBpe`] model. Anything this crate does not run gives a typed error naming it.

use serde_json::{Map, Value};

use crate::bytelevel::{GPT2_PATTERN, GPT2_PATTERN_TIKTOKEN};
use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use std::sync::Arc;

use crate::hf::base64;
use crate::hf::bpe::HfBpe;
use crate::hf::regex::Regex;
use crate::hf::steps::{Behavior, Decode, Normalize, PreTokenize, Prepend};
use crate::hf::unigram::HfUnigram;
use crate::hf::{AddedToken, HfModel};
use crate::pretokenize::META_RUNS_PATTERN;
use crate::sentencepiece::charsmap::PrecompiledCharsMap;

fn bad(message: impl Into<String>) -> TokenizerError {
    TokenizerError::malformed(format!("tokenizer.json: {}", message.into()))
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| bad(format!("{what} is not an object")))
}

fn kind<'a>(o: &'a Map<String, Value>, what: &str) -> Result<&'a str> {
    o.get("type").and_then(Value::as_str).ok_or_else(|| bad(format!("{what} has no \"type\"")))
}

fn string(o: &Map<String, Value>, key: &str, what: &str) -> Result<String> {
    o.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(format!("{what}.{key} is not a string")))
}

fn flag(o: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{key} is not a boolean"))),
    }
}

fn one_char(s: &str, what: &str) -> Result<char> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(bad(format!("{what} {s:?} is not one character"))),
    }
}

fn list<'a>(o: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a Vec<Value>> {
    o.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("{what}.{key} is not a list")))
}

/// `{"String": s}` → `Ok(Some(s))`; `{"Regex": r}` → `Ok(None)` with `r` returned separately.
fn pattern(o: &Map<String, Value>, what: &str) -> Result<(Option<String>, Option<String>)> {
    let p =
        o.get("pattern").and_then(Value::as_object).ok_or_else(|| bad(format!("{what} has no pattern")))?;
    if let Some(s) = p.get("String").and_then(Value::as_str) {
        return Ok((Some(s.to_string()), None));
    }
    if let Some(r) = p.get("Regex").and_then(Value::as_str) {
        return Ok((None, Some(r.to_string())));
    }
    Err(bad(format!("{what} pattern is neither String nor Regex")))
}

fn prepend_scheme(o: &Map<String, Value>) -> Result<Prepend> {
    match o.get("prepend_scheme").and_then(Value::as_str) {
        Some("always") => Ok(Prepend::Always),
        Some("first") => Ok(Prepend::First),
        Some("never") => Ok(Prepend::Never),
        Some(s) => Err(bad(format!("unknown prepend_scheme {s:?}"))),
        // Files before `prepend_scheme` existed say `add_prefix_space`.
        None => Ok(if flag(o, "add_prefix_space", true)? { Prepend::Always } else { Prepend::Never }),
    }
}

/// What the `Whitespace` pre-tokenizer keeps (everything else is dropped).
const WHITESPACE_PATTERN: &str = r"\w+|[^\w\s]+";

/// A `Regex` pattern, or an error naming what in it is not supported.
fn regex(source: &str, what: &str) -> Result<Regex> {
    Regex::new(source).map_err(|e| bad(format!("unsupported {what}: {e}")))
}

/// The normaliser, flattened (`null` gives no steps).
pub(crate) fn normalizers(v: &Value, out: &mut Vec<Normalize>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let o = obj(v, "normalizer")?;
    let step = match kind(o, "normalizer")? {
        "Sequence" => {
            for n in list(o, "normalizers", "normalizer")? {
                normalizers(n, out)?;
            }
            return Ok(());
        }
        "NFC" => Normalize::Nfc,
        "NFD" => Normalize::Nfd,
        "NFKC" => Normalize::Nfkc,
        "NFKD" => Normalize::Nfkd,
        "Lowercase" => Normalize::Lowercase,
        "StripAccents" => Normalize::StripAccents,
        "Prepend" => Normalize::Prepend(string(o, "prepend", "Prepend")?),
        "Strip" => Normalize::Strip(flag(o, "strip_left", true)?, flag(o, "strip_right", true)?),
        "Replace" => match pattern(o, "Replace")? {
            (Some(s), _) => Normalize::Replace(s, string(o, "content", "Replace")?),
            (_, Some(r)) => {
                Normalize::ReplaceRegex(regex(&r, "Replace normalizer")?, string(o, "content", "Replace")?)
            }
            _ => return Err(bad("Replace has no pattern")),
        },
        "Precompiled" => {
            let coded = string(o, "precompiled_charsmap", "Precompiled")?;
            let blob = base64::decode(&coded)
                .ok_or_else(|| bad("Precompiled.precompiled_charsmap is not base64"))?;
            let map = PrecompiledCharsMap::parse(&blob).map_err(|e| bad(format!("Precompiled: {e}")))?;
            Normalize::Precompiled(Arc::new(map))
        }
        t => return Err(bad(format!("unsupported normalizer type {t:?}"))),
    };
    out.push(step);
    Ok(())
}

fn behavior(o: &Map<String, Value>) -> Result<Behavior> {
    Ok(match o.get("behavior").and_then(Value::as_str) {
        Some("Removed") => Behavior::Removed,
        Some("Isolated") => Behavior::Isolated,
        Some("MergedWithPrevious") => Behavior::MergedWithPrevious,
        Some("MergedWithNext") => Behavior::MergedWithNext,
        Some("Contiguous") => Behavior::Contiguous,
        other => return Err(bad(format!("unknown Split behavior {other:?}"))),
    })
}

/// The pre-tokenizer, flattened (`null` gives no steps).
pub(crate) fn pre_tokenizers(v: &Value, out: &mut Vec<PreTokenize>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let o = obj(v, "pre_tokenizer")?;
    let step = match kind(o, "pre_tokenizer")? {
        "Sequence" => {
            for p in list(o, "pretokenizers", "pre_tokenizer")? {
                pre_tokenizers(p, out)?;
            }
            return Ok(());
        }
        "ByteLevel" => PreTokenize::ByteLevel {
            add_prefix_space: flag(o, "add_prefix_space", true)?,
            use_regex: flag(o, "use_regex", true)?,
        },
        "Metaspace" => PreTokenize::Metaspace {
            replacement: one_char(&string(o, "replacement", "Metaspace")?, "Metaspace replacement")?,
            prepend: prepend_scheme(o)?,
            split: flag(o, "split", true)?,
        },
        "WhitespaceSplit" => PreTokenize::WhitespaceSplit,
        // Words and runs of other non-space characters, the rest dropped.
        "Whitespace" => PreTokenize::SplitRegex {
            regex: regex(WHITESPACE_PATTERN, "Whitespace pre-tokenizer")?,
            behavior: Behavior::Removed,
            invert: true,
        },
        "Digits" => PreTokenize::Digits { individual: flag(o, "individual_digits", false)? },
        "Split" => {
            let invert = flag(o, "invert", false)?;
            let behavior = behavior(o)?;
            match pattern(o, "Split")? {
                (Some(s), _) => PreTokenize::SplitString { pattern: s, behavior, invert },
                (_, Some(r)) if r == GPT2_PATTERN || r == GPT2_PATTERN_TIKTOKEN => {
                    PreTokenize::SplitGpt2 { behavior, invert }
                }
                (_, Some(r)) if r == META_RUNS_PATTERN => PreTokenize::SplitMetaRuns { behavior, invert },
                (_, Some(r)) => {
                    PreTokenize::SplitRegex { regex: regex(&r, "Split pre-tokenizer")?, behavior, invert }
                }
                _ => return Err(bad("Split has no pattern")),
            }
        }
        t => return Err(bad(format!("unsupported pre_tokenizer type {t:?}"))),
    };
    out.push(step);
    Ok(())
}

/// The decoder, flattened (`null` gives no steps).
pub(crate) fn decoders(v: &Value, out: &mut Vec<Decode>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let o = obj(v, "decoder")?;
    let step = match kind(o, "decoder")? {
        "Sequence" => {
            for d in list(o, "decoders", "decoder")? {
                decoders(d, out)?;
            }
            return Ok(());
        }
        "ByteLevel" => Decode::ByteLevel,
        "ByteFallback" => Decode::ByteFallback,
        "Fuse" => Decode::Fuse,
        "Metaspace" => Decode::Metaspace {
            replacement: one_char(&string(o, "replacement", "Metaspace")?, "Metaspace replacement")?,
            prepend: prepend_scheme(o)?,
        },
        "Replace" => match pattern(o, "Replace")? {
            (Some(s), _) => Decode::Replace(s, string(o, "content", "Replace")?),
            _ => return Err(bad("unsupported Replace decoder with a regex")),
        },
        "Strip" => {
            let count = |key: &str| -> Result<usize> {
                o.get(key)
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(format!("Strip.{key} is not a count")))
            };
            Decode::Strip {
                content: one_char(&string(o, "content", "Strip")?, "Strip content")?,
                start: count("start")?,
                stop: count("stop")?,
            }
        }
        t => return Err(bad(format!("unsupported decoder type {t:?}"))),
    };
    out.push(step);
    Ok(())
}

/// The model: BPE or Unigram.
pub(crate) fn model(v: &Value) -> Result<HfModel> {
    let o = obj(v, "model")?;
    match o.get("type").and_then(Value::as_str) {
        Some("BPE") => bpe(o).map(HfModel::Bpe),
        Some("Unigram") => unigram(o).map(HfModel::Unigram),
        None if o.contains_key("merges") => bpe(o).map(HfModel::Bpe),
        Some(t) => Err(bad(format!("unsupported model type {t:?} (BPE and Unigram are supported)"))),
        None => Err(bad("model has no type")),
    }
}

/// The `Unigram` model: `vocab` as `[piece, score]` pairs in id order, `unk_id`, `byte_fallback`.
fn unigram(o: &Map<String, Value>) -> Result<HfUnigram> {
    let mut pieces = Vec::new();
    for (i, entry) in list(o, "vocab", "model")?.iter().enumerate() {
        let pair = match entry.as_array().map(Vec::as_slice) {
            Some([Value::String(p), s]) => s.as_f64().map(|s| (p.clone(), s)),
            _ => None,
        };
        pieces.push(pair.ok_or_else(|| bad(format!("Unigram vocab entry {i} is not [piece, score]")))?);
    }
    let unk_id = match o.get("unk_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| bad("unk_id is not a 32-bit id"))?,
        ),
    };
    HfUnigram::new(pieces, unk_id, flag(o, "byte_fallback", false)?)
}

/// The `BPE` model.
fn bpe(o: &Map<String, Value>) -> Result<HfBpe> {
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match o.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(other) => return Err(bad(format!("unsupported BPE {key} {other}"))),
        }
    }
    match o.get("dropout") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_f64() == Some(0.0) => {}
        Some(d) => return Err(bad(format!("unsupported BPE dropout {d}"))),
    }
    let vocab_obj =
        o.get("vocab").and_then(Value::as_object).ok_or_else(|| bad("model.vocab is not an object"))?;
    let mut vocab = FxHashMap::default();
    for (piece, id) in vocab_obj {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .filter(|&i| i < u32::MAX)
            .ok_or_else(|| bad(format!("vocab id of {piece:?} is not a 32-bit id")))?;
        vocab.insert(piece.clone(), id);
    }
    let mut merges = Vec::new();
    for (i, m) in list(o, "merges", "model")?.iter().enumerate() {
        let pair = match m {
            // The older form: "a b" (split at the first space).
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(parts) => match parts.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(format!("merge {i} is not a pair of tokens")))?);
    }
    let unk = match o.get("unk_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("unk_token is not a string")),
    };
    HfBpe::new(
        vocab,
        merges,
        unk,
        flag(o, "byte_fallback", false)?,
        flag(o, "fuse_unk", false)?,
        flag(o, "ignore_merges", false)?,
    )
}

/// The `added_tokens` list.
pub(crate) fn added_tokens(v: Option<&Value>) -> Result<Vec<AddedToken>> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let items = v.as_array().ok_or_else(|| bad("added_tokens is not a list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let o = obj(t, "added token")?;
            let id = o
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| i < u32::MAX)
                .ok_or_else(|| bad(format!("added token {i} has no 32-bit id")))?;
            let content = string(o, "content", "added token")?;
            if content.is_empty() {
                return Err(bad(format!("added token {i} is empty")));
            }
            Ok(AddedToken {
                id,
                content,
                single_word: flag(o, "single_word", false)?,
                lstrip: flag(o, "lstrip", false)?,
                rstrip: flag(o, "rstrip", false)?,
                normalized: flag(o, "normalized", true)?,
                special: flag(o, "special", false)?,
            })
        })
        .collect()
}
