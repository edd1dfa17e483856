//! The model's parameter tensors, their Hugging Face `GPT2LMHeadModel` names, and the spec's
//! initialisation.
//!
//! Linear weights are stored `[in, out]`, exactly GPT-2's "Conv1D" layout, so that `x·W` needs
//! no transpose and checkpoints map one to one onto Hugging Face tensors.

use polylm_engine::{DType, Rng, Tensor};

use crate::config::ModelConfig;
use crate::error::Result;

/// The parameters of one transformer block.
#[derive(Clone, Debug)]
pub struct BlockParams {
    /// `ln_1.weight`, `[hidden]`.
    pub ln_1_weight: Tensor,
    /// `ln_1.bias`, `[hidden]`.
    pub ln_1_bias: Tensor,
    /// `attn.c_attn.weight`, `[hidden, 3·hidden]` (fused Q, K, V).
    pub attn_weight: Tensor,
    /// `attn.c_attn.bias`, `[3·hidden]`.
    pub attn_bias: Tensor,
    /// `attn.c_proj.weight`, `[hidden, hidden]`.
    pub attn_proj_weight: Tensor,
    /// `attn.c_proj.bias`, `[hidden]`.
    pub attn_proj_bias: Tensor,
    /// `ln_2.weight`, `[hidden]`.
    pub ln_2_weight: Tensor,
    /// `ln_2.bias`, `[hidden]`.
    pub ln_2_bias: Tensor,
    /// `mlp.c_fc.weight`, `[hidden, ffn]`.
    pub fc_weight: Tensor,
    /// `mlp.c_fc.bias`, `[ffn]`.
    pub fc_bias: Tensor,
    /// `mlp.c_proj.weight`, `[ffn, hidden]`.
    pub mlp_proj_weight: Tensor,
    /// `mlp.c_proj.bias`, `[hidden]`.
    pub mlp_proj_bias: Tensor,
}

/// All parameters of the model.
#[derive(Clone, Debug)]
pub struct Params {
    /// `transformer.wte.weight`, `[vocab, hidden]`; also the LM head (tied).
    pub wte: Tensor,
    /// `transformer.wpe.weight`, `[context, hidden]`.
    pub wpe: Tensor,
    /// The transformer blocks.
    pub blocks: Vec<BlockParams>,
    /// `transformer.ln_f.weight`, `[hidden]`.
    pub ln_f_weight: Tensor,
    /// `transformer.ln_f.bias`, `[hidden]`.
    pub ln_f_bias: Tensor,
}

/// The suffixes of a block's tensors after `transformer.h.{i}.`, in [`BlockParams`] order.
pub const BLOCK_NAMES: [&str; 12] = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

impl BlockParams {
    fn tensors(&self) -> [&Tensor; 12] {
        [
            &self.ln_1_weight,
            &self.ln_1_bias,
            &self.attn_weight,
            &self.attn_bias,
            &self.attn_proj_weight,
            &self.attn_proj_bias,
            &self.ln_2_weight,
            &self.ln_2_bias,
            &self.fc_weight,
            &self.fc_bias,
            &self.mlp_proj_weight,
            &self.mlp_proj_bias,
        ]
    }

    fn tensors_mut(&mut self) -> [&mut Tensor; 12] {
        [
            &mut self.ln_1_weight,
            &mut self.ln_1_bias,
            &mut self.attn_weight,
            &mut self.attn_bias,
            &mut self.attn_proj_weight,
            &mut self.attn_proj_bias,
            &mut self.ln_2_weight,
            &mut self.ln_2_bias,
            &mut self.fc_weight,
            &mut self.fc_bias,
            &mut self.mlp_proj_weight,
            &mut self.mlp_proj_bias,
        ]
    }
}

/// Every parameter's Hugging Face name and shape for `cfg`, in a fixed order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (v, c, f, p) = (cfg.vocab_size, cfg.hidden, cfg.ffn, cfg.context);
    let mut out = vec![
        ("transformer.wte.weight".to_string(), vec![v, c]),
        ("transformer.wpe.weight".to_string(), vec![p, c]),
    ];
    let block_shapes = [
        vec![c],
        vec![c],
        vec![c, 3 * c],
        vec![3 * c],
        vec![c, c],
        vec![c],
        vec![c],
        vec![c],
        vec![c, f],
        vec![f],
        vec![f, c],
        vec![c],
    ];
    for i in 0..cfg.layers {
        for (name, shape) in BLOCK_NAMES.iter().zip(&block_shapes) {
            out.push((format!("transformer.h.{i}.{name}"), shape.clone()));
        }
    }
    out.push(("transformer.ln_f.weight".to_string(), vec![c]));
    out.push(("transformer.ln_f.bias".to_string(), vec![c]));
    out
}

