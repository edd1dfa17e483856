//! The whole model's gradients in f64 against central finite differences (random shapes and
//! values, never zeros or ones), activation recomputation against the plain backward, and the
//! layout of every parameter gradient (dense, including the tied embedding's from the LM head).

mod common;

use common::{perturb, random_ids, small_config};
use polylm_engine::{with_no_grad, DType, Rng, Tensor};
use polylm_model::{Batch, Gpt};
use proptest::prelude::*;

fn loss_at(model: &Gpt, b: &Batch<'_>, targets: &[u32]) -> f64 {
    with_no_grad(|| model.loss(b, targets, Some(u32::MAX))).unwrap().to_scalar().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn f64_gradients_match_finite_differences(
        seed in 0u64..10_000,
        layers in 1usize..3,
        heads in 1usize..3,
        head_dim in 2usize..5,
        batch in 1usize..3,
        seq in 2usize..6,
    ) {
        let hidden = heads * head_dim;
        let cfg = small_config(13, layers, hidden, heads, 3 * hidden + 1, 6);
        let mut model = Gpt::new(cfg, DType::F64, seed).unwrap();
        perturb(&mut model, 0.4, seed + 1);
        let mut rng = Rng::new(seed + 2);
        let ids = random_ids(batch * seq, 13, &mut rng);
        let mut targets = random_ids(batch * seq, 13, &mut rng);
        targets[0] = u32::MAX; // ignored
        let b = Batch { ids: &ids, batch, seq };
        model.forward_backward(&b, &targets, Some(u32::MAX), false).unwrap();
        let grads: Vec<Vec<f64>> = model.params().named().iter().map(|(_, t)| t.grad().unwrap().to_vec_f64()).collect();
        let h = 1e-5;
        for (i, g) in grads.iter().enumerate() {
            // Three random coordinates of every tensor.
            for _ in 0..3 {
                let j = rng.below(g.len() as u64) as usize;
                let eval = |delta: f64| {
                    let mut m = model.clone();
                    let (_, t) = m.params_mut().named_mut().swap_remove(i);
                    let mut v = t.to_vec_f64();
                    v[j] += delta;
                    *t = Tensor::from_vec(v, t.shape()).unwrap();
                    loss_at(&m, &b, &targets)
                };
                let numeric = (eval(h) - eval(-h)) / (2.0 * h);
                let name = &model.params().named()[i].0;
                prop_assert!((numeric - g[j]).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "{}[{}]: analytic {} vs numeric {}", name, j, g[j], numeric);
            }
        }
    }
}

