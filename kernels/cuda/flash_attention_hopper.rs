//! Launch wrapper of `flash_attention_hopper.cu`: flash attention for Hopper (`sm_90a`: `wgmma`,
//! TMA, warp specialisation, `setmaxnreg`), forward ([`forward`]) and the backward's main kernel
//! (run by [`super::flash_attention::backward_with`] between the portable pre-pass and dQ
//! kernels), beside the portable `mma.sync` kernels of [`super::flash_attention`], with the same
//! layouts and log-sum-exp units, so forwards and backwards mix freely.
//!
//! Both passed `tests/cuda_flash_attention.rs` on an H200 (2026-11-30, docs/gpu-results.md).
//! [`super::flash_attention::forward`] picks the forward on such a device by default;
//! [`super::flash_attention::backward`] picks the backward only when
//! `POLYLM_GPU_FLASH_HOPPER=1`, since it measured no faster than the portable one at 2048 and
//! slower from 4096 (see [`super::flash_attention::HOPPER_ENV`]).
//!
//! Layouts are those of the portable kernels: `q`, `k`, `v`, the output and the gradients
//! `[batch, heads, seq, head_dim]` at the strides of [`super::flash_layout`], the log-sum-exp
//! dense `[batch, heads, seq]` f32 in natural-log units. The kernels read `q`, `k`, `v` (and
//! `dout`) through TMA tensor maps built here with `cuTensorMapEncodeTiled` (4-D `{head_dim, seq,
//! heads, batch}` with the operand's strides, boxes of 64 columns × 128 or 64 rows, 128-byte
//! swizzle), passed by value as `__grid_constant__` parameters. A block
//! is 3 warpgroups: one producer (TMA loads into 2-stage rings guarded by mbarriers) and two
//! consumers (forward: 64 query rows each, S = Q·Kᵀ and O += P·V; backward: 64 keys each, dK and
//! dV in registers, dQ through f32 atomics).

