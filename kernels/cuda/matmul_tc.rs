//! Launch wrapper of `matmul_tc.cu`: the tensor-core matrix product (`mma.sync` m16n8k16 fed
//! by `ldmatrix` from a `cp.async` multi-stage pipeline) for sm_80 and later, with the bias,
//! bias + GeLU and accumulate epilogues fused into the store, and the bias gradient.
//!
//! [`gemm_tc`] computes, for every batch entry `b`,
//!
//! ```text
//! pre  = alpha · A[b]·B[b] (+ bias)            A: m × k, B: k × n (any of the MatView layouts)
//! C[b] = act(pre) + beta · C[b]                act: identity, or GeLU (tanh form)
//! ```
//!
//! in f32 from bf16 or f16 operands ([`TensorCoreElem`]), storing f32, bf16 or f16. `C` (and the
//! optional pre-activation) is row-major `m × n` per batch entry, batches `m·n` apart. The
//! operands are [`MatView`]s: either of A's and B's strides may be the unit one, so A·B, A·Bᵀ,
//! Aᵀ·B (and Aᵀ·Bᵀ) read the stored matrices in place. Views whose unit-stride dimension,
//! leading stride, batch stride and base address are all multiples of 8 elements (16 bytes)
//! take the fast path; any other view (odd strides, no unit stride at all) is still computed
//! correctly, by a slower kernel that loads element by element ([`Tile::Generic64x64`]).
//!
//! The tile is chosen by [`choose_tile`]: 128×128 tiles when they fill the device, 64×64 for
//! small products. [`gemm_tc_with`] forces a tile (the tests use it to cover every path).
//!
//! On Hopper (H100, H200: sm_90, compiled as sm_90a) there is a second path,
//! [`super::matmul_wgmma`]: `wgmma` fed by TMA through an mbarrier ring, warp-specialised, with
//! 128×128 and 128×256 tiles ([`Tile::Hopper128x128`], [`Tile::Hopper128x256`]) for views TMA
//! can read (unit innermost stride, 16-byte aligned base and strides). [`gemm_tc`] picks it for
//! every eligible product on an sm_90 device (the tile by
//! [`super::matmul_wgmma::choose_hopper_tile`]) unless `POLYLM_GPU_MATMUL_HOPPER=0`;
//! [`gemm_tc_with`] with a Hopper tile forces it (the tests and the benchmark do).
//!
//! [`bias_grad`] sums the columns of `dY` (the bias gradient) deterministically. [`CublasGemm`]
//! runs the same product through cuBLAS, as the reference of the tests and the benchmark only.

use std::sync::Arc;

use cudarc::cublas::{result as cublas_result, sys as cublas_sys, CudaBlas};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::device::{blocks_for, check_len, CudaDevice, DeviceBuf, FloatElem};
use super::elementwise::column_sum;
use super::error::{CudaError, CudaResult};
use super::matmul::{GemmDims, MatView};
use super::matmul_wgmma;
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("matmul_tc");

/// Input types of the tensor-core product: bf16 and f16 (f32 accumulation).
pub trait TensorCoreElem: FloatElem {}
impl TensorCoreElem for bf16 {}
impl TensorCoreElem for f16 {}

/// What is fused into the store of the product (see the module documentation).
#[derive(Debug, Default)]
pub enum Epilogue<'a, O: FloatElem> {
    /// `C = alpha·A·B + beta·C`.
    #[default]
    None,
    /// `C = alpha·A·B + bias + beta·C`, `bias` with `n` entries.
    Bias(&'a DeviceBuf<O>),
    /// `C = gelu(alpha·A·B + bias) + beta·C`, optionally writing `alpha·A·B + bias` (the
    /// pre-activation, C's shape) for the backward pass.
    BiasGelu {
        /// The bias, `n` entries.
        bias: &'a DeviceBuf<O>,
        /// Where to store the pre-activation, if wanted.
        pre_activation: Option<&'a mut DeviceBuf<O>>,
    },
    /// No epilogue: the product is computed and nothing is stored (`C` is left as it was).
    /// A diagnostic for benchmarks, which time the main loop alone with it: the difference
    /// from [`Epilogue::None`] is what the stores cost.
    Discard,
}

