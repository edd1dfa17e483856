//! The table of adjacent symbol pairs the merge loop tracks: each pair gets a dense id, a
//! weighted count and the positions where it may occur (a lazy index: positions are appended as
//! the pair appears and checked against the words when used, never removed one by one). Ids of
//! pairs whose count falls to zero are recycled.
//!
//! The positions found when the words are first scanned sit in one flat array, grouped by pair
//! (read sequentially when the pair is merged); the ones recorded later are chains of
//! fixed-size chunks in one arena, so appending never reallocates and dropping a whole list is
//! O(1) (its chain joins the free chain): the merge loop creates and drops millions of short
//! lists.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for pair keys `(a << 32) | b` (a full 64-bit mix, so that neither half alone picks
/// the bucket).
#[derive(Default, Clone, Copy)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    #[inline]
    fn write_u64(&mut self, k: u64) {
        let h = (k ^ (k >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.0 = (h ^ (h >> 32)).wrapping_mul(0x94D0_49BB_1331_11EB);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash map keyed by pair keys.
pub(crate) type PairMap<V> = HashMap<u64, V, BuildHasherDefault<PairHasher>>;

/// The key of pair `(a, b)`.
#[inline]
pub(crate) fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// End of a chain.
const NIL: u32 = u32::MAX;
/// Positions per chunk (a chunk is 32 bytes: the positions and the link to the next chunk).
const CHUNK: usize = 7;

#[derive(Clone, Copy)]
struct Chunk {
    pos: [u32; CHUNK],
    next: u32,
}

/// A list of positions: a chain of chunks, all full but the last, which holds `fill`.
#[derive(Clone, Copy)]
struct PosList {
    head: u32,
    tail: u32,
    fill: u32,
}

impl PosList {
    const EMPTY: PosList = PosList { head: NIL, tail: NIL, fill: 0 };
}

/// One tracked pair.
#[derive(Clone, Copy)]
pub(crate) struct Pair {
    /// The pair's key (stale for a free id).
    pub(crate) key: u64,
    /// Its weighted count (0 for a free id).
    pub(crate) count: i64,
    /// The merge step it was last touched in (the merge loop's bookkeeping).
    pub(crate) touched_in: u32,
    /// Its range in the flat array of first positions.
    first: (u32, u32),
    list: PosList,
}

/// Tracked pairs (see the module docs).
pub(crate) struct PairTable {
    index: PairMap<u32>,
    /// The pairs, by id.
    pub(crate) pairs: Vec<Pair>,
    free: Vec<u32>,
    chunks: Vec<Chunk>,
    free_chunks: u32,
    first: Vec<u32>,
}

impl Default for PairTable {
    fn default() -> Self {
        PairTable {
            index: PairMap::default(),
            pairs: Vec::new(),
            free: Vec::new(),
            chunks: Vec::new(),
            free_chunks: NIL,
            first: Vec::new(),
        }
    }
}

impl PairTable {
    /// Number of tracked pairs.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The id of `(a, b)`, if tracked.
    #[inline]
    pub(crate) fn get(&self, a: u32, b: u32) -> Option<u32> {
        self.index.get(&key(a, b)).copied()
    }

    /// The id of `(a, b)`, tracking it (count 0, no positions) if it is not yet.
    #[inline]
    pub(crate) fn get_or_insert(&mut self, a: u32, b: u32) -> u32 {
        let k = key(a, b);
        match self.index.entry(k) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.pairs[id as usize].key = k;
                        id
                    }
                    None => {
                        self.pairs.push(Pair {
                            key: k,
                            count: 0,
                            touched_in: 0,
                            first: (0, 0),
                            list: PosList::EMPTY,
                        });
                        self.pairs.len() as u32 - 1
                    }
                };
                e.insert(id);
                id
            }
        }
    }

    /// Stop tracking pair `id` (its count is 0): its positions are dropped and its id recycled.
    pub(crate) fn remove(&mut self, id: u32) {
        debug_assert_eq!(self.pairs[id as usize].count, 0);
        self.index.remove(&self.pairs[id as usize].key);
        self.drop_positions(id);
        self.free.push(id);
    }

    /// Ids of the tracked pairs with a positive count.
    pub(crate) fn live(&self) -> impl Iterator<Item = u32> + '_ {
        // Free ids have count 0; scanning the pairs in order beats walking the hash index.
        self.pairs.iter().enumerate().filter(|(_, p)| p.count > 0).map(|(id, _)| id as u32)
    }

    /// Set the first positions of every pair at once: pair `id`'s are
    /// `positions[ends[id - 1]..ends[id]]` (from 0 for the first id).
    pub(crate) fn set_first_positions(&mut self, positions: Vec<u32>, ends: &[u32]) {
        let mut start = 0;
        for (p, &end) in self.pairs.iter_mut().zip(ends) {
            p.first = (start, end - start);
            start = end;
        }
        self.first = positions;
    }

    /// Record that pair `id` may occur at `pos`.
    #[inline]
    pub(crate) fn push_position(&mut self, id: u32, pos: u32) {
        let mut list = self.pairs[id as usize].list;
        if list.tail == NIL || list.fill as usize == CHUNK {
            let c = match self.free_chunks {
                NIL => {
                    self.chunks.push(Chunk { pos: [0; CHUNK], next: NIL });
                    self.chunks.len() as u32 - 1
                }
                c => {
                    self.free_chunks = self.chunks[c as usize].next;
                    self.chunks[c as usize].next = NIL;
                    c
                }
            };
            if list.tail == NIL {
                list.head = c;
            } else {
                self.chunks[list.tail as usize].next = c;
            }
            list.tail = c;
            list.fill = 0;
        }
        self.chunks[list.tail as usize].pos[list.fill as usize] = pos;
        list.fill += 1;
        self.pairs[id as usize].list = list;
    }

    /// Append pair `id`'s positions to `out`, in the order they were recorded, and drop them.
    pub(crate) fn take_positions(&mut self, id: u32, out: &mut Vec<u32>) {
        let (start, len) = self.pairs[id as usize].first;
        out.extend_from_slice(&self.first[start as usize..(start + len) as usize]);
        let list = self.pairs[id as usize].list;
        let mut c = list.head;
        while c != NIL {
            let chunk = &self.chunks[c as usize];
            let n = if c == list.tail { list.fill as usize } else { CHUNK };
            out.extend_from_slice(&chunk.pos[..n]);
            c = chunk.next;
        }
        self.drop_positions(id);
    }

    /// Drop pair `id`'s positions: its chain joins the free chain.
    fn drop_positions(&mut self, id: u32) {
        self.pairs[id as usize].first = (0, 0);
        let list = std::mem::replace(&mut self.pairs[id as usize].list, PosList::EMPTY);
        if list.head != NIL {
            self.chunks[list.tail as usize].next = self.free_chunks;
            self.free_chunks = list.head;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_recycled() {
        let mut t = PairTable::default();
        let x = t.get_or_insert(1, 2);
        let y = t.get_or_insert(2, 1);
        assert_ne!(x, y);
        assert_eq!(t.get_or_insert(1, 2), x);
        assert_eq!(t.get(2, 1), Some(y));
        t.remove(x);
        assert_eq!(t.get(1, 2), None);
        let z = t.get_or_insert(7, 7);
        assert_eq!(z, x);
        assert_eq!(t.pairs[z as usize].key, key(7, 7));
        assert_eq!(t.len(), 2);
        t.pairs[y as usize].count = 3;
        assert_eq!(t.live().collect::<Vec<_>>(), vec![y]);
    }

    #[test]
    fn position_lists_chain_and_recycle() {
        let mut t = PairTable::default();
        let x = t.get_or_insert(1, 2);
        let y = t.get_or_insert(3, 4);
        t.set_first_positions(vec![], &[0, 0]);
        for p in 0..20 {
            t.push_position(x, p);
            if p % 3 == 0 {
                t.push_position(y, 100 + p);
            }
        }
        let mut out = Vec::new();
        t.take_positions(x, &mut out);
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        let chunks = t.chunks.len();
        // The freed chunks are reused.
        for p in 0..14 {
            t.push_position(x, p);
        }
        assert_eq!(t.chunks.len(), chunks);
        out.clear();
        t.take_positions(y, &mut out);
        assert_eq!(out, (0..20).filter(|p| p % 3 == 0).map(|p| 100 + p).collect::<Vec<_>>());
        out.clear();
        t.take_positions(x, &mut out);
        assert_eq!(out, (0..14).collect::<Vec<_>>());
    }

    #[test]
    fn first_positions_come_before_later_ones() {
        let mut t = PairTable::default();
        let x = t.get_or_insert(1, 2);
        let y = t.get_or_insert(3, 4);
        t.set_first_positions(vec![5, 9, 1, 2, 3], &[2, 5]);
        t.push_position(y, 40);
        let mut out = Vec::new();
        t.take_positions(y, &mut out);
        assert_eq!(out, vec![1, 2, 3, 40]);
        out.clear();
        t.take_positions(y, &mut out);
        assert!(out.is_empty());
        t.take_positions(x, &mut out);
        assert_eq!(out, vec![5, 9]);
    }
}
