//! Writes checkpoints for `scripts/check_gpt2_export.py`, which loads them with Hugging Face
//! `transformers` and compares its logits with ours: a small random model (every parameter
//! perturbed away from 0 and 1) saved in f32 to `DIR/f32` and in bf16 to `DIR/bf16`, and
//! `DIR/ours.safetensors` with the input ids and our logits for both.
//!
//! ```sh
//! cargo run --release -p polylm-model --example export_gpt2 -- /tmp/polylm-export
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use polylm_engine::{with_no_grad, DType, Rng, Tensor};
use polylm_model::safetensors::{write_file, Dtype, TensorData};
use polylm_model::{checkpoint, Batch, Gpt, ModelConfig};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn main() -> polylm_model::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/tmp/polylm-export".into());
    let dir = Path::new(&dir);
    let cfg = ModelConfig {
        vocab_size: 96,
        layers: 2,
        hidden: 32,
        heads: 4,
        ffn: 80,
        context: 24,
        layer_norm_eps: 1e-5,
        init_std: 0.02,
        eos_token_id: Some(95),
    };
    let mut model = Gpt::new(cfg.clone(), DType::F32, 1)?;
    let mut rng = Rng::new(2);
    for (_, t) in model.params_mut().named_mut() {
        let noise = Tensor::randn(t.shape(), 0.2, DType::F32, &mut rng)?;
        *t = t.detach().add(&noise)?.requires_grad();
    }
    let (batch, seq) = (2, 20);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(96) as u32).collect();
    let b = Batch { ids: &ids, batch, seq };
    let mut out = vec![TensorData {
        name: "input_ids".into(),
        dtype: Dtype::I64,
        shape: vec![batch, seq],
        bytes: ids.iter().flat_map(|&i| i64::from(i).to_le_bytes()).collect(),
    }];
    for (name, dtype) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        checkpoint::save(&model, &dir.join(name), dtype)?;
        // Our logits from the checkpoint as written (bf16-rounded weights for bf16).
        let loaded = checkpoint::load(&dir.join(name), DType::F32)?;
        let logits = with_no_grad(|| loaded.logits(&b))?.to_vec::<f32>()?;
        out.push(TensorData {
            name: format!("logits.{name}"),
            dtype: Dtype::F32,
            shape: vec![batch, seq, cfg.vocab_size],
            bytes: f32_bytes(&logits),
        });
    }
    write_file(&dir.join("ours.safetensors"), &out, &BTreeMap::new())?;
    println!("wrote {}", dir.display());
    Ok(())
}
