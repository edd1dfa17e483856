//! Throughput of the memory-bound row kernels, causal attention and cross-entropy, on 1 and 2
//! threads, next to a plain memory copy of 8192×768 f32 (the copy-bandwidth reference).
//!
//! Memory-bound ops report `Throughput::Bytes` (bytes read + written once each); attention
//! reports `Throughput::Elements` = useful FLOPs (so "elem/s" reads as FLOP/s); cross-entropy
//! (forward + backward) reports the bytes of reading the logits twice and writing the gradient.
//!
//! Run with `cargo bench --bench ops` (a few minutes).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use polylm_kernels::attention::{causal_attention_backward, causal_attention_forward, AttentionDims};
use polylm_kernels::cross_entropy::{cross_entropy_backward, cross_entropy_forward};
use polylm_kernels::gelu::{bias_gelu_backward, bias_gelu_forward};
use polylm_kernels::layernorm::{layernorm_backward, layernorm_forward};
use polylm_kernels::softmax::softmax_forward;
use rayon::prelude::*;
use rayon::ThreadPool;

/// Deterministic pseudo-random values in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pool(threads: usize) -> ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}

const F32: u64 = std::mem::size_of::<f32>() as u64;

fn bench_memory_bound(g: &mut BenchmarkGroup<WallTime>, pool: &ThreadPool) {
    // Plain copy: the bandwidth reference.
    let (rows, cols) = (8192, 768);
    let n = rows * cols;
    let src = data(n, 1);
    let mut dst = vec![0.0f32; n];
    g.throughput(Throughput::Bytes(2 * n as u64 * F32));
    g.bench_function("copy_8192x768", |b| {
        b.iter(|| {
            pool.install(|| {
                dst.par_chunks_mut(1 << 14)
                    .zip(src.par_chunks(1 << 14))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            })
        })
    });

    // LayerNorm 8192×768.
    let x = data(n, 2);
    let w = data(cols, 3);
    let bias = data(cols, 4);
    let dout = data(n, 5);
    let mut out = vec![0.0f32; n];
    let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    g.throughput(Throughput::Bytes(2 * n as u64 * F32));
    g.bench_function("layernorm_fwd_8192x768", |b| {
        b.iter(|| {
            pool.install(|| layernorm_forward(&x, &w, &bias, 1e-5, cols, &mut out, &mut mean, &mut rstd))
        })
    });
    let mut dx = vec![0.0f32; n];
    let (mut dw, mut db) = (vec![0.0f32; cols], vec![0.0f32; cols]);
    g.throughput(Throughput::Bytes(3 * n as u64 * F32));
    g.bench_function("layernorm_bwd_8192x768", |b| {
        b.iter(|| {
            pool.install(|| layernorm_backward(&x, &w, &mean, &rstd, &dout, cols, &mut dx, &mut dw, &mut db))
        })
    });
    drop((x, dout, out, dx));

    // Bias + GeLU 8192×3072.
    let cols = 3072;
    let n = rows * cols;
    let x: Vec<f32> = data(n, 6).iter().map(|v| v * 4.0).collect();
    let bias = data(cols, 7);
    let dout = data(n, 8);
    let mut out = vec![0.0f32; n];
    g.throughput(Throughput::Bytes(2 * n as u64 * F32));
    g.bench_function("bias_gelu_fwd_8192x3072", |b| {
        b.iter(|| pool.install(|| bias_gelu_forward(&x, Some(&bias), cols, &mut out)))
    });
    let mut db = vec![0.0f32; cols];
    g.throughput(Throughput::Bytes(3 * n as u64 * F32));
    g.bench_function("bias_gelu_bwd_8192x3072", |b| {
        b.iter(|| pool.install(|| bias_gelu_backward(&x, Some(&bias), &dout, cols, &mut out, Some(&mut db))))
    });
    drop((x, dout, out));

    // Softmax 8192×1024.
    let cols = 1024;
    let n = rows * cols;
    let x: Vec<f32> = data(n, 9).iter().map(|v| v * 8.0).collect();
    let mut out = vec![0.0f32; n];
    g.throughput(Throughput::Bytes(2 * n as u64 * F32));
    g.bench_function("softmax_fwd_8192x1024", |b| {
        b.iter(|| pool.install(|| softmax_forward(&x, cols, &mut out)))
    });
}

fn bench_attention(g: &mut BenchmarkGroup<WallTime>, pool: &ThreadPool) {
    for seq in [512, 1024] {
        let dims = AttentionDims { heads: 12, seq, head_dim: 64 };
        let n = dims.qkv_len();
        let (q, k, v, dout) = (data(n, 10), data(n, 11), data(n, 12), data(n, 13));
        let scale = 1.0 / 8.0;
        let mut out = vec![0.0f32; n];
        let mut lse = vec![0.0f32; dims.lse_len()];
        // Causal: QKᵀ and PV over half the T×T tile, 2 FLOPs per multiply-add.
        let pair_flops = (dims.heads * seq * seq * dims.head_dim) as u64;
        g.throughput(Throughput::Elements(2 * pair_flops));
        g.bench_function(format!("attention_fwd_h12_t{seq}_d64"), |b| {
            b.iter(|| pool.install(|| causal_attention_forward(&q, &k, &v, dims, scale, &mut out, &mut lse)))
        });
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        // Five tile products in the flash backward (S, dP, dV, dK, dQ).
        g.throughput(Throughput::Elements(5 * pair_flops));
        g.bench_function(format!("attention_bwd_h12_t{seq}_d64"), |b| {
            b.iter(|| {
                pool.install(|| {
                    causal_attention_backward(
                        &q, &k, &v, &out, &lse, &dout, dims, scale, &mut dq, &mut dk, &mut dv,
                    )
                })
            })
        });
    }
}

fn bench_cross_entropy(g: &mut BenchmarkGroup<WallTime>, pool: &ThreadPool) {
    for (rows, vocab) in [(1024, 32000), (8, 256_000)] {
        let n = rows * vocab;
        let logits: Vec<f32> = data(n, 14).iter().map(|v| v * 10.0).collect();
        let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % vocab) as u32).collect();
        let dloss = vec![1.0 / rows as f32; rows];
        let (mut loss, mut lse) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        let mut dlogits = vec![0.0f32; n];
        g.throughput(Throughput::Bytes(3 * n as u64 * F32));
        g.bench_function(format!("cross_entropy_fwd_bwd_{rows}x{vocab}"), |b| {
            b.iter(|| {
                pool.install(|| {
                    cross_entropy_forward(&logits, &targets, vocab, None, &mut loss, &mut lse);
                    cross_entropy_backward(&logits, &targets, &lse, &dloss, vocab, None, &mut dlogits);
                });
                black_box(&dlogits);
            })
        });
    }
}

fn ops(c: &mut Criterion) {
    for threads in [1, 2] {
        let pool = pool(threads);
        let mut g = c.benchmark_group(format!("ops_t{threads}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        bench_memory_bound(&mut g, &pool);
        bench_attention(&mut g, &pool);
        bench_cross_entropy(&mut g, &pool);
        g.finish();
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
