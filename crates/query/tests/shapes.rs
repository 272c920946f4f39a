//! The Tempo and Jaeger JSON shapes, checked field by field against the documented responses.
//!
//! Both routers are served on 127.0.0.1 (random ports) over a `SledStore` in a temporary
//! directory holding three spans in two traces, and called with a plain HTTP/1.1 client.
//! Every expected body is written by hand from the reference it cites; comparing whole
//! `serde_json::Value`s checks each field's presence (or documented absence), its JSON type
//! (string vs number), its value, and that no undocumented key is there. Values that depend
//! on the store's layout (inspected bytes) are checked for type, then set aside.
//!
//! References:
//! * Tempo: `docs/sources/tempo/api_docs/_index.md` and `pkg/tempopb/tempo.proto` in
//!   grafana/tempo, answers written by gogo `jsonpb.Marshaler{}` (lowerCamelCase names,
//!   64-bit integers as strings, zero values omitted), search trace ids by
//!   `util.TraceIDToHexString` (leading zeros trimmed), span ids by `util.SpanIDToHexString`
//!   (16 digits).
//! * Jaeger: `internal/uimodel/model.go` (Trace, Span, Reference, Process, KeyValue, Log,
//!   DependencyLink, Operation), `internal/uimodel/converter/v1/json/from_domain.go` and the
//!   v1 `http_handler.go` (`structuredResponse {data,total,limit,offset,errors}`,
//!   `structuredError {code,msg,traceID}`) in jaegertracing/jaeger; api_v3's
//!   `http_gateway.go` and its snapshots (GetServices, GetOperations, GetTrace, FindTraces).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::{
    span, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_otlp_proto::{SpanBatch, TraceId};
use sextant_query::tempo::tags::INTRINSICS;
use sextant_query::QueryState;
use sextant_store::{SledStore, SpanWriter, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Two root-to-child spans across `api` and `db`; its id starts with a zero digit.
const T1: &str = "0af7651916cd43dd8448eb211c80319c";
/// One `web` span, a 64-bit id.
const T2: &str = "00000000000000000000000000000abc";
const MS: u64 = 1_000_000;
/// An int64 beyond JavaScript's safe integers (2^53 + 1).
const BIG: i64 = 9_007_199_254_740_993;

/// The fixed spans' times, all whole microseconds.
#[derive(Clone, Copy)]
struct Times {
    /// T1's root start, unix nanoseconds (whole seconds + 123 456 µs).
    t0: u64,
}

impl Times {
    fn root_start(self) -> u64 {
        self.t0
    }
    fn event(self) -> u64 {
        self.t0 + 5 * MS
    }
    fn child_start(self) -> u64 {
        self.t0 + 10 * MS
    }
    fn web_start(self) -> u64 {
        self.t0 + 2_000 * MS
    }
}

/// Both APIs on 127.0.0.1; the server tasks are stopped when it drops, then the directory.
struct Servers {
    tempo: SocketAddr,
    jaeger: SocketAddr,
    times: Times,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn scope_spans(scope: Option<InstrumentationScope>, spans: Vec<Span>) -> ScopeSpans {
    ScopeSpans {
        scope,
        spans,
        ..Default::default()
    }
}

fn lib() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "lib".into(),
        version: "1.0".into(),
        ..Default::default()
    })
}

fn batch(attributes: Vec<KeyValue>, scope: ScopeSpans) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_spans: vec![scope],
        ..Default::default()
    }
}

fn id(trace: &str) -> Vec<u8> {
    TraceId::parse_hex(trace).expect("test id").0.to_vec()
}

