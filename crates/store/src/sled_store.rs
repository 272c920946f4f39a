//! The sled-backed store.
//!
//! Trees:
//! * `batches`: `seq (8, big-endian)` -> one whole write: a header (arrival time, time range,
//!   counts) and the zstd-compressed protobuf `TracesData`. Keys only grow, so writes append.
//! * `traces`: `trace id (16) ++ seq (8)` -> the trace's part of that batch (time range, span
//!   count, root span). A trace is one prefix scan however many writes it came in.
//! * `tags`: `scope (1) ++ key ++ 0x00 ++ type (1) ++ value` -> empty: tag names and values,
//!   mirrored in memory; each key keeps at most [`MAX_VALUES_PER_TAG`] values.
//!
//! One writer thread owns every insert and the fsync (group commit): it takes all writes that
//! are waiting, inserts them, flushes once, then acknowledges each of them.
//!
//! Before a write is encoded, [`crate::limits`] truncates long attribute values and refuses
//! the traces that would exceed a size limit; the live size of each trace in the log is kept
//! in memory, given back when a cut moves the trace's spans into a block, and rebuilt from the
//! log on open.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::{Mutex, RwLock};
use rustc_hash::{FxHashMap, FxHashSet};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{Resource, ResourceSpans, Span};
use sextant_otlp_proto::{SpanBatch, SpanId, TraceId};
use tokio::sync::oneshot;

use crate::block::Term;
use crate::block::{self, now_ns, BlockBuilder};
use crate::blocks::{
    self as blockset, BlockBackend, BlockInfo, BlockSet, BlockStats, BlocksConfig, CompactionReport,
};
use crate::blockstore::{BlockStore, LocalBlockStore, S3BlockStore};
use crate::encode;
use crate::error::StoreError;
use crate::limits::{LimitStats, Limits, TraceLimiter, TraceSizes};
use crate::query::Matcher;
use crate::types::*;
use crate::{
    visit_spans, BoxFuture, ScanStats, SpanFilter, SpanVisit, SpanWriter, TraceReader, TraceVisit,
};
use prost::Message as _;

/// Each attribute key records at most this many distinct values for autocomplete.
pub const MAX_VALUES_PER_TAG: usize = 1000;
/// Values longer than this are not recorded for autocomplete.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Clock skew allowed between senders and this process: a search stops at batches that
/// arrived this long before its window begins.
pub const MAX_CLOCK_SKEW_NS: u64 = 300 * 1_000_000_000;
/// What a scan carries from phase to phase.
#[derive(Default)]
struct Scan {
    stats: ScanStats,
    /// Traces visited whole.
    seen: FxHashSet<TraceId>,
    cache: BatchCache,
    /// [`TraceReader::scan_spans`]: the keys of the traces whose block parts were visited.
    visited: FxHashSet<u64>,
    /// The round of the blocks phase.
    round: usize,
}

impl Scan {
    fn finish(mut self) -> ScanStats {
        self.stats.inspected_bytes += self.cache.bytes_read;
        self.stats
    }
}

/// Called by [`SledStore::scan_block_pages`] per page, with the scan, the block and the
/// page's index; returns whether to go on.
type PageVisit<'v> =
    dyn FnMut(&mut Scan, &block::OpenBlock, usize) -> Result<bool, StoreError> + 'v;

/// Decoded batches kept during one read.
const BATCH_CACHE: usize = 64;
/// At most this many writes share one fsync.
const MAX_GROUP: usize = 512;

/// Settings of a [`SledStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// zstd level for batches (negative levels are zstd fast modes).
    pub compression_level: i32,
    /// Blocks: where they live, when they are cut, compacted and expired.
    pub blocks: BlocksConfig,
    /// Limits on what a write may store (trace size, attribute value length).
    pub limits: Limits,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_capacity: 64 * 1024 * 1024,
            compression_level: -1,
            blocks: BlocksConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// The embedded store. Cheap to clone; the last clone dropped stops the writer after it has
/// flushed what it holds.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    batches: sled::Tree,
    traces: sled::Tree,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    tags: RwLock<TagIndex>,
    level: i32,
    spans_written: AtomicU64,
    writes: Arc<AtomicU64>,
    flushes: Arc<AtomicU64>,
    blocks: BlockSet,
    /// Spans in the write-ahead log (not cut into blocks yet).
    wal_spans: Arc<AtomicU64>,
    /// Every write with a lower `seq` is in blocks: reads of the log start here (sled keeps
    /// emptied nodes for a while, and walking them costs).
    wal_start: AtomicU64,
    /// Every write with a `seq` up to this one is in the tree (the writer inserts in `seq`
    /// order): a cut takes no write above it, so that it never skips one being inserted.
    stored_through: Arc<AtomicU64>,
    /// The background thread cutting, compacting and expiring blocks, and how to stop it.
    maintenance: Mutex<Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>>,
    /// The write limits, and the live size of the traces in the log.
    limiter: TraceLimiter,
}

struct Job {
    /// The encoded batch; empty when the write held only new tags.
    batch: Vec<u8>,
    traces: Vec<(TraceId, Vec<u8>)>,
    tags: Vec<Vec<u8>>,
    spans: u64,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The values recorded for one tag, by type; lookups do not allocate.
#[derive(Default)]
struct TagValues {
    by_type: [FxHashSet<String>; 4],
}

const TAG_TYPES: [&str; 4] = ["string", "int", "float", "bool"];

fn type_slot(type_name: &str) -> usize {
    TAG_TYPES.iter().position(|t| *t == type_name).unwrap_or(0)
}

impl TagValues {
    fn len(&self) -> usize {
        self.by_type.iter().map(|s| s.len()).sum()
    }

