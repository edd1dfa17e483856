//! Writing a safetensors file atomically: the bytes go to a temporary file in the target's
//! directory, which is flushed to disk and then renamed over the target, so a reader sees the
//! old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use super::header::Dtype;
use crate::error::{io_err, ModelError, Result};

/// One tensor to write: name, dtype, shape and its little-endian bytes.
#[derive(Clone, Debug)]
pub struct TensorData {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes (element count × dtype size of them).
    pub bytes: Vec<u8>,
}

/// A tensor's header entry: name, dtype and shape (its bytes come later).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn byte_len(&self) -> Option<usize> {
        self.shape.iter().try_fold(self.dtype.size(), |a, &d| a.checked_mul(d))
    }
}

/// Serialises the header of `specs` (in the given order, data back to back) padded with
/// spaces to a multiple of 8 bytes, so that the data section is 8-byte aligned.
fn header_bytes(specs: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    }
    let mut offset = 0usize;
    for t in specs {
        let len = t.byte_len().ok_or_else(|| {
            ModelError::BadInput(format!("tensor {}: shape {:?} overflows", t.name, t.shape))
        })?;
        if obj.contains_key(&t.name) || t.name == "__metadata__" {
            return Err(ModelError::BadInput(format!("tensor name {} is given twice or reserved", t.name)));
        }
        let end = offset + len;
        obj.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json =
        serde_json::to_vec(&serde_json::Value::Object(obj)).expect("a JSON value always serialises");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    Ok(json)
}

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn write_file(path: &Path, tensors: &[TensorData], metadata: &BTreeMap<String, String>) -> Result<()> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() })
        .collect();
    write_streaming(path, &specs, metadata, |i| Ok(std::borrow::Cow::Borrowed(&tensors[i].bytes)))
}

/// Writes a file atomically, asking `bytes(i)` for the data of `specs[i]` one tensor at a
/// time (so that a large model is never converted to bytes all at once).
pub fn write_streaming<'a>(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut bytes: impl FnMut(usize) -> Result<std::borrow::Cow<'a, [u8]>>,
) -> Result<()> {
    let header = header_bytes(specs, metadata)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| ModelError::BadInput(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let io = io_err(&tmp);
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err(&tmp))?);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err(&tmp))?;
        w.write_all(&header).map_err(io_err(&tmp))?;
        for (i, spec) in specs.iter().enumerate() {
            let data = bytes(i)?;
            if Some(data.len()) != spec.byte_len() {
                return Err(ModelError::BadInput(format!(
                    "tensor {}: {} bytes for {} {:?}",
                    spec.name,
                    data.len(),
                    spec.dtype.name(),
                    spec.shape
                )));
            }
            w.write_all(&data).map_err(io_err(&tmp))?;
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a small text file (such as `config.json`) atomically.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| ModelError::BadInput(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    Ok(())
}
