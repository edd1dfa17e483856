//! Embedding gather (forward) and scatter-add (backward).
//!
//! Ids must already be checked to be `< rows` of the table; the engine does so and reports the
//! offending id. The backward pass accumulates (`+=`) into the table gradient; it is
//! parallel over column blocks, so two rows with the same id never race.

use rayon::prelude::*;

use crate::float::Float;

/// `out[i] = weight[ids[i]]`, rows of `dim` values.
pub fn embedding_forward<T: Copy + Send + Sync>(weight: &[T], ids: &[u32], dim: usize, out: &mut [T]) {
    if dim == 0 {
        return;
    }
    out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(o, &id)| {
        let start = id as usize * dim;
        o.copy_from_slice(&weight[start..start + dim]);
    });
}

/// `dweight[ids[i]] += dout[i]` for every position `i`.
pub fn embedding_backward<T: Float>(ids: &[u32], dout: &[T], dim: usize, dweight: &mut [T]) {
    if dim == 0 {
        return;
    }
    // Split the columns among threads: each thread owns a column range of every row.
    let threads = rayon::current_num_threads().max(1);
    let block = dim.div_ceil(threads).max(16).min(dim);
    let blocks: Vec<usize> = (0..dim).step_by(block).collect();
    let rows = dweight.len() / dim;
    let ptr = SendPtr(dweight.as_mut_ptr());
    blocks.par_iter().for_each(|&c0| {
        let c1 = (c0 + block).min(dim);
        let p = ptr;
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            assert!(id < rows, "embedding id {id} out of range for {rows} rows");
            let src = &dout[i * dim + c0..i * dim + c1];
            // SAFETY: each task writes only columns c0..c1, disjoint from every other task, and
            // `id < rows` keeps the row inside the slice.
            let dst = unsafe { std::slice::from_raw_parts_mut(p.0.add(id * dim + c0), c1 - c0) };
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
    });
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint column ranges to rayon tasks (see `embedding_backward`).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
