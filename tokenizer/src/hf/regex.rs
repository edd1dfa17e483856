//! A small backtracking regular-expression engine for the patterns that `tokenizer.json` files
//! carry in `Replace` normalisers and `Split` pre-tokenizers besides the GPT-2 expression:
//! `transformers` writes `\A +| +\z`, ` {2,}` and `\A▁` when it converts a SentencePiece model,
//! and an alternation of escaped user-defined pieces.
//!
//! Supported, with Oniguruma's meaning (what `tokenizers` runs): literals and escaped
//! punctuation, `\n \t \r \f \v \e`, `\xHH` and `\x{H…}`, `.` (any character but `\n`),
//! bracket classes with ranges and negation, `\A` and `\z`, groups `( )` and `(?: )`,
//! alternation (leftmost alternative first), and the quantifiers `* + ? {n} {n,} {n,m}`, greedy
//! or lazy (`?` after them; `{,m}` is `{0,m}` as in Oniguruma). Anything else (`\s`, `\d`, `\w`, `\p{..}`, `^`, `$`, `\b`,
//! look-around, back-references, flags, possessive quantifiers) is refused with a message
//! naming it, since its meaning would have to be guessed.
//!
//! [`Regex::find_iter`] gives non-overlapping matches left to right; like the `onig` crate it
//! skips an empty match that starts where the previous match ended, and like `tokenizers` it finds
//! nothing in empty text.

use std::fmt;

/// A compiled pattern.
#[derive(Clone)]
pub(crate) struct Regex {
    source: String,
    root: Alternation,
    /// Where a match can start.
    start: Start,
}

/// Where a match can start: anywhere, or only at the start of the text and/or at characters
/// within some ranges (a filter that spares trying the pattern at every position).
#[derive(Clone, Debug)]
enum Start {
    Anywhere,
    Only { text_start: bool, chars: Vec<(char, char)> },
}

impl Start {
    fn of_alternation(alt: &Alternation) -> Start {
        let mut text_start = false;
        let mut chars = Vec::new();
        for seq in &alt.0 {
            match Start::of_sequence(seq) {
                Start::Anywhere => return Start::Anywhere,
                Start::Only { text_start: t, chars: c } => {
                    text_start |= t;
                    chars.extend(c);
                }
            }
        }
        Start::Only { text_start, chars }
    }

    /// From the first node; anything that may match empty or any character gives `Anywhere`.
    fn of_sequence(seq: &[Node]) -> Start {
        match seq.first() {
            Some(Node::Char(c)) => Start::Only { text_start: false, chars: vec![(*c, *c)] },
            Some(Node::Class { ranges, negated: false }) => {
                Start::Only { text_start: false, chars: ranges.clone() }
            }
            Some(Node::TextStart) => Start::Only { text_start: true, chars: Vec::new() },
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
            Start::Only { text_start, chars } => {
                (*text_start && pos == 0)
                    || text[pos..]
                        .chars()
                        .next()
                        .is_some_and(|c| chars.iter().any(|&(a, b)| a <= c && c <= b))
            }
        }
    }
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
    /// `.`: any character but `\n`.
    Any,
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
    /// `\A`.
    TextStart,
    /// `\z`.
    TextEnd,
    Group(Alternation),
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
        matches!(self, Node::Char(_) | Node::Any | Node::Class { .. })
    }

    fn accepts(&self, c: char) -> bool {
        match self {
            Node::Char(x) => *x == c,
            Node::Any => c != '\n',
            Node::Class { ranges, negated } => ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated,
            _ => false,
        }
    }
}

/// The largest repeat count a pattern may state (Oniguruma's limit is 100,000).
const MAX_REPEAT: u32 = 100_000;

