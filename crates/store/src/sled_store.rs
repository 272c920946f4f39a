//! The sled-backed store.
//!
//! Trees:
//! * `entries`: `trace id (16) ++ seq (8, big-endian)` -> entry (see `encode`). A trace's
//!   entries are adjacent, so trace by id is one prefix scan however many writes it came in.
//! * `by_start`: `entry start ns (8) ++ trace id (16) ++ seq (8)` -> empty: the time index that
//!   search walks newest first.
//! * `tags`: `scope (1) ++ key ++ 0x00 ++ type (1) ++ value` -> empty: tag names and values,
//!   mirrored in memory; each key keeps at most [`MAX_VALUES_PER_TAG`] values.
//!
//! One writer thread owns every insert and the fsync (group commit): it takes all writes that
//! are waiting, inserts them, flushes once, then acknowledges each of them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{any_value::Value, KeyValue, ResourceSpans};
use sextant_otlp_proto::{SpanId, TraceId};
use tokio::sync::oneshot;

use crate::encode::{self, Entry};
use crate::error::StoreError;
use crate::types::*;
use crate::{BoxFuture, SpanWriter, TraceReader};

/// Each attribute key records at most this many distinct values for autocomplete.
pub const MAX_VALUES_PER_TAG: usize = 1000;
/// Values longer than this are not recorded for autocomplete.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// How far before a search window's start an entry may begin and still overlap it.
pub const MAX_ENTRY_SPAN_NS: u64 = 3600 * 1_000_000_000;
/// At most this many writes share one fsync.
const MAX_GROUP: usize = 512;

/// Settings of a [`SledStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// zstd level for entries.
    pub compression_level: i32,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_capacity: 64 * 1024 * 1024,
            compression_level: 3,
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
    entries: sled::Tree,
    by_start: sled::Tree,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    tags: Mutex<TagIndex>,
    level: i32,
    spans_written: AtomicU64,
    writes: Arc<AtomicU64>,
    flushes: Arc<AtomicU64>,
}

struct Job {
    entries: Vec<Entry>,
    tags: Vec<Vec<u8>>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Tag names and values, by scope. Lookups of known keys and values do not allocate.
#[derive(Default)]
struct TagIndex {
    resource: HashMap<String, BTreeSet<TagValue>>,
    span: HashMap<String, BTreeSet<TagValue>>,
}

impl TagIndex {
    fn scope(&self, scope: TagScope) -> &HashMap<String, BTreeSet<TagValue>> {
        match scope {
            TagScope::Resource => &self.resource,
            TagScope::Span => &self.span,
        }
    }

    fn scope_mut(&mut self, scope: TagScope) -> &mut HashMap<String, BTreeSet<TagValue>> {
        match scope {
            TagScope::Resource => &mut self.resource,
            TagScope::Span => &mut self.span,
        }
    }

