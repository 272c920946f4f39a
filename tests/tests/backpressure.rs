//! The memory limiter under a flood of large concurrent requests over HTTP and gRPC: some are
//! refused with the retryable answers (503 + Retry-After, UNAVAILABLE), peak memory stays
//! bounded, and the server accepts data again once the flood is over.

use std::time::{Duration, Instant};

use prost::Message as _;
use sextant_tests::otlp::{self, random_trace_id};
use sextant_tests::{self as e2e, Server};

const MIB: usize = 1 << 20;
const HTTP_SENDERS: usize = 16;
const GRPC_SENDERS: usize = 16;
const REQUESTS_PER_SENDER: usize = 3;
const REQUEST_BYTES: usize = 4 * MIB;
const SPIKE_MIB: u64 = 8;
/// How far above the limit the peak RSS may go.
const HWM_SLACK_MIB: f64 = 150.0;

#[derive(Debug)]
#[allow(dead_code)] // the fields are for the failure messages
enum Outcome {
    Ok,
    /// 503 with the Retry-After header's value.
    Http503(Option<String>),
    HttpOther(u16, String),
    /// No answer could be read at all.
    HttpNoAnswer(String),
    GrpcUnavailable(String),
    GrpcOther(tonic::Code, String),
}

/// The RSS of a server without a limit, idle and after `warmup` sequential requests of
/// [`REQUEST_BYTES`] (the allocator and the store's cache keep some of what they took).
async fn probe_rss_mib(warmup: usize) -> (f64, f64) {
    let probe = Server::start(&[]);
    let sample = |probe: &Server| {
        // Let the process settle; take the largest of a few samples.
        let mut rss: f64 = 0.0;
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            rss = rss.max(probe.mem().rss_mib());
        }
        rss
    };
    let idle = sample(&probe);
    let mut client = otlp::trace_client(&probe.grpc_url()).await;
    for _ in 0..warmup {
        otlp::export(&mut client, otlp::request_of_size("warmup", REQUEST_BYTES))
            .await
            .expect("warm-up request");
    }
    let warm = sample(&probe);
    (idle, warm)
}

fn start_limited(limit_mib: u64) -> Server {
    Server::start(&[
        "--memory-limit-mib",
        &limit_mib.to_string(),
        "--memory-spike-mib",
        &SPIKE_MIB.to_string(),
    ])
}

