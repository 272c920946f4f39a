//! What every exporter shares: `retry_on_failure` (exponential backoff that honours the
//! server's own delay), `timeout` per attempt, and `sending_queue`, in memory or persistent.
//!
//! Unlike the reference collector, nothing is acknowledged before it is safe:
//! * without `sending_queue.storage`, `consume` resolves only once the backend acknowledged the
//!   batch (retrying while the caller waits, up to `max_elapsed_time`); at most `queue_size`
//!   batches are in flight, beyond that the caller gets a retryable `Unavailable`;
//! * with `sending_queue.storage`, `consume` resolves once the batch is written and flushed to
//!   disk; `num_consumers` tasks deliver entries in sequence order and delete each once the
//!   backend acknowledged it. Retryable failures are retried FOREVER (`max_elapsed_time` does
//!   not apply to the persistent queue: an outage of hours loses nothing); permanent failures
//!   drop the batch (counted and logged). What the tree holds at build is delivered.
//!
//! On disk, an entry is keyed by its sequence number (u64 big-endian) and holds the span count
//! (u32 big-endian) followed by the batch as protobuf `TracesData` bytes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// The reference's default `timeout` of one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `retry_on_failure`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub enabled: bool,
    #[serde(with = "crate::config::duration")]
    pub initial_interval: Duration,
    pub randomization_factor: f64,
    pub multiplier: f64,
    #[serde(with = "crate::config::duration")]
    pub max_interval: Duration,
    /// 0: retry forever. Does not apply to the persistent queue, which always retries.
    #[serde(with = "crate::config::duration")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            randomization_factor: 0.5,
            multiplier: 1.5,
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

impl RetryConfig {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.randomization_factor) {
            return Err(format!(
                "retry_on_failure.randomization_factor: {} is not between 0 and 1",
                self.randomization_factor
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(format!(
                "retry_on_failure.multiplier: {} must be at least 1",
                self.multiplier
            ));
        }
        if self.enabled && self.initial_interval.is_zero() {
            return Err("retry_on_failure.initial_interval: must be more than 0".into());
        }
        if self.max_interval < self.initial_interval {
            return Err(format!(
                "retry_on_failure.max_interval: {:?} is less than initial_interval {:?}",
                self.max_interval, self.initial_interval
            ));
        }
        Ok(())
    }
}

/// `sending_queue`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub enabled: bool,
    pub num_consumers: usize,
    /// In batches (`sizer: requests`).
    pub queue_size: usize,
    /// The id of a `file_storage` extension: the queue is then kept on disk.
    pub storage: Option<String>,
    /// Deprecated spelling of `block_on_overflow`.
    pub blocking: bool,
    /// Wait for room instead of refusing when the queue is full.
    pub block_on_overflow: bool,
    /// Accepted: without storage we always wait for the result (nothing is acknowledged
    /// before delivery); with storage, for the write to disk.
    pub wait_for_result: bool,
    /// Only `requests` (batches) is supported.
    pub sizer: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            num_consumers: 10,
            queue_size: 1000,
            storage: None,
            blocking: false,
            block_on_overflow: false,
            wait_for_result: false,
            sizer: "requests".into(),
        }
    }
}

impl QueueConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.sizer != "requests" {
            return Err(format!(
                "sending_queue.sizer: {:?} is not supported: only \"requests\" (batches)",
                self.sizer
            ));
        }
        if self.num_consumers == 0 {
            return Err("sending_queue.num_consumers: must be at least 1".into());
        }
        if self.queue_size == 0 {
            return Err("sending_queue.queue_size: must be at least 1".into());
        }
        Ok(())
    }

    fn blocks(&self) -> bool {
        self.blocking || self.block_on_overflow
    }
}

/// Whether a failed attempt may succeed if repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Retryable,
    Permanent,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub kind: ErrorKind,
    pub message: String,
    /// The delay the server asked for (gRPC `RetryInfo`, HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn retryable(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
            retry_after,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

/// One attempt at delivering a batch. `Ok` carries what the backend refused for good
/// (an OTLP partial success), which is counted and not retried.
pub trait Sender: Send + Sync + 'static {
    fn send<'a>(&'a self, batch: &'a TraceBatch)
        -> BoxFuture<'a, Result<ExportOutcome, SendError>>;
}

/// What the service needs of a running exporter: stop it, and ask its health (for the
/// health_check extension: `Err` carries the last error).
pub trait Exporter: Send + Sync + 'static {
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    fn health(&self) -> Result<(), String>;
}

