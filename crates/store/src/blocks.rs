//! The blocks a store serves: their configuration, the set held in memory, and the work that
//! makes and removes them (cutting traces out of the write-ahead log, compaction, retention,
//! quarantine). The write-ahead log's side of cutting is in `sled_store`.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prost::Message;
use rustc_hash::FxHashMap;
use sextant_otlp_proto::proto::{ResourceSpans, TracesData};
use sextant_otlp_proto::wire::{scan_validated, KeyValueRef, SpanRef, Visitor};
use sextant_otlp_proto::TraceId;

use crate::block::{self, now_ns, BlockBuilder, BlockMeta, OpenBlock, TermSink, TraceEntry};
use crate::blockstore::{BlockStore, S3Config};
use crate::encode;
use crate::error::StoreError;

/// Where blocks are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BlockBackend {
    /// `<data dir>/blocks`.
    #[default]
    Local,
    S3(S3Config),
}

/// How blocks are cut, compacted and expired.
#[derive(Debug, Clone, PartialEq)]
pub struct BlocksConfig {
    pub backend: BlockBackend,
    /// Traces that received no span for this long are cut into a block (Tempo's
    /// `max_trace_idle`, 5 s).
    pub max_trace_idle: Duration,
    /// The write-ahead log is cut into a block once its oldest write is this old (30 s).
    pub max_block_duration: Duration,
    /// ... or once it holds this many spans; also the most spans one cut takes.
    pub max_block_spans: u64,
    /// Blocks older than this (by their newest span) are deleted (7 days).
    pub retention: Duration,
    /// Uncompressed bytes per page (256 KiB): the unit trace by id reads.
    pub page_bytes: usize,
    /// zstd level of pages.
    pub compression_level: i32,
    /// Compaction merges this many blocks of one level at least (4).
    pub compaction_min_blocks: usize,
    /// ... into blocks of at most this many spans (1 M).
    pub max_compacted_block_spans: u64,
    /// Whether the background compactor runs (retention always does).
    pub compaction: bool,
    /// How often the background work looks for something to do.
    pub maintenance_interval: Duration,
}

impl Default for BlocksConfig {
    fn default() -> Self {
        Self {
            backend: BlockBackend::Local,
            max_trace_idle: Duration::from_secs(5),
            max_block_duration: Duration::from_secs(30),
            max_block_spans: 200_000,
            retention: Duration::from_secs(7 * 24 * 3600),
            page_bytes: 256 * 1024,
            // Level 1 measured smaller than 3 on trace-sorted pages, and cheaper
            // (`cargo xtask bench store`).
            compression_level: 1,
            compaction_min_blocks: 4,
            // A compaction holds its output in memory until it is stored.
            max_compacted_block_spans: 1_000_000,
            compaction: true,
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

/// A block as `sextant store inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub id: String,
    pub level: u32,
    pub size: u64,
    pub raw_bytes: u64,
    pub span_count: u64,
    pub trace_count: u64,
    pub page_count: usize,
    pub start_ns: u64,
    pub end_ns: u64,
    pub created_ns: u64,
    /// Bytes of filters held in memory.
    pub filter_bytes: usize,
}

impl BlockInfo {
    fn of(b: &OpenBlock) -> Self {
        Self {
            id: b.meta.id.clone(),
            level: b.meta.level,
            size: b.size,
            raw_bytes: b.meta.raw_bytes,
            span_count: b.meta.span_count,
            trace_count: b.meta.trace_count,
            page_count: b.meta.pages.len(),
            start_ns: b.meta.start_ns,
            end_ns: b.meta.end_ns,
            created_ns: b.meta.created_ns,
            filter_bytes: b.memory(),
        }
    }
}

/// Figures of the blocks, for `/metrics` and `sextant store inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub blocks: u64,
    pub block_bytes: u64,
    pub block_spans: u64,
    pub cuts: u64,
    pub compactions: u64,
    pub expired: u64,
    pub quarantined: u64,
}

/// What one run of compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub inputs: usize,
    pub outputs: usize,
    pub spans_in: u64,
    pub spans_out: u64,
    /// Spans stored twice (client retries) that the merge removed.
    pub duplicates_removed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Counters of the block machinery.
#[derive(Debug, Default)]
pub(crate) struct BlockCounters {
    pub cuts: AtomicU64,
    pub compactions: AtomicU64,
    pub expired: AtomicU64,
    pub quarantined: AtomicU64,
}

/// The blocks being served, newest first, with their backend.
pub(crate) struct BlockSet {
    pub backend: Arc<dyn BlockStore>,
    blocks: RwLock<Vec<Arc<OpenBlock>>>,
    pub config: BlocksConfig,
    pub counters: BlockCounters,
    /// Held by whoever changes the set of objects (cut, compaction, retention, quarantine).
    pub maintenance: Mutex<()>,
}

impl BlockSet {
    /// Opens every block of `backend`: finishes interrupted compactions (a block whose
    /// `replaces` are still present) and quarantines blocks that fail their checks.
    pub fn open(backend: Arc<dyn BlockStore>, config: BlocksConfig) -> Result<Self, StoreError> {
        let set = Self {
            backend,
            blocks: RwLock::new(Vec::new()),
            config,
            counters: BlockCounters::default(),
            maintenance: Mutex::new(()),
        };
        let mut opened = Vec::new();
        for obj in set.backend.list()? {
            if !obj.name.ends_with(block::SUFFIX) {
                continue;
            }
            match OpenBlock::open(set.backend.as_ref(), &obj.name, obj.size) {
                Ok(b) => opened.push(Arc::new(b)),
                Err(e @ StoreError::Corrupt { .. }) => set.quarantine_name(&obj.name, &e),
                Err(e) => return Err(e),
            }
        }
        let replaced: std::collections::HashSet<String> = opened
            .iter()
            .flat_map(|b| b.meta.replaces.iter().cloned())
            .collect();
        let mut kept = Vec::new();
        for b in opened {
            if replaced.contains(&b.meta.id) {
                tracing::info!(block = %b.meta.id, "finishing a compaction a crash interrupted: deleting a replaced block");
                set.backend.delete(&b.name)?;
            } else {
                kept.push(b);
            }
        }
        sort_newest_first(&mut kept);
        *set.blocks.write() = kept;
        Ok(set)
    }

