//! Launch wrappers of `flash_attention.cu`: flash attention forward and backward on tensor cores
//! (`mma.sync` with bf16 or f16 inputs, f32 softmax and accumulators), for head dimensions 64
//! and 128, causal or not, any sequence length.
//!
//! [`forward`] and [`backward`] take the layout of [`super::attention`]: `q`, `k`, `v`, the
//! output and every gradient contiguous `[batch, heads, seq, head_dim]` (batch and heads may be
//! flattened into one axis: pass `batch = 1` and the product as `heads`).
//! [`forward_strided`] and [`backward_strided`] take each operand at its own strides
//! ([`super::flash_layout`]), so the engine reads a fused QKV projection's output in place and
//! writes the output and the gradients where the next op wants them. The saved log-sum-exp is
//! always dense `[batch, heads, seq]` in f32, the natural log of the row sums of
//! `exp(scale·q·kᵀ)`, exactly what the simple kernel and the CPU op save. So the backward of one
//! kernel accepts the forward outputs of the other.
//!
//! Only bf16 and f16 storage with head dimension 64 or 128 run here ([`supports`]); other cases
//! get a [`CudaError::Invalid`], and the caller keeps the simple kernel for them.
//!
//! Forward and backward have second kernels for Hopper, [`super::flash_attention_hopper`]
//! (`wgmma`, TMA, warp specialisation). On a compute-capability-9.0 device [`forward`] runs the
//! Hopper forward and [`backward`] the portable backward by default, the pair that measured
//! fastest on an H200 (docs/gpu-results.md, 2026-11-30: the Hopper forward 1.3-1.6 times the
//! portable one, the Hopper backward no faster at 2048 and slower from 4096);
//! `POLYLM_GPU_FLASH_HOPPER` changes that ([`HOPPER_ENV`]). [`forward_with`] and
//! [`backward_with`] force either kernel (tests and benchmarks do).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{blocks_for, check_len, grid1, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::flash_layout::{FlashDims, GradOperands, GradTargets, HeadView, HeadViewMut, Operands};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("flash_attention");

/// Query rows per forward block and per backward query tile (4 warps × 16 rows).
pub const BLOCK_M: usize = 64;
/// Keys per forward tile and per backward block.
pub const BLOCK_N: usize = 64;
/// The head dimensions with a compiled kernel.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
const THREADS: u32 = 128;
/// Padding, in elements, of every shared-memory row (16 bytes).
const PAD: usize = 8;
/// Rows (one warp each) per block of the backward pre-pass.
const PREP_ROWS: usize = 8;

/// Sizes and options of one flash attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashShape {
    /// Independent sequences.
    pub batch: usize,
    /// Heads per sequence.
    pub heads: usize,
    /// Sequence length (queries and keys), any value from 1.
    pub seq: usize,
    /// Size of one head: 64 or 128.
    pub head_dim: usize,
    /// Mask key `j` for query `i` when `j > i`.
    pub causal: bool,
    /// Score scale, usually `1/√head_dim` (see [`FlashShape::new`]).
    pub scale: f32,
}

impl FlashShape {
    /// A shape with the usual scale `1/√head_dim`.
    pub fn new(batch: usize, heads: usize, seq: usize, head_dim: usize, causal: bool) -> FlashShape {
        FlashShape { batch, heads, seq, head_dim, causal, scale: 1.0 / (head_dim.max(1) as f32).sqrt() }
    }

    /// Elements of one `[batch, heads, seq, head_dim]` tensor.
    pub fn qkv_len(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }

