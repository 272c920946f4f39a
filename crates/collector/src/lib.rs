//! Sextant's collector: OTLP receivers, processors and exporters, assembled into a pipeline.
//!
//! Data flows `receiver -> memory_limiter (admission) -> batch -> exporter`. Every stage is a
//! [`Consumer`]: `consume` resolves only when the batch has been handed on *and* the stage after
//! it has finished with it, so a receiver acknowledges a request only once its spans are
//! exported (for the in-process store: durable). Nothing acknowledged is lost; anything refused
//! gets a retryable error.
//!
//! This crate does not know the store: the binary plugs the store in as the final [`Consumer`].

pub mod config;
pub mod connector;
pub mod error;
pub mod exporter;
pub mod metrics;
pub mod processor;
pub mod receiver;
pub mod service;
pub mod storage;
pub mod tls;

pub use error::PipelineError;
pub use metrics::CollectorMetrics;
pub use service::Service;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A batch of spans moving through the pipeline: decoded once (or only validated, and kept
/// encoded, when no stage needs to look inside), moved, never cloned.
pub use sextant_otlp_proto::SpanBatch as TraceBatch;

/// What the end of the pipeline made of a batch: how many spans it refused for good, and why
/// (reported to the client as an OTLP partial success, which clients must not retry).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    pub rejected_spans: u64,
    pub message: String,
    /// The refused spans by trace, as far as the stage that refused them can say (the store
    /// can: it refuses a trace's spans in a write whole). Their sum is at most
    /// `rejected_spans`; the rest are *unattributed* (a downstream backend's OTLP partial
    /// success names no traces). A stage that merges requests (the batch processor) uses them
    /// to tell each request about its own spans only.
    pub rejected_traces: Vec<RejectedTrace>,
}

/// Spans of one trace that were refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedTrace {
    pub trace_id: sextant_otlp_proto::TraceId,
    /// How many of the batch's spans of this trace were refused.
    pub spans: u64,
    /// Why, naming the trace (empty: the outcome's `message` says).
    pub reason: String,
}

impl ExportOutcome {
    /// Combines the outcomes of several batches (holding different spans): counts add up, per
    /// trace too; the first message is kept.
    pub fn merge(&mut self, other: &ExportOutcome) {
        self.rejected_spans += other.rejected_spans;
        if self.message.is_empty() {
            self.message = other.message.clone();
        }
        if self.rejected_traces.is_empty() {
            self.rejected_traces = other.rejected_traces.clone();
            return;
        }
        self.combine_traces(other, |mine, theirs| mine + theirs);
    }

    /// Combines the outcomes of the *same* spans sent to several consumers (a fan-out to
    /// pipelines), so that a span refused by two of them counts once: per trace the larger
    /// count is kept, and of the unattributed refusals too; the first message is kept. This is
    /// exact when the consumers refused the same spans (two stores refuse a trace's part of a
    /// write whole), else the fewest that were refused.
    pub fn merge_same(&mut self, other: &ExportOutcome) {
        let unattributed = self.unattributed_spans().max(other.unattributed_spans());
        if self.message.is_empty() {
            self.message = other.message.clone();
        }
        self.combine_traces(other, u64::max);
        self.rejected_spans = self.attributed_spans() + unattributed;
    }

    /// Adds `other`'s refused traces to this outcome's, a trace in both getting
    /// `combine(ours, theirs)` spans (and our reason, else theirs).
    fn combine_traces(&mut self, other: &ExportOutcome, combine: impl Fn(u64, u64) -> u64) {
        let mut at: rustc_hash::FxHashMap<sextant_otlp_proto::TraceId, usize> = self
            .rejected_traces
            .iter()
            .enumerate()
            .map(|(i, t)| (t.trace_id, i))
            .collect();
        for t in &other.rejected_traces {
            match at.get(&t.trace_id) {
                Some(&i) => {
                    let mine = &mut self.rejected_traces[i];
                    mine.spans = combine(mine.spans, t.spans);
                    if mine.reason.is_empty() {
                        mine.reason = t.reason.clone();
                    }
                }
                None => {
                    at.insert(t.trace_id, self.rejected_traces.len());
                    self.rejected_traces.push(t.clone());
                }
            }
        }
    }

    /// The refused spans the outcome attributes to traces.
    pub fn attributed_spans(&self) -> u64 {
        self.rejected_traces.iter().map(|t| t.spans).sum()
    }

    /// The refused spans the outcome attributes to no trace.
    pub fn unattributed_spans(&self) -> u64 {
        self.rejected_spans.saturating_sub(self.attributed_spans())
    }
}

/// A stage of the pipeline that takes batches.
pub trait Consumer: Send + Sync + 'static {
    /// Resolves once the batch is fully handled downstream.
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>>;
}
