//! Limits the store applies to what it is asked to write: the size of a trace (bytes and
//! spans) and the length of attribute values.
//!
//! **Trace size.** Like Tempo's `max_bytes_per_trace`, the limit applies to the *live* part of
//! a trace: the spans still in the write-ahead log. The store keeps, in memory, the bytes
//! (the length of each span's protobuf encoding) and the spans of every trace in the log; an
//! entry leaves that map when the writes holding the trace are cut into a block. A write that
//! would take a trace over a limit has that trace's spans refused (the write's other traces are
//! stored) and counted in the receipt, whose message names the trace and the limit. Once a
//! trace has been cut into a block its count starts again from zero, so a long-running trace
//! can grow past the limit across blocks, as in Tempo. The map is rebuilt from the log when the
//! store opens, and holds at most [`Limits::max_tracked_traces`] traces: past that, new traces
//! are stored without being counted (and a warning says so).
//!
//! **Attribute values.** String values (of resources, spans, span events and span links, and
//! strings inside their arrays and key-value lists) longer than
//! [`Limits::max_attribute_value_length`] bytes are cut at a UTF-8 character boundary, and the
//! owner gets the attribute [`TRUNCATED_ATTRIBUTES`]: the keys that were cut.
//!
//! **Cost.** A batch is never decoded unless it must change: a walk over the protobuf reads
//! the keys and lengths down to each span and the span's trace id (a message no longer than the
//! attribute limit cannot hold a long value, so ordinary spans are not looked into). Only a part
//! with a long value is decoded, fixed and encoded again; only a part holding a refused trace
//! is rebuilt, by copying the bytes of the spans it keeps.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use prost::bytes::Bytes;
use prost::Message as _;
use rustc_hash::{FxHashMap, FxHashSet};
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::{AnyValue, ArrayValue, KeyValue, TracesData};
use sextant_otlp_proto::{SpanBatch, TraceId};

use crate::block::split;
use crate::error::StoreError;
use crate::types::RejectedTrace;

/// The attribute that lists, on a span, resource, event or link, the keys whose values the
/// store truncated.
pub const TRUNCATED_ATTRIBUTES: &str = "sextant.truncated_attributes";

/// Warnings about refused traces are logged at most this often.
const WARN_EVERY_NS: u64 = 10_000_000_000;

/// What the store limits (0 turns a limit off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of spans (their protobuf encoding) the live part of a trace may hold:
    /// Tempo's `max_bytes_per_trace`, whose default (5,000,000) this is.
    pub max_bytes_per_trace: u64,
    /// The most spans the live part of a trace may hold (default 0: unlimited; the byte limit
    /// already bounds a trace).
    pub max_spans_per_trace: u64,
    /// String attribute values longer than this many bytes are truncated: Tempo's distributor
    /// `max_attribute_bytes`, whose default (2048) this is.
    pub max_attribute_value_length: u64,
    /// The most traces whose live size is counted. An entry is 24 bytes in a hash table at
    /// most 7/8 full, so the default (500,000) bounds the table at 2^20 slots, about 26 MiB;
    /// a log of 200,000 spans of traces of 8 spans needs about 25,000 entries (1 MiB).
    pub max_tracked_traces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes_per_trace: 5_000_000,
            max_spans_per_trace: 0,
            max_attribute_value_length: 2048,
            max_tracked_traces: 500_000,
        }
    }
}

impl Limits {
    /// No limit at all.
    pub fn off() -> Self {
        Self {
            max_bytes_per_trace: 0,
            max_spans_per_trace: 0,
            max_attribute_value_length: 0,
            max_tracked_traces: 0,
        }
    }

    /// Whether trace sizes are counted.
    pub fn tracks_traces(&self) -> bool {
        (self.max_bytes_per_trace > 0 || self.max_spans_per_trace > 0)
            && self.max_tracked_traces > 0
    }
}

/// What the limits did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStats {
    /// Spans refused because their trace would exceed `max_bytes_per_trace`.
    pub discarded_trace_too_large: u64,
    /// Spans refused because their trace would exceed `max_spans_per_trace`.
    pub discarded_trace_too_many_spans: u64,
    /// Attributes whose value was truncated.
    pub truncated_attributes: u64,
    /// Traces whose live size is counted now.
    pub tracked_traces: u64,
    /// Parts of writes (requests) the limits had to rewrite: decoded and encoded again to
    /// truncate values, or rebuilt without a refused trace. Writes within the limits are
    /// stored as they came and never counted here.
    pub rewritten_parts: u64,
}

