//! The cost of instrumentation, for `cargo xtask bench sdk`: the same axum service, plain and
//! with `SextantLayer` (a server span per request with its HTTP attributes, batch-exported over
//! OTLP/gRPC to `--endpoint`), driven in-process in alternating rounds. It reports the process
//! CPU time per request of each (the exporter's threads included; the receiving server is
//! another process), the difference (cost per span), and the throughput lost.
//!
//! `cargo run --release -p sextant-sdk --example overhead -- --endpoint http://127.0.0.1:4317`

use std::time::Instant;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::Request;
use opentelemetry::trace::TracerProvider as _;
use tower::ServiceExt;

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

async fn item() -> &'static str {
    "ok"
}

fn app() -> Router {
    Router::new().route("/api/items/{id}", get(item))
}

/// Sends `n` requests through `router`; returns (CPU µs, wall µs) per request.
async fn round(router: &Router, n: usize) -> (f64, f64) {
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for i in 0..n {
        let req = Request::get(format!("/api/items/{}", i % 100))
            .header("user-agent", "overhead-bench")
            .body(Body::empty())
            .expect("a valid request");
        let resp = router.clone().oneshot(req).await.expect("infallible");
        assert!(resp.status().is_success());
    }
    let cpu = (cpu_seconds() - cpu0) * 1e6 / n as f64;
    (cpu, wall0.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint =
        arg(&args, "--endpoint").ok_or("--endpoint URL (an OTLP/gRPC server) is required")?;
    let requests: usize = arg(&args, "--requests")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100_000);
    let rounds: usize = arg(&args, "--rounds")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(5);

    let pipeline = sextant_sdk::Sdk::builder()
        .with_vars(Vec::<(String, String)>::new())
        .service_name("overhead-bench")
        .endpoint(endpoint)
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
    let plain = app();
    let instrumented = app().layer(layer);

    // Warm up both.
    round(&plain, requests / 10).await;
    round(&instrumented, requests / 10).await;
    let (mut plain_cpu, mut instr_cpu, mut plain_wall, mut instr_wall) =
        (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let (c, w) = round(&plain, requests).await;
        plain_cpu.push(c);
        plain_wall.push(w);
        let (c, w) = round(&instrumented, requests).await;
        instr_cpu.push(c);
        instr_wall.push(w);
        eprintln!(
            "round {}/{rounds}: plain {:.2} µs CPU/request, instrumented {:.2} µs",
            r + 1,
            plain_cpu[r],
            instr_cpu[r]
        );
    }
    provider.force_flush()?;
    provider.shutdown()?;
    let (p, i) = (median(plain_cpu), median(instr_cpu));
    println!(
        "{}",
        serde_json::json!({
            "requests_per_round": requests,
            "rounds": rounds,
            "plain_cpu_us_per_request": p,
            "instrumented_cpu_us_per_request": i,
            "cost_per_span_us": i - p,
            "throughput_loss_percent": (1.0 - p / i) * 100.0,
            "plain_wall_us_per_request": median(plain_wall),
            "instrumented_wall_us_per_request": median(instr_wall),
        })
    );
    Ok(())
}
