//! `cargo xtask bench collector`: `sextant collector` forwarding OTLP/gRPC to a
//! `sextant null-server` sink (OTLP in -> batch -> OTLP out), then the same with tail
//! sampling, then with redaction, against the floor of the load generator sending to the
//! null server directly, all in one run on the same machine. The load generator gives every
//! request new trace ids (`--fresh-trace-ids`), so tail sampling buffers real traces.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{log_file, num, run_gen, start_null_server, wait_ready, Options, RssSampler};
use crate::util::{self, cargo, target_dir, ChildGuard, TempDir};

const TARGET_PASS_SPS: f64 = 150_000.0;
const TARGET_TAIL_SPS: f64 = 80_000.0;
const TARGET_TAIL_RSS_MIB: f64 = 200.0;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

const PASS_THROUGH: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  batch:
exporters:
  otlp:
    endpoint: {sink}
    tls:
      insecure: true
    compression: none
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
  telemetry:
    metrics:
      level: none
"#;

/// Tail sampling at its default `decision_wait` (30 s) and `num_traces` (50,000): errors,
/// slow traces and 10 % of the rest.
const TAIL: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  tail_sampling:
    policies:
      - name: errors
        type: status_code
        status_code: {status_codes: [ERROR]}
      - name: slow
        type: latency
        latency: {threshold_ms: 500}
      - name: some-of-the-rest
        type: probabilistic
        probabilistic: {sampling_percentage: 10}
  batch:
exporters:
  otlp:
    endpoint: {sink}
    tls:
      insecure: true
    compression: none
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling, batch]
      exporters: [otlp]
  telemetry:
    metrics:
      level: none
"#;

const REDACTION: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  redaction:
    profile: default
  batch:
exporters:
  otlp:
    endpoint: {sink}
    tls:
      insecure: true
    compression: none
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [redaction, batch]
      exporters: [otlp]
  telemetry:
    metrics:
      level: none
"#;

struct Run {
    gen: Value,
    peak_rss_bytes: u64,
}

pub fn run(opts: &Options) -> Result<()> {
    // Every request carries new traces, as real traffic does (tail sampling must buffer them).
    let opts = &Options {
        fresh_trace_ids: true,
        ..*opts
    };
    println!("==> cargo build --release -p sextant-cli");
    util::run(cargo().args(["build", "--release", "-p", "sextant-cli"]))?;
    let bin = target_dir().join("release").join("sextant");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    let cores = util::nproc();
    let scratch = TempDir::new("sextant-bench-collector")?;
    let (mut sink, _sink_lines, sink_addr) = start_null_server(&bin, scratch.path())?;

    println!("\n==> floor: load generator -> null-server");
    let floor = run_gen(&bin, opts, &sink_addr, &mut sink)?;
    let mut runs = Vec::new();
    for (label, config) in [
        ("pass-through", PASS_THROUGH),
        ("tail_sampling", TAIL),
        ("redaction", REDACTION),
    ] {
        println!("\n==> {label}: load generator -> sextant collector -> null-server");
        let r = run_collector(
            &bin,
            opts,
            scratch.path(),
            label,
            config,
            &sink_addr,
            &mut sink,
        )?;
        runs.push((label, r));
    }
    let status = sink.terminate(SHUTDOWN_TIMEOUT)?;
    if !status.success() {
        bail!("null-server exited with {status}{}", sink.log_tail());
    }

    let floor_sps = num(&floor, "spans_per_sec");
    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "collector benchmark: the load generator, the collector and the null-server sink share this \
         machine's {cores} cores (nproc = {cores}); {} s measured after {} s warm-up, {} streams",
        opts.duration, opts.warmup, opts.streams
    );
    println!(
        "  {:<34} {:>12} {:>10} {:>12}   target",
        "", "spans/s", "vs floor", "peak RSS"
    );
    println!(
        "  {:<34} {:>12.0} {:>10} {:>12}",
        "floor (gen -> null-server)", floor_sps, "100.0 %", ""
    );
    let mut report_runs = serde_json::Map::new();
    for (label, r) in &runs {
        let sps = num(&r.gen, "spans_per_sec");
        let rss = r.peak_rss_bytes as f64 / (1024.0 * 1024.0);
        let (target, ok) = match *label {
            "pass-through" => (
                format!(">= {TARGET_PASS_SPS:.0} spans/s"),
                sps >= TARGET_PASS_SPS,
            ),
            "tail_sampling" => (
                format!(">= {TARGET_TAIL_SPS:.0} spans/s, <= {TARGET_TAIL_RSS_MIB:.0} MiB"),
                sps >= TARGET_TAIL_SPS && rss <= TARGET_TAIL_RSS_MIB,
            ),
            _ => (String::new(), true),
        };
        println!(
            "  {:<34} {:>12.0} {:>9.1} % {:>8.1} MiB   {} {}",
            format!("collector, {label}"),
            sps,
            if floor_sps > 0.0 {
                100.0 * sps / floor_sps
            } else {
                0.0
            },
            rss,
            target,
            if target.is_empty() { "" } else { check(ok) }
        );
        let failed = r.gen["requests_failed"].as_u64().unwrap_or(0);
        if failed > 0 {
            println!("    note: {failed} failed requests: {}", r.gen["errors"]);
        }
        report_runs.insert(
            label.to_string(),
            json!({ "spans_per_sec": sps, "peak_rss_mib": rss, "target_ok": ok, "gen": r.gen }),
        );
    }
    let report = json!({
        "benchmark": "collector",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "cores": cores,
        "shared_cores": true,
        "duration_secs": opts.duration,
        "warmup_secs": opts.warmup,
        "streams": opts.streams,
        "floor": { "spans_per_sec": floor_sps, "gen": floor },
        "runs": report_runs,
    });
    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("collector.json");
    fs::write(&out, format!("{report:#}\n"))
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("  report written to {}", out.display());
    Ok(())
}

fn run_collector(
    bin: &Path,
    opts: &Options,
    scratch: &Path,
    label: &str,
    config: &str,
    sink: &str,
    sink_guard: &mut ChildGuard,
) -> Result<Run> {
    let file = scratch.join(format!("{label}.yaml"));
    fs::write(&file, config.replace("{sink}", sink))?;
    let log = scratch.join(format!("collector-{label}.log"));
    let mut server = ChildGuard::spawn(
        "collector",
        Command::new(bin)
            .arg("collector")
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?),
        Some(log),
    )?;
    let grpc = wait_ready(&mut server, "collector")?;
    let sampler = RssSampler::start(server.pid());
    let gen = run_gen(bin, opts, &grpc, &mut server);
    let (max_sampled, _) = sampler.stop();
    let hwm = util::proc_status_bytes(server.pid(), "VmHWM").unwrap_or(0);
    let gen = gen?;
    if let Some(status) = sink_guard.exited() {
        bail!(
            "the null-server sink exited ({status}){}",
            sink_guard.log_tail()
        );
    }
    let status = server.terminate(SHUTDOWN_TIMEOUT)?;
    if !status.success() {
        bail!(
            "collector exited with {status} after SIGTERM{}",
            server.log_tail()
        );
    }
    Ok(Run {
        gen,
        peak_rss_bytes: hwm.max(max_sampled),
    })
}
