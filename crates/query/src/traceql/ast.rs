//! The syntax tree of a TraceQL query, as [`super::parse`] builds it.

use std::fmt;

use regex::Regex;

/// A parsed TraceQL query: one spanset expression, possibly with a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// What the query selects.
    pub root: SpansetExpr,
}

/// An expression whose value is a list of spansets.
#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    /// `{ ... }`: the spans for which the condition holds (`{ }`: every span).
    Filter(FilterExpr),
    /// Two spanset expressions joined by a spanset operator.
    Binary {
        /// The operator.
        op: SpansetOp,
        /// Left-hand side.
        lhs: Box<SpansetExpr>,
        /// Right-hand side.
        rhs: Box<SpansetExpr>,
    },
    /// `input | stage | stage ...`.
    Pipeline {
        /// The spansets fed into the first stage.
        input: Box<SpansetExpr>,
        /// The stages, applied in order.
        stages: Vec<Stage>,
    },
}

/// An operator between two spansets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpansetOp {
    /// `&&`: both sides have spans; the result is both sides' spans.
    And,
    /// `||`: either side's spans.
    Or,
    /// `>`: right-hand spans whose parent is a left-hand span.
    Child,
    /// `>>`: right-hand spans with a left-hand ancestor.
    Descendant,
    /// `<`: right-hand spans that are the parent of a left-hand span.
    Parent,
    /// `<<`: right-hand spans that are an ancestor of a left-hand span.
    Ancestor,
    /// `~`: right-hand spans with a left-hand sibling (same parent, another span).
    Sibling,
    /// `!>`: right-hand spans whose parent is not a left-hand span.
    NotChild,
    /// `!>>`: right-hand spans with no left-hand ancestor.
    NotDescendant,
    /// `!<`: right-hand spans that are the parent of no left-hand span.
    NotParent,
    /// `!<<`: right-hand spans that are the ancestor of no left-hand span.
    NotAncestor,
    /// `!~`: right-hand spans with no left-hand sibling.
    NotSibling,
    /// `&>`: `>` keeping both sides' spans (the parents too).
    UnionChild,
    /// `&>>`: `>>` keeping both sides' spans.
    UnionDescendant,
    /// `&<`: `<` keeping both sides' spans.
    UnionParent,
    /// `&<<`: `<<` keeping both sides' spans.
    UnionAncestor,
    /// `&~`: `~` keeping both sides' spans.
    UnionSibling,
}

impl SpansetOp {
    /// The operator as written in TraceQL.
    pub fn as_str(self) -> &'static str {
        match self {
            SpansetOp::And => "&&",
            SpansetOp::Or => "||",
            SpansetOp::Child => ">",
            SpansetOp::Descendant => ">>",
            SpansetOp::Parent => "<",
            SpansetOp::Ancestor => "<<",
            SpansetOp::Sibling => "~",
            SpansetOp::NotChild => "!>",
            SpansetOp::NotDescendant => "!>>",
            SpansetOp::NotParent => "!<",
            SpansetOp::NotAncestor => "!<<",
            SpansetOp::NotSibling => "!~",
            SpansetOp::UnionChild => "&>",
            SpansetOp::UnionDescendant => "&>>",
            SpansetOp::UnionParent => "&<",
            SpansetOp::UnionAncestor => "&<<",
            SpansetOp::UnionSibling => "&~",
        }
    }
}

/// A condition on one span, inside `{ }`.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterExpr {
    /// `{ }`: every span.
    True,
    /// Both hold.
    And(Box<FilterExpr>, Box<FilterExpr>),
    /// Either holds.
    Or(Box<FilterExpr>, Box<FilterExpr>),
    /// `field op value`.
    Compare(Comparison),
}

/// `field op value`, e.g. `span.http.status_code >= 500`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// What is looked at.
    pub field: Field,
    /// How it is compared.
    pub op: CmpOp,
    /// What it is compared with.
    pub value: Literal,
}

