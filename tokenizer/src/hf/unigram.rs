//! The `Unigram` model of a `tokenizer.json` (what `transformers` writes for SentencePiece
//! unigram models: T5, XLM-R, mBART, and generic conversions), encoded as `tokenizers` does.
//!
//! Each pre-tokenised piece is segmented by Viterbi (the shared unigram lattice): the path through the piece's characters
//! whose vocabulary pieces have the largest total score (f64, ties to the earlier candidate in
//! `tokenizers`' order: shorter keys first, left to right). A character that no single-character
//! piece covers is an unknown of score `min score − 10`. On the best path, runs of unknowns are
//! fused into one; with `byte_fallback` a fused unknown becomes its `<0xNN>` byte tokens (when
//! every one exists), else the unknown id. Unlike SentencePiece's own encoder, every
//! vocabulary entry takes part (control and byte pieces too), as in `tokenizers`.

use crate::cache::{WordCache, MAX_CACHED_WORD_BYTES};
use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use crate::lattice::{self, UnigramVocabulary};

/// The score penalty of an unknown character below the lowest piece score.
const UNK_PENALTY: f64 = 10.0;

/// A unigram model.
#[derive(Debug)]
pub(crate) struct HfUnigram {
    /// Pieces and scores, by id.
    pub(crate) pieces: Vec<(String, f64)>,
    pub(crate) vocab: FxHashMap<String, u32>,
    pub(crate) unk_id: Option<u32>,
    pub(crate) byte_fallback: bool,
    /// `<0xNN>` ids by byte, with `byte_fallback`.
    byte_ids: Option<Box<[Option<u32>; 256]>>,
    min_score: f64,
    /// Every piece and every prefix of one (at character boundaries): the piece's id, or `None`
    /// for a prefix that is no piece. The Viterbi search extends a candidate only while it is
    /// here.
    prefixes: FxHashMap<String, Option<u32>>,
    cache: WordCache,
}

impl HfUnigram {
    /// Builds the model from `(piece, score)` pairs in id order.
    pub(crate) fn new(pieces: Vec<(String, f64)>, unk_id: Option<u32>, byte_fallback: bool) -> Result<Self> {
        let bad = |m: String| TokenizerError::malformed(format!("tokenizer.json: {m}"));
        if pieces.is_empty() {
            return Err(bad("the Unigram vocab is empty".into()));
        }
        if let Some(unk) = unk_id {
            if unk as usize >= pieces.len() {
                return Err(bad(format!("unk_id {unk} is beyond the {} pieces", pieces.len())));
            }
        }
        let mut vocab = FxHashMap::default();
        let mut min_score = f64::INFINITY;
        let mut prefixes: FxHashMap<String, Option<u32>> = FxHashMap::default();
        for (id, (piece, score)) in pieces.iter().enumerate() {
            if !score.is_finite() {
                return Err(bad(format!("the score of {piece:?} is not finite")));
            }
            // A repeated piece keeps its last id, as `tokenizers` does.
            vocab.insert(piece.clone(), id as u32);
            min_score = min_score.min(*score);
            for (end, _) in piece.char_indices().skip(1) {
                prefixes.entry(piece[..end].to_string()).or_insert(None);
            }
            if !piece.is_empty() {
                prefixes.insert(piece.clone(), Some(id as u32));
            }
        }
        let byte_ids = byte_fallback.then(|| {
            let mut ids = Box::new([None; 256]);
            for (b, slot) in ids.iter_mut().enumerate() {
                *slot = vocab.get(&format!("<0x{b:02X}>")).copied();
            }
            ids
        });
        Ok(HfUnigram {
            pieces,
            vocab,
            unk_id,
            byte_fallback,
            byte_ids,
            min_score,
            prefixes,
            cache: WordCache::new(1 << 14),
        })
    }

