//! Causal scaled-dot-product attention as one fused op (the CPU twin of flash attention):
//! no T×T matrix is ever stored; the backward pass recomputes probabilities from the saved
//! per-row log-sum-exp.

use polylm_kernels::attention::{self, AttentionDims};

use crate::autograd::BackwardOp;
use crate::dtype::{CpuFloat, SavedValues};
use crate::{Error, Result, Tensor};

use super::{check_same, with_compute_type};

struct AttentionBackward {
    output: Tensor,
    /// The per-row log-sum-exp of the scaled scores.
    lse: SavedValues,
    dims: AttentionDims,
    scale: f64,
}

impl BackwardOp for AttentionBackward {
    fn name(&self) -> &'static str {
        "causal_attention"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let grads = match self.lse.gpu() {
            Some(lse) => {
                crate::cuda::with_gpu_type!(g.dtype(), T => gpu::backward::<T>(self, lse, g, inputs))?
            }
            None => with_compute_type!(g.dtype(), T => backward_impl::<T>(self, g, inputs))?,
        };
        Ok(grads.into_iter().map(Some).collect())
    }
}

fn backward_impl<T: CpuFloat>(b: &AttentionBackward, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    let lse = T::saved(&b.lse).expect("saved in the compute type of the same dtype");
    let (q, k, v) = (inputs[0].values::<T>(), inputs[1].values::<T>(), inputs[2].values::<T>());
    let (o, gv) = (b.output.values::<T>(), g.values::<T>());
    let n = b.dims.qkv_len();
    let (mut dq, mut dk, mut dv) = (vec![T::ZERO; n], vec![T::ZERO; n], vec![T::ZERO; n]);
    attention::causal_attention_backward(
        &q,
        &k,
        &v,
        &o,
        lse,
        &gv,
        b.dims,
        T::from_f64(b.scale),
        &mut dq,
        &mut dk,
        &mut dv,
    );
    let (shape, dtype) = (inputs[0].shape(), inputs[0].dtype());
    Ok(vec![
        Tensor::from_compute(dq, shape, dtype)?,
        Tensor::from_compute(dk, shape, dtype)?,
        Tensor::from_compute(dv, shape, dtype)?,
    ])
}

fn forward_impl<T: CpuFloat>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: AttentionDims,
    scale: f64,
) -> Result<(Tensor, Vec<T>)> {
    let (qv, kv, vv) = (q.values::<T>(), k.values::<T>(), v.values::<T>());
    let mut out = vec![T::ZERO; dims.qkv_len()];
    let mut lse = vec![T::ZERO; dims.lse_len()];
    attention::causal_attention_forward(&qv, &kv, &vv, dims, T::from_f64(scale), &mut out, &mut lse);
    Ok((Tensor::from_compute(out, q.shape(), q.dtype())?, lse))
}

/// The forward of causal attention on checked `q`, `k`, `v`: the output and what its backward
/// needs.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, AttentionBackward)> {
    check_same("causal_attention", q, k)?;
    check_same("causal_attention", q, v)?;
    for other in [k, v] {
        if other.shape() != q.shape() {
            return Err(Error::ShapeMismatch {
                op: "causal_attention",
                lhs: q.shape().to_vec(),
                rhs: other.shape().to_vec(),
            });
        }
    }
    let r = q.rank();
    if r < 2 {
        return Err(Error::BadShape {
            op: "causal_attention",
            shape: q.shape().to_vec(),
            reason: "needs [..., seq, head_dim]".into(),
        });
    }
    let (seq, head_dim) = (q.shape()[r - 2], q.shape()[r - 1]);
    let heads: usize = q.shape()[..r - 2].iter().product();
    let dims = AttentionDims { heads, seq, head_dim };
    let scale = 1.0 / (head_dim.max(1) as f64).sqrt();
    let (out, lse) = if q.device().is_cpu() {
        with_compute_type!(q.dtype(), T => {
            let (out, lse) = forward_impl::<T>(q, k, v, dims, scale)?;
            (out, T::save(lse))
        })
    } else {
        let (out, lse) =
            crate::cuda::with_gpu_type!(q.dtype(), T => gpu::forward::<T>(q, k, v, dims, scale))?;
        (out, SavedValues::Gpu(lse))
    };
    let back = AttentionBackward { output: out.detach(), lse, dims, scale };
    Ok((out, back))
}

/// The backward of [`Tensor::causal_attention_packed`]: that of attention on the three slices,
/// its gradients concatenated into one `[3, ...]` gradient (one copy, where three separate
/// slices would each be padded with zeros to the whole and then added).
struct PackedAttentionBackward(AttentionBackward);

impl BackwardOp for PackedAttentionBackward {
    fn name(&self) -> &'static str {
        "causal_attention_packed"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let parts = unpack(&inputs[0])?;
        let grads = self.0.backward(g, &parts)?;
        let mut stacked = Vec::with_capacity(3);
        for grad in grads.into_iter().flatten() {
            stacked.push(grad.reshape(&[&[1], grad.shape()].concat())?);
        }
        if stacked.len() != 3 {
            return Err(Error::InvalidArgument {
                op: "causal_attention_packed",
                reason: format!(
                    "attention's backward gave {} gradients, not 3 (internal error)",
                    stacked.len()
                ),
            });
        }
        Ok(vec![Some(Tensor::concat(&stacked, 0)?)])
    }
}

