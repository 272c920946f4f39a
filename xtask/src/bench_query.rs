//! `cargo xtask bench query`: the query service (Tempo HTTP API) over `--spans N` stored spans.
//!
//! Builds the dataset once with `crates/store/examples/bench_store.rs --keep DIR` (seed
//! [`SEED`], `DIR` = `target/bench/query-data-N`, a marker file `dataset.json` holding N, the
//! seed and bench_store's report) or reuses `DIR` when its marker says it holds that dataset.
//! Then it starts the release `sextant all-in-one --data-dir DIR/store` on free loopback ports
//! and times, over HTTP/1.1 keep-alive on loopback, trace by id for 200 known ids and a set of
//! TraceQL searches and a metrics query (2 warm-ups, then [`RUNS`] runs each). Every answer is
//! checked; a wrong one (an HTTP error, the rare value not found exactly once, a series sum
//! that is not the number of spans) fails the benchmark. The server's CPU time (utime + stime
//! of /proc/PID/stat) around each batch gives the spans scanned per second per core.
//!
//! The client and the server share the machine's cores; the client is one thread that waits
//! for each answer, so it takes little of them.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::bench::{log_file, num, Options};
use crate::bench_store::DEFAULT_SPANS;
use crate::util::{self, cargo, target_dir, ChildGuard, Lines};

/// Seed of the generated dataset (part of the marker: another seed is another dataset).
const SEED: u64 = 1;
/// Timed runs of each search, after [`WARMUPS`] untimed ones.
const RUNS: usize = 20;
const WARMUPS: usize = 2;
/// Trace ids looked up (bench_store reports this many sampled ids).
const LOOKUPS: usize = 200;
/// The marker written once bench_store finished.
const MARKER: &str = "dataset.json";
/// A dataset older than this is rebuilt: the store's default retention (7 days) would expire it.
const MAX_DATASET_AGE: Duration = Duration::from_secs(6 * 24 * 3600);
/// Searched windows reach this far past the generator's "now" (consumer spans end after it).
const WINDOW_SLACK_S: u64 = 120;
/// The metrics query's range and step.
const METRICS_RANGE_S: u64 = 24 * 3600;
const METRICS_STEP_S: u64 = 300;

const TARGET_TRACE_P50_MS: f64 = 2.0;
const TARGET_TRACE_P99_MS: f64 = 10.0;
const TARGET_SEARCH_P50_MS: f64 = 1_000.0;
const TARGET_SEARCH_P99_MS: f64 = 3_000.0;
const TARGET_SCAN_SPANS_PER_CORE_S: f64 = 20_000_000.0;
const TARGET_RARE_MS: f64 = 300.0;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the benchmark; see the module's doc.
pub fn run(opts: &Options) -> Result<()> {
    println!("==> cargo build --release -p sextant-cli, and sextant-store's bench_store example");
    util::run(cargo().args(["build", "--release", "-p", "sextant-cli"]))?;
    util::run(cargo().args([
        "build",
        "--release",
        "-p",
        "sextant-store",
        "--example",
        "bench_store",
    ]))?;
    let release = target_dir().join("release");
    let bin = release.join("sextant");
    let example = release.join("examples").join("bench_store");
    for path in [&bin, &example] {
        if !path.exists() {
            bail!("{} is missing after the build", path.display());
        }
    }
    let spans = opts.spans.unwrap_or(DEFAULT_SPANS);
    ensure!(spans > 0, "--spans must be at least 1");
    let dir = target_dir()
        .join("bench")
        .join(format!("query-data-{spans}"));
    let dataset = Dataset::obtain(&example, &dir, spans, opts.streams)?;
    let cores = util::nproc();
    let tick = clock_ticks_per_second();

    println!(
        "\n==> sextant all-in-one --data-dir {}",
        dataset.store.display()
    );
    let mut server = start_server(&bin, &dir, &dataset.store)?;
    let pid = server.child.pid();
    // Whatever the server does by itself after start (block loading, compaction) shows here.
    let idle_cpu0 = cpu_seconds(pid, tick)?;
    thread::sleep(Duration::from_secs(2));
    let idle_cpu_s = cpu_seconds(pid, tick)? - idle_cpu0;

    let mut http = Http::new(server.query_addr.clone());
    let result = measure(&mut http, &dataset, pid, tick);
    let status = server.child.terminate(SHUTDOWN_TIMEOUT)?;
    let measured = result?;
    if !status.success() {
        bail!(
            "all-in-one exited with {status} after SIGTERM{}",
            server.child.log_tail()
        );
    }
    report(&dataset, &measured, cores, idle_cpu_s)
}

