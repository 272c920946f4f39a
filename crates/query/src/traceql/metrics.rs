//! Evaluation of a [`MetricsQuery`] (TraceQL metrics) over whole traces, without I/O.
//!
//! A [`MetricsEval`] is fed one trace at a time ([`MetricsEval::observe`]); every span of every
//! spanset the query's spanset part produces is counted once, in the step its start time falls
//! in, under the series its `by(...)` values name. It works as Tempo's engine does:
//!
//! * Spans count when they start in `[start, end)`. Steps are aligned to the step size: the
//!   first starts at `start - start % step`, and there are `(align_up(end) - that) / step + 1`
//!   of them, each sample stamped with its step's start (milliseconds).
//! * `rate()` is the count divided by the step in seconds; `count_over_time()` the count;
//!   `min/max/sum/avg_over_time(f)` the values of `f` (durations in seconds, spans without a
//!   numeric value skipped); steps with no value have no sample.
//! * `histogram_over_time(f)` buckets each value to the next power of two (durations: of
//!   nanoseconds, then in seconds; integers as they are; values below 2 are dropped) and
//!   counts each bucket as its own series, labelled `__bucket`. `quantile_over_time(f, q...)`
//!   makes the same buckets and interpolates each quantile between them (exponentially, as
//!   Tempo's `Log2Quantile`), one series per quantile labelled `p`.
//! * Labels: one per `by` field with a value (named as written, e.g. `resource.service.name`,
//!   typed as the value is); a span lacking them all gets the first field's label with the
//!   string `nil`. Without `by`, the series is `{__name__="rate"}` (the function's name).
//!
//! At most `max_series` series are made; one more is [`MetricsError::TooManySeries`].

use rustc_hash::FxHashMap;

use sextant_otlp_proto::proto::any_value::Value as Pv;
use sextant_otlp_proto::proto::{AnyValue, ResourceSpans};
use sextant_otlp_proto::TraceId;
use sextant_store::SpanFields;

use super::ast::*;
use super::eval::{evaluate, is_span_local, is_span_local_field, SpanView};

const NANOS_PER_SECOND: f64 = 1e9;

/// Why a metrics evaluation stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The query makes more series than allowed.
    #[error(
        "the query makes more than {limit} series: narrow the spanset filter or the by(...) fields"
    )]
    TooManySeries {
        /// The bound.
        limit: usize,
    },
}

/// The time range and step of an evaluation, in unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsRange {
    /// Spans starting at or after this count.
    pub start_ns: u64,
    /// Spans starting before this count.
    pub end_ns: u64,
    /// The step (for an instant query, `end - start`).
    pub step_ns: u64,
    /// One value over the whole range (no alignment to the step).
    pub instant: bool,
}

impl MetricsRange {
    /// A range query over `[start, end)` with `step` (which must be positive).
    pub fn range(start_ns: u64, end_ns: u64, step_ns: u64) -> Self {
        Self {
            start_ns,
            end_ns,
            step_ns: step_ns.max(1),
            instant: false,
        }
    }

    /// An instant query: one value over `[start, end)`.
    pub fn instant(start_ns: u64, end_ns: u64) -> Self {
        Self {
            start_ns,
            end_ns,
            step_ns: end_ns.saturating_sub(start_ns).max(1),
            instant: true,
        }
    }

    fn aligned_start(&self) -> u64 {
        if self.instant {
            self.start_ns
        } else {
            self.start_ns - self.start_ns % self.step_ns
        }
    }

    /// How many steps the range has.
    pub fn intervals(&self) -> usize {
        if self.instant {
            return 1;
        }
        let start = self.aligned_start();
        let end = match self.end_ns % self.step_ns {
            0 => self.end_ns,
            m => self.end_ns.saturating_add(self.step_ns - m),
        };
        usize::try_from(end.saturating_sub(start) / self.step_ns)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    /// The step a span starting at `ts` counts in, if it counts.
    fn interval_of(&self, ts: u64) -> Option<usize> {
        if ts < self.start_ns || ts >= self.end_ns {
            return None;
        }
        usize::try_from((ts - self.aligned_start()) / self.step_ns).ok()
    }

    /// The unix milliseconds a step's sample is stamped with.
    fn timestamp_ms(&self, interval: usize) -> i64 {
        let ns = self.aligned_start() as u128 + interval as u128 * self.step_ns as u128;
        i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX)
    }
}

/// One label of a series: its name and typed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// `resource.service.name`, `__name__`, `__bucket`, `p`, ...
    pub key: String,
    /// The value, as an OTLP value.
    pub value: AnyValue,
}

