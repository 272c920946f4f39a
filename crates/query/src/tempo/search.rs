//! `GET /api/search`: traces by TraceQL, or by tags, duration and time range.
//!
//! Parameters (as Tempo's): `q` (a TraceQL query, see [`crate::traceql`]), `tags` (logfmt,
//! `service.name=api name="GET /x"`, each pair an unscoped equality), `minDuration` and
//! `maxDuration` (Go durations), `start` and `end` (unix seconds), `limit` (traces, default
//! 20) and `spss` (matching spans per trace, default 3; with `q`, spans per spanset).
//!
//! With `q`, `minDuration` and `maxDuration` are ANDed into every spanset filter as span
//! duration conditions (as Tempo does), and `tags` is refused (put the conditions in `q`).
//! A query that does not parse is answered 400 with the column and what was expected.
//!
//! The answer is Tempo's `SearchResponse`: 64-bit integers as strings, ids in lowercase hex.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Map, Value};
use sextant_otlp_proto::json::key_value_json;
use sextant_otlp_proto::proto::{Resource, ResourceSpans, Span};
use sextant_otlp_proto::TraceId;
use sextant_store::{
    Condition, MatchedSpan, SearchQuery, SearchResult, StoreError, TimeWindow, TraceHit,
    TraceReader,
};

use crate::duration::parse_go_duration;
use crate::error::QueryError;
use crate::logfmt::parse_logfmt;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::traceql::{self, TraceResult};
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
    if let Some(q) = params::get(&params, "q") {
        let request = traceql_request(&params, q)?;
        let result = blocking(&state, move |reader| run_traceql(reader, &request)).await?;
        return Ok(Json(traceql_response(&result)));
    }
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

/// `minDuration` and `maxDuration`, refused when the first exceeds the second.
fn duration_bounds(
    params: &Params,
) -> Result<(Option<std::time::Duration>, Option<std::time::Duration>), QueryError> {
    let min_duration = duration_param(params, "minDuration")?;
    let max_duration = duration_param(params, "maxDuration")?;
    if let (Some(min), Some(max)) = (min_duration, max_duration) {
        if min > max {
            return Err(QueryError::InconsistentParams(format!(
                "minDuration ({min:?}) must not exceed maxDuration ({max:?})"
            )));
        }
    }
    Ok((min_duration, max_duration))
}

/// A TraceQL search, ready to run.
#[derive(Debug)]
pub(crate) struct TraceQlRequest {
    query: traceql::Query,
    window: TimeWindow,
    limit: usize,
    spans_per_set: usize,
}

/// The TraceQL search a request with `q` asks for.
pub(crate) fn traceql_request(params: &Params, q: &str) -> Result<TraceQlRequest, QueryError> {
    if params::get(params, "tags").is_some() {
        return Err(QueryError::InconsistentParams(
            "tags and q cannot be combined: put the conditions in the TraceQL query (q)".into(),
        ));
    }
    let query = traceql::parse(q).map_err(|e| QueryError::param("q", q, format!("TraceQL {e}")))?;
    let (min, max) = duration_bounds(params)?;
    let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Ok(TraceQlRequest {
        query: query.with_span_duration_bounds(min.map(nanos), max.map(nanos)),
        window: params::time_window(params)?,
        limit: params::count(params, "limit", DEFAULT_LIMIT)?,
        spans_per_set: params::count(params, "spss", DEFAULT_SPANS_PER_SPAN_SET)?,
    })
}

/// What a TraceQL search found.
#[derive(Debug, Default)]
pub(crate) struct TraceQlResult {
    /// Each matching trace, with its service stats.
    traces: Vec<(TraceResult, ServiceStats)>,
    inspected_traces: u64,
    inspected_bytes: u64,
}

/// Spans and error spans per service of a whole trace (Tempo's `serviceStats`).
type ServiceStats = BTreeMap<String, (u64, u64)>;

fn service_stats(trace: &[ResourceSpans]) -> ServiceStats {
    let mut stats = ServiceStats::new();
    for rs in trace {
        let service = sextant_otlp_proto::attr::service_name(rs.resource.as_ref());
        let spans = rs.scope_spans.iter().flat_map(|ss| &ss.spans);
        let (count, errors) = spans.fold((0, 0), |(n, e), span| {
            let error = span.status.as_ref().is_some_and(|st| st.code == 2);
            (n + 1, e + u64::from(error))
        });
        let entry = stats.entry(service.to_string()).or_default();
        entry.0 += count;
        entry.1 += errors;
    }
    stats
}

