//! `manifest.json`: what a prepared dataset holds (tokenizer, sources, shards per split).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};
use super::shard::write_atomic;

/// The `format` value of every manifest.
pub const MANIFEST_FORMAT: &str = "polylm-data";
/// The manifest version this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The tokenizer a dataset was prepared with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// FNV-1a 64 (hex) of the tokenizer's JSON model (see [`tokenizer_fingerprint`]).
    pub fingerprint: String,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Id of the end-of-sequence token `</s>` that separates packed documents.
    pub eos_id: u32,
}

/// One shard of a split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// Language code (`en`), or `src-tgt` for the bilingual `pairs` split.
    pub lang: String,
    /// File name relative to the dataset directory (`train/en.bin`).
    pub file: String,
    /// Documents.
    pub docs: u64,
    /// Tokens (separators not included).
    pub tokens: u64,
    /// UTF-8 bytes of the documents' source text.
    pub bytes: u64,
}

/// The description of a prepared dataset, written last (atomically) by `data prepare`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"polylm-data"`.
    pub format: String,
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The tokenizer the shards were encoded with.
    pub tokenizer: TokenizerInfo,
    /// Source names; a document's source id indexes this list.
    pub sources: Vec<String>,
    /// Shards per split (`train`, `valid`, `pairs`), sorted by language.
    pub splits: BTreeMap<String, Vec<ShardInfo>>,
}

impl Manifest {
    /// Reads and checks (format, version) a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::corrupt(path, format!("invalid manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(DataError::corrupt(
                path,
                format!("format {:?}, expected {MANIFEST_FORMAT:?}", m.format),
            ));
        }
        if m.version != MANIFEST_VERSION {
            return Err(DataError::corrupt(
                path,
                format!("version {}, this build reads {MANIFEST_VERSION}", m.version),
            ));
        }
        Ok(m)
    }

    /// Writes the manifest atomically (pretty JSON).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| DataError::BadInput(format!("cannot serialise the manifest: {e}")))?;
        write_atomic(path, text.as_bytes())
    }

    /// The shards of a split (empty when the split is absent).
    pub fn split(&self, split: &str) -> &[ShardInfo] {
        self.splits.get(split).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The tokenizer's fingerprint: FNV-1a 64, as 16 hex digits, of its JSON model
/// ([`polylm_tokenizer::json::to_json_string`]).
pub fn tokenizer_fingerprint(t: &polylm_tokenizer::Tokenizer) -> String {
    format!("{:016x}", fnv1a64(polylm_tokenizer::json::to_json_string(t.model()).as_bytes()))
}
