//! How a write becomes stored bytes, and how they become spans again (no I/O).
//!
//! A write is stored whole, as one *batch*: a small [`BatchMeta`] header (readable without
//! decompressing) followed by the zstd-compressed protobuf `TracesData` of all its spans, so
//! that repeated strings across the whole write compress together. Each trace in the write gets
//! a small [`TraceMeta`] in the trace index, pointing at the batch.

use rustc_hash::FxHashMap;
use std::fmt::Write as _;

use prost::bytes::Bytes;
use prost::Message;
use sextant_otlp_proto::proto::{ResourceSpans, TracesData};
use sextant_otlp_proto::wire::{
    scan_request, scan_validated, KeyValueRef, Recorded, SpanRef, ValueRef, Visitor,
};
use sextant_otlp_proto::{SpanBatch, TraceId};

use crate::error::StoreError;
use crate::types::{TagScope, TagValue};

const FORMAT_V1: u8 = 1;

/// The header of a stored batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchMeta {
    /// When the batch was written (unix ns): spans end before they arrive, so a search can stop
    /// at batches that arrived before its window.
    #[prost(fixed64, tag = "1")]
    pub arrival_ns: u64,
    #[prost(fixed64, tag = "2")]
    pub start_ns: u64,
    #[prost(fixed64, tag = "3")]
    pub end_ns: u64,
    #[prost(uint32, tag = "4")]
    pub span_count: u32,
    #[prost(uint32, tag = "5")]
    pub trace_count: u32,
}

/// One trace's part of one batch, as the trace index keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceMeta {
    #[prost(fixed64, tag = "1")]
    pub start_ns: u64,
    #[prost(fixed64, tag = "2")]
    pub end_ns: u64,
    #[prost(uint32, tag = "3")]
    pub span_count: u32,
    /// Set when this part holds the trace's root span.
    #[prost(message, optional, tag = "4")]
    pub root: Option<RootInfo>,
}

/// What a search result shows of the root span.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RootInfo {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(fixed64, tag = "3")]
    pub start_ns: u64,
}

/// A write, ready to store.
pub struct EncodedBatch {
    pub meta: BatchMeta,
    pub value: Vec<u8>,
    pub traces: Vec<(TraceId, TraceMeta)>,
    /// Tags the `known` check did not know.
    pub new_tags: Vec<NewTag>,
    pub rejected_spans: u64,
    pub rejection: String,
}

/// A tag (and value) seen for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTag {
    pub scope: TagScope,
    pub key: String,
    pub value: Option<TagValue>,
}

/// Asks whether a tag, or a tag's value (type and text), is known already.
pub type KnownTag<'k> = dyn Fn(TagScope, &str, Option<(&'static str, &str)>) -> bool + 'k;

