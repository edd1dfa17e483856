//! The training loop shared by `polylm train` (pretraining on shards with a language
//! curriculum) and `polylm sft` (instruction tuning): gradient accumulation, warmup + cosine
//! learning rate, global-norm clipping, AdamW with f32 master weights, non-finite step
//! skipping with rollback, periodic validation and checkpoints, exact resume, a progress bar,
//! a JSONL metrics file, and at the end the plots and samples.
//!
//! Memory contract of a step: gradients accumulate (`+=`) into each parameter's `.grad()` over
//! the micro-batches; the optimiser divides them by the number of micro-batches and multiplies
//! by the clip factor in its own pass, so no extra pass over the gradients is made.
//!
//! Data parallel (when the launcher's `WORLD_SIZE` is above 1, see [`crate::dist`] and
//! `docs/distributed.md`): every rank reads the same global stream of rows (the sampler with
//! the same seed) and keeps the rows of its block: of each global micro-batch of
//! `micro_batch × world` rows, rank `r` trains on rows `r·micro_batch .. (r+1)·micro_batch`.
//! So the union of the ranks' rows is exactly what one rank with a micro-batch of
//! `micro_batch × world` would train on, and the saved data position is the global one,
//! identical on every rank and independent of the world size: a checkpoint resumes with any
//! world size (keep `micro_batch × world` the same to keep the same batches).
//! `train.tokens_per_step` counts the tokens of all ranks. The gradients are summed over ranks
//! in f32 buckets (`[dist] bucket_mb`) that start travelling during the step's last backward
//! pass: the model reports each parameter as soon as its gradient is complete (the last
//! block's first), a full bucket goes to a communication thread at once, and the training
//! thread waits only for what is left when the backward pass ends (`[dist] overlap`; each
//! step's metrics record the buckets, how many left during the backward pass and the wait).
//! The mean is folded into the optimiser's gradient scale; the logged loss is the mean over
//! ranks. Only rank 0 writes checkpoints, metrics, plots and
//! samples and prints progress. With `[dist] zero1` each rank keeps the AdamW state of its
//! share of the parameters: gradients are reduce-scattered, each rank updates its share, the
//! parameters are all-gathered; a checkpoint gathers the whole optimiser state to save it
//! in the usual format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Device, Tensor};
use polylm_model::{Batch, Gpt};
use serde_json::{json, Value};

use crate::checkpoint::{self, SaveRequest, TrainerState, STATE_VERSION};
use crate::config::RunConfig;
use crate::data::{BatchSampler, Curriculum, Dataset, LangEval};
use crate::dist::{self, World};
use crate::error::{io_err, Result, TrainError};
use crate::metrics::MetricsLog;
use crate::run_lock::RunLock;
use crate::schedule::Schedule;
use crate::setup;
use crate::sft::{self, SftPacker};
use crate::tokenizer::RunTokenizer;

mod ddp;
mod report;

pub(crate) use ddp::DataParallel;
mod source;

use ddp::*;
use report::*;
use source::RankSlice;
pub use source::{BatchSource, SftSource, ShardSource, StepBatch};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Optimiser steps done.
    pub steps: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// The mean loss of the last logged interval.
    pub last_loss: f64,
    /// Validation results at the end (per language; one `sft` entry for SFT).
    pub valid: Vec<LangEval>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// Steps skipped for non-finite values.
    pub skipped_steps: u64,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
}

/// How the run validates.
pub(crate) enum Validation {
    /// Per-language loss and bits per byte on the shards' `valid` split.
    Shards(Arc<Dataset>),
    /// Response-token loss on SFT validation examples, per named group (per file of a folder).
    Sft(Vec<(String, Vec<sft::SftExample>)>),
    /// None available.
    Off,
}

/// Rank 0 (or the only process) holds the run folder's lock for the whole run.
fn lock_run_folder(config: &RunConfig) -> Result<Option<RunLock>> {
    if World::from_env()?.is_root() {
        Ok(Some(RunLock::acquire(&config.run.out_dir)?))
    } else {
        Ok(None)
    }
}

