//! Launch wrappers of `elementwise.cu`: broadcasting binary ops, unary maps, casts, strided
//! gathers, accumulation and fill.

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::device::{blocks_for, check_len, grid1, DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("elementwise");

/// Most axes a strided operand may have (after merging contiguous axes).
pub const MAX_DIMS: usize = 6;
const THREADS: u32 = 256;
/// Grid-stride kernels need no more blocks than this to fill any current GPU.
const MAX_BLOCKS: usize = 65_536;

/// A binary operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add = 0,
    /// `a - b`
    Sub = 1,
    /// `a * b`
    Mul = 2,
    /// `a / b`
    Div = 3,
}

/// A unary map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `alpha·x + beta`
    Affine {
        /// Scale.
        alpha: f32,
        /// Shift.
        beta: f32,
    },
    /// `x²`
    Square,
    /// `x^p`
    Powf(f32),
    /// GeLU, tanh form.
    Gelu,
}

/// A strided view of a device buffer: element `(i0, i1, ...)` is at
/// `offset + Σ i_d·strides[d]`; a stride of 0 broadcasts.
#[derive(Clone, Copy, Debug)]
pub struct DeviceStrided<'a, T: FloatElem> {
    /// The storage.
    pub buf: &'a DeviceBuf<T>,
    /// Element offset of the first element.
    pub offset: usize,
    /// Strides in elements, one per output axis.
    pub strides: &'a [usize],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct StridedShape {
    ndim: i32,
    small: i32,
    shape: [i64; MAX_DIMS],
    a_stride: [i64; MAX_DIMS],
    b_stride: [i64; MAX_DIMS],
    div_mul: [u32; MAX_DIMS],
    div_shr: [u32; MAX_DIMS],
}

/// The multiplier and shift that divide any `n < 2³¹` by `d` (`1 ≤ d < 2³¹`) as
/// `umulhi(n, mul) >> shr` (the kernels' `strided_offsets`): with `l = ⌈log₂ d⌉`,
/// `mul = ⌈2^(31+l) / d⌉` and `shr = l − 1`, exact because `n·(mul·d − 2^(31+l)) < 2^(31+l)`.
/// `d = 1` gives `mul = 0`, which the kernel reads as "the quotient is `n`".
pub fn fast_divisor(d: u32) -> (u32, u32) {
    if d <= 1 {
        return (0, 0);
    }
    let l = 32 - (d - 1).leading_zeros();
    let p = 31 + l;
    let mul = (1u64 << p).div_ceil(u64::from(d));
    (mul as u32, l - 1)
}

/// `n / d` as the kernels compute it from [`fast_divisor`]'s pair.
pub fn fast_div(n: u32, (mul, shr): (u32, u32)) -> u32 {
    if mul == 0 {
        n
    } else {
        ((u64::from(n) * u64::from(mul)) >> 32) as u32 >> shr
    }
}
// SAFETY: `#[repr(C)]` plain data matching `struct StridedShape` in elementwise.cu.
unsafe impl DeviceRepr for StridedShape {}

/// Merges neighbouring axes that are contiguous in every operand, so that most calls reach
/// the kernel with one or two axes.
fn merge_axes(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for (axis, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides.iter().enumerate().all(|(k, s)| {
                let prev = *out_strides[k].last().unwrap_or(&0);
                prev == s[axis] * size
            });
        if mergeable {
            let last = out_shape.len() - 1;
            out_shape[last] *= size;
            for (k, s) in strides.iter().enumerate() {
                out_strides[k][last] = s[axis];
            }
        } else {
            out_shape.push(size);
            for (k, s) in strides.iter().enumerate() {
                out_strides[k].push(s[axis]);
            }
        }
    }
    (out_shape, out_strides)
}

fn strided_shape(
    op: &'static str,
    shape: &[usize],
    operands: &[(&[usize], usize, usize)],
) -> CudaResult<StridedShape> {
    for &(strides, offset, len) in operands {
        if strides.len() != shape.len() {
            return Err(CudaError::invalid(
                op,
                format!("{} strides for {} axes", strides.len(), shape.len()),
            ));
        }
        if shape.iter().product::<usize>() > 0 {
            let last = offset + shape.iter().zip(strides).map(|(&n, &s)| (n - 1) * s).sum::<usize>();
            if last >= len {
                return Err(CudaError::invalid(
                    op,
                    format!(
                        "view of shape {shape:?} strides {strides:?} offset {offset} overruns {len} elements"
                    ),
                ));
            }
        }
    }
    let all: Vec<&[usize]> = operands.iter().map(|o| o.0).collect();
    let (merged, merged_strides) = merge_axes(shape, &all);
    if merged.len() > MAX_DIMS {
        return Err(CudaError::invalid(
            op,
            format!("{} non-mergeable axes (at most {MAX_DIMS})", merged.len()),
        ));
    }
    let total: usize = shape.iter().product();
    let small = total < (1 << 31);
    let mut s = StridedShape { ndim: merged.len() as i32, small: i32::from(small), ..Default::default() };
    for (d, &n) in merged.iter().enumerate() {
        s.shape[d] = n as i64;
        s.a_stride[d] = merged_strides[0][d] as i64;
        s.b_stride[d] = merged_strides.get(1).map_or(0, |b| b[d] as i64);
        if small {
            (s.div_mul[d], s.div_shr[d]) = fast_divisor(n as u32);
        }
    }
    Ok(s)
}

