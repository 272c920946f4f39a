//! The Jaeger query API: what the Jaeger UI and Grafana's Jaeger data source call (Jaeger
//! serves it on port 16686). [`router`] answers:
//!
//! | Path | Module |
//! |---|---|
//! | `GET /api/services`, `GET /api/services/{service}/operations`, `GET /api/operations` | [`v1`] |
//! | `GET /api/traces`, `GET /api/traces/{traceID}`, `GET /api/dependencies` | [`v1`] |
//! | `GET /api/v3/services`, `GET /api/v3/operations`, `GET /api/v3/traces`, `GET /api/v3/traces/{trace_id}` | [`v3`] |
//! | `GET /sampling?service=`, `GET /api/sampling?service=` (remote sampling) | [`sampling`] |
//!
//! [`model`] converts OTLP spans to Jaeger's JSON model. The v1 answers are wrapped in
//! Jaeger's envelope `{"data", "total", "limit", "offset", "errors"}` (`total` is the number of
//! services or operations, and 0 for traces and dependencies, as Jaeger sets it); errors are
//! `{"data": null, ..., "errors": [{"code", "msg"}]}` with the HTTP status. The api_v3 answers
//! are OTLP/JSON; its errors are `{"error": {"httpCode", "message"}}` as Jaeger's gateway
//! writes them.
//!
//! Operations and dependencies are not indexed by the store: they come from a scan of whole
//! traces, newest first, which stops after [`SCAN_LIMIT`] traces (so on a large store they
//! describe the most recent traces only).

pub mod model;
pub mod sampling;
pub mod v1;
pub mod v3;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sextant_otlp_proto::proto::{Resource, ResourceSpans, Span};
use sextant_otlp_proto::TraceId;
use sextant_store::{SearchQuery, StoreError, TagScope, TimeWindow, TraceReader};

use crate::error::QueryError;
use crate::QueryState;

/// At most this many traces are read by the scans behind operations and dependencies.
pub const SCAN_LIMIT: usize = 10_000;

/// The Jaeger query API (v1 JSON and api_v3) over `state`'s store; remote sampling answers
/// Jaeger's default strategy (probabilistic 0.001) for every service.
pub fn router(state: QueryState) -> Router {
    router_with_sampling(state, Arc::new(sampling::StrategyStore::default()))
}

/// The Jaeger query API, with remote sampling served from `strategies`.
pub fn router_with_sampling(state: QueryState, strategies: Arc<sampling::StrategyStore>) -> Router {
    let s = &state;
    let t = crate::tracked;
    let sampling_route = |endpoint: &'static str| {
        let store = Arc::clone(&strategies);
        t(
            s,
            endpoint,
            get(move |query: sampling::SamplingQuery| {
                sampling::sampling(Arc::clone(&store), query)
            }),
        )
    };
    Router::new()
        .route("/sampling", sampling_route("jaeger_sampling"))
        .route("/api/sampling", sampling_route("jaeger_api_sampling"))
        .route("/api/services", t(s, "jaeger_services", get(v1::services)))
        .route(
            "/api/services/{service}/operations",
            t(s, "jaeger_service_operations", get(v1::service_operations)),
        )
        .route(
            "/api/operations",
            t(s, "jaeger_operations", get(v1::operations)),
        )
        .route("/api/traces", t(s, "jaeger_search", get(v1::search)))
        .route(
            "/api/traces/{id}",
            t(s, "jaeger_trace_by_id", get(v1::trace)),
        )
        .route(
            "/api/dependencies",
            t(s, "jaeger_dependencies", get(v1::dependencies)),
        )
        .route(
            "/api/v3/services",
            t(s, "jaeger_v3_services", get(v3::services)),
        )
        .route(
            "/api/v3/operations",
            t(s, "jaeger_v3_operations", get(v3::operations)),
        )
        .route("/api/v3/traces", t(s, "jaeger_v3_search", get(v3::search)))
        .route(
            "/api/v3/traces/{id}",
            t(s, "jaeger_v3_trace_by_id", get(v3::trace)),
        )
        .fallback(unknown_path)
        .with_state(state)
}

