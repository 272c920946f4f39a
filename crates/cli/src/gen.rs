//! `sextant gen`: an OTLP/gRPC load generator.
//!
//! It builds `--distinct-requests` realistic `ExportTraceServiceRequest`s before the clock
//! starts, encodes them once, and then keeps `--streams` export calls in flight, sending the
//! already-encoded bytes through a codec that copies them as they are. The generator itself
//! therefore costs little more than the gRPC transport, which matters when it shares the
//! machine with the server it measures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use prost::bytes::{BufMut, Bytes};
use prost::Message;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::{
    any_value, span, AnyValue, ExportTraceServiceRequest, ExportTraceServiceResponse,
    InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use tokio::time::Instant;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may still finish after the measured window (they count in the
/// run's total, not in the window).
const DRAIN_GRACE: Duration = Duration::from_secs(10);
const RETRY_BACKOFF: Duration = Duration::from_millis(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }
}

/// Sends realistic OTLP trace load over gRPC and reports throughput and latency.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// OTLP/gRPC endpoint to send to.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    /// Concurrent in-flight export calls.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Measured duration, in seconds (after the warm-up).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Spans in each request (whole traces of 5-15 spans; the last may be shorter).
    #[arg(long, default_value_t = 500)]
    pub spans_per_request: usize,
    /// How many different pre-built requests to cycle through.
    #[arg(long, default_value_t = 64)]
    pub distinct_requests: usize,
    /// Seed of the random data (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Warm-up, in seconds, sent before the measured window and not counted.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Print the final report as one JSON line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compression of the requests.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    /// Give every request sent new trace ids (the same for all spans of a trace), instead of
    /// cycling through the same traces: what tail sampling must see to buffer real traces.
    #[arg(long)]
    pub fresh_trace_ids: bool,
}

pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    if args.streams == 0 || args.connections == 0 || args.duration == 0 {
        bail!("--streams, --connections and --duration must be at least 1");
    }
    if args.spans_per_request == 0 || args.distinct_requests == 0 {
        bail!("--spans-per-request and --distinct-requests must be at least 1");
    }
    let seed = args.seed.unwrap_or_else(rand::random);

    let built_at = Instant::now();
    let requests = Arc::new(build_requests(
        seed,
        args.distinct_requests,
        args.spans_per_request,
    ));
    let avg_bytes =
        requests.iter().map(|r| r.body.len()).sum::<usize>() as f64 / requests.len() as f64;
    eprintln!(
        "gen: built {} requests of {} spans ({:.0} bytes each on average, seed {seed}) in {:.2?}",
        requests.len(),
        args.spans_per_request,
        avg_bytes,
        built_at.elapsed()
    );

    let endpoint = Endpoint::from_shared(args.endpoint.clone())
        .with_context(|| format!("invalid endpoint {:?}", args.endpoint))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT);
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.endpoint))?;
        channels.push(channel);
    }

    let start = Instant::now();
    let timeline = Timeline {
        measure_start: start + Duration::from_secs(args.warmup),
        end: start + Duration::from_secs(args.warmup + args.duration),
    };
    let shared = Arc::new(Shared::default());
    let next = Arc::new(AtomicUsize::new(0));
    let compression = match args.compression {
        Compression::None => None,
        Compression::Gzip => Some(CompressionEncoding::Gzip),
    };

    let progress = tokio::spawn(progress(shared.clone(), start, timeline));
    let mut workers = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
        if let Some(encoding) = compression {
            grpc = grpc.send_compressed(encoding);
        }
        workers.push(tokio::spawn(worker(
            grpc,
            requests.clone(),
            next.clone(),
            shared.clone(),
            timeline,
            args.fresh_trace_ids,
        )));
    }
    let mut stats = WorkerStats::new();
    for w in workers {
        let s = w.await.context("a sending task panicked")?;
        stats.merge(s);
    }
    shared.done.store(true, Ordering::Relaxed);
    progress.abort();

    let measured = (timeline.end - timeline.measure_start).as_secs_f64();
    let report = Report {
        endpoint: args.endpoint.clone(),
        measured_secs: measured,
        warmup_secs: args.warmup,
        streams: args.streams,
        connections: args.connections,
        spans_per_request: args.spans_per_request,
        distinct_requests: requests.len(),
        avg_request_bytes: avg_bytes,
        compression: args.compression,
        seed,
        spans_acked: stats.spans,
        requests_ok: stats.ok,
        errors: stats.errors.clone(),
        p50_ms: ms(stats.latency.value_at_quantile(0.50)),
        p99_ms: ms(stats.latency.value_at_quantile(0.99)),
        max_ms: ms(stats.latency.max()),
        spans_acked_total: shared.spans_total.load(Ordering::Relaxed),
        requests_ok_total: shared.ok_total.load(Ordering::Relaxed),
        requests_failed_total: shared.errors_total.load(Ordering::Relaxed),
        rejected_spans_total: shared.rejected_total.load(Ordering::Relaxed),
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if report.requests_ok_total == 0 {
        if report.requests_failed_total > 0 {
            bail!(
                "every request failed ({} failures)",
                report.requests_failed_total
            );
        }
        bail!("no request completed");
    }
    Ok(())
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Sending

#[derive(Clone, Copy)]
struct Timeline {
    measure_start: Instant,
    end: Instant,
}

/// Counters shared by the sending tasks, for the progress lines and the run's totals.
#[derive(Default)]
struct Shared {
    spans_total: AtomicU64,
    ok_total: AtomicU64,
    errors_total: AtomicU64,
    rejected_total: AtomicU64,
    done: AtomicBool,
}

/// What one sending task saw inside the measured window.
struct WorkerStats {
    ok: u64,
    spans: u64,
    errors: BTreeMap<String, u64>,
    /// Latency of successful requests, in microseconds.
    latency: Histogram<u64>,
}

impl WorkerStats {
    fn new() -> Self {
        Self {
            ok: 0,
            spans: 0,
            errors: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }

    fn merge(&mut self, other: WorkerStats) {
        self.ok += other.ok;
        self.spans += other.spans;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

async fn worker(
    mut grpc: tonic::client::Grpc<Channel>,
    requests: Arc<Vec<Prepared>>,
    next: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    timeline: Timeline,
    fresh_trace_ids: bool,
) -> WorkerStats {
    let mut stats = WorkerStats::new();
    loop {
        let sent = Instant::now();
        if sent >= timeline.end {
            break;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        let prepared = &requests[n % requests.len()];
        let body = if fresh_trace_ids {
            prepared.with_fresh_trace_ids((n / requests.len()) as u64 + 1)
        } else {
            prepared.body.clone()
        };
        let result =
            tokio::time::timeout_at(timeline.end + DRAIN_GRACE, export(&mut grpc, body)).await;
        let done = Instant::now();
        let in_window = done >= timeline.measure_start && done <= timeline.end;
        let result = match result {
            Ok(r) => r,
            Err(_) => break, // still in flight long after the end: give up on it
        };
        match result {
            Ok(rejected) => {
                let acked = prepared.spans.saturating_sub(rejected);
                shared.ok_total.fetch_add(1, Ordering::Relaxed);
                shared.spans_total.fetch_add(acked, Ordering::Relaxed);
                shared.rejected_total.fetch_add(rejected, Ordering::Relaxed);
                if in_window {
                    stats.ok += 1;
                    stats.spans += acked;
                    let micros = (done - sent).as_micros().max(1);
                    stats
                        .latency
                        .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                }
            }
            Err(status) => {
                shared.errors_total.fetch_add(1, Ordering::Relaxed);
                if in_window {
                    *stats.errors.entry(code_name(status.code())).or_default() += 1;
                }
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
        if done > timeline.end {
            break;
        }
    }
    stats
}

/// Sends one pre-encoded request; answers the number of spans the server said it rejected.
async fn export(
    grpc: &mut tonic::client::Grpc<Channel>,
    body: Bytes,
) -> Result<u64, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
    let path = PathAndQuery::from_static(EXPORT_PATH);
    let response = grpc
        .unary(tonic::Request::new(body), path, PreEncodedCodec)
        .await?;
    let rejected = response
        .into_inner()
        .partial_success
        .map(|p| u64::try_from(p.rejected_spans).unwrap_or(0))
        .unwrap_or(0);
    Ok(rejected)
}

/// `RESOURCE_EXHAUSTED` style names for gRPC codes.
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

async fn progress(shared: Arc<Shared>, start: Instant, timeline: Timeline) {
    let mut ticker = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    let (mut last_spans, mut last_ok, mut last_at) = (0u64, 0u64, start);
    loop {
        let now = ticker.tick().await;
        if shared.done.load(Ordering::Relaxed) {
            return;
        }
        let spans = shared.spans_total.load(Ordering::Relaxed);
        let ok = shared.ok_total.load(Ordering::Relaxed);
        let errors = shared.errors_total.load(Ordering::Relaxed);
        let secs = (now - last_at).as_secs_f64().max(1e-9);
        let phase = if now < timeline.measure_start {
            "warm-up"
        } else if now <= timeline.end {
            "measuring"
        } else {
            "draining"
        };
        eprintln!(
            "gen: [{:>4.0}s {phase}] {:.0} spans/s, {:.1} req/s over the last {:.0}s; {} spans acked, {} errors so far",
            (now - start).as_secs_f64(),
            (spans - last_spans) as f64 / secs,
            (ok - last_ok) as f64 / secs,
            secs,
            spans,
            errors
        );
        (last_spans, last_ok, last_at) = (spans, ok, now);
    }
}

// ---------------------------------------------------------------------------------------------
// The codec: requests go out as the bytes they were encoded to; answers are decoded by prost.

#[derive(Clone, Copy, Debug, Default)]
struct PreEncodedCodec;

#[derive(Clone, Copy, Debug, Default)]
struct BytesEncoder;

#[derive(Clone, Copy, Debug, Default)]
struct ResponseDecoder;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("cannot decode the response: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// The report

struct Report {
    endpoint: String,
    measured_secs: f64,
    warmup_secs: u64,
    streams: usize,
    connections: usize,
    spans_per_request: usize,
    distinct_requests: usize,
    avg_request_bytes: f64,
    compression: Compression,
    seed: u64,
    /// Spans acknowledged within the measured window.
    spans_acked: u64,
    requests_ok: u64,
    errors: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Over the whole run: warm-up, window and drain.
    spans_acked_total: u64,
    requests_ok_total: u64,
    requests_failed_total: u64,
    rejected_spans_total: u64,
}

impl Report {
    fn spans_per_sec(&self) -> f64 {
        self.spans_acked as f64 / self.measured_secs
    }

    fn requests_per_sec(&self) -> f64 {
        self.requests_ok as f64 / self.measured_secs
    }

    fn requests_failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "endpoint": self.endpoint,
            "measured_secs": self.measured_secs,
            "warmup_secs": self.warmup_secs,
            "streams": self.streams,
            "connections": self.connections,
            "spans_per_request": self.spans_per_request,
            "distinct_requests": self.distinct_requests,
            "avg_request_bytes": self.avg_request_bytes.round(),
            "compression": self.compression.as_str(),
            "seed": self.seed,
            "spans_per_sec": self.spans_per_sec().round(),
            "requests_per_sec": (self.requests_per_sec() * 100.0).round() / 100.0,
            "spans_acked": self.spans_acked,
            "requests_ok": self.requests_ok,
            "requests_failed": self.requests_failed(),
            "errors": self.errors,
            "latency_ms": {
                "p50": self.p50_ms,
                "p99": self.p99_ms,
                "max": self.max_ms,
            },
            "spans_acked_total": self.spans_acked_total,
            "requests_ok_total": self.requests_ok_total,
            "requests_failed_total": self.requests_failed_total,
            "rejected_spans_total": self.rejected_spans_total,
        })
        .to_string()
    }

    fn to_table(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        out.push_str(&format!(
            "sextant gen -> {}: {:.1} s measured after {} s warm-up, {} streams on {} connection(s), {} spans/request ({:.0} bytes), compression {}\n",
            self.endpoint,
            self.measured_secs,
            self.warmup_secs,
            self.streams,
            self.connections,
            self.spans_per_request,
            self.avg_request_bytes,
            self.compression.as_str()
        ));
        let rows = [
            ("spans/s", format!("{:.0}", self.spans_per_sec())),
            ("requests/s", format!("{:.1}", self.requests_per_sec())),
            ("spans acked", self.spans_acked.to_string()),
            ("requests ok", self.requests_ok.to_string()),
            ("errors", errors),
            (
                "latency ms",
                format!(
                    "p50 {:.2}  p99 {:.2}  max {:.2}",
                    self.p50_ms, self.p99_ms, self.max_ms
                ),
            ),
            (
                "whole run",
                format!(
                    "{} spans acked, {} requests ok, {} failed, {} spans rejected",
                    self.spans_acked_total,
                    self.requests_ok_total,
                    self.requests_failed_total,
                    self.rejected_spans_total
                ),
            ),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<12} {value}\n"));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The data

/// A request encoded once, before the clock starts.
struct Prepared {
    body: Bytes,
    spans: u64,
    /// Offsets of every span's 16-byte trace id in `body`.
    trace_id_offsets: Vec<usize>,
}

impl Prepared {
    /// The body with every trace id changed by `salt` (a trace's spans stay together).
    fn with_fresh_trace_ids(&self, salt: u64) -> Bytes {
        let mut body = self.body.to_vec();
        let salt = salt.to_le_bytes();
        for &off in &self.trace_id_offsets {
            for (b, s) in body[off..off + 8].iter_mut().zip(salt) {
                *b ^= s;
            }
        }
        Bytes::from(body)
    }
}

/// Where the trace ids of `request`'s spans are in its encoding: each is a `bytes` field of
/// tag 1 and length 16 (`0x0a 0x10`) holding one of the request's trace ids.
fn trace_id_offsets(request: &ExportTraceServiceRequest, body: &[u8]) -> Vec<usize> {
    let ids: std::collections::HashSet<&[u8]> = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.trace_id.as_slice())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 18 <= body.len() {
        if body[i] == 0x0a && body[i + 1] == 0x10 && ids.contains(&body[i + 2..i + 18]) {
            out.push(i + 2);
            i += 18;
        } else {
            i += 1;
        }
    }
    out
}

const SERVICES: [&str; 20] = [
    "frontend",
    "api-gateway",
    "auth",
    "users",
    "sessions",
    "catalog",
    "search",
    "recommendations",
    "cart",
    "checkout",
    "payments",
    "fraud",
    "ledger",
    "inventory",
    "shipping",
    "quotes",
    "currency",
    "email",
    "notifications",
    "ads",
];
const TENANTS: [&str; 12] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "aperture",
];
const REGIONS: [&str; 6] = [
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "ap-southeast-1",
    "sa-east-1",
];
const DB_SYSTEMS: [&str; 4] = ["postgresql", "redis", "mysql", "mongodb"];
const ERROR_MESSAGES: [&str; 4] = [
    "deadline exceeded",
    "connection reset by peer",
    "internal error",
    "upstream returned 503",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Server,
    Client,
    Internal,
}

struct Operation {
    name: String,
    kind: OpKind,
    method: &'static str,
    route: String,
    db_system: Option<&'static str>,
}

struct Service {
    resource: Resource,
    ops: Vec<Operation>,
    port: i64,
}

impl Service {
    fn ops_of(&self, kind: OpKind) -> impl Iterator<Item = &Operation> {
        self.ops.iter().filter(move |o| o.kind == kind)
    }
}

/// Twenty services with ten operations each: 200 distinct span names.
fn services(rng: &mut StdRng) -> Vec<Service> {
    SERVICES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let resource_name = name.trim_end_matches('s');
            let mut ops = Vec::with_capacity(10);
            for (method, suffix) in [
                ("GET", format!("/api/v1/{name}/{{id}}")),
                ("GET", format!("/api/v1/{name}")),
                ("POST", format!("/api/v1/{name}")),
                ("PUT", format!("/api/v1/{name}/{{id}}")),
            ] {
                ops.push(Operation {
                    name: format!("{method} {suffix}"),
                    kind: OpKind::Server,
                    method,
                    route: suffix,
                    db_system: None,
                });
            }
            let db = DB_SYSTEMS[i % DB_SYSTEMS.len()];
            for (verb, table) in [
                ("SELECT", format!("{resource_name}_records")),
                ("INSERT", format!("{resource_name}_events")),
            ] {
                ops.push(Operation {
                    name: format!("{verb} {table}"),
                    kind: OpKind::Client,
                    method: "POST",
                    route: format!("/{table}"),
                    db_system: Some(db),
                });
            }
            ops.push(Operation {
                name: format!("{name}-cache GET"),
                kind: OpKind::Client,
                method: "GET",
                route: format!("/cache/{name}"),
                db_system: Some("redis"),
            });
            for func in ["validate", "compute", "serialize"] {
                ops.push(Operation {
                    name: format!("{name}.{func}"),
                    kind: OpKind::Internal,
                    method: "GET",
                    route: format!("/internal/{name}/{func}"),
                    db_system: None,
                });
            }
            let version = format!(
                "{}.{}.{}",
                rng.random_range(1..4),
                rng.random_range(0..20),
                rng.random_range(0..10)
            );
            let host = format!(
                "{name}-{:08x}-{}",
                rng.random::<u32>(),
                rng.random_range(0..5)
            );
            Service {
                resource: Resource {
                    attributes: vec![
                        kv_str("service.name", name),
                        kv_str("service.version", &version),
                        kv_str("host.name", &host),
                        kv_str("deployment.environment", "production"),
                    ],
                    ..Default::default()
                },
                ops,
                port: 8000 + i as i64,
            }
        })
        .collect()
}

fn build_requests(seed: u64, count: usize, spans_per_request: usize) -> Vec<Prepared> {
    let mut rng = StdRng::seed_from_u64(seed);
    let services = services(&mut rng);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (0..count)
        .map(|_| {
            let request = build_request(&mut rng, &services, spans_per_request, now);
            let spans = sextant_otlp_proto::span_count(&request.resource_spans) as u64;
            let body = request.encode_to_vec();
            let trace_id_offsets = trace_id_offsets(&request, &body);
            Prepared {
                body: Bytes::from(body),
                spans,
                trace_id_offsets,
            }
        })
        .collect()
}

fn build_request(
    rng: &mut StdRng,
    services: &[Service],
    spans: usize,
    now_ns: u64,
) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<usize, Vec<Span>> = BTreeMap::new();
    let mut left = spans;
    while left > 0 {
        let n = rng.random_range(5..=15).min(left);
        left -= n;
        for (svc, span) in build_trace(rng, services, n, now_ns) {
            by_service.entry(svc).or_default().push(span);
        }
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(svc, spans)| ResourceSpans {
            resource: Some(services[svc].resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sextant-gen".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".to_string(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

struct Node {
    depth: usize,
    service: usize,
    span_id: [u8; 8],
    start: u64,
    end: u64,
}

/// One trace of `n` spans over 3-5 services, 3-6 levels deep; answers (service index, span).
fn build_trace(
    rng: &mut StdRng,
    services: &[Service],
    n: usize,
    now_ns: u64,
) -> Vec<(usize, Span)> {
    let trace_id: [u8; 16] = rng.random();
    let n_services = rng.random_range(3..=5).min(n);
    let chosen: Vec<usize> = rand::seq::index::sample(rng, services.len(), n_services).into_vec();
    let max_depth = rng.random_range(3..=6).min(n);
    let tenant = *TENANTS.choose(rng).expect("tenants");
    let region = *REGIONS.choose(rng).expect("regions");
    let user_id = format!("user-{}", rng.random_range(0..50_000));
    let request_id = hex::encode(rng.random::<[u8; 16]>());

    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // The first `max_depth` spans form a chain (so the trace reaches its depth); the rest
        // hang off any span that is not on the deepest level.
        let parent = if i == 0 {
            None
        } else if i < max_depth {
            Some(i - 1)
        } else {
            let candidates: Vec<usize> = (0..nodes.len())
                .filter(|&p| nodes[p].depth + 1 < max_depth)
                .collect();
            Some(*candidates.choose(rng).expect("the root is a candidate"))
        };
        // Every chosen service appears at least once; later spans stay in their parent's
        // service half of the time.
        let service = match parent {
            _ if i < chosen.len() => chosen[i],
            Some(p) if rng.random_bool(0.5) => nodes[p].service,
            _ => *chosen.choose(rng).expect("services"),
        };
        let kind = match parent {
            None => OpKind::Server,
            Some(p) if nodes[p].service != service => OpKind::Server,
            Some(_) if rng.random_bool(0.6) => OpKind::Client,
            Some(_) => OpKind::Internal,
        };
        let (start, end) = match parent {
            None => {
                let start = now_ns.saturating_sub(rng.random_range(0..5_000_000_000u64));
                (start, start + rng.random_range(5_000_000..800_000_000u64))
            }
            Some(p) => {
                let (ps, pe) = (nodes[p].start, nodes[p].end);
                let len = pe - ps;
                let start = ps + (len as f64 * rng.random_range(0.0..0.5)) as u64;
                let end = start + ((pe - start) as f64 * rng.random_range(0.1..0.9)) as u64;
                (start, end.max(start + 1_000))
            }
        };
        let span_id: [u8; 8] = rng.random();
        let depth = parent.map_or(0, |p| nodes[p].depth + 1);

        let svc = &services[service];
        let ops: Vec<&Operation> = svc.ops_of(kind).collect();
        let op = *ops.choose(rng).expect("every kind has operations");
        let error = rng.random_bool(0.03);
        let status_code: i64 = if error {
            *[500, 502, 503, 504].choose(rng).expect("codes")
        } else if rng.random_bool(0.02) {
            404
        } else if op.method == "POST" {
            201
        } else {
            200
        };
        let mut attributes: Vec<KeyValue> = Vec::with_capacity(11);
        attributes.push(kv_str("http.method", op.method));
        attributes.push(kv_str("http.route", &op.route));
        attributes.push(kv_int("http.status_code", status_code));
        attributes.push(kv_int(
            "net.peer.port",
            if kind == OpKind::Server {
                rng.random_range(32768..61000)
            } else {
                svc.port
            },
        ));
        attributes.push(kv_str("user.id", &user_id));
        attributes.push(kv_str("tenant", tenant));
        attributes.push(kv_str("region", region));
        attributes.push(kv_str("request.id", &request_id));
        if let Some(db) = op.db_system {
            attributes.push(kv_str("db.system", db));
        }
        attributes.push(kv_bool("cache.hit", rng.random_bool(0.7)));
        attributes.push(kv_int("thread.id", rng.random_range(1..64)));

        out.push((
            service,
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent.map_or_else(Vec::new, |p| nodes[p].span_id.to_vec()),
                flags: 0x101, // sampled; the parent's remoteness is known
                name: op.name.clone(),
                kind: match kind {
                    OpKind::Server => span::SpanKind::Server,
                    OpKind::Client => span::SpanKind::Client,
                    OpKind::Internal => span::SpanKind::Internal,
                } as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: Some(if error {
                    Status {
                        code: sextant_otlp_proto::proto::trace::status::StatusCode::Error as i32,
                        message: ERROR_MESSAGES.choose(rng).expect("messages").to_string(),
                    }
                } else {
                    Status::default()
                }),
                ..Default::default()
            },
        ));
        nodes.push(Node {
            depth,
            service,
            span_id,
            start,
            end,
        });
    }
    out
}

fn kv_bool(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn trace_ids(body: Bytes) -> Vec<Vec<u8>> {
        let request = ExportTraceServiceRequest::decode(body).unwrap();
        request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.trace_id.clone())
            .collect()
    }

    #[test]
    fn fresh_trace_ids_change_every_trace_and_keep_traces_together() {
        let requests = build_requests(3, 2, 500);
        let p = &requests[0];
        let original = trace_ids(p.body.clone());
        assert_eq!(
            p.trace_id_offsets.len(),
            original.len(),
            "every span's id is found"
        );
        let a = trace_ids(p.with_fresh_trace_ids(1));
        let b = trace_ids(p.with_fresh_trace_ids(2));
        let distinct = |ids: &[Vec<u8>]| ids.iter().collect::<HashSet<_>>().len();
        assert_eq!(
            distinct(&a),
            distinct(&original),
            "spans of a trace keep one id"
        );
        for i in 0..original.len() {
            assert_ne!(a[i], original[i]);
            assert_ne!(a[i], b[i]);
            for j in 0..original.len() {
                assert_eq!(original[i] == original[j], a[i] == a[j]);
            }
        }
    }

    #[test]
    fn requests_hold_whole_realistic_traces() {
        let requests = build_requests(7, 4, 500);
        assert_eq!(requests.len(), 4);
        let mut names = HashSet::new();
        for prepared in &requests {
            assert_eq!(prepared.spans, 500);
            let request = ExportTraceServiceRequest::decode(prepared.body.clone()).unwrap();
            let mut traces: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
            for rs in &request.resource_spans {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        names.insert(s.name.clone());
                        assert!(s.attributes.len() >= 10);
                        assert!(s.end_time_unix_nano > s.start_time_unix_nano);
                        traces.entry(s.trace_id.clone()).or_default().push(s);
                    }
                }
            }
            for spans in traces.values() {
                assert!(spans.len() <= 15);
                let ids: HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
                let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
                assert_eq!(roots, 1);
                assert!(spans
                    .iter()
                    .all(|s| s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id)));
            }
        }
        assert!(names.len() > 100, "{} names", names.len());
    }

    #[test]
    fn code_names() {
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
