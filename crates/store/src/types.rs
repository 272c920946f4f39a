use std::time::Duration;

use sextant_otlp_proto::TraceId;

use crate::query::Condition;

/// What a write stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReceipt {
    pub accepted_spans: u64,
    pub rejected_spans: u64,
    /// Why spans were rejected (empty when none were).
    pub rejection: String,
    /// Every trace whose spans in the write were refused over a size limit ([`crate::Limits`]),
    /// with how many and why. Spans refused for an invalid trace id are counted in
    /// `rejected_spans` only: they belong to no trace, so the sum of these may be less.
    pub rejected_traces: Vec<RejectedTrace>,
}

/// The spans of one trace that a write refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedTrace {
    pub trace_id: TraceId,
    /// How many of the write's spans of the trace were refused (a write's part of a trace is
    /// refused whole).
    pub spans: u64,
    /// Why, naming the trace and the limit (as the first part of `WriteReceipt::rejection`
    /// does for the first refused trace).
    pub reason: String,
}

/// An optional time window in unix nanoseconds; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub start_ns: Option<u64>,
    pub end_ns: Option<u64>,
}

impl TimeWindow {
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether `[start, end]` overlaps the window.
    pub fn overlaps(&self, start_ns: u64, end_ns: u64) -> bool {
        self.start_ns.is_none_or(|s| end_ns >= s) && self.end_ns.is_none_or(|e| start_ns <= e)
    }
}

/// A search: traces having one span that satisfies every condition.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub conditions: Vec<Condition>,
    pub min_duration: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub window: TimeWindow,
    /// At most this many traces (Tempo's default is 20).
    pub limit: usize,
    /// At most this many matching spans per trace in the answer (Tempo's `spss`, default 3).
    pub spans_per_trace: usize,
}

impl Default for SearchQuery {
    fn default() -> Self {
        Self {
            conditions: Vec::new(),
            min_duration: None,
            max_duration: None,
            window: TimeWindow::all(),
            limit: 20,
            spans_per_trace: 3,
        }
    }
}

/// One trace found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceHit {
    pub trace_id: TraceId,
    pub summary: TraceSummary,
    pub matched_spans: Vec<MatchedSpan>,
    /// How many spans matched in all (may exceed `matched_spans.len()`).
    pub matched: usize,
}

/// A trace at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceSummary {
    /// `service.name` of the root span; `<root span not yet received>` until it arrives.
    pub root_service: String,
    /// Name of the root span; same placeholder rule.
    pub root_name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub span_count: usize,
}

/// Placeholder for a trace whose root span has not arrived (Tempo's wording).
pub const ROOT_NOT_RECEIVED: &str = "<root span not yet received>";

/// A span that matched a search.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedSpan {
    pub span_id: sextant_otlp_proto::SpanId,
    pub name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The attributes the conditions looked at, as they were on the span or its resource.
    pub attributes: Vec<sextant_otlp_proto::proto::KeyValue>,
}

/// A search's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResult {
    pub traces: Vec<TraceHit>,
    pub inspected_traces: u64,
    pub inspected_bytes: u64,
}

/// Where an attribute lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagScope {
    Resource,
    Span,
}

impl TagScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TagScope::Resource => "resource",
            TagScope::Span => "span",
        }
    }

    pub(crate) fn byte(self) -> u8 {
        match self {
            TagScope::Resource => b'r',
            TagScope::Span => b's',
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'r' => Some(TagScope::Resource),
            b's' => Some(TagScope::Span),
            _ => None,
        }
    }
}

/// A value seen for a tag, with its OTLP type (`string`, `int`, `float`, `bool`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagValue {
    /// First, so that values sort by their text.
    pub value: String,
    pub type_name: String,
}

/// Figures for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub spans_written: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_on_disk: u64,
    /// Blocks served, and their bytes (on local disk or object storage).
    pub blocks: u64,
    pub block_bytes: u64,
    /// Spans in the write-ahead log, not cut into blocks yet.
    pub wal_spans: u64,
    pub blocks_cut: u64,
    pub compactions: u64,
    pub blocks_expired: u64,
    pub blocks_quarantined: u64,
}

/// What of each span [`crate::TraceReader::scan_spans`] must fill in. A store may leave the
/// rest empty (no attributes, events or links) and decode less: they are most of a span.
/// Ids, times, name, kind, status, flags and the resource are always there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanFields {
    /// The span's own attributes.
    pub attributes: bool,
    /// Its events, with their attributes.
    pub events: bool,
    /// Its links, with their attributes.
    pub links: bool,
}

impl SpanFields {
    /// Every field.
    pub const ALL: Self = Self {
        attributes: true,
        events: true,
        links: true,
    };
    /// No attributes, events or links.
    pub const CORE: Self = Self {
        attributes: false,
        events: false,
        links: false,
    };
}

impl Default for SpanFields {
    fn default() -> Self {
        Self::ALL
    }
}
