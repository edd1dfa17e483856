//! `polylm bench`: training throughput of a model preset on this machine: tokens per second of
//! whole optimiser steps (forward, backward, clipping norm, AdamW) and model FLOPs
//! utilisation, with FLOPs counted as the spec counts them:
//! `6 · (non-embedding parameters + LM-head matmul) + 12 · layers · seq · hidden` per token.
//! With a data-parallel backend it also times the same steps with the gradients summed over the
//! ranks in buckets during the backward pass (the training loop's path), for the overhead of
//! that path against the plain one.
//!
//! `polylm bench-allreduce`: all-reduce bandwidth of a data-parallel backend ([`all_reduce`]).

use std::time::Instant;

use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Device, Rng, Tensor};
use polylm_kernels::cuda::profile::KernelTime;
use polylm_model::{Batch, Gpt, ModelConfig};

use crate::dist::Collective;
use crate::error::Result;
use crate::train::DataParallel;

/// What to measure.
pub struct BenchOptions {
    /// The model config.
    pub config: ModelConfig,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step (their gradients accumulate; at least 1).
    pub accum: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Where to run.
    pub device: Device,
    /// Parameter precision (f32 master weights either way).
    pub dtype: DType,
    /// Recompute activations in the backward pass.
    pub recompute: bool,
    /// The device's dense peak in TFLOP/s for the utilisation figure (none: not reported).
    pub peak_tflops: Option<f64>,
    /// Also time the data-parallel path over this collective, with gradient buckets of this
    /// many f32 values.
    pub data_parallel: Option<(Box<dyn Collective>, usize)>,
    /// After the timed steps, one more plain step with every GPU kernel timed (GPU only).
    pub profile: bool,
}

impl std::fmt::Debug for BenchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchOptions")
            .field("config", &self.config)
            .field("batch", &self.batch)
            .field("accum", &self.accum)
            .field("seq", &self.seq)
            .field("steps", &self.steps)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("recompute", &self.recompute)
            .field("profile", &self.profile)
            .field("peak_tflops", &self.peak_tflops)
            .field(
                "data_parallel",
                &self.data_parallel.as_ref().map(|(c, b)| (c.backend(), c.world_size(), b)),
            )
            .finish()
    }
}

/// The measurement.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Seconds per optimiser step.
    pub step_s: f64,
    /// Model FLOPs per token (spec formula).
    pub flops_per_token: f64,
    /// Achieved TFLOP/s.
    pub tflops: f64,
    /// `tflops / peak` when a peak is known.
    pub mfu: Option<f64>,
    /// Peak device memory in bytes (GPU only).
    pub peak_memory: Option<usize>,
    /// The data-parallel path's figures, when asked for.
    pub data_parallel: Option<DataParallelReport>,
    /// Device time per kernel family over one plain step, when asked for.
    pub profile: Option<Vec<KernelTime>>,
    /// Seconds spent before the first step: drawing the initial weights, moving them to the
    /// device, the optimiser state and the cast to the training dtype.
    pub setup_s: f64,
    /// Seconds of the untimed warm-up step (on a GPU it loads the kernels).
    pub warmup_s: f64,
}

/// The same steps through the data-parallel path.
#[derive(Clone, Debug)]
pub struct DataParallelReport {
    /// The backend's name.
    pub backend: &'static str,
    /// Ranks.
    pub world: usize,
    /// Seconds per optimiser step.
    pub step_s: f64,
    /// Training tokens per second of this rank.
    pub tokens_per_s: f64,
    /// `step_s` over the plain path's, minus one.
    pub overhead: f64,
    /// Gradient buckets per step, and how many left during the backward pass.
    pub buckets: (usize, usize),
}

/// Training FLOPs per token of `config` at sequence length `seq`, as the spec counts them.
pub fn flops_per_token(config: &ModelConfig, seq: usize) -> f64 {
    let (v, c, l) = (config.vocab_size as f64, config.hidden as f64, config.layers as f64);
    let non_embedding = config.param_count() as f64 - config.embedding_params() as f64;
    6.0 * (non_embedding + v * c) + 12.0 * l * seq as f64 * c
}

