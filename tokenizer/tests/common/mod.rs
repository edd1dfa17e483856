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
        synthetic_corpora()
    }
}

/// Seeded pseudo-text in three scripts, varied enough to learn a 1000-entry vocabulary: used
/// when the shared corpus is absent.
fn synthetic_corpora() -> Vec<LanguageCorpus> {
    let scripts: [(&str, &[&str], &[&str]); 3] = [
        (
            "en",
            &["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w"],
            &["a", "e", "i", "o", "u"],
        ),
        (
            "ru",
            &["б", "в", "г", "д", "ж", "з", "к", "л", "м", "н", "п", "р", "с", "т"],
            &["а", "е", "и", "о", "у", "ы"],
        ),
        ("zh", &["我", "们", "天", "气", "好", "朋", "友", "今", "很", "是"], &["的", "了", "在"]),
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n
    };
    scripts
        .iter()
        .map(|(lang, consonants, vowels)| {
            let texts = (0..400)
                .map(|_| {
                    let words: Vec<String> = (0..5 + next(8))
                        .map(|_| {
                            (0..1 + next(4))
                                .map(|_| {
                                    format!(
                                        "{}{}",
                                        consonants[next(consonants.len())],
                                        vowels[next(vowels.len())]
                                    )
                                })
                                .collect()
                        })
                        .collect();
                    format!("{} {}.", words.join(" "), next(100))
                })
                .collect();
            LanguageCorpus::new(*lang, texts)
        })
        .collect()
}

/// Train a small tokenizer (vocab 1000 by default settings otherwise).
pub fn train_small(config: TrainConfig) -> polylm_tokenizer::BpeModel {
    train(&small_corpora(), &config).expect("training succeeds")
}
