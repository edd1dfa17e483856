//! Every CUDA kernel against the CPU path, on a GPU.
//!
//! Each test draws random ragged shapes and values (never zeros or ones), runs the kernel in
//! f32, bf16 and f16 with its outputs poisoned beforehand (every byte 0xFF, a NaN in each
//! float type, so an element the kernel never wrote fails the finiteness check), and compares
//! with the CPU kernels run in f64 on the same (rounded) inputs, with the tolerance of the
//! storage precision. Without a GPU every test prints that it skipped and passes.
//!
//! On the GPU machine these run from `scripts/gpu-check.sh`.

mod common;

use common::gpu::{device, poisoned, random_on, read};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{LaunchConfig, PushKernelArg};

use common::assert_close;
use half::{bf16, f16};
use polylm_engine::Rng;
use polylm_kernels::attention::{causal_attention_backward, causal_attention_forward, AttentionDims};
use polylm_kernels::cast::Scalar;
use polylm_kernels::cuda::attention::{
    attention_backward, attention_forward, AttentionGrads, AttentionShape,
};
use polylm_kernels::cuda::cross_entropy::{
    cross_entropy_in_place_with, cross_entropy_with, CrossEntropyKernel, CrossEntropyOutputs, GradScale,
};
use polylm_kernels::cuda::elementwise::{self, BinaryOp, DeviceStrided, UnaryOp};
use polylm_kernels::cuda::embedding::{embedding_backward, embedding_forward};
use polylm_kernels::cuda::gelu::{bias_gelu_backward, bias_gelu_forward};
use polylm_kernels::cuda::layernorm::{
    layernorm_backward_with, layernorm_forward_with, LayerNormGrads, LayerNormKernel, ResidualAdd,
};
use polylm_kernels::cuda::matmul::{gemm, GemmDims, MatView};
use polylm_kernels::cuda::nvrtc::{compile, nvrtc_available, Arch, CompileOptions};
use polylm_kernels::cuda::optim::{adamw_step, global_norm, AdamWStep, AdamWTensor};
use polylm_kernels::cuda::softmax::{softmax_backward, softmax_forward};
use polylm_kernels::cuda::source::KernelSource;
use polylm_kernels::cuda::{CudaDevice, CudaError, DeviceBuf, FloatElem};

/// A storage type under test with its tolerances (relative, and absolute as a fraction of
/// the largest reference magnitude).
trait Precision: FloatElem + Scalar {
    const RTOL: f64;
    const ATOL: f64;
}
impl Precision for f32 {
    const RTOL: f64 = 2e-5;
    const ATOL: f64 = 2e-6;
}
impl Precision for bf16 {
    const RTOL: f64 = 1.6e-2;
    const ATOL: f64 = 8e-3;
}
impl Precision for f16 {
    const RTOL: f64 = 3e-3;
    const ATOL: f64 = 1.5e-3;
}

/// Compares with the tolerance of `T`, the absolute part scaled by the largest reference value
/// (at least 1e-6: every test's inputs are of order 1, so a result whose exact value is 0, such
/// as attention's dq over a single key, is compared at that scale, not at its rounding noise).
#[track_caller]
fn check<T: Precision>(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    assert_close(&format!("{what}<{}>", T::NAME), got, want, T::RTOL, T::ATOL * scale);
}

/// Random sizes in `lo..=hi`, biased towards sizes that are not multiples of anything.
fn size(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below((hi - lo + 1) as u64) as usize
}

fn for_each_precision(test: &str, f: &dyn Fn(&Arc<CudaDevice>, &str)) {
    let Some(dev) = device(test) else { return };
    for dtype in ["f32", "bf16", "f16"] {
        f(&dev, dtype);
    }
}

macro_rules! dispatch {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            "f32" => $f::<f32>($($arg),*),
            "bf16" => $f::<bf16>($($arg),*),
            _ => $f::<f16>($($arg),*),
        }
    };
}

// ---------------------------------------------------------------- elementwise

fn binary_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let (a0, a1, a2) = (size(&mut rng, 1, 9), size(&mut rng, 1, 40), size(&mut rng, 1, 300));
    let shape = [a0, a1, a2];
    let n = a0 * a1 * a2;
    // `a` is stored transposed in its last two axes; `b` broadcasts over axes 0 and 2.
    let (a, av) = random_on::<T>(dev, &mut rng, n, 2.0);
    let (b, bv) = random_on::<T>(dev, &mut rng, a1, 2.0);
    let a_strides = [a1 * a2, 1, a1];
    let b_strides = [0, 1, 0];
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        let mut out = poisoned::<T>(dev, n);
        elementwise::binary(
            op,
            &shape,
            DeviceStrided { buf: &a, offset: 0, strides: &a_strides },
            DeviceStrided { buf: &b, offset: 0, strides: &b_strides },
            &mut out,
        )
        .expect("binary");
        let mut want = Vec::with_capacity(n);
        for i in 0..a0 {
            for j in 0..a1 {
                for k in 0..a2 {
                    let x = av[i * a_strides[0] + j + k * a1];
                    let y = bv[j];
                    let r = match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        BinaryOp::Div => x / y,
                    };
                    want.push(T::round_from(r).widen());
                }
            }
        }
        // Division by a value near zero is ill-conditioned in relative terms: compare the
        // results rounded to T (the kernel rounds an f32 result once).
        check::<T>(&format!("binary {op:?}"), &read("binary", &out), &want);
    }
}

#[test]
fn binary_ops_broadcast_over_strided_operands() {
    for_each_precision("binary", &|dev, dtype| {
        for seed in 0..4 {
            dispatch!(dtype, binary_case(dev, seed));
        }
    });
}