/// The bytes of the `StridedShape` argument that [`binary`] (two operands), [`gather`] (one)
/// and [`scatter`] pass for `shape` and `operands` (strides, offset, buffer length): for the
/// host emulation test, which launches those kernels itself.
#[doc(hidden)]
pub fn strided_shape_bytes(shape: &[usize], operands: &[(&[usize], usize, usize)]) -> CudaResult<Vec<u8>> {
    let s = strided_shape("strided_shape_bytes", shape, operands)?;
    let mut out = Vec::with_capacity(std::mem::size_of::<StridedShape>());
    out.extend(s.ndim.to_le_bytes());
    out.extend(s.small.to_le_bytes());
    for v in s.shape.iter().chain(&s.a_stride).chain(&s.b_stride) {
        out.extend(v.to_le_bytes());
    }
    for v in s.div_mul.iter().chain(&s.div_shr) {
        out.extend(v.to_le_bytes());
    }
    debug_assert_eq!(out.len(), std::mem::size_of::<StridedShape>());
    Ok(out)
}

fn grid_for(op: &'static str, n: usize) -> CudaResult<cudarc::driver::LaunchConfig> {
    Ok(grid1(blocks_for(op, n.min(MAX_BLOCKS * THREADS as usize), THREADS as usize)?, THREADS, 0))
}

/// `out = a op b` over `shape`, broadcasting through zero strides; `out` is contiguous.
pub fn binary<T: FloatElem>(
    op: BinaryOp,
    shape: &[usize],
    a: DeviceStrided<'_, T>,
    b: DeviceStrided<'_, T>,
    out: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    let n: usize = shape.iter().product();
    check_len("binary", "out", out, n)?;
    let s = strided_shape(
        "binary",
        shape,
        &[(a.strides, a.offset, a.buf.len()), (b.strides, b.offset, b.buf.len())],
    )?;
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("binary_{}", T::NAME))?;
    let (pa, pb, po, n64, code) =
        (a.buf.ptr_at(a.offset), b.buf.ptr_at(b.offset), out.ptr(), n as i64, op as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&s).arg(&pa).arg(&pb).arg(&po).arg(&n64).arg(&code);
    dev.launch(args, grid_for("binary", n)?, "launching binary")
}

/// `out[i] = f(x[i])` for the first `x.len()` elements.
pub fn map<T: FloatElem>(op: UnaryOp, x: &DeviceBuf<T>, out: &mut DeviceBuf<T>) -> CudaResult<()> {
    check_len("map", "out", out, x.len())?;
    let (code, alpha, beta) = match op {
        UnaryOp::Affine { alpha, beta } => (0i32, alpha, beta),
        UnaryOp::Square => (1, 0.0, 0.0),
        UnaryOp::Powf(p) => (2, p, 0.0),
        UnaryOp::Gelu => (3, 0.0, 0.0),
    };
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("map_{}", T::NAME))?;
    let (px, po, n) = (x.ptr(), out.ptr(), x.len() as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&po).arg(&n).arg(&code).arg(&alpha).arg(&beta);
    dev.launch(args, grid_for("map", x.len())?, "launching map")
}

/// Copies the strided view `a` of `shape` into the contiguous `out`.
pub fn gather<T: FloatElem>(
    shape: &[usize],
    a: DeviceStrided<'_, T>,
    out: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    let n: usize = shape.iter().product();
    check_len("gather", "out", out, n)?;
    let s = strided_shape("gather", shape, &[(a.strides, a.offset, a.buf.len())])?;
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("gather_{}", T::NAME))?;
    let (pa, po, n64) = (a.buf.ptr_at(a.offset), out.ptr(), n as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&s).arg(&pa).arg(&po).arg(&n64);
    dev.launch(args, grid_for("gather", n)?, "launching gather")
}

