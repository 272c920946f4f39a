//! The `spanmetrics` connector: R.E.D. metrics (`calls`, `duration`) from spans, kept in the
//! Prometheus registry the binary serves.
//!
//! Series are named as the reference's Prometheus exporter names them: the namespace
//! (`traces.span.metrics` by default) and the metric name joined with dots, dots turned into
//! underscores, counters ending in `_total` and the histogram's unit appended:
//! `traces_span_metrics_calls_total`, `traces_span_metrics_duration_milliseconds_bucket`.
//! Labels: `service_name`, `span_name`, `span_kind` (`SPAN_KIND_SERVER`...), `status_code`
//! (`STATUS_CODE_OK`...) and the configured dimensions, sanitized the same way.
//!
//! Per batch the connector takes one lock; per span it hashes the label values it borrows from
//! the span (no allocation unless the series is new) and updates the series' counter and
//! histogram. The number of series is bounded by `dimensions_cache_size` (least recently used
//! series are dropped) and, when set, `aggregation_cardinality_limit` (further label sets go
//! into one `otel_metric_overflow="true"` series, as the reference does).

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Deserializer, Serialize};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{any_value, span, AnyValue, KeyValue, ResourceSpans, Span};

use crate::error::PipelineError;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// The reference's default explicit buckets, in milliseconds.
const DEFAULT_BUCKETS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10_000.0, 15_000.0,
];

/// `connectors: spanmetrics[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub histogram: HistogramConfig,
    /// Extra labels, looked up in the span's attributes, then its resource's.
    pub dimensions: Vec<Dimension>,
    /// Extra labels of the `calls` metric only.
    pub calls_dimensions: Vec<Dimension>,
    /// Default labels to leave out (`service.name`, `span.name`, `span.kind`, `status.code`).
    pub exclude_dimensions: Vec<String>,
    /// Most label sets kept; the least recently used are dropped beyond it.
    pub dimensions_cache_size: usize,
    /// Accepted for compatibility (series are not kept per resource here).
    pub resource_metrics_cache_size: usize,
    /// Accepted for compatibility (series are not kept per resource here).
    pub resource_metrics_key_attributes: Vec<String>,
    pub aggregation_temporality: AggregationTemporality,
    /// How often expired series are removed (the reference's export interval).
    #[serde(with = "crate::config::duration")]
    pub metrics_flush_interval: Duration,
    /// A series that got no span for this long is removed (0: never).
    #[serde(with = "crate::config::duration")]
    pub metrics_expiration: Duration,
    /// As `metrics_expiration`, per series (0: never).
    #[serde(with = "crate::config::duration")]
    pub series_expiration: Duration,
    /// Prefix of the metric names (`""`: none).
    pub namespace: String,
    pub exemplars: ExemplarsConfig,
    pub events: EventsConfig,
    /// Most label sets per metric before new ones go to the overflow series (0: no limit).
    pub aggregation_cardinality_limit: usize,
    /// Accepted for compatibility (delta temporality only, which is refused).
    pub metric_timestamp_cache_size: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            histogram: HistogramConfig::default(),
            dimensions: Vec::new(),
            calls_dimensions: Vec::new(),
            exclude_dimensions: Vec::new(),
            dimensions_cache_size: 1000,
            resource_metrics_cache_size: 1000,
            resource_metrics_key_attributes: Vec::new(),
            aggregation_temporality: AggregationTemporality::Cumulative,
            metrics_flush_interval: Duration::from_secs(60),
            metrics_expiration: Duration::ZERO,
            series_expiration: Duration::ZERO,
            namespace: "traces.span.metrics".into(),
            exemplars: ExemplarsConfig::default(),
            events: EventsConfig::default(),
            aggregation_cardinality_limit: 0,
            metric_timestamp_cache_size: None,
        }
    }
}

/// `histogram`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistogramConfig {
    /// No `duration` metric at all.
    pub disable: bool,
    pub unit: DurationUnit,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub explicit: Option<ExplicitConfig>,
    /// Refused by `build`: the Prometheus text format has no exponential histograms.
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub exponential: Option<ExponentialConfig>,
    /// Extra labels of the `duration` metric only.
    pub dimensions: Vec<Dimension>,
}

/// `histogram.explicit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExplicitConfig {
    /// Bucket bounds as durations (`[2ms, 1s]`; bare numbers are nanoseconds, as in Go).
    #[serde(with = "duration_list")]
    pub buckets: Vec<Duration>,
}

/// `histogram.exponential`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExponentialConfig {
    pub max_size: i32,
}

impl Default for ExponentialConfig {
    fn default() -> Self {
        Self { max_size: 160 }
    }
}

/// `histogram.unit`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum DurationUnit {
    #[default]
    #[serde(rename = "ms")]
    Milliseconds,
    #[serde(rename = "s")]
    Seconds,
}

/// `aggregation_temporality`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum AggregationTemporality {
    #[default]
    #[serde(rename = "AGGREGATION_TEMPORALITY_CUMULATIVE")]
    Cumulative,
    /// Refused by `build`: a Prometheus endpoint serves cumulative values.
    #[serde(rename = "AGGREGATION_TEMPORALITY_DELTA")]
    Delta,
}

