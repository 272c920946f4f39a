//! The store with its blocks on S3-compatible object storage (a real SeaweedFS, see
//! `support/seaweed.rs`): blocks are cut to the bucket, read back by trace id and by search,
//! compacted and expired there, and a second store (another node, its own log) serves them.

mod support;

use std::path::Path;
use std::time::Duration;

use sextant_otlp_proto::attr::kv_str;
use sextant_otlp_proto::proto::{
    ExportTraceServiceRequest, Resource, ResourceSpans, ScopeSpans, Span,
};
use sextant_otlp_proto::{SpanBatch, TraceId};
use sextant_store::*;
use support::Seaweed;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn tid(t: u32) -> TraceId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&t.to_be_bytes());
    b[15] = 9;
    TraceId::from_slice(&b).unwrap()
}

fn request(traces: std::ops::Range<u32>, start_ns: u64) -> SpanBatch {
    let mut spans = Vec::new();
    for t in traces {
        for s in 0..3u32 {
            let mut span_id = [0u8; 8];
            span_id[..4].copy_from_slice(&t.to_be_bytes());
            span_id[4..].copy_from_slice(&(s + 1).to_be_bytes());
            spans.push(Span {
                trace_id: tid(t).as_bytes().to_vec(),
                span_id: span_id.to_vec(),
                name: format!("op{s}"),
                start_time_unix_nano: start_ns,
                end_time_unix_nano: start_ns + 1000,
                attributes: vec![kv_str("user.id", &format!("user-{t}"))],
                ..Default::default()
            });
        }
    }
    let rs = vec![ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", "svc")],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        schema_url: String::new(),
    }];
    let n = sextant_otlp_proto::span_count(&rs);
    SpanBatch::from_encoded(
        prost::Message::encode_to_vec(&ExportTraceServiceRequest { resource_spans: rs }).into(),
        n,
    )
}

fn config(dir: &Path, s3: S3Config) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.blocks.backend = BlockBackend::S3(s3);
    c.blocks.maintenance_interval = Duration::from_secs(3600);
    c.blocks.page_bytes = 8192;
    c
}

/// Synchronous, as the store's readers and its maintenance thread are (writes go through a
/// runtime of the test's own).
#[test]
fn blocks_on_s3_are_served_compacted_and_expired_and_shared_by_nodes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sw = Seaweed::start();
    sw.create_bucket("traces");
    let s3 = sw.s3_config("traces", "node-a");
    let local = tempfile::tempdir().unwrap();
    let store = SledStore::open(config(local.path(), s3.clone())).unwrap();
    assert!(
        store.block_backend().starts_with("s3://traces/node-a"),
        "{}",
        store.block_backend()
    );
    let day = 24 * 3600 * 1_000_000_000u64;
    let recent = now_ns() - 60_000_000_000;
    for i in 0..3u32 {
        rt.block_on(store.write(request(i * 500..(i + 1) * 500, recent)))
            .unwrap();
        store.flush_blocks().unwrap();
    }
    rt.block_on(store.write(request(5000..5100, now_ns() - 9 * day)))
        .unwrap();
    store.flush_blocks().unwrap();
    assert_eq!(store.blocks().len(), 4);
    // Nothing but the log is local.
    assert!(!local.path().join("blocks").exists() || dir_size(&local.path().join("blocks")) == 0);
    let backend = S3BlockStore::open(&s3).unwrap();
    assert_eq!(backend.list().unwrap().len(), 4);

    let t = store.trace(tid(777), TimeWindow::all()).unwrap().unwrap();
    assert_eq!(sextant_otlp_proto::span_count(&t), 3);
    let q = SearchQuery {
        conditions: vec![Condition::equals("user.id", "user-1234")],
        ..Default::default()
    };
    let r = store.search(&q).unwrap();
    assert_eq!(
        r.traces.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
        vec![tid(1234)]
    );
    assert!(
        r.inspected_traces < 300,
        "pages skipped on S3 too: read {}",
        r.inspected_traces
    );

    // Retention deletes the old block's object; compaction merges the rest in the bucket.
    assert_eq!(store.enforce_retention(now_ns()).unwrap(), 1);
    let report = store.compact(true).unwrap();
    assert_eq!((report.inputs, report.outputs), (3, 1));
    assert_eq!(backend.list().unwrap().len(), 1);
    assert_eq!(store.blocks()[0].span_count, 4500);
    let mut bad = 0;
    store
        .verify(&mut |_, r| bad += r.is_err() as usize)
        .unwrap();
    assert_eq!(bad, 0);

    // Another node with its own (empty) log and the same bucket serves the same blocks.
    let other_local = tempfile::tempdir().unwrap();
    let other = SledStore::open(config(other_local.path(), s3.clone())).unwrap();
    assert_eq!(other.blocks(), store.blocks());
    let t = other.trace(tid(1499), TimeWindow::all()).unwrap().unwrap();
    assert_eq!(sextant_otlp_proto::span_count(&t), 3);
    assert!(
        other.trace(tid(5050), TimeWindow::all()).unwrap().is_none(),
        "expired"
    );
    other.close().unwrap();
    store.close().unwrap();
}
