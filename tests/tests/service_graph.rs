//! The service graph on the all-in-one's `/metrics`: a frontend -> backend (CLIENT/SERVER
//! pair) -> database (CLIENT span with db.system/db.name) trace, sent as protobuf over gRPC (the
//! connector reads it from the request bytes) and as OTLP/JSON (decoded), comes back as
//! `traces_service_graph_request_total` series a Prometheus scraping Sextant can feed to
//! Grafana's service map.

use std::time::{Duration, Instant};

use sextant_otlp_proto::proto::{
    span::SpanKind, ExportTraceServiceRequest, InstrumentationScope, Resource, ResourceSpans,
    ScopeSpans, Span, Status,
};
use sextant_tests::otlp::{self, kv_str};
use sextant_tests::{self as e2e, Server};

/// How long to wait for the connector to pair the spans (its store ttl is 2s).
const DEADLINE: Duration = Duration::from_secs(20);

#[allow(clippy::too_many_arguments)]
fn span(
    trace_id: &[u8],
    span_id: &[u8],
    parent: &[u8],
    name: &str,
    kind: SpanKind,
    start: u64,
    millis: u64,
    attributes: Vec<sextant_otlp_proto::proto::KeyValue>,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent.to_vec(),
        name: name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + millis * 1_000_000,
        attributes,
        status: Some(Status::default()),
        ..Default::default()
    }
}

fn resource(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "sextant-e2e".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `{prefix}frontend` SERVER -> CLIENT -> `{prefix}backend` SERVER -> CLIENT to database
/// `{prefix}orders`: the frontend's and the backend's spans, as two requests.
fn three_services(prefix: &str) -> (ExportTraceServiceRequest, ExportTraceServiceRequest) {
    let trace = otlp::random_trace_id();
    let ids: Vec<Vec<u8>> = (0..4).map(|_| otlp::random_span_id()).collect();
    let start = otlp::now_nanos() - 10_000_000_000;
    let frontend = resource(
        &format!("{prefix}frontend"),
        vec![
            span(
                &trace,
                &ids[0],
                &[],
                "GET /",
                SpanKind::Server,
                start,
                30,
                vec![],
            ),
            span(
                &trace,
                &ids[1],
                &ids[0],
                "GET /api",
                SpanKind::Client,
                start + 1_000_000,
                20,
                vec![kv_str("http.request.method", "GET")],
            ),
        ],
    );
    let backend = resource(
        &format!("{prefix}backend"),
        vec![
            span(
                &trace,
                &ids[2],
                &ids[1],
                "GET /api",
                SpanKind::Server,
                start + 2_000_000,
                15,
                vec![],
            ),
            span(
                &trace,
                &ids[3],
                &ids[2],
                "SELECT orders",
                SpanKind::Client,
                start + 3_000_000,
                5,
                vec![
                    kv_str("db.system", "postgresql"),
                    kv_str("db.name", &format!("{prefix}orders")),
                ],
            ),
        ],
    );
    (
        ExportTraceServiceRequest {
            resource_spans: vec![frontend],
        },
        ExportTraceServiceRequest {
            resource_spans: vec![backend],
        },
    )
}

/// The series the three-service trace must produce, once each.
fn wanted(prefix: &str) -> [String; 2] {
    [
        format!(
            r#"traces_service_graph_request_total{{client="{prefix}frontend",server="{prefix}backend",connection_type="",failed="false"}} 1"#
        ),
        format!(
            r#"traces_service_graph_request_total{{client="{prefix}backend",server="{prefix}orders",connection_type="database",failed="false"}} 1"#
        ),
    ]
}

/// Polls `/metrics` until every line of `want` is there (or the deadline passes).
async fn metrics_with(server: &Server, want: &[String]) -> String {
    let url = format!("{}/metrics", server.query_url());
    let started = Instant::now();
    loop {
        let resp = e2e::get(&url).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let text = resp.text();
        if want.iter().all(|w| text.lines().any(|l| l == w.as_str())) {
            return text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "service graph series {want:?} not on /metrics after {DEADLINE:?}:\n{}\nserver log:\n{}",
            e2e::tail(&text, 6_000),
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_protobuf_trace_makes_service_graph_metrics() {
    let server = Server::start(&[]);
    let (frontend, backend) = three_services("");
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    // The server half first, in its own request: the store pairs across requests.
    otlp::export(&mut client, backend)
        .await
        .expect("export backend");
    otlp::export(&mut client, frontend)
        .await
        .expect("export frontend");
    let text = metrics_with(&server, &wanted("")).await;

    // Histograms in seconds: client 20ms, server 15ms for frontend -> backend.
    let fe_be = r#"client="frontend",server="backend",connection_type="",failed="false""#;
    assert!(
        text.lines().any(
            |l| l == format!("traces_service_graph_request_client_seconds_sum{{{fe_be}}} 0.02")
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l
                == format!("traces_service_graph_request_server_seconds_sum{{{fe_be}}} 0.015")),
        "{text}"
    );
    assert!(
        text.contains("# TYPE traces_service_graph_request_server_seconds histogram"),
        "{text}"
    );
    // One exposition: the collector's, the service graph's and the query service's metrics,
    // ended once.
    assert!(text.contains("sextant_query_requests"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    // The frontend's root span has no client: after the store ttl it is an edge from `user`.
    let user = r#"traces_service_graph_request_total{client="user",server="frontend",connection_type="virtual_node",failed="false"} 1"#;
    metrics_with(&server, &[user.to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_trace_makes_service_graph_metrics() {
    let server = Server::start(&[]);
    let (frontend, backend) = three_services("json-");
    let mut both = frontend;
    both.resource_spans.extend(backend.resource_spans);
    let body = serde_json::to_vec(&json_request(&both)).expect("json");
    let resp = e2e::post(
        &server.traces_url(),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    metrics_with(&server, &wanted("json-")).await;
}

/// The request in OTLP/JSON (hex ids, int64 as strings, integer enums).
fn json_request(req: &ExportTraceServiceRequest) -> serde_json::Value {
    let resource_spans: Vec<serde_json::Value> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.first())
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(sextant_otlp_proto::proto::any_value::Value::StringValue(s)) => {
                        Some(s.clone())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let spans: Vec<serde_json::Value> = rs
                .scope_spans
                .iter()
                .flat_map(|ss| ss.spans.iter())
                .map(|s| {
                    let attributes: Vec<serde_json::Value> = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(sextant_otlp_proto::proto::any_value::Value::StringValue(
                                    v,
                                )) => v.clone(),
                                _ => String::new(),
                            };
                            serde_json::json!({"key": kv.key, "value": {"stringValue": v}})
                        })
                        .collect();
                    serde_json::json!({
                        "traceId": hex(&s.trace_id),
                        "spanId": hex(&s.span_id),
                        "parentSpanId": hex(&s.parent_span_id),
                        "name": s.name,
                        "kind": s.kind,
                        "startTimeUnixNano": s.start_time_unix_nano.to_string(),
                        "endTimeUnixNano": s.end_time_unix_nano.to_string(),
                        "attributes": attributes,
                    })
                })
                .collect();
            serde_json::json!({
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": service}}
                ]},
                "scopeSpans": [{"scope": {"name": "sextant-e2e"}, "spans": spans}],
            })
        })
        .collect();
    serde_json::json!({ "resourceSpans": resource_spans })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
