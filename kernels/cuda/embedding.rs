//! Launch wrappers of `embedding.cu`: lookup, and the deterministic scatter-add backward.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{blocks_for, check_len, grid1, rows_of, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("embedding");

fn check_ids(op: &'static str, ids: &[u32], vocab: usize) -> CudaResult<()> {
    if let Some((pos, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(CudaError::invalid(
            op,
            format!("id {id} at position {pos} is outside the vocabulary of {vocab}"),
        ));
    }
    Ok(())
}

/// `out[t] = weight[ids[t]]`; `weight` is `vocab × dim`. Ids are checked on the host.
pub fn embedding_forward<T: FloatElem>(
    weight: &DeviceBuf<T>,
    ids: &[u32],
    dim: usize,
    out: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    const OP: &str = "embedding_forward";
    check_ids(OP, ids, rows_of(OP, "weight", weight.len(), dim)?)?;
    check_len(OP, "out", out, ids.len() * dim)?;
    let dev = out.device().clone();
    let d_ids = dev.upload(ids)?;
    let f = dev.function(&SOURCE, &format!("embedding_fwd_{}", T::NAME))?;
    let n = ids.len() * dim;
    let (pw, pi, po, n64, d32) = (weight.ptr(), d_ids.ptr(), out.ptr(), n as i64, dim as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&pw).arg(&pi).arg(&po).arg(&n64).arg(&d32);
    // A block per token (the kernel strides over the tokens beyond the grid).
    let blocks = blocks_for(OP, ids.len().min(1 << 20), 1)?;
    dev.launch(args, grid1(blocks, 256, 0), "launching embedding_fwd")
}

/// `dweight[ids[t]] += dout[t]` for every position `t`, summed per id in position order
/// (deterministic, no atomics).
pub fn embedding_backward<T: FloatElem>(
    ids: &[u32],
    dout: &DeviceBuf<T>,
    dim: usize,
    dweight: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    const OP: &str = "embedding_backward";
    check_ids(OP, ids, rows_of(OP, "dweight", dweight.len(), dim)?)?;
    check_len(OP, "dout", dout, ids.len() * dim)?;
    if ids.is_empty() {
        return Ok(());
    }
    // Group positions by id (CSR): a stable sort keeps each id's positions in order.
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| ids[p as usize]);
    let mut unique = Vec::new();
    let mut starts = Vec::new();
    for (k, &p) in order.iter().enumerate() {
        let id = ids[p as usize];
        if unique.last() != Some(&id) {
            unique.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(order.len() as u32);
    let dev = dweight.device().clone();
    let (d_unique, d_starts, d_order) = (dev.upload(&unique)?, dev.upload(&starts)?, dev.upload(&order)?);
    let f = dev.function(&SOURCE, &format!("embedding_bwd_{}", T::NAME))?;
    let (pd, pu, ps, po, pw, d32) =
        (dout.ptr(), d_unique.ptr(), d_starts.ptr(), d_order.ptr(), dweight.ptr(), dim as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&pd).arg(&pu).arg(&ps).arg(&po).arg(&pw).arg(&d32);
    let cfg = LaunchConfig {
        grid_dim: (unique.len() as u32, blocks_for(OP, dim, 256)?, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(args, cfg, "launching embedding_bwd")
}
