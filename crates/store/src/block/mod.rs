//! Immutable blocks: the format (core logic, no I/O but through a [`BlockStore`]).
//!
//! A block is one object:
//!
//! ```text
//! "SXTBLK01" | page 0 | page 1 | ... | meta (protobuf BlockMeta) | meta_len u32 | meta_crc32 u32 | "SXTBLK01"
//! ```
//!
//! Traces are sorted by id and each lies whole in one page. A *row page* is a sequence of entries
//! `trace id (16) | span count (varint) | start ns (fixed64) | end ns (fixed64) | len (varint) |
//! TracesData of the trace`, so a scan can skip a trace by time without decoding it, and trace
//! by id decodes one entry. On disk, a page of a format-1 block is the row page in a zstd
//! frame; a page of a format-2 block (written today) is the row page re-encoded by
//! [`columnar`] (span fields in separate streams, strings in a page dictionary) in a zstd frame.
//! [`OpenBlock::read_page`] gives back the row page for both. The meta holds, per page, its byte range,
//! a CRC-32 of its compressed bytes, its first and last trace id, time range, counts, and a
//! binary fuse filter of the *terms* its spans carry (span names, statuses, kinds, and every
//! `key=value` of span and resource attributes), so that searches for a value skip the pages
//! that cannot hold it; and for the block, a binary fuse filter of its trace ids, its time
//! range, the write-ahead-log sequence numbers it covers and the blocks it replaces
//! (compaction). Repeated strings (service names, keys, span names) cost little because a page
//! holds hundreds of traces compressed together.

pub(crate) mod columnar;
pub(crate) mod split;

use std::cell::RefCell;
use std::fmt::Write as _;

use prost::Message;
use sextant_otlp_proto::proto::{Resource, ResourceSpans, Span, TracesData};
use sextant_otlp_proto::wire::ValueRef;
use sextant_otlp_proto::TraceId;
use xorf::{BinaryFuse8, Filter as _};

use crate::blockstore::BlockStore;
use crate::error::StoreError;

pub const MAGIC: &[u8; 8] = b"SXTBLK01";
const FOOTER_LEN: u64 = 16;
/// The block format written by this version: columnar pages ([`columnar`]).
pub const FORMAT: u32 = 2;
/// The first block format: pages of row entries; still read, and written on request
/// ([`BlockBuilder::format`]).
pub const FORMAT_ROWS: u32 = 1;
/// Object names of blocks end so.
pub const SUFFIX: &str = ".blk";

/// A block's description, stored at its end.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockMeta {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(uint32, tag = "2")]
    pub format: u32,
    /// 0 for a block cut from the write-ahead log; one more than its inputs' for compactions.
    #[prost(uint32, tag = "3")]
    pub level: u32,
    #[prost(fixed64, tag = "4")]
    pub created_ns: u64,
    #[prost(fixed64, tag = "5")]
    pub start_ns: u64,
    #[prost(fixed64, tag = "6")]
    pub end_ns: u64,
    #[prost(uint64, tag = "7")]
    pub span_count: u64,
    #[prost(uint64, tag = "8")]
    pub trace_count: u64,
    /// Bytes of the entries as row pages (before the columnar encoding and compression), so
    /// that `raw_bytes / size` compares the block with the row encoding uncompressed.
    #[prost(uint64, tag = "9")]
    pub raw_bytes: u64,
    /// The write-ahead-log batches this block holds: every batch with `seq < wal_end` that
    /// was in the log when it was cut (0: none).
    #[prost(uint64, tag = "10")]
    pub wal_end: u64,
    /// Ids of the blocks this one replaces: once it exists, they are deleted.
    #[prost(string, repeated, tag = "11")]
    pub replaces: Vec<String>,
    #[prost(message, repeated, tag = "12")]
    pub pages: Vec<PageMeta>,
    #[prost(bytes = "vec", tag = "13")]
    pub trace_filter: Vec<u8>,
    /// Arrival time of the newest write in the block (unix ns).
    #[prost(fixed64, tag = "14")]
    pub newest_arrival_ns: u64,
}

