//! Pre-tokenisation: split normalised text into the "words" that BPE merges never cross.
//!
//! - Every numeric character (Unicode `char::is_numeric`, which includes ASCII `0`-`9`) is a
//!   word on its own, so numbers are always split into single digits.
//! - A `▁` meta symbol starts a word. In a run of several `▁` (several spaces) the last one
//!   starts the word that follows the run, and the ones before it form a word of their own, as
//!   SentencePiece does with `allow_whitespace_only_pieces`: `"▁▁▁▁--"` is `"▁▁▁"`, `"▁--"`.
//!   A run followed by a digit or by the end of the text is a single word (`"▁▁"`, `"5"`).
//!   So a piece is either made of `▁` only, or has at most one `▁`, at its start: no piece
//!   crosses a word start, and runs of spaces (indentation, alignment) can be learnt as pieces
//!   instead of costing one token per space.
//!
//! Models trained before whitespace-only words existed have no merge of two `▁`, so they encode
//! exactly as they did with the older "a word starts at every `▁`" split.
//!
//! The same split, as a regular expression for Hugging Face `tokenizers` (a `Split` with
//! behaviour `Isolated`, followed by `Digits(individual_digits)`), is [`META_RUNS_PATTERN`].

use crate::normalize::META;

/// [`pretokenize`] without the digit split, as an Oniguruma expression: the last `▁` of a run
/// goes with a following non-digit character, the rest of the run stays together.
pub const META_RUNS_PATTERN: &str = "▁+(?=▁[^▁\\p{N}])|▁?[^▁]+|▁+";

/// Whether `c` is a digit that must stay a token on its own.
#[inline]
pub fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let u = c as usize;
    match numeric_bmp().get(u >> 6) {
        Some(bits) => bits >> (u & 63) & 1 != 0,
        None => c.is_numeric(),
    }
}

/// `char::is_numeric` for every character of the Basic Multilingual Plane, one bit each (8 KB,
/// built once): one load instead of a search of the Unicode tables, for every character of
/// every non-ASCII text.
fn numeric_bmp() -> &'static [u64; 1024] {
    static TABLE: std::sync::OnceLock<[u64; 1024]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u64; 1024];
        for (u, c) in (0..0x1_0000u32).filter_map(|u| char::from_u32(u).map(|c| (u as usize, c))) {
            if c.is_numeric() {
                t[u >> 6] |= 1 << (u & 63);
            }
        }
        t
    })
}

/// Split normalised text into words (slices of `text`, in order, covering it exactly).
pub fn pretokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    for_each_word(text, |w| words.push(w));
    words
}

/// Call `f` on each word of [`pretokenize`], in order, without collecting them.
#[inline]
pub fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut start = 0;
    let mut prev_digit = false;
    let mut prev_meta = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let digit = is_digit(c);
        let meta = c == META;
        let boundary = digit
            || prev_digit
            || (meta && (!prev_meta || chars.peek().is_some_and(|&(_, n)| n != META && !is_digit(n))));
        if i > start && boundary {
            f(&text[start..i]);
            start = i;
        }
        prev_digit = digit;
        prev_meta = meta;
    }
    if start < text.len() {
        f(&text[start..]);
    }
}

/// The split of [`META_RUNS_PATTERN`] (no digit split): byte spans covering `text`.
pub(crate) fn meta_run_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut prev_meta = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let meta = c == META;
        let boundary =
            meta && (!prev_meta || chars.peek().is_some_and(|&(_, n)| n != META && !n.is_numeric()));
        if i > start && boundary {
            spans.push((start, i));
            start = i;
        }
        prev_meta = meta;
    }
    if start < text.len() {
        spans.push((start, text.len()));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_meta_and_digits() {
        assert_eq!(pretokenize("▁hello▁world"), vec!["▁hello", "▁world"]);
        assert_eq!(pretokenize("▁a12b▁▁c"), vec!["▁a", "1", "2", "b", "▁", "▁c"]);
        assert_eq!(pretokenize("٣٤x"), vec!["٣", "٤", "x"]);
        assert!(pretokenize("").is_empty());
    }

    #[test]
    fn runs_of_meta() {
        assert_eq!(pretokenize("▁a\n▁▁▁▁--▁b"), vec!["▁a\n", "▁▁▁", "▁--", "▁b"]);
        assert_eq!(pretokenize("▁a▁▁"), vec!["▁a", "▁▁"]);
        assert_eq!(pretokenize("▁▁5▁▁▁٣x"), vec!["▁▁", "5", "▁▁▁", "٣", "x"]);
        assert_eq!(pretokenize("x▁▁"), vec!["x", "▁▁"]);
        assert_eq!(pretokenize("▁▁x"), vec!["▁", "▁x"]);
        assert_eq!(pretokenize("▁"), vec!["▁"]);
    }

    #[test]
    fn digit_table_matches_is_numeric() {
        for c in (0..0x11_0000u32).filter_map(char::from_u32) {
            assert_eq!(is_digit(c), c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric()), "{c:?}");
        }
    }

    #[test]
    fn covers_input() {
        let s = "▁x9▁▁日本語▁1▁▁▁";
        assert_eq!(pretokenize(s).concat(), s);
    }

    /// The pattern's split followed by individual digits is the same as `pretokenize`.
    #[test]
    fn spans_then_digits_is_pretokenize() {
        for s in ["▁a\n▁▁▁▁--▁b", "▁▁5▁▁▁٣x", "x▁▁", "▁▁x", "▁", "", "12▁▁3▁▁a1b▁", "▁▁\t▁▁"]
        {
            let mut words = Vec::new();
            for (a, b) in meta_run_spans(s) {
                words.extend(pretokenize(&s[a..b]));
            }
            assert_eq!(words, pretokenize(s), "{s:?}");
        }
    }
}
