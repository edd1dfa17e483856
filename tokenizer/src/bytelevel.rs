//! GPT-2 style byte-level BPE pieces: the byte ↔ printable-character map and the GPT-2
//! pre-tokenizer, written by hand (no regex engine).
//!
//! Byte-level BPE works on bytes, but its vocabulary files are text, so every byte is shown as
//! one printable character: the bytes that are already printable and not a space (`!`..`~`,
//! `¡`..`¬`, `®`..`ÿ`) stand for themselves, and the other 68 bytes are given the characters
//! U+0100, U+0101, ... in byte order (so a space is `Ġ`, U+0120, and a newline is `Ċ`).
//!
//! The GPT-2 pre-tokenizer is the regular expression
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! applied left to right, first alternative that matches wins (as `tiktoken` and Hugging Face
//! `tokenizers` apply it). [`split_gpt2`] implements it directly: `\p{L}` and `\p{N}` are the
//! Unicode general categories Letter and Number, `\s` is the Unicode `White_Space` property
//! (Rust's [`char::is_whitespace`]), and the look-ahead `\s+(?!\S)` means "a run of whitespace,
//! less its last character when a non-space follows" (so that the last space sticks to the next
//! word).
//!
//! The categories come from the `unicode-general-category` tables (Unicode 16.0). `tiktoken`
//! (Rust `regex`) and `tokenizers` (Oniguruma) carry their own Unicode versions, so a character
//! assigned only in a recent version may be classed differently; none in the validation split
//! or the UDHR texts is (the parity tests cover them all).

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// The GPT-2 pre-tokenizer regular expression as Hugging Face `tokenizers` writes it (the
/// pattern [`split_gpt2`] implements).
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The same expression as `tiktoken` writes it for `gpt2` and `r50k_base`.
pub const GPT2_PATTERN_TIKTOKEN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Whether byte `b` is shown as itself.
fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character that stands for each byte.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are characters");
            next += 1;
            c
        };
    }
    table
}

/// The byte a character stands for, if it is one of the 256 byte characters.
pub fn char_to_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 256 {
        let b = u as u8;
        return printable(b).then_some(b);
    }
    // The non-printable bytes, in order, are U+0100 + k.
    let k = u.checked_sub(256)?;
    (0..=255u8).filter(|&b| !printable(b)).nth(k as usize)
}

/// Show bytes as byte characters.
pub fn bytes_to_chars(bytes: &[u8], table: &[char; 256], out: &mut String) {
    for &b in bytes {
        out.push(table[b as usize]);
    }
}

/// `\p{L}`: general category Letter (Lu, Ll, Lt, Lm, Lo).
#[inline]
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        Gc::UppercaseLetter
            | Gc::LowercaseLetter
            | Gc::TitlecaseLetter
            | Gc::ModifierLetter
            | Gc::OtherLetter
    )
}

/// `\p{N}`: general category Number (Nd, Nl, No).
#[inline]
pub fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    matches!(get_general_category(c), Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber)
}

/// What class of character a regex alternative consumes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

#[inline]
fn class(c: char) -> Class {
    if is_letter(c) {
        Class::Letter
    } else if is_number(c) {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Length in bytes of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) at the start of
/// `rest`, if there is one.
fn contraction(rest: &[u8]) -> Option<usize> {
    if rest.first() != Some(&b'\'') {
        return None;
    }
    match rest.get(1) {
        Some(b's' | b't' | b'm' | b'd') => Some(2),
        Some(b'r') if rest.get(2) == Some(&b'e') => Some(3),
        Some(b'v') if rest.get(2) == Some(&b'e') => Some(3),
        Some(b'l') if rest.get(2) == Some(&b'l') => Some(3),
        _ => None,
    }
}

/// End (byte index) of the run of characters of class `cls` starting at `start`.
fn run_end(text: &str, start: usize, cls: Class) -> usize {
    text[start..].char_indices().find(|&(_, c)| class(c) != cls).map_or(text.len(), |(i, _)| start + i)
}

/// Split `text` into the pieces the GPT-2 regular expression finds (see the module docs). The
/// pieces cover `text` exactly, in order.
pub fn split_gpt2(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    let bytes = text.as_bytes();
    let mut pos = 0;
    while pos < text.len() {
        let end = match_at(text, bytes, pos);
        out.push(&text[pos..end]);
        pos = end;
    }
    out
}

/// The end of the match starting at `pos` (always > `pos`).
fn match_at(text: &str, bytes: &[u8], pos: usize) -> usize {
    // 's|'t|'re|'ve|'m|'ll|'d
    if let Some(n) = contraction(&bytes[pos..]) {
        return pos + n;
    }
    let mut chars = text[pos..].chars();
    let c = chars.next().expect("pos is inside the text");
    let first = class(c);
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional ASCII space, then a run.
    if c == ' ' {
        if let Some(d) = chars.next() {
            let cls = class(d);
            if cls != Class::Space {
                return run_end(text, pos + 1, cls);
            }
        }
    }
    if first != Class::Space {
        return run_end(text, pos, first);
    }
    // `\s+(?!\S)`: the whitespace run, less its last character when a non-space follows; if
    // that leaves nothing, `\s+` takes the one-character run.
    let end = run_end(text, pos, Class::Space);
    if end == text.len() {
        return end;
    }
    let last = text[..end].chars().next_back().map_or(1, char::len_utf8);
    if end - last > pos {
        end - last
    } else {
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[0xAD], '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn gpt2_split_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("Hello world", &["Hello", " world"]),
            ("don't  stop", &["don", "'t", " ", " stop"]),
            ("a\n\nb ", &["a", "\n", "\n", "b", " "]),
            ("a \n b", &["a", " \n", " b"]),
            ("x   ", &["x", "   "]),
            ("123abc!!'s ?!", &["123", "abc", "!!'", "s", " ?!"]),
            ("I'LL 'll", &["I", "'", "LL", " '", "ll"]),
            ("e\u{301}t\u{e9}", &["e", "\u{301}", "t\u{e9}"]),
            ("\u{e01}\u{e34}\u{e19}", &["\u{e01}", "\u{e34}", "\u{e19}"]),
            ("٣٤ ٥", &["٣٤", " ٥"]),
            ("\u{3000}x", &["\u{3000}", "x"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(split_gpt2(text), *want, "{text:?}");
        }
    }
}
