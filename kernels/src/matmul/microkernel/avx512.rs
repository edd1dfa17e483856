//! AVX-512 micro-kernel: a `MR×32` tile held in `2·MR` zmm accumulators.
//!
//! Each step loads one 32-wide row of the packed B micro-panel (two zmm) and multiplies it by
//! `MR` values of the packed A micro-panel, each broadcast from memory (`vbroadcastss`), so the
//! loop body is `2·MR` FMAs, two vector loads and `MR` broadcasts. With `MR = 14` that is 28
//! accumulators + 2 B registers + 1 broadcast register out of 32.

use std::arch::x86_64::*;

use super::MicroKernel;
use crate::matmul::blocking::BlockSizes;

const NR: usize = 32;

/// `MR×32` AVX-512F tile (used with `MR = 14`).
pub(crate) struct Avx512<const MR: usize>;

impl<const MR: usize> MicroKernel for Avx512<MR> {
    const MR: usize = MR;
    const NR: usize = NR;
    // kc·MR·4 = 14 KiB of A in L1; kc·nc·4 = 512 KiB of B in L2.
    const BLOCKS: BlockSizes = BlockSizes { kc: 256, mc: 4032 / MR * MR, nc: 512 };

    #[inline(always)]
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, alpha: f32, beta: f32) {
        // SAFETY: forwarded contract; the driver only picks this kernel when AVX-512F, AVX2 and
        // FMA are available.
        unsafe { kernel::<MR, MR>(kc, a, b, c, ldc, alpha, beta) }
    }

    #[inline(always)]
    unsafe fn run_edge(kc: usize, rows: usize, a: *const f32, b: *const f32, c: *mut f32) {
        const { assert!(MR >= 8) };
        // SAFETY: forwarded contract; each variant reads the same panel (stride MR) and writes
        // at most its first `ROWS <= MR` rows of the MR×NR buffer.
        unsafe {
            if rows <= 4 {
                kernel::<MR, 4>(kc, a, b, c, NR, 1.0, 0.0)
            } else if rows <= 8 {
                kernel::<MR, 8>(kc, a, b, c, NR, 1.0, 0.0)
            } else {
                kernel::<MR, MR>(kc, a, b, c, NR, 1.0, 0.0)
            }
        }
    }
}

/// The tile kernel for the first `ROWS` rows of an A micro-panel of stride `MR`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel<const MR: usize, const ROWS: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY (whole body): the caller guarantees `a` is readable for `kc·MR` floats, `b` for
    // `kc·NR` floats and `c + i·ldc + j` readable/writable for `i < MR`, `j < NR`; every pointer
    // formed below stays inside those ranges. Prefetches never fault.
    unsafe {
        for i in 0..ROWS {
            let row = c.add(i * ldc) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.add(64));
            _mm_prefetch::<_MM_HINT_T0>(row.add(127));
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        let va = _mm512_set1_ps(alpha);
        if beta == 0.0 {
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                _mm512_storeu_ps(cp, _mm512_mul_ps(row[0], va));
                _mm512_storeu_ps(cp.add(16), _mm512_mul_ps(row[1], va));
            }
        } else if beta == 1.0 {
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                _mm512_storeu_ps(cp, _mm512_fmadd_ps(row[0], va, _mm512_loadu_ps(cp)));
                _mm512_storeu_ps(cp.add(16), _mm512_fmadd_ps(row[1], va, _mm512_loadu_ps(cp.add(16))));
            }
        } else {
            let vb = _mm512_set1_ps(beta);
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                let c0 = _mm512_mul_ps(_mm512_loadu_ps(cp), vb);
                let c1 = _mm512_mul_ps(_mm512_loadu_ps(cp.add(16)), vb);
                _mm512_storeu_ps(cp, _mm512_fmadd_ps(row[0], va, c0));
                _mm512_storeu_ps(cp.add(16), _mm512_fmadd_ps(row[1], va, c1));
            }
        }
    }
}
