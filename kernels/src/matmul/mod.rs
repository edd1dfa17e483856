//! Dense matrix products `C = alpha·A·B + beta·C` on strided views.
//!
//! Operands are [`MatRef`] views with independent row and column strides, so a transposed
//! operand is just a view with its strides swapped ([`MatRef::t`]): no transpose is ever
//! materialised. `A` and `B` may be stored as f32, bf16 or f16 ([`Elem`]); they are widened to
//! f32 while being packed and accumulated in f32. [`gemm_f64`] is a plain blocked product for
//! f64 gradient checks.
//!
//! # Design (BLIS-style)
//!
//! ```text
//! for pc in k by kc                       (blocking::plan)
//!   for ic in m by mc
//!     pack A[ic.., pc..] into MR-row micro-panels        (pack.rs; shared by all threads)
//!     parallel for each column group jc of width nc       (rayon tasks)
//!       pack B[pc.., jc..] into NR-column micro-panels   (per-thread buffer, stays in L2)
//!       for each A micro-panel (stays in L1)
//!         for each B micro-panel (streams from L2)
//!           micro-kernel: MR×NR tile of C += Ã·B̃        (microkernel/*.rs)
//! ```
//!
//! The micro-kernel is chosen at run time from the requested [`SimdLevel`]: AVX-512 (14×32),
//! AVX2+FMA (6×16) or portable Rust (4×8). Ragged edges are packed with zero lanes and the
//! kernel's tile goes through a small buffer. `alpha` and `beta` are applied when the tile is
//! stored (`beta` only by the first `k` block). Products with `m == 1` or `n == 1` use a
//! matrix-vector path, [`gemm_batched`] runs many small products in parallel, and products below [`PARALLEL_MIN_WORK`] run on the
//! calling thread only.

mod batched;
mod blocking;
mod dgemm;
mod gemv;
mod microkernel;
mod pack;

#[cfg(test)]
mod tests;

use rayon::prelude::*;

pub use batched::{gemm_batched, BatchError, BatchMut};

use crate::float::Elem;
use crate::simd::SimdLevel;
use microkernel::MicroKernel;
use pack::Src;

/// A read-only strided matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A view, or `None` if some element `(i, j)` would fall outside `data`.
    pub fn new(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Option<Self> {
        if rows > 0 && cols > 0 {
            let last =
                (rows - 1).checked_mul(row_stride)?.checked_add((cols - 1).checked_mul(col_stride)?)?;
            if last >= data.len() {
                return None;
            }
        }
        Some(MatRef { data, rows, cols, row_stride, col_stride })
    }

    /// A dense row-major view (`row_stride = cols`, `col_stride = 1`).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance between consecutive rows, in elements.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// Distance between consecutive columns, in elements.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }
    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Element `(i, j)`; panics when out of range.
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A mutable matrix with unit column stride: element `(i, j)` is `data[i * row_stride + j]`.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// A view, or `None` if it would not fit in `data` or `row_stride < cols`.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, row_stride: usize) -> Option<Self> {
        if rows > 0 && cols > 0 {
            if row_stride < cols {
                return None;
            }
            let last = (rows - 1).checked_mul(row_stride)?.checked_add(cols - 1)?;
            if last >= data.len() {
                return None;
            }
        }
        Some(MatMut { data, rows, cols, row_stride })
    }

    /// A dense row-major view.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, rows, cols, cols)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance between consecutive rows, in elements.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// The underlying slice.
    pub fn data_mut(&mut self) -> &mut [T] {
        self.data
    }
}

fn check_dims<A, B, C>(a: &MatRef<'_, A>, b: &MatRef<'_, B>, c: &MatMut<'_, C>) {
    assert_eq!(
        a.cols, b.rows,
        "gemm: inner dimensions differ ({}x{} · {}x{})",
        a.rows, a.cols, b.rows, b.cols
    );
    assert_eq!(c.rows, a.rows, "gemm: C has {} rows, A has {}", c.rows, a.rows);
    assert_eq!(c.cols, b.cols, "gemm: C has {} cols, B has {}", c.cols, b.cols);
}

/// Products with fewer multiply-adds than this (`m·n·k`) run on the calling thread.
pub const PARALLEL_MIN_WORK: usize = 1 << 20;

/// `C = alpha·A·B + beta·C` in f32 with the best SIMD level of this CPU.
///
/// When `beta == 0` the previous contents of `C` are ignored (NaNs there do not propagate).
/// Panics if the dimensions disagree; the engine checks them first and reports a typed error.
/// Runs on the current rayon pool (use `ThreadPool::install` to bound the threads).
pub fn gemm<A: Elem, B: Elem>(alpha: f32, a: MatRef<'_, A>, b: MatRef<'_, B>, beta: f32, c: MatMut<'_, f32>) {
    gemm_with(SimdLevel::detect(), alpha, a, b, beta, c)
}

