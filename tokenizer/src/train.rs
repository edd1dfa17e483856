//! BPE training over texts grouped per language.
//!
//! 1. Words are counted per language (in parallel with rayon) after normalisation and
//!    pre-tokenisation.
//! 2. Language balancing: each language's word counts are scaled so that its share of the total
//!    text (in UTF-8 bytes) is proportional to `bytes^alpha` (temperature sampling; `alpha` = 0.3
//!    by default), which
//!    gives low-resource languages more merges than their raw size would.
//! 3. Character coverage: characters are ranked by weighted frequency and the rarest ones holding
//!    the last `1 - character_coverage` of the character mass get no token (they fall back to
//!    bytes). The covered characters form the initial alphabet.
//! 4. Merges: the most frequent adjacent pair is merged repeatedly, with incremental pair-count
//!    updates, an index from each pair to the words that contain it, and a max-heap of
//!    `(count, pair)` with lazy invalidation. Ties are broken by the smaller pair ids, so training
//!    is deterministic for a given input and configuration.
//!
//! Training stops when the vocabulary (specials + 256 bytes + alphabet + merge results) reaches
//! the requested size, or earlier if no pair is left to merge.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use crate::model::{BpeModel, DEFAULT_SPECIALS, NUM_BYTE_TOKENS};
use crate::normalize::{Normalizer, NormalizerKind};
use crate::pretokenize::pretokenize;

/// The texts of one language.
#[derive(Debug, Clone, Default)]
pub struct LanguageCorpus {
    /// Language code (e.g. `"en"`); only used for reporting.
    pub lang: String,
    /// The texts (documents or lines).
    pub texts: Vec<String>,
}

impl LanguageCorpus {
    /// A language corpus from a code and texts.
    pub fn new(lang: impl Into<String>, texts: Vec<String>) -> Self {
        LanguageCorpus { lang: lang.into(), texts }
    }
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Requested total vocabulary size (specials + 256 bytes + alphabet + merges).
    pub vocab_size: usize,
    /// Unicode normal form (default NFKC).
    pub normalizer: NormalizerKind,
    /// Whether a `▁` is put in front of each text (default true).
    pub add_dummy_prefix: bool,
    /// Extra special tokens, given ids right after `<unk>`, `<s>`, `</s>`, `<pad>`.
    pub user_specials: Vec<String>,
    /// Language-balancing exponent: each language's share ∝ size^alpha (default 0.3; 1.0 keeps
    /// the natural distribution, 0.0 makes all languages equal).
    pub alpha: f64,
    /// Fraction of the (weighted) character mass whose characters get their own token
    /// (default 0.9995).
    pub character_coverage: f64,
    /// Longest piece (in characters) a merge may create (default 16, as in SentencePiece);
    /// keeps scripts without spaces (Thai, Japanese, Chinese) from learning whole phrases.
    pub max_piece_chars: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            vocab_size: 32_000,
            normalizer: NormalizerKind::Nfkc,
            add_dummy_prefix: true,
            user_specials: Vec::new(),
            alpha: 0.3,
            character_coverage: 0.9995,
            max_piece_chars: 16,
        }
    }
}

/// Per-language numbers from a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageStats {
    /// Language code.
    pub lang: String,
    /// Number of words (pre-tokenised) in the language's texts.
    pub words: u64,
    /// UTF-8 bytes of the normalised words: the size that balancing uses.
    pub bytes: u64,
    /// The factor its word counts were scaled by.
    pub weight: f64,
    /// Its share of the balanced total.
    pub share: f64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    /// Per-language sizes and weights, in input order (languages without words are left out).
    pub languages: Vec<LanguageStats>,
    /// Number of distinct characters seen.
    pub distinct_chars: usize,
    /// Number of characters given a token (the alphabet).
    pub alphabet_size: usize,
    /// Number of merges learnt.
    pub merges: usize,
    /// Final vocabulary size.
    pub vocab_size: usize,
    /// Wall seconds spent normalising and counting words.
    pub count_secs: f64,
    /// Wall seconds spent balancing languages, choosing the alphabet and building sequences.
    pub prepare_secs: f64,
    /// Wall seconds spent learning merges.
    pub merge_secs: f64,
}

/// Train a BPE model (see the module docs).
pub fn train(corpora: &[LanguageCorpus], config: &TrainConfig) -> Result<BpeModel> {
    train_with_stats(corpora, config).map(|(m, _)| m)
}

/// Fixed-point scale of the balanced word weights (so that down-weighted words keep resolution).
const WEIGHT_SCALE: f64 = 16.0;

