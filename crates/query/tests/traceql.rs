//! TraceQL conformance: hand-built traces in a real `SledStore`, queried through
//! `/api/search?q=`, with the expected trace ids and span ids written down by hand.
//!
//! The traces (T = 1 700 000 000 s; ids: trace `1` is `1111…1`, span `13` is `00…13`):
//!
//! ```text
//! trace 1 (frontend + payments, 500 ms)
//!   11 "GET /checkout" server ok      frontend  0ms +500ms  http.method=GET http.status_code=200 "a b"="spaced"
//!   ├ 12 "auth"         client unset  frontend 10ms  +20ms  retries=2
//!   ├ 13 "POST /pay"    server error  payments 50ms +300ms  http.status_code=500 http.method=POST ratio=0.75
//!   │                   "card declined"                     flag=true  event exception{exception.type=CardError}
//!   │                                                       link{ref.kind=follows}
//!   │ ├ 14 "SELECT cards" client      payments 60ms +100ms  db.system=postgres db.rows=42
//!   │ └ 15 "UPDATE cards" client      payments 170ms +150ms db.system=postgres
//!   └ 16 "render"       internal      frontend 400ms +50ms  region="span-level"
//! trace 2 (worker, 2 s)
//!   21 "consume job" consumer ok      worker   1s   +2s     job.id="j-1" http.status_code="500" db.rows=7
//!   ├ 22 "process"   internal         worker   1.1s +1.5s   retries=5
//!   └ 23 "publish"   producer error   worker   2.7s +100ms
//! trace 3 (frontend, root not received, 1 ms)
//!   31 "GET /health" server (parent 3f absent) 5s +1ms      http.method=GET http.status_code=200
//!   └ 32 "check db"  client                    5s+0.1ms +0.5ms db.system=redis
//! ```
//! Resources: frontend{service.name, region=eu}, payments{region=us}, worker{region=eu}.
//! Scopes: frontend "net/http" 1.2 {lib.lang=go}, payments "grpc" 0.9 {lib.lang=java},
//! worker "amqp" 3.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::any_value::Value as Pv;
use sextant_otlp_proto::proto::span::{Event, Link};
use sextant_otlp_proto::proto::{
    AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_otlp_proto::SpanBatch;
use sextant_query::{router, QueryState};
use sextant_store::{SledStore, SpanWriter, StoreConfig};
use tower::ServiceExt;

const T: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn trace_hex(t: u8) -> String {
    format!("{t}").repeat(32)
}

fn span_hex(id: u64) -> String {
    format!("{id:016x}")
}

fn kv(key: &str, value: Pv) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

struct S {
    id: u64,
    parent: u64,
    name: &'static str,
    kind: i32,
    status: i32,
    start: u64,
    dur: u64,
    attrs: Vec<KeyValue>,
}

/// Span ids are written as hex digits: `0x13` is span "13".
fn span(trace: u8, s: S) -> Span {
    let trace_id: Vec<u8> = vec![trace * 0x11; 16];
    Span {
        trace_id,
        span_id: s.id.to_be_bytes().to_vec(),
        parent_span_id: if s.parent == 0 {
            Vec::new()
        } else {
            s.parent.to_be_bytes().to_vec()
        },
        name: s.name.into(),
        kind: s.kind,
        start_time_unix_nano: T + s.start,
        end_time_unix_nano: T + s.start + s.dur,
        attributes: s.attrs,
        status: Some(Status {
            code: s.status,
            message: if s.id == 0x13 {
                "card declined".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

fn rs(
    service: &str,
    region: &str,
    scope: (&str, &str, Vec<KeyValue>),
    spans: Vec<Span>,
) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service), kv_str("region", region)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: scope.0.into(),
                version: scope.1.into(),
                attributes: scope.2,
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn http_scope() -> (&'static str, &'static str, Vec<KeyValue>) {
    ("net/http", "1.2", vec![kv_str("lib.lang", "go")])
}

fn trace1() -> Vec<ResourceSpans> {
    let mut pay = span(
        1,
        S {
            id: 0x13,
            parent: 0x11,
            name: "POST /pay",
            kind: 2,
            status: 2,
            start: 50 * MS,
            dur: 300 * MS,
            attrs: vec![
                kv_int("http.status_code", 500),
                kv_str("http.method", "POST"),
                kv("ratio", Pv::DoubleValue(0.75)),
                kv("flag", Pv::BoolValue(true)),
            ],
        },
    );
    pay.events.push(Event {
        time_unix_nano: T + 60 * MS,
        name: "exception".into(),
        attributes: vec![kv_str("exception.type", "CardError")],
        ..Default::default()
    });
    pay.links.push(Link {
        trace_id: vec![0x22; 16],
        span_id: 0x21u64.to_be_bytes().to_vec(),
        attributes: vec![kv_str("ref.kind", "follows")],
        ..Default::default()
    });
    let frontend = rs(
        "frontend",
        "eu",
        http_scope(),
        vec![
            span(
                1,
                S {
                    id: 0x11,
                    parent: 0,
                    name: "GET /checkout",
                    kind: 2,
                    status: 1,
                    start: 0,
                    dur: 500 * MS,
                    attrs: vec![
                        kv_str("http.method", "GET"),
                        kv_int("http.status_code", 200),
                        kv_str("a b", "spaced"),
                    ],
                },
            ),
            span(
                1,
                S {
                    id: 0x12,
                    parent: 0x11,
                    name: "auth",
                    kind: 3,
                    status: 0,
                    start: 10 * MS,
                    dur: 20 * MS,
                    attrs: vec![kv_int("retries", 2)],
                },
            ),
            span(
                1,
                S {
                    id: 0x16,
                    parent: 0x11,
                    name: "render",
                    kind: 1,
                    status: 0,
                    start: 400 * MS,
                    dur: 50 * MS,
                    attrs: vec![kv_str("region", "span-level")],
                },
            ),
        ],
    );
    let payments = rs(
        "payments",
        "us",
        ("grpc", "0.9", vec![kv_str("lib.lang", "java")]),
        vec![
            pay,
            span(
                1,
                S {
                    id: 0x14,
                    parent: 0x13,
                    name: "SELECT cards",
                    kind: 3,
                    status: 0,
                    start: 60 * MS,
                    dur: 100 * MS,
                    attrs: vec![kv_str("db.system", "postgres"), kv_int("db.rows", 42)],
                },
            ),
            span(
                1,
                S {
                    id: 0x15,
                    parent: 0x13,
                    name: "UPDATE cards",
                    kind: 3,
                    status: 0,
                    start: 170 * MS,
                    dur: 150 * MS,
                    attrs: vec![kv_str("db.system", "postgres")],
                },
            ),
        ],
    );
    vec![frontend, payments]
}

fn trace2() -> Vec<ResourceSpans> {
    vec![rs(
        "worker",
        "eu",
        ("amqp", "3", Vec::new()),
        vec![
            span(
                2,
                S {
                    id: 0x21,
                    parent: 0,
                    name: "consume job",
                    kind: 5,
                    status: 1,
                    start: 1000 * MS,
                    dur: 2000 * MS,
                    attrs: vec![
                        kv_str("job.id", "j-1"),
                        kv_str("http.status_code", "500"),
                        kv_int("db.rows", 7),
                    ],
                },
            ),
            span(
                2,
                S {
                    id: 0x22,
                    parent: 0x21,
                    name: "process",
                    kind: 1,
                    status: 0,
                    start: 1100 * MS,
                    dur: 1500 * MS,
                    attrs: vec![kv_int("retries", 5)],
                },
            ),
            span(
                2,
                S {
                    id: 0x23,
                    parent: 0x21,
                    name: "publish",
                    kind: 4,
                    status: 2,
                    start: 2700 * MS,
                    dur: 100 * MS,
                    attrs: Vec::new(),
                },
            ),
        ],
    )]
}

fn trace3() -> Vec<ResourceSpans> {
    vec![rs(
        "frontend",
        "eu",
        http_scope(),
        vec![
            span(
                3,
                S {
                    id: 0x31,
                    parent: 0x3f,
                    name: "GET /health",
                    kind: 2,
                    status: 0,
                    start: 5000 * MS,
                    dur: MS,
                    attrs: vec![
                        kv_str("http.method", "GET"),
                        kv_int("http.status_code", 200),
                    ],
                },
            ),
            span(
                3,
                S {
                    id: 0x32,
                    parent: 0x31,
                    name: "check db",
                    kind: 3,
                    status: 0,
                    start: 5000 * MS + MS / 10,
                    dur: MS / 2,
                    attrs: vec![kv_str("db.system", "redis")],
                },
            ),
        ],
    )]
}

/// The router over a store holding the three traces. The store closes before its directory
/// goes (fields drop in order).
///
/// A second router serves the same traces cut into blocks: every spanset query is answered by
/// both and the answers must agree (a block page skipped wrongly by a pushed-down term fails).
struct App {
    router: Router,
    blocks: Router,
    _dirs: [tempfile::TempDir; 2],
}

async fn store_with_traces(dir: &std::path::Path, cut: bool) -> Arc<SledStore> {
    let mut config = StoreConfig::new(dir.join("db"));
    config.blocks.retention = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    config.blocks.maintenance_interval = std::time::Duration::from_secs(3600);
    let store = Arc::new(SledStore::open(config).expect("open"));
    // Written apart and in order, so trace 3 is the newest batch.
    for (trace, spans) in [(trace1(), 6), (trace2(), 3), (trace3(), 2)] {
        let receipt = store
            .write(SpanBatch::from_decoded(trace))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, spans);
        if cut {
            // A block per trace.
            store.flush_blocks().expect("cut");
        }
    }
    if cut {
        assert_eq!(store.blocks().len(), 3);
    }
    store
}

impl App {
    async fn new() -> App {
        let dirs = [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        ];
        let log = store_with_traces(dirs[0].path(), false).await;
        let blocks = store_with_traces(dirs[1].path(), true).await;
        let state = |s: Arc<SledStore>| QueryState::new(s, Arc::new(Registry::default()), "test");
        App {
            router: router(state(log)),
            blocks: router(state(blocks)),
            _dirs: dirs,
        }
    }

    async fn get(&self, uri: &str) -> (StatusCode, String) {
        Self::get_from(&self.router, uri).await
    }

    async fn get_from(router: &Router, uri: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("router is infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).to_string())
    }

    /// `/api/search?q=<query><extra>`, expecting 200 and JSON.
    async fn search(&self, query: &str, extra: &str) -> Value {
        let uri = format!("/api/search?q={}{extra}", encode(query));
        let (status, body) = self.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"))
    }

    /// The spansets found, by trace: `{"1": [["11", "12"]], ...}` (spans and sets sorted).
    async fn found(&self, query: &str) -> BTreeMap<String, Vec<Vec<String>>> {
        let in_log = self.found_in(query, false).await;
        let in_blocks = self.found_in(query, true).await;
        assert_eq!(
            in_log, in_blocks,
            "{query}: the log and the blocks disagree"
        );
        in_log
    }

    async fn found_in(&self, query: &str, blocks: bool) -> BTreeMap<String, Vec<Vec<String>>> {
        let v = if blocks {
            let uri = format!("/api/search?q={}&spss=100", encode(query));
            let (status, body) = Self::get_from(&self.blocks, &uri).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"))
        } else {
            self.search(query, "&spss=100").await
        };
        let mut out = BTreeMap::new();
        for t in v["traces"].as_array().expect("traces") {
            let id = t["traceID"].as_str().expect("traceID");
            let short = id[..1].to_string();
            assert_eq!(
                id,
                trace_hex(short.parse().expect("trace digit")),
                "{query}"
            );
            let mut sets: Vec<Vec<String>> = t["spanSets"]
                .as_array()
                .expect("spanSets")
                .iter()
                .map(|set| {
                    let spans = set["spans"].as_array().expect("spans");
                    assert_eq!(set["matched"].as_u64(), Some(spans.len() as u64), "{query}");
                    let mut ids: Vec<String> = spans
                        .iter()
                        .map(|s| {
                            let id = s["spanID"].as_str().expect("spanID");
                            assert_eq!(&id[..14], "00000000000000", "{query}");
                            id[14..].to_string()
                        })
                        .collect();
                    ids.sort();
                    ids
                })
                .collect();
            sets.sort();
            assert!(out.insert(short, sets).is_none(), "{query}: trace twice");
        }
        out
    }

    /// Asserts that `query` finds exactly these traces, each with one spanset of these spans.
    async fn expect(&self, query: &str, want: &[(&str, &[&str])]) {
        let want: BTreeMap<String, Vec<Vec<String>>> = want
            .iter()
            .map(|(t, spans)| {
                let mut s: Vec<String> = spans.iter().map(|x| x.to_string()).collect();
                s.sort();
                (t.to_string(), vec![s])
            })
            .collect();
        assert_eq!(self.found(query).await, want, "{query}");
    }

    /// Asserts that `query` finds these traces with these (several) spansets.
    async fn expect_sets(&self, query: &str, want: &[(&str, &[&[&str]])]) {
        let want: BTreeMap<String, Vec<Vec<String>>> = want
            .iter()
            .map(|(t, sets)| {
                let mut sets: Vec<Vec<String>> = sets
                    .iter()
                    .map(|s| {
                        let mut s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
                        s.sort();
                        s
                    })
                    .collect();
                sets.sort();
                (t.to_string(), sets)
            })
            .collect();
        assert_eq!(self.found(query).await, want, "{query}");
    }

    async fn bad(&self, query: &str, extra: &str) -> String {
        let uri = format!("/api/search?q={}{extra}", encode(query));
        let (status, body) = self.get(&uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        body
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const ALL1: &[&str] = &["11", "12", "13", "14", "15", "16"];
const ALL2: &[&str] = &["21", "22", "23"];
const ALL3: &[&str] = &["31", "32"];

#[tokio::test]
async fn scopes() {
    let app = App::new().await;
    app.expect(
        r#"{ span.http.method = "GET" }"#,
        &[("1", &["11"]), ("3", &["31"])],
    )
    .await;
    app.expect(
        r#"{ resource.service.name = "payments" }"#,
        &[("1", &["13", "14", "15"])],
    )
    .await;
    app.expect(
        r#"{ resource.service.name = "frontend" }"#,
        &[("1", &["11", "12", "16"]), ("3", ALL3)],
    )
    .await;
    app.expect(r#"{ .http.method = "POST" }"#, &[("1", &["13"])])
        .await;
    // Unscoped: the span's attribute first, then the resource's (16 has its own region).
    app.expect(
        r#"{ .region = "eu" }"#,
        &[("1", &["11", "12"]), ("2", ALL2), ("3", ALL3)],
    )
    .await;
    app.expect(r#"{ .region = "span-level" }"#, &[("1", &["16"])])
        .await;
    app.expect(
        r#"{ resource.region = "eu" }"#,
        &[("1", &["11", "12", "16"]), ("2", ALL2), ("3", ALL3)],
    )
    .await;
    app.expect(r#"{ span.region = "eu" }"#, &[]).await;
    app.expect(r#"{ span."a b" = "spaced" }"#, &[("1", &["11"])])
        .await;
    app.expect(
        r#"{ event.exception.type = "CardError" }"#,
        &[("1", &["13"])],
    )
    .await;
    app.expect(r#"{ link.ref.kind = "follows" }"#, &[("1", &["13"])])
        .await;
    app.expect(
        r#"{ instrumentation.lib.lang = "java" }"#,
        &[("1", &["13", "14", "15"])],
    )
    .await;
    app.expect(
        r#"{ instrumentation.lib.lang = "go" }"#,
        &[("1", &["11", "12", "16"]), ("3", ALL3)],
    )
    .await;
}

#[tokio::test]
async fn intrinsics() {
    let app = App::new().await;
    app.expect(r#"{ name = "auth" }"#, &[("1", &["12"])]).await;
    app.expect(r#"{ span:name = "render" }"#, &[("1", &["16"])])
        .await;
    app.expect("{ status = error }", &[("1", &["13"]), ("2", &["23"])])
        .await;
    app.expect("{ span:status = ok }", &[("1", &["11"]), ("2", &["21"])])
        .await;
    app.expect(
        r#"{ status = unset && resource.service.name = "worker" }"#,
        &[("2", &["22"])],
    )
    .await;
    app.expect(r#"{ statusMessage = "card declined" }"#, &[("1", &["13"])])
        .await;
    app.expect("{ kind = server }", &[("1", &["11", "13"]), ("3", &["31"])])
        .await;
    app.expect(
        "{ kind = client }",
        &[("1", &["12", "14", "15"]), ("3", &["32"])],
    )
    .await;
    app.expect("{ span:kind = consumer }", &[("2", &["21"])])
        .await;
    app.expect("{ kind = producer }", &[("2", &["23"])]).await;
    app.expect("{ kind = internal }", &[("1", &["16"]), ("2", &["22"])])
        .await;
    app.expect("{ kind = unspecified }", &[]).await;
    app.expect("{ duration > 1s }", &[("2", &["21", "22"])])
        .await;
    app.expect("{ span:duration <= 1ms }", &[("3", ALL3)]).await;
    app.expect(r#"{ span:id = "0000000000000014" }"#, &[("1", &["14"])])
        .await;
    app.expect(
        r#"{ span:parentID = "0000000000000013" }"#,
        &[("1", &["14", "15"])],
    )
    .await;
    // Root spans only: 31's parent is absent from the trace but it has one.
    app.expect("{ span:parentID = nil }", &[("1", &["11"]), ("2", &["21"])])
        .await;
    app.expect("{ trace:duration > 1s }", &[("2", ALL2)]).await;
    app.expect("{ traceDuration < 10ms }", &[("3", ALL3)]).await;
    app.expect(r#"{ trace:rootName = "GET /checkout" }"#, &[("1", ALL1)])
        .await;
    app.expect(r#"{ rootName = "consume job" }"#, &[("2", ALL2)])
        .await;
    app.expect(r#"{ trace:rootService = "worker" }"#, &[("2", ALL2)])
        .await;
    // Trace 3 has no root span, so no root service.
    app.expect(r#"{ rootServiceName = "frontend" }"#, &[("1", ALL1)])
        .await;
    app.expect(
        r#"{ trace:id = "22222222222222222222222222222222" }"#,
        &[("2", ALL2)],
    )
    .await;
    app.expect(r#"{ event:name = "exception" }"#, &[("1", &["13"])])
        .await;
    app.expect(
        r#"{ instrumentation:name = "grpc" }"#,
        &[("1", &["13", "14", "15"])],
    )
    .await;
    app.expect("{ }", &[("1", ALL1), ("2", ALL2), ("3", ALL3)])
        .await;
    app.expect(
        r#"{ link:traceID = "22222222222222222222222222222222" }"#,
        &[("1", &["13"])],
    )
    .await;
    app.expect(r#"{ link:spanID = "0000000000000021" }"#, &[("1", &["13"])])
        .await;
    // The exception event is 10 ms into span 13.
    app.expect("{ event:timeSinceStart = 10ms }", &[("1", &["13"])])
        .await;
    app.expect("{ event:timeSinceStart > 10ms }", &[]).await;
}

/// Nested sets, numbered by hand: trace 1 is 11(1,12) 12(2,3) 13(4,9) 14(5,6) 15(7,8)
/// 16(10,11); trace 2 is 21(1,6) 22(2,3) 23(4,5); trace 3 has no root, so all zero.
#[tokio::test]
async fn nested_set_intrinsics() {
    let app = App::new().await;
    app.expect("{ nestedSetParent < 0 }", &[("1", &["11"]), ("2", &["21"])])
        .await;
    app.expect("{ nestedSetLeft = 4 }", &[("1", &["13"]), ("2", &["23"])])
        .await;
    app.expect("{ nestedSetParent = 4 }", &[("1", &["14", "15"])])
        .await;
    app.expect("{ nestedSetRight = 12 }", &[("1", &["11"])])
        .await;
    app.expect(
        "{ span:nestedSetRight = 6 }",
        &[("1", &["14"]), ("2", &["21"])],
    )
    .await;
    app.expect("{ nestedSetLeft = 0 }", &[("3", ALL3)]).await;
    app.expect(
        "{ nestedSetParent = 1 }",
        &[("1", &["12", "13", "16"]), ("2", &["22", "23"])],
    )
    .await;
}

#[tokio::test]
async fn comparison_operators_and_regex_anchoring() {
    let app = App::new().await;
    app.expect(
        "{ span.http.status_code = 200 }",
        &[("1", &["11"]), ("3", &["31"])],
    )
    .await;
    // Trace 2's "500" is a string: a mismatched type is false, even for !=.
    app.expect("{ span.http.status_code != 200 }", &[("1", &["13"])])
        .await;
    app.expect("{ span.http.status_code > 200 }", &[("1", &["13"])])
        .await;
    app.expect(
        "{ span.http.status_code >= 200 }",
        &[("1", &["11", "13"]), ("3", &["31"])],
    )
    .await;
    app.expect(
        "{ span.http.status_code < 500 }",
        &[("1", &["11"]), ("3", &["31"])],
    )
    .await;
    app.expect(
        "{ span.http.status_code <= 500 }",
        &[("1", &["11", "13"]), ("3", &["31"])],
    )
    .await;
    app.expect(r#"{ name =~ "GET.*" }"#, &[("1", &["11"]), ("3", &["31"])])
        .await;
    app.expect(r#"{ name =~ "GET" }"#, &[]).await;
    app.expect(r#"{ name =~ "cards" }"#, &[]).await;
    app.expect(r#"{ name =~ ".*cards" }"#, &[("1", &["14", "15"])])
        .await;
    app.expect(
        r#"{ name !~ ".*cards" }"#,
        &[("1", &["11", "12", "13", "16"]), ("2", ALL2), ("3", ALL3)],
    )
    .await;
    app.expect(
        r#"{ resource.service.name =~ "pay.*|work.*" }"#,
        &[("1", &["13", "14", "15"]), ("2", ALL2)],
    )
    .await;
    app.expect(r#"{ .http.method > "GET" }"#, &[("1", &["13"])])
        .await;
}

#[tokio::test]
async fn numeric_and_string_typing() {
    let app = App::new().await;
    app.expect(r#"{ .http.status_code = "500" }"#, &[("2", &["21"])])
        .await;
    app.expect("{ .http.status_code = 500 }", &[("1", &["13"])])
        .await;
    app.expect(r#"{ .http.status_code =~ "5.*" }"#, &[("2", &["21"])])
        .await;
    app.expect("{ .ratio > 0.5 }", &[("1", &["13"])]).await;
    app.expect("{ .ratio < 1 }", &[("1", &["13"])]).await;
    app.expect("{ .db.rows > 40.5 }", &[("1", &["14"])]).await;
    app.expect("{ .db.rows = 7.0 }", &[("2", &["21"])]).await;
    app.expect("{ .flag = true }", &[("1", &["13"])]).await;
    app.expect("{ .flag = false }", &[]).await;
    app.expect("{ .flag != false }", &[("1", &["13"])]).await;
    app.expect(r#"{ .flag = "true" }"#, &[]).await;
    // Integer attributes compare with durations as nanoseconds.
    app.expect("{ .retries > 1ms }", &[]).await;
    app.expect("{ .retries < 1us }", &[("1", &["12"]), ("2", &["22"])])
        .await;
    app.expect("{ .retries = 5ns }", &[("2", &["22"])]).await;
}

#[tokio::test]
async fn nil() {
    let app = App::new().await;
    app.expect(
        "{ span.db.system != nil }",
        &[("1", &["14", "15"]), ("3", &["32"])],
    )
    .await;
    app.expect(
        r#"{ span.db.system = nil && resource.service.name = "payments" }"#,
        &[("1", &["13"])],
    )
    .await;
    app.expect("{ .job.id != nil }", &[("2", &["21"])]).await;
    app.expect("{ event.exception.type != nil }", &[("1", &["13"])])
        .await;
    app.expect(r#"{ link.ref.kind = nil && name = "POST /pay" }"#, &[])
        .await;
}

#[tokio::test]
async fn durations() {
    let app = App::new().await;
    app.expect("{ duration = 20ms }", &[("1", &["12"])]).await;
    app.expect("{ duration >= 1.5s }", &[("2", &["21", "22"])])
        .await;
    app.expect("{ duration = 1500000us }", &[("2", &["22"])])
        .await;
    app.expect("{ duration < 500us }", &[]).await;
    app.expect("{ duration <= 500µs }", &[("3", &["32"])]).await;
    app.expect("{ duration > 0.4s && duration < 1s }", &[("1", &["11"])])
        .await;
    app.expect("{ duration > 1m }", &[]).await;
    app.expect(
        "{ duration < 1h }",
        &[("1", ALL1), ("2", ALL2), ("3", ALL3)],
    )
    .await;
    app.expect("{ trace:duration = 2s }", &[("2", ALL2)]).await;
    app.expect("{ trace:duration = 500000000ns }", &[("1", ALL1)])
        .await;
}

#[tokio::test]
async fn and_or_inside_and_between_spansets() {
    let app = App::new().await;
    app.expect(
        r#"{ resource.service.name = "payments" && kind = client }"#,
        &[("1", &["14", "15"])],
    )
    .await;
    app.expect(
        r#"{ name = "auth" || name = "publish" }"#,
        &[("1", &["12"]), ("2", &["23"])],
    )
    .await;
    app.expect(
        r#"{ (name = "auth" || name = "publish") && status = error }"#,
        &[("2", &["23"])],
    )
    .await;
    // && binds tighter than ||.
    app.expect(
        r#"{ name = "auth" || name = "publish" && status = error }"#,
        &[("1", &["12"]), ("2", &["23"])],
    )
    .await;
    // All conditions in one pair of braces hold on the same span...
    app.expect(r#"{ name = "auth" && name = "render" }"#, &[])
        .await;
    // ...while && between spansets needs both in the trace, and returns both.
    app.expect(
        r#"{ name = "auth" } && { name = "render" }"#,
        &[("1", &["12", "16"])],
    )
    .await;
    app.expect(r#"{ name = "auth" } && { name = "publish" }"#, &[])
        .await;
    app.expect(
        r#"{ name = "auth" } || { name = "publish" }"#,
        &[("1", &["12"]), ("2", &["23"])],
    )
    .await;
    app.expect(
        "{ status = error } && { kind = consumer }",
        &[("2", &["21", "23"])],
    )
    .await;
}

#[tokio::test]
async fn structural_operators() {
    let app = App::new().await;
    app.expect(
        r#"{ name = "POST /pay" } > { kind = client }"#,
        &[("1", &["14", "15"])],
    )
    .await;
    app.expect(
        r#"{ resource.service.name = "frontend" } > { }"#,
        &[("1", &["12", "13", "16"]), ("3", &["32"])],
    )
    .await;
    app.expect(
        r#"{ name = "GET /checkout" } > { kind = client }"#,
        &[("1", &["12"])],
    )
    .await;
    app.expect(
        r#"{ name = "GET /checkout" } >> { kind = client }"#,
        &[("1", &["12", "14", "15"])],
    )
    .await;
    app.expect(r#"{ name = "SELECT cards" } < { }"#, &[("1", &["13"])])
        .await;
    app.expect(
        r#"{ name = "SELECT cards" } << { }"#,
        &[("1", &["11", "13"])],
    )
    .await;
    app.expect(r#"{ name = "SELECT cards" } ~ { }"#, &[("1", &["15"])])
        .await;
    app.expect(
        r#"{ name = "auth" } ~ { kind = server }"#,
        &[("1", &["13"])],
    )
    .await;
    app.expect(r#"{ name = "process" } ~ { }"#, &[("2", &["23"])])
        .await;
    // 31's parent is not in the trace: it has no siblings.
    app.expect(r#"{ name = "GET /health" } ~ { }"#, &[]).await;
    app.expect(
        r#"{ name = "GET /checkout" } > { name = "POST /pay" } > { }"#,
        &[("1", &["14", "15"])],
    )
    .await;
    app.expect(
        r#"{ name = "GET /checkout" } > ({ name = "POST /pay" } > { })"#,
        &[],
    )
    .await;
}

#[tokio::test]
async fn negated_structural_operators() {
    let app = App::new().await;
    app.expect(
        r#"{ name = "POST /pay" } !> { kind = client }"#,
        &[("1", &["12"]), ("3", &["32"])],
    )
    .await;
    app.expect(
        r#"{ name = "GET /checkout" } !>> { resource.service.name = "payments" }"#,
        &[],
    )
    .await;
    app.expect(
        r#"{ name = "POST /pay" } !>> { kind = client }"#,
        &[("1", &["12"]), ("3", &["32"])],
    )
    .await;
    app.expect(
        r#"{ name = "auth" } !< { kind = server }"#,
        &[("1", &["13"]), ("3", &["31"])],
    )
    .await;
    app.expect(
        r#"{ name = "SELECT cards" } !<< { resource.service.name = "frontend" }"#,
        &[("1", &["12", "16"]), ("3", ALL3)],
    )
    .await;
    app.expect(
        r#"{ name = "SELECT cards" } !~ { resource.service.name = "payments" }"#,
        &[("1", &["13", "14"])],
    )
    .await;
}

#[tokio::test]
async fn union_structural_operators() {
    let app = App::new().await;
    app.expect(
        r#"{ name = "POST /pay" } &> { kind = client }"#,
        &[("1", &["13", "14", "15"])],
    )
    .await;
    app.expect(
        r#"{ name = "GET /checkout" } &>> { name = "SELECT cards" }"#,
        &[("1", &["11", "14"])],
    )
    .await;
    app.expect(
        r#"{ name = "SELECT cards" } &< { }"#,
        &[("1", &["13", "14"])],
    )
    .await;
    app.expect(
        r#"{ name = "SELECT cards" } &<< { kind = server }"#,
        &[("1", &["11", "13", "14"])],
    )
    .await;
    app.expect(
        r#"{ name = "SELECT cards" } &~ { }"#,
        &[("1", &["14", "15"])],
    )
    .await;
    app.expect(r#"{ name = "publish" } &> { }"#, &[]).await;
}

#[tokio::test]
async fn pipeline_aggregates() {
    let app = App::new().await;
    app.expect(
        r#"{ resource.service.name = "payments" } | count() > 2"#,
        &[("1", &["13", "14", "15"])],
    )
    .await;
    app.expect(
        r#"{ resource.service.name = "payments" } | count() > 3"#,
        &[],
    )
    .await;
    app.expect("{ } | count() = 2", &[("3", ALL3)]).await;
    app.expect("{ } | count() >= 3", &[("1", ALL1), ("2", ALL2)])
        .await;
    // Clients of trace 1: 20, 100, 150 ms (avg 90 ms); of trace 3: 0.5 ms.
    app.expect(
        "{ kind = client } | avg(duration) > 50ms",
        &[("1", &["12", "14", "15"])],
    )
    .await;
    app.expect("{ kind = client } | avg(duration) > 95ms", &[])
        .await;
    app.expect("{ kind = client } | min(duration) < 1ms", &[("3", &["32"])])
        .await;
    app.expect(
        "{ kind = client } | max(duration) >= 150ms",
        &[("1", &["12", "14", "15"])],
    )
    .await;
    // Trace 2: 2 s + 1.5 s + 100 ms; trace 1: 1120 ms.
    app.expect("{ } | sum(duration) > 3s", &[("2", ALL2)]).await;
    app.expect("{ } | sum(span.retries) = 5", &[("2", ALL2)])
        .await;
    app.expect("{ } | avg(span.db.rows) > 20", &[("1", ALL1)])
        .await;
    app.expect(
        r#"{ resource.service.name = "payments" } | { kind = client }"#,
        &[("1", &["14", "15"])],
    )
    .await;
    app.expect(
        "{ } | count() > 2 | { status = error }",
        &[("1", &["13"]), ("2", &["23"])],
    )
    .await;
    app.expect(
        r#"({ kind = client } | count() > 2) && { name = "render" }"#,
        &[("1", &["12", "14", "15", "16"])],
    )
    .await;
}

#[tokio::test]
async fn by_groups_spans_into_spansets() {
    let app = App::new().await;
    app.expect_sets(
        "{ } | by(resource.service.name)",
        &[
            ("1", &[&["11", "12", "16"], &["13", "14", "15"]]),
            ("2", &[ALL2]),
            ("3", &[ALL3]),
        ],
    )
    .await;
    app.expect_sets(
        "{ } | by(resource.service.name) | count() > 2",
        &[
            ("1", &[&["11", "12", "16"], &["13", "14", "15"]]),
            ("2", &[ALL2]),
        ],
    )
    .await;
    // Spans without the attribute form a group of their own.
    app.expect_sets(
        "{ kind = client } | by(span.db.system)",
        &[("1", &[&["12"], &["14", "15"]]), ("3", &[&["32"]])],
    )
    .await;
    app.expect_sets(
        "{ } | by(status) | count() = 1",
        &[
            ("1", &[&["11"], &["13"]]),
            ("2", &[&["21"], &["22"], &["23"]]),
        ],
    )
    .await;
    // A spanset carries its aggregates...
    let v = app
        .search("{ kind = client } | count() > 2 | avg(duration) > 50ms", "")
        .await;
    assert_eq!(
        v["traces"][0]["spanSets"][0]["attributes"],
        json!([
            {"key": "count()", "value": {"intValue": "3"}},
            {"key": "avg(duration)", "value": {"doubleValue": 90_000_000.0}},
        ])
    );
    // ...and the value it was grouped by.
    let v = app
        .search(
            r#"{ trace:id = "22222222222222222222222222222222" } | by(resource.service.name)"#,
            "",
        )
        .await;
    assert_eq!(
        v["traces"][0]["spanSets"][0]["attributes"],
        json!([{"key": "by(resource.service.name)", "value": {"stringValue": "worker"}}])
    );
}

#[tokio::test]
async fn referenced_and_selected_attributes() {
    let app = App::new().await;
    let v = app
        .search(
            r#"{ name = "POST /pay" } | select(span.http.method, resource.region, event.exception.type, status)"#,
            "",
        )
        .await;
    assert_eq!(
        v["traces"][0]["spanSets"][0]["spans"][0]["attributes"],
        json!([
            {"key": "http.method", "value": {"stringValue": "POST"}},
            {"key": "region", "value": {"stringValue": "us"}},
            {"key": "exception.type", "value": {"stringValue": "CardError"}},
            {"key": "status", "value": {"stringValue": "error"}},
        ])
    );
    let v = app.search("{ span.http.status_code = 500 }", "").await;
    assert_eq!(
        v["traces"][0]["spanSets"][0]["spans"][0]["attributes"],
        json!([{"key": "http.status_code", "value": {"intValue": "500"}}])
    );
    // Only attributes the span has are returned.
    let v = app
        .search(
            r#"{ name = "auth" } | select(span.db.system, span.retries)"#,
            "",
        )
        .await;
    assert_eq!(
        v["traces"][0]["spanSets"][0]["spans"][0]["attributes"],
        json!([{"key": "retries", "value": {"intValue": "2"}}])
    );
}

#[tokio::test]
async fn response_shape() {
    let app = App::new().await;
    let v = app.search("{ span.http.status_code = 500 }", "").await;
    let t = &v["traces"][0];
    assert_eq!(v["traces"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(t["traceID"], trace_hex(1));
    assert_eq!(t["rootServiceName"], "frontend");
    assert_eq!(t["rootTraceName"], "GET /checkout");
    assert_eq!(t["startTimeUnixNano"], T.to_string());
    assert_eq!(t["durationMs"], 500);
    let set = &t["spanSets"][0];
    assert_eq!(set["matched"], 1);
    let s = &set["spans"][0];
    assert_eq!(s["spanID"], span_hex(0x13));
    assert_eq!(s["name"], "POST /pay");
    assert_eq!(s["startTimeUnixNano"], (T + 50 * MS).to_string());
    assert_eq!(s["durationNanos"], (300 * MS).to_string());
    assert_eq!(t["spanSet"], *set);
    assert!(v["metrics"]["inspectedTraces"].as_u64().is_some(), "{v}");
    assert!(v["metrics"]["inspectedBytes"].is_string(), "{v}");

    // A trace whose root has not arrived.
    let v = app.search(r#"{ name = "check db" }"#, "").await;
    let t = &v["traces"][0];
    assert_eq!(t["traceID"], trace_hex(3));
    assert_eq!(t["rootServiceName"], "<root span not yet received>");
    assert_eq!(t["rootTraceName"], "<root span not yet received>");
    assert_eq!(t["durationMs"], 1);
}

#[tokio::test]
async fn limit_spss_order_and_window() {
    let app = App::new().await;
    let ids = |v: &Value| -> Vec<String> {
        v["traces"]
            .as_array()
            .expect("traces")
            .iter()
            .map(|t| t["traceID"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Newest first.
    let v = app.search("{ }", "").await;
    assert_eq!(ids(&v), vec![trace_hex(3), trace_hex(2), trace_hex(1)]);
    let v = app.search("{ }", "&limit=1").await;
    assert_eq!(ids(&v), vec![trace_hex(3)]);
    // spss caps the spans of each spanset (earliest first); matched keeps the full count.
    let v = app
        .search(
            r#"{ trace:id = "11111111111111111111111111111111" }"#,
            "&spss=2",
        )
        .await;
    let set = &v["traces"][0]["spanSets"][0];
    assert_eq!(set["matched"], 6);
    assert_eq!(
        set["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .map(|s| s["spanID"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec![span_hex(0x11), span_hex(0x12)]
    );
    // Default spss: 3.
    let v = app
        .search(r#"{ trace:id = "11111111111111111111111111111111" }"#, "")
        .await;
    assert_eq!(
        v["traces"][0]["spanSets"][0]["spans"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let secs = T / 1_000_000_000;
    let v = app
        .search("{ }", &format!("&start={}&end={}", secs + 4, secs + 10))
        .await;
    assert_eq!(ids(&v), vec![trace_hex(3)]);
    let v = app
        .search("{ }", &format!("&start={}&end={}", secs - 100, secs - 10))
        .await;
    assert_eq!(ids(&v), Vec::<String>::new());
}

#[tokio::test]
async fn min_and_max_duration_are_span_conditions() {
    let app = App::new().await;
    let spans = |v: &Value| -> Vec<String> {
        v["traces"][0]["spanSets"][0]["spans"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s["spanID"].as_str().unwrap_or_default()[14..].to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let q = r#"{ resource.service.name = "payments" }"#;
    let v = app.search(q, "&minDuration=120ms").await;
    assert_eq!(spans(&v), vec!["13", "15"]);
    let v = app.search(q, "&maxDuration=120ms").await;
    assert_eq!(spans(&v), vec!["14"]);
    let v = app.search(q, "&minDuration=120ms&maxDuration=200ms").await;
    assert_eq!(spans(&v), vec!["15"]);
    let v = app.search(q, "&minDuration=1h").await;
    assert_eq!(v["traces"], json!([]));
}

#[tokio::test]
async fn parse_errors_are_400() {
    let app = App::new().await;
    assert_eq!(
        app.bad("{ .a = }", "").await,
        r#"invalid q "{ .a = }": TraceQL column 8: expected a value after "=", found "}""#
    );
    assert_eq!(
        app.bad("{ status = 500 }", "").await,
        r#"invalid q "{ status = 500 }": TraceQL column 12: expected ok, error or unset (with = or !=) to compare status with, found "500""#
    );
    assert!(app
        .bad("{ } | rate()", "")
        .await
        .contains("column 7: rate() is not supported"));
    assert!(app
        .bad(r#"{ name =~ "(" }"#, "")
        .await
        .contains("column 11: invalid regex"));
    assert!(app
        .bad("{ .a = 1", "")
        .await
        .ends_with(r#"column 9: expected "&&", "||" or "}" after "1", found end of query"#));
    assert_eq!(
        app.bad("{ }", "&tags=a%3Db").await,
        "tags and q cannot be combined: put the conditions in the TraceQL query (q)"
    );
    assert_eq!(
        app.bad("{ }", "&minDuration=2s&maxDuration=1s").await,
        "minDuration (2s) must not exceed maxDuration (1s)"
    );
}
