//! `sextant collector` end to end: configs written as the OpenTelemetry Collector's docs write
//! them, a collector -> collector -> all-in-one chain over OTLP/HTTP and OTLP/gRPC with
//! processors on the way, the persistent sending queue across a backend outage and a kill -9,
//! tail sampling under load, and broken configs refused with the key named.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sextant_otlp_proto::proto::{
    any_value::Value, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource,
    ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_tests::collector::{free_port, Collector};
use sextant_tests::otlp::{self as o, kv, kv_str, random_span_id, random_trace_id};
use sextant_tests::{get, run_with_timeout, sextant_bin, wait_for_trace, workspace_root, Server};

fn span(
    trace_id: &[u8],
    parent: &[u8],
    name: &str,
    duration_ms: u64,
    error: bool,
    attributes: Vec<KeyValue>,
) -> Span {
    let start = o::now_nanos() - 30_000_000_000;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: random_span_id(),
        parent_span_id: parent.to_vec(),
        name: name.to_string(),
        kind: if parent.is_empty() { 2 } else { 1 },
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration_ms * 1_000_000,
        attributes,
        status: Some(Status {
            code: if error { 2 } else { 0 },
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "collector-e2e".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A trace of `n` spans: a root of `root_ms` and children.
fn trace(
    service: &str,
    n: usize,
    root_ms: u64,
    error: bool,
) -> (Vec<u8>, ExportTraceServiceRequest) {
    let tid = random_trace_id();
    let root = span(
        &tid,
        &[],
        "GET /api/orders",
        root_ms,
        error,
        vec![kv_str("http.route", "/api/orders")],
    );
    let mut spans = vec![root.clone()];
    for i in 1..n {
        spans.push(span(
            &tid,
            &root.span_id,
            &format!("child-{i}"),
            1,
            false,
            vec![kv("seq", Value::IntValue(i as i64))],
        ));
    }
    (tid, request(service, spans))
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        Some(other) => Some(format!("{other:?}")),
        None => None,
    }
}

async fn metric(url: &str, name_and_labels: &str) -> f64 {
    let text = get(url).await.text();
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The chain agent (OTLP/HTTP out) -> gateway (OTLP/gRPC out) -> all-in-one, with the
/// processors platform teams run: resource metadata added, auth headers deleted, e-mail
/// addresses hashed, secrets redacted, health checks filtered out. The gateway's health
/// check, own metrics and pipelinez answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_collector_to_collector_to_all_in_one_with_processors() {
    let store = Server::start(&[]);
    let gateway = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
      http:
        endpoint: 127.0.0.1:0
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 1024
    spike_limit_mib: 256
  batch:
    send_batch_size: 1024
    timeout: 1s
  resource:
    attributes:
      - key: deployment.environment.name
        value: ${{env:E2E_UNSET_ENVIRONMENT:-staging}}
        action: insert
      - key: k8s.cluster.name
        value: e2e-cluster
        action: upsert
  attributes/scrub:
    actions:
      - key: http.request.header.authorization
        action: delete
      - key: user.email
        action: hash
  redaction:
    allow_all_keys: true
    blocked_values:
      - "4[0-9]{{12}}(?:[0-9]{{3}})?"
    summary: info
  filter/health:
    error_mode: ignore
    traces:
      span:
        - 'attributes["http.route"] == "/healthz"'
exporters:
  otlp:
    endpoint: {store}
    tls:
      insecure: true
    compression: zstd
extensions:
  health_check:
    endpoint: 127.0.0.1:0
  zpages:
    endpoint: 127.0.0.1:0
service:
  extensions: [health_check, zpages]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, resource, attributes/scrub, redaction, filter/health, batch]
      exporters: [otlp]
  telemetry:
    metrics:
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: 0
"#,
        store = store.grpc_url().trim_start_matches("http://")
    ));
    let agent = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  batch:
exporters:
  otlphttp:
    endpoint: {gateway}
    compression: gzip
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlphttp]
  telemetry:
    metrics:
      level: none