/// The live size of one trace.
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    bytes: u32,
    spans: u32,
}

/// Bytes and spans per trace, of one write or one cut.
#[derive(Debug, Default)]
pub(crate) struct TraceSizes {
    slots: FxHashMap<TraceId, usize>,
    /// In the order the traces first appear.
    sizes: Vec<(TraceId, u64, u64)>,
    /// The slot of the last span's trace: a trace's spans mostly come together, and this
    /// saves a hash lookup per span.
    last: Option<(TraceId, usize)>,
}

impl TraceSizes {
    pub(crate) fn add(&mut self, id: TraceId, bytes: usize) {
        let slot = match self.last {
            Some((last, slot)) if last == id => slot,
            _ => {
                let sizes = &mut self.sizes;
                let slot = *self.slots.entry(id).or_insert_with(|| {
                    sizes.push((id, 0, 0));
                    sizes.len() - 1
                });
                self.last = Some((id, slot));
                slot
            }
        };
        let s = &mut self.sizes[slot];
        s.1 += bytes as u64;
        s.2 += 1;
    }

    /// Adds the spans of `TracesData` bytes.
    pub(crate) fn add_data(&mut self, data: &[u8]) -> Result<(), String> {
        split::for_each_span(data, &mut |id, len| {
            if let Some(id) = id {
                self.add(id, len);
            }
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
}

/// A batch the limits were applied to.
pub(crate) struct Limited {
    pub batch: SpanBatch,
    /// What was added to the live sizes (to give back when the write fails).
    pub reserved: TraceSizes,
    pub rejected_spans: u64,
    pub rejection: String,
    /// The traces refused, in the order they first appear in the write (their spans add up
    /// to `rejected_spans`).
    pub refused: Vec<RejectedTrace>,
}

/// One trace refused by a write.
struct Refusal {
    id: TraceId,
    spans: u64,
    /// The limit's name, its value and what the trace would have reached.
    limit: &'static str,
    max: u64,
    would_reach: u64,
}

/// Applies [`Limits`] to writes and keeps the live size of traces.
pub(crate) struct TraceLimiter {
    limits: Limits,
    live: Mutex<FxHashMap<TraceId, Live>>,
    discarded_bytes: AtomicU64,
    discarded_spans: AtomicU64,
    truncated: AtomicU64,
    rewritten: AtomicU64,
    last_warn_ns: AtomicU64,
    /// Refused spans and untracked traces since the last warning.
    unwarned_spans: AtomicU64,
    untracked: AtomicU64,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl TraceLimiter {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            live: Mutex::new(FxHashMap::default()),
            discarded_bytes: AtomicU64::new(0),
            discarded_spans: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            rewritten: AtomicU64::new(0),
            last_warn_ns: AtomicU64::new(0),
            unwarned_spans: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn stats(&self) -> LimitStats {
        LimitStats {
            discarded_trace_too_large: self.discarded_bytes.load(Ordering::Relaxed),
            discarded_trace_too_many_spans: self.discarded_spans.load(Ordering::Relaxed),
            truncated_attributes: self.truncated.load(Ordering::Relaxed),
            tracked_traces: self.live.lock().len() as u64,
            rewritten_parts: self.rewritten.load(Ordering::Relaxed),
        }
    }

    /// Counts spans already in the log (when the store opens) without checking them.
    pub(crate) fn add_existing(&self, sizes: &TraceSizes) {
        if !self.limits.tracks_traces() {
            return;
        }
        let mut live = self.live.lock();
        for &(id, bytes, spans) in &sizes.sizes {
            if live.len() >= self.limits.max_tracked_traces && !live.contains_key(&id) {
                continue;
            }
            let e = live.entry(id).or_default();
            e.bytes = e.bytes.saturating_add(clamp32(bytes));
            e.spans = e.spans.saturating_add(clamp32(spans));
        }
    }

    /// Gives back live size: the write that reserved it failed, or its spans were cut into a
    /// block. A trace left with no live spans leaves the map.
    pub(crate) fn release(&self, sizes: &TraceSizes) {
        if sizes.is_empty() || !self.limits.tracks_traces() {
            return;
        }
        let mut live = self.live.lock();
        for &(id, bytes, spans) in &sizes.sizes {
            let Some(e) = live.get_mut(&id) else { continue };
            e.bytes = e.bytes.saturating_sub(clamp32(bytes));
            e.spans = e.spans.saturating_sub(clamp32(spans));
            if e.spans == 0 {
                live.remove(&id);
            }
        }
        // Give memory back after a burst of traces.
        if live.capacity() > 4096 && live.len() < live.capacity() / 4 {
            let len = live.len();
            live.shrink_to(len * 2);
        }
    }

    /// Truncates long attribute values, then refuses the traces that would exceed a size
    /// limit and reserves the live size of the others.
    pub(crate) fn apply(&self, mut batch: SpanBatch) -> Result<Limited, StoreError> {
        let limits = self.limits;
        let mut limited = Limited {
            batch: SpanBatch::default(),
            reserved: TraceSizes::default(),
            rejected_spans: 0,
            rejection: String::new(),
            refused: Vec::new(),
        };
        if limits.max_attribute_value_length == 0 && !limits.tracks_traces() {
            limited.batch = batch;
            return Ok(limited);
        }
        if !batch.decoded.is_empty() {
            // Decoded spans (JSON requests, changed spans) become one encoded part, as the
            // store would encode them anyway.
            let data = TracesData {
                resource_spans: std::mem::take(&mut batch.decoded),
            };
            batch.recorded.resize(batch.encoded.len(), None);
            batch.encoded.push(Bytes::from(data.encode_to_vec()));
            batch.recorded.push(None);
        }
        if limits.max_attribute_value_length > 0 {
            for i in 0..batch.encoded.len() {
                let max = limits.max_attribute_value_length;
                let Some((fixed, cut)) = truncate_long_values(&batch.encoded[i], max)? else {
                    continue;
                };
                self.truncated.fetch_add(cut, Ordering::Relaxed);
                self.rewritten.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(attributes = cut, limit = max, "attribute values truncated");
                batch.encoded[i] = Bytes::from(fixed);
                if let Some(r) = batch.recorded.get_mut(i) {
                    *r = None;
                }
            }
        }
        if !limits.tracks_traces() {
            limited.batch = batch;
            return Ok(limited);
        }
        let mut sizes = TraceSizes::default();
        for part in &batch.encoded {
            sizes.add_data(part).map_err(invalid)?;
        }
        let refusals = self.reserve(&sizes, &mut limited.reserved);
        if !refusals.is_empty() {
            let refused: FxHashSet<TraceId> = refusals.iter().map(|r| r.id).collect();
            self.drop_refused(&mut batch, &refused)?;
            let spans: u64 = refusals.iter().map(|r| r.spans).sum();
            batch.span_count = batch.span_count.saturating_sub(spans as usize);
            limited.rejected_spans = spans;
            limited.rejection = describe(&refusals, spans);
            limited.refused = refusals
                .iter()
                .map(|r| RejectedTrace {
                    trace_id: r.id,
                    spans: r.spans,
                    reason: reason(r),
                })
                .collect();
            self.count_refusals(&refusals);
        }
        limited.batch = batch;
        Ok(limited)
    }

    /// Decides, under one lock, which traces of a write fit; reserves those.
    fn reserve(&self, sizes: &TraceSizes, reserved: &mut TraceSizes) -> Vec<Refusal> {
        let limits = &self.limits;
        let mut refusals = Vec::new();
        let mut untracked = 0u64;
        let mut live = self.live.lock();
        for &(id, bytes, spans) in &sizes.sizes {
            let current = live.get(&id).copied().unwrap_or_default();
            let total_bytes = current.bytes as u64 + bytes;
            let total_spans = current.spans as u64 + spans;
            let over = if limits.max_bytes_per_trace > 0 && total_bytes > limits.max_bytes_per_trace
            {
                Some((
                    "max_bytes_per_trace",
                    limits.max_bytes_per_trace,
                    total_bytes,
                ))
            } else if limits.max_spans_per_trace > 0 && total_spans > limits.max_spans_per_trace {
                Some((
                    "max_spans_per_trace",
                    limits.max_spans_per_trace,
                    total_spans,
                ))
            } else {
                None
            };
            if let Some((limit, max, would_reach)) = over {
                refusals.push(Refusal {
                    id,
                    spans,
                    limit,
                    max,
                    would_reach,
                });
                continue;
            }
            if live.len() >= limits.max_tracked_traces && !live.contains_key(&id) {
                untracked += 1;
                continue;
            }
            let e = live.entry(id).or_default();
            e.bytes = clamp32(total_bytes);
            e.spans = clamp32(total_spans);
            reserved.sizes.push((id, bytes, spans));
        }
        drop(live);
        if untracked > 0 {
            self.untracked.fetch_add(untracked, Ordering::Relaxed);
            self.maybe_warn(None);
        }
        refusals
    }

    /// Removes the refused traces' spans from the parts holding them.
    fn drop_refused(
        &self,
        batch: &mut SpanBatch,
        refused: &FxHashSet<TraceId>,
    ) -> Result<(), StoreError> {
        let mut i = 0;
        while i < batch.encoded.len() {
            let mut holds = false;
            split::for_each_span(&batch.encoded[i], &mut |id, _| {
                holds |= id.is_some_and(|id| refused.contains(&id));
            })
            .map_err(invalid)?;
            if !holds {
                i += 1;
                continue;
            }
            let kept = split::retain_spans(&batch.encoded[i], &mut |id| {
                id.is_none_or(|id| !refused.contains(&id))
            })
            .map_err(invalid)?;
            if kept.is_empty() {
                batch.encoded.remove(i);
                if i < batch.recorded.len() {
                    batch.recorded.remove(i);
                }
                continue;
            }
            batch.encoded[i] = Bytes::from(kept);
            self.rewritten.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = batch.recorded.get_mut(i) {
                *r = None;
            }
            i += 1;
        }
        Ok(())
    }

    fn count_refusals(&self, refusals: &[Refusal]) {
        for r in refusals {
            let counter = if r.limit == "max_bytes_per_trace" {
                &self.discarded_bytes
            } else {
                &self.discarded_spans
            };
            counter.fetch_add(r.spans, Ordering::Relaxed);
        }
        let spans: u64 = refusals.iter().map(|r| r.spans).sum();
        self.unwarned_spans.fetch_add(spans, Ordering::Relaxed);
        self.maybe_warn(refusals.first());
    }

    /// Logs what was refused (or not counted) since the last warning, at most every
    /// [`WARN_EVERY_NS`].
    fn maybe_warn(&self, example: Option<&Refusal>) {
        let now = now_ns();
        let last = self.last_warn_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) < WARN_EVERY_NS
            || self
                .last_warn_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let spans = self.unwarned_spans.swap(0, Ordering::Relaxed);
        let untracked = self.untracked.swap(0, Ordering::Relaxed);
        if let Some(r) = example {
            tracing::warn!(
                trace_id = %r.id.to_hex(),
                limit = r.limit,
                max = r.max,
                would_reach = r.would_reach,
                spans,
                "spans refused: their trace is over a store limit (counted in sextant_store_discarded_spans_total; further warnings are held back for 10s)"
            );
        } else if untracked > 0 {
            tracing::warn!(
                untracked,
                max_tracked_traces = self.limits.max_tracked_traces,
                "too many live traces to count them all: new traces are stored without a size limit"
            );
        }
    }
}

fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn invalid(problem: String) -> StoreError {
    StoreError::InvalidData(format!("invalid protobuf: {problem}"))
}

/// Why one trace was refused: the trace, the limit and its spans refused.
fn reason(r: &Refusal) -> String {
    let unit = if r.limit == "max_bytes_per_trace" {
        "bytes"
    } else {
        "spans"
    };
    format!(
        "TRACE_TOO_LARGE: trace {} would reach {} {unit}, over {} {}; {} spans refused",
        r.id.to_hex(),
        r.would_reach,
        r.limit,
        r.max,
        r.spans
    )
}

/// The receipt's message: the first trace refused, and how many others.
fn describe(refusals: &[Refusal], spans: u64) -> String {
    let Some(first) = refusals.first() else {
        return String::new();
    };
    let mut text = reason(first);
    if refusals.len() > 1 {
        text.push_str(&format!(
            " (and {} more traces over a limit: {spans} spans refused in all)",
            refusals.len() - 1
        ));
    }
    text
}

/// Truncates the string attribute values longer than `max_len` bytes in `TracesData` (or
/// `ExportTraceServiceRequest`) bytes, as the store does before storing them: `None` when no
/// value is longer (the bytes are stored as they are, and were not decoded), else the bytes
/// encoded again and how many attributes were truncated. `max_len` 0 truncates nothing.
pub fn truncate_long_values(
    data: &[u8],
    max_len: u64,
) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    if max_len == 0 {
        return Ok(None);
    }
    let max = usize::try_from(max_len).unwrap_or(usize::MAX);
    if !split::has_long_value(data, max).map_err(invalid)? {
        return Ok(None);
    }
    truncate_part(data, max).map(Some)
}

/// Decodes a part, truncates its long values, and encodes it again; returns it with the
/// number of attributes truncated.
fn truncate_part(part: &[u8], max: usize) -> Result<(Vec<u8>, u64), StoreError> {
    let mut data = TracesData::decode(part)
        .map_err(|e| StoreError::InvalidData(format!("invalid protobuf: {e}")))?;
    let mut cut = 0u64;
    for rs in &mut data.resource_spans {
        if let Some(resource) = rs.resource.as_mut() {
            cut += truncate_attributes(&mut resource.attributes, max);
        }
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                cut += truncate_attributes(&mut span.attributes, max);
                for event in &mut span.events {
                    cut += truncate_attributes(&mut event.attributes, max);
                }
                for link in &mut span.links {
                    cut += truncate_attributes(&mut link.attributes, max);
                }
            }
        }
    }
    Ok((data.encode_to_vec(), cut))
}

