//! Crash-safe training checkpoints.
//!
//! A checkpoint is a folder `<out_dir>/checkpoints/step-<NNNNNNNN>/` holding
//!
//! - `model.safetensors` + `config.json`: the weights in Hugging Face's `GPT2LMHeadModel`
//!   layout (so `polylm eval`, `generate` and `transformers` read the folder directly);
//! - `optimizer.safetensors`: AdamW's f32 master weights and moments (`<param>.master`,
//!   `<param>.m`, `<param>.v`);
//! - `tokenizer.json` (or `tokenizer.model` for a SentencePiece one): the tokenizer the run used;
//! - `trainer_state.json`: step, tokens, data position, counters (written last).
//!
//! Atomicity: everything is written into a hidden sibling `.tmp-step-<N>-<pid>/`, each file
//! synced, and the folder renamed into place only when complete; the parent folder is then
//! synced. A crash at any moment leaves either the old set of checkpoints or the old set plus
//! the new one, never a half-written `step-*` folder; leftovers of interrupted saves are
//! hidden folders that [`latest`] ignores and [`clean_partial`] removes. Older checkpoints are
//! pruned only after the new one is in place.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use polylm_engine::{AdamW, AdamWHyper, DType, Device, Tensor};
use polylm_model::safetensors::{write_file, write_text_atomic, Dtype, MappedFile, TensorData};
use polylm_model::Gpt;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// The optimiser state file's name.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file's name (the last one written).
pub const STATE_FILE: &str = "trainer_state.json";
/// The tokenizer copy's name (JSON: ours or a Hugging Face `tokenizer.json`).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer copy's name when it is a SentencePiece model.
pub const SENTENCEPIECE_TOKENIZER_FILE: &str = "tokenizer.model";
/// The version of [`TrainerState`]'s format.
pub const STATE_VERSION: u32 = 1;

/// Everything besides weights and optimiser moments that an exact resume needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Optimiser steps done (the next step is this one, counting from 0).
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// The data source's position (sampler or SFT packer state).
    pub data: serde_json::Value,
    /// Steps skipped for non-finite loss or gradients.
    pub skipped_steps: u64,
    /// Rollbacks to an earlier checkpoint.
    pub rollbacks: u64,
    /// The run's name.
    pub run: String,
    /// The parameters' precision (`f32` or `bf16`).
    pub dtype: String,
}

/// The folder name of step `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-").and_then(|n| n.parse().ok())
}

/// Every `step-<N>` folder under `root`, oldest first, with whether it is complete (holds the
/// trainer state, the file a save writes last).
fn scan(root: &Path) -> Result<Vec<(u64, PathBuf, bool)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = step_of(&name) {
            let complete = entry.path().join(STATE_FILE).is_file();
            found.push((step, entry.path(), complete));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint of a [`scan`].
fn newest_complete(all: &[(u64, PathBuf, bool)]) -> Option<&PathBuf> {
    all.iter().rev().find(|(_, _, complete)| *complete).map(|(_, dir, _)| dir)
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    Ok(scan(root)?.into_iter().filter(|(_, _, complete)| *complete).map(|(s, p, _)| (s, p)).collect())
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// The checkpoint a run resumes from: the newest under `root`, if any. A newest `step-*`
/// folder without the trainer state is an error, not a reason to quietly resume from an older
/// checkpoint or start over: saves are atomic, so such a folder was damaged or copied in by
/// hand, and the user has to say what to do with it.
pub fn resume_point(root: &Path) -> Result<Option<PathBuf>> {
    let all = scan(root)?;
    match all.last() {
        Some((_, newest, false)) => {
            let fallback = match newest_complete(&all) {
                Some(dir) => format!("resume from {}", dir.display()),
                None => "start over".to_string(),
            };
            Err(TrainError::Checkpoint {
                path: newest.clone(),
                reason: format!(
                    "incomplete: no {STATE_FILE} (a save writes it last and renames the folder \
                     into place, so this one was damaged or copied in by hand); move it away to \
                     {fallback}, or use another run.out_dir"
                ),
            })
        }
        Some((_, newest, true)) => Ok(Some(newest.clone())),
        None => Ok(None),
    }
}

/// The checkpoint folder `path` names: `path` itself when it holds a model, else the newest
/// checkpoint under `path/checkpoints` (a run's output folder) or under `path`.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(polylm_model::checkpoint::CONFIG_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let mut incomplete = None;
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        let all = scan(&root)?;
        if let Some(dir) = newest_complete(&all) {
            return Ok(dir.clone());
        }
        incomplete = incomplete.or_else(|| all.last().map(|(_, dir, _)| dir.clone()));
    }
    let reason = match incomplete {
        Some(dir) => format!(
            "holds no complete checkpoint: {} has no {STATE_FILE} (give that folder itself to use \
             its weights)",
            dir.display()
        ),
        None => "holds no model (config.json) and no step-* checkpoint folders".into(),
    };
    Err(TrainError::Checkpoint { path: path.to_path_buf(), reason })
}