fn fixture(t: Times) -> Vec<ResourceSpans> {
    let root = Span {
        trace_id: id(T1),
        span_id: 1u64.to_be_bytes().to_vec(),
        flags: 1,
        name: "GET /users".into(),
        kind: 2,
        start_time_unix_nano: t.root_start(),
        end_time_unix_nano: t.root_start() + 250 * MS,
        attributes: vec![
            kv_str("http.method", "GET"),
            kv_int("http.status_code", 500),
        ],
        events: vec![span::Event {
            time_unix_nano: t.event(),
            name: "exception".into(),
            attributes: vec![kv_str("exception.type", "IOError")],
            ..Default::default()
        }],
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    };
    let child = Span {
        trace_id: id(T1),
        span_id: 2u64.to_be_bytes().to_vec(),
        parent_span_id: 1u64.to_be_bytes().to_vec(),
        name: "SELECT users".into(),
        kind: 3,
        start_time_unix_nano: t.child_start(),
        end_time_unix_nano: t.child_start() + 100 * MS,
        attributes: vec![kv_str("db.system", "postgres"), kv_int("big", BIG)],
        ..Default::default()
    };
    let web = Span {
        trace_id: id(T2),
        span_id: 3u64.to_be_bytes().to_vec(),
        flags: 1,
        name: "GET /".into(),
        kind: 2,
        start_time_unix_nano: t.web_start(),
        // 500 µs: under a millisecond, so Tempo's durationMs is 0 (and omitted).
        end_time_unix_nano: t.web_start() + 500_000,
        attributes: vec![kv_int("http.status_code", 200)],
        status: Some(Status {
            code: 1,
            message: String::new(),
        }),
        ..Default::default()
    };
    vec![
        batch(
            vec![kv_str("service.name", "api"), kv_str("host.name", "h1")],
            scope_spans(lib(), vec![root]),
        ),
        batch(
            vec![kv_str("service.name", "db")],
            scope_spans(lib(), vec![child]),
        ),
        batch(
            vec![kv_str("service.name", "web")],
            scope_spans(None, vec![web]),
        ),
    ]
}

async fn listen(app: axum::Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

impl Servers {
    async fn start() -> Servers {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SledStore::open(StoreConfig::new(dir.path().join("db"))).expect("open"));
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let times = Times {
            t0: (now_s - 120) * 1_000_000_000 + 123_456_000,
        };
        let receipt = store
            .write(SpanBatch::from_decoded(fixture(times)))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, 3);
        let state = QueryState::new(store, Arc::new(Registry::default()), "9.9.9-test");
        let (tempo, a) = listen(sextant_query::router(state.clone())).await;
        let (jaeger, b) = listen(sextant_query::jaeger::router(state)).await;
        Servers {
            tempo,
            jaeger,
            times,
            tasks: vec![a, b],
            _dir: dir,
        }
    }
}

/// An answer: status, content type and body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET path` over a new HTTP/1.1 connection.
async fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("end of headers");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    assert_eq!(header("transfer-encoding"), None, "{path}: chunked answer");
    Answer {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body: body.to_string(),
    }
}

/// GET expecting 200 and JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let a = get(addr, path).await;
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    assert_eq!(a.content_type, "application/json", "{path}");
    a.json()
}

/// Percent-encodes a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The keys of an object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Takes Tempo's `SearchMetrics` out of `v` after checking its documented keys and types
/// (`tempo.proto` SearchMetrics: uint32 as numbers, uint64 as strings, zeros omitted).
fn take_search_metrics(v: &mut Value, want_keys: &[&str]) {
    let m = v
        .as_object_mut()
        .expect("object")
        .remove("metrics")
        .expect("metrics");
    assert_eq!(keys(&m), want_keys, "{m}");
    for (k, field) in m.as_object().expect("metrics object") {
        match k.as_str() {
            "inspectedTraces" | "completedJobs" | "totalJobs" | "totalBlocks" => {
                assert!(field.as_u64().is_some_and(|n| n > 0), "{k}: {field}");
            }
            "inspectedBytes" | "inspectedSpans" | "totalBlockBytes" => {
                let text = field.as_str().unwrap_or_else(|| panic!("{k} not a string"));
                assert!(text.parse::<u64>().is_ok_and(|n| n > 0), "{k}: {field}");
            }
            other => panic!("undocumented metrics key {other}"),
        }
    }
    assert_eq!(m["completedJobs"], 1);
    assert_eq!(m["totalJobs"], 1);
}

