//! The tail_sampling processor: holds each trace for `decision_wait` after its first span,
//! then keeps or drops it whole by the reference collector's policies.
//!
//! * Spans are grouped by trace id as they arrive and kept compactly: each trace is a byte
//!   buffer of encoded `ResourceSpans` fragments (its spans with their resource and scope,
//!   copied from the request without decoding, see [`walk`]). Attribute, trace-state and
//!   status conditions are evaluated span by span on arrival into a small per-trace
//!   [`walk::Summary`], so a decision never parses the spans again.
//! * A request is acknowledged once its spans are buffered (with `storage`: once they are
//!   durable). Spans of traces already decided follow the decision: sampled, they are
//!   forwarded at once (the request waits for `next`); not sampled, they are dropped and
//!   counted (`otelcol_processor_dropped_spans`). Decisions are remembered in the decision
//!   cache (`decision_cache`; sizes of 0 mean "as many as `num_traces`"), oldest forgotten
//!   first.
//! * Traces are decided in arrival order from a queue (no scan of all traces). Sampled traces
//!   are forwarded in batches; when `next` refuses retryably they are kept and retried with
//!   backoff, so nothing acknowledged is lost. A refusal for good is logged and counted.
//! * Final decision as the reference: any drop vote: not sampled; else any sample vote:
//!   sampled; an inverted (`invert_match`) "not sample" vote: not sampled; an inverted
//!   "sample" vote without any "not sample" vote: sampled.
//!
//! Sextant additions:
//! * A span attribute `sampling.priority` > 0 keeps its trace (unless a drop policy votes
//!   drop), with or without policies.
//! * Memory is bounded by `num_traces` *and* `max_buffered_bytes_mib` (default 32: with it a
//!   collector flooded at ~260,000 spans/s on 2 cores peaks at ~170 MiB RSS, `cargo xtask bench
//!   collector`; 64 gave ~225 MiB; raise it, with the memory limit, to buffer more). When
//!   either is reached, the **oldest undecided traces are decided early** on what they have,
//!   instead of being dropped blindly as the reference does, so error and slow traces are
//!   still kept under overload. Sampled traces waiting for `next` may hold up to half that
//!   budget again; beyond it new requests are refused retryably (backpressure).
//! * `storage: <file_storage id>`: undecided traces are written to the extension's tree (and
//!   flushed) before a request is acknowledged; on start they are reloaded and decided
//!   `decision_wait` after their stored first arrival (wall clock). Traces leave the tree when
//!   dropped or when `next` has acknowledged them.
//! * [`TailSampling::shutdown`] without storage decides everything still held and forwards it
//!   (unless `drop_pending_traces_on_shutdown`), retrying for up to [`SHUTDOWN_RETRY`]; with
//!   storage, undecided and unforwarded traces simply stay in the tree.

pub mod config;
pub mod policy;
pub mod walk;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::Config;
use policy::{Leaves, Policies, TraceView};
use walk::{Splitter, Summary, TraceKey};

use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// Bytes counted per buffered trace on top of its spans (table entry, queue slot, summary).
const TRACE_OVERHEAD: usize = 160;
/// Spans forwarded to `next` in one batch at most.
const FORWARD_BATCH_SPANS: usize = 8192;
/// How long shutdown (without storage) keeps retrying a refusing `next`.
pub const SHUTDOWN_RETRY: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// Checks `config` as [`build`] does (bounds, regexes, policy structure), without starting
/// anything (no runtime needed). Storage is not looked up.
pub fn check(config: &Config) -> Result<(), String> {
    compile(config).map(|_| ())
}

fn compile(config: &Config) -> Result<(Leaves, Policies), String> {
    if config.decision_wait.is_zero() {
        return Err("decision_wait: must be greater than 0".into());
    }
    if config.num_traces == 0 {
        return Err("num_traces: must be greater than 0".into());
    }
    if config.max_buffered_bytes_mib == 0 {
        return Err("max_buffered_bytes_mib: must be greater than 0".into());
    }
    let mut leaves = Leaves::default();
    let policies = policy::compile(&config.policies, config.sample_on_first_match, &mut leaves)?;
    Ok((leaves, policies))
}

/// Builds the processor (inside a tokio runtime: it spawns its tasks). `storage` is the tree
/// of the `file_storage` extension named by `config.storage`, if any.
pub fn build(
    name: &str,
    config: &Config,
    next: Arc<dyn Consumer>,
    storage: Option<sled::Tree>,
    metrics: &CollectorMetrics,
) -> Result<TailSampling, String> {
    let (leaves, policies) = compile(config)?;
    if config.storage.is_some() && storage.is_none() {
        return Err(format!(
            "storage: the extension {:?} was not given to the processor",
            config.storage.as_deref().unwrap_or_default()
        ));
    }
    let num_traces = usize::try_from(config.num_traces).unwrap_or(usize::MAX);
    let cache_size = |n: u64| {
        if n == 0 {
            num_traces
        } else {
            usize::try_from(n).unwrap_or(usize::MAX)
        }
    };
    let max_bytes =
        usize::try_from(config.max_buffered_bytes_mib.saturating_mul(MIB)).unwrap_or(usize::MAX);
    let expected = usize::try_from(config.expected_new_traces_per_sec)
        .unwrap_or(0)
        .saturating_mul(config.decision_wait.as_secs().max(1) as usize)
        .min(num_traces);
    let state = State {
        traces: FxHashMap::with_capacity_and_hasher(expected, Default::default()),
        queue: VecDeque::with_capacity(expected),
        next_gen: 0,
        bytes: 0,
        policies,
        cache: DecisionCache::new(
            cache_size(config.decision_cache.sampled_cache_size),
            cache_size(config.decision_cache.non_sampled_cache_size),
        ),
        outbox: VecDeque::new(),
        outbox_bytes: 0,
        seq: 0,
    };
    let shared = Arc::new(Shared {
        name: name.to_string(),
        state: parking_lot::Mutex::new(state),
        leaves,
        next,
        tree: storage,
        metrics: metrics.clone(),
        decision_wait: config.decision_wait,
        num_traces,
        max_bytes,
        outbox_max: (max_bytes / 2).max(1),
        drop_pending_on_shutdown: config.drop_pending_traces_on_shutdown,
        decide_wake: Notify::new(),
        forward_wake: Notify::new(),
        closed: AtomicBool::new(false),
        stop_decider: AtomicBool::new(false),
        stop_forwarder: AtomicBool::new(false),
    });
    if let Some(tree) = &shared.tree {
        reload(&shared, tree).map_err(|e| format!("storage: cannot reload traces: {e}"))?;
    }
    let decider = tokio::spawn(decide_loop(shared.clone()));
    let forwarder = tokio::spawn(forward_loop(shared.clone()));
    Ok(TailSampling {
        shared,
        tasks: parking_lot::Mutex::new(Some((decider, forwarder))),
    })
}

