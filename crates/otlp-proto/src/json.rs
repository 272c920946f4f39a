//! The OTLP/JSON codec (opentelemetry-proto `docs/specification.md`, "JSON Protobuf Encoding").
//!
//! Decoding accepts what the spec and proto3 JSON allow: lowerCamelCase or original field names,
//! hex ids (any case), int64/fixed64 as numbers or strings, enums as integers or names, `null`
//! for absent fields; unknown fields are ignored. Errors name the path of the offending field,
//! e.g. `resourceSpans[0].scopeSpans[0].spans[2].traceId: ...`.
//!
//! Encoding writes lowerCamelCase keys, lowercase hex ids, 64-bit integers as decimal strings,
//! enums as integers, bytes values as base64, and omits fields with default values.

use base64::Engine as _;
use serde_json::{Map, Value as J};

use crate::proto::{
    any_value::Value, span, AnyValue, ArrayValue, ExportTracePartialSuccess,
    ExportTraceServiceRequest, ExportTraceServiceResponse, InstrumentationScope, KeyValue,
    KeyValueList, Resource, ResourceSpans, ScopeSpans, Span, Status, TracesData,
};

/// An OTLP/JSON body that cannot be decoded, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct JsonError {
    pub path: String,
    pub problem: String,
}

impl JsonError {
    fn at(path: &Path<'_>, problem: impl Into<String>) -> Self {
        Self {
            path: path.render(),
            problem: problem.into(),
        }
    }
}

type Result<T> = std::result::Result<T, JsonError>;

/// A path into the document, built on the stack as the decoder descends.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => "$".to_string(),
            Path::Field(Path::Root, name) => (*name).to_string(),
            Path::Field(parent, name) => format!("{}.{}", parent.render(), name),
            Path::Index(parent, i) => format!("{}[{}]", parent.render(), i),
        }
    }
}

// ---------------------------------------------------------------- decoding

/// Decodes an `ExportTraceServiceRequest` from OTLP/JSON bytes.
pub fn decode_request(bytes: &[u8]) -> Result<ExportTraceServiceRequest> {
    let doc: J = serde_json::from_slice(bytes).map_err(|e| JsonError {
        path: "$".into(),
        problem: format!("not valid JSON: {e}"),
    })?;
    let root = Path::Root;
    let obj = as_object(&doc, &root)?;
    Ok(ExportTraceServiceRequest {
        resource_spans: repeated(
            obj,
            &root,
            "resourceSpans",
            "resource_spans",
            resource_spans,
        )?,
    })
}

/// Decodes `TracesData` (the same shape as a request: `{"resourceSpans": [...]}`).
pub fn decode_traces_data(bytes: &[u8]) -> Result<TracesData> {
    decode_request(bytes).map(|r| TracesData {
        resource_spans: r.resource_spans,
    })
}

/// Decodes an `ExportTraceServiceResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<ExportTraceServiceResponse> {
    let doc: J = serde_json::from_slice(bytes).map_err(|e| JsonError {
        path: "$".into(),
        problem: format!("not valid JSON: {e}"),
    })?;
    let root = Path::Root;
    let obj = as_object(&doc, &root)?;
    let partial_success = match field(obj, "partialSuccess", "partial_success") {
        None => None,
        Some(v) => {
            let p = Path::Field(&root, "partialSuccess");
            let o = as_object(v, &p)?;
            Some(ExportTracePartialSuccess {
                rejected_spans: int64(o, &p, "rejectedSpans", "rejected_spans")?,
                error_message: string(o, &p, "errorMessage", "error_message")?,
            })
        }
    };
    Ok(ExportTraceServiceResponse { partial_success })
}

fn field<'a>(obj: &'a Map<String, J>, camel: &str, snake: &str) -> Option<&'a J> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn as_object<'a>(v: &'a J, path: &Path<'_>) -> Result<&'a Map<String, J>> {
    v.as_object()
        .ok_or_else(|| JsonError::at(path, format!("expected an object, found {}", kind(v))))
}

