//! Flash attention (`kernels/cuda/flash_attention.*`) against a plain f64 softmax attention
//! written here, on a GPU.
//!
//! Every case draws random inputs (never zeros or ones) rounded to the storage type, runs the
//! forward and the backward with every output poisoned beforehand (all bytes 0xFF: NaN in f32,
//! bf16 and f16, so an element never written fails), and compares the output, the log-sum-exp
//! and dQ, dK, dV with the f64 reference computed on the same rounded inputs. Sequence lengths
//! cover 1, lengths that are not multiples of the 64-row tiles, and up to 4096; head dimensions
//! 64 and 128; causal and not; several batch × heads.
//!
//! The Hopper kernels (`kernels/cuda/flash_attention_hopper.*`, forced with
//! [`ForwardKernel::Hopper`] and [`BackwardKernel::Hopper`]) are checked the same way, on
//! sequence lengths from 1 to 4096 that are mostly not multiples of their tiles; the portable
//! backward is also run on the Hopper forward's outputs. Those tests need a compute-capability-9.0
//! device and print why they skip on any other.
//!
//! The strided entry points (`forward_strided`, `backward_strided`) are checked on the layout
//! the engine gives a PolyLM block: q, k, v read in place from one fused projection, the output
//! written token-major, the gradients written into one packed buffer.
//!
//! Without a GPU each GPU test prints `skipped: no GPU` and passes; the shape validation test
//! needs no device and always runs.

mod common;

use common::gpu::{device, poisoned, random_on, read};

use std::sync::Arc;

use half::{bf16, f16};
use polylm_engine::Rng;
use polylm_kernels::cast::Scalar;
use polylm_kernels::cuda::flash_attention::{
    self, BackwardInputs, BackwardKernel, FlashGrads, FlashShape, ForwardKernel,
};
use polylm_kernels::cuda::flash_attention_hopper;
use polylm_kernels::cuda::flash_layout::{GradTargets, HeadLayout, HeadView, HeadViewMut, PackedGrads};
use polylm_kernels::cuda::{CudaDevice, CudaError, FloatElem};
use rayon::prelude::*;

/// A storage type under test with its tolerances: element-wise `|got − want| ≤ ATOL·max|want| +
/// RTOL·|want|`, and the relative Frobenius error of the whole tensor at most `FRO`.
trait Precision: FloatElem + Scalar {
    const RTOL: f64;
    const ATOL: f64;
    const FRO: f64;
}
impl Precision for bf16 {
    const RTOL: f64 = 2e-2;
    const ATOL: f64 = 2e-2;
    const FRO: f64 = 1e-2;
}
impl Precision for f16 {
    const RTOL: f64 = 5e-3;
    const ATOL: f64 = 5e-3;
    const FRO: f64 = 2.5e-3;
}

#[track_caller]
fn check(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64, fro: f64) {
    check_cancelling(what, got, want, want, rtol, atol, fro);
}

/// The share of the magnitude of the terms a gradient sums that its tolerances never fall
/// below: well above f32 rounding of those terms (about 1e-7 of them), far below any
/// indexing or masking error (of the order of the terms themselves).
const CANCELLATION_FLOOR: f64 = 1e-3;

/// [`check`] for a value summed from terms that may cancel (dQ and dK: at one position,
/// `dP − rowsum(dO∘O)` is exactly zero, and the kernels' f32 rounding of the two sides,
/// some 1e-8, is all they hold): its tolerances are scaled by at least
/// [`CANCELLATION_FLOOR`] times `terms`, the summed magnitudes of those terms.
#[track_caller]
fn check_cancelling(what: &str, got: &[f64], want: &[f64], terms: &[f64], rtol: f64, atol: f64, fro: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let l2 = |x: &[f64]| x.iter().map(|w| w * w).sum::<f64>().sqrt();
    let scale = common::max_abs(want).max(CANCELLATION_FLOOR * common::max_abs(terms)).max(1e-6);
    common::assert_close(what, got, want, rtol, atol * scale);
    let err: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
    let norm = l2(want).max(CANCELLATION_FLOOR * l2(terms)).max(1e-12);
    assert!(err / norm <= fro, "{what}: relative Frobenius error {:.3e} exceeds {fro:e}", err / norm);
}

/// Everything the reference produces.
struct Reference {
    out: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    /// The summed magnitudes of the terms of `dq` and `dk` ([`check_cancelling`]).
    dq_terms: Vec<f64>,
    dk_terms: Vec<f64>,
}

