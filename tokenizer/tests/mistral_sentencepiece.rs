//! Parity of the SentencePiece importer with the `sentencepiece` Python package on the real BPE
//! models shipped by `mistral-common` (Apache-2.0): the whole validation split and every UDHR
//! line, 18 languages.
//!
//! `tests/fixtures/mistral/reference.json` (committed) holds, per model and text set, the count
//! and an FNV-1a hash of the reference ids, plus sample texts with their full ids. The model
//! files (about 0.5 MB each) are not committed; they are copied into the git-ignored
//! `tests/fixtures/large/mistral/` by
//!
//! ```text
//! .venv-tok/bin/pip install sentencepiece mistral-common
//! .venv-tok/bin/python scripts/make_mistral_sentencepiece_fixtures.py
//! ```
//!
//! Without them (or without `../shared/data`) the tests print a message and pass.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use polylm_tokenizer::SentencePieceModel;
use serde::Deserialize;

use common::SetRef;

#[derive(Deserialize)]
struct ModelRef {
    sets: BTreeMap<String, SetRef>,
    samples: BTreeMap<String, Vec<Vec<u32>>>,
}

#[derive(Deserialize)]
struct Reference {
    samples: BTreeMap<String, Vec<String>>,
    models: BTreeMap<String, ModelRef>,
}

use common::fixtures;

fn reference() -> Reference {
    let path = fixtures().join("mistral/reference.json");
    let text = std::fs::read_to_string(&path).expect("the committed mistral reference is readable");
    serde_json::from_str(&text).expect("the mistral reference parses")
}

/// The models whose files are present, with their references.
fn models() -> Vec<(String, SentencePieceModel, ModelRef)> {
    let r = reference();
    let mut out = Vec::new();
    for (name, m) in r.models {
        let path = fixtures().join("large/mistral").join(&name);
        if !path.exists() {
            println!(
                "skipping {name}: {} is absent (run scripts/make_mistral_sentencepiece_fixtures.py)",
                path.display()
            );
            continue;
        }
        let model = SentencePieceModel::load(&path).expect("mistral model loads");
        out.push((name, model, m));
    }
    out
}

#[test]
fn mistral_samples_are_identical() {
    let r = reference();
    for (name, model, m) in models() {
        let mut checked = 0;
        for (set, texts) in &r.samples {
            for (text, want) in texts.iter().zip(&m.samples[set]) {
                let got = model.encode(text);
                assert_eq!(&got, want, "{name} {set}: {text:?}");
                checked += 1;
            }
        }
        println!("{name}: {checked} sample texts identical");
        assert!(checked > 40);
    }
}

#[test]
fn mistral_whole_validation_and_udhr_are_identical() {
    if !Path::new(common::DATA).join("valid").is_dir() {
        println!("skipping: {} is absent", common::DATA);
        return;
    }
    for (name, model, m) in models() {
        let mut failed = Vec::new();
        let (mut n_texts, mut n_ids) = (0, 0);
        for (set, want) in &m.sets {
            let Some(texts) = common::set_texts(set) else {
                failed.push(format!("{set}: texts not found"));
                continue;
            };
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let mut ids_here = 0;
            for text in &texts {
                let ids = model.encode(text);
                ids_here += ids.len();
                h = common::fnv_ids(h, &ids);
            }
            n_texts += texts.len();
            n_ids += ids_here;
            if texts.len() != want.texts || ids_here != want.ids || format!("{h:016x}") != want.fnv64 {
                failed.push(format!(
                    "{set}: {} texts / {ids_here} ids / {h:016x}, want {} / {} / {}",
                    texts.len(),
                    want.texts,
                    want.ids,
                    want.fnv64
                ));
            }
        }
        println!("{name}: {n_texts} texts, {n_ids} ids, {} sets identical", m.sets.len() - failed.len());
        assert!(failed.is_empty(), "{name}: sets differ:\n{}", failed.join("\n"));
    }
}
