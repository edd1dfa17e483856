//! Flash attention throughput in the FlashAttention papers' setting: causal, head dimension 128,
//! hidden 2048 (16 heads), 16K tokens in total (batch = 16384 / seq), sequence 512 to 8192, bf16.
//!
//! `cargo bench --bench cuda_attention` (without a GPU it prints that it skipped and exits 0).
//! Each call is timed with CUDA events over several runs after a warm-up. FLOPs: the forward
//! counts `4·batch·heads·seq²·head_dim`, halved for the causal mask; the backward 2.5 times the
//! forward; forward + backward 3.5 times. The simple warp-per-row kernel (`attention.cu`) runs
//! beside it up to sequence 2048 (beyond, it takes seconds per call). On a compute-capability-9.0
//! device a `flash (Hopper)` row adds the Hopper kernels (`flash_attention_hopper`, issue 8's
//! goals on an H100: 450 TFLOP/s forward, 300 forward + backward at 2048), forward and backward.
//! At sequence 2048 the `model layout` rows time the strided entry points on the layout a
//! PolyLM block uses (q, k, v read in place from the fused projection, output token-major,
//! gradients packed), which spare the engine every copy around attention. The `flash (Hopper),
//! no dQ` rows run the Hopper backward with [`flash_attention::set_backward_probe`] on: dQ's
//! products and its f32 atomic adds are skipped. dQ is one of the backward's five products, so
//! a difference from the full backward well beyond a fifth is the atomics' (on the H200,
//! 2026-11-30, both backward kernels ran at the same 120 TFLOP/s at 2048 although their
//! tensor-core paths differ).
//! Prints a Markdown table; `POLYLM_BENCH_OUT=path` also writes it to a file.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use half::bf16;
use polylm_kernels::cuda::attention::{
    attention_backward, attention_forward, AttentionGrads, AttentionShape,
};
use polylm_kernels::cuda::flash_attention::{
    self, BackwardInputs, BackwardKernel, FlashGrads, FlashShape, ForwardKernel,
};
use polylm_kernels::cuda::flash_attention_hopper;
use polylm_kernels::cuda::flash_layout::{GradTargets, HeadLayout, HeadView, HeadViewMut, PackedGrads};
use polylm_kernels::cuda::{CudaDevice, CudaResult, DeviceBuf};

const TOKENS: usize = 16384;
const HEADS: usize = 16;
const HEAD_DIM: usize = 128;
const SEQS: [usize; 5] = [512, 1024, 2048, 4096, 8192];
/// The sequence length of the `model layout` rows (PolyLM's context).
const PACKED_SEQ: usize = 2048;
/// Longest sequence the simple kernel is timed at.
const SIMPLE_MAX_SEQ: usize = 2048;

