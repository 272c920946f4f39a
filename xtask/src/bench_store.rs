//! `cargo xtask bench store`: the storage engine over millions of spans, in one process.
//!
//! Builds and runs `crates/store/examples/bench_store.rs` (a generator feeding a `SledStore`
//! through the real ingest path with many concurrent durable writes, then the block cut,
//! bytes on disk, trace-by-id lookups, searches and a durable-append floor), reads the JSON
//! line it ends with and prints the figures against the targets. A missed target is reported;
//! a wrong answer (the example exits non-zero) is an error.

use std::fs;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{num, Options};
use crate::util::{self, cargo, target_dir};

/// Spans ingested when `--spans` is not given.
pub const DEFAULT_SPANS: u64 = 10_000_000;

const TARGET_INGEST_SPANS_PER_S: f64 = 250_000.0;
const TARGET_BYTES_PER_SPAN: f64 = 40.0;
const TARGET_TRACE_P50_MS: f64 = 2.0;
const TARGET_TRACE_P99_MS: f64 = 10.0;
const TARGET_RARE_SEARCH_MS: f64 = 300.0;
const TARGET_PEAK_RSS_MIB: f64 = 400.0;

pub fn run(opts: &Options) -> Result<()> {
    println!("==> cargo build --release -p sextant-store --example bench_store");
    util::run(cargo().args([
        "build",
        "--release",
        "-p",
        "sextant-store",
        "--example",
        "bench_store",
    ]))?;
    let example = target_dir()
        .join("release")
        .join("examples")
        .join("bench_store");
    if !example.exists() {
        bail!("{} is missing after the build", example.display());
    }
    let spans = opts.spans.unwrap_or(DEFAULT_SPANS);
    let mut cmd = Command::new(&example);
    cmd.args(["--spans", &spans.to_string()])
        .args(["--writers", &opts.streams.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("\n==> {}", util::display(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", example.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the store benchmark failed ({}): a wrong answer or an error, see above",
            out.status
        );
    }
    let report: Value = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .context("bench_store's last line is not its JSON report")?;

    let ingest = num(&report, "ingest_spans_per_s");
    let floor = num(&report, "floor_spans_per_s");
    let bytes_disk = num(&report, "bytes_per_span_disk");
    let bytes_otlp = num(&report, "bytes_per_span_otlp");
    let p50 = num(&report, "trace_by_id_p50_ms");
    let p99 = num(&report, "trace_by_id_p99_ms");
    let rare = num(&report, "rare_search_ms");
    let service = num(&report, "service_search_ms");
    let rss = num(&report, "peak_rss_mib");
    let rss_flush = num(&report, "peak_rss_after_flush_mib");
    let bytes_blocks = num(&report, "bytes_per_span_blocks");
    let flush = num(&report, "flush_blocks_s");
    let cores = util::nproc();

    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "store benchmark: {} spans, {} concurrent writers; the generator and the store share this machine's \
         {cores} cores in one process (a 2-worker tokio runtime plus the generator thread)",
        report["spans"], report["writers"]
    );
    let rows: Vec<(&str, String, String, &str)> = vec![
        (
            "durable ingest",
            format!("{ingest:.0} spans/s"),
            format!(">= {TARGET_INGEST_SPANS_PER_S:.0}"),
            check(ingest >= TARGET_INGEST_SPANS_PER_S),
        ),
        (
            "durable-append floor",
            format!("{floor:.0} spans/s"),
            String::new(),
            "",
        ),
        (
            "ingest / floor",
            format!("{:.1} %", 100.0 * num(&report, "ingest_vs_floor")),
            String::new(),
            "",
        ),
        (
            "peak RSS after ingest",
            format!("{rss:.1} MiB"),
            format!("<= {TARGET_PEAK_RSS_MIB:.0} MiB"),
            check(rss <= TARGET_PEAK_RSS_MIB),
        ),
        ("flush_blocks", format!("{flush:.2} s"), String::new(), ""),
        (
            "peak RSS after flush_blocks",
            format!("{rss_flush:.1} MiB"),
            String::new(),
            "",
        ),
        (
            "bytes on disk per span",
            format!("{bytes_disk:.1}"),
            format!("<= {TARGET_BYTES_PER_SPAN:.0}"),
            check(bytes_disk <= TARGET_BYTES_PER_SPAN),
        ),
        (
            "  of which blocks",
            format!("{bytes_blocks:.1}"),
            String::new(),
            "",
        ),
        (
            "OTLP bytes per span",
            format!("{bytes_otlp:.1}"),
            String::new(),
            "",
        ),
        (
            "trace by id p50",
            format!("{p50:.2} ms"),
            format!("<= {TARGET_TRACE_P50_MS} ms"),
            check(p50 <= TARGET_TRACE_P50_MS),
        ),
        (
            "trace by id p99",
            format!("{p99:.2} ms"),
            format!("<= {TARGET_TRACE_P99_MS} ms"),
            check(p99 <= TARGET_TRACE_P99_MS),
        ),
        (
            "rare value search",
            format!("{rare:.1} ms"),
            format!("<= {TARGET_RARE_SEARCH_MS:.0} ms"),
            check(rare <= TARGET_RARE_SEARCH_MS),
        ),
        (
            "service.name search",
            format!("{service:.1} ms"),
            String::new(),
            "",
        ),
    ];
    println!("  {:<26} {:>16}   target", "", "value");
    for (name, value, target, verdict) in &rows {
        let line = format!("  {name:<26} {value:>16}   {target:<16} {verdict}");
        println!("{}", line.trim_end());
    }

    let summary = json!({
        "benchmark": "store",
        "cores": cores,
        "shared_cores": true,
        "report": report,
        "targets": {
            "ingest_spans_per_s": { "min": TARGET_INGEST_SPANS_PER_S, "ok": ingest >= TARGET_INGEST_SPANS_PER_S },
            "bytes_per_span_disk": { "max": TARGET_BYTES_PER_SPAN, "ok": bytes_disk <= TARGET_BYTES_PER_SPAN },
            "trace_by_id_p50_ms": { "max": TARGET_TRACE_P50_MS, "ok": p50 <= TARGET_TRACE_P50_MS },
            "trace_by_id_p99_ms": { "max": TARGET_TRACE_P99_MS, "ok": p99 <= TARGET_TRACE_P99_MS },
            "rare_search_ms": { "max": TARGET_RARE_SEARCH_MS, "ok": rare <= TARGET_RARE_SEARCH_MS },
            "peak_rss_mib": { "max": TARGET_PEAK_RSS_MIB, "ok": rss <= TARGET_PEAK_RSS_MIB },
        },
    });
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join("store.json");
    fs::write(&path, format!("{summary:#}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("  report written to {}", path.display());
    Ok(())
}
