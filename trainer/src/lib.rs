//! The `polylm` trainer: data shards, language curriculum, AdamW, checkpoints, evaluation and
//! SFT. It is the top of the stack: kernels → engine → model → trainer; the `polylm` binary
//! (`src/main.rs`) is its command line.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod choice;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod jsonl;
pub mod metrics;
pub mod plot;
pub mod run_lock;
pub mod schedule;
pub mod setup;
pub mod sft;
pub mod tokenizer;
pub mod train;

pub use config::RunConfig;
pub use error::{Result, TrainError};
pub mod bench;
