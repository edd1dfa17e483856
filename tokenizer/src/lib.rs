//! The multilingual BPE tokenizer of PolyLM (digits split, byte fallback, language-balanced
//! vocabulary).
//!
//! This crate stands apart from the compute stack (it depends on nothing else here). It is a
//! from-scratch byte-fallback BPE in the style of SentencePiece:
//!
//! - [`normalize`]: Unicode normalisation (none / NFC / NFKC) and the `▁` word-start meta symbol;
//! - [`pretokenize`]: splitting normalised text into words that merges never cross (digits alone);
//! - [`model`]: the vocabulary, special tokens, byte tokens and the ranked merge list;
//! - [`mod@train`]: language-balanced BPE training with character coverage;
//! - [`encode`]: the [`Tokenizer`] (exact merge-rank encoding, word cache, batch encoding, decode);
//! - [`json`]: the versioned `polylm-bpe` JSON model file;
//! - [`corpus`]: reading `.jsonl` / `.txt` corpora;
//! - [`sentencepiece`]: importing SentencePiece `.model` files (BPE and unigram);
//! - [`hf`]: Hugging Face `tokenizer.json` (BPE, byte-level or SentencePiece style) import and
//!   export, and GPT-2's `encoder.json` + `vocab.bpe`;
//! - [`bytelevel`]: the GPT-2 byte map and pre-tokenizer;
//! - [`error`]: the typed [`TokenizerError`];
//! - [`cli`]: the `tokenizer` command line (train, encode, decode, stats, export-hf) as a
//!   library, so other binaries can embed its subcommands.
#![warn(missing_docs)]

pub mod bytelevel;
mod cache;
pub mod cli;
pub mod corpus;
pub mod encode;
pub mod error;
mod hash;
pub mod hf;
pub mod json;
mod lattice;
mod merge;
pub mod model;
pub mod normalize;
pub mod pretokenize;
pub mod sentencepiece;
pub mod train;

pub use encode::Tokenizer;
pub use error::{Result, TokenizerError};
pub use hf::HfTokenizer;
pub use model::BpeModel;
pub use normalize::{Normalizer, NormalizerKind, META};
pub use sentencepiece::SentencePieceModel;
pub use train::{train, LanguageCorpus, TrainConfig};
