//! The Tempo HTTP API against a real `SledStore` in a temporary directory.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use prost::Message;
use serde_json::{json, Value};
use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::{
    InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status, TracesData,
};
use sextant_otlp_proto::{span_count, TraceId};
use sextant_query::tempo::tags::INTRINSICS;
use sextant_query::tempo::traces::TraceByIdResponse;
use sextant_query::{router, serve, QueryState};
use sextant_store::{SledStore, SpanWriter, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const TRACE_A: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_B: &str = "5b8efff798038103d269b633813fc60c";
const TRACE_C: &str = "00000000000000000000000000000abc";
const MS: u64 = 1_000_000;

/// A store with three traces, and the router over it. Fields drop in order: the store is
/// closed before its directory goes.
struct App {
    router: Router,
    /// Unix seconds a few minutes before the traces.
    before: u64,
    _dir: tempfile::TempDir,
}

struct SpanSpec<'a> {
    trace: &'a str,
    id: u64,
    parent: u64,
    name: &'a str,
    kind: i32,
    start: u64,
    duration: u64,
    attributes: Vec<KeyValue>,
    status: i32,
}

fn span(s: SpanSpec<'_>) -> Span {
    let trace_id = TraceId::parse_hex(s.trace).expect("test trace id");
    Span {
        trace_id: trace_id.as_bytes().to_vec(),
        span_id: s.id.to_be_bytes().to_vec(),
        parent_span_id: if s.parent == 0 {
            Vec::new()
        } else {
            s.parent.to_be_bytes().to_vec()
        },
        name: s.name.to_string(),
        kind: s.kind,
        start_time_unix_nano: s.start,
        end_time_unix_nano: s.start + s.duration,
        attributes: s.attributes,
        status: Some(Status {
            code: s.status,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service), kv_str("host.name", "h1")],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "test".into(),
                version: "1".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl App {
    async fn new() -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SledStore::open(StoreConfig::new(dir.path().join("db"))).expect("open"));
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64;
        // A: api, oldest, 250 ms, error, two spans. B: web, 20 ms. C: api, newest, 1.5 s.
        let t_a = now_ns - 30_000 * MS;
        let t_b = now_ns - 20_000 * MS;
        let t_c = now_ns - 10_000 * MS;
        let a = resource_spans(
            "api",
            vec![
                span(SpanSpec {
                    trace: TRACE_A,
                    id: 1,
                    parent: 0,
                    name: "GET /users",
                    kind: 2,
                    start: t_a,
                    duration: 250 * MS,
                    attributes: vec![
                        kv_int("http.status_code", 500),
                        kv_str("http.method", "GET"),
                    ],
                    status: 2,
                }),
                span(SpanSpec {
                    trace: TRACE_A,
                    id: 2,
                    parent: 1,
                    name: "SELECT users",
                    kind: 3,
                    start: t_a + 10 * MS,
                    duration: 100 * MS,
                    attributes: vec![kv_str("db.system", "postgres")],
                    status: 0,
                }),
            ],
        );
        let b = resource_spans(
            "web",
            vec![span(SpanSpec {
                trace: TRACE_B,
                id: 3,
                parent: 0,
                name: "GET /",
                kind: 2,
                start: t_b,
                duration: 20 * MS,
                attributes: vec![
                    kv_int("http.status_code", 200),
                    kv_str("http.method", "GET"),
                ],
                status: 1,
            })],
        );
        let c = resource_spans(
            "api",
            vec![span(SpanSpec {
                trace: TRACE_C,
                id: 4,
                parent: 0,
                name: "POST /orders",
                kind: 2,
                start: t_c,
                duration: 1500 * MS,
                attributes: vec![
                    kv_int("http.status_code", 201),
                    kv_str("http.method", "POST"),
                ],
                status: 0,
            })],
        );
        // Two writes, so a trace by id also covers batches written apart.
        let receipt = store
            .write(sextant_otlp_proto::SpanBatch::from_decoded(vec![a, b]))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, 3);
        let receipt = store
            .write(sextant_otlp_proto::SpanBatch::from_decoded(vec![c]))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, 1);

        let state = QueryState::new(store, Arc::new(Registry::default()), "9.9.9-test");
        App {
            router: router(state),
            before: (t_a / 1_000_000_000) - 300,
            _dir: dir,
        }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, String, Vec<u8>) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, content_type, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, String, Vec<u8>) {
        self.call(Request::get(uri).body(Body::empty()).expect("request"))
            .await
    }

    /// GET expecting 200 and JSON.
    async fn json(&self, uri: &str) -> Value {
        let (status, content_type, body) = self.get(uri).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{uri}: {content_type}"
        );
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {text}"))
    }

    /// GET expecting an error status with a text body.
    async fn error(&self, uri: &str, want: StatusCode) -> String {
        let (status, content_type, body) = self.get(uri).await;
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(status, want, "{uri}: {text}");
        assert!(
            content_type.starts_with("text/plain"),
            "{uri}: {content_type}"
        );
        text
    }

    async fn protobuf(&self, uri: &str) -> Vec<u8> {
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/protobuf")
            .body(Body::empty())
            .expect("request");
        let (status, content_type, body) = self.call(request).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(content_type, "application/protobuf");
        body
    }
}

