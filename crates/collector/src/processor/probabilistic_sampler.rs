//! The `probabilistic_sampler` processor: keeps `sampling_percentage` percent of traces, the
//! same traces in every collector that has the same settings.
//!
//! Modes, as the reference (`mode` unset: `hash_seed` when `hash_seed` is not 0, else
//! `proportional`):
//! * `hash_seed`: FNV-1a 32 over the seed's 4 little-endian bytes then the 16 trace id bytes;
//!   the low 14 bits are kept when below `uint32(percentage * 163.84)` (computed in 32-bit
//!   float, as the reference). Kept spans get `ot=th:…;rv:…` in their tracestate; a
//!   tracestate that already has `rv` or `th` is an error (see `fail_closed`).
//! * `proportional` / `equalizing`: OpenTelemetry consistent probability sampling: randomness
//!   is the tracestate's `ot=rv:` or the trace id's low 56 bits; the rejection threshold is
//!   `(1 - p) * 2^56` rounded to `sampling_precision` hex digits (proportional multiplies `p`
//!   by the arriving `th` probability); kept spans carry the new `ot=th:`.
//!
//! `sampling.priority` (int, double or numeric string) on a span: 0 drops it, > 0 keeps it.
//! Errors (unparseable tracestate, no randomness, an inconsistent arriving `th`) drop the span
//! when `fail_closed` (default true), else keep it. `attribute_source: record`,
//! `from_attribute` and `sampling_priority` are for logs: `record` is refused, the other two
//! are accepted and ignored (with a warning).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::{KeyValue, ResourceSpans, Span};

use super::SpanProcessor;
use crate::metrics::CollectorMetrics;

/// The sampler mode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    HashSeed,
    Proportional,
    Equalizing,
}

/// Where logs take randomness from (traces always use the trace id).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum AttributeSource {
    #[default]
    #[serde(rename = "traceID")]
    TraceId,
    #[serde(rename = "record")]
    Record,
}

/// The processor's settings, with the reference's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sampling_percentage: f32,
    pub hash_seed: u32,
    pub mode: Option<Mode>,
    pub fail_closed: bool,
    pub sampling_precision: u8,
    pub attribute_source: AttributeSource,
    pub from_attribute: String,
    pub sampling_priority: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sampling_percentage: 0.0,
            hash_seed: 0,
            mode: None,
            fail_closed: true,
            sampling_precision: 4,
            attribute_source: AttributeSource::TraceId,
            from_attribute: String::new(),
            sampling_priority: String::new(),
        }
    }
}

const NUM_HASH_BUCKETS: u32 = 0x4000;
const BIT_MASK_HASH_BUCKETS: u32 = NUM_HASH_BUCKETS - 1;
/// 2^56: the threshold that never samples (and the number of randomness values).
const MAX_ADJUSTED_COUNT: u64 = 1 << 56;
const NEVER: u64 = MAX_ADJUSTED_COUNT;
const ALWAYS: u64 = 0;
const NUM_HEX_DIGITS: i32 = 14;

/// FNV-1a 32 of the seed's 4 little-endian bytes followed by `data` (the reference's
/// `computeHash`).
pub fn fnv1a_seeded(data: &[u8], seed: u32) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in seed.to_le_bytes().iter().chain(data) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The trace id as the reference sees it: 16 bytes (shorter ids are zero-padded).
fn trace_id16(span: &Span) -> [u8; 16] {
    let mut id = [0u8; 16];
    let n = span.trace_id.len().min(16);
    id[..n].copy_from_slice(&span.trace_id[..n]);
    id
}

/// The 56-bit randomness the hash_seed mode derives from the hash (its top 14 bits are
/// `16383 - hash & 0x3fff`, so that `rnd >= threshold` is the legacy `hash < scaled`).
fn hash_randomness(id: &[u8], seed: u32) -> u64 {
    let hashed32 = fnv1a_seeded(id, seed);
    let hashed = u64::from(hashed32 & BIT_MASK_HASH_BUCKETS);
    let rprime14 = u64::from(NUM_HASH_BUCKETS - 1) - hashed;
    let unused18 = u64::from(hashed32 >> 14);
    let mixed28 = unused18 ^ (unused18 << 10);
    ((rprime14 << 42) | (mixed28 << 14) | hashed) & (MAX_ADJUSTED_COUNT - 1)
}

