//! End-to-end test harness: runs the real `sextant` binary and talks to it over the network.
//!
//! * [`Server`]: `sextant all-in-one` on a temporary (or given) data directory, every port 0,
//!   with the bound addresses read from its stdout; kill -9, SIGTERM and restart.
//! * HTTP helpers over reqwest, trace polling, and the Tempo API shapes.
//! * [`flat`]: spans flattened with their resource and scope and normalised, so that what a
//!   client sent can be compared field by field with what the query API gives back.
//! * [`python`]: a virtualenv with the official OpenTelemetry Python SDK.
//! * [`otlp`]: synthetic OTLP requests and raw gRPC clients.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use sextant_otlp_proto as otlp_proto;

pub mod collector;
pub mod flat;
pub mod otlp;
pub mod python;
pub mod scenario;

/// How long a server may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a written trace may take to become readable (it should be immediate).
pub const TRACE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- locating things

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `sextant` binary: `$SEXTANT_BIN`, else `<workspace>/target/debug/sextant`.
pub fn sextant_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SEXTANT_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SEXTANT_BIN={} does not exist; build it first: cargo build -p sextant-cli (cargo xtask ci does this)",
            path.display()
        );
        return path;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join("sextant");
    assert!(
        path.is_file(),
        "{} is missing; build it first: cargo build -p sextant-cli (cargo xtask ci does this)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------- processes

/// Output captured by a background reader thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn push_line(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }
}

pub(crate) fn spawn_line_reader<R: Read + Send + 'static>(
    reader: R,
    captured: Captured,
    lines: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    captured.push_line(line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line.to_string());
                    }
                }
            }
        }
    })
}

/// The tail of a long text (for panic messages).
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            tail(&self.stdout, 20_000),
            tail(&self.stderr, 20_000)
        )
    }
}

/// Runs a command to completion with a timeout, reading both pipes on threads; kills it (and
/// panics) on timeout.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> RunOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = Captured::default();
    let err = Captured::default();
    let t1 = spawn_line_reader(child.stdout.take().unwrap(), out.clone(), None);
    let t2 = spawn_line_reader(child.stderr.take().unwrap(), err.clone(), None);
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = t1.join();
            let _ = t2.join();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                tail(&out.text(), 20_000),
                tail(&err.text(), 20_000)
            );
        }
    };
    let _ = t1.join();
    let _ = t2.join();
    RunOutput {
        status,
        stdout: out.text(),
        stderr: err.text(),
    }
}

/// `/proc/<pid>/status` memory figures, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct MemStatus {
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
}

impl MemStatus {
    pub fn read(pid: u32) -> Option<MemStatus> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        Some(MemStatus {
            vm_rss_kib: field("VmRSS:")?,
            vm_hwm_kib: field("VmHWM:")?,
        })
    }

    pub fn rss_mib(&self) -> f64 {
        self.vm_rss_kib as f64 / 1024.0
    }

    pub fn hwm_mib(&self) -> f64 {
        self.vm_hwm_kib as f64 / 1024.0
    }
}

// ---------------------------------------------------------------- the server

enum DataDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(dir) => dir.path(),
            DataDir::Given(path) => path,
        }
    }
}

/// A running `sextant all-in-one`.
pub struct Server {
    child: Option<Child>,
    data_dir: DataDir,
    extra_args: Vec<String>,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// The OTLP/gRPC address.
    pub grpc_addr: SocketAddr,
    /// The OTLP/HTTP address.
    pub http_addr: SocketAddr,
    /// The query (Tempo API) address.
    pub query_addr: SocketAddr,
    /// The Jaeger query API address.
    pub jaeger_addr: SocketAddr,
    /// How many times this server has been started.
    pub generation: u32,
}

impl Server {
    /// Starts a server on a fresh temporary data directory.
    pub fn start(extra_args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("sextant-e2e-")
            .tempdir()
            .expect("create temp data dir");
        Self::start_in(DataDir::Temp(dir), extra_args)
    }

    /// Starts a server on a data directory that the caller owns (and removes).
    pub fn start_with_data_dir(data_dir: &Path, extra_args: &[&str]) -> Server {
        Self::start_in(DataDir::Given(data_dir.to_path_buf()), extra_args)
    }

