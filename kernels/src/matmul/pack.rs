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
    if src.lane_stride == 1 && lanes > 1 {
        return pack_contiguous_lanes::<T, W>(src, lane0, lanes, k0, kc, dst);
    }
    for (q, panel) in dst.chunks_exact_mut(W * kc).enumerate() {
        let first = lane0 + q * W;
        let width = W.min(lane0 + lanes - first);
        pack_panel::<T, W>(src, first, width, k0, kc, panel);
    }
}

/// Panels that [`pack_contiguous_lanes`] fills side by side.
const PANELS_PER_SWEEP: usize = 16;

/// [`pack`] when the lanes are contiguous (`lane_stride == 1`). Panel by panel would read a
/// cache line of each step per panel, and with a large power-of-two `k_stride` (a
/// `[tokens, 8192]` gradient read transposed) those lines all fall in one cache set and are
/// evicted before the next panel comes back to them; all panels at once would keep one line
/// of every panel being written. So [`PANELS_PER_SWEEP`] panels are filled side by side: for
/// each step, the run of their lanes (a few whole cache lines) is read once and dealt out.
fn pack_contiguous_lanes<T: Elem, const W: usize>(
    src: Src<'_, T>,
    lane0: usize,
    lanes: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let panel_len = W * kc;
    let sweep_lanes = PANELS_PER_SWEEP * W;
    for (sweep, out) in dst.chunks_mut(PANELS_PER_SWEEP * panel_len).enumerate() {
        let first = sweep * sweep_lanes;
        let width = sweep_lanes.min(lanes - first);
        for p in 0..kc {
            let start = lane0 + first + (k0 + p) * src.k_stride;
            for (q, from) in src.data[start..start + width].chunks(W).enumerate() {
                let to = &mut out[q * panel_len + p * W..][..W];
                // A whole chunk as `[T; W]`, so that the copy has a constant width.
                if let Ok(from) = <&[T; W]>::try_from(from) {
                    for (d, s) in to.iter_mut().zip(from) {
                        *d = s.to_f32();
                    }
                } else {
                    for (d, s) in to.iter_mut().zip(from) {
                        *d = s.to_f32();
                    }
                    to[from.len()..].fill(0.0);
                }
            }
        }
    }
}

/// Packs one panel of `width <= W` lanes (the rest zero); the lanes are not contiguous unless
/// `width == 1` ([`pack_contiguous_lanes`] takes the other contiguous cases).
fn pack_panel<T: Elem, const W: usize>(
    src: Src<'_, T>,
    lane0: usize,
    width: usize,
    k0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    let Src { data, lane_stride, k_stride } = src;
    if width == W && k_stride == 1 && W <= MAX_SIDE_BY_SIDE {
        return pack_full_panel_along_k::<T, W>(src, lane0, k0, kc, panel);
    }
    if width < W {
        for row in panel.chunks_exact_mut(W) {
            row[width..].fill(0.0);
        }
    }
    if k_stride == 1 {
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

/// The widest panel [`pack_full_panel_along_k`] packs: its `W` source lines in use at once
/// share one cache set when the lane stride is a multiple of 4 KiB (a `[tokens, 8192]`
/// gradient), and x86 L1 caches are at least 8-way. Wider panels (the AVX2 kernel's B, the
/// AVX-512 kernel's A and B) keep reading one lane at a time.
const MAX_SIDE_BY_SIDE: usize = 8;

/// [`pack_panel`] of a whole panel (`W` lanes) whose lanes are each contiguous along k
/// (`k_stride == 1`): the `W` lanes are read side by side, one step of each per output row,
/// so every row is written once and whole and the lanes stream in step (1.45× the one-lane-
/// at-a-time packing of the `[2048, 8192]` logit gradient for the AVX2 kernel's 6-row panels,
/// `docs/benchmarks.md`).
fn pack_full_panel_along_k<T: Elem, const W: usize>(
    src: Src<'_, T>,
    lane0: usize,
    k0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    let Src { data, lane_stride, .. } = src;
    let lanes: [&[T]; W] = std::array::from_fn(|l| {
        let start = (lane0 + l) * lane_stride + k0;
        &data[start..start + kc]
    });
    for (p, row) in panel.chunks_exact_mut(W).enumerate().take(kc) {
        for (d, lane) in row.iter_mut().zip(&lanes) {
            *d = lane[p].to_f32();
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

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    /// `pack` written out value by value from its definition.
    fn naive<T: Elem, const W: usize>(
        src: Src<'_, T>,
        lane0: usize,
        lanes: usize,
        k0: usize,
        kc: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; lanes.div_ceil(W) * W * kc];
        for q in 0..lanes.div_ceil(W) {
            for p in 0..kc {
                for l in 0..W {
                    let lane = q * W + l;
                    if lane < lanes {
                        let at = (lane0 + lane) * src.lane_stride + (k0 + p) * src.k_stride;
                        out[q * W * kc + p * W + l] = src.data[at].to_f32();
                    }
                }
            }
        }
        out
    }

    fn check<T: Elem, const W: usize>(to_t: fn(f32) -> T) {
        // (lanes, kc, layout): lane-contiguous (several sweeps, a ragged end), step-contiguous,
        // and neither, each from an offset inside a larger matrix.
        for &(lanes, kc) in
            &[(1, 5), (W, 3), (3 * W + 1, 7), (PANELS_PER_SWEEP * W + 2 * W - 1, 4), (40 * W, 2)]
        {
            for layout in 0..3 {
                let (rows, cols) = (lanes + 3, kc + 2); // lanes × steps, with a margin
                let (lane_stride, k_stride) = match layout {
                    0 => (1, rows),
                    1 => (cols, 1),
                    _ => (2 * cols + 1, 2),
                };
                let len = (rows - 1) * lane_stride + (cols - 1) * k_stride + 1;
                let data: Vec<T> =
                    (0..len).map(|i| to_t(((i * 37 + 11) % 101) as f32 * 0.03 - 1.4)).collect();
                let src = Src { data: &data, lane_stride, k_stride };
                let (lane0, k0) = (2, 1);
                let want = naive::<T, W>(src, lane0, lanes, k0, kc);
                let mut got = vec![f32::NAN; want.len()];
                pack::<T, W>(src, lane0, lanes, k0, kc, &mut got);
                assert_eq!(got, want, "W={W} lanes={lanes} kc={kc} strides ({lane_stride}, {k_stride})");
            }
        }
    }

    #[test]
    fn packs_every_layout_like_the_definition() {
        check::<f32, 6>(|v| v);
        check::<f32, 14>(|v| v);
        check::<f32, 16>(|v| v);
        check::<bf16, 32>(bf16::from_f32);
        check::<bf16, 4>(bf16::from_f32);
    }
}
