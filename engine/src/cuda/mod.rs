//! Tensors on CUDA GPUs: the device storage, the per-ordinal device registry, moving tensors
//! between host and device, and the helpers the ops' GPU paths share.
//!
//! The kernels are `polylm_kernels::cuda`; each op in `crate::ops` checks its inputs' device
//! and calls its GPU path, which computes in f32 and stores f32, bf16 or f16 (there is no f64
//! on the GPU: gradient checks run on the CPU).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use half::{bf16, f16};
use polylm_kernels::cuda::elementwise::{self, DeviceStrided};
use polylm_kernels::cuda::{CudaDevice, CudaError, DeviceBuf, FloatElem};

mod raw;
pub use raw::cuda_device;

use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor};

/// A device buffer of one element type.
#[derive(Debug)]
pub enum CudaStorage {
    /// f32 elements.
    F32(DeviceBuf<f32>),
    /// bf16 elements.
    BF16(DeviceBuf<bf16>),
    /// f16 elements.
    F16(DeviceBuf<f16>),
}

impl CudaStorage {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            CudaStorage::F32(_) => DType::F32,
            CudaStorage::BF16(_) => DType::BF16,
            CudaStorage::F16(_) => DType::F16,
        }
    }

    /// Number of elements held.
    pub fn len(&self) -> usize {
        match self {
            CudaStorage::F32(b) => b.len(),
            CudaStorage::BF16(b) => b.len(),
            CudaStorage::F16(b) => b.len(),
        }
    }

    /// Whether no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.device().ordinal()
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &Arc<CudaDevice> {
        match self {
            CudaStorage::F32(b) => b.device(),
            CudaStorage::BF16(b) => b.device(),
            CudaStorage::F16(b) => b.device(),
        }
    }
}

/// A storage type of GPU tensors, linking the Rust type to its [`CudaStorage`] variant.
pub(crate) trait GpuElem: FloatElem + IntoCpu {
    /// The buffer, if `s` holds this type.
    fn buf(s: &CudaStorage) -> Option<&DeviceBuf<Self>>;
    /// The buffer, writable, if `s` holds this type.
    fn buf_mut(s: &mut CudaStorage) -> Option<&mut DeviceBuf<Self>>;
    /// Wraps a buffer.
    fn wrap(b: DeviceBuf<Self>) -> CudaStorage;
}
macro_rules! gpu_elem {
    ($t:ty, $variant:ident) => {
        impl GpuElem for $t {
            fn buf(s: &CudaStorage) -> Option<&DeviceBuf<$t>> {
                match s {
                    CudaStorage::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn buf_mut(s: &mut CudaStorage) -> Option<&mut DeviceBuf<$t>> {
                match s {
                    CudaStorage::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn wrap(b: DeviceBuf<$t>) -> CudaStorage {
                CudaStorage::$variant(b)
            }
        }
        impl IntoCpu for $t {
            fn into_cpu(v: Vec<$t>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
        }
    };
}
gpu_elem!(f32, F32);
gpu_elem!(bf16, BF16);
gpu_elem!(f16, F16);

/// Runs `$body` with `$t` bound to the storage type of the GPU dtype `$dtype`.
macro_rules! with_gpu_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            $crate::DType::F16 => {
                type $t = half::f16;
                $body
            }
            $crate::DType::F64 => Err($crate::Error::InvalidArgument {
                op: "cuda",
                reason: "f64 tensors cannot live on a GPU (gradient checks run on the CPU)".into(),
            }),
        }
    };
}
pub(crate) use with_gpu_type;

/// The device for `ordinal`, opened once per process and shared by every tensor on it.
pub(crate) fn gpu(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(Arc::clone(d));
    }
    let dev = CudaDevice::new(ordinal)
        .map_err(|e| Error::DeviceUnavailable { device: Device::Cuda(ordinal), reason: e.to_string() })?;
    map.insert(ordinal, Arc::clone(&dev));
    Ok(dev)
}

/// A CUDA error of `op` as an engine error.
pub(crate) fn cuda_err(op: &'static str) -> impl FnOnce(CudaError) -> Error {
    move |e| Error::Cuda { op, message: e.to_string() }
}

impl Tensor {
    /// The device buffer of a GPU tensor of element type `T` (its layout says which elements).
    pub(crate) fn gpu_buf<T: GpuElem>(&self) -> Result<&DeviceBuf<T>> {
        self.storage().cuda().and_then(T::buf).ok_or_else(|| Error::Cuda {
            op: "gpu_buf",
            message: format!(
                "a {} tensor on {} has no {} device buffer",
                self.dtype(),
                self.device(),
                T::NAME
            ),
        })
    }

    /// A contiguous GPU tensor owning `buf`.
    /// The device buffer of a GPU tensor of element type `T`, writable in place: only when no
    /// other tensor shares it and this tensor is dense over all of it
    /// ([`Tensor::dense_storage_mut`]).
    pub(crate) fn gpu_buf_mut<T: GpuElem>(&mut self) -> Option<&mut DeviceBuf<T>> {
        match self.dense_storage_mut()? {
            Storage::Cuda(s) => T::buf_mut(s),
            Storage::Cpu(_) => None,
        }
    }

    pub(crate) fn from_gpu<T: GpuElem>(buf: DeviceBuf<T>, shape: &[usize]) -> Tensor {
        Tensor::from_storage_any(Storage::Cuda(T::wrap(buf)), shape)
    }
}

/// A dense device copy (or the buffer itself, borrowed) of a GPU tensor's values.
pub(crate) enum Dense<'a, T: GpuElem> {
    /// The tensor's own storage (contiguous, offset 0, whole buffer).
    Borrowed(&'a DeviceBuf<T>),
    /// A gathered copy.
    Owned(DeviceBuf<T>),
}

impl<T: GpuElem> std::ops::Deref for Dense<'_, T> {
    type Target = DeviceBuf<T>;
    fn deref(&self) -> &DeviceBuf<T> {
        match self {
            Dense::Borrowed(b) => b,
            Dense::Owned(b) => b,
        }
    }
}

