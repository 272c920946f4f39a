//! Policies, compiled from their config: attribute and trace-state conditions become bits
//! ([`Leaves`]) evaluated once per span as spans arrive, so that a decision only combines
//! per-trace facts ([`Summary`]) and never looks at the spans again.

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::time::Instant;

use super::config::{CompositeConfig, PolicyConfig, PolicyType};
use super::walk::{set_bit, Bits, Summary, TraceKey, MAX_CONDITIONS};
use super::walk::{STATUS_ERROR, STATUS_OK, STATUS_UNSET};

/// A scalar attribute value, borrowed from the encoded span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Other,
}

impl AttrValue<'_> {
    /// Whether the value is a number (or numeric text) above 0.
    pub fn is_positive(&self) -> bool {
        match *self {
            AttrValue::Int(i) => i > 0,
            AttrValue::Double(d) => d > 0.0,
            AttrValue::Str(s) => s.trim().parse::<f64>().is_ok_and(|v| v > 0.0),
            _ => false,
        }
    }
}

enum Cond {
    Str {
        exact: FxHashSet<String>,
        regex: Option<regex::RegexSet>,
    },
    Num {
        min: i64,
        max: i64,
    },
    Bool(bool),
}

impl Cond {
    fn matches(&self, v: AttrValue<'_>) -> bool {
        match (self, v) {
            (Cond::Str { exact, regex }, AttrValue::Str(s)) if !s.is_empty() => match regex {
                Some(set) => set.is_match(s),
                None => exact.contains(s),
            },
            (Cond::Num { min, max }, AttrValue::Int(i)) => *min <= i && i <= *max,
            (Cond::Num { min, max }, AttrValue::Double(d)) => *min as f64 <= d && d <= *max as f64,
            (Cond::Bool(want), AttrValue::Bool(b)) => *want == b,
            _ => false,
        }
    }
}

/// The conditions evaluated span by span on arrival, each one bit of a trace's [`Bits`].
#[derive(Default)]
pub struct Leaves {
    by_key: FxHashMap<String, Vec<(u16, usize)>>,
    conds: Vec<Cond>,
    trace_states: Vec<(String, FxHashSet<String>, u16)>,
    count: usize,
}

impl Leaves {
    /// Sets the bits of the conditions on `key` that `value` meets.
    pub fn attr(&self, key: &str, value: AttrValue<'_>, bits: &mut Bits) {
        if let Some(ids) = self.by_key.get(key) {
            for &(bit, cond) in ids {
                if self.conds[cond].matches(value) {
                    set_bit(bits, bit);
                }
            }
        }
    }

    pub fn has_trace_state(&self) -> bool {
        !self.trace_states.is_empty()
    }

    /// Sets the bits of the trace-state conditions a W3C `tracestate` meets.
    pub fn trace_state(&self, ts: &str, bits: &mut Bits) {
        for entry in ts.split(',') {
            let Some((k, v)) = entry.trim().split_once('=') else {
                continue;
            };
            for (key, values, bit) in &self.trace_states {
                if k == key && values.contains(v) {
                    set_bit(bits, *bit);
                }
            }
        }
    }

    fn add(&mut self, key: &str, cond: Cond, path: &str) -> Result<u16, String> {
        if self.count >= MAX_CONDITIONS {
            return Err(format!(
                "{path}: more than {MAX_CONDITIONS} attribute/trace_state policies in one processor"
            ));
        }
        let bit = self.count as u16;
        self.count += 1;
        self.conds.push(cond);
        self.by_key
            .entry(key.to_string())
            .or_default()
            .push((bit, self.conds.len() - 1));
        Ok(bit)
    }
}

/// A policy's vote, as the reference names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sampled,
    NotSampled,
    InvertSampled,
    InvertNotSampled,
    Dropped,
}

/// What a decision looks at.
pub struct TraceView<'a> {
    pub id: &'a TraceKey,
    pub summary: &'a Summary,
    pub bytes: usize,
    pub now: Instant,
}

struct CompositeSub {
    name: String,
    node: Node,
    allocated: i64,
    used: i64,
}

enum Node {
    Always,
    Latency {
        threshold: i64,
        upper: i64,
    },
    Status(u8),
    Attr {
        bit: u16,
        invert: bool,
    },
    TraceState(u16),
    TraceFlags,
    Probabilistic {
        salt: Vec<u8>,
        threshold: u64,
    },
    RateLimiting {
        per_second: i64,
        second: u64,
        used: i64,
    },
    BytesLimiting {
        rate: f64,
        burst: f64,
        tokens: f64,
        last: Option<Instant>,
    },
    SpanCount {
        min: i64,
        max: i64,
    },
    And(Vec<Node>),
    Not(Box<Node>),
    Drop(Vec<Node>),
    Composite {
        max_total: i64,
        subs: Vec<CompositeSub>,
        second: u64,
    },
}