/// One series of a range query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels, in the order of `by(...)` (then `__bucket` or `p`).
    pub labels: Vec<Label>,
    /// The labels as Prometheus writes them: `{name="value", ...}`, sorted by name.
    pub prom_labels: String,
    /// `(unix milliseconds, value)` per step that has a value.
    pub samples: Vec<(i64, f64)>,
}

/// A numeric value read from a span.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
    /// Nanoseconds.
    Duration(i64),
}

impl Num {
    /// As Tempo's metrics read it: durations in seconds.
    fn value(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
            Num::Duration(ns) => ns as f64 / NANOS_PER_SECOND,
        }
    }

    /// The log2 bucket (`None`: the value is dropped, as Tempo drops it).
    fn bucket(self) -> Option<f64> {
        let up = |v: i64| {
            u64::try_from(v)
                .ok()
                .filter(|v| *v >= 2)
                .and_then(u64::checked_next_power_of_two)
                .map(|b| b as f64)
        };
        match self {
            Num::Int(i) => up(i),
            Num::Duration(ns) => up(ns).map(|b| b / NANOS_PER_SECOND),
            Num::Float(_) => None,
        }
    }
}

/// Per-step accumulation of one series.
#[derive(Debug, Clone)]
struct Acc {
    labels: Vec<Label>,
    counts: Vec<f64>,
    /// min, max or sum per step (NaN: nothing yet).
    values: Vec<f64>,
    /// Per step: (bucket, count) for quantiles.
    buckets: Vec<Vec<(f64, u64)>>,
}

/// A TraceQL metrics evaluation in progress.
#[derive(Debug)]
pub struct MetricsEval {
    query: MetricsQuery,
    /// The spanset query, with a `by(...)` stage that carries the label and value fields.
    eval_query: Query,
    range: MetricsRange,
    intervals: usize,
    max_series: usize,
    series: FxHashMap<String, Acc>,
    /// Spans counted (in the range).
    spans: u64,
    /// The span-by-span evaluation: the spanset filter, when the query can be answered one
    /// span at a time (see [`MetricsEval::span_local`]).
    span_filter: Option<FilterExpr>,
    /// For that evaluation: the `by` values of a span (see [`SpanView::write_first_value`],
    /// then a histogram's bucket) to the key of its series in `series`.
    span_series: FxHashMap<String, String>,
    /// Reused to build those keys.
    key_buf: String,
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Pv::StringValue(s.to_string())),
    }
}

fn double_value(f: f64) -> AnyValue {
    AnyValue {
        value: Some(Pv::DoubleValue(f)),
    }
}

/// A value as a Prometheus label value (Tempo's spelling: `<empty>` for "").
fn prom_value(v: &AnyValue) -> String {
    match &v.value {
        Some(Pv::StringValue(s)) if s.is_empty() => "<empty>".to_string(),
        Some(Pv::StringValue(s)) if s == "nil" => "<nil>".to_string(),
        Some(Pv::StringValue(s)) => s.clone(),
        Some(Pv::IntValue(i)) => i.to_string(),
        Some(Pv::DoubleValue(f)) => format_float(*f),
        Some(Pv::BoolValue(b)) => b.to_string(),
        _ => "<nil>".to_string(),
    }
}

/// A float as Go's `strconv.FormatFloat(f, 'g', -1, 64)` mostly writes it.
fn format_float(f: f64) -> String {
    if f.is_finite() && (f == 0.0 || (1e-4..1e21).contains(&f.abs())) {
        format!("{f}")
    } else {
        format!("{f:e}")
    }
}

