//! Counting the words of a language: normalise each text, pre-tokenise it, count the words.
//!
//! A [`WordCounts`] keeps its words back to back in one byte buffer (no allocation per word)
//! and finds them through a map keyed by each word's 64-bit hash, computed once: growing the
//! map and merging two counters never hash a word again. Words whose hashes collide are chained,
//! so counting stays exact.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use crate::normalize::Normalizer;
use crate::pretokenize::for_each_word;

/// A hasher for keys that already are good 64-bit hashes.
#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// No entry (end of a collision chain).
const NONE: u32 = u32::MAX;

/// The 64-bit hash of a word: 8 bytes at a time, multiply and fold, then a full avalanche so
/// that both the low bits (bucket) and the high bits (tag) of the map are well mixed.
#[inline]
fn word_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    // The murmur3 finaliser.
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// One distinct word: where its bytes are, how often it was seen, the next word with the same
/// hash.
#[derive(Clone, Copy)]
struct Entry {
    start: usize,
    len: u32,
    next: u32,
    count: u64,
}

/// Word counts (see the module docs).
#[derive(Default)]
pub(crate) struct WordCounts {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    index: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
}

impl WordCounts {
    /// Number of distinct words.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Add `count` occurrences of `word` (whose [`word_hash`] is `hash`).
    #[inline]
    fn add_hashed(&mut self, word: &[u8], hash: u64, count: u64) {
        let head = match self.index.get(&hash) {
            Some(&i) => i,
            None => NONE,
        };
        let mut i = head;
        while i != NONE {
            let e = &mut self.entries[i as usize];
            if self.bytes[e.start..e.start + e.len as usize] == *word {
                e.count += count;
                return;
            }
            i = e.next;
        }
        let id = self.entries.len() as u32;
        self.entries.push(Entry { start: self.bytes.len(), len: word.len() as u32, next: head, count });
        self.bytes.extend_from_slice(word);
        self.index.insert(hash, id);
    }

    /// Add `count` occurrences of `word`.
    #[inline]
    pub(crate) fn add(&mut self, word: &str, count: u64) {
        let bytes = word.as_bytes();
        self.add_hashed(bytes, word_hash(bytes), count);
    }

    /// The counts of both (the larger one is kept and the smaller one added to it).
    pub(crate) fn merge(self, other: WordCounts) -> WordCounts {
        let (mut big, small) = if self.len() >= other.len() { (self, other) } else { (other, self) };
        big.index.reserve(small.len());
        for (&hash, &head) in &small.index {
            let mut i = head;
            while i != NONE {
                let e = small.entries[i as usize];
                big.add_hashed(&small.bytes[e.start..e.start + e.len as usize], hash, e.count);
                i = e.next;
            }
        }
        big
    }

    /// Each word (UTF-8) and its count, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(move |e| {
            let bytes = &self.bytes[e.start..e.start + e.len as usize];
            // Only whole `&str` words are ever added.
            (std::str::from_utf8(bytes).unwrap_or_default(), e.count)
        })
    }

    /// Each word's length in bytes and its count.
    pub(crate) fn lengths(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.entries.iter().map(|e| (e.len as usize, e.count))
    }

    /// Every count, replaced by `f(count)`.
    pub(crate) fn map_counts(&mut self, mut f: impl FnMut(u64) -> u64) {
        for e in &mut self.entries {
            e.count = f(e.count);
        }
    }

    /// Frees the hash index (the words and counts stay readable through [`WordCounts::iter`]).
    pub(crate) fn drop_index(&mut self) {
        self.index = HashMap::default();
    }
}

/// Count the words of some texts (normalised, then pre-tokenised), in parallel.
pub(crate) fn count_words(normalizer: &Normalizer, texts: &[String]) -> WordCounts {
    // A few chunks per thread: enough for the threads to balance, few enough that merging the
    // chunks' counts stays cheap.
    let chunks = 4 * rayon::current_num_threads();
    let size = texts.len().div_ceil(chunks).max(1);
    let mut counts = texts
        .par_chunks(size)
        .map(|chunk| {
            let mut counts = WordCounts::default();
            let mut buf = String::new();
            for text in chunk {
                normalizer.normalize_into(text, &mut buf);
                for_each_word(&buf, |w| counts.add(w, 1));
            }
            counts
        })
        .reduce(WordCounts::default, WordCounts::merge);
    // Training only reads the words from here on.
    counts.drop_index();
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::FxHashMap;
    use crate::pretokenize::pretokenize;

    fn plain(normalizer: &Normalizer, texts: &[String]) -> FxHashMap<String, u64> {
        let mut m = FxHashMap::default();
        for t in texts {
            for w in pretokenize(&normalizer.normalize(t)) {
                *m.entry(w.to_string()).or_insert(0) += 1;
            }
        }
        m
    }

    fn as_map(c: &WordCounts) -> FxHashMap<String, u64> {
        c.iter().map(|(w, n)| (w.to_string(), n)).collect()
    }

    #[test]
    fn counts_like_a_plain_map() {
        let n = Normalizer::default();
        let texts: Vec<String> = (0..500)
            .map(|i| format!("w{} the  cat {} ｶﾀ 日本語 {}", i % 37, i % 5, "x".repeat(i % 19)))
            .collect();
        let counts = count_words(&n, &texts);
        assert_eq!(as_map(&counts), plain(&n, &texts));
        assert_eq!(counts.len(), plain(&n, &texts).len());
    }

    #[test]
    fn colliding_hashes_stay_apart() {
        let mut c = WordCounts::default();
        // Force two words onto one hash.
        c.add_hashed(b"ab", 7, 2);
        c.add_hashed(b"cd", 7, 3);
        c.add_hashed(b"ab", 7, 1);
        let mut d = WordCounts::default();
        d.add_hashed(b"cd", 7, 10);
        d.add_hashed(b"ef", 7, 1);
        let m = as_map(&c.merge(d));
        assert_eq!(m.len(), 3);
        assert_eq!((m["ab"], m["cd"], m["ef"]), (3, 13, 1));
    }

    #[test]
    fn map_counts_rewrites() {
        let mut c = WordCounts::default();
        c.add("ab", 2);
        c.add("c", 3);
        c.map_counts(|n| n * 10 + 1);
        let m = as_map(&c);
        assert_eq!((m["ab"], m["c"]), (21, 31));
        let mut l: Vec<(usize, u64)> = c.lengths().collect();
        l.sort();
        assert_eq!(l, vec![(1, 31), (2, 21)]);
    }
}
