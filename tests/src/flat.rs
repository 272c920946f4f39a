//! Spans flattened with their resource and scope, normalised for comparison.
//!
//! OTLP attributes are maps, so their order is not compared (they are sorted by key); an
//! absent `status` equals the default one. Everything else must come back exactly as sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, Span,
    Status,
};

/// One span with the resource and scope it came under.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatSpan {
    pub resource: Resource,
    pub resource_schema_url: String,
    pub scope: InstrumentationScope,
    pub scope_schema_url: String,
    pub span: Span,
}

impl FlatSpan {
    pub fn service(&self) -> &str {
        attr::service_name(Some(&self.resource))
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(&self.span.span_id)
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(&self.span.trace_id)
    }

    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        attr::get(&self.span.attributes, key)
    }

    pub fn duration_nanos(&self) -> u64 {
        self.span
            .end_time_unix_nano
            .saturating_sub(self.span.start_time_unix_nano)
    }
}

fn sort_attrs(attrs: &mut [KeyValue]) {
    attrs.sort_by(|a, b| a.key.cmp(&b.key));
    for kv in attrs.iter_mut() {
        if let Some(v) = kv.value.as_mut() {
            normalize_value(v);
        }
    }
}

fn normalize_value(v: &mut AnyValue) {
    match v.value.as_mut() {
        Some(Value::KvlistValue(list)) => sort_attrs(&mut list.values),
        Some(Value::ArrayValue(arr)) => arr.values.iter_mut().for_each(normalize_value),
        _ => {}
    }
}

/// Sorts every attribute list and fills in the default status.
pub fn normalize_span(span: &mut Span) {
    sort_attrs(&mut span.attributes);
    for e in &mut span.events {
        sort_attrs(&mut e.attributes);
    }
    for l in &mut span.links {
        sort_attrs(&mut l.attributes);
    }
    if span.status.is_none() {
        span.status = Some(Status::default());
    }
}

/// Flattens and normalises resource spans.
pub fn flatten(resource_spans: &[ResourceSpans]) -> Vec<FlatSpan> {
    let mut out = Vec::new();
    for rs in resource_spans {
        let mut resource = rs.resource.clone().unwrap_or_default();
        sort_attrs(&mut resource.attributes);
        for ss in &rs.scope_spans {
            let mut scope = ss.scope.clone().unwrap_or_default();
            sort_attrs(&mut scope.attributes);
            for span in &ss.spans {
                let mut span = span.clone();
                normalize_span(&mut span);
                out.push(FlatSpan {
                    resource: resource.clone(),
                    resource_schema_url: rs.schema_url.clone(),
                    scope: scope.clone(),
                    scope_schema_url: ss.schema_url.clone(),
                    span,
                });
            }
        }
    }
    out
}

/// Spans by span id (hex).
pub fn by_span_id(spans: &[FlatSpan]) -> BTreeMap<String, FlatSpan> {
    spans.iter().map(|s| (s.span_id_hex(), s.clone())).collect()
}

/// Finds a span by name; panics naming the names present if it is not there.
pub fn find<'a>(spans: &'a [FlatSpan], name: &str) -> &'a FlatSpan {
    spans
        .iter()
        .find(|s| s.span.name == name)
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| s.span.name.as_str()).collect();
            panic!("no span named {name:?}; spans: {names:?}")
        })
}

macro_rules! field {
    ($out:expr, $what:expr, $sent:expr, $got:expr) => {
        if $sent != $got {
            let _ = writeln!(
                $out,
                "  {}: sent {:?}\n  {}  got  {:?}",
                $what,
                $sent,
                " ".repeat($what.len()),
                $got
            );
        }
    };
}

