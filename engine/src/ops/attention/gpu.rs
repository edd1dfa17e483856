//! The GPU paths of causal attention: the simple kernel on dense copies, or flash attention for
//! bf16/f16 with head dimension 64 or 128 (the default; `POLYLM_GPU_ATTENTION=simple` keeps the
//! simple kernel; the flash kernels passed their tests on an H200, see docs/gpu-results.md).
//!
//! Flash attention reads its operands where they lie: `q`, `k`, `v`, the saved output and the
//! output gradient are passed at their own strides whenever the kernels can take them (16-byte
//! aligned rows, `head_dim` contiguous, the axes before the heads mergeable into one batch
//! axis), and copied only otherwise. A `[..., heads, seq, head_dim]` output is stored as
//! `[..., seq, heads, head_dim]` and returned as a permuted view, so that the model's
//! transpose back to `[..., seq, heads·head_dim]` is free; the packed op's gradient takes the
//! strides of its input, so a fused QKV projection's `[batch, seq, 3, heads, head_dim]` output
//! is read in place and its gradient comes back in the same order.

use std::sync::OnceLock;

use polylm_kernels::attention::AttentionDims;
use polylm_kernels::cuda::attention::{
    attention_backward, attention_forward, AttentionGrads, AttentionShape,
};
use polylm_kernels::cuda::flash_attention::{
    self as flash, BackwardInputs, BackwardKernel, FlashShape, ForwardKernel,
};
use polylm_kernels::cuda::flash_layout::{GradTargets, HeadLayout, HeadView, HeadViewMut, PackedGrads};
use polylm_kernels::cuda::DeviceBuf;

use super::{packed_part as part, AttentionBackward};
use crate::cuda::{alloc_like, cuda_err, dense, Dense, GpuElem};
use crate::layout::{contiguous_strides, Layout};
use crate::{Result, Tensor};

fn simple_shape(dims: AttentionDims, scale: f64) -> AttentionShape {
    AttentionShape {
        heads: dims.heads,
        seq: dims.seq,
        head_dim: dims.head_dim,
        causal: true,
        scale: scale as f32,
    }
}

/// Whether `T` at this head dimension runs on the flash kernels.
pub(super) fn use_flash<T: GpuElem>(dims: AttentionDims) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    dims.qkv_len() > 0
        && *ON.get_or_init(|| std::env::var("POLYLM_GPU_ATTENTION").map_or(true, |v| v != "simple"))
        && flash::supports::<T>(dims.head_dim)
}

/// The flash shape of `[..., heads, seq, head_dim]` operands: the axes before the heads form
/// the batch.
fn flash_shape(shape: &[usize], scale: f64) -> FlashShape {
    let r = shape.len();
    let heads = if r >= 3 { shape[r - 3] } else { 1 };
    let batch = shape[..r.saturating_sub(3)].iter().product();
    FlashShape { batch, heads, seq: shape[r - 2], head_dim: shape[r - 1], causal: true, scale: scale as f32 }
}

/// `l` as a flash operand of shape `s` (`[..., heads, seq, head_dim]`), if its `head_dim` axis
/// is contiguous and the axes before the heads merge into one batch axis. Strides of axes of
/// one element do not matter and are given values the kernels accept.
fn head_layout(l: &Layout, s: &FlashShape) -> Option<HeadLayout> {
    let (shape, strides, r) = (l.shape(), l.strides(), l.rank());
    if r < 2 || (shape[r - 1] > 1 && strides[r - 1] != 1) {
        return None;
    }
    let row = if shape[r - 2] > 1 { strides[r - 2] } else { s.head_dim };
    let head = if r >= 3 && shape[r - 3] > 1 { strides[r - 3] } else { 0 };
    // The batch axes, innermost first: each must step over exactly the ones inside it.
    let mut batch = None::<(usize, usize)>; // (stride of the merged axis, elements merged)
    for axis in (0..r.saturating_sub(3)).rev().filter(|&a| shape[a] > 1) {
        batch = match batch {
            None => Some((strides[axis], shape[axis])),
            Some((stride, n)) if strides[axis] == stride * n => Some((stride, n * shape[axis])),
            Some(_) => return None,
        };
    }
    Some(HeadLayout { offset: l.offset(), batch: batch.map_or(0, |(stride, _)| stride), head, row })
}