/// One of `dimensions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Dimension {
    pub name: String,
    /// Used when the attribute is missing; without it the label is left out.
    #[serde(rename = "default", skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

/// `exemplars`: accepted; the text exposition carries no exemplars.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExemplarsConfig {
    pub enabled: bool,
    pub max_per_data_point: Option<usize>,
}

/// `events`: the `events` counter, by the span's labels plus event attributes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub enabled: bool,
    pub dimensions: Vec<Dimension>,
}

/// For `Option` sections: present (even empty, `explicit:`) means `Some(default)`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Lists of durations as the reference writes them: `[2ms, 1s]`; bare integers are
/// nanoseconds (Go's `time.Duration`).
pub(crate) mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Nanos(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let items = Vec::<Item>::deserialize(d)?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Item::Nanos(n) => Ok(Duration::from_nanos(n)),
                Item::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "[{i}]: {t:?} is not a duration like 2ms or 1s: {e}"
                    ))
                }),
            })
            .collect()
    }
}

/// A Prometheus name from an OpenTelemetry one: characters other than letters, digits and
/// `_` become `_`; a leading digit gets `key_` in front (as the reference's exporter does).
pub(crate) fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    }
    out
}

/// A label value escaped for the text exposition (`\\`, `\"`, `\n`): prometheus-client
/// writes label values as they are, and span data may hold any character.
pub(crate) fn escape(value: &str) -> String {
    if !value.contains(['\\', '"', '\n']) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// An attribute value as text, borrowed when it is a string.
pub(crate) fn value_text(value: &AnyValue) -> Cow<'_, str> {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s.as_str()),
        _ => Cow::Owned(attr::render(value)),
    }
}

/// The text of `key` in the first of `sources` that has it.
pub(crate) fn lookup<'a>(key: &str, sources: &[&'a [KeyValue]]) -> Option<Cow<'a, str>> {
    sources
        .iter()
        .find_map(|attrs| attr::get(attrs, key))
        .map(value_text)
}

/// The reference's spelling of a span kind.
pub fn kind_name(kind: i32) -> &'static str {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Internal) => "SPAN_KIND_INTERNAL",
        Ok(span::SpanKind::Server) => "SPAN_KIND_SERVER",
        Ok(span::SpanKind::Client) => "SPAN_KIND_CLIENT",
        Ok(span::SpanKind::Producer) => "SPAN_KIND_PRODUCER",
        Ok(span::SpanKind::Consumer) => "SPAN_KIND_CONSUMER",
        _ => "SPAN_KIND_UNSPECIFIED",
    }
}

/// The reference's spelling of a status code.
pub fn status_name(span: &Span) -> &'static str {
    let code = span.status.as_ref().map(|s| s.code).unwrap_or(0);
    match code {
        1 => "STATUS_CODE_OK",
        2 => "STATUS_CODE_ERROR",
        _ => "STATUS_CODE_UNSET",
    }
}

/// A span's duration in nanoseconds (0 when it ends before it starts).
pub(crate) fn duration_nanos(span: &Span) -> u64 {
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano)
}

/// Makes histograms with the configured buckets.
#[derive(Clone)]
pub(crate) struct Buckets(pub(crate) Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub(crate) type Labels = Vec<(String, String)>;

/// A default label (`service.name`...) and whether it is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fixed {
    Service,
    SpanName,
    Kind,
    Status,
}

struct Dim {
    key: String,
    label: String,
    default_value: Option<String>,
}

struct Series {
    /// The label values, in the order of `Inner::label_names` (None: left out).
    values: Box<[Option<String>]>,
    /// Labels of `calls`: the common ones, then `calls_dimensions`.
    calls_labels: Labels,
    /// Labels of `duration`: the common ones, then `histogram.dimensions`.
    hist_labels: Labels,
    /// How many of the labels are the common ones (for events).
    base_count: usize,
    calls: Counter,
    duration: Option<Histogram>,
    last_used: u64,
    last_seen: Instant,
}

/// How many series use each label set of a family (several series share one when they differ
/// only in the other metric's extra dimensions); a label set leaves its family at zero.
#[derive(Default)]
struct Refs {
    calls: FxHashMap<Labels, usize>,
    hist: FxHashMap<Labels, usize>,
}

#[derive(Default)]
struct State {
    series: FxHashMap<u64, Vec<Series>>,
    len: usize,
    tick: u64,
    overflow: Option<Series>,
    refs: Refs,
    last_sweep: Option<Instant>,
}

/// The connector. Build it with [`build`].
pub struct SpanMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    fixed: Vec<Fixed>,
    /// `dimensions`, then `calls_dimensions`, then `histogram.dimensions`.
    dims: Vec<Dim>,
    /// Label names: the fixed ones, then those of `dims`.
    label_names: Vec<String>,
    /// Values `..base` are common to all metrics, `base..calls_end` are for `calls` only, the
    /// rest for `duration` only.
    base: usize,
    calls_end: usize,
    calls: Family<Labels, Counter>,
    duration: Option<Family<Labels, Histogram, Buckets>>,
    events: Option<Events>,
    nanos_per_unit: f64,
    cache_size: usize,
    cardinality_limit: usize,
    expiration: Option<Duration>,
    sweep_interval: Duration,
    state: Mutex<State>,
}