/// Removes spans whose trace id is not 16 bytes or is all zeros, returning how many and why.
pub fn reject_invalid(batch: &mut Vec<ResourceSpans>) -> (u64, String) {
    let mut rejected = 0u64;
    let mut why = String::new();
    for rs in batch.iter_mut() {
        for ss in rs.scope_spans.iter_mut() {
            ss.spans
                .retain(|span| match invalid_trace_id(&span.trace_id, &span.name) {
                    None => true,
                    Some(problem) => {
                        rejected += 1;
                        if why.is_empty() {
                            why = problem;
                        }
                        false
                    }
                });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    batch.retain(|rs| !rs.scope_spans.is_empty());
    (rejected, why)
}

fn invalid_trace_id(trace_id: &[u8], name: &str) -> Option<String> {
    match TraceId::from_slice(trace_id) {
        Ok(id) if id.is_zero() => Some(format!("span {name:?} has an all-zero trace id")),
        Ok(_) => None,
        Err(e) => Some(format!("span {name:?}: {e}")),
    }
}

/// What a scan of the parts found.
struct Index {
    traces: Vec<(TraceId, TraceMeta)>,
    new_tags: Vec<NewTag>,
    spans: u32,
    start_ns: u64,
    end_ns: u64,
}

/// The visitor that builds an [`Index`]; stops caring once a span has an invalid trace id.
struct Indexer<'k> {
    known: &'k KnownTag<'k>,
    slots: FxHashMap<TraceId, usize>,
    index: Index,
    service: String,
    invalid: bool,
    buf: String,
}

impl Indexer<'_> {
    fn observe(&mut self, scope: TagScope, kv: &KeyValueRef<'_>) {
        let (type_name, text): (&'static str, &str) = match kv.value {
            ValueRef::Str(s) => ("string", s),
            ValueRef::Int(i) => {
                self.buf.clear();
                let _ = write!(self.buf, "{i}");
                ("int", self.buf.as_str())
            }
            ValueRef::Double(d) => {
                self.buf.clear();
                let _ = write!(self.buf, "{d}");
                ("float", self.buf.as_str())
            }
            ValueRef::Bool(b) => ("bool", if b { "true" } else { "false" }),
            _ => {
                if !(self.known)(scope, kv.key, None) {
                    self.index.new_tags.push(NewTag {
                        scope,
                        key: kv.key.to_string(),
                        value: None,
                    });
                }
                return;
            }
        };
        if !(self.known)(scope, kv.key, Some((type_name, text))) {
            let value = Some(TagValue {
                value: text.to_string(),
                type_name: type_name.to_string(),
            });
            let tag = NewTag {
                scope,
                key: kv.key.to_string(),
                value,
            };
            if !self.index.new_tags.contains(&tag) {
                self.index.new_tags.push(tag);
            }
        }
    }
}

