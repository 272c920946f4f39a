//! End-to-end: two in-process axum services instrumented with the SDK export
//! to the real `sextant all-in-one` (frontend over OTLP/gRPC, backend over
//! OTLP/HTTP), and the trace is read back from the Tempo API.
//! Plus: a collector that is down never blocks the application.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::Value;
use sextant_sdk::{ClientLayer, Protocol, Sdk, SextantLayer};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn sextant_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SEXTANT_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    // target/debug/deps/e2e-* → target/debug/sextant (honours CARGO_TARGET_DIR).
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("sextant");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "sextant-cli"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p sextant-cli");
        assert!(status.success(), "cargo build -p sextant-cli failed");
    }
    bin
}

/// A running all-in-one; killed (and its data dir removed) on drop.
struct AllInOne {
    child: Child,
    grpc: String,
    http: String,
    query: String,
    _dir: tempfile::TempDir,
}

impl AllInOne {
    fn start() -> AllInOne {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(sextant_bin())
            .arg("all-in-one")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--otlp-grpc-addr", "127.0.0.1:0"])
            .args(["--otlp-http-addr", "127.0.0.1:0"])
            .args(["--query-addr", "127.0.0.1:0"])
            .args(["--jaeger-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sextant all-in-one");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                }
            }
        });
        let mut me = AllInOne {
            child,
            grpc: String::new(),
            http: String::new(),
            query: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("sextant all-in-one did not print `ready` in time");
            let addr = |prefix: &str| line.strip_prefix(prefix).map(|a| a.trim().to_string());
            if let Some(a) = addr("otlp-grpc listening on ") {
                me.grpc = a;
            } else if let Some(a) = addr("otlp-http listening on ") {
                me.http = a;
            } else if let Some(a) = addr("query listening on ") {
                me.query = a;
            } else if line.trim() == "ready" {
                break;
            }
        }
        assert!(!me.grpc.is_empty() && !me.http.is_empty() && !me.query.is_empty());
        me
    }
}

