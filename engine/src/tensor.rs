//! The [`Tensor`]: a shaped, typed view into reference-counted storage, and a node of the
//! autograd graph.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use half::{bf16, f16};
use polylm_kernels::{cast, copy};

use crate::autograd::{is_grad_enabled, run_backward, run_backward_from, BackwardOp, Node};
use crate::dtype::{CpuFloat, WithDType};
use crate::layout::Layout;
use crate::rng::Rng;
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result};

/// A process-unique identity of a tensor (views and detached copies get their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> TensorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// An n-dimensional array of f32, f64, bf16 or f16 on a device, cheap to clone (clones share
/// everything), and optionally part of an autograd graph.
///
/// ```
/// use polylm_engine::{DType, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2])?.requires_grad();
/// let loss = x.matmul(&x)?.sum_all()?;
/// loss.backward()?;
/// assert_eq!(x.grad().unwrap().to_vec::<f32>()?, vec![7.0, 11.0, 9.0, 13.0]);
/// # Ok::<(), polylm_engine::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor(Arc<TensorImpl>);

struct TensorImpl {
    id: TensorId,
    storage: Arc<Storage>,
    layout: Layout,
    requires_grad: bool,
    is_leaf: bool,
    node: Mutex<Option<Arc<Node>>>,
    grad: Mutex<Option<Tensor>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data (an
    // Option of Arc) is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match expected {
        Some(e) if e == len => Ok(()),
        _ => {
            Err(Error::ElementCount { shape: shape.to_vec(), expected: expected.unwrap_or(usize::MAX), len })
        }
    }
}

impl Tensor {
    // ----- construction -------------------------------------------------------------------

    fn build(storage: Arc<Storage>, layout: Layout, requires_grad: bool, node: Option<Node>) -> Tensor {
        Tensor(Arc::new(TensorImpl {
            id: TensorId::fresh(),
            storage,
            layout,
            requires_grad,
            is_leaf: node.is_none(),
            node: Mutex::new(node.map(Arc::new)),
            grad: Mutex::new(None),
        }))
    }

    pub(crate) fn from_storage(storage: CpuStorage, shape: &[usize]) -> Tensor {
        Tensor::from_storage_any(Storage::Cpu(storage), shape)
    }

    /// A contiguous tensor over `storage` on any device.
    pub(crate) fn from_storage_any(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor::build(Arc::new(storage), Layout::contiguous(shape), false, None)
    }

