//! The multilingual BPE tokenizer of PolyLM (digits split, byte fallback, 256K vocabulary).
//!
//! This crate stands apart from the compute stack (it depends on nothing else here). It is
//! reserved by the workspace layout; the tokenizer lands with its own issue.
