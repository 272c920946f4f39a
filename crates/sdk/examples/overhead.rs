//! What `sextant-sdk` costs an axum service, for `cargo xtask bench sdk`.
//!
//! `overhead bench --endpoint http://127.0.0.1:4317` starts `overhead serve` (this binary) as
//! a child: one axum service served over TCP twice, plain and with [`SextantLayer`] (a server
//! span per request with its HTTP attributes, batch-exported over OTLP/gRPC to `--endpoint`
//! at 100 % sampling). It then drives each in alternating rounds with `overhead drive` (this
//! binary again, another process: keep-alive HTTP/1.1 connections, requests back to back) on
//! two routes: `/api/items/{id}` (a tiny JSON answer: the worst case for relative overhead)
//! and `/api/orders/{id}` (a 2.6 KB JSON document built and serialized, a typical API
//! answer). After every round the server flushes its spans, so the export of a round is
//! counted in that round. It reads the server's CPU time per thread: the request path (the
//! service's Tokio workers), the batch processor's thread (conversion to OTLP, encoding) and
//! the exporter's own runtime thread (gRPC I/O). It prints one JSON report: CPU per request,
//! cost per span (instrumented minus plain), throughput lost (1 - plain CPU / instrumented
//! CPU: what a CPU-bound service loses), requests/s as driven, and spans sent.
//!
//! [`SextantLayer`]: sextant_sdk::SextantLayer

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use serde::Serialize;
use serde_json::{json, Value};

#[cfg(feature = "example-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num_arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    match arg(args, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| format!("{name} {v}: {e}").into()),
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args),
        Some("drive") => drive(&args),
        Some("bench") => bench(&args),
        _ => Err(
            "usage: overhead bench --endpoint URL [--rounds 5] [--seconds 3] [--connections 8] \
                  | serve --endpoint URL | drive --url URL --seconds S --connections N"
                .into(),
        ),
    }
}

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Item {
    id: u64,
    name: &'static str,
    price_cents: u64,
}

async fn item(Path(id): Path<u64>) -> Json<Item> {
    Json(Item {
        id,
        name: "widget",
        price_cents: 1999 + id % 7,
    })
}

#[derive(Serialize)]
struct Line {
    sku: String,
    description: &'static str,
    quantity: u32,
    unit_price_cents: u64,
    total_cents: u64,
}

#[derive(Serialize)]
struct Order {
    id: u64,
    customer: String,
    currency: &'static str,
    status: &'static str,
    lines: Vec<Line>,
    total_cents: u64,
}

async fn order(Path(id): Path<u64>) -> Json<Order> {
    let lines: Vec<Line> = (0..20u64)
        .map(|i| {
            let quantity = (1 + (id + i) % 5) as u32;
            let unit = 250 + (id * 31 + i * 17) % 5000;
            Line {
                sku: format!("SKU-{:06}", id * 100 + i),
                description: "stainless steel widget, 40 mm",
                quantity,
                unit_price_cents: unit,
                total_cents: unit * u64::from(quantity),
            }
        })
        .collect();
    let total_cents = lines.iter().map(|l| l.total_cents).sum();
    Json(Order {
        id,
        customer: format!("customer-{}", id % 1000),
        currency: "EUR",
        status: "shipped",
        lines,
        total_cents,
    })
}

fn app() -> Router {
    Router::new()
        .route("/api/items/{id}", get(item))
        .route("/api/orders/{id}", get(order))
}

