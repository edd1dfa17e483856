//! The normaliser, pre-tokenizer and decoder steps of a `tokenizer.json` that this crate runs,
//! each applied the way Hugging Face `tokenizers` applies it.

use std::sync::Arc;

use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use crate::bytelevel::{bytes_to_chars, char_to_byte, split_gpt2};
use crate::hf::bpe::parse_byte_token;
use crate::hf::regex::Regex;
use crate::normalize::{nfc, nfkc};
use crate::pretokenize::meta_run_spans;
use crate::sentencepiece::charsmap::PrecompiledCharsMap;

/// One normaliser step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Normalize {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    /// Put this text in front of non-empty text.
    Prepend(String),
    /// Replace every occurrence of a literal string.
    Replace(String, String),
    /// Replace every match of a regular expression (see [`crate::hf::regex`]) by a literal.
    ReplaceRegex(Regex, String),
    /// Strip whitespace at the left and/or right end.
    Strip(bool, bool),
    /// Remove non-spacing marks (category Mn), as `StripAccents` does after `NFD`.
    StripAccents,
    /// A SentencePiece character map, applied the way `tokenizers` applies it: each extended
    /// grapheme cluster shorter than 6 bytes that starts with a key is replaced whole by the
    /// shortest such key's replacement; other clusters character by character.
    Precompiled(Arc<PrecompiledCharsMap>),
}

impl Normalize {
    pub(crate) fn apply(&self, text: String) -> String {
        match self {
            Normalize::Nfc => nfc(&text),
            Normalize::Nfd => text.nfd().collect(),
            Normalize::Nfkc => nfkc(&text),
            Normalize::Nfkd => text.nfkd().collect(),
            Normalize::Lowercase => text.to_lowercase(),
            Normalize::Prepend(p) => {
                if text.is_empty() {
                    text
                } else {
                    format!("{p}{text}")
                }
            }
            Normalize::Replace(from, to) => {
                if from.is_empty() {
                    text
                } else {
                    text.replace(from.as_str(), to)
                }
            }
            Normalize::ReplaceRegex(regex, to) => {
                let matches = regex.find_iter(&text);
                if matches.is_empty() {
                    return text;
                }
                let mut out = String::with_capacity(text.len());
                let mut pos = 0;
                for (a, b) in matches {
                    out.push_str(&text[pos..a]);
                    out.push_str(to);
                    pos = b;
                }
                out.push_str(&text[pos..]);
                out
            }
            Normalize::Strip(left, right) => {
                let t = if *left { text.trim_start() } else { &text };
                let t = if *right { t.trim_end() } else { t };
                t.to_string()
            }
            Normalize::StripAccents => {
                text.chars().filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark).collect()
            }
            Normalize::Precompiled(map) => {
                let mut out = String::with_capacity(text.len());
                for grapheme in text.graphemes(true) {
                    if grapheme.len() < 6 {
                        if let Some(to) = map.shortest_match(grapheme.as_bytes()) {
                            out.push_str(to);
                            continue;
                        }
                    }
                    for (i, c) in grapheme.char_indices() {
                        let one = &grapheme[i..i + c.len_utf8()];
                        out.push_str(map.shortest_match(one.as_bytes()).unwrap_or(one));
                    }
                }
                out
            }
        }
    }
}

/// How a split keeps the delimiter (`SplitDelimiterBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// When the Metaspace pre-tokenizer adds the replacement in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepend {
    Always,
    First,
    Never,
}

/// One pre-tokenizer step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PreTokenize {
    /// GPT-2 byte level: optional prefix space, the GPT-2 split, bytes shown as characters.
    ByteLevel { add_prefix_space: bool, use_regex: bool },
    /// Spaces become `replacement`, which may be put in front, and may split.
    Metaspace { replacement: char, prepend: Prepend, split: bool },
    /// Split on a literal string.
    SplitString { pattern: String, behavior: Behavior, invert: bool },
    /// Split on the matches of a regular expression (see [`crate::hf::regex`]).
    SplitRegex { regex: Regex, behavior: Behavior, invert: bool },
    /// Split on whitespace (`char::is_whitespace`), dropping it.
    WhitespaceSplit,
    /// Split with the GPT-2 expression.
    SplitGpt2 { behavior: Behavior, invert: bool },
    /// Split with [`crate::pretokenize::META_RUNS_PATTERN`] (our own models' word split, before digits).
    SplitMetaRuns { behavior: Behavior, invert: bool },
    /// Numbers apart, each digit alone when `individual`.
    Digits { individual: bool },
}

/// A piece of pre-tokenised text, with whether it begins the original input (for Metaspace's
/// `first` prepend scheme).
pub(crate) type Piece = (String, bool);