/// A kernel configuration (block tile and load path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 128×128 block tile, 8 warps (64×32 each), 4-stage cp.async pipeline.
    Large128x128,
    /// 64×64 block tile, 4 warps (32×32 each), 3-stage cp.async pipeline.
    Small64x64,
    /// 64×64 block tile fed by predicated element loads: any strides and alignments.
    Generic64x64,
    /// Hopper (sm_90a): 128×128 block tile, TMA + wgmma, 6-stage mbarrier ring, 3 warpgroups
    /// (see [`super::matmul_wgmma`]).
    Hopper128x128,
    /// Hopper (sm_90a): 128×256 block tile, TMA + wgmma, 4-stage mbarrier ring, 3 warpgroups.
    Hopper128x256,
}

impl Tile {
    /// Whether this is a tile of the Hopper (wgmma + TMA) path.
    pub fn is_hopper(self) -> bool {
        matches!(self, Tile::Hopper128x128 | Tile::Hopper128x256)
    }
    /// The block tile: rows (M) × columns (N) of C per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Tile::Large128x128 | Tile::Hopper128x128 => (128, 128),
            Tile::Small64x64 | Tile::Generic64x64 => (64, 64),
            Tile::Hopper128x256 => (128, 256),
        }
    }
    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            Tile::Large128x128 => 256,
            Tile::Small64x64 | Tile::Generic64x64 => 128,
            Tile::Hopper128x128 | Tile::Hopper128x256 => 384,
        }
    }
    fn stages(self) -> usize {
        match self {
            Tile::Large128x128 | Tile::Hopper128x256 => 4,
            Tile::Small64x64 => 3,
            Tile::Generic64x64 => 2,
            Tile::Hopper128x128 => 6,
        }
    }
    /// The tile's part of the kernel names (`gemm_tc_<prefix>_<layout>_<type>`, or
    /// `gemm_<prefix>_...` for the Hopper tiles).
    pub fn prefix(self) -> &'static str {
        match self {
            Tile::Large128x128 => "128x128",
            Tile::Small64x64 => "64x64",
            Tile::Generic64x64 => "generic",
            Tile::Hopper128x128 => "wgmma_128x128",
            Tile::Hopper128x256 => "wgmma_128x256",
        }
    }
    /// Dynamic shared memory of one block, in bytes, for the given operand layouts (matches
    /// `TileGeom` in matmul_tc.cu: BK = 32, rows padded by 8 elements).
    pub fn shared_bytes(self, a_kmajor: bool, b_kmajor: bool) -> usize {
        if let Some(bytes) = matmul_wgmma::shared_bytes(self) {
            return bytes;
        }
        const BK: usize = 32;
        const PAD: usize = 8;
        let geom = |rows: usize, kmajor: bool| if kmajor { rows * (BK + PAD) } else { BK * (rows + PAD) };
        let (bm, bn) = self.block();
        self.stages() * (geom(bm, a_kmajor) + geom(bn, b_kmajor)) * 2
    }
}

