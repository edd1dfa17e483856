//! Multiple-choice scoring: the JSONL loader, the log-likelihoods against a direct computation
//! (the model's own cross-entropy, and a log-softmax of single-sequence logits), left
//! truncation, tokenization of the choice, and a model trained to prefer the gold choice.

use polylm_engine::{DType, Tensor};
use polylm_model::{Batch, Gpt, ModelConfig};
use polylm_tokenizer::{train, LanguageCorpus, Tokenizer, TrainConfig};
use polylm_trainer::choice::{
    choice_tokens, load_choices, log_softmax_at, score_choices, score_continuations, ChoiceError, ChoiceItem,
    ChoiceReport, ChoiceScore,
};
use proptest::prelude::*;

mod common;
use common::TempFile;

#[test]
fn loads_items() {
    let f = TempFile::new(
        b"{\"prompt\": \"2+2=\", \"choices\": [\" 4\", \" 5\"], \"gold\": 0}\n\n{\"prompt\": \"\", \"choices\": [\"a\"], \"gold\": 0, \"lang\": \"en\"}\n",
    );
    let items = load_choices(&f.0).unwrap();
    assert_eq!(
        items,
        vec![
            ChoiceItem { prompt: "2+2=".into(), choices: vec![" 4".into(), " 5".into()], gold: 0 },
            ChoiceItem { prompt: "".into(), choices: vec!["a".into()], gold: 0 },
        ]
    );
}

#[test]
fn load_errors_name_file_and_line() {
    let good = "{\"prompt\": \"p\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n";
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            format!("{good}{{\"prompt\": \"p\", \"choices\": [\"a\"], \"gold\": 1}}\n").into(),
            ":2:",
            "out of range",
        ),
        (
            format!("{good}{good}{{\"prompt\": \"p\", \"gold\": 0}}\n").into(),
            ":3:",
            "missing field \"choices\"",
        ),
        (b"{\"prompt\": \"p\", \"choices\": [\"a\"]}\n".to_vec(), ":1:", "missing field \"gold\""),
        (
            format!("{good}{{\"prompt\": 1, \"choices\": [\"a\"], \"gold\": 0}}\n").into(),
            ":2:",
            "\"prompt\" must be",
        ),
        (
            format!("{good}{{\"prompt\": \"p\", \"choices\": [1], \"gold\": 0}}\n").into(),
            ":2:",
            "\"choices\" must be",
        ),
        (
            format!("{good}{{\"prompt\": \"p\", \"choices\": [], \"gold\": 0}}\n").into(),
            ":2:",
            "\"choices\" must be",
        ),
        (
            format!("{good}{{\"prompt\": \"p\", \"choices\": [\"\"], \"gold\": 0}}\n").into(),
            ":2:",
            "non-empty",
        ),
        (
            format!("{good}{{\"prompt\": \"p\", \"choices\": [\"a\"], \"gold\": -1}}\n").into(),
            ":2:",
            "\"gold\" must be",
        ),
        (
            format!("{good}{{\"prompt\": \"p\", \"choices\": [\"a\"], \"gold\": 0.5}}\n").into(),
            ":2:",
            "\"gold\" must be",
        ),
        (format!("{good}\n{{\"prompt\": \"p\",\n").into(), ":3:", "malformed JSON"),
        ("\"just a string\"\n".into(), ":1:", "JSON object"),
        ([good.as_bytes(), b"{\"prompt\": \"\xfe\"}\n"].concat(), ":2:", "invalid UTF-8"),
    ];
    for (text, line, what) in cases {
        let f = TempFile::new(&text);
        let msg = load_choices(&f.0).unwrap_err().to_string();
        assert!(msg.contains(&f.0.display().to_string()), "{msg}");
        assert!(msg.contains(line) && msg.contains(what), "expected {line} {what}: {msg}");
    }
    for empty in ["", "\n\n"] {
        let f = TempFile::new(empty.as_bytes());
        assert!(matches!(load_choices(&f.0), Err(ChoiceError::NoItems { .. })), "{empty:?}");
    }
    assert!(matches!(
        load_choices(std::path::Path::new("/no/such/file.jsonl")),
        Err(ChoiceError::Jsonl(polylm_trainer::jsonl::JsonlError::Io { .. }))
    ));
}

