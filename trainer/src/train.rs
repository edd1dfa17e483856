//! The training loop shared by `polylm train` (pretraining on shards with a language
//! curriculum) and `polylm sft` (instruction tuning): gradient accumulation, warmup + cosine
//! learning rate, global-norm clipping, AdamW with f32 master weights, non-finite step
//! skipping with rollback, periodic validation and checkpoints, exact resume, a progress bar,
//! a JSONL metrics file, and at the end the plots and samples.
//!
//! Memory contract of a step: gradients accumulate (`+=`) into each parameter's `.grad()` over
//! the micro-batches; the optimiser divides them by the number of micro-batches and multiplies
//! by the clip factor in its own pass, so no extra pass over the gradients is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Device, Tensor};
use polylm_model::{Batch, Gpt, SamplingParams};
use polylm_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::checkpoint::{self, SaveRequest, TrainerState, STATE_VERSION};
use crate::config::RunConfig;
use crate::data::{self, BatchSampler, Curriculum, Dataset, LangEval};
use crate::error::{io_err, Result, TrainError};
use crate::metrics::{read_records, MetricsLog};
use crate::plot::{write_svg, Series};
use crate::schedule::Schedule;
use crate::setup;
use crate::sft::{self, SftPacker};

/// One micro-batch from a data source.
#[derive(Clone, Debug)]
pub struct StepBatch {
    /// Input ids `[batch, seq]`.
    pub ids: Vec<u32>,
    /// Target ids `[batch, seq]`.
    pub targets: Vec<u32>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Targets equal to this are not counted in the loss.
    pub ignore: Option<u32>,
    /// Tokens of each language in this batch.
    pub lang_tokens: BTreeMap<String, u64>,
    /// The curriculum stage it was drawn for.
    pub stage: Option<String>,
}

/// Where the training batches come from: a deterministic stream whose position can be saved
/// and restored exactly.
pub trait BatchSource {
    /// The next micro-batch of `batch` sequences for optimiser step `step` after `tokens`
    /// training tokens.
    fn next_batch(&mut self, batch: usize, step: u64, tokens: u64) -> Result<StepBatch>;
    /// The stream's position.
    fn state(&self) -> Value;
    /// Moves the stream to a saved position.
    fn restore(&mut self, state: &Value) -> Result<()>;
}

/// Pretraining batches: the language-mixture sampler over prepared shards.
pub struct ShardSource {
    sampler: BatchSampler,
    curriculum_names: Vec<String>,
}

impl BatchSource for ShardSource {
    fn next_batch(&mut self, batch: usize, step: u64, tokens: u64) -> Result<StepBatch> {
        let b = self.sampler.next_batch(batch, step, tokens)?;
        Ok(StepBatch {
            ids: b.ids,
            targets: b.targets,
            batch: b.batch,
            seq: b.seq,
            ignore: None,
            lang_tokens: b.lang_tokens,
            stage: self.curriculum_names.get(b.stage).cloned(),
        })
    }

    fn state(&self) -> Value {
        serde_json::to_value(self.sampler.state()).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        let s = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Usage(format!("the checkpoint's data position is unreadable: {e}")))?;
        Ok(self.sampler.restore(s)?)
    }
}

/// Instruction-tuning batches: packed MultiAlpaca examples, loss on responses only.
pub struct SftSource {
    packer: SftPacker,
}

impl BatchSource for SftSource {
    fn next_batch(&mut self, batch: usize, _step: u64, _tokens: u64) -> Result<StepBatch> {
        let b = self.packer.next_batch(batch);
        let mut lang_tokens = BTreeMap::new();
        lang_tokens.insert("response".to_string(), b.response_tokens as u64);
        Ok(StepBatch {
            ids: b.ids,
            targets: b.targets,
            batch: b.batch,
            seq: b.seq,
            ignore: Some(sft::IGNORE),
            lang_tokens,
            stage: None,
        })
    }

