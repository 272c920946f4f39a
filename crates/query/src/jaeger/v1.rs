//! Jaeger's v1 JSON API (the one the Jaeger UI calls), answered in Jaeger's envelope.
//!
//! * `GET /api/services`: service names, sorted.
//! * `GET /api/services/{service}/operations`: span names of the service, sorted.
//! * `GET /api/operations?service=&spanKind=`: `[{"name", "spanKind"}]`.
//! * `GET /api/traces?service=&operation=&tags=&start=&end=&minDuration=&maxDuration=&limit=`:
//!   traces with one span that has the service, the operation (span name), every tag and a
//!   duration in range. `service` is required unless `traceID` is given (then those traces are
//!   answered, and each id not found is an error `{"msg": "trace not found", "traceID"}`). `tags` is a JSON object (`{"http.method":"GET"}`); `tag=key:value` may also be
//!   repeated. `start` and `end` are unix microseconds (absent: unbounded), the durations Go
//!   durations (`1.2s`, `100ms`), `limit` defaults to [`DEFAULT_LIMIT`]. The tags `error`,
//!   `span.kind` and `otel.status_code`, which the conversion derives from the span's status
//!   and kind, are searched on those.
//! * `GET /api/traces/{traceID}`: `[trace]`, or 404 `trace not found`.
//! * `GET /api/dependencies?endTs=&lookback=` (unix milliseconds, milliseconds; defaults now
//!   and 24 h): `[{"parent", "child", "callCount"}]`, one call per span whose parent span
//!   belongs to another service, from at most [`super::SCAN_LIMIT`] traces.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{json, Value};
use sextant_otlp_proto::proto::ResourceSpans;
use sextant_otlp_proto::TraceId;
use sextant_store::{Condition, SearchQuery, TimeWindow};

use super::{counted_envelope, envelope, model, JaegerError};
use crate::duration::parse_go_duration;
use crate::error::QueryError;
use crate::tempo::blocking;
use crate::QueryState;

/// Traces answered by a search without `limit` (Jaeger's default).
pub const DEFAULT_LIMIT: usize = 100;

/// The dependencies' default lookback: 24 hours, in milliseconds.
pub const DEFAULT_LOOKBACK_MS: u64 = 24 * 3600 * 1000;

/// The query string, every pair kept (`tag` may repeat).
type Pairs = Vec<(String, String)>;

/// The last non-empty value of `name`.
fn param<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
}

fn unsigned(pairs: &Pairs, name: &'static str, what: &str) -> Result<Option<u64>, JaegerError> {
    param(pairs, name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| JaegerError::from(QueryError::param(name, v, what)))
        })
        .transpose()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `GET /api/services`.
pub(crate) async fn services(State(state): State<QueryState>) -> Result<Response, JaegerError> {
    let names = blocking(&state, |reader| super::service_names(reader)).await?;
    Ok(counted_envelope(json!(names)))
}

