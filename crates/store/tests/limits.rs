//! The store's write limits: trace size (bytes and spans of the live part of a trace) and
//! attribute value length, on a real store in a temp dir.

use std::path::Path;
use std::time::Duration;

use prost::Message as _;
use sextant_otlp_proto::attr::kv_str;
use sextant_otlp_proto::proto::any_value::Value;
use sextant_otlp_proto::proto::span::{Event, Link};
use sextant_otlp_proto::proto::{
    AnyValue, ArrayValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span,
};
use sextant_otlp_proto::{SpanBatch, TraceId};
use sextant_store::*;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn open(dir: &Path, limits: Limits) -> SledStore {
    let mut c = StoreConfig::new(dir);
    // The tests cut blocks themselves.
    c.blocks.maintenance_interval = Duration::from_secs(3600);
    c.limits = limits;
    SledStore::open(c).unwrap()
}

fn limits(max_bytes: u64, max_spans: u64, max_value: u64) -> Limits {
    Limits {
        max_bytes_per_trace: max_bytes,
        max_spans_per_trace: max_spans,
        max_attribute_value_length: max_value,
        ..Limits::default()
    }
}

fn tid(n: u8) -> TraceId {
    TraceId::from_slice(&[n; 16]).unwrap()
}

/// A span of trace `trace` carrying `padding` bytes in an attribute.
fn span(trace: u8, id: u32, padding: usize) -> Span {
    let mut span_id = [trace; 8];
    span_id[4..].copy_from_slice(&id.to_be_bytes());
    let start = now_ns() - 1_000_000_000;
    Span {
        trace_id: vec![trace; 16],
        span_id: span_id.to_vec(),
        name: format!("op-{id}"),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![kv_str("pad", &"p".repeat(padding))],
        ..Default::default()
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        schema_url: String::new(),
    }
}

/// An encoded request, as the receivers pass it on.
fn encoded(rs: Vec<ResourceSpans>) -> SpanBatch {
    let n = sextant_otlp_proto::span_count(&rs);
    let bytes = ExportTraceServiceRequest { resource_spans: rs }.encode_to_vec();
    SpanBatch::from_encoded(bytes.into(), n)
}

fn span_bytes(spans: &[Span]) -> u64 {
    spans.iter().map(|s| s.encoded_len() as u64).sum()
}

fn span_ids(store: &SledStore, id: TraceId) -> Vec<Vec<u8>> {
    let mut ids: Vec<Vec<u8>> = store
        .trace(id, TimeWindow::all())
        .unwrap()
        .unwrap_or_default()
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .map(|s| s.span_id.clone())
        .collect();
    ids.sort();
    ids
}

