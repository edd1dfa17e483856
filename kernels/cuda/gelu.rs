//! Launch wrappers of `gelu.cu`: bias + GeLU (tanh form) forward and backward.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{blocks_for, check_len, grid1, rows_of, DeviceBuf, FloatElem};
use super::elementwise::column_sum;
use super::error::CudaResult;
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("gelu");

/// `out = gelu(x + bias)`, the bias broadcast over rows of `cols`.
pub fn bias_gelu_forward<T: FloatElem>(
    x: &DeviceBuf<T>,
    bias: Option<&DeviceBuf<T>>,
    cols: usize,
    out: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    const OP: &str = "bias_gelu_forward";
    rows_of(OP, "x", x.len(), cols)?;
    check_len(OP, "out", out, x.len())?;
    if let Some(b) = bias {
        check_len(OP, "bias", b, cols)?;
    }
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("bias_gelu_fwd_{}", T::NAME))?;
    let (px, pb, po, n, c) = (x.ptr(), bias.map_or(0, |b| b.ptr()), out.ptr(), x.len() as i64, cols as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&pb).arg(&po).arg(&n).arg(&c);
    let blocks = blocks_for(OP, x.len().min(65_536 * 256), 256)?;
    dev.launch(args, grid1(blocks, 256, 0), "launching bias_gelu_fwd")
}

/// Threads per block of the backward kernel: 32 column lanes × 8 row lanes.
pub const BACKWARD_THREADS: u32 = 256;

/// The backward kernel's grid: blocks across the columns, and row splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackwardGrid {
    /// Blocks across the columns (32 column lanes each, of one column or one 16-byte vector).
    pub col_blocks: usize,
    /// Row splits (`gridDim.y`), each writing one row of column partial sums.
    pub splits: usize,
}

/// The backward grid for `rows` × `cols` of `T` on `multiprocessors` SMs: with `vector` (the
/// rows are whole 16-byte vectors and every pointer is aligned) a column lane takes a vector,
/// else one column; enough row splits to give every SM about eight blocks, at least 8 rows each.
pub fn backward_grid<T: FloatElem>(
    rows: usize,
    cols: usize,
    vector: bool,
    multiprocessors: usize,
) -> BackwardGrid {
    let lanes = if vector { 16 / std::mem::size_of::<T>() } else { 1 };
    let col_blocks = cols.div_ceil(32 * lanes).max(1);
    let want = (8 * multiprocessors.max(1)).div_ceil(col_blocks);
    let splits = want.clamp(1, rows.div_ceil(8).max(1)).min(65_535);
    BackwardGrid { col_blocks, splits }
}

/// Writes `dx = dout · gelu'(x + bias)` and, when given, `dbias = Σ_rows dx` (`=`, or `+=`
/// with `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn bias_gelu_backward<T: FloatElem>(
    x: &DeviceBuf<T>,
    bias: Option<&DeviceBuf<T>>,
    dout: &DeviceBuf<T>,
    cols: usize,
    dx: &mut DeviceBuf<T>,
    dbias: Option<&mut DeviceBuf<T>>,
    accumulate: bool,
) -> CudaResult<()> {
    const OP: &str = "bias_gelu_backward";
    let rows = rows_of(OP, "x", x.len(), cols)?;
    check_len(OP, "dout", dout, x.len())?;
    check_len(OP, "dx", dx, x.len())?;
    if let Some(b) = bias {
        check_len(OP, "bias", b, cols)?;
    }
    let dev = dx.device().clone();
    let aligned = [x.ptr(), dout.ptr(), dx.ptr(), bias.map_or(0, |b| b.ptr())].iter().all(|p| p % 16 == 0);
    let vector = aligned && cols.is_multiple_of(16 / std::mem::size_of::<T>());
    let grid = backward_grid::<T>(rows, cols, vector, dev.multiprocessors());
    let splits = grid.splits;
    let partial = match dbias {
        Some(_) => Some(dev.alloc::<f32>(splits * cols)?),
        None => None,
    };
    let f = dev.function(&SOURCE, &format!("bias_gelu_bwd_{}", T::NAME))?;
    let (px, pb, pd, pdx, pp) =
        (x.ptr(), bias.map_or(0, |b| b.ptr()), dout.ptr(), dx.ptr(), partial.as_ref().map_or(0, |p| p.ptr()));
    let (r32, c32, v32) = (rows as i32, cols as i32, i32::from(vector));
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&pb).arg(&pd).arg(&pdx).arg(&pp).arg(&r32).arg(&c32).arg(&v32);
    let col_blocks = blocks_for(OP, grid.col_blocks, 1)?;
    let cfg = LaunchConfig {
        grid_dim: (col_blocks, splits as u32, 1),
        block_dim: (BACKWARD_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(args, cfg, "launching bias_gelu_bwd")?;
    match (dbias, partial) {
        (Some(db), Some(p)) => {
            check_len(OP, "dbias", db, cols)?;
            column_sum(&p, cols, splits, cols, db, None, accumulate)
        }
        _ => Ok(()),
    }
}