async fn unknown_path(uri: Uri) -> Response {
    let error = QueryError::UnknownPath(uri.path().to_string());
    if uri.path().starts_with("/api/v3/") {
        V3Error::from(error).into_response()
    } else {
        JaegerError::from(error).into_response()
    }
}

/// Jaeger's v1 envelope around `data`, with `total` 0 (as Jaeger answers traces and
/// dependencies).
pub(crate) fn envelope(data: Value) -> Response {
    envelope_with_total(data, 0)
}

/// Jaeger's v1 envelope around a list whose length is its `total` (as Jaeger answers
/// services and operations).
pub(crate) fn counted_envelope(data: Value) -> Response {
    let total = data.as_array().map_or(0, Vec::len);
    envelope_with_total(data, total)
}

fn envelope_with_total(data: Value, total: usize) -> Response {
    Json(json!({
        "data": data,
        "total": total,
        "limit": 0,
        "offset": 0,
        "errors": null,
    }))
    .into_response()
}

/// Jaeger's v1 envelope around `data` with per-item `errors` (`null` when there are none).
pub(crate) fn envelope_with_errors(data: Value, errors: Vec<Value>) -> Response {
    Json(json!({
        "data": data,
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": if errors.is_empty() { Value::Null } else { Value::Array(errors) },
    }))
    .into_response()
}

/// An error answered in Jaeger's v1 envelope: the HTTP status and the message.
#[derive(Debug)]
pub(crate) struct JaegerError(pub StatusCode, pub String);

impl<E: Into<QueryError>> From<E> for JaegerError {
    fn from(e: E) -> Self {
        let e = e.into();
        JaegerError(e.status(), e.to_string())
    }
}

impl JaegerError {
    /// A 400 with this message.
    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        JaegerError(StatusCode::BAD_REQUEST, msg.into())
    }
}

fn log(status: StatusCode, msg: &str) {
    if status.is_server_error() {
        tracing::error!(%status, error = %msg, "jaeger query failed");
    } else {
        tracing::debug!(%status, error = %msg, "jaeger query rejected");
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let JaegerError(status, msg) = self;
        log(status, &msg);
        let body = json!({
            "data": null,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{ "code": status.as_u16(), "msg": msg }],
        });
        (status, Json(body)).into_response()
    }
}

/// An error answered as Jaeger's api_v3 gateway does: `{"error": {"httpCode", "message"}}`.
#[derive(Debug)]
pub(crate) struct V3Error(pub StatusCode, pub String);

impl<E: Into<QueryError>> From<E> for V3Error {
    fn from(e: E) -> Self {
        let e = e.into();
        V3Error(e.status(), e.to_string())
    }
}

impl V3Error {
    /// A 400 with this message.
    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        V3Error(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let V3Error(status, msg) = self;
        log(status, &msg);
        let body = json!({ "error": { "httpCode": status.as_u16(), "message": msg } });
        (status, Json(body)).into_response()
    }
}

/// Service names, sorted and deduplicated.
pub(crate) fn service_names(reader: &dyn TraceReader) -> Result<Vec<String>, StoreError> {
    let values = reader.tag_values(Some(TagScope::Resource), "service.name")?;
    let names: BTreeSet<String> = values.into_iter().map(|v| v.value).collect();
    Ok(names.into_iter().collect())
}

