//! TraceQL metrics: `GET /api/metrics/query_range` and `GET /api/metrics/query` (instant).
//!
//! Parameters, as Tempo's:
//! * `q` (or `query`, Grafana's name): a TraceQL metrics query, e.g.
//!   `{ status = error } | rate() by (resource.service.name)` (see [`crate::traceql::metrics`]).
//! * `start`, `end`: unix seconds (10 digits or fewer, fractions allowed) or unix nanoseconds.
//!   `end` defaults to now; `start` to `since` before `end` (or now, if `end` is later).
//! * `since`: a duration (`15m`, `3h`, `7d`), default `1h`, used when `start` is absent.
//! * `step` (range only): seconds (`30`, `0.5`) or a duration (`1m`); default Tempo's: the
//!   range over 240, rounded down to 5 s (or to 1 s below 5 s), at least 1 s.
//!
//! The whole stored retention can be queried: nothing limits `start` to the last hour.
//! The store is scanned over the window with the spanset part's filter pushed down, each
//! matching trace evaluated whole. Answers (64-bit integers as strings, as Tempo's protobuf
//! JSON, zero values omitted): range `{series: [{labels: [{key, value}], samples:
//! [{timestampMs, value}]}], metrics}`, instant `{series: [{labels, value}], metrics}`.
//! Bad input is a 400 naming the parameter; more than [`MAX_SERIES`] series or
//! [`MAX_INTERVALS`] steps too.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Map, Value};
use sextant_otlp_proto::json::any_value_json;
use sextant_otlp_proto::proto::{Resource, Span};
use sextant_otlp_proto::TraceId;
use sextant_store::{ScanStats, TimeWindow};

use crate::duration::parse_go_duration;
use crate::error::QueryError;
use crate::params::{self, Params};
use crate::traceql::metrics::{MetricsError, MetricsEval, MetricsRange, Series};
use crate::traceql::parser::parse_metrics;
use crate::traceql::SpanView;
use crate::QueryState;

/// At most this many series in an answer (Tempo's default `max_response_series`).
pub const MAX_SERIES: usize = 1000;
/// At most this many steps per series (as Prometheus).
pub const MAX_INTERVALS: usize = 11_000;
/// The window when neither `start` nor `since` is given.
pub const DEFAULT_SINCE_NS: u64 = 3_600 * NANOS;

const NANOS: u64 = 1_000_000_000;

/// A parsed metrics request.
#[derive(Debug)]
pub(crate) struct MetricsRequest {
    q: String,
    eval: MetricsEval,
    range: MetricsRange,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A unix time: seconds (at most 10 digits, or with a fraction) or nanoseconds.
fn timestamp(params: &Params, name: &'static str) -> Result<Option<u64>, QueryError> {
    let Some(v) = params::get(params, name) else {
        return Ok(None);
    };
    let bad = || {
        QueryError::param(
            name,
            v,
            "expected a unix time in seconds (like 1700000000 or 1700000000.5) or nanoseconds",
        )
    };
    if v.contains('.') {
        let secs: f64 = v.parse().map_err(|_| bad())?;
        if !secs.is_finite() || secs < 0.0 || secs * 1e9 > u64::MAX as f64 {
            return Err(bad());
        }
        return Ok(Some((secs * 1e9).round() as u64));
    }
    let n: u64 = v.parse().map_err(|_| bad())?;
    if v.len() <= 10 {
        Ok(Some(n.checked_mul(NANOS).ok_or_else(bad)?))
    } else {
        Ok(Some(n))
    }
}

/// A duration as Prometheus writes them (`d`, `w`, `y` too) or Go does (`1h30m`).
fn prom_duration(name: &'static str, v: &str) -> Result<u64, QueryError> {
    let unit = |u: &str| match u {
        "d" => Some(86_400),
        "w" => Some(7 * 86_400),
        "y" => Some(365 * 86_400),
        _ => None,
    };
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if let (Ok(n), Some(secs)) = (v[..split].parse::<u64>(), unit(&v[split..])) {
        return n
            .checked_mul(secs)
            .and_then(|s| s.checked_mul(NANOS))
            .ok_or_else(|| QueryError::param(name, v, "too long"));
    }
    let d = parse_go_duration(v).map_err(|e| {
        QueryError::param(
            name,
            v,
            format!(
                "expected a duration like 30s, 15m, 3h or 7d ({})",
                e.problem
            ),
        )
    })?;
    u64::try_from(d.as_nanos()).map_err(|_| QueryError::param(name, v, "too long"))
}

/// `step`: seconds (`30`, `0.5`) or a duration (`1m`).
fn step_param(params: &Params) -> Result<Option<u64>, QueryError> {
    let Some(v) = params::get(params, "step") else {
        return Ok(None);
    };
    let ns = if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs * 1e9 > u64::MAX as f64 {
            return Err(QueryError::param("step", v, "too long"));
        }
        if secs <= 0.0 {
            0
        } else {
            (secs * 1e9).round() as u64
        }
    } else {
        parse_go_duration(v)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok())
            .ok_or_else(|| {
                QueryError::param(
                    "step",
                    v,
                    "expected seconds (like 30) or a duration (like 30s or 1m)",
                )
            })?
    };
    if ns == 0 {
        return Err(QueryError::param("step", v, "the step must be positive"));
    }
    Ok(Some(ns))
}

