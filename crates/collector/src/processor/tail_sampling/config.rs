//! `processors: tail_sampling[/name]`: the reference's keys and defaults, plus Sextant's
//! `max_buffered_bytes_mib` and `storage`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The tail sampling processor's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time from a trace's first span to its decision.
    #[serde(with = "crate::config::duration")]
    pub decision_wait: Duration,
    /// Undecided traces held at most; beyond it the oldest are decided early.
    #[serde(with = "int")]
    pub num_traces: u64,
    /// Sizes the trace table up front.
    #[serde(with = "int")]
    pub expected_new_traces_per_sec: u64,
    pub decision_cache: DecisionCacheConfig,
    /// Stop evaluating at the first policy that votes "sample".
    pub sample_on_first_match: bool,
    /// On shutdown without storage, drop undecided traces instead of deciding them now.
    pub drop_pending_traces_on_shutdown: bool,
    pub policies: Vec<PolicyConfig>,
    /// Sextant: bytes of undecided spans held at most (MiB); beyond it the oldest traces are
    /// decided early.
    #[serde(with = "int")]
    pub max_buffered_bytes_mib: u64,
    /// Sextant: the `file_storage` extension keeping undecided traces across restarts.
    pub storage: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            decision_wait: Duration::from_secs(30),
            num_traces: 50_000,
            expected_new_traces_per_sec: 0,
            decision_cache: DecisionCacheConfig::default(),
            sample_on_first_match: false,
            drop_pending_traces_on_shutdown: false,
            policies: Vec::new(),
            max_buffered_bytes_mib: 32,
            storage: None,
        }
    }
}

/// `decision_cache`: how many decided trace ids are remembered, so that late spans follow
/// their trace's decision. 0 (the default) means "as many as `num_traces`".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionCacheConfig {
    #[serde(with = "int")]
    pub sampled_cache_size: u64,
    #[serde(with = "int")]
    pub non_sampled_cache_size: u64,
}

/// A policy type, spelled as the reference spells it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    #[default]
    AlwaysSample,
    Latency,
    NumericAttribute,
    Probabilistic,
    StatusCode,
    StringAttribute,
    RateLimiting,
    BytesLimiting,
    SpanCount,
    TraceState,
    TraceFlags,
    BooleanAttribute,
    OttlCondition,
    And,
    Not,
    Drop,
    Composite,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::AlwaysSample => "always_sample",
            PolicyType::Latency => "latency",
            PolicyType::NumericAttribute => "numeric_attribute",
            PolicyType::Probabilistic => "probabilistic",
            PolicyType::StatusCode => "status_code",
            PolicyType::StringAttribute => "string_attribute",
            PolicyType::RateLimiting => "rate_limiting",
            PolicyType::BytesLimiting => "bytes_limiting",
            PolicyType::SpanCount => "span_count",
            PolicyType::TraceState => "trace_state",
            PolicyType::TraceFlags => "trace_flags",
            PolicyType::BooleanAttribute => "boolean_attribute",
            PolicyType::OttlCondition => "ottl_condition",
            PolicyType::And => "and",
            PolicyType::Not => "not",
            PolicyType::Drop => "drop",
            PolicyType::Composite => "composite",
        }
    }
}

/// One policy: `{name, type, <type>: {...}}`. Sub-policies of `and`, `drop`, `not` and
/// `composite` have the same shape (nesting rules are checked in `build`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub policy_type: PolicyType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric_attribute: Option<NumericAttributeConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilistic: Option<ProbabilisticConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<StatusCodeConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_attribute: Option<StringAttributeConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiting: Option<RateLimitingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_limiting: Option<BytesLimitingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_count: Option<SpanCountConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_state: Option<TraceStateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    /// Accepted by the parser only so that `build` can refuse it with a clear message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ottl_condition: Option<Ignored>,
    #[serde(rename = "and", skip_serializing_if = "Option::is_none")]
    pub and: Option<AndConfig>,
    #[serde(rename = "not", skip_serializing_if = "Option::is_none")]
    pub not: Option<NotConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub composite: Option<CompositeConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    pub threshold_ms: i64,
    /// 0: no upper bound.
    pub upper_threshold_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NumericAttributeConfig {
    pub key: String,
    pub min_value: Option<i64>,
    pub max_value: Option<i64>,
    pub invert_match: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbabilisticConfig {
    pub hash_salt: String,
    pub sampling_percentage: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// `OK`, `ERROR`, `UNSET`.
    pub status_codes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StringAttributeConfig {
    pub key: String,
    pub values: Vec<String>,
    pub enabled_regex_matching: bool,
    /// Accepted for compatibility: regexes are precompiled into one set, no cache is needed.
    pub cache_max_size: usize,
    pub invert_match: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitingConfig {
    pub spans_per_second: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BytesLimitingConfig {
    pub bytes_per_second: i64,
    /// 0: twice `bytes_per_second`.
    pub burst_capacity: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpanCountConfig {
    pub min_spans: i64,
    /// 0: no upper bound.
    pub max_spans: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TraceStateConfig {
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    pub key: String,
    pub value: bool,
    pub invert_match: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AndConfig {
    pub and_sub_policy: Vec<PolicyConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotConfig {
    pub not_sub_policy: Box<PolicyConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DropConfig {
    pub drop_sub_policy: Vec<PolicyConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompositeConfig {
    pub max_total_spans_per_second: i64,
    pub policy_order: Vec<String>,
    pub composite_sub_policy: Vec<PolicyConfig>,
    pub rate_allocation: Vec<RateAllocationConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateAllocationConfig {
    pub policy: String,
    pub percent: i64,
}

/// Any value, ignored (for keys that are parsed only to be refused with a clear message).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ignored;

impl Serialize for Ignored {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Ignored)
    }
}

/// Unsigned integers as the reference's YAML (1.1) reads them: `100000` or `100_000`.
pub mod int {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrText {
        Int(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match IntOrText::deserialize(d)? {
            IntOrText::Int(v) => Ok(v),
            IntOrText::Text(t) => t.trim().replace('_', "").parse().map_err(|_| {
                serde::de::Error::custom(format!("{t:?} is not a non-negative integer"))
            }),
        }
    }
}
