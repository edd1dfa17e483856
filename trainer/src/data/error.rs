//! The typed error of the data subsystem: every variant names the file, line, field, stage or
//! value at fault.

use std::path::PathBuf;

/// An error from preparing, opening, sampling or evaluating data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory that could not be read, written or listed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A shard or manifest that is truncated, has a bad magic, version or checksum, or holds a
    /// value out of bounds.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSONL line that is not valid JSON (or has a field of the wrong type).
    #[error("{path}:{line}: invalid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A line that is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A JSONL object without a required field.
    #[error("{path}:{line}: missing field {field:?}")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The missing field.
        field: &'static str,
    },
    /// The dataset was prepared with another tokenizer than the one given.
    #[error(
        "the data in {data_dir} was prepared with tokenizer {expected}, but the tokenizer given is {found}; \
         run `polylm data prepare` again with this tokenizer"
    )]
    TokenizerMismatch {
        /// The dataset directory.
        data_dir: PathBuf,
        /// The fingerprint (and vocabulary size) recorded in the manifest.
        expected: String,
        /// The fingerprint (and vocabulary size) of the tokenizer given.
        found: String,
    },
    /// A language that the dataset (or the input directory) does not have in a split.
    #[error("language {lang:?} is not in the {split:?} split")]
    MissingLanguage {
        /// The language code.
        lang: String,
        /// The split (`train`, `valid`, `pairs`, or an input directory).
        split: String,
    },
    /// A curriculum that cannot be used (the message names the stage and the field).
    #[error("invalid curriculum: {0}")]
    BadCurriculum(String),
    /// No data where some is needed (an empty input directory, a split without documents).
    #[error("no data: {0}")]
    NoData(String),
    /// A token id outside the vocabulary.
    #[error("{path}: document {doc} holds token id {id}, outside the vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// The shard (or the shard being written).
        path: PathBuf,
        /// The document index.
        doc: usize,
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: u32,
    },
    /// A sampler state that does not fit this dataset, curriculum or sequence length.
    #[error("cannot restore the sampler: {0}")]
    BadState(String),
    /// An argument that cannot be used (a zero sequence length, a tokenizer without `</s>`, ...).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// An error from the model while evaluating.
    #[error(transparent)]
    Model(#[from] polylm_model::ModelError),
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io { path: path.into(), source }
    }

    /// A [`DataError::Corrupt`] for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> DataError {
        DataError::Corrupt { path: path.into(), reason: reason.into() }
    }
}

/// The data subsystem's result type.
pub type Result<T> = std::result::Result<T, DataError>;