impl<'a> Visitor<'a> for Indexer<'_> {
    fn resource(&mut self, attributes: &[KeyValueRef<'a>]) {
        self.service = attributes
            .iter()
            .find_map(|kv| match (kv.key, kv.value) {
                ("service.name", ValueRef::Str(s)) => Some(s.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "unknown_service".to_string());
        for kv in attributes {
            self.observe(TagScope::Resource, kv);
        }
    }

    fn span(&mut self, span: &SpanRef<'a>) {
        if self.invalid || invalid_trace_id(span.trace_id, span.name).is_some() {
            self.invalid = true;
            return;
        }
        let Ok(id) = TraceId::from_slice(span.trace_id) else {
            return;
        };
        let traces = &mut self.index.traces;
        let slot = *self.slots.entry(id).or_insert_with(|| {
            traces.push((
                id,
                TraceMeta {
                    start_ns: u64::MAX,
                    end_ns: 0,
                    span_count: 0,
                    root: None,
                },
            ));
            traces.len() - 1
        });
        let t = &mut traces[slot].1;
        t.span_count += 1;
        t.start_ns = t.start_ns.min(span.start_time_unix_nano);
        t.end_ns = t.end_ns.max(span.end_time_unix_nano);
        if is_root(span.parent_span_id)
            && t.root
                .as_ref()
                .is_none_or(|r| span.start_time_unix_nano < r.start_ns)
        {
            t.root = Some(RootInfo {
                service: self.service.clone(),
                name: span.name.to_string(),
                start_ns: span.start_time_unix_nano,
            });
        }
        self.index.spans += 1;
        self.index.start_ns = self.index.start_ns.min(span.start_time_unix_nano);
        self.index.end_ns = self.index.end_ns.max(span.end_time_unix_nano);
        for kv in &span.attributes {
            self.observe(TagScope::Span, kv);
        }
    }
}

/// Scans every part; `None` when some span has an invalid trace id. Parts from `encoded` were
/// validated by the receiver; `validated_parts` says how many of the first parts those are.
fn index(
    parts: &[Bytes],
    validated_parts: usize,
    recorded: &[Option<std::sync::Arc<Recorded>>],
    known: &KnownTag<'_>,
) -> Result<Option<Index>, StoreError> {
    let mut ix = Indexer {
        known,
        slots: FxHashMap::default(),
        index: Index {
            traces: Vec::new(),
            new_tags: Vec::new(),
            spans: 0,
            start_ns: u64::MAX,
            end_ns: 0,
        },
        service: String::new(),
        invalid: false,
        buf: String::new(),
    };
    for (i, part) in parts.iter().enumerate() {
        let scanned = match recorded.get(i).and_then(|r| r.as_deref()) {
            // What the receiver's scan saw: no second parse.
            Some(rec) if i < validated_parts => rec.replay(part, &mut ix),
            _ if i < validated_parts => scan_validated(part, &mut ix),
            _ => scan_request(part, &mut ix),
        };
        scanned.map_err(|e| StoreError::InvalidData(e.to_string()))?;
        if ix.invalid {
            return Ok(None);
        }
    }
    Ok(Some(ix.index))
}

/// Builds the stored form of a write. Encoded parts are stored as they came (they are one
/// valid `TracesData` when concatenated); decoded parts are encoded once. Spans with an invalid
/// trace id are removed and counted (this decodes the batch, which well-behaved clients never
/// cause).
pub fn encode_batch(
    batch: SpanBatch,
    arrival_ns: u64,
    level: i32,
    known: &KnownTag<'_>,
) -> Result<EncodedBatch, StoreError> {
    let mut rejected_spans = 0;
    let mut rejection = String::new();
    let mut parts = batch.encoded;
    let recorded = batch.recorded;
    let validated = parts.len();
    if !batch.decoded.is_empty() {
        parts.push(Bytes::from(
            TracesData {
                resource_spans: batch.decoded,
            }
            .encode_to_vec(),
        ));
    }
    let index = match index(&parts, validated, &recorded, known)? {
        Some(ix) => ix,
        None => {
            let mut all = SpanBatch {
                encoded: std::mem::take(&mut parts),
                ..Default::default()
            };
            let spans = std::mem::take(
                all.decode()
                    .map_err(|e| StoreError::InvalidData(format!("invalid protobuf: {e}")))?,
            );
            let mut spans = spans;
            (rejected_spans, rejection) = reject_invalid(&mut spans);
            parts = vec![Bytes::from(
                TracesData {
                    resource_spans: spans,
                }
                .encode_to_vec(),
            )];
            index(&parts, 0, &[], known)?
                .ok_or_else(|| StoreError::InvalidData("invalid trace ids remain".into()))?
        }
    };
    let meta = BatchMeta {
        arrival_ns,
        start_ns: if index.spans == 0 { 0 } else { index.start_ns },
        end_ns: index.end_ns,
        span_count: index.spans,
        trace_count: index.traces.len() as u32,
    };
    let total: usize = parts.iter().map(Bytes::len).sum();
    let compressed = if parts.len() == 1 {
        compress(&parts[0], level)?
    } else {
        let mut payload = Vec::with_capacity(total);
        for p in &parts {
            payload.extend_from_slice(p);
        }
        compress(&payload, level)?
    };
    let meta_bytes = meta.encode_length_delimited_to_vec();
    let mut value = Vec::with_capacity(1 + meta_bytes.len() + compressed.len());
    value.push(FORMAT_V1);
    value.extend_from_slice(&meta_bytes);
    value.extend_from_slice(&compressed);
    Ok(EncodedBatch {
        meta,
        value,
        traces: index.traces,
        new_tags: index.new_tags,
        rejected_spans,
        rejection,
    })
}

thread_local! {
    /// One zstd context per thread: creating one per batch costs more than it should.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(data),
            None => zstd::bulk::compress(data, level),
        }
    })
}

/// A root span has no parent (an empty or all-zero parent span id).
pub fn is_root(parent_span_id: &[u8]) -> bool {
    parent_span_id.iter().all(|b| *b == 0)
}

fn corrupt(key: &[u8], problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        problem: problem.into(),
    }
}

/// Reads a batch's header and returns it with the rest (the compressed payload).
pub fn decode_meta<'a>(key: &[u8], value: &'a [u8]) -> Result<(BatchMeta, &'a [u8]), StoreError> {
    let Some((&version, rest)) = value.split_first() else {
        return Err(corrupt(key, "empty batch"));
    };
    if version != FORMAT_V1 {
        return Err(corrupt(key, format!("unknown batch format {version}")));
    }
    let mut cursor = rest;
    let len = prost::encoding::decode_varint(&mut cursor)
        .map_err(|e| corrupt(key, format!("bad header length: {e}")))? as usize;
    if len > cursor.len() {
        return Err(corrupt(key, "header longer than the batch"));
    }
    let meta =
        BatchMeta::decode(&cursor[..len]).map_err(|e| corrupt(key, format!("bad header: {e}")))?;
    Ok((meta, &cursor[len..]))
}

