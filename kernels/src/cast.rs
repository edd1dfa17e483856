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
        bf16::from_f32(round_to_odd_f32(v))
    }
}
impl Scalar for f16 {
    fn widen(self) -> f64 {
        f16::to_f64(self)
    }
    fn round_from(v: f64) -> Self {
        f16::from_f32(round_to_odd_f32(v))
    }
}

/// `v` as an f32 rounded to odd: truncated toward zero, with the lowest mantissa bit set when
/// anything was cut off. Rounding that f32 to nearest even in a format with at least two fewer
/// mantissa bits (bf16, f16) gives exactly the nearest-even rounding of `v` itself, with no
/// double-rounding error. (`half`'s own `from_f64` mis-rounds some values just above a bf16
/// halfway point, so the narrow types go through this instead.)
#[inline]
pub fn round_to_odd_f32(v: f64) -> f32 {
    let f = v as f32;
    if !f.is_finite() || f as f64 == v {
        return f;
    }
    let mut bits = f.to_bits();
    if (f as f64).abs() > v.abs() {
        // Rounded away from zero: step back to the truncated value (same sign).
        bits -= 1;
    }
    f32::from_bits(bits | 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-even rounding of an f32 to bf16 on the bits (finite inputs).
    fn bf16_reference(x: f32) -> u16 {
        let b = x.to_bits();
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }

    #[test]
    fn bf16_from_f32_values_rounds_to_nearest_even() {
        // Values just above a halfway point (the case `half::bf16::from_f64` gets wrong), exact
        // halfway points, and a pseudo-random sweep of bit patterns.
        let mut cases: Vec<u32> =
            vec![0x3F00_8001, 0x3F00_8000, 0x3F01_8000, 0xBF00_8001, 0x0000_8001, 0x7F7F_8000];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            cases.push((state >> 32) as u32);
        }
        for bits in cases {
            let x = f32::from_bits(bits);
            if !x.is_finite() || bf16_reference(x) & 0x7F80 == 0x7F80 {
                continue;
            }
            let got = <bf16 as Scalar>::round_from(x as f64).to_bits();
            assert_eq!(got, bf16_reference(x), "bits {bits:#010x}");
        }
    }

    #[test]
    fn f64_inputs_round_correctly_without_double_rounding() {
        // 1 + 2^-8 is a bf16 halfway point (ties to even: 1.0); a hair above must round up
        // even though the hair is far below f32 precision.
        let halfway = 1.0 + 2f64.powi(-8);
        assert_eq!(<bf16 as Scalar>::round_from(halfway).to_f32(), 1.0);
        assert_eq!(<bf16 as Scalar>::round_from(halfway + 2f64.powi(-40)).to_f32(), 1.0 + 2f32.powi(-7));
        assert_eq!(
            <bf16 as Scalar>::round_from(-(halfway + 2f64.powi(-40))).to_f32(),
            -(1.0 + 2f32.powi(-7))
        );
        // f16: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
        let halfway = 1.0 + 2f64.powi(-11);
        assert_eq!(<f16 as Scalar>::round_from(halfway).to_f32(), 1.0);
        assert_eq!(<f16 as Scalar>::round_from(halfway + 2f64.powi(-40)).to_f32(), 1.0 + 2f32.powi(-10));
        assert!(<bf16 as Scalar>::round_from(f64::NAN).is_nan());
        assert_eq!(<bf16 as Scalar>::round_from(1e300).to_f32(), f32::INFINITY);
    }
}
