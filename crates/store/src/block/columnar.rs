//! The columnar page codec of block format 2 (core logic, no I/O).
//!
//! [`encode`] turns a row page (the entries [`super::entries`] iterates, each a `TracesData`)
//! into a columnar page; [`decode`] turns it back into a row page holding the same entries in
//! the same order, whose `TracesData` decode to the same spans, resources and scopes. Spans of
//! a trace come back grouped by (resource, scope) in first-appearance order; every field of
//! every span is kept exactly (doubles bit for bit).
//!
//! Layout (every count and length a varint):
//!
//! ```text
//! version (1 byte) | row page length | traces | spans | dictionary strings | resources | scopes
//! | stream 0 length | stream 0 | stream 1 length | stream 1 | ...   (the streams of `Stream`)
//! ```
//!
//! Each stream holds one kind of value for every trace or span of the page, contiguously, so
//! that zstd (applied to the whole columnar page afterwards) sees homogeneous data: raw 8-byte
//! span ids together, small delta varints together, dictionary indexes together. Strings
//! (names, keys, string values, trace states, status messages, event names) are stored once in
//! a page-level dictionary in first-seen order and referenced by index (0 for a string not
//! seen before, so that strings used once cost nothing but their bytes); string values that
//! are lowercase UUIDs are stored as their 16 bytes instead. Resources and scopes
//! are tables of distinct encodings referenced per span. A parent is the distance to the
//! parent's position in its trace (or an escape and the raw id when the parent is not in the
//! trace); a start is a delta from the parent's start (or the previous span's, or the
//! trace's); an end is the duration.

use prost::Message;
use rustc_hash::FxHashMap;
use sextant_otlp_proto::proto::common::{any_value, AnyValue, ArrayValue, KeyValue, KeyValueList};
use sextant_otlp_proto::proto::{span, InstrumentationScope, Resource, ResourceSpans};
use sextant_otlp_proto::proto::{ScopeSpans, Span, Status, TracesData};

use super::{entries, push_entry};
use crate::error::StoreError;
use crate::SpanFields;

/// The codec version, the first byte of a columnar page.
const VERSION: u8 = 1;

/// The streams of a columnar page, in the order they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Stream {
    /// Per trace: its id, 16 raw bytes.
    TraceId,
    /// Per trace: zigzag delta of its start from the previous trace's start.
    TraceStart,
    /// Per trace: zigzag of end - start.
    TraceEnd,
    /// Per trace: the spans in its `TracesData`.
    TraceLen,
    /// Per trace: zigzag of (the entry's span count - the spans in its data), 0 normally.
    TraceCount,
    /// Dictionary: the length of each string.
    DictLen,
    /// Dictionary: the strings' bytes, concatenated.
    DictBytes,
    /// Resources: presence byte, encoded `Resource`, schema url (both length-prefixed).
    Resources,
    /// Scopes: presence byte, encoded `InstrumentationScope`, schema url.
    Scopes,
    /// Per span: index in the resource table.
    SpanResource,
    /// Per span: index in the scope table.
    SpanScope,
    /// Per span: which optional parts it has (`F_*`).
    SpanFlags,
    /// Per span with an 8-byte id: the id.
    SpanId,
    /// Length-prefixed ids that are not the usual shape (escapes).
    RawIds,
    /// Per span: 0 no parent, 1 parent not in the trace (raw id in `RawIds`), else
    /// 2 + zigzag(position - parent position).
    Parent,
    /// Per span and link with a trace state: dictionary index.
    TraceState,
    /// Per span: dictionary index of its name.
    Name,
    /// Per span: its kind.
    Kind,
    /// Per span: zigzag delta of its start from its base (parent, previous span or trace).
    Start,
    /// Per span: zigzag of end - start.
    Duration,
    /// Per span and link: the W3C flags.
    TraceFlags,
    /// Per span with a status: its code.
    StatusCode,
    /// Per span with a status: dictionary index of its message.
    StatusMessage,
    /// Dropped counts: per span with any (attributes, events, links), per event and per link.
    Dropped,
    /// Per span, event and link: the number of attributes.
    AttrCount,
    /// Per attribute: dictionary index of its key.
    AttrKey,
    /// Per attribute: its value's type (`T_*`, with `T_KEY_STRINDEX` when it has one).
    AttrType,
    /// Per string attribute: dictionary index.
    AttrStr,
    /// Per int attribute (and string index): zigzag varint.
    AttrInt,
    /// Per double attribute: its 8 bytes (little endian bits).
    AttrDouble,
    /// Per bool attribute: 0 or 1.
    AttrBool,
    /// Per bytes, array and kvlist attribute: length-prefixed bytes (encoded message).
    AttrBlob,
    /// Per string attribute that is a lowercase hyphenated UUID: its 16 bytes.
    AttrUuid,
    /// Per span with events: how many.
    EventCount,
    /// Per event: zigzag delta of its time from the span's start.
    EventTime,
    /// Per event: dictionary index of its name.
    EventName,
    /// Per span with links: how many.
    LinkCount,
    /// Per link: its trace id and span id, length-prefixed.
    LinkIds,
}

/// Number of streams.
const STREAMS: usize = Stream::LinkIds as usize + 1;

/// Stream names, for errors and statistics.
const STREAM_NAMES: [&str; STREAMS] = [
    "trace ids",
    "trace starts",
    "trace ends",
    "trace span counts",
    "trace entry counts",
    "dictionary lengths",
    "dictionary bytes",
    "resources",
    "scopes",
    "span resources",
    "span scopes",
    "span flags",
    "span ids",
    "raw ids",
    "parents",
    "trace states",
    "names",
    "kinds",
    "starts",
    "durations",
    "trace flags",
    "status codes",
    "status messages",
    "dropped counts",
    "attribute counts",
    "attribute keys",
    "attribute types",
    "string values",
    "int values",
    "double values",
    "bool values",
    "blob values",
    "uuid values",
    "event counts",
    "event times",
    "event names",
    "link counts",
    "link ids",
];

/// Span flags: the span id is not 8 bytes (it is in `RawIds`).
const F_RAW_SPAN_ID: u8 = 1;
/// The span's trace id is not its entry's (it is in `RawIds`).
const F_RAW_TRACE_ID: u8 = 2;
/// The span has a trace state.
const F_TRACE_STATE: u8 = 4;
/// The span has a status.
const F_STATUS: u8 = 8;
/// The span has dropped counts.
const F_DROPPED: u8 = 16;
/// The span has events.
const F_EVENTS: u8 = 32;
/// The span has links.
const F_LINKS: u8 = 64;

/// Attribute types: a `KeyValue` without a value.
const T_NONE: u8 = 0;
/// An `AnyValue` without a value.
const T_EMPTY: u8 = 1;
const T_STR: u8 = 2;
const T_BOOL: u8 = 3;
const T_INT: u8 = 4;
const T_DOUBLE: u8 = 5;
const T_BYTES: u8 = 6;
const T_ARRAY: u8 = 7;
const T_KVLIST: u8 = 8;
const T_STRINDEX: u8 = 9;
/// A string value that is a lowercase hyphenated UUID (`8-4-4-4-12` hex digits), stored as
/// its 16 bytes: random ids compress badly as text.
const T_UUID: u8 = 10;
/// Or-ed into the type when the `KeyValue` has a `key_strindex` (in `AttrInt`, before any
/// int value).
const T_KEY_STRINDEX: u8 = 0x80;

/// Parent references below this are not positions.
const PARENT_NONE: u64 = 0;
const PARENT_RAW: u64 = 1;
const PARENT_POS: u64 = 2;

/// Traces with more spans than this look their parents up in a hash map.
const LINEAR_LOOKUP_MAX: usize = 48;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The 16 bytes of a lowercase hyphenated UUID, if `s` is exactly one.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hi = hex_digit(b[i])?;
        let lo = hex_digit(b[i + 1])?;
        out[n] = hi << 4 | lo;
        n += 1;
        i += 2;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The text of a UUID's bytes, as [`parse_uuid`] reads it.
