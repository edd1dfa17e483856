//! PyTorch checkpoints (`pytorch_model.bin`, `*.pt`) read without Python and without running
//! any of the pickle's code: the state dict's tensors become borrowed slices of the
//! memory-mapped file, like a safetensors file's.
//!
//! Two layouts are read:
//! - the zip format of `torch.save` since PyTorch 1.6: `<name>/data.pkl` (the state dict, its
//!   tensors pointing at storages by key), `<name>/data/<key>` (each storage's bytes, stored
//!   uncompressed) and `<name>/byteorder`;
//! - the legacy format before it (OpenAI's GPT-2 `pytorch_model.bin` on the Hugging Face Hub):
//!   a magic-number pickle, the protocol version, a system-info pickle, the state dict, the list
//!   of storage keys, then each storage as an element count and its bytes.
//!
//! The state dict may be the pickle's root or sit inside a training checkpoint's dict (under
//! one of [`pickle::WRAPPER_KEYS`]); a prefix that wrapping the model adds to every name
//! (`module.`, `_orig_mod.`) is removed.
//!
//! - [`zip`]: the stored-entry ZIP directory (ZIP64 included).
//! - [`pickle`]: the code-free pickle interpreter.

pub mod pickle;
pub mod zip;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{io_err, ModelError, Result};
use crate::safetensors::{Dtype, TensorView};
use pickle::{Node, StorageDtype, TensorRef};

/// The legacy format's first pickle: `0x1950a86a20f9469cfc6c` as a 10-byte `LONG1`.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The legacy format's protocol version.
const LEGACY_PROTOCOL: i64 = 1001;

/// Where a tensor's bytes are: a range of the map, or a copy gathered from a strided view.
#[derive(Debug)]
enum Bytes {
    Mapped(Range<usize>),
    Owned(Vec<u8>),
}

/// One tensor of the state dict.
#[derive(Debug)]
struct Record {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Bytes,
}

/// A PyTorch checkpoint file mapped into memory, its state dict's tensors ready to borrow.
#[derive(Debug)]
pub struct TorchFile {
    path: PathBuf,
    map: Mmap,
    tensors: BTreeMap<String, Record>,
}

fn dtype_of(d: StorageDtype) -> Dtype {
    match d {
        StorageDtype::F64 => Dtype::F64,
        StorageDtype::F32 => Dtype::F32,
        StorageDtype::F16 => Dtype::F16,
        StorageDtype::BF16 => Dtype::BF16,
        StorageDtype::I64 => Dtype::I64,
        StorageDtype::I32 => Dtype::I32,
        StorageDtype::I16 => Dtype::I16,
        StorageDtype::I8 => Dtype::I8,
        StorageDtype::U8 => Dtype::U8,
        StorageDtype::Bool => Dtype::Bool,
    }
}

/// A storage's bytes: a range of the map holding at least its declared elements.
struct Storage {
    range: Range<usize>,
    dtype: StorageDtype,
}

