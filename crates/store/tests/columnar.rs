//! Columnar pages (block format 2) end to end: spans carrying every field and every kind of
//! attribute value come back from a block exactly as they were written, before and after a
//! compaction, and as the write-ahead log served them.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use sextant_otlp_proto::proto::common::any_value::Value;
use sextant_otlp_proto::proto::{
    span, AnyValue, ArrayValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue,
    KeyValueList, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_otlp_proto::{SpanBatch, TraceId};
use sextant_store::*;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.blocks.maintenance_interval = Duration::from_secs(3600);
    c.blocks.page_bytes = 8192;
    c
}

fn kv(key: &str, value: Option<Value>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.map(|v| AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn tid(t: u32) -> [u8; 16] {
    let mut id = [7u8; 16];
    id[..4].copy_from_slice(&t.to_be_bytes());
    id
}

/// Span `i` of trace `t`, its fields varied by `i`.
fn span(t: u32, i: u32, t0: u64) -> Span {
    let id = tid(t);
    let mut span_id = [0u8; 8];
    span_id[..4].copy_from_slice(&t.to_be_bytes());
    span_id[4..].copy_from_slice(&(i + 1).to_be_bytes());
    let parent = match i % 4 {
        0 => Vec::new(),
        // A parent outside the trace.
        3 => vec![0xee; 8],
        _ => {
            let mut p = span_id;
            p[4..].copy_from_slice(&i.to_be_bytes());
            p.to_vec()
        }
    };
    let start = t0 + t as u64 * 1_000 + i as u64 * 17;
    let attrs = vec![
        kv(
            "http.route",
            Some(Value::StringValue(format!("/r/{}", i % 3))),
        ),
        kv("empty", Some(Value::StringValue(String::new()))),
        kv("n", Some(Value::IntValue(i64::MIN + i as i64))),
        kv("nan", Some(Value::DoubleValue(f64::NAN))),
        kv("neg0", Some(Value::DoubleValue(-0.0))),
        kv("ok", Some(Value::BoolValue(i.is_multiple_of(2)))),
        kv("raw", Some(Value::BytesValue(vec![0, 1, 2, i as u8]))),
        kv(
            "list",
            Some(Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::IntValue(1)),
                    },
                    AnyValue { value: None },
                ],
            })),
        ),
        kv(
            "map",
            Some(Value::KvlistValue(KeyValueList {
                values: vec![kv("inner", Some(Value::DoubleValue(1.5))), kv("none", None)],
            })),
        ),
        kv("valueless", None),
        kv(
            "big",
            Some(Value::StringValue("v".repeat(3000 + i as usize))),
        ),
    ];
    Span {
        trace_id: id.to_vec(),
        span_id: span_id.to_vec(),
        trace_state: if i % 2 == 1 {
            "k=v".into()
        } else {
            String::new()
        },
        parent_span_id: parent,
        flags: 0x301 + i,
        name: format!("op-{}", i % 5),
        kind: (i % 6) as i32,
        start_time_unix_nano: start,
        // Now and then an end before the start.
        end_time_unix_nano: if i == 5 {
            start - 3
        } else {
            start + 1_000 * i as u64
        },
        attributes: attrs,
        dropped_attributes_count: i % 3,
        events: (0..i % 3)
            .map(|e| span::Event {
                time_unix_nano: start + e as u64,
                name: format!("ev{e}"),
                attributes: vec![kv("e", Some(Value::IntValue(e as i64)))],
                dropped_attributes_count: e,
            })
            .collect(),
        dropped_events_count: i % 2,
        links: (0..i % 2)
            .map(|l| span::Link {
                trace_id: tid(t + 1000).to_vec(),
                span_id: vec![l as u8; 8],
                trace_state: "a=b".into(),
                attributes: vec![kv("l", Some(Value::BoolValue(true)))],
                dropped_attributes_count: 1,
                flags: 1,
            })
            .collect(),
        dropped_links_count: i % 4,
        status: match i % 3 {
            0 => None,
            1 => Some(Status::default()),
            _ => Some(Status {
                message: "boom".into(),
                code: 2,
            }),
        },
    }
}

/// Traces `range`, 6 spans each, over two resources with two scopes each.
fn request(range: std::ops::Range<u32>, t0: u64) -> SpanBatch {
    let mut rs = Vec::new();
    for r in 0..2 {
        let mut scope_spans = Vec::new();
        for s in 0..2 {
            let spans = range
                .clone()
                .flat_map(|t| {
                    (0..6)
                        .filter(move |i| i % 4 == r * 2 + s)
                        .map(move |i| (t, i))
                })
                .map(|(t, i)| span(t, i, t0))
                .collect();
            scope_spans.push(ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: format!("lib{s}"),
                    version: "1.0".into(),
                    attributes: vec![kv("scope.attr", Some(Value::IntValue(s as i64)))],
                    dropped_attributes_count: s,
                }),
                spans,
                schema_url: format!("https://scope/{s}"),
            });
        }
        rs.push(ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    Some(Value::StringValue(format!("svc{r}"))),
                )],
                dropped_attributes_count: r,
                ..Default::default()
            }),
            scope_spans,
            schema_url: format!("https://res/{r}"),
        });
    }
    let n = sextant_otlp_proto::span_count(&rs);
    let bytes = ExportTraceServiceRequest { resource_spans: rs }.encode_to_vec();
    SpanBatch::from_encoded(bytes.into(), n)
}

/// Each span of a trace with its resource and scope, encoded (doubles compare bit for bit),
/// sorted: the grouping may differ, the spans may not.
fn flat(trace: &[ResourceSpans]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rs in trace {
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let mut one = rs
                    .resource
                    .as_ref()
                    .map(Message::encode_to_vec)
                    .unwrap_or_default();
                one.extend(rs.schema_url.as_bytes());
                one.extend(
                    ss.scope
                        .as_ref()
                        .map(Message::encode_to_vec)
                        .unwrap_or_default(),
                );
                one.extend(ss.schema_url.as_bytes());
                one.extend(s.encode_to_vec());
                out.push(one);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_span_field_survives_blocks_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let t0 = now_ns() - 60_000_000_000;
    let r = store.write(request(0..60, t0)).await.unwrap();
    assert_eq!(r.rejected_spans, 0);
    let read = |store: &SledStore, t: u32| {
        let id = TraceId::from_slice(&tid(t)).unwrap();
        flat(&store.trace(id, TimeWindow::all()).unwrap().unwrap())
    };
    let from_log: Vec<_> = (0..60).map(|t| read(&store, t)).collect();
    assert!(from_log.iter().all(|t| t.len() == 6));

    store.flush_blocks().unwrap();
    let blocks = store.blocks();
    assert_eq!(blocks.len(), 1);
    assert!(blocks[0].page_count > 1, "{blocks:?}");
    for t in 0..60 {
        assert_eq!(
            read(&store, t),
            from_log[t as usize],
            "trace {t} from the block"
        );
    }

    // A second block, then both compacted into one (pages read and rewritten).
    store.write(request(60..90, t0)).await.unwrap();
    store.flush_blocks().unwrap();
    let report = store.compact(true).unwrap();
    assert_eq!(report.inputs, 2);
    assert_eq!(store.blocks().len(), 1);
    for t in 0..60 {
        assert_eq!(
            read(&store, t),
            from_log[t as usize],
            "trace {t} after compaction"
        );
    }
    assert_eq!(read(&store, 89).len(), 6);
    let mut bad = 0;
    store
        .verify(&mut |_, r| bad += r.is_err() as usize)
        .unwrap();
    assert_eq!(bad, 0);
}
