//! Launch wrapper of `matmul.cu`: the simple tiled matrix product (strided, batched, f32
//! accumulation) that every GPU product uses until the tensor-core kernel lands.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{blocks_for, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("matmul");

/// A strided matrix operand: element `(b, r, c)` at `offset + b·batch_stride + r·row_stride
/// + c·col_stride`. A transposed matrix is the same storage with the strides swapped.
#[derive(Clone, Copy, Debug)]
pub struct MatView<'a, T: FloatElem> {
    /// The storage.
    pub buf: &'a DeviceBuf<T>,
    /// Offset of element (0, 0, 0).
    pub offset: usize,
    /// Step between rows.
    pub row_stride: usize,
    /// Step between columns.
    pub col_stride: usize,
    /// Step between batch entries (0 broadcasts one matrix over the batch).
    pub batch_stride: usize,
}

impl<'a, T: FloatElem> MatView<'a, T> {
    /// A row-major `rows × cols` matrix (batches of them `rows·cols` apart).
    pub fn row_major(buf: &'a DeviceBuf<T>, rows: usize, cols: usize) -> Self {
        MatView { buf, offset: 0, row_stride: cols, col_stride: 1, batch_stride: rows * cols }
    }
    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        MatView { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// Sizes and scalars of one product `C = alpha·A·B + beta·C (+ bias)`.
#[derive(Clone, Copy, Debug)]
pub struct GemmDims {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Independent products.
    pub batch: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C (0 overwrites; 1 accumulates, as gradients do).
    pub beta: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GemmShape {
    m: i64,
    n: i64,
    k: i64,
    a_rs: i64,
    a_cs: i64,
    a_bs: i64,
    b_rs: i64,
    b_cs: i64,
    b_bs: i64,
    c_rs: i64,
    c_bs: i64,
    alpha: f32,
    beta: f32,
}
// SAFETY: `#[repr(C)]` plain data matching `struct GemmShape` in matmul.cu.
unsafe impl DeviceRepr for GemmShape {}

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
    let last =
        v.offset + (batch - 1) * v.batch_stride + (rows - 1) * v.row_stride + (cols - 1) * v.col_stride;
    if last >= v.buf.len() {
        return Err(CudaError::invalid(
            "gemm",
            format!("{what} view ({batch}×{rows}×{cols}) reaches element {last} of {}", v.buf.len()),
        ));
    }
    Ok(())
}

/// `C[b] = alpha·A[b]·B[b] + beta·C[b] (+ bias)` for every batch entry; `c` is row-major
/// `m × n` per batch, `bias` (if any) has `n` entries.
pub fn gemm<T: FloatElem>(
    dims: GemmDims,
    a: MatView<'_, T>,
    b: MatView<'_, T>,
    c: &mut DeviceBuf<T>,
    bias: Option<&DeviceBuf<T>>,
) -> CudaResult<()> {
    let GemmDims { m, n, k, batch, alpha, beta } = dims;
    check_view("A", &a, m, k, batch)?;
    check_view("B", &b, k, n, batch)?;
    if c.len() < batch * m * n {
        return Err(CudaError::invalid(
            "gemm",
            format!("C holds {} elements, needs {}", c.len(), batch * m * n),
        ));
    }
    if let Some(bias) = bias {
        if bias.len() < n {
            return Err(CudaError::invalid("gemm", format!("bias holds {} elements, needs {n}", bias.len())));
        }
    }
    if batch > 65_535 {
        return Err(CudaError::invalid("gemm", format!("batch of {batch} exceeds 65535")));
    }
    let shape = GemmShape {
        m: m as i64,
        n: n as i64,
        k: k as i64,
        a_rs: a.row_stride as i64,
        a_cs: a.col_stride as i64,
        a_bs: a.batch_stride as i64,
        b_rs: b.row_stride as i64,
        b_cs: b.col_stride as i64,
        b_bs: b.batch_stride as i64,
        c_rs: n as i64,
        c_bs: (m * n) as i64,
        alpha,
        beta,
    };
    let dev = c.device().clone();
    let f = dev.function(&SOURCE, &format!("gemm_tiled_{}", T::NAME))?;
    let (pa, pb, pc, pbias) =
        (a.buf.ptr_at(a.offset), b.buf.ptr_at(b.offset), c.ptr(), bias.map_or(0, |b| b.ptr()));
    let mut args = dev.launcher(&f)?;
    args.arg(&shape).arg(&pa).arg(&pb).arg(&pc).arg(&pbias);
    let cfg = LaunchConfig {
        grid_dim: (blocks_for("gemm", n, 64)?, blocks_for("gemm", m, 64)?.min(65_535), batch as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    if m.div_ceil(64) > 65_535 {
        return Err(CudaError::invalid("gemm", format!("{m} rows exceed the grid")));
    }
    dev.launch(args, cfg, "launching gemm_tiled")
}
