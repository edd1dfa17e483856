//! `polylm generate` on a checkpoint as the Hugging Face Hub ships one: `config.json`, a
//! PyTorch `pytorch_model.bin` and a `tokenizer.json` written by the `tokenizers` library
//! (`scripts/make_hub_fixtures.py` into `model/tests/fixtures/hub/bin/`). Greedy generation
//! must print exactly the text that `transformers`' greedy `generate` gave, decoded by
//! `tokenizers`.

mod common;

use std::path::{Path, PathBuf};

use common::{polylm, scratch, text};

fn hub_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hub/bin")
}

#[test]
fn greedy_generation_on_a_hub_checkpoint_matches_transformers() {
    let dir = hub_bin();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let new = case["max_new_tokens"].as_u64().unwrap().to_string();
        let o = polylm(&[
            "generate",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            &new,
            "--temperature",
            "0",
            "--repetition-penalty",
            "1",
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let got = stdout.lines().next().unwrap_or_default();
        assert_eq!(got, case["text"].as_str().unwrap(), "prompt {prompt:?}");
        println!("{prompt:?} -> {got:?} (transformers: the same)");
    }
}

#[test]
fn a_hub_checkpoint_without_a_tokenizer_asks_for_one() {
    let dir = scratch("hub-no-tokenizer");
    for f in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(hub_bin().join(f), dir.join(f)).unwrap();
    }
    let o =
        polylm(&["generate", "--checkpoint", dir.to_str().unwrap(), "--prompt", "All", "--device", "cpu"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("holds no tokenizer") && t.contains("--tokenizer"), "{t}");
    // Given one, it runs.
    let tok = hub_bin().join("tokenizer.json");
    let o = polylm(&[
        "generate",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "All",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn choice_log_likelihoods_on_a_hub_checkpoint_match_transformers() {
    let dir = hub_bin();
    let model = polylm_model::checkpoint::load(&dir, polylm_engine::DType::F32).unwrap();
    let tokenizer = polylm_tokenizer::cli::AnyModel::load(&dir.join("tokenizer.json")).unwrap();
    let items = polylm_trainer::choice::load_choices(&dir.join("choices.jsonl")).unwrap();
    let report = polylm_trainer::choice::score_choices(&model, &tokenizer, &items).unwrap();
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("choices.ref.json")).unwrap()).unwrap();
    let refs = refs["items"].as_array().unwrap();
    assert_eq!(refs.len(), report.scores.len());
    for (score, want) in report.scores.iter().zip(refs) {
        let want: Vec<f64> = want["loglik"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(score.loglik.len(), want.len());
        for (got, want) in score.loglik.iter().zip(&want) {
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{:?} against {want:?}", score.loglik);
        }
    }
    // The same through `polylm eval`, whose report counts the items and the accuracy.
    let out = scratch("hub-eval");
    let json = out.join("eval.json");
    let o = polylm(&[
        "eval",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--choices",
        dir.join("choices.jsonl").to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let entry = &r[dir.join("choices.jsonl").display().to_string()];
    assert_eq!(entry["items"], items.len());
    assert_eq!(entry["accuracy"].as_f64().unwrap(), report.accuracy);
    // A folder without shards: a clear error, not a panic (shards prepared with this
    // tokenizer.json are evaluated: trainer/tests/foreign_tokenizer.rs).
    let o = polylm(&["eval", "--checkpoint", dir.to_str().unwrap(), "--data", out.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("polylm data prepare"), "{}", text(&o));
    std::fs::remove_dir_all(&out).ok();
}
