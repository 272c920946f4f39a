//! The TraceQL lexer: text to tokens, each with its 1-based column.

use super::ast::Scope;
use super::ParseError;
use crate::duration::parse_go_duration;

/// A token's kind and payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Pipe,
    Comma,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `=~`
    Re,
    /// `!~`
    NotRe,
    /// `&&`
    And,
    /// `||`
    Or,
    /// `>>`
    Desc,
    /// `<<`
    Anc,
    /// `~`
    Tilde,
    /// `!>`
    NotChild,
    /// `!>>`
    NotDesc,
    /// `!<`
    NotParent,
    /// `!<<`
    NotAnc,
    /// `&>`
    UnionChild,
    /// `&>>`
    UnionDesc,
    /// `&<`
    UnionParent,
    /// `&<<`
    UnionAnc,
    /// `&~`
    UnionSibling,
    /// A lone `!`.
    Bang,
    Str(String),
    Int(i64),
    Float(f64),
    /// Nanoseconds.
    Duration(i64),
    /// A word: `name`, `span:id`, `true`, `count`, ...
    Ident(String),
    /// `.name`, `span.name`, `resource."a b"`, ...
    Attr(Scope, String),
    Eof,
}

/// A token with where it starts and how it was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    /// 1-based column (in characters).
    pub column: usize,
    /// The text as written (empty at the end).
    pub text: String,
}

impl Token {
    /// How the token is named in an error message.
    pub fn describe(&self) -> String {
        match self.tok {
            Tok::Eof => "end of query".to_string(),
            _ => format!("{:?}", self.text),
        }
    }
}

