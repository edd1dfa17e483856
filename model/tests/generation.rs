//! Inference: KV-cached incremental decoding against the full forward pass, batched prompts
//! of different lengths, sampling (greedy, temperature, top-k, top-p, repetition penalty)
//! against plain references, stopping rules, and input errors.

mod common;

use common::{perturb, random_ids, small_config};
use polylm_engine::{with_no_grad, DType, Rng};
use polylm_model::{Batch, FinishReason, Gpt, KvCache, LogitRows, ModelError, Sampler, SamplingParams};
use proptest::prelude::*;

fn model(seed: u64) -> Gpt {
    let cfg = small_config(53, 2, 24, 3, 40, 20);
    let mut m = Gpt::new(cfg, DType::F32, seed).unwrap();
    perturb(&mut m, 0.3, seed + 1);
    m
}

fn full_logits(m: &Gpt, ids: &[u32]) -> Vec<f32> {
    with_no_grad(|| m.logits(&Batch { ids, batch: 1, seq: ids.len() })).unwrap().to_vec::<f32>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Feeding sequences of different lengths in random chunks (prefill, then pieces, then
    /// single tokens), batched together, gives the logits of one full forward pass of each.
    #[test]
    fn incremental_logits_equal_full_forward(seed in 0u64..1000, lens in prop::collection::vec(1usize..=20, 1..4)) {
        let m = model(seed);
        let mut rng = Rng::new(seed + 7);
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| random_ids(n, 53, &mut rng)).collect();
        let mut cache = KvCache::new(m.config(), seqs.len(), 20).unwrap();
        let mut got: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        let mut done = vec![0usize; seqs.len()];
        while done.iter().zip(&seqs).any(|(d, s)| *d < s.len()) {
            let chunks: Vec<&[u32]> = seqs.iter().zip(&done).map(|(s, &d)| {
                let take = (1 + rng.below(5) as usize).min(s.len() - d);
                &s[d..d + take]
            }).collect();
            let out = m.forward_cached(&mut cache, &chunks, LogitRows::All).unwrap();
            for (b, (rows, c)) in out.into_iter().zip(&chunks).enumerate() {
                got[b].extend(rows);
                done[b] += c.len();
            }
        }
        for (b, s) in seqs.iter().enumerate() {
            prop_assert_eq!(cache.len(b), s.len());
            let want = full_logits(&m, s);
            let err = common::rel_err(&got[b], &want);
            prop_assert!(err < 2e-5, "sequence {} (len {}): relative error {:.3e}", b, s.len(), err);
        }
    }
}

#[test]
fn cached_and_uncached_generation_agree_greedy_and_sampled() {
    let m = model(11);
    let prompts = vec![vec![1, 2, 3], vec![5], vec![7, 8, 9, 10, 11, 12, 13]];
    for params in [
        SamplingParams { max_new_tokens: 9, ..SamplingParams::default() },
        SamplingParams {
            temperature: 0.8,
            top_k: Some(10),
            top_p: 0.9,
            repetition_penalty: 1.3,
            max_new_tokens: 9,
            seed: 5,
            ..SamplingParams::default()
        },
    ] {
        let a = m.generate(&prompts, &params).unwrap();
        let b = m.generate_uncached(&prompts, &params).unwrap();
        assert_eq!(a, b, "{params:?}");
        for g in &a {
            assert_eq!(g.tokens.len(), 9);
            assert_eq!(g.finish, FinishReason::Length);
        }
        // Batched equals one prompt at a time.
        for (p, g) in prompts.iter().zip(&a) {
            if params.temperature == 0.0 {
                assert_eq!(&m.generate(std::slice::from_ref(p), &params).unwrap()[0], g);
            }
        }
    }
}

#[test]
fn greedy_picks_the_argmax_of_the_full_forward() {
    let m = model(12);
    let prompt = vec![4u32, 9, 16, 25];
    let out = m
        .generate(std::slice::from_ref(&prompt), &SamplingParams { max_new_tokens: 5, ..Default::default() })
        .unwrap();
    let mut seq = prompt.clone();
    for &t in &out[0].tokens {
        let logits = full_logits(&m, &seq);
        let last = &logits[logits.len() - 53..];
        let best = (0..53).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
        assert_eq!(t, best);
        seq.push(t);
    }
}