/// Split `s` into delimiter / non-delimiter spans given the delimiter spans `matches`.
fn split_by(s: &str, matches: &[(usize, usize)], behavior: Behavior, at_start: bool) -> Vec<Piece> {
    // Build (start, end, is_match) covering s.
    let mut spans: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0;
    for &(a, b) in matches {
        if a > pos {
            spans.push((pos, a, false));
        }
        if b > a {
            spans.push((a, b, true));
        }
        pos = b;
    }
    if pos < s.len() {
        spans.push((pos, s.len(), false));
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    match behavior {
        Behavior::Removed => out.extend(spans.iter().filter(|x| !x.2).map(|x| (x.0, x.1))),
        Behavior::Isolated => out.extend(spans.iter().map(|x| (x.0, x.1))),
        Behavior::Contiguous => {
            let mut prev_match = false;
            for &(a, b, m) in &spans {
                match out.last_mut() {
                    Some(last) if m && prev_match => last.1 = b,
                    _ => out.push((a, b)),
                }
                prev_match = m;
            }
        }
        Behavior::MergedWithPrevious => {
            let mut prev_plain = false;
            for &(a, b, m) in &spans {
                match out.last_mut() {
                    Some(last) if m && prev_plain => last.1 = b,
                    _ => out.push((a, b)),
                }
                prev_plain = !m;
            }
        }
        Behavior::MergedWithNext => {
            let mut pending: Option<usize> = None;
            for &(a, b, m) in &spans {
                if m {
                    if let Some(start) = pending.take() {
                        out.push((start, a));
                    }
                    pending = Some(a);
                } else {
                    out.push((pending.take().unwrap_or(a), b));
                }
            }
            if let Some(start) = pending {
                out.push((start, s.len()));
            }
        }
    }
    out.into_iter().map(|(a, b)| (s[a..b].to_string(), at_start && a == 0)).collect()
}

/// Every occurrence of `pattern` in `s`, non-overlapping, left to right.
fn find_all(s: &str, pattern: &str) -> Vec<(usize, usize)> {
    if pattern.is_empty() {
        return Vec::new();
    }
    s.match_indices(pattern).map(|(i, m)| (i, i + m.len())).collect()
}

/// `s` split on the spans `matches` (or, with `invert`, on what lies between them).
fn split_on(
    s: &str,
    matches: Vec<(usize, usize)>,
    behavior: Behavior,
    invert: bool,
    at_start: bool,
) -> Vec<Piece> {
    let m = if invert { invert_spans(&matches, s.len()) } else { matches };
    split_by(s, &m, behavior, at_start)
}

/// The complement of sorted, disjoint spans within `0..len`.
fn invert_spans(spans: &[(usize, usize)], len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(a, b) in spans {
        if a > pos {
            out.push((pos, a));
        }
        pos = b;
    }
    if pos < len {
        out.push((pos, len));
    }
    out
}

impl PreTokenize {
    pub(crate) fn apply(&self, pieces: Vec<Piece>, byte_table: &[char; 256]) -> Vec<Piece> {
        let mut out = Vec::with_capacity(pieces.len());
        for (p, first) in pieces {
            match self {
                PreTokenize::ByteLevel { add_prefix_space, use_regex } => {
                    let p = if *add_prefix_space && !p.starts_with(' ') { format!(" {p}") } else { p };
                    let parts: Vec<&str> = if *use_regex { split_gpt2(&p) } else { vec![p.as_str()] };
                    for (k, part) in parts.into_iter().enumerate() {
                        let mut mapped = String::with_capacity(part.len() * 2);
                        bytes_to_chars(part.as_bytes(), byte_table, &mut mapped);
                        out.push((mapped, first && k == 0));
                    }
                }
                PreTokenize::Metaspace { replacement, prepend, split } => {
                    let mut r = [0u8; 4];
                    let rep: &str = replacement.encode_utf8(&mut r);
                    let mut s = p.replace(' ', rep);
                    let add = match prepend {
                        PrependScheme::Always => true,
                        PrependScheme::First => first,
                        PrependScheme::Never => false,
                    };
                    // `tokenizers` prepends nothing to an empty string.
                    if add && !s.is_empty() && !s.starts_with(*replacement) {
                        s.insert(0, *replacement);
                    }
                    if *split {
                        let m = find_all(&s, rep);
                        out.extend(split_by(&s, &m, Behavior::MergedWithNext, first));
                    } else {
                        out.push((s, first));
                    }
                }
                PreTokenize::SplitString { pattern, behavior, invert } => {
                    out.extend(split_on(&p, find_all(&p, pattern), *behavior, *invert, first));
                }
                PreTokenize::SplitRegex { regex, behavior, invert } => {
                    out.extend(split_on(&p, regex.find_iter(&p), *behavior, *invert, first));
                }
                PreTokenize::WhitespaceSplit => {
                    let m: Vec<(usize, usize)> = p
                        .char_indices()
                        .filter(|(_, c)| c.is_whitespace())
                        .map(|(i, c)| (i, i + c.len_utf8()))
                        .collect();
                    out.extend(split_by(&p, &m, Behavior::Removed, first));
                }
                PreTokenize::SplitGpt2 { behavior, invert } => {
                    let mut m = Vec::new();
                    let mut pos = 0;
                    for part in split_gpt2(&p) {
                        m.push((pos, pos + part.len()));
                        pos += part.len();
                    }
                    out.extend(split_on(&p, m, *behavior, *invert, first));
                }
                PreTokenize::SplitMetaRuns { behavior, invert } => {
                    out.extend(split_on(&p, meta_run_spans(&p), *behavior, *invert, first));
                }
                PreTokenize::Digits { individual } => {
                    let mut m: Vec<(usize, usize)> = Vec::new();
                    for (i, c) in p.char_indices() {
                        if c.is_numeric() {
                            let end = i + c.len_utf8();
                            match m.last_mut() {
                                Some(last) if !individual && last.1 == i => last.1 = end,
                                _ => m.push((i, end)),
                            }
                        }
                    }
                    out.extend(split_by(&p, &m, Behavior::Isolated, first));
                }
            }
        }
        out.retain(|(s, _)| !s.is_empty());
        out
    }
}

use Prepend as PrependScheme;

/// One decoder step, applied to the list of token strings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decode {
    /// Byte characters back to bytes, joined, read as UTF-8 (lossy).
    ByteLevel,
    /// `replacement` back to a space; in the first token it vanishes unless the scheme is
    /// `never`.
    Metaspace { replacement: char, prepend: Prepend },
    /// Replace a literal string in each token.
    Replace(String, String),
    /// Runs of `<0xNN>` tokens back to text (U+FFFD per byte when not UTF-8).
    ByteFallback,
    /// Join everything into one string.
    Fuse,
    /// Remove up to `start` leading and `stop` trailing `content` characters from each token.
    Strip { content: char, start: usize, stop: usize },
}

