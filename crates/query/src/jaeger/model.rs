//! OTLP spans to the Jaeger JSON model (what the Jaeger UI and Grafana's Jaeger data source
//! read), following Jaeger's own OTLP translator:
//!
//! * ids are lowercase hex, span ids 16 characters, trace ids 32, or 16 when the high 64 bits
//!   are zero (as Jaeger's `TraceID.String()`);
//! * `flags` is left out when zero; int64 tags beyond JavaScript's safe integers are strings;
//! * `startTime` and `duration` are microseconds;
//! * tags are the scope's `otel.scope.name` / `otel.scope.version`, then the span's attributes,
//!   then `span.kind` (unless unspecified), `otel.status_code` (`OK` / `ERROR`, unless unset),
//!   `error=true` for error spans, `otel.status_description` (when there is a message) and
//!   `w3c.tracestate` (when there is one);
//! * tag types are `string`, `bool`, `int64`, `float64` and `binary` (base64, as Go encodes
//!   bytes); arrays and maps become strings;
//! * events become logs: the event name as an `event` field, then the event's attributes;
//! * the parent becomes a `CHILD_OF` reference (first), links become `FOLLOWS_FROM`;
//! * one process per distinct resource, `p1`, `p2`, ... in order of appearance, whose tags
//!   are the resource attributes but `service.name`.

use serde_json::{json, Map, Value};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{any_value, KeyValue, Resource, ResourceSpans, Span};

/// Lowercase hex of raw id bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Hex of an id, left-padded with zeros to `len` bytes (a missing id is all zeros).
fn id_hex(bytes: &[u8], len: usize) -> String {
    let text = hex(bytes);
    format!("{:0>width$}", text, width = len * 2)
}

/// A trace id as Jaeger's `model.TraceID.String()` writes it: 16 hex digits when the high 64
/// bits are zero (a 64-bit id), else 32.
pub fn jaeger_trace_id(hex_id: &str) -> String {
    let padded = format!("{hex_id:0>32}");
    match padded.strip_prefix("0000000000000000") {
        Some(low) if padded.len() == 32 => low.to_string(),
        _ => padded,
    }
}

fn trace_id_hex(bytes: &[u8]) -> String {
    jaeger_trace_id(&hex(bytes))
}

/// Jaeger's UI model writes int64 tags outside JavaScript's safe integer range as strings.
const JS_MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Standard base64 with padding (how Go's JSON encodes `[]byte`).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn tag(key: &str, type_name: &str, value: Value) -> Value {
    json!({ "key": key, "type": type_name, "value": value })
}

fn string_tag(key: &str, value: &str) -> Value {
    tag(key, "string", Value::String(value.to_string()))
}

/// One attribute as a Jaeger tag.
pub(crate) fn attribute_tag(kv: &KeyValue) -> Value {
    let key = kv.key.as_str();
    let Some(value) = kv.value.as_ref() else {
        return string_tag(key, "");
    };
    match &value.value {
        None => string_tag(key, ""),
        Some(any_value::Value::StringValue(s)) => string_tag(key, s),
        Some(any_value::Value::BoolValue(b)) => tag(key, "bool", Value::Bool(*b)),
        Some(any_value::Value::IntValue(i))
            if !(-JS_MAX_SAFE_INTEGER..=JS_MAX_SAFE_INTEGER).contains(i) =>
        {
            tag(key, "int64", Value::String(i.to_string()))
        }
        Some(any_value::Value::IntValue(i)) => tag(key, "int64", json!(i)),
        Some(any_value::Value::DoubleValue(d)) => match serde_json::Number::from_f64(*d) {
            Some(n) => tag(key, "float64", Value::Number(n)),
            None => string_tag(key, &d.to_string()),
        },
        Some(any_value::Value::BytesValue(b)) => tag(key, "binary", Value::String(base64(b))),
        Some(_) => string_tag(key, &attr::render(value)),
    }
}

fn attribute_tags(attributes: &[KeyValue]) -> Vec<Value> {
    attributes.iter().map(attribute_tag).collect()
}

/// `span.kind`'s value: `server`, `client`, `producer`, `consumer`, `internal`, or `""` when
/// unspecified (the `spanKind` of Jaeger's operations).
pub fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "",
    }
}

/// The Jaeger process of a resource: `serviceName` and the other attributes as tags.
fn process(resource: Option<&Resource>) -> Value {
    let tags: Vec<Value> = resource
        .map(|r| {
            r.attributes
                .iter()
                .filter(|kv| kv.key != "service.name")
                .map(attribute_tag)
                .collect()
        })
        .unwrap_or_default();
    json!({ "serviceName": attr::service_name(resource), "tags": tags })
}

