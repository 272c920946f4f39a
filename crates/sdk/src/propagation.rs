//! Context propagation: W3C trace context + baggage (default), B3 single and
//! multi header, Jaeger `uber-trace-id`; helpers to carry a context in an
//! [`http::HeaderMap`] or any string map (a job's headers), and the
//! `X-Correlation-ID` convention.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::config::PropagatorKind;

/// The correlation-id header read from requests and echoed in responses.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// A correlation id carried in a [`Context`] (set by the server layer,
/// injected as `x-correlation-id` by [`inject_context`]). Shared, not copied,
/// by the context, the span attribute and the response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub Arc<str>);

impl CorrelationId {
    /// A new random id (32 lowercase hex digits, UUID-sized).
    pub fn generate() -> Self {
        use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
        Self::hex(RandomIdGenerator::default().new_trace_id())
    }

    /// The id given to a request that came without one: the trace id of its span in `cx`
    /// (32 lowercase hex digits), or a random id when `cx` has no valid span.
    pub fn of_trace(cx: &Context) -> Self {
        let id = cx.span().span_context().trace_id();
        if id == TraceId::INVALID {
            Self::generate()
        } else {
            Self::hex(id)
        }
    }

    fn hex(id: TraceId) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in id.to_bytes().iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        // Hex digits are ASCII.
        CorrelationId(Arc::from(std::str::from_utf8(&out).unwrap_or_default()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an attribute value (shared, not copied).
    pub fn as_value(&self) -> opentelemetry::StringValue {
        self.0.clone().into()
    }

    /// The correlation id of a context, if any.
    pub fn of(cx: &Context) -> Option<&str> {
        cx.get::<CorrelationId>().map(|c| c.as_str())
    }
}

impl From<&str> for CorrelationId {
    fn from(id: &str) -> Self {
        CorrelationId(Arc::from(id))
    }
}

/// The correlation id of the current context.
pub fn correlation_id() -> Option<String> {
    Context::map_current(|cx| CorrelationId::of(cx).map(str::to_string))
}

/// [`Extractor`] over an [`http::HeaderMap`].
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// [`Injector`] into an [`http::HeaderMap`].
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Inject `cx` into `headers` with the global propagator, plus `x-correlation-id`
/// when the context carries one.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers))
    });
    inject_correlation(cx, &mut HeaderInjector(headers));
}

/// Extract a context from `headers` with the global propagator (and the
/// correlation id, when present).
pub fn extract_context(headers: &HeaderMap) -> Context {
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract_with_context(&Context::new(), &HeaderExtractor(headers))
    });
    extract_correlation(cx, &HeaderExtractor(headers))
}

/// Inject `cx` into any string map (e.g. a job's `headers`), so a queue
/// consumer can continue the trace the way Celery does.
pub fn inject_into_map(cx: &Context, map: &mut std::collections::HashMap<String, String>) {
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, map));
    inject_correlation(cx, map);
}

/// Extract a context from a string map filled by [`inject_into_map`].
pub fn extract_from_map(map: &std::collections::HashMap<String, String>) -> Context {
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract_with_context(&Context::new(), map)
    });
    extract_correlation(cx, map)
}

fn inject_correlation(cx: &Context, injector: &mut dyn Injector) {
    if let Some(id) = CorrelationId::of(cx) {
        injector.set(CORRELATION_HEADER, id.to_string());
    }
}

fn extract_correlation(cx: Context, extractor: &dyn Extractor) -> Context {
    match extractor.get(CORRELATION_HEADER).map(str::trim) {
        Some(id) if !id.is_empty() && id.len() <= 128 => cx.with_value(CorrelationId::from(id)),
        _ => cx,
    }
}

/// Build the composite propagator for a list of names (`OTEL_PROPAGATORS`).
pub fn build_propagator(kinds: &[PropagatorKind]) -> TextMapCompositePropagator {
    let list: Vec<Box<dyn TextMapPropagator + Send + Sync>> = kinds
        .iter()
        .map(|k| -> Box<dyn TextMapPropagator + Send + Sync> {
            match k {
                PropagatorKind::TraceContext => Box::new(TraceContextPropagator::new()),
                PropagatorKind::Baggage => Box::new(BaggagePropagator::new()),
                PropagatorKind::B3 => Box::new(B3Propagator::single()),
                PropagatorKind::B3Multi => Box::new(B3Propagator::multi()),
                PropagatorKind::Jaeger => Box::new(JaegerPropagator::new()),
            }
        })
        .collect();
    TextMapCompositePropagator::new(list)
}

