//! How a write becomes stored entries, and how entries become spans again (no I/O).
//!
//! A write is split by trace: each trace's spans in that write, with their resources and scopes,
//! become one *entry*: a small [`EntryMeta`] header (readable without decompressing) followed by
//! the zstd-compressed protobuf `TracesData` of those spans.

use std::collections::HashMap;

use prost::Message;
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans, TracesData};
use sextant_otlp_proto::TraceId;

use crate::error::StoreError;

const FORMAT_V1: u8 = 1;

/// The header of an entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryMeta {
    #[prost(fixed64, tag = "1")]
    pub start_ns: u64,
    #[prost(fixed64, tag = "2")]
    pub end_ns: u64,
    #[prost(uint32, tag = "3")]
    pub span_count: u32,
    /// Set when the entry holds the trace's root span.
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

/// One trace's part of a write, ready to store.
pub struct Entry {
    pub trace_id: TraceId,
    pub meta: EntryMeta,
    pub value: Vec<u8>,
}

/// The spans of one write, split by trace.
pub struct Split {
    pub traces: Vec<(TraceId, Vec<ResourceSpans>)>,
    pub rejected_spans: u64,
    pub rejection: String,
}

/// Splits a batch by trace id. Spans whose trace id is not 16 bytes, or all zeros, are rejected
/// (counted and described, never stored).
pub fn split_by_trace(batch: Vec<ResourceSpans>) -> Split {
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    // Per trace: its resource spans, and which (resource, scope) of the input the last ones are.
    let mut traces: Vec<(TraceId, Vec<ResourceSpans>, (usize, usize))> = Vec::new();
    let mut rejected_spans = 0u64;
    let mut rejection = String::new();
    for (ri, rs) in batch.into_iter().enumerate() {
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = rs;
        for (si, ss) in scope_spans.into_iter().enumerate() {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema,
            } = ss;
            for span in spans {
                let id = match TraceId::from_slice(&span.trace_id) {
                    Ok(id) if !id.is_zero() => id,
                    Ok(_) => {
                        rejected_spans += 1;
                        if rejection.is_empty() {
                            rejection = format!("span {:?} has an all-zero trace id", span.name);
                        }
                        continue;
                    }
                    Err(e) => {
                        rejected_spans += 1;
                        if rejection.is_empty() {
                            rejection = format!("span {:?}: {e}", span.name);
                        }
                        continue;
                    }
                };
                let slot = *index.entry(id).or_insert_with(|| {
                    traces.push((id, Vec::new(), (usize::MAX, usize::MAX)));
                    traces.len() - 1
                });
                let (_, out, last) = &mut traces[slot];
                if last.0 != ri {
                    out.push(ResourceSpans {
                        resource: resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: schema_url.clone(),
                    });
                }
                let Some(rs_out) = out.last_mut() else {
                    continue;
                };
                if *last != (ri, si) {
                    rs_out.scope_spans.push(ScopeSpans {
                        scope: scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope_schema.clone(),
                    });
                }
                *last = (ri, si);
                if let Some(ss_out) = rs_out.scope_spans.last_mut() {
                    ss_out.spans.push(span);
                }
            }
        }
    }
    Split {
        traces: traces.into_iter().map(|(id, rs, _)| (id, rs)).collect(),
        rejected_spans,
        rejection,
    }
}

/// Builds an entry: header + zstd(protobuf).
pub fn encode_entry(
    trace_id: TraceId,
    resource_spans: Vec<ResourceSpans>,
    level: i32,
) -> Result<Entry, StoreError> {
    let mut meta = EntryMeta {
        start_ns: u64::MAX,
        end_ns: 0,
        span_count: 0,
        root: None,
    };
    for rs in &resource_spans {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                meta.span_count += 1;
                meta.start_ns = meta.start_ns.min(span.start_time_unix_nano);
                meta.end_ns = meta.end_ns.max(span.end_time_unix_nano);
                if is_root(&span.parent_span_id) {
                    let earlier = meta
                        .root
                        .as_ref()
                        .is_none_or(|r| span.start_time_unix_nano < r.start_ns);
                    if earlier {
                        meta.root = Some(RootInfo {
                            service: attr::service_name(rs.resource.as_ref()).to_string(),
                            name: span.name.clone(),
                            start_ns: span.start_time_unix_nano,
                        });
                    }
                }
            }
        }
    }
    if meta.span_count == 0 {
        meta.start_ns = 0;
    }
    let payload = TracesData { resource_spans }.encode_to_vec();
    let compressed = compress(&payload, level)?;
    let meta_bytes = meta.encode_length_delimited_to_vec();
    let mut value = Vec::with_capacity(1 + meta_bytes.len() + compressed.len());
    value.push(FORMAT_V1);
    value.extend_from_slice(&meta_bytes);
    value.extend_from_slice(&compressed);
    Ok(Entry {
        trace_id,
        meta,
        value,
    })
}