/// The tile for an `m × n` product over `batch` entries on a device with `multiprocessors`
/// SMs: 128×128 when those tiles make at least one block per SM, else 64×64.
pub fn choose_tile(multiprocessors: usize, m: usize, n: usize, batch: usize) -> Tile {
    let large = m.div_ceil(128) * n.div_ceil(128) * batch;
    if large >= multiprocessors.max(1) {
        Tile::Large128x128
    } else {
        Tile::Small64x64
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct TcShape {
    m: i64,
    n: i64,
    k: i64,
    a_rs: i64,
    a_cs: i64,
    a_bs: i64,
    b_rs: i64,
    b_cs: i64,
    b_bs: i64,
    ldc: i64,
    c_bs: i64,
    alpha: f32,
    beta: f32,
    tiles_m: i32,
    tiles_n: i32,
    out_kind: i32,
    flags: i32,
}
// SAFETY: `#[repr(C)]` plain data matching `struct TcShape` in matmul_tc.cu.
unsafe impl DeviceRepr for TcShape {}

/// The epilogue bits of `TcShape::flags`: `GEMM_FLAG_*` in `common.cuh`.
const FLAG_BIAS: i32 = 1;
const FLAG_GELU: i32 = 2;
const FLAG_PRE: i32 = 4;
const FLAG_VEC: i32 = 8;
const FLAG_DISCARD: i32 = 16;

fn out_kind<O: FloatElem>() -> i32 {
    match O::NAME {
        "f32" => 0,
        "bf16" => 1,
        _ => 2,
    }
}

fn to_i64(what: &str, v: usize) -> CudaResult<i64> {
    i64::try_from(v).map_err(|_| CudaError::invalid("gemm_tc", format!("{what} = {v} overflows i64")))
}

/// Checks that every element of a `batch × rows × cols` view lies inside its buffer.
fn check_view<T: FloatElem>(
    what: &str,
    v: &MatView<'_, T>,
    rows: usize,
    cols: usize,
    batch: usize,
) -> CudaResult<()> {
    if rows == 0 || cols == 0 || batch == 0 {
        return Ok(());
    }
    let last = (batch - 1)
        .checked_mul(v.batch_stride)
        .and_then(|x| x.checked_add((rows - 1).checked_mul(v.row_stride)?))
        .and_then(|x| x.checked_add((cols - 1).checked_mul(v.col_stride)?))
        .and_then(|x| x.checked_add(v.offset));
    match last {
        Some(last) if last < v.buf.len() => Ok(()),
        _ => Err(CudaError::invalid(
            "gemm_tc",
            format!(
                "{what} view ({batch}×{rows}×{cols}, offset {}, strides {}/{}/{}) reaches past its {} elements",
                v.offset,
                v.batch_stride,
                v.row_stride,
                v.col_stride,
                v.buf.len()
            ),
        )),
    }
}

/// Whether a view can feed the 16-byte cp.async path with its unit stride on the side given
/// by `unit_is_col` (`true`: columns contiguous, leading stride = row stride).
fn fast_path_ok<T: FloatElem>(v: &MatView<'_, T>, unit_is_col: bool, batch: usize) -> bool {
    let (unit, ld) = if unit_is_col { (v.col_stride, v.row_stride) } else { (v.row_stride, v.col_stride) };
    unit == 1
        && ld.is_multiple_of(8)
        && (batch <= 1 || v.batch_stride.is_multiple_of(8))
        && v.buf.ptr_at(v.offset).is_multiple_of(16)
}

/// `C[b] = act(alpha·A[b]·B[b] + bias) + beta·C[b]` on tensor cores, the tile chosen by
/// [`choose_tile`] (or on sm_90, unless `POLYLM_GPU_MATMUL_HOPPER=0`, the Hopper path); see the
/// module documentation. `c` is row-major `m × n` per batch entry.
pub fn gemm_tc<T: TensorCoreElem, O: FloatElem>(
    dims: GemmDims,
    a: MatView<'_, T>,
    b: MatView<'_, T>,
    c: &mut DeviceBuf<O>,
    epilogue: Epilogue<'_, O>,
) -> CudaResult<()> {
    gemm_tc_with(None, dims, a, b, c, epilogue).map(|_| ())
}

/// [`gemm_tc`] with the tile forced (`None`: chosen as [`gemm_tc`] does). Operands that cannot
/// take the 16-byte path run on [`Tile::Generic64x64`] whatever is asked; a Hopper tile on views
/// TMA cannot read runs on the portable tile [`choose_tile`] picks, and on a device other than
/// sm_90 is an error. Returns the tile used.
pub fn gemm_tc_with<T: TensorCoreElem, O: FloatElem>(
    tile: Option<Tile>,
    dims: GemmDims,
    a: MatView<'_, T>,
    b: MatView<'_, T>,
    c: &mut DeviceBuf<O>,
    epilogue: Epilogue<'_, O>,
) -> CudaResult<Tile> {
    let GemmDims { m, n, k, batch, alpha, beta } = dims;
    check_view("A", &a, m, k, batch)?;
    check_view("B", &b, k, n, batch)?;
    let out_len = batch
        .checked_mul(m)
        .and_then(|x| x.checked_mul(n))
        .ok_or_else(|| CudaError::invalid("gemm_tc", format!("{batch}×{m}×{n} overflows usize")))?;
    check_len("gemm_tc", "C", c, out_len)?;
    if batch > 65_535 {
        return Err(CudaError::invalid("gemm_tc", format!("batch of {batch} exceeds 65535")));
    }
    let (bias, pre, mut flags) = match epilogue {
        Epilogue::None => (None, None, 0),
        Epilogue::Discard => (None, None, FLAG_DISCARD),
        Epilogue::Bias(bias) => (Some(bias), None, FLAG_BIAS),
        Epilogue::BiasGelu { bias, pre_activation } => {
            let flags = FLAG_BIAS | FLAG_GELU | if pre_activation.is_some() { FLAG_PRE } else { 0 };
            (Some(bias), pre_activation, flags)
        }
    };
    if let Some(bias) = bias {
        check_len("gemm_tc", "bias", bias, n)?;
    }
    if let Some(pre) = &pre {
        check_len("gemm_tc", "pre-activation", pre, out_len)?;
    }
    if m == 0 || n == 0 || batch == 0 {
        return Ok(tile.unwrap_or(Tile::Small64x64));
    }

    let dev = c.device().clone();
    let elem = std::mem::size_of::<O>() as u64;
    let pre_ptr = pre.as_ref().map_or(0, |p| p.ptr());
    if n.is_multiple_of(2) && c.ptr().is_multiple_of(2 * elem) && pre_ptr.is_multiple_of(2 * elem) {
        flags |= FLAG_VEC;
    }

    // The Hopper path: forced by a Hopper tile, or chosen when enabled on an sm_90 device.
    let hopper = match tile {
        Some(t) if t.is_hopper() => Some(t),
        None if matmul_wgmma::hopper_enabled() && matmul_wgmma::device_supported(&dev) => {
            Some(matmul_wgmma::choose_hopper_tile(dev.multiprocessors(), m, n, batch))
        }
        _ => None,
    };
    if let Some(hopper_tile) = hopper {
        if let Some(plan) = matmul_wgmma::plan(&dims, &a, &b) {
            let call = matmul_wgmma::Launch {
                dims,
                a,
                b,
                c: &*c,
                bias: bias.map_or(0, |b| b.ptr()),
                pre: pre_ptr,
                flags,
                out_kind: out_kind::<O>(),
            };
            matmul_wgmma::launch(hopper_tile, plan, call)?;
            return Ok(hopper_tile);
        }
        if !matmul_wgmma::device_supported(&dev) {
            return Err(CudaError::invalid("gemm_tc", format!("{hopper_tile:?} needs an sm_90 device")));
        }
    }
    let tile = tile.filter(|t| !t.is_hopper());

    // Layouts: A "n" when K is contiguous, "t" when M is; B "n" when N is, "t" when K is.
    let a_layout = if fast_path_ok(&a, true, batch) {
        Some(true)
    } else if fast_path_ok(&a, false, batch) {
        Some(false)
    } else {
        None
    };
    let b_layout = if fast_path_ok(&b, false, batch) {
        Some(true)
    } else if fast_path_ok(&b, true, batch) {
        Some(false)
    } else {
        None
    };
    let (tile, a_kmajor, b_kmajor) = match (a_layout, b_layout) {
        (Some(ak), Some(bk)) => {
            let wanted = tile.unwrap_or_else(|| choose_tile(dev.multiprocessors(), m, n, batch));
            if wanted == Tile::Generic64x64 {
                (Tile::Generic64x64, true, true)
            } else {
                (wanted, ak, bk)
            }
        }
        _ => (Tile::Generic64x64, true, true),
    };
    let name = if tile == Tile::Generic64x64 {
        format!("gemm_tc_generic_{}", T::NAME)
    } else {
        let la = if a_kmajor { 'n' } else { 't' };
        let lb = if b_kmajor { 't' } else { 'n' };
        format!("gemm_tc_{}_{la}{lb}_{}", tile.prefix(), T::NAME)
    };

    let (bm, bn) = tile.block();
    let (tiles_m, tiles_n) = (m.div_ceil(bm), n.div_ceil(bn));
    let blocks = tiles_m
        .checked_mul(tiles_n)
        .filter(|&t| t <= i32::MAX as usize)
        .ok_or_else(|| CudaError::invalid("gemm_tc", format!("{m}×{n} needs too many tiles")))?;

    let shape = TcShape {
        m: to_i64("m", m)?,
        n: to_i64("n", n)?,
        k: to_i64("k", k)?,
        a_rs: to_i64("A row stride", a.row_stride)?,
        a_cs: to_i64("A column stride", a.col_stride)?,
        a_bs: to_i64("A batch stride", a.batch_stride)?,
        b_rs: to_i64("B row stride", b.row_stride)?,
        b_cs: to_i64("B column stride", b.col_stride)?,
        b_bs: to_i64("B batch stride", b.batch_stride)?,
        ldc: to_i64("n", n)?,
        c_bs: to_i64("m·n", m * n)?,
        alpha,
        beta,
        tiles_m: tiles_m as i32,
        tiles_n: tiles_n as i32,
        out_kind: out_kind::<O>(),
        flags,
    };
    let shared = tile.shared_bytes(a_kmajor, b_kmajor) as u32;
    let f = dev.function(&SOURCE, &name)?;
    dev.allow_shared_memory(&f, shared)?;
    let (pa, pb, pc, pbias) =
        (a.buf.ptr_at(a.offset), b.buf.ptr_at(b.offset), c.ptr(), bias.map_or(0, |b| b.ptr()));
    let mut args = dev.launcher(&f)?;
    args.arg(&shape).arg(&pa).arg(&pb).arg(&pc).arg(&pbias).arg(&pre_ptr);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, batch as u32),
        block_dim: (tile.threads(), 1, 1),
        shared_mem_bytes: shared,
    };
    dev.launch(args, cfg, "launching gemm_tc")?;
    Ok(tile)
}

