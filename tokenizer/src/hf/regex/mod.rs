//! A small backtracking regular-expression engine for the patterns that `tokenizer.json` files
//! carry in `Replace` normalisers and `Split` pre-tokenizers: what `transformers` writes when it
//! converts a SentencePiece model (`\A +| +\z`, ` {2,}`, `\A▁`, alternations of escaped
//! pieces) and the pre-tokenizer splits of GPT-4-style byte-level tokenizers (letters, numbers
//! in runs of up to three, `\s+(?!\S)`, ...).
//!
//! Supported, with Oniguruma's meaning (what `tokenizers` runs, checked against it in the
//! tests): literals and escaped punctuation, `\n \t \r \f \v \e \a`, `\xHH`, `\x{H…}`,
//! `\uHHHH`; `.` (any character but `\n`); bracket classes with ranges, negation and the sets
//! below; `\s` (Unicode White_Space), `\d` (Nd), `\w` (L, M, N, Pc), their complements, and
//! `\p{..}` / `\P{..}` / `\p{^..}` over general categories (`L`, `Lu`, `N`, `Nd`, `P`, ...);
//! `\A`, `\z`, and `^` / `$` at line starts and ends (Ruby's meaning: after and before `\n`);
//! groups `( )` and `(?: )`, look-ahead `(?= )` and `(?! )`, the `i` flag (`(?i)`, `(?i: )`,
//! simple one-character case folding); alternation (leftmost alternative first); the quantifiers
//! `* + ? {n} {n,} {n,m} {,m}`, greedy or lazy. Anything else (scripts such as `\p{Han}`,
//! `\b`, `\h`, look-behind, back-references, other flags, possessive quantifiers) is refused
//! with a message naming it, since its meaning would have to be guessed.
//!
//! [`Regex::find_iter`] gives non-overlapping matches left to right; like the `onig` crate it
//! skips an empty match that starts where the previous match ended, and like `tokenizers` it finds
//! nothing in empty text.

mod class;
mod parse;

use std::fmt;

use class::CharSet;

/// A compiled pattern.
#[derive(Clone)]
pub(crate) struct Regex {
    source: String,
    root: Alternation,
    /// Where a match can start.
    start: Start,
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.source == other.source
    }
}

/// Alternatives, each a sequence, tried in order.
#[derive(Clone, Debug)]
struct Alternation(Vec<Vec<Node>>);

#[derive(Clone, Debug)]
enum Node {
    Char(char),
    /// One character of a set (a class, `.`, `\s`, a caseless literal, ...).
    Set(CharSet),
    /// `\A`.
    TextStart,
    /// `\z`.
    TextEnd,
    /// `^`: the start of the text or after `\n`.
    LineStart,
    /// `$`: the end of the text or before `\n`.
    LineEnd,
    Group(Alternation),
    /// `(?= )`, or with `negated` `(?! )`.
    Look {
        alt: Alternation,
        negated: bool,
    },
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
        greedy: bool,
    },
}

impl Node {
    /// Whether the node matches exactly one character (so repeating it needs no recursion).
    fn one_char(&self) -> bool {
        matches!(self, Node::Char(_) | Node::Set(_))
    }

    fn accepts(&self, c: char) -> bool {
        match self {
            Node::Char(x) => *x == c,
            Node::Set(set) => set.contains(c),
            _ => false,
        }
    }
}

/// The largest repeat count a pattern may state (Oniguruma's limit is 100,000).
const MAX_REPEAT: u32 = 100_000;

/// Where a match can start: anywhere, or only at the start of the text, at line starts, and/or
/// at characters a first node accepts (a filter that spares trying the pattern everywhere).
#[derive(Clone, Debug)]
enum Start {
    Anywhere,
    Only { text_start: bool, line_start: bool, firsts: Vec<Node> },
}

impl Start {
    fn of_alternation(alt: &Alternation) -> Start {
        let (mut text_start, mut line_start, mut firsts) = (false, false, Vec::new());
        for seq in &alt.0 {
            match Start::of_sequence(seq) {
                Start::Anywhere => return Start::Anywhere,
                Start::Only { text_start: t, line_start: l, firsts: f } => {
                    text_start |= t;
                    line_start |= l;
                    firsts.extend(f);
                }
            }
        }
        Start::Only { text_start, line_start, firsts }
    }

    /// From the first node; anything that may match empty gives `Anywhere`.
    fn of_sequence(seq: &[Node]) -> Start {
        let only = |text_start, line_start, firsts| Start::Only { text_start, line_start, firsts };
        match seq.first() {
            Some(n) if n.one_char() => only(false, false, vec![n.clone()]),
            Some(Node::TextStart) => only(true, false, Vec::new()),
            Some(Node::LineStart) => only(false, true, Vec::new()),
            Some(Node::Group(alt)) => Start::of_alternation(alt),
            Some(Node::Repeat { node, min, .. }) if *min > 0 => {
                Start::of_sequence(std::slice::from_ref(node))
            }
            _ => Start::Anywhere,
        }
    }

