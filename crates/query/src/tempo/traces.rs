//! Trace by id: `GET /api/traces/{id}` and `GET /api/v2/traces/{id}`.
//!
//! Both take optional `start` and `end` (unix seconds) to bound the lookup. The answer is
//! OTLP/JSON (hex ids, 64-bit integers as strings), or protobuf when the request says
//! `Accept: application/protobuf`:
//! * v1: `{"batches": [ResourceSpans...]}`; protobuf is Tempo's `tempopb.Trace`, whose only
//!   field is `repeated ResourceSpans batches = 1`, wire-identical to OTLP `TracesData`.
//! * v2: `{"trace": {"resourceSpans": [...]}}`; protobuf is Tempo's `TraceByIDResponse`, whose
//!   field 1 is the `Trace`. Tempo's other fields (metrics, partial status) are left out.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prost::Message;
use serde_json::{json, Value};
use sextant_otlp_proto::json::encode_resource_spans;
use sextant_otlp_proto::proto::{ResourceSpans, TracesData};
use sextant_otlp_proto::TraceId;

use crate::error::QueryError;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::QueryState;

/// The content type of protobuf answers.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

/// Tempo's `tempopb.TraceByIDResponse`, as far as we fill it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    /// The trace (`tempopb.Trace`, wire-identical to `TracesData`).
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TracesData>,
}

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

/// `GET /api/v2/traces/{id}`.
pub(crate) async fn trace_v2(
    State(state): State<QueryState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, QueryError> {
    let batches = fetch(&state, path, query).await?;
    if wants_protobuf(&headers) {
        let answer = TraceByIdResponse {
            trace: Some(TracesData {
                resource_spans: batches,
            }),
        };
        return Ok(protobuf(answer.encode_to_vec()));
    }
    Ok(Json(json!({ "trace": encode_resource_spans(&batches) })).into_response())
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
