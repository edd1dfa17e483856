//! The `polylm` trainer: data shards, language curriculum, AdamW, checkpoints and evaluation.
//!
//! This crate is reserved by the workspace layout; the trainer and its binary land with their
//! own issue. It is the top of the stack: kernels → engine → model → trainer.
