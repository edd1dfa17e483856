//! Exact SentencePiece normalisation with the model's own precompiled character map, against
//! the `sentencepiece` library: `tests/fixtures/sentencepiece/normalizer.model` keeps its
//! `nmt_nfkc` map, and `normalizer.json` holds what the library makes of validation lines of all
//! 18 languages (and their NFD forms), every code point below U+3400 and some higher blocks,
//! random combining-mark sequences, whitespace edge cases and user-defined pieces. Made by
//!
//! ```text
//! pip install sentencepiece
//! python3 scripts/make_sentencepiece_normalizer_fixtures.py
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use polylm_tokenizer::SentencePieceModel;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    set: String,
    text: String,
    normalized: String,
    ids: Option<Vec<u32>>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece")
}

#[test]
fn normalisation_and_ids_match_sentencepiece_exactly() {
    let model = SentencePieceModel::load(fixtures().join("normalizer.model")).expect("fixture model loads");
    let f: Fixture =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("normalizer.json")).unwrap()).unwrap();
    assert!(f.cases.len() > 500);
    // Per set: (cases, normalised differently, encoded differently).
    let mut per: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut shown = 0;
    for c in &f.cases {
        let set = c.set.split('-').next().unwrap_or_default();
        let e = per.entry(set).or_default();
        e.0 += 1;
        let norm = model.normalize(&c.text);
        if norm != c.normalized {
            e.1 += 1;
            if shown < 5 {
                shown += 1;
                println!("{}: {:?}\n  ours {:?}\n  spm  {:?}", c.set, c.text, norm, c.normalized);
            }
        }
        if let Some(ids) = &c.ids {
            if &model.encode(&c.text) != ids {
                e.2 += 1;
                if shown < 5 {
                    shown += 1;
                    println!(
                        "{} ids: {:?}\n  ours {:?}\n  spm  {:?}",
                        c.set,
                        c.text,
                        model.encode(&c.text),
                        ids
                    );
                }
            }
        }
    }
    for (set, (n, norm, ids)) in &per {
        println!("{set:<12} {n:>4} cases: {norm} normalised differently, {ids} encoded differently");
    }
    assert!(per.values().all(|&(_, norm, ids)| norm == 0 && ids == 0), "{per:?}");
}

#[test]
fn the_map_is_read_from_the_model() {
    let model = SentencePieceModel::load(fixtures().join("normalizer.model")).unwrap();
    let spec = &model.proto().normalizer_spec;
    assert_eq!(spec.name, "nmt_nfkc");
    assert!(spec.precompiled_charsmap.len() > 100_000);
    // Rules NFKC alone does not have: a right-to-left mark becomes a space, and marks keep the
    // order they were typed in (NFKC would put U+064E before U+0651).
    assert_eq!(model.normalize("a\u{200f}b"), "\u{2581}a\u{2581}b");
    assert_eq!(model.normalize("\u{644}\u{651}\u{64e}"), "\u{2581}\u{644}\u{651}\u{64e}");
    // A user-defined piece is copied as it is (NFKC would make the ligature "fi").
    assert_eq!(model.normalize("\u{fb01}"), "\u{2581}\u{fb01}");
}
