//! The `redaction` processor: removes attributes that are not allowed and masks sensitive values,
//! on resource attributes, span attributes and span event attributes (as the reference).
//!
//! For each attribute, in the reference's order: a key in `ignored_keys` passes untouched; a key
//! not in `allowed_keys` is removed (unless `allow_all_keys: true`; the processor's own
//! `redaction.*` summary keys are always allowed); a value matching `allowed_values` passes; a
//! key matching `blocked_key_patterns` has its whole value masked; otherwise every substring
//! matching `blocked_values` is masked. Masking writes `****`, or the hex hash of the masked
//! text with `hash_function: md5`, `sha1` or `sha3` (SHA3-256), as the reference.
//! Values that are not strings are seen as "" unless `redact_all_types: true` (then as text).
//! `summary: debug` adds `redaction.{redacted,masked,allowed}.keys` (sorted, comma-separated)
//! and the `.count`s plus `redaction.ignored.count`; `info` only the counts; `silent` (the
//! default) nothing. Zero counts are not written.
//!
//! Sextant extra, `profile: default`: adds built-in `blocked_key_patterns` (keys ending in
//! authorization, cookie, set-cookie, password, passwd, pwd, token, access/refresh/id/auth
//! token, secret, client secret, api-key, api_key, apikey, x-api-key; case-insensitive, after
//! a `.`, `_` or `-` or at the start) and `blocked_values` (credit-card numbers: 13 to 19
//! digits with optional spaces or dashes that pass the Luhn check; e-mail addresses). With
//! `profile: default` and no `allowed_keys`, all keys are allowed (as `allow_all_keys: true`):
//! a profile is meant to mask, not to empty spans.
//!
//! Not supported: `url_sanitizer` and `db_sanitizer` (accepted only with `enabled: false`).

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::{Regex, RegexSet};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::{AnyValue, KeyValue, ResourceSpans};

use super::matching;
use super::SpanProcessor;
use crate::metrics::CollectorMetrics;

/// `summary` verbosity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Summary {
    Debug,
    Info,
    #[default]
    Silent,
}

/// `hash_function`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HashFunction {
    Md5,
    Sha1,
    Sha3,
}

/// Built-in rule sets (Sextant extra).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Default,
}

/// `url_sanitizer` and each `db_sanitizer.<system>`: accepted only when disabled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SanitizerToggle {
    pub enabled: bool,
    pub attributes: Vec<String>,
}

/// The processor's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub allow_all_keys: bool,
    pub allowed_keys: Vec<String>,
    pub ignored_keys: Vec<String>,
    pub blocked_values: Vec<String>,
    pub allowed_values: Vec<String>,
    pub blocked_key_patterns: Vec<String>,
    pub redact_all_types: bool,
    pub hash_function: Option<HashFunction>,
    pub summary: Summary,
    pub profile: Option<Profile>,
    pub url_sanitizer: Option<SanitizerToggle>,
    pub db_sanitizer: Option<BTreeMap<String, SanitizerToggle>>,
}

const PROFILE_KEY_PATTERNS: &[&str] = &[
    r"(?i)(^|[._-])(proxy-)?authorization$",
    r"(?i)(^|[._-])(set-)?cookie$",
    r"(?i)(^|[._-])(password|passwd|pwd)$",
    r"(?i)(^|[._-])((access|refresh|id|auth|bearer)[._-]?)?token$",
    r"(?i)(^|[._-])(client[._-]?)?secret$",
    r"(?i)(^|[._-])(x[._-])?api[._-]?key$",
];
// ASCII word boundaries and digits keep these on the fast (lazy DFA) engine.
const CARD_PATTERN: &str = r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)";
const EMAIL_PATTERN: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";

const REDACTED_KEYS: &str = "redaction.redacted.keys";
const REDACTED_COUNT: &str = "redaction.redacted.count";
const MASKED_KEYS: &str = "redaction.masked.keys";
const MASKED_COUNT: &str = "redaction.masked.count";
const ALLOWED_KEYS: &str = "redaction.allowed.keys";
const ALLOWED_COUNT: &str = "redaction.allowed.count";
const IGNORED_COUNT: &str = "redaction.ignored.count";

/// The Luhn checksum of the digits in `text`.
fn luhn(text: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    let mut n = 0;
    for c in text.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
        n += 1;
    }
    (13..=19).contains(&n) && sum.is_multiple_of(10)
}

