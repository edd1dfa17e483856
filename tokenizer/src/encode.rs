//! Encoding and decoding with a trained [`BpeModel`].
//!
//! Each pre-tokenised word is first turned into symbols (the alphabet piece of each character,
//! or the byte tokens of its UTF-8 when the alphabet lacks it), then the lowest-rank merge among
//! adjacent pairs is applied repeatedly (leftmost first on equal rank) until no merge applies.
//! The merge loop itself lives in the private `merge` module (shared with the Hugging Face
//! importer).

use rayon::prelude::*;

use crate::cache::{WordCache, MAX_CACHED_WORD_BYTES};
use crate::error::{Result, TokenizerError};
#[cfg(test)]
use crate::merge::merge_by_scanning;
use crate::merge::merge_word;
use crate::model::{BpeModel, PieceKind, DEFAULT_SPECIALS};
use crate::pretokenize::pretokenize;

/// Default number of cached words (over all shards).
pub const DEFAULT_CACHE_CAPACITY: usize = 1 << 16;

/// A ready-to-use tokenizer: a [`BpeModel`] plus a cache of frequent words.
#[derive(Debug)]
pub struct Tokenizer {
    model: BpeModel,
    cache: WordCache,
}

impl Clone for Tokenizer {
    fn clone(&self) -> Self {
        Tokenizer { model: self.model.clone(), cache: WordCache::new(self.cache.capacity()) }
    }
}

impl From<BpeModel> for Tokenizer {
    fn from(model: BpeModel) -> Self {
        Tokenizer::new(model)
    }
}

impl Tokenizer {
    /// A tokenizer over `model` with the default word-cache capacity
    /// ([`DEFAULT_CACHE_CAPACITY`] words).
    pub fn new(model: BpeModel) -> Self {
        Self::with_cache_capacity(model, DEFAULT_CACHE_CAPACITY)
    }

    /// A tokenizer over `model` caching at most about `capacity` words (0 disables the cache).
    pub fn with_cache_capacity(model: BpeModel, capacity: usize) -> Self {
        Tokenizer { model, cache: WordCache::new(capacity) }
    }

    /// The underlying model.
    pub fn model(&self) -> &BpeModel {
        &self.model
    }

    /// Total number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Empty the word cache.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Encode text into token ids (never fails: unknown characters fall back to byte tokens).
    ///
    /// Special tokens written in the text (`"<s>"`, `"</pad>"`, user-defined ones) are plain
    /// text: they are encoded like any other characters and never give a special id, so text
    /// cannot inject control tokens (SentencePiece does the same). Add them by id, e.g. with
    /// [`Tokenizer::encode_with_special`]. Newlines, tabs and other control characters are
    /// ordinary characters too: they stay inside the word they appear in (only `▁` and digits
    /// split words), and decoding gives them back.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self.model.normalizer().normalize(text);
        let mut out = Vec::with_capacity(normalized.len() / 3 + 1);
        for word in pretokenize(&normalized) {
            self.encode_word(word, &mut out);
        }
        out
    }

    /// Encode text and wrap it with `<s>` / `</s>` when asked (ids of the default specials).
    pub fn encode_with_special(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if bos {
            ids.push(self.model.special_id(DEFAULT_SPECIALS[1]).unwrap_or(1));
        }
        ids.extend(self.encode(text));
        if eos {
            ids.push(self.model.special_id(DEFAULT_SPECIALS[2]).unwrap_or(2));
        }
        ids
    }

    /// Encode many texts in parallel (rayon); the result is in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Encode one pre-tokenised word of normalised text, appending its ids to `out`.
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let cacheable = word.len() <= MAX_CACHED_WORD_BYTES;
        if cacheable && self.cache.get(word, out) {
            return;
        }
        let start = out.len();
        encode_word_uncached(&self.model, word, out);
        if cacheable {
            self.cache.put(word, &out[start..]);
        }
    }

    /// Decode ids back into text: the exact inverse of [`Tokenizer::encode`]. Byte tokens are
    /// gathered into bytes and read as UTF-8 (invalid sequences become U+FFFD), `▁` becomes a
    /// space, and the dummy-prefix space is removed. The default control specials (`<unk>`,
    /// `<s>`, `</s>`, `<pad>`) decode to nothing; user-defined specials decode to their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let kind = self
                .model
                .kind(id)
                .ok_or(TokenizerError::IdOutOfRange { id, vocab_size: self.model.vocab_size() })?;
            match kind {
                PieceKind::Byte(b) => bytes.push(b),
                PieceKind::Normal => bytes.extend_from_slice(self.model.pieces()[id as usize].as_bytes()),
                PieceKind::Special => {
                    let s = &self.model.pieces()[id as usize];
                    if !DEFAULT_SPECIALS.contains(&s.as_str()) {
                        bytes.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        Ok(self.model.normalizer().denormalize(&text))
    }

    /// Decode many id sequences in parallel.
    pub fn decode_batch<S: AsRef<[u32]> + Sync>(&self, batch: &[S]) -> Result<Vec<String>> {
        batch.par_iter().map(|ids| self.decode(ids.as_ref())).collect()
    }

    /// What `decode(encode(text))` returns for this tokenizer's normaliser.
    pub fn roundtrip_text(&self, text: &str) -> String {
        self.model.normalizer().roundtrip(text)
    }

    /// The piece strings of `ids` (out-of-range ids give `None`).
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.model.id_to_piece(id)
    }
}

