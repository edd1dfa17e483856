//! End-to-end gradient check of a whole two-layer GPT (GPT-2 layout: token and position
//! embeddings, pre-LayerNorm blocks with fused QKV, causal attention, bias + GeLU MLP,
//! residuals, final LayerNorm, LM head tied to the token embedding, cross-entropy with an
//! ignore index), in f64, against central finite differences for every parameter.

mod common;

use common::{gradcheck, random_tensor};
use polylm_engine::{Result, Rng, Tensor};

const BATCH: usize = 2;
const SEQ: usize = 5;
const HIDDEN: usize = 8;
const HEADS: usize = 2;
const VOCAB: usize = 11;
const LAYERS: usize = 2;
const IGNORE: u32 = 999;

/// Parameter tensors in order: wte, wpe, then per layer 12 tensors, then ln_f weight and bias.
fn init_params(rng: &mut Rng) -> Vec<Tensor> {
    let c = HIDDEN;
    let mut p = vec![random_tensor(rng, &[VOCAB, c], 0.5), random_tensor(rng, &[SEQ, c], 0.3)];
    for _ in 0..LAYERS {
        // LayerNorm weights near one but not one; biases small and non-zero.
        p.push(random_tensor(rng, &[c], 0.3).add_scalar(1.0).unwrap());
        p.push(random_tensor(rng, &[c], 0.1));
        p.push(random_tensor(rng, &[c, 3 * c], 0.4));
        p.push(random_tensor(rng, &[3 * c], 0.1));
        p.push(random_tensor(rng, &[c, c], 0.3));
        p.push(random_tensor(rng, &[c], 0.1));
        p.push(random_tensor(rng, &[c], 0.3).add_scalar(1.0).unwrap());
        p.push(random_tensor(rng, &[c], 0.1));
        p.push(random_tensor(rng, &[c, 4 * c], 0.4));
        p.push(random_tensor(rng, &[4 * c], 0.1));
        p.push(random_tensor(rng, &[4 * c, c], 0.2));
        p.push(random_tensor(rng, &[c], 0.1));
    }
    p.push(random_tensor(rng, &[c], 0.3).add_scalar(1.0).unwrap());
    p.push(random_tensor(rng, &[c], 0.1));
    p
}

fn split_heads(x: &Tensor) -> Result<Tensor> {
    x.reshape(&[BATCH, SEQ, HEADS, HIDDEN / HEADS])?.permute(&[0, 2, 1, 3])
}

fn gpt_loss(p: &[Tensor], ids: &[u32], targets: &[u32]) -> Result<Tensor> {
    let c = HIDDEN;
    let mut x = p[0].embedding(ids, &[BATCH, SEQ])?.add(&p[1])?;
    for l in 0..LAYERS {
        let w = &p[2 + 12 * l..2 + 12 * (l + 1)];
        let h = x.layer_norm(&w[0], &w[1], 1e-5)?;
        let qkv = h.matmul(&w[2])?.add(&w[3])?;
        let parts = qkv.split(-1, &[c, c, c])?;
        let (q, k, v) = (split_heads(&parts[0])?, split_heads(&parts[1])?, split_heads(&parts[2])?);
        let a = Tensor::causal_attention(&q, &k, &v)?.permute(&[0, 2, 1, 3])?.reshape(&[BATCH, SEQ, c])?;
        x = x.add(&a.matmul(&w[4])?.add(&w[5])?)?;
        let h2 = x.layer_norm(&w[6], &w[7], 1e-5)?;
        let f = h2.matmul(&w[8])?.bias_gelu(&w[9])?;
        x = x.add(&f.matmul(&w[10])?.add(&w[11])?)?;
    }
    let n = p.len();
    let x = x.layer_norm(&p[n - 2], &p[n - 1], 1e-5)?;
    let logits = x.matmul(&p[0].t()?)?;
    logits.cross_entropy(targets, Some(IGNORE))
}

#[test]
fn two_layer_gpt_gradients_match_finite_differences() {
    let mut rng = Rng::new(2024);
    let params = init_params(&mut rng);
    let ids: Vec<u32> = (0..BATCH * SEQ).map(|_| rng.below(VOCAB as u64) as u32).collect();
    let mut targets: Vec<u32> = (0..BATCH * SEQ).map(|_| rng.below(VOCAB as u64) as u32).collect();
    targets[3] = IGNORE;
    let loss = gpt_loss(&params, &ids, &targets).unwrap().to_scalar().unwrap();
    // A random model over 11 tokens sits near ln(11).
    assert!(loss.is_finite() && loss > 0.5 && loss < 10.0, "loss {loss}");
    let f = |p: &[Tensor]| gpt_loss(p, &ids, &targets);
    gradcheck("two-layer GPT", &params, &f, &mut rng, 6);
}