fn s(n: u64) -> String {
    n.to_string()
}

fn string(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int(key: &str, value: i64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

// ---------------------------------------------------------------------------------------
// Tempo
// ---------------------------------------------------------------------------------------

/// api_docs "Query Echo endpoint": status 200 and body `echo`.
#[tokio::test]
async fn tempo_echo() {
    let srv = Servers::start().await;
    let a = get(srv.tempo, "/api/echo").await;
    assert_eq!(a.status, 200);
    assert!(
        a.content_type.starts_with("text/plain"),
        "{}",
        a.content_type
    );
    assert_eq!(a.body, "echo");
}

/// api_docs "List build information": the fields are `version`, `revision`, `branch`,
/// `buildDate`, `buildUser` and `goVersion` (Prometheus' build info, all strings).
#[tokio::test]
async fn tempo_buildinfo() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, "/api/status/buildinfo").await;
    assert_eq!(
        keys(&v),
        [
            "branch",
            "buildDate",
            "buildUser",
            "goVersion",
            "revision",
            "version"
        ]
    );
    for (k, field) in v.as_object().expect("object") {
        assert!(field.is_string(), "{k}: {field}");
    }
    assert_eq!(v["version"], "9.9.9-test");
    assert!(!v["goVersion"].as_str().unwrap_or_default().is_empty());
}

/// T1 as OTLP/JSON resource spans (the OTLP spec's JSON mapping: hex ids, 64-bit integers
/// as strings, enums as integers, zero values and absent messages, like the child's status,
/// omitted).
fn otlp_t1(t: Times) -> Value {
    json!([
        {
            "resource": {"attributes": [string("service.name", "api"), string("host.name", "h1")]},
            "scopeSpans": [{
                "scope": {"name": "lib", "version": "1.0"},
                "spans": [{
                    "traceId": T1,
                    "spanId": "0000000000000001",
                    "flags": 1,
                    "name": "GET /users",
                    "kind": 2,
                    "startTimeUnixNano": s(t.root_start()),
                    "endTimeUnixNano": s(t.root_start() + 250 * MS),
                    "attributes": [string("http.method", "GET"), int("http.status_code", 500)],
                    "events": [{
                        "timeUnixNano": s(t.event()),
                        "name": "exception",
                        "attributes": [string("exception.type", "IOError")],
                    }],
                    "status": {"code": 2, "message": "boom"},
                }],
            }],
        },
        {
            "resource": {"attributes": [string("service.name", "db")]},
            "scopeSpans": [{
                "scope": {"name": "lib", "version": "1.0"},
                "spans": [{
                    "traceId": T1,
                    "spanId": "0000000000000002",
                    "parentSpanId": "0000000000000001",
                    "name": "SELECT users",
                    "kind": 3,
                    "startTimeUnixNano": s(t.child_start()),
                    "endTimeUnixNano": s(t.child_start() + 100 * MS),
                    "attributes": [string("db.system", "postgres"), int("big", BIG)],
                }],
            }],
        },
    ])
}

/// T2 as OTLP/JSON resource spans. It has no scope, so our codec leaves `scope` out (Jaeger's
/// GetTrace snapshot and Tempo's gogo jsonpb write an empty `"scope": {}`; both decode the
/// same).
fn otlp_t2(t: Times) -> Value {
    json!([{
        "resource": {"attributes": [string("service.name", "web")]},
        "scopeSpans": [{
            "spans": [{
                "traceId": T2,
                "spanId": "0000000000000003",
                "flags": 1,
                "name": "GET /",
                "kind": 2,
                "startTimeUnixNano": s(t.web_start()),
                "endTimeUnixNano": s(t.web_start() + 500_000),
                "attributes": [int("http.status_code", 200)],
                "status": {"code": 1},
            }],
        }],
    }])
}

