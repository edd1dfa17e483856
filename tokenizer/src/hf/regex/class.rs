//! Character sets: bracket classes, `.`, and the escapes `\s \d \w \p{..}`, with Oniguruma's
//! Unicode meaning (checked against it through `tokenizers`, see the module tests).

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// A named set of characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Property {
    /// `\s`: the Unicode White_Space characters.
    Space,
    /// `\d`: decimal digits (category Nd).
    Digit,
    /// `\w`: letters, marks, numbers and connector punctuation (L, M, N, Pc).
    Word,
    /// `\p{..}`: a general category or a group of them (`L`, `Lu`, `N`, ...).
    Category(&'static [Gc]),
}

const LETTER: &[Gc] =
    &[Gc::UppercaseLetter, Gc::LowercaseLetter, Gc::TitlecaseLetter, Gc::ModifierLetter, Gc::OtherLetter];
const MARK: &[Gc] = &[Gc::NonspacingMark, Gc::SpacingMark, Gc::EnclosingMark];
const NUMBER: &[Gc] = &[Gc::DecimalNumber, Gc::LetterNumber, Gc::OtherNumber];
const PUNCTUATION: &[Gc] = &[
    Gc::ConnectorPunctuation,
    Gc::DashPunctuation,
    Gc::OpenPunctuation,
    Gc::ClosePunctuation,
    Gc::InitialPunctuation,
    Gc::FinalPunctuation,
    Gc::OtherPunctuation,
];
const SYMBOL: &[Gc] = &[Gc::MathSymbol, Gc::CurrencySymbol, Gc::ModifierSymbol, Gc::OtherSymbol];
const SEPARATOR: &[Gc] = &[Gc::SpaceSeparator, Gc::LineSeparator, Gc::ParagraphSeparator];
const OTHER: &[Gc] = &[Gc::Control, Gc::Format, Gc::Surrogate, Gc::PrivateUse, Gc::Unassigned];

/// The categories a `\p{..}` name stands for (the one- and two-letter abbreviations).
pub(super) fn category(name: &str) -> Option<&'static [Gc]> {
    Some(match name {
        "L" => LETTER,
        "M" => MARK,
        "N" => NUMBER,
        "P" => PUNCTUATION,
        "S" => SYMBOL,
        "Z" => SEPARATOR,
        "C" => OTHER,
        "Lu" => &[Gc::UppercaseLetter],
        "Ll" => &[Gc::LowercaseLetter],
        "Lt" => &[Gc::TitlecaseLetter],
        "Lm" => &[Gc::ModifierLetter],
        "Lo" => &[Gc::OtherLetter],
        "Mn" => &[Gc::NonspacingMark],
        "Mc" => &[Gc::SpacingMark],
        "Me" => &[Gc::EnclosingMark],
        "Nd" => &[Gc::DecimalNumber],
        "Nl" => &[Gc::LetterNumber],
        "No" => &[Gc::OtherNumber],
        "Pc" => &[Gc::ConnectorPunctuation],
        "Pd" => &[Gc::DashPunctuation],
        "Ps" => &[Gc::OpenPunctuation],
        "Pe" => &[Gc::ClosePunctuation],
        "Pi" => &[Gc::InitialPunctuation],
        "Pf" => &[Gc::FinalPunctuation],
        "Po" => &[Gc::OtherPunctuation],
        "Sm" => &[Gc::MathSymbol],
        "Sc" => &[Gc::CurrencySymbol],
        "Sk" => &[Gc::ModifierSymbol],
        "So" => &[Gc::OtherSymbol],
        "Zs" => &[Gc::SpaceSeparator],
        "Zl" => &[Gc::LineSeparator],
        "Zp" => &[Gc::ParagraphSeparator],
        "Cc" => &[Gc::Control],
        "Cf" => &[Gc::Format],
        "Cs" => &[Gc::Surrogate],
        "Co" => &[Gc::PrivateUse],
        "Cn" => &[Gc::Unassigned],
        _ => return None,
    })
}

impl Property {
    fn contains(self, c: char) -> bool {
        match self {
            Property::Space => matches!(
                c,
                '\t'..='\r'
                    | ' '
                    | '\u{85}'
                    | '\u{a0}'
                    | '\u{1680}'
                    | '\u{2000}'..='\u{200a}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202f}'
                    | '\u{205f}'
                    | '\u{3000}'
            ),
            Property::Digit => get_general_category(c) == Gc::DecimalNumber,
            Property::Word => {
                let g = get_general_category(c);
                LETTER.contains(&g)
                    || MARK.contains(&g)
                    || NUMBER.contains(&g)
                    || g == Gc::ConnectorPunctuation
            }
            Property::Category(cats) => cats.contains(&get_general_category(c)),
        }
    }
}

/// One member of a set.
#[derive(Clone, Debug)]
pub(super) enum Item {
    Range(char, char),
    /// A property, or (`true`) its complement.
    Property(Property, bool),
}

/// A set of characters, perhaps complemented, perhaps compared without case.
#[derive(Clone, Debug)]
pub(super) struct CharSet {
    pub(super) items: Vec<Item>,
    pub(super) negated: bool,
    pub(super) caseless: bool,
}

impl CharSet {
    /// `.`: any character but `\n`.
    pub(super) fn any_but_newline() -> CharSet {
        CharSet { items: vec![Item::Range('\n', '\n')], negated: true, caseless: false }
    }

    /// One property (`\s`, `\D`, `\p{L}`, ...).
    pub(super) fn property(p: Property, negated: bool) -> CharSet {
        CharSet { items: vec![Item::Property(p, negated)], negated: false, caseless: false }
    }

    fn holds(&self, c: char) -> bool {
        self.items.iter().any(|item| match *item {
            Item::Range(a, b) => a <= c && c <= b,
            Item::Property(p, neg) => p.contains(c) != neg,
        })
    }

    /// Whether `c` is in the set (without case: `c` or its simple lower or upper case form).
    pub(super) fn contains(&self, c: char) -> bool {
        let hit = self.holds(c) || (self.caseless && (self.holds(fold(c)) || self.holds(upper(c))));
        hit != self.negated
    }
}

/// The simple lower-case form of `c` (itself when it has none or several).
fn fold(c: char) -> char {
    single(c.to_lowercase()).unwrap_or(c)
}

/// The simple upper-case form of `c` (itself when it has none or several).
fn upper(c: char) -> char {
    single(c.to_uppercase()).unwrap_or(c)
}

/// The only item of `it`, if it has exactly one.
fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    match (it.next(), it.next()) {
        (Some(x), None) => Some(x),
        _ => None,
    }
}
