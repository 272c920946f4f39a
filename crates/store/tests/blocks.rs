//! Blocks: cut from the write-ahead log, read by trace id and by search, compacted, expired and
//! quarantined, on a real store in a temp dir.

use std::path::Path;
use std::time::Duration;

use sextant_otlp_proto::attr::{kv_int, kv_str};
use sextant_otlp_proto::proto::{
    ExportTraceServiceRequest, Resource, ResourceSpans, ScopeSpans, Span,
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
    // The tests cut, compact and expire themselves.
    c.blocks.maintenance_interval = Duration::from_secs(3600);
    // Small pages, so that traces spread over many.
    c.blocks.page_bytes = 4096;
    c
}

fn span(
    trace: u32,
    id: u32,
    start_ns: u64,
    attrs: Vec<sextant_otlp_proto::proto::KeyValue>,
) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&trace.to_be_bytes());
    trace_id[15] = 1;
    let mut span_id = [0u8; 8];
    span_id[..4].copy_from_slice(&trace.to_be_bytes());
    span_id[4..].copy_from_slice(&id.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: if id == 0 {
            vec![]
        } else {
            {
                let mut p = span_id;
                p[4..].copy_from_slice(&0u32.to_be_bytes());
                p.to_vec()
            }
        },
        name: format!("op-{}", id % 7),
        kind: 2,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + 1_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

fn tid(trace: u32) -> TraceId {
    let mut t = [0u8; 16];
    t[..4].copy_from_slice(&trace.to_be_bytes());
    t[15] = 1;
    TraceId::from_slice(&t).unwrap()
}

fn request(service: &str, spans: Vec<Span>) -> SpanBatch {
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
    let n = sextant_otlp_proto::span_count(&rs);
    let bytes = prost::Message::encode_to_vec(&ExportTraceServiceRequest { resource_spans: rs });
    SpanBatch::from_encoded(bytes.into(), n)
}

fn count(rs: &[ResourceSpans]) -> usize {
    sextant_otlp_proto::span_count(rs)
}

/// Writes traces `range`, each with `spans` spans, for `service`.
async fn write_traces(
    store: &SledStore,
    range: std::ops::Range<u32>,
    spans: u32,
    service: &str,
    t0: u64,
) {
    let mut batch = Vec::new();
    for t in range {
        for s in 0..spans {
            batch.push(span(
                t,
                s,
                t0 + t as u64 * 1000,
                vec![kv_int("n", t as i64), kv_str("user.id", &format!("u{t}"))],
            ));
        }
    }
    let r = store.write(request(service, batch)).await.unwrap();
    assert_eq!(r.rejected_spans, 0);
}

#[tokio::test]
async fn trace_by_id_merges_the_log_and_several_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let t0 = now_ns() - 60_000_000_000;
    // Trace 7 gets spans in three cuts and in the log; the others in one place each.
    write_traces(&store, 0..200, 3, "a", t0).await;
    store.flush_blocks().unwrap();
    write_traces(&store, 7..8, 1, "b", t0).await; // a late span (id 0 of service b)
    write_traces(&store, 200..400, 2, "a", t0).await;
    store.flush_blocks().unwrap();
    store
        .write(request("c", vec![span(7, 50, t0, vec![])]))
        .await
        .unwrap();
    store.flush_blocks().unwrap();
    store
        .write(request("d", vec![span(7, 60, t0, vec![])]))
        .await
        .unwrap();
    assert_eq!(store.blocks().len(), 3);
    assert!(store.blocks().iter().all(|b| b.page_count >= 1));
    assert!(
        store.blocks()[2].page_count > 1 || store.blocks()[1].page_count > 1,
        "small pages: {:?}",
        store.blocks()
    );

    let t7 = store.trace(tid(7), TimeWindow::all()).unwrap().unwrap();
    // 3 spans of a, 1 of b, one each in c and d.
    assert_eq!(count(&t7), 6, "{t7:?}");
    let services: Vec<_> = t7
        .iter()
        .map(|rs| sextant_otlp_proto::attr::service_name(rs.resource.as_ref()).to_string())
        .collect();
    for s in ["a", "b", "c", "d"] {
        assert!(services.contains(&s.to_string()), "{services:?}");
    }
    for t in [0u32, 199, 200, 399] {
        let want = if t < 200 { 3 } else { 2 };
        let got = store.trace(tid(t), TimeWindow::all()).unwrap().unwrap();
        assert_eq!(count(&got), want, "trace {t}");
    }
    assert!(store.trace(tid(400), TimeWindow::all()).unwrap().is_none());
    // A window that misses the trace.
    let early = TimeWindow {
        start_ns: None,
        end_ns: Some(t0 - 1),
    };
    assert!(store.trace(tid(7), early).unwrap().is_none());

    // The same after a restart (the log is replayed, blocks are reopened).
    store.close().unwrap();
    drop(store);
    let store = SledStore::open(config(dir.path())).unwrap();
    assert_eq!(store.blocks().len(), 3);
    assert_eq!(
        count(&store.trace(tid(7), TimeWindow::all()).unwrap().unwrap()),
        6
    );
    store.flush_blocks().unwrap();
    assert_eq!(store.blocks().len(), 4);
    assert_eq!(
        count(&store.trace(tid(7), TimeWindow::all()).unwrap().unwrap()),
        6
    );
}

