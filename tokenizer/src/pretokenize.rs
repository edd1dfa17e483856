//! Pre-tokenisation: split normalised text into the "words" that BPE merges never cross.
//!
//! A word starts at every `▁` meta symbol, and every numeric character (Unicode
//! `char::is_numeric`, which includes ASCII `0`-`9`) is a word on its own, so numbers are always
//! split into single digits.

use crate::normalize::META;

/// Whether `c` is a digit that must stay a token on its own.
#[inline]
pub fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

/// Split normalised text into words (slices of `text`, in order, covering it exactly).
pub fn pretokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = 0;
    let mut prev_digit = false;
    for (i, c) in text.char_indices() {
        let digit = is_digit(c);
        if i > start && (c == META || digit || prev_digit) {
            words.push(&text[start..i]);
            start = i;
        }
        prev_digit = digit;
    }
    if start < text.len() {
        words.push(&text[start..]);
    }
    words
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
    fn covers_input() {
        let s = "▁x9▁▁日本語▁1";
        assert_eq!(pretokenize(s).concat(), s);
    }
}
