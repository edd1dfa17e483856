//! AVX2+FMA micro-kernel: a `6×16` tile in 12 ymm accumulators (+2 for B, +1 broadcast).

use std::arch::x86_64::*;

use super::MicroKernel;
use crate::matmul::blocking::BlockSizes;

const MR: usize = 6;
const NR: usize = 16;

/// `6×16` AVX2+FMA tile.
pub(crate) struct Avx2;

impl MicroKernel for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;
    // kc·MR·4 = 6 KiB of A in L1; kc·nc·4 = 512 KiB of B in L2.
    const BLOCKS: BlockSizes = BlockSizes { kc: 256, mc: 4032, nc: 512 };

    #[inline(always)]
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, alpha: f32, beta: f32) {
        // SAFETY: forwarded contract; the driver only picks this kernel when AVX2 and FMA are
        // available.
        unsafe { kernel(kc, a, b, c, ldc, alpha, beta) }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, alpha: f32, beta: f32) {
    // SAFETY (whole body): the caller guarantees `a` is readable for `kc·MR` floats, `b` for
    // `kc·NR` floats and `c + i·ldc + j` readable/writable for `i < MR`, `j < NR`; every pointer
    // formed below stays inside those ranges. Prefetches never fault.
    unsafe {
        for i in 0..MR {
            let row = c.add(i * ldc) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.add(63));
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        let va = _mm256_set1_ps(alpha);
        if beta == 0.0 {
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                _mm256_storeu_ps(cp, _mm256_mul_ps(row[0], va));
                _mm256_storeu_ps(cp.add(8), _mm256_mul_ps(row[1], va));
            }
        } else {
            let vb = _mm256_set1_ps(beta);
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                let c0 = _mm256_mul_ps(_mm256_loadu_ps(cp), vb);
                let c1 = _mm256_mul_ps(_mm256_loadu_ps(cp.add(8)), vb);
                _mm256_storeu_ps(cp, _mm256_fmadd_ps(row[0], va, c0));
                _mm256_storeu_ps(cp.add(8), _mm256_fmadd_ps(row[1], va, c1));
            }
        }
    }
}