/// A comparison operator.
#[derive(Debug, Clone, PartialEq)]
pub enum CmpOp {
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
    /// `=~`: the whole string matches the regex.
    Match(AnchoredRegex),
    /// `!~`: the string does not match the regex as a whole.
    NotMatch(AnchoredRegex),
}

impl CmpOp {
    /// The operator as written in TraceQL.
    pub fn as_str(&self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Match(_) => "=~",
            CmpOp::NotMatch(_) => "!~",
        }
    }
}

/// A regex compiled fully anchored (`^(?:...)$`), as TraceQL matches.
#[derive(Debug, Clone)]
pub struct AnchoredRegex {
    /// The pattern as written.
    pub source: String,
    /// The anchored, compiled pattern.
    pub regex: Regex,
}

impl AnchoredRegex {
    /// Compiles `source` anchored at both ends.
    ///
    /// # Errors
    ///
    /// The regex crate's error when the pattern is invalid.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            source: source.to_string(),
            regex: Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    /// Whether the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for AnchoredRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `"text"`
    Str(String),
    /// `42`
    Int(i64),
    /// `1.5`
    Float(f64),
    /// `100ms`, in nanoseconds.
    Duration(i64),
    /// `true`, `false`
    Bool(bool),
    /// `ok`, `error`, `unset`
    Status(StatusCode),
    /// `server`, `client`, ...
    Kind(SpanKind),
    /// `nil`: no value.
    Nil,
}

/// A span status, as TraceQL writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// `unset` (OTLP 0)
    Unset,
    /// `ok` (OTLP 1)
    Ok,
    /// `error` (OTLP 2)
    Error,
}

impl StatusCode {
    /// From the OTLP status code.
    pub fn from_otlp(code: i32) -> Self {
        match code {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    /// The TraceQL word.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// A span kind, as TraceQL writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// `unspecified` (OTLP 0)
    Unspecified,
    /// `internal` (OTLP 1)
    Internal,
    /// `server` (OTLP 2)
    Server,
    /// `client` (OTLP 3)
    Client,
    /// `producer` (OTLP 4)
    Producer,
    /// `consumer` (OTLP 5)
    Consumer,
}

impl SpanKind {
    /// From the OTLP kind.
    pub fn from_otlp(kind: i32) -> Self {
        match kind {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// The TraceQL word.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// What a comparison, aggregate, `by` or `select` looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// An attribute, e.g. `resource.service.name`.
    Attribute(Attribute),
    /// An intrinsic, e.g. `duration`.
    Intrinsic(Intrinsic),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Attribute(a) => {
                let prefix = match a.scope {
                    Scope::Unscoped => "",
                    Scope::Span => "span",
                    Scope::Resource => "resource",
                    Scope::Event => "event",
                    Scope::Link => "link",
                    Scope::Instrumentation => "instrumentation",
                };
                let plain = !a.name.is_empty()
                    && a.name
                        .chars()
                        .all(|c| c.is_alphanumeric() || "._-/:".contains(c));
                if plain {
                    write!(f, "{prefix}.{}", a.name)
                } else {
                    write!(f, "{prefix}.{:?}", a.name)
                }
            }
            Field::Intrinsic(i) => f.write_str(i.as_str()),
        }
    }
}

/// Where an attribute is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `.attr`: the span's attributes, else its resource's.
    Unscoped,
    /// `span.attr`
    Span,
    /// `resource.attr`
    Resource,
    /// `event.attr`: any of the span's events.
    Event,
    /// `link.attr`: any of the span's links.
    Link,
    /// `instrumentation.attr`: the instrumentation scope's attributes.
    Instrumentation,
}

/// An attribute reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    /// Where to look.
    pub scope: Scope,
    /// The attribute's key.
    pub name: String,
}

