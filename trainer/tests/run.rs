//! End-to-end runs of the `polylm` binary on a small slice of the real corpus: training,
//! exact resume, a SIGKILL in the middle of a checkpoint save, rollback after non-finite
//! steps, clear errors for bad configs and corrupt checkpoints, SFT, eval and generate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{losses, polylm, prepare_small, run_sft, scratch, shared, text};

/// A tokenizer and prepared shards shared by the tests (three languages, a few dozen
/// documents each), built once.
fn prepared() -> &'static (PathBuf, PathBuf) {
    static PREPARED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PREPARED.get_or_init(|| prepare_small("run-prepared", 700, 60, 60))
}

/// A run config for the shared data in `out`, with extra TOML lines.
fn write_config(out: &Path, steps: u64, extra: &str) -> PathBuf {
    let (tok, data) = prepared();
    let config = format!(
        r#"
[run]
name = "test"
out_dir = {out:?}
seed = 5
device = "cpu"
threads = 2
[model]
preset = "tiny"
layers = 1
hidden = 32
heads = 2
context = 32
[tokenizer]
path = {tok:?}
[data]
dir = {data:?}
[data.subsets]
prose = ["manpages", "fortunes"]
[[curriculum.stages]]
name = "one"
start_step = 0
non_english = 0.5
[[curriculum.stages]]
name = "two"
start_fraction = 0.5
weights = {{ en = 0.2, de = 0.8 }}
[optim]
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
[train]
steps = {steps}
seq_len = 16
micro_batch = 2
tokens_per_step = 64
[checkpoint]
every = 2
keep = 2
[eval]
every = 3
max_tokens_per_lang = 256
batch = 4
[log]
every = 1
progress = false
[samples]
prompts = ["The", "Die"]
max_new_tokens = 4
{extra}
"#
    );
    let path = out.join("run.toml");
    std::fs::create_dir_all(out).expect("out dir");
    std::fs::write(&path, config).expect("config");
    path
}

fn train(config: &Path, extra_args: &[&str]) -> Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    polylm(&args)
}

