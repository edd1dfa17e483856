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
//! Language inputs are streamed ([`DocReader`]): memory holds one batch of documents at a time,
//! however large the corpus, and a large input reports its progress every 256 MB. Bilingual
//! pairs are grouped by language pair in memory (they are usually a small share).
//!
//! Bilingual pairs (optional): a JSONL file (or a directory of them) with lines
//! `{"src_lang", "tgt_lang", "src", "tgt"}` (and an optional `"source"`, default `"pairs"`); each
//! pair becomes a document `src + "\n" + tgt` in shard `pairs/<src_lang>-<tgt_lang>.bin`.
//!
//! Documents with empty text are skipped. Invalid UTF-8, invalid JSON and missing fields stop
//! the run with an error naming the file and the 1-based line. Encoding runs in parallel
//! (rayon, through [`Tokenizer::encode_batch`]). Output: `<out>/train/<lang>.bin`,
//! `<out>/valid/<lang>.bin`, `<out>/pairs/<src>-<tgt>.bin` and, last, `<out>/manifest.json`
//! (any previous manifest is removed first, so an interrupted run never looks complete).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;

use crate::tokenizer::RunTokenizer;
use serde::Deserialize;

use super::error::{DataError, Result};
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

/// The source id of the default source name.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// Documents encoded per parallel batch (at most).
const ENCODE_CHUNK: usize = 1024;

/// Text bytes encoded per parallel batch (at most, past one document).
const ENCODE_CHUNK_BYTES: usize = 32 << 20;

/// A document read from an input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDoc {
    /// The text.
    pub text: String,
    /// The source name.
    pub source: String,
}

#[derive(Deserialize)]
struct DocLine {
    text: Option<serde_json::Value>,
    source: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PairLine {
    src_lang: Option<serde_json::Value>,
    tgt_lang: Option<serde_json::Value>,
    src: Option<serde_json::Value>,
    tgt: Option<serde_json::Value>,
    source: Option<serde_json::Value>,
}

/// Lines of `data` with their 1-based numbers, as UTF-8 (`\r\n` endings accepted).
fn utf8_lines<'a>(data: &'a [u8], path: &'a Path) -> impl Iterator<Item = Result<(usize, &'a str)>> + 'a {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|&b| b == b'\n').enumerate().map(move |(i, raw)| {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        std::str::from_utf8(raw)
            .map(|s| (i + 1, s))
            .map_err(|_| DataError::InvalidUtf8 { path: path.to_path_buf(), line: i + 1 })
    })
}

fn string_field(
    v: Option<serde_json::Value>,
    field: &'static str,
    path: &Path,
    line: usize,
) -> Result<Option<String>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DataError::Json {
            path: path.to_path_buf(),
            line,
            message: format!("field {field:?} must be a string, found {other}"),
        }),
    }
}

fn required(v: Option<String>, field: &'static str, path: &Path, line: usize) -> Result<String> {
    v.ok_or_else(|| DataError::MissingField { path: path.to_path_buf(), line, field })
}

fn parse_json_line<T: for<'de> Deserialize<'de>>(line: &str, path: &Path, no: usize) -> Result<T> {
    serde_json::from_str(line).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line: no,
        message: e.to_string(),
    })
}

/// Reads the documents of one input file (`.jsonl`/`.json`: JSON lines; anything else: blank-line
/// separated paragraphs; `.gz` appended: gzip-compressed), at most `max_docs` of them. [`DocReader`] streams them instead.
pub fn read_docs(path: &Path, max_docs: Option<usize>) -> Result<Vec<RawDoc>> {
    DocReader::open(vec![path.to_path_buf()], max_docs)?.collect()
}

/// The documents of one language's input files, read one line at a time (memory stays at one
/// document however large the files are; `.gz` files are decompressed as they are read):
/// `.jsonl`/`.json` files give one document per non-blank line (`"text"`, optional `"source"`;
/// empty texts are skipped), other files one per block of lines separated by blank lines.
/// Stops after `max_docs` documents.
pub struct DocReader {
    /// Files still to open, in reading order (reversed, so the next is last).
    pending: Vec<PathBuf>,
    current: Option<OpenInput>,
    /// Bytes of the files already finished.
    done_bytes: u64,
    left: usize,
    line: Vec<u8>,
}

/// The file a [`DocReader`] is in.
struct OpenInput {
    path: PathBuf,
    /// The file's text (decompressed when it is gzip).
    reader: Box<dyn BufRead>,
    jsonl: bool,
    /// 1-based number of the last line read.
    line_no: usize,
    /// Bytes of the file (compressed, when it is) read so far.
    bytes: Rc<Cell<u64>>,
}