/// The bias gradient: `out[c] (+)= Σ_r dy[r·ld + c]` over `rows` rows of `cols` columns, summed
/// in f32 in a fixed order (deterministic for a given shape): the rows are cut into at most 64
/// ranges of at least 256 rows, each range summed per column by `bias_grad_partial`, then the
/// ranges summed by elementwise's `column_sum`. `accumulate` adds to `out` instead of
/// overwriting it.
pub fn bias_grad<T: FloatElem, O: FloatElem>(
    dy: &DeviceBuf<T>,
    rows: usize,
    cols: usize,
    ld: usize,
    out: &mut DeviceBuf<O>,
    accumulate: bool,
) -> CudaResult<()> {
    check_len("bias_grad", "out", out, cols)?;
    if cols == 0 {
        return Ok(());
    }
    if ld < cols {
        return Err(CudaError::invalid("bias_grad", format!("row stride {ld} is below {cols} columns")));
    }
    if rows > 0 {
        let need = (rows - 1)
            .checked_mul(ld)
            .and_then(|x| x.checked_add(cols))
            .ok_or_else(|| CudaError::invalid("bias_grad", "rows × ld overflows usize"))?;
        check_len("bias_grad", "dY", dy, need)?;
    }
    if cols > i32::MAX as usize {
        return Err(CudaError::invalid("bias_grad", format!("{cols} columns exceed i32")));
    }
    let dev = out.device().clone();
    let rows_per_split = rows.div_ceil(64).max(256);
    let splits = rows.div_ceil(rows_per_split).max(1);
    let partial = dev.alloc::<f32>(splits * cols)?;
    if rows > 0 {
        let f = dev.function(&SOURCE, &format!("bias_grad_partial_{}", T::NAME))?;
        let (pd, pp) = (dy.ptr(), partial.ptr());
        let (r, c, l, rps) = (
            to_i64("rows", rows)?,
            to_i64("cols", cols)?,
            to_i64("ld", ld)?,
            to_i64("rows", rows_per_split)?,
        );
        let mut args = dev.launcher(&f)?;
        args.arg(&pd).arg(&pp).arg(&r).arg(&c).arg(&l).arg(&rps);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for("bias_grad", cols, 32)?, splits as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        dev.launch(args, cfg, "launching bias_grad_partial")?;
    } else {
        // No rows: the sum is zero.
        dev.fill_bytes(&partial, 0)?;
    }
    column_sum(&partial, cols, splits, cols, out, None, accumulate)
}

