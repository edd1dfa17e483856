//! Helpers shared by the integration tests: the shared corpus and a small trained tokenizer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use polylm_tokenizer::corpus::{read_corpus_file, read_language_dir};
use polylm_tokenizer::{train, LanguageCorpus, TrainConfig};
use serde::Deserialize;

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

/// FNV-1a 64 of ids as the fixture scripts write it (each id 4 LE bytes, then 0xFFFFFFFF),
/// continuing from `h`.
pub fn fnv_ids(mut h: u64, ids: &[u32]) -> u64 {
    for &id in ids.iter().chain(std::iter::once(&u32::MAX)) {
        for b in id.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The texts of a fixture set (`valid-<lang>` or `udhr-<lang>`), read as the fixture scripts
/// read them; `None` when the shared data is absent.
pub fn set_texts(name: &str) -> Option<Vec<String>> {
    let data = Path::new(DATA);
    if let Some(lang) = name.strip_prefix("valid-") {
        read_corpus_file(data.join("valid").join(format!("{lang}.jsonl")), None).ok()
    } else if let Some(lang) = name.strip_prefix("udhr-") {
        let text = std::fs::read_to_string(data.join("udhr").join(format!("{lang}.txt"))).ok()?;
        Some(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
    } else {
        None
    }
}

/// The committed fixtures folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What a fixture script recorded for one text set: counts and the FNV-1a hash of all ids.
#[derive(Deserialize)]
pub struct SetRef {
    /// Number of texts.
    pub texts: usize,
    /// Number of ids over all texts.
    pub ids: usize,
    /// [`fnv_ids`] over all texts' ids, as hex.
    pub fnv64: String,
}
