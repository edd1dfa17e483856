//! Loading a model of any format, and file and stdout helpers with one-line error messages.

use std::io::{Read, Write};
use std::path::Path;

use crate::{json, HfTokenizer, SentencePieceModel, Tokenizer, TokenizerError};
use rayon::prelude::*;

use super::{CliError, CliResult};

/// A model of any format the CLI reads.
pub enum AnyModel {
    /// Our `polylm-bpe` JSON.
    Ours(Tokenizer),
    /// A SentencePiece `.model` (protobuf).
    SentencePiece(Box<SentencePieceModel>),
    /// A Hugging Face `tokenizer.json` (BPE or Unigram).
    Hf(HfTokenizer),
}

impl AnyModel {
    /// Load a model file of any format (see [`load_any`]); errors name the file.
    pub fn load(path: &Path) -> CliResult<AnyModel> {
        load_any(path)
    }

    /// Text to ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            AnyModel::Ours(t) => t.encode(text),
            AnyModel::SentencePiece(m) => m.encode(text),
            AnyModel::Hf(h) => h.encode(text),
        }
    }

    /// Many texts to ids, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        match self {
            AnyModel::Ours(t) => t.encode_batch(texts),
            AnyModel::Hf(h) => h.encode_batch(texts),
            AnyModel::SentencePiece(_) => texts.par_iter().map(|t| self.encode(t.as_ref())).collect(),
        }
    }

    /// Ids to text.
    pub fn decode(&self, ids: &[u32]) -> CliResult<String> {
        Ok(match self {
            AnyModel::Ours(t) => t.decode(ids)?,
            AnyModel::SentencePiece(m) => m.decode(ids)?,
            AnyModel::Hf(h) => h.decode(ids, true)?,
        })
    }

    /// Number of ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            AnyModel::Ours(t) => t.vocab_size(),
            AnyModel::SentencePiece(m) => m.vocab_size(),
            AnyModel::Hf(h) => h.vocab_size(),
        }
    }

    /// The id of `<s>` (`bos`) or `</s>` (`!bos`), if the model has one.
    pub fn boundary_id(&self, bos: bool) -> Option<u32> {
        let name = if bos { "<s>" } else { "</s>" };
        match self {
            AnyModel::Ours(t) => t.model().special_id(name),
            AnyModel::SentencePiece(m) => {
                let spec = &m.proto().trainer_spec;
                let id = if bos { spec.bos_id } else { spec.eos_id };
                u32::try_from(id).ok()
            }
            AnyModel::Hf(h) => h.token_to_id(name).or_else(|| h.token_to_id("<|endoftext|>")),
        }
    }
}

/// Load a model file of any format: our JSON (`"format": "polylm-bpe"`), a Hugging Face
/// `tokenizer.json` (any other JSON object), or a SentencePiece `.model` (anything else).
/// Errors name the file.
pub fn load_any(path: &Path) -> CliResult<AnyModel> {
    if !path.exists() {
        return Err(CliError(format!("model file {} does not exist", path.display())));
    }
    let bytes = std::fs::read(path).map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
    any_from_bytes(path, bytes)
}

/// [`load_any`] on the bytes of the file at `path` (named in errors), already read.
pub fn any_from_bytes(path: &Path, bytes: Vec<u8>) -> CliResult<AnyModel> {
    let name = |e: TokenizerError| match e {
        TokenizerError::MalformedModel { message, .. } => {
            TokenizerError::MalformedModel { path: Some(path.to_path_buf()), message }
        }
        other => other,
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let text = utf8(bytes, path)?;
        if text.contains("\"polylm-bpe\"") {
            return Ok(AnyModel::Ours(Tokenizer::new(json::from_json_str(&text).map_err(name)?)));
        }
        return HfTokenizer::from_json_str(&text).map(AnyModel::Hf).map_err(|e| {
            // A top-level `format` is ours (a `tokenizer.json` has none): say so rather than
            // report what a Hugging Face file would lack.
            match serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("format").cloned())
            {
                Some(format) => CliError(format!(
                    "malformed model file {}: unknown tokenizer format {format} (this build reads \
                     \"polylm-bpe\", Hugging Face tokenizer.json and SentencePiece .model)",
                    path.display()
                )),
                None => name(e).into(),
            }
        });
    }
    if bytes.is_empty() {
        return Err(CliError(format!("model file {} is empty", path.display())));
    }
    SentencePieceModel::from_bytes(&bytes).map(|m| AnyModel::SentencePiece(Box::new(m))).map_err(
        |e| match e {
            TokenizerError::MalformedModel { message, .. } => CliError(format!(
                "malformed model file {}: not JSON, and not a SentencePiece model either ({message})",
                path.display()
            )),
            other => other.into(),
        },
    )
}

/// Load our own model file (JSON); errors name the file.
pub fn load_tokenizer(path: &Path) -> CliResult<Tokenizer> {
    if !path.exists() {
        return Err(CliError(format!("model file {} does not exist", path.display())));
    }
    Ok(Tokenizer::load(path)?)
}

/// Check bytes are UTF-8, naming the file and 1-based line of the first bad byte.
pub fn utf8(bytes: Vec<u8>, path: &Path) -> CliResult<String> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..good].iter().filter(|&&b| b == b'\n').count() + 1;
        CliError(format!("invalid UTF-8 in {} at line {line}", path.display()))
    })
}

/// Read a whole UTF-8 text file.
pub fn read_utf8_file(path: &Path) -> CliResult<String> {
    let bytes = std::fs::read(path).map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
    utf8(bytes, path)
}

/// Read all of stdin as UTF-8.
pub fn read_stdin() -> CliResult<String> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|e| CliError(format!("cannot read stdin: {e}")))?;
    utf8(bytes, Path::new("<stdin>"))
}

/// Buffered stdout that stops quietly when the reader goes away (e.g. `| head`).
pub struct Stdout {
    inner: std::io::BufWriter<std::io::StdoutLock<'static>>,
    closed: bool,
}

impl Default for Stdout {
    fn default() -> Self {
        Stdout::new()
    }
}

impl Stdout {
    /// Lock stdout.
    pub fn new() -> Self {
        Stdout { inner: std::io::BufWriter::new(std::io::stdout().lock()), closed: false }
    }

    fn check(&mut self, r: std::io::Result<()>) -> CliResult<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(CliError(format!("cannot write to stdout: {e}"))),
        }
    }

    /// Write one line.
    pub fn line(&mut self, s: &str) -> CliResult<()> {
        if self.closed {
            return Ok(());
        }
        let r = writeln!(self.inner, "{s}");
        self.check(r)
    }

    /// Flush.
    pub fn finish(mut self) -> CliResult<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.inner.flush();
        self.check(r)
    }
}
