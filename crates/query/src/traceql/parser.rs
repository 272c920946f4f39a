//! The TraceQL parser: recursive descent over the lexer's tokens.
//!
//! ```text
//! query      := pipeline EOF
//! pipeline   := or ( "|" stage )*
//! or         := and ( "||" and )*
//! and        := struct ( "&&" struct )*
//! struct     := primary ( structop primary )*          structop: > >> < << ~ !> ... &~
//! primary    := "{" filter? "}" | "(" pipeline ")"
//! filter     := fand ( "||" fand )*
//! fand       := fatom ( "&&" fatom )*
//! fatom      := "(" filter ")" | field cmpop literal
//! stage      := "{" filter? "}" | count "(" ")" cmpop number
//!             | (avg|min|max|sum) "(" field ")" cmpop literal
//!             | by "(" fields ")" | select "(" fields ")"
//!
//! metrics    := pipeline "|" mfunc ( "by" "(" fields ")" )? EOF       (parse_metrics only)
//! mfunc      := (rate|count_over_time) "(" ")"
//!             | (min|max|sum|avg|histogram)_over_time "(" field ")"
//!             | quantile_over_time "(" field ( "," number )+ ")"
//! ```

use super::ast::*;
use super::lexer::{tokenize, Tok, Token};
use super::ParseError;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Parentheses and braces open around the current token.
    depth: usize,
    /// Binary operators so far (`&&`, `||`, spanset operators, pipes).
    operators: usize,
    /// Whether a metrics function may end the top-level pipeline ([`parse_metrics`]).
    allow_metrics: bool,
    /// The metrics function that ended the pipeline, with its `by(...)`.
    metrics: Option<(MetricsFn, Vec<Field>)>,
}

/// At most this many nested parentheses and braces (deeper queries are refused, never
/// allowed to exhaust the stack).
pub const MAX_NESTING: usize = 32;
/// At most this many operators (`&&`, `||`, spanset operators and `|`) in a query.
pub const MAX_OPERATORS: usize = 256;