/// Runs the benchmark: random tokens, one warm-up step, then `steps` timed steps.
pub fn run(opts: BenchOptions) -> Result<BenchReport> {
    crate::setup::check_model_fits(&opts.config, opts.dtype, opts.device)?;
    let setup_start = Instant::now();
    let mut model = Gpt::new(opts.config.clone(), DType::F32, 7)?;
    model.params_mut().to_device(opts.device)?;
    let decays = crate::train::weight_decays(&model, 0.1);
    let mut opt = {
        let named = model.params().named();
        let ps: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        AdamW::new(&ps, &decays, AdamWHyper::default())?
    };
    if opts.dtype != DType::F32 {
        for (_, p) in model.params_mut().named_mut() {
            *p = p.to_dtype(opts.dtype)?.requires_grad();
        }
    }
    let mut rng = Rng::new(3);
    let accum = opts.accum.max(1);
    let n = opts.batch * opts.seq;
    let vocab = opts.config.vocab_size as u64;
    let ids: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let batch = Batch { ids: &ids, batch: opts.batch, seq: opts.seq };
    let recompute = opts.recompute;
    let with_dp = opts.data_parallel.is_some();
    let mut dp = opts.data_parallel.map(|(comm, bucket)| DataParallel::over(comm, bucket));
    let mut buckets = (0, 0);
    // One optimiser step; `data_parallel` sums the gradients over the ranks during the
    // backward pass, as the training loop does.
    let mut step = |model: &mut Gpt, data_parallel: bool| -> Result<()> {
        model.params().zero_grad();
        // All micro-batches but the last accumulate their gradients; the last one's backward
        // pass is where the data-parallel path sums them, as in the training loop.
        for _ in 1..accum {
            model.forward_backward(&batch, &targets, None, recompute)?;
        }
        let norm = match dp.as_mut().filter(|_| data_parallel) {
            Some(d) => {
                let model = &*model;
                let (_, sum_sq, stats) = d.backward_and_reduce(model, true, |on_final| {
                    Ok(model.forward_backward_with(&batch, &targets, None, recompute, on_final)?)
                })?;
                buckets = (stats.buckets, stats.during_backward);
                sum_sq.sqrt()
            }
            None => {
                model.forward_backward(&batch, &targets, None, recompute)?;
                let named = model.params().named();
                let ps: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
                global_grad_norm(&ps)?
            }
        };
        let clip = (1.0 / (norm + 1e-6)).min(1.0);
        let mut named = model.params_mut().named_mut();
        let mut ps: Vec<&mut Tensor> = named.iter_mut().map(|(_, t)| &mut **t).collect();
        opt.step(&mut ps, 1e-4, clip)?;
        Ok(())
    };
    // The warm-up step's seconds, then the mean of the timed steps'.
    let time_steps = |step: &mut dyn FnMut(&mut Gpt, bool) -> Result<()>,
                      model: &mut Gpt,
                      data_parallel: bool|
     -> Result<(f64, f64)> {
        let warmup = Instant::now();
        step(model, data_parallel)?;
        opts.device.synchronize()?;
        let warmup_s = warmup.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..opts.steps {
            step(model, data_parallel)?;
        }
        opts.device.synchronize()?;
        Ok((warmup_s, start.elapsed().as_secs_f64() / opts.steps.max(1) as f64))
    };
    opts.device.synchronize()?;
    let setup_s = setup_start.elapsed().as_secs_f64();
    opts.device.reset_peak_memory();
    let (warmup_s, step_s) = time_steps(&mut step, &mut model, false)?;
    let peak_memory = opts.device.memory_report().map(|r| r.peak_in_use);
    let profile = match opts.device {
        Device::Cuda(ordinal) if opts.profile => {
            let dev = polylm_engine::cuda_device(ordinal)?;
            dev.set_profiling(true);
            let stepped = step(&mut model, false);
            let rows = dev.profile();
            dev.set_profiling(false);
            stepped?;
            Some(rows.map_err(|e| polylm_engine::Error::Cuda { op: "profile", message: e.to_string() })?)
        }
        _ => None,
    };
    let dp_step_s = if with_dp { Some(time_steps(&mut step, &mut model, true)?.1) } else { None };
    let tokens_per_s = (accum * n) as f64 / step_s;
    let fpt = flops_per_token(&opts.config, opts.seq);
    let tflops = tokens_per_s * fpt / 1e12;
    Ok(BenchReport {
        tokens_per_s,
        step_s,
        flops_per_token: fpt,
        tflops,
        mfu: opts.peak_tflops.map(|p| tflops / p),
        peak_memory,
        profile,
        setup_s,
        warmup_s,
        data_parallel: dp_step_s.zip(dp.as_ref()).map(|(s, d)| DataParallelReport {
            backend: d.backend(),
            world: d.world_size(),
            step_s: s,
            tokens_per_s: (accum * n) as f64 / s,
            overhead: s / step_s - 1.0,
            buckets,
        }),
    })
}

