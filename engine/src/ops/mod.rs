//! The differentiable ops, one file per family. Each file holds the op's forward (validation,
//! then a call into `polylm-kernels`) and its backward rule.
//!
//! Arithmetic runs in the dtype's compute type ([`DType::compute`]): f64 stays f64; f32, bf16
//! and f16 are computed in f32 and the result is stored back in the input dtype.

mod attention;
mod binary;
mod cast;
mod cross_entropy;
mod embedding;
mod gelu;
mod layernorm;
mod linear;
mod matmul;
mod reduce;
mod scalar;
mod softmax;
mod view;

use crate::{DType, Error, Result, Tensor};

/// Checks that two operands share dtype and device.
pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: a.dtype(), rhs: b.dtype() });
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch { op, lhs: a.device(), rhs: b.device() });
    }
    Ok(())
}

/// Resolves an axis given relative to the end when negative (`-1` is the last axis).
pub(crate) fn resolve_axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(Error::AxisOutOfRange { op, axis: axis.unsigned_abs(), rank });
    }
    Ok(a as usize)
}

/// Runs `$body` with `$t` bound to the compute type of `$dtype` (f32 or f64).
macro_rules! with_compute_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype.compute() {
            $crate::DType::F64 => {
                type $t = f64;
                $body
            }
            _ => {
                type $t = f32;
                $body
            }
        }
    };
}
pub(crate) use with_compute_type;

/// Whether `dtype` is computed in f64.
#[allow(dead_code)]
pub(crate) fn is_f64(dtype: DType) -> bool {
    dtype == DType::F64
}