    /// The blocks, newest first.
    pub fn snapshot(&self) -> Vec<Arc<OpenBlock>> {
        self.blocks.read().clone()
    }

    /// Every write-ahead-log write with a lower `seq` is held by blocks.
    pub fn wal_end(&self) -> u64 {
        self.blocks
            .read()
            .iter()
            .map(|b| b.meta.wal_end)
            .max()
            .unwrap_or(0)
    }

    pub fn stats(&self) -> BlockStats {
        let blocks = self.blocks.read();
        BlockStats {
            blocks: blocks.len() as u64,
            block_bytes: blocks.iter().map(|b| b.size).sum(),
            block_spans: blocks.iter().map(|b| b.meta.span_count).sum(),
            cuts: self.counters.cuts.load(Ordering::Relaxed),
            compactions: self.counters.compactions.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
            quarantined: self.counters.quarantined.load(Ordering::Relaxed),
        }
    }

    pub fn infos(&self) -> Vec<BlockInfo> {
        self.blocks
            .read()
            .iter()
            .map(|b| BlockInfo::of(b))
            .collect()
    }

    fn quarantine_name(&self, name: &str, why: &StoreError) {
        self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
        tracing::error!(block = %name, backend = %self.backend.describe(), problem = %why, "block failed its checks: quarantined, not served");
        if let Err(e) = self.backend.quarantine(name) {
            tracing::error!(block = %name, error = %e, "cannot move the block to quarantine");
        }
    }

    /// Takes a block out of service after a failed check. (Not under the maintenance lock: it
    /// happens in the middle of reads, compactions among them.)
    pub fn quarantine(&self, b: &OpenBlock, why: &StoreError) {
        let removed = {
            let mut blocks = self.blocks.write();
            let before = blocks.len();
            blocks.retain(|x| x.name != b.name);
            before != blocks.len()
        };
        if removed {
            self.quarantine_name(&b.name, why);
        }
    }

    /// Runs `f` on a block's read; a block that fails a check is quarantined and the error
    /// returned (never served silently).
    pub fn checked<T>(
        &self,
        b: &OpenBlock,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match f() {
            Err(e @ StoreError::Corrupt { .. }) => {
                self.quarantine(b, &e);
                Err(e)
            }
            other => other,
        }
    }

