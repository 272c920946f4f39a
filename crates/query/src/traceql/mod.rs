//! TraceQL, Tempo's query language: parser and evaluator.
//!
//! * [`parse`] turns a query into a [`Query`] (hand-written lexer and recursive descent);
//!   a [`ParseError`] names the 1-based column, what was expected and what was found, e.g.
//!   `column 8: expected a value after "=", found "}"`.
//! * [`evaluate`] runs a query over one whole trace (all its [`ResourceSpans`]) and returns
//!   the spansets it produced, or `None` when the trace does not match.
//! * [`Query::prefilter`] is a conservative span predicate to push down into a store scan.
//!
//! This module does no I/O.
//!
//! # The language
//!
//! * Spanset filters `{ cond }` (`{ }`: every span). All conditions in one pair of braces
//!   hold on the same span. Conditions: `field op literal`, `&&`, `||` (`&&` binds tighter),
//!   parentheses. Operators `= != > >= < <= =~ !~`; regexes match the whole string
//!   (`^(?:re)$`).
//! * Fields: attributes `span.x`, `resource.x`, `event.x` (any of the span's events),
//!   `link.x` (any of its links), `instrumentation.x` (its scope's attributes), unscoped `.x`
//!   (the span's attribute if it has one, else the resource's); quoted names `span."a b"`.
//!   Intrinsics `name`, `status`, `statusMessage`, `kind`, `duration` (also as `span:name`,
//!   `span:status`, `span:statusMessage`, `span:kind`, `span:duration`), `span:id`,
//!   `span:parentID` (nil on a root), `trace:duration` (`traceDuration`), `trace:rootName`
//!   (`rootName`), `trace:rootService` (`rootServiceName`), `trace:id`, `event:name`,
//!   `event:timeSinceStart`, `link:traceID`, `link:spanID`, `instrumentation:name`,
//!   `instrumentation:version`, `nestedSetLeft`, `nestedSetRight`, `nestedSetParent` (also
//!   `span:`-prefixed; -1 parent for a root, 0 for spans under no root). Ids compare as
//!   lowercase hex strings.
//! * Literals: strings (`"..."` with `\" \\ \n \t \r`, or raw in backticks), integers, floats,
//!   durations (`ns us µs ms s m h`, composites like `1h30m`), `true`, `false`, `nil`, the
//!   status words `ok error unset` and the kind words `unspecified internal server client
//!   producer consumer`.
//! * Typing: ints and floats compare numerically with each other; an int attribute compares
//!   with a duration as nanoseconds; strings compare with strings (ordering is bytewise);
//!   booleans, statuses and kinds only with `=`/`!=`. A value of another type makes the
//!   comparison false (`!=` included). `= nil`: the field is absent; `!= nil`: present.
//!   Comparisons that can never make sense for an intrinsic (`status = 500`,
//!   `duration > 100`, a regex on `duration`) are parse errors.
//! * Spanset operators, loosest first: `||`; `&&`; then, left-associative, `>` `>>` `<` `<<`
//!   `~` `!>` `!>>` `!<` `!<<` `!~` `&>` `&>>` `&<` `&<<` `&~`. `A && B`: both have spans, the
//!   result is both; `A || B`: either. Structural results are right-hand spans: `A > B` the
//!   B spans whose parent is in A, `>>` with an ancestor in A, `<` the B spans that are the
//!   parent of an A span, `<<` an ancestor of one, `~` with a sibling (same parent, another
//!   span) in A; the `!` forms keep the B spans without that relation (all of them when A is
//!   empty); the `&` forms keep the related spans of both sides. A side with several spansets
//!   (after `by`) counts as the union of their spans.
//! * Pipelines `expr | stage | ...`, applied to each spanset: `count() op n`,
//!   `avg|min|max|sum(field) op literal` (over the spans with a numeric or duration value;
//!   none: no match), `by(field, ...)` (one spanset per distinct value, spans without it
//!   forming their own), `select(field, ...)` (return these fields with each span), and a
//!   spanset filter `{ cond }` (keeps the spans of each spanset for which it holds). A
//!   parenthesised pipeline is an operand: `({ } | count() > 2) && { .a = 1 }`.
//!
//! TraceQL metrics (`rate`, `count_over_time`, `min/max/sum/avg_over_time`,
//! `quantile_over_time`, `histogram_over_time`, with `by(...)`) parse with
//! [`parser::parse_metrics`] and run in [`metrics`] (for `/api/metrics/query_range` and
//! `/api/metrics/query`); in a search they are refused.
//!
//! Refused with a clear error (never ignored): `coalesce()`,
//! `compare()`, `topk`/`bottomk`, unary `!`, arithmetic, field-to-field comparisons, bare
//! boolean fields (`{ .flag }`), array literals and operators, `with(...)` hints, and
//! intrinsics not listed above (e.g. `event:foo` is "unknown intrinsic"). Queries nest at most
//! [`parser::MAX_NESTING`] deep and hold at most [`parser::MAX_OPERATORS`] operators.
//!
//! [`ResourceSpans`]: sextant_otlp_proto::proto::ResourceSpans

pub mod ast;
mod eval;
mod lexer;
pub mod metrics;
pub mod parser;
pub mod partial;

pub use ast::*;
pub use eval::{evaluate, is_span_local_field, SpanSetResult, SpanView, TraceResult};
pub use parser::parse;
pub use partial::autocomplete_filter;

/// A query that is not valid TraceQL (or uses what this engine does not support).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    /// 1-based column (in characters) where the problem is.
    pub column: usize,
    /// What was expected and what was found.
    pub message: String,
}
