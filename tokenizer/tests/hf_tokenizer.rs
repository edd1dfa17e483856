//! Hugging Face `tokenizer.json` import and export against the `tokenizers` and `tiktoken`
//! Python libraries.
//!
//! `tests/fixtures/hf/` (committed, made by `scripts/make_hf_tokenizer_fixtures.py`) holds small
//! tokenizers of every supported kind (byte-level; SentencePiece style with Metaspace; the older
//! Llama layout; our own model and its export) and `reference.json`: the ids and decoded text of
//! sample texts, and a hash of the ids of the whole validation split and every UDHR line, all
//! from `tokenizers`. GPT-2 (`encoder.json` + `vocab.bpe`, whose ids the script checks are the
//! same from `tokenizers` and `tiktoken`) lives in the git-ignored `tests/fixtures/large/gpt2/`;
//! without it, or without `../shared/data`, those parts print a message and pass.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polylm_tokenizer::{json, HfTokenizer, Tokenizer, TokenizerError};
use serde::Deserialize;

use common::SetRef;

#[derive(Deserialize)]
struct ModelRef {
    sets: BTreeMap<String, SetRef>,
    samples: BTreeMap<String, Vec<Vec<u32>>>,
    decoded: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct Reference {
    samples: BTreeMap<String, Vec<String>>,
    models: BTreeMap<String, ModelRef>,
}

use common::fixtures;

fn read_reference(path: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join(path)).expect("reference readable");
    serde_json::from_str(&text).expect("reference parses")
}

/// `hf/reference.json` (models by name) or, for names `<dir>/<model>` (`spm/unigram`,
/// `regex/llama3`), `hf/<dir>/reference.json`.
fn reference(name: &str) -> (&'static Reference, &str) {
    static HF: std::sync::OnceLock<Reference> = std::sync::OnceLock::new();
    static SPM: std::sync::OnceLock<Reference> = std::sync::OnceLock::new();
    static REGEX: std::sync::OnceLock<Reference> = std::sync::OnceLock::new();
    match name.split_once('/') {
        Some(("spm", model)) => (SPM.get_or_init(|| read_reference("hf/spm/reference.json")), model),
        Some(("regex", model)) => (REGEX.get_or_init(|| read_reference("hf/regex/reference.json")), model),
        _ => (HF.get_or_init(|| read_reference("hf/reference.json")), name),
    }
}

/// Sample ids and decoded texts must equal the reference.
type Decoder<'a> = Option<&'a dyn Fn(&[u32]) -> String>;

fn check_samples(name: &str, encode: &dyn Fn(&str) -> Vec<u32>, decode: Decoder<'_>) {
    let (r, model) = reference(name);
    let m = &r.models[model];
    let mut n = 0;
    for (set, texts) in &r.samples {
        for (k, text) in texts.iter().enumerate() {
            let want = &m.samples[set][k];
            assert_eq!(&encode(text), want, "{name} {set}: ids of {text:?}");
            if let Some(decode) = decode {
                assert_eq!(decode(want), m.decoded[set][k], "{name} {set}: decode of {text:?}");
            }
            n += 1;
        }
    }
    println!("{name}: {n} sample texts identical");
}

/// Every validation record and UDHR line must give the reference ids (by hash).
fn check_sets(name: &str, encode: &(dyn Fn(&str) -> Vec<u32> + Sync)) {
    if !Path::new(common::DATA).join("valid").is_dir() {
        println!("skipping the full sets of {name}: {} is absent", common::DATA);
        return;
    }
    let (r, model) = reference(name);
    let m = &r.models[model];
    let mut failed = Vec::new();
    let (mut texts_n, mut ids_n) = (0, 0);
    for (set, want) in &m.sets {
        let Some(texts) = common::set_texts(set) else {
            failed.push(format!("{set}: texts not found"));
            continue;
        };
        let all: Vec<Vec<u32>> = {
            use rayon::prelude::*;
            texts.par_iter().map(|t| encode(t)).collect()
        };
        let h = all.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, ids| common::fnv_ids(h, ids));
        let n: usize = all.iter().map(Vec::len).sum();
        texts_n += texts.len();
        ids_n += n;
        if texts.len() != want.texts || n != want.ids || format!("{h:016x}") != want.fnv64 {
            failed.push(format!(
                "{set}: {} texts, {n} ids, {h:016x}; want {}, {}, {}",
                texts.len(),
                want.texts,
                want.ids,
                want.fnv64
            ));
        }
    }
    println!(
        "{name}: {texts_n} texts, {ids_n} ids; {} of {} sets identical",
        m.sets.len() - failed.len(),
        m.sets.len()
    );
    assert!(failed.is_empty(), "{name}: sets differ:\n{}", failed.join("\n"));
}