#[test]
fn a_run_trains_validates_checkpoints_and_plots() {
    let out = scratch("full");
    let config = write_config(&out, 8, "");
    let o = train(&config, &[]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let l = losses(&out);
    assert_eq!(l.iter().map(|p| p.0).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>(), "{log}");
    assert!(l.iter().all(|p| p.1.is_finite() && p.1 > 0.0));
    assert!(l[7].1 < l[0].1, "the loss falls: {l:?}");
    // Two kept checkpoints, the last one at step 8, loadable by eval and generate.
    let ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut sorted = ckpts.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["step-00000006", "step-00000008"], "{ckpts:?}");
    for f in ["loss.svg", "bpb.svg"] {
        let svg = std::fs::read_to_string(out.join(f)).expect("plot");
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{f}");
    }
    // Per-language validation with bits per byte, and the samples.
    for lang in ["en", "de", "zh"] {
        assert!(log.contains(&format!("{lang} ")), "validation of {lang}: {log}");
    }
    assert!(log.contains("samples"), "{log}");
    // Tokens actually seen per language are in the metrics.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"lang_tokens\"") && metrics.contains("\"stage\":\"two\""), "stages logged");

    let ckpt = out.join("checkpoints/step-00000008");
    let (_, data) = prepared();
    let o = polylm(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-tokens-per-lang",
        "128",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("bits/byte"));
    // Windows longer than the model's context (32 here), or empty, are refused.
    for (flag, value, want) in [
        ("--seq", "33", "--seq 33 exceeds the model's context of 32"),
        ("--seq", "0", "--seq must be at least 1"),
        ("--batch", "0", "--batch must be at least 1"),
    ] {
        let args =
            ["eval", "--checkpoint", ckpt.to_str().unwrap(), "--data", data.to_str().unwrap(), flag, value];
        let o = polylm(&args);
        assert!(!o.status.success() && text(&o).contains(want), "{}", text(&o));
    }
    let o = polylm(&[
        "generate",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "The",
        "--prompt",
        "Der",
        "--max-new-tokens",
        "5",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn resuming_gives_bit_identical_losses() {
    let whole = scratch("whole");
    let o = train(&write_config(&whole, 6, ""), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = losses(&whole);

    let parts = scratch("parts");
    let config = write_config(&parts, 6, "[debug]\nstop_after = 4\n");
    let o = train(&config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(losses(&parts).len(), 4);
    let o = train(&config, &["--set", "debug.stop_after=99"]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("resuming at step 4"), "{log}");
    let resumed = losses(&parts);
    assert_eq!(resumed.len(), 6);
    for ((s1, a), (s2, b)) in reference.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert_eq!(a.to_bits(), b.to_bits(), "step {s1}: {a} vs {b}");
    }
}

/// Starts `polylm train --config config` and waits until a folder under its `checkpoints/`
/// whose name starts with `partial` (a save in progress) appears; returns the running process
/// and that folder (`None` when the run ended, or two minutes passed, first).
fn spawn_until_saving(config: &Path, partial: &str) -> (std::process::Child, Option<PathBuf>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polylm"))
        .args(["train", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let ckpts = config.parent().unwrap().join("checkpoints");
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(&ckpts).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(partial))
        });
        if found.is_some() {
            return (child, found);
        }
        if child.try_wait().expect("wait").is_some() || start.elapsed() > Duration::from_secs(120) {
            return (child, None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_sigkill_during_a_save_resumes_from_the_previous_checkpoint() {
    let whole = scratch("kill-ref");
    let o = train(&write_config(&whole, 6, ""), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = losses(&whole);

    let out = scratch("kill");
    let config = write_config(&out, 6, "[debug]\nsave_pause_ms = 400\n");
    // Wait until the save of step 4 is under way (its hidden folder exists), then SIGKILL.
    let ckpts = out.join("checkpoints");
    let (mut child, partial) = spawn_until_saving(&config, ".tmp-step-00000004");
    let _ = child.kill();
    let killed_mid_save = partial.is_some();
    let _ = child.wait();
    assert!(killed_mid_save, "the run was killed while writing the step-4 checkpoint");
    assert!(!ckpts.join("step-00000004").exists(), "no half-written checkpoint is visible");
    assert!(ckpts.join("step-00000002/trainer_state.json").exists());

    let o = train(&config, &["--set", "debug.save_pause_ms=0"]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("resuming at step 2"), "{log}");
    let resumed = losses(&out);
    assert_eq!(resumed.len(), 6, "{resumed:?}");
    for ((_, a), (s, b)) in reference.iter().zip(&resumed) {
        assert_eq!(a.to_bits(), b.to_bits(), "step {s}: {a} vs {b}");
    }
    let leftovers = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(leftovers, 0, "the interrupted save's folder was cleaned up");
}

#[test]
fn a_second_run_on_the_same_folder_is_refused_and_touches_nothing() {
    let out = scratch("locked");
    let config = write_config(&out, 6, "[debug]\nsave_pause_ms = 1500\n");
    // While the first run is in the middle of a save (it holds the lock then for sure)...
    let (mut child, partial) = spawn_until_saving(&config, ".tmp-step-");
    // ...a second one is refused with the holder's process id, and has not removed the first
    // one's save in progress as if it were a crash's leftover.
    let second = train(&config, &[]);
    let still_there = partial.as_ref().is_some_and(|p| p.exists());
    let _ = child.kill();
    let _ = child.wait();
    assert!(partial.is_some(), "the first run reached a save");
    assert!(!second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains("is in use") && text(&second).contains(&child.id().to_string()),
        "{}",
        text(&second)
    );
    assert!(still_there, "the second run left the first one's save alone");
    // Once the first process is gone, the folder is free again.
    let o = train(&config, &["--set", "debug.save_pause_ms=0"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn non_finite_steps_are_skipped_then_rolled_back() {
    let out = scratch("nan");
    let config = write_config(&out, 8, "[debug]\nnan_steps = [2, 4, 5, 6]\n");
    let o = train(&config, &[]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("step skipped"), "{log}");
    assert!(log.contains("rolling back"), "{log}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("\"event\":\"skipped\"").count(), 4);
    assert_eq!(metrics.matches("\"event\":\"rollback\"").count(), 1);

    // With no checkpoint to roll back to, the run stops with a clear error.
    let out = scratch("nan-early");
    let config = write_config(&out, 8, "[debug]\nnan_steps = [0, 1, 2]\n");
    let o = train(&config, &["--set", "checkpoint.every=100"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no checkpoint to roll back to"), "{}", text(&o));
}

#[test]
fn bad_configs_and_checkpoints_give_clear_errors() {
    let out = scratch("errors");
    let config = write_config(&out, 4, "");
    let o = train(&config, &["--set", "train.micro_batch=0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("train.micro_batch") && text(&o).contains("run.toml"), "{}", text(&o));
    let o = train(&config, &["--set", "optim.lrr=1"]);
    assert!(text(&o).contains("lrr"), "{}", text(&o));
    // A model that cannot fit the machine's memory, and an absurd thread count: refused up
    // front with the numbers, not an abort from the allocator or minutes of thread spawning.
    // (The memory check reads /proc/meminfo: Linux only.)
    if Path::new("/proc/meminfo").exists() {
        let o = train(&config, &["--set", "model.layers=1000000000000"]);
        assert!(!o.status.success() && !text(&o).contains("panicked"), "{}", text(&o));
        assert!(
            text(&o).contains("1000000000000 layers") && text(&o).contains("GiB available"),
            "{}",
            text(&o)
        );
    }
    let o = train(&config, &["--threads", "100000"]);
    assert!(!o.status.success() && text(&o).contains("run.threads = 100000"), "{}", text(&o));
    // A corpus folder that is not there names the field and where relative paths are read from.
    let o = train(&config, &["--set", "data.dir=/nonexistent-data", "--set", "data.train=no/such/corpus"]);
    assert!(
        text(&o).contains("data.train = no/such/corpus: does not exist")
            && text(&o).contains("current folder"),
        "{}",
        text(&o)
    );
    let o = polylm(&["train", "--config", "/nonexistent/run.toml"]);
    assert!(!o.status.success() && text(&o).contains("/nonexistent/run.toml"), "{}", text(&o));

    // A checkpoint whose optimizer file is truncated: resuming names the file.
    let o = train(&config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let opt = out.join("checkpoints/step-00000004/optimizer.safetensors");
    let bytes = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &bytes[..bytes.len() / 2]).unwrap();
    let o = train(&config, &["--steps", "6"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("optimizer.safetensors"), "{}", text(&o));

    // A whole optimizer file with a negative second moment (no AdamW run writes one; resuming
    // would make the weights NaN at the first step): an error naming the tensor and the index.
    let mut damaged = bytes.clone();
    let header_len = u64::from_le_bytes(damaged[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&damaged[8..8 + header_len]).unwrap();
    let start = header["transformer.wte.weight.v"]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + header_len + start + 4 * 3;
    damaged[at..at + 4].copy_from_slice(&(-0.5f32).to_le_bytes());
    std::fs::write(&opt, &damaged).unwrap();
    let o = train(&config, &["--steps", "6"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("transformer.wte.weight.v[3] = -0.5"), "{}", text(&o));
    std::fs::write(&opt, &bytes).unwrap();

    // A newest step folder without its trainer state (damaged, or copied in by hand): resuming
    // neither starts over nor quietly takes the older checkpoint, it says what to do.
    let stray = out.join("checkpoints/step-00000005");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(out.join("checkpoints/step-00000004/config.json"), stray.join("config.json")).unwrap();
    let o = train(&config, &["--steps", "6"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("step-00000005")
            && text(&o).contains("incomplete")
            && text(&o).contains("step-00000004"),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(&stray).unwrap();
    let o = train(&config, &["--steps", "6"]);
    assert!(o.status.success() && text(&o).contains("resuming at step 4"), "{}", text(&o));

    // Shards made with another tokenizer.
    let other = scratch("other-tok");
    let tok = other.join("tok.json");
    let o = polylm(&[
        "tokenizer",
        "train",
        "--corpus",
        shared().join("corpus").to_str().unwrap(),
        "--langs",
        "en",
        "--vocab-size",
        "400",
        "--max-lines",
        "30",
        "--out",
        tok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(
        &config,
        &[
            "--set",
            &format!("tokenizer.path={:?}", tok.to_str().unwrap()),
            "--out",
            other.join("run").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).to_lowercase().contains("tokenizer"), "{}", text(&o));
}

#[test]
fn compile_kernels_fills_a_cache_or_says_why() {
    let o = polylm(&["compile-kernels", "--arch", "hopper", "--cache", "/nonexistent"]);
    assert!(!o.status.success() && text(&o).contains("--arch") && text(&o).contains("sm_90"), "{}", text(&o));
    let o = polylm(&["compile-kernels", "--arch", "sm_90", "--only", "flash"]);
    assert!(
        !o.status.success() && text(&o).contains("`flash`") && text(&o).contains("flash_attention"),
        "{}",
        text(&o)
    );

    let cache = scratch("kernel-cache");
    let args =
        ["compile-kernels", "--arch", "sm_90", "--only", "softmax", "--cache", cache.to_str().unwrap()];
    let o = polylm(&args);
    if !polylm_kernels::cuda::nvrtc::nvrtc_available() {
        assert!(!o.status.success() && text(&o).contains("NVRTC"), "{}", text(&o));
        return;
    }
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("softmax") && text(&o).contains("1 compiled, 0 already cached"),
        "{}",
        text(&o)
    );
    let cubins = std::fs::read_dir(&cache).unwrap().filter_map(|e| e.ok()).filter(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("softmax-sm_90-") && name.ends_with(".cubin")
    });
    assert_eq!(cubins.count(), 1);
    let o = polylm(&args);
    assert!(o.status.success() && text(&o).contains("0 compiled, 1 already cached"), "{}", text(&o));
}

#[test]
fn sft_trains_on_responses_and_generate_uses_the_template() {
    let dir = scratch("sft");
    let base = dir.join("base");
    let o = train(&write_config(&base, 4, ""), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let examples = [
        ("Übersetze ins Englische", Some("Guten Morgen"), "Good morning"),
        ("Name a colour", None, "Blue"),
        ("Translate to German", Some("The file"), "Die Datei"),
        ("列出三个数字", None, "一、二、三"),
    ];
    let mut jsonl = String::new();
    for (i, (ins, inp, out)) in examples.iter().cycle().take(24).enumerate() {
        let v = serde_json::json!({"instruction": format!("{ins} {i}"), "input": inp, "output": out});
        jsonl.push_str(&format!("{v}\n"));
    }
    let train_file = dir.join("sft.jsonl");
    std::fs::write(&train_file, &jsonl).unwrap();
    let (tok, _) = prepared();
    let sft_out = dir.join("sft-run");
    let settings = "[optim]\nlr = 1e-3\n[train]\nsteps = 6\nseq_len = 32\nmicro_batch = 2\n\
                    [checkpoint]\nevery = 3\n[eval]\nevery = 3";
    let base_ckpt = base.join("checkpoints/step-00000004");
    let o = run_sft(&dir, "sft", &sft_out, &base_ckpt, tok, &train_file, settings);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let l = losses(&sft_out);
    assert_eq!(l.len(), 6, "{log}");
    assert!(l[5].1 < l[0].1, "the response loss falls: {l:?}");
    let valid_records = |out: &Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("eval").is_some())
            .collect()
    };
    assert!(!valid_records(&sft_out).is_empty(), "{log}");

    // A validation example whose prompt alone is longer than a row is cut as training cuts it
    // (the prompt from the left), so its response is still scored.
    let long = serde_json::json!({"instruction": "word ".repeat(200), "input": "", "output": "Good morning"});
    let valid_file = dir.join("valid-long.jsonl");
    std::fs::write(&valid_file, format!("{long}\n")).unwrap();
    let long_out = dir.join("sft-long");
    let cfg = dir.join("sft.toml"); // written by `run_sft`
    let o = polylm(&[
        "sft",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        long_out.to_str().unwrap(),
        "--steps",
        "3",
        "--set",
        &format!("sft.valid={:?}", valid_file.to_str().unwrap()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let records = valid_records(&long_out);
    assert!(!records.is_empty(), "{}", text(&o));
    for r in records {
        let (tokens, loss) = (r["tokens"].as_u64().unwrap(), r["loss"].as_f64().unwrap());
        assert!(tokens > 0 && loss > 0.0 && r["bytes"].as_u64().unwrap() > 0, "{r}");
    }
    let o = common::generate_instruct(&sft_out.join("checkpoints/step-00000006"), "Name a colour", 3);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_write_failure_during_a_save_is_a_clear_error_and_loses_nothing() {
    use std::os::unix::process::CommandExt;

    let out = scratch("full-disk");
    let config = write_config(&out, 4, "");
    let o = train(&config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ckpts = out.join("checkpoints");
    let before: Vec<_> = ["step-00000002", "step-00000004"]
        .iter()
        .map(|d| std::fs::read(ckpts.join(d).join("optimizer.safetensors")).expect("checkpoint"))
        .collect();
    let limit = before[0].len() as u64 / 2;

    // Resume for two more steps with files capped at half an optimizer file: the write of the
    // step-6 checkpoint fails part-way, as on a full disk (EFBIG here rather than ENOSPC; the
    // signal that would kill the process is ignored so the write returns the error).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polylm"));
    cmd.args(["train", "--config", config.to_str().unwrap(), "--steps", "6"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().expect("runs polylm");
    let log = text(&o);
    assert!(!o.status.success(), "the save must fail: {log}");
    assert!(log.contains("error:") && log.to_lowercase().contains("file too large"), "{log}");
    // Nothing saved before is lost or changed, and no partial checkpoint is left visible.
    let names: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["step-00000002", "step-00000004"], "{names:?}");
    for (d, bytes) in ["step-00000002", "step-00000004"].iter().zip(&before) {
        assert_eq!(&std::fs::read(ckpts.join(d).join("optimizer.safetensors")).unwrap(), bytes, "{d}");
    }
    // Without the cap the run resumes from step 4 and finishes.
    let o = train(&config, &["--steps", "6"]);
    let log = text(&o);
    assert!(o.status.success() && log.contains("resuming at step 4"), "{log}");
}