/// The stored dataset and what bench_store said of it.
struct Dataset {
    store: PathBuf,
    reused: bool,
    spans: u64,
    traces: u64,
    /// bench_store's JSON report.
    report: Value,
    window_start_s: u64,
    window_end_s: u64,
    services: Vec<String>,
    root_service: String,
    searched_service: String,
    rare_value: String,
    rare_trace_id: String,
    /// Trace ids with their span counts.
    sample: Vec<(String, u64)>,
}

impl Dataset {
    /// Reuses `dir` when its marker names `spans` and [`SEED`], else builds it anew.
    fn obtain(example: &Path, dir: &Path, spans: u64, writers: u64) -> Result<Self> {
        let store = dir.join("store");
        let marker = dir.join(MARKER);
        if let Some(report) = Self::reusable(&marker, &store, spans)? {
            println!(
                "\n==> dataset: reusing {} ({spans} spans, seed {SEED}, marker {})",
                store.display(),
                marker.display()
            );
            return Self::from_report(store, true, report);
        }
        println!(
            "\n==> dataset: building {spans} spans (seed {SEED}) into {}",
            store.display()
        );
        if marker.exists() {
            fs::remove_file(&marker)
                .with_context(|| format!("cannot remove {}", marker.display()))?;
        }
        if store.exists() {
            fs::remove_dir_all(&store)
                .with_context(|| format!("cannot remove the unfinished {}", store.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut cmd = Command::new(example);
        cmd.args(["--spans", &spans.to_string()])
            .args(["--seed", &SEED.to_string()])
            .args(["--writers", &writers.to_string()])
            .args(["--lookups", &LOOKUPS.max(2_000).to_string()])
            .arg("--keep")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        println!("==> {}", util::display(&cmd));
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", example.display()))?;
        if !out.status.success() {
            bail!(
                "bench_store failed ({}) while building the dataset, see above",
                out.status
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| serde_json::from_str(l).ok())
            .context("bench_store's last line is not its JSON report")?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let content = json!({
            "spans": spans,
            "seed": SEED,
            "created_unix": created,
            "report": report,
        });
        fs::write(&marker, format!("{content:#}\n"))
            .with_context(|| format!("cannot write {}", marker.display()))?;
        Self::from_report(store, false, report)
    }

    /// The report in `marker` if it describes a finished dataset of `spans` spans and seed
    /// [`SEED`], young enough not to be expired by the store's retention.
    fn reusable(marker: &Path, store: &Path, spans: u64) -> Result<Option<Value>> {
        if !marker.exists() || !store.is_dir() {
            return Ok(None);
        }
        let text = fs::read_to_string(marker)
            .with_context(|| format!("cannot read {}", marker.display()))?;
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            println!("  {} is not JSON: rebuilding", marker.display());
            return Ok(None);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let age = now.saturating_sub(v["created_unix"].as_u64().unwrap_or(0));
        if v["spans"].as_u64() != Some(spans) || v["seed"].as_u64() != Some(SEED) {
            println!(
                "  {} is for {} spans, seed {}: rebuilding",
                marker.display(),
                v["spans"],
                v["seed"]
            );
            return Ok(None);
        }
        if age > MAX_DATASET_AGE.as_secs() {
            println!("  the dataset is {age} s old, near the store's retention: rebuilding");
            return Ok(None);
        }
        Ok(Some(v["report"].clone()))
    }

    fn from_report(store: PathBuf, reused: bool, report: Value) -> Result<Self> {
        let text = |key: &str| -> Result<String> {
            report[key]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("bench_store's report lacks {key:?}"))
        };
        let int = |key: &str| -> Result<u64> {
            report[key]
                .as_u64()
                .with_context(|| format!("bench_store's report lacks {key:?}"))
        };
        let services: Vec<String> = report["services"]
            .as_array()
            .context("bench_store's report lacks \"services\"")?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        let root_service = report["root_services"][0]
            .as_str()
            .context("bench_store's report lacks \"root_services\"")?
            .to_string();
        let sample: Vec<(String, u64)> = report["sample_traces"]
            .as_array()
            .context("bench_store's report lacks \"sample_traces\"")?
            .iter()
            .filter_map(|t| Some((t["id"].as_str()?.to_string(), t["spans"].as_u64()?)))
            .collect();
        ensure!(
            sample.len() > WARMUPS,
            "bench_store reported {} trace ids, too few to look up",
            sample.len()
        );
        Ok(Self {
            store,
            reused,
            spans: int("spans")?,
            traces: int("traces")?,
            window_start_s: int("window_start_unix_ns")? / 1_000_000_000,
            window_end_s: int("window_end_unix_ns")?.div_ceil(1_000_000_000) + WINDOW_SLACK_S,
            services,
            root_service,
            searched_service: text("searched_service")?,
            rare_value: text("rare_value")?,
            rare_trace_id: text("rare_trace_id")?,
            sample,
            report,
        })
    }

    fn spans_per_trace(&self) -> f64 {
        self.spans as f64 / self.traces.max(1) as f64
    }
}

/// The running all-in-one and its query address.
struct Server {
    child: ChildGuard,
    query_addr: String,
    /// Keeps draining the server's stdout.
    _lines: Lines,
}

fn start_server(bin: &Path, dir: &Path, store: &Path) -> Result<Server> {
    let log = dir.join("all-in-one.log");
    let mut child = ChildGuard::spawn(
        "all-in-one",
        Command::new(bin)
            .arg("all-in-one")
            .arg("--data-dir")
            .arg(store)
            .args([
                "--otlp-grpc-addr",
                "127.0.0.1:0",
                "--otlp-http-addr",
                "127.0.0.1:0",
                "--query-addr",
                "127.0.0.1:0",
                "--jaeger-addr",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?),
        Some(log),
    )?;
    let lines = Lines::new(child.take_stdout().context("no stdout")?);
    let mut query_addr: Option<String> = None;
    let started = Instant::now();
    lines.wait_for(&mut child, "`ready`", STARTUP_TIMEOUT, |l| {
        if let Some(a) = l.strip_prefix("query listening on ") {
            query_addr = Some(a.trim().to_string());
        }
        (l == "ready").then_some(())
    })?;
    let Some(query_addr) = query_addr else {
        bail!(
            "all-in-one printed `ready` without `query listening on ADDR` first{}",
            child.log_tail()
        );
    };
    println!(
        "  ready in {:.2} s, query API on http://{query_addr}",
        started.elapsed().as_secs_f64()
    );
    Ok(Server {
        child,
        query_addr,
        _lines: lines,
    })
}

/// Clock ticks per second of /proc/PID/stat's times (`getconf CLK_TCK`, 100 if unknown).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32, tick: f64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path} has no `(comm)`"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let field = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("{path} has no field {}", i + 3))
    };
    Ok((field(11)? + field(12)?) / tick)
}

/// A minimal HTTP/1.1 client over one keep-alive loopback connection (GET, JSON answers).
struct Http {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: String) -> Self {
        Self { addr, conn: None }
    }

    /// `GET path` (already percent-encoded): the status and the body.
    fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        let reused = self.conn.is_some();
        match self.try_get(path) {
            Ok(answer) => Ok(answer),
            // The server may have closed an idle connection: one retry on a new one.
            Err(_) if reused => {
                self.conn = None;
                self.try_get(path)
            }
            Err(e) => Err(e),
        }
    }