fn unary_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = size(&mut rng, 1, 100_000);
    let (x, xv) = random_on::<T>(dev, &mut rng, n, 3.0);
    let cases: [(UnaryOp, &dyn Fn(f64) -> f64); 4] = [
        (UnaryOp::Affine { alpha: -1.75, beta: 0.3 }, &|v| -1.75 * v + 0.3),
        (UnaryOp::Square, &|v| v * v),
        (UnaryOp::Powf(3.0), &|v| v.powi(3)),
        (UnaryOp::Gelu, &|v| polylm_kernels::gelu::gelu(v)),
    ];
    for (op, f) in cases {
        let mut out = poisoned::<T>(dev, n);
        elementwise::map(op, &x, &mut out).expect("map");
        let want: Vec<f64> = xv.iter().map(|&v| T::round_from(f(v)).widen()).collect();
        check::<T>(&format!("map {op:?}"), &read("map", &out), &want);
    }
    // add_assign and fill
    let (mut acc, accv) = random_on::<T>(dev, &mut rng, n, 1.0);
    elementwise::add_assign(&mut acc, &x).expect("add_assign");
    let want: Vec<f64> = accv.iter().zip(&xv).map(|(a, b)| T::round_from(a + b).widen()).collect();
    check::<T>("add_assign", &read("add_assign", &acc), &want);
    let mut filled = poisoned::<T>(dev, n);
    elementwise::fill(&mut filled, -0.625).expect("fill");
    check::<T>("fill", &read("fill", &filled), &vec![-0.625; n]);
}

#[test]
fn unary_maps_accumulate_and_fill() {
    for_each_precision("unary", &|dev, dtype| {
        for seed in 10..13 {
            dispatch!(dtype, unary_case(dev, seed));
        }
    });
}

fn sum_axis_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    // Short axes (one thread per output) and long ones (row splits, then their sum), vector
    // and ragged inner widths, one and several outer entries; the last is a bias gradient of
    // 8192 rows by 768 columns.
    let (outer, len, inner) = match seed % 4 {
        0 => (size(&mut rng, 1, 5), size(&mut rng, 1, 63), size(&mut rng, 1, 300)),
        1 => (size(&mut rng, 1, 4), size(&mut rng, 64, 3000), size(&mut rng, 1, 200) | 1),
        2 => (size(&mut rng, 1, 3), size(&mut rng, 64, 2000), 8 * size(&mut rng, 1, 40)),
        _ => (1, 8192, 768),
    };
    let (x, xv) = random_on::<T>(dev, &mut rng, outer * len * inner, 1.0);
    let mut out = poisoned::<T>(dev, outer * inner);
    elementwise::sum_axis(&x, outer, len, inner, &mut out).expect("sum_axis");
    let want: Vec<f64> = (0..outer * inner)
        .map(|j| {
            let (o, i) = (j / inner, j % inner);
            T::round_from((0..len).map(|l| xv[(o * len + l) * inner + i]).sum::<f64>()).widen()
        })
        .collect();
    // f32 accumulation over `len` values of order 1: a random walk of roundings of partial sums
    // up to √len in size, about len · 1e-7 in all, on top of the storage type's tolerance.
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    let atol = T::ATOL * scale + len as f64 * 1e-7;
    assert_close(
        &format!("sum_axis {outer}×{len}×{inner}<{}>", T::NAME),
        &read("sum_axis", &out),
        &want,
        T::RTOL,
        atol,
    );
}

#[test]
fn sums_over_short_and_long_axes_match_f64() {
    for_each_precision("sum_axis", &|dev, dtype| {
        for seed in 60..68 {
            dispatch!(dtype, sum_axis_case(dev, seed));
        }
    });
}

fn gather_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let dims = [size(&mut rng, 1, 7), size(&mut rng, 1, 13), size(&mut rng, 1, 50), size(&mut rng, 1, 9)];
    let n: usize = dims.iter().product();
    let (x, xv) = random_on::<T>(dev, &mut rng, n, 1.0);
    // The view permutes the axes (0, 2, 3, 1) of the contiguous `dims` tensor.
    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let shape = [dims[0], dims[2], dims[3], dims[1]];
    let view_strides = [strides[0], strides[2], strides[3], strides[1]];
    let mut out = poisoned::<T>(dev, n);
    elementwise::gather(&shape, DeviceStrided { buf: &x, offset: 0, strides: &view_strides }, &mut out)
        .expect("gather");
    let mut want = Vec::with_capacity(n);
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                for l in 0..shape[3] {
                    want.push(
                        xv[i * view_strides[0]
                            + j * view_strides[1]
                            + k * view_strides[2]
                            + l * view_strides[3]],
                    );
                }
            }
        }
    }
    assert_eq!(read("gather", &out), want, "gather<{}> is a copy", T::NAME);
}

#[test]
fn gather_makes_permuted_views_contiguous() {
    for_each_precision("gather", &|dev, dtype| {
        for seed in 20..24 {
            dispatch!(dtype, gather_case(dev, seed));
        }
    });
}

fn cast_from<S: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    fn to<S: Precision, D: Precision>(dev: &Arc<CudaDevice>, x: &DeviceBuf<S>, xv: &[f64]) {
        let mut out = poisoned::<D>(dev, x.len());
        elementwise::cast(x, &mut out).expect("cast");
        let want: Vec<f64> = xv.iter().map(|&v| D::round_from(v).widen()).collect();
        let got = read("cast", &out);
        assert_eq!(got, want, "cast {} -> {} rounds to nearest even", S::NAME, D::NAME);
    }
    let mut rng = Rng::new(seed);
    let n = size(&mut rng, 1, 50_000);
    let (x, xv) = random_on::<S>(dev, &mut rng, n, 100.0);
    to::<S, f32>(dev, &x, &xv);
    to::<S, bf16>(dev, &x, &xv);
    to::<S, f16>(dev, &x, &xv);
}

#[test]
fn casts_round_to_nearest_even() {
    for_each_precision("cast", &|dev, dtype| dispatch!(dtype, cast_from(dev, 30)));
}

// ---------------------------------------------------------------- layernorm

/// The layernorm kernels to test on rows of `cols`: the default choice, the general kernels,
/// and the cached and streamed ones where they take such rows (forward and backward).
fn layernorm_kernels<T: Precision>(cols: usize, fused: bool) -> Vec<LayerNormKernel> {
    use LayerNormKernel::*;
    [Auto, General, Cached, Streamed]
        .into_iter()
        .filter(|k| k.takes::<T>(cols, false, fused) && k.takes::<T>(cols, true, fused))
        .collect()
}

