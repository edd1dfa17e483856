//! The run configuration: one TOML file describes a training run (model, tokenizer, data,
//! curriculum, optimiser, schedule, batch, checkpoints, evaluation, logging). Every field is
//! documented in `configs/*.toml`; command-line `--set section.field=value` flags override
//! fields before the file is checked, so a typo in either names the field and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::StageConfig;
use crate::error::{Result, TrainError};

/// A whole run, as read from TOML.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Name, output folder, seed, device and precision.
    pub run: RunSection,
    /// The model: a preset or a config file, with overrides.
    pub model: ModelSection,
    /// The tokenizer: where it is, and how to train it when it is missing.
    pub tokenizer: TokenizerSection,
    /// Token shards, and the text they are prepared from when missing.
    pub data: DataSection,
    /// Language mixture stages; PolyLM's two-stage default when absent.
    #[serde(default)]
    pub curriculum: CurriculumSection,
    /// AdamW and the learning-rate schedule.
    #[serde(default)]
    pub optim: OptimSection,
    /// Steps, batch and sequence length.
    pub train: TrainSection,
    /// How often to checkpoint and how many to keep.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Validation during training.
    #[serde(default)]
    pub eval: EvalSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Samples printed at the end of the run.
    #[serde(default)]
    pub samples: SamplesSection,
    /// Supervised fine-tuning (the `sft` command only).
    #[serde(default)]
    pub sft: Option<SftSection>,
    /// Fault injection for tests of the recovery paths (never set in real runs).
    #[serde(default)]
    pub debug: DebugSection,
    /// Data-parallel training (used when the launcher's `WORLD_SIZE` is above 1).
    #[serde(default)]
    pub dist: DistSection,
    /// The file this config was read from (for error messages; not a TOML field).
    #[serde(skip)]
    pub source: std::path::PathBuf,
}

/// `[run]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// A name for logs.
    pub name: String,
    /// Output folder: checkpoints, metrics, plots (and the tokenizer and data when they are
    /// built by the run).
    pub out_dir: PathBuf,
    /// Seed of initialisation and data order.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `auto` (the first GPU when present, else the CPU), `cpu`, or `cuda` / `cuda:N`.
    #[serde(default = "default_auto")]
    pub device: String,
    /// `auto` (bf16 compute with f32 master weights on a GPU, f32 on the CPU), `f32` or `bf16`.
    #[serde(default = "default_auto")]
    pub dtype: String,
    /// CPU threads (0: all cores).
    #[serde(default)]
    pub threads: usize,
}

/// `[model]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A preset name (`tiny`, `small`, `polylm-1.7b`, `polylm-13b`).
    pub preset: Option<String>,
    /// A model config file (our TOML or a Hugging Face `config.json`) instead of a preset.
    pub config: Option<PathBuf>,
    /// Overrides of the preset's layers.
    pub layers: Option<usize>,
    /// Overrides of the preset's hidden size.
    pub hidden: Option<usize>,
    /// Overrides of the preset's attention heads.
    pub heads: Option<usize>,
    /// Overrides of the preset's context length.
    pub context: Option<usize>,
    /// Initialise from this checkpoint folder instead of from scratch (`sft` uses it).
    pub init_from: Option<PathBuf>,
    /// Recompute each block's activations in the backward pass (less memory, a second
    /// forward pass).
    #[serde(default)]
    pub recompute: bool,
}

/// `[tokenizer]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    /// The tokenizer: ours (JSON), or a released model's own (a Hugging Face `tokenizer.json`
    /// or a SentencePiece `.model`, as PolyLM's), to continue training or fine-tune its
    /// checkpoint (`model.init_from`) with the tokenizer it was trained with.
    pub path: PathBuf,
    /// Train it on `data.train` when the file does not exist.
    #[serde(default)]
    pub train_if_missing: bool,
    /// Vocabulary size when training (the model's vocabulary follows the tokenizer).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Language-balancing exponent when training (probability ∝ size^alpha; default 0.5).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Documents per language read when training (all when absent).
    pub max_docs_per_lang: Option<usize>,
}