/// Pretrains as `config` says (the `polylm train` command).
pub fn train(config: &RunConfig) -> Result<RunSummary> {
    setup::set_threads(config.run.threads)?;
    let _lock = lock_run_folder(config)?;
    let log = |s: &str| eprintln!("{s}");
    let tokenizer = setup::ensure_tokenizer(config, &log)?;
    let dataset = setup::ensure_dataset(config, &tokenizer, &log)?;
    let subsets = config.data.subsets.clone();
    let stages = if config.curriculum.stages.is_empty() {
        Curriculum::default_stages_for(&dataset)
    } else {
        config.curriculum.stages.clone()
    };
    let curriculum = Curriculum::new(&stages, &subsets, &dataset, config.train.steps)?;
    let curriculum_names = stages.iter().map(|s| s.name.clone()).collect();
    let sampler = BatchSampler::new(dataset.clone(), curriculum, config.train.seq_len, config.run.seed);
    let source = ShardSource { sampler, curriculum_names };
    let validation =
        if dataset.langs("valid").is_empty() { Validation::Off } else { Validation::Shards(dataset.clone()) };
    let eos = dataset.eos_id();
    run_loop(config, &tokenizer, eos, Box::new(source), validation)
}

/// Fine-tunes on MultiAlpaca-format data as `config` says (the `polylm sft` command).
pub fn sft(config: &RunConfig) -> Result<RunSummary> {
    setup::set_threads(config.run.threads)?;
    let _lock = lock_run_folder(config)?;
    let section = config.sft.as_ref().ok_or_else(|| TrainError::Config {
        path: config.source.clone(),
        reason: "`polylm sft` needs an `[sft]` section with `train` (MultiAlpaca JSONL)".into(),
    })?;
    let tokenizer = setup::load_tokenizer(&config.tokenizer.path)?;
    let eos = sft_eos(config, &tokenizer)?;
    let groups = sft::load_sft_groups(&section.train)?;
    let files = groups.len();
    let examples: Vec<sft::SftExample> = groups.into_iter().flat_map(|(_, examples)| examples).collect();
    eprintln!(
        "sft data: {} examples from {}{}",
        examples.len(),
        section.train.display(),
        if files > 1 { format!(" ({files} files)") } else { String::new() }
    );
    let packer = SftPacker::new(&examples, &tokenizer, eos, config.train.seq_len, config.run.seed)?;
    if packer.truncated() > 0 {
        eprintln!(
            "warning: {} of {} SFT examples are longer than {} tokens and were cut",
            packer.truncated(),
            examples.len(),
            config.train.seq_len + 1
        );
    }
    let validation = match &section.valid {
        Some(p) => Validation::Sft(sft::load_sft_groups(p)?),
        None => Validation::Off,
    };
    run_loop(config, &tokenizer, eos, Box::new(SftSource { packer }), validation)
}

/// The id that ends each SFT example: the initial checkpoint's `eos_token_id` when its
/// `config.json` names one (what a released model was trained to end with, and what `polylm
/// generate` stops at), else the tokenizer's end-of-sequence id.
fn sft_eos(config: &RunConfig, tokenizer: &RunTokenizer) -> Result<u32> {
    let tokenizer_eos = eos_of(tokenizer);
    let Some(path) = &config.model.init_from else { return tokenizer_eos };
    let dir = checkpoint::resolve(path)?;
    let file = dir.join(polylm_model::checkpoint::CONFIG_FILE);
    let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
    let Some(eos) = polylm_model::hf_config::from_hf_json(&text)?.eos_token_id else { return tokenizer_eos };
    if eos as usize >= tokenizer.vocab_size() {
        return Err(TrainError::Usage(format!(
            "{}: eos_token_id {eos} is not an id of the tokenizer {} ({} ids)",
            file.display(),
            config.tokenizer.path.display(),
            tokenizer.vocab_size()
        )));
    }
    if let Ok(t) = tokenizer_eos {
        if t != eos {
            eprintln!("examples end with id {eos}, the checkpoint's eos_token_id (the tokenizer's end-of-sequence is {t})");
        }
    }
    Ok(eos)
}

/// The tokenizer's end-of-sequence id.
pub fn eos_of(tokenizer: &RunTokenizer) -> Result<u32> {
    tokenizer
        .eos()
        .ok_or_else(|| TrainError::Usage("the tokenizer has no end-of-sequence (</s>) token".into()))
}

/// Weight decay per parameter: none for biases and other 1-D parameters.
pub fn weight_decays(model: &Gpt, decay: f64) -> Vec<f64> {
    decays_for_shapes(model.params().named().iter().map(|(_, t)| t.rank()), decay)
}

