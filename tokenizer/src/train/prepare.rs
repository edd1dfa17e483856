//! From per-language word counts to the merge loop's input: language balancing, the alphabet
//! (character coverage) and the words as symbol sequences.
//!
//! A word found in several languages stays one word per language (with that language's
//! weighted count): pair counts are sums over words, so this gives the same merges as summing
//! the counts first, without a map over all the words.

use rayon::prelude::*;

use crate::error::{Result, TokenizerError};

use super::count::WordCounts;
use super::symbols::SymbolBuffer;
use super::{LanguageStats, TrainConfig};

/// Fixed-point scale of the balanced word weights (so that down-weighted words keep resolution).
const WEIGHT_SCALE: f64 = 16.0;

/// No symbol (a character outside the alphabet).
const UNCOVERED: u32 = u32::MAX;

/// What [`prepare`] makes.
pub(crate) struct Prepared {
    /// Per-language sizes and weights (languages without words left out).
    pub(crate) languages: Vec<LanguageStats>,
    /// Number of distinct characters seen.
    pub(crate) distinct_chars: usize,
    /// The characters given a token, most frequent first (symbol `i` is `alphabet[i]`).
    pub(crate) alphabet: Vec<char>,
    /// The words, split at uncovered characters, as symbol sequences of at least two symbols.
    pub(crate) words: SymbolBuffer,
}

/// Balance the languages, choose the alphabet (at most `room` characters) and build the words
/// (`texts`: how many texts the counts came from, for the error message).
pub(crate) fn prepare(
    per_lang: Vec<(String, WordCounts)>,
    texts: usize,
    config: &TrainConfig,
    room: usize,
) -> Result<Prepared> {
    // A language's size is its UTF-8 bytes, not its word count: scripts written without spaces
    // (Thai, Chinese, Japanese) have few, long "words" and would otherwise be over-weighted.
    let word_counts: Vec<u64> = per_lang.iter().map(|(_, m)| m.lengths().map(|(_, c)| c).sum()).collect();
    let sizes: Vec<u64> =
        per_lang.iter().map(|(_, m)| m.lengths().map(|(len, c)| c * len as u64).sum()).collect();
    let total: u64 = sizes.iter().sum();
    if total == 0 {
        return Err(TokenizerError::EmptyCorpus(format!(
            "{} language corpora with {texts} texts yield no words",
            per_lang.len()
        )));
    }

    // Language balancing: each word count is scaled by its language's weight.
    let powered: f64 = sizes.iter().filter(|&&n| n > 0).map(|&n| (n as f64).powf(config.alpha)).sum();
    let mut languages = Vec::new();
    let mut weighted = Vec::new();
    for (((lang, mut counts), &n), &words) in per_lang.into_iter().zip(&sizes).zip(&word_counts) {
        if n == 0 {
            continue;
        }
        let share = (n as f64).powf(config.alpha) / powered;
        let weight = share * total as f64 / n as f64;
        languages.push(LanguageStats { lang, words, bytes: n, weight, share });
        counts.map_counts(|c| ((c as f64) * weight * WEIGHT_SCALE).round().max(1.0) as u64);
        weighted.push(counts);
    }

    let (alphabet, distinct_chars) = choose_alphabet(&weighted, config.character_coverage, room);
    let words = build_words(&weighted, &alphabet);
    words.check_size()?;
    Ok(Prepared { languages, distinct_chars, alphabet, words })
}

/// Character coverage: characters ranked by weighted frequency (then by code point); the
/// rarest ones holding the last `1 - coverage` of the mass get no token. Returns the alphabet
/// (at most `room` characters) and the number of distinct characters.
fn choose_alphabet(weighted: &[WordCounts], coverage: f64, room: usize) -> (Vec<char>, usize) {
    // Weighted character counts, indexed by code point, per language in parallel.
    let mass: Vec<u64> = weighted
        .par_iter()
        .map(|counts| {
            let mut mass: Vec<u64> = Vec::new();
            for (w, c) in counts.iter() {
                for ch in w.chars() {
                    let i = ch as usize;
                    if i >= mass.len() {
                        mass.resize((i + 1).next_power_of_two(), 0);
                    }
                    mass[i] += c;
                }
            }
            mass
        })
        .reduce(Vec::new, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (x, y) in big.iter_mut().zip(small) {
                *x += y;
            }
            big
        });
    let mut chars: Vec<(char, u64)> = mass
        .iter()
        .enumerate()
        .filter(|&(_, &m)| m > 0)
        .filter_map(|(i, &m)| char::from_u32(i as u32).map(|ch| (ch, m)))
        .collect();
    chars.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u128 = chars.iter().map(|&(_, c)| c as u128).sum();
    let limit = coverage * total as f64;
    let mut cumulative: u128 = 0;
    let mut alphabet: Vec<char> = Vec::new();
    for &(ch, c) in &chars {
        if (cumulative as f64) >= limit || alphabet.len() >= room {
            break;
        }
        alphabet.push(ch);
        cumulative += c as u128;
    }
    (alphabet, chars.len())
}

/// The words as symbol sequences, split at uncovered characters (which become bytes and never
/// merge). Sequences shorter than 2 have no pairs and are dropped. The words keep the order of
/// the counts (the merges do not depend on it; sorting them for locality was measured to gain
/// nothing in the merge loop, which prefetches).
fn build_words(weighted: &[WordCounts], alphabet: &[char]) -> SymbolBuffer {
    let top = alphabet.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut ids = vec![UNCOVERED; top];
    for (i, &ch) in alphabet.iter().enumerate() {
        ids[ch as usize] = i as u32;
    }
    let all: Vec<(&str, u64)> = weighted.iter().flat_map(|c| c.iter()).collect();
    // Two halves (one per core) built side by side, then joined. At most one cell per byte
    // and one per word: the first half reserves room for all (address space only until used),
    // so the second is appended without copying the first.
    let half = all.len().div_ceil(2).max(1);
    let mut parts: Vec<SymbolBuffer> = all
        .par_chunks(half)
        .enumerate()
        .map(|(k, part)| {
            let words = if k == 0 { &all[..] } else { part };
            let cells = words.iter().map(|(w, _)| w.len() + 1).sum::<usize>() + 1;
            let mut out = SymbolBuffer::with_capacity(cells);
            let mut seg: Vec<u32> = Vec::new();
            for &(w, c) in part {
                seg.clear();
                for ch in w.chars() {
                    match ids.get(ch as usize) {
                        Some(&id) if id != UNCOVERED => seg.push(id),
                        _ => {
                            if seg.len() >= 2 {
                                out.push_word(&seg, c);
                            }
                            seg.clear();
                        }
                    }
                }
                if seg.len() >= 2 {
                    out.push_word(&seg, c);
                }
            }
            out
        })
        .collect();
    let mut out = if parts.is_empty() { SymbolBuffer::default() } else { parts.remove(0) };
    for part in parts {
        out.append(part);
    }
    out
}