/// A span's or trace's built-in field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    /// `name`, `span:name`
    Name,
    /// `status`, `span:status`
    Status,
    /// `statusMessage`, `span:statusMessage`
    StatusMessage,
    /// `kind`, `span:kind`
    Kind,
    /// `duration`, `span:duration`
    Duration,
    /// `span:id` (hex)
    SpanId,
    /// `span:parentID` (hex; nil for a root span)
    ParentId,
    /// `trace:duration`, `traceDuration`
    TraceDuration,
    /// `trace:rootName`, `rootName`
    RootName,
    /// `trace:rootService`, `rootServiceName`
    RootService,
    /// `trace:id` (hex)
    TraceId,
    /// `event:name`: the name of any of the span's events.
    EventName,
    /// `instrumentation:name`
    ScopeName,
    /// `instrumentation:version`
    ScopeVersion,
    /// `event:timeSinceStart`: for each event, its time minus the span's start.
    EventTimeSinceStart,
    /// `link:traceID` (hex) of any of the span's links.
    LinkTraceId,
    /// `link:spanID` (hex) of any of the span's links.
    LinkSpanId,
    /// `nestedSetLeft`: the span's left bound in the trace's nested-set numbering (depth
    /// first from the root spans, children by start time; 0 for spans not under a root).
    NestedSetLeft,
    /// `nestedSetRight`: the right bound (0 when not under a root).
    NestedSetRight,
    /// `nestedSetParent`: the parent's left bound; -1 for a root span, 0 when not under one.
    NestedSetParent,
}

impl Intrinsic {
    /// Looks up an intrinsic by any of its TraceQL names.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "name" | "span:name" => Intrinsic::Name,
            "status" | "span:status" => Intrinsic::Status,
            "statusMessage" | "span:statusMessage" => Intrinsic::StatusMessage,
            "kind" | "span:kind" => Intrinsic::Kind,
            "duration" | "span:duration" => Intrinsic::Duration,
            "span:id" => Intrinsic::SpanId,
            "span:parentID" => Intrinsic::ParentId,
            "trace:duration" | "traceDuration" => Intrinsic::TraceDuration,
            "trace:rootName" | "rootName" => Intrinsic::RootName,
            "trace:rootService" | "rootServiceName" => Intrinsic::RootService,
            "trace:id" => Intrinsic::TraceId,
            "event:name" => Intrinsic::EventName,
            "instrumentation:name" => Intrinsic::ScopeName,
            "instrumentation:version" => Intrinsic::ScopeVersion,
            "event:timeSinceStart" => Intrinsic::EventTimeSinceStart,
            "link:traceID" => Intrinsic::LinkTraceId,
            "link:spanID" => Intrinsic::LinkSpanId,
            "nestedSetLeft" | "span:nestedSetLeft" => Intrinsic::NestedSetLeft,
            "nestedSetRight" | "span:nestedSetRight" => Intrinsic::NestedSetRight,
            "nestedSetParent" | "span:nestedSetParent" => Intrinsic::NestedSetParent,
            _ => return None,
        })
    }

    /// The canonical TraceQL name.
    pub fn as_str(self) -> &'static str {
        match self {
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::Kind => "kind",
            Intrinsic::Duration => "duration",
            Intrinsic::SpanId => "span:id",
            Intrinsic::ParentId => "span:parentID",
            Intrinsic::TraceDuration => "trace:duration",
            Intrinsic::RootName => "trace:rootName",
            Intrinsic::RootService => "trace:rootService",
            Intrinsic::TraceId => "trace:id",
            Intrinsic::EventName => "event:name",
            Intrinsic::ScopeName => "instrumentation:name",
            Intrinsic::ScopeVersion => "instrumentation:version",
            Intrinsic::EventTimeSinceStart => "event:timeSinceStart",
            Intrinsic::LinkTraceId => "link:traceID",
            Intrinsic::LinkSpanId => "link:spanID",
            Intrinsic::NestedSetLeft => "nestedSetLeft",
            Intrinsic::NestedSetRight => "nestedSetRight",
            Intrinsic::NestedSetParent => "nestedSetParent",
        }
    }

    /// Whether the value is a plain number (the nested-set bounds).
    pub fn is_number(self) -> bool {
        matches!(
            self,
            Intrinsic::NestedSetLeft | Intrinsic::NestedSetRight | Intrinsic::NestedSetParent
        )
    }

    /// Whether the value is a duration.
    pub fn is_duration(self) -> bool {
        matches!(
            self,
            Intrinsic::Duration | Intrinsic::TraceDuration | Intrinsic::EventTimeSinceStart
        )
    }
}