#[test]
fn stops_at_eos_length_and_context() {
    let m = model(13);
    let prompt = vec![vec![3u32, 4]];
    let free = m.generate(&prompt, &SamplingParams { max_new_tokens: 6, ..Default::default() }).unwrap();
    // Use the third greedy token as the stop token: generation must end just before it.
    let eos = free[0].tokens[2];
    let first = free[0].tokens.iter().position(|&t| t == eos).unwrap();
    let stopped = m
        .generate(
            &prompt,
            &SamplingParams { max_new_tokens: 6, eos_token_id: Some(eos), ..Default::default() },
        )
        .unwrap();
    assert_eq!(stopped[0].finish, FinishReason::Eos);
    assert_eq!(stopped[0].tokens, free[0].tokens[..first]);
    // The context is 20: an 18-token prompt can grow by 2.
    let long = vec![(0..18).collect::<Vec<u32>>()];
    let out = m.generate(&long, &SamplingParams { max_new_tokens: 10, ..Default::default() }).unwrap();
    assert_eq!((out[0].tokens.len(), out[0].finish), (2, FinishReason::ContextFull));
    let none = m.generate(&prompt, &SamplingParams { max_new_tokens: 0, ..Default::default() }).unwrap();
    assert_eq!((none[0].tokens.len(), none[0].finish), (0, FinishReason::Length));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let m = model(14);
    let p = SamplingParams::default();
    assert!(matches!(
        m.generate(&[vec![1; 21]], &p),
        Err(ModelError::SequenceTooLong { len: 21, context: 20 })
    ));
    assert!(matches!(
        m.generate(&[vec![1, 53]], &p),
        Err(ModelError::TokenOutOfRange { id: 53, position: 1, vocab: 53 })
    ));
    assert!(matches!(m.generate(&[vec![]], &p), Err(ModelError::BadInput(_))));
    let bad = [
        SamplingParams { temperature: -1.0, ..p.clone() },
        SamplingParams { temperature: f32::NAN, ..p.clone() },
        SamplingParams { top_k: Some(0), ..p.clone() },
        SamplingParams { top_p: 0.0, ..p.clone() },
        SamplingParams { top_p: 1.5, ..p.clone() },
        SamplingParams { repetition_penalty: 0.0, ..p.clone() },
        SamplingParams { eos_token_id: Some(99), ..p.clone() },
    ];
    for params in bad {
        assert!(
            matches!(m.generate(&[vec![1]], &params), Err(ModelError::InvalidSampling { .. })),
            "{params:?}"
        );
    }
    let ids = [1u32, 2, 3, 60];
    assert!(matches!(
        with_no_grad(|| m.logits(&Batch { ids: &ids, batch: 1, seq: 4 })),
        Err(ModelError::TokenOutOfRange { id: 60, .. })
    ));
    let long: Vec<u32> = vec![0; 21];
    assert!(matches!(
        m.logits(&Batch { ids: &long, batch: 1, seq: 21 }),
        Err(ModelError::SequenceTooLong { .. })
    ));
    assert!(matches!(m.logits(&Batch { ids: &ids, batch: 3, seq: 2 }), Err(ModelError::BadInput(_))));
    let mut cache = KvCache::new(m.config(), 1, 4).unwrap();
    assert!(matches!(
        m.forward_cached(&mut cache, &[&[1, 2, 3, 4, 5]], LogitRows::Last),
        Err(ModelError::SequenceTooLong { .. })
    ));
    assert!(matches!(
        m.forward_cached(&mut cache, &[&[1], &[2]], LogitRows::Last),
        Err(ModelError::BadInput(_))
    ));
    assert!(matches!(KvCache::new(m.config(), 1, 21), Err(ModelError::SequenceTooLong { .. })));
}

