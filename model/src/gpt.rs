//! The GPT-2-layout model and its training forward pass: embeddings, pre-LayerNorm blocks
//! (fused QKV, causal attention, bias + GeLU MLP), final LayerNorm, LM head tied to the token
//! embedding, straight into the engine's fused, vocabulary-chunked cross-entropy.
//!
//! Memory: the probabilities are never materialised (the engine's cross-entropy works on
//! vocabulary chunks and saves one log-sum-exp per row). [`Gpt::forward_backward`] goes
//! further and never holds more than a quarter of the `[B·T, V]` logits (the head runs in
//! row chunks, each back-propagated at once); [`Gpt::logits`] and [`Gpt::loss`] return the
//! whole `[B, T, V]` logits or a loss recorded in the graph, for evaluation and tests.

use std::collections::HashMap;

use polylm_engine::{no_grad, DType, Rng, Tensor, TensorId};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::{BlockParams, Params};

/// A GPT-2-layout language model: its config and parameters.
#[derive(Clone, Debug)]
pub struct Gpt {
    config: ModelConfig,
    params: Params,
}

/// A batch of token ids laid out `[batch, seq]`, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The ids, `batch·seq` of them.
    pub ids: &'a [u32],
    /// Number of sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

impl Gpt {
    /// A freshly initialised model (see [`Params::init`]) with parameters of `dtype`.
    pub fn new(config: ModelConfig, dtype: DType, seed: u64) -> Result<Gpt> {
        let mut rng = Rng::new(seed);
        let params = Params::init(&config, dtype, &mut rng)?;
        Ok(Gpt { config, params })
    }

