//! The PolyLM model (GPT-2 layout, 256,000-token vocabulary) built on `polylm-engine`.
//!
//! - [`ModelConfig`]: hyper-parameters, presets (`tiny`, `small`, `polylm-1.7b`,
//!   `polylm-13b`), TOML and Hugging Face `config.json` forms, exact parameter counts.
//! - [`Gpt`]: parameters ([`Params`], Hugging Face names), the training forward pass into the
//!   fused cross-entropy, backward with optional per-block activation recomputation.
//! - [`KvCache`] and [`Gpt::generate`]: incremental decoding of batched prompts of different
//!   lengths with greedy, temperature, top-k, top-p and repetition-penalty sampling.
//! - [`safetensors`] and [`checkpoint`]: our own memory-mapped safetensors reader and atomic
//!   writer, and the `GPT2LMHeadModel` checkpoint layout with its `config.json`;
//!   [`weights`] and [`pytorch`]: checkpoints as the Hub ships them (safetensors or PyTorch
//!   `pytorch_model.bin`, whole or sharded), read without Python and without running pickles.
//!
//! ```
//! use polylm_engine::DType;
//! use polylm_model::{checkpoint, Batch, Gpt, ModelConfig, SamplingParams};
//!
//! let mut cfg = ModelConfig::preset("tiny")?;        // or "small", "polylm-1.7b", a TOML file, a config.json
//! cfg.vocab_size = 64;
//! let model = Gpt::new(cfg, DType::F32, 0)?;          // spec init: std 0.006, residual projections scaled
//! // One training step's forward + backward (targets: next tokens); gradients land in .grad().
//! let (ids, targets) = ([1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]);
//! let loss = model.forward_backward(&Batch { ids: &ids, batch: 2, seq: 3 }, &targets, None, false)?;
//! assert!((loss - (64f64).ln()).abs() < 0.1);
//! // Generation with the KV cache: prompts of different lengths, top-p sampling.
//! let params = SamplingParams { temperature: 0.7, top_p: 0.8, repetition_penalty: 1.02, max_new_tokens: 5, ..Default::default() };
//! let out = model.generate(&[vec![1, 2, 3], vec![9]], &params)?;
//! assert_eq!(out[0].tokens.len(), 5);
//! // A Hugging Face GPT2LMHeadModel checkpoint: model.safetensors + config.json.
//! let dir = std::env::temp_dir().join("polylm-doc-example");
//! checkpoint::save(&model, &dir, DType::BF16)?;
//! let back = checkpoint::load(&dir, DType::F32)?;
//! assert_eq!(back.config(), model.config());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), polylm_model::ModelError>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
mod config;
mod error;
mod generate;
mod gpt;
pub mod hf_config;
mod infer;
mod kv_cache;
mod params;
pub mod pytorch;
pub mod safetensors;
mod sampling;
pub mod weights;

pub use config::{ModelConfig, PRESETS};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, Generation};
pub use gpt::{Batch, Gpt, HEAD_CHUNKS};
pub use infer::LogitRows;
pub use kv_cache::KvCache;
pub use params::{param_specs, BlockParams, Params, BLOCK_NAMES};
pub use sampling::{Sampler, SamplingParams};
