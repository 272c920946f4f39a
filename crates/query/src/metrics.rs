//! `GET /metrics` and the query service's own metrics.
//!
//! The answer is the OpenMetrics text exposition (which Prometheus scrapes) of, in order: the
//! process-wide registry shared by the other services, the extra registries given with
//! [`crate::QueryState::with_registries`] (the all-in-one's connectors), then the registry this
//! crate owns, which
//! holds per-endpoint request counters and latency histograms and a collector that reads the
//! store's figures ([`TraceReader::stats`]) at every scrape.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use sextant_store::TraceReader;

use crate::error::QueryError;
use crate::QueryState;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    code: String,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The query service's own registry and the metrics in it.
pub(crate) struct QueryMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
}

impl fmt::Debug for QueryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryMetrics").finish_non_exhaustive()
    }
}

impl QueryMetrics {
    /// A registry with the request metrics and the store collector for `reader`.
    pub(crate) fn new(reader: Arc<dyn TraceReader>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sextant_query_requests",
            "HTTP requests to the query API, by endpoint and status code",
            requests.clone(),
        );
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "sextant_query_request_duration",
            "Time to answer HTTP requests to the query API, by endpoint",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register_collector(Box::new(StoreCollector { reader }));
        Self {
            registry,
            requests,
            durations,
        }
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, endpoint: &'static str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                code: code.to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }
}

/// Reads the store's figures at every scrape.
struct StoreCollector {
    reader: Arc<dyn TraceReader>,
}

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCollector").finish_non_exhaustive()
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.reader.stats();
        let counters = [
            (
                "sextant_store_spans_written",
                "Spans durably written to the store",
                stats.spans_written,
            ),
            (
                "sextant_store_writes",
                "Write batches durably written to the store",
                stats.writes,
            ),
            (
                "sextant_store_flushes",
                "Flushes (fsyncs) of the store, each covering one or more writes",
                stats.flushes,
            ),
            (
                "sextant_store_blocks_cut",
                "Blocks cut from the write-ahead log",
                stats.blocks_cut,
            ),
            (
                "sextant_store_compactions",
                "Compactions (blocks merged into one)",
                stats.compactions,
            ),
            (
                "sextant_store_blocks_expired",
                "Blocks deleted by retention",
                stats.blocks_expired,
            ),
            (
                "sextant_store_blocks_quarantined",
                "Blocks that failed their checks and were quarantined",
                stats.blocks_quarantined,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        // The store's write limits: spans refused, by the limit, and values truncated.
        let limits = self.reader.limit_stats();
        let discarded = [
            ("trace_too_large", limits.discarded_trace_too_large),
            (
                "trace_too_many_spans",
                limits.discarded_trace_too_many_spans,
            ),
        ];
        let mut metric = encoder.encode_descriptor(
            "sextant_store_discarded_spans",
            "Spans the store refused, by reason (trace_too_large: over max_bytes_per_trace; trace_too_many_spans: over max_spans_per_trace)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, value) in discarded {
            let labels = [("reason", reason)];
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        let truncated = ConstCounter::new(limits.truncated_attributes);
        let metric = encoder.encode_descriptor(
            "sextant_store_truncated_attributes",
            "Attributes whose string value the store truncated to max_attribute_value_length",
            None,
            truncated.metric_type(),
        )?;
        truncated.encode(metric)?;
        let gauges = [
            (
                "sextant_store_bytes_on_disk",
                "Size of the store's files on local disk (log and local blocks), in bytes",
                stats.bytes_on_disk,
            ),
            ("sextant_store_blocks", "Blocks served", stats.blocks),
            (
                "sextant_store_block_bytes",
                "Size of the blocks served (on disk or object storage), in bytes",
                stats.block_bytes,
            ),
            (
                "sextant_store_wal_spans",
                "Spans in the write-ahead log, not cut into blocks yet",
                stats.wal_spans,
            ),
            (
                "sextant_store_live_traces",
                "Traces in the write-ahead log whose size the store counts for its trace limits",
                limits.tracked_traces,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Which endpoint a route is, for the request metrics.
#[derive(Clone)]
pub(crate) struct Tracked {
    pub(crate) metrics: Arc<QueryMetrics>,
    pub(crate) endpoint: &'static str,
}

/// Middleware: counts the request and observes its latency under the route's endpoint name.
pub(crate) async fn track(
    State(tracked): State<Tracked>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    tracked.metrics.record(
        tracked.endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<QueryState>) -> Result<Response, QueryError> {
    let shared = Arc::clone(&state.registry);
    let extra = state.extra_registries.clone();
    let own = Arc::clone(&state.metrics);
    // The store collector may touch the disk (size on disk): keep it off the async threads.
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode_registry(&mut text, &shared)?;
        for registry in &extra {
            encode_registry(&mut text, registry)?;
        }
        encode_registry(&mut text, &own.registry)?;
        encode_eof(&mut text)?;
        Ok::<_, fmt::Error>(text)
    })
    .await?
    .map_err(|e| QueryError::Internal(format!("encoding metrics failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response())
}
