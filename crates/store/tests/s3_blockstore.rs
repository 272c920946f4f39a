//! The S3 block storage backend against a real SeaweedFS (`weed mini`, see `support/seaweed.rs`).

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_store::{BlockStore, S3BlockStore, StoreError};
use support::Seaweed;

/// A server with bucket `blocks` and a store on it under `prefix`.
fn setup(prefix: &str) -> (Seaweed, S3BlockStore) {
    let sw = Seaweed::start();
    sw.create_bucket("blocks");
    let store = S3BlockStore::open(&sw.s3_config("blocks", prefix)).expect("open S3 store");
    (sw, store)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn listed(store: &S3BlockStore) -> BTreeMap<String, u64> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect()
}

#[test]
fn put_get_range_replace_delete() {
    let (_sw, store) = setup("tenant-a/blocks");
    assert!(
        store.describe().starts_with("s3://blocks/tenant-a/blocks"),
        "{}",
        store.describe()
    );
    store.health().unwrap();

    let small = b"hello, blocks".to_vec();
    store.put("b-0001.blk", small.clone()).unwrap();
    assert_eq!(store.get("b-0001.blk").unwrap(), small);
    assert_eq!(store.get_range("b-0001.blk", 0..5).unwrap(), b"hello");
    // A range ending at the end of the object.
    assert_eq!(store.get_range("b-0001.blk", 7..13).unwrap(), b"blocks");
    // An empty range.
    assert_eq!(store.get_range("b-0001.blk", 4..4).unwrap(), b"");
    // Past the end.
    assert!(matches!(
        store.get_range("b-0001.blk", 10..20),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.get_range("b-0001.blk", 100..120),
        Err(StoreError::Corrupt { .. })
    ));

    // A multi-MiB object (SeaweedFS splits it in chunks internally).
    let big = pattern(9 * 1024 * 1024 + 17, 3);
    store.put("b-0002.blk", big.clone()).unwrap();
    assert_eq!(store.get("b-0002.blk").unwrap(), big);
    let r = 5 * 1024 * 1024 - 3..9 * 1024 * 1024 + 17;
    assert_eq!(
        store
            .get_range("b-0002.blk", r.start as u64..r.end as u64)
            .unwrap(),
        &big[r]
    );

    assert_eq!(
        listed(&store),
        BTreeMap::from([
            ("b-0001.blk".to_string(), small.len() as u64),
            ("b-0002.blk".to_string(), big.len() as u64)
        ])
    );

    // Replace.
    store.put("b-0001.blk", b"second version".to_vec()).unwrap();
    assert_eq!(store.get("b-0001.blk").unwrap(), b"second version");
    assert_eq!(listed(&store)["b-0001.blk"], 14);

    // Delete, twice (missing is fine).
    store.delete("b-0001.blk").unwrap();
    store.delete("b-0001.blk").unwrap();
    store.delete("never-existed").unwrap();
    assert!(matches!(store.get("b-0001.blk"), Err(StoreError::NotFound(n)) if n == "b-0001.blk"));
    assert!(matches!(
        store.get_range("b-0001.blk", 0..2),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_range("b-0001.blk", 0..0),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(listed(&store).keys().collect::<Vec<_>>(), ["b-0002.blk"]);
}

#[test]
fn multipart_upload_of_a_large_object() {
    let (_sw, store) = setup("big");
    let data = pattern(sextant_store_threshold() + 3 * 1024 * 1024 + 5, 9);
    store.put("large.blk", data.clone()).unwrap();
    assert_eq!(listed(&store)["large.blk"], data.len() as u64);
    let got = store.get("large.blk").unwrap();
    assert!(got == data, "large object differs after a multipart upload");
    let tail = data.len() as u64 - 100..data.len() as u64;
    assert_eq!(
        store.get_range("large.blk", tail.clone()).unwrap(),
        &data[tail.start as usize..]
    );
}

/// 64 MiB: the size above which `put` uses a multipart upload.
fn sextant_store_threshold() -> usize {
    64 * 1024 * 1024
}

#[test]
fn prefixes_isolate_stores_in_one_bucket() {
    let sw = Seaweed::start();
    sw.create_bucket("shared");
    let root = S3BlockStore::open(&sw.s3_config("shared", "")).unwrap();
    let a = S3BlockStore::open(&sw.s3_config("shared", "a")).unwrap();
    let b = S3BlockStore::open(&sw.s3_config("shared", "/b/nested/")).unwrap();
    assert_eq!(root.describe(), format!("s3://shared at {}", sw.endpoint));
    assert!(root.list().unwrap().is_empty());

    root.put("root.blk", b"r".to_vec()).unwrap();
    a.put("x.blk", b"aa".to_vec()).unwrap();
    b.put("x.blk", b"bbb".to_vec()).unwrap();

    assert_eq!(listed(&a), BTreeMap::from([("x.blk".to_string(), 2)]));
    assert_eq!(listed(&b), BTreeMap::from([("x.blk".to_string(), 3)]));
    // The root store sees its own object, not the prefixes' (they are "directories").
    assert_eq!(listed(&root), BTreeMap::from([("root.blk".to_string(), 1)]));
    assert_eq!(a.get("x.blk").unwrap(), b"aa");
    assert_eq!(b.get("x.blk").unwrap(), b"bbb");
    assert!(matches!(a.get("root.blk"), Err(StoreError::NotFound(_))));

    a.delete("x.blk").unwrap();
    assert!(a.list().unwrap().is_empty(), "{:?}", a.list());
    assert_eq!(b.get("x.blk").unwrap(), b"bbb");
}

#[test]
fn quarantine_moves_the_object_aside() {
    let sw = Seaweed::start();
    sw.create_bucket("blocks");
    let store = S3BlockStore::open(&sw.s3_config("blocks", "p")).unwrap();
    store.put("bad.blk", b"corrupt bytes".to_vec()).unwrap();
    store.put("good.blk", b"fine".to_vec()).unwrap();
    store.quarantine("bad.blk").unwrap();

    assert_eq!(listed(&store).keys().collect::<Vec<_>>(), ["good.blk"]);
    assert!(matches!(store.get("bad.blk"), Err(StoreError::NotFound(_))));
    // The copy is under `<prefix>/quarantine/`: a store on that prefix reads it.
    let aside = S3BlockStore::open(&sw.s3_config("blocks", "p/quarantine")).unwrap();
    assert_eq!(aside.get("bad.blk").unwrap(), b"corrupt bytes");
    assert!(
        matches!(store.quarantine("missing.blk"), Err(StoreError::NotFound(n)) if n == "missing.blk")
    );
    // Still not listed after another put.
    store.put("more.blk", vec![1]).unwrap();
    assert_eq!(listed(&store).len(), 2);
}

#[test]
fn invalid_names_are_refused() {
    let (_sw, store) = setup("");
    for name in [
        "",
        "a/b",
        "../x",
        ".hidden",
        "quarantine/x",
        "sp ace",
        &"n".repeat(201),
    ] {
        assert!(
            matches!(store.put(name, vec![1]), Err(StoreError::Backend(m)) if m.contains("invalid object name")),
            "put {name:?}"
        );
        assert!(store.get(name).is_err(), "get {name:?}");
        assert!(store.get_range(name, 0..1).is_err(), "get_range {name:?}");
        assert!(store.delete(name).is_err(), "delete {name:?}");
        assert!(store.quarantine(name).is_err(), "quarantine {name:?}");
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn open_fails_clearly_when_nothing_listens() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = sextant_store::S3Config {
        bucket: "blocks".to_string(),
        endpoint: Some(endpoint.clone()),
        access_key_id: Some("k".to_string()),
        secret_access_key: Some("s".to_string()),
        allow_http: true,
        ..Default::default()
    };
    let started = Instant::now();
    let err = S3BlockStore::open(&config).expect_err("open must fail");
    let took = started.elapsed();
    let msg = err.to_string();
    eprintln!("open failed after {took:?}: {msg}");
    assert!(msg.contains(&endpoint), "{msg}");
    assert!(msg.contains("blocks"), "{msg}");
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

#[test]
fn open_fails_for_a_missing_bucket_and_health_follows_the_server() {
    let mut sw = Seaweed::start();
    let err = S3BlockStore::open(&sw.s3_config("no-such-bucket", "")).expect_err("missing bucket");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-bucket") && msg.contains(&sw.endpoint),
        "{msg}"
    );

    sw.create_bucket("blocks");
    let store = S3BlockStore::open(&sw.s3_config("blocks", "h")).unwrap();
    store.put("kept.blk", b"durable".to_vec()).unwrap();
    store.health().unwrap();

    sw.kill();
    let started = Instant::now();
    let err = store.health().expect_err("health with the server down");
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(err.to_string().contains(&sw.endpoint), "{err}");
    assert!(matches!(store.get("kept.blk"), Err(StoreError::Backend(_))));

    sw.restart();
    store.health().unwrap();
    assert_eq!(store.get("kept.blk").unwrap(), b"durable");
}

#[test]
fn usable_from_blocking_threads_of_another_runtime() {
    let (_sw, store) = setup("rt");
    let store = Arc::new(store);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = store.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let name = format!("t-{i}.blk");
                store.put(&name, vec![i; 1000 + i as usize]).unwrap();
                store.get(&name).unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), vec![i as u8; 1000 + i]);
        }
        // The last reference dropped inside an async task must not panic.
        let lister = store.clone();
        let n = tokio::task::spawn_blocking(move || lister.list().unwrap().len())
            .await
            .unwrap();
        assert_eq!(n, 8);
        drop(store);
    });
}
