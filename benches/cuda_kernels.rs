//! Bandwidth of the memory-bound CUDA kernels at PolyLM-1.7B sizes, against the device's own
//! device-to-device copy measured in the same run.
//!
//! `cargo bench --bench cuda_kernels` (without a GPU it prints that it skipped). Each kernel
//! is timed with CUDA events over several runs after a warm-up; GB/s counts the bytes a kernel
//! must move (each input read once, each output written once), the same way the copy's
//! read + write bytes are counted, so "% of copy" is the fraction of the achievable bandwidth.
//! The first percentage is against a 1 GiB copy (the streaming ceiling); the second against a
//! copy moving the kernel's own byte count (which pays the same launch and tail costs).
//! Set `POLYLM_BENCH_OUT=path` to also write the table as Markdown.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use half::bf16;
use polylm_kernels::cuda::attention::{
    attention_backward, attention_forward, AttentionGrads, AttentionShape,
};
use polylm_kernels::cuda::cross_entropy::{
    cross_entropy_in_place_with, CrossEntropyKernel, CrossEntropyOutputs, GradScale,
};
use polylm_kernels::cuda::elementwise::{self, BinaryOp, DeviceStrided, UnaryOp};
use polylm_kernels::cuda::embedding::embedding_forward;
use polylm_kernels::cuda::gelu::{bias_gelu_backward, bias_gelu_forward};
use polylm_kernels::cuda::layernorm::{
    layernorm_backward_with, layernorm_forward_with, LayerNormGrads, LayerNormKernel, ResidualAdd,
};
use polylm_kernels::cuda::matmul::{gemm, GemmDims, MatView};
use polylm_kernels::cuda::optim::{adamw_step, global_norm, AdamWStep, AdamWTensor};
use polylm_kernels::cuda::softmax::softmax_forward;
use polylm_kernels::cuda::{CudaDevice, CudaResult, DeviceBuf, FloatElem};

/// PolyLM-1.7B: hidden 2048, FFN 8192, vocabulary 256,000; a micro-batch of 4 × 2048 tokens.
const TOKENS: usize = 8192;
const HIDDEN: usize = 2048;
const FFN: usize = 8192;
const VOCAB: usize = 256_000;
const PARAMS_1_7B: usize = 1_700_000_000;

struct Table {
    dev: Arc<CudaDevice>,
    copy_gbs: f64,
    rows: String,
}

impl Table {
    /// Bandwidth of a device-to-device copy moving `bytes` (read + write), to compare a kernel
    /// with a copy of its own size (small transfers pay launch and tail costs a large one hides).
    /// Buffers are capped at 2 GiB each: copies that large already stream at the ceiling.
    fn same_size_copy_gbs(&self, bytes: f64) -> f64 {
        let n = ((bytes / 8.0) as usize).clamp(1, 1 << 29);
        let run = || -> CudaResult<f64> {
            let src = filled::<f32>(&self.dev, n, 0.5)?;
            let mut dst = self.dev.alloc::<f32>(n)?;
            self.dev.time_ms(10, || self.dev.copy(&src, &mut dst))
        };
        run().map(|ms| 8.0 * n as f64 / ms / 1e6).unwrap_or(f64::NAN)
    }

    fn add(&mut self, name: &str, shape: &str, ms: f64, bytes: f64) {
        let gbs = bytes / ms / 1e6;
        let same = self.same_size_copy_gbs(bytes);
        let line = format!(
            "| {name} | {shape} | {ms:.3} | {gbs:.0} | {:.0}% | {:.0}% |",
            100.0 * gbs / self.copy_gbs,
            100.0 * gbs / same
        );
        println!("{line}");
        let _ = writeln!(self.rows, "{line}");
    }
    /// [`Table::add`] for a measurement that may have failed: a failure is a row of its own
    /// (the kernel's error), and the rows after it are still measured.
    fn add_result(&mut self, name: &str, shape: &str, ms: CudaResult<f64>, bytes: f64) {
        match ms {
            Ok(ms) => self.add(name, shape, ms, bytes),
            Err(e) => {
                let line = format!("| {name} | {shape} | failed: {e} | | | |");
                println!("{line}");
                let _ = writeln!(self.rows, "{line}");
            }
        }
    }
    fn add_flops(&mut self, name: &str, shape: &str, ms: f64, flops: f64) {
        let line = format!("| {name} | {shape} | {ms:.3} | {:.1} TFLOP/s | | |", flops / ms / 1e9);
        println!("{line}");
        let _ = writeln!(self.rows, "{line}");
    }
}

