//! Text normalisation: Unicode normal form plus SentencePiece-style whitespace.
//!
//! Every space (U+0020) becomes the visible meta symbol [`META`] (`▁`, U+2581), which marks the
//! start of a word; runs of spaces are kept one meta symbol per space so that decoding is exact.
//! With `add_dummy_prefix` (the default) a `▁` is also put in front of non-empty text, as
//! SentencePiece does, so the first word looks like every other word.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfc_quick, is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// The word-start meta symbol `▁` (U+2581 LOWER ONE EIGHTH BLOCK).
pub const META: char = '\u{2581}';

/// Which Unicode normal form is applied before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizerKind {
    /// Leave the text as it is.
    None,
    /// Canonical composition (NFC).
    Nfc,
    /// Compatibility composition (NFKC), the default.
    #[default]
    Nfkc,
}

/// Characters of the Basic Multilingual Plane that are a normal form on their own and combine
/// with nothing before them (combining class 0, quick-check "yes"), one bit each (8 KB).
type StarterTable = [u64; 1024];

fn starter_table(quick: fn(std::iter::Once<char>) -> IsNormalized) -> StarterTable {
    let mut t = [0u64; 1024];
    for (u, c) in (0..0x1_0000u32).filter_map(|u| char::from_u32(u).map(|c| (u as usize, c))) {
        if canonical_combining_class(c) == 0 && quick(std::iter::once(c)) == IsNormalized::Yes {
            t[u >> 6] |= 1 << (u & 63);
        }
    }
    t
}

/// Whether every character of `text` is in `table`: then the quick check would answer "yes"
/// (it only looks further at characters outside it), at the cost of one load per character.
fn all_starters(text: &str, table: &StarterTable) -> bool {
    text.chars().all(|c| {
        let u = c as usize;
        u < 0x1_0000 && table[u >> 6] >> (u & 63) & 1 != 0
    })
}

/// NFC of `text`. The quick check answers "already normalised" for most text (all ASCII, most
/// alphabetic scripts), which skips the decompose/recompose round trip; a table of the
/// characters that need no check at all answers first.
pub(crate) fn nfc(text: &str) -> String {
    static TABLE: OnceLock<StarterTable> = OnceLock::new();
    let table = TABLE.get_or_init(|| starter_table(is_nfc_quick));
    if all_starters(text, table) || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        text.to_string()
    } else {
        text.nfc().collect()
    }
}

/// NFKC of `text` (with the same quick checks as [`nfc`]).
pub(crate) fn nfkc(text: &str) -> String {
    static TABLE: OnceLock<StarterTable> = OnceLock::new();
    let table = TABLE.get_or_init(|| starter_table(is_nfkc_quick));
    if all_starters(text, table) || is_nfkc_quick(text.chars()) == IsNormalized::Yes {
        text.to_string()
    } else {
        text.nfkc().collect()
    }
}

/// Normaliser settings: the Unicode normal form and whether to add the dummy `▁` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalizer {
    /// The Unicode normal form.
    pub kind: NormalizerKind,
    /// Whether a `▁` is put in front of non-empty text.
    pub add_dummy_prefix: bool,
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer { kind: NormalizerKind::Nfkc, add_dummy_prefix: true }
    }
}

impl Normalizer {
    /// A normaliser with the given settings.
    pub fn new(kind: NormalizerKind, add_dummy_prefix: bool) -> Self {
        Normalizer { kind, add_dummy_prefix }
    }

    /// Apply only the Unicode normal form.
    pub fn unicode(&self, text: &str) -> String {
        match self.kind {
            NormalizerKind::None => text.to_string(),
            NormalizerKind::Nfc => nfc(text),
            NormalizerKind::Nfkc => nfkc(text),
        }
    }