/// Softmax attention in f64 straight from the definition, one `[seq, d]` head at a time (heads
/// in parallel): `s = scale·q·kᵀ` with keys after the query masked when causal, `p = softmax(s)`,
/// `out = p·v`, `lse = log Σ exp(s)`; backward (skipped, gradients left zero, unless `grads`)
/// `dp = dO·vᵀ`, `ds = p∘(dp − rowsum(dO∘out))`, `dq = scale·ds·k`, `dk = scale·dsᵀ·q`, `dv = pᵀ·dO`.
#[allow(clippy::too_many_arguments)]
fn reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    bh: usize,
    t: usize,
    d: usize,
    causal: bool,
    scale: f64,
    grads: bool,
) -> Reference {
    let heads: Vec<[Vec<f64>; 7]> = (0..bh)
        .into_par_iter()
        .map(|h| {
            let at = |x: &[f64], i: usize| -> Vec<f64> { x[(h * t + i) * d..(h * t + i + 1) * d].to_vec() };
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let (qs, ks, vs, gs): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = (
                (0..t).map(|i| at(q, i)).collect(),
                (0..t).map(|i| at(k, i)).collect(),
                (0..t).map(|i| at(v, i)).collect(),
                (0..t).map(|i| at(dout, i)).collect(),
            );
            let (mut out, mut lse) = (vec![0.0; t * d], vec![0.0; t]);
            let (mut dq, mut dk, mut dv) = (vec![0.0; t * d], vec![0.0; t * d], vec![0.0; t * d]);
            let (mut dq_terms, mut dk_terms) = (vec![0.0; t * d], vec![0.0; t * d]);
            for i in 0..t {
                let last = if causal { i } else { t - 1 };
                let s: Vec<f64> = (0..=last).map(|j| dot(&qs[i], &ks[j]) * scale).collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l = mx + s.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                lse[i] = l;
                let p: Vec<f64> = s.iter().map(|x| (x - l).exp()).collect();
                let o = &mut out[i * d..(i + 1) * d];
                for (j, pj) in p.iter().enumerate() {
                    for (oc, vc) in o.iter_mut().zip(&vs[j]) {
                        *oc += pj * vc;
                    }
                }
                if !grads {
                    continue;
                }
                let di = dot(&gs[i], o);
                for (j, pj) in p.iter().enumerate() {
                    let dp = dot(&gs[i], &vs[j]);
                    let ds = pj * (dp - di) * scale;
                    let ds_terms = pj * (dp.abs() + di.abs()) * scale;
                    for c in 0..d {
                        dq[i * d + c] += ds * ks[j][c];
                        dk[j * d + c] += ds * qs[i][c];
                        dv[j * d + c] += pj * gs[i][c];
                        dq_terms[i * d + c] += ds_terms * ks[j][c].abs();
                        dk_terms[j * d + c] += ds_terms * qs[i][c].abs();
                    }
                }
            }
            [out, lse, dq, dk, dv, dq_terms, dk_terms]
        })
        .collect();
    let mut r = Reference {
        out: vec![],
        lse: vec![],
        dq: vec![],
        dk: vec![],
        dv: vec![],
        dq_terms: vec![],
        dk_terms: vec![],
    };
    for [out, lse, dq, dk, dv, dq_terms, dk_terms] in heads {
        r.out.extend(out);
        r.lse.extend(lse);
        r.dq.extend(dq);
        r.dk.extend(dk);
        r.dv.extend(dv);
        r.dq_terms.extend(dq_terms);
        r.dk_terms.extend(dk_terms);
    }
    r
}

/// One forward + backward against the reference; `qk_scale` is the range of q and k (larger
/// values give peakier softmaxes).
fn case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64, shape: FlashShape, qk_scale: f64) {
    case_with::<T>(dev, seed, shape, qk_scale, ForwardKernel::Auto, Some(BackwardKernel::Auto));
}