    /// Elements of the `[batch, heads, seq]` log-sum-exp.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.seq
    }

    /// Floating-point operations of the forward (two products of `seq²·head_dim` multiply-adds
    /// per head), halved when causal. The backward does 2.5 times as many.
    pub fn forward_flops(&self) -> f64 {
        let full = 4.0 * (self.batch * self.heads) as f64 * (self.seq as f64).powi(2) * self.head_dim as f64;
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }

    /// Checks that the kernels support this shape with storage type `T`, without touching a
    /// device; the error says why not.
    pub fn validate<T: FloatElem>(&self, op: &'static str) -> CudaResult<()> {
        if !matches!(T::NAME, "bf16" | "f16") {
            return Err(CudaError::invalid(
                op,
                format!("flash attention takes bf16 or f16, not {}", T::NAME),
            ));
        }
        if !HEAD_DIMS.contains(&self.head_dim) {
            return Err(CudaError::invalid(
                op,
                format!("head_dim {} has no flash kernel (supported: {HEAD_DIMS:?})", self.head_dim),
            ));
        }
        let bh = self.batch.saturating_mul(self.heads);
        if bh == 0 || self.seq == 0 {
            return Err(CudaError::invalid(
                op,
                format!("empty problem: batch {} × heads {} × seq {}", self.batch, self.heads, self.seq),
            ));
        }
        // Rows (batch × heads × seq) are counted in 32-bit integers by the kernels, a tile past
        // the last row included.
        let rows = bh.saturating_mul(self.seq);
        if self.seq > i32::MAX as usize - BLOCK_M
            || rows > i32::MAX as usize - BLOCK_M
            || rows.checked_mul(self.head_dim).is_none()
        {
            return Err(CudaError::invalid(
                op,
                format!("{bh} heads × {} positions exceed the kernels' 32-bit row count", self.seq),
            ));
        }
        if !self.scale.is_finite() || self.scale <= 0.0 {
            return Err(CudaError::invalid(op, format!("scale {} must be finite and positive", self.scale)));
        }
        Ok(())
    }
}

/// Whether the flash kernels run storage type `T` with this head dimension.
pub fn supports<T: FloatElem>(head_dim: usize) -> bool {
    matches!(T::NAME, "bf16" | "f16") && HEAD_DIMS.contains(&head_dim)
}

/// Dynamic shared memory of the forward kernel: a Q tile and two stages each of K and V.
pub fn forward_shared_bytes(head_dim: usize) -> usize {
    (BLOCK_M + 4 * BLOCK_N) * (head_dim + PAD) * 2
}

/// Dynamic shared memory of the main backward kernel: K, V, two stages each of Q and dO, the
/// dSᵀ tile and two stages of the query rows' log-sum-exp and row dots.
pub fn backward_shared_bytes(head_dim: usize) -> usize {
    6 * BLOCK_M * (head_dim + PAD) * 2 + BLOCK_N * (BLOCK_M + PAD) * 2 + 4 * BLOCK_M * 4
}

fn tiles_grid(
    op: &'static str,
    s: &FlashShape,
    rows_per_block: usize,
    shared: usize,
) -> CudaResult<LaunchConfig> {
    Ok(LaunchConfig {
        // One-dimensional: block x is tile x / bh of head x % bh (heaviest causal tiles first).
        grid_dim: (blocks_for(op, s.seq.div_ceil(rows_per_block) * s.batch * s.heads, 1)?, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    })
}

/// Which forward kernel [`forward_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardKernel {
    /// The Hopper kernel on a compute-capability-9.0 device unless `POLYLM_GPU_FLASH_HOPPER=0`,
    /// else the portable one (what [`forward`] does).
    Auto,
    /// The portable `mma.sync` kernel of this module, on any device.
    Portable,
    /// [`super::flash_attention_hopper::forward`]: an error on a device other than 9.0.
    Hopper,
}

/// The environment variable that picks the kernels on a compute-capability-9.0 device: unset
/// or `forward`, the Hopper forward and the portable backward (the default); `1` or `all`, both
/// Hopper kernels; `0`, both portable.
pub const HOPPER_ENV: &str = "POLYLM_GPU_FLASH_HOPPER";

/// Whether [`HOPPER_ENV`] lets the automatic choice run the Hopper kernel of the `backward`
/// pass (or of the forward) on a device that has it.
pub fn hopper_requested(backward: bool) -> bool {
    use super::device::env_is;
    if backward {
        env_is(HOPPER_ENV, "1") || env_is(HOPPER_ENV, "all")
    } else {
        !env_is(HOPPER_ENV, "0")
    }
}

