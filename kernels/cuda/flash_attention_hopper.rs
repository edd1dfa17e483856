//! Launch wrapper of `flash_attention_hopper.cu`: flash attention for Hopper (`sm_90a`: `wgmma`,
//! TMA, warp specialisation, `setmaxnreg`), forward ([`forward`]) and the backward's main kernel
//! (run by [`super::flash_attention::backward_with`] between the portable pre-pass and dQ
//! kernels), beside the portable `mma.sync` kernels of [`super::flash_attention`], with the same
//! layouts and log-sum-exp units, so forwards and backwards mix freely.
//!
//! **Not yet run on a GPU.** It compiles for `sm_90a` without spills (the NVRTC gate), its SASS
//! holds the `HGMMA` and `UTMALDG` instructions, and the host emulation
//! (`kernels/tests/host_emulation.rs`) runs both kernels on the CPU against an f64 attention;
//! until a GPU session has passed `tests/cuda_flash_attention.rs` with them,
//! [`super::flash_attention::forward`] and [`super::flash_attention::backward`] only pick them
//! when `POLYLM_GPU_FLASH_HOPPER=1` (see [`super::flash_attention::ForwardKernel`] and
//! [`super::flash_attention::BackwardKernel`]).
//!
//! Layouts are those of the portable kernels: `q`, `k`, `v`, the output and the gradients
//! contiguous `[batch, heads, seq, head_dim]`, the log-sum-exp `[batch, heads, seq]` f32 in
//! natural-log units. The kernels read `q`, `k`, `v` (and `dout`) through TMA tensor maps built
//! here with `cuTensorMapEncodeTiled` (3-D `{head_dim, seq, batch·heads}`, boxes of 64 columns ×
//! 128 or 64 rows, 128-byte swizzle), passed by value as `__grid_constant__` parameters. A block
//! is 3 warpgroups: one producer (TMA loads into 2-stage rings guarded by mbarriers) and two
//! consumers (forward: 64 query rows each, S = Q·Kᵀ and O += P·V; backward: 64 keys each, dK and
//! dV in registers, dQ through f32 atomics).

