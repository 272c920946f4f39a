//! The storage engine's benchmark: `cargo run --release -p sextant-store --example bench_store`.
//!
//! Generates realistic OTLP traffic on the fly (20 services, 200 span names, traces of 1–30
//! spans, ~10 attributes per span, ~10 % of traces split over two requests), feeds it to a
//! [`SledStore`] through the real ingest path (protobuf bytes, `wire::scan_request`,
//! `SpanBatch::from_scanned`) with many concurrent durable writes, then measures the block cut,
//! bytes on disk, trace-by-id lookups and searches, and a durable-append floor (the same bytes,
//! zstd-compressed, appended to one file with group commit). The generator, the store and the
//! floor share one process and a 2-worker tokio runtime.
//!
//! The last line of stdout is one JSON object with every figure. A wrong answer (a trace with
//! the wrong number of spans, a search missing the one rare span) is an error: non-zero exit.

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sextant_otlp_proto::proto::collector::ExportTraceServiceRequest;
use sextant_otlp_proto::proto::{
    any_value, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans,
};
use sextant_otlp_proto::{wire, SpanBatch, TraceId};
use sextant_store::{
    dir_size, Condition, Matcher, SearchQuery, SledStore, StoreConfig, TagScope, TimeWindow,
    TraceReader,
};
use tokio::sync::{mpsc, oneshot, Mutex};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Worker threads of the runtime: the machine has 2 cores.
const WORKER_THREADS: usize = 2;
/// At most this many spans go to the floor (it only sets a reference rate).
const FLOOR_MAX_SPANS: u64 = 2_000_000;
/// At most this many appends share one fdatasync in the floor (the store's group limit).
const FLOOR_MAX_GROUP: usize = 512;
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Runs of each search.
const SEARCH_RUNS: usize = 5;
/// The share of traces whose last spans arrive in the next request.
const LATE_SHARE: f64 = 0.10;
/// Spans' start times lie within this much before now.
const WINDOW_NS: u64 = 3_600 * 1_000_000_000;
/// The share of traces whose root lasts more than a second (at least [`SLOW_MIN_NS`]).
const SLOW_SHARE: f64 = 0.005;
/// The shortest of those slow roots: 1.1 s.
const SLOW_MIN_NS: u64 = 1_100_000_000;
/// Sampled trace ids printed in the report (for the query benchmark's lookups).
const REPORTED_TRACE_IDS: usize = 200;

const SERVICES: [(&str, &str); 20] = [
    ("frontend", "nodejs"),
    ("api-gateway", "go"),
    ("auth", "go"),
    ("users", "java"),
    ("catalog", "java"),
    ("search", "rust"),
    ("recommendation", "python"),
    ("cart", "dotnet"),
    ("checkout", "go"),
    ("payment", "nodejs"),
    ("shipping", "rust"),
    ("inventory", "java"),
    ("pricing", "python"),
    ("orders", "go"),
    ("notification", "python"),
    ("email", "ruby"),
    ("fraud-detection", "java"),
    ("ad", "java"),
    ("currency", "cpp"),
    ("quote", "php"),
];
const RESOURCES: [&str; 10] = [
    "items",
    "accounts",
    "sessions",
    "products",
    "orders",
    "carts",
    "invoices",
    "reviews",
    "coupons",
    "addresses",
];
const TABLES: [&str; 8] = [
    "orders", "users", "products", "payments", "stock", "sessions", "events", "prices",
];
const DB_SYSTEMS: [&str; 4] = ["postgresql", "mysql", "redis", "mongodb"];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// The allocator the `sextant` binary uses, so that memory figures are the deployed ones.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Benchmark of the sextant store: durable ingest, blocks, lookups, searches")]
struct Args {
    /// Spans to ingest.
    #[arg(long, default_value_t = 10_000_000)]
    spans: u64,
    /// Concurrent `write_batch` calls.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Spans per request (the collector's batch processor sends about 500).
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
    /// Trace ids looked up after the ingest.
    #[arg(long, default_value_t = 2_000)]
    lookups: usize,
    /// Seed of the generator (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Work in this directory (created if missing) and remove what the run wrote at the end.
    #[arg(long, conflicts_with = "keep")]
    dir: Option<PathBuf>,
    /// Work in this directory (created if missing) and keep the store there at the end.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// zstd level of block pages (the store's default when absent).
    #[arg(long)]
    page_level: Option<i32>,
    /// Uncompressed KiB per block page (the store's default when absent).
    #[arg(long)]
    page_kib: Option<usize>,
    /// Spans per cut block (the store's default when absent).
    #[arg(long)]
    block_spans: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The store's own logs (block cuts, compactions) with RUST_LOG=info; quiet by default.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_store: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the run writes: a temp dir removed on drop, or a given directory.
enum Workdir {
    Temp(tempfile::TempDir),
    Given { path: PathBuf, keep: bool },
}

impl Workdir {
    fn new(args: &Args) -> Result<Self> {
        let (path, keep) = match (&args.dir, &args.keep) {
            (Some(d), _) => (d.clone(), false),
            (None, Some(d)) => (d.clone(), true),
            (None, None) => {
                let t = tempfile::Builder::new()
                    .prefix("sextant-bench-store-")
                    .tempdir()?;
                return Ok(Workdir::Temp(t));
            }
        };
        fs::create_dir_all(&path)?;
        let store = path.join("store");
        if store.exists() && fs::read_dir(&store)?.next().is_some() {
            return Err(format!(
                "{} is not empty: the figures need a fresh store",
                store.display()
            )
            .into());
        }
        Ok(Workdir::Given { path, keep })
    }

