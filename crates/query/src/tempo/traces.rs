//! Trace by id: `GET /api/traces/{id}` and `GET /api/v2/traces/{id}`.
//!
//! Both take optional `start` and `end` (unix seconds) to bound the lookup. The answer is
//! OTLP/JSON (hex ids, 64-bit integers as strings), or protobuf when the request says
//! `Accept: application/protobuf`:
//! * v1: `{"batches": [ResourceSpans...]}`; protobuf is Tempo's `tempopb.Trace`, whose only
//!   field is `repeated ResourceSpans batches = 1`, wire-identical to OTLP `TracesData`.
//! * v2: `{"trace": {"resourceSpans": [...]}}`; protobuf is Tempo's `TraceByIDResponse`, whose
//!   field 1 is the `Trace`, 3 the partial status and 4 its message (metrics are left out).
//!
//! v2 also takes Tempo's trace filter: `q`, a single TraceQL spanset filter
//! (`{ span.http.status_code = 500 }`), returns only the matching spans, with
//! `"status": "PARTIAL"` and a `message` when spans were dropped (an empty or blank `q` is no
//! filter). Pipelines, spanset operators and
//! trace-level intrinsics (`trace:id`, `trace:duration`, `trace:rootName`, `trace:rootService`,
//! the nested-set numbers) are refused with a 400. With `q`:
//! * `keep_hierarchy` (bool): also keep each matched span's ancestors, up to `ancestor_depth`
//!   levels (`-1`, the default: up to the root; `0`: none; read only with `keep_hierarchy`);
//! * `match_depth` (int, default `0`): keep this many levels of descendants under each matched
//!   span (`-1`: the whole subtree). Depths below `-1` are refused.
//!
//! A trace with no matching span is still found: its answer has no spans and is `PARTIAL`.

use std::collections::{HashMap, HashSet, VecDeque};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prost::Message;
use serde_json::{json, Value};
use sextant_otlp_proto::json::encode_resource_spans;
use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans, TracesData};
use sextant_otlp_proto::{SpanId, TraceId};

use crate::error::QueryError;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::traceql::{self, Comparison, Field, FilterExpr, Intrinsic, SpansetExpr};
use crate::QueryState;

/// The content type of protobuf answers.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

/// Tempo's `tempopb.TraceByIDResponse`, as far as we fill it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    /// The trace (`tempopb.Trace`, wire-identical to `TracesData`).
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TracesData>,
    /// Tempo's `PartialStatus`: [`STATUS_COMPLETE`] or [`STATUS_PARTIAL`].
    #[prost(int32, tag = "3")]
    pub status: i32,
    /// Why the trace is partial.
    #[prost(string, tag = "4")]
    pub message: String,
}

/// `PartialStatus.COMPLETE`: the whole trace.
pub const STATUS_COMPLETE: i32 = 0;
/// `PartialStatus.PARTIAL`: a subset of the trace (here: filtered by `q`).
pub const STATUS_PARTIAL: i32 = 1;
/// The message of a trace that `q` filtered, as Tempo words it.
pub const FILTERED_MESSAGE: &str =
    "Trace filtered, only a subset of spans matching the filter is returned";

/// Whether the client asked for protobuf.
fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|range| range.split(';').next())
        .map(str::trim)
        .any(|media| {
            media.eq_ignore_ascii_case(PROTOBUF_CONTENT_TYPE)
                || media.eq_ignore_ascii_case("application/x-protobuf")
        })
}

fn protobuf(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, PROTOBUF_CONTENT_TYPE)], bytes).into_response()
}

