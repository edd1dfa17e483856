//! Property tests: `decode(encode(s))` equals the normalised text for arbitrary strings.

mod common;

use std::sync::OnceLock;

use polylm_tokenizer::{NormalizerKind, Tokenizer, TrainConfig};
use proptest::prelude::*;

fn nfkc() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::new(common::train_small(TrainConfig { vocab_size: 1000, ..Default::default() }))
    })
}

fn raw_no_prefix() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::new(common::train_small(TrainConfig {
            vocab_size: 600,
            normalizer: NormalizerKind::None,
            add_dummy_prefix: false,
            ..Default::default()
        }))
    })
}

fn nfc() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::new(common::train_small(TrainConfig {
            vocab_size: 500,
            normalizer: NormalizerKind::Nfc,
            ..Default::default()
        }))
    })
}

/// Strings built from a pool of awkward characters: spaces, controls, combining marks, emoji,
/// digits of several scripts, compatibility characters, the meta symbol itself, mixed scripts.
fn tricky() -> impl Strategy<Value = String> {
    let pool: Vec<&str> = vec![
        " ",
        " ",
        "    ",
        "a",
        "the",
        "é",
        "e\u{301}",
        "\u{301}",
        "\u{0}",
        "\t",
        "\n",
        "\r\n",
        "\u{7f}",
        "日本",
        "语",
        "🙂",
        "👩\u{200d}💻",
        "🇫🇷",
        "1",
        "2024",
        "٣",
        "١٢",
        "½",
        "ﬁ",
        "①",
        "▁",
        "▁▁",
        "ไทย",
        "한국어",
        "Привет",
        "مرحبا",
        "שלום",
        "\u{feff}",
        "\u{200b}",
        "\u{fffd}",
        "𠀋",
        "Ａ",
        "\u{10ffff}",
        "x",
    ];
    prop::collection::vec(prop::sample::select(pool), 0..60).prop_map(|v| v.concat())
}

fn check(tok: &Tokenizer, s: &str) -> Result<(), TestCaseError> {
    let ids = tok.encode(s);
    prop_assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    let decoded = tok.decode(&ids).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(decoded, tok.roundtrip_text(s));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_strings_roundtrip(s in any::<String>()) {
        check(nfkc(), &s)?;
        check(raw_no_prefix(), &s)?;
        check(nfc(), &s)?;
    }

    #[test]
    fn tricky_strings_roundtrip(s in tricky()) {
        check(nfkc(), &s)?;
        check(raw_no_prefix(), &s)?;
        check(nfc(), &s)?;
    }

    #[test]
    fn no_normalizer_is_identity_up_to_meta(s in tricky()) {
        // Without Unicode normalisation or dummy prefix, only a literal `▁` changes (to a space).
        let tok = raw_no_prefix();
        prop_assert_eq!(tok.decode(&tok.encode(&s)).unwrap(), s.replace('▁', " "));
    }

    #[test]
    fn batch_equals_single(v in prop::collection::vec(tricky(), 0..8)) {
        let tok = nfkc();
        let batch = tok.encode_batch(&v);
        let single: Vec<Vec<u32>> = v.iter().map(|s| tok.encode(s)).collect();
        prop_assert_eq!(&batch, &single);
        let decoded = tok.decode_batch(&batch).unwrap();
        let expected: Vec<String> = v.iter().map(|s| tok.roundtrip_text(s)).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn decode_never_panics(ids in prop::collection::vec(0u32..1200, 0..50)) {
        let tok = nfkc();
        let r = tok.decode(&ids);
        prop_assert_eq!(r.is_ok(), ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    }
}

#[test]
fn cache_does_not_change_results() {
    let tok = nfkc();
    let uncached = Tokenizer::with_cache_capacity(tok.model().clone(), 0);
    let text = "the the the quick 123 brown ▁ fox 日本語 🙂 the";
    for _ in 0..3 {
        assert_eq!(tok.encode(text), uncached.encode(text));
    }
    tok.clear_cache();
    assert_eq!(tok.encode(text), uncached.encode(text));
}
