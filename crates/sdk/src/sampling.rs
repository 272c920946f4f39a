//! Sampling: parent-based ratio sampling whose default ratio follows the
//! deployment environment (development 100 %, staging 50 %, production 10 %),
//! route rules that always sample, and a must-keep marker.
//!
//! Decision order for a span:
//! 1. (parent-based samplers) a valid parent decides: sampled parent → sampled,
//!    unsampled parent → dropped, so a trace is never cut in the middle;
//! 2. a span started with `sampling.priority` ≥ 1 is sampled;
//! 3. a span matching an always-sample rule is sampled;
//! 4. otherwise the root sampler (ratio / always_on / always_off).

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::config::SamplerKind;

/// The attribute that marks a trace as must-keep.
pub const SAMPLING_PRIORITY: &str = "sampling.priority";

/// An always-sample rule: `"POST /api/auth/login"`, `"/api/payments/*"`, `"GET /health"`.
///
/// The optional method is matched case-insensitively against
/// `http.request.method`; the pattern is a glob (`*` matches any run of
/// characters, `/` included) matched against `http.route`, else `url.path`,
/// else the path part of a `METHOD /path` span name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    method: Option<String>,
    pattern: String,
}

impl Rule {
    /// Parse `"[METHOD ]PATTERN"`.
    pub fn parse(rule: &str) -> Rule {
        let rule = rule.trim();
        match rule.split_once(' ') {
            Some((m, p)) if !m.starts_with('/') => Rule {
                method: Some(m.to_ascii_uppercase()),
                pattern: p.trim().to_string(),
            },
            _ => Rule {
                method: None,
                pattern: rule.to_string(),
            },
        }
    }

    /// Whether a request with this method and route matches.
    pub fn matches(&self, method: Option<&str>, route: &str) -> bool {
        if let Some(m) = &self.method {
            match method {
                Some(method) if method.eq_ignore_ascii_case(m) => {}
                _ => return false,
            }
        }
        glob_match(self.pattern.as_bytes(), route.as_bytes())
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative wildcard matching with backtracking on the last `*`.
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The Sextant sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct SextantSampler {
    kind: SamplerKind,
    ratio: f64,
    rules: Vec<Rule>,
    root: Sampler,
}

impl SextantSampler {
    /// A sampler of the given kind; `ratio` is used by the ratio kinds.
    pub fn new(kind: SamplerKind, ratio: f64, rules: Vec<Rule>) -> Self {
        let root = match kind {
            SamplerKind::AlwaysOn | SamplerKind::ParentBasedAlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff | SamplerKind::ParentBasedAlwaysOff => Sampler::AlwaysOff,
            SamplerKind::TraceIdRatio | SamplerKind::ParentBasedTraceIdRatio => {
                Sampler::TraceIdRatioBased(ratio.clamp(0.0, 1.0))
            }
        };
        SextantSampler {
            kind,
            ratio,
            rules,
            root,
        }
    }

    /// The configured root ratio.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    fn rule_matches(&self, name: &str, attributes: &[KeyValue]) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let attr = |k: &str| {
            attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.as_str().into_owned())
        };
        let (name_method, name_path) = match name.split_once(' ') {
            Some((m, p)) if p.starts_with('/') => (Some(m.to_string()), Some(p.to_string())),
            _ => (None, None),
        };
        let method = attr("http.request.method")
            .or_else(|| attr("http.method"))
            .or(name_method);
        let route = attr("http.route")
            .or_else(|| attr("url.path"))
            .or(name_path);
        let Some(route) = route else { return false };
        self.rules
            .iter()
            .any(|r| r.matches(method.as_deref(), &route))
    }
}

fn priority(attributes: &[KeyValue]) -> bool {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == SAMPLING_PRIORITY)
        .is_some_and(|kv| match &kv.value {
            Value::I64(n) => *n >= 1,
            Value::F64(n) => *n >= 1.0,
            Value::Bool(b) => *b,
            Value::String(s) => s.as_str().parse::<i64>().is_ok_and(|n| n >= 1),
            _ => false,
        })
}

impl ShouldSample for SextantSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent_state = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid());
        let trace_state = parent_state
            .as_ref()
            .map(|sc| sc.trace_state().clone())
            .unwrap_or_default();
        let result = |decision| SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: trace_state.clone(),
        };
        if self.kind.parent_based() {
            if let Some(sc) = &parent_state {
                return result(if sc.is_sampled() {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                });
            }
        }
        if priority(attributes) || self.rule_matches(name, attributes) {
            return result(SamplingDecision::RecordAndSample);
        }
        let mut r =
            self.root
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        r.trace_state = trace_state;
        r
    }
}

/// Something that can be marked must-keep by [`keep_trace`].
pub trait KeepTrace {
    /// Set `sampling.priority = 1`.
    fn keep(&self);
}

impl KeepTrace for opentelemetry::trace::SpanRef<'_> {
    fn keep(&self) {
        self.set_attribute(KeyValue::new(SAMPLING_PRIORITY, 1i64));
    }
}

impl KeepTrace for Context {
    fn keep(&self) {
        self.span().keep();
    }
}