    fn contains(&self, type_name: &str, text: &str) -> bool {
        self.by_type[type_slot(type_name)].contains(text)
    }

    fn insert(&mut self, tv: TagValue) -> bool {
        self.by_type[type_slot(&tv.type_name)].insert(tv.value)
    }

    fn iter(&self) -> impl Iterator<Item = TagValue> + '_ {
        self.by_type.iter().enumerate().flat_map(|(i, set)| {
            set.iter().map(move |v| TagValue {
                value: v.clone(),
                type_name: TAG_TYPES[i].to_string(),
            })
        })
    }
}

/// Tag names and values, by scope. Lookups of known keys and values do not allocate.
#[derive(Default)]
struct TagIndex {
    resource: FxHashMap<String, TagValues>,
    span: FxHashMap<String, TagValues>,
}

impl TagIndex {
    fn scope(&self, scope: TagScope) -> &FxHashMap<String, TagValues> {
        match scope {
            TagScope::Resource => &self.resource,
            TagScope::Span => &self.span,
        }
    }

    fn scope_mut(&mut self, scope: TagScope) -> &mut FxHashMap<String, TagValues> {
        match scope {
            TagScope::Resource => &mut self.resource,
            TagScope::Span => &mut self.span,
        }
    }

    /// Whether the tag (and its value, when there is room for more values) is known already.
    pub(crate) fn is_known(
        &self,
        scope: TagScope,
        key: &str,
        value: Option<(&'static str, &str)>,
    ) -> bool {
        let Some(values) = self.scope(scope).get(key) else {
            return false;
        };
        let Some((type_name, text)) = value else {
            return true;
        };
        // Full keys (high-cardinality ones: ids) first: their values need no hashing.
        values.len() >= MAX_VALUES_PER_TAG
            || text.len() > MAX_TAG_VALUE_LEN
            || values.contains(type_name, text)
    }

    /// Records a tag found unknown by [`Self::is_known`], pushing the `tags` tree keys that are
    /// new onto `new`.
    pub(crate) fn insert(&mut self, tag: encode::NewTag, new: &mut Vec<Vec<u8>>) {
        let encode::NewTag { scope, key, value } = tag;
        let map = self.scope_mut(scope);
        if !map.contains_key(key.as_str()) {
            new.push(tag_key(scope, &key, None));
        }
        let values = map.entry(key.clone()).or_default();
        if let Some(tv) = value {
            if values.len() < MAX_VALUES_PER_TAG && !values.contains(&tv.type_name, &tv.value) {
                new.push(tag_key(scope, &key, Some(&tv)));
                values.insert(tv);
            }
        }
    }
}

fn tag_key(scope: TagScope, key: &str, value: Option<&TagValue>) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len() + value.map_or(0, |v| v.value.len() + 2));
    k.push(scope.byte());
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    if let Some(v) = value {
        k.push(match v.type_name.as_str() {
            "int" => b'i',
            "float" => b'f',
            "bool" => b'b',
            _ => b's',
        });
        k.extend_from_slice(v.value.as_bytes());
    }
    k
}

fn parse_tag_key(k: &[u8]) -> Option<(TagScope, String, Option<TagValue>)> {
    let scope = TagScope::from_byte(*k.first()?)?;
    let rest = &k[1..];
    let zero = rest.iter().position(|b| *b == 0)?;
    let key = String::from_utf8(rest[..zero].to_vec()).ok()?;
    let tail = &rest[zero + 1..];
    let value = match tail.split_first() {
        None => None,
        Some((t, v)) => Some(TagValue {
            type_name: match t {
                b'i' => "int",
                b'f' => "float",
                b'b' => "bool",
                _ => "string",
            }
            .to_string(),
            value: String::from_utf8(v.to_vec()).ok()?,
        }),
    };
    Some((scope, key, value))
}

