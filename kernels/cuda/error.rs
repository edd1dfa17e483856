//! The errors of the CUDA backend.

use std::path::PathBuf;

use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;

/// Everything that can go wrong on the CUDA path. No CUDA call panics: a missing driver, a
/// missing GPU or a failed compile all come back as one of these.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda.so` could not be loaded: there is no NVIDIA driver on this machine.
    #[error("the CUDA driver library (libcuda.so) was not found: this machine has no NVIDIA driver")]
    DriverMissing,
    /// `libnvrtc.so` could not be loaded, so kernels cannot be compiled.
    #[error(
        "NVRTC (libnvrtc.so.13) was not found: put a CUDA 13 library folder on LD_LIBRARY_PATH \
         (see docs/cuda.md)"
    )]
    NvrtcMissing,
    /// The driver is present but the requested device is not.
    #[error("CUDA device {ordinal} is not available: {reason}")]
    NoDevice {
        /// The device index asked for.
        ordinal: usize,
        /// What the driver said.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver call failed while {action}: {source}")]
    Driver {
        /// What the backend was doing.
        action: &'static str,
        /// The driver's error.
        source: DriverError,
    },
    /// An NVRTC API call failed outside of compilation proper.
    #[error("NVRTC call failed while {action}: {source}")]
    Nvrtc {
        /// What the backend was doing.
        action: &'static str,
        /// NVRTC's error.
        source: NvrtcError,
    },
    /// A kernel source did not compile (or spilled registers where spills are errors).
    #[error("kernel source `{source_name}` did not compile for {arch}:\n{log}")]
    Compile {
        /// The kernel file.
        source_name: String,
        /// The target architecture, such as `sm_90`.
        arch: String,
        /// NVRTC's and ptxas's log.
        log: String,
    },
    /// A kernel name is not in its compiled module.
    #[error("kernel `{name}` is not in module `{source_name}`: {source}")]
    MissingKernel {
        /// The function asked for.
        name: String,
        /// The kernel file.
        source_name: String,
        /// The driver's error.
        source: DriverError,
    },
    /// The device ran out of memory even after the allocator released its cache.
    #[error("out of device memory: asked for {requested} bytes with {reserved} bytes already reserved")]
    OutOfMemory {
        /// Bytes asked for.
        requested: usize,
        /// Bytes the allocator held at the time.
        reserved: usize,
    },
    /// The arguments of a kernel call do not fit together.
    #[error("{op}: {message}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong, with the sizes involved.
        message: String,
    },
    /// Reading or writing the on-disk kernel cache failed.
    #[error("kernel cache at {path}: {source}")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl CudaError {
    /// Wraps a driver error with what was being done.
    pub(crate) fn driver(action: &'static str) -> impl FnOnce(DriverError) -> CudaError {
        move |source| CudaError::Driver { action, source }
    }

    /// An argument error of `op`.
    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> CudaError {
        CudaError::Invalid { op, message: message.into() }
    }
}

/// The result type of the CUDA backend.
pub type CudaResult<T> = Result<T, CudaError>;
