//! `cargo xtask bench [NAME]`: the benchmarks.
//!
//! `ingest` measures the OTLP/gRPC ingestion of the all-in-one server against the floor set by
//! `sextant null-server` (transport plus decoding, nothing stored), with the same load from
//! `sextant gen`, in one run so that both see the same machine.
//!
//! `collector` (in `bench_collector`) measures `sextant collector` forwarding to a null sink,
//! plain, with tail sampling and with redaction.
//!
//! `sdk` (in `bench_sdk`) measures what `sextant-sdk` costs an axum service served over TCP:
//! the same service plain and instrumented, in alternating rounds of one run, with the system
//! allocator and mimalloc, exporting over OTLP/gRPC and OTLP/HTTP to a `sextant null-server`.
//!
//! `store` (in `bench_store`) measures the storage engine in one process over `--spans N`
//! spans (default 10 M): durable ingest against a durable-append floor, bytes on disk, trace by
//! id and searches after the block cut.
//!
//! `query` (in `bench_query`) measures the Tempo HTTP API of `sextant all-in-one` over a
//! dataset of `--spans N` spans built once by the store benchmark's generator: trace by id,
//! TraceQL searches, a metrics query and the spans scanned per second per core.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util::{self, cargo, secs, target_dir, ChildGuard, Lines, TempDir};

const KNOWN: &[&str] = &["ingest", "collector", "sdk", "store", "query"];

/// The targets printed next to the figures.
const TARGET_SPANS_PER_SEC: f64 = 100_000.0;
const TARGET_RATIO_PCT: f64 = 40.0;
const TARGET_PEAK_RSS_MIB: f64 = 300.0;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
const RSS_EVERY: Duration = Duration::from_millis(200);
const SEED: &str = "1";

pub(crate) struct Options {
    pub duration: u64,
    pub streams: u64,
    pub warmup: u64,
    /// New trace ids in every request sent (`sextant gen --fresh-trace-ids`).
    pub fresh_trace_ids: bool,
    /// Spans of the `store` benchmark (its default when `None`).
    pub spans: Option<u64>,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut names: Vec<&str> = Vec::new();
    let mut opts = Options {
        duration: 10,
        streams: 32,
        warmup: 2,
        fresh_trace_ids: false,
        spans: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<u64> {
            let v = match &inline {
                Some(v) => v.clone(),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value"))?,
            };
            let n: u64 = v
                .parse()
                .with_context(|| format!("{flag} wants a whole number, not {v:?}"))?;
            Ok(n)
        };
        match flag {
            "--duration" => opts.duration = value(flag)?,
            "--streams" => opts.streams = value(flag)?,
            "--warmup" => opts.warmup = value(flag)?,
            "--spans" => opts.spans = Some(value(flag)?),
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask bench [{}] [--duration S] [--streams N] [--warmup S] [--spans N]",
                    KNOWN.join("|")
                );
                return Ok(());
            }
            f if f.starts_with('-') => bail!("unknown option {f:?} for `cargo xtask bench`"),
            name if KNOWN.contains(&name) => names.push(name),
            name => bail!(
                "unknown benchmark {name:?}; known benchmarks: {}",
                KNOWN.join(", ")
            ),
        }
    }
    if opts.duration == 0 || opts.streams == 0 {
        bail!("--duration and --streams must be at least 1");
    }
    if names.is_empty() {
        names = KNOWN.to_vec();
    }
    for name in names {
        match name {
            "ingest" => ingest(&opts)?,
            "collector" => crate::bench_collector::run(&opts)?,
            "sdk" => crate::bench_sdk::sdk()?,
            "store" => crate::bench_store::run(&opts)?,
            "query" => crate::bench_query::run(&opts)?,
            _ => unreachable!("checked against KNOWN"),
        }
    }
    Ok(())
}

