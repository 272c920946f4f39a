//! TraceQL metrics (`/api/metrics/query_range`, `/api/metrics/query`) against a real
//! `SledStore` and the query server on a loopback port, over fixed spans whose expected
//! values are computed by hand.
//!
//! The spans, in a window `[base, base + 180s)` with `step=60s` (steps at base, +60, +120 and
//! the closing +180, as Tempo counts them):
//!
//! | trace | service | start | duration |
//! |---|---|---|---|
//! | 1 | api | +10s | 100 ms (error) |
//! | 1 | db | +20s | 300 ms |
//! | 2 | web | +65s | 1 s |
//! | 2 | api | +70s | 200 ms |
//! | 3 | web | +130s | 50 ms |
//! | 4 | api | -30s and +200s | outside the window |
//!
//! Log2 buckets of the durations (nanoseconds up to a power of two, in seconds): 50 ms ->
//! 0.067108864, 100 ms -> 0.134217728, 200 ms -> 0.268435456, 300 ms -> 0.536870912,
//! 1 s -> 1.073741824.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use sextant_otlp_proto::attr::kv_str;
use sextant_otlp_proto::proto::{Resource, ResourceSpans, ScopeSpans, Span, Status};
use sextant_query::{serve, QueryState};
use sextant_store::{SledStore, SpanWriter, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

struct Server {
    addr: SocketAddr,
    /// Unix seconds, a whole minute.
    base: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn span(trace: u8, id: u8, parent: u8, start: u64, duration: u64, status: i32) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace, id, 0, 0, 0, 0, 0, 1],
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            vec![trace, parent, 0, 0, 0, 0, 0, 1]
        },
        name: format!("op{id}"),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        status: Some(Status {
            code: status,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn rs(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SledStore::open(StoreConfig::new(dir.path().join("db"))).expect("open"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let base = (now - 3 * 3600) / 60 * 60;
        let t = |secs: i64| (base as i64 * S as i64 + secs * S as i64) as u64;
        let batches = vec![
            rs("api", vec![span(1, 1, 0, t(10), 100 * MS, 2)]),
            rs("db", vec![span(1, 2, 1, t(20), 300 * MS, 0)]),
            rs("web", vec![span(2, 1, 0, t(65), 1000 * MS, 0)]),
            rs("api", vec![span(2, 2, 1, t(70), 200 * MS, 0)]),
            rs("web", vec![span(3, 1, 0, t(130), 50 * MS, 0)]),
            rs(
                "api",
                vec![
                    span(4, 1, 0, t(-30), 10 * MS, 0),
                    span(4, 2, 1, t(200), 10 * MS, 0),
                ],
            ),
        ];
        let receipt = store
            .write(sextant_otlp_proto::SpanBatch::from_decoded(batches))
            .await
            .expect("write");
        assert_eq!(receipt.accepted_spans, 7);
        let state = QueryState::new(store, Arc::new(Registry::default()), "test");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            base,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// GET over a real connection: the status code and the body.
    async fn get(&self, path: &str, params: &[(&str, String)]) -> (u16, String) {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let mut conn = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let request = format!(
            "GET {path}?{} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
            query.join("&")
        );
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The window `[base, base + 180)` with a 60 s step, plus `extra`.
    fn window(&self, q: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("q", q.to_string()),
            ("start", self.base.to_string()),
            ("end", (self.base + 180).to_string()),
        ];
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        p
    }

    async fn range(&self, q: &str) -> Value {
        let (status, body) = self
            .get(
                "/api/metrics/query_range",
                &self.window(q, &[("step", "60")]),
            )
            .await;
        assert_eq!(status, 200, "{q}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"))
    }

    async fn bad(&self, path: &str, params: &[(&str, String)]) -> String {
        let (status, body) = self.get(path, params).await;
        assert_eq!(status, 400, "{params:?}: {body}");
        body
    }

    fn ms(&self, offset_secs: u64) -> String {
        ((self.base + offset_secs) * 1000).to_string()
    }

    /// `[(labels as {key: value}, [(offset secs, value)])]` of a range answer.
    fn series(&self, v: &Value) -> Vec<(Value, Vec<(u64, f64)>)> {
        v["series"]
            .as_array()
            .unwrap_or_else(|| panic!("no series: {v}"))
            .iter()
            .map(|s| {
                let mut labels = serde_json::Map::new();
                for l in s["labels"].as_array().expect("labels") {
                    labels.insert(
                        l["key"].as_str().expect("key").to_string(),
                        l["value"].clone(),
                    );
                }
                let samples = s["samples"]
                    .as_array()
                    .expect("samples")
                    .iter()
                    .map(|p| {
                        let ms: u64 = p["timestampMs"]
                            .as_str()
                            .expect("timestampMs is a string")
                            .parse()
                            .expect("ms");
                        // Tempo (jsonpb) leaves a zero value out.
                        let value = match p.get("value") {
                            None => 0.0,
                            Some(v) => v.as_f64().expect("value is a number"),
                        };
                        (ms / 1000 - self.base, value)
                    })
                    .collect();
                (Value::Object(labels), samples)
            })
            .collect()
    }
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn svc(name: &str) -> Value {
    json!({"resource.service.name": {"stringValue": name}})
}

#[tokio::test]
async fn count_and_rate_by_service() {
    let srv = Server::start().await;
    let v = srv
        .range("{ } | count_over_time() by (resource.service.name)")
        .await;
    assert_eq!(
        srv.series(&v),
        vec![
            (
                svc("api"),
                vec![(0, 1.0), (60, 1.0), (120, 0.0), (180, 0.0)]
            ),
            (svc("db"), vec![(0, 1.0), (60, 0.0), (120, 0.0), (180, 0.0)]),
            (
                svc("web"),
                vec![(0, 0.0), (60, 1.0), (120, 1.0), (180, 0.0)]
            ),
        ]
    );
    // Tempo's TimeSeries has no promLabels any more (the field is reserved in tempo.proto).
    assert_eq!(
        v["series"][0]["labels"],
        json!([{"key": "resource.service.name", "value": {"stringValue": "api"}}])
    );
    assert_eq!(v["series"][0].get("promLabels"), None);
    assert_eq!(v["series"][0]["samples"][0]["timestampMs"], srv.ms(0));
    assert!(v["metrics"]["inspectedTraces"].as_u64().is_some(), "{v}");

    let v = srv.range("{ } | rate() by (resource.service.name)").await;
    let s = srv.series(&v);
    assert_eq!(s[2].0, svc("web"));
    assert_eq!(
        s[2].1,
        vec![(0, 0.0), (60, 1.0 / 60.0), (120, 1.0 / 60.0), (180, 0.0)]
    );

    // Without by(): one series named after the function; the filter is pushed down.
    let v = srv
        .range(r#"{ resource.service.name = "web" } | rate()"#)
        .await;
    let s = srv.series(&v);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, json!({"__name__": {"stringValue": "rate"}}));
    assert_eq!(v["series"][0].get("promLabels"), None);
    assert_eq!(s[0].1[1], (60, 1.0 / 60.0));

    // Two by() fields, one of them an intrinsic.
    let v = srv
        .range("{ status = error } | count_over_time() by (resource.service.name, status)")
        .await;
    let s = srv.series(&v);
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].0,
        json!({"resource.service.name": {"stringValue": "api"}, "status": {"stringValue": "error"}})
    );
    assert_eq!(s[0].1[0], (0, 1.0));
}

#[tokio::test]
async fn min_max_and_quantiles_over_duration() {
    let srv = Server::start().await;
    let v = srv.range("{ } | min_over_time(duration)").await;
    assert_eq!(
        srv.series(&v),
        vec![(
            json!({"__name__": {"stringValue": "min_over_time"}}),
            vec![(0, 0.1), (60, 0.2), (120, 0.05)]
        )]
    );
    let v = srv
        .range("{ } | max_over_time(duration) by (resource.service.name)")
        .await;
    assert_eq!(
        srv.series(&v),
        vec![
            (svc("api"), vec![(0, 0.1), (60, 0.2)]),
            (svc("db"), vec![(0, 0.3)]),
            (svc("web"), vec![(60, 1.0), (120, 0.05)]),
        ]
    );

    let v = srv.range("{ } | quantile_over_time(duration, .5, 1)").await;
    assert_eq!(
        srv.series(&v),
        vec![
            (
                json!({"p": {"doubleValue": 0.5}}),
                vec![
                    (0, 0.134217728),
                    (60, 0.268435456),
                    (120, 0.067108864),
                    (180, 0.0)
                ]
            ),
            (
                json!({"p": {"doubleValue": 1.0}}),
                vec![
                    (0, 0.536870912),
                    (60, 1.073741824),
                    (120, 0.067108864),
                    (180, 0.0)
                ]
            ),
        ]
    );
    assert_eq!(v["series"][0].get("promLabels"), None);
}

#[tokio::test]
async fn histogram_buckets() {
    let srv = Server::start().await;
    let v = srv.range("{ } | histogram_over_time(duration)").await;
    let bucket = |b: f64| json!({"__bucket": {"doubleValue": b}});
    assert_eq!(
        srv.series(&v),
        vec![
            (
                bucket(0.067108864),
                vec![(0, 0.0), (60, 0.0), (120, 1.0), (180, 0.0)]
            ),
            (
                bucket(0.134217728),
                vec![(0, 1.0), (60, 0.0), (120, 0.0), (180, 0.0)]
            ),
            (
                bucket(0.268435456),
                vec![(0, 0.0), (60, 1.0), (120, 0.0), (180, 0.0)]
            ),
            (
                bucket(0.536870912),
                vec![(0, 1.0), (60, 0.0), (120, 0.0), (180, 0.0)]
            ),
            (
                bucket(1.073741824),
                vec![(0, 0.0), (60, 1.0), (120, 0.0), (180, 0.0)]
            ),
        ]
    );
    let v = srv
        .range("{ } | histogram_over_time(duration) by (resource.service.name)")
        .await;
    let labels: Vec<String> = v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            let pairs: Vec<String> = s["labels"]
                .as_array()
                .expect("labels")
                .iter()
                .map(|l| {
                    let v = l["value"].as_object().and_then(|o| o.values().next());
                    let text = match v {
                        Some(Value::String(t)) => t.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    format!("{}={text:?}", l["key"].as_str().expect("key"))
                })
                .collect();
            pairs.join(", ")
        })
        .collect();
    assert_eq!(
        labels,
        [
            r#"resource.service.name="web", __bucket="0.067108864""#,
            r#"resource.service.name="api", __bucket="0.134217728""#,
            r#"resource.service.name="api", __bucket="0.268435456""#,
            r#"resource.service.name="db", __bucket="0.536870912""#,
            r#"resource.service.name="web", __bucket="1.073741824""#,
        ]
    );
    // The bucket label comes after the by() labels.
    assert_eq!(v["series"][0]["labels"][1]["key"], "__bucket");
}