"#,
        gateway = gateway.http_url()
    ));

    let tid = random_trace_id();
    let root = span(
        &tid,
        &[],
        "POST /api/checkout",
        20,
        false,
        vec![
            kv_str("http.route", "/api/checkout"),
            kv_str("http.request.header.authorization", "Bearer s3cr3t"),
            kv_str("user.email", "ada@example.com"),
            kv_str("payment.card", "card 4111111111111111 used"),
        ],
    );
    let child = span(&tid, &root.span_id, "SELECT orders", 3, false, vec![]);
    let health = span(
        &tid,
        &root.span_id,
        "GET /healthz",
        1,
        false,
        vec![kv_str("http.route", "/healthz")],
    );
    let mut client = o::trace_client(&agent.grpc_url()).await;
    o::export(&mut client, request("checkout", vec![root, child, health]))
        .await
        .expect("agent accepts the request");

    let (_, data) = wait_for_trace(&store, &hex::encode(&tid), 2).await;
    let spans: Vec<(&ResourceSpans, &Span)> = data
        .resource_spans
        .iter()
        .flat_map(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(move |ss| ss.spans.iter().map(move |s| (rs, s)))
        })
        .collect();
    // Let a wrongly forwarded health-check span arrive before asserting it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, data) = wait_for_trace(&store, &hex::encode(&tid), 2).await;
    let names: Vec<&str> = data
        .resource_spans
        .iter()
        .flat_map(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(|ss| ss.spans.iter().map(|s| s.name.as_str()))
        })
        .collect();
    assert_eq!(
        names.len(),
        2,
        "the filter drops the health check: {names:?}"
    );
    assert!(!names.contains(&"GET /healthz"), "{names:?}");
    let (rs, root) = spans
        .iter()
        .find(|(_, s)| s.name == "POST /api/checkout")
        .expect("root span arrives");
    let res = &rs.resource.as_ref().expect("resource").attributes;
    assert_eq!(attr_str(res, "service.name").as_deref(), Some("checkout"));
    assert_eq!(
        attr_str(res, "deployment.environment.name").as_deref(),
        Some("staging")
    );
    assert_eq!(
        attr_str(res, "k8s.cluster.name").as_deref(),
        Some("e2e-cluster")
    );
    assert_eq!(
        attr(&root.attributes, "http.request.header.authorization"),
        None
    );
    let email = attr_str(&root.attributes, "user.email").expect("hashed e-mail kept");
    assert!(
        email != "ada@example.com"
            && email.len() >= 40
            && email.chars().all(|c| c.is_ascii_hexdigit()),
        "user.email is hashed: {email}"
    );
    let card = attr_str(&root.attributes, "payment.card").expect("card attribute kept");
    assert!(
        !card.contains("4111111111111111") && card.contains("****"),
        "card masked: {card}"
    );

    // The gateway's own endpoints.
    let health = get(&format!("http://{}/", gateway.addr("health-check"))).await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(
        health.text().contains("Server available"),
        "{}",
        health.text()
    );
    let metrics_url = format!("http://{}/metrics", gateway.addr("metrics"));
    let sent = metric(&metrics_url, "otelcol_exporter_sent_spans").await;
    assert!(
        sent >= 2.0,
        "otelcol_exporter_sent_spans = {sent}\n{}",
        get(&metrics_url).await.text()
    );
    let accepted = metric(
        &metrics_url,
        "otelcol_receiver_accepted_spans_total{receiver=\"otlp\",transport=\"http\"}",
    )
    .await;
    assert!(
        accepted >= 3.0,
        "otelcol_receiver_accepted_spans = {accepted}"
    );
    let text = get(&metrics_url).await.text();
    for name in [
        "otelcol_process_memory_rss",
        "otelcol_processor_batch_batch_send_size",
        "otelcol_exporter_queue_capacity",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let pz = get(&format!(
        "http://{}/debug/pipelinez?format=json",
        gateway.addr("zpages")
    ))
    .await;
    assert_eq!(pz.status, 200);
    let pz = pz.json();
    assert_eq!(pz[0]["id"], "traces", "{pz}");
    assert_eq!(pz[0]["processors"][2], "attributes/scrub", "{pz}");
    assert_eq!(pz[0]["exporters"][0], "otlp", "{pz}");
    drop(agent);
}

/// A backend outage and a collector kill -9 lose nothing: spans acknowledged while the
/// backend is down wait in the persistent queue, survive the kill, and arrive once the
/// backend is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_queue_survives_backend_outage_and_kill9() {
    let port = free_port();
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  batch:
    send_batch_size: 200