#[derive(Debug)]
struct Blocked {
    re: Regex,
    /// Only matches that pass the Luhn check are masked (the profile's card numbers).
    luhn: bool,
}

struct Redaction {
    allow_all: bool,
    allowed: FxHashSet<String>,
    ignored: FxHashSet<String>,
    allowed_values: Option<RegexSet>,
    blocked_keys: Option<RegexSet>,
    blocked: Vec<Blocked>,
    blocked_set: Option<RegexSet>,
    redact_all_types: bool,
    hash: Option<HashFunction>,
    summary: Summary,
}

fn regex_set(path: &str, patterns: &[String]) -> Result<Option<RegexSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for (i, p) in patterns.iter().enumerate() {
        Regex::new(p).map_err(|e| format!("{path}[{i}]: {p:?} is not a valid regex: {e}"))?;
    }
    RegexSet::new(patterns)
        .map(Some)
        .map_err(|e| format!("{path}: {e}"))
}

impl Redaction {
    fn mask(&self, text: &str) -> String {
        match self.hash {
            Some(HashFunction::Sha1) => matching::to_hex(&matching::sha1(text.as_bytes())),
            Some(HashFunction::Md5) => matching::to_hex(&matching::md5(text.as_bytes())),
            Some(HashFunction::Sha3) => matching::to_hex(&matching::sha3_256(text.as_bytes())),
            None => "****".to_string(),
        }
    }

    /// Masks the blocked substrings of `text`; `None` when nothing is blocked.
    fn mask_values(&self, text: &str) -> Option<String> {
        let set = self.blocked_set.as_ref()?;
        let hits = set.matches(text);
        if !hits.matched_any() {
            return None;
        }
        let mut out: Option<String> = None;
        for i in hits.iter() {
            let b = &self.blocked[i];
            let cur = out.as_deref().unwrap_or(text);
            let mut changed = false;
            let replaced = b.re.replace_all(cur, |caps: &regex::Captures<'_>| {
                let m = caps.get(0).map(|m| m.as_str()).unwrap_or("");
                if b.luhn && !luhn(m) {
                    m.to_string()
                } else {
                    changed = true;
                    self.mask(m)
                }
            });
            if changed {
                out = Some(replaced.into_owned());
            }
        }
        out
    }

    fn value_text<'a>(&self, v: Option<&'a AnyValue>) -> std::borrow::Cow<'a, str> {
        match v.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => std::borrow::Cow::Borrowed(s.as_str()),
            Some(_) if self.redact_all_types => match v {
                Some(v) => matching::as_str(v),
                None => std::borrow::Cow::Borrowed(""),
            },
            _ => std::borrow::Cow::Borrowed(""),
        }
    }

    fn process_attrs(&self, attrs: &mut Vec<KeyValue>) {
        let debug = self.summary == Summary::Debug;
        let mut redacted: Vec<String> = Vec::new();
        let mut masked: Vec<String> = Vec::new();
        let mut allowed: Vec<String> = Vec::new();
        let mut ignored = 0usize;
        let mut n_redacted = 0usize;
        let mut n_masked = 0usize;
        let mut n_allowed = 0usize;
        attrs.retain_mut(|kv| {
            if self.ignored.contains(&kv.key) {
                ignored += 1;
                return true;
            }
            if !self.allow_all && !self.allowed.contains(&kv.key) {
                n_redacted += 1;
                if debug {
                    redacted.push(kv.key.clone());
                }
                return false;
            }
            let new = {
                let text = self.value_text(kv.value.as_ref());
                if self
                    .allowed_values
                    .as_ref()
                    .is_some_and(|s| s.is_match(&text))
                {
                    n_allowed += 1;
                    if debug {
                        allowed.push(kv.key.clone());
                    }
                    return true;
                }
                if self
                    .blocked_keys
                    .as_ref()
                    .is_some_and(|s| s.is_match(&kv.key))
                {
                    Some(self.mask(&text))
                } else {
                    self.mask_values(&text)
                }
            };
            if let Some(new) = new {
                n_masked += 1;
                if debug {
                    masked.push(kv.key.clone());
                }
                kv.value = Some(matching::string_value(new));
            }
            true
        });
        if self.summary == Summary::Silent {
            return;
        }
        add_summary(
            attrs,
            debug,
            redacted,
            n_redacted,
            REDACTED_KEYS,
            REDACTED_COUNT,
        );
        add_summary(attrs, debug, masked, n_masked, MASKED_KEYS, MASKED_COUNT);
        add_summary(
            attrs,
            debug,
            allowed,
            n_allowed,
            ALLOWED_KEYS,
            ALLOWED_COUNT,
        );
        add_summary(attrs, false, Vec::new(), ignored, "", IGNORED_COUNT);
    }
}

