//! Run-time selection of the CPU instruction set.
//!
//! The CI machine's CPU may differ from a developer's, so nothing is chosen at compile time:
//! [`SimdLevel::detect`] asks the CPU once and caches the answer. The environment variable
//! `POLYLM_SIMD` (`portable`, `avx2` or `avx512`) lowers the level, which is how the portable
//! and AVX2 paths are exercised on a machine that has AVX-512. Kernels that dispatch also take
//! an explicit level (`*_with` functions) so tests can run every path side by side.

use std::sync::OnceLock;

/// An instruction-set tier, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Plain Rust that the compiler may auto-vectorise for the baseline target.
    Portable,
    /// AVX2 with FMA and BMI1/2 (x86-64 since Haswell / Zen).
    Avx2Fma,
    /// AVX-512 F, VL, BW and DQ (with AVX2, FMA and BMI1/2), as on Skylake-SP, Ice Lake and Zen 4.
    Avx512,
}

impl SimdLevel {
    /// The best level this CPU supports, lowered by `POLYLM_SIMD` if set. Cached.
    pub fn detect() -> SimdLevel {
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Self::best_supported();
            match std::env::var("POLYLM_SIMD").ok().as_deref().and_then(Self::parse) {
                Some(requested) => requested.min(best),
                None => best,
            }
        })
    }

    /// Parses `portable`, `avx2` or `avx512` (case-insensitive).
    pub fn parse(name: &str) -> Option<SimdLevel> {
        match name.to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "none" => Some(SimdLevel::Portable),
            "avx2" | "avx2fma" => Some(SimdLevel::Avx2Fma),
            "avx512" | "avx512f" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    /// A short lower-case name (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2Fma => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can execute code of this level.
    pub fn is_supported(self) -> bool {
        self <= Self::best_supported()
    }

    /// Every level this CPU supports, lowest first (for tests that compare paths).
    pub fn all_supported() -> Vec<SimdLevel> {
        [SimdLevel::Portable, SimdLevel::Avx2Fma, SimdLevel::Avx512]
            .into_iter()
            .filter(|l| l.is_supported())
            .collect()
    }

    fn best_supported() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            // The AVX-512 kernels use F, VL, BW and DQ instructions (and BMI for masks).
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("bmi1")
                && is_x86_feature_detected!("bmi2")
            {
                return SimdLevel::Avx512;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("bmi1")
                && is_x86_feature_detected!("bmi2")
            {
                return SimdLevel::Avx2Fma;
            }
        }
        SimdLevel::Portable
    }
}