    /// The trace's parts held by blocks but the one named `skip` (whose part the caller has).
    pub fn trace_parts_except(
        &self,
        id: &TraceId,
        skip: Option<&str>,
    ) -> Result<Vec<Vec<ResourceSpans>>, StoreError> {
        let mut parts = Vec::new();
        let mut read: std::collections::HashSet<String> = std::collections::HashSet::new();
        // A block deleted under the read (compaction replaced it) sends it round again with
        // the blocks served now, whose replacement holds the spans.
        for _round in 0..3 {
            let mut gone = false;
            for b in self.snapshot() {
                if skip == Some(b.name.as_str())
                    || read.contains(&b.name)
                    || b.page_of(id).is_none()
                {
                    continue;
                }
                let found = match self.checked(&b, || b.find(self.backend.as_ref(), id)) {
                    Err(StoreError::NotFound(_)) => {
                        gone = true;
                        continue;
                    }
                    other => other?,
                };
                read.insert(b.name.clone());
                if let Some(data) = found {
                    let decoded =
                        TracesData::decode(data.as_slice()).map_err(|e| StoreError::Corrupt {
                            key: b.name.clone(),
                            problem: format!("trace {}: bad protobuf: {e}", id.to_hex()),
                        });
                    parts.push(self.checked(&b, || decoded)?.resource_spans);
                }
            }
            if !gone {
                break;
            }
        }
        Ok(parts)
    }

    /// Stores a new block and serves it. Returns its meta.
    pub fn add(&self, bytes: Vec<u8>, meta: &BlockMeta) -> Result<Arc<OpenBlock>, StoreError> {
        let name = block::object_name(&meta.id);
        let size = bytes.len() as u64;
        self.backend.put(&name, bytes)?;
        let opened = Arc::new(OpenBlock::open(self.backend.as_ref(), &name, size)?);
        let mut blocks = self.blocks.write();
        blocks.push(opened.clone());
        sort_newest_first(&mut blocks);
        Ok(opened)
    }

    /// Deletes blocks whose newest span is older than the retention.
    pub fn enforce_retention(&self, now: u64) -> Result<usize, StoreError> {
        let _guard = self.maintenance.lock();
        let cutoff = now.saturating_sub(self.config.retention.as_nanos() as u64);
        let expired: Vec<Arc<OpenBlock>> = {
            let mut blocks = self.blocks.write();
            let (old, keep): (Vec<_>, Vec<_>) =
                blocks.drain(..).partition(|b| b.meta.end_ns < cutoff);
            *blocks = keep;
            old
        };
        for b in &expired {
            self.backend.delete(&b.name)?;
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
            tracing::info!(block = %b.meta.id, spans = b.meta.span_count, bytes = b.size, "block expired: deleted");
        }
        Ok(expired.len())
    }

    /// Merges blocks while some level has enough of them. Returns what was done.
    pub fn compact(&self, force: bool) -> Result<CompactionReport, StoreError> {
        let mut report = CompactionReport::default();
        loop {
            // Picked and merged under the maintenance lock: no cut, expiry or other compaction
            // changes the set of blocks in between.
            let _guard = self.maintenance.lock();
            let Some(inputs) = self.pick_compaction(force) else {
                return Ok(report);
            };
            let one = self.compact_blocks(&inputs)?;
            report.inputs += one.inputs;
            report.outputs += one.outputs;
            report.spans_in += one.spans_in;
            report.spans_out += one.spans_out;
            report.duplicates_removed += one.duplicates_removed;
            report.bytes_in += one.bytes_in;
            report.bytes_out += one.bytes_out;
        }
    }

    /// The oldest run of blocks of one level that is worth merging. `force` merges any two,
    /// whatever their levels.
    fn pick_compaction(&self, force: bool) -> Option<Vec<Arc<OpenBlock>>> {
        let blocks = self.snapshot();
        let max = self.config.max_compacted_block_spans;
        let min = if force {
            2
        } else {
            self.config.compaction_min_blocks.max(2)
        };
        let mut levels: FxHashMap<u32, Vec<Arc<OpenBlock>>> = FxHashMap::default();
        for b in blocks.iter().rev() {
            if b.meta.span_count < max {
                // Forced, every level is one: `compact --all` leaves as few blocks as it can.
                let level = if force { 0 } else { b.meta.level };
                levels.entry(level).or_default().push(b.clone());
            }
        }
        let mut keys: Vec<u32> = levels.keys().copied().collect();
        keys.sort_unstable();
        for level in keys {
            let candidates = &levels[&level];
            let mut run = Vec::new();
            let mut spans = 0;
            for b in candidates {
                if spans + b.meta.span_count > max && !run.is_empty() {
                    break;
                }
                spans += b.meta.span_count;
                run.push(b.clone());
            }
            if run.len() >= min {
                return Some(run);
            }
        }
        None
    }