/// The tail sampling stage.
pub struct TailSampling {
    shared: Arc<Shared>,
    tasks: parking_lot::Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
}

struct Shared {
    name: String,
    state: parking_lot::Mutex<State>,
    leaves: Leaves,
    next: Arc<dyn Consumer>,
    tree: Option<sled::Tree>,
    metrics: CollectorMetrics,
    decision_wait: Duration,
    num_traces: usize,
    max_bytes: usize,
    outbox_max: usize,
    drop_pending_on_shutdown: bool,
    decide_wake: Notify,
    forward_wake: Notify,
    /// No more requests are taken.
    closed: AtomicBool,
    stop_decider: AtomicBool,
    stop_forwarder: AtomicBool,
}

struct Entry {
    gen: u64,
    bytes: Vec<u8>,
    summary: Summary,
    /// Storage keys of the trace's fragments.
    keys: Vec<u64>,
}

/// A sampled trace waiting for `next`.
struct Decided {
    trace: TraceKey,
    bytes: Vec<u8>,
    spans: usize,
    keys: Vec<u64>,
}

struct State {
    traces: FxHashMap<TraceKey, Entry>,
    /// Undecided traces by first arrival: (trace, generation, deadline).
    queue: VecDeque<(TraceKey, u64, Instant)>,
    next_gen: u64,
    /// Bytes held by undecided traces (with [`TRACE_OVERHEAD`]).
    bytes: usize,
    policies: Policies,
    cache: DecisionCache,
    outbox: VecDeque<Decided>,
    outbox_bytes: usize,
    /// Next storage key.
    seq: u64,
}

/// What deciding some traces produced.
#[derive(Default)]
struct Outcome {
    sampled: usize,
    dropped_spans: usize,
    /// Storage keys to remove (dropped traces).
    remove_keys: Vec<(TraceKey, u64)>,
}

impl State {
    /// Decides `key` now and files the result; returns whether it was sampled.
    fn decide(&mut self, key: &TraceKey, now: Instant, out: &mut Outcome) -> Option<bool> {
        let entry = self.traces.remove(key)?;
        self.bytes = self
            .bytes
            .saturating_sub(entry.bytes.capacity() + TRACE_OVERHEAD);
        let keep = self.policies.decide(&TraceView {
            id: key,
            summary: &entry.summary,
            bytes: entry.bytes.len(),
            now,
        });
        self.cache.insert(*key, keep);
        let spans = entry.summary.span_count as usize;
        if keep {
            out.sampled += 1;
            self.outbox_bytes += entry.bytes.len();
            self.outbox.push_back(Decided {
                trace: *key,
                bytes: entry.bytes,
                spans,
                keys: entry.keys,
            });
        } else {
            out.dropped_spans += spans;
            out.remove_keys
                .extend(entry.keys.iter().map(|seq| (*key, *seq)));
        }
        Some(keep)
    }

    /// Decides the oldest undecided trace; `false` when there is none.
    fn decide_oldest(&mut self, now: Instant, out: &mut Outcome) -> bool {
        while let Some((key, gen, _)) = self.queue.pop_front() {
            if self.traces.get(&key).is_some_and(|e| e.gen == gen) {
                self.decide(&key, now, out);
                return true;
            }
        }
        false
    }

    /// Decides the oldest traces while the bounds are exceeded.
    fn enforce(&mut self, num_traces: usize, max_bytes: usize, now: Instant, out: &mut Outcome) {
        while self.traces.len() > num_traces || self.bytes > max_bytes {
            if !self.decide_oldest(now, out) {
                break;
            }
        }
    }

    /// Adds a fragment to an undecided trace, creating it if needed; returns whether it was
    /// created.
    fn add(
        &mut self,
        key: TraceKey,
        fragment: &[u8],
        summary: &Summary,
        deadline: Instant,
        storage_key: Option<u64>,
    ) -> bool {
        let mut created = false;
        let next_gen = &mut self.next_gen;
        let queue = &mut self.queue;
        let entry = self.traces.entry(key).or_insert_with(|| {
            created = true;
            let gen = *next_gen;
            *next_gen += 1;
            queue.push_back((key, gen, deadline));
            Entry {
                gen,
                bytes: Vec::new(),
                summary: Summary::default(),
                keys: Vec::new(),
            }
        });
        let before = entry.bytes.capacity();
        if entry.bytes.capacity() - entry.bytes.len() < fragment.len() {
            // Grow by at least a quarter: little slack, and no quadratic copying for large
            // traces that arrive in many small pieces.
            entry
                .bytes
                .reserve_exact(fragment.len().max(entry.bytes.len() / 4));
        }
        entry.bytes.extend_from_slice(fragment);
        entry.summary.merge(summary);
        if let Some(k) = storage_key {
            entry.keys.push(k);
        }
        self.bytes += entry.bytes.capacity() - before + if created { TRACE_OVERHEAD } else { 0 };
        created
    }
}

