//! Data-parallel training on the CPU: the TCP collectives across thread ranks, the
//! equivalence of N ranks × micro-batch b with one rank × micro-batch N·b (plain and ZeRO-1,
//! through `polylm launch`), failures (a rank that never arrives, dies or hangs) and resuming
//! a 2-rank checkpoint with one rank.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{losses, polylm, prepare_small, scratch, step_records, text, TINY_MODEL};

use polylm_trainer::dist::tcp::TcpCollective;
use polylm_trainer::dist::{launch::free_port, Collective, DistError, World};

// ----- collectives ---------------------------------------------------------------------------

fn world(rank: usize, size: usize, port: u16) -> World {
    World { rank, world_size: size, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
}

/// Deterministic pseudo-random f32 values in [-1, 1) scaled by a varying magnitude.
fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            (u * 2.0 - 1.0) * 10f32.powi((i % 7) as i32 - 3)
        })
        .collect()
}

/// Runs `f(rank, collective)` on `size` thread ranks joined over TCP; returns their results.
fn on_ranks<T: Send + 'static>(
    size: usize,
    timeout: Duration,
    f: impl Fn(usize, &mut TcpCollective) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port().expect("a free port");
    let handles: Vec<_> = (0..size)
        .map(|r| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut c = TcpCollective::connect(&world(r, size, port), timeout).expect("rendezvous");
                f(r, &mut c)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

#[test]
fn tcp_collectives_are_exact_and_identical_on_every_rank() {
    for size in [2usize, 3, 4] {
        let n = 1000 + size;
        let counts: Vec<usize> = (0..size).map(|r| [3, 0, 997, 5][r % 4] + r).collect();
        let total: usize = counts.iter().sum();
        let cs = counts.clone();
        let results = on_ranks(size, Duration::from_secs(20), move |r, c| {
            let counts = &cs;
            assert_eq!((c.rank(), c.world_size()), (r, size));
            let mut sum = random(r as u64 + 1, n);
            c.all_reduce_sum(&mut sum).unwrap();
            let mut sum64 = vec![r as f64 * 0.1, 1.0 / (r as f64 + 3.0)];
            c.all_reduce_sum_f64(&mut sum64).unwrap();
            let scattered = c.reduce_scatter_sum(&random(100 + r as u64, total), counts).unwrap();
            let own = random(200 + r as u64, counts[r]);
            let gathered = c.all_gather(&own, counts).unwrap();
            let mut b = if r == size - 1 { random(300, 17) } else { vec![0.0; 17] };
            c.broadcast(&mut b, size - 1).unwrap();
            let mut bytes = if r == 0 { b"hello ranks".to_vec() } else { Vec::new() };
            c.broadcast_bytes(&mut bytes, 0).unwrap();
            c.barrier().unwrap();
            (sum, sum64, scattered, gathered, b, bytes)
        });
        // The sequential sum, in rank order.
        let mut expect = random(1, n);
        for r in 1..size {
            for (e, x) in expect.iter_mut().zip(random(r as u64 + 1, n)) {
                *e += x;
            }
        }
        let mut rs_sum = random(100, total);
        for r in 1..size {
            for (e, x) in rs_sum.iter_mut().zip(random(100 + r as u64, total)) {
                *e += x;
            }
        }
        let gathered: Vec<f32> = (0..size).flat_map(|r| random(200 + r as u64, counts[r])).collect();
        let mut start = 0;
        for (r, (sum, sum64, scattered, g, b, bytes)) in results.iter().enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(sum), bits(&expect), "all_reduce on rank {r} of {size}");
            let e64: f64 = (0..size).map(|q| q as f64 * 0.1).fold(0.0, |a, x| a + x);
            assert_eq!(sum64[0].to_bits(), e64.to_bits());
            assert_eq!(sum64[1].to_bits(), results[0].1[1].to_bits());
            assert_eq!(bits(scattered), bits(&rs_sum[start..start + counts[r]]), "reduce_scatter rank {r}");
            start += counts[r];
            assert_eq!(bits(g), bits(&gathered), "all_gather rank {r}");
            assert_eq!(bits(b), bits(&random(300, 17)), "broadcast rank {r}");
            assert_eq!(bytes, b"hello ranks");
        }
    }
}

