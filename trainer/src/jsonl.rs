//! Files of JSON objects (SFT examples, multiple-choice items): JSON Lines (one object per
//! line), or one JSON array of objects (as Alpaca-style data is often released), with errors
//! that name the file and the 1-based line, and typed field access.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// An error in a JSON Lines or JSON array file: every variant names the file (and the line
/// where there is one; in an array, the line where the object starts).
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// A line that is not UTF-8.
    #[error("{}:{line}: invalid UTF-8", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
    },
    /// A line that is not JSON.
    #[error("{}:{line}: malformed JSON: {message}", path.display())]
    MalformedJson {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A line that is JSON but not an object.
    #[error("{}:{line}: expected a JSON object {shape}", path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The object the file should hold, such as `{"prompt", "choices", "gold"}`.
        shape: &'static str,
    },
    /// A required field is absent.
    #[error("{}:{line}: missing field \"{field}\"", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A field of the wrong JSON type or value.
    #[error("{}:{line}: field \"{field}\" must be {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

/// One object of a JSON Lines file, with its place for error messages.
pub struct Record<'a> {
    /// The file (for errors).
    pub path: &'a Path,
    /// The 1-based line.
    pub line: usize,
    /// The object.
    pub object: Map<String, Value>,
}

impl Record<'_> {
    /// The field `field`, which must be present.
    pub fn field(&self, field: &'static str) -> Result<&Value, JsonlError> {
        self.object.get(field).ok_or_else(|| JsonlError::MissingField {
            path: self.path.to_path_buf(),
            line: self.line,
            field,
        })
    }

    /// The string field `field`, which must be present.
    pub fn string(&self, field: &'static str) -> Result<String, JsonlError> {
        match self.field(field)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.wrong(field, "a string")),
        }
    }

    /// The error for a field of the wrong type or value.
    pub fn wrong(&self, field: &'static str, expected: &'static str) -> JsonlError {
        JsonlError::WrongType { path: self.path.to_path_buf(), line: self.line, field, expected }
    }
}

/// Reads `path` whole.
pub fn read(path: &Path) -> Result<Vec<u8>, JsonlError> {
    std::fs::read(path).map_err(|source| JsonlError::Io { path: path.to_path_buf(), source })
}

/// The objects of `bytes`: JSON Lines, or (when the first character other than whitespace is
/// `[`) one JSON array of objects. A UTF-8 byte-order mark, `\r\n` endings and blank lines are
/// accepted; `path` names the source in errors and `shape` says what each object should be.
pub fn records<'a>(bytes: &[u8], path: &'a Path, shape: &'static str) -> Result<Vec<Record<'a>>, JsonlError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return array_records(bytes, path, shape);
    }
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw)
            .map_err(|_| JsonlError::InvalidUtf8 { path: path.to_path_buf(), line })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|e| JsonlError::MalformedJson {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        let Value::Object(object) = value else {
            return Err(JsonlError::NotAnObject { path: path.to_path_buf(), line, shape });
        };
        out.push(Record { path, line, object });
    }
    Ok(out)
}

/// [`records`] of a file that is one JSON array: each item is parsed on its own, so that an
/// error names the line where it is.
fn array_records<'a>(
    bytes: &[u8],
    path: &'a Path,
    shape: &'static str,
) -> Result<Vec<Record<'a>>, JsonlError> {
    let newlines: Vec<usize> =
        bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect();
    let line_at = |offset: usize| newlines.partition_point(|&n| n < offset) + 1;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| JsonlError::InvalidUtf8 { path: path.to_path_buf(), line: line_at(e.valid_up_to()) })?;
    let malformed = |offset: usize, message: String| JsonlError::MalformedJson {
        path: path.to_path_buf(),
        line: line_at(offset),
        message,
    };
    let skip_space = |from: usize| from + (text[from..].len() - text[from..].trim_start().len());
    // Past the opening bracket, which `records` has seen.
    let mut at = skip_space(skip_space(0) + 1);
    let mut out = Vec::new();
    if !text[at..].starts_with(']') {
        loop {
            let start = at;
            let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
            let value = match stream.next() {
                Some(Ok(value)) => value,
                Some(Err(e)) => {
                    // The parser counts lines from the item's start; say the file's line.
                    let message = e.to_string();
                    let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
                    return Err(JsonlError::MalformedJson {
                        path: path.to_path_buf(),
                        line: line_at(start) + e.line().saturating_sub(1),
                        message: message.to_string(),
                    });
                }
                None => return Err(malformed(start, "the array is not closed with `]`".into())),
            };
            at = skip_space(start + stream.byte_offset());
            let Value::Object(object) = value else {
                return Err(JsonlError::NotAnObject {
                    path: path.to_path_buf(),
                    line: line_at(start),
                    shape,
                });
            };
            out.push(Record { path, line: line_at(start), object });
            match text[at..].chars().next() {
                Some(',') => at = skip_space(at + 1),
                Some(']') => break,
                None => return Err(malformed(at, "the array is not closed with `]`".into())),
                _ => return Err(malformed(at, "expected `,` or `]` after an array item".into())),
            }
        }
    }
    let end = skip_space(at + 1);
    if end < text.len() {
        return Err(malformed(end, "text after the closing `]` of the array".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &str) -> Result<Vec<usize>, JsonlError> {
        Ok(records(text.as_bytes(), Path::new("f.json"), "{}")?.iter().map(|r| r.line).collect())
    }

    #[test]
    fn arrays_and_lines_give_the_same_objects_with_their_lines() {
        let lines = "{\"a\": 1}\n\n{\"a\": [2, 3]}\r\n";
        let array = "\u{feff} [\n  {\"a\": 1},\n\n  {\n    \"a\": [2, 3]\n  }\n]\n";
        let objects = |t: &str| -> Vec<Value> {
            records(t.as_bytes(), Path::new("f"), "{}")
                .unwrap()
                .into_iter()
                .map(|r| Value::Object(r.object))
                .collect()
        };
        assert_eq!(objects(lines), objects(array));
        assert_eq!(lines_of(lines).unwrap(), [1, 3]);
        assert_eq!(lines_of(array).unwrap(), [2, 4]);
        assert_eq!(lines_of("[]").unwrap(), Vec::<usize>::new());
        assert_eq!(lines_of(" [ ] \n").unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn broken_arrays_name_the_line() {
        let line_of = |text: &str| match lines_of(text) {
            Err(JsonlError::MalformedJson { line, message, .. }) => {
                assert!(!message.contains("column"), "{message}");
                (line, message)
            }
            other => panic!("{text:?}: {:?}", other.map_err(|e| e.to_string())),
        };
        assert_eq!(line_of("[\n{\"a\": 1},\n{\"a\":\n 1,,}\n]").0, 4);
        assert_eq!(line_of("[\n{\"a\": 1},\n]").0, 3);
        assert!(line_of("[\n{\"a\": 1}\n{\"a\": 2}]").1.contains("`,` or `]`"));
        assert!(line_of("[{\"a\": 1}").1.contains("not closed"));
        assert!(line_of("[{\"a\": 1}]\n{}").1.contains("after the closing"));
        assert!(matches!(lines_of("[\n{},\n 3]"), Err(JsonlError::NotAnObject { line: 3, .. })));
        assert!(matches!(
            records(b"[{},\n\xff]", Path::new("f"), "{}"),
            Err(JsonlError::InvalidUtf8 { line: 2, .. })
        ));
    }
}