impl Params {
    /// The spec's initialisation: normal(0, `init_std`) for embeddings and linear weights,
    /// std `init_std/sqrt(2·layers)` for the two residual output projections (attention
    /// `c_proj` and MLP `c_proj`), zero biases, LayerNorm weight one and bias zero. Every
    /// tensor is a leaf that requires grad.
    pub fn init(cfg: &ModelConfig, dtype: DType, rng: &mut Rng) -> Result<Params> {
        cfg.validate()?;
        let std = cfg.init_std;
        let resid_std = std / (2.0 * cfg.layers as f64).sqrt();
        let normal = |shape: &[usize], s: f64, rng: &mut Rng| -> Result<Tensor> {
            Ok(Tensor::randn(shape, s, dtype, rng)?.requires_grad())
        };
        let full = |shape: &[usize], v: f64| -> Result<Tensor> {
            Ok(Tensor::full(shape, v, dtype)?.requires_grad())
        };
        let (c, f) = (cfg.hidden, cfg.ffn);
        let wte = normal(&[cfg.vocab_size, c], std, rng)?;
        let wpe = normal(&[cfg.context, c], std, rng)?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            blocks.push(BlockParams {
                ln_1_weight: full(&[c], 1.0)?,
                ln_1_bias: full(&[c], 0.0)?,
                attn_weight: normal(&[c, 3 * c], std, rng)?,
                attn_bias: full(&[3 * c], 0.0)?,
                attn_proj_weight: normal(&[c, c], resid_std, rng)?,
                attn_proj_bias: full(&[c], 0.0)?,
                ln_2_weight: full(&[c], 1.0)?,
                ln_2_bias: full(&[c], 0.0)?,
                fc_weight: normal(&[c, f], std, rng)?,
                fc_bias: full(&[f], 0.0)?,
                mlp_proj_weight: normal(&[f, c], resid_std, rng)?,
                mlp_proj_bias: full(&[c], 0.0)?,
            });
        }
        Ok(Params { wte, wpe, blocks, ln_f_weight: full(&[c], 1.0)?, ln_f_bias: full(&[c], 0.0)? })
    }

    /// Every tensor with its Hugging Face name, in [`param_specs`] order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![
            ("transformer.wte.weight".to_string(), &self.wte),
            ("transformer.wpe.weight".to_string(), &self.wpe),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            for (name, t) in BLOCK_NAMES.iter().zip(b.tensors()) {
                out.push((format!("transformer.h.{i}.{name}"), t));
            }
        }
        out.push(("transformer.ln_f.weight".to_string(), &self.ln_f_weight));
        out.push(("transformer.ln_f.bias".to_string(), &self.ln_f_bias));
        out
    }

    /// Every tensor, mutably, with its Hugging Face name, in [`param_specs`] order (for an
    /// optimizer that replaces tensors).
    pub fn named_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = vec![
            ("transformer.wte.weight".to_string(), &mut self.wte),
            ("transformer.wpe.weight".to_string(), &mut self.wpe),
        ];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (name, t) in BLOCK_NAMES.iter().zip(b.tensors_mut()) {
                out.push((format!("transformer.h.{i}.{name}"), t));
            }
        }
        out.push(("transformer.ln_f.weight".to_string(), &mut self.ln_f_weight));
        out.push(("transformer.ln_f.bias".to_string(), &mut self.ln_f_bias));
        out
    }

    /// Parameters from tensors given in [`param_specs`] order for a model of `layers`
    /// blocks; each becomes a leaf that requires grad. [`crate::Gpt::from_params`] checks the
    /// shapes.
    pub fn from_tensors(tensors: Vec<Tensor>, layers: usize) -> Result<Params> {
        let expected = 2 + 12 * layers + 2;
        if tensors.len() != expected {
            return Err(crate::ModelError::BadInput(format!(
                "{} tensors for a model of {layers} layers, which has {expected}",
                tensors.len()
            )));
        }
        Ok(Params::from_ordered(tensors, layers))
    }

    /// Builds parameters from tensors given in [`param_specs`] order (shapes checked by the
    /// caller); each becomes a leaf that requires grad.
    pub(crate) fn from_ordered(tensors: Vec<Tensor>, layers: usize) -> Params {
        let mut it = tensors.into_iter().map(Tensor::requires_grad);
        let mut next = || it.next().expect("caller passes exactly param_specs().len() tensors");
        let wte = next();
        let wpe = next();
        let blocks = (0..layers)
            .map(|_| BlockParams {
                ln_1_weight: next(),
                ln_1_bias: next(),
                attn_weight: next(),
                attn_bias: next(),
                attn_proj_weight: next(),
                attn_proj_bias: next(),
                ln_2_weight: next(),
                ln_2_bias: next(),
                fc_weight: next(),
                fc_bias: next(),
                mlp_proj_weight: next(),
                mlp_proj_bias: next(),
            })
            .collect();
        let ln_f_weight = next();
        let ln_f_bias = next();
        Params { wte, wpe, blocks, ln_f_weight, ln_f_bias }
    }

    /// Moves every tensor to `device` (each stays a leaf that requires grad).
    pub fn to_device(&mut self, device: polylm_engine::Device) -> Result<()> {
        for (_, t) in self.named_mut() {
            *t = t.to_device(device)?.requires_grad();
        }
        Ok(())
    }

    /// Forgets every accumulated gradient.
    pub fn zero_grad(&self) {
        for (_, t) in self.named() {
            t.zero_grad();
        }
    }

    /// Total element count.
    pub fn numel(&self) -> u64 {
        self.named().iter().map(|(_, t)| t.numel() as u64).sum()
    }
}