/// Pseudo-random bf16 values in ±1 (a fixed hash of the index), uploaded once.
fn values(dev: &Arc<CudaDevice>, n: usize, salt: u64) -> CudaResult<DeviceBuf<bf16>> {
    let host: Vec<bf16> = (0..n as u64)
        .map(|i| {
            let mut x = (i ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 31;
            bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect();
    dev.upload(&host)
}

/// Milliseconds of forward, backward and forward + backward.
struct Times {
    fwd: f64,
    bwd: f64,
    both: f64,
}

fn tflops(flops: f64, ms: f64) -> f64 {
    flops / ms / 1e9
}

struct Buffers {
    q: DeviceBuf<bf16>,
    k: DeviceBuf<bf16>,
    v: DeviceBuf<bf16>,
    dout: DeviceBuf<bf16>,
    out: DeviceBuf<bf16>,
    lse: DeviceBuf<f32>,
    dq: DeviceBuf<bf16>,
    dk: DeviceBuf<bf16>,
    dv: DeviceBuf<bf16>,
}

impl Buffers {
    fn new(dev: &Arc<CudaDevice>, shape: &FlashShape) -> CudaResult<Buffers> {
        let n = shape.qkv_len();
        Ok(Buffers {
            q: values(dev, n, 1)?,
            k: values(dev, n, 2)?,
            v: values(dev, n, 3)?,
            dout: values(dev, n, 4)?,
            out: dev.alloc(n)?,
            lse: dev.alloc(shape.lse_len())?,
            dq: dev.alloc(n)?,
            dk: dev.alloc(n)?,
            dv: dev.alloc(n)?,
        })
    }
}

fn time_flash(
    dev: &Arc<CudaDevice>,
    b: &mut Buffers,
    shape: &FlashShape,
    iters: usize,
    (kernel, backward): (ForwardKernel, BackwardKernel),
) -> CudaResult<Times> {
    let Buffers { q, k, v, dout, out, lse, dq, dk, dv } = b;
    let fwd = dev.time_ms(iters, || flash_attention::forward_with(kernel, q, k, v, shape, out, lse))?;
    let bwd = dev.time_ms(iters, || {
        flash_attention::backward_with(
            backward,
            q,
            k,
            v,
            out,
            lse,
            dout,
            shape,
            FlashGrads { dq: &mut *dq, dk: &mut *dk, dv: &mut *dv },
        )
    })?;
    let both = dev.time_ms(iters, || {
        flash_attention::forward_with(kernel, q, k, v, shape, out, lse)?;
        flash_attention::backward_with(
            backward,
            q,
            k,
            v,
            out,
            lse,
            dout,
            shape,
            FlashGrads { dq: &mut *dq, dk: &mut *dk, dv: &mut *dv },
        )
    })?;
    Ok(Times { fwd, bwd, both })
}

/// [`time_flash`] on the layout the engine gives a PolyLM block: q, k, v read in place from one
/// `[batch, seq, 3, heads, head_dim]` projection, the output and its gradient token-major, the
/// gradients written into one packed buffer (the `flash, model layout` rows).
fn time_flash_packed(
    dev: &Arc<CudaDevice>,
    shape: &FlashShape,
    iters: usize,
    (kernel, backward): (ForwardKernel, BackwardKernel),
) -> CudaResult<Times> {
    let n = shape.qkv_len();
    let part = |i: usize| HeadLayout::packed_qkv(shape, i);
    let token_major = HeadLayout::token_major(shape);
    let (qkv, dout) = (values(dev, 3 * n, 5)?, values(dev, n, 6)?);
    let (mut out, mut lse, mut grads) =
        (dev.alloc::<bf16>(n)?, dev.alloc::<f32>(shape.lse_len())?, dev.alloc::<bf16>(3 * n)?);
    let inputs = [0, 1, 2].map(|i| HeadView { buf: &qkv, layout: part(i) });
    let forward = |out: &mut DeviceBuf<bf16>, lse: &mut DeviceBuf<f32>| {
        flash_attention::forward_strided(
            kernel,
            inputs,
            shape,
            HeadViewMut { buf: out, layout: token_major },
            lse,
        )
    };
    let fwd = dev.time_ms(iters, || forward(&mut out, &mut lse))?;
    let backward_pass = |out: &DeviceBuf<bf16>, lse: &DeviceBuf<f32>, grads: &mut DeviceBuf<bf16>| {
        let reads = BackwardInputs {
            q: inputs[0],
            k: inputs[1],
            v: inputs[2],
            out: HeadView { buf: out, layout: token_major },
            dout: HeadView { buf: &dout, layout: token_major },
        };
        let targets = GradTargets::Packed(PackedGrads { buf: grads, dq: part(0), dk: part(1), dv: part(2) });
        flash_attention::backward_strided(backward, reads, lse, shape, targets)
    };
    let bwd = dev.time_ms(iters, || backward_pass(&out, &lse, &mut grads))?;
    let both = dev.time_ms(iters, || {
        forward(&mut out, &mut lse)?;
        backward_pass(&out, &lse, &mut grads)
    })?;
    Ok(Times { fwd, bwd, both })
}

fn time_simple(
    dev: &Arc<CudaDevice>,
    b: &mut Buffers,
    shape: &FlashShape,
    iters: usize,
) -> CudaResult<Times> {
    let s = AttentionShape {
        heads: shape.batch * shape.heads,
        seq: shape.seq,
        head_dim: shape.head_dim,
        causal: shape.causal,
        scale: shape.scale,
    };
    let Buffers { q, k, v, dout, out, lse, dq, dk, dv } = b;
    let fwd = dev.time_ms(iters, || attention_forward(q, k, v, &s, out, lse))?;
    let bwd = dev.time_ms(iters, || {
        attention_backward(
            q,
            k,
            v,
            out,
            lse,
            dout,
            &s,
            AttentionGrads { dq: &mut *dq, dk: &mut *dk, dv: &mut *dv },
        )
    })?;
    Ok(Times { fwd, bwd, both: fwd + bwd })
}

fn run(dev: &Arc<CudaDevice>) -> CudaResult<String> {
    let mut md = String::new();
    let header = format!(
        "Device: {} (sm_{}{}). Causal, bf16, head dim {HEAD_DIM}, {HEADS} heads, {TOKENS} tokens \
         (batch = {TOKENS}/seq); TFLOP/s with causal FLOPs halved, backward = 2.5 × forward.\n",
        dev.name(),
        dev.arch().major,
        dev.arch().minor
    );
    println!("{header}");
    let _ = writeln!(md, "{header}");
    let cols = "| kernel | seq | batch | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |";
    let sep = "|---|---|---|---|---|---|---|---|---|";
    println!("{cols}\n{sep}");
    let _ = writeln!(md, "{cols}\n{sep}");
    for seq in SEQS {
        let shape = FlashShape::new(TOKENS / seq, HEADS, seq, HEAD_DIM, true);
        let f = shape.forward_flops();
        let mut bufs = Buffers::new(dev, &shape)?;
        let portable = (ForwardKernel::Portable, BackwardKernel::Portable);
        let mut rows = vec![("flash", time_flash(dev, &mut bufs, &shape, 10, portable)?)];
        if flash_attention_hopper::runs_on(dev) {
            let hopper = (ForwardKernel::Hopper, BackwardKernel::Hopper);
            rows.push(("flash (Hopper)", time_flash(dev, &mut bufs, &shape, 10, hopper)?));
        }
        if flash_attention_hopper::runs_on(dev) {
            flash_attention::set_backward_probe(true);
            let hopper = (ForwardKernel::Hopper, BackwardKernel::Hopper);
            let probed = time_flash(dev, &mut bufs, &shape, 10, hopper);
            flash_attention::set_backward_probe(false);
            rows.push(("flash (Hopper), no dQ", probed?));
        }
        if seq == PACKED_SEQ {
            let portable = (ForwardKernel::Portable, BackwardKernel::Portable);
            rows.push(("flash, model layout", time_flash_packed(dev, &shape, 10, portable)?));
            if flash_attention_hopper::runs_on(dev) {
                let hopper = (ForwardKernel::Hopper, BackwardKernel::Hopper);
                rows.push(("flash (Hopper), model layout", time_flash_packed(dev, &shape, 10, hopper)?));
            }
        }
        if seq <= SIMPLE_MAX_SEQ {
            rows.push(("simple (attention.cu)", time_simple(dev, &mut bufs, &shape, 2)?));
        }
        for (name, t) in rows {
            let line = format!(
                "| {name} | {seq} | {} | {:.3} | {:.1} | {:.3} | {:.1} | {:.3} | {:.1} |",
                shape.batch,
                t.fwd,
                tflops(f, t.fwd),
                t.bwd,
                tflops(2.5 * f, t.bwd),
                t.both,
                tflops(3.5 * f, t.both)
            );
            println!("{line}");
            let _ = writeln!(md, "{line}");
        }
    }
    Ok(md)
}

fn main() {
    common::gpu_bench_main("cuda_attention", run);
}
