//! Launch wrappers of `layernorm.cu`: LayerNorm forward and backward with an optional fused
//! residual add. Statistics (`mean`, `rstd`) are f32 whatever the storage type.

use cudarc::driver::{CudaFunction, PushKernelArg};

use super::device::{blocks_for, check_len, env_is, grid1, rows_of, CudaDevice, DeviceBuf, FloatElem};
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

/// Rows per step and ring stages of the streamed kernels (`LN_ROWS`, `LN_STAGES`).
const STREAM_ROWS: usize = 2;
const STREAM_STAGES: usize = 3;
/// The most shared memory a streamed kernel's ring may take.
const STREAM_MAX_SHARED: usize = 160 * 1024;

/// Which kernel runs a layernorm ([`layernorm_forward_with`], [`layernorm_backward_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerNormKernel {
    /// [`LayerNormKernel::Streamed`] when `POLYLM_GPU_LAYERNORM=streamed` and it applies, else
    /// [`LayerNormKernel::Cached`] where it applies, else [`LayerNormKernel::General`].
    Auto,
    /// Any width and alignment: a warp per row (forward), a block per run of rows with the
    /// weight gradients in shared memory (backward).
    General,
    /// Rows of whole 16-byte vectors, at most 1024 of them: the row in registers, a block per
    /// row (forward) or per run of rows (backward).
    Cached,
    /// The same rows as `Cached`: persistent blocks streaming their rows through a
    /// shared-memory ring filled by `cp.async`, two rows per block-wide reduction.
    Streamed,
}

/// The environment variable that makes [`LayerNormKernel::Auto`] pick the streamed kernels
/// (`streamed`); they stay off by default until they have been measured on a GPU.
pub const KERNEL_ENV: &str = "POLYLM_GPU_LAYERNORM";

impl LayerNormKernel {
    /// Whether this kernel takes rows of `cols` elements of `T`, in the forward with or without
    /// the fused residual add (`fused`), or in the backward with or without the residual
    /// stream's gradient (`fused`). `Auto` and `General` take every width.
    pub fn takes<T: FloatElem>(self, cols: usize, backward: bool, fused: bool) -> bool {
        self.block::<T>(cols, backward, fused).is_some()
    }

    /// The block this kernel is launched with for rows of `cols` elements of `T` (forward or
    /// `backward`, with or without the residual, `fused`): its threads and dynamic shared-memory
    /// bytes, and the suffix of its kernel names (`layernorm_{fwd,bwd}<suffix>_<type>`); `None`
    /// where it does not take such rows. (The grid depends on the device: the forward's general
    /// and cached kernels take a warp or a block per row, the others one full wave of blocks.)
    pub fn block<T: FloatElem>(
        self,
        cols: usize,
        backward: bool,
        fused: bool,
    ) -> Option<(u32, u32, &'static str)> {
        let inputs = if backward { 2 } else { 1 } + fused as usize;
        let packs = if backward { BWD_PACKS } else { FWD_PACKS };
        let plan = self.resolve::<T>("layernorm", cols, inputs, packs).ok()?;
        let (threads, shared) = match plan {
            Plan::General if backward => (BWD_THREADS, (2 * cols * 4) as u32),
            Plan::General => (32 * FWD_WARPS, 0),
            Plan::Cached(threads) => (threads, 0),
            Plan::Streamed(threads, ring) => (threads, ring),
        };
        Some((threads, shared, plan.suffix()))
    }

    /// The kernel that runs rows of `cols` elements of `T` with `inputs` row inputs in the
    /// streamed ring (1 or 2 forward, 2 or 3 backward), and its block size and dynamic shared
    /// memory (0 for the general kernels, which size their own).
    fn resolve<T: FloatElem>(
        self,
        op: &'static str,
        cols: usize,
        inputs: usize,
        packs: usize,
    ) -> CudaResult<Plan> {
        let cached = cached_threads::<T>(cols, packs);
        let stream_threads = cached_threads::<T>(cols, 1);
        let ring = STREAM_STAGES * inputs * STREAM_ROWS * cols * std::mem::size_of::<T>();
        let streamed = stream_threads.filter(|_| ring <= STREAM_MAX_SHARED);
        let plan = match self {
            Self::General => Plan::General,
            Self::Cached => Plan::Cached(cached.ok_or_else(|| unsupported(op, "cached", cols))?),
            Self::Streamed => match streamed {
                Some(threads) => Plan::Streamed(threads, ring as u32),
                None => return Err(unsupported(op, "streamed", cols)),
            },
            Self::Auto => match (streamed, cached) {
                (Some(threads), _) if env_is(KERNEL_ENV, "streamed") => Plan::Streamed(threads, ring as u32),
                (_, Some(threads)) => Plan::Cached(threads),
                _ => Plan::General,
            },
        };
        Ok(plan)
    }
}

/// A resolved [`LayerNormKernel`]: the kernel family and its block size and ring bytes.
#[derive(Clone, Copy, Debug)]
enum Plan {
    General,
    Cached(u32),
    Streamed(u32, u32),
}