impl Drop for AllInOne {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
struct Frontend {
    client: reqwest::Client,
    backend: String,
    outgoing: ClientLayer,
}

async fn checkout(State(f): State<Frontend>) -> String {
    let cx = Context::current();
    let url = format!("{}/api/items/42", f.backend);
    let span = f.outgoing.start_span(&cx, &http::Method::GET, &url);
    let resp = f
        .client
        .get(&url)
        .headers(span.headers())
        .send()
        .await
        .expect("call backend");
    span.end(resp.status().as_u16());
    let body = resp.text().await.unwrap();
    format!("{:032x} {body}", cx.span().span_context().trace_id())
}

async fn item(Path(id): Path<u32>) -> String {
    format!("item {id}")
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_across_two_services_reaches_sextant() {
    let sextant = AllInOne::start();

    let frontend_sdk = Sdk::builder()
        .with_vars([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", sextant.grpc),
            ),
            ("ENVIRONMENT", "production".to_string()),
        ])
        .service_name("frontend")
        .sample_ratio(1.0)
        .build()
        .unwrap();
    let backend_sdk = Sdk::builder()
        .with_vars([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", sextant.http),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
            ("APP_VERSION", "9.9.9".to_string()),
        ])
        .service_name("backend")
        .build()
        .unwrap();
    assert_eq!(backend_sdk.config.protocol, Protocol::HttpProtobuf);

    let backend = serve(
        Router::new().route("/api/items/{id}", get(item)).layer(
            SextantLayer::new()
                .with_tracer(backend_sdk.provider.tracer("backend"))
                .with_propagator(TraceContextPropagator::new()),
        ),
    )
    .await;
    let frontend = serve(
        Router::new()
            .route("/checkout", get(checkout))
            .with_state(Frontend {
                client: reqwest::Client::new(),
                backend,
                outgoing: ClientLayer::new()
                    .with_tracer(frontend_sdk.provider.tracer("frontend"))
                    .with_propagator(TraceContextPropagator::new()),
            })
            .layer(
                SextantLayer::new()
                    .with_tracer(frontend_sdk.provider.tracer("frontend"))
                    .with_propagator(TraceContextPropagator::new()),
            ),
    )
    .await;

    let resp = reqwest::Client::new()
        .get(format!("{frontend}/checkout"))
        .header("x-correlation-id", "e2e-corr")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-correlation-id"], "e2e-corr");
    let body = resp.text().await.unwrap();
    let (trace_id, rest) = body.split_once(' ').unwrap();
    assert_eq!(rest, "item 42");
    assert_eq!(trace_id.len(), 32);

    let (fp, bp) = (frontend_sdk.provider.clone(), backend_sdk.provider.clone());
    blocking(move || {
        fp.force_flush().unwrap();
        bp.force_flush().unwrap();
    })
    .await;

    // Read the trace back.
    let url = format!("http://{}/api/traces/{trace_id}", sextant.query);
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans: Vec<(String, Value)> = loop {
        let r = reqwest::get(&url).await.unwrap();
        if r.status() == 200 {
            let doc: Value = r.json().await.unwrap();
            let mut spans = Vec::new();
            for batch in doc["batches"].as_array().unwrap() {
                let service = attr(&batch["resource"]["attributes"], "service.name")
                    .and_then(|v| v["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_string();
                for ss in batch["scopeSpans"].as_array().unwrap() {
                    for s in ss["spans"].as_array().unwrap() {
                        spans.push((service.clone(), s.clone()));
                    }
                }
            }
            if spans.len() >= 3 {
                break spans;
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} not complete in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let find = |service: &str, kind: i64| {
        spans
            .iter()
            .find(|(svc, s)| svc == service && s["kind"].as_i64() == Some(kind))
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no kind {kind} span of {service}: {spans:#?}"))
    };
    let front_server = find("frontend", 2);
    let front_client = find("frontend", 3);
    let back_server = find("backend", 2);
    for s in [&front_server, &front_client, &back_server] {
        assert_eq!(s["traceId"], trace_id);
    }
    assert_eq!(front_server["name"], "GET /checkout");
    assert!(front_server.get("parentSpanId").is_none_or(|p| p == ""));
    assert_eq!(front_client["parentSpanId"], front_server["spanId"]);
    assert_eq!(back_server["parentSpanId"], front_client["spanId"]);
    assert_eq!(back_server["name"], "GET /api/items/{id}");
    assert_eq!(
        attr(&back_server["attributes"], "http.route").unwrap()["stringValue"],
        "/api/items/{id}"
    );
    assert_eq!(
        attr(&front_server["attributes"], "correlation.id").unwrap()["stringValue"],
        "e2e-corr"
    );
    // The frontend's client call carried the correlation id to the backend.
    assert_eq!(
        attr(&back_server["attributes"], "correlation.id").unwrap()["stringValue"],
        "e2e-corr"
    );

    let (fp, bp) = (frontend_sdk.provider, backend_sdk.provider);
    blocking(move || {
        fp.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
        bp.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
    })
    .await;
    drop(sextant);
}

/// Where the collector is "down".
#[derive(Clone, Copy, Debug)]
enum Down {
    /// Nobody listens: connections are refused.
    ClosedPort,
    /// Connections are accepted and never answered.
    BlackHole,
}

fn dead_collector(kind: Down) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    match kind {
        Down::ClosedPort => drop(l),
        Down::BlackHole => {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for conn in l.incoming() {
                    held.push(conn);
                }
            });
        }
    }
    port
}

/// A blocked application may not even let a timeout fire (all runtime
/// workers stuck): a thread fails the whole test binary instead of hanging.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn new(what: String, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{what}: still running after {limit:?}: the application is blocked");
                std::process::exit(101);
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

async fn app_against_dead_collector(protocol: &str, kind: Down) {
    let _watchdog = Watchdog::new(format!("{protocol} {kind:?}"), Duration::from_secs(60));
    let port = dead_collector(kind);
    let sdk = Sdk::builder()
        .with_vars([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".to_string()),
        ])
        .service_name("lonely")
        .batch_delay(Duration::from_millis(50))
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/ping", get(|| async { "pong" }))
            .layer(
                SextantLayer::new()
                    .with_tracer(sdk.provider.tracer("lonely"))
                    .with_propagator(TraceContextPropagator::new()),
            ),
    )
    .await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..300 {
        let t = Instant::now();
        let r = client.get(format!("{base}/ping")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t.elapsed());
        // Fail at the first slow request rather than after 300 of them.
        assert!(
            slowest < Duration::from_millis(750),
            "{protocol} {kind:?}: slowest request {slowest:?}"
        );
    }
    let total = started.elapsed();
    assert!(
        total < Duration::from_secs(10),
        "{protocol} {kind:?}: 300 requests took {total:?}"
    );

    let provider = sdk.provider;
    let t = Instant::now();
    let _ = blocking(move || provider.shutdown_with_timeout(Duration::from_secs(2))).await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "{protocol} {kind:?}: shutdown took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_never_blocks_grpc() {
    app_against_dead_collector("grpc", Down::ClosedPort).await;
    app_against_dead_collector("grpc", Down::BlackHole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_never_blocks_http() {
    app_against_dead_collector("http/protobuf", Down::ClosedPort).await;
    app_against_dead_collector("http/protobuf", Down::BlackHole).await;
}

/// `cargo test --test e2e` does not build the examples: make sure they are fresh
/// (a no-op when they are).
fn build_examples() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "sextant-sdk", "--examples"])
            .current_dir(workspace_root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run cargo build --examples");
        assert!(
            status.success(),
            "cargo build -p sextant-sdk --examples failed"
        );
    });
}