fn layernorm_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64, fused: bool) {
    let mut rng = Rng::new(seed);
    // Half the seeds have thousands of rows, so that the persistent kernels' blocks take many
    // steps each and their rings wrap.
    let rows = if (seed / 5) % 2 == 1 { size(&mut rng, 1500, 4000) } else { size(&mut rng, 1, 70) };
    // Ragged widths take the general kernels, multiples of 16 bytes the register-cached and
    // streamed ones as well. (Below 8 columns dx is pure rounding noise around 0, so widths
    // start at 8.)
    let cols =
        [size(&mut rng, 8, 40) | 1, 768, size(&mut rng, 1000, 3000) | 1, 2048, 5120][seed as usize % 5];
    for kernel in layernorm_kernels::<T>(cols, fused) {
        layernorm_kernel_case::<T>(dev, &mut rng, kernel, rows, cols, fused);
    }
}

fn layernorm_kernel_case<T: Precision>(
    dev: &Arc<CudaDevice>,
    rng: &mut Rng,
    kernel: LayerNormKernel,
    rows: usize,
    cols: usize,
    fused: bool,
) {
    let n = rows * cols;
    let (x, xv) = random_on::<T>(dev, rng, n, 2.0);
    let (r, rv) = random_on::<T>(dev, rng, n, 2.0);
    let (w, wv) = random_on::<T>(dev, rng, cols, 1.5);
    let (b, bv) = random_on::<T>(dev, rng, cols, 0.5);
    let eps = 1e-5;
    let mut out = poisoned::<T>(dev, n);
    let mut sum = poisoned::<T>(dev, n);
    let mut mean = poisoned::<f32>(dev, rows);
    let mut rstd = poisoned::<f32>(dev, rows);
    let residual = if fused { Some(ResidualAdd { residual: &r, sum_out: &mut sum }) } else { None };
    layernorm_forward_with(kernel, &x, residual, &w, &b, eps, cols, &mut out, &mut mean, &mut rstd)
        .expect("layernorm fwd");
    // The normalised input: x + residual rounded to T when fused.
    let input: Vec<f64> = if fused {
        xv.iter().zip(&rv).map(|(a, b)| T::round_from(a + b).widen()).collect()
    } else {
        xv.clone()
    };
    let mut want = vec![0.0; n];
    let (mut wmean, mut wrstd) = (vec![0.0; rows], vec![0.0; rows]);
    polylm_kernels::layernorm::layernorm_forward(
        &input,
        &wv,
        &bv,
        f64::from(eps),
        cols,
        &mut want,
        &mut wmean,
        &mut wrstd,
    );
    let tag = format!("layernorm{} ({kernel:?}, {rows}×{cols})", if fused { "+residual" } else { "" });
    check::<T>(&format!("{tag} out"), &read("out", &out), &want);
    assert_close(&format!("{tag} mean<{}>", T::NAME), &read("mean", &mean), &wmean, 1e-4, 1e-5);
    assert_close(&format!("{tag} rstd<{}>", T::NAME), &read("rstd", &rstd), &wrstd, 1e-4, 1e-5);
    let norm_input = if fused {
        assert_eq!(read("sum", &sum), input, "{tag}: sum_out<{}> is x + residual rounded", T::NAME);
        &sum
    } else {
        &x
    };

    // Backward, with the residual stream's gradient added when fused; weight gradients
    // accumulate into existing values.
    let (dout, doutv) = random_on::<T>(dev, rng, n, 1.0);
    let (dres, dresv) = random_on::<T>(dev, rng, n, 1.0);
    let (mut dw, dw0) = random_on::<T>(dev, rng, cols, 1.0);
    let (mut db, db0) = random_on::<T>(dev, rng, cols, 1.0);
    let mut dx = poisoned::<T>(dev, n);
    let grads = LayerNormGrads { dx: &mut dx, dweight: &mut dw, dbias: &mut db, accumulate: true };
    layernorm_backward_with(kernel, norm_input, &w, &mean, &rstd, &dout, fused.then_some(&dres), cols, grads)
        .expect("layernorm bwd");
    let (mut wdx, mut wdw, mut wdb) = (vec![0.0; n], vec![0.0; cols], vec![0.0; cols]);
    polylm_kernels::layernorm::layernorm_backward(
        &input, &wv, &wmean, &wrstd, &doutv, cols, &mut wdx, &mut wdw, &mut wdb,
    );
    if fused {
        wdx.iter_mut().zip(&dresv).for_each(|(d, r)| *d += r);
    }
    let wdw: Vec<f64> = wdw.iter().zip(&dw0).map(|(a, b)| a + b).collect();
    let wdb: Vec<f64> = wdb.iter().zip(&db0).map(|(a, b)| a + b).collect();
    check::<T>(&format!("{tag} dx"), &read("dx", &dx), &wdx);
    check::<T>(&format!("{tag} dweight"), &read("dweight", &dw), &wdw);
    check::<T>(&format!("{tag} dbias"), &read("dbias", &db), &wdb);
}

#[test]
fn layernorm_forward_and_backward_match_the_cpu() {
    for_each_precision("layernorm", &|dev, dtype| {
        for seed in 40..50 {
            dispatch!(dtype, layernorm_case(dev, seed, seed % 2 == 1));
        }
    });
}

// ---------------------------------------------------------------- bias + GeLU