/// api_docs "Query": OTLP JSON; `tempopb.Trace` is still written with its historical
/// `batches` key on v1 (`pkg/tempopb/trace_utils.go`).
#[tokio::test]
async fn tempo_trace_by_id_v1() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, &format!("/api/traces/{T1}")).await;
    assert_eq!(v, json!({ "batches": otlp_t1(srv.times) }));
}

/// api_docs "Query V2": `TraceByIDResponse {trace: {resourceSpans}, metrics, status,
/// message}`; `status` is the enum `PartialStatus` (COMPLETE, the zero value, omitted;
/// PARTIAL as its name) and `message` omitted when empty.
#[tokio::test]
async fn tempo_trace_by_id_v2() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, &format!("/api/v2/traces/{T1}")).await;
    assert_eq!(
        v,
        json!({ "trace": { "resourceSpans": otlp_t1(srv.times) } })
    );

    let q = enc(r#"{ resource.service.name = "db" }"#);
    let v = get_json(srv.tempo, &format!("/api/v2/traces/{T1}?q={q}")).await;
    let db_only = otlp_t1(srv.times)[1].clone();
    assert_eq!(
        v,
        json!({
            "trace": { "resourceSpans": [db_only] },
            "status": "PARTIAL",
            "message": "Trace filtered, only a subset of spans matching the filter is returned",
        })
    );
}

/// api_docs "Example of TraceQL search" and `tempo.proto` TraceSearchMetadata / SpanSet /
/// Span: `traceID` without leading zeros, `startTimeUnixNano` and `durationNanos` strings
/// (uint64), `durationMs` and `matched` numbers (uint32), `spanSet` (deprecated) equal to
/// `spanSets[0]` (`pkg/traceql/combine.go`), span `attributes` the matched fields,
/// `serviceStats` per service of the trace (`engine.go` asTraceSearchMetadata).
#[tokio::test]
async fn tempo_search_traceql() {
    let srv = Servers::start().await;
    let t = srv.times;
    let q = enc("{ status = error }");
    let mut v = get_json(srv.tempo, &format!("/api/search?q={q}")).await;
    take_search_metrics(
        &mut v,
        &[
            "completedJobs",
            "inspectedBytes",
            "inspectedTraces",
            "totalJobs",
        ],
    );
    let span_set = json!({
        "spans": [{
            "spanID": "0000000000000001",
            "name": "GET /users",
            "startTimeUnixNano": s(t.root_start()),
            "durationNanos": s(250 * MS),
            "attributes": [string("status", "error")],
        }],
        "matched": 1,
    });
    assert_eq!(
        v,
        json!({
            "traces": [{
                "traceID": "af7651916cd43dd8448eb211c80319c",
                "rootServiceName": "api",
                "rootTraceName": "GET /users",
                "startTimeUnixNano": s(t.root_start()),
                "durationMs": 250,
                "spanSet": span_set,
                "spanSets": [span_set],
                // map<string, ServiceStats {spanCount, errorCount}> over the whole trace.
                "serviceStats": {
                    "api": {"spanCount": 1, "errorCount": 1},
                    "db": {"spanCount": 1},
                },
            }],
        })
    );
}

/// api_docs "Example of tags-based search": a 64-bit trace id is written short
/// (`"d6e9329d67b6146a"` there; here `abc`), and `durationMs` 0 is omitted (jsonpb).
#[tokio::test]
async fn tempo_search_tags() {
    let srv = Servers::start().await;
    let t = srv.times;
    let tags = enc("service.name=web");
    let mut v = get_json(srv.tempo, &format!("/api/search?tags={tags}")).await;
    take_search_metrics(
        &mut v,
        &[
            "completedJobs",
            "inspectedBytes",
            "inspectedTraces",
            "totalJobs",
        ],
    );
    let span_set = json!({
        "spans": [{
            "spanID": "0000000000000003",
            "name": "GET /",
            "startTimeUnixNano": s(t.web_start()),
            "durationNanos": "500000",
            "attributes": [string("service.name", "web")],
        }],
        "matched": 1,
    });
    assert_eq!(
        v,
        json!({
            "traces": [{
                "traceID": "abc",
                "rootServiceName": "web",
                "rootTraceName": "GET /",
                "startTimeUnixNano": s(t.web_start()),
                "spanSet": span_set,
                "spanSets": [span_set],
            }],
        })
    );
}