/// The exponential backoff of `retry_on_failure`.
struct Backoff {
    next: Duration,
    cfg: RetryConfig,
}

impl Backoff {
    fn new(cfg: &RetryConfig) -> Self {
        Self {
            next: cfg.initial_interval,
            cfg: cfg.clone(),
        }
    }

    /// The delay before the next attempt: the randomized interval, or the server's delay when
    /// that is longer.
    fn delay(&mut self, server: Option<Duration>) -> Duration {
        // A zero interval (retry disabled, persistent queue) must not spin.
        let base = if self.next.is_zero() {
            1.0
        } else {
            self.next.as_secs_f64()
        };
        let f = self.cfg.randomization_factor;
        let jittered = if f > 0.0 {
            rand::rng().random_range(base * (1.0 - f)..=base * (1.0 + f))
        } else {
            base
        };
        let grown = (base * self.cfg.multiplier).min(self.cfg.max_interval.as_secs_f64());
        self.next = Duration::from_secs_f64(grown);
        let delay = Duration::from_secs_f64(jittered.max(0.0));
        match server {
            Some(s) if s > delay => s,
            _ => delay,
        }
    }
}

/// Why a delivery ended without success.
enum Failure {
    Permanent(SendError),
    GaveUp(SendError),
    Stopped,
}

struct Counters {
    sent: Counter,
    send_failed: Counter,
    enqueue_failed: Counter,
    queue_size: Gauge,
}

struct Persistent {
    tree: sled::Tree,
    /// Serializes sequence assignment and insertion, so that consumers never see a key
    /// before every smaller key is in the tree.
    insert: Mutex<()>,
    next_seq: AtomicU64,
    /// The smallest key not yet claimed by a consumer.
    cursor: Mutex<u64>,
    /// Room left in the queue.
    slots: Semaphore,
    /// Entries beyond `queue_size` found at start: they give no room back when delivered.
    over: AtomicUsize,
    pending: AtomicUsize,
    work: Notify,
}

enum Mode {
    /// `sending_queue.enabled: false`: deliver in the caller, no limit.
    Direct,
    /// In memory: at most `queue_size` batches waiting, `num_consumers` sending.
    Memory {
        slots: Semaphore,
        sending: Semaphore,
        waiting: AtomicUsize,
    },
    Persistent(Persistent),
}

struct Inner<S> {
    name: String,
    sender: S,
    retry: RetryConfig,
    timeout: Duration,
    blocks: bool,
    counters: Counters,
    mode: Mode,
    last_error: Mutex<Option<String>>,
    stop: watch::Sender<bool>,
}

