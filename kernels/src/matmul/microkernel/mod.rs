//! Register-tiled micro-kernels: `C[MR×NR] = alpha·(Ã·B̃) + beta·C` for one packed A
//! micro-panel `Ã` (`kc` steps of `MR` values) and one packed B micro-panel `B̃` (`kc` steps of
//! `NR` values).

pub(crate) mod portable;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

use super::blocking::BlockSizes;

/// A micro-kernel and the blocking that suits it.
pub(crate) trait MicroKernel {
    /// Rows of the register tile (values of A broadcast per step).
    const MR: usize;
    /// Columns of the register tile (values of B loaded per step).
    const NR: usize;
    /// Cache-block bounds for this kernel.
    const BLOCKS: BlockSizes;

    /// Computes `C = alpha·Ã·B̃ + beta·C` for a full `MR×NR` tile; with `beta == 0` the old
    /// contents of `C` are not read.
    ///
    /// # Safety
    /// `a` must be valid for `kc·MR` reads, `b` for `kc·NR` reads, and `c` valid for reads and
    /// writes at `c + i·ldc + j` for `i < MR`, `j < NR`. The CPU must support the kernel's
    /// instruction set (the driver only selects kernels whose [`crate::SimdLevel`] is
    /// supported).
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, alpha: f32, beta: f32);

    /// Like [`MicroKernel::run`] with `alpha = 1`, `beta = 0` into a dense `MR×NR` buffer `c`
    /// (row stride `NR`), for a ragged tile of which only the first `rows` rows are needed; a
    /// kernel may skip the work of the other rows (their contents are then unspecified).
    ///
    /// # Safety
    /// As for [`MicroKernel::run`], with `c` valid for `MR·NR` writes.
    unsafe fn run_edge(kc: usize, rows: usize, a: *const f32, b: *const f32, c: *mut f32) {
        let _ = rows;
        // SAFETY: forwarded contract.
        unsafe { Self::run(kc, a, b, c, Self::NR, 1.0, 0.0) }
    }
}