/// Appends the hyphenated lowercase text of a UUID to `s`.
fn format_uuid_into(b: &[u8; 16], s: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.reserve(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
}

fn id8(id: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(id).ok().map(u64::from_le_bytes)
}

/// Builds the streams of one page.
struct Encoder {
    streams: [Vec<u8>; STREAMS],
    dict: FxHashMap<String, u32>,
    resources: FxHashMap<Vec<u8>, u32>,
    scopes: FxHashMap<Vec<u8>, u32>,
    scratch: Vec<u8>,
    /// Per position in the current trace: its 8-byte span id (if it has one) and start.
    ids: Vec<Option<u64>>,
    starts: Vec<u64>,
    /// Span id -> first position, for big traces.
    positions: FxHashMap<u64, u32>,
    traces: u64,
    spans: u64,
}

impl Encoder {
    fn new() -> Self {
        Self {
            streams: std::array::from_fn(|_| Vec::new()),
            dict: FxHashMap::default(),
            resources: FxHashMap::default(),
            scopes: FxHashMap::default(),
            scratch: Vec::new(),
            ids: Vec::new(),
            starts: Vec::new(),
            positions: FxHashMap::default(),
            traces: 0,
            spans: 0,
        }
    }

    fn buf(&mut self, s: Stream) -> &mut Vec<u8> {
        &mut self.streams[s as usize]
    }

    fn varint(&mut self, s: Stream, v: u64) {
        prost::encoding::encode_varint(v, &mut self.streams[s as usize]);
    }

    fn bytes(&mut self, s: Stream, b: &[u8]) {
        let buf = &mut self.streams[s as usize];
        prost::encoding::encode_varint(b.len() as u64, buf);
        buf.extend_from_slice(b);
    }

    /// The dictionary index of `s`, adding it when new.
    /// The reference to `s`: 0 for a string not seen before (it is added to the dictionary,
    /// whose strings are in first-seen order, so its index is implied), else 1 + its index.
    /// Strings used once (ids in values) thus cost a zero that compresses to nothing.
    fn string(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.dict.get(s) {
            return i as u64 + 1;
        }
        let i = self.dict.len() as u32;
        self.dict.insert(s.to_owned(), i);
        self.varint(Stream::DictLen, s.len() as u64);
        self.buf(Stream::DictBytes).extend_from_slice(s.as_bytes());
        0
    }

    fn string_to(&mut self, stream: Stream, s: &str) {
        let r = self.string(s);
        self.varint(stream, r);
    }

    /// The table index of a resource or scope whose table entry is in `scratch`.
    fn table_index(&mut self, scopes: bool) -> u32 {
        let (table, stream) = if scopes {
            (&mut self.scopes, Stream::Scopes)
        } else {
            (&mut self.resources, Stream::Resources)
        };
        if let Some(&i) = table.get(self.scratch.as_slice()) {
            return i;
        }
        let i = table.len() as u32;
        table.insert(self.scratch.clone(), i);
        self.streams[stream as usize].extend_from_slice(&self.scratch);
        i
    }

    fn table_entry<M: Message>(&mut self, message: Option<&M>, schema_url: &str) {
        self.scratch.clear();
        match message {
            None => self.scratch.push(0),
            Some(m) => {
                self.scratch.push(1);
                prost::encoding::encode_varint(m.encoded_len() as u64, &mut self.scratch);
                m.encode_raw(&mut self.scratch);
            }
        }
        prost::encoding::encode_varint(schema_url.len() as u64, &mut self.scratch);
        self.scratch.extend_from_slice(schema_url.as_bytes());
    }

    fn trace(
        &mut self,
        id: &[u8],
        span_count: u32,
        start_ns: u64,
        end_ns: u64,
        prev_start: u64,
        data: &TracesData,
    ) {
        self.traces += 1;
        self.buf(Stream::TraceId).extend_from_slice(id);
        self.varint(
            Stream::TraceStart,
            zigzag(start_ns.wrapping_sub(prev_start) as i64),
        );
        self.varint(
            Stream::TraceEnd,
            zigzag(end_ns.wrapping_sub(start_ns) as i64),
        );
        self.ids.clear();
        self.starts.clear();
        for rs in &data.resource_spans {
            for ss in &rs.scope_spans {
                self.ids.extend(ss.spans.iter().map(|s| id8(&s.span_id)));
            }
        }
        let n = self.ids.len();
        self.spans += n as u64;
        self.varint(Stream::TraceLen, n as u64);
        self.varint(Stream::TraceCount, zigzag(span_count as i64 - n as i64));
        self.positions.clear();
        if n > LINEAR_LOOKUP_MAX {
            for (i, sid) in self.ids.iter().enumerate() {
                if let Some(sid) = sid {
                    self.positions.entry(*sid).or_insert(i as u32);
                }
            }
        }
        let mut pos = 0usize;
        let mut prev = start_ns;
        for rs in &data.resource_spans {
            self.table_entry(rs.resource.as_ref(), &rs.schema_url);
            let r = self.table_index(false);
            for ss in &rs.scope_spans {
                self.table_entry(ss.scope.as_ref(), &ss.schema_url);
                let sc = self.table_index(true);
                for s in &ss.spans {
                    self.varint(Stream::SpanResource, r as u64);
                    self.varint(Stream::SpanScope, sc as u64);
                    self.span(id, pos, prev, s);
                    prev = s.start_time_unix_nano;
                    pos += 1;
                }
            }
        }
    }

    fn parent_position(&self, parent: &[u8]) -> Option<usize> {
        let p = id8(parent)?;
        if self.ids.len() > LINEAR_LOOKUP_MAX {
            self.positions.get(&p).map(|&i| i as usize)
        } else {
            self.ids.iter().position(|i| *i == Some(p))
        }
    }

    fn span(&mut self, trace_id: &[u8], pos: usize, prev_start: u64, s: &Span) {
        let mut flags = 0u8;
        if s.span_id.len() == 8 {
            self.buf(Stream::SpanId).extend_from_slice(&s.span_id);
        } else {
            flags |= F_RAW_SPAN_ID;
            self.bytes(Stream::RawIds, &s.span_id);
        }
        if s.trace_id != trace_id {
            flags |= F_RAW_TRACE_ID;
            self.bytes(Stream::RawIds, &s.trace_id);
        }
        let mut base = prev_start;
        if s.parent_span_id.is_empty() {
            self.varint(Stream::Parent, PARENT_NONE);
        } else if let Some(p) = self.parent_position(&s.parent_span_id) {
            self.varint(Stream::Parent, PARENT_POS + zigzag(pos as i64 - p as i64));
            if let Some(&ps) = self.starts.get(p) {
                base = ps;
            }
        } else {
            self.varint(Stream::Parent, PARENT_RAW);
            self.bytes(Stream::RawIds, &s.parent_span_id);
        }
        self.starts.push(s.start_time_unix_nano);
        self.varint(
            Stream::Start,
            zigzag(s.start_time_unix_nano.wrapping_sub(base) as i64),
        );
        self.varint(
            Stream::Duration,
            zigzag(s.end_time_unix_nano.wrapping_sub(s.start_time_unix_nano) as i64),
        );
        if !s.trace_state.is_empty() {
            flags |= F_TRACE_STATE;
            self.string_to(Stream::TraceState, &s.trace_state);
        }
        self.string_to(Stream::Name, &s.name);
        self.varint(Stream::Kind, s.kind as u32 as u64);
        self.varint(Stream::TraceFlags, s.flags as u64);
        if let Some(st) = &s.status {
            flags |= F_STATUS;
            self.varint(Stream::StatusCode, st.code as u32 as u64);
            self.string_to(Stream::StatusMessage, &st.message);
        }
        if s.dropped_attributes_count != 0
            || s.dropped_events_count != 0
            || s.dropped_links_count != 0
        {
            flags |= F_DROPPED;
            self.varint(Stream::Dropped, s.dropped_attributes_count as u64);
            self.varint(Stream::Dropped, s.dropped_events_count as u64);
            self.varint(Stream::Dropped, s.dropped_links_count as u64);
        }
        self.attributes(&s.attributes);
        if !s.events.is_empty() {
            flags |= F_EVENTS;
            self.varint(Stream::EventCount, s.events.len() as u64);
            for e in &s.events {
                self.varint(
                    Stream::EventTime,
                    zigzag(e.time_unix_nano.wrapping_sub(s.start_time_unix_nano) as i64),
                );
                self.string_to(Stream::EventName, &e.name);
                self.attributes(&e.attributes);
                self.varint(Stream::Dropped, e.dropped_attributes_count as u64);
            }
        }
        if !s.links.is_empty() {
            flags |= F_LINKS;
            self.varint(Stream::LinkCount, s.links.len() as u64);
            for l in &s.links {
                self.bytes(Stream::LinkIds, &l.trace_id);
                self.bytes(Stream::LinkIds, &l.span_id);
                self.string_to(Stream::TraceState, &l.trace_state);
                self.attributes(&l.attributes);
                self.varint(Stream::Dropped, l.dropped_attributes_count as u64);
                self.varint(Stream::TraceFlags, l.flags as u64);
            }
        }
        self.buf(Stream::SpanFlags).push(flags);
    }

    fn attributes(&mut self, attrs: &[KeyValue]) {
        self.varint(Stream::AttrCount, attrs.len() as u64);
        for kv in attrs {
            self.string_to(Stream::AttrKey, &kv.key);
            let strindex = if kv.key_strindex != 0 {
                self.varint(Stream::AttrInt, zigzag(kv.key_strindex as i64));
                T_KEY_STRINDEX
            } else {
                0
            };
            let t = match kv.value.as_ref().map(|v| v.value.as_ref()) {
                None => T_NONE,
                Some(None) => T_EMPTY,
                Some(Some(v)) => self.value(v),
            };
            self.buf(Stream::AttrType).push(t | strindex);
        }
    }

    fn value(&mut self, v: &any_value::Value) -> u8 {
        use any_value::Value as V;
        match v {
            V::StringValue(s) => {
                if let Some(u) = parse_uuid(s) {
                    self.buf(Stream::AttrUuid).extend_from_slice(&u);
                    return T_UUID;
                }
                self.string_to(Stream::AttrStr, s);
                T_STR
            }
            V::BoolValue(b) => {
                self.buf(Stream::AttrBool).push(u8::from(*b));
                T_BOOL
            }
            V::IntValue(i) => {
                self.varint(Stream::AttrInt, zigzag(*i));
                T_INT
            }
            V::DoubleValue(d) => {
                self.buf(Stream::AttrDouble)
                    .extend_from_slice(&d.to_bits().to_le_bytes());
                T_DOUBLE
            }
            V::BytesValue(b) => {
                self.bytes(Stream::AttrBlob, b);
                T_BYTES
            }
            V::ArrayValue(a) => {
                let buf = &mut self.streams[Stream::AttrBlob as usize];
                prost::encoding::encode_varint(a.encoded_len() as u64, buf);
                a.encode_raw(buf);
                T_ARRAY
            }
            V::KvlistValue(l) => {
                let buf = &mut self.streams[Stream::AttrBlob as usize];
                prost::encoding::encode_varint(l.encoded_len() as u64, buf);
                l.encode_raw(buf);
                T_KVLIST
            }
            V::StringValueStrindex(i) => {
                self.varint(Stream::AttrInt, zigzag(*i as i64));
                T_STRINDEX
            }
        }
    }
}

/// Encodes a row page (as `BlockBuilder` builds it) as a columnar page.
pub(crate) fn encode(page: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut enc = Encoder::new();
    let mut prev_start = 0u64;
    for entry in entries("row page", page) {
        let entry = entry?;
        let data = TracesData::decode(entry.data).map_err(|e| {
            StoreError::InvalidData(format!(
                "trace {}: its TracesData does not decode: {e}",
                entry.id.to_hex()
            ))
        })?;
        enc.trace(
            entry.id.as_bytes(),
            entry.span_count,
            entry.start_ns,
            entry.end_ns,
            prev_start,
            &data,
        );
        prev_start = entry.start_ns;
    }
    let total: usize = enc.streams.iter().map(|s| s.len() + 5).sum();
    let mut out = Vec::with_capacity(total + 64);
    out.push(VERSION);
    for v in [
        page.len() as u64,
        enc.traces,
        enc.spans,
        enc.dict.len() as u64,
        enc.resources.len() as u64,
        enc.scopes.len() as u64,
    ] {
        prost::encoding::encode_varint(v, &mut out);
    }
    for s in &enc.streams {
        prost::encoding::encode_varint(s.len() as u64, &mut out);
        out.extend_from_slice(s);
    }
    Ok(out)
}

fn bad(problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: "columnar page".to_string(),
        problem: problem.into(),
    }
}

