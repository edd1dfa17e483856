//! Where a tensor lives.

use std::fmt;

use crate::{Error, Result};

/// A compute device. Only the CPU is implemented so far; the CUDA variant exists so that the
/// rest of the API already carries device information, and asking for it gives a clear error.
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
        Err(Error::DeviceUnavailable {
            device: Device::Cuda(ordinal),
            reason: "this build has no CUDA backend yet; use Device::Cpu".into(),
        })
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
