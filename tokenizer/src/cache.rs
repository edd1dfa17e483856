//! A bounded, sharded cache of encoded words shared by all encoding threads.

use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Mutex;

use crate::hash::{FxHashMap, FxHasher};

pub(crate) const CACHE_SHARDS: usize = 16;
/// Words longer than this (in bytes) are never cached.
pub(crate) const MAX_CACHED_WORD_BYTES: usize = 64;

/// A bounded, sharded word → ids cache shared by all threads. A shard that fills up is cleared.
#[derive(Debug)]
pub(crate) struct WordCache {
    shards: Vec<Mutex<FxHashMap<String, Vec<u32>>>>,
    per_shard: usize,
}

impl WordCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(CACHE_SHARDS);
        WordCache { shards: (0..CACHE_SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect(), per_shard }
    }

    /// The capacity this cache was made with (rounded up to whole shards).
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * CACHE_SHARDS
    }

    fn shard(&self, word: &str) -> &Mutex<FxHashMap<String, Vec<u32>>> {
        let h = BuildHasherDefault::<FxHasher>::default().hash_one(word);
        &self.shards[(h >> 59) as usize % CACHE_SHARDS]
    }

    pub(crate) fn get(&self, word: &str, out: &mut Vec<u32>) -> bool {
        if self.per_shard == 0 {
            return false;
        }
        let Ok(map) = self.shard(word).lock() else { return false };
        match map.get(word) {
            Some(ids) => {
                out.extend_from_slice(ids);
                true
            }
            None => false,
        }
    }

    pub(crate) fn put(&self, word: &str, ids: &[u32]) {
        if self.per_shard == 0 {
            return;
        }
        if let Ok(mut map) = self.shard(word).lock() {
            if map.len() >= self.per_shard {
                map.clear();
            }
            map.insert(word.to_string(), ids.to_vec());
        }
    }

    pub(crate) fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut m) = s.lock() {
                m.clear();
            }
        }
    }
}