/// `{a="x", b="y"}`, sorted by name.
fn prom_labels(labels: &[Label]) -> String {
    let mut pairs: Vec<(&str, String)> = labels
        .iter()
        .map(|l| (l.key.as_str(), prom_value(&l.value)))
        .collect();
    pairs.sort();
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn number(v: &AnyValue, duration: bool) -> Option<Num> {
    match v.value {
        Some(Pv::IntValue(i)) if duration => Some(Num::Duration(i)),
        Some(Pv::IntValue(i)) => Some(Num::Int(i)),
        Some(Pv::DoubleValue(f)) if f.is_finite() => Some(Num::Float(f)),
        _ => None,
    }
}

impl MetricsEval {
    /// An evaluation of `query` over `range`, making at most `max_series` series.
    pub fn new(query: MetricsQuery, range: MetricsRange, max_series: usize) -> Self {
        let mut carried: Vec<Field> = query.by.clone();
        if let Some(f) = query.func.field() {
            if *f != Field::Intrinsic(Intrinsic::Duration) {
                carried.push(f.clone());
            }
        }
        let root = query.spans.root.clone();
        let root = if carried.is_empty() {
            root
        } else {
            match root {
                SpansetExpr::Pipeline { input, mut stages } => {
                    stages.push(Stage::By(carried));
                    SpansetExpr::Pipeline { input, stages }
                }
                other => SpansetExpr::Pipeline {
                    input: Box::new(other),
                    stages: vec![Stage::By(carried)],
                },
            }
        };
        let span_filter = match &query.spans.root {
            SpansetExpr::Filter(f)
                if is_span_local(f)
                    && query.by.iter().all(is_span_local_field)
                    && query.func.field().is_none_or(is_span_local_field) =>
            {
                Some(f.clone())
            }
            _ => None,
        };
        Self {
            eval_query: Query { root },
            intervals: range.intervals(),
            query,
            range,
            max_series,
            series: FxHashMap::default(),
            spans: 0,
            span_filter,
            span_series: FxHashMap::default(),
            key_buf: String::new(),
        }
    }

    /// Whether the query can be answered span by span ([`Self::observe_span`]), without
    /// assembling traces: its spanset part is one filter, and the filter, the `by` fields and
    /// the function's field only look at a span and its resource. Each span then counts on
    /// its own, exactly as in its trace's spanset.
    pub fn span_local(&self) -> bool {
        self.span_filter.is_some()
    }

    /// What of each span [`Self::observe_span`] reads: the span's attributes, events and
    /// links only when the filter, a `by` field or the function's field refers to them (a
    /// store then skips them: they are most of a span's bytes).
    pub fn span_fields(&self) -> SpanFields {
        let mut fields = SpanFields::CORE;
        let mut need = |f: &Field| match f {
            Field::Attribute(a) => match a.scope {
                Scope::Unscoped | Scope::Span => fields.attributes = true,
                Scope::Event => fields.events = true,
                Scope::Link => fields.links = true,
                Scope::Resource | Scope::Instrumentation => {}
            },
            Field::Intrinsic(Intrinsic::EventName | Intrinsic::EventTimeSinceStart) => {
                fields.events = true;
            }
            Field::Intrinsic(Intrinsic::LinkTraceId | Intrinsic::LinkSpanId) => {
                fields.links = true;
            }
            Field::Intrinsic(_) => {}
        };
        let Some(filter) = &self.span_filter else {
            return SpanFields::ALL;
        };
        filter_fields(filter, &mut need);
        self.query.by.iter().for_each(&mut need);
        if let Some(f) = self.query.func.field() {
            need(f);
        }
        fields
    }

    /// Counts one span (seen outside its trace) if it matches. Only for a
    /// [`Self::span_local`] query; otherwise does nothing.
    ///
    /// # Errors
    ///
    /// [`MetricsError::TooManySeries`] when the span would make one series too many.
    pub fn observe_span(&mut self, view: &SpanView<'_>) -> Result<(), MetricsError> {
        let Some(filter) = &self.span_filter else {
            return Ok(());
        };
        let span = view.span();
        let Some(interval) = self.range.interval_of(span.start_time_unix_nano) else {
            return Ok(());
        };
        if interval >= self.intervals || !view.matches(filter) {
            return Ok(());
        }
        let value = match self.query.func.field() {
            None => None,
            Some(Field::Intrinsic(Intrinsic::Duration)) => Some(Num::Duration(
                i64::try_from(
                    span.end_time_unix_nano
                        .saturating_sub(span.start_time_unix_nano),
                )
                .unwrap_or(i64::MAX),
            )),
            Some(f) => {
                let duration = matches!(f, Field::Intrinsic(i) if i.is_duration());
                view.first_value(f).and_then(|v| number(&v, duration))
            }
        };
        let mut key = std::mem::take(&mut self.key_buf);
        key.clear();
        for f in &self.query.by {
            view.write_first_value(f, &mut key);
        }
        let result = self.record_span(view, &mut key, interval, value);
        self.key_buf = key;
        result
    }

    /// [`Self::record`] for one span whose `by` values `key` holds.
    fn record_span(
        &mut self,
        view: &SpanView<'_>,
        key: &mut String,
        interval: usize,
        value: Option<Num>,
    ) -> Result<(), MetricsError> {
        let Some(bucket) = self.counted(value) else {
            return Ok(());
        };
        if let (MetricsFn::HistogramOverTime(_), Some(b)) = (&self.query.func, bucket) {
            use std::fmt::Write;
            let _ = write!(key, "|{}", b.to_bits());
        }
        if !self.span_series.contains_key(key.as_str()) {
            let labels = self.labels_for(|i| view.first_value(&self.query.by[i]));
            let labels = self.series_labels(labels, bucket);
            let prom = prom_labels(&labels);
            self.series_for(labels)?;
            self.span_series.insert(key.clone(), prom);
        }
        let Some(acc) = self
            .span_series
            .get(key.as_str())
            .and_then(|k| self.series.get_mut(k))
        else {
            return Ok(());
        };
        accumulate(&self.query.func, acc, interval, value, bucket);
        self.spans += 1;
        Ok(())
    }

    /// The pushed-down span prefilter of the spanset part (see [`Query::prefilter`]).
    pub fn prefilter(&self) -> Option<&FilterExpr> {
        self.query.spans.prefilter()
    }

    /// How many steps the answer has.
    pub fn intervals(&self) -> usize {
        self.intervals
    }

    /// Spans counted so far.
    pub fn spans_counted(&self) -> u64 {
        self.spans
    }

    /// Series made so far.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Counts the matching spans of one whole trace.
    ///
    /// # Errors
    ///
    /// [`MetricsError::TooManySeries`] when a span would make one series too many.
    pub fn observe(
        &mut self,
        trace_id: TraceId,
        trace: &[ResourceSpans],
    ) -> Result<(), MetricsError> {
        let Some(result) = evaluate(&self.eval_query, trace_id, trace, usize::MAX) else {
            return Ok(());
        };
        let by_keys: Vec<String> = self.query.by.iter().map(|f| format!("by({f})")).collect();
        let value_field = self.query.func.field().cloned();
        let value_key = value_field.as_ref().map(|f| format!("by({f})"));
        let duration_valued = matches!(&value_field, Some(Field::Intrinsic(i)) if i.is_duration());
        for set in &result.span_sets {
            let find = |key: &str| set.attributes.iter().rev().find(|kv| kv.key == key);
            let labels = self.labels_for(|i| find(&by_keys[i]).and_then(|kv| kv.value.clone()));
            let carried_value = value_key
                .as_deref()
                .and_then(find)
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| number(v, duration_valued));
            for span in &set.spans {
                let Some(interval) = self.range.interval_of(span.start_ns) else {
                    continue;
                };
                let value = match &value_field {
                    None => None,
                    Some(Field::Intrinsic(Intrinsic::Duration)) => Some(Num::Duration(
                        i64::try_from(span.duration_ns).unwrap_or(i64::MAX),
                    )),
                    Some(_) => carried_value,
                };
                self.record(&labels, interval, value)?;
            }
        }
        Ok(())
    }

    /// The `by` labels of a group, from its values (`None`: absent).
    fn labels_for(&self, value: impl Fn(usize) -> Option<AnyValue>) -> Vec<Label> {
        if self.query.by.is_empty() {
            return vec![Label {
                key: "__name__".to_string(),
                value: string_value(self.query.func.name()),
            }];
        }
        let mut labels: Vec<Label> = self
            .query
            .by
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                value(i).map(|v| Label {
                    key: f.to_string(),
                    value: v,
                })
            })
            .collect();
        if labels.is_empty() {
            labels.push(Label {
                key: self.query.by[0].to_string(),
                value: string_value("nil"),
            });
        }
        labels
    }

    fn series_for(&mut self, labels: Vec<Label>) -> Result<&mut Acc, MetricsError> {
        let key = prom_labels(&labels);
        let limit = self.max_series;
        let per_group = match &self.query.func {
            MetricsFn::QuantileOverTime(_, qs) => qs.len().max(1),
            _ => 1,
        };
        let n = self.series.len();
        let intervals = self.intervals;
        match self.series.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                if (n + 1).saturating_mul(per_group) > limit {
                    return Err(MetricsError::TooManySeries { limit });
                }
                Ok(e.insert(Acc {
                    labels,
                    counts: vec![0.0; intervals],
                    values: vec![f64::NAN; intervals],
                    buckets: vec![Vec::new(); intervals],
                }))
            }
        }
    }

    /// Whether a span with `value` counts: `None` if not, else its bucket for histograms and
    /// quantiles (`Some(None)` for the other functions).
    fn counted(&self, value: Option<Num>) -> Option<Option<f64>> {
        match &self.query.func {
            MetricsFn::Rate | MetricsFn::CountOverTime => Some(None),
            MetricsFn::MinOverTime(_)
            | MetricsFn::MaxOverTime(_)
            | MetricsFn::SumOverTime(_)
            | MetricsFn::AvgOverTime(_) => value.map(|_| None),
            MetricsFn::HistogramOverTime(_) | MetricsFn::QuantileOverTime(..) => {
                value.and_then(Num::bucket).map(Some)
            }
        }
    }

    /// The labels of the series a span with `by` labels `labels` counts in: a histogram adds
    /// its bucket (and drops the function's name without `by`), the quantiles of a query
    /// without `by` share one unlabelled series.
    fn series_labels(&self, mut labels: Vec<Label>, bucket: Option<f64>) -> Vec<Label> {
        match (&self.query.func, bucket) {
            (MetricsFn::HistogramOverTime(_), Some(b)) => {
                if self.query.by.is_empty() {
                    labels.clear();
                }
                labels.push(Label {
                    key: "__bucket".to_string(),
                    value: double_value(b),
                });
                labels
            }
            (MetricsFn::QuantileOverTime(..), _) if self.query.by.is_empty() => Vec::new(),
            _ => labels,
        }
    }

    fn record(
        &mut self,
        labels: &[Label],
        interval: usize,
        value: Option<Num>,
    ) -> Result<(), MetricsError> {
        if interval >= self.intervals {
            return Ok(());
        }
        let Some(bucket) = self.counted(value) else {
            return Ok(());
        };
        let labels = self.series_labels(labels.to_vec(), bucket);
        let func = self.query.func.clone();
        accumulate(&func, self.series_for(labels)?, interval, value, bucket);
        self.spans += 1;
        Ok(())
    }

    /// Each series' value per step, NaN where it has none.
    fn values(&self) -> Vec<(Vec<Label>, Vec<f64>)> {
        let step_seconds = self.range.step_ns as f64 / NANOS_PER_SECOND;
        let mut out = Vec::new();
        for acc in self.series.values() {
            match &self.query.func {
                MetricsFn::Rate => out.push((
                    acc.labels.clone(),
                    acc.counts.iter().map(|c| c / step_seconds).collect(),
                )),
                MetricsFn::CountOverTime | MetricsFn::HistogramOverTime(_) => {
                    out.push((acc.labels.clone(), acc.counts.clone()))
                }
                MetricsFn::AvgOverTime(_) => out.push((
                    acc.labels.clone(),
                    acc.values
                        .iter()
                        .zip(&acc.counts)
                        .map(|(s, n)| s / n)
                        .collect(),
                )),
                MetricsFn::MinOverTime(_)
                | MetricsFn::MaxOverTime(_)
                | MetricsFn::SumOverTime(_) => out.push((acc.labels.clone(), acc.values.clone())),
                MetricsFn::QuantileOverTime(_, qs) => {
                    for q in qs {
                        let mut labels = acc.labels.clone();
                        labels.push(Label {
                            key: "p".to_string(),
                            value: double_value(*q),
                        });
                        let values = acc
                            .buckets
                            .iter()
                            .map(|b| {
                                let mut b = b.clone();
                                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                                log2_quantile(*q, &b)
                            })
                            .collect();
                        out.push((labels, values));
                    }
                }
            }
        }
        out
    }

    /// The range answer: every series with at least one sample, sorted by its labels.
    pub fn finish(&self) -> Vec<Series> {
        let mut out: Vec<Series> = self
            .values()
            .into_iter()
            .filter_map(|(labels, values)| {
                let samples: Vec<(i64, f64)> = values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_nan())
                    .map(|(i, v)| (self.range.timestamp_ms(i), *v))
                    .collect();
                (!samples.is_empty()).then(|| Series {
                    prom_labels: prom_labels(&labels),
                    labels,
                    samples,
                })
            })
            .collect();
        out.sort_by(|a, b| a.prom_labels.cmp(&b.prom_labels));
        out
    }
}

