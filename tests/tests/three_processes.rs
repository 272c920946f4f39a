//! The split deployment: `sextant collector` -> `sextant store` -> `sextant query`, three
//! processes, then a second store node and a query node over both (`--store a,b`): traces of
//! both are found, a trace split across the nodes comes back merged, and a node killed makes
//! the query node answer an error in bounded time, never hang.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use sextant_tests::collector::Collector;
use sextant_tests::otlp::{self as o, random_trace_id};
use sextant_tests::otlp_proto::proto::{ExportTraceServiceRequest, TracesData};
use sextant_tests::{
    count_spans, decode_batches, get, get_json, get_with, sextant_bin, tail, urlencode,
    READY_TIMEOUT, TRACE_TIMEOUT,
};

/// A `sextant` server process (store or query node): its `<what> listening on <addr>` lines
/// are read until `ready`; killed and reaped on drop, its temporary directory removed.
struct Node {
    name: String,
    child: Option<Child>,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
    addrs: BTreeMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(name: &str, args: &[String]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("sextant-3p-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new(sextant_bin());
        cmd.args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Lines::default();
        let stderr = Lines::default();
        let (tx, rx) = mpsc::channel();
        let readers = vec![
            spawn_reader(child.stdout.take().unwrap(), stdout.clone(), Some(tx)),
            spawn_reader(child.stderr.take().unwrap(), stderr.clone(), None),
        ];
        let mut node = Node {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
            readers,
            addrs: BTreeMap::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let line = line.trim();
                    if line == "ready" {
                        return node;
                    }
                    if let Some((what, addr)) = line.split_once(" listening on ") {
                        if let Ok(a) = addr.trim().parse() {
                            node.addrs.insert(what.to_string(), a);
                        }
                    }
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "{name} did not print `ready`\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        tail(&node.stdout.text(), 5_000),
                        node.stderr_tail()
                    );
                }
            }
        }
    }

    /// A store node on a fresh data directory, every port 0.
    fn store(name: &str) -> Node {
        let args = [
            "store",
            "--data-dir",
            "data",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--store-api-addr",
            "127.0.0.1:0",
        ];
        Node::start(name, &args.map(String::from))
    }

    /// A query node over `stores`.
    fn query(name: &str, stores: &[&Node]) -> Node {
        let urls: Vec<String> = stores.iter().map(|s| s.url("store api")).collect();
        let args = [
            "query".to_string(),
            "--store".to_string(),
            urls.join(","),
            "--query-addr".to_string(),
            "127.0.0.1:0".to_string(),
            "--jaeger-addr".to_string(),
            "127.0.0.1:0".to_string(),
        ];
        Node::start(name, &args)
    }

    fn url(&self, what: &str) -> String {
        let addr = self.addrs.get(what).unwrap_or_else(|| {
            panic!(
                "{} has no `{what} listening on` line; it printed {:?}",
                self.name, self.addrs
            )
        });
        format!("http://{addr}")
    }

    fn stderr_tail(&self) -> String {
        tail(&self.stderr.text(), 20_000).to_string()
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// SIGTERM, and the exit status within 30 s.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        sextant_tests::signal(child.id(), libc::SIGTERM);
        let status = sextant_tests::wait_timeout(&mut child, Duration::from_secs(30));
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        match status {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 30 s of SIGTERM", self.name);
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_reader<R: std::io::Read + Send + 'static>(
    reader: R,
    captured: Lines,
    lines: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let reader = std::io::BufReader::new(reader);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            captured.push(&line);
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    })
}

/// Lines captured by a reader thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<String>>);

impl Lines {
    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A collector: OTLP in, batch, OTLP/gRPC out to `store`.
fn collector_to(store: &Node) -> Collector {
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  batch:
    send_batch_size: 1024
    timeout: 100ms
exporters:
  otlp:
    endpoint: {}
    tls:
      insecure: true
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
"#,
        store.url("otlp-grpc")
    ))
}

async fn send(url: &str, req: ExportTraceServiceRequest) {
    let mut client = o::trace_client(url).await;
    o::export(&mut client, req)
        .await
        .unwrap_or_else(|e| panic!("export to {url}: {e}"));
}

