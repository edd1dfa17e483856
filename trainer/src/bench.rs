//! `polylm bench`: training throughput of a model preset on this machine: tokens per second of
//! whole optimiser steps (forward, backward, clipping norm, AdamW) and model FLOPs
//! utilisation, with FLOPs counted as the spec counts them:
//! `6 · (non-embedding parameters + LM-head matmul) + 12 · layers · seq · hidden` per token.

use std::time::Instant;

use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Device, Rng, Tensor};
use polylm_model::{Batch, Gpt, ModelConfig};

use crate::error::Result;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The model config.
    pub config: ModelConfig,
    /// Sequences per step.
    pub batch: usize,
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
}

/// Training FLOPs per token of `config` at sequence length `seq`, as the spec counts them.
pub fn flops_per_token(config: &ModelConfig, seq: usize) -> f64 {
    let (v, c, l) = (config.vocab_size as f64, config.hidden as f64, config.layers as f64);
    let non_embedding = config.param_count() as f64 - config.embedding_params() as f64;
    6.0 * (non_embedding + v * c) + 12.0 * l * seq as f64 * c
}

/// Runs the benchmark: random tokens, one warm-up step, then `steps` timed steps.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
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
    let n = opts.batch * opts.seq;
    let vocab = opts.config.vocab_size as u64;
    let ids: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let batch = Batch { ids: &ids, batch: opts.batch, seq: opts.seq };
    let mut step = |model: &mut Gpt| -> Result<()> {
        model.params().zero_grad();
        model.forward_backward(&batch, &targets, None, opts.recompute)?;
        let norm = {
            let named = model.params().named();
            let ps: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
            global_grad_norm(&ps)?
        };
        let clip = (1.0 / (norm + 1e-6)).min(1.0);
        let mut named = model.params_mut().named_mut();
        let mut ps: Vec<&mut Tensor> = named.iter_mut().map(|(_, t)| &mut **t).collect();
        opt.step(&mut ps, 1e-4, clip)?;
        Ok(())
    };
    step(&mut model)?;
    opts.device.synchronize()?;
    opts.device.reset_peak_memory();
    let start = Instant::now();
    for _ in 0..opts.steps {
        step(&mut model)?;
    }
    opts.device.synchronize()?;
    let step_s = start.elapsed().as_secs_f64() / opts.steps.max(1) as f64;
    let tokens_per_s = n as f64 / step_s;
    let fpt = flops_per_token(&opts.config, opts.seq);
    let tflops = tokens_per_s * fpt / 1e12;
    Ok(BenchReport {
        tokens_per_s,
        step_s,
        flops_per_token: fpt,
        tflops,
        mfu: opts.peak_tflops.map(|p| tflops / p),
        peak_memory: opts.device.memory_report().map(|r| r.peak_in_use),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
