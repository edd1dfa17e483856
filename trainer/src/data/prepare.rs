//! `polylm data prepare`: per-language text or JSONL → token shards and a manifest.
//!
//! Inputs, per language `<lang>`, in a directory:
//! - `<lang>.jsonl`: one JSON object per non-blank line, `"text"` required, `"source"` optional
//!   (default `"unknown"`); other fields are ignored;
//! - `<lang>.txt`: one document per block of lines separated by blank lines (source
//!   `"unknown"`);
//! - `<lang>/`: a folder of such `.jsonl` (or `.json`) and `.txt` parts, read in name order as
//!   one input (a large corpus split into files);
//! - any of these files gzip-compressed, with `.gz` appended (`en.jsonl.gz`), as mC4 and
//!   CC-100 ship.
//!
//! Bilingual pairs (optional): a JSONL file (or a directory of them; `.jsonl.gz` too) with lines
//! `{"src_lang", "tgt_lang", "src", "tgt"}` (and an optional `"source"`, default `"pairs"`); each
//! pair becomes a document `src + "\n" + tgt` in shard `pairs/<src_lang>-<tgt_lang>.bin`.
//!
//! Every input is streamed ([`DocReader`], [`PairReader`]): memory holds one batch of documents
//! at a time, however large the corpus, and a large input reports its progress every 256 MB.
//!
//! Documents with empty text are skipped. Invalid UTF-8, invalid JSON and missing fields stop
//! the run with an error naming the file and the 1-based line. Encoding runs in parallel
//! (rayon, through [`Tokenizer::encode_batch`]). Output: `<out>/train/<lang>.bin`,
//! `<out>/valid/<lang>.bin`, `<out>/pairs/<src>-<tgt>.bin` and, last, `<out>/manifest.json`
//! (any previous manifest is removed first, so an interrupted run never looks complete).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::tokenizer::RunTokenizer;

use super::error::{DataError, Result};
use super::input::{list_inputs, DocReader, PairReader, RawDoc, UNKNOWN_SOURCE};
use super::manifest::{Manifest, ShardInfo, TokenizerInfo, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION};
use super::shard::ShardWriter;

/// What to prepare and where.
#[derive(Clone, Debug, Default)]
pub struct PrepareOptions {
    /// Directory of training inputs `<lang>.jsonl`, `<lang>.txt` or `<lang>/` folders of parts.
    pub train: PathBuf,
    /// Directory of validation inputs, same layout (optional).
    pub valid: Option<PathBuf>,
    /// Bilingual pairs: a JSONL file or a directory of JSONL files (optional).
    pub pairs: Option<PathBuf>,
    /// Output dataset directory (created if needed).
    pub out: PathBuf,
    /// Only these languages (each must have a training file); all when `None`.
    pub langs: Option<Vec<String>>,
    /// At most this many documents per language (and per language pair) and split.
    pub max_docs_per_lang: Option<usize>,
}

/// Documents encoded per parallel batch (at most).
const ENCODE_CHUNK: usize = 1024;

/// Text bytes encoded per parallel batch (at most, past one document).
const ENCODE_CHUNK_BYTES: usize = 32 << 20;

/// Source names and their ids, in order of first appearance.
#[derive(Default)]
struct Sources {
    names: Vec<String>,
    ids: HashMap<String, u16>,
}

impl Sources {
    fn id(&mut self, name: &str) -> Result<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = u16::try_from(self.names.len())
            .map_err(|_| DataError::BadInput(format!("more than 65,536 distinct sources (at {name:?})")))?;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }
}

/// Where [`encode_shards`] takes its documents from: each with the shard it goes to (a language,
/// or a language pair).
trait DocSource {
    /// The next document and its shard name, `None` at the end.
    fn next_doc(&mut self) -> Result<Option<(String, RawDoc)>>;
    /// Input bytes read so far (for progress).
    fn bytes_read(&self) -> u64;
}

/// The documents of one language, all for its shard.
struct OneLanguage<'a> {
    lang: &'a str,
    reader: DocReader,
}