fn tiny_config(vocab: usize, context: usize) -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.vocab_size = vocab;
    c.layers = 2;
    c.hidden = 32;
    c.heads = 4;
    c.ffn = 64;
    c.context = context;
    c.init_std = 0.2; // far from uniform, so errors in the scoring show
    c
}

/// Sum of log P(choice | context) from the model's own cross-entropy (mean over counted targets
/// times their count), on the unpadded sequence.
fn direct_loss(model: &Gpt, context: &[u32], choice: &[u32]) -> f64 {
    let seq: Vec<u32> = context.iter().chain(choice).copied().collect();
    let ignore = u32::MAX;
    let targets: Vec<u32> = (0..seq.len())
        .map(|t| if t + 1 >= context.len() && t + 1 < seq.len() { seq[t + 1] } else { ignore })
        .collect();
    let _g = polylm_engine::no_grad();
    let loss = model.loss(&Batch { ids: &seq, batch: 1, seq: seq.len() }, &targets, Some(ignore)).unwrap();
    -loss.to_scalar().unwrap() * choice.len() as f64
}

/// The same from one sequence's logits and a log-softmax written out here.
fn direct_logits(model: &Gpt, context: &[u32], choice: &[u32]) -> f64 {
    let seq: Vec<u32> = context.iter().chain(choice).copied().collect();
    let v = model.config().vocab_size;
    let _g = polylm_engine::no_grad();
    let logits =
        model.logits(&Batch { ids: &seq, batch: 1, seq: seq.len() }).unwrap().to_vec::<f32>().unwrap();
    let mut sum = 0.0;
    for pos in context.len()..seq.len() {
        let row = &logits[(pos - 1) * v..pos * v];
        let m = row.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        sum += row[seq[pos] as usize] as f64 - lse;
    }
    sum
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn scores_match_a_direct_computation(
        seed in any::<u64>(),
        context in prop::collection::vec(0u32..40, 1..8),
        choices in prop::collection::vec(prop::collection::vec(0u32..40, 1..6), 1..5),
    ) {
        let model = Gpt::new(tiny_config(40, 16), DType::F32, seed).unwrap();
        let got = score_continuations(&model, &context, &choices).unwrap();
        prop_assert_eq!(got.len(), choices.len());
        for (c, &(ll, n)) in choices.iter().zip(&got) {
            prop_assert_eq!(n, c.len());
            let a = direct_loss(&model, &context, c);
            let b = direct_logits(&model, &context, c);
            prop_assert!(close(ll, a), "batched {} vs cross-entropy {}", ll, a);
            prop_assert!(close(ll, b), "batched {} vs log-softmax {}", ll, b);
            prop_assert!(ll < 0.0);
        }
    }

    #[test]
    fn long_sequences_lose_tokens_on_the_left(
        seed in any::<u64>(),
        context in prop::collection::vec(0u32..40, 1..20),
        choices in prop::collection::vec(prop::collection::vec(0u32..40, 1..12), 1..4),
    ) {
        let ctx = 8;
        let model = Gpt::new(tiny_config(40, ctx), DType::F32, seed).unwrap();
        let got = score_continuations(&model, &context, &choices).unwrap();
        for (c, &(ll, n)) in choices.iter().zip(&got) {
            let mut all: Vec<u32> = context.iter().chain(c).copied().collect();
            let cut = all.len().saturating_sub(ctx);
            all.drain(..cut);
            // The choice tokens that keep a predecessor in the window are scored.
            let scored = c.len().min(all.len() - 1);
            prop_assert_eq!(n, scored);
            let split = all.len() - scored;
            let want = direct_logits(&model, &all[..split], &all[split..]);
            prop_assert!(close(ll, want), "{} vs {}", ll, want);
        }
    }
}

