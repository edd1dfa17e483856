//! Real data: train on the shared corpus and check validation round-trips and compression.

mod common;

use std::time::Instant;

use polylm_tokenizer::corpus::{read_corpus_file, read_language_dir};
use polylm_tokenizer::train::{train_with_stats, TrainConfig};
use polylm_tokenizer::Tokenizer;

#[test]
fn train_4000_and_roundtrip_validation() {
    let Some(dir) = common::corpus_dir() else { return };
    let langs = ["en", "de", "ru", "ar"];
    let corpora = read_language_dir(dir, &langs, Some(2000)).unwrap();
    let mb: f64 = corpora.iter().flat_map(|c| &c.texts).map(|t| t.len()).sum::<usize>() as f64 / 1e6;
    let start = Instant::now();
    let (model, stats) =
        train_with_stats(&corpora, &TrainConfig { vocab_size: 4000, ..Default::default() }).unwrap();
    println!("trained vocab 4000 on {mb:.1} MB in {:.2} s: {stats:?}", start.elapsed().as_secs_f64());
    assert_eq!(model.vocab_size(), 4000);
    let tok = Tokenizer::new(model);
    for lang in langs {
        let path = format!("{}/valid/{lang}.jsonl", common::DATA);
        let valid = read_corpus_file(&path, None).unwrap();
        assert!(!valid.is_empty());
        let ids = tok.encode_batch(&valid);
        let (mut bytes, mut tokens) = (0usize, 0usize);
        for (text, ids) in valid.iter().zip(&ids) {
            assert_eq!(
                tok.decode(ids).unwrap(),
                tok.roundtrip_text(text),
                "{lang} line failed to round-trip"
            );
            bytes += text.len();
            tokens += ids.len();
        }
        let rate = bytes as f64 / tokens as f64;
        println!("{lang}: {rate:.2} bytes/token over {} lines", valid.len());
        if lang == "en" {
            assert!(rate > 2.0, "en compression {rate:.2} bytes/token");
        }
    }
}

#[test]
fn udhr_roundtrip_all_languages() {
    let Some(_) = common::corpus_dir() else { return };
    let tok = Tokenizer::new(common::train_small(TrainConfig { vocab_size: 800, ..Default::default() }));
    let dir = format!("{}/udhr", common::DATA);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        for line in read_corpus_file(&path, None).unwrap() {
            assert_eq!(
                tok.decode(&tok.encode(&line)).unwrap(),
                tok.roundtrip_text(&line),
                "{}",
                path.display()
            );
        }
    }
}
