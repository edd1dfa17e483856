//! Cross-entropy fused with log-softmax and chunked over the vocabulary: the mean negative
//! log-likelihood of the targets, with an optional ignore index. No probability matrix is
//! stored; backward writes `softmax − onehot` straight into the logits' gradient.

use polylm_kernels::cross_entropy;
use polylm_kernels::Float;

use crate::autograd::BackwardOp;
use crate::dtype::{CpuFloat, SavedValues};
use crate::{Error, Result, Tensor};

use super::with_compute_type;

struct CrossEntropyBackward {
    targets: Vec<u32>,
    ignore_index: Option<u32>,
    /// The log-sum-exp of each row of logits (CPU only: the GPU kernel recomputes the row
    /// statistics in the pass that writes the gradient).
    lse: Option<SavedValues>,
    count: usize,
}

impl BackwardOp for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let logits = &inputs[0];
        let dl = match &self.lse {
            Some(lse) => with_compute_type!(logits.dtype(), T => backward_impl::<T>(self, lse, g, logits))?,
            None => crate::cuda::with_gpu_type!(logits.dtype(), T => gpu::backward::<T>(self, g, logits))?,
        };
        Ok(vec![Some(dl)])
    }
}

fn backward_impl<T: CpuFloat>(
    b: &CrossEntropyBackward,
    lse: &SavedValues,
    g: &Tensor,
    logits: &Tensor,
) -> Result<Tensor> {
    let lse = T::saved(lse).expect("saved in the compute type of the same dtype");
    let vocab = *logits.shape().last().unwrap_or(&1);
    let scale = if b.count == 0 { 0.0 } else { g.to_scalar()? / b.count as f64 };
    let dloss = vec![T::from_f64(scale); b.targets.len()];
    let lv = logits.values::<T>();
    let mut dl = vec![T::ZERO; lv.len()];
    cross_entropy::cross_entropy_backward(&lv, &b.targets, lse, &dloss, vocab, b.ignore_index, &mut dl);
    Tensor::from_compute(dl, logits.shape(), logits.dtype())
}

fn forward_impl<T: CpuFloat>(
    logits: &Tensor,
    targets: &[u32],
    ignore: Option<u32>,
    count: usize,
) -> Result<(Tensor, Vec<T>)> {
    let vocab = *logits.shape().last().unwrap_or(&1);
    let lv = logits.values::<T>();
    let mut loss = vec![T::ZERO; targets.len()];
    let mut lse = vec![T::ZERO; targets.len()];
    cross_entropy::cross_entropy_forward(&lv, targets, vocab, ignore, &mut loss, &mut lse);
    let total: f64 = loss.iter().map(|&l| Float::to_f64(l)).sum();
    let mean = if count == 0 { 0.0 } else { total / count as f64 };
    Ok((Tensor::scalar(mean, logits.dtype()), lse))
}

impl Tensor {
    /// Mean cross-entropy of `[..., vocab]` logits against one target id per row.
    ///
    /// Rows whose target equals `ignore_index` count neither in the loss nor in the mean;
    /// when every row is ignored the loss is 0 with a zero gradient. Any other target must be
    /// `< vocab`, else the first offending position is reported.
    pub fn cross_entropy(&self, targets: &[u32], ignore_index: Option<u32>) -> Result<Tensor> {
        let vocab = *self.shape().last().ok_or_else(|| Error::BadShape {
            op: "cross_entropy",
            shape: vec![],
            reason: "logits need a vocabulary axis".into(),
        })?;
        let Some(rows) = self.numel().checked_div(vocab) else {
            return Err(Error::BadShape {
                op: "cross_entropy",
                shape: self.shape().to_vec(),
                reason: "empty vocabulary axis".into(),
            });
        };
        if targets.len() != rows {
            return Err(Error::ElementCount {
                shape: self.shape()[..self.rank() - 1].to_vec(),
                expected: rows,
                len: targets.len(),
            });
        }
        let mut count = 0;
        for (position, &id) in targets.iter().enumerate() {
            if Some(id) == ignore_index {
                continue;
            }
            if id as usize >= vocab {
                return Err(Error::IdOutOfRange { op: "cross_entropy", position, id, limit: vocab });
            }
            count += 1;
        }
        let (out, lse) = if self.device().is_cpu() {
            with_compute_type!(self.dtype(), T => {
                let (out, lse) = forward_impl::<T>(self, targets, ignore_index, count)?;
                (out, Some(T::save(lse)))
            })
        } else {
            let out = crate::cuda::with_gpu_type!(self.dtype(), T => gpu::forward::<T>(self, targets, ignore_index, count))?;
            (out, None)
        };
        let back = CrossEntropyBackward { targets: targets.to_vec(), ignore_index, lse, count };
        Ok(Tensor::from_op(out, back, vec![self.clone()]))
    }
}

