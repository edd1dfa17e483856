//! The polylm tensor engine: [`Tensor`]s of f32, f64, bf16 or f16 on a [`Device`], the ops a
//! GPT needs, and reverse-mode automatic differentiation over a dynamic graph.
//!
//! Raw compute lives in `polylm-kernels`; this crate validates arguments (every misuse is an
//! [`Error`], never a panic), picks the kernel for the dtype and device, and records the graph.
//!
//! ```
//! use polylm_engine::{DType, Rng, Tensor};
//! let mut rng = Rng::new(0);
//! let w = Tensor::randn(&[4, 3], 0.1, DType::F32, &mut rng)?.requires_grad();
//! let x = Tensor::randn(&[2, 4], 1.0, DType::F32, &mut rng)?;
//! let loss = x.matmul(&w)?.cross_entropy(&[0, 2], None)?;
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().shape(), &[4, 3]);
//! # Ok::<(), polylm_engine::Error>(())
//! ```

#![warn(missing_docs)]

pub mod autograd;
mod cuda;
mod device;
mod dtype;
mod error;
mod host;
pub mod layout;
mod ops;
pub mod optim;
mod rng;
mod storage;
mod tensor;

pub use autograd::{is_grad_enabled, no_grad, with_no_grad, NoGradGuard};
pub use cuda::{cuda_device, CudaStorage};
pub use device::Device;
pub use dtype::{CpuFloat, DType, WithDType};
pub use error::{Error, Result};
pub use host::tune_host_allocator;
pub use optim::{global_grad_norm, AdamW, AdamWHyper};
pub use polylm_kernels::cuda::{CudaDevice, MemoryReport};
pub use rng::Rng;
pub use storage::{CpuStorage, Storage};
pub use tensor::{Tensor, TensorId};

/// The README's code examples, compiled and run as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