type Pair = (u32, u32);

/// The words (indices) a pair occurs in, in increasing order with possible repeats. Most pairs
/// occur in one word only, which is kept inline rather than in a heap-allocated list.
enum Where {
    Empty,
    One(u32),
    Many(Vec<u32>),
}

impl Where {
    /// Record that the pair occurs in word `idx` (indices arrive in non-decreasing order).
    fn push(&mut self, idx: u32) {
        match self {
            Where::Empty => *self = Where::One(idx),
            Where::One(x) if *x == idx => {}
            Where::One(x) => *self = Where::Many(vec![*x, idx]),
            Where::Many(v) => {
                if v.last() != Some(&idx) {
                    v.push(idx);
                }
            }
        }
    }

    fn into_vec(self) -> Vec<u32> {
        match self {
            Where::Empty => Vec::new(),
            Where::One(x) => vec![x],
            Where::Many(v) => v,
        }
    }
}

/// A pair's weighted count and the words it occurs in (one map for both saves memory).
struct PairStat {
    count: i64,
    words: Where,
}

impl PairStat {
    const EMPTY: fn() -> PairStat = || PairStat { count: 0, words: Where::Empty };
}

/// Index of the first `(a, b)` in `word`. Scans 16 symbols at a time for `a` without an early
/// exit (which the compiler vectorises), then looks closer only in chunks that have one: long
/// words (CJK and Thai runs) are scanned for every merge of a pair they contain.
fn find_pair(word: &[u32], a: u32, b: u32) -> Option<usize> {
    const CHUNK: usize = 16;
    let heads = word.get(..word.len().checked_sub(1)?)?;
    let mut base = 0;
    for chunk in heads.chunks(CHUNK) {
        if chunk.iter().fold(false, |m, &x| m | (x == a)) {
            for (k, &x) in chunk.iter().enumerate() {
                if x == a && word[base + k + 1] == b {
                    return Some(base + k);
                }
            }
        }
        base += chunk.len();
    }
    None
}

/// Count the words of some texts in parallel.
fn count_words(normalizer: &Normalizer, texts: &[String]) -> FxHashMap<String, u64> {
    texts
        .par_iter()
        .fold(FxHashMap::default, |mut counts: FxHashMap<String, u64>, text| {
            let normalized = normalizer.normalize(text);
            for word in pretokenize(&normalized) {
                match counts.get_mut(word) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(word.to_string(), 1);
                    }
                }
            }
            counts
        })
        .reduce(FxHashMap::default, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (w, c) in small {
                *big.entry(w).or_insert(0) += c;
            }
            big
        })
}

/// Check a configuration; returns the special tokens.
fn check_config(config: &TrainConfig) -> Result<Vec<String>> {
    let specials: Vec<String> =
        DEFAULT_SPECIALS.iter().map(|s| s.to_string()).chain(config.user_specials.iter().cloned()).collect();
    let minimum = specials.len() + NUM_BYTE_TOKENS;
    if config.vocab_size < minimum {
        return Err(TokenizerError::VocabTooSmall {
            requested: config.vocab_size,
            specials: specials.len(),
            minimum,
        });
    }
    if u32::try_from(config.vocab_size).is_err() {
        return Err(TokenizerError::InvalidConfig(format!("vocab size {} exceeds u32", config.vocab_size)));
    }
    if !(config.alpha.is_finite() && config.alpha >= 0.0) {
        return Err(TokenizerError::InvalidConfig(format!(
            "alpha must be finite and >= 0, got {}",
            config.alpha
        )));
    }
    if !(config.character_coverage > 0.0 && config.character_coverage <= 1.0) {
        return Err(TokenizerError::InvalidConfig(format!(
            "character_coverage must be in (0, 1], got {}",
            config.character_coverage
        )));
    }
    Ok(specials)
}

/// Train a BPE model and report what was done.
pub fn train_with_stats(corpora: &[LanguageCorpus], config: &TrainConfig) -> Result<(BpeModel, TrainStats)> {
    let specials = check_config(config)?;
    let normalizer = Normalizer::new(config.normalizer, config.add_dummy_prefix);
    let texts: usize = corpora.iter().map(|c| c.texts.len()).sum();
    let start = Instant::now();
    let per_lang: Vec<(String, FxHashMap<String, u64>)> =
        corpora.iter().map(|c| (c.lang.clone(), count_words(&normalizer, &c.texts))).collect();
    train_counted(per_lang, texts, specials, normalizer, config, start)
}