/// [`case`] with the forward on `kernel`, and the (portable) backward only when `grads`.
fn case_with<T: Precision>(
    dev: &Arc<CudaDevice>,
    seed: u64,
    shape: FlashShape,
    qk_scale: f64,
    kernel: ForwardKernel,
    backward: Option<BackwardKernel>,
) {
    let mut rng = Rng::new(seed);
    let n = shape.qkv_len();
    let (q, qv) = random_on::<T>(dev, &mut rng, n, qk_scale);
    let (k, kv) = random_on::<T>(dev, &mut rng, n, qk_scale);
    let (v, vv) = random_on::<T>(dev, &mut rng, n, 1.0);
    let (dout, dov) = random_on::<T>(dev, &mut rng, n, 1.0);
    let mut out = poisoned::<T>(dev, n);
    let mut lse = poisoned::<f32>(dev, shape.lse_len());
    flash_attention::forward_with(kernel, &q, &k, &v, &shape, &mut out, &mut lse).expect("flash forward");
    let bh = shape.batch * shape.heads;
    let want = reference(
        &qv,
        &kv,
        &vv,
        &dov,
        bh,
        shape.seq,
        shape.head_dim,
        shape.causal,
        shape.scale as f64,
        backward.is_some(),
    );
    let tag = format!(
        "flash<{}> {kernel:?}/{backward:?} b{} h{} t{} d{} causal {} qk±{qk_scale}",
        T::NAME,
        shape.batch,
        shape.heads,
        shape.seq,
        shape.head_dim,
        shape.causal
    );
    let (rt, at, fro) = (T::RTOL, T::ATOL, T::FRO);
    check(&format!("{tag} out"), &read("out", &out), &want.out, rt, at, fro);
    // The log-sum-exp is f32 arithmetic on exact products of the rounded inputs.
    check(&format!("{tag} lse"), &read("lse", &lse), &want.lse, 1e-4, 1e-4, 1e-4);
    let Some(backward) = backward else {
        println!("ok {tag} (forward)");
        return;
    };
    let (mut dq, mut dk, mut dv) = (poisoned::<T>(dev, n), poisoned::<T>(dev, n), poisoned::<T>(dev, n));
    flash_attention::backward_with(
        backward,
        &q,
        &k,
        &v,
        &out,
        &lse,
        &dout,
        &shape,
        FlashGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
    )
    .expect("flash backward");
    check_cancelling(&format!("{tag} dq"), &read("dq", &dq), &want.dq, &want.dq_terms, rt, at, fro);
    check_cancelling(&format!("{tag} dk"), &read("dk", &dk), &want.dk, &want.dk_terms, rt, at, fro);
    check(&format!("{tag} dv"), &read("dv", &dv), &want.dv, rt, at, fro);
    println!("ok {tag}");
}

const SEQS: [usize; 7] = [1, 17, 64, 100, 255, 513, 1024];

#[test]
fn forward_and_backward_match_f64_head_dim_64() {
    let Some(dev) = device("flash head_dim 64") else { return };
    for (i, &seq) in SEQS.iter().enumerate() {
        for causal in [true, false] {
            let (batch, heads) = if seq <= 255 { (2, 3) } else { (1, 2) };
            let shape = FlashShape::new(batch, heads, seq, 64, causal);
            case::<bf16>(&dev, 1000 + 2 * i as u64 + causal as u64, shape, 1.5);
        }
    }
}

#[test]
fn forward_and_backward_match_f64_head_dim_128() {
    let Some(dev) = device("flash head_dim 128") else { return };
    for (i, &seq) in SEQS.iter().enumerate() {
        for causal in [true, false] {
            let (batch, heads) = if seq <= 255 { (2, 2) } else { (1, 2) };
            let shape = FlashShape::new(batch, heads, seq, 128, causal);
            case::<bf16>(&dev, 2000 + 2 * i as u64 + causal as u64, shape, 1.5);
        }
    }
}

#[test]
fn f16_matches_f64_on_ragged_lengths() {
    let Some(dev) = device("flash f16") else { return };
    for (i, &(seq, d, causal)) in
        [(1, 64, true), (17, 128, false), (100, 64, true), (255, 128, true), (513, 64, false)]
            .iter()
            .enumerate()
    {
        case::<f16>(&dev, 3000 + i as u64, FlashShape::new(2, 2, seq, d, causal), 1.5);
    }
}

#[test]
fn long_sequence_4096_matches_f64() {
    let Some(dev) = device("flash seq 4096") else { return };
    case::<bf16>(&dev, 4000, FlashShape::new(1, 2, 4096, 64, true), 1.5);
    case::<bf16>(&dev, 4001, FlashShape::new(1, 1, 4096, 64, false), 1.5);
}

#[test]
fn peaky_softmax_and_other_scales_match_f64() {
    // Large scores move the running maximum often: the online softmax's rescaling is exercised.
    let Some(dev) = device("flash peaky") else { return };
    case::<bf16>(&dev, 5000, FlashShape::new(1, 3, 300, 128, true), 4.0);
    case::<bf16>(&dev, 5001, FlashShape::new(2, 1, 200, 64, false), 4.0);
    let mut shape = FlashShape::new(1, 2, 150, 64, true);
    shape.scale = 0.3;
    case::<f16>(&dev, 5002, shape, 1.5);
}

