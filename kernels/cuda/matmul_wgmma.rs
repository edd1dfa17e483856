//! Launch wrapper of `matmul_wgmma.cu`: the Hopper (sm_90a) path of the tensor-core matrix
//! product, on `wgmma` fed by TMA (`cp.async.bulk.tensor`, 128-byte swizzle) through a
//! multi-stage shared-memory ring guarded by mbarriers, warp-specialised (one producer
//! warpgroup, two consumer warpgroups) and persistent (one block per SM).
//!
//! It passed `tests/cuda_matmul_tc.rs` on an H200 (2026-11-30, docs/gpu-results.md) and ran
//! 2.1-3.4 times as fast as the portable kernel, so [`super::matmul_tc::gemm_tc`] uses it on
//! every sm_90 device unless `POLYLM_GPU_MATMUL_HOPPER=0` ([`hopper_enabled`]). Tests and
//! benchmarks force it with [`super::matmul_tc::gemm_tc_with`] and [`Tile::Hopper128x128`] /
//! [`Tile::Hopper128x256`].
//!
//! The product, epilogues and layouts are those of [`super::matmul_tc`]. What this path adds is
//! a condition on the views, checked by [`tma_operand`]: TMA reads a matrix through a tensor
//! map (made here with the driver's `cuTensorMapEncodeTiled` and passed to the kernel as a
//! `__grid_constant__` parameter), which needs a unit innermost stride, a 16-byte aligned base
//! and leading (and batch) strides that are multiples of 16 bytes. Views that do not qualify
//! run on the portable kernel. The tensor map holds the true sizes, so TMA zero-fills the parts
//! of a tile outside the matrix and any M, N, K works.
//!
//! Tiles ([`choose_hopper_tile`]): 128×256 (4 stages of 48 KiB) when those tiles give every SM
//! at least one, else 128×128 (6 stages of 32 KiB); K slices of 64.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::{sys, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{CudaDevice, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::matmul::{GemmDims, MatView};
use super::matmul_tc::{TensorCoreElem, Tile};
use super::source::{kernel_source, KernelSource};

/// The kernel file (compiled for `sm_90a`).
pub const SOURCE: KernelSource = KernelSource { needs_sm90a: true, ..kernel_source!("matmul_wgmma") };

/// The environment variable that lets [`super::matmul_tc::gemm_tc`] pick this path on its own.
pub const HOPPER_ENV: &str = "POLYLM_GPU_MATMUL_HOPPER";

/// Threads per block: a producer warpgroup and two consumer warpgroups.
const THREADS: u32 = 384;
/// Rows of a block tile (two consumer warpgroups of 64 rows).
const BM: usize = 128;
/// Depth of one K slice (64 bf16/f16 elements: one 128-byte swizzled row).
const BK: usize = 64;

/// Whether the automatic choice in [`super::matmul_tc::gemm_tc`] may use this path: yes unless
/// `POLYLM_GPU_MATMUL_HOPPER=0`.
pub fn hopper_enabled() -> bool {
    !super::device::env_is(HOPPER_ENV, "0")
}

/// Whether `dev` runs this path: compute capability 9.0 (H100, H200), compiled as `sm_90a`.
pub fn device_supported(dev: &CudaDevice) -> bool {
    let arch = dev.arch();
    arch.major == 9 && arch.minor == 0
}

/// The Hopper tile for an `m × n` product over `batch` entries on `multiprocessors` SMs:
/// 128×256 when those tiles give every SM at least one, else 128×128.
pub fn choose_hopper_tile(multiprocessors: usize, m: usize, n: usize, batch: usize) -> Tile {
    let wide = m.div_ceil(BM).saturating_mul(n.div_ceil(256)).saturating_mul(batch);
    if wide >= multiprocessors.max(1) {
        Tile::Hopper128x256
    } else {
        Tile::Hopper128x128
    }
}

/// Block-tile columns and pipeline stages of a Hopper tile (`None` for the portable tiles).
pub fn hopper_geometry(tile: Tile) -> Option<(usize, usize)> {
    match tile {
        Tile::Hopper128x256 => Some((256, 4)),
        Tile::Hopper128x128 => Some((128, 6)),
        _ => None,
    }
}

/// Dynamic shared memory of one block: the ring of stages (A: 128 × 64, B: BN × 64 elements of
/// 2 bytes each) plus 1024 bytes to align it to the swizzle atom.
pub fn shared_bytes(tile: Tile) -> Option<usize> {
    hopper_geometry(tile).map(|(bn, stages)| stages * (BM + bn) * BK * 2 + 1024)
}

