//! Helpers of the GPU tests: the device (or a printed skip), NaN-poisoned outputs, and reading
//! results back with a check that every element was written.

use std::sync::Arc;

use polylm_engine::Device;
use polylm_kernels::cast::Scalar;
use polylm_kernels::cuda::{CudaDevice, DeviceBuf, FloatElem};

/// The first CUDA device, or `None` after printing why `test` skips.
pub fn device(test: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped {test}: no GPU ({e})");
            None
        }
    }
}

/// The engine's first GPU, or `None` after printing why `test` skips.
pub fn gpu(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped {test}: no GPU ({e})");
            None
        }
    }
}

/// A buffer of `n` elements poisoned with NaN (every byte 0xFF), so that an element a kernel
/// never writes fails [`read`].
pub fn poisoned<T: FloatElem>(dev: &Arc<CudaDevice>, n: usize) -> DeviceBuf<T> {
    dev.alloc_filled_bytes::<T>(n, 0xFF).expect("alloc")
}

/// The buffer's values as f64, asserting that every element was written (no NaN poison left,
/// no padding read).
#[track_caller]
pub fn read<T: FloatElem + Scalar>(what: &str, buf: &DeviceBuf<T>) -> Vec<f64> {
    let values: Vec<f64> = buf.device().download(buf).expect("download").iter().map(|v| v.widen()).collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        panic!("{what}<{}>: element {i} of {} is {} (never written?)", T::NAME, values.len(), values[i]);
    }
    values
}
