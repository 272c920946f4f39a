//! The `attributes` processor: changes span attributes with the reference collector's actions
//! (`insert`, `update`, `upsert`, `delete`, `hash`, `extract`, `convert`), on the spans that
//! `include`/`exclude` select ([`super::matching`]). The action engine ([`Actions`]) is shared
//! with the `resource` processor.
//!
//! As the reference: actions run in the order written; `hash` is SHA-256 hex (the reference
//! moved from SHA-1 to SHA-256), over a string's bytes, a bool as one byte, an int or double as
//! its 8 little-endian bytes; `extract` upserts one attribute per named group when the
//! (unanchored) pattern matches a string value; `convert` leaves values it cannot convert
//! as they are; `pattern` on `delete`/`hash` selects keys by regex (unanchored).
//! Not supported: `from_context` (Sextant carries no client metadata down the pipeline), refused.

use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::{AnyValue, KeyValue, ResourceSpans};

use super::matching::{self, AttrValue, MatchProperties, Matcher};
use super::SpanProcessor;
use crate::metrics::CollectorMetrics;

/// The processor's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub actions: Vec<ActionConfig>,
    pub include: Option<MatchProperties>,
    pub exclude: Option<MatchProperties>,
}

/// What an action does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Insert,
    Update,
    Upsert,
    Delete,
    Hash,
    Extract,
    Convert,
}

impl ActionKind {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Insert => "insert",
            ActionKind::Update => "update",
            ActionKind::Upsert => "upsert",
            ActionKind::Delete => "delete",
            ActionKind::Hash => "hash",
            ActionKind::Extract => "extract",
            ActionKind::Convert => "convert",
        }
    }
}

/// The target type of `convert`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConvertedType {
    Int,
    Double,
    String,
}

/// One action, with the reference's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ActionConfig {
    pub key: String,
    pub value: Option<AttrValue>,
    pub from_attribute: Option<String>,
    pub from_context: Option<String>,
    pub pattern: Option<String>,
    pub action: Option<ActionKind>,
    pub converted_type: Option<ConvertedType>,
}

#[derive(Debug)]
enum Source {
    Value(AnyValue),
    From(String),
}

#[derive(Debug)]
enum Op {
    Insert(String, Source),
    Update(String, Source),
    Upsert(String, Source),
    Delete(Option<String>, Option<Regex>),
    Hash(Option<String>, Option<Regex>),
    Extract(String, Regex, Vec<String>),
    Convert(String, ConvertedType),
}

/// Compiled actions, applied to one attribute list at a time.
#[derive(Debug)]
pub struct Actions {
    ops: Vec<Op>,
}

fn compile_regex(path: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("{path}: {pattern:?} is not a valid regex: {e}"))
}

impl Actions {
    /// Compiles `actions` (errors name `actions[i].<key>`).
    pub fn compile(actions: &[ActionConfig]) -> Result<Actions, String> {
        if actions.is_empty() {
            return Err("actions: at least one action is required".into());
        }
        let mut ops = Vec::with_capacity(actions.len());
        for (i, a) in actions.iter().enumerate() {
            ops.push(Self::compile_one(i, a)?);
        }
        Ok(Actions { ops })
    }