/// How TMA reads one operand: its tensor map's sizes and byte strides (innermost first) and
/// whether the operand is K-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmaOperand {
    /// Whether the reduction dimension K is the contiguous one.
    pub k_major: bool,
    /// Sizes: contiguous dimension, the other matrix dimension, batch (1 when not batched).
    pub dims: [u64; 3],
    /// Byte strides of dimensions 1 and 2.
    pub strides: [u64; 2],
    /// Whether the batch coordinate indexes the map (false: one matrix for every batch entry).
    pub batched: bool,
}

/// The tensor-map description of an operand with sizes `k` (reduction) and `mn` (the other
/// dimension), strides `k_stride` and `mn_stride` between consecutive elements along them,
/// `batch_stride`, over `batch` entries, at device address `ptr`; `None` when TMA cannot read it
/// (no unit stride, a leading or batch stride or base address off 16 bytes, overlapping rows or
/// batch entries, sizes beyond TMA's limits). K-major is tried first.
#[allow(clippy::too_many_arguments)]
pub fn tma_operand(
    ptr: u64,
    elem_bytes: usize,
    k: usize,
    mn: usize,
    k_stride: usize,
    mn_stride: usize,
    batch_stride: usize,
    batch: usize,
) -> Option<TmaOperand> {
    let k_major = (k_stride == 1)
        .then(|| tma_map_of(true, ptr, elem_bytes, k, mn, mn_stride, batch_stride, batch))
        .flatten();
    k_major.or_else(|| {
        (mn_stride == 1)
            .then(|| tma_map_of(false, ptr, elem_bytes, mn, k, k_stride, batch_stride, batch))
            .flatten()
    })
}

/// [`tma_operand`] for one orientation: `inner` contiguous elements per row, `outer` rows
/// `ld` elements apart.
#[allow(clippy::too_many_arguments)]
fn tma_map_of(
    k_major: bool,
    ptr: u64,
    elem_bytes: usize,
    inner: usize,
    outer: usize,
    ld: usize,
    batch_stride: usize,
    batch: usize,
) -> Option<TmaOperand> {
    if inner == 0 || outer == 0 || batch == 0 || !ptr.is_multiple_of(16) {
        return None;
    }
    let inner_bytes = inner.checked_mul(elem_bytes)?;
    // A single row never steps to the next one: any leading stride that keeps it valid will do.
    let row_bytes = if outer == 1 { inner_bytes.next_multiple_of(16) } else { ld.checked_mul(elem_bytes)? };
    if !row_bytes.is_multiple_of(16) || row_bytes < inner_bytes {
        return None;
    }
    let matrix_bytes = row_bytes.checked_mul(outer)?;
    let batched = batch > 1 && batch_stride != 0;
    let batch_bytes = if batched {
        let bytes = batch_stride.checked_mul(elem_bytes)?;
        if !bytes.is_multiple_of(16) || bytes < matrix_bytes {
            return None;
        }
        bytes
    } else {
        matrix_bytes.next_multiple_of(16)
    };
    // TMA coordinates are 32-bit signed: keep every size within i32.
    const MAX_DIM: usize = i32::MAX as usize;
    const MAX_STRIDE: usize = 1 << 40;
    if inner > MAX_DIM || outer > MAX_DIM || batch > MAX_DIM || batch_bytes >= MAX_STRIDE {
        return None;
    }
    let dims = [inner as u64, outer as u64, if batched { batch as u64 } else { 1 }];
    Some(TmaOperand { k_major, dims, strides: [row_bytes as u64, batch_bytes as u64], batched })
}

/// A `CUtensorMap` passed by value to the kernel (`const __grid_constant__ TmaMap`).
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct TensorMap(sys::CUtensorMap);
// SAFETY: an opaque 128-byte plain-data object the driver made for the device to read.
unsafe impl DeviceRepr for TensorMap {}