fn span_tags(span: &Span, scope_name: &str, scope_version: &str) -> Vec<Value> {
    let mut tags = Vec::with_capacity(span.attributes.len() + 5);
    if !scope_name.is_empty() {
        tags.push(string_tag("otel.scope.name", scope_name));
    }
    if !scope_version.is_empty() {
        tags.push(string_tag("otel.scope.version", scope_version));
    }
    tags.extend(attribute_tags(&span.attributes));
    let kind = span_kind(span.kind);
    if !kind.is_empty() {
        tags.push(string_tag("span.kind", kind));
    }
    let (code, message) = span
        .status
        .as_ref()
        .map(|s| (s.code, s.message.as_str()))
        .unwrap_or((0, ""));
    match code {
        1 => tags.push(string_tag("otel.status_code", "OK")),
        2 => {
            tags.push(string_tag("otel.status_code", "ERROR"));
            tags.push(tag("error", "bool", Value::Bool(true)));
        }
        _ => {}
    }
    if !message.is_empty() {
        tags.push(string_tag("otel.status_description", message));
    }
    if !span.trace_state.is_empty() {
        tags.push(string_tag("w3c.tracestate", &span.trace_state));
    }
    tags
}

fn references(span: &Span, trace_id: &str) -> Vec<Value> {
    let mut refs = Vec::with_capacity(span.links.len() + 1);
    if !span.parent_span_id.is_empty() && span.parent_span_id.iter().any(|b| *b != 0) {
        refs.push(json!({
            "refType": "CHILD_OF",
            "traceID": trace_id,
            "spanID": id_hex(&span.parent_span_id, 8),
        }));
    }
    for link in &span.links {
        refs.push(json!({
            "refType": "FOLLOWS_FROM",
            "traceID": trace_id_hex(&link.trace_id),
            "spanID": id_hex(&link.span_id, 8),
        }));
    }
    refs
}

fn logs(span: &Span) -> Vec<Value> {
    span.events
        .iter()
        .map(|event| {
            let mut fields = Vec::with_capacity(event.attributes.len() + 1);
            if !event.name.is_empty() && !event.attributes.iter().any(|kv| kv.key == "event") {
                fields.push(string_tag("event", &event.name));
            }
            fields.extend(attribute_tags(&event.attributes));
            json!({ "timestamp": event.time_unix_nano / 1_000, "fields": fields })
        })
        .collect()
}

/// Microseconds of a nanosecond time.
fn micros(ns: u64) -> u64 {
    ns / 1_000
}

/// One Jaeger span.
fn span_json(span: &Span, process_id: &str, scope_name: &str, scope_version: &str) -> Value {
    let trace_id = trace_id_hex(&span.trace_id);
    let start = micros(span.start_time_unix_nano);
    let duration = micros(span.end_time_unix_nano).saturating_sub(start);
    let mut o = Map::new();
    o.insert("traceID".into(), Value::String(trace_id.clone()));
    o.insert("spanID".into(), Value::String(id_hex(&span.span_id, 8)));
    // `flags` is `omitempty` in Jaeger's UI model.
    if span.flags & 0xff != 0 {
        o.insert("flags".into(), json!(span.flags & 0xff));
    }
    o.insert("operationName".into(), Value::String(span.name.clone()));
    o.insert(
        "references".into(),
        Value::Array(references(span, &trace_id)),
    );
    o.insert("startTime".into(), json!(start));
    o.insert("duration".into(), json!(duration));
    o.insert(
        "tags".into(),
        Value::Array(span_tags(span, scope_name, scope_version)),
    );
    o.insert("logs".into(), Value::Array(logs(span)));
    o.insert("processID".into(), Value::String(process_id.to_string()));
    o.insert("warnings".into(), Value::Null);
    Value::Object(o)
}

/// A whole trace (every `ResourceSpans` of one trace id) as a Jaeger trace.
pub fn trace_json(trace_id: &str, batches: &[ResourceSpans]) -> Value {
    let mut processes: Vec<Value> = Vec::new();
    let mut spans = Vec::new();
    for rs in batches {
        let p = process(rs.resource.as_ref());
        let index = match processes.iter().position(|q| *q == p) {
            Some(i) => i,
            None => {
                processes.push(p);
                processes.len() - 1
            }
        };
        let process_id = format!("p{}", index + 1);
        for ss in &rs.scope_spans {
            let (name, version) = ss
                .scope
                .as_ref()
                .map(|s| (s.name.as_str(), s.version.as_str()))
                .unwrap_or(("", ""));
            for span in &ss.spans {
                spans.push(span_json(span, &process_id, name, version));
            }
        }
    }
    let processes: Map<String, Value> = processes
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("p{}", i + 1), p))
        .collect();
    json!({
        "traceID": jaeger_trace_id(trace_id),
        "spans": spans,
        "processes": processes,
        "warnings": null,
    })
}

/// The service of a span's resource (as [`attr::service_name`]).
pub(crate) fn service_of(resource: Option<&Resource>) -> &str {
    attr::service_name(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn kinds_and_ids() {
        assert_eq!(span_kind(0), "");
        assert_eq!(span_kind(2), "server");
        assert_eq!(span_kind(5), "consumer");
        assert_eq!(id_hex(&[0xab], 2), "00ab");
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
        assert_eq!(jaeger_trace_id("abc"), "0000000000000abc");
        assert_eq!(
            jaeger_trace_id("0af7651916cd43dd8448eb211c80319c"),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            jaeger_trace_id("00000000000000010000000000000000"),
            "00000000000000010000000000000000"
        );
    }
}
