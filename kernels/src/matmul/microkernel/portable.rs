//! A plain-Rust micro-kernel, correct on every target; the compiler vectorises the inner loop
//! for the baseline instruction set (SSE2 on x86-64, NEON on aarch64).

use super::MicroKernel;
use crate::matmul::blocking::BlockSizes;

const MR: usize = 4;
const NR: usize = 8;

/// 4×8 tile in plain Rust.
pub(crate) struct Portable;

impl MicroKernel for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    const BLOCKS: BlockSizes = BlockSizes { kc: 256, mc: 4096, nc: 512 };

    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, alpha: f32, beta: f32) {
        // SAFETY: the caller guarantees `a` holds `kc·MR` and `b` holds `kc·NR` readable values.
        let (a, b) =
            unsafe { (std::slice::from_raw_parts(a, kc * MR), std::slice::from_raw_parts(b, kc * NR)) };
        let mut acc = [[0f32; NR]; MR];
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &av) in acc.iter_mut().zip(ap) {
                for (x, &bv) in row.iter_mut().zip(bp) {
                    *x += av * bv;
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees `c + i·ldc + j` is valid for `i < MR`, `j < NR`, and
            // no other reference to that memory is alive during this call.
            let crow = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
            if beta == 0.0 {
                for (cv, &x) in crow.iter_mut().zip(row) {
                    *cv = alpha * x;
                }
            } else {
                for (cv, &x) in crow.iter_mut().zip(row) {
                    *cv = alpha * x + beta * *cv;
                }
            }
        }
    }
}