fn ids_of(spans: &[Span]) -> Vec<Vec<u8>> {
    let mut ids: Vec<Vec<u8>> = spans.iter().map(|s| s.span_id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_write_over_max_bytes_refuses_that_trace_and_stores_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(10_000, 0, 0));
    // Trace 1 takes 6 KB in a first write: within the limit.
    let first: Vec<Span> = (0..6).map(|i| span(1, i, 1000)).collect();
    let r = store
        .write(encoded(vec![resource_spans("a", first.clone())]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (6, 0), "{r:?}");

    // A second write brings 5 KB more of trace 1 (over 10,000 bytes) and two small traces,
    // from two resources; trace 1's spans are spread over both.
    let more: Vec<Span> = (10..15).map(|i| span(1, i, 1000)).collect();
    let t2: Vec<Span> = (0..3).map(|i| span(2, i, 10)).collect();
    let t3: Vec<Span> = (0..2).map(|i| span(3, i, 10)).collect();
    let mut res_a = more[..3].to_vec();
    res_a.extend(t2.clone());
    let mut res_b = t3.clone();
    res_b.extend(more[3..].to_vec());
    let r = store
        .write(encoded(vec![
            resource_spans("a", res_a),
            resource_spans("b", res_b),
        ]))
        .await
        .unwrap();
    assert_eq!(r.accepted_spans, 5, "{r:?}");
    assert_eq!(r.rejected_spans, 5, "{r:?}");
    let would_reach = span_bytes(&first) + span_bytes(&more);
    assert_eq!(
        r.rejection,
        format!(
            "TRACE_TOO_LARGE: trace {} would reach {would_reach} bytes, over max_bytes_per_trace 10000; 5 spans refused",
            tid(1).to_hex()
        )
    );
    // The receipt names the refused trace, with its spans and the same reason.
    assert_eq!(
        r.rejected_traces,
        vec![RejectedTrace {
            trace_id: tid(1),
            spans: 5,
            reason: r.rejection.clone(),
        }]
    );

    // The other traces are stored; trace 1 keeps its earlier spans, only.
    assert_eq!(span_ids(&store, tid(2)), ids_of(&t2));
    assert_eq!(span_ids(&store, tid(3)), ids_of(&t3));
    assert_eq!(span_ids(&store, tid(1)), ids_of(&first));
    let stats = store.limit_stats();
    assert_eq!(stats.discarded_trace_too_large, 5, "{stats:?}");
    assert_eq!(stats.discarded_trace_too_many_spans, 0, "{stats:?}");
    assert_eq!(stats.tracked_traces, 3, "{stats:?}");
    assert_eq!(store.stats().spans_written, 11);
}

#[tokio::test]
async fn several_traces_over_the_limit_name_the_first_and_count_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(5_000, 0, 0));
    let mut spans: Vec<Span> = (0..2).map(|i| span(7, i, 10)).collect();
    spans.extend((0..6).map(|i| span(4, i, 1000)));
    spans.extend((0..7).map(|i| span(5, i, 1000)));
    // Decoded spans (a JSON request) are limited too.
    let r = store
        .write(SpanBatch::from_decoded(vec![resource_spans("a", spans)]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (2, 13), "{r:?}");
    assert!(
        r.rejection.starts_with(&format!(
            "TRACE_TOO_LARGE: trace {} would reach",
            tid(4).to_hex()
        )) && r.rejection.ends_with(
            "; 6 spans refused (and 1 more traces over a limit: 13 spans refused in all)"
        ),
        "{}",
        r.rejection
    );
    // Every refused trace is named, in the order of the write, each with its own reason.
    let named: Vec<(TraceId, u64)> = r
        .rejected_traces
        .iter()
        .map(|t| (t.trace_id, t.spans))
        .collect();
    assert_eq!(named, vec![(tid(4), 6), (tid(5), 7)]);
    for t in &r.rejected_traces {
        assert!(
            t.reason.starts_with(&format!(
                "TRACE_TOO_LARGE: trace {} would reach",
                t.trace_id.to_hex()
            )) && t.reason.contains("over max_bytes_per_trace 5000")
                && t.reason.ends_with(&format!("; {} spans refused", t.spans)),
            "{}",
            t.reason
        );
    }
    assert!(r.rejection.starts_with(&r.rejected_traces[0].reason));
    assert_eq!(span_ids(&store, tid(7)).len(), 2);
    assert!(store.trace(tid(4), TimeWindow::all()).unwrap().is_none());
    assert!(store.trace(tid(5), TimeWindow::all()).unwrap().is_none());
}

#[tokio::test]
async fn the_span_limit_counts_the_live_spans_of_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(0, 3, 0));
    let r = store
        .write(encoded(vec![resource_spans(
            "a",
            (0..2).map(|i| span(1, i, 0)).collect(),
        )]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (2, 0), "{r:?}");
    assert!(r.rejected_traces.is_empty(), "{r:?}");
    // Two more would make 4: both are refused (a write's part of a trace is all or nothing).
    let r = store
        .write(encoded(vec![resource_spans(
            "a",
            (2..4).map(|i| span(1, i, 0)).collect(),
        )]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (0, 2), "{r:?}");
    assert_eq!(
        r.rejection,
        format!(
            "TRACE_TOO_LARGE: trace {} would reach 4 spans, over max_spans_per_trace 3; 2 spans refused",
            tid(1).to_hex()
        )
    );
    assert_eq!(
        r.rejected_traces,
        vec![RejectedTrace {
            trace_id: tid(1),
            spans: 2,
            reason: r.rejection.clone(),
        }]
    );
    // One more fits exactly.
    let r = store
        .write(encoded(vec![resource_spans("a", vec![span(1, 9, 0)])]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (1, 0), "{r:?}");
    assert_eq!(span_ids(&store, tid(1)).len(), 3);
    assert_eq!(store.limit_stats().discarded_trace_too_many_spans, 2);
    assert_eq!(store.limit_stats().discarded_trace_too_large, 0);

    // The count survives a restart: it is rebuilt from the write-ahead log.
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), limits(0, 3, 0));
    assert_eq!(store.limit_stats().tracked_traces, 1);
    let r = store
        .write(encoded(vec![resource_spans("a", vec![span(1, 10, 0)])]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (0, 1), "{r:?}");
    let named: Vec<(TraceId, u64)> = r
        .rejected_traces
        .iter()
        .map(|t| (t.trace_id, t.spans))
        .collect();
    assert_eq!(named, vec![(tid(1), 1)]);
}

#[tokio::test]
async fn once_cut_into_a_block_a_trace_counts_from_zero_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(0, 3, 0));
    let first: Vec<Span> = (0..3).map(|i| span(1, i, 0)).collect();
    let r = store
        .write(encoded(vec![resource_spans("a", first.clone())]))
        .await
        .unwrap();
    assert_eq!(r.accepted_spans, 3);
    let r = store
        .write(encoded(vec![resource_spans("a", vec![span(1, 3, 0)])]))
        .await
        .unwrap();
    assert_eq!(r.rejected_spans, 1, "{r:?}");
    assert_eq!(r.rejected_traces.len(), 1, "{r:?}");

    // The cut moves the trace's live spans into a block: the map forgets it.
    store.flush_blocks().unwrap();
    assert_eq!(store.wal_spans(), 0);
    assert_eq!(store.limit_stats().tracked_traces, 0);
    let later: Vec<Span> = (4..7).map(|i| span(1, i, 0)).collect();
    let r = store
        .write(encoded(vec![resource_spans("a", later.clone())]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (3, 0), "{r:?}");
    // The trace reads whole across the block and the log: 6 spans, past the limit of 3 (the
    // limit is on the live part of a trace, as in Tempo).
    let mut all = first;
    all.extend(later);
    assert_eq!(span_ids(&store, tid(1)), ids_of(&all));
}