impl DocSource for OneLanguage<'_> {
    fn next_doc(&mut self) -> Result<Option<(String, RawDoc)>> {
        Ok(self.reader.next_doc()?.map(|doc| (self.lang.to_string(), doc)))
    }

    fn bytes_read(&self) -> u64 {
        self.reader.bytes_read()
    }
}

impl DocSource for PairReader {
    fn next_doc(&mut self) -> Result<Option<(String, RawDoc)>> {
        self.next_pair()
    }

    fn bytes_read(&self) -> u64 {
        PairReader::bytes_read(self)
    }
}

/// Input bytes between two progress lines.
const PROGRESS_EVERY_BYTES: u64 = 256 << 20;

/// Encodes the documents of `docs` into `<out_dir>/<split>/<name>.bin` per shard name, a batch
/// at a time (memory stays at one batch of text), reporting progress on large inputs as
/// `label`. Returns the shards written, by name (none when the input holds no document).
#[allow(clippy::too_many_arguments)]
fn encode_shards(
    docs: &mut dyn DocSource,
    total_bytes: u64,
    label: &str,
    out_dir: &Path,
    split: &str,
    tokenizer: &RunTokenizer,
    sources: &mut Sources,
    progress: &dyn Fn(&str),
) -> Result<Vec<ShardInfo>> {
    let vocab_size = u32::try_from(tokenizer.vocab_size())
        .map_err(|_| DataError::BadInput(format!("vocabulary of {} tokens", tokenizer.vocab_size())))?;
    let mut writers: BTreeMap<String, ShardWriter> = BTreeMap::new();
    let mut written = 0u64;
    let mut next_report = PROGRESS_EVERY_BYTES;
    let mut batch: Vec<(String, RawDoc)> = Vec::with_capacity(ENCODE_CHUNK);
    loop {
        batch.clear();
        let mut text_bytes = 0;
        while batch.len() < ENCODE_CHUNK && text_bytes < ENCODE_CHUNK_BYTES {
            let Some((name, doc)) = docs.next_doc()? else { break };
            text_bytes += doc.text.len();
            batch.push((name, doc));
        }
        if batch.is_empty() {
            break;
        }
        let texts: Vec<&str> = batch.iter().map(|(_, d)| d.text.as_str()).collect();
        let encoded = tokenizer.encode_batch(&texts);
        for ((name, doc), ids) in batch.iter().zip(encoded) {
            let bytes = u32::try_from(doc.text.len()).map_err(|_| {
                DataError::BadInput(format!(
                    "{split}/{name}: a document of {} bytes (at most 4 GiB)",
                    doc.text.len()
                ))
            })?;
            let source = sources.id(&doc.source)?;
            let writer = match writers.get_mut(name) {
                Some(w) => w,
                None => writers.entry(name.clone()).or_insert(ShardWriter::create(
                    &out_dir.join(format!("{split}/{name}.bin")),
                    vocab_size,
                )?),
            };
            writer.push(&ids, bytes, source)?;
            written += 1;
        }
        let read = docs.bytes_read();
        if total_bytes > 0 && read >= next_report {
            progress(&format!(
                "{label}: {:.1} of {:.1} GB read, {written} documents so far",
                read as f64 / 1e9,
                total_bytes as f64 / 1e9,
            ));
            next_report = read + PROGRESS_EVERY_BYTES;
        }
    }
    let mut shards = Vec::with_capacity(writers.len());
    for (name, writer) in writers {
        let totals = writer.finish()?;
        shards.push(ShardInfo {
            lang: name.clone(),
            file: format!("{split}/{name}.bin"),
            docs: totals.docs,
            tokens: totals.tokens,
            bytes: totals.bytes,
        });
    }
    Ok(shards)
}

/// The summed size of `files` (for progress; unreadable ones count 0).
fn total_size(files: &[PathBuf]) -> u64 {
    files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| DataError::io(path, e))
}