    fn state(&self) -> Value {
        serde_json::to_value(self.packer.state()).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        let s = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Usage(format!("the checkpoint's data position is unreadable: {e}")))?;
        self.packer.restore(s)?;
        Ok(())
    }
}

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
enum Validation {
    /// Per-language loss and bits per byte on the shards' `valid` split.
    Shards(Arc<Dataset>),
    /// Response-token loss on SFT validation examples.
    Sft(Vec<sft::SftExample>),
    /// None available.
    Off,
}

/// Prints a line above the progress bar (or on stderr when there is none).
fn say(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// Pretrains as `config` says (the `polylm train` command).
pub fn train(config: &RunConfig) -> Result<RunSummary> {
    setup::set_threads(config.run.threads);
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
    setup::set_threads(config.run.threads);
    let section = config.sft.as_ref().ok_or_else(|| TrainError::Config {
        path: "<run config>".into(),
        reason: "`polylm sft` needs an `[sft]` section with `train` (MultiAlpaca JSONL)".into(),
    })?;
    let tokenizer = setup::load_tokenizer(&config.tokenizer.path)?;
    let eos = eos_of(&tokenizer)?;
    let examples = sft::load_sft(&section.train)?;
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
        Some(p) => Validation::Sft(sft::load_sft(p)?),
        None => Validation::Off,
    };
    run_loop(config, &tokenizer, eos, Box::new(SftSource { packer }), validation)
}

