//! What the `attributes` and `filter` processors share: the reference collector's include/exclude
//! match properties (`match_type: strict|regexp`, `services`, `span_names`, `span_kinds`,
//! `attributes`, `resources`, `libraries`), compiled once and evaluated against
//! (resource, scope, span); plus attribute value helpers and the hashes the processors use.
//!
//! Semantics, as the reference's `filterspan`: every property that is given must match (AND);
//! within one list of names any entry may match (OR); every listed attribute must be present
//! (and equal, when a value is given). `regexp` patterns are unanchored (Go's `MatchString`).
//! A span is processed when it matches `include` (or there is none) and does not match
//! `exclude` (or there is none).

use std::borrow::Cow;

use regex::{Regex, RegexSet};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::{AnyValue, InstrumentationScope, KeyValue, Resource, Span};

/// A scalar attribute value as written in YAML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

impl AttrValue {
    /// The OTLP value.
    pub fn to_any(&self) -> AnyValue {
        let value = match self {
            AttrValue::Bool(b) => Value::BoolValue(*b),
            AttrValue::Int(i) => Value::IntValue(*i),
            AttrValue::Double(d) => Value::DoubleValue(*d),
            AttrValue::Str(s) => Value::StringValue(s.clone()),
        };
        AnyValue { value: Some(value) }
    }

    /// Whether an OTLP value equals this one, type included (strict matching: an int never
    /// equals a double, as the reference's typed comparison).
    pub fn equals(&self, value: &AnyValue) -> bool {
        match (self, &value.value) {
            (AttrValue::Bool(a), Some(Value::BoolValue(b))) => a == b,
            (AttrValue::Int(a), Some(Value::IntValue(b))) => a == b,
            (AttrValue::Double(a), Some(Value::DoubleValue(b))) => a == b,
            (AttrValue::Str(a), Some(Value::StringValue(b))) => a == b,
            _ => false,
        }
    }
}

/// `strict` (exact) or `regexp` (unanchored regular expressions).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    #[default]
    Strict,
    Regexp,
}

/// One `{key, value}` of `attributes` or `resources`; without `value`, only presence counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AttributeMatch {
    pub key: String,
    pub value: Option<AttrValue>,
}

/// One `{name, version}` of `libraries` (the instrumentation scope).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LibraryMatch {
    pub name: String,
    pub version: Option<String>,
}

/// The reference's match properties (the span-related ones).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MatchProperties {
    pub match_type: Option<MatchType>,
    pub services: Vec<String>,
    pub span_names: Vec<String>,
    pub span_kinds: Vec<String>,
    pub attributes: Vec<AttributeMatch>,
    pub resources: Vec<AttributeMatch>,
    pub libraries: Vec<LibraryMatch>,
}

/// A compiled list of names.
#[derive(Debug)]
enum Names {
    Strict(FxHashSet<String>),
    Regexp(RegexSet),
}

impl Names {
    fn new(path: &str, kind: MatchType, names: &[String]) -> Result<Option<Names>, String> {
        if names.is_empty() {
            return Ok(None);
        }
        Ok(Some(match kind {
            MatchType::Strict => Names::Strict(names.iter().cloned().collect()),
            MatchType::Regexp => {
                for (i, n) in names.iter().enumerate() {
                    Regex::new(n)
                        .map_err(|e| format!("{path}[{i}]: {n:?} is not a valid regex: {e}"))?;
                }
                Names::Regexp(
                    RegexSet::new(names).map_err(|e| format!("{path}: invalid regexes: {e}"))?,
                )
            }
        }))
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Names::Strict(set) => set.contains(text),
            Names::Regexp(set) => set.is_match(text),
        }
    }
}

#[derive(Debug)]
enum ValueMatch {
    Any,
    Strict(AttrValue),
    Regexp(Regex),
}

#[derive(Debug)]
struct AttrMatcher {
    key: String,
    value: ValueMatch,
}

impl AttrMatcher {
    fn compile(path: &str, kind: MatchType, list: &[AttributeMatch]) -> Result<Vec<Self>, String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            if a.key.is_empty() {
                return Err(format!("{path}[{i}].key: must not be empty"));
            }
            let value = match (&a.value, kind) {
                (None, _) => ValueMatch::Any,
                (Some(v), MatchType::Strict) => ValueMatch::Strict(v.clone()),
                (Some(AttrValue::Str(p)), MatchType::Regexp) => {
                    ValueMatch::Regexp(Regex::new(p).map_err(|e| {
                        format!("{path}[{i}].value: {p:?} is not a valid regex: {e}")
                    })?)
                }
                (Some(_), MatchType::Regexp) => {
                    return Err(format!(
                        "{path}[{i}].value: must be a string (a regex) with match_type regexp"
                    ))
                }
            };
            out.push(AttrMatcher {
                key: a.key.clone(),
                value,
            });
        }
        Ok(out)
    }

    fn matches(&self, attrs: &[KeyValue]) -> bool {
        let Some(v) = attrs.iter().find(|kv| kv.key == self.key) else {
            return false;
        };
        match &self.value {
            ValueMatch::Any => true,
            ValueMatch::Strict(want) => v.value.as_ref().is_some_and(|v| want.equals(v)),
            ValueMatch::Regexp(re) => v.value.as_ref().is_some_and(|v| re.is_match(&as_str(v))),
        }
    }
}

