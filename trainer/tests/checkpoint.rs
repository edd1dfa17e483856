//! Checkpoint folders: a round trip restores the model, the optimiser and the trainer state
//! exactly; a save that fails half-way (here: its last input is missing, as a full disk would
//! fail it) leaves no partial folder and every earlier checkpoint intact; old checkpoints are
//! pruned; damaged files give errors that name them.

use std::path::{Path, PathBuf};

use polylm_engine::{AdamW, AdamWHyper, DType, Device, Tensor};
use polylm_model::{Batch, Gpt, ModelConfig};
use polylm_trainer::checkpoint::{self, SaveRequest, TrainerState, STATE_VERSION, TOKENIZER_FILE};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polylm-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 61,
        layers: 2,
        hidden: 16,
        heads: 2,
        ffn: 64,
        context: 16,
        layer_norm_eps: 1e-5,
        init_std: 0.02,
        eos_token_id: Some(2),
    }
}

/// A model and an optimiser that has taken two steps (so every moment is non-trivial).
fn trained() -> (Gpt, AdamW, Vec<f64>) {
    let mut model = Gpt::new(config(), DType::F32, 3).expect("model");
    let decays: Vec<f64> =
        model.params().named().iter().map(|(_, t)| if t.rank() >= 2 { 0.1 } else { 0.0 }).collect();
    let mut opt = {
        let named = model.params().named();
        let ps: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        AdamW::new(&ps, &decays, AdamWHyper::default()).expect("optimizer")
    };
    let ids: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 61).collect();
    let targets: Vec<u32> = (0..24).map(|i| (i * 5 + 1) % 61).collect();
    for _ in 0..2 {
        model.params().zero_grad();
        model.forward_backward(&Batch { ids: &ids, batch: 2, seq: 12 }, &targets, None, false).expect("step");
        let mut named = model.params_mut().named_mut();
        let mut ps: Vec<&mut Tensor> = named.iter_mut().map(|(_, t)| &mut **t).collect();
        opt.step(&mut ps, 1e-2, 0.7).expect("optimizer step");
    }
    (model, opt, decays)
}

fn state(step: u64) -> TrainerState {
    TrainerState {
        version: STATE_VERSION,
        step,
        tokens: step * 24,
        data: serde_json::json!({"cursor": step * 3}),
        skipped_steps: 1,
        rollbacks: 0,
        run: "t".into(),
        dtype: "f32".into(),
    }
}

fn save(
    root: &Path,
    model: &Gpt,
    opt: &AdamW,
    step: u64,
    tokenizer: &Path,
    keep: usize,
) -> polylm_trainer::Result<PathBuf> {
    let s = state(step);
    let req = SaveRequest {
        model,
        optimizer: opt,
        state: &s,
        tokenizer,
        tokenizer_file: TOKENIZER_FILE,
        keep,
        pause: None,
    };
    checkpoint::save(root, &req)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().expect("values").iter().map(|v| v.to_bits()).collect()
}

#[test]
fn round_trip_restores_everything_exactly() {
    let dir = scratch("roundtrip");
    let tok = dir.join("tok.json");
    std::fs::write(&tok, "{\"stand-in\": true}").unwrap();
    let (model, opt, decays) = trained();
    let root = dir.join("checkpoints");
    let saved = save(&root, &model, &opt, 2, &tok, 3).expect("save");
    assert_eq!(saved, root.join("step-00000002"));
    let loaded = checkpoint::load(&saved, Device::Cpu, &decays, AdamWHyper::default()).expect("load");
    assert_eq!(loaded.state, state(2));
    assert_eq!(loaded.optimizer.steps(), 2);
    for ((name, a), (_, b)) in model.params().named().iter().zip(loaded.model.params().named()) {
        assert_eq!(bits(a), bits(b), "{name}");
    }
    for (i, (a, b)) in opt.state().iter().zip(loaded.optimizer.state()).enumerate() {
        for k in 0..3 {
            assert_eq!(bits(&a[k]), bits(&b[k]), "optimizer tensor {i}.{k}");
        }
    }
    assert_eq!(std::fs::read_to_string(saved.join("tokenizer.json")).unwrap(), "{\"stand-in\": true}");
}