    fn start_in(data_dir: DataDir, extra_args: &[&str]) -> Server {
        let mut server = Server {
            child: None,
            data_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            stdout: Captured::default(),
            stderr: Captured::default(),
            readers: Vec::new(),
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
            query_addr: ([127, 0, 0, 1], 0).into(),
            jaeger_addr: ([127, 0, 0, 1], 0).into(),
            generation: 0,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.generation += 1;
        let mut cmd = Command::new(sextant_bin());
        cmd.arg("all-in-one")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--otlp-grpc-addr", "127.0.0.1:0"])
            .args(["--otlp-http-addr", "127.0.0.1:0"])
            .args(["--query-addr", "127.0.0.1:0"])
            .args(["--jaeger-addr", "127.0.0.1:0"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        // Each start gets fresh buffers, so messages are about this run.
        self.stdout = Captured::default();
        self.stderr = Captured::default();
        let (tx, rx) = mpsc::channel();
        self.readers.push(spawn_line_reader(
            child.stdout.take().unwrap(),
            self.stdout.clone(),
            Some(tx),
        ));
        self.readers.push(spawn_line_reader(
            child.stderr.take().unwrap(),
            self.stderr.clone(),
            None,
        ));
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let (mut grpc, mut http, mut query, mut jaeger) = (None, None, None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim();
                    let addr = |prefix: &str| -> Option<SocketAddr> {
                        let rest = line.strip_prefix(prefix)?;
                        Some(rest.trim().parse().unwrap_or_else(|e| {
                            self.fail_start(&format!("unparsable address in {line:?}: {e}"))
                        }))
                    };
                    if let Some(a) = addr("otlp-grpc listening on ") {
                        grpc = Some(a);
                    } else if let Some(a) = addr("otlp-http listening on ") {
                        http = Some(a);
                    } else if let Some(a) = addr("query listening on ") {
                        query = Some(a);
                    } else if let Some(a) = addr("jaeger listening on ") {
                        jaeger = Some(a);
                    } else if line == "ready" {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail_start(&format!(
                        "server (pid {pid}) did not print `ready` within {READY_TIMEOUT:?}"
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| wait_timeout(c, Duration::from_secs(10)));
                    self.fail_start(&format!(
                        "server (pid {pid}) closed stdout before `ready` (exit status: {status:?})"
                    ));
                }
            }
        }
        let (Some(grpc), Some(http), Some(query), Some(jaeger)) = (grpc, http, query, jaeger)
        else {
            self.fail_start(&format!(
                "server printed `ready` without all four `... listening on` lines \
                 (grpc {grpc:?}, http {http:?}, query {query:?}, jaeger {jaeger:?})"
            ))
        };
        self.grpc_addr = grpc;
        self.http_addr = http;
        self.query_addr = query;
        self.jaeger_addr = jaeger;
        for addr in [
            self.grpc_addr,
            self.http_addr,
            self.query_addr,
            self.jaeger_addr,
        ] {
            assert!(
                addr.ip().is_loopback() && addr.port() != 0,
                "server reported a bad address {addr}"
            );
        }
    }

    fn fail_start(&self, why: &str) -> ! {
        // Give the stderr reader a moment to collect the last words.
        std::thread::sleep(Duration::from_millis(200));
        panic!(
            "{why}\ncommand: {} all-in-one --data-dir {} ... {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            sextant_bin().display(),
            self.data_dir.path().display(),
            self.extra_args,
            tail(&self.stdout.text(), 10_000),
            tail(&self.stderr.text(), 20_000)
        );
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// `http://127.0.0.1:PORT` of the OTLP/gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of the OTLP/HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `http://127.0.0.1:PORT/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    /// `http://127.0.0.1:PORT` of the query API.
    pub fn query_url(&self) -> String {
        format!("http://{}", self.query_addr)
    }

    /// The Jaeger query API's base URL.
    pub fn jaeger_url(&self) -> String {
        format!("http://{}", self.jaeger_addr)
    }

    /// What the server wrote to stderr since its last start.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// What the server wrote to stdout since its last start.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// The last lines of stderr, for assertion messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr.text(), 8_000).to_string()
    }

    /// Whether the process is still alive (not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// The server's memory figures.
    pub fn mem(&self) -> MemStatus {
        MemStatus::read(self.pid()).expect("read /proc/<pid>/status")
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }

    /// SIGTERM and wait (up to 30 s) for the exit status; panics if it does not exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        signal(child.id(), libc::SIGTERM);
        match wait_timeout(&mut child, Duration::from_secs(30)) {
            Some(status) => {
                self.join_readers();
                status
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.join_readers();
                panic!(
                    "server did not exit within 30 s of SIGTERM\n--- stderr ---\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// Stops the server (gracefully if it is still running) and starts it again on the same
    /// data directory with the same arguments; the addresses change.
    pub fn restart(&mut self) {
        if self.is_running() {
            let status = self.terminate();
            assert!(
                status.success(),
                "server exited with {status} on SIGTERM\n--- stderr ---\n{}",
                self.stderr_tail()
            );
        } else if let Some(mut child) = self.child.take() {
            let _ = child.wait();
            self.join_readers();
        }
        self.spawn();
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.join_readers();
        // The TempDir (if any) is removed when `data_dir` drops.
    }
}

// ---------------------------------------------------------------- HTTP

/// An HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response (status {}) is not JSON: {e}\n{}",
                self.status,
                tail(&self.text(), 4_000)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }

    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }
}

/// A client with generous timeouts and no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

async fn read(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("read response body").to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// An error with its sources, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `GET url`.
pub async fn get(url: &str) -> Resp {
    get_with(url, &[]).await
}

/// `GET url` with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", error_chain(&e)));
    read(resp).await
}

/// `POST url` with a body and headers.
pub async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let mut req = client().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {}", error_chain(&e)));
    read(resp).await
}

/// Any method.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method.clone(), url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {}", error_chain(&e)));
    read(resp).await
}

/// `GET url` expecting 200 and a JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let resp = get(url).await;
    assert_eq!(
        resp.status,
        200,
        "GET {url} answered {}: {}",
        resp.status,
        tail(&resp.text(), 4_000)
    );
    resp.json()
}

