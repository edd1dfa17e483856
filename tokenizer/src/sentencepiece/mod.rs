//! Importing SentencePiece `.model` files (BPE and unigram) without a protobuf dependency.
//!
//! - [`proto`]: a minimal protobuf reader and the `ModelProto` fields used here;
//! - [`SentencePieceModel`]: normalisation, encoding (BPE merges by piece score, unigram
//!   Viterbi), byte fallback and decoding.
//!
//! # Normalisation
//!
//! SentencePiece normalises with the precompiled character map its model file carries
//! (`nmt_nfkc` by default: NFKC plus mappings such as control and format characters to a space
//! or nothing), applied left to right by longest match, with user-defined pieces copied as they
//! are; then it drops leading, trailing and repeated spaces, adds the dummy prefix and escapes
//! spaces as `▁`. This importer does exactly that when the map is present ([`charsmap`]).
//!
//! A model without a map (one stripped to save space) is normalised by approximation: Unicode
//! NFKC over the whole text plus the `nmt` extras this importer knows (C0/C1 controls other
//! than tab, LF, CR and form feed removed; those four and U+200B become a space; U+FEFF
//! removed). That differs from the map wherever NFKC reorders combining marks (Arabic harakat,
//! Hebrew points, Thai tone marks typed in another order) and for the format characters the
//! map turns into spaces (U+200E, U+200F, ...). Models whose rule is `identity` are not
//! normalised.
//!
//! User-defined pieces are copied unnormalised, kept whole and never merged by BPE (unigram
//! gives them SentencePiece's length bonus); UNUSED pieces are never produced.

pub mod charsmap;
pub mod proto;

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use crate::error::{Result, TokenizerError};
use crate::lattice::{self, UnigramVocabulary};
use charsmap::PrecompiledCharsMap;
use proto::{ModelProto, ModelType, PieceType};

const META: char = '\u{2581}';
const UNK_PENALTY: f32 = 10.0;

/// A SentencePiece model imported from a `.model` file.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    proto: ModelProto,
    /// Normal and user-defined pieces that the encoder may produce.
    vocab: HashMap<String, u32>,
    /// `<0xNN>` piece ids, indexed by byte.
    bytes: Option<[u32; 256]>,
    unk_id: u32,
    max_piece_chars: usize,
    min_score: f32,
    max_score: f32,
    /// The model's compiled normalisation rules, when the file carries them.
    charsmap: Option<PrecompiledCharsMap>,
    /// User-defined pieces (non-empty), which normalisation copies unchanged and BPE keeps
    /// whole, longest first so that a search finds the longest at a position.
    user_defined: Vec<String>,
}

