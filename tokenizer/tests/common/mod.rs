//! Helpers shared by the integration tests: the shared corpus and a small trained tokenizer.
#![allow(dead_code)]

use std::path::PathBuf;

use polylm_tokenizer::corpus::read_language_dir;
use polylm_tokenizer::{train, LanguageCorpus, TrainConfig};

/// `/work/shared/data` seen from the crate.
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");

/// The corpus folder, if present.
pub fn corpus_dir() -> Option<PathBuf> {
    let p = PathBuf::from(DATA).join("corpus");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipping real-data part: {} is absent", p.display());
        None
    }
}

/// A few hundred KB of mixed-script text: real corpus lines when available, else a built-in mix.
pub fn small_corpora() -> Vec<LanguageCorpus> {
    if let Some(dir) = corpus_dir() {
        let langs = ["en", "de", "ru", "ar", "zh", "ja", "th", "ko"];
        let mut corpora = read_language_dir(dir, &langs, Some(20)).expect("corpus readable");
        for c in &mut corpora {
            // Cap each language at about 40 KB of text to keep tests fast.
            let mut total = 0;
            c.texts.retain(|t| {
                total += t.len();
                total <= 40_000 || total == t.len()
            });
        }
        corpora
    } else {
        vec![
            LanguageCorpus::new(
                "en",
                vec!["The quick brown fox jumps over the lazy dog in 2024.".into(); 50],
            ),
            LanguageCorpus::new(
                "ru",
                vec![
                    "Съешь же ещё этих мягких французских булок.".into();
                    30
                ],
            ),
            LanguageCorpus::new("zh", vec!["我们都是好朋友，今天天气很好。".into(); 30]),
        ]
    }
}

/// Train a small tokenizer (vocab 1000 by default settings otherwise).
pub fn train_small(config: TrainConfig) -> polylm_tokenizer::BpeModel {
    train(&small_corpora(), &config).expect("training succeeds")
}