/// Initial symbols of a word: alphabet ids, or byte tokens for characters outside the alphabet.
fn initial_symbols(model: &BpeModel, word: &str, syms: &mut Vec<u32>) {
    for c in word.chars() {
        match model.char_id(c) {
            Some(id) => syms.push(id),
            None => {
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    syms.push(model.byte_id(b));
                }
            }
        }
    }
}

/// Apply the model's merges to one word by exact merge-rank semantics, appending ids to `out`.
pub(crate) fn encode_word_uncached(model: &BpeModel, word: &str, out: &mut Vec<u32>) {
    let mut ids = Vec::with_capacity(word.len());
    initial_symbols(model, word, &mut ids);
    merge_word(model, &mut ids);
    out.extend_from_slice(&ids);
}

/// The whole word merged by the quadratic reference loop, whatever its length (tests compare the heap
/// encoder against it).
#[cfg(test)]
pub(crate) fn encode_word_reference(model: &BpeModel, word: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    initial_symbols(model, word, &mut ids);
    merge_by_scanning(model, &mut ids);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Normalizer;

    fn model() -> BpeModel {
        let specials = DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect();
        let pieces =
            ["▁", "a", "b", "c", "ab", "aa", "▁a", "aab", "aaaa"].iter().map(|s| s.to_string()).collect();
        let merges: Vec<(String, String)> = [("a", "b"), ("a", "a"), ("▁", "a"), ("a", "ab"), ("aa", "aa")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        BpeModel::new(Normalizer::default(), specials, pieces, &merges).unwrap()
    }

    #[test]
    fn rank_semantics_and_fallback() {
        let t = Tokenizer::new(model());
        let m = t.model();
        let ids = t.encode("aab");
        let pieces: Vec<&str> = ids.iter().map(|&i| m.id_to_piece(i).unwrap()).collect();
        // "▁aab": (a,b) rank 0 first → ▁ a ab; then (▁,a) rank 2 → ▁a ab.
        assert_eq!(pieces, vec!["▁a", "ab"]);
        let ids = t.encode("x");
        assert_eq!(ids, vec![m.char_id('▁').unwrap(), m.byte_id(b'x')]);
        assert_eq!(t.decode(&ids).unwrap(), "x");
    }

    #[test]
    fn fast_path_matches_reference() {
        let m = model();
        for word in
            ["aaaaaaaaaaaaaaaaab", "abababaaaaabbbbaaaacaaaaaaa", "▁aaaaaaaaaa", "ccccccccccaaaaaaaaaab"]
        {
            let mut fast = Vec::new();
            encode_word_uncached(&m, word, &mut fast);
            assert_eq!(fast, encode_word_reference(&m, word), "{word}");
        }
    }

    fn trained() -> &'static BpeModel {
        static M: std::sync::OnceLock<BpeModel> = std::sync::OnceLock::new();
        M.get_or_init(|| {
            let texts = vec!["abracadabra abba baba cabbage aaaa bbbb abcabcabc dabad".to_string(); 10];
            let corpora = [crate::train::LanguageCorpus::new("xx", texts)];
            let cfg = crate::train::TrainConfig { vocab_size: 330, ..Default::default() };
            crate::train::train(&corpora, &cfg).unwrap()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn heap_path_matches_reference_on_trained_model(
            chars in proptest::collection::vec(proptest::sample::select(vec!['a', 'b', 'c', 'd', 'r', 'e', 'g', 'z', '▁']), 0..80)
        ) {
            let m = trained();
            let word: String = chars.into_iter().collect();
            let mut fast = Vec::new();
            encode_word_uncached(m, &word, &mut fast);
            proptest::prop_assert_eq!(fast, encode_word_reference(m, &word));
        }
    }

    #[test]
    fn decode_errors_and_specials() {
        let t = Tokenizer::new(model());
        assert!(matches!(t.decode(&[999_999]), Err(TokenizerError::IdOutOfRange { id: 999_999, .. })));
        assert_eq!(t.decode(&[1, 2, 3, 0]).unwrap(), "");
        assert_eq!(t.encode_with_special("a", true, true).first(), Some(&1));
        // Special tokens written in the text are plain text.
        let ids = t.encode("<s></s><unk><pad>");
        assert!(ids.iter().all(|&i| i > 3), "{ids:?}");
        assert_eq!(t.decode(&ids).unwrap(), "<s></s><unk><pad>");
        // Lone continuation byte: lossy, no panic.
        assert_eq!(t.decode(&[t.model().byte_id(0x80)]).unwrap(), "\u{FFFD}");
    }
}