    /// A model from existing parameters, whose shapes must match `config`.
    pub fn from_params(config: ModelConfig, params: Params) -> Result<Gpt> {
        config.validate()?;
        let specs = crate::params::param_specs(&config);
        for ((name, shape), (_, t)) in specs.iter().zip(params.named()) {
            if t.shape() != shape.as_slice() {
                return Err(ModelError::TensorShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.shape().to_vec(),
                });
            }
        }
        if params.blocks.len() != config.layers {
            return Err(ModelError::BadInput(format!(
                "{} blocks of parameters for a config of {} layers",
                params.blocks.len(),
                config.layers
            )));
        }
        Ok(Gpt { config, params })
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The parameters, mutably (an optimizer replaces tensors through this).
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.params.wte.dtype()
    }

    /// Checks a batch: the id count, the sequence length against the context, every id
    /// against the vocabulary.
    pub fn check_batch(&self, b: &Batch<'_>) -> Result<()> {
        if b.batch == 0 || b.seq == 0 {
            return Err(ModelError::BadInput(format!("empty batch [{}, {}]", b.batch, b.seq)));
        }
        if b.batch.checked_mul(b.seq) != Some(b.ids.len()) {
            return Err(ModelError::BadInput(format!(
                "{} ids cannot be laid out as [{}, {}]",
                b.ids.len(),
                b.batch,
                b.seq
            )));
        }
        if b.seq > self.config.context {
            return Err(ModelError::SequenceTooLong { len: b.seq, context: self.config.context });
        }
        check_ids(b.ids, self.config.vocab_size)
    }

    /// Token plus position embeddings, `[B, T, C]`.
    fn embed(&self, b: &Batch<'_>) -> Result<Tensor> {
        let tok = self.params.wte.embedding(b.ids, &[b.batch, b.seq])?;
        let pos = self.params.wpe.narrow(0, 0, b.seq)?;
        Ok(tok.add(&pos)?)
    }

    /// One pre-LayerNorm block on `[B, T, C]`.
    fn block(&self, p: &BlockParams, x: &Tensor) -> Result<Tensor> {
        let (bsz, t, c) = (x.shape()[0], x.shape()[1], self.config.hidden);
        let (h, d) = (self.config.heads, self.config.head_dim());
        let eps = self.config.layer_norm_eps;
        let ln1 = x.layer_norm(&p.ln_1_weight, &p.ln_1_bias, eps)?;
        let qkv = ln1.linear(&p.attn_weight, &p.attn_bias)?;
        // [B, T, 3, H, D] viewed as [3, B, H, T, D]: flash attention reads Q, K, V in place,
        // writes its output as [B, T, H, D] (so the transpose and reshape below are free) and
        // its gradient straight into the projection's layout; elsewhere the op copies.
        let qkv = qkv.reshape(&[bsz, t, 3, h, d])?.permute(&[2, 0, 3, 1, 4])?;
        let att = Tensor::causal_attention_packed(&qkv)?;
        let att = att.permute(&[0, 2, 1, 3])?.reshape(&[bsz, t, c])?;
        // The residual add and the second layer norm in one pass on the GPU.
        let attn_out = att.linear(&p.attn_proj_weight, &p.attn_proj_bias)?;
        let (x, ln2) = x.add_layer_norm(&attn_out, &p.ln_2_weight, &p.ln_2_bias, eps)?;
        let up = ln2.linear_gelu(&p.fc_weight, &p.fc_bias)?;
        Ok(x.add(&up.linear(&p.mlp_proj_weight, &p.mlp_proj_bias)?)?)
    }

    /// Final LayerNorm and the tied LM head: `[B, T, C]` → logits `[B, T, V]`.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.layer_norm(&self.params.ln_f_weight, &self.params.ln_f_bias, self.config.layer_norm_eps)?;
        Ok(h.matmul_t(&self.params.wte)?)
    }

    /// Logits `[B, T, V]` of a batch (recorded in the graph when grad mode is on).
    pub fn logits(&self, b: &Batch<'_>) -> Result<Tensor> {
        self.check_batch(b)?;
        let mut x = self.embed(b)?;
        for p in &self.params.blocks {
            x = self.block(p, &x)?;
        }
        self.head(&x)
    }

    /// Mean cross-entropy of the batch against `targets` (one per token, `[B, T]`), targets
    /// equal to `ignore` not counted. The probabilities are never materialised.
    pub fn loss(&self, b: &Batch<'_>, targets: &[u32], ignore: Option<u32>) -> Result<Tensor> {
        self.check_targets(b, targets, ignore)?;
        Ok(self.logits(b)?.cross_entropy(targets, ignore)?)
    }

    fn check_targets(&self, b: &Batch<'_>, targets: &[u32], ignore: Option<u32>) -> Result<()> {
        if targets.len() != b.ids.len() {
            return Err(ModelError::BadInput(format!("{} targets for {} ids", targets.len(), b.ids.len())));
        }
        let vocab = self.config.vocab_size;
        match targets.iter().enumerate().find(|&(_, &t)| Some(t) != ignore && t as usize >= vocab) {
            Some((position, &id)) => Err(ModelError::TokenOutOfRange { id, position, vocab }),
            None => Ok(()),
        }
    }

    /// Forward and backward: returns the loss (mean over the targets not equal to `ignore`)
    /// and adds every parameter's gradient into its `.grad()` (call [`Params::zero_grad`]
    /// between steps).
    ///
    /// The LM head and cross-entropy run in row chunks, each back-propagated at once (see
    /// [`Gpt::head_backward`]), so at most one chunk of logits exists at a time.
    ///
    /// With `recompute`, only each block's input is kept during the forward pass (computed
    /// under `no_grad`); the backward pass runs block by block from the last, recomputing the
    /// block's forward with the graph on and back-propagating the incoming gradient `g`
    /// through it as the surrogate scalar `sum(out · g)`. Peak activation memory is then one
    /// block plus the `[B, T, C]` block inputs, at the cost of a second forward pass. The
    /// gradients are the same as without recomputation (up to float summation order).
    pub fn forward_backward(
        &self,
        b: &Batch<'_>,
        targets: &[u32],
        ignore: Option<u32>,
        recompute: bool,
    ) -> Result<f64> {
        self.forward_backward_with(b, targets, ignore, recompute, &mut |_| {})
    }

    /// [`Gpt::forward_backward`], calling `on_final(i)` once for every parameter `i` (its index
    /// in [`Params::named`] order) as soon as its gradient from this pass is complete in its
    /// `.grad()`, while the backward pass goes on through the earlier layers: the final
    /// LayerNorm after the head, then each block's parameters as the backward pass leaves the
    /// block (last block first), then the embeddings. Parameters that no gradient reached are
    /// reported at the end. The order depends only on the architecture, so it is the same on
    /// every rank of a data-parallel run, which starts summing each group of gradients over
    /// the ranks while the backward pass is still running.
    pub fn forward_backward_with(
        &self,
        b: &Batch<'_>,
        targets: &[u32],
        ignore: Option<u32>,
        recompute: bool,
        on_final: &mut dyn FnMut(usize),
    ) -> Result<f64> {
        self.check_batch(b)?;
        self.check_targets(b, targets, ignore)?;
        let mut ready = ReadyParams::new(&self.params);
        let loss = if !recompute {
            let mut x = self.embed(b)?;
            for p in &self.params.blocks {
                x = self.block(p, &x)?;
            }
            let (loss, g) = self.head_backward(&x, targets, ignore)?;
            ready.report_head(on_final);
            x.backward_from_with(&g, &mut |t| ready.report(t, on_final))?;
            loss
        } else {
            // Forward without a graph, keeping each block's input.
            let mut inputs = Vec::with_capacity(self.config.layers + 1);
            {
                let _guard = no_grad();
                let mut x = self.embed(b)?;
                for p in &self.params.blocks {
                    let next = self.block(p, &x)?;
                    inputs.push(x);
                    x = next;
                }
                inputs.push(x);
            }
            let last = inputs.pop().expect("the list holds the final hidden state");
            let (loss, mut g) = self.head_backward(&last, targets, ignore)?;
            ready.report_head(on_final);
            for (p, x) in self.params.blocks.iter().zip(inputs).rev() {
                let x = x.requires_grad();
                let out = self.block(p, &x)?;
                out.backward_from_with(&g, &mut |t| ready.report(t, on_final))?;
                g = grad_of(&x)?;
            }
            self.embed(b)?.backward_from_with(&g, &mut |t| ready.report(t, on_final))?;
            loss
        };
        ready.report_rest(on_final);
        Ok(loss)
    }

    /// The final LayerNorm, LM head and cross-entropy on the last hidden state `x` `[B, T, C]`
    /// (its graph, if any, is not followed), back-propagated at once: the parameters of the
    /// head get their gradients, and the loss and the gradient with respect to `x` are
    /// returned.
    ///
    /// The rows are cut into at most [`HEAD_CHUNKS`] chunks; each chunk's logits are made,
    /// fed to the fused cross-entropy (weighted by its share of the counted targets) and
    /// back-propagated before the next chunk, so at most one chunk of logits (and of their
    /// gradient) is alive: `B·T/chunks × V` values instead of `B·T × V`.
    pub fn head_backward(&self, x: &Tensor, targets: &[u32], ignore: Option<u32>) -> Result<(f64, Tensor)> {
        let shape = x.shape().to_vec();
        let c = self.config.hidden;
        let rows = x.numel() / c.max(1);
        if targets.len() != rows {
            return Err(ModelError::BadInput(format!("{} targets for {rows} rows", targets.len())));
        }
        let total = targets.iter().filter(|&&t| Some(t) != ignore).count();
        let xl = x.detach().requires_grad();
        let h =
            xl.layer_norm(&self.params.ln_f_weight, &self.params.ln_f_bias, self.config.layer_norm_eps)?;
        let hd = h.detach().reshape(&[rows, c])?;
        let chunk = rows.div_ceil(HEAD_CHUNKS).max(1);
        let mut loss = 0.0;
        let mut grads = Vec::with_capacity(HEAD_CHUNKS);
        let mut start = 0;
        while start < rows {
            let n = chunk.min(rows - start);
            let t = &targets[start..start + n];
            let count = t.iter().filter(|&&t| Some(t) != ignore).count();
            if count == 0 {
                grads.push(Tensor::zeros(&[n, c], hd.dtype())?);
            } else {
                let hc = hd.narrow(0, start, n)?.requires_grad();
                // Each chunk's backward adds its [V, C] gradient into the embedding's in place
                // (`matmul_t` records the embedding itself, whose gradient the product
                // accumulates into).
                let ce = hc.matmul_t(&self.params.wte)?.cross_entropy(t, ignore)?;
                let scaled = ce.mul_scalar(count as f64 / total as f64)?;
                loss += scaled.to_scalar()?;
                scaled.backward()?;
                grads.push(grad_of(&hc)?);
            }
            start += n;
        }
        let g = Tensor::concat(&grads, 0)?.reshape(&shape)?;
        h.backward_from(&g)?;
        Ok((loss, grad_of(&xl)?))
    }
}