fn filled<T: FloatElem>(dev: &Arc<CudaDevice>, n: usize, value: f32) -> CudaResult<DeviceBuf<T>> {
    let mut buf = dev.alloc::<T>(n)?;
    elementwise::fill(&mut buf, value)?;
    Ok(buf)
}

/// Values that vary along the buffer (a ramp through GeLU's curved region), for kernels whose
/// speed could depend on the data.
fn ramp<T: FloatElem>(dev: &Arc<CudaDevice>, n: usize) -> CudaResult<DeviceBuf<T>> {
    let pattern: Vec<f32> = (0..4096).map(|i| ((i * 37 % 4096) as f32 / 4096.0 - 0.5) * 6.0).collect();
    let host: Vec<f32> = pattern.iter().cycle().take(n).copied().collect();
    let f = dev.upload(&host)?;
    let mut out = dev.alloc::<T>(n)?;
    elementwise::cast(&f, &mut out)?;
    Ok(out)
}

/// LayerNorm forward and backward, with and without the residual, over `tokens` rows of the
/// hidden size in bf16 on `kernel`.
fn bench_layernorm(
    t: &mut Table,
    dev: &Arc<CudaDevice>,
    tokens: usize,
    kernel: LayerNormKernel,
) -> CudaResult<()> {
    const ITERS: usize = 20;
    let e2 = 2.0;
    let n = tokens * HIDDEN;
    let x = ramp::<bf16>(dev, n)?;
    let r = ramp::<bf16>(dev, n)?;
    let w = filled::<bf16>(dev, HIDDEN, 1.1)?;
    let b = filled::<bf16>(dev, HIDDEN, 0.1)?;
    let mut out = dev.alloc::<bf16>(n)?;
    let mut sum = dev.alloc::<bf16>(n)?;
    let mut mean = dev.alloc::<f32>(tokens)?;
    let mut rstd = dev.alloc::<f32>(tokens)?;
    let dout = ramp::<bf16>(dev, n)?;
    let mut dx = dev.alloc::<bf16>(n)?;
    let mut dw = dev.alloc::<bf16>(HIDDEN)?;
    let mut db = dev.alloc::<bf16>(HIDDEN)?;
    let shape = format!("{tokens}×{HIDDEN} bf16");
    let tag = format!("{kernel:?}").to_lowercase();
    let ms = dev.time_ms(ITERS, || {
        layernorm_forward_with(kernel, &x, None, &w, &b, 1e-5, HIDDEN, &mut out, &mut mean, &mut rstd)
    });
    t.add_result(&format!("layernorm forward ({tag})"), &shape, ms, 2.0 * e2 * n as f64);
    let ms = dev.time_ms(ITERS, || {
        let res = Some(ResidualAdd { residual: &r, sum_out: &mut sum });
        layernorm_forward_with(kernel, &x, res, &w, &b, 1e-5, HIDDEN, &mut out, &mut mean, &mut rstd)
    });
    t.add_result(&format!("layernorm forward + residual add ({tag})"), &shape, ms, 4.0 * e2 * n as f64);
    for (dres, name, bytes) in
        [(None, "layernorm backward", 3.0), (Some(&r), "layernorm backward + residual grad", 4.0)]
    {
        let ms = dev.time_ms(ITERS, || {
            let grads = LayerNormGrads { dx: &mut dx, dweight: &mut dw, dbias: &mut db, accumulate: false };
            layernorm_backward_with(kernel, &x, &w, &mean, &rstd, &dout, dres, HIDDEN, grads)
        });
        t.add_result(&format!("{name} ({tag})"), &shape, ms, bytes * e2 * n as f64);
    }
    Ok(())
}