/// Remembered decisions, oldest forgotten first.
struct DecisionCache {
    map: FxHashMap<TraceKey, bool>,
    sampled: VecDeque<TraceKey>,
    not_sampled: VecDeque<TraceKey>,
    sampled_cap: usize,
    not_sampled_cap: usize,
}

impl DecisionCache {
    fn new(sampled_cap: usize, not_sampled_cap: usize) -> Self {
        Self {
            map: FxHashMap::default(),
            sampled: VecDeque::new(),
            not_sampled: VecDeque::new(),
            sampled_cap,
            not_sampled_cap,
        }
    }

    fn get(&self, key: &TraceKey) -> Option<bool> {
        self.map.get(key).copied()
    }

    fn insert(&mut self, key: TraceKey, sampled: bool) {
        if self.map.insert(key, sampled).is_some() {
            // Already queued under its earlier decision; the newer one stands.
            return;
        }
        let (queue, cap) = if sampled {
            (&mut self.sampled, self.sampled_cap)
        } else {
            (&mut self.not_sampled, self.not_sampled_cap)
        };
        queue.push_back(key);
        while queue.len() > cap {
            if let Some(old) = queue.pop_front() {
                if self.map.get(&old) == Some(&sampled) {
                    self.map.remove(&old);
                }
            }
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A storage value: first-arrival wall clock (ms, little endian) then the fragment.
fn storage_value(arrival_ms: u64, fragment: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + fragment.len());
    v.extend_from_slice(&arrival_ms.to_le_bytes());
    v.extend_from_slice(fragment);
    v
}

/// A storage key: trace id then sequence number (big endian, so keys of a trace sort in
/// arrival order).
fn storage_key(trace: &TraceKey, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(trace);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Reloads the undecided traces of a previous run.
fn reload(shared: &Shared, tree: &sled::Tree) -> Result<(), String> {
    // trace -> (first arrival, fragments with their seq)
    let mut found: FxHashMap<TraceKey, (u64, Vec<(u64, sled::IVec)>)> = FxHashMap::default();
    let mut max_seq = 0u64;
    let mut bad = Vec::new();
    for item in tree.iter() {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if k.len() != 24 || v.len() < 8 {
            bad.push(k);
            continue;
        }
        let mut trace = [0u8; 16];
        trace.copy_from_slice(&k[..16]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&k[16..]);
        let seq = u64::from_be_bytes(seq);
        let mut at = [0u8; 8];
        at.copy_from_slice(&v[..8]);
        let at = u64::from_le_bytes(at);
        max_seq = max_seq.max(seq);
        let e = found.entry(trace).or_insert((at, Vec::new()));
        e.0 = e.0.min(at);
        e.1.push((seq, v));
    }
    for k in bad {
        tracing::warn!(processor = %shared.name, "removing a malformed stored trace entry");
        let _ = tree.remove(k);
    }
    let mut traces: Vec<_> = found.into_iter().collect();
    traces.sort_by_key(|(_, (at, _))| *at);
    let now = Instant::now();
    let now_ms = wall_ms();
    let mut splitter = Splitter::default();
    let mut out = Outcome::default();
    let mut st = shared.state.lock();
    st.seq = max_seq + 1;
    let count = traces.len();
    for (trace, (at, fragments)) in traces {
        let waited = Duration::from_millis(now_ms.saturating_sub(at));
        let deadline = now + shared.decision_wait.saturating_sub(waited);
        for (seq, value) in fragments {
            splitter.clear();
            if let Err(e) = splitter.split(&value[8..], &shared.leaves) {
                tracing::warn!(processor = %shared.name, error = %e, "dropping an unreadable stored fragment");
                let _ = tree.remove(storage_key(&trace, seq));
                continue;
            }
            let mut summary = Summary::default();
            for f in &splitter.fragments {
                summary.merge(&f.summary);
            }
            st.add(trace, &value[8..], &summary, deadline, Some(seq));
        }
    }
    st.enforce(shared.num_traces, shared.max_bytes, now, &mut out);
    drop(st);
    remove_stored(shared, &std::mem::take(&mut out.remove_keys));
    finish_decisions(shared, out);
    tracing::info!(processor = %shared.name, traces = count, "reloaded undecided traces from storage");
    Ok(())
}

/// Files the side effects of decisions (storage removals are the caller's): metrics, waking
/// the forwarder.
fn finish_decisions(shared: &Shared, out: Outcome) {
    if out.dropped_spans > 0 {
        shared.metrics.dropped(&shared.name, out.dropped_spans);
    }
    if out.sampled > 0 {
        shared.forward_wake.notify_one();
    }
}

/// Removes stored fragments (of dropped or forwarded traces). Not flushed: a removal lost in
/// a crash only means the trace is decided (or forwarded) again after the restart.
fn remove_stored(shared: &Shared, keys: &[(TraceKey, u64)]) {
    let Some(tree) = &shared.tree else {
        return;
    };
    if keys.is_empty() {
        return;
    }
    let mut batch = sled::Batch::default();
    for (trace, seq) in keys {
        batch.remove(&storage_key(trace, *seq)[..]);
    }
    if let Err(e) = tree.apply_batch(batch) {
        tracing::warn!(processor = %shared.name, error = %e, "cannot remove decided traces from storage");
    }
}

impl TailSampling {
    /// Stops taking data, stops the decision task and the forwarder. Without storage,
    /// everything still held is decided now and sampled traces are forwarded first; with
    /// storage, undecided traces stay in the tree for the next start.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        shared.stop_decider.store(true, Ordering::SeqCst);
        shared.decide_wake.notify_one();
        let tasks = self.tasks.lock().take();
        let Some((decider, forwarder)) = tasks else {
            return;
        };
        let _ = decider.await;
        if shared.tree.is_none() {
            let now = Instant::now();
            let mut out = Outcome::default();
            let mut st = shared.state.lock();
            if shared.drop_pending_on_shutdown {
                let spans: usize = st
                    .traces
                    .values()
                    .map(|e| e.summary.span_count as usize)
                    .sum();
                st.traces.clear();
                st.queue.clear();
                st.bytes = 0;
                out.dropped_spans = spans;
            } else {
                while st.decide_oldest(now, &mut out) {}
            }
            drop(st);
            tracing::info!(processor = %shared.name, sampled = out.sampled, dropped_spans = out.dropped_spans, "decided pending traces on shutdown");
            finish_decisions(shared, out);
        }
        shared.stop_forwarder.store(true, Ordering::SeqCst);
        shared.forward_wake.notify_one();
        let _ = forwarder.await;
    }
}

impl Drop for TailSampling {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.stop_decider.store(true, Ordering::SeqCst);
        self.shared.stop_forwarder.store(true, Ordering::SeqCst);
        self.shared.decide_wake.notify_one();
        self.shared.forward_wake.notify_one();
    }
}

impl Consumer for TailSampling {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(self.shared.consume(batch))
    }
}