#[tokio::test]
async fn searches_skip_pages_without_the_value_and_find_it_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let t0 = now_ns() - 60_000_000_000;
    write_traces(&store, 0..2000, 2, "a", t0).await;
    store.flush_blocks().unwrap();
    let pages: usize = store.blocks().iter().map(|b| b.page_count).sum();
    assert!(pages > 20, "{pages} pages");
    let total_spans = 4000;
    let search = |key: &str, value: &str| SearchQuery {
        conditions: vec![Condition::equals(key, value)],
        limit: 100,
        ..Default::default()
    };
    // A rare value: one trace; only a page or two is read.
    let r = store.search(&search("user.id", "u1234")).unwrap();
    assert_eq!(
        r.traces.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
        vec![tid(1234)]
    );
    assert!(
        r.inspected_traces < 2000 / 10,
        "read {} traces",
        r.inspected_traces
    );
    // An int attribute, rendered.
    let r = store.search(&search("n", "77")).unwrap();
    assert_eq!(r.traces.len(), 1);
    assert_eq!(r.traces[0].trace_id, tid(77));
    // A value nobody has reads (almost) nothing.
    let r = store.search(&search("user.id", "nobody")).unwrap();
    assert!(r.traces.is_empty());
    assert!(
        r.inspected_traces < 100,
        "read {} traces",
        r.inspected_traces
    );
    // A common value reads everything it needs: all 2000 traces match.
    let mut q = search("service.name", "a");
    q.limit = 5000;
    let r = store.search(&q).unwrap();
    assert_eq!(r.traces.len(), 2000);
    assert_eq!(
        r.traces.iter().map(|t| t.summary.span_count).sum::<usize>(),
        total_spans
    );
    // Scoped and unscoped: the resource attribute with the resource scope too.
    let scoped = SearchQuery {
        conditions: vec![Condition {
            scope: Some(TagScope::Resource),
            key: "service.name".into(),
            matcher: Matcher::Equals("a".into()),
        }],
        limit: 3,
        ..Default::default()
    };
    assert_eq!(store.search(&scoped).unwrap().traces.len(), 3);
    // The span name and kind intrinsics.
    let r = store.search(&search("name", "op-1")).unwrap();
    assert_eq!(r.traces.len(), 100);
    let r = store.search(&search("kind", "client")).unwrap();
    assert!(r.traces.is_empty());
}

