//! The Jaeger query API (v1 JSON and api_v3) against a real `SledStore` in a temporary
//! directory, with three traces across the services `frontend`, `api` and `db`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::{
    any_value, span, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span, Status,
};
use sextant_otlp_proto::{SpanBatch, TraceId};
use sextant_query::jaeger::router;
use sextant_query::QueryState;
use sextant_store::{SledStore, SpanWriter, StoreConfig};
use tower::ServiceExt;

/// Checkout: frontend -> api -> db, with an error, an event and a link to HEALTH.
const CHECKOUT: &str = "0af7651916cd43dd8448eb211c80319c";
/// Health check: api only, the newest.
const HEALTH: &str = "5b8efff798038103d269b633813fc60c";
/// A short checkout, frontend -> api; a 64-bit id.
const SHORT: &str = "00000000000000000000000000000abc";
const MS: u64 = 1_000_000;

struct App {
    router: Router,
    /// Unix nanoseconds when the test began (the traces are a little older).
    now_ns: u64,
    _dir: tempfile::TempDir,
}

fn id8(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn hex8(n: u64) -> String {
    format!("{n:016x}")
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: u64,
    parent: u64,
    name: &str,
    kind: i32,
    start: u64,
    duration: u64,
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: TraceId::parse_hex(trace).expect("trace id").0.to_vec(),
        span_id: id8(id),
        parent_span_id: if parent == 0 { Vec::new() } else { id8(parent) },
        name: name.to_string(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        attributes,
        flags: 1,
        ..Default::default()
    }
}

fn value(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(v),
        ..Default::default()
    }
}

fn resource(service: &str, extra: Vec<KeyValue>) -> Option<Resource> {
    let mut attributes = vec![kv_str("service.name", service)];
    attributes.extend(extra);
    Some(Resource {
        attributes,
        ..Default::default()
    })
}