/// A flash operand: the tensor's own buffer at its strides when the kernels can read it there,
/// else a dense copy.
enum FlashInput<'a, T: GpuElem> {
    InPlace(&'a DeviceBuf<T>, HeadLayout),
    Copied(Dense<'a, T>),
}

impl<'a, T: GpuElem> FlashInput<'a, T> {
    fn new(t: &'a Tensor, s: &FlashShape) -> Result<Self> {
        let buf = t.gpu_buf::<T>()?;
        if let Some(l) = head_layout(t.layout(), s) {
            if l.check::<T>("causal_attention", "input", buf.len(), s, false).is_ok() {
                return Ok(FlashInput::InPlace(buf, l));
            }
        }
        Ok(FlashInput::Copied(dense::<T>(t)?))
    }

    fn view(&self, s: &FlashShape) -> HeadView<'_, T> {
        match self {
            FlashInput::InPlace(buf, layout) => HeadView { buf, layout: *layout },
            FlashInput::Copied(d) => HeadView::dense(d, s),
        }
    }
}

/// The layout flash attention writes a `[..., heads, seq, head_dim]` output in: stored as
/// `[..., seq, heads, head_dim]` (what the model reshapes to `[..., seq, heads·head_dim]`),
/// as the operand layout and as the tensor's view of it.
fn token_major(shape: &[usize], s: &FlashShape) -> (HeadLayout, Layout) {
    let r = shape.len();
    if r < 3 {
        return (HeadLayout::dense(s), Layout::contiguous(shape));
    }
    // The batch axes keep their row-major strides (the last three axes hold seq·heads·head_dim
    // elements in either order); heads, seq and head_dim are reordered.
    let mut strides = contiguous_strides(shape);
    strides[r - 3..].copy_from_slice(&[s.head_dim, s.heads * s.head_dim, 1]);
    (HeadLayout::token_major(s), Layout::new(shape.to_vec(), strides, 0))
}

pub(super) fn forward<T: GpuElem>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: AttentionDims,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let lse_len = dims.lse_len();
    let mut lse = q.gpu_buf::<T>()?.device().alloc::<f32>(lse_len).map_err(cuda_err("causal_attention"))?;
    if use_flash::<T>(dims) {
        let s = flash_shape(q.shape(), scale);
        let (qi, ki, vi) = (FlashInput::new(q, &s)?, FlashInput::new(k, &s)?, FlashInput::new(v, &s)?);
        let (out_layout, view) = token_major(q.shape(), &s);
        let mut out = alloc_like::<T>(q, dims.qkv_len())?;
        flash::forward_strided(
            ForwardKernel::Auto,
            [qi.view(&s), ki.view(&s), vi.view(&s)],
            &s,
            HeadViewMut { buf: &mut out, layout: out_layout },
            &mut lse,
        )
        .map_err(cuda_err("causal_attention"))?;
        let out = Tensor::from_gpu(out, &[dims.qkv_len()]).with_layout(view);
        return Ok((out, Tensor::from_gpu(lse, &[lse_len])));
    }
    let (qv, kv, vv) = (dense::<T>(q)?, dense::<T>(k)?, dense::<T>(v)?);
    let mut out = alloc_like::<T>(q, dims.qkv_len())?;
    if dims.qkv_len() > 0 {
        attention_forward(&qv, &kv, &vv, &simple_shape(dims, scale), &mut out, &mut lse)
            .map_err(cuda_err("causal_attention"))?;
    }
    Ok((Tensor::from_gpu(out, q.shape()), Tensor::from_gpu(lse, &[lse_len])))
}

/// What the flash backward reads, each in place or copied.
struct FlashBackwardInputs<'a, T: GpuElem> {
    q: FlashInput<'a, T>,
    k: FlashInput<'a, T>,
    v: FlashInput<'a, T>,
    out: FlashInput<'a, T>,
    dout: FlashInput<'a, T>,
}

