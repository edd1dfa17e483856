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
