//! The CUDA backend's kernels: CUDA C sources (`*.cu` in this folder) compiled at run time by
//! NVRTC for the device's architecture, and their Rust launch wrappers (the `*.rs` beside each).
//!
//! - [`CudaDevice`] owns a context, one stream, a caching allocator ([`MemoryReport`]), pinned
//!   staging for host-device copies, and the compiled modules.
//! - [`DeviceBuf`] is a typed device buffer; dropping it returns the memory to the cache.
//! - Kernels compute in f32 and store f32, bf16 or f16 ([`FloatElem`]).
//! - [`nvrtc`] compiles a source to a cubin, parses the ptxas resource report and caches cubins
//!   on disk; it needs no GPU, so CI compiles every kernel for Hopper with spills as errors.
//!
//! Without a driver or a GPU, [`CudaDevice::new`] returns [`CudaError`]; nothing panics.

mod alloc;
mod device;
mod error;
pub mod nvrtc;
mod pinned;
pub mod profile;
pub mod source;

pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod flash_attention_hopper;
pub mod flash_layout;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod matmul_tc;
pub mod matmul_wgmma;
pub mod optim;
pub mod softmax;

pub use alloc::{size_class, MemoryReport};
pub use device::{cuda_available, device_count, CudaDevice, DeviceBuf, DeviceElem, FloatElem};
pub use error::{CudaError, CudaResult};
