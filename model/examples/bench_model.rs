//! Model benchmarks, one measurement per process so that peak memory means something:
//!
//! ```sh
//! # forward+backward tokens/s of a preset (threads from RAYON_NUM_THREADS)
//! cargo run --release -p polylm-model --example bench_model -- train tiny 8 128 5 [recompute]
//! # write a random PolyLM-1.7B checkpoint (bf16) into DIR, then time loading it
//! cargo run --release -p polylm-model --example bench_model -- write-1.7b /tmp/polylm-1.7b
//! cargo run --release -p polylm-model --example bench_model -- load /tmp/polylm-1.7b
//! # generation tokens/s with and without the KV cache
//! cargo run --release -p polylm-model --example bench_model -- generate small 16 200
//! ```
//!
//! Each mode prints one JSON line. `scripts/bench_gpt2_vs_torch.py` runs the training mode
//! side by side with PyTorch `transformers`.

use std::path::Path;
use std::time::Instant;

use polylm_engine::{DType, Rng};
use polylm_model::safetensors::{write_streaming, write_text_atomic, Dtype, TensorSpec};
use polylm_model::{checkpoint, hf_config, param_specs, Batch, Gpt, ModelConfig, SamplingParams};

/// A field of /proc/self/status in MiB (VmHWM: peak resident, VmRSS: resident now).
fn status_mib(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn arg(args: &[String], i: usize, what: &str) -> String {
    args.get(i).cloned().unwrap_or_else(|| {
        eprintln!("missing argument {i}: {what}");
        std::process::exit(2)
    })
}

fn num(args: &[String], i: usize, what: &str) -> usize {
    arg(args, i, what).parse().unwrap_or_else(|_| {
        eprintln!("argument {i} ({what}) must be a number");
        std::process::exit(2)
    })
}

fn train(args: &[String]) -> polylm_model::Result<()> {
    let preset = arg(args, 2, "preset");
    let (batch, seq, steps) = (num(args, 3, "batch"), num(args, 4, "seq"), num(args, 5, "steps"));
    let recompute = args.get(6).is_some_and(|a| a == "recompute");
    let cfg = ModelConfig::preset(&preset)?;
    let model = Gpt::new(cfg.clone(), DType::F32, 0)?;
    let mut rng = Rng::new(1);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let b = Batch { ids: &ids, batch, seq };
    let mut times = Vec::new();
    let mut loss = 0.0;
    for step in 0..=steps {
        model.params().zero_grad();
        let t = Instant::now();
        loss = model.forward_backward(&b, &targets, None, recompute)?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64()); // step 0 is warm-up
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\": \"polylm\", \"preset\": \"{preset}\", \"batch\": {batch}, \"seq\": {seq}, \"recompute\": {recompute}, \"threads\": \"{}\", \"median_step_s\": {median:.4}, \"tokens_per_s\": {:.1}, \"peak_rss_mib\": {:.1}, \"loss\": {loss:.4}}}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        (batch * seq) as f64 / median,
        status_mib("VmHWM:")
    );
    Ok(())
}

/// A random PolyLM-1.7B checkpoint in bf16, written tensor by tensor (never all in memory).
fn write_17b(args: &[String]) -> polylm_model::Result<()> {
    let dir = Path::new(&arg(args, 2, "directory")).to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| polylm_model::ModelError::Io { path: dir.clone(), source: e })?;
    let cfg = ModelConfig::preset("polylm-1.7b")?;
    let specs: Vec<TensorSpec> = param_specs(&cfg)
        .into_iter()
        .map(|(name, shape)| TensorSpec { name, dtype: Dtype::BF16, shape })
        .collect();
    let mut rng = Rng::new(7);
    let t = Instant::now();
    write_streaming(&dir.join(checkpoint::WEIGHTS_FILE), &specs, &Default::default(), |i| {
        let n: usize = specs[i].shape.iter().product();
        let mut bytes = Vec::with_capacity(2 * n);
        for _ in 0..n {
            // Uniform in [-0.01, 0.01): cheap, and never exactly 0 in practice.
            let x = (rng.uniform() as f32 - 0.5) * 0.02;
            bytes.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
        }
        Ok(std::borrow::Cow::Owned(bytes))
    })?;
    write_text_atomic(&dir.join(checkpoint::CONFIG_FILE), &hf_config::to_hf_json(&cfg, "bfloat16"))?;
    println!(
        "{{\"mode\": \"write-1.7b\", \"params\": {}, \"seconds\": {:.1}}}",
        cfg.param_count(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn load(args: &[String]) -> polylm_model::Result<()> {
    let dir = arg(args, 2, "directory");
    let dtype = if args.get(3).is_some_and(|a| a == "f32") { DType::F32 } else { DType::BF16 };
    let before = status_mib("VmRSS:");
    let t = Instant::now();
    let model = checkpoint::load(Path::new(&dir), dtype)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"mode\": \"load\", \"dtype\": \"{}\", \"params\": {}, \"seconds\": {secs:.2}, \"rss_before_mib\": {before:.0}, \"rss_after_mib\": {:.0}, \"peak_rss_mib\": {:.0}, \"weights_mib\": {:.0}}}",
        dtype.name(),
        model.params().numel(),
        status_mib("VmRSS:"),
        status_mib("VmHWM:"),
        (model.params().numel() * dtype.size_in_bytes() as u64) as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn generate(args: &[String]) -> polylm_model::Result<()> {
    let preset = arg(args, 2, "preset");
    let (prompt_len, new) = (num(args, 3, "prompt length"), num(args, 4, "new tokens"));
    let cfg = ModelConfig::preset(&preset)?;
    let model = Gpt::new(cfg.clone(), DType::F32, 0)?;
    let mut rng = Rng::new(2);
    let prompt: Vec<u32> = (0..prompt_len).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let params = SamplingParams { max_new_tokens: new, ..Default::default() };
    let prompts = vec![prompt];
    let t = Instant::now();
    let cached = model.generate(&prompts, &params)?;
    let t_cached = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let uncached = if args.get(5).is_some_and(|a| a == "cached-only") {
        cached.clone()
    } else {
        model.generate_uncached(&prompts, &params)?
    };
    let t_uncached = t.elapsed().as_secs_f64();
    let n = cached[0].tokens.len();
    println!(
        "{{\"mode\": \"generate\", \"preset\": \"{preset}\", \"prompt\": {prompt_len}, \"new_tokens\": {n}, \"threads\": \"{}\", \"cached_tok_s\": {:.1}, \"uncached_tok_s\": {:.1}, \"same_tokens\": {}}}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        n as f64 / t_cached,
        uncached[0].tokens.len() as f64 / t_uncached,
        cached == uncached
    );
    Ok(())
}

fn main() {
    // As a training program would: keep large freed buffers for the next step (see
    // `polylm_engine::tune_host_allocator`); `POLYLM_DEFAULT_MALLOC=1` leaves glibc's defaults.
    if std::env::var_os("POLYLM_DEFAULT_MALLOC").is_none() {
        polylm_engine::tune_host_allocator();
    }
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("train") => train(&args),
        Some("write-1.7b") => write_17b(&args),
        Some("load") => load(&args),
        Some("generate") => generate(&args),
        _ => {
            eprintln!("usage: bench_model train|write-1.7b|load|generate ... (see the file's doc comment)");
            std::process::exit(2)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