fn decays_for_shapes(ranks: impl Iterator<Item = usize>, decay: f64) -> Vec<f64> {
    ranks.map(|rank| if rank >= 2 { decay } else { 0.0 }).collect()
}

fn hyper_of(config: &RunConfig) -> AdamWHyper {
    AdamWHyper { beta1: config.optim.beta1, beta2: config.optim.beta2, eps: config.optim.eps }
}

fn dtype_name(dtype: DType) -> &'static str {
    if dtype == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

/// A fresh model and optimiser (or the initial checkpoint's weights with a fresh optimiser):
/// f32 master weights made before the parameters are cast to the training precision.
fn fresh_model(
    config: &RunConfig,
    tokenizer: &RunTokenizer,
    eos: u32,
    device: Device,
    dtype: DType,
) -> Result<(Gpt, AdamW)> {
    let mut model = match &config.model.init_from {
        Some(path) => {
            let dir = checkpoint::resolve(path)?;
            let m = polylm_model::checkpoint::load(&dir, DType::F32)?;
            if m.config().vocab_size != tokenizer.vocab_size() {
                return Err(TrainError::Usage(format!(
                    "{} has a vocabulary of {} but the tokenizer {} has {}",
                    dir.display(),
                    m.config().vocab_size,
                    config.tokenizer.path.display(),
                    tokenizer.vocab_size()
                )));
            }
            m
        }
        None => {
            let mc = setup::model_config(config, tokenizer.vocab_size(), Some(eos))?;
            setup::check_model_fits(&mc, dtype, device)?;
            Gpt::new(mc, DType::F32, config.run.seed)?
        }
    };
    model.params_mut().to_device(device)?;
    let decays = weight_decays(&model, config.optim.weight_decay);
    let opt = {
        let named = model.params().named();
        let params: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        AdamW::new(&params, &decays, hyper_of(config))?
    };
    if dtype != DType::F32 {
        for (_, p) in model.params_mut().named_mut() {
            *p = p.to_dtype(dtype)?.requires_grad();
        }
    }
    Ok((model, opt))
}