#[tokio::test]
async fn retention_deletes_expired_blocks_and_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let now = now_ns();
    let day = 24 * 3600 * 1_000_000_000u64;
    // Old spans (8 days), then recent ones, in separate blocks.
    write_traces(&store, 0..3000, 4, "old", now - 8 * day).await;
    store.flush_blocks().unwrap();
    write_traces(&store, 5000..5100, 4, "new", now - 60_000_000_000).await;
    store.flush_blocks().unwrap();
    assert_eq!(store.blocks().len(), 2);
    let blocks_dir = dir.path().join("blocks");
    let before = dir_size(&blocks_dir);
    let old_block = store
        .blocks()
        .iter()
        .find(|b| b.span_count == 12_000)
        .unwrap()
        .size;
    assert!(store.trace(tid(10), TimeWindow::all()).unwrap().is_some());

    // 7 days (the default) keeps both on day 7 of the old block, deletes it after.
    assert_eq!(
        store
            .enforce_retention(now - day - 3_600_000_000_000)
            .unwrap(),
        0
    );
    assert_eq!(store.enforce_retention(now).unwrap(), 1);
    assert_eq!(store.blocks().len(), 1);
    let after = dir_size(&blocks_dir);
    assert_eq!(before - after, old_block, "the block's file is gone");
    assert!(store.trace(tid(10), TimeWindow::all()).unwrap().is_none());
    assert!(store.trace(tid(5000), TimeWindow::all()).unwrap().is_some());
    // The background compactor-and-expirer does the same by itself.
    store.close().unwrap();
    drop(store);
    let mut c = config(dir.path());
    c.blocks.retention = Duration::from_secs(1);
    c.blocks.maintenance_interval = Duration::from_millis(50);
    let store = SledStore::open(c).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !store.blocks().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "not expired: {:?}",
            store.blocks()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dir_size(&blocks_dir), 0);
}

#[tokio::test]
async fn compaction_merges_blocks_and_removes_spans_received_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let t0 = now_ns() - 60_000_000_000;
    // The same request three times (client retries), each in its own block, and other traces.
    for i in 0..3u32 {
        write_traces(&store, 0..100, 3, "a", t0).await;
        write_traces(&store, 1000 + i * 100..1100 + i * 100, 2, "b", t0).await;
        store.flush_blocks().unwrap();
    }
    assert_eq!(store.blocks().len(), 3);
    let spans_before: u64 = store.blocks().iter().map(|b| b.span_count).sum();
    assert_eq!(spans_before, 3 * 300 + 3 * 200);
    let report = store.compact(true).unwrap();
    assert_eq!(report.inputs, 3);
    assert_eq!(report.outputs, 1);
    assert_eq!(report.duplicates_removed, 600);
    let blocks = store.blocks();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].span_count, 300 + 600);
    assert_eq!(blocks[0].level, 1);
    assert_eq!(
        count(&store.trace(tid(5), TimeWindow::all()).unwrap().unwrap()),
        3
    );
    assert_eq!(
        count(&store.trace(tid(1250), TimeWindow::all()).unwrap().unwrap()),
        2
    );
    // Only the new block's file is left.
    let files: Vec<_> = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1);
    let mut bad = 0;
    assert_eq!(
        store
            .verify(&mut |_, r| bad += r.is_err() as usize)
            .unwrap(),
        0
    );
    assert_eq!(bad, 0);
    // Nothing left to merge.
    assert_eq!(store.compact(true).unwrap(), CompactionReport::default());
}

/// Flips one byte at `offset` from the end (negative) or start of a block file.
fn corrupt_block(dir: &Path, at: impl Fn(usize) -> usize) -> String {
    let blocks = dir.join("blocks");
    let path = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "blk"))
        .expect("a block file");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[tokio::test]