#[test]
fn recomputation_gives_the_same_gradients() {
    let cfg = small_config(29, 3, 12, 2, 20, 8);
    let mut model = Gpt::new(cfg, DType::F64, 21).unwrap();
    perturb(&mut model, 0.3, 22);
    let mut rng = Rng::new(23);
    let ids = random_ids(16, 29, &mut rng);
    let targets = random_ids(16, 29, &mut rng);
    let b = Batch { ids: &ids, batch: 2, seq: 8 };
    let plain = model.forward_backward(&b, &targets, None, false).unwrap();
    let g1: Vec<Vec<f64>> =
        model.params().named().iter().map(|(_, t)| t.grad().unwrap().to_vec_f64()).collect();
    model.params().zero_grad();
    let re = model.forward_backward(&b, &targets, None, true).unwrap();
    assert_eq!(plain, re);
    for ((name, t), want) in model.params().named().iter().zip(&g1) {
        let got = t.grad().unwrap().to_vec_f64();
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 1e-12 * scale.max(1.0), "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn training_reduces_the_loss_of_the_tiny_preset() {
    // A few reference-AdamW steps on one repeated batch of the `tiny` preset (vocabulary cut to 256
    // to keep the test fast): the loss must go down.
    let mut cfg = polylm_model::ModelConfig::preset("tiny").unwrap();
    cfg.vocab_size = 256;
    let mut model = Gpt::new(cfg, DType::F32, 5).unwrap();
    let mut rng = Rng::new(6);
    let ids = random_ids(2 * 32, 256, &mut rng);
    let targets: Vec<u32> = ids.iter().map(|&i| (i * 7 + 3) % 256).collect();
    let b = Batch { ids: &ids, batch: 2, seq: 32 };
    let mut losses = Vec::new();
    let mut opt = common::RefAdamW::new(3e-3, 0.9, 0.95, 1e-8, 0.0);
    for _ in 0..8 {
        model.params().zero_grad();
        losses.push(model.forward_backward(&b, &targets, None, false).unwrap());
        opt.step(&mut model);
    }
    assert!(losses[7] < losses[0] - 0.5, "losses {losses:?}");
}

#[test]
fn fully_ignored_batch_gives_zero_loss_and_zero_gradients() {
    let model = Gpt::new(small_config(17, 1, 8, 2, 12, 4), DType::F32, 31).unwrap();
    let ids = [1u32, 2, 3, 4];
    let targets = [u32::MAX; 4];
    let loss = model
        .forward_backward(&Batch { ids: &ids, batch: 1, seq: 4 }, &targets, Some(u32::MAX), false)
        .unwrap();
    assert_eq!(loss, 0.0);
    for (name, t) in model.params().named() {
        assert!(t.grad().unwrap().to_vec_f64().iter().all(|&g| g == 0.0), "{name}");
    }
    // Targets outside the vocabulary (and not the ignore index) are typed errors.
    let bad = [1u32, 2, 17, 3];
    assert!(matches!(
        model.forward_backward(&Batch { ids: &ids, batch: 1, seq: 4 }, &bad, None, true),
        Err(polylm_model::ModelError::TokenOutOfRange { id: 17, position: 2, .. })
    ));
}

/// What `forward_backward_with` reported: each parameter's index in report order, with its
/// gradient at that moment and whether the first block's parameters had any gradient yet.
struct Reports {
    order: Vec<usize>,
    grads_then: Vec<Option<Vec<f64>>>,
    first_block_touched_then: Vec<bool>,
}

fn report_run(model: &Gpt, b: &Batch<'_>, targets: &[u32], recompute: bool) -> (f64, Reports) {
    let named = model.params().named();
    let first_block: Vec<&Tensor> =
        named.iter().filter(|(n, _)| n.starts_with("transformer.h.0.")).map(|(_, t)| *t).collect();
    let mut reports =
        Reports { order: vec![], grads_then: vec![None; named.len()], first_block_touched_then: vec![] };
    let loss = model
        .forward_backward_with(b, targets, None, recompute, &mut |i| {
            reports.order.push(i);
            reports.grads_then[i] = named[i].1.grad().map(|g| g.to_vec_f64());
            reports.first_block_touched_then.push(first_block.iter().any(|t| t.grad().is_some()));
        })
        .unwrap();
    (loss, reports)
}

#[test]
fn parameters_are_reported_once_each_as_soon_as_their_gradient_is_complete() {
    let cfg = small_config(31, 3, 12, 2, 20, 8);
    let mut model = Gpt::new(cfg, DType::F64, 41).unwrap();
    perturb(&mut model, 0.3, 42);
    let mut rng = Rng::new(43);
    let ids = random_ids(16, 31, &mut rng);
    let targets = random_ids(16, 31, &mut rng);
    let b = Batch { ids: &ids, batch: 2, seq: 8 };
    let plain = model.forward_backward(&b, &targets, None, false).unwrap();
    let names: Vec<String> = model.params().named().iter().map(|(n, _)| n.clone()).collect();
    let want: Vec<Vec<f64>> =
        model.params().named().iter().map(|(_, t)| t.grad().unwrap().to_vec_f64()).collect();
    for recompute in [false, true] {
        model.params().zero_grad();
        let (loss, r) = report_run(&model, &b, &targets, recompute);
        assert_eq!(loss, plain);
        let mut sorted = r.order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..names.len()).collect::<Vec<_>>(), "each parameter exactly once");
        // At its report a gradient is already what it is after the whole pass.
        for (i, got) in r.grads_then.iter().enumerate() {
            let got = got.as_ref().unwrap_or_else(|| panic!("{}: no gradient when reported", names[i]));
            let scale = want[i].iter().fold(0f64, |m, x| m.max(x.abs())).max(1.0);
            for (a, w) in got.iter().zip(&want[i]) {
                assert!((a - w).abs() <= 1e-12 * scale, "{} (recompute {recompute}): {a} vs {w}", names[i]);
            }
        }
        // The head first, the last block before the first, the embeddings last; the last block's
        // parameters are reported before the first block has any gradient.
        let pos = |prefix: &str| -> Vec<usize> {
            r.order
                .iter()
                .enumerate()
                .filter(|(_, &i)| names[i].starts_with(prefix))
                .map(|(k, _)| k)
                .collect()
        };
        let (head, last, first, wte) = (
            pos("transformer.ln_f."),
            pos("transformer.h.2."),
            pos("transformer.h.0."),
            pos("transformer.wte"),
        );
        assert!(head.iter().max() < last.iter().min(), "recompute {recompute}: {:?}", r.order);
        assert!(last.iter().max() < first.iter().min(), "recompute {recompute}: {:?}", r.order);
        assert!(first.iter().max() < wte.iter().min(), "recompute {recompute}: {:?}", r.order);
        assert!(last.iter().all(|&k| !r.first_block_touched_then[k]), "recompute {recompute}");
    }
}

/// Every parameter's gradient is a dense row-major tensor after a step, with and without
/// recomputation: the data-parallel flattening and the optimiser read them as they are, and a
/// strided gradient (such as the tied embedding's, which the LM head uses transposed) would
/// cost a gather of the whole matrix on every read.
#[test]
fn parameter_gradients_are_dense() {
    let cfg = small_config(29, 3, 12, 2, 20, 8);
    let model = Gpt::new(cfg, DType::F32, 31).unwrap();
    let mut rng = Rng::new(32);
    let ids = random_ids(16, 29, &mut rng);
    let targets = random_ids(16, 29, &mut rng);
    let b = Batch { ids: &ids, batch: 2, seq: 8 };
    for recompute in [false, true] {
        model.params().zero_grad();
        model.forward_backward(&b, &targets, None, recompute).unwrap();
        for (name, t) in model.params().named() {
            let g = t.grad().unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(g.is_contiguous(), "{name} (recompute {recompute}): gradient layout {:?}", g.layout());
        }
    }
    // The LM head's own contribution, alone (one row: one chunk, nothing added after it).
    model.params().zero_grad();
    let x = Tensor::randn(&[1, 1, 12], 1.0, DType::F32, &mut rng).unwrap();
    model.head_backward(&x, &targets[..1], None).unwrap();
    let (name, wte) = &model.params().named()[0];
    let g = wte.grad().expect("the head reaches the embedding");
    assert!(g.is_contiguous(), "{name} from the head alone: gradient layout {:?}", g.layout());
}