    fn compile_one(i: usize, a: &ActionConfig) -> Result<Op, String> {
        let p = format!("actions[{i}]");
        let Some(kind) = a.action else {
            return Err(format!(
                "{p}.action: missing (insert, update, upsert, delete, hash, extract or convert)"
            ));
        };
        if a.from_context.is_some() {
            return Err(format!(
                "{p}.from_context: not supported: Sextant does not pass client metadata \
                 (request headers, auth) down the pipeline; use value or from_attribute"
            ));
        }
        let key = || -> Result<String, String> {
            if a.key.is_empty() {
                Err(format!("{p}.key: required for action {}", kind.as_str()))
            } else {
                Ok(a.key.clone())
            }
        };
        let no_pattern = || -> Result<(), String> {
            if a.pattern.is_some() {
                return Err(format!(
                    "{p}.pattern: only valid with actions delete, hash and extract"
                ));
            }
            Ok(())
        };
        let source = || -> Result<Source, String> {
            no_pattern()?;
            match (&a.value, &a.from_attribute) {
                (Some(v), None) => Ok(Source::Value(v.to_any())),
                (None, Some(f)) if !f.is_empty() => Ok(Source::From(f.clone())),
                (None, _) => Err(format!(
                    "{p}: one of value or from_attribute is required for this action"
                )),
                (Some(_), Some(_)) => Err(format!(
                    "{p}: value and from_attribute are mutually exclusive"
                )),
            }
        };
        let key_or_pattern = || -> Result<(Option<String>, Option<Regex>), String> {
            let re = match &a.pattern {
                Some(pat) => Some(compile_regex(&format!("{p}.pattern"), pat)?),
                None => None,
            };
            let k = (!a.key.is_empty()).then(|| a.key.clone());
            if k.is_none() && re.is_none() {
                return Err(format!(
                    "{p}: one of key or pattern is required for this action"
                ));
            }
            Ok((k, re))
        };
        Ok(match kind {
            ActionKind::Insert => Op::Insert(key()?, source()?),
            ActionKind::Update => Op::Update(key()?, source()?),
            ActionKind::Upsert => Op::Upsert(key()?, source()?),
            ActionKind::Delete => {
                let (k, re) = key_or_pattern()?;
                Op::Delete(k, re)
            }
            ActionKind::Hash => {
                let (k, re) = key_or_pattern()?;
                Op::Hash(k, re)
            }
            ActionKind::Extract => {
                let k = key()?;
                let Some(pat) = &a.pattern else {
                    return Err(format!("{p}.pattern: required for action extract"));
                };
                let re = compile_regex(&format!("{p}.pattern"), pat)?;
                let names: Vec<String> = re.capture_names().flatten().map(String::from).collect();
                if names.is_empty() {
                    return Err(format!(
                        "{p}.pattern: {pat:?} has no named groups like (?P<name>...) to extract"
                    ));
                }
                Op::Extract(k, re, names)
            }
            ActionKind::Convert => {
                no_pattern()?;
                let Some(to) = a.converted_type else {
                    return Err(format!(
                        "{p}.converted_type: required for action convert (int, double or string)"
                    ));
                };
                Op::Convert(key()?, to)
            }
        })
    }

    /// Applies every action, in order, to `attrs`.
    pub fn apply(&self, attrs: &mut Vec<KeyValue>) {
        for op in &self.ops {
            match op {
                Op::Insert(k, src) => {
                    if matching::position(attrs, k).is_none() {
                        if let Some(v) = source_value(attrs, src) {
                            attrs.push(KeyValue {
                                key: k.clone(),
                                value: Some(v),
                                ..Default::default()
                            });
                        }
                    }
                }
                Op::Update(k, src) => {
                    if let Some(i) = matching::position(attrs, k) {
                        if let Some(v) = source_value(attrs, src) {
                            attrs[i].value = Some(v);
                        }
                    }
                }
                Op::Upsert(k, src) => {
                    if let Some(v) = source_value(attrs, src) {
                        matching::upsert(attrs, k, v);
                    }
                }
                Op::Delete(k, re) => attrs.retain(|kv| !selected(kv, k, re)),
                Op::Hash(k, re) => {
                    for kv in attrs.iter_mut().filter(|kv| selected(kv, k, re)) {
                        let hashed = kv
                            .value
                            .as_ref()
                            .map(matching::hash_value)
                            .unwrap_or_default();
                        kv.value = Some(matching::string_value(hashed));
                    }
                }
                Op::Extract(k, re, names) => {
                    let Some(i) = matching::position(attrs, k) else {
                        continue;
                    };
                    let text = match attrs[i].value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s,
                        _ => continue,
                    };
                    let Some(caps) = re.captures(text) else {
                        continue;
                    };
                    let found: Vec<(String, String)> = names
                        .iter()
                        .filter_map(|n| caps.name(n).map(|m| (n.clone(), m.as_str().to_owned())))
                        .collect();
                    for (n, v) in found {
                        matching::upsert(attrs, &n, matching::string_value(v));
                    }
                }
                Op::Convert(k, to) => {
                    if let Some(i) = matching::position(attrs, k) {
                        if let Some(v) = attrs[i].value.as_mut() {
                            convert(v, *to);
                        }
                    }
                }
            }
        }
    }
}