thread_local! {
    /// One zstd context per thread: creating one per entry costs more than compressing it.
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
        key: hex_key(key),
        problem: problem.into(),
    }
}

fn hex_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads an entry's header and returns it with the rest (the compressed payload).
pub fn decode_meta<'a>(key: &[u8], value: &'a [u8]) -> Result<(EntryMeta, &'a [u8]), StoreError> {
    let Some((&version, rest)) = value.split_first() else {
        return Err(corrupt(key, "empty entry"));
    };
    if version != FORMAT_V1 {
        return Err(corrupt(key, format!("unknown entry format {version}")));
    }
    let mut cursor = rest;
    let len = prost::encoding::decode_varint(&mut cursor)
        .map_err(|e| corrupt(key, format!("bad header length: {e}")))? as usize;
    if len > cursor.len() {
        return Err(corrupt(key, "header longer than the entry"));
    }
    let meta =
        EntryMeta::decode(&cursor[..len]).map_err(|e| corrupt(key, format!("bad header: {e}")))?;
    Ok((meta, &cursor[len..]))
}

/// Decompresses and decodes an entry's spans.
pub fn decode_payload(key: &[u8], payload: &[u8]) -> Result<Vec<ResourceSpans>, StoreError> {
    let bytes = zstd::stream::decode_all(payload)
        .map_err(|e| corrupt(key, format!("bad compression: {e}")))?;
    let data = TracesData::decode(bytes.as_slice())
        .map_err(|e| corrupt(key, format!("bad protobuf: {e}")))?;
    Ok(data.resource_spans)
}

/// Merges the entries of one trace: identical resources and scopes are joined, and a span stored
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
    use sextant_otlp_proto::proto::{Resource, Span};

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
    fn split_groups_by_trace_and_rejects_bad_ids() {
        let mut bad = span(3, 9, 0);
        bad.trace_id = vec![1, 2, 3];
        let zero = span(0, 8, 0);
        let batch = vec![
            rs("a", vec![span(1, 1, 0), span(2, 2, 0), bad, zero]),
            rs("b", vec![span(1, 3, 1)]),
        ];
        let split = split_by_trace(batch);
        assert_eq!(split.rejected_spans, 2);
        assert!(split.rejection.contains("3 bytes"), "{}", split.rejection);
        assert_eq!(split.traces.len(), 2);
        let (id, t1) = &split.traces[0];
        assert_eq!(*id, TraceId([1; 16]));
        assert_eq!(t1.len(), 2, "two resources");
        assert_eq!(sextant_otlp_proto::span_count(t1), 2);
    }

    #[test]
    fn entries_round_trip_and_merge_dedupes() {
        let parts = split_by_trace(vec![rs("a", vec![span(1, 1, 0), span(1, 2, 1)])]);
        let (id, spans) = parts.traces.into_iter().next().unwrap();
        let entry = encode_entry(id, spans.clone(), 3).unwrap();
        assert_eq!(entry.meta.span_count, 2);
        assert_eq!(entry.meta.root.as_ref().unwrap().service, "a");
        assert_eq!(entry.meta.start_ns, 1001);
        let (meta, payload) = decode_meta(b"k", &entry.value).unwrap();
        assert_eq!(meta, entry.meta);
        let back = decode_payload(b"k", payload).unwrap();
        assert_eq!(back, spans);
        // The same spans twice (a retry) plus a late span from the same resource: merged.
        let late = split_by_trace(vec![rs("a", vec![span(1, 3, 2)])])
            .traces
            .remove(0)
            .1;
        let merged = merge(vec![back.clone(), back, late]);
        assert_eq!(merged.len(), 1);
        assert_eq!(sextant_otlp_proto::span_count(&merged), 3);
    }

    #[test]
    fn corrupt_entries_are_reported() {
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
