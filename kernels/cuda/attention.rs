//! Launch wrappers of `attention.cu`: the simple warp-per-row attention (causal or not)
//! forward and backward, used on the GPU until the flash attention kernel lands.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{blocks_for, check_len, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("attention");

/// Largest head dimension (8 values per lane).
pub const MAX_HEAD_DIM: usize = 256;
const WARPS: u32 = 4;

/// Sizes of one attention call; tensors are contiguous `[heads, seq, head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Batch × heads.
    pub heads: usize,
    /// Sequence length.
    pub seq: usize,
    /// Size of one head (at most [`MAX_HEAD_DIM`]).
    pub head_dim: usize,
    /// Mask keys after the query.
    pub causal: bool,
    /// Score scale, usually `1/√head_dim`.
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AttnDims {
    heads: i32,
    seq: i32,
    head_dim: i32,
    causal: i32,
    scale: f32,
}
// SAFETY: `#[repr(C)]` plain data matching `struct AttnDims` in attention.cu.
unsafe impl DeviceRepr for AttnDims {}

fn dims(op: &'static str, s: &AttentionShape) -> CudaResult<(AttnDims, LaunchConfig)> {
    if s.head_dim == 0 || s.head_dim > MAX_HEAD_DIM {
        return Err(CudaError::invalid(op, format!("head_dim {} is not in 1..={MAX_HEAD_DIM}", s.head_dim)));
    }
    if s.heads > 65_535 || s.seq > i32::MAX as usize {
        return Err(CudaError::invalid(
            op,
            format!("{} heads × {} positions exceed the grid", s.heads, s.seq),
        ));
    }
    let d = AttnDims {
        heads: s.heads as i32,
        seq: s.seq as i32,
        head_dim: s.head_dim as i32,
        causal: s.causal as i32,
        scale: s.scale,
    };
    let cfg = LaunchConfig {
        grid_dim: (blocks_for(op, s.seq, WARPS as usize)?, s.heads as u32, 1),
        block_dim: (32 * WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((d, cfg))
}

/// Forward: writes `out` and the per-row log-sum-exp of the scaled scores `lse` (`[heads, seq]`).
pub fn attention_forward<T: FloatElem>(
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    shape: &AttentionShape,
    out: &mut DeviceBuf<T>,
    lse: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "attention_forward";
    let n = shape.heads * shape.seq * shape.head_dim;
    for (what, buf) in [("q", q), ("k", k), ("v", v), ("out", &*out)] {
        check_len(OP, what, buf, n)?;
    }
    check_len(OP, "lse", lse, shape.heads * shape.seq)?;
    let (d, cfg) = dims(OP, shape)?;
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("attn_fwd_{}", T::NAME))?;
    let (pq, pk, pv, po, pl) = (q.ptr(), k.ptr(), v.ptr(), out.ptr(), lse.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&pq).arg(&pk).arg(&pv).arg(&po).arg(&pl);
    dev.launch(args, cfg, "launching attn_fwd")
}

/// The gradients of [`attention_forward`].
#[derive(Debug)]
pub struct AttentionGrads<'a, T: FloatElem> {
    /// Receives dQ.
    pub dq: &'a mut DeviceBuf<T>,
    /// Receives dK.
    pub dk: &'a mut DeviceBuf<T>,
    /// Receives dV.
    pub dv: &'a mut DeviceBuf<T>,
}

/// Backward: writes dQ, dK and dV from the saved `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: FloatElem>(
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    out: &DeviceBuf<T>,
    lse: &DeviceBuf<f32>,
    dout: &DeviceBuf<T>,
    shape: &AttentionShape,
    grads: AttentionGrads<'_, T>,
) -> CudaResult<()> {
    const OP: &str = "attention_backward";
    let n = shape.heads * shape.seq * shape.head_dim;
    for (what, buf) in [("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)] {
        check_len(OP, what, buf, n)?;
    }
    for (what, buf) in [("dq", &*grads.dq), ("dk", &*grads.dk), ("dv", &*grads.dv)] {
        check_len(OP, what, buf, n)?;
    }
    check_len(OP, "lse", lse, shape.heads * shape.seq)?;
    let (d, cfg) = dims(OP, shape)?;
    let dev = out.device().clone();
    let dot = dev.alloc::<f32>(shape.heads * shape.seq)?;
    let (pq, pk, pv, po, pl, pd, pdot) =
        (q.ptr(), k.ptr(), v.ptr(), out.ptr(), lse.ptr(), dout.ptr(), dot.ptr());

    let f = dev.function(&SOURCE, &format!("attn_bwd_dot_{}", T::NAME))?;
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&po).arg(&pd).arg(&pdot);
    dev.launch(args, cfg, "launching attn_bwd_dot")?;

    let f = dev.function(&SOURCE, &format!("attn_bwd_dq_{}", T::NAME))?;
    let pdq = grads.dq.ptr();
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&pq).arg(&pk).arg(&pv).arg(&pd).arg(&pl).arg(&pdot).arg(&pdq);
    dev.launch(args, cfg, "launching attn_bwd_dq")?;

    let f = dev.function(&SOURCE, &format!("attn_bwd_dkdv_{}", T::NAME))?;
    let (pdk, pdv) = (grads.dk.ptr(), grads.dv.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&pq).arg(&pk).arg(&pv).arg(&pd).arg(&pl).arg(&pdot).arg(&pdk).arg(&pdv);
    dev.launch(args, cfg, "launching attn_bwd_dkdv")
}