/// The most row chunks [`Gpt::head_backward`] cuts the LM head into. Each chunk's product
/// accumulates its `[V, C]` weight gradient into the embedding's (reading and writing it once
/// more), so more chunks save logits memory but cost gradient traffic.
pub const HEAD_CHUNKS: usize = 4;

/// Which parameters [`Gpt::forward_backward_with`] has reported final.
struct ReadyParams {
    /// Parameter index by tensor id.
    index: HashMap<TensorId, usize>,
    /// The final LayerNorm's parameters (final once the head is back-propagated).
    head: [usize; 2],
    reported: Vec<bool>,
}

impl ReadyParams {
    fn new(params: &Params) -> ReadyParams {
        let named = params.named();
        let index: HashMap<TensorId, usize> =
            named.iter().enumerate().map(|(i, (_, t))| (t.id(), i)).collect();
        let at = |t: &Tensor| index[&t.id()];
        let head = [at(&params.ln_f_weight), at(&params.ln_f_bias)];
        ReadyParams { index, head, reported: vec![false; named.len()] }
    }

    fn report_index(&mut self, i: usize, on_final: &mut dyn FnMut(usize)) {
        if !self.reported[i] {
            self.reported[i] = true;
            on_final(i);
        }
    }

    /// After the head's backward: the final LayerNorm is complete (the tied embedding is not).
    fn report_head(&mut self, on_final: &mut dyn FnMut(usize)) {
        for i in self.head {
            self.report_index(i, on_final);
        }
    }

    /// A leaf whose gradient a body backward pass has just completed. The head's passes (which
    /// add to the tied embedding) report nothing: the embedding is complete only when the body's
    /// pass reaches the embedding lookup.
    fn report(&mut self, t: &Tensor, on_final: &mut dyn FnMut(usize)) {
        if let Some(&i) = self.index.get(&t.id()) {
            self.report_index(i, on_final);
        }
    }

    /// Every parameter not reported yet, in order (those no gradient reached).
    fn report_rest(&mut self, on_final: &mut dyn FnMut(usize)) {
        for i in 0..self.reported.len() {
            self.report_index(i, on_final);
        }
    }
}

fn grad_of(t: &Tensor) -> Result<Tensor> {
    t.grad().ok_or_else(|| ModelError::BadInput("no gradient reached a recomputed block input".into()))
}

/// Errors on the first id `>= vocab`.
pub(crate) fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        Some((position, &id)) => Err(ModelError::TokenOutOfRange { id, position, vocab }),
        None => Ok(()),
    }
}
