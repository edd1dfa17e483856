//! `tokenizer stats`: compression per language, for one or several models side by side.
//!
//! - `B/tok`: UTF-8 bytes of the validation texts (`<valid>/<lang>.jsonl`) per token.
//! - `tok/art`: tokens per UDHR article (`<udhr>/<lang>.txt`). Article headings are detected as
//!   short lines that start a blank-line-separated paragraph and share their first word (or, for
//!   one-word headings, their first character) with at least 9 other such lines ("Article 1",
//!   "Artikel 2", "المادة 3", "제 4 조", "第5条", "סעיף א." ...); an article
//!   runs from its heading to the next heading. The preamble is not counted. Where no headings
//!   are found, tokens per 1000 bytes of UDHR text are shown instead, marked with `*`.

// The argument docs are the command line's help text, where `<lang>`, `<s>` ... are literal.
#![allow(rustdoc::invalid_html_tags)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::corpus::read_corpus_file;
use clap::Args;

use super::io::{load_any, read_utf8_file, AnyModel, Stdout};
use super::train::languages_in;
use super::{CliError, CliResult};

/// Arguments of `tokenizer stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Model file(s) of any format (ours, SentencePiece .model, tokenizer.json); repeat the flag to compare several models side by side.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Folder of UDHR texts, one <lang>.txt per language.
    #[arg(long)]
    pub udhr: Option<PathBuf>,
    /// Folder of validation texts, one <lang>.jsonl per language.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Only these languages (comma-separated; default: every language found in the folders).
    #[arg(long, value_delimiter = ',')]
    pub langs: Vec<String>,
}

/// Spans of UDHR articles: `(first line, end line)` indices into the lines, or `None` when no
/// article headings are detected.
pub fn article_spans(lines: &[&str]) -> Option<Vec<(usize, usize)>> {
    let blank = |i: usize| lines[i].trim().is_empty();
    let candidates: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let l = lines[i].trim();
            !l.is_empty()
                && (i == 0 || blank(i - 1))
                && i + 1 < lines.len()
                && !blank(i + 1)
                && l.chars().count() <= 24
                && l.split_whitespace().count() <= 4
        })
        .collect();
    // Group by the first word ("Article", "Artikel", "المادة", "제") or, for one-word headings
    // ("第1条"), by the first character.
    let key = |i: usize| -> String {
        let l = lines[i].trim();
        let mut words = l.split_whitespace();
        match (words.next(), words.next()) {
            (Some(w), Some(_)) => w.to_string(),
            _ => l.chars().next().map(String::from).unwrap_or_default(),
        }
    };
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for &i in &candidates {
        groups.entry(key(i)).or_default().push(i);
    }
    let best = groups.into_values().max_by_key(|g| (g.len(), std::cmp::Reverse(g[0])))?;
    if best.len() < 10 {
        return None;
    }
    // Also take candidates that end like (nearly) all the group's headings and are as long,
    // which catches typos in the heading word ("弟23条" among "第23条").
    let last = |i: usize| lines[i].trim().chars().last();
    let len = |i: usize| lines[i].trim().chars().count();
    let mut last_counts: HashMap<Option<char>, usize> = HashMap::new();
    for &i in &best {
        *last_counts.entry(last(i)).or_default() += 1;
    }
    let (common_last, n_last) = last_counts.into_iter().max_by_key(|&(c, n)| (n, c)).unwrap_or((None, 0));
    let (lo, hi) = (best.iter().map(|&i| len(i)).min()?, best.iter().map(|&i| len(i)).max()?);
    let heads: Vec<usize> = if n_last * 10 >= best.len() * 9 {
        candidates
            .iter()
            .copied()
            .filter(|&i| best.contains(&i) || (last(i) == common_last && (lo..=hi).contains(&len(i))))
            .collect()
    } else {
        best
    };
    let spans = heads
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            // An article ends at the next heading candidate (article or not) or at the end.
            let end = candidates.iter().copied().find(|&c| c > start).unwrap_or(lines.len());
            let end = if k + 1 < heads.len() { end.min(heads[k + 1]) } else { end };
            (start, end)
        })
        .collect();
    Some(spans)
}