exporters:
  otlp:
    endpoint: 127.0.0.1:{port}
    tls:
      insecure: true
    timeout: 2s
    retry_on_failure:
      initial_interval: 100ms
      max_interval: 500ms
    sending_queue:
      storage: file_storage/queue
extensions:
  file_storage/queue:
    directory: "{{dir}}/queue"
service:
  extensions: [file_storage/queue]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
  telemetry:
    metrics:
      level: none
"#
    );
    let mut collector = Collector::start(&config);
    let mut client = o::trace_client(&collector.grpc_url()).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let (tid, req) = trace("outage", 10, 5, i % 7 == 0);
        o::export(&mut client, req)
            .await
            .expect("the collector acknowledges while the backend is down");
        ids.push(tid);
    }
    drop(client);
    collector.kill9();
    collector.restart();

    let port_arg = format!("127.0.0.1:{port}");
    let store = Server::start(&["--otlp-grpc-addr", &port_arg]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for tid in &ids {
            let id = hex::encode(tid);
            let r = get(&format!("{}/api/traces/{id}", store.query_url())).await;
            let n = if r.status == 200 {
                sextant_tests::count_spans(&sextant_tests::decode_batches(&r.json()))
            } else {
                0
            };
            if n < 10 {
                missing.push(format!("{id} ({n} of 10)"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} traces incomplete after the backend came up: {:?}\n--- collector stderr ---\n{}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)],
        collector.stderr_tail()
    );
}

/// Tail sampling under load keeps every error trace and every trace over the latency
/// threshold, and drops the others (the probabilistic policy at 0 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_keeps_every_error_and_slow_trace_under_load() {
    let store = Server::start(&[]);
    let collector = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  tail_sampling:
    decision_wait: 1s
    num_traces: 500
    policies:
      - name: errors
        type: status_code
        status_code: {{status_codes: [ERROR]}}
      - name: slow
        type: latency
        latency: {{threshold_ms: 500}}
  batch:
exporters:
  otlp:
    endpoint: {store}
    tls:
      insecure: true
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling, batch]
      exporters: [otlp]
  telemetry:
    metrics:
      level: none
