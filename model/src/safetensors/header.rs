//! Parsing and validating a safetensors header.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// Largest header accepted (the reference implementation's limit is 100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The element types of the safetensors format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Signed 16-bit.
    I16,
    /// Unsigned 16-bit.
    U16,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit.
    I32,
    /// Unsigned 32-bit.
    U32,
    /// IEEE single.
    F32,
    /// Signed 64-bit.
    I64,
    /// Unsigned 64-bit.
    U64,
    /// IEEE double.
    F64,
}

impl Dtype {
    /// Parses the header's dtype string (`"F32"`, `"BF16"`, ...).
    pub fn from_name(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    /// The header's name for this dtype.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F64 => "F64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }
}

/// Where one tensor lives in the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range in the data section (relative to its start).
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A parsed, validated header.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data section in the file (8 + header length).
    pub data_start: usize,
}

fn corrupt(path: &str, reason: String) -> ModelError {
    ModelError::CorruptFile { path: path.to_string(), reason }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// Parses the header of a safetensors file held in `bytes` (the whole file) and checks every
/// tensor against the file: a known dtype, byte ranges inside the data section whose size is
/// the shape's element count times the dtype size, no two tensors overlapping. `path` only
/// names the file in errors. Never panics.
pub fn parse(bytes: &[u8], path: &str) -> Result<Header> {
    let len_bytes: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        corrupt(path, format!("truncated: {} bytes, the header length alone needs 8", bytes.len()))
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(corrupt(
            path,
            format!("header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit"),
        ));
    }
    let header_len = header_len as usize;
    let data_start = 8 + header_len;
    let json = bytes.get(8..data_start).ok_or_else(|| {
        corrupt(
            path,
            format!("truncated: the header claims {header_len} bytes but the file has {}", bytes.len()),
        )
    })?;
    let text = std::str::from_utf8(json).map_err(|e| corrupt(path, format!("header is not UTF-8: {e}")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| corrupt(path, format!("header is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| corrupt(path, "header is not a JSON object".into()))?;
    let data_len = bytes.len() - data_start;
    let mut header = Header { data_start, ..Header::default() };
    for (name, entry) in obj {
        if name == "__metadata__" {
            let map =
                entry.as_object().ok_or_else(|| corrupt(path, "__metadata__ is not an object".into()))?;
            for (k, v) in map {
                let s = v.as_str().ok_or_else(|| corrupt(path, format!("metadata {k:?} is not a string")))?;
                header.metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let info = parse_entry(name, entry, data_len).map_err(|reason| corrupt(path, reason))?;
        header.tensors.insert(name.clone(), info);
    }
    let mut ranges: Vec<(usize, usize, &str)> =
        header.tensors.iter().map(|(n, i)| (i.start, i.end, n.as_str())).collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(corrupt(path, format!("tensors {} and {} overlap", w[0].2, w[1].2)));
        }
    }
    Ok(header)
}

fn parse_entry(name: &str, entry: &Value, data_len: usize) -> std::result::Result<TensorInfo, String> {
    let obj = entry.as_object().ok_or_else(|| format!("tensor {name}: entry is not an object"))?;
    let dtype_name =
        obj.get("dtype").and_then(Value::as_str).ok_or_else(|| format!("tensor {name}: missing dtype"))?;
    let dtype =
        Dtype::from_name(dtype_name).ok_or_else(|| format!("tensor {name}: unknown dtype {dtype_name:?}"))?;
    let shape: Vec<usize> = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor {name}: missing shape"))?
        .iter()
        .map(as_usize)
        .collect::<Option<_>>()
        .ok_or_else(|| format!("tensor {name}: shape is not a list of sizes"))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| format!("tensor {name}: data_offsets is not a pair"))?;
    let (start, end) = match (as_usize(&offsets[0]), as_usize(&offsets[1])) {
        (Some(s), Some(e)) if s <= e => (s, e),
        _ => return Err(format!("tensor {name}: bad data_offsets {offsets:?}")),
    };
    let bytes = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
    if end - start != bytes {
        return Err(format!(
            "tensor {name}: {} bytes at {start}..{end}, but {dtype_name} {shape:?} needs {bytes}",
            end - start
        ));
    }
    if end > data_len {
        return Err(format!(
            "tensor {name}: truncated, bytes {start}..{end} but the data section has {data_len}"
        ));
    }
    Ok(TensorInfo { dtype, shape, start, end })
}
