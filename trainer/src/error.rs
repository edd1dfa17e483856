//! The trainer's errors: each names the file, field or value at fault.

use std::path::PathBuf;

/// Everything that can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config file that cannot be read, parsed or accepted.
    #[error("config {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A checkpoint that is missing pieces, truncated or inconsistent with the run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Data shards, curriculum or validation.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// SFT data.
    #[error(transparent)]
    Sft(#[from] crate::sft::SftError),
    /// Multiple-choice data.
    #[error(transparent)]
    Choice(#[from] crate::choice::ChoiceError),
    /// The model (shapes, ids, checkpoint tensors).
    #[error(transparent)]
    Model(#[from] polylm_model::ModelError),
    /// The engine (devices, ops).
    #[error(transparent)]
    Engine(#[from] polylm_engine::Error),
    /// The tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] polylm_tokenizer::TokenizerError),
    /// The CUDA backend outside a run (compiling kernels ahead of time).
    #[error(transparent)]
    Cuda(#[from] polylm_kernels::cuda::CudaError),
    /// Data-parallel training: the rendezvous, a collective, the launcher.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// Too many non-finite steps with no checkpoint to roll back to.
    #[error("{0}")]
    Diverged(String),
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
}

/// The trainer's result type.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Wraps an I/O error with its path.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