/// [`train_with_stats`] taking the corpora by value: each language's texts are freed as soon as
/// its words are counted, which lowers peak memory on large corpora. Same result.
pub fn train_owned(corpora: Vec<LanguageCorpus>, config: &TrainConfig) -> Result<(BpeModel, TrainStats)> {
    let specials = check_config(config)?;
    let normalizer = Normalizer::new(config.normalizer, config.add_dummy_prefix);
    let texts: usize = corpora.iter().map(|c| c.texts.len()).sum();
    let start = Instant::now();
    let per_lang: Vec<(String, FxHashMap<String, u64>)> = corpora
        .into_iter()
        .map(|c| {
            let counts = count_words(&normalizer, &c.texts);
            (c.lang, counts)
        })
        .collect();
    train_counted(per_lang, texts, specials, normalizer, config, start)
}

/// Training from per-language word counts (`texts`: how many texts they came from; `start`:
/// when counting began).
fn train_counted(
    per_lang: Vec<(String, FxHashMap<String, u64>)>,
    texts: usize,
    specials: Vec<String>,
    normalizer: Normalizer,
    config: &TrainConfig,
    start: Instant,
) -> Result<(BpeModel, TrainStats)> {
    let count_secs = start.elapsed().as_secs_f64();
    let prepare_start = Instant::now();
    let minimum = specials.len() + NUM_BYTE_TOKENS;
    // 1. Word counts per language (done by the caller).
    // A language's size is its UTF-8 bytes, not its word count: scripts written without spaces
    // (Thai, Chinese, Japanese) have few, long "words" and would otherwise be over-weighted.
    let word_counts: Vec<u64> = per_lang.iter().map(|(_, m)| m.values().sum()).collect();
    let sizes: Vec<u64> =
        per_lang.iter().map(|(_, m)| m.iter().map(|(w, &c)| c * w.len() as u64).sum()).collect();
    let total: u64 = sizes.iter().sum();
    if total == 0 {
        return Err(TokenizerError::EmptyCorpus(format!(
            "{} language corpora with {texts} texts yield no words",
            per_lang.len()
        )));
    }

    // 2. Language balancing.
    let powered: f64 = sizes.iter().filter(|&&n| n > 0).map(|&n| (n as f64).powf(config.alpha)).sum();
    let mut languages = Vec::new();
    let mut global: FxHashMap<String, u64> = FxHashMap::default();
    for (((lang, counts), &n), &words) in per_lang.into_iter().zip(&sizes).zip(&word_counts) {
        if n == 0 {
            continue;
        }
        let share = (n as f64).powf(config.alpha) / powered;
        let weight = share * total as f64 / n as f64;
        languages.push(LanguageStats { lang, words, bytes: n, weight, share });
        for (w, c) in counts {
            let scaled = ((c as f64) * weight * WEIGHT_SCALE).round().max(1.0) as u64;
            *global.entry(w).or_insert(0) += scaled;
        }
    }
    // Sorted for memory locality, not for the result: the merges depend only on pair counts
    // (heap ties are broken by the pair ids), but words that share a prefix share pairs, and
    // keeping them close makes the merge loop's passes over a pair's words much faster.
    let mut words: Vec<(String, u64)> = global.into_iter().collect();
    words.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));

    // 3. Character coverage and alphabet.
    let char_mass: FxHashMap<char, u64> = words
        .par_iter()
        .fold(FxHashMap::default, |mut m: FxHashMap<char, u64>, (w, c)| {
            for ch in w.chars() {
                *m.entry(ch).or_insert(0) += c;
            }
            m
        })
        .reduce(FxHashMap::default, |mut a, b| {
            for (ch, c) in b {
                *a.entry(ch).or_insert(0) += c;
            }
            a
        });
    let mut chars: Vec<(char, u64)> = char_mass.into_iter().collect();
    chars.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let distinct_chars = chars.len();
    let mass: u128 = chars.iter().map(|&(_, c)| c as u128).sum();
    let limit = config.character_coverage * mass as f64;
    let room = config.vocab_size - minimum;
    let mut cumulative: u128 = 0;
    let mut alphabet: Vec<char> = Vec::new();
    for &(ch, c) in &chars {
        if (cumulative as f64) >= limit || alphabet.len() >= room {
            break;
        }
        alphabet.push(ch);
        cumulative += c as u128;
    }
    let first_normal = minimum as u32;
    let mut char_ids: FxHashMap<char, u32> = FxHashMap::default();
    for (i, &ch) in alphabet.iter().enumerate() {
        char_ids.insert(ch, first_normal + i as u32);
    }
    let mut pieces: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    let mut piece_index: FxHashMap<String, u32> =
        pieces.iter().enumerate().map(|(i, p)| (p.clone(), first_normal + i as u32)).collect();

    // Words → symbol sequences, split at uncovered characters (which become bytes and never
    // merge). Sequences shorter than 2 have no pairs and are dropped.
    // Repeated sequences (words that differ only in uncovered characters) are kept apart: that
    // gives the same pair counts, hence the same merges.
    let seqs: Vec<(Vec<u32>, u64)> = words
        .par_iter()
        .flat_map_iter(|(w, c)| {
            let mut out = Vec::new();
            let mut seg: Vec<u32> = Vec::new();
            for ch in w.chars() {
                match char_ids.get(&ch) {
                    Some(&id) => seg.push(id),
                    None => {
                        if seg.len() >= 2 {
                            out.push((std::mem::take(&mut seg), *c));
                        }
                        seg.clear();
                    }
                }
            }
            if seg.len() >= 2 {
                out.push((seg, *c));
            }
            out
        })
        .collect();
    drop(words);
    let (symbols, counts): (Vec<Vec<u32>>, Vec<u64>) = seqs.into_iter().unzip();

    // 4. Merges.
    let prepare_secs = prepare_start.elapsed().as_secs_f64();
    let merge_start = Instant::now();
    let merges = learn_merges(
        symbols,
        &counts,
        first_normal,
        &mut pieces,
        &mut piece_index,
        config.vocab_size - minimum,
        config.max_piece_chars,
    );

    let stats = TrainStats {
        languages,
        distinct_chars,
        alphabet_size: alphabet.len(),
        merges: merges.len(),
        vocab_size: minimum + pieces.len(),
        count_secs,
        prepare_secs,
        merge_secs: merge_start.elapsed().as_secs_f64(),
    };
    let model = BpeModel::new(normalizer, specials, pieces, &merges)?;
    Ok((model, stats))
}