/// CPU time of a thread of this process, from its tid (the kernel's per-thread CPU clock).
fn thread_cpu_seconds(tid: i32) -> Option<f64> {
    // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED): see the kernel's posix-cpu-timers.
    let clock = ((!tid) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(clock as libc::clockid_t, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// CPU seconds of this process by thread group: thread names are summed.
fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if let Some(cpu) = thread_cpu_seconds(tid) {
            *out.entry(comm.trim().to_string()).or_insert(0.0) += cpu;
        }
    }
    out
}

fn process_cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

const WORKER: &str = "service-worker";
/// The thread of the SDK's gRPC exporter.
const EXPORT_RT: &str = "sextant-otlp";

/// `overhead serve`: the service, plain and instrumented, and an admin port.
fn serve(args: &[String]) -> Result<(), Error> {
    let endpoint = arg(args, "--endpoint").ok_or("--endpoint URL is required")?;
    let protocol = match arg(args, "--protocol").as_deref() {
        None | Some("grpc") => sextant_sdk::Protocol::Grpc,
        Some("http/protobuf") => sextant_sdk::Protocol::HttpProtobuf,
        Some(p) => return Err(format!("--protocol {p}: grpc or http/protobuf").into()),
    };
    // The SDK's gRPC client runs on a runtime thread of its own (`sextant-otlp`), so its I/O
    // is counted as export, not as the service's request path.
    let pipeline = sextant_sdk::Sdk::builder()
        .with_vars(Vec::<(String, String)>::new())
        .service_name("overhead-bench")
        .endpoint(endpoint)
        .protocol(protocol)
        .sample_ratio(1.0)
        .build()?;
    let sextant_sdk::Pipeline {
        provider,
        propagator,
        ..
    } = pipeline;
    let layer = sextant_sdk::SextantLayer::new()
        .with_tracer(provider.tracer("overhead-bench"))
        .with_propagator(propagator);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER)
        .enable_all()
        .build()?;
    let server_provider = provider.clone();
    rt.block_on(async move {
        let provider = server_provider;
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let instrumented = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "serving plain {} instrumented {} admin {}",
            plain.local_addr()?,
            instrumented.local_addr()?,
            admin.local_addr()?
        );
        let flush = provider.clone();
        let admin_app = Router::new().route(
            "/cpu",
            get(move || {
                let provider = flush.clone();
                async move {
                    let flushed = tokio::task::spawn_blocking(move || provider.force_flush())
                        .await
                        .map(|r| r.is_ok())
                        .unwrap_or(false);
                    Json(json!({
                        "flushed": flushed,
                        "process": process_cpu_seconds(),
                        "threads": cpu_by_thread(),
                    }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(plain, app()).await });
        tokio::spawn(async move { axum::serve(instrumented, app().layer(layer)).await });
        axum::serve(admin, admin_app).await?;
        Ok::<(), Error>(())
    })?;
    provider.shutdown()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------

/// `overhead drive`: `--connections` keep-alive connections, requests back to back for
/// `--seconds`; prints `{"requests": N, "seconds": S}`.
fn drive(args: &[String]) -> Result<(), Error> {
    let url: http::Uri = arg(args, "--url").ok_or("--url is required")?.parse()?;
    let seconds: f64 = num_arg(args, "--seconds", 3.0)?;
    let connections: usize = num_arg(args, "--connections", 8)?;
    let authority = url.authority().ok_or("--url needs host:port")?.to_string();
    let addr: SocketAddr = authority.parse()?;
    let path = url.path().trim_end_matches('/').to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let (requests, elapsed) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..connections {
            let (authority, path, done) = (authority.clone(), path.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                let mut i = c as u64;
                while Instant::now() < deadline {
                    let req = http::Request::get(format!("{path}/{}", i % 1000))
                        .header(http::header::HOST, authority.as_str())
                        .header(http::header::USER_AGENT, "overhead-drive/1")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
                    let resp = sender.send_request(req).await?;
                    if !resp.status().is_success() {
                        return Err(format!("HTTP {}", resp.status()).into());
                    }
                    resp.into_body().collect().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += connections as u64;
                }
                Ok::<(), Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<_, Error>((done.load(Ordering::Relaxed), start.elapsed().as_secs_f64()))
    })?;
    println!("{}", json!({"requests": requests, "seconds": elapsed}));
    Ok(())
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

struct Cpu {
    process: f64,
    threads: BTreeMap<String, f64>,
}

impl Cpu {
    fn group(&self, f: impl Fn(&str) -> bool) -> f64 {
        self.threads
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, v)| v)
            .sum()
    }
    fn request_path(&self) -> f64 {
        self.group(|k| k.starts_with(WORKER))
    }
    fn export(&self) -> f64 {
        // The batch processor's thread is "OpenTelemetry.Traces.BatchProcessor" (the kernel
        // keeps 15 bytes of a name).
        self.group(|k| k.starts_with("OpenTelemetry") || k.starts_with(EXPORT_RT))
    }
}

fn get_json(addr: &str, path: &str) -> Result<Value, Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("no HTTP body")?;
    Ok(serde_json::from_str(json)?)
}

fn read_cpu(admin: &str) -> Result<Cpu, Error> {
    let v = get_json(admin, "/cpu")?;
    if v["flushed"] != Value::Bool(true) {
        return Err("the server could not flush its spans".into());
    }
    let threads = v["threads"]
        .as_object()
        .ok_or("no threads")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .collect();
    Ok(Cpu {
        process: v["process"].as_f64().unwrap_or(0.0),
        threads,
    })
}

#[derive(Default, Clone)]
struct Sample {
    requests: u64,
    seconds: f64,
    process: f64,
    request_path: f64,
    export: f64,
}

fn run_round(
    me: &std::path::Path,
    admin: &str,
    url: &str,
    seconds: f64,
    connections: usize,
) -> Result<Sample, Error> {
    let before = read_cpu(admin)?;
    let out = Command::new(me)
        .args(["drive", "--url", url, "--seconds", &seconds.to_string()])
        .args(["--connections", &connections.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("the load generator failed on {url}: {}", out.status).into());
    }
    let after = read_cpu(admin)?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    Ok(Sample {
        requests: report["requests"].as_u64().unwrap_or(0),
        seconds: report["seconds"].as_f64().unwrap_or(0.0),
        process: after.process - before.process,
        request_path: after.request_path() - before.request_path(),
        export: after.export() - before.export(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(args: &[String]) -> Result<(), Error> {
    let endpoint = arg(args, "--endpoint").ok_or("--endpoint URL is required")?;
    let rounds: usize = num_arg(args, "--rounds", 5)?;
    let seconds: f64 = num_arg(args, "--seconds", 3.0)?;
    let connections: usize = num_arg(args, "--connections", 8)?;
    let me = std::env::current_exe()?;
    let protocol = arg(args, "--protocol").unwrap_or_else(|| "grpc".into());
    let mut server = Command::new(&me)
        .args(["serve", "--endpoint", &endpoint, "--protocol", &protocol])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let result = (|| {
        let stdout = server.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (plain, instrumented, admin) = match words.as_slice() {
            ["serving", "plain", p, "instrumented", i, "admin", a] => (*p, *i, *a),
            _ => return Err(format!("unexpected server line {line:?}").into()),
        };
        let mut routes = serde_json::Map::new();
        let mut instrumented_requests = 0u64;
        for (route, path) in [("items", "/api/items"), ("orders", "/api/orders")] {
            let url = |addr: &str| format!("http://{addr}{path}");
            // Warm up both.
            for addr in [plain, instrumented] {
                let s = run_round(&me, admin, &url(addr), 1.0, connections)?;
                if addr == instrumented {
                    instrumented_requests += s.requests;
                }
            }
            let (mut p, mut i) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                p.push(run_round(&me, admin, &url(plain), seconds, connections)?);
                let s = run_round(&me, admin, &url(instrumented), seconds, connections)?;
                instrumented_requests += s.requests;
                i.push(s);
                let us = |s: &Sample| s.process * 1e6 / s.requests.max(1) as f64;
                eprintln!(
                    "{route} round {}/{rounds}: plain {:.2} µs CPU/request ({:.0} req/s), \
                     instrumented {:.2} µs ({:.0} req/s)",
                    r + 1,
                    us(&p[r]),
                    p[r].requests as f64 / p[r].seconds,
                    us(&i[r]),
                    i[r].requests as f64 / i[r].seconds,
                );
            }
            let per = |v: &[Sample], f: fn(&Sample) -> f64| {
                median(
                    v.iter()
                        .map(|s| f(s) * 1e6 / s.requests.max(1) as f64)
                        .collect(),
                )
            };
            let rps =
                |v: &[Sample]| median(v.iter().map(|s| s.requests as f64 / s.seconds).collect());
            let (pt, it) = (per(&p, |s| s.process), per(&i, |s| s.process));
            let (pr, ir) = (per(&p, |s| s.request_path), per(&i, |s| s.request_path));
            let (pe, ie) = (per(&p, |s| s.export), per(&i, |s| s.export));
            routes.insert(
                route.to_string(),
                json!({
                    "plain_cpu_us_per_request": pt,
                    "instrumented_cpu_us_per_request": it,
                    "cost_per_span_us": it - pt,
                    "request_path_plain_us": pr,
                    "request_path_instrumented_us": ir,
                    "request_path_cost_per_span_us": ir - pr,
                    "export_cost_per_span_us": ie - pe,
                    "throughput_loss_percent": (1.0 - pt / it) * 100.0,
                    "plain_requests_per_second": rps(&p),
                    "instrumented_requests_per_second": rps(&i),
                }),
            );
        }
        Ok::<_, Error>((routes, instrumented_requests))
    })();
    let _ = server.kill();
    let _ = server.wait();
    let (routes, instrumented_requests) = result?;
    println!(
        "{}",
        json!({
            "allocator": if cfg!(feature = "example-mimalloc") { "mimalloc" } else { "system" },
            "protocol": protocol,
            "rounds": rounds,
            "seconds_per_round": seconds,
            "connections": connections,
            "spans_sent": instrumented_requests,
            "routes": routes,
        })
    );
    Ok(())
}