impl Shared {
    async fn consume(&self, batch: TraceBatch) -> Result<ExportOutcome, PipelineError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PipelineError::Unavailable(format!(
                "{} is shutting down",
                self.name
            )));
        }
        let mut splitter = Splitter::default();
        let input_len = batch.wire_len();
        splitter.out.reserve(input_len + input_len / 8);
        let bad = |e: walk::WalkError| {
            PipelineError::InvalidArgument(format!("{}: cannot read spans: {e}", self.name))
        };
        for part in &batch.encoded {
            splitter.split(part, &self.leaves).map_err(bad)?;
        }
        if !batch.decoded.is_empty() {
            let mut encoded = Vec::new();
            for rs in &batch.decoded {
                prost::encoding::message::encode(1, rs, &mut encoded);
            }
            splitter.split(&encoded, &self.leaves).map_err(bad)?;
        }
        drop(batch);
        if splitter.fragments.is_empty() {
            return Ok(ExportOutcome::default());
        }

        let now = Instant::now();
        let deadline = now + self.decision_wait;
        let arrival = wall_ms();
        let mut late: Vec<u8> = Vec::new();
        let mut late_spans = 0usize;
        let mut late_dropped = 0usize;
        let mut out = Outcome::default();
        let mut writes = sled::Batch::default();
        let mut wrote = false;
        let mut woke = false;
        {
            let mut st = self.state.lock();
            if st.outbox_bytes > self.outbox_max {
                return Err(PipelineError::Unavailable(format!(
                    "{}: {} MiB of sampled traces wait for the next stage",
                    self.name,
                    st.outbox_bytes / MIB as usize
                )));
            }
            for f in &splitter.fragments {
                let bytes = &splitter.out[f.start..f.end];
                if !st.traces.contains_key(&f.trace) {
                    match st.cache.get(&f.trace) {
                        Some(true) => {
                            late.extend_from_slice(bytes);
                            late_spans += f.summary.span_count as usize;
                            continue;
                        }
                        Some(false) => {
                            late_dropped += f.summary.span_count as usize;
                            continue;
                        }
                        None => {}
                    }
                }
                let seq = if self.tree.is_some() {
                    let seq = st.seq;
                    st.seq += 1;
                    writes.insert(
                        &storage_key(&f.trace, seq)[..],
                        storage_value(arrival, bytes),
                    );
                    wrote = true;
                    Some(seq)
                } else {
                    None
                };
                let was_empty = st.queue.is_empty();
                if st.add(f.trace, bytes, &f.summary, deadline, seq) && was_empty {
                    woke = true;
                }
            }
            st.enforce(self.num_traces, self.max_bytes, now, &mut out);
            if let Some(tree) = &self.tree {
                for (trace, seq) in std::mem::take(&mut out.remove_keys) {
                    writes.remove(&storage_key(&trace, seq)[..]);
                    wrote = true;
                }
                if wrote {
                    tree.apply_batch(writes).map_err(|e| {
                        PipelineError::Unavailable(format!("{}: storage: {e}", self.name))
                    })?;
                }
            }
        }
        if woke {
            self.decide_wake.notify_one();
        }
        if late_dropped > 0 {
            self.metrics.dropped(&self.name, late_dropped);
        }
        finish_decisions(self, out);
        if wrote {
            if let Some(tree) = &self.tree {
                tree.flush_async().await.map_err(|e| {
                    PipelineError::Unavailable(format!("{}: storage: {e}", self.name))
                })?;
            }
        }
        if late_spans > 0 {
            return self
                .next
                .consume(TraceBatch::from_encoded(Bytes::from(late), late_spans))
                .await;
        }
        Ok(ExportOutcome::default())
    }
}

async fn decide_loop(shared: Arc<Shared>) {
    loop {
        if shared.stop_decider.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let mut out = Outcome::default();
        let next_deadline = {
            let mut st = shared.state.lock();
            loop {
                match st.queue.front() {
                    Some(&(key, gen, deadline)) if deadline <= now => {
                        st.queue.pop_front();
                        if st.traces.get(&key).is_some_and(|e| e.gen == gen) {
                            st.decide(&key, now, &mut out);
                        }
                    }
                    Some(&(_, _, deadline)) => break Some(deadline),
                    None => break None,
                }
            }
        };
        remove_stored(&shared, &std::mem::take(&mut out.remove_keys));
        finish_decisions(&shared, out);
        match next_deadline {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d) => {}
                    _ = shared.decide_wake.notified() => {}
                }
            }
            None => shared.decide_wake.notified().await,
        }
    }
}

fn retryable(e: &PipelineError) -> bool {
    matches!(
        e,
        PipelineError::Unavailable(_) | PipelineError::MemoryLimited { .. }
    )
}

