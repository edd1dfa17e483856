//! Training steps of whole models on the GPU: tokens per second and peak device memory of the
//! `small` preset, and of PolyLM-1.7B at sequence 2048 with activation recomputation.
//!
//! `cargo bench --bench gpu_model` (without a GPU it prints that it skipped). The products
//! and attention still run on the simple stand-in kernels (the tensor-core matmul and flash
//! attention are their own issues), so the speeds here are a floor, not the target; the
//! memory figures are what the allocator reports (`Device::memory_report`).

use std::time::Instant;

use polylm_engine::{DType, Device, Tensor};
use polylm_model::{param_specs, Batch, Gpt, ModelConfig, Params};

fn gb(bytes: usize) -> f64 {
    bytes as f64 / 1e9
}

/// One measured configuration.
#[derive(Clone, Copy)]
struct Run {
    name: &'static str,
    preset: &'static str,
    dtype: DType,
    batch: usize,
    seq: usize,
    recompute: bool,
    steps: usize,
}

fn step_report(run: &Run, dev: Device) -> polylm_model::Result<String> {
    let Run { name, preset, dtype, batch, seq, recompute, steps } = *run;
    let config = ModelConfig::preset(preset)?;
    let vocab = config.vocab_size as u32;
    let params = config.param_count();
    let t0 = Instant::now();
    // Constant weights built straight in the dtype (the spec's random init of 1.7B values
    // takes a minute on one core; speed and memory do not depend on the values).
    let tensors = param_specs(&config)
        .into_iter()
        .map(|(name, shape)| {
            let value = if name.ends_with("bias") {
                0.0
            } else if name.contains("ln_") {
                1.0
            } else {
                0.02
            };
            Ok(Tensor::full(&shape, value, dtype)?.to_device(dev)?)
        })
        .collect::<polylm_model::Result<Vec<_>>>()?;
    let layers = config.layers;
    let model = Gpt::from_params(config, Params::from_tensors(tensors, layers)?)?;
    let setup = t0.elapsed().as_secs_f64();
    let ids: Vec<u32> =
        (0..batch * seq).map(|i| ((i as u64 * 2_654_435_761) % u64::from(vocab)) as u32).collect();
    let targets: Vec<u32> = ids.iter().map(|&i| (i * 7 + 1) % vocab).collect();
    let b = Batch { ids: &ids, batch, seq };
    // Warm-up step (compiles kernels, fills the allocator's cache).
    model.forward_backward(&b, &targets, None, recompute)?;
    model.params().zero_grad();
    dev.synchronize()?;
    dev.reset_peak_memory();
    let t = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = model.forward_backward(&b, &targets, None, recompute)?;
        model.params().zero_grad();
    }
    dev.synchronize()?;
    let secs = t.elapsed().as_secs_f64() / steps as f64;
    let mem = dev.memory_report().unwrap_or_default();
    Ok(format!(
        "| {name} | {params} | {dtype} | {batch}×{seq} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {setup:.0} s |",
        if recompute { "yes" } else { "no" },
        (batch * seq) as f64 / secs,
        gb(mem.peak_in_use),
        gb(mem.peak_reserved),
        loss,
    ))
}

fn main() {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("gpu_model benchmark skipped: {e}");
            return;
        }
    };
    let mut lines = vec![
        "| model | parameters | dtype | batch×seq | recompute | tokens/s | peak in use GB | peak reserved GB | loss | setup |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let run = |name, preset, dtype, batch, seq, recompute, steps| Run {
        name,
        preset,
        dtype,
        batch,
        seq,
        recompute,
        steps,
    };
    let runs = [
        run("small", "small", DType::F32, 8, 256, false, 3),
        run("small", "small", DType::BF16, 8, 256, false, 3),
        run("small", "small", DType::BF16, 8, 256, true, 3),
        run("PolyLM-1.7B", "polylm-1.7b", DType::BF16, 1, 2048, true, 1),
        run("PolyLM-1.7B", "polylm-1.7b", DType::F32, 1, 2048, true, 1),
    ];
    for r in &runs {
        match step_report(r, dev) {
            Ok(line) => {
                println!("{line}");
                lines.push(line);
            }
            Err(e) => {
                println!("{} {}: failed: {e}", r.name, r.dtype);
                lines.push(format!(
                    "| {} | | {} | {}×{} | | failed: {e} | | | | |",
                    r.name, r.dtype, r.batch, r.seq
                ));
            }
        }
    }
    if let Some(path) = std::env::var_os("POLYLM_BENCH_OUT") {
        let _ = std::fs::write(path, lines.join("\n") + "\n");
    }
}
