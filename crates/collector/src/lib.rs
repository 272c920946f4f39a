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
}

impl ExportOutcome {
    /// Combines the outcomes of several batches.
    pub fn merge(&mut self, other: &ExportOutcome) {
        self.rejected_spans += other.rejected_spans;
        if self.message.is_empty() {
            self.message = other.message.clone();
        }
    }
}

/// A stage of the pipeline that takes batches.
pub trait Consumer: Send + Sync + 'static {
    /// Resolves once the batch is fully handled downstream.
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>>;
}