    /// A contiguous CPU tensor owning `data`, which must hold exactly `shape`'s element count.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        Ok(Tensor::from_storage(T::into_storage(data), shape))
    }

    /// A contiguous CPU tensor copied from `data`.
    pub fn from_slice<T: WithDType>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A tensor of `shape` filled with `value` (rounded to `dtype`).
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| Error::BadShape {
            op: "full",
            shape: shape.to_vec(),
            reason: "element count overflows".into(),
        })?;
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::from_f64(value); n]),
            DType::F16 => CpuStorage::F16(vec![f16::from_f64(value); n]),
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype)
    }

    /// A one-element tensor of shape `[]`.
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(&[], value, dtype).expect("a scalar shape is always valid")
    }

    /// Normal samples with mean 0 and standard deviation `std`, drawn from `rng`: exactly the
    /// values of `rng.normal() * std` in order, rounded to `dtype`. The generator runs serially
    /// (about a nanosecond a value); the Box–Muller transform of its bits and the rounding, some
    /// forty times dearer, run on every core (PolyLM-1.7B's 1.7 billion values took over a
    /// minute on one, through an f64 copy of each tensor).
    pub fn randn(shape: &[usize], std: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        check_len(shape, n)?;
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(normal_values(n, std, rng)),
            DType::F64 => CpuStorage::F64(normal_values(n, std, rng)),
            DType::BF16 => CpuStorage::BF16(normal_values(n, std, rng)),
            DType::F16 => CpuStorage::F16(normal_values(n, std, rng)),
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    /// Uniform samples in `[low, high)`, drawn from `rng`.
    pub fn rand_uniform(shape: &[usize], low: f64, high: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| low + (high - low) * rng.uniform()).collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)
    }

    /// A result tensor of an op, recording `op` in the graph if any input requires grad and
    /// grad mode is on.
    pub(crate) fn from_op(result: Tensor, op: impl BackwardOp + 'static, inputs: Vec<Tensor>) -> Tensor {
        if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad_flag()) {
            return result;
        }
        let node = Node { op: Box::new(op), inputs };
        Tensor::build(result.0.storage.clone(), result.0.layout.clone(), true, Some(node))
    }

    /// A tensor of `dtype` from values computed in `T`, cast when `dtype` differs.
    pub(crate) fn from_compute<T: CpuFloat>(data: Vec<T>, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Tensor::from_vec(data, shape)?;
        if dtype == T::DTYPE {
            Ok(t)
        } else {
            t.cast_storage(dtype)
        }
    }

    /// A view sharing this tensor's storage with another layout (no graph recorded).
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor::build(self.0.storage.clone(), layout, false, None)
    }

    // ----- metadata -----------------------------------------------------------------------

    /// This tensor's identity.
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.storage.dtype()
    }
    /// The device holding the data.
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    /// Shape, strides and offset.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// Whether the view is dense and row-major.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Whether two tensors share one storage buffer.
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
    pub(crate) fn storage(&self) -> &Storage {
        &self.0.storage
    }
    /// The storage, mutably, when nothing else (a clone, a view) shares this tensor or its
    /// storage; for in-place updates of state the engine owns (the optimizer's).
    pub(crate) fn storage_mut(&mut self) -> Option<&mut Storage> {
        Arc::get_mut(&mut self.0).and_then(|t| Arc::get_mut(&mut t.storage))
    }

    /// The storage, writable in place, when [`Tensor::storage_mut`] gives it and this tensor is
    /// dense over all of it (row-major, offset 0, every element its own): a gradient the
    /// backward pass owns, which a kernel may accumulate into instead of writing a new one.
    pub(crate) fn dense_storage_mut(&mut self) -> Option<&mut Storage> {
        let layout = &self.0.layout;
        let whole = layout.is_contiguous() && layout.offset() == 0;
        let numel = layout.numel();
        self.storage_mut().filter(|s| whole && s.len() == numel)
    }

    /// The size of axis `axis`, or an error naming the rank.
    pub fn dim(&self, axis: usize) -> Result<usize> {
        self.shape().get(axis).copied().ok_or(Error::AxisOutOfRange { op: "dim", axis, rank: self.rank() })
    }

    // ----- device -------------------------------------------------------------------------

    /// This tensor copied to `device` (the same tensor when it is already there). The copy is
    /// a new leaf: gradients do not flow across devices. f64 tensors cannot go to a GPU.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => Ok(Tensor::from_storage(crate::cuda::download(self)?, self.shape())),
            Device::Cuda(i) => crate::cuda::upload(self, i),
        }
    }

    // ----- autograd -----------------------------------------------------------------------

    /// This tensor as a leaf that requires grad (shares storage; drops any graph history).
    pub fn requires_grad(self) -> Tensor {
        Tensor::build(self.0.storage.clone(), self.0.layout.clone(), true, None)
    }

    /// Whether gradients flow to this tensor.
    pub fn requires_grad_flag(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether this tensor was made by the user rather than recorded as an op's result.
    pub fn is_leaf(&self) -> bool {
        self.0.is_leaf
    }

    /// The same data, cut from the graph (never requires grad).
    pub fn detach(&self) -> Tensor {
        self.with_layout(self.0.layout.clone())
    }

    /// The gradient accumulated in this leaf by backward passes, if any.
    pub fn grad(&self) -> Option<Tensor> {
        lock(&self.0.grad).clone()
    }

    /// Replaces the accumulated gradient with `g` (for code that combines gradients outside
    /// the graph, such as a data-parallel all-reduce). `g` must have this tensor's shape, dtype
    /// and device.
    pub fn set_grad(&self, g: &Tensor) -> Result<()> {
        if g.shape() != self.shape() || g.dtype() != self.dtype() || g.device() != self.device() {
            return Err(Error::InvalidArgument {
                op: "set_grad",
                reason: format!(
                    "gradient {:?} {:?} on {:?} for a tensor {:?} {:?} on {:?}",
                    g.shape(),
                    g.dtype(),
                    g.device(),
                    self.shape(),
                    self.dtype(),
                    self.device()
                ),
            });
        }
        *lock(&self.0.grad) = Some(g.detach());
        Ok(())
    }

    /// Forgets the accumulated gradient.
    pub fn zero_grad(&self) {
        *lock(&self.0.grad) = None;
    }

    /// Back-propagates from this one-element tensor: every leaf that requires grad and that
    /// this tensor depends on gets the gradient added to its `.grad()`. The graph is freed.
    ///
    /// A weight's earlier gradient may be added into in place by the products of this pass
    /// (never when anything else holds it), so if the pass fails midway (an error from a
    /// kernel, out of memory) the gradients of the leaves it reached are unspecified: zero
    /// them before another step.
    pub fn backward(&self) -> Result<()> {
        run_backward(self, &mut |_| {})
    }

    /// [`Tensor::backward`], calling `on_leaf` with each leaf as soon as its gradient from this
    /// pass has been added to its `.grad()` (no later op of the pass adds to it), while the
    /// backward rules of the ops before it are still to run. Data-parallel training uses it to
    /// start summing a layer's gradients over the ranks while the earlier layers' gradients are
    /// being computed.
    pub fn backward_with(&self, on_leaf: &mut dyn FnMut(&Tensor)) -> Result<()> {
        run_backward(self, on_leaf)
    }

    /// Back-propagates `grad`, the gradient of some loss with respect to this tensor (of its
    /// shape, dtype and device), as [`Tensor::backward`] does from a scalar: what
    /// `self.mul(grad)?.sum_all()?.backward()` computes, without the product, the sum and
    /// their backward passes. Activation recomputation starts each block's backward pass so.
    pub fn backward_from(&self, grad: &Tensor) -> Result<()> {
        self.backward_from_with(grad, &mut |_| {})
    }

    /// [`Tensor::backward_from`], calling `on_leaf` as [`Tensor::backward_with`] does.
    pub fn backward_from_with(&self, grad: &Tensor, on_leaf: &mut dyn FnMut(&Tensor)) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward_from",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        if grad.device() != self.device() {
            return Err(Error::DeviceMismatch {
                op: "backward_from",
                lhs: self.device(),
                rhs: grad.device(),
            });
        }
        let seed = if grad.dtype() == self.dtype() { grad.detach() } else { grad.to_dtype(self.dtype())? };
        run_backward_from(self, seed, on_leaf)
    }

    pub(crate) fn node(&self) -> Option<Arc<Node>> {
        lock(&self.0.node).clone()
    }

    pub(crate) fn take_node(&self) -> Option<Arc<Node>> {
        lock(&self.0.node).take()
    }

    /// Takes the accumulated gradient out of this leaf (the backward pass offers it to a rule
    /// that can add into it in place, see `autograd::backward`); [`Tensor::put_grad`] puts back
    /// what was not taken.
    pub(crate) fn take_grad(&self) -> Option<Tensor> {
        lock(&self.0.grad).take()
    }

    /// Puts back a gradient taken by [`Tensor::take_grad`].
    pub(crate) fn put_grad(&self, g: Tensor) {
        *lock(&self.0.grad) = Some(g);
    }

    pub(crate) fn accumulate_grad(&self, g: &Tensor) -> Result<()> {
        let mut slot = lock(&self.0.grad);
        let new = match slot.take() {
            Some(prev) => prev.add(g)?,
            None => g.detach(),
        };
        *slot = Some(new);
        Ok(())
    }

    // ----- data access --------------------------------------------------------------------

    /// The elements in row-major order as `T`, which must be this tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeAccess { requested: T::DTYPE, actual: self.dtype() });
        }
        let s = self.host_storage()?;
        Ok(T::storage_slice(&s).map(|v| v.to_vec()).unwrap_or_default())
    }

    /// The elements in row-major order, widened to f64 whatever the dtype. For a GPU tensor
    /// whose download fails (the device failed) the values are NaN; [`Tensor::to_vec`] and
    /// [`Tensor::to_scalar`] report that error instead.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        Tensor::widen(self.contiguous_storage())
    }

    fn widen(s: CpuStorage) -> Vec<f64> {
        match s {
            CpuStorage::F32(v) => cast::cast_vec(&v),
            CpuStorage::F64(v) => v,
            CpuStorage::BF16(v) => cast::cast_vec(&v),
            CpuStorage::F16(v) => cast::cast_vec(&v),
        }
    }

    /// The dense host values, downloading a GPU tensor (an error if the device fails).
    fn host_storage(&self) -> Result<CpuStorage> {
        if self.device().is_cpu() {
            Ok(self.contiguous_storage())
        } else {
            crate::cuda::download(self)
        }
    }

    /// The single element of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::BadShape {
                op: "to_scalar",
                shape: self.shape().to_vec(),
                reason: "expected exactly one element".into(),
            });
        }
        Ok(Tensor::widen(self.host_storage()?)[0])
    }

    /// The view's elements copied into a new dense host buffer of the same dtype (downloaded
    /// from the GPU for a GPU tensor).
    pub(crate) fn contiguous_storage(&self) -> CpuStorage {
        let l = &self.0.layout;
        let Some(host) = self.0.storage.cpu() else {
            // A download only fails if the device failed; report NaNs rather than panic, and
            // the next GPU call returns the driver's error.
            return crate::cuda::download(self)
                .unwrap_or_else(|_| CpuStorage::F32(vec![f32::NAN; l.numel()]));
        };
        macro_rules! gather {
            ($v:expr, $variant:ident) => {{
                if l.is_contiguous() {
                    CpuStorage::$variant($v[l.offset()..l.offset() + l.numel()].to_vec())
                } else {
                    let mut out = vec![Default::default(); l.numel()];
                    copy::strided_copy($v, l.offset(), l.shape(), l.strides(), &mut out);
                    CpuStorage::$variant(out)
                }
            }};
        }
        match host {
            CpuStorage::F32(v) => gather!(v, F32),
            CpuStorage::F64(v) => gather!(v, F64),
            CpuStorage::BF16(v) => gather!(v, BF16),
            CpuStorage::F16(v) => gather!(v, F16),
        }
    }

    /// Row-major values in the compute type `T`: borrowed when possible, else gathered and cast.
    pub(crate) fn values<T: CpuFloat>(&self) -> Cow<'_, [T]> {
        let l = &self.0.layout;
        if let Some(v) = self.0.storage.cpu().and_then(T::storage_slice) {
            if l.is_contiguous() {
                return Cow::Borrowed(&v[l.offset()..l.offset() + l.numel()]);
            }
        }
        Cow::Owned(match self.contiguous_storage() {
            CpuStorage::F32(v) => cast::cast_vec(&v),
            CpuStorage::F64(v) => cast::cast_vec(&v),
            CpuStorage::BF16(v) => cast::cast_vec(&v),
            CpuStorage::F16(v) => cast::cast_vec(&v),
        })
    }

    /// Row-major values in the compute type `T`, to be written: this tensor's own buffer,
    /// taken out of it, when it holds `T` and [`Tensor::dense_storage_mut`] gives it (a
    /// gradient the backward pass owns, accumulated into in place); else a copy.
    pub(crate) fn into_compute_values<T: CpuFloat>(mut self) -> Vec<T> {
        match self.dense_storage_mut() {
            Some(Storage::Cpu(host)) => match T::storage_vec_mut(host) {
                Some(v) => std::mem::take(v),
                None => self.values::<T>().into_owned(),
            },
            _ => self.values::<T>().into_owned(),
        }
    }

    /// A dense copy of this tensor's values in `dtype` (no graph recorded).
    pub(crate) fn cast_storage(&self, dtype: DType) -> Result<Tensor> {
        let shape = self.shape().to_vec();
        macro_rules! conv {
            ($src:expr) => {
                match dtype {
                    DType::F32 => CpuStorage::F32(cast::cast_vec($src)),
                    DType::F64 => CpuStorage::F64(cast::cast_vec($src)),
                    DType::BF16 => CpuStorage::BF16(cast::cast_vec($src)),
                    DType::F16 => CpuStorage::F16(cast::cast_vec($src)),
                }
            };
        }
        let storage = match self.contiguous_storage() {
            CpuStorage::F32(v) => conv!(&v),
            CpuStorage::F64(v) => conv!(&v),
            CpuStorage::BF16(v) => conv!(&v),
            CpuStorage::F16(v) => conv!(&v),
        };
        Ok(Tensor::from_storage(storage, &shape))
    }
}

/// `n` values of `rng.normal() * std` in order, each rounded to `D` as a cast from f64 rounds:
/// the bits drawn serially a chunk at a time, transformed and rounded in parallel.
fn normal_values<D: cast::Scalar>(n: usize, std: f64, rng: &mut Rng) -> Vec<D> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let mut out = vec![D::round_from(0.0); n];
    let mut bits = vec![0u64; 2 * CHUNK.min(n)];
    for part in out.chunks_mut(CHUNK) {
        let bits = &mut bits[..2 * part.len()];
        bits.iter_mut().for_each(|b| *b = rng.next_u64());
        part.par_iter_mut()
            .with_min_len(4096)
            .zip(bits.par_chunks_exact(2).with_min_len(4096))
            .for_each(|(o, pair)| *o = D::round_from(crate::rng::normal_from_bits(pair[0], pair[1]) * std));
    }
    out
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}", self.shape(), self.dtype(), self.device())?;
        if self.requires_grad_flag() {
            f.write_str(", requires_grad")?;
        }
        if let Some(node) = self.node() {
            write!(f, ", op={}", node.op.name())?;
        }
        if self.numel() <= 8 {
            write!(f, ", {:?}", self.to_vec_f64())?;
        }
        f.write_str("]")
    }
}
