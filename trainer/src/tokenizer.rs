//! The tokenizer of a run: ours (trained by `polylm tokenizer train` or by the run itself), or a
//! released model's own (a SentencePiece `.model` such as PolyLM's, or a Hugging Face
//! `tokenizer.json`), so that data can be prepared, a checkpoint fine-tuned and SFT run with
//! the tokenizer the checkpoint was trained with.
//!
//! [`RunTokenizer::fingerprint`] identifies it in the data manifest: for ours, FNV-1a 64 of its
//! JSON model (as before); for the others, FNV-1a 64 of the file's bytes.

use std::path::Path;

use polylm_tokenizer::cli::{any_from_bytes, AnyModel};
use polylm_tokenizer::Tokenizer;

use crate::checkpoint::{SENTENCEPIECE_TOKENIZER_FILE, TOKENIZER_FILE};
use crate::data::manifest::{fnv1a64, tokenizer_fingerprint};
use crate::error::{io_err, Result, TrainError};

/// A run's tokenizer, of any format `polylm tokenizer` reads.
pub struct RunTokenizer {
    model: AnyModel,
    fingerprint: String,
}

impl RunTokenizer {
    /// Our own tokenizer.
    pub fn ours(t: Tokenizer) -> RunTokenizer {
        let fingerprint = tokenizer_fingerprint(&t);
        RunTokenizer { model: AnyModel::Ours(t), fingerprint }
    }

    /// Loads `path`: our JSON, a Hugging Face `tokenizer.json` or a SentencePiece `.model`.
    pub fn load(path: &Path) -> Result<RunTokenizer> {
        if !path.exists() {
            return Err(TrainError::Usage(format!("tokenizer {} does not exist", path.display())));
        }
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let fingerprint = format!("{:016x}", fnv1a64(&bytes));
        Ok(match any_from_bytes(path, bytes).map_err(|e| TrainError::Usage(e.0))? {
            AnyModel::Ours(t) => RunTokenizer::ours(t),
            other => RunTokenizer { model: other, fingerprint },
        })
    }

    /// What a checkpoint calls its copy of this tokenizer's file: `tokenizer.model` for a
    /// SentencePiece model, `tokenizer.json` for the JSON formats.
    pub fn file_name(&self) -> &'static str {
        match self.model {
            AnyModel::SentencePiece(_) => SENTENCEPIECE_TOKENIZER_FILE,
            _ => TOKENIZER_FILE,
        }
    }

    /// Text to ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.model.encode(text)
    }

    /// Many texts to ids, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        self.model.encode_batch(texts)
    }

    /// Ids to text (special tokens left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.model.decode(ids).map_err(|e| TrainError::Usage(e.0))
    }

    /// The number of ids.
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// The end-of-sequence id (`</s>`; a SentencePiece model's `eos_id`; `<|endoftext|>` in a
    /// GPT-2 `tokenizer.json`), if there is one.
    pub fn eos(&self) -> Option<u32> {
        self.model.boundary_id(false)
    }

    /// What identifies this tokenizer in a data manifest (see the module docs).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Ours, when it is.
    pub fn as_ours(&self) -> Option<&Tokenizer> {
        match &self.model {
            AnyModel::Ours(t) => Some(t),
            _ => None,
        }
    }

    /// The model, of whichever format.
    pub fn any(&self) -> &AnyModel {
        &self.model
    }
}