    /// Encodes one pre-tokenised piece.
    pub(crate) fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let cacheable = piece.len() <= MAX_CACHED_WORD_BYTES;
        if cacheable && self.cache.get(piece, out) {
            return;
        }
        let mut ids = Vec::with_capacity(piece.len() / 2 + 1);
        self.encode_uncached(piece, &mut ids);
        if cacheable {
            self.cache.put(piece, &ids);
        }
        out.extend_from_slice(&ids);
    }

    fn encode_uncached(&self, text: &str, out: &mut Vec<u32>) {
        for segment in lattice::best_path(self, text) {
            match segment.id {
                Some(id) if !self.is_unknown(Some(id)) => out.push(id),
                _ => self.push_unknown(&text[segment.start..segment.end], out),
            }
        }
    }

    /// A fused run of unknown characters: a piece if it happens to be one, its byte tokens with
    /// byte fallback, else the unknown id (dropped when the model has none, where `tokenizers`
    /// fails to encode).
    fn push_unknown(&self, run: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.vocab.get(run) {
            out.push(id);
            return;
        }
        if let Some(ids) = &self.byte_ids {
            if run.bytes().all(|b| ids[b as usize].is_some()) {
                out.extend(run.bytes().filter_map(|b| ids[b as usize]));
                return;
            }
        }
        if let Some(unk) = self.unk_id {
            out.push(unk);
        }
    }
}

impl UnigramVocabulary for HfUnigram {
    type Score = f64;

    /// Every piece starting here, shortest first, extended only while the text so far prefixes
    /// some piece.
    fn pieces_at(&self, text: &str, start: usize, mut offer: impl FnMut(usize, u32, f64)) {
        let ends = text[start..].char_indices().skip(1).map(|(i, _)| start + i).chain([text.len()]);
        for end in ends {
            match self.prefixes.get(&text[start..end]) {
                Some(&Some(id)) => offer(end, id, self.pieces[id as usize].1),
                Some(None) => {}
                None => break,
            }
        }
    }

    fn unknown_score(&self) -> f64 {
        self.min_score - UNK_PENALTY
    }

    /// Unknown nodes and the unknown piece itself fuse, as in `tokenizers`.
    fn is_unknown(&self, id: Option<u32>) -> bool {
        id.is_none() || id == self.unk_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pieces: &[(&str, f64)], unk: Option<u32>, bytes: bool) -> HfUnigram {
        let mut v: Vec<(String, f64)> = pieces.iter().map(|&(p, s)| (p.to_string(), s)).collect();
        if bytes {
            v.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0)));
        }
        HfUnigram::new(v, unk, bytes).unwrap()
    }

    fn encode(m: &HfUnigram, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.encode_piece(text, &mut out);
        out
    }

    #[test]
    fn viterbi_takes_the_best_total_score() {
        let m = model(
            &[("<unk>", 0.0), ("a", -1.0), ("b", -1.0), ("ab", -1.5), ("abc", -4.0), ("c", -1.0)],
            Some(0),
            false,
        );
        // ab + c = -2.5 beats abc = -4.0 and a + b + c = -3.0.
        assert_eq!(encode(&m, "abc"), vec![3, 5]);
        assert_eq!(encode(&m, "ba"), vec![2, 1]);
    }

    #[test]
    fn unknowns_fuse_then_fall_back_to_bytes() {
        let m = model(&[("<unk>", 0.0), ("a", -1.0)], Some(0), false);
        assert_eq!(encode(&m, "axyа"), vec![1, 0]);
        let m = model(&[("<unk>", 0.0), ("a", -1.0)], Some(0), true);
        let want: Vec<u32> = std::iter::once(1).chain("é".bytes().map(|b| 2 + u32::from(b))).collect();
        assert_eq!(encode(&m, "aé"), want);
    }

    #[test]
    fn bad_vocabularies_are_errors() {
        assert!(HfUnigram::new(Vec::new(), None, false).is_err());
        assert!(HfUnigram::new(vec![("a".into(), 0.0)], Some(1), false).is_err());
        assert!(HfUnigram::new(vec![("a".into(), f64::NAN)], None, false).is_err());
    }
}
