//! Hugging Face's GPT-2 `config.json`: reading it into a [`ModelConfig`] (refusing the
//! options our model does not implement) and writing one that `transformers` loads.

use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

fn parse_err(reason: String) -> ModelError {
    ModelError::ConfigParse { path: "<config.json>".into(), reason }
}

fn get_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| parse_err(format!("{key} must be a non-negative integer, got {v}"))),
    }
}

fn require_usize(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    get_usize(obj, key)?.ok_or_else(|| parse_err(format!("missing {key}")))
}

fn get_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| parse_err(format!("{key} must be a number, got {v}"))),
    }
}

/// The names `transformers` gives the tanh approximation of GeLU (the one this model computes):
/// `gelu_new` (GPT-2), `gelu_pytorch_tanh`, `gelu_fast` and `gelu_accurate` are the same function
/// written differently. The exact GeLU (`gelu`, with erf) is not among them.
pub const TANH_GELU_NAMES: [&str; 4] = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"];

/// Parses a Hugging Face GPT-2 `config.json` (`n_embd`, `n_layer`, `n_head`, `n_positions`,
/// `n_inner`, `vocab_size`, `layer_norm_epsilon`, `initializer_range`, `eos_token_id`).
///
/// Options that change the computation in ways this model does not implement are refused:
/// an activation other than the tanh GeLU, untied embeddings, cross-attention, and attention
/// scaled by the layer index.
pub fn from_hf_json(text: &str) -> Result<ModelConfig> {
    let value: Value = serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    let obj = value.as_object().ok_or_else(|| parse_err("expected a JSON object".into()))?;
    if let Some(t) = obj.get("model_type").and_then(Value::as_str) {
        if t != "gpt2" {
            return Err(parse_err(format!("model_type {t:?} is not gpt2")));
        }
    }
    let unsupported = |field: &'static str, reason: String| Err(ModelError::InvalidConfig { field, reason });
    if let Some(act) = obj.get("activation_function").and_then(Value::as_str) {
        if !TANH_GELU_NAMES.contains(&act) {
            return unsupported(
                "activation_function",
                format!("{act:?}: only the tanh GeLU is implemented ({})", TANH_GELU_NAMES.join(", ")),
            );
        }
    }
    for (key, bad) in [
        ("tie_word_embeddings", Value::Bool(false)),
        ("add_cross_attention", Value::Bool(true)),
        ("scale_attn_by_inverse_layer_idx", Value::Bool(true)),
        ("scale_attn_weights", Value::Bool(false)),
    ] {
        if obj.get(key) == Some(&bad) {
            return unsupported("hf config", format!("{key} = {bad} is not supported"));
        }
    }
    let hidden = require_usize(obj, "n_embd")?;
    let eos = match get_usize(obj, "eos_token_id")? {
        Some(e) => Some(u32::try_from(e).map_err(|_| parse_err(format!("eos_token_id {e} is too large")))?),
        None => None,
    };
    let cfg = ModelConfig {
        vocab_size: require_usize(obj, "vocab_size")?,
        layers: require_usize(obj, "n_layer")?,
        hidden,
        heads: require_usize(obj, "n_head")?,
        ffn: get_usize(obj, "n_inner")?.unwrap_or(4 * hidden),
        context: require_usize(obj, "n_positions")?,
        layer_norm_eps: get_f64(obj, "layer_norm_epsilon")?.unwrap_or(1e-5),
        init_std: get_f64(obj, "initializer_range")?.unwrap_or(0.02),
        eos_token_id: eos,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A `config.json` for `transformers`' `GPT2LMHeadModel` describing `cfg` (dropout 0, tanh
/// GeLU, tied embeddings); `torch_dtype` names the checkpoint's dtype (`float32`/`bfloat16`).
pub fn to_hf_json(cfg: &ModelConfig, torch_dtype: &str) -> String {
    let v = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context,
        "n_ctx": cfg.context,
        "n_embd": cfg.hidden,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": cfg.ffn,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "use_cache": true,
        "bos_token_id": cfg.eos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    });
    serde_json::to_string_pretty(&v).expect("a JSON value always serialises")
}