struct Events {
    dims: Vec<Dim>,
    counter: Family<Labels, Counter>,
}

/// Builds the connector and registers its metrics in `registry`.
pub fn build(
    name: &str,
    config: &Config,
    registry: &mut Registry,
) -> Result<Arc<dyn Consumer>, String> {
    Ok(Arc::new(SpanMetrics::new(name, config, registry)?))
}

fn check_dims(path: &str, dims: &[Dimension], taken: &mut Vec<String>) -> Result<Vec<Dim>, String> {
    let mut out = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        if d.name.is_empty() {
            return Err(format!("{path}[{i}].name: must not be empty"));
        }
        let label = sanitize(&d.name);
        if taken.contains(&label) {
            return Err(format!(
                "{path}[{i}].name: duplicate dimension name {:?} (label {label:?})",
                d.name
            ));
        }
        taken.push(label.clone());
        out.push(Dim {
            key: d.name.clone(),
            label,
            default_value: d.default_value.clone(),
        });
    }
    Ok(out)
}

impl SpanMetrics {
    pub fn new(name: &str, config: &Config, registry: &mut Registry) -> Result<Self, String> {
        if config.aggregation_temporality == AggregationTemporality::Delta {
            return Err(
                "aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA is not supported: \
                 metrics are served cumulatively on the Prometheus endpoint; use \
                 AGGREGATION_TEMPORALITY_CUMULATIVE"
                    .into(),
            );
        }
        if config.histogram.exponential.is_some() {
            if config.histogram.explicit.is_some() {
                return Err(
                    "histogram: use either `explicit` or `exponential` buckets histogram".into(),
                );
            }
            return Err(
                "histogram.exponential: exponential histograms are not supported (the \
                 Prometheus text format has none); use histogram.explicit"
                    .into(),
            );
        }
        if config.dimensions_cache_size == 0 {
            return Err("dimensions_cache_size: must be positive".into());
        }
        if config.events.enabled && config.events.dimensions.is_empty() {
            return Err("events.dimensions: must not be empty when events are enabled".into());
        }
        let all_fixed = [
            ("service.name", Fixed::Service),
            ("span.name", Fixed::SpanName),
            ("span.kind", Fixed::Kind),
            ("status.code", Fixed::Status),
        ];
        let mut fixed = Vec::new();
        let mut taken = Vec::new();
        for (key, f) in all_fixed {
            // The reserved names cannot be dimensions, excluded or not.
            taken.push(sanitize(key));
            if !config.exclude_dimensions.iter().any(|e| e == key) {
                fixed.push(f);
            }
        }
        let mut label_names: Vec<String> = all_fixed
            .iter()
            .filter(|(_, f)| fixed.contains(f))
            .map(|(k, _)| sanitize(k))
            .collect();
        let mut dims = check_dims("dimensions", &config.dimensions, &mut taken)?;
        let calls_dims = check_dims(
            "calls_dimensions",
            &config.calls_dimensions,
            &mut taken.clone(),
        )?;
        let hist_dims = check_dims(
            "histogram.dimensions",
            &config.histogram.dimensions,
            &mut taken.clone(),
        )?;
        let base = fixed.len() + dims.len();
        let calls_end = base + calls_dims.len();
        dims.extend(calls_dims);
        dims.extend(hist_dims);
        label_names.extend(dims.iter().map(|d| d.label.clone()));

        let buckets: Vec<f64> = match &config.histogram.explicit {
            Some(e) if !e.buckets.is_empty() => {
                let per_unit = match config.histogram.unit {
                    DurationUnit::Milliseconds => 1e-6,
                    DurationUnit::Seconds => 1e-9,
                };
                let b: Vec<f64> = e
                    .buckets
                    .iter()
                    .map(|d| d.as_nanos() as f64 * per_unit)
                    .collect();
                if let Some(i) = b.windows(2).position(|w| w[1] <= w[0]) {
                    return Err(format!(
                        "histogram.explicit.buckets[{}]: buckets must be increasing",
                        i + 1
                    ));
                }
                b
            }
            _ => match config.histogram.unit {
                DurationUnit::Milliseconds => DEFAULT_BUCKETS_MS.to_vec(),
                DurationUnit::Seconds => DEFAULT_BUCKETS_MS.iter().map(|b| b / 1000.0).collect(),
            },
        };

        let prefix = if config.namespace.is_empty() {
            String::new()
        } else {
            format!("{}_", sanitize(&config.namespace))
        };
        let calls = Family::<Labels, Counter>::default();
        registry.register(
            format!("{prefix}calls"),
            format!("Number of spans, by span labels ({name})"),
            calls.clone(),
        );
        let duration = if config.histogram.disable {
            None
        } else {
            let family = Family::new_with_constructor(Buckets(buckets.into()));
            let unit = match config.histogram.unit {
                DurationUnit::Milliseconds => Unit::Other("milliseconds".into()),
                DurationUnit::Seconds => Unit::Seconds,
            };
            registry.register_with_unit(
                format!("{prefix}duration"),
                format!("Span durations, by span labels ({name})"),
                unit,
                family.clone(),
            );
            Some(family)
        };
        let events = if config.events.enabled {
            let dims = check_dims(
                "events.dimensions",
                &config.events.dimensions,
                &mut taken.clone(),
            )?;
            let counter = Family::<Labels, Counter>::default();
            registry.register(
                format!("{prefix}events"),
                format!("Number of span events, by span and event labels ({name})"),
                counter.clone(),
            );
            Some(Events { dims, counter })
        } else {
            None
        };
        let expiration = [config.metrics_expiration, config.series_expiration]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min();
        let sweep_interval = expiration
            .unwrap_or_default()
            .min(config.metrics_flush_interval)
            .clamp(Duration::from_millis(10), Duration::from_secs(24 * 3600));
        let inner = Arc::new(Inner {
            name: name.to_string(),
            fixed,
            dims,
            label_names,
            base,
            calls_end,
            calls,
            duration,
            events,
            nanos_per_unit: match config.histogram.unit {
                DurationUnit::Milliseconds => 1e6,
                DurationUnit::Seconds => 1e9,
            },
            cache_size: config.dimensions_cache_size,
            cardinality_limit: config.aggregation_cardinality_limit,
            expiration,
            sweep_interval,
            state: Mutex::new(State::default()),
        });
        if expiration.is_some() {
            spawn_sweeper(Arc::downgrade(&inner), sweep_interval);
        }
        tracing::debug!(connector = %name, labels = ?inner.label_names, "spanmetrics connector built");
        Ok(Self { inner })
    }