/// api_docs "Search tags": `{tagNames: [string]}` (SearchTagsResponse).
#[tokio::test]
async fn tempo_tag_names_v1() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, "/api/search/tags").await;
    assert_eq!(
        v,
        json!({"tagNames": [
            "big", "db.system", "exception.type", "host.name", "http.method",
            "http.status_code", "service.name",
        ]})
    );
    let v = get_json(srv.tempo, "/api/search/tags?scope=resource").await;
    assert_eq!(v, json!({"tagNames": ["host.name", "service.name"]}));
}

/// api_docs "Search tags V2": `{scopes: [{name, tags}]}` (SearchTagsV2Response), the
/// intrinsic scope listing the intrinsics.
#[tokio::test]
async fn tempo_tag_names_v2() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, "/api/v2/search/tags").await;
    assert_eq!(
        v,
        json!({"scopes": [
            {"name": "resource", "tags": ["host.name", "service.name"]},
            {"name": "span", "tags": ["big", "db.system", "http.method", "http.status_code"]},
            {"name": "event", "tags": ["exception.type"]},
            {"name": "intrinsic", "tags": INTRINSICS},
        ]})
    );
    let v = get_json(srv.tempo, "/api/v2/search/tags?scope=span").await;
    assert_eq!(
        v,
        json!({"scopes": [
            {"name": "span", "tags": ["big", "db.system", "http.method", "http.status_code"]},
        ]})
    );
}

/// api_docs "Search tag values": `{tagValues: [string]}` (SearchTagValuesResponse).
#[tokio::test]
async fn tempo_tag_values_v1() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, "/api/search/tag/service.name/values").await;
    assert_eq!(v, json!({"tagValues": ["api", "db", "web"]}));
}