/// Metrics and other functions Tempo has that this engine does not evaluate.
const UNSUPPORTED_FUNCTIONS: &[&str] = &[
    "rate",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "sum_over_time",
    "quantile_over_time",
    "histogram_over_time",
    "compare",
    "coalesce",
    "topk",
    "bottomk",
];

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with Eof and `pos` never passes it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn previous(&self) -> Option<&Token> {
        self.pos.checked_sub(1).and_then(|i| self.tokens.get(i))
    }

    fn expected(&self, what: &str) -> ParseError {
        let found = self.peek();
        let after = self
            .previous()
            .map(|p| format!(" after {:?}", p.text))
            .unwrap_or_default();
        ParseError {
            column: found.column,
            message: format!("expected {what}{after}, found {}", found.describe()),
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<Token, ParseError> {
        if self.peek().tok == tok {
            Ok(self.bump())
        } else {
            Err(self.expected(what))
        }
    }

    /// Counts an operator about to be consumed, refusing too many.
    fn count_operator(&mut self) -> Result<(), ParseError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(ParseError {
                column: self.peek().column,
                message: format!("query too complex: more than {MAX_OPERATORS} operators"),
            });
        }
        Ok(())
    }

    /// Enters a parenthesis or brace (the token under the cursor), refusing deep nesting.
    fn open(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError {
                column: self.peek().column,
                message: format!(
                    "query too deeply nested: more than {MAX_NESTING} parentheses or braces"
                ),
            });
        }
        Ok(())
    }

    fn query(&mut self) -> Result<Query, ParseError> {
        let root = self.pipeline()?;
        if self.peek().tok != Tok::Eof {
            return Err(self.expected("a spanset operator, \"|\" or the end of the query"));
        }
        Ok(Query { root })
    }

    fn pipeline(&mut self) -> Result<SpansetExpr, ParseError> {
        let input = self.spanset_or()?;
        let mut stages = Vec::new();
        while self.peek().tok == Tok::Pipe {
            self.count_operator()?;
            self.bump();
            if self.allow_metrics && self.depth == 0 && self.metrics.is_none() {
                if self.peek().tok == Tok::Eof {
                    return Err(self.expected(EXPECTED_METRICS_FUNCTION));
                }
                if let Tok::Ident(word) = &self.peek().tok {
                    if is_metrics_function(word) {
                        self.metrics = Some(self.metrics_stage()?);
                        break;
                    }
                }
            }
            stages.push(self.stage()?);
        }
        Ok(if stages.is_empty() {
            input
        } else {
            SpansetExpr::Pipeline {
                input: Box::new(input),
                stages,
            }
        })
    }

    fn spanset_or(&mut self) -> Result<SpansetExpr, ParseError> {
        let mut lhs = self.spanset_and()?;
        while self.peek().tok == Tok::Or {
            self.count_operator()?;
            self.bump();
            let rhs = self.spanset_and()?;
            lhs = binary(SpansetOp::Or, lhs, rhs);
        }
        Ok(lhs)
    }

    fn spanset_and(&mut self) -> Result<SpansetExpr, ParseError> {
        let mut lhs = self.spanset_struct()?;
        while self.peek().tok == Tok::And {
            self.count_operator()?;
            self.bump();
            let rhs = self.spanset_struct()?;
            lhs = binary(SpansetOp::And, lhs, rhs);
        }
        Ok(lhs)
    }

    fn spanset_struct(&mut self) -> Result<SpansetExpr, ParseError> {
        let mut lhs = self.primary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Gt => SpansetOp::Child,
                Tok::Desc => SpansetOp::Descendant,
                Tok::Lt => SpansetOp::Parent,
                Tok::Anc => SpansetOp::Ancestor,
                Tok::Tilde => SpansetOp::Sibling,
                Tok::NotChild => SpansetOp::NotChild,
                Tok::NotDesc => SpansetOp::NotDescendant,
                Tok::NotParent => SpansetOp::NotParent,
                Tok::NotAnc => SpansetOp::NotAncestor,
                Tok::NotRe => SpansetOp::NotSibling,
                Tok::UnionChild => SpansetOp::UnionChild,
                Tok::UnionDesc => SpansetOp::UnionDescendant,
                Tok::UnionParent => SpansetOp::UnionParent,
                Tok::UnionAnc => SpansetOp::UnionAncestor,
                Tok::UnionSibling => SpansetOp::UnionSibling,
                _ => return Ok(lhs),
            };
            self.count_operator()?;
            self.bump();
            let rhs = self.primary()?;
            lhs = binary(op, lhs, rhs);
        }
    }

    fn primary(&mut self) -> Result<SpansetExpr, ParseError> {
        match self.peek().tok {
            Tok::LBrace => Ok(SpansetExpr::Filter(self.braced_filter()?)),
            Tok::LParen => {
                self.open()?;
                self.bump();
                let inner = self.pipeline()?;
                self.expect(Tok::RParen, "\")\"")?;
                self.depth -= 1;
                Ok(inner)
            }
            _ => Err(self.expected("a spanset filter \"{ ... }\" or \"(\"")),
        }
    }

    fn braced_filter(&mut self) -> Result<FilterExpr, ParseError> {
        if self.peek().tok == Tok::LBrace {
            self.open()?;
        }
        self.expect(Tok::LBrace, "\"{\"")?;
        let expr = if self.peek().tok == Tok::RBrace {
            self.bump();
            FilterExpr::True
        } else {
            let expr = self.filter_or()?;
            self.expect(Tok::RBrace, "\"&&\", \"||\" or \"}\"")?;
            expr
        };
        self.depth -= 1;
        Ok(expr)
    }

    fn filter_or(&mut self) -> Result<FilterExpr, ParseError> {
        let mut lhs = self.filter_and()?;
        while self.peek().tok == Tok::Or {
            self.count_operator()?;
            self.bump();
            let rhs = self.filter_and()?;
            lhs = FilterExpr::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn filter_and(&mut self) -> Result<FilterExpr, ParseError> {
        let mut lhs = self.filter_atom()?;
        while self.peek().tok == Tok::And {
            self.count_operator()?;
            self.bump();
            let rhs = self.filter_atom()?;
            lhs = FilterExpr::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn filter_atom(&mut self) -> Result<FilterExpr, ParseError> {
        if self.peek().tok == Tok::LParen {
            self.open()?;
            self.bump();
            let inner = self.filter_or()?;
            self.expect(Tok::RParen, "\"&&\", \"||\" or \")\"")?;
            self.depth -= 1;
            return Ok(inner);
        }
        let field = self.field()?;
        let op_token = self.bump();
        let op = match op_token.tok {
            Tok::Eq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Re | Tok::NotRe => {
                let value = self.bump();
                let Tok::Str(source) = &value.tok else {
                    self.pos -= usize::from(value.tok != Tok::Eof);
                    return Err(self.expected("a regex string"));
                };
                let regex = AnchoredRegex::new(source).map_err(|e| ParseError {
                    column: value.column,
                    message: format!("invalid regex {source:?}: {}", first_line(&e.to_string())),
                })?;
                if matches!(field, Field::Intrinsic(i) if !is_string_intrinsic(i)) {
                    return Err(ParseError {
                        column: op_token.column,
                        message: format!(
                            "{} cannot be matched with a regex (only strings can)",
                            field
                        ),
                    });
                }
                let op = if op_token.tok == Tok::Re {
                    CmpOp::Match(regex)
                } else {
                    CmpOp::NotMatch(regex)
                };
                return Ok(FilterExpr::Compare(Comparison {
                    field,
                    op,
                    value: Literal::Str(source.clone()),
                }));
            }
            _ => {
                self.pos -= usize::from(op_token.tok != Tok::Eof);
                return Err(self.expected("a comparison operator (= != > >= < <= =~ !~)"));
            }
        };
        let value_token = self.peek().clone();
        let value = self.literal()?;
        check_comparison(&field, &op, &value, &value_token)?;
        Ok(FilterExpr::Compare(Comparison { field, op, value }))
    }

    fn field(&mut self) -> Result<Field, ParseError> {
        let token = self.peek().clone();
        match &token.tok {
            Tok::Attr(scope, name) => {
                self.bump();
                Ok(Field::Attribute(Attribute {
                    scope: *scope,
                    name: name.clone(),
                }))
            }
            Tok::Ident(word) => match Intrinsic::from_name(word) {
                Some(i) => {
                    self.bump();
                    Ok(Field::Intrinsic(i))
                }
                None if word.contains(':') => Err(ParseError {
                    column: token.column,
                    message: format!("unknown intrinsic {word:?}"),
                }),
                None => Err(self.expected(
                    "an attribute (.name, span.name, resource.name, ...) or an intrinsic",
                )),
            },
            _ => Err(self
                .expected("an attribute (.name, span.name, resource.name, ...) or an intrinsic")),
        }
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        let lit = match &self.peek().tok {
            Tok::Str(s) => Literal::Str(s.clone()),
            Tok::Int(i) => Literal::Int(*i),
            Tok::Float(f) => Literal::Float(*f),
            Tok::Duration(d) => Literal::Duration(*d),
            Tok::Ident(w) => match w.as_str() {
                "true" => Literal::Bool(true),
                "false" => Literal::Bool(false),
                "nil" => Literal::Nil,
                "ok" => Literal::Status(StatusCode::Ok),
                "error" => Literal::Status(StatusCode::Error),
                "unset" => Literal::Status(StatusCode::Unset),
                "unspecified" => Literal::Kind(SpanKind::Unspecified),
                "internal" => Literal::Kind(SpanKind::Internal),
                "server" => Literal::Kind(SpanKind::Server),
                "client" => Literal::Kind(SpanKind::Client),
                "producer" => Literal::Kind(SpanKind::Producer),
                "consumer" => Literal::Kind(SpanKind::Consumer),
                _ => return Err(self.expected("a value")),
            },
            _ => return Err(self.expected("a value")),
        };
        self.bump();
        Ok(lit)
    }

    fn stage(&mut self) -> Result<Stage, ParseError> {
        let token = self.peek().clone();
        if token.tok == Tok::LBrace {
            return Ok(Stage::Filter(self.braced_filter()?));
        }
        let Tok::Ident(word) = &token.tok else {
            return Err(self.expected(
                "count(), avg(), min(), max(), sum(), by(), select() or a spanset filter",
            ));
        };
        let func = match word.as_str() {
            "count" => AggregateFn::Count,
            "avg" => AggregateFn::Avg,
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            "sum" => AggregateFn::Sum,
            "by" | "select" => {
                self.bump();
                self.expect(Tok::LParen, "\"(\"")?;
                let mut fields = vec![self.field()?];
                while self.peek().tok == Tok::Comma {
                    self.bump();
                    fields.push(self.field()?);
                }
                self.expect(Tok::RParen, "\",\" or \")\"")?;
                return Ok(if word == "by" {
                    Stage::By(fields)
                } else {
                    Stage::Select(fields)
                });
            }
            w if UNSUPPORTED_FUNCTIONS.contains(&w) => {
                return Err(ParseError {
                    column: token.column,
                    message: if is_metrics_function(w) && self.allow_metrics {
                        format!(
                            "{w}() must be the last stage of a metrics query, outside parentheses"
                        )
                    } else if is_metrics_function(w) {
                        format!(
                            "{w}() is not supported in a search: it is a TraceQL metrics \
                             function (use /api/metrics/query_range or /api/metrics/query)"
                        )
                    } else {
                        format!("{w}() is not supported")
                    },
                })
            }
            _ => {
                return Err(self.expected(
                    "count(), avg(), min(), max(), sum(), by(), select() or a spanset filter",
                ))
            }
        };
        self.bump();
        self.expect(Tok::LParen, "\"(\"")?;
        let field_column = self.peek().column;
        let field = if func == AggregateFn::Count {
            None
        } else {
            Some(self.field()?)
        };
        if let Some(Field::Intrinsic(i)) = &field {
            if !i.is_duration() && !i.is_number() {
                return Err(ParseError {
                    column: field_column,
                    message: format!("{word}() needs a numeric field, {} is not one", i.as_str()),
                });
            }
        }
        self.expect(Tok::RParen, "\")\"")?;
        let op_token = self.bump();
        let op = match op_token.tok {
            Tok::Eq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            _ => {
                self.pos -= usize::from(op_token.tok != Tok::Eof);
                return Err(self.expected("a comparison operator (= != > >= < <=)"));
            }
        };
        let value_token = self.peek().clone();
        let value = self.literal()?;
        let number = matches!(value, Literal::Int(_) | Literal::Float(_));
        let duration = matches!(value, Literal::Duration(_));
        let (fits, want) = match &field {
            None => (number, "a number"),
            Some(Field::Intrinsic(i)) if i.is_duration() => (duration, "a duration"),
            Some(Field::Intrinsic(_)) => (number, "a number"),
            Some(Field::Attribute(_)) => (number || duration, "a number or a duration"),
        };
        if !fits {
            let arg = field.as_ref().map(ToString::to_string).unwrap_or_default();
            return Err(ParseError {
                column: value_token.column,
                message: format!(
                    "expected {want} to compare {word}({arg}) with, found {}",
                    value_token.describe()
                ),
            });
        }
        Ok(Stage::Aggregate {
            func,
            field,
            op,
            value,
        })
    }

    /// A metrics function (the word under the cursor) and its optional `by(...)`.
    fn metrics_stage(&mut self) -> Result<(MetricsFn, Vec<Field>), ParseError> {
        let token = self.bump();
        let word = match &token.tok {
            Tok::Ident(w) => w.clone(),
            _ => return Err(self.expected("a metrics function")),
        };
        self.expect(Tok::LParen, "\"(\"")?;
        let func = match word.as_str() {
            "rate" => MetricsFn::Rate,
            "count_over_time" => MetricsFn::CountOverTime,
            "min_over_time" => MetricsFn::MinOverTime(self.metrics_field(&word)?),
            "max_over_time" => MetricsFn::MaxOverTime(self.metrics_field(&word)?),
            "sum_over_time" => MetricsFn::SumOverTime(self.metrics_field(&word)?),
            "avg_over_time" => MetricsFn::AvgOverTime(self.metrics_field(&word)?),
            "histogram_over_time" => MetricsFn::HistogramOverTime(self.metrics_field(&word)?),
            "quantile_over_time" => {
                let field = self.metrics_field(&word)?;
                self.expect(Tok::Comma, "\",\" and a quantile (like 0.9)")?;
                let mut quantiles = vec![self.quantile()?];
                while self.peek().tok == Tok::Comma {
                    self.bump();
                    quantiles.push(self.quantile()?);
                }
                MetricsFn::QuantileOverTime(field, quantiles)
            }
            _ => {
                return Err(ParseError {
                    column: token.column,
                    message: format!("{word}() is not supported"),
                })
            }
        };
        let closing = if matches!(func, MetricsFn::QuantileOverTime(..)) {
            "\",\" or \")\""
        } else {
            "\")\""
        };
        self.expect(Tok::RParen, closing)?;
        let mut by = Vec::new();
        if matches!(&self.peek().tok, Tok::Ident(w) if w == "by") {
            self.bump();
            self.expect(Tok::LParen, "\"(\"")?;
            let column = self.peek().column;
            by.push(self.field()?);
            while self.peek().tok == Tok::Comma {
                self.bump();
                by.push(self.field()?);
            }
            self.expect(Tok::RParen, "\",\" or \")\"")?;
            if by.len() > MAX_METRICS_BY {
                return Err(ParseError {
                    column,
                    message: format!(
                        "by() of a metrics function takes at most {MAX_METRICS_BY} fields, found {}",
                        by.len()
                    ),
                });
            }
        }
        Ok((func, by))
    }

    /// The numeric field a metrics function reads.
    fn metrics_field(&mut self, word: &str) -> Result<Field, ParseError> {
        let column = self.peek().column;
        let field = self.field()?;
        if let Field::Intrinsic(i) = &field {
            if !i.is_duration() && !i.is_number() {
                return Err(ParseError {
                    column,
                    message: format!("{word}() needs a numeric field, {} is not one", i.as_str()),
                });
            }
        }
        Ok(field)
    }

    /// A quantile between 0 and 1: `0.9`, `1`, or `.9` (which the lexer reads as `.9`, an
    /// unscoped attribute name of digits).
    fn quantile(&mut self) -> Result<f64, ParseError> {
        let token = self.peek().clone();
        let q = match &token.tok {
            Tok::Int(i) => Some(*i as f64),
            Tok::Float(f) => Some(*f),
            Tok::Attr(Scope::Unscoped, digits)
                if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) =>
            {
                format!("0.{digits}").parse::<f64>().ok()
            }
            _ => None,
        };
        let Some(q) = q else {
            return Err(self.expected("a quantile between 0 and 1 (like 0.9)"));
        };
        if !(0.0..=1.0).contains(&q) {
            return Err(ParseError {
                column: token.column,
                message: format!(
                    "a quantile must be between 0 and 1, found {}",
                    token.describe()
                ),
            });
        }
        self.bump();
        Ok(q)
    }
}

/// TraceQL's metrics functions (the ones [`parse_metrics`] evaluates and the others Tempo has).
const METRICS_FUNCTIONS: &[&str] = &[
    "rate",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "sum_over_time",
    "quantile_over_time",
    "histogram_over_time",
];

const EXPECTED_METRICS_FUNCTION: &str = "a metrics function (rate(), count_over_time(), \
     min_over_time(), max_over_time(), sum_over_time(), avg_over_time(), quantile_over_time(), \
     histogram_over_time())";

fn is_metrics_function(word: &str) -> bool {
    METRICS_FUNCTIONS.contains(&word)
}

fn binary(op: SpansetOp, lhs: SpansetExpr, rhs: SpansetExpr) -> SpansetExpr {
    SpansetExpr::Binary {
        op,
        lhs: Box::new(lhs),
        rhs: Box::new(rhs),
    }
}

/// The gist of a regex error: its `error: ...` line, else its first line.
fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| s.lines().next().unwrap_or(s))
        .to_string()
}

