//! Launch wrappers of `optim.cu`: the global gradient norm with its clip factor, and AdamW
//! fused over every parameter tensor in one launch.

use cudarc::driver::PushKernelArg;

use super::device::{check_len, grid1, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("optim");

const THREADS: u32 = 256;
/// Elements per block (`OPT_CHUNK` in optim.cu).
const CHUNK: usize = 256 * 8;

/// Bytes of gradient per block of the norm kernel (`NORM_CHUNK_BYTES` in optim.cu).
const NORM_CHUNK_BYTES: usize = 256 * 8 * 16;

/// Per-tensor block counts (at `chunk` elements per block) as the prefix the kernels search,
/// and the total.
fn block_prefix(
    op: &'static str,
    chunk: usize,
    lens: impl Iterator<Item = usize>,
) -> CudaResult<(Vec<i32>, usize)> {
    let mut prefix = Vec::new();
    let mut total = 0usize;
    for n in lens {
        prefix.push(
            i32::try_from(total).map_err(|_| CudaError::invalid(op, "too many elements for one launch"))?,
        );
        total += n.div_ceil(chunk);
    }
    if total >= i32::MAX as usize {
        return Err(CudaError::invalid(op, "too many elements for one launch"));
    }
    Ok((prefix, total))
}

/// The global L2 norm of `grads` and the clipping factor `min(1, max_norm / (norm + 1e-6))`
/// (1 when `max_norm <= 0`), written to `out[0]` and `out[1]` on the device, so the optimizer
/// can apply the clip without a host round trip. The sum runs in a fixed order.
pub fn global_norm<G: FloatElem>(
    grads: &[&DeviceBuf<G>],
    max_norm: f32,
    out: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "global_norm";
    check_len(OP, "out", out, 2)?;
    let dev = out.device().clone();
    let grads: Vec<&&DeviceBuf<G>> = grads.iter().filter(|g| !g.is_empty()).collect();
    let chunk = NORM_CHUNK_BYTES / std::mem::size_of::<G>();
    let (prefix, blocks) = block_prefix(OP, chunk, grads.iter().map(|g| g.len()))?;
    let partial = dev.alloc::<f32>(blocks.max(1))?;
    if blocks > 0 {
        let table: Vec<u64> = grads.iter().flat_map(|g| [g.ptr(), g.len() as u64]).collect();
        let (d_table, d_prefix) = (dev.upload(&table)?, dev.upload(&prefix)?);
        let f = dev.function(&SOURCE, &format!("sumsq_partial_{}", G::NAME))?;
        let (pt, pp, count, ppart) = (d_table.ptr(), d_prefix.ptr(), grads.len() as i32, partial.ptr());
        let mut args = dev.launcher(&f)?;
        args.arg(&pt).arg(&pp).arg(&count).arg(&ppart);
        dev.launch(args, grid1(blocks as u32, THREADS, 0), "launching sumsq_partial")?;
    } else {
        dev.fill_bytes(&partial, 0)?;
    }
    let f = dev.function(&SOURCE, "norm_finish")?;
    let (ppart, parts, po) = (partial.ptr(), blocks.max(1) as i32, out.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&ppart).arg(&parts).arg(&max_norm).arg(&po);
    dev.launch(args, grid1(1, 1024, 0), "launching norm_finish")
}

/// AdamW's hyper-parameters for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// The step number, from 1 (for the bias corrections).
    pub step: u64,
}

/// One parameter tensor's state for [`adamw_step`].
#[derive(Debug)]
pub struct AdamWTensor<'a, G: FloatElem, C: FloatElem> {
    /// f32 master weights, updated in place.
    pub param: &'a mut DeviceBuf<f32>,
    /// The gradient.
    pub grad: &'a DeviceBuf<G>,
    /// First moment (f32).
    pub m: &'a mut DeviceBuf<f32>,
    /// Second moment (f32).
    pub v: &'a mut DeviceBuf<f32>,
    /// A low-precision copy of the new weights for the forward pass, if any.
    pub copy: Option<&'a mut DeviceBuf<C>>,
    /// Decoupled weight decay (0 for biases, LayerNorm and other 1-D parameters).
    pub weight_decay: f32,
}

/// One AdamW step over all `tensors` in one launch, as PyTorch's AdamW computes it:
/// `p ← p·(1 − lr·wd) − (lr / bc1) · m / (√v / √bc2 + eps)` with `g` scaled by
/// `grad_scale[0]` (a device value such as the clip factor from [`global_norm`]'s `out[1]`).
pub fn adamw_step<G: FloatElem, C: FloatElem>(
    tensors: &mut [AdamWTensor<'_, G, C>],
    hyper: &AdamWStep,
    grad_scale: Option<(&DeviceBuf<f32>, usize)>,
) -> CudaResult<()> {
    const OP: &str = "adamw_step";
    if hyper.step == 0 {
        return Err(CudaError::invalid(OP, "steps count from 1"));
    }
    let Some(first) = tensors.first() else { return Ok(()) };
    let dev = first.param.device().clone();
    // One `AdamTensor` (optim.cu) is seven 8-byte words.
    let mut table = Vec::with_capacity(tensors.len() * 7);
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        for (what, len) in [("grad", t.grad.len()), ("m", t.m.len()), ("v", t.v.len())] {
            if len != n {
                return Err(CudaError::invalid(
                    OP,
                    format!("tensor {i}: {what} holds {len} elements, param {n}"),
                ));
            }
        }
        if let Some(c) = &t.copy {
            check_len(OP, "copy", c, n)?;
        }
        table.extend_from_slice(&[
            t.param.ptr(),
            t.grad.ptr(),
            t.m.ptr(),
            t.v.ptr(),
            t.copy.as_ref().map_or(0, |c| c.ptr()),
            n as u64,
            // `float weight_decay; int pad;` share the last 8-byte word (little-endian).
            u64::from(t.weight_decay.to_bits()),
        ]);
    }
    let (prefix, blocks) = block_prefix(OP, CHUNK, tensors.iter().map(|t| t.param.len()))?;
    if blocks == 0 {
        return Ok(());
    }
    let pscale = match grad_scale {
        Some((buf, index)) => {
            check_len(OP, "grad_scale", buf, index + 1)?;
            buf.ptr_at(index)
        }
        None => 0,
    };
    let (d_table, d_prefix) = (dev.upload(&table)?, dev.upload(&prefix)?);
    let f = dev.function(&SOURCE, &format!("adamw_g{}_c{}", G::NAME, C::NAME))?;
    let bc1 = 1.0 - f64::from(hyper.beta1).powf(hyper.step as f64);
    let bc2 = 1.0 - f64::from(hyper.beta2).powf(hyper.step as f64);
    let (bc1, bc2) = (bc1 as f32, bc2 as f32);
    let (pt, pp, count) = (d_table.ptr(), d_prefix.ptr(), tensors.len() as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&pt).arg(&pp).arg(&count).arg(&hyper.lr).arg(&hyper.beta1).arg(&hyper.beta2).arg(&hyper.eps);
    args.arg(&bc1).arg(&bc2).arg(&pscale);
    dev.launch(args, grid1(blocks as u32, THREADS, 0), "launching adamw")
}