/// The traces' ids, left-padded back to 32 digits: Tempo writes search trace ids without
/// their leading zeros (`util.TraceIDToHexString`).
fn trace_ids(search: &Value) -> Vec<String> {
    search["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .map(|t| format!("{:0>32}", t["traceID"].as_str().expect("traceID")))
        .collect()
}

fn all_spans(resource_spans: &Value) -> Vec<Value> {
    resource_spans
        .as_array()
        .expect("resource spans")
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn trace_by_id_v1_json() {
    let app = App::new().await;
    let v = app.json(&format!("/api/traces/{TRACE_A}")).await;
    let batches = &v["batches"];
    assert_eq!(batches.as_array().expect("batches").len(), 1, "{v}");
    assert_eq!(
        batches[0]["resource"]["attributes"][0],
        json!({"key": "service.name", "value": {"stringValue": "api"}})
    );
    let spans = all_spans(batches);
    assert_eq!(spans.len(), 2);
    let root = spans
        .iter()
        .find(|s| s["name"] == "GET /users")
        .expect("root");
    assert_eq!(root["traceId"], TRACE_A);
    assert_eq!(root["spanId"], "0000000000000001");
    assert!(root["startTimeUnixNano"].is_string(), "{root}");
    assert!(root["endTimeUnixNano"].is_string(), "{root}");
    assert_eq!(
        root["attributes"][0],
        json!({"key": "http.status_code", "value": {"intValue": "500"}})
    );
    let child = spans
        .iter()
        .find(|s| s["name"] == "SELECT users")
        .expect("child");
    assert_eq!(child["parentSpanId"], "0000000000000001");

    // Upper-case and short (left-padded) ids name the same traces.
    let v = app
        .json(&format!("/api/traces/{}", TRACE_A.to_uppercase()))
        .await;
    assert_eq!(all_spans(&v["batches"]).len(), 2);
    let v = app.json("/api/traces/abc").await;
    assert_eq!(all_spans(&v["batches"])[0]["traceId"], TRACE_C);
}

#[tokio::test]
async fn trace_by_id_v2_json() {
    let app = App::new().await;
    let v = app.json(&format!("/api/v2/traces/{TRACE_B}")).await;
    let obj = v.as_object().expect("object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["trace"], "{v}");
    let spans = all_spans(&v["trace"]["resourceSpans"]);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["traceId"], TRACE_B);
    assert_eq!(spans[0]["spanId"], "0000000000000003");
    assert_eq!(spans[0]["name"], "GET /");
}

#[tokio::test]
async fn trace_by_id_protobuf() {
    let app = App::new().await;
    let body = app.protobuf(&format!("/api/traces/{TRACE_A}")).await;
    let trace = TracesData::decode(body.as_slice()).expect("TracesData");
    assert_eq!(span_count(&trace.resource_spans), 2);
    let span = &trace.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(hex_of(&span.trace_id), TRACE_A);

    let body = app.protobuf(&format!("/api/v2/traces/{TRACE_A}")).await;
    let answer = TraceByIdResponse::decode(body.as_slice()).expect("TraceByIdResponse");
    let trace = answer.trace.expect("trace");
    assert_eq!(span_count(&trace.resource_spans), 2);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn trace_by_id_errors() {
    let app = App::new().await;
    let absent = "11111111111111111111111111111111";
    assert_eq!(
        app.error(&format!("/api/traces/{absent}"), StatusCode::NOT_FOUND)
            .await,
        "trace not found"
    );
    assert_eq!(
        app.error(&format!("/api/v2/traces/{absent}"), StatusCode::NOT_FOUND)
            .await,
        "trace not found"
    );
    let not_hex = TraceId::parse_hex("xyz").expect_err("bad id").to_string();
    assert_eq!(
        app.error("/api/traces/xyz", StatusCode::BAD_REQUEST).await,
        not_hex
    );
    assert_eq!(
        app.error("/api/v2/traces/xyz", StatusCode::BAD_REQUEST)
            .await,
        not_hex
    );
    let long = "0".repeat(33);
    let too_long = TraceId::parse_hex(&long).expect_err("bad id").to_string();
    assert_eq!(
        app.error(&format!("/api/traces/{long}"), StatusCode::BAD_REQUEST)
            .await,
        too_long
    );
    let text = app
        .error(
            &format!("/api/traces/{TRACE_A}?start=yesterday"),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(
        text,
        r#"invalid start "yesterday": expected a unix time in seconds"#
    );
    let text = app
        .error(
            &format!("/api/traces/{TRACE_A}?start=20&end=10"),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(text, "start (20) must not be after end (10)");
}

#[tokio::test]
async fn trace_by_id_time_window() {
    let app = App::new().await;
    let before = app.before;
    let far_future = before + 1_000_000;
    let v = app
        .json(&format!(
            "/api/traces/{TRACE_A}?start={before}&end={far_future}"
        ))
        .await;
    assert_eq!(all_spans(&v["batches"]).len(), 2);
    // A window that ended before the trace began.
    assert_eq!(
        app.error(
            &format!("/api/traces/{TRACE_A}?start=1&end={before}"),
            StatusCode::NOT_FOUND
        )
        .await,
        "trace not found"
    );
}

#[tokio::test]
async fn search_by_service_and_shape() {
    let app = App::new().await;
    let v = app.json("/api/search?tags=service.name%3Dapi").await;
    // Newest first.
    assert_eq!(trace_ids(&v), vec![TRACE_C, TRACE_A], "{v}");
    let t = &v["traces"][1];
    assert_eq!(t["traceID"], TRACE_A.trim_start_matches('0'));
    assert_eq!(t["rootServiceName"], "api");
    assert_eq!(t["rootTraceName"], "GET /users");
    assert!(t["startTimeUnixNano"].is_string(), "{t}");
    let start: u64 = t["startTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("decimal start");
    assert!(start > 0);
    assert_eq!(t["durationMs"], 250);
    let set = &t["spanSets"][0];
    assert_eq!(set["matched"], 2, "{t}");
    let spans = set["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 2);
    for s in spans {
        assert_eq!(s["spanID"].as_str().map(str::len), Some(16), "{s}");
        assert!(s["name"].is_string());
        assert!(s["startTimeUnixNano"].is_string(), "{s}");
        assert!(s["durationNanos"].is_string(), "{s}");
        assert!(s["attributes"].is_array(), "{s}");
    }
    assert_eq!(t["spanSet"], *set);
    let m = &v["metrics"];
    assert!(m["inspectedTraces"].as_u64().is_some_and(|n| n >= 2), "{m}");
    assert!(m["inspectedBytes"].is_string(), "{m}");
    assert_eq!(m["completedJobs"], 1);
    assert_eq!(m["totalJobs"], 1);
}

#[tokio::test]
async fn search_by_attribute_name_and_status() {
    let app = App::new().await;
    let v = app.json("/api/search?tags=http.status_code%3D500").await;
    assert_eq!(trace_ids(&v), vec![TRACE_A]);
    let set = &v["traces"][0]["spanSets"][0];
    assert_eq!(set["matched"], 1);
    assert_eq!(set["spans"][0]["spanID"], "0000000000000001");
    assert_eq!(
        set["spans"][0]["durationNanos"],
        (250 * MS).to_string(),
        "{set}"
    );
    assert_eq!(
        set["spans"][0]["attributes"],
        json!([{"key": "http.status_code", "value": {"intValue": "500"}}])
    );

    // Several tags, a quoted value with a space.
    let tags = "service.name%3Dapi%20name%3D%22GET%20%2Fusers%22";
    let v = app.json(&format!("/api/search?tags={tags}")).await;
    assert_eq!(trace_ids(&v), vec![TRACE_A]);
    let v = app.json("/api/search?tags=db.system%3Dpostgres").await;
    assert_eq!(trace_ids(&v), vec![TRACE_A]);
    assert_eq!(
        v["traces"][0]["spanSets"][0]["spans"][0]["name"],
        "SELECT users"
    );
    let v = app.json("/api/search?tags=status%3Derror").await;
    assert_eq!(trace_ids(&v), vec![TRACE_A]);
    let v = app.json("/api/search?tags=service.name%3Dnobody").await;
    assert_eq!(trace_ids(&v), Vec::<String>::new());
    assert_eq!(v["traces"], json!([]));
}

#[tokio::test]
async fn search_by_duration_limit_and_window() {
    let app = App::new().await;
    let v = app.json("/api/search?minDuration=1s").await;
    assert_eq!(trace_ids(&v), vec![TRACE_C]);
    assert_eq!(v["traces"][0]["durationMs"], 1500);
    let v = app.json("/api/search?maxDuration=50ms").await;
    assert_eq!(trace_ids(&v), vec![TRACE_B]);
    let v = app
        .json("/api/search?minDuration=200ms&maxDuration=1m30s")
        .await;
    assert_eq!(trace_ids(&v), vec![TRACE_C, TRACE_A]);
    let v = app
        .json("/api/search?minDuration=90ms&maxDuration=150ms")
        .await;
    assert_eq!(trace_ids(&v), vec![TRACE_A]);
    assert_eq!(
        v["traces"][0]["spanSets"][0]["spans"][0]["name"],
        "SELECT users"
    );

    let v = app.json("/api/search").await;
    assert_eq!(trace_ids(&v), vec![TRACE_C, TRACE_B, TRACE_A]);
    let v = app.json("/api/search?limit=1").await;
    assert_eq!(trace_ids(&v), vec![TRACE_C]);
    let v = app.json("/api/search?limit=2").await;
    assert_eq!(trace_ids(&v), vec![TRACE_C, TRACE_B]);
    let v = app.json("/api/search?tags=service.name%3Dapi&spss=1").await;
    let set = &v["traces"][1]["spanSets"][0];
    assert_eq!(set["spans"].as_array().map(Vec::len), Some(1), "{set}");
    assert_eq!(set["matched"], 2);

    let before = app.before;
    let v = app
        .json(&format!("/api/search?start={before}&end={}", before + 3600))
        .await;
    assert_eq!(trace_ids(&v).len(), 3);
    let v = app.json(&format!("/api/search?start=1&end={before}")).await;
    assert_eq!(trace_ids(&v), Vec::<String>::new());
}

#[tokio::test]
async fn search_errors() {
    let app = App::new().await;
    let text = app
        .error(
            "/api/search?q=%7B%20.a%20%3D%20%7D",
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        text.contains("column 8: expected a value after \"=\", found \"}\""),
        "{text}"
    );
    let text = app
        .error("/api/search?minDuration=100", StatusCode::BAD_REQUEST)
        .await;
    assert!(text.starts_with("invalid minDuration: \"100\""), "{text}");
    let text = app
        .error("/api/search?maxDuration=1d", StatusCode::BAD_REQUEST)
        .await;
    assert!(text.contains("unknown unit \"d\""), "{text}");
    let text = app
        .error(
            "/api/search?tags=name%3D%22unterminated",
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(text.starts_with("invalid tags: "), "{text}");
    assert!(text.contains("no closing"), "{text}");
    let text = app
        .error("/api/search?limit=lots", StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(
        text,
        r#"invalid limit "lots": expected a non-negative integer"#
    );
    let text = app
        .error("/api/search?start=5&end=1", StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(text, "start (5) must not be after end (1)");
}

#[tokio::test]
async fn tag_names() {
    let app = App::new().await;
    let v = app.json("/api/search/tags?scope=resource").await;
    assert_eq!(v, json!({"tagNames": ["host.name", "service.name"]}));
    let v = app.json("/api/search/tags?scope=span").await;
    assert_eq!(
        v,
        json!({"tagNames": ["db.system", "http.method", "http.status_code"]})
    );
    let v = app.json("/api/search/tags").await;
    assert_eq!(
        v,
        json!({"tagNames": ["db.system", "host.name", "http.method", "http.status_code", "service.name"]})
    );
    let v = app.json("/api/search/tags?scope=intrinsic").await;
    assert_eq!(v["tagNames"], json!(INTRINSICS));
    let text = app
        .error("/api/search/tags?scope=bogus", StatusCode::BAD_REQUEST)
        .await;
    assert!(text.contains("\"bogus\""), "{text}");

    let v = app.json("/api/v2/search/tags").await;
    assert_eq!(
        v,
        json!({"scopes": [
            {"name": "resource", "tags": ["host.name", "service.name"]},
            {"name": "span", "tags": ["db.system", "http.method", "http.status_code"]},
            {"name": "intrinsic", "tags": [
                "duration", "event:name", "kind", "name", "rootName", "rootServiceName",
                "span:duration", "span:kind", "span:name", "span:status", "span:statusMessage",
                "status", "statusMessage", "trace:duration", "trace:rootName",
                "trace:rootService", "traceDuration"
            ]}
        ]})
    );
    let v = app.json("/api/v2/search/tags?scope=span").await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "span", "tags": ["db.system", "http.method", "http.status_code"]}]})
    );
    let v = app.json("/api/v2/search/tags?scope=intrinsic").await;
    assert_eq!(v["scopes"][0]["name"], "intrinsic");
    assert_eq!(v["scopes"].as_array().map(Vec::len), Some(1));
    let text = app
        .error("/api/v2/search/tags?scope=bogus", StatusCode::BAD_REQUEST)
        .await;
    assert!(text.contains("\"bogus\""), "{text}");
}

#[tokio::test]
async fn tag_values() {
    let app = App::new().await;
    let v = app.json("/api/search/tag/service.name/values").await;
    assert_eq!(v, json!({"tagValues": ["api", "web"]}));
    let v = app.json("/api/search/tag/http.status_code/values").await;
    assert_eq!(v, json!({"tagValues": ["200", "201", "500"]}));
    let v = app.json("/api/search/tag/nothing.here/values").await;
    assert_eq!(v, json!({"tagValues": []}));

    let v = app
        .json("/api/v2/search/tag/resource.service.name/values")
        .await;
    assert_eq!(
        v,
        json!({"tagValues": [{"type": "string", "value": "api"}, {"type": "string", "value": "web"}]})
    );
    let v = app
        .json("/api/v2/search/tag/span.http.status_code/values")
        .await;
    assert_eq!(
        v,
        json!({"tagValues": [
            {"type": "int", "value": "200"},
            {"type": "int", "value": "201"},
            {"type": "int", "value": "500"}
        ]})
    );
    // Scoped to the wrong place: nothing.
    let v = app
        .json("/api/v2/search/tag/span.service.name/values")
        .await;
    assert_eq!(v, json!({"tagValues": []}));
    let v = app.json("/api/v2/search/tag/.http.method/values").await;
    assert_eq!(
        v,
        json!({"tagValues": [{"type": "string", "value": "GET"}, {"type": "string", "value": "POST"}]})
    );
    let v = app.json("/api/v2/search/tag/status/values").await;
    assert_eq!(
        v,
        json!({"tagValues": [
            {"type": "keyword", "value": "error"},
            {"type": "keyword", "value": "ok"},
            {"type": "keyword", "value": "unset"}
        ]})
    );
    let v = app.json("/api/v2/search/tag/kind/values").await;
    let kinds: Vec<&str> = v["tagValues"]
        .as_array()
        .expect("values")
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "keyword");
            t["value"].as_str().expect("value")
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "unspecified",
            "internal",
            "server",
            "client",
            "producer",
            "consumer"
        ]
    );
    let v = app.json("/api/v2/search/tag/name/values").await;
    assert_eq!(v, json!({"tagValues": []}));
    let text = app
        .error("/api/v2/search/tag/foo.bar/values", StatusCode::BAD_REQUEST)
        .await;
    assert!(
        text.starts_with("tag \"foo.bar\" has no valid scope"),
        "{text}"
    );
}

#[tokio::test]
async fn status_endpoints() {
    let app = App::new().await;
    let (status, _, body) = app.get("/ready").await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ready"[..]));
    let (status, _, body) = app.get("/api/echo").await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"echo"[..]));
    let v = app.json("/api/status/buildinfo").await;
    assert_eq!(v["version"], "9.9.9-test");
    for field in ["revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(v[field].is_string(), "{field}: {v}");
    }
    assert!(
        v["goVersion"]
            .as_str()
            .is_some_and(|s| s.starts_with("rustc")),
        "{v}"
    );

    let text = app.error("/api/nope", StatusCode::NOT_FOUND).await;
    assert_eq!(text, "not found: no endpoint at /api/nope");
    let request = Request::post("/api/search")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = app.call(request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "method POST is not allowed on /api/search"
    );
}