    fn try_get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().context("no connection")?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: keep-alive\r\n\r\n",
            self.addr
        );
        conn.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            self.conn = None;
            bail!("the server closed the connection before answering");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad HTTP status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("bad HTTP header {header:?}");
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = Some(value.parse::<usize>()?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size_text = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_text, 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                conn.read_exact(&mut body[start..])?;
                line.clear();
                conn.read_line(&mut line)?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else {
            conn.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }

    /// `GET path`, which must answer 200 with JSON.
    fn get_json(&mut self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: the answer is not JSON"))
    }
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A value of the answers that may be a JSON number or a string holding one.
fn as_u64(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// The timings of one query.
struct Timed {
    name: String,
    query: String,
    p50_ms: f64,
    p99_ms: f64,
    runs: usize,
    /// Traces the server inspected per run (the answer's `metrics.inspectedTraces`).
    inspected_traces: u64,
    /// Spans inspected per run, and whether the answer said so (else traces × mean spans).
    inspected_spans: u64,
    spans_exact: bool,
    /// The server's CPU seconds and the wall seconds of the timed runs.
    cpu_s: f64,
    wall_s: f64,
    /// Traces in the last answer.
    hits: usize,
}

impl Timed {
    fn full_scan(&self, dataset: &Dataset) -> bool {
        self.inspected_traces as f64 >= 0.9 * dataset.traces as f64
    }

    fn spans_per_core_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            (self.inspected_spans * self.runs as u64) as f64 / self.cpu_s
        } else {
            0.0
        }
    }

    fn spans_per_wall_s(&self) -> f64 {
        if self.wall_s > 0.0 {
            (self.inspected_spans * self.runs as u64) as f64 / self.wall_s
        } else {
            0.0
        }
    }
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

type Check<'a> = Box<dyn Fn(&Value) -> Result<()> + 'a>;

/// Runs `path` [`WARMUPS`] + `runs` times, checking every answer.
fn time_query(
    http: &mut Http,
    pid: u32,
    tick: f64,
    dataset: &Dataset,
    (name, query, path): (&str, &str, &str),
    runs: usize,
    check: &Check<'_>,
) -> Result<Timed> {
    let mut times = Vec::with_capacity(runs);
    let (mut cpu_s, mut wall_s) = (0.0, 0.0);
    let mut last = Value::Null;
    for i in 0..WARMUPS + runs {
        let cpu0 = cpu_seconds(pid, tick)?;
        let started = Instant::now();
        let answer = http.get_json(path)?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid, tick)? - cpu0;
        check(&answer).with_context(|| format!("wrong answer to {name}: {query}"))?;
        if i >= WARMUPS {
            times.push(elapsed * 1000.0);
            cpu_s += cpu;
            wall_s += elapsed;
        }
        last = answer;
    }
    times.sort_by(f64::total_cmp);
    let metrics = &last["metrics"];
    let inspected_traces = as_u64(&metrics["inspectedTraces"]);
    let (inspected_spans, spans_exact) = match metrics.get("inspectedSpans") {
        Some(v) => (as_u64(v), true),
        None => (
            (inspected_traces as f64 * dataset.spans_per_trace()).round() as u64,
            false,
        ),
    };
    let timed = Timed {
        name: name.to_string(),
        query: query.to_string(),
        p50_ms: quantile(&times, 0.5),
        p99_ms: quantile(&times, 0.99),
        runs,
        inspected_traces,
        inspected_spans,
        spans_exact,
        cpu_s,
        wall_s,
        hits: last["traces"].as_array().map_or(0, Vec::len),
    };
    println!(
        "  {name:<28} p50 {:>9.2} ms  p99 {:>9.2} ms  {} traces inspected, server CPU {:.2} s / {:.2} s wall",
        timed.p50_ms, timed.p99_ms, timed.inspected_traces, timed.cpu_s, timed.wall_s
    );
    Ok(timed)
}