fn run(dev: &Arc<CudaDevice>) -> CudaResult<String> {
    const ITERS: usize = 10;
    let e2 = 2.0; // bytes of one bf16
    let n_act = TOKENS * HIDDEN;

    // The reference: device-to-device copy of 1 GiB, read + write bytes.
    let copy_bytes = 1usize << 30;
    let src = filled::<f32>(dev, copy_bytes / 4, 1.5)?;
    let mut dst = dev.alloc::<f32>(copy_bytes / 4)?;
    let copy_ms = dev.time_ms(ITERS, || dev.copy(&src, &mut dst))?;
    drop((src, dst));
    let copy_gbs = 2.0 * copy_bytes as f64 / copy_ms / 1e6;
    let mut t = Table { dev: Arc::clone(dev), copy_gbs, rows: String::new() };
    println!("device: {} (sm_{}{})", dev.name(), dev.arch().major, dev.arch().minor);
    println!("| kernel | shape | ms | GB/s | % of 1 GiB copy | % of same-size copy |");
    println!("|---|---|---|---|---|---|");
    t.add("device-to-device copy (reference)", "1 GiB f32", copy_ms, 2.0 * copy_bytes as f64);

    // LayerNorm at hidden 2048, bf16, on each kernel that takes such rows, at a micro-batch of
    // 4 × 2048 tokens and at 16 × 2048.
    for tokens in [TOKENS, 4 * TOKENS] {
        for kernel in [LayerNormKernel::Cached, LayerNormKernel::Streamed] {
            bench_layernorm(&mut t, dev, tokens, kernel)?;
        }
    }

    // Fused cross-entropy over the 256,000-token vocabulary, gradient in place.
    {
        let rows = 4096;
        let n = rows * VOCAB;
        let mut logits = ramp::<bf16>(dev, n)?;
        let targets = dev.upload(&(0..rows as u32).map(|i| i * 61 % VOCAB as u32).collect::<Vec<_>>())?;
        let mut loss = dev.alloc::<f32>(rows)?;
        let mut lse = dev.alloc::<f32>(rows)?;
        for (kernel, name) in [
            (CrossEntropyKernel::Rows, "cross-entropy loss + gradient (in place, rows)"),
            (CrossEntropyKernel::Cluster, "cross-entropy loss + gradient (in place, cluster)"),
        ] {
            if !kernel.takes::<bf16>(dev, VOCAB) {
                println!("{name}: skipped (needs compute capability 9.0)");
                continue;
            }
            let ms = dev.time_ms(ITERS, || {
                cross_entropy_in_place_with(
                    kernel,
                    &mut logits,
                    &targets,
                    VOCAB,
                    None,
                    CrossEntropyOutputs { loss: &mut loss, lse: &mut lse },
                    GradScale::Uniform(1.0 / rows as f32),
                )
            });
            t.add_result(name, &format!("{rows}×{VOCAB} bf16"), ms, 2.0 * e2 * n as f64);
        }
    }

    // AdamW over 1.7B parameters: f32 master weights and moments, bf16 gradients and copy.
    {
        let tensors = 100;
        let per = PARAMS_1_7B / tensors;
        let mut params = Vec::new();
        let mut grads = Vec::new();
        let mut ms_ = Vec::new();
        let mut vs = Vec::new();
        let mut copies = Vec::new();
        for _ in 0..tensors {
            params.push(filled::<f32>(dev, per, 0.02)?);
            grads.push(filled::<bf16>(dev, per, 0.001)?);
            ms_.push(filled::<f32>(dev, per, 0.0001)?);
            vs.push(filled::<f32>(dev, per, 0.00001)?);
            copies.push(dev.alloc::<bf16>(per)?);
        }
        let total = (per * tensors) as f64;
        let mut norm = dev.alloc::<f32>(2)?;
        let grad_refs: Vec<&DeviceBuf<bf16>> = grads.iter().collect();
        let ms = dev.time_ms(ITERS, || global_norm(&grad_refs, 1.0, &mut norm))?;
        t.add("global gradient norm", &format!("{:.2}B bf16 grads", total / 1e9), ms, e2 * total);
        let hyper = AdamWStep { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, step: 10 };
        let ms = dev.time_ms(ITERS, || {
            let mut table: Vec<AdamWTensor<'_, bf16, bf16>> = params
                .iter_mut()
                .zip(&grads)
                .zip(ms_.iter_mut().zip(vs.iter_mut()))
                .zip(copies.iter_mut())
                .map(|(((p, g), (m, v)), c)| AdamWTensor {
                    param: p,
                    grad: g,
                    m,
                    v,
                    copy: Some(c),
                    weight_decay: 0.1,
                })
                .collect();
            adamw_step(&mut table, &hyper, Some((&norm, 1)))
        })?;
        // Read p, g, m, v; write p, m, v and the bf16 copy: 4+2+4+4 + 4+4+4+2 bytes.
        t.add(
            "AdamW (fused, all tensors, one launch)",
            &format!("{:.2}B params", total / 1e9),
            ms,
            28.0 * total,
        );
    }

    // The other memory-bound kernels, for the record.
    {
        let n = TOKENS * FFN;
        let x = ramp::<bf16>(dev, n)?;
        let b = filled::<bf16>(dev, FFN, 0.1)?;
        let mut out = dev.alloc::<bf16>(n)?;
        let shape = format!("{TOKENS}×{FFN} bf16");
        let ms = dev.time_ms(ITERS, || bias_gelu_forward(&x, Some(&b), FFN, &mut out))?;
        t.add("bias + GeLU forward", &shape, ms, 2.0 * e2 * n as f64);
        let dout = ramp::<bf16>(dev, n)?;
        let mut db = dev.alloc::<bf16>(FFN)?;
        let ms = dev.time_ms(ITERS, || {
            bias_gelu_backward(&x, Some(&b), &dout, FFN, &mut out, Some(&mut db), false)
        })?;
        t.add("bias + GeLU backward", &shape, ms, 3.0 * e2 * n as f64);
        let ms =
            dev.time_ms(ITERS, || elementwise::map(UnaryOp::Affine { alpha: 0.5, beta: 0.1 }, &x, &mut out))?;
        t.add("affine map", &shape, ms, 2.0 * e2 * n as f64);
        let mut acc = ramp::<bf16>(dev, n)?;
        let ms = dev.time_ms(ITERS, || elementwise::add_assign(&mut acc, &x))?;
        t.add("add_assign (gradient accumulation)", &shape, ms, 3.0 * e2 * n as f64);
        // The strided kernels the model's forward runs every layer: a residual add (dense, the
        // vector path), a bias add broadcast over the rows, and the QKV permutation
        // [B, T, 3, H, D] → [3, B, H, T, D] (index split by the fast division).
        let (res, rows_c) = (TOKENS * HIDDEN, [TOKENS, HIDDEN]);
        let (ra, rb) = (ramp::<bf16>(dev, res)?, ramp::<bf16>(dev, res)?);
        let mut rout = dev.alloc::<bf16>(res)?;
        let dense2 = [HIDDEN, 1];
        let ms = dev.time_ms(ITERS, || {
            let a = DeviceStrided { buf: &ra, offset: 0, strides: &dense2 };
            let b = DeviceStrided { buf: &rb, offset: 0, strides: &dense2 };
            elementwise::binary(BinaryOp::Add, &rows_c, a, b, &mut rout)
        })?;
        t.add("add (residual, dense)", &format!("{TOKENS}×{HIDDEN} bf16"), ms, 3.0 * e2 * res as f64);
        let qkv_w = 3 * HIDDEN;
        let (qa, qbias) = (ramp::<bf16>(dev, TOKENS * qkv_w)?, filled::<bf16>(dev, qkv_w, 0.1)?);
        let mut qout = dev.alloc::<bf16>(TOKENS * qkv_w)?;
        let (dense_q, bcast) = ([qkv_w, 1], [0, 1]);
        let ms = dev.time_ms(ITERS, || {
            let a = DeviceStrided { buf: &qa, offset: 0, strides: &dense_q };
            let b = DeviceStrided { buf: &qbias, offset: 0, strides: &bcast };
            elementwise::binary(BinaryOp::Add, &[TOKENS, qkv_w], a, b, &mut qout)
        })?;
        t.add(
            "add bias (broadcast over rows)",
            &format!("{TOKENS}×{qkv_w} bf16"),
            ms,
            2.0 * e2 * (TOKENS * qkv_w) as f64,
        );
        let (bsz, heads, hd) = (TOKENS / 2048, HIDDEN / 128, 128);
        let permuted = [heads * hd, 2048 * qkv_w, hd, qkv_w, 1];
        let ms = dev.time_ms(ITERS, || {
            let a = DeviceStrided { buf: &qa, offset: 0, strides: &permuted };
            elementwise::gather(&[3, bsz, heads, 2048, hd], a, &mut qout)
        })?;
        t.add(
            "gather (QKV permutation)",
            &format!("{bsz}×2048×3×{heads}×{hd} bf16"),
            ms,
            2.0 * e2 * (TOKENS * qkv_w) as f64,
        );
        // The data-parallel bucket's casts: bf16 gradients to f32 and the sums back.
        let mut wide = dev.alloc::<f32>(n)?;
        let ms = dev.time_ms(ITERS, || elementwise::cast(&x, &mut wide))?;
        t.add("cast bf16 → f32", &shape, ms, 6.0 * n as f64);
        let ms = dev.time_ms(ITERS, || elementwise::cast(&wide, &mut out))?;
        t.add("cast f32 → bf16", &shape, ms, 6.0 * n as f64);
        // A bias gradient: the sum over every token of a 3·hidden-wide QKV gradient (the
        // engine's broadcast-add backward), which took a thread per column before row splits.
        let qkv = 3 * HIDDEN;
        let dqkv = ramp::<bf16>(dev, TOKENS * qkv)?;
        let mut bias_grad = dev.alloc::<bf16>(qkv)?;
        let ms = dev.time_ms(ITERS, || elementwise::sum_axis(&dqkv, 1, TOKENS, qkv, &mut bias_grad))?;
        t.add(
            "sum over rows (QKV bias gradient)",
            &format!("{TOKENS}×{qkv} bf16"),
            ms,
            e2 * (TOKENS * qkv) as f64,
        );
        let rows = 16 * 2048;
        let sm_in = ramp::<bf16>(dev, rows * 2048)?;
        let mut sm_out = dev.alloc::<bf16>(rows * 2048)?;
        let ms = dev.time_ms(ITERS, || softmax_forward(&sm_in, 2048, &mut sm_out))?;
        t.add("softmax forward", &format!("{rows}×2048 bf16"), ms, 2.0 * e2 * (rows * 2048) as f64);
    }
    {
        let table = filled::<bf16>(dev, VOCAB * HIDDEN, 0.01)?;
        let ids: Vec<u32> =
            (0..TOKENS as u32).map(|i| i.wrapping_mul(2_654_435_761) % VOCAB as u32).collect();
        let mut out = dev.alloc::<bf16>(n_act)?;
        let ms = dev.time_ms(ITERS, || embedding_forward(&table, &ids, HIDDEN, &mut out))?;
        t.add(
            "embedding lookup (incl. id upload)",
            &format!("{TOKENS} ids × {HIDDEN} bf16"),
            ms,
            2.0 * e2 * n_act as f64,
        );
    }

    // The simple stand-ins for the tensor-core matmul and flash attention (separate issues).
    {
        let (m, n, k) = (4096usize, 4096usize, 4096usize);
        let a = ramp::<bf16>(dev, m * k)?;
        let b = ramp::<bf16>(dev, k * n)?;
        let mut c = dev.alloc::<bf16>(m * n)?;
        let dims = GemmDims { m, n, k, batch: 1, alpha: 1.0, beta: 0.0 };
        let ms = dev.time_ms(3, || {
            gemm(dims, MatView::row_major(&a, m, k), MatView::row_major(&b, k, n), &mut c, None)
        })?;
        t.add_flops("simple tiled matmul (not tensor cores)", "4096³ bf16", ms, 2.0 * (m * n * k) as f64);
    }
    {
        let shape = AttentionShape {
            heads: 16,
            seq: 2048,
            head_dim: 128,
            causal: true,
            scale: 128f32.sqrt().recip(),
        };
        let n = shape.heads * shape.seq * shape.head_dim;
        let q = ramp::<bf16>(dev, n)?;
        let k = ramp::<bf16>(dev, n)?;
        let v = ramp::<bf16>(dev, n)?;
        let mut o = dev.alloc::<bf16>(n)?;
        let mut lse = dev.alloc::<f32>(shape.heads * shape.seq)?;
        let fwd = dev.time_ms(3, || attention_forward(&q, &k, &v, &shape, &mut o, &mut lse))?;
        // Causal: half of 4·T²·d per head.
        let flops = 2.0 * (shape.heads * shape.seq * shape.seq * shape.head_dim) as f64;
        t.add_flops("simple attention forward (not flash)", "16 heads × 2048 × 128 causal bf16", fwd, flops);
        let (mut dq, mut dk, mut dv) = (dev.alloc::<bf16>(n)?, dev.alloc::<bf16>(n)?, dev.alloc::<bf16>(n)?);
        let bwd = dev.time_ms(3, || {
            attention_backward(
                &q,
                &k,
                &v,
                &o,
                &lse,
                &o,
                &shape,
                AttentionGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
            )
        })?;
        t.add_flops(
            "simple attention backward (not flash)",
            "16 heads × 2048 × 128 causal bf16",
            bwd,
            2.5 * flops,
        );
    }

    let report = dev.memory_report();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Device: {} (compute capability {}.{})\n",
        dev.name(),
        dev.arch().major,
        dev.arch().minor
    );
    let _ = writeln!(
        md,
        "| kernel | shape | ms | GB/s | % of 1 GiB copy | % of same-size copy |\n|---|---|---|---|---|---|"
    );
    md.push_str(&t.rows);
    let _ = writeln!(
        md,
        "\nAllocator over the whole run: peak in use {:.2} GB, peak reserved {:.2} GB, {} cuMemAlloc calls, {} cache hits.",
        report.peak_in_use as f64 / 1e9,
        report.peak_reserved as f64 / 1e9,
        report.driver_allocs,
        report.cache_hits
    );
    Ok(md)
}

fn main() {
    common::gpu_bench_main("cuda_kernels", run);
}