/// Learn merges over symbol sequences (`symbols[i]` occurring `counts[i]` times) until `pieces`
/// (the normal pieces, id = `first_normal + index`) holds `max_pieces` entries or no pair is left;
/// pieces longer than `max_piece_chars` characters are never created.
/// Returns the merges in rank order.
fn learn_merges(
    mut symbols: Vec<Vec<u32>>,
    counts: &[u64],
    first_normal: u32,
    pieces: &mut Vec<String>,
    piece_index: &mut FxHashMap<String, u32>,
    max_pieces: usize,
    max_piece_chars: usize,
) -> Vec<(String, String)> {
    let mut piece_chars: Vec<usize> = pieces.iter().map(|p| p.chars().count()).collect();
    let mut pairs: FxHashMap<Pair, PairStat> = FxHashMap::default();
    for (idx, (seq, &c)) in symbols.iter().zip(counts).enumerate() {
        for w in seq.windows(2) {
            let s = pairs.entry((w[0], w[1])).or_insert_with(PairStat::EMPTY);
            s.count += c as i64;
            s.words.push(idx as u32);
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> =
        pairs.iter().filter(|(_, s)| s.count > 0).map(|(&p, s)| (s.count, Reverse(p))).collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut changes: FxHashMap<Pair, i64> = FxHashMap::default();
    let mut new_where: Vec<(Pair, u32)> = Vec::new();
    while pieces.len() < max_pieces {
        let Some((count, Reverse(pair))) = heap.pop() else { break };
        let current = pairs.get(&pair).map_or(0, |s| s.count);
        if current != count {
            if current > 0 {
                heap.push((current, Reverse(pair)));
            }
            continue;
        }
        if count <= 0 {
            continue;
        }
        let (a, b) = pair;
        let joined_chars =
            piece_chars[(a - first_normal) as usize] + piece_chars[(b - first_normal) as usize];
        if joined_chars > max_piece_chars {
            // Never merged; dropped from the heap (re-pushed, and dropped again, if it grows).
            continue;
        }
        let left = &pieces[(a - first_normal) as usize];
        let right = &pieces[(b - first_normal) as usize];
        let joined = format!("{left}{right}");
        merges.push((left.clone(), right.clone()));
        let c = match piece_index.get(&joined) {
            Some(&id) => id,
            None => {
                let id = first_normal + pieces.len() as u32;
                piece_index.insert(joined.clone(), id);
                pieces.push(joined);
                piece_chars.push(joined_chars);
                id
            }
        };
        let mut idxs = pairs
            .get_mut(&pair)
            .map(|s| std::mem::replace(&mut s.words, Where::Empty).into_vec())
            .unwrap_or_default();
        idxs.sort_unstable();
        idxs.dedup();
        changes.clear();
        new_where.clear();
        for &idx in &idxs {
            let word = &mut symbols[idx as usize];
            let wc = counts[idx as usize] as i64;
            // The list may be stale (the pair can be gone from this word): find the first
            // occurrence, then rewrite the rest in place (write index `w` never passes the read
            // index `r`, so `word[r + 2]` is still the original symbol).
            let Some(first) = find_pair(word, a, b) else { continue };
            let n = word.len();
            let (mut w, mut r) = (first, first);
            while r < n {
                if r + 1 < n && word[r] == a && word[r + 1] == b {
                    if w > 0 {
                        let prev = word[w - 1];
                        *changes.entry((prev, a)).or_insert(0) -= wc;
                        *changes.entry((prev, c)).or_insert(0) += wc;
                        new_where.push(((prev, c), idx));
                    }
                    if r + 2 < n {
                        let next = word[r + 2];
                        *changes.entry((b, next)).or_insert(0) -= wc;
                        *changes.entry((c, next)).or_insert(0) += wc;
                        new_where.push(((c, next), idx));
                    }
                    *changes.entry(pair).or_insert(0) -= wc;
                    word[w] = c;
                    w += 1;
                    r += 2;
                } else {
                    word[w] = word[r];
                    w += 1;
                    r += 1;
                }
            }
            word.truncate(w);
        }
        for (&p, &d) in &changes {
            if d == 0 {
                continue;
            }
            let e = pairs.entry(p).or_insert_with(PairStat::EMPTY);
            e.count += d;
            let now = e.count;
            if now == 0 && p != pair {
                // Counts are exact sums of positive weights: 0 means the pair is gone from every
                // word, so its (stale) word list can go too.
                pairs.remove(&p);
            } else if d > 0 && p != pair {
                heap.push((now, Reverse(p)));
            }
        }
        pairs.remove(&pair);
        for &(p, idx) in &new_where {
            pairs.entry(p).or_insert_with(PairStat::EMPTY).words.push(idx);
        }
        // Stale heap entries (lazy deletion) pile up; rebuild from the live counts when they
        // dominate. Same result: every live pair is in the heap with its current count.
        if heap.len() > 4 * pairs.len() + (1 << 20) {
            heap = pairs.iter().filter(|(_, s)| s.count > 0).map(|(&p, s)| (s.count, Reverse(p))).collect();
        }
    }

    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<LanguageCorpus> {
        vec![
            LanguageCorpus::new("en", vec!["the cat sat on the mat 2024".into(); 20]),
            LanguageCorpus::new("de", vec!["die Katze sass auf der Matte".into(); 5]),
        ]
    }

    /// Naive BPE: recount every pair each step; same tie-break and merge semantics.
    fn naive_merges(
        mut symbols: Vec<Vec<u32>>,
        counts: &[u64],
        pieces: &mut Vec<String>,
        max: usize,
        max_chars: usize,
    ) -> Vec<(String, String)> {
        let mut index: FxHashMap<String, u32> =
            pieces.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
        let mut merges = Vec::new();
        while pieces.len() < max {
            let mut pc: std::collections::BTreeMap<Pair, u64> = Default::default();
            for (w, &c) in symbols.iter().zip(counts) {
                for p in w.windows(2) {
                    let len = pieces[p[0] as usize].chars().count() + pieces[p[1] as usize].chars().count();
                    if len <= max_chars {
                        *pc.entry((p[0], p[1])).or_insert(0) += c;
                    }
                }
            }
            let Some((&(a, b), _)) = pc.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))) else { break };
            let joined = format!("{}{}", pieces[a as usize], pieces[b as usize]);
            merges.push((pieces[a as usize].clone(), pieces[b as usize].clone()));
            let c = *index.entry(joined.clone()).or_insert_with(|| {
                pieces.push(joined);
                pieces.len() as u32 - 1
            });
            for w in &mut symbols {
                let mut out = Vec::new();
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(c);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                *w = out;
            }
        }
        merges
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn incremental_matches_naive(
            words in proptest::collection::vec(
                (proptest::collection::vec(0u32..4, 2..14), 1u64..6), 1..25),
            extra in 1usize..40,
            max_chars in 2usize..8,
        ) {
            let alphabet: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
            let (symbols, counts): (Vec<Vec<u32>>, Vec<u64>) = words.into_iter().unzip();
            let mut p1 = alphabet.clone();
            let mut idx: FxHashMap<String, u32> =
                p1.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
            let fast = learn_merges(symbols.clone(), &counts, 0, &mut p1, &mut idx, 4 + extra, max_chars);
            let mut p2 = alphabet;
            let slow = naive_merges(symbols, &counts, &mut p2, 4 + extra, max_chars);
            proptest::prop_assert_eq!(fast, slow);
            proptest::prop_assert_eq!(p1, p2);
        }
    }

    #[test]
    fn find_pair_matches_a_plain_scan() {
        let mut x = 7u32;
        for len in 0..80 {
            let word: Vec<u32> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) % 3
                })
                .collect();
            for (a, b) in [(0, 1), (1, 1), (2, 0), (5, 0)] {
                let plain = word.windows(2).position(|p| p[0] == a && p[1] == b);
                assert_eq!(find_pair(&word, a, b), plain, "{word:?} {a} {b}");
            }
        }
    }

    #[test]
    fn owned_training_is_identical() {
        let cfg = TrainConfig { vocab_size: 400, ..Default::default() };
        let (a, sa) = train_with_stats(&corpus(), &cfg).unwrap();
        let (b, sb) = train_owned(corpus(), &cfg).unwrap();
        assert_eq!(a.pieces(), b.pieces());
        assert_eq!(a.merges(), b.merges());
        assert_eq!((sa.merges, sa.alphabet_size), (sb.merges, sb.alphabet_size));
        assert!(sa.merges > 10);
    }

    #[test]
    fn too_small_and_empty() {
        let cfg = TrainConfig { vocab_size: 259, ..Default::default() };
        assert!(matches!(train(&corpus(), &cfg), Err(TokenizerError::VocabTooSmall { minimum: 260, .. })));
        let cfg = TrainConfig { vocab_size: 400, ..Default::default() };
        assert!(matches!(train(&[], &cfg), Err(TokenizerError::EmptyCorpus(_))));
        let empty = vec![LanguageCorpus::new("en", vec![String::new()])];
        assert!(matches!(train(&empty, &cfg), Err(TokenizerError::EmptyCorpus(_))));
        let bad = TrainConfig { character_coverage: 0.0, ..cfg };
        assert!(matches!(train(&corpus(), &bad), Err(TokenizerError::InvalidConfig(_))));
    }

    #[test]
    fn balancing_and_exact_size() {
        let cfg = TrainConfig { vocab_size: 300, character_coverage: 1.0, ..Default::default() };
        let (model, stats) = train_with_stats(&corpus(), &cfg).unwrap();
        assert_eq!(model.vocab_size(), 300);
        assert_eq!(stats.vocab_size, 300);
        let (en, de) = (&stats.languages[0], &stats.languages[1]);
        assert!(en.words > de.words);
        assert!(en.weight < de.weight);
        assert!((en.share + de.share - 1.0).abs() < 1e-9);
    }

    /// Runs of spaces are learnt as whitespace-only pieces; otherwise `▁` only starts a piece.
    #[test]
    fn whitespace_only_pieces() {
        let text = "def f():\n    return 1\n        x = y  # two\n    pass".to_string();
        let corpus = vec![LanguageCorpus::new("code", vec![text.clone(); 30])];
        let cfg = TrainConfig { vocab_size: 400, ..Default::default() };
        let model = train(&corpus, &cfg).unwrap();
        assert!(model.piece_to_id("▁▁▁").is_some(), "{:?}", model.pieces());
        for p in model.pieces() {
            let meta_only = p.chars().all(|c| c == crate::normalize::META);
            assert!(meta_only || !p.chars().skip(1).any(|c| c == crate::normalize::META), "{p:?}");
        }
        let tok = crate::Tokenizer::new(model);
        let ids = tok.encode(&text);
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // Four spaces before `return`: fewer tokens than one per space.
        let four = tok.encode("    return");
        assert!(four.len() < 4, "{four:?}");
    }

    #[test]
    fn runs_out_of_pairs_gracefully() {
        let cfg = TrainConfig { vocab_size: 10_000, ..Default::default() };
        let one = vec![LanguageCorpus::new("en", vec!["ab".into()])];
        let model = train(&one, &cfg).unwrap();
        assert!(model.vocab_size() < 10_000);
        assert!(model.piece_to_id("▁ab").is_some());
    }
}
