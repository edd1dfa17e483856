//! A minimal protobuf wire-format reader and the parts of SentencePiece's `ModelProto` that the
//! importer needs.
//!
//! The reader handles varints, length-delimited fields, fixed32/fixed64 and skips every field it
//! does not know. It never panics on arbitrary input: truncated or malformed bytes yield
//! [`TokenizerError::MalformedModel`].
//!
//! Field numbers (checked against models written by the `sentencepiece` 0.2 Python package):
//!
//! - `ModelProto`: `pieces` = 1, `trainer_spec` = 2, `normalizer_spec` = 3;
//! - `SentencePiece`: `piece` = 1, `score` = 2 (float), `type` = 3 (NORMAL=1, UNKNOWN=2,
//!   CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6);
//! - `TrainerSpec`: `model_type` = 3 (UNIGRAM=1, BPE=2, WORD=3, CHAR=4), `vocab_size` = 4,
//!   `split_digits` = 25, `byte_fallback` = 35, `unk_id` = 40, `bos_id` = 41, `eos_id` = 42,
//!   `pad_id` = 43;
//! - `NormalizerSpec`: `name` = 1, `precompiled_charsmap` = 2, `add_dummy_prefix` = 3,
//!   `remove_extra_whitespaces` = 4, `escape_whitespaces` = 5.

use crate::error::{Result, TokenizerError};

/// One decoded field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// A forward-only reader over one protobuf message.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn err(&self, what: &str) -> TokenizerError {
        TokenizerError::malformed(format!("protobuf: {what} at byte {}", self.pos))
    }

    /// Reads one base-128 varint (at most 10 bytes).
    pub fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7F) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err("truncated field"));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(self.err("invalid field number"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| self.err("length too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            w => return Err(self.err(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((field as u32, value)))
    }
}

fn wrong(field: &str) -> TokenizerError {
    TokenizerError::malformed(format!("protobuf: field {field} has the wrong wire type"))
}

fn as_varint(v: Value<'_>, field: &str) -> Result<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(wrong(field)),
    }
}

fn as_bool(v: Value<'_>, field: &str) -> Result<bool> {
    as_varint(v, field).map(|x| x != 0)
}

fn as_i32(v: Value<'_>, field: &str) -> Result<i32> {
    // int32 is sign-extended to 64 bits on the wire; truncation is the protobuf rule.
    as_varint(v, field).map(|x| x as i64 as i32)
}

fn as_bytes<'a>(v: Value<'a>, field: &str) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(wrong(field)),
    }
}

fn as_string(v: Value<'_>, field: &str) -> Result<String> {
    let b = as_bytes(v, field)?;
    String::from_utf8(b.to_vec())
        .map_err(|_| TokenizerError::malformed(format!("protobuf: field {field} is not UTF-8")))
}

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// A normal piece (1).
    Normal,
    /// The unknown piece (2).
    Unknown,
    /// A control piece such as `<s>` (3).
    Control,
    /// A user-defined piece (4).
    UserDefined,
    /// An unused piece (5).
    Unused,
    /// A byte piece `<0xNN>` (6).
    Byte,
}

impl PieceType {
    fn from_code(code: u64) -> Result<Self> {
        Ok(match code {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            c => return Err(TokenizerError::malformed(format!("unknown piece type {c}"))),
        })
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (with `▁` for spaces).
    pub piece: String,
    /// Its score (log probability for unigram, negated merge rank for BPE).
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// `TrainerSpec.ModelType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model (1, the default).
    Unigram,
    /// BPE (2).
    Bpe,
    /// Whitespace-split words (3).
    Word,
    /// Characters (4).
    Char,
}

/// The `TrainerSpec` fields the importer uses.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// The model type.
    pub model_type: ModelType,
    /// The requested vocabulary size.
    pub vocab_size: i32,
    /// Whether digits were split into single pieces.
    pub split_digits: bool,
    /// Whether unknown characters fall back to byte pieces.
    pub byte_fallback: bool,
    /// The unknown id.
    pub unk_id: i32,
    /// The beginning-of-sentence id (-1: none).
    pub bos_id: i32,
    /// The end-of-sentence id (-1: none).
    pub eos_id: i32,
    /// The padding id (-1: none).
    pub pad_id: i32,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: ModelType::Unigram,
            vocab_size: 8000,
            split_digits: false,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        }
    }
}

/// The `NormalizerSpec` fields the importer uses.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// The rule name (`nmt_nfkc`, `nfkc`, `identity`, ...).
    pub name: String,
    /// The precompiled character map (the compiled normalisation rules), empty when the model
    /// file has none.
    pub precompiled_charsmap: Vec<u8>,
    /// Prepend a space to the text.
    pub add_dummy_prefix: bool,
    /// Strip both ends and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Replace spaces with `▁`.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The parts of a SentencePiece `ModelProto` the importer uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelProto {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// The trainer spec.
    pub trainer_spec: TrainerSpec,
    /// The normalizer spec.
    pub normalizer_spec: NormalizerSpec,
}

fn parse_piece(buf: &[u8]) -> Result<Piece> {
    let mut r = Reader::new(buf);
    let mut piece = None;
    let mut score = 0.0f32;
    let mut kind = PieceType::Normal;
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => piece = Some(as_string(v, "SentencePiece.piece")?),
            2 => match v {
                Value::Fixed32(bits) => score = f32::from_bits(bits),
                _ => return Err(wrong("SentencePiece.score")),
            },
            3 => kind = PieceType::from_code(as_varint(v, "SentencePiece.type")?)?,
            _ => {}
        }
    }
    let piece = piece.ok_or_else(|| TokenizerError::malformed("a piece has no text"))?;
    Ok(Piece { piece, score, kind })
}