/// Tempo's default step: the range over 240, rounded down to 5 s (to 1 s below 5 s), >= 1 s.
pub fn default_step(start_ns: u64, end_ns: u64) -> u64 {
    let baseline = end_ns.saturating_sub(start_ns) / 240;
    let five = 5 * NANOS;
    let mut interval = baseline / five * five;
    if interval < five {
        interval = baseline / NANOS * NANOS;
    }
    interval.max(NANOS)
}

/// `start` and `end` in unix nanoseconds, defaults applied.
fn bounds(params: &Params, now: u64) -> Result<(u64, u64), QueryError> {
    let since = match params::get(params, "since") {
        Some(v) => prom_duration("since", v)?,
        None => DEFAULT_SINCE_NS,
    };
    let end = timestamp(params, "end")?.unwrap_or(now);
    let start = match timestamp(params, "start")? {
        Some(s) => s,
        None => end.min(now).saturating_sub(since),
    };
    if end <= start {
        return Err(QueryError::InconsistentParams(format!(
            "end ({end} ns) must be after start ({start} ns)"
        )));
    }
    Ok((start, end))
}

/// The request a query string asks for; `instant` for `/api/metrics/query`.
pub(crate) fn metrics_request(
    params: &Params,
    instant: bool,
    now: u64,
) -> Result<MetricsRequest, QueryError> {
    let q = params::get(params, "q")
        .or_else(|| params::get(params, "query"))
        .ok_or_else(|| {
            QueryError::param(
                "q",
                "",
                "a TraceQL metrics query is required, e.g. \"{ } | rate() by (resource.service.name)\"",
            )
        })?
        .to_string();
    let query =
        parse_metrics(&q).map_err(|e| QueryError::param("q", &q, format!("TraceQL {e}")))?;
    let (start, end) = bounds(params, now)?;
    let range = if instant {
        MetricsRange::instant(start, end)
    } else {
        let step = match step_param(params)? {
            Some(s) => s,
            None => default_step(start, end),
        };
        let range = MetricsRange::range(start, end, step);
        if range.intervals() > MAX_INTERVALS {
            let v = params::get(params, "step").unwrap_or("(default)");
            return Err(QueryError::param(
                "step",
                v,
                format!(
                    "the range would have {} steps, more than {MAX_INTERVALS}: use a larger step",
                    range.intervals()
                ),
            ));
        }
        range
    };
    Ok(MetricsRequest {
        eval: MetricsEval::new(query, range, MAX_SERIES),
        q,
        range,
    })
}

/// What a scan produced.
#[derive(Debug)]
pub(crate) struct MetricsOutcome {
    eval: MetricsEval,
    stats: ScanStats,
    error: Option<MetricsError>,
}