/// `GET /api/services/{service}/operations`.
pub(crate) async fn service_operations(
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, JaegerError> {
    let Path(service) = path?;
    let ops = blocking(&state, move |reader| {
        super::service_operations(reader, &service, None)
    })
    .await?;
    let mut names: Vec<String> = ops.into_iter().map(|(name, _)| name).collect();
    names.dedup();
    Ok(counted_envelope(json!(names)))
}

/// `GET /api/operations?service=&spanKind=`.
pub(crate) async fn operations(
    State(state): State<QueryState>,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Result<Response, JaegerError> {
    let Query(pairs) = query?;
    let service = param(&pairs, "service")
        .ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?
        .to_string();
    let kind = param(&pairs, "spanKind")
        .map(|k| {
            super::parse_span_kind(k).ok_or_else(|| {
                JaegerError::from(QueryError::param(
                    "spanKind",
                    k,
                    "expected server, client, producer, consumer, internal or unspecified",
                ))
            })
        })
        .transpose()?;
    let ops = blocking(&state, move |reader| {
        super::service_operations(reader, &service, kind)
    })
    .await?;
    let data: Vec<Value> = ops
        .into_iter()
        .map(|(name, kind)| json!({ "name": name, "spanKind": kind }))
        .collect();
    Ok(counted_envelope(Value::Array(data)))
}

/// A Jaeger tag as a store condition (derived tags are searched on what they derive from).
pub(crate) fn tag_condition(key: &str, value: &str) -> Condition {
    match (key, value) {
        ("error", "true") => Condition::equals("status", "error"),
        ("span.kind", kind) => Condition::equals("kind", kind.to_ascii_lowercase()),
        ("otel.status_code", code) => Condition::equals("status", code.to_ascii_lowercase()),
        _ => Condition::equals(key, value),
    }
}

/// The tags of a search: the `tags` JSON object and every `tag=key:value`.
fn tags(pairs: &Pairs) -> Result<Vec<Condition>, JaegerError> {
    let mut conditions = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "tags" if !v.trim().is_empty() => {
                let parsed: serde_json::Map<String, Value> =
                    serde_json::from_str(v).map_err(|e| {
                        JaegerError::bad_request(format!(
                            "malformed 'tags' parameter, expecting a JSON object: {e}"
                        ))
                    })?;
                for (key, value) in parsed {
                    let text = match value {
                        Value::String(s) => s,
                        Value::Bool(_) | Value::Number(_) => value.to_string(),
                        _ => {
                            return Err(JaegerError::bad_request(format!(
                                "malformed 'tags' parameter: the value of {key:?} is not a string"
                            )))
                        }
                    };
                    conditions.push(tag_condition(&key, &text));
                }
            }
            "tag" if !v.trim().is_empty() => {
                let (key, value) = v.split_once(':').ok_or_else(|| {
                    JaegerError::bad_request(format!(
                        "malformed 'tag' parameter {v:?}, expecting key:value"
                    ))
                })?;
                conditions.push(tag_condition(key, value));
            }
            _ => {}
        }
    }
    Ok(conditions)
}

fn duration(pairs: &Pairs, name: &'static str) -> Result<Option<Duration>, JaegerError> {
    param(pairs, name)
        .map(|v| {
            parse_go_duration(v)
                .map_err(|source| JaegerError::from(QueryError::InvalidDuration { name, source }))
        })
        .transpose()
}

/// `start` and `end`, unix microseconds, as a window.
fn micros_window(pairs: &Pairs) -> Result<TimeWindow, JaegerError> {
    let what = "expected a unix time in microseconds";
    let start = unsigned(pairs, "start", what)?;
    let end = unsigned(pairs, "end", what)?;
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            return Err(JaegerError::bad_request(format!(
                "start ({s}) must not be after end ({e})"
            )));
        }
    }
    Ok(TimeWindow {
        start_ns: start.map(|s| s.saturating_mul(1_000)),
        end_ns: end.map(|e| e.saturating_mul(1_000).saturating_add(999)),
    })
}

fn traces_json(traces: Vec<(TraceId, Vec<ResourceSpans>)>) -> Value {
    Value::Array(
        traces
            .into_iter()
            .map(|(id, batches)| model::trace_json(&id.to_hex(), &batches))
            .collect(),
    )
}