/// Percent-encodes a query parameter value.
pub fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Polls `GET /ready` until it answers 200.
pub async fn wait_ready(server: &Server) {
    let url = format!("{}/ready", server.query_url());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = client().get(&url).send().await {
            if resp.status().as_u16() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- traces through the query API

/// The spans of a `TracesData`.
pub fn count_spans(data: &otlp_proto::proto::TracesData) -> usize {
    otlp_proto::span_count(&data.resource_spans)
}

/// Decodes the `{"batches":[...]}` of `GET /api/traces/<id>` with Sextant's OTLP/JSON decoder
/// (rewrapped as `{"resourceSpans":[...]}`).
pub fn decode_batches(value: &serde_json::Value) -> otlp_proto::proto::TracesData {
    let batches = value
        .get("batches")
        .unwrap_or_else(|| panic!("no `batches` in {}", tail(&value.to_string(), 4_000)));
    assert!(batches.is_array(), "`batches` is not an array: {batches}");
    let doc = serde_json::json!({ "resourceSpans": batches });
    otlp_proto::json::decode_traces_data(doc.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("our own JSON output does not decode: {e}\n{doc}"))
}

/// Decodes the `{"trace":{"resourceSpans":[...]}}` of `GET /api/v2/traces/<id>`.
pub fn decode_v2(value: &serde_json::Value) -> otlp_proto::proto::TracesData {
    let trace = value
        .get("trace")
        .unwrap_or_else(|| panic!("no `trace` in {}", tail(&value.to_string(), 4_000)));
    otlp_proto::json::decode_traces_data(trace.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("v2 `trace` does not decode: {e}\n{trace}"))
}

/// `GET /api/traces/<id>` (JSON), polled until it holds at least `expected` spans.
pub async fn wait_for_trace(
    server: &Server,
    trace_id: &str,
    expected: usize,
) -> (serde_json::Value, otlp_proto::proto::TracesData) {
    let url = format!("{}/api/traces/{trace_id}", server.query_url());
    let deadline = Instant::now() + TRACE_TIMEOUT;
    loop {
        let resp = get(&url).await;
        let mut last = format!("status {}: {}", resp.status, tail(&resp.text(), 2_000));
        if resp.status == 200 {
            let value = resp.json();
            let data = decode_batches(&value);
            let n = count_spans(&data);
            if n >= expected {
                return (value, data);
            }
            last = format!("{n} of {expected} spans");
        } else {
            assert_eq!(
                resp.status, 404,
                "GET {url} answered neither 200 nor 404: {last}"
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "trace {trace_id} did not reach {expected} spans within {TRACE_TIMEOUT:?}; last: {last}\n--- server stderr ---\n{}",
                server.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/traces/<id>` with `Accept: application/protobuf`, decoded as `TracesData`.
pub async fn get_trace_protobuf(server: &Server, trace_id: &str) -> otlp_proto::proto::TracesData {
    use prost::Message as _;
    let url = format!("{}/api/traces/{trace_id}", server.query_url());
    let resp = get_with(&url, &[("accept", "application/protobuf")]).await;
    assert_eq!(
        resp.status,
        200,
        "GET {url} (protobuf) answered {}: {}",
        resp.status,
        tail(&resp.text(), 2_000)
    );
    assert!(
        resp.content_type().contains("protobuf"),
        "protobuf answer has content-type {:?}",
        resp.content_type()
    );
    otlp_proto::proto::TracesData::decode(resp.body.as_slice())
        .unwrap_or_else(|e| panic!("protobuf trace does not decode as TracesData: {e}"))
}

/// `GET /api/search?<query>`: the trace ids found, with the whole answer.
pub async fn search(server: &Server, query: &str) -> (Vec<String>, serde_json::Value) {
    let url = format!("{}/api/search?{query}", server.query_url());
    let value = get_json(&url).await;
    let traces = value
        .get("traces")
        .and_then(|t| t.as_array())
        .unwrap_or_else(|| panic!("search answer has no `traces` array: {value}"));
    let ids = traces
        .iter()
        .map(|t| {
            t.get("traceID")
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("search hit without traceID: {t}"))
                .to_string()
        })
        .collect();
    (ids, value)
}

/// Canonical form of a hex trace id for comparisons: lowercase, leading zeros kept.
pub fn same_trace_id(a: &str, b: &str) -> bool {
    // Tempo trims leading zeros in search results; accept that but nothing else.
    a.trim_start_matches('0')
        .eq_ignore_ascii_case(b.trim_start_matches('0'))
}

/// Walks a JSON value, calling `f(path, key, value)` for every object member.
pub fn walk_json(
    value: &serde_json::Value,
    path: &str,
    f: &mut dyn FnMut(&str, &str, &serde_json::Value),
) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{path}.{k}");
                f(&p, k, v);
                walk_json(v, &p, f);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_json(v, &format!("{path}[{i}]"), f);
            }
        }
        _ => {}
    }
}

/// Checks the OTLP/JSON conventions of a query answer: ids lowercase hex of the right length,
/// 64-bit integers (times, intValue) as decimal strings, `kind` and status `code` as integers.
pub fn check_otlp_json_conventions(value: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk_json(value, "$", &mut |path, key, v| {
        let hex_len = match key {
            "traceId" => Some(32),
            "spanId" | "parentSpanId" => Some(16),
            _ => None,
        };
        if let Some(len) = hex_len {
            match v.as_str() {
                Some(s)
                    if s.len() == len
                        && s.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {}
                Some("") if key == "parentSpanId" => {}
                _ => problems.push(format!("{path} = {v} is not {len} lowercase hex digits")),
            }
        }
        if matches!(
            key,
            "startTimeUnixNano" | "endTimeUnixNano" | "timeUnixNano" | "intValue"
        ) {
            match v.as_str() {
                Some(s)
                    if !s.is_empty()
                        && s.trim_start_matches('-')
                            .bytes()
                            .all(|b| b.is_ascii_digit()) => {}
                _ => problems.push(format!("{path} = {v} is not a decimal string")),
            }
        }
        if key == "kind" && !v.is_u64() {
            problems.push(format!("{path} = {v} is not an integer enum"));
        }
        if key == "code" && path.ends_with(".status.code") && !v.is_u64() {
            problems.push(format!("{path} = {v} is not an integer enum"));
        }
    });
    problems
}

// ---------------------------------------------------------------- raw HTTP/1.1

/// What a raw HTTP exchange saw.
#[derive(Debug, Default)]
pub struct RawExchange {
    /// Status code, if a status line arrived.
    pub status: Option<u16>,
    /// The response head and whatever body arrived.
    pub response: String,
    /// How many body bytes were written before the server stopped reading (or all of them).
    pub body_bytes_written: usize,
    /// The error that ended writing early, if any (a server may answer before reading it all).
    pub write_error: Option<String>,
    /// The error that ended reading, if any.
    pub read_error: Option<String>,
}

/// POSTs over a plain TCP socket, reading the answer while the body is still being written, as
/// a careful client does: a server may answer (413, say) before it has read the body. The body
/// is sent with Content-Length, or chunked if `chunked`.
pub fn raw_http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunked: bool,
) -> RawExchange {
    use std::io::Write as _;
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut stream = stream.try_clone().unwrap();
        let answered = answered.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            let mut read_error = None;
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(head_end) = find_subslice(&buf, b"\r\n\r\n") {
                            answered.store(true, Ordering::SeqCst);
                            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok());
                            if let Some(len) = len {
                                if buf.len() >= head_end + 4 + len {
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        read_error = Some(e.to_string());
                        break;
                    }
                }
            }
            (buf, read_error)
        })
    };

    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    let mut exchange = RawExchange::default();
    let mut write_error: Option<String> = None;
    let mut write = |bytes: &[u8]| -> bool {
        match stream.write_all(bytes) {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e.to_string());
                false
            }
        }
    };
    if write(head.as_bytes()) {
        for piece in body.chunks(64 * 1024) {
            if answered.load(Ordering::SeqCst) {
                break;
            }
            let ok = if chunked {
                write(format!("{:x}\r\n", piece.len()).as_bytes()) && write(piece) && write(b"\r\n")
            } else {
                write(piece)
            };
            if !ok {
                break;
            }
            exchange.body_bytes_written += piece.len();
        }
        if chunked && !answered.load(Ordering::SeqCst) {
            write(b"0\r\n\r\n");
        }
    }
    exchange.write_error = write_error;
    let (buf, read_error) = reader.join().expect("reader thread");
    let _ = stream.shutdown(std::net::Shutdown::Both);
    exchange.read_error = read_error;
    exchange.response = String::from_utf8_lossy(&buf).into_owned();
    exchange.status = exchange
        .response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    exchange
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat::{self, FlatSpan};
    use sextant_otlp_proto::proto as pb;

    #[test]
    fn otlp_json_conventions_catch_upper_case_ids_and_numeric_times() {
        let good = serde_json::json!({"batches":[{"scopeSpans":[{"spans":[{
            "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "startTimeUnixNano":"1","kind":2,"status":{"code":2},
            "attributes":[{"key":"a","value":{"intValue":"-3"}}]}]}]}]});
        assert!(check_otlp_json_conventions(&good).is_empty());
        let bad = serde_json::json!({"batches":[{"scopeSpans":[{"spans":[{
            "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"7u4=",
            "startTimeUnixNano":1,"kind":"SPAN_KIND_SERVER",
            "attributes":[{"key":"a","value":{"intValue":3}}]}]}]}]});
        let problems = check_otlp_json_conventions(&bad);
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn compare_names_each_difference() {
        let span = pb::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "a".into(),
            attributes: vec![otlp::kv_str("k", "v"), otlp::kv_str("b", "c")],
            ..Default::default()
        };
        let rs = |span: pb::Span| pb::ResourceSpans {
            resource: Some(pb::Resource {
                attributes: vec![otlp::kv_str("service.name", "s")],
                ..Default::default()
            }),
            scope_spans: vec![pb::ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        };
        let sent: Vec<FlatSpan> = flat::flatten(&[rs(span.clone())]);
        // Attribute order does not matter; an absent status equals the default one.
        let mut reordered = span.clone();
        reordered.attributes.reverse();
        reordered.status = Some(pb::Status::default());
        assert_eq!(flat::compare(&sent, &flat::flatten(&[rs(reordered)])), "");
        let mut changed = span.clone();
        changed.name = "b".into();
        changed.end_time_unix_nano = 5;
        let diff = flat::compare(&sent, &flat::flatten(&[rs(changed)]));
        assert!(
            diff.contains("name") && diff.contains("end_time_unix_nano"),
            "{diff}"
        );
        let diff = flat::compare(&sent, &[]);
        assert!(diff.contains("missing"), "{diff}");
        let diff = flat::compare(&[], &sent);
        assert!(diff.contains("never sent"), "{diff}");
    }

    #[test]
    fn trace_ids_compare_without_leading_zeros_and_case() {
        assert!(same_trace_id("00ab", "AB"));
        assert!(!same_trace_id("ab", "abc"));
    }

    #[test]
    fn request_of_size_is_at_least_that_big() {
        use prost::Message as _;
        let req = otlp::request_of_size("s", 1 << 20);
        assert!(req.encoded_len() >= 1 << 20);
        assert!(req.encoded_len() < (1 << 20) + (1 << 19));
    }
}