    /// Updates the metrics with `spans`.
    pub fn record(&self, spans: &[ResourceSpans]) {
        self.inner.record(spans, Instant::now());
    }

    /// Removes series unused for longer than the expiration, as of `now`.
    pub fn sweep(&self, now: Instant) {
        self.inner.sweep(now);
    }
}

fn spawn_sweeper(inner: Weak<Inner>, interval: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Without a runtime, expired series are removed as spans arrive.
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            inner.sweep(Instant::now());
        }
    });
}

fn overflow_labels() -> Labels {
    vec![("otel_metric_overflow".into(), "true".into())]
}

impl Inner {
    fn record(&self, resource_spans: &[ResourceSpans], now: Instant) {
        let mut state = self.state.lock();
        if self.expiration.is_some()
            && state
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= self.sweep_interval)
        {
            self.sweep_locked(&mut state, now);
        }
        let mut values: Vec<Option<Cow<'_, str>>> = Vec::with_capacity(self.label_names.len());
        for rs in resource_spans {
            let resource_attrs: &[KeyValue] = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            // As the reference: spans of a resource without service.name are skipped.
            let Some(service) = attr::get_str(resource_attrs, "service.name") else {
                continue;
            };
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    values.clear();
                    for f in &self.fixed {
                        values.push(Some(Cow::Borrowed(match f {
                            Fixed::Service => service,
                            Fixed::SpanName => span.name.as_str(),
                            Fixed::Kind => kind_name(span.kind),
                            Fixed::Status => status_name(span),
                        })));
                    }
                    let sources = [span.attributes.as_slice(), resource_attrs];
                    for d in &self.dims {
                        values.push(
                            lookup(&d.key, &sources)
                                .or_else(|| d.default_value.as_deref().map(Cow::Borrowed)),
                        );
                    }
                    let series = self.series(&mut state, &values, now);
                    series.calls.inc();
                    if let Some(h) = &series.duration {
                        h.observe(duration_nanos(span) as f64 / self.nanos_per_unit);
                    }
                    if let Some(events) = &self.events {
                        let base = &series.calls_labels[..series.base_count];
                        self.record_events(events, base, span);
                    }
                }
            }
        }
        drop(state);
    }

    /// Counts the events of `span` (rare enough that building the labels per event is fine).
    fn record_events(&self, events: &Events, base: &[(String, String)], span: &Span) {
        for event in &span.events {
            let mut labels = base.to_vec();
            for d in &events.dims {
                let v = attr::get(&event.attributes, &d.key)
                    .map(|v| value_text(v).into_owned())
                    .or_else(|| d.default_value.clone());
                if let Some(v) = v {
                    labels.push((d.label.clone(), escape(&v)));
                }
            }
            events.counter.get_or_create(&labels).inc();
        }
    }

    /// The series for `values`, created if need be.
    fn series<'s>(
        &self,
        state: &'s mut State,
        values: &[Option<Cow<'_, str>>],
        now: Instant,
    ) -> &'s Series {
        let mut hasher = FxHasher::default();
        for v in values {
            v.as_deref().hash(&mut hasher);
        }
        let hash = hasher.finish();
        state.tick += 1;
        let tick = state.tick;
        let found = state.series.get(&hash).and_then(|bucket| {
            bucket.iter().position(|s| {
                s.values
                    .iter()
                    .zip(values)
                    .all(|(a, b)| a.as_deref() == b.as_deref())
            })
        });
        if found.is_none() {
            if self.cardinality_limit > 0 && state.len >= self.cardinality_limit {
                return self.overflow(&mut state.overflow, &mut state.refs, tick, now);
            }
            if state.len >= self.cache_size {
                self.evict(state);
            }
            let labels = |range: std::ops::Range<usize>| -> Labels {
                self.label_names[range.clone()]
                    .iter()
                    .zip(&values[range])
                    .filter_map(|(n, v)| v.as_ref().map(|v| (n.clone(), escape(v))))
                    .collect()
            };
            let mut calls_labels = labels(0..self.base);
            let base_count = calls_labels.len();
            let mut hist_labels = calls_labels.clone();
            calls_labels.extend(labels(self.base..self.calls_end));
            hist_labels.extend(labels(self.calls_end..values.len()));
            let owned: Box<[Option<String>]> = values
                .iter()
                .map(|v| v.as_ref().map(|v| v.to_string()))
                .collect();
            let series = self.new_series(
                &mut state.refs,
                owned,
                calls_labels,
                hist_labels,
                base_count,
                tick,
                now,
            );
            let bucket = state.series.entry(hash).or_default();
            bucket.push(series);
            state.len += 1;
            let last = bucket.len() - 1;
            return &bucket[last];
        }
        let idx = found.unwrap_or_default();
        let State {
            series,
            overflow,
            refs,
            ..
        } = state;
        match series.get_mut(&hash).and_then(|b| b.get_mut(idx)) {
            Some(s) => {
                s.last_used = tick;
                s.last_seen = now;
                s
            }
            // Unreachable: `found` says it is there.
            None => self.overflow(overflow, refs, tick, now),
        }
    }

    /// The one series for label sets beyond `aggregation_cardinality_limit`.
    fn overflow<'s>(
        &self,
        overflow: &'s mut Option<Series>,
        refs: &mut Refs,
        tick: u64,
        now: Instant,
    ) -> &'s Series {
        if overflow.is_none() {
            tracing::warn!(
                connector = %self.name,
                limit = self.cardinality_limit,
                "aggregation_cardinality_limit reached: new label sets go to the \
                 otel_metric_overflow series"
            );
        }
        let o = overflow.get_or_insert_with(|| {
            self.new_series(
                refs,
                Box::new([]),
                overflow_labels(),
                overflow_labels(),
                0,
                tick,
                now,
            )
        });
        o.last_used = tick;
        o.last_seen = now;
        o
    }

    #[allow(clippy::too_many_arguments)]
    fn new_series(
        &self,
        refs: &mut Refs,
        values: Box<[Option<String>]>,
        calls_labels: Labels,
        hist_labels: Labels,
        base_count: usize,
        tick: u64,
        now: Instant,
    ) -> Series {
        let calls = self.calls.get_or_create(&calls_labels).clone();
        *refs.calls.entry(calls_labels.clone()).or_default() += 1;
        let duration = self.duration.as_ref().map(|f| {
            *refs.hist.entry(hist_labels.clone()).or_default() += 1;
            f.get_or_create(&hist_labels).clone()
        });
        Series {
            values,
            calls_labels,
            hist_labels,
            base_count,
            calls,
            duration,
            last_used: tick,
            last_seen: now,
        }
    }

    /// Releases the label sets of a removed series.
    fn forget(&self, refs: &mut Refs, s: &Series) {
        if release(&mut refs.calls, &s.calls_labels) {
            self.calls.remove(&s.calls_labels);
        }
        if let Some(f) = &self.duration {
            if release(&mut refs.hist, &s.hist_labels) {
                f.remove(&s.hist_labels);
            }
        }
    }

    /// Drops the least recently used tenth of the series (at least one).
    fn evict(&self, state: &mut State) {
        let mut ticks: Vec<u64> = state
            .series
            .values()
            .flat_map(|b| b.iter().map(|s| s.last_used))
            .collect();
        if ticks.is_empty() {
            return;
        }
        let n = (ticks.len() / 10).max(1);
        let (_, threshold, _) = ticks.select_nth_unstable(n - 1);
        let threshold = *threshold;
        let evicted = self.remove_where(state, |s| s.last_used <= threshold);
        tracing::debug!(
            connector = %self.name,
            evicted,
            dimensions_cache_size = self.cache_size,
            "spanmetrics: dropped least recently used series"
        );
    }

    /// Removes the series `drop` picks; returns how many.
    fn remove_where(&self, state: &mut State, drop: impl Fn(&Series) -> bool) -> usize {
        let State {
            series, refs, len, ..
        } = state;
        let mut removed = 0usize;
        series.retain(|_, bucket| {
            bucket.retain(|s| {
                let gone = drop(s);
                if gone {
                    self.forget(refs, s);
                    removed += 1;
                }
                !gone
            });
            !bucket.is_empty()
        });
        *len -= removed;
        removed
    }

    fn sweep(&self, now: Instant) {
        let mut state = self.state.lock();
        self.sweep_locked(&mut state, now);
    }

    fn sweep_locked(&self, state: &mut State, now: Instant) {
        state.last_sweep = Some(now);
        let Some(expiration) = self.expiration else {
            return;
        };
        let expired = self.remove_where(state, |s| {
            now.saturating_duration_since(s.last_seen) >= expiration
        });
        if let Some(o) = state.overflow.take() {
            if now.saturating_duration_since(o.last_seen) >= expiration {
                self.forget(&mut state.refs, &o);
            } else {
                state.overflow = Some(o);
            }
        }
        if expired > 0 {
            tracing::debug!(connector = %self.name, expired, "spanmetrics: expired series");
        }
    }
}