/// Scans the store with the query's pushed-down filter and evaluates it on each whole trace,
/// until `limit` traces matched. Newest traces first.
pub(crate) fn run_traceql(
    reader: &dyn TraceReader,
    request: &TraceQlRequest,
) -> Result<TraceQlResult, StoreError> {
    let pushed = request.query.prefilter();
    let prefilter = |span: &Span, resource: Option<&Resource>| {
        pushed.is_none_or(|f| f.matches_span(span, resource))
    };
    let limit = request.limit.max(1);
    let mut traces = Vec::new();
    let mut visit = |id, spans: &[ResourceSpans]| {
        if let Some(hit) = traceql::evaluate(&request.query, id, spans, request.spans_per_set) {
            traces.push((hit, service_stats(spans)));
        }
        traces.len() < limit
    };
    let terms = pushed.map(|f| f.required_terms()).unwrap_or_default();
    let stats = reader.scan_terms(request.window, &terms, &prefilter, &mut visit)?;
    traces.sort_by_key(|(t, _)| std::cmp::Reverse(t.summary.start_ns));
    Ok(TraceQlResult {
        traces,
        inspected_traces: stats.inspected_traces,
        inspected_bytes: stats.inspected_bytes,
    })
}

fn traceql_trace_json((hit, services): &(TraceResult, ServiceStats)) -> Value {
    let span_sets: Vec<Value> = hit
        .span_sets
        .iter()
        .map(|set| {
            let attributes: Vec<Value> = set.attributes.iter().map(key_value_json).collect();
            span_set_json(
                set.spans.iter().map(span_json).collect(),
                set.matched,
                attributes,
            )
        })
        .collect();
    let mut v = trace_metadata_json(
        hit.trace_id,
        &hit.summary.root_service,
        &hit.summary.root_name,
        hit.summary.start_ns,
        hit.summary.duration_ns,
        span_sets,
    );
    // Tempo's `map<string, ServiceStats>`: `spanCount`, `errorCount` (uint32, 0 omitted).
    let stats: Map<String, Value> = services
        .iter()
        .map(|(service, (spans, errors))| {
            let mut o = Map::new();
            put(&mut o, "spanCount", json!(spans));
            put(&mut o, "errorCount", json!(errors));
            (service.clone(), Value::Object(o))
        })
        .collect();
    if !stats.is_empty() {
        v["serviceStats"] = Value::Object(stats);
    }
    v
}

/// Tempo's trace id in search results: lowercase hex without leading zeros (Tempo's
/// `util.TraceIDToHexString`), so a 64-bit id is at most 16 characters.
pub(crate) fn search_trace_id(id: TraceId) -> String {
    id.to_hex().trim_start_matches('0').to_string()
}

/// Inserts `value` under `key` unless it is Tempo's (jsonpb's) omitted zero value: an empty
/// string or array, `0`, or the 64-bit zero `"0"`.
fn put(o: &mut Map<String, Value>, key: &str, value: Value) {
    let zero = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty() || s == "0",
        Value::Array(a) => a.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Object(_) => false,
    };
    if !zero {
        o.insert(key.to_string(), value);
    }
}

/// Tempo's `SpanSet`: `spans`, `matched` (uint32) and `attributes`, zero values omitted.
fn span_set_json(spans: Vec<Value>, matched: usize, attributes: Vec<Value>) -> Value {
    let mut o = Map::new();
    put(&mut o, "spans", Value::Array(spans));
    put(&mut o, "matched", json!(matched));
    put(&mut o, "attributes", Value::Array(attributes));
    Value::Object(o)
}

/// Tempo's `TraceSearchMetadata`, zero values omitted; `spanSet` (deprecated, still read by
/// older Grafanas) is the first span set, as Tempo's combiner sets it.
fn trace_metadata_json(
    id: TraceId,
    root_service: &str,
    root_name: &str,
    start_ns: u64,
    duration_ns: u64,
    span_sets: Vec<Value>,
) -> Value {
    let mut o = Map::new();
    put(&mut o, "traceID", json!(search_trace_id(id)));
    put(&mut o, "rootServiceName", json!(root_service));
    put(&mut o, "rootTraceName", json!(root_name));
    put(&mut o, "startTimeUnixNano", json!(start_ns.to_string()));
    put(&mut o, "durationMs", json!(duration_ns / 1_000_000));
    if let Some(first) = span_sets.first() {
        o.insert("spanSet".into(), first.clone());
    }
    put(&mut o, "spanSets", Value::Array(span_sets));
    Value::Object(o)
}