/// Reads one stream (or the header), every read checked.
#[derive(Clone, Copy)]
struct Reader<'a> {
    name: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> StoreError {
        bad(format!("{}: {what}", self.name))
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, StoreError> {
        // Most values here (indexes, counts, flags) fit one byte.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(u64::from(b));
            }
        }
        prost::encoding::decode_varint(&mut self.buf).map_err(|_| self.err("bad or missing varint"))
    }

    fn zigzag(&mut self) -> Result<i64, StoreError> {
        self.varint().map(unzigzag)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| self.err("value over 32 bits"))
    }

    fn i32(&mut self) -> Result<i32, StoreError> {
        self.u32().map(|v| v as i32)
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if n > self.buf.len() {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn prefixed(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.err("length too big"))?;
        self.take(n)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let b = self.take(N)?;
        <[u8; N]>::try_from(b).map_err(|_| self.err("truncated"))
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err(&format!("{} bytes left over", self.buf.len())))
        }
    }
}

/// A resource or a scope of the page's tables.
struct TableEntry<M> {
    message: Option<M>,
    schema_url: String,
    /// Encoded size (a lower bound of what a copy adds to the output).
    cost: usize,
}

fn read_table<M: Message + Default>(
    r: &mut Reader<'_>,
    count: u64,
) -> Result<Vec<TableEntry<M>>, StoreError> {
    let mut table = Vec::new();
    for _ in 0..count {
        let message = match r.byte()? {
            0 => None,
            1 => {
                let b = r.prefixed()?;
                Some(M::decode(b).map_err(|e| r.err(&format!("bad message: {e}")))?)
            }
            other => return Err(r.err(&format!("bad presence byte {other}"))),
        };
        let url = r.prefixed()?;
        let schema_url = std::str::from_utf8(url)
            .map_err(|_| r.err("schema url is not UTF-8"))?
            .to_string();
        let cost = message.as_ref().map_or(0, M::encoded_len) + schema_url.len();
        table.push(TableEntry {
            message,
            schema_url,
            cost,
        });
    }
    r.end()?;
    Ok(table)
}

/// Decodes a columnar page.
struct Decoder<'a> {
    r: [Reader<'a>; STREAMS],
    /// The page's strings: `Err` until first resolved, then `Ok` once checked to be UTF-8 (a
    /// scan that skips attributes never pays for checking their strings).
    dict: Vec<Result<&'a str, &'a [u8]>>,
    /// Dictionary strings referenced so far (the next new string's index).
    seen: usize,
    /// Bytes the output may still grow by (the length of the row page it was encoded from,
    /// declared in the header; the decoded page is never longer, as regrouping only merges):
    /// bounds what a corrupt page can make us allocate.
    budget: u64,
    /// What [`Self::span_into`] fills in; the rest is skipped (read past, not decoded).
    fields: SpanFields,
}

impl<'a> Decoder<'a> {
    fn r(&mut self, s: Stream) -> &mut Reader<'a> {
        &mut self.r[s as usize]
    }

    fn charge(&mut self, n: usize) -> Result<(), StoreError> {
        self.budget = self
            .budget
            .checked_sub(n as u64)
            .ok_or_else(|| bad("the data is larger than the row page length"))?;
        Ok(())
    }

    /// The next string reference of stream `s`, resolved in the dictionary.
    fn str_ref(&mut self, s: Stream) -> Result<&'a str, StoreError> {
        let r = self.r(s).varint()?;
        let i = if r == 0 {
            let i = self.seen;
            self.seen += 1;
            i
        } else if r - 1 < self.seen as u64 {
            (r - 1) as usize
        } else {
            return Err(bad(format!(
                "{}: reference {r} to a string not seen yet",
                STREAM_NAMES[s as usize]
            )));
        };
        let slot = self.dict.get_mut(i).ok_or_else(|| {
            bad(format!(
                "{}: no dictionary string {i}",
                STREAM_NAMES[s as usize]
            ))
        })?;
        let text = match *slot {
            Ok(text) => text,
            Err(bytes) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| bad("dictionary bytes: a string is not UTF-8"))?;
                *slot = Ok(text);
                text
            }
        };
        self.charge(text.len())?;
        Ok(text)
    }

    /// Reads past the next string reference of stream `s`, counting it like
    /// [`Self::str_ref`] does (so later references resolve the same), without its text.
    fn skip_str(&mut self, s: Stream) -> Result<(), StoreError> {
        let r = self.r(s).varint()?;
        if r == 0 {
            if self.seen >= self.dict.len() {
                return Err(bad(format!(
                    "{}: no dictionary string {}",
                    STREAM_NAMES[s as usize], self.seen
                )));
            }
            self.seen += 1;
        } else if r > self.seen as u64 {
            return Err(bad(format!(
                "{}: reference {r} to a string not seen yet",
                STREAM_NAMES[s as usize]
            )));
        }
        Ok(())
    }

    /// Reads past the next attribute list (what [`Self::attributes_into`] would decode).
    fn skip_attributes(&mut self) -> Result<(), StoreError> {
        let n = self.r(Stream::AttrCount).varint()?;
        if n > self.budget / 2 + 1 {
            return Err(bad("attribute counts: more attributes than the page holds"));
        }
        for _ in 0..n {
            self.skip_str(Stream::AttrKey)?;
            let t = self.r(Stream::AttrType).byte()?;
            if t & T_KEY_STRINDEX != 0 {
                self.r(Stream::AttrInt).varint()?;
            }
            match t & !T_KEY_STRINDEX {
                T_NONE | T_EMPTY => {}
                T_STR => self.skip_str(Stream::AttrStr)?,
                T_UUID => {
                    self.r(Stream::AttrUuid).array::<16>()?;
                }
                T_BOOL => {
                    self.r(Stream::AttrBool).byte()?;
                }
                T_INT | T_STRINDEX => {
                    self.r(Stream::AttrInt).varint()?;
                }
                T_DOUBLE => {
                    self.r(Stream::AttrDouble).array::<8>()?;
                }
                T_BYTES | T_ARRAY | T_KVLIST => {
                    self.r(Stream::AttrBlob).prefixed()?;
                }
                other => return Err(bad(format!("attribute types: unknown type {other}"))),
            }
        }
        Ok(())
    }

    /// The next string of stream `s`, into `out` (whose allocation is reused).
    fn string_into(&mut self, s: Stream, out: &mut String) -> Result<(), StoreError> {
        let text = self.str_ref(s)?;
        out.clear();
        out.push_str(text);
        Ok(())
    }

    fn string(&mut self, s: Stream) -> Result<String, StoreError> {
        self.str_ref(s).map(str::to_string)
    }

    fn raw_id_into(&mut self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let b = self.r(Stream::RawIds).prefixed()?;
        self.charge(b.len())?;
        out.clear();
        out.extend_from_slice(b);
        Ok(())
    }

    /// The next attribute list, into `out` (keys, string values and the list itself reuse
    /// what `out` held).
    fn attributes_into(&mut self, out: &mut Vec<KeyValue>) -> Result<(), StoreError> {
        let n = self.r(Stream::AttrCount).varint()?;
        let n = usize::try_from(n).map_err(|_| bad("attribute counts: count too big"))?;
        // Each attribute costs at least two bytes of the row page: a corrupt count cannot
        // make `out` grow past what the page declares.
        if n as u64 > self.budget / 2 + 1 {
            return Err(bad("attribute counts: more attributes than the page holds"));
        }
        out.truncate(n);
        for i in 0..n {
            if i == out.len() {
                out.push(KeyValue::default());
            }
            let kv = &mut out[i];
            let text = self.str_ref(Stream::AttrKey)?;
            kv.key.clear();
            kv.key.push_str(text);
            let t = self.r(Stream::AttrType).byte()?;
            kv.key_strindex = if t & T_KEY_STRINDEX != 0 {
                self.r(Stream::AttrInt).zigzag()? as i32
            } else {
                0
            };
            match t & !T_KEY_STRINDEX {
                T_NONE => kv.value = None,
                T_EMPTY => kv.value = Some(AnyValue { value: None }),
                t => {
                    let mut old = kv.value.take().and_then(|v| v.value);
                    self.value_into(t, &mut old)?;
                    kv.value = Some(AnyValue { value: old });
                }
            }
            self.charge(2)?;
        }
        Ok(())
    }

    fn attributes(&mut self) -> Result<Vec<KeyValue>, StoreError> {
        let mut attrs = Vec::new();
        self.attributes_into(&mut attrs)?;
        Ok(attrs)
    }

    /// A value of type `t` into `slot` (a string value reuses the string `slot` held).
    fn value_into(&mut self, t: u8, slot: &mut Option<any_value::Value>) -> Result<(), StoreError> {
        use any_value::Value as V;
        let reuse = |slot: &mut Option<V>| match slot.take() {
            Some(V::StringValue(mut s)) => {
                s.clear();
                s
            }
            _ => String::new(),
        };
        *slot = Some(match t {
            T_STR => {
                let text = self.str_ref(Stream::AttrStr)?;
                let mut s = reuse(slot);
                s.push_str(text);
                V::StringValue(s)
            }
            T_UUID => {
                let u = self.r(Stream::AttrUuid).array::<16>()?;
                self.charge(36)?;
                let mut s = reuse(slot);
                format_uuid_into(&u, &mut s);
                V::StringValue(s)
            }
            T_BOOL => match self.r(Stream::AttrBool).byte()? {
                0 => V::BoolValue(false),
                1 => V::BoolValue(true),
                other => return Err(bad(format!("bool values: {other} is not a bool"))),
            },
            T_INT => V::IntValue(self.r(Stream::AttrInt).zigzag()?),
            T_DOUBLE => V::DoubleValue(f64::from_bits(u64::from_le_bytes(
                self.r(Stream::AttrDouble).array::<8>()?,
            ))),
            T_BYTES => {
                let b = self.r(Stream::AttrBlob).prefixed()?;
                self.charge(b.len())?;
                V::BytesValue(b.to_vec())
            }
            T_ARRAY => {
                let b = self.r(Stream::AttrBlob).prefixed()?;
                self.charge(b.len())?;
                V::ArrayValue(
                    ArrayValue::decode(b)
                        .map_err(|e| bad(format!("blob values: bad array: {e}")))?,
                )
            }
            T_KVLIST => {
                let b = self.r(Stream::AttrBlob).prefixed()?;
                self.charge(b.len())?;
                V::KvlistValue(
                    KeyValueList::decode(b)
                        .map_err(|e| bad(format!("blob values: bad kvlist: {e}")))?,
                )
            }
            T_STRINDEX => V::StringValueStrindex(self.r(Stream::AttrInt).zigzag()? as i32),
            other => return Err(bad(format!("attribute types: unknown type {other}"))),
        });
        Ok(())
    }

    /// One span at `pos` of its trace, into `out` (reusing its allocations); its parent
    /// reference is returned, resolved by the caller once the whole trace is read.
    fn span_into(
        &mut self,
        out: &mut Span,
        trace_id: &[u8; 16],
        pos: usize,
        prev_start: u64,
        starts: &[u64],
    ) -> Result<Option<usize>, StoreError> {
        let flags = self.r(Stream::SpanFlags).byte()?;
        if flags & 0x80 != 0 {
            return Err(bad(format!("span flags: unknown flags {flags:#x}")));
        }
        if flags & F_RAW_SPAN_ID != 0 {
            self.raw_id_into(&mut out.span_id)?;
        } else {
            self.charge(8)?;
            let id = self.r(Stream::SpanId).array::<8>()?;
            out.span_id.clear();
            out.span_id.extend_from_slice(&id);
        }
        if flags & F_RAW_TRACE_ID != 0 {
            self.raw_id_into(&mut out.trace_id)?;
        } else {
            self.charge(16)?;
            out.trace_id.clear();
            out.trace_id.extend_from_slice(trace_id);
        }
        let mut base = prev_start;
        out.parent_span_id.clear();
        let parent_pos = match self.r(Stream::Parent).varint()? {
            PARENT_NONE => None,
            PARENT_RAW => {
                self.raw_id_into(&mut out.parent_span_id)?;
                None
            }
            v => {
                let p = (pos as i64)
                    .checked_sub(unzigzag(v - PARENT_POS))
                    .and_then(|p| usize::try_from(p).ok())
                    .ok_or_else(|| bad(format!("parents: bad parent reference {v}")))?;
                if let Some(&ps) = starts.get(p) {
                    if p < pos {
                        base = ps;
                    }
                }
                self.charge(8)?;
                Some(p)
            }
        };
        let start = base.wrapping_add(self.r(Stream::Start).zigzag()? as u64);
        out.start_time_unix_nano = start;
        out.end_time_unix_nano = start.wrapping_add(self.r(Stream::Duration).zigzag()? as u64);
        if flags & F_TRACE_STATE != 0 {
            self.string_into(Stream::TraceState, &mut out.trace_state)?;
        } else {
            out.trace_state.clear();
        }
        self.string_into(Stream::Name, &mut out.name)?;
        out.kind = self.r(Stream::Kind).i32()?;
        out.flags = self.r(Stream::TraceFlags).u32()?;
        if flags & F_STATUS != 0 {
            let code = self.r(Stream::StatusCode).i32()?;
            let status = out.status.get_or_insert_with(Status::default);
            status.code = code;
            self.string_into(Stream::StatusMessage, &mut status.message)?;
        } else {
            out.status = None;
        }
        (
            out.dropped_attributes_count,
            out.dropped_events_count,
            out.dropped_links_count,
        ) = (0, 0, 0);
        if flags & F_DROPPED != 0 {
            out.dropped_attributes_count = self.r(Stream::Dropped).u32()?;
            out.dropped_events_count = self.r(Stream::Dropped).u32()?;
            out.dropped_links_count = self.r(Stream::Dropped).u32()?;
        }
        if self.fields.attributes {
            self.attributes_into(&mut out.attributes)?;
        } else {
            out.attributes.clear();
            self.skip_attributes()?;
        }
        out.events.clear();
        if flags & F_EVENTS != 0 && !self.fields.events {
            let n = self.r(Stream::EventCount).varint()?;
            for _ in 0..n {
                self.r(Stream::EventTime).varint()?;
                self.skip_str(Stream::EventName)?;
                self.skip_attributes()?;
                self.r(Stream::Dropped).u32()?;
            }
        } else if flags & F_EVENTS != 0 {
            let n = self.r(Stream::EventCount).varint()?;
            for _ in 0..n {
                let time = start.wrapping_add(self.r(Stream::EventTime).zigzag()? as u64);
                let name = self.string(Stream::EventName)?;
                let attributes = self.attributes()?;
                let dropped = self.r(Stream::Dropped).u32()?;
                self.charge(2)?;
                out.events.push(span::Event {
                    time_unix_nano: time,
                    name,
                    attributes,
                    dropped_attributes_count: dropped,
                });
            }
        }
        out.links.clear();
        if flags & F_LINKS != 0 && !self.fields.links {
            let n = self.r(Stream::LinkCount).varint()?;
            for _ in 0..n {
                self.r(Stream::LinkIds).prefixed()?;
                self.r(Stream::LinkIds).prefixed()?;
                self.skip_str(Stream::TraceState)?;
                self.skip_attributes()?;
                self.r(Stream::Dropped).u32()?;
                self.r(Stream::TraceFlags).u32()?;
            }
        } else if flags & F_LINKS != 0 {
            let n = self.r(Stream::LinkCount).varint()?;
            for _ in 0..n {
                let tid = self.r(Stream::LinkIds).prefixed()?;
                let sid = self.r(Stream::LinkIds).prefixed()?;
                self.charge(tid.len() + sid.len() + 2)?;
                let trace_state = self.string(Stream::TraceState)?;
                let attributes = self.attributes()?;
                let dropped = self.r(Stream::Dropped).u32()?;
                let flags = self.r(Stream::TraceFlags).u32()?;
                out.links.push(span::Link {
                    trace_id: tid.to_vec(),
                    span_id: sid.to_vec(),
                    trace_state,
                    attributes,
                    dropped_attributes_count: dropped,
                    flags,
                });
            }
        }
        self.charge(2)?;
        Ok(parent_pos)
    }
}