    /// The normalised text the model sees: Unicode normal form, spaces as `▁`, dummy prefix.
    /// Empty text stays empty.
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::new();
        self.normalize_into(text, &mut out);
        out
    }

    /// [`Normalizer::normalize`] into `out` (cleared first), reusing its allocation. ASCII text
    /// is its own NFC and NFKC, so it skips the Unicode step entirely.
    pub fn normalize_into(&self, text: &str, out: &mut String) {
        out.clear();
        let owned;
        let unicode: &str = if self.kind == NormalizerKind::None || text.is_ascii() {
            text
        } else {
            owned = self.unicode(text);
            &owned
        };
        out.reserve(unicode.len() + 3);
        if self.add_dummy_prefix && !unicode.is_empty() {
            out.push(META);
        }
        let mut parts = unicode.split(' ');
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        for part in parts {
            out.push(META);
            out.push_str(part);
        }
    }

    /// Turn normalised text back into plain text: `▁` becomes a space and the dummy-prefix space
    /// (if the setting is on and the text starts with one) is removed.
    pub fn denormalize(&self, normalized: &str) -> String {
        let text: String = normalized.chars().map(|c| if c == META { ' ' } else { c }).collect();
        match text.strip_prefix(' ') {
            Some(rest) if self.add_dummy_prefix => rest.to_string(),
            _ => text,
        }
    }

    /// What `decode(encode(text))` returns: `denormalize(normalize(text))`.
    pub fn roundtrip(&self, text: &str) -> String {
        self.denormalize(&self.normalize(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_become_meta_with_prefix() {
        let n = Normalizer::default();
        assert_eq!(n.normalize("a  b"), "▁a▁▁b");
        assert_eq!(n.normalize(""), "");
        assert_eq!(n.normalize(" "), "▁▁");
        assert_eq!(n.roundtrip(" x "), " x ");
    }

    #[test]
    fn normalize_into_reuses_and_matches() {
        let mut buf = String::from("stale");
        for kind in [NormalizerKind::None, NormalizerKind::Nfc, NormalizerKind::Nfkc] {
            for prefix in [false, true] {
                let n = Normalizer::new(kind, prefix);
                for t in ["", " ", "a  b ", "ﬁ① x", "e\u{301} y", "日本 語", "▁a b"] {
                    n.normalize_into(t, &mut buf);
                    let expected: String = {
                        let u = n.unicode(t);
                        let body: String = u.chars().map(|c| if c == ' ' { META } else { c }).collect();
                        if prefix && !u.is_empty() {
                            format!("{META}{body}")
                        } else {
                            body
                        }
                    };
                    assert_eq!(buf, expected, "{kind:?} {prefix} {t:?}");
                }
            }
        }
    }

    #[test]
    fn no_prefix_setting() {
        let n = Normalizer::new(NormalizerKind::None, false);
        assert_eq!(n.normalize("a b"), "a▁b");
        assert_eq!(n.denormalize("▁a"), " a");
    }

    #[test]
    fn quick_paths_agree_with_full_normalisation() {
        for t in ["plain ascii", "déjà vu", "e\u{301}", "ﬁ①", "Ａ", "한국어", "\u{1100}\u{1161}", "ไทย", "ｶ"]
        {
            assert_eq!(nfkc(t), t.nfkc().collect::<String>(), "{t:?}");
            assert_eq!(nfc(t), t.nfc().collect::<String>(), "{t:?}");
        }
    }

    /// Every character the tables let through unchecked is its own NFC and NFKC, alone and
    /// after any other character.
    #[test]
    fn starter_tables_are_sound() {
        let nfkc_table = starter_table(is_nfkc_quick);
        let nfc_table = starter_table(is_nfc_quick);
        for c in (0..0x1_0000u32).filter_map(char::from_u32) {
            let s = c.to_string();
            if all_starters(&s, &nfkc_table) {
                assert_eq!(s.nfkc().collect::<String>(), s, "{c:?}");
                assert_eq!(format!("e{s}").nfkc().collect::<String>(), format!("e{s}"), "{c:?}");
            }
            if all_starters(&s, &nfc_table) {
                assert_eq!(s.nfc().collect::<String>(), s, "{c:?}");
                assert_eq!(format!("e{s}").nfc().collect::<String>(), format!("e{s}"), "{c:?}");
            }
        }
    }

    #[test]
    fn nfkc_and_nfc() {
        let nfkc = Normalizer::new(NormalizerKind::Nfkc, false);
        assert_eq!(nfkc.normalize("ﬁ①"), "fi1");
        let nfc = Normalizer::new(NormalizerKind::Nfc, false);
        assert_eq!(nfc.normalize("e\u{301}"), "é");
        assert_eq!(nfc.normalize("ﬁ"), "ﬁ");
    }
}
