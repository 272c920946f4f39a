//! The batch processor: merges requests into larger batches before export.
//!
//! Every request waits for the export of the batch it joined, so a client's acknowledgement
//! still means "exported". Batches are sent when `send_batch_size` spans wait, when `timeout`
//! has passed since the batch began, or (with `flush_when_idle`) as soon as no more requests
//! are queued. While exports run (at most [`MAX_IN_FLIGHT`] at once), new requests gather into
//! the next batch, so batches grow with load by themselves. Batches larger than
//! `send_batch_max_size` are split.

use std::sync::Arc;

use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// At most this many batches are being exported at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Queued requests beyond this are refused (retryably) rather than held.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<ExportOutcome, PipelineError>>;

/// The batch processor stage.
pub struct BatchProcessor {
    tx: mpsc::Sender<(TraceBatch, Reply)>,
}

impl BatchProcessor {
    /// Starts the batching task on the current runtime. It ends, after sending what it holds,
    /// when the processor is dropped.
    pub fn new(config: BatchConfig, next: Arc<dyn Consumer>, metrics: CollectorMetrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(config, rx, next, metrics));
        Self { tx }
    }
}

impl Consumer for BatchProcessor {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            let (reply, wait) = oneshot::channel();
            self.tx.try_send((batch, reply)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    PipelineError::Unavailable("batch processor queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    PipelineError::Unavailable("pipeline is shutting down".into())
                }
            })?;
            wait.await
                .map_err(|_| PipelineError::Unavailable("pipeline stopped before export".into()))?
        })
    }
}

async fn run(
    config: BatchConfig,
    mut rx: mpsc::Receiver<(TraceBatch, Reply)>,
    next: Arc<dyn Consumer>,
    metrics: CollectorMetrics,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let size = config.send_batch_size.max(1);
    let mut pending = TraceBatch::default();
    let mut waiters: Vec<Reply> = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    while open || !waiters.is_empty() {
        // Gather.
        let item = if waiters.is_empty() {
            rx.recv().await
        } else if config.flush_when_idle {
            match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    None
                }
            }
        } else {
            let until = deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                item = rx.recv() => {
                    if item.is_none() {
                        open = false;
                    }
                    item
                }
                _ = tokio::time::sleep_until(until) => None,
            }
        };
        match item {
            Some((batch, reply)) => {
                if waiters.is_empty() {
                    deadline = Some(Instant::now() + config.timeout);
                }
                pending.append(batch);
                waiters.push(reply);
                if pending.span_count < size {
                    continue;
                }
            }
            None if waiters.is_empty() => {
                open = false;
                continue;
            }
            None => {
                if !config.flush_when_idle && open && deadline.is_some_and(|d| Instant::now() < d) {
                    continue;
                }
            }
        }
        // Send: wait for an export slot; meanwhile requests keep queueing for the next batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let batches = split(std::mem::take(&mut pending), config.send_batch_max_size);
        let replies = std::mem::take(&mut waiters);
        deadline = None;
        let next = next.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut outcome = ExportOutcome::default();
            let mut failure = None;
            for b in batches {
                metrics.batch_send_size.observe(b.span_count as f64);
                match next.consume(b).await {
                    Ok(o) => outcome.merge(&o),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            drop(permit);
            for r in replies {
                let _ = r.send(match &failure {
                    Some(e) => Err(e.clone()),
                    None => Ok(outcome.clone()),
                });
            }
        });
    }
    // Let running exports finish before the task (and with it `next`) goes away.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// Splits a batch into batches of at most `max` spans (0: no limit). Splitting needs the