/// Splits a columnar page into its header counts and stream readers.
struct Parsed<'a> {
    row_len: u64,
    traces: u64,
    spans: u64,
    dict: u64,
    resources: u64,
    scopes: u64,
    streams: [Reader<'a>; STREAMS],
}

fn parse(columnar: &[u8]) -> Result<Parsed<'_>, StoreError> {
    let mut h = Reader {
        name: "header",
        buf: columnar,
    };
    let version = h.byte()?;
    if version != VERSION {
        return Err(bad(format!("unknown columnar version {version}")));
    }
    let row_len = h.varint()?;
    if row_len > u32::MAX as u64 {
        return Err(bad(format!("row page length {row_len} is over 4 GiB")));
    }
    let traces = h.varint()?;
    let spans = h.varint()?;
    let dict = h.varint()?;
    let resources = h.varint()?;
    let scopes = h.varint()?;
    let mut streams = [Reader { name: "", buf: &[] }; STREAMS];
    for (i, s) in streams.iter_mut().enumerate() {
        h.name = STREAM_NAMES[i];
        *s = Reader {
            name: STREAM_NAMES[i],
            buf: h.prefixed()?,
        };
    }
    h.name = "page";
    h.end()?;
    Ok(Parsed {
        row_len,
        traces,
        spans,
        dict,
        resources,
        scopes,
        streams,
    })
}

/// A trace's spans by resource, then scope (table indexes), in first-appearance order.
type Groups = Vec<(u32, Vec<(u32, Vec<Span>)>)>;

/// Decodes a columnar page back into a row page that [`super::entries`] iterates.
pub(crate) fn decode(columnar: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    let mut data_buf = Vec::new();
    decode_each(columnar, &mut |t| {
        if out.is_empty() {
            // Never trust the declared length for the allocation up front.
            out.reserve((t.row_len as usize).min(columnar.len().saturating_mul(4)));
        }
        data_buf.clear();
        t.data.encode_raw(&mut data_buf);
        push_entry(
            &mut out,
            &t.id,
            t.span_count,
            t.start_ns,
            t.end_ns,
            &data_buf,
        );
        if out.len() as u64 > t.row_len {
            return Err(bad("the entries are longer than the row page length"));
        }
        Ok(())
    })?;
    Ok(out)
}

/// One trace of a columnar page, decoded.
pub(crate) struct DecodedTrace {
    pub id: [u8; 16],
    pub span_count: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub data: TracesData,
    /// The page's declared row length (for [`decode`]'s check).
    row_len: u64,
}

/// Decodes a columnar page into its traces, without the row encoding in between.
/// Decodes trace `id` of a columnar page, if the page holds it.
pub(crate) fn find_trace(
    columnar: &[u8],
    id: &[u8; 16],
) -> Result<Option<DecodedTrace>, StoreError> {
    let mut found = None;
    decode_some(columnar, Some(*id), &mut |t| {
        found = Some(t);
        Ok(())
    })?;
    Ok(found)
}

pub(crate) fn decode_traces(columnar: &[u8]) -> Result<Vec<DecodedTrace>, StoreError> {
    let mut out = Vec::new();
    decode_each(columnar, &mut |t| {
        out.push(t);
        Ok(())
    })?;
    Ok(out)
}

/// A span of the trace being decoded, with its table indexes and parent position.
#[derive(Default)]
struct PosSpan {
    res: u32,
    scope: u32,
    span: Span,
    parent: Option<usize>,
}

/// Decodes a columnar page trace by trace.
struct PageDecoder<'a> {
    d: Decoder<'a>,
    resources: Vec<TableEntry<Resource>>,
    scopes: Vec<TableEntry<InstrumentationScope>>,
    row_len: u64,
    traces_left: u64,
    spans_declared: u64,
    spans_read: u64,
    prev_start: u64,
    starts: Vec<u64>,
    id_buf: Vec<u8>,
    /// What of each span to decode.
    fields: SpanFields,
    /// Only this trace's spans are wanted whole: the others' attributes, events and links
    /// are read past.
    want: Option<[u8; 16]>,
}

/// The trace [`PageDecoder::next_trace`] decoded: its spans are the first `n` of `spans`
/// (a pool whose allocations the next trace reuses).
#[derive(Default)]
struct TraceBuf {
    id: [u8; 16],
    span_count: u32,
    start_ns: u64,
    end_ns: u64,
    n: usize,
    spans: Vec<PosSpan>,
}