impl SledStore {
    /// Opens (or creates) the store at `config.path`.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.path)?;
        let sled_config = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            // The writer flushes after every group of writes; a timer adds nothing but fsyncs.
            .flush_every_ms(None);
        // A store closed a moment ago in this process may still hold the directory's lock
        // while sled's threads finish: wait for it a little (another process holding it is
        // reported after that).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match sled_config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let batches = db.open_tree("batches")?;
        let traces = db.open_tree("traces")?;
        let tags_tree = db.open_tree("tags")?;
        let mut tags = TagIndex::default();
        for item in tags_tree.iter() {
            let (k, _) = item?;
            if let Some((scope, key, value)) = parse_tag_key(&k) {
                let values = tags.scope_mut(scope).entry(key).or_default();
                if let Some(v) = value {
                    values.insert(v);
                }
            }
        }
        let backend: Arc<dyn BlockStore> = match &config.blocks.backend {
            BlockBackend::Local => Arc::new(LocalBlockStore::open(config.path.join("blocks"))?),
            BlockBackend::S3(s3) => Arc::new(S3BlockStore::open(s3)?),
        };
        let block_set = BlockSet::open(backend, config.blocks.clone())?;
        let wal_start = block_set.wal_end();
        let wal_spans = Arc::new(AtomicU64::new(finish_interrupted_cut(
            &batches, &traces, wal_start,
        )?));
        let limiter = TraceLimiter::new(config.limits);
        if config.limits.tracks_traces() {
            limiter.add_existing(&live_trace_sizes(&batches, wal_start)?);
        }
        let last_stored = match batches.last()? {
            Some((k, _)) => <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes),
            None => 0,
        };
        let stored_through = Arc::new(AtomicU64::new(last_stored));
        let (tx, rx) = mpsc::channel::<Job>();
        let writes = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let writer = {
            let trees = (db.clone(), batches.clone(), traces.clone(), tags_tree);
            let (writes, flushes, wal) = (writes.clone(), flushes.clone(), wal_spans.clone());
            let stored = stored_through.clone();
            thread::Builder::new()
                .name("sextant-store-writer".into())
                .spawn(move || writer_loop(rx, trees, &writes, &flushes, &wal, &stored))?
        };
        tracing::info!(
            path = %config.path.display(),
            blocks = block_set.snapshot().len(),
            backend = %block_set.backend.describe(),
            wal_spans = wal_spans.load(Ordering::Relaxed),
            live_traces = limiter.stats().tracked_traces,
            "store opened"
        );
        let store = Self {
            inner: Arc::new(Inner {
                db,
                batches,
                traces,
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                tags: RwLock::new(tags),
                level: config.compression_level,
                spans_written: AtomicU64::new(0),
                writes,
                flushes,
                blocks: block_set,
                wal_spans,
                wal_start: AtomicU64::new(wal_start),
                stored_through,
                maintenance: Mutex::new(None),
                limiter,
            }),
        };
        store.start_maintenance()?;
        Ok(store)
    }

    /// Starts the background thread that cuts blocks, compacts them and enforces retention.
    fn start_maintenance(&self) -> Result<(), StoreError> {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.blocks.config.maintenance_interval;
        let handle = thread::Builder::new()
            .name("sextant-store-blocks".into())
            .spawn(move || loop {
                match stop_rx.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let store = SledStore { inner };
                if let Err(e) = store.maintain() {
                    tracing::error!(error = %e, "block maintenance failed; retrying later");
                }
            })?;
        *self.inner.maintenance.lock() = Some((stop_tx, handle));
        Ok(())
    }

    /// One round of background work: cut what is due, expire, compact.
    fn maintain(&self) -> Result<(), StoreError> {
        while self.cut(false)? {}
        self.inner.blocks.enforce_retention(now_ns())?;
        if self.inner.blocks.config.compaction {
            self.inner.blocks.compact(false)?;
        }
        Ok(())
    }

    /// Cuts everything in the write-ahead log into blocks now.
    pub fn flush_blocks(&self) -> Result<(), StoreError> {
        while self.cut(true)? {}
        Ok(())
    }

    /// Merges blocks now: with `force`, any two blocks whatever their level (up to the size
    /// limit);
    /// otherwise only as the background compactor would.
    pub fn compact(&self, force: bool) -> Result<CompactionReport, StoreError> {
        self.inner.blocks.compact(force)
    }

    /// Deletes the blocks that are past the retention at `now_ns`; returns how many.
    pub fn enforce_retention(&self, now_ns: u64) -> Result<usize, StoreError> {
        self.inner.blocks.enforce_retention(now_ns)
    }

    /// The blocks served, newest first.
    pub fn blocks(&self) -> Vec<BlockInfo> {
        self.inner.blocks.infos()
    }

    /// Figures of the blocks.
    pub fn block_stats(&self) -> BlockStats {
        self.inner.blocks.stats()
    }

    /// Spans in the write-ahead log, not cut into blocks yet.
    pub fn wal_spans(&self) -> u64 {
        self.inner.wal_spans.load(Ordering::Relaxed)
    }

    /// Where blocks are kept.
    pub fn block_backend(&self) -> String {
        self.inner.blocks.backend.describe()
    }

    /// Reads every block whole and checks it; blocks that fail are quarantined. Calls
    /// `progress` after each block with its id and the outcome.
    pub fn verify(
        &self,
        progress: &mut dyn FnMut(&BlockInfo, &Result<(), StoreError>),
    ) -> Result<usize, StoreError> {
        let mut bad = 0;
        for b in self.inner.blocks.snapshot() {
            let info = self
                .inner
                .blocks
                .infos()
                .into_iter()
                .find(|i| i.id == b.meta.id);
            let r = self
                .inner
                .blocks
                .checked(&b, || b.verify(self.inner.blocks.backend.as_ref()));
            if r.is_err() {
                bad += 1;
            }
            if let Some(info) = info {
                progress(&info, &r);
            }
        }
        Ok(bad)
    }

    /// Cuts the oldest writes of the write-ahead log into one block, when due (or `force`).
    /// Returns whether a block was cut.
    fn cut(&self, force: bool) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let config = &inner.blocks.config;
        let _guard = inner.blocks.maintenance.lock();
        let now = now_ns();
        let live = inner.live_batches();
        let Some((k, v)) = inner.batches.range(live.clone()).next().transpose()? else {
            return Ok(false);
        };
        let (oldest, _) = encode::decode_meta(&k, &v)?;
        let due = force
            || now.saturating_sub(oldest.arrival_ns) >= config.max_block_duration.as_nanos() as u64
            || inner.wal_spans.load(Ordering::Relaxed) >= config.max_block_spans;
        if !due {
            return Ok(false);
        }
        let idle_before = now.saturating_sub(config.max_trace_idle.as_nanos() as u64);
        let started = std::time::Instant::now();
        let mut parts: FxHashMap<TraceId, Vec<Vec<u8>>> = FxHashMap::default();
        let mut cut: Vec<([u8; 8], Vec<TraceId>)> = Vec::new();
        let (mut spans, mut newest, mut last_seq) = (0u64, 0u64, 0u64);
        let stable = inner.stored_through.load(Ordering::Acquire).to_be_bytes();
        // The live size the cut spans give back to their traces.
        let tracks = inner.limiter.limits().tracks_traces();
        let mut released = TraceSizes::default();
        for item in inner.batches.range(live.start..=stable) {
            let (k, v) = item?;
            let Ok(seq) = <[u8; 8]>::try_from(k.as_ref()) else {
                continue;
            };
            let (meta, payload) = encode::decode_meta(&k, &v)?;
            if (!force && meta.arrival_ns > idle_before)
                || (spans >= config.max_block_spans && !cut.is_empty())
            {
                break;
            }
            let raw = zstd::stream::decode_all(payload).map_err(|e| StoreError::Corrupt {
                key: hex_key(&seq),
                problem: format!("bad compression: {e}"),
            })?;
            let split = block::split::split_by_trace(&raw).map_err(|e| StoreError::Corrupt {
                key: hex_key(&seq),
                problem: format!("bad protobuf: {e}"),
            })?;
            let mut ids = Vec::with_capacity(split.len());
            for (id, data) in split {
                if tracks {
                    released.add_data(&data).map_err(|e| StoreError::Corrupt {
                        key: hex_key(&seq),
                        problem: format!("bad protobuf: {e}"),
                    })?;
                }
                parts.entry(id).or_default().push(data);
                ids.push(id);
            }
            spans += meta.span_count as u64;
            newest = newest.max(meta.arrival_ns);
            last_seq = u64::from_be_bytes(seq);
            cut.push((seq, ids));
        }
        if cut.is_empty() {
            return Ok(false);
        }
        let read_ms = started.elapsed().as_millis() as u64;
        let mut ids: Vec<TraceId> = parts.keys().copied().collect();
        ids.sort_unstable();
        let id = blockset::new_block_id(0);
        let mut builder =
            BlockBuilder::new(id.clone(), 0, config.page_bytes, config.compression_level);
        for tid in ids {
            let p = parts.remove(&tid).unwrap_or_default();
            let (entry, _) = blockset::merge_entry(tid, p)?;
            builder.add(entry)?;
        }
        let (bytes, meta) = builder.finish(last_seq + 1, Vec::new(), newest)?;
        let build_ms = started.elapsed().as_millis() as u64 - read_ms;
        let size = bytes.len();
        // Served from the block before it leaves the log: a reader finds the spans in one or
        // both (reads merge and dedupe), never in neither.
        inner.blocks.add(bytes, &meta)?;
        let mut batch_removals = sled::Batch::default();
        let mut trace_removals = sled::Batch::default();
        for (seq, ids) in &cut {
            batch_removals.remove(seq.as_slice());
            for tid in ids {
                trace_removals.remove(trace_key(tid, seq).as_slice());
            }
        }
        let stored_ms = started.elapsed().as_millis() as u64 - read_ms - build_ms;
        inner.wal_start.fetch_max(last_seq + 1, Ordering::Relaxed);
        inner.traces.apply_batch(trace_removals)?;
        inner.batches.apply_batch(batch_removals)?;
        let _ = inner
            .wal_spans
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(spans))
            });
        // Like Tempo's live traces: once cut, a trace's size counts from zero again.
        inner.limiter.release(&released);
        inner.blocks.counters.cuts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            block = %id,
            writes = cut.len(),
            spans = meta.span_count,
            traces = meta.trace_count,
            bytes = size,
            read_ms,
            build_ms,
            stored_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "block cut"
        );
        Ok(true)
    }

    /// Stops accepting writes, lets the writer finish and flushes. Later writes fail with
    /// [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        if let Some((stop, handle)) = self.inner.maintenance.lock().take() {
            drop(stop);
            let _ = handle.join();
        }
        self.inner.jobs.lock().take();
        if let Some(handle) = self.inner.writer.lock().take() {
            let _ = handle.join();
        }
        self.inner.db.flush()?;
        Ok(())
    }

    /// The store's size on disk, as sled counts it.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Writes a batch and waits until it is durable.
    pub async fn write_batch(&self, batch: SpanBatch) -> Result<WriteReceipt, StoreError> {
        let arrival_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Long values truncated, traces over a size limit refused, the others' size reserved.
        let limited = self.inner.limiter.apply(batch)?;
        let reserved = limited.reserved;
        let result = self
            .store_limited(
                limited.batch,
                arrival_ns,
                limited.rejected_spans,
                limited.rejection,
                limited.refused,
            )
            .await;
        if result.as_ref().map_or(true, |r| r.accepted_spans == 0) {
            // Nothing of it is in the log: the reserved size is not live.
            self.inner.limiter.release(&reserved);
        }
        result
    }

    /// Stores what the limits left of a write; `rejected` spans were refused already, those of
    /// the `refused` traces. The receipt names those traces; the spans the encoding refuses
    /// (an invalid trace id) are counted but belong to no trace, so they are named by none.
    async fn store_limited(
        &self,
        batch: SpanBatch,
        arrival_ns: u64,
        rejected: u64,
        rejection: String,
        refused: Vec<RejectedTrace>,
    ) -> Result<WriteReceipt, StoreError> {
        let encoded = {
            // One read lock for the whole scan; new tags are inserted after it.
            let tags = self.inner.tags.read();
            let known = |scope: TagScope, key: &str, value: Option<(&'static str, &str)>| {
                tags.is_known(scope, key, value)
            };
            encode::encode_batch(batch, arrival_ns, self.inner.level, &known)?
        };
        let mut new_tags = Vec::new();
        if !encoded.new_tags.is_empty() {
            let mut tags = self.inner.tags.write();
            for t in encoded.new_tags {
                tags.insert(t, &mut new_tags);
            }
        }
        let accepted = encoded.meta.span_count as u64;
        let rejection = match (rejection.is_empty(), encoded.rejection.is_empty()) {
            (_, true) => rejection,
            (true, false) => encoded.rejection,
            (false, false) => format!("{rejection}; {}", encoded.rejection),
        };
        let receipt = WriteReceipt {
            accepted_spans: accepted,
            rejected_spans: encoded.rejected_spans + rejected,
            rejection,
            rejected_traces: refused,
        };
        if accepted == 0 && new_tags.is_empty() {
            return Ok(receipt);
        }
        let traces = encoded
            .traces
            .into_iter()
            .map(|(id, meta)| (id, meta.encode_to_vec()))
            .collect();
        let (done, wait) = oneshot::channel();
        {
            let jobs = self.inner.jobs.lock();
            let tx = jobs.as_ref().ok_or(StoreError::Closed)?;
            tx.send(Job {
                batch: if accepted == 0 {
                    Vec::new()
                } else {
                    encoded.value
                },
                traces,
                tags: new_tags,
                spans: accepted,
                done,
            })
            .map_err(|_| StoreError::Closed)?;
        }
        wait.await.map_err(|_| StoreError::Closed)??;
        self.inner
            .spans_written
            .fetch_add(accepted, Ordering::Relaxed);
        Ok(receipt)
    }

    /// The trace index entries of a trace: (batch key, part).
    fn trace_parts(&self, id: &TraceId) -> Result<Vec<([u8; 8], encode::TraceMeta)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.traces.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            let Some(seq) = k.get(16..24).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
                continue;
            };
            out.push((seq, encode::decode_trace_meta(&k, &v)?));
        }
        Ok(out)
    }

    /// A whole batch, decoded, through the cache.
    /// `None` when the batch has left the log since its index entry was read: it was cut into
    /// a block, which readers look at after the log.
    fn batch(
        &self,
        seq: [u8; 8],
        cache: &mut BatchCache,
    ) -> Result<Option<Arc<Vec<ResourceSpans>>>, StoreError> {
        if let Some(b) = cache.get(&seq) {
            return Ok(Some(b.clone()));
        }
        let Some(value) = self.inner.batches.get(seq)? else {
            return Ok(None);
        };
        cache.bytes_read += value.len() as u64;
        let (_, payload) = encode::decode_meta(&seq, &value)?;
        let decoded = Arc::new(encode::decode_payload(&seq, payload)?);
        cache.put(seq, decoded.clone());
        Ok(Some(decoded))
    }

    /// Every span of a trace: from every batch of the log it is in, then from the blocks
    /// (but `skip`, whose part is in `have`), merged.
    /// The log phase of a scan (newest writes first): every trace with a span in a live
    /// batch of the window for which `prefilter` holds, read whole and passed to `visit` once
    /// (and marked seen). Returns whether to go on.
    fn scan_wal(
        &self,
        window: &TimeWindow,
        prefilter: &SpanFilter<'_>,
        scan: &mut Scan,
        visit: &mut TraceVisit<'_>,
    ) -> Result<bool, StoreError> {
        let stop_before = window.start_ns.map(|s| s.saturating_sub(MAX_CLOCK_SKEW_NS));
        for item in self.inner.batches.range(self.inner.live_batches()).rev() {
            let (k, v) = item?;
            let Ok(seq) = <[u8; 8]>::try_from(k.as_ref()) else {
                continue;
            };
            let (meta, payload) = encode::decode_meta(&k, &v)?;
            if stop_before.is_some_and(|s| meta.arrival_ns < s) {
                break;
            }
            if !window.overlaps(meta.start_ns, meta.end_ns) {
                continue;
            }
            scan.stats.inspected_bytes += v.len() as u64;
            scan.stats.inspected_traces += meta.trace_count as u64;
            scan.stats.inspected_spans += meta.span_count as u64;
            let batch = Arc::new(encode::decode_payload(&k, payload)?);
            scan.cache.put(seq, batch.clone());
            for (_, id) in candidates(&batch, &scan.seen, prefilter) {
                scan.seen.insert(id);
                let parts = self.trace_parts(&id)?;
                let spans = self.read_trace(&id, &parts, &mut scan.cache, None, None)?;
                if !trace_overlaps(&spans, window) {
                    continue;
                }
                if !visit(id, &spans) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The blocks phase of a scan, newest block first: each page in the window that may hold
    /// a span carrying all the `terms` is passed to `page` with its block, to read (a block
    /// failing a check there is quarantined). A block
    /// deleted under the scan (compaction replaced it) sends the scan round again over the
    /// blocks served then (whose replacement holds its spans; `page` is told the round).
    /// Returns whether to go on.
    fn scan_block_pages(
        &self,
        window: &TimeWindow,
        terms: &[Term],
        scan: &mut Scan,
        page: &mut PageVisit<'_>,
    ) -> Result<bool, StoreError> {
        let hashes: Vec<u64> = terms.iter().map(Term::hash).collect();
        let blocks = &self.inner.blocks;
        let mut scanned: HashSet<String> = HashSet::new();
        for round in 0..3 {
            scan.round = round;
            let mut gone = false;
            for b in blocks.snapshot() {
                if scanned.contains(&b.name) || !window.overlaps(b.meta.start_ns, b.meta.end_ns) {
                    continue;
                }
                let mut whole = true;
                for (i, p) in b.meta.pages.iter().enumerate() {
                    if !window.overlaps(p.start_ns, p.end_ns) || !b.page_may_match(i, &hashes) {
                        continue;
                    }
                    match blocks.checked(&b, || page(scan, &b, i)) {
                        Err(StoreError::NotFound(_)) => {
                            whole = false;
                            break;
                        }
                        Err(e) => return Err(e),
                        Ok(go_on) => {
                            scan.stats.inspected_bytes += p.len as u64;
                            scan.stats.inspected_traces += p.trace_count as u64;
                            scan.stats.inspected_spans += p.span_count as u64;
                            if !go_on {
                                return Ok(false);
                            }
                        }
                    }
                }
                if whole {
                    scanned.insert(b.name.clone());
                } else {
                    gone = true;
                }
            }
            if !gone {
                break;
            }
        }
        Ok(true)
    }

    fn read_trace(
        &self,
        id: &TraceId,
        parts: &[([u8; 8], encode::TraceMeta)],
        cache: &mut BatchCache,
        skip: Option<&str>,
        have: Option<Vec<ResourceSpans>>,
    ) -> Result<Vec<ResourceSpans>, StoreError> {
        let mut pieces = Vec::with_capacity(parts.len() + 1);
        for (seq, _) in parts {
            if let Some(batch) = self.batch(*seq, cache)? {
                pieces.push(encode::extract_trace(&batch, id));
            }
        }
        pieces.extend(have);
        pieces.extend(self.inner.blocks.trace_parts_except(id, skip)?);
        Ok(encode::merge(pieces))
    }
}

/// Decoded batches kept during one read.
#[derive(Default)]
struct BatchCache {
    map: HashMap<[u8; 8], Arc<Vec<ResourceSpans>>>,
    order: std::collections::VecDeque<[u8; 8]>,
    bytes_read: u64,
}

impl BatchCache {
    fn get(&self, seq: &[u8; 8]) -> Option<&Arc<Vec<ResourceSpans>>> {
        self.map.get(seq)
    }

    fn put(&mut self, seq: [u8; 8], batch: Arc<Vec<ResourceSpans>>) {
        if self.map.contains_key(&seq) {
            return;
        }
        if self.order.len() >= BATCH_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back(seq);
        self.map.insert(seq, batch);
    }
}

impl Inner {
    /// The keys of the log's batches not cut into blocks yet.
    fn live_batches(&self) -> std::ops::RangeFrom<[u8; 8]> {
        self.wal_start.load(Ordering::Relaxed).to_be_bytes()..
    }
}

type Trees = (sled::Db, sled::Tree, sled::Tree, sled::Tree);

fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace index key of a trace's part in batch `seq`.
fn trace_key(id: &TraceId, seq: &[u8; 8]) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(seq);
    key
}

/// Removes from the write-ahead log what blocks hold already (a crash between a cut's block
/// and its removal from the log leaves both); returns the spans left in the log.
fn finish_interrupted_cut(
    batches: &sled::Tree,
    traces: &sled::Tree,
    wal_start: u64,
) -> Result<u64, StoreError> {
    if wal_start > 0 {
        let mut stale = Vec::new();
        for item in batches.range(..wal_start.to_be_bytes()) {
            stale.push(item?.0);
        }
        if !stale.is_empty() {
            let mut tr = sled::Batch::default();
            for item in traces.iter() {
                let (k, _) = item?;
                let seq = k.get(16..24).and_then(|s| <[u8; 8]>::try_from(s).ok());
                if seq.is_some_and(|s| u64::from_be_bytes(s) < wal_start) {
                    tr.remove(k);
                }
            }
            traces.apply_batch(tr)?;
            let mut br = sled::Batch::default();
            for k in &stale {
                br.remove(k.clone());
            }
            batches.apply_batch(br)?;
            tracing::info!(writes = stale.len(), "finishing a block cut a crash interrupted: removed what the block holds from the log");
        }
    }
    let mut spans = 0u64;
    for item in batches.range(wal_start.to_be_bytes()..) {
        let (k, v) = item?;
        spans += encode::decode_meta(&k, &v)?.0.span_count as u64;
    }
    Ok(spans)
}

/// The bytes and spans per trace of the writes in the log (from `wal_start` on).
fn live_trace_sizes(batches: &sled::Tree, wal_start: u64) -> Result<TraceSizes, StoreError> {
    let mut sizes = TraceSizes::default();
    for item in batches.range(wal_start.to_be_bytes()..) {
        let (k, v) = item?;
        let (_, payload) = encode::decode_meta(&k, &v)?;
        let raw = zstd::stream::decode_all(payload).map_err(|e| StoreError::Corrupt {
            key: hex_key(&k),
            problem: format!("bad compression: {e}"),
        })?;
        sizes.add_data(&raw).map_err(|e| StoreError::Corrupt {
            key: hex_key(&k),
            problem: format!("bad protobuf: {e}"),
        })?;
    }
    Ok(sizes)
}

fn writer_loop(
    rx: mpsc::Receiver<Job>,
    trees: Trees,
    writes: &AtomicU64,
    flushes: &AtomicU64,
    wal_spans: &AtomicU64,
    stored_through: &AtomicU64,
) {
    let (db, batches, traces, tags) = trees;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut highest = 0u64;
        let result = (|| -> Result<(), StoreError> {
            for job in &group {
                if !job.batch.is_empty() {
                    let id = db.generate_id()?;
                    highest = highest.max(id);
                    let seq = id.to_be_bytes();
                    batches.insert(seq, job.batch.as_slice())?;
                    for (id, meta) in &job.traces {
                        traces.insert(trace_key(id, &seq), meta.as_slice())?;
                    }
                }
                for t in &job.tags {
                    tags.insert(t.as_slice(), &[])?;
                }
            }
            db.flush()?;
            wal_spans.fetch_add(group.iter().map(|j| j.spans).sum(), Ordering::Relaxed);
            // Every write up to `highest` is in the tree now (this thread inserts in order).
            stored_through.fetch_max(highest, Ordering::Release);
            Ok(())
        })();
        writes.fetch_add(group.len() as u64, Ordering::Relaxed);
        flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = group.len(), "store write failed; writers are told to retry");
        }
        for job in group {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Io(std::io::Error::other(e.to_string()))),
            };
            let _ = job.done.send(r);
        }
    }
    if let Err(e) = db.flush() {
        tracing::error!(error = %e, "final store flush failed");
    }
}

