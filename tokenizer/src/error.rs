//! The typed error of the tokenizer crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading corpora, training, loading or decoding.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A corpus file holds bytes that are not valid UTF-8.
    #[error("invalid UTF-8 in {path} at line {line}")]
    InvalidUtf8 {
        /// The corpus file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
    /// A `.jsonl` corpus line is not a JSON object with a string `"text"` field.
    #[error("bad JSON in {path} at line {line}: {message}")]
    BadJsonLine {
        /// The corpus file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// Training was given no text (or text that yields no words).
    #[error("empty corpus: {0}")]
    EmptyCorpus(String),
    /// The corpus holds more distinct word symbols than training can index (`u32` positions).
    #[error("corpus too large to train on: {symbols} symbols in {words} distinct words (the limit is 2^32 - 1 of each)")]
    CorpusTooLarge {
        /// Symbols (characters of distinct words, plus one separator per word).
        symbols: usize,
        /// Distinct words.
        words: usize,
    },
    /// The requested vocabulary cannot even hold the special and byte tokens.
    #[error("vocab size {requested} is too small: the {specials} special tokens and 256 byte tokens need at least {minimum}")]
    VocabTooSmall {
        /// The requested vocabulary size.
        requested: usize,
        /// The number of special tokens.
        specials: usize,
        /// The smallest allowed vocabulary size.
        minimum: usize,
    },
    /// A training configuration value is out of range.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// A model file (or in-memory model description) is malformed or truncated.
    #[error("malformed model file{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    MalformedModel {
        /// The file, when the model came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
    /// `decode` was given a token id outside the vocabulary.
    #[error("token id {id} is out of range (vocab size {vocab_size})")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// `decode` was given an id inside the vocabulary's range that names no token (a
    /// `tokenizer.json` whose ids have gaps).
    #[error("token id {id} names no token (the vocabulary's ids have gaps; size {vocab_size})")]
    IdUnassigned {
        /// The offending id.
        id: u32,
        /// The vocabulary size (one more than the largest id).
        vocab_size: usize,
    },
    /// An I/O error on a named path.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TokenizerError {
    /// A [`TokenizerError::MalformedModel`] without a path.
    pub fn malformed(message: impl Into<String>) -> Self {
        TokenizerError::MalformedModel { path: None, message: message.into() }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TokenizerError::Io { path: path.into(), source }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TokenizerError>;
