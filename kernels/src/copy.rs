//! Strided gathers: materialise a strided view (transpose, permute, narrow) contiguously.

use rayon::prelude::*;

/// Copies the view `(offset, shape, strides)` of `src` into the contiguous `dst`.
pub fn strided_copy<T: Copy + Send + Sync>(
    src: &[T],
    offset: usize,
    shape: &[usize],
    strides: &[usize],
    dst: &mut [T],
) {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return;
    }
    let Some(&inner) = shape.last() else {
        dst[0] = src[offset];
        return;
    };
    let last = shape.len() - 1;
    let s_inner = strides[last];
    let rows_per_task = ((1 << 14) / inner).max(1);
    dst.par_chunks_mut(rows_per_task * inner).enumerate().for_each(|(t, chunk)| {
        for (r, drow) in chunk.chunks_mut(inner).enumerate() {
            let mut row = t * rows_per_task + r;
            let mut off = offset;
            for ax in (0..last).rev() {
                off += (row % shape[ax]) * strides[ax];
                row /= shape[ax];
            }
            if s_inner == 1 {
                drow.copy_from_slice(&src[off..off + inner]);
            } else {
                drow.iter_mut().enumerate().for_each(|(i, d)| *d = src[off + i * s_inner]);
            }
        }
    });
}