#[tokio::test]
async fn metrics_expose_store_and_request_figures() {
    let app = App::new().await;
    app.json("/api/search").await;
    app.error("/api/traces/xyz", StatusCode::BAD_REQUEST).await;
    let (status, content_type, body) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = String::from_utf8(body).expect("utf-8");
    assert!(
        text.contains("sextant_store_spans_written_total 4"),
        "{text}"
    );
    assert!(text.contains("sextant_store_bytes_on_disk "), "{text}");
    assert!(text.contains("sextant_store_writes_total "), "{text}");
    assert!(
        text.contains(r#"sextant_query_requests_total{endpoint="search",code="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sextant_query_requests_total{endpoint="trace_by_id",code="400"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("sextant_query_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
}

#[tokio::test]
async fn shared_registry_is_exposed() {
    use prometheus_client::metrics::counter::Counter;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(StoreConfig::new(dir.path())).expect("open"));
    let mut registry = Registry::default();
    let counter: Counter = Counter::default();
    counter.inc_by(7);
    registry.register("sextant_collector_spans_received", "test", counter);
    let app = router(QueryState::new(store, Arc::new(registry), "1"));
    let response = app
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("sextant_collector_spans_received_total 7"),
        "{text}"
    );
    assert!(
        text.contains("sextant_store_spans_written_total 0"),
        "{text}"
    );
}

#[tokio::test]
async fn serve_answers_and_shuts_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(StoreConfig::new(dir.path())).expect("open"));
    let state = QueryState::new(store, Arc::new(Registry::default()), "1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /ready HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("ready"), "{answer}");

    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .expect("server task");
    assert!(result.is_ok(), "{result:?}");
}