/// Decompresses and decodes a batch's spans.
pub fn decode_payload(key: &[u8], payload: &[u8]) -> Result<Vec<ResourceSpans>, StoreError> {
    let bytes = zstd::stream::decode_all(payload)
        .map_err(|e| corrupt(key, format!("bad compression: {e}")))?;
    let data = TracesData::decode(bytes.as_slice())
        .map_err(|e| corrupt(key, format!("bad protobuf: {e}")))?;
    Ok(data.resource_spans)
}

/// Decodes a trace index value.
pub fn decode_trace_meta(key: &[u8], value: &[u8]) -> Result<TraceMeta, StoreError> {
    TraceMeta::decode(value).map_err(|e| corrupt(key, format!("bad trace index entry: {e}")))
}

/// The spans of one trace in a batch, with their resources and scopes.
pub fn extract_trace(batch: &[ResourceSpans], id: &TraceId) -> Vec<ResourceSpans> {
    let mut out = Vec::new();
    for rs in batch {
        let mut scope_spans = Vec::new();
        for ss in &rs.scope_spans {
            let spans: Vec<_> = ss
                .spans
                .iter()
                .filter(|s| s.trace_id.as_slice() == id.as_bytes())
                .cloned()
                .collect();
            if !spans.is_empty() {
                scope_spans.push(sextant_otlp_proto::proto::ScopeSpans {
                    scope: ss.scope.clone(),
                    spans,
                    schema_url: ss.schema_url.clone(),
                });
            }
        }
        if !scope_spans.is_empty() {
            out.push(ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans,
                schema_url: rs.schema_url.clone(),
            });
        }
    }
    out
}

