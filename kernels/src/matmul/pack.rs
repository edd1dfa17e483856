//! Packing of strided operands into contiguous f32 micro-panels.
//!
//! A micro-panel of width `W` and depth `kc` stores, for each step `p < kc`, `W` consecutive
//! values: `panel[p·W + l]`. For A the lanes `l` are rows (`W = MR`), for B they are columns
//! (`W = NR`). Lanes past the matrix edge are zero. Every [`Elem`] type is widened to f32 here,
//! so the micro-kernels only ever see f32.

use std::cell::Cell;
use std::thread::LocalKey;

use crate::float::Elem;

/// A strided source: value `(lane, p)` is `data[lane·lane_stride + p·k_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Src<'a, T> {
    pub data: &'a [T],
    pub lane_stride: usize,
    pub k_stride: usize,
}

/// Packs lanes `lane0..lane0 + lanes` and steps `k0..k0 + kc` into consecutive panels of width
/// `W` in `dst` (`ceil(lanes / W)` panels of `W·kc` values each, which `dst` must hold exactly).
///
/// Every index read is `(lane, p)` with `lane < lane0 + lanes`, `p < k0 + kc`; the caller passes
/// ranges inside a validated view, so no read is out of bounds.
pub(crate) fn pack<T: Elem, const W: usize>(
    src: Src<'_, T>,
    lane0: usize,
    lanes: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    debug_assert_eq!(dst.len(), lanes.div_ceil(W) * W * kc);
    for (q, panel) in dst.chunks_exact_mut(W * kc).enumerate() {
        let first = lane0 + q * W;
        let width = W.min(lane0 + lanes - first);
        pack_panel::<T, W>(src, first, width, k0, kc, panel);
    }
}

fn pack_panel<T: Elem, const W: usize>(
    src: Src<'_, T>,
    lane0: usize,
    width: usize,
    k0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    let Src { data, lane_stride, k_stride } = src;
    if width < W {
        for row in panel.chunks_exact_mut(W) {
            row[width..].fill(0.0);
        }
    }
    if lane_stride == 1 && width > 1 {
        // Lanes are contiguous: copy one run of `width` values per step.
        for (p, row) in panel.chunks_exact_mut(W).enumerate() {
            let start = lane0 + (k0 + p) * k_stride;
            for (d, s) in row[..width].iter_mut().zip(&data[start..start + width]) {
                *d = s.to_f32();
            }
        }
    } else if k_stride == 1 {
        // Each lane is contiguous along k: read it in one run, scatter with stride W.
        for l in 0..width {
            let start = (lane0 + l) * lane_stride + k0;
            for (row, s) in panel.chunks_exact_mut(W).zip(&data[start..start + kc]) {
                row[l] = s.to_f32();
            }
        }
    } else {
        for (p, row) in panel.chunks_exact_mut(W).enumerate() {
            let base = (k0 + p) * k_stride;
            for (l, d) in row[..width].iter_mut().enumerate() {
                *d = data[base + (lane0 + l) * lane_stride].to_f32();
            }
        }
    }
}

/// One 64-byte line of f32, so that packed buffers are cache-line aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([f32; 16]);

thread_local! {
    /// Packed A blocks of gemm calls started on this thread.
    pub(crate) static A_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    /// Packed B blocks of gemm tasks run on this thread.
    pub(crate) static B_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte aligned scratch slice of `len` floats (contents unspecified), reusing a
/// per-thread allocation. Re-entrant: a nested call on the same thread (rayon work stealing)
/// finds the slot empty and allocates its own buffer.
pub(crate) fn with_scratch<R>(
    key: &'static LocalKey<Cell<Vec<Line>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = key.take();
    let lines = len.div_ceil(16);
    if buf.len() < lines {
        buf = Vec::new(); // free the old one first
        buf.resize(lines, Line([0.0; 16]));
    }
    // SAFETY: `Line` is `repr(C)` around `[f32; 16]` with size 64 and no padding, so the first
    // `lines` elements of `buf` are `16·lines >= len` initialised, contiguous f32 values, and
    // `buf` is borrowed mutably for the slice's whole lifetime.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), len) };
    let r = f(slice);
    key.set(buf);
    r
}