/// Writes the dense `src` (of `shape`) into the strided view `dst` of `out`: the inverse of
/// [`gather`], for filling a slice of a larger tensor.
pub fn scatter<T: FloatElem>(
    shape: &[usize],
    src: &DeviceBuf<T>,
    out: &mut DeviceBuf<T>,
    dst_offset: usize,
    dst_strides: &[usize],
) -> CudaResult<()> {
    let n: usize = shape.iter().product();
    check_len("scatter", "src", src, n)?;
    let dense = dense_strides(shape);
    let s = strided_shape("scatter", shape, &[(&dense, 0, src.len()), (dst_strides, dst_offset, out.len())])?;
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("scatter_{}", T::NAME))?;
    let (ps, po, n64) = (src.ptr(), out.ptr_at(dst_offset), n as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&s).arg(&ps).arg(&po).arg(&n64);
    dev.launch(args, grid_for("scatter", n)?, "launching scatter")
}

/// Row-major strides of a dense tensor of `shape`.
pub(crate) fn dense_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// `out[o, i] = Σ_l x[o, l, i]` over a dense `[outer, len, inner]` `x`, in f32, in a fixed order
/// for a given shape. An axis of at least [`LONG_AXIS`] elements is cut into row splits summed
/// side by side ([`sum_axis_plan`]), the splits then added in order; a shorter one is summed in
/// order by one thread per output.
pub fn sum_axis<T: FloatElem>(
    x: &DeviceBuf<T>,
    outer: usize,
    len: usize,
    inner: usize,
    out: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    check_len("sum_axis", "x", x, outer * len * inner)?;
    check_len("sum_axis", "out", out, outer * inner)?;
    let dev = out.device().clone();
    let vector = x.ptr().is_multiple_of(16) && inner.is_multiple_of(16 / std::mem::size_of::<T>());
    if let Some(plan) = sum_axis_plan::<T>(outer, len, inner, vector, dev.multiprocessors()) {
        let partial = dev.alloc::<f32>(plan.splits * outer * inner)?;
        let f = dev.function(&SOURCE, &format!("sum_rows_partial_{}", T::NAME))?;
        let (px, pp, l, i, v) = (x.ptr(), partial.ptr(), len as i64, inner as i64, i32::from(vector));
        let mut args = dev.launcher(&f)?;
        args.arg(&px).arg(&pp).arg(&l).arg(&i).arg(&v);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (blocks_for("sum_axis", plan.col_blocks, 1)?, plan.splits as u32, outer as u32),
            block_dim: (SUM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        dev.launch(args, cfg, "launching sum_rows_partial")?;
        return column_sum(&partial, outer * inner, plan.splits, outer * inner, out, None, false);
    }
    let f = dev.function(&SOURCE, &format!("sum_axis_{}", T::NAME))?;
    let (px, po, o, l, i) = (x.ptr(), out.ptr(), outer as i64, len as i64, inner as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&po).arg(&o).arg(&l).arg(&i);
    dev.launch(args, grid_for("sum_axis", outer * inner)?, "launching sum_axis")
}

/// The length from which [`sum_axis`] splits the summed axis across blocks.
pub const LONG_AXIS: usize = 64;

/// Threads per block of `sum_rows_partial`: 32 column lanes × 8 row lanes.
pub const SUM_THREADS: u32 = 256;

/// How [`sum_axis`] splits a long axis: blocks across `inner`, and row splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SumAxisPlan {
    /// Blocks across the inner columns (32 column lanes of one column or one 16-byte vector).
    pub col_blocks: usize,
    /// Row splits of the summed axis (`gridDim.y`).
    pub splits: usize,
}

/// The split of [`sum_axis`] over `[outer, len, inner]` of `T` on `multiprocessors` SMs, or
/// `None` when the axis is short (below [`LONG_AXIS`]), the outer count exceeds a grid's z
/// (65,535) or the outputs exceed i32 (the per-output kernel takes those): enough splits, of at
/// least 32 rows, to give every SM about eight blocks.
pub fn sum_axis_plan<T: FloatElem>(
    outer: usize,
    len: usize,
    inner: usize,
    vector: bool,
    multiprocessors: usize,
) -> Option<SumAxisPlan> {
    if len < LONG_AXIS || outer == 0 || inner == 0 || outer > 65_535 || outer * inner > i32::MAX as usize {
        return None;
    }
    let lanes = if vector { 16 / std::mem::size_of::<T>() } else { 1 };
    let col_blocks = inner.div_ceil(32 * lanes);
    let want = (8 * multiprocessors.max(1)).div_ceil(col_blocks * outer);
    let splits = want.clamp(1, len.div_ceil(32)).min(65_535);
    Some(SumAxisPlan { col_blocks, splits })
}