fn hf(name: &str) -> HfTokenizer {
    HfTokenizer::load(fixtures().join("hf").join(name)).expect("fixture tokenizer.json loads")
}

#[test]
fn bytelevel_parity() {
    let t = hf("bytelevel.json");
    check_samples("bytelevel", &|s| t.encode(s), Some(&|ids| t.decode(ids, false).unwrap()));
    check_sets("bytelevel", &|s| t.encode(s));
}

#[test]
fn metaspace_parity() {
    let t = hf("metaspace.json");
    assert!(t.byte_fallback());
    check_samples("metaspace", &|s| t.encode(s), Some(&|ids| t.decode(ids, false).unwrap()));
    check_sets("metaspace", &|s| t.encode(s));
}

#[test]
fn llama_layout_parity() {
    let t = hf("llama.json");
    check_samples("llama", &|s| t.encode(s), Some(&|ids| t.decode(ids, false).unwrap()));
    check_sets("llama", &|s| t.encode(s));
}

/// Our model, its export loaded by `tokenizers`, and the export loaded back here: the same ids.
#[test]
fn our_export_matches_tokenizers() {
    let ours = Tokenizer::new(json::load(fixtures().join("hf/ours.json")).expect("our fixture loads"));
    let mut exported = hf("ours.tokenizer.json");
    // As the fixture script does in Python: special tokens in the text are plain text, as ours.
    exported.set_encode_special_tokens(true);
    check_samples("ours", &|s| ours.encode(s), Some(&|ids| exported.decode(ids, true).unwrap()));
    check_samples("ours", &|s| exported.encode(s), None);
    check_sets("ours", &|s| ours.encode(s));
    // Exporting again gives a file that reads back to the same tokenizer.
    let again = HfTokenizer::from_bpe_model(ours.model()).unwrap();
    let reread = HfTokenizer::from_json_str(&again.to_json_string()).unwrap();
    assert_eq!(reread.vocab(), exported.vocab());
    assert_eq!(reread.to_json_string(), again.to_json_string());
}

fn gpt2_dir() -> Option<PathBuf> {
    let dir = fixtures().join("large/gpt2");
    if dir.join("encoder.json").exists() && dir.join("vocab.bpe").exists() {
        Some(dir)
    } else {
        println!("skipping GPT-2: {} is absent (run scripts/make_hf_tokenizer_fixtures.py)", dir.display());
        None
    }
}

#[test]
fn gpt2_from_encoder_json_and_vocab_bpe() {
    let Some(dir) = gpt2_dir() else { return };
    let t = HfTokenizer::from_gpt2_files(dir.join("encoder.json"), dir.join("vocab.bpe")).unwrap();
    assert_eq!(t.vocab_size(), 50257);
    assert_eq!(t.encode("Hello world"), vec![15496, 995]);
    check_samples("gpt2", &|s| t.encode(s), Some(&|ids| t.decode(ids, false).unwrap()));
    check_sets("gpt2", &|s| t.encode(s));
}

#[test]
fn gpt2_tokenizer_json_and_roundtrip_export() {
    let Some(dir) = gpt2_dir() else { return };
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        println!("skipping: {} is absent", path.display());
        return;
    }
    let t = HfTokenizer::load(&path).unwrap();
    check_samples("gpt2", &|s| t.encode(s), None);
    // Our export of a byte-level tokenizer reads back identically.
    let back = HfTokenizer::from_json_str(&t.to_json_string()).unwrap();
    check_samples("gpt2", &|s| back.encode(s), Some(&|ids| back.decode(ids, false).unwrap()));
}

