//! The collector's own metrics, named as the reference collector names them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of receiver metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub receiver: String,
    pub transport: String,
}

/// Counters and histograms shared by every stage.
#[derive(Clone)]
pub struct CollectorMetrics {
    pub accepted_spans: Family<ReceiverLabels, Counter>,
    pub refused_spans: Family<ReceiverLabels, Counter>,
    pub batch_send_size: Histogram,
    pub memory_refusals: Counter,
}

impl CollectorMetrics {
    /// Creates the metrics and registers them (the `otelcol_` prefix is added here).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            accepted_spans: Family::default(),
            refused_spans: Family::default(),
            batch_send_size: Histogram::new(exponential_buckets(10.0, 2.0, 14)),
            memory_refusals: Counter::default(),
        };
        let otelcol = registry.sub_registry_with_prefix("otelcol");
        otelcol.register(
            "receiver_accepted_spans",
            "Spans successfully pushed into the pipeline",
            m.accepted_spans.clone(),
        );
        otelcol.register(
            "receiver_refused_spans",
            "Spans that could not be pushed into the pipeline",
            m.refused_spans.clone(),
        );
        otelcol.register(
            "processor_batch_batch_send_size",
            "Number of spans in a batch that was sent",
            m.batch_send_size.clone(),
        );
        otelcol.register(
            "processor_memory_limiter_refused",
            "Requests refused because the process was over its memory limit",
            m.memory_refusals.clone(),
        );
        m
    }

    /// Metrics that go nowhere (for tests and embedding).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn accepted(&self, receiver: &str, transport: &str, spans: usize) {
        self.accepted_spans
            .get_or_create(&ReceiverLabels {
                receiver: receiver.into(),
                transport: transport.into(),
            })
            .inc_by(spans as u64);
    }

    pub fn refused(&self, receiver: &str, transport: &str, spans: usize) {
        self.refused_spans
            .get_or_create(&ReceiverLabels {
                receiver: receiver.into(),
                transport: transport.into(),
            })
            .inc_by(spans as u64);
    }
}
