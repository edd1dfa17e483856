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

/// Read the texts of one corpus file. `.jsonl` / `.json` files take the `"text"` field of each
/// non-blank line; any other file gives one text per non-blank line. At most `max_lines` lines
/// are read when it is given.
pub fn read_corpus_file(path: impl AsRef<Path>, max_lines: Option<usize>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    let jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl") | Some("json"));
    parse_corpus_bytes(&data, jsonl, path, max_lines)
}

/// Parse corpus bytes (see [`read_corpus_file`]); `path` is only used in error messages.
pub fn parse_corpus_bytes(
    data: &[u8],
    jsonl: bool,
    path: &Path,
    max_lines: Option<usize>,
) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    let limit = max_lines.unwrap_or(usize::MAX);
    for (i, raw) in data.split(|&b| b == b'\n').enumerate().take(limit) {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .map_err(|_| TokenizerError::InvalidUtf8 { path: path.to_path_buf(), line: line_no })?;
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
    Ok(texts)
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
        let err = read_corpus_file("/definitely/not/here.jsonl", None).unwrap_err();
        assert!(matches!(err, TokenizerError::Io { .. }));
    }
}