"#,
        store = store.grpc_url().trim_start_matches("http://")
    ));
    // 1,500 traces of 5 spans from 6 concurrent clients, each trace split over two requests
    // so that its spans meet in the sampler; num_traces 500 forces early decisions.
    let url = collector.grpc_url();
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = o::trace_client(&url).await;
            let mut kinds = Vec::new();
            for i in 0..250 {
                let kind = match (worker * 250 + i) % 20 {
                    0 => "error",
                    1 => "slow",
                    _ => "fast",
                };
                let (tid, mut req) = trace(
                    "load",
                    5,
                    if kind == "slow" { 800 } else { 20 },
                    kind == "error",
                );
                let spans = &mut req.resource_spans[0].scope_spans[0].spans;
                let late: Vec<Span> = spans.drain(3..).collect();
                let second = request("load", late);
                o::export(&mut client, req)
                    .await
                    .expect("first half accepted");
                o::export(&mut client, second)
                    .await
                    .expect("second half accepted");
                kinds.push((tid, kind));
            }
            kinds
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut problems = Vec::new();
    for (tid, kind) in &all {
        let id = hex::encode(tid);
        let r = get(&format!("{}/api/traces/{id}", store.query_url())).await;
        let n = if r.status == 200 {
            sextant_tests::count_spans(&sextant_tests::decode_batches(&r.json()))
        } else {
            0
        };
        let e = counts.entry(kind).or_default();
        e.0 += 1;
        if n > 0 {
            e.1 += 1;
        }
        if *kind != "fast" && n != 5 {
            problems.push(format!("{kind} trace {id}: {n} of 5 spans kept"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, e.g. {:?}; counts {counts:?}\n--- collector stderr ---\n{}",
        problems.len(),
        &problems[..problems.len().min(5)],
        collector.stderr_tail()
    );
    let (fast, fast_kept) = counts["fast"];
    assert!(fast > 1000, "{counts:?}");
    assert_eq!(
        fast_kept, 0,
        "fast OK traces match no policy and are dropped: {counts:?}"
    );
}

/// `sextant collector validate` on `config`; for a broken config, also a real start, which
/// must fail the same way.
fn validate(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new(sextant_bin());
    cmd.args(["collector", "validate", "--config"]).arg(&path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    if !out.status.success() {
        let mut run = std::process::Command::new(sextant_bin());
        run.args(["collector", "--config"]).arg(&path);
        let started = run_with_timeout(&mut run, Duration::from_secs(30));
        assert!(
            !started.status.success() && started.stderr.contains("broken.yaml"),
            "validate refused the config but a start did not fail the same way:\n{}\n{}",
            out.describe(),
            started.describe()
        );
    }
    (
        out.status.success(),
        format!("{}{}", out.stdout, out.stderr),
    )
}

const GOOD: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  batch:
    timeout: 5s
exporters:
  debug:
    verbosity: basic
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [debug]
"#;

/// A broken config exits non-zero, naming the file and the key; `validate` agrees with a
/// real start.
#[test]
fn broken_configs_exit_non_zero_naming_the_key() {
    let (ok, text) = validate(&GOOD.replace(
        "127.0.0.1:0",
        "127.0.0.1:0\n        max_recv_msg_size_mib: 8",
    ));
    assert!(ok, "a good config validates: {text}");
    assert!(text.contains("valid"), "{text}");
    let cases: BTreeMap<&str, (String, &[&str])> = BTreeMap::from([
        ("bad duration", (GOOD.replace("timeout: 5s", "timeout: soon"), &["processors.batch.timeout", "soon"][..])),
        ("unknown processor", (GOOD.replace("  batch:\n    timeout: 5s", "  bacth:\n    timeout: 5s"), &["processors.bacth", "unknown processor type"][..])),
        ("undefined exporter", (GOOD.replace("exporters: [debug]", "exporters: [otlp/missing]"), &["service.pipelines.traces.exporters[0]", "otlp/missing"][..])),
        ("unknown key", (GOOD.replace("verbosity: basic", "verbosity: basic\n    colour: true"), &["exporters.debug", "colour"][..])),
        ("bad regex", (GOOD.replace("  batch:\n    timeout: 5s", "  batch:\n    timeout: 5s\n  filter:\n    traces:\n      span: ['IsMatch(name, \"(\")']").replace("processors: [batch]", "processors: [filter, batch]"), &["processors.filter"][..])),
        ("bad env syntax", (GOOD.replace("timeout: 5s", "timeout: ${file:/etc/x}"), &["file"][..])),
        ("missing TLS files", (GOOD.replace("endpoint: 127.0.0.1:0", "endpoint: 127.0.0.1:0\n        tls:\n          cert_file: /nonexistent/cert.pem\n          key_file: /nonexistent/key.pem"), &["receivers.otlp.protocols.grpc.tls.cert_file", "/nonexistent/cert.pem"][..])),
    ]);
    for (what, (config, needles)) in cases {
        let (ok, text) = validate(&config);
        assert!(!ok, "{what}: a broken config must not validate:\n{text}");
        assert!(
            text.contains("broken.yaml"),
            "{what}: the message names the file:\n{text}"
        );
        for n in needles {
            assert!(text.contains(n), "{what}: the message names {n:?}:\n{text}");
        }
    }
}

/// The seed-style ConfigMap under k8s/ is a config the collector accepts.
#[test]
fn k8s_collector_configmap_validates() {
    let path = workspace_root().join("k8s/collector/configmap.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The block scalar under `collector.yaml: |`.
    let mut lines = text.lines();
    let header = lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("collector.yaml: |"))
        .expect("the ConfigMap holds collector.yaml");
    let indent = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let config: String = body
        .iter()
        .map(|l| if l.len() >= strip { &l[strip..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "memory_limiter",
        "limit_mib: 512",
        "batch",
        "resource",
        "probabilistic_sampler",
    ] {
        assert!(
            config.contains(needle),
            "the ConfigMap's config has {needle}:\n{config}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.yaml");
    std::fs::write(&file, &config).unwrap();
    let mut cmd = std::process::Command::new(sextant_bin());
    cmd.args(["collector", "validate", "--config"]).arg(&file);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}\n--- config ---\n{config}",
        out.describe()
    );
}