/// Builds the record of tensor `name` viewing `storage`, checking that every element the view
/// reaches lies inside the storage. A strided view is gathered into a copy, which `budget`
/// (bytes still allowed for copies) bounds: a view with zero strides can describe far more
/// elements than the file holds, and a damaged file must not make us allocate them.
fn record(
    map: &[u8],
    name: &str,
    t: &TensorRef,
    storage: &Storage,
    budget: &mut usize,
) -> Result<Record, String> {
    if t.dtype != storage.dtype {
        return Err(format!("tensor {name} views storage {} with another dtype", t.key));
    }
    let size = t.dtype.size();
    let storage_bytes = storage.range.len();
    if t.storage_numel.checked_mul(size as u64).is_none_or(|b| b > storage_bytes as u64) {
        return Err(format!(
            "storage {} declares {} elements but holds {storage_bytes} bytes",
            t.key, t.storage_numel
        ));
    }
    let too_big = || format!("tensor {name}: shape {:?} is too large", t.shape);
    let shape: Vec<usize> =
        t.shape.iter().map(|&d| usize::try_from(d).map_err(|_| too_big())).collect::<Result<_, _>>()?;
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(too_big)?;
    let bytes = if numel == 0 {
        Bytes::Owned(Vec::new())
    } else {
        // The last element the view reaches: offset + Σ (size_i - 1)·stride_i.
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
        if last.is_none_or(|l| l >= t.storage_numel) {
            return Err(format!(
                "tensor {name}: shape {:?}, stride {:?} at offset {} reaches past its storage of {} elements",
                t.shape, t.stride, t.offset, t.storage_numel
            ));
        }
        let base = storage.range.start + t.offset as usize * size;
        let mut expected = 1u64;
        let contiguous = t.shape.iter().zip(&t.stride).rev().all(|(&d, &s)| {
            let ok = d == 1 || s == expected;
            expected = expected.saturating_mul(d);
            ok
        });
        if contiguous {
            Bytes::Mapped(base..base + numel * size)
        } else {
            // A strided view: gather its elements in row-major order.
            let bytes = numel.checked_mul(size).filter(|&b| b <= *budget).ok_or_else(|| {
                format!(
                    "tensor {name}: a strided view of {numel} elements (shape {:?}, stride {:?}) would \
                     copy more than the file holds; save it with .contiguous()",
                    t.shape, t.stride
                )
            })?;
            *budget -= bytes;
            let mut out = Vec::with_capacity(bytes);
            let mut index = vec![0usize; shape.len()];
            for _ in 0..numel {
                let at: usize = index.iter().zip(&t.stride).map(|(&i, &s)| i * s as usize).sum();
                out.extend_from_slice(&map[base + at * size..base + (at + 1) * size]);
                for dim in (0..shape.len()).rev() {
                    index[dim] += 1;
                    if index[dim] < shape[dim] {
                        break;
                    }
                    index[dim] = 0;
                }
            }
            Bytes::Owned(out)
        }
    };
    Ok(Record { dtype: dtype_of(t.dtype), shape, bytes })
}

/// The state dict's tensors, each checked against the storages that `storage` finds.
fn records(
    map: &[u8],
    state: &pickle::Pickle,
    storage: impl Fn(&str) -> Result<Storage, String>,
) -> Result<BTreeMap<String, Record>, String> {
    let tensors =
        state.tensors().ok_or("the pickled object is not a state dict (a dict of names to tensors)")?;
    if tensors.is_empty() {
        return Err("the state dict holds no tensors".into());
    }
    let mut out = BTreeMap::new();
    // Copies of strided views may add up to the file's own size (a transposed weight is
    // copied once), never more.
    let mut budget = map.len();
    for (name, t) in tensors {
        let s = storage(&t.key)?;
        out.insert(name.to_string(), record(map, name, t, &s, &mut budget)?);
    }
    Ok(out)
}

/// The zip format: `data.pkl` under one top-level folder, storages in `data/`.
fn read_zip(map: &[u8]) -> Result<BTreeMap<String, Record>, String> {
    let dir = zip::read_directory(map)?;
    let pkl = dir
        .entries
        .keys()
        .find(|n| *n == "data.pkl" || n.strip_suffix("/data.pkl").is_some_and(|p| !p.contains('/')))
        .ok_or("no data.pkl in the archive: not a torch.save file")?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
    if let Some(order) = dir.entries.get(&format!("{prefix}byteorder")) {
        let text = &map[order.start..order.start + order.len];
        if text != b"little" {
            return Err(format!("byte order {:?} is not supported", String::from_utf8_lossy(text)));
        }
    }
    let pkl = dir.entries[pkl];
    let state = pickle::parse(&map[pkl.start..pkl.start + pkl.len])?;
    let dtypes = storage_dtypes(&state);
    records(map, &state, |key| {
        let entry = dir
            .entries
            .get(&format!("{prefix}data/{key}"))
            .ok_or_else(|| format!("storage {key} has no record {prefix}data/{key}"))?;
        let dtype = *dtypes.get(key).ok_or_else(|| format!("storage {key} is not in the pickle"))?;
        Ok(Storage { range: entry.start..entry.start + entry.len, dtype })
    })
}

/// Each storage key's dtype, from the storages the pickle names.
fn storage_dtypes(p: &pickle::Pickle) -> HashMap<String, StorageDtype> {
    p.nodes
        .iter()
        .filter_map(|n| match n {
            Node::Storage { dtype, key, .. } => Some((key.clone(), *dtype)),
            _ => None,
        })
        .collect()
}

