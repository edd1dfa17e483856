//! Helpers shared by the trainer's tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A temporary file with the given content, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `content` to a fresh file in the system's temporary folder.
    pub fn new(content: &[u8]) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "polylm-trainer-test-{}-{}.jsonl",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, content).expect("writes a temporary file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The shared real corpus (`../shared/data` beside the repository).
pub fn shared() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// A fresh, empty scratch folder named after the test file and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polylm-trainer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `polylm generate --instruct` on the CPU: `max_new` tokens after `prompt` from the checkpoint
/// folder `ckpt`.
pub fn generate_instruct(ckpt: &Path, prompt: &str, max_new: usize) -> std::process::Output {
    let max_new = max_new.to_string();
    let args = ["--instruct", "--prompt", prompt, "--max-new-tokens", &max_new, "--device", "cpu"];
    let mut all = vec!["generate", "--checkpoint", ckpt.to_str().expect("a UTF-8 path")];
    all.extend(args);
    polylm(&all)
}

/// Runs `polylm sft` on the CPU with a config written to `dir/sft.toml`: the run `name` in `out`,
/// fine-tuning the checkpoint `init_from` with `tokenizer` on `train_file` (also the validation
/// data), with `settings` (the `[optim]`, `[train]`, `[checkpoint]` and `[eval]` sections).
pub fn run_sft(
    dir: &Path,
    name: &str,
    out: &Path,
    init_from: &Path,
    tokenizer: &Path,
    train_file: &Path,
    settings: &str,
) -> std::process::Output {
    let config = format!(
        "[run]\nname = {name:?}\nout_dir = {out:?}\ndevice = \"cpu\"\n[model]\ninit_from = {init_from:?}\n\
         [tokenizer]\npath = {tokenizer:?}\n[data]\ndir = \"unused\"\n{settings}\n[log]\nprogress = false\n\
         [sft]\ntrain = {train_file:?}\nvalid = {train_file:?}\n"
    );
    let cfg = dir.join("sft.toml");
    std::fs::write(&cfg, config).expect("writes the config");
    polylm(&["sft", "--config", cfg.to_str().expect("a UTF-8 path")])
}

/// The `[model]` section of a one-layer `tiny` model with a context of 32 tokens.
pub const TINY_MODEL: &str = "[model]\npreset = \"tiny\"\nlayers = 1\nhidden = 32\nheads = 2\ncontext = 32\n";

/// Runs the `polylm` binary with `args`.
pub fn polylm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_polylm")).args(args).output().expect("runs polylm")
}

/// A run's stdout and stderr together.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A tokenizer of `vocab` ids trained on `lines` documents of en, de and zh from the real
/// corpus, and shards of `docs` documents per language, in `scratch(name)`: `(tokenizer, data)`.
pub fn prepare_small(name: &str, vocab: usize, lines: usize, docs: usize) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let tok = dir.join("tok.json");
    let corpus = shared().join("corpus");
    let (vocab, lines, docs) = (vocab.to_string(), lines.to_string(), docs.to_string());
    let o = polylm(&[
        "tokenizer",
        "train",
        "--corpus",
        corpus.to_str().unwrap(),
        "--langs",
        "en,de,zh",
        "--vocab-size",
        &vocab,
        "--max-lines",
        &lines,
        "--out",
        tok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "tokenizer train: {}", text(&o));
    let data = dir.join("data");
    let o = polylm(&[
        "data",
        "prepare",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--train",
        corpus.to_str().unwrap(),
        "--valid",
        shared().join("valid").to_str().unwrap(),
        "--langs",
        "en,de,zh",
        "--max-docs-per-lang",
        &docs,
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "data prepare: {}", text(&o));
    (tok, data)
}

/// Every training-step record of a run's `metrics.jsonl` (not the events, not the evaluations).
pub fn step_records(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_none() && v.get("eval").is_none())
        .collect()
}

/// (step, loss) of every training step in a run's metrics file.
pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    step_records(out)
        .into_iter()
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}