    fn path(&self) -> &Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Given { path, .. } => path,
        }
    }

    /// Removes what the run wrote (nothing with `--keep`, bar the floor's file).
    fn finish(self) -> Result<()> {
        match self {
            Workdir::Temp(t) => Ok(t.close()?),
            Workdir::Given { path, keep } => {
                let floor = path.join("floor.log");
                if floor.exists() {
                    fs::remove_file(floor)?;
                }
                if keep {
                    eprintln!(
                        "bench_store: store kept in {}",
                        path.join("store").display()
                    );
                } else {
                    let store = path.join("store");
                    if store.exists() {
                        fs::remove_dir_all(store)?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.spans == 0 || args.writers == 0 || args.spans_per_request == 0 {
        return Err("--spans, --writers and --spans-per-request must be at least 1".into());
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let work = Workdir::new(args)?;
    let store_dir = work.path().join("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()?;
    eprintln!(
        "bench_store: {} spans, {} writers, ~{} spans/request, seed {seed}, in {}; \
         generator, store and floor share this process: a tokio runtime of {WORKER_THREADS} \
         worker threads and the generator thread, on {} cores",
        args.spans,
        args.writers,
        args.spans_per_request,
        work.path().display(),
        cores()
    );

    let shape = check_generator(seed, args.spans_per_request)?;
    eprintln!(
        "generator: {:.1} attributes and {:.2} events per span, {} resources per request",
        shape.attributes_per_span, shape.events_per_span, shape.resources
    );

    // Ingest into the store.
    let mut config = StoreConfig::new(&store_dir);
    if let Some(l) = args.page_level {
        config.blocks.compression_level = l;
    }
    if let Some(k) = args.page_kib {
        config.blocks.page_bytes = k * 1024;
    }
    if let Some(n) = args.block_spans {
        config.blocks.max_block_spans = n;
    }
    let store = SledStore::open(config)?;
    let gen = Generator::new(seed, args.spans, args.spans_per_request, args.lookups, true);
    let ingest = {
        let store = store.clone();
        drive(&rt, "store", gen, args.writers, move |bytes: Vec<u8>| {
            let store = store.clone();
            async move {
                let bytes = Bytes::from(bytes);
                let mut recorder = wire::Recorder::new(&bytes);
                wire::scan_request(&bytes, &mut recorder)
                    .map_err(|e| format!("generated request refused by the scan: {e}"))?;
                let recorded = recorder.finish();
                let sent = recorded.span_count() as u64;
                let receipt = store
                    .write_batch(SpanBatch::from_scanned(bytes, recorded))
                    .await?;
                if receipt.rejected_spans > 0 || receipt.accepted_spans != sent {
                    return Err(format!(
                        "the store accepted {} of {sent} spans: {}",
                        receipt.accepted_spans, receipt.rejection
                    )
                    .into());
                }
                Ok(sent)
            }
        })?
    };
    let peak_rss = proc_status_kib("VmHWM").unwrap_or(0) as f64 / 1024.0;
    let rss_after = proc_status_kib("VmRSS").unwrap_or(0) as f64 / 1024.0;
    let disk_before_flush = dir_size(&store_dir);
    let ingest_sps = ingest.spans as f64 / ingest.elapsed.as_secs_f64();
    eprintln!(
        "ingest: {} spans in {:.1} s = {ingest_sps:.0} spans/s; VmHWM {peak_rss:.1} MiB",
        ingest.spans,
        ingest.elapsed.as_secs_f64()
    );

    // Cut everything into blocks, then measure what is on disk.
    let flushing = Instant::now();
    store.flush_blocks()?;
    let flush_s = flushing.elapsed().as_secs_f64();
    // The high-water mark once the log's backlog has been cut (the cut lags the ingest).
    let peak_rss_flush = proc_status_kib("VmHWM").unwrap_or(0) as f64 / 1024.0;
    let disk = dir_size(&store_dir);
    let stats = store.stats();
    let block_stats = store.block_stats();
    let bytes_blocks = block_stats.block_bytes as f64 / args.spans.max(1) as f64;
    eprintln!(
        "blocks: {} holding {} spans in {} bytes = {bytes_blocks:.1} bytes per span",
        block_stats.blocks, block_stats.block_spans, block_stats.block_bytes
    );
    eprintln!("flush_blocks: {flush_s:.2} s; {disk} bytes on disk");

    // Trace by id.
    let summary = &ingest.summary;
    let mut lookups = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (id, want) in &summary.sample {
        let started = Instant::now();
        let got = store.trace(*id, TimeWindow::all())?;
        lookups.record(started.elapsed().as_micros().max(1) as u64)?;
        let spans = got.as_deref().map(count_spans_of).unwrap_or(0);
        if spans != *want as usize {
            return Err(format!(
                "trace {} has {want} spans but the store answered {spans}",
                id.to_hex()
            )
            .into());
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let (p50, p99, pmax) = (
        ms(lookups.value_at_quantile(0.5)),
        ms(lookups.value_at_quantile(0.99)),
        ms(lookups.max()),
    );

    // The rare value: exactly one span of the run.
    let (rare_value, rare_trace) = summary
        .rare
        .clone()
        .ok_or("the generator did not emit the rare span")?;
    let rare_query = SearchQuery {
        conditions: vec![Condition {
            scope: None,
            key: "user.id".into(),
            matcher: Matcher::Equals(rare_value.clone()),
        }],
        window: TimeWindow::all(),
        limit: 20,
        ..Default::default()
    };
    let rare_times = time_search(&store, &rare_query, |r| {
        if r.traces.len() == 1 && r.traces[0].trace_id == rare_trace && r.traces[0].matched == 1 {
            Ok(())
        } else {
            Err(format!(
                "search user.id = {rare_value:?} found {} traces ({:?}), want exactly {}",
                r.traces.len(),
                r.traces
                    .iter()
                    .map(|t| t.trace_id.to_hex())
                    .collect::<Vec<_>>(),
                rare_trace.to_hex()
            ))
        }
    })?;

    // A common value: one service of 20.
    let service = SERVICES[(seed % SERVICES.len() as u64) as usize].0;
    let service_query = SearchQuery {
        conditions: vec![Condition {
            scope: Some(TagScope::Resource),
            key: "service.name".into(),
            matcher: Matcher::Equals(service.into()),
        }],
        window: TimeWindow::all(),
        limit: 20,
        ..Default::default()
    };
    let want_hits = summary.traces.min(20) as usize;
    let service_times = time_search(&store, &service_query, |r| {
        if r.traces.is_empty()
            || r.traces.len() > 20
            || (summary.traces >= 1000 && r.traces.len() != want_hits)
        {
            Err(format!(
                "search resource.service.name = {service:?} found {} traces, want {want_hits}",
                r.traces.len()
            ))
        } else {
            Ok(())
        }
    })?;
    // Stop (and wait for) the background compaction before the floor runs on the same cores
    // and before the directory is removed.
    store.close()?;
    drop(store);

    // The durable-append floor, over the same generated bytes.
    let floor_spans = args.spans.min(FLOOR_MAX_SPANS);
    let floor_path = work.path().join("floor.log");
    let floor = run_floor(&rt, seed, floor_spans, args, &floor_path)?;
    let floor_sps = floor.spans as f64 / floor.elapsed.as_secs_f64();
    drop(rt);

    let spans = ingest.spans;
    let bytes_disk = disk as f64 / spans as f64;
    let bytes_otlp = summary.otlp_bytes as f64 / spans as f64;
    let ratio = ingest_sps / floor_sps;
    let (rare_best, rare_median) = best_median(&rare_times);
    let (svc_best, svc_median) = best_median(&service_times);
    let floor_bytes = floor.compressed_bytes as f64 / floor.spans as f64;

    println!(
        "store benchmark: {spans} spans, {} writers, {:.0} spans/request; the generator and the \
         store share this process ({WORKER_THREADS} tokio workers + a generator thread) on {} cores",
        args.writers,
        spans as f64 / summary.requests as f64,
        cores()
    );
    let rows: Vec<(&str, String)> = vec![
        ("durable ingest", format!("{ingest_sps:.0} spans/s")),
        (
            "durable-append floor",
            format!("{floor_sps:.0} spans/s ({} spans)", floor.spans),
        ),
        ("ingest / floor", format!("{:.1} %", 100.0 * ratio)),
        ("peak RSS after ingest", format!("{peak_rss:.1} MiB")),
        ("flush_blocks", format!("{flush_s:.2} s")),
        (
            "peak RSS after flush_blocks",
            format!("{peak_rss_flush:.1} MiB"),
        ),
        ("bytes on disk per span", format!("{bytes_disk:.1}")),
        ("  of which blocks", format!("{bytes_blocks:.1}")),
        (
            "  before flush_blocks",
            format!("{:.1}", disk_before_flush as f64 / spans as f64),
        ),
        ("OTLP protobuf bytes per span", format!("{bytes_otlp:.1}")),
        (
            "zstd -1 bytes per span (floor)",
            format!("{floor_bytes:.1}"),
        ),
        (
            "trace by id p50 / p99 / max",
            format!(
                "{p50:.2} / {p99:.2} / {pmax:.2} ms ({} lookups)",
                lookups.len()
            ),
        ),
        (
            "rare value search best / median",
            format!("{rare_best:.1} / {rare_median:.1} ms"),
        ),
        (
            "service search best / median",
            format!("{svc_best:.1} / {svc_median:.1} ms"),
        ),
    ];
    for (name, value) in &rows {
        println!("  {name:<34} {value}");
    }
    let mut report = json!({
        "spans": spans,
        "traces": summary.traces,
        "split_traces": summary.split_traces,
        "requests": summary.requests,
        "writers": args.writers,
        "worker_threads": WORKER_THREADS,
        "cores": cores(),
        "seed": seed,
        "attributes_per_span": shape.attributes_per_span,
        "events_per_span": shape.events_per_span,
        "ingest_s": ingest.elapsed.as_secs_f64(),
        "ingest_spans_per_s": ingest_sps,
        "generator_cpu_s": summary.cpu_s,
        "process_cpu_s_ingest": ingest.process_cpu_s,
        "floor_spans": floor.spans,
        "floor_spans_per_s": floor_sps,
        "floor_fsyncs": floor.fsyncs,
        "ingest_vs_floor": ratio,
        "peak_rss_mib": peak_rss,
        "rss_after_ingest_mib": rss_after,
        "flush_blocks_s": flush_s,
        "disk_bytes": disk,
        "disk_bytes_before_flush": disk_before_flush,
        "bytes_per_span_disk": bytes_disk,
        "bytes_per_span_blocks": bytes_blocks,
        "blocks": block_stats.blocks,
        "blocks_cut": block_stats.cuts,
        "compactions": block_stats.compactions,
        "bytes_per_span_disk_before_flush": disk_before_flush as f64 / spans as f64,
        "bytes_per_span_otlp": bytes_otlp,
        "bytes_per_span_zstd_floor": floor_bytes,
        "store_writes": stats.writes,
        "store_flushes": stats.flushes,
        "trace_by_id_lookups": lookups.len(),
        "trace_by_id_p50_ms": p50,
        "trace_by_id_p99_ms": p99,
        "trace_by_id_max_ms": pmax,
        "rare_search_ms": rare_median,
        "rare_search_best_ms": rare_best,
        "service_search_ms": svc_median,
        "service_search_best_ms": svc_best,
    });
    report["peak_rss_after_flush_mib"] = json!(peak_rss_flush);
    // What the query benchmark (`cargo xtask bench query`) needs to know of the data (a
    // second object: one `json!` of every field exceeds the macro's recursion limit).
    let dataset = json!({
        "services": SERVICES.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "root_services": [SERVICES[0].0, SERVICES[1].0],
        "searched_service": service,
        "window_start_unix_ns": summary.window_start_ns,
        "window_end_unix_ns": summary.window_end_ns,
        "slow_trace_share": SLOW_SHARE,
        "slow_min_ns": SLOW_MIN_NS,
        "rare_attribute": "user.id",
        "rare_value": rare_value,
        "rare_trace_id": rare_trace.to_hex(),
        "sample_traces": summary
            .sample
            .iter()
            .take(REPORTED_TRACE_IDS)
            .map(|(id, n)| json!({"id": id.to_hex(), "spans": n}))
            .collect::<Vec<_>>(),
    });
    if let (Some(all), serde_json::Value::Object(extra)) = (report.as_object_mut(), dataset) {
        all.extend(extra);
    }
    work.finish()?;
    println!("{report}");
    Ok(())
}

/// What one generated request looks like, decoded.
struct RequestShape {
    attributes_per_span: f64,
    events_per_span: f64,
    resources: usize,
}

/// Decodes one generated request with prost (the reference decoder) and checks it.
fn check_generator(seed: u64, per_request: usize) -> Result<RequestShape> {
    let mut gen = Generator::new(seed ^ 0x5eed, per_request as u64 * 4, per_request, 0, false);
    let mut first = true;
    let (mut spans, mut attributes, mut events, mut resources) = (0usize, 0usize, 0usize, 0);
    while let Some(bytes) = gen.next_request() {
        let request = ExportTraceServiceRequest::decode(bytes.as_slice())?;
        let scanned = count_request_spans(&bytes)? as usize;
        let decoded = sextant_otlp_proto::span_count(&request.resource_spans);
        if scanned != decoded {
            return Err(
                format!("generated request: scan counts {scanned} spans, prost {decoded}").into(),
            );
        }
        for rs in &request.resource_spans {
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                spans += 1;
                attributes += span.attributes.len();
                events += span.events.len();
                if span.trace_id.len() != 16 || span.span_id.len() != 8 {
                    return Err("generated span with a malformed id".into());
                }
            }
        }
        if first {
            resources = request.resource_spans.len();
            first = false;
        }
    }
    if spans as u64 != gen.finish().spans {
        return Err("the generator's span count is off".into());
    }
    Ok(RequestShape {
        attributes_per_span: attributes as f64 / spans.max(1) as f64,
        events_per_span: events as f64 / spans.max(1) as f64,
        resources,
    })
}

/// Runs a search [`SEARCH_RUNS`] times, checking every answer; returns the times in ms.
fn time_search(
    store: &SledStore,
    query: &SearchQuery,
    check: impl Fn(&sextant_store::SearchResult) -> Result<(), String>,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(SEARCH_RUNS);
    for _ in 0..SEARCH_RUNS {
        let started = Instant::now();
        let result = store.search(query)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        check(&result)?;
    }
    Ok(times)
}

fn best_median(times: &[f64]) -> (f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted.first().copied().unwrap_or(0.0),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
    )
}

fn count_spans_of(resource_spans: &[ResourceSpans]) -> usize {
    sextant_otlp_proto::span_count(resource_spans)
}

/// What a driven run did.
struct Driven {
    spans: u64,
    elapsed: Duration,
    process_cpu_s: f64,
    summary: Summary,
}

/// Generates requests on a thread and has `writers` tasks push them through `write`,
/// each awaited; prints progress on stderr.
fn drive<W, F>(
    rt: &tokio::runtime::Runtime,
    label: &'static str,
    mut gen: Generator,
    writers: usize,
    write: W,
) -> Result<Driven>
where
    W: Fn(Vec<u8>) -> F + Send + Sync + Clone + 'static,
    F: std::future::Future<Output = Result<u64>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Vec<u8>>(writers * 2);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let generator = {
        let stop = stop.clone();
        thread::Builder::new()
            .name(format!("bench-gen-{label}"))
            .spawn(move || {
                let cpu0 = thread_cpu_s();
                while !stop.load(Ordering::Relaxed) {
                    let Some(bytes) = gen.next_request() else {
                        break;
                    };
                    if tx.blocking_send(bytes).is_err() {
                        break;
                    }
                }
                let mut summary = gen.finish();
                summary.cpu_s = thread_cpu_s() - cpu0;
                summary
            })?
    };
    let progress = {
        let (stop, done) = (stop.clone(), done.clone());
        thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                let (mut last_n, mut last_t) = (0u64, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                    if last_t.elapsed() >= PROGRESS_EVERY {
                        let n = done.load(Ordering::Relaxed);
                        let rate = (n - last_n) as f64 / last_t.elapsed().as_secs_f64();
                        let avg = n as f64 / started.elapsed().as_secs_f64();
                        eprintln!(
                            "  {label}: {n} spans, {rate:.0} spans/s now, {avg:.0} spans/s overall"
                        );
                        (last_n, last_t) = (n, Instant::now());
                    }
                }
            })?
    };
    let rx = Arc::new(Mutex::new(rx));
    let result: Result<()> = rt.block_on(async {
        let mut tasks = Vec::with_capacity(writers);
        for _ in 0..writers {
            let (rx, write, done, stop) = (rx.clone(), write.clone(), done.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(bytes) = next else {
                        return Ok::<(), BoxError>(());
                    };
                    match write(bytes).await {
                        Ok(n) => {
                            done.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
            }));
        }
        let mut first_error = None;
        for t in tasks {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(format!("a writer task failed: {e}").into()),
            };
            if let (Err(e), None) = (r, &first_error) {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Unblock the generator if the writers stopped early.
    drop(rx);
    let summary = generator
        .join()
        .map_err(|_| "the generator thread panicked")?;
    let _ = progress.join();
    result?;
    let spans = done.load(Ordering::Relaxed);
    if spans != summary.spans {
        return Err(format!(
            "{label}: {spans} spans written but {} generated",
            summary.spans
        )
        .into());
    }
    Ok(Driven {
        spans,
        elapsed,
        process_cpu_s: process_cpu_s() - cpu_before,
        summary,
    })
}

/// The floor's figures.
struct Floor {
    spans: u64,
    elapsed: Duration,
    compressed_bytes: u64,
    fsyncs: u64,
}

type Append = (Vec<u8>, oneshot::Sender<std::io::Result<()>>);

/// The durable-append floor: zstd -1, one file, one fdatasync per group of waiting appends.
fn run_floor(
    rt: &tokio::runtime::Runtime,
    seed: u64,
    spans: u64,
    args: &Args,
    path: &Path,
) -> Result<Floor> {
    eprintln!("floor: {spans} spans appended to {}", path.display());
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let (tx, rx) = std_mpsc::channel::<Append>();
    let fsyncs = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let appender = {
        let (fsyncs, written) = (fsyncs.clone(), written.clone());
        thread::Builder::new()
            .name("bench-floor-appender".into())
            .spawn(move || appender_loop(file, rx, &fsyncs, &written))?
    };
    let gen = Generator::new(seed, spans, args.spans_per_request, 0, false);
    let tx = Arc::new(parking_lot::Mutex::new(Some(tx)));
    let driven = {
        let tx = tx.clone();
        drive(rt, "floor", gen, args.writers, move |bytes: Vec<u8>| {
            let tx = tx.clone();
            async move {
                let n = count_request_spans(&bytes)?;
                let compressed = zstd::bulk::compress(&bytes, -1)?;
                let (done, wait) = oneshot::channel();
                {
                    let guard = tx.lock();
                    let sender = guard.as_ref().ok_or("the floor's appender is closed")?;
                    sender
                        .send((compressed, done))
                        .map_err(|_| "the floor's appender stopped")?;
                }
                wait.await.map_err(|_| "the floor's appender stopped")??;
                Ok(n)
            }
        })
    };
    tx.lock().take();
    let appended = appender
        .join()
        .map_err(|_| "the floor's appender panicked")?;
    let driven = driven?;
    appended?;
    Ok(Floor {
        spans: driven.spans,
        elapsed: driven.elapsed,
        compressed_bytes: written.load(Ordering::Relaxed),
        fsyncs: fsyncs.load(Ordering::Relaxed),
    })
}

/// The floor's writer thread: appends every waiting record, then one fdatasync for all.
fn appender_loop(
    file: fs::File,
    rx: std_mpsc::Receiver<Append>,
    fsyncs: &AtomicU64,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < FLOOR_MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = (|| -> std::io::Result<()> {
            for (record, _) in &group {
                out.write_all(&(record.len() as u32).to_le_bytes())?;
                out.write_all(record)?;
                written.fetch_add(record.len() as u64 + 4, Ordering::Relaxed);
            }
            out.flush()?;
            out.get_ref().sync_data()
        })();
        fsyncs.fetch_add(1, Ordering::Relaxed);
        for (_, done) in group {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = done.send(r);
        }
        result?;
    }
    Ok(())
}

/// The spans of an encoded request, by the validating scan's count.
fn count_request_spans(bytes: &[u8]) -> Result<u64> {
    let n = wire::scan_request(bytes, &mut wire::CountSpans)
        .map_err(|e| format!("generated request refused by the scan: {e}"))?;
    Ok(n as u64)
}

/// What the generator produced.
#[derive(Debug, Default)]
struct Summary {
    spans: u64,
    traces: u64,
    split_traces: u64,
    requests: u64,
    otlp_bytes: u64,
    /// Sampled traces with their span counts (reservoir over all traces).
    sample: Vec<(TraceId, u32)>,
    /// The rare `user.id` value and its trace.
    rare: Option<(String, TraceId)>,
    /// Root spans start within this window (unix ns; the generator's "now" is its end).
    window_start_ns: u64,
    window_end_ns: u64,
    cpu_s: f64,
}

/// One operation of a service.
struct Op {
    name: String,
    /// The name of producer and consumer spans (messaging ops only).
    send_name: String,
    receive_name: String,
    method: &'static str,
    route: String,
    resource: &'static str,
}

/// A service: its resource and scope, encoded once, and its operations.
struct Service {
    /// The `Resource` message, encoded.
    resource: Vec<u8>,
    /// The `InstrumentationScope` message, encoded.
    scope: Vec<u8>,
    name: &'static str,
    /// 0..4 server routes, 4..6 HTTP client calls, 6..8 database calls, 8 internal,
    /// 9 messaging: 10 names per service, 200 in all.
    ops: Vec<Op>,
    db_system: &'static str,
}

/// The kind of a span, as OTLP numbers it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// A span's place in its trace.
#[derive(Clone, Copy)]
struct Shape {
    service: usize,
    kind: Kind,
    start: u64,
    end: u64,
    span_id: [u8; 8],
}

const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Makes requests of ~`per_request` spans, one at a time, encoding protobuf directly (the
/// generator shares the cores with the store: it must stay cheap).
struct Generator {
    rng: SmallRng,
    services: Vec<Service>,
    per_request: usize,
    remaining: u64,
    /// Global index of the next span, and where the rare span goes.
    next_span: u64,
    rare_at: Option<u64>,
    /// Encoded spans held back for the next request: (service, span message).
    late: Vec<(usize, Vec<u8>)>,
    sample_cap: usize,
    now_ns: u64,
    /// Per service, the `spans` fields of the request being built.
    by_service: Vec<Vec<u8>>,
    /// Scratch buffers: a span, an event, a formatted value.
    span_buf: Vec<u8>,
    event_buf: Vec<u8>,
    text: String,
    shape: Vec<Shape>,
    summary: Summary,
}

impl Generator {
    fn new(seed: u64, spans: u64, per_request: usize, sample_cap: usize, rare: bool) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let services: Vec<Service> = SERVICES
            .iter()
            .enumerate()
            .map(|(i, (name, lang))| make_service(&mut rng, i, name, lang))
            .collect();
        let rare_at = rare.then(|| rng.random_range(0..spans));
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let summary = Summary {
            window_start_ns: now_ns.saturating_sub(WINDOW_NS),
            window_end_ns: now_ns,
            ..Summary::default()
        };
        Self {
            rng,
            by_service: vec![Vec::new(); services.len()],
            services,
            per_request,
            remaining: spans,
            next_span: 0,
            rare_at,
            late: Vec::new(),
            sample_cap,
            now_ns,
            span_buf: Vec::with_capacity(2048),
            event_buf: Vec::with_capacity(512),
            text: String::with_capacity(256),
            shape: Vec::with_capacity(32),
            summary,
        }
    }

    fn finish(self) -> Summary {
        self.summary
    }

    /// The next request's protobuf bytes, or `None` when every span has been sent.
    fn next_request(&mut self) -> Option<Vec<u8>> {
        if self.remaining == 0 && self.late.is_empty() {
            return None;
        }
        for b in &mut self.by_service {
            b.clear();
        }
        let mut count = 0usize;
        for (svc, span) in std::mem::take(&mut self.late) {
            bytes_field(&mut self.by_service[svc], 2, &span);
            count += 1;
        }
        let mut late = Vec::new();
        while count < self.per_request && self.remaining > 0 {
            let n = self.trace_len().min(self.remaining) as usize;
            self.remaining -= n as u64;
            let split = if n >= 2 && self.rng.random_bool(LATE_SHARE) {
                self.summary.split_traces += 1;
                self.rng.random_range(1..=n / 2)
            } else {
                0
            };
            count += n - split;
            self.make_trace(n, n - split, &mut late);
        }
        self.late = late;
        let mut out = Vec::with_capacity(self.by_service.iter().map(|b| b.len() + 512).sum());
        for (svc, spans) in self.services.iter().zip(&self.by_service) {
            if spans.is_empty() {
                continue;
            }
            let scope_spans_len =
                field_len(svc.scope.len()) + spans.len() + field_len(SCHEMA_URL.len());
            let resource_spans_len = field_len(svc.resource.len()) + field_len(scope_spans_len);
            key(&mut out, 1, LEN);
            varint(&mut out, resource_spans_len as u64);
            bytes_field(&mut out, 1, &svc.resource);
            key(&mut out, 2, LEN);
            varint(&mut out, scope_spans_len as u64);
            bytes_field(&mut out, 1, &svc.scope);
            out.extend_from_slice(spans);
            bytes_field(&mut out, 3, SCHEMA_URL.as_bytes());
        }
        self.summary.requests += 1;
        self.summary.otlp_bytes += out.len() as u64;
        self.summary.spans += count as u64;
        Some(out)
    }

    /// 1–30 spans, small traces more likely (mean about 8).
    fn trace_len(&mut self) -> u64 {
        let u: f64 = self.rng.random();
        1 + (29.0 * u * u * u.sqrt()).round() as u64
    }

    /// Makes a trace of `n` spans; the first `now` go into the request being built, the others
    /// into `late`.
    fn make_trace(&mut self, n: usize, now: usize, late: &mut Vec<(usize, Vec<u8>)>) {
        let mut trace_id = [0u8; 16];
        self.rng.fill(&mut trace_id);
        trace_id[0] |= 1; // never the invalid all-zero id
        let tid = TraceId(trace_id);
        let trace_no = self.summary.traces;
        self.summary.traces += 1;
        if self.summary.sample.len() < self.sample_cap {
            self.summary.sample.push((tid, n as u32));
        } else if self.sample_cap > 0 {
            let j = self.rng.random_range(0..=trace_no);
            if (j as usize) < self.sample_cap {
                self.summary.sample[j as usize] = (tid, n as u32);
            }
        }
        self.shape.clear();
        let start = self.now_ns.saturating_sub(WINDOW_NS)
            + self.rng.random_range(0..WINDOW_NS - 2_000_000_000);
        // 1 ms to 0.9 s, small more likely; the slowest 0.5 % of traces take 1.1 to 2 s (the
        // query benchmark's `{ duration > 1s }`), still ending before the window does.
        let u = self.rng.random::<f64>();
        let dur = if u >= 1.0 - SLOW_SHARE {
            SLOW_MIN_NS + ((u - (1.0 - SLOW_SHARE)) / SLOW_SHARE * 900_000_000.0) as u64
        } else {
            1_000_000 + (u.powi(3) * 900_000_000.0) as u64
        };
        for i in 0..n {
            let (service, kind, s, e, parent) = if i == 0 {
                let svc = self.rng.random_range(0..2usize);
                (svc, Kind::Server, start, start + dur, None)
            } else {
                let p = self.shape[self.rng.random_range(0..i)];
                let (service, kind) = match p.kind {
                    Kind::Client => (self.other_service(p.service), Kind::Server),
                    Kind::Producer => (self.other_service(p.service), Kind::Consumer),
                    _ => {
                        let r = self.rng.random_range(0..100);
                        let k = if r < 35 {
                            Kind::Internal
                        } else if r < 90 {
                            Kind::Client
                        } else {
                            Kind::Producer
                        };
                        (p.service, k)
                    }
                };
                let (s, e) = if kind == Kind::Consumer {
                    let s = p.end + self.rng.random_range(100_000..5_000_000);
                    (s, s + self.rng.random_range(200_000..50_000_000))
                } else {
                    let len = (p.end - p.start).max(2);
                    let s = p.start + self.rng.random_range(0..len / 2);
                    (s, s + self.rng.random_range(1..=(p.end - s).max(1)))
                };
                (service, kind, s, e, Some(p.span_id))
            };
            let mut span_id = [0u8; 8];
            self.rng.fill(&mut span_id);
            span_id[0] |= 1;
            let shape = Shape {
                service,
                kind,
                start: s,
                end: e,
                span_id,
            };
            self.shape.push(shape);
            self.make_span(&shape, &trace_id, parent);
            if i < now {
                bytes_field(&mut self.by_service[service], 2, &self.span_buf);
            } else {
                late.push((service, self.span_buf.clone()));
            }
        }
    }

    fn other_service(&mut self, not: usize) -> usize {
        let k = self.rng.random_range(1..self.services.len());
        (not + k) % self.services.len()
    }

    /// Encodes one `Span` message into `span_buf`.
    fn make_span(&mut self, shape: &Shape, trace_id: &[u8; 16], parent: Option<[u8; 8]>) {
        let index = self.next_span;
        self.next_span += 1;
        let Shape {
            service: svc,
            kind,
            start,
            end,
            span_id,
        } = *shape;
        let rng = &mut self.rng;
        let service = &self.services[svc];
        let b = &mut self.span_buf;
        let ev = &mut self.event_buf;
        let t = &mut self.text;
        b.clear();
        ev.clear();
        let op_index = match kind {
            Kind::Server => rng.random_range(0..4),
            Kind::Client => rng.random_range(4..8),
            Kind::Internal => 8,
            Kind::Producer | Kind::Consumer => 9,
        };
        let op = &service.ops[op_index];
        let name = match kind {
            Kind::Producer => &op.send_name,
            Kind::Consumer => &op.receive_name,
            _ => &op.name,
        };
        bytes_field(b, 1, trace_id);
        bytes_field(b, 2, &span_id);
        if let Some(p) = parent {
            bytes_field(b, 4, &p);
        }
        bytes_field(b, 5, name.as_bytes());
        key(b, 6, VARINT);
        varint(b, kind as u64);
        key(b, 7, FIXED64);
        b.extend_from_slice(&start.to_le_bytes());
        key(b, 8, FIXED64);
        b.extend_from_slice(&end.to_le_bytes());

        let rare =
            (self.rare_at == Some(index)).then(|| format!("rare-{:016x}", rng.random::<u64>()));
        let mut wrote_user = false;
        let user = |b: &mut Vec<u8>, t: &mut String, rng: &mut SmallRng| {
            t.clear();
            match &rare {
                Some(r) => t.push_str(r),
                None => {
                    let _ = write!(t, "user-{}", rng.random_range(0..500_000u32));
                }
            }
            attr(b, 9, "user.id", Val::Str(t));
        };
        let mut error: Option<&str> = None;
        match (kind, op_index) {
            (Kind::Server, _) | (Kind::Client, 4 | 5) => {
                let code = http_status(rng);
                attr(b, 9, "http.request.method", Val::Str(op.method));
                attr(b, 9, "http.route", Val::Str(&op.route));
                t.clear();
                let _ = write!(
                    t,
                    "/api/v1/{}/{}",
                    op.resource,
                    rng.random_range(1..10_000_000u64)
                );
                attr(b, 9, "url.path", Val::Str(t));
                attr(b, 9, "http.response.status_code", Val::Int(code));
                uuid_like(rng, t);
                attr(b, 9, "request.id", Val::Str(t));
                if kind == Kind::Server {
                    user(b, t, rng);
                    wrote_user = true;
                    t.clear();
                    let _ = write!(
                        t,
                        "10.{}.{}.{}",
                        rng.random_range(0..4),
                        rng.random_range(0..256),
                        rng.random_range(1..255)
                    );
                    attr(b, 9, "client.address", Val::Str(t));
                    attr(
                        b,
                        9,
                        "user_agent.original",
                        Val::Str("Mozilla/5.0 (X11; Linux x86_64)"),
                    );
                } else {
                    t.clear();
                    let _ = write!(t, "{}.shop.svc", service.name);
                    attr(b, 9, "net.peer.name", Val::Str(t));
                    attr(b, 9, "server.port", Val::Int(8080));
                    attr(
                        b,
                        9,
                        "http.request.resend_count",
                        Val::Int(rng.random_range(0..2)),
                    );
                }
                attr(b, 9, "cache.hit", Val::Bool(rng.random_bool(0.3)));
                attr(
                    b,
                    9,
                    "sampling.weight",
                    Val::F64(rng.random_range(0.0..1.0)),
                );
                if code >= 500 || (kind == Kind::Client && rng.random_bool(0.02)) {
                    error = Some(if code >= 500 {
                        "upstream answered 5xx"
                    } else {
                        "connection reset"
                    });
                    exception_event(ev, rng, t, start, end, "HttpServerError");
                }
            }
            (Kind::Client, _) => {
                let id = rng.random_range(1..10_000_000u64);
                let table = op.resource;
                attr(b, 9, "db.system", Val::Str(service.db_system));
                attr(b, 9, "db.name", Val::Str("shop"));
                t.clear();
                let _ = if op_index == 6 {
                    write!(t, "SELECT * FROM {table} WHERE id = {id}")
                } else {
                    write!(
                        t,
                        "INSERT INTO {table} (id, qty) VALUES ({id}, {})",
                        rng.random_range(1..20)
                    )
                };
                attr(b, 9, "db.statement", Val::Str(t));
                attr(b, 9, "db.operation", Val::Str(op.method));
                t.clear();
                let _ = write!(t, "{}-db.shop.svc", service.name);
                attr(b, 9, "net.peer.name", Val::Str(t));
                attr(b, 9, "server.port", Val::Int(5432));
                attr(b, 9, "db.rows_affected", Val::Int(rng.random_range(0..200)));
                uuid_like(rng, t);
                attr(b, 9, "request.id", Val::Str(t));
                attr(b, 9, "db.prepared", Val::Bool(rng.random_bool(0.8)));
                attr(
                    b,
                    9,
                    "db.pool.utilization",
                    Val::F64(rng.random_range(0.0..1.0)),
                );
                if rng.random_bool(0.01) {
                    error = Some("deadlock detected");
                    exception_event(ev, rng, t, start, end, "DatabaseError");
                }
            }
            (Kind::Internal, _) => {
                attr(b, 9, "code.function", Val::Str(&op.name));
                attr(b, 9, "code.namespace", Val::Str(service.name));
                attr(b, 9, "thread.id", Val::Int(rng.random_range(1..64)));
                user(b, t, rng);
                wrote_user = true;
                uuid_like(rng, t);
                attr(b, 9, "request.id", Val::Str(t));
                attr(b, 9, "items.count", Val::Int(rng.random_range(0..50)));
                attr(
                    b,
                    9,
                    "feature.flag.new_checkout",
                    Val::Bool(rng.random_bool(0.5)),
                );
                attr(b, 9, "cart.total", Val::F64(rng.random_range(0.0..2_000.0)));
                t.clear();
                let _ = write!(t, "tenant-{}", rng.random_range(0..40));
                attr(b, 9, "tenant.id", Val::Str(t));
                if rng.random_bool(0.2) {
                    key(ev, 1, FIXED64);
                    ev.extend_from_slice(&(start + (end - start) / 2).to_le_bytes());
                    bytes_field(ev, 2, b"cache miss");
                    t.clear();
                    let _ = write!(t, "{}:{}", op.resource, rng.random_range(0..100_000));
                    attr(ev, 3, "cache.key", Val::Str(t));
                }
            }
            (Kind::Producer | Kind::Consumer, _) => {
                attr(b, 9, "messaging.system", Val::Str("kafka"));
                attr(b, 9, "messaging.destination.name", Val::Str(&op.route));
                let op_type = if kind == Kind::Producer {
                    "publish"
                } else {
                    "process"
                };
                attr(b, 9, "messaging.operation.type", Val::Str(op_type));
                uuid_like(rng, t);
                attr(b, 9, "messaging.message.id", Val::Str(t));
                attr(
                    b,
                    9,
                    "messaging.kafka.partition",
                    Val::Int(rng.random_range(0..12)),
                );
                attr(
                    b,
                    9,
                    "messaging.message.body.size",
                    Val::Int(rng.random_range(64..8192)),
                );
                attr(b, 9, "net.peer.name", Val::Str("kafka.shop.svc"));
                uuid_like(rng, t);
                attr(b, 9, "request.id", Val::Str(t));
                attr(b, 9, "messaging.retry", Val::Bool(rng.random_bool(0.05)));
                attr(
                    b,
                    9,
                    "messaging.lag.seconds",
                    Val::F64(rng.random_range(0.0..3.0)),
                );
            }
        }
        if rare.is_some() && !wrote_user {
            user(b, t, rng);
        }
        if let Some(r) = rare {
            self.summary.rare = Some((r, TraceId(*trace_id)));
        }
        if !ev.is_empty() {
            bytes_field(b, 11, ev);
        }
        if let Some(message) = error {
            let len = field_len(message.len()) + 2;
            key(b, 15, LEN);
            varint(b, len as u64);
            bytes_field(b, 2, message.as_bytes());
            key(b, 3, VARINT);
            varint(b, 2);
        }
        key(b, 16, FIXED32);
        b.extend_from_slice(&0x301u32.to_le_bytes());
    }
}

fn make_service(rng: &mut SmallRng, i: usize, name: &'static str, lang: &str) -> Service {
    let res = |k: usize| RESOURCES[(i + k) % RESOURCES.len()];
    let mut ops = Vec::with_capacity(10);
    let op = |name: String, method: &'static str, route: String, resource: &'static str| Op {
        name,
        send_name: String::new(),
        receive_name: String::new(),
        method,
        route,
        resource,
    };
    for k in 0..4 {
        let method = METHODS[(i + k) % METHODS.len()];
        let route = format!("/api/v1/{}/{{id}}", res(k));
        ops.push(op(format!("{method} {route}"), method, route, res(k)));
    }
    for k in 0..2 {
        let method = METHODS[(i + k + 1) % METHODS.len()];
        let target = SERVICES[(i + 3 + k * 7) % SERVICES.len()].0;
        let route = format!("/api/v1/{}/{{id}}", res(k + 4));
        ops.push(op(format!("{method} {target}"), method, route, res(k + 4)));
    }
    for (k, verb) in ["SELECT", "INSERT"].into_iter().enumerate() {
        let table = TABLES[(i + k) % TABLES.len()];
        ops.push(op(
            format!("{verb} shop.{table}"),
            verb,
            String::new(),
            table,
        ));
    }
    ops.push(op(
        format!("{name}.process_{}", res(6)),
        "",
        String::new(),
        res(6),
    ));
    let topic = format!("{}-events", res(7));
    let mut messaging = op(format!("{topic} send"), "", topic.clone(), res(7));
    messaging.send_name = format!("{topic} publish");
    messaging.receive_name = format!("{topic} process");
    ops.push(messaging);
    let pod: String = (0..5)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    let resource = Resource {
        attributes: vec![
            kv_str("service.name", name),
            kv_str(
                "service.version",
                &format!("1.{}.{}", i % 7, rng.random_range(0..20)),
            ),
            kv_str("service.namespace", "shop"),
            kv_str("deployment.environment.name", "production"),
            kv_str("host.name", &format!("node-{}", i % 6)),
            kv_str("k8s.namespace.name", "shop"),
            kv_str("k8s.pod.name", &format!("{name}-7d9f8b6c5-{pod}")),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("telemetry.sdk.language", lang),
            kv_str("telemetry.sdk.version", "1.38.0"),
        ],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: format!("io.opentelemetry.{lang}"),
        version: "1.38.0".into(),
        ..Default::default()
    };
    Service {
        resource: resource.encode_to_vec(),
        scope: scope.encode_to_vec(),
        name,
        ops,
        db_system: DB_SYSTEMS[i % DB_SYSTEMS.len()],
    }
}

/// 90 % 2xx, 3 % 3xx, 4 % 4xx, 3 % 5xx.
fn http_status(rng: &mut SmallRng) -> i64 {
    match rng.random_range(0..100) {
        0..90 => [200, 200, 200, 201, 204][rng.random_range(0..5)],
        90..93 => 304,
        93..97 => [400, 401, 404, 409][rng.random_range(0..4)],
        _ => [500, 502, 503][rng.random_range(0..3)],
    }
}

/// Appends an `exception` `Event` message (its fields, unframed) to `ev`.
fn exception_event(
    ev: &mut Vec<u8>,
    rng: &mut SmallRng,
    t: &mut String,
    start: u64,
    end: u64,
    kind: &str,
) {
    key(ev, 1, FIXED64);
    ev.extend_from_slice(&(start + (end - start) / 2).to_le_bytes());
    bytes_field(ev, 2, b"exception");
    attr(ev, 3, "exception.type", Val::Str(kind));
    uuid_like(rng, t);
    let _ = write!(t, " failed after {} ms", (end - start) / 1_000_000);
    attr(ev, 3, "exception.message", Val::Str(t));
}

/// A random uuid-like text, into `t` (cleared first).
fn uuid_like(rng: &mut SmallRng, t: &mut String) {
    let a: u128 = rng.random();
    t.clear();
    let _ = write!(
        t,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (a >> 96) as u32,
        (a >> 80) as u16,
        (a >> 64) as u16,
        (a >> 48) as u16,
        a & 0xffff_ffff_ffff
    );
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

// A minimal protobuf writer for the generated requests.

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The tag of field `field`.
fn key(buf: &mut Vec<u8>, field: u8, wire_type: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire_type));
}

/// The encoded size of a length-delimited field of `len` bytes (fields 1 to 15).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn bytes_field(buf: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    key(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// An attribute value.
enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    F64(f64),
}

/// Appends a `KeyValue` as field `field` (9 in a span, 3 in an event).
fn attr(buf: &mut Vec<u8>, field: u8, name: &str, value: Val<'_>) {
    let value_len = match &value {
        Val::Str(s) => field_len(s.len()),
        Val::Int(i) => 1 + varint_len(*i as u64),
        Val::Bool(_) => 2,
        Val::F64(_) => 9,
    };
    key(buf, field, LEN);
    varint(buf, (field_len(name.len()) + field_len(value_len)) as u64);
    bytes_field(buf, 1, name.as_bytes());
    key(buf, 2, LEN);
    varint(buf, value_len as u64);
    match value {
        Val::Str(s) => bytes_field(buf, 1, s.as_bytes()),
        Val::Bool(v) => {
            key(buf, 2, VARINT);
            buf.push(u8::from(v));
        }
        Val::Int(i) => {
            key(buf, 3, VARINT);
            varint(buf, i as u64);
        }
        Val::F64(f) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_le_bytes());
        }
    }
}

/// A field of `/proc/self/status`, in KiB (`VmHWM`, `VmRSS`).
fn proc_status_kib(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// utime + stime of a `/proc/.../stat` file, in seconds (USER_HZ is 100 on Linux).
fn stat_cpu_s(path: &str) -> f64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

fn thread_cpu_s() -> f64 {
    stat_cpu_s("/proc/thread-self/stat")
}

fn process_cpu_s() -> f64 {
    stat_cpu_s("/proc/self/stat")
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}
