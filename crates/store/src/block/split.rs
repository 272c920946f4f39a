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

/// A span's trace id when it is one a store accepts (16 bytes, not all zeros).
fn valid_trace_id(span: &[u8]) -> Result<Option<TraceId>, String> {
    for f in fields(span) {
        let f = f?;
        if f.number == 1 {
            return Ok(TraceId::from_slice(f.value).ok().filter(|id| !id.is_zero()));
        }
    }
    Ok(None)
}

/// Calls `on_span` with every span of `TracesData` bytes: its trace id (`None` when the id is
/// not a valid one: the store refuses such spans elsewhere) and the length of the span's
/// encoding. Reads only the keys and lengths down to the spans and each span's first fields.
pub fn for_each_span(
    data: &[u8],
    on_span: &mut dyn FnMut(Option<TraceId>, usize),
) -> Result<(), String> {
    for f in fields(data) {
        let f = f?;
        if f.number != 1 {
            continue;
        }
        for rf in fields(f.value) {
            let rf = rf?;
            if rf.number != 2 {
                continue;
            }
            for sf in fields(rf.value) {
                let sf = sf?;
                if sf.number == 2 {
                    on_span(valid_trace_id(sf.value)?, sf.value.len());
                }
            }
        }
    }
    Ok(())
}

/// Rebuilds `TracesData` bytes keeping only the spans for which `keep` holds (given the span's
/// trace id as [`for_each_span`] gives it). Resources and scopes keep their other fields byte
/// for byte; a scope or resource left without spans is dropped. Spans are copied, not decoded.
pub fn retain_spans(
    data: &[u8],
    keep: &mut dyn FnMut(Option<TraceId>) -> bool,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len());
    let mut rs_body = Vec::new();
    let mut ss_body = Vec::new();
    for f in fields(data) {
        let f = f?;
        if f.number != 1 {
            out.extend_from_slice(f.raw);
            continue;
        }
        rs_body.clear();
        let mut scopes_kept = 0usize;
        for rf in fields(f.value) {
            let rf = rf?;
            if rf.number != 2 {
                rs_body.extend_from_slice(rf.raw);
                continue;
            }
            ss_body.clear();
            let mut spans_kept = 0usize;
            for sf in fields(rf.value) {
                let sf = sf?;
                if sf.number != 2 {
                    ss_body.extend_from_slice(sf.raw);
                } else if keep(valid_trace_id(sf.value)?) {
                    ss_body.extend_from_slice(sf.raw);
                    spans_kept += 1;
                }
            }
            if spans_kept > 0 {
                put_message(&mut rs_body, 2, &ss_body);
                scopes_kept += 1;
            }
        }
        if scopes_kept > 0 {
            put_message(&mut out, 1, &rs_body);
        }
    }
    Ok(out)
}

/// Nesting of `AnyValue`s looked into (the receivers refuse more than 64 levels).
const MAX_VALUE_DEPTH: u32 = 100;

