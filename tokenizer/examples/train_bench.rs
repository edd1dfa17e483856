//! Time BPE training on the shared corpus.
//!
//! `cargo run --release -p polylm-tokenizer --example train_bench -- VOCAB MAX_LINES LANG,LANG,...`
//! (defaults: 4000, 2000, en,de,zh,ru). Prints timings, corpus size and bytes/token per language.

use std::time::Instant;

use polylm_tokenizer::corpus::{read_corpus_file, read_language_dir};
use polylm_tokenizer::train::{train_with_stats, TrainConfig};
use polylm_tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let vocab: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(4000);
    let lines: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let langs_arg = args.get(2).cloned().unwrap_or_else(|| "en,de,zh,ru".to_string());
    let langs: Vec<&str> = langs_arg.split(',').collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");
    let corpora = read_language_dir(format!("{root}/corpus"), &langs, Some(lines))?;
    let mb: f64 = corpora.iter().flat_map(|c| &c.texts).map(|t| t.len()).sum::<usize>() as f64 / 1e6;
    let t = Instant::now();
    let (model, stats) =
        train_with_stats(&corpora, &TrainConfig { vocab_size: vocab, ..Default::default() })?;
    println!(
        "trained vocab {} ({} merges, alphabet {}/{}) on {mb:.1} MB in {:.2} s",
        model.vocab_size(),
        stats.merges,
        stats.alphabet_size,
        stats.distinct_chars,
        t.elapsed().as_secs_f64()
    );
    let tok = Tokenizer::new(model);
    for lang in &langs {
        let valid = read_corpus_file(format!("{root}/valid/{lang}.jsonl"), None)?;
        let t = Instant::now();
        let ids = tok.encode_batch(&valid);
        let secs = t.elapsed().as_secs_f64();
        let bytes: usize = valid.iter().map(|s| s.len()).sum();
        let tokens: usize = ids.iter().map(|v| v.len()).sum();
        println!(
            "{lang}: {:.2} bytes/token, encode {:.1} MB/s",
            bytes as f64 / tokens as f64,
            bytes as f64 / 1e6 / secs
        );
    }
    Ok(())
}