fn kind(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

fn repeated<T>(
    obj: &Map<String, J>,
    path: &Path<'_>,
    camel: &'static str,
    snake: &str,
    each: impl Fn(&J, &Path<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let Some(v) = field(obj, camel, snake) else {
        return Ok(Vec::new());
    };
    let here = Path::Field(path, camel);
    let arr = v
        .as_array()
        .ok_or_else(|| JsonError::at(&here, format!("expected an array, found {}", kind(v))))?;
    arr.iter()
        .enumerate()
        .map(|(i, item)| each(item, &Path::Index(&here, i)))
        .collect()
}

fn string(
    obj: &Map<String, J>,
    path: &Path<'_>,
    camel: &'static str,
    snake: &str,
) -> Result<String> {
    match field(obj, camel, snake) {
        None => Ok(String::new()),
        Some(J::String(s)) => Ok(s.clone()),
        Some(v) => Err(JsonError::at(
            &Path::Field(path, camel),
            format!("expected a string, found {}", kind(v)),
        )),
    }
}

/// An integer given as a JSON number or a decimal string.
fn integer(v: &J, path: &Path<'_>) -> Result<i128> {
    match v {
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i as i128)
            } else if let Some(u) = n.as_u64() {
                Ok(u as i128)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.is_finite() {
                    Ok(f as i128)
                } else {
                    Err(JsonError::at(
                        path,
                        format!("expected an integer, found {n}"),
                    ))
                }
            }
        }
        J::String(s) => s.trim().parse::<i128>().map_err(|_| {
            JsonError::at(path, format!("expected an integer, found the string {s:?}"))
        }),
        other => Err(JsonError::at(
            path,
            format!("expected an integer, found {}", kind(other)),
        )),
    }
}

fn ranged<T>(
    obj: &Map<String, J>,
    path: &Path<'_>,
    camel: &'static str,
    snake: &str,
    type_name: &str,
) -> Result<T>
where
    T: TryFrom<i128> + Default,
{
    match field(obj, camel, snake) {
        None => Ok(T::default()),
        Some(v) => {
            let here = Path::Field(path, camel);
            let i = integer(v, &here)?;
            T::try_from(i)
                .map_err(|_| JsonError::at(&here, format!("{i} is out of range for {type_name}")))
        }
    }
}

fn uint64(obj: &Map<String, J>, path: &Path<'_>, camel: &'static str, snake: &str) -> Result<u64> {
    ranged(obj, path, camel, snake, "uint64")
}

fn int64(obj: &Map<String, J>, path: &Path<'_>, camel: &'static str, snake: &str) -> Result<i64> {
    ranged(obj, path, camel, snake, "int64")
}

fn uint32(obj: &Map<String, J>, path: &Path<'_>, camel: &'static str, snake: &str) -> Result<u32> {
    ranged(obj, path, camel, snake, "uint32")
}

/// An enum given as an integer or by its name.
fn enumeration(
    obj: &Map<String, J>,
    path: &Path<'_>,
    camel: &'static str,
    snake: &str,
    from_name: fn(&str) -> Option<i32>,
) -> Result<i32> {
    match field(obj, camel, snake) {
        None => Ok(0),
        Some(J::String(s)) if s.parse::<i64>().is_err() => from_name(s).ok_or_else(|| {
            JsonError::at(
                &Path::Field(path, camel),
                format!("unknown enum value {s:?}"),
            )
        }),
        Some(v) => {
            let here = Path::Field(path, camel);
            let i = integer(v, &here)?;
            i32::try_from(i)
                .map_err(|_| JsonError::at(&here, format!("{i} is out of range for an enum")))
        }
    }
}