fn batch(service: &str, extra: Vec<KeyValue>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: resource(service, extra),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: format!("{service}-instr"),
                version: "1.2.3".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn frontend(spans: Vec<Span>) -> ResourceSpans {
    batch("frontend", vec![kv_str("host.name", "web-1")], spans)
}

fn api(spans: Vec<Span>) -> ResourceSpans {
    batch("api", vec![kv_int("process.pid", 42)], spans)
}

fn db(spans: Vec<Span>) -> ResourceSpans {
    batch("db", vec![kv_str("db.system", "postgres")], spans)
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
        // Whole microseconds, so that the Jaeger times are exact.
        let now_ns = now_ns / 1_000 * 1_000;
        let t1 = now_ns - 60_000 * MS;
        let t3 = now_ns - 40_000 * MS;
        let t2 = now_ns - 20_000 * MS;

        // CHECKOUT, 300 ms: frontend 1 (server) -> frontend 2 (client) -> api 3 (server,
        // error) -> db 4 (client), api 5 (unspecified kind) under 3.
        let root = span(
            CHECKOUT,
            1,
            0,
            "GET /checkout",
            2,
            t1,
            300 * MS,
            vec![kv_str("http.method", "POST")],
        );
        let call = span(CHECKOUT, 2, 1, "HTTP GET api", 3, t1 + MS, 250 * MS, vec![]);
        let mut orders = span(
            CHECKOUT,
            3,
            2,
            "POST /orders",
            2,
            t1 + 2 * MS,
            200 * MS,
            vec![
                kv_int("http.status_code", 500),
                kv("retry", any_value::Value::BoolValue(false)),
                kv("ratio", any_value::Value::DoubleValue(0.25)),
                kv("blob", any_value::Value::BytesValue(b"foo".to_vec())),
            ],
        );
        orders.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        orders.events = vec![span::Event {
            time_unix_nano: t1 + 50 * MS + 123_456,
            name: "exception".into(),
            attributes: vec![kv_str("exception.message", "out of stock")],
            ..Default::default()
        }];
        orders.links = vec![span::Link {
            trace_id: TraceId::parse_hex(HEALTH).expect("id").0.to_vec(),
            span_id: id8(20),
            ..Default::default()
        }];
        let insert = span(
            CHECKOUT,
            4,
            3,
            "INSERT orders",
            3,
            t1 + 3 * MS,
            20 * MS,
            vec![],
        );
        let validate = span(CHECKOUT, 5, 3, "validate", 0, t1 + 30 * MS, 5 * MS, vec![]);

        // HEALTH, 5 ms: api only, status OK.
        let mut health = span(
            HEALTH,
            20,
            0,
            "GET /health",
            2,
            t2,
            5 * MS,
            vec![kv_str("http.method", "GET")],
        );
        health.status = Some(Status {
            code: 1,
            message: String::new(),
        });

        // SHORT, 50 ms: frontend 30 (server) -> api 31 (server).
        let short_root = span(
            SHORT,
            30,
            0,
            "GET /checkout",
            2,
            t3,
            50 * MS,
            vec![kv_int("http.status_code", 200)],
        );
        let short_orders = span(SHORT, 31, 30, "POST /orders", 2, t3 + MS, 40 * MS, vec![]);

        // CHECKOUT's frontend spans arrive in two writes, so one process spans two batches.
        let writes = vec![
            vec![frontend(vec![root])],
            vec![
                frontend(vec![call]),
                api(vec![orders, validate]),
                db(vec![insert]),
            ],
            vec![frontend(vec![short_root]), api(vec![short_orders])],
            vec![api(vec![health])],
        ];
        for write in writes {
            let receipt = store
                .write(SpanBatch::from_decoded(write))
                .await
                .expect("write");
            assert_eq!(receipt.rejected_spans, 0);
        }
        let state = QueryState::new(store, Arc::new(Registry::default()), "test");
        App {
            router: router(state),
            now_ns,
            _dir: dir,
        }
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
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
            .to_bytes();
        let text = String::from_utf8_lossy(&body).to_string();
        assert!(
            content_type.starts_with("application/json"),
            "{uri}: {content_type}: {text}"
        );
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {text}"));
        (status, json)
    }

    /// GET expecting 200 and Jaeger's envelope; returns `data`.
    async fn data(&self, uri: &str) -> Value {
        let (status, body) = self.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(body["errors"], Value::Null, "{uri}");
        assert_eq!(body["limit"], 0, "{uri}");
        assert_eq!(body["offset"], 0, "{uri}");
        let data = body["data"].clone();
        // Jaeger counts services and operations in `total`, and leaves it 0 for traces and
        // dependencies.
        let counted = uri.starts_with("/api/services") || uri.starts_with("/api/operations");
        match data.as_array() {
            Some(items) if counted => assert_eq!(body["total"], items.len(), "{uri}"),
            _ => assert_eq!(body["total"], 0, "{uri}"),
        }
        data
    }

    /// GET expecting `want` and Jaeger's error envelope; returns the message.
    async fn error(&self, uri: &str, want: StatusCode) -> String {
        let (status, body) = self.get(uri).await;
        assert_eq!(status, want, "{uri}: {body}");
        assert_eq!(body["data"], Value::Null, "{uri}");
        assert_eq!(body["total"], 0, "{uri}");
        let errors = body["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 1, "{uri}");
        assert_eq!(errors[0]["code"], want.as_u16(), "{uri}");
        errors[0]["msg"].as_str().expect("msg").to_string()
    }

    /// The trace ids of a v1 search, in order, left-padded to 32 digits (Jaeger writes a
    /// 64-bit id with 16).
    async fn search(&self, query: &str) -> Vec<String> {
        let data = self.data(&format!("/api/traces?{query}")).await;
        data.as_array()
            .expect("traces")
            .iter()
            .map(|t| format!("{:0>32}", t["traceID"].as_str().expect("traceID")))
            .collect()
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn services_and_operations() {
    let app = App::new().await;
    assert_eq!(
        app.data("/api/services").await,
        json!(["api", "db", "frontend"])
    );
    assert_eq!(
        app.data("/api/services/frontend/operations").await,
        json!(["GET /checkout", "HTTP GET api"])
    );
    assert_eq!(
        app.data("/api/services/api/operations").await,
        json!(["GET /health", "POST /orders", "validate"])
    );
    assert_eq!(app.data("/api/services/nobody/operations").await, json!([]));
    assert_eq!(
        app.data("/api/operations?service=api").await,
        json!([
            {"name": "GET /health", "spanKind": "server"},
            {"name": "POST /orders", "spanKind": "server"},
            {"name": "validate", "spanKind": ""},
        ])
    );
    assert_eq!(
        app.data("/api/operations?service=frontend&spanKind=client")
            .await,
        json!([{"name": "HTTP GET api", "spanKind": "client"}])
    );
    assert_eq!(
        app.data("/api/operations?service=db").await,
        json!([{"name": "INSERT orders", "spanKind": "client"}])
    );
    let msg = app.error("/api/operations", StatusCode::BAD_REQUEST).await;
    assert!(msg.contains("service"), "{msg}");
    app.error(
        "/api/operations?service=api&spanKind=sideways",
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn search_traces() {
    let app = App::new().await;
    // Newest first.
    assert_eq!(app.search("service=api").await, [HEALTH, SHORT, CHECKOUT]);
    assert_eq!(app.search("service=frontend").await, [SHORT, CHECKOUT]);
    assert_eq!(app.search("service=db").await, [CHECKOUT]);
    assert_eq!(app.search("service=nobody").await, Vec::<String>::new());
    assert_eq!(
        app.search(&format!("service=api&operation={}", enc("POST /orders")))
            .await,
        [SHORT, CHECKOUT]
    );
    // Service and operation must be on the same span: no frontend span is named so.
    assert!(app
        .search(&format!(
            "service=frontend&operation={}",
            enc("POST /orders")
        ))
        .await
        .is_empty());
    let tags = |t: &str| format!("service=api&tags={}", enc(t));
    assert_eq!(
        app.search(&tags(r#"{"http.method":"GET"}"#)).await,
        [HEALTH]
    );
    assert_eq!(
        app.search(&tags(r#"{"http.status_code":"500"}"#)).await,
        [CHECKOUT]
    );
    assert_eq!(
        app.search(&tags(r#"{"http.status_code":500}"#)).await,
        [CHECKOUT]
    );
    // Derived tags search on what they derive from.
    assert_eq!(app.search(&tags(r#"{"error":"true"}"#)).await, [CHECKOUT]);
    assert_eq!(
        app.search(&tags(r#"{"otel.status_code":"OK"}"#)).await,
        [HEALTH]
    );
    assert_eq!(
        app.search("service=frontend&tags=%7B%22span.kind%22%3A%22client%22%7D")
            .await,
        [CHECKOUT]
    );
    // Every tag must hold.
    assert!(app
        .search(&tags(r#"{"http.method":"GET","http.status_code":"500"}"#))
        .await
        .is_empty());
    assert_eq!(
        app.search("service=api&tag=http.method:GET").await,
        [HEALTH]
    );
    // Durations of spans.
    assert_eq!(
        app.search("service=frontend&minDuration=100ms").await,
        [CHECKOUT]
    );
    assert_eq!(
        app.search("service=frontend&maxDuration=0.1s").await,
        [SHORT]
    );
    assert_eq!(
        app.search("service=api&minDuration=30ms&maxDuration=45ms")
            .await,
        [SHORT]
    );
    // Limit.
    assert_eq!(app.search("service=api&limit=2").await, [HEALTH, SHORT]);
    // Time window, unix microseconds: only SHORT started 50..30 s ago.
    let us = |ago_s: u64| (app.now_ns - ago_s * 1_000_000_000) / 1_000;
    assert_eq!(
        app.search(&format!("service=api&start={}&end={}", us(50), us(30)))
            .await,
        [SHORT]
    );
    // Search by trace id needs no service.
    assert_eq!(app.search(&format!("traceID={SHORT}")).await, [SHORT]);

    // The traces found are whole Jaeger traces.
    let data = app.data("/api/traces?service=db").await;
    assert_eq!(data[0]["spans"].as_array().expect("spans").len(), 5);
    assert_eq!(
        data[0]["processes"].as_object().expect("processes").len(),
        3
    );

    let msg = app.error("/api/traces", StatusCode::BAD_REQUEST).await;
    assert_eq!(msg, "parameter 'service' is required");
    app.error("/api/traces?operation=x", StatusCode::BAD_REQUEST)
        .await;
    let msg = app
        .error("/api/traces?service=api&tags=nope", StatusCode::BAD_REQUEST)
        .await;
    assert!(msg.contains("tags"), "{msg}");
    let msg = app
        .error(
            "/api/traces?service=api&minDuration=5sec",
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(msg.contains("minDuration"), "{msg}");
    app.error("/api/traces?service=api&limit=-1", StatusCode::BAD_REQUEST)
        .await;
    app.error(
        "/api/traces?service=api&start=yesterday",
        StatusCode::BAD_REQUEST,
    )
    .await;
}

fn tag<'a>(tags: &'a Value, key: &str) -> &'a Value {
    tags.as_array()
        .expect("tags")
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("no tag {key} in {tags}"))
}

fn has_tag(tags: &Value, key: &str) -> bool {
    tags.as_array()
        .expect("tags")
        .iter()
        .any(|t| t["key"] == key)
}

#[tokio::test]
async fn trace_by_id() {
    let app = App::new().await;
    let data = app.data(&format!("/api/traces/{CHECKOUT}")).await;
    let traces = data.as_array().expect("array");
    assert_eq!(traces.len(), 1);
    let trace = &traces[0];
    assert_eq!(trace["traceID"], CHECKOUT);
    assert_eq!(trace["warnings"], Value::Null);

    // Processes: one per distinct resource, service.name out of the tags.
    let processes = trace["processes"].as_object().expect("processes");
    let mut keys: Vec<&String> = processes.keys().collect();
    keys.sort();
    assert_eq!(keys, ["p1", "p2", "p3"]);
    let process_of = |service: &str| -> (String, Value) {
        let (id, p) = processes
            .iter()
            .find(|(_, p)| p["serviceName"] == service)
            .unwrap_or_else(|| panic!("no process for {service}"));
        (id.clone(), p.clone())
    };
    let (p_frontend, frontend) = process_of("frontend");
    assert_eq!(
        frontend["tags"],
        json!([{"key": "host.name", "type": "string", "value": "web-1"}])
    );
    let (p_api, api) = process_of("api");
    assert_eq!(
        api["tags"],
        json!([{"key": "process.pid", "type": "int64", "value": 42}])
    );
    let (p_db, _) = process_of("db");

    let spans = trace["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 5);
    let by_id = |n: u64| {
        spans
            .iter()
            .find(|s| s["spanID"] == hex8(n))
            .unwrap_or_else(|| panic!("no span {n}"))
    };
    let root = by_id(1);
    assert_eq!(root["traceID"], CHECKOUT);
    assert_eq!(root["operationName"], "GET /checkout");
    assert_eq!(root["references"], json!([]));
    assert_eq!(root["processID"], p_frontend.as_str());
    assert_eq!(root["flags"], 1);
    assert_eq!(root["duration"], 300_000);
    assert_eq!(root["logs"], json!([]));
    assert_eq!(root["warnings"], Value::Null);
    assert_eq!(
        root["tags"],
        json!([
            {"key": "otel.scope.name", "type": "string", "value": "frontend-instr"},
            {"key": "otel.scope.version", "type": "string", "value": "1.2.3"},
            {"key": "http.method", "type": "string", "value": "POST"},
            {"key": "span.kind", "type": "string", "value": "server"},
        ])
    );
    assert!(!has_tag(&root["tags"], "error"));
    assert!(!has_tag(&root["tags"], "otel.status_code"));
    assert_eq!(by_id(2)["processID"], p_frontend.as_str());
    assert_eq!(tag(&by_id(2)["tags"], "span.kind")["value"], "client");
    let start_root = root["startTime"].as_u64().expect("startTime");
    assert_eq!(by_id(2)["startTime"], start_root + 1_000);

    let orders = by_id(3);
    assert_eq!(orders["processID"], p_api.as_str());
    assert_eq!(orders["startTime"], start_root + 2_000);
    assert_eq!(orders["duration"], 200_000);
    assert_eq!(
        orders["references"],
        json!([
            {"refType": "CHILD_OF", "traceID": CHECKOUT, "spanID": hex8(2)},
            {"refType": "FOLLOWS_FROM", "traceID": HEALTH, "spanID": hex8(20)},
        ])
    );
    let tags = &orders["tags"];
    assert_eq!(
        tag(tags, "http.status_code"),
        &json!({"key": "http.status_code", "type": "int64", "value": 500})
    );
    assert_eq!(
        tag(tags, "retry"),
        &json!({"key": "retry", "type": "bool", "value": false})
    );
    assert_eq!(
        tag(tags, "ratio"),
        &json!({"key": "ratio", "type": "float64", "value": 0.25})
    );
    assert_eq!(
        tag(tags, "blob"),
        &json!({"key": "blob", "type": "binary", "value": "Zm9v"})
    );
    assert_eq!(tag(tags, "span.kind")["value"], "server");
    assert_eq!(tag(tags, "otel.scope.name")["value"], "api-instr");
    assert_eq!(
        tag(tags, "otel.status_code"),
        &json!({"key": "otel.status_code", "type": "string", "value": "ERROR"})
    );
    assert_eq!(
        tag(tags, "error"),
        &json!({"key": "error", "type": "bool", "value": true})
    );
    assert_eq!(
        tag(tags, "otel.status_description"),
        &json!({"key": "otel.status_description", "type": "string", "value": "boom"})
    );
    assert_eq!(
        orders["logs"],
        json!([{
            "timestamp": start_root + 50_000 + 123,
            "fields": [
                {"key": "event", "type": "string", "value": "exception"},
                {"key": "exception.message", "type": "string", "value": "out of stock"},
            ],
        }])
    );

    let insert = by_id(4);
    assert_eq!(insert["processID"], p_db.as_str());
    assert_eq!(
        insert["references"],
        json!([{"refType": "CHILD_OF", "traceID": CHECKOUT, "spanID": hex8(3)}])
    );
    // Unspecified kind: no span.kind tag.
    assert!(!has_tag(&by_id(5)["tags"], "span.kind"));

    // HEALTH is OK: otel.status_code OK, no error tag.
    let data = app.data(&format!("/api/traces/{HEALTH}")).await;
    let tags = &data[0]["spans"][0]["tags"];
    assert_eq!(tag(tags, "otel.status_code")["value"], "OK");
    assert!(!has_tag(tags, "error"));

    // A 64-bit id is written with 16 characters (Jaeger's `TraceID.String()`), and is found
    // by its short form too.
    let data = app.data("/api/traces/abc").await;
    assert_eq!(data[0]["traceID"], &SHORT[16..]);
    assert_eq!(data[0]["spans"][0]["traceID"], &SHORT[16..]);

    let msg = app
        .error(
            "/api/traces/11111111111111111111111111111111",
            StatusCode::NOT_FOUND,
        )
        .await;
    assert_eq!(msg, "trace not found");
    let msg = app
        .error("/api/traces/not-a-trace-id", StatusCode::BAD_REQUEST)
        .await;
    assert!(msg.contains("not hexadecimal"), "{msg}");
    app.error(
        "/api/traces/0123456789abcdef0123456789abcdef0",
        StatusCode::BAD_REQUEST,
    )
    .await;
    app.error("/api/nothing-here", StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn dependencies() {
    let app = App::new().await;
    let links = json!([
        {"parent": "api", "child": "db", "callCount": 1},
        {"parent": "frontend", "child": "api", "callCount": 2},
    ]);
    assert_eq!(app.data("/api/dependencies").await, links);
    let end_ms = app.now_ns / MS + 1_000;
    assert_eq!(
        app.data(&format!(
            "/api/dependencies?endTs={end_ms}&lookback=3600000"
        ))
        .await,
        links
    );
    // The last 50 s hold SHORT and HEALTH only.
    assert_eq!(
        app.data(&format!("/api/dependencies?endTs={end_ms}&lookback=51000"))
            .await,
        json!([{"parent": "frontend", "child": "api", "callCount": 1}])
    );
    // Before the traces: nothing.
    assert_eq!(
        app.data(&format!(
            "/api/dependencies?endTs={}&lookback=1000",
            end_ms - 3_600_000
        ))
        .await,
        json!([])
    );
    app.error("/api/dependencies?endTs=soon", StatusCode::BAD_REQUEST)
        .await;
}

fn rfc3339(ns: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm), for the test's own times.
    let secs = ns / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

/// The distinct trace ids of an OTLP/JSON `{"resourceSpans": [...]}`, in order.
fn otlp_trace_ids(doc: &Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for rs in doc["resourceSpans"].as_array().expect("resourceSpans") {
        for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
            for s in ss["spans"].as_array().expect("spans") {
                let id = s["traceId"].as_str().expect("traceId").to_string();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

#[tokio::test]
async fn api_v3() {
    let app = App::new().await;
    let (status, body) = app.get("/api/v3/services").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"services": ["api", "db", "frontend"]}));

    let (status, body) = app.get("/api/v3/operations?service=frontend").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"operations": [
            {"name": "GET /checkout", "spanKind": "server"},
            {"name": "HTTP GET api", "spanKind": "client"},
        ]})
    );
    let (_, body) = app
        .get("/api/v3/operations?service=frontend&span_kind=server")
        .await;
    assert_eq!(
        body,
        json!({"operations": [{"name": "GET /checkout", "spanKind": "server"}]})
    );
    let (status, body) = app.get("/api/v3/operations").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["httpCode"], 400);

    // Trace by id: OTLP/JSON.
    let (status, body) = app.get(&format!("/api/v3/traces/{CHECKOUT}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result = &body["result"];
    assert_eq!(otlp_trace_ids(result), [CHECKOUT]);
    let span_count: usize = result["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().expect("scopeSpans"))
        .map(|ss| ss["spans"].as_array().expect("spans").len())
        .sum();
    assert_eq!(span_count, 5);
    let first = &result["resourceSpans"][0];
    assert!(first["resource"]["attributes"].is_array(), "{first}");
    assert!(first["scopeSpans"][0]["spans"][0]["startTimeUnixNano"].is_string());
    let (status, body) = app
        .get("/api/v3/traces/11111111111111111111111111111111")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["httpCode"], 404);
    assert_eq!(body["error"]["message"], "trace not found");
    let (status, _) = app.get("/api/v3/traces/zzz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Search.
    let min = rfc3339(app.now_ns - 3_600_000 * MS);
    let max = rfc3339(app.now_ns + 60_000 * MS);
    let search = |extra: &str| {
        format!(
            "/api/v3/traces?query.service_name=api&query.start_time_min={}&query.start_time_max={}{extra}",
            enc(&min),
            enc(&max)
        )
    };
    let (status, body) = app.get(&search("")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(otlp_trace_ids(&body["result"]), [HEALTH, SHORT, CHECKOUT]);
    let (_, body) = app
        .get(&search(&format!(
            "&query.operation_name={}",
            enc("POST /orders")
        )))
        .await;
    assert_eq!(otlp_trace_ids(&body["result"]), [SHORT, CHECKOUT]);
    let (_, body) = app.get(&search("&query.num_traces=1")).await;
    assert_eq!(otlp_trace_ids(&body["result"]), [HEALTH]);
    let (_, body) = app.get(&search("&query.duration_min=100ms")).await;
    assert_eq!(otlp_trace_ids(&body["result"]), [CHECKOUT]);
    // A window 50..30 s ago holds SHORT only.
    let (_, body) = app
        .get(&format!(
            "/api/v3/traces?query.service_name=api&query.start_time_min={}&query.start_time_max={}",
            enc(&rfc3339(app.now_ns - 50_000 * MS)),
            enc(&rfc3339(app.now_ns - 30_000 * MS)),
        ))
        .await;
    assert_eq!(otlp_trace_ids(&body["result"]), [SHORT]);
    // Nothing found is a 404, as Jaeger's gateway answers it.
    let (status, body) = app.get("/api/v3/traces?query.service_name=nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": {"httpCode": 404, "message": "No traces found"}})
    );
    let (status, body) = app.get("/api/v3/traces").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["httpCode"], 400);
    let (status, _) = app
        .get("/api/v3/traces?query.service_name=api&query.start_time_min=yesterday")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get("/api/v3/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
