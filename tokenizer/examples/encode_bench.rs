//! Encode throughput of our tokenizers on the validation split, for `benches/tokenizer_vs_hf.py`.
//!
//! ```text
//! cargo run --release -p polylm-tokenizer --example encode_bench -- MODEL VALID_DIR THREADS [REPEAT]
//! ```
//!
//! `MODEL` is our JSON model, a Hugging Face `tokenizer.json`, or a folder holding GPT-2's
//! `encoder.json` + `vocab.bpe`. Every `<lang>.jsonl` of `VALID_DIR` is encoded with
//! `encode_batch` on a pool of `THREADS` threads, `REPEAT` times (default 3; the word cache is
//! cleared before each run by building a fresh tokenizer). Prints one JSON object: total MB, the
//! best time, MB/s, and per language the bytes and tokens.

use std::path::Path;
use std::time::Instant;

use polylm_tokenizer::corpus::read_corpus_file;
use polylm_tokenizer::{json, HfTokenizer, Tokenizer};

enum Model {
    Ours(Tokenizer),
    Hf(HfTokenizer),
}

fn load(path: &Path) -> Result<Model, Box<dyn std::error::Error>> {
    if path.is_dir() {
        return Ok(Model::Hf(HfTokenizer::from_gpt2_files(
            path.join("encoder.json"),
            path.join("vocab.bpe"),
        )?));
    }
    let text = std::fs::read_to_string(path)?;
    if text.contains("\"polylm-bpe\"") {
        Ok(Model::Ours(Tokenizer::new(json::from_json_str(&text)?)))
    } else {
        Ok(Model::Hf(HfTokenizer::from_json_str(&text)?))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: encode_bench MODEL VALID_DIR THREADS [REPEAT]".into());
    }
    let model_path = Path::new(&args[0]);
    let threads: usize = args[2].parse()?;
    let repeat: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let mut langs: Vec<(String, Vec<String>)> = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&args[1])?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.extension().and_then(|e| e.to_str()) == Some("jsonl") {
            let lang = p.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_string();
            langs.push((lang, read_corpus_file(&p, None)?));
        }
    }
    let all: Vec<&String> = langs.iter().flat_map(|(_, t)| t).collect();
    let bytes: usize = all.iter().map(|t| t.len()).sum();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let mut best = f64::INFINITY;
    let mut per_lang = Vec::new();
    for _ in 0..repeat {
        let model = load(model_path)?;
        let t = Instant::now();
        let counts: Vec<usize> = pool.install(|| {
            let texts: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
            let ids = match &model {
                Model::Ours(m) => m.encode_batch(&texts),
                Model::Hf(h) => h.encode_batch(&texts),
            };
            ids.iter().map(Vec::len).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        per_lang.clear();
        let mut k = 0;
        for (lang, texts) in &langs {
            let b: usize = texts.iter().map(|t| t.len()).sum();
            let n: usize = counts[k..k + texts.len()].iter().sum();
            k += texts.len();
            per_lang.push(format!("\"{lang}\": [{b}, {n}]"));
        }
    }
    println!(
        "{{\"mb\": {:.3}, \"secs\": {best:.4}, \"mb_per_s\": {:.2}, \"threads\": {threads}, \"langs\": {{{}}}}}",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / best,
        per_lang.join(", ")
    );
    Ok(())
}
