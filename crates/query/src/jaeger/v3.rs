//! Jaeger's api_v3 over HTTP (its gRPC-gateway JSON), with OTLP/JSON trace bodies.
//!
//! * `GET /api/v3/services`: `{"services": [...]}`, sorted.
//! * `GET /api/v3/operations?service=&span_kind=`: `{"operations": [{"name", "spanKind"}]}`.
//! * `GET /api/v3/traces/{trace_id}`: `{"result": {"resourceSpans": [...]}}`, or 404.
//! * `GET /api/v3/traces?query.service_name=&query.operation_name=&query.start_time_min=
//!   &query.start_time_max=&query.duration_min=&query.duration_max=&query.num_traces=`:
//!   `{"result": {"resourceSpans": [...]}}` holding the resource spans of every trace found,
//!   or 404 `No traces found` (as Jaeger's gateway) when there is none.
//!   Times are RFC 3339 (`2024-05-01T12:00:00.5Z`, with `Z` or an offset) or unix
//!   nanoseconds; durations are Go durations; `query.num_traces` defaults to
//!   [`super::v1::DEFAULT_LIMIT`]. `query.service_name` is required.
//!
//! Errors are `{"error": {"httpCode", "message"}}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sextant_otlp_proto::json::encode_resource_spans;
use sextant_otlp_proto::proto::ResourceSpans;
use sextant_otlp_proto::TraceId;
use sextant_store::{Condition, SearchQuery, TimeWindow};

use super::V3Error;
use crate::duration::parse_go_duration;
use crate::error::QueryError;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::QueryState;

/// `GET /api/v3/services`.
pub(crate) async fn services(State(state): State<QueryState>) -> Result<Response, V3Error> {
    let names = blocking(&state, |reader| super::service_names(reader)).await?;
    Ok(Json(json!({ "services": names })).into_response())
}

/// `GET /api/v3/operations?service=&span_kind=`.
pub(crate) async fn operations(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, V3Error> {
    let Query(p) = query?;
    let service = params::get(&p, "service")
        .ok_or_else(|| V3Error::bad_request("parameter 'service' is required"))?
        .to_string();
    let kind = params::get(&p, "span_kind")
        .map(|k| {
            super::parse_span_kind(k).ok_or_else(|| {
                V3Error::from(QueryError::param(
                    "span_kind",
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
    let operations: Vec<Value> = ops
        .into_iter()
        .map(|(name, kind)| json!({ "name": name, "spanKind": kind }))
        .collect();
    Ok(Json(json!({ "operations": operations })).into_response())
}

fn result(batches: &[ResourceSpans]) -> Response {
    Json(json!({ "result": encode_resource_spans(batches) })).into_response()
}

/// `GET /api/v3/traces/{trace_id}`.
pub(crate) async fn trace(
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, V3Error> {
    let Path(id) = path?;
    let id = TraceId::parse_hex(&id)?;
    let batches = blocking(&state, move |reader| reader.trace(id, TimeWindow::all()))
        .await?
        .filter(|b| !b.is_empty())
        .ok_or(QueryError::TraceNotFound)?;
    Ok(result(&batches))
}

fn time(p: &Params, name: &'static str) -> Result<Option<u64>, V3Error> {
    params::get(p, name)
        .map(|v| {
            super::parse_time_ns(v).ok_or_else(|| {
                V3Error::from(QueryError::param(
                    name,
                    v,
                    "expected an RFC 3339 time or unix nanoseconds",
                ))
            })
        })
        .transpose()
}

fn duration(p: &Params, name: &'static str) -> Result<Option<std::time::Duration>, V3Error> {
    params::get(p, name)
        .map(|v| {
            parse_go_duration(v)
                .map_err(|source| V3Error::from(QueryError::InvalidDuration { name, source }))
        })
        .transpose()
}

/// `GET /api/v3/traces?query.service_name=...`.
pub(crate) async fn search(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, V3Error> {
    let Query(p) = query?;
    let service = params::get(&p, "query.service_name")
        .ok_or_else(|| V3Error::bad_request("query.service_name is required"))?;
    let mut conditions = vec![Condition::equals("service.name", service)];
    if let Some(operation) = params::get(&p, "query.operation_name") {
        conditions.push(Condition::equals("name", operation));
    }
    let window = TimeWindow {
        start_ns: time(&p, "query.start_time_min")?,
        end_ns: time(&p, "query.start_time_max")?,
    };
    if let (Some(s), Some(e)) = (window.start_ns, window.end_ns) {
        if s > e {
            return Err(V3Error::bad_request(
                "query.start_time_min must not be after query.start_time_max",
            ));
        }
    }
    let limit = params::count(&p, "query.num_traces", super::v1::DEFAULT_LIMIT)?;
    let query = SearchQuery {
        conditions,
        min_duration: duration(&p, "query.duration_min")?,
        max_duration: duration(&p, "query.duration_max")?,
        window,
        limit,
        ..SearchQuery::default()
    };
    let traces = blocking(&state, move |reader| super::find_traces(reader, &query)).await?;
    if traces.is_empty() {
        // As Jaeger's gateway answers a search that found nothing.
        return Err(V3Error(StatusCode::NOT_FOUND, "No traces found".into()));
    }
    let batches: Vec<ResourceSpans> = traces.into_iter().flat_map(|(_, b)| b).collect();
    Ok(result(&batches))
}