#[derive(Debug)]
struct LibMatcher {
    name: Names,
    version: Option<Names>,
}

/// One compiled `include` or `exclude`.
#[derive(Debug)]
pub struct Properties {
    services: Option<Names>,
    span_names: Option<Names>,
    span_kinds: Option<FxHashSet<i32>>,
    attributes: Vec<AttrMatcher>,
    resources: Vec<AttrMatcher>,
    libraries: Vec<LibMatcher>,
}

/// Parses a span kind as the reference writes it (`SPAN_KIND_SERVER`), or its short form
/// (`Server`, `server`), or its number.
pub fn parse_span_kind(text: &str) -> Option<i32> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return (0..=5).contains(&n).then_some(n);
    }
    let short = t
        .strip_prefix("SPAN_KIND_")
        .unwrap_or(t)
        .to_ascii_lowercase();
    Some(match short.as_str() {
        "unspecified" => 0,
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => return None,
    })
}

impl Properties {
    /// Compiles `props`; `path` (e.g. `include`) prefixes error messages.
    pub fn compile(path: &str, props: &MatchProperties) -> Result<Properties, String> {
        let any = !(props.services.is_empty()
            && props.span_names.is_empty()
            && props.span_kinds.is_empty()
            && props.attributes.is_empty()
            && props.resources.is_empty()
            && props.libraries.is_empty());
        if !any {
            return Err(format!(
                "{path}: at least one of services, span_names, span_kinds, attributes, \
                 resources or libraries must be specified"
            ));
        }
        let Some(kind) = props.match_type else {
            return Err(format!(
                "{path}.match_type: must be set (strict or regexp) when {path} is given"
            ));
        };
        let span_kinds = if props.span_kinds.is_empty() {
            None
        } else {
            let mut set = FxHashSet::default();
            for (i, k) in props.span_kinds.iter().enumerate() {
                let n = parse_span_kind(k).ok_or_else(|| {
                    format!(
                        "{path}.span_kinds[{i}]: {k:?} is not a span kind (SPAN_KIND_INTERNAL, \
                         SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, \
                         SPAN_KIND_CONSUMER, SPAN_KIND_UNSPECIFIED)"
                    )
                })?;
                set.insert(n);
            }
            Some(set)
        };
        let mut libraries = Vec::with_capacity(props.libraries.len());
        for (i, l) in props.libraries.iter().enumerate() {
            let p = format!("{path}.libraries[{i}]");
            let name = Names::new(&format!("{p}.name"), kind, std::slice::from_ref(&l.name))?
                .ok_or_else(|| format!("{p}.name: must be set"))?;
            let version = match &l.version {
                None => None,
                Some(v) => Names::new(&format!("{p}.version"), kind, std::slice::from_ref(v))?,
            };
            libraries.push(LibMatcher { name, version });
        }
        Ok(Properties {
            services: Names::new(&format!("{path}.services"), kind, &props.services)?,
            span_names: Names::new(&format!("{path}.span_names"), kind, &props.span_names)?,
            span_kinds,
            attributes: AttrMatcher::compile(
                &format!("{path}.attributes"),
                kind,
                &props.attributes,
            )?,
            resources: AttrMatcher::compile(&format!("{path}.resources"), kind, &props.resources)?,
            libraries,
        })
    }

    /// Whether (resource, scope, span) has every property given.
    pub fn matches(
        &self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        span: &Span,
    ) -> bool {
        if let Some(s) = &self.services {
            if !s.matches(attr::service_name(resource)) {
                return false;
            }
        }
        if let Some(n) = &self.span_names {
            if !n.matches(&span.name) {
                return false;
            }
        }
        if let Some(k) = &self.span_kinds {
            if !k.contains(&span.kind) {
                return false;
            }
        }
        if !self.libraries.is_empty() {
            let (name, version) = scope
                .map(|s| (s.name.as_str(), s.version.as_str()))
                .unwrap_or(("", ""));
            let ok = self.libraries.iter().any(|l| {
                l.name.matches(name) && l.version.as_ref().is_none_or(|v| v.matches(version))
            });
            if !ok {
                return false;
            }
        }
        let res_attrs = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        self.resources.iter().all(|m| m.matches(res_attrs))
            && self.attributes.iter().all(|m| m.matches(&span.attributes))
    }
}

