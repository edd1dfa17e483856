//! Launch wrappers of `cross_entropy.cu`: the fused softmax cross-entropy over the
//! vocabulary, loss and gradient in one launch, no probability matrix.

use cudarc::driver::PushKernelArg;

use super::device::{check_len, grid1, rows_of, DeviceBuf, FloatElem};
use super::error::CudaResult;
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("cross_entropy");

const THREADS: u32 = 512;
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

/// Launches the kernel over `logits`; `dlogits` is the gradient's address (0 for none, the
/// logits' own address for in place).
fn launch<T: FloatElem>(
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
    let f = dev.function(&SOURCE, &format!("cross_entropy_{}", T::NAME))?;
    let (pl, pt, pls, ploss) = (logits.ptr(), targets.ptr(), out.lse.ptr(), out.loss.ptr());
    let (v, ig, has) = (vocab as i32, ignore_index.unwrap_or(u32::MAX), ignore_index.is_some() as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&pl).arg(&pt).arg(&dlogits).arg(&ploss).arg(&pls).arg(&pdloss).arg(&uniform);
    args.arg(&v).arg(&ig).arg(&has);
    dev.launch(args, grid1(rows as u32, THREADS, 0), "launching cross_entropy")
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
    let (dlogits, scale) = match grad {
        Some((d, s)) => {
            check_len("cross_entropy", "dlogits", d, logits.len())?;
            (d.ptr(), s)
        }
        None => (0, GradScale::Uniform(0.0)),
    };
    launch(logits, dlogits, targets, vocab, ignore_index, out, scale)
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
    let ptr = logits.ptr();
    launch(logits, ptr, targets, vocab, ignore_index, out, scale)
}
