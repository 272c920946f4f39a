//! Acknowledged means durable: every span of every acknowledged gRPC export survives kill -9,
//! whether the kill comes right after the last acknowledgement or while senders are mid-flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sextant_otlp_proto::proto::ExportTraceServiceRequest;
use sextant_tests::otlp::{self, random_trace_id};
use sextant_tests::{self as e2e, Server};

const BATCHES: usize = 50;
const SPANS_PER_BATCH: usize = 20;
const ROUNDS: usize = 3;
const CONCURRENT_SENDERS: usize = 4;

/// Trace id (hex) -> the span ids (hex) of its acknowledged export.
type Acked = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

fn batch(round: usize) -> (String, BTreeSet<String>, ExportTraceServiceRequest) {
    let tid = random_trace_id();
    let req = otlp::trace_request(&format!("durability-{round}"), &tid, SPANS_PER_BATCH, 64);
    let ids = req.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| hex::encode(&s.span_id))
        .collect();
    (hex::encode(tid), ids, req)
}

/// Checks that every acknowledged trace is there, whole. Returns how many traces were checked.
async fn verify(server: &Server, acked: &BTreeMap<String, BTreeSet<String>>, when: &str) -> usize {
    let client = e2e::client();
    let deadline = Instant::now() + e2e::TRACE_TIMEOUT;
    let mut missing: Vec<String> = Vec::new();
    for (tid, ids) in acked {
        loop {
            let url = format!("{}/api/traces/{tid}", server.query_url());
            let resp = client
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {}", e2e::error_chain(&e)));
            let status = resp.status().as_u16();
            let body = resp.bytes().await.expect("body");
            let got: BTreeSet<String> = if status == 200 {
                let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON trace");
                let data = e2e::decode_batches(&value);
                sextant_tests::flat::flatten(&data.resource_spans)
                    .iter()
                    .map(|s| s.span_id_hex())
                    .collect()
            } else {
                assert_eq!(
                    status,
                    404,
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
                BTreeSet::new()
            };
            if &got == ids {
                break;
            }
            let extra: Vec<_> = got.difference(ids).collect();
            assert!(
                extra.is_empty(),
                "{when}: trace {tid} has spans never sent: {extra:?}"
            );
            if Instant::now() >= deadline {
                missing.push(format!(
                    "trace {tid}: {} of {} acknowledged spans",
                    got.len(),
                    ids.len()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged traces lost spans after kill -9:\n{}\n--- server stderr ---\n{}",
        missing.len(),
        acked.len(),
        missing.join("\n"),
        server.stderr_tail()
    );
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_kill_9() {
    let data_dir = tempfile::Builder::new()
        .prefix("sextant-durability-")
        .tempdir()
        .unwrap();
    // Blocks are cut (and compacted) every second while the senders run, so the kills land
    // in the middle of cuts and compactions too.
    let mut server = Server::start_with_data_dir(
        data_dir.path(),
        &[
            "--set",
            "exporters.store.blocks.max_block_duration=1ms",
            "--set",
            "exporters.store.blocks.max_trace_idle=0s",
            "--set",
            "exporters.store.blocks.max_block_spans=300",
        ],
    );
    let acked: Acked = Arc::default();

    for round in 0..ROUNDS {
        // 1. Sequential batches; kill -9 right after the last acknowledgement.
        let mut client = otlp::trace_client(&server.grpc_url()).await;
        for n in 0..BATCHES {
            let (tid, ids, req) = batch(round);
            match otlp::export(&mut client, req).await {
                Ok(resp) => {
                    if let Some(ps) = resp.partial_success {
                        assert_eq!(
                            ps.rejected_spans, 0,
                            "round {round} batch {n}: partial success {ps:?}"
                        );
                    }
                    acked.lock().unwrap().insert(tid, ids);
                }
                Err(status) => panic!(
                    "round {round}: batch {n} refused: {status:?}\n--- server stderr ---\n{}",
                    server.stderr_tail()
                ),
            }
        }
        server.kill9();
        server.restart();
        let snapshot = acked.lock().unwrap().clone();
        verify(
            &server,
            &snapshot,
            &format!("round {round}, after the last ack"),
        )
        .await;

        // 2. Concurrent senders; kill -9 while they are mid-flight.
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::new();
        for _ in 0..CONCURRENT_SENDERS {
            let url = server.grpc_url();
            let (stop, acks, failures, acked) =
                (stop.clone(), acks.clone(), failures.clone(), acked.clone());
            senders.push(tokio::spawn(async move {
                let mut client = otlp::trace_client(&url).await;
                // Bounded: a sender never sends more than this many batches.
                for _ in 0..10_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (tid, ids, req) = batch(round);
                    match otlp::export(&mut client, req).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(tid, ids);
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            // The server is gone: this request was not acknowledged.
                            failures.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                }
            }));
        }
        // Let them get going, then kill without warning.
        let target = 20 + round * 15;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "round {round}: concurrent senders got only {} acks in 60 s\n--- server stderr ---\n{}",
                acks.load(Ordering::SeqCst),
                server.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for s in senders {
            tokio::time::timeout(Duration::from_secs(90), s)
                .await
                .expect("a sender hung after the kill")
                .expect("sender panicked");
        }
        eprintln!(
            "round {round}: killed with {} concurrent acks, {} requests cut off",
            acks.load(Ordering::SeqCst),
            failures.load(Ordering::SeqCst)
        );
        server.restart();
        let snapshot = acked.lock().unwrap().clone();
        let n = verify(
            &server,
            &snapshot,
            &format!("round {round}, killed mid-flight"),
        )
        .await;
        eprintln!("round {round}: {n} acknowledged traces intact");
    }

    // The background thread cuts within a second of a start: wait for a block (the rounds may
    // have killed each process before its first cut on a fast machine), then check again.
    let block_files = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("blocks"))
            .map(|rd| {
                rd.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "blk"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while block_files(data_dir.path()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no block was cut\n{}",
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot = acked.lock().unwrap().clone();
    verify(&server, &snapshot, "once blocks are cut").await;

    // A clean shutdown at the end also keeps everything.
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM exit status {status}\n{}",
        server.stderr_tail()
    );
    server.restart();
    let snapshot = acked.lock().unwrap().clone();
    verify(&server, &snapshot, "after SIGTERM and restart").await;
    drop(server);
}

/// SIGTERM drains: requests in flight when the signal arrives are answered, the process exits
/// 0, and everything acknowledged is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let mut server = Server::start(&[]);
    let acked: Acked = Arc::default();
    let acks = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..CONCURRENT_SENDERS {
        let url = server.grpc_url();
        let (acks, acked) = (acks.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut client = otlp::trace_client(&url).await;
            let mut errors = Vec::new();
            for _ in 0..10_000 {
                let (tid, ids, req) = batch(99);
                match otlp::export(&mut client, req).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(tid, ids);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => {
                        errors.push(status);
                        break;
                    }
                }
            }
            errors
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.load(Ordering::SeqCst) < 30 {
        assert!(
            Instant::now() < deadline,
            "senders got only {} acks in 60 s",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = server.pid();
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(
        status.success(),
        "exit status {status} after SIGTERM (pid {pid})\n--- stderr ---\n{}",
        server.stderr_tail()
    );
    let mut refused = Vec::new();
    for s in senders {
        let errors = tokio::time::timeout(Duration::from_secs(90), s)
            .await
            .expect("a sender hung after SIGTERM")
            .expect("sender panicked");
        refused.extend(errors);
    }
    // After the drain, new requests fail (the listener is gone); none that was accepted for
    // processing may have failed with an internal error.
    for s in &refused {
        assert!(
            !matches!(
                s.code(),
                tonic::Code::Internal | tonic::Code::DataLoss | tonic::Code::InvalidArgument
            ),
            "a request in flight at SIGTERM got {s:?} instead of being drained"
        );
    }
    eprintln!(
        "SIGTERM after {} acks; sender errors after it: {:?}",
        acks.load(Ordering::SeqCst),
        refused
            .iter()
            .map(|s| format!("{:?}: {}", s.code(), s.message()))
            .collect::<Vec<_>>()
    );
    server.restart();
    let snapshot = acked.lock().unwrap().clone();
    verify(
        &server,
        &snapshot,
        "after SIGTERM while senders were mid-flight",
    )
    .await;
}
