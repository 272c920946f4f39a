//! `GET /api/search`: traces by tags, duration and time range.
//!
//! Parameters (as Tempo's): `tags` (logfmt, `service.name=api name="GET /x"`, each pair an
//! unscoped equality), `minDuration` and `maxDuration` (Go durations), `start` and `end` (unix
//! seconds), `limit` (traces, default 20) and `spss` (matching spans per trace, default 3).
//! TraceQL (`q`) is not supported yet and is refused, never ignored.
//!
//! The answer is Tempo's `SearchResponse`: 64-bit integers as strings, ids in lowercase hex.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};
use sextant_otlp_proto::json::key_value_json;
use sextant_store::{Condition, MatchedSpan, SearchQuery, SearchResult, TraceHit};

use crate::duration::parse_go_duration;
use crate::error::QueryError;
use crate::logfmt::parse_logfmt;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::QueryState;

/// Traces per answer unless `limit` says otherwise (Tempo's default).
pub const DEFAULT_LIMIT: usize = 20;
/// Matching spans per trace unless `spss` says otherwise (Tempo's default).
pub const DEFAULT_SPANS_PER_SPAN_SET: usize = 3;

/// `GET /api/search`.
pub(crate) async fn search(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) = query?;
    let query = search_query(&params)?;
    let result = blocking(&state, move |reader| reader.search(&query)).await?;
    Ok(Json(search_response(&result)))
}

fn duration_param(
    params: &Params,
    name: &'static str,
) -> Result<Option<std::time::Duration>, QueryError> {
    params::get(params, name)
        .map(|text| {
            parse_go_duration(text).map_err(|source| QueryError::InvalidDuration { name, source })
        })
        .transpose()
}

/// The store query a request's parameters ask for.
pub(crate) fn search_query(params: &Params) -> Result<SearchQuery, QueryError> {
    if params::get(params, "q").is_some() {
        return Err(QueryError::TraceQlUnsupported);
    }
    let conditions = match params::get(params, "tags") {
        None => Vec::new(),
        Some(tags) => parse_logfmt(tags)?
            .into_iter()
            .map(|(key, value)| Condition::equals(key, value))
            .collect(),
    };
    let min_duration = duration_param(params, "minDuration")?;
    let max_duration = duration_param(params, "maxDuration")?;
    if let (Some(min), Some(max)) = (min_duration, max_duration) {
        if min > max {
            return Err(QueryError::InconsistentParams(format!(
                "minDuration ({min:?}) must not exceed maxDuration ({max:?})"
            )));
        }
    }
    Ok(SearchQuery {
        conditions,
        min_duration,
        max_duration,
        window: params::time_window(params)?,
        limit: params::count(params, "limit", DEFAULT_LIMIT)?,
        spans_per_trace: params::count(params, "spss", DEFAULT_SPANS_PER_SPAN_SET)?,
    })
}

fn span_json(span: &MatchedSpan) -> Value {
    json!({
        "spanID": span.span_id.to_hex(),
        "name": span.name,
        "startTimeUnixNano": span.start_ns.to_string(),
        "durationNanos": span.duration_ns.to_string(),
        "attributes": span.attributes.iter().map(key_value_json).collect::<Vec<_>>(),
    })
}

fn trace_json(hit: &TraceHit) -> Value {
    let span_set = json!({
        "spans": hit.matched_spans.iter().map(span_json).collect::<Vec<_>>(),
        "matched": hit.matched,
    });
    json!({
        "traceID": hit.trace_id.to_hex(),
        "rootServiceName": hit.summary.root_service,
        "rootTraceName": hit.summary.root_name,
        "startTimeUnixNano": hit.summary.start_ns.to_string(),
        "durationMs": hit.summary.duration_ns / 1_000_000,
        "spanSets": [span_set.clone()],
        // Deprecated in Tempo, still read by older Grafanas: the first span set.
        "spanSet": span_set,
    })
}

