//! Hugging Face `tokenizer.json`: import, encode/decode, export.
//!
//! [`HfTokenizer`] runs a `tokenizer.json` the way the `tokenizers` library does, for the parts
//! that BPE and unigram tokenizers use:
//!
//! - added tokens (matched in the text before anything else, leftmost-longest, with `lstrip`,
//!   `rstrip`, `single_word`; `normalized` ones are matched after normalisation);
//! - normalisers `NFC`, `NFD`, `NFKC`, `NFKD`, `Lowercase`, `StripAccents`, `Prepend`, `Replace` (a literal or a
//!   regular expression, see [`regex`]), `Strip`, `Precompiled` (a SentencePiece character map,
//!   applied per grapheme cluster as `tokenizers` does) and `Sequence`;
//! - pre-tokenizers `ByteLevel` (GPT-2 byte map and split, see [`crate::bytelevel`]),
//!   `Metaspace`, `Split` (a literal, the GPT-2 expression, our own word split
//!   [`crate::pretokenize::META_RUNS_PATTERN`], or another regular expression), `WhitespaceSplit`,
//!   `Whitespace`,
//!   `Digits` and `Sequence`;
//! - the `BPE` model (ranked merges, `unk_token`, `fuse_unk`, `byte_fallback`, `ignore_merges`)
//!   and the `Unigram` model (Viterbi over piece scores, fused unknowns, `byte_fallback`; see
//!   [`unigram`]);
//! - decoders `ByteLevel`, `Metaspace`, `Replace` (literal), `ByteFallback`, `Fuse`, `Strip`,
//!   `Sequence`.
//!
//! That covers what `transformers` writes when it converts a SentencePiece model (generic,
//! Llama, T5 or XLM-R style) and the byte-level files split by a GPT-4-style expression (Llama 3,
//! Qwen2). Anything else (WordPiece models, regular expressions beyond [`regex`]'s subset, such
//! as script properties, BERT normalisers, ...) is a [`TokenizerError::MalformedModel`] naming it.
//! The post-processor is not run: [`HfTokenizer::encode`] gives what
//! `tokenizer.encode(text, add_special_tokens=False).ids` gives in Python.
//!
//! Both styles of BPE file work: byte-level (GPT-2, loaded from a `tokenizer.json` or from
//! `encoder.json` + `vocab.bpe` by [`HfTokenizer::from_gpt2_files`]) and SentencePiece style (`▁`,
//! byte fallback). [`HfTokenizer::from_bpe_model`] turns our own [`crate::BpeModel`] into the
//! second kind and [`HfTokenizer::to_json_string`] writes any loaded tokenizer back out.
//!
//! Special tokens written in the text: like `tokenizers`, added tokens found in the text are
//! encoded as their ids, unless [`HfTokenizer::set_encode_special_tokens`] is on, which makes
//! special added tokens plain text (our own [`crate::Tokenizer`] always treats them as plain text).
//!
//! Known simplifications: `normalized` added tokens are looked for in each normalised segment
//! (not through offsets back into the original), and a `single_word` token whose word check fails
//! is simply not matched at that position. Neither shows on the fixtures' texts. A Unigram model
//! without an unknown id drops a character no piece covers (`tokenizers` fails to encode).

mod base64;
mod bpe;
mod config;
mod export;
mod gpt2;
mod regex;
mod steps;
mod unigram;

use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use crate::bytelevel::{byte_to_char_table, split_gpt2};
use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use bpe::HfBpe;
pub use gpt2::GPT2_END_OF_TEXT;
use steps::{Decode, Normalize, PreTokenize};
use unigram::HfUnigram;

/// One entry of `added_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    /// Its id.
    pub id: u32,
    /// Its text.
    pub content: String,
    /// Matched only as a whole word.
    pub single_word: bool,
    /// Swallows whitespace on its left.
    pub lstrip: bool,
    /// Swallows whitespace on its right.
    pub rstrip: bool,
    /// Matched in the normalised text rather than the raw text.
    pub normalized: bool,
    /// A special token (skipped by `decode(.., skip_special_tokens = true)`).
    pub special: bool,
}

/// The model of a `tokenizer.json`.
#[derive(Debug)]
enum HfModel {
    Bpe(HfBpe),
    Unigram(HfUnigram),
}

impl HfModel {
    fn vocab(&self) -> &FxHashMap<String, u32> {
        match self {
            HfModel::Bpe(m) => &m.vocab,
            HfModel::Unigram(m) => &m.vocab,
        }
    }

    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        match self {
            HfModel::Bpe(m) => m.encode_piece(piece, out),
            HfModel::Unigram(m) => m.encode_piece(piece, out),
        }
    }

    fn byte_fallback(&self) -> bool {
        match self {
            HfModel::Bpe(m) => m.byte_fallback(),
            HfModel::Unigram(m) => m.byte_fallback,
        }
    }
}