/// Forward: writes `out = softmax(scale·q·kᵀ + mask)·v` and the per-row log-sum-exp `lse` of the
/// scaled scores (`[batch, heads, seq]`, f32), which [`backward`] needs. Runs the Hopper kernel on
/// an sm_90 device unless `POLYLM_GPU_FLASH_HOPPER=0`, else the portable one
/// ([`ForwardKernel::Auto`]).
///
/// Errors with [`CudaError::Invalid`] when the shape is unsupported ([`FlashShape::validate`])
/// or a buffer is shorter than the shape needs.
pub fn forward<T: FloatElem>(
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    shape: &FlashShape,
    out: &mut DeviceBuf<T>,
    lse: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    forward_with(ForwardKernel::Auto, q, k, v, shape, out, lse)
}

/// [`forward`] on the kernel `kernel` picks; errors like [`forward`], and (for
/// [`ForwardKernel::Hopper`]) on a device that is not compute capability 9.0.
pub fn forward_with<T: FloatElem>(
    kernel: ForwardKernel,
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    shape: &FlashShape,
    out: &mut DeviceBuf<T>,
    lse: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    let dense = |buf| HeadView::dense(buf, shape);
    forward_strided(kernel, [dense(q), dense(k), dense(v)], shape, HeadViewMut::dense(out, shape), lse)
}

/// [`forward_with`] on operands at any strides: `qkv` are q, k and v (they may share a buffer,
/// such as a fused projection's `[batch, seq, 3, heads, head_dim]` output), `out` receives the
/// output at its layout; `lse` is dense `[batch, heads, seq]`. Errors like [`forward_with`], and
/// on a layout the kernels cannot take ([`super::flash_layout::HeadLayout`]).
pub fn forward_strided<T: FloatElem>(
    kernel: ForwardKernel,
    [q, k, v]: [HeadView<'_, T>; 3],
    shape: &FlashShape,
    out: HeadViewMut<'_, T>,
    lse: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_forward";
    shape.validate::<T>(OP)?;
    let ops = Operands {
        q: q.operand(OP, "q", shape)?,
        k: k.operand(OP, "k", shape)?,
        v: v.operand(OP, "v", shape)?,
        o: out.operand(OP, "out", shape)?,
    };
    check_len(OP, "lse", lse, shape.lse_len())?;
    let dev = out.buf.device().clone();
    let forced = match kernel {
        ForwardKernel::Auto => None,
        ForwardKernel::Portable => Some(false),
        ForwardKernel::Hopper => Some(true),
    };
    if uses_hopper(OP, &dev, forced, false)? {
        return super::flash_attention_hopper::forward::<T>(&dev, &ops, shape, lse);
    }
    let shared = forward_shared_bytes(shape.head_dim);
    let f = dev.function(&SOURCE, &format!("flash_fwd_{}_d{}", T::NAME, shape.head_dim))?;
    dev.allow_shared_memory(&f, shared as u32)?;
    let cfg = tiles_grid(OP, shape, BLOCK_M, shared)?;
    let d = FlashDims::new(shape, &ops, None);
    let (pq, pk, pv, po, pl) = (ops.q.ptr, ops.k.ptr, ops.v.ptr, ops.o.ptr, lse.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&pq).arg(&pk).arg(&pv).arg(&po).arg(&pl);
    dev.launch(args, cfg, "launching flash_fwd")
}

/// Whether a call (of the `backward` pass, or the forward) runs the Hopper kernel: as `forced`
/// says (an error for `Some(true)` on a device other than compute capability 9.0), else as
/// [`hopper_requested`] says on such a device.
fn uses_hopper(
    op: &'static str,
    dev: &std::sync::Arc<super::CudaDevice>,
    forced: Option<bool>,
    backward: bool,
) -> CudaResult<bool> {
    match forced {
        Some(true) => super::flash_attention_hopper::require_hopper(op, dev).map(|()| true),
        Some(false) => Ok(false),
        None => Ok(hopper_requested(backward) && super::flash_attention_hopper::runs_on(dev)),
    }
}

/// A diagnostic for benchmarks, for the calling thread: while `skip_dq` is set, every backward
/// pass it launches on the Hopper kernel skips dQ (its products and its f32 atomic adds), so
/// dQ comes out zero and the pass's time without it can be set against the full one. (dQ is
/// one of the backward's five products; the portable kernel, with no register to spare at
/// head dim 128, ignores the probe.) Never set it in training.
pub fn set_backward_probe(skip_dq: bool) {
    use super::flash_layout::{BACKWARD_PROBE, PROBE_NO_DQ};
    BACKWARD_PROBE.set(if skip_dq { PROBE_NO_DQ } else { 0 });
}

/// The gradients [`backward`] writes: the same triple the simple attention kernel fills.
pub type FlashGrads<'a, T> = super::attention::AttentionGrads<'a, T>;

/// Which kernel [`backward_with`] runs between the shared pre-pass and dQ kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardKernel {
    /// The Hopper kernel on a compute-capability-9.0 device when `POLYLM_GPU_FLASH_HOPPER=1`
    /// (or `all`), else the portable one (what [`backward`] does).
    Auto,
    /// The portable `mma.sync` kernel of this module, on any device.
    Portable,
    /// `flash_bwd_hopper` of [`super::flash_attention_hopper`]: an error on a device other than
    /// 9.0.
    Hopper,
}