impl<'a> PageDecoder<'a> {
    fn new(columnar: &'a [u8]) -> Result<Self, StoreError> {
        let p = parse(columnar)?;
        let mut streams = p.streams;
        let mut dict = Vec::new();
        {
            let mut lens = streams[Stream::DictLen as usize];
            let mut bytes = streams[Stream::DictBytes as usize];
            for _ in 0..p.dict {
                dict.push(Err(bytes.clone_take(&mut lens)?));
            }
            lens.end()?;
            bytes.end()?;
            streams[Stream::DictLen as usize] = lens;
            streams[Stream::DictBytes as usize] = bytes;
        }
        let resources = read_table(&mut streams[Stream::Resources as usize], p.resources)?;
        let scopes = read_table(&mut streams[Stream::Scopes as usize], p.scopes)?;
        Ok(Self {
            d: Decoder {
                r: streams,
                dict,
                seen: 0,
                budget: p.row_len,
                fields: SpanFields::ALL,
            },
            resources,
            scopes,
            row_len: p.row_len,
            traces_left: p.traces,
            spans_declared: p.spans,
            spans_read: 0,
            prev_start: 0,
            starts: Vec::new(),
            id_buf: Vec::new(),
            fields: SpanFields::ALL,
            want: None,
        })
    }

    /// Decodes the next trace into `t`; `false` when the page has no more (then every
    /// stream must have been read to its end).
    fn next_trace(&mut self, t: &mut TraceBuf) -> Result<bool, StoreError> {
        if self.traces_left == 0 {
            if self.spans_read != self.spans_declared {
                return Err(bad(format!(
                    "header: {} spans, the streams hold {}",
                    self.spans_declared, self.spans_read
                )));
            }
            for r in &self.d.r {
                r.end()?;
            }
            return Ok(false);
        }
        self.traces_left -= 1;
        let d = &mut self.d;
        t.id = d.r(Stream::TraceId).array::<16>()?;
        d.fields = match self.want {
            Some(w) if w != t.id => SpanFields::CORE,
            _ => self.fields,
        };
        t.start_ns = self
            .prev_start
            .wrapping_add(d.r(Stream::TraceStart).zigzag()? as u64);
        self.prev_start = t.start_ns;
        t.end_ns = t
            .start_ns
            .wrapping_add(d.r(Stream::TraceEnd).zigzag()? as u64);
        let n = d.r(Stream::TraceLen).varint()?;
        t.span_count = (n as i64)
            .checked_add(d.r(Stream::TraceCount).zigzag()?)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| bad("trace entry counts: count out of range"))?;
        // Every span costs at least 2 bytes of the row page: a corrupt count cannot make the
        // pool grow past what the page declares.
        if n > d.budget / 2 + 1 {
            return Err(bad("trace span counts: more spans than the page holds"));
        }
        let n = n as usize;
        self.starts.clear();
        let mut prev = t.start_ns;
        for pos in 0..n {
            if pos == t.spans.len() {
                t.spans.push(PosSpan::default());
            }
            let res = d.r(Stream::SpanResource).u32()?;
            let scope = d.r(Stream::SpanScope).u32()?;
            if res as usize >= self.resources.len() {
                return Err(bad(format!("span resources: no resource {res}")));
            }
            if scope as usize >= self.scopes.len() {
                return Err(bad(format!("span scopes: no scope {scope}")));
            }
            let slot = &mut t.spans[pos];
            slot.res = res;
            slot.scope = scope;
            slot.parent = d.span_into(&mut slot.span, &t.id, pos, prev, &self.starts)?;
            prev = slot.span.start_time_unix_nano;
            self.starts.push(prev);
        }
        t.n = n;
        self.spans_read += n as u64;
        // Parents by position, now that every span id of the trace is known.
        for i in 0..n {
            if let Some(p) = t.spans[i].parent {
                if p >= n {
                    return Err(bad(format!("parents: no span at position {p}")));
                }
                self.id_buf.clear();
                self.id_buf.extend_from_slice(&t.spans[p].span.span_id);
                let parent = &mut t.spans[i].span.parent_span_id;
                parent.clear();
                parent.extend_from_slice(&self.id_buf);
            }
        }
        Ok(true)
    }
}

/// Decodes a columnar page, passing each trace to `sink` in page order.
fn decode_each(
    columnar: &[u8],
    sink: &mut dyn FnMut(DecodedTrace) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    decode_some(columnar, None, sink)
}