fn parse_trainer(buf: &[u8]) -> Result<TrainerSpec> {
    let mut r = Reader::new(buf);
    let mut t = TrainerSpec::default();
    while let Some((field, v)) = r.next_field()? {
        match field {
            3 => {
                t.model_type = match as_varint(v, "TrainerSpec.model_type")? {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    c => return Err(TokenizerError::malformed(format!("unknown model type {c}"))),
                }
            }
            4 => t.vocab_size = as_i32(v, "TrainerSpec.vocab_size")?,
            25 => t.split_digits = as_bool(v, "TrainerSpec.split_digits")?,
            35 => t.byte_fallback = as_bool(v, "TrainerSpec.byte_fallback")?,
            40 => t.unk_id = as_i32(v, "TrainerSpec.unk_id")?,
            41 => t.bos_id = as_i32(v, "TrainerSpec.bos_id")?,
            42 => t.eos_id = as_i32(v, "TrainerSpec.eos_id")?,
            43 => t.pad_id = as_i32(v, "TrainerSpec.pad_id")?,
            _ => {}
        }
    }
    Ok(t)
}

fn parse_normalizer(buf: &[u8]) -> Result<NormalizerSpec> {
    let mut r = Reader::new(buf);
    let mut n = NormalizerSpec::default();
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => n.name = as_string(v, "NormalizerSpec.name")?,
            2 => n.precompiled_charsmap = as_bytes(v, "NormalizerSpec.precompiled_charsmap")?.to_vec(),
            3 => n.add_dummy_prefix = as_bool(v, "NormalizerSpec.add_dummy_prefix")?,
            4 => n.remove_extra_whitespaces = as_bool(v, "NormalizerSpec.remove_extra_whitespaces")?,
            5 => n.escape_whitespaces = as_bool(v, "NormalizerSpec.escape_whitespaces")?,
            _ => {}
        }
    }
    Ok(n)
}

impl ModelProto {
    /// Parses a serialized `ModelProto`. Never panics; malformed bytes give
    /// [`TokenizerError::MalformedModel`].
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let mut m = ModelProto::default();
        while let Some((field, v)) = r.next_field()? {
            match field {
                1 => m.pieces.push(parse_piece(as_bytes(v, "ModelProto.pieces")?)?),
                2 => m.trainer_spec = parse_trainer(as_bytes(v, "ModelProto.trainer_spec")?)?,
                3 => m.normalizer_spec = parse_normalizer(as_bytes(v, "ModelProto.normalizer_spec")?)?,
                _ => {}
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_all_wire_types() {
        // field 1 varint 300, field 2 fixed64, field 3 bytes "ab", field 4 fixed32
        let mut buf = vec![0x08, 0xAC, 0x02, 0x11];
        buf.extend_from_slice(&7u64.to_le_bytes());
        buf.extend_from_slice(&[0x1A, 2, b'a', b'b', 0x25]);
        buf.extend_from_slice(&9u32.to_le_bytes());
        let mut r = Reader::new(&buf);
        assert_eq!(r.next_field().unwrap(), Some((1, Value::Varint(300))));
        assert_eq!(r.next_field().unwrap(), Some((2, Value::Fixed64(7))));
        assert_eq!(r.next_field().unwrap(), Some((3, Value::Bytes(b"ab"))));
        assert_eq!(r.next_field().unwrap(), Some((4, Value::Fixed32(9))));
        assert_eq!(r.next_field().unwrap(), None);
    }

    #[test]
    fn truncated_and_bad_inputs_are_errors() {
        assert!(Reader::new(&[0x08]).next_field().is_err());
        assert!(Reader::new(&[0x0A, 5, 1]).next_field().is_err());
        assert!(Reader::new(&[0x0B]).next_field().is_err()); // wire type 3 (groups)
        assert!(Reader::new(&[0xFF; 11]).varint().is_err());
        assert!(ModelProto::parse(&[0x0A, 2, 0x10, 1]).is_err()); // piece without text
    }

    #[test]
    fn negative_int32_and_defaults() {
        // trainer_spec { pad_id: -1 (10-byte varint) }
        let mut t = vec![0xD8, 0x02];
        t.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        let mut buf = vec![0x12, t.len() as u8];
        buf.extend_from_slice(&t);
        let m = ModelProto::parse(&buf).unwrap();
        assert_eq!(m.trainer_spec.pad_id, -1);
        assert_eq!(m.trainer_spec.model_type, ModelType::Unigram);
        assert!(m.normalizer_spec.add_dummy_prefix);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ModelProto::parse(&bytes);
            let mut r = Reader::new(&bytes);
            while let Ok(Some(_)) = r.next_field() {}
        }

        #[test]
        fn structured_garbage_never_panics(
            parts in proptest::collection::vec((1u8..31, 0u8..6, proptest::collection::vec(any::<u8>(), 0..20)), 0..30),
            cut in any::<usize>(),
        ) {
            let mut buf = Vec::new();
            for (field, wire, body) in parts {
                buf.push((field << 3) | (wire & 7));
                if wire == 2 { buf.push(body.len() as u8); }
                buf.extend_from_slice(&body);
            }
            let _ = ModelProto::parse(&buf);
            let cut = if buf.is_empty() { 0 } else { cut % buf.len() };
            let _ = ModelProto::parse(&buf[..cut]);
        }
    }
}