/// Parses the request and fetches the trace; `TraceNotFound` when no span is stored.
async fn fetch(
    state: &QueryState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Vec<ResourceSpans>, QueryError> {
    let Path(id) = path?;
    let Query(params) = query?;
    let id = TraceId::parse_hex(&id)?;
    let window = params::time_window(&params)?;
    blocking(state, move |reader| reader.trace(id, window))
        .await?
        .filter(|batches| !batches.is_empty())
        .ok_or(QueryError::TraceNotFound)
}

/// `GET /api/traces/{id}`.
pub(crate) async fn trace_v1(
    State(state): State<QueryState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, QueryError> {
    let batches = fetch(&state, path, query).await?;
    if wants_protobuf(&headers) {
        let trace = TracesData {
            resource_spans: batches,
        };
        return Ok(protobuf(trace.encode_to_vec()));
    }
    let mut doc = encode_resource_spans(&batches);
    let batches = doc
        .get_mut("resourceSpans")
        .map(Value::take)
        .unwrap_or_else(|| Value::Array(Vec::new()));
    Ok(Json(json!({ "batches": batches })).into_response())
}

/// The v2 trace filter: `q` and the depths that go with it.
#[derive(Debug)]
pub(crate) struct TraceFilter {
    query: traceql::Query,
    /// Ancestor levels to keep above each matched span (`None`: none; `Some(-1)`: all).
    ancestor_depth: Option<i64>,
    /// Descendant levels to keep below each matched span (`-1`: all).
    match_depth: i64,
}

/// Go's `strconv.ParseBool`, which Tempo reads `keep_hierarchy` with.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn depth_param(params: &Params, name: &'static str, default: i64) -> Result<i64, QueryError> {
    let Some(text) = params::get(params, name) else {
        return Ok(default);
    };
    match text.parse::<i64>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(QueryError::param(
            name,
            text,
            "expected -1 (no limit) or a non-negative number of levels",
        )),
    }
}

/// A trace-level field the per-span trace filter cannot evaluate, if the filter uses one.
fn trace_level_field(f: &FilterExpr) -> Option<Intrinsic> {
    match f {
        FilterExpr::True => None,
        FilterExpr::And(a, b) | FilterExpr::Or(a, b) => {
            trace_level_field(a).or_else(|| trace_level_field(b))
        }
        FilterExpr::Compare(Comparison {
            field: Field::Intrinsic(i),
            ..
        }) => matches!(
            i,
            Intrinsic::TraceDuration
                | Intrinsic::RootName
                | Intrinsic::RootService
                | Intrinsic::TraceId
                | Intrinsic::NestedSetLeft
                | Intrinsic::NestedSetRight
                | Intrinsic::NestedSetParent
        )
        .then_some(*i),
        FilterExpr::Compare(_) => None,
    }
}

/// The trace filter a v2 request asks for; `None` without `q`. The depth parameters are read
/// only with `q` (and `ancestor_depth` only with `keep_hierarchy`), as Tempo reads them.
pub(crate) fn trace_filter(params: &Params) -> Result<Option<TraceFilter>, QueryError> {
    let Some(q) = params::get(params, "q") else {
        return Ok(None);
    };
    let query = traceql::parse(q).map_err(|e| QueryError::param("q", q, format!("TraceQL {e}")))?;
    let SpansetExpr::Filter(filter) = &query.root else {
        return Err(QueryError::param(
            "q",
            q,
            "only a single spanset filter { ... } is supported on trace by id \
             (no pipelines or spanset operators)",
        ));
    };
    if let Some(i) = trace_level_field(filter) {
        return Err(QueryError::param(
            "q",
            q,
            format!(
                "{} is not supported on trace by id: the filter is evaluated span by span",
                i.as_str()
            ),
        ));
    }
    let keep_hierarchy = match params::get(params, "keep_hierarchy") {
        None => false,
        Some(text) => go_bool(text)
            .ok_or_else(|| QueryError::param("keep_hierarchy", text, "expected true or false"))?,
    };
    let match_depth = depth_param(params, "match_depth", 0)?;
    let ancestor_depth = if keep_hierarchy {
        Some(depth_param(params, "ancestor_depth", -1)?)
    } else {
        None
    };
    Ok(Some(TraceFilter {
        query,
        ancestor_depth,
        match_depth,
    }))
}

/// Every span id reachable from `seeds` within `depth` hops (`-1`: any number) of `edges`.
fn walk(
    edges: &HashMap<SpanId, Vec<SpanId>>,
    seeds: &HashSet<SpanId>,
    depth: i64,
) -> HashSet<SpanId> {
    let mut reached = HashSet::new();
    if depth == 0 {
        return reached;
    }
    let mut queue: VecDeque<(SpanId, i64)> = seeds.iter().map(|id| (*id, 0)).collect();
    while let Some((id, hops)) = queue.pop_front() {
        for next in edges.get(&id).into_iter().flatten() {
            if depth >= 0 && hops + 1 > depth {
                continue;
            }
            if reached.insert(*next) {
                queue.push_back((*next, hops + 1));
            }
        }
    }
    reached
}