/// The operations (span name, span kind) of `service`, sorted, from the newest
/// [`SCAN_LIMIT`] traces with a span of that service; `kind` keeps only that kind (`""` is
/// unspecified).
pub(crate) fn service_operations(
    reader: &dyn TraceReader,
    service: &str,
    kind: Option<&str>,
) -> Result<Vec<(String, &'static str)>, StoreError> {
    let mut found: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let mut traces = 0usize;
    let prefilter = |_: &Span, resource: Option<&Resource>| model::service_of(resource) == service;
    let mut visit = |_: TraceId, batches: &[ResourceSpans]| {
        for rs in batches {
            if model::service_of(rs.resource.as_ref()) != service {
                continue;
            }
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let span_kind = model::span_kind(span.kind);
                if kind.is_none_or(|k| k == span_kind) {
                    found.insert((span.name.clone(), span_kind));
                }
            }
        }
        traces += 1;
        traces < SCAN_LIMIT
    };
    reader.scan(TimeWindow::all(), &prefilter, &mut visit)?;
    Ok(found.into_iter().collect())
}

/// The whole traces found by `query`, newest first.
pub(crate) fn find_traces(
    reader: &dyn TraceReader,
    query: &SearchQuery,
) -> Result<Vec<(TraceId, Vec<ResourceSpans>)>, StoreError> {
    let result = reader.search(query)?;
    let mut traces = Vec::with_capacity(result.traces.len());
    for hit in result.traces {
        if let Some(batches) = reader.trace(hit.trace_id, TimeWindow::all())? {
            if !batches.is_empty() {
                traces.push((hit.trace_id, batches));
            }
        }
    }
    Ok(traces)
}

/// A span kind as a query parameter gives it (`server`, `SPAN_KIND_SERVER`, `2`...), as the
/// lowercase name [`model::span_kind`] uses; `None` for an unknown kind.
pub(crate) fn parse_span_kind(text: &str) -> Option<&'static str> {
    let lower = text.trim().to_ascii_lowercase();
    let name = lower.strip_prefix("span_kind_").unwrap_or(&lower);
    Some(match name {
        "unspecified" => "",
        "internal" | "1" => "internal",
        "server" | "2" => "server",
        "client" | "3" => "client",
        "producer" | "4" => "producer",
        "consumer" | "5" => "consumer",
        "0" => "",
        _ => return None,
    })
}

/// Parses an RFC 3339 time (`2024-05-01T12:00:00Z`, `...T12:00:00.123456789+02:00`) or a
/// plain integer (unix nanoseconds) to unix nanoseconds.
pub(crate) fn parse_time_ns(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(ns) = text.parse::<u64>() {
        return Some(ns);
    }
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut frac_ns: i64 = 0;
    if let Some(after) = rest.strip_prefix('.') {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &after[..digits.min(9)];
        frac_ns = kept.parse::<i64>().ok()? * 10i64.pow(9 - kept.len() as u32);
        rest = &after[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            if !digits(&rb[1..3]) || !digits(&rb[4..6]) {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ns = i128::from(secs) * 1_000_000_000 + i128::from(frac_ns);
    u64::try_from(ns).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_time_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time_ns("2024-05-01T12:00:00Z"),
            Some(1_714_564_800_000_000_000)
        );
        assert_eq!(
            parse_time_ns("2024-05-01T14:00:00.5+02:00"),
            Some(1_714_564_800_500_000_000)
        );
        assert_eq!(
            parse_time_ns("2024-02-29T00:00:00.123456789Z"),
            Some(1_709_164_800_123_456_789)
        );
        assert_eq!(parse_time_ns("42"), Some(42));
        assert_eq!(parse_time_ns("2024-05-01"), None);
        assert_eq!(parse_time_ns("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_time_ns("2024-05-01T00:00:00"), None);
        assert_eq!(parse_time_ns("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_time_ns("2024-05-01T00:00:00+-1:00"), None);
    }

    #[test]
    fn span_kinds() {
        assert_eq!(parse_span_kind("server"), Some("server"));
        assert_eq!(parse_span_kind("SPAN_KIND_CLIENT"), Some("client"));
        assert_eq!(parse_span_kind("unspecified"), Some(""));
        assert_eq!(parse_span_kind("sideways"), None);
    }
}
