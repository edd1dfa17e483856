//! Criterion benchmarks of the f32 GEMM (`polylm_kernels::matmul::gemm`).
//!
//! Throughput is reported in elements where one element = one floating-point operation
//! (`2·m·n·k` per product), so criterion's `Gelem/s` reads as GFLOP/s. Each case runs on a
//! dedicated rayon pool of 1 and of 2 threads. Run with `cargo bench --bench matmul`
//! (add a filter such as `-- square` to run one group).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use half::bf16;
use polylm_kernels::matmul::{gemm, MatMut, MatRef};
use polylm_kernels::Elem;
use rayon::ThreadPool;

const THREADS: [usize; 2] = [1, 2];

fn pool(threads: usize) -> ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}

fn values<T: Elem>(len: usize, seed: usize) -> Vec<T> {
    (0..len).map(|i| T::from_f32(((i * 7 + seed) % 17) as f32 * 0.0625 - 0.5)).collect()
}

/// One `m×k · k×n` case; `b_transposed` stores B as `n×k` and multiplies by its transpose view
/// (how a tied LM head is used).
fn bench_case<T: Elem>(
    c: &mut Criterion,
    group: &str,
    label: &str,
    (m, n, k): (usize, usize, usize),
    b_transposed: bool,
) {
    let a: Vec<T> = values(m * k, 1);
    let b: Vec<T> = values(k * n, 2);
    let mut out = vec![0f32; m * n];
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(2 * (m * n * k) as u64));
    for threads in THREADS {
        let pool = pool(threads);
        g.bench_function(BenchmarkId::new(label, format!("{threads}t")), |bch| {
            bch.iter(|| {
                let av = MatRef::row_major(&a, m, k).expect("A");
                let bv = if b_transposed {
                    MatRef::row_major(&b, n, k).expect("B").t()
                } else {
                    MatRef::row_major(&b, k, n).expect("B")
                };
                let cv = MatMut::row_major(&mut out, m, n).expect("C");
                pool.install(|| gemm(1.0, av, bv, 0.0, cv));
            })
        });
    }
    g.finish();
}

fn square(c: &mut Criterion) {
    for s in [256, 512, 1024, 2048] {
        bench_case::<f32>(c, "matmul_square_f32", &format!("{s}"), (s, s, s), false);
    }
}

/// GPT-2 small shapes with B·T = 2048 rows and hidden size 768.
fn gpt(c: &mut Criterion) {
    let rows = 2048;
    bench_case::<f32>(c, "matmul_gpt_f32", "qkv_2048x768x2304", (rows, 2304, 768), false);
    bench_case::<f32>(c, "matmul_gpt_f32", "fc_2048x768x3072", (rows, 3072, 768), false);
    bench_case::<f32>(c, "matmul_gpt_f32", "proj_2048x3072x768", (rows, 768, 3072), false);
    bench_case::<f32>(c, "matmul_gpt_f32", "lm_head_2048x768x32000_bt", (rows, 32000, 768), true);
}

fn bf16_inputs(c: &mut Criterion) {
    bench_case::<bf16>(c, "matmul_bf16_in", "1024", (1024, 1024, 1024), false);
}

criterion_group!(benches, square, gpt, bf16_inputs);
criterion_main!(benches);