/// `math.Frexp`'s exponent of a positive finite normal number.
fn frexp_exp(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1022
}

/// The rejection threshold for probability `p` with `precision` hex digits (the reference's
/// `ProbabilityToThresholdWithPrecision`); `None` when `p` is out of range.
fn probability_to_threshold(p: f64, precision: i32) -> Option<u64> {
    if !(p >= 1.0 / MAX_ADJUSTED_COUNT as f64 && p <= 1.0) {
        return None;
    }
    if p == 1.0 {
        return Some(ALWAYS);
    }
    let exp_f = frexp_exp(p);
    let exp_r = frexp_exp(1.0 - p);
    let precision = NUM_HEX_DIGITS.min((precision + (-exp_f) / 4).max(precision + (-exp_r) / 4));
    let scaled = (p * MAX_ADJUSTED_COUNT as f64).round() as u64;
    let mut threshold = MAX_ADJUSTED_COUNT - scaled;
    let shift = 4 * (NUM_HEX_DIGITS - precision);
    if shift > 0 {
        let half = 1u64 << (shift - 1);
        threshold = ((threshold + half) >> shift) << shift;
    }
    Some(threshold)
}

fn threshold_probability(th: u64) -> f64 {
    (MAX_ADJUSTED_COUNT - th) as f64 / MAX_ADJUSTED_COUNT as f64
}

/// The `th:` value: 14 hex digits without trailing zeros ("0" for always).
#[cfg(test)]
fn tvalue(th: u64) -> String {
    if th == ALWAYS {
        return "0".into();
    }
    let s = format!("{th:014x}");
    s.trim_end_matches('0').to_string()
}

/// The `ot` part of a tracestate: `th`, `rv` and other sub-keys kept as they came.
#[derive(Debug, Default, PartialEq)]
struct OtState {
    th: Option<u64>,
    rv: Option<u64>,
}

fn parse_hex56(s: &str, exact: bool) -> Option<u64> {
    if s.is_empty() || s.len() > 14 || (exact && s.len() != 14) {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u64::from_str_radix(s, 16).ok()?;
    Some(v << (4 * (14 - s.len())))
}

/// Parses the `ot=` member of a W3C tracestate.
fn parse_ot(tracestate: &str) -> Result<OtState, String> {
    let mut st = OtState::default();
    for member in tracestate.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let Some((k, v)) = member.split_once('=') else {
            return Err(format!("tracestate member {member:?} has no '='"));
        };
        if k != "ot" {
            continue;
        }
        for kv in v.split(';') {
            let Some((sk, sv)) = kv.split_once(':') else {
                return Err(format!("tracestate ot value {kv:?} has no ':'"));
            };
            match sk {
                "th" => {
                    st.th =
                        Some(parse_hex56(sv, false).ok_or_else(|| {
                            format!("tracestate ot th {sv:?} is not 1-14 hex digits")
                        })?)
                }
                "rv" => {
                    st.rv =
                        Some(parse_hex56(sv, true).ok_or_else(|| {
                            format!("tracestate ot rv {sv:?} is not 14 hex digits")
                        })?)
                }
                _ => {}
            }
        }
    }
    Ok(st)
}

/// Writes `th` (None: removed) and `rv` (None: kept as it was) into the `ot=` member, which
/// moves to the front as W3C asks of a modified member; other members stay as they were.
fn write_ot(tracestate: &str, th: Option<u64>, rv: Option<u64>) -> String {
    use std::fmt::Write;
    let old_ot = tracestate
        .split(',')
        .map(str::trim)
        .find_map(|m| m.strip_prefix("ot="));
    let mut out = String::with_capacity(tracestate.len() + 40);
    out.push_str("ot=");
    let mut empty = true;
    let sep = |out: &mut String, empty: &mut bool| {
        if !*empty {
            out.push(';');
        }
        *empty = false;
    };
    if let Some(t) = th {
        sep(&mut out, &mut empty);
        out.push_str("th:");
        if t == ALWAYS {
            out.push('0');
        } else {
            let _ = write!(out, "{t:014x}");
            while out.ends_with('0') {
                out.pop();
            }
        }
    }
    let old_rv = old_ot.and_then(|v| v.split(';').find_map(|kv| kv.strip_prefix("rv:")));
    match (rv, old_rv) {
        (Some(r), _) => {
            sep(&mut out, &mut empty);
            let _ = write!(out, "rv:{r:014x}");
        }
        (None, Some(r)) => {
            sep(&mut out, &mut empty);
            out.push_str("rv:");
            out.push_str(r);
        }
        (None, None) => {}
    }
    for kv in old_ot
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter(|kv| !kv.is_empty() && !kv.starts_with("th:") && !kv.starts_with("rv:"))
    {
        sep(&mut out, &mut empty);
        out.push_str(kv);
    }
    if empty {
        out.clear();
    }
    for m in tracestate
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty() && !m.starts_with("ot="))
    {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(m);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Defer,
    Must,
    Never,
}