/// [`gemm`] on an explicitly chosen SIMD level. A level this CPU lacks is lowered to the best
/// supported one below it, so no unsupported instruction is ever executed.
pub fn gemm_with<A: Elem, B: Elem>(
    level: SimdLevel,
    alpha: f32,
    a: MatRef<'_, A>,
    b: MatRef<'_, B>,
    beta: f32,
    mut c: MatMut<'_, f32>,
) {
    check_dims(&a, &b, &c);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    let ldc = c.row_stride;
    if k == 0 {
        for i in 0..m {
            let row = &mut c.data[i * ldc..i * ldc + n];
            if beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|v| *v *= beta);
            }
        }
        return;
    }
    if m == 1 {
        // C(0, j) = Σ_p B(p, j)·A(0, p): B read as its transpose, A's row as the vector.
        let mat = gemv::Mat { data: b.data, t_stride: b.col_stride, p_stride: b.row_stride };
        gemv::gemv(n, k, mat, a.data, a.col_stride, alpha, beta, c.data, 1);
        return;
    }
    if n == 1 {
        let mat = gemv::Mat { data: a.data, t_stride: a.row_stride, p_stride: a.col_stride };
        gemv::gemv(m, k, mat, b.data, b.row_stride, alpha, beta, c.data, ldc);
        return;
    }
    let mut level = level;
    while !level.is_supported() {
        level = match level {
            SimdLevel::Avx512 => SimdLevel::Avx2Fma,
            _ => SimdLevel::Portable,
        };
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            gemm_packed::<microkernel::avx512::Avx512<14>, A, B>(alpha, &a, &b, beta, &mut c)
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2Fma => gemm_packed::<microkernel::avx2::Avx2, A, B>(alpha, &a, &b, beta, &mut c),
        _ => gemm_packed::<microkernel::portable::Portable, A, B>(alpha, &a, &b, beta, &mut c),
    }
}

/// `C = alpha·A·B + beta·C` in f64 (used by gradient checks; correct rather than fast).
///
/// When `beta == 0` the previous contents of `C` are ignored.
pub fn gemm_f64(alpha: f64, a: MatRef<'_, f64>, b: MatRef<'_, f64>, beta: f64, c: MatMut<'_, f64>) {
    check_dims(&a, &b, &c);
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    dgemm::gemm(alpha, a, b, beta, c)
}

/// A raw pointer to C that tasks share; each task writes a disjoint set of tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: the pointer is only dereferenced by the tile stores of `compute_group`, and the tasks
// of one block write pairwise disjoint column ranges (or disjoint row ranges) of C, all inside
// the `MatMut` that the driver borrows mutably for the whole parallel section.
unsafe impl Send for CPtr {}
// SAFETY: as above; sharing the pointer value between threads creates no aliasing writes.
unsafe impl Sync for CPtr {}

/// Largest `MR·NR` of any micro-kernel (the edge-tile buffer).
const MAX_TILE: usize = 16 * 32;

/// The BLIS-style driver for `m, n, k >= 1` on micro-kernel `K` (whose instruction set the
/// caller has checked).
fn gemm_packed<K: MicroKernel, A: Elem, B: Elem>(
    alpha: f32,
    a: &MatRef<'_, A>,
    b: &MatRef<'_, B>,
    beta: f32,
    c: &mut MatMut<'_, f32>,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    let plan = blocking::plan(m, n, k, threads, K::MR, K::NR, K::BLOCKS);
    let ldc = c.row_stride;
    let cptr = CPtr(c.data.as_mut_ptr());
    let a_src = Src { data: a.data, lane_stride: a.row_stride, k_stride: a.col_stride };
    let b_src = Src { data: b.data, lane_stride: b.col_stride, k_stride: b.row_stride };
    pack::with_scratch(&pack::A_BUF, plan.mc * plan.kc, |abuf| {
        for pc in (0..k).step_by(plan.kc) {
            let kc = plan.kc.min(k - pc);
            let beta = if pc == 0 { beta } else { 1.0 };
            for ic in (0..m).step_by(plan.mc) {
                let mc = plan.mc.min(m - ic);
                let m_panels = mc.div_ceil(K::MR);
                let apack = &mut abuf[..m_panels * K::MR * kc];
                // Pack A[ic..ic+mc, pc..pc+kc], in parallel when it is large.
                let per_chunk = m_panels.div_ceil(threads * 2).max(1);
                if threads > 1 && m_panels > 1 && mc * kc >= 1 << 15 {
                    apack.par_chunks_mut(per_chunk * K::MR * kc).enumerate().for_each(|(ci, dst)| {
                        let first = ci * per_chunk * K::MR;
                        let lanes = (per_chunk * K::MR).min(mc - first);
                        pack_dispatch::<K, A>(a_src, ic + first, lanes, pc, kc, dst, true);
                    });
                } else {
                    pack_dispatch::<K, A>(a_src, ic, mc, pc, kc, apack, true);
                }
                let apack = &*apack;
                // Tasks: one per column group, and when there are fewer groups than threads,
                // the rows are split too.
                let m_groups =
                    if plan.n_groups < threads { threads.div_ceil(plan.n_groups).min(m_panels) } else { 1 };
                let tasks = plan.n_groups * m_groups;
                let task = |t: usize| {
                    let (mg, ng) = (t / plan.n_groups, t % plan.n_groups);
                    let j0 = ng * plan.nc;
                    let nc = plan.nc.min(n - j0);
                    let p0 = m_panels * mg / m_groups;
                    let p1 = m_panels * (mg + 1) / m_groups;
                    let ctx = Block { m, ic, mc, kc, ldc, alpha, beta, cptr };
                    pack::with_scratch(&pack::B_BUF, nc.div_ceil(K::NR) * K::NR * kc, |bpack| {
                        pack_dispatch::<K, B>(b_src, j0, nc, pc, kc, bpack, false);
                        // SAFETY: `K`'s instruction set was checked by `gemm_with`; `ctx`
                        // describes a block inside C, and this task alone writes its tiles
                        // (row panels p0..p1 × columns j0..j0+nc).
                        unsafe { compute_group::<K>(&ctx, apack, p0..p1, bpack, j0, nc) };
                    });
                };
                if tasks == 1 || threads == 1 {
                    (0..tasks).for_each(task);
                } else {
                    (0..tasks).into_par_iter().for_each(task);
                }
            }
        }
    });
}

