//! Our own safetensors implementation: the format is an 8-byte little-endian header length,
//! a JSON header mapping each tensor name to `{dtype, shape, data_offsets}` (plus an optional
//! `__metadata__` map of strings), then the raw little-endian tensor bytes.
//!
//! - [`header`]: parsing and validating the header against the file size (never panics,
//!   whatever the bytes: a property test feeds it arbitrary and truncated input).
//! - [`reader`]: a memory-mapped file whose tensors are borrowed slices of the map.
//! - [`writer`]: writing a file atomically (temporary file, fsync, rename).

pub mod header;
pub mod reader;
pub mod writer;

pub use header::{parse, Dtype, Header, TensorInfo};
pub use reader::{MappedFile, TensorView};
pub use writer::{write_file, write_streaming, write_text_atomic, TensorData, TensorSpec};