/// Encodes the tensor map of `op` at `ptr` with a box of 64 contiguous elements (128 bytes,
/// one swizzle row) by `box_outer` rows.
fn encode_map<T: TensorCoreElem>(op: &TmaOperand, ptr: u64, box_outer: u32) -> CudaResult<TensorMap> {
    use sys::CUtensorMapDataType_enum as D;
    let dtype = if T::NAME == "bf16" {
        D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    } else {
        D::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
    };
    let boxes = [BK as u32, box_outer, 1];
    let element_strides = [1u32; 3];
    let mut map = MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array holds `rank` (3) entries, or rank - 1 for the strides; `map` is
    // writable; the driver only records the address, which stays valid while the product runs.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            3,
            ptr as *mut c_void,
            op.dims.as_ptr(),
            op.strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave_enum::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle_enum::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion_enum::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill_enum::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(CudaError::driver("encoding a TMA tensor map"))?;
        Ok(TensorMap(map.assume_init()))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct WgShape {
    m: i64,
    n: i64,
    k: i64,
    ldc: i64,
    c_bs: i64,
    alpha: f32,
    beta: f32,
    batch: i32,
    tiles_m: i32,
    tiles_n: i32,
    a_batched: i32,
    b_batched: i32,
    out_kind: i32,
    flags: i32,
}
// SAFETY: `#[repr(C)]` plain data matching `struct WgShape` in matmul_wgmma.cu.
unsafe impl DeviceRepr for WgShape {}

/// The TMA descriptions of A (m × k) and B (k × n), or `None` when either cannot take this path.
pub fn plan<T: TensorCoreElem>(
    dims: &GemmDims,
    a: &MatView<'_, T>,
    b: &MatView<'_, T>,
) -> Option<(TmaOperand, TmaOperand)> {
    let elem = std::mem::size_of::<T>();
    let (m, n, k, batch) = (dims.m, dims.n, dims.k, dims.batch);
    let a_op =
        tma_operand(a.buf.ptr_at(a.offset), elem, k, m, a.col_stride, a.row_stride, a.batch_stride, batch)?;
    let b_op =
        tma_operand(b.buf.ptr_at(b.offset), elem, k, n, b.row_stride, b.col_stride, b.batch_stride, batch)?;
    Some((a_op, b_op))
}

/// Everything of one product that the portable wrapper has already checked and resolved.
pub(crate) struct Launch<'a, T: TensorCoreElem, O: FloatElem> {
    /// Sizes and scalars.
    pub dims: GemmDims,
    /// A (m × k).
    pub a: MatView<'a, T>,
    /// B (k × n).
    pub b: MatView<'a, T>,
    /// The output.
    pub c: &'a DeviceBuf<O>,
    /// Bias address (0: none).
    pub bias: u64,
    /// Pre-activation address (0: none).
    pub pre: u64,
    /// The epilogue flags (matmul_tc's FLAG_*: the GEMM_FLAG_* bits of common.cuh).
    pub flags: i32,
    /// 0 f32, 1 bf16, 2 f16.
    pub out_kind: i32,
}

