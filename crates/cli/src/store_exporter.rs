//! The in-process store as the pipeline's exporter: a batch is acknowledged once it is durable.

use std::sync::Arc;

use sextant_collector::{BoxFuture, Consumer, ExportOutcome, PipelineError, TraceBatch};
use sextant_store::SpanWriter;

pub struct StoreExporter {
    pub writer: Arc<dyn SpanWriter>,
}

impl Consumer for StoreExporter {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            match self.writer.write(batch).await {
                Ok(receipt) => Ok(ExportOutcome {
                    rejected_spans: receipt.rejected_spans,
                    message: receipt.rejection,
                }),
                Err(e) if e.is_retryable() => {
                    Err(PipelineError::Unavailable(format!("store: {e}")))
                }
                Err(e) => Err(PipelineError::InvalidArgument(format!("store: {e}"))),
            }
        })
    }
}
