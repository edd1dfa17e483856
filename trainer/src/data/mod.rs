//! Token shards, data preparation, packing and the language curriculum.
//!
//! - [`shard`]: the binary token shard (u16 or u32 tokens, per-document index, checksum),
//!   written atomically and read through a validated memory map;
//! - [`input`]: the inputs of `data prepare` (per-language files or folders of parts, plain or
//!   gzip), streamed as documents and bilingual pairs;
//! - [`prepare`](mod@prepare): `polylm data prepare`, per-language text/JSONL (and bilingual pairs) →
//!   shards and a [`Manifest`];
//! - [`dataset`]: a prepared directory opened as a [`Dataset`];
//! - [`curriculum`]: stages of language mixtures ([`StageConfig`] from the run's TOML →
//!   [`Curriculum`]);
//! - [`sampler`]: packed, language-mixed, deterministic and resumable batches
//!   ([`BatchSampler`], [`SamplerState`]);
//! - [`valid`]: per-language validation loss and bits per byte ([`validate`]);
//! - [`error`]: the typed [`DataError`].

pub mod curriculum;
pub mod dataset;
pub mod error;
pub mod input;
pub mod manifest;
pub mod prepare;
pub mod sampler;
pub mod shard;
pub mod valid;

pub use curriculum::{Curriculum, StageConfig, StageStart};
pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use manifest::{tokenizer_fingerprint, Manifest, ShardInfo, TokenizerInfo};
pub use prepare::{prepare, PrepareOptions};
pub use sampler::{BatchSampler, SamplerState, SplitMix64, StreamCursor, TrainBatch};
pub use shard::{write_shard, DocMeta, Shard, ShardTotals, ShardWriter};
pub use valid::{validate, LangEval};