/// Backward: writes dQ, dK and dV from the inputs, the forward's `out` and `lse`, and the
/// output gradient `dout`. The probabilities are recomputed tile by tile from `lse`; the only
/// workspace is an f32 dQ accumulator of the size of `q` and the `[batch, heads, seq]` row dots.
/// Runs the portable kernel, or the Hopper one on an sm_90 device when
/// `POLYLM_GPU_FLASH_HOPPER=1` or `all` ([`BackwardKernel::Auto`]).
///
/// Errors like [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn backward<T: FloatElem>(
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    out: &DeviceBuf<T>,
    lse: &DeviceBuf<f32>,
    dout: &DeviceBuf<T>,
    shape: &FlashShape,
    grads: FlashGrads<'_, T>,
) -> CudaResult<()> {
    backward_with(BackwardKernel::Auto, q, k, v, out, lse, dout, shape, grads)
}

/// [`backward`] on the kernel `kernel` picks; errors like [`backward`], and (for
/// [`BackwardKernel::Hopper`]) on a device that is not compute capability 9.0.
#[allow(clippy::too_many_arguments)]
pub fn backward_with<T: FloatElem>(
    kernel: BackwardKernel,
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    out: &DeviceBuf<T>,
    lse: &DeviceBuf<f32>,
    dout: &DeviceBuf<T>,
    shape: &FlashShape,
    grads: FlashGrads<'_, T>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_backward";
    shape.validate::<T>(OP)?;
    let dense = |buf| HeadView::dense(buf, shape);
    let inputs = BackwardInputs { q: dense(q), k: dense(k), v: dense(v), out: dense(out), dout: dense(dout) };
    let grads = GradTargets::Separate {
        dq: HeadViewMut::dense(grads.dq, shape),
        dk: HeadViewMut::dense(grads.dk, shape),
        dv: HeadViewMut::dense(grads.dv, shape),
    };
    backward_strided(kernel, inputs, lse, shape, grads)
}

/// What a backward pass reads besides the log-sum-exp, each at its own layout.
#[derive(Clone, Copy, Debug)]
pub struct BackwardInputs<'a, T: FloatElem> {
    /// Queries.
    pub q: HeadView<'a, T>,
    /// Keys.
    pub k: HeadView<'a, T>,
    /// Values.
    pub v: HeadView<'a, T>,
    /// The forward's output.
    pub out: HeadView<'a, T>,
    /// The gradient of the output.
    pub dout: HeadView<'a, T>,
}

impl<T: FloatElem> BackwardInputs<'_, T> {
    /// The checked operands, with dQ, dK and dV from `grads`.
    fn operands(
        &self,
        op: &'static str,
        s: &FlashShape,
        grads: &GradTargets<'_, T>,
    ) -> CudaResult<(Operands, GradOperands)> {
        let ops = Operands {
            q: self.q.operand(op, "q", s)?,
            k: self.k.operand(op, "k", s)?,
            v: self.v.operand(op, "v", s)?,
            o: self.out.operand(op, "out", s)?,
        };
        let dout = self.dout.operand(op, "dout", s)?;
        let [dq, dk, dv] = grads.operands(op, s)?;
        Ok((ops, GradOperands { dout, dq, dk, dv }))
    }
}

