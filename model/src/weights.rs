//! The weights of a checkpoint folder in whichever layout the Hugging Face Hub ships them:
//! one `model.safetensors`, safetensors shards listed by `model.safetensors.index.json`, one
//! PyTorch `pytorch_model.bin`, or PyTorch shards listed by `pytorch_model.bin.index.json`.
//!
//! [`TensorSource`] is what the model loader reads from; a [`MappedFile`], a [`TorchFile`] and
//! a whole [`CheckpointWeights`] folder all are one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{io_err, ModelError, Result};
use crate::pytorch::TorchFile;
use crate::safetensors::{MappedFile, TensorView};

/// Named tensors a model can be loaded from.
pub trait TensorSource {
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<&str>;
    /// The tensor called `name`, or [`ModelError::MissingTensor`].
    fn tensor(&self, name: &str) -> Result<TensorView<'_>>;
    /// A hint that tensor `name` has been copied out: its mapped pages may be dropped.
    fn release(&self, name: &str);
}

impl TensorSource for MappedFile {
    fn names(&self) -> Vec<&str> {
        MappedFile::names(self).collect()
    }

    fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        MappedFile::tensor(self, name)
    }

    fn release(&self, name: &str) {
        MappedFile::release(self, name)
    }
}

impl TensorSource for TorchFile {
    fn names(&self) -> Vec<&str> {
        TorchFile::names(self).collect()
    }

    fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        TorchFile::tensor(self, name)
    }

    fn release(&self, name: &str) {
        TorchFile::release(self, name)
    }
}

/// One weights file of either format.
#[derive(Debug)]
enum WeightFile {
    Safetensors(MappedFile),
    Torch(TorchFile),
}

impl WeightFile {
    /// Opens `path` by its content: a PyTorch zip archive or legacy pickle, else safetensors.
    fn open(path: &Path) -> Result<WeightFile> {
        let mut head = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(io_err(path))?;
            f.read(&mut head).map_err(io_err(path))?
        };
        let head = &head[..n];
        if head == b"PK\x03\x04" || head == [0x80, 0x02, 0x8a, 0x0a] {
            Ok(WeightFile::Torch(TorchFile::open(path)?))
        } else {
            Ok(WeightFile::Safetensors(MappedFile::open(path)?))
        }
    }

    fn source(&self) -> &dyn TensorSource {
        match self {
            WeightFile::Safetensors(f) => f,
            WeightFile::Torch(f) => f,
        }
    }
}

/// The weights file names a checkpoint folder is searched for, in order: a single file, then
/// an index of shards; safetensors before PyTorch.
pub const WEIGHT_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The weights of one checkpoint: a single file, or the shards an index lists.
#[derive(Debug)]
pub struct CheckpointWeights {
    files: Vec<WeightFile>,
    /// Which file holds each tensor.
    by_name: BTreeMap<String, usize>,
    /// The file (or index) the weights were opened from.
    path: PathBuf,
}

impl CheckpointWeights {
    /// The weights in folder `dir`: the first of [`WEIGHT_FILES`] that exists.
    pub fn open_dir(dir: &Path) -> Result<CheckpointWeights> {
        match WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
            Some(path) => CheckpointWeights::open(&path),
            None => {
                Err(ModelError::NoWeights { dir: dir.to_path_buf(), looked_for: WEIGHT_FILES.join(", ") })
            }
        }
    }

    /// The weights in `path`: a safetensors or PyTorch file, or (ending in `.index.json`) a
    /// shard index whose shards lie beside it.
    pub fn open(path: &Path) -> Result<CheckpointWeights> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".index.json") {
            return CheckpointWeights::open_index(path);
        }
        let file = WeightFile::open(path)?;
        let by_name = file.source().names().into_iter().map(|n| (n.to_string(), 0)).collect();
        Ok(CheckpointWeights { files: vec![file], by_name, path: path.to_path_buf() })
    }

    /// A Hugging Face shard index: `{"weight_map": {"<tensor>": "<shard file>", ...}}`. Each
    /// shard is opened once, and every tensor the index names must be in its shard.
    fn open_index(path: &Path) -> Result<CheckpointWeights> {
        let bad = |reason: String| ModelError::BadIndex { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad("no weight_map object".into()))?;
        if map.is_empty() {
            return Err(bad("the weight_map is empty".into()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shard_index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut by_name = BTreeMap::new();
        for (tensor, shard) in map {
            let shard =
                shard.as_str().ok_or_else(|| bad(format!("the shard of {tensor} is not a file name")))?;
            // Shards lie beside the index: a bare file name, never a path out of the folder.
            let plain = Path::new(shard).components().count() == 1
                && matches!(Path::new(shard).components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(bad(format!(
                    "shard {shard:?} of {tensor} is not a file name in the index's folder"
                )));
            }
            let i = match shard_index.get(shard) {
                Some(&i) => i,
                None => {
                    files.push(WeightFile::open(&dir.join(shard))?);
                    shard_index.insert(shard, files.len() - 1);
                    files.len() - 1
                }
            };
            files[i].source().tensor(tensor).map_err(|_| bad(format!("{shard} does not hold {tensor}")))?;
            by_name.insert(tensor.clone(), i);
        }
        Ok(CheckpointWeights { files, by_name, path: path.to_path_buf() })
    }

    /// The weights file, or the shard index, these weights come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many files hold the weights.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

impl TensorSource for CheckpointWeights {
    fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        match self.by_name.get(name) {
            Some(&i) => self.files[i].source().tensor(name),
            None => Err(ModelError::MissingTensor { name: name.to_string() }),
        }
    }

    fn release(&self, name: &str) {
        if let Some(&i) = self.by_name.get(name) {
            self.files[i].source().release(name);
        }
    }
}