/// One stage of a pipeline (after `|`).
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// `| { cond }`: keeps the spans of each spanset for which `cond` holds.
    Filter(FilterExpr),
    /// `| count() > 2`, `| avg(duration) > 1s`: keeps the spansets whose aggregate compares.
    Aggregate {
        /// The aggregate.
        func: AggregateFn,
        /// What is aggregated (`None` for `count()`).
        field: Option<Field>,
        /// The comparison (never a regex).
        op: CmpOp,
        /// What the aggregate is compared with.
        value: Literal,
    },
    /// `| by(field, ...)`: splits each spanset into one spanset per distinct value.
    By(Vec<Field>),
    /// `| select(field, ...)`: returns these fields with each span.
    Select(Vec<Field>),
}

/// An aggregate over a spanset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFn {
    /// `count()`
    Count,
    /// `avg(field)`
    Avg,
    /// `min(field)`
    Min,
    /// `max(field)`
    Max,
    /// `sum(field)`
    Sum,
}

/// A TraceQL metrics query: a spanset query, then a metrics function with its `by(...)`,
/// e.g. `{ status = error } | rate() by (resource.service.name)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    /// The spans measured (every span of every spanset the query produces).
    pub spans: Query,
    /// What is computed per step.
    pub func: MetricsFn,
    /// The fields whose values split the result into series (at most [`MAX_METRICS_BY`]).
    pub by: Vec<Field>,
}

/// At most this many fields in a metrics function's `by(...)` (as Tempo).
pub const MAX_METRICS_BY: usize = 5;

/// A TraceQL metrics function.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFn {
    /// `rate()`: matching spans per second of each step.
    Rate,
    /// `count_over_time()`: matching spans per step.
    CountOverTime,
    /// `min_over_time(field)`: the smallest value per step (durations in seconds).
    MinOverTime(Field),
    /// `max_over_time(field)`: the largest value per step (durations in seconds).
    MaxOverTime(Field),
    /// `sum_over_time(field)`: the sum of the values per step (durations in seconds).
    SumOverTime(Field),
    /// `avg_over_time(field)`: the mean of the values per step (durations in seconds).
    AvgOverTime(Field),
    /// `quantile_over_time(field, q, ...)`: one series per quantile (label `p`), from log2
    /// buckets.
    QuantileOverTime(Field, Vec<f64>),
    /// `histogram_over_time(field)`: one series per log2 bucket (label `__bucket`), each the
    /// count of spans in that bucket per step.
    HistogramOverTime(Field),
}

impl MetricsFn {
    /// The function's TraceQL name (also the `__name__` of an ungrouped series).
    pub fn name(&self) -> &'static str {
        match self {
            MetricsFn::Rate => "rate",
            MetricsFn::CountOverTime => "count_over_time",
            MetricsFn::MinOverTime(_) => "min_over_time",
            MetricsFn::MaxOverTime(_) => "max_over_time",
            MetricsFn::SumOverTime(_) => "sum_over_time",
            MetricsFn::AvgOverTime(_) => "avg_over_time",
            MetricsFn::QuantileOverTime(..) => "quantile_over_time",
            MetricsFn::HistogramOverTime(_) => "histogram_over_time",
        }
    }

    /// The field the function reads a value from (`None` for `rate` and `count_over_time`).
    pub fn field(&self) -> Option<&Field> {
        match self {
            MetricsFn::Rate | MetricsFn::CountOverTime => None,
            MetricsFn::MinOverTime(f)
            | MetricsFn::MaxOverTime(f)
            | MetricsFn::SumOverTime(f)
            | MetricsFn::AvgOverTime(f)
            | MetricsFn::QuantileOverTime(f, _)
            | MetricsFn::HistogramOverTime(f) => Some(f),
        }
    }
}
