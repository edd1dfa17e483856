//! Training, model and file-format properties.

mod common;

use std::sync::OnceLock;

use polylm_tokenizer::model::{BOS_ID, EOS_ID, PAD_ID, UNK_ID};
use polylm_tokenizer::pretokenize::is_digit;
use polylm_tokenizer::{json, train, BpeModel, LanguageCorpus, Tokenizer, TokenizerError, TrainConfig};
use proptest::prelude::*;

const VOCAB: usize = 1000;

fn model() -> &'static BpeModel {
    static M: OnceLock<BpeModel> = OnceLock::new();
    M.get_or_init(|| common::train_small(TrainConfig { vocab_size: VOCAB, ..Default::default() }))
}

fn model_json() -> &'static String {
    static J: OnceLock<String> = OnceLock::new();
    J.get_or_init(|| json::to_json_string(model()))
}

#[test]
fn deterministic() {
    let again = common::train_small(TrainConfig { vocab_size: VOCAB, ..Default::default() });
    assert_eq!(again.merges(), model().merges());
    assert_eq!(again.pieces(), model().pieces());
}

#[test]
fn vocab_size_exact_and_specials() {
    let m = model();
    assert_eq!(m.vocab_size(), VOCAB);
    assert_eq!(m.piece_to_id("<unk>"), Some(UNK_ID));
    assert_eq!(m.piece_to_id("<s>"), Some(BOS_ID));
    assert_eq!(m.piece_to_id("</s>"), Some(EOS_ID));
    assert_eq!(m.piece_to_id("<pad>"), Some(PAD_ID));
    assert_eq!(m.id_to_piece(4), Some("<0x00>"));
    assert_eq!(m.id_to_piece(259), Some("<0xFF>"));

    let user = TrainConfig {
        vocab_size: 700,
        user_specials: vec!["<mask>".into(), "<sep>".into()],
        ..Default::default()
    };
    let m = common::train_small(user);
    assert_eq!(m.vocab_size(), 700);
    assert_eq!(m.special_id("<mask>"), Some(4));
    assert_eq!(m.special_id("<sep>"), Some(5));
    assert_eq!(m.id_to_piece(6), Some("<0x00>"));
    let tok = Tokenizer::new(m);
    // User-defined specials decode to their text; control specials to nothing.
    assert_eq!(tok.decode(&[BOS_ID, 4, EOS_ID]).unwrap(), "<mask>");
}

#[test]
fn digits_never_merge() {
    let m = model();
    let first = m.first_normal_id() as usize;
    for p in &m.pieces()[first..] {
        if p.chars().any(is_digit) {
            assert_eq!(p.chars().count(), 1, "piece {p:?} merges a digit");
        }
    }
    let tok = Tokenizer::new(m.clone());
    for id in tok.encode("year 2024 and ١٢٣ x9y") {
        if id < m.first_normal_id() {
            continue; // byte tokens such as <0xD9>
        }
        let p = m.id_to_piece(id).unwrap();
        assert!(!p.chars().any(is_digit) || p.chars().count() == 1, "{p:?}");
    }
}

#[test]
fn byte_fallback_for_unseen_chars() {
    let tok = Tokenizer::new(model().clone());
    let m = tok.model();
    for s in ["🦀", "𠀋", "a🦀b", "\u{e000}"] {
        assert!(m.char_id(s.chars().find(|c| !c.is_ascii()).unwrap()).is_none(), "{s} was in the alphabet");
        let ids = tok.encode(s);
        let bytes: Vec<u32> = ids.iter().copied().filter(|&i| (4..260).contains(&i)).collect();
        let expected: usize = s.chars().filter(|c| !c.is_ascii()).map(char::len_utf8).sum();
        assert_eq!(bytes.len(), expected, "{s}: {ids:?}");
        assert_eq!(tok.decode(&ids).unwrap(), s);
    }
    assert!(tok.encode("🦀").iter().all(|&i| i != UNK_ID));
}

#[test]
fn error_cases() {
    let small = TrainConfig { vocab_size: 100, ..Default::default() };
    let err = train(&common::small_corpora(), &small).unwrap_err();
    assert!(matches!(err, TokenizerError::VocabTooSmall { requested: 100, minimum: 260, .. }), "{err}");
    let err = train(&[], &TrainConfig::default()).unwrap_err();
    assert!(matches!(err, TokenizerError::EmptyCorpus(_)), "{err}");
    let blank = [LanguageCorpus::new("en", vec![]), LanguageCorpus::new("de", vec![String::new()])];
    assert!(matches!(train(&blank, &TrainConfig::default()), Err(TokenizerError::EmptyCorpus(_))));
    let tok = Tokenizer::new(model().clone());
    let err = tok.decode(&[5, VOCAB as u32]).unwrap_err();
    assert!(
        matches!(err, TokenizerError::IdOutOfRange { id, vocab_size: VOCAB } if id == VOCAB as u32),
        "{err}"
    );
    assert!(tok.decode(&[u32::MAX]).is_err());
}

#[test]
fn save_load_same_encodings() {
    let dir = std::env::temp_dir().join(format!("polylm-tok-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tok.json");
    let tok = Tokenizer::new(model().clone());
    tok.save(&path).unwrap();
    let loaded = Tokenizer::load(&path).unwrap();
    assert_eq!(loaded.model().pieces(), tok.model().pieces());
    assert_eq!(loaded.model().merges(), tok.model().merges());
    for c in common::small_corpora() {
        for t in c.texts.iter().take(5) {
            assert_eq!(loaded.encode(t), tok.encode(t));
        }
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\"format\":\"polylm-bpe\",\"version\":1"));
    assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "temp file left behind");
    assert!(matches!(Tokenizer::load(dir.join("missing.json")), Err(TokenizerError::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn truncated_model_is_an_error(frac in 0.0f64..1.0) {
        let text = model_json();
        let mut cut = ((text.len() as f64) * frac) as usize;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        prop_assert!(json::from_json_str(&text[..cut]).is_err());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = String::from_utf8_lossy(&bytes);
        prop_assert!(json::from_json_str(&s).is_err());
    }

    #[test]
    fn corrupted_model_never_panics(pos in 0usize..100_000, byte in any::<u8>()) {
        let mut bytes = model_json().as_bytes().to_vec();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        if let Ok(s) = std::str::from_utf8(&bytes) {
            // Either rejected or a valid model; never a panic.
            if let Ok(m) = json::from_json_str(s) {
                let tok = Tokenizer::new(m);
                let ids = tok.encode("hello world 42");
                prop_assert!(tok.decode(&ids).is_ok());
            }
        }
    }
}