impl<'a, T: GpuElem> FlashBackwardInputs<'a, T> {
    fn new(
        b: &'a AttentionBackward,
        g: &'a Tensor,
        [q, k, v]: [&'a Tensor; 3],
        s: &FlashShape,
    ) -> Result<Self> {
        Ok(FlashBackwardInputs {
            q: FlashInput::new(q, s)?,
            k: FlashInput::new(k, s)?,
            v: FlashInput::new(v, s)?,
            out: FlashInput::new(&b.output, s)?,
            dout: FlashInput::new(g, s)?,
        })
    }

    fn views(&self, s: &FlashShape) -> BackwardInputs<'_, T> {
        BackwardInputs {
            q: self.q.view(s),
            k: self.k.view(s),
            v: self.v.view(s),
            out: self.out.view(s),
            dout: self.dout.view(s),
        }
    }
}

pub(super) fn backward<T: GpuElem>(
    b: &AttentionBackward,
    lse: &Tensor,
    g: &Tensor,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>> {
    let n = b.dims.qkv_len();
    let like = &inputs[0];
    let (mut dq, mut dk, mut dv) =
        (alloc_like::<T>(like, n)?, alloc_like::<T>(like, n)?, alloc_like::<T>(like, n)?);
    let l = dense::<f32>(lse)?;
    if use_flash::<T>(b.dims) {
        let s = flash_shape(like.shape(), b.scale);
        let reads = FlashBackwardInputs::<T>::new(b, g, [&inputs[0], &inputs[1], &inputs[2]], &s)?;
        let grads = GradTargets::Separate {
            dq: HeadViewMut::dense(&mut dq, &s),
            dk: HeadViewMut::dense(&mut dk, &s),
            dv: HeadViewMut::dense(&mut dv, &s),
        };
        flash::backward_strided(BackwardKernel::Auto, reads.views(&s), &l, &s, grads)
            .map_err(cuda_err("causal_attention backward"))?;
    } else if n > 0 {
        let (q, k, v) = (dense::<T>(&inputs[0])?, dense::<T>(&inputs[1])?, dense::<T>(&inputs[2])?);
        let (o, gv) = (dense::<T>(&b.output)?, dense::<T>(g)?);
        let grads = AttentionGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv };
        attention_backward(&q, &k, &v, &o, &l, &gv, &simple_shape(b.dims, b.scale), grads)
            .map_err(cuda_err("causal_attention backward"))?;
    }
    let s = like.shape();
    Ok(vec![Tensor::from_gpu(dq, s), Tensor::from_gpu(dk, s), Tensor::from_gpu(dv, s)])
}

/// Whether `l` (offset 0) covers a dense block of its element count in some order of its axes:
/// a permutation of a contiguous layout.
fn is_permuted_dense(l: &Layout) -> bool {
    let mut axes: Vec<(usize, usize)> =
        l.shape().iter().zip(l.strides()).filter(|(&n, _)| n > 1).map(|(&n, &s)| (s, n)).collect();
    axes.sort_unstable();
    let mut expected = 1;
    for (stride, n) in axes {
        if stride != expected {
            return false;
        }
        expected *= n;
    }
    l.offset() == 0
}