#[tokio::test]
async fn spans_without_a_valid_trace_id_are_counted_but_named_by_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(0, 2, 0));
    let mut bad = span(2, 0, 0);
    bad.trace_id = vec![2; 3];
    let spans = vec![
        span(1, 0, 0),
        span(1, 1, 0),
        span(1, 2, 0),
        bad,
        span(3, 0, 0),
    ];
    let r = store
        .write(encoded(vec![resource_spans("a", spans)]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (1, 4), "{r:?}");
    let named: Vec<(TraceId, u64)> = r
        .rejected_traces
        .iter()
        .map(|t| (t.trace_id, t.spans))
        .collect();
    assert_eq!(named, vec![(tid(1), 3)]);
    assert!(r.rejection.contains("3 bytes"), "{}", r.rejection);
}

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.to_string())),
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

fn marker(keys: &[&str]) -> KeyValue {
    kv(
        TRUNCATED_ATTRIBUTES,
        AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: keys.iter().map(|k| s(k)).collect(),
            })),
        },
    )
}

#[tokio::test]
async fn long_values_are_cut_at_a_char_boundary_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(0, 0, 10));
    // 'é' is 2 bytes, '€' 3: cuts at 10 bytes fall inside a character.
    let long_e = "é".repeat(20); // 40 bytes -> 5 chars (10 bytes)
    let long_euro = format!("a{}", "€".repeat(10)); // 31 bytes -> "a€€€" (10 bytes)
    let mut sp = span(1, 1, 0);
    sp.attributes = vec![
        kv("short", s("0123456789")), // exactly the limit: kept
        kv("e", s(&long_e)),
        kv(
            "list",
            AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![s("ok"), s(&long_euro)],
                })),
            },
        ),
    ];
    sp.events = vec![Event {
        name: "ev".into(),
        attributes: vec![kv("msg", s(&long_e)), kv("n", s("x"))],
        ..Default::default()
    }];
    sp.links = vec![Link {
        trace_id: vec![9; 16],
        span_id: vec![9; 8],
        attributes: vec![kv("why", s(&long_euro))],
        ..Default::default()
    }];
    let mut rs = resource_spans("svc", vec![sp, span(1, 2, 3)]);
    rs.resource
        .as_mut()
        .unwrap()
        .attributes
        .push(kv("host.description", s(&long_euro)));
    let r = store.write(encoded(vec![rs])).await.unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (2, 0), "{r:?}");

    let trace = store.trace(tid(1), TimeWindow::all()).unwrap().unwrap();
    let resource = trace[0].resource.as_ref().unwrap();
    assert_eq!(
        resource.attributes,
        vec![
            kv_str("service.name", "svc"),
            kv("host.description", s("a€€€")),
            marker(&["host.description"]),
        ]
    );
    let spans: Vec<&Span> = trace
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .collect();
    let first = spans.iter().find(|s| s.name == "op-1").unwrap();
    assert_eq!(
        first.attributes,
        vec![
            kv("short", s("0123456789")),
            kv("e", s("ééééé")),
            kv(
                "list",
                AnyValue {
                    value: Some(Value::ArrayValue(ArrayValue {
                        values: vec![s("ok"), s("a€€€")],
                    })),
                },
            ),
            marker(&["e", "list"]),
        ]
    );
    assert_eq!(
        first.events[0].attributes,
        vec![kv("msg", s("ééééé")), kv("n", s("x")), marker(&["msg"])]
    );
    assert_eq!(
        first.links[0].attributes,
        vec![kv("why", s("a€€€")), marker(&["why"])]
    );
    // The other span had nothing long: no marker.
    let second = spans.iter().find(|s| s.name == "op-2").unwrap();
    assert_eq!(second.attributes, vec![kv_str("pad", "ppp")]);
    let stats = store.limit_stats();
    assert_eq!(stats.truncated_attributes, 5, "{stats:?}");
    assert_eq!(stats.rewritten_parts, 1, "{stats:?}");
}

