//! Reading the inputs of `data prepare`: which files a folder holds per language
//! ([`list_inputs`]), and their documents ([`DocReader`]) and bilingual pairs ([`PairReader`]),
//! streamed one line at a time from plain or gzip-compressed files, with errors that name the
//! file and the 1-based line.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use serde::Deserialize;

use super::error::{DataError, Result};

/// The source name of documents whose input names none.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// The source name of bilingual pairs whose line names none.
const PAIRS_SOURCE: &str = "pairs";

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

/// The lines of a list of input files, one file after another (`.gz` files decompressed as
/// they are read), with the current file and line number for errors.
struct InputLines {
    /// Files still to open, in reading order (reversed, so the next is last).
    pending: Vec<PathBuf>,
    current: Option<OpenInput>,
    /// Bytes of the files already finished.
    done_bytes: u64,
    line: Vec<u8>,
}

/// The file an [`InputLines`] is in.
struct OpenInput {
    path: PathBuf,
    /// The file's text (decompressed when it is gzip).
    reader: Box<dyn BufRead>,
    /// 1-based number of the last line read.
    line_no: usize,
    /// Bytes of the file (compressed, when it is) read so far.
    bytes: Rc<Cell<u64>>,
}

impl InputLines {
    /// Lines of `files` in order, checking that each exists before any is read.
    fn open(files: Vec<PathBuf>) -> Result<InputLines> {
        for f in &files {
            std::fs::metadata(f).map_err(|e| DataError::io(f, e))?;
        }
        let mut pending = files;
        pending.reverse();
        Ok(InputLines { pending, current: None, done_bytes: 0, line: Vec::new() })
    }

    fn bytes_read(&self) -> u64 {
        self.done_bytes + self.current.as_ref().map_or(0, |c| c.bytes.get())
    }

    /// Moves to the next file: its path and format, or `None` when every file is read.
    fn next_file(&mut self) -> Result<Option<(PathBuf, InputFormat)>> {
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
        self.current = Some(OpenInput { path: path.clone(), reader, line_no: 0, bytes });
        Ok(Some((path, format)))
    }

    /// The next line of the current file (without its `\n` or `\r\n`) and its number, or
    /// `None` at the end of the file (and before the first).
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
}

/// The documents of one language's input files, read one line at a time (memory stays at one
/// document however large the files are; `.gz` files are decompressed as they are read):
/// `.jsonl`/`.json` files give one document per non-blank line (`"text"`, optional `"source"`;
/// empty texts are skipped), other files one per block of lines separated by blank lines.
/// Stops after `max_docs` documents.
pub struct DocReader {
    lines: InputLines,
    /// The file being read and its format.
    file: Option<(PathBuf, InputFormat)>,
    left: usize,
}

impl DocReader {
    /// A reader over `files` in order, checking that each exists before any is read.
    pub fn open(files: Vec<PathBuf>, max_docs: Option<usize>) -> Result<DocReader> {
        Ok(DocReader { lines: InputLines::open(files)?, file: None, left: max_docs.unwrap_or(usize::MAX) })
    }

    /// Bytes of input read so far (compressed bytes of gzip files).
    pub fn bytes_read(&self) -> u64 {
        self.lines.bytes_read()
    }

    /// The next document of the current file, if any.
    fn next_in_file(&mut self) -> Result<Option<RawDoc>> {
        let Some((path, format)) = &self.file else { return Ok(None) };
        if format.jsonl {
            while let Some((no, line)) = self.lines.next_line()? {
                if line.trim().is_empty() {
                    continue;
                }
                let d: DocLine = parse_json_line(line, path, no)?;
                let text = required(string_field(d.text, "text", path, no)?, "text", path, no)?;
                let source =
                    string_field(d.source, "source", path, no)?.unwrap_or_else(|| UNKNOWN_SOURCE.into());
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(RawDoc { text, source }));
            }
            return Ok(None);
        }
        let mut block = String::new();
        while let Some((_, line)) = self.lines.next_line()? {
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

    /// The next document, `None` after the last (or after `max_docs`).
    pub fn next_doc(&mut self) -> Result<Option<RawDoc>> {
        if self.left == 0 {
            return Ok(None);
        }
        loop {
            if let Some(doc) = self.next_in_file()? {
                self.left -= 1;
                return Ok(Some(doc));
            }
            self.file = self.lines.next_file()?;
            if self.file.is_none() {
                return Ok(None);
            }
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

/// Bilingual pairs from JSON Lines files (`{"src_lang", "tgt_lang", "src", "tgt"}` and an
/// optional `"source"`, default `"pairs"`; `.gz` files decompressed), streamed: each pair is a
/// document `src + "\n" + tgt` of the group `"<src_lang>-<tgt_lang>"`. Pairs whose two sides are
/// empty are skipped; at most `max_docs` per group are kept.
pub struct PairReader {
    lines: InputLines,
    path: Option<PathBuf>,
    limit: usize,
    kept: BTreeMap<String, usize>,
}

impl PairReader {
    /// A reader over `files` in order, checking that each exists before any is read.
    pub fn open(files: Vec<PathBuf>, max_docs: Option<usize>) -> Result<PairReader> {
        Ok(PairReader {
            lines: InputLines::open(files)?,
            path: None,
            limit: max_docs.unwrap_or(usize::MAX),
            kept: BTreeMap::new(),
        })
    }

    /// Bytes of input read so far (compressed bytes of gzip files).
    pub fn bytes_read(&self) -> u64 {
        self.lines.bytes_read()
    }

    /// The next kept pair and its group, `None` after the last.
    pub fn next_pair(&mut self) -> Result<Option<(String, RawDoc)>> {
        loop {
            let Some(path) = &self.path else {
                self.path = self.lines.next_file()?.map(|(p, _)| p);
                if self.path.is_none() {
                    return Ok(None);
                }
                continue;
            };
            let Some((no, line)) = self.lines.next_line()? else {
                self.path = None;
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            let p: PairLine = parse_json_line(line, path, no)?;
            let field =
                |v, name| -> Result<String> { required(string_field(v, name, path, no)?, name, path, no) };
            let (src_lang, tgt_lang) = (field(p.src_lang, "src_lang")?, field(p.tgt_lang, "tgt_lang")?);
            let (src, tgt) = (field(p.src, "src")?, field(p.tgt, "tgt")?);
            let source = string_field(p.source, "source", path, no)?.unwrap_or_else(|| PAIRS_SOURCE.into());
            for (name, code) in [("src_lang", &src_lang), ("tgt_lang", &tgt_lang)] {
                if !valid_lang_code(code) {
                    return Err(DataError::Json {
                        path: path.clone(),
                        line: no,
                        message: format!(
                            "field {name:?} is {code:?}, not a language code (letters, digits, '_')"
                        ),
                    });
                }
            }
            let group = format!("{src_lang}-{tgt_lang}");
            let kept = self.kept.entry(group.clone()).or_default();
            if *kept < self.limit && !(src.is_empty() && tgt.is_empty()) {
                *kept += 1;
                return Ok(Some((group, RawDoc { text: format!("{src}\n{tgt}"), source })));
            }
        }
    }
}

fn valid_lang_code(code: &str) -> bool {
    !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The inputs of a directory, by language: a `<lang>.jsonl` or `<lang>.txt` file (either may be
/// gzip-compressed: `<lang>.jsonl.gz`), or a `<lang>/` folder whose `.jsonl`, `.json` and `.txt`
/// files (each optionally `.gz`) are read in name order (a large corpus split into parts). Two
/// inputs for one language are an error; folders without such files are not inputs.
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