impl SpanWriter for SledStore {
    fn write(&self, batch: SpanBatch) -> BoxFuture<'_, Result<WriteReceipt, StoreError>> {
        Box::pin(self.write_batch(batch))
    }
}

impl TraceReader for SledStore {
    fn trace(
        &self,
        id: TraceId,
        window: TimeWindow,
    ) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        let parts = self.trace_parts(&id)?;
        let mut cache = BatchCache::default();
        let spans = self.read_trace(&id, &parts, &mut cache, None, None)?;
        if spans.is_empty() || !trace_overlaps(&spans, &window) {
            return Ok(None);
        }
        Ok(Some(spans))
    }

    fn scan_terms(
        &self,
        window: TimeWindow,
        terms: &[Term],
        prefilter: &SpanFilter<'_>,
        visit: &mut TraceVisit<'_>,
    ) -> Result<ScanStats, StoreError> {
        let mut scan = Scan::default();
        if self.scan_wal(&window, prefilter, &mut scan, visit)? {
            let backend = self.inner.blocks.backend.as_ref();
            self.scan_block_pages(&window, terms, &mut scan, &mut |scan, b, i| {
                let mut found: Vec<(u64, TraceId, Vec<ResourceSpans>)> = Vec::new();
                for t in b.read_page_traces(backend, i)? {
                    if scan.seen.contains(&t.id) || !window.overlaps(t.start_ns, t.end_ns) {
                        continue;
                    }
                    let hit = t.resource_spans.iter().any(|rs| {
                        rs.scope_spans.iter().any(|ss| {
                            ss.spans
                                .iter()
                                .any(|sp| prefilter(sp, rs.resource.as_ref()))
                        })
                    });
                    if hit {
                        found.push((t.start_ns, t.id, t.resource_spans));
                    }
                }
                found.sort_by_key(|(start, _, _)| std::cmp::Reverse(*start));
                for (_, id, part) in found {
                    scan.seen.insert(id);
                    let parts = self.trace_parts(&id)?;
                    let spans =
                        self.read_trace(&id, &parts, &mut scan.cache, Some(&b.name), Some(part))?;
                    if !visit(id, &spans) {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
        }
        Ok(scan.finish())
    }

    fn scan_spans(
        &self,
        window: TimeWindow,
        terms: &[Term],
        fields: SpanFields,
        visit: &mut SpanVisit<'_>,
    ) -> Result<ScanStats, StoreError> {
        let mut scan = Scan::default();
        // The log's traces whole (their parts merged, as they may also be in blocks), then
        // the blocks' traces part by part: no trace assembled, no index read.
        let mut whole = |id: TraceId, trace: &[ResourceSpans]| visit_spans(&id, trace, visit);
        if !self.scan_wal(&window, &|_, _| true, &mut scan, &mut whole)? {
            return Ok(scan.finish());
        }
        let backend = self.inner.blocks.backend.as_ref();
        self.scan_block_pages(&window, terms, &mut scan, &mut |scan, b, i| {
            let (seen, visited, round) = (&scan.seen, &mut scan.visited, scan.round);
            // The trace of the previous span, and whether its spans are visited.
            let mut current: Option<(TraceId, bool)> = None;
            b.for_each_page_span(backend, i, fields, &mut |id, start, end, span, resource| {
                let take = match current {
                    Some((c, take)) if c == *id => take,
                    _ => {
                        // A block that vanished under the scan sends it round again over the
                        // blocks served then: the parts already visited are not visited twice.
                        let key = block::trace_key(id);
                        let take = !seen.contains(id)
                            && window.overlaps(start, end)
                            && !(round > 0 && visited.contains(&key));
                        if take {
                            visited.insert(key);
                        }
                        current = Some((*id, take));
                        take
                    }
                };
                !take || visit(id, span, resource)
            })
        })?;
        Ok(scan.finish())
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchResult, StoreError> {
        let mut result = SearchResult::default();
        let limit = query.limit.max(1);
        let prefilter =
            |span: &Span, resource: Option<&Resource>| span_matches(span, resource, query);
        let mut visit = |id: TraceId, spans: &[ResourceSpans]| {
            if let Some(hit) = evaluate(id, spans, query) {
                result.traces.push(hit);
            }
            result.traces.len() < limit
        };
        let terms = condition_terms(query);
        let stats = self.scan_terms(query.window, &terms, &prefilter, &mut visit)?;
        result.inspected_traces = stats.inspected_traces;
        result.inspected_bytes = stats.inspected_bytes;
        result
            .traces
            .sort_by_key(|t| std::cmp::Reverse(t.summary.start_ns));
        Ok(result)
    }

    fn tag_names(&self, scope: Option<TagScope>) -> Result<Vec<(TagScope, String)>, StoreError> {
        let tags = self.inner.tags.read();
        let mut out = Vec::new();
        for s in [TagScope::Resource, TagScope::Span] {
            if scope.is_none_or(|want| want == s) {
                out.extend(tags.scope(s).keys().map(|k| (s, k.clone())));
            }
        }
        out.sort();
        Ok(out)
    }

    fn tag_values(&self, scope: Option<TagScope>, key: &str) -> Result<Vec<TagValue>, StoreError> {
        let tags = self.inner.tags.read();
        let mut out: BTreeSet<TagValue> = BTreeSet::new();
        for s in [TagScope::Resource, TagScope::Span] {
            if scope.is_some_and(|want| want != s) {
                continue;
            }
            if let Some(values) = tags.scope(s).get(key) {
                out.extend(values.iter());
            }
        }
        Ok(out.into_iter().collect())
    }

    fn stats(&self) -> StoreStats {
        let b = self.inner.blocks.stats();
        let local_blocks = match self.inner.blocks.config.backend {
            BlockBackend::Local => b.block_bytes,
            BlockBackend::S3(_) => 0,
        };
        StoreStats {
            spans_written: self.inner.spans_written.load(Ordering::Relaxed),
            writes: self.inner.writes.load(Ordering::Relaxed),
            flushes: self.inner.flushes.load(Ordering::Relaxed),
            bytes_on_disk: self.size_on_disk() + local_blocks,
            blocks: b.blocks,
            block_bytes: b.block_bytes,
            wal_spans: self.wal_spans(),
            blocks_cut: b.cuts,
            compactions: b.compactions,
            blocks_expired: b.expired,
            blocks_quarantined: b.quarantined,
        }
    }

    fn limit_stats(&self) -> LimitStats {
        self.inner.limiter.stats()
    }
}

/// The traces of a batch with a span that passes the prefilter and that no earlier part of the
/// scan visited, newest first.
fn candidates(
    batch: &[ResourceSpans],
    seen: &FxHashSet<TraceId>,
    prefilter: &SpanFilter<'_>,
) -> Vec<(u64, TraceId)> {
    let mut out: Vec<(u64, TraceId)> = Vec::new();
    let mut in_batch: FxHashSet<TraceId> = FxHashSet::default();
    for rs in batch {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let Ok(id) = TraceId::from_slice(&span.trace_id) else {
                    continue;
                };
                if seen.contains(&id) || in_batch.contains(&id) {
                    continue;
                }
                if prefilter(span, rs.resource.as_ref()) {
                    in_batch.insert(id);
                    out.push((span.start_time_unix_nano, id));
                }
            }
        }
    }
    out.sort_by_key(|(start, _)| std::cmp::Reverse(*start));
    out
}

/// Whether a trace's spans overlap the window.
fn trace_overlaps(trace: &[ResourceSpans], window: &TimeWindow) -> bool {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for rs in trace {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                start = start.min(span.start_time_unix_nano);
                end = end.max(span.end_time_unix_nano);
            }
        }
    }
    start <= end && window.overlaps(start, end)
}