/// An exporter: a [`Sender`] behind retry, timeout and the sending queue.
pub struct QueuedExporter<S: Sender> {
    inner: Arc<Inner<S>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<S: Sender> QueuedExporter<S> {
    /// Builds the exporter `name` (e.g. "otlp/backend"). `tree` is the tree of the
    /// `file_storage` extension that `queue.storage` names (`exporter/<name>`, opened by the
    /// caller); the queue starts delivering what it holds. Must run inside a tokio runtime
    /// when the queue is persistent.
    pub fn build(
        name: &str,
        sender: S,
        timeout: Duration,
        retry: &RetryConfig,
        queue: &QueueConfig,
        tree: Option<sled::Tree>,
        metrics: &CollectorMetrics,
    ) -> Result<Self, String> {
        check(retry, queue)?;
        let labels = metrics.exporter(name);
        let counters = Counters {
            sent: metrics.exporter_sent_spans.get_or_create(&labels).clone(),
            send_failed: metrics
                .exporter_send_failed_spans
                .get_or_create(&labels)
                .clone(),
            enqueue_failed: metrics
                .exporter_enqueue_failed_spans
                .get_or_create(&labels)
                .clone(),
            queue_size: metrics.exporter_queue_size.get_or_create(&labels).clone(),
        };
        let capacity = metrics
            .exporter_queue_capacity
            .get_or_create(&labels)
            .clone();
        let mode = match (queue.enabled, &queue.storage) {
            (false, _) => Mode::Direct,
            (true, None) => Mode::Memory {
                slots: Semaphore::new(queue.queue_size),
                sending: Semaphore::new(queue.num_consumers),
                waiting: AtomicUsize::new(0),
            },
            (true, Some(id)) => {
                let tree = tree.ok_or_else(|| {
                    format!("sending_queue.storage: no storage extension {id:?} is configured")
                })?;
                let mut existing = 0usize;
                let mut first = None;
                let mut last = None;
                for entry in tree.iter().keys() {
                    let key = entry
                        .map_err(|e| format!("sending_queue.storage: cannot read {id:?}: {e}"))?;
                    let seq = seq_of(&key);
                    first.get_or_insert(seq);
                    last = Some(seq);
                    existing += 1;
                }
                if existing > 0 {
                    tracing::info!(
                        exporter = name,
                        batches = existing,
                        "persistent sending queue: delivering what the last run left"
                    );
                }
                Mode::Persistent(Persistent {
                    tree,
                    insert: Mutex::new(()),
                    next_seq: AtomicU64::new(last.map_or(0, |l| l + 1)),
                    cursor: Mutex::new(first.unwrap_or(0)),
                    slots: Semaphore::new(queue.queue_size.saturating_sub(existing)),
                    over: AtomicUsize::new(existing.saturating_sub(queue.queue_size)),
                    pending: AtomicUsize::new(existing),
                    work: Notify::new(),
                })
            }
        };
        capacity.set(if queue.enabled {
            queue.queue_size as i64
        } else {
            0
        });
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: name.to_string(),
            sender,
            retry: retry.clone(),
            timeout,
            blocks: queue.blocks(),
            counters,
            mode,
            last_error: Mutex::new(None),
            stop,
        });
        let mut tasks = Vec::new();
        if let Mode::Persistent(p) = &inner.mode {
            inner
                .counters
                .queue_size
                .set(p.pending.load(Ordering::Relaxed) as i64);
            let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                "sending_queue.storage: the persistent queue must be built inside a tokio runtime"
                    .to_string()
            })?;
            for _ in 0..queue.num_consumers {
                let inner = inner.clone();
                tasks.push(handle.spawn(async move { inner.run_consumer().await }));
            }
        }
        Ok(Self {
            inner,
            tasks: Mutex::new(tasks),
        })
    }

    /// Stops delivering: the consumers of a persistent queue end (their entries stay for the
    /// next start); calls waiting on an in-memory queue get `Unavailable`.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        if let Mode::Persistent(p) = &self.inner.mode {
            if let Err(e) = p.tree.flush_async().await {
                tracing::warn!(exporter = %self.inner.name, error = %e, "cannot flush the sending queue");
            }
        }
    }

    /// Healthy unless the last attempt failed (then `Err` with its error).
    pub fn health(&self) -> Result<(), String> {
        match &*self.inner.last_error.lock() {
            None => Ok(()),
            Some(e) => Err(format!("exporter {}: {e}", self.inner.name)),
        }
    }

    /// Batches waiting (in memory: in flight; persistent: on disk).
    pub fn queue_len(&self) -> usize {
        match &self.inner.mode {
            Mode::Direct => 0,
            Mode::Memory { waiting, .. } => waiting.load(Ordering::Relaxed),
            Mode::Persistent(p) => p.pending.load(Ordering::Relaxed),
        }
    }

    /// The exporter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl<S: Sender> Exporter for QueuedExporter<S> {
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(QueuedExporter::shutdown(self))
    }

    fn health(&self) -> Result<(), String> {
        QueuedExporter::health(self)
    }
}

/// Checks `retry_on_failure` and `sending_queue` (what serde cannot).
pub fn check(retry: &RetryConfig, queue: &QueueConfig) -> Result<(), String> {
    retry.validate()?;
    queue.validate()
}

