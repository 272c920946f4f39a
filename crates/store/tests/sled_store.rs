//! The sled store through its public interfaces, on a real database in a temp dir.

use std::time::Duration;

use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::{
    ExportTraceServiceRequest, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_otlp_proto::SpanBatch;
use sextant_otlp_proto::TraceId;
use sextant_store::*;

const T0: u64 = 1_700_000_000_000_000_000;

fn span(trace: u8, id: u8, parent: u8, name: &str, start_ms: u64, dur_ms: u64) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: name.into(),
        kind: 2,
        start_time_unix_nano: T0 + start_ms * 1_000_000,
        end_time_unix_nano: T0 + (start_ms + dur_ms) * 1_000_000,
        attributes: vec![kv_int("http.status_code", 200), kv_str("region", "eu")],
        ..Default::default()
    }
}

fn batch(service: &str, spans: Vec<Span>) -> SpanBatch {
    let rs = vec![ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        schema_url: String::new(),
    }];
    // Every other write sends an encoded request, as the receivers do; the rest decoded spans.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if NEXT
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(2)
    {
        let bytes = prost::Message::encode_to_vec(&ExportTraceServiceRequest {
            resource_spans: rs.clone(),
        });
        SpanBatch::from_encoded(bytes.into(), spans_len(&rs))
    } else {
        SpanBatch::from_decoded(rs)
    }
}

fn spans_len(rs: &[ResourceSpans]) -> usize {
    sextant_otlp_proto::span_count(rs)
}

fn open(dir: &std::path::Path) -> SledStore {
    let mut config = StoreConfig::new(dir);
    // The spans are from 2023: keep them; and the tests cut blocks themselves.
    config.blocks.retention = Duration::from_secs(100 * 365 * 24 * 3600);
    config.blocks.maintenance_interval = Duration::from_secs(3600);
    SledStore::open(config).unwrap()
}

#[tokio::test]
async fn a_trace_written_in_pieces_comes_back_whole_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        // The root arrives last, from another service, in a later write.
        store
            .write(batch("db", vec![span(1, 3, 2, "SELECT", 20, 5)]))
            .await
            .unwrap();
        store
            .write(batch("api", vec![span(1, 2, 1, "GET /users", 10, 30)]))
            .await
            .unwrap();
        let r = store
            .write(batch("web", vec![span(1, 1, 0, "page", 0, 50)]))
            .await
            .unwrap();
        assert_eq!(r.accepted_spans, 1);
        store.close().unwrap();
    }
    let store = open(dir.path());
    let trace = store
        .trace(TraceId([1; 16]), TimeWindow::all())
        .unwrap()
        .unwrap();
    assert_eq!(trace.len(), 3, "three resources");
    assert_eq!(sextant_otlp_proto::span_count(&trace), 3);
    assert!(store
        .trace(TraceId([9; 16]), TimeWindow::all())
        .unwrap()
        .is_none());

    let all = store.search(&SearchQuery::default()).unwrap();
    assert_eq!(all.traces.len(), 1);
    let hit = &all.traces[0];
    assert_eq!(hit.summary.root_service, "web");
    assert_eq!(hit.summary.root_name, "page");
    assert_eq!(hit.summary.span_count, 3);
    assert_eq!(hit.summary.duration_ns, 50_000_000);
    assert_eq!(hit.summary.start_ns, T0);
}

#[tokio::test]
async fn search_by_service_attribute_name_status_and_duration() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut failing = span(2, 1, 0, "POST /pay", 100, 900);
    failing.status = Some(Status {
        code: 2,
        message: "card declined".into(),
    });
    failing.attributes.push(kv_int("http.status_code", 500));
    failing.attributes.remove(0);
    store.write(batch("payments", vec![failing])).await.unwrap();
    store
        .write(batch("api", vec![span(3, 1, 0, "GET /health", 200, 1)]))
        .await
        .unwrap();

    // The same answers from the write-ahead log and, once cut, from blocks (a block or page
    // skipped wrongly fails here).
    for place in ["log", "blocks"] {
        if place == "blocks" {
            store.flush_blocks().unwrap();
            assert_eq!(store.blocks().len(), 1);
        }
        searches(&store, place);
    }
}