/// The slices q, k, v of a packed `[3, ...]` tensor (views, outside the graph).
fn unpack(qkv: &Tensor) -> Result<[Tensor; 3]> {
    if qkv.rank() < 3 || qkv.shape()[0] != 3 {
        return Err(Error::BadShape {
            op: "causal_attention_packed",
            shape: qkv.shape().to_vec(),
            reason: "needs [3, ..., seq, head_dim]: q, k and v stacked on the first axis".into(),
        });
    }
    let rest = &qkv.shape()[1..];
    crate::autograd::with_no_grad(|| {
        let part = |i: usize| qkv.detach().narrow(0, i, 1)?.reshape(rest);
        Ok([part(0)?, part(1)?, part(2)?])
    })
}

impl Tensor {
    /// Causal attention `softmax(q·kᵀ/√d + causal mask)·v` over `[..., seq, head_dim]`
    /// tensors (typically `[batch, heads, seq, head_dim]`); all three shapes must be equal.
    pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (out, back) = attend(q, k, v)?;
        Ok(Tensor::from_op(out, back, vec![q.clone(), k.clone(), v.clone()]))
    }

    /// [`Tensor::causal_attention`] of q, k and v stacked as `qkv: [3, ..., seq, head_dim]`
    /// (a fused QKV projection's output): the same values, with one gradient for `qkv`
    /// assembled by a single concatenation.
    pub fn causal_attention_packed(qkv: &Tensor) -> Result<Tensor> {
        let [q, k, v] = unpack(qkv)?;
        let (out, back) = attend(&q, &k, &v)?;
        Ok(Tensor::from_op(out, PackedAttentionBackward(back), vec![qkv.clone()]))
    }
}

/// The GPU paths: the simple attention kernel, or flash attention for bf16/f16 with head
/// dimension 64 or 128 when `POLYLM_GPU_ATTENTION=flash` (off by default until the flash
/// kernels have passed their GPU tests; see docs/gpu-results.md).
mod gpu {
    use std::sync::OnceLock;

    use polylm_kernels::attention::AttentionDims;
    use polylm_kernels::cuda::attention::{
        attention_backward, attention_forward, AttentionGrads, AttentionShape,
    };
    use polylm_kernels::cuda::flash_attention::{self as flash, FlashGrads, FlashShape};

    use super::AttentionBackward;
    use crate::cuda::{alloc_like, cuda_err, dense, GpuElem};
    use crate::{Result, Tensor};

    fn shape(dims: AttentionDims, scale: f64) -> AttentionShape {
        AttentionShape {
            heads: dims.heads,
            seq: dims.seq,
            head_dim: dims.head_dim,
            causal: true,
            scale: scale as f32,
        }
    }

    /// Whether `T` at this head dimension runs on the flash kernels.
    fn use_flash<T: GpuElem>(dims: AttentionDims) -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("POLYLM_GPU_ATTENTION").is_ok_and(|v| v == "flash"))
            && flash::supports::<T>(dims.head_dim)
    }

    fn flash_shape(dims: AttentionDims, scale: f64) -> FlashShape {
        FlashShape {
            batch: 1,
            heads: dims.heads,
            seq: dims.seq,
            head_dim: dims.head_dim,
            causal: true,
            scale: scale as f32,
        }
    }

    pub(super) fn forward<T: GpuElem>(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dims: AttentionDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        let (qv, kv, vv) = (dense::<T>(q)?, dense::<T>(k)?, dense::<T>(v)?);
        let mut out = alloc_like::<T>(q, dims.qkv_len())?;
        let mut lse = qv.device().alloc::<f32>(dims.lse_len()).map_err(cuda_err("causal_attention"))?;
        if dims.qkv_len() > 0 && use_flash::<T>(dims) {
            flash::forward(&qv, &kv, &vv, &flash_shape(dims, scale), &mut out, &mut lse)
                .map_err(cuda_err("causal_attention"))?;
        } else if dims.qkv_len() > 0 {
            attention_forward(&qv, &kv, &vv, &shape(dims, scale), &mut out, &mut lse)
                .map_err(cuda_err("causal_attention"))?;
        }
        Ok((Tensor::from_gpu(out, q.shape()), Tensor::from_gpu(lse, &[dims.lse_len()])))
    }

    pub(super) fn backward<T: GpuElem>(
        b: &AttentionBackward,
        lse: &Tensor,
        g: &Tensor,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        let (q, k, v) = (dense::<T>(&inputs[0])?, dense::<T>(&inputs[1])?, dense::<T>(&inputs[2])?);
        let (o, gv, l) = (dense::<T>(&b.output)?, dense::<T>(g)?, dense::<f32>(lse)?);
        let n = b.dims.qkv_len();
        let like = &inputs[0];
        let (mut dq, mut dk, mut dv) =
            (alloc_like::<T>(like, n)?, alloc_like::<T>(like, n)?, alloc_like::<T>(like, n)?);
        if n > 0 && use_flash::<T>(b.dims) {
            flash::backward(
                &q,
                &k,
                &v,
                &o,
                &l,
                &gv,
                &flash_shape(b.dims, b.scale),
                FlashGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
            )
            .map_err(cuda_err("causal_attention backward"))?;
        } else if n > 0 {
            attention_backward(
                &q,
                &k,
                &v,
                &o,
                &l,
                &gv,
                &shape(b.dims, b.scale),
                AttentionGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
            )
            .map_err(cuda_err("causal_attention backward"))?;
        }
        let s = like.shape();
        Ok(vec![Tensor::from_gpu(dq, s), Tensor::from_gpu(dk, s), Tensor::from_gpu(dv, s)])
    }
}