/// Characters that end an attribute name.
fn ends_name(c: char) -> bool {
    c.is_whitespace() || "{}()=!<>~&|,\"`".contains(c)
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Lexer<'a> {
    chars: Vec<(usize, char)>,
    src: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).map(|(_, c)| *c)
    }

    fn byte_at(&self, pos: usize) -> usize {
        self.chars.get(pos).map_or(self.src.len(), |(b, _)| *b)
    }

    fn text(&self, from: usize) -> String {
        self.src[self.byte_at(from)..self.byte_at(self.pos)].to_string()
    }

    fn error(&self, at: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            column: at + 1,
            message: message.into(),
        }
    }

    /// A quoted string starting at the quote under `pos`.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let quote = self.peek(0).unwrap_or('"');
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek(0) else {
                return Err(self.error(start, "unterminated string: expected a closing quote"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c == '\\' && quote == '"' {
                let Some(e) = self.peek(0) else {
                    return Err(self.error(start, "unterminated string: expected a closing quote"));
                };
                self.pos += 1;
                out.push(match e {
                    '"' => '"',
                    '\\' => '\\',
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => {
                        return Err(self.error(
                            self.pos - 2,
                            format!(
                            "unknown escape \"\\{other}\" in string (use \\\" \\\\ \\n \\t \\r)"
                        ),
                        ))
                    }
                });
            } else {
                out.push(c);
            }
        }
    }

    /// An attribute name after its scope's dot (under `pos`).
    fn attr_name(&mut self, start: usize) -> Result<String, ParseError> {
        match self.peek(0) {
            Some('"') => self.string(),
            _ => {
                let from = self.pos;
                while self.peek(0).is_some_and(|c| !ends_name(c)) {
                    self.pos += 1;
                }
                if self.pos == from {
                    return Err(self.error(start, "expected an attribute name after \".\""));
                }
                Ok(self.text(from))
            }
        }
    }

    /// A number or duration starting under `pos` (digits), negated when `negative`.
    fn number(&mut self, start: usize, negative: bool) -> Result<Tok, ParseError> {
        let from = self.pos;
        while self
            .peek(0)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == 'µ' || c == 'μ')
        {
            self.pos += 1;
        }
        let text = self.text(from);
        let sign = if negative { -1 } else { 1 };
        if text.chars().any(|c| c.is_alphabetic()) {
            let d = parse_go_duration(&text).map_err(|e| {
                self.error(start, format!("invalid duration {text:?}: {}", e.problem))
            })?;
            let ns = i64::try_from(d.as_nanos())
                .map_err(|_| self.error(start, format!("duration {text:?} is too long")))?;
            Ok(Tok::Duration(sign * ns))
        } else if text.contains('.') {
            let f: f64 = text
                .parse()
                .map_err(|_| self.error(start, format!("invalid number {text:?}")))?;
            Ok(Tok::Float(sign as f64 * f))
        } else {
            let i: i64 = text
                .parse()
                .map_err(|_| self.error(start, format!("integer {text:?} is too large")))?;
            Ok(Tok::Int(sign * i))
        }
    }

    fn next(&mut self) -> Result<Option<Token>, ParseError> {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(c) = self.peek(0) else {
            return Ok(None);
        };
        let two = |l: &Self, s: &str| {
            let mut it = s.chars();
            it.next() == l.peek(0) && it.next() == l.peek(1)
        };
        let three = |l: &Self, s: &str| two(l, s) && s.chars().nth(2) == l.peek(2);
        let fixed: Option<(Tok, usize)> = if three(self, "!>>") {
            Some((Tok::NotDesc, 3))
        } else if three(self, "!<<") {
            Some((Tok::NotAnc, 3))
        } else if three(self, "&>>") {
            Some((Tok::UnionDesc, 3))
        } else if three(self, "&<<") {
            Some((Tok::UnionAnc, 3))
        } else {
            [
                ("!=", Tok::Ne),
                ("!~", Tok::NotRe),
                ("!>", Tok::NotChild),
                ("!<", Tok::NotParent),
                ("=~", Tok::Re),
                (">=", Tok::Ge),
                ("<=", Tok::Le),
                (">>", Tok::Desc),
                ("<<", Tok::Anc),
                ("&&", Tok::And),
                ("||", Tok::Or),
                ("&>", Tok::UnionChild),
                ("&<", Tok::UnionParent),
                ("&~", Tok::UnionSibling),
            ]
            .into_iter()
            .find(|(s, _)| two(self, s))
            .map(|(_, t)| (t, 2))
            .or(match c {
                '{' => Some((Tok::LBrace, 1)),
                '}' => Some((Tok::RBrace, 1)),
                '(' => Some((Tok::LParen, 1)),
                ')' => Some((Tok::RParen, 1)),
                '|' => Some((Tok::Pipe, 1)),
                ',' => Some((Tok::Comma, 1)),
                '=' => Some((Tok::Eq, 1)),
                '>' => Some((Tok::Gt, 1)),
                '<' => Some((Tok::Lt, 1)),
                '~' => Some((Tok::Tilde, 1)),
                '!' => Some((Tok::Bang, 1)),
                _ => None,
            })
        };
        let tok = if let Some((tok, len)) = fixed {
            self.pos += len;
            tok
        } else if c == '"' || c == '`' {
            Tok::Str(self.string()?)
        } else if c == '.' {
            self.pos += 1;
            Tok::Attr(Scope::Unscoped, self.attr_name(start)?)
        } else if c.is_ascii_digit() {
            self.number(start, false)?
        } else if c == '-' && self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
            self.pos += 1;
            self.number(start, true)?
        } else if is_word_start(c) {
            while self.peek(0).is_some_and(is_word) {
                self.pos += 1;
            }
            let word = self.text(start);
            let scope = match word.as_str() {
                "span" => Some(Scope::Span),
                "resource" => Some(Scope::Resource),
                "event" => Some(Scope::Event),
                "link" => Some(Scope::Link),
                "instrumentation" => Some(Scope::Instrumentation),
                _ => None,
            };
            match (scope, self.peek(0)) {
                (Some(scope), Some('.')) => {
                    self.pos += 1;
                    Tok::Attr(scope, self.attr_name(start)?)
                }
                (_, Some(':')) if self.peek(1).is_some_and(is_word_start) => {
                    self.pos += 1;
                    while self.peek(0).is_some_and(is_word) {
                        self.pos += 1;
                    }
                    Tok::Ident(self.text(start))
                }
                _ => Tok::Ident(word),
            }
        } else {
            return Err(self.error(start, format!("unexpected character {c:?}")));
        };
        Ok(Some(Token {
            tok,
            column: start + 1,
            text: self.text(start),
        }))
    }
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer {
        chars: src.char_indices().collect(),
        src,
        pos: 0,
    };
    let mut out = Vec::new();
    while let Some(token) = lexer.next()? {
        out.push(token);
    }
    out.push(Token {
        tok: Tok::Eof,
        column: lexer.chars.len() + 1,
        text: String::new(),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        tokenize(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn operators_and_literals() {
        assert_eq!(
            toks(r#"{ .a = "x\"y" && span.b != 3 }"#),
            vec![
                Tok::LBrace,
                Tok::Attr(Scope::Unscoped, "a".into()),
                Tok::Eq,
                Tok::Str("x\"y".into()),
                Tok::And,
                Tok::Attr(Scope::Span, "b".into()),
                Tok::Ne,
                Tok::Int(3),
                Tok::RBrace,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("> >> < << ~ !> !>> !< !<< !~ &> &>> &< &<< &~ =~ >= <= || |"),
            vec![
                Tok::Gt,
                Tok::Desc,
                Tok::Lt,
                Tok::Anc,
                Tok::Tilde,
                Tok::NotChild,
                Tok::NotDesc,
                Tok::NotParent,
                Tok::NotAnc,
                Tok::NotRe,
                Tok::UnionChild,
                Tok::UnionDesc,
                Tok::UnionParent,
                Tok::UnionAnc,
                Tok::UnionSibling,
                Tok::Re,
                Tok::Ge,
                Tok::Le,
                Tok::Or,
                Tok::Pipe,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("1.5s 100ms 3µs 1h30m 7 -2 2.5 -1s"),
            vec![
                Tok::Duration(1_500_000_000),
                Tok::Duration(100_000_000),
                Tok::Duration(3_000),
                Tok::Duration(5_400_000_000_000),
                Tok::Int(7),
                Tok::Int(-2),
                Tok::Float(2.5),
                Tok::Duration(-1_000_000_000),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks(r#"span:id trace:rootName resource."a b" event.x-y instrumentation.v spanx"#),
            vec![
                Tok::Ident("span:id".into()),
                Tok::Ident("trace:rootName".into()),
                Tok::Attr(Scope::Resource, "a b".into()),
                Tok::Attr(Scope::Event, "x-y".into()),
                Tok::Attr(Scope::Instrumentation, "v".into()),
                Tok::Ident("spanx".into()),
                Tok::Eof
            ]
        );
        assert_eq!(toks(r"`a\d`"), vec![Tok::Str(r"a\d".into()), Tok::Eof]);
    }

    #[test]
    fn columns_count_characters() {
        let t = tokenize("{ .µ = 1 }").unwrap();
        assert_eq!(t[2].column, 6);
        assert_eq!(t[5].column, 11);
        assert_eq!(t[5].describe(), "end of query");
    }

    #[test]
    fn lexical_errors() {
        let e = tokenize(r#"{ .a = "abc }"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "column 8: unterminated string: expected a closing quote"
        );
        let e = tokenize("{ duration > 5d }").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("column 14: invalid duration \"5d\""),
            "{e}"
        );
        let e = tokenize("{ .a = 1 } # x").unwrap_err();
        assert_eq!(e.to_string(), "column 12: unexpected character '#'");
        let e = tokenize("{ . = 1 }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "column 3: expected an attribute name after \".\""
        );
    }
}
