//! Helpers of the GPU tests: the device (or a printed skip), random inputs exactly representable
//! in the storage type, NaN-poisoned outputs, and reading results back with a check that every
//! element was written.

use std::sync::Arc;

use polylm_engine::{Device, Rng};
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

/// Random values in `±scale`, each exactly representable in `T`.
pub fn random_exact<T: Scalar>(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| T::round_from((rng.uniform() * 2.0 - 1.0) * scale).widen()).collect()
}

/// `values` (exactly representable in `T`) in a new device buffer.
pub fn upload<T: FloatElem + Scalar>(dev: &Arc<CudaDevice>, values: &[f64]) -> DeviceBuf<T> {
    let host: Vec<T> = values.iter().map(|&x| T::round_from(x)).collect();
    dev.upload(&host).expect("upload")
}

/// [`random_exact`] values on the device, with their exact f64 values.
pub fn random_on<T: FloatElem + Scalar>(
    dev: &Arc<CudaDevice>,
    rng: &mut Rng,
    n: usize,
    scale: f64,
) -> (DeviceBuf<T>, Vec<f64>) {
    let exact = random_exact::<T>(rng, n, scale);
    (upload(dev, &exact), exact)
}