#[test]
fn a_failed_save_leaves_earlier_checkpoints_intact_and_old_ones_are_pruned() {
    let dir = scratch("failed");
    let tok = dir.join("tok.json");
    std::fs::write(&tok, "{}").unwrap();
    let (model, opt, decays) = trained();
    let root = dir.join("checkpoints");
    for step in [2, 4, 6] {
        save(&root, &model, &opt, step, &tok, 2).expect("save");
    }
    let steps: Vec<u64> = checkpoint::list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![4, 6], "keep = 2 prunes the oldest");

    // The tokenizer copy is the last input read: its absence fails the save after the weights
    // and the optimiser state were written, as a full disk would.
    let err = save(&root, &model, &opt, 8, &dir.join("missing.json"), 2).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut names_sorted = names.clone();
    names_sorted.sort();
    assert_eq!(names_sorted, vec!["step-00000004", "step-00000006"], "no partial folder: {names:?}");
    assert_eq!(checkpoint::latest(&root).unwrap(), Some(root.join("step-00000006")));
    checkpoint::load(&root.join("step-00000006"), Device::Cpu, &decays, AdamWHyper::default())
        .expect("intact");
    assert_eq!(
        checkpoint::resolve(&dir).unwrap(),
        root.join("step-00000006"),
        "a run folder resolves to its latest"
    );
    assert_eq!(checkpoint::resume_point(&root).unwrap(), Some(root.join("step-00000006")));

    // A newer folder without the trainer state: a run does not resume past it or start over,
    // and a run folder holding only such folders says what it found.
    let stray = root.join("step-00000007");
    std::fs::create_dir_all(&stray).unwrap();
    let err = checkpoint::resume_point(&root).unwrap_err().to_string();
    assert!(
        err.contains("step-00000007") && err.contains("incomplete") && err.contains("step-00000006"),
        "{err}"
    );
    assert_eq!(checkpoint::resolve(&dir).unwrap(), root.join("step-00000006"), "eval still finds a model");
    for old in ["step-00000004", "step-00000006"] {
        std::fs::remove_dir_all(root.join(old)).unwrap();
    }
    let err = checkpoint::resume_point(&root).unwrap_err().to_string();
    assert!(err.contains("start over"), "{err}");
    let err = checkpoint::resolve(&dir).unwrap_err().to_string();
    assert!(err.contains("no complete checkpoint") && err.contains("step-00000007"), "{err}");
}

#[test]
fn damaged_checkpoints_name_the_file() {
    let dir = scratch("damaged");
    let tok = dir.join("tok.json");
    std::fs::write(&tok, "{}").unwrap();
    let (model, opt, decays) = trained();
    let root = dir.join("checkpoints");
    let saved = save(&root, &model, &opt, 2, &tok, 3).expect("save");
    let load =
        || checkpoint::load(&saved, Device::Cpu, &decays, AdamWHyper::default()).err().map(|e| e.to_string());

    let state_file = saved.join("trainer_state.json");
    let good_state = std::fs::read(&state_file).unwrap();
    std::fs::write(&state_file, &good_state[..good_state.len() / 2]).unwrap();
    let e = load().expect("a truncated state fails");
    assert!(e.contains("trainer_state.json"), "{e}");
    std::fs::write(&state_file, &good_state).unwrap();

    let weights = saved.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    for cut in [4, 100, good.len() / 2, good.len() - 1] {
        std::fs::write(&weights, &good[..cut]).unwrap();
        let e = load().expect("a truncated weights file fails");
        assert!(e.contains("model.safetensors"), "cut at {cut}: {e}");
    }
    std::fs::write(&weights, &good).unwrap();

    let opt_file = saved.join("optimizer.safetensors");
    std::fs::remove_file(&opt_file).unwrap();
    let e = load().expect("a missing optimizer file fails");
    assert!(e.contains("optimizer.safetensors"), "{e}");
}
