//! The training words as one flat buffer of symbols, the form the merge loop works on.
//!
//! Words are stored back to back, each followed by a [`SEP`] cell (and the buffer starts with
//! one), so every position has a left and a right neighbour cell. A symbol covers a span of
//! positions, one per character it is made of: its id sits at the span's first position, and
//! every other position of the span holds [`DEAD`] plus its distance to the first. Only the last
//! position's distance is kept exact, which is all that finding a symbol's left neighbour needs;
//! its right neighbour starts right after its span, whose length is the symbol's character
//! count.
//!
//! Each cell also holds its word's weighted count and the id of the pair it starts, so that
//! merging an occurrence finds the occurrence's weight and the ids of the pairs it breaks in
//! the cells it reads anyway (no word table, no hash look-up): counts below 2^31 are stored as
//! they are, larger ones (rare) as [`BIG`] plus an index into a side table.

use crate::error::{Result, TokenizerError};

/// Marks the cell between two words.
pub(crate) const SEP: u32 = 0x7FFF_FFFF;
/// Set on positions inside a symbol's span (after its first); the low bits are the distance to
/// the span's first position.
pub(crate) const DEAD: u32 = 0x8000_0000;
/// Set on a cell's count when the low bits index [`SymbolBuffer::big`] instead.
pub(crate) const BIG: u32 = 0x8000_0000;

/// No pair id.
pub(crate) const NO_PAIR: u32 = u32::MAX;

/// One position: a symbol (or [`SEP`] / [`DEAD`]), its word's count and the id of the pair it
/// starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    /// The symbol id, [`SEP`], or [`DEAD`] with a distance.
    pub(crate) sym: u32,
    /// The word's count, or [`BIG`] with an index into [`SymbolBuffer::big`].
    pub(crate) count: u32,
    /// The merge loop's id of the pair this symbol starts with its right neighbour
    /// ([`NO_PAIR`] when there is none or it is not tracked); kept exact for live symbols.
    pub(crate) pair: u32,
}

impl Cell {
    /// The cell between words.
    const SEP: Cell = Cell { sym: SEP, count: 0, pair: NO_PAIR };
}

/// Words (sequences of symbol ids below [`SEP`]) with their weighted counts.
pub(crate) struct SymbolBuffer {
    /// The cells (see the module docs).
    pub(crate) cells: Vec<Cell>,
    /// Counts of 2^31 and more.
    pub(crate) big: Vec<u64>,
    words: usize,
}

impl Default for SymbolBuffer {
    fn default() -> Self {
        SymbolBuffer { cells: vec![Cell::SEP], big: Vec::new(), words: 0 }
    }
}

impl SymbolBuffer {
    /// An empty buffer with room for `cells` cells.
    pub(crate) fn with_capacity(cells: usize) -> Self {
        let mut b = SymbolBuffer { cells: Vec::with_capacity(cells), big: Vec::new(), words: 0 };
        b.cells.push(Cell::SEP);
        b
    }

    /// Number of words.
    #[cfg(test)]
    pub(crate) fn words(&self) -> usize {
        self.words
    }

    /// The weighted count stored in a cell.
    #[inline]
    pub(crate) fn count_of(big: &[u64], cell: Cell) -> u64 {
        if cell.count & BIG == 0 {
            cell.count as u64
        } else {
            big[(cell.count & !BIG) as usize]
        }
    }

    /// Append a word of single-character symbols occurring `count` times.
    pub(crate) fn push_word(&mut self, symbols: &[u32], count: u64) {
        debug_assert!(symbols.iter().all(|&s| s < SEP));
        let stored = if count < BIG as u64 {
            count as u32
        } else {
            self.big.push(count);
            BIG | (self.big.len() - 1) as u32
        };
        self.cells.extend(symbols.iter().map(|&sym| Cell { sym, count: stored, pair: NO_PAIR }));
        self.cells.push(Cell::SEP);
        self.words += 1;
    }

    /// Append the words of `other`.
    pub(crate) fn append(&mut self, other: SymbolBuffer) {
        let shift = self.big.len() as u32;
        self.cells.reserve(other.cells.len() - 1);
        if other.big.is_empty() {
            self.cells.extend_from_slice(&other.cells[1..]);
        } else {
            self.cells.extend(other.cells[1..].iter().map(|&c| {
                if c.count & BIG != 0 {
                    Cell { count: c.count + shift, ..c }
                } else {
                    c
                }
            }));
        }
        self.big.extend_from_slice(&other.big);
        self.words += other.words;
    }

    /// Checks that positions fit the merge loop's `u32` indices (and large counts their
    /// index).
    pub(crate) fn check_size(&self) -> Result<()> {
        if self.cells.len() >= u32::MAX as usize || self.big.len() >= BIG as usize {
            return Err(TokenizerError::CorpusTooLarge { symbols: self.cells.len(), words: self.words });
        }
        Ok(())
    }

    /// The words as symbol sequences with their counts, in order (tests).
    #[cfg(test)]
    pub(crate) fn to_words(&self) -> Vec<(Vec<u32>, u64)> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let mut count = 0;
        for &c in &self.cells[1..] {
            if c.sym == SEP {
                out.push((std::mem::take(&mut cur), count));
            } else if c.sym & DEAD == 0 {
                cur.push(c.sym);
                count = Self::count_of(&self.big, c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_counts() {
        let mut a = SymbolBuffer::default();
        a.push_word(&[1, 2], 5);
        a.push_word(&[3, 4, 5], 1 << 40);
        a.push_word(&[6, 7], (1 << 31) - 1);
        assert_eq!(
            a.to_words(),
            vec![(vec![1, 2], 5), (vec![3, 4, 5], 1 << 40), (vec![6, 7], (1 << 31) - 1)]
        );
        assert_eq!(a.words(), 3);
        assert_eq!(a.big, vec![1 << 40]);
        assert_eq!(a.cells.len(), 1 + 3 + 4 + 3);
        assert!(a.check_size().is_ok());
        let mut b = SymbolBuffer::default();
        b.push_word(&[8, 9], 1 << 33);
        b.push_word(&[1, 1], 2);
        a.append(b);
        assert_eq!(a.words(), 5);
        assert_eq!(&a.to_words()[3..], &[(vec![8, 9], 1 << 33), (vec![1, 1], 2)]);
    }
}