/// Parse a 64- or 128-bit hex trace id (shorter ids are left-padded, as Jaeger allows).
fn parse_trace_id(s: &str, max_len: usize) -> Option<TraceId> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = TraceId::from_hex(s).ok()?;
    (id != TraceId::INVALID).then_some(id)
}

fn parse_span_id(s: &str, max_len: usize) -> Option<SpanId> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = SpanId::from_hex(s).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn remote(trace_id: TraceId, span_id: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::default())
}

// ---------------------------------------------------------------------------
// B3
// ---------------------------------------------------------------------------

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// Zipkin B3 propagation (<https://github.com/openzipkin/b3-propagation>).
///
/// Extraction accepts both the single `b3` header and the `X-B3-*` headers
/// (single first); injection writes the encoding it was built for.
#[derive(Debug, Clone, Copy)]
pub struct B3Propagator {
    multi: bool,
}

impl B3Propagator {
    /// Inject the single `b3: {trace}-{span}-{sampled}` header.
    pub fn single() -> Self {
        B3Propagator { multi: false }
    }
    /// Inject `X-B3-TraceId`, `X-B3-SpanId` and `X-B3-Sampled`.
    pub fn multi() -> Self {
        B3Propagator { multi: true }
    }

    fn extract_single(value: &str) -> Option<SpanContext> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        // A lone sampling state ("0", "1", "d") carries no ids: nothing to continue.
        if parts.len() < 2 || parts.len() > 4 {
            return None;
        }
        let trace_id =
            parse_trace_id(parts[0], 32).filter(|_| matches!(parts[0].len(), 16 | 32))?;
        let span_id = parse_span_id(parts[1], 16).filter(|_| parts[1].len() == 16)?;
        let sampled = match parts.get(2) {
            None => true, // deferred: we decide, and we sample (spec lets the receiver decide)
            Some(&"1") | Some(&"d") => true,
            Some(&"0") => false,
            Some(_) => return None,
        };
        if let Some(parent) = parts.get(3) {
            parse_span_id(parent, 16).filter(|_| parent.len() == 16)?;
        }
        Some(remote(trace_id, span_id, sampled))
    }

    fn extract_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
        let tid = extractor.get(B3_TRACE_ID)?.trim();
        let sid = extractor.get(B3_SPAN_ID)?.trim();
        let trace_id = parse_trace_id(tid, 32).filter(|_| matches!(tid.len(), 16 | 32))?;
        let span_id = parse_span_id(sid, 16).filter(|_| sid.len() == 16)?;
        let debug = extractor.get(B3_FLAGS).map(str::trim) == Some("1");
        let sampled = match extractor.get(B3_SAMPLED).map(str::trim) {
            _ if debug => true,
            None => true,
            Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            Some(_) => return None,
        };
        Some(remote(trace_id, span_id, sampled))
    }
}