/// The GPU paths: per-row losses on the device, their mean taken on the host (one small
/// download, which also gives the caller the loss value without another synchronisation).
mod gpu {
    use polylm_kernels::cuda::cross_entropy::{cross_entropy, CrossEntropyOutputs, GradScale};

    use super::CrossEntropyBackward;
    use crate::cuda::{alloc_like, cuda_err, dense, GpuElem};
    use crate::{Result, Tensor};

    pub(super) fn forward<T: GpuElem>(
        logits: &Tensor,
        targets: &[u32],
        ignore: Option<u32>,
        count: usize,
    ) -> Result<Tensor> {
        let vocab = *logits.shape().last().unwrap_or(&1);
        let lv = dense::<T>(logits)?;
        let dev = lv.device().clone();
        let rows = targets.len();
        let d_targets = dev.upload(targets).map_err(cuda_err("cross_entropy"))?;
        let mut loss = dev.alloc::<f32>(rows).map_err(cuda_err("cross_entropy"))?;
        let mut lse = dev.alloc::<f32>(rows).map_err(cuda_err("cross_entropy"))?;
        if rows > 0 {
            cross_entropy(
                &lv,
                &d_targets,
                vocab,
                ignore,
                CrossEntropyOutputs { loss: &mut loss, lse: &mut lse },
                None,
            )
            .map_err(cuda_err("cross_entropy"))?;
        }
        let losses = dev.download(&loss).map_err(cuda_err("cross_entropy"))?;
        let total: f64 = losses.iter().map(|&l| f64::from(l)).sum();
        let mean = if count == 0 { 0.0 } else { total / count as f64 };
        Tensor::scalar(mean, logits.dtype()).to_device(logits.device())
    }

    pub(super) fn backward<T: GpuElem>(
        b: &CrossEntropyBackward,
        g: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor> {
        let vocab = *logits.shape().last().unwrap_or(&1);
        let scale = if b.count == 0 { 0.0 } else { g.to_scalar()? / b.count as f64 };
        let lv = dense::<T>(logits)?;
        let dev = lv.device().clone();
        let rows = b.targets.len();
        let d_targets = dev.upload(&b.targets).map_err(cuda_err("cross_entropy backward"))?;
        let mut loss = dev.alloc::<f32>(rows).map_err(cuda_err("cross_entropy backward"))?;
        let mut lse = dev.alloc::<f32>(rows).map_err(cuda_err("cross_entropy backward"))?;
        let mut dl = alloc_like::<T>(logits, lv.len())?;
        if rows > 0 {
            cross_entropy(
                &lv,
                &d_targets,
                vocab,
                b.ignore_index,
                CrossEntropyOutputs { loss: &mut loss, lse: &mut lse },
                Some((&mut dl, GradScale::Uniform(scale as f32))),
            )
            .map_err(cuda_err("cross_entropy backward"))?;
        }
        Ok(Tensor::from_gpu(dl, logits.shape()))
    }
}
