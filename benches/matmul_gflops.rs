//! Plain-timer GFLOP/s of the f32 GEMM, one machine-readable line per case.
//!
//! Usage: `cargo bench --bench matmul_gflops -- [--sizes 256,512,1024,2048] [--threads 1,2]
//! [--repeat 5] [--shapes MxNxK[:LAYOUT],...]`
//!
//! A shape's layout is `nn` (default: A `[m, k]` and B `[k, n]` row-major), `nt` (B stored
//! `[n, k]` and read transposed, as a forward pass multiplies by a weight) or `tn` (A stored
//! `[k, m]` and read transposed, as a weight gradient reads the output gradient); e.g. the
//! `tiny` preset's LM head is `2048x8192x128:nt` forward, `2048x128x8192` and `8192x128x2048:tn`
//! backward.
//!
//! Prints `ours size=1024 threads=1 m=1024 n=1024 k=1024 gflops=123.4 best_ms=17.4 median_ms=17.6`.
//! Each case is warmed up once, then timed `--repeat` times; `gflops` is from the best run.

use std::time::Instant;

use polylm_kernels::matmul::{gemm, MatMut, MatRef};

fn parse_list(v: &str) -> Vec<usize> {
    v.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse().expect("expected a number")).collect()
}

/// A `rows × cols` view of `data`: row-major, or (`transposed`) stored `[cols, rows]` and read
/// transposed.
fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_, f32> {
    if transposed {
        MatRef::row_major(data, cols, rows).expect("operand").t()
    } else {
        MatRef::row_major(data, rows, cols).expect("operand")
    }
}

fn main() {
    let mut sizes = vec![256, 512, 1024, 2048];
    let mut threads = vec![1, 2];
    let mut repeat = 5usize;
    // (label, m, n, k, A transposed, B transposed)
    let mut shapes: Vec<(String, usize, usize, usize, bool, bool)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => sizes = parse_list(&args.next().expect("--sizes needs a value")),
            "--threads" => threads = parse_list(&args.next().expect("--threads needs a value")),
            "--repeat" => {
                repeat = args.next().expect("--repeat needs a value").parse().expect("--repeat: a number")
            }
            "--shapes" => {
                let v = args.next().expect("--shapes needs a value");
                shapes = v
                    .split(',')
                    .map(|s| {
                        let (dims, layout) = s.split_once(':').unwrap_or((s, "nn"));
                        let (a_t, b_t) = match layout {
                            "nn" => (false, false),
                            "nt" => (false, true),
                            "tn" => (true, false),
                            other => panic!("layout {other}: expected nn, nt or tn"),
                        };
                        let d = dims.split('x').map(|x| x.parse().expect("MxNxK")).collect::<Vec<usize>>();
                        let suffix = if layout == "nn" { String::new() } else { format!(":{layout}") };
                        (format!("shape={}x{}x{}{suffix}", d[0], d[1], d[2]), d[0], d[1], d[2], a_t, b_t)
                    })
                    .collect();
            }
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    let mut cases: Vec<(String, usize, usize, usize, bool, bool)> =
        sizes.iter().map(|&s| (format!("size={s}"), s, s, s, false, false)).collect();
    cases.extend(shapes);
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool");
        for (label, m, n, k, a_t, b_t) in &cases {
            let (m, n, k, a_t, b_t) = (*m, *n, *k, *a_t, *b_t);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 + 3) % 13) as f32 * 0.1 - 0.6).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 + 1) % 11) as f32 * 0.1 - 0.5).collect();
            let mut c = vec![0f32; m * n];
            let mut run = || {
                let t0 = Instant::now();
                pool.install(|| {
                    gemm(
                        1.0,
                        view(&a, m, k, a_t),
                        view(&b, k, n, b_t),
                        0.0,
                        MatMut::row_major(&mut c, m, n).expect("C"),
                    )
                });
                t0.elapsed().as_secs_f64()
            };
            run();
            // Small sizes: repeat until ~0.2 s of work per sample so timer noise does not dominate.
            let flops = 2.0 * m as f64 * n as f64 * k as f64;
            let mut times: Vec<f64> = (0..repeat.max(1)).map(|_| run()).collect();
            times.sort_by(f64::total_cmp);
            let best = times[0];
            let median = times[times.len() / 2];
            println!(
                "ours {label} threads={t} m={m} n={n} k={k} gflops={:.1} best_ms={:.3} median_ms={:.3}",
                flops / best / 1e9,
                best * 1e3,
                median * 1e3
            );
        }
    }
}