struct Parser<'a> {
    source: &'a str,
    chars: Vec<char>,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("regex {:?}: {what} (at character {})", self.source, self.at)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn alternation(&mut self, depth: usize) -> Result<Alternation, String> {
        if depth > 64 {
            return Err(self.error("groups nested too deeply"));
        }
        let mut alternatives = vec![self.sequence(depth)?];
        while self.eat('|') {
            alternatives.push(self.sequence(depth)?);
        }
        Ok(Alternation(alternatives))
    }

    fn sequence(&mut self, depth: usize) -> Result<Vec<Node>, String> {
        let mut seq = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom(depth)?;
            seq.push(self.quantified(atom)?);
        }
        Ok(seq)
    }

    fn atom(&mut self, depth: usize) -> Result<Node, String> {
        let Some(c) = self.peek() else { return Err(self.error("unexpected end")) };
        self.at += 1;
        Ok(match c {
            '(' => {
                if self.eat('?') && !self.eat(':') {
                    return Err(self.error("only (?: ) groups are supported"));
                }
                let inner = self.alternation(depth + 1)?;
                if !self.eat(')') {
                    return Err(self.error("unclosed group"));
                }
                Node::Group(inner)
            }
            '[' => self.class()?,
            '.' => Node::Any,
            '^' | '$' => return Err(self.error("line anchors ^ and $ are not supported (use \\A, \\z)")),
            '*' | '+' | '?' => return Err(self.error("a quantifier with nothing to repeat")),
            '\\' => match self.peek() {
                Some('A') => {
                    self.at += 1;
                    Node::TextStart
                }
                Some('z') => {
                    self.at += 1;
                    Node::TextEnd
                }
                _ => Node::Char(self.escape()?),
            },
            c => Node::Char(c),
        })
    }

    /// The character of an escape (after the backslash).
    fn escape(&mut self) -> Result<char, String> {
        let Some(c) = self.peek() else { return Err(self.error("a trailing backslash")) };
        self.at += 1;
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'f' => '\u{c}',
            'v' => '\u{b}',
            'e' => '\u{1b}',
            'x' => {
                let digits: String = if self.eat('{') {
                    let start = self.at;
                    while self.peek().is_some_and(|c| c != '}') {
                        self.at += 1;
                    }
                    let d: String = self.chars[start..self.at].iter().collect();
                    if !self.eat('}') {
                        return Err(self.error("unclosed \\x{"));
                    }
                    d
                } else {
                    let d: String =
                        self.chars[self.at..].iter().take(2).take_while(|c| c.is_ascii_hexdigit()).collect();
                    self.at += d.chars().count();
                    d
                };
                u32::from_str_radix(&digits, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| self.error("a bad \\x escape"))?
            }
            c if !c.is_ascii_alphanumeric() => c,
            c => return Err(self.error(&format!("the escape \\{c} is not supported"))),
        })
    }

    fn class(&mut self) -> Result<Node, String> {
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else { return Err(self.error("unclosed [ class")) };
            self.at += 1;
            if c == ']' && !first {
                break;
            }
            first = false;
            if c == '[' {
                return Err(self.error("nested classes and POSIX brackets are not supported"));
            }
            if c == '&' && self.peek() == Some('&') {
                return Err(self.error("class intersection && is not supported"));
            }
            let lo = if c == '\\' { self.escape()? } else { c };
            let hi = if self.peek() == Some('-') && self.chars.get(self.at + 1).is_some_and(|&n| n != ']') {
                self.at += 1;
                let Some(h) = self.peek() else { return Err(self.error("unclosed [ class")) };
                self.at += 1;
                let h = if h == '\\' { self.escape()? } else { h };
                if h < lo {
                    return Err(self.error("a class range out of order"));
                }
                h
            } else {
                lo
            };
            ranges.push((lo, hi));
        }
        Ok(Node::Class { ranges, negated })
    }

    /// A decimal count of a `{n,m}` quantifier.
    fn count(&mut self) -> Option<u32> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        let digits: String = self.chars[start..self.at].iter().collect();
        digits.parse().ok()
    }

    /// `{n}`, `{n,}`, `{n,m}` at the cursor (consumed), or `None` (cursor kept: a literal `{`).
    fn interval(&mut self) -> Option<(u32, Option<u32>)> {
        let save = self.at;
        let parsed = (|| {
            if !self.eat('{') {
                return None;
            }
            // Oniguruma (Ruby syntax) reads `{,n}` as `{0,n}` (and `{,}` as text).
            let no_min = self.peek() == Some(',');
            let min = if no_min { 0 } else { self.count()? };
            let max = if self.eat(',') {
                if self.peek() == Some('}') && !no_min {
                    None
                } else {
                    Some(self.count()?)
                }
            } else {
                Some(min)
            };
            self.eat('}').then_some((min, max))
        })();
        if parsed.is_none() {
            self.at = save;
        }
        parsed
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, String> {
        let (min, max) = match self.peek() {
            Some('*') => {
                self.at += 1;
                (0, None)
            }
            Some('+') => {
                self.at += 1;
                (1, None)
            }
            Some('?') => {
                self.at += 1;
                (0, Some(1))
            }
            Some('{') => match self.interval() {
                Some(q) => q,
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT || m < min) {
            return Err(self.error("a bad repeat count"));
        }
        if matches!(atom, Node::TextStart | Node::TextEnd) {
            return Err(self.error("a quantified anchor"));
        }
        let greedy = !self.eat('?');
        if matches!(self.peek(), Some('*' | '+' | '?' | '{')) && self.interval_or_op_follows() {
            return Err(self.error("nested or possessive quantifiers are not supported"));
        }
        Ok(Node::Repeat { node: Box::new(atom), min, max, greedy })
    }

    fn interval_or_op_follows(&mut self) -> bool {
        if self.peek() == Some('{') {
            let save = self.at;
            let is = self.interval().is_some();
            self.at = save;
            is
        } else {
            true
        }
    }
}

impl Regex {
    /// Compiles `source`, or says what in it is not supported.
    pub(crate) fn new(source: &str) -> Result<Regex, String> {
        let mut p = Parser { source, chars: source.chars().collect(), at: 0 };
        let root = p.alternation(0)?;
        if p.at != p.chars.len() {
            return Err(p.error("an unmatched )"));
        }
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
        Node::Group(alt) => alternation(alt, text, pos, k),
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

    /// Every case of `tests/fixtures/hf/spm/reference.json` (made with `tokenizers`, whose
    /// `Replace` normaliser runs Oniguruma): each match replaced by `<>`.
    #[test]
    fn agrees_with_oniguruma() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf/spm/reference.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = doc["regex"].as_array().unwrap();
        assert!(cases.len() >= 25);
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
            r"\s+",
            r"\p{L}",
            "^a",
            "a$",
            "(?i)a",
            "(?=a)",
            "a++",
            r"\b",
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