fn priority(attrs: &[KeyValue]) -> Priority {
    let Some(v) = attrs
        .iter()
        .find(|kv| kv.key == "sampling.priority")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
    else {
        return Priority::Defer;
    };
    let n = match v {
        Value::IntValue(i) => *i as f64,
        Value::DoubleValue(d) => *d,
        Value::StringValue(s) => match s.trim().parse::<f64>() {
            Ok(d) => d,
            Err(_) => return Priority::Defer,
        },
        _ => return Priority::Defer,
    };
    if n == 0.0 {
        Priority::Never
    } else if n > 0.0 {
        Priority::Must
    } else {
        Priority::Defer
    }
}

#[derive(Debug, Clone, Copy)]
enum Decider {
    Never,
    /// hash_seed mode, with its rejection threshold.
    Hash(u64),
    Equalizing(u64),
    Proportional {
        ratio: f64,
        precision: i32,
    },
}

struct Sampler {
    name: String,
    decider: Decider,
    seed: u32,
    fail_closed: bool,
    metrics: CollectorMetrics,
}

impl Sampler {
    /// Whether to keep the span; updates its tracestate when kept.
    fn keep(&self, span: &mut Span) -> bool {
        let prio = priority(&span.attributes);
        if prio == Priority::Never {
            return false;
        }
        let parsed = parse_ot(&span.trace_state);
        let hash_mode = matches!(self.decider, Decider::Hash(_));
        let mut set_rv = None;
        let mut err: Option<String> = None;
        let mut carrier = true;
        let mut arriving_th = None;
        let rnd: u64 = match &parsed {
            Err(e) => {
                carrier = false;
                err = Some(e.clone());
                if hash_mode {
                    hash_randomness(&trace_id16(span), self.seed)
                } else {
                    MAX_ADJUSTED_COUNT - 1
                }
            }
            Ok(st) => {
                arriving_th = st.th;
                if hash_mode {
                    let r = hash_randomness(&trace_id16(span), self.seed);
                    if st.rv.is_some() {
                        err = Some("tracestate has sampling randomness (rv), equalizing or proportional mode recommended".into());
                    } else if st.th.is_some() {
                        err = Some("tracestate has a sampling threshold (th), equalizing or proportional mode recommended".into());
                    } else {
                        set_rv = Some(r);
                    }
                    r
                } else if let Some(rv) = st.rv {
                    rv
                } else if span.trace_id.len() == 16 && span.trace_id.iter().any(|b| *b != 0) {
                    span.trace_id[9..16]
                        .iter()
                        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
                } else {
                    err = Some("missing randomness: invalid trace id".into());
                    MAX_ADJUSTED_COUNT - 1
                }
            }
        };
        if err.is_none() {
            if let Some(th) = arriving_th {
                if rnd < th {
                    arriving_th = None;
                    err =
                        Some("inconsistent arriving th: span should not have been sampled".into());
                }
            }
        }
        let mut threshold = match &err {
            Some(e) => {
                tracing::debug!(processor = %self.name, error = %e, "sampling error");
                if self.fail_closed {
                    NEVER
                } else {
                    ALWAYS
                }
            }
            None => match self.decider {
                Decider::Never => NEVER,
                Decider::Hash(t) | Decider::Equalizing(t) => t,
                Decider::Proportional { ratio, precision } => {
                    let incoming = arriving_th.map(threshold_probability).unwrap_or(1.0);
                    probability_to_threshold(incoming * ratio, precision).unwrap_or(NEVER)
                }
            },
        };
        if prio == Priority::Must {
            threshold = ALWAYS;
        }
        let sampled = rnd >= threshold;
        if sampled && carrier {
            // Never raise the arriving sampling probability (lower its threshold).
            let th = match arriving_th {
                Some(a) if a > threshold => a,
                _ => threshold,
            };
            let th = (th != NEVER).then_some(th);
            span.trace_state = write_ot(&span.trace_state, th, set_rv);
        }
        sampled
    }
}