fn gelu_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let rows = size(&mut rng, 1, 300);
    // Odd widths take the scalar path, 768 the 16-byte vector path.
    let cols = if seed.is_multiple_of(2) { size(&mut rng, 1, 1100) | 1 } else { 768 };
    let n = rows * cols;
    let (x, xv) = random_on::<T>(dev, &mut rng, n, 3.0);
    let (b, bv) = random_on::<T>(dev, &mut rng, cols, 1.0);
    let mut out = poisoned::<T>(dev, n);
    bias_gelu_forward(&x, Some(&b), cols, &mut out).expect("gelu fwd");
    let mut want = vec![0.0; n];
    polylm_kernels::gelu::bias_gelu_forward(&xv, Some(&bv), cols, &mut want);
    check::<T>("bias_gelu out", &read("out", &out), &want);

    let (dout, doutv) = random_on::<T>(dev, &mut rng, n, 1.0);
    let mut dx = poisoned::<T>(dev, n);
    let mut db = poisoned::<T>(dev, cols);
    bias_gelu_backward(&x, Some(&b), &dout, cols, &mut dx, Some(&mut db), false).expect("gelu bwd");
    let (mut wdx, mut wdb) = (vec![0.0; n], vec![0.0; cols]);
    polylm_kernels::gelu::bias_gelu_backward(&xv, Some(&bv), &doutv, cols, &mut wdx, Some(&mut wdb));
    check::<T>("bias_gelu dx", &read("dx", &dx), &wdx);
    check::<T>("bias_gelu dbias", &read("dbias", &db), &wdb);
}

#[test]
fn bias_gelu_forward_and_backward_match_the_cpu() {
    for_each_precision("bias_gelu", &|dev, dtype| {
        for seed in 50..54 {
            dispatch!(dtype, gelu_case(dev, seed));
        }
    });
}

// ---------------------------------------------------------------- softmax

fn softmax_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let rows = size(&mut rng, 1, 200);
    let cols =
        [size(&mut rng, 1, 33), size(&mut rng, 100, 1500), size(&mut rng, 2000, 9000)][seed as usize % 3];
    let n = rows * cols;
    let (x, xv) = random_on::<T>(dev, &mut rng, n, 8.0);
    let mut y = poisoned::<T>(dev, n);
    softmax_forward(&x, cols, &mut y).expect("softmax fwd");
    let mut want = vec![0.0; n];
    polylm_kernels::softmax::softmax_forward(&xv, cols, &mut want);
    check::<T>("softmax y", &read("y", &y), &want);

    let (dy, dyv) = random_on::<T>(dev, &mut rng, n, 1.0);
    let mut dx = poisoned::<T>(dev, n);
    softmax_backward(&y, &dy, cols, &mut dx).expect("softmax bwd");
    // The backward sees the device's rounded y.
    let yv = read("y", &y);
    let mut wdx = vec![0.0; n];
    polylm_kernels::softmax::softmax_backward(&yv, &dyv, cols, &mut wdx);
    check::<T>("softmax dx", &read("dx", &dx), &wdx);
}

#[test]
fn softmax_forward_and_backward_match_the_cpu() {
    for_each_precision("softmax", &|dev, dtype| {
        for seed in 60..66 {
            dispatch!(dtype, softmax_case(dev, seed));
        }
    });
}

// ---------------------------------------------------------------- cross-entropy

fn cross_entropy_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    // Ragged and whole-vector vocabularies (the row kernel's vector and scalar paths; the
    // cluster kernel takes the whole-vector ones), up to PolyLM's 256,000. At 40,000 there are
    // enough rows for each cluster to take several and wrap its ring.
    let vocab = [size(&mut rng, 2, 500), 4099, size(&mut rng, 30_000, 70_000) | 1, 40_000, 256_000]
        [seed as usize % 5];
    let rows = if vocab == 40_000 { size(&mut rng, 150, 250) } else { size(&mut rng, 1, 40) };
    for kernel in [CrossEntropyKernel::Rows, CrossEntropyKernel::Cluster] {
        if kernel.takes::<T>(dev, vocab) {
            cross_entropy_kernel_case::<T>(dev, &mut rng, kernel, rows, vocab);
        }
    }
}

fn cross_entropy_kernel_case<T: Precision>(
    dev: &Arc<CudaDevice>,
    rng: &mut Rng,
    kernel: CrossEntropyKernel,
    rows: usize,
    vocab: usize,
) {
    let n = rows * vocab;
    let (logits, lv) = random_on::<T>(dev, rng, n, 6.0);
    let ignore = 3u32.min(vocab as u32 - 1);
    let targets: Vec<u32> =
        (0..rows).map(|r| if r % 5 == 2 { ignore } else { rng.below(vocab as u64) as u32 }).collect();
    let d_targets = dev.upload(&targets).expect("targets");
    let (mut loss, mut lse) = (poisoned::<f32>(dev, rows), poisoned::<f32>(dev, rows));
    let mut dlogits = poisoned::<T>(dev, n);
    let scale = 1.0 / rows as f32;
    cross_entropy_with(
        kernel,
        &logits,
        &d_targets,
        vocab,
        Some(ignore),
        CrossEntropyOutputs { loss: &mut loss, lse: &mut lse },
        Some((&mut dlogits, GradScale::Uniform(scale))),
    )
    .expect("cross_entropy");
    let (mut wloss, mut wlse) = (vec![0.0; rows], vec![0.0; rows]);
    polylm_kernels::cross_entropy::cross_entropy_forward(
        &lv,
        &targets,
        vocab,
        Some(ignore),
        &mut wloss,
        &mut wlse,
    );
    assert_close(&format!("ce loss<{}> ({kernel:?})", T::NAME), &read("loss", &loss), &wloss, 1e-5, 1e-5);
    assert_close(&format!("ce lse<{}> ({kernel:?})", T::NAME), &read("lse", &lse), &wlse, 1e-5, 1e-5);
    let mut wd = vec![0.0; n];
    let dloss = vec![f64::from(scale); rows];
    polylm_kernels::cross_entropy::cross_entropy_backward(
        &lv,
        &targets,
        &wlse,
        &dloss,
        vocab,
        Some(ignore),
        &mut wd,
    );
    check::<T>(&format!("ce dlogits ({kernel:?}, {rows}×{vocab})"), &read("dlogits", &dlogits), &wd);

    // In place, with a per-row upstream gradient.
    let (dl, dlv) = random_on::<f32>(dev, rng, rows, 1.0);
    let mut in_place = dev.upload(&dev.download(&logits).expect("copy")).expect("copy");
    cross_entropy_in_place_with(
        kernel,
        &mut in_place,
        &d_targets,
        vocab,
        Some(ignore),
        CrossEntropyOutputs { loss: &mut loss, lse: &mut lse },
        GradScale::PerRow(&dl),
    )
    .expect("cross_entropy in place");
    polylm_kernels::cross_entropy::cross_entropy_backward(
        &lv,
        &targets,
        &wlse,
        &dlv,
        vocab,
        Some(ignore),
        &mut wd,
    );
    check::<T>(
        &format!("ce in-place dlogits ({kernel:?}, {rows}×{vocab})"),
        &read("dlogits", &in_place),
        &wd,
    );
}