/// `GET /api/traces`.
pub(crate) async fn search(
    State(state): State<QueryState>,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Result<Response, JaegerError> {
    let Query(pairs) = query?;
    let window = micros_window(&pairs)?;
    let ids: Vec<TraceId> = pairs
        .iter()
        .filter(|(k, v)| k == "traceID" && !v.trim().is_empty())
        .map(|(_, v)| TraceId::parse_hex(v))
        .collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        let (traces, missing) = blocking(&state, move |reader| {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                match reader.trace(id, window)? {
                    Some(batches) if !batches.is_empty() => found.push((id, batches)),
                    _ => missing.push(id),
                }
            }
            Ok((found, missing))
        })
        .await?;
        // As Jaeger: each id not found is an error naming it, in a 200 answer.
        let errors: Vec<Value> = missing
            .iter()
            .map(|id| {
                let trace_id = model::jaeger_trace_id(&id.to_hex());
                json!({ "msg": "trace not found", "traceID": trace_id })
            })
            .collect();
        return Ok(super::envelope_with_errors(traces_json(traces), errors));
    }
    let service = param(&pairs, "service")
        .ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?;
    let mut conditions = vec![Condition::equals("service.name", service)];
    if let Some(operation) = param(&pairs, "operation") {
        conditions.push(Condition::equals("name", operation));
    }
    conditions.extend(tags(&pairs)?);
    let min_duration = duration(&pairs, "minDuration")?;
    let max_duration = duration(&pairs, "maxDuration")?;
    if let (Some(min), Some(max)) = (min_duration, max_duration) {
        if min > max {
            return Err(JaegerError::bad_request(
                "'maxDuration' should be greater than 'minDuration'",
            ));
        }
    }
    let limit = match unsigned(&pairs, "limit", "expected a non-negative integer")? {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let query = SearchQuery {
        conditions,
        min_duration,
        max_duration,
        window,
        limit,
        ..SearchQuery::default()
    };
    let traces = blocking(&state, move |reader| super::find_traces(reader, &query)).await?;
    Ok(envelope(traces_json(traces)))
}

/// `GET /api/traces/{traceID}` (optional `start`, `end` in unix microseconds).
pub(crate) async fn trace(
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Result<Response, JaegerError> {
    let Path(id) = path?;
    let Query(pairs) = query?;
    let id = TraceId::parse_hex(&id)?;
    let window = micros_window(&pairs)?;
    let batches = blocking(&state, move |reader| reader.trace(id, window))
        .await?
        .filter(|b| !b.is_empty())
        .ok_or(QueryError::TraceNotFound)?;
    Ok(envelope(json!([model::trace_json(&id.to_hex(), &batches)])))
}

/// Adds the calls between services in `trace` to `calls`: for each span whose parent span is
/// in the trace and has another service, one call parent service -> child service.
pub fn dependency_links(trace: &[ResourceSpans], calls: &mut BTreeMap<(String, String), u64>) {
    let mut services: std::collections::HashMap<&[u8], &str> = std::collections::HashMap::new();
    for rs in trace {
        let service = model::service_of(rs.resource.as_ref());
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            services.insert(span.span_id.as_slice(), service);
        }
    }
    for rs in trace {
        let child = model::service_of(rs.resource.as_ref());
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            if span.parent_span_id.is_empty() {
                continue;
            }
            if let Some(parent) = services.get(span.parent_span_id.as_slice()) {
                if *parent != child {
                    *calls
                        .entry((parent.to_string(), child.to_string()))
                        .or_insert(0) += 1;
                }
            }
        }
    }
}

/// `GET /api/dependencies?endTs=&lookback=`.
pub(crate) async fn dependencies(
    State(state): State<QueryState>,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Result<Response, JaegerError> {
    let Query(pairs) = query?;
    let end_ms = unsigned(&pairs, "endTs", "expected a unix time in milliseconds")?
        .unwrap_or_else(|| now_ns() / 1_000_000);
    let lookback_ms =
        unsigned(&pairs, "lookback", "expected milliseconds")?.unwrap_or(DEFAULT_LOOKBACK_MS);
    let window = TimeWindow {
        start_ns: Some(end_ms.saturating_sub(lookback_ms).saturating_mul(1_000_000)),
        end_ns: Some(end_ms.saturating_mul(1_000_000).saturating_add(999_999)),
    };
    let calls = blocking(&state, move |reader| {
        let mut calls = BTreeMap::new();
        let mut traces = 0usize;
        let mut visit = |_: TraceId, trace: &[ResourceSpans]| {
            dependency_links(trace, &mut calls);
            traces += 1;
            traces < super::SCAN_LIMIT
        };
        reader.scan(window, &|_, _| true, &mut visit)?;
        Ok(calls)
    })
    .await?;
    let data: Vec<Value> = calls
        .into_iter()
        .map(|((parent, child), count)| {
            json!({ "parent": parent, "child": child, "callCount": count })
        })
        .collect();
    Ok(envelope(Value::Array(data)))
}