/// Tempo's `SearchMetrics`, zero values omitted (64-bit counters as strings).
fn search_metrics_json(inspected_traces: u64, inspected_bytes: u64) -> Value {
    let mut o = Map::new();
    put(&mut o, "inspectedTraces", json!(inspected_traces));
    put(&mut o, "inspectedBytes", json!(inspected_bytes.to_string()));
    put(&mut o, "completedJobs", json!(1));
    put(&mut o, "totalJobs", json!(1));
    Value::Object(o)
}

/// Tempo's `SearchResponse` for a TraceQL result.
fn traceql_response(result: &TraceQlResult) -> Value {
    json!({
        "traces": result.traces.iter().map(traceql_trace_json).collect::<Vec<_>>(),
        "metrics": search_metrics_json(result.inspected_traces, result.inspected_bytes),
    })
}

/// The store query a request's parameters ask for (a request without `q`).
pub(crate) fn search_query(params: &Params) -> Result<SearchQuery, QueryError> {
    let conditions = match params::get(params, "tags") {
        None => Vec::new(),
        Some(tags) => parse_logfmt(tags)?
            .into_iter()
            .map(|(key, value)| Condition::equals(key, value))
            .collect(),
    };
    let (min_duration, max_duration) = duration_bounds(params)?;
    Ok(SearchQuery {
        conditions,
        min_duration,
        max_duration,
        window: params::time_window(params)?,
        limit: params::count(params, "limit", DEFAULT_LIMIT)?,
        spans_per_trace: params::count(params, "spss", DEFAULT_SPANS_PER_SPAN_SET)?,
    })
}

/// Tempo's search `Span`: `spanID` (16 hex digits), `name`, `startTimeUnixNano` and
/// `durationNanos` (64-bit, strings) and `attributes`, zero values omitted.
fn span_json(span: &MatchedSpan) -> Value {
    let mut o = Map::new();
    put(&mut o, "spanID", json!(span.span_id.to_hex()));
    put(&mut o, "name", json!(span.name));
    put(
        &mut o,
        "startTimeUnixNano",
        json!(span.start_ns.to_string()),
    );
    put(&mut o, "durationNanos", json!(span.duration_ns.to_string()));
    put(
        &mut o,
        "attributes",
        span.attributes.iter().map(key_value_json).collect(),
    );
    Value::Object(o)
}

fn trace_json(hit: &TraceHit) -> Value {
    let span_set = span_set_json(
        hit.matched_spans.iter().map(span_json).collect(),
        hit.matched,
        Vec::new(),
    );
    trace_metadata_json(
        hit.trace_id,
        &hit.summary.root_service,
        &hit.summary.root_name,
        hit.summary.start_ns,
        hit.summary.duration_ns,
        vec![span_set],
    )
}