/// api_docs "Search tag values V2": `{tagValues: [{type, value}]}` (TagValue: both strings,
/// an int's value written as its decimal text).
#[tokio::test]
async fn tempo_tag_values_v2() {
    let srv = Servers::start().await;
    let v = get_json(srv.tempo, "/api/v2/search/tag/resource.service.name/values").await;
    assert_eq!(
        v,
        json!({"tagValues": [
            {"type": "string", "value": "api"},
            {"type": "string", "value": "db"},
            {"type": "string", "value": "web"},
        ]})
    );
    let v = get_json(srv.tempo, "/api/v2/search/tag/span.http.status_code/values").await;
    assert_eq!(
        v,
        json!({"tagValues": [
            {"type": "int", "value": "200"},
            {"type": "int", "value": "500"},
        ]})
    );
    let q = enc(r#"{ resource.service.name = "web" }"#);
    let v = get_json(
        srv.tempo,
        &format!("/api/v2/search/tag/span.http.status_code/values?q={q}"),
    )
    .await;
    assert_eq!(v, json!({"tagValues": [{"type": "int", "value": "200"}]}));
}

/// A window of 4 s starting on T1's second, so with a 1 s step 5 samples (`start` to `end`
/// inclusive, as Tempo and Prometheus): T1's spans fall in step 0, T2's in step 2.
fn metrics_window(t: Times) -> (u64, u64) {
    let start = t.t0 / 1_000_000_000;
    (start, start + 4)
}

/// `tempo.proto` QueryRangeResponse {series, metrics, status, message}; TimeSeries {labels,
/// samples, exemplars} (`prom_labels` reserved: gone); Sample {timestampMs (int64: a string),
/// value (double, omitted when 0)}; the labels are OTLP KeyValues.
#[tokio::test]
async fn tempo_metrics_query_range() {
    let srv = Servers::start().await;
    let (start, end) = metrics_window(srv.times);
    let q = enc("{ } | count_over_time() by (resource.service.name)");
    let mut v = get_json(
        srv.tempo,
        &format!("/api/metrics/query_range?q={q}&start={start}&end={end}&step=1s"),
    )
    .await;
    take_search_metrics(
        &mut v,
        &[
            "completedJobs",
            "inspectedBytes",
            "inspectedSpans",
            "inspectedTraces",
            "totalJobs",
        ],
    );
    let ms = |step: u64| ((start + step) * 1000).to_string();
    let samples = |at: u64| -> Value {
        (0..5)
            .map(|i| {
                if i == at {
                    json!({"timestampMs": ms(i), "value": 1.0})
                } else {
                    json!({"timestampMs": ms(i)})
                }
            })
            .collect()
    };
    let labels = |svc: &str| json!([string("resource.service.name", svc)]);
    assert_eq!(
        v,
        json!({"series": [
            {"labels": labels("api"), "samples": samples(0)},
            {"labels": labels("db"), "samples": samples(0)},
            {"labels": labels("web"), "samples": samples(2)},
        ]})
    );
}

/// `tempo.proto` QueryInstantResponse {series, metrics}; InstantSeries {labels, value}.
#[tokio::test]
async fn tempo_metrics_query_instant() {
    let srv = Servers::start().await;
    let (start, end) = metrics_window(srv.times);
    let q = enc("{ } | count_over_time() by (resource.service.name)");
    let mut v = get_json(
        srv.tempo,
        &format!("/api/metrics/query?q={q}&start={start}&end={end}"),
    )
    .await;
    take_search_metrics(
        &mut v,
        &[
            "completedJobs",
            "inspectedBytes",
            "inspectedSpans",
            "inspectedTraces",
            "totalJobs",
        ],
    );
    let series =
        |svc: &str| json!({"labels": [string("resource.service.name", svc)], "value": 1.0});
    assert_eq!(
        v,
        json!({"series": [series("api"), series("db"), series("web")]})
    );
}

/// Tempo answers a query it cannot parse with a 400 and a plain-text message.
#[tokio::test]
async fn tempo_errors() {
    let srv = Servers::start().await;
    for path in [
        format!("/api/search?q={}", enc("{ .a = }")),
        format!("/api/metrics/query_range?q={}", enc("{ }")),
        "/api/traces/not-hex".to_string(),
    ] {
        let a = get(srv.tempo, &path).await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(a.content_type.starts_with("text/plain"), "{path}");
        assert!(!a.body.is_empty(), "{path}");
    }
    let a = get(srv.tempo, "/api/search?q=%7B%20.a%20%3D%20%7D").await;
    assert_eq!(
        a.body,
        r#"invalid q "{ .a = }": TraceQL column 8: expected a value after "=", found "}""#
    );
    let a = get(srv.tempo, &format!("/api/traces/{}", "f".repeat(32))).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body, "trace not found");
}

// ---------------------------------------------------------------------------------------
// Jaeger
// ---------------------------------------------------------------------------------------

/// `structuredResponse` with `data` and a `total` (Jaeger sets it for services and
/// operations, leaves it 0 for traces and dependencies); `limit`, `offset` 0, `errors` null.
fn envelope(data: Value, total: usize) -> Value {
    json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null})
}

fn tag(key: &str, type_name: &str, value: Value) -> Value {
    json!({"key": key, "type": type_name, "value": value})
}