/// What `transformers` writes for SentencePiece models (`hf/spm/`, see
/// `scripts/make_hf_sentencepiece_fixtures.py`): Unigram models, the Precompiled normaliser,
/// Replace and Split with regular expressions, WhitespaceSplit. Each also survives our export.
fn check_converted(name: &str, byte_fallback: bool) {
    let t = hf(&format!("{name}.json"));
    assert_eq!(t.byte_fallback(), byte_fallback, "{name}");
    check_samples(name, &|s| t.encode(s), Some(&|ids| t.decode(ids, false).unwrap()));
    check_sets(name, &|s| t.encode(s));
    let back = HfTokenizer::from_json_str(&t.to_json_string()).unwrap();
    check_samples(name, &|s| back.encode(s), Some(&|ids| back.decode(ids, false).unwrap()));
}

#[test]
fn sentencepiece_unigram_as_converted_by_transformers() {
    check_converted("spm/unigram", true);
}

#[test]
fn sentencepiece_unigram_as_xlm_roberta() {
    check_converted("spm/xlmr", false);
}

#[test]
fn sentencepiece_bpe_as_converted_by_transformers() {
    check_converted("spm/bpe", true);
}

/// A byte-level BPE split by the GPT-4 expression first, as Llama 3's and Qwen2's files are.
#[test]
fn gpt4_style_regex_split_parity() {
    check_converted("regex/llama3", false);
}

/// `Whitespace` words after `NFD`, `StripAccents` and `Lowercase` (a BERT-style front end).
#[test]
fn whitespace_words_without_accents_parity() {
    check_converted("regex/words", false);
}

#[test]
fn added_tokens_in_text() {
    let mut t = hf("metaspace.json");
    let s = t.token_to_id("<s>").unwrap();
    let ids = t.encode("a<s>b");
    assert!(ids.contains(&s), "tokenizers matches added tokens in the text");
    t.set_encode_special_tokens(true);
    assert!(!t.encode("a<s>b").contains(&s));
}

/// An edit of a JSON document.
type JsonEdit<'a> = &'a dyn Fn(&mut serde_json::Value);

