//! The pattern parser: text to [`Alternation`], or a message naming what is not supported.

use super::class::{category, CharSet, Item, Property};
use super::{Alternation, Node, MAX_REPEAT};

pub(super) struct Parser<'a> {
    source: &'a str,
    chars: Vec<char>,
    at: usize,
    /// Inside `(?i)` / `(?i: )`.
    caseless: bool,
}

/// What an escape stands for.
enum Escape {
    Char(char),
    Set(CharSet),
    TextStart,
    TextEnd,
}

impl<'a> Parser<'a> {
    pub(super) fn new(source: &'a str) -> Parser<'a> {
        Parser { source, chars: source.chars().collect(), at: 0, caseless: false }
    }

    /// The whole pattern.
    pub(super) fn pattern(mut self) -> Result<Alternation, String> {
        let root = self.alternation(0)?;
        if self.at != self.chars.len() {
            return Err(self.error("an unmatched )"));
        }
        Ok(root)
    }

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

    fn eat_str(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        if self.chars.get(self.at..self.at + n).is_some_and(|w| w.iter().copied().eq(s.chars())) {
            self.at += n;
            true
        } else {
            false
        }
    }

    /// Alternatives up to `)` or the end; a `(?i)` inside lasts to the end of this group.
    fn alternation(&mut self, depth: usize) -> Result<Alternation, String> {
        if depth > 64 {
            return Err(self.error("groups nested too deeply"));
        }
        let outer = self.caseless;
        let mut alternatives = vec![self.sequence(depth)?];
        while self.eat('|') {
            alternatives.push(self.sequence(depth)?);
        }
        self.caseless = outer;
        Ok(Alternation(alternatives))
    }

    fn sequence(&mut self, depth: usize) -> Result<Vec<Node>, String> {
        let mut seq = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            if let Some(atom) = self.atom(depth)? {
                seq.push(self.quantified(atom)?);
            }
        }
        Ok(seq)
    }

    /// One atom, or `None` for a flag setting such as `(?i)`.
    fn atom(&mut self, depth: usize) -> Result<Option<Node>, String> {
        let Some(c) = self.peek() else { return Err(self.error("unexpected end")) };
        self.at += 1;
        Ok(Some(match c {
            '(' => return self.group(depth),
            '[' => Node::Set(self.class()?),
            '.' => Node::Set(CharSet::any_but_newline()),
            '^' => Node::LineStart,
            '$' => Node::LineEnd,
            '*' | '+' | '?' => return Err(self.error("a quantifier with nothing to repeat")),
            '\\' => match self.escape(false)? {
                Escape::Char(c) => self.literal(c),
                Escape::Set(s) => Node::Set(s),
                Escape::TextStart => Node::TextStart,
                Escape::TextEnd => Node::TextEnd,
            },
            c => self.literal(c),
        }))
    }

    fn literal(&self, c: char) -> Node {
        if self.caseless {
            Node::Set(CharSet { items: vec![Item::Range(c, c)], negated: false, caseless: true })
        } else {
            Node::Char(c)
        }
    }

    /// After `(`: a group, a look-ahead, or flags.
    fn group(&mut self, depth: usize) -> Result<Option<Node>, String> {
        let outer = self.caseless;
        let node = if self.eat('?') {
            if self.eat(':') {
                Some(Node::Group(self.alternation(depth + 1)?))
            } else if self.eat('=') {
                Some(Node::Look { alt: self.alternation(depth + 1)?, negated: false })
            } else if self.eat('!') {
                Some(Node::Look { alt: self.alternation(depth + 1)?, negated: true })
            } else if self.eat_str("i)") || self.eat_str("-i)") {
                // Case-insensitive (or not) from here to the end of the enclosing group.
                self.caseless = self.chars[self.at - 3] != '-';
                return Ok(None);
            } else if self.eat_str("i:") || self.eat_str("-i:") {
                self.caseless = self.chars[self.at - 3] != '-';
                let inner = self.alternation(depth + 1)?;
                Some(Node::Group(inner))
            } else {
                return Err(self.error("only (?: ), (?= ), (?! ) and the i flag are supported"));
            }
        } else {
            Some(Node::Group(self.alternation(depth + 1)?))
        };
        self.caseless = outer;
        if !self.eat(')') {
            return Err(self.error("unclosed group"));
        }
        Ok(node)
    }

