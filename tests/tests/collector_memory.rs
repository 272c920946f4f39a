//! The collector's memory limiter under a flood: while the backend is down (batches wait in the
//! exporter's retry, without a persistent queue), many concurrent large requests over gRPC and
//! HTTP are answered either with success or with the retryable refusals (UNAVAILABLE, 503 or
//! 429 with Retry-After), peak memory stays under the limit plus the slack the all-in-one's
//! test allows, what was acknowledged arrives once the backend is up, and the collector accepts
//! again after the flood.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use sextant_otlp_proto::proto::ExportTraceServiceRequest;
use sextant_tests::collector::{free_port, Collector};
use sextant_tests::otlp::{self, random_trace_id};
use sextant_tests::{self as e2e, MemStatus, Server};

const MIB: usize = 1 << 20;
const HTTP_SENDERS: usize = 8;
const GRPC_SENDERS: usize = 8;
/// How long the backend stays down while the flood goes on.
const OUTAGE: Duration = Duration::from_secs(3);
const REQUEST_BYTES: usize = 4 * MIB;
/// How far above the limit the peak RSS may go (as tests/backpressure.rs allows the
/// all-in-one).
const HWM_SLACK_MIB: f64 = 150.0;
/// The limit is the idle collector's RSS plus this.
const HEADROOM_MIB: u64 = 60;
const SPIKE_MIB: u64 = 20;

#[derive(Debug)]
#[allow(dead_code)] // the fields are for the failure messages
enum Outcome {
    Ok,
    /// 503 or 429 with the Retry-After header's value.
    HttpRefused(u16, Option<String>),
    HttpOther(u16, String),
    HttpNoAnswer(String),
    GrpcUnavailable(String),
    GrpcOther(tonic::Code, String),
}

/// The collector's config: OTLP over gRPC and HTTP, the memory limiter (when `limit_mib` is
/// given) and batch, exporting over OTLP/gRPC to `127.0.0.1:{port}`, retrying quickly, with
/// the in-memory queue.
fn config(port: u16, limit_mib: Option<u64>) -> String {
    let (limiter, in_pipeline) = match limit_mib {
        Some(l) => (
            format!(
                "  memory_limiter:\n    check_interval: 100ms\n    limit_mib: {l}\n    spike_limit_mib: {SPIKE_MIB}\n"
            ),
            "memory_limiter, ",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
        max_recv_msg_size_mib: 16
      http:
        endpoint: 127.0.0.1:0
processors:
{limiter}  batch:
    timeout: 100ms
exporters:
  otlp:
    endpoint: 127.0.0.1:{port}
    tls:
      insecure: true
    timeout: 2s
    retry_on_failure:
      initial_interval: 100ms
      max_interval: 300ms
      max_elapsed_time: 120s
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [{in_pipeline}batch]
      exporters: [otlp]
  telemetry:
    metrics:
      level: none
"#
    )
}

/// The largest RSS of a few samples of an idle process.
fn idle_rss_mib(pid: u32) -> f64 {
    let mut rss: f64 = 0.0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(m) = MemStatus::read(pid) {
            rss = rss.max(m.rss_mib());
        }
    }
    rss
}

/// One small request over HTTP and one over gRPC, both accepted, and the HTTP one stored.
async fn small_request_ok(collector: &Collector, store: &Server) -> Result<(), String> {
    let tid = random_trace_id();
    let body = otlp::trace_request("after-flood", &tid, 2, 0).encode_to_vec();
    let resp = e2e::post(
        &format!("{}/v1/traces", collector.http_url()),
        &[("content-type", "application/x-protobuf")],
        body,
    )
    .await;
    if resp.status != 200 {
        return Err(format!("HTTP {} {}", resp.status, resp.text()));
    }
    let mut client = otlp::trace_client(&collector.grpc_url()).await;
    otlp::export(
        &mut client,
        otlp::trace_request("after-flood", &random_trace_id(), 2, 0),
    )
    .await
    .map_err(|s| format!("gRPC {s:?}"))?;
    e2e::wait_for_trace(store, &hex::encode(tid), 2).await;
    Ok(())
}

fn retry_after(response: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_string())
    })
}