/// Packs with the panel width of `K` (`MR` for A, `NR` for B).
fn pack_dispatch<K: MicroKernel, T: Elem>(
    src: Src<'_, T>,
    lane0: usize,
    lanes: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
    is_a: bool,
) {
    match if is_a { K::MR } else { K::NR } {
        4 => pack::pack::<T, 4>(src, lane0, lanes, k0, kc, dst),
        6 => pack::pack::<T, 6>(src, lane0, lanes, k0, kc, dst),
        8 => pack::pack::<T, 8>(src, lane0, lanes, k0, kc, dst),
        12 => pack::pack::<T, 12>(src, lane0, lanes, k0, kc, dst),
        14 => pack::pack::<T, 14>(src, lane0, lanes, k0, kc, dst),
        16 => pack::pack::<T, 16>(src, lane0, lanes, k0, kc, dst),
        32 => pack::pack::<T, 32>(src, lane0, lanes, k0, kc, dst),
        w => unreachable!("no packing for panel width {w}"),
    }
}

/// What a task needs to know about the current A block.
struct Block {
    m: usize,
    ic: usize,
    mc: usize,
    kc: usize,
    ldc: usize,
    alpha: f32,
    beta: f32,
    cptr: CPtr,
}

/// Multiplies A micro-panels `panels` of the packed block by the packed B columns
/// `j0..j0 + nc` and stores the tiles into C.
///
/// # Safety
/// `K`'s instruction set must be supported; `ctx.cptr` must point to a C of `ctx.m` rows with
/// row stride `ctx.ldc` covering columns `j0..j0 + nc`, and no other thread may access those
/// tiles during the call.
unsafe fn compute_group<K: MicroKernel>(
    ctx: &Block,
    apack: &[f32],
    panels: std::ops::Range<usize>,
    bpack: &[f32],
    j0: usize,
    nc: usize,
) {
    let (mr, nr, kc) = (K::MR, K::NR, ctx.kc);
    debug_assert!(mr * nr <= MAX_TILE);
    let mut tile = [0f32; MAX_TILE];
    for ip in panels {
        let i0 = ctx.ic + ip * mr;
        let rows = mr.min(ctx.ic + ctx.mc - i0).min(ctx.m - i0);
        let ap = apack[ip * mr * kc..(ip + 1) * mr * kc].as_ptr();
        for (jp, bp) in bpack.chunks_exact(nr * kc).enumerate() {
            let j = j0 + jp * nr;
            let cols = nr.min(j0 + nc - j);
            // SAFETY: (i0, j) is inside C by the caller's contract, so is the whole tile when
            // it is full; a partial tile goes through `tile` (MR·NR <= MAX_TILE values, row
            // stride NR) and is copied element-wise to the in-range part only.
            unsafe {
                let c = ctx.cptr.0.add(i0 * ctx.ldc + j);
                if rows == mr && cols == nr {
                    K::run(kc, ap, bp.as_ptr(), c, ctx.ldc, ctx.alpha, ctx.beta);
                } else {
                    K::run_edge(kc, rows, ap, bp.as_ptr(), tile.as_mut_ptr());
                    for r in 0..rows {
                        for (q, &t) in tile[r * nr..r * nr + cols].iter().enumerate() {
                            let cv = c.add(r * ctx.ldc + q);
                            *cv =
                                if ctx.beta == 0.0 { ctx.alpha * t } else { ctx.alpha * t + ctx.beta * *cv };
                        }
                    }
                }
            }
        }
    }
}