fn searches(store: &SledStore, place: &str) {
    eprintln!("searching the {place}");
    let q = |conditions: Vec<Condition>| SearchQuery {
        conditions,
        ..Default::default()
    };
    let ids = |r: SearchResult| {
        r.traces
            .iter()
            .map(|t| t.trace_id.as_bytes()[0])
            .collect::<Vec<_>>()
    };

    assert_eq!(
        ids(store
            .search(&q(vec![Condition::equals("service.name", "payments")]))
            .unwrap()),
        vec![2]
    );
    assert_eq!(
        ids(store
            .search(&q(vec![Condition::equals("http.status_code", "500")]))
            .unwrap()),
        vec![2]
    );
    assert_eq!(
        ids(store
            .search(&q(vec![Condition::equals("name", "GET /health")]))
            .unwrap()),
        vec![3]
    );
    assert_eq!(
        ids(store
            .search(&q(vec![Condition::equals("status", "error")]))
            .unwrap()),
        vec![2]
    );
    // Both conditions must hold on the same span.
    assert!(store
        .search(&q(vec![
            Condition::equals("service.name", "api"),
            Condition::equals("status", "error")
        ]))
        .unwrap()
        .traces
        .is_empty());
    let slow = SearchQuery {
        min_duration: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    assert_eq!(ids(store.search(&slow).unwrap()), vec![2]);
    let fast = SearchQuery {
        max_duration: Some(Duration::from_millis(10)),
        ..Default::default()
    };
    assert_eq!(ids(store.search(&fast).unwrap()), vec![3]);
    // Newest first, and the limit holds.
    let newest = SearchQuery {
        limit: 1,
        ..Default::default()
    };
    assert_eq!(ids(store.search(&newest).unwrap()), vec![3]);
    // A window that ends before both traces finds nothing.
    let before = SearchQuery {
        window: TimeWindow {
            start_ns: Some(T0 - 10_000_000_000),
            end_ns: Some(T0 - 1),
        },
        ..Default::default()
    };
    assert!(store.search(&before).unwrap().traces.is_empty());
    // Matched spans carry the attribute that matched.
    let r = store
        .search(&q(vec![Condition::equals("http.status_code", "500")]))
        .unwrap();
    let m = &r.traces[0].matched_spans[0];
    assert_eq!(m.name, "POST /pay");
    assert_eq!(m.attributes[0].key, "http.status_code");
    assert_eq!(m.duration_ns, 900_000_000);
}

#[tokio::test]
async fn tags_and_values_are_indexed_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .write(batch("api", vec![span(4, 1, 0, "a", 0, 1)]))
            .await
            .unwrap();
        store
            .write(batch("web", vec![span(5, 1, 0, "b", 0, 1)]))
            .await
            .unwrap();
        store.close().unwrap();
    }
    let store = open(dir.path());
    let names = store.tag_names(None).unwrap();
    assert!(names.contains(&(TagScope::Resource, "service.name".into())));
    assert!(names.contains(&(TagScope::Span, "http.status_code".into())));
    let span_only = store.tag_names(Some(TagScope::Span)).unwrap();
    assert!(span_only.iter().all(|(s, _)| *s == TagScope::Span));
    let services = store
        .tag_values(Some(TagScope::Resource), "service.name")
        .unwrap();
    let values: Vec<&str> = services.iter().map(|v| v.value.as_str()).collect();
    assert_eq!(values, vec!["api", "web"]);
    let codes = store.tag_values(None, "http.status_code").unwrap();
    assert_eq!(
        codes,
        vec![TagValue {
            type_name: "int".into(),
            value: "200".into()
        }]
    );
}

#[tokio::test]
async fn invalid_trace_ids_are_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut bad = span(6, 1, 0, "x", 0, 1);
    bad.trace_id = vec![1, 2, 3];
    let r = store
        .write(batch("api", vec![bad, span(7, 1, 0, "ok", 0, 1)]))
        .await
        .unwrap();
    assert_eq!(r.accepted_spans, 1);
    assert_eq!(r.rejected_spans, 1);
    assert!(r.rejection.contains("3 bytes"), "{}", r.rejection);
    assert_eq!(store.stats().spans_written, 1);
}

#[tokio::test]
async fn concurrent_writers_share_flushes_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for w in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u8 {
                let mut s = span(0, 1, 0, "op", 0, 1);
                s.trace_id = vec![w + 1, i + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                store.write(batch("svc", vec![s])).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.spans_written, 200);
    assert!(stats.flushes <= stats.writes);
    let all = store
        .search(&SearchQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.traces.len(), 200);
}
