//! Shape ops: reshape, transpose, permute, narrow, expand and squeeze as views where the
//! layout allows, and concat and contiguous as copies.

use crate::autograd::BackwardOp;
use crate::layout::{contiguous_strides, Layout};
use crate::storage::CpuStorage;
use crate::{Error, Result, Tensor};

use super::{check_same, resolve_axis};

struct ReshapeBackward {
    input_shape: Vec<usize>,
}
impl BackwardOp for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(&self.input_shape)?)])
    }
}

struct PermuteBackward {
    inverse: Vec<usize>,
}
impl BackwardOp for PermuteBackward {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.permute(&self.inverse)?)])
    }
}

struct NarrowBackward {
    axis: usize,
    start: usize,
    input_shape: Vec<usize>,
}
impl BackwardOp for NarrowBackward {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        // The gradient is g surrounded by zeros along the narrowed axis.
        let size = self.input_shape[self.axis];
        let len = g.shape()[self.axis];
        let zeros = |n: usize| {
            let mut shape = self.input_shape.clone();
            shape[self.axis] = n;
            Tensor::zeros_like_device(&shape, g)
        };
        let parts = [zeros(self.start)?, g.clone(), zeros(size - self.start - len)?];
        Ok(vec![Some(Tensor::concat(&parts, self.axis as isize)?)])
    }
}

struct ExpandBackward {
    input_shape: Vec<usize>,
}
impl BackwardOp for ExpandBackward {
    fn name(&self) -> &'static str {
        "expand"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.sum_to_shape(&self.input_shape)?)])
    }
}

struct ConcatBackward {
    axis: usize,
    sizes: Vec<usize>,
}
impl BackwardOp for ConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(self.sizes.len());
        for &n in &self.sizes {
            out.push(Some(g.narrow(self.axis as isize, start, n)?.contiguous()?));
            start += n;
        }
        Ok(out)
    }
}