#[tokio::test]
async fn a_batch_without_long_values_is_stored_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Limits::default());
    let mut sp = span(1, 1, 2048);
    sp.events = vec![Event {
        name: "ev".into(),
        attributes: vec![kv("msg", s(&"é".repeat(1024)))],
        ..Default::default()
    }];
    let rs = vec![resource_spans("svc", vec![sp, span(1, 2, 100)])];
    let bytes = ExportTraceServiceRequest {
        resource_spans: rs.clone(),
    }
    .encode_to_vec();
    // Values of exactly 2048 bytes are within Tempo's default limit: nothing to change.
    assert!(truncate_long_values(&bytes, 2048).unwrap().is_none());
    assert!(truncate_long_values(&bytes, 0).unwrap().is_none());
    // One byte less and the bytes would be rewritten.
    let (fixed, cut) = truncate_long_values(&bytes, 2047).unwrap().unwrap();
    assert_eq!(cut, 2);
    assert_ne!(fixed, bytes);

    let r = store.write(encoded(rs.clone())).await.unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (2, 0), "{r:?}");
    let stats = store.limit_stats();
    assert_eq!(stats.rewritten_parts, 0, "{stats:?}");
    assert_eq!(stats.truncated_attributes, 0, "{stats:?}");
    let back = store.trace(tid(1), TimeWindow::all()).unwrap().unwrap();
    let got: Vec<Span> = back
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter().cloned())
        .collect();
    let mut want: Vec<Span> = rs[0].scope_spans[0].spans.clone();
    let mut got = got;
    want.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    got.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    assert_eq!(got, want);
}

#[tokio::test]
async fn limits_off_store_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Limits::off());
    let spans: Vec<Span> = (0..20).map(|i| span(1, i, 5000)).collect();
    let r = store
        .write(encoded(vec![resource_spans("a", spans)]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (20, 0), "{r:?}");
    assert_eq!(store.limit_stats(), LimitStats::default());
    // Tempo's defaults otherwise.
    let d = Limits::default();
    assert_eq!(
        (
            d.max_bytes_per_trace,
            d.max_spans_per_trace,
            d.max_attribute_value_length
        ),
        (5_000_000, 0, 2048)
    );
}

#[tokio::test]
async fn the_live_trace_map_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        Limits {
            max_tracked_traces: 2,
            ..limits(0, 2, 0)
        },
    );
    let spans: Vec<Span> = (1..=3).map(|t| span(t, 0, 0)).collect();
    let r = store
        .write(encoded(vec![resource_spans("a", spans)]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (3, 0), "{r:?}");
    assert_eq!(store.limit_stats().tracked_traces, 2);
    // A trace past the bound is stored without a limit; the counted ones keep theirs.
    let more: Vec<Span> = (1..=3)
        .flat_map(|t| [span(t, 1, 0), span(t, 2, 0)])
        .collect();
    let r = store
        .write(encoded(vec![resource_spans("a", more)]))
        .await
        .unwrap();
    assert_eq!((r.accepted_spans, r.rejected_spans), (2, 4), "{r:?}");
    let named: Vec<(TraceId, u64)> = r
        .rejected_traces
        .iter()
        .map(|t| (t.trace_id, t.spans))
        .collect();
    assert_eq!(named, vec![(tid(1), 2), (tid(2), 2)]);
    assert_eq!(span_ids(&store, tid(3)).len(), 3);
    // Cutting the log empties the map.
    store.flush_blocks().unwrap();
    assert_eq!(store.limit_stats().tracked_traces, 0);
}
