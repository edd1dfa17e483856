//! Raw device access for collective libraries (NCCL) that work on device addresses in stream
//! order: the device of an ordinal, and out-of-place collectives on f32 GPU tensors.
//!
//! Every op on a GPU's tensors runs in order on that device's one stream
//! ([`CudaDevice::stream`]); a library that enqueues on the same stream sees the values the ops
//! before it left and its results are seen by the ops after it, with no synchronisation.

use std::sync::Arc;

use polylm_kernels::cuda::CudaDevice;

use super::{cuda_err, dense, gpu};
use crate::{DType, Error, Result, Tensor};

/// The engine's device for GPU `ordinal` (opened on first use; the same one its tensors use).
pub fn cuda_device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    gpu(ordinal)
}

impl Tensor {
    /// For a collective library: calls `enqueue` with this f32 GPU tensor's device address
    /// (of a dense copy when it is a strided view), the address of a new device buffer of
    /// `out_len` f32 values on the same GPU, and the device; returns that buffer as a tensor
    /// of shape `[out_len]`. An error when the tensor is not f32 on a GPU, or when `enqueue`
    /// returns one (its message becomes the error's).
    ///
    /// # Safety
    ///
    /// `enqueue` must enqueue its work on `device.stream()` only, read at most `self.numel()`
    /// values from the input address, and write every one of the `out_len` values at the output
    /// address (the buffer is uninitialised when it is called).
    pub unsafe fn cuda_f32_out_of_place(
        &self,
        out_len: usize,
        enqueue: impl FnOnce(u64, u64, &CudaDevice) -> std::result::Result<(), String>,
    ) -> Result<Tensor> {
        const OP: &str = "cuda_f32_out_of_place";
        if self.dtype() != DType::F32 || self.device().is_cpu() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("needs an f32 GPU tensor, got {} on {}", self.dtype(), self.device()),
            });
        }
        let input = dense::<f32>(self)?;
        let dev = input.device();
        let out = dev.alloc::<f32>(out_len).map_err(cuda_err(OP))?;
        enqueue(input.ptr(), out.ptr(), dev).map_err(|message| Error::Cuda { op: OP, message })?;
        Ok(Tensor::from_gpu(out, &[out_len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tensors_are_refused_before_anything_runs() {
        let t = Tensor::from_vec(vec![0.5f32, -1.25, 3.0], &[3]).unwrap();
        let mut called = false;
        // SAFETY: the closure enqueues nothing (and is not expected to run).
        let r = unsafe {
            t.cuda_f32_out_of_place(3, |_, _, _| {
                called = true;
                Ok(())
            })
        };
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        assert!(!called);
    }
}