/// One series less uses `labels`; true when none is left.
fn release(refs: &mut FxHashMap<Labels, usize>, labels: &Labels) -> bool {
    match refs.get_mut(labels) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        _ => {
            refs.remove(labels);
            true
        }
    }
}

impl Consumer for SpanMetrics {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        super::consume_with(batch, |spans| self.record(spans))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use sextant_otlp_proto::proto::span::Event;
    use sextant_otlp_proto::proto::{Resource, ScopeSpans, Status};

    pub(crate) const TRACE: [u8; 16] = [7; 16];
    pub(crate) const MS: u64 = 1_000_000;

    pub(crate) fn span(
        id: u8,
        parent: Option<u8>,
        name: &str,
        kind: span::SpanKind,
        millis: u64,
        attrs: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id: TRACE.to_vec(),
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + millis * MS,
            attributes: attrs,
            ..Default::default()
        }
    }

    pub(crate) fn failed(mut s: Span) -> Span {
        s.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        s
    }

    pub(crate) fn resource(service: &str, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    attr::kv_str("service.name", service),
                    attr::kv_str("k8s.namespace.name", "shop"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// frontend SERVER `GET /` -> frontend CLIENT `GET /api` -> backend SERVER `GET /api` ->
    /// backend CLIENT `SELECT` (db.system postgresql, db.name orders).
    pub(crate) fn frontend() -> ResourceSpans {
        use span::SpanKind::*;
        resource(
            "frontend",
            vec![
                span(
                    1,
                    None,
                    "GET /",
                    Server,
                    30,
                    vec![attr::kv_str("http.method", "GET")],
                ),
                span(
                    2,
                    Some(1),
                    "GET /api",
                    Client,
                    20,
                    vec![attr::kv_int("http.status_code", 200)],
                ),
            ],
        )
    }

    pub(crate) fn backend() -> ResourceSpans {
        use span::SpanKind::*;
        resource(
            "backend",
            vec![
                span(3, Some(2), "GET /api", Server, 15, vec![]),
                span(
                    4,
                    Some(3),
                    "SELECT",
                    Client,
                    5,
                    vec![
                        attr::kv_str("db.system", "postgresql"),
                        attr::kv_str("db.name", "orders"),
                    ],
                ),
            ],
        )
    }

    pub(crate) fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    fn parse(yaml_as_json: &str) -> Config {
        serde_json::from_str(yaml_as_json).unwrap()
    }

    #[tokio::test]
    async fn three_service_trace_gives_calls_and_durations() {
        let mut registry = Registry::default();
        let config = parse(
            r#"{"dimensions": [{"name": "http.method", "default": "NONE"},
                               {"name": "k8s.namespace.name"}, {"name": "http.status_code"}]}"#,
        );
        let c = build("spanmetrics", &config, &mut registry).unwrap();
        let mut batch = TraceBatch::from_decoded(vec![frontend(), backend()]);
        // Encoded spans are decoded too.
        let enc =
            prost::Message::encode_to_vec(&sextant_otlp_proto::proto::ExportTraceServiceRequest {
                resource_spans: vec![backend()],
            });
        batch.append(TraceBatch::from_encoded(enc.into(), 2));
        c.consume(batch).await.unwrap();
        let t = text(&registry);
        assert!(
            t.contains(r#"traces_span_metrics_calls_total{service_name="frontend",span_name="GET /",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",http_method="GET",k8s_namespace_name="shop"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"traces_span_metrics_calls_total{service_name="frontend",span_name="GET /api",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",http_method="NONE",k8s_namespace_name="shop",http_status_code="200"} 1"#), "{t}");
        assert!(t.contains(r#"traces_span_metrics_calls_total{service_name="backend",span_name="SELECT",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",http_method="NONE",k8s_namespace_name="shop"} 2"#), "{t}");
        assert!(
            t.contains("# TYPE traces_span_metrics_duration_milliseconds histogram"),
            "{t}"
        );
        // 5ms falls in the le=6 bucket, not le=4.
        let select = r#"service_name="backend",span_name="SELECT",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",http_method="NONE",k8s_namespace_name="shop""#;
        assert!(
            t.contains(&format!(
                "traces_span_metrics_duration_milliseconds_bucket{{le=\"4.0\",{select}}} 0"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_span_metrics_duration_milliseconds_bucket{{le=\"6.0\",{select}}} 2"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_span_metrics_duration_milliseconds_sum{{{select}}} 10.0"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_span_metrics_duration_milliseconds_count{{{select}}} 2"
            )),
            "{t}"
        );
        assert_eq!(
            t.matches("traces_span_metrics_calls_total{").count(),
            4,
            "{t}"
        );
    }

    #[tokio::test]
    async fn errors_seconds_namespace_and_exclusions() {
        let mut registry = Registry::default();
        let config = parse(
            r#"{"namespace": "span.metrics", "histogram": {"unit": "s", "explicit": {"buckets": ["10ms", "1s"]}},
                "exclude_dimensions": ["span.kind"]}"#,
        );
        let c = build("spanmetrics/s", &config, &mut registry).unwrap();
        let mut fe = frontend();
        let s = fe.scope_spans[0].spans.remove(0);
        fe.scope_spans[0].spans.push(failed(s));
        c.consume(TraceBatch::from_decoded(vec![fe])).await.unwrap();
        let t = text(&registry);
        assert!(t.contains(r#"span_metrics_calls_total{service_name="frontend",span_name="GET /",status_code="STATUS_CODE_ERROR"} 1"#), "{t}");
        assert!(t.contains(r#"span_metrics_duration_seconds_bucket{le="0.01",service_name="frontend",span_name="GET /",status_code="STATUS_CODE_ERROR"} 0"#), "{t}");
        assert!(t.contains(r#"span_metrics_duration_seconds_bucket{le="1.0",service_name="frontend",span_name="GET /",status_code="STATUS_CODE_ERROR"} 1"#), "{t}");
        assert!(!t.contains("span_kind"), "{t}");
    }

    #[test]
    fn cardinality_is_bounded() {
        let mut registry = Registry::default();
        let config = parse(r#"{"dimensions_cache_size": 10, "histogram": {"disable": true}}"#);
        let c = SpanMetrics::new("spanmetrics", &config, &mut registry).unwrap();
        for i in 0..100 {
            let rs = resource(
                "svc",
                vec![span(
                    1,
                    None,
                    &format!("op{i}"),
                    span::SpanKind::Server,
                    1,
                    vec![],
                )],
            );
            c.record(&[rs]);
        }
        let t = text(&registry);
        let n = t.matches("traces_span_metrics_calls_total{").count();
        assert!(n <= 10 && n > 0, "{n} series:\n{t}");
        assert!(t.contains(r#"span_name="op99""#), "{t}");
        assert!(!t.contains("duration"), "{t}");
        // Without service.name, nothing is counted.
        let mut anonymous = resource(
            "svc",
            vec![span(1, None, "x", span::SpanKind::Server, 1, vec![])],
        );
        anonymous.resource = None;
        c.record(&[anonymous]);
        assert!(!text(&registry).contains(r#"span_name="x""#));

        let mut registry = Registry::default();
        let config = parse(r#"{"aggregation_cardinality_limit": 3}"#);
        let c = SpanMetrics::new("spanmetrics", &config, &mut registry).unwrap();
        for i in 0..10 {
            let rs = resource(
                "svc",
                vec![span(
                    1,
                    None,
                    &format!("op{i}"),
                    span::SpanKind::Server,
                    1,
                    vec![],
                )],
            );
            c.record(&[rs]);
        }
        let t = text(&registry);
        assert!(
            t.contains(r#"traces_span_metrics_calls_total{otel_metric_overflow="true"} 7"#),
            "{t}"
        );
        assert_eq!(
            t.matches("traces_span_metrics_calls_total{").count(),
            4,
            "{t}"
        );
    }

    #[test]
    fn series_expire() {
        let mut registry = Registry::default();
        let config = parse(r#"{"metrics_expiration": "5m"}"#);
        let c = SpanMetrics::new("spanmetrics", &config, &mut registry).unwrap();
        c.record(&[frontend()]);
        let later = Instant::now() + Duration::from_secs(200);
        c.inner.record(&[backend()], later);
        c.sweep(later + Duration::from_secs(150));
        let t = text(&registry);
        assert!(!t.contains(r#"service_name="frontend""#), "{t}");
        assert!(t.contains(r#"service_name="backend""#), "{t}");
        c.sweep(later + Duration::from_secs(301));
        assert!(!text(&registry).contains("service_name="));
    }

    #[test]
    fn calls_and_histogram_dimensions_are_separate() {
        use span::SpanKind::Server;
        let mut registry = Registry::default();
        let config = parse(
            r#"{"calls_dimensions": [{"name": "http.method"}],
                "histogram": {"dimensions": [{"name": "http.route"}]}, "metrics_expiration": "5m"}"#,
        );
        let c = SpanMetrics::new("spanmetrics", &config, &mut registry).unwrap();
        let call = |route: &str| {
            resource(
                "api",
                vec![span(
                    1,
                    None,
                    "GET",
                    Server,
                    1,
                    vec![
                        attr::kv_str("http.method", "GET"),
                        attr::kv_str("http.route", route),
                    ],
                )],
            )
        };
        let t0 = Instant::now();
        c.inner.record(&[call("/a")], t0);
        c.inner.record(&[call("/b")], t0 + Duration::from_secs(200));
        let common = r#"service_name="api",span_name="GET",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET""#;
        let calls = format!(r#"traces_span_metrics_calls_total{{{common},http_method="GET"}}"#);
        let t = text(&registry);
        assert!(t.contains(&format!("{calls} 2")), "{t}");
        assert!(
            t.contains(&format!(
                r#"traces_span_metrics_duration_milliseconds_count{{{common},http_route="/a"}} 1"#
            )),
            "{t}"
        );
        assert!(
            !t.contains(r#"http_route="/a",http_method"#)
                && !t.contains(r#"http_method="GET",http_route"#),
            "{t}"
        );
        // The /a series expires; the calls series it shared with /b stays, and keeps counting.
        c.sweep(t0 + Duration::from_secs(350));
        c.inner.record(&[call("/b")], t0 + Duration::from_secs(360));
        let t = text(&registry);
        assert!(!t.contains(r#"http_route="/a""#), "{t}");
        assert!(t.contains(&format!("{calls} 3")), "{t}");
        assert!(
            t.contains(&format!(
                r#"traces_span_metrics_duration_milliseconds_count{{{common},http_route="/b"}} 2"#
            )),
            "{t}"
        );
        c.sweep(t0 + Duration::from_secs(1000));
        assert!(!text(&registry).contains("http_method"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut registry = Registry::default();
        let c = SpanMetrics::new("spanmetrics", &Config::default(), &mut registry).unwrap();
        let name = "say \"hi\"\n\\now";
        c.record(&[resource(
            "svc",
            vec![span(1, None, name, span::SpanKind::Server, 1, vec![])],
        )]);
        let t = text(&registry);
        assert!(t.contains(r#"span_name="say \"hi\"\n\\now""#), "{t}");
        assert!(
            !t.contains('\u{0}') && t.lines().all(|l| !l.ends_with("say \"hi\"")),
            "{t}"
        );
    }

    #[tokio::test]
    async fn series_expire_by_themselves() {
        let mut registry = Registry::default();
        let config = parse(r#"{"metrics_expiration": "50ms", "metrics_flush_interval": "20ms"}"#);
        let c = build("spanmetrics", &config, &mut registry).unwrap();
        c.consume(TraceBatch::from_decoded(vec![frontend()]))
            .await
            .unwrap();
        assert!(text(&registry).contains(r#"service_name="frontend""#));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = text(&registry);
        assert!(!t.contains(r#"service_name="frontend""#), "{t}");
    }

    #[test]
    fn events_are_counted() {
        let mut registry = Registry::default();
        let config = parse(
            r#"{"exemplars": {"enabled": true}, "events": {"enabled": true, "dimensions": [{"name": "exception.type"}]}}"#,
        );
        let c = SpanMetrics::new("spanmetrics", &config, &mut registry).unwrap();
        let mut fe = frontend();
        fe.scope_spans[0].spans[0].events = vec![
            Event {
                name: "exception".into(),
                attributes: vec![attr::kv_str("exception.type", "IOError")],
                ..Default::default()
            };
            2
        ];
        c.record(&[fe]);
        let t = text(&registry);
        assert!(t.contains(r#"traces_span_metrics_events_total{service_name="frontend",span_name="GET /",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",exception_type="IOError"} 2"#), "{t}");
    }

    #[test]
    fn config_defaults_and_refusals() {
        let c = Config::default();
        assert_eq!(c.namespace, "traces.span.metrics");
        assert_eq!(c.dimensions_cache_size, 1000);
        assert_eq!(c.metrics_flush_interval, Duration::from_secs(60));
        let full = parse(
            r#"{"histogram": {"explicit": {"buckets": ["100us", "1ms", "2ms", "6ms", "10ms", "100ms", "250ms"]}},
                "dimensions": [{"name": "http.method", "default": "GET"}, {"name": "http.status_code"}],
                "exemplars": {"enabled": true}, "exclude_dimensions": ["status.code"],
                "dimensions_cache_size": 1000, "aggregation_temporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
                "metrics_flush_interval": "15s", "metrics_expiration": "5m",
                "events": {"enabled": true, "dimensions": [{"name": "exception.type"}, {"name": "exception.message"}]},
                "resource_metrics_key_attributes": ["service.name", "telemetry.sdk.language", "telemetry.sdk.name"]}"#,
        );
        assert_eq!(
            full.histogram.explicit.as_ref().unwrap().buckets[0],
            Duration::from_micros(100)
        );
        assert!(build("spanmetrics", &full, &mut Registry::default()).is_ok());

        let err = |json: &str| {
            let c: Config = parse(json);
            match build("spanmetrics", &c, &mut Registry::default()) {
                Err(e) => e,
                Ok(_) => panic!("{json} was accepted"),
            }
        };
        assert!(
            err(r#"{"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"}"#)
                .starts_with("aggregation_temporality: ")
        );
        assert!(
            err(r#"{"histogram": {"exponential": null}}"#).starts_with("histogram.exponential: ")
        );
        assert!(err(r#"{"histogram": {"exponential": {"max_size": 10}}}"#)
            .starts_with("histogram.exponential: "));
        assert!(
            err(r#"{"dimensions": [{"name": "a"}, {"name": "span.kind"}]}"#)
                .starts_with("dimensions[1].name: duplicate")
        );
        assert!(
            err(r#"{"histogram": {"explicit": {"buckets": ["2ms", "1ms"]}}}"#)
                .starts_with("histogram.explicit.buckets[1]: ")
        );
        assert!(err(r#"{"dimensions_cache_size": 0}"#).starts_with("dimensions_cache_size: "));
        assert!(serde_json::from_str::<Config>(r#"{"histogram": {"unit": "us"}}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"add_resource_attributes": true}"#).is_err());
        let e = serde_json::from_str::<Config>(
            r#"{"histogram": {"explicit": {"buckets": ["2 parsecs"]}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[0]: \"2 parsecs\" is not a duration"), "{e}");
        // Go-style bare nanoseconds.
        let n = parse(r#"{"histogram": {"explicit": {"buckets": [1000000, 2000000]}}}"#);
        assert_eq!(
            n.histogram.explicit.unwrap().buckets[1],
            Duration::from_millis(2)
        );
    }
}