impl KeepTrace for tracing::Span {
    fn keep(&self) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        self.set_attribute(SAMPLING_PRIORITY, 1i64);
    }
}

/// Mark a trace must-keep: sets `sampling.priority = 1` on the span, which a
/// tail-sampling collector honours (the attribute is exported with the span).
/// A span *started* with that attribute is always sampled by [`SextantSampler`];
/// see [`keep_attribute`].
pub fn keep_trace(span: &impl KeepTrace) {
    span.keep();
}

/// The attribute to pass at span start to force sampling.
pub fn keep_attribute() -> KeyValue {
    KeyValue::new(SAMPLING_PRIORITY, 1i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

    fn decide(
        s: &SextantSampler,
        parent: Option<&Context>,
        name: &str,
        attrs: &[KeyValue],
    ) -> bool {
        let id = RandomIdGenerator::default().new_trace_id();
        s.should_sample(parent, id, name, &SpanKind::Server, attrs, &[])
            .decision
            == SamplingDecision::RecordAndSample
    }

    #[test]
    fn globs_and_rules() {
        assert!(glob_match(b"/api/payments/*", b"/api/payments/42/refund"));
        assert!(!glob_match(b"/api/payments/*", b"/api/pay"));
        assert!(glob_match(b"/a/*/c", b"/a/b/c"));
        assert!(!glob_match(b"/a/*/c", b"/a/b/d"));
        assert!(glob_match(b"*", b""));
        let login = Rule::parse("POST /api/auth/login");
        assert!(login.matches(Some("post"), "/api/auth/login"));
        assert!(!login.matches(Some("GET"), "/api/auth/login"));
        assert!(!login.matches(None, "/api/auth/login"));
        let pay = Rule::parse("/api/payments/*");
        assert!(pay.matches(Some("DELETE"), "/api/payments/7"));
        assert!(pay.matches(None, "/api/payments/7"));
    }

    #[test]
    fn rules_override_ratio_zero() {
        let s = SextantSampler::new(
            SamplerKind::ParentBasedTraceIdRatio,
            0.0,
            vec![
                Rule::parse("POST /api/auth/login"),
                Rule::parse("/api/payments/*"),
            ],
        );
        let attrs = [
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/api/auth/login"),
        ];
        for _ in 0..100 {
            assert!(decide(&s, None, "POST /api/auth/login", &attrs));
            // From the span name alone.
            assert!(decide(&s, None, "GET /api/payments/{id}", &[]));
            assert!(!decide(&s, None, "GET /api/auth/login", &[]));
            assert!(!decide(&s, None, "GET /api/users", &[]));
            assert!(decide(&s, None, "anything", &[keep_attribute()]));
        }
    }

    #[test]
    fn parent_decides() {
        let s = SextantSampler::new(SamplerKind::ParentBasedTraceIdRatio, 0.0, vec![]);
        let sc = |flags| {
            SpanContext::new(
                RandomIdGenerator::default().new_trace_id(),
                SpanId::from(7u64),
                flags,
                true,
                TraceState::default(),
            )
        };
        let sampled = Context::new().with_remote_span_context(sc(TraceFlags::SAMPLED));
        let unsampled = Context::new().with_remote_span_context(sc(TraceFlags::default()));
        let all = SextantSampler::new(SamplerKind::ParentBasedTraceIdRatio, 1.0, vec![]);
        for _ in 0..100 {
            assert!(decide(&s, Some(&sampled), "x", &[]));
            assert!(!decide(&all, Some(&unsampled), "x", &[]));
        }
        // Non-parent-based: the ratio applies even under a sampled parent.
        let off = SextantSampler::new(SamplerKind::AlwaysOff, 1.0, vec![]);
        assert!(!decide(&off, Some(&sampled), "x", &[]));
    }

    #[test]
    fn keep_trace_marks_spans() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("t");
        let cx = Context::new().with_span(tracer.start("checkout"));
        keep_trace(&cx.span());
        cx.span().end();
        tracer.in_span("plain", |_| {});
        let spans = exporter.get_finished_spans().unwrap();
        let prio = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap()
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == SAMPLING_PRIORITY)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(prio("checkout"), Some(Value::I64(1)));
        assert_eq!(prio("plain"), None);
    }

    #[test]
    fn ratio_is_statistically_right() {
        const N: usize = 20_000;
        for (ratio, tolerance) in [(0.1, 0.015), (0.5, 0.02), (0.25, 0.02)] {
            let s = SextantSampler::new(SamplerKind::ParentBasedTraceIdRatio, ratio, vec![]);
            let kept = (0..N).filter(|_| decide(&s, None, "GET /x", &[])).count();
            let observed = kept as f64 / N as f64;
            assert!(
                (observed - ratio).abs() < tolerance,
                "ratio {ratio}: observed {observed}"
            );
        }
        let s = SextantSampler::new(SamplerKind::ParentBasedTraceIdRatio, 1.0, vec![]);
        assert!((0..1000).all(|_| decide(&s, None, "x", &[])));
        let s = SextantSampler::new(SamplerKind::ParentBasedTraceIdRatio, 0.0, vec![]);
        assert!((0..1000).all(|_| !decide(&s, None, "x", &[])));
    }
}
