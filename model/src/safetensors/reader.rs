//! A safetensors file mapped into memory: tensors are borrowed slices of the map, so the
//! file's bytes are never copied into a second buffer by the reader.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::header::{parse, Dtype, Header, TensorInfo};
use crate::error::{io_err, ModelError, Result};

/// A memory-mapped safetensors file with its parsed header.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

/// One tensor of a mapped file: its dtype, shape and raw little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// The bytes, borrowed from the map.
    pub data: &'a [u8],
}

impl MappedFile {
    /// Maps `path` and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<MappedFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only; as with any mmap the file must not be truncated by
        // another process while mapped, which checkpoints written atomically never are (a
        // new checkpoint replaces the directory entry, not the mapped inode).
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let header = parse(&map, &path.display().to_string())?;
        Ok(MappedFile { path: path.to_path_buf(), map, header })
    }

    /// Drops this process's resident pages of tensor `name` (a hint; the bytes stay readable
    /// and are read from the file again if touched). A loader calls it after copying a tensor
    /// so that the mapped file and the loaded weights are not resident together.
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(info) = self.header.tensors.get(name) {
            // SAFETY: the map is a read-only, private mapping of a file that is never written
            // through it; MADV_DONTNEED only drops page references, and any later access
            // faults the same bytes back in from the file.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.header.data_start + info.start,
                    info.end - info.start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.header.tensors.keys().map(String::as_str)
    }

    /// The tensor called `name`, or [`ModelError::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (key, info) = self
            .header
            .tensors
            .get_key_value(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        Ok(self.view(key, info))
    }

    fn view<'a>(&'a self, name: &'a str, info: &'a TensorInfo) -> TensorView<'a> {
        let start = self.header.data_start + info.start;
        let end = self.header.data_start + info.end;
        TensorView { name, dtype: info.dtype, shape: &info.shape, data: &self.map[start..end] }
    }
}

impl TensorView<'_> {
    /// The values widened to f32 (from F32, BF16, F16 or F64 data).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let d = self.data;
        if self.dtype == Dtype::F32 && cfg!(target_endian = "little") {
            // An aligned slice is copied as is; an unaligned one is decoded below.
            if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(d) {
                return Ok(v.to_vec());
            }
        }
        Ok(match self.dtype {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::BF16 => {
                d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::F16 => {
                d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            other => return Err(self.dtype_error(other, "expected a float dtype")),
        })
    }

    /// The values as bf16 (BF16 data as is; F32 rounded to nearest even).
    pub fn to_bf16(&self) -> Result<Vec<half::bf16>> {
        match self.dtype {
            Dtype::BF16 => {
                Ok(self.data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]])).collect())
            }
            _ => Ok(self.to_f32()?.into_iter().map(half::bf16::from_f32).collect()),
        }
    }

    /// Integer values (I64, I32, U32 or U8 data) as i64.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let d = self.data;
        Ok(match self.dtype {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            Dtype::I32 => {
                d.chunks_exact(4).map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
            }
            Dtype::U32 => {
                d.chunks_exact(4).map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
            }
            Dtype::U8 => d.iter().map(|&b| i64::from(b)).collect(),
            other => return Err(self.dtype_error(other, "expected an integer dtype")),
        })
    }

    fn dtype_error(&self, dtype: Dtype, reason: &'static str) -> ModelError {
        ModelError::TensorDType { name: self.name.to_string(), dtype: dtype.name().to_string(), reason }
    }
}