/// `acc += x`, elementwise, over `x.len()` elements.
pub fn add_assign<T: FloatElem>(acc: &mut DeviceBuf<T>, x: &DeviceBuf<T>) -> CudaResult<()> {
    check_len("add_assign", "acc", acc, x.len())?;
    let dev = acc.device().clone();
    let f = dev.function(&SOURCE, &format!("add_assign_{}", T::NAME))?;
    let (pa, px, n) = (acc.ptr(), x.ptr(), x.len() as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&pa).arg(&px).arg(&n);
    dev.launch(args, grid_for("add_assign", x.len())?, "launching add_assign")
}

/// Sets every element of `out` to `value`.
pub fn fill<T: FloatElem>(out: &mut DeviceBuf<T>, value: f32) -> CudaResult<()> {
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("fill_{}", T::NAME))?;
    let (po, n) = (out.ptr(), out.len() as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&po).arg(&n).arg(&value);
    dev.launch(args, grid_for("fill", out.len())?, "launching fill")
}

/// `out[i] = D::from(x[i])` (round to nearest even when narrowing).
pub fn cast<S: FloatElem, D: FloatElem>(x: &DeviceBuf<S>, out: &mut DeviceBuf<D>) -> CudaResult<()> {
    check_len("cast", "out", out, x.len())?;
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("cast_{}_to_{}", S::NAME, D::NAME))?;
    let (px, po, n) = (x.ptr(), out.ptr(), x.len() as i64);
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&po).arg(&n);
    dev.launch(args, grid_for("cast", x.len())?, "launching cast")
}

/// Sums `splits` rows of f32 partials (`partial[s·row_stride + c]`) in a fixed order:
/// columns `0..cols` into `out_a`, and when `out_b` is given, columns `cols..2·cols` into it;
/// `accumulate` adds to the outputs instead of overwriting them.
pub(crate) fn column_sum<T: FloatElem>(
    partial: &DeviceBuf<f32>,
    row_stride: usize,
    splits: usize,
    cols: usize,
    out_a: &mut DeviceBuf<T>,
    out_b: Option<&mut DeviceBuf<T>>,
    accumulate: bool,
) -> CudaResult<()> {
    let total = if out_b.is_some() { 2 * cols } else { cols };
    check_len("column_sum", "out", out_a, cols)?;
    if let Some(b) = &out_b {
        check_len("column_sum", "out", b, cols)?;
    }
    if splits > 0 {
        check_len("column_sum", "partial", partial, (splits - 1) * row_stride + total)?;
    }
    let dev = out_a.device().clone();
    let f = dev.function(&SOURCE, &format!("column_sum_{}", T::NAME))?;
    let (pp, rs, sp, c, pa, pb, acc) = (
        partial.ptr(),
        row_stride as i64,
        splits as i32,
        cols as i32,
        out_a.ptr(),
        out_b.map_or(0, |b| b.ptr()),
        accumulate as i32,
    );
    let mut args = dev.launcher(&f)?;
    args.arg(&pp).arg(&rs).arg(&sp).arg(&c).arg(&pa).arg(&pb).arg(&acc);
    let cfg = cudarc::driver::LaunchConfig {
        grid_dim: (blocks_for("column_sum", total, 32)?, 1, 1),
        block_dim: (32, 32, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(args, cfg, "launching column_sum")
}

#[cfg(test)]
mod tests {
    use super::{fast_div, fast_divisor, merge_axes};

    #[test]
    fn fast_division_is_exact_below_two_to_the_31() {
        let max = (1u32 << 31) - 1;
        let mut divisors: Vec<u32> = (1..=4096).collect();
        for k in 1..31 {
            let p = 1u32 << k;
            divisors.extend([p - 1, p, p + 1]);
        }
        divisors.extend([6144, 8192 * 3, 65_535, 1_000_003, max - 1, max]);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for &d in &divisors {
            let pair = fast_divisor(d);
            let mut numerators =
                vec![0, 1, d - 1, d, d.saturating_add(1).min(max), max, max - 1, max / d * d];
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                numerators.push((x % (u64::from(max) + 1)) as u32);
            }
            for n in numerators {
                assert_eq!(fast_div(n, pair), n / d, "{n} / {d} with {pair:?}");
            }
        }
    }

    #[test]
    fn contiguous_axes_merge_and_broadcast_axes_stay() {
        let (shape, strides) = merge_axes(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]);
        assert_eq!(shape, vec![6, 4]);
        assert_eq!(strides, vec![vec![4, 1], vec![0, 1]]);
        let (shape, strides) = merge_axes(&[2, 1, 3], &[&[3, 3, 1]]);
        assert_eq!(shape, vec![6]);
        assert_eq!(strides, vec![vec![1]]);
        // A transposed operand cannot merge.
        let (shape, _) = merge_axes(&[3, 4], &[&[1, 3]]);
        assert_eq!(shape, vec![3, 4]);
    }
}