/// `[data]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Prepared shards (`polylm data prepare` output).
    pub dir: PathBuf,
    /// Text to prepare shards from when `dir` has none: a folder of `<lang>.jsonl` / `.txt` (or
    /// `<lang>/` folders of parts).
    pub train: Option<PathBuf>,
    /// Validation text (same layout as `train`).
    pub valid: Option<PathBuf>,
    /// Bilingual pairs JSONL (`{"src_lang","tgt_lang","src","tgt"}`).
    pub pairs: Option<PathBuf>,
    /// Languages to use (all in `train` when absent).
    pub langs: Option<Vec<String>>,
    /// Documents per language prepared (all when absent).
    pub max_docs_per_lang: Option<usize>,
    /// Named subsets of sources (the `source` field of the JSONL), e.g. `hq = ["gnome-help"]`.
    #[serde(default)]
    pub subsets: BTreeMap<String, Vec<String>>,
}

/// `[curriculum]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CurriculumSection {
    /// The stages in order; PolyLM's default (30% then 60% non-English) when empty.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// `[optim]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    /// Linear warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Decoupled weight decay (never applied to biases or 1-D parameters).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// AdamW β1.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// AdamW β2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// AdamW ε.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Global gradient-norm clip (0 disables).
    #[serde(default = "default_clip")]
    pub clip: f64,
}

/// `[train]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimiser steps.
    pub steps: u64,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Tokens per optimiser step; gradients accumulate over
    /// `tokens_per_step / (micro_batch · seq_len)` micro-batches (one when absent).
    pub tokens_per_step: Option<usize>,
    /// Consecutive non-finite steps (skipped) before rolling back to the last checkpoint.
    #[serde(default = "default_max_bad")]
    pub max_bad_steps: u32,
}

/// `[checkpoint]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every this many steps (0: only at the end).
    #[serde(default = "default_ckpt_every")]
    pub every: u64,
    /// Checkpoints kept (the oldest are removed).
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Resume from the latest checkpoint in `out_dir` when there is one.
    #[serde(default = "default_true")]
    pub resume: bool,
}

/// `[eval]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Validate every this many steps (0: only at the end).
    #[serde(default = "default_eval_every")]
    pub every: u64,
    /// Validation tokens per language.
    #[serde(default = "default_eval_tokens")]
    pub max_tokens_per_lang: u64,
    /// Sequences per validation batch.
    #[serde(default = "default_eval_batch")]
    pub batch: usize,
}

/// `[log]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Print a log line every this many steps (besides the progress bar).
    #[serde(default = "default_log_every")]
    pub every: u64,
    /// Show the progress bar.
    #[serde(default = "default_true")]
    pub progress: bool,
}

/// `[samples]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplesSection {
    /// Prompts to continue at the end of the run.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// New tokens per sample.
    #[serde(default = "default_sample_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
}

/// `[sft]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SftSection {
    /// MultiAlpaca-format training data (`instruction`, `input`, `output`): a JSON Lines file,
    /// a JSON array file, or a folder of such files (every `.jsonl` and `.json`).
    pub train: PathBuf,
    /// Validation data of the same forms (its response-token loss is reported).
    pub valid: Option<PathBuf>,
}

/// `[debug]`: fault injection for the recovery tests.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DebugSection {
    /// Steps whose gradients are replaced by NaN.
    #[serde(default)]
    pub nan_steps: Vec<u64>,
    /// Pause this many milliseconds between the files of a checkpoint (gives a crash test
    /// time to kill the process in the middle of a save).
    pub save_pause_ms: Option<u64>,
    /// Stop (as an interrupted run would) right after this step and its checkpoint.
    pub stop_after: Option<u64>,
}

/// `[dist]`: data-parallel training over several processes (see `docs/distributed.md`). Only
/// read when the run is started with `WORLD_SIZE` > 1 (by `polylm launch`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistSection {
    /// `auto` (NCCL on a GPU when the library loads, else TCP), `tcp` (the CPU backend) or
    /// `nccl`.
    #[serde(default = "default_auto")]
    pub backend: String,
    /// Seconds any rank waits for another (rendezvous, every collective) before failing with an
    /// error naming it. Must exceed the longest pause of rank 0 (a checkpoint save, a
    /// validation pass), which the others wait through.
    #[serde(default = "default_dist_timeout")]
    pub timeout_s: f64,
    /// ZeRO stage 1: each rank keeps the AdamW state (f32 master weights and moments) of only
    /// its share of the parameters (whole tensors, balanced by size); gradients are
    /// reduce-scattered and the updated parameters all-gathered.
    #[serde(default)]
    pub zero1: bool,
    /// Size of a gradient all-reduce bucket in MiB (parameters' gradients are packed into
    /// buckets of at most this size; a larger tensor is its own bucket).
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
    /// Start summing each bucket over the ranks while the backward pass is still running
    /// (the last layers' gradients first); `false` sums them all after the backward pass.
    #[serde(default = "default_true")]
    pub overlap: bool,
}

