//! Checkpoints in every layout the Hugging Face Hub ships, written by PyTorch and
//! `transformers` themselves (`scripts/make_hub_fixtures.py` into `tests/fixtures/hub/`), load
//! to exactly the weights of the same model's `model.safetensors`, and give transformers'
//! logits:
//!
//! - `bin`: a zip-format `pytorch_model.bin` with a tied `lm_head.weight` sharing the
//!   embedding's storage, GPT-2's attention-mask buffers and a tensor stored transposed;
//! - `bin_legacy`: the pre-1.6 `torch.save` format with bare names (OpenAI's GPT-2);
//! - `bin_sharded_bf16`: bf16 PyTorch shards with `pytorch_model.bin.index.json`;
//! - `safetensors_sharded`: `save_pretrained` shards with `model.safetensors.index.json`.
//!
//! Damaged files and indexes are errors that name the problem, never panics.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, TempDir};
use polylm_engine::DType;
use polylm_model::pytorch::TorchFile;
use polylm_model::safetensors::MappedFile;
use polylm_model::weights::{CheckpointWeights, TensorSource};
use polylm_model::{checkpoint, Batch, Gpt, ModelError};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn hub(layout: &str) -> PathBuf {
    fixtures().join("hub").join(layout)
}

/// Every parameter of `model` as f32, by name.
fn params(model: &Gpt) -> Vec<(String, Vec<f32>)> {
    model
        .params()
        .named()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()))
        .collect()
}

/// The logits of `model` on the fixture's input ids, and transformers' logits.
fn logits(model: &Gpt, fixture: &str) -> (Vec<f32>, Vec<f32>) {
    let r = MappedFile::open(fixtures().join("gpt2").join(fixture).join("reference.safetensors")).unwrap();
    let view = r.tensor("input_ids").unwrap();
    let (batch, seq) = (view.shape[0], view.shape[1]);
    let ids: Vec<u32> = view.to_i64().unwrap().into_iter().map(|x| x as u32).collect();
    let got = polylm_engine::with_no_grad(|| model.logits(&Batch { ids: &ids, batch, seq })).unwrap();
    (
        got.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(),
        r.tensor("logits").unwrap().to_f32().unwrap(),
    )
}

#[test]
fn every_hub_layout_loads_the_same_weights() {
    for (layout, source) in [
        ("bin", "two_layer"),
        ("bin_legacy", "two_layer"),
        ("safetensors_sharded", "two_layer"),
        ("bin_sharded_bf16", "two_layer_bf16"),
        ("training_checkpoint", "two_layer"),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let want = checkpoint::load(&fixtures().join("gpt2").join(source), dtype).unwrap();
            let got = checkpoint::load(&hub(layout), dtype).unwrap_or_else(|e| panic!("{layout}: {e}"));
            assert_eq!(got.config(), want.config(), "{layout}");
            for ((name, a), (_, b)) in params(&got).iter().zip(params(&want)) {
                // Bit for bit: the same values stored in another container.
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{layout} as {dtype:?}: {name} differs"
                );
            }
            if dtype == DType::F32 {
                let (ours, theirs) = logits(&got, source);
                let e = assert_close(&format!("{layout} logits"), &ours, &theirs, 1e-5);
                println!("{layout}: every parameter identical to {source}/model.safetensors, logits within {e:.1e}");
            }
        }
    }
}

#[test]
fn a_pytorch_file_lists_its_tensors_with_dtypes_and_shapes() {
    let f = TorchFile::open(hub("bin").join("pytorch_model.bin")).unwrap();
    let names: Vec<&str> = f.names().collect();
    assert!(names.contains(&"lm_head.weight") && names.contains(&"transformer.h.1.attn.masked_bias"));
    let mask = f.tensor("transformer.h.0.attn.bias").unwrap();
    assert_eq!((mask.dtype.name(), mask.shape), ("BOOL", &[1usize, 1, 16, 16][..]));
    // The lower-triangular mask, row-major: element (i, j) is 1 exactly when j <= i.
    assert!(mask.data.iter().enumerate().all(|(k, &b)| b == u8::from(k % 16 <= k / 16)));
    let wpe = f.tensor("transformer.wpe.weight").unwrap();
    assert_eq!((wpe.dtype.name(), wpe.shape), ("F32", &[16usize, 16][..]));
    let scalar = f.tensor("transformer.h.0.attn.masked_bias").unwrap();
    assert_eq!((scalar.shape, scalar.to_f32().unwrap()), (&[][..], vec![-1e4]));
}

/// A training script's checkpoint: the state dict found under "model" beside the optimizer's
/// tensors, its DDP and torch.compile prefixes removed.
#[test]
fn a_training_checkpoint_gives_its_model_state_dict() {
    let f = TorchFile::open(hub("training_checkpoint").join("pytorch_model.bin")).unwrap();
    let names: Vec<&str> = f.names().collect();
    assert!(names.contains(&"transformer.wte.weight"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("transformer.") || n.starts_with("lm_head.")), "{names:?}");
    let plain = TorchFile::open(hub("bin").join("pytorch_model.bin")).unwrap();
    let a = f.tensor("transformer.h.1.mlp.c_fc.weight").unwrap();
    let b = plain.tensor("transformer.h.1.mlp.c_fc.weight").unwrap();
    assert_eq!((a.shape, a.data), (b.shape, b.data));
    let nested = TorchFile::open(hub("views").join("nested.pt")).unwrap();
    assert_eq!(nested.names().collect::<Vec<_>>(), ["x"]);
    assert_eq!(nested.tensor("x").unwrap().to_f32().unwrap(), [1.5, -2.0, 3.25]);
}