/// The terms a search's conditions require of a span (for skipping pages).
pub(crate) fn condition_terms(query: &SearchQuery) -> Vec<Term> {
    query
        .conditions
        .iter()
        .filter_map(|c| {
            let Matcher::Equals(value) = &c.matcher else {
                return None;
            };
            if c.scope.is_none() {
                match c.key.as_str() {
                    "name" => return Some(Term::Name(value.clone())),
                    "status" => return Some(Term::Status(value.clone())),
                    "kind" => return Some(Term::Kind(value.clone())),
                    "statusMessage" => return None,
                    _ => {}
                }
            }
            if value.len() > block::MAX_TERM_VALUE || value.starts_with(['[', '{']) {
                return None;
            }
            Some(Term::Attr {
                key: c.key.clone(),
                value: value.clone(),
            })
        })
        .collect()
}

/// Whether one span satisfies the duration bounds and every condition.
fn span_matches(span: &Span, resource: Option<&Resource>, query: &SearchQuery) -> bool {
    let duration = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as u128;
    if query.min_duration.is_some_and(|d| duration < d.as_nanos())
        || query.max_duration.is_some_and(|d| duration > d.as_nanos())
    {
        return false;
    }
    query
        .conditions
        .iter()
        .all(|c| c.matches(span, resource).is_some())
}

