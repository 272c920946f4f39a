//! The batch processor: merges requests into larger batches before export.
//!
//! Every request waits for the export of the batch it joined, so a client's acknowledgement
//! still means "exported". Batches are sent when `send_batch_size` spans wait, when `timeout`
//! has passed since the batch began, or (with `flush_when_idle`) as soon as no more requests
//! are queued. While exports run (at most [`MAX_IN_FLIGHT`] at once), new requests gather into
//! the next batch, so batches grow with load by themselves. Batches larger than
//! `send_batch_max_size` are split.
//!
//! **Partial success.** A batch merges several requests, but each request is told only of its
//! own spans that were refused: the export's [`ExportOutcome::rejected_traces`] are attributed
//! to the requests holding spans of those traces (a request's share of a trace never exceeds
//! its spans of it; a trace refused in part is attributed in arrival order). Refusals the
//! outcome attributes to no trace (a backend's partial success names none) cannot be placed:
//! every request is told of them, up to its own span count, with the outcome's message, so that
//! no client is left thinking a refused span was stored. A request alone in its batch gets the
//! outcome as it came.

use std::ops::Range;
use std::sync::Arc;

use prost::bytes::Bytes;
use rustc_hash::FxHashMap;
use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans};
use sextant_otlp_proto::wire::{self, KeyValueRef, SpanRef, Visitor};
use sextant_otlp_proto::TraceId;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::{BoxFuture, Consumer, ExportOutcome, RejectedTrace, TraceBatch};

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
    let mut waiters: Vec<Waiter> = Vec::new();
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
                let (decoded, encoded) = (pending.decoded.len(), pending.encoded.len());
                let spans = batch.span_count;
                pending.append(batch);
                waiters.push(Waiter {
                    reply,
                    spans,
                    decoded: decoded..pending.decoded.len(),
                    encoded: encoded..pending.encoded.len(),
                });
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
        let waiting = std::mem::take(&mut waiters);
        // What each request put in, to tell it of its own refused spans (alone, it gets the
        // outcome as it is).
        let shares: Vec<Share> = if waiting.len() > 1 {
            waiting.iter().map(|w| Share::of(&pending, w)).collect()
        } else {
            Vec::new()
        };
        let batches = split(std::mem::take(&mut pending), config.send_batch_max_size);
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
            match failure {
                Some(e) => {
                    for w in waiting {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
                None if shares.is_empty() => {
                    for w in waiting {
                        let _ = w.reply.send(Ok(outcome.clone()));
                    }
                }
                None => {
                    let outcomes = attribute(&outcome, &shares);
                    for (w, o) in waiting.into_iter().zip(outcomes) {
                        let _ = w.reply.send(Ok(o));
                    }
                }
            }
        });
    }
    // Let running exports finish before the task (and with it `next`) goes away.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// A request waiting for the export of the batch it joined.
struct Waiter {
    reply: Reply,
    spans: usize,
    /// Where its parts are in the pending batch.
    decoded: Range<usize>,
    encoded: Range<usize>,
}

/// What one request put into a batch of several, to attribute refused spans to it: its
/// encoded parts (shared bytes, scanned only when spans were refused) and the trace ids of its
/// decoded spans (runs of one trace id; those structs move on with the batch).
pub(crate) struct Share {
    spans: usize,
    encoded: Vec<Bytes>,
    decoded: Vec<(TraceId, u64)>,
}

impl Share {
    fn of(pending: &TraceBatch, w: &Waiter) -> Self {
        let mut decoded: Vec<(TraceId, u64)> = Vec::new();
        for rs in pending.decoded.get(w.decoded.clone()).unwrap_or_default() {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    // A span without a valid trace id cannot be named by a rejection.
                    let Ok(id) = TraceId::from_slice(&span.trace_id) else {
                        continue;
                    };
                    match decoded.last_mut() {
                        Some((last, n)) if *last == id => *n += 1,
                        _ => decoded.push((id, 1)),
                    }
                }
            }
        }
        Self {
            spans: w.spans,
            encoded: pending
                .encoded
                .get(w.encoded.clone())
                .unwrap_or_default()
                .to_vec(),
            decoded,
        }
    }

    /// How many of its spans each of the `named` traces (trace id -> position) holds, by
    /// position.
    fn count(&self, named: &FxHashMap<TraceId, usize>) -> Vec<u64> {
        let mut counts = vec![0u64; named.len()];
        for (id, n) in &self.decoded {
            if let Some(&i) = named.get(id) {
                counts[i] += n;
            }
        }
        for part in &self.encoded {
            let mut visitor = CountNamed {
                named,
                counts: &mut counts,
            };
            // The bytes passed the receiver's validating scan; one that fails now leaves its
            // spans unattributed.
            if let Err(e) = wire::scan_validated(part, &mut visitor) {
                tracing::debug!(error = %e, "batch: cannot scan a request to attribute refused spans");
            }
        }
        counts
    }
}