/// Merges the parts of one trace: identical resources and scopes are joined, and a span stored
/// twice (a client retry) appears once.
pub fn merge(parts: Vec<Vec<ResourceSpans>>) -> Vec<ResourceSpans> {
    let mut out: Vec<ResourceSpans> = Vec::new();
    for part in parts {
        for rs in part {
            let slot = out
                .iter()
                .position(|o| o.resource == rs.resource && o.schema_url == rs.schema_url);
            let target = match slot {
                Some(i) => &mut out[i],
                None => {
                    out.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    });
                    let last = out.len() - 1;
                    &mut out[last]
                }
            };
            for ss in rs.scope_spans {
                let slot = target
                    .scope_spans
                    .iter()
                    .position(|o| o.scope == ss.scope && o.schema_url == ss.schema_url);
                match slot {
                    Some(i) => {
                        let existing = &mut target.scope_spans[i].spans;
                        for span in ss.spans {
                            if !existing
                                .iter()
                                .any(|e| e.span_id == span.span_id && *e == span)
                            {
                                existing.push(span);
                            }
                        }
                    }
                    None => target.scope_spans.push(ss),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_otlp_proto::attr;
    use sextant_otlp_proto::proto::{Resource, ScopeSpans, Span};

    #[test]
    fn encoded_parts_are_stored_as_they_came_and_tags_are_reported_once() {
        let req = sextant_otlp_proto::proto::ExportTraceServiceRequest {
            resource_spans: vec![rs("a", vec![span(1, 1, 0)]), rs("b", vec![span(1, 2, 1)])],
        };
        let bytes = Bytes::from(req.encode_to_vec());
        let mut batch = SpanBatch::from_encoded(bytes.clone(), 2);
        batch.append(SpanBatch::from_encoded(bytes, 2));
        let enc = encode_batch(batch, 5, 1, &|_, key, _| key == "known").unwrap();
        assert_eq!(enc.meta.span_count, 4);
        assert_eq!(enc.traces.len(), 1);
        assert_eq!(enc.traces[0].1.span_count, 4);
        let services: Vec<_> = enc
            .new_tags
            .iter()
            .filter(|t| t.key == "service.name")
            .collect();
        assert_eq!(services.len(), 2, "{:?}", enc.new_tags);
        let (_, payload) = decode_meta(b"k", &enc.value).unwrap();
        assert_eq!(
            sextant_otlp_proto::span_count(&decode_payload(b"k", payload).unwrap()),
            4
        );
        // The receiver's recording gives the same index as a scan.
        let bytes = Bytes::from(req.encode_to_vec());
        let mut rec = sextant_otlp_proto::wire::Recorder::new(&bytes);
        sextant_otlp_proto::wire::scan_request(&bytes, &mut rec).unwrap();
        let scanned = SpanBatch::from_scanned(bytes.clone(), rec.finish());
        let replayed = encode_batch(scanned, 5, 1, &|_, key, _| key == "known").unwrap();
        let plain = encode_batch(SpanBatch::from_encoded(bytes, 2), 5, 1, &|_, key, _| {
            key == "known"
        })
        .unwrap();
        assert_eq!(replayed.traces, plain.traces);
        assert_eq!(replayed.new_tags, plain.new_tags);
        assert_eq!(replayed.meta, plain.meta);
        // Garbage in an encoded part is refused, not stored.
        let bad = SpanBatch::from_encoded(Bytes::from_static(b"\xff\xff"), 1);
        assert!(matches!(
            encode_batch(bad, 5, 1, &|_, _, _| true),
            Err(StoreError::InvalidData(_))
        ));
    }

    fn span(trace: u8, id: u8, parent: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: format!("op{id}"),
            start_time_unix_nano: 1000 + id as u64,
            end_time_unix_nano: 2000 + id as u64,
            ..Default::default()
        }
    }

    fn rs(service: &str, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr::kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }
    }

    #[test]
    fn batches_index_their_traces_and_reject_bad_ids() {
        let mut bad = span(3, 9, 0);
        bad.trace_id = vec![1, 2, 3];
        let zero = span(0, 8, 0);
        let batch = vec![
            rs("a", vec![span(1, 1, 0), span(2, 2, 0), bad, zero]),
            rs("b", vec![span(1, 3, 1)]),
        ];
        let enc = encode_batch(SpanBatch::from_decoded(batch), 5, 3, &|_, _, _| false).unwrap();
        assert_eq!(enc.rejected_spans, 2);
        assert!(enc.rejection.contains("3 bytes"), "{}", enc.rejection);
        assert_eq!(enc.meta.span_count, 3);
        assert_eq!(enc.meta.trace_count, 2);
        assert_eq!(enc.meta.start_ns, 1001);
        assert_eq!(enc.meta.end_ns, 2003);
        let (id, t1) = &enc.traces[0];
        assert_eq!(*id, TraceId([1; 16]));
        assert_eq!(t1.span_count, 2);
        assert_eq!(t1.root.as_ref().unwrap().service, "a");
        assert_eq!(t1.root.as_ref().unwrap().name, "op1");
        assert!(enc.traces[1].1.root.is_some());

        let (meta, payload) = decode_meta(b"k", &enc.value).unwrap();
        assert_eq!(meta, enc.meta);
        let back = decode_payload(b"k", payload).unwrap();
        assert_eq!(sextant_otlp_proto::span_count(&back), 3);
        let t = extract_trace(&back, &TraceId([1; 16]));
        assert_eq!(t.len(), 2, "two resources");
        assert_eq!(sextant_otlp_proto::span_count(&t), 2);
    }

    #[test]
    fn merge_joins_resources_and_dedupes_retries() {
        let a = vec![rs("a", vec![span(1, 1, 0), span(1, 2, 1)])];
        let late = vec![rs("a", vec![span(1, 3, 2)])];
        let merged = merge(vec![a.clone(), a, late]);
        assert_eq!(merged.len(), 1);
        assert_eq!(sextant_otlp_proto::span_count(&merged), 3);
    }

    #[test]
    fn corrupt_batches_are_reported() {
        assert!(matches!(
            decode_meta(b"k", &[]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_meta(b"k", &[9, 1, 2]),
            Err(StoreError::Corrupt { .. })
        ));
        let err = decode_payload(b"\x01", b"not zstd").unwrap_err();
        assert!(err.to_string().contains("entry 01 is corrupt"), "{err}");
    }
}