/// Tempo's `SearchResponse` for a store result.
pub(crate) fn search_response(result: &SearchResult) -> Value {
    json!({
        "traces": result.traces.iter().map(trace_json).collect::<Vec<_>>(),
        "metrics": search_metrics_json(result.inspected_traces, result.inspected_bytes),
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
        let tql = |p: &[(&str, &str)]| {
            let q = params::get(&params(p), "q").unwrap_or_default().to_string();
            traceql_request(&params(p), &q).unwrap_err().to_string()
        };
        assert_eq!(
            tql(&[("q", "{ .a = }")]),
            r#"invalid q "{ .a = }": TraceQL column 8: expected a value after "=", found "}""#
        );
        assert_eq!(
            tql(&[("q", "{ }"), ("tags", "a=b")]),
            "tags and q cannot be combined: put the conditions in the TraceQL query (q)"
        );
        assert_eq!(
            tql(&[("q", "{ }"), ("minDuration", "2s"), ("maxDuration", "1s")]),
            "minDuration (2s) must not exceed maxDuration (1s)"
        );
        assert!(tql(&[("q", "{ }"), ("limit", "x")]).starts_with("invalid limit"));
        let r = traceql_request(
            &params(&[("q", "{ }"), ("minDuration", "1ms"), ("spss", "7")]),
            "{ }",
        )
        .unwrap();
        assert_eq!(r.query, traceql::parse("{ duration >= 1ms }").unwrap());
        assert_eq!(r.spans_per_set, 7);
        assert_eq!(r.limit, DEFAULT_LIMIT);
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
        // Leading zeros trimmed, as Tempo writes search trace ids.
        assert_eq!(t["traceID"], "102030405060708090a0b0c0d0e0f");
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

#[cfg(test)]
mod traceql_scan_tests {
    use super::*;
    use sextant_otlp_proto::attr::kv_str;
    use sextant_otlp_proto::proto::ScopeSpans;
    use sextant_otlp_proto::TraceId;
    use sextant_store::{ScanStats, SpanFilter, StoreStats, TagScope, TagValue, TraceVisit};
    use std::sync::Mutex;

    /// A reader whose scan offers its traces in order, recording what the prefilter let in.
    struct Fake {
        traces: Vec<(TraceId, Vec<ResourceSpans>)>,
        visited: Mutex<Vec<TraceId>>,
    }

    impl TraceReader for Fake {
        fn trace(
            &self,
            _: TraceId,
            _: TimeWindow,
        ) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
            Ok(None)
        }

        fn scan_terms(
            &self,
            _: TimeWindow,
            _: &[sextant_store::Term],
            prefilter: &SpanFilter<'_>,
            visit: &mut TraceVisit<'_>,
        ) -> Result<ScanStats, StoreError> {
            let mut stats = ScanStats::default();
            for (id, trace) in &self.traces {
                stats.inspected_traces += 1;
                let passes = trace.iter().any(|rs| {
                    rs.scope_spans
                        .iter()
                        .flat_map(|ss| &ss.spans)
                        .any(|s| prefilter(s, rs.resource.as_ref()))
                });
                if !passes {
                    continue;
                }
                self.visited
                    .lock()
                    .map_err(|_| StoreError::Closed)?
                    .push(*id);
                if !visit(*id, trace) {
                    break;
                }
            }
            Ok(stats)
        }

        fn search(&self, _: &SearchQuery) -> Result<SearchResult, StoreError> {
            Ok(SearchResult::default())
        }

        fn tag_names(&self, _: Option<TagScope>) -> Result<Vec<(TagScope, String)>, StoreError> {
            Ok(Vec::new())
        }

        fn tag_values(&self, _: Option<TagScope>, _: &str) -> Result<Vec<TagValue>, StoreError> {
            Ok(Vec::new())
        }

        fn stats(&self) -> StoreStats {
            StoreStats::default()
        }
    }

    fn trace(n: u8, service: &str, start: u64) -> (TraceId, Vec<ResourceSpans>) {
        let id = TraceId([n; 16]);
        let span = Span {
            trace_id: id.0.to_vec(),
            span_id: vec![n; 8],
            name: format!("op{n}"),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            ..Default::default()
        };
        let rs = ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        };
        (id, vec![rs])
    }

    fn fake() -> Fake {
        Fake {
            traces: vec![
                trace(1, "api", 300),
                trace(2, "web", 200),
                trace(3, "api", 100),
                trace(4, "api", 50),
            ],
            visited: Mutex::new(Vec::new()),
        }
    }

    fn request(q: &str, extra: &[(&str, &str)]) -> TraceQlRequest {
        let mut p: Params = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.insert("q".into(), q.into());
        traceql_request(&p, q).unwrap()
    }

    #[test]
    fn the_filter_is_pushed_down_and_limit_stops_the_scan() {
        let reader = fake();
        let r = run_traceql(
            &reader,
            &request(r#"{ resource.service.name = "api" }"#, &[("limit", "2")]),
        )
        .unwrap();
        let ids: Vec<TraceId> = r.traces.iter().map(|(t, _)| t.trace_id).collect();
        assert_eq!(ids, vec![TraceId([1; 16]), TraceId([3; 16])]);
        // Trace 2 never reached the evaluator; trace 4 was never read (limit reached).
        assert_eq!(
            *reader.visited.lock().unwrap(),
            vec![TraceId([1; 16]), TraceId([3; 16])]
        );
        assert_eq!(r.inspected_traces, 3);

        // `||` cannot be pushed down: every trace is offered.
        let reader = fake();
        let r = run_traceql(
            &reader,
            &request(r#"{ name = "op2" } || { name = "op4" }"#, &[]),
        )
        .unwrap();
        assert_eq!(r.traces.len(), 2);
        assert_eq!(reader.visited.lock().unwrap().len(), 4);
    }
}