/// The same product through cuBLAS (`cublasGemmStridedBatchedEx`, f32 compute), as the
/// reference of the tests and of the benchmark only; no epilogue (`C = alpha·A·B + beta·C`).
pub struct CublasGemm {
    blas: CudaBlas,
    device: Arc<CudaDevice>,
}

impl std::fmt::Debug for CublasGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CublasGemm").field("device", &self.device).finish()
    }
}

fn cublas_error(e: cublas_result::CublasError) -> CudaError {
    CudaError::invalid("cublas", format!("{e:?}"))
}

fn cuda_type<T: FloatElem>() -> cublas_sys::cudaDataType {
    match T::NAME {
        "f32" => cublas_sys::cudaDataType::CUDA_R_32F,
        "bf16" => cublas_sys::cudaDataType::CUDA_R_16BF,
        _ => cublas_sys::cudaDataType::CUDA_R_16F,
    }
}

impl CublasGemm {
    /// A cuBLAS handle on the device's stream (an error when libcublas cannot be loaded).
    pub fn new(device: &Arc<CudaDevice>) -> CudaResult<Self> {
        // SAFETY: probes dlopen only; cudarc panics on a missing library, so this comes first.
        if !unsafe { cublas_sys::is_culib_present() } {
            return Err(CudaError::invalid("cublas", "libcublas could not be loaded"));
        }
        let blas = CudaBlas::new(Arc::clone(device.stream())).map_err(cublas_error)?;
        Ok(CublasGemm { blas, device: Arc::clone(device) })
    }

