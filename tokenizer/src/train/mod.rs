//! BPE training over texts grouped per language.
//!
//! 1. Words are counted per language (in parallel with rayon) after normalisation and
//!    pre-tokenisation.
//! 2. Language balancing: each language's word counts are scaled so that its share of the total
//!    text (in UTF-8 bytes) is proportional to `bytes^alpha` (temperature sampling; `alpha` = 0.5
//!    by default), which gives low-resource languages more merges than their raw size would.
//! 3. Character coverage: characters are ranked by weighted frequency and the rarest ones holding
//!    the last `1 - character_coverage` of the character mass get no token (they fall back to
//!    bytes). The covered characters form the initial alphabet.
//! 4. Merges: the most frequent adjacent pair is merged repeatedly, with incremental pair-count
//!    updates, an index from each pair to the positions where it occurs, and a max-heap of
//!    `(count, pair)` with lazy invalidation. Ties are broken by the smaller pair ids, so training
//!    is deterministic for a given input and configuration.
//!
//! The steps live in private submodules: `count` (words per language, in a byte arena with a
//! hash index), `prepare` (balancing, the alphabet, the words as cells of a flat symbol buffer,
//! `symbols`), `merges` (the merge loop, over the pair table of `pairs`).
//!
//! Training stops when the vocabulary (specials + 256 bytes + alphabet + merge results) reaches
//! the requested size, or earlier if no pair is left to merge.

mod count;
mod merges;
mod pairs;
mod prepare;
mod symbols;

use std::time::Instant;

use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use crate::model::{BpeModel, DEFAULT_SPECIALS, NUM_BYTE_TOKENS};
use crate::normalize::{Normalizer, NormalizerKind};

use count::{count_words, WordCounts};
use merges::learn_merges;
use prepare::{prepare, Prepared};

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
    /// Language-balancing exponent: each language's share ∝ size^alpha (default 0.5; 1.0 keeps
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
            alpha: 0.5,
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
    let per_lang: Vec<(String, WordCounts)> =
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
    let per_lang: Vec<(String, WordCounts)> = corpora
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
    per_lang: Vec<(String, WordCounts)>,
    texts: usize,
    specials: Vec<String>,
    normalizer: Normalizer,
    config: &TrainConfig,
    start: Instant,
) -> Result<(BpeModel, TrainStats)> {
    let count_secs = start.elapsed().as_secs_f64();
    let prepare_start = Instant::now();
    let minimum = specials.len() + NUM_BYTE_TOKENS;
    let room = config.vocab_size - minimum;
    let Prepared { languages, distinct_chars, alphabet, words } = prepare(per_lang, texts, config, room)?;
    let first_normal = minimum as u32;
    let mut pieces: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    let mut piece_index: FxHashMap<String, u32> =
        pieces.iter().enumerate().map(|(i, p)| (p.clone(), first_normal + i as u32)).collect();
    let prepare_secs = prepare_start.elapsed().as_secs_f64();

    let merge_start = Instant::now();
    let merges =
        learn_merges(words, first_normal, &mut pieces, &mut piece_index, room, config.max_piece_chars);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<LanguageCorpus> {
        vec![
            LanguageCorpus::new("en", vec!["the cat sat on the mat 2024".into(); 20]),
            LanguageCorpus::new("de", vec!["die Katze sass auf der Matte".into(); 5]),
        ]
    }

    type Pair = (u32, u32);

    /// The words in the merge loop's input form.
    fn buffer(symbols: &[Vec<u32>], counts: &[u64]) -> symbols::SymbolBuffer {
        let mut b = symbols::SymbolBuffer::default();
        for (s, &c) in symbols.iter().zip(counts) {
            b.push_word(s, c);
        }
        b
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
            let fast = learn_merges(buffer(&symbols, &counts), 0, &mut p1, &mut idx, 4 + extra, max_chars);
            let mut p2 = alphabet;
            let slow = naive_merges(symbols, &counts, &mut p2, 4 + extra, max_chars);
            proptest::prop_assert_eq!(fast, slow);
            proptest::prop_assert_eq!(p1, p2);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Two letters and long words: many overlapping runs (`a a a a`), repeated merge
        /// results and long spans.
        #[test]
        fn incremental_matches_naive_on_runs(
            words in proptest::collection::vec(
                (proptest::collection::vec(0u32..2, 2..40), 1u64..4), 1..12),
            extra in 1usize..60,
            max_chars in 1usize..12,
        ) {
            let alphabet: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
            let (symbols, counts): (Vec<Vec<u32>>, Vec<u64>) = words.into_iter().unzip();
            let mut p1 = alphabet.clone();
            let mut idx: FxHashMap<String, u32> =
                p1.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
            let fast = learn_merges(buffer(&symbols, &counts), 0, &mut p1, &mut idx, 2 + extra, max_chars);
            let mut p2 = alphabet;
            let slow = naive_merges(symbols, &counts, &mut p2, 2 + extra, max_chars);
            proptest::prop_assert_eq!(fast, slow);
            proptest::prop_assert_eq!(p1, p2);
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