/// Launches the Hopper kernel with `tile` on operands described by `plan` (see [`plan`]).
pub(crate) fn launch<T: TensorCoreElem, O: FloatElem>(
    tile: Tile,
    (a_op, b_op): (TmaOperand, TmaOperand),
    call: Launch<'_, T, O>,
) -> CudaResult<()> {
    let invalid = |msg: String| CudaError::invalid("gemm_wgmma", msg);
    let (bn, _) = hopper_geometry(tile).ok_or_else(|| invalid(format!("{tile:?} is not a Hopper tile")))?;
    let shared = shared_bytes(tile).unwrap_or(0) as u32;
    let dev = call.c.device().clone();
    if !device_supported(&dev) {
        let arch = dev.arch();
        return Err(invalid(format!(
            "the Hopper path needs sm_90, this device is sm_{}{}",
            arch.major, arch.minor
        )));
    }
    let GemmDims { m, n, k, batch, alpha, beta } = call.dims;
    let int =
        |what: &str, v: usize| i32::try_from(v).map_err(|_| invalid(format!("{what} = {v} exceeds i32")));
    let i64v =
        |what: &str, v: usize| i64::try_from(v).map_err(|_| invalid(format!("{what} = {v} overflows i64")));
    let (tiles_m, tiles_n) = (m.div_ceil(BM), n.div_ceil(bn));
    let total = tiles_m
        .checked_mul(tiles_n)
        .and_then(|t| t.checked_mul(batch))
        .ok_or_else(|| invalid(format!("{batch}×{m}×{n} needs too many tiles")))?;
    int("tiles", total)?;

    // A K-major: box {64 k, 128 m}; M-major: boxes {64 m, 64 k}. B K-major: box {64 k, BN n};
    // N-major: boxes {64 n, 64 k} (see the layout notes in matmul_wgmma.cu).
    let a_box = if a_op.k_major { BM as u32 } else { 64 };
    let b_box = if b_op.k_major { bn as u32 } else { 64 };
    let map_a = encode_map::<T>(&a_op, call.a.buf.ptr_at(call.a.offset), a_box)?;
    let map_b = encode_map::<T>(&b_op, call.b.buf.ptr_at(call.b.offset), b_box)?;

    let shape = WgShape {
        m: i64v("m", m)?,
        n: i64v("n", n)?,
        k: i64v("k", k)?,
        ldc: i64v("n", n)?,
        c_bs: i64v("m·n", m * n)?,
        alpha,
        beta,
        batch: int("batch", batch)?,
        tiles_m: int("tiles along M", tiles_m)?,
        tiles_n: int("tiles along N", tiles_n)?,
        a_batched: i32::from(a_op.batched),
        b_batched: i32::from(b_op.batched),
        out_kind: call.out_kind,
        flags: call.flags,
    };
    let la = if a_op.k_major { 'n' } else { 't' };
    let lb = if b_op.k_major { 't' } else { 'n' };
    let name = format!("gemm_wgmma_128x{bn}_{la}{lb}_{}", T::NAME);
    let f = dev.function(&SOURCE, &name)?;
    dev.allow_shared_memory(&f, shared)?;
    let blocks = total.min(dev.resident_blocks(&f, THREADS, shared)).max(1);
    let pc = call.c.ptr();
    let mut args = dev.launcher(&f)?;
    args.arg(&map_a).arg(&map_b).arg(&shape).arg(&pc).arg(&call.bias).arg(&call.pre);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared,
    };
    dev.launch(args, cfg, "launching gemm_wgmma")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_heuristic() {
        assert_eq!(choose_hopper_tile(132, 8192, 8192, 1), Tile::Hopper128x256);
        assert_eq!(choose_hopper_tile(132, 2048, 2048, 1), Tile::Hopper128x128);
        assert_eq!(choose_hopper_tile(132, 128, 256, 200), Tile::Hopper128x256);
        assert_eq!(choose_hopper_tile(132, 1, 1, 1), Tile::Hopper128x128);
    }

    #[test]
    fn shared_memory_fits_hopper() {
        assert_eq!(shared_bytes(Tile::Hopper128x256), Some(4 * (128 + 256) * 64 * 2 + 1024));
        assert_eq!(shared_bytes(Tile::Hopper128x128), Some(6 * (128 + 128) * 64 * 2 + 1024));
        for tile in [Tile::Hopper128x128, Tile::Hopper128x256] {
            assert!(shared_bytes(tile).unwrap() <= 227 * 1024);
        }
        assert_eq!(shared_bytes(Tile::Large128x128), None);
    }

    #[test]
    fn tma_operands() {
        // Row-major A 100 × 40 (K = 40 contiguous, ld 40): K-major, rows of 80 bytes.
        let a = tma_operand(256, 2, 40, 100, 1, 40, 4000, 1).unwrap();
        assert!(a.k_major && !a.batched);
        assert_eq!(a.dims, [40, 100, 1]);
        assert_eq!(a.strides[0], 80);
        // Its transpose view (M contiguous): M-major, rows of 200 bytes.
        let t = tma_operand(256, 2, 100, 40, 40, 1, 4000, 1).unwrap();
        assert!(!t.k_major);
        assert_eq!(t.dims, [40, 100, 1]);
        // Batched with a padded batch stride.
        let b = tma_operand(256, 2, 64, 8, 1, 64, 520, 3).unwrap();
        assert!(b.batched);
        assert_eq!(b.dims, [64, 8, 3]);
        assert_eq!(b.strides, [128, 1040]);
        // Broadcast over the batch: no batch dimension.
        let z = tma_operand(256, 2, 64, 8, 1, 64, 0, 3).unwrap();
        assert!(!z.batched);
        assert_eq!(z.dims[2], 1);
        // A single row with an odd leading stride is still fine.
        assert!(tma_operand(0, 2, 7, 1, 1, 7, 7, 1).is_some());
        // Refused: misaligned base, leading stride off 16 bytes, no unit stride, overlapping
        // rows or batch entries, K = 0.
        assert!(tma_operand(8, 2, 64, 8, 1, 64, 512, 1).is_none());
        assert!(tma_operand(0, 2, 33, 8, 1, 33, 264, 1).is_none());
        assert!(tma_operand(0, 2, 64, 8, 2, 128, 1024, 1).is_none());
        assert!(tma_operand(0, 2, 64, 8, 1, 32, 512, 1).is_none());
        assert!(tma_operand(0, 2, 64, 8, 1, 64, 256, 2).is_none());
        assert!(tma_operand(0, 2, 0, 8, 1, 64, 512, 1).is_none());
    }
}