impl<S: Sender> Drop for QueuedExporter<S> {
    fn drop(&mut self) {
        self.inner.stop.send_replace(true);
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

impl<S: Sender> Inner<S> {
    fn note_failure(&self, e: &SendError) {
        *self.last_error.lock() = Some(e.message.clone());
    }

    fn note_success(&self, batch_spans: usize, outcome: &ExportOutcome) {
        if self.last_error.lock().is_some() {
            *self.last_error.lock() = None;
        }
        let rejected = (outcome.rejected_spans as usize).min(batch_spans);
        self.counters.sent.inc_by((batch_spans - rejected) as u64);
        if rejected > 0 {
            self.counters.send_failed.inc_by(rejected as u64);
            tracing::warn!(
                exporter = %self.name,
                rejected,
                message = %outcome.message,
                "the backend refused some spans for good (partial success)"
            );
        }
    }

    async fn attempt(&self, batch: &TraceBatch) -> Result<ExportOutcome, SendError> {
        if self.timeout.is_zero() {
            return self.sender.send(batch).await;
        }
        match tokio::time::timeout(self.timeout, self.sender.send(batch)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::retryable(
                format!("no answer within the timeout of {:?}", self.timeout),
                None,
            )),
        }
    }

    /// Sends until success, a permanent failure, `deadline` (none: forever), or stop.
    async fn deliver(
        &self,
        batch: &TraceBatch,
        deadline: Option<Instant>,
        retry: bool,
    ) -> Result<ExportOutcome, Failure> {
        let mut stop = self.stop.subscribe();
        let mut backoff = Backoff::new(&self.retry);
        loop {
            if *stop.borrow() {
                return Err(Failure::Stopped);
            }
            let result = tokio::select! {
                r = self.attempt(batch) => r,
                _ = stop.wait_for(|s| *s) => return Err(Failure::Stopped),
            };
            let e = match result {
                Ok(outcome) => {
                    self.note_success(batch.span_count, &outcome);
                    return Ok(outcome);
                }
                Err(e) => e,
            };
            self.note_failure(&e);
            if !e.is_retryable() {
                return Err(Failure::Permanent(e));
            }
            if !retry {
                return Err(Failure::GaveUp(e));
            }
            let delay = backoff.delay(e.retry_after);
            if let Some(deadline) = deadline {
                if Instant::now() + delay > deadline {
                    return Err(Failure::GaveUp(e));
                }
            }
            tracing::debug!(exporter = %self.name, error = %e, ?delay, "export failed: retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return Err(Failure::Stopped),
            }
        }
    }

    /// Delivery in the caller's task (no storage).
    async fn deliver_now(&self, batch: &TraceBatch) -> Result<ExportOutcome, PipelineError> {
        let deadline = (self.retry.enabled && !self.retry.max_elapsed_time.is_zero())
            .then(|| Instant::now() + self.retry.max_elapsed_time);
        match self.deliver(batch, deadline, self.retry.enabled).await {
            Ok(outcome) => Ok(outcome),
            Err(Failure::Permanent(e)) => {
                self.counters.send_failed.inc_by(batch.span_count as u64);
                tracing::error!(exporter = %self.name, error = %e, spans = batch.span_count,
                    "the backend refused the batch for good: dropped");
                Err(PipelineError::InvalidArgument(format!(
                    "exporter {}: {}",
                    self.name, e.message
                )))
            }
            Err(Failure::GaveUp(e)) => {
                self.counters.send_failed.inc_by(batch.span_count as u64);
                tracing::warn!(exporter = %self.name, error = %e, spans = batch.span_count,
                    "export failed: giving up, the caller may retry");
                Err(PipelineError::Unavailable(format!(
                    "exporter {}: {}",
                    self.name, e.message
                )))
            }
            Err(Failure::Stopped) => Err(PipelineError::Unavailable(format!(
                "exporter {} is shutting down",
                self.name
            ))),
        }
    }

    fn refuse_full(&self, batch: &TraceBatch) -> PipelineError {
        self.counters.enqueue_failed.inc_by(batch.span_count as u64);
        PipelineError::Unavailable(format!(
            "the sending queue of exporter {} is full",
            self.name
        ))
    }

    async fn consume_memory(
        &self,
        batch: TraceBatch,
        slots: &Semaphore,
        sending: &Semaphore,
        waiting: &AtomicUsize,
    ) -> Result<ExportOutcome, PipelineError> {
        let slot = if self.blocks {
            slots.acquire().await.ok()
        } else {
            slots.try_acquire().ok()
        };
        let Some(_slot) = slot else {
            return Err(self.refuse_full(&batch));
        };
        let n = waiting.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.queue_size.set(n as i64);
        struct Leave<'a>(&'a AtomicUsize, &'a Gauge);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let n = self.0.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                self.1.set(n as i64);
            }
        }
        let _leave = Leave(waiting, &self.counters.queue_size);
        let Ok(_sending) = sending.acquire().await else {
            return Err(PipelineError::Unavailable("exporter closed".into()));
        };
        self.deliver_now(&batch).await
    }

    async fn consume_persistent(
        &self,
        batch: TraceBatch,
        p: &Persistent,
    ) -> Result<ExportOutcome, PipelineError> {
        if *self.stop.borrow() {
            return Err(PipelineError::Unavailable(format!(
                "exporter {} is shutting down",
                self.name
            )));
        }
        let slot = if self.blocks {
            p.slots.acquire().await.ok()
        } else {
            p.slots.try_acquire().ok()
        };
        let Some(slot) = slot else {
            return Err(self.refuse_full(&batch));
        };
        // The span count, then the batch as `TracesData` (as `TraceBatch::to_protobuf`).
        let mut value = Vec::with_capacity(4 + batch.wire_len());
        value.extend_from_slice(&(batch.span_count.min(u32::MAX as usize) as u32).to_be_bytes());
        for b in &batch.encoded {
            value.extend_from_slice(b);
        }
        for rs in &batch.decoded {
            prost::encoding::message::encode(1, rs, &mut value);
        }
        let inserted = {
            let _g = p.insert.lock();
            let seq = p.next_seq.fetch_add(1, Ordering::Relaxed);
            p.tree.insert(seq.to_be_bytes(), value)
        };
        if let Err(e) = inserted {
            tracing::error!(exporter = %self.name, error = %e, "cannot write to the sending queue");
            return Err(PipelineError::Unavailable(format!(
                "exporter {}: cannot write to the sending queue: {e}",
                self.name
            )));
        }
        slot.forget();
        let n = p.pending.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.queue_size.set(n as i64);
        p.work.notify_one();
        if let Err(e) = p.tree.flush_async().await {
            tracing::error!(exporter = %self.name, error = %e, "cannot flush the sending queue");
            return Err(PipelineError::Unavailable(format!(
                "exporter {}: cannot flush the sending queue: {e}",
                self.name
            )));
        }
        Ok(ExportOutcome::default())
    }

    /// Claims the next entry in sequence order.
    fn claim(p: &Persistent) -> Result<Option<(sled::IVec, sled::IVec)>, sled::Error> {
        let mut cursor = p.cursor.lock();
        match p.tree.range(cursor.to_be_bytes()..).next() {
            Some(Ok((k, v))) => {
                *cursor = seq_of(&k).saturating_add(1);
                Ok(Some((k, v)))
            }
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    async fn run_consumer(self: Arc<Self>) {
        let Mode::Persistent(p) = &self.mode else {
            return;
        };
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let notified = p.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (key, value) = match Self::claim(p) {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(exporter = %self.name, error = %e, "cannot read the sending queue");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            };
            // Another entry may be waiting: let another consumer take it.
            p.work.notify_one();
            let Some(batch) = batch_of(&value) else {
                tracing::error!(exporter = %self.name, seq = seq_of(&key),
                    "corrupt entry in the sending queue: dropped");
                self.finish(p, &key);
                continue;
            };
            match self.deliver(&batch, None, true).await {
                Ok(_) => self.finish(p, &key),
                Err(Failure::Permanent(e)) | Err(Failure::GaveUp(e)) => {
                    self.counters.send_failed.inc_by(batch.span_count as u64);
                    tracing::error!(exporter = %self.name, error = %e, spans = batch.span_count,
                        "the backend refused the batch for good: dropped");
                    self.finish(p, &key);
                }
                Err(Failure::Stopped) => return,
            }
        }
    }

    /// Removes a handled entry and gives its room back.
    fn finish(&self, p: &Persistent, key: &[u8]) {
        if let Err(e) = p.tree.remove(key) {
            tracing::error!(exporter = %self.name, error = %e, "cannot remove a delivered entry");
        }
        let n = p.pending.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.counters.queue_size.set(n as i64);
        let over = p
            .over
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| o.checked_sub(1));
        if over.is_err() {
            p.slots.add_permits(1);
        }
    }
}

