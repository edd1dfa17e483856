//! The BPE model: vocabulary (id ↔ piece), special tokens, byte tokens and ranked merges.
//!
//! Id layout: the special tokens first (`<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3 by default, then
//! user-defined ones), then the 256 byte tokens `<0x00>`..`<0xFF>`, then the "normal" pieces
//! (the alphabet of single characters followed by merge results). Only normal pieces take part in
//! merges; a character that has no normal piece is encoded as the byte tokens of its UTF-8.

use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use crate::normalize::Normalizer;

/// The default special tokens, in id order.
pub const DEFAULT_SPECIALS: [&str; 4] = ["<unk>", "<s>", "</s>", "<pad>"];
/// Id of `<unk>` with the default specials.
pub const UNK_ID: u32 = 0;
/// Id of `<s>` (beginning of sequence) with the default specials.
pub const BOS_ID: u32 = 1;
/// Id of `</s>` (end of sequence) with the default specials.
pub const EOS_ID: u32 = 2;
/// Id of `<pad>` with the default specials.
pub const PAD_ID: u32 = 3;
/// Number of byte-fallback tokens.
pub const NUM_BYTE_TOKENS: usize = 256;

/// The piece text of the byte token for `b`, e.g. `<0x0A>`.
pub fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// What kind of token an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// A special token (never produced from text by `encode`).
    Special,
    /// A byte-fallback token holding this byte.
    Byte(u8),
    /// A normal text piece (single character or merge result).
    Normal,
}

/// A trained (or loaded) BPE model.
#[derive(Debug, Clone)]
pub struct BpeModel {
    normalizer: Normalizer,
    specials: Vec<String>,
    pieces: Vec<String>,
    piece_to_id: FxHashMap<String, u32>,
    char_to_id: FxHashMap<char, u32>,
    merges: Vec<(u32, u32)>,
    merge_map: FxHashMap<(u32, u32), (u32, u32)>,
}

impl BpeModel {
    /// Build a model from its parts, checking them: specials unique and non-empty, normal pieces
    /// unique and non-empty, every merge `(a, b)` naming normal pieces `a`, `b` and `a + b`.
    /// `merges` is in rank order (index 0 = highest priority).
    pub fn new(
        normalizer: Normalizer,
        specials: Vec<String>,
        normal_pieces: Vec<String>,
        merges: &[(String, String)],
    ) -> Result<Self> {
        if specials.is_empty() {
            return Err(TokenizerError::malformed("there must be at least one special token"));
        }
        for (i, s) in specials.iter().enumerate() {
            if s.is_empty() {
                return Err(TokenizerError::malformed(format!("special token {i} is empty")));
            }
            if specials[..i].contains(s) {
                return Err(TokenizerError::malformed(format!("special token {s:?} is repeated")));
            }
        }
        let first_normal = specials.len() + NUM_BYTE_TOKENS;
        let total = first_normal + normal_pieces.len();
        if u32::try_from(total).is_err() {
            return Err(TokenizerError::malformed("vocabulary too large for u32 ids"));
        }
        let mut pieces = Vec::with_capacity(total);
        pieces.extend(specials.iter().cloned());
        pieces.extend((0..=255u8).map(byte_piece));
        let mut piece_to_id = FxHashMap::default();
        let mut char_to_id = FxHashMap::default();
        for (i, p) in normal_pieces.into_iter().enumerate() {
            let id = (first_normal + i) as u32;
            if p.is_empty() {
                return Err(TokenizerError::malformed(format!("piece {id} is empty")));
            }
            let mut chars = p.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                char_to_id.insert(c, id);
            }
            if piece_to_id.insert(p.clone(), id).is_some() {
                return Err(TokenizerError::malformed(format!("piece {p:?} is repeated")));
            }
            pieces.push(p);
        }
        let mut merge_ids = Vec::with_capacity(merges.len());
        let mut merge_map = FxHashMap::default();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let lookup = |s: &str| {
                piece_to_id.get(s).copied().ok_or_else(|| {
                    TokenizerError::malformed(format!("merge {rank} names unknown piece {s:?}"))
                })
            };
            let (ia, ib) = (lookup(a)?, lookup(b)?);
            let joined = format!("{a}{b}");
            let ic = lookup(&joined)?;
            if merge_map.insert((ia, ib), (rank as u32, ic)).is_some() {
                return Err(TokenizerError::malformed(format!("merge {rank} ({a:?}, {b:?}) is repeated")));
            }
            merge_ids.push((ia, ib));
        }
        Ok(BpeModel { normalizer, specials, pieces, piece_to_id, char_to_id, merges: merge_ids, merge_map })
    }

    /// The normaliser settings of this model.
    pub fn normalizer(&self) -> Normalizer {
        self.normalizer
    }

    /// The special tokens, in id order (ids `0..specials().len()`).
    pub fn specials(&self) -> &[String] {
        &self.specials
    }

    /// Total number of ids (specials + bytes + normal pieces).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// All pieces in id order (specials, byte tokens, normal pieces).
    pub fn pieces(&self) -> &[String] {
        &self.pieces
    }

    /// The merges in rank order, as pairs of piece ids.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The merges in rank order, as pairs of piece strings.
    pub fn merge_strings(&self) -> Vec<(String, String)> {
        self.merges
            .iter()
            .map(|&(a, b)| (self.pieces[a as usize].clone(), self.pieces[b as usize].clone()))
            .collect()
    }

    /// The id of the first byte token (`<0x00>`).
    pub fn byte_base(&self) -> u32 {
        self.specials.len() as u32
    }

    /// The id of the byte token for `b`.
    pub fn byte_id(&self, b: u8) -> u32 {
        self.byte_base() + b as u32
    }

    /// The id of the first normal piece.
    pub fn first_normal_id(&self) -> u32 {
        (self.specials.len() + NUM_BYTE_TOKENS) as u32
    }

    /// The piece text of `id`, if it is in range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// The id of a piece: a normal piece, a special token, or a byte token like `<0x41>`.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        if let Some(&id) = self.piece_to_id.get(piece) {
            return Some(id);
        }
        if let Some(i) = self.specials.iter().position(|s| s == piece) {
            return Some(i as u32);
        }
        let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
        if hex.len() == 2 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()) {
            return u8::from_str_radix(hex, 16).ok().map(|b| self.byte_id(b));
        }
        None
    }

    /// The id of the special token with this text.
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.specials.iter().position(|s| s == name).map(|i| i as u32)
    }

    /// What kind of token `id` is, if it is in range.
    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        let i = id as usize;
        if i >= self.pieces.len() {
            None
        } else if i < self.specials.len() {
            Some(PieceKind::Special)
        } else if i < self.specials.len() + NUM_BYTE_TOKENS {
            Some(PieceKind::Byte((i - self.specials.len()) as u8))
        } else {
            Some(PieceKind::Normal)
        }
    }

    /// The normal piece id of a single character, if the alphabet has it.
    #[inline]
    pub fn char_id(&self, c: char) -> Option<u32> {
        self.char_to_id.get(&c).copied()
    }

    /// The `(rank, result id)` of merging pieces `a` and `b`, if that merge exists.
    #[inline]
    pub fn merge(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merge_map.get(&(a, b)).copied()
    }
}