impl Decode {
    pub(crate) fn apply(&self, tokens: Vec<String>) -> Vec<String> {
        match self {
            Decode::ByteLevel => {
                let mut bytes = Vec::new();
                for t in &tokens {
                    for c in t.chars() {
                        match char_to_byte(c) {
                            Some(b) => bytes.push(b),
                            None => bytes.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                        }
                    }
                }
                vec![String::from_utf8_lossy(&bytes).into_owned()]
            }
            Decode::Metaspace { replacement, prepend } => tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    // As in `tokenizers`: in the first token every replacement vanishes.
                    let drop = i == 0 && *prepend != Prepend::Never;
                    t.chars()
                        .filter_map(|c| if c == *replacement { (!drop).then_some(' ') } else { Some(c) })
                        .collect()
                })
                .collect(),
            Decode::Replace(from, to) => {
                if from.is_empty() {
                    tokens
                } else {
                    tokens.into_iter().map(|t| t.replace(from.as_str(), to)).collect()
                }
            }
            Decode::ByteFallback => {
                let mut out = Vec::with_capacity(tokens.len());
                let mut pending: Vec<u8> = Vec::new();
                let flush = |pending: &mut Vec<u8>, out: &mut Vec<String>| {
                    if pending.is_empty() {
                        return;
                    }
                    match String::from_utf8(std::mem::take(pending)) {
                        Ok(s) => out.push(s),
                        Err(e) => out.extend(std::iter::repeat_n("\u{FFFD}".to_string(), e.as_bytes().len())),
                    }
                };
                for t in tokens {
                    match parse_byte_token(&t) {
                        Some(b) => pending.push(b),
                        None => {
                            flush(&mut pending, &mut out);
                            out.push(t);
                        }
                    }
                }
                flush(&mut pending, &mut out);
                out
            }
            Decode::Fuse => vec![tokens.concat()],
            Decode::Strip { content, start, stop } => tokens
                .into_iter()
                .map(|t| {
                    let chars: Vec<char> = t.chars().collect();
                    let lead = chars.iter().take(*start).take_while(|&&c| c == *content).count();
                    let trail =
                        chars[lead..].iter().rev().take(*stop).take_while(|&&c| c == *content).count();
                    chars[lead..chars.len() - trail].iter().collect()
                })
                .collect(),
        }
    }
}