#[test]
fn cross_entropy_matches_the_cpu_with_ignored_rows() {
    for_each_precision("cross_entropy", &|dev, dtype| {
        for seed in 70..80 {
            dispatch!(dtype, cross_entropy_case(dev, seed));
        }
    });
}

#[test]
fn cross_entropy_of_a_target_outside_the_vocabulary_is_nan() {
    let Some(dev) = device("cross_entropy_oov") else { return };
    let mut rng = Rng::new(77);
    // The scalar path (10), the vector path (40,000) and the cluster kernel (sm_90 and later).
    let kernels = [CrossEntropyKernel::Rows, CrossEntropyKernel::Cluster];
    for (vocab, kernel) in [10usize, 40_000].into_iter().flat_map(|v| kernels.map(|k| (v, k))) {
        if !kernel.takes::<f32>(&dev, vocab) {
            continue;
        }
        let (logits, _) = random_on::<f32>(&dev, &mut rng, 3 * vocab, 1.0);
        let targets = dev.upload(&[1u32, vocab as u32, 2]).expect("targets");
        let (mut loss, mut lse) = (poisoned::<f32>(&dev, 3), poisoned::<f32>(&dev, 3));
        cross_entropy_with(
            kernel,
            &logits,
            &targets,
            vocab,
            None,
            CrossEntropyOutputs { loss: &mut loss, lse: &mut lse },
            None,
        )
        .expect("launch");
        let l = dev.download(&loss).expect("loss");
        assert!(l[0].is_finite() && l[1].is_nan() && l[2].is_finite(), "vocab {vocab} ({kernel:?}): {l:?}");
    }
}

// ---------------------------------------------------------------- embedding

fn embedding_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let vocab = size(&mut rng, 1, 3000);
    let dim = size(&mut rng, 1, 700);
    let tokens = size(&mut rng, 1, 500);
    // Few distinct ids, so that many positions share one.
    let distinct = size(&mut rng, 1, vocab.min(20));
    let pool: Vec<u32> = (0..distinct).map(|_| rng.below(vocab as u64) as u32).collect();
    let ids: Vec<u32> = (0..tokens).map(|_| pool[rng.below(distinct as u64) as usize]).collect();
    let (w, wv) = random_on::<T>(dev, &mut rng, vocab * dim, 1.0);
    let mut out = poisoned::<T>(dev, tokens * dim);
    embedding_forward(&w, &ids, dim, &mut out).expect("embedding fwd");
    let mut want = vec![0.0; tokens * dim];
    polylm_kernels::embedding::embedding_forward(&wv, &ids, dim, &mut want);
    assert_eq!(read("out", &out), want, "embedding_forward<{}> copies rows", T::NAME);

    let (dout, doutv) = random_on::<T>(dev, &mut rng, tokens * dim, 1.0);
    let (mut dw, mut wdw) = random_on::<T>(dev, &mut rng, vocab * dim, 1.0);
    embedding_backward(&ids, &dout, dim, &mut dw).expect("embedding bwd");
    polylm_kernels::embedding::embedding_backward(&ids, &doutv, dim, &mut wdw);
    check::<T>("embedding dweight", &read("dweight", &dw), &wdw);

    let err = embedding_forward(&w, &[vocab as u32], dim, &mut out).unwrap_err();
    assert!(matches!(err, CudaError::Invalid { .. }) && err.to_string().contains("outside the vocabulary"));
}

#[test]
fn embedding_lookup_and_scatter_add_match_the_cpu() {
    for_each_precision("embedding", &|dev, dtype| {
        for seed in 80..84 {
            dispatch!(dtype, embedding_case(dev, seed));
        }
    });
}

// ---------------------------------------------------------------- optimizer