impl crate::merge::MergeRanks for BpeModel {
    #[inline]
    fn merge(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merge_map.get(&(a, b)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BpeModel {
        let pieces = ["a", "b", "ab", "▁"].iter().map(|s| s.to_string()).collect();
        let specials = DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect();
        BpeModel::new(Normalizer::default(), specials, pieces, &[("a".into(), "b".into())]).unwrap()
    }

    #[test]
    fn layout() {
        let m = tiny();
        assert_eq!(m.vocab_size(), 4 + 256 + 4);
        assert_eq!(m.piece_to_id("<unk>"), Some(UNK_ID));
        assert_eq!(m.piece_to_id("</s>"), Some(EOS_ID));
        assert_eq!(m.piece_to_id("<0x41>"), Some(4 + 0x41));
        assert_eq!(m.id_to_piece(4 + 0xFF), Some("<0xFF>"));
        assert_eq!(m.kind(5), Some(PieceKind::Byte(1)));
        assert_eq!(m.kind(PAD_ID), Some(PieceKind::Special));
        assert_eq!(m.kind(9999), None);
        let (a, b) = (m.char_id('a').unwrap(), m.char_id('b').unwrap());
        assert_eq!(m.merge(a, b), Some((0, m.piece_to_id("ab").unwrap())));
        assert_eq!(m.special_id("<s>"), Some(BOS_ID));
    }

    #[test]
    fn rejects_bad_parts() {
        let specials: Vec<String> = DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect();
        let n = Normalizer::default();
        assert!(BpeModel::new(n, specials.clone(), vec!["a".into(), "a".into()], &[]).is_err());
        assert!(BpeModel::new(n, specials.clone(), vec!["a".into()], &[("a".into(), "a".into())]).is_err());
        assert!(BpeModel::new(n, vec![], vec![], &[]).is_err());
        assert!(BpeModel::new(n, vec!["x".into(), "x".into()], vec![], &[]).is_err());
    }
}