fn run_loop(
    config: &RunConfig,
    tokenizer: &RunTokenizer,
    eos: u32,
    mut source: Box<dyn BatchSource>,
    validation: Validation,
) -> Result<RunSummary> {
    let out = &config.run.out_dir;
    let world = World::from_env()?;
    let is_root = world.is_root();
    let mut device = setup::resolve_device(&config.run.device)?;
    if world.world_size > 1 && !device.is_cpu() {
        // One GPU per local rank.
        device = Device::Cuda(world.local_rank);
    }
    let dtype = setup::resolve_dtype(&config.run.dtype, device)?;
    let mut dp = if world.world_size > 1 {
        source = Box::new(RankSlice { inner: source, rank: world.rank, world: world.world_size });
        Some(DataParallel::connect(&world, config, device)?)
    } else {
        None
    };
    let ckpt_root = out.join("checkpoints");
    if is_root {
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        checkpoint::clean_partial(&ckpt_root)?;
    }
    if let Some(dp) = dp.as_mut() {
        // Every rank looks for the latest checkpoint only after rank 0 has cleaned up.
        dp.comm.barrier()?;
    }
    let world_size = world.world_size;

    // A model and optimiser: from the latest checkpoint of this run, or fresh.
    let resume_dir = if config.checkpoint.resume { checkpoint::resume_point(&ckpt_root)? } else { None };
    let (mut model, mut opt, mut state) = match &resume_dir {
        Some(dir) => {
            let probe = setup::model_config(config, tokenizer.vocab_size(), Some(eos));
            if let Ok(mc) = &probe {
                setup::check_model_fits(mc, dtype, device)?;
            }
            let loaded = load_checkpoint(dir, device, config)?;
            if let Ok(mc) = probe {
                if config.model.init_from.is_none() && *loaded.model.config() != mc {
                    return Err(TrainError::Checkpoint {
                        path: dir.clone(),
                        reason: "its model config differs from the run's (use a new run.out_dir, or \
                                 --set checkpoint.resume=false to start over)"
                            .into(),
                    });
                }
            }
            source.restore(&loaded.state.data)?;
            (loaded.model, loaded.optimizer, loaded.state)
        }
        None => {
            let (model, opt) = fresh_model(config, tokenizer, eos, device, dtype)?;
            let state = TrainerState {
                version: STATE_VERSION,
                step: 0,
                tokens: 0,
                data: source.state(),
                skipped_steps: 0,
                rollbacks: 0,
                run: config.run.name.clone(),
                dtype: dtype_name(dtype).into(),
            };
            (model, opt, state)
        }
    };
    if let Some(dp) = dp.as_mut() {
        dp.check_same_start(config, &model)?;
        if config.dist.zero1 {
            let sizes: Vec<usize> = model.params().named().iter().map(|(_, t)| t.numel()).collect();
            let owner = dist::partition_by_size(&sizes, world_size);
            opt = shard_optimizer(&opt, &model, &owner, dp.rank, config)?;
            dp.owner = Some(owner);
        }
    }
    let resumed_from = resume_dir.as_ref().map(|_| state.step);
    let mut metrics =
        if is_root { Some(MetricsLog::open(&out.join("metrics.jsonl"), resumed_from)?) } else { None };
    let total = config.train.steps;
    let schedule = Schedule {
        lr: config.optim.lr,
        min_lr: config.optim.min_lr,
        warmup: config.optim.warmup_steps,
        total,
    };
    let (micro, seq) = (config.train.micro_batch, config.train.seq_len);
    let accum = if world_size == 1 {
        config.accumulation()
    } else {
        match config.train.tokens_per_step {
            None => 1,
            Some(t) if t % (micro * seq * world_size) == 0 => t / (micro * seq * world_size),
            Some(t) => {
                return Err(TrainError::Usage(format!(
                    "`train.tokens_per_step` ({t}) counts the tokens of all ranks and must be a multiple \
                     of micro_batch × seq_len × world size ({micro} × {seq} × {world_size})"
                )))
            }
        }
    };
    // The mean over micro-batches and ranks, folded into the optimiser's gradient scale.
    let grad_div = (accum * world_size) as f64;
    let step_tokens = (accum * micro * seq * world_size) as u64;
    let mc = model.config().clone();
    let params = model.params().numel();
    if is_root {
        eprintln!(
            "{}: {} parameters ({} layers, hidden {}, vocabulary {}), {} on {:?}, {} tokens/step \
             ({} × {} × {} accumulated{}), {} steps{}",
            config.run.name,
            params,
            mc.layers,
            mc.hidden,
            mc.vocab_size,
            dtype_name(dtype),
            device,
            step_tokens,
            micro,
            seq,
            accum,
            dp.as_ref().map_or(String::new(), |d| format!(
                " × {} ranks over {}{}",
                d.world,
                d.comm.backend(),
                if d.owner.is_some() { ", ZeRO-1" } else { "" }
            )),
            total,
            resumed_from.map_or(String::new(), |s| format!(", resuming at step {s}"))
        );
    }
    let write_metric = |metrics: &mut Option<MetricsLog>, v: &Value| -> Result<()> {
        match metrics {
            Some(m) => m.write(v),
            None => Ok(()),
        }
    };
    if resumed_from.is_none() {
        write_metric(
            &mut metrics,
            &json!({"event": "start", "step": 0, "params": params, "device": format!("{device:?}"),
            "dtype": dtype_name(dtype), "tokens_per_step": step_tokens, "world_size": world_size}),
        )?;
    }

    let pb = if is_root { progress_bar(config, total, state.step) } else { ProgressBar::hidden() };
    let talk = |line: &str| {
        if is_root {
            say(&pb, line);
        }
    };
    let mut consecutive_bad = 0u32;
    let mut window = LogWindow::default();
    let mut last_loss = f64::NAN;
    let mut last_saved = resumed_from;
    let pause = config.debug.save_pause_ms.map(Duration::from_millis);
    // Collective under ZeRO-1 (the optimiser is gathered first); only rank 0 writes.
    let save_now =
        |model: &Gpt, opt: &AdamW, state: &TrainerState, dp: &mut Option<DataParallel>| -> Result<PathBuf> {
            let gathered = match dp.as_mut() {
                Some(d) => match d.owner.clone() {
                    Some(owner) => Some(d.gather_optimizer(model, opt, &owner, config)?),
                    None => None,
                },
                None => None,
            };
            if !is_root {
                return Ok(ckpt_root.join(checkpoint::step_dir_name(state.step)));
            }
            let req = SaveRequest {
                model,
                optimizer: gathered.as_ref().unwrap_or(opt),
                state,
                tokenizer: &config.tokenizer.path,
                tokenizer_file: tokenizer.file_name(),
                keep: config.checkpoint.keep,
                pause,
            };
            let t = Instant::now();
            let dir = checkpoint::save(&ckpt_root, &req)?;
            talk(&format!(
                "step {}: checkpoint {} ({:.1} s)",
                state.step,
                dir.display(),
                t.elapsed().as_secs_f64()
            ));
            Ok(dir)
        };

    while state.step < total {
        let step = state.step;
        let t0 = Instant::now();
        model.params().zero_grad();
        let mut loss_sum = 0.0;
        let mut lang_tokens: BTreeMap<String, u64> = BTreeMap::new();
        let mut stage = None;
        let mut reduced = None;
        for k in 0..accum {
            let b = source.next_batch(micro, step, state.tokens)?;
            let batch = Batch { ids: &b.ids, batch: b.batch, seq: b.seq };
            let recompute = config.model.recompute;
            match dp.as_mut() {
                // The last micro-batch's backward pass starts the gradient sums over the ranks.
                Some(d) if k + 1 == accum => {
                    let (l, sum_sq, stats) =
                        d.backward_and_reduce(&model, config.dist.overlap, |on_final| {
                            Ok(model
                                .forward_backward_with(&batch, &b.targets, b.ignore, recompute, on_final)?)
                        })?;
                    loss_sum += l;
                    reduced = Some((sum_sq, stats));
                }
                _ => loss_sum += model.forward_backward(&batch, &b.targets, b.ignore, recompute)?,
            }
            for (k, v) in b.lang_tokens {
                *lang_tokens.entry(k).or_default() += v;
            }
            stage = b.stage;
        }
        let mut loss = loss_sum / accum as f64;
        let mut comm = None;
        let grad_norm = match (dp.as_mut(), reduced) {
            (Some(d), Some((sum_sq, stats))) => {
                loss = d.mean(loss)?;
                comm = Some(stats);
                sum_sq.sqrt() / grad_div
            }
            _ => {
                let named = model.params().named();
                let ps: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
                global_grad_norm(&ps)? / accum as f64
            }
        };
        if config.debug.nan_steps.contains(&step) {
            loss = f64::NAN;
        }
        let lr = schedule.lr_at(step);
        state.tokens += step_tokens;
        state.step += 1;
        if !(loss.is_finite() && grad_norm.is_finite()) {
            state.skipped_steps += 1;
            consecutive_bad += 1;
            talk(&format!(
                "step {step}: non-finite loss or gradient norm ({loss}, {grad_norm}); step skipped"
            ));
            write_metric(
                &mut metrics,
                &json!({"event": "skipped", "step": state.step, "loss": loss.to_string(),
                "grad_norm": grad_norm.to_string()}),
            )?;
            if consecutive_bad >= config.train.max_bad_steps {
                let Some(dir) = checkpoint::latest(&ckpt_root)? else {
                    return Err(TrainError::Diverged(format!(
                        "{consecutive_bad} non-finite steps in a row at step {step} and no checkpoint to roll back to"
                    )));
                };
                talk(&format!(
                    "warning: {consecutive_bad} non-finite steps in a row; rolling back the weights and \
                     optimiser to {} (the data position moves on)",
                    dir.display()
                ));
                let loaded = load_checkpoint(&dir, device, config)?;
                model = loaded.model;
                opt = loaded.optimizer;
                if let Some(owner) = dp.as_ref().and_then(|d| d.owner.clone()) {
                    opt = shard_optimizer(&opt, &model, &owner, world.rank, config)?;
                }
                state.rollbacks += 1;
                consecutive_bad = 0;
                write_metric(
                    &mut metrics,
                    &json!({"event": "rollback", "step": state.step, "to": loaded.state.step}),
                )?;
            }
        } else {
            consecutive_bad = 0;
            let clip =
                if config.optim.clip > 0.0 { (config.optim.clip / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
            let owner = dp.as_ref().and_then(|d| d.owner.clone());
            {
                let mut named = model.params_mut().named_mut();
                let mut ps: Vec<&mut Tensor> = named
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| match &owner {
                        Some(o) => o[*i] == world.rank,
                        None => true,
                    })
                    .map(|(_, (_, t))| &mut **t)
                    .collect();
                opt.step(&mut ps, lr, clip / grad_div)?;
            }
            if let (Some(d), Some(owner)) = (dp.as_mut(), owner) {
                d.all_gather_params(&mut model, &owner)?;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        if loss.is_finite() {
            window.add(loss, secs, step_tokens);
            last_loss = loss;
        }
        let mut record = json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": state.tokens, "tok_per_s": step_tokens as f64 / secs.max(1e-9),
            "stage": stage, "lang_tokens": lang_tokens});
        if let Some(c) = comm {
            record["grad_buckets"] = json!(c.buckets);
            record["grad_buckets_during_backward"] = json!(c.during_backward);
            record["grad_sum_wait_ms"] = json!(c.wait_ms);
        }
        write_metric(&mut metrics, &record)?;
        pb.set_position(state.step);
        pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} gnorm {grad_norm:.3} {:.0} tok/s",
            step_tokens as f64 / secs.max(1e-9)
        ));
        let done = state.step == total;
        if config.log.every > 0 && (state.step % config.log.every == 0 || done) {
            let (mean, tps) = window.take();
            talk(&format!(
                "step {:>6}/{total}  loss {mean:.4}  lr {lr:.2e}  gnorm {grad_norm:.3}  {tps:.0} tok/s{}",
                state.step,
                stage.as_deref().map_or(String::new(), |s| format!("  stage {s}"))
            ));
        }
        state.data = source.state();
        if is_root && config.eval.every > 0 && state.step % config.eval.every == 0 && !done {
            let evals = validate(&model, tokenizer, eos, config, &validation)?;
            if let Some(m) = metrics.as_mut() {
                report_validation(&pb, m, state.step, &evals)?;
            }
        }
        if config.checkpoint.every > 0 && state.step % config.checkpoint.every == 0 && !done {
            save_now(&model, &opt, &state, &mut dp)?;
            last_saved = Some(state.step);
        }
        if config.debug.stop_after == Some(state.step) {
            pb.finish_and_clear();
            if is_root {
                eprintln!("stopping after step {} (debug.stop_after)", state.step);
            }
            return Ok(RunSummary {
                steps: state.step,
                tokens: state.tokens,
                last_loss,
                valid: Vec::new(),
                checkpoint: ckpt_root.join(checkpoint::step_dir_name(last_saved.unwrap_or(0))),
                skipped_steps: state.skipped_steps,
                resumed_from,
            });
        }
    }
    pb.finish_and_clear();

    let checkpoint = if last_saved == Some(state.step) {
        ckpt_root.join(checkpoint::step_dir_name(state.step))
    } else {
        save_now(&model, &opt, &state, &mut dp)?
    };
    let Some(mut metrics) = metrics else {
        // Not rank 0: rank 0 validates, plots and samples.
        return Ok(RunSummary {
            steps: state.step,
            tokens: state.tokens,
            last_loss,
            valid: Vec::new(),
            checkpoint,
            skipped_steps: state.skipped_steps,
            resumed_from,
        });
    };
    drop(dp);
    let valid = validate(&model, tokenizer, eos, config, &validation)?;
    report_validation(&pb, &mut metrics, state.step, &valid)?;
    print_validation_table(&valid);
    write_plots(out, metrics.path())?;
    print_samples(&model, tokenizer, eos, config)?;
    eprintln!(
        "done: {} steps, {} tokens, {} skipped; checkpoint {}, metrics {}, plots {}",
        state.step,
        state.tokens,
        state.skipped_steps,
        checkpoint.display(),
        metrics.path().display(),
        out.join("loss.svg").display()
    );
    Ok(RunSummary {
        steps: state.step,
        tokens: state.tokens,
        last_loss,
        valid,
        checkpoint,
        skipped_steps: state.skipped_steps,
        resumed_from,
    })
}

fn load_checkpoint(dir: &Path, device: Device, config: &RunConfig) -> Result<checkpoint::Loaded> {
    let cfg_path = dir.join(polylm_model::checkpoint::CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let mc = polylm_model::hf_config::from_hf_json(&text)?;
    let decays = decays_for_shapes(
        polylm_model::param_specs(&mc).iter().map(|(_, shape)| shape.len()),
        config.optim.weight_decay,
    );
    checkpoint::load(dir, device, &decays, hyper_of(config))
}
