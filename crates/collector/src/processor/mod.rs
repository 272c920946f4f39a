//! Processors: each a small module with its `Config` (the reference collector's keys and
//! defaults) and a `build`.
//!
//! Most processors only look at or change spans; they implement [`SpanProcessor`] and run
//! inside a [`Transform`] stage. Those that hold spans back (batch, tail_sampling) or refuse
//! them (memory_limiter) are whole [`Consumer`]s.

pub mod attributes;
pub mod batch;
pub mod filter;
pub mod k8sattributes;
pub mod matching;
pub mod memory_limiter;
pub mod probabilistic_sampler;
pub mod redaction;
pub mod resource;
pub mod tail_sampling;

use std::sync::Arc;

use sextant_otlp_proto::proto::ResourceSpans;

use crate::error::PipelineError;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// A processor that changes, or drops, spans in place. Runs on decoded spans and must not
/// block: it runs on the receiving task.
pub trait SpanProcessor: Send + Sync + 'static {
    /// Changes `spans`. Dropped spans are simply removed; empty scopes and resources may be
    /// left behind (the stage removes them).
    fn process(&self, spans: &mut Vec<ResourceSpans>);

    /// Like [`process`](Self::process), knowing the address of the client that sent the
    /// spans, where the batch is one client's (k8sattributes' `from: connection`).
    fn process_from(&self, spans: &mut Vec<ResourceSpans>, client: Option<std::net::IpAddr>) {
        let _ = client;
        self.process(spans);
    }
}

/// The stage that runs a [`SpanProcessor`] and hands the result on.
pub struct Transform {
    processor: Arc<dyn SpanProcessor>,
    next: Arc<dyn Consumer>,
}

impl Transform {
    pub fn new(processor: Arc<dyn SpanProcessor>, next: Arc<dyn Consumer>) -> Self {
        Self { processor, next }
    }
}

impl Consumer for Transform {
    fn consume(
        &self,
        mut batch: TraceBatch,
    ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            let client = batch.client;
            let spans = decoded(&mut batch)?;
            self.processor.process_from(spans, client);
            prune(spans);
            batch.span_count = count_spans(&batch.decoded);
            if batch.span_count == 0 {
                return Ok(ExportOutcome::default());
            }
            self.next.consume(batch).await
        })
    }
}

/// The batch's spans, decoded (a batch that cannot be decoded is bad data).
pub fn decoded(batch: &mut TraceBatch) -> Result<&mut Vec<ResourceSpans>, PipelineError> {
    batch
        .decode()
        .map_err(|e| PipelineError::InvalidArgument(format!("cannot decode spans: {e}")))
}

/// Removes scopes without spans and resources without scopes.
pub fn prune(spans: &mut Vec<ResourceSpans>) {
    for rs in spans.iter_mut() {
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    spans.retain(|rs| !rs.scope_spans.is_empty());
}

/// Number of spans.
pub fn count_spans(spans: &[ResourceSpans]) -> usize {
    spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}
