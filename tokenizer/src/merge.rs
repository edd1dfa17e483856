//! The BPE merge loop shared by every BPE encoder of the crate (our [`crate::BpeModel`], the
//! Hugging Face `tokenizer.json` importer and the GPT-2 byte-level loader).
//!
//! Semantics (the same as Hugging Face `tokenizers` and `tiktoken` for GPT-2): repeatedly apply
//! the adjacent pair with the lowest merge rank, leftmost first on equal rank, until no adjacent
//! pair has a merge. Short words rescan a table of pair ranks kept on the stack (faster than
//! building a heap); longer ones use a doubly linked list and a min-heap of `(rank, position)`
//! with lazy invalidation, so long words (whole lines of CJK or Thai text) stay O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A table of merges: `(left id, right id) → (rank, merged id)`.
pub(crate) trait MergeRanks {
    /// The `(rank, result id)` of merging `a` and `b`, if that merge exists.
    fn merge(&self, a: u32, b: u32) -> Option<(u32, u32)>;
}

/// Words up to this many symbols are merged by rescanning a table of pair ranks on the stack.
const SMALL_MAX: usize = 64;

/// Merge `ids` in place by exact merge-rank semantics.
pub(crate) fn merge_word<M: MergeRanks + ?Sized>(model: &M, ids: &mut Vec<u32>) {
    let n = ids.len();
    if n < 2 {
        return;
    }
    if n <= SMALL_MAX {
        merge_small(model, ids);
        return;
    }
    const NONE: usize = usize::MAX;
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NONE;
    let mut next: Vec<usize> = (1..=n).collect();
    next[n - 1] = NONE;
    let mut alive = vec![true; n];
    let mut heap: BinaryHeap<Reverse<(u32, usize)>> = BinaryHeap::new();
    for i in 0..n - 1 {
        if let Some((rank, _)) = model.merge(ids[i], ids[i + 1]) {
            heap.push(Reverse((rank, i)));
        }
    }
    while let Some(Reverse((rank, i))) = heap.pop() {
        if !alive[i] || next[i] == NONE {
            continue;
        }
        let j = next[i];
        let Some((r, result)) = model.merge(ids[i], ids[j]) else { continue };
        if r != rank {
            continue;
        }
        ids[i] = result;
        alive[j] = false;
        next[i] = next[j];
        if next[j] != NONE {
            prev[next[j]] = i;
        }
        if prev[i] != NONE {
            let p = prev[i];
            if let Some((r, _)) = model.merge(ids[p], ids[i]) {
                heap.push(Reverse((r, p)));
            }
        }
        if next[i] != NONE {
            if let Some((r, _)) = model.merge(ids[i], ids[next[i]]) {
                heap.push(Reverse((r, i)));
            }
        }
    }
    let mut merged = Vec::with_capacity(n);
    let mut i = 0;
    while i != NONE {
        merged.push(ids[i]);
        i = next[i];
    }
    *ids = merged;
}

/// Short words: the `(rank, result)` of every adjacent pair is kept in a table on the stack, so
/// each merge costs a scan of the table and two look-ups (for the new pairs either side), with
/// no allocation. Same choice as `merge_by_scanning`: the lowest rank, leftmost on ties.
fn merge_small<M: MergeRanks + ?Sized>(model: &M, ids: &mut Vec<u32>) {
    const NONE: (u32, u32) = (u32::MAX, 0);
    let mut n = ids.len();
    debug_assert!((2..=SMALL_MAX).contains(&n));
    let mut pairs = [NONE; SMALL_MAX];
    for i in 0..n - 1 {
        pairs[i] = model.merge(ids[i], ids[i + 1]).unwrap_or(NONE);
    }
    loop {
        let mut best = u32::MAX;
        let mut at = 0;
        for (i, &(rank, _)) in pairs[..n - 1].iter().enumerate() {
            if rank < best {
                best = rank;
                at = i;
            }
        }
        if best == u32::MAX {
            break;
        }
        // Merge symbols `at` and `at + 1`; the pair table loses entry `at + 1`.
        ids[at] = pairs[at].1;
        ids.remove(at + 1);
        if at + 2 < n {
            pairs.copy_within(at + 2..n - 1, at + 1);
        }
        n -= 1;
        if at + 1 < n {
            pairs[at] = model.merge(ids[at], ids[at + 1]).unwrap_or(NONE);
        }
        if at > 0 {
            pairs[at - 1] = model.merge(ids[at - 1], ids[at]).unwrap_or(NONE);
        }
        if n < 2 {
            break;
        }
    }
}

/// The plain quadratic loop: find the lowest-rank adjacent pair (leftmost on ties), merge it,
/// repeat. The tests' reference.
#[cfg(test)]
pub(crate) fn merge_by_scanning<M: MergeRanks + ?Sized>(model: &M, ids: &mut Vec<u32>) {
    loop {
        let mut best: Option<(u32, usize, u32)> = None;
        for i in 0..ids.len().saturating_sub(1) {
            if let Some((rank, result)) = model.merge(ids[i], ids[i + 1]) {
                match best {
                    Some((r, _, _)) if r <= rank => {}
                    _ => best = Some((rank, i, result)),
                }
            }
        }
        match best {
            Some((_, i, result)) => {
                ids[i] = result;
                ids.remove(i + 1);
            }
            None => return,
        }
    }
}
