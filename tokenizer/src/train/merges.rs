//! Learning merges: the most frequent adjacent pair is merged, again and again.
//!
//! The words live in a [`SymbolBuffer`], and each tracked pair keeps the positions where it may
//! occur ([`PairTable`]), so merging one occurrence costs O(1): check that the pair is still
//! there, find the neighbours either side, move the counts of the pairs it breaks and makes, and
//! record where the new pairs are. The ids of the pairs an occurrence breaks are read from the
//! cells themselves (each cell knows the pair it starts); the ids of the pairs it makes are
//! cached per neighbour symbol within one merge, so most occurrences need no hash look-up. The
//! positions are visited with the cells and pairs of the occurrences a little ahead prefetched,
//! so that their cache misses overlap.
//!
//! A max-heap of `(count, pair)` with lazy invalidation picks the next pair; ties go to the
//! smaller pair ids, so training is deterministic. It holds only the pairs at or above a
//! threshold (see [`HEAP_TARGET`]). Pairs that would make a piece longer than `max_piece_chars`
//! characters are never merged, so they are not tracked at all.

use std::collections::BinaryHeap;

use crate::hash::FxHashMap;

use super::pairs::{key, PairMap, PairTable};
use super::symbols::{Cell, SymbolBuffer, DEAD, NO_PAIR, SEP};

/// A heap entry: a pair's count when it was pushed, and the pair. Larger counts come first, then
/// smaller pairs (`rev` is the complemented pair key); `id` finds the pair's current count.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    count: i64,
    rev: u64,
    id: u32,
}

/// The heap holds the pairs whose count is at least a threshold, chosen when the heap is
/// (re)built so that about this many pairs are in it; the others wait in the pair table until
/// the heap runs dry and is rebuilt with a lower threshold. Keeps the heap small (and in cache)
/// while most new pairs, which are rare, never enter it.
const HEAP_TARGET: usize = 1 << 16;

/// How many occurrences ahead the merge loop prefetches cells.
const PREFETCH_AHEAD: usize = 12;

