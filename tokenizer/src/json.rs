//! The versioned `polylm-bpe` JSON model file.
//!
//! ```json
//! {"format": "polylm-bpe", "version": 1, "normalizer": "nfkc", "add_dummy_prefix": true,
//!  "specials": ["<unk>", "<s>", "</s>", "<pad>"],
//!  "vocab": ["<unk>", ..., "<0x00>", ..., "▁the", ...],
//!  "merges": [["▁", "t"], ...]}
//! ```
//!
//! `vocab` lists every piece in id order (specials, then the 256 byte tokens, then the normal
//! pieces); `merges` lists the merges in rank order. Saving is atomic (temp file, then rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encode::Tokenizer;
use crate::error::{Result, TokenizerError};
use crate::model::{byte_piece, BpeModel, NUM_BYTE_TOKENS};
use crate::normalize::{Normalizer, NormalizerKind};

/// The `format` field of our model files.
pub const FORMAT: &str = "polylm-bpe";
/// The current `version` field.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    version: u32,
    normalizer: NormalizerKind,
    add_dummy_prefix: bool,
    specials: Vec<String>,
    vocab: Vec<String>,
    merges: Vec<(String, String)>,
}

/// Serialise a model to the JSON format.
pub fn to_json_string(model: &BpeModel) -> String {
    let n = model.normalizer();
    let file = ModelFile {
        format: FORMAT.to_string(),
        version: VERSION,
        normalizer: n.kind,
        add_dummy_prefix: n.add_dummy_prefix,
        specials: model.specials().to_vec(),
        vocab: model.pieces().to_vec(),
        merges: model.merge_strings(),
    };
    serde_json::to_string(&file).expect("serialising strings and numbers cannot fail")
}

/// Parse a model from JSON text, checking format, version and consistency.
pub fn from_json_str(text: &str) -> Result<BpeModel> {
    let file: ModelFile = serde_json::from_str(text).map_err(|e| {
        // Another format's file is named as such rather than reported field by field.
        let value = serde_json::from_str::<serde_json::Value>(text).ok();
        let format = value.as_ref().and_then(|v| v.get("format")).and_then(|f| f.as_str());
        match (value.as_ref().and_then(|v| v.get("model")), format) {
            (Some(_), None) => TokenizerError::malformed(format!(
                "this is a Hugging Face tokenizer.json, not polylm's own {FORMAT:?} format (the \
                 `tokenizer` commands read both; training needs a tokenizer trained by \
                 `polylm tokenizer train`)"
            )),
            (_, Some(f)) if f != FORMAT => {
                TokenizerError::malformed(format!("format is {f:?}, expected {FORMAT:?}"))
            }
            _ => TokenizerError::malformed(format!("invalid JSON: {e}")),
        }
    })?;
    if file.format != FORMAT {
        return Err(TokenizerError::malformed(format!("format is {:?}, expected {FORMAT:?}", file.format)));
    }
    if file.version != VERSION {
        return Err(TokenizerError::malformed(format!(
            "unsupported version {} (this build reads version {VERSION})",
            file.version
        )));
    }
    let s = file.specials.len();
    if file.vocab.len() < s + NUM_BYTE_TOKENS {
        return Err(TokenizerError::malformed(format!(
            "vocab has {} pieces, fewer than the {} specials and 256 byte tokens",
            file.vocab.len(),
            s
        )));
    }
    if file.vocab[..s] != file.specials[..] {
        return Err(TokenizerError::malformed("vocab does not start with the special tokens"));
    }
    for b in 0..=255u8 {
        if file.vocab[s + b as usize] != byte_piece(b) {
            return Err(TokenizerError::malformed(format!(
                "vocab id {} should be {}",
                s + b as usize,
                byte_piece(b)
            )));
        }
    }
    let mut vocab = file.vocab;
    let normal = vocab.split_off(s + NUM_BYTE_TOKENS);
    BpeModel::new(
        Normalizer::new(file.normalizer, file.add_dummy_prefix),
        file.specials,
        normal,
        &file.merges,
    )
}