/// What the runs measured.
struct Measured {
    trace: Timed,
    searches: Vec<Timed>,
    metrics: Timed,
}

/// The traces of a search answer.
fn traces(v: &Value) -> Result<&Vec<Value>> {
    v["traces"].as_array().context("the answer has no `traces`")
}

fn measure(http: &mut Http, dataset: &Dataset, pid: u32, tick: f64) -> Result<Measured> {
    println!(
        "\n==> queries: {WARMUPS} warm-ups then {RUNS} timed runs each; window {}..{} (unix s)",
        dataset.window_start_s, dataset.window_end_s
    );
    let trace = time_trace_by_id(http, dataset, pid, tick)?;

    let (start, end) = (dataset.window_start_s, dataset.window_end_s);
    let large = dataset.traces >= 1_000;
    let svc = &dataset.searched_service;
    let root = &dataset.root_service;
    let rare = &dataset.rare_value;
    let full_page = move |v: &Value| -> Result<()> {
        let n = traces(v)?.len();
        ensure!(n > 0, "no trace found");
        ensure!(n <= 20, "{n} traces, more than limit=20");
        ensure!(
            !large || n == 20,
            "{n} traces, want 20 (limit) in a large dataset"
        );
        Ok(())
    };
    let mut searches: Vec<(&str, String, Check<'_>)> = vec![
        (
            "service.name",
            format!("{{ resource.service.name = \"{svc}\" }}"),
            Box::new(full_page),
        ),
        (
            "http status >= 500",
            "{ span.http.response.status_code >= 500 }".into(),
            Box::new(full_page),
        ),
        (
            "duration > 1s",
            "{ duration > 1s }".into(),
            Box::new(|v: &Value| {
                let found = traces(v)?;
                ensure!(!found.is_empty(), "no trace found");
                for t in found {
                    let ms = as_u64(&t["durationMs"]);
                    ensure!(ms >= 1000, "trace {} lasts {ms} ms", t["traceID"]);
                }
                Ok(())
            }),
        ),
        (
            "service >> error",
            format!("{{ resource.service.name = \"{root}\" }} >> {{ status = error }}"),
            Box::new(full_page),
        ),
        (
            "count() > 10",
            "{ } | count() > 10".into(),
            Box::new(move |v: &Value| {
                full_page(v)?;
                for t in traces(v)? {
                    let matched = t["spanSets"][0]["matched"].as_u64().unwrap_or(0);
                    ensure!(
                        matched > 10,
                        "trace {} has a spanset of {matched} spans",
                        t["traceID"]
                    );
                }
                Ok(())
            }),
        ),
    ];
    searches.push((
        "rare value",
        format!("{{ span.user.id = \"{rare}\" }}"),
        Box::new(|v: &Value| {
            let found = traces(v)?;
            let ids: Vec<&str> = found.iter().filter_map(|t| t["traceID"].as_str()).collect();
            ensure!(
                ids.len() == 1
                    && ids[0].trim_start_matches('0')
                        == dataset.rare_trace_id.trim_start_matches('0'),
                "found traces {ids:?}, want exactly {}",
                dataset.rare_trace_id
            );
            Ok(())
        }),
    ));
    println!("  searches over {start}..{end}, limit 20:");
    let mut timed = Vec::new();
    for (name, q, check) in &searches {
        let path = format!(
            "/api/search?q={}&limit=20&start={start}&end={end}",
            encode(q)
        );
        timed.push(time_query(
            http,
            pid,
            tick,
            dataset,
            (name, q, &path),
            RUNS,
            check,
        )?);
    }

    let m_end = end.div_ceil(METRICS_STEP_S) * METRICS_STEP_S;
    let m_start = m_end - METRICS_RANGE_S;
    let mq = "{ } | rate() by (resource.service.name)";
    let path = format!(
        "/api/metrics/query_range?q={}&start={m_start}&end={m_end}&step={METRICS_STEP_S}",
        encode(mq)
    );
    let services = dataset.services.len();
    let want = dataset.spans;
    let check: Check<'_> = Box::new(move |v: &Value| {
        let series = v["series"]
            .as_array()
            .context("the answer has no `series`")?;
        ensure!(
            series.len() == services,
            "{} series, want one per service ({services})",
            series.len()
        );
        let mut total = 0.0;
        for s in series {
            for sample in s["samples"].as_array().map_or(&[][..], Vec::as_slice) {
                let value = sample["value"]
                    .as_f64()
                    .or_else(|| sample["value"].as_str().and_then(|t| t.parse().ok()))
                    .unwrap_or(0.0);
                total += value * METRICS_STEP_S as f64;
            }
        }
        let off = (total - want as f64).abs();
        ensure!(
            off <= 0.001 * want as f64 + 1.0,
            "the series add up to {total:.0} spans, want {want}"
        );
        Ok(())
    });
    println!("  metrics over {m_start}..{m_end}, step {METRICS_STEP_S} s:");
    let metrics = time_query(
        http,
        pid,
        tick,
        dataset,
        ("rate() by service, 24 h", mq, &path),
        RUNS,
        &check,
    )?;
    Ok(Measured {
        trace,
        searches: timed,
        metrics,
    })
}