#[test]
fn report_counts_summed_and_normalised_accuracy() {
    // Item 0: summed picks choice 1 (-2 > -3), per token picks choice 0 (-1 > -2).
    let a = ChoiceScore::new(vec![-3.0, -2.0], vec![3, 1], 0);
    assert_eq!((a.predicted, a.predicted_norm), (1, 0));
    assert!(!a.correct() && a.correct_norm());
    // Item 1: both pick the gold; ties go to the first.
    let b = ChoiceScore::new(vec![-1.0, -1.0, -5.0], vec![1, 1, 1], 0);
    assert_eq!((b.predicted, b.predicted_norm), (0, 0));
    let c = ChoiceScore::new(vec![f64::NAN, -4.0], vec![1, 1], 1);
    assert_eq!(c.predicted, 1);
    let r = ChoiceReport::from_scores(vec![a, b, c]);
    assert_eq!(r.items, 3);
    assert!((r.accuracy - 2.0 / 3.0).abs() < 1e-12);
    assert!((r.accuracy_norm - 1.0).abs() < 1e-12);
    assert_eq!(ChoiceReport::from_scores(Vec::new()).accuracy, 0.0);
    assert!((log_softmax_at(&[0.0, 0.0], 1) + 2f64.ln()).abs() < 1e-12);
}

fn tiny_tokenizer() -> Tokenizer {
    let texts: Vec<String> = (0..300)
        .map(|i| {
            format!("question {i}: is the sky blue? answer: yes. is grass red? answer: no.\nnext line {i}")
        })
        .collect();
    let config = TrainConfig { vocab_size: 300, ..TrainConfig::default() };
    Tokenizer::new(train(&[LanguageCorpus::new("en", texts)], &config).unwrap())
}

#[test]
fn choice_tokens_are_the_suffix_or_the_choice_alone() {
    let tok = tiny_tokenizer();
    let (p, c) = choice_tokens(&tok, "is the sky blue? answer:", " yes");
    assert_eq!(p, tok.encode("is the sky blue? answer:"));
    let whole = tok.encode("is the sky blue? answer: yes");
    assert_eq!([p.clone(), c.clone()].concat(), whole);
    assert!(!c.is_empty());
    for (prompt, choice) in [("answer:\n", "yes"), ("the sk", "y"), ("", "no"), ("question 1", "2")] {
        let (p, c) = choice_tokens(&tok, prompt, choice);
        assert_eq!(p, tok.encode(prompt));
        let whole = tok.encode(&format!("{prompt}{choice}"));
        let joined = [p.clone(), c.clone()].concat();
        assert!(joined == whole || c == tok.encode(choice), "{prompt:?} {choice:?}");
        assert!(!c.is_empty());
    }
}

#[test]
fn score_choices_matches_the_token_level_scores() {
    let tok = tiny_tokenizer();
    let eos = tok.model().special_id("</s>").unwrap();
    let model = Gpt::new(tiny_config(tok.vocab_size(), 64), DType::F32, 5).unwrap();
    let items = vec![
        ChoiceItem {
            prompt: "is the sky blue? answer:".into(),
            choices: vec![" yes".into(), " no".into()],
            gold: 0,
        },
        ChoiceItem {
            prompt: "is grass red? answer:\n".into(),
            choices: vec!["yes.".into(), "no".into(), "x".into()],
            gold: 1,
        },
        ChoiceItem { prompt: "".into(), choices: vec!["question".into(), "sky".into()], gold: 1 },
    ];
    let report = score_choices(&model, &tok, &items).unwrap();
    assert_eq!(report.items, 3);
    for (item, score) in items.iter().zip(&report.scores) {
        assert_eq!(score.gold, item.gold);
        let mut context = tok.encode(&item.prompt);
        if context.is_empty() {
            context.push(eos);
        }
        for (k, choice) in item.choices.iter().enumerate() {
            let (_, c) = choice_tokens(&tok, &item.prompt, choice);
            let want = direct_loss(&model, &context, &c);
            assert!(close(score.loglik[k], want), "{} vs {want}", score.loglik[k]);
            assert_eq!(score.tokens[k], c.len());
        }
    }
    let bad = vec![ChoiceItem { prompt: "p".into(), choices: vec!["a".into()], gold: 3 }];
    assert!(matches!(score_choices(&model, &tok, &bad), Err(ChoiceError::BadItem { item: 0, .. })));
}