fn batch_of(value: &[u8]) -> Option<TraceBatch> {
    if value.len() < 4 {
        return None;
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&value[..4]);
    let spans = u32::from_be_bytes(n) as usize;
    Some(TraceBatch::from_encoded(
        Bytes::copy_from_slice(&value[4..]),
        spans,
    ))
}

impl<S: Sender> Consumer for QueuedExporter<S> {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(ExportOutcome::default());
            }
            let inner = &*self.inner;
            match &inner.mode {
                Mode::Direct => inner.deliver_now(&batch).await,
                Mode::Memory {
                    slots,
                    sending,
                    waiting,
                } => inner.consume_memory(batch, slots, sending, waiting).await,
                Mode::Persistent(p) => inner.consume_persistent(batch, p).await,
            }
        })
    }
}

/// gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// The `compression` key shared by the OTLP exporters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    /// `none` (or an empty string, as the reference also accepts).
    #[serde(alias = "")]
    None,
}

/// `tls` of the OTLP exporters (configtls `ClientConfig`); see [`crate::tls`].
pub use crate::tls::TlsClientConfig as TlsConfig;

/// The OTLP/gRPC endpoint as a URL, and whether TLS is used, by the reference's rule:
/// `http://` is plain, `https://` is TLS, and a bare `host:port` is TLS unless `tls.insecure`.
/// The URL keeps the scheme it is used with (`https://host:port` when TLS).
pub fn grpc_endpoint(endpoint: &str, tls: &TlsConfig) -> Result<(String, bool), String> {
    if endpoint.is_empty() {
        return Err("endpoint: must be set".into());
    }
    if endpoint.starts_with("https://") {
        return Ok((endpoint.to_string(), true));
    }
    if endpoint.starts_with("http://") {
        return Ok((endpoint.to_string(), false));
    }
    if endpoint.contains("://") {
        return Err(format!(
            "endpoint: {endpoint:?} has a scheme other than http:// or https://"
        ));
    }
    if tls.insecure {
        Ok((format!("http://{endpoint}"), false))
    } else {
        Ok((format!("https://{endpoint}"), true))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::Storage;
    use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans, Span};
    use std::sync::atomic::AtomicBool;

    /// A batch of `n` spans of trace `trace`, span ids from `first`.
    pub(crate) fn spans(trace: u8, first: u64, n: usize) -> TraceBatch {
        let spans = (0..n as u64)
            .map(|i| Span {
                trace_id: vec![trace; 16],
                span_id: (first + i + 1).to_be_bytes().to_vec(),
                name: format!("op-{}", first + i),
                start_time_unix_nano: 1_000,
                end_time_unix_nano: 2_000,
                ..Default::default()
            })
            .collect();
        TraceBatch::from_decoded(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    /// A scripted sender: fails while `fail` holds, counts attempts and spans.
    struct Script {
        attempts: AtomicUsize,
        spans: AtomicUsize,
        fail: AtomicBool,
        error: SendError,
        fail_first: usize,
    }

    impl Sender for Arc<Script> {
        fn send<'a>(
            &'a self,
            batch: &'a TraceBatch,
        ) -> BoxFuture<'a, Result<ExportOutcome, SendError>> {
            Box::pin(async move {
                let n = self.attempts.fetch_add(1, Ordering::SeqCst);
                if self.fail.load(Ordering::SeqCst) || n < self.fail_first {
                    return Err(self.error.clone());
                }
                self.spans.fetch_add(batch.span_count, Ordering::SeqCst);
                Ok(ExportOutcome::default())
            })
        }
    }

    fn script(error: SendError, fail_first: usize) -> Arc<Script> {
        Arc::new(Script {
            attempts: AtomicUsize::new(0),
            spans: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            error,
            fail_first,
        })
    }

    fn fast_retry() -> RetryConfig {
        RetryConfig {
            initial_interval: Duration::from_millis(5),
            max_interval: Duration::from_millis(20),
            max_elapsed_time: Duration::from_secs(5),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_keys_follow_the_reference() {
        let r = RetryConfig::default();
        assert_eq!(r.initial_interval, Duration::from_secs(5));
        assert_eq!(r.max_elapsed_time, Duration::from_secs(300));
        let q = QueueConfig::default();
        assert_eq!((q.num_consumers, q.queue_size), (10, 1000));
        let mut bad = QueueConfig {
            sizer: "items".into(),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("sending_queue.sizer"));
        bad.sizer = "requests".into();
        bad.num_consumers = 0;
        assert!(bad.validate().is_err());
        let bad = RetryConfig {
            multiplier: 0.5,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("retry_on_failure.multiplier"));
    }

    #[test]
    fn backoff_grows_to_max_and_honours_the_server_delay() {
        let cfg = RetryConfig {
            randomization_factor: 0.0,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(2),
            ..Default::default()
        };
        let mut b = Backoff::new(&cfg);
        assert_eq!(b.delay(None), Duration::from_secs(1));
        assert_eq!(b.delay(None), Duration::from_millis(1500));
        assert_eq!(b.delay(None), Duration::from_secs(2));
        assert_eq!(b.delay(None), Duration::from_secs(2));
        assert_eq!(
            b.delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[tokio::test]
    async fn memory_queue_retries_until_delivered() {
        let s = script(SendError::retryable("503", None), 3);
        let m = CollectorMetrics::unregistered();
        let e = QueuedExporter::build(
            "t",
            s.clone(),
            DEFAULT_TIMEOUT,
            &fast_retry(),
            &QueueConfig::default(),
            None,
            &m,
        )
        .unwrap();
        e.consume(spans(1, 0, 4)).await.unwrap();
        assert_eq!(s.attempts.load(Ordering::SeqCst), 4);
        assert_eq!(s.spans.load(Ordering::SeqCst), 4);
        assert_eq!(
            m.exporter_sent_spans.get_or_create(&m.exporter("t")).get(),
            4
        );
        assert_eq!(e.health(), Ok(()));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let s = script(SendError::permanent("400 bad"), 100);
        let m = CollectorMetrics::unregistered();
        let e = QueuedExporter::build(
            "t",
            s.clone(),
            DEFAULT_TIMEOUT,
            &fast_retry(),
            &QueueConfig::default(),
            None,
            &m,
        )
        .unwrap();
        let err = e.consume(spans(1, 0, 3)).await.unwrap_err();
        assert!(matches!(err, PipelineError::InvalidArgument(_)), "{err:?}");
        assert_eq!(s.attempts.load(Ordering::SeqCst), 1);
        assert_eq!(
            m.exporter_send_failed_spans
                .get_or_create(&m.exporter("t"))
                .get(),
            3
        );
        assert!(e.health().unwrap_err().contains("400"));
    }

    #[tokio::test]
    async fn gives_up_after_max_elapsed_time_with_unavailable() {
        let s = script(SendError::retryable("down", None), usize::MAX);
        let m = CollectorMetrics::unregistered();
        let retry = RetryConfig {
            max_elapsed_time: Duration::from_millis(60),
            ..fast_retry()
        };
        let e = QueuedExporter::build(
            "t",
            s.clone(),
            DEFAULT_TIMEOUT,
            &retry,
            &QueueConfig::default(),
            None,
            &m,
        )
        .unwrap();
        let err = e.consume(spans(1, 0, 1)).await.unwrap_err();
        assert!(matches!(err, PipelineError::Unavailable(_)));
        assert!(s.attempts.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn an_attempt_past_the_timeout_is_retried_then_given_up() {
        struct Hang;
        impl Sender for Hang {
            fn send<'a>(
                &'a self,
                _: &'a TraceBatch,
            ) -> BoxFuture<'a, Result<ExportOutcome, SendError>> {
                Box::pin(futures::future::pending())
            }
        }
        let m = CollectorMetrics::unregistered();
        let retry = RetryConfig {
            max_elapsed_time: Duration::from_millis(150),
            ..fast_retry()
        };
        let e = QueuedExporter::build(
            "slow",
            Hang,
            Duration::from_millis(20),
            &retry,
            &QueueConfig::default(),
            None,
            &m,
        )
        .unwrap();
        let err = e.consume(spans(1, 0, 1)).await.unwrap_err();
        assert!(
            matches!(&err, PipelineError::Unavailable(msg) if msg.contains("timeout")),
            "{err:?}"
        );
        assert!(e.health().unwrap_err().contains("timeout"));
    }

    #[tokio::test]
    async fn full_memory_queue_refuses_with_unavailable() {
        let s = script(SendError::retryable("down", None), 0);
        s.fail.store(true, Ordering::SeqCst);
        let m = CollectorMetrics::unregistered();
        let q = QueueConfig {
            queue_size: 2,
            ..Default::default()
        };
        let e = Arc::new(
            QueuedExporter::build("t", s.clone(), DEFAULT_TIMEOUT, &fast_retry(), &q, None, &m)
                .unwrap(),
        );
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let e = e.clone();
            waiting.push(tokio::spawn(async move { e.consume(spans(1, 0, 1)).await }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(e.queue_len(), 2);
        let err = e.consume(spans(1, 0, 5)).await.unwrap_err();
        assert!(matches!(err, PipelineError::Unavailable(_)), "{err:?}");
        assert_eq!(
            m.exporter_enqueue_failed_spans
                .get_or_create(&m.exporter("t"))
                .get(),
            5
        );
        s.fail.store(false, Ordering::SeqCst);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(s.spans.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn persistent_queue_survives_a_restart_and_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let q = QueueConfig {
            storage: Some("file_storage".into()),
            num_consumers: 3,
            ..Default::default()
        };
        let m = CollectorMetrics::unregistered();
        let s = script(SendError::retryable("down", None), usize::MAX);
        s.fail.store(true, Ordering::SeqCst);
        {
            let storage = Storage::open(dir.path()).unwrap();
            let e = QueuedExporter::build(
                "p",
                s.clone(),
                DEFAULT_TIMEOUT,
                &fast_retry(),
                &q,
                Some(storage.tree("exporter/p").unwrap()),
                &m,
            )
            .unwrap();
            for i in 0..10 {
                e.consume(spans(1, i * 10, 10)).await.unwrap();
            }
            assert_eq!(e.queue_len(), 10);
            let labels = m.exporter("p");
            assert_eq!(m.exporter_queue_size.get_or_create(&labels).get(), 10);
            assert_eq!(m.exporter_queue_capacity.get_or_create(&labels).get(), 1000);
            e.shutdown().await;
        }
        assert_eq!(s.spans.load(Ordering::SeqCst), 0);
        let s2 = script(SendError::retryable("down", None), 5);
        let storage = Storage::open(dir.path()).unwrap();
        let e = QueuedExporter::build(
            "p",
            s2.clone(),
            DEFAULT_TIMEOUT,
            &fast_retry(),
            &q,
            Some(storage.tree("exporter/p").unwrap()),
            &m,
        )
        .unwrap();
        assert_eq!(e.queue_len(), 10);
        for _ in 0..200 {
            if e.queue_len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(e.queue_len(), 0);
        assert_eq!(s2.spans.load(Ordering::SeqCst), 100);
        assert_eq!(storage.tree("exporter/p").unwrap().len(), 0);
        e.shutdown().await;
    }

    #[tokio::test]
    async fn full_persistent_queue_refuses_and_permanent_errors_drop() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let q = QueueConfig {
            storage: Some("file_storage".into()),
            queue_size: 3,
            num_consumers: 1,
            ..Default::default()
        };
        let m = CollectorMetrics::unregistered();
        let s = script(SendError::permanent("400"), usize::MAX);
        s.fail.store(true, Ordering::SeqCst);
        // A sender that never answers, so that the queue fills.
        struct Hang;
        impl Sender for Hang {
            fn send<'a>(
                &'a self,
                _: &'a TraceBatch,
            ) -> BoxFuture<'a, Result<ExportOutcome, SendError>> {
                Box::pin(futures::future::pending())
            }
        }
        let e = QueuedExporter::build(
            "full",
            Hang,
            Duration::ZERO,
            &fast_retry(),
            &q,
            Some(storage.tree("exporter/p").unwrap()),
            &m,
        )
        .unwrap();
        for i in 0..3 {
            e.consume(spans(1, i, 1)).await.unwrap();
        }
        let err = e.consume(spans(1, 9, 2)).await.unwrap_err();
        assert!(matches!(err, PipelineError::Unavailable(_)));
        e.shutdown().await;
        drop(e);
        let e = QueuedExporter::build(
            "full",
            s.clone(),
            DEFAULT_TIMEOUT,
            &fast_retry(),
            &q,
            Some(storage.tree("exporter/p").unwrap()),
            &m,
        )
        .unwrap();
        for _ in 0..200 {
            if e.queue_len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(e.queue_len(), 0);
        assert_eq!(s.attempts.load(Ordering::SeqCst), 3);
        assert_eq!(
            m.exporter_send_failed_spans
                .get_or_create(&m.exporter("full"))
                .get(),
            3
        );
        e.shutdown().await;
    }

    #[test]
    fn grpc_endpoints_use_tls_unless_insecure_or_http() {
        let tls = TlsConfig::default();
        assert_eq!(
            grpc_endpoint("https://x:4317", &tls).unwrap(),
            ("https://x:4317".to_string(), true)
        );
        assert_eq!(
            grpc_endpoint("x:4317", &tls).unwrap(),
            ("https://x:4317".to_string(), true)
        );
        assert_eq!(
            grpc_endpoint("http://x:4317", &tls).unwrap(),
            ("http://x:4317".to_string(), false)
        );
        let insecure = TlsConfig {
            insecure: true,
            ..Default::default()
        };
        assert_eq!(
            grpc_endpoint("x:4317", &insecure).unwrap(),
            ("http://x:4317".to_string(), false)
        );
        assert!(grpc_endpoint("", &tls).unwrap_err().starts_with("endpoint"));
        assert!(grpc_endpoint("unix://x", &tls)
            .unwrap_err()
            .starts_with("endpoint"));
    }
}