fn b3_fields() -> &'static [String] {
    static F: OnceLock<Vec<String>> = OnceLock::new();
    F.get_or_init(|| {
        [
            B3_SINGLE,
            B3_TRACE_ID,
            B3_SPAN_ID,
            B3_PARENT_SPAN_ID,
            B3_SAMPLED,
            B3_FLAGS,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let sampled = if sc.is_sampled() { "1" } else { "0" };
        if self.multi {
            injector.set(B3_TRACE_ID, format!("{:032x}", sc.trace_id()));
            injector.set(B3_SPAN_ID, format!("{:016x}", sc.span_id()));
            injector.set(B3_SAMPLED, sampled.to_string());
        } else {
            injector.set(
                B3_SINGLE,
                format!("{:032x}-{:016x}-{sampled}", sc.trace_id(), sc.span_id()),
            );
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let sc = match extractor.get(B3_SINGLE) {
            Some(v) => Self::extract_single(v),
            None => Self::extract_multi(extractor),
        };
        match sc {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(b3_fields())
    }
}

// ---------------------------------------------------------------------------
// Jaeger
// ---------------------------------------------------------------------------

const JAEGER_HEADER: &str = "uber-trace-id";
const JAEGER_BAGGAGE_PREFIX: &str = "uberctx-";

/// Jaeger propagation: `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`
/// and baggage as `uberctx-{key}: {value}`
/// (<https://www.jaegertracing.io/docs/client-libraries/#propagation-format>).
#[derive(Debug, Clone, Copy, Default)]
pub struct JaegerPropagator;

impl JaegerPropagator {
    /// A new Jaeger propagator.
    pub fn new() -> Self {
        JaegerPropagator
    }

    fn extract_span_context(value: &str) -> Option<SpanContext> {
        // The header may be URL-encoded (`%3A` for `:`).
        let decoded;
        let value = if value.contains('%') {
            decoded = crate::config::percent_decode(JAEGER_HEADER, value).ok()?;
            decoded.as_str()
        } else {
            value
        };
        let parts: Vec<&str> = value.trim().split(':').collect();
        if parts.len() != 4 {
            return None;
        }
        let trace_id = parse_trace_id(parts[0], 32)?;
        let span_id = parse_span_id(parts[1], 16)?;
        // parts[2] is the deprecated parent span id: must be hex, ignored.
        if parts[2].is_empty()
            || parts[2].len() > 16
            || !parts[2].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let flags = u8::from_str_radix(parts[3], 16).ok()?;
        // bit 0: sampled, bit 1: debug (implies sampled).
        Some(remote(trace_id, span_id, flags & 0x03 != 0))
    }
}

fn jaeger_fields() -> &'static [String] {
    static F: OnceLock<Vec<String>> = OnceLock::new();
    F.get_or_init(|| vec![JAEGER_HEADER.to_string()])
}

impl TextMapPropagator for JaegerPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let flags = if sc.is_sampled() { 1 } else { 0 };
            injector.set(
                JAEGER_HEADER,
                format!("{:032x}:{:016x}:0:{flags}", sc.trace_id(), sc.span_id()),
            );
        }
        for (k, (v, _)) in cx.baggage().iter() {
            injector.set(
                &format!("{JAEGER_BAGGAGE_PREFIX}{}", k.as_str()),
                v.to_string(),
            );
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let mut out = match extractor
            .get(JAEGER_HEADER)
            .and_then(Self::extract_span_context)
        {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        };
        let baggage: Vec<KeyValue> = extractor
            .keys()
            .into_iter()
            .filter_map(|k| {
                let lower = k.to_ascii_lowercase();
                let key = lower.strip_prefix(JAEGER_BAGGAGE_PREFIX)?.to_string();
                let value = extractor.get(k)?.to_string();
                (!key.is_empty()).then(|| KeyValue::new(key, value))
            })
            .collect();
        if !baggage.is_empty() {
            let mut all: Vec<KeyValue> = out
                .baggage()
                .iter()
                .map(|(k, (v, _))| KeyValue::new(k.clone(), v.to_string()))
                .collect();
            all.extend(baggage);
            out = out.with_baggage(all);
        }
        out
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(jaeger_fields())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn cx_with(sampled: bool) -> Context {
        Context::new().with_remote_span_context(remote(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            sampled,
        ))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn extract(p: &dyn TextMapPropagator, h: &HeaderMap) -> SpanContext {
        p.extract_with_context(&Context::new(), &HeaderExtractor(h))
            .span()
            .span_context()
            .clone()
    }

    fn round_trip(p: &dyn TextMapPropagator) {
        for sampled in [true, false] {
            let mut h = HeaderMap::new();
            p.inject_context(&cx_with(sampled), &mut HeaderInjector(&mut h));
            assert!(!h.is_empty());
            let sc = extract(p, &h);
            assert_eq!(format!("{:032x}", sc.trace_id()), TRACE);
            assert_eq!(format!("{:016x}", sc.span_id()), SPAN);
            assert_eq!(sc.is_sampled(), sampled);
            assert!(sc.is_remote());
        }
    }

    #[test]
    fn round_trips() {
        round_trip(&B3Propagator::single());
        round_trip(&B3Propagator::multi());
        round_trip(&JaegerPropagator::new());
        round_trip(&TraceContextPropagator::new());
        round_trip(&build_propagator(&[
            PropagatorKind::TraceContext,
            PropagatorKind::Baggage,
            PropagatorKind::B3,
            PropagatorKind::B3Multi,
            PropagatorKind::Jaeger,
        ]));
    }

    #[test]
    fn injected_header_formats() {
        let mut h = HeaderMap::new();
        B3Propagator::single().inject_context(&cx_with(true), &mut HeaderInjector(&mut h));
        assert_eq!(h["b3"], format!("{TRACE}-{SPAN}-1"));
        let mut h = HeaderMap::new();
        B3Propagator::multi().inject_context(&cx_with(false), &mut HeaderInjector(&mut h));
        assert_eq!(h["x-b3-traceid"], TRACE);
        assert_eq!(h["x-b3-spanid"], SPAN);
        assert_eq!(h["x-b3-sampled"], "0");
        let mut h = HeaderMap::new();
        JaegerPropagator.inject_context(&cx_with(true), &mut HeaderInjector(&mut h));
        assert_eq!(h["uber-trace-id"], format!("{TRACE}:{SPAN}:0:1"));
        // Nothing is injected for an invalid context.
        let mut h = HeaderMap::new();
        B3Propagator::single().inject_context(&Context::new(), &mut HeaderInjector(&mut h));
        JaegerPropagator.inject_context(&Context::new(), &mut HeaderInjector(&mut h));
        assert!(h.is_empty());
    }

    /// Headers as the official Python SDK writes them (opentelemetry-propagator-b3,
    /// opentelemetry-propagator-jaeger, the W3C propagators), written by hand from the specs.
    #[test]
    fn extracts_python_sdk_headers() {
        // B3MultiFormat: X-B3-TraceId / X-B3-SpanId / X-B3-Sampled (mixed case).
        let h = headers(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "1"),
        ]);
        let sc = extract(&B3Propagator::multi(), &h);
        assert_eq!(format!("{:032x}", sc.trace_id()), TRACE);
        assert!(sc.is_sampled());
        // B3 debug flag implies sampled.
        let h = headers(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Flags", "1"),
        ]);
        assert!(extract(&B3Propagator::multi(), &h).is_sampled());
        // 64-bit trace id, padded on the left.
        let h = headers(&[
            ("X-B3-TraceId", "a3ce929d0e0e4736"),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "0"),
        ]);
        let sc = extract(&B3Propagator::multi(), &h);
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(!sc.is_sampled());
        // B3SingleFormat: b3: {trace}-{span}-{sampled}[-{parent}]
        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))]);
        let sc = extract(&B3Propagator::single(), &h);
        assert_eq!(format!("{:016x}", sc.span_id()), SPAN);
        assert!(sc.is_sampled());
        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-d"))]);
        assert!(extract(&B3Propagator::multi(), &h).is_sampled());
        // Jaeger: {trace:032x}:{span:016x}:{parent:016x}:{flags:02x}
        let h = headers(&[
            (
                "uber-trace-id",
                &format!("{TRACE}:{SPAN}:0000000000000000:01"),
            ),
            ("uberctx-user-id", "42"),
        ]);
        let cx = JaegerPropagator.extract_with_context(&Context::new(), &HeaderExtractor(&h));
        let sc = cx.span().span_context().clone();
        assert_eq!(format!("{:032x}", sc.trace_id()), TRACE);
        assert!(sc.is_sampled());
        assert_eq!(
            cx.baggage()
                .get("user-id")
                .map(|v| v.to_string())
                .as_deref(),
            Some("42")
        );
        // Jaeger, URL-encoded, short trace id, debug flag.
        let h = headers(&[(
            "uber-trace-id",
            "a3ce929d0e0e4736%3A00f067aa0ba902b7%3A0%3A2",
        )]);
        let sc = extract(&JaegerPropagator, &h);
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled());
        // W3C traceparent + baggage as Python writes them.
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("baggage", "userId=alice,isProduction=false"),
        ]);
        let p = build_propagator(&[PropagatorKind::TraceContext, PropagatorKind::Baggage]);
        let cx = p.extract_with_context(&Context::new(), &HeaderExtractor(&h));
        assert_eq!(format!("{:016x}", cx.span().span_context().span_id()), SPAN);
        assert_eq!(
            cx.baggage().get("userId").map(|v| v.to_string()).as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn rejects_malformed() {
        let bad_b3 = [
            "0",
            "1",
            "zzzz2f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa-1",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-x",
            "00000000000000000000000000000000-00f067aa0ba902b7-1",
        ];
        for v in bad_b3 {
            let sc = extract(&B3Propagator::single(), &headers(&[("b3", v)]));
            assert!(!sc.is_valid(), "{v}");
        }
        let bad_jaeger = [
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0",
            "4bf92f3577b34da6a3ce929d0e0e4736:0000000000000000:0:1",
            "nothex:00f067aa0ba902b7:0:1",
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:zz",
        ];
        for v in bad_jaeger {
            let sc = extract(&JaegerPropagator, &headers(&[("uber-trace-id", v)]));
            assert!(!sc.is_valid(), "{v}");
        }
    }

    #[test]
    fn map_carrier_and_correlation() {
        // Uses explicit propagators, not the global one, to stay independent of other tests.
        let p = build_propagator(&[PropagatorKind::TraceContext]);
        let mut map = HashMap::new();
        p.inject_context(&cx_with(true), &mut map);
        inject_correlation(
            &cx_with(true).with_value(CorrelationId("abc".into())),
            &mut map,
        );
        assert_eq!(map["x-correlation-id"], "abc");
        let cx = extract_correlation(p.extract_with_context(&Context::new(), &map), &map);
        assert_eq!(CorrelationId::of(&cx), Some("abc"));
        assert_eq!(
            format!("{:032x}", cx.span().span_context().trace_id()),
            TRACE
        );
        assert_eq!(CorrelationId::generate().0.len(), 32);
    }
}