fn ingest(opts: &Options) -> Result<()> {
    println!("==> cargo build --release -p sextant-cli");
    util::run(cargo().args(["build", "--release", "-p", "sextant-cli"]))?;
    let bin = target_dir().join("release").join("sextant");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    let cores = util::nproc();
    let scratch = TempDir::new("sextant-bench-ingest")?;

    println!("\n==> null-server");
    let base = run_null(&bin, opts, scratch.path())?;

    println!("\n==> all-in-one");
    let aio = run_all_in_one(&bin, opts, scratch.path())?;

    let null_sps = num(&base.gen, "spans_per_sec");
    let aio_sps = num(&aio.gen, "spans_per_sec");
    let ratio = if null_sps > 0.0 {
        100.0 * aio_sps / null_sps
    } else {
        0.0
    };
    let null_p99 = num(&base.gen["latency_ms"], "p99");
    let aio_p99 = num(&aio.gen["latency_ms"], "p99");
    let peak_rss_mib = aio.peak_rss_bytes as f64 / (1024.0 * 1024.0);
    let spans_stored = aio.gen["spans_acked_total"].as_u64().unwrap_or(0);
    let bytes_per_span = if spans_stored > 0 {
        aio.disk_bytes as f64 / spans_stored as f64
    } else {
        0.0
    };

    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    let spans_per_request = base.gen["spans_per_request"].as_u64().unwrap_or(0);
    println!();
    println!(
        "ingest benchmark: the load generator and the server share this machine's {cores} cores (nproc = {cores}); \
         {} s measured after {} s warm-up, {} streams, {spans_per_request} spans/request",
        opts.duration, opts.warmup, opts.streams
    );
    let rows: Vec<(String, String, String, &str)> = vec![
        (
            "null-server spans/s".into(),
            format!("{null_sps:.0}"),
            String::new(),
            "",
        ),
        (
            "all-in-one spans/s".into(),
            format!("{aio_sps:.0}"),
            format!(">= {TARGET_SPANS_PER_SEC:.0}"),
            check(aio_sps >= TARGET_SPANS_PER_SEC),
        ),
        (
            "all-in-one / null".into(),
            format!("{ratio:.1} %"),
            format!(">= {TARGET_RATIO_PCT:.0} %"),
            check(ratio >= TARGET_RATIO_PCT),
        ),
        (
            "p99 latency, null".into(),
            format!("{null_p99:.1} ms"),
            String::new(),
            "",
        ),
        (
            "p99 latency, all-in-one".into(),
            format!("{aio_p99:.1} ms"),
            String::new(),
            "",
        ),
        (
            "all-in-one peak RSS".into(),
            format!("{peak_rss_mib:.1} MiB"),
            format!("<= {TARGET_PEAK_RSS_MIB:.0} MiB"),
            check(peak_rss_mib <= TARGET_PEAK_RSS_MIB),
        ),
        (
            "bytes on disk per span".into(),
            format!("{bytes_per_span:.1}"),
            String::new(),
            "",
        ),
    ];
    println!("  {:<26} {:>14}   target", "", "value");
    for (name, value, target, verdict) in &rows {
        let line = format!("  {name:<26} {value:>14}   {target:<16} {verdict}");
        println!("{}", line.trim_end());
    }
    for (label, gen) in [("null-server", &base.gen), ("all-in-one", &aio.gen)] {
        let failed = gen["requests_failed"].as_u64().unwrap_or(0);
        if failed > 0 {
            println!(
                "  note: {label} run had {failed} failed requests: {}",
                gen["errors"]
            );
        }
    }
    println!(
        "  all-in-one: {} spans stored in {} bytes; VmHWM {:.1} MiB, max sampled VmRSS {:.1} MiB; exit after SIGTERM in {}",
        spans_stored,
        aio.disk_bytes,
        aio.vm_hwm_bytes as f64 / (1024.0 * 1024.0),
        aio.max_sampled_rss_bytes as f64 / (1024.0 * 1024.0),
        secs(aio.shutdown)
    );

    let report = json!({
        "benchmark": "ingest",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "cores": cores,
        "shared_cores": true,
        "duration_secs": opts.duration,
        "warmup_secs": opts.warmup,
        "streams": opts.streams,
        "null": {
            "spans_per_sec": null_sps,
            "p99_ms": null_p99,
            "gen": base.gen,
        },
        "all_in_one": {
            "spans_per_sec": aio_sps,
            "p99_ms": aio_p99,
            "peak_rss_mib": peak_rss_mib,
            "vm_hwm_bytes": aio.vm_hwm_bytes,
            "max_sampled_rss_bytes": aio.max_sampled_rss_bytes,
            "rss_samples": aio.rss_samples,
            "disk_bytes": aio.disk_bytes,
            "spans_stored": spans_stored,
            "bytes_per_span": bytes_per_span,
            "shutdown_secs": aio.shutdown.as_secs_f64(),
            "gen": aio.gen,
        },
        "ratio_pct": ratio,
        "targets": {
            "all_in_one_spans_per_sec": { "min": TARGET_SPANS_PER_SEC, "ok": aio_sps >= TARGET_SPANS_PER_SEC },
            "ratio_pct": { "min": TARGET_RATIO_PCT, "ok": ratio >= TARGET_RATIO_PCT },
            "peak_rss_mib": { "max": TARGET_PEAK_RSS_MIB, "ok": peak_rss_mib <= TARGET_PEAK_RSS_MIB },
        },
    });
    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("ingest.json");
    fs::write(&out, format!("{report:#}\n"))
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("  report written to {}", out.display());
    Ok(())
}