/// Truncates the long values of one owner's attributes and marks them; returns how many
/// attributes were cut.
pub(crate) fn truncate_attributes(attributes: &mut Vec<KeyValue>, max: usize) -> u64 {
    let mut keys: Vec<String> = Vec::new();
    for kv in attributes.iter_mut() {
        if kv.key == TRUNCATED_ATTRIBUTES {
            continue;
        }
        if let Some(value) = kv.value.as_mut() {
            if truncate_value(value, max, 0) && !keys.contains(&kv.key) {
                keys.push(kv.key.clone());
            }
        }
    }
    if keys.is_empty() {
        return 0;
    }
    let cut = keys.len() as u64;
    let marker = attributes.iter_mut().find_map(|kv| {
        if kv.key != TRUNCATED_ATTRIBUTES {
            return None;
        }
        match kv.value.as_mut().and_then(|v| v.value.as_mut()) {
            Some(Value::ArrayValue(a)) => Some(a),
            _ => None,
        }
    });
    let as_value = |k: String| AnyValue {
        value: Some(Value::StringValue(k)),
    };
    match marker {
        Some(array) => {
            for k in keys {
                let present = array
                    .values
                    .iter()
                    .any(|v| matches!(&v.value, Some(Value::StringValue(s)) if *s == k));
                if !present {
                    array.values.push(as_value(k));
                }
            }
        }
        None => {
            attributes.retain(|kv| kv.key != TRUNCATED_ATTRIBUTES);
            attributes.push(KeyValue {
                key: TRUNCATED_ATTRIBUTES.to_string(),
                value: Some(AnyValue {
                    value: Some(Value::ArrayValue(ArrayValue {
                        values: keys.into_iter().map(as_value).collect(),
                    })),
                }),
                ..Default::default()
            });
        }
    }
    cut
}