fn adamw_case<G: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let sizes: Vec<usize> = (0..7).map(|i| if i == 3 { 1 } else { size(&mut rng, 1, 20_000) }).collect();
    let mut params = Vec::new();
    let mut grads = Vec::new();
    let mut ms = Vec::new();
    let mut vs = Vec::new();
    let mut copies = Vec::new();
    let mut host = Vec::new();
    for &n in &sizes {
        let (p, pv) = random_on::<f32>(dev, &mut rng, n, 1.0);
        let (g, gv) = random_on::<G>(dev, &mut rng, n, 3.0);
        let (m, mv) = random_on::<f32>(dev, &mut rng, n, 0.1);
        let vv: Vec<f32> = (0..n).map(|_| (rng.uniform() * 0.05 + 1e-4) as f32).collect();
        let v = dev.upload(&vv).expect("v");
        params.push(p);
        grads.push(g);
        ms.push(m);
        vs.push(v);
        copies.push(poisoned::<bf16>(dev, n));
        host.push((pv, gv, mv, vv));
    }
    // Gradient norm and clip factor on the device.
    let max_norm = 1.0f32;
    let mut norm = poisoned::<f32>(dev, 2);
    global_norm(&grads.iter().collect::<Vec<_>>(), max_norm, &mut norm).expect("norm");
    let total: f64 = host.iter().flat_map(|h| h.1.iter()).map(|g| g * g).sum();
    let want_norm = total.sqrt();
    let got = read("norm", &norm);
    assert_close(&format!("global norm<{}>", G::NAME), &got[..1], &[want_norm], 1e-5, 0.0);
    let clip = (f64::from(max_norm) / (want_norm + 1e-6)).min(1.0);
    assert_close("clip factor", &got[1..], &[clip], 1e-5, 0.0);

    let hyper = AdamWStep { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, step: 5 };
    let decays: Vec<f32> = (0..sizes.len()).map(|i| if i % 3 == 1 { 0.0 } else { 0.1 }).collect();
    let mut tensors: Vec<AdamWTensor<'_, G, bf16>> = Vec::new();
    for ((((p, g), m), v), (c, &wd)) in params
        .iter_mut()
        .zip(&grads)
        .zip(ms.iter_mut())
        .zip(vs.iter_mut())
        .zip(copies.iter_mut().zip(&decays))
    {
        tensors.push(AdamWTensor { param: p, grad: g, m, v, copy: Some(c), weight_decay: wd });
    }
    adamw_step(&mut tensors, &hyper, Some((&norm, 1))).expect("adamw");
    drop(tensors);
    let scale = got[1] as f32;
    for (i, (pv, gv, mv, vv)) in host.into_iter().enumerate() {
        let mut p: Vec<f32> = pv.iter().map(|&x| x as f32).collect();
        let g: Vec<f32> = gv.iter().map(|&x| x as f32).collect();
        let mut m: Vec<f32> = mv.iter().map(|&x| x as f32).collect();
        let mut v = vv.clone();
        let config = polylm_kernels::adamw::AdamWConfig {
            lr: hyper.lr,
            beta1: hyper.beta1,
            beta2: hyper.beta2,
            eps: hyper.eps,
            weight_decay: decays[i],
        };
        polylm_kernels::adamw::adamw_step(&mut p, &g, &mut m, &mut v, &config, hyper.step, scale);
        let widen = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        let tag = format!("adamw<g {}> tensor {i}", G::NAME);
        assert_close(&format!("{tag} param"), &read("param", &params[i]), &widen(&p), 1e-5, 1e-6);
        assert_close(&format!("{tag} m"), &read("m", &ms[i]), &widen(&m), 1e-5, 1e-7);
        assert_close(&format!("{tag} v"), &read("v", &vs[i]), &widen(&v), 1e-5, 1e-9);
        let bf: Vec<f64> = p.iter().map(|&x| bf16::from_f32(x).to_f64()).collect();
        assert_close(&format!("{tag} bf16 copy"), &read("copy", &copies[i]), &bf, 8e-3, 1e-6);
    }
}

#[test]
fn adamw_and_global_norm_match_the_cpu() {
    for_each_precision("adamw", &|dev, dtype| dispatch!(dtype, adamw_case(dev, 90)));
}

// ---------------------------------------------------------------- matmul

fn gemm_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let (m, n, k) = (size(&mut rng, 1, 200), size(&mut rng, 1, 200), size(&mut rng, 1, 300));
    let batch = size(&mut rng, 1, 3);
    let (a, av) = random_on::<T>(dev, &mut rng, batch * m * k, 1.0);
    let (b, bv) = random_on::<T>(dev, &mut rng, batch * k * n, 1.0);
    let (bias, biasv) = random_on::<T>(dev, &mut rng, n, 1.0);
    // A is stored as Aᵀ (k × m) for odd seeds, B as Bᵀ (n × k) for seeds ≡ 2, 3 mod 4.
    let a_t = seed % 2 == 1;
    let b_t = seed % 4 >= 2;
    let a_view = if a_t { MatView::row_major(&a, k, m).t() } else { MatView::row_major(&a, m, k) };
    let b_view = if b_t { MatView::row_major(&b, n, k).t() } else { MatView::row_major(&b, k, n) };
    let at = |bi: usize, r: usize, c: usize| {
        if a_t {
            av[bi * m * k + c * m + r]
        } else {
            av[bi * m * k + r * k + c]
        }
    };
    let bt = |bi: usize, r: usize, c: usize| {
        if b_t {
            bv[bi * k * n + c * k + r]
        } else {
            bv[bi * k * n + r * n + c]
        }
    };
    let (mut c, cv) = random_on::<T>(dev, &mut rng, batch * m * n, 1.0);
    let beta = if seed.is_multiple_of(3) { 1.0 } else { 0.0 };
    let dims = GemmDims { m, n, k, batch, alpha: 0.75, beta };
    if beta == 0.0 {
        c = poisoned::<T>(dev, batch * m * n);
    }
    gemm(dims, a_view, b_view, &mut c, Some(&bias)).expect("gemm");
    let mut want = vec![0.0; batch * m * n];
    for bi in 0..batch {
        for r in 0..m {
            for (col, bias_c) in biasv.iter().enumerate() {
                let dot: f64 = (0..k).map(|p| at(bi, r, p) * bt(bi, p, col)).sum();
                let idx = bi * m * n + r * n + col;
                want[idx] = 0.75 * dot + f64::from(beta) * cv[idx] + bias_c;
            }
        }
    }
    // Accumulating k products: the tolerance grows with √k relative to the largest value.
    check::<T>(&format!("gemm {m}x{n}x{k} batch {batch} at {a_t} bt {b_t}"), &read("c", &c), &want);
}

#[test]
fn tiled_matmul_matches_f64_on_ragged_strided_shapes() {
    for_each_precision("gemm", &|dev, dtype| {
        for seed in 100..108 {
            dispatch!(dtype, gemm_case(dev, seed));
        }
    });
}

// ---------------------------------------------------------------- attention