/// T1 in Jaeger's UI model (`uimodel.Trace`/`Span`): ids lowercase hex (trace 32, span 16),
/// `startTime` and `duration` numbers in microseconds, `flags` omitted when 0, `warnings`
/// null, the parent a CHILD_OF reference, events as logs with an `event` field, processes
/// `p1`, `p2` with `serviceName` and the other resource attributes as tags; int64 tags
/// beyond 2^53 - 1 written as strings (`from_domain.go` jsMaxSafeInteger).
fn jaeger_t1(t: Times) -> Value {
    json!({
        "traceID": T1,
        "spans": [
            {
                "traceID": T1,
                "spanID": "0000000000000001",
                "flags": 1,
                "operationName": "GET /users",
                "references": [],
                "startTime": t.root_start() / 1_000,
                "duration": 250_000,
                "tags": [
                    tag("otel.scope.name", "string", json!("lib")),
                    tag("otel.scope.version", "string", json!("1.0")),
                    tag("http.method", "string", json!("GET")),
                    tag("http.status_code", "int64", json!(500)),
                    tag("span.kind", "string", json!("server")),
                    tag("otel.status_code", "string", json!("ERROR")),
                    tag("error", "bool", json!(true)),
                    tag("otel.status_description", "string", json!("boom")),
                ],
                "logs": [{
                    "timestamp": t.event() / 1_000,
                    "fields": [
                        tag("event", "string", json!("exception")),
                        tag("exception.type", "string", json!("IOError")),
                    ],
                }],
                "processID": "p1",
                "warnings": null,
            },
            {
                "traceID": T1,
                "spanID": "0000000000000002",
                "operationName": "SELECT users",
                "references": [
                    {"refType": "CHILD_OF", "traceID": T1, "spanID": "0000000000000001"},
                ],
                "startTime": t.child_start() / 1_000,
                "duration": 100_000,
                "tags": [
                    tag("otel.scope.name", "string", json!("lib")),
                    tag("otel.scope.version", "string", json!("1.0")),
                    tag("db.system", "string", json!("postgres")),
                    tag("big", "int64", json!(BIG.to_string())),
                    tag("span.kind", "string", json!("client")),
                ],
                "logs": [],
                "processID": "p2",
                "warnings": null,
            },
        ],
        "processes": {
            "p1": {"serviceName": "api", "tags": [tag("host.name", "string", json!("h1"))]},
            "p2": {"serviceName": "db", "tags": []},
        },
        "warnings": null,
    })
}

/// T2 in Jaeger's UI model: a trace id whose high 64 bits are zero is 16 digits
/// (`model.TraceID.String()`; `ui_01.json` writes `"0000000000000001"`).
fn jaeger_t2(t: Times) -> Value {
    json!({
        "traceID": "0000000000000abc",
        "spans": [{
            "traceID": "0000000000000abc",
            "spanID": "0000000000000003",
            "flags": 1,
            "operationName": "GET /",
            "references": [],
            "startTime": t.web_start() / 1_000,
            "duration": 500,
            "tags": [
                tag("http.status_code", "int64", json!(200)),
                tag("span.kind", "string", json!("server")),
                tag("otel.status_code", "string", json!("OK")),
            ],
            "logs": [],
            "processID": "p1",
            "warnings": null,
        }],
        "processes": {"p1": {"serviceName": "web", "tags": []}},
        "warnings": null,
    })
}

/// `getServices`: `data` the names, `total` their number.
#[tokio::test]
async fn jaeger_services() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/services").await;
    assert_eq!(v, envelope(json!(["api", "db", "web"]), 3));
}

/// `getOperationsLegacy`: `data` the unique operation names, `total` their number.
#[tokio::test]
async fn jaeger_service_operations() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/services/api/operations").await;
    assert_eq!(v, envelope(json!(["GET /users"]), 1));
}

/// `getOperations`: `data` of `uimodel.Operation {name, spanKind}`, `total` their number.
#[tokio::test]
async fn jaeger_operations() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/operations?service=db").await;
    assert_eq!(
        v,
        envelope(json!([{"name": "SELECT users", "spanKind": "client"}]), 1)
    );
}