use cudarc::driver::{sys, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{blocks_for, CudaDevice, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::flash_attention::FlashShape;
use super::flash_layout::{FlashDims, GradOperands, Operand, Operands};
use super::source::{kernel_source, KernelSource};

/// The kernel file; it needs the `sm_90a` architecture-specific instructions.
pub const SOURCE: KernelSource =
    KernelSource { needs_sm90a: true, ..kernel_source!("flash_attention_hopper") };

/// Query rows per block (two consumer warpgroups of 64 rows).
pub const BLOCK_M: usize = 128;
/// Keys per tile of the K/V ring.
pub const BLOCK_N: usize = 128;
/// K/V tiles in flight (the ring's stages).
pub const STAGES: usize = 2;
/// Threads per block: a producer warpgroup and two consumer warpgroups.
const THREADS: u32 = 384;
/// Columns of one TMA box: 64 two-byte elements make the 128-byte rows of the 128B swizzle.
const BOX_COLS: u32 = 64;
/// The mbarriers after the tiles (Q full; K full, V full, K/V empty per stage), and the slack
/// that lets the kernel round its dynamic shared memory up to a 1024-byte boundary.
const BARRIER_BYTES: usize = 8 * (1 + 3 * STAGES);
const ALIGN_SLACK: usize = 1024;

/// Dynamic shared memory of the kernel: the Q tile, `STAGES` K and V tiles, the barriers and the
/// alignment slack (164 KiB at head dimension 128, 81 KiB at 64; an H100 allows 227 KiB).
pub fn shared_bytes(head_dim: usize) -> usize {
    (BLOCK_M + 2 * STAGES * BLOCK_N) * head_dim * 2 + BARRIER_BYTES + ALIGN_SLACK
}

/// Whether `dev` runs this kernel: compute capability 9.0 exactly (the `sm_90a` instructions
/// exist on no other architecture).
pub fn runs_on(dev: &CudaDevice) -> bool {
    let arch = dev.arch();
    arch.major == 9 && arch.minor == 0
}

/// A `CUtensorMap` as a kernel parameter: 128 opaque bytes, 64-byte aligned, passed by value to
/// a `const __grid_constant__` parameter.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct TensorMap {
    opaque: [u64; 16],
}
// SAFETY: `#[repr(C)]` plain data of exactly the size of the kernel's `FhTensorMap` parameter.
unsafe impl DeviceRepr for TensorMap {}

const _: () = assert!(std::mem::size_of::<TensorMap>() == 128 && std::mem::align_of::<TensorMap>() == 64);
// One box shape serves Q tiles and K/V tiles.
const _: () = assert!(BLOCK_M == BLOCK_N);

/// The tensor map a kernel reads operand `what` through: `[batch, heads, seq, head_dim]`
/// elements of `T` at the operand's strides (4-D, innermost first: `{head_dim, seq, heads,
/// batch}`), boxes of 64 columns × `box_rows` rows × 1 head × 1 sequence, 128-byte swizzle, zeros
/// outside the tensor (so the ragged last tile of a head never reads the next head). The
/// operand's layout has been checked ([`super::flash_layout::HeadLayout::check`]: 16-byte
/// multiples, strides below 2⁴⁰ bytes).
fn tensor_map<T: FloatElem>(
    op: &'static str,
    what: &str,
    operand: Operand,
    s: &FlashShape,
    box_rows: usize,
) -> CudaResult<TensorMap> {
    let data_type = match T::NAME {
        "bf16" => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        "f16" => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        other => return Err(CudaError::invalid(op, format!("no Hopper flash kernel for {other}"))),
    };
    if !operand.ptr.is_multiple_of(16) {
        return Err(CudaError::invalid(op, format!("{what} is not 16-byte aligned (TMA needs it)")));
    }
    let elem = std::mem::size_of::<T>() as u64;
    let l = operand.layout;
    let dims = [s.head_dim as u64, s.seq as u64, s.heads as u64, s.batch as u64];
    // Byte strides of the dimensions after the first. The stride of a dimension of one element
    // is never used; it gets the packed value (a multiple of 16, never 0) so that the driver
    // sees a regular map.
    let mut strides = [l.row as u64 * elem, l.head as u64 * elem, l.batch as u64 * elem];
    for i in 0..3 {
        if dims[i + 1] == 1 {
            strides[i] = if i == 0 { dims[0] * elem } else { strides[i - 1] * dims[i] };
        }
    }
    let boxes = [BOX_COLS, box_rows as u32, 1, 1];
    let element_strides = [1u32; 4];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer refers to a live local array of the length the rank (4) implies;
    // the global address lies in a live device allocation that covers every element the
    // layout reaches (checked with the layout); the driver only writes the 128-byte map.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            4,
            operand.ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(CudaError::driver("encoding a TMA tensor map"))?;
    Ok(TensorMap { opaque: map.opaque })
}

/// Forward on the Hopper kernel, on operands [`super::flash_attention::forward_strided`] has
/// checked: writes the output at its layout and the per-row log-sum-exp `lse` (`[batch, heads,
/// seq]`, f32), exactly what the portable kernel writes. The caller has checked that `dev` is
/// compute capability 9.0.
pub(crate) fn forward<T: FloatElem>(
    dev: &std::sync::Arc<CudaDevice>,
    ops: &Operands,
    shape: &FlashShape,
    lse: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_hopper_forward";
    let map = |what, o| tensor_map::<T>(OP, what, o, shape, BLOCK_M);
    let (tq, tk, tv) = (map("q", ops.q)?, map("k", ops.k)?, map("v", ops.v)?);
    let shared = shared_bytes(shape.head_dim);
    let f = dev.function(&SOURCE, &format!("flash_fwd_hopper_{}_d{}", T::NAME, shape.head_dim))?;
    dev.allow_shared_memory(&f, shared as u32)?;
    // Block x is query tile x / bh of head x % bh (heaviest causal tiles first).
    let cfg = launch_config(OP, shape, BLOCK_M, shared)?;
    let d = FlashDims::new(shape, ops, None);
    let (po, pl) = (ops.o.ptr, lse.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&tq).arg(&tk).arg(&tv).arg(&po).arg(&pl);
    dev.launch(args, cfg, "launching flash_fwd_hopper")
}

/// The launch of a kernel whose blocks each take `rows` rows (queries or keys) of one head:
/// a one-dimensional grid of row tiles × heads.
fn launch_config(
    op: &'static str,
    shape: &FlashShape,
    rows: usize,
    shared: usize,
) -> CudaResult<LaunchConfig> {
    let bh = shape.batch * shape.heads;
    Ok(LaunchConfig {
        grid_dim: (blocks_for(op, shape.seq.div_ceil(rows) * bh, 1)?, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    })
}

/// An error unless `dev` is compute capability 9.0 ([`runs_on`]).
pub(crate) fn require_hopper(op: &'static str, dev: &CudaDevice) -> CudaResult<()> {
    if runs_on(dev) {
        return Ok(());
    }
    let arch = dev.arch();
    Err(CudaError::invalid(
        op,
        format!(
            "the Hopper kernel needs compute capability 9.0; {} is {}.{}",
            dev.name(),
            arch.major,
            arch.minor
        ),
    ))
}

/// Query rows per tile and keys per block of the backward kernel (`FHB_BM`, `FHB_BN`).
pub const BACKWARD_BLOCK_M: usize = 64;
/// Keys per block of the backward kernel.
pub const BACKWARD_BLOCK_N: usize = 128;
/// The backward's mbarriers: K/V full, and Q/dO full and empty per stage.
const BACKWARD_BARRIER_BYTES: usize = 8 * (1 + 2 * STAGES);

/// Dynamic shared memory of the backward kernel: the K and V tiles, `STAGES` Q and dO tiles,
/// the dSᵀ tile, the barriers and the alignment slack (145 KiB at head dimension 128, 81 KiB at 64).
pub fn backward_shared_bytes(head_dim: usize) -> usize {
    (2 * BACKWARD_BLOCK_N + 2 * STAGES * BACKWARD_BLOCK_M) * head_dim * 2
        + BACKWARD_BLOCK_N * 64 * 2
        + BACKWARD_BARRIER_BYTES
        + ALIGN_SLACK
}

/// The backward's main kernel on Hopper, between the portable pre-pass and dQ kernels of
/// [`super::flash_attention::backward_with`], on checked operands: adds dS·K (unscaled) into
/// the dense `dq_acc` and writes dK and dV at their layouts. The caller has checked the device.
pub(crate) fn backward_main<T: FloatElem>(
    dev: &std::sync::Arc<CudaDevice>,
    (ops, grads): (&Operands, &GradOperands),
    shape: &FlashShape,
    lse: &DeviceBuf<f32>,
    dot: &DeviceBuf<f32>,
    dq_acc: &DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_hopper_backward";
    let map = |what, o, rows| tensor_map::<T>(OP, what, o, shape, rows);
    let (tq, tdo) = (map("q", ops.q, BACKWARD_BLOCK_M)?, map("dout", grads.dout, BACKWARD_BLOCK_M)?);
    let (tk, tv) = (map("k", ops.k, BACKWARD_BLOCK_N)?, map("v", ops.v, BACKWARD_BLOCK_N)?);
    let shared = backward_shared_bytes(shape.head_dim);
    let f = dev.function(&SOURCE, &format!("flash_bwd_hopper_{}_d{}", T::NAME, shape.head_dim))?;
    dev.allow_shared_memory(&f, shared as u32)?;
    // Block x is key block x / bh of head x % bh (key block 0 first).
    let cfg = launch_config(OP, shape, BACKWARD_BLOCK_N, shared)?;
    let d = FlashDims::new(shape, ops, Some(grads));
    let (pl, pdot, pacc) = (lse.ptr(), dot.ptr(), dq_acc.ptr());
    let (pdk, pdv) = (grads.dk.ptr, grads.dv.ptr);
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&tq).arg(&tk).arg(&tv).arg(&tdo).arg(&pl).arg(&pdot).arg(&pacc).arg(&pdk).arg(&pdv);
    dev.launch(args, cfg, "launching flash_bwd_hopper")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_an_h100() {
        // 227 KiB of dynamic shared memory per block on sm_90.
        assert!(shared_bytes(128) <= 227 * 1024, "{}", shared_bytes(128));
        assert_eq!(shared_bytes(128), 160 * 1024 + BARRIER_BYTES + ALIGN_SLACK);
        assert_eq!(shared_bytes(64), 80 * 1024 + BARRIER_BYTES + ALIGN_SLACK);
        assert!(backward_shared_bytes(128) <= 227 * 1024, "{}", backward_shared_bytes(128));
        assert_eq!(backward_shared_bytes(128), 144 * 1024 + BACKWARD_BARRIER_BYTES + ALIGN_SLACK);
        assert_eq!(backward_shared_bytes(64), 80 * 1024 + BACKWARD_BARRIER_BYTES + ALIGN_SLACK);
    }

    #[test]
    fn source_needs_sm90a() {
        const { assert!(SOURCE.needs_sm90a) };
        // The wgmma and TMA wrappers live in the Hopper prelude, which an sm_90a file gets.
        let text = SOURCE.full_text();
        assert!(text.contains("wgmma.mma_async") && text.contains("cp.async.bulk.tensor"));
        assert!(SOURCE.code.contains("wgmma_ss_m64n128k16") && SOURCE.code.contains("tma_load_4d"));
    }
}
