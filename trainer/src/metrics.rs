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
/// cut the last line short, even in the middle of a multi-byte character, so lines are taken as
/// bytes and one that is not UTF-8 is skipped like any other damaged line).
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(io_err(path))?;
        if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_keeps_earlier_records_and_survives_a_line_cut_inside_a_character() {
        let dir = std::env::temp_dir().join(format!("polylm-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        // Steps 1 and 2, a step 3 from the interrupted attempt, and a last line cut by a crash
        // in the middle of "é" (0xC3 0xA9): not UTF-8.
        let mut bytes =
            b"{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"stage\":\"\xc3\xa9t\xc3\xa9\"}\n{\"step\":3}\n"
                .to_vec();
        bytes.extend_from_slice(b"{\"step\":4,\"stage\":\"\xc3");
        std::fs::write(&path, &bytes).unwrap();
        let mut log = MetricsLog::open(&path, Some(2)).unwrap();
        log.write(&serde_json::json!({"step": 3, "loss": 1.5})).unwrap();
        drop(log);
        let records = read_records(&path).unwrap();
        let steps: Vec<u64> = records.iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3]);
        assert_eq!(records[1]["stage"], "été");
        assert_eq!(records[2]["loss"], 1.5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
