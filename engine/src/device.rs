//! Where a tensor lives.

use std::fmt;

use crate::{Error, Result};

/// A compute device. Tensors live on the CPU so far; the CUDA kernels exist
/// (`polylm_kernels::cuda`) but the engine's GPU storage does not yet, so asking for a CUDA
/// device gives a clear error that says whether a GPU is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU (rayon thread pool, SIMD kernels).
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal.
    Cuda(usize),
}

impl Device {
    /// The CUDA device `ordinal`, or an error saying why it cannot be used.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        let reason = match polylm_kernels::cuda::CudaDevice::new(ordinal) {
            Err(e) => e.to_string(),
            Ok(gpu) => format!(
                "{} is present, but tensors cannot live on a GPU yet (the CUDA kernels are in \
                 polylm_kernels::cuda; the engine's GPU storage is not built); use Device::Cpu",
                gpu.name()
            ),
        };
        Err(Error::DeviceUnavailable { device: Device::Cuda(ordinal), reason })
    }

    /// Whether this is the CPU.
    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