fn is_string_intrinsic(i: Intrinsic) -> bool {
    matches!(
        i,
        Intrinsic::Name
            | Intrinsic::StatusMessage
            | Intrinsic::SpanId
            | Intrinsic::ParentId
            | Intrinsic::RootName
            | Intrinsic::RootService
            | Intrinsic::TraceId
            | Intrinsic::EventName
            | Intrinsic::ScopeName
            | Intrinsic::ScopeVersion
            | Intrinsic::LinkTraceId
            | Intrinsic::LinkSpanId
    )
}

/// Refuses comparisons that can never make sense: a type that does not fit an intrinsic,
/// ordering on booleans, enums or nil.
fn check_comparison(
    field: &Field,
    op: &CmpOp,
    value: &Literal,
    at: &Token,
) -> Result<(), ParseError> {
    let fail = |message: String| {
        Err(ParseError {
            column: at.column,
            message,
        })
    };
    let equality = matches!(op, CmpOp::Eq | CmpOp::Ne);
    match value {
        Literal::Nil | Literal::Bool(_) | Literal::Status(_) | Literal::Kind(_) if !equality => {
            return fail(format!(
                "{} can only be compared with = or !=, not {:?}",
                at.describe(),
                op.as_str()
            ));
        }
        _ => {}
    }
    let Field::Intrinsic(i) = field else {
        return Ok(());
    };
    let ok = match i {
        Intrinsic::Status => matches!(value, Literal::Status(_)) && equality,
        Intrinsic::Kind => matches!(value, Literal::Kind(_)) && equality,
        Intrinsic::Duration | Intrinsic::TraceDuration | Intrinsic::EventTimeSinceStart => {
            matches!(value, Literal::Duration(_))
        }
        Intrinsic::NestedSetLeft | Intrinsic::NestedSetRight | Intrinsic::NestedSetParent => {
            matches!(value, Literal::Int(_) | Literal::Float(_))
        }
        Intrinsic::ParentId => matches!(value, Literal::Str(_) | Literal::Nil),
        _ => matches!(value, Literal::Str(_)),
    };
    if ok {
        return Ok(());
    }
    let want = match i {
        Intrinsic::Status => "ok, error or unset (with = or !=)",
        Intrinsic::Kind => {
            "unspecified, internal, server, client, producer or consumer (with = or !=)"
        }
        Intrinsic::Duration | Intrinsic::TraceDuration | Intrinsic::EventTimeSinceStart => {
            "a duration (like 100ms or 1.5s)"
        }
        Intrinsic::NestedSetLeft | Intrinsic::NestedSetRight | Intrinsic::NestedSetParent => {
            "a number"
        }
        _ => "a string",
    };
    fail(format!(
        "expected {want} to compare {} with, found {}",
        i.as_str(),
        at.describe()
    ))
}

