//! `tokenizer train`.

// The argument docs are the command line's help text, where `<lang>`, `<s>` ... are literal.
#![allow(rustdoc::invalid_html_tags)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::corpus::{read_corpus_file_with, CorpusFile, InvalidUtf8};
use crate::train::train_owned;
use crate::{json, LanguageCorpus, NormalizerKind, TrainConfig};
use clap::Args;
use rayon::prelude::*;

use super::{CliError, CliResult};

/// Arguments of `tokenizer train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder holding one <lang>.jsonl file per language ({"text": ...} per line).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Comma-separated language codes (default: every <lang>.jsonl in the corpus folder).
    #[arg(long, value_delimiter = ',')]
    pub langs: Vec<String>,
    /// Total vocabulary size (specials + 256 byte tokens + alphabet + merges).
    #[arg(long, default_value_t = 32_000)]
    pub vocab_size: usize,
    /// Language-balancing exponent: each language's share is proportional to size^alpha.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Fraction of the character mass whose characters get their own token.
    #[arg(long, default_value_t = 0.9995)]
    pub coverage: f64,
    /// Read at most this many lines of each language file.
    #[arg(long)]
    pub max_lines: Option<usize>,
    /// Longest piece (in characters) a merge may create.
    #[arg(long, default_value_t = 16)]
    pub max_piece_chars: usize,
    /// Unicode normal form: none, nfc or nfkc.
    #[arg(long, default_value = "nfkc", value_parser = parse_normalizer)]
    pub normalizer: NormalizerKind,
    /// Extra special tokens (comma-separated), given ids after <unk>, <s>, </s>, <pad>.
    #[arg(long, value_delimiter = ',')]
    pub specials: Vec<String>,
    /// Skip corpus lines that are not valid UTF-8 (each is reported with its file and line)
    /// instead of stopping at the first one.
    #[arg(long)]
    pub skip_invalid_utf8: bool,
    /// Where to write the model (JSON; written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_normalizer(s: &str) -> Result<NormalizerKind, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok(NormalizerKind::None),
        "nfc" => Ok(NormalizerKind::Nfc),
        "nfkc" => Ok(NormalizerKind::Nfkc),
        _ => Err(format!("unknown normalizer {s:?} (expected none, nfc or nfkc)")),
    }
}

/// The language codes of every `<lang>.jsonl` in `dir`, sorted.
pub fn languages_in(dir: &Path, ext: &str) -> CliResult<Vec<String>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| CliError(format!("cannot read folder {}: {e}", dir.display())))?;
    let mut langs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CliError(format!("cannot read folder {}: {e}", dir.display())))?.path();
        if path.is_file() && path.extension().and_then(|e| e.to_str()) == Some(ext) {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                langs.push(stem.to_string());
            }
        }
    }
    langs.sort();
    Ok(langs)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// Run `tokenizer train`.
pub fn run(args: TrainArgs) -> CliResult<()> {
    let start = Instant::now();
    if !args.corpus.is_dir() {
        return Err(CliError(format!("corpus folder {} does not exist", args.corpus.display())));
    }
    let out_dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        return Err(CliError(format!(
            "cannot write {}: folder {} does not exist",
            args.out.display(),
            out_dir.display()
        )));
    }
    if args.out.is_dir() {
        return Err(CliError(format!(
            "cannot write {}: it is a folder (give a file name)",
            args.out.display()
        )));
    }
    let langs = if args.langs.is_empty() { languages_in(&args.corpus, "jsonl")? } else { args.langs.clone() };
    if langs.is_empty() {
        return Err(CliError(format!("no <lang>.jsonl files in {}", args.corpus.display())));
    }

    eprintln!("reading {} languages from {}", langs.len(), args.corpus.display());
    let policy = if args.skip_invalid_utf8 { InvalidUtf8::Skip } else { InvalidUtf8::Fail };
    // The files are parsed in parallel; the reports and the first error follow language order.
    let files: Vec<CliResult<(PathBuf, CorpusFile)>> = langs
        .par_iter()
        .map(|lang| {
            let path = args.corpus.join(format!("{lang}.jsonl"));
            if !path.is_file() {
                return Err(CliError(format!("corpus file {} does not exist", path.display())));
            }
            let file = read_corpus_file_with(&path, args.max_lines, policy)?;
            Ok((path, file))
        })
        .collect();
    let mut corpora = Vec::with_capacity(langs.len());
    let mut total_bytes = 0;
    for (lang, file) in langs.iter().zip(files) {
        let (path, CorpusFile { texts, skipped_lines }) = file?;
        for line in &skipped_lines {
            eprintln!("  skipped invalid UTF-8 in {} at line {line}", path.display());
        }
        let bytes: usize = texts.iter().map(String::len).sum();
        total_bytes += bytes;
        eprintln!("  read {lang}: {} texts, {:.1} MB", texts.len(), mb(bytes));
        corpora.push(LanguageCorpus::new(lang.clone(), texts));
    }
    eprintln!("read {:.1} MB in {:.1}s", mb(total_bytes), start.elapsed().as_secs_f64());

    let config = TrainConfig {
        vocab_size: args.vocab_size,
        normalizer: args.normalizer,
        add_dummy_prefix: true,
        user_specials: args.specials.clone(),
        alpha: args.alpha,
        character_coverage: args.coverage,
        max_piece_chars: args.max_piece_chars,
    };
    eprintln!(
        "training: counting words, balancing languages (alpha {}), choosing the alphabet (coverage {}), \
         learning merges up to vocab {}",
        config.alpha, config.character_coverage, config.vocab_size
    );
    let train_start = Instant::now();
    // The library trains in one call; a heartbeat shows it is alive.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_secs(10)) {
                eprintln!("  training... {:.0}s elapsed", train_start.elapsed().as_secs_f64());
            }
        });
        let r = train_owned(corpora, &config);
        let _ = done_tx.send(());
        r
    });
    let (model, stats) = result?;
    let train_secs = train_start.elapsed().as_secs_f64();
    eprintln!("merges done: {} merges in {train_secs:.1}s", stats.merges);

    json::save(&model, &args.out)?;
    eprintln!("saved {}", args.out.display());

    eprintln!("summary:");
    eprintln!("  {:<6} {:>12} {:>9} {:>8}", "lang", "words", "weight", "share");
    for l in &stats.languages {
        eprintln!("  {:<6} {:>12} {:>9.3} {:>7.1}%", l.lang, l.words, l.weight, 100.0 * l.share);
    }
    eprintln!("  vocab size:     {}", stats.vocab_size);
    eprintln!("  alphabet size:  {} (of {} distinct characters)", stats.alphabet_size, stats.distinct_chars);
    eprintln!("  merges:         {}", stats.merges);
    eprintln!(
        "  training time:  {train_secs:.1}s (counting {:.1}s, preparing {:.1}s, merges {:.1}s; total {:.1}s)",
        stats.count_secs,
        stats.prepare_secs,
        stats.merge_secs,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
