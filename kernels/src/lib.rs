//! Raw compute kernels of polylm: CPU kernels in `src/`, CUDA kernels and their launch
//! wrappers in `cuda/` (see [`cuda`]).
//!
//! Everything here works on plain slices and knows nothing of tensors, devices or autograd:
//! the engine (`polylm-engine`) validates shapes and ids, then calls in here. One module per
//! op family; each CPU kernel is rayon-parallel and, where it pays, dispatches at run time to
//! AVX-512, AVX2+FMA or a portable path (see [`simd`]).
//!
//! Memory contract: forward kernels write (`=`) their outputs; backward kernels write (`=`)
//! their input gradients unless the function says it accumulates (`+=`), as the embedding
//! scatter-add does. Accumulating gradients across graph edges is the engine's job.

#![warn(missing_docs)]

pub mod adamw;
pub mod attention;
pub mod cast;
pub mod copy;
pub mod cross_entropy;
#[path = "../cuda/mod.rs"]
pub mod cuda;
pub mod elementwise;
pub mod embedding;
mod fastmath;
pub mod float;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod reduce;
pub mod simd;
pub mod softmax;

pub use float::{Elem, Float};
pub use simd::SimdLevel;