/// Save a model atomically: write `<path>.tmp.<pid>` next to it, sync, then rename over `path`.
pub fn save(model: &BpeModel, path: impl AsRef<Path>) -> Result<()> {
    write_atomic(path.as_ref(), to_json_string(model).as_bytes())
}

/// Write `bytes` to `path` atomically (a temporary file next to it, synced, then renamed).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(TokenizerError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TokenizerError::io(path, e)
    })
}

/// Load a model file (see [`from_json_str`]); errors name the file.
pub fn load(path: impl AsRef<Path>) -> Result<BpeModel> {
    load_text_file(path.as_ref(), from_json_str)
}

/// Reads a UTF-8 model file and parses it with `parse`; errors (I/O, encoding, malformed
/// content) name the file.
pub(crate) fn load_text_file<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    let with_path = |e: TokenizerError| match e {
        TokenizerError::MalformedModel { message, .. } => {
            TokenizerError::MalformedModel { path: Some(path.to_path_buf()), message }
        }
        other => other,
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| with_path(TokenizerError::malformed(format!("not UTF-8: {e}"))))?;
    parse(text).map_err(with_path)
}

impl Tokenizer {
    /// Save the model (see [`save`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save(self.model(), path)
    }

    /// Load a model file into a tokenizer (see [`load`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        load(path).map(Tokenizer::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{train, LanguageCorpus, TrainConfig};

    fn model() -> BpeModel {
        let c = vec![LanguageCorpus::new("en", vec!["hello hello world 42 ok".into(); 3])];
        train(&c, &TrainConfig { vocab_size: 290, ..Default::default() }).unwrap()
    }

    #[test]
    fn json_roundtrip_and_file() {
        let m = model();
        let text = to_json_string(&m);
        let back = from_json_str(&text).unwrap();
        assert_eq!(back.pieces(), m.pieces());
        assert_eq!(back.merges(), m.merges());
        assert_eq!(back.normalizer(), m.normalizer());
        let dir = std::env::temp_dir().join(format!("polylm-tok-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.json");
        save(&m, &path).unwrap();
        assert_eq!(load(&path).unwrap().pieces(), m.pieces());
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, TokenizerError::MalformedModel { path: Some(_), .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_wrong_header() {
        let text = to_json_string(&model());
        assert!(from_json_str(&text.replace("polylm-bpe", "other")).is_err());
        assert!(from_json_str(&text.replace("\"version\":1", "\"version\":2")).is_err());
        assert!(from_json_str(&text.replace("<0x41>", "<0x42>")).is_err());
        assert!(from_json_str("{}").is_err());
        let hf = r#"{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}"#;
        let msg = from_json_str(hf).unwrap_err().to_string();
        assert!(msg.contains("Hugging Face tokenizer.json"), "{msg}");
        let msg = from_json_str(r#"{"format": "other", "version": 1}"#).unwrap_err().to_string();
        assert!(msg.contains("format is \"other\""), "{msg}");
        assert!(from_json_str("").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Cut or corrupted model files give a typed error (or a valid model), never a panic.
        #[test]
        fn corrupted_files_never_panic(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 0u8..128), 0..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let text = TEXT.get_or_init(|| to_json_string(&model()));
            let mut bytes = text.as_bytes().to_vec();
            let len = bytes.len();
            for (pos, val) in flips {
                bytes[pos % len] = val;
            }
            let cut = cut % (len + 1);
            if let Ok(s) = std::str::from_utf8(&bytes[..cut]) {
                if let Ok(m) = from_json_str(s) {
                    let t = Tokenizer::new(m);
                    let _ = t.decode(&t.encode("hello 42 мир"));
                }
            }
        }

        /// Random text never panics the parser.
        #[test]
        fn random_text_never_panics(s in "\\PC{0,300}") {
            let _ = from_json_str(&s);
        }
    }
}