impl SentencePieceModel {
    /// Loads a `.model` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            TokenizerError::MalformedModel { path: None, message } => {
                TokenizerError::MalformedModel { path: Some(path.to_path_buf()), message }
            }
            e => e,
        })
    }

    /// Parses a serialized `ModelProto`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_proto(ModelProto::parse(bytes)?)
    }

    /// Builds the model from a parsed proto, checking that it is usable.
    pub fn from_proto(proto: ModelProto) -> Result<Self> {
        if proto.pieces.is_empty() {
            return Err(TokenizerError::malformed("SentencePiece model has no pieces"));
        }
        match proto.trainer_spec.model_type {
            ModelType::Bpe | ModelType::Unigram => {}
            t => {
                return Err(TokenizerError::malformed(format!("unsupported SentencePiece model type {t:?}")))
            }
        }
        let mut vocab = HashMap::new();
        let mut byte_ids = [u32::MAX; 256];
        let mut unk = None;
        let mut max_piece_chars = 1;
        let mut min_score = f32::INFINITY;
        let mut max_score = f32::NEG_INFINITY;
        for (id, p) in proto.pieces.iter().enumerate() {
            let id = id as u32;
            match p.kind {
                PieceType::Normal | PieceType::UserDefined => {
                    if p.kind == PieceType::Normal {
                        min_score = min_score.min(p.score);
                        max_score = max_score.max(p.score);
                    }
                    max_piece_chars = max_piece_chars.max(p.piece.chars().count());
                    vocab.entry(p.piece.clone()).or_insert(id);
                }
                PieceType::Unknown => {
                    unk.get_or_insert(id);
                }
                PieceType::Byte => {
                    let b = parse_byte_piece(&p.piece)
                        .ok_or_else(|| TokenizerError::malformed(format!("bad byte piece {:?}", p.piece)))?;
                    byte_ids[b as usize] = id;
                }
                PieceType::Control | PieceType::Unused => {}
            }
        }
        let unk_id =
            unk.ok_or_else(|| TokenizerError::malformed("SentencePiece model has no unknown piece"))?;
        let bytes = if proto.trainer_spec.byte_fallback {
            if byte_ids.contains(&u32::MAX) {
                return Err(TokenizerError::malformed(
                    "byte_fallback is set but some <0xNN> pieces are missing",
                ));
            }
            Some(byte_ids)
        } else {
            None
        };
        if !min_score.is_finite() {
            min_score = 0.0;
            max_score = 0.0;
        }
        let charsmap = match proto.normalizer_spec.precompiled_charsmap.as_slice() {
            [] => None,
            blob => Some(PrecompiledCharsMap::parse(blob)?),
        };
        let mut user_defined: Vec<String> = proto
            .pieces
            .iter()
            .filter(|p| p.kind == PieceType::UserDefined && !p.piece.is_empty())
            .map(|p| p.piece.clone())
            .collect();
        user_defined.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Ok(SentencePieceModel {
            proto,
            vocab,
            bytes,
            unk_id,
            max_piece_chars,
            min_score,
            max_score,
            charsmap,
            user_defined,
        })
    }

    /// The parsed proto.
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// The number of pieces.
    pub fn vocab_size(&self) -> usize {
        self.proto.pieces.len()
    }

    /// The piece text of `id`.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.proto.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The unknown id.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Normalises `text` as the model's normalizer spec says (see the module docs).
    pub fn normalize(&self, text: &str) -> String {
        match &self.charsmap {
            Some(map) => self.normalize_with(map, text),
            None => self.normalize_approximately(text),
        }
    }

    /// The longest user-defined piece that `text` starts with.
    fn user_defined_prefix(&self, text: &str) -> Option<&str> {
        self.user_defined.iter().map(String::as_str).find(|p| text.starts_with(p))
    }

    /// The next normalised piece of `input` and the bytes it consumes: a user-defined piece as
    /// it is, else the longest rule of the map, else one character unchanged.
    fn normalize_prefix<'a>(&'a self, map: &'a PrecompiledCharsMap, input: &'a str) -> (&'a str, usize) {
        if let Some(p) = self.user_defined_prefix(input) {
            return (p, p.len());
        }
        if let Some((len, to)) = map.longest_match(input.as_bytes()) {
            // A key ends on a character boundary in any map SentencePiece builds (its keys are
            // whole characters); one that does not is ignored rather than splitting a character.
            if input.is_char_boundary(len) {
                return (to, len);
            }
        }
        let len = input.chars().next().map_or(0, char::len_utf8);
        (&input[..len], len)
    }

    /// SentencePiece's normaliser, step for step: pieces from [`Self::normalize_prefix`];
    /// with `remove_extra_whitespaces`, leading spaces dropped, a piece's leading spaces
    /// dropped after a piece that ended in one, trailing spaces dropped; the dummy prefix; `▁`
    /// for spaces.
    fn normalize_with(&self, map: &PrecompiledCharsMap, text: &str) -> String {
        let spec = &self.proto.normalizer_spec;
        let space = if spec.escape_whitespaces { "\u{2581}" } else { " " };
        let mut input = text;
        if spec.remove_extra_whitespaces {
            while !input.is_empty() {
                let (piece, len) = self.normalize_prefix(map, input);
                if piece != " " {
                    break;
                }
                input = &input[len..];
            }
        }
        let mut out = String::with_capacity(text.len() + 3);
        if input.is_empty() {
            return out;
        }
        if spec.add_dummy_prefix {
            out.push_str(space);
        }
        let mut prev_space = spec.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut piece, len) = self.normalize_prefix(map, input);
            if prev_space {
                piece = piece.trim_start_matches(' ');
            }
            if !piece.is_empty() {
                // Spaces written as `space` (`▁` when escaping) without a copy per piece.
                for (i, run) in piece.split(' ').enumerate() {
                    if i > 0 {
                        out.push_str(space);
                    }
                    out.push_str(run);
                }
                prev_space = piece.ends_with(' ');
            }
            input = &input[len..];
            prev_space = prev_space && spec.remove_extra_whitespaces;
        }
        if spec.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        out
    }

    /// The approximation for models without a map (see the module docs).
    fn normalize_approximately(&self, text: &str) -> String {
        let spec = &self.proto.normalizer_spec;
        let unicode: String = if spec.name == "identity" {
            text.to_string()
        } else {
            crate::normalize::nfkc(&nmt_extras(text))
        };
        let mut spaced = if spec.remove_extra_whitespaces {
            unicode.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
        } else {
            unicode
        };
        if spaced.is_empty() {
            return spaced;
        }
        if spec.add_dummy_prefix {
            spaced.insert(0, ' ');
        }
        if spec.escape_whitespaces {
            spaced = spaced.replace(' ', "\u{2581}");
        }
        spaced
    }

    /// Encodes `text` into piece ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let norm = self.normalize(text);
        let segments = match self.proto.trainer_spec.model_type {
            ModelType::Bpe => self.bpe_segments(&norm),
            _ => self.unigram_segments(&norm),
        };
        let mut out = Vec::with_capacity(segments.len());
        for (surface, id) in segments {
            match (id, &self.bytes) {
                (Some(id), _) => out.push(id),
                (None, Some(bytes)) => out.extend(surface.bytes().map(|b| bytes[b as usize])),
                (None, None) => out.push(self.unk_id),
            }
        }
        out
    }

    /// Encodes `text` into piece strings.
    pub fn encode_pieces(&self, text: &str) -> Vec<String> {
        self.encode(text).into_iter().map(|id| self.proto.pieces[id as usize].piece.clone()).collect()
    }

    /// BPE: start from characters, repeatedly merge the adjacent pair whose concatenation is a
    /// piece with the highest score (leftmost on ties). `None` ids are unknown surfaces.
    fn bpe_segments<'a>(&self, norm: &'a str) -> Vec<(&'a str, Option<u32>)> {
        #[derive(Clone, Copy)]
        struct Sym {
            start: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
            /// A user-defined piece: one symbol from the start, never merged.
            frozen: bool,
        }
        #[derive(PartialEq)]
        struct Cand {
            score: f32,
            left: usize,
            right: usize,
            size: usize,
        }
        impl Eq for Cand {}
        impl Ord for Cand {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Cand {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        // The initial symbols: a user-defined piece where one starts (the longest), else one
        // character.
        let mut syms: Vec<Sym> = Vec::new();
        let mut start = 0;
        while start < norm.len() {
            let rest = &norm[start..];
            let user = self.user_defined_prefix(rest);
            let len = user.map_or_else(|| rest.chars().next().map_or(1, char::len_utf8), str::len);
            let i = syms.len();
            syms.push(Sym { start, len, prev: i.checked_sub(1), next: None, frozen: user.is_some() });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
            start += len;
        }
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Cand>, syms: &[Sym], l: usize, r: usize| {
            if syms[l].frozen || syms[r].frozen {
                return;
            }
            let piece = &norm[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = self.vocab.get(piece) {
                heap.push(Cand {
                    score: self.proto.pieces[id as usize].score,
                    left: l,
                    right: r,
                    size: piece.len(),
                });
            }
        };
        for i in 1..syms.len() {
            push(&mut heap, &syms, i - 1, i);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (c.left, c.right);
            if syms[l].len == 0
                || syms[r].len == 0
                || syms[l].len + syms[r].len != c.size
                || syms[l].next != Some(r)
            {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                push(&mut heap, &syms, p, l);
            }
            if let Some(n) = syms[l].next {
                push(&mut heap, &syms, l, n);
            }
        }
        let mut out = Vec::new();
        let mut cur = if syms.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            let s = &norm[syms[i].start..syms[i].start + syms[i].len];
            out.push((s, self.vocab.get(s).copied()));
            cur = syms[i].next;
        }
        out
    }

    /// Unigram: Viterbi over the pieces the encoder may produce (the shared unigram lattice,
    /// f32 sums as in SentencePiece); runs of unknown characters become one unknown segment.
    fn unigram_segments<'a>(&self, norm: &'a str) -> Vec<(&'a str, Option<u32>)> {
        lattice::best_path(self, norm).into_iter().map(|s| (&norm[s.start..s.end], s.id)).collect()
    }

    /// Decodes ids back to text: byte pieces are joined as UTF-8 (invalid sequences become
    /// U+FFFD), control pieces vanish, the unknown piece becomes ` ⁇ `, `▁` becomes a space and
    /// the dummy prefix space is removed.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        let mut pending: Vec<u8> = Vec::new();
        for &id in ids {
            let p = self
                .proto
                .pieces
                .get(id as usize)
                .ok_or(TokenizerError::IdOutOfRange { id, vocab_size: self.proto.pieces.len() })?;
            if p.kind == PieceType::Byte {
                if let Some(b) = parse_byte_piece(&p.piece) {
                    pending.push(b);
                    continue;
                }
            }
            if !pending.is_empty() {
                out.push_str(&String::from_utf8_lossy(&pending));
                pending.clear();
            }
            match p.kind {
                PieceType::Control | PieceType::Unused => {}
                PieceType::Unknown => out.push_str(" \u{2047} "),
                _ => out.push_str(&p.piece),
            }
        }
        out.push_str(&String::from_utf8_lossy(&pending));
        let spec = &self.proto.normalizer_spec;
        let mut text = if spec.escape_whitespaces { out.replace(META, " ") } else { out };
        if spec.add_dummy_prefix && text.starts_with(' ') {
            text.remove(0);
        }
        Ok(text)
    }
}

