//! The safetensors reader and writer, and checkpoints in the `GPT2LMHeadModel` layout:
//! round trips in f32 and bf16, typed errors naming the tensor, and a parser that never panics.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{perturb, small_config};
use polylm_engine::{with_no_grad, DType};
use polylm_model::safetensors::{parse, write_file, Dtype, MappedFile, TensorData};
use polylm_model::{checkpoint, Batch, Gpt, ModelError};
use proptest::prelude::*;

fn tmp_dir(tag: &str) -> common::TempDir {
    common::TempDir::new(tag)
}

fn model() -> Gpt {
    let mut m = Gpt::new(small_config(30, 2, 16, 2, 24, 12), DType::F32, 4).unwrap();
    perturb(&mut m, 0.2, 5);
    m
}

fn logits(m: &Gpt) -> Vec<f32> {
    let ids = [1u32, 5, 9, 29, 0, 3];
    with_no_grad(|| m.logits(&Batch { ids: &ids, batch: 2, seq: 3 }))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec()
        .unwrap()
}

#[test]
fn f32_checkpoint_round_trips_exactly() {
    let dir = tmp_dir("f32");
    let m = model();
    checkpoint::save(&m, &dir, DType::F32).unwrap();
    let back = checkpoint::load(&dir, DType::F32).unwrap();
    assert_eq!(back.config(), m.config());
    for ((n, a), (_, b)) in m.params().named().iter().zip(back.params().named()) {
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{n}");
    }
    assert_eq!(logits(&m), logits(&back));
    // Nothing but the two files is left behind (the temporary files were renamed).
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    let file = MappedFile::open(dir.join("model.safetensors")).unwrap();
    assert_eq!(file.header().data_start % 8, 0);
    assert_eq!(file.tensor("transformer.h.1.mlp.c_fc.weight").unwrap().shape, &[16, 24]);
    // [in, out]
}

#[test]
fn bf16_checkpoint_round_trips_to_bf16_rounding() {
    let dir = tmp_dir("bf16");
    let m = model();
    checkpoint::save(&m, &dir, DType::BF16).unwrap();
    let file = MappedFile::open(dir.join("model.safetensors")).unwrap();
    assert_eq!(file.tensor("transformer.wte.weight").unwrap().dtype, Dtype::BF16);
    for dtype in [DType::F32, DType::BF16] {
        let back = checkpoint::load(&dir, dtype).unwrap();
        assert_eq!(back.dtype(), dtype);
        for ((n, a), (_, b)) in m.params().named().iter().zip(back.params().named()) {
            let want: Vec<f32> =
                a.to_vec::<f32>().unwrap().iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
            let got = b.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
            assert_eq!(got, want, "{n}");
        }
    }
}