/// Truncates the strings longer than `max` bytes in a value (and in its arrays and lists) at a
/// character boundary; returns whether one was.
fn truncate_value(value: &mut AnyValue, max: usize, depth: u32) -> bool {
    if depth > 100 {
        return false;
    }
    match value.value.as_mut() {
        Some(Value::StringValue(s)) if s.len() > max => {
            let mut at = max;
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.truncate(at);
            true
        }
        Some(Value::ArrayValue(a)) => {
            let mut any = false;
            for v in &mut a.values {
                any |= truncate_value(v, max, depth + 1);
            }
            any
        }
        Some(Value::KvlistValue(l)) => {
            let mut any = false;
            for kv in &mut l.values {
                if let Some(v) = kv.value.as_mut() {
                    any |= truncate_value(v, max, depth + 1);
                }
            }
            any
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::StringValue(v.to_string())),
        }
    }

    #[test]
    fn cuts_at_a_char_boundary_and_marks_the_keys() {
        // "é" is two bytes: a cut at 3 bytes falls inside the second one.
        let mut attrs = vec![
            KeyValue {
                key: "a".into(),
                value: Some(s("éé")),
                ..Default::default()
            },
            KeyValue {
                key: "short".into(),
                value: Some(s("ok")),
                ..Default::default()
            },
        ];
        assert_eq!(truncate_attributes(&mut attrs, 3), 1);
        assert_eq!(attrs[0].value, Some(s("é")));
        assert_eq!(attrs[1].value, Some(s("ok")));
        assert_eq!(attrs[2].key, TRUNCATED_ATTRIBUTES);
        assert_eq!(
            attrs[2].value,
            Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![s("a")]
                }))
            })
        );
    }
}