/// `GET /api/traces/<id>` on the query node, polled until it holds `expected` spans.
async fn wait_trace(query: &Node, id: &str, expected: usize) -> TracesData {
    let url = format!("{}/api/traces/{id}", query.url("query"));
    let deadline = Instant::now() + TRACE_TIMEOUT;
    loop {
        let resp = get(&url).await;
        let mut last = format!("status {}: {}", resp.status, tail(&resp.text(), 2_000));
        if resp.status == 200 {
            let data = decode_batches(&resp.json());
            if count_spans(&data) == expected {
                return data;
            }
            last = format!("{} of {expected} spans", count_spans(&data));
        }
        if Instant::now() >= deadline {
            panic!(
                "trace {id} did not reach {expected} spans on {}: {last}\n--- stderr ---\n{}",
                query.name,
                query.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trace ids a Tempo search finds.
async fn search_ids(query: &Node, traceql: &str) -> Vec<String> {
    let url = format!(
        "{}/api/search?q={}&limit=50",
        query.url("query"),
        urlencode(traceql)
    );
    let value = get_json(&url).await;
    value["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("no traces in {value}"))
        .iter()
        .map(|t| t["traceID"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn has(ids: &[String], id: &str) -> bool {
    ids.iter()
        .any(|x| x.trim_start_matches('0') == id.trim_start_matches('0'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_store_and_query_nodes() {
    // ---- three processes: collector -> store A -> query over A.
    let mut store_a = Node::store("store A");
    let collector = collector_to(&store_a);
    let query_a = Node::query("query over A", &[&store_a]);

    let t1 = random_trace_id();
    let t1_hex = hex::encode(&t1);
    send(&collector.grpc_url(), o::trace_request("svc-a", &t1, 3, 0)).await;
    let data = wait_trace(&query_a, &t1_hex, 3).await;
    assert_eq!(count_spans(&data), 3);

    // Protobuf.
    let url = format!("{}/api/traces/{t1_hex}", query_a.url("query"));
    let resp = get_with(&url, &[("accept", "application/protobuf")]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let data = TracesData::decode(resp.body.as_slice()).expect("protobuf TracesData");
    assert_eq!(count_spans(&data), 3);

    // TraceQL search, pushed down to the node as terms.
    let ids = search_ids(
        &query_a,
        r#"{ resource.service.name = "svc-a" && name = "root" }"#,
    )
    .await;
    assert!(has(&ids, &t1_hex), "{ids:?}");
    let ids = search_ids(&query_a, r#"{ resource.service.name = "nobody" }"#).await;
    assert!(ids.is_empty(), "{ids:?}");

    // Tag values.
    let url = format!(
        "{}/api/v2/search/tag/resource.service.name/values",
        query_a.url("query")
    );
    let values = get_json(&url).await;
    assert!(values.to_string().contains("svc-a"), "{values}");

    // Jaeger.
    let services = get_json(&format!("{}/api/services", query_a.url("jaeger"))).await;
    assert!(services.to_string().contains("svc-a"), "{services}");
    let traces = get_json(&format!(
        "{}/api/traces?service=svc-a&lookback=2h&limit=20",
        query_a.url("jaeger")
    ))
    .await;
    assert!(traces.to_string().contains(&t1_hex), "{traces}");

    // ---- a second store node with other traces, and half of a trace split across both.
    let mut store_b = Node::store("store B");
    let t2 = random_trace_id();
    let t2_hex = hex::encode(&t2);
    send(
        &store_b.url("otlp-grpc"),
        o::trace_request("svc-b", &t2, 2, 0),
    )
    .await;

    let t3 = random_trace_id();
    let t3_hex = hex::encode(&t3);
    let whole = o::trace_request("svc-split", &t3, 2, 0);
    let mut part_a = whole.clone();
    part_a.resource_spans[0].scope_spans[0].spans.truncate(1);
    let mut part_b = whole.clone();
    part_b.resource_spans[0].scope_spans[0].spans.remove(0);
    send(&collector.grpc_url(), part_a).await;
    send(&store_b.url("otlp-grpc"), part_b).await;

    let query_ab = Node::query("query over A and B", &[&store_a, &store_b]);
    wait_trace(&query_ab, &t1_hex, 3).await;
    wait_trace(&query_ab, &t2_hex, 2).await;
    let merged = wait_trace(&query_ab, &t3_hex, 2).await;
    let names: Vec<&str> = merged
        .resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        names.contains(&"root") && names.contains(&"child-1"),
        "{names:?}"
    );
    assert_eq!(merged.resource_spans.len(), 1, "one resource, joined");

    let ids = search_ids(&query_ab, r#"{ resource.service.name = "svc-b" }"#).await;
    assert!(has(&ids, &t2_hex) && !has(&ids, &t1_hex), "{ids:?}");
    // A span on B of a trace whose root is on A: found, and the trace read whole.
    let ids = search_ids(
        &query_ab,
        r#"{ name = "child-1" && resource.service.name = "svc-split" }"#,
    )
    .await;
    assert!(has(&ids, &t3_hex), "{ids:?}");
    let ids = search_ids(&query_ab, "{ }").await;
    for id in [&t1_hex, &t2_hex, &t3_hex] {
        assert!(has(&ids, id), "{id} missing from {ids:?}");
    }
    let services = get_json(&format!("{}/api/services", query_ab.url("jaeger"))).await;
    for s in ["svc-a", "svc-b", "svc-split"] {
        assert!(services.to_string().contains(s), "{s} missing: {services}");
    }

    // ---- store B killed: an error in bounded time, not a hang and not a partial answer.
    store_b.kill9();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for path in [
        format!("/api/traces/{t1_hex}"),
        format!("/api/search?q={}", urlencode("{ }")),
    ] {
        let url = format!("{}{path}", query_ab.url("query"));
        let started = Instant::now();
        let resp = client
            .get(&url)
            .send()
            .await
            .expect("an answer, not a timeout");
        let took = started.elapsed();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status >= 500,
            "GET {url} answered {status} with store B down: {body}"
        );
        assert!(took < Duration::from_secs(15), "GET {url} took {took:?}");
        assert!(
            body.contains("store node"),
            "the error names the node: {body}"
        );
    }
    // The query node over A alone still answers.
    wait_trace(&query_a, &t1_hex, 3).await;

    // ---- SIGTERM stops the nodes cleanly.
    drop(collector);
    let mut query_a = query_a;
    let mut query_ab = query_ab;
    for node in [&mut query_a, &mut query_ab, &mut store_a] {
        let status = node.terminate();
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            node.name,
            node.stderr_tail()
        );
    }
}
