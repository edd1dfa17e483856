//! The PolyLM model (GPT-2 layout, 256,000-token vocabulary) built on `polylm-engine`.
//!
//! This crate is reserved by the workspace layout; the model itself (presets, training
//! forward/backward, KV-cache generation, safetensors checkpoints) lands with its own issue.
//! See `docs/architecture.md` for where it sits.