fn selected(kv: &KeyValue, key: &Option<String>, re: &Option<Regex>) -> bool {
    key.as_deref() == Some(kv.key.as_str()) || re.as_ref().is_some_and(|r| r.is_match(&kv.key))
}

fn source_value(attrs: &[KeyValue], src: &Source) -> Option<AnyValue> {
    match src {
        Source::Value(v) => Some(v.clone()),
        Source::From(f) => attrs
            .iter()
            .find(|kv| &kv.key == f)
            .and_then(|kv| kv.value.clone()),
    }
}

/// Converts in place as the reference does; leaves values that do not convert unchanged.
fn convert(v: &mut AnyValue, to: ConvertedType) {
    let new = match (to, &v.value) {
        (ConvertedType::Int, Some(Value::IntValue(_))) => return,
        (ConvertedType::Int, Some(Value::DoubleValue(d))) => Value::IntValue(*d as i64),
        (ConvertedType::Int, Some(Value::BoolValue(b))) => Value::IntValue(i64::from(*b)),
        (ConvertedType::Int, Some(Value::StringValue(s))) => match s.trim().parse::<i64>() {
            Ok(i) => Value::IntValue(i),
            Err(_) => return,
        },
        (ConvertedType::Double, Some(Value::DoubleValue(_))) => return,
        (ConvertedType::Double, Some(Value::IntValue(i))) => Value::DoubleValue(*i as f64),
        (ConvertedType::Double, Some(Value::BoolValue(b))) => {
            Value::DoubleValue(if *b { 1.0 } else { 0.0 })
        }
        (ConvertedType::Double, Some(Value::StringValue(s))) => match s.trim().parse::<f64>() {
            Ok(d) => Value::DoubleValue(d),
            Err(_) => return,
        },
        (ConvertedType::String, Some(Value::StringValue(_))) => return,
        (ConvertedType::String, Some(_)) => Value::StringValue(sextant_otlp_proto::attr::render(v)),
        _ => return,
    };
    v.value = Some(new);
}

struct AttributesProcessor {
    actions: Actions,
    matcher: Option<Matcher>,
}

impl SpanProcessor for AttributesProcessor {
    fn process(&self, spans: &mut Vec<ResourceSpans>) {
        for rs in spans.iter_mut() {
            let resource = rs.resource.as_ref();
            for ss in rs.scope_spans.iter_mut() {
                let scope = ss.scope.as_ref();
                for span in ss.spans.iter_mut() {
                    if let Some(m) = &self.matcher {
                        if !m.selects(resource, scope, span) {
                            continue;
                        }
                    }
                    self.actions.apply(&mut span.attributes);
                }
            }
        }
    }
}

