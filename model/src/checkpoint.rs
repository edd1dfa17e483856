//! Checkpoints in Hugging Face's `GPT2LMHeadModel` layout: a directory holding
//! `model.safetensors` (tensor names `transformer.wte.weight`, `transformer.h.{i}.attn.c_attn.weight`,
//! ..., linear weights `[in, out]` as GPT-2's Conv1D stores them) and `config.json`.
//!
//! Loading reads the weights in any layout the Hugging Face Hub ships (one safetensors file,
//! safetensors shards with `model.safetensors.index.json`, a PyTorch `pytorch_model.bin`, or
//! PyTorch shards with `pytorch_model.bin.index.json`: see [`crate::weights`]; a PyTorch file
//! may also be a training script's checkpoint holding the state dict under `model`,
//! `state_dict`, ... with DDP's `module.` names, see [`crate::pytorch`]), accepts the
//! names with or without the `transformer.` prefix (files written by `GPT2LMHeadModel` and by
//! the bare `GPT2Model`), ignores GPT-2's attention-mask buffers
//! (`h.{i}.attn.bias`, `h.{i}.attn.masked_bias`) and an `lm_head.weight` equal to the token
//! embedding; any other missing, extra, misshapen or mistyped tensor is an error naming it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use polylm_engine::{DType, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::hf_config::{from_hf_json, to_hf_json};
use crate::params::{param_specs, Params};
use crate::safetensors::{write_streaming, write_text_atomic, Dtype, TensorSpec, TensorView};
use crate::weights::{CheckpointWeights, TensorSource};

/// The weights file's name inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The config file's name inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// Writes `model` to `dir` (created if needed) as `model.safetensors` in `dtype` (f32 or
/// bf16) and `config.json`, each atomically.
pub fn save(model: &Gpt, dir: &Path, dtype: DType) -> Result<()> {
    let file_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        other => {
            return Err(ModelError::TensorDType {
                name: "<checkpoint>".into(),
                dtype: other.name().into(),
                reason: "checkpoints are written in f32 or bf16",
            })
        }
    };
    std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
    let named = model.params().named();
    let specs: Vec<TensorSpec> = named
        .iter()
        .map(|(name, t)| TensorSpec { name: name.clone(), dtype: file_dtype, shape: t.shape().to_vec() })
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    write_streaming(&dir.join(WEIGHTS_FILE), &specs, &metadata, |i| {
        let t = named[i].1.to_dtype(dtype)?;
        let bytes = match dtype {
            DType::BF16 => t.to_vec::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            _ => t.to_vec::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Ok(Cow::Owned(bytes))
    })?;
    let torch_dtype = if dtype == DType::BF16 { "bfloat16" } else { "float32" };
    write_text_atomic(&dir.join(CONFIG_FILE), &to_hf_json(model.config(), torch_dtype))
}

/// Loads the checkpoint in `dir` (`config.json` and the weights in any layout of
/// [`crate::weights::WEIGHT_FILES`]) with parameters of `dtype` (f32 or bf16; the files may
/// hold either, or f16 or f64).
pub fn load(dir: &Path, dtype: DType) -> Result<Gpt> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(crate::error::io_err(&cfg_path))?;
    let config = from_hf_json(&text).map_err(|e| match e {
        ModelError::ConfigParse { reason, .. } => {
            ModelError::ConfigParse { path: cfg_path.display().to_string(), reason }
        }
        other => other,
    })?;
    let weights = CheckpointWeights::open_dir(dir)?;
    load_weights(&config, &weights, dtype)
}

/// The name a parameter has in `file`: with the `transformer.` prefix, or without.
fn find<'a>(file: &'a (impl TensorSource + ?Sized), name: &str) -> Option<TensorView<'a>> {
    file.tensor(name).ok().or_else(|| name.strip_prefix("transformer.").and_then(|n| file.tensor(n).ok()))
}

/// Whether an extra tensor in a GPT-2 file is one of the buffers that carry no parameters.
fn is_ignored_buffer(name: &str) -> bool {
    let n = name.strip_prefix("transformer.").unwrap_or(name);
    n.starts_with("h.") && (n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"))
}

/// Builds a model of `config` from named tensors (a mapped safetensors file, a PyTorch file,
/// a checkpoint's shards), checking every tensor.
pub fn load_weights(config: &ModelConfig, file: &(impl TensorSource + ?Sized), dtype: DType) -> Result<Gpt> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(ModelError::TensorDType {
            name: "<model>".into(),
            dtype: dtype.name().into(),
            reason: "models are loaded in f32 or bf16",
        });
    }
    config.validate()?;
    // Checked before the list of expected tensors is built: a damaged config with an absurd layer
    // count must be an error, not an attempt to allocate a name for every one of its layers. (Extra
    // blocks in the file are reported below as unexpected tensors.)
    let file_layers = layers_in(file);
    if file_layers < config.layers {
        return Err(ModelError::LayerCount { config: config.layers, file: file_layers });
    }
    let specs = param_specs(config);
    let mut used = BTreeSet::new();
    let mut tensors = Vec::with_capacity(specs.len());
    for (name, shape) in &specs {
        let view = find(file, name).ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        if view.shape != shape.as_slice() {
            return Err(ModelError::TensorShape {
                name: view.name.to_string(),
                expected: shape.clone(),
                found: view.shape.to_vec(),
            });
        }
        if !matches!(view.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(ModelError::TensorDType {
                name: view.name.to_string(),
                dtype: view.dtype.name().into(),
                reason: "expected F32, BF16 or F16",
            });
        }
        used.insert(view.name.to_string());
        let t = match dtype {
            DType::BF16 => Tensor::from_vec(view.to_bf16()?, shape)?,
            _ => Tensor::from_vec(view.to_f32()?, shape)?,
        };
        file.release(view.name);
        tensors.push(t);
    }
    for name in file.names() {
        if used.contains(name) || is_ignored_buffer(name) {
            continue;
        }
        if name == "lm_head.weight" {
            check_tied_head(file, name)?;
            continue;
        }
        return Err(ModelError::UnexpectedTensor { name: name.to_string() });
    }
    Gpt::from_params(config.clone(), Params::from_ordered(tensors, config.layers))
}

/// Transformer blocks in `file`: one more than the highest `h.N` index among its tensor names.
fn layers_in(file: &(impl TensorSource + ?Sized)) -> usize {
    file.names()
        .into_iter()
        .filter_map(|name| {
            let rest = name.strip_prefix("transformer.").unwrap_or(name).strip_prefix("h.")?;
            rest.split_once('.')?.0.parse::<usize>().ok()
        })
        .map(|i| i.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// An `lm_head.weight` is accepted only when it equals the token embedding.
fn check_tied_head(file: &(impl TensorSource + ?Sized), name: &str) -> Result<()> {
    let head = file.tensor(name)?;
    let wte = find(file, "transformer.wte.weight")
        .ok_or_else(|| ModelError::MissingTensor { name: "transformer.wte.weight".into() })?;
    if head.shape != wte.shape {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: wte.shape.to_vec(),
            found: head.shape.to_vec(),
        });
    }
    // A PyTorch file's tied head is a view of the embedding's own storage: the same bytes,
    // equal without reading them (which would fault the released embedding back in).
    let same = if head.dtype == wte.dtype {
        std::ptr::eq(head.data, wte.data) || head.data == wte.data
    } else {
        head.to_f32()? == wte.to_f32()?
    };
    if same {
        Ok(())
    } else {
        Err(ModelError::UntiedHead)
    }
}
