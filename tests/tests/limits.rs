//! The store's limits end to end: the real all-in-one, an OTLP/gRPC client (tonic, the types
//! the official Rust SDK sends), the partial success it gets, the Tempo API and `/metrics`.

use sextant_otlp_proto::proto::any_value::Value;
use sextant_tests::otlp::{self, random_trace_id};
use sextant_tests::{self as e2e, Server};

/// The value of a sample line of `/metrics` (`name{labels} value`).
fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_over_the_span_limit_gets_a_partial_success_naming_it() {
    let server = Server::start(&["--set", "exporters.store.limits.max_spans_per_trace=10"]);
    let mut client = otlp::trace_client(&server.grpc_url()).await;

    let big = random_trace_id();
    let big_hex = hex::encode(&big);
    let resp = otlp::export(&mut client, otlp::trace_request("svc", &big, 8, 0))
        .await
        .expect("first export");
    assert!(
        resp.partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_spans == 0),
        "{resp:?}"
    );

    // 5 more spans of the big trace (8 + 5 > 10) and a small trace, in one request.
    let small = random_trace_id();
    let mut req = otlp::trace_request("svc", &big, 5, 0);
    req.resource_spans
        .extend(otlp::trace_request("other", &small, 2, 0).resource_spans);
    let resp = otlp::export(&mut client, req).await.expect("second export");
    let partial = resp.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_spans, 5, "{partial:?}");
    assert_eq!(
        partial.error_message,
        format!(
            "TRACE_TOO_LARGE: trace {big_hex} would reach 13 spans, over max_spans_per_trace 10; 5 spans refused"
        ),
        "{partial:?}"
    );

    // The small trace is stored, the big one keeps its first 8 spans.
    let got = e2e::get_trace_protobuf(&server, &hex::encode(&small)).await;
    assert_eq!(e2e::count_spans(&got), 2);
    let got = e2e::get_trace_protobuf(&server, &big_hex).await;
    assert_eq!(e2e::count_spans(&got), 8);

    let metrics = e2e::get(&format!("{}/metrics", server.query_url()))
        .await
        .text();
    assert_eq!(
        sample(
            &metrics,
            "sextant_store_discarded_spans_total{reason=\"trace_too_many_spans\"}"
        ),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "sextant_store_discarded_spans_total{reason=\"trace_too_large\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        server.stderr().lines().any(|l| l.contains("WARN")
            && l.contains(&big_hex)
            && l.contains("max_spans_per_trace")),
        "no warning naming the trace: {}",
        server.stderr_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_values_are_truncated_and_marked_by_default() {
    let server = Server::start(&[]);
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    let id = random_trace_id();
    // 3000 bytes of 3-byte characters: cut at 2048 falls inside one (2046 is a boundary).
    let long = "€".repeat(1000);
    let mut req = otlp::trace_request("svc", &id, 1, 0);
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(otlp::kv_str("body", &long));
    let resp = otlp::export(&mut client, req).await.expect("export");
    assert!(
        resp.partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_spans == 0),
        "{resp:?}"
    );

    let got = e2e::get_trace_protobuf(&server, &hex::encode(&id)).await;
    let span = &got.resource_spans[0].scope_spans[0].spans[0];
    let value = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    match value("body") {
        Some(Value::StringValue(s)) => assert_eq!(s, "€".repeat(682), "{} bytes", s.len()),
        other => panic!("body: {other:?}"),
    }
    match value("sextant.truncated_attributes") {
        Some(Value::ArrayValue(a)) => {
            let keys: Vec<_> = a.values.iter().map(|v| v.value.clone()).collect();
            assert_eq!(keys, vec![Some(Value::StringValue("body".into()))]);
        }
        other => panic!("sextant.truncated_attributes: {other:?}"),
    }
    let metrics = e2e::get(&format!("{}/metrics", server.query_url()))
        .await
        .text();
    assert_eq!(
        sample(&metrics, "sextant_store_truncated_attributes_total "),
        Some(1.0),
        "{metrics}"
    );
}