/// Non-causal attention in f64, forward and backward, straight from the definitions.
#[allow(clippy::type_complexity)]
fn attention_reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    d: AttentionDims,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, hd) = (d.seq, d.head_dim);
    let (mut out, mut lse) = (vec![0.0; d.qkv_len()], vec![0.0; d.lse_len()]);
    let (mut dq, mut dk, mut dv) = (vec![0.0; d.qkv_len()], vec![0.0; d.qkv_len()], vec![0.0; d.qkv_len()]);
    for h in 0..d.heads {
        let base = h * t * hd;
        let row = |x: &[f64], i: usize| x[base + i * hd..base + (i + 1) * hd].to_vec();
        let dotp = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for i in 0..t {
            let s: Vec<f64> = (0..t).map(|j| dotp(&row(q, i), &row(k, j)) * scale).collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            let l = mx + z.ln();
            lse[h * t + i] = l;
            let p: Vec<f64> = s.iter().map(|x| (x - l).exp()).collect();
            for c in 0..hd {
                out[base + i * hd + c] = (0..t).map(|j| p[j] * v[base + j * hd + c]).sum();
            }
            let o = row(&out, i);
            let doi = row(dout, i);
            let di = dotp(&doi, &o);
            for j in 0..t {
                let dp = dotp(&doi, &row(v, j));
                let ds = p[j] * (dp - di) * scale;
                for c in 0..hd {
                    dq[base + i * hd + c] += ds * k[base + j * hd + c];
                    dk[base + j * hd + c] += ds * q[base + i * hd + c];
                    dv[base + j * hd + c] += p[j] * doi[c];
                }
            }
        }
    }
    (out, lse, dq, dk, dv)
}