/// A running example; interrupted (graceful shutdown, final flush) on drop.
struct Example {
    child: Child,
    addr: String,
}

impl Example {
    fn start(name: &str, env: &[(&str, String)]) -> Example {
        let dir = std::env::current_exe().unwrap();
        let bin = dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples")
            .join(name);
        build_examples();
        let mut cmd = Command::new(&bin);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("OTEL_PROPAGATORS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("example {name} did not start"));
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("listening"))
                {
                    break v["addr"].as_str().unwrap().to_string();
                }
            }
        };
        Example { child, addr }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The three examples, as separate processes: one trace spans all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_make_one_trace() {
    let sextant = AllInOne::start();
    let otlp = (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{}", sextant.grpc),
    );
    let mut worker = Example::start(
        "worker",
        &[otlp.clone(), ("WORKER_ADDR", "127.0.0.1:0".into())],
    );
    let mut backend = Example::start(
        "backend",
        &[
            otlp.clone(),
            ("BACKEND_ADDR", "127.0.0.1:0".into()),
            ("WORKER_URL", format!("http://{}", worker.addr)),
        ],
    );
    let mut frontend = Example::start(
        "frontend",
        &[
            otlp.clone(),
            ("FRONTEND_ADDR", "127.0.0.1:0".into()),
            ("BACKEND_URL", format!("http://{}", backend.addr)),
        ],
    );
    let body = reqwest::get(format!("http://{}/checkout", frontend.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // "trace <id>: order {...}"
    let trace_id = body
        .strip_prefix("trace ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("unexpected body {body:?}"))
        .to_string();
    assert!(body.contains("order_id"), "{body}");

    // Let the worker take the job, then stop everyone (each flushes on exit).
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocking(move || {
        frontend.stop();
        backend.stop();
        worker.stop();
    })
    .await;

    let url = format!("http://{}/api/traces/{trace_id}", sextant.query);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::get(&url).await.unwrap();
        if r.status() == 200 {
            let doc: Value = r.json().await.unwrap();
            let mut services = std::collections::BTreeSet::new();
            let mut ids = std::collections::HashSet::new();
            let mut parents = Vec::new();
            let mut names = Vec::new();
            for batch in doc["batches"].as_array().unwrap() {
                let service = attr(&batch["resource"]["attributes"], "service.name")
                    .and_then(|v| v["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_string();
                for ss in batch["scopeSpans"].as_array().unwrap() {
                    for s in ss["spans"].as_array().unwrap() {
                        services.insert(service.clone());
                        ids.insert(s["spanId"].as_str().unwrap().to_string());
                        parents.push(s["parentSpanId"].as_str().unwrap_or("").to_string());
                        names.push(s["name"].as_str().unwrap().to_string());
                    }
                }
            }
            if names.iter().any(|n| n == "send_receipt") && names.len() >= 10 {
                assert_eq!(
                    services.into_iter().collect::<Vec<_>>(),
                    ["backend", "frontend", "worker"]
                );
                // Exactly one root; every other span's parent is in the trace.
                assert_eq!(
                    parents.iter().filter(|p| p.is_empty()).count(),
                    1,
                    "{names:?}"
                );
                for p in parents.iter().filter(|p| !p.is_empty()) {
                    assert!(ids.contains(p), "dangling parent {p}: {names:?}");
                }
                for n in [
                    "GET /checkout",
                    "POST /api/orders",
                    "POST /jobs",
                    "send_receipt process",
                ] {
                    assert!(names.iter().any(|x| x == n), "no {n}: {names:?}");
                }
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} not complete in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (blocking) until the all-in-one's Tempo API has the trace, with `spans` spans.
fn wait_for_trace(query: &str, trace_id: &str, spans: usize) {
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = client
            .get(format!("http://{query}/api/traces/{trace_id}"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.json::<Value>().ok())
            .map(|v| {
                v["batches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|b| b["scopeSpans"].as_array().into_iter().flatten())
                    .flat_map(|s| s["spans"].as_array().into_iter().flatten())
                    .count()
            })
            .unwrap_or(0);
        if got == spans {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id}: {got} of {spans} spans after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The gRPC exporter brings its own runtime thread: a program without Tokio exports, and a
/// guard dropped inside a current-thread runtime neither panics nor loses the last spans.
#[test]
fn grpc_exports_without_the_applications_runtime() {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let sextant = AllInOne::start();
    // No Tokio runtime anywhere on this thread.
    let pipeline = Sdk::builder()
        .with_vars(Vec::<(String, String)>::new())
        .service_name("no-runtime")
        .endpoint(format!("http://{}", sextant.grpc))
        .sample_ratio(1.0)
        .build()
        .expect("gRPC pipeline without a runtime");
    let tracer = pipeline.provider.tracer("e2e");
    let mut span = tracer.start("plain-thread");
    let trace_id = span.span_context().trace_id().to_string();
    span.end();
    pipeline.provider.force_flush().unwrap();
    wait_for_trace(&sextant.query, &trace_id, 1);
    pipeline
        .provider
        .shutdown_with_timeout(Duration::from_secs(5))
        .unwrap();

    // A current-thread runtime: the guard is dropped inside async code, while the runtime's
    // only thread is the one shutting down.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let grpc = sextant.grpc.clone();
    let trace_id = rt.block_on(async move {
        let guard = Sdk::builder()
            .with_vars(Vec::<(String, String)>::new())
            .service_name("current-thread")
            .endpoint(format!("http://{grpc}"))
            .sample_ratio(1.0)
            .batch_delay(Duration::from_secs(60))
            .init()
            .expect("init on a current-thread runtime");
        let tracer = opentelemetry::global::tracer("e2e");
        let mut span = tracer.start("current-thread");
        let id = span.span_context().trace_id().to_string();
        span.end();
        // Only the shutdown in the guard's drop can send it (the batch delay is 60 s).
        drop(guard);
        id
    });
    wait_for_trace(&sextant.query, &trace_id, 1);
}