/// Spans in a `/api/traces/<id>` answer (`{"batches": [ResourceSpans...]}`).
fn count_spans(v: &Value) -> u64 {
    let mut n = 0;
    for batch in v["batches"].as_array().map_or(&[][..], Vec::as_slice) {
        for scope in batch["scopeSpans"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
        {
            n += scope["spans"].as_array().map_or(0, Vec::len) as u64;
        }
    }
    n
}

fn time_trace_by_id(http: &mut Http, dataset: &Dataset, pid: u32, tick: f64) -> Result<Timed> {
    let lookup = |http: &mut Http, id: &str, want: u64| -> Result<f64> {
        let started = Instant::now();
        let answer = http.get_json(&format!("/api/traces/{id}"))?;
        let elapsed = started.elapsed().as_secs_f64();
        let got = count_spans(&answer);
        ensure!(
            got == want,
            "trace {id} has {want} spans but the server answered {got}"
        );
        Ok(elapsed)
    };
    for (id, want) in dataset.sample.iter().take(WARMUPS) {
        lookup(http, id, *want)?;
    }
    let mut times = Vec::with_capacity(dataset.sample.len());
    let cpu0 = cpu_seconds(pid, tick)?;
    for (id, want) in &dataset.sample {
        times.push(lookup(http, id, *want)? * 1000.0);
    }
    let cpu_s = cpu_seconds(pid, tick)? - cpu0;
    let wall_s = times.iter().sum::<f64>() / 1000.0;
    times.sort_by(f64::total_cmp);
    let timed = Timed {
        name: "trace by id".into(),
        query: "/api/traces/<id>".into(),
        p50_ms: quantile(&times, 0.5),
        p99_ms: quantile(&times, 0.99),
        runs: times.len(),
        inspected_traces: 0,
        inspected_spans: 0,
        spans_exact: false,
        cpu_s,
        wall_s,
        hits: times.len(),
    };
    println!(
        "  trace by id ({} ids)          p50 {:>9.2} ms  p99 {:>9.2} ms  server CPU {:.2} s / {:.2} s wall",
        timed.runs, timed.p50_ms, timed.p99_ms, timed.cpu_s, timed.wall_s
    );
    Ok(timed)
}

fn timed_json(t: &Timed, dataset: &Dataset) -> Value {
    json!({
        "name": t.name,
        "query": t.query,
        "runs": t.runs,
        "warmups": WARMUPS,
        "p50_ms": t.p50_ms,
        "p99_ms": t.p99_ms,
        "hits": t.hits,
        "inspected_traces": t.inspected_traces,
        "inspected_spans": t.inspected_spans,
        "inspected_spans_exact": t.spans_exact,
        "full_scan": t.full_scan(dataset),
        "server_cpu_s": t.cpu_s,
        "wall_s": t.wall_s,
        "spans_per_s_wall": t.spans_per_wall_s(),
        "spans_per_s_per_core": t.spans_per_core_s(),
    })
}

fn report(dataset: &Dataset, m: &Measured, cores: usize, idle_cpu_s: f64) -> Result<()> {
    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    let rare = m
        .searches
        .iter()
        .find(|t| t.name == "rare value")
        .context("the rare value search did not run")?;
    // The per-core scan rate: the full scans whose answer counts spans (the metrics query),
    // then all full scans (searches' spans estimated from their inspected traces).
    let exact_scan = m.metrics.spans_per_core_s();
    let full: Vec<&Timed> = m
        .searches
        .iter()
        .chain(std::iter::once(&m.metrics))
        .filter(|t| t.full_scan(dataset) && t.inspected_spans > 0)
        .collect();
    let (spans, cpu) = full.iter().fold((0.0, 0.0), |(s, c), t| {
        (s + (t.inspected_spans * t.runs as u64) as f64, c + t.cpu_s)
    });
    let all_scan = if cpu > 0.0 { spans / cpu } else { 0.0 };

    println!();
    println!(
        "query benchmark: {} spans in {} traces ({} dataset in {}); the client (one thread, \
         HTTP/1.1 keep-alive on loopback) and the server share this machine's {cores} cores; \
         per-core rates divide by the server's CPU time (utime + stime); the server used \
         {idle_cpu_s:.2} s CPU in the 2 s idle after start",
        dataset.spans,
        dataset.traces,
        if dataset.reused {
            "a reused"
        } else {
            "a freshly built"
        },
        dataset.store.display()
    );
    let mut rows: Vec<(String, String, String, &str)> = vec![
        (
            "trace by id p50".into(),
            format!("{:.2} ms", m.trace.p50_ms),
            format!("<= {TARGET_TRACE_P50_MS} ms"),
            check(m.trace.p50_ms <= TARGET_TRACE_P50_MS),
        ),
        (
            "trace by id p99".into(),
            format!("{:.2} ms", m.trace.p99_ms),
            format!("<= {TARGET_TRACE_P99_MS} ms"),
            check(m.trace.p99_ms <= TARGET_TRACE_P99_MS),
        ),
    ];
    for t in m.searches.iter().chain(std::iter::once(&m.metrics)) {
        rows.push((
            format!("{} p50", t.name),
            format!("{:.1} ms", t.p50_ms),
            format!("<= {TARGET_SEARCH_P50_MS:.0} ms"),
            check(t.p50_ms <= TARGET_SEARCH_P50_MS),
        ));
        rows.push((
            format!("{} p99", t.name),
            format!("{:.1} ms", t.p99_ms),
            format!("<= {TARGET_SEARCH_P99_MS:.0} ms"),
            check(t.p99_ms <= TARGET_SEARCH_P99_MS),
        ));
    }
    rows.push((
        "rare value search p50".into(),
        format!("{:.1} ms", rare.p50_ms),
        format!("<= {TARGET_RARE_MS:.0} ms"),
        check(rare.p50_ms <= TARGET_RARE_MS),
    ));
    rows.push((
        "scanned spans/s/core (metrics)".into(),
        format!("{exact_scan:.0}"),
        format!(">= {TARGET_SCAN_SPANS_PER_CORE_S:.0}"),
        check(exact_scan >= TARGET_SCAN_SPANS_PER_CORE_S),
    ));
    rows.push((
        "  all full scans (est.)".into(),
        format!("{all_scan:.0}"),
        String::new(),
        "",
    ));
    rows.push((
        "scanned spans/s wall (metrics)".into(),
        format!("{:.0}", m.metrics.spans_per_wall_s()),
        String::new(),
        "",
    ));
    println!("  {:<34} {:>14}   target", "", "value");
    for (name, value, target, verdict) in &rows {
        let line = format!("  {name:<34} {value:>14}   {target:<16} {verdict}");
        println!("{}", line.trim_end());
    }
    println!(
        "  full scans: {}; searches' inspected spans are estimated (inspectedTraces x {:.2} spans/trace): \
         /api/search answers no inspectedSpans",
        full.iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        dataset.spans_per_trace()
    );

    let out = json!({
        "benchmark": "query",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "cores": cores,
        "shared_cores": true,
        "dataset": {
            "dir": dataset.store.display().to_string(),
            "reused": dataset.reused,
            "spans": dataset.spans,
            "traces": dataset.traces,
            "seed": SEED,
            "window_start_unix_s": dataset.window_start_s,
            "window_end_unix_s": dataset.window_end_s,
            "bytes_per_span_disk": num(&dataset.report, "bytes_per_span_disk"),
            "blocks": dataset.report["blocks"],
        },
        "server_idle_cpu_s_2s": idle_cpu_s,
        "trace_by_id": timed_json(&m.trace, dataset),
        "searches": m.searches.iter().map(|t| timed_json(t, dataset)).collect::<Vec<_>>(),
        "metrics_query_range": timed_json(&m.metrics, dataset),
        "scanned_spans_per_s_per_core": exact_scan,
        "scanned_spans_per_s_per_core_all_full_scans_estimated": all_scan,
        "targets": {
            "trace_by_id_p50_ms": { "max": TARGET_TRACE_P50_MS, "ok": m.trace.p50_ms <= TARGET_TRACE_P50_MS },
            "trace_by_id_p99_ms": { "max": TARGET_TRACE_P99_MS, "ok": m.trace.p99_ms <= TARGET_TRACE_P99_MS },
            "search_p50_ms": { "max": TARGET_SEARCH_P50_MS, "ok": m.searches.iter().all(|t| t.p50_ms <= TARGET_SEARCH_P50_MS) },
            "search_p99_ms": { "max": TARGET_SEARCH_P99_MS, "ok": m.searches.iter().all(|t| t.p99_ms <= TARGET_SEARCH_P99_MS) },
            "rare_search_ms": { "max": TARGET_RARE_MS, "ok": rare.p50_ms <= TARGET_RARE_MS },
            "scanned_spans_per_s_per_core": { "min": TARGET_SCAN_SPANS_PER_CORE_S, "ok": exact_scan >= TARGET_SCAN_SPANS_PER_CORE_S },
        },
    });
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join("query.json");
    fs::write(&path, format!("{out:#}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("  report written to {}", path.display());
    Ok(())
}