/// [`backward_with`] on operands at any strides, dQ, dK and dV written at their own layouts,
/// in three buffers or one (a packed QKV gradient). Errors like [`backward_with`], on a layout
/// the kernels cannot take, and when packed gradients' layouts may overlap.
pub fn backward_strided<T: FloatElem>(
    kernel: BackwardKernel,
    inputs: BackwardInputs<'_, T>,
    lse: &DeviceBuf<f32>,
    shape: &FlashShape,
    grads: GradTargets<'_, T>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_backward";
    shape.validate::<T>(OP)?;
    let (ops, grad_ops) = inputs.operands(OP, shape, &grads)?;
    let forced = match kernel {
        BackwardKernel::Auto => None,
        BackwardKernel::Portable => Some(false),
        BackwardKernel::Hopper => Some(true),
    };
    backward_operands::<T>(forced, grads.device(), (&ops, &grad_ops), lse, shape)
}

/// The backward's three launches on checked operands: the pre-pass, the main kernel (portable
/// or Hopper), the dQ conversion.
fn backward_operands<T: FloatElem>(
    forced_hopper: Option<bool>,
    dev: &std::sync::Arc<super::CudaDevice>,
    (ops, grads): (&Operands, &GradOperands),
    lse: &DeviceBuf<f32>,
    shape: &FlashShape,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_backward";
    check_len(OP, "lse", lse, shape.lse_len())?;
    let hopper = uses_hopper(OP, dev, forced_hopper, true)?;
    let rows = shape.lse_len();
    let n = shape.qkv_len();
    let dq_acc = dev.alloc::<f32>(n)?;
    let dot = dev.alloc::<f32>(rows)?;
    let d = FlashDims::new(shape, ops, Some(grads));
    let dim_i = shape.head_dim as i32;

    // Row dots D = rowsum(dO∘O), and the dQ accumulator zeroed.
    let f = dev.function(&SOURCE, &format!("flash_bwd_prep_{}", T::NAME))?;
    let cfg = grid1(blocks_for(OP, rows, PREP_ROWS)?, 32 * PREP_ROWS as u32, 0);
    let (po, pd, pacc, pdot) = (ops.o.ptr, grads.dout.ptr, dq_acc.ptr(), dot.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&dim_i).arg(&po).arg(&pd).arg(&pdot).arg(&pacc);
    dev.launch(args, cfg, "launching flash_bwd_prep")?;

    // dK, dV per key block; dQ added into the f32 accumulator.
    if hopper {
        super::flash_attention_hopper::backward_main::<T>(dev, (ops, grads), shape, lse, &dot, &dq_acc)?;
    } else {
        let shared = backward_shared_bytes(shape.head_dim);
        let f = dev.function(&SOURCE, &format!("flash_bwd_{}_d{}", T::NAME, shape.head_dim))?;
        dev.allow_shared_memory(&f, shared as u32)?;
        let cfg = tiles_grid(OP, shape, BLOCK_N, shared)?;
        let (pq, pk, pv, pl) = (ops.q.ptr, ops.k.ptr, ops.v.ptr, lse.ptr());
        let (pdk, pdv) = (grads.dk.ptr, grads.dv.ptr);
        let mut args = dev.launcher(&f)?;
        args.arg(&d).arg(&pq).arg(&pk).arg(&pv).arg(&pd).arg(&pl).arg(&pdot).arg(&pacc).arg(&pdk).arg(&pdv);
        dev.launch(args, cfg, "launching flash_bwd")?;
    }

    // dQ = scale · accumulator, in the storage type, at dq's layout.
    let f = dev.function(&SOURCE, &format!("flash_bwd_dq_{}", T::NAME))?;
    let cfg = grid1(blocks_for(OP, n / 4, 256)?, 256, 0);
    let pdq = grads.dq.ptr;
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&dim_i).arg(&pacc).arg(&pdq);
    dev.launch(args, cfg, "launching flash_bwd_dq")
}
