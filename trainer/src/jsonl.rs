//! JSON Lines files of objects (SFT examples, multiple-choice items): reading line by line
//! with errors that name the file and the 1-based line, and typed field access.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// An error in a JSON Lines file: every variant names the file (and the line where there is
/// one).
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

/// The objects of JSON Lines `bytes` (a UTF-8 byte-order mark, `\r\n` endings and blank lines
/// are accepted); `path` names the source in errors and `shape` says what each object should
/// be.
pub fn records<'a>(bytes: &[u8], path: &'a Path, shape: &'static str) -> Result<Vec<Record<'a>>, JsonlError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
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