#[tokio::test]
async fn instant_query_gives_one_value_per_series() {
    let srv = Server::start().await;
    let (status, body) = srv
        .get(
            "/api/metrics/query",
            &srv.window("{ } | count_over_time() by (resource.service.name)", &[]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let got: Vec<(Value, f64)> = v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            (
                s["labels"][0]["value"].clone(),
                s.get("value")
                    .map_or(0.0, |v| v.as_f64().expect("value is a number")),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (json!({"stringValue": "api"}), 2.0),
            (json!({"stringValue": "db"}), 1.0),
            (json!({"stringValue": "web"}), 2.0),
        ]
    );
    assert!(v["series"][0].get("samples").is_none(), "{v}");

    let (status, body) = srv
        .get("/api/metrics/query", &srv.window("{ } | rate()", &[]))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["series"][0]["value"].as_f64(), Some(5.0 / 180.0), "{v}");
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let srv = Server::start().await;
    let range = "/api/metrics/query_range";
    let body = srv.bad(range, &[]).await;
    assert!(
        body.starts_with(r#"invalid q "": a TraceQL metrics query is required"#),
        "{body}"
    );
    let body = srv.bad(range, &srv.window("{ } | rate(", &[])).await;
    assert!(
        body.starts_with(r#"invalid q "{ } | rate(": TraceQL column 12: expected ")""#),
        "{body}"
    );
    let body = srv.bad(range, &srv.window("{ .a = 1 }", &[])).await;
    assert!(body.contains("a metrics function such as rate()"), "{body}");
    let body = srv
        .bad(range, &srv.window("{ } | rate()", &[("step", "abc")]))
        .await;
    assert!(
        body.starts_with(r#"invalid step "abc": expected seconds"#),
        "{body}"
    );
    let body = srv
        .bad(range, &srv.window("{ } | rate()", &[("step", "0.0001")]))
        .await;
    assert!(body.contains("more than 11000"), "{body}");
    let body = srv
        .bad(
            "/api/metrics/query",
            &[
                ("q", "{ } | rate()".to_string()),
                ("start", "later".to_string()),
            ],
        )
        .await;
    assert!(body.starts_with(r#"invalid start "later""#), "{body}");
    // A search endpoint refuses a metrics query, saying where it belongs.
    let body = srv
        .bad("/api/search", &[("q", "{ } | rate()".to_string())])
        .await;
    assert!(body.contains("/api/metrics/query_range"), "{body}");
}