impl SpanProcessor for Sampler {
    fn process(&self, spans: &mut Vec<ResourceSpans>) {
        let mut dropped = 0usize;
        for rs in spans.iter_mut() {
            for ss in rs.scope_spans.iter_mut() {
                let before = ss.spans.len();
                ss.spans.retain_mut(|s| self.keep(s));
                dropped += before - ss.spans.len();
            }
        }
        if dropped > 0 {
            self.metrics.dropped(&self.name, dropped);
        }
    }
}

/// Builds the processor.
pub fn build(
    name: &str,
    config: &Config,
    metrics: &CollectorMetrics,
) -> Result<Arc<dyn SpanProcessor>, String> {
    let pct = config.sampling_percentage;
    if !pct.is_finite() {
        return Err(format!("sampling_percentage: {pct} is not a number"));
    }
    if pct < 0.0 {
        return Err(format!("sampling_percentage: {pct} is negative"));
    }
    let ratio = f64::from(pct) / 100.0;
    if ratio > 0.0 && ratio < 1.0 / MAX_ADJUSTED_COUNT as f64 {
        return Err(format!(
            "sampling_percentage: {pct} is too small (the least is 2^-56)"
        ));
    }
    if config.sampling_precision == 0 || i32::from(config.sampling_precision) > NUM_HEX_DIGITS {
        return Err(format!(
            "sampling_precision: {} is out of range (1 to 14 hex digits)",
            config.sampling_precision
        ));
    }
    if config.attribute_source == AttributeSource::Record {
        return Err(
            "attribute_source: record is for logs; for traces the sampler always uses \
                    the trace id (traceID)"
                .into(),
        );
    }
    if !config.from_attribute.is_empty() || !config.sampling_priority.is_empty() {
        tracing::warn!(
            processor = name,
            "from_attribute and sampling_priority apply to logs only; ignored for traces"
        );
    }
    let pct = pct.min(100.0);
    let ratio = ratio.min(1.0);
    let mode = config.mode.unwrap_or(if config.hash_seed != 0 {
        Mode::HashSeed
    } else {
        Mode::Proportional
    });
    let precision = i32::from(config.sampling_precision);
    let decider = if pct == 0.0 {
        Decider::Never
    } else {
        match mode {
            Mode::HashSeed => {
                // As the reference: the product in 32-bit float, truncated.
                let scaled = (pct * (NUM_HASH_BUCKETS as f32 / 100.0)) as u32;
                if scaled == 0 {
                    tracing::warn!(
                        processor = name,
                        percent = pct,
                        "probability rounded to zero"
                    );
                    Decider::Never
                } else {
                    Decider::Hash(u64::from(NUM_HASH_BUCKETS - scaled) << 42)
                }
            }
            Mode::Equalizing => {
                Decider::Equalizing(probability_to_threshold(ratio, precision).unwrap_or(ALWAYS))
            }
            Mode::Proportional => Decider::Proportional { ratio, precision },
        }
    };
    tracing::debug!(
        processor = name,
        ?mode,
        percent = pct,
        "probabilistic sampler built"
    );
    Ok(Arc::new(Sampler {
        name: name.to_string(),
        decider,
        seed: config.hash_seed,
        fail_closed: config.fail_closed,
        metrics: metrics.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::count_spans;
    use crate::processor::matching::tests::{batch, span};
    use rand::Rng;
    use sextant_otlp_proto::attr::{kv_int, kv_str};

    fn sampler(json: &str) -> Arc<dyn SpanProcessor> {
        let c: Config = serde_json::from_str(json).unwrap();
        build(
            "probabilistic_sampler",
            &c,
            &CollectorMetrics::unregistered(),
        )
        .unwrap()
    }

    fn with_id(id: [u8; 16]) -> Span {
        let mut s = span("s", vec![]);
        s.trace_id = id.to_vec();
        s
    }

    fn kept_fraction(json: &str, n: usize) -> f64 {
        let p = sampler(json);
        let mut rng = rand::rng();
        let spans: Vec<Span> = (0..n).map(|_| with_id(rng.random())).collect();
        let mut b = batch("api", spans);
        p.process(&mut b);
        count_spans(&b) as f64 / n as f64
    }

    #[test]
    fn fnv_matches_published_vectors() {
        // FNV-1a 32 test vectors, with the seed bytes prepended as the reference does.
        let plain = |d: &[u8]| {
            let mut h: u32 = 0x811c9dc5;
            for b in d {
                h ^= u32::from(*b);
                h = h.wrapping_mul(0x0100_0193);
            }
            h
        };
        assert_eq!(plain(b""), 0x811c9dc5);
        assert_eq!(plain(b"a"), 0xe40c292c);
        assert_eq!(plain(b"foobar"), 0xbf9cf968);
        assert_eq!(fnv1a_seeded(b"foobar", 0), plain(b"\0\0\0\0foobar"));
        assert_eq!(fnv1a_seeded(b"x", 0x04030201), plain(b"\x01\x02\x03\x04x"));
    }

    #[test]
    fn hash_seed_decision_is_the_legacy_comparison() {
        let mut rng = rand::rng();
        for pct in [1.0f32, 10.0, 33.3, 50.0, 99.9] {
            let p = sampler(&format!(r#"{{"sampling_percentage":{pct},"hash_seed":7}}"#));
            let scaled = (pct * 163.84f32) as u32;
            for _ in 0..2000 {
                let id: [u8; 16] = rng.random();
                let want = fnv1a_seeded(&id, 7) & 0x3fff < scaled;
                let mut b = batch("api", vec![with_id(id)]);
                p.process(&mut b);
                assert_eq!(count_spans(&b) == 1, want, "pct {pct}");
                if want {
                    let ts = &b[0].scope_spans[0].spans[0].trace_state;
                    assert!(ts.starts_with("ot=th:") && ts.contains(";rv:"), "{ts}");
                }
            }
        }
    }

    /// Decisions published with the reference's tests (`TestHashingFunction`, 50%).
    #[test]
    fn hash_seed_matches_reference_vectors() {
        let vectors: &[(u32, &str, bool)] = &[
            (653, "474a03c76d75951a4b4c537ced8f1122", true),
            (563, "53a518291e91307e43cd8467bb06f986", true),
            (142, "a56a02f843b9bc6ee0b13889249e90e6", true),
            (904, "4e40762d3ee97a1c0932e4fa584f89a8", false),
            (445, "5224507db93db513f0ea2a4b4e0578c8", true),
            (38, "0c8717ced36216037af657e9d7f8b35b", true),
            (561, "2a8aa76c18d08e1e8be935541f9318c7", false),
            (757, "9e3d0f9481dc422cb613ea550897ae71", false),
            (22, "66a66c516ac22054673e5da5e6492545", false),
            (172, "84a1ce7bcea3e66194e72b4aa2694e31", true),
            (552, "a811a7def34ca4b98d8e320afd115fad", false),
            (546, "e3a345cc8dbb6f014bfa1edad3981820", true),
            (315, "a71effb50e28d27cbdc9892f3765b8c2", false),
            (790, "7629ecbea89398bfd9752a2f51c2c137", true),
            (555, "de6cdfb44d69e211f886c57120d7bda0", true),
            (666, "3ee60b013303bcfda06be89071b90bd1", true),
            (35, "855f493c5b5b1e2fcbc9993f8061eac8", false),
            (561, "0a0af00f63e098a39883705a423b0aa8", true),
            (936, "62dda24e4be24f5198e4d8dd4010c811", true),
            (460, "60c3b9a2dde734d71ba5cca7eb164bce", true),
        ];
        for (seed, hex, sampled) in vectors {
            let p = sampler(&format!(
                r#"{{"sampling_percentage":50,"hash_seed":{seed}}}"#
            ));
            let id = sextant_otlp_proto::TraceId::parse_hex(hex).unwrap();
            let mut b = batch("api", vec![with_id(id.0)]);
            p.process(&mut b);
            assert_eq!(count_spans(&b) == 1, *sampled, "seed {seed} trace {hex}");
        }
        // The thresholds the reference writes in hash_seed mode (14-bit rounding).
        for (pct, tv) in [
            (100.0f32, "0"),
            (75.0, "4"),
            (50.0, "8"),
            (10.0, "e668"),
            (100.0 / 3.0, "aaac"),
        ] {
            let p = sampler(&format!(
                r#"{{"sampling_percentage":{pct},"hash_seed":1,"mode":"hash_seed"}}"#
            ));
            let mut rng = rand::rng();
            let mut found = 0;
            while found < 5 {
                let mut b = batch("api", vec![with_id(rng.random())]);
                p.process(&mut b);
                if count_spans(&b) == 1 {
                    let ts = &b[0].scope_spans[0].spans[0].trace_state;
                    assert!(ts.starts_with(&format!("ot=th:{tv};rv:")), "{pct}: {ts}");
                    found += 1;
                }
            }
        }
    }

    #[test]
    fn same_seed_same_decision_other_seed_differs() {
        let mut rng = rand::rng();
        let ids: Vec<[u8; 16]> = (0..2000).map(|_| rng.random()).collect();
        let decide = |seed: u32| -> Vec<bool> {
            let p = sampler(&format!(
                r#"{{"sampling_percentage":50,"hash_seed":{seed}}}"#
            ));
            ids.iter()
                .map(|id| {
                    let mut b = batch("api", vec![with_id(*id)]);
                    p.process(&mut b);
                    count_spans(&b) == 1
                })
                .collect()
        };
        assert_eq!(decide(42), decide(42));
        let differ = decide(42)
            .iter()
            .zip(decide(43))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(
            differ > 500,
            "seeds 42 and 43 differ on only {differ} of 2000"
        );
    }

    #[test]
    fn kept_fraction_within_tolerance() {
        for mode in ["hash_seed", "proportional", "equalizing"] {
            for (pct, tol) in [(1.0, 0.002), (10.0, 0.006), (50.0, 0.01), (100.0, 0.0)] {
                let f = kept_fraction(
                    &format!(r#"{{"sampling_percentage":{pct},"hash_seed":5,"mode":"{mode}"}}"#),
                    100_000,
                );
                let want = pct / 100.0;
                assert!((f - want).abs() <= tol, "{mode} {pct}%: kept {f}");
            }
            assert_eq!(
                kept_fraction(
                    &format!(r#"{{"sampling_percentage":0,"mode":"{mode}"}}"#),
                    1000
                ),
                0.0
            );
        }
    }

    #[test]
    fn sampling_priority_overrides() {
        let p = sampler(r#"{"sampling_percentage":0}"#);
        let mut b = batch(
            "api",
            vec![
                span("a", vec![kv_int("sampling.priority", 1)]),
                span("b", vec![kv_str("sampling.priority", "2.5")]),
                span("c", vec![]),
            ],
        );
        p.process(&mut b);
        assert_eq!(count_spans(&b), 2);
        let p = sampler(r#"{"sampling_percentage":100}"#);
        let mut b = batch(
            "api",
            vec![
                span("a", vec![kv_int("sampling.priority", 0)]),
                span("b", vec![]),
            ],
        );
        p.process(&mut b);
        assert_eq!(count_spans(&b), 1);
    }

    #[test]
    fn proportional_uses_trace_id_randomness_and_tracestate() {
        let p = sampler(r#"{"sampling_percentage":50}"#);
        // randomness = low 56 bits of the trace id: 0x80.. is kept at 50%, 0x7f.. is not.
        let mut hi = [0u8; 16];
        hi[0] = 1;
        hi[9] = 0x80;
        let mut lo = [0u8; 16];
        lo[0] = 1;
        lo[9] = 0x7f;
        lo[10] = 0xff;
        let mut b = batch("api", vec![with_id(hi), with_id(lo)]);
        b[0].scope_spans[0].spans[0].trace_state = "vendor=x".into();
        p.process(&mut b);
        assert_eq!(count_spans(&b), 1);
        assert_eq!(b[0].scope_spans[0].spans[0].trace_state, "ot=th:8,vendor=x");

        // An arriving th of 50% and 50% more: 25%, threshold 0xc.
        let mut s = with_id(hi);
        s.trace_state = "ot=th:8;rv:d0000000000000".into();
        let mut b = batch("api", vec![s]);
        p.process(&mut b);
        assert_eq!(
            b[0].scope_spans[0].spans[0].trace_state,
            "ot=th:c;rv:d0000000000000"
        );

        // Invalid tracestate: fail_closed drops, fail_closed false keeps.
        let mut s = with_id(hi);
        s.trace_state = "ot=th:zz".into();
        let mut b = batch("api", vec![s.clone()]);
        p.process(&mut b);
        assert_eq!(count_spans(&b), 0);
        let open = sampler(r#"{"sampling_percentage":50,"fail_closed":false}"#);
        let mut b = batch("api", vec![s]);
        open.process(&mut b);
        assert_eq!(count_spans(&b), 1);
    }

    #[test]
    fn tracestate_rewrite_keeps_other_members() {
        assert_eq!(write_ot("", Some(1 << 55), None), "ot=th:8");
        assert_eq!(
            write_ot("a=1, ot=rv:abcdefabcdefab;x:y;th:4 ,b=2", Some(0), None),
            "ot=th:0;rv:abcdefabcdefab;x:y,a=1,b=2"
        );
        assert_eq!(write_ot("ot=th:8", None, None), "");
        assert_eq!(
            write_ot("ot=th:8,z=1", None, Some(5)),
            "ot=rv:00000000000005,z=1"
        );
        assert_eq!(
            parse_ot("ot=th:8;rv:abcdefabcdefab").unwrap().rv,
            Some(0xabcdefabcdefab)
        );
        assert!(parse_ot("ot=rv:abc").is_err());
        assert!(parse_ot("nonsense").is_err());
    }

    #[test]
    fn thresholds_like_the_spec() {
        assert_eq!(
            probability_to_threshold(0.5, 4).map(tvalue).as_deref(),
            Some("8")
        );
        assert_eq!(
            probability_to_threshold(0.25, 4).map(tvalue).as_deref(),
            Some("c")
        );
        assert_eq!(
            probability_to_threshold(0.1, 4).map(tvalue).as_deref(),
            Some("e666")
        );
        assert_eq!(
            probability_to_threshold(0.01, 4).map(tvalue).as_deref(),
            Some("fd70a")
        );
        assert_eq!(probability_to_threshold(1.0, 4), Some(0));
        assert_eq!(probability_to_threshold(0.0, 4), None);
    }

    #[test]
    fn config_checks() {
        let m = CollectorMetrics::unregistered();
        let err = |json: &str| {
            build("p", &serde_json::from_str(json).unwrap(), &m)
                .err()
                .unwrap()
        };
        assert!(err(r#"{"sampling_percentage":-1}"#).starts_with("sampling_percentage:"));
        assert!(err(r#"{"sampling_precision":15}"#).starts_with("sampling_precision:"));
        assert!(err(r#"{"attribute_source":"record"}"#).starts_with("attribute_source:"));
        assert!(serde_json::from_str::<Config>(r#"{"mode":"random"}"#).is_err());
        assert_eq!(Config::default().sampling_precision, 4);
        assert!(Config::default().fail_closed);
    }
    #[test]
    fn reference_yaml_examples() {
        use crate::processor::matching::tests::yaml;
        let c: Config = yaml("hash_seed: 22\nsampling_percentage: 15.3\n").unwrap();
        assert_eq!((c.hash_seed, c.sampling_percentage), (22, 15.3));
        assert!(build("p", &c, &CollectorMetrics::unregistered()).is_ok());
        let c: Config = yaml(
            "mode: equalizing\nsampling_percentage: 1\nsampling_precision: 6\nfail_closed: false\nattribute_source: traceID\n",
        )
        .unwrap();
        assert_eq!(c.mode, Some(Mode::Equalizing));
        assert!(!c.fail_closed);
        assert!(build("p", &c, &CollectorMetrics::unregistered()).is_ok());
        assert!(yaml::<Config>("mode: hash\n").is_err());
        assert!(yaml::<Config>("sampling_percent: 5\n").is_err());
    }
}