/// Counts the spans of named traces in a wire scan.
struct CountNamed<'n> {
    named: &'n FxHashMap<TraceId, usize>,
    counts: &'n mut Vec<u64>,
}

impl<'a> Visitor<'a> for CountNamed<'_> {
    fn wants_attributes(&self) -> bool {
        false
    }
    fn resource(&mut self, _attributes: &[KeyValueRef<'a>]) {}
    fn span(&mut self, span: &SpanRef<'a>) {
        let Ok(id) = TraceId::from_slice(span.trace_id) else {
            return;
        };
        if let Some(&i) = self.named.get(&id) {
            self.counts[i] += 1;
        }
    }
}

/// Splits the outcome of a merged batch into the outcome of each request in it (see the
/// module's documentation): each request gets the refusals of its own spans of the named
/// traces, and the refusals named by no trace up to its span count; a message only when it
/// has refused spans.
pub(crate) fn attribute(outcome: &ExportOutcome, shares: &[Share]) -> Vec<ExportOutcome> {
    let mut out = vec![ExportOutcome::default(); shares.len()];
    if outcome.rejected_spans == 0 {
        return out;
    }
    let mut named: FxHashMap<TraceId, usize> = FxHashMap::default();
    let mut traces: Vec<&RejectedTrace> = Vec::new();
    let mut left: Vec<u64> = Vec::new();
    for t in &outcome.rejected_traces {
        match named.get(&t.trace_id) {
            Some(&i) => left[i] += t.spans,
            None => {
                named.insert(t.trace_id, traces.len());
                traces.push(t);
                left.push(t.spans);
            }
        }
    }
    let mut attributed = 0u64;
    if !named.is_empty() {
        for (share, o) in shares.iter().zip(out.iter_mut()) {
            for (i, held) in share.count(&named).into_iter().enumerate() {
                let given = held.min(left[i]);
                if given == 0 {
                    continue;
                }
                left[i] -= given;
                attributed += given;
                o.rejected_spans += given;
                o.rejected_traces.push(RejectedTrace {
                    trace_id: traces[i].trace_id,
                    spans: given,
                    reason: traces[i].reason.clone(),
                });
            }
        }
    }
    // Refusals named by no trace (or more than the requests hold of a named one).
    let unattributed = outcome.rejected_spans.saturating_sub(attributed);
    for (share, o) in shares.iter().zip(out.iter_mut()) {
        let own = o.rejected_spans;
        let room = (share.spans as u64).saturating_sub(own);
        let unplaced = unattributed.min(room);
        o.rejected_spans += unplaced;
        o.message = message_for(o, own, unplaced, &outcome.message);
    }
    out
}

/// The message of one request's outcome: its first refused trace's reason (how many other
/// traces it had refused), then what is said of refusals named by no trace.
fn message_for(o: &ExportOutcome, own: u64, unplaced: u64, general: &str) -> String {
    let mut text = String::new();
    if let Some(first) = o.rejected_traces.first() {
        text = if first.reason.is_empty() {
            general.to_string()
        } else {
            first.reason.clone()
        };
        if o.rejected_traces.len() > 1 {
            text.push_str(&format!(
                " (and {} more traces refused: {own} of this request's spans refused in all)",
                o.rejected_traces.len() - 1
            ));
        }
    }
    if unplaced > 0 && !general.is_empty() && text != general {
        if text.is_empty() {
            text = general.to_string();
        } else {
            text.push_str(&format!(
                "; up to {unplaced} more spans of the batch this request joined were refused: {general}"
            ));
        }
    }
    text
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
