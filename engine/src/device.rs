//! Where a tensor lives.

use std::fmt;

use crate::Result;

/// A compute device: the CPU, or a CUDA GPU (kernels from `polylm_kernels::cuda`). Tensors
/// move with [`crate::Tensor::to_device`]; ops run where their inputs are.
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
        crate::cuda::gpu(ordinal).map(|_| Device::Cuda(ordinal))
    }

    /// The first CUDA GPU when there is one, else the CPU.
    pub fn best_available() -> Device {
        Device::cuda(0).unwrap_or(Device::Cpu)
    }

    /// The GPU allocator's counters (in use, reserved, their peaks); `None` for the CPU or a
    /// GPU not opened yet.
    pub fn memory_report(self) -> Option<polylm_kernels::cuda::MemoryReport> {
        match self {
            Device::Cpu => None,
            Device::Cuda(i) => crate::cuda::gpu(i).ok().map(|d| d.memory_report()),
        }
    }

    /// Resets the GPU allocator's peak counters to the current use (a no-op on the CPU).
    pub fn reset_peak_memory(self) {
        if let Device::Cuda(i) = self {
            if let Ok(d) = crate::cuda::gpu(i) {
                d.reset_peak_memory();
            }
        }
    }

    /// Waits for the GPU's queued work (a no-op on the CPU); for timing.
    pub fn synchronize(self) -> Result<()> {
        if let Device::Cuda(i) = self {
            crate::cuda::gpu(i)?.synchronize().map_err(crate::cuda::cuda_err("synchronize"))?;
        }
        Ok(())
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
