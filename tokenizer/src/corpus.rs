//! Reading training corpora: `.jsonl` files with one `{"text": ...}` object per line, or plain
//! text files with one text per line. Errors name the file and the 1-based line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, TokenizerError};
use crate::train::LanguageCorpus;

#[derive(Deserialize)]
struct TextLine {
    text: String,
}

/// What to do with a corpus line that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidUtf8 {
    /// Stop with [`TokenizerError::InvalidUtf8`] naming the file and line (the default).
    #[default]
    Fail,
    /// Leave the line out and list its number in [`CorpusFile::skipped_lines`].
    Skip,
}

/// The texts of one corpus file, and the lines left out as invalid UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorpusFile {
    /// The texts, in file order.
    pub texts: Vec<String>,
    /// 1-based numbers of the lines skipped under [`InvalidUtf8::Skip`].
    pub skipped_lines: Vec<usize>,
}

/// Read the texts of one corpus file. `.jsonl` / `.json` files take the `"text"` field of each
/// non-blank line; any other file gives one text per non-blank line. At most `max_lines` lines
/// are read when it is given. Invalid UTF-8 is an error naming the file and line.
pub fn read_corpus_file(path: impl AsRef<Path>, max_lines: Option<usize>) -> Result<Vec<String>> {
    read_corpus_file_with(path, max_lines, InvalidUtf8::Fail).map(|f| f.texts)
}

/// [`read_corpus_file`], with a choice of what to do with invalid UTF-8.
pub fn read_corpus_file_with(
    path: impl AsRef<Path>,
    max_lines: Option<usize>,
    invalid: InvalidUtf8,
) -> Result<CorpusFile> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    let jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl") | Some("json"));
    parse_corpus_bytes_with(&data, jsonl, path, max_lines, invalid)
}

/// Parse corpus bytes (see [`read_corpus_file`]); `path` is only used in error messages.
pub fn parse_corpus_bytes(
    data: &[u8],
    jsonl: bool,
    path: &Path,
    max_lines: Option<usize>,
) -> Result<Vec<String>> {
    parse_corpus_bytes_with(data, jsonl, path, max_lines, InvalidUtf8::Fail).map(|f| f.texts)
}

/// [`parse_corpus_bytes`], with a choice of what to do with invalid UTF-8.
pub fn parse_corpus_bytes_with(
    data: &[u8],
    jsonl: bool,
    path: &Path,
    max_lines: Option<usize>,
    invalid: InvalidUtf8,
) -> Result<CorpusFile> {
    let mut texts = Vec::new();
    let mut skipped_lines = Vec::new();
    let limit = max_lines.unwrap_or(usize::MAX);
    for (i, raw) in data.split(|&b| b == b'\n').enumerate().take(limit) {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match (std::str::from_utf8(raw), invalid) {
            (Ok(line), _) => line,
            (Err(_), InvalidUtf8::Skip) => {
                skipped_lines.push(line_no);
                continue;
            }
            (Err(_), InvalidUtf8::Fail) => {
                return Err(TokenizerError::InvalidUtf8 { path: path.to_path_buf(), line: line_no })
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let parsed: TextLine = serde_json::from_str(line).map_err(|e| TokenizerError::BadJsonLine {
                path: path.to_path_buf(),
                line: line_no,
                message: e.to_string(),
            })?;
            texts.push(parsed.text);
        } else {
            texts.push(line.to_string());
        }
    }
    Ok(CorpusFile { texts, skipped_lines })
}

/// Read `<dir>/<lang>.jsonl` for each language code (at most `max_lines` lines each).
pub fn read_language_dir(
    dir: impl AsRef<Path>,
    langs: &[&str],
    max_lines: Option<usize>,
) -> Result<Vec<LanguageCorpus>> {
    langs
        .iter()
        .map(|lang| {
            let path: PathBuf = dir.as_ref().join(format!("{lang}.jsonl"));
            Ok(LanguageCorpus::new(*lang, read_corpus_file(&path, max_lines)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_jsonl_and_txt() {
        let p = Path::new("x.jsonl");
        let texts =
            parse_corpus_bytes(b"{\"text\": \"a b\"}\n\n{\"text\": \"c\"}\r\n", true, p, None).unwrap();
        assert_eq!(texts, vec!["a b", "c"]);
        let texts = parse_corpus_bytes(b"one\ntwo\n", false, Path::new("x.txt"), Some(1)).unwrap();
        assert_eq!(texts, vec!["one"]);
    }

    #[test]
    fn reports_line_of_errors() {
        let p = Path::new("x.jsonl");
        let err = parse_corpus_bytes(b"{\"text\": \"a\"}\n\xff\xfe\n", true, p, None).unwrap_err();
        assert!(matches!(err, TokenizerError::InvalidUtf8 { line: 2, .. }), "{err}");
        let err = parse_corpus_bytes(b"{\"text\": \"a\"}\n{\"txt\": 1}\n", true, p, None).unwrap_err();
        assert!(matches!(err, TokenizerError::BadJsonLine { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("x.jsonl"));
        let skipped = parse_corpus_bytes_with(
            b"{\"text\": \"a\"}\n\xff\n{\"text\": \"b\"}\n",
            true,
            p,
            None,
            InvalidUtf8::Skip,
        )
        .unwrap();
        assert_eq!(skipped, CorpusFile { texts: vec!["a".into(), "b".into()], skipped_lines: vec![2] });
        let err = read_corpus_file("/definitely/not/here.jsonl", None).unwrap_err();
        assert!(matches!(err, TokenizerError::Io { .. }));
    }
}