/// Takes up to [`FORWARD_BATCH_SPANS`] spans of sampled traces from the outbox.
fn take_batch(shared: &Shared) -> Vec<Decided> {
    let mut st = shared.state.lock();
    let mut taken = Vec::new();
    let mut spans = 0;
    while let Some(d) = st.outbox.front() {
        if !taken.is_empty() && spans + d.spans > FORWARD_BATCH_SPANS {
            break;
        }
        spans += d.spans;
        if let Some(d) = st.outbox.pop_front() {
            taken.push(d);
        }
    }
    taken
}

/// Sampled batches being handed to `next` at once: a round trip through the rest of the
/// pipeline takes a while, and one at a time could not keep up with a busy collector.
const FORWARD_CONCURRENCY: usize = 4;

#[derive(PartialEq, Eq)]
enum Forwarded {
    Done,
    /// Stopping with storage: what is left stays stored for the next start.
    Stop,
}

async fn forward_loop(shared: Arc<Shared>) {
    use futures::stream::{FuturesUnordered, StreamExt as _};
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < FORWARD_CONCURRENCY {
            let taken = take_batch(&shared);
            if taken.is_empty() {
                break;
            }
            in_flight.push(forward_one(shared.clone(), taken));
        }
        if in_flight.is_empty() {
            if shared.stop_forwarder.load(Ordering::SeqCst) {
                return;
            }
            shared.forward_wake.notified().await;
            continue;
        }
        tokio::select! {
            done = in_flight.next() => {
                if done == Some(Forwarded::Stop) {
                    return;
                }
            }
            _ = shared.forward_wake.notified(), if in_flight.len() < FORWARD_CONCURRENCY => {}
        }
    }
}

