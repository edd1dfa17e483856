//! The model's hyper-parameters: presets, validation, parameter counts, and the two file
//! forms (our TOML and Hugging Face's GPT-2 `config.json`).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Hyper-parameters of a GPT-2-layout model (pre-LayerNorm, learned positions, tied head).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size (rows of the token embedding and of the tied LM head).
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Hidden (embedding) size.
    pub hidden: usize,
    /// Attention heads; must divide `hidden`.
    pub heads: usize,
    /// Inner size of the MLP (4·hidden in PolyLM).
    pub ffn: usize,
    /// Context length (rows of the position embedding).
    pub context: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of the normal initialisation.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// The end-of-sequence token, if the vocabulary has one.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_init_std() -> f64 {
    0.006
}

/// The names accepted by [`ModelConfig::preset`].
pub const PRESETS: [&str; 4] = ["tiny", "small", "polylm-1.7b", "polylm-13b"];

impl ModelConfig {
    /// A named preset: `polylm-1.7b` and `polylm-13b` (the paper's models, 256,000-token
    /// vocabulary), or `tiny` / `small` (CPU-sized models that train in minutes).
    pub fn preset(name: &str) -> Result<ModelConfig> {
        let (vocab_size, layers, hidden, heads, context) = match name {
            "tiny" => (8192, 2, 128, 4, 128),
            "small" => (16384, 4, 256, 8, 256),
            "polylm-1.7b" => (256_000, 24, 2048, 16, 2048),
            "polylm-13b" => (256_000, 40, 5120, 40, 2048),
            other => return Err(ModelError::UnknownPreset(other.to_string())),
        };
        let eos_token_id = if vocab_size == 256_000 { Some(2) } else { None };
        Ok(ModelConfig {
            vocab_size,
            layers,
            hidden,
            heads,
            ffn: 4 * hidden,
            context,
            layer_norm_eps: default_eps(),
            init_std: default_init_std(),
            eos_token_id,
        })
    }

    /// Checks that every field can describe a model.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(ModelError::InvalidConfig { field, reason });
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("context", self.context),
        ] {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return bad("vocab_size", format!("{} does not fit token ids of 32 bits", self.vocab_size));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad("heads", format!("{} heads do not divide hidden size {}", self.heads, self.hidden));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad("layer_norm_eps", format!("{} is not a positive number", self.layer_norm_eps));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return bad("init_std", format!("{} is not a positive number", self.init_std));
        }
        if let Some(eos) = self.eos_token_id {
            if eos as usize >= self.vocab_size {
                return bad(
                    "eos_token_id",
                    format!("{eos} is outside the vocabulary of {}", self.vocab_size),
                );
            }
        }
        if self.param_count_checked().is_none() {
            return bad("hidden", "the parameter count overflows".into());
        }
        Ok(())
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    fn param_count_checked(&self) -> Option<u64> {
        let (v, c, f, p, l) = (
            self.vocab_size as u64,
            self.hidden as u64,
            self.ffn as u64,
            self.context as u64,
            self.layers as u64,
        );
        let block = 2 * c // ln_1
            + c.checked_mul(3 * c)?.checked_add(3 * c)? // fused QKV
            + c.checked_mul(c)?.checked_add(c)? // attention output
            + 2 * c // ln_2
            + c.checked_mul(f)?.checked_add(f)? // MLP up
            + f.checked_mul(c)?.checked_add(c)?; // MLP down
        let embeddings = v.checked_mul(c)?.checked_add(p.checked_mul(c)?)?;
        embeddings.checked_add(block.checked_mul(l)?)?.checked_add(2 * c)
    }

    /// Number of parameters with the LM head tied to the token embedding (counted once).
    pub fn param_count(&self) -> u64 {
        self.param_count_checked().unwrap_or(u64::MAX)
    }

    /// Parameters in the token embedding (which is also the LM head).
    pub fn embedding_params(&self) -> u64 {
        self.vocab_size as u64 * self.hidden as u64
    }

    /// Errors unless a tokenizer's vocabulary size equals the model's.
    pub fn check_tokenizer_vocab(&self, tokenizer_vocab: usize) -> Result<()> {
        if tokenizer_vocab != self.vocab_size {
            return Err(ModelError::VocabMismatch { tokenizer: tokenizer_vocab, model: self.vocab_size });
        }
        Ok(())
    }

    /// Parses and validates our TOML form (field names as in this struct; `layer_norm_eps`,
    /// `init_std` and `eos_token_id` may be left out).
    pub fn from_toml_str(text: &str) -> Result<ModelConfig> {
        let cfg: ModelConfig = toml::from_str(text)
            .map_err(|e| ModelError::ConfigParse { path: "<toml>".into(), reason: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config in our TOML form.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a config of plain numbers always serialises")
    }

    /// Reads a config file: Hugging Face `config.json` when the name ends in `.json`, our
    /// TOML otherwise.
    pub fn from_file(path: &std::path::Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
        let named = |e: ModelError| match e {
            ModelError::ConfigParse { reason, .. } => {
                ModelError::ConfigParse { path: path.display().to_string(), reason }
            }
            other => other,
        };
        if path.extension().is_some_and(|e| e == "json") {
            crate::hf_config::from_hf_json(&text).map_err(named)
        } else {
            ModelConfig::from_toml_str(&text).map_err(named)
        }
    }
}