#[test]
fn a_folder_without_weights_names_what_it_looked_for() {
    let dir = TempDir::new("hub-empty");
    std::fs::copy(hub("bin").join("config.json"), dir.0.as_path().join("config.json")).unwrap();
    let err = checkpoint::load(dir.0.as_path(), DType::F32).unwrap_err();
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("model.safetensors.index.json") && text.contains("pytorch_model.bin"), "{text}");
}

/// A copy of the sharded bf16 fixture whose index is `index`.
fn with_index(tag: &str, index: &str) -> TempDir {
    let dir = TempDir::new(tag);
    for entry in std::fs::read_dir(hub("bin_sharded_bf16")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.0.as_path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.0.as_path().join("pytorch_model.bin.index.json"), index).unwrap();
    dir
}

#[test]
fn bad_indexes_are_errors_that_say_why() {
    let good = std::fs::read_to_string(hub("bin_sharded_bf16").join("pytorch_model.bin.index.json")).unwrap();
    let first = "pytorch_model-00001-of-00002.bin";
    let second = "pytorch_model-00002-of-00002.bin";
    // The first tensor the index lists (sorted) lives in the first shard.
    let cases = [
        ("not json", "{".to_string(), "EOF"),
        ("no map", r#"{"metadata": {}}"#.to_string(), "no weight_map"),
        ("empty map", r#"{"weight_map": {}}"#.to_string(), "empty"),
        ("escape", good.replacen(first, "../x.bin", 1), "not a file name"),
        ("absolute", good.replacen(first, "/etc/passwd", 1), "not a file name"),
        ("wrong shard", good.replacen(first, second, 1), "does not hold"),
        ("missing shard", good.replacen(first, "pytorch_model-00003-of-00002.bin", 1), "No such file"),
    ];
    for (what, index, expect) in cases {
        let dir = with_index("hub-index", &index);
        let err = checkpoint::load(dir.0.as_path(), DType::F32).unwrap_err().to_string();
        assert!(err.contains(expect), "{what}: {err}");
    }
}

#[test]
fn weights_open_from_a_single_file_or_an_index() {
    let single = CheckpointWeights::open(&hub("bin").join("pytorch_model.bin")).unwrap();
    assert_eq!(single.file_count(), 1);
    let sharded =
        CheckpointWeights::open(&hub("safetensors_sharded").join("model.safetensors.index.json")).unwrap();
    assert_eq!(sharded.file_count(), 2);
    let a = single.tensor("transformer.h.1.mlp.c_fc.weight").unwrap().to_f32().unwrap();
    let b = sharded.tensor("transformer.h.1.mlp.c_fc.weight").unwrap().to_f32().unwrap();
    assert_eq!(a, b);
    assert!(matches!(single.tensor("nope"), Err(ModelError::MissingTensor { .. })));
}

/// Writes `bytes` as a checkpoint folder's `pytorch_model.bin` beside the fixture's config.
fn load_bin(dir: &TempDir, bytes: &[u8]) -> Result<Gpt, ModelError> {
    std::fs::copy(hub("bin").join("config.json"), dir.0.as_path().join("config.json")).unwrap();
    std::fs::write(dir.0.as_path().join("pytorch_model.bin"), bytes).unwrap();
    checkpoint::load(dir.0.as_path(), DType::F32)
}

#[test]
fn truncated_pytorch_files_are_errors() {
    for layout in ["bin", "bin_legacy"] {
        let bytes = std::fs::read(hub(layout).join("pytorch_model.bin")).unwrap();
        let dir = TempDir::new("hub-cut");
        for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            assert!(load_bin(&dir, &bytes[..cut]).is_err(), "{layout} cut at {cut} of {}", bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Flipped bytes anywhere (the pickle, the zip directory, the tensor data) give an error
    /// or a model, never a panic.
    #[test]
    fn corrupted_pytorch_files_never_panic(
        legacy in any::<bool>(),
        flips in proptest::collection::vec((0usize..3, any::<usize>(), 1u8..=255), 1..6),
    ) {
        let layout = if legacy { "bin_legacy" } else { "bin" };
        let mut bytes = std::fs::read(hub(layout).join("pytorch_model.bin")).unwrap();
        let n = bytes.len();
        for (region, at, x) in flips {
            // Anywhere, or in the first 4 KiB (the pickles) or the last 2 KiB (a zip's
            // directory, a legacy file's last storages), where a flip changes the structure.
            let at = match region {
                0 => at % n,
                1 => at % 4096.min(n),
                _ => n - 1 - at % 2048.min(n),
            };
            bytes[at] ^= x;
        }
        let dir = TempDir::new("hub-flip");
        let _ = load_bin(&dir, &bytes);
    }
}

#[test]
fn broadcast_views_are_copied_and_huge_ones_refused() {
    let small = TorchFile::open(hub("views").join("small.pt")).unwrap();
    let x = small.tensor("x").unwrap();
    assert_eq!(x.shape, &[2usize, 3][..]);
    assert_eq!(x.to_f32().unwrap(), vec![1.5, -2.0, 3.25, 1.5, -2.0, 3.25]);
    // 10^12 elements of one stored float: an error naming the tensor, not a 4 TB allocation.
    let err = TorchFile::open(hub("views").join("huge.pt")).unwrap_err().to_string();
    assert!(err.contains("tensor x") && err.contains("contiguous"), "{err}");
}