/// The values of GPU tensor `t` in row-major order, on the device.
pub(crate) fn dense<T: GpuElem>(t: &Tensor) -> Result<Dense<'_, T>> {
    let buf = t.gpu_buf::<T>()?;
    let l = t.layout();
    if l.is_contiguous() && l.offset() == 0 && buf.len() == l.numel() {
        return Ok(Dense::Borrowed(buf));
    }
    let mut out = buf.device().alloc::<T>(l.numel()).map_err(cuda_err("contiguous"))?;
    if l.numel() > 0 {
        elementwise::gather(
            l.shape(),
            DeviceStrided { buf, offset: l.offset(), strides: l.strides() },
            &mut out,
        )
        .map_err(cuda_err("contiguous"))?;
    }
    Ok(Dense::Owned(out))
}

/// Copies a GPU tensor's values to the host, row-major.
pub(crate) fn download(t: &Tensor) -> Result<CpuStorage> {
    with_gpu_type!(t.dtype(), T => {
        let d = dense::<T>(t)?;
        let host = d.device().download(&d).map_err(cuda_err("to_device"))?;
        Ok(T::into_cpu(host))
    })
}

/// Copies a CPU tensor to GPU `ordinal`.
pub(crate) fn upload(t: &Tensor, ordinal: usize) -> Result<Tensor> {
    let dev = gpu(ordinal)?;
    let host = t.contiguous_storage();
    let storage = match &host {
        CpuStorage::F32(v) => CudaStorage::F32(dev.upload(v).map_err(cuda_err("to_device"))?),
        CpuStorage::BF16(v) => CudaStorage::BF16(dev.upload(v).map_err(cuda_err("to_device"))?),
        CpuStorage::F16(v) => CudaStorage::F16(dev.upload(v).map_err(cuda_err("to_device"))?),
        CpuStorage::F64(_) => {
            return Err(Error::InvalidArgument {
                op: "to_device",
                reason: "f64 tensors cannot live on a GPU; cast to f32 first".into(),
            })
        }
    };
    Ok(Tensor::from_storage_any(Storage::Cuda(storage), t.shape()))
}

/// Host-side conversion of downloaded values into CPU storage.
pub(crate) trait IntoCpu: Sized {
    /// The host storage variant of these values.
    fn into_cpu(v: Vec<Self>) -> CpuStorage;
}

/// A new uninitialised buffer of `n` elements on GPU tensor `t`'s device.
pub(crate) fn alloc_like<T: GpuElem>(t: &Tensor, n: usize) -> Result<DeviceBuf<T>> {
    t.gpu_buf::<T>()?.device().alloc::<T>(n).map_err(cuda_err("alloc"))
}

/// A buffer of `n` zeros on GPU tensor `t`'s device.
pub(crate) fn zeros_like<T: GpuElem>(t: &Tensor, n: usize) -> Result<DeviceBuf<T>> {
    let mut buf = alloc_like::<T>(t, n)?;
    if n > 0 {
        elementwise::fill(&mut buf, 0.0).map_err(cuda_err("zeros"))?;
    }
    Ok(buf)
}

/// A GPU tensor of `shape` filled with `value`, on the device of GPU tensor `like`, of its dtype.
pub(crate) fn full_like(like: &Tensor, shape: &[usize], value: f64) -> Result<Tensor> {
    with_gpu_type!(like.dtype(), T => {
        let n = shape.iter().product();
        let mut buf = alloc_like::<T>(like, n)?;
        if n > 0 {
            elementwise::fill(&mut buf, value as f32).map_err(cuda_err("full"))?;
        }
        Ok(Tensor::from_gpu(buf, shape))
    })
}