/// Hint the CPU to bring `v[i]` into the cache (no effect if `i` is out of bounds).
#[inline(always)]
fn prefetch<T>(v: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = v.get(i) {
        // SAFETY: a prefetch only hints the cache; it reads nothing and cannot fault, and the
        // address is that of a live element anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(x as *const T as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

/// The two new pairs one merge of `(a, b)` into `c` makes, cached per neighbour symbol.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `(x, c)`, with the left neighbour `x`.
    Left = 0,
    /// `(c, y)`, with the right neighbour `y`.
    Right = 1,
}

/// A neighbour symbol's cached pair ids, one per role, each valid in the step it was set in.
#[derive(Clone, Copy, Default)]
struct Slots {
    step: [u32; 2],
    id: [u32; 2],
}

/// The pairs of one stretch of the buffer, with ids local to it (by first appearance from the
/// end): their keys and counts.
struct LocalPairs {
    keys: Vec<u64>,
    counts: Vec<i64>,
}

impl LocalPairs {
    /// Count the pairs of `cells` (single-character symbols) that can be merged, setting each
    /// cell's pair to its local id.
    fn count(cells: &mut [Cell], chars: &[u32], max_chars: u32, big: &[u64]) -> LocalPairs {
        /// Pairs of symbols below this are found in a dense table (the most frequent
        /// characters have the smallest ids), the others through a hash map.
        const DENSE: usize = 512;
        let mut dense = vec![NO_PAIR; DENSE * DENSE];
        let mut index: PairMap<u32> = PairMap::default();
        let mut out = LocalPairs { keys: Vec::new(), counts: Vec::new() };
        let mut next_sym = SEP;
        for cell in cells.iter_mut().rev() {
            let (x, y) = (cell.sym, next_sym);
            next_sym = x;
            if x == SEP || y == SEP || chars[x as usize] + chars[y as usize] > max_chars {
                continue;
            }
            let mut create = || {
                out.keys.push(key(x, y));
                out.counts.push(0);
                out.keys.len() as u32 - 1
            };
            let id = if (x as usize) < DENSE && (y as usize) < DENSE {
                let slot = &mut dense[x as usize * DENSE + y as usize];
                if *slot == NO_PAIR {
                    *slot = create();
                }
                *slot
            } else {
                *index.entry(key(x, y)).or_insert_with(create)
            };
            out.counts[id as usize] += SymbolBuffer::count_of(big, *cell) as i64;
            cell.pair = id;
        }
        out
    }

    /// Replace the local pair ids of `cells` by `ids[local]`.
    fn translate(cells: &mut [Cell], ids: &[u32]) {
        for cell in cells {
            if cell.pair != NO_PAIR {
                cell.pair = ids[cell.pair as usize];
            }
        }
    }
}

/// The merge loop's state.
struct Learner {
    cells: Vec<Cell>,
    big: Vec<u64>,
    /// Characters per symbol (the length of its span in the buffer).
    chars: Vec<u32>,
    max_chars: u32,
    pairs: PairTable,
    heap: BinaryHeap<Candidate>,
    /// Pairs below this count are not in the heap.
    threshold: i64,
    /// The heap's size when last built.
    built_len: usize,
    /// Per neighbour symbol.
    slots: Vec<Slots>,
    /// Pairs touched in this step, with their count before it.
    touched: Vec<(u32, i64)>,
    /// Positions of the pair being merged.
    positions: Vec<u32>,
    step: u32,
}

impl Learner {
    fn new(words: SymbolBuffer, chars: Vec<u32>, max_chars: u32) -> Self {
        let n = chars.len();
        let mut l = Learner {
            cells: words.cells,
            big: words.big,
            chars,
            max_chars,
            pairs: PairTable::default(),
            heap: BinaryHeap::new(),
            threshold: 1,
            built_len: 0,
            slots: vec![Slots::default(); n],
            touched: Vec::new(),
            positions: Vec::new(),
            step: 0,
        };
        l.count_pairs();
        l.rebuild_heap();
        l
    }

    /// Whether `(x, y)` can ever be merged.
    #[inline]
    fn mergeable(&self, x: u32, y: u32) -> bool {
        self.chars[x as usize] + self.chars[y as usize] <= self.max_chars
    }

    /// The initial pair counts and positions (every symbol is one character here). The two
    /// halves of the buffer are scanned side by side; positions are then grouped by pair (a
    /// counting sort), in increasing order.
    fn count_pairs(&mut self) {
        let n = self.cells.len();
        let mid = self.cells[n / 2..].iter().position(|c| c.sym == SEP).map_or(n, |k| n / 2 + k);
        let (chars, max_chars, big) = (&self.chars, self.max_chars, &self.big);
        let (left, right) = self.cells.split_at_mut(mid);
        let (lp, rp) = rayon::join(
            || LocalPairs::count(left, chars, max_chars, big),
            || LocalPairs::count(right, chars, max_chars, big),
        );
        let mut to_global = |local: LocalPairs| -> Vec<u32> {
            let mut ids = Vec::with_capacity(local.keys.len());
            for (&k, &c) in local.keys.iter().zip(&local.counts) {
                let id = self.pairs.get_or_insert((k >> 32) as u32, k as u32);
                self.pairs.pairs[id as usize].count += c;
                ids.push(id);
            }
            ids
        };
        let (lt, rt) = (to_global(lp), to_global(rp));
        let (left, right) = self.cells.split_at_mut(mid);
        rayon::join(|| LocalPairs::translate(left, &lt), || LocalPairs::translate(right, &rt));
        let mut ends = vec![0u32; self.pairs.pairs.len()];
        for cell in &self.cells {
            if cell.pair != NO_PAIR {
                ends[cell.pair as usize] += 1;
            }
        }
        let mut total = 0;
        for e in &mut ends {
            total += *e;
            *e = total;
        }
        let mut cursor = ends.clone();
        let mut positions = vec![0u32; total as usize];
        for (i, cell) in self.cells.iter().enumerate().rev() {
            if cell.pair != NO_PAIR {
                cursor[cell.pair as usize] -= 1;
                positions[cursor[cell.pair as usize] as usize] = i as u32;
            }
        }
        self.pairs.set_first_positions(positions, &ends);
    }

    /// A heap of the live pairs with the largest counts (about [`HEAP_TARGET`] of them, all
    /// those tied with the last), and the threshold it implies.
    fn rebuild_heap(&mut self) {
        let pairs = &self.pairs;
        let mut counts: Vec<i64> = pairs.live().map(|id| pairs.pairs[id as usize].count).collect();
        self.threshold = if counts.len() > HEAP_TARGET {
            *counts.select_nth_unstable_by(HEAP_TARGET, |x, y| y.cmp(x)).1
        } else {
            1
        };
        counts.clear();
        counts.shrink_to_fit();
        let threshold = self.threshold;
        self.heap = pairs
            .live()
            .filter(|&id| pairs.pairs[id as usize].count >= threshold)
            .map(|id| {
                let p = &pairs.pairs[id as usize];
                Candidate { count: p.count, rev: !p.key, id }
            })
            .collect();
        self.built_len = self.heap.len();
    }

    /// Remember pair `id`'s count before this step (once per step).
    #[inline]
    fn touch(&mut self, id: u32) {
        let p = &mut self.pairs.pairs[id as usize];
        if p.touched_in != self.step {
            p.touched_in = self.step;
            self.touched.push((id, p.count));
        }
    }

    /// The id of the new pair `(x, y)` in `role` for neighbour symbol `n` (created if need
    /// be; `NO_PAIR` if it can never be merged).
    #[inline]
    fn new_pair(&mut self, role: Role, n: u32, x: u32, y: u32) -> u32 {
        let r = role as usize;
        let slots = &self.slots[n as usize];
        if slots.step[r] == self.step {
            return slots.id[r];
        }
        let id = if self.mergeable(x, y) { self.pairs.get_or_insert(x, y) } else { NO_PAIR };
        if id != NO_PAIR {
            self.touch(id);
        }
        let slots = &mut self.slots[n as usize];
        slots.step[r] = self.step;
        slots.id[r] = id;
        id
    }

    /// Subtract `wc` from old pair `id`'s count (nothing for `NO_PAIR`).
    #[inline]
    fn break_pair(&mut self, id: u32, wc: i64) {
        if id != NO_PAIR {
            self.touch(id);
            self.pairs.pairs[id as usize].count -= wc;
        }
    }

    /// Add `delta` to new pair `id`'s count and record `pos` (nothing for `NO_PAIR`).
    #[inline]
    fn add_at(&mut self, id: u32, delta: i64, pos: usize) {
        if id != NO_PAIR {
            self.pairs.pairs[id as usize].count += delta;
            self.pairs.push_position(id, pos as u32);
        }
    }

    /// Prefetch the pairs an occurrence of `(a, _)` at `i` would break (if its cell, prefetched
    /// earlier, still holds `a`).
    #[inline]
    fn prefetch_pairs(&self, i: usize, a: u32, len_a: usize) {
        let cell = self.cells[i];
        if cell.sym != a {
            return;
        }
        let before = self.cells[i - 1];
        let left =
            if before.sym & DEAD != 0 { self.cells[i - 1 - (before.sym & !DEAD) as usize] } else { before };
        prefetch(&self.pairs.pairs, left.pair as usize);
        prefetch(&self.pairs.pairs, self.cells[i + len_a].pair as usize);
    }

    /// Merge every occurrence of pair `id` = `(a, b)` into the symbol `c`.
    fn merge(&mut self, id: u32, a: u32, b: u32, c: u32) {
        self.step += 1;
        if self.chars.len() > self.slots.len() {
            self.slots.resize(self.chars.len(), Slots::default());
        }
        self.touch(id);
        let mut positions = std::mem::take(&mut self.positions);
        positions.clear();
        self.pairs.take_positions(id, &mut positions);
        if a == b {
            // Overlapping occurrences (`a a a`) are merged left to right.
            positions.sort_unstable();
        }
        let (len_a, len_b) = (self.chars[a as usize] as usize, self.chars[b as usize] as usize);
        // Start the prefetch pipeline (most merges have only a few occurrences: then this is
        // all of it).
        for &pos in positions.iter().take(PREFETCH_AHEAD) {
            prefetch(&self.cells, pos as usize);
        }
        for &pos in positions.iter().take(PREFETCH_AHEAD / 2) {
            self.prefetch_pairs(pos as usize, a, len_a);
        }
        for (k, &pos) in positions.iter().enumerate() {
            // The positions are scattered over the buffer: ask for the cells a few occurrences
            // ahead, and for the pairs they will break a little later, so that the cache misses
            // overlap.
            if let Some(&ahead) = positions.get(k + PREFETCH_AHEAD) {
                prefetch(&self.cells, ahead as usize);
            }
            if let Some(&soon) = positions.get(k + PREFETCH_AHEAD / 2) {
                self.prefetch_pairs(soon as usize, a, len_a);
            }
            let i = pos as usize;
            let cell = self.cells[i];
            if cell.sym != a || cell.pair != id {
                continue; // stale
            }
            let wc = SymbolBuffer::count_of(&self.big, cell) as i64;
            let j = i + len_a;
            let last = j + len_b - 1;
            let right_old = self.cells[j].pair;
            let before = self.cells[i - 1].sym;
            if before != SEP {
                let p = if before & DEAD != 0 { i - 1 - (before & !DEAD) as usize } else { i - 1 };
                let left = self.cells[p];
                self.break_pair(left.pair, wc);
                let new = self.new_pair(Role::Left, left.sym, left.sym, c);
                self.add_at(new, wc, p);
                self.cells[p].pair = new;
            }
            let y = self.cells[last + 1].sym;
            let mut right_new = NO_PAIR;
            if y != SEP {
                self.break_pair(right_old, wc);
                right_new = self.new_pair(Role::Right, y, c, y);
                self.add_at(right_new, wc, i);
            }
            self.pairs.pairs[id as usize].count -= wc;
            self.cells[i].sym = c;
            self.cells[i].pair = right_new;
            self.cells[j].sym = DEAD | (j - i) as u32;
            self.cells[last].sym = DEAD | (last - i) as u32;
        }
        self.positions = positions;
        for k in 0..self.touched.len() {
            let (t, before) = self.touched[k];
            let p = &self.pairs.pairs[t as usize];
            let now = p.count;
            if now == 0 {
                self.pairs.remove(t);
            } else if now > before && now >= self.threshold {
                self.heap.push(Candidate { count: now, rev: !p.key, id: t });
            }
        }
        self.touched.clear();
        debug_assert!(self.pairs.get(a, b).is_none(), "merged pair still counted");
        // Stale entries (lazy deletion) and pairs that grew past the threshold pile up;
        // rebuild from the live counts (with a new threshold) when the heap has grown well past
        // its size when last built. Same result: every live pair at or above the threshold is
        // in the heap.
        if self.heap.len() > 4 * self.built_len.max(HEAP_TARGET) {
            self.rebuild_heap();
        }
    }

    /// The next pair to merge: the live pair with the largest count, smallest on ties.
    fn pop_best(&mut self) -> Option<(u32, u32, u32)> {
        loop {
            let Some(top) = self.heap.pop() else {
                // Every live pair is below the threshold: lower it.
                if self.pairs.len() == 0 || self.threshold <= 1 {
                    return None;
                }
                self.rebuild_heap();
                continue;
            };
            let p = &self.pairs.pairs[top.id as usize];
            if p.key != !top.rev {
                continue; // the id was recycled for another pair
            }
            let current = p.count;
            if current != top.count {
                if current >= self.threshold && current > 0 {
                    self.heap.push(Candidate { count: current, ..top });
                }
                continue;
            }
            if current <= 0 {
                continue;
            }
            let key = !top.rev;
            return Some((top.id, (key >> 32) as u32, key as u32));
        }
    }
}

/// Learn merges over `words` (symbols are indices into `pieces`, whose ids are
/// `first_normal + index`; `piece_index` maps every piece to its id) until `pieces` holds
/// `max_pieces` entries or no pair is left; pieces longer than `max_piece_chars` characters are
/// never created. Returns the merges in rank order.
pub(crate) fn learn_merges(
    words: SymbolBuffer,
    first_normal: u32,
    pieces: &mut Vec<String>,
    piece_index: &mut FxHashMap<String, u32>,
    max_pieces: usize,
    max_piece_chars: usize,
) -> Vec<(String, String)> {
    let chars: Vec<u32> = pieces.iter().map(|p| p.chars().count() as u32).collect();
    let max_chars = u32::try_from(max_piece_chars).unwrap_or(u32::MAX);
    let mut learner = Learner::new(words, chars, max_chars);
    let mut merges: Vec<(String, String)> = Vec::new();
    while pieces.len() < max_pieces {
        let Some((id, a, b)) = learner.pop_best() else { break };
        let left = &pieces[a as usize];
        let right = &pieces[b as usize];
        let joined = format!("{left}{right}");
        merges.push((left.clone(), right.clone()));
        let c = match piece_index.get(&joined) {
            Some(&global) => global - first_normal,
            None => {
                let c = pieces.len() as u32;
                piece_index.insert(joined.clone(), first_normal + c);
                pieces.push(joined);
                learner.chars.push(learner.chars[a as usize] + learner.chars[b as usize]);
                c
            }
        };
        learner.merge(id, a, b, c);
    }
    merges
}