/// The tensor collectives (the gradient buckets' path) give what the host-buffer ones give,
/// as new 1-D f32 tensors, with ragged counts (a rank with no share included), and refuse a
/// tensor that is not 1-D f32.
#[test]
fn tensor_collectives_match_the_host_ones() {
    use polylm_engine::{DType, Tensor};
    let size = 3;
    let counts = vec![5usize, 0, 1203];
    let total: usize = counts.iter().sum();
    let cs = counts.clone();
    let results = on_ranks(size, Duration::from_secs(20), move |r, c| {
        let counts = &cs;
        let t = |v: Vec<f32>| {
            let n = v.len();
            Tensor::from_vec(v, &[n]).unwrap()
        };
        let mut host_sum = random(400 + r as u64, 777);
        let sum = c.all_reduce_sum_tensor(&t(host_sum.clone())).unwrap();
        c.all_reduce_sum(&mut host_sum).unwrap();
        let input = random(500 + r as u64, total);
        let share = c.reduce_scatter_sum_tensor(&t(input.clone()), counts).unwrap();
        let host_share = c.reduce_scatter_sum(&input, counts).unwrap();
        let own = random(600 + r as u64, counts[r]);
        let all = c.all_gather_tensor(&t(own.clone()), counts).unwrap();
        let host_all = c.all_gather(&own, counts).unwrap();
        let wrong = Tensor::from_vec(vec![1.0f32; 6], &[2, 3]).unwrap();
        let refused = c.all_reduce_sum_tensor(&wrong).is_err()
            && c.all_reduce_sum_tensor(&t(vec![1.0; 4]).to_dtype(DType::BF16).unwrap()).is_err();
        let shapes = [sum.shape().to_vec(), share.shape().to_vec(), all.shape().to_vec()];
        let dtypes = [sum.dtype(), share.dtype(), all.dtype()];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let same = [
            bits(&sum.to_vec::<f32>().unwrap()) == bits(&host_sum),
            bits(&share.to_vec::<f32>().unwrap()) == bits(&host_share),
            bits(&all.to_vec::<f32>().unwrap()) == bits(&host_all),
        ];
        (same, shapes, dtypes, refused)
    });
    for (r, (same, shapes, dtypes, refused)) in results.into_iter().enumerate() {
        assert_eq!(same, [true; 3], "rank {r}: tensor and host collectives differ");
        assert_eq!(shapes, [vec![777], vec![counts[r]], vec![total]], "rank {r}");
        assert!(dtypes.iter().all(|&d| d == DType::F32), "rank {r}");
        assert!(refused, "rank {r}: a 2-D or bf16 tensor was accepted");
    }
}