async fn a_corrupt_block_is_quarantined_and_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - 60_000_000_000;
    {
        let store = SledStore::open(config(dir.path())).unwrap();
        write_traces(&store, 0..50, 2, "a", t0).await;
        store.flush_blocks().unwrap();
        store.close().unwrap();
    }
    // A flipped byte inside the first page: found when the page is read.
    let name = corrupt_block(dir.path(), |_| 20);
    let store = SledStore::open(config(dir.path())).unwrap();
    assert_eq!(store.blocks().len(), 1);
    let err = store.trace(tid(0), TimeWindow::all()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(store.blocks().is_empty(), "quarantined");
    assert!(dir.path().join("blocks/quarantine").join(&name).exists());
    assert_eq!(store.block_stats().quarantined, 1);
    // Not served any more; nothing else breaks.
    assert!(store.trace(tid(0), TimeWindow::all()).unwrap().is_none());
    store.close().unwrap();
    drop(store);

    // A damaged footer: quarantined when the store opens.
    {
        let store = SledStore::open(config(dir.path())).unwrap();
        write_traces(&store, 100..150, 2, "a", t0).await;
        store.flush_blocks().unwrap();
        store.close().unwrap();
    }
    let name = corrupt_block(dir.path(), |len| len - 12);
    let store = SledStore::open(config(dir.path())).unwrap();
    assert!(store.blocks().is_empty());
    assert!(dir.path().join("blocks/quarantine").join(&name).exists());

    // `verify` finds a damaged page without a read having to hit it.
    drop(store);
    {
        let store = SledStore::open(config(dir.path())).unwrap();
        write_traces(&store, 200..250, 2, "a", t0).await;
        store.flush_blocks().unwrap();
        store.close().unwrap();
    }
    corrupt_block(dir.path(), |_| 30);
    let store = SledStore::open(config(dir.path())).unwrap();
    let mut seen = Vec::new();
    let bad = store
        .verify(&mut |info, r| seen.push((info.id.clone(), r.is_ok())))
        .unwrap();
    assert_eq!(bad, 1);
    assert_eq!(seen.len(), 1);
    assert!(store.blocks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_cuts_and_compactions_see_every_span() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let t0 = now_ns() - 60_000_000_000;
    for i in 0..4u32 {
        write_traces(&store, i * 300..(i + 1) * 300, 3, "a", t0).await;
        store.flush_blocks().unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = reads % 1200;
                let got = store.trace(tid(t), TimeWindow::all()).unwrap();
                assert_eq!(
                    got.map(|g| count(&g)),
                    Some(3),
                    "trace {t} during compaction"
                );
                if reads.is_multiple_of(50) {
                    let q = SearchQuery {
                        conditions: vec![Condition::equals("user.id", format!("u{t}"))],
                        ..Default::default()
                    };
                    let r = store.search(&q).unwrap();
                    assert_eq!(r.traces.len(), 1, "search for trace {t} during compaction");
                }
                reads += 1;
            }
            reads
        })
    };
    // Cuts and compactions while the reader reads.
    for i in 4..8u32 {
        write_traces(&store, 10_000 + i * 100..10_000 + (i + 1) * 100, 2, "b", t0).await;
        store.flush_blocks().unwrap();
        store.compact(true).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw every span");
    assert!(reads > 20, "{reads} reads");
    assert_eq!(store.blocks().len(), 1);
}

/// What identifies a visited span: its trace, its id, its resource's service and its whole
/// encoding (so a field decoded wrongly shows).
type Seen = (TraceId, Vec<u8>, String, Vec<u8>);

fn seen(id: &TraceId, span: &Span, resource: Option<&Resource>) -> Seen {
    (
        *id,
        span.span_id.clone(),
        sextant_otlp_proto::attr::service_name(resource).to_string(),
        prost::Message::encode_to_vec(span),
    )
}

fn spans_by_scan(store: &SledStore, window: TimeWindow, terms: &[Term]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut visit = |id: TraceId, trace: &[ResourceSpans]| {
        for rs in trace {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(seen(&id, s, rs.resource.as_ref()));
                }
            }
        }
        true
    };
    store
        .scan_terms(window, terms, &|_, _| true, &mut visit)
        .unwrap();
    out.sort();
    out
}