#[test]
fn short_buffers_are_errors_not_launches() {
    let Some(dev) = device("flash errors") else { return };
    let shape = FlashShape::new(1, 2, 100, 64, true);
    let n = shape.qkv_len();
    let q = dev.alloc::<bf16>(n).expect("alloc");
    let short = dev.alloc::<bf16>(n - 1).expect("alloc");
    let mut out = dev.alloc::<bf16>(n).expect("alloc");
    let mut lse = dev.alloc::<f32>(shape.lse_len()).expect("alloc");
    let err = flash_attention::forward(&q, &short, &q, &shape, &mut out, &mut lse).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
    let mut short_lse = dev.alloc::<f32>(shape.lse_len() - 1).expect("alloc");
    let err = flash_attention::forward(&q, &q, &q, &shape, &mut out, &mut short_lse).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
    let (mut dq, mut dk) = (dev.alloc::<bf16>(n).expect("alloc"), dev.alloc::<bf16>(n).expect("alloc"));
    let mut dv_short = dev.alloc::<bf16>(n - 1).expect("alloc");
    let grads = FlashGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv_short };
    let err = flash_attention::backward(&q, &q, &q, &out, &lse, &q, &shape, grads).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
    let f = dev.alloc::<f32>(n).expect("alloc");
    let mut fo = dev.alloc::<f32>(n).expect("alloc");
    let err = flash_attention::forward(&f, &f, &f, &shape, &mut fo, &mut lse).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
}

/// The first device when it runs the Hopper kernel (compute capability 9.0), or `None` after
/// printing why `test` skips.
fn hopper_device(test: &str) -> Option<Arc<CudaDevice>> {
    let dev = device(test)?;
    if flash_attention_hopper::runs_on(&dev) {
        return Some(dev);
    }
    let arch = dev.arch();
    eprintln!(
        "skipped {test}: {} is sm_{}{}; the Hopper kernel needs sm_90",
        dev.name(),
        arch.major,
        arch.minor
    );
    None
}

/// Sequence lengths of the Hopper checks: 1, around and between its 128-row tiles, up to 4096.
const HOPPER_SEQS: [usize; 10] = [1, 17, 64, 127, 128, 129, 255, 383, 513, 1000];

#[test]
fn hopper_forward_matches_f64_bf16() {
    let Some(dev) = hopper_device("flash hopper bf16") else { return };
    for (i, &seq) in HOPPER_SEQS.iter().enumerate() {
        for d in [64, 128] {
            for causal in [true, false] {
                let (batch, heads) = if seq <= 255 { (2, 3) } else { (1, 2) };
                let shape = FlashShape::new(batch, heads, seq, d, causal);
                let seed = 6000 + 4 * i as u64 + 2 * (d == 128) as u64 + causal as u64;
                case_with::<bf16>(&dev, seed, shape, 1.5, ForwardKernel::Hopper, None);
            }
        }
    }
}

#[test]
fn hopper_forward_matches_f64_f16() {
    let Some(dev) = hopper_device("flash hopper f16") else { return };
    for (i, &seq) in HOPPER_SEQS.iter().enumerate() {
        for d in [64, 128] {
            let causal = i % 2 == 0;
            let shape = FlashShape::new(2, 2, seq, d, causal);
            case_with::<f16>(
                &dev,
                7000 + 2 * i as u64 + (d == 128) as u64,
                shape,
                1.5,
                ForwardKernel::Hopper,
                None,
            );
        }
    }
}

#[test]
fn hopper_forward_long_sequences_match_f64() {
    let Some(dev) = hopper_device("flash hopper long") else { return };
    for (i, &(seq, d, causal)) in
        [(2047, 128, true), (2049, 64, false), (4095, 64, true), (4096, 128, true), (4096, 128, false)]
            .iter()
            .enumerate()
    {
        let shape = FlashShape::new(1, 2, seq, d, causal);
        case_with::<bf16>(&dev, 8000 + i as u64, shape, 1.5, ForwardKernel::Hopper, None);
    }
    case_with::<f16>(&dev, 8100, FlashShape::new(1, 1, 3000, 128, true), 1.5, ForwardKernel::Hopper, None);
}

