//! The BPE model of a `tokenizer.json` (`"model": {"type": "BPE", ...}`): vocabulary, ranked
//! merges, unknown token and byte fallback, applied to one pre-tokenised piece at a time.

use crate::bytelevel::bytes_to_chars;
use crate::cache::{WordCache, MAX_CACHED_WORD_BYTES};
use crate::error::{Result, TokenizerError};
use crate::hash::FxHashMap;
use crate::merge::{merge_word, MergeRanks};

/// A BPE model with arbitrary ids (as in Hugging Face `tokenizers`).
#[derive(Debug)]
pub(crate) struct HfBpe {
    pub(crate) vocab: FxHashMap<String, u32>,
    pub(crate) merges: Vec<(String, String)>,
    merge_map: FxHashMap<(u32, u32), (u32, u32)>,
    char_ids: FxHashMap<char, u32>,
    /// With byte fallback on: the id of each `<0xNN>` token the vocabulary has, by byte.
    byte_ids: Option<Box<[Option<u32>; 256]>>,
    pub(crate) unk: Option<(String, u32)>,
    pub(crate) fuse_unk: bool,
    pub(crate) ignore_merges: bool,
    cache: WordCache,
}

impl MergeRanks for HfBpe {
    #[inline]
    fn merge(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merge_map.get(&(a, b)).copied()
    }
}

/// `<0xNN>` (upper- or lower-case hex, as `tokenizers` accepts) → the byte.
pub(crate) fn parse_byte_token(token: &str) -> Option<u8> {
    if token.len() != 6 || !token.starts_with("<0x") || !token.ends_with('>') {
        return None;
    }
    u8::from_str_radix(&token[3..5], 16).ok()
}

impl HfBpe {
    /// Build the model, checking that every merge names vocabulary tokens and that its result
    /// is in the vocabulary. As in `tokenizers`, a repeated merge keeps its last rank.
    pub(crate) fn new(
        vocab: FxHashMap<String, u32>,
        merges: Vec<(String, String)>,
        unk_token: Option<String>,
        byte_fallback: bool,
        fuse_unk: bool,
        ignore_merges: bool,
    ) -> Result<Self> {
        let lookup = |s: &str, rank: usize| {
            vocab.get(s).copied().ok_or_else(|| {
                TokenizerError::malformed(format!(
                    "tokenizer.json: merge {rank} names {s:?}, not in the vocab"
                ))
            })
        };
        let mut merge_map = FxHashMap::default();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let (ia, ib) = (lookup(a, rank)?, lookup(b, rank)?);
            let ic = lookup(&format!("{a}{b}"), rank)?;
            merge_map.insert((ia, ib), (rank as u32, ic));
        }
        let mut char_ids = FxHashMap::default();
        for (piece, &id) in &vocab {
            let mut chars = piece.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                char_ids.insert(c, id);
            }
        }
        let byte_ids = if byte_fallback {
            let mut ids = Box::new([None; 256]);
            for (piece, &id) in &vocab {
                if let Some(b) = parse_byte_token(piece) {
                    // `tokenizers` looks up the upper-case spelling.
                    if piece == &format!("<0x{b:02X}>") {
                        ids[b as usize] = Some(id);
                    }
                }
            }
            Some(ids)
        } else {
            None
        };
        let unk = match unk_token {
            Some(t) => {
                let id = vocab.get(&t).copied().ok_or_else(|| {
                    TokenizerError::malformed(format!("tokenizer.json: unk_token {t:?} is not in the vocab"))
                })?;
                Some((t, id))
            }
            None => None,
        };
        Ok(HfBpe {
            vocab,
            merges,
            merge_map,
            char_ids,
            byte_ids,
            unk,
            fuse_unk,
            ignore_merges,
            cache: WordCache::new(1 << 14),
        })
    }

    /// Whether byte fallback is on.
    pub(crate) fn byte_fallback(&self) -> bool {
        self.byte_ids.is_some()
    }

    /// Encode one piece, appending its ids to `out`.
    pub(crate) fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(piece) {
                out.push(id);
                return;
            }
        }
        let cacheable = piece.len() <= MAX_CACHED_WORD_BYTES;
        if cacheable && self.cache.get(piece, out) {
            return;
        }
        let ids = self.encode_uncached(piece);
        if cacheable {
            self.cache.put(piece, &ids);
        }
        out.extend_from_slice(&ids);
    }

    /// Encode one piece of raw text for a byte-level model: the same ids as [`Self::encode_piece`]
    /// on its byte characters (`table`), but the word cache is keyed by the raw text, so a
    /// cached piece is never mapped. `buf` is scratch space. A tokenizer must use only one of
    /// the two methods (their cache keys would mix otherwise); `HfTokenizer` uses this one
    /// exactly when its only pre-tokenizer is `ByteLevel`.
    pub(crate) fn encode_raw_piece(
        &self,
        raw: &str,
        table: &[char; 256],
        buf: &mut String,
        out: &mut Vec<u32>,
    ) {
        let cacheable = raw.len() <= MAX_CACHED_WORD_BYTES && !self.ignore_merges;
        if cacheable && self.cache.get(raw, out) {
            return;
        }
        buf.clear();
        bytes_to_chars(raw.as_bytes(), table, buf);
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(buf.as_str()) {
                out.push(id);
                return;
            }
        }
        let ids = self.encode_uncached(buf);
        if cacheable {
            self.cache.put(raw, &ids);
        }
        out.extend_from_slice(&ids);
    }

    /// The ids of one piece: characters (or byte tokens, or unknown), then the merges.
    fn encode_uncached(&self, piece: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(piece.len());
        let mut last_was_unk = false;
        for c in piece.chars() {
            if let Some(&id) = self.char_ids.get(&c) {
                ids.push(id);
                last_was_unk = false;
                continue;
            }
            if let Some(bytes) = &self.byte_ids {
                let mut buf = [0u8; 4];
                let utf8 = c.encode_utf8(&mut buf).as_bytes();
                if utf8.iter().all(|&b| bytes[b as usize].is_some()) {
                    ids.extend(utf8.iter().filter_map(|&b| bytes[b as usize]));
                    last_was_unk = false;
                    continue;
                }
            }
            if let Some((_, unk)) = &self.unk {
                if !(self.fuse_unk && last_was_unk) {
                    ids.push(*unk);
                }
                last_was_unk = true;
            }
            // Without an unknown token, `tokenizers` drops the character.
        }
        merge_word(self, &mut ids);
        ids
    }
}