/// Scans the window with the spanset filter pushed down, observing every matching trace.
fn run(
    reader: &dyn sextant_store::TraceReader,
    mut eval: MetricsEval,
    range: MetricsRange,
) -> Result<MetricsOutcome, sextant_store::StoreError> {
    let pushed = eval.prefilter().cloned();
    let prefilter = |span: &Span, resource: Option<&Resource>| {
        pushed
            .as_ref()
            .is_none_or(|f| f.matches_span(span, resource))
    };
    let mut error = None;
    let window = TimeWindow {
        start_ns: Some(range.start_ns),
        end_ns: Some(range.end_ns),
    };
    let terms = pushed
        .as_ref()
        .map(|f| f.required_terms())
        .unwrap_or_default();
    let stats = if eval.span_local() {
        // One span at a time: no trace is assembled, and what no field reads is skipped.
        let fields = eval.span_fields();
        let mut visit = |_: &TraceId, span: &Span, resource: Option<&Resource>| match eval
            .observe_span(&SpanView::new(span, resource))
        {
            Ok(()) => true,
            Err(e) => {
                error = Some(e);
                false
            }
        };
        reader.scan_spans(window, &terms, fields, &mut visit)?
    } else {
        let mut visit = |id, spans: &[_]| match eval.observe(id, spans) {
            Ok(()) => true,
            Err(e) => {
                error = Some(e);
                false
            }
        };
        reader.scan_terms(window, &terms, &prefilter, &mut visit)?
    };
    Ok(MetricsOutcome { eval, stats, error })
}

async fn execute(
    state: &QueryState,
    request: MetricsRequest,
) -> Result<MetricsOutcome, QueryError> {
    let MetricsRequest { q, eval, range } = request;
    let reader = std::sync::Arc::clone(&state.reader);
    let outcome = tokio::task::spawn_blocking(move || run(reader.as_ref(), eval, range)).await??;
    if let Some(e) = &outcome.error {
        return Err(QueryError::param("q", &q, e.to_string()));
    }
    tracing::debug!(
        query = %q,
        series = outcome.eval.series_count(),
        spans = outcome.eval.spans_counted(),
        inspected_traces = outcome.stats.inspected_traces,
        "metrics query done"
    );
    Ok(outcome)
}

fn labels_json(series: &Series) -> Vec<Value> {
    series
        .labels
        .iter()
        .map(|l| json!({"key": l.key, "value": any_value_json(&l.value)}))
        .collect()
}

/// Inserts a number unless it is zero: Tempo writes these messages with jsonpb, which omits
/// zero values (a sample of value 0 is `{"timestampMs": "..."}`).
fn put_nonzero(o: &mut Map<String, Value>, key: &str, value: f64) {
    if value != 0.0 {
        o.insert(key.to_string(), json!(value));
    }
}

/// Inserts a 64-bit counter as a string (jsonpb), unless it is zero.
fn put_u64(o: &mut Map<String, Value>, key: &str, value: u64) {
    if value != 0 {
        o.insert(key.to_string(), json!(value.to_string()));
    }
}

/// Tempo's `SearchMetrics`, zero values omitted.
fn metrics_json(outcome: &MetricsOutcome) -> Value {
    let mut o = Map::new();
    if outcome.stats.inspected_traces != 0 {
        o.insert(
            "inspectedTraces".into(),
            json!(outcome.stats.inspected_traces),
        );
    }
    put_u64(&mut o, "inspectedBytes", outcome.stats.inspected_bytes);
    put_u64(&mut o, "inspectedSpans", outcome.stats.inspected_spans);
    o.insert("completedJobs".into(), json!(1));
    o.insert("totalJobs".into(), json!(1));
    Value::Object(o)
}

/// Tempo's `QueryRangeResponse`: `series` of `TimeSeries` (`labels`, `samples` of `Sample`
/// with `timestampMs` as a string and `value` omitted when zero) and `metrics`.
pub(crate) fn range_response(outcome: &MetricsOutcome) -> Value {
    let series: Vec<Value> = outcome
        .eval
        .finish()
        .iter()
        .map(|s| {
            let samples: Vec<Value> = s
                .samples
                .iter()
                .map(|(ts, v)| {
                    let mut sample = Map::new();
                    sample.insert("timestampMs".into(), json!(ts.to_string()));
                    put_nonzero(&mut sample, "value", *v);
                    Value::Object(sample)
                })
                .collect();
            json!({ "labels": labels_json(s), "samples": samples })
        })
        .collect();
    json!({"series": series, "metrics": metrics_json(outcome)})
}

