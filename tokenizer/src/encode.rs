//! Encoding and decoding with a trained [`BpeModel`].
//!
//! Each pre-tokenised word is first turned into symbols (the alphabet piece of each character,
//! or the byte tokens of its UTF-8 when the alphabet lacks it), then the lowest-rank merge among
//! adjacent pairs is applied repeatedly (leftmost first on equal rank) until no merge applies.
//! This uses a per-word linked list and a min-heap of candidate pairs with lazy invalidation, so
//! long words (e.g. whole lines of CJK or Thai text) stay O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Result, TokenizerError};
use crate::hash::{FxHashMap, FxHasher};
use crate::model::{BpeModel, PieceKind, DEFAULT_SPECIALS};
use crate::pretokenize::pretokenize;

const CACHE_SHARDS: usize = 16;
/// Default number of cached words (over all shards).
pub const DEFAULT_CACHE_CAPACITY: usize = 1 << 16;
/// Words longer than this (in bytes) are never cached.
const MAX_CACHED_WORD_BYTES: usize = 64;

/// A bounded, sharded word → ids cache shared by all threads. A shard that fills up is cleared.
#[derive(Debug)]
struct WordCache {
    shards: Vec<Mutex<FxHashMap<String, Vec<u32>>>>,
    per_shard: usize,
}

impl WordCache {
    fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(CACHE_SHARDS);
        WordCache { shards: (0..CACHE_SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect(), per_shard }
    }

    fn shard(&self, word: &str) -> &Mutex<FxHashMap<String, Vec<u32>>> {
        let h = BuildHasherDefault::<FxHasher>::default().hash_one(word);
        &self.shards[(h >> 59) as usize % CACHE_SHARDS]
    }

    fn get(&self, word: &str, out: &mut Vec<u32>) -> bool {
        if self.per_shard == 0 {
            return false;
        }
        let Ok(map) = self.shard(word).lock() else { return false };
        match map.get(word) {
            Some(ids) => {
                out.extend_from_slice(ids);
                true
            }
            None => false,
        }
    }

    fn put(&self, word: &str, ids: &[u32]) {
        if self.per_shard == 0 {
            return;
        }
        if let Ok(mut map) = self.shard(word).lock() {
            if map.len() >= self.per_shard {
                map.clear();
            }
            map.insert(word.to_string(), ids.to_vec());
        }
    }

    fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut m) = s.lock() {
                m.clear();
            }
        }
    }
}

/// A ready-to-use tokenizer: a [`BpeModel`] plus a cache of frequent words.
#[derive(Debug)]
pub struct Tokenizer {
    model: BpeModel,
    cache: WordCache,
}

impl Clone for Tokenizer {
    fn clone(&self) -> Self {
        Tokenizer { model: self.model.clone(), cache: WordCache::new(self.cache.per_shard * CACHE_SHARDS) }
    }
}

impl From<BpeModel> for Tokenizer {
    fn from(model: BpeModel) -> Self {
        Tokenizer::new(model)
    }
}

impl Tokenizer {
    /// A tokenizer over `model` with the default word-cache capacity.
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
    let n = ids.len();
    if n < 2 {
        out.extend_from_slice(&ids);
        return;
    }
    if n <= 8 {
        // Short words: the simple loop is faster than building the heap.
        merge_by_scanning(model, &mut ids);
        out.extend_from_slice(&ids);
        return;
    }
    // Long words: doubly linked list + min-heap of (rank, position) with lazy invalidation.
    const NONE: usize = usize::MAX;
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NONE;
    let mut next: Vec<usize> = (1..=n).collect();
    next[n - 1] = NONE;
    let mut alive = vec![true; n];
    let mut heap: BinaryHeap<Reverse<(u32, usize)>> = BinaryHeap::new();
    for i in 0..n - 1 {
        if let Some((rank, _)) = model.merge(ids[i], ids[i + 1]) {
            heap.push(Reverse((rank, i)));
        }
    }
    while let Some(Reverse((rank, i))) = heap.pop() {
        if !alive[i] || next[i] == NONE {
            continue;
        }
        let j = next[i];
        let Some((r, result)) = model.merge(ids[i], ids[j]) else { continue };
        if r != rank {
            continue;
        }
        ids[i] = result;
        alive[j] = false;
        next[i] = next[j];
        if next[j] != NONE {
            prev[next[j]] = i;
        }
        if prev[i] != NONE {
            let p = prev[i];
            if let Some((r, _)) = model.merge(ids[p], ids[i]) {
                heap.push(Reverse((r, p)));
            }
        }
        if next[i] != NONE {
            if let Some((r, _)) = model.merge(ids[i], ids[next[i]]) {
                heap.push(Reverse((r, i)));
            }
        }
    }
    let mut i = 0;
    while i != NONE {
        out.push(ids[i]);
        i = next[i];
    }
}

/// Reference implementation of the merge loop (O(n²)), used by tests to check the fast path.
/// Merges `ids` in place by rescanning: find the lowest-rank adjacent pair (leftmost on ties),
/// merge it, repeat. Quadratic, so used for short words and as the tests' reference.
fn merge_by_scanning(model: &BpeModel, ids: &mut Vec<u32>) {
    loop {
        let mut best: Option<(u32, usize, u32)> = None;
        for i in 0..ids.len().saturating_sub(1) {
            if let Some((rank, result)) = model.merge(ids[i], ids[i + 1]) {
                match best {
                    Some((r, _, _)) if r <= rank => {}
                    _ => best = Some((rank, i, result)),
                }
            }
        }
        match best {
            Some((_, i, result)) => {
                ids[i] = result;
                ids.remove(i + 1);
            }
            None => return,
        }
    }
}

/// The whole word merged by [`merge_by_scanning`], whatever its length (tests compare the heap
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
        // Lone continuation byte: lossy, no panic.
        assert_eq!(t.decode(&[t.model().byte_id(0x80)]).unwrap(), "\u{FFFD}");
    }
}
