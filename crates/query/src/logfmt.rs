//! A small logfmt parser for Tempo's `tags` search parameter.
//!
//! `service.name=api http.status_code=500 name="GET /users/{id}"`: pairs `key=value` separated
//! by whitespace. A key is any run of characters other than whitespace, `=` and `"`. A value is
//! either bare (the same characters as a key; may be empty) or double-quoted, where `\"`, `\\`,
//! `\/`, `\n`, `\r`, `\t`, `\b`, `\f` and `\uXXXX` are escapes. A key must have a value: we search
//! for equality, and a bare `key` would be a silent no-op.

use std::fmt;

/// What is wrong with a logfmt text, and where (1-based column, in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at column {column}")]
pub struct LogfmtError {
    /// 1-based character position of the problem.
    pub column: usize,
    /// What is wrong.
    pub problem: LogfmtProblem,
}

/// The ways a logfmt text can be wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogfmtProblem {
    /// `=value` with no key before it.
    MissingKey,
    /// `key` with no `=value` after it.
    MissingValue {
        /// The key.
        key: String,
    },
    /// A `"` inside a key.
    QuoteInKey {
        /// The key read so far.
        key: String,
    },
    /// A `"` or `=` inside a bare value.
    UnexpectedInValue {
        /// The key whose value it is.
        key: String,
        /// The character.
        found: char,
    },
    /// A quoted value that does not end.
    UnterminatedQuote {
        /// The key whose value it is.
        key: String,
    },
    /// A backslash escape we do not know.
    BadEscape {
        /// The key whose value it is.
        key: String,
        /// The escape as written (without the backslash).
        escape: String,
    },
    /// Something other than whitespace right after a closing quote.
    TextAfterQuote {
        /// The key whose value it is.
        key: String,
        /// The character.
        found: char,
    },
}

impl fmt::Display for LogfmtProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogfmtProblem::MissingKey => write!(f, "a value has no key (write key=value)"),
            LogfmtProblem::MissingValue { key } => {
                write!(f, "tag {key:?} has no value (write {key}=value)")
            }
            LogfmtProblem::QuoteInKey { key } => {
                write!(f, "unexpected '\"' in the key after {key:?}")
            }
            LogfmtProblem::UnexpectedInValue { key, found } => write!(
                f,
                "unexpected {found:?} in the value of {key:?} (quote values that contain it)"
            ),
            LogfmtProblem::UnterminatedQuote { key } => {
                write!(f, "the quoted value of {key:?} has no closing '\"'")
            }
            LogfmtProblem::BadEscape { key, escape } => {
                write!(f, "unknown escape \\{escape} in the value of {key:?}")
            }
            LogfmtProblem::TextAfterQuote { key, found } => write!(
                f,
                "unexpected {found:?} after the quoted value of {key:?} (separate tags with spaces)"
            ),
        }
    }
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

fn is_plain(c: char) -> bool {
    !is_space(c) && c != '=' && c != '"'
}

