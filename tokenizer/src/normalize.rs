//! Text normalisation: Unicode normal form plus SentencePiece-style whitespace.
//!
//! Every space (U+0020) becomes the visible meta symbol [`META`] (`▁`, U+2581), which marks the
//! start of a word; runs of spaces are kept one meta symbol per space so that decoding is exact.
//! With `add_dummy_prefix` (the default) a `▁` is also put in front of non-empty text, as
//! SentencePiece does, so the first word looks like every other word.

use serde::{Deserialize, Serialize};
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

/// NFC of `text`. The quick check answers "already normalised" for most text (all ASCII, most
/// alphabetic scripts), which skips the decompose/recompose round trip.
pub(crate) fn nfc(text: &str) -> String {
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        text.to_string()
    } else {
        text.nfc().collect()
    }
}

/// NFKC of `text` (with the same quick check as [`nfc`]).
pub(crate) fn nfkc(text: &str) -> String {
    if is_nfkc_quick(text.chars()) == IsNormalized::Yes {
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
        let unicode = self.unicode(text);
        let mut out = String::with_capacity(unicode.len() + 3);
        if self.add_dummy_prefix && !unicode.is_empty() {
            out.push(META);
        }
        for c in unicode.chars() {
            out.push(if c == ' ' { META } else { c });
        }
        out
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

    #[test]
    fn nfkc_and_nfc() {
        let nfkc = Normalizer::new(NormalizerKind::Nfkc, false);
        assert_eq!(nfkc.normalize("ﬁ①"), "fi1");
        let nfc = Normalizer::new(NormalizerKind::Nfc, false);
        assert_eq!(nfc.normalize("e\u{301}"), "é");
        assert_eq!(nfc.normalize("ﬁ"), "ﬁ");
    }
}
