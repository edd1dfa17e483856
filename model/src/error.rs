//! The model's error type: bad configs, bad inputs, bad checkpoints and bad sampling
//! parameters all land here, each naming the offending value.

use std::path::PathBuf;

/// Everything that can go wrong in the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An error from the tensor engine.
    #[error(transparent)]
    Engine(#[from] polylm_engine::Error),
    /// A configuration value that cannot describe a model.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The config field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file that could not be parsed.
    #[error("cannot parse config {path}: {reason}")]
    ConfigParse {
        /// The file (or `<string>` for in-memory text).
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A preset name that does not exist.
    #[error("unknown preset {0:?} (known: tiny, small, polylm-1.7b, polylm-13b)")]
    UnknownPreset(String),
    /// A token id that is not in the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Its position in the flattened input.
        position: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A sequence (or prompt) longer than the model's context.
    #[error("sequence of {len} tokens is longer than the context of {context}")]
    SequenceTooLong {
        /// Tokens given.
        len: usize,
        /// The model's context length.
        context: usize,
    },
    /// Inputs whose shapes do not fit together.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A tokenizer whose vocabulary differs from the model's.
    #[error("tokenizer has {tokenizer} tokens but the model's vocabulary is {model}")]
    VocabMismatch {
        /// The tokenizer's vocabulary size.
        tokenizer: usize,
        /// The model's vocabulary size.
        model: usize,
    },
    /// A sampling parameter out of its domain.
    #[error("invalid sampling parameter {name} = {value}: {reason}")]
    InvalidSampling {
        /// The parameter.
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// The valid domain.
        reason: &'static str,
    },
    /// A safetensors file that is not well formed.
    #[error("{path}: corrupt safetensors file: {reason}")]
    CorruptFile {
        /// The file (or `<bytes>`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A PyTorch checkpoint (`pytorch_model.bin`) that cannot be read.
    #[error("{path}: cannot read PyTorch checkpoint: {reason}")]
    CorruptPytorch {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A sharded checkpoint's index (`*.index.json`) that does not describe its shards.
    #[error("{path}: bad shard index: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint folder without any weights file this crate reads.
    #[error("{dir}: no weights (looked for {looked_for})")]
    NoWeights {
        /// The folder.
        dir: PathBuf,
        /// The file names tried, in order.
        looked_for: String,
    },
    /// A tensor the model needs that the checkpoint lacks.
    #[error("checkpoint is missing tensor {name}")]
    MissingTensor {
        /// The tensor's name.
        name: String,
    },
    /// A config whose layer count disagrees with the blocks the weights file holds.
    #[error("the config has {config} layers but the weights file holds blocks for {file}")]
    LayerCount {
        /// Layers in the config.
        config: usize,
        /// Layers in the weights file (one more than the highest `h.N` index).
        file: usize,
    },
    /// A tensor in the checkpoint that the model does not have.
    #[error("checkpoint has unexpected tensor {name}")]
    UnexpectedTensor {
        /// The tensor's name.
        name: String,
    },
    /// A tensor of the wrong shape.
    #[error("tensor {name}: shape {found:?} in the checkpoint, {expected:?} expected")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor whose dtype cannot be used here.
    #[error("tensor {name}: dtype {dtype} is not supported here ({reason})")]
    TensorDType {
        /// The tensor's name.
        name: String,
        /// The dtype in the file.
        dtype: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// A checkpoint whose language-model head is not tied to the token embedding.
    #[error("lm_head.weight differs from transformer.wte.weight: untied heads are not supported")]
    UntiedHead,
    /// An I/O failure, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The model crate's result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Wraps an I/O error with its path.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}