impl Default for DistSection {
    fn default() -> Self {
        DistSection {
            backend: default_auto(),
            timeout_s: default_dist_timeout(),
            zero1: false,
            bucket_mb: default_bucket_mb(),
            overlap: true,
        }
    }
}

fn default_dist_timeout() -> f64 {
    600.0
}
fn default_bucket_mb() -> f64 {
    25.0
}

fn default_seed() -> u64 {
    1234
}
fn default_auto() -> String {
    "auto".into()
}
fn default_vocab() -> usize {
    8192
}
fn default_alpha() -> f64 {
    0.5
}
fn default_lr() -> f64 {
    6e-4
}
fn default_min_lr() -> f64 {
    6e-5
}
fn default_wd() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_max_bad() -> u32 {
    3
}
fn default_ckpt_every() -> u64 {
    500
}
fn default_keep() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_eval_every() -> u64 {
    250
}
fn default_eval_tokens() -> u64 {
    8192
}
fn default_eval_batch() -> usize {
    8
}
fn default_log_every() -> u64 {
    50
}
fn default_sample_tokens() -> usize {
    48
}
fn default_temperature() -> f32 {
    0.7
}
fn default_top_p() -> f32 {
    0.8
}

impl Default for OptimSection {
    fn default() -> Self {
        OptimSection {
            lr: default_lr(),
            min_lr: default_min_lr(),
            warmup_steps: 0,
            weight_decay: default_wd(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            clip: default_clip(),
        }
    }
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection { every: default_ckpt_every(), keep: default_keep(), resume: true }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            every: default_eval_every(),
            max_tokens_per_lang: default_eval_tokens(),
            batch: default_eval_batch(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { every: default_log_every(), progress: true }
    }
}

impl Default for SamplesSection {
    fn default() -> Self {
        SamplesSection {
            prompts: Vec::new(),
            max_new_tokens: default_sample_tokens(),
            temperature: default_temperature(),
            top_p: default_top_p(),
        }
    }
}

impl RunConfig {
    /// Reads `path`, applies `overrides` (`section.field=value`, the value parsed as TOML and
    /// taken as a string when it is not), and checks the result. Relative paths inside the
    /// file are resolved against the current directory, as the user typed them.
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::parse(&text, path, overrides)
    }

    /// Parses TOML `text` (named `path` in errors) with `overrides` applied.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<RunConfig> {
        let err = |reason: String| TrainError::Config { path: path.to_path_buf(), reason };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        for o in overrides {
            apply_override(&mut value, o).map_err(|reason| err(format!("--set {o}: {reason}")))?;
        }
        let mut config: RunConfig = value.try_into().map_err(|e: toml::de::Error| err(e.to_string()))?;
        config.source = path.to_path_buf();
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Checks values that TOML's types cannot: positive sizes, ordered learning rates, known
    /// device and precision names.
    fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("train.steps", self.train.steps as usize),
            ("train.seq_len", self.train.seq_len),
            ("train.micro_batch", self.train.micro_batch),
            ("eval.batch", self.eval.batch),
            ("checkpoint.keep", self.checkpoint.keep),
            ("tokenizer.vocab_size", self.tokenizer.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("`{name}` must be at least 1"));
            }
        }
        if let Some(t) = self.train.tokens_per_step {
            let micro = self.train.micro_batch * self.train.seq_len;
            if t < micro || t % micro != 0 {
                return Err(format!(
                    "`train.tokens_per_step` ({t}) must be a multiple of micro_batch × seq_len ({micro})"
                ));
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(format!("`optim.lr` must be positive, not {}", o.lr));
        }
        if !(o.min_lr.is_finite() && o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(format!("`optim.min_lr` ({}) must be in [0, lr = {}]", o.min_lr, o.lr));
        }
        for (name, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("`{name}` must be in [0, 1), not {b}"));
            }
        }
        if !(o.eps > 0.0 && o.weight_decay >= 0.0 && o.clip >= 0.0) {
            return Err("`optim.eps` must be positive and `weight_decay`, `clip` non-negative".into());
        }
        parse_device_name(&self.run.device).map_err(|e| format!("`run.device`: {e}"))?;
        if !matches!(self.run.dtype.as_str(), "auto" | "f32" | "bf16") {
            return Err(format!("`run.dtype` must be auto, f32 or bf16, not {:?}", self.run.dtype));
        }
        if !matches!(self.dist.backend.as_str(), "auto" | "tcp" | "nccl") {
            return Err(format!("`dist.backend` must be auto, tcp or nccl, not {:?}", self.dist.backend));
        }
        if !(self.dist.timeout_s.is_finite() && self.dist.timeout_s > 0.0) {
            return Err(format!("`dist.timeout_s` must be positive, not {}", self.dist.timeout_s));
        }
        if !(self.dist.bucket_mb.is_finite() && self.dist.bucket_mb > 0.0) {
            return Err(format!("`dist.bucket_mb` must be positive, not {}", self.dist.bucket_mb));
        }
        if self.model.preset.is_some() == self.model.config.is_some() && self.model.init_from.is_none() {
            return Err("give exactly one of `model.preset` and `model.config` (or `model.init_from`)".into());
        }
        Ok(())
    }

    /// Accumulated micro-batches per optimiser step.
    pub fn accumulation(&self) -> usize {
        let micro = self.train.micro_batch * self.train.seq_len;
        self.train.tokens_per_step.map_or(1, |t| t / micro)
    }

    /// Tokens per optimiser step.
    pub fn tokens_per_step(&self) -> usize {
        self.accumulation() * self.train.micro_batch * self.train.seq_len
    }
}