/// Tempo's `SearchResponse` for a store result.
pub(crate) fn search_response(result: &SearchResult) -> Value {
    json!({
        "traces": result.traces.iter().map(trace_json).collect::<Vec<_>>(),
        "metrics": {
            "inspectedTraces": result.inspected_traces,
            "inspectedBytes": result.inspected_bytes.to_string(),
            "completedJobs": 1,
            "totalJobs": 1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_otlp_proto::attr::kv_int;
    use sextant_otlp_proto::{SpanId, TraceId};
    use sextant_store::{Matcher, TraceSummary};
    use std::time::Duration;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_become_a_store_query() {
        let q = search_query(&params(&[
            ("tags", r#"service.name=api name="GET /x""#),
            ("minDuration", "1.5s"),
            ("maxDuration", "1m30s"),
            ("limit", "5"),
            ("spss", "2"),
            ("start", "100"),
            ("end", "200"),
        ]))
        .unwrap();
        assert_eq!(
            q.conditions,
            vec![
                Condition::equals("service.name", "api"),
                Condition::equals("name", "GET /x")
            ]
        );
        assert!(matches!(q.conditions[0].matcher, Matcher::Equals(_)));
        assert_eq!(q.min_duration, Some(Duration::from_millis(1500)));
        assert_eq!(q.max_duration, Some(Duration::from_secs(90)));
        assert_eq!(q.limit, 5);
        assert_eq!(q.spans_per_trace, 2);
        assert_eq!(q.window.start_ns, Some(100_000_000_000));

        let q = search_query(&params(&[])).unwrap();
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(q.spans_per_trace, DEFAULT_SPANS_PER_SPAN_SET);
        assert!(q.conditions.is_empty());
        // An empty q is no query.
        assert!(search_query(&params(&[("q", " ")])).is_ok());
    }

    #[test]
    fn bad_parameters_are_refused() {
        let msg = |p: &[(&str, &str)]| search_query(&params(p)).unwrap_err().to_string();
        assert_eq!(
            msg(&[("q", "{ .a = 1 }")]),
            "TraceQL (q) is not supported yet: use tags=, minDuration=, maxDuration="
        );
        assert!(msg(&[("minDuration", "5")]).starts_with("invalid minDuration: \"5\""));
        assert!(msg(&[("maxDuration", "1d")]).contains("unknown unit \"d\""));
        assert!(msg(&[("tags", "name=\"x")]).starts_with("invalid tags: "));
        assert_eq!(
            msg(&[("minDuration", "2s"), ("maxDuration", "1s")]),
            "minDuration (2s) must not exceed maxDuration (1s)"
        );
        assert!(msg(&[("limit", "many")]).starts_with("invalid limit"));
        assert!(msg(&[("spss", "x")]).starts_with("invalid spss"));
    }

    #[test]
    fn response_shape() {
        let result = SearchResult {
            traces: vec![TraceHit {
                trace_id: TraceId([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
                summary: TraceSummary {
                    root_service: "api".into(),
                    root_name: "GET /".into(),
                    start_ns: 1_700_000_000_123_456_789,
                    duration_ns: 12_345_678,
                    span_count: 2,
                },
                matched_spans: vec![MatchedSpan {
                    span_id: SpanId([0, 0, 0, 0, 0, 0, 0, 1]),
                    name: "GET /".into(),
                    start_ns: 1_700_000_000_123_456_789,
                    duration_ns: 12_345_678,
                    attributes: vec![kv_int("http.status_code", 500)],
                }],
                matched: 4,
            }],
            inspected_traces: 7,
            inspected_bytes: 1234,
        };
        let v = search_response(&result);
        let t = &v["traces"][0];
        assert_eq!(t["traceID"], "000102030405060708090a0b0c0d0e0f");
        assert_eq!(t["rootServiceName"], "api");
        assert_eq!(t["rootTraceName"], "GET /");
        assert_eq!(t["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(t["durationMs"], 12);
        let s = &t["spanSets"][0];
        assert_eq!(s["matched"], 4);
        assert_eq!(s["spans"][0]["spanID"], "0000000000000001");
        assert_eq!(s["spans"][0]["durationNanos"], "12345678");
        assert_eq!(s["spans"][0]["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(
            s["spans"][0]["attributes"][0],
            json!({"key": "http.status_code", "value": {"intValue": "500"}})
        );
        assert_eq!(t["spanSet"], *s);
        assert_eq!(
            v["metrics"],
            json!({"inspectedTraces": 7, "inspectedBytes": "1234", "completedJobs": 1, "totalJobs": 1})
        );
    }
}