/// Hands one batch of decided traces to `next`, retrying while it refuses retryably.
async fn forward_one(shared: Arc<Shared>, taken: Vec<Decided>) -> Forwarded {
    let spans: usize = taken.iter().map(|d| d.spans).sum();
    let held: usize = taken.iter().map(|d| d.bytes.len()).sum();
    let body = Bytes::from(walk::regroup(taken.iter().map(|d| d.bytes.as_slice())));
    let mut backoff = Duration::from_millis(100);
    let mut give_up_at: Option<Instant> = None;
    let delivered = loop {
        let batch = TraceBatch::from_encoded(body.clone(), spans);
        match shared.next.consume(batch).await {
            Ok(_) => break true,
            Err(e) if retryable(&e) => {
                let stopping = shared.stop_forwarder.load(Ordering::SeqCst);
                if stopping && shared.tree.is_some() {
                    // The traces stay in storage for the next start.
                    tracing::info!(processor = %shared.name, spans, "next stage refuses on shutdown; traces stay in storage");
                    return Forwarded::Stop;
                }
                if stopping {
                    let limit = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_RETRY);
                    if Instant::now() >= limit {
                        tracing::error!(processor = %shared.name, spans, error = %e, "next stage still refuses at shutdown; sampled spans are lost");
                        shared.metrics.dropped(&shared.name, spans);
                        break false;
                    }
                }
                tracing::warn!(processor = %shared.name, spans, error = %e, retry_in = ?backoff, "next stage refused sampled traces; retrying");
                let wait = e.retry_after().map_or(backoff, |r| r.min(backoff));
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(processor = %shared.name, spans, error = %e, "next stage refused sampled traces for good");
                shared.metrics.dropped(&shared.name, spans);
                break false;
            }
        }
    };
    let _ = delivered;
    let keys: Vec<(TraceKey, u64)> = taken
        .iter()
        .flat_map(|d| d.keys.iter().map(move |s| (d.trace, *s)))
        .collect();
    remove_stored(&shared, &keys);
    let mut st = shared.state.lock();
    st.outbox_bytes = st.outbox_bytes.saturating_sub(held);
    Forwarded::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Yaml};
    use prost::Message;
    use sextant_otlp_proto::proto::{
        any_value, span, AnyValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans,
        ScopeSpans, Span, Status, TracesData,
    };
    use std::sync::atomic::AtomicUsize;

    pub(super) fn parse(yaml: &str) -> Result<Config, String> {
        figment::Figment::from(Yaml::string(yaml))
            .extract::<Config>()
            .map_err(|e| e.to_string())
    }

    pub(super) fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    pub(super) fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    /// A span of trace `t` (id byte), `ms` long, with a status code and attributes.
    pub(super) fn sp(t: u8, id: u8, ms: u64, code: i32, attrs: Vec<KeyValue>) -> Span {
        let start = 1_700_000_000_000_000_000u64 + u64::from(id) * 1000;
        Span {
            trace_id: vec![t; 16],
            span_id: vec![id; 8],
            name: format!("op{id}"),
            start_time_unix_nano: start,
            end_time_unix_nano: start + ms * 1_000_000,
            attributes: attrs,
            status: Some(Status {
                code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(super) fn rs(service: &str, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s(service))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// As a receiver passes them on: encoded.
    fn encoded(resource_spans: Vec<ResourceSpans>) -> TraceBatch {
        let n = sextant_otlp_proto::span_count(&resource_spans);
        let bytes = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        TraceBatch::from_encoded(bytes.into(), n)
    }

    /// The next stage: records what it is given; refuses retryably `refuse` times first.
    #[derive(Default)]
    struct Recorder {
        batches: parking_lot::Mutex<Vec<TracesData>>,
        refuse: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Consumer for Recorder {
        fn consume(
            &self,
            mut batch: TraceBatch,
        ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self
                    .refuse
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(PipelineError::Unavailable("disk full".into()));
                }
                let expected = batch.span_count;
                let spans = batch.decode().map_err(|e| {
                    PipelineError::InvalidArgument(format!("forwarded bad protobuf: {e}"))
                })?;
                assert_eq!(sextant_otlp_proto::span_count(spans), expected);
                self.batches.lock().push(TracesData {
                    resource_spans: std::mem::take(spans),
                });
                Ok(ExportOutcome::default())
            })
        }
    }

    impl Recorder {
        /// (trace id byte, span id byte, service) of every span received.
        fn spans(&self) -> Vec<(u8, u8, String)> {
            let mut out = Vec::new();
            for td in self.batches.lock().iter() {
                for rs in &td.resource_spans {
                    let svc = sextant_otlp_proto::attr::service_name(rs.resource.as_ref());
                    for ss in &rs.scope_spans {
                        for s in &ss.spans {
                            out.push((s.trace_id[0], s.span_id[0], svc.to_string()));
                        }
                    }
                }
            }
            out.sort();
            out
        }

        fn traces(&self) -> Vec<u8> {
            let mut t: Vec<u8> = self.spans().iter().map(|s| s.0).collect();
            t.dedup();
            t
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while !cond() {
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn start(yaml: &str, next: Arc<Recorder>, tree: Option<sled::Tree>) -> TailSampling {
        let config = parse(yaml).expect("config parses");
        build(
            "tail_sampling/test",
            &config,
            next,
            tree,
            &CollectorMetrics::unregistered(),
        )
        .expect("builds")
    }

    const ERRORS: &str = "
decision_wait: 300ms
policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
";

    #[test]
    fn config_defaults_are_the_reference_ones() {
        let c = parse("{}").unwrap();
        assert_eq!(c.decision_wait, Duration::from_secs(30));
        assert_eq!(c.num_traces, 50_000);
        assert_eq!(c.expected_new_traces_per_sec, 0);
        assert_eq!(c.decision_cache, config::DecisionCacheConfig::default());
        assert_eq!(c.max_buffered_bytes_mib, 32);
        assert_eq!(c, Config::default());
    }

    #[test]
    fn config_reads_the_reference_example_and_builds() {
        let yaml = r#"
decision_wait: 10s
num_traces: 100
expected_new_traces_per_sec: 10
decision_cache: {sampled_cache_size: 100_000, non_sampled_cache_size: 100000}
policies:
  [
    {name: p1, type: always_sample},
    {name: p2, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000}},
    {name: p3, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
    {name: p4, type: probabilistic, probabilistic: {sampling_percentage: 10}},
    {name: p5, type: status_code, status_code: {status_codes: [ERROR, UNSET]}},
    {name: p6, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}},
    {name: p7, type: string_attribute, string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true, cache_max_size: 10}},
    {name: p8, type: rate_limiting, rate_limiting: {spans_per_second: 35}},
    {name: p10, type: span_count, span_count: {min_spans: 2, max_spans: 20}},
    {name: p11, type: trace_state, trace_state: {key: key3, values: [value1, value2]}},
    {name: p12, type: boolean_attribute, boolean_attribute: {key: key4, value: true}},
    {name: and-policy-1, type: and, and: {and_sub_policy: [
        {name: a1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
        {name: a2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}]}},
    {name: drop-policy-1, type: drop, drop: {drop_sub_policy: [
        {name: d1, type: string_attribute, string_attribute: {key: url.path, values: [\/health, \/metrics], enabled_regex_matching: true}}]}},
    {name: composite-policy-1, type: composite, composite: {
        max_total_spans_per_second: 1000,
        policy_order: [c1, c2, c3],
        composite_sub_policy: [
          {name: c1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50}},
          {name: c2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}},
          {name: c3, type: always_sample}],
        rate_allocation: [{policy: c1, percent: 50}, {policy: c2, percent: 25}]}},
  ]
"#;
        let c = parse(yaml).unwrap();
        assert_eq!(c.decision_cache.sampled_cache_size, 100_000);
        assert_eq!(c.policies.len(), 14);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ts = start(yaml, Arc::new(Recorder::default()), None);
            ts.shutdown().await;
        });
    }

    fn build_err(yaml: &str) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let config = match parse(yaml) {
                Ok(c) => c,
                Err(e) => return e,
            };
            match build(
                "t",
                &config,
                Arc::new(Recorder::default()),
                None,
                &CollectorMetrics::unregistered(),
            ) {
                Ok(_) => "built".to_string(),
                Err(e) => e,
            }
        })
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = build_err(
            "policies: [{name: o, type: ottl_condition, ottl_condition: {span: ['x == 1']}}]",
        );
        assert!(e.starts_with("policies[0].type: ottl_condition"), "{e}");
        let e = build_err("policies: [{name: a, type: always_sample}, {name: r, type: string_attribute, string_attribute: {key: k, values: [ok, '('], enabled_regex_matching: true}}]");
        assert!(
            e.starts_with("policies[1].string_attribute.values[1]: \"(\" is not a valid regex"),
            "{e}"
        );
        let e = build_err(
            "policies: [{name: s, type: status_code, status_code: {status_codes: [FAILED]}}]",
        );
        assert!(
            e.starts_with("policies[0].status_code.status_codes[0]"),
            "{e}"
        );
        let e = build_err(
            "policies: [{name: a, type: and, and: {and_sub_policy: [{name: b, type: and}]}}]",
        );
        assert!(
            e.starts_with("policies[0].and.and_sub_policy[0].type"),
            "{e}"
        );
        let e =
            build_err("policies: [{name: a, type: always_sample}, {name: a, type: always_sample}]");
        assert!(e.starts_with("policies[1].name: duplicate"), "{e}");
        let e = build_err("policies: [{name: c, type: composite, composite: {max_total_spans_per_second: 10, policy_order: [x], composite_sub_policy: [{name: y, type: always_sample}]}}]");
        assert!(
            e.starts_with("policies[0].composite.policy_order[0]"),
            "{e}"
        );
        let e = build_err("block_on_overflow: true");
        assert!(e.contains("block_on_overflow"), "{e}");
        let e = build_err("storage: file_storage");
        assert!(e.starts_with("storage:"), "{e}");
        assert_eq!(build_err("decision_wait: 1s"), "built");
        // check: the same errors, without a runtime.
        let e = check(&parse("decision_wait: 0s").unwrap()).unwrap_err();
        assert!(e.starts_with("decision_wait:"), "{e}");
        let bad = "policies: [{name: n, type: numeric_attribute, numeric_attribute: {key: k}}]";
        let e = check(&parse(bad).unwrap()).unwrap_err();
        assert!(e.starts_with("policies[0].numeric_attribute:"), "{e}");
        assert_eq!(check(&parse("storage: fs").unwrap()), Ok(()));
    }

    #[tokio::test]
    async fn traces_are_decided_after_decision_wait_with_their_resource() {
        let next = Arc::new(Recorder::default());
        let metrics = CollectorMetrics::unregistered();
        let config = parse(ERRORS).unwrap();
        let ts = build("tail_sampling/e", &config, next.clone(), None, &metrics).unwrap();
        // Trace 1 has an error in its second service; trace 2 is fine.
        ts.consume(encoded(vec![
            rs(
                "front",
                vec![sp(1, 1, 5, 0, vec![]), sp(2, 2, 5, 1, vec![])],
            ),
            rs("back", vec![sp(1, 3, 5, 2, vec![]), sp(2, 4, 5, 0, vec![])]),
        ]))
        .await
        .unwrap();
        assert!(next.spans().is_empty(), "nothing before decision_wait");
        wait_for("trace 1", || !next.spans().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            next.spans(),
            vec![(1, 1, "front".into()), (1, 3, "back".into())]
        );
        let dropped = metrics
            .processor_dropped_spans
            .get_or_create(&crate::metrics::ProcessorLabels {
                processor: "tail_sampling/e".into(),
            })
            .get();
        assert_eq!(dropped, 2);
        ts.shutdown().await;
    }

    #[tokio::test]
    async fn decoded_batches_are_sampled_too() {
        let next = Arc::new(Recorder::default());
        let ts = start(ERRORS, next.clone(), None);
        ts.consume(TraceBatch::from_decoded(vec![rs(
            "json",
            vec![sp(7, 1, 5, 2, vec![])],
        )]))
        .await
        .unwrap();
        wait_for("trace 7", || next.traces() == vec![7]).await;
        ts.shutdown().await;
    }

    #[tokio::test]
    async fn late_spans_follow_their_trace_decision() {
        let next = Arc::new(Recorder::default());
        let ts = start(ERRORS, next.clone(), None);
        ts.consume(encoded(vec![rs(
            "a",
            vec![sp(1, 1, 5, 2, vec![]), sp(2, 2, 5, 0, vec![])],
        )]))
        .await
        .unwrap();
        wait_for("trace 1", || next.traces() == vec![1]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Late: an OK span of the sampled trace, an error span of the dropped one.
        ts.consume(encoded(vec![rs(
            "a",
            vec![sp(1, 9, 5, 0, vec![]), sp(2, 8, 5, 2, vec![])],
        )]))
        .await
        .unwrap();
        // Forwarded before consume returned.
        assert_eq!(next.spans(), vec![(1, 1, "a".into()), (1, 9, "a".into())]);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(next.traces(), vec![1], "the dropped trace stays dropped");
        ts.shutdown().await;
    }

    #[tokio::test]
    async fn overflow_decides_the_oldest_early_and_keeps_errors() {
        let next = Arc::new(Recorder::default());
        let yaml = "
decision_wait: 1h
num_traces: 10
policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
";
        let ts = start(yaml, next.clone(), None);
        for t in 1..=30u8 {
            let code = if t % 5 == 0 { 2 } else { 0 };
            ts.consume(encoded(vec![rs("a", vec![sp(t, 1, 5, code, vec![])])]))
                .await
                .unwrap();
        }
        // Traces 1..=20 were decided early: the errors among them are kept.
        wait_for("errors 5..20", || next.traces() == vec![5, 10, 15, 20]).await;
        assert_eq!(ts.shared.state.lock().traces.len(), 10);
        ts.shutdown().await;
        // Shutdown decided the rest.
        assert_eq!(next.traces(), vec![5, 10, 15, 20, 25, 30]);
    }

    #[tokio::test]
    async fn byte_bound_decides_early_and_memory_stays_bounded() {
        let next = Arc::new(Recorder::default());
        let yaml = "
decision_wait: 1h
max_buffered_bytes_mib: 1
policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
";
        let ts = start(yaml, next.clone(), None);
        let big = "x".repeat(10_000);
        for t in 1..=200u8 {
            let code = if t % 50 == 0 { 2 } else { 0 };
            let spans = (0..5)
                .map(|i| {
                    sp(
                        t,
                        i,
                        5,
                        if i == 4 { code } else { 0 },
                        vec![kv("blob", s(&big))],
                    )
                })
                .collect();
            ts.consume(encoded(vec![rs("a", spans)])).await.unwrap();
            let held = ts.shared.state.lock().bytes;
            assert!(held <= MIB as usize + 60_000, "held {held} bytes");
        }
        wait_for("errors", || next.traces() == vec![50, 100, 150]).await;
        ts.shutdown().await;
        assert_eq!(next.traces(), vec![50, 100, 150, 200]);
    }

    #[tokio::test]
    async fn retryable_refusals_lose_nothing() {
        let next = Arc::new(Recorder::default());
        next.refuse.store(3, Ordering::SeqCst);
        let yaml = "
decision_wait: 100ms
policies: [{name: all, type: always_sample}]
";
        let ts = start(yaml, next.clone(), None);
        ts.consume(encoded(vec![rs(
            "a",
            vec![sp(1, 1, 5, 0, vec![]), sp(2, 1, 5, 0, vec![])],
        )]))
        .await
        .unwrap();
        wait_for("both traces", || next.traces() == vec![1, 2]).await;
        assert!(next.calls.load(Ordering::SeqCst) >= 4);
        assert_eq!(next.spans().len(), 2, "each span once");
        assert_eq!(ts.shared.state.lock().outbox_bytes, 0);
        ts.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_without_storage_forwards_what_it_holds() {
        let next = Arc::new(Recorder::default());
        let yaml = "
decision_wait: 1h
policies: [{name: all, type: always_sample}]
";
        let ts = start(yaml, next.clone(), None);
        ts.consume(encoded(vec![rs("a", vec![sp(3, 1, 5, 0, vec![])])]))
            .await
            .unwrap();
        ts.shutdown().await;
        assert_eq!(next.traces(), vec![3]);
        let refused = ts
            .consume(encoded(vec![rs("a", vec![sp(4, 1, 5, 0, vec![])])]))
            .await;
        assert!(matches!(refused, Err(PipelineError::Unavailable(_))));
    }

    #[tokio::test]
    async fn undecided_traces_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::Storage::open(dir.path()).unwrap();
        let yaml = "
decision_wait: 800ms
storage: file_storage
policies: [{name: all, type: always_sample}]
";
        let first = Arc::new(Recorder::default());
        let ts = start(
            yaml,
            first.clone(),
            Some(storage.tree("processor/tail_sampling").unwrap()),
        );
        ts.consume(encoded(vec![rs(
            "a",
            vec![sp(5, 1, 5, 0, vec![]), sp(5, 2, 5, 0, vec![])],
        )]))
        .await
        .unwrap();
        ts.shutdown().await;
        drop(ts);
        assert!(first.spans().is_empty());
        let tree = storage.tree("processor/tail_sampling").unwrap();
        assert_eq!(tree.len(), 1);

        let second = Arc::new(Recorder::default());
        let began = std::time::Instant::now();
        let ts = start(yaml, second.clone(), Some(tree.clone()));
        wait_for("the reloaded trace", || second.spans().len() == 2).await;
        // It waited out (the rest of) its decision_wait.
        assert!(began.elapsed() >= Duration::from_millis(300));
        assert_eq!(second.spans(), vec![(5, 1, "a".into()), (5, 2, "a".into())]);
        wait_for("removal from storage", || tree.is_empty()).await;
        ts.shutdown().await;
    }

    #[tokio::test]
    async fn forwarded_spans_are_regrouped_by_resource() {
        let next = Arc::new(Recorder::default());
        let yaml = "
decision_wait: 100ms
policies: [{name: all, type: always_sample}]
";
        let ts = start(yaml, next.clone(), None);
        for t in 1..=3u8 {
            ts.consume(encoded(vec![rs("same", vec![sp(t, 1, 5, 0, vec![])])]))
                .await
                .unwrap();
        }
        wait_for("three traces", || next.traces() == vec![1, 2, 3]).await;
        let (resources, forwarded) = {
            let batches = next.batches.lock();
            let resources: usize = batches.iter().map(|b| b.resource_spans.len()).sum();
            (resources, batches.len())
        };
        assert_eq!(
            resources, forwarded,
            "one ResourceSpans per forwarded batch"
        );
        ts.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_lose_nothing_and_keep_each_span_once() {
        let next = Arc::new(Recorder::default());
        let yaml = "
decision_wait: 200ms
num_traces: 50
policies: [{name: all, type: always_sample}]
";
        let ts = Arc::new(start(yaml, next.clone(), None));
        let mut tasks = Vec::new();
        for w in 0..4u8 {
            let ts = ts.clone();
            tasks.push(tokio::spawn(async move {
                for t in 0..50u8 {
                    // Each trace's spans come from two workers (two services).
                    let trace = t;
                    let svc = if w % 2 == 0 { "even" } else { "odd" };
                    let span = sp(trace, w * 64 + t % 64, 1, 0, vec![]);
                    let mut span = span;
                    span.span_id = vec![w, t, 0, 0, 0, 0, 0, 1];
                    ts.consume(encoded(vec![rs(svc, vec![span])]))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        wait_for("200 spans", || next.spans().len() >= 200).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ids: Vec<(u8, u8)> = Vec::new();
        for td in next.batches.lock().iter() {
            for rs in &td.resource_spans {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        ids.push((s.span_id[0], s.span_id[1]));
                    }
                }
            }
        }
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, 200, "every span forwarded exactly once");
        assert_eq!(ids.len(), 200);
    }

    #[test]
    fn regroup_merges_fragments_of_one_resource_and_scope() {
        let leaves = Leaves::default();
        let mut sp_ = Splitter::default();
        let a = TracesData {
            resource_spans: vec![
                rs("x", vec![sp(1, 1, 1, 0, vec![]), sp(2, 2, 1, 0, vec![])]),
                rs("y", vec![sp(1, 3, 1, 0, vec![])]),
            ],
        }
        .encode_to_vec();
        sp_.split(&a, &leaves).unwrap();
        assert_eq!(sp_.fragments.len(), 3);
        let parts: Vec<&[u8]> = sp_
            .fragments
            .iter()
            .map(|f| &sp_.out[f.start..f.end])
            .collect();
        let merged = TracesData::decode(walk::regroup(parts.into_iter()).as_slice()).unwrap();
        assert_eq!(merged.resource_spans.len(), 2);
        assert_eq!(merged.resource_spans[0].scope_spans.len(), 1);
        assert_eq!(merged.resource_spans[0].scope_spans[0].spans.len(), 2);
        assert_eq!(walk::count_spans(&a).unwrap(), 3);
    }

    #[test]
    fn span_kinds_are_unused_but_flags_are_read() {
        let mut s = sp(1, 1, 1, 0, vec![]);
        s.flags = 0x101;
        s.kind = span::SpanKind::Server as i32;
        let bytes = TracesData {
            resource_spans: vec![rs("a", vec![s])],
        }
        .encode_to_vec();
        let mut sp_ = Splitter::default();
        sp_.split(&bytes, &Leaves::default()).unwrap();
        assert!(sp_.fragments[0].summary.sampled_flag);
    }
}