/// Compression of one model on one language's validation texts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LangCompression {
    /// The language code (the file stem of `<lang>.jsonl`).
    pub lang: String,
    /// Number of texts (documents) read.
    pub docs: usize,
    /// Total UTF-8 bytes of the texts.
    pub bytes: usize,
    /// Total tokens of the texts, each encoded on its own (no `<s>` / `</s>`).
    pub tokens: usize,
    /// `bytes / tokens` (higher is better); 0 when there are no tokens.
    pub bytes_per_token: f64,
}

/// Bytes per token of `model` on the validation texts `<valid_dir>/<lang>.jsonl`, per language:
/// `langs` (each must have its file) or, when `None`, every `<lang>.jsonl` in the folder, in
/// sorted order. Errors (missing folder or file, bad JSON, invalid UTF-8) name the file.
pub fn compression(
    model: &AnyModel,
    valid_dir: &Path,
    langs: Option<&[String]>,
) -> CliResult<Vec<LangCompression>> {
    if !valid_dir.is_dir() {
        return Err(CliError(format!("folder {} does not exist", valid_dir.display())));
    }
    let langs: Vec<String> = match langs {
        Some(l) => l.to_vec(),
        None => languages_in(valid_dir, "jsonl")?,
    };
    let mut out = Vec::with_capacity(langs.len());
    for lang in langs {
        let path = valid_dir.join(format!("{lang}.jsonl"));
        if !path.is_file() {
            return Err(CliError(format!("validation file {} does not exist", path.display())));
        }
        let texts = read_corpus_file(&path, None)?;
        let bytes: usize = texts.iter().map(String::len).sum();
        let tokens = count_tokens(model, &texts);
        let bytes_per_token = ratio(bytes, tokens).unwrap_or(0.0);
        out.push(LangCompression { lang, docs: texts.len(), bytes, tokens, bytes_per_token });
    }
    Ok(out)
}

/// Numbers for one language and one model.
#[derive(Default, Clone, Copy)]
struct Cell {
    valid_bytes: usize,
    valid_tokens: usize,
    udhr_bytes: usize,
    udhr_tokens: usize,
    articles: usize,
    article_tokens: usize,
}

/// UDHR lines and, when detected, the article spans.
type Udhr = (Vec<String>, Option<Vec<(usize, usize)>>);

struct LangData {
    lang: String,
    valid: Option<Vec<String>>,
    udhr: Option<Udhr>,
}

fn count_tokens(tok: &AnyModel, texts: &[String]) -> usize {
    tok.encode_batch(texts).iter().map(Vec::len).sum()
}

fn measure(tok: &AnyModel, d: &LangData) -> Cell {
    let mut cell = Cell::default();
    if let Some(texts) = &d.valid {
        cell.valid_bytes = texts.iter().map(String::len).sum();
        cell.valid_tokens = count_tokens(tok, texts);
    }
    if let Some((lines, spans)) = &d.udhr {
        let per_line: Vec<usize> = tok.encode_batch(lines).iter().map(Vec::len).collect();
        cell.udhr_bytes = lines.iter().map(String::len).sum();
        cell.udhr_tokens = per_line.iter().sum();
        if let Some(spans) = spans {
            cell.articles = spans.len();
            cell.article_tokens = spans.iter().map(|&(a, b)| per_line[a..b].iter().sum::<usize>()).sum();
        }
    }
    cell
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn fmt(v: Option<f64>, prec: usize, mark: &str) -> String {
    v.map(|v| format!("{v:.prec$}{mark}")).unwrap_or_else(|| "-".to_string())
}

/// The two cells of one model for one row.
fn cells(c: &Cell, has_udhr: bool) -> (String, String) {
    let bpt = fmt(ratio(c.valid_bytes, c.valid_tokens), 2, "");
    let tpa = if c.articles > 0 {
        fmt(ratio(c.article_tokens, c.articles), 1, "")
    } else if has_udhr && c.udhr_bytes > 0 {
        fmt(ratio(c.udhr_tokens * 1000, c.udhr_bytes), 1, "*")
    } else {
        "-".to_string()
    };
    (bpt, tpa)
}

fn model_name(path: &Path, all: &[PathBuf]) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dup = all.iter().filter(|p| p.file_name() == path.file_name()).count() > 1;
    if dup || name.is_empty() {
        path.display().to_string()
    } else {
        name
    }
}