/// A compiled include/exclude pair.
#[derive(Debug)]
pub struct Matcher {
    include: Option<Properties>,
    exclude: Option<Properties>,
}

impl Matcher {
    /// Compiles include/exclude; `None` when neither is given (everything is processed).
    pub fn new(
        include: Option<&MatchProperties>,
        exclude: Option<&MatchProperties>,
    ) -> Result<Option<Matcher>, String> {
        if include.is_none() && exclude.is_none() {
            return Ok(None);
        }
        Ok(Some(Matcher {
            include: include
                .map(|p| Properties::compile("include", p))
                .transpose()?,
            exclude: exclude
                .map(|p| Properties::compile("exclude", p))
                .transpose()?,
        }))
    }

    /// Whether the span is to be processed: matches include (if any), not exclude (if any).
    pub fn selects(
        &self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        span: &Span,
    ) -> bool {
        self.include
            .as_ref()
            .is_none_or(|p| p.matches(resource, scope, span))
            && !self
                .exclude
                .as_ref()
                .is_some_and(|p| p.matches(resource, scope, span))
    }
}

/// A value as text without allocating for strings: numbers and booleans as literals,
/// arrays and maps as JSON-like text, bytes as hex (`sextant_otlp_proto::attr::render`).
pub fn as_str(value: &AnyValue) -> Cow<'_, str> {
    match &value.value {
        Some(Value::StringValue(s)) => Cow::Borrowed(s.as_str()),
        _ => Cow::Owned(attr::render(value)),
    }
}

/// The index of `key` among `attrs`.
pub fn position(attrs: &[KeyValue], key: &str) -> Option<usize> {
    attrs.iter().position(|kv| kv.key == key)
}

/// A string `AnyValue`.
pub fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s)),
    }
}

/// Sets `key` to `value`: replaces an existing value, or appends.
pub fn upsert(attrs: &mut Vec<KeyValue>, key: &str, value: AnyValue) {
    match position(attrs, key) {
        Some(i) => attrs[i].value = Some(value),
        None => attrs.push(KeyValue {
            key: key.to_string(),
            value: Some(value),
            ..Default::default()
        }),
    }
}

/// Lower-case hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// SHA-256 of `data` (the attributes processor's `hash`).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// SHA-1 of `data` (the redaction processor's `hash_function: sha1`).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    use sha1::Digest as _;
    sha1::Sha1::digest(data).into()
}

/// MD5 of `data` (the redaction processor's `hash_function: md5`).
pub fn md5(data: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(data).into()
}

/// SHA3-256 of `data` (the redaction processor's `hash_function: sha3`).
pub fn sha3_256(data: &[u8]) -> [u8; 32] {
    use sha3::Digest as _;
    sha3::Sha3_256::digest(data).into()
}

