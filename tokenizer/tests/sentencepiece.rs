//! Parity of the SentencePiece importer with the reference `sentencepiece` library.
//!
//! The fixtures in `tests/fixtures/sentencepiece/` (two small models and the ids the Python
//! library gives for validation and UDHR lines of en/de/ru/zh) are made by
//!
//! ```text
//! pip install sentencepiece
//! python3 scripts/make_sentencepiece_fixtures.py
//! ```
//!
//! (the script strips the ~240 KB precompiled normaliser map from the saved models after
//! computing the reference ids, so these models exercise the importer's NFKC fallback; the map
//! itself is tested by `sentencepiece_normalizer.rs`). If a fixture is absent the tests print a
//! message and pass.

use std::collections::BTreeMap;
use std::path::PathBuf;

use polylm_tokenizer::sentencepiece::proto::{ModelType, PieceType};
use polylm_tokenizer::{SentencePieceModel, TokenizerError};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: BTreeMap<String, Vec<String>>,
    ids: BTreeMap<String, BTreeMap<String, Vec<Vec<u32>>>>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece")
}

fn load(name: &str) -> Option<(SentencePieceModel, Reference)> {
    let dir = fixtures();
    let model = dir.join(format!("{name}.model"));
    let reference = dir.join("reference.json");
    if !model.exists() || !reference.exists() {
        println!(
            "skipping: {} or {} is absent (run scripts/make_sentencepiece_fixtures.py)",
            model.display(),
            reference.display()
        );
        return None;
    }
    let m = SentencePieceModel::load(&model).expect("fixture model loads");
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    Some((m, r))
}

/// Returns (matched, total) per text set and prints the first mismatches.
fn parity(name: &str) -> Option<BTreeMap<String, (usize, usize)>> {
    let (m, r) = load(name)?;
    let mut out = BTreeMap::new();
    for (set, texts) in &r.texts {
        let expected = &r.ids[name][set];
        assert_eq!(expected.len(), texts.len());
        let mut matched = 0;
        let mut shown = 0;
        for (text, want) in texts.iter().zip(expected) {
            let got = m.encode(text);
            if &got == want {
                matched += 1;
            } else if shown < 3 {
                shown += 1;
                println!(
                    "{name}/{set} mismatch on {text:?}\n  want {:?}\n  got  {:?}",
                    piece_strs(&m, want),
                    piece_strs(&m, &got)
                );
            }
            // Decoding the reference ids gives back the normalised text.
            let decoded = m.decode(want).unwrap();
            assert_eq!(
                decoded,
                m.normalize(text).replace('\u{2581}', " ").trim_start_matches(' '),
                "{name}/{set}: decode of {text:?}"
            );
        }
        println!("{name} {set}: {matched}/{} lines identical", texts.len());
        out.insert(set.clone(), (matched, texts.len()));
    }
    Some(out)
}

fn piece_strs(m: &SentencePieceModel, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&i| m.id_to_piece(i).unwrap_or("?").to_string()).collect()
}

#[test]
fn model_fields_match_the_trainer_flags() {
    for (name, kind) in [("bpe", ModelType::Bpe), ("unigram", ModelType::Unigram)] {
        let Some((m, _)) = load(name) else { return };
        let p = m.proto();
        assert_eq!(p.trainer_spec.model_type, kind);
        assert_eq!(p.trainer_spec.vocab_size, 2000);
        assert_eq!(p.pieces.len(), 2000);
        assert!(p.trainer_spec.byte_fallback);
        assert_eq!(p.trainer_spec.split_digits, name == "bpe");
        assert_eq!(
            (p.trainer_spec.unk_id, p.trainer_spec.bos_id, p.trainer_spec.eos_id, p.trainer_spec.pad_id),
            (0, 1, 2, -1)
        );
        assert_eq!(p.normalizer_spec.name, "nmt_nfkc");
        assert!(
            p.normalizer_spec.add_dummy_prefix
                && p.normalizer_spec.remove_extra_whitespaces
                && p.normalizer_spec.escape_whitespaces
        );
        assert_eq!(p.pieces[0].kind, PieceType::Unknown);
        assert_eq!(p.pieces[1].kind, PieceType::Control);
        assert_eq!(p.pieces[3].piece, "<0x00>");
        assert_eq!(p.pieces[3].kind, PieceType::Byte);
        assert_eq!(p.pieces[300].kind, PieceType::Normal);
    }
}

#[test]
fn bpe_parity() {
    let Some(res) = parity("bpe") else { return };
    for (set, (matched, total)) in res {
        assert_eq!(matched, total, "bpe {set}");
    }
}

#[test]
fn unigram_parity() {
    let Some(res) = parity("unigram") else { return };
    for (set, (matched, total)) in res {
        assert_eq!(matched, total, "unigram {set}");
    }
}

#[test]
fn truncated_model_is_a_typed_error() {
    let path = fixtures().join("bpe.model");
    let Ok(bytes) = std::fs::read(&path) else {
        println!("skipping: {} is absent", path.display());
        return;
    };
    for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        match SentencePieceModel::from_bytes(&bytes[..cut]) {
            Err(TokenizerError::MalformedModel { .. }) => {}
            other => panic!("cut at {cut}: expected MalformedModel, got {:?}", other.map(|m| m.vocab_size())),
        }
    }
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn fixture_bytes() -> Option<Vec<u8>> {
        std::fs::read(fixtures().join("unigram.model")).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Flipping bytes of a real model gives Ok or a typed error, never a panic.
        #[test]
        fn corrupted_model_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let Some(mut bytes) = fixture_bytes() else { return Ok(()) };
            let len = bytes.len();
            for (pos, val) in flips {
                bytes[pos % len] = val;
            }
            if let Ok(m) = SentencePieceModel::from_bytes(&bytes) {
                let _ = m.encode("Hello, world 123 Привет 你好");
            }
        }

        /// Any text encodes and decodes back to its normalised form.
        #[test]
        fn encode_decode_roundtrip(text in "\\PC{0,40}") {
            for name in ["bpe", "unigram"] {
                let Ok(m) = SentencePieceModel::load(fixtures().join(format!("{name}.model"))) else { return Ok(()) };
                let ids = m.encode(&text);
                let want = m.normalize(&text).replace('\u{2581}', " ");
                prop_assert_eq!(m.decode(&ids).unwrap(), want.trim_start_matches(' '));
            }
        }
    }
}