    /// Merges `inputs` into one block (k-way by trace id, a page of each input in memory), then
    /// deletes them. A crash in between leaves the new block naming the inputs it replaces, and
    /// the next open deletes them.
    /// The caller holds the maintenance lock.
    fn compact_blocks(&self, inputs: &[Arc<OpenBlock>]) -> Result<CompactionReport, StoreError> {
        let started = std::time::Instant::now();
        let level = inputs.iter().map(|b| b.meta.level).max().unwrap_or(0) + 1;
        let id = new_block_id(level);
        let mut builder = BlockBuilder::new(
            id.clone(),
            level,
            self.config.page_bytes,
            self.config.compression_level,
        );
        let mut report = CompactionReport {
            inputs: inputs.len(),
            outputs: 1,
            ..Default::default()
        };
        let mut cursors = Vec::new();
        for b in inputs {
            report.spans_in += b.meta.span_count;
            report.bytes_in += b.size;
            cursors.push(Cursor::new(b.clone()));
        }
        let mut heap = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(id) = self.checked(&c.block.clone(), || c.peek(self.backend.as_ref()))? {
                heap.push(std::cmp::Reverse((id, i)));
            }
        }
        while let Some(std::cmp::Reverse((id, i))) = heap.pop() {
            let mut same = vec![i];
            while heap
                .peek()
                .is_some_and(|std::cmp::Reverse((other, _))| *other == id)
            {
                if let Some(std::cmp::Reverse((_, j))) = heap.pop() {
                    same.push(j);
                }
            }
            let mut datas = Vec::with_capacity(same.len());
            for &j in &same {
                let c = &mut cursors[j];
                datas.push(c.take());
                let block = c.block.clone();
                if let Some(next) = self.checked(&block, || c.peek(self.backend.as_ref()))? {
                    heap.push(std::cmp::Reverse((next, j)));
                }
            }
            let (entry, spans_before) = merge_entry(id, datas)?;
            report.duplicates_removed += spans_before - entry.span_count as u64;
            builder.add(entry)?;
        }
        let replaces: Vec<String> = inputs.iter().map(|b| b.meta.id.clone()).collect();
        let wal_end = inputs.iter().map(|b| b.meta.wal_end).max().unwrap_or(0);
        let newest = inputs
            .iter()
            .map(|b| b.meta.newest_arrival_ns)
            .max()
            .unwrap_or(0);
        let (bytes, meta) = builder.finish(wal_end, replaces, newest)?;
        report.spans_out = meta.span_count;
        report.bytes_out = bytes.len() as u64;
        let name = block::object_name(&meta.id);
        let size = bytes.len() as u64;
        self.backend.put(&name, bytes)?;
        let opened = Arc::new(OpenBlock::open(self.backend.as_ref(), &name, size)?);
        {
            let mut blocks = self.blocks.write();
            blocks.retain(|b| !inputs.iter().any(|i| i.name == b.name));
            blocks.push(opened);
            sort_newest_first(&mut blocks);
        }
        for b in inputs {
            self.backend.delete(&b.name)?;
        }
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            block = %id,
            level,
            inputs = inputs.len(),
            spans = report.spans_out,
            duplicates_removed = report.duplicates_removed,
            bytes_in = report.bytes_in,
            bytes_out = report.bytes_out,
            took_ms = started.elapsed().as_millis() as u64,
            "blocks compacted"
        );
        Ok(report)
    }
}

fn sort_newest_first(blocks: &mut [Arc<OpenBlock>]) {
    blocks.sort_by(|a, b| {
        (b.meta.end_ns, b.meta.newest_arrival_ns).cmp(&(a.meta.end_ns, a.meta.newest_arrival_ns))
    });
}

/// A fresh block id: creation time, level, and randomness so that two nodes never collide.
pub(crate) fn new_block_id(level: u32) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    format!("{:016x}-l{level}-{:08x}", now_ns(), h.finish() as u32)
}