/// Whether some attribute string value (of a resource, span, span event or span link, or
/// inside an array or key-value list of one) is longer than `max` bytes. A message no longer
/// than `max` cannot hold such a string and is skipped without being read, so that a batch of
/// ordinary spans costs one key and length per span.
pub fn has_long_value(data: &[u8], max: usize) -> Result<bool, String> {
    if data.len() <= max {
        return Ok(false);
    }
    for f in fields(data) {
        let f = f?;
        if f.number != 1 || f.value.len() <= max {
            continue;
        }
        for rf in fields(f.value) {
            let rf = rf?;
            if rf.value.len() <= max {
                continue;
            }
            match rf.number {
                // Resource: attributes are field 1.
                1 if attrs_have_long(rf.value, 1, max)? => return Ok(true),
                2 => {
                    for sf in fields(rf.value) {
                        let sf = sf?;
                        if sf.number == 2 && sf.value.len() > max && span_has_long(sf.value, max)? {
                            return Ok(true);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(false)
}

/// A span: attributes (9), events (11, attributes 3), links (13, attributes 4).
fn span_has_long(span: &[u8], max: usize) -> Result<bool, String> {
    for f in fields(span) {
        let f = f?;
        if f.value.len() <= max {
            continue;
        }
        let long = match f.number {
            9 => kv_has_long(f.value, max, 0)?,
            11 => attrs_have_long(f.value, 3, max)?,
            13 => attrs_have_long(f.value, 4, max)?,
            _ => false,
        };
        if long {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A message whose field `number` is its repeated `KeyValue` attributes.
fn attrs_have_long(msg: &[u8], number: u32, max: usize) -> Result<bool, String> {
    for f in fields(msg) {
        let f = f?;
        if f.number == number && f.value.len() > max && kv_has_long(f.value, max, 0)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A `KeyValue`: the value is field 2.
fn kv_has_long(kv: &[u8], max: usize, depth: u32) -> Result<bool, String> {
    for f in fields(kv) {
        let f = f?;
        if f.number == 2 && f.value.len() > max && any_has_long(f.value, max, depth + 1)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An `AnyValue`: string (1), array (5: `values` = 1, `AnyValue`s), key-value list
/// (6: `values` = 1, `KeyValue`s).
fn any_has_long(value: &[u8], max: usize, depth: u32) -> Result<bool, String> {
    if depth > MAX_VALUE_DEPTH {
        return Err("attribute values nested too deeply".into());
    }
    for f in fields(value) {
        let f = f?;
        if f.value.len() <= max {
            continue;
        }
        match f.number {
            1 => return Ok(true),
            5 | 6 => {
                for inner in fields(f.value) {
                    let inner = inner?;
                    if inner.number != 1 || inner.value.len() <= max {
                        continue;
                    }
                    let long = if f.number == 5 {
                        any_has_long(inner.value, max, depth + 1)?
                    } else {
                        kv_has_long(inner.value, max, depth + 1)?
                    };
                    if long {
                        return Ok(true);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(false)
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

    fn longest(v: &sextant_otlp_proto::proto::AnyValue) -> usize {
        use sextant_otlp_proto::proto::any_value::Value;
        match &v.value {
            Some(Value::StringValue(s)) => s.len(),
            Some(Value::ArrayValue(a)) => a.values.iter().map(longest).max().unwrap_or(0),
            Some(Value::KvlistValue(l)) => l
                .values
                .iter()
                .filter_map(|kv| kv.value.as_ref())
                .map(longest)
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }

    fn longest_kv(attrs: &[sextant_otlp_proto::proto::KeyValue]) -> usize {
        attrs
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .map(longest)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn long_values_are_found_wherever_they_are() {
        use sextant_otlp_proto::proto::any_value::Value;
        use sextant_otlp_proto::proto::span::{Event, Link};
        use sextant_otlp_proto::proto::{AnyValue, ArrayValue, KeyValue, KeyValueList};
        let text = |n: usize| AnyValue {
            value: Some(Value::StringValue("x".repeat(n))),
        };
        let kv = |k: &str, v: AnyValue| KeyValue {
            key: k.into(),
            value: Some(v),
            ..Default::default()
        };
        // One long value in each place the store looks, each in a batch of its own.
        type Place = Box<dyn Fn(&mut TracesData, usize)>;
        let places: Vec<Place> = vec![
            Box::new(move |d, n| {
                d.resource_spans[0]
                    .resource
                    .as_mut()
                    .unwrap()
                    .attributes
                    .push(kv("r", text(n)))
            }),
            Box::new(move |d, n| {
                d.resource_spans[0].scope_spans[0].spans[1]
                    .attributes
                    .push(kv("s", text(n)))
            }),
            Box::new(move |d, n| {
                d.resource_spans[0].scope_spans[0].spans[0]
                    .events
                    .push(Event {
                        attributes: vec![kv("e", text(n))],
                        ..Default::default()
                    })
            }),
            Box::new(move |d, n| {
                d.resource_spans[1].scope_spans[0].spans[0]
                    .links
                    .push(Link {
                        attributes: vec![kv("l", text(n))],
                        ..Default::default()
                    })
            }),
            Box::new(move |d, n| {
                let nested = AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![kv("inner", text(n))],
                    })),
                };
                d.resource_spans[0].scope_spans[1].spans[0]
                    .attributes
                    .push(kv(
                        "a",
                        AnyValue {
                            value: Some(Value::ArrayValue(ArrayValue {
                                values: vec![text(1), nested],
                            })),
                        },
                    ))
            }),
        ];
        for (p, place) in places.iter().enumerate() {
            for n in [0usize, 5, 40, 300] {
                let mut data = TracesData {
                    resource_spans: vec![
                        rs(
                            "a",
                            vec![
                                ("lib1", vec![span(1, 1), span(2, 2)]),
                                ("lib2", vec![span(2, 4)]),
                            ],
                        ),
                        rs("b", vec![("lib1", vec![span(3, 5)])]),
                    ],
                };
                place(&mut data, n);
                let longest = data
                    .resource_spans
                    .iter()
                    .map(|r| {
                        let res = longest_kv(&r.resource.as_ref().unwrap().attributes);
                        let spans = r
                            .scope_spans
                            .iter()
                            .flat_map(|ss| ss.spans.iter())
                            .map(|sp| {
                                let ev = sp.events.iter().map(|e| longest_kv(&e.attributes));
                                let li = sp.links.iter().map(|l| longest_kv(&l.attributes));
                                ev.chain(li)
                                    .max()
                                    .unwrap_or(0)
                                    .max(longest_kv(&sp.attributes))
                            })
                            .max()
                            .unwrap_or(0);
                        res.max(spans)
                    })
                    .max()
                    .unwrap();
                let bytes = data.encode_to_vec();
                for max in [1usize, 4, 5, 6, 39, 40, 41, 299, 300, 301, 5000] {
                    assert_eq!(
                        has_long_value(&bytes, max).unwrap(),
                        longest > max,
                        "place {p}, value of {n} bytes, limit {max}"
                    );
                }
            }
        }
    }

    #[test]
    fn retain_keeps_the_other_traces_byte_for_byte() {
        let data = TracesData {
            resource_spans: vec![
                rs(
                    "a",
                    vec![
                        ("lib1", vec![span(1, 1), span(2, 2), span(1, 3)]),
                        ("lib2", vec![span(2, 4)]),
                    ],
                ),
                rs("b", vec![("lib1", vec![span(1, 6)])]),
            ],
        };
        let bytes = data.encode_to_vec();
        let two = TraceId::from_slice(&[2; 16]).unwrap();
        // Keeping everything gives the same bytes.
        assert_eq!(retain_spans(&bytes, &mut |_| true).unwrap(), bytes);
        let kept = retain_spans(&bytes, &mut |id| id != Some(two)).unwrap();
        let got = TracesData::decode(kept.as_slice()).unwrap();
        let mut want = data.clone();
        // lib2 held only trace 2: it goes.
        want.resource_spans[0].scope_spans[0].spans.remove(1);
        want.resource_spans[0].scope_spans.remove(1);
        assert_eq!(got, want);
        // Nothing kept: nothing left.
        assert!(retain_spans(&bytes, &mut |_| false).unwrap().is_empty());
        let mut seen = Vec::new();
        for_each_span(&bytes, &mut |id, len| seen.push((id, len))).unwrap();
        let lens: Vec<usize> = data
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter())
            .map(|sp| sp.encoded_len())
            .collect();
        assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), lens);
        assert_eq!(seen[1].0, Some(two));
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