impl Plan {
    /// The family's suffix in the kernel names.
    fn suffix(self) -> &'static str {
        match self {
            Plan::General => "",
            Plan::Cached(_) => "_cached",
            Plan::Streamed(..) => "_streamed",
        }
    }

    /// Loads the `direction` (`fwd` or `bwd`) kernel of this plan. A cached or streamed block
    /// larger than its kernel's registers allow (very wide rows) falls back to the general
    /// kernel when the choice was [`LayerNormKernel::Auto`], and is an error when it was asked for.
    fn load<T: FloatElem>(
        self,
        dev: &CudaDevice,
        kernel: LayerNormKernel,
        direction: &str,
        op: &'static str,
    ) -> CudaResult<(Plan, CudaFunction)> {
        let f = dev.function(&SOURCE, &format!("layernorm_{direction}{}_{}", self.suffix(), T::NAME))?;
        let threads = match self {
            Plan::General => return Ok((self, f)),
            Plan::Cached(t) | Plan::Streamed(t, _) => t,
        };
        let max = dev.max_threads(&f);
        if threads <= max {
            Ok((self, f))
        } else if kernel == LayerNormKernel::Auto {
            Plan::General.load::<T>(dev, kernel, direction, op)
        } else {
            Err(CudaError::invalid(
                op,
                format!(
                    "the {kernel:?} kernel needs {threads} threads per block here; its registers allow {max}"
                ),
            ))
        }
    }
}

fn unsupported(op: &'static str, kernel: &str, cols: usize) -> CudaError {
    CudaError::invalid(op, format!("the {kernel} kernel does not take rows of {cols} elements"))
}

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
    layernorm_forward_with(LayerNormKernel::Auto, x, residual, weight, bias, eps, cols, out, mean, rstd)
}

/// [`layernorm_forward`] on the kernel `kernel` picks; an explicit kernel that does not take
/// rows of `cols` is an error.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward_with<T: FloatElem>(
    kernel: LayerNormKernel,
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
    let plan = kernel.resolve::<T>(OP, cols, 1 + residual.is_some() as usize, FWD_PACKS)?;
    let dev = out.device().clone();
    let (px, pw, pb, po, pm, prs) = (x.ptr(), weight.ptr(), bias.ptr(), out.ptr(), mean.ptr(), rstd.ptr());
    let (r32, c32) = (rows as i32, cols as i32);
    let (plan, f) = plan.load::<T>(&dev, kernel, "fwd", OP)?;
    let grid = match plan {
        // A warp per row.
        Plan::General => grid1(blocks_for(OP, rows, FWD_WARPS as usize)?, 32 * FWD_WARPS, 0),
        // A block per row.
        Plan::Cached(threads) => grid1(rows as u32, threads, 0),
        // One full wave of blocks, each taking a run of rows.
        Plan::Streamed(threads, ring) => {
            dev.allow_shared_memory(&f, ring)?;
            let blocks = rows.div_ceil(STREAM_ROWS).clamp(1, dev.resident_blocks(&f, threads, ring));
            grid1(blocks as u32, threads, ring)
        }
    };
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
    let grads = LayerNormGrads { dx, dweight, dbias, accumulate };
    layernorm_backward_with(LayerNormKernel::Auto, x, weight, mean, rstd, dout, dresidual, cols, grads)
}

/// The outputs of [`layernorm_backward_with`].
#[derive(Debug)]
pub struct LayerNormGrads<'a, T: FloatElem> {
    /// The input gradient (plus the residual stream's gradient when one is given).
    pub dx: &'a mut DeviceBuf<T>,
    /// The weight gradient.
    pub dweight: &'a mut DeviceBuf<T>,
    /// The bias gradient.
    pub dbias: &'a mut DeviceBuf<T>,
    /// Add the weight and bias gradients to the buffers' values instead of overwriting them.
    pub accumulate: bool,
}

/// [`layernorm_backward`] on the kernel `kernel` picks; an explicit kernel that does not take
/// rows of `cols` is an error.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_with<T: FloatElem>(
    kernel: LayerNormKernel,
    x: &DeviceBuf<T>,
    weight: &DeviceBuf<T>,
    mean: &DeviceBuf<f32>,
    rstd: &DeviceBuf<f32>,
    dout: &DeviceBuf<T>,
    dresidual: Option<&DeviceBuf<T>>,
    cols: usize,
    grads: LayerNormGrads<'_, T>,
) -> CudaResult<()> {
    const OP: &str = "layernorm_backward";
    let LayerNormGrads { dx, dweight, dbias, accumulate } = grads;
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
    let plan = kernel.resolve::<T>(OP, cols, 2 + dresidual.is_some() as usize, BWD_PACKS)?;
    let (plan, f) = plan.load::<T>(&dev, kernel, "bwd", OP)?;
    // Every kernel runs one full wave of blocks, each taking a run of rows and writing its
    // share of the weight and bias gradients as a partial sum.
    let (threads, shared, rows_per_block) = match plan {
        Plan::Cached(threads) => (threads, 0, 1),
        Plan::Streamed(threads, ring) => (threads, ring, STREAM_ROWS),
        Plan::General => {
            let shared = (2 * cols * 4) as u32;
            if shared > 200 * 1024 {
                return Err(CudaError::invalid(OP, format!("rows of {cols} exceed the shared-memory limit")));
            }
            (BWD_THREADS, shared, 1)
        }
    };
    dev.allow_shared_memory(&f, shared)?;
    let blocks = rows.div_ceil(rows_per_block).clamp(1, dev.resident_blocks(&f, threads, shared));
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