/// How an input file is read, by its name: `.jsonl` and `.json` are JSON lines, anything else
/// plain text; a further `.gz` means gzip-compressed (`en.jsonl.gz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InputFormat {
    jsonl: bool,
    gzip: bool,
}

impl InputFormat {
    fn of(path: &Path) -> InputFormat {
        let (_, jsonl, gzip) = split_input_name(path);
        InputFormat { jsonl, gzip }
    }
}

/// An input's name without its format extensions (`en.jsonl.gz` → `en`), whether it is JSON
/// lines (`.jsonl`/`.json`) and whether it is gzip-compressed (`.gz`). The stem is `None` when
/// the name has no input extension (`.jsonl`, `.json` or `.txt`, each optionally `.gz`).
fn split_input_name(path: &Path) -> (Option<&str>, bool, bool) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let (name, gzip) = name.strip_suffix(".gz").map_or((name, false), |n| (n, true));
    for (ext, jsonl) in [(".jsonl", true), (".json", true), (".txt", false)] {
        if let Some(stem) = name.strip_suffix(ext) {
            return (Some(stem), jsonl, gzip);
        }
    }
    (None, false, gzip)
}

/// A reader that counts the bytes it passes on (the compressed bytes of a gzip input).
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

impl DocReader {
    /// A reader over `files` in order, checking that each exists before any is read.
    pub fn open(files: Vec<PathBuf>, max_docs: Option<usize>) -> Result<DocReader> {
        for f in &files {
            std::fs::metadata(f).map_err(|e| DataError::io(f, e))?;
        }
        let mut pending = files;
        pending.reverse();
        Ok(DocReader {
            pending,
            current: None,
            done_bytes: 0,
            left: max_docs.unwrap_or(usize::MAX),
            line: Vec::new(),
        })
    }

    /// Bytes of input read so far.
    pub fn bytes_read(&self) -> u64 {
        self.done_bytes + self.current.as_ref().map_or(0, |c| c.bytes.get())
    }

    /// The next line of the current file (without its `\n` or `\r\n`) and its number, or
    /// `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(usize, &str)>> {
        let Some(input) = self.current.as_mut() else { return Ok(None) };
        self.line.clear();
        let n = input.reader.read_until(b'\n', &mut self.line).map_err(|e| DataError::io(&input.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        input.line_no += 1;
        let raw = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw)
            .map_err(|_| DataError::InvalidUtf8 { path: input.path.clone(), line: input.line_no })?;
        Ok(Some((input.line_no, text)))
    }

    /// The next document of the current file, if any.
    fn next_in_file(&mut self) -> Result<Option<RawDoc>> {
        let Some(input) = &self.current else { return Ok(None) };
        let (path, jsonl) = (input.path.clone(), input.jsonl);
        if jsonl {
            while let Some((no, line)) = self.next_line()? {
                if line.trim().is_empty() {
                    continue;
                }
                let d: DocLine = parse_json_line(line, &path, no)?;
                let text = required(string_field(d.text, "text", &path, no)?, "text", &path, no)?;
                let source =
                    string_field(d.source, "source", &path, no)?.unwrap_or_else(|| UNKNOWN_SOURCE.into());
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(RawDoc { text, source }));
            }
            return Ok(None);
        }
        let mut block = String::new();
        while let Some((_, line)) = self.next_line()? {
            if !line.trim().is_empty() {
                if !block.is_empty() {
                    block.push('\n');
                }
                block.push_str(line);
            } else if !block.is_empty() {
                break;
            }
        }
        Ok((!block.is_empty()).then(|| RawDoc { text: block, source: UNKNOWN_SOURCE.into() }))
    }

    fn next_doc(&mut self) -> Result<Option<RawDoc>> {
        if self.left == 0 {
            return Ok(None);
        }
        loop {
            if let Some(doc) = self.next_in_file()? {
                self.left -= 1;
                return Ok(Some(doc));
            }
            if let Some(finished) = self.current.take() {
                self.done_bytes += finished.bytes.get();
            }
            let Some(path) = self.pending.pop() else { return Ok(None) };
            let file = std::fs::File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let bytes = Rc::new(Cell::new(0));
            let counted = Counting { inner: file, count: Rc::clone(&bytes) };
            let format = InputFormat::of(&path);
            let reader: Box<dyn BufRead> = if format.gzip {
                // Multi-member, as `pigz` and concatenated `.gz` parts write them.
                Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(BufReader::new(counted))))
            } else {
                Box::new(BufReader::with_capacity(1 << 20, counted))
            };
            self.current = Some(OpenInput { path, reader, jsonl: format.jsonl, line_no: 0, bytes });
        }
    }
}