/// Run `tokenizer stats`.
pub fn run(args: StatsArgs) -> CliResult<()> {
    if args.udhr.is_none() && args.valid.is_none() {
        return Err(CliError("give --udhr and/or --valid".to_string()));
    }
    for dir in args.udhr.iter().chain(&args.valid) {
        if !dir.is_dir() {
            return Err(CliError(format!("folder {} does not exist", dir.display())));
        }
    }
    let models = args.model.iter().map(|p| load_any(p)).collect::<CliResult<Vec<_>>>()?;

    let langs: Vec<String> = if args.langs.is_empty() {
        let mut set = BTreeSet::new();
        if let Some(d) = &args.valid {
            set.extend(languages_in(d, "jsonl")?);
        }
        if let Some(d) = &args.udhr {
            set.extend(languages_in(d, "txt")?);
        }
        set.into_iter().collect()
    } else {
        args.langs.clone()
    };
    if langs.is_empty() {
        return Err(CliError("no <lang>.jsonl / <lang>.txt files found".to_string()));
    }

    let mut data = Vec::new();
    for lang in &langs {
        let valid = match &args.valid {
            Some(d) => {
                let p = d.join(format!("{lang}.jsonl"));
                if p.is_file() {
                    Some(read_corpus_file(&p, None)?)
                } else {
                    None
                }
            }
            None => None,
        };
        let udhr = match &args.udhr {
            Some(d) => {
                let p = d.join(format!("{lang}.txt"));
                if p.is_file() {
                    let text = read_utf8_file(&p)?;
                    let lines: Vec<&str> = text.lines().collect();
                    let spans = article_spans(&lines);
                    Some((lines.into_iter().map(str::to_string).collect::<Vec<_>>(), spans))
                } else {
                    None
                }
            }
            None => None,
        };
        if valid.is_none() && udhr.is_none() {
            return Err(CliError(format!("language {lang}: no validation or UDHR file")));
        }
        data.push(LangData { lang: lang.clone(), valid, udhr });
    }

    // results[model][lang]
    let results: Vec<Vec<Cell>> =
        models.iter().map(|m| data.iter().map(|d| measure(m, d)).collect()).collect();

    let names: Vec<String> = args.model.iter().map(|p| model_name(p, &args.model)).collect();
    let has_udhr = args.udhr.is_some();
    let any_fallback = data.iter().any(|d| matches!(&d.udhr, Some((_, None))));

    let mut out = Stdout::new();
    out.line("B/tok = UTF-8 bytes per token on the validation split (higher is better);")?;
    out.line(
        "tok/art = tokens per UDHR article (articles found from their headings; preamble excluded; lower is better)",
    )?;
    if any_fallback {
        out.line("* = article headings not detected: tokens per 1000 bytes of UDHR text instead")?;
    }
    for (name, tok) in names.iter().zip(&models) {
        out.line(&format!("model {name}: vocab {}", tok.vocab_size()))?;
    }
    out.line("")?;

    // Header: lang | arts | per model: B/tok tok/art
    const W: usize = 9;
    let mut h1 = format!("{:<6} {:>5}", "", "");
    let mut h2 = format!("{:<6} {:>5}", "lang", "arts");
    for name in &names {
        let width = 2 * W + 1;
        let mut n = name.clone();
        if n.chars().count() > width {
            n = n.chars().rev().take(width).collect::<Vec<_>>().into_iter().rev().collect();
        }
        h1.push_str(&format!(" | {n:^width$}"));
        h2.push_str(&format!(" | {:>W$} {:>W$}", "B/tok", "tok/art"));
    }
    if names.len() > 1 {
        out.line(&h1)?;
    }
    out.line(&h2)?;
    out.line(&"-".repeat(h2.chars().count()))?;

    for (li, d) in data.iter().enumerate() {
        let arts = match &d.udhr {
            Some((_, Some(s))) => s.len().to_string(),
            _ => "-".to_string(),
        };
        let mut row = format!("{:<6} {:>5}", d.lang, arts);
        for per_model in &results {
            let (a, b) = cells(&per_model[li], has_udhr);
            row.push_str(&format!(" | {a:>W$} {b:>W$}"));
        }
        out.line(&row)?;
    }
    out.line(&"-".repeat(h2.chars().count()))?;

    // Totals: pooled ratios; means: unweighted over languages.
    let total_arts: usize = data
        .iter()
        .map(|d| match &d.udhr {
            Some((_, Some(s))) => s.len(),
            _ => 0,
        })
        .sum();
    let mut total = format!("{:<6} {:>5}", "total", total_arts);
    let mut mean = format!("{:<6} {:>5}", "mean", "");
    for per_model in &results {
        let sum = per_model.iter().fold(Cell::default(), |mut acc, c| {
            acc.valid_bytes += c.valid_bytes;
            acc.valid_tokens += c.valid_tokens;
            acc.articles += c.articles;
            acc.article_tokens += c.article_tokens;
            acc
        });
        let a = fmt(ratio(sum.valid_bytes, sum.valid_tokens), 2, "");
        let b = fmt(ratio(sum.article_tokens, sum.articles), 1, "");
        total.push_str(&format!(" | {a:>W$} {b:>W$}"));
        let bpts: Vec<f64> = per_model.iter().filter_map(|c| ratio(c.valid_bytes, c.valid_tokens)).collect();
        let tpas: Vec<f64> = per_model.iter().filter_map(|c| ratio(c.article_tokens, c.articles)).collect();
        let avg = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let a = fmt(avg(&bpts), 2, "");
        let b = fmt(avg(&tpas), 1, "");
        mean.push_str(&format!(" | {a:>W$} {b:>W$}"));
    }
    out.line(&total)?;
    out.line(&mean)?;
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::{article_spans, compression, AnyModel};
    use crate::{train, LanguageCorpus, Tokenizer, TrainConfig};

    #[test]
    fn compression_per_language() {
        let dir = std::env::temp_dir().join(format!("polylm-tok-compression-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let en: Vec<String> = (0..30).map(|i| format!("the quick brown fox number {i} jumps")).collect();
        let de: Vec<String> =
            (0..20).map(|i| format!("der schnelle braune Fuchs Nummer {i} springt")).collect();
        for (lang, texts) in [("en", &en), ("de", &de)] {
            let lines: String =
                texts.iter().map(|t| format!("{}\n", serde_json::json!({ "text": t }))).collect();
            std::fs::write(dir.join(format!("{lang}.jsonl")), lines).unwrap();
        }
        let config = TrainConfig { vocab_size: 350, ..TrainConfig::default() };
        let tok = Tokenizer::new(train(&[LanguageCorpus::new("en", en.clone())], &config).unwrap());
        let direct = |texts: &[String]| -> (usize, usize) {
            (texts.iter().map(String::len).sum(), texts.iter().map(|t| tok.encode(t).len()).sum())
        };
        let model = AnyModel::Ours(tok.clone());
        let all = compression(&model, &dir, None).unwrap();
        assert_eq!(all.iter().map(|c| c.lang.as_str()).collect::<Vec<_>>(), ["de", "en"]);
        for (c, texts) in all.iter().zip([&de, &en]) {
            let (bytes, tokens) = direct(texts);
            assert_eq!((c.docs, c.bytes, c.tokens), (texts.len(), bytes, tokens));
            assert!((c.bytes_per_token - bytes as f64 / tokens as f64).abs() < 1e-12);
        }
        // Trained on English: English compresses better.
        assert!(all[1].bytes_per_token > all[0].bytes_per_token);
        let only = compression(&model, &dir, Some(&["en".to_string()])).unwrap();
        assert_eq!(only, vec![all[1].clone()]);
        let err = compression(&model, &dir, Some(&["fr".to_string()])).unwrap_err();
        assert!(err.0.contains("fr.jsonl"), "{err}");
        assert!(compression(&model, &dir.join("nope"), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_articles() {
        let mut text = String::from("Title\n\nPreamble\nWhereas x\nWhereas y\n\n");
        for i in 1..=12 {
            text.push_str(&format!("Article {i}\nBody {i}.\nMore.\n\n"));
        }
        let lines: Vec<&str> = text.lines().collect();
        let spans = article_spans(&lines).unwrap();
        assert_eq!(spans.len(), 12);
        assert_eq!(lines[spans[0].0], "Article 1");
        assert_eq!(spans[0].1 - spans[0].0, 4);
        assert!(article_spans(&["just", "some", "text"]).is_none());
    }
}