/// Removes the hidden folders that interrupted saves left under `root`.
pub fn clean_partial(root: &Path) -> Result<usize> {
    if !root.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-step-") {
            fs::remove_dir_all(entry.path()).map_err(io_err(entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What [`save`] writes.
pub struct SaveRequest<'a> {
    /// The model (its parameters in their training precision).
    pub model: &'a Gpt,
    /// The optimiser.
    pub optimizer: &'a AdamW,
    /// The trainer state.
    pub state: &'a TrainerState,
    /// The tokenizer file to copy in.
    pub tokenizer: &'a Path,
    /// The copy's name: [`TOKENIZER_FILE`] or [`SENTENCEPIECE_TOKENIZER_FILE`] (see
    /// [`crate::tokenizer::RunTokenizer::file_name`]).
    pub tokenizer_file: &'a str,
    /// Checkpoints to keep after this one is written.
    pub keep: usize,
    /// A pause between files (for the crash tests: gives a test time to kill the process in
    /// the middle of a save).
    pub pause: Option<Duration>,
}

/// Writes the checkpoint of `req.state.step` under `root` atomically and prunes old ones;
/// returns its folder. On any error (a full disk, say) the partial folder is removed and
/// every earlier checkpoint is untouched.
pub fn save(root: &Path, req: &SaveRequest<'_>) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    let name = step_dir_name(req.state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let dest = root.join(&name);
    let written = write_all(&tmp, req);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        // A checkpoint of the same step from an earlier attempt: replace it.
        fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
    }
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    sync_dir(root)?;
    let all = list(root)?;
    if all.len() > req.keep {
        for (_, old) in &all[..all.len() - req.keep] {
            fs::remove_dir_all(old).map_err(io_err(old))?;
        }
    }
    Ok(dest)
}

fn write_all(tmp: &Path, req: &SaveRequest<'_>) -> Result<()> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
    }
    fs::create_dir_all(tmp).map_err(io_err(tmp))?;
    let pause = || {
        if let Some(p) = req.pause {
            std::thread::sleep(p);
        }
    };
    let dtype = req.model.dtype();
    let file_dtype = if dtype == DType::BF16 { DType::BF16 } else { DType::F32 };
    polylm_model::checkpoint::save(req.model, tmp, file_dtype)?;
    pause();
    write_optimizer(&tmp.join(OPTIMIZER_FILE), req.model, req.optimizer)?;
    pause();
    let tok = tmp.join(req.tokenizer_file);
    fs::copy(req.tokenizer, &tok).map_err(io_err(req.tokenizer))?;
    fs::File::open(&tok).and_then(|f| f.sync_all()).map_err(io_err(&tok))?;
    let state = serde_json::to_string_pretty(req.state).expect("the trainer state always serialises");
    write_text_atomic(&tmp.join(STATE_FILE), &state)?;
    sync_dir(tmp)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

fn write_optimizer(path: &Path, model: &Gpt, opt: &AdamW) -> Result<()> {
    let names: Vec<String> = model.params().named().into_iter().map(|(n, _)| n).collect();
    let state = opt.state();
    let mut tensors = Vec::with_capacity(names.len() * 3);
    for (name, parts) in names.iter().zip(state.iter()) {
        for (suffix, t) in ["master", "m", "v"].iter().zip(parts.iter()) {
            let values: Vec<f32> = t.to_vec::<f32>()?;
            tensors.push(TensorData {
                name: format!("{name}.{suffix}"),
                dtype: Dtype::F32,
                shape: t.shape().to_vec(),
                bytes: bytemuck::cast_slice(&values).to_vec(),
            });
        }
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("steps".to_string(), opt.steps().to_string());
    metadata
        .insert("weight_decay".to_string(), serde_json::to_string(opt.weight_decays()).unwrap_or_default());
    write_file(path, &tensors, &metadata)?;
    Ok(())
}

/// A loaded checkpoint.
pub struct Loaded {
    /// The model, on `device` in the saved precision.
    pub model: Gpt,
    /// The optimiser, on `device`.
    pub optimizer: AdamW,
    /// The trainer state.
    pub state: TrainerState,
}

/// Loads the checkpoint folder `dir` onto `device`. Missing files, truncated tensors, shapes
/// that disagree with the config, and an unknown state version are errors naming the file.
pub fn load(dir: &Path, device: Device, weight_decay: &[f64], hyper: AdamWHyper) -> Result<Loaded> {
    let bad = |reason: String| TrainError::Checkpoint { path: dir.to_path_buf(), reason };
    let state_path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    if state.version != STATE_VERSION {
        return Err(bad(format!(
            "{STATE_FILE}: version {} (this build reads {STATE_VERSION})",
            state.version
        )));
    }
    let dtype = match state.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => return Err(bad(format!("{STATE_FILE}: unknown dtype {other:?}"))),
    };
    let mut model = polylm_model::checkpoint::load(dir, dtype)?;
    model.params_mut().to_device(device)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let file = MappedFile::open(&opt_path)?;
    let steps: u64 = file
        .header()
        .metadata
        .get("steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("{OPTIMIZER_FILE}: no `steps` in its metadata")))?;
    let named = model.params().named();
    let mut state_tensors = Vec::with_capacity(named.len());
    for (name, p) in &named {
        let mut parts = Vec::with_capacity(3);
        for suffix in ["master", "m", "v"] {
            let key = format!("{name}.{suffix}");
            let view = file.tensor(&key)?;
            if view.shape != p.shape() {
                return Err(bad(format!(
                    "{OPTIMIZER_FILE}: {key} has shape {:?}, the model's parameter {:?}",
                    view.shape,
                    p.shape()
                )));
            }
            let values = view.to_f32()?;
            check_optimizer_values(&key, suffix, &values)
                .map_err(|r| bad(format!("{OPTIMIZER_FILE}: {r}")))?;
            parts.push(Tensor::from_vec(values, p.shape())?);
        }
        let [master, m, v]: [Tensor; 3] = parts.try_into().expect("three parts were pushed");
        state_tensors.push([master, m, v]);
    }
    let params: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
    let optimizer = AdamW::from_state(&params, weight_decay, hyper, steps, state_tensors)?;
    drop(named);
    Ok(Loaded { model, optimizer, state })
}

/// Master weights and moments that no AdamW run can produce (a non-finite value anywhere, a
/// negative second moment) mean a damaged file: resuming from it would turn the weights into
/// NaN at the first step and save them so.
fn check_optimizer_values(key: &str, suffix: &str, values: &[f32]) -> std::result::Result<(), String> {
    let bad = values.iter().position(|&x| !x.is_finite() || (suffix == "v" && x < 0.0));
    match bad {
        None => Ok(()),
        Some(i) => Err(format!(
            "{key}[{i}] = {}: {}",
            values[i],
            if suffix == "v" { "second moments are finite and non-negative" } else { "not finite" }
        )),
    }
}
