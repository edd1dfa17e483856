//! SentencePiece's precompiled character map: the normalisation rules (`nmt_nfkc`, `nfkc`,
//! custom TSV rules) compiled into a double-array trie over UTF-8 byte strings, each key
//! mapping to a replacement string.
//!
//! The blob is `<trie size: u32 LE><trie units: u32 LE each><replacements: NUL-terminated
//! strings>`; a trie leaf's value is the byte offset of its replacement. Normalisation walks
//! the text from the left, at each position replacing the longest key that matches (or copying
//! one character when none does), which is what [`PrecompiledCharsMap::longest_match`] finds.
//!
//! The trie is read as the darts-clone format stores it: a unit holds a label (its low byte,
//! with bit 31 set on value units so that they never match a byte), a "has leaf" bit (8), an
//! offset to its children (bits 10-31, scaled by 256 when bit 9 is set), and value units hold
//! the value in their low 31 bits. Every index is checked: a damaged map gives no match, never a
//! panic.

use crate::error::{Result, TokenizerError};

/// How many matches of one prefix search SentencePiece keeps (its `kMaxTrieResultsSize`); the
/// longest of those is used.
const MAX_RESULTS: usize = 32;

/// A parsed precompiled character map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrecompiledCharsMap {
    units: Vec<u32>,
    replacements: Vec<u8>,
}

fn has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}

fn value(unit: u32) -> u32 {
    unit & ((1 << 31) - 1)
}

fn label(unit: u32) -> u32 {
    unit & ((1 << 31) | 0xff)
}

fn offset(unit: u32) -> usize {
    ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize
}