/// Reads one input block of a compaction entry by entry.
struct Cursor {
    block: Arc<OpenBlock>,
    next_page: usize,
    page: Vec<u8>,
    /// Entries of the current page not taken yet: (id, data range in `page`).
    pending: std::collections::VecDeque<(TraceId, std::ops::Range<usize>)>,
}

impl Cursor {
    fn new(block: Arc<OpenBlock>) -> Self {
        Self {
            block,
            next_page: 0,
            page: Vec::new(),
            pending: Default::default(),
        }
    }

    fn peek(&mut self, store: &dyn BlockStore) -> Result<Option<TraceId>, StoreError> {
        while self.pending.is_empty() {
            if self.next_page >= self.block.meta.pages.len() {
                return Ok(None);
            }
            self.page = self.block.read_page(store, self.next_page)?;
            self.next_page += 1;
            let base = self.page.as_ptr() as usize;
            for e in block::entries(&self.block.name, &self.page) {
                let e = e?;
                let start = e.data.as_ptr() as usize - base;
                self.pending.push_back((e.id, start..start + e.data.len()));
            }
        }
        Ok(self.pending.front().map(|(id, _)| *id))
    }

    fn take(&mut self) -> Vec<u8> {
        match self.pending.pop_front() {
            Some((_, range)) => self.page.get(range).map(<[u8]>::to_vec).unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// Builds a block entry from the encoded parts of one trace: one part is taken as it is; several
/// are decoded, merged (a span stored twice appears once) and encoded again. Returns the entry
/// and the number of spans the parts held together.
pub(crate) fn merge_entry(
    id: TraceId,
    parts: Vec<Vec<u8>>,
) -> Result<(TraceEntry, u64), StoreError> {
    let bad = |e: String| StoreError::Corrupt {
        key: id.to_hex(),
        problem: e,
    };
    let data = if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        let mut decoded = Vec::with_capacity(parts.len());
        let mut before = 0u64;
        for p in &parts {
            let d = TracesData::decode(p.as_slice())
                .map_err(|e| bad(format!("bad protobuf: {e}")))?
                .resource_spans;
            before += sextant_otlp_proto::span_count(&d) as u64;
            decoded.push(d);
        }
        let merged = encode::merge(decoded);
        let data = TracesData {
            resource_spans: merged,
        }
        .encode_to_vec();
        let entry = entry_of(id, data).map_err(bad)?;
        return Ok((entry, before));
    };
    let entry = entry_of(id, data).map_err(bad)?;
    let spans = entry.span_count as u64;
    Ok((entry, spans))
}

/// Span count, time range and terms of a trace's `TracesData`.
pub(crate) fn entry_of(id: TraceId, data: Vec<u8>) -> Result<TraceEntry, String> {
    let mut v = EntryScan {
        sink: TermSink::default(),
        resource_terms: Vec::new(),
        terms: Vec::new(),
        start: u64::MAX,
        end: 0,
    };
    let spans = scan_validated(&data, &mut v).map_err(|e| e.to_string())?;
    Ok(TraceEntry {
        id,
        span_count: spans as u32,
        start_ns: if v.start == u64::MAX { 0 } else { v.start },
        end_ns: v.end,
        data,
        terms: v.terms,
    })
}

struct EntryScan {
    sink: TermSink,
    resource_terms: Vec<u64>,
    terms: Vec<u64>,
    start: u64,
    end: u64,
}

impl<'a> Visitor<'a> for EntryScan {
    fn resource(&mut self, attributes: &[KeyValueRef<'a>]) {
        self.resource_terms.clear();
        for kv in attributes {
            if let Some(h) = self.sink.attr(kv.key, &kv.value) {
                self.resource_terms.push(h);
            }
        }
        self.terms.extend_from_slice(&self.resource_terms);
    }

    fn span(&mut self, span: &SpanRef<'a>) {
        self.start = self.start.min(span.start_time_unix_nano);
        self.end = self.end.max(span.end_time_unix_nano);
        self.terms.push(self.sink.name(span.name));
        self.terms.push(self.sink.status(span.status_code));
        self.terms.push(self.sink.kind(span.kind));
        for kv in &span.attributes {
            if let Some(h) = self.sink.attr(kv.key, &kv.value) {
                self.terms.push(h);
            }
        }
    }
}
