//! The `filter` processor (traces): drops spans, or span events, for which any of the OTTL
//! conditions holds (`traces: {span: [...], spanevent: [...]}`), and/or spans that the legacy
//! `spans: {include, exclude}` match properties do not select ([`super::matching`]).
//!
//! The conditions are a documented subset of OTTL boolean expressions, parsed once by the small
//! lexer and parser below (errors name the condition and the column):
//! * paths (span context): `name`, `kind`, `status.code`, `status.message`,
//!   `attributes["k"]`, `resource.attributes["k"]`, `instrumentation_scope.name`,
//!   `instrumentation_scope.version`, `trace_id.string`, `span_id.string`,
//!   `parent_span_id.string`, `trace_state`, `start_time_unix_nano`, `end_time_unix_nano`
//!   (each also with a `span.` prefix). In the `spanevent` context `name`, `attributes["k"]`
//!   and `time_unix_nano` are the event's, `span.<path>` the span's;
//! * literals: strings (`"..."` with `\"`, `\\`, `\n`, `\t`), ints, floats, `true`, `false`,
//!   `nil`, and the enums `SPAN_KIND_*` and `STATUS_CODE_*`;
//! * operators: `==`, `!=`, `<`, `<=`, `>`, `>=`, `and`, `or`, `not`, parentheses, and
//!   arithmetic `+ - * /` on numbers (e.g. `end_time_unix_nano - start_time_unix_nano`);
//! * functions: `IsMatch(target, "regex")` (unanchored, as Go's; the regex is compiled once).
//!
//! Comparisons follow OTTL: values of different types are never equal (ints and floats compare
//! as numbers), `<`-like operators on mismatched types are false, a missing attribute is `nil`.
//! `metrics` and `logs` conditions are accepted and ignored (Sextant carries only traces).
//! No condition of this subset can fail at run time, so `error_mode` (propagate|ignore|silent)
//! is accepted and only decides how a failed condition would have been logged.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::span::Event;
use sextant_otlp_proto::proto::{
    AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, Span,
};

use super::matching::{self, MatchProperties, Matcher};
use super::SpanProcessor;
use crate::metrics::CollectorMetrics;

/// `error_mode`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    #[default]
    Propagate,
    Ignore,
    Silent,
}

/// `traces`: OTTL conditions per context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConditions {
    pub span: Vec<String>,
    pub spanevent: Vec<String>,
}

/// The legacy `spans: {include, exclude}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LegacySpans {
    pub include: Option<MatchProperties>,
    pub exclude: Option<MatchProperties>,
}

/// The processor's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub error_mode: ErrorMode,
    pub traces: TracesConditions,
    pub spans: Option<LegacySpans>,
    /// Conditions for other signals: accepted (a filter may serve several pipelines) and
    /// ignored, since Sextant only carries traces.
    pub metrics: Option<serde_json::Value>,
    pub logs: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Cmp(CmpOp),
    Plus,
    Minus,
    Star,
    Slash,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::Dot => "'.'".into(),
            Tok::Cmp(op) => format!("'{}'", op.as_str()),
            Tok::Plus => "'+'".into(),
            Tok::Minus => "'-'".into(),
            Tok::Star => "'*'".into(),
            Tok::Slash => "'/'".into(),
            Tok::End => "the end".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// Tokens with their 1-based columns (in characters).
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, (usize, String)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            ',' => Some(Tok::Comma),
            '.' if !chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) => Some(Tok::Dot),
            '+' => Some(Tok::Plus),
            '-' => Some(Tok::Minus),
            '*' => Some(Tok::Star),
            '/' => Some(Tok::Slash),
            _ => None,
        };
        if let Some(t) = single {
            out.push((t, col));
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let cmp = match (c, next) {
            ('=', Some('=')) => Some((CmpOp::Eq, 2)),
            ('!', Some('=')) => Some((CmpOp::Ne, 2)),
            ('<', Some('=')) => Some((CmpOp::Le, 2)),
            ('>', Some('=')) => Some((CmpOp::Ge, 2)),
            ('<', _) => Some((CmpOp::Lt, 1)),
            ('>', _) => Some((CmpOp::Gt, 1)),
            _ => None,
        };
        if let Some((op, n)) = cmp {
            out.push((Tok::Cmp(op), col));
            i += n;
            continue;
        }
        if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err((col, "unterminated string".into())),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        let e = chars.get(i + 1).copied();
                        match e {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some(other) => {
                                // Keep unknown escapes as written (regexes use `\d`, `\.`).
                                s.push('\\');
                                s.push(other);
                            }
                            None => return Err((col, "unterminated string".into())),
                        }
                        i += 2;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Str(s), col));
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            let tok = if let Ok(n) = text.parse::<i64>() {
                Tok::Int(n)
            } else if let Ok(f) = text.parse::<f64>() {
                Tok::Float(f)
            } else {
                return Err((col, format!("{text:?} is not a number")));
            };
            out.push((tok, col));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            continue;
        }
        return Err((col, format!("unexpected character {c:?}")));
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// AST