impl PrecompiledCharsMap {
    /// Parses the `precompiled_charsmap` bytes of a `NormalizerSpec`.
    pub fn parse(blob: &[u8]) -> Result<PrecompiledCharsMap> {
        let bad = |what: &str| TokenizerError::malformed(format!("precompiled_charsmap: {what}"));
        let size = blob.get(..4).ok_or_else(|| bad("shorter than its 4-byte trie size"))?;
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
        let trie = blob
            .get(4..)
            .and_then(|rest| rest.get(..size))
            .ok_or_else(|| bad("the trie runs past the end of the map"))?;
        if !size.is_multiple_of(4) || size == 0 {
            return Err(bad("the trie size is not a positive multiple of 4"));
        }
        let units = trie.chunks_exact(4).map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]])).collect();
        Ok(PrecompiledCharsMap { units, replacements: blob[4 + size..].to_vec() })
    }

    /// The longest key that `input` starts with (among the first [`MAX_RESULTS`] prefixes the
    /// trie holds, as SentencePiece searches): its length in bytes and its replacement.
    pub fn longest_match(&self, input: &[u8]) -> Option<(usize, &str)> {
        let mut best = None;
        self.walk(input, &mut |len, at, found| {
            if found < MAX_RESULTS {
                // Later matches are longer.
                best = Some((len, at));
            }
            true
        });
        let (len, at) = best?;
        Some((len, self.replacement(at)?))
    }

    /// The replacement of the shortest key that `input` starts with: what Hugging Face
    /// `tokenizers` uses for a whole grapheme (its `Precompiled` normaliser).
    pub fn shortest_match(&self, input: &[u8]) -> Option<&str> {
        let mut first = None;
        self.walk(input, &mut |_, at, _| {
            first = Some(at);
            false
        });
        self.replacement(first?)
    }

    /// Follows `input` down the trie, calling `leaf(length, value, leaves before)` at each key
    /// it passes until `leaf` says stop.
    fn walk(&self, input: &[u8], leaf: &mut dyn FnMut(usize, u32, usize) -> bool) {
        let units = &self.units;
        let Some(&root) = units.first() else { return };
        let mut pos = offset(root);
        let mut found = 0;
        for (i, &byte) in input.iter().enumerate() {
            pos ^= usize::from(byte);
            let Some(&unit) = units.get(pos) else { return };
            if label(unit) != u32::from(byte) {
                return;
            }
            pos ^= offset(unit);
            if has_leaf(unit) {
                let Some(&v) = units.get(pos) else { return };
                if !leaf(i + 1, value(v), found) {
                    return;
                }
                found += 1;
            }
        }
    }

    /// The NUL-terminated replacement at byte offset `at`.
    fn replacement(&self, at: u32) -> Option<&str> {
        let rest = self.replacements.get(at as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// The map as the `precompiled_charsmap` bytes it was parsed from.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.units.len() * 4 + self.replacements.len());
        out.extend_from_slice(&((self.units.len() * 4) as u32).to_le_bytes());
        out.extend(self.units.iter().flat_map(|u| u.to_le_bytes()));
        out.extend_from_slice(&self.replacements);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A double array holding `keys` (with distinct first bytes, each at most two bytes long),
    /// laid out by hand the way darts-clone's builder lays out such a small trie.
    fn map(keys: &[(&[u8], &str)]) -> Vec<u8> {
        // Root at 0 with children base 256: node for byte b at 256 ^ b = 256 + b; its value
        // unit at (256 + b) ^ offset; second-byte children at a second base.
        let mut units = vec![0u32; 4096];
        let mut repl = Vec::new();
        units[0] = 256 << 10; // offset 256, no leaf
        let mut next_base = 1024usize;
        for (key, to) in keys {
            let at = repl.len() as u32;
            repl.extend(to.as_bytes());
            repl.push(0);
            let first = 256 ^ usize::from(key[0]);
            let base = next_base;
            next_base += 512;
            // The first byte's node: its children (value unit at base ^ 0, second byte at
            // base ^ b) are `first ^ base` away.
            let off = first ^ base;
            let leaf = u32::from(key.len() == 1);
            units[first] = ((off as u32) << 10) | (leaf << 8) | u32::from(key[0]);
            if key.len() == 1 {
                units[base] = (1 << 31) | at;
            } else {
                let second = base ^ usize::from(key[1]);
                let vbase = next_base;
                next_base += 512;
                units[second] = (((second ^ vbase) as u32) << 10) | (1 << 8) | u32::from(key[1]);
                units[vbase] = (1 << 31) | at;
            }
        }
        let mut blob = ((units.len() * 4) as u32).to_le_bytes().to_vec();
        blob.extend(units.iter().flat_map(|u| u.to_le_bytes()));
        blob.extend(repl);
        blob
    }

    #[test]
    fn finds_the_longest_key() {
        let m = PrecompiledCharsMap::parse(&map(&[(b"a", "A"), (b"\xc2\xa0", " ")])).unwrap();
        assert_eq!(m.longest_match(b"abc"), Some((1, "A")));
        assert_eq!(m.longest_match("\u{a0}x".as_bytes()), Some((2, " ")));
        assert_eq!(m.longest_match(b"xyz"), None);
        assert_eq!(m.longest_match(b""), None);
        assert_eq!(m.shortest_match(b"abc"), Some("A"));
        assert_eq!(m.shortest_match(b"xa"), None);
        let blob = map(&[(b"a", "A")]);
        assert_eq!(PrecompiledCharsMap::parse(&blob).unwrap().to_bytes(), blob);
    }

    #[test]
    fn damaged_maps_are_errors_or_no_match() {
        assert!(PrecompiledCharsMap::parse(&[1, 0]).is_err());
        assert!(PrecompiledCharsMap::parse(&[8, 0, 0, 0, 1]).is_err());
        let blob = map(&[(b"a", "A"), (b"\xc2\xa0", " ")]);
        for at in (0..blob.len()).step_by(7) {
            for x in [0x01u8, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[at] ^= x;
                if let Ok(m) = PrecompiledCharsMap::parse(&bad) {
                    for input in [&b"abc"[..], "\u{a0}".as_bytes(), b"\xff\xfe"] {
                        let _ = m.longest_match(input);
                    }
                }
            }
        }
    }
}