#[test]
fn a_missing_rank_is_named_and_a_hung_rank_times_out() {
    // Rank 2 of 3 never arrives: rank 0 names it, rank 1 fails as rank 0 gives up. (5 s, so
    // that rank 1 surely arrives in time on a loaded machine.) Rank 1 starts once rank 0 holds
    // the port, so that it cannot meet anything else there (CI seen once: rank 1 missing too).
    let port = free_port().unwrap();
    let t = Instant::now();
    let connect = move |r| {
        std::thread::spawn(move || TcpCollective::connect(&world(r, 3, port), Duration::from_secs(5)))
    };
    let root = connect(0);
    while std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let handles = [root, connect(1)];
    let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    match &res[0] {
        Err(e @ DistError::Missing { missing, .. }) => {
            assert_eq!(missing, &vec![2]);
            assert!(e.to_string().contains("did not arrive"), "{e}");
        }
        other => panic!("rank 0: {other:?}"),
    }
    assert!(res[1].is_err(), "rank 1 fails too");
    assert!(t.elapsed() < Duration::from_secs(15));

    // Rank 0 alone with nobody listening: a rank that cannot reach it says where it looked.
    let port = free_port().unwrap();
    let e = TcpCollective::connect(&world(1, 2, port), Duration::from_millis(500)).unwrap_err();
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");

    // Rank 1 joins, then hangs: rank 0's all-reduce times out naming it.
    let t = Instant::now();
    let res = on_ranks(2, Duration::from_secs(1), |r, c| {
        if r == 1 {
            std::thread::sleep(Duration::from_millis(2500));
            return Ok(());
        }
        let mut v = vec![1.0f32; 8];
        c.all_reduce_sum(&mut v).map_err(|e| e.to_string())
    });
    let e = res[0].as_ref().unwrap_err();
    assert!(e.contains("timed out") && e.contains("rank 1"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

// ----- end to end ------------------------------------------------------------------------------

/// A tokenizer and shards (three languages), built once.
fn prepared() -> &'static (PathBuf, PathBuf) {
    static PREPARED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PREPARED.get_or_init(|| prepare_small("dist-prepared", 600, 40, 40))
}

/// A run config in `out` with `micro` sequences per micro-batch and 128 tokens per step (two
/// micro-batches of 4 × 16 tokens in all ranks together).
fn write_config(out: &Path, steps: u64, micro: usize, extra: &str) -> PathBuf {
    let (tok, data) = prepared();
    let config = format!(
        r#"
[run]
name = "dist"
out_dir = {out:?}
seed = 7
device = "cpu"
threads = 1
{TINY_MODEL}
[tokenizer]
path = {tok:?}
[data]
dir = {data:?}
[optim]
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
[train]
steps = {steps}
seq_len = 16
micro_batch = {micro}
tokens_per_step = 128
[checkpoint]
every = 2
keep = 2
[eval]
every = 0
max_tokens_per_lang = 128
batch = 4
[log]
every = 1
progress = false
[dist]
backend = "tcp"
timeout_s = 20
{extra}
"#
    );
    std::fs::create_dir_all(out).expect("out dir");
    let path = out.join("run.toml");
    std::fs::write(&path, config).expect("config");
    path
}

/// Every parameter of a checkpoint, as f32, in order.
fn parameters(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let model = polylm_model::checkpoint::load(dir, polylm_engine::DType::F32).expect("checkpoint loads");
    model.params().named().into_iter().map(|(n, t)| (n, t.to_vec::<f32>().expect("f32"))).collect()
}

fn assert_close_losses(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for ((s1, x), (s2, y)) in a.iter().zip(b) {
        assert_eq!(s1, s2, "{what}");
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{what}: step {s1}: {x} vs {y}");
    }
}

fn assert_close_params(a: &Path, b: &Path, what: &str) {
    let (pa, pb) = (parameters(a), parameters(b));
    assert_eq!(pa.len(), pb.len());
    for ((na, va), (nb, vb)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{what}: {na}: {x} vs {y}");
        }
    }
}

fn launch2(config: &Path, extra: &[&str]) -> Output {
    let mut args =
        vec!["launch", "--nproc-per-node", "2", "--", "train", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    polylm(&args)
}

#[test]
fn two_ranks_match_one_rank_with_twice_the_micro_batch() {
    let single = scratch("single");
    let o = polylm(&["train", "--config", write_config(&single, 6, 4, "").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = losses(&single);
    assert_eq!(reference.len(), 6);
    let final_ckpt = |out: &Path| out.join("checkpoints/step-00000006");

    for (name, zero1) in [("ddp", false), ("zero1", true)] {
        let out = scratch(name);
        let config = write_config(&out, 6, 2, &format!("zero1 = {zero1}"));
        let o = launch2(&config, &[]);
        let log = text(&o);
        assert!(o.status.success(), "{name}: {log}");
        assert!(log.contains("× 2 ranks over tcp"), "{log}");
        assert_eq!(log.matches("parameters (").count(), 1, "only rank 0 prints: {log}");
        assert_close_losses(&reference, &losses(&out), name);
        assert_close_params(&final_ckpt(&single), &final_ckpt(&out), name);
        // The optimiser state is whole in the checkpoint (gathered under ZeRO-1).
        let opt = std::fs::read(final_ckpt(&out).join("optimizer.safetensors")).unwrap();
        let ref_opt = std::fs::read(final_ckpt(&single).join("optimizer.safetensors")).unwrap();
        assert_eq!(opt.len(), ref_opt.len(), "{name}");
    }
}

#[test]
fn a_two_rank_checkpoint_resumes_on_one_rank() {
    let single = scratch("resume-ref");
    let o = polylm(&["train", "--config", write_config(&single, 6, 4, "").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = losses(&single);

    let out = scratch("resume");
    let config = write_config(&out, 6, 2, "zero1 = true\n[debug]\nstop_after = 4\n");
    let o = launch2(&config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(losses(&out).len(), 4);
    // One rank with the micro-batch doubled continues the same global batches.
    let o = polylm(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        "train.micro_batch=4",
        "--set",
        "debug.stop_after=99",
    ]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("resuming at step 4"), "{log}");
    assert_close_losses(&reference, &losses(&out), "resumed");
    let last = |o: &Path| o.join("checkpoints/step-00000006");
    assert_close_params(&last(&single), &last(&out), "resumed");
}

fn spawn_rank(config: &Path, rank: usize, size: usize, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_polylm"))
        .args(["train", "--config", config.to_str().unwrap()])
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", size.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a rank")
}

/// Waits for `child` to exit (at most `limit`); its output and how long it took.
fn finish(child: Child, limit: Duration) -> (Output, Duration) {
    let t = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait"));
    while !waiter.is_finished() {
        if t.elapsed() > limit {
            // SAFETY: kill(2) of our own child, still unreaped (the waiter has not returned).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("rank {pid} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (waiter.join().expect("waiter"), t.elapsed())
}

/// Waits until the run in `out` has written a checkpoint.
fn wait_for_checkpoint(out: &Path) {
    let t = Instant::now();
    while !out.join("checkpoints/step-00000002/trainer_state.json").exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn failed_ranks_stop_the_others_within_the_timeout_and_the_checkpoint_survives() {
    // A rank that never arrives.
    let out = scratch("alone");
    let config = write_config(&out, 4, 2, "").to_str().unwrap().to_string();
    let config = Path::new(&config);
    std::fs::write(
        config,
        std::fs::read_to_string(config).unwrap().replace("timeout_s = 20", "timeout_s = 2"),
    )
    .unwrap();
    let (o, took) = finish(spawn_rank(config, 0, 2, free_port().unwrap()), Duration::from_secs(30));
    let log = text(&o);
    assert!(!o.status.success(), "{log}");
    assert!(log.contains("rank(s) [1]") && log.contains("did not arrive"), "{log}");
    assert!(took < Duration::from_secs(15), "{took:?}");

    for (name, signal) in [("died", libc::SIGKILL), ("hung", libc::SIGSTOP)] {
        let out = scratch(name);
        let config = write_config(&out, 100_000, 2, "");
        std::fs::write(
            &config,
            std::fs::read_to_string(&config).unwrap().replace("timeout_s = 20", "timeout_s = 2"),
        )
        .unwrap();
        let port = free_port().unwrap();
        let root = spawn_rank(&config, 0, 2, port);
        let mut other = spawn_rank(&config, 1, 2, port);
        wait_for_checkpoint(&out);
        // SAFETY: a signal to our own running child.
        unsafe {
            libc::kill(other.id() as i32, signal);
        }
        let (o, took) = finish(root, Duration::from_secs(30));
        let _ = other.kill();
        let _ = other.wait();
        let log = text(&o);
        assert!(!o.status.success(), "{name}: {log}");
        assert!(log.contains("rank 1"), "{name}: {log}");
        if name == "hung" {
            assert!(log.contains("timed out"), "{log}");
        }
        assert!(took < Duration::from_secs(20), "{name}: {took:?}");
        // The latest checkpoint is whole: one rank resumes from it.
        let latest =
            polylm_trainer::checkpoint::latest(&out.join("checkpoints")).unwrap().expect("a checkpoint");
        let step: u64 = latest.file_name().unwrap().to_string_lossy()[5..].parse().unwrap();
        let o = polylm(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--set",
            "train.micro_batch=4",
            "--steps",
            &(step + 1).to_string(),
        ]);
        let log = text(&o);
        assert!(o.status.success(), "{name}: {log}");
        assert!(log.contains(&format!("resuming at step {step}")), "{log}");
    }
}

#[test]
fn launch_forwards_a_failure() {
    let out = scratch("launch-fail");
    let config = write_config(&out, 4, 2, "");
    // A tokens_per_step that is not a multiple of micro_batch × seq_len × world fails on every
    // rank; the launcher stops and exits non-zero with the error shown.
    let o = launch2(&config, &["--set", "train.tokens_per_step=96"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("tokens_per_step"), "{}", text(&o));
}

#[test]
fn launch_and_bench_allreduce_refuse_absurd_arguments() {
    // A mistyped rank count starts nothing (no flood of processes); a buffer larger than the
    // machine's memory is refused before it is allocated.
    for (args, want) in
        [(["--nproc-per-node", "100000"], "is more than"), (["--nproc-per-node", "0"], "at least 1")]
    {
        let mut all = vec!["launch"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--", "bench", "--preset", "tiny", "--device", "cpu"]);
        let o = polylm(&all);
        assert!(!o.status.success() && text(&o).contains(want), "{}", text(&o));
    }
    for (args, want) in [
        (&["--sizes-mib", "100000000"][..], "does not fit"),
        (&["--sizes-mib", "1", "--iters", "0"][..], "--iters must be at least 1"),
        (&["--sizes-mib", "1", "--timeout-s=-1"][..], "--timeout-s must be a positive number"),
    ] {
        let mut all = vec!["bench-allreduce", "--backend", "tcp"];
        all.extend_from_slice(args);
        let o = polylm(&all);
        assert!(!o.status.success() && text(&o).contains(want), "{}", text(&o));
    }
}

/// The per-step communication fields of a run's metrics: (buckets, buckets sent during the
/// backward pass).
fn bucket_counts(out: &Path) -> Vec<(u64, u64)> {
    step_records(out)
        .into_iter()
        .map(|v| {
            let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or_else(|| panic!("{k} in {v}"));
            (field("grad_buckets"), field("grad_buckets_during_backward"))
        })
        .collect()
}

#[test]
fn gradient_sums_start_during_the_backward_pass_and_change_nothing() {
    // Buckets of 2,048 values, so the tiny model's gradients travel in many of them.
    for zero1 in [false, true] {
        let run = |overlap: bool| {
            let out = scratch(&format!("overlap-{zero1}-{overlap}"));
            let extra = format!("zero1 = {zero1}\nbucket_mb = 0.0078125\noverlap = {overlap}");
            let o = launch2(&write_config(&out, 4, 2, &extra), &[]);
            assert!(o.status.success(), "zero1 {zero1} overlap {overlap}: {}", text(&o));
            out
        };
        let (on, off) = (run(true), run(false));
        for (buckets, during) in bucket_counts(&on) {
            assert!(buckets > 4, "zero1 {zero1}: {buckets} buckets");
            // Every bucket but the last, partly filled one leaves while the backward pass runs.
            assert!(
                during + 1 >= buckets && during >= 1,
                "zero1 {zero1}: {during} of {buckets} during backward"
            );
        }
        assert!(bucket_counts(&off).iter().all(|&(b, d)| b > 4 && d == 0), "zero1 {zero1}");
        // The same sums, so bit-identical losses and parameters.
        assert_eq!(losses(&on), losses(&off), "zero1 {zero1}");
        let last = |o: &Path| parameters(&o.join("checkpoints/step-00000004"));
        assert!(last(&on) == last(&off), "zero1 {zero1}: parameters differ");
    }
}

/// The number in the `|`-separated cell `i` of a Markdown table row.
fn cell(row: &str, i: usize) -> f64 {
    row.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .nth(i)
        .and_then(|c| c.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn bench_times_the_data_parallel_path_beside_the_plain_one() {
    let o = polylm(&[
        "bench", "--preset", "tiny", "--batch", "2", "--seq", "16", "--steps", "1", "--device", "cpu",
        "--ddp", "tcp",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.starts_with("data parallel")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("1 × tcp") && line.contains("against the plain step"), "{line}");
    let overhead: f64 = line
        .split_whitespace()
        .find(|w| w.ends_with('%'))
        .and_then(|w| w.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no overhead in {line}"));
    assert!(overhead.is_finite() && overhead > -100.0, "{line}");
    // Where the time before the timed steps went.
    let setup =
        out.lines().find(|l| l.starts_with("setup")).unwrap_or_else(|| panic!("no setup line in {out}"));
    let seconds: Vec<f64> = setup.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(seconds.len() == 2 && seconds.iter().all(|s| s.is_finite() && *s >= 0.0), "{setup}");
    // A bad bucket size or backend is a usage error, not a panic.
    let o =
        polylm(&["bench", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--ddp", "carrier-pigeon"]);
    assert!(!o.status.success() && text(&o).contains("carrier-pigeon"), "{}", text(&o));
    // Micro-batches per step: the step covers all of them (and the data-parallel path sums on
    // the last); zero is a usage error.
    let o = polylm(&[
        "bench", "--preset", "tiny", "--batch", "2", "--seq", "16", "--steps", "1", "--device", "cpu",
        "--accum", "3", "--ddp", "tcp",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("batch 2 × seq 16 × 3 micro-batches per step"), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("data parallel")),
        "{}",
        text(&o)
    );
    let o = polylm(&["bench", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--accum", "0"]);
    assert!(!o.status.success() && text(&o).contains("--accum and --steps at least 1"), "{}", text(&o));
    let o = polylm(&["bench", "--preset", "tiny", "--steps", "0", "--device", "cpu"]);
    assert!(!o.status.success() && text(&o).contains("--steps at least 1"), "{}", text(&o));
    let o = polylm(&["bench", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--peak-tflops=-5"]);
    assert!(
        !o.status.success() && text(&o).contains("--peak-tflops must be a positive number"),
        "{}",
        text(&o)
    );
    // The kernel profile times GPU kernels: on the CPU it is a usage error that says so.
    let o = polylm(&["bench", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--profile"]);
    assert!(!o.status.success() && text(&o).contains("--profile times GPU kernels"), "{}", text(&o));
}

#[test]
fn bench_allreduce_reports_bandwidth_over_two_ranks() {
    let args = [
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "bench-allreduce",
        "--backend",
        "tcp",
        "--sizes-mib",
        "0.25,1",
        "--iters",
        "2",
    ];
    let o = polylm(&args);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("all-reduce over 2 rank(s), tcp backend"), "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| ") && l.contains("MiB")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        let (ms, algbw, busbw) = (cell(row, 1), cell(row, 2), cell(row, 3));
        assert!(ms > 0.0 && algbw > 0.0, "{row}");
        // Two ranks: bus bandwidth = algorithm bandwidth × 2(n − 1)/n = algorithm bandwidth.
        assert!((busbw - algbw).abs() <= 0.01 * algbw + 0.01, "{row}");
        // TCP has no device path.
        assert!(row.contains('–'), "{row}");
    }
    let o = polylm(&["bench-allreduce", "--backend", "tcp", "--sizes-mib", "0"]);
    assert!(!o.status.success() && text(&o).contains("--sizes-mib"), "{}", text(&o));
}
