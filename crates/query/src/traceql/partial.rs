//! Lenient reading of a query that is still being typed, for autocomplete.
//!
//! Grafana asks for tag names and values with the query written so far as `q`, e.g.
//! `{ resource.service.name = "api" && span.http.method = ` while the user picks a method. As
//! Tempo does ("autocomplete filtering"), [`autocomplete_filter`] keeps the conditions that are
//! complete and drops the incomplete ones, and gives up (no filtering: every value) when the
//! conditions cannot be used span by span:
//! * conditions joined by `||` (at the top level or inside parentheses);
//! * more than one spanset (`{ a } && { b }`, `{ a } >> { b }`, ...);
//! * nothing usable left (`{ }`, `{ .a = `, text that is not a spanset filter).
//!
//! A pipeline after the first filter (`{ a } | count() > 2`) is ignored: the filter is used.
//! This module does no I/O.

use super::ast::{FilterExpr, Query, SpansetExpr};
use super::parser::parse;

/// The complete conditions of `src` (ANDed), to filter autocomplete answers by; `None` when
/// nothing in it can be used (the answer is then unfiltered).
pub fn autocomplete_filter(src: &str) -> Option<FilterExpr> {
    let src = src.trim();
    if src.is_empty() {
        return None;
    }
    match parse(src) {
        Ok(query) => first_filter(&query.root).and_then(conjunction_of),
        Err(_) => lenient(src),
    }
}

/// The filter a whole query starts with: `{ ... }`, or the input of a pipeline.
fn first_filter(e: &SpansetExpr) -> Option<&FilterExpr> {
    match e {
        SpansetExpr::Filter(f) => Some(f),
        SpansetExpr::Pipeline { input, .. } => first_filter(input),
        SpansetExpr::Binary { .. } => None,
    }
}

/// Pushes the comparisons of an all-`&&` filter onto `out`; `false` when it holds an `||`.
fn collect_and(f: &FilterExpr, out: &mut Vec<FilterExpr>) -> bool {
    match f {
        FilterExpr::True => true,
        FilterExpr::And(a, b) => collect_and(a, out) && collect_and(b, out),
        FilterExpr::Or(..) => false,
        FilterExpr::Compare(_) => {
            out.push(f.clone());
            true
        }
    }
}

/// The comparisons of an all-`&&` filter ANDed again; `None` for `||` or no comparison.
fn conjunction_of(f: &FilterExpr) -> Option<FilterExpr> {
    let mut parts = Vec::new();
    if !collect_and(f, &mut parts) {
        return None;
    }
    and_all(parts)
}

fn and_all(parts: Vec<FilterExpr>) -> Option<FilterExpr> {
    parts
        .into_iter()
        .reduce(|acc, next| FilterExpr::And(Box::new(acc), Box::new(next)))
}

/// Where a top-level piece of the first filter ends.
enum Split {
    /// `&&`: another condition follows.
    And,
    /// `||`: the conditions are alternatives.
    Or,
    /// `}`: the filter is closed; what follows starts at this byte.
    Close(usize),
    /// The text ended inside the filter.
    End,
}

/// Reads an incomplete query: the first `{ ... }` split at its top-level `&&`, each piece
/// parsed on its own, the pieces that do not parse (the incomplete ones) dropped.
fn lenient(src: &str) -> Option<FilterExpr> {
    let body = src.strip_prefix('{')?;
    let mut parts = Vec::new();
    let mut rest = body;
    loop {
        let (piece, split) = next_piece(rest);
        let text = piece.trim();
        if !text.is_empty() {
            // A piece that does not parse is the one being typed: it is dropped.
            if let Ok(Query {
                root: SpansetExpr::Filter(f),
            }) = parse(&format!("{{ {text} }}"))
            {
                if !collect_and(&f, &mut parts) {
                    return None;
                }
            }
        }
        match split {
            Split::And => rest = &rest[piece.len() + 2..],
            Split::Or => return None,
            Split::End => break,
            Split::Close(at) => {
                let after = rest[at..].trim_start();
                // Another spanset (`&&`, `>>`, ...) cannot be filtered span by span; a
                // pipeline only narrows what the filter selects.
                if !after.is_empty() && !after.starts_with('|') {
                    return None;
                }
                break;
            }
        }
    }
    and_all(parts)
}