/// The legacy format: five pickles, then the storages in the order of the fifth.
fn read_legacy(map: &[u8]) -> Result<BTreeMap<String, Record>, String> {
    let mut at = 0;
    let mut next = |what: &str| -> Result<pickle::Pickle, String> {
        let p = pickle::parse(&map[at..]).map_err(|e| format!("{what}: {e}"))?;
        at += p.consumed;
        Ok(p)
    };
    let magic = next("magic number")?;
    if magic.nodes[magic.root] != Node::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err("not a PyTorch checkpoint (wrong magic number)".into());
    }
    let protocol = next("protocol version")?;
    if protocol.nodes[protocol.root] != Node::Int(LEGACY_PROTOCOL) {
        return Err(format!("legacy protocol {:?} is not {LEGACY_PROTOCOL}", protocol.nodes[protocol.root]));
    }
    let info = next("system info")?;
    if let Node::Dict(pairs) = &info.nodes[info.root] {
        let little = pairs.iter().find(|(k, _)| info.nodes[*k] == Node::Str("little_endian".into()));
        if let Some(&(_, v)) = little {
            if info.nodes[v] != Node::Bool(true) {
                return Err("the file was written on a big-endian machine".into());
            }
        }
    }
    let state = next("state dict")?;
    let keys = next("storage keys")?;
    let keys: Vec<String> = keys
        .strings()
        .ok_or("the storage key list is not a list of strings")?
        .into_iter()
        .map(String::from)
        .collect();
    let dtypes = storage_dtypes(&state);
    let mut storages = HashMap::new();
    for key in keys {
        let dtype = *dtypes.get(&key).ok_or_else(|| format!("storage {key} is not in the pickle"))?;
        let count = map
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| format!("the file ends before storage {key}"))?;
        let len = count
            .checked_mul(dtype.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| at + 8 + n <= map.len())
            .ok_or_else(|| format!("storage {key} of {count} elements runs past the end of the file"))?;
        storages.insert(key, at + 8..at + 8 + len);
        at += 8 + len;
    }
    records(map, &state, |key| {
        let range = storages.get(key).cloned().ok_or_else(|| format!("storage {key} is not in the file"))?;
        Ok(Storage { range, dtype: dtypes[key] })
    })
}

/// The prefixes that wrapping a model adds to every name of its state dict:
/// `DistributedDataParallel` / `DataParallel` (`module.`) and `torch.compile` (`_orig_mod.`).
pub const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

/// `tensors` with a prefix of [`WRAPPER_PREFIXES`] removed when every name has it (repeatedly:
/// a compiled model inside DDP has both).
fn without_wrapper_prefix(mut tensors: BTreeMap<String, Record>) -> BTreeMap<String, Record> {
    while let Some(prefix) =
        WRAPPER_PREFIXES.iter().find(|p| !tensors.is_empty() && tensors.keys().all(|k| k.starts_with(*p)))
    {
        tensors = tensors.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
    }
    tensors
}

impl TorchFile {
    /// Maps `path` and reads its state dict: every tensor's dtype, shape and bytes checked
    /// against the file.
    pub fn open(path: impl AsRef<Path>) -> Result<TorchFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: a read-only map; as with any mmap the file must not be truncated while
        // mapped (checkpoints are replaced by rename, never rewritten in place).
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let corrupt = |reason: String| ModelError::CorruptPytorch { path: path.to_path_buf(), reason };
        let tensors = if map.starts_with(b"PK\x03\x04") {
            read_zip(&map).map_err(corrupt)?
        } else if map.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
            read_legacy(&map).map_err(corrupt)?
        } else {
            return Err(corrupt("neither a torch.save zip archive nor the legacy format".into()));
        };
        Ok(TorchFile { path: path.to_path_buf(), map, tensors: without_wrapper_prefix(tensors) })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor called `name`, or [`ModelError::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (key, r) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        let data = match &r.bytes {
            Bytes::Mapped(range) => &self.map[range.clone()],
            Bytes::Owned(v) => v.as_slice(),
        };
        Ok(TensorView { name: key, dtype: r.dtype, shape: &r.shape, data })
    }

    /// Drops this process's resident pages of tensor `name` (a hint, as
    /// [`MappedFile::release`](crate::safetensors::MappedFile::release)).
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(Record { bytes: Bytes::Mapped(range), .. }) = self.tensors.get(name) {
            // SAFETY: a read-only private map never written through; MADV_DONTNEED only
            // drops page references and later reads fault the same bytes back in. (Tied
            // tensors sharing these pages read them again from the file.)
            let _ = unsafe {
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }
}
