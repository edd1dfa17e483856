//! A prepared dataset: its manifest and every shard, opened (and validated) at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::tokenizer::RunTokenizer;

use super::error::{DataError, Result};
use super::manifest::{Manifest, MANIFEST_FILE};
use super::shard::Shard;

/// A prepared dataset directory (see [`prepare`](fn@super::prepare)), with every shard memory-mapped.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    shards: BTreeMap<(String, String), Shard>,
}

impl Dataset {
    /// Opens `dir/manifest.json` and every shard it lists; checks each shard's checksum, its
    /// vocabulary, its totals against the manifest and its source ids against the source list.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(DataError::NoData(format!(
                "{} does not exist: prepare the data first with `polylm data prepare`",
                manifest_path.display()
            )));
        }
        let manifest = Manifest::load(&manifest_path)?;
        let vocab = manifest.tokenizer.vocab_size;
        if manifest.tokenizer.eos_id >= vocab {
            return Err(DataError::corrupt(
                &manifest_path,
                format!("eos_id {} outside the vocabulary of {vocab}", manifest.tokenizer.eos_id),
            ));
        }
        let mut shards = BTreeMap::new();
        for (split, infos) in &manifest.splits {
            for info in infos {
                let rel = Path::new(&info.file);
                if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(DataError::corrupt(
                        &manifest_path,
                        format!("shard file {:?} is not inside the dataset directory", info.file),
                    ));
                }
                let path = dir.join(rel);
                let shard = Shard::open(&path)?;
                if shard.vocab_size() != vocab {
                    return Err(DataError::corrupt(
                        &path,
                        format!(
                            "written for a vocabulary of {}, the manifest says {vocab}",
                            shard.vocab_size()
                        ),
                    ));
                }
                let found = (shard.num_docs() as u64, shard.total_tokens(), shard.total_bytes());
                if found != (info.docs, info.tokens, info.bytes) {
                    return Err(DataError::corrupt(
                        &path,
                        format!(
                            "holds {} documents, {} tokens, {} bytes; the manifest says {}, {}, {}",
                            found.0, found.1, found.2, info.docs, info.tokens, info.bytes
                        ),
                    ));
                }
                let nsources = manifest.sources.len();
                if let Some(i) =
                    (0..shard.num_docs()).find(|&i| usize::from(shard.doc_meta(i).source) >= nsources)
                {
                    return Err(DataError::corrupt(
                        &path,
                        format!(
                            "document {i} has source id {}, but the manifest lists {nsources} sources",
                            shard.doc_meta(i).source
                        ),
                    ));
                }
                if shards.insert((split.clone(), info.lang.clone()), shard).is_some() {
                    return Err(DataError::corrupt(
                        &manifest_path,
                        format!("split {split:?} lists language {:?} twice", info.lang),
                    ));
                }
            }
        }
        Ok(Dataset { dir: dir.to_path_buf(), manifest, shards })
    }

    /// Checks that `t` is the tokenizer the data was prepared with
    /// ([`DataError::TokenizerMismatch`] otherwise).
    pub fn check_tokenizer(&self, t: &RunTokenizer) -> Result<()> {
        let found = t.fingerprint();
        let info = &self.manifest.tokenizer;
        if found != info.fingerprint || t.vocab_size() as u64 != u64::from(info.vocab_size) {
            return Err(DataError::TokenizerMismatch {
                data_dir: self.dir.clone(),
                expected: format!("{} (vocabulary {})", info.fingerprint, info.vocab_size),
                found: format!("{found} (vocabulary {})", t.vocab_size()),
            });
        }
        Ok(())
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The splits present (`train`, `valid`, `pairs`), sorted.
    pub fn splits(&self) -> Vec<String> {
        self.manifest.splits.keys().cloned().collect()
    }

    /// The languages of a split, sorted (empty when the split is absent).
    pub fn langs(&self, split: &str) -> Vec<String> {
        self.shards.keys().filter(|(s, _)| s == split).map(|(_, l)| l.clone()).collect()
    }

    /// The shard of `lang` in `split` ([`DataError::MissingLanguage`] when absent).
    pub fn shard(&self, split: &str, lang: &str) -> Result<&Shard> {
        self.shards
            .get(&(split.to_string(), lang.to_string()))
            .ok_or_else(|| DataError::MissingLanguage { lang: lang.to_string(), split: split.to_string() })
    }

    /// The id of a source name.
    pub fn source_id(&self, name: &str) -> Option<u16> {
        self.manifest.sources.iter().position(|s| s == name).and_then(|i| u16::try_from(i).ok())
    }

    /// The name of a source id.
    pub fn source_name(&self, id: u16) -> Option<&str> {
        self.manifest.sources.get(usize::from(id)).map(String::as_str)
    }

    /// The end-of-sequence id that separates packed documents.
    pub fn eos_id(&self) -> u32 {
        self.manifest.tokenizer.eos_id
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> u32 {
        self.manifest.tokenizer.vocab_size
    }

    /// Total tokens of a split.
    pub fn split_tokens(&self, split: &str) -> u64 {
        self.shards.iter().filter(|((s, _), _)| s == split).map(|(_, sh)| sh.total_tokens()).sum()
    }
}