/// Writes a safetensors file holding the model's tensors, changed by `edit`.
fn write_edited(dir: &Path, m: &Gpt, edit: impl FnOnce(&mut Vec<TensorData>)) {
    checkpoint::save(m, dir, DType::F32).unwrap();
    let mut tensors: Vec<TensorData> = m
        .params()
        .named()
        .iter()
        .map(|(n, t)| TensorData {
            name: n.clone(),
            dtype: Dtype::F32,
            shape: t.shape().to_vec(),
            bytes: t.to_vec::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    edit(&mut tensors);
    write_file(&dir.join("model.safetensors"), &tensors, &BTreeMap::new()).unwrap();
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    let dir = tmp_dir("bad");
    let m = model();
    let load = || checkpoint::load(&dir, DType::F32);

    write_edited(&dir, &m, |t| t.retain(|x| x.name != "transformer.h.1.ln_2.bias"));
    assert!(matches!(load(), Err(ModelError::MissingTensor { name }) if name == "transformer.h.1.ln_2.bias"));

    write_edited(&dir, &m, |t| {
        t.push(TensorData {
            name: "transformer.h.9.extra".into(),
            dtype: Dtype::F32,
            shape: vec![1],
            bytes: vec![0; 4],
        })
    });
    assert!(matches!(load(), Err(ModelError::UnexpectedTensor { name }) if name == "transformer.h.9.extra"));

    write_edited(&dir, &m, |t| {
        let x = t.iter_mut().find(|x| x.name == "transformer.h.0.attn.c_attn.weight").unwrap();
        x.shape = vec![48, 16]; // the [out, in] layout of nn.Linear, not Conv1D's [in, out]
    });
    assert!(matches!(load(), Err(ModelError::TensorShape { name, expected, found })
        if name == "transformer.h.0.attn.c_attn.weight" && expected == [16, 48] && found == [48, 16]));

    write_edited(&dir, &m, |t| {
        let x = t.iter_mut().find(|x| x.name == "transformer.ln_f.weight").unwrap();
        x.dtype = Dtype::I32;
    });
    assert!(matches!(load(), Err(ModelError::TensorDType { name, .. }) if name == "transformer.ln_f.weight"));

    // GPT-2's mask buffers are ignored; a tied lm_head is accepted, an untied one refused.
    write_edited(&dir, &m, |t| {
        let wte = t[0].clone();
        t.push(TensorData {
            name: "transformer.h.0.attn.bias".into(),
            dtype: Dtype::F32,
            shape: vec![1, 1, 2, 2],
            bytes: vec![0; 16],
        });
        t.push(TensorData { name: "lm_head.weight".into(), ..wte });
    });
    assert_eq!(logits(&load().unwrap()), logits(&m));
    write_edited(&dir, &m, |t| {
        let mut head = TensorData { name: "lm_head.weight".into(), ..t[0].clone() };
        head.bytes[5] ^= 1;
        t.push(head);
    });
    assert!(matches!(load(), Err(ModelError::UntiedHead)));

    // A config.json whose layer count the weights do not hold: an error naming both counts,
    // found before anything the size of that count is allocated (10^12 layers here).
    write_edited(&dir, &m, |t| t.retain(|x| !x.name.starts_with("transformer.h.1.")));
    assert!(matches!(load(), Err(ModelError::LayerCount { config: 2, file: 1 })));
    write_edited(&dir, &m, |_| {});
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("\"n_layer\": 2"), "{config}");
    std::fs::write(&config_path, config.replace("\"n_layer\": 2", "\"n_layer\": 1000000000000")).unwrap();
    assert!(matches!(load(), Err(ModelError::LayerCount { config: 1_000_000_000_000, file: 2 })));

    // Truncated and corrupt files.
    write_edited(&dir, &m, |_| {});
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    match load() {
        Err(ModelError::CorruptFile { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("expected a truncated-file error, got {other:?}"),
    }
    let mut garbled = bytes.clone();
    garbled[9] = b'#';
    std::fs::write(&path, &garbled).unwrap();
    assert!(matches!(load(), Err(ModelError::CorruptFile { .. })));
    std::fs::remove_file(&path).unwrap();
    match load() {
        Err(e @ ModelError::NoWeights { .. }) => assert!(e.to_string().contains("model.safetensors"), "{e}"),
        other => panic!("expected a no-weights error, got {other:?}"),
    }
}

#[test]
fn loads_names_without_the_transformer_prefix() {
    let dir = tmp_dir("noprefix");
    let m = model();
    write_edited(&dir, &m, |t| {
        for x in t.iter_mut() {
            x.name = x.name.trim_start_matches("transformer.").to_string();
        }
    });
    assert_eq!(logits(&checkpoint::load(&dir, DType::F32).unwrap()), logits(&m));
}

/// A small valid file to mutate.
fn valid_file() -> Vec<u8> {
    let dir = tmp_dir("valid");
    let tensors = vec![
        TensorData { name: "a".into(), dtype: Dtype::F32, shape: vec![2, 3], bytes: (0..24).collect() },
        TensorData { name: "b".into(), dtype: Dtype::BF16, shape: vec![5], bytes: (0..10).collect() },
    ];
    let path = dir.join("x.safetensors");
    write_file(&path, &tensors, &BTreeMap::from([("k".to_string(), "v".to_string())])).unwrap();
    std::fs::read(path).unwrap()
}

/// Every tensor a successful parse reports lies inside the data.
fn check_parsed(bytes: &[u8]) {
    if let Ok(h) = parse(bytes, "<bytes>") {
        for (name, t) in &h.tensors {
            assert!(h.data_start + t.end <= bytes.len(), "{name} leaves the file");
            let n: usize = t.shape.iter().product();
            assert_eq!(n * t.dtype.size(), t.end - t.start);
        }
    }
}

#[test]
fn valid_file_parses_and_every_truncation_fails() {
    let bytes = valid_file();
    let h = parse(&bytes, "<bytes>").unwrap();
    assert_eq!(h.tensors["a"].shape, [2, 3]);
    assert_eq!(h.metadata["k"], "v");
    for cut in 0..bytes.len() {
        assert!(
            matches!(parse(&bytes[..cut], "<bytes>"), Err(ModelError::CorruptFile { .. })),
            "cut at {cut}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_parsed(&bytes);
    }

    #[test]
    fn parser_survives_mutated_valid_files(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let mut bytes = valid_file_cached().clone();
        for (at, v) in edits {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        let keep = cut % (bytes.len() + 1);
        check_parsed(&bytes[..keep]);
    }

    #[test]
    fn parser_survives_arbitrary_headers(json in "\\{(\"[a-z_]{0,3}\":\\{(\"(dtype|shape|data_offsets)\":(\"[A-Z0-9]{1,4}\"|\\[[0-9,-]{0,12}\\]|[0-9]{1,20}),?){0,3}\\},?){0,3}\\}", tail in 0usize..64) {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(std::iter::repeat_n(7u8, tail));
        check_parsed(&bytes);
    }
}

fn valid_file_cached() -> &'static Vec<u8> {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(valid_file)
}