/// The tokenizer's end-of-sequence id.
pub fn eos_of(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer
        .model()
        .special_id("</s>")
        .ok_or_else(|| TrainError::Usage("the tokenizer has no </s> token".into()))
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
    tokenizer: &Tokenizer,
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
    tokenizer: &Tokenizer,
    eos: u32,
    mut source: Box<dyn BatchSource>,
    validation: Validation,
) -> Result<RunSummary> {
    let out = &config.run.out_dir;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let ckpt_root = out.join("checkpoints");
    checkpoint::clean_partial(&ckpt_root)?;
    let device = setup::resolve_device(&config.run.device)?;
    let dtype = setup::resolve_dtype(&config.run.dtype, device)?;

    // A model and optimiser: from the latest checkpoint of this run, or fresh.
    let resume_dir = if config.checkpoint.resume { checkpoint::latest(&ckpt_root)? } else { None };
    let (mut model, mut opt, mut state) = match &resume_dir {
        Some(dir) => {
            let probe = setup::model_config(config, tokenizer.vocab_size(), Some(eos));
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
    let resumed_from = resume_dir.as_ref().map(|_| state.step);
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), resumed_from)?;
    let total = config.train.steps;
    let schedule = Schedule {
        lr: config.optim.lr,
        min_lr: config.optim.min_lr,
        warmup: config.optim.warmup_steps,
        total,
    };
    let accum = config.accumulation();
    let (micro, seq) = (config.train.micro_batch, config.train.seq_len);
    let mc = model.config().clone();
    let params = model.params().numel();
    eprintln!(
        "{}: {} parameters ({} layers, hidden {}, vocabulary {}), {} on {:?}, {} tokens/step \
         ({} × {} × {} accumulated), {} steps{}",
        config.run.name,
        params,
        mc.layers,
        mc.hidden,
        mc.vocab_size,
        dtype_name(dtype),
        device,
        accum * micro * seq,
        micro,
        seq,
        accum,
        total,
        resumed_from.map_or(String::new(), |s| format!(", resuming at step {s}"))
    );
    if resumed_from.is_none() {
        metrics
            .write(&json!({"event": "start", "step": 0, "params": params, "device": format!("{device:?}"),
            "dtype": dtype_name(dtype), "tokens_per_step": accum * micro * seq}))?;
    }

    let pb = progress_bar(config, total, state.step);
    let mut consecutive_bad = 0u32;
    let mut window = LogWindow::default();
    let mut last_loss = f64::NAN;
    let mut last_saved = resumed_from;
    let pause = config.debug.save_pause_ms.map(Duration::from_millis);
    let save_now = |model: &Gpt, opt: &AdamW, state: &TrainerState, pb: &ProgressBar| -> Result<PathBuf> {
        let req = SaveRequest {
            model,
            optimizer: opt,
            state,
            tokenizer: &config.tokenizer.path,
            keep: config.checkpoint.keep,
            pause,
        };
        let t = Instant::now();
        let dir = checkpoint::save(&ckpt_root, &req)?;
        say(
            pb,
            &format!(
                "step {}: checkpoint {} ({:.1} s)",
                state.step,
                dir.display(),
                t.elapsed().as_secs_f64()
            ),
        );
        Ok(dir)
    };

    while state.step < total {
        let step = state.step;
        let t0 = Instant::now();
        model.params().zero_grad();
        let mut loss_sum = 0.0;
        let mut lang_tokens: BTreeMap<String, u64> = BTreeMap::new();
        let mut stage = None;
        for _ in 0..accum {
            let b = source.next_batch(micro, step, state.tokens)?;
            let batch = Batch { ids: &b.ids, batch: b.batch, seq: b.seq };
            loss_sum += model.forward_backward(&batch, &b.targets, b.ignore, config.model.recompute)?;
            for (k, v) in b.lang_tokens {
                *lang_tokens.entry(k).or_default() += v;
            }
            stage = b.stage;
        }
        let mut loss = loss_sum / accum as f64;
        let grad_norm = {
            let named = model.params().named();
            let ps: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
            global_grad_norm(&ps)? / accum as f64
        };
        if config.debug.nan_steps.contains(&step) {
            loss = f64::NAN;
        }
        let lr = schedule.lr_at(step);
        let step_tokens = (accum * micro * seq) as u64;
        state.tokens += step_tokens;
        state.step += 1;
        if !(loss.is_finite() && grad_norm.is_finite()) {
            state.skipped_steps += 1;
            consecutive_bad += 1;
            say(
                &pb,
                &format!("step {step}: non-finite loss or gradient norm ({loss}, {grad_norm}); step skipped"),
            );
            metrics.write(&json!({"event": "skipped", "step": state.step, "loss": loss.to_string(),
                "grad_norm": grad_norm.to_string()}))?;
            if consecutive_bad >= config.train.max_bad_steps {
                let Some(dir) = checkpoint::latest(&ckpt_root)? else {
                    return Err(TrainError::Diverged(format!(
                        "{consecutive_bad} non-finite steps in a row at step {step} and no checkpoint to roll back to"
                    )));
                };
                say(
                    &pb,
                    &format!(
                        "warning: {consecutive_bad} non-finite steps in a row; rolling back the weights and \
                     optimiser to {} (the data position moves on)",
                        dir.display()
                    ),
                );
                let loaded = load_checkpoint(&dir, device, config)?;
                model = loaded.model;
                opt = loaded.optimizer;
                state.rollbacks += 1;
                consecutive_bad = 0;
                metrics.write(&json!({"event": "rollback", "step": state.step, "to": loaded.state.step}))?;
            }
        } else {
            consecutive_bad = 0;
            let clip =
                if config.optim.clip > 0.0 { (config.optim.clip / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
            let mut named = model.params_mut().named_mut();
            let mut ps: Vec<&mut Tensor> = named.iter_mut().map(|(_, t)| &mut **t).collect();
            opt.step(&mut ps, lr, clip / accum as f64)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        if loss.is_finite() {
            window.add(loss, secs, step_tokens);
            last_loss = loss;
        }
        metrics.write(&json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": state.tokens, "tok_per_s": step_tokens as f64 / secs.max(1e-9),
            "stage": stage, "lang_tokens": lang_tokens}))?;
        pb.set_position(state.step);
        pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} gnorm {grad_norm:.3} {:.0} tok/s",
            step_tokens as f64 / secs.max(1e-9)
        ));
        let done = state.step == total;
        if config.log.every > 0 && (state.step % config.log.every == 0 || done) {
            let (mean, tps) = window.take();
            say(
                &pb,
                &format!(
                    "step {:>6}/{total}  loss {mean:.4}  lr {lr:.2e}  gnorm {grad_norm:.3}  {tps:.0} tok/s{}",
                    state.step,
                    stage.as_deref().map_or(String::new(), |s| format!("  stage {s}"))
                ),
            );
        }
        state.data = source.state();
        if config.eval.every > 0 && state.step % config.eval.every == 0 && !done {
            let evals = validate(&model, tokenizer, eos, config, &validation)?;
            report_validation(&pb, &mut metrics, state.step, &evals)?;
        }
        if config.checkpoint.every > 0 && state.step % config.checkpoint.every == 0 && !done {
            save_now(&model, &opt, &state, &pb)?;
            last_saved = Some(state.step);
        }
        if config.debug.stop_after == Some(state.step) {
            pb.finish_and_clear();
            eprintln!("stopping after step {} (debug.stop_after)", state.step);
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
        save_now(&model, &opt, &state, &pb)?
    };
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

