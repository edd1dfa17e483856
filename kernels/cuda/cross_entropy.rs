//! Launch wrappers of `cross_entropy.cu`: the fused softmax cross-entropy over the
//! vocabulary, loss and gradient in one launch, no probability matrix.

use cudarc::driver::PushKernelArg;

use super::device::{check_len, env_is, grid1, rows_of, CudaDevice, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("cross_entropy");

const THREADS: u32 = 512;
/// Blocks per cluster, most ring slots, and threads per block of the one-read kernel
/// (`CE_CLUSTER`, `CE_MAX_STAGES`).
const CLUSTER: usize = 8;
const CLUSTER_MAX_STAGES: usize = 4;
const CLUSTER_THREADS: u32 = 512;
/// The shared memory the one-read kernel's ring may take per block.
const CLUSTER_RING_BYTES: usize = 200 * 1024;

/// Which kernel [`cross_entropy_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossEntropyKernel {
    /// [`CrossEntropyKernel::Cluster`] when `POLYLM_GPU_CROSS_ENTROPY=cluster` and it applies,
    /// else [`CrossEntropyKernel::Rows`].
    Auto,
    /// A block per row, reading the row twice (statistics, then gradient); any device, any
    /// vocabulary.
    Rows,
    /// Compute capability 9.0 or later, a vocabulary of whole 16-byte vectors: a cluster of 8
    /// blocks per row, each holding an eighth of it in shared memory, so each row is read once.
    Cluster,
}

/// The environment variable that makes [`CrossEntropyKernel::Auto`] pick the one-read kernel
/// (`cluster`); it stays off by default until it has been measured on a GPU.
pub const KERNEL_ENV: &str = "POLYLM_GPU_CROSS_ENTROPY";

impl CrossEntropyKernel {
    /// Whether this kernel takes rows of `vocab` elements of `T` on `dev` (for buffers the
    /// device allocator returned, which are aligned). `Auto` and `Rows` take every vocabulary.
    pub fn takes<T: FloatElem>(self, dev: &CudaDevice, vocab: usize) -> bool {
        self != Self::Cluster || cluster_plan::<T>(dev, vocab, &[]).is_some()
    }
}

/// The one-read kernel's columns per block and ring slots for rows of `vocab` elements of `T`
/// at 16-byte-aligned addresses, or `None` where it does not apply.
fn cluster_plan<T: FloatElem>(dev: &CudaDevice, vocab: usize, addresses: &[u64]) -> Option<(usize, usize)> {
    let width = 16 / std::mem::size_of::<T>();
    if dev.arch().major < 9 || !vocab.is_multiple_of(width) || addresses.iter().any(|a| a % 16 != 0) {
        return None;
    }
    let chunk = vocab.div_ceil(CLUSTER).div_ceil(width) * width;
    let stages = (CLUSTER_RING_BYTES / (chunk * std::mem::size_of::<T>())).min(CLUSTER_MAX_STAGES);
    (stages >= 2).then_some((chunk, stages))
}
/// What multiplies row `r`'s gradient `softmax − onehot`.
#[derive(Clone, Copy, Debug)]
pub enum GradScale<'a> {
    /// The same factor for every row (for a mean loss: 1 / counted rows).
    Uniform(f32),
    /// One factor per row (the upstream gradient of a per-row loss).
    PerRow(&'a DeviceBuf<f32>),
}

/// The per-row outputs.
#[derive(Debug)]
pub struct CrossEntropyOutputs<'a> {
    /// `loss[r] = lse[r] − logits[r, target[r]]`, 0 for ignored rows, NaN for a target
    /// outside the vocabulary.
    pub loss: &'a mut DeviceBuf<f32>,
    /// The row log-sum-exp.
    pub lse: &'a mut DeviceBuf<f32>,
}