    fn admits(&self, text: &str, pos: usize) -> bool {
        match self {
            Start::Anywhere => true,
            Start::Only { text_start, line_start, firsts } => {
                (*text_start && pos == 0)
                    || (*line_start && (pos == 0 || text.as_bytes()[pos - 1] == b'\n'))
                    || text[pos..].chars().next().is_some_and(|c| firsts.iter().any(|n| n.accepts(c)))
            }
        }
    }
}

impl Regex {
    /// Compiles `source`, or says what in it is not supported.
    pub(crate) fn new(source: &str) -> Result<Regex, String> {
        let root = parse::Parser::new(source).pattern()?;
        let start = Start::of_alternation(&root);
        Ok(Regex { source: source.to_string(), root, start })
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// The non-overlapping matches in `text`, left to right, as byte ranges.
    /// Empty text has none (as `tokenizers` treats it, whatever the pattern).
    pub(crate) fn find_iter(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        if text.is_empty() {
            return out;
        }
        let mut search_from = 0;
        let mut last_end: Option<usize> = None;
        while search_from <= text.len() {
            let Some((start, end)) = self.find_at(text, search_from) else { break };
            if start == end && last_end == Some(end) {
                // An empty match right where the previous one ended: step over one character.
                match text[search_from..].chars().next() {
                    Some(c) => search_from += c.len_utf8(),
                    None => break,
                }
                continue;
            }
            out.push((start, end));
            last_end = Some(end);
            search_from = if end > start {
                end
            } else {
                match text[end..].chars().next() {
                    Some(c) => end + c.len_utf8(),
                    None => text.len() + 1,
                }
            };
        }
        out
    }

    /// The leftmost match starting at or after `from`.
    fn find_at(&self, text: &str, from: usize) -> Option<(usize, usize)> {
        let mut start = from;
        loop {
            if !self.start.admits(text, start) {
                start += text[start..].chars().next()?.len_utf8();
                continue;
            }
            let mut end = None;
            let matched = alternation(&self.root, text, start, &mut |e| {
                end = Some(e);
                true
            });
            if matched {
                return end.map(|e| (start, e));
            }
            start += text[start..].chars().next()?.len_utf8();
        }
    }
}

type Continuation<'k> = &'k mut dyn FnMut(usize) -> bool;

fn alternation(alt: &Alternation, text: &str, pos: usize, k: Continuation<'_>) -> bool {
    alt.0.iter().any(|seq| sequence(seq, text, pos, k))
}

fn sequence(seq: &[Node], text: &str, pos: usize, k: Continuation<'_>) -> bool {
    match seq.split_first() {
        None => k(pos),
        Some((node, rest)) => one(node, text, pos, &mut |p| sequence(rest, text, p, k)),
    }
}

fn one(node: &Node, text: &str, pos: usize, k: Continuation<'_>) -> bool {
    match node {
        Node::TextStart => pos == 0 && k(pos),
        Node::TextEnd => pos == text.len() && k(pos),
        Node::LineStart => (pos == 0 || text.as_bytes()[pos - 1] == b'\n') && k(pos),
        Node::LineEnd => (pos == text.len() || text.as_bytes()[pos] == b'\n') && k(pos),
        Node::Group(alt) => alternation(alt, text, pos, k),
        Node::Look { alt, negated } => {
            // Atomic: whether the look-ahead matches at all, then go on from here.
            let found = alternation(alt, text, pos, &mut |_| true);
            found != *negated && k(pos)
        }
        Node::Repeat { node, min, max, greedy } if node.one_char() => {
            // Iteratively: the run of characters the node accepts, then its lengths from the
            // longest down (greedy) or from the shortest up (lazy).
            let (min, max) = (*min as usize, max.map_or(usize::MAX, |m| m as usize));
            let run = text[pos..].chars().take(max).take_while(|&c| node.accepts(c));
            if *greedy {
                let (mut count, mut at) = run.fold((0, pos), |(n, at), c| (n + 1, at + c.len_utf8()));
                while count >= min {
                    if k(at) {
                        return true;
                    }
                    let Some(c) = text[..at].chars().next_back().filter(|_| count > 0) else { break };
                    at -= c.len_utf8();
                    count -= 1;
                }
                false
            } else {
                let mut at = pos;
                let mut count = 0;
                let mut chars = run;
                loop {
                    if count >= min && k(at) {
                        return true;
                    }
                    let Some(c) = chars.next() else { return false };
                    at += c.len_utf8();
                    count += 1;
                }
            }
        }
        Node::Repeat { node, min, max, greedy } => repeat(node, (*min, *max, *greedy), 0, text, pos, k),
        single => {
            let c = text[pos..].chars().next();
            c.is_some_and(|c| single.accepts(c)) && k(pos + c.map_or(0, char::len_utf8))
        }
    }
}

/// A repeat of a node longer than one character, `count` iterations done.
fn repeat(
    node: &Node,
    q @ (min, max, greedy): (u32, Option<u32>, bool),
    count: u32,
    text: &str,
    pos: usize,
    k: Continuation<'_>,
) -> bool {
    let done = count >= min;
    let more = |k: Continuation<'_>| {
        max.is_none_or(|m| count < m)
            && one(node, text, pos, &mut |p| {
                // An empty iteration past the minimum would repeat forever.
                !(p == pos && done) && repeat(node, q, count + 1, text, p, k)
            })
    };
    // Greedy: another iteration first, then stopping here; lazy: the other way round.
    let (first_more, then_more) = if greedy { (true, false) } else { (false, true) };
    (first_more && more(&mut *k)) || (done && k(pos)) || (then_more && more(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(p: &str, t: &str) -> Vec<(usize, usize)> {
        Regex::new(p).unwrap().find_iter(t)
    }

    #[test]
    fn transformers_sentencepiece_patterns() {
        assert_eq!(find(r"\A +| +\z", "  a b  "), vec![(0, 2), (5, 7)]);
        assert_eq!(find(r"\A +| +\z", "a b"), vec![]);
        assert_eq!(find(" {2,}", "a  b c   d"), vec![(1, 3), (6, 9)]);
        assert_eq!(find("\\A\u{2581}", "\u{2581}a\u{2581}"), vec![(0, 3)]);
        assert_eq!(find(r"<mask>|ﬁ|\[INST\]", "a<mask>ﬁ[INST]"), vec![(1, 7), (7, 10), (10, 16)]);
    }

    #[test]
    fn leftmost_first_alternation_and_laziness() {
        assert_eq!(find("ab|abc", "abc"), vec![(0, 2)]);
        assert_eq!(find("a+?", "aaa"), vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(find("(?:ab)+c", "ababc abc"), vec![(0, 5), (6, 9)]);
        assert_eq!(find("(?:ab)+?", "abab"), vec![(0, 2), (2, 4)]);
        assert_eq!(find("(?:ab){2,}?c|(?:xy)*", "ababc"), vec![(0, 5)]);
        assert_eq!(find("[^a-c ]+", "abxyz cd"), vec![(2, 5), (7, 8)]);
        assert_eq!(find(r"x{2}|\x41", "xxxA"), vec![(0, 2), (3, 4)]);
        assert_eq!(find("a{x}", "a{x}"), vec![(0, 4)]);
        assert_eq!(find("a{,2}", "aaa"), vec![(0, 2), (2, 3)]);
        assert_eq!(find("a{,}", "a{,}"), vec![(0, 4)]);
        assert_eq!(find(".", "a\nb"), vec![(0, 1), (2, 3)]);
    }

    #[test]
    fn empty_matches_step_like_onig() {
        assert_eq!(find("a*", "baa"), vec![(0, 0), (1, 3)]);
        assert_eq!(find(r"\A", "xy"), vec![(0, 0)]);
        assert_eq!(find("(?:a|)*", "b"), vec![(0, 0), (1, 1)]);
    }

    /// Every case of `tests/fixtures/hf/regex/reference.json` (made with `tokenizers`, whose
    /// `Replace` normaliser runs Oniguruma): each match replaced by `<>`.
    #[test]
    fn agrees_with_oniguruma() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf/regex/reference.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = doc["regex"].as_array().unwrap();
        assert!(cases.len() >= 40);
        for case in cases {
            let [pattern, text, want] = [0, 1, 2].map(|i| case[i].as_str().unwrap());
            let mut got = String::new();
            let mut pos = 0;
            for (a, b) in find(pattern, text) {
                got.push_str(&text[pos..a]);
                got.push_str("<>");
                pos = b;
            }
            got.push_str(&text[pos..]);
            assert_eq!(got, want, "{pattern:?} on {text:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any pattern compiles or is refused, and any compiled one searches any text, without
        /// panicking and with matches that are in order, disjoint and on character boundaries.
        #[test]
        fn any_pattern_on_any_text(pattern in "[ab\\\\()|*+?{},0-9\\[\\]^.:Az-]{0,12}", text in "[ab{},é-]{0,12}") {
            if let Ok(re) = Regex::new(&pattern) {
                let mut last = 0;
                for (a, b) in re.find_iter(&text) {
                    proptest::prop_assert!(last <= a && a <= b && b <= text.len());
                    proptest::prop_assert!(text.is_char_boundary(a) && text.is_char_boundary(b));
                    last = b;
                }
            }
        }
    }

    #[test]
    fn unsupported_syntax_is_named() {
        for p in [
            r"\p{Han}",
            r"\p{L",
            r"\pL",
            "(?m)a",
            "(?<=a)b",
            "(?<n>a)",
            "(?=a)*",
            "^*",
            "a++",
            r"\b",
            r"\h",
            r"\Z",
            r"[\A]",
            "[[:alpha:]]",
            "(a",
            "a)",
            "*a",
            "a{2}{3}",
        ] {
            assert!(Regex::new(p).is_err(), "{p}");
        }
    }
}