fn id_bytes(
    obj: &Map<String, J>,
    path: &Path<'_>,
    camel: &'static str,
    snake: &str,
    len: usize,
) -> Result<Vec<u8>> {
    match field(obj, camel, snake) {
        None => Ok(Vec::new()),
        Some(J::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(J::String(s)) => {
            let here = Path::Field(path, camel);
            if s.len() != len * 2 {
                return Err(JsonError::at(
                    &here,
                    format!(
                        "expected {} hex characters, found {} in {s:?}",
                        len * 2,
                        s.len()
                    ),
                ));
            }
            hex::decode(s).map_err(|_| JsonError::at(&here, format!("{s:?} is not hexadecimal")))
        }
        Some(v) => Err(JsonError::at(
            &Path::Field(path, camel),
            format!("expected a hex string, found {}", kind(v)),
        )),
    }
}

fn message<T>(
    obj: &Map<String, J>,
    path: &Path<'_>,
    camel: &'static str,
    snake: &str,
    decode: impl Fn(&J, &Path<'_>) -> Result<T>,
) -> Result<Option<T>> {
    match field(obj, camel, snake) {
        None => Ok(None),
        Some(v) => decode(v, &Path::Field(path, camel)).map(Some),
    }
}

fn resource_spans(v: &J, path: &Path<'_>) -> Result<ResourceSpans> {
    let o = as_object(v, path)?;
    Ok(ResourceSpans {
        resource: message(o, path, "resource", "resource", resource)?,
        scope_spans: repeated(o, path, "scopeSpans", "scope_spans", scope_spans)?,
        schema_url: string(o, path, "schemaUrl", "schema_url")?,
    })
}

fn resource(v: &J, path: &Path<'_>) -> Result<Resource> {
    let o = as_object(v, path)?;
    Ok(Resource {
        attributes: repeated(o, path, "attributes", "attributes", key_value)?,
        dropped_attributes_count: uint32(
            o,
            path,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
        entity_refs: Vec::new(),
    })
}

fn scope_spans(v: &J, path: &Path<'_>) -> Result<ScopeSpans> {
    let o = as_object(v, path)?;
    Ok(ScopeSpans {
        scope: message(o, path, "scope", "scope", scope)?,
        spans: repeated(o, path, "spans", "spans", span)?,
        schema_url: string(o, path, "schemaUrl", "schema_url")?,
    })
}

fn scope(v: &J, path: &Path<'_>) -> Result<InstrumentationScope> {
    let o = as_object(v, path)?;
    Ok(InstrumentationScope {
        name: string(o, path, "name", "name")?,
        version: string(o, path, "version", "version")?,
        attributes: repeated(o, path, "attributes", "attributes", key_value)?,
        dropped_attributes_count: uint32(
            o,
            path,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
    })
}

fn span_kind_from_name(s: &str) -> Option<i32> {
    span::SpanKind::from_str_name(s).map(|k| k as i32)
}

fn status_code_from_name(s: &str) -> Option<i32> {
    crate::proto::trace::status::StatusCode::from_str_name(s).map(|k| k as i32)
}

fn span(v: &J, path: &Path<'_>) -> Result<Span> {
    let o = as_object(v, path)?;
    Ok(Span {
        trace_id: id_bytes(o, path, "traceId", "trace_id", 16)?,
        span_id: id_bytes(o, path, "spanId", "span_id", 8)?,
        trace_state: string(o, path, "traceState", "trace_state")?,
        parent_span_id: id_bytes(o, path, "parentSpanId", "parent_span_id", 8)?,
        flags: uint32(o, path, "flags", "flags")?,
        name: string(o, path, "name", "name")?,
        kind: enumeration(o, path, "kind", "kind", span_kind_from_name)?,
        start_time_unix_nano: uint64(o, path, "startTimeUnixNano", "start_time_unix_nano")?,
        end_time_unix_nano: uint64(o, path, "endTimeUnixNano", "end_time_unix_nano")?,
        attributes: repeated(o, path, "attributes", "attributes", key_value)?,
        dropped_attributes_count: uint32(
            o,
            path,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
        events: repeated(o, path, "events", "events", event)?,
        dropped_events_count: uint32(o, path, "droppedEventsCount", "dropped_events_count")?,
        links: repeated(o, path, "links", "links", link)?,
        dropped_links_count: uint32(o, path, "droppedLinksCount", "dropped_links_count")?,
        status: message(o, path, "status", "status", status)?,
    })
}

fn event(v: &J, path: &Path<'_>) -> Result<span::Event> {
    let o = as_object(v, path)?;
    Ok(span::Event {
        time_unix_nano: uint64(o, path, "timeUnixNano", "time_unix_nano")?,
        name: string(o, path, "name", "name")?,
        attributes: repeated(o, path, "attributes", "attributes", key_value)?,
        dropped_attributes_count: uint32(
            o,
            path,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
    })
}

fn link(v: &J, path: &Path<'_>) -> Result<span::Link> {
    let o = as_object(v, path)?;
    Ok(span::Link {
        trace_id: id_bytes(o, path, "traceId", "trace_id", 16)?,
        span_id: id_bytes(o, path, "spanId", "span_id", 8)?,
        trace_state: string(o, path, "traceState", "trace_state")?,
        attributes: repeated(o, path, "attributes", "attributes", key_value)?,
        dropped_attributes_count: uint32(
            o,
            path,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
        flags: uint32(o, path, "flags", "flags")?,
    })
}

fn status(v: &J, path: &Path<'_>) -> Result<Status> {
    let o = as_object(v, path)?;
    Ok(Status {
        message: string(o, path, "message", "message")?,
        code: enumeration(o, path, "code", "code", status_code_from_name)?,
    })
}

fn key_value(v: &J, path: &Path<'_>) -> Result<KeyValue> {
    let o = as_object(v, path)?;
    Ok(KeyValue {
        key: string(o, path, "key", "key")?,
        value: message(o, path, "value", "value", any_value)?,
        ..Default::default()
    })
}

fn any_value(v: &J, path: &Path<'_>) -> Result<AnyValue> {
    let o = as_object(v, path)?;
    let value = if let Some(s) = field(o, "stringValue", "string_value") {
        let here = Path::Field(path, "stringValue");
        match s {
            J::String(s) => Some(Value::StringValue(s.clone())),
            other => {
                return Err(JsonError::at(
                    &here,
                    format!("expected a string, found {}", kind(other)),
                ))
            }
        }
    } else if let Some(b) = field(o, "boolValue", "bool_value") {
        match b {
            J::Bool(b) => Some(Value::BoolValue(*b)),
            other => {
                return Err(JsonError::at(
                    &Path::Field(path, "boolValue"),
                    format!("expected a boolean, found {}", kind(other)),
                ))
            }
        }
    } else if field(o, "intValue", "int_value").is_some() {
        Some(Value::IntValue(int64(o, path, "intValue", "int_value")?))
    } else if let Some(d) = field(o, "doubleValue", "double_value") {
        let here = Path::Field(path, "doubleValue");
        let f = match d {
            J::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            J::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other.parse::<f64>().map_err(|_| {
                    JsonError::at(
                        &here,
                        format!("expected a number, found the string {other:?}"),
                    )
                })?,
            },
            other => {
                return Err(JsonError::at(
                    &here,
                    format!("expected a number, found {}", kind(other)),
                ))
            }
        };
        Some(Value::DoubleValue(f))
    } else if let Some(a) = field(o, "arrayValue", "array_value") {
        let here = Path::Field(path, "arrayValue");
        let ao = as_object(a, &here)?;
        Some(Value::ArrayValue(ArrayValue {
            values: repeated(ao, &here, "values", "values", any_value)?,
        }))
    } else if let Some(k) = field(o, "kvlistValue", "kvlist_value") {
        let here = Path::Field(path, "kvlistValue");
        let ko = as_object(k, &here)?;
        Some(Value::KvlistValue(KeyValueList {
            values: repeated(ko, &here, "values", "values", key_value)?,
        }))
    } else if let Some(b) = field(o, "bytesValue", "bytes_value") {
        let here = Path::Field(path, "bytesValue");
        match b {
            J::String(s) => {
                Some(Value::BytesValue(decode_base64(s).ok_or_else(|| {
                    JsonError::at(&here, format!("{s:?} is not base64"))
                })?))
            }
            other => {
                return Err(JsonError::at(
                    &here,
                    format!("expected a base64 string, found {}", kind(other)),
                ))
            }
        }
    } else {
        None
    };
    Ok(AnyValue { value })
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .ok()
}

// ---------------------------------------------------------------- encoding

/// Encodes `resourceSpans` as `{"resourceSpans": [...]}` (a request, or `TracesData`).
pub fn encode_resource_spans(resource_spans: &[ResourceSpans]) -> J {
    let mut o = Map::new();
    o.insert(
        "resourceSpans".into(),
        J::Array(resource_spans.iter().map(resource_spans_json).collect()),
    );
    J::Object(o)
}

/// Encodes a request to OTLP/JSON bytes.
pub fn encode_request(req: &ExportTraceServiceRequest) -> Vec<u8> {
    encode_resource_spans(&req.resource_spans)
        .to_string()
        .into_bytes()
}

/// Encodes a response to OTLP/JSON bytes.
pub fn encode_response(resp: &ExportTraceServiceResponse) -> Vec<u8> {
    let mut o = Map::new();
    if let Some(p) = &resp.partial_success {
        let mut po = Map::new();
        if p.rejected_spans != 0 {
            po.insert(
                "rejectedSpans".into(),
                J::String(p.rejected_spans.to_string()),
            );
        }
        put_str(&mut po, "errorMessage", &p.error_message);
        o.insert("partialSuccess".into(), J::Object(po));
    }
    J::Object(o).to_string().into_bytes()
}

fn put_str(o: &mut Map<String, J>, key: &str, v: &str) {
    if !v.is_empty() {
        o.insert(key.into(), J::String(v.to_string()));
    }
}

fn put_u32(o: &mut Map<String, J>, key: &str, v: u32) {
    if v != 0 {
        o.insert(key.into(), J::from(v));
    }
}

fn put_i32(o: &mut Map<String, J>, key: &str, v: i32) {
    if v != 0 {
        o.insert(key.into(), J::from(v));
    }
}

fn put_u64(o: &mut Map<String, J>, key: &str, v: u64) {
    if v != 0 {
        o.insert(key.into(), J::String(v.to_string()));
    }
}

fn put_hex(o: &mut Map<String, J>, key: &str, v: &[u8]) {
    if !v.is_empty() {
        o.insert(key.into(), J::String(hex::encode(v)));
    }
}

fn put_attrs(o: &mut Map<String, J>, attrs: &[KeyValue]) {
    if !attrs.is_empty() {
        o.insert(
            "attributes".into(),
            J::Array(attrs.iter().map(key_value_json).collect()),
        );
    }
}

fn resource_spans_json(rs: &ResourceSpans) -> J {
    let mut o = Map::new();
    if let Some(r) = &rs.resource {
        let mut ro = Map::new();
        put_attrs(&mut ro, &r.attributes);
        put_u32(
            &mut ro,
            "droppedAttributesCount",
            r.dropped_attributes_count,
        );
        o.insert("resource".into(), J::Object(ro));
    }
    o.insert(
        "scopeSpans".into(),
        J::Array(rs.scope_spans.iter().map(scope_spans_json).collect()),
    );
    put_str(&mut o, "schemaUrl", &rs.schema_url);
    J::Object(o)
}

fn scope_spans_json(ss: &ScopeSpans) -> J {
    let mut o = Map::new();
    if let Some(s) = &ss.scope {
        let mut so = Map::new();
        put_str(&mut so, "name", &s.name);
        put_str(&mut so, "version", &s.version);
        put_attrs(&mut so, &s.attributes);
        put_u32(
            &mut so,
            "droppedAttributesCount",
            s.dropped_attributes_count,
        );
        o.insert("scope".into(), J::Object(so));
    }
    o.insert(
        "spans".into(),
        J::Array(ss.spans.iter().map(span_json).collect()),
    );
    put_str(&mut o, "schemaUrl", &ss.schema_url);
    J::Object(o)
}

/// Encodes one span in OTLP/JSON.
pub fn span_json(s: &Span) -> J {
    let mut o = Map::new();
    put_hex(&mut o, "traceId", &s.trace_id);
    put_hex(&mut o, "spanId", &s.span_id);
    put_str(&mut o, "traceState", &s.trace_state);
    put_hex(&mut o, "parentSpanId", &s.parent_span_id);
    put_u32(&mut o, "flags", s.flags);
    o.insert("name".into(), J::String(s.name.clone()));
    put_i32(&mut o, "kind", s.kind);
    put_u64(&mut o, "startTimeUnixNano", s.start_time_unix_nano);
    put_u64(&mut o, "endTimeUnixNano", s.end_time_unix_nano);
    put_attrs(&mut o, &s.attributes);
    put_u32(&mut o, "droppedAttributesCount", s.dropped_attributes_count);
    if !s.events.is_empty() {
        let events = s
            .events
            .iter()
            .map(|e| {
                let mut eo = Map::new();
                put_u64(&mut eo, "timeUnixNano", e.time_unix_nano);
                put_str(&mut eo, "name", &e.name);
                put_attrs(&mut eo, &e.attributes);
                put_u32(
                    &mut eo,
                    "droppedAttributesCount",
                    e.dropped_attributes_count,
                );
                J::Object(eo)
            })
            .collect();
        o.insert("events".into(), J::Array(events));
    }
    put_u32(&mut o, "droppedEventsCount", s.dropped_events_count);
    if !s.links.is_empty() {
        let links = s
            .links
            .iter()
            .map(|l| {
                let mut lo = Map::new();
                put_hex(&mut lo, "traceId", &l.trace_id);
                put_hex(&mut lo, "spanId", &l.span_id);
                put_str(&mut lo, "traceState", &l.trace_state);
                put_attrs(&mut lo, &l.attributes);
                put_u32(
                    &mut lo,
                    "droppedAttributesCount",
                    l.dropped_attributes_count,
                );
                put_u32(&mut lo, "flags", l.flags);
                J::Object(lo)
            })
            .collect();
        o.insert("links".into(), J::Array(links));
    }
    put_u32(&mut o, "droppedLinksCount", s.dropped_links_count);
    if let Some(st) = &s.status {
        let mut so = Map::new();
        put_str(&mut so, "message", &st.message);
        put_i32(&mut so, "code", st.code);
        o.insert("status".into(), J::Object(so));
    }
    J::Object(o)
}

/// Encodes an attribute in OTLP/JSON.
pub fn key_value_json(kv: &KeyValue) -> J {
    let mut o = Map::new();
    o.insert("key".into(), J::String(kv.key.clone()));
    if let Some(v) = &kv.value {
        o.insert("value".into(), any_value_json(v));
    }
    J::Object(o)
}

/// Encodes a value in OTLP/JSON (`{"stringValue": ...}`, `{"intValue": "42"}`, ...).
pub fn any_value_json(v: &AnyValue) -> J {
    let mut o = Map::new();
    match &v.value {
        None => {}
        Some(Value::StringValue(s)) => {
            o.insert("stringValue".into(), J::String(s.clone()));
        }
        Some(Value::BoolValue(b)) => {
            o.insert("boolValue".into(), J::Bool(*b));
        }
        Some(Value::IntValue(i)) => {
            o.insert("intValue".into(), J::String(i.to_string()));
        }
        Some(Value::DoubleValue(d)) => {
            let j = serde_json::Number::from_f64(*d)
                .map(J::Number)
                .unwrap_or_else(|| {
                    J::String(
                        if d.is_nan() {
                            "NaN"
                        } else if *d > 0.0 {
                            "Infinity"
                        } else {
                            "-Infinity"
                        }
                        .into(),
                    )
                });
            o.insert("doubleValue".into(), j);
        }
        Some(Value::ArrayValue(a)) => {
            let mut ao = Map::new();
            ao.insert(
                "values".into(),
                J::Array(a.values.iter().map(any_value_json).collect()),
            );
            o.insert("arrayValue".into(), J::Object(ao));
        }
        Some(Value::KvlistValue(kv)) => {
            let mut ko = Map::new();
            ko.insert(
                "values".into(),
                J::Array(kv.values.iter().map(key_value_json).collect()),
            );
            o.insert("kvlistValue".into(), J::Object(ko));
        }
        Some(Value::BytesValue(b)) => {
            o.insert(
                "bytesValue".into(),
                J::String(base64::engine::general_purpose::STANDARD.encode(b)),
            );
        }
        Some(Value::StringValueStrindex(_)) => {}
    }
    J::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example body from the OTLP spec's repository (examples/trace.json), as SDKs send it.
    const SPEC_EXAMPLE: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "parentSpanId": "EEE19B7EC3C1B173",
            "name": "I'm a server span",
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": 1544712661000000000,
            "kind": 2,
            "attributes": [
              {"key": "my.span.attr", "value": {"stringValue": "some value"}},
              {"key": "n", "value": {"intValue": 42}},
              {"key": "big", "value": {"intValue": "-9007199254740993"}},
              {"key": "d", "value": {"doubleValue": 1.5}},
              {"key": "b", "value": {"boolValue": true}},
              {"key": "raw", "value": {"bytesValue": "AQID"}},
              {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
              {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "ev", "attributes": []}],
            "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175"}],
            "status": {"code": 2, "message": "boom"},
            "someFutureField": {"ignored": true}
          }]
        }]
      }]
    }"#;

    #[test]
    fn decodes_the_spec_example() {
        let req = decode_request(SPEC_EXAMPLE.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.kind, 2);
        assert_eq!(span.attributes.len(), 8);
        assert_eq!(
            span.attributes[2].value.as_ref().unwrap().value,
            Some(Value::IntValue(-9007199254740993))
        );
        assert_eq!(
            span.attributes[5].value.as_ref().unwrap().value,
            Some(Value::BytesValue(vec![1, 2, 3]))
        );
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(span.links.len(), 1);
    }

    #[test]
    fn output_follows_the_spec_and_parses_back() {
        let req = decode_request(SPEC_EXAMPLE.as_bytes()).unwrap();
        let out = encode_request(&req);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains(r#""traceId":"5b8efff798038103d269b633813fc60c""#),
            "{text}"
        );
        assert!(
            text.contains(r#""startTimeUnixNano":"1544712660000000000""#),
            "{text}"
        );
        assert!(text.contains(r#""intValue":"42""#), "{text}");
        assert!(text.contains(r#""kind":2"#), "{text}");
        assert!(!text.contains("someFutureField"));
        let back = decode_request(&out).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn enum_names_and_snake_case_are_accepted() {
        let body = r#"{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"00000000000000000000000000000001","span_id":"0000000000000001","kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR"}}]}]}]}"#;
        let req = decode_request(body.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, 3);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
    }

    #[test]
    fn errors_name_the_field() {
        let bad_id = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#;
        let e = decode_request(bad_id.as_bytes()).unwrap_err();
        assert_eq!(e.path, "resourceSpans[0].scopeSpans[0].spans[0].traceId");
        assert!(e.problem.contains("32 hex characters"), "{e}");

        let bad_int =
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}"#;
        let e = decode_request(bad_int.as_bytes()).unwrap_err();
        assert_eq!(
            e.path,
            "resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano"
        );

        let truncated = r#"{"resourceSpans":[{"scopeSpans":["#;
        let e = decode_request(truncated.as_bytes()).unwrap_err();
        assert!(e.problem.contains("not valid JSON"), "{e}");

        let not_array = r#"{"resourceSpans":{}}"#;
        let e = decode_request(not_array.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "resourceSpans: expected an array, found an object"
        );
    }

    #[test]
    fn response_round_trip() {
        let resp = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too big".into(),
            }),
        };
        let out = encode_response(&resp);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"partialSuccess":{"errorMessage":"too big","rejectedSpans":"3"}}"#
        );
        assert_eq!(decode_response(&out).unwrap(), resp);
    }
}
