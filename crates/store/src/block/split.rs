//! Splitting a stored write into its traces at the protobuf level, without decoding spans: each
//! trace gets a `TracesData` of its own in which its spans keep their resource and scope (whose
//! bytes are copied as they are). Core logic, no I/O.

use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use rustc_hash::FxHashMap;
use sextant_otlp_proto::TraceId;

/// One field of a message: its number and the raw bytes of key and value together.
struct Field<'a> {
    number: u32,
    /// The value of a length-delimited field (empty for others).
    value: &'a [u8],
    /// Key and value, as they were.
    raw: &'a [u8],
}

fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<Field<'_>, String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let start = buf;
        let mut next = || -> Result<Field<'_>, String> {
            let (number, wt) = decode_key(&mut buf).map_err(|e| e.to_string())?;
            let value: &[u8] = match wt {
                WireType::Varint => {
                    decode_varint(&mut buf).map_err(|e| e.to_string())?;
                    &[]
                }
                WireType::SixtyFourBit => {
                    buf = buf.get(8..).ok_or("truncated fixed64")?;
                    &[]
                }
                WireType::ThirtyTwoBit => {
                    buf = buf.get(4..).ok_or("truncated fixed32")?;
                    &[]
                }
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut buf).map_err(|e| e.to_string())? as usize;
                    if len > buf.len() {
                        return Err("length past the end of the message".into());
                    }
                    let (v, rest) = buf.split_at(len);
                    buf = rest;
                    v
                }
                WireType::StartGroup | WireType::EndGroup => {
                    return Err("groups are not used by OTLP".into());
                }
            };
            let used = start.len() - buf.len();
            Ok(Field {
                number,
                value,
                raw: &start[..used],
            })
        };
        let r = next();
        if r.is_err() {
            buf = &[];
        }
        Some(r)
    })
}

fn put_message(out: &mut Vec<u8>, number: u32, body: &[u8]) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// The span's trace id (field 1).
fn trace_id_of(span: &[u8]) -> Result<TraceId, String> {
    for f in fields(span) {
        let f = f?;
        if f.number == 1 {
            return TraceId::from_slice(f.value).map_err(|e| e.to_string());
        }
    }
    Err("a span has no trace id".into())
}

/// A span's resource and scope (indexes) and bytes.
type SpanAt<'a> = (usize, usize, &'a [u8]);

/// Splits `TracesData` (or `ExportTraceServiceRequest`) bytes by trace. Traces come out in the
/// order their first span appears.
pub fn split_by_trace(data: &[u8]) -> Result<Vec<(TraceId, Vec<u8>)>, String> {
    struct Scope<'a> {
        other: Vec<&'a [u8]>,
    }
    struct Resource<'a> {
        other: Vec<&'a [u8]>,
        scopes: Vec<Scope<'a>>,
    }
    let mut resources: Vec<Resource<'_>> = Vec::new();
    // Per trace: (resource, scope, span bytes), in order.
    let mut order: Vec<TraceId> = Vec::new();
    let mut per_trace: FxHashMap<TraceId, Vec<SpanAt<'_>>> = FxHashMap::default();
    for f in fields(data) {
        let f = f?;
        if f.number != 1 {
            continue;
        }
        let ri = resources.len();
        let mut res = Resource {
            other: Vec::new(),
            scopes: Vec::new(),
        };
        for rf in fields(f.value) {
            let rf = rf?;
            if rf.number != 2 {
                res.other.push(rf.raw);
                continue;
            }
            let si = res.scopes.len();
            let mut scope = Scope { other: Vec::new() };
            for sf in fields(rf.value) {
                let sf = sf?;
                if sf.number != 2 {
                    scope.other.push(sf.raw);
                    continue;
                }
                let id = trace_id_of(sf.value)?;
                let spans = per_trace.entry(id).or_insert_with(|| {
                    order.push(id);
                    Vec::new()
                });
                spans.push((ri, si, sf.value));
            }
            res.scopes.push(scope);
        }
        resources.push(res);
    }
    let mut out = Vec::with_capacity(order.len());
    let mut rs_body = Vec::new();
    let mut ss_body = Vec::new();
    for id in order {
        let spans = per_trace.remove(&id).unwrap_or_default();
        let mut data = Vec::new();
        let mut i = 0;
        while i < spans.len() {
            let ri = spans[i].0;
            rs_body.clear();
            for raw in &resources[ri].other {
                rs_body.extend_from_slice(raw);
            }
            while i < spans.len() && spans[i].0 == ri {
                let si = spans[i].1;
                ss_body.clear();
                for raw in &resources[ri].scopes[si].other {
                    ss_body.extend_from_slice(raw);
                }
                while i < spans.len() && spans[i].0 == ri && spans[i].1 == si {
                    put_message(&mut ss_body, 2, spans[i].2);
                    i += 1;
                }
                put_message(&mut rs_body, 2, &ss_body);
            }
            put_message(&mut data, 1, &rs_body);
        }
        out.push((id, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;
    use prost::Message;
    use sextant_otlp_proto::attr;
    use sextant_otlp_proto::proto::{
        InstrumentationScope, Resource, ResourceSpans, ScopeSpans, Span, TracesData,
    };

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("s{id}"),
            attributes: vec![attr::kv_str("k", "v")],
            ..Default::default()
        }
    }

    fn rs(service: &str, scopes: Vec<(&str, Vec<Span>)>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr::kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: scopes
                .into_iter()
                .map(|(name, spans)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: name.into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: format!("https://schema/{name}"),
                })
                .collect(),
            schema_url: "https://schema/r".into(),
        }
    }

    #[test]
    fn split_equals_extract() {
        let data = TracesData {
            resource_spans: vec![
                rs(
                    "a",
                    vec![
                        ("lib1", vec![span(1, 1), span(2, 2), span(1, 3)]),
                        ("lib2", vec![span(2, 4)]),
                    ],
                ),
                rs("b", vec![("lib1", vec![span(3, 5), span(1, 6)])]),
            ],
        };
        let bytes = data.encode_to_vec();
        let parts = split_by_trace(&bytes).unwrap();
        let ids: Vec<u8> = parts.iter().map(|(id, _)| id.as_bytes()[0]).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        for (id, part) in parts {
            let got = TracesData::decode(part.as_slice()).unwrap().resource_spans;
            assert_eq!(
                got,
                encode::extract_trace(&data.resource_spans, &id),
                "trace {id:?}"
            );
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let data = TracesData {
            resource_spans: vec![rs("a", vec![("lib", vec![span(1, 1)])])],
        };
        let bytes = data.encode_to_vec();
        for cut in 1..bytes.len() {
            // Never a panic; a cut inside a length-delimited field is reported.
            let _ = split_by_trace(&bytes[..cut]);
        }
        assert!(split_by_trace(&bytes[..bytes.len() - 1]).is_err());
    }
}
