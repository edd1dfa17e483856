//! A small seeded random number generator for initialisation and tests (xoshiro256**).

/// A deterministic generator: the same seed gives the same stream on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut st = seed;
        Rng { s: [splitmix(&mut st), splitmix(&mut st), splitmix(&mut st), splitmix(&mut st)] }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        uniform_from_bits(self.next_u64())
    }

    /// Uniform integer in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let first = self.next_u64();
        normal_from_bits(first, self.next_u64())
    }
}

/// The uniform in `[0, 1)` that [`Rng::uniform`] makes of 64 random bits.
fn uniform_from_bits(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The standard normal sample [`Rng::normal`] makes of two consecutive outputs of the
/// generator, so that the costly part (a log, a square root, a cosine) can run apart from the
/// generator, in parallel ([`crate::Tensor::randn`]).
pub(crate) fn normal_from_bits(first: u64, second: u64) -> f64 {
    let u1 = 1.0 - uniform_from_bits(first); // (0, 1]
    let u2 = uniform_from_bits(second);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use crate::{DType, Tensor};

    #[test]
    fn randn_draws_the_serial_stream_in_order() {
        // Two chunks and a ragged tail of the parallel transform.
        let n = (1 << 16) * 2 + 4099;
        let std = 0.02;
        let mut serial = Rng::new(41);
        let want: Vec<f64> = (0..n).map(|_| serial.normal() * std).collect();
        let mut rng = Rng::new(41);
        let got = Tensor::randn(&[n], std, DType::F64, &mut rng).unwrap().to_vec_f64();
        assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "values differ");
        // The generator ends where the serial draws leave it.
        assert_eq!(rng.next_u64(), serial.next_u64());
        // Narrower types hold those values as a cast rounds them.
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let got = Tensor::randn(&[n], std, dtype, &mut Rng::new(41)).unwrap();
            let cast = Tensor::from_vec(want.clone(), &[n]).unwrap().to_dtype(dtype).unwrap();
            assert_eq!(got.dtype(), dtype);
            let same =
                got.to_vec_f64().iter().zip(cast.to_vec_f64()).all(|(g, c)| g.to_bits() == c.to_bits());
            assert!(same, "{dtype:?} values differ from the cast");
        }
    }
}
