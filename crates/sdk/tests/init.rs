//! `init()` installs the globals: one test (one process, its own environment),
//! so nothing here races with other tests over globals or variables.

use std::collections::HashMap;

use axum::routing::get;
use axum::Router;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry::Context;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use sextant_sdk::{Error, Sdk, SextantLayer};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_reads_env_and_installs_globals() {
    // A bad value is an error at init, naming the variable and the value.
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon");
    match sextant_sdk::init() {
        Err(Error::Config(e)) => {
            let msg = e.to_string();
            assert!(msg.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{msg}");
            assert!(msg.contains("carrier-pigeon"), "{msg}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    std::env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");

    std::env::set_var("OTEL_PROPAGATORS", "b3multi,jaeger,baggage");
    std::env::set_var("OTEL_SERVICE_NAME", "from-env");
    std::env::set_var("ENVIRONMENT", "production");
    std::env::set_var("TRACING_SAMPLE_PERCENTAGE", "100");
    let exporter = InMemorySpanExporter::default();
    let guard = Sdk::builder()
        .with_exporter(exporter.clone())
        .init()
        .expect("init");

    // The global propagator follows OTEL_PROPAGATORS.
    let tracer = opentelemetry::global::tracer("t");
    let span = tracer.start("parent");
    let cx = Context::current_with_span(span);
    let mut headers = http::HeaderMap::new();
    sextant_sdk::inject_context(&cx, &mut headers);
    let trace_hex = format!("{:032x}", cx.span().span_context().trace_id());
    assert_eq!(headers["x-b3-traceid"], trace_hex.as_str());
    assert!(headers["uber-trace-id"]
        .to_str()
        .unwrap()
        .starts_with(&trace_hex));
    assert!(headers.get("traceparent").is_none());
    let back = sextant_sdk::extract_context(&headers);
    assert_eq!(
        back.span().span_context().trace_id(),
        cx.span().span_context().trace_id()
    );
    let mut job: HashMap<String, String> = HashMap::new();
    sextant_sdk::inject_into_map(&cx, &mut job);
    assert_eq!(
        sextant_sdk::extract_from_map(&job)
            .span()
            .span_context()
            .span_id(),
        cx.span().span_context().span_id()
    );
    cx.span().end();

    // The layer with no explicit tracer/propagator uses the globals.
    let app = Router::new()
        .route("/x", get(|| async { "ok" }))
        .layer(SextantLayer::new());
    let mut req = http::Request::get("/x")
        .body(axum::body::Body::empty())
        .unwrap();
    sextant_sdk::inject_context(&cx, req.headers_mut());
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);

    guard.flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let server = spans
        .iter()
        .find(|s| s.name == "GET /x")
        .expect("server span");
    assert_eq!(
        server.span_context.trace_id(),
        cx.span().span_context().trace_id()
    );
    assert_eq!(server.parent_span_id, cx.span().span_context().span_id());

    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap()
        .unwrap();
}