/// A few hundred Adam steps on the host, teaching `prompt -> gold` continuations.
fn train_to_prefer(model: &mut Gpt, seqs: &[(Vec<u32>, Vec<u32>)], steps: usize) {
    let ignore = u32::MAX;
    let len = seqs[0].0.len() + seqs[0].1.len();
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for (p, g) in seqs {
        let s: Vec<u32> = p.iter().chain(g).copied().collect();
        assert_eq!(s.len(), len);
        for t in 0..len {
            targets.push(if t + 1 >= p.len() && t + 1 < len { s[t + 1] } else { ignore });
        }
        ids.extend(s);
    }
    let n = model.params().named().len();
    let mut m: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut v: Vec<Vec<f32>> = vec![Vec::new(); n];
    let (lr, b1, b2) = (0.01f32, 0.9f32, 0.999f32);
    for step in 1..=steps {
        model.params().zero_grad();
        model
            .forward_backward(
                &Batch { ids: &ids, batch: seqs.len(), seq: len },
                &targets,
                Some(ignore),
                false,
            )
            .unwrap();
        for (i, (_, t)) in model.params_mut().named_mut().into_iter().enumerate() {
            let g = t.grad().unwrap().to_vec::<f32>().unwrap();
            let mut w = t.to_vec::<f32>().unwrap();
            if m[i].is_empty() {
                m[i] = vec![0.0; w.len()];
                v[i] = vec![0.0; w.len()];
            }
            for k in 0..w.len() {
                m[i][k] = b1 * m[i][k] + (1.0 - b1) * g[k];
                v[i][k] = b2 * v[i][k] + (1.0 - b2) * g[k] * g[k];
                let mh = m[i][k] / (1.0 - b1.powi(step as i32));
                let vh = v[i][k] / (1.0 - b2.powi(step as i32));
                w[k] -= lr * mh / (vh.sqrt() + 1e-8);
            }
            let shape = t.shape().to_vec();
            *t = Tensor::from_vec(w, &shape).unwrap().requires_grad();
        }
    }
}

#[test]
fn a_model_trained_on_the_gold_prefers_it() {
    let mut model = Gpt::new(tiny_config(32, 16), DType::F32, 11).unwrap();
    // Two items with the same two choices; which is gold depends on the prompt.
    let (p0, p1) = (vec![3u32, 4, 5], vec![6u32, 7, 8]);
    let (c0, c1) = (vec![20u32, 21], vec![22u32, 23]);
    let accuracy = |model: &Gpt| -> f64 {
        let mut scores = Vec::new();
        for (p, gold) in [(&p0, 0usize), (&p1, 1)] {
            let s = score_continuations(model, p, &[c0.clone(), c1.clone()]).unwrap();
            let (ll, n): (Vec<f64>, Vec<usize>) = s.into_iter().unzip();
            scores.push(ChoiceScore::new(ll, n, gold));
        }
        ChoiceReport::from_scores(scores).accuracy
    };
    train_to_prefer(&mut model, &[(p0.clone(), c0.clone()), (p1.clone(), c1.clone())], 60);
    assert_eq!(accuracy(&model), 1.0);
    // And the opposite training flips the choice: the scores follow the model.
    train_to_prefer(&mut model, &[(p0.clone(), c1.clone()), (p1.clone(), c0.clone())], 120);
    assert_eq!(accuracy(&model), 0.0);
}