/// The softmax of `logits / t` restricted to `keep`, in f64.
fn reference_probs(logits: &[f32], t: f64, keep: &[usize]) -> Vec<f64> {
    let max = keep.iter().map(|&i| f64::from(logits[i]) / t).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = keep.iter().map(|&i| (f64::from(logits[i]) / t - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn sampling_frequencies_match_the_filtered_softmax() {
    let mut rng = Rng::new(99);
    let logits: Vec<f32> = (0..12).map(|_| (rng.normal() * 1.5) as f32).collect();
    let mut order: Vec<usize> = (0..12).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    // top_k = 6, then top_p = 0.8 over the renormalised six.
    let t = 0.7;
    let p6 = reference_probs(&logits, t, &order[..6]);
    let mut cum = 0.0;
    let nucleus = p6
        .iter()
        .position(|p| {
            cum += p;
            cum >= 0.8
        })
        .unwrap()
        + 1;
    let keep = &order[..nucleus];
    let want = reference_probs(&logits, t, keep);
    let params =
        SamplingParams { temperature: t as f32, top_k: Some(6), top_p: 0.8, seed: 3, ..Default::default() };
    let mut s = Sampler::new(params, 12).unwrap();
    let n = 40_000;
    let mut counts = [0usize; 12];
    for _ in 0..n {
        counts[s.sample(&mut logits.clone(), &[]).unwrap() as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let expect = keep.iter().position(|&k| k == i).map_or(0.0, |j| want[j]);
        let f = c as f64 / n as f64;
        // Five standard errors of a binomial proportion.
        let tol = 5.0 * (expect * (1.0 - expect) / n as f64).sqrt() + 1e-9;
        assert!((f - expect).abs() <= tol, "token {i}: frequency {f:.4} vs {expect:.4}");
    }
}

#[test]
fn repetition_penalty_follows_the_ctrl_rule() {
    let logits = vec![2.0f32, -1.0, 0.5, 1.9, -0.3];
    // Greedy without penalty picks 0; with a penalty on tokens 0 and 1, logit 0 becomes 2/1.5
    // and 3 (1.9) wins; a penalty on 3 as well makes 1.9/1.5 < 2/1.5 so 0 wins again.
    let greedy = |history: &[u32], penalty: f32| {
        let params = SamplingParams { repetition_penalty: penalty, ..Default::default() };
        Sampler::new(params, 5).unwrap().sample(&mut logits.clone(), history).unwrap()
    };
    assert_eq!(greedy(&[0, 1], 1.0), 0);
    assert_eq!(greedy(&[0, 1], 1.5), 3);
    assert_eq!(greedy(&[0, 3], 1.5), 0);
    let mut l = logits.clone();
    let params =
        SamplingParams { repetition_penalty: 1.5, temperature: 1.0, top_k: Some(1), ..Default::default() };
    Sampler::new(params, 5).unwrap().sample(&mut l, &[1, 2, 2]).unwrap();
    assert_eq!(l, vec![2.0, -1.5, 0.5 / 1.5, 1.9, -0.3]);
    let mut wrong = vec![0.0f32; 4];
    assert!(matches!(
        Sampler::new(SamplingParams::default(), 5).unwrap().sample(&mut wrong, &[]),
        Err(ModelError::BadInput(_))
    ));
}

#[test]
fn bf16_model_decodes_incrementally_like_its_full_forward() {
    // bf16 parameters, f32 compute: the cached path rounds activations at different points
    // than the full forward, so the comparison is at bf16 precision.
    let m = model(15);
    let dir = common::TempDir::new("gen-bf16");
    polylm_model::checkpoint::save(&m, &dir, DType::BF16).unwrap();
    let b = polylm_model::checkpoint::load(&dir, DType::BF16).unwrap();
    let ids: Vec<u32> = vec![3, 14, 15, 9, 26, 5, 35];
    let mut cache = KvCache::new(b.config(), 1, 10).unwrap();
    let mut got = b.forward_cached(&mut cache, &[&ids[..4]], LogitRows::All).unwrap().remove(0);
    for t in &ids[4..] {
        got.extend(
            b.forward_cached(&mut cache, &[std::slice::from_ref(t)], LogitRows::All).unwrap().remove(0),
        );
    }
    let full = with_no_grad(|| b.logits(&Batch { ids: &ids, batch: 1, seq: ids.len() }))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let err = common::rel_err(&got, &full);
    assert!(err < 3e-2, "relative error {err:.3e}");
}