/// Parses logfmt into `(key, value)` pairs, in order (a key may repeat).
///
/// # Errors
///
/// A [`LogfmtError`] with the column and the nature of the first problem.
pub fn parse_logfmt(input: &str) -> Result<Vec<(String, String)>, LogfmtError> {
    let chars: Vec<char> = input.chars().collect();
    let fail = |i: usize, problem| LogfmtError {
        column: i + 1,
        problem,
    };
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && is_space(chars[i]) {
            i += 1;
        }
        if i == chars.len() {
            return Ok(pairs);
        }

        // The key.
        let key_start = i;
        while i < chars.len() && is_plain(chars[i]) {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        match chars.get(i) {
            Some('=') if key.is_empty() => return Err(fail(i, LogfmtProblem::MissingKey)),
            Some('=') => i += 1,
            Some('"') => return Err(fail(i, LogfmtProblem::QuoteInKey { key })),
            // Whitespace or the end.
            _ => return Err(fail(key_start, LogfmtProblem::MissingValue { key })),
        }

        // The value.
        let value = if chars.get(i) == Some(&'"') {
            let open = i;
            i += 1;
            let mut value = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(fail(open, LogfmtProblem::UnterminatedQuote { key })),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        let escape_at = i;
                        let Some(&e) = chars.get(i + 1) else {
                            return Err(fail(open, LogfmtProblem::UnterminatedQuote { key }));
                        };
                        i += 2;
                        let decoded = match e {
                            '"' => '"',
                            '\\' => '\\',
                            '/' => '/',
                            'n' => '\n',
                            'r' => '\r',
                            't' => '\t',
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            'u' => {
                                let hex: String = chars.iter().skip(i).take(4).collect();
                                let c = (hex.len() == 4
                                    && hex.chars().all(|c| c.is_ascii_hexdigit()))
                                .then(|| u32::from_str_radix(&hex, 16).ok())
                                .flatten()
                                .and_then(char::from_u32);
                                match c {
                                    Some(c) => {
                                        i += 4;
                                        c
                                    }
                                    None => {
                                        return Err(fail(
                                            escape_at,
                                            LogfmtProblem::BadEscape {
                                                key,
                                                escape: format!("u{hex}"),
                                            },
                                        ))
                                    }
                                }
                            }
                            other => {
                                return Err(fail(
                                    escape_at,
                                    LogfmtProblem::BadEscape {
                                        key,
                                        escape: other.to_string(),
                                    },
                                ))
                            }
                        };
                        value.push(decoded);
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            if let Some(&c) = chars.get(i) {
                if !is_space(c) {
                    return Err(fail(i, LogfmtProblem::TextAfterQuote { key, found: c }));
                }
            }
            value
        } else {
            let value_start = i;
            while i < chars.len() && is_plain(chars[i]) {
                i += 1;
            }
            if let Some(&c) = chars.get(i) {
                if !is_space(c) {
                    return Err(fail(i, LogfmtProblem::UnexpectedInValue { key, found: c }));
                }
            }
            chars[value_start..i].iter().collect()
        };
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(input: &str) -> Vec<(String, String)> {
        parse_logfmt(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    fn err(input: &str) -> LogfmtError {
        match parse_logfmt(input) {
            Ok(v) => panic!("{input} parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn pairs_bare_and_quoted() {
        assert_eq!(
            pairs(r#"service.name=api http.status_code=500 name="GET /x""#),
            vec![
                p("service.name", "api"),
                p("http.status_code", "500"),
                p("name", "GET /x")
            ]
        );
        assert_eq!(pairs(""), vec![]);
        assert_eq!(pairs("   \t "), vec![]);
        assert_eq!(pairs("  a=1\t b=2  "), vec![p("a", "1"), p("b", "2")]);
        assert_eq!(pairs("a= b=2"), vec![p("a", ""), p("b", "2")]);
        assert_eq!(pairs(r#"a="""#), vec![p("a", "")]);
        assert_eq!(pairs("a=1 a=2"), vec![p("a", "1"), p("a", "2")]);
        assert_eq!(
            pairs(r#"msg="say \"hi\"\\ \u00e9\n" path=/a/b"#),
            vec![p("msg", "say \"hi\"\\ é\n"), p("path", "/a/b")]
        );
        assert_eq!(pairs("url=http://x?y"), vec![p("url", "http://x?y")]);
        assert_eq!(pairs("é=ü"), vec![p("é", "ü")]);
    }

    #[test]
    fn errors_say_what_and_where() {
        assert_eq!(
            err("=api"),
            LogfmtError {
                column: 1,
                problem: LogfmtProblem::MissingKey
            }
        );
        assert_eq!(
            err("a=1 lonely"),
            LogfmtError {
                column: 5,
                problem: LogfmtProblem::MissingValue {
                    key: "lonely".into()
                }
            }
        );
        assert_eq!(
            err(r#"name="GET /x"#),
            LogfmtError {
                column: 6,
                problem: LogfmtProblem::UnterminatedQuote { key: "name".into() }
            }
        );
        assert_eq!(
            err(r#"name="a\"#),
            LogfmtError {
                column: 6,
                problem: LogfmtProblem::UnterminatedQuote { key: "name".into() }
            }
        );
        assert_eq!(
            err(r#"a="x"b=2"#),
            LogfmtError {
                column: 6,
                problem: LogfmtProblem::TextAfterQuote {
                    key: "a".into(),
                    found: 'b'
                }
            }
        );
        assert_eq!(
            err("a=b=c"),
            LogfmtError {
                column: 4,
                problem: LogfmtProblem::UnexpectedInValue {
                    key: "a".into(),
                    found: '='
                }
            }
        );
        assert_eq!(
            err(r#"a=x"y""#).problem,
            LogfmtProblem::UnexpectedInValue {
                key: "a".into(),
                found: '"'
            }
        );
        assert_eq!(
            err(r#"ke"y=1"#).problem,
            LogfmtProblem::QuoteInKey { key: "ke".into() }
        );
        assert_eq!(
            err(r#"a="\q""#),
            LogfmtError {
                column: 4,
                problem: LogfmtProblem::BadEscape {
                    key: "a".into(),
                    escape: "q".into()
                }
            }
        );
        assert_eq!(
            err(r#"a="\u12""#).problem,
            LogfmtProblem::BadEscape {
                key: "a".into(),
                escape: "u12\"".into()
            }
        );
        assert_eq!(
            err("a=1 lonely").to_string(),
            r#"tag "lonely" has no value (write lonely=value) at column 5"#
        );
    }
}
