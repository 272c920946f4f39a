//! The collector's own metrics, named as the reference collector names them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of receiver metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub receiver: String,
    pub transport: String,
}

/// Labels of exporter metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExporterLabels {
    pub exporter: String,
}

/// Labels of processor metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessorLabels {
    pub processor: String,
}

/// Counters and histograms shared by every stage.
#[derive(Clone)]
pub struct CollectorMetrics {
    pub accepted_spans: Family<ReceiverLabels, Counter>,
    pub refused_spans: Family<ReceiverLabels, Counter>,
    pub batch_send_size: Histogram,
    pub memory_refusals: Counter,
    /// Spans an exporter delivered (the backend acknowledged them).
    pub exporter_sent_spans: Family<ExporterLabels, Counter>,
    /// Spans an exporter gave up on after its retries.
    pub exporter_send_failed_spans: Family<ExporterLabels, Counter>,
    /// Spans an exporter could not queue (queue full): refused retryably upstream.
    pub exporter_enqueue_failed_spans: Family<ExporterLabels, Counter>,
    /// Batches waiting in an exporter's sending queue.
    pub exporter_queue_size: Family<ExporterLabels, Gauge>,
    /// Capacity of an exporter's sending queue, in batches.
    pub exporter_queue_capacity: Family<ExporterLabels, Gauge>,
    /// Spans a processor dropped on purpose (filter, sampling).
    pub processor_dropped_spans: Family<ProcessorLabels, Counter>,
}

impl CollectorMetrics {
    /// Creates the metrics and registers them (the `otelcol_` prefix is added here).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            accepted_spans: Family::default(),
            refused_spans: Family::default(),
            batch_send_size: Histogram::new(exponential_buckets(10.0, 2.0, 14)),
            memory_refusals: Counter::default(),
            exporter_sent_spans: Family::default(),
            exporter_send_failed_spans: Family::default(),
            exporter_enqueue_failed_spans: Family::default(),
            exporter_queue_size: Family::default(),
            exporter_queue_capacity: Family::default(),
            processor_dropped_spans: Family::default(),
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
        otelcol.register(
            "exporter_sent_spans",
            "Spans successfully sent to destination",
            m.exporter_sent_spans.clone(),
        );
        otelcol.register(
            "exporter_send_failed_spans",
            "Spans in failed attempts to send to destination",
            m.exporter_send_failed_spans.clone(),
        );
        otelcol.register(
            "exporter_enqueue_failed_spans",
            "Spans that failed to be added to the sending queue",
            m.exporter_enqueue_failed_spans.clone(),
        );
        otelcol.register(
            "exporter_queue_size",
            "Current size of the retry queue (in batches)",
            m.exporter_queue_size.clone(),
        );
        otelcol.register(
            "exporter_queue_capacity",
            "Fixed capacity of the retry queue (in batches)",
            m.exporter_queue_capacity.clone(),
        );
        otelcol.register(
            "processor_dropped_spans",
            "Spans dropped by a processor on purpose (filter, sampling)",
            m.processor_dropped_spans.clone(),
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

    pub fn exporter(&self, exporter: &str) -> ExporterLabels {
        ExporterLabels {
            exporter: exporter.into(),
        }
    }

    pub fn dropped(&self, processor: &str, spans: usize) {
        self.processor_dropped_spans
            .get_or_create(&ProcessorLabels {
                processor: processor.into(),
            })
            .inc_by(spans as u64);
    }
}