#[test]
fn hopper_forward_peaky_softmax_and_other_scales_match_f64() {
    let Some(dev) = hopper_device("flash hopper peaky") else { return };
    case_with::<bf16>(&dev, 9000, FlashShape::new(1, 3, 300, 128, true), 4.0, ForwardKernel::Hopper, None);
    case_with::<bf16>(&dev, 9001, FlashShape::new(2, 1, 700, 64, false), 4.0, ForwardKernel::Hopper, None);
    let mut shape = FlashShape::new(1, 2, 150, 64, true);
    shape.scale = 0.3;
    case_with::<f16>(&dev, 9002, shape, 1.5, ForwardKernel::Hopper, None);
}

#[test]
fn portable_backward_takes_the_hopper_forward() {
    // The backward has no Hopper kernel: it must accept the Hopper forward's output and lse.
    let Some(dev) = hopper_device("flash hopper + portable backward") else { return };
    for (i, &(seq, d, causal)) in [(200, 128, true), (513, 64, false), (1000, 128, true)].iter().enumerate() {
        case_with::<bf16>(
            &dev,
            9100 + i as u64,
            FlashShape::new(1, 2, seq, d, causal),
            1.5,
            ForwardKernel::Hopper,
            Some(BackwardKernel::Portable),
        );
    }
    let (shape, backward) = (FlashShape::new(2, 1, 300, 64, true), Some(BackwardKernel::Portable));
    case_with::<f16>(&dev, 9110, shape, 1.5, ForwardKernel::Hopper, backward);
}

#[test]
fn hopper_backward_matches_f64() {
    // The Hopper forward then the Hopper backward, on lengths around and between its 64-query
    // tiles and 128-key blocks, both head dimensions, causal and not.
    let Some(dev) = hopper_device("flash hopper backward") else { return };
    let hopper = Some(BackwardKernel::Hopper);
    for (i, &seq) in HOPPER_SEQS.iter().enumerate() {
        for d in [64, 128] {
            let causal = (i + d / 64) % 2 == 0;
            let (batch, heads) = if seq <= 255 { (2, 2) } else { (1, 2) };
            let shape = FlashShape::new(batch, heads, seq, d, causal);
            case_with::<bf16>(
                &dev,
                9200 + 2 * i as u64 + (d == 128) as u64,
                shape,
                1.5,
                ForwardKernel::Hopper,
                hopper,
            );
        }
    }
    for (i, &(seq, d, causal)) in [(100, 64, true), (300, 128, false), (2049, 128, true)].iter().enumerate() {
        let shape = FlashShape::new(1, 2, seq, d, causal);
        case_with::<f16>(&dev, 9300 + i as u64, shape, 1.5, ForwardKernel::Hopper, hopper);
    }
    case_with::<bf16>(&dev, 9310, FlashShape::new(1, 1, 4096, 128, true), 1.5, ForwardKernel::Hopper, hopper);
}

#[test]
fn hopper_errors_are_typed() {
    let Some(dev) = device("flash hopper errors") else { return };
    let shape = FlashShape::new(1, 2, 100, 64, true);
    let n = shape.qkv_len();
    let q = dev.alloc::<bf16>(n).expect("alloc");
    let mut out = dev.alloc::<bf16>(n).expect("alloc");
    let mut lse = dev.alloc::<f32>(shape.lse_len()).expect("alloc");
    if !flash_attention_hopper::runs_on(&dev) {
        // Forcing the Hopper kernel elsewhere is an argument error, not a failed launch.
        let err =
            flash_attention::forward_with(ForwardKernel::Hopper, &q, &q, &q, &shape, &mut out, &mut lse)
                .unwrap_err();
        assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
        return;
    }
    let hopper = ForwardKernel::Hopper;
    let short = dev.alloc::<bf16>(n - 1).expect("alloc");
    let err = flash_attention::forward_with(hopper, &q, &short, &q, &shape, &mut out, &mut lse).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
    let f = dev.alloc::<f32>(n).expect("alloc");
    let mut fo = dev.alloc::<f32>(n).expect("alloc");
    let err = flash_attention::forward_with(hopper, &f, &f, &f, &shape, &mut fo, &mut lse).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
}