/// All policies of a processor, with their rate-limiting state.
pub struct Policies {
    top: Vec<(String, Node)>,
    sample_on_first_match: bool,
    epoch: Instant,
}

/// The reference's salt when `hash_salt` is empty.
const DEFAULT_SALT: &str = "default-hash-seed";

fn fnv1a(salt: &[u8], id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.iter().chain(id) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Compiles `policies` (path prefix `policies`), registering their conditions in `leaves`.
pub fn compile(
    policies: &[PolicyConfig],
    sample_on_first_match: bool,
    leaves: &mut Leaves,
) -> Result<Policies, String> {
    let mut names = FxHashSet::default();
    let mut top = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let path = format!("policies[{i}]");
        if p.name.is_empty() {
            return Err(format!("{path}.name: every policy needs a name"));
        }
        if !names.insert(p.name.as_str()) {
            return Err(format!("{path}.name: duplicate policy name {:?}", p.name));
        }
        top.push((p.name.clone(), node(p, &path, Level::Top, leaves)?));
    }
    Ok(Policies {
        top,
        sample_on_first_match,
        epoch: Instant::now(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    /// Under `composite`: `and` allowed, nothing else compound.
    CompositeSub,
    /// Under `and`, `drop`, `not`: leaves only.
    Leaf,
}

fn node(p: &PolicyConfig, path: &str, level: Level, leaves: &mut Leaves) -> Result<Node, String> {
    let t = p.policy_type;
    let compound = matches!(
        t,
        PolicyType::And | PolicyType::Drop | PolicyType::Not | PolicyType::Composite
    );
    if compound && !(level == Level::Top || (level == Level::CompositeSub && t == PolicyType::And))
    {
        return Err(format!(
            "{path}.type: a {} policy cannot be nested here (sub-policies of and/drop/not take \
             simple policies; composite sub-policies take simple policies and and)",
            t.as_str()
        ));
    }
    Ok(match t {
        PolicyType::AlwaysSample => Node::Always,
        PolicyType::Latency => {
            let c = p.latency.clone().unwrap_or_default();
            if c.threshold_ms < 0 || c.upper_threshold_ms < 0 {
                return Err(format!("{path}.latency: thresholds cannot be negative"));
            }
            if c.upper_threshold_ms != 0 && c.upper_threshold_ms < c.threshold_ms {
                return Err(format!(
                    "{path}.latency.upper_threshold_ms: {} is below threshold_ms {}",
                    c.upper_threshold_ms, c.threshold_ms
                ));
            }
            Node::Latency {
                threshold: c.threshold_ms,
                upper: c.upper_threshold_ms,
            }
        }
        PolicyType::StatusCode => {
            let c = p.status_code.clone().unwrap_or_default();
            if c.status_codes.is_empty() {
                return Err(format!(
                    "{path}.status_code.status_codes: expected at least one of OK, ERROR, UNSET"
                ));
            }
            let mut mask = 0;
            for (j, code) in c.status_codes.iter().enumerate() {
                mask |= match code.as_str() {
                    "OK" => STATUS_OK,
                    "ERROR" => STATUS_ERROR,
                    "UNSET" => STATUS_UNSET,
                    other => {
                        return Err(format!(
                            "{path}.status_code.status_codes[{j}]: unknown status code {other:?} \
                             (expected OK, ERROR or UNSET)"
                        ))
                    }
                };
            }
            Node::Status(mask)
        }
        PolicyType::StringAttribute => {
            let c = p.string_attribute.clone().unwrap_or_default();
            let sub = format!("{path}.string_attribute");
            if c.key.is_empty() {
                return Err(format!("{sub}.key: must not be empty"));
            }
            if c.values.is_empty() {
                return Err(format!("{sub}.values: expected at least one value"));
            }
            let regex = if c.enabled_regex_matching {
                for (j, v) in c.values.iter().enumerate() {
                    if let Err(e) = regex::Regex::new(v) {
                        return Err(format!(
                            "{sub}.values[{j}]: {v:?} is not a valid regex: {e}"
                        ));
                    }
                }
                Some(
                    regex::RegexSet::new(&c.values)
                        .map_err(|e| format!("{sub}.values: cannot compile the regexes: {e}"))?,
                )
            } else {
                None
            };
            let exact = c.values.iter().cloned().collect();
            let bit = leaves.add(&c.key, Cond::Str { exact, regex }, &sub)?;
            Node::Attr {
                bit,
                invert: c.invert_match,
            }
        }
        PolicyType::NumericAttribute => {
            let c = p.numeric_attribute.clone().unwrap_or_default();
            let sub = format!("{path}.numeric_attribute");
            if c.key.is_empty() {
                return Err(format!("{sub}.key: must not be empty"));
            }
            if c.min_value.is_none() && c.max_value.is_none() {
                return Err(format!("{sub}: set min_value, max_value or both"));
            }
            let min = c.min_value.unwrap_or(i64::MIN);
            let max = c.max_value.unwrap_or(i64::MAX);
            if max < min {
                return Err(format!("{sub}.max_value: {max} is below min_value {min}"));
            }
            let bit = leaves.add(&c.key, Cond::Num { min, max }, &sub)?;
            Node::Attr {
                bit,
                invert: c.invert_match,
            }
        }
        PolicyType::BooleanAttribute => {
            let c = p.boolean_attribute.clone().unwrap_or_default();
            let sub = format!("{path}.boolean_attribute");
            if c.key.is_empty() {
                return Err(format!("{sub}.key: must not be empty"));
            }
            let bit = leaves.add(&c.key, Cond::Bool(c.value), &sub)?;
            Node::Attr {
                bit,
                invert: c.invert_match,
            }
        }
        PolicyType::TraceState => {
            let c = p.trace_state.clone().unwrap_or_default();
            let sub = format!("{path}.trace_state");
            if c.key.is_empty() {
                return Err(format!("{sub}.key: must not be empty"));
            }
            if c.values.is_empty() {
                return Err(format!("{sub}.values: expected at least one value"));
            }
            if leaves.count >= MAX_CONDITIONS {
                return Err(format!(
                    "{sub}: more than {MAX_CONDITIONS} attribute/trace_state policies"
                ));
            }
            let bit = leaves.count as u16;
            leaves.count += 1;
            leaves
                .trace_states
                .push((c.key.clone(), c.values.iter().cloned().collect(), bit));
            Node::TraceState(bit)
        }
        PolicyType::TraceFlags => Node::TraceFlags,
        PolicyType::Probabilistic => {
            let c = p.probabilistic.clone().unwrap_or_default();
            let pct = c.sampling_percentage;
            if !pct.is_finite() || pct < 0.0 {
                return Err(format!(
                    "{path}.probabilistic.sampling_percentage: {pct} is not a percentage >= 0"
                ));
            }
            let ratio = pct / 100.0;
            let threshold = if ratio >= 1.0 {
                u64::MAX
            } else {
                (ratio * u64::MAX as f64) as u64
            };
            let salt = if c.hash_salt.is_empty() {
                DEFAULT_SALT.as_bytes().to_vec()
            } else {
                c.hash_salt.as_bytes().to_vec()
            };
            Node::Probabilistic { salt, threshold }
        }
        PolicyType::RateLimiting => {
            let c = p.rate_limiting.clone().unwrap_or_default();
            if c.spans_per_second <= 0 {
                return Err(format!(
                    "{path}.rate_limiting.spans_per_second: must be greater than 0"
                ));
            }
            Node::RateLimiting {
                per_second: c.spans_per_second,
                second: u64::MAX,
                used: 0,
            }
        }
        PolicyType::BytesLimiting => {
            let c = p.bytes_limiting.clone().unwrap_or_default();
            if c.bytes_per_second <= 0 {
                return Err(format!(
                    "{path}.bytes_limiting.bytes_per_second: must be greater than 0"
                ));
            }
            if c.burst_capacity < 0 {
                return Err(format!(
                    "{path}.bytes_limiting.burst_capacity: cannot be negative"
                ));
            }
            let burst = if c.burst_capacity == 0 {
                2.0 * c.bytes_per_second as f64
            } else {
                c.burst_capacity as f64
            };
            Node::BytesLimiting {
                rate: c.bytes_per_second as f64,
                burst,
                tokens: burst,
                last: None,
            }
        }
        PolicyType::SpanCount => {
            let c = p.span_count.clone().unwrap_or_default();
            if c.min_spans < 0 || c.max_spans < 0 {
                return Err(format!("{path}.span_count: limits cannot be negative"));
            }
            if c.max_spans != 0 && c.max_spans < c.min_spans {
                return Err(format!(
                    "{path}.span_count.max_spans: {} is below min_spans {}",
                    c.max_spans, c.min_spans
                ));
            }
            Node::SpanCount {
                min: c.min_spans,
                max: c.max_spans,
            }
        }
        PolicyType::OttlCondition => {
            return Err(format!(
                "{path}.type: ottl_condition policies are not supported by Sextant (OTTL is not \
                 implemented); express the condition with string_attribute, numeric_attribute, \
                 boolean_attribute, status_code or and/drop policies"
            ))
        }
        PolicyType::And => {
            let c = p.and.clone().unwrap_or_default();
            if c.and_sub_policy.is_empty() {
                return Err(format!(
                    "{path}.and.and_sub_policy: expected at least one policy"
                ));
            }
            let mut subs = Vec::new();
            for (j, s) in c.and_sub_policy.iter().enumerate() {
                subs.push(node(
                    s,
                    &format!("{path}.and.and_sub_policy[{j}]"),
                    Level::Leaf,
                    leaves,
                )?);
            }
            Node::And(subs)
        }
        PolicyType::Drop => {
            let c = p.drop.clone().unwrap_or_default();
            if c.drop_sub_policy.is_empty() {
                return Err(format!(
                    "{path}.drop.drop_sub_policy: expected at least one policy"
                ));
            }
            let mut subs = Vec::new();
            for (j, s) in c.drop_sub_policy.iter().enumerate() {
                subs.push(node(
                    s,
                    &format!("{path}.drop.drop_sub_policy[{j}]"),
                    Level::Leaf,
                    leaves,
                )?);
            }
            Node::Drop(subs)
        }
        PolicyType::Not => {
            let c = p.not.clone().unwrap_or_default();
            Node::Not(Box::new(node(
                &c.not_sub_policy,
                &format!("{path}.not.not_sub_policy"),
                Level::Leaf,
                leaves,
            )?))
        }
        PolicyType::Composite => composite(
            &p.composite.clone().unwrap_or_default(),
            &format!("{path}.composite"),
            leaves,
        )?,
    })
}

fn composite(c: &CompositeConfig, path: &str, leaves: &mut Leaves) -> Result<Node, String> {
    if c.max_total_spans_per_second <= 0 {
        return Err(format!(
            "{path}.max_total_spans_per_second: must be greater than 0"
        ));
    }
    if c.composite_sub_policy.is_empty() {
        return Err(format!(
            "{path}.composite_sub_policy: expected at least one policy"
        ));
    }
    let total = c.max_total_spans_per_second;
    let n = c.composite_sub_policy.len() as i64;
    let mut names = FxHashSet::default();
    for (j, s) in c.composite_sub_policy.iter().enumerate() {
        if !names.insert(s.name.as_str()) {
            return Err(format!(
                "{path}.composite_sub_policy[{j}].name: duplicate policy name {:?}",
                s.name
            ));
        }
    }
    let mut alloc: FxHashMap<&str, i64> = FxHashMap::default();
    let mut percent_sum = 0;
    for (j, a) in c.rate_allocation.iter().enumerate() {
        if !names.contains(a.policy.as_str()) {
            return Err(format!(
                "{path}.rate_allocation[{j}].policy: {:?} is not one of composite_sub_policy",
                a.policy
            ));
        }
        let sps = if a.percent > 0 {
            percent_sum += a.percent;
            a.percent * total / 100
        } else {
            total / n
        };
        alloc.insert(a.policy.as_str(), sps);
    }
    if percent_sum > 100 {
        return Err(format!(
            "{path}.rate_allocation: percents add up to {percent_sum}, more than 100"
        ));
    }
    // Sextant: sub-policies without an allocation share what the allocations leave.
    let allocated: i64 = alloc.values().sum();
    let unlisted = c
        .composite_sub_policy
        .iter()
        .filter(|s| !alloc.contains_key(s.name.as_str()))
        .count() as i64;
    let rest = if unlisted > 0 {
        (total - allocated).max(0) / unlisted
    } else {
        0
    };
    // Order: policy_order first, then any sub-policy it does not name.
    let mut order: Vec<usize> = Vec::new();
    for (j, name) in c.policy_order.iter().enumerate() {
        let Some(idx) = c.composite_sub_policy.iter().position(|s| &s.name == name) else {
            return Err(format!(
                "{path}.policy_order[{j}]: {name:?} is not one of composite_sub_policy"
            ));
        };
        if order.contains(&idx) {
            return Err(format!(
                "{path}.policy_order[{j}]: {name:?} is listed twice"
            ));
        }
        order.push(idx);
    }
    for idx in 0..c.composite_sub_policy.len() {
        if !order.contains(&idx) {
            order.push(idx);
        }
    }
    let mut subs = Vec::new();
    for idx in order {
        let s = &c.composite_sub_policy[idx];
        subs.push(CompositeSub {
            name: s.name.clone(),
            node: node(
                s,
                &format!("{path}.composite_sub_policy[{idx}]"),
                Level::CompositeSub,
                leaves,
            )?,
            allocated: alloc.get(s.name.as_str()).copied().unwrap_or(rest),
            used: 0,
        });
    }
    Ok(Node::Composite {
        max_total: total,
        subs,
        second: u64::MAX,
    })
}

impl Node {
    fn eval(&mut self, t: &TraceView<'_>, second: u64) -> Decision {
        let yes = |b: bool| {
            if b {
                Decision::Sampled
            } else {
                Decision::NotSampled
            }
        };
        match self {
            Node::Always => Decision::Sampled,
            Node::Latency { threshold, upper } => {
                let d = t.summary.duration_ms();
                if *upper == 0 {
                    yes(d >= *threshold)
                } else {
                    yes(*threshold < d && d <= *upper)
                }
            }
            Node::Status(mask) => yes(t.summary.status & *mask != 0),
            Node::Attr { bit, invert } => {
                let found = t.summary.has(*bit);
                match (*invert, found) {
                    (false, f) => yes(f),
                    (true, true) => Decision::InvertNotSampled,
                    (true, false) => Decision::InvertSampled,
                }
            }
            Node::TraceState(bit) => yes(t.summary.has(*bit)),
            Node::TraceFlags => yes(t.summary.sampled_flag),
            Node::Probabilistic { salt, threshold } => yes(fnv1a(salt, t.id) <= *threshold),
            Node::RateLimiting {
                per_second,
                second: current,
                used,
            } => {
                if *current != second {
                    *current = second;
                    *used = 0;
                }
                let after = *used + i64::from(t.summary.span_count);
                if after < *per_second {
                    *used = after;
                    Decision::Sampled
                } else {
                    Decision::NotSampled
                }
            }
            Node::BytesLimiting {
                rate,
                burst,
                tokens,
                last,
            } => {
                if let Some(prev) = *last {
                    let dt = t.now.saturating_duration_since(prev).as_secs_f64();
                    *tokens = (*tokens + dt * *rate).min(*burst);
                }
                *last = Some(t.now);
                let need = t.bytes as f64;
                if *tokens >= need {
                    *tokens -= need;
                    Decision::Sampled
                } else {
                    Decision::NotSampled
                }
            }
            Node::SpanCount { min, max } => {
                let n = i64::from(t.summary.span_count);
                yes(n >= *min && (*max == 0 || n <= *max))
            }
            Node::And(subs) => {
                for s in subs.iter_mut() {
                    if matches!(
                        s.eval(t, second),
                        Decision::NotSampled | Decision::InvertNotSampled
                    ) {
                        return Decision::NotSampled;
                    }
                }
                Decision::Sampled
            }
            Node::Drop(subs) => {
                for s in subs.iter_mut() {
                    if matches!(
                        s.eval(t, second),
                        Decision::NotSampled | Decision::InvertNotSampled
                    ) {
                        return Decision::NotSampled;
                    }
                }
                Decision::Dropped
            }
            Node::Not(sub) => match sub.eval(t, second) {
                Decision::Sampled | Decision::InvertSampled => Decision::NotSampled,
                Decision::NotSampled | Decision::InvertNotSampled => Decision::Sampled,
                Decision::Dropped => Decision::Dropped,
            },
            Node::Composite {
                max_total,
                subs,
                second: current,
            } => {
                if *current != second {
                    *current = second;
                    for s in subs.iter_mut() {
                        s.used = 0;
                    }
                }
                for s in subs.iter_mut() {
                    let d = s.node.eval(t, second);
                    if matches!(d, Decision::Sampled | Decision::InvertSampled) {
                        let after = s.used + i64::from(t.summary.span_count);
                        if after <= s.allocated && after <= *max_total {
                            s.used = after;
                            tracing::trace!(sub_policy = %s.name, "composite sub-policy sampled");
                            return Decision::Sampled;
                        }
                        return Decision::NotSampled;
                    }
                }
                Decision::NotSampled
            }
        }
    }
}

impl Policies {
    /// The final decision for a trace: `true` to keep it.
    ///
    /// Any drop vote: not sampled; else `sampling.priority` > 0 or any sample vote: sampled;
    /// else an inverted sample vote without any "not sampled" vote: sampled.
    pub fn decide(&mut self, t: &TraceView<'_>) -> bool {
        let second = t.now.saturating_duration_since(self.epoch).as_secs();
        let (mut sampled, mut not_sampled, mut inv_sampled, mut inv_not) =
            (false, false, false, false);
        for (_name, node) in self.top.iter_mut() {
            match node.eval(t, second) {
                Decision::Dropped => return false,
                Decision::Sampled => {
                    sampled = true;
                    if self.sample_on_first_match {
                        return true;
                    }
                }
                Decision::NotSampled => not_sampled = true,
                Decision::InvertSampled => inv_sampled = true,
                Decision::InvertNotSampled => inv_not = true,
            }
        }
        if t.summary.force_keep {
            return true;
        }
        if inv_not {
            return false;
        }
        sampled || (inv_sampled && !not_sampled)
    }

    pub fn is_empty(&self) -> bool {
        self.top.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{kv, parse, rs, s, sp};
    use super::super::walk::Splitter;
    use super::*;
    use prost::Message;
    use sextant_otlp_proto::proto::{any_value::Value, ResourceSpans, TracesData};
    use std::time::Duration;

    struct Fixture {
        leaves: Leaves,
        policies: Policies,
    }

    fn fixture(yaml: &str) -> Fixture {
        let config = parse(yaml).expect("parses");
        let mut leaves = Leaves::default();
        let policies =
            compile(&config.policies, config.sample_on_first_match, &mut leaves).expect("compiles");
        Fixture { leaves, policies }
    }

    impl Fixture {
        /// The decision for the trace made of `resource_spans` (one trace id assumed).
        fn keep(&mut self, resource_spans: Vec<ResourceSpans>) -> bool {
            self.keep_at(resource_spans, Instant::now())
        }

        fn keep_at(&mut self, resource_spans: Vec<ResourceSpans>, now: Instant) -> bool {
            let bytes = TracesData { resource_spans }.encode_to_vec();
            let mut sp_ = Splitter::default();
            sp_.split(&bytes, &self.leaves).expect("splits");
            let mut summary = Summary::default();
            let mut id = [0u8; 16];
            for f in &sp_.fragments {
                summary.merge(&f.summary);
                id = f.trace;
            }
            self.policies.decide(&TraceView {
                id: &id,
                summary: &summary,
                bytes: sp_.out.len(),
                now,
            })
        }
    }

    fn one(yaml_policy: &str) -> Fixture {
        fixture(&format!("policies: [{yaml_policy}]"))
    }

    fn span_with(attrs: Vec<sextant_otlp_proto::proto::KeyValue>) -> Vec<ResourceSpans> {
        vec![rs("svc", vec![sp(1, 1, 5, 0, attrs)])]
    }

    #[test]
    fn always_sample_and_no_policies() {
        assert!(one("{name: a, type: always_sample}").keep(span_with(vec![])));
        assert!(!fixture("policies: []").keep(span_with(vec![])));
    }

    #[test]
    fn sampling_priority_forces_keep_unless_dropped() {
        let prio = || span_with(vec![kv("sampling.priority", Value::IntValue(1))]);
        assert!(fixture("policies: []").keep(prio()));
        assert!(!fixture("policies: []")
            .keep(span_with(vec![kv("sampling.priority", Value::IntValue(0))])));
        let mut f = fixture(
            "policies: [{name: d, type: drop, drop: {drop_sub_policy: [{name: x, type: always_sample}]}}]",
        );
        assert!(!f.keep(prio()));
    }

    #[test]
    fn latency_with_and_without_upper_bound() {
        let mut f = one("{name: l, type: latency, latency: {threshold_ms: 100}}");
        assert!(f.keep(vec![rs("a", vec![sp(1, 1, 150, 0, vec![])])]));
        assert!(!f.keep(vec![rs("a", vec![sp(1, 1, 50, 0, vec![])])]));
        // Two 60 ms spans 0.001 ms apart do not make 100 ms.
        assert!(!f.keep(vec![rs(
            "a",
            vec![sp(1, 1, 60, 0, vec![]), sp(1, 2, 60, 0, vec![])]
        )]));
        let mut f =
            one("{name: l, type: latency, latency: {threshold_ms: 100, upper_threshold_ms: 200}}");
        assert!(f.keep(vec![rs("a", vec![sp(1, 1, 150, 0, vec![])])]));
        assert!(!f.keep(vec![rs("a", vec![sp(1, 1, 250, 0, vec![])])]));
        assert!(!f.keep(vec![rs("a", vec![sp(1, 1, 100, 0, vec![])])]));
    }

    #[test]
    fn status_code_matches_any_span() {
        let mut f = one("{name: s, type: status_code, status_code: {status_codes: [ERROR]}}");
        assert!(f.keep(vec![rs(
            "a",
            vec![sp(1, 1, 1, 1, vec![]), sp(1, 2, 1, 2, vec![])]
        )]));
        assert!(!f.keep(vec![rs(
            "a",
            vec![sp(1, 1, 1, 1, vec![]), sp(1, 2, 1, 0, vec![])]
        )]));
        let mut f = one("{name: s, type: status_code, status_code: {status_codes: [OK, UNSET]}}");
        assert!(f.keep(vec![rs("a", vec![sp(1, 1, 1, 0, vec![])])]));
    }

    #[test]
    fn string_attribute_exact_regex_resource_and_invert() {
        let mut f = one("{name: s, type: string_attribute, string_attribute: {key: http.route, values: [/a, /b]}}");
        assert!(f.keep(span_with(vec![kv("http.route", s("/b"))])));
        assert!(!f.keep(span_with(vec![kv("http.route", s("/bb"))])));
        assert!(!f.keep(span_with(vec![kv("http.route", Value::IntValue(1))])));
        // Resource attributes count too.
        let mut f = one("{name: s, type: string_attribute, string_attribute: {key: service.name, values: [svc]}}");
        assert!(f.keep(span_with(vec![])));
        let mut f = one("{name: s, type: string_attribute, string_attribute: {key: http.route, values: ['^/v1/.+'], enabled_regex_matching: true}}");
        assert!(f.keep(span_with(vec![kv("http.route", s("/v1/name/3"))])));
        assert!(!f.keep(span_with(vec![kv("http.route", s("/v2/name"))])));
        // Inverted: sampled unless a value matches (also when the key is absent).
        let mut f = one("{name: s, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}}");
        assert!(f.keep(span_with(vec![kv("team", s("b"))])));
        assert!(f.keep(span_with(vec![])));
        assert!(!f.keep(span_with(vec![kv("team", s("a"))])));
        // An inverted "not sample" wins over another policy's "sample".
        let mut f = fixture("policies: [{name: all, type: always_sample}, {name: s, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}}]");
        assert!(!f.keep(span_with(vec![kv("team", s("a"))])));
        // An inverted "sample" does not win over a plain "not sample".
        let mut f = fixture("policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: s, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}}]");
        assert!(!f.keep(span_with(vec![kv("team", s("b"))])));
    }

    #[test]
    fn numeric_and_boolean_attributes() {
        let mut f = one("{name: n, type: numeric_attribute, numeric_attribute: {key: http.status_code, min_value: 500, max_value: 599}}");
        assert!(f.keep(span_with(vec![kv(
            "http.status_code",
            Value::IntValue(503)
        )])));
        assert!(!f.keep(span_with(vec![kv(
            "http.status_code",
            Value::IntValue(404)
        )])));
        let mut f =
            one("{name: n, type: numeric_attribute, numeric_attribute: {key: n, min_value: 10}}");
        assert!(f.keep(span_with(vec![kv("n", Value::IntValue(i64::MAX))])));
        let mut f = one("{name: n, type: numeric_attribute, numeric_attribute: {key: n, max_value: 10, invert_match: true}}");
        assert!(!f.keep(span_with(vec![kv("n", Value::IntValue(3))])));
        assert!(f.keep(span_with(vec![kv("n", Value::IntValue(30))])));
        let mut f =
            one("{name: b, type: boolean_attribute, boolean_attribute: {key: force, value: true}}");
        assert!(f.keep(span_with(vec![kv("force", Value::BoolValue(true))])));
        assert!(!f.keep(span_with(vec![kv("force", Value::BoolValue(false))])));
        assert!(!f.keep(span_with(vec![kv("force", s("true"))])));
    }

    #[test]
    fn probabilistic_is_by_trace_id_and_proportional() {
        let mut none =
            one("{name: p, type: probabilistic, probabilistic: {sampling_percentage: 0}}");
        let mut all =
            one("{name: p, type: probabilistic, probabilistic: {sampling_percentage: 100}}");
        let mut half = one("{name: p, type: probabilistic, probabilistic: {sampling_percentage: 50, hash_salt: s1}}");
        let mut kept = 0;
        for t in 0..=255u8 {
            let mut span = sp(t, 1, 1, 0, vec![]);
            span.trace_id[15] = t.wrapping_mul(37);
            span.trace_id[3] = t;
            let trace = || vec![rs("a", vec![span.clone()])];
            assert!(all.keep(trace()));
            if half.keep(trace()) {
                kept += 1;
                assert!(half.keep(trace()), "the same trace gets the same decision");
            }
            let _ = none.keep(trace());
        }
        assert!((80..=176).contains(&kept), "kept {kept} of 256 at 50%");
    }

    #[test]
    fn rate_limiting_counts_spans_per_second() {
        let mut f = one("{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 10}}");
        let now = Instant::now();
        let three = || {
            vec![rs(
                "a",
                vec![
                    sp(1, 1, 1, 0, vec![]),
                    sp(1, 2, 1, 0, vec![]),
                    sp(1, 3, 1, 0, vec![]),
                ],
            )]
        };
        let kept = (0..5).filter(|_| f.keep_at(three(), now)).count();
        assert_eq!(kept, 3, "3 + 3 + 3 < 10");
        assert!(
            f.keep_at(three(), now + Duration::from_secs(1)),
            "a new second"
        );
    }

    #[test]
    fn span_count_trace_state_and_trace_flags() {
        let mut f = one("{name: c, type: span_count, span_count: {min_spans: 2, max_spans: 3}}");
        let n = |k: u8| vec![rs("a", (0..k).map(|i| sp(1, i, 1, 0, vec![])).collect())];
        assert!(!f.keep(n(1)));
        assert!(f.keep(n(2)));
        assert!(f.keep(n(3)));
        assert!(!f.keep(n(4)));
        let mut f = one("{name: t, type: trace_state, trace_state: {key: vendor, values: [keep]}}");
        let with_state = |ts: &str| {
            let mut span = sp(1, 1, 1, 0, vec![]);
            span.trace_state = ts.into();
            vec![rs("a", vec![span])]
        };
        assert!(f.keep(with_state("other=1, vendor=keep")));
        assert!(!f.keep(with_state("vendor=drop")));
        let mut f = one("{name: f, type: trace_flags}");
        let mut span = sp(1, 1, 1, 0, vec![]);
        assert!(!f.keep(vec![rs("a", vec![span.clone()])]));
        span.flags = 1;
        assert!(f.keep(vec![rs("a", vec![span])]));
    }

    #[test]
    fn and_needs_every_sub_policy() {
        let mut f = one("{name: a, type: and, and: {and_sub_policy: [
            {name: s, type: string_attribute, string_attribute: {key: service.name, values: [svc]}},
            {name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}");
        assert!(f.keep(vec![rs("svc", vec![sp(1, 1, 1, 2, vec![])])]));
        assert!(!f.keep(vec![rs("other", vec![sp(1, 1, 1, 2, vec![])])]));
        assert!(!f.keep(vec![rs("svc", vec![sp(1, 1, 1, 0, vec![])])]));
        // An inverted sub-policy counts as a plain vote inside and.
        let mut f = one("{name: a, type: and, and: {and_sub_policy: [
            {name: s, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}},
            {name: all, type: always_sample}]}}");
        assert!(f.keep(span_with(vec![kv("team", s("b"))])));
        assert!(!f.keep(span_with(vec![kv("team", s("a"))])));
    }

    #[test]
    fn drop_wins_over_every_sample_vote() {
        let mut f = fixture("policies: [
            {name: all, type: always_sample},
            {name: d, type: drop, drop: {drop_sub_policy: [
                {name: h, type: string_attribute, string_attribute: {key: url.path, values: [/health, /metrics], enabled_regex_matching: true}}]}}]");
        assert!(!f.keep(span_with(vec![kv("url.path", s("/healthz"))])));
        assert!(f.keep(span_with(vec![kv("url.path", s("/orders"))])));
    }

    #[test]
    fn composite_allocates_rates_in_policy_order() {
        let mut f = one("{name: c, type: composite, composite: {
            max_total_spans_per_second: 10,
            policy_order: [errors, rest],
            composite_sub_policy: [
              {name: rest, type: always_sample},
              {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}],
            rate_allocation: [{policy: errors, percent: 50}]}}");
        let now = Instant::now();
        let trace = |code: i32| {
            vec![rs(
                "a",
                vec![sp(1, 1, 1, code, vec![]), sp(1, 2, 1, 0, vec![])],
            )]
        };
        // errors: 5 spans a second = 2 traces of 2 spans; the third error trace is refused by
        // its (first matching) sub-policy.
        assert!(f.keep_at(trace(2), now));
        assert!(f.keep_at(trace(2), now));
        assert!(!f.keep_at(trace(2), now));
        // rest gets what is left (Sextant): 5 spans = 2 traces.
        assert!(f.keep_at(trace(0), now));
        assert!(f.keep_at(trace(0), now));
        assert!(!f.keep_at(trace(0), now));
        assert!(f.keep_at(trace(2), now + Duration::from_secs(1)));
    }

    #[test]
    fn sample_on_first_match_stops_at_the_first_sample_vote() {
        let yaml = "sample_on_first_match: true
policies: [{name: all, type: always_sample}, {name: d, type: drop, drop: {drop_sub_policy: [{name: x, type: always_sample}]}}]";
        assert!(fixture(yaml).keep(span_with(vec![])));
    }
}