/// Polls until a small request is accepted over HTTP and gRPC, for up to 30 s.
async fn accepts_again(server: &Server, limit_mib: u64, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match small_request_ok(server).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "30 s {when} a small request is still refused: {e} (RSS now {:.0} MiB, limit {limit_mib}, soft limit {}, nothing in flight)\n{}",
                    server.mem().rss_mib(),
                    limit_mib - SPIKE_MIB,
                    server.stderr_tail()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn small_request_ok(server: &Server) -> Result<(), String> {
    let tid = random_trace_id();
    let body = otlp::trace_request("after-flood", &tid, 2, 0).encode_to_vec();
    let resp = e2e::post(
        &server.traces_url(),
        &[("content-type", "application/x-protobuf")],
        body,
    )
    .await;
    if resp.status != 200 {
        return Err(format!("HTTP {} {}", resp.status, resp.text()));
    }
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    otlp::export(
        &mut client,
        otlp::trace_request("after-flood", &random_trace_id(), 2, 0),
    )
    .await
    .map_err(|s| format!("gRPC {s:?}"))?;
    e2e::wait_for_trace(server, &hex::encode(tid), 2).await;
    Ok(())
}

/// Floods `server` (limited to `limit_mib`) with concurrent large requests over HTTP and gRPC
/// and checks the answers and the peak memory. With `some_must_pass`, at least one request of
/// the flood must be accepted (the limiter lets one through when nothing is in flight).
async fn flood(server: &Server, limit_mib: u64, some_must_pass: bool) {
    // A normal request is accepted before the flood.
    small_request_ok(server).await.unwrap_or_else(|e| {
        panic!(
            "a small request before the flood was refused: {e}\n{}",
            server.stderr_tail()
        )
    });

    let body = otlp::request_of_size("flood", REQUEST_BYTES).encode_to_vec();
    assert!(body.len() >= REQUEST_BYTES);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HTTP_SENDERS {
        let (addr, body) = (server.http_addr, body.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::new();
            for _ in 0..REQUESTS_PER_SENDER {
                let ex = e2e::raw_http_post(
                    addr,
                    "/v1/traces",
                    &[("Content-Type", "application/x-protobuf")],
                    &body,
                    false,
                );
                let head = ex
                    .response
                    .split("\r\n\r\n")
                    .next()
                    .unwrap_or("")
                    .to_string();
                let retry_after = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("retry-after")
                        .then(|| v.trim().to_string())
                });
                outcomes.push(match ex.status {
                    Some(200) => Outcome::Ok,
                    Some(503) => Outcome::Http503(retry_after),
                    Some(code) => {
                        Outcome::HttpOther(code, e2e::tail(&ex.response, 300).to_string())
                    }
                    None => Outcome::HttpNoAnswer(format!("{ex:?}")),
                });
            }
            outcomes
        }));
    }
    let mut grpc_tasks = Vec::new();
    for _ in 0..GRPC_SENDERS {
        let (url, body) = (server.grpc_url(), body.clone());
        grpc_tasks.push(tokio::spawn(async move {
            let channel = otlp::channel(&url).await;
            let mut outcomes = Vec::new();
            for _ in 0..REQUESTS_PER_SENDER {
                outcomes.push(
                    match otlp::export_raw_on(channel.clone(), body.clone()).await {
                        Ok(_) => Outcome::Ok,
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            Outcome::GrpcUnavailable(s.message().to_string())
                        }
                        Err(s) => Outcome::GrpcOther(s.code(), s.message().to_string()),
                    },
                );
            }
            outcomes
        }));
    }

    // While flooded, the server still answers queries, and its memory is sampled.
    let mut peak_rss = 0.0f64;
    let ready_url = format!("{}/ready", server.query_url());
    while !(tasks.iter().all(|t| t.is_finished()) && grpc_tasks.iter().all(|t| t.is_finished())) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the flood did not finish in 300 s\n{}",
            server.stderr_tail()
        );
        if let Some(m) = e2e::MemStatus::read(server.pid()) {
            peak_rss = peak_rss.max(m.rss_mib());
        }
        let ready = e2e::get(&ready_url).await;
        assert_eq!(
            ready.status,
            200,
            "/ready during the flood: {}",
            ready.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.expect("HTTP sender panicked"));
    }
    for t in grpc_tasks {
        outcomes.extend(t.await.expect("gRPC sender panicked"));
    }
    let mem = server.mem();
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let ok = count(&|o| matches!(o, Outcome::Ok));
    let http503 = count(&|o| matches!(o, Outcome::Http503(_)));
    let unavailable = count(&|o| matches!(o, Outcome::GrpcUnavailable(_)));
    eprintln!(
        "flood of {} x {} MiB in {:?}: {ok} accepted, {http503} HTTP 503, {unavailable} gRPC UNAVAILABLE; peak RSS sampled {peak_rss:.0} MiB, VmHWM {:.0} MiB (limit {limit_mib} MiB)",
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
            ) || matches!(o, Outcome::Http503(None))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} flood requests got an answer other than success, 503 with Retry-After, or UNAVAILABLE:\n{:#?}",
        wrong.len(),
        outcomes.len(),
        &wrong[..wrong.len().min(10)]
    );
    for o in &outcomes {
        if let Outcome::Http503(Some(v)) = o {
            assert!(
                v.parse::<u64>().is_ok(),
                "Retry-After is not a number of seconds: {v:?}"
            );
        }
    }
    assert!(
        http503 + unavailable > 0,
        "the memory limiter refused nothing of {} concurrent {} MiB requests",
        outcomes.len(),
        body.len() / MIB
    );
    assert!(http503 > 0, "no HTTP request was refused with 503");
    assert!(
        unavailable > 0,
        "no gRPC request was refused with UNAVAILABLE"
    );
    if some_must_pass {
        assert!(ok > 0, "the limiter refused every request of the flood");
    }
    let bound = limit_mib as f64 + HWM_SLACK_MIB;
    assert!(
        mem.hwm_mib() < bound,
        "peak memory (VmHWM) {:.0} MiB exceeded limit {limit_mib} + {HWM_SLACK_MIB} MiB",
        mem.hwm_mib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limiter_refuses_a_flood_and_recovers() {
    // The limit sits just above the working set of a server that has taken a few requests.
    let (idle, warm) = probe_rss_mib(5).await;
    let limit_mib = (warm.ceil() as u64 + 24).max(40);
    eprintln!(
        "RSS idle {idle:.1} MiB, warm {warm:.1} MiB -> --memory-limit-mib {limit_mib} --memory-spike-mib {SPIKE_MIB}"
    );
    let server = start_limited(limit_mib);
    flood(&server, limit_mib, true).await;
    // After the flood, data is accepted again (the limiter may need a moment to see RSS fall).
    accepts_again(&server, limit_mib, "after the flood").await;
}

/// With the limit just above the idle server's RSS, neither one large request nor a flood may
/// lock the server into refusing everything: memory freed after the requests has to become free
/// again (for the limiter's RSS check) once nothing is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limiter_just_above_idle_recovers_after_a_flood() {
    let (idle, _) = probe_rss_mib(0).await;
    let limit_mib = (idle.ceil() as u64 + 24).max(40);
    eprintln!(
        "RSS idle {idle:.1} MiB -> --memory-limit-mib {limit_mib} --memory-spike-mib {SPIKE_MIB}"
    );
    let server = start_limited(limit_mib);
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    otlp::export(
        &mut client,
        otlp::request_of_size("one-large", REQUEST_BYTES),
    )
    .await
    .unwrap_or_else(|s| {
        panic!(
            "one {} MiB request alone was refused: {s:?}",
            REQUEST_BYTES / MIB
        )
    });
    accepts_again(&server, limit_mib, "after one large request").await;
    // So close to the idle RSS, refusing the whole flood is fair; refusing forever is not.
    flood(&server, limit_mib, false).await;
    accepts_again(&server, limit_mib, "after the flood").await;
}
