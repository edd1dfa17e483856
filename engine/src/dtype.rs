//! Element types a tensor can hold, and the Rust types that stand for them.

use std::fmt;

use half::{bf16, f16};
use polylm_kernels::cast::Scalar;
use polylm_kernels::Float;

use crate::storage::CpuStorage;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE double precision (CPU only; used for gradient checks).
    F64,
    /// bfloat16: 8 exponent bits, 7 mantissa bits. Computed in f32.
    BF16,
    /// IEEE half precision. Computed in f32.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The lower-case name (`f32`, `f64`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// The type arithmetic runs in: f64 for f64, f32 for everything else.
    pub fn compute(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust element type that a tensor can hold.
pub trait WithDType: Scalar + Copy + Send + Sync + fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps a vector as CPU storage.
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    /// The storage's data, if it holds this type.
    fn storage_slice(s: &CpuStorage) -> Option<&[Self]>;
    /// The storage's buffer, writable, if it holds this type.
    fn storage_vec_mut(s: &mut CpuStorage) -> Option<&mut Vec<Self>>;
}

macro_rules! with_dtype {
    ($t:ty, $variant:ident) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn storage_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage_vec_mut(s: &mut CpuStorage) -> Option<&mut Vec<Self>> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
with_dtype!(f32, F32);
with_dtype!(f64, F64);
with_dtype!(bf16, BF16);
with_dtype!(f16, F16);

/// A type arithmetic runs in on the CPU: `f32` or `f64`.
pub trait CpuFloat: WithDType + Float {
    /// Wraps values that a backward rule keeps (row statistics, log-sum-exps).
    fn save(values: Vec<Self>) -> SavedValues;
    /// The saved values, if they are of this type.
    fn saved(values: &SavedValues) -> Option<&[Self]>;
}

/// Values in a compute type, saved by a forward pass for its backward rule.
#[derive(Debug, Clone)]
pub enum SavedValues {
    /// Saved by an f32 (or bf16/f16) computation.
    F32(Vec<f32>),
    /// Saved by an f64 computation.
    F64(Vec<f64>),
    /// Saved on a GPU: an f32 tensor on the device.
    Gpu(crate::Tensor),
}

impl SavedValues {
    /// The saved GPU tensor, if the values were saved on a GPU.
    pub(crate) fn gpu(&self) -> Option<&crate::Tensor> {
        match self {
            SavedValues::Gpu(t) => Some(t),
            _ => None,
        }
    }
}

macro_rules! cpu_float {
    ($t:ty, $variant:ident) => {
        impl CpuFloat for $t {
            fn save(values: Vec<Self>) -> SavedValues {
                SavedValues::$variant(values)
            }
            fn saved(values: &SavedValues) -> Option<&[Self]> {
                match values {
                    SavedValues::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
cpu_float!(f32, F32);
cpu_float!(f64, F64);
