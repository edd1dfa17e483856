//! The run's metrics: one JSON object per line in `<out_dir>/metrics.jsonl` (training steps,
//! validation results, per-language tokens seen, events such as skipped steps and rollbacks),
//! read back at the end of a run for the plots.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{io_err, Result};

/// An append-only JSONL metrics file.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending. When resuming at `resume_step`, records of later steps (from
    /// the interrupted attempt) are dropped first so that the file describes one history.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<MetricsLog> {
        if let Some(step) = resume_step {
            if path.exists() {
                let kept: Vec<String> = read_records(path)?
                    .into_iter()
                    .filter(|r| r.get("step").and_then(Value::as_u64).is_none_or(|s| s <= step))
                    .map(|r| r.to_string())
                    .collect();
                let mut text = kept.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                polylm_model::safetensors::write_text_atomic(path, &text)?;
            }
        } else if path.exists() {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(io_err(&self.path))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of a metrics file (lines that are not JSON objects are skipped: a crash may
/// cut the last line short).
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_err(path))?;
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
            out.push(v);
        }
    }
    Ok(out)
}