/// One page of a block.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PageMeta {
    #[prost(fixed64, tag = "1")]
    pub offset: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(fixed32, tag = "3")]
    pub crc: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub first_trace: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub last_trace: Vec<u8>,
    #[prost(uint32, tag = "6")]
    pub span_count: u32,
    #[prost(uint32, tag = "7")]
    pub trace_count: u32,
    #[prost(fixed64, tag = "8")]
    pub start_ns: u64,
    #[prost(fixed64, tag = "9")]
    pub end_ns: u64,
    /// Bytes of the page after decompression (the columnar page in format 2, the row page in
    /// format 1): what zstd needs to decompress it.
    #[prost(uint32, tag = "10")]
    pub raw_len: u32,
    #[prost(bytes = "vec", tag = "11")]
    pub terms: Vec<u8>,
}

/// A set membership filter: no false negatives, about 0.4 % false positives.
#[derive(Debug, Clone)]
pub enum KeyFilter {
    /// The set is empty.
    Empty,
    /// Everything may be in the set (a filter could not be built).
    All,
    Fuse(BinaryFuse8),
}

impl KeyFilter {
    /// Builds a filter of `keys` (duplicates allowed).
    pub fn build(mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return KeyFilter::Empty;
        }
        match BinaryFuse8::try_from(&keys) {
            Ok(f) => KeyFilter::Fuse(f),
            Err(_) => KeyFilter::All,
        }
    }

    pub fn contains(&self, key: u64) -> bool {
        match self {
            KeyFilter::Empty => false,
            KeyFilter::All => true,
            KeyFilter::Fuse(f) => f.contains(&key),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            KeyFilter::Empty => Vec::new(),
            KeyFilter::All => b"*".to_vec(),
            KeyFilter::Fuse(f) => {
                let mut out = b"F".to_vec();
                // Encoding into a vector cannot fail.
                if let Ok(bytes) = bincode::encode_to_vec(f, bincode::config::standard()) {
                    out.extend_from_slice(&bytes);
                    out
                } else {
                    b"*".to_vec()
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            None => Ok(KeyFilter::Empty),
            Some((b'*', _)) => Ok(KeyFilter::All),
            Some((b'F', rest)) => {
                let (f, _): (BinaryFuse8, usize) =
                    bincode::decode_from_slice(rest, bincode::config::standard())
                        .map_err(|e| format!("bad filter: {e}"))?;
                Ok(KeyFilter::Fuse(f))
            }
            Some((other, _)) => Err(format!("unknown filter kind {other}")),
        }
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        match self {
            KeyFilter::Fuse(f) => f.fingerprints.len(),
            _ => 0,
        }
    }
}

/// The filter key of a trace id.
pub fn trace_key(id: &TraceId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// What a search requires of a span, to skip the pages where no span can match: a term is
/// looked up in the pages' filters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Term {
    /// The span's name.
    Name(String),
    /// `ok`, `error` or `unset`.
    Status(String),
    /// `server`, `client`, ... (as `query::kind_name` writes them).
    Kind(String),
    /// An attribute of the span or of its resource with this value, rendered as
    /// `attr::render` renders it (`500` for the int 500, `true`, `1.5`, hex for bytes).
    Attr { key: String, value: String },
}

impl Term {
    pub fn hash(&self) -> u64 {
        match self {
            Term::Name(n) => tagged(b'n', n.as_bytes(), None),
            Term::Status(s) => tagged(b's', s.as_bytes(), None),
            Term::Kind(k) => tagged(b'k', k.as_bytes(), None),
            Term::Attr { key, value } => tagged(b'a', key.as_bytes(), Some(value.as_bytes())),
        }
    }
}

fn tagged(tag: u8, a: &[u8], b: Option<&[u8]>) -> u64 {
    let mut buf = Vec::with_capacity(2 + a.len() + b.map_or(0, <[u8]>::len));
    tagged_into(&mut buf, tag, a, b)
}

/// [`tagged`] with a caller's scratch buffer: one-shot hashing of `tag a 0 b` (the same value).
fn tagged_into(buf: &mut Vec<u8>, tag: u8, a: &[u8], b: Option<&[u8]>) -> u64 {
    buf.clear();
    buf.push(tag);
    buf.extend_from_slice(a);
    if let Some(b) = b {
        buf.push(0);
        buf.extend_from_slice(b);
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// Attribute values longer than this are not put in the filters (a search for one reads every
/// page its other terms allow).
pub const MAX_TERM_VALUE: usize = 256;

/// Computes the term hashes of spans as the wire scan shows them, without allocating.
#[derive(Default)]
pub(crate) struct TermSink {
    scratch: String,
    buf: Vec<u8>,
}

impl TermSink {
    /// The hash of an attribute term, or `None` for values that are not indexed.
    pub fn attr(&mut self, key: &str, value: &ValueRef<'_>) -> Option<u64> {
        self.scratch.clear();
        let text: &[u8] = match value {
            ValueRef::Str(s) => {
                if s.len() > MAX_TERM_VALUE {
                    return None;
                }
                s.as_bytes()
            }
            ValueRef::Bool(b) => {
                if *b {
                    b"true"
                } else {
                    b"false"
                }
            }
            ValueRef::Int(i) => {
                let mut digits = itoa::Buffer::new();
                self.scratch.push_str(digits.format(*i));
                self.scratch.as_bytes()
            }
            ValueRef::Double(d) => {
                // As `attr::render` writes it (Display), not ryu's shortest form.
                let _ = write!(self.scratch, "{d}");
                self.scratch.as_bytes()
            }
            ValueRef::Bytes(b) => {
                if b.len() * 2 > MAX_TERM_VALUE {
                    return None;
                }
                for byte in b.iter() {
                    let _ = write!(self.scratch, "{byte:02x}");
                }
                self.scratch.as_bytes()
            }
            ValueRef::Composite | ValueRef::Empty => return None,
        };
        Some(tagged_into(&mut self.buf, b'a', key.as_bytes(), Some(text)))
    }

    pub fn name(&mut self, name: &str) -> u64 {
        tagged_into(&mut self.buf, b'n', name.as_bytes(), None)
    }

    pub fn status(&mut self, code: i32) -> u64 {
        let s = match code {
            1 => "ok",
            2 => "error",
            _ => "unset",
        };
        tagged_into(&mut self.buf, b's', s.as_bytes(), None)
    }

    pub fn kind(&mut self, kind: i32) -> u64 {
        tagged_into(
            &mut self.buf,
            b'k',
            crate::query::kind_name(kind).as_bytes(),
            None,
        )
    }
}

/// One trace to put in a block.
pub struct TraceEntry {
    pub id: TraceId,
    pub span_count: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `TracesData` of the trace.
    pub data: Vec<u8>,
    /// Term hashes of its spans (duplicates allowed).
    pub terms: Vec<u64>,
}

/// Builds a block from traces given in ascending id order.
pub struct BlockBuilder {
    out: Vec<u8>,
    meta: BlockMeta,
    page: Vec<u8>,
    page_meta: PageMeta,
    page_terms: Vec<u64>,
    trace_keys: Vec<u64>,
    last: Option<TraceId>,
    page_target: usize,
    level: i32,
}

impl BlockBuilder {
    /// `page_target`: uncompressed (row) bytes per page; `level`: zstd level. Writes
    /// [`FORMAT`].
    pub fn new(id: String, block_level: u32, page_target: usize, zstd_level: i32) -> Self {
        let mut out = Vec::with_capacity(1 << 20);
        out.extend_from_slice(MAGIC);
        Self {
            out,
            meta: BlockMeta {
                id,
                format: FORMAT,
                level: block_level,
                start_ns: u64::MAX,
                ..Default::default()
            },
            page: Vec::new(),
            page_meta: empty_page(),
            page_terms: Vec::new(),
            trace_keys: Vec::new(),
            last: None,
            page_target,
            level: zstd_level,
        }
    }

    /// Writes block format `format` ([`FORMAT`] or [`FORMAT_ROWS`]) instead of [`FORMAT`].
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn format(mut self, format: u32) -> Result<Self, StoreError> {
        if format != FORMAT && format != FORMAT_ROWS {
            return Err(StoreError::InvalidData(format!(
                "block {}: cannot write block format {format}",
                self.meta.id
            )));
        }
        self.meta.format = format;
        Ok(self)
    }

    /// Adds a trace; traces must come in ascending id order.
    pub fn add(&mut self, entry: TraceEntry) -> Result<(), StoreError> {
        if self.last.is_some_and(|l| l >= entry.id) {
            return Err(StoreError::InvalidData(format!(
                "block {}: trace {} added out of order",
                self.meta.id,
                entry.id.to_hex()
            )));
        }
        if !self.page.is_empty() && self.page.len() + entry.data.len() > self.page_target {
            self.finish_page()?;
        }
        if self.page.is_empty() {
            self.page_meta.first_trace = entry.id.as_bytes().to_vec();
        }
        self.page_meta.last_trace = entry.id.as_bytes().to_vec();
        self.page_meta.span_count += entry.span_count;
        self.page_meta.trace_count += 1;
        self.page_meta.start_ns = self.page_meta.start_ns.min(entry.start_ns);
        self.page_meta.end_ns = self.page_meta.end_ns.max(entry.end_ns);
        push_entry(
            &mut self.page,
            entry.id.as_bytes(),
            entry.span_count,
            entry.start_ns,
            entry.end_ns,
            &entry.data,
        );
        self.page_terms.extend_from_slice(&entry.terms);
        self.trace_keys.push(trace_key(&entry.id));
        self.last = Some(entry.id);
        Ok(())
    }

    fn finish_page(&mut self) -> Result<(), StoreError> {
        if self.page.is_empty() {
            return Ok(());
        }
        let columnar;
        let body = if self.meta.format == FORMAT_ROWS {
            &self.page
        } else {
            columnar = columnar::encode(&self.page)?;
            &columnar
        };
        let raw_len = u32::try_from(body.len()).map_err(|_| {
            StoreError::InvalidData(format!(
                "block {}: a page of {} bytes is over 4 GiB",
                self.meta.id,
                body.len()
            ))
        })?;
        let compressed = zstd::bulk::compress(body, self.level)?;
        tracing::trace!(
            block = %self.meta.id,
            row_bytes = self.page.len(),
            raw_len,
            compressed = compressed.len(),
            "page written"
        );
        let mut pm = std::mem::replace(&mut self.page_meta, empty_page());
        pm.offset = self.out.len() as u64;
        pm.len = compressed.len() as u32;
        pm.crc = crc32fast::hash(&compressed);
        pm.raw_len = raw_len;
        pm.terms = KeyFilter::build(std::mem::take(&mut self.page_terms)).encode();
        self.out.extend_from_slice(&compressed);
        self.meta.span_count += pm.span_count as u64;
        self.meta.trace_count += pm.trace_count as u64;
        self.meta.raw_bytes += self.page.len() as u64;
        self.meta.start_ns = self.meta.start_ns.min(pm.start_ns);
        self.meta.end_ns = self.meta.end_ns.max(pm.end_ns);
        self.meta.pages.push(pm);
        self.page.clear();
        Ok(())
    }

    /// The block's bytes and its meta. `wal_end`, `replaces` and arrival come from the caller.
    pub fn finish(
        mut self,
        wal_end: u64,
        replaces: Vec<String>,
        newest_arrival_ns: u64,
    ) -> Result<(Vec<u8>, BlockMeta), StoreError> {
        self.finish_page()?;
        if self.meta.start_ns == u64::MAX {
            self.meta.start_ns = 0;
        }
        self.meta.created_ns = now_ns();
        self.meta.wal_end = wal_end;
        self.meta.replaces = replaces;
        self.meta.newest_arrival_ns = newest_arrival_ns;
        self.meta.trace_filter = KeyFilter::build(std::mem::take(&mut self.trace_keys)).encode();
        let meta_bytes = self.meta.encode_to_vec();
        self.out.extend_from_slice(&meta_bytes);
        self.out
            .extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        self.out
            .extend_from_slice(&crc32fast::hash(&meta_bytes).to_le_bytes());
        self.out.extend_from_slice(MAGIC);
        Ok((self.out, self.meta))
    }
}

/// Appends one row entry to a row page.
pub(crate) fn push_entry(
    page: &mut Vec<u8>,
    id: &[u8; 16],
    span_count: u32,
    start_ns: u64,
    end_ns: u64,
    data: &[u8],
) {
    page.extend_from_slice(id);
    prost::encoding::encode_varint(span_count as u64, page);
    page.extend_from_slice(&start_ns.to_le_bytes());
    page.extend_from_slice(&end_ns.to_le_bytes());
    prost::encoding::encode_varint(data.len() as u64, page);
    page.extend_from_slice(data);
}

fn empty_page() -> PageMeta {
    PageMeta {
        start_ns: u64::MAX,
        ..Default::default()
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A block's meta and filters, held in memory while the block is served.
pub struct OpenBlock {
    pub name: String,
    pub size: u64,
    pub meta: BlockMeta,
    trace_filter: KeyFilter,
    page_terms: Vec<KeyFilter>,
}

fn corrupt(name: &str, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: name.to_string(),
        problem: problem.into(),
    }
}

/// One trace of a page, borrowed from the decompressed page.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub id: TraceId,
    pub span_count: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub data: &'a [u8],
}

/// Called by [`OpenBlock::for_each_page_span`] with each span, its trace's id, start and end,
/// and its resource; returns `false` to stop.
pub type PageSpanVisit<'v> = dyn FnMut(&TraceId, u64, u64, &Span, Option<&Resource>) -> bool + 'v;

/// One trace of a page, decoded.
#[derive(Debug, Clone)]
pub struct PageTrace {
    pub id: TraceId,
    pub start_ns: u64,
    pub end_ns: u64,
    pub resource_spans: Vec<ResourceSpans>,
}

/// The entries of a decompressed page.
pub fn entries<'a>(
    name: &'a str,
    mut page: &'a [u8],
) -> impl Iterator<Item = Result<EntryRef<'a>, StoreError>> + 'a {
    std::iter::from_fn(move || {
        if page.is_empty() {
            return None;
        }
        let mut parse = || -> Result<EntryRef<'a>, StoreError> {
            let bad = |what: &str| corrupt(name, format!("page entry: {what}"));
            let id = page.get(..16).ok_or_else(|| bad("truncated trace id"))?;
            let id = TraceId::from_slice(id).map_err(|_| bad("bad trace id"))?;
            page = &page[16..];
            let spans = prost::encoding::decode_varint(&mut page).map_err(|_| bad("span count"))?;
            let times = page.get(..16).ok_or_else(|| bad("truncated times"))?;
            let start_ns = u64::from_le_bytes(times[..8].try_into().map_err(|_| bad("start"))?);
            let end_ns = u64::from_le_bytes(times[8..].try_into().map_err(|_| bad("end"))?);
            page = &page[16..];
            let len =
                prost::encoding::decode_varint(&mut page).map_err(|_| bad("length"))? as usize;
            if len > page.len() {
                return Err(bad("length past the end of the page"));
            }
            let (data, rest) = page.split_at(len);
            page = rest;
            Ok(EntryRef {
                id,
                span_count: spans as u32,
                start_ns,
                end_ns,
                data,
            })
        };
        let r = parse();
        if r.is_err() {
            page = &[];
        }
        Some(r)
    })
}

impl OpenBlock {
    /// Reads a block's meta and filters, checking magic numbers and the meta's checksum.
    pub fn open(store: &dyn BlockStore, name: &str, size: u64) -> Result<Self, StoreError> {
        if size < MAGIC.len() as u64 + FOOTER_LEN {
            return Err(corrupt(
                name,
                format!("{size} bytes is too short for a block"),
            ));
        }
        let footer = store.get_range(name, size - FOOTER_LEN..size)?;
        if &footer[8..16] != MAGIC {
            return Err(corrupt(name, "no block footer (magic number missing)"));
        }
        let meta_len = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]) as u64;
        let meta_crc = u32::from_le_bytes([footer[4], footer[5], footer[6], footer[7]]);
        if meta_len + FOOTER_LEN + MAGIC.len() as u64 > size {
            return Err(corrupt(name, "meta length past the start of the block"));
        }
        let meta_start = size - FOOTER_LEN - meta_len;
        let meta_bytes = store.get_range(name, meta_start..size - FOOTER_LEN)?;
        if crc32fast::hash(&meta_bytes) != meta_crc {
            return Err(corrupt(name, "meta checksum mismatch"));
        }
        let mut meta = BlockMeta::decode(meta_bytes.as_slice())
            .map_err(|e| corrupt(name, format!("bad meta: {e}")))?;
        if meta.format != FORMAT && meta.format != FORMAT_ROWS {
            return Err(corrupt(
                name,
                format!("unknown block format {}", meta.format),
            ));
        }
        let trace_filter = KeyFilter::decode(&meta.trace_filter).map_err(|e| corrupt(name, e))?;
        meta.trace_filter = Vec::new();
        let mut page_terms = Vec::with_capacity(meta.pages.len());
        for (i, p) in meta.pages.iter_mut().enumerate() {
            if p.offset + p.len as u64 > meta_start || p.offset < MAGIC.len() as u64 {
                return Err(corrupt(name, format!("page {i} lies outside the pages")));
            }
            page_terms.push(
                KeyFilter::decode(&p.terms).map_err(|e| corrupt(name, format!("page {i}: {e}")))?,
            );
            p.terms = Vec::new();
        }
        Ok(Self {
            name: name.to_string(),
            size,
            meta,
            trace_filter,
            page_terms,
        })
    }

    /// Whether the trace may be in this block (its filter, then its pages' id ranges).
    pub fn page_of(&self, id: &TraceId) -> Option<usize> {
        if !self.trace_filter.contains(trace_key(id)) {
            return None;
        }
        let key = id.as_bytes().as_slice();
        let i = self
            .meta
            .pages
            .partition_point(|p| p.last_trace.as_slice() < key);
        let p = self.meta.pages.get(i)?;
        (p.first_trace.as_slice() <= key).then_some(i)
    }

    /// Whether page `i` may hold a span carrying every term.
    pub fn page_may_match(&self, i: usize, terms: &[u64]) -> bool {
        let Some(filter) = self.page_terms.get(i) else {
            return false;
        };
        terms.iter().all(|t| filter.contains(*t))
    }

    /// Reads, checks and decompresses page `i` (a row page, or a columnar one in a format-2
    /// block).
    fn page_bytes(&self, store: &dyn BlockStore, i: usize) -> Result<Vec<u8>, StoreError> {
        let bytes = self.page_compressed(store, i)?;
        let mut raw = Vec::new();
        self.decompress_page(i, &bytes, &mut raw)?;
        Ok(raw)
    }

    /// Decompresses page `i`'s `bytes` into `out` (with this thread's decompression context:
    /// no context is made per page).
    fn decompress_page(&self, i: usize, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
        thread_local! {
            static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { RefCell::new(None) };
        }
        let raw_len = self.meta.pages.get(i).map_or(0, |p| p.raw_len as usize);
        let bad =
            |e: std::io::Error| corrupt(&self.name, format!("page {i}: bad compression: {e}"));
        out.clear();
        out.reserve(raw_len);
        DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let d = match cell.as_mut() {
                Some(d) => d,
                None => cell.insert(zstd::bulk::Decompressor::new().map_err(bad)?),
            };
            d.decompress_to_buffer(bytes, out).map_err(bad)?;
            Ok(())
        })
    }

    /// The compressed bytes of page `i`, their checksum checked.
    fn page_compressed(&self, store: &dyn BlockStore, i: usize) -> Result<Vec<u8>, StoreError> {
        let p = self
            .meta
            .pages
            .get(i)
            .ok_or_else(|| corrupt(&self.name, format!("no page {i}")))?;
        let bytes = store.get_range(&self.name, p.offset..p.offset + p.len as u64)?;
        if crc32fast::hash(&bytes) != p.crc {
            return Err(corrupt(&self.name, format!("page {i} checksum mismatch")));
        }
        Ok(bytes)
    }

    /// Calls `visit` with every span of page `i` (with its trace's id, start and end, and its
    /// resource), in page order, until it returns `false` (then returns `false`). In a
    /// format-2 block the spans are decoded straight from the columns into buffers reused
    /// from span to span (nothing is allocated per span once they have grown), and what
    /// `fields` leaves out is skipped, not decoded.
    pub fn for_each_page_span(
        &self,
        store: &dyn BlockStore,
        i: usize,
        fields: crate::SpanFields,
        visit: &mut PageSpanVisit<'_>,
    ) -> Result<bool, StoreError> {
        if self.meta.format == FORMAT_ROWS {
            for t in self.read_page_traces(store, i)? {
                for rs in &t.resource_spans {
                    for ss in &rs.scope_spans {
                        for span in &ss.spans {
                            if !visit(&t.id, t.start_ns, t.end_ns, span, rs.resource.as_ref()) {
                                return Ok(false);
                            }
                        }
                    }
                }
            }
            return Ok(true);
        }
        thread_local! {
            static PAGE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let bytes = self.page_compressed(store, i)?;
        PAGE.with(|cell| {
            // A visit that scans again on this thread gets a buffer of its own.
            let mut own = Vec::new();
            let mut borrowed = cell.try_borrow_mut().ok();
            let raw = borrowed.as_deref_mut().unwrap_or(&mut own);
            self.decompress_page(i, &bytes, raw)?;
            let mut id = TraceId::default();
            columnar::for_each_span(raw, fields, &mut |tid, start, end, span, resource| {
                id.0 = *tid;
                visit(&id, start, end, span, resource)
            })
            .map_err(|e| self.columnar_error(i, e))
        })
    }

    fn columnar_error(&self, i: usize, e: StoreError) -> StoreError {
        match e {
            StoreError::Corrupt { problem, .. } => {
                corrupt(&self.name, format!("page {i}: columnar: {problem}"))
            }
            other => other,
        }
    }

    /// Reads, checks and decompresses page `i`, giving its row page (decoding the columnar
    /// page of a format-2 block).
    pub fn read_page(&self, store: &dyn BlockStore, i: usize) -> Result<Vec<u8>, StoreError> {
        let raw = self.page_bytes(store, i)?;
        if self.meta.format == FORMAT_ROWS {
            return Ok(raw);
        }
        columnar::decode(&raw).map_err(|e| self.columnar_error(i, e))
    }

    /// Reads page `i` and decodes its traces (straight from the columns in a format-2 block,
    /// with no row encoding in between), in page order.
    pub fn read_page_traces(
        &self,
        store: &dyn BlockStore,
        i: usize,
    ) -> Result<Vec<PageTrace>, StoreError> {
        let raw = self.page_bytes(store, i)?;
        if self.meta.format == FORMAT_ROWS {
            let mut out = Vec::new();
            for e in entries(&self.name, &raw) {
                let e = e?;
                let data = TracesData::decode(e.data).map_err(|err| {
                    corrupt(
                        &self.name,
                        format!("trace {}: bad protobuf: {err}", e.id.to_hex()),
                    )
                })?;
                out.push(PageTrace {
                    id: e.id,
                    start_ns: e.start_ns,
                    end_ns: e.end_ns,
                    resource_spans: data.resource_spans,
                });
            }
            return Ok(out);
        }
        let traces = columnar::decode_traces(&raw).map_err(|e| self.columnar_error(i, e))?;
        Ok(traces
            .into_iter()
            .map(|t| PageTrace {
                id: TraceId(t.id),
                start_ns: t.start_ns,
                end_ns: t.end_ns,
                resource_spans: t.data.resource_spans,
            })
            .collect())
    }

    /// The trace's entry (`TracesData` bytes) in this block, if it is here.
    pub fn find(
        &self,
        store: &dyn BlockStore,
        id: &TraceId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(i) = self.page_of(id) else {
            return Ok(None);
        };
        if self.meta.format != FORMAT_ROWS {
            // Only this trace decoded (and re-encoded), not the page.
            let raw = self.page_bytes(store, i)?;
            let found = columnar::find_trace(&raw, &id.0).map_err(|e| self.columnar_error(i, e))?;
            return Ok(found.map(|t| t.data.encode_to_vec()));
        }
        let page = self.read_page(store, i)?;
        for e in entries(&self.name, &page) {
            let e = e?;
            if e.id == *id {
                return Ok(Some(e.data.to_vec()));
            }
        }
        Ok(None)
    }

    /// Reads every page and checks checksums, compression, entries and counts against the meta.
    pub fn verify(&self, store: &dyn BlockStore) -> Result<(), StoreError> {
        let (mut spans, mut traces) = (0u64, 0u64);
        for (i, p) in self.meta.pages.iter().enumerate() {
            let page = self.read_page(store, i)?;
            let (mut ps, mut pt) = (0u32, 0u32);
            let mut last: Option<TraceId> = None;
            for e in entries(&self.name, &page) {
                let e = e?;
                if last.is_some_and(|l| l >= e.id) {
                    return Err(corrupt(
                        &self.name,
                        format!("page {i}: traces out of order"),
                    ));
                }
                last = Some(e.id);
                ps += e.span_count;
                pt += 1;
            }
            if ps != p.span_count || pt != p.trace_count {
                return Err(corrupt(
                    &self.name,
                    format!(
                        "page {i}: {pt} traces and {ps} spans, the meta says {} and {}",
                        p.trace_count, p.span_count
                    ),
                ));
            }
            spans += ps as u64;
            traces += pt as u64;
        }
        if spans != self.meta.span_count || traces != self.meta.trace_count {
            return Err(corrupt(
                &self.name,
                format!(
                    "{traces} traces and {spans} spans, the meta says {} and {}",
                    self.meta.trace_count, self.meta.span_count
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of filters held in memory.
    pub fn memory(&self) -> usize {
        self.trace_filter.memory() + self.page_terms.iter().map(KeyFilter::memory).sum::<usize>()
    }
}

/// The object name of a block id.
pub fn object_name(id: &str) -> String {
    format!("{id}{SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::columnar::tests::{normalize, random_entries, realistic_entries, TestEntry};
    use super::*;
    use crate::blockstore::LocalBlockStore;

    /// Writes `entries` as a block of `format` (small pages) and opens it.
    fn write_block(
        store: &LocalBlockStore,
        id: &str,
        format: u32,
        entries: &[TestEntry],
    ) -> OpenBlock {
        let mut b = BlockBuilder::new(id.to_string(), 0, 16 * 1024, 1)
            .format(format)
            .unwrap();
        for e in entries {
            b.add(TraceEntry {
                id: TraceId(e.id),
                span_count: e.span_count,
                start_ns: e.start_ns,
                end_ns: e.end_ns,
                data: e.data.encode_to_vec(),
                terms: vec![1, 2, 3],
            })
            .unwrap();
        }
        let (bytes, meta) = b.finish(7, Vec::new(), 1).unwrap();
        assert_eq!(meta.format, format);
        let name = object_name(id);
        let size = bytes.len() as u64;
        store.put(&name, bytes).unwrap();
        OpenBlock::open(store, &name, size).unwrap()
    }

    fn check_block(store: &LocalBlockStore, block: &OpenBlock, entries: &[TestEntry], exact: bool) {
        block.verify(store).unwrap();
        let mut n = 0;
        for i in 0..block.meta.pages.len() {
            let page = block.read_page(store, i).unwrap();
            for e in super::entries(&block.name, &page) {
                let e = e.unwrap();
                let want = &entries[n];
                assert_eq!(e.id, TraceId(want.id));
                assert_eq!(
                    (e.span_count, e.start_ns, e.end_ns),
                    (want.span_count, want.start_ns, want.end_ns)
                );
                let data = if exact {
                    want.data.encode_to_vec()
                } else {
                    normalize(&want.data).encode_to_vec()
                };
                assert_eq!(e.data, data.as_slice());
                n += 1;
            }
        }
        assert_eq!(n, entries.len());
        let last = entries.last().unwrap();
        assert!(block.find(store, &TraceId(last.id)).unwrap().is_some());
    }

    #[test]
    fn format_1_blocks_written_by_the_row_path_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlockStore::open(dir.path()).unwrap();
        let entries = realistic_entries(5, 3000);
        let old = write_block(&store, "old-rows", FORMAT_ROWS, &entries);
        assert_eq!(old.meta.format, 1);
        assert!(old.meta.pages.len() > 1);
        // A row page's raw length is the row page.
        assert_eq!(
            old.meta.raw_bytes,
            old.meta.pages.iter().map(|p| p.raw_len as u64).sum::<u64>()
        );
        check_block(&store, &old, &entries, true);

        let new = write_block(&store, "new-columnar", FORMAT, &entries);
        assert_eq!(new.meta.format, 2);
        // raw_bytes stays the row bytes; raw_len is what zstd gives back (columnar).
        assert_eq!(new.meta.raw_bytes, old.meta.raw_bytes);
        assert!(new.meta.pages.iter().map(|p| p.raw_len as u64).sum::<u64>() < new.meta.raw_bytes);
        assert!(new.size < old.size, "{} vs {}", new.size, old.size);
        check_block(&store, &new, &entries, false);
    }

    #[test]
    fn random_traces_round_trip_through_a_format_2_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlockStore::open(dir.path()).unwrap();
        let entries = random_entries(99, 40);
        let block = write_block(&store, "random", FORMAT, &entries);
        check_block(&store, &block, &entries, false);
    }

    #[test]
    fn unknown_formats_are_refused() {
        assert!(BlockBuilder::new("x".into(), 0, 1024, 1).format(3).is_err());
    }
}
