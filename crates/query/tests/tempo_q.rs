//! `q` on the Tempo API (tag names and values filtered by a possibly incomplete query, trace by
//! id filtered by a spanset filter) and the v2 tag scopes, against a real `SledStore` in a
//! temporary directory served by the real query server on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use prost::Message;
use serde_json::{json, Value};
use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::span::{Event, Link};
use sextant_otlp_proto::proto::{
    InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_otlp_proto::{SpanBatch, TraceId};
use sextant_query::tempo::traces::{
    TraceByIdResponse, FILTERED_MESSAGE, STATUS_COMPLETE, STATUS_PARTIAL,
};
use sextant_query::{serve, QueryState};
use sextant_store::{SledStore, SpanWriter, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T1: &str = "0af7651916cd43dd8448eb211c80319c";
const T2: &str = "5b8efff798038103d269b633813fc60c";
const T3: &str = "00000000000000000000000000000abc";
const MS: u64 = 1_000_000;

struct Spec<'a> {
    trace: &'a str,
    id: u64,
    parent: u64,
    name: &'a str,
    kind: i32,
    start: u64,
    attributes: Vec<KeyValue>,
    status: i32,
}

fn span(s: Spec<'_>) -> Span {
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
        end_time_unix_nano: s.start + 10 * MS,
        attributes: s.attributes,
        status: Some(Status {
            code: s.status,
            message: if s.status == 2 {
                "boom".to_string()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

fn resource_spans(service: &str, scope_attrs: Vec<KeyValue>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service), kv_str("host.name", "h1")],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "test".into(),
                version: "1".into(),
                attributes: scope_attrs,
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The query server over a store holding:
/// * T1 (`api`, scope attribute `lib.lang`): `GET /users` (1, error, an `exception` event
///   with `exception.type`) > `SELECT users` (2, `db.system`) > `fetch row` (3, `db.rows`);
/// * T2 (`web`): `GET /` (4, ok, a link with `link.reason`);
/// * T3 (`api`): `POST /orders` (5).
struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SledStore::open(StoreConfig::new(dir.path().join("db"))).expect("open"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64;
        let t1 = now - 30_000 * MS;
        let t2 = now - 20_000 * MS;
        let t3 = now - 10_000 * MS;
        let mut root = span(Spec {
            trace: T1,
            id: 1,
            parent: 0,
            name: "GET /users",
            kind: 2,
            start: t1,
            attributes: vec![
                kv_str("http.method", "GET"),
                kv_int("http.status_code", 500),
            ],
            status: 2,
        });
        root.events.push(Event {
            time_unix_nano: t1 + MS,
            name: "exception".into(),
            attributes: vec![kv_str("exception.type", "Timeout")],
            ..Default::default()
        });
        let a = resource_spans(
            "api",
            vec![kv_str("lib.lang", "rust")],
            vec![
                root,
                span(Spec {
                    trace: T1,
                    id: 2,
                    parent: 1,
                    name: "SELECT users",
                    kind: 3,
                    start: t1 + MS,
                    attributes: vec![kv_str("db.system", "postgres")],
                    status: 0,
                }),
                span(Spec {
                    trace: T1,
                    id: 3,
                    parent: 2,
                    name: "fetch row",
                    kind: 1,
                    start: t1 + 2 * MS,
                    attributes: vec![kv_int("db.rows", 3)],
                    status: 0,
                }),
            ],
        );
        let mut web = span(Spec {
            trace: T2,
            id: 4,
            parent: 0,
            name: "GET /",
            kind: 2,
            start: t2,
            attributes: vec![
                kv_str("http.method", "GET"),
                kv_int("http.status_code", 200),
            ],
            status: 1,
        });
        web.links.push(Link {
            trace_id: TraceId::parse_hex(T1).expect("id").as_bytes().to_vec(),
            span_id: 1u64.to_be_bytes().to_vec(),
            attributes: vec![kv_str("link.reason", "retry")],
            ..Default::default()
        });
        let b = resource_spans("web", Vec::new(), vec![web]);
        let c = resource_spans(
            "api",
            Vec::new(),
            vec![span(Spec {
                trace: T3,
                id: 5,
                parent: 0,
                name: "POST /orders",
                kind: 2,
                start: t3,
                attributes: vec![
                    kv_str("http.method", "POST"),
                    kv_int("http.status_code", 201),
                ],
                status: 0,
            })],
        );
        let receipt = store
            .write(SpanBatch::from_decoded(vec![a, b]))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, 4);
        let receipt = store
            .write(SpanBatch::from_decoded(vec![c]))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, 1);

        let state = QueryState::new(store, Arc::new(Registry::default()), "9.9.9-test");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop,
            task,
            _dir: dir,
        }
    }

    /// One HTTP/1.1 GET: status, content type and body.
    async fn get(&self, target: &str, accept: Option<&str>) -> (u16, String, Vec<u8>) {
        let mut conn = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.expect("read");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut content_type = String::new();
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.to_string();
            }
            if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            body = dechunk(&body);
        }
        (status, content_type, body)
    }

    /// GET expecting 200 and JSON.
    async fn json(&self, target: &str) -> Value {
        let (status, content_type, body) = self.get(target, None).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{target}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{target}: {content_type}"
        );
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{target}: {e}: {text}"))
    }

    /// GET expecting a 400 with a text body.
    async fn bad_request(&self, target: &str) -> String {
        let (status, content_type, body) = self.get(target, None).await;
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(status, 400, "{target}: {text}");
        assert!(
            content_type.starts_with("text/plain"),
            "{target}: {content_type}"
        );
        text
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("server task");
        assert!(result.is_ok(), "{result:?}");
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 2 + size + 2..];
    }
    out
}