use cudarc::driver::{sys, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{blocks_for, CudaDevice, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::flash_attention::FlashShape;
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

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct HopperDims {
    bh: i32,
    seq: i32,
    causal: i32,
    scale: f32,
}
// SAFETY: `#[repr(C)]` plain data matching `struct FlashDims` in flash_attention_hopper.cu.
unsafe impl DeviceRepr for HopperDims {}

/// The tensor map a kernel reads `buf` through: `[batch·heads, seq, head_dim]` elements of `T`,
/// boxes of 64 columns × `box_rows` rows × 1 head, 128-byte swizzle, zeros outside the tensor
/// (so the ragged last tile of a head never reads the next head).
fn tensor_map<T: FloatElem>(
    op: &'static str,
    what: &str,
    buf: &DeviceBuf<T>,
    s: &FlashShape,
    box_rows: usize,
) -> CudaResult<TensorMap> {
    let data_type = match T::NAME {
        "bf16" => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        "f16" => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        other => return Err(CudaError::invalid(op, format!("no Hopper flash kernel for {other}"))),
    };
    if !buf.ptr().is_multiple_of(16) {
        return Err(CudaError::invalid(op, format!("{what} is not 16-byte aligned (TMA needs it)")));
    }
    let elem = std::mem::size_of::<T>() as u64;
    let (d, t, bh) = (s.head_dim as u64, s.seq as u64, (s.batch * s.heads) as u64);
    // Innermost first; strides (in bytes) of the dimensions after the first. `validate` keeps
    // every size below 2³¹ rows and the strides below TMA's 2⁴⁰ bytes.
    let dims = [d, t, bh];
    let strides = [d * elem, t * d * elem];
    let boxes = [BOX_COLS, box_rows as u32, 1];
    let element_strides = [1u32; 3];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer refers to a live local array of the length the rank (3) implies;
    // the global address is a live device allocation covering `bh·t·d` elements (checked by
    // the caller); the driver only writes the 128-byte map.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            3,
            buf.ptr() as *mut std::ffi::c_void,
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

/// Forward on the Hopper kernel: writes `out = softmax(scale·q·kᵀ + mask)·v` and the per-row
/// log-sum-exp `lse` (`[batch, heads, seq]`, f32), exactly what
/// [`super::flash_attention::forward`] writes, so [`super::flash_attention::backward`] takes them.
///
/// Errors with [`CudaError::Invalid`] when the shape is unsupported ([`FlashShape::validate`]),
/// a buffer is shorter than the shape needs, or the device is not compute capability 9.0
/// ([`runs_on`]).
pub fn forward<T: FloatElem>(
    q: &DeviceBuf<T>,
    k: &DeviceBuf<T>,
    v: &DeviceBuf<T>,
    shape: &FlashShape,
    out: &mut DeviceBuf<T>,
    lse: &mut DeviceBuf<f32>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_hopper_forward";
    shape.check_forward(OP, (q, k, v), out, lse)?;
    let dev = out.device().clone();
    require_hopper(OP, &dev)?;
    let map = |what, buf| tensor_map(OP, what, buf, shape, BLOCK_M);
    let (tq, tk, tv) = (map("q", q)?, map("k", k)?, map("v", v)?);
    let shared = shared_bytes(shape.head_dim);
    let f = dev.function(&SOURCE, &format!("flash_fwd_hopper_{}_d{}", T::NAME, shape.head_dim))?;
    dev.allow_shared_memory(&f, shared as u32)?;
    // Block x is query tile x / bh of head x % bh (heaviest causal tiles first).
    let (cfg, d) = launch_shape(OP, shape, BLOCK_M, shared)?;
    let (po, pl) = (out.ptr(), lse.ptr());
    let mut args = dev.launcher(&f)?;
    args.arg(&d).arg(&tq).arg(&tk).arg(&tv).arg(&po).arg(&pl);
    dev.launch(args, cfg, "launching flash_fwd_hopper")
}

/// The launch of a kernel whose blocks each take `rows` rows (queries or keys) of one head:
/// a one-dimensional grid of row tiles × heads, and the dimensions argument.
fn launch_shape(
    op: &'static str,
    shape: &FlashShape,
    rows: usize,
    shared: usize,
) -> CudaResult<(LaunchConfig, HopperDims)> {
    let bh = shape.batch * shape.heads;
    let cfg = LaunchConfig {
        grid_dim: (blocks_for(op, shape.seq.div_ceil(rows) * bh, 1)?, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    let dims =
        HopperDims { bh: bh as i32, seq: shape.seq as i32, causal: shape.causal as i32, scale: shape.scale };
    Ok((cfg, dims))
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

/// The inputs of the backward's main kernel.
#[derive(Debug)]
pub(crate) struct BackwardInputs<'a, T: FloatElem> {
    /// Queries, keys, values and the output gradient, `[batch, heads, seq, head_dim]`.
    pub q: &'a DeviceBuf<T>,
    /// Keys.
    pub k: &'a DeviceBuf<T>,
    /// Values.
    pub v: &'a DeviceBuf<T>,
    /// The output gradient.
    pub dout: &'a DeviceBuf<T>,
    /// The forward's log-sum-exp, `[batch, heads, seq]`.
    pub lse: &'a DeviceBuf<f32>,
    /// The pre-pass's row dots rowsum(dO∘O), `[batch, heads, seq]`.
    pub dot: &'a DeviceBuf<f32>,
}

/// The backward's main kernel on Hopper, between the portable pre-pass and dQ kernels of
/// [`super::flash_attention::backward_with`]: adds dS·K (unscaled) into `dq_acc` and writes
/// `dk`, `dv`. The caller has checked every length against `shape`.
pub(crate) fn backward_main<T: FloatElem>(
    inputs: BackwardInputs<'_, T>,
    shape: &FlashShape,
    dq_acc: &DeviceBuf<f32>,
    dk: &mut DeviceBuf<T>,
    dv: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    const OP: &str = "flash_attention_hopper_backward";
    let dev = dk.device().clone();
    require_hopper(OP, &dev)?;
    let BackwardInputs { q, k, v, dout, lse, dot } = inputs;
    let (tq, tdo) = (
        tensor_map(OP, "q", q, shape, BACKWARD_BLOCK_M)?,
        tensor_map(OP, "dout", dout, shape, BACKWARD_BLOCK_M)?,
    );
    let (tk, tv) =
        (tensor_map(OP, "k", k, shape, BACKWARD_BLOCK_N)?, tensor_map(OP, "v", v, shape, BACKWARD_BLOCK_N)?);
    let shared = backward_shared_bytes(shape.head_dim);
    let f = dev.function(&SOURCE, &format!("flash_bwd_hopper_{}_d{}", T::NAME, shape.head_dim))?;
    dev.allow_shared_memory(&f, shared as u32)?;
    // Block x is key block x / bh of head x % bh (key block 0 first).
    let (cfg, d) = launch_shape(OP, shape, BACKWARD_BLOCK_N, shared)?;
    let (pl, pdot, pacc, pdk, pdv) = (lse.ptr(), dot.ptr(), dq_acc.ptr(), dk.ptr(), dv.ptr());
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
        assert!(SOURCE.code.contains("wgmma_ss_m64n128k16") && SOURCE.code.contains("tma_load_3d"));
    }
}