#[test]
fn forcing_the_hopper_backward_elsewhere_is_an_error() {
    let Some(dev) = device("flash hopper backward errors") else { return };
    if flash_attention_hopper::runs_on(&dev) {
        println!("skipped: {} runs the Hopper kernel", dev.name());
        return;
    }
    let shape = FlashShape::new(1, 2, 100, 64, true);
    let n = shape.qkv_len();
    let q = dev.alloc::<bf16>(n).expect("alloc");
    let lse = dev.alloc::<f32>(shape.lse_len()).expect("alloc");
    let (mut dq, mut dk, mut dv) =
        (dev.alloc(n).expect("alloc"), dev.alloc(n).expect("alloc"), dev.alloc(n).expect("alloc"));
    let grads = FlashGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv };
    let err = flash_attention::backward_with(BackwardKernel::Hopper, &q, &q, &q, &q, &lse, &q, &shape, grads)
        .unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }), "{err}");
}

/// Element (b, h, t, c) of a `[batch, heads, seq, d]` operand at `l`, as a buffer index.
fn index(l: &HeadLayout, s: &FlashShape, row: usize, c: usize) -> usize {
    let (bh, t) = (row / s.seq, row % s.seq);
    l.offset + (bh / s.heads) * l.batch + (bh % s.heads) * l.head + t * l.row + c
}

/// The dense `[batch, heads, seq, d]` values of the operand at `l` in `buf`.
fn gather(buf: &[f64], l: &HeadLayout, s: &FlashShape) -> Vec<f64> {
    let rows = s.batch * s.heads * s.seq;
    (0..rows)
        .flat_map(|r| (0..s.head_dim).map(move |c| (r, c)))
        .map(|(r, c)| buf[index(l, s, r, c)])
        .collect()
}

/// The layout the engine uses for a PolyLM block: q, k, v read in place from one
/// `[batch, seq, 3, heads, d]` projection, the output and its gradient `[batch, seq, heads, d]`,
/// dQ, dK, dV written into one gradient laid out like the projection; every kernel against f64.
fn packed_case<T: Precision>(
    dev: &Arc<CudaDevice>,
    seed: u64,
    shape: FlashShape,
    fwd: ForwardKernel,
    bwd: BackwardKernel,
) {
    let mut rng = Rng::new(seed);
    let n = shape.qkv_len();
    let parts = [0, 1, 2].map(|i| HeadLayout::packed_qkv(&shape, i));
    let token_major = HeadLayout::token_major(&shape);
    let (qkv, qkv_host) = random_on::<T>(dev, &mut rng, 3 * n, 1.5);
    let (dout, dout_host) = random_on::<T>(dev, &mut rng, n, 1.0);
    let [q, k, v] = parts.map(|l| gather(&qkv_host, &l, &shape));
    let dov = gather(&dout_host, &token_major, &shape);
    let bh = shape.batch * shape.heads;
    let want =
        reference(&q, &k, &v, &dov, bh, shape.seq, shape.head_dim, shape.causal, shape.scale as f64, true);

    let mut out = poisoned::<T>(dev, n);
    let mut lse = poisoned::<f32>(dev, shape.lse_len());
    let view = |buf, layout| HeadView { buf, layout };
    let inputs = [view(&qkv, parts[0]), view(&qkv, parts[1]), view(&qkv, parts[2])];
    let out_view = HeadViewMut { buf: &mut out, layout: token_major };
    flash_attention::forward_strided(fwd, inputs, &shape, out_view, &mut lse).expect("strided forward");
    let mut grads = poisoned::<T>(dev, 3 * n);
    let reads = BackwardInputs {
        q: inputs[0],
        k: inputs[1],
        v: inputs[2],
        out: view(&out, token_major),
        dout: view(&dout, token_major),
    };
    let targets =
        GradTargets::Packed(PackedGrads { buf: &mut grads, dq: parts[0], dk: parts[1], dv: parts[2] });
    flash_attention::backward_strided(bwd, reads, &lse, &shape, targets).expect("strided backward");

    let tag = format!("flash<{}> packed {fwd:?}/{bwd:?} {shape:?}", T::NAME);
    let (rt, at, fro) = (T::RTOL, T::ATOL, T::FRO);
    // Both output buffers are wholly covered by their operands: `read` fails on any element
    // left poisoned.
    let (out_host, grads_host) = (read("out", &out), read("grads", &grads));
    check(&format!("{tag} out"), &gather(&out_host, &token_major, &shape), &want.out, rt, at, fro);
    check(&format!("{tag} lse"), &read("lse", &lse), &want.lse, 1e-4, 1e-4, 1e-4);
    for (what, l, w, terms) in [
        ("dq", &parts[0], &want.dq, &want.dq_terms),
        ("dk", &parts[1], &want.dk, &want.dk_terms),
        ("dv", &parts[2], &want.dv, &want.dv),
    ] {
        check_cancelling(&format!("{tag} {what}"), &gather(&grads_host, l, &shape), w, terms, rt, at, fro);
    }
    println!("ok {tag}");
}