/// `search` (`tracesToResponse`): `data` the traces, `total` 0; with `traceID`, each id
/// not found is a `structuredError {msg, traceID}` (no `code`) in a 200 answer.
#[tokio::test]
async fn jaeger_search() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/traces?service=web").await;
    assert_eq!(v, envelope(json!([jaeger_t2(srv.times)]), 0));

    let missing = "f".repeat(32);
    let v = get_json(
        srv.jaeger,
        &format!("/api/traces?traceID={T1}&traceID={missing}"),
    )
    .await;
    assert_eq!(
        v,
        json!({
            "data": [jaeger_t1(srv.times)],
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{"msg": "trace not found", "traceID": missing}],
        })
    );
}

/// `getTrace`: `data` a one-trace array, `total` 0.
#[tokio::test]
async fn jaeger_trace_by_id() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, &format!("/api/traces/{T1}")).await;
    assert_eq!(v, envelope(json!([jaeger_t1(srv.times)]), 0));
    let v = get_json(srv.jaeger, "/api/traces/abc").await;
    assert_eq!(v, envelope(json!([jaeger_t2(srv.times)]), 0));
}

/// `dependencies`: `data` of `DependencyLink {parent, child, callCount}`, `total` 0.
#[tokio::test]
async fn jaeger_dependencies() {
    let srv = Servers::start().await;
    let end_ms = srv.times.t0 / MS + 60_000;
    let v = get_json(
        srv.jaeger,
        &format!("/api/dependencies?endTs={end_ms}&lookback=3600000"),
    )
    .await;
    assert_eq!(
        v,
        envelope(json!([{"parent": "api", "child": "db", "callCount": 1}]), 0)
    );
}

/// api_v3 `GetServicesResponse {services}` (snapshot GetServices.json).
#[tokio::test]
async fn jaeger_v3_services() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/v3/services").await;
    assert_eq!(v, json!({"services": ["api", "db", "web"]}));
}

/// api_v3 `GetOperationsResponse {operations: [{name, spanKind}]}` (snapshot
/// GetOperations.json).
#[tokio::test]
async fn jaeger_v3_operations() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/v3/operations?service=api").await;
    assert_eq!(
        v,
        json!({"operations": [{"name": "GET /users", "spanKind": "server"}]})
    );
}

/// api_v3 GetTrace: `{result: TracesData}` in OTLP/JSON (snapshot GetTrace.json).
#[tokio::test]
async fn jaeger_v3_trace_by_id() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, &format!("/api/v3/traces/{T2}")).await;
    assert_eq!(v, json!({"result": {"resourceSpans": otlp_t2(srv.times)}}));
}

/// api_v3 FindTraces: `{result: TracesData}` of every trace found (snapshot
/// FindTraces.json); none found is a 404 `No traces found` (`returnTraces`).
#[tokio::test]
async fn jaeger_v3_search() {
    let srv = Servers::start().await;
    let v = get_json(srv.jaeger, "/api/v3/traces?query.service_name=web").await;
    assert_eq!(v, json!({"result": {"resourceSpans": otlp_t2(srv.times)}}));
    let a = get(srv.jaeger, "/api/v3/traces?query.service_name=nobody").await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.json(),
        json!({"error": {"httpCode": 404, "message": "No traces found"}})
    );
}

/// `handleError`: `{data: null, total: 0, limit: 0, offset: 0, errors: [{code, msg}]}` with
/// the status; api_v3's `GRPCGatewayError {error: {httpCode, message}}`.
#[tokio::test]
async fn jaeger_errors() {
    let srv = Servers::start().await;
    let error = |code: u16, msg: &str| {
        json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": code, "msg": msg}],
        })
    };
    let missing = "f".repeat(32);
    let a = get(srv.jaeger, &format!("/api/traces/{missing}")).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json(), error(404, "trace not found"));
    let a = get(srv.jaeger, "/api/traces").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json(), error(400, "parameter 'service' is required"));
    let a = get(srv.jaeger, &format!("/api/v3/traces/{missing}")).await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.json(),
        json!({"error": {"httpCode": 404, "message": "trace not found"}})
    );
}