/// spans decoded; a batch that cannot be decoded is passed on whole.
pub fn split(mut batch: TraceBatch, max: usize) -> Vec<TraceBatch> {
    if max == 0 || batch.span_count <= max {
        return vec![batch];
    }
    let resource_spans = match batch.decode() {
        Ok(decoded) => std::mem::take(decoded),
        Err(e) => {
            tracing::warn!(error = %e, "cannot split an undecodable batch; sending it whole");
            return vec![batch];
        }
    };
    let mut out = Vec::new();
    let mut current: Vec<ResourceSpans> = Vec::new();
    let mut count = 0usize;
    for rs in resource_spans {
        for ss in rs.scope_spans {
            let mut spans_iter = ss.spans.into_iter().peekable();
            while spans_iter.peek().is_some() {
                let room = max - count;
                let chunk: Vec<_> = spans_iter.by_ref().take(room).collect();
                count += chunk.len();
                let same_resource = current.last().is_some_and(|last| {
                    last.resource == rs.resource && last.schema_url == rs.schema_url
                });
                if !same_resource {
                    current.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    });
                }
                if let Some(last) = current.last_mut() {
                    last.scope_spans.push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: chunk,
                        schema_url: ss.schema_url.clone(),
                    });
                }
                if count == max {
                    out.push(TraceBatch::from_decoded(std::mem::take(&mut current)));
                    count = 0;
                }
            }
        }
    }
    if count > 0 {
        out.push(TraceBatch::from_decoded(current));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot_free::Recorder;
    use sextant_otlp_proto::proto::Span;
    use std::time::Duration;

    mod parking_lot_free {
        use super::*;
        use std::sync::Mutex;

        /// The next stage: records what it was given.
        #[derive(Default)]
        pub struct Recorder {
            pub batches: Mutex<Vec<usize>>,
            pub fail: bool,
        }

        impl Consumer for Recorder {
            fn consume(
                &self,
                batch: TraceBatch,
            ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if self.fail {
                        return Err(PipelineError::Unavailable("disk full".into()));
                    }
                    if let Ok(mut b) = self.batches.lock() {
                        b.push(batch.span_count);
                    }
                    Ok(ExportOutcome::default())
                })
            }
        }
    }

    fn batch(n: usize) -> TraceBatch {
        TraceBatch::from_decoded(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    #[test]
    fn split_respects_max_and_keeps_every_span() {
        let mut b = batch(7);
        b.append(batch(5));
        let parts = split(b, 5);
        let sizes: Vec<usize> = parts.iter().map(|b| b.span_count).collect();
        assert_eq!(sizes, vec![5, 5, 2]);
        for p in &parts {
            assert_eq!(sextant_otlp_proto::span_count(&p.decoded), p.span_count);
        }
    }

    #[tokio::test]
    async fn size_trigger_and_every_request_waits_for_its_export() {
        let rec = Arc::new(Recorder::default());
        let config = BatchConfig {
            send_batch_size: 10,
            timeout: Duration::from_secs(30),
            send_batch_max_size: 0,
            flush_when_idle: false,
        };
        let p = Arc::new(BatchProcessor::new(
            config,
            rec.clone(),
            CollectorMetrics::unregistered(),
        ));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move { p.consume(batch(2)).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(*rec.batches.lock().unwrap(), vec![10]);
    }

    #[tokio::test]
    async fn timeout_trigger() {
        let rec = Arc::new(Recorder::default());
        let config = BatchConfig {
            send_batch_size: 1000,
            timeout: Duration::from_millis(50),
            send_batch_max_size: 0,
            flush_when_idle: false,
        };
        let p = BatchProcessor::new(config, rec.clone(), CollectorMetrics::unregistered());
        let started = Instant::now();
        p.consume(batch(3)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(*rec.batches.lock().unwrap(), vec![3]);
    }

    #[tokio::test]
    async fn failures_reach_every_waiter_and_max_size_splits() {
        let rec = Arc::new(Recorder {
            fail: true,
            ..Default::default()
        });
        let p = BatchProcessor::new(
            BatchConfig::default(),
            rec,
            CollectorMetrics::unregistered(),
        );
        let e = p.consume(batch(3)).await.unwrap_err();
        assert!(matches!(e, PipelineError::Unavailable(_)));

        let rec = Arc::new(Recorder::default());
        let config = BatchConfig {
            send_batch_max_size: 4,
            ..Default::default()
        };
        let p = BatchProcessor::new(config, rec.clone(), CollectorMetrics::unregistered());
        p.consume(batch(9)).await.unwrap();
        assert_eq!(*rec.batches.lock().unwrap(), vec![4, 4, 1]);
    }
}