struct IdentityBackward;
impl BackwardOp for IdentityBackward {
    fn name(&self) -> &'static str {
        "contiguous"
    }
    fn backward(&self, g: &Tensor, _: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

impl Tensor {
    /// The same elements in a new shape with the same element count (`-1` style inference is
    /// not supported: give every size). A view when the layout is contiguous, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(self.numel()) {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        let base = if self.is_contiguous() { self.clone() } else { self.contiguous()? };
        let view =
            base.with_layout(Layout::new(shape.to_vec(), contiguous_strides(shape), base.layout().offset()));
        Ok(Tensor::from_op(view, ReshapeBackward { input_shape: self.shape().to_vec() }, vec![self.clone()]))
    }

    /// Collapses all axes but the last into one: `[a, b, ..., c] → [a·b·…, c]`.
    pub fn flatten_to_2d(&self) -> Result<Tensor> {
        let last = *self.shape().last().ok_or_else(|| Error::BadShape {
            op: "flatten_to_2d",
            shape: vec![],
            reason: "needs at least one axis".into(),
        })?;
        let rows: usize = self.shape()[..self.rank() - 1].iter().product();
        self.reshape(&[rows, last])
    }

    /// Reorders the axes: result axis `i` is input axis `order[i]`. Always a view.
    pub fn permute(&self, order: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if order.len() != rank || order.iter().any(|&a| a >= rank || std::mem::replace(&mut seen[a], true)) {
            return Err(Error::InvalidArgument {
                op: "permute",
                reason: format!("{order:?} is not a permutation of the {rank} axes of {:?}", self.shape()),
            });
        }
        let l = self.layout();
        let shape = order.iter().map(|&a| l.shape()[a]).collect();
        let strides = order.iter().map(|&a| l.strides()[a]).collect();
        let mut inverse = vec![0; rank];
        for (i, &a) in order.iter().enumerate() {
            inverse[a] = i;
        }
        let view = self.with_layout(Layout::new(shape, strides, l.offset()));
        Ok(Tensor::from_op(view, PermuteBackward { inverse }, vec![self.clone()]))
    }

    /// Swaps two axes (negative axes count from the end). Always a view.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let a = resolve_axis("transpose", a, self.rank())?;
        let b = resolve_axis("transpose", b, self.rank())?;
        let mut order: Vec<usize> = (0..self.rank()).collect();
        order.swap(a, b);
        self.permute(&order)
    }

    /// Swaps the last two axes (a matrix transpose on batched matrices). Always a view.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::BadShape {
                op: "t",
                shape: self.shape().to_vec(),
                reason: "needs at least two axes".into(),
            });
        }
        self.transpose(-2, -1)
    }

    /// The sub-range `start..start + len` of `axis`. Always a view.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let axis = resolve_axis("narrow", axis, self.rank())?;
        let size = self.shape()[axis];
        let end = start.checked_add(len).filter(|&e| e <= size).ok_or(Error::RangeOutOfBounds {
            axis,
            start,
            end: start.saturating_add(len),
            size,
        })?;
        let _ = end;
        let l = self.layout();
        let mut shape = l.shape().to_vec();
        shape[axis] = len;
        let offset = if len == 0 { l.offset() } else { l.offset() + start * l.strides()[axis] };
        let view = self.with_layout(Layout::new(shape, l.strides().to_vec(), offset));
        Ok(Tensor::from_op(
            view,
            NarrowBackward { axis, start, input_shape: self.shape().to_vec() },
            vec![self.clone()],
        ))
    }

    /// Splits `axis` into pieces of the given sizes (views), e.g. a fused QKV into Q, K, V.
    pub fn split(&self, axis: isize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let ax = resolve_axis("split", axis, self.rank())?;
        if sizes.iter().sum::<usize>() != self.shape()[ax] {
            return Err(Error::InvalidArgument {
                op: "split",
                reason: format!("sizes {sizes:?} do not add up to axis {ax} of {:?}", self.shape()),
            });
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let part = self.narrow(axis, start, n);
                start += n;
                part
            })
            .collect()
    }

    /// Adds an axis of size 1 at position `axis` (`0..=rank`). A view of a contiguous tensor, else a copy.
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(Error::AxisOutOfRange { op: "unsqueeze", axis, rank: self.rank() });
        }
        let mut shape = self.shape().to_vec();
        shape.insert(axis, 1);
        self.reshape_view_or_copy(&shape)
    }

    /// Removes an axis of size 1. A view of a contiguous tensor, else a copy.
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        if self.shape().get(axis) != Some(&1) {
            return Err(Error::InvalidArgument {
                op: "squeeze",
                reason: format!("axis {axis} of {:?} is not of size 1", self.shape()),
            });
        }
        let mut shape = self.shape().to_vec();
        shape.remove(axis);
        self.reshape_view_or_copy(&shape)
    }

    fn reshape_view_or_copy(&self, shape: &[usize]) -> Result<Tensor> {
        self.reshape(shape)
    }

    /// This tensor broadcast to `shape` (NumPy rules) as a view with zero strides.
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        let target = crate::layout::broadcast_shape("expand", self.shape(), shape)?;
        if target != shape {
            return Err(Error::ShapeMismatch {
                op: "expand",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        let strides = self.layout().broadcast_strides(shape);
        let view = self.with_layout(Layout::new(shape.to_vec(), strides, self.layout().offset()));
        Ok(Tensor::from_op(view, ExpandBackward { input_shape: self.shape().to_vec() }, vec![self.clone()]))
    }

    /// A dense row-major copy (or this tensor itself when already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.to_owned_dense()
    }

    /// A dense row-major copy that owns its storage, always: unlike [`Tensor::contiguous`]
    /// never a view of another tensor's buffer, so that a narrowed piece of a large tensor
    /// (one gradient of a data-parallel bucket) neither keeps the rest alive nor reaches
    /// kernels at an offset.
    ///
    /// ```
    /// use polylm_engine::Tensor;
    /// let t = Tensor::from_vec((0..12).map(|x| x as f32 * 0.5 + 0.25).collect::<Vec<_>>(), &[12])?;
    /// let piece = t.narrow(0, 4, 6)?;
    /// let owned = piece.to_owned_dense()?;
    /// assert!(piece.shares_storage_with(&t) && !owned.shares_storage_with(&t));
    /// assert_eq!(owned.to_vec::<f32>()?, piece.to_vec::<f32>()?);
    /// # Ok::<(), polylm_engine::Error>(())
    /// ```
    pub fn to_owned_dense(&self) -> Result<Tensor> {
        let out = if self.device().is_cpu() {
            Tensor::from_storage(self.contiguous_storage(), self.shape())
        } else {
            crate::cuda::with_gpu_type!(self.dtype(), T => {
                let buf = match crate::cuda::dense::<T>(self)? {
                    crate::cuda::Dense::Owned(b) => b,
                    // The tensor is its whole buffer: copy it.
                    crate::cuda::Dense::Borrowed(b) => {
                        let mut copy = b.device().alloc::<T>(b.len()).map_err(crate::cuda::cuda_err("contiguous"))?;
                        b.device().copy(b, &mut copy).map_err(crate::cuda::cuda_err("contiguous"))?;
                        copy
                    }
                };
                Ok(Tensor::from_gpu(buf, self.shape()))
            })?
        };
        Ok(Tensor::from_op(out, IdentityBackward, vec![self.clone()]))
    }

    /// Zeros of `shape` with `like`'s dtype, on `like`'s device (filled there: nothing is
    /// copied from the host).
    pub fn zeros_like_device(shape: &[usize], like: &Tensor) -> Result<Tensor> {
        if like.device().is_cpu() {
            Tensor::zeros(shape, like.dtype())
        } else {
            crate::cuda::full_like(like, shape, 0.0)
        }
    }

    /// Joins tensors along `axis`; every other axis must agree. A copy.
    pub fn concat(tensors: &[Tensor], axis: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or(Error::InvalidArgument { op: "concat", reason: "no tensors given".into() })?;
        let ax = resolve_axis("concat", axis, first.rank())?;
        for t in &tensors[1..] {
            check_same("concat", first, t)?;
            let same_rest = t.rank() == first.rank()
                && t.shape().iter().zip(first.shape()).enumerate().all(|(i, (a, b))| i == ax || a == b);
            if !same_rest {
                return Err(Error::ShapeMismatch {
                    op: "concat",
                    lhs: first.shape().to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
        }
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[ax]).collect();
        let mut shape = first.shape().to_vec();
        shape[ax] = sizes.iter().sum();
        if !first.device().is_cpu() {
            let out = crate::cuda::with_gpu_type!(first.dtype(), T => gpu_concat::<T>(tensors, ax, &shape))?;
            return Ok(Tensor::from_op(out, ConcatBackward { axis: ax, sizes }, tensors.to_vec()));
        }
        let outer: usize = shape[..ax].iter().product();
        let inner: usize = shape[ax + 1..].iter().product();
        let parts: Vec<CpuStorage> = tensors.iter().map(|t| t.contiguous_storage()).collect();
        macro_rules! join {
            ($variant:ident) => {{
                let srcs: Vec<&Vec<_>> = parts
                    .iter()
                    .map(|p| match p {
                        CpuStorage::$variant(v) => v,
                        _ => unreachable!("dtypes were checked equal"),
                    })
                    .collect();
                let mut out = Vec::with_capacity(outer * shape[ax] * inner);
                for o in 0..outer {
                    for (src, &n) in srcs.iter().zip(&sizes) {
                        out.extend_from_slice(&src[o * n * inner..(o + 1) * n * inner]);
                    }
                }
                CpuStorage::$variant(out)
            }};
        }
        let storage = match parts[0] {
            CpuStorage::F32(_) => join!(F32),
            CpuStorage::F64(_) => join!(F64),
            CpuStorage::BF16(_) => join!(BF16),
            CpuStorage::F16(_) => join!(F16),
        };
        let out = Tensor::from_storage(storage, &shape);
        Ok(Tensor::from_op(out, ConcatBackward { axis: ax, sizes }, tensors.to_vec()))
    }
}

/// The GPU path of `concat`: each part's dense values written into its slice of the output.
fn gpu_concat<T: crate::cuda::GpuElem>(tensors: &[Tensor], ax: usize, shape: &[usize]) -> Result<Tensor> {
    use crate::cuda::{alloc_like, cuda_err, dense};
    let mut out = alloc_like::<T>(&tensors[0], shape.iter().product())?;
    let strides = crate::layout::contiguous_strides(shape);
    let mut start = 0;
    for t in tensors {
        let n = t.shape()[ax];
        if t.numel() > 0 {
            let src = dense::<T>(t)?;
            polylm_kernels::cuda::elementwise::scatter(
                t.shape(),
                &src,
                &mut out,
                start * strides[ax],
                &strides,
            )
            .map_err(cuda_err("concat"))?;
        }
        start += n;
    }
    Ok(Tensor::from_gpu(out, shape))
}
