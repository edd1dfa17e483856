//! What a run shows and writes besides checkpoints: the progress bar and log lines,
//! validation and its report, the plots and the samples.

use std::collections::BTreeMap;
use std::path::Path;

use crate::tokenizer::RunTokenizer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use polylm_model::{Batch, Gpt, SamplingParams};
use serde_json::{json, Value};

use crate::config::RunConfig;
use crate::data::{self, LangEval};
use crate::error::{io_err, Result};
use crate::metrics::{read_records, MetricsLog};
use crate::plot::{write_svg, Series};
use crate::sft::{self};

use super::Validation;
/// Prints a line above the progress bar (or on stderr when there is none).
pub(super) fn say(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

pub(super) fn progress_bar(config: &RunConfig, total: u64, start: u64) -> ProgressBar {
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
pub(super) struct LogWindow {
    pub(super) loss: f64,
    pub(super) steps: u64,
    pub(super) secs: f64,
    pub(super) tokens: u64,
}

impl LogWindow {
    pub(super) fn add(&mut self, loss: f64, secs: f64, tokens: u64) {
        self.loss += loss;
        self.steps += 1;
        self.secs += secs;
        self.tokens += tokens;
    }

    /// Mean loss and tokens per second of the finite steps since the last call; NaN and 0 when
    /// every step of the window was skipped.
    pub(super) fn take(&mut self) -> (f64, f64) {
        let mean = if self.steps == 0 { f64::NAN } else { self.loss / self.steps as f64 };
        let out = (mean, self.tokens as f64 / self.secs.max(1e-9));
        *self = LogWindow::default();
        out
    }
}

pub(super) fn validate(
    model: &Gpt,
    tokenizer: &RunTokenizer,
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
        Validation::Sft(groups) => groups
            .iter()
            .map(|(name, examples)| {
                sft_validation(model, tokenizer, eos, seq, config.eval.batch, name, examples)
            })
            .collect(),
    }
}

/// Response-token loss over the SFT validation examples of group `name`, one example per row
/// (bits per byte over the responses' bytes).
pub(super) fn sft_validation(
    model: &Gpt,
    tokenizer: &RunTokenizer,
    eos: u32,
    seq: usize,
    batch: usize,
    name: &str,
    examples: &[sft::SftExample],
) -> Result<LangEval> {
    let _guard = polylm_engine::no_grad();
    // Rows cut as the training packer cuts them, so a long prompt never leaves a response
    // unscored; bits per byte count the bytes of the response that was scored.
    let mut bytes = 0u64;
    let mut rows: Vec<(Vec<u32>, Vec<u32>, usize)> = Vec::with_capacity(examples.len());
    for ex in examples {
        let mut prompt = tokenizer.encode(&sft::prompt_text(&sft::query_text(ex)));
        let mut response = tokenizer.encode(&ex.output);
        response.push(eos);
        if sft::fit_row(&mut prompt, &mut response, seq + 1) {
            let kept = response.strip_suffix(&[eos]).unwrap_or(&response);
            bytes += tokenizer.decode(kept)?.len() as u64;
        } else {
            bytes += ex.output.len() as u64;
        }
        let start = prompt.len();
        let mut all = prompt;
        all.extend(response);
        let mut ids = all[..all.len() - 1].to_vec();
        let mut targets: Vec<u32> =
            all[1..].iter().enumerate().map(|(i, &t)| if i + 1 < start { sft::IGNORE } else { t }).collect();
        let counted = targets.iter().filter(|&&t| t != sft::IGNORE).count();
        ids.resize(seq, eos);
        targets.resize(seq, sft::IGNORE);
        if counted > 0 {
            rows.push((ids, targets, counted));
        }
    }
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
        lang: name.to_string(),
        tokens,
        bytes,
        loss: nats / tokens.max(1) as f64,
        bpb: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}

pub(super) fn report_validation(
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

pub(super) fn print_validation_table(evals: &[LangEval]) {
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

pub(super) fn print_samples(
    model: &Gpt,
    tokenizer: &RunTokenizer,
    eos: u32,
    config: &RunConfig,
) -> Result<()> {
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
