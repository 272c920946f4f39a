//! `sextant store inspect | verify | compact` against a store that a real all-in-one filled:
//! the figures add up to what was sent, compaction keeps every span, verification catches a
//! flipped byte and quarantines the block, and a running server's store is refused clearly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sextant_tests::otlp;
use sextant_tests::{self as e2e, RunOutput, Server};

/// Requests sent, each one trace of `SPANS_PER_TRACE` spans.
const TRACES: usize = 6;
const SPANS_PER_TRACE: usize = 30;

/// The default all-in-one config with blocks cut quickly and never compacted in the
/// background, so that a few requests make several blocks.
fn write_config(dir: &Path) -> PathBuf {
    let out = run(&["config", "default"]);
    assert!(out.status.success(), "config default:\n{}", out.describe());
    let mut text = out.stdout.clone();
    for (from, to) in [
        ("max_trace_idle: 5s", "max_trace_idle: 1ms"),
        ("max_block_duration: 30s", "max_block_duration: 1ms"),
        ("max_block_spans: 200000", "max_block_spans: 50"),
        ("compaction: true", "compaction: false"),
    ] {
        assert!(
            text.contains(from),
            "the default config has no {from:?}:\n{text}"
        );
        text = text.replace(from, to);
    }
    let path = dir.join("all-in-one.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(e2e::sextant_bin());
    cmd.args(args).env("NO_COLOR", "1").env("RUST_LOG", "warn");
    e2e::run_with_timeout(&mut cmd, Duration::from_secs(120))
}

fn store(sub: &str, data: &Path, extra: &[&str]) -> RunOutput {
    let data = data.to_str().unwrap();
    let mut args = vec!["store", sub, "--data-dir", data];
    args.extend_from_slice(extra);
    run(&args)
}

fn inspect_json(data: &Path) -> serde_json::Value {
    let out = store("inspect", data, &["--json"]);
    assert!(out.status.success(), "inspect --json:\n{}", out.describe());
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}):\n{}", out.describe()))
}

fn block_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "blk"))
        .collect();
    files.sort();
    files
}

/// Sends the traces one by one, a little apart, so that the server cuts them into blocks.
async fn send_traces(server: &Server) {
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    for i in 0..TRACES {
        let tid = otlp::random_trace_id();
        let req = otlp::trace_request(&format!("svc-{i}"), &tid, SPANS_PER_TRACE, 64);
        otlp::export(&mut client, req).await.expect("export");
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_compact_and_verify_a_store() {
    let dir = tempfile::Builder::new()
        .prefix("sextant-store-admin-")
        .tempdir()
        .unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sent = (TRACES * SPANS_PER_TRACE) as u64;

    let mut server = Server::start_with_data_dir(&data, &["--config", config.to_str().unwrap()]);
    send_traces(&server).await;

    // The running server holds the store: a clear refusal, not a panic.
    let busy = tokio::task::spawn_blocking({
        let data = data.clone();
        move || store("inspect", &data, &[])
    })
    .await
    .unwrap();
    assert_eq!(
        busy.status.code(),
        Some(1),
        "inspect of a busy store:\n{}",
        busy.describe()
    );
    assert!(
        busy.stderr.contains("in use by another process"),
        "no clear message for a busy store:\n{}",
        busy.describe()
    );
    assert!(!busy.stderr.contains("panicked"), "{}", busy.describe());

    let status = server.terminate();
    assert!(
        status.success(),
        "server exit {status}:\n{}",
        server.stderr_tail()
    );
    drop(server);

    // inspect: blocks, and every span sent either in a block or in the log.
    let out = store("inspect", &data, &[]);
    assert!(out.status.success(), "inspect:\n{}", out.describe());
    for needle in [
        "blocks in:",
        "write-ahead log",
        "ID",
        "LEVEL",
        "RATIO",
        "KiB",
    ] {
        assert!(
            out.stdout.contains(needle),
            "inspect lacks {needle:?}:\n{}",
            out.stdout
        );
    }
    let json = inspect_json(&data);
    let summary = &json["summary"];
    let blocks = summary["blocks"].as_u64().unwrap();
    assert!(blocks >= 2, "expected several blocks:\n{json:#}");
    assert_eq!(
        summary["block_spans"].as_u64().unwrap() + summary["wal_spans"].as_u64().unwrap(),
        sent,
        "spans in blocks + log != spans sent:\n{json:#}"
    );
    assert_eq!(summary["total_spans"].as_u64(), Some(sent));
    let rows = json["blocks"].as_array().unwrap();
    assert_eq!(rows.len() as u64, blocks);
    for b in rows {
        let id = b["id"].as_str().unwrap();
        assert!(
            out.stdout.contains(id),
            "the table lacks block {id}:\n{}",
            out.stdout
        );
        assert!(b["start"].as_str().unwrap().ends_with('Z'), "{b:#}");
    }
    // Newest first.
    let ends: Vec<u64> = rows.iter().map(|b| b["end_ns"].as_u64().unwrap()).collect();
    assert!(
        ends.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {ends:?}"
    );
    // Inspecting changes nothing.
    assert_eq!(inspect_json(&data)["summary"], *summary);

    // compact --all: one block, every span.
    let out = store("compact", &data, &["--all"]);
    assert!(out.status.success(), "compact --all:\n{}", out.describe());
    assert!(out.stdout.contains("compaction:"), "{}", out.describe());
    assert!(out.stdout.contains("->"), "{}", out.describe());
    let json = inspect_json(&data);
    assert_eq!(json["summary"]["blocks"].as_u64(), Some(1), "{json:#}");
    assert_eq!(
        json["summary"]["block_spans"].as_u64(),
        Some(sent),
        "{json:#}"
    );
    assert_eq!(json["summary"]["wal_spans"].as_u64(), Some(0), "{json:#}");
    assert_eq!(json["blocks"][0]["level"].as_u64(), Some(1), "{json:#}");
    let id = json["blocks"][0]["id"].as_str().unwrap().to_string();

    // verify: good.
    let out = store("verify", &data, &[]);
    assert_eq!(out.status.code(), Some(0), "verify:\n{}", out.describe());
    assert!(out.stdout.contains("1 good, 0 bad"), "{}", out.describe());

    // A flipped byte in the first page: bad, named, quarantined.
    let files = block_files(&data);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    assert!(bytes.len() > 100);
    bytes[20] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let out = store("verify", &data, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify of a bad block:\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("BAD {id}")),
        "verify does not name the bad block {id}:\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("bad block"), "{}", out.describe());
    assert!(
        block_files(&data).is_empty(),
        "the bad block is still served"
    );
    let quarantined = data
        .join("blocks")
        .join("quarantine")
        .join(files[0].file_name().unwrap());
    assert!(
        quarantined.is_file(),
        "{} is missing",
        quarantined.display()
    );

    // Nothing left to serve, nothing bad either.
    let json = inspect_json(&data);
    assert_eq!(json["summary"]["blocks"].as_u64(), Some(0), "{json:#}");
    let out = store("verify", &data, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
}

#[test]
fn a_missing_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    for sub in ["inspect", "verify", "compact"] {
        let out = store(sub, &missing, &[]);
        assert_eq!(out.status.code(), Some(1), "{sub}:\n{}", out.describe());
        assert!(
            out.stderr.contains("no store in"),
            "{sub}:\n{}",
            out.describe()
        );
        assert!(!missing.exists(), "{sub} created the directory");
    }
}