fn progress_bar(config: &RunConfig, total: u64, start: u64) -> ProgressBar {
    let pb = if config.log.progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4))
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} ETA {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_position(start);
    pb.reset_eta();
    pb
}

/// Mean loss and throughput since the last log line.
#[derive(Default)]
struct LogWindow {
    loss: f64,
    steps: u64,
    secs: f64,
    tokens: u64,
}

impl LogWindow {
    fn add(&mut self, loss: f64, secs: f64, tokens: u64) {
        self.loss += loss;
        self.steps += 1;
        self.secs += secs;
        self.tokens += tokens;
    }

    fn take(&mut self) -> (f64, f64) {
        let out = (self.loss / self.steps.max(1) as f64, self.tokens as f64 / self.secs.max(1e-9));
        *self = LogWindow::default();
        out
    }
}

fn validate(
    model: &Gpt,
    tokenizer: &Tokenizer,
    eos: u32,
    config: &RunConfig,
    v: &Validation,
) -> Result<Vec<LangEval>> {
    let seq = config.train.seq_len;
    match v {
        Validation::Off => Ok(Vec::new()),
        Validation::Shards(d) => {
            Ok(data::validate(model, d, "valid", seq, config.eval.batch, config.eval.max_tokens_per_lang)?)
        }
        Validation::Sft(examples) => {
            Ok(vec![sft_validation(model, tokenizer, eos, seq, config.eval.batch, examples)?])
        }
    }
}