/// The text up to the next top-level `&&`, `||` or `}` (outside strings and parentheses).
fn next_piece(text: &str) -> (&str, Split) {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    // Backslash escapes only in double-quoted strings.
                    if quote == b'"' && bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b'}' if depth == 0 => return (&text[..i], Split::Close(i + 1)),
            b'&' if depth == 0 && bytes.get(i + 1) == Some(&b'&') => {
                return (&text[..i], Split::And)
            }
            b'|' if depth == 0 && bytes.get(i + 1) == Some(&b'|') => {
                return (&text[..i], Split::Or)
            }
            _ => {}
        }
        i += 1;
    }
    (text, Split::End)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter as the parser reads it when written out whole.
    fn filter(src: &str) -> FilterExpr {
        match parse(src).map(|q| q.root) {
            Ok(SpansetExpr::Filter(f)) => f,
            other => panic!("{src}: {other:?}"),
        }
    }

    #[test]
    fn complete_queries_keep_their_conditions() {
        let want = filter(r#"{ resource.service.name = "api" && span.http.method = "GET" }"#);
        assert_eq!(
            autocomplete_filter(r#"{ resource.service.name = "api" && span.http.method = "GET" }"#),
            Some(want.clone())
        );
        // The filter of a pipeline.
        assert_eq!(
            autocomplete_filter(
                r#"{ resource.service.name = "api" && span.http.method = "GET" } | count() > 1"#
            ),
            Some(want)
        );
        assert_eq!(autocomplete_filter("{ }"), None);
        assert_eq!(autocomplete_filter(""), None);
        assert_eq!(autocomplete_filter("  "), None);
    }

    #[test]
    fn incomplete_conditions_are_dropped() {
        let api = Some(filter(r#"{ resource.service.name = "api" }"#));
        for q in [
            r#"{ resource.service.name = "api" && span.http.method = "#,
            r#"{ resource.service.name = "api" && span.http.method = }"#,
            r#"{ resource.service.name = "api" && span.http.method = "GE"#,
            r#"{ resource.service.name="api" && span.http.method=~ }"#,
            r#"{ resource.service.name = "api" && span. }"#,
            r#"{ resource.service.name = "api" && }"#,
            r#"{ resource.service.name = "api" &&"#,
            r#"{ span.http.method = && resource.service.name = "api" }"#,
            r#"{ resource.service.name = "api" } | count() >"#,
        ] {
            assert_eq!(autocomplete_filter(q), api, "{q}");
        }
        // `&&` and `}` inside strings are text.
        assert_eq!(
            autocomplete_filter(r#"{ .a = "x && }" && .b = "#),
            Some(filter(r#"{ .a = "x && }" }"#))
        );
        assert_eq!(
            autocomplete_filter(r#"{ (.a = 1 && .b = 2) && .c = "#),
            Some(filter("{ .a = 1 && .b = 2 }"))
        );
        assert_eq!(autocomplete_filter("{ .a = "), None);
        assert_eq!(autocomplete_filter("{"), None);
    }

    #[test]
    fn unusable_queries_mean_no_filter() {
        for q in [
            r#"{ .a = "x" || .b = "y" }"#,
            r#"{ .a = "x" || .b = "#,
            r#"{ (.a = "x" || .b = "y") && .c = "#,
            r#"{ .a = "x" } && { .b = "y" }"#,
            r#"{ .a = "x" } >> { .b = "#,
            r#"{ .a = "x" } > "#,
            r#"resource.service.name = "api""#,
            "nonsense",
        ] {
            assert_eq!(autocomplete_filter(q), None, "{q}");
        }
    }
}