/// [`decode_each`] of every trace, or of trace `want` alone (the others read past as cheaply
/// as the format allows, and the page only up to where `want` would be: pages are sorted by
/// trace id).
fn decode_some(
    columnar: &[u8],
    want: Option<[u8; 16]>,
    sink: &mut dyn FnMut(DecodedTrace) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut pd = PageDecoder::new(columnar)?;
    pd.want = want;
    let mut t = TraceBuf::default();
    let mut groups: Groups = Vec::new();
    while pd.next_trace(&mut t)? {
        match want {
            Some(w) if t.id < w => continue,
            Some(w) if t.id > w => break,
            _ => {}
        }
        groups.clear();
        for ps in t.spans.iter_mut().take(t.n) {
            let (res, scope) = (ps.res, ps.scope);
            let span = std::mem::take(&mut ps.span);
            let g = match groups.iter().position(|g| g.0 == res) {
                Some(g) => g,
                None => {
                    pd.d.charge(pd.resources[res as usize].cost + 2)?;
                    groups.push((res, Vec::new()));
                    groups.len() - 1
                }
            };
            let scopes_of = &mut groups[g].1;
            let s = match scopes_of.iter().position(|s| s.0 == scope) {
                Some(s) => s,
                None => {
                    pd.d.charge(pd.scopes[scope as usize].cost + 2)?;
                    scopes_of.push((scope, Vec::new()));
                    scopes_of.len() - 1
                }
            };
            scopes_of[s].1.push(span);
        }
        let (resources, scopes) = (&pd.resources, &pd.scopes);
        let data = TracesData {
            resource_spans: groups
                .drain(..)
                .map(|(res, ss)| {
                    let r = &resources[res as usize];
                    ResourceSpans {
                        resource: r.message.clone(),
                        schema_url: r.schema_url.clone(),
                        scope_spans: ss
                            .into_iter()
                            .map(|(scope, spans)| {
                                let s = &scopes[scope as usize];
                                ScopeSpans {
                                    scope: s.message.clone(),
                                    schema_url: s.schema_url.clone(),
                                    spans,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        };
        sink(DecodedTrace {
            id: t.id,
            span_count: t.span_count,
            start_ns: t.start_ns,
            end_ns: t.end_ns,
            data,
            row_len: pd.row_len,
        })?;
    }
    Ok(())
}

/// Called by [`for_each_span`] with a span's trace id, trace start and end, the span and its
/// resource; returns `false` to stop.
pub(crate) type ColumnarSpanVisit<'v> =
    dyn FnMut(&[u8; 16], u64, u64, &Span, Option<&Resource>) -> bool + 'v;

/// Calls `visit` with every span of a columnar page (in page order, with its trace's id,
/// start and end, and its resource), decoding into buffers reused from span to span: no
/// trace is assembled. What `fields` leaves out is read past, not decoded (left empty).
/// Stops early when `visit` returns `false` (then returns `false`).
pub(crate) fn for_each_span(
    columnar: &[u8],
    fields: SpanFields,
    visit: &mut ColumnarSpanVisit<'_>,
) -> Result<bool, StoreError> {
    let mut pd = PageDecoder::new(columnar)?;
    pd.fields = fields;
    let mut t = TraceBuf::default();
    while pd.next_trace(&mut t)? {
        for ps in &t.spans[..t.n] {
            let resource = pd.resources[ps.res as usize].message.as_ref();
            if !visit(&t.id, t.start_ns, t.end_ns, &ps.span, resource) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl<'a> Reader<'a> {
    /// Takes the next string of a length-prefixed dictionary: its length from `lens`.
    fn clone_take(&mut self, lens: &mut Reader<'a>) -> Result<&'a [u8], StoreError> {
        let n = lens.varint()?;
        let n = usize::try_from(n).map_err(|_| lens.err("length too big"))?;
        self.take(n)
    }
}

/// Per stream of a columnar page: its name and length.
#[cfg(test)]
pub(crate) fn stream_sizes(columnar: &[u8]) -> Result<Vec<(&'static str, usize)>, StoreError> {
    let p = parse(columnar)?;
    Ok(STREAM_NAMES
        .iter()
        .zip(p.streams.iter())
        .map(|(n, r)| (*n, r.buf.len()))
        .collect())
}

/// Per stream of a columnar page: its bytes (for measuring each stream compressed alone).
#[cfg(test)]
pub(crate) fn stream_bytes(columnar: &[u8]) -> Result<Vec<(&'static str, Vec<u8>)>, StoreError> {
    let p = parse(columnar)?;
    Ok(STREAM_NAMES
        .iter()
        .zip(p.streams.iter())
        .map(|(n, r)| (*n, r.buf.to_vec()))
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sextant_otlp_proto::proto::common::InstrumentationScope;
    use sextant_otlp_proto::TraceId;

    /// One entry of a row page, as the tests build them.
    pub(crate) struct TestEntry {
        pub id: [u8; 16],
        pub span_count: u32,
        pub start_ns: u64,
        pub end_ns: u64,
        pub data: TracesData,
    }

    pub(crate) fn row_page(entries: &[TestEntry]) -> Vec<u8> {
        let mut page = Vec::new();
        for e in entries {
            push_entry(
                &mut page,
                &e.id,
                e.span_count,
                e.start_ns,
                e.end_ns,
                &e.data.encode_to_vec(),
            );
        }
        page
    }

    fn table_key<M: Message>(m: Option<&M>, url: &str) -> Vec<u8> {
        let mut k = match m {
            None => vec![0],
            Some(m) => {
                let mut k = vec![1];
                k.extend(m.encode_to_vec());
                k
            }
        };
        k.push(0xff);
        k.extend_from_slice(url.as_bytes());
        k
    }

    /// The grouping `decode` gives back: spans by (resource, scope) in first-appearance order.
    pub(crate) fn normalize(data: &TracesData) -> TracesData {
        let mut out: Vec<(Vec<u8>, ResourceSpans, Vec<Vec<u8>>)> = Vec::new();
        for rs in &data.resource_spans {
            let rk = table_key(rs.resource.as_ref(), &rs.schema_url);
            for ss in &rs.scope_spans {
                let sk = table_key(ss.scope.as_ref(), &ss.schema_url);
                for s in &ss.spans {
                    let g = match out.iter().position(|g| g.0 == rk) {
                        Some(g) => g,
                        None => {
                            out.push((
                                rk.clone(),
                                ResourceSpans {
                                    resource: rs.resource.clone(),
                                    scope_spans: Vec::new(),
                                    schema_url: rs.schema_url.clone(),
                                },
                                Vec::new(),
                            ));
                            out.len() - 1
                        }
                    };
                    let (_, group, keys) = &mut out[g];
                    let i = match keys.iter().position(|k| *k == sk) {
                        Some(i) => i,
                        None => {
                            keys.push(sk.clone());
                            group.scope_spans.push(ScopeSpans {
                                scope: ss.scope.clone(),
                                spans: Vec::new(),
                                schema_url: ss.schema_url.clone(),
                            });
                            keys.len() - 1
                        }
                    };
                    group.scope_spans[i].spans.push(s.clone());
                }
            }
        }
        TracesData {
            resource_spans: out.into_iter().map(|g| g.1).collect(),
        }
    }

    /// Checks that `decode(encode(page))` gives the same entries, normalized.
    pub(crate) fn assert_round_trip(entries: &[TestEntry]) -> Vec<u8> {
        let page = row_page(entries);
        let columnar = encode(&page).unwrap();
        let back = decode(&columnar).unwrap();
        let got: Vec<_> = super::entries("test", &back)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(got.len(), entries.len());
        for (g, want) in got.iter().zip(entries) {
            assert_eq!(g.id, TraceId(want.id));
            assert_eq!(g.span_count, want.span_count);
            assert_eq!(g.start_ns, want.start_ns);
            assert_eq!(g.end_ns, want.end_ns);
            let normal = normalize(&want.data).encode_to_vec();
            if g.data != normal.as_slice() {
                let got = TracesData::decode(g.data).unwrap();
                assert_eq!(
                    got,
                    normalize(&want.data),
                    "trace {}",
                    TraceId(want.id).to_hex()
                );
                panic!("same structs, different bytes (a double?)");
            }
        }
        columnar
    }

    // ---- a randomized generator covering every field ----

    fn text(rng: &mut StdRng) -> String {
        match rng.random_range(0..10) {
            0 => String::new(),
            1 => "é漢字🙂\u{0}".repeat(rng.random_range(1..4)),
            2 if rng.random_bool(0.05) => "x".repeat(rng.random_range(70_000..200_000)),
            3 => uuid(rng),
            4 => uuid(rng).to_uppercase(),
            5 => format!("pool-{}", rng.random_range(0..8)),
            _ => format!("t{:x}", rng.random::<u64>()),
        }
    }

    fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let n = rng.random_range(0..=max);
        (0..n).map(|_| rng.random()).collect()
    }

    fn any_value(rng: &mut StdRng, depth: u32) -> any_value::Value {
        use any_value::Value as V;
        let top = if depth >= 3 { 6 } else { 9 };
        match rng.random_range(0..top) {
            0 => V::StringValue(text(rng)),
            1 => V::BoolValue(rng.random()),
            2 => V::IntValue([0, -1, 1, i64::MIN, i64::MAX, rng.random()][rng.random_range(0..6)]),
            3 => V::DoubleValue(
                [
                    0.0,
                    -0.0,
                    f64::NAN,
                    f64::from_bits(0x7ff8_dead_beef_0001),
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::MIN_POSITIVE / 2.0,
                    rng.random(),
                ][rng.random_range(0..8)],
            ),
            4 => V::BytesValue(bytes(rng, 40)),
            5 => V::StringValueStrindex(rng.random()),
            6 | 7 => V::ArrayValue(ArrayValue {
                values: (0..rng.random_range(0..4))
                    .map(|_| AnyValue {
                        value: rng.random_bool(0.9).then(|| any_value(rng, depth + 1)),
                    })
                    .collect(),
            }),
            _ => V::KvlistValue(KeyValueList {
                values: attrs(rng, depth + 1, 3),
            }),
        }
    }

    fn attrs(rng: &mut StdRng, depth: u32, max: usize) -> Vec<KeyValue> {
        (0..rng.random_range(0..=max))
            .map(|_| KeyValue {
                key: text(rng),
                value: match rng.random_range(0..12) {
                    0 => None,
                    1 => Some(AnyValue { value: None }),
                    _ => Some(AnyValue {
                        value: Some(any_value(rng, depth)),
                    }),
                },
                key_strindex: if rng.random_bool(0.1) {
                    rng.random()
                } else {
                    0
                },
            })
            .collect()
    }

    fn time(rng: &mut StdRng, around: u64) -> u64 {
        match rng.random_range(0..8) {
            0 => 0,
            1 => u64::MAX,
            2 => rng.random(),
            _ => around.wrapping_add(rng.random_range(0..5_000_000_000)),
        }
    }

    fn id(rng: &mut StdRng, ids: &[Vec<u8>]) -> Vec<u8> {
        match rng.random_range(0..20) {
            0 => Vec::new(),
            1 => bytes(rng, 20),
            2 if !ids.is_empty() => ids[rng.random_range(0..ids.len())].clone(),
            _ => rng.random::<[u8; 8]>().to_vec(),
        }
    }

    fn random_span(rng: &mut StdRng, trace: &[u8; 16], ids: &mut Vec<Vec<u8>>, t0: u64) -> Span {
        let span_id = id(rng, ids);
        ids.push(span_id.clone());
        let start = time(rng, t0);
        Span {
            trace_id: match rng.random_range(0..20) {
                0 => Vec::new(),
                1 => bytes(rng, 20),
                _ => trace.to_vec(),
            },
            span_id,
            trace_state: if rng.random_bool(0.2) {
                text(rng)
            } else {
                String::new()
            },
            // Parents in the trace (earlier or not yet generated), outside it, or none.
            parent_span_id: match rng.random_range(0..6) {
                0 => Vec::new(),
                1 => rng.random::<[u8; 8]>().to_vec(),
                _ => id(rng, ids),
            },
            flags: if rng.random_bool(0.5) {
                0x301
            } else {
                rng.random()
            },
            name: text(rng),
            kind: [0, 1, 2, 3, 4, 5, -7, i32::MAX][rng.random_range(0..8)],
            start_time_unix_nano: start,
            end_time_unix_nano: if rng.random_bool(0.8) {
                start.wrapping_add(rng.random_range(0..1_000_000_000))
            } else {
                time(rng, t0)
            },
            attributes: attrs(rng, 0, 12),
            dropped_attributes_count: if rng.random_bool(0.2) {
                rng.random()
            } else {
                0
            },
            events: (0..rng.random_range(0..3))
                .map(|_| span::Event {
                    time_unix_nano: time(rng, start),
                    name: text(rng),
                    attributes: attrs(rng, 0, 3),
                    dropped_attributes_count: rng.random_range(0..3),
                })
                .collect(),
            dropped_events_count: if rng.random_bool(0.1) {
                rng.random()
            } else {
                0
            },
            links: (0..rng.random_range(0..3))
                .map(|_| span::Link {
                    trace_id: if rng.random_bool(0.8) {
                        rng.random::<[u8; 16]>().to_vec()
                    } else {
                        bytes(rng, 20)
                    },
                    span_id: id(rng, ids),
                    trace_state: if rng.random_bool(0.3) {
                        text(rng)
                    } else {
                        String::new()
                    },
                    attributes: attrs(rng, 0, 3),
                    dropped_attributes_count: rng.random_range(0..3),
                    flags: rng.random(),
                })
                .collect(),
            dropped_links_count: if rng.random_bool(0.1) {
                rng.random()
            } else {
                0
            },
            status: match rng.random_range(0..4) {
                0 => None,
                1 => Some(Status::default()),
                _ => Some(Status {
                    message: text(rng),
                    code: [0, 1, 2, -3, i32::MIN][rng.random_range(0..5)],
                }),
            },
        }
    }

    pub(crate) fn random_entries(seed: u64, traces: usize) -> Vec<TestEntry> {
        let mut rng = StdRng::seed_from_u64(seed);
        let resources: Vec<Option<Resource>> = (0..5)
            .map(|i| {
                (i > 0).then(|| Resource {
                    attributes: attrs(&mut rng, 0, 6),
                    dropped_attributes_count: rng.random_range(0..2),
                    ..Default::default()
                })
            })
            .collect();
        let scopes: Vec<Option<InstrumentationScope>> = (0..4)
            .map(|i| {
                (i > 0).then(|| InstrumentationScope {
                    name: text(&mut rng),
                    version: text(&mut rng),
                    attributes: attrs(&mut rng, 0, 3),
                    dropped_attributes_count: rng.random_range(0..2),
                })
            })
            .collect();
        let mut ids: Vec<[u8; 16]> = (0..traces).map(|_| rng.random()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let t0: u64 = rng.random_range(1 << 60..1 << 61);
                let mut span_ids = Vec::new();
                let mut n = 0u32;
                let data = TracesData {
                    resource_spans: (0..rng.random_range(0..4))
                        .map(|_| ResourceSpans {
                            resource: resources[rng.random_range(0..resources.len())].clone(),
                            schema_url: format!("s{}", rng.random_range(0..2)),
                            scope_spans: (0..rng.random_range(0..3))
                                .map(|_| ScopeSpans {
                                    scope: scopes[rng.random_range(0..scopes.len())].clone(),
                                    schema_url: format!("u{}", rng.random_range(0..2)),
                                    spans: (0..rng.random_range(0..12))
                                        .map(|_| {
                                            n += 1;
                                            random_span(&mut rng, &id, &mut span_ids, t0)
                                        })
                                        .collect(),
                                })
                                .collect(),
                        })
                        .collect(),
                };
                TestEntry {
                    id,
                    span_count: if rng.random_bool(0.9) {
                        n
                    } else {
                        rng.random()
                    },
                    start_ns: time(&mut rng, t0),
                    end_ns: time(&mut rng, t0),
                    data,
                }
            })
            .collect()
    }

    // ---- realistic data: a small shop of services ----

    const SERVICES: [&str; 10] = [
        "frontend",
        "cart",
        "checkout",
        "payment",
        "shipping",
        "email",
        "catalog",
        "ads",
        "recommendation",
        "currency",
    ];

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            key_strindex: 0,
        }
    }

    fn s(v: impl Into<String>) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn uuid(rng: &mut StdRng) -> String {
        let a: u128 = rng.random();
        let h = format!("{a:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Traces shaped like an instrumented shop: resources of 10 attributes, HTTP, database,
    /// internal and messaging spans with their usual attributes, a few exception events.
    pub(crate) fn realistic_entries(seed: u64, spans: usize) -> Vec<TestEntry> {
        use any_value::Value as V;
        let mut rng = StdRng::seed_from_u64(seed);
        let resources: Vec<Resource> = SERVICES
            .iter()
            .enumerate()
            .map(|(i, name)| Resource {
                attributes: vec![
                    kv("service.name", s(*name)),
                    kv("service.version", s(format!("2.{i}.3"))),
                    kv("service.namespace", s("shop")),
                    kv("deployment.environment.name", s("production")),
                    kv("host.name", s(format!("node-{}", i % 4))),
                    kv("k8s.namespace.name", s("shop")),
                    kv(
                        "k8s.pod.name",
                        s(format!("{name}-5c8d7f-{:05x}", rng.random::<u32>() >> 12)),
                    ),
                    kv("telemetry.sdk.name", s("opentelemetry")),
                    kv("telemetry.sdk.language", s(["go", "java", "python"][i % 3])),
                    kv("telemetry.sdk.version", s("1.30.0")),
                ],
                ..Default::default()
            })
            .collect();
        let scope = |i: usize| InstrumentationScope {
            name: format!("io.opentelemetry.{}", ["go", "java", "python"][i % 3]),
            version: "1.30.0".into(),
            ..Default::default()
        };
        let t_base: u64 = 1_790_000_000_000_000_000;
        let mut traces: Vec<TestEntry> = Vec::new();
        let mut made = 0;
        while made < spans {
            let n = rng.random_range(1..=16usize).min(spans - made);
            made += n;
            let id: [u8; 16] = rng.random();
            let start = t_base + rng.random_range(0..30_000_000_000u64);
            let dur = rng.random_range(1_000_000..500_000_000u64);
            let mut shaped: Vec<(usize, Span)> = Vec::new();
            for i in 0..n {
                let (svc, kind, s0, e0, parent) = if i == 0 {
                    (rng.random_range(0..2), 2, start, start + dur, Vec::new())
                } else {
                    let p = rng.random_range(0..i);
                    let (psvc, ps) = (&shaped[p].0, &shaped[p].1);
                    let len = (ps.end_time_unix_nano - ps.start_time_unix_nano).max(2);
                    let s0 = ps.start_time_unix_nano + rng.random_range(0..len / 2);
                    let e0 = s0 + rng.random_range(1..=len / 2);
                    let kind = [1, 3, 3, 4][rng.random_range(0..4)];
                    let svc = if kind == 3 {
                        rng.random_range(0..SERVICES.len())
                    } else {
                        *psvc
                    };
                    (svc, kind, s0, e0, ps.span_id.clone())
                };
                let mut a = Vec::new();
                let mut events = Vec::new();
                let mut status = None;
                let name = match kind {
                    2 | 3 => {
                        let route = format!("/api/{}/{{id}}", ["cart", "product", "order"][i % 3]);
                        let code = [200, 200, 200, 201, 404, 500][rng.random_range(0..6)];
                        a.push(kv("http.request.method", s(["GET", "POST"][i % 2])));
                        a.push(kv("http.route", s(route.clone())));
                        a.push(kv(
                            "url.path",
                            s(format!("/api/x/{}", rng.random_range(0..1_000_000))),
                        ));
                        a.push(kv("http.response.status_code", V::IntValue(code)));
                        a.push(kv("request.id", s(uuid(&mut rng))));
                        a.push(kv(
                            "user.id",
                            s(format!("user-{}", rng.random_range(0..100_000))),
                        ));
                        a.push(kv("cache.hit", V::BoolValue(rng.random_bool(0.3))));
                        a.push(kv("sampling.weight", V::DoubleValue(rng.random())));
                        if code >= 500 {
                            status = Some(Status {
                                message: "upstream answered 5xx".into(),
                                code: 2,
                            });
                            events.push(span::Event {
                                time_unix_nano: s0 + (e0 - s0) / 2,
                                name: "exception".into(),
                                attributes: vec![
                                    kv("exception.type", s("HttpError")),
                                    kv(
                                        "exception.message",
                                        s(format!("{} failed", uuid(&mut rng))),
                                    ),
                                ],
                                dropped_attributes_count: 0,
                            });
                        }
                        format!("GET {route}")
                    }
                    1 => {
                        a.push(kv("db.system", s("postgresql")));
                        a.push(kv(
                            "db.statement",
                            s(format!(
                                "SELECT * FROM orders WHERE id = {}",
                                rng.random_range(0..10_000_000)
                            )),
                        ));
                        a.push(kv(
                            "db.rows_affected",
                            V::IntValue(rng.random_range(0..200)),
                        ));
                        a.push(kv("request.id", s(uuid(&mut rng))));
                        a.push(kv("db.pool.utilization", V::DoubleValue(rng.random())));
                        "SELECT shop.orders".to_string()
                    }
                    _ => {
                        a.push(kv("messaging.system", s("kafka")));
                        a.push(kv("messaging.destination.name", s("orders-events")));
                        a.push(kv("messaging.message.id", s(uuid(&mut rng))));
                        a.push(kv(
                            "messaging.kafka.partition",
                            V::IntValue(rng.random_range(0..12)),
                        ));
                        "orders-events publish".to_string()
                    }
                };
                let span = Span {
                    trace_id: id.to_vec(),
                    span_id: rng.random::<[u8; 8]>().to_vec(),
                    parent_span_id: parent,
                    name,
                    kind,
                    start_time_unix_nano: s0,
                    end_time_unix_nano: e0,
                    attributes: a,
                    events,
                    status,
                    flags: 0x301,
                    ..Default::default()
                };
                shaped.push((svc, span));
            }
            // As a request would carry them: grouped by service.
            let mut by_service: Vec<(usize, Vec<Span>)> = Vec::new();
            for (svc, span) in shaped {
                match by_service.iter_mut().find(|g| g.0 == svc) {
                    Some(g) => g.1.push(span),
                    None => by_service.push((svc, vec![span])),
                }
            }
            traces.push(TestEntry {
                id,
                span_count: n as u32,
                start_ns: start,
                end_ns: start + dur,
                data: TracesData {
                    resource_spans: by_service
                        .into_iter()
                        .map(|(svc, spans)| ResourceSpans {
                            resource: Some(resources[svc].clone()),
                            scope_spans: vec![ScopeSpans {
                                scope: Some(scope(svc)),
                                spans,
                                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                            }],
                            schema_url: String::new(),
                        })
                        .collect(),
                },
            });
        }
        traces.sort_by_key(|t| t.id);
        traces
    }

    #[test]
    fn random_pages_round_trip() {
        for seed in 0..40 {
            assert_round_trip(&random_entries(seed, 1 + seed as usize % 9));
        }
    }

    /// (trace id, trace start, trace end, encoded span, encoded resource) of each span.
    type Seen = Vec<([u8; 16], u64, u64, Vec<u8>, Option<Vec<u8>>)>;

    fn visited(columnar: &[u8]) -> Seen {
        let mut got = Vec::new();
        let all = for_each_span(
            columnar,
            SpanFields::ALL,
            &mut |id, start, end, span, resource| {
                got.push((
                    *id,
                    start,
                    end,
                    span.encode_to_vec(),
                    resource.map(Message::encode_to_vec),
                ));
                true
            },
        )
        .unwrap();
        assert!(all);
        got
    }

    #[test]
    fn spans_visited_in_place_are_the_decoded_spans() {
        for seed in 0..60 {
            let entries = random_entries(seed, 1 + seed as usize % 9);
            let columnar = encode(&row_page(&entries)).unwrap();
            let mut want: Seen = Vec::new();
            for t in decode_traces(&columnar).unwrap() {
                for rs in &t.data.resource_spans {
                    for ss in &rs.scope_spans {
                        for span in &ss.spans {
                            want.push((
                                t.id,
                                t.start_ns,
                                t.end_ns,
                                span.encode_to_vec(),
                                rs.resource.as_ref().map(Message::encode_to_vec),
                            ));
                        }
                    }
                }
            }
            // Decoding groups a trace's spans by resource and scope; visiting keeps the
            // page's order: the same spans, each with its own values (nothing left over from
            // the span decoded before it into the same buffers).
            let mut got = visited(&columnar);
            assert_eq!(got.len(), want.len(), "seed {seed}");
            got.sort();
            want.sort();
            assert_eq!(got, want, "seed {seed}");
        }
        let columnar = encode(&row_page(&realistic_entries(5, 3000))).unwrap();
        let spans = visited(&columnar).len();
        assert_eq!(spans, 3000);
        let mut n = 0;
        let all = for_each_span(&columnar, SpanFields::ALL, &mut |_, _, _, _, _| {
            n += 1;
            n < 10
        })
        .unwrap();
        assert!(!all);
        assert_eq!(n, 10, "the visit stops when told to");
    }

    /// Spans visited with some fields left out are the full spans with those fields
    /// cleared, and the rest (names resolved through the dictionary after skipped strings,
    /// events and links after skipped attributes) decoded the same.
    #[test]
    fn spans_visited_with_fields_left_out_are_the_rest_of_each_span() {
        let projections = [
            SpanFields::CORE,
            SpanFields {
                attributes: true,
                ..SpanFields::CORE
            },
            SpanFields {
                events: true,
                ..SpanFields::CORE
            },
            SpanFields {
                links: true,
                ..SpanFields::CORE
            },
            SpanFields {
                attributes: false,
                ..SpanFields::ALL
            },
        ];
        let mut pages: Vec<Vec<u8>> = (0..40)
            .map(|seed| encode(&row_page(&random_entries(seed, 1 + seed as usize % 7))).unwrap())
            .collect();
        pages.push(encode(&row_page(&realistic_entries(9, 800))).unwrap());
        let (mut events, mut links, mut attrs) = (0, 0, 0);
        for (p, columnar) in pages.iter().enumerate() {
            let full = visited(columnar);
            for fields in projections {
                let mut got = Vec::new();
                for_each_span(columnar, fields, &mut |id, start, end, span, resource| {
                    got.push((
                        *id,
                        start,
                        end,
                        span.encode_to_vec(),
                        resource.map(Message::encode_to_vec),
                    ));
                    true
                })
                .unwrap();
                let want: Seen = full
                    .iter()
                    .map(|(id, start, end, span, resource)| {
                        let mut span = Span::decode(span.as_slice()).unwrap();
                        attrs += span.attributes.len();
                        events += span.events.len();
                        links += span.links.len();
                        if !fields.attributes {
                            span.attributes.clear();
                        }
                        if !fields.events {
                            span.events.clear();
                        }
                        if !fields.links {
                            span.links.clear();
                        }
                        (*id, *start, *end, span.encode_to_vec(), resource.clone())
                    })
                    .collect();
                assert_eq!(got, want, "page {p}, {fields:?}");
            }
        }
        assert!(
            attrs > 0 && events > 0 && links > 0,
            "{attrs} {events} {links}"
        );
    }

    /// A trace found alone is the trace the whole page decodes to; absent ids find nothing.
    #[test]
    fn a_trace_found_alone_is_the_decoded_trace() {
        let mut pages: Vec<Vec<u8>> = (0..30)
            .map(|seed| {
                let mut entries = random_entries(seed, 1 + seed as usize % 9);
                entries.sort_by_key(|e| e.id);
                entries.dedup_by_key(|e| e.id);
                encode(&row_page(&entries)).unwrap()
            })
            .collect();
        let mut realistic = realistic_entries(3, 600);
        realistic.sort_by_key(|e| e.id);
        pages.push(encode(&row_page(&realistic)).unwrap());
        let mut found = 0;
        for (p, columnar) in pages.iter().enumerate() {
            let all = decode_traces(columnar).unwrap();
            for t in &all {
                let alone = find_trace(columnar, &t.id).unwrap().expect("present");
                assert_eq!(
                    (alone.id, alone.span_count, alone.start_ns, alone.end_ns),
                    (t.id, t.span_count, t.start_ns, t.end_ns),
                    "page {p}"
                );
                // Bytes, not structs: NaN doubles are kept bit for bit but are never equal.
                assert!(
                    alone.data.encode_to_vec() == t.data.encode_to_vec(),
                    "page {p}: trace {:02x?} differs",
                    t.id
                );
                found += 1;
            }
            for absent in [[0u8; 16], [0xff; 16], [0x80; 16]] {
                if all.iter().all(|t| t.id != absent) {
                    assert!(find_trace(columnar, &absent).unwrap().is_none());
                }
            }
        }
        assert!(found > 100, "{found}");
    }

    #[test]
    fn only_exact_lowercase_uuids_are_stored_as_bytes() {
        let u = "0123abcd-4567-89ef-0a1b-2c3d4e5f6789";
        let mut text = String::new();
        format_uuid_into(&parse_uuid(u).unwrap(), &mut text);
        assert_eq!(text, u);
        for not in [
            "0123ABCD-4567-89ef-0a1b-2c3d4e5f6789",
            "0123abcd-4567-89ef-0a1b-2c3d4e5f678",
            "0123abcd-4567-89ef-0a1b-2c3d4e5f67890",
            "0123abcd44567-89ef-0a1b-2c3d4e5f6789",
            "0123abcd-4567-89ef-0a1b-2c3d4e5f678g",
            "0123abc--4567-89ef-0a1b-2c3d4e5f6789",
            "0123abcd-4567-89ef-0a1b-2c3d4e5f678é",
        ] {
            assert_eq!(parse_uuid(not), None, "{not}");
        }
    }

    #[test]
    fn an_empty_page_and_empty_traces_round_trip() {
        assert_round_trip(&[]);
        assert_round_trip(&[TestEntry {
            id: [1; 16],
            span_count: 0,
            start_ns: 0,
            end_ns: 0,
            data: TracesData::default(),
        }]);
    }

    #[test]
    fn a_big_trace_with_duplicate_ids_round_trips() {
        let mut rng = StdRng::seed_from_u64(7);
        let id = [9u8; 16];
        let mut ids = Vec::new();
        let mut spans: Vec<Span> = (0..300)
            .map(|_| random_span(&mut rng, &id, &mut ids, 1 << 60))
            .collect();
        // Parents later in the trace, and duplicates of ids.
        for i in 0..spans.len() {
            let j = (i * 7 + 3) % spans.len();
            spans[i].parent_span_id = spans[j].span_id.clone();
        }
        spans[5].span_id = spans[4].span_id.clone();
        let data = TracesData {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_round_trip(&[TestEntry {
            id,
            span_count: 300,
            start_ns: 1 << 60,
            end_ns: 1,
            data,
        }]);
    }

    #[test]
    fn realistic_pages_round_trip() {
        assert_round_trip(&realistic_entries(1, 3000));
    }

    #[test]
    fn truncated_and_garbled_pages_are_errors_not_panics() {
        let entries = random_entries(3, 3);
        let columnar = encode(&row_page(&entries)).unwrap();
        for len in 0..columnar.len() {
            let r = decode(&columnar[..len]);
            assert!(
                matches!(r, Err(StoreError::Corrupt { .. })),
                "truncated to {len}: {r:?}"
            );
        }
        let mut rng = StdRng::seed_from_u64(11);
        let mut errors = 0;
        for _ in 0..3000 {
            let mut bad = columnar.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bad.len());
                bad[i] ^= rng.random_range(1..=255u8);
            }
            match decode(&bad) {
                Ok(page) => {
                    // Whatever decoded must still be a row page.
                    for e in super::entries("garbled", &page) {
                        e.unwrap();
                    }
                }
                Err(StoreError::Corrupt { problem, .. }) => {
                    assert!(!problem.is_empty());
                    errors += 1;
                }
                Err(other) => panic!("not a corruption: {other}"),
            }
        }
        assert!(errors > 1000, "{errors}");
        // Visiting spans in place meets the same corruptions, also without a panic.
        let mut visit_errors = 0;
        for _ in 0..3000 {
            let mut bad = columnar.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bad.len());
                bad[i] ^= rng.random_range(1..=255u8);
            }
            match for_each_span(&bad, SpanFields::ALL, &mut |_, _, _, _, _| true) {
                Ok(_) => {}
                Err(StoreError::Corrupt { .. }) => visit_errors += 1,
                Err(other) => panic!("not a corruption: {other}"),
            }
        }
        assert!(visit_errors > 1000, "{visit_errors}");
        for len in 0..columnar.len() {
            assert!(
                for_each_span(&columnar[..len], SpanFields::ALL, &mut |_, _, _, _, _| true)
                    .is_err()
            );
        }
        for n in 0..200 {
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let _ = decode(&junk);
            let mut versioned = junk.clone();
            versioned.insert(0, VERSION);
            let _ = decode(&versioned);
        }
    }

    #[test]
    fn a_huge_declared_length_allocates_nothing() {
        let mut page = vec![VERSION];
        prost::encoding::encode_varint(u32::MAX as u64, &mut page);
        for v in [u64::MAX, u64::MAX, u64::MAX, 3, 0] {
            prost::encoding::encode_varint(v, &mut page);
        }
        assert!(matches!(decode(&page), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn encode_refuses_an_entry_that_is_not_traces_data() {
        let mut page = Vec::new();
        push_entry(&mut page, &[1; 16], 1, 0, 0, &[0xff, 0xff, 0xff]);
        assert!(matches!(encode(&page), Err(StoreError::InvalidData(_))));
    }

    /// Fails if a realistic page gets bigger than its row encoding compressed at the same zstd
    /// level; prints where the bytes are (`cargo test ... -- --nocapture`).
    #[test]
    fn a_realistic_page_is_smaller_than_the_row_encoding() {
        const LEVEL: i32 = 1;
        // About one 256 KiB (row) page of spans, as blocks cut them.
        let entries = realistic_entries(42, 2000);
        let spans: usize = entries.iter().map(|e| e.span_count as usize).sum();
        let mut k = entries.len();
        let mut page = row_page(&entries);
        while page.len() > 256 * 1024 {
            k = (k * 256 * 1024 / page.len()).min(k - 1);
            page = row_page(&entries[..k]);
        }
        let kept: usize = super::entries("page", &page)
            .map(|e| e.unwrap().span_count as usize)
            .sum();
        let row = zstd::bulk::compress(&page, LEVEL).unwrap();
        // Best of a few runs (the first pays for warming up the allocator).
        let mut columnar = Vec::new();
        let mut back = Vec::new();
        let (mut encode_time, mut decode_time) =
            (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..5 {
            let t = std::time::Instant::now();
            columnar = encode(&page).unwrap();
            encode_time = encode_time.min(t.elapsed());
            let t = std::time::Instant::now();
            back = decode(&columnar).unwrap();
            decode_time = decode_time.min(t.elapsed());
        }
        assert!(back.len() <= page.len());
        let t = std::time::Instant::now();
        let col = zstd::bulk::compress(&columnar, LEVEL).unwrap();
        let zstd_time = t.elapsed();
        let mut prost_time = std::time::Duration::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for e in super::entries("page", &page) {
                std::hint::black_box(TracesData::decode(e.unwrap().data).unwrap());
            }
            prost_time = prost_time.min(t.elapsed());
        }
        println!(
            "encode {:.2} us/span (of which prost's decode {:.2}), decode {:.2} us/span, \
             zstd of the columnar page {:.2} us/span",
            encode_time.as_secs_f64() * 1e6 / kept as f64,
            prost_time.as_secs_f64() * 1e6 / kept as f64,
            decode_time.as_secs_f64() * 1e6 / kept as f64,
            zstd_time.as_secs_f64() * 1e6 / kept as f64
        );
        let per = |n: usize| n as f64 / kept as f64;
        println!(
            "realistic page: {kept} of {spans} spans, row {} B ({:.1} B/span), row+zstd {:.1} B/span, \
             columnar {} B, columnar+zstd {:.1} B/span",
            page.len(),
            per(page.len()),
            per(row.len()),
            columnar.len(),
            per(col.len())
        );
        println!(
            "{:<22} {:>10} {:>12} {:>14}",
            "stream", "bytes", "B/span", "zstd B/span"
        );
        for (name, bytes) in stream_bytes(&columnar).unwrap() {
            let z = zstd::bulk::compress(&bytes, LEVEL).unwrap().len();
            println!(
                "{name:<22} {:>10} {:>12.2} {:>14.2}",
                bytes.len(),
                per(bytes.len()),
                per(z)
            );
        }
        let streams: usize = stream_sizes(&columnar).unwrap().iter().map(|s| s.1).sum();
        assert!(streams < columnar.len() && streams + 200 > columnar.len());
        assert!(
            col.len() <= row.len(),
            "columnar {} bytes > row {} bytes",
            col.len(),
            row.len()
        );
    }
}
