//! How a write becomes stored bytes, and how they become spans again (no I/O).
//!
//! A write is stored whole, as one *batch*: a small [`BatchMeta`] header (readable without
//! decompressing) followed by the zstd-compressed protobuf `TracesData` of all its spans, so
//! that repeated strings across the whole write compress together. Each trace in the write gets
//! a small [`TraceMeta`] in the trace index, pointing at the batch.

use std::collections::HashMap;

use prost::Message;
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{ResourceSpans, TracesData};
use sextant_otlp_proto::TraceId;

use crate::error::StoreError;

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
    pub rejected_spans: u64,
    pub rejection: String,
}

/// Removes spans whose trace id is not 16 bytes or is all zeros, returning how many and why.
pub fn reject_invalid(batch: &mut Vec<ResourceSpans>) -> (u64, String) {
    let mut rejected = 0u64;
    let mut why = String::new();
    for rs in batch.iter_mut() {
        for ss in rs.scope_spans.iter_mut() {
            ss.spans.retain(|span| {
                let problem = match TraceId::from_slice(&span.trace_id) {
                    Ok(id) if id.is_zero() => {
                        format!("span {:?} has an all-zero trace id", span.name)
                    }
                    Ok(_) => return true,
                    Err(e) => format!("span {:?}: {e}", span.name),
                };
                rejected += 1;
                if why.is_empty() {
                    why = problem;
                }
                false
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    batch.retain(|rs| !rs.scope_spans.is_empty());
    (rejected, why)
}

/// Builds the stored form of a write. Invalid spans are removed and counted first.
pub fn encode_batch(
    mut batch: Vec<ResourceSpans>,
    arrival_ns: u64,
    level: i32,
) -> Result<EncodedBatch, StoreError> {
    let (rejected_spans, rejection) = reject_invalid(&mut batch);
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    let mut traces: Vec<(TraceId, TraceMeta)> = Vec::new();
    let mut meta = BatchMeta {
        arrival_ns,
        start_ns: u64::MAX,
        end_ns: 0,
        span_count: 0,
        trace_count: 0,
    };
    for rs in &batch {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let Ok(id) = TraceId::from_slice(&span.trace_id) else {
                    continue;
                };
                let slot = *index.entry(id).or_insert_with(|| {
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
                if is_root(&span.parent_span_id)
                    && t.root
                        .as_ref()
                        .is_none_or(|r| span.start_time_unix_nano < r.start_ns)
                {
                    t.root = Some(RootInfo {
                        service: attr::service_name(rs.resource.as_ref()).to_string(),
                        name: span.name.clone(),
                        start_ns: span.start_time_unix_nano,
                    });
                }
                meta.span_count += 1;
                meta.start_ns = meta.start_ns.min(span.start_time_unix_nano);
                meta.end_ns = meta.end_ns.max(span.end_time_unix_nano);
            }
        }
    }
    if meta.span_count == 0 {
        meta.start_ns = 0;
    }
    meta.trace_count = traces.len() as u32;
    let payload = TracesData {
        resource_spans: batch,
    }
    .encode_to_vec();
    let compressed = compress(&payload, level)?;
    let meta_bytes = meta.encode_length_delimited_to_vec();
    let mut value = Vec::with_capacity(1 + meta_bytes.len() + compressed.len());
    value.push(FORMAT_V1);
    value.extend_from_slice(&meta_bytes);
    value.extend_from_slice(&compressed);
    Ok(EncodedBatch {
        meta,
        value,
        traces,
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
    use sextant_otlp_proto::proto::{Resource, ScopeSpans, Span};

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
        let enc = encode_batch(batch, 5, 3).unwrap();
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