/// Parses a TraceQL query.
///
/// # Errors
///
/// A [`ParseError`] with the 1-based column of the problem, what was expected and what was
/// found.
pub fn parse(src: &str) -> Result<Query, ParseError> {
    let tokens = tokenize(src)?;
    Parser {
        tokens,
        pos: 0,
        depth: 0,
        operators: 0,
        allow_metrics: false,
        metrics: None,
    }
    .query()
}

/// Parses a TraceQL metrics query: a spanset query, `|`, a metrics function and an optional
/// `by(...)`, e.g. `{ status = error } | rate() by (resource.service.name)`.
///
/// # Errors
///
/// A [`ParseError`] as [`parse`] gives, and one saying a metrics function is expected when the
/// query has none.
pub fn parse_metrics(src: &str) -> Result<MetricsQuery, ParseError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        operators: 0,
        allow_metrics: true,
        metrics: None,
    };
    let root = p.pipeline()?;
    let Some((func, by)) = p.metrics.take() else {
        let what = if p.previous().is_some_and(|t| t.tok == Tok::Pipe) {
            EXPECTED_METRICS_FUNCTION
        } else {
            "\"|\" and a metrics function such as rate() (this is a search, not a metrics query)"
        };
        return Err(p.expected(what));
    };
    if p.peek().tok != Tok::Eof {
        return Err(p.expected("\"by\" or the end of the query after the metrics function"));
    }
    Ok(MetricsQuery {
        spans: Query { root },
        func,
        by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    fn attr(scope: Scope, name: &str) -> Field {
        Field::Attribute(Attribute {
            scope,
            name: name.into(),
        })
    }

    fn cmp(field: Field, op: CmpOp, value: Literal) -> FilterExpr {
        FilterExpr::Compare(Comparison { field, op, value })
    }

    fn filter(src: &str) -> FilterExpr {
        match parse(src).unwrap().root {
            SpansetExpr::Filter(f) => f,
            other => panic!("not a filter: {other:?}"),
        }
    }

    #[test]
    fn filters() {
        assert_eq!(filter("{}"), FilterExpr::True);
        assert_eq!(filter("{ }"), FilterExpr::True);
        assert_eq!(
            filter(r#"{ resource.service.name = "api" }"#),
            cmp(
                attr(Scope::Resource, "service.name"),
                CmpOp::Eq,
                Literal::Str("api".into())
            )
        );
        assert_eq!(
            filter("{ .a = 1 || .b = 2 && .c = 3 }"),
            FilterExpr::Or(
                Box::new(cmp(attr(Scope::Unscoped, "a"), CmpOp::Eq, Literal::Int(1))),
                Box::new(FilterExpr::And(
                    Box::new(cmp(attr(Scope::Unscoped, "b"), CmpOp::Eq, Literal::Int(2))),
                    Box::new(cmp(attr(Scope::Unscoped, "c"), CmpOp::Eq, Literal::Int(3))),
                ))
            )
        );
        assert_eq!(
            filter("{ (.a = 1 || .b = 2) && .c = 3 }"),
            FilterExpr::And(
                Box::new(FilterExpr::Or(
                    Box::new(cmp(attr(Scope::Unscoped, "a"), CmpOp::Eq, Literal::Int(1))),
                    Box::new(cmp(attr(Scope::Unscoped, "b"), CmpOp::Eq, Literal::Int(2))),
                )),
                Box::new(cmp(attr(Scope::Unscoped, "c"), CmpOp::Eq, Literal::Int(3))),
            )
        );
        assert_eq!(
            filter("{ duration >= 1.5s }"),
            cmp(
                Field::Intrinsic(Intrinsic::Duration),
                CmpOp::Ge,
                Literal::Duration(1_500_000_000)
            )
        );
        assert_eq!(
            filter("{ status = error && kind != server && span.x = nil && event.e = true }"),
            FilterExpr::And(
                Box::new(FilterExpr::And(
                    Box::new(FilterExpr::And(
                        Box::new(cmp(
                            Field::Intrinsic(Intrinsic::Status),
                            CmpOp::Eq,
                            Literal::Status(StatusCode::Error)
                        )),
                        Box::new(cmp(
                            Field::Intrinsic(Intrinsic::Kind),
                            CmpOp::Ne,
                            Literal::Kind(SpanKind::Server)
                        )),
                    )),
                    Box::new(cmp(attr(Scope::Span, "x"), CmpOp::Eq, Literal::Nil)),
                )),
                Box::new(cmp(attr(Scope::Event, "e"), CmpOp::Eq, Literal::Bool(true))),
            )
        );
        match filter(r#"{ name =~ "GET.*" }"#) {
            FilterExpr::Compare(Comparison {
                op: CmpOp::Match(re),
                ..
            }) => {
                assert!(re.is_match("GET /x"));
                assert!(!re.is_match("xGET /x"), "anchored at the start");
                assert!(!AnchoredRegex::new("GET").unwrap().is_match("GET /x"));
            }
            other => panic!("{other:?}"),
        }
        for (name, i) in [
            ("span:name", Intrinsic::Name),
            ("rootName", Intrinsic::RootName),
            ("rootServiceName", Intrinsic::RootService),
            ("trace:rootService", Intrinsic::RootService),
            ("span:parentID", Intrinsic::ParentId),
            ("trace:id", Intrinsic::TraceId),
            ("event:name", Intrinsic::EventName),
            ("statusMessage", Intrinsic::StatusMessage),
        ] {
            assert_eq!(
                filter(&format!(r#"{{ {name} = "x" }}"#)),
                cmp(Field::Intrinsic(i), CmpOp::Eq, Literal::Str("x".into())),
                "{name}"
            );
        }
        assert_eq!(
            filter("{ traceDuration > 1s }"),
            cmp(
                Field::Intrinsic(Intrinsic::TraceDuration),
                CmpOp::Gt,
                Literal::Duration(1_000_000_000)
            )
        );
    }

    #[test]
    fn spanset_operators_and_precedence() {
        let q = parse("{ .a = 1 } > { .b = 2 } && { } || { }").unwrap();
        let SpansetExpr::Binary { op, lhs, .. } = q.root else {
            panic!()
        };
        assert_eq!(op, SpansetOp::Or);
        let SpansetExpr::Binary { op, lhs, .. } = *lhs else {
            panic!()
        };
        assert_eq!(op, SpansetOp::And);
        assert!(matches!(
            *lhs,
            SpansetExpr::Binary {
                op: SpansetOp::Child,
                ..
            }
        ));
        for (text, want) in [
            (">", SpansetOp::Child),
            (">>", SpansetOp::Descendant),
            ("<", SpansetOp::Parent),
            ("<<", SpansetOp::Ancestor),
            ("~", SpansetOp::Sibling),
            ("!>", SpansetOp::NotChild),
            ("!>>", SpansetOp::NotDescendant),
            ("!<", SpansetOp::NotParent),
            ("!<<", SpansetOp::NotAncestor),
            ("!~", SpansetOp::NotSibling),
            ("&>", SpansetOp::UnionChild),
            ("&>>", SpansetOp::UnionDescendant),
            ("&<", SpansetOp::UnionParent),
            ("&<<", SpansetOp::UnionAncestor),
            ("&~", SpansetOp::UnionSibling),
        ] {
            let q = parse(&format!("{{ }} {text} {{ }}")).unwrap();
            assert!(
                matches!(q.root, SpansetExpr::Binary { op, .. } if op == want),
                "{text}"
            );
            assert_eq!(want.as_str(), text);
        }
        // Structural operators are left-associative; parentheses group.
        let q = parse("{ } > ({ } > { })").unwrap();
        let SpansetExpr::Binary { rhs, .. } = q.root else {
            panic!()
        };
        assert!(matches!(*rhs, SpansetExpr::Binary { .. }));
    }

    #[test]
    fn pipelines() {
        let q = parse("{ } | count() > 2 | avg(duration) >= 1s | by(resource.service.name) | select(span.a, .b) | { .c = 1 }").unwrap();
        let SpansetExpr::Pipeline { stages, .. } = q.root else {
            panic!()
        };
        assert_eq!(
            stages[0],
            Stage::Aggregate {
                func: AggregateFn::Count,
                field: None,
                op: CmpOp::Gt,
                value: Literal::Int(2)
            }
        );
        assert_eq!(
            stages[1],
            Stage::Aggregate {
                func: AggregateFn::Avg,
                field: Some(Field::Intrinsic(Intrinsic::Duration)),
                op: CmpOp::Ge,
                value: Literal::Duration(1_000_000_000)
            }
        );
        assert_eq!(
            stages[2],
            Stage::By(vec![attr(Scope::Resource, "service.name")])
        );
        assert_eq!(
            stages[3],
            Stage::Select(vec![attr(Scope::Span, "a"), attr(Scope::Unscoped, "b")])
        );
        assert!(matches!(stages[4], Stage::Filter(_)));
        for f in ["min", "max", "sum"] {
            assert!(parse(&format!("{{ }} | {f}(span.x) > 3.5")).is_ok(), "{f}");
        }
        // A pipeline in parentheses is a spanset operand.
        assert!(parse("({ } | count() > 1) && { .a = 1 }").is_ok());
    }

    #[test]
    fn unsupported_constructs_are_errors() {
        assert_eq!(
            err("{ .a = .b }"),
            r#"column 8: expected a value after "=", found ".b""#
        );
        assert_eq!(
            err("{ .flag }"),
            r#"column 9: expected a comparison operator (= != > >= < <= =~ !~) after ".flag", found "}""#
        );
        assert_eq!(err("{ .a + 1 = 2 }"), "column 6: unexpected character '+'");
        assert_eq!(
            err("{ } | quantile_over_time(duration, .9)"),
            "column 7: quantile_over_time() is not supported in a search: it is a TraceQL metrics function (use /api/metrics/query_range or /api/metrics/query)"
        );
        assert_eq!(
            err("{ } with (most_recent=true)"),
            r#"column 5: expected a spanset operator, "|" or the end of the query after "}", found "with""#
        );
        assert_eq!(
            err("{ link:foo = \"x\" }"),
            r#"column 3: unknown intrinsic "link:foo""#
        );
    }

    #[test]
    fn deep_or_long_queries_are_refused() {
        assert_eq!(
            err("{ } | coalesce()"),
            "column 7: coalesce() is not supported"
        );
        let deep = format!("{}{{ }}{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(
            err(&deep),
            "column 33: query too deeply nested: more than 32 parentheses or braces"
        );
        let deep = format!("{{ {}.a = 1{} }}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(err(&deep).contains("too deeply nested"));
        let ok = format!("{}{{ }}{}", "(".repeat(31), ")".repeat(31));
        assert!(parse(&ok).is_ok());
        let long = vec!["{ }"; 300].join(" > ");
        assert_eq!(
            err(&long),
            format!(
                "column {}: query too complex: more than 256 operators",
                256 * 6 + 5
            )
        );
        let long = vec![".a = 1"; 300].join(" && ");
        assert!(err(&format!("{{ {long} }}")).contains("too complex"));
        assert!(parse(&vec!["{ }"; 257].join(" > ")).is_ok());
    }

    #[test]
    fn errors_name_column_expected_and_found() {
        assert_eq!(
            err(r#"{ .a = "x" && .b = }"#),
            r#"column 20: expected a value after "=", found "}""#
        );
        assert_eq!(
            err("{ .a = 1"),
            r#"column 9: expected "&&", "||" or "}" after "1", found end of query"#
        );
        assert_eq!(
            err("{ .a 1 }"),
            r#"column 6: expected a comparison operator (= != > >= < <= =~ !~) after ".a", found "1""#
        );
        assert_eq!(
            err("{ foo = 1 }"),
            r#"column 3: expected an attribute (.name, span.name, resource.name, ...) or an intrinsic after "{", found "foo""#
        );
        assert_eq!(
            err("{ span:foo = 1 }"),
            r#"column 3: unknown intrinsic "span:foo""#
        );
        assert_eq!(
            err("{ status = 500 }"),
            r#"column 12: expected ok, error or unset (with = or !=) to compare status with, found "500""#
        );
        assert_eq!(
            err("{ duration > 100 }"),
            r#"column 14: expected a duration (like 100ms or 1.5s) to compare duration with, found "100""#
        );
        assert_eq!(
            err("{ .a > nil }"),
            r#"column 8: "nil" can only be compared with = or !=, not ">""#
        );
        assert_eq!(
            err("{ .a =~ 1 }"),
            r#"column 9: expected a regex string after "=~", found "1""#
        );
        assert_eq!(
            err(r#"{ .a =~ "(" }"#),
            r#"column 9: invalid regex "(": unclosed group"#
        );
        assert_eq!(
            err("{ } { }"),
            r#"column 5: expected a spanset operator, "|" or the end of the query after "}", found "{""#
        );
        assert_eq!(
            err("{ } |"),
            r#"column 6: expected count(), avg(), min(), max(), sum(), by(), select() or a spanset filter after "|", found end of query"#
        );
        assert_eq!(
            err("{ } | rate()"),
            "column 7: rate() is not supported in a search: it is a TraceQL metrics function (use /api/metrics/query_range or /api/metrics/query)"
        );
        assert_eq!(
            err("{ } | count() > 1s"),
            r#"column 17: expected a number to compare count() with, found "1s""#
        );
        assert_eq!(
            err("{ } | avg(duration) > 1"),
            r#"column 23: expected a duration to compare avg(duration) with, found "1""#
        );
        assert_eq!(
            err("{ } | max(.a) > \"x\""),
            r#"column 17: expected a number or a duration to compare max(.a) with, found "\"x\"""#
        );
        assert_eq!(
            err("{ } | sum(name) > 1"),
            "column 11: sum() needs a numeric field, name is not one"
        );
        assert_eq!(
            err("{ } | by()"),
            r#"column 10: expected an attribute (.name, span.name, resource.name, ...) or an intrinsic after "(", found ")""#
        );
        assert_eq!(
            err(".a = 1"),
            r#"column 1: expected a spanset filter "{ ... }" or "(", found ".a""#
        );
        assert_eq!(
            err("({ }"),
            r#"column 5: expected ")" after "}", found end of query"#
        );
        assert_eq!(
            err("{ name =~ 1 }"),
            r#"column 11: expected a regex string after "=~", found "1""#
        );
        assert_eq!(
            err(r#"{ duration =~ "1" }"#),
            "column 12: duration cannot be matched with a regex (only strings can)"
        );
        assert_eq!(
            err("{ ! .a = 1 }"),
            r#"column 3: expected an attribute (.name, span.name, resource.name, ...) or an intrinsic after "{", found "!""#
        );
    }

    #[test]
    fn metrics_queries() {
        let m =
            parse_metrics("{ status = error } | rate() by (resource.service.name, name)").unwrap();
        assert_eq!(m.func, MetricsFn::Rate);
        assert_eq!(
            m.by,
            vec![
                attr(Scope::Resource, "service.name"),
                Field::Intrinsic(Intrinsic::Name)
            ]
        );
        assert_eq!(m.spans, parse("{ status = error }").unwrap());
        let m =
            parse_metrics("{ } | count() > 1 | quantile_over_time(duration, .9, 0.5, 1)").unwrap();
        assert_eq!(
            m.func,
            MetricsFn::QuantileOverTime(Field::Intrinsic(Intrinsic::Duration), vec![0.9, 0.5, 1.0])
        );
        assert!(matches!(m.spans.root, SpansetExpr::Pipeline { .. }));
        assert_eq!(
            parse_metrics("{ } | histogram_over_time(span.size)")
                .unwrap()
                .func,
            MetricsFn::HistogramOverTime(attr(Scope::Span, "size"))
        );
        for f in [
            "min_over_time",
            "max_over_time",
            "sum_over_time",
            "avg_over_time",
        ] {
            assert!(
                parse_metrics(&format!("{{ }} | {f}(duration)")).is_ok(),
                "{f}"
            );
        }
        let merr = |src: &str| parse_metrics(src).unwrap_err().to_string();
        assert!(merr("{ }").starts_with(r#"column 4: expected "|" and a metrics function"#));
        assert!(merr("{ } | count() > 1").contains("a metrics function such as rate()"));
        assert!(merr("{ } |").contains("expected a metrics function (rate(), "));
        assert_eq!(
            merr("{ } | rate() | count() > 1"),
            r#"column 14: expected "by" or the end of the query after the metrics function after ")", found "|""#
        );
        assert_eq!(
            merr("{ } | min_over_time(name)"),
            "column 21: min_over_time() needs a numeric field, name is not one"
        );
        assert_eq!(
            merr("{ } | quantile_over_time(duration, 1.5)"),
            r#"column 36: a quantile must be between 0 and 1, found "1.5""#
        );
        assert_eq!(
            merr("{ } | quantile_over_time(duration)"),
            r#"column 34: expected "," and a quantile (like 0.9) after "duration", found ")""#
        );
        assert_eq!(
            merr("({ } | rate())"),
            "column 8: rate() must be the last stage of a metrics query, outside parentheses"
        );
        assert!(merr("{ } | rate() by (.a, .b, .c, .d, .e, .f)").contains("at most 5 fields"));
        assert_eq!(merr("{ } | topk(3)"), "column 7: topk() is not supported");
    }
}
