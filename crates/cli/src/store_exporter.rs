//! The in-process store as the pipeline's exporter: a batch is acknowledged once it is durable.

use std::sync::Arc;

use sextant_collector::{
    BoxFuture, Consumer, ExportOutcome, PipelineError, RejectedTrace, TraceBatch,
};
use sextant_store::SpanWriter;

pub struct StoreExporter {
    pub writer: Arc<dyn SpanWriter>,
}

impl Consumer for StoreExporter {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            match self.writer.write(batch).await {
                // The receipt names every trace refused over a limit; spans refused for an
                // invalid trace id stay unattributed.
                Ok(receipt) => Ok(ExportOutcome {
                    rejected_spans: receipt.rejected_spans,
                    message: receipt.rejection,
                    rejected_traces: receipt
                        .rejected_traces
                        .into_iter()
                        .map(|t| RejectedTrace {
                            trace_id: t.trace_id,
                            spans: t.spans,
                            reason: t.reason,
                        })
                        .collect(),
                }),
                Err(e) if e.is_retryable() => {
                    Err(PipelineError::Unavailable(format!("store: {e}")))
                }
                Err(e) => Err(PipelineError::InvalidArgument(format!("store: {e}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message as _;
    use sextant_collector::config::BatchConfig;
    use sextant_collector::processor::batch::BatchProcessor;
    use sextant_collector::receiver::response_for;
    use sextant_collector::CollectorMetrics;
    use sextant_otlp_proto::proto::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span};
    use sextant_otlp_proto::{wire, TraceId};
    use sextant_store::{Limits, SledStore, StoreConfig, TimeWindow, TraceReader};

    use super::*;

    fn tid(n: u8) -> TraceId {
        TraceId::from_slice(&[n; 16]).unwrap()
    }

    /// A request of `spans` spans of each `(trace, spans)`, as the receivers pass it on:
    /// validated bytes with their scan.
    fn request(traces: &[(u8, u32)]) -> TraceBatch {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            - 1_000_000_000;
        let spans = traces
            .iter()
            .flat_map(|&(t, n)| {
                (0..n).map(move |i| {
                    let mut span_id = [t; 8];
                    span_id[4..].copy_from_slice(&i.to_be_bytes());
                    Span {
                        trace_id: vec![t; 16],
                        span_id: span_id.to_vec(),
                        name: format!("op-{i}"),
                        start_time_unix_nano: start,
                        end_time_unix_nano: start + 1_000_000,
                        ..Default::default()
                    }
                })
            })
            .collect();
        let bytes = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let mut rec = wire::Recorder::new(&bytes);
        wire::scan_request(&bytes, &mut rec).unwrap();
        let recorded = rec.finish();
        TraceBatch::from_scanned(bytes.into(), recorded)
    }

    #[tokio::test]
    async fn batched_requests_each_get_their_own_partial_success_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = StoreConfig::new(dir.path());
        c.blocks.maintenance_interval = Duration::from_secs(3600);
        c.limits = Limits {
            max_spans_per_trace: 3,
            ..Limits::default()
        };
        let store = Arc::new(SledStore::open(c).unwrap());
        let batch = Arc::new(BatchProcessor::new(
            BatchConfig {
                send_batch_size: 8,
                timeout: Duration::from_secs(30),
                send_batch_max_size: 0,
                flush_when_idle: false,
            },
            Arc::new(StoreExporter {
                writer: store.clone(),
            }),
            CollectorMetrics::unregistered(),
        ));
        // Request A holds trace 1, over the limit (5 spans of at most 3), and trace 2; request
        // B holds trace 3 only. Together they make one batch of 8 spans, one write.
        let requests = [(request(&[(1, 5), (2, 1)]), 6), (request(&[(3, 2)]), 2)];
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|(r, spans)| {
                let batch = batch.clone();
                tokio::spawn(async move { (batch.consume(r).await, spans) })
            })
            .collect();
        let mut responses = Vec::new();
        for t in tasks {
            let (outcome, spans) = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("the batch is sent by size")
                .unwrap();
            let outcome = outcome.unwrap();
            responses.push((response_for(&outcome, spans), outcome));
        }

        // B's spans were all stored: it is told of no refusal, though its batch had some.
        let (b, outcome_b) = &responses[1];
        assert_eq!(outcome_b, &ExportOutcome::default());
        assert_eq!(b.partial_success, None);

        let (a, outcome_a) = &responses[0];
        assert_eq!(outcome_a.rejected_spans, 5, "{outcome_a:?}");
        let named: Vec<(TraceId, u64)> = outcome_a
            .rejected_traces
            .iter()
            .map(|t| (t.trace_id, t.spans))
            .collect();
        assert_eq!(named, vec![(tid(1), 5)]);
        assert!(
            outcome_a.rejected_traces[0]
                .reason
                .contains(&tid(1).to_hex()),
            "{outcome_a:?}"
        );
        let pa = a
            .partial_success
            .as_ref()
            .expect("A is told of its refusal");
        assert_eq!(pa.rejected_spans, 5);
        assert!(
            pa.error_message.starts_with(&format!(
                "TRACE_TOO_LARGE: trace {} would reach 5 spans, over max_spans_per_trace 3",
                tid(1).to_hex()
            )),
            "{}",
            pa.error_message
        );

        assert!(store.trace(tid(1), TimeWindow::all()).unwrap().is_none());
        assert!(store.trace(tid(2), TimeWindow::all()).unwrap().is_some());
        assert!(store.trace(tid(3), TimeWindow::all()).unwrap().is_some());
        drop(batch);
        store.close().unwrap();
    }
}
