//! `cargo xtask bench sdk`: what `sextant-sdk` costs an axum service.
//!
//! The overhead example (crates/sdk/examples/overhead.rs) serves one axum service over TCP
//! twice, plain and instrumented, drives both from another process in alternating rounds and
//! reads the server's CPU per thread. This runs it four times (system allocator and mimalloc,
//! OTLP/gRPC and OTLP/HTTP), each against a fresh `sextant null-server`, checks that every span
//! sent arrived (a dropped span would make the figures look better than they are) and prints
//! one table.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::num;
use crate::util::{self, cargo, target_dir, ChildGuard, Lines, TempDir};

const TARGET_US_PER_SPAN: f64 = 2.0;
const TARGET_LOSS_PCT: f64 = 5.0;
const ROUNDS: &str = "5";
const SECONDS: &str = "3";
/// The batch processor's queue (`OTEL_BSP_MAX_QUEUE_SIZE`) of the benchmark's service.
const QUEUE: &str = "65536";
const STARTUP: Duration = Duration::from_secs(30);
const SHUTDOWN: Duration = Duration::from_secs(30);

/// Builds the example (with `features`) and copies it to `target/bench/<name>`, so that the
/// next build does not replace it.
fn build_example(features: &[&str], name: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "sextant-sdk",
        "--example",
        "overhead",
    ]);
    for f in features {
        cmd.args(["--features", f]);
    }
    util::run(&mut cmd)?;
    let built = target_dir()
        .join("release")
        .join("examples")
        .join("overhead");
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let copy = dir.join(name);
    fs::copy(&built, &copy)
        .with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// One run of the example against a fresh null-server; checks that every span arrived.
fn run_one(bin: &Path, example: &Path, protocol: &str, scratch: &Path) -> Result<Value> {
    let log = scratch.join("null-server.log");
    let mut server = ChildGuard::spawn(
        "null-server",
        Command::new(bin)
            .args([
                "null-server",
                "--addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&log)?)),
        Some(log),
    )?;
    let lines = Lines::new(server.take_stdout().context("no stdout")?);
    let (mut grpc, mut http) = (None, None);
    let (grpc, http) = lines.wait_for(&mut server, "its two addresses", STARTUP, |l| {
        if let Some(a) = l.strip_prefix("null-server http listening on ") {
            http = Some(a.trim().to_string());
        } else if let Some(a) = l.strip_prefix("null-server listening on ") {
            grpc = Some(a.trim().to_string());
        }
        grpc.clone().zip(http.clone())
    })?;
    let endpoint = match protocol {
        "grpc" => format!("http://{grpc}"),
        _ => format!("http://{http}/v1/traces"),
    };
    let out = Command::new(example)
        .args(["bench", "--endpoint", &endpoint, "--protocol", protocol])
        .args(["--rounds", ROUNDS, "--seconds", SECONDS])
        // At some 40,000 spans/s a pause of the batch processor's thread of 50 ms fills the
        // SDK's default queue (2,048 spans) and spans are dropped, which this run refuses.
        .env("OTEL_BSP_MAX_QUEUE_SIZE", QUEUE)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", example.display()))?;
    server.terminate(SHUTDOWN)?;
    if !out.status.success() {
        bail!("{} failed with {}", example.display(), out.status);
    }
    let report: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the overhead example printed no JSON report")?;
    let received = lines
        .drain()
        .iter()
        .find_map(|l| {
            l.strip_prefix("null-server received ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .context("the null-server did not say how many spans it received")?;
    let sent = report["spans_sent"].as_u64().unwrap_or(0);
    if received != sent {
        bail!(
            "{protocol}: the service sent {sent} spans but the null-server received {received}: \
             spans were dropped, the figures would not count their export"
        );
    }
    Ok(report)
}

pub fn sdk() -> Result<()> {
    println!("==> cargo build --release -p sextant-cli, and the sdk's overhead example (system allocator, mimalloc)");
    util::run(cargo().args(["build", "--release", "-p", "sextant-cli"]))?;
    let system = build_example(&[], "overhead-system")?;
    let mimalloc = build_example(&["example-mimalloc"], "overhead-mimalloc")?;
    let bin = target_dir().join("release").join("sextant");
    let scratch = TempDir::new("sextant-bench-sdk")?;

    let mut runs = Vec::new();
    for (allocator, example) in [("system", &system), ("mimalloc", &mimalloc)] {
        for protocol in ["grpc", "http/protobuf"] {
            println!("\n==> {allocator} allocator, OTLP {protocol}");
            let report = run_one(&bin, example, protocol, scratch.path())?;
            runs.push(report);
        }
    }

    let cores = util::nproc();
    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "sdk benchmark: an axum service served over TCP, plain and with SextantLayer (100 % sampled, \
         batch-exported to a null-server, queue of {QUEUE} spans), driven from another process in alternating rounds of \
         {SECONDS} s (median of {ROUNDS}); CPU of the service process. The load generator, the \
         service and the null-server share the same {cores} cores."
    );
    println!(
        "{:<24}{:<8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>9}{:>10}{:>10}",
        "allocator / protocol",
        "route",
        "plain µs",
        "instr µs",
        "span µs",
        "req path",
        "export",
        "loss %",
        "plain r/s",
        "instr r/s"
    );
    for run in &runs {
        let label = format!(
            "{} / {}",
            run["allocator"].as_str().unwrap_or("?"),
            run["protocol"].as_str().unwrap_or("?")
        );
        for route in ["items", "orders"] {
            let r = &run["routes"][route];
            println!(
                "{:<24}{:<8}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>9.1}{:>10.0}{:>10.0}",
                label,
                route,
                num(r, "plain_cpu_us_per_request"),
                num(r, "instrumented_cpu_us_per_request"),
                num(r, "cost_per_span_us"),
                num(r, "request_path_cost_per_span_us"),
                num(r, "export_cost_per_span_us"),
                num(r, "throughput_loss_percent"),
                num(r, "plain_requests_per_second"),
                num(r, "instrumented_requests_per_second"),
            );
        }
    }
    println!(
        "  span µs = CPU per request instrumented minus plain, every thread of the service (request \
         path + batch processor + exporter); target <= {TARGET_US_PER_SPAN} µs"
    );
    println!("  loss % = 1 - plain CPU / instrumented CPU (what a CPU-bound service loses); target <= {TARGET_LOSS_PCT} %");
    // The default configuration (system allocator, gRPC) is the one the targets are read on.
    let default = &runs[0]["routes"];
    for route in ["items", "orders"] {
        let r = &default[route];
        let (cost, path, loss) = (
            num(r, "cost_per_span_us"),
            num(r, "request_path_cost_per_span_us"),
            num(r, "throughput_loss_percent"),
        );
        println!(
            "  {route:<7} (system, grpc): {cost:.2} µs per span {}, of which {path:.2} µs on the request path; \
             throughput loss {loss:.1} % {}",
            check(cost <= TARGET_US_PER_SPAN),
            check(loss <= TARGET_LOSS_PCT)
        );
    }
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let out = dir.join("sdk.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&json!({ "runs": runs }))?,
    )?;
    println!("  report written to {}", out.display());
    Ok(())
}
