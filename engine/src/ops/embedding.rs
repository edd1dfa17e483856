//! Embedding lookup: gather rows of a table; the backward pass is a scatter-add.

use polylm_kernels::embedding;

use crate::autograd::{take_pending_like, BackwardOp};
use crate::dtype::CpuFloat;
use crate::storage::CpuStorage;
use crate::{Error, Result, Tensor};

use super::with_compute_type;

struct EmbeddingBackward {
    ids: Vec<u32>,
}
impl BackwardOp for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding"
    }
    /// The rows are scattered into the table's gradient gathered so far (a tied LM head's),
    /// in place when nothing else holds it, instead of into a new zero table that is then
    /// added.
    fn folds_pending(&self) -> bool {
        true
    }

    fn backward_folding(
        &self,
        g: &Tensor,
        inputs: &[Tensor],
        pending: &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let w = &inputs[0];
        let dim = w.shape()[1];
        let acc = take_pending_like(&mut pending[0], w);
        let dw = if w.device().is_cpu() {
            with_compute_type!(w.dtype(), T => scatter::<T>(&self.ids, g, w, dim, acc))?
        } else {
            crate::cuda::with_gpu_type!(w.dtype(), T => gpu::backward::<T>(&self.ids, g, w, dim, acc))?
        };
        Ok(vec![Some(dw)])
    }
}

/// The scatter-add of the rows of `g` into `acc` (in its own buffer when it can be written in
/// place) or into zeros, in the compute type `T`.
fn scatter<T: CpuFloat>(
    ids: &[u32],
    g: &Tensor,
    w: &Tensor,
    dim: usize,
    acc: Option<Tensor>,
) -> Result<Tensor> {
    let gv = g.values::<T>();
    let mut dw = acc.map_or_else(|| vec![T::ZERO; w.numel()], Tensor::into_compute_values);
    embedding::embedding_backward(ids, &gv, dim, &mut dw);
    Tensor::from_compute(dw, w.shape(), w.dtype())
}

impl Tensor {
    /// Rows of this `[rows, dim]` table picked by `ids` (laid out as `ids_shape`), giving
    /// `[..ids_shape, dim]`. Every id must be `< rows`; the first that is not is reported.
    pub fn embedding(&self, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::BadShape {
                op: "embedding",
                shape: self.shape().to_vec(),
                reason: "the table must be [rows, dim]".into(),
            });
        }
        let expected: usize = ids_shape.iter().product();
        if expected != ids.len() {
            return Err(Error::ElementCount { shape: ids_shape.to_vec(), expected, len: ids.len() });
        }
        let (rows, dim) = (self.shape()[0], self.shape()[1]);
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= rows) {
            return Err(Error::IdOutOfRange { op: "embedding", position, id, limit: rows });
        }
        let mut shape = ids_shape.to_vec();
        shape.push(dim);
        if !self.device().is_cpu() {
            let out = crate::cuda::with_gpu_type!(self.dtype(), T => gpu::forward::<T>(self, ids, &shape))?;
            return Ok(Tensor::from_op(out, EmbeddingBackward { ids: ids.to_vec() }, vec![self.clone()]));
        }
        macro_rules! gather {
            ($v:expr, $variant:ident) => {{
                let mut out = vec![Default::default(); ids.len() * dim];
                embedding::embedding_forward($v, ids, dim, &mut out);
                CpuStorage::$variant(out)
            }};
        }
        // A contiguous table (the usual case) is read in place; a strided view is copied once.
        let copied;
        let (table, offset) = if let (true, Some(host)) = (self.is_contiguous(), self.storage().cpu()) {
            (host, self.layout().offset())
        } else {
            copied = self.contiguous_storage();
            (&copied, 0)
        };
        let range = offset..offset + rows * dim;
        let storage = match table {
            CpuStorage::F32(v) => gather!(&v[range], F32),
            CpuStorage::F64(v) => gather!(&v[range], F64),
            CpuStorage::BF16(v) => gather!(&v[range], BF16),
            CpuStorage::F16(v) => gather!(&v[range], F16),
        };
        let out = Tensor::from_storage(storage, &shape);
        Ok(Tensor::from_op(out, EmbeddingBackward { ids: ids.to_vec() }, vec![self.clone()]))
    }
}

/// The GPU paths: lookup, and the deterministic scatter-add into a zero gradient.
mod gpu {
    use polylm_kernels::cuda::embedding::{embedding_backward, embedding_forward};

    use polylm_kernels::cuda::DeviceBuf;

    use crate::cuda::{alloc_like, cuda_err, dense, zeros_like, GpuElem};
    use crate::{Result, Tensor};

    pub(super) fn forward<T: GpuElem>(table: &Tensor, ids: &[u32], shape: &[usize]) -> Result<Tensor> {
        let dim = table.shape()[1];
        let w = dense::<T>(table)?;
        let mut out = alloc_like::<T>(table, ids.len() * dim)?;
        if !ids.is_empty() && dim > 0 {
            embedding_forward(&w, ids, dim, &mut out).map_err(cuda_err("embedding"))?;
        }
        Ok(Tensor::from_gpu(out, shape))
    }

    /// The scatter-add of the rows of `g` into `acc` when given (in its own buffer when it can
    /// be written in place, else by an add), or into zeros.
    pub(super) fn backward<T: GpuElem>(
        ids: &[u32],
        g: &Tensor,
        w: &Tensor,
        dim: usize,
        acc: Option<Tensor>,
    ) -> Result<Tensor> {
        let gv = dense::<T>(g)?;
        let scatter = |dw: &mut DeviceBuf<T>| -> Result<()> {
            if !ids.is_empty() && dim > 0 {
                embedding_backward(ids, &gv, dim, dw).map_err(cuda_err("embedding backward"))?;
            }
            Ok(())
        };
        match acc {
            None => {
                let mut dw = zeros_like::<T>(w, w.numel())?;
                scatter(&mut dw)?;
                Ok(Tensor::from_gpu(dw, w.shape()))
            }
            Some(mut acc) => match acc.gpu_buf_mut::<T>() {
                Some(dw) => {
                    scatter(dw)?;
                    Ok(acc)
                }
                // Shared or strided: a new gradient, added.
                None => acc.add(&backward::<T>(ids, g, w, dim, None)?),
            },
        }
    }
}