    /// After a backslash; `in_class`: inside brackets (no anchors there).
    fn escape(&mut self, in_class: bool) -> Result<Escape, String> {
        let Some(c) = self.peek() else { return Err(self.error("a trailing backslash")) };
        self.at += 1;
        let set = |p: Property, neg: bool| Ok(Escape::Set(CharSet::property(p, neg)));
        Ok(Escape::Char(match c {
            'A' if !in_class => return Ok(Escape::TextStart),
            'z' if !in_class => return Ok(Escape::TextEnd),
            's' | 'S' => return set(Property::Space, c == 'S'),
            'd' | 'D' => return set(Property::Digit, c == 'D'),
            'w' | 'W' => return set(Property::Word, c == 'W'),
            'p' | 'P' => {
                if !self.eat('{') {
                    return Err(self.error("\\p needs {name}"));
                }
                let negated = (c == 'P') != self.eat('^');
                let name = self.braced("\\p{")?;
                let cats = category(&name).ok_or_else(|| {
                    self.error(&format!("the property {name:?} is not supported (general categories only)"))
                })?;
                return set(Property::Category(cats), negated);
            }
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'f' => '\u{c}',
            'v' => '\u{b}',
            'e' => '\u{1b}',
            'a' => '\u{7}',
            'x' => self.hex(2)?,
            'u' => self.hex(4)?,
            c if !c.is_ascii_alphanumeric() => c,
            c => return Err(self.error(&format!("the escape \\{c} is not supported"))),
        }))
    }

    /// The text up to the next `}` (consumed), after an opening `what` already read.
    fn braced(&mut self, what: &str) -> Result<String, String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c != '}') {
            self.at += 1;
        }
        let text: String = self.chars[start..self.at].iter().collect();
        if !self.eat('}') {
            return Err(self.error(&format!("unclosed {what}")));
        }
        Ok(text)
    }

    /// `\x{H..}`, or up to `digits` hex digits (`\xHH`, `\uHHHH`).
    fn hex(&mut self, digits: usize) -> Result<char, String> {
        let text: String = if self.chars[self.at - 1] == 'x' && self.eat('{') {
            self.braced("\\x{")?
        } else {
            let d: String =
                self.chars[self.at..].iter().take(digits).take_while(|c| c.is_ascii_hexdigit()).collect();
            self.at += d.chars().count();
            d
        };
        u32::from_str_radix(&text, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error("a bad hex escape"))
    }

    /// After `[`.
    fn class(&mut self) -> Result<CharSet, String> {
        let negated = self.eat('^');
        let mut items = Vec::new();
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
            let lo = if c == '\\' {
                match self.escape(true)? {
                    Escape::Char(c) => c,
                    Escape::Set(s) => {
                        items.extend(s.items);
                        continue;
                    }
                    Escape::TextStart | Escape::TextEnd => unreachable!("no anchors in a class"),
                }
            } else {
                c
            };
            let hi = if self.peek() == Some('-') && self.chars.get(self.at + 1).is_some_and(|&n| n != ']') {
                self.at += 1;
                let Some(h) = self.peek() else { return Err(self.error("unclosed [ class")) };
                self.at += 1;
                let h = if h == '\\' {
                    match self.escape(true)? {
                        Escape::Char(c) => c,
                        _ => return Err(self.error("a class range ending in a set")),
                    }
                } else {
                    h
                };
                if h < lo {
                    return Err(self.error("a class range out of order"));
                }
                h
            } else {
                lo
            };
            items.push(Item::Range(lo, hi));
        }
        Ok(CharSet { items, negated, caseless: self.caseless })
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

    /// `{n}`, `{n,}`, `{n,m}`, `{,m}` at the cursor (consumed), or `None` (cursor kept: a
    /// literal `{`).
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
        if matches!(
            atom,
            Node::TextStart | Node::TextEnd | Node::LineStart | Node::LineEnd | Node::Look { .. }
        ) {
            return Err(self.error("a quantified anchor or look-ahead"));
        }
        let greedy = !self.eat('?');
        let follows = match self.peek() {
            Some('*' | '+' | '?') => true,
            Some('{') => {
                let save = self.at;
                let is = self.interval().is_some();
                self.at = save;
                is
            }
            _ => false,
        };
        if follows {
            return Err(self.error("nested or possessive quantifiers are not supported"));
        }
        Ok(Node::Repeat { node: Box::new(atom), min, max, greedy })
    }
}