/// Compares what was sent with what came back, field by field. Returns a description of every
/// difference (empty when equal): missing spans, extra spans, and each differing field.
pub fn compare(sent: &[FlatSpan], got: &[FlatSpan]) -> String {
    let mut out = String::new();
    let got_by_id = by_span_id(got);
    let sent_by_id = by_span_id(sent);
    if sent_by_id.len() != sent.len() {
        let _ = writeln!(out, "the sent spans have duplicate span ids");
    }
    if got_by_id.len() != got.len() {
        let _ = writeln!(
            out,
            "the answer holds {} spans but only {} distinct span ids (duplicates)",
            got.len(),
            got_by_id.len()
        );
    }
    for (id, s) in &sent_by_id {
        let Some(g) = got_by_id.get(id) else {
            let _ = writeln!(
                out,
                "span {id} ({:?} of {}) is missing",
                s.span.name,
                s.service()
            );
            continue;
        };
        let mut diff = String::new();
        let (a, b) = (&s.span, &g.span);
        field!(
            diff,
            "trace_id",
            hex::encode(&a.trace_id),
            hex::encode(&b.trace_id)
        );
        field!(
            diff,
            "parent_span_id",
            hex::encode(&a.parent_span_id),
            hex::encode(&b.parent_span_id)
        );
        field!(diff, "trace_state", &a.trace_state, &b.trace_state);
        field!(diff, "flags", a.flags, b.flags);
        field!(diff, "name", &a.name, &b.name);
        field!(diff, "kind", a.kind, b.kind);
        field!(
            diff,
            "start_time_unix_nano",
            a.start_time_unix_nano,
            b.start_time_unix_nano
        );
        field!(
            diff,
            "end_time_unix_nano",
            a.end_time_unix_nano,
            b.end_time_unix_nano
        );
        field!(diff, "attributes", &a.attributes, &b.attributes);
        field!(
            diff,
            "dropped_attributes_count",
            a.dropped_attributes_count,
            b.dropped_attributes_count
        );
        field!(diff, "events", &a.events, &b.events);
        field!(
            diff,
            "dropped_events_count",
            a.dropped_events_count,
            b.dropped_events_count
        );
        field!(diff, "links", &a.links, &b.links);
        field!(
            diff,
            "dropped_links_count",
            a.dropped_links_count,
            b.dropped_links_count
        );
        field!(diff, "status", &a.status, &b.status);
        field!(
            diff,
            "resource.attributes",
            &s.resource.attributes,
            &g.resource.attributes
        );
        field!(
            diff,
            "resource.dropped_attributes_count",
            s.resource.dropped_attributes_count,
            g.resource.dropped_attributes_count
        );
        field!(
            diff,
            "resource schema_url",
            &s.resource_schema_url,
            &g.resource_schema_url
        );
        field!(diff, "scope.name", &s.scope.name, &g.scope.name);
        field!(diff, "scope.version", &s.scope.version, &g.scope.version);
        field!(
            diff,
            "scope.attributes",
            &s.scope.attributes,
            &g.scope.attributes
        );
        field!(
            diff,
            "scope schema_url",
            &s.scope_schema_url,
            &g.scope_schema_url
        );
        if !diff.is_empty() {
            let _ = writeln!(
                out,
                "span {id} ({:?} of {}) differs:\n{diff}",
                a.name,
                s.service()
            );
        }
    }
    for (id, g) in &got_by_id {
        if !sent_by_id.contains_key(id) {
            let _ = writeln!(
                out,
                "span {id} ({:?} of {}) was never sent",
                g.span.name,
                g.service()
            );
        }
    }
    out
}

/// Panics with the differences if `got` is not what was `sent`.
pub fn assert_same(context: &str, sent: &[FlatSpan], got: &[FlatSpan]) {
    let diff = compare(sent, got);
    assert!(
        diff.is_empty(),
        "{context}: the spans read back differ from those sent:\n{diff}"
    );
}

// ---------------------------------------------------------------- building expectations

pub fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.to_string())),
    }
}

pub fn b(v: bool) -> AnyValue {
    AnyValue {
        value: Some(Value::BoolValue(v)),
    }
}

pub fn i(v: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(v)),
    }
}

pub fn f(v: f64) -> AnyValue {
    AnyValue {
        value: Some(Value::DoubleValue(v)),
    }
}

pub fn arr(values: Vec<AnyValue>) -> AnyValue {
    AnyValue {
        value: Some(Value::ArrayValue(sextant_otlp_proto::proto::ArrayValue {
            values,
        })),
    }
}

/// Asserts an attribute of a list has a value.
pub fn assert_attr(what: &str, attrs: &[KeyValue], key: &str, expected: &AnyValue) {
    let got = attr::get(attrs, key);
    assert_eq!(
        got,
        Some(expected),
        "{what}: attribute {key:?} is {got:?}, expected {expected:?}; all: {attrs:?}"
    );
}
