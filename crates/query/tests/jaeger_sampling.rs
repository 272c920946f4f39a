//! Jaeger remote sampling over real HTTP: the Jaeger router on 127.0.0.1:0, a strategies file
//! in a temporary directory that is rewritten to check the reload, and a plain HTTP/1.1
//! client over a TCP stream.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use sextant_query::jaeger::sampling::StrategyStore;
use sextant_query::jaeger::{router, router_with_sampling};
use sextant_query::QueryState;
use sextant_store::{SledStore, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn state(dir: &Path) -> QueryState {
    let store = Arc::new(SledStore::open(StoreConfig::new(dir.join("db"))).expect("open store"));
    QueryState::new(store, Arc::new(Registry::default()), "test")
}

/// Serves `router_with_sampling` with `store` (or `router` without one).
async fn serve(store: Option<Arc<StrategyStore>>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path());
    let app = match store {
        Some(store) => router_with_sampling(state, store),
        None => router(state),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { addr, _dir: dir }
}

/// `GET path` over a new connection: (status, content type, body).
async fn get(server: &Server, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, content_type, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

async fn get_json(server: &Server, path: &str) -> Value {
    let (status, content_type, body) = get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    serde_json::from_str(&body).expect("JSON body")
}

const STRATEGIES: &str = r#"{
  "service_strategies": [
    {"service": "foo", "type": "probabilistic", "param": 0.8,
     "operation_strategies": [{"operation": "op1", "type": "probabilistic", "param": 0.2}]},
    {"service": "bar", "type": "ratelimiting", "param": 5}
  ],
  "default_strategy": {"type": "probabilistic", "param": 0.5,
    "operation_strategies": [{"operation": "/health", "type": "probabilistic", "param": 0.0}]}
}"#;

fn write(path: &Path, text: &str, mtime_secs: u64) {
    std::fs::write(path, text).expect("write strategies");
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open strategies");
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs))
        .expect("set mtime");
}

#[tokio::test]
async fn strategies_from_a_file_on_both_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("strategies.json");
    write(&file, STRATEGIES, 1_000);
    let store = Arc::new(StrategyStore::open(&file).expect("strategies"));
    let server = serve(Some(store)).await;

    for prefix in ["/sampling", "/api/sampling"] {
        let foo = get_json(&server, &format!("{prefix}?service=foo")).await;
        assert_eq!(
            foo,
            json!({
                "strategyType": "PROBABILISTIC",
                "probabilisticSampling": {"samplingRate": 0.8},
                "operationSampling": {
                    "defaultSamplingProbability": 0.8,
                    "defaultLowerBoundTracesPerSecond": 0.0,
                    "perOperationStrategies": [
                        {"operation": "op1", "probabilisticSampling": {"samplingRate": 0.2}},
                        {"operation": "/health", "probabilisticSampling": {"samplingRate": 0.0}}
                    ],
                    "defaultUpperBoundTracesPerSecond": 0.0
                }
            }),
            "{prefix}"
        );
    }
    let bar = get_json(&server, "/sampling?service=bar").await;
    assert_eq!(bar["strategyType"], "RATE_LIMITING");
    assert_eq!(
        bar["rateLimitingSampling"],
        json!({"maxTracesPerSecond": 5})
    );
    assert!(bar.get("probabilisticSampling").is_none(), "{bar}");
    assert_eq!(
        bar["operationSampling"]["defaultSamplingProbability"],
        json!(0.5)
    );

    let unknown = get_json(&server, "/api/sampling?service=nobody").await;
    assert_eq!(unknown["strategyType"], "PROBABILISTIC");
    assert_eq!(unknown["probabilisticSampling"]["samplingRate"], json!(0.5));
    assert_eq!(
        unknown["operationSampling"]["perOperationStrategies"][0]["operation"],
        "/health"
    );
}

#[tokio::test]
async fn a_missing_or_repeated_service_is_a_400() {
    let server = serve(None).await;
    for (path, expected) in [
        ("/sampling", "'service' is required"),
        ("/api/sampling?other=1", "'service' is required"),
        ("/sampling?service=a&service=b", "given once"),
        ("/sampling?service=", "must not be empty"),
    ] {
        let (status, _, body) = get(&server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(expected), "{path}: {body}");
    }
}

#[tokio::test]
async fn without_a_file_every_service_gets_jaegers_default() {
    let server = serve(None).await;
    let body = get_json(&server, "/sampling?service=anything").await;
    assert_eq!(
        body,
        json!({"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 0.001}})
    );
}

#[tokio::test]
async fn the_file_is_reloaded_when_it_changes_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("strategies.json");
    write(&file, STRATEGIES, 1_000);
    let store = Arc::new(
        StrategyStore::open_with_interval(&file, Duration::from_millis(50)).expect("strategies"),
    );
    let server = serve(Some(store)).await;
    let rate = |v: &Value| v["probabilisticSampling"]["samplingRate"].clone();
    assert_eq!(
        rate(&get_json(&server, "/sampling?service=foo").await),
        json!(0.8)
    );

    write(
        &file,
        &STRATEGIES.replace("\"param\": 0.8", "\"param\": 0.3"),
        2_000,
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        rate(&get_json(&server, "/sampling?service=foo").await),
        json!(0.3)
    );

    write(&file, "{\"service_strategies\": [", 3_000);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        rate(&get_json(&server, "/api/sampling?service=foo").await),
        json!(0.3),
        "a broken file keeps the last good strategies"
    );

    write(
        &file,
        r#"{"service_strategies": [{"service": "foo", "type": "ratelimiting", "param": 9}]}"#,
        4_000,
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let foo = get_json(&server, "/sampling?service=foo").await;
    assert_eq!(foo["rateLimitingSampling"]["maxTracesPerSecond"], json!(9));
    // The new file has no default strategy: Jaeger's default again.
    assert_eq!(
        rate(&get_json(&server, "/sampling?service=bar").await),
        json!(0.001)
    );
}

#[test]
fn a_broken_file_at_start_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.json");
    write(
        &file,
        r#"{"service_strategies": [{"service": "foo", "type": "probabilistic", "param": 2}]}"#,
        1_000,
    );
    let e = StrategyStore::open(&file)
        .expect_err("a probability of 2")
        .to_string();
    assert!(
        e.contains("broken.json") && e.contains(r#"service_strategies[0] (service "foo")"#),
        "{e}"
    );
}