    /// `C[b] = alpha·A[b]·B[b] + beta·C[b]`, `c` row-major `m × n` per batch entry. Each operand
    /// needs a unit stride (row or column); other views are an error here.
    pub fn gemm<T: TensorCoreElem, O: FloatElem>(
        &self,
        dims: GemmDims,
        a: MatView<'_, T>,
        b: MatView<'_, T>,
        c: &mut DeviceBuf<O>,
    ) -> CudaResult<()> {
        let GemmDims { m, n, k, batch, alpha, beta } = dims;
        check_view("A", &a, m, k, batch)?;
        check_view("B", &b, k, n, batch)?;
        check_len("cublas", "C", c, batch * m * n)?;
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| CudaError::invalid("cublas", format!("{what} = {v} exceeds i32")))
        };
        use cublas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS's first operand is B.
        // B (k × n) with unit column stride is, column-major, an n × k matrix: no transpose.
        let (op_b, ldb) = if b.col_stride == 1 {
            (CUBLAS_OP_N, b.row_stride.max(n))
        } else if b.row_stride == 1 {
            (CUBLAS_OP_T, b.col_stride.max(k))
        } else {
            return Err(CudaError::invalid("cublas", "B has no unit stride"));
        };
        let (op_a, lda) = if a.col_stride == 1 {
            (CUBLAS_OP_N, a.row_stride.max(k))
        } else if a.row_stride == 1 {
            (CUBLAS_OP_T, a.col_stride.max(m))
        } else {
            return Err(CudaError::invalid("cublas", "A has no unit stride"));
        };
        let (alpha_v, beta_v) = (alpha, beta);
        // SAFETY: the views were checked to lie inside their buffers; the scalars live on the
        // host for the duration of the (enqueued) call, which reads them before returning.
        unsafe {
            cublas_result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op_b,
                op_a,
                int("n", n)?,
                int("m", m)?,
                int("k", k)?,
                (&alpha_v as *const f32).cast(),
                b.buf.ptr_at(b.offset) as *const std::ffi::c_void,
                cuda_type::<T>(),
                int("ldb", ldb)?,
                b.batch_stride as i64,
                a.buf.ptr_at(a.offset) as *const std::ffi::c_void,
                cuda_type::<T>(),
                int("lda", lda)?,
                a.batch_stride as i64,
                (&beta_v as *const f32).cast(),
                c.ptr() as *mut std::ffi::c_void,
                cuda_type::<O>(),
                int("n", n)?,
                (m * n) as i64,
                int("batch", batch)?,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cublas_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_heuristic_prefers_large_tiles_when_they_fill_the_device() {
        assert_eq!(choose_tile(132, 8192, 8192, 1), Tile::Large128x128);
        assert_eq!(choose_tile(132, 100, 100, 1), Tile::Small64x64);
        assert_eq!(choose_tile(132, 128, 128, 200), Tile::Large128x128);
    }

    #[test]
    fn shared_memory_matches_the_kernel_geometry() {
        // 4 stages × (128×40 + 32×136) elements × 2 bytes for "nn".
        assert_eq!(Tile::Large128x128.shared_bytes(true, false), 4 * (128 * 40 + 32 * 136) * 2);
        assert_eq!(Tile::Small64x64.shared_bytes(false, true), 3 * (32 * 72 + 64 * 40) * 2);
        assert!(Tile::Large128x128.shared_bytes(true, true) <= 227 * 1024);
    }
}