/// `<0xNN>` → the byte.
impl UnigramVocabulary for SentencePieceModel {
    type Score = f32;

    /// Normal and user-defined pieces of up to the longest piece's length, shortest first; a
    /// user-defined piece scores `chars × max score − 0.1`, as SentencePiece scores them.
    fn pieces_at(&self, text: &str, start: usize, mut offer: impl FnMut(usize, u32, f32)) {
        let mut end = start;
        for (chars, c) in (1..=self.max_piece_chars).zip(text[start..].chars()) {
            end += c.len_utf8();
            if let Some(&id) = self.vocab.get(&text[start..end]) {
                let p = &self.proto.pieces[id as usize];
                let score = if p.kind == PieceType::UserDefined {
                    chars as f32 * self.max_score - 0.1
                } else {
                    p.score
                };
                offer(end, id, score);
            }
        }
    }

    fn unknown_score(&self) -> f32 {
        self.min_score - UNK_PENALTY
    }

    fn is_unknown(&self, id: Option<u32>) -> bool {
        id.is_none()
    }
}

fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The extra `nmt` mappings applied before NFKC (see the module docs).
fn nmt_extras(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' | '\n' | '\r' | '\u{0C}' | '\u{200B}' => Some(' '),
            '\u{FEFF}' => None,
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{NormalizerSpec, Piece, TrainerSpec};

    fn model(kind: ModelType, pieces: &[(&str, f32, PieceType)]) -> SentencePieceModel {
        let mut all: Vec<Piece> = vec![Piece { piece: "<unk>".into(), score: 0.0, kind: PieceType::Unknown }];
        for b in 0..=255u8 {
            all.push(Piece { piece: format!("<0x{b:02X}>"), score: 0.0, kind: PieceType::Byte });
        }
        for (p, s, k) in pieces {
            all.push(Piece { piece: p.to_string(), score: *s, kind: *k });
        }
        let proto = ModelProto {
            pieces: all,
            trainer_spec: TrainerSpec { model_type: kind, byte_fallback: true, ..TrainerSpec::default() },
            normalizer_spec: NormalizerSpec::default(),
        };
        SentencePieceModel::from_proto(proto).unwrap()
    }

    #[test]
    fn normalizes_whitespace() {
        let m = model(ModelType::Bpe, &[]);
        assert_eq!(m.normalize("  a \t b  "), "\u{2581}a\u{2581}b");
        assert_eq!(m.normalize("   "), "");
        assert_eq!(m.normalize("ｆｕｌｌ"), "\u{2581}full");
    }

    #[test]
    fn bpe_merges_by_score_and_falls_back_to_bytes() {
        use PieceType::Normal as N;
        let m = model(
            ModelType::Bpe,
            &[
                ("▁", -1.0, N),
                ("a", -1.0, N),
                ("b", -1.0, N),
                ("▁a", -2.0, N),
                ("ab", -0.5, N),
                ("▁ab", -3.0, N),
            ],
        );
        // "ab" (score -0.5) wins over "▁a" (-2), then "▁ab".
        assert_eq!(m.encode_pieces("ab"), vec!["▁ab"]);
        let ids = m.encode("aé");
        assert_eq!(m.id_to_piece(ids[1]), Some("<0xC3>"));
        assert_eq!(m.decode(&ids).unwrap(), "aé");
    }

    #[test]
    fn unigram_viterbi_and_unknowns() {
        use PieceType::Normal as N;
        let m = model(
            ModelType::Unigram,
            &[
                ("▁", -1.0, N),
                ("a", -2.0, N),
                ("b", -2.0, N),
                ("▁a", -1.5, N),
                ("ab", -1.0, N),
                ("▁ab", -5.0, N),
            ],
        );
        assert_eq!(m.encode_pieces("ab"), vec!["▁", "ab"]);
        let ids = m.encode("a中b");
        assert_eq!(ids.len(), 1 + 3 + 1); // ▁a, three bytes of 中, b
        assert_eq!(m.decode(&ids).unwrap(), "a中b");
        assert!(m.decode(&[99_999]).is_err());
    }

    #[test]
    fn corrupt_bytes_are_typed_errors() {
        assert!(matches!(
            SentencePieceModel::from_bytes(&[0x0A, 0x05, 0x0A]),
            Err(TokenizerError::MalformedModel { .. })
        ));
        assert!(SentencePieceModel::from_bytes(&[]).is_err());
    }
}