/// Launches the kernel `kernel` picks over `logits`; `dlogits` is the gradient's address (0 for
/// none, the logits' own address for in place).
#[allow(clippy::too_many_arguments)]
fn launch<T: FloatElem>(
    kernel: CrossEntropyKernel,
    logits: &DeviceBuf<T>,
    dlogits: u64,
    targets: &DeviceBuf<u32>,
    vocab: usize,
    ignore_index: Option<u32>,
    out: CrossEntropyOutputs<'_>,
    scale: GradScale<'_>,
) -> CudaResult<()> {
    const OP: &str = "cross_entropy";
    let rows = rows_of(OP, "logits", logits.len(), vocab)?;
    check_len(OP, "targets", targets, rows)?;
    check_len(OP, "loss", out.loss, rows)?;
    check_len(OP, "lse", out.lse, rows)?;
    let (pdloss, uniform) = match scale {
        GradScale::Uniform(s) => (0u64, s),
        GradScale::PerRow(d) => {
            check_len(OP, "dloss", d, rows)?;
            (d.ptr(), 1.0)
        }
    };
    let dev = logits.device().clone();
    let plan = cluster_plan::<T>(&dev, vocab, &[logits.ptr(), dlogits]);
    let cluster = match kernel {
        CrossEntropyKernel::Rows => None,
        CrossEntropyKernel::Cluster => Some(plan.ok_or_else(|| {
            CudaError::invalid(OP, format!("the cluster kernel does not take rows of {vocab} on this device"))
        })?),
        CrossEntropyKernel::Auto => plan.filter(|_| env_is(KERNEL_ENV, "cluster")),
    };
    let (pl, pt, pls, ploss) = (logits.ptr(), targets.ptr(), out.lse.ptr(), out.loss.ptr());
    let (v, ig, has) = (vocab as i32, ignore_index.unwrap_or(u32::MAX), ignore_index.is_some() as i32);
    let Some((chunk, stages)) = cluster else {
        let f = dev.function(&SOURCE, &format!("cross_entropy_{}", T::NAME))?;
        let mut args = dev.launcher(&f)?;
        args.arg(&pl).arg(&pt).arg(&dlogits).arg(&ploss).arg(&pls).arg(&pdloss).arg(&uniform);
        args.arg(&v).arg(&ig).arg(&has);
        return dev.launch(args, grid1(rows as u32, THREADS, 0), "launching cross_entropy");
    };
    let f = dev.function(&SOURCE, &format!("cross_entropy_cluster_{}", T::NAME))?;
    let ring = (stages * chunk * std::mem::size_of::<T>()) as u32;
    dev.allow_shared_memory(&f, ring)?;
    // As many clusters as are resident at once (at most one per row); each takes every
    // `clusters`-th row.
    let resident = dev.resident_clusters(&f, CLUSTER_THREADS, ring, CLUSTER)?;
    let clusters = rows.min(resident).max(1);
    let (r32, c32, s32) = (rows as i32, chunk as i32, stages as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&pl).arg(&pt).arg(&dlogits).arg(&ploss).arg(&pls).arg(&pdloss).arg(&uniform);
    args.arg(&r32).arg(&v).arg(&c32).arg(&s32).arg(&ig).arg(&has);
    let grid = grid1((clusters * CLUSTER) as u32, CLUSTER_THREADS, ring);
    dev.launch(args, grid, "launching cross_entropy_cluster")
}

/// Per-row loss and log-sum-exp of `logits` (`rows × vocab`) against `targets`; with `grad`,
/// also writes `dlogits = (softmax − onehot) · scale` (zero rows where ignored).
pub fn cross_entropy<T: FloatElem>(
    logits: &DeviceBuf<T>,
    targets: &DeviceBuf<u32>,
    vocab: usize,
    ignore_index: Option<u32>,
    out: CrossEntropyOutputs<'_>,
    grad: Option<(&mut DeviceBuf<T>, GradScale<'_>)>,
) -> CudaResult<()> {
    cross_entropy_with(CrossEntropyKernel::Auto, logits, targets, vocab, ignore_index, out, grad)
}

/// As [`cross_entropy`] with the gradient, written over the logits themselves (saves a
/// `rows × vocab` buffer).
pub fn cross_entropy_in_place<T: FloatElem>(
    logits: &mut DeviceBuf<T>,
    targets: &DeviceBuf<u32>,
    vocab: usize,
    ignore_index: Option<u32>,
    out: CrossEntropyOutputs<'_>,
    scale: GradScale<'_>,
) -> CudaResult<()> {
    cross_entropy_in_place_with(CrossEntropyKernel::Auto, logits, targets, vocab, ignore_index, out, scale)
}

/// [`cross_entropy`] on the kernel `kernel` picks; [`CrossEntropyKernel::Cluster`] where it does
/// not apply is an error.
pub fn cross_entropy_with<T: FloatElem>(
    kernel: CrossEntropyKernel,
    logits: &DeviceBuf<T>,
    targets: &DeviceBuf<u32>,
    vocab: usize,
    ignore_index: Option<u32>,
    out: CrossEntropyOutputs<'_>,
    grad: Option<(&mut DeviceBuf<T>, GradScale<'_>)>,
) -> CudaResult<()> {
    let (dlogits, scale) = match grad {
        Some((d, s)) => {
            check_len("cross_entropy", "dlogits", d, logits.len())?;
            (d.ptr(), s)
        }
        None => (0, GradScale::Uniform(0.0)),
    };
    launch(kernel, logits, dlogits, targets, vocab, ignore_index, out, scale)
}

/// [`cross_entropy_in_place`] on the kernel `kernel` picks; see [`cross_entropy_with`].
pub fn cross_entropy_in_place_with<T: FloatElem>(
    kernel: CrossEntropyKernel,
    logits: &mut DeviceBuf<T>,
    targets: &DeviceBuf<u32>,
    vocab: usize,
    ignore_index: Option<u32>,
    out: CrossEntropyOutputs<'_>,
    scale: GradScale<'_>,
) -> CudaResult<()> {
    let ptr = logits.ptr();
    launch(kernel, logits, ptr, targets, vocab, ignore_index, out, scale)
}