/// The profile as a table: each kernel family's launches, device milliseconds and share of the
/// summed kernel time, then the sum against `step_s` (the unprofiled step: the difference is
/// time the device spent idle or in work not launched through the kernels' wrappers).
pub fn profile_table(rows: &[KernelTime], step_s: f64) -> String {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let mut out = String::from("profile (one step, device time per kernel family, CUDA events):\n");
    out += &format!("  {:<28} {:>7} {:>10} {:>7}\n", "family", "calls", "ms", "share");
    for r in rows {
        let share = if total > 0.0 { 100.0 * r.ms / total } else { 0.0 };
        out += &format!("  {:<28} {:>7} {:>10.3} {:>6.1}%\n", r.name, r.calls, r.ms, share);
    }
    out += &format!(
        "  {:<28} {:>7} {:>10.3}   ({:.1}% of the {:.3} ms step)\n",
        "kernels in all",
        rows.iter().map(|r| r.calls).sum::<usize>(),
        total,
        if step_s > 0.0 { total / (step_s * 1e3) * 100.0 } else { 0.0 },
        step_s * 1e3
    );
    out
}

/// One size of [`all_reduce`]: seconds per all-reduce through the backend's host-buffer path
/// (what the training loop calls) and, for a device backend, of buffers already on the device.
#[derive(Clone, Debug)]
pub struct AllReduceRow {
    /// Bytes reduced (f32 values × 4).
    pub bytes: usize,
    /// Seconds per call of [`Collective::all_reduce_sum`] on a host buffer.
    pub host_s: f64,
    /// Seconds per call on a device buffer ([`Collective::device_all_reduce_seconds`]).
    pub device_s: Option<f64>,
}

impl AllReduceRow {
    /// Algorithm bandwidth of `seconds`: bytes over time, in GB/s.
    pub fn algbw(&self, seconds: f64) -> f64 {
        self.bytes as f64 / seconds / 1e9
    }

    /// Bus bandwidth of `seconds` for `world` ranks, as nccl-tests count it for an all-reduce:
    /// the algorithm bandwidth times 2(n − 1)/n (so 0 for one rank, whose all-reduce moves
    /// nothing between ranks), in GB/s.
    pub fn busbw(&self, seconds: f64, world: usize) -> f64 {
        let n = world.max(1) as f64;
        self.algbw(seconds) * 2.0 * (n - 1.0) / n
    }
}

/// Times all-reduces of `sizes` bytes (rounded down to whole f32 values, at least one) over
/// `comm`, `iters` calls each after one warm-up. Collective: every rank calls it with the same
/// arguments.
pub fn all_reduce(comm: &mut dyn Collective, sizes: &[usize], iters: usize) -> Result<Vec<AllReduceRow>> {
    let mut rows = Vec::with_capacity(sizes.len());
    for &bytes in sizes {
        let elems = (bytes / 4).max(1);
        let mut buf: Vec<f32> = (0..elems).map(|i| (i % 251) as f32 * 0.5 + 1.0).collect();
        comm.all_reduce_sum(&mut buf)?;
        comm.barrier()?;
        let start = Instant::now();
        for _ in 0..iters.max(1) {
            comm.all_reduce_sum(&mut buf)?;
        }
        let host_s = start.elapsed().as_secs_f64() / iters.max(1) as f64;
        let device_s = comm.device_all_reduce_seconds(elems, iters).transpose()?;
        rows.push(AllReduceRow { bytes: elems * 4, host_s, device_s });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_table_shares_add_up_and_compare_with_the_step() {
        let rows = vec![
            KernelTime { name: "gemm_tc", calls: 96, ms: 150.0 },
            KernelTime { name: "flash_fwd_hopper", calls: 24, ms: 30.0 },
            KernelTime { name: "memset", calls: 3, ms: 20.0 },
        ];
        let table = profile_table(&rows, 0.25);
        let line = |name: &str| table.lines().find(|l| l.trim_start().starts_with(name)).unwrap().to_string();
        assert!(
            line("gemm_tc").contains("96")
                && line("gemm_tc").contains("150.000")
                && line("gemm_tc").contains("75.0%")
        );
        assert!(line("memset").contains("10.0%"), "{table}");
        let all = line("kernels in all");
        assert!(
            all.contains("123") && all.contains("200.000") && all.contains("80.0% of the 250.000 ms step"),
            "{all}"
        );
        // An empty profile prints zeros, not NaN.
        assert!(!profile_table(&[], 0.0).contains("NaN"));
    }

    #[test]
    fn flops_match_the_spec_for_polylm_1_7b() {
        // The spec: PolyLM-1.7B ≈ 11.6 GFLOP per token at sequence 2048.
        let c = ModelConfig::preset("polylm-1.7b").expect("preset");
        let f = flops_per_token(&c, 2048) / 1e9;
        assert!((f - 11.6).abs() < 0.1, "{f} GFLOP/token");
        let c = ModelConfig::preset("polylm-13b").expect("preset");
        let f = flops_per_token(&c, 2048) / 1e9;
        assert!((f - 88.4).abs() < 0.5, "{f} GFLOP/token");
    }
}