/// Calls `f` with every field a filter compares.
fn filter_fields(filter: &FilterExpr, f: &mut dyn FnMut(&Field)) {
    match filter {
        FilterExpr::True => {}
        FilterExpr::And(a, b) | FilterExpr::Or(a, b) => {
            filter_fields(a, f);
            filter_fields(b, f);
        }
        FilterExpr::Compare(c) => f(&c.field),
    }
}

/// Adds one span's `value` (its `bucket` for histograms and quantiles) to step `interval` of
/// a series.
fn accumulate(
    func: &MetricsFn,
    acc: &mut Acc,
    interval: usize,
    value: Option<Num>,
    bucket: Option<f64>,
) {
    match func {
        MetricsFn::Rate | MetricsFn::CountOverTime | MetricsFn::HistogramOverTime(_) => {
            acc.counts[interval] += 1.0;
        }
        MetricsFn::QuantileOverTime(..) => {
            let Some(bucket) = bucket else { return };
            let buckets = &mut acc.buckets[interval];
            match buckets.iter_mut().find(|(b, _)| *b == bucket) {
                Some((_, n)) => *n += 1,
                None => buckets.push((bucket, 1)),
            }
        }
        MetricsFn::MinOverTime(_)
        | MetricsFn::MaxOverTime(_)
        | MetricsFn::SumOverTime(_)
        | MetricsFn::AvgOverTime(_) => {
            let Some(v) = value.map(Num::value) else {
                return;
            };
            let old = acc.values[interval];
            acc.values[interval] = match func {
                _ if old.is_nan() => v,
                MetricsFn::MinOverTime(_) => old.min(v),
                MetricsFn::MaxOverTime(_) => old.max(v),
                _ => old + v,
            };
            acc.counts[interval] += 1.0;
        }
    }
}