pub(crate) fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

struct NullRun {
    gen: Value,
}

struct AioRun {
    gen: Value,
    peak_rss_bytes: u64,
    vm_hwm_bytes: u64,
    max_sampled_rss_bytes: u64,
    rss_samples: usize,
    disk_bytes: u64,
    shutdown: Duration,
}

/// Starts `sextant null-server` on a free loopback port; returns it, its stdout and its address.
pub(crate) fn start_null_server(bin: &Path, scratch: &Path) -> Result<(ChildGuard, Lines, String)> {
    let log = scratch.join("null-server.log");
    let mut server = ChildGuard::spawn(
        "null-server",
        Command::new(bin)
            .args(["null-server", "--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?),
        Some(log),
    )?;
    let lines = Lines::new(server.take_stdout().context("no stdout")?);
    let addr = lines.wait_for(
        &mut server,
        "`null-server listening on ADDR`",
        STARTUP_TIMEOUT,
        |l| {
            l.strip_prefix("null-server listening on ")
                .map(|a| a.trim().to_string())
        },
    )?;
    Ok((server, lines, addr))
}

fn run_null(bin: &Path, opts: &Options, scratch: &Path) -> Result<NullRun> {
    let (mut server, lines, addr) = start_null_server(bin, scratch)?;
    let gen = run_gen(bin, opts, &addr, &mut server)?;
    let status = server.terminate(SHUTDOWN_TIMEOUT)?;
    for line in lines.drain() {
        println!("  {line}");
    }
    if !status.success() {
        bail!(
            "null-server exited with {status} after SIGTERM{}",
            server.log_tail()
        );
    }
    Ok(NullRun { gen })
}

fn run_all_in_one(bin: &Path, opts: &Options, scratch: &Path) -> Result<AioRun> {
    let data = scratch.join("data");
    fs::create_dir(&data)?;
    let log = scratch.join("all-in-one.log");
    let mut server = ChildGuard::spawn(
        "all-in-one",
        Command::new(bin)
            .arg("all-in-one")
            .arg("--data-dir")
            .arg(&data)
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
    let grpc_addr = wait_ready(&mut server, "all-in-one")?;

    let sampler = RssSampler::start(server.pid());
    let gen = run_gen(bin, opts, &grpc_addr, &mut server);
    let (max_sampled, samples) = sampler.stop();
    let vm_hwm = util::proc_status_bytes(server.pid(), "VmHWM").unwrap_or(0);
    let gen = gen?;

    let stopping = Instant::now();
    let status = server.terminate(SHUTDOWN_TIMEOUT)?;
    let shutdown = stopping.elapsed();
    if !status.success() {
        bail!(
            "all-in-one exited with {status} after SIGTERM{}",
            server.log_tail()
        );
    }
    let disk_bytes = util::dir_bytes(&data)?;
    Ok(AioRun {
        gen,
        peak_rss_bytes: vm_hwm.max(max_sampled),
        vm_hwm_bytes: vm_hwm,
        max_sampled_rss_bytes: max_sampled,
        rss_samples: samples,
        disk_bytes,
        shutdown,
    })
}

/// Waits for a server's `ready`, answering the address of its `otlp-grpc listening on` line.
pub(crate) fn wait_ready(server: &mut ChildGuard, what: &str) -> Result<String> {
    let lines = Lines::new(server.take_stdout().context("no stdout")?);
    let mut grpc_addr: Option<String> = None;
    lines.wait_for(server, "`ready`", STARTUP_TIMEOUT, |l| {
        if let Some(a) = l.strip_prefix("otlp-grpc listening on ") {
            grpc_addr = Some(a.trim().to_string());
        }
        (l == "ready").then_some(())
    })?;
    match grpc_addr {
        Some(a) => Ok(a),
        None => bail!(
            "{what} printed `ready` without `otlp-grpc listening on ADDR` first{}",
            server.log_tail()
        ),
    }
}

/// Runs `sextant gen --json` against `addr`; its progress goes to our stderr.
pub(crate) fn run_gen(
    bin: &Path,
    opts: &Options,
    addr: &str,
    server: &mut ChildGuard,
) -> Result<Value> {
    let mut cmd = Command::new(bin);
    cmd.arg("gen")
        .arg("--endpoint")
        .arg(format!("http://{addr}"))
        .arg("--duration")
        .arg(opts.duration.to_string())
        .arg("--warmup")
        .arg(opts.warmup.to_string())
        .arg("--streams")
        .arg(opts.streams.to_string())
        .args(["--seed", SEED, "--json"])
        .args(opts.fresh_trace_ids.then_some("--fresh-trace-ids"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut gen = ChildGuard::spawn("gen", &mut cmd, None)?;
    let stdout = gen.take_stdout().context("no stdout")?;
    let reader = thread::spawn(move || -> std::io::Result<String> {
        let mut stdout = stdout;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text)?;
        Ok(text)
    });
    // gen stops by itself after warm-up + duration (+ a bounded drain); wait for it.
    let status = loop {
        if let Some(status) = gen.exited() {
            break status;
        }
        if let Some(status) = server.exited() {
            bail!(
                "the server exited ({status}) during the load{}",
                server.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader of gen's output panicked"))??;
    if !status.success() {
        bail!(
            "`{}` failed ({status}){}",
            util::display(&cmd),
            server.log_tail()
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("gen printed no report")?;
    serde_json::from_str(line).with_context(|| format!("gen's report is not JSON: {line:?}"))
}

pub(crate) fn log_file(path: &Path) -> Result<fs::File> {
    fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Samples VmRSS of a process every 200 ms on a thread.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, usize)>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let (mut max, mut samples) = (0u64, 0usize);
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = util::proc_status_bytes(pid, "VmRSS") {
                    max = max.max(rss);
                    samples += 1;
                }
                thread::sleep(RSS_EVERY);
            }
            (max, samples)
        });
        Self { stop, handle }
    }

    /// Stops sampling; answers the largest VmRSS seen and the number of samples.
    pub(crate) fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or((0, 0))
    }
}