    /// Records the attributes, pushing the `tags` tree keys that are new onto `new`.
    fn observe(
        &mut self,
        scope: TagScope,
        attrs: &[KeyValue],
        new: &mut Vec<Vec<u8>>,
        buf: &mut String,
    ) {
        let map = self.scope_mut(scope);
        for kv in attrs {
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            let (type_name, text): (&str, &str) = match &value.value {
                Some(Value::StringValue(s)) => {
                    if s.len() > MAX_TAG_VALUE_LEN {
                        continue;
                    }
                    ("string", s.as_str())
                }
                Some(Value::IntValue(i)) => {
                    buf.clear();
                    let _ = write!(buf, "{i}");
                    ("int", buf.as_str())
                }
                Some(Value::DoubleValue(d)) => {
                    buf.clear();
                    let _ = write!(buf, "{d}");
                    ("float", buf.as_str())
                }
                Some(Value::BoolValue(b)) => ("bool", if *b { "true" } else { "false" }),
                _ => continue,
            };
            let values = match map.get_mut(kv.key.as_str()) {
                Some(v) => v,
                None => {
                    new.push(tag_key(scope, &kv.key, None));
                    map.entry(kv.key.clone()).or_default()
                }
            };
            if values.len() >= MAX_VALUES_PER_TAG {
                continue;
            }
            let known = values
                .range::<str, _>((std::ops::Bound::Included(text), std::ops::Bound::Unbounded))
                .take_while(|v| v.value == text)
                .any(|v| v.type_name == type_name);
            if !known {
                let tv = TagValue {
                    type_name: type_name.to_string(),
                    value: text.to_string(),
                };
                new.push(tag_key(scope, &kv.key, Some(&tv)));
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
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let entries = db.open_tree("entries")?;
        let by_start = db.open_tree("by_start")?;
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
        let (tx, rx) = mpsc::channel::<Job>();
        let writes = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, entries, by_start) = (db.clone(), entries.clone(), by_start.clone());
            let (writes, flushes) = (writes.clone(), flushes.clone());
            thread::Builder::new()
                .name("sextant-store-writer".into())
                .spawn(move || {
                    writer_loop(rx, db, entries, by_start, tags_tree, &writes, &flushes)
                })?
        };
        tracing::info!(path = %config.path.display(), "store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                entries,
                by_start,
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                tags: Mutex::new(tags),
                level: config.compression_level,
                spans_written: AtomicU64::new(0),
                writes,
                flushes,
            }),
        })
    }

    /// Stops accepting writes, lets the writer finish and flushes. Later writes fail with
    /// [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.jobs.lock().take();
        if let Some(handle) = self.inner.writer.lock().take() {
            let _ = handle.join();
        }
        self.inner.db.flush()?;
        Ok(())
    }

    /// The directory the store lives in, and its size on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Writes a batch and waits until it is durable.
    pub async fn write_batch(&self, batch: Vec<ResourceSpans>) -> Result<WriteReceipt, StoreError> {
        let mut new_tags = Vec::new();
        {
            let mut tags = self.inner.tags.lock();
            let mut buf = String::new();
            for rs in &batch {
                if let Some(r) = &rs.resource {
                    tags.observe(TagScope::Resource, &r.attributes, &mut new_tags, &mut buf);
                }
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        tags.observe(TagScope::Span, &span.attributes, &mut new_tags, &mut buf);
                    }
                }
            }
        }
        let split = encode::split_by_trace(batch);
        let mut accepted = 0u64;
        let mut entries = Vec::with_capacity(split.traces.len());
        for (id, trace) in split.traces {
            let entry = encode::encode_entry(id, trace, self.inner.level)?;
            accepted += entry.meta.span_count as u64;
            entries.push(entry);
        }
        let receipt = WriteReceipt {
            accepted_spans: accepted,
            rejected_spans: split.rejected_spans,
            rejection: split.rejection,
        };
        if entries.is_empty() && new_tags.is_empty() {
            return Ok(receipt);
        }
        let (done, wait) = oneshot::channel();
        {
            let jobs = self.inner.jobs.lock();
            let tx = jobs.as_ref().ok_or(StoreError::Closed)?;
            tx.send(Job {
                entries,
                tags: new_tags,
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

    fn load_trace(
        &self,
        id: &TraceId,
    ) -> Result<Vec<(encode::EntryMeta, sled::IVec, sled::IVec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.entries.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            let (meta, _) = encode::decode_meta(&k, &v)?;
            out.push((meta, k, v));
        }
        Ok(out)
    }

    fn decode_all(
        parts: &[(encode::EntryMeta, sled::IVec, sled::IVec)],
    ) -> Result<Vec<ResourceSpans>, StoreError> {
        let mut decoded = Vec::with_capacity(parts.len());
        for (_, k, v) in parts {
            let (_, payload) = encode::decode_meta(k, v)?;
            decoded.push(encode::decode_payload(k, payload)?);
        }
        Ok(encode::merge(decoded))
    }
}

fn writer_loop(
    rx: mpsc::Receiver<Job>,
    db: sled::Db,
    entries: sled::Tree,
    by_start: sled::Tree,
    tags: sled::Tree,
    writes: &AtomicU64,
    flushes: &AtomicU64,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<(), StoreError> {
            for job in &group {
                for entry in &job.entries {
                    let seq = db.generate_id()?;
                    let mut key = [0u8; 24];
                    key[..16].copy_from_slice(entry.trace_id.as_bytes());
                    key[16..].copy_from_slice(&seq.to_be_bytes());
                    entries.insert(key, entry.value.as_slice())?;
                    let mut tkey = [0u8; 32];
                    tkey[..8].copy_from_slice(&entry.meta.start_ns.to_be_bytes());
                    tkey[8..].copy_from_slice(&key);
                    by_start.insert(tkey, &[])?;
                }
                for t in &job.tags {
                    tags.insert(t.as_slice(), &[])?;
                }
            }
            db.flush()?;
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
    fn write(&self, batch: Vec<ResourceSpans>) -> BoxFuture<'_, Result<WriteReceipt, StoreError>> {
        Box::pin(self.write_batch(batch))
    }
}

impl TraceReader for SledStore {
    fn trace(
        &self,
        id: TraceId,
        window: TimeWindow,
    ) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        let parts = self.load_trace(&id)?;
        if parts.is_empty()
            || !parts
                .iter()
                .any(|(m, _, _)| window.overlaps(m.start_ns, m.end_ns))
        {
            return Ok(None);
        }
        Ok(Some(Self::decode_all(&parts)?))
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchResult, StoreError> {
        let lo = query
            .window
            .start_ns
            .unwrap_or(0)
            .saturating_sub(MAX_ENTRY_SPAN_NS);
        let hi = query.window.end_ns.unwrap_or(u64::MAX);
        let mut result = SearchResult::default();
        let mut seen: HashSet<TraceId> = HashSet::new();
        let limit = query.limit.max(1);
        let mut upper = [0xffu8; 32];
        upper[..8].copy_from_slice(&hi.to_be_bytes());
        let range = self
            .inner
            .by_start
            .range(lo.to_be_bytes().to_vec()..=upper.to_vec());
        for item in range.rev() {
            let (k, _) = item?;
            if k.len() != 32 {
                continue;
            }
            let Ok(id) = TraceId::from_slice(&k[8..24]) else {
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            let parts = self.load_trace(&id)?;
            let start = parts.iter().map(|p| p.0.start_ns).min().unwrap_or(0);
            let end = parts.iter().map(|p| p.0.end_ns).max().unwrap_or(0);
            if !query.window.overlaps(start, end) {
                continue;
            }
            result.inspected_traces += 1;
            result.inspected_bytes += parts.iter().map(|p| p.2.len() as u64).sum::<u64>();
            let spans = Self::decode_all(&parts)?;
            if let Some(hit) = evaluate(id, &spans, query) {
                result.traces.push(hit);
                if result.traces.len() >= limit {
                    break;
                }
            }
        }
        result
            .traces
            .sort_by_key(|t| std::cmp::Reverse(t.summary.start_ns));
        Ok(result)
    }

    fn tag_names(&self, scope: Option<TagScope>) -> Result<Vec<(TagScope, String)>, StoreError> {
        let tags = self.inner.tags.lock();
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
        let tags = self.inner.tags.lock();
        let mut out: BTreeSet<TagValue> = BTreeSet::new();
        for s in [TagScope::Resource, TagScope::Span] {
            if scope.is_some_and(|want| want != s) {
                continue;
            }
            if let Some(values) = tags.scope(s).get(key) {
                out.extend(values.iter().cloned());
            }
        }
        Ok(out.into_iter().collect())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            spans_written: self.inner.spans_written.load(Ordering::Relaxed),
            writes: self.inner.writes.load(Ordering::Relaxed),
            flushes: self.inner.flushes.load(Ordering::Relaxed),
            bytes_on_disk: self.size_on_disk(),
        }
    }
}

/// Evaluates a search on one whole trace.
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
                let duration = span
                    .end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano);
                if query
                    .min_duration
                    .is_some_and(|d| (duration as u128) < d.as_nanos())
                    || query
                        .max_duration
                        .is_some_and(|d| (duration as u128) > d.as_nanos())
                {
                    continue;
                }
                let mut attrs = Vec::new();
                let all =
                    query
                        .conditions
                        .iter()
                        .all(|c| match c.matches(span, rs.resource.as_ref()) {
                            Some(Some(kv)) => {
                                attrs.push(kv);
                                true
                            }
                            Some(None) => true,
                            None => false,
                        });
                if all {
                    matched += 1;
                    if matched_spans.len() < query.spans_per_trace {
                        matched_spans.push(MatchedSpan {
                            span_id: SpanId::from_slice(&span.span_id).unwrap_or_default(),
                            name: span.name.clone(),
                            start_ns: span.start_time_unix_nano,
                            duration_ns: duration,
                            attributes: attrs,
                        });
                    }
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
        self.jobs.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

/// The data directory's files, for measuring bytes on disk.
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