/// Prepares a dataset (see the module documentation); `progress` receives one line per shard.
pub fn prepare(opts: &PrepareOptions, tokenizer: &RunTokenizer, progress: &dyn Fn(&str)) -> Result<Manifest> {
    let eos_id = tokenizer.eos().ok_or_else(|| {
        DataError::BadInput("the tokenizer has no end-of-sequence token (</s>) to separate documents".into())
    })?;
    let vocab_size = u32::try_from(tokenizer.vocab_size())
        .map_err(|_| DataError::BadInput(format!("vocabulary of {} tokens", tokenizer.vocab_size())))?;

    let train_inputs = list_inputs(&opts.train)?;
    let langs: Vec<String> = match &opts.langs {
        Some(langs) => {
            for lang in langs {
                if !train_inputs.contains_key(lang) {
                    return Err(DataError::MissingLanguage {
                        lang: lang.clone(),
                        split: format!("training input {}", opts.train.display()),
                    });
                }
            }
            let mut l = langs.clone();
            l.sort();
            l.dedup();
            l
        }
        None => train_inputs.keys().cloned().collect(),
    };
    if langs.is_empty() {
        return Err(DataError::NoData(format!(
            "no <lang>.jsonl or <lang>.txt files in {}",
            opts.train.display()
        )));
    }
    let valid_inputs = match &opts.valid {
        Some(dir) => list_inputs(dir)?,
        None => BTreeMap::new(),
    };

    create_dir(&opts.out)?;
    let manifest_path = opts.out.join(MANIFEST_FILE);
    match std::fs::remove_file(&manifest_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DataError::io(&manifest_path, e)),
    }

    let mut sources = Sources::default();
    sources.id(UNKNOWN_SOURCE)?;
    let mut splits: BTreeMap<String, Vec<ShardInfo>> = BTreeMap::new();
    let mut encode =
        |split: &str, label: &str, docs: &mut dyn DocSource, total_bytes: u64| -> Result<usize> {
            create_dir(&opts.out.join(split))?;
            let shards =
                encode_shards(docs, total_bytes, label, &opts.out, split, tokenizer, &mut sources, progress)?;
            for info in &shards {
                progress(&format!(
                    "{split}/{}: {} documents, {} tokens, {} bytes ({:.2} bytes/token)",
                    info.lang,
                    info.docs,
                    info.tokens,
                    info.bytes,
                    info.bytes as f64 / info.tokens.max(1) as f64
                ));
            }
            let count = shards.len();
            splits.entry(split.to_string()).or_default().extend(shards);
            Ok(count)
        };

    for (split, inputs) in [("train", &train_inputs), ("valid", &valid_inputs)] {
        for lang in &langs {
            let Some(files) = inputs.get(lang) else {
                if split == "valid" {
                    progress(&format!("valid/{lang}: no validation input, skipped"));
                }
                continue;
            };
            // One language at a time, streamed: memory stays at one batch of text.
            let mut docs =
                OneLanguage { lang, reader: DocReader::open(files.clone(), opts.max_docs_per_lang)? };
            if encode(split, &format!("{split}/{lang}"), &mut docs, total_size(files))? == 0 {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                progress(&format!("{split}/{lang}: no documents in {}, skipped", names.join(", ")));
            }
        }
    }
    if let Some(pairs) = &opts.pairs {
        let files: Vec<PathBuf> = if pairs.is_dir() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(pairs)
                .map_err(|e| DataError::io(pairs, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
                })
                .collect();
            f.sort();
            f
        } else {
            vec![pairs.clone()]
        };
        let mut docs = PairReader::open(files.clone(), opts.max_docs_per_lang)?;
        if encode("pairs", "pairs", &mut docs, total_size(&files))? == 0 {
            return Err(DataError::NoData(format!("no bilingual pairs in {}", pairs.display())));
        }
    }

    if !splits.contains_key("train") {
        return Err(DataError::NoData(format!("no training documents in {}", opts.train.display())));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        version: MANIFEST_VERSION,
        tokenizer: TokenizerInfo { fingerprint: tokenizer.fingerprint().to_string(), vocab_size, eos_id },
        sources: sources.names,
        splits,
    };
    manifest.save(&manifest_path)?;
    progress(&format!("wrote {}", manifest_path.display()));
    Ok(manifest)
}