/// The trace ids of a request with their span counts.
fn traces_of(req: &ExportTraceServiceRequest) -> Vec<(Vec<u8>, usize)> {
    let mut out: Vec<(Vec<u8>, usize)> = Vec::new();
    for rs in &req.resource_spans {
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                match out.iter_mut().find(|(t, _)| *t == s.trace_id) {
                    Some((_, n)) => *n += 1,
                    None => out.push((s.trace_id.clone(), 1)),
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_memory_limiter_holds_under_a_flood_with_the_backend_down() {
    let port = free_port();
    // The idle RSS of the same collector without a limit.
    let idle = {
        let probe = Collector::start(&config(port, None));
        idle_rss_mib(probe.pid())
    };
    let limit_mib = idle.ceil() as u64 + HEADROOM_MIB;
    eprintln!(
        "collector RSS idle {idle:.1} MiB -> limit_mib {limit_mib}, spike_limit_mib {SPIKE_MIB}"
    );
    let collector = Collector::start(&config(port, Some(limit_mib)));

    let req = otlp::request_of_size("flood", REQUEST_BYTES);
    let traces = traces_of(&req);
    let body = req.encode_to_vec();
    assert!(body.len() >= REQUEST_BYTES);
    let refused_http = Arc::new(AtomicUsize::new(0));
    let refused_grpc = Arc::new(AtomicUsize::new(0));
    // Senders send again 20 ms after a refusal (keeping the pressure on) until `stop`, which is
    // set once the backend is up.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut http_tasks = Vec::new();
    for _ in 0..HTTP_SENDERS {
        let (addr, body, refused, stop) = (
            collector.addr("otlp-http"),
            body.clone(),
            refused_http.clone(),
            stop.clone(),
        );
        http_tasks.push(tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::new();
            while outcomes.is_empty() || !stop.load(Ordering::SeqCst) {
                let ex = e2e::raw_http_post(
                    addr,
                    "/v1/traces",
                    &[("Content-Type", "application/x-protobuf")],
                    &body,
                    false,
                );
                let outcome = match ex.status {
                    Some(200) => Outcome::Ok,
                    Some(code @ (503 | 429)) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        Outcome::HttpRefused(code, retry_after(&ex.response))
                    }
                    Some(code) => {
                        Outcome::HttpOther(code, e2e::tail(&ex.response, 300).to_string())
                    }
                    None => Outcome::HttpNoAnswer(format!("{ex:?}")),
                };
                let again = !matches!(outcome, Outcome::Ok);
                outcomes.push(outcome);
                if again {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            outcomes
        }));
    }
    let mut grpc_tasks = Vec::new();
    for _ in 0..GRPC_SENDERS {
        let (url, body, refused, stop) = (
            collector.grpc_url(),
            body.clone(),
            refused_grpc.clone(),
            stop.clone(),
        );
        grpc_tasks.push(tokio::spawn(async move {
            let channel = otlp::channel(&url).await;
            let mut outcomes = Vec::new();
            while outcomes.is_empty() || !stop.load(Ordering::SeqCst) {
                let outcome = match otlp::export_raw_on(channel.clone(), body.clone()).await {
                    Ok(_) => Outcome::Ok,
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        Outcome::GrpcUnavailable(s.message().to_string())
                    }
                    Err(s) => Outcome::GrpcOther(s.code(), s.message().to_string()),
                };
                let again = !matches!(outcome, Outcome::Ok);
                outcomes.push(outcome);
                if again {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            outcomes
        }));
    }

    // The backend is down for OUTAGE, then appears where the exporter points, and what was
    // admitted drains.
    let mut peak_rss = 0.0f64;
    let mut store: Option<Server> = None;
    while !(http_tasks.iter().all(|t| t.is_finished())
        && grpc_tasks.iter().all(|t| t.is_finished()))
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the flood did not finish in 90 s (backend up: {})\n{}",
            store.is_some(),
            collector.stderr_tail()
        );
        if let Some(m) = MemStatus::read(collector.pid()) {
            peak_rss = peak_rss.max(m.rss_mib());
        }
        if store.is_none() && started.elapsed() >= OUTAGE {
            eprintln!(
                "backend starts after {:?} of flood ({} HTTP, {} gRPC refused so far)",
                started.elapsed(),
                refused_http.load(Ordering::SeqCst),
                refused_grpc.load(Ordering::SeqCst)
            );
            let addr = format!("127.0.0.1:{port}");
            store = Some(tokio::task::block_in_place(|| {
                Server::start(&["--otlp-grpc-addr", &addr])
            }));
            stop.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = store.expect("the senders stop only once the backend is up");
    let mut outcomes = Vec::new();
    for t in http_tasks {
        outcomes.extend(t.await.expect("HTTP sender panicked"));
    }
    for t in grpc_tasks {
        outcomes.extend(t.await.expect("gRPC sender panicked"));
    }
    let mem = MemStatus::read(collector.pid()).expect("collector memory");
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let ok = count(&|o| matches!(o, Outcome::Ok));
    let http_refused = count(&|o| matches!(o, Outcome::HttpRefused(..)));
    let unavailable = count(&|o| matches!(o, Outcome::GrpcUnavailable(_)));
    eprintln!(
        "flood of {} x {} MiB in {:?}: {ok} accepted, {http_refused} HTTP refused, {unavailable} gRPC UNAVAILABLE; peak RSS sampled {peak_rss:.0} MiB, VmHWM {:.0} MiB (limit {limit_mib} MiB)",
        outcomes.len(),
        body.len() / MIB,
        started.elapsed(),
        mem.hwm_mib()
    );
    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                Outcome::HttpOther(..) | Outcome::HttpNoAnswer(_) | Outcome::GrpcOther(..)
            ) || matches!(o, Outcome::HttpRefused(_, None))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} flood requests got an answer other than success, 503/429 with Retry-After, or UNAVAILABLE:\n{:#?}\n--- collector stderr ---\n{}",
        wrong.len(),
        outcomes.len(),
        &wrong[..wrong.len().min(10)],
        collector.stderr_tail()
    );
    for o in &outcomes {
        if let Outcome::HttpRefused(_, Some(v)) = o {
            assert!(
                v.parse::<u64>().is_ok(),
                "Retry-After is not a number of seconds: {v:?}"
            );
        }
    }
    assert!(http_refused > 0, "no HTTP request of the flood was refused");
    assert!(
        unavailable > 0,
        "no gRPC request of the flood was refused with UNAVAILABLE"
    );
    assert!(ok > 0, "the limiter refused every request of the flood");
    let bound = limit_mib as f64 + HWM_SLACK_MIB;
    assert!(
        mem.hwm_mib() < bound,
        "peak memory (VmHWM) {:.0} MiB exceeded limit {limit_mib} + {HWM_SLACK_MIB} MiB",
        mem.hwm_mib()
    );

    // What was acknowledged arrived whole (every flood request carried the same traces).
    for (tid, n) in &traces {
        e2e::wait_for_trace(&store, &hex::encode(tid), *n).await;
    }

    // After the flood, with the backend up, small requests are accepted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match small_request_ok(&collector, &store).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "30 s after the flood a small request is still refused: {e} (RSS now {:.0} MiB, limit {limit_mib})\n{}",
                    MemStatus::read(collector.pid()).map(|m| m.rss_mib()).unwrap_or(0.0),
                    collector.stderr_tail()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