/// Shapes of the packed-layout checks: several sequences and heads, ragged lengths, one
/// position, both head dimensions, causal and not.
const PACKED_SHAPES: [(usize, usize, usize, usize, bool); 4] =
    [(2, 3, 100, 64, true), (2, 2, 257, 128, true), (1, 4, 64, 64, false), (3, 1, 1, 128, true)];

#[test]
fn packed_qkv_operands_are_read_and_written_in_place() {
    let Some(dev) = device("flash packed operands") else { return };
    for (i, &(batch, heads, seq, d, causal)) in PACKED_SHAPES.iter().enumerate() {
        let shape = FlashShape::new(batch, heads, seq, d, causal);
        let seed = 9500 + 2 * i as u64;
        packed_case::<bf16>(&dev, seed, shape, ForwardKernel::Portable, BackwardKernel::Portable);
        packed_case::<f16>(&dev, seed + 1, shape, ForwardKernel::Portable, BackwardKernel::Portable);
    }
}

#[test]
fn hopper_packed_qkv_operands_are_read_and_written_in_place() {
    let Some(dev) = hopper_device("flash hopper packed operands") else { return };
    for (i, &(batch, heads, seq, d, causal)) in PACKED_SHAPES.iter().enumerate() {
        let shape = FlashShape::new(batch, heads, seq, d, causal);
        packed_case::<bf16>(&dev, 9600 + i as u64, shape, ForwardKernel::Hopper, BackwardKernel::Hopper);
    }
}

#[test]
fn overlapping_gradients_and_misaligned_operands_are_errors() {
    let Some(dev) = device("flash layout errors") else { return };
    let shape = FlashShape::new(2, 2, 50, 64, true);
    let n = shape.qkv_len();
    let dense = HeadLayout::dense(&shape);
    let (buf, lse) = (poisoned::<bf16>(&dev, 3 * n), poisoned::<f32>(&dev, shape.lse_len()));
    let v = HeadView { buf: &buf, layout: dense };
    let reads = BackwardInputs { q: v, k: v, v, out: v, dout: v };
    let mut grads = poisoned::<bf16>(&dev, 3 * n);
    let shifted = HeadLayout { offset: n - 8, ..dense };
    let overlapping = GradTargets::Packed(PackedGrads {
        buf: &mut grads,
        dq: dense,
        dk: shifted,
        dv: HeadLayout { offset: 2 * n, ..dense },
    });
    let err = flash_attention::backward_strided(BackwardKernel::Portable, reads, &lse, &shape, overlapping)
        .unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }) && err.to_string().contains("overlap"), "{err}");
    let mut out = poisoned::<bf16>(&dev, n);
    let mut lse = poisoned::<f32>(&dev, shape.lse_len());
    let misaligned = HeadView { buf: &buf, layout: HeadLayout { offset: 4, ..dense } };
    let out_view = HeadViewMut { buf: &mut out, layout: dense };
    let err = flash_attention::forward_strided(
        ForwardKernel::Portable,
        [v, misaligned, v],
        &shape,
        out_view,
        &mut lse,
    )
    .unwrap_err();
    assert!(err.to_string().contains("offset 4"), "{err}");
}