/// Response-token loss over the SFT validation examples, one example per row (bits per byte
/// over the responses' bytes).
fn sft_validation(
    model: &Gpt,
    tokenizer: &Tokenizer,
    eos: u32,
    seq: usize,
    batch: usize,
    examples: &[sft::SftExample],
) -> Result<LangEval> {
    let _guard = polylm_engine::no_grad();
    let rows: Vec<(Vec<u32>, Vec<u32>, usize)> = examples
        .iter()
        .map(|ex| {
            let prompt = tokenizer.encode(&sft::prompt_text(&sft::query_text(ex)));
            let mut all = prompt.clone();
            all.extend(tokenizer.encode(&ex.output));
            all.push(eos);
            all.truncate(seq + 1);
            let mut ids = all[..all.len() - 1].to_vec();
            let mut targets: Vec<u32> = all[1..]
                .iter()
                .enumerate()
                .map(|(i, &t)| if i + 1 < prompt.len() { sft::IGNORE } else { t })
                .collect();
            let counted = targets.iter().filter(|&&t| t != sft::IGNORE).count();
            ids.resize(seq, eos);
            targets.resize(seq, sft::IGNORE);
            (ids, targets, counted)
        })
        .filter(|r| r.2 > 0)
        .collect();
    let bytes: u64 = examples.iter().map(|e| e.output.len() as u64).sum();
    let (mut nats, mut tokens) = (0.0f64, 0u64);
    for chunk in rows.chunks(batch.max(1)) {
        let ids: Vec<u32> = chunk.iter().flat_map(|r| r.0.iter().copied()).collect();
        let targets: Vec<u32> = chunk.iter().flat_map(|r| r.1.iter().copied()).collect();
        let counted: usize = chunk.iter().map(|r| r.2).sum();
        let loss = model.loss(&Batch { ids: &ids, batch: chunk.len(), seq }, &targets, Some(sft::IGNORE))?;
        nats += loss.to_scalar()? * counted as f64;
        tokens += counted as u64;
    }
    Ok(LangEval {
        lang: "sft".into(),
        tokens,
        bytes,
        loss: nats / tokens.max(1) as f64,
        bpb: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}

fn report_validation(
    pb: &ProgressBar,
    metrics: &mut MetricsLog,
    step: u64,
    evals: &[LangEval],
) -> Result<()> {
    if evals.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    for e in evals {
        metrics
            .write(&json!({"eval": "valid", "step": step, "lang": e.lang, "loss": e.loss, "bpb": e.bpb,
            "tokens": e.tokens, "bytes": e.bytes}))?;
        parts.push(format!("{} {:.3}", e.lang, e.bpb));
    }
    let mean = evals.iter().map(|e| e.loss).sum::<f64>() / evals.len() as f64;
    say(
        pb,
        &format!(
            "step {step}: validation loss {mean:.4} (mean over languages); bits/byte: {}",
            parts.join("  ")
        ),
    );
    Ok(())
}

fn print_validation_table(evals: &[LangEval]) {
    if evals.is_empty() {
        return;
    }
    println!("\nvalidation   lang  tokens    loss  bits/byte");
    for e in evals {
        println!("             {:<4} {:>7}  {:>6.3}  {:>9.3}", e.lang, e.tokens, e.loss, e.bpb);
    }
}

/// `loss.svg` (training loss and mean validation loss against steps) and `bpb.svg`
/// (validation bits per byte per language) from the metrics file.
pub fn write_plots(out: &Path, metrics: &Path) -> Result<()> {
    let records = read_records(metrics)?;
    let mut train = Series { name: "train loss".into(), points: Vec::new() };
    let mut valid_by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut bpb: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &records {
        let step = r.get("step").and_then(Value::as_u64);
        let loss = r.get("loss").and_then(Value::as_f64);
        match (r.get("eval").is_some(), step, loss) {
            (false, Some(s), Some(l)) if r.get("event").is_none() => train.points.push((s as f64, l)),
            (true, Some(s), Some(l)) => {
                valid_by_step.entry(s).or_default().push(l);
                if let (Some(lang), Some(b)) =
                    (r.get("lang").and_then(Value::as_str), r.get("bpb").and_then(Value::as_f64))
                {
                    bpb.entry(lang.to_string()).or_default().push((s as f64, b));
                }
            }
            _ => {}
        }
    }
    let valid = Series {
        name: "validation loss (mean over languages)".into(),
        points: valid_by_step
            .iter()
            .map(|(s, v)| (*s as f64, v.iter().sum::<f64>() / v.len() as f64))
            .collect(),
    };
    let loss_svg = out.join("loss.svg");
    write_svg(&loss_svg, "Training and validation loss", "step", "loss (nats/token)", &[train, valid])
        .map_err(io_err(&loss_svg))?;
    let series: Vec<Series> = bpb.into_iter().map(|(name, points)| Series { name, points }).collect();
    let bpb_svg = out.join("bpb.svg");
    write_svg(&bpb_svg, "Validation bits per byte", "step", "bits per byte", &series)
        .map_err(io_err(&bpb_svg))?;
    Ok(())
}

fn print_samples(model: &Gpt, tokenizer: &Tokenizer, eos: u32, config: &RunConfig) -> Result<()> {
    let s = &config.samples;
    if s.prompts.is_empty() {
        return Ok(());
    }
    println!("\nsamples (temperature {}, top-p {}):", s.temperature, s.top_p);
    let context = model.config().context;
    for (i, prompt) in s.prompts.iter().enumerate() {
        let mut ids = vec![eos];
        ids.extend(tokenizer.encode(prompt));
        if ids.len() >= context {
            ids.drain(..ids.len() + 1 - context);
        }
        let params = SamplingParams {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: None,
            repetition_penalty: 1.02,
            max_new_tokens: s.max_new_tokens.min(context - ids.len()),
            eos_token_id: Some(eos),
            seed: config.run.seed + i as u64,
        };
        let out = model.generate(&[ids.clone()], &params)?;
        // Decoded with the prompt, so that the word boundary between them comes out right.
        let mut all = ids[usize::from(ids.first() == Some(&eos))..].to_vec();
        all.extend(&out[0].tokens);
        println!("  {}", tokenizer.decode(&all)?.replace('\n', " "));
    }
    Ok(())
}
