//! The unigram lattice: the Viterbi search shared by the SentencePiece importer and the
//! `tokenizer.json` Unigram model.
//!
//! Both segment a piece of text into the vocabulary pieces with the largest total score; they
//! differ only in how they find and score the pieces at a position (SentencePiece sums f32 and
//! gives user-defined pieces a length bonus; `tokenizers` sums f64 over every entry) and in what
//! counts as unknown. The search itself is one:
//!
//! - nodes are offered per start position in increasing order, and at a position in the order
//!   the vocabulary offers them; a node replaces the best one ending at the same place only with
//!   a strictly larger score, so ties go to the earlier start and then the earlier offer;
//! - a character that no single-character piece covers gets an unknown node of the
//!   vocabulary's unknown score, so every position stays reachable;
//! - on the best path, runs of unknown segments are fused into one.

use std::ops::Add;

/// A path score: f32 (SentencePiece) or f64 (`tokenizers`).
pub(crate) trait PathScore: Copy + PartialOrd + Add<Output = Self> {
    /// The score of the empty path.
    const ZERO: Self;
}

impl PathScore for f32 {
    const ZERO: f32 = 0.0;
}

impl PathScore for f64 {
    const ZERO: f64 = 0.0;
}

/// What a unigram model contributes to the search.
pub(crate) trait UnigramVocabulary {
    /// The type scores are summed in.
    type Score: PathScore;

    /// Calls `offer(end, id, score)` for every vocabulary piece that is `text[start..end]`,
    /// in the order ties should be broken (earlier wins). `start` and `end` are byte offsets at
    /// character boundaries.
    fn pieces_at(&self, text: &str, start: usize, offer: impl FnMut(usize, u32, Self::Score));

    /// The score of an unknown character.
    fn unknown_score(&self) -> Self::Score;

    /// Whether a segment with this id is fused with its unknown neighbours (`None` is an
    /// unknown node).
    fn is_unknown(&self, id: Option<u32>) -> bool;
}

/// One segment of the best path: the byte range of the text and the piece id (`None`: an
/// unknown character or a fused run of unknown segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Where the segment starts (bytes).
    pub(crate) start: usize,
    /// Where it ends (bytes, exclusive).
    pub(crate) end: usize,
    /// The piece, or `None` for an unknown node.
    pub(crate) id: Option<u32>,
}

/// The best path ending at a byte position.
#[derive(Clone, Copy)]
struct Node<S> {
    score: S,
    /// Where the last segment starts (`usize::MAX`: not reached).
    start: usize,
    id: Option<u32>,
}

/// The highest-scoring segmentation of `text`, in text order, with runs of unknowns fused.
pub(crate) fn best_path<V: UnigramVocabulary>(vocab: &V, text: &str) -> Vec<Segment> {
    let unreached = Node { score: V::Score::ZERO, start: usize::MAX, id: None };
    let mut best = vec![unreached; text.len() + 1];
    best[0].start = 0;
    let unk_score = vocab.unknown_score();
    let offer = |best: &mut [Node<V::Score>], end: usize, node: Node<V::Score>| {
        let slot = &mut best[end];
        if slot.start == usize::MAX || node.score > slot.score {
            *slot = node;
        }
    };
    for (start, c) in text.char_indices() {
        if best[start].start == usize::MAX {
            continue;
        }
        let here = best[start].score;
        let char_end = start + c.len_utf8();
        let mut single = false;
        vocab.pieces_at(text, start, |end, id, score| {
            offer(&mut best, end, Node { score: here + score, start, id: Some(id) });
            single |= end == char_end;
        });
        if !single {
            offer(&mut best, char_end, Node { score: here + unk_score, start, id: None });
        }
    }
    let mut path: Vec<Segment> = Vec::new();
    let mut end = text.len();
    while end > 0 {
        let node = best[end];
        match path.last_mut() {
            Some(next) if vocab.is_unknown(node.id) && vocab.is_unknown(next.id) => {
                next.start = node.start;
                next.id = None;
            }
            _ => path.push(Segment { start: node.start, end, id: node.id }),
        }
        end = node.start;
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces by string with f32 scores; id 0 is the unknown piece, which text may also spell.
    struct Toy(Vec<(&'static str, f32)>);

    impl UnigramVocabulary for Toy {
        type Score = f32;
        fn pieces_at(&self, text: &str, start: usize, mut offer: impl FnMut(usize, u32, f32)) {
            let mut found: Vec<(usize, u32, f32)> = (self.0.iter().enumerate())
                .filter(|(_, (p, _))| text[start..].starts_with(p))
                .map(|(id, &(p, s))| (start + p.len(), id as u32, s))
                .collect();
            found.sort_by_key(|&(end, id, _)| (end, id));
            found.into_iter().for_each(|(end, id, s)| offer(end, id, s));
        }
        fn unknown_score(&self) -> f32 {
            -10.0
        }
        fn is_unknown(&self, id: Option<u32>) -> bool {
            id.is_none_or(|id| id == 0)
        }
    }

    fn ids(v: &Toy, text: &str) -> Vec<(usize, usize, Option<u32>)> {
        best_path(v, text).into_iter().map(|s| (s.start, s.end, s.id)).collect()
    }

    #[test]
    fn takes_the_best_total_and_the_earlier_offer_on_ties() {
        let v = Toy(vec![("<unk>", 0.0), ("a", -1.0), ("b", -1.0), ("ab", -2.0), ("c", -1.5)]);
        // "ab" ties with "a"+"b"; the path through "ab" is offered at position 0 and wins.
        assert_eq!(ids(&v, "abc"), vec![(0, 2, Some(3)), (2, 3, Some(4))]);
    }

    #[test]
    fn unknown_runs_and_the_unknown_piece_fuse() {
        let v = Toy(vec![("?", -1.0), ("a", -1.0)]);
        // "é" and "ß" are unknown nodes, "?" is the unknown piece spelt out: one segment.
        assert_eq!(ids(&v, "aé?ß"), vec![(0, 1, Some(1)), (1, 6, None)]);
        assert_eq!(ids(&v, "éa"), vec![(0, 2, None), (2, 3, Some(1))]);
        assert_eq!(ids(&v, "?"), vec![(0, 1, Some(0))]);
        assert!(ids(&v, "").is_empty());
    }
}