impl Iterator for DocReader {
    type Item = Result<RawDoc>;

    fn next(&mut self) -> Option<Result<RawDoc>> {
        match self.next_doc() {
            Ok(doc) => doc.map(Ok),
            Err(e) => {
                // No more documents after an error.
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}

/// Reads bilingual pairs, grouped by `"<src_lang>-<tgt_lang>"` (at most `max_docs` per group).
pub fn read_pairs(path: &Path, max_docs: Option<usize>) -> Result<BTreeMap<String, Vec<RawDoc>>> {
    let data = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let limit = max_docs.unwrap_or(usize::MAX);
    let mut groups: BTreeMap<String, Vec<RawDoc>> = BTreeMap::new();
    for line in utf8_lines(&data, path) {
        let (no, line) = line?;
        if line.trim().is_empty() {
            continue;
        }
        let p: PairLine = parse_json_line(line, path, no)?;
        let src_lang = required(string_field(p.src_lang, "src_lang", path, no)?, "src_lang", path, no)?;
        let tgt_lang = required(string_field(p.tgt_lang, "tgt_lang", path, no)?, "tgt_lang", path, no)?;
        let src = required(string_field(p.src, "src", path, no)?, "src", path, no)?;
        let tgt = required(string_field(p.tgt, "tgt", path, no)?, "tgt", path, no)?;
        let source = string_field(p.source, "source", path, no)?.unwrap_or_else(|| "pairs".into());
        for (field, code) in [("src_lang", &src_lang), ("tgt_lang", &tgt_lang)] {
            if !valid_lang_code(code) {
                return Err(DataError::Json {
                    path: path.to_path_buf(),
                    line: no,
                    message: format!(
                        "field {field:?} is {code:?}, not a language code (letters, digits, '_')"
                    ),
                });
            }
        }
        let group = groups.entry(format!("{src_lang}-{tgt_lang}")).or_default();
        if group.len() < limit && !(src.is_empty() && tgt.is_empty()) {
            group.push(RawDoc { text: format!("{src}\n{tgt}"), source });
        }
    }
    Ok(groups)
}

fn valid_lang_code(code: &str) -> bool {
    !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The inputs of a directory, by language: a `<lang>.jsonl` or `<lang>.txt` file (either may be
/// gzip-compressed: `<lang>.jsonl.gz`), or a `<lang>/` folder whose `.jsonl`, `.json` and `.txt`
/// files (each optionally `.gz`) are read in name order (a large corpus split into parts). Two inputs for one language are an error; folders without such files are not
/// inputs.
pub fn list_inputs(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let (lang, files) = if path.is_dir() {
            let Some(lang) = path.file_name().and_then(|s| s.to_str()) else { continue };
            if !valid_lang_code(lang) {
                continue;
            }
            let parts = input_parts(&path)?;
            if parts.is_empty() {
                continue;
            }
            (lang.to_string(), parts)
        } else {
            // `.json` files beside the inputs are not inputs (a `manifest.json`, say).
            let is_json = path.to_str().is_some_and(|p| p.ends_with(".json") || p.ends_with(".json.gz"));
            let (Some(lang), false) = (split_input_name(&path).0, is_json) else { continue };
            if !valid_lang_code(lang) || !path.is_file() {
                continue;
            }
            (lang.to_string(), vec![path.clone()])
        };
        if let Some(prev) = out.insert(lang.clone(), files) {
            return Err(DataError::BadInput(format!(
                "two inputs for language {lang:?}: {} and {}",
                prev[0].display(),
                path.display()
            )));
        }
    }
    Ok(out)
}

/// The `.jsonl`, `.json` and `.txt` files (each optionally `.gz`) of a `<lang>/` folder, in
/// name order.
fn input_parts(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if split_input_name(&path).0.is_some() && path.is_file() {
            parts.push(path);
        }
    }
    parts.sort();
    Ok(parts)
}

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

/// Where [`encode_shard`] takes its documents from.
trait DocSource {
    /// The next document, `None` at the end.
    fn next_doc(&mut self) -> Result<Option<RawDoc>>;
    /// Input bytes read so far (for progress).
    fn bytes_read(&self) -> u64;
}

impl DocSource for DocReader {
    fn next_doc(&mut self) -> Result<Option<RawDoc>> {
        DocReader::next_doc(self)
    }

    fn bytes_read(&self) -> u64 {
        DocReader::bytes_read(self)
    }
}

/// Documents already in memory (bilingual pairs, grouped by language pair).
impl DocSource for std::vec::IntoIter<RawDoc> {
    fn next_doc(&mut self) -> Result<Option<RawDoc>> {
        Ok(self.next())
    }

    fn bytes_read(&self) -> u64 {
        0
    }
}

/// Input bytes between two progress lines of one shard.
const PROGRESS_EVERY_BYTES: u64 = 256 << 20;

/// Encodes the documents of `reader` into `<out_dir>/<split>/<lang>.bin`, a batch at a time
/// (memory stays at one batch of text), reporting progress on large inputs. `None` when the
/// input holds no document (no shard is written).
#[allow(clippy::too_many_arguments)]
fn encode_shard(
    reader: &mut dyn DocSource,
    total_bytes: u64,
    out_dir: &Path,
    split: &str,
    lang: &str,
    tokenizer: &RunTokenizer,
    sources: &mut Sources,
    progress: &dyn Fn(&str),
) -> Result<Option<ShardInfo>> {
    let file = format!("{split}/{lang}.bin");
    let path = out_dir.join(&file);
    let vocab_size = u32::try_from(tokenizer.vocab_size())
        .map_err(|_| DataError::BadInput(format!("vocabulary of {} tokens", tokenizer.vocab_size())))?;
    let mut writer: Option<ShardWriter> = None;
    let mut next_report = PROGRESS_EVERY_BYTES;
    let mut batch: Vec<RawDoc> = Vec::with_capacity(ENCODE_CHUNK);
    loop {
        batch.clear();
        let mut text_bytes = 0;
        while batch.len() < ENCODE_CHUNK && text_bytes < ENCODE_CHUNK_BYTES {
            let Some(doc) = reader.next_doc()? else { break };
            text_bytes += doc.text.len();
            batch.push(doc);
        }
        if batch.is_empty() {
            break;
        }
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(ShardWriter::create(&path, vocab_size)?),
        };
        let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
        let encoded = tokenizer.encode_batch(&texts);
        for (doc, ids) in batch.iter().zip(encoded) {
            let bytes = u32::try_from(doc.text.len()).map_err(|_| {
                DataError::BadInput(format!(
                    "{split}/{lang}: a document of {} bytes (at most 4 GiB)",
                    doc.text.len()
                ))
            })?;
            let source = sources.id(&doc.source)?;
            writer.push(&ids, bytes, source)?;
        }
        let read = reader.bytes_read();
        if total_bytes > 0 && read >= next_report {
            progress(&format!(
                "{split}/{lang}: {:.1} of {:.1} GB read, {} documents so far",
                read as f64 / 1e9,
                total_bytes as f64 / 1e9,
                writer.docs()
            ));
            next_report = read + PROGRESS_EVERY_BYTES;
        }
    }
    let Some(writer) = writer else { return Ok(None) };
    let totals = writer.finish()?;
    Ok(Some(ShardInfo {
        lang: lang.to_string(),
        file,
        docs: totals.docs,
        tokens: totals.tokens,
        bytes: totals.bytes,
    }))
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
    let mut shard = |split: &str, lang: &str, docs: &mut dyn DocSource, total_bytes: u64| -> Result<bool> {
        create_dir(&opts.out.join(split))?;
        let Some(info) =
            encode_shard(docs, total_bytes, &opts.out, split, lang, tokenizer, &mut sources, progress)?
        else {
            return Ok(false);
        };
        progress(&format!(
            "{split}/{lang}: {} documents, {} tokens, {} bytes ({:.2} bytes/token)",
            info.docs,
            info.tokens,
            info.bytes,
            info.bytes as f64 / info.tokens.max(1) as f64
        ));
        splits.entry(split.to_string()).or_default().push(info);
        Ok(true)
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
            let total_bytes = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
            let mut reader = DocReader::open(files.clone(), opts.max_docs_per_lang)?;
            if !shard(split, lang, &mut reader, total_bytes)? {
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
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jsonl"))
                .collect();
            f.sort();
            f
        } else {
            vec![pairs.clone()]
        };
        let mut groups: BTreeMap<String, Vec<RawDoc>> = BTreeMap::new();
        for f in &files {
            for (k, mut v) in read_pairs(f, opts.max_docs_per_lang)? {
                let g = groups.entry(k).or_default();
                g.append(&mut v);
                if let Some(max) = opts.max_docs_per_lang {
                    g.truncate(max);
                }
            }
        }
        groups.retain(|_, v| !v.is_empty());
        if groups.is_empty() {
            return Err(DataError::NoData(format!("no bilingual pairs in {}", pairs.display())));
        }
        for (pair, docs) in groups {
            shard("pairs", &pair, &mut docs.into_iter(), 0)?;
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
