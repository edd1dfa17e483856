//! Runs with a tokenizer that is not ours: a released checkpoint fine-tuned with its own
//! `tokenizer.json` (the Hub fixture of `scripts/make_hub_fixtures.py`), and data prepared,
//! trained on and evaluated with a SentencePiece `.model` (as PolyLM's tokenizer is).

mod common;

use std::path::{Path, PathBuf};

use common::{losses, polylm, run_sft, scratch, shared, text, TINY_MODEL};

fn hub_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hub/bin")
}

fn sentencepiece_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tokenizer/tests/fixtures/sentencepiece/bpe.model")
}

#[test]
fn sft_of_a_hub_checkpoint_with_its_own_tokenizer_json() {
    let dir = scratch("foreign-sft");
    let mut jsonl = String::new();
    for i in 0..12 {
        let v = serde_json::json!({"instruction": "All human", "input": null, "output": format!("beings {}", i % 3)});
        jsonl.push_str(&format!("{v}\n"));
    }
    let train_file = dir.join("sft.jsonl");
    std::fs::write(&train_file, jsonl).unwrap();
    let out = dir.join("run");
    let settings =
        "[optim]\nlr = 3e-3\nwarmup_steps = 1\n[train]\nsteps = 6\nseq_len = 15\nmicro_batch = 2\n\
                    [checkpoint]\nevery = 6\n[eval]\nevery = 6";
    let tok = hub_bin().join("tokenizer.json");
    let o = run_sft(&dir, "foreign-sft", &out, &hub_bin(), &tok, &train_file, settings);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    // The fixture's config ends sequences with id 63, its tokenizer's </s> is 2: the
    // checkpoint's convention wins, and the run says so.
    assert!(log.contains("examples end with id 63"), "{log}");
    let l = losses(&out);
    assert_eq!(l.len(), 6, "{log}");
    assert!(l.iter().all(|(_, x)| x.is_finite()) && l[5].1 < l[0].1, "the response loss falls: {l:?}");
    let ckpt = out.join("checkpoints/step-00000006");
    assert_eq!(
        std::fs::read(ckpt.join("tokenizer.json")).unwrap(),
        std::fs::read(hub_bin().join("tokenizer.json")).unwrap(),
        "the checkpoint carries the tokenizer.json it was tuned with"
    );
    let o = common::generate_instruct(&ckpt, "All human", 3);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn data_training_and_eval_with_a_sentencepiece_model() {
    let dir = scratch("foreign-spm");
    let spm = sentencepiece_model();
    let data = dir.join("data");
    let o = polylm(&[
        "data",
        "prepare",
        "--tokenizer",
        spm.to_str().unwrap(),
        "--train",
        shared().join("corpus").to_str().unwrap(),
        "--valid",
        shared().join("valid").to_str().unwrap(),
        "--langs",
        "en,de,ru",
        "--max-docs-per-lang",
        "40",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = dir.join("run");
    let config = format!(
        r#"
[run]
name = "spm"
out_dir = {out:?}
device = "cpu"
{TINY_MODEL}
[tokenizer]
path = {spm:?}
[data]
dir = {data:?}
[optim]
lr = 3e-3
warmup_steps = 1
[train]
steps = 4
seq_len = 16
micro_batch = 2
[checkpoint]
every = 4
[eval]
every = 4
max_tokens_per_lang = 128
[log]
progress = false
"#
    );
    let cfg = dir.join("train.toml");
    std::fs::write(&cfg, config).unwrap();
    let o = polylm(&["train", "--config", cfg.to_str().unwrap()]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let ckpt = out.join("checkpoints/step-00000004");
    // A SentencePiece tokenizer is copied under its own kind of name.
    assert_eq!(std::fs::read(ckpt.join("tokenizer.model")).unwrap(), std::fs::read(&spm).unwrap());
    assert!(!ckpt.join("tokenizer.json").exists());
    let vocab = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(ckpt.join("config.json")).unwrap(),
    )
    .unwrap()["vocab_size"]
        .as_u64();
    assert_eq!(vocab, Some(2000), "the model's vocabulary follows the SentencePiece model");
    // The checkpoint's copy is recognised as the tokenizer the shards were made with.
    let o = polylm(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("bits/byte"), "{t}");
    // Another tokenizer is refused for those shards.
    let other =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tokenizer/tests/fixtures/sentencepiece/unigram.model");
    let o = polylm(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--tokenizer",
        other.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("tokenizer") && t.contains("prepared"), "{t}");
}
