//! Causal scaled-dot-product attention as one fused op (the CPU twin of flash attention):
//! no T×T matrix is ever stored; the backward pass recomputes probabilities from the saved
//! per-row log-sum-exp.

use polylm_kernels::attention::{self, AttentionDims};

use crate::autograd::BackwardOp;
use crate::dtype::{CpuFloat, SavedValues};
use crate::{Error, Result, Tensor};

use super::{check_same, with_compute_type};
use crate::layout::Layout;

mod gpu;

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

/// The backward of [`Tensor::causal_attention_packed`]: on the flash kernels, dQ, dK and dV
/// written straight into one gradient laid out like the input; elsewhere that of attention on
/// the three slices, concatenated into one `[3, ...]` gradient (one copy, where three separate
/// slices would each be padded with zeros to the whole and then added).
struct PackedAttentionBackward(AttentionBackward);

impl BackwardOp for PackedAttentionBackward {
    fn name(&self) -> &'static str {
        "causal_attention_packed"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let parts = unpack(&inputs[0])?;
        if let Some(lse) = self.0.lse.gpu() {
            let [q, k, v] = &parts;
            let flash = crate::cuda::with_gpu_type!(g.dtype(), T => {
                if gpu::use_flash::<T>(self.0.dims) {
                    gpu::backward_packed::<T>(&self.0, lse, g, &inputs[0], [q, k, v]).map(Some)
                } else {
                    Ok(None)
                }
            })?;
            if let Some(grad) = flash {
                return Ok(vec![Some(grad)]);
            }
        }
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

/// Part `i` of a packed `[3, ...]` layout: the layout of `[...]` at index `i` of axis 0.
fn packed_part(l: &Layout, i: usize) -> Layout {
    Layout::new(l.shape()[1..].to_vec(), l.strides()[1..].to_vec(), l.offset() + i * l.strides()[0])
}

/// The slices q, k, v of a packed `[3, ...]` tensor (views at any strides, outside the graph).
fn unpack(qkv: &Tensor) -> Result<[Tensor; 3]> {
    if qkv.rank() < 3 || qkv.shape()[0] != 3 {
        return Err(Error::BadShape {
            op: "causal_attention_packed",
            shape: qkv.shape().to_vec(),
            reason: "needs [3, ..., seq, head_dim]: q, k and v stacked on the first axis".into(),
        });
    }
    let whole = qkv.detach();
    Ok([0, 1, 2].map(|i| whole.with_layout(packed_part(qkv.layout(), i))))
}

impl Tensor {
    /// Causal attention `softmax(q·kᵀ/√d + causal mask)·v` over `[..., seq, head_dim]`
    /// tensors (typically `[batch, heads, seq, head_dim]`); all three shapes must be equal.
    pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (out, back) = attend(q, k, v)?;
        Ok(Tensor::from_op(out, back, vec![q.clone(), k.clone(), v.clone()]))
    }

    /// [`Tensor::causal_attention`] of q, k and v stacked as `qkv: [3, ..., seq, head_dim]`
    /// (a fused QKV projection's output, at any strides: a permuted view of a
    /// `[batch, seq, 3, heads, head_dim]` projection is read in place on the flash kernels): the
    /// same values, with one gradient for `qkv`, written in place by the flash kernels (in
    /// `qkv`'s own order of axes) or assembled by a single concatenation.
    pub fn causal_attention_packed(qkv: &Tensor) -> Result<Tensor> {
        let [q, k, v] = unpack(qkv)?;
        let (out, back) = attend(&q, &k, &v)?;
        Ok(Tensor::from_op(out, PackedAttentionBackward(back), vec![qkv.clone()]))
    }
}