/// The `p` quantile of log2 buckets `(upper bound, count)` sorted by bound, interpolated
/// exponentially inside the bucket it falls in (Tempo's `Log2Quantile`); 0 without samples.
pub fn log2_quantile(p: f64, buckets: &[(f64, u64)]) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) || buckets.is_empty() {
        return 0.0;
    }
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return 0.0;
    }
    let wanted = ((p * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    let mut at = 0usize;
    for (i, (max, count)) in buckets.iter().enumerate() {
        at = i;
        if seen + count > wanted {
            break;
        }
        seen += count;
        if seen == wanted {
            return *max;
        }
    }
    let (max, count) = buckets[at];
    let fraction = (wanted - seen) as f64 / count.max(1) as f64;
    let hi = max.log2();
    let lo = if at > 0 {
        buckets[at - 1].0.log2()
    } else {
        hi - 1.0
    };
    2f64.powf(lo + (hi - lo) * fraction)
}

#[cfg(test)]
mod tests {
    use super::super::eval::SpanView;
    use super::super::parser::parse_metrics;
    use super::*;
    use sextant_otlp_proto::attr::{kv_int, kv_str};
    use sextant_otlp_proto::proto::{Resource, ScopeSpans, Span};

    const S: u64 = 1_000_000_000;

    fn trace(service: &str, spans: &[(u64, u64)]) -> Vec<ResourceSpans> {
        vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .iter()
                    .enumerate()
                    .map(|(i, (start, dur))| Span {
                        trace_id: vec![1; 16],
                        span_id: vec![i as u8 + 1; 8],
                        name: "op".into(),
                        start_time_unix_nano: *start,
                        end_time_unix_nano: start + dur,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    fn run(q: &str, range: MetricsRange, traces: &[Vec<ResourceSpans>]) -> Vec<Series> {
        let mut m = MetricsEval::new(parse_metrics(q).unwrap(), range, 100);
        for (i, t) in traces.iter().enumerate() {
            m.observe(TraceId([i as u8 + 1; 16]), t).unwrap();
        }
        m.finish()
    }

    #[test]
    fn steps_align_and_count() {
        let r = MetricsRange::range(100 * S + 5, 160 * S, 30 * S);
        // Aligned to 90s; 90, 120, 150 and the closing 180 (as Tempo counts them).
        assert_eq!(r.intervals(), 4);
        assert_eq!(r.interval_of(100 * S + 4), None);
        assert_eq!(r.interval_of(119 * S), Some(0));
        assert_eq!(r.interval_of(120 * S), Some(1));
        assert_eq!(r.interval_of(160 * S), None);
        let traces = [
            trace("a", &[(101 * S, S), (125 * S, 2 * S)]),
            trace("b", &[(130 * S, 4 * S)]),
        ];
        let s = run("{ } | count_over_time()", r, &traces);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].prom_labels, r#"{__name__="count_over_time"}"#);
        assert_eq!(
            s[0].samples,
            vec![
                (90_000, 1.0),
                (120_000, 2.0),
                (150_000, 0.0),
                (180_000, 0.0)
            ]
        );
        let s = run("{ } | rate() by (resource.service.name)", r, &traces);
        assert_eq!(s[0].prom_labels, r#"{resource.service.name="a"}"#);
        assert_eq!(s[0].samples[1], (120_000, 1.0 / 30.0));
        let s = run("{ } | max_over_time(duration)", r, &traces);
        assert_eq!(s[0].samples, vec![(90_000, 1.0), (120_000, 4.0)]);
    }

    #[test]
    fn quantiles_interpolate_like_tempo() {
        assert_eq!(log2_quantile(0.5, &[]), 0.0);
        assert_eq!(log2_quantile(1.0, &[(2.0, 1), (4.0, 1)]), 4.0);
        assert_eq!(log2_quantile(0.5, &[(2.0, 1), (4.0, 1)]), 2.0);
        // 4 samples, p90 wants 4: three in 2^1, one in 2^3 -> the top bucket.
        assert_eq!(log2_quantile(0.9, &[(2.0, 3), (8.0, 1)]), 8.0);
        // p50 of one bucket of 4: wants 2 of 4, halfway between 2^1 and 2^2 exponentially.
        assert!((log2_quantile(0.5, &[(4.0, 4)]) - 2f64.powf(1.5)).abs() < 1e-12);
    }

    #[test]
    fn too_many_series_is_an_error() {
        let mut m = MetricsEval::new(
            parse_metrics("{ } | count_over_time() by (resource.service.name)").unwrap(),
            MetricsRange::instant(0, 1000 * S),
            1,
        );
        m.observe(TraceId([1; 16]), &trace("a", &[(S, S)])).unwrap();
        assert_eq!(
            m.observe(TraceId([2; 16]), &trace("b", &[(S, S)])),
            Err(MetricsError::TooManySeries { limit: 1 })
        );
    }

    /// Traces of varied spans: services and regions on resources, several kinds and statuses,
    /// span attributes that are sometimes missing (an int, a string, an exactly representable
    /// double, so sums do not depend on order), an event on some spans.
    fn varied_traces() -> Vec<Vec<ResourceSpans>> {
        use sextant_otlp_proto::proto::common::{any_value::Value as V, AnyValue, KeyValue};
        use sextant_otlp_proto::proto::span::Event;
        use sextant_otlp_proto::proto::Status;
        let mut seed = 0x5eed_u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let double = |key: &str, v: f64| KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(V::DoubleValue(v)),
            }),
            ..Default::default()
        };
        (0..60u64)
            .map(|t| {
                (0..1 + next(3))
                    .map(|r| {
                        let service = ["api", "db", "web"][next(3) as usize];
                        let mut resource = vec![kv_str("service.name", service)];
                        if next(2) == 0 {
                            resource.push(kv_str("region", ["eu", "us"][next(2) as usize]));
                        }
                        let spans = (0..1 + next(6))
                            .map(|i| {
                                let start = (next(600) + 1) * S + next(1000);
                                let mut attributes = Vec::new();
                                if next(4) != 0 {
                                    let code = [200, 404, 500, 503][next(4) as usize];
                                    attributes.push(kv_int("http.status_code", code));
                                }
                                if next(3) != 0 {
                                    let route = ["/a", "/b", "/c/d"][next(3) as usize];
                                    attributes.push(kv_str("route", route));
                                }
                                if next(2) == 0 {
                                    attributes.push(double("load", next(16) as f64 * 0.25));
                                }
                                Span {
                                    trace_id: vec![t as u8 + 1; 16],
                                    span_id: [t as u8, r as u8, i as u8, 1, 2, 3, 4, 5].to_vec(),
                                    name: ["GET", "POST", "query"][next(3) as usize].into(),
                                    kind: next(6) as i32,
                                    start_time_unix_nano: start,
                                    end_time_unix_nano: start + (1 << next(34)),
                                    attributes,
                                    events: if next(5) == 0 {
                                        vec![Event {
                                            name: "retry".into(),
                                            time_unix_nano: start,
                                            ..Default::default()
                                        }]
                                    } else {
                                        Vec::new()
                                    },
                                    status: Some(Status {
                                        code: next(3) as i32,
                                        message: String::new(),
                                    }),
                                    ..Default::default()
                                }
                            })
                            .collect();
                        ResourceSpans {
                            resource: Some(Resource {
                                attributes: resource,
                                ..Default::default()
                            }),
                            scope_spans: vec![ScopeSpans {
                                spans,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn span_by_span_counts_what_the_trace_path_counts() {
        let traces = varied_traces();
        let ranges = [
            MetricsRange::range(0, 700 * S, 60 * S),
            MetricsRange::range(30 * S, 400 * S, 7 * S),
            MetricsRange::instant(0, 700 * S),
        ];
        let queries = [
            "{ } | rate()",
            "{ } | count_over_time() by (resource.service.name)",
            "{ status = error } | rate() by (resource.service.name, span.route)",
            "{ span.http.status_code >= 500 } | count_over_time() by (span.http.status_code)",
            "{ resource.region = \"eu\" || kind = server } | rate() by (name, kind)",
            "{ .route =~ \"/c.*\" && duration > 1ms } | count_over_time() by (.region)",
            "{ event:name = \"retry\" } | count_over_time() by (status)",
            "{ span.route != \"/a\" } | min_over_time(duration) by (resource.service.name)",
            "{ } | max_over_time(span.http.status_code) by (span.route)",
            "{ } | avg_over_time(span.load) by (resource.service.name)",
            "{ name = \"GET\" } | sum_over_time(span.load)",
            "{ } | histogram_over_time(duration) by (resource.service.name)",
            "{ kind != internal } | quantile_over_time(duration, 0.5, 0.9, 0.99) by (name)",
            "{ span.missing = 1 } | rate()",
            "{ } | count_over_time() by (span.missing)",
        ];
        for q in queries {
            for range in ranges {
                let query = parse_metrics(q).unwrap();
                let mut by_trace = MetricsEval::new(query.clone(), range, 1000);
                let mut by_span = MetricsEval::new(query, range, 1000);
                assert!(by_span.span_local(), "{q} should be span-local");
                // Spans as a store gives them: without what span_fields() leaves out.
                let fields = by_span.span_fields();
                for (i, t) in traces.iter().enumerate() {
                    by_trace.observe(TraceId([i as u8 + 1; 16]), t).unwrap();
                    for rs in t {
                        for ss in &rs.scope_spans {
                            for span in &ss.spans {
                                let mut span = span.clone();
                                if !fields.attributes {
                                    span.attributes.clear();
                                }
                                if !fields.events {
                                    span.events.clear();
                                }
                                if !fields.links {
                                    span.links.clear();
                                }
                                by_span
                                    .observe_span(&SpanView::new(&span, rs.resource.as_ref()))
                                    .unwrap();
                            }
                        }
                    }
                }
                let (a, b) = (by_trace.finish(), by_span.finish());
                assert!(!a.is_empty() || q.contains("missing = 1"), "{q}: no series");
                assert_eq!(by_span.spans_counted(), by_trace.spans_counted(), "{q}");
                let shape = |s: &[Series]| -> Vec<(String, Vec<(i64, u64)>)> {
                    s.iter()
                        .map(|s| {
                            let samples = s.samples.iter().map(|(t, v)| (*t, v.to_bits()));
                            (s.prom_labels.clone(), samples.collect())
                        })
                        .collect()
                };
                assert_eq!(shape(&b), shape(&a), "{q} over {range:?}");
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.labels, y.labels, "{q}");
                }
            }
        }
    }

    #[test]
    fn span_fields_are_what_the_query_reads() {
        let fields = |q: &str| {
            let m = MetricsEval::new(parse_metrics(q).unwrap(), MetricsRange::instant(0, S), 10);
            let f = m.span_fields();
            (f.attributes, f.events, f.links)
        };
        assert_eq!(
            fields("{ } | rate() by (resource.service.name)"),
            (false, false, false)
        );
        assert_eq!(
            fields("{ status = error && kind = server } | rate()"),
            (false, false, false)
        );
        assert_eq!(
            fields("{ } | quantile_over_time(duration, 0.9)"),
            (false, false, false)
        );
        assert_eq!(fields("{ span.a = 1 } | rate()"), (true, false, false));
        assert_eq!(fields("{ .a = 1 } | rate()"), (true, false, false));
        assert_eq!(fields("{ } | rate() by (span.a)"), (true, false, false));
        assert_eq!(fields("{ } | max_over_time(span.a)"), (true, false, false));
        assert_eq!(
            fields("{ event:name = \"x\" } | rate()"),
            (false, true, false)
        );
        assert_eq!(
            fields("{ event.a = 1 || link.b = 2 } | rate()"),
            (false, true, true)
        );
        assert_eq!(
            fields("{ link:traceID = \"ab\" } | rate()"),
            (false, false, true)
        );
        // Not span-local: everything.
        assert_eq!(
            fields("{ trace:duration > 1s } | rate()"),
            (true, true, true)
        );
    }

    #[test]
    fn queries_needing_the_trace_are_not_span_local() {
        for q in [
            "{ trace:duration > 1s } | rate()",
            "{ } | rate() by (trace:rootService)",
            "{ instrumentation.name = \"x\" } | rate()",
            "{ } | count_over_time() by (instrumentation.name)",
            "{ .a = 1 } >> { .b = 2 } | rate()",
            "{ .a = 1 } && { .b = 2 } | rate()",
            "{ } | count() > 2 | rate()",
            "{ } | max_over_time(trace:duration)",
        ] {
            let Ok(query) = parse_metrics(q) else {
                panic!("{q} does not parse")
            };
            let m = MetricsEval::new(query, MetricsRange::instant(0, S), 10);
            assert!(!m.span_local(), "{q} should need its trace");
        }
    }

    #[test]
    fn missing_by_values_are_dropped_or_nil() {
        let r = MetricsRange::instant(0, 1000 * S);
        let traces = [trace("a", &[(S, S)])];
        let s = run("{ } | count_over_time() by (span.missing)", r, &traces);
        assert_eq!(s[0].prom_labels, r#"{span.missing="<nil>"}"#);
        assert_eq!(s[0].labels[0].value, string_value("nil"));
        let s = run(
            "{ } | count_over_time() by (span.missing, resource.service.name)",
            r,
            &traces,
        );
        assert_eq!(s[0].prom_labels, r#"{resource.service.name="a"}"#);
        assert_eq!(s[0].samples, vec![(0, 1.0)]);
        // Spans without a numeric value have no min; a value below 2 ns has no bucket.
        let s = run("{ } | min_over_time(span.missing)", r, &traces);
        assert!(s.is_empty());
        let s = run(
            "{ } | histogram_over_time(duration)",
            r,
            &[trace("a", &[(S, 1)])],
        );
        assert!(s.is_empty());
    }
}