#[derive(Debug, Clone, PartialEq)]
enum Path {
    Name,
    Kind,
    StatusCode,
    StatusMessage,
    Attr(String),
    ResourceAttr(String),
    ScopeName,
    ScopeVersion,
    TraceId,
    SpanId,
    ParentSpanId,
    TraceState,
    Start,
    End,
    EventName,
    EventTime,
    EventAttr(String),
}

#[derive(Debug)]
enum Expr {
    Lit(Lit),
    Path(Path),
    Arith(Box<Expr>, ArithOp, Box<Expr>),
    Neg(Box<Expr>),
    Cmp(Box<Expr>, CmpOp, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsMatch(Box<Expr>, Regex),
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl Expr {
    fn is_bool(&self) -> bool {
        matches!(
            self,
            Expr::Cmp(..)
                | Expr::And(..)
                | Expr::Or(..)
                | Expr::Not(..)
                | Expr::IsMatch(..)
                | Expr::Lit(Lit::Bool(_))
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Span,
    SpanEvent,
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    ctx: Context,
}

type PResult<T> = Result<T, (usize, String)>;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    fn col(&self) -> usize {
        self.toks[self.pos.min(self.toks.len() - 1)].1
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == kw)
    }

    fn expected(&self, what: &str) -> (usize, String) {
        (
            self.col(),
            format!("expected {what}, found {}", self.peek().describe()),
        )
    }

    fn expect(&mut self, tok: Tok, what: &str) -> PResult<()> {
        if *self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn condition(&mut self) -> PResult<Expr> {
        let col = self.col();
        let e = self.or()?;
        if *self.peek() != Tok::End {
            return Err(self.expected("'and', 'or' or the end of the condition"));
        }
        if !e.is_bool() {
            return Err((
                col,
                "expected a condition (a comparison, IsMatch, and/or/not)".into(),
            ));
        }
        Ok(e)
    }

    fn bool_operand(&mut self, f: fn(&mut Self) -> PResult<Expr>) -> PResult<Expr> {
        let col = self.col();
        let e = f(self)?;
        if !e.is_bool() {
            return Err((
                col,
                "expected a condition (a comparison, IsMatch, and/or/not)".into(),
            ));
        }
        Ok(e)
    }

    fn or(&mut self) -> PResult<Expr> {
        let mut left = self.and()?;
        while self.is_kw("or") {
            self.bump();
            if !left.is_bool() {
                return Err((
                    self.col(),
                    "the left side of 'or' is not a condition".into(),
                ));
            }
            let right = self.bool_operand(Self::and)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut left = self.not()?;
        while self.is_kw("and") {
            self.bump();
            if !left.is_bool() {
                return Err((
                    self.col(),
                    "the left side of 'and' is not a condition".into(),
                ));
            }
            let right = self.bool_operand(Self::not)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> PResult<Expr> {
        if self.is_kw("not") {
            self.bump();
            let inner = self.bool_operand(Self::not)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> PResult<Expr> {
        let left = self.additive()?;
        if let Tok::Cmp(op) = *self.peek() {
            self.bump();
            let right = self.additive()?;
            return Ok(Expr::Cmp(Box::new(left), op, Box::new(right)));
        }
        Ok(left)
    }

    fn additive(&mut self) -> PResult<Expr> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => ArithOp::Add,
                Tok::Minus => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.multiplicative()?;
            left = Expr::Arith(Box::new(left), op, Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> PResult<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => ArithOp::Mul,
                Tok::Slash => ArithOp::Div,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            left = Expr::Arith(Box::new(left), op, Box::new(right));
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        if *self.peek() == Tok::Minus {
            self.bump();
            return Ok(match self.unary()? {
                Expr::Lit(Lit::Int(i)) => Expr::Lit(Lit::Int(i.wrapping_neg())),
                Expr::Lit(Lit::Float(f)) => Expr::Lit(Lit::Float(-f)),
                e => Expr::Neg(Box::new(e)),
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Expr> {
        let col = self.col();
        match self.bump() {
            Tok::LParen => {
                let e = self.or()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Lit(Lit::Str(s))),
            Tok::Int(i) => Ok(Expr::Lit(Lit::Int(i))),
            Tok::Float(f) => Ok(Expr::Lit(Lit::Float(f))),
            Tok::Ident(id) => self.ident(id, col),
            other => {
                self.pos -= 1;
                let _ = other;
                Err(self.expected("a value, a path or a function"))
            }
        }
    }

    fn ident(&mut self, id: String, col: usize) -> PResult<Expr> {
        match id.as_str() {
            "true" => return Ok(Expr::Lit(Lit::Bool(true))),
            "false" => return Ok(Expr::Lit(Lit::Bool(false))),
            "nil" => return Ok(Expr::Lit(Lit::Nil)),
            _ => {}
        }
        if let Some(n) = enum_value(&id) {
            return Ok(Expr::Lit(Lit::Int(n)));
        }
        if *self.peek() == Tok::LParen {
            return self.function(id, col);
        }
        if id.chars().next().is_some_and(char::is_uppercase) {
            return Err((col, format!("unknown enum or function {id:?}")));
        }
        // A path: ident (. ident)* ([ "key" ])?
        let mut segs = vec![id];
        while *self.peek() == Tok::Dot {
            self.bump();
            match self.bump() {
                Tok::Ident(s) => segs.push(s),
                _ => {
                    self.pos -= 1;
                    return Err(self.expected("a name after '.'"));
                }
            }
        }
        let key = if *self.peek() == Tok::LBracket {
            self.bump();
            let k = match self.bump() {
                Tok::Str(s) => s,
                _ => {
                    self.pos -= 1;
                    return Err(self.expected("a string key like [\"http.route\"]"));
                }
            };
            self.expect(Tok::RBracket, "']'")?;
            Some(k)
        } else {
            None
        };
        let text = segs.join(".");
        path(self.ctx, &segs, key).map(Expr::Path).ok_or_else(|| {
            (
                col,
                format!("unknown path {text:?} ({} context)", self.ctx_name()),
            )
        })
    }

    fn ctx_name(&self) -> &'static str {
        match self.ctx {
            Context::Span => "span",
            Context::SpanEvent => "spanevent",
        }
    }

    fn function(&mut self, name: String, col: usize) -> PResult<Expr> {
        self.expect(Tok::LParen, "'('")?;
        match name.as_str() {
            "IsMatch" => {
                let target = self.additive()?;
                self.expect(Tok::Comma, "',' between the arguments of IsMatch")?;
                let pcol = self.col();
                let pattern = match self.bump() {
                    Tok::Str(s) => s,
                    _ => {
                        self.pos -= 1;
                        return Err(self.expected("a string literal pattern"));
                    }
                };
                let re = Regex::new(&pattern)
                    .map_err(|e| (pcol, format!("{pattern:?} is not a valid regex: {e}")))?;
                self.expect(Tok::RParen, "')'")?;
                Ok(Expr::IsMatch(Box::new(target), re))
            }
            _ => Err((
                col,
                format!("unknown function {name:?} (supported: IsMatch)"),
            )),
        }
    }
}

fn enum_value(id: &str) -> Option<i64> {
    Some(match id {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}

fn path(ctx: Context, segs: &[String], key: Option<String>) -> Option<Path> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (event, rest): (bool, &[&str]) = match (ctx, s.first().copied()) {
        (Context::SpanEvent, Some("span")) => (false, &s[1..]),
        (Context::SpanEvent, Some("spanevent")) => (true, &s[1..]),
        (Context::SpanEvent, _) => (true, &s[..]),
        (Context::Span, Some("span")) => (false, &s[1..]),
        (Context::Span, _) => (false, &s[..]),
    };
    if event {
        match (rest, key) {
            (["name"], None) => return Some(Path::EventName),
            (["time_unix_nano"], None) => return Some(Path::EventTime),
            (["attributes"], Some(k)) => return Some(Path::EventAttr(k)),
            (_, key) => {
                // resource.* and instrumentation_scope.* are the same in both contexts.
                return match rest.first() {
                    Some(&"resource") | Some(&"instrumentation_scope") => span_path(rest, key),
                    _ => None,
                };
            }
        }
    }
    span_path(rest, key)
}

fn span_path(s: &[&str], key: Option<String>) -> Option<Path> {
    Some(match (s, key) {
        (["name"], None) => Path::Name,
        (["kind"], None) => Path::Kind,
        (["status", "code"], None) => Path::StatusCode,
        (["status", "message"], None) => Path::StatusMessage,
        (["attributes"], Some(k)) => Path::Attr(k),
        (["resource", "attributes"], Some(k)) => Path::ResourceAttr(k),
        (["instrumentation_scope", "name"], None) => Path::ScopeName,
        (["instrumentation_scope", "version"], None) => Path::ScopeVersion,
        (["trace_id", "string"], None) => Path::TraceId,
        (["span_id", "string"], None) => Path::SpanId,
        (["parent_span_id", "string"], None) => Path::ParentSpanId,
        (["trace_state"], None) => Path::TraceState,
        (["start_time_unix_nano"], None) => Path::Start,
        (["end_time_unix_nano"], None) => Path::End,
        _ => return None,
    })
}

/// Parses one condition.
fn parse(src: &str, ctx: Context) -> Result<Expr, String> {
    let toks = lex(src).map_err(|(c, m)| format!("column {c}: {m}"))?;
    let mut p = Parser { toks, pos: 0, ctx };
    p.condition().map_err(|(c, m)| format!("column {c}: {m}"))
}

// ---------------------------------------------------------------------------------------------
// Evaluation

#[derive(Debug, Clone, PartialEq)]
enum V<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
}

struct Ctx<'a> {
    resource: Option<&'a Resource>,
    scope: Option<&'a InstrumentationScope>,
    span: &'a Span,
    event: Option<&'a Event>,
}

fn attr_value<'a>(attrs: &'a [KeyValue], key: &str) -> V<'a> {
    match attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
    {
        None => V::Nil,
        Some(v) => any_to_v(v),
    }
}

fn any_to_v(v: &AnyValue) -> V<'_> {
    match &v.value {
        None => V::Nil,
        Some(Value::StringValue(s)) => V::Str(Cow::Borrowed(s)),
        Some(Value::BoolValue(b)) => V::Bool(*b),
        Some(Value::IntValue(i)) => V::Int(*i),
        Some(Value::DoubleValue(d)) => V::Float(*d),
        Some(_) => V::Str(matching::as_str(v)),
    }
}

fn hex_or_empty(b: &[u8]) -> V<'static> {
    if b.iter().all(|x| *x == 0) {
        // OTTL renders an empty id as "" (e.g. parent_span_id of a root span).
        return V::Str(Cow::Borrowed(""));
    }
    V::Str(Cow::Owned(matching::to_hex(b)))
}

impl<'a> Ctx<'a> {
    fn path(&self, p: &Path) -> V<'a> {
        let span = self.span;
        match p {
            Path::Name => V::Str(Cow::Borrowed(&span.name)),
            Path::Kind => V::Int(i64::from(span.kind)),
            Path::StatusCode => {
                V::Int(span.status.as_ref().map(|s| i64::from(s.code)).unwrap_or(0))
            }
            Path::StatusMessage => V::Str(Cow::Borrowed(
                span.status
                    .as_ref()
                    .map(|s| s.message.as_str())
                    .unwrap_or(""),
            )),
            Path::Attr(k) => attr_value(&span.attributes, k),
            Path::ResourceAttr(k) => match self.resource {
                Some(r) => attr_value(&r.attributes, k),
                None => V::Nil,
            },
            Path::ScopeName => V::Str(Cow::Borrowed(
                self.scope.map(|s| s.name.as_str()).unwrap_or(""),
            )),
            Path::ScopeVersion => V::Str(Cow::Borrowed(
                self.scope.map(|s| s.version.as_str()).unwrap_or(""),
            )),
            Path::TraceId => hex_or_empty(&span.trace_id),
            Path::SpanId => hex_or_empty(&span.span_id),
            Path::ParentSpanId => hex_or_empty(&span.parent_span_id),
            Path::TraceState => V::Str(Cow::Borrowed(&span.trace_state)),
            Path::Start => V::Int(span.start_time_unix_nano as i64),
            Path::End => V::Int(span.end_time_unix_nano as i64),
            Path::EventName => match self.event {
                Some(e) => V::Str(Cow::Borrowed(&e.name)),
                None => V::Nil,
            },
            Path::EventTime => match self.event {
                Some(e) => V::Int(e.time_unix_nano as i64),
                None => V::Nil,
            },
            Path::EventAttr(k) => match self.event {
                Some(e) => attr_value(&e.attributes, k),
                None => V::Nil,
            },
        }
    }

    fn value(&self, e: &'a Expr) -> V<'a> {
        match e {
            Expr::Lit(l) => match l {
                Lit::Nil => V::Nil,
                Lit::Bool(b) => V::Bool(*b),
                Lit::Int(i) => V::Int(*i),
                Lit::Float(f) => V::Float(*f),
                Lit::Str(s) => V::Str(Cow::Borrowed(s)),
            },
            Expr::Path(p) => self.path(p),
            Expr::Neg(x) => match self.value(x) {
                V::Int(i) => V::Int(i.wrapping_neg()),
                V::Float(f) => V::Float(-f),
                _ => V::Nil,
            },
            Expr::Arith(a, op, b) => arith(self.value(a), *op, self.value(b)),
            _ => V::Bool(self.truth(e)),
        }
    }

    fn truth(&self, e: &'a Expr) -> bool {
        match e {
            Expr::And(a, b) => self.truth(a) && self.truth(b),
            Expr::Or(a, b) => self.truth(a) || self.truth(b),
            Expr::Not(a) => !self.truth(a),
            Expr::Cmp(a, op, b) => compare(&self.value(a), *op, &self.value(b)),
            Expr::IsMatch(t, re) => match self.value(t) {
                V::Str(s) => re.is_match(&s),
                V::Int(i) => re.is_match(&i.to_string()),
                V::Float(f) => re.is_match(&f.to_string()),
                V::Bool(b) => re.is_match(if b { "true" } else { "false" }),
                V::Nil => false,
            },
            Expr::Lit(Lit::Bool(b)) => *b,
            _ => false,
        }
    }
}

fn arith<'a>(a: V<'a>, op: ArithOp, b: V<'a>) -> V<'a> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => match op {
            ArithOp::Add => V::Int(x.wrapping_add(y)),
            ArithOp::Sub => V::Int(x.wrapping_sub(y)),
            ArithOp::Mul => V::Int(x.wrapping_mul(y)),
            ArithOp::Div => x.checked_div(y).map(V::Int).unwrap_or(V::Nil),
        },
        (a, b) => {
            let (Some(x), Some(y)) = (num(&a), num(&b)) else {
                return V::Nil;
            };
            V::Float(match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div => x / y,
            })
        }
    }
}

fn num(v: &V<'_>) -> Option<f64> {
    match v {
        V::Int(i) => Some(*i as f64),
        V::Float(f) => Some(*f),
        _ => None,
    }
}

fn compare(a: &V<'_>, op: CmpOp, b: &V<'_>) -> bool {
    let ord: Option<Ordering> = match (a, b) {
        (V::Nil, V::Nil) => {
            return matches!(op, CmpOp::Eq | CmpOp::Le | CmpOp::Ge);
        }
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Str(x), V::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (V::Bool(x), V::Bool(y)) => {
            return match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                _ => false,
            }
        }
        (x, y) => match (num(x), num(y)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
    };
    match ord {
        None => op == CmpOp::Ne,
        Some(o) => match op {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The processor

struct Filter {
    name: String,
    span: Vec<Expr>,
    spanevent: Vec<Expr>,
    legacy: Option<Matcher>,
    metrics: CollectorMetrics,
}

impl SpanProcessor for Filter {
    fn process(&self, spans: &mut Vec<ResourceSpans>) {
        let mut dropped = 0usize;
        let mut events_dropped = 0usize;
        for rs in spans.iter_mut() {
            let resource = rs.resource.as_ref();
            for ss in rs.scope_spans.iter_mut() {
                let scope = ss.scope.as_ref();
                let before = ss.spans.len();
                ss.spans.retain_mut(|span| {
                    if let Some(m) = &self.legacy {
                        if !m.selects(resource, scope, span) {
                            return false;
                        }
                    }
                    if !self.span.is_empty() {
                        let ctx = Ctx {
                            resource,
                            scope,
                            span: &*span,
                            event: None,
                        };
                        if self.span.iter().any(|c| ctx.truth(c)) {
                            return false;
                        }
                    }
                    if !self.spanevent.is_empty() && !span.events.is_empty() {
                        let events = std::mem::take(&mut span.events);
                        let n = events.len();
                        let kept: Vec<Event> = {
                            let ctx_span: &Span = span;
                            events
                                .into_iter()
                                .filter(|ev| {
                                    let ctx = Ctx {
                                        resource,
                                        scope,
                                        span: ctx_span,
                                        event: Some(ev),
                                    };
                                    !self.spanevent.iter().any(|c| ctx.truth(c))
                                })
                                .collect()
                        };
                        events_dropped += n - kept.len();
                        span.events = kept;
                    }
                    true
                });
                dropped += before - ss.spans.len();
            }
        }
        if dropped > 0 {
            self.metrics.dropped(&self.name, dropped);
        }
        if events_dropped > 0 {
            tracing::trace!(processor = %self.name, events = events_dropped, "span events dropped");
        }
    }
}

/// Builds the processor.
pub fn build(
    name: &str,
    config: &Config,
    metrics: &CollectorMetrics,
) -> Result<Arc<dyn SpanProcessor>, String> {
    let mut span = Vec::with_capacity(config.traces.span.len());
    for (i, c) in config.traces.span.iter().enumerate() {
        span.push(parse(c, Context::Span).map_err(|e| format!("traces.span[{i}]: {e}"))?);
    }
    let mut spanevent = Vec::with_capacity(config.traces.spanevent.len());
    for (i, c) in config.traces.spanevent.iter().enumerate() {
        spanevent
            .push(parse(c, Context::SpanEvent).map_err(|e| format!("traces.spanevent[{i}]: {e}"))?);
    }
    let legacy = match &config.spans {
        Some(l) => Matcher::new(l.include.as_ref(), l.exclude.as_ref())
            .map_err(|e| format!("spans.{e}"))?,
        None => None,
    };
    if config.metrics.is_some() || config.logs.is_some() {
        tracing::info!(
            processor = name,
            "metrics and logs conditions are ignored (traces only)"
        );
    }
    if span.is_empty() && spanevent.is_empty() && legacy.is_none() {
        tracing::warn!(
            processor = name,
            "filter has no conditions: it drops nothing"
        );
    }
    Ok(Arc::new(Filter {
        name: name.to_string(),
        span,
        spanevent,
        legacy,
        metrics: metrics.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::count_spans;
    use crate::processor::matching::tests::{batch, span};
    use sextant_otlp_proto::attr::{kv_int, kv_str};
    use sextant_otlp_proto::proto::Status;

    fn filter(json: &str) -> Arc<dyn SpanProcessor> {
        let c: Config = serde_json::from_str(json).unwrap();
        build("filter", &c, &CollectorMetrics::unregistered()).unwrap()
    }

    fn names(b: &[ResourceSpans]) -> Vec<String> {
        b.iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    fn sample() -> Vec<ResourceSpans> {
        let mut err = span("error", vec![kv_int("http.status_code", 500)]);
        err.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        err.end_time_unix_nano = 2_000_000_000;
        let mut client = span("client", vec![]);
        client.kind = 3;
        batch(
            "api",
            vec![
                span("health", vec![kv_str("http.route", "/healthz")]),
                span("ready", vec![kv_str("url.path", "/ready/x")]),
                span(
                    "users",
                    vec![kv_str("http.route", "/users"), kv_str("url.path", "/users")],
                ),
                err,
                client,
            ],
        )
    }

    #[test]
    fn drops_health_checks() {
        let f = filter(
            r#"{"traces":{"span":[
                "attributes[\"http.route\"] == \"/healthz\"",
                "IsMatch(attributes[\"url.path\"], \"^/(health|ready)\")"]}}"#,
        );
        let mut b = sample();
        f.process(&mut b);
        assert_eq!(names(&b), vec!["users", "error", "client"]);
    }

    #[test]
    fn paths_operators_and_enums() {
        let cases: &[(&str, &[&str])] = &[
            ("kind == SPAN_KIND_CLIENT", &["client"]),
            ("kind == 3", &["client"]),
            ("status.code == STATUS_CODE_ERROR", &["error"]),
            ("span.status.message != \"\"", &["error"]),
            ("end_time_unix_nano - start_time_unix_nano > 1000000000", &["error"]),
            ("(end_time_unix_nano - start_time_unix_nano) / 1000 >= 4", &["health", "ready", "users", "error", "client"]),
            ("attributes[\"http.status_code\"] >= 500 and resource.attributes[\"service.name\"] == \"api\"", &["error"]),
            ("attributes[\"http.status_code\"] >= 500.0", &["error"]),
            ("attributes[\"http.status_code\"] == \"500\"", &[]),
            ("not (name == \"users\" or kind == SPAN_KIND_SERVER)", &["client"]),
            ("attributes[\"missing\"] == nil and name == \"users\"", &["users"]),
            ("attributes[\"http.route\"] != nil", &["health", "users"]),
            ("instrumentation_scope.name == \"io.opentelemetry.http\" and name < \"h\"", &["error", "client"]),
            ("trace_id.string == \"01010101010101010101010101010101\" and name == \"ready\"", &["ready"]),
            ("parent_span_id.string == \"\" and span_id.string == \"0202020202020202\" and name == \"users\"", &["users"]),
            ("IsMatch(name, \"^(he|re)\") or false", &["health", "ready"]),
            ("IsMatch(attributes[\"http.status_code\"], \"^5\")", &["error"]),
            ("-1 < 0 and name == \"client\"", &["client"]),
        ];
        for (cond, dropped) in cases {
            let json = serde_json::json!({"traces": {"span": [cond]}}).to_string();
            let f = filter(&json);
            let mut b = sample();
            let all = names(&b);
            f.process(&mut b);
            let kept = names(&b);
            let got: Vec<&str> = all
                .iter()
                .filter(|n| !kept.contains(n))
                .map(String::as_str)
                .collect();
            assert_eq!(&got, dropped, "{cond}");
        }
    }

    #[test]
    fn spanevent_conditions_drop_events_only() {
        let f = filter(
            r#"{"traces":{"spanevent":["name == \"debug\" and span.name == \"users\"",
                "attributes[\"level\"] == \"trace\""]}}"#,
        );
        let mut b = sample();
        for s in b[0].scope_spans[0].spans.iter_mut() {
            s.events = vec![
                Event {
                    name: "debug".into(),
                    ..Default::default()
                },
                Event {
                    name: "log".into(),
                    attributes: vec![kv_str("level", "trace")],
                    ..Default::default()
                },
                Event {
                    name: "exception".into(),
                    ..Default::default()
                },
            ];
        }
        f.process(&mut b);
        assert_eq!(count_spans(&b), 5);
        let ev = |i: usize| -> Vec<String> {
            b[0].scope_spans[0].spans[i]
                .events
                .iter()
                .map(|e| e.name.clone())
                .collect()
        };
        assert_eq!(ev(2), vec!["exception"]);
        assert_eq!(ev(0), vec!["debug", "exception"]);
    }

    #[test]
    fn legacy_spans_include_exclude() {
        let f = filter(
            r#"{"spans":{"include":{"match_type":"regexp","span_names":["^(users|error|health)$"]},
                          "exclude":{"match_type":"strict","attributes":[{"key":"http.route","value":"/healthz"}]}}}"#,
        );
        let mut b = sample();
        f.process(&mut b);
        assert_eq!(names(&b), vec!["users", "error"]);
    }

    #[test]
    fn parse_errors_name_condition_and_column() {
        let m = CollectorMetrics::unregistered();
        let err = |conds: &[&str]| {
            let c = Config {
                traces: TracesConditions {
                    span: conds.iter().map(|s| s.to_string()).collect(),
                    spanevent: vec![],
                },
                ..Default::default()
            };
            build("filter", &c, &m).err().unwrap()
        };
        let e = err(&["name == \"a\"", "name == "]);
        assert!(
            e.starts_with("traces.span[1]: column 9: expected a value"),
            "{e}"
        );
        let e = err(&["attributes[\"a\"] = 1"]);
        assert!(
            e.starts_with("traces.span[0]: column 17: unexpected character '='"),
            "{e}"
        );
        let e = err(&["nme == \"x\""]);
        assert!(e.contains("column 1: unknown path \"nme\""), "{e}");
        let e = err(&["IsMatch(name, \"(\")"]);
        assert!(e.contains("column 15: \"(\" is not a valid regex"), "{e}");
        let e = err(&["Foo(name)"]);
        assert!(e.contains("unknown function \"Foo\""), "{e}");
        let e = err(&["name"]);
        assert!(e.contains("expected a condition"), "{e}");
        let e = err(&["name == \"a\" and"]);
        assert!(e.contains("column 16: expected a value"), "{e}");
        let e = err(&["(name == \"a\""]);
        assert!(e.contains("expected ')'"), "{e}");
        let e = err(&["name == \"a"]);
        assert!(e.contains("unterminated string"), "{e}");
        let e = err(&["name == \"a\" name"]);
        assert!(e.contains("column 13: expected 'and', 'or'"), "{e}");
        assert!(serde_json::from_str::<Config>(r#"{"error_mode":"loud"}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"metrics":{"metric":["x"]}}"#).is_ok());
        assert!(serde_json::from_str::<Config>(r#"{"traces":{"spans":[]}}"#).is_err());
    }
    #[test]
    fn reference_yaml_example() {
        let c: Config = crate::processor::matching::tests::yaml(
            r#"
error_mode: ignore
metrics:
  metric:
    - 'name == "my.metric"'
logs:
  log_record:
    - 'severity_number < SEVERITY_NUMBER_WARN'
traces:
  span:
    - 'attributes["container.name"] == "app_container_1"'
    - 'resource.attributes["host.name"] == "localhost"'
    - 'name == "app_3"'
  spanevent:
    - 'attributes["grpc"] == true'
    - 'IsMatch(name, ".*grpc.*")'
"#,
        )
        .unwrap();
        assert_eq!(c.error_mode, ErrorMode::Ignore);
        let f = build("filter", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut s1 = span("app_1", vec![]);
        s1.events = vec![
            Event {
                name: "call grpc".into(),
                ..Default::default()
            },
            Event {
                name: "x".into(),
                attributes: vec![KeyValue {
                    key: "grpc".into(),
                    value: Some(AnyValue {
                        value: Some(Value::BoolValue(true)),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Event {
                name: "kept".into(),
                ..Default::default()
            },
        ];
        let mut b = batch(
            "api",
            vec![
                s1,
                span("app_2", vec![kv_str("container.name", "app_container_1")]),
                span("app_3", vec![]),
            ],
        );
        f.process(&mut b);
        assert_eq!(names(&b), vec!["app_1"]);
        assert_eq!(b[0].scope_spans[0].spans[0].events.len(), 1);
    }
}