fn spans_by_span(store: &SledStore, window: TimeWindow, terms: &[Term]) -> Vec<Seen> {
    let mut out = Vec::new();
    store
        .scan_spans(window, terms, SpanFields::ALL, &mut |id, s, r| {
            out.push(seen(id, s, r));
            true
        })
        .unwrap();
    out.sort();
    out
}

#[tokio::test]
async fn span_by_span_scans_visit_every_span_of_the_log_and_of_every_block_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(dir.path())).unwrap();
    let t0 = now_ns() - 60_000_000_000;
    // Three blocks and the log; trace 7 has spans in all four, from four services.
    write_traces(&store, 0..150, 3, "a", t0).await;
    store.flush_blocks().unwrap();
    write_traces(&store, 7..8, 1, "b", t0).await;
    write_traces(&store, 150..300, 2, "a", t0).await;
    store.flush_blocks().unwrap();
    store
        .write(request("c", vec![span(7, 50, t0, vec![kv_str("x", "y")])]))
        .await
        .unwrap();
    write_traces(&store, 300..320, 4, "e", t0).await;
    store.flush_blocks().unwrap();
    store
        .write(request("d", vec![span(7, 60, t0 + 5, vec![])]))
        .await
        .unwrap();
    write_traces(&store, 320..340, 2, "f", t0).await;
    assert_eq!(store.blocks().len(), 3);

    let all = spans_by_span(&store, TimeWindow::all(), &[]);
    assert_eq!(all.len(), 150 * 3 + 1 + 150 * 2 + 1 + 20 * 4 + 1 + 20 * 2);
    assert_eq!(all, spans_by_scan(&store, TimeWindow::all(), &[]));
    let of_7: Vec<&str> = all
        .iter()
        .filter(|s| s.0 == tid(7))
        .map(|s| s.2.as_str())
        .collect();
    assert_eq!(of_7.len(), 6, "{of_7:?}");
    // A window of part of the traces (by their start).
    let window = TimeWindow {
        start_ns: Some(t0 + 100 * 1000),
        end_ns: Some(t0 + 310 * 1000),
    };
    let part = spans_by_span(&store, window, &[]);
    assert_eq!(part, spans_by_scan(&store, window, &[]));
    assert!(!part.is_empty() && part.len() < all.len());
    // Terms: whatever is skipped holds no span carrying them; every span carrying them comes.
    let terms = [Term::Attr {
        key: "user.id".into(),
        value: "u310".into(),
    }];
    let carrying = |v: &[Seen]| -> Vec<Seen> {
        v.iter()
            .filter(|s| {
                let span: Span = prost::Message::decode(s.3.as_slice()).unwrap();
                sextant_otlp_proto::attr::get_str(&span.attributes, "user.id") == Some("u310")
            })
            .cloned()
            .collect()
    };
    let with_terms = spans_by_span(&store, TimeWindow::all(), &terms);
    assert_eq!(carrying(&with_terms), carrying(&all));
    assert_eq!(carrying(&all).len(), 4);
    assert!(with_terms.len() < all.len(), "no page was skipped");
    // Stopping early stops.
    let mut n = 0;
    store
        .scan_spans(TimeWindow::all(), &[], SpanFields::ALL, &mut |_, _, _| {
            n += 1;
            n < 10
        })
        .unwrap();
    assert_eq!(n, 10);
    // After a restart (log replayed) and once everything is in blocks, the same spans.
    store.close().unwrap();
    drop(store);
    let store = SledStore::open(config(dir.path())).unwrap();
    assert_eq!(spans_by_span(&store, TimeWindow::all(), &[]), all);
    store.flush_blocks().unwrap();
    assert_eq!(spans_by_span(&store, TimeWindow::all(), &[]), all);
}