/// Evaluates a search on one whole trace: its summary and the spans that match.
fn evaluate(id: TraceId, trace: &[ResourceSpans], query: &SearchQuery) -> Option<TraceHit> {
    let mut summary = TraceSummary {
        start_ns: u64::MAX,
        ..Default::default()
    };
    let mut end = 0u64;
    let mut root_start = u64::MAX;
    let mut matched_spans = Vec::new();
    let mut matched = 0usize;
    for rs in trace {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                summary.span_count += 1;
                summary.start_ns = summary.start_ns.min(span.start_time_unix_nano);
                end = end.max(span.end_time_unix_nano);
                if encode::is_root(&span.parent_span_id) && span.start_time_unix_nano < root_start {
                    root_start = span.start_time_unix_nano;
                    summary.root_service = attr::service_name(rs.resource.as_ref()).to_string();
                    summary.root_name = span.name.clone();
                }
                if !span_matches(span, rs.resource.as_ref(), query) {
                    continue;
                }
                matched += 1;
                if matched_spans.len() < query.spans_per_trace {
                    let attributes = query
                        .conditions
                        .iter()
                        .filter_map(|c| c.matches(span, rs.resource.as_ref()).flatten())
                        .collect();
                    matched_spans.push(MatchedSpan {
                        span_id: SpanId::from_slice(&span.span_id).unwrap_or_default(),
                        name: span.name.clone(),
                        start_ns: span.start_time_unix_nano,
                        duration_ns: span
                            .end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano),
                        attributes,
                    });
                }
            }
        }
    }
    if matched == 0 {
        return None;
    }
    if summary.start_ns == u64::MAX {
        summary.start_ns = 0;
    }
    summary.duration_ns = end.saturating_sub(summary.start_ns);
    if root_start == u64::MAX {
        summary.root_service = ROOT_NOT_RECEIVED.to_string();
        summary.root_name = ROOT_NOT_RECEIVED.to_string();
    }
    Some(TraceHit {
        trace_id: id,
        summary,
        matched_spans,
        matched,
    })
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The maintenance thread may be the one dropping the last reference: it is told to
        // stop, not joined.
        self.maintenance.lock().take();
        self.jobs.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

/// The size of a directory's files, recursively (for measuring bytes on disk).
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