#[test]
fn unsupported_shapes_are_rejected_without_a_device() {
    let ok = FlashShape::new(4, 16, 2048, 128, true);
    ok.validate::<bf16>("test").expect("bf16 d128");
    ok.validate::<f16>("test").expect("f16 d128");
    FlashShape::new(1, 1, 1, 64, false).validate::<bf16>("test").expect("seq 1");
    // Rows (batch × heads × seq) up to a tile short of 2³¹: the kernels count them, a tile past
    // the last row included, in 32-bit integers.
    let most = (i32::MAX as usize - flash_attention::BLOCK_M) / 2;
    FlashShape::new(2, 1, most, 64, true).validate::<bf16>("test").expect("the most rows");
    assert!(FlashShape::new(2, 1, most + 1, 64, true).validate::<bf16>("test").is_err(), "a row too many");
    assert!(flash_attention::supports::<bf16>(64) && flash_attention::supports::<f16>(128));
    assert!(!flash_attention::supports::<f32>(64) && !flash_attention::supports::<bf16>(96));
    let bad = [
        ("f32", FlashShape::new(1, 1, 8, 64, true), true),
        ("head_dim 96", FlashShape::new(1, 1, 8, 96, true), false),
        ("head_dim 0", FlashShape::new(1, 1, 8, 0, true), false),
        ("seq 0", FlashShape::new(1, 1, 0, 64, true), false),
        ("heads 0", FlashShape::new(1, 0, 8, 64, true), false),
        ("rows over i32", FlashShape::new(1 << 12, 1 << 10, 1 << 10, 64, true), false),
        ("scale nan", FlashShape { scale: f32::NAN, ..FlashShape::new(1, 1, 8, 64, true) }, false),
    ];
    for (what, shape, as_f32) in bad {
        let err = if as_f32 { shape.validate::<f32>("test") } else { shape.validate::<bf16>("test") };
        match err {
            Err(CudaError::Invalid { message, .. }) => println!("{what}: {message}"),
            other => panic!("{what}: expected an Invalid error, got {other:?}"),
        }
    }
    let s = FlashShape::new(16384 / 2048, 16, 2048, 128, true);
    let full = 4.0 * 128.0 * 2048f64 * 2048.0 * 128.0;
    assert!((s.forward_flops() - full / 2.0).abs() < 1.0);
    // The Hopper kernel's shared memory fits sm_90's 227 KiB at both head dimensions.
    for d in flash_attention::HEAD_DIMS {
        assert!(flash_attention_hopper::shared_bytes(d) <= 227 * 1024, "d{d}");
    }
}

/// The benchmark's probe (`set_backward_probe`): with it on, the Hopper backward skips dQ (it
/// comes out exactly zero) and dK, dV are bit for bit those of the full pass; off again, dQ is
/// back. The portable backward ignores it. The probe is the calling thread's only.
#[test]
fn the_backward_probe_skips_dq_alone() {
    let Some(dev) = device("flash backward probe") else { return };
    let shape = FlashShape::new(2, 2, 200, 128, true);
    let n = shape.qkv_len();
    let mut rng = Rng::new(77);
    let (q, _) = random_on::<bf16>(&dev, &mut rng, n, 1.5);
    let (k, _) = random_on::<bf16>(&dev, &mut rng, n, 1.5);
    let (v, _) = random_on::<bf16>(&dev, &mut rng, n, 1.0);
    let (dout, _) = random_on::<bf16>(&dev, &mut rng, n, 1.0);
    let mut out = poisoned::<bf16>(&dev, n);
    let mut lse = poisoned::<f32>(&dev, shape.lse_len());
    flash_attention::forward_with(ForwardKernel::Portable, &q, &k, &v, &shape, &mut out, &mut lse)
        .expect("forward");
    let mut kernels = vec![(BackwardKernel::Portable, false)];
    if flash_attention_hopper::runs_on(&dev) {
        kernels.push((BackwardKernel::Hopper, true));
    }
    for (kernel, probed_kernel) in kernels {
        let run = |probe: bool| {
            flash_attention::set_backward_probe(probe);
            let (mut dq, mut dk, mut dv) =
                (poisoned::<bf16>(&dev, n), poisoned::<bf16>(&dev, n), poisoned::<bf16>(&dev, n));
            let grads = FlashGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv };
            let done = flash_attention::backward_with(kernel, &q, &k, &v, &out, &lse, &dout, &shape, grads);
            flash_attention::set_backward_probe(false);
            done.expect("backward");
            (read("dq", &dq), read("dk", &dk), read("dv", &dv))
        };
        let (dq, dk, dv) = run(false);
        let (probed_dq, probed_dk, probed_dv) = run(true);
        assert!(dq.iter().any(|&x| x != 0.0), "{kernel:?}: dQ is zero without the probe");
        if probed_kernel {
            assert!(probed_dq.iter().all(|&x| x == 0.0), "{kernel:?}: dQ was accumulated under the probe");
        } else {
            let scale = common::max_abs(&dq);
            common::assert_close(
                &format!("{kernel:?} dQ under the probe"),
                &probed_dq,
                &dq,
                1e-2,
                1e-3 * scale,
            );
        }
        assert!(probed_dk == dk && probed_dv == dv, "{kernel:?}: the probe changed dK or dV");
        // dQ's atomics add in no fixed order: the same values up to f32 rounding.
        let scale = common::max_abs(&dq);
        common::assert_close(
            &format!("{kernel:?} dQ after the probe"),
            &run(false).0,
            &dq,
            1e-2,
            1e-3 * scale,
        );
    }
}