/// A device named in a config or on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when one works, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// GPU `ordinal`.
    Cuda(usize),
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device_name(name: &str) -> std::result::Result<DeviceChoice, String> {
    match name {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| format!("unknown device {other:?} (auto, cpu, cuda or cuda:N)")),
    }
}

/// Sets `section.field=value` in a parsed TOML document.
fn apply_override(doc: &mut toml::Value, assignment: &str) -> std::result::Result<(), String> {
    let (key, raw) = assignment.split_once('=').ok_or("expected section.field=value")?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(format!("bad field name {key:?}"));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path.split_last().ok_or("empty field name")?;
    let mut node = doc;
    for p in parents {
        let table = node.as_table_mut().ok_or_else(|| format!("{key}: {p} is not a table"))?;
        node = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = node.as_table_mut().ok_or_else(|| format!("{key}: the parent is not a table"))?;
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[run]
name = "t"
out_dir = "out"
[model]
preset = "tiny"
[tokenizer]
path = "tok.json"
[data]
dir = "data"
[train]
steps = 10
seq_len = 32
micro_batch = 2
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = RunConfig::parse(MINIMAL, Path::new("x.toml"), &[]).expect("parses");
        assert_eq!(c.optim.beta2, 0.95);
        assert_eq!(c.accumulation(), 1);
        assert!(c.curriculum.stages.is_empty());
    }

    #[test]
    fn overrides_replace_and_add_fields() {
        let sets = ["train.steps=77".to_string(), "run.device=cpu".into(), "optim.lr=1e-3".into()];
        let c = RunConfig::parse(MINIMAL, Path::new("x.toml"), &sets).expect("parses");
        assert_eq!((c.train.steps, c.run.device.as_str(), c.optim.lr), (77, "cpu", 1e-3));
    }

    #[test]
    fn errors_name_the_field_and_the_file() {
        let missing = MINIMAL.replace("steps = 10\n", "");
        let e = RunConfig::parse(&missing, Path::new("runs/a.toml"), &[]).unwrap_err().to_string();
        assert!(e.contains("runs/a.toml") && e.contains("steps"), "{e}");
        let typo = MINIMAL.replace("steps = 10", "stpes = 10\nsteps = 1");
        let e = RunConfig::parse(&typo, Path::new("a.toml"), &[]).unwrap_err().to_string();
        assert!(e.contains("stpes"), "{e}");
        let e = RunConfig::parse(MINIMAL, Path::new("a.toml"), &["train.seq_len=0".into()]).unwrap_err();
        assert!(e.to_string().contains("train.seq_len"), "{e}");
        let e = RunConfig::parse(MINIMAL, Path::new("a.toml"), &["run.device=tpu".into()]).unwrap_err();
        assert!(e.to_string().contains("run.device"), "{e}");
        let e = RunConfig::parse(MINIMAL, Path::new("a.toml"), &["nonsense".into()]).unwrap_err();
        assert!(e.to_string().contains("--set nonsense"), "{e}");
    }
}