/// A tokenizer read from a Hugging Face `tokenizer.json` (see the module docs).
#[derive(Debug)]
pub struct HfTokenizer {
    normalizers: Vec<Normalize>,
    pre_tokenizers: Vec<PreTokenize>,
    model: HfModel,
    decoders: Vec<Decode>,
    added: Vec<AddedToken>,
    /// Every id's token text (`None`: an id no token has).
    id_to_token: Vec<Option<String>>,
    encode_special_tokens: bool,
    /// Indices into `added` of the tokens matched in the raw / the normalised text, longest
    /// first (kept up to date with `encode_special_tokens`).
    match_raw: Vec<usize>,
    match_normalized: Vec<usize>,
    byte_table: Box<[char; 256]>,
}

/// A piece of input: text still to tokenize (with whether it starts the input), or an added
/// token's id.
enum Segment {
    Text(String, bool),
    Token(u32),
}

impl HfTokenizer {
    /// Parse `tokenizer.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| TokenizerError::malformed(format!("tokenizer.json: invalid JSON: {e}")))?;
        let o = v.as_object().ok_or_else(|| TokenizerError::malformed("tokenizer.json: not an object"))?;
        let get = |k: &str| o.get(k).unwrap_or(&Value::Null);
        let mut normalizers = Vec::new();
        config::normalizers(get("normalizer"), &mut normalizers)?;
        let mut pre_tokenizers = Vec::new();
        config::pre_tokenizers(get("pre_tokenizer"), &mut pre_tokenizers)?;
        let mut decoders = Vec::new();
        config::decoders(get("decoder"), &mut decoders)?;
        let model = config::model(
            o.get("model").ok_or_else(|| TokenizerError::malformed("tokenizer.json: no model"))?,
        )?;
        let added = config::added_tokens(o.get("added_tokens"))?;
        Self::from_parts(normalizers, pre_tokenizers, model, decoders, added)
    }

    fn from_parts(
        normalizers: Vec<Normalize>,
        pre_tokenizers: Vec<PreTokenize>,
        model: HfModel,
        decoders: Vec<Decode>,
        added: Vec<AddedToken>,
    ) -> Result<Self> {
        let max_id = model.vocab().values().chain(added.iter().map(|a| &a.id)).copied().max();
        let len = max_id.map_or(0, |m| m as usize + 1);
        if len > (1 << 26) {
            return Err(TokenizerError::malformed(format!(
                "tokenizer.json: id {} is implausibly large",
                len - 1
            )));
        }
        let mut id_to_token = vec![None; len];
        for (piece, &id) in model.vocab() {
            id_to_token[id as usize] = Some(piece.clone());
        }
        for a in &added {
            id_to_token[a.id as usize] = Some(a.content.clone());
        }
        let mut tok = HfTokenizer {
            normalizers,
            pre_tokenizers,
            model,
            decoders,
            added,
            id_to_token,
            encode_special_tokens: false,
            match_raw: Vec::new(),
            match_normalized: Vec::new(),
            byte_table: Box::new(byte_to_char_table()),
        };
        tok.update_matchable();
        Ok(tok)
    }

    /// Load a `tokenizer.json` file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        crate::json::load_text_file(path.as_ref(), Self::from_json_str)
    }

    /// When on, special added tokens written in the text are encoded as plain text (the
    /// `encode_special_tokens` setting of `tokenizers`). Off by default.
    pub fn set_encode_special_tokens(&mut self, on: bool) {
        self.encode_special_tokens = on;
        self.update_matchable();
    }

    fn update_matchable(&mut self) {
        let pick = |normalized: bool| -> Vec<usize> {
            let mut v: Vec<usize> = (0..self.added.len())
                .filter(|&i| {
                    let a = &self.added[i];
                    a.normalized == normalized && !(a.special && self.encode_special_tokens)
                })
                .collect();
            // Longest first, so the first token that matches at a position is the longest.
            v.sort_by_key(|&i| std::cmp::Reverse(self.added[i].content.len()));
            v
        };
        self.match_raw = pick(false);
        self.match_normalized = pick(true);
    }

    /// The added tokens.
    pub fn added_tokens(&self) -> &[AddedToken] {
        &self.added
    }

    /// One past the largest id (vocabulary and added tokens).
    pub fn vocab_size(&self) -> usize {
        self.id_to_token.len()
    }

    /// The token text of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.id_to_token.get(id as usize).and_then(|t| t.as_deref())
    }

    /// The id of a token (added tokens first, then the vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added
            .iter()
            .find(|a| a.content == token)
            .map(|a| a.id)
            .or_else(|| self.model.vocab().get(token).copied())
    }

    /// Whether the model falls back to `<0xNN>` byte tokens.
    pub fn byte_fallback(&self) -> bool {
        self.model.byte_fallback()
    }

    /// Encode text into ids (no post-processor: no `<s>` or other template tokens are added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let raw_tokens: Vec<&AddedToken> = self.match_raw.iter().map(|&i| &self.added[i]).collect();
        let norm_tokens: Vec<&AddedToken> = self.match_normalized.iter().map(|&i| &self.added[i]).collect();
        for seg in split_added(text, &raw_tokens, true) {
            match seg {
                Segment::Token(id) => out.push(id),
                Segment::Text(part, first) => {
                    let normalized = self.normalizers.iter().fold(part, |t, n| n.apply(t));
                    for sub in split_added(&normalized, &norm_tokens, first) {
                        match sub {
                            Segment::Token(id) => out.push(id),
                            Segment::Text(s, first) => self.encode_normalized(s, first, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    /// Encode many texts in parallel (rayon); the result is in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    fn encode_normalized(&self, text: String, first: bool, out: &mut Vec<u32>) {
        // Byte level alone (GPT-2): split and encode without a String per piece; the same ids
        // as the general path below.
        if let (HfModel::Bpe(model), [PreTokenize::ByteLevel { add_prefix_space, use_regex }]) =
            (&self.model, self.pre_tokenizers.as_slice())
        {
            let text = if *add_prefix_space && !text.starts_with(' ') { format!(" {text}") } else { text };
            let mut buf = String::with_capacity(64);
            if *use_regex {
                for part in split_gpt2(&text) {
                    model.encode_raw_piece(part, &self.byte_table, &mut buf, out);
                }
            } else if !text.is_empty() {
                model.encode_raw_piece(&text, &self.byte_table, &mut buf, out);
            }
            return;
        }
        let pieces =
            self.pre_tokenizers.iter().fold(vec![(text, first)], |p, step| step.apply(p, &self.byte_table));
        for (piece, _) in pieces {
            self.model.encode_piece(&piece, out);
        }
    }

    /// Decode ids into text through the decoder steps (tokens joined by spaces when there are
    /// none, as `tokenizers` does). With `skip_special_tokens`, special added tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut tokens = Vec::with_capacity(ids.len());
        for &id in ids {
            let token = self.id_to_token(id).ok_or_else(|| {
                let vocab_size = self.vocab_size();
                if (id as usize) < vocab_size {
                    TokenizerError::IdUnassigned { id, vocab_size }
                } else {
                    TokenizerError::IdOutOfRange { id, vocab_size }
                }
            })?;
            if skip_special_tokens && self.added.iter().any(|a| a.id == id && a.special) {
                continue;
            }
            tokens.push(token.to_string());
        }
        if self.decoders.is_empty() {
            return Ok(tokens.join(" "));
        }
        Ok(self.decoders.iter().fold(tokens, |t, d| d.apply(t)).concat())
    }

    /// The vocabulary as `(token, id)` pairs, by id.
    pub fn vocab(&self) -> Vec<(&str, u32)> {
        let mut v: Vec<(&str, u32)> = self.model.vocab().iter().map(|(t, &i)| (t.as_str(), i)).collect();
        v.sort_by_key(|&(_, i)| i);
        v
    }
}

/// Whether `c` counts as part of a word for `single_word` added tokens.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Split `text` on added tokens (leftmost, longest first), honouring `lstrip`, `rstrip` and
/// `single_word`. `at_start`: whether `text` begins the input.
fn split_added(text: &str, tokens: &[&AddedToken], at_start: bool) -> Vec<Segment> {
    if tokens.is_empty() {
        return vec![Segment::Text(text.to_string(), at_start)];
    }
    let mut out = Vec::new();
    let mut plain_start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let hit = tokens.iter().find(|t| {
            rest.starts_with(t.content.as_str())
                && (!t.single_word
                    || (text[..pos].chars().next_back().is_none_or(|c| !is_word_char(c))
                        && text[pos + t.content.len()..].chars().next().is_none_or(|c| !is_word_char(c))))
        });
        match hit {
            Some(t) => {
                let mut start = pos;
                if t.lstrip {
                    start = plain_start + text[plain_start..pos].trim_end().len();
                }
                let mut end = pos + t.content.len();
                if t.rstrip {
                    end = text.len() - text[end..].trim_start().len();
                }
                if start > plain_start {
                    out.push(Segment::Text(
                        text[plain_start..start].to_string(),
                        at_start && plain_start == 0,
                    ));
                }
                out.push(Segment::Token(t.id));
                plain_start = end;
                pos = end;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if plain_start < text.len() {
        out.push(Segment::Text(text[plain_start..].to_string(), at_start && plain_start == 0));
    }
    out
}

/// Build a vocabulary map, checking ids are unique.
pub(crate) fn vocab_map(pieces: impl IntoIterator<Item = (String, u32)>) -> Result<FxHashMap<String, u32>> {
    let mut map = FxHashMap::default();
    for (p, id) in pieces {
        if map.insert(p.clone(), id).is_some() {
            return Err(TokenizerError::malformed(format!("token {p:?} is repeated")));
        }
    }
    Ok(map)
}