/// Tempo's `QueryInstantResponse`: `series` of `InstantSeries` (`labels`, `value` omitted
/// when zero) and `metrics`.
pub(crate) fn instant_response(outcome: &MetricsOutcome) -> Value {
    let series: Vec<Value> = outcome
        .eval
        .finish()
        .iter()
        .filter_map(|s| {
            let (_, value) = s.samples.first()?;
            let mut o = Map::new();
            o.insert("labels".into(), Value::Array(labels_json(s)));
            put_nonzero(&mut o, "value", *value);
            Some(Value::Object(o))
        })
        .collect();
    json!({"series": series, "metrics": metrics_json(outcome)})
}

/// `GET /api/metrics/query_range`.
pub(crate) async fn query_range(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) = query?;
    let request = metrics_request(&params, false, now_ns())?;
    let outcome = execute(&state, request).await?;
    Ok(Json(range_response(&outcome)))
}

/// `GET /api/metrics/query`.
pub(crate) async fn query_instant(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) = query?;
    let request = metrics_request(&params, true, now_ns())?;
    let outcome = execute(&state, request).await?;
    Ok(Json(instant_response(&outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        metrics_request(&params(pairs), false, 10_000 * NANOS)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parameters() {
        let now = 10_000 * NANOS;
        let r = metrics_request(&params(&[("q", "{ } | rate()")]), false, now).unwrap();
        assert_eq!(r.range.start_ns, now - 3_600 * NANOS);
        assert_eq!(r.range.end_ns, now);
        assert_eq!(r.range.step_ns, 15 * NANOS, "an hour over 240");
        let r = metrics_request(
            &params(&[
                ("query", "{ } | rate()"),
                ("start", "1000"),
                ("end", "2000000000000"),
                ("step", "1m"),
            ]),
            false,
            now,
        )
        .unwrap();
        assert_eq!(
            (r.range.start_ns, r.range.end_ns, r.range.step_ns),
            (1_000 * NANOS, 2_000 * NANOS, 60 * NANOS)
        );
        let r = metrics_request(
            &params(&[("q", "{ } | rate()"), ("since", "2d"), ("step", "60.5")]),
            false,
            200_000 * NANOS,
        )
        .unwrap();
        assert_eq!(r.range.start_ns, (200_000 - 172_800) * NANOS);
        assert_eq!(r.range.step_ns, 60 * NANOS + NANOS / 2);
        assert_eq!(default_step(0, 10 * NANOS), NANOS);
        assert_eq!(default_step(0, 2 * 3_600 * NANOS), 30 * NANOS);
        assert_eq!(default_step(0, 1_000 * NANOS), 4 * NANOS);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        assert!(err(&[]).starts_with(r#"invalid q "": a TraceQL metrics query is required"#));
        assert!(
            err(&[("q", "{ }")]).starts_with(r#"invalid q "{ }": TraceQL column 4: expected "|""#),
            "{}",
            err(&[("q", "{ }")])
        );
        assert!(err(&[("q", "{ } | rate()"), ("step", "x")]).starts_with(r#"invalid step "x""#));
        assert!(err(&[("q", "{ } | rate()"), ("step", "0")]).contains("must be positive"));
        assert!(err(&[("q", "{ } | rate()"), ("start", "soon")]).starts_with("invalid start"));
        assert!(err(&[("q", "{ } | rate()"), ("since", "1q")]).starts_with("invalid since"));
        assert!(
            err(&[("q", "{ } | rate()"), ("start", "9000"), ("end", "8000")])
                .contains("must be after start")
        );
        assert!(
            err(&[("q", "{ } | rate()"), ("since", "1y"), ("step", "0.5")])
                .contains("more than 11000")
        );
    }
}