/// The reference attributes processor's `hash` action on one value: SHA-256 hex of the
/// string's bytes, of a bool as one byte 1/0, of an int or double as its 8 little-endian bytes;
/// other types (arrays, maps, bytes, empty) become "".
pub fn hash_value(value: &AnyValue) -> String {
    let digest = match &value.value {
        Some(Value::StringValue(s)) => sha256(s.as_bytes()),
        Some(Value::BoolValue(b)) => sha256(&[u8::from(*b)]),
        Some(Value::IntValue(i)) => sha256(&i.to_le_bytes()),
        Some(Value::DoubleValue(d)) => sha256(&d.to_bits().to_le_bytes()),
        _ => return String::new(),
    };
    to_hex(&digest)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sextant_otlp_proto::attr::{kv_int, kv_str};
    use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans};

    /// A span with attributes, in a resource and scope (used by the other processors' tests).
    pub(crate) fn batch(service: &str, spans: Vec<Span>) -> Vec<ResourceSpans> {
        vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.2.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    pub(crate) fn span(name: &str, attrs: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.into(),
            kind: 2,
            attributes: attrs,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            ..Default::default()
        }
    }

    /// Deserializes like the config loader does (figment over YAML).
    pub(crate) fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        use figment::providers::{Format, Yaml};
        figment::Figment::from(Yaml::string(text))
            .extract::<T>()
            .map_err(|e| e.to_string())
    }

    fn props(yaml_json: &str) -> MatchProperties {
        serde_json::from_str(yaml_json).unwrap()
    }

    #[test]
    fn sha_vectors() {
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            to_hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            to_hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(to_hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(to_hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            to_hex(&md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
        assert_eq!(
            to_hex(&sha3_256(b"")),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
        assert_eq!(
            to_hex(&sha3_256(b"abc")),
            "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
        // Multi-block inputs (checked with Python's hashlib).
        assert_eq!(
            to_hex(&sha3_256(&[0xa3; 200])),
            "79f38adec5c20307a98ef76e8324afbfd46cfd81b22e3973c65fa1bd9de31787"
        );
        assert_eq!(
            to_hex(&md5(&[b'a'; 1000])),
            "cabe45dcc9ae5b66ba86600cca6b8ba8"
        );
        assert_eq!(
            to_hex(&sha256(&[b'a'; 1000])),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
        assert_eq!(
            to_hex(&sha1(&[b'a'; 1000])),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
        assert_eq!(
            to_hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            to_hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    #[test]
    fn strict_and_regexp_properties() {
        let rs = batch(
            "api",
            vec![span(
                "GET /users",
                vec![kv_str("http.method", "GET"), kv_int("code", 200)],
            )],
        );
        let res = rs[0].resource.as_ref();
        let scope = rs[0].scope_spans[0].scope.as_ref();
        let s = &rs[0].scope_spans[0].spans[0];

        let p = Properties::compile(
            "include",
            &props(r#"{"match_type":"strict","services":["api","web"],"attributes":[{"key":"code","value":200}]}"#),
        )
        .unwrap();
        assert!(p.matches(res, scope, s));
        let p = Properties::compile(
            "include",
            &props(r#"{"match_type":"strict","services":["api"],"attributes":[{"key":"code","value":"200"}]}"#),
        )
        .unwrap();
        assert!(!p.matches(res, scope, s), "strict matching compares types");
        let p = Properties::compile(
            "include",
            &props(r#"{"match_type":"regexp","span_names":["^GET "],"span_kinds":["SPAN_KIND_SERVER"],"libraries":[{"name":"http$","version":"^1\\."}]}"#),
        )
        .unwrap();
        assert!(p.matches(res, scope, s));
        let p = Properties::compile(
            "include",
            &props(r#"{"match_type":"regexp","span_kinds":["SPAN_KIND_CLIENT"]}"#),
        )
        .unwrap();
        assert!(!p.matches(res, scope, s));
        let p = Properties::compile(
            "include",
            &props(r#"{"match_type":"strict","resources":[{"key":"service.name"}],"attributes":[{"key":"missing"}]}"#),
        )
        .unwrap();
        assert!(!p.matches(res, scope, s), "all attributes must be present");
    }

    #[test]
    fn include_exclude_and_errors() {
        let inc = props(r#"{"match_type":"strict","services":["api"]}"#);
        let exc = props(r#"{"match_type":"regexp","span_names":["health"]}"#);
        let m = Matcher::new(Some(&inc), Some(&exc)).unwrap().unwrap();
        let rs = batch(
            "api",
            vec![span("GET /users", vec![]), span("GET /healthz", vec![])],
        );
        let res = rs[0].resource.as_ref();
        let spans = &rs[0].scope_spans[0].spans;
        assert!(m.selects(res, None, &spans[0]));
        assert!(!m.selects(res, None, &spans[1]));
        assert!(Matcher::new(None, None).unwrap().is_none());

        let err = Matcher::new(
            Some(&props(r#"{"match_type":"regexp","span_names":["ok","("]}"#)),
            None,
        )
        .unwrap_err();
        assert!(
            err.starts_with("include.span_names[1]: \"(\" is not a valid regex"),
            "{err}"
        );
        let err = Matcher::new(None, Some(&props(r#"{"services":["a"]}"#))).unwrap_err();
        assert!(err.starts_with("exclude.match_type"), "{err}");
        let err = Matcher::new(Some(&props(r#"{"match_type":"strict"}"#)), None).unwrap_err();
        assert!(err.starts_with("include: at least one"), "{err}");
        let err = Matcher::new(
            Some(&props(r#"{"match_type":"strict","span_kinds":["weird"]}"#)),
            None,
        )
        .unwrap_err();
        assert!(err.starts_with("include.span_kinds[0]"), "{err}");
        assert!(serde_json::from_str::<MatchProperties>(r#"{"match_type":"fuzzy"}"#).is_err());
        assert!(serde_json::from_str::<MatchProperties>(r#"{"log_bodies":["x"]}"#).is_err());
    }

    #[test]
    fn hash_value_like_reference() {
        let s = kv_str("k", "abc").value.unwrap();
        assert_eq!(
            hash_value(&s),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let i = kv_int("k", 1).value.unwrap();
        assert_eq!(hash_value(&i), to_hex(&sha256(&[1, 0, 0, 0, 0, 0, 0, 0])));
        assert_eq!(hash_value(&AnyValue { value: None }), "");
    }
}
