//! Conversions between element types (f32, f64, bf16, f16), rounding to nearest even.

use half::{bf16, f16};
use rayon::prelude::*;

/// An element type the engine stores: convertible to and from f64 exactly where possible.
pub trait Scalar: Copy + Send + Sync + 'static {
    /// Widens to f64 (exact for every supported type).
    fn widen(self) -> f64;
    /// Rounds from f64 to nearest even.
    fn round_from(v: f64) -> Self;
}

impl Scalar for f32 {
    fn widen(self) -> f64 {
        self as f64
    }
    fn round_from(v: f64) -> Self {
        v as f32
    }
}
impl Scalar for f64 {
    fn widen(self) -> f64 {
        self
    }
    fn round_from(v: f64) -> Self {
        v
    }
}
impl Scalar for bf16 {
    fn widen(self) -> f64 {
        bf16::to_f64(self)
    }
    fn round_from(v: f64) -> Self {
        bf16::from_f64(v)
    }
}
impl Scalar for f16 {
    fn widen(self) -> f64 {
        f16::to_f64(self)
    }
    fn round_from(v: f64) -> Self {
        f16::from_f64(v)
    }
}

/// `dst[i] = src[i]` converted, in parallel. The slices must have equal length.
pub fn cast<S: Scalar, D: Scalar>(src: &[S], dst: &mut [D]) {
    dst.par_chunks_mut(1 << 15).zip(src.par_chunks(1 << 15)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = D::round_from(s.widen()));
    });
}

/// Converts a whole slice into a new vector.
pub fn cast_vec<S: Scalar, D: Scalar>(src: &[S]) -> Vec<D> {
    src.par_iter().map(|&s| D::round_from(s.widen())).collect()
}