/// Percent-encodes a query-string value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn values_uri(tag: &str, q: &str) -> String {
    format!("/api/v2/search/tag/{tag}/values?q={}", enc(q))
}

fn strings(values: &[&str]) -> Value {
    Value::Array(
        values
            .iter()
            .map(|v| json!({"type": "string", "value": v}))
            .collect(),
    )
}

#[tokio::test]
async fn tag_values_filtered_by_a_complete_q() {
    let s = Server::start().await;
    let v = s
        .json(&values_uri(
            "span.http.method",
            r#"{ resource.service.name = "api" }"#,
        ))
        .await;
    assert_eq!(v, json!({"tagValues": strings(&["GET", "POST"])}));
    let v = s
        .json(&values_uri(
            "span.http.method",
            r#"{ resource.service.name = "web" }"#,
        ))
        .await;
    assert_eq!(v, json!({"tagValues": strings(&["GET"])}));
    let v = s
        .json(&values_uri(
            "resource.service.name",
            r#"{ span.http.method = "POST" }"#,
        ))
        .await;
    assert_eq!(v, json!({"tagValues": strings(&["api"])}));
    // Typed values, conditions on intrinsics, several conditions.
    let v = s
        .json(&values_uri(
            "span.http.status_code",
            r#"{ resource.service.name = "api" && kind = server }"#,
        ))
        .await;
    assert_eq!(
        v,
        json!({"tagValues": [{"type": "int", "value": "201"}, {"type": "int", "value": "500"}]})
    );
    // Intrinsics are found on the matching spans.
    let v = s
        .json(&values_uri("name", r#"{ resource.service.name = "api" }"#))
        .await;
    assert_eq!(
        v,
        json!({"tagValues": strings(&["GET /users", "POST /orders", "SELECT users", "fetch row"])})
    );
    let v = s
        .json(&values_uri(
            "status",
            r#"{ resource.service.name = "api" }"#,
        ))
        .await;
    assert_eq!(
        v,
        json!({"tagValues": [
            {"type": "keyword", "value": "error"},
            {"type": "keyword", "value": "unset"}
        ]})
    );
    let v = s
        .json(&values_uri("statusMessage", r#"{ .http.method = "GET" }"#))
        .await;
    assert_eq!(v, json!({"tagValues": strings(&["boom"])}));
    // The values of the matching spans only, not of their traces' other spans.
    let v = s
        .json(&values_uri("span.db.system", r#"{ kind = server }"#))
        .await;
    assert_eq!(v, json!({"tagValues": []}));
    // Unscoped tags look at span and resource attributes.
    let v = s
        .json(&values_uri(
            ".service.name",
            r#"{ span.http.status_code >= 500 }"#,
        ))
        .await;
    assert_eq!(v, json!({"tagValues": strings(&["api"])}));
    // Event attributes, which the store does not index, with and without q.
    let v = s
        .json("/api/v2/search/tag/event.exception.type/values")
        .await;
    assert_eq!(v, json!({"tagValues": strings(&["Timeout"])}));
    let v = s
        .json(&values_uri(
            "event.exception.type",
            r#"{ resource.service.name = "web" }"#,
        ))
        .await;
    assert_eq!(v, json!({"tagValues": []}));
    // limit caps the answer; start and end bound the scan.
    let v = s
        .json(&format!(
            "{}&limit=1",
            values_uri("span.http.method", r#"{ resource.service.name = "api" }"#)
        ))
        .await;
    assert_eq!(v["tagValues"].as_array().map(Vec::len), Some(1));
    let v = s
        .json(&format!(
            "{}&start=1000&end=2000",
            values_uri("span.http.method", r#"{ resource.service.name = "api" }"#)
        ))
        .await;
    assert_eq!(v, json!({"tagValues": []}));
    let text = s
        .bad_request(&format!(
            "{}&limit=many",
            values_uri("span.http.method", "{}")
        ))
        .await;
    assert!(text.starts_with("invalid limit \"many\""), "{text}");
    let text = s
        .bad_request(&format!(
            "{}&start=soon",
            values_uri("span.http.method", "{}")
        ))
        .await;
    assert!(text.starts_with("invalid start \"soon\""), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn tag_values_filtered_by_an_incomplete_q() {
    let s = Server::start().await;
    // What Grafana sends while the user picks the method: the last condition is unfinished.
    for q in [
        r#"{ resource.service.name = "web" && span.http.method = "#,
        r#"{ resource.service.name = "web" && span.http.method = }"#,
        r#"{ resource.service.name="web" && span.http.method=~"G"#,
        r#"{ resource.service.name = "web" && span. }"#,
        r#"{ resource.service.name = "web" && "#,
    ] {
        let v = s.json(&values_uri("span.http.method", q)).await;
        assert_eq!(v, json!({"tagValues": strings(&["GET"])}), "{q}");
    }
    let v = s
        .json(&values_uri(
            "span.http.status_code",
            r#"{ resource.service.name = "api" && span.http.method = "POST" && name = "#,
        ))
        .await;
    assert_eq!(v, json!({"tagValues": [{"type": "int", "value": "201"}]}));
    // Nothing complete, or conditions that are alternatives: every value, as without q.
    let all = json!({"tagValues": strings(&["GET", "POST"])});
    for q in [
        "{ span.http.method = ",
        "{",
        "{ }",
        r#"{ resource.service.name = "web" || span.http.status_code = 201 }"#,
        r#"{ resource.service.name = "web" } && { span.http.method = "#,
        "not traceql",
    ] {
        let v = s.json(&values_uri("span.http.method", q)).await;
        assert_eq!(v, all, "{q}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_q_naming_an_absent_attribute_gives_no_values() {
    let s = Server::start().await;
    for q in [
        r#"{ span.no.such.attribute = "x" }"#,
        r#"{ resource.service.name = "nope" && span.http.method = "#,
        r#"{ resource.http.method = "GET" }"#,
    ] {
        let v = s.json(&values_uri("span.http.method", q)).await;
        assert_eq!(v, json!({"tagValues": []}), "{q}");
        let v = s.json(&values_uri("name", q)).await;
        assert_eq!(v, json!({"tagValues": []}), "{q}");
    }
    let v = s
        .json(&format!(
            "/api/v2/search/tags?q={}",
            enc(r#"{ span.no.such.attribute = "x" }"#)
        ))
        .await;
    assert_eq!(v["scopes"][0], json!({"name": "resource", "tags": []}));
    assert_eq!(v["scopes"][1], json!({"name": "span", "tags": []}));
    s.stop().await;
}

fn scope<'v>(answer: &'v Value, name: &str) -> Option<&'v Value> {
    answer["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| &s["tags"])
}

#[tokio::test]
async fn v2_tags_by_scope() {
    let s = Server::start().await;
    let v = s.json("/api/v2/search/tags?scope=event").await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "event", "tags": ["exception.type"]}]})
    );
    let v = s.json("/api/v2/search/tags?scope=link").await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "link", "tags": ["link.reason"]}]})
    );
    let v = s.json("/api/v2/search/tags?scope=instrumentation").await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "instrumentation", "tags": ["lib.lang"]}]})
    );
    let v = s.json("/api/v2/search/tags?scope=resource").await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "resource", "tags": ["host.name", "service.name"]}]})
    );
    let v = s.json("/api/v2/search/tags").await;
    let names: Vec<&str> = v["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        vec![
            "resource",
            "span",
            "event",
            "link",
            "instrumentation",
            "intrinsic"
        ]
    );
    assert_eq!(
        scope(&v, "span"),
        Some(&json!([
            "db.rows",
            "db.system",
            "http.method",
            "http.status_code"
        ]))
    );
    assert!(scope(&v, "intrinsic")
        .and_then(Value::as_array)
        .is_some_and(|t| t.contains(&json!("statusMessage"))));

    // Filtered by q, complete or not: the names on the matching spans.
    let v = s
        .json(&format!(
            "/api/v2/search/tags?scope=span&q={}",
            enc(r#"{ resource.service.name = "web" && span.http.method = "#)
        ))
        .await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "span", "tags": ["http.method", "http.status_code"]}]})
    );
    let v = s
        .json(&format!(
            "/api/v2/search/tags?q={}",
            enc(r#"{ resource.service.name = "web" }"#)
        ))
        .await;
    let names: Vec<&str> = v["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["resource", "span", "link", "intrinsic"]);
    assert_eq!(scope(&v, "link"), Some(&json!(["link.reason"])));
    let v = s
        .json(&format!(
            "/api/v2/search/tags?scope=event&q={}",
            enc(r#"{ resource.service.name = "web" }"#)
        ))
        .await;
    assert_eq!(v, json!({"scopes": [{"name": "event", "tags": []}]}));
    let v = s
        .json(&format!(
            "/api/v2/search/tags?scope=span&q={}",
            enc("{ kind = client }")
        ))
        .await;
    assert_eq!(
        v,
        json!({"scopes": [{"name": "span", "tags": ["db.system"]}]})
    );

    // v1 knows the scanned scopes too.
    let v = s.json("/api/search/tags?scope=link").await;
    assert_eq!(v, json!({"tagNames": ["link.reason"]}));
    let text = s.bad_request("/api/v2/search/tags?scope=trace").await;
    assert!(text.starts_with("unknown scope \"trace\""), "{text}");
    s.stop().await;
}

/// The span ids of a v2 trace answer, in order.
fn span_ids(answer: &Value) -> Vec<String> {
    answer["trace"]["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().expect("scopeSpans").iter())
        .flat_map(|ss| ss["spans"].as_array().expect("spans").iter())
        .map(|s| s["spanId"].as_str().expect("spanId").to_string())
        .collect()
}

fn id(n: u64) -> String {
    format!("{n:016x}")
}

#[tokio::test]
async fn v2_trace_by_id_with_q() {
    let s = Server::start().await;
    let uri = |q: &str, extra: &str| format!("/api/v2/traces/{T1}?q={}{extra}", enc(q));

    // Without q (or with a blank one): the whole trace, no status.
    for target in [format!("/api/v2/traces/{T1}"), uri(" ", "")] {
        let v = s.json(&target).await;
        assert_eq!(span_ids(&v), vec![id(1), id(2), id(3)], "{target}");
        assert!(v.get("status").is_none(), "{target}: {v}");
        assert!(v.get("message").is_none(), "{target}: {v}");
    }

    // Only the matching spans, flagged as partial, in Tempo's shape.
    let v = s.json(&uri(r#"{ span.db.system = "postgres" }"#, "")).await;
    assert_eq!(span_ids(&v), vec![id(2)]);
    assert_eq!(v["status"], "PARTIAL");
    assert_eq!(v["message"], FILTERED_MESSAGE);
    let rs = &v["trace"]["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0],
        json!({"key": "service.name", "value": {"stringValue": "api"}})
    );
    assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "test");
    let span = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], T1);
    assert_eq!(span["parentSpanId"], id(1));
    assert_eq!(span["name"], "SELECT users");
    assert!(span["startTimeUnixNano"].is_string(), "{span}");

    // The hierarchy around the matches.
    let cases = [
        ("", vec![id(2)]),
        ("&keep_hierarchy=true", vec![id(1), id(2)]),
        ("&keep_hierarchy=true&ancestor_depth=0", vec![id(2)]),
        ("&keep_hierarchy=false&ancestor_depth=-5", vec![id(2)]),
        ("&match_depth=1", vec![id(2), id(3)]),
        (
            "&match_depth=-1&keep_hierarchy=1",
            vec![id(1), id(2), id(3)],
        ),
    ];
    for (extra, want) in cases {
        let v = s.json(&uri(r#"{ name = "SELECT users" }"#, extra)).await;
        assert_eq!(span_ids(&v), want, "{extra}");
    }
    let v = s.json(&uri("{ kind = server }", "&match_depth=-1")).await;
    assert_eq!(span_ids(&v), vec![id(1), id(2), id(3)]);
    assert!(v.get("status").is_none(), "every span kept: complete: {v}");
    let v = s.json(&uri("{ }", "")).await;
    assert_eq!(span_ids(&v), vec![id(1), id(2), id(3)]);
    assert!(v.get("status").is_none(), "{v}");

    // Events and instrumentation scope are looked at.
    let v = s
        .json(&uri(r#"{ event.exception.type = "Timeout" }"#, ""))
        .await;
    assert_eq!(span_ids(&v), vec![id(1)]);
    let v = s
        .json(&uri(
            r#"{ instrumentation.lib.lang = "rust" && span.db.rows > 1 }"#,
            "",
        ))
        .await;
    assert_eq!(span_ids(&v), vec![id(3)]);

    // A trace that is there but has no matching span: found, empty, partial.
    let v = s.json(&uri(r#"{ span.http.method = "PUT" }"#, "")).await;
    assert_eq!(span_ids(&v), Vec::<String>::new());
    assert_eq!(v["status"], "PARTIAL");
    // An absent trace is still 404, q or not.
    let (status, _, _) = s
        .get(
            &format!("/api/v2/traces/{}?q={}", "1".repeat(32), enc("{ }")),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Protobuf: Tempo's TraceByIDResponse with status and message.
    let (status, content_type, body) = s
        .get(
            &uri(r#"{ name = "fetch row" }"#, ""),
            Some("application/protobuf"),
        )
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/protobuf")
    );
    let answer = TraceByIdResponse::decode(body.as_slice()).expect("TraceByIdResponse");
    assert_eq!(answer.status, STATUS_PARTIAL);
    assert_eq!(answer.message, FILTERED_MESSAGE);
    let trace = answer.trace.expect("trace");
    let spans: Vec<&Span> = trace
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "fetch row");
    let (_, _, body) = s
        .get(
            &format!("/api/v2/traces/{T2}"),
            Some("application/protobuf"),
        )
        .await;
    let answer = TraceByIdResponse::decode(body.as_slice()).expect("TraceByIdResponse");
    assert_eq!(answer.status, STATUS_COMPLETE);
    assert_eq!(answer.message, "");

    // What Tempo refuses is a 400 that says why.
    let refused = [
        ("{ .a = }", "TraceQL column 8: expected a value"),
        ("{ } | count() > 1", "only a single spanset filter"),
        ("{ .a = 1 } && { .b = 2 }", "only a single spanset filter"),
        (
            r#"{ trace:rootName = "GET /users" }"#,
            "trace:rootName is not supported on trace by id",
        ),
        ("{ trace:duration > 1s }", "trace:duration is not supported"),
    ];
    for (q, want) in refused {
        let text = s.bad_request(&uri(q, "")).await;
        assert!(text.starts_with(&format!("invalid q {q:?}")), "{q}: {text}");
        assert!(text.contains(want), "{q}: {text}");
    }
    let text = s.bad_request(&uri("{ }", "&match_depth=-2")).await;
    assert!(text.starts_with("invalid match_depth \"-2\""), "{text}");
    let text = s
        .bad_request(&uri("{ }", "&keep_hierarchy=true&ancestor_depth=x"))
        .await;
    assert!(text.starts_with("invalid ancestor_depth \"x\""), "{text}");
    let text = s.bad_request(&uri("{ }", "&keep_hierarchy=yes")).await;
    assert!(text.starts_with("invalid keep_hierarchy \"yes\""), "{text}");
    // Without q the filter parameters are not read.
    let v = s.json(&format!("/api/v2/traces/{T1}?match_depth=-9")).await;
    assert_eq!(span_ids(&v).len(), 3);
    // v1 has no filter: q is not applied there.
    let v = s
        .json(&format!("/api/traces/{T1}?q={}", enc("{ name = \"x\" }")))
        .await;
    assert_eq!(
        v["batches"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    s.stop().await;
}