/// The packed op's gradient on flash attention: dQ, dK and dV written straight into one
/// gradient of `qkv`'s shape, in `qkv`'s own order of axes when that is a permutation of a
/// dense layout the kernels can write (a fused projection's output), else row-major.
pub(super) fn backward_packed<T: GpuElem>(
    b: &AttentionBackward,
    lse: &Tensor,
    g: &Tensor,
    qkv: &Tensor,
    parts: [&Tensor; 3],
) -> Result<Tensor> {
    let s = flash_shape(&qkv.shape()[1..], b.scale);
    let numel = qkv.numel();
    let in_place = |l: &Layout| {
        let layouts = [0, 1, 2].map(|i| head_layout(&part(l, i), &s));
        match layouts {
            [Some(dq), Some(dk), Some(dv)] => Some([dq, dk, dv]),
            _ => None,
        }
    };
    let own = Layout::new(qkv.shape().to_vec(), qkv.layout().strides().to_vec(), 0);
    let fits = |parts: &[HeadLayout; 3]| {
        HeadLayout::check_packed::<T>("causal_attention_packed", parts, numel, &s).is_ok()
    };
    let (grad_layout, [dq, dk, dv]) = match in_place(&own) {
        Some(parts) if is_permuted_dense(qkv.layout()) && fits(&parts) => (own, parts),
        _ => {
            let row_major = Layout::contiguous(qkv.shape());
            let parts = in_place(&row_major).ok_or_else(|| crate::Error::InvalidArgument {
                op: "causal_attention_packed",
                reason: format!("{:?} has no [3, ..., seq, head_dim] layout (internal error)", qkv.shape()),
            })?;
            (row_major, parts)
        }
    };
    let mut buf = alloc_like::<T>(qkv, numel)?;
    let l = dense::<f32>(lse)?;
    let reads = FlashBackwardInputs::<T>::new(b, g, parts, &s)?;
    let grads = GradTargets::Packed(PackedGrads { buf: &mut buf, dq, dk, dv });
    flash::backward_strided(BackwardKernel::Auto, reads.views(&s), &l, &s, grads)
        .map_err(cuda_err("causal_attention_packed backward"))?;
    Ok(Tensor::from_gpu(buf, &[numel]).with_layout(grad_layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permuted(shape: &[usize], order: &[usize]) -> Layout {
        // The layout of a row-major `shape` tensor viewed with its axes in `order`.
        let strides = contiguous_strides(shape);
        Layout::new(order.iter().map(|&a| shape[a]).collect(), order.iter().map(|&a| strides[a]).collect(), 0)
    }

    #[test]
    fn a_fused_projection_is_read_in_place() {
        // [B, T, 3, H, D] viewed as [3, B, H, T, D].
        let (b, t, h, d) = (2, 5, 3, 64);
        let qkv = permuted(&[b, t, 3, h, d], &[2, 0, 3, 1, 4]);
        assert!(is_permuted_dense(&qkv));
        let s = flash_shape(&qkv.shape()[1..], 0.125);
        assert_eq!((s.batch, s.heads, s.seq, s.head_dim), (b, h, t, d));
        for i in 0..3 {
            let l = head_layout(&part(&qkv, i), &s).expect("a head layout");
            assert_eq!(l, HeadLayout { offset: i * h * d, batch: t * 3 * h * d, head: d, row: 3 * h * d });
        }
    }

    #[test]
    fn batch_axes_merge_only_when_they_nest() {
        let s = flash_shape(&[2, 3, 4, 7, 64], 1.0);
        assert_eq!((s.batch, s.heads), (6, 4));
        let dense = Layout::contiguous(&[2, 3, 4, 7, 64]);
        assert_eq!(head_layout(&dense, &s), Some(HeadLayout::dense(&s)));
        // Swapping the two batch axes breaks the nesting.
        let swapped = permuted(&[3, 2, 4, 7, 64], &[1, 0, 2, 3, 4]);
        assert_eq!(head_layout(&swapped, &s), None);
        // head_dim not contiguous.
        let transposed = permuted(&[2, 3, 4, 64, 7], &[0, 1, 2, 4, 3]);
        assert_eq!(head_layout(&transposed, &s), None);
    }

    #[test]
    fn the_output_is_stored_token_major() {
        let shape = [2, 3, 5, 64];
        let s = flash_shape(&shape, 1.0);
        let (operand, view) = token_major(&shape, &s);
        assert_eq!(operand, HeadLayout { offset: 0, batch: 5 * 3 * 64, head: 64, row: 3 * 64 });
        assert_eq!(view.strides(), &[5 * 3 * 64, 64, 3 * 64, 1]);
        // The model's permute back to [B, T, H, D] is contiguous.
        let back = Layout::new(
            vec![2, 5, 3, 64],
            vec![view.strides()[0], view.strides()[2], view.strides()[1], 1],
            0,
        );
        assert!(back.is_contiguous());
        assert!(!is_permuted_dense(&Layout::new(vec![2, 3], vec![3, 1], 1)), "an offset");
        assert!(!is_permuted_dense(&Layout::new(vec![2, 3], vec![4, 1], 0)), "a gap");
    }
}