/// A fixture `tokenizer.json`'s text, and a function giving its text after an edit.
fn editable(name: &str) -> (String, impl Fn(JsonEdit<'_>) -> String) {
    let text = std::fs::read_to_string(fixtures().join("hf").join(name)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let edit = move |f: JsonEdit<'_>| {
        let mut d = doc.clone();
        f(&mut d);
        d.to_string()
    };
    (text, edit)
}

#[test]
fn malformed_files_are_typed_errors() {
    let (text, edit) = editable("bytelevel.json");
    for bad in [
        String::new(),
        "[]".to_string(),
        "{}".to_string(),
        text[..text.len() / 2].to_string(),
        edit(&|d| d["model"]["type"] = "WordPiece".into()),
        edit(&|d| d["pre_tokenizer"]["type"] = "BertPreTokenizer".into()),
        edit(&|d| d["model"]["merges"].as_array_mut().unwrap().insert(0, serde_json::json!(["nope", "x"]))),
        edit(&|d| d["model"]["merges"].as_array_mut().unwrap().insert(0, serde_json::json!(["a"]))),
        edit(&|d| d["model"]["vocab"]["a"] = (-1).into()),
        edit(&|d| d["model"]["dropout"] = 0.1.into()),
        edit(&|d| d["added_tokens"][0]["id"] = "x".into()),
        edit(&|d| d["decoder"] = serde_json::json!({"type": "WordPiece"})),
    ] {
        match HfTokenizer::from_json_str(&bad) {
            Err(TokenizerError::MalformedModel { .. }) => {}
            other => panic!("expected MalformedModel, got {:?}", other.map(|t| t.vocab_size())),
        }
    }
    assert!(matches!(HfTokenizer::load(fixtures().join("hf/absent.json")), Err(TokenizerError::Io { .. })));
}

/// The parts of converted SentencePiece files: each damage is a MalformedModel naming it.
#[test]
fn malformed_unigram_precompiled_and_regex_parts_are_named() {
    let (_, edit) = editable("spm/unigram.json");
    fn precompiled(d: &mut serde_json::Value) -> &mut serde_json::Value {
        let n = d["normalizer"]["normalizers"].as_array_mut().unwrap();
        n.iter_mut().find(|n| n["type"] == "Precompiled").unwrap()
    }
    for (bad, says) in [
        (edit(&|d| d["model"]["vocab"][3] = serde_json::json!(["x"])), "Unigram vocab entry 3"),
        (edit(&|d| d["model"]["vocab"][3] = serde_json::json!([1, 2.0])), "Unigram vocab entry 3"),
        (edit(&|d| d["model"]["unk_id"] = 1_000_000.into()), "unk_id 1000000"),
        (edit(&|d| d["model"]["vocab"] = serde_json::json!([])), "vocab is empty"),
        (edit(&|d| precompiled(d)["precompiled_charsmap"] = "@@@@".into()), "not base64"),
        (edit(&|d| precompiled(d)["precompiled_charsmap"] = "AAAA".into()), "precompiled_charsmap"),
        (edit(&|d| d["normalizer"]["normalizers"][1]["pattern"]["Regex"] = "\\p{Han}+".into()), "Han"),
        (edit(&|d| d["pre_tokenizer"]["pretokenizers"][1]["pattern"]["Regex"] = "(?<=a)b".into()), "(?: )"),
    ] {
        match HfTokenizer::from_json_str(&bad) {
            Err(e @ TokenizerError::MalformedModel { .. }) => {
                assert!(e.to_string().contains(says), "{e} should mention {says:?}")
            }
            other => panic!("expected MalformedModel ({says}), got {:?}", other.map(|t| t.vocab_size())),
        }
    }
    let t = hf("bytelevel.json");
    assert!(matches!(t.decode(&[u32::MAX - 1], false), Err(TokenizerError::IdOutOfRange { .. })));
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn ours() -> &'static (Tokenizer, HfTokenizer) {
        static T: std::sync::OnceLock<(Tokenizer, HfTokenizer)> = std::sync::OnceLock::new();
        T.get_or_init(|| {
            let m = json::load(fixtures().join("hf/ours.json")).unwrap();
            let h = HfTokenizer::from_bpe_model(&m).unwrap();
            (Tokenizer::new(m), h)
        })
    }

    /// Every fixture `tokenizer.json`, loaded once.
    fn all_fixtures() -> &'static [HfTokenizer] {
        static T: std::sync::OnceLock<Vec<HfTokenizer>> = std::sync::OnceLock::new();
        T.get_or_init(|| {
            [
                "bytelevel.json",
                "metaspace.json",
                "llama.json",
                "spm/unigram.json",
                "spm/xlmr.json",
                "spm/bpe.json",
            ]
            .map(hf)
            .into()
        })
    }

    fn bytes_of(name: &str) -> Vec<u8> {
        std::fs::read(fixtures().join("hf").join(name)).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Our tokenizer and its `tokenizer.json` form agree on any text.
        #[test]
        fn export_agrees_on_any_text(text in "\\PC{0,60}|[ a-z0-9▁\\n\\t]{0,40}") {
            let (ours, h) = ours();
            prop_assert_eq!(ours.encode(&text), h.encode(&text));
        }

        /// Decoding what a fixture encodes never fails, for any text (combining marks after
        /// any character included, for the grapheme clusters of the Precompiled normaliser).
        #[test]
        fn encode_decode_any_text(text in "(\\PC[\u{300}-\u{36f}\u{3099}\u{200d}]{0,3}){0,30}") {
            for t in all_fixtures() {
                let ids = t.encode(&text);
                prop_assert!(t.decode(&ids, false).is_ok());
            }
        }

        /// Corrupted or cut `tokenizer.json` bytes give Ok or a typed error, never a panic.
        #[test]
        fn corrupted_json_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            unigram in any::<bool>(),
        ) {
            let mut bytes = bytes_of(if unigram { "spm/unigram.json" } else { "metaspace.json" });
            let len = bytes.len();
            for (pos, val) in flips {
                bytes[pos % len] = val;
            }
            let cut = cut % (len + 1);
            if let Ok(text) = std::str::from_utf8(&bytes[..cut]) {
                if let Ok(t) = HfTokenizer::from_json_str(text) {
                    let _ = t.decode(&t.encode("Hello, world 123 Привет 你好"), false);
                }
            }
        }

        /// Random text given as `tokenizer.json` or GPT-2 files never panics.
        #[test]
        fn random_text_never_panics(a in "\\PC{0,200}", b in "\\PC{0,200}") {
            let _ = HfTokenizer::from_json_str(&a);
            let _ = HfTokenizer::from_gpt2_strs(&a, &b);
            let _ = HfTokenizer::from_gpt2_strs("{\"a\":0,\"b\":1,\"ab\":2}", &b);
        }
    }
}
