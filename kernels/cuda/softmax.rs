//! Launch wrappers of `softmax.cu`: row softmax forward and backward.

use cudarc::driver::PushKernelArg;

use super::device::{check_len, grid1, rows_of, DeviceBuf, FloatElem};
use super::error::CudaResult;
use super::source::{kernel_source, KernelSource};

/// The kernel file.
pub const SOURCE: KernelSource = kernel_source!("softmax");

fn threads_for(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 512) as u32
}

/// `out[r] = softmax(x[r])` over rows of `cols`.
pub fn softmax_forward<T: FloatElem>(
    x: &DeviceBuf<T>,
    cols: usize,
    out: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    let rows = rows_of("softmax_forward", "x", x.len(), cols)? as u32;
    check_len("softmax_forward", "out", out, x.len())?;
    let dev = out.device().clone();
    let f = dev.function(&SOURCE, &format!("softmax_fwd_{}", T::NAME))?;
    let (px, po, c) = (x.ptr(), out.ptr(), cols as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&px).arg(&po).arg(&c);
    dev.launch(args, grid1(rows, threads_for(cols), 0), "launching softmax_fwd")
}

/// `dx = y ∘ (dy − rowsum(dy ∘ y))` from the forward output `y`.
pub fn softmax_backward<T: FloatElem>(
    y: &DeviceBuf<T>,
    dy: &DeviceBuf<T>,
    cols: usize,
    dx: &mut DeviceBuf<T>,
) -> CudaResult<()> {
    let rows = rows_of("softmax_backward", "y", y.len(), cols)? as u32;
    check_len("softmax_backward", "dy", dy, y.len())?;
    check_len("softmax_backward", "dx", dx, y.len())?;
    let dev = dx.device().clone();
    let f = dev.function(&SOURCE, &format!("softmax_bwd_{}", T::NAME))?;
    let (py, pd, pdx, c) = (y.ptr(), dy.ptr(), dx.ptr(), cols as i32);
    let mut args = dev.launcher(&f)?;
    args.arg(&py).arg(&pd).arg(&pdx).arg(&c);
    dev.launch(args, grid1(rows, threads_for(cols), 0), "launching softmax_bwd")
}