/// Builds the processor.
pub fn build(
    name: &str,
    config: &Config,
    _metrics: &CollectorMetrics,
) -> Result<Arc<dyn SpanProcessor>, String> {
    let actions = Actions::compile(&config.actions)?;
    let matcher = Matcher::new(config.include.as_ref(), config.exclude.as_ref())?;
    tracing::debug!(
        processor = name,
        actions = config.actions.len(),
        "attributes processor built"
    );
    Ok(Arc::new(AttributesProcessor { actions, matcher }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::matching::tests::{batch, span};
    use sextant_otlp_proto::attr::{self, kv_int, kv_str};

    fn cfg(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    fn run(json: &str, attrs: Vec<KeyValue>) -> Vec<KeyValue> {
        let p = build("attributes", &cfg(json), &CollectorMetrics::unregistered()).unwrap();
        let mut b = batch("api", vec![span("GET /", attrs)]);
        p.process(&mut b);
        b.remove(0).scope_spans.remove(0).spans.remove(0).attributes
    }

    #[test]
    fn insert_update_upsert_from_attribute() {
        let out = run(
            r#"{"actions":[
                {"key":"env","value":"prod","action":"insert"},
                {"key":"user","value":"x","action":"insert"},
                {"key":"missing","value":1,"action":"update"},
                {"key":"user","value":"redacted","action":"update"},
                {"key":"copy","from_attribute":"user","action":"upsert"},
                {"key":"n","value":3,"action":"upsert"}]}"#,
            vec![kv_str("user", "alice")],
        );
        assert_eq!(attr::get_str(&out, "env"), Some("prod"));
        assert_eq!(attr::get_str(&out, "user"), Some("redacted"));
        assert_eq!(attr::get_str(&out, "copy"), Some("redacted"));
        assert_eq!(attr::get(&out, "n"), kv_int("n", 3).value.as_ref());
        assert!(attr::get(&out, "missing").is_none());
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn delete_hash_with_pattern() {
        let out = run(
            r#"{"actions":[
                {"pattern":"^secret\\.","action":"delete"},
                {"key":"email","action":"hash"},
                {"pattern":"^id_","action":"hash"}]}"#,
            vec![
                kv_str("secret.a", "1"),
                kv_str("secret.b", "2"),
                kv_str("email", "abc"),
                kv_int("id_num", 1),
                kv_str("keep", "k"),
            ],
        );
        assert!(attr::get(&out, "secret.a").is_none() && attr::get(&out, "secret.b").is_none());
        assert_eq!(
            attr::get_str(&out, "email"),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(attr::get_str(&out, "id_num").map(str::len), Some(64));
        assert_eq!(attr::get_str(&out, "keep"), Some("k"));
    }

    #[test]
    fn extract_and_convert() {
        let out = run(
            r#"{"actions":[
                {"key":"http.url","pattern":"^/api/(?P<version>v\\d+)/(?P<resource>\\w+)","action":"extract"},
                {"key":"code","action":"convert","converted_type":"int"},
                {"key":"ratio","action":"convert","converted_type":"double"},
                {"key":"bad","action":"convert","converted_type":"int"},
                {"key":"flag","action":"convert","converted_type":"string"}]}"#,
            vec![
                kv_str("http.url", "/api/v2/users?x=1"),
                kv_str("code", "404"),
                kv_int("ratio", 2),
                kv_str("bad", "12abc"),
                KeyValue {
                    key: "flag".into(),
                    value: Some(AnyValue {
                        value: Some(Value::BoolValue(true)),
                    }),
                    ..Default::default()
                },
            ],
        );
        assert_eq!(attr::get_str(&out, "version"), Some("v2"));
        assert_eq!(attr::get_str(&out, "resource"), Some("users"));
        assert_eq!(attr::get(&out, "code"), kv_int("code", 404).value.as_ref());
        assert_eq!(
            attr::get(&out, "ratio").and_then(|v| v.value.clone()),
            Some(Value::DoubleValue(2.0))
        );
        assert_eq!(attr::get_str(&out, "bad"), Some("12abc"));
        assert_eq!(attr::get_str(&out, "flag"), Some("true"));
    }

    #[test]
    fn include_exclude_select_spans() {
        let c = cfg(
            r#"{"actions":[{"key":"touched","value":true,"action":"insert"}],
                "include":{"match_type":"regexp","span_names":["^GET"]},
                "exclude":{"match_type":"strict","attributes":[{"key":"skip","value":true}]}}"#,
        );
        let p = build("attributes/x", &c, &CollectorMetrics::unregistered()).unwrap();
        let skip = KeyValue {
            key: "skip".into(),
            value: Some(AnyValue {
                value: Some(Value::BoolValue(true)),
            }),
            ..Default::default()
        };
        let mut b = batch(
            "api",
            vec![
                span("GET /a", vec![]),
                span("POST /a", vec![]),
                span("GET /b", vec![skip]),
            ],
        );
        p.process(&mut b);
        let touched: Vec<bool> = b[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| attr::get(&s.attributes, "touched").is_some())
            .collect();
        assert_eq!(touched, vec![true, false, false]);
    }

    #[test]
    fn config_errors_name_the_key() {
        let m = CollectorMetrics::unregistered();
        let err = |json: &str| build("a", &cfg(json), &m).err().unwrap();
        assert!(err(r#"{"actions":[]}"#).starts_with("actions:"));
        assert!(err(r#"{"actions":[{"key":"a","value":1,"action":"insert"},{"key":"b","pattern":"(","action":"delete"}]}"#)
            .starts_with("actions[1].pattern: \"(\" is not a valid regex"));
        assert!(err(r#"{"actions":[{"key":"a","action":"insert"}]}"#)
            .starts_with("actions[0]: one of value"));
        assert!(
            err(r#"{"actions":[{"key":"a","from_context":"metadata.x","action":"insert"}]}"#)
                .starts_with("actions[0].from_context: not supported")
        );
        assert!(
            err(r#"{"actions":[{"key":"a","pattern":"^x$","action":"extract"}]}"#)
                .starts_with("actions[0].pattern: \"^x$\" has no named groups")
        );
        assert!(err(r#"{"actions":[{"key":"a","action":"convert"}]}"#)
            .starts_with("actions[0].converted_type"));
        assert!(err(r#"{"actions":[{"action":"delete"}]}"#)
            .starts_with("actions[0]: one of key or pattern"));
        assert!(err(r#"{"actions":[{"key":"a"}]}"#).starts_with("actions[0].action: missing"));
        assert!(
            serde_json::from_str::<Config>(r#"{"actions":[{"key":"a","action":"rename"}]}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Config>(r#"{"actions":[],"bogus":1}"#).is_err());
    }
    #[test]
    fn reference_yaml_example() {
        let c: Config = crate::processor::matching::tests::yaml(
            r#"
actions:
  - key: db.table
    action: delete
  - key: redacted_span
    value: true
    action: upsert
  - key: copy_key
    from_attribute: key_original
    action: update
  - key: account_id
    value: 2245
    action: insert
  - key: ratio
    value: 0.5
    action: insert
  - key: account_email
    action: hash
  - key: http.status_code
    action: convert
    converted_type: int
  - pattern: ^secret
    action: delete
include:
  match_type: regexp
  services: ["auth.*"]
  attributes:
    - key: env
      value: "^prod"
exclude:
  match_type: strict
  span_names: ["login"]
"#,
        )
        .unwrap();
        assert_eq!(c.actions[3].value, Some(AttrValue::Int(2245)));
        assert_eq!(c.actions[4].value, Some(AttrValue::Double(0.5)));
        assert_eq!(c.actions[1].value, Some(AttrValue::Bool(true)));
        let p = build("attributes/x", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut b = batch(
            "auth-svc",
            vec![
                span(
                    "check",
                    vec![
                        kv_str("env", "production"),
                        kv_str("db.table", "t"),
                        kv_str("http.status_code", "201"),
                    ],
                ),
                span(
                    "login",
                    vec![kv_str("env", "production"), kv_str("db.table", "t")],
                ),
            ],
        );
        p.process(&mut b);
        let s = &b[0].scope_spans[0].spans;
        assert!(attr::get(&s[0].attributes, "db.table").is_none());
        assert_eq!(
            attr::get(&s[0].attributes, "account_id"),
            kv_int("", 2245).value.as_ref()
        );
        assert_eq!(
            attr::get(&s[0].attributes, "http.status_code"),
            kv_int("", 201).value.as_ref()
        );
        assert_eq!(
            attr::get_str(&s[1].attributes, "db.table"),
            Some("t"),
            "excluded"
        );
    }
}