/// Adds (or merges into) the summary attributes, as the reference's `addMetaAttrs`.
fn add_summary(
    attrs: &mut Vec<KeyValue>,
    debug: bool,
    mut keys: Vec<String>,
    count: usize,
    keys_attr: &str,
    count_attr: &str,
) {
    if count == 0 {
        return;
    }
    if debug && !keys_attr.is_empty() {
        if let Some(existing) = sextant_otlp_proto::attr::get_str(attrs, keys_attr) {
            keys.extend(
                existing
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        keys.sort();
        matching::upsert(attrs, keys_attr, matching::string_value(keys.join(",")));
    }
    let mut total = count as i64;
    if let Some(Value::IntValue(i)) =
        sextant_otlp_proto::attr::get(attrs, count_attr).and_then(|v| v.value.as_ref())
    {
        total += i;
    }
    matching::upsert(
        attrs,
        count_attr,
        AnyValue {
            value: Some(Value::IntValue(total)),
        },
    );
}

impl SpanProcessor for Redaction {
    fn process(&self, spans: &mut Vec<ResourceSpans>) {
        for rs in spans.iter_mut() {
            if let Some(r) = rs.resource.as_mut() {
                self.process_attrs(&mut r.attributes);
            }
            for ss in rs.scope_spans.iter_mut() {
                for span in ss.spans.iter_mut() {
                    self.process_attrs(&mut span.attributes);
                    for ev in span.events.iter_mut() {
                        self.process_attrs(&mut ev.attributes);
                    }
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
    if config.url_sanitizer.as_ref().is_some_and(|u| u.enabled) {
        return Err("url_sanitizer.enabled: URL sanitization is not supported by Sextant".into());
    }
    if let Some((system, _)) = config
        .db_sanitizer
        .iter()
        .flatten()
        .find(|(_, t)| t.enabled)
    {
        return Err(format!(
            "db_sanitizer.{system}.enabled: database query sanitization is not supported by Sextant"
        ));
    }
    let mut key_patterns = config.blocked_key_patterns.clone();
    let mut blocked = Vec::new();
    for (i, p) in config.blocked_values.iter().enumerate() {
        let re = Regex::new(p)
            .map_err(|e| format!("blocked_values[{i}]: {p:?} is not a valid regex: {e}"))?;
        blocked.push(Blocked { re, luhn: false });
    }
    let profile = config.profile == Some(Profile::Default);
    if profile {
        key_patterns.extend(PROFILE_KEY_PATTERNS.iter().map(|s| s.to_string()));
        for (p, luhn) in [(CARD_PATTERN, true), (EMAIL_PATTERN, false)] {
            let re = Regex::new(p).map_err(|e| format!("profile: {e}"))?;
            blocked.push(Blocked { re, luhn });
        }
    }
    let blocked_set = if blocked.is_empty() {
        None
    } else {
        Some(
            RegexSet::new(blocked.iter().map(|b| b.re.as_str()))
                .map_err(|e| format!("blocked_values: {e}"))?,
        )
    };
    let blocked_keys = regex_set("blocked_key_patterns", &key_patterns)?;
    let allowed_values = regex_set("allowed_values", &config.allowed_values)?;
    let mut allowed: FxHashSet<String> = config.allowed_keys.iter().cloned().collect();
    for k in [
        REDACTED_KEYS,
        REDACTED_COUNT,
        MASKED_KEYS,
        MASKED_COUNT,
        IGNORED_COUNT,
    ] {
        allowed.insert(k.to_string());
    }
    let allow_all = config.allow_all_keys || (profile && config.allowed_keys.is_empty());
    if !allow_all && config.allowed_keys.is_empty() {
        tracing::warn!(
            processor = name,
            "allowed_keys is empty and allow_all_keys is false: every attribute is removed"
        );
    }
    Ok(Arc::new(Redaction {
        allow_all,
        allowed,
        ignored: config.ignored_keys.iter().cloned().collect(),
        allowed_values,
        blocked_keys,
        blocked,
        blocked_set,
        redact_all_types: config.redact_all_types,
        hash: config.hash_function,
        summary: config.summary,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::matching::tests::{batch, span};
    use sextant_otlp_proto::attr::{get, get_str, kv_int, kv_str};
    use sextant_otlp_proto::proto::span::Event;

    fn run(json: &str, attrs: Vec<KeyValue>) -> Vec<KeyValue> {
        let c: Config = serde_json::from_str(json).unwrap();
        let p = build("redaction", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut b = batch("api", vec![span("s", attrs)]);
        p.process(&mut b);
        b.remove(0).scope_spans.remove(0).spans.remove(0).attributes
    }

    #[test]
    fn allowed_keys_fail_closed_and_summary_debug() {
        let out = run(
            r#"{"allowed_keys":["description","id"],"ignored_keys":["safe"],
                "blocked_values":["4[0-9]{12}(?:[0-9]{3})?"],"summary":"debug"}"#,
            vec![
                kv_str("description", "card 4111111111111111 used"),
                kv_str("id", "7"),
                kv_str("birth_date", "1970"),
                kv_str("mothers_name", "x"),
                kv_str("safe", "4111111111111111"),
            ],
        );
        assert_eq!(get_str(&out, "description"), Some("card **** used"));
        assert_eq!(get_str(&out, "id"), Some("7"));
        assert!(get(&out, "birth_date").is_none());
        assert_eq!(get_str(&out, "safe"), Some("4111111111111111"));
        assert_eq!(
            get_str(&out, REDACTED_KEYS),
            Some("birth_date,mothers_name")
        );
        assert_eq!(get(&out, REDACTED_COUNT), kv_int("", 2).value.as_ref());
        assert_eq!(get_str(&out, MASKED_KEYS), Some("description"));
        assert_eq!(get(&out, MASKED_COUNT), kv_int("", 1).value.as_ref());
        assert_eq!(get(&out, IGNORED_COUNT), kv_int("", 1).value.as_ref());

        let out = run(r#"{}"#, vec![kv_str("a", "1")]);
        assert!(out.is_empty(), "no allowed_keys: everything removed");
    }

    #[test]
    fn key_patterns_allowed_values_hash_and_info() {
        let out = run(
            r#"{"allow_all_keys":true,"blocked_key_patterns":[".*token.*"],
                "blocked_values":["[a-z]+@example\\.com"],"allowed_values":["@mycompany\\.com$"],
                "hash_function":"sha1","summary":"info"}"#,
            vec![
                kv_str("auth_token", "abc"),
                kv_str("mail", "bob@example.com"),
                kv_str("owner", "ann@mycompany.com"),
                kv_int("n", 5),
            ],
        );
        assert_eq!(
            get_str(&out, "auth_token"),
            Some("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            get_str(&out, "mail"),
            Some(matching::to_hex(&matching::sha1(b"bob@example.com")).as_str())
        );
        assert_eq!(get_str(&out, "owner"), Some("ann@mycompany.com"));
        assert_eq!(get(&out, "n"), kv_int("", 5).value.as_ref());
        assert_eq!(get(&out, MASKED_COUNT), kv_int("", 2).value.as_ref());
        assert_eq!(get(&out, ALLOWED_COUNT), kv_int("", 1).value.as_ref());
        assert!(get(&out, MASKED_KEYS).is_none(), "info has no key lists");
    }

    #[test]
    fn hash_functions_md5_and_sha3() {
        let cfg = |h: &str| {
            format!(
                r#"{{"allow_all_keys":true,"blocked_key_patterns":["^pw$"],"hash_function":"{h}"}}"#
            )
        };
        let out = run(&cfg("md5"), vec![kv_str("pw", "abc")]);
        assert_eq!(
            get_str(&out, "pw"),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        let out = run(&cfg("sha3"), vec![kv_str("pw", "abc")]);
        assert_eq!(
            get_str(&out, "pw"),
            Some("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532")
        );
    }

    #[test]
    fn profile_default_masks_credentials_cards_and_emails() {
        let out = run(
            r#"{"profile":"default"}"#,
            vec![
                kv_str("http.request.header.authorization", "Bearer xyz"),
                kv_str("http.request.header.x-api-key", "k"),
                kv_str("db.password", "p"),
                kv_str("refresh_token", "r"),
                kv_str("Set-Cookie", "s=1"),
                kv_str("note", "paid with 4111 1111 1111 1111 by a@b.io"),
                kv_str("order.id", "1234567890123456"),
                kv_str("tokens.used", "12"),
                kv_str("http.route", "/users"),
            ],
        );
        for k in [
            "http.request.header.authorization",
            "http.request.header.x-api-key",
            "db.password",
            "refresh_token",
            "Set-Cookie",
        ] {
            assert_eq!(get_str(&out, k), Some("****"), "{k}");
        }
        assert_eq!(get_str(&out, "note"), Some("paid with **** by ****"));
        assert_eq!(
            get_str(&out, "order.id"),
            Some("1234567890123456"),
            "fails Luhn"
        );
        assert_eq!(get_str(&out, "tokens.used"), Some("12"));
        assert_eq!(get_str(&out, "http.route"), Some("/users"));
    }

    #[test]
    fn resource_and_event_attributes_too() {
        let c: Config =
            serde_json::from_str(r#"{"allow_all_keys":true,"blocked_key_patterns":["secret"]}"#)
                .unwrap();
        let p = build("redaction", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut s = span("s", vec![]);
        s.events.push(Event {
            name: "e".into(),
            attributes: vec![kv_str("secret", "x")],
            ..Default::default()
        });
        let mut b = batch("api", vec![s]);
        b[0].resource
            .as_mut()
            .unwrap()
            .attributes
            .push(kv_str("my.secret", "y"));
        p.process(&mut b);
        assert_eq!(
            get_str(&b[0].resource.as_ref().unwrap().attributes, "my.secret"),
            Some("****")
        );
        assert_eq!(
            get_str(&b[0].scope_spans[0].spans[0].events[0].attributes, "secret"),
            Some("****")
        );
    }

    #[test]
    fn config_errors() {
        let m = CollectorMetrics::unregistered();
        let err = |json: &str| {
            build("r", &serde_json::from_str(json).unwrap(), &m)
                .err()
                .unwrap()
        };
        assert!(err(r#"{"blocked_values":["ok","("]}"#).starts_with("blocked_values[1]: \"(\""));
        assert!(err(r#"{"blocked_key_patterns":["["]}"#).starts_with("blocked_key_patterns[0]"));
        assert!(serde_json::from_str::<Config>(r#"{"hash_function":"sha512"}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"summary":"loud"}"#).is_err());
        assert!(err(r#"{"url_sanitizer":{"enabled":true}}"#).starts_with("url_sanitizer.enabled"));
        assert!(err(r#"{"db_sanitizer":{"sql":{"enabled":true}}}"#)
            .starts_with("db_sanitizer.sql.enabled"));
        assert!(build(
            "r",
            &serde_json::from_str(r#"{"db_sanitizer":{"sql":{"enabled":false}}}"#).unwrap(),
            &m
        )
        .is_ok());
        assert!(serde_json::from_str::<Config>(r#"{"url_sanitizer":{"mode":1}}"#).is_err());
        assert!(luhn("4111 1111 1111 1111") && !luhn("4111 1111 1111 1112"));
    }
    #[test]
    fn reference_yaml_example() {
        let c: Config = crate::processor::matching::tests::yaml(
            r#"
allow_all_keys: false
allowed_keys:
  - description
  - group
  - id
  - name
ignored_keys:
  - safe_attribute
redact_all_types: true
blocked_key_patterns:
  - ".*token.*"
  - ".*api_key.*"
blocked_values:
  - "4[0-9]{12}(?:[0-9]{3})?" ## Visa credit card number
  - "(5[1-5][0-9]{14})"       ## MasterCard number
allowed_values:
  - ".+@mycompany.com"
hash_function: md5
summary: debug
url_sanitizer:
  enabled: false
  attributes: ["http.url", "url"]
"#,
        )
        .unwrap();
        assert_eq!(c.hash_function, Some(HashFunction::Md5));
        let p = build("redaction", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut b = batch(
            "api",
            vec![span(
                "s",
                vec![
                    kv_str("description", "visa 4111111111111111"),
                    kv_str("other", "x"),
                ],
            )],
        );
        p.process(&mut b);
        let a = &b[0].scope_spans[0].spans[0].attributes;
        assert_eq!(
            get_str(a, "description").map(|s| s.len()),
            Some("visa ".len() + 32),
            "md5 hex of the match"
        );
        assert!(get(a, "other").is_none());
        assert_eq!(get_str(a, REDACTED_KEYS), Some("other"));
    }
}
