//! Launch wrappers of `layernorm.cu`: LayerNorm forward and backward with an optional fused
//! residual add. Statistics (`mean`, `rstd`) are f32 whatever the storage type.

use cudarc::driver::PushKernelArg;

use super::device::{blocks_for, check_len, grid1, rows_of, DeviceBuf, FloatElem};
use super::elementwise::column_sum;
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("layernorm");

const FWD_WARPS: u32 = 4;
const BWD_THREADS: u32 = 256;
/// Vectors per thread of the register-cached kernels (`LN_FWD_PACKS`, `LN_BWD_PACKS`).
const FWD_PACKS: usize = 4;
const BWD_PACKS: usize = 1;

/// Threads per block of a register-cached kernel for rows of `cols`, when the fast path
/// applies: whole 16-byte vectors per row and at most 1024 threads.
fn cached_threads<T: FloatElem>(cols: usize, packs_per_thread: usize) -> Option<u32> {
    let width = 16 / std::mem::size_of::<T>();
    if !cols.is_multiple_of(width) {
        return None;
    }
    let threads = (cols / width).div_ceil(packs_per_thread).div_ceil(32) * 32;
    (threads <= 1024).then_some(threads as u32)
}

/// The optional residual stream of [`layernorm_forward`]: `x + residual` (rounded to `T`) is
/// written to `sum_out` and normalised.
#[derive(Debug)]
pub struct ResidualAdd<'a, T: FloatElem> {
    /// The residual branch added to `x`.
    pub residual: &'a DeviceBuf<T>,
    /// Receives `x + residual`, the next residual stream (and the input the backward needs).
    pub sum_out: &'a mut DeviceBuf<T>,
}

/// `out = LN(x [+ residual]) · weight + bias` over rows of `cols`; writes `mean` and `rstd`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: FloatElem>(
    x: &DeviceBuf<T>,
    residual: Option<ResidualAdd<'_, T>>,
    weight: &DeviceBuf<T>,
    bias: &DeviceBuf<T>,
    eps: f32,
    cols: usize,
    out: &mut DeviceBuf<T>,
    mean: &mut DeviceBuf<f32>,
    rstd: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "layernorm_forward";
    let rows = rows_of(OP, "x", x.len(), cols)?;
    check_len(OP, "weight", weight, cols)?;
    check_len(OP, "bias", bias, cols)?;
    check_len(OP, "out", out, x.len())?;
    check_len(OP, "mean", mean, rows)?;
    check_len(OP, "rstd", rstd, rows)?;
    let (pr, ps) = match &residual {
        Some(r) => {
            check_len(OP, "residual", r.residual, x.len())?;
            check_len(OP, "sum_out", r.sum_out, x.len())?;
            (r.residual.ptr(), r.sum_out.ptr())
        }
        None => (0u64, 0u64),
    };
    let dev = out.device().clone();
    let (px, pw, pb, po, pm, prs) = (x.ptr(), weight.ptr(), bias.ptr(), out.ptr(), mean.ptr(), rstd.ptr());
    let (r32, c32) = (rows as i32, cols as i32);
    // One block per row with the row in registers where that applies, else a warp per row.
    let (kernel, grid) = match cached_threads::<T>(cols, FWD_PACKS) {
        Some(threads) => ("layernorm_fwd_cached", grid1(rows as u32, threads, 0)),
        None => ("layernorm_fwd", grid1(blocks_for(OP, rows, FWD_WARPS as usize)?, 32 * FWD_WARPS, 0)),
    };
    let f = dev.function(&SOURCE, &format!("{kernel}_{}", T::NAME))?;
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&pr).arg(&pw).arg(&pb).arg(&po).arg(&ps).arg(&pm).arg(&prs);
    args.arg(&r32).arg(&c32).arg(&eps);
    dev.launch(args, grid, "launching layernorm_fwd")
}

/// Gradients of [`layernorm_forward`]: writes `dx` (plus `dresidual`, the gradient already
/// flowing on the residual stream, when given) and writes or, with `accumulate`, adds the
/// weight and bias gradients. `x` is the normalised input (the `sum_out` of a fused forward).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: FloatElem>(
    x: &DeviceBuf<T>,
    weight: &DeviceBuf<T>,
    mean: &DeviceBuf<f32>,
    rstd: &DeviceBuf<f32>,
    dout: &DeviceBuf<T>,
    dresidual: Option<&DeviceBuf<T>>,
    cols: usize,
    dx: &mut DeviceBuf<T>,
    dweight: &mut DeviceBuf<T>,
    dbias: &mut DeviceBuf<T>,
    accumulate: bool,
) -> CudaResult<()> {
    const OP: &str = "layernorm_backward";
    let rows = rows_of(OP, "x", x.len(), cols)?;
    for (what, buf) in [("weight", weight), ("dweight", &*dweight), ("dbias", &*dbias)] {
        check_len(OP, what, buf, cols)?;
    }
    check_len(OP, "dout", dout, x.len())?;
    check_len(OP, "dx", dx, x.len())?;
    check_len(OP, "mean", mean, rows)?;
    check_len(OP, "rstd", rstd, rows)?;
    if let Some(d) = dresidual {
        check_len(OP, "dresidual", d, x.len())?;
    }
    let dev = dx.device().clone();
    // The register-cached kernel where it applies, else the shared-memory one; one full wave
    // of blocks, each taking a run of rows.
    let (kernel, threads, shared) = match cached_threads::<T>(cols, BWD_PACKS) {
        Some(threads) => ("layernorm_bwd_cached", threads, 0),
        None => {
            let shared = (2 * cols * 4) as u32;
            if shared > 200 * 1024 {
                return Err(CudaError::invalid(OP, format!("rows of {cols} exceed the shared-memory limit")));
            }
            ("layernorm_bwd", BWD_THREADS, shared)
        }
    };
    let f = dev.function(&SOURCE, &format!("{kernel}_{}", T::NAME))?;
    dev.allow_shared_memory(&f, shared)?;
    let blocks = rows.clamp(1, dev.resident_blocks(&f, threads, shared));
    let partial = dev.alloc::<f32>(blocks * 2 * cols)?;
    let (px, pw, pm, pr, pd, pdr, pdx, pp) = (
        x.ptr(),
        weight.ptr(),
        mean.ptr(),
        rstd.ptr(),
        dout.ptr(),
        dresidual.map_or(0, |d| d.ptr()),
        dx.ptr(),
        partial.ptr(),
    );
    let (r32, c32) = (rows as i32, cols as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&pw).arg(&pm).arg(&pr).arg(&pd).arg(&pdr).arg(&pdx).arg(&pp).arg(&r32).arg(&c32);
    dev.launch(args, grid1(blocks as u32, threads, shared), "launching layernorm_bwd")?;
    // Per-block partials: the weight gradient's half of each row, then the bias gradient's.
    column_sum(&partial, 2 * cols, blocks, cols, dweight, Some(dbias), accumulate)
}