/// Applies the filter: the trace with only the kept spans (grouping kept, empty groups
/// dropped), and whether any span was dropped.
pub(crate) fn apply_filter(
    filter: &TraceFilter,
    id: TraceId,
    batches: Vec<ResourceSpans>,
) -> (Vec<ResourceSpans>, bool) {
    let span_id = |bytes: &[u8]| SpanId::from_slice(bytes).ok();
    let matched: HashSet<SpanId> = traceql::evaluate(&filter.query, id, &batches, usize::MAX)
        .map(|hit| {
            hit.span_sets
                .iter()
                .flat_map(|set| &set.spans)
                .map(|s| s.span_id)
                .collect()
        })
        .unwrap_or_default();
    let mut parents: HashMap<SpanId, Vec<SpanId>> = HashMap::new();
    let mut children: HashMap<SpanId, Vec<SpanId>> = HashMap::new();
    for span in batches
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        if let (Some(me), Some(parent)) = (span_id(&span.span_id), span_id(&span.parent_span_id)) {
            parents.entry(me).or_default().push(parent);
            children.entry(parent).or_default().push(me);
        }
    }
    let mut keep = matched.clone();
    if let Some(depth) = filter.ancestor_depth {
        keep.extend(walk(&parents, &matched, depth));
    }
    keep.extend(walk(&children, &matched, filter.match_depth));

    let mut dropped = false;
    let kept = batches
        .into_iter()
        .filter_map(|mut rs| {
            rs.scope_spans = std::mem::take(&mut rs.scope_spans)
                .into_iter()
                .filter_map(|mut ss: ScopeSpans| {
                    let before = ss.spans.len();
                    ss.spans
                        .retain(|s| span_id(&s.span_id).is_some_and(|id| keep.contains(&id)));
                    dropped |= ss.spans.len() < before;
                    (!ss.spans.is_empty()).then_some(ss)
                })
                .collect();
            (!rs.scope_spans.is_empty()).then_some(rs)
        })
        .collect();
    (kept, dropped)
}

/// `GET /api/v2/traces/{id}`.
pub(crate) async fn trace_v2(
    State(state): State<QueryState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, QueryError> {
    let filter = match &query {
        Ok(Query(params)) => trace_filter(params)?,
        Err(_) => None,
    };
    let id = match &path {
        Ok(Path(id)) => TraceId::parse_hex(id).ok(),
        Err(_) => None,
    };
    let mut batches = fetch(&state, path, query).await?;
    let mut status = STATUS_COMPLETE;
    if let (Some(filter), Some(id)) = (&filter, id) {
        let spans_before = span_total(&batches);
        let (kept, dropped) = apply_filter(filter, id, batches);
        tracing::debug!(
            trace_id = %id.to_hex(),
            spans = spans_before,
            kept = span_total(&kept),
            "trace by id filtered by q"
        );
        batches = kept;
        if dropped {
            status = STATUS_PARTIAL;
        }
    }
    let message = if status == STATUS_PARTIAL {
        FILTERED_MESSAGE.to_string()
    } else {
        String::new()
    };
    if wants_protobuf(&headers) {
        let answer = TraceByIdResponse {
            trace: Some(TracesData {
                resource_spans: batches,
            }),
            status,
            message,
        };
        return Ok(protobuf(answer.encode_to_vec()));
    }
    let mut doc = json!({ "trace": encode_resource_spans(&batches) });
    if status == STATUS_PARTIAL {
        doc["status"] = json!("PARTIAL");
        doc["message"] = json!(message);
    }
    Ok(Json(doc).into_response())
}

fn span_total(batches: &[ResourceSpans]) -> usize {
    batches
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!wants_protobuf(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_protobuf(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, Application/Protobuf;q=0.9"),
        );
        assert!(wants_protobuf(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/x-protobuf"),
        );
        assert!(wants_protobuf(&h));
    }
}
