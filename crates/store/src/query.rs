//! Search conditions and their evaluation against spans (core logic, no I/O).

use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{KeyValue, Resource, Span};

use crate::types::TagScope;

/// How a condition compares the value it looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// The rendered value equals this text (`500` matches the int 500, `true` the bool).
    Equals(String),
    /// The attribute is present, whatever its value.
    Exists,
}

/// One condition of a search, on one span.
///
/// `key` is an attribute name, or one of the span's intrinsic fields:
/// `name` (the span name), `status` (`ok`, `error`, `unset`), `kind` (`server`, `client`, ...),
/// `statusMessage`. `scope: None` looks at the span's attributes, then its resource's
/// (Tempo's unscoped `.attr`); `service.name` is a resource attribute like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub scope: Option<TagScope>,
    pub key: String,
    pub matcher: Matcher,
}

impl Condition {
    /// `key = value`, unscoped.
    pub fn equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            scope: None,
            key: key.into(),
            matcher: Matcher::Equals(value.into()),
        }
    }

    /// Whether the span (with its resource) satisfies the condition. On a match, returns the
    /// attribute that matched, when the condition looked at an attribute.
    pub fn matches(&self, span: &Span, resource: Option<&Resource>) -> Option<Option<KeyValue>> {
        if self.scope.is_none() {
            if let Some(text) = intrinsic(span, &self.key) {
                return self.test_text(&text).then_some(None);
            }
        }
        let span_attrs: &[KeyValue] = &span.attributes;
        let resource_attrs: &[KeyValue] = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        let places: &[&[KeyValue]] = match self.scope {
            Some(TagScope::Span) => &[span_attrs],
            Some(TagScope::Resource) => &[resource_attrs],
            None => &[span_attrs, resource_attrs],
        };
        for attrs in places {
            if let Some(kv) = attrs.iter().find(|kv| kv.key == self.key) {
                let ok = match &self.matcher {
                    Matcher::Exists => true,
                    Matcher::Equals(want) => {
                        kv.value.as_ref().map(attr::render).as_deref() == Some(want)
                    }
                };
                if ok {
                    return Some(Some(kv.clone()));
                }
            }
        }
        None
    }

    fn test_text(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Exists => true,
            Matcher::Equals(want) => want == text,
        }
    }
}

/// The span's intrinsic fields, rendered as Tempo writes them in TraceQL.
pub(crate) fn intrinsic(span: &Span, key: &str) -> Option<String> {
    match key {
        "name" => Some(span.name.clone()),
        "status" => Some(status_name(span).to_string()),
        "statusMessage" => Some(
            span.status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default(),
        ),
        "kind" => Some(kind_name(span.kind).to_string()),
        _ => None,
    }
}

/// `ok`, `error` or `unset`.
pub fn status_name(span: &Span) -> &'static str {
    match span.status.as_ref().map(|s| s.code).unwrap_or(0) {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// `unspecified`, `internal`, `server`, `client`, `producer`, `consumer`.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_otlp_proto::proto::Status;

    #[test]
    fn conditions_look_at_span_then_resource() {
        let span = Span {
            name: "GET /users".into(),
            kind: 2,
            attributes: vec![attr::kv_int("http.status_code", 500)],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let resource = Resource {
            attributes: vec![attr::kv_str("service.name", "api")],
            ..Default::default()
        };
        let r = Some(&resource);
        assert!(Condition::equals("http.status_code", "500")
            .matches(&span, r)
            .is_some());
        assert!(Condition::equals("service.name", "api")
            .matches(&span, r)
            .is_some());
        assert!(Condition::equals("service.name", "web")
            .matches(&span, r)
            .is_none());
        assert!(Condition::equals("name", "GET /users")
            .matches(&span, r)
            .is_some());
        assert!(Condition::equals("status", "error")
            .matches(&span, r)
            .is_some());
        assert!(Condition::equals("kind", "server")
            .matches(&span, r)
            .is_some());
        let scoped = Condition {
            scope: Some(TagScope::Span),
            key: "service.name".into(),
            matcher: Matcher::Exists,
        };
        assert!(scoped.matches(&span, r).is_none());
    }
}