fn attention_case<T: Precision>(dev: &Arc<CudaDevice>, seed: u64) {
    let mut rng = Rng::new(seed);
    let heads = size(&mut rng, 1, 4);
    let seq = [1, size(&mut rng, 2, 70), size(&mut rng, 100, 200)][seed as usize % 3];
    let head_dim = [64, 128, size(&mut rng, 1, 100)][(seed / 3) as usize % 3];
    let causal = seed.is_multiple_of(2);
    let dims = AttentionDims { heads, seq, head_dim };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let n = dims.qkv_len();
    let (q, qv) = random_on::<T>(dev, &mut rng, n, 1.5);
    let (k, kv) = random_on::<T>(dev, &mut rng, n, 1.5);
    let (v, vv) = random_on::<T>(dev, &mut rng, n, 1.0);
    let (dout, dov) = random_on::<T>(dev, &mut rng, n, 1.0);
    let shape = AttentionShape { heads, seq, head_dim, causal, scale: scale as f32 };
    let mut out = poisoned::<T>(dev, n);
    let mut lse = poisoned::<f32>(dev, dims.lse_len());
    attention_forward(&q, &k, &v, &shape, &mut out, &mut lse).expect("attention fwd");
    let (mut dq, mut dk, mut dv) = (poisoned::<T>(dev, n), poisoned::<T>(dev, n), poisoned::<T>(dev, n));
    attention_backward(
        &q,
        &k,
        &v,
        &out,
        &lse,
        &dout,
        &shape,
        AttentionGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
    )
    .expect("attention bwd");

    let (wout, wlse, wdq, wdk, wdv) = if causal {
        let (mut o, mut l) = (vec![0.0; n], vec![0.0; dims.lse_len()]);
        causal_attention_forward(&qv, &kv, &vv, dims, scale, &mut o, &mut l);
        let (mut a, mut b, mut c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        causal_attention_backward(&qv, &kv, &vv, &o, &l, &dov, dims, scale, &mut a, &mut b, &mut c);
        (o, l, a, b, c)
    } else {
        attention_reference(&qv, &kv, &vv, &dov, dims, scale)
    };
    let tag = format!("attention h{heads} t{seq} d{head_dim} causal {causal}");
    check::<T>(&format!("{tag} out"), &read("out", &out), &wout);
    assert_close(&format!("{tag} lse<{}>", T::NAME), &read("lse", &lse), &wlse, 1e-5, 1e-5);
    check::<T>(&format!("{tag} dq"), &read("dq", &dq), &wdq);
    check::<T>(&format!("{tag} dk"), &read("dk", &dk), &wdk);
    check::<T>(&format!("{tag} dv"), &read("dv", &dv), &wdv);
}

#[test]
fn simple_attention_matches_the_cpu_causal_and_not() {
    for_each_precision("attention", &|dev, dtype| {
        for seed in 110..119 {
            dispatch!(dtype, attention_case(dev, seed));
        }
    });
}

// ---------------------------------------------------------------- device, memory, errors

#[test]
fn allocator_reuses_blocks_in_the_steady_state() {
    let Some(dev) = device("allocator") else { return };
    for _ in 0..3 {
        let bufs: Vec<DeviceBuf<f32>> =
            (1..20).map(|i| dev.alloc::<f32>(i * 1000 + 7).expect("alloc")).collect();
        drop(bufs);
    }
    let before = dev.memory_report();
    for _ in 0..10 {
        let bufs: Vec<DeviceBuf<f32>> =
            (1..20).map(|i| dev.alloc::<f32>(i * 1000 + 7).expect("alloc")).collect();
        drop(bufs);
    }
    let after = dev.memory_report();
    assert_eq!(after.driver_allocs, before.driver_allocs, "steady state needs no cuMemAlloc");
    assert!(after.cache_hits >= before.cache_hits + 190);
    assert!(after.peak_in_use <= after.peak_reserved && after.reserved >= after.in_use);
}

#[test]
fn the_profiler_times_every_launch_copy_and_fill_while_on() {
    let Some(dev) = device("profiler") else { return };
    let n = 1 << 22;
    let x = dev.alloc_filled_bytes::<f32>(n, 0x3f).expect("alloc");
    let mut y = dev.alloc::<f32>(n).expect("alloc");
    // Before profiling: not counted.
    elementwise::map(UnaryOp::Square, &x, &mut y).expect("map");
    dev.set_profiling(true);
    for _ in 0..3 {
        elementwise::map(UnaryOp::Square, &x, &mut y).expect("map");
    }
    dev.copy(&x, &mut y).expect("copy");
    dev.fill_bytes(&y, 0).expect("fill");
    let rows = dev.profile().expect("profile");
    dev.set_profiling(false);
    elementwise::map(UnaryOp::Square, &x, &mut y).expect("map");
    let calls = |name: &str| rows.iter().find(|r| r.name == name).map_or(0, |r| r.calls);
    assert_eq!((calls("map"), calls("memcpy"), calls("memset")), (3, 1, 1), "{rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.ms.is_finite() && r.ms > 0.0), "{rows:?}");
    assert!(rows.windows(2).all(|w| w[0].ms >= w[1].ms), "not longest first: {rows:?}");
    // Switching it off forgets the totals and stops timing.
    assert!(dev.profile().expect("profile").is_empty());
}

#[test]
fn large_uploads_and_downloads_round_trip_through_pinned_chunks() {
    let Some(dev) = device("transfer") else { return };
    // 80 MiB: more than one staging chunk.
    let data: Vec<u32> = (0..20 << 20).map(|i: u32| i.wrapping_mul(2_654_435_761)).collect();
    let buf = dev.upload(&data).expect("upload");
    assert_eq!(dev.download(&buf).expect("download"), data);
}

#[test]
fn a_missing_device_is_an_error_not_a_panic() {
    // Runs everywhere: without a driver this is `DriverMissing`, with one it is `NoDevice`.
    let err = CudaDevice::new(4096).unwrap_err();
    assert!(matches!(err, CudaError::DriverMissing | CudaError::NoDevice { .. }), "unexpected error {err:?}");
    assert!(!err.to_string().is_empty());
}

#[test]
fn wrong_sizes_are_errors() {
    let Some(dev) = device("wrong_sizes") else { return };
    let x = dev.alloc::<f32>(10).expect("alloc");
    let mut out = dev.alloc::<f32>(4).expect("alloc");
    let err = elementwise::map(UnaryOp::Square, &x, &mut out).unwrap_err();
    assert!(err.to_string().contains("needs 10"), "{err}");
    let mut y = dev.alloc::<f32>(10).expect("alloc");
    let err = softmax_forward(&x, 3, &mut y).unwrap_err();
    assert!(err.to_string().contains("not whole rows of 3"), "{err}");
}

/// An mbarrier that expects two arrivals and gets one, so that its wait can never complete: the
/// probe of the waits' timeout (`POLYLM_MBAR_TIMEOUT_NS` in `kernels/cuda/common.cuh`).
const NEVER_COMPLETES: KernelSource = KernelSource {
    name: "never_completes",
    code: r#"
extern "C" __global__ void never_completes(float* out) {
#if __CUDA_ARCH__ >= 900
    __shared__ __align__(8) u64 bar;
    if (threadIdx.x == 0) {
        mbar_init(smem_u32(&bar), 2);
        mbar_fence_init();
    }
    __syncthreads();
    if (threadIdx.x == 0) mbar_arrive(smem_u32(&bar));
    mbar_wait(smem_u32(&bar), 0);
#endif
    out[threadIdx.x] = 1.0f;
}
"#,
    needs_sm90a: false,
};

#[test]
fn the_timeout_probe_compiles() {
    // Runs wherever NVRTC is (CI included), so that the GPU test below never meets a probe
    // that does not compile.
    if !nvrtc_available() {
        eprintln!("skipped the_timeout_probe_compiles: no NVRTC");
        return;
    }
    let compiled = compile(&NEVER_COMPLETES, &CompileOptions { arch: Arch::SM90, spills_are_errors: true })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!compiled.cubin.is_empty());
}

#[test]
fn an_mbarrier_wait_that_never_completes_fails_instead_of_hanging() {
    const NAME: &str = "an_mbarrier_wait_that_never_completes_fails_instead_of_hanging";
    const CHILD: &str = "POLYLM_TIMEOUT_PROBE_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // The child process (the fault spoils its CUDA context): launch, synchronise, report.
        let dev = CudaDevice::new(0).expect("GPU");
        let out = dev.alloc::<f32>(32).expect("alloc");
        let f = dev.function(&NEVER_COMPLETES, "never_completes").expect("compile the probe");
        let p = out.ptr();
        let mut args = dev.launcher(&f).expect("launcher");
        args.arg(&p);
        let start = Instant::now();
        let config = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: each of the 32 threads writes its own element of `out`, which has 32.
        unsafe { args.launch(config) }.expect("launch");
        let result = dev.synchronize();
        println!(
            "probe: {:?} after {:.2} s",
            result.err().map(|e| e.to_string()),
            start.elapsed().as_secs_f64()
        );
        return;
    }
    let Some(dev) = device(NAME) else { return };
    if dev.arch().major < 9 {
        eprintln!("skipped {NAME}: mbarrier waits have a timeout on sm_90 and later");
        return;
    }
    let exe = std::env::current_exe().expect("this test binary");
    let mut child = Command::new(exe)
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the probe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for the probe").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the probe still hangs after 60 s: the mbarrier wait's timeout did not fire");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("the probe's output");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let line = probe_report(&text).unwrap_or_else(|| panic!("no report:\n{text}"));
    // The synchronisation reports the fault as an error, after the 4 s timeout and well before
    // a minute.
    assert!(line.starts_with("probe: Some("), "the wait completed or was not reported: {line}");
    let seconds: f64 =
        line.rsplit(" after ").next().and_then(|s| s.trim_end_matches(" s").parse().ok()).expect(line);
    assert!((3.9..30.0).contains(&seconds), "failed after {seconds} s, expected about 4: {line}");
    println!("{line}");
}

/// The probe child's `probe: ...` report in its output. The harness prints `test NAME ... `
/// before it on the same line (on the H200 the first version looked for the report at the
/// start of a line and missed it).
fn probe_report(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.find("probe: ").map(|at| &l[at..]))
}

#[test]
fn the_probe_report_is_found_after_the_harness_prefix() {
    let text =
        "\nrunning 1 test\ntest an_mbarrier_wait ... probe: Some(\"illegal address\") after 4.15 s\nok\n";
    assert_eq!(probe_report(text), Some("probe: Some(\"illegal address\") after 4.15 s"));
    assert_eq!(probe_report("probe: None after 0.01 s\n"), Some("probe: None after 0.01 s"));
    assert_eq!(probe_report("running 1 test\nok\n"), None);
}
