//! The official OpenTelemetry Rust SDK (opentelemetry-otlp 0.33) against the real server, over
//! OTLP/gRPC (plain and gzip) and OTLP/HTTP protobuf: a trace across three services, read back
//! through every form of the Tempo API and searched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use sextant_tests::flat::{self, FlatSpan};
use sextant_tests::scenario::{self, Expect};
use sextant_tests::Server;

// ---------------------------------------------------------------- recording what the SDK sent

/// Everything the SDK's exporters were asked to send, converted to OTLP with the SDK's own
/// transform, and every export error.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<FlatSpan>>>,
    errors: Arc<Mutex<Vec<String>>>,
    exports: Arc<Mutex<usize>>,
}

/// Wraps the OTLP exporter, recording each batch before it is sent and the outcome after.
#[derive(Debug)]
struct Tee<E> {
    inner: E,
    resource: Option<Resource>,
    recorder: RecorderHandle,
}

#[derive(Clone)]
struct RecorderHandle(Recorder);

impl std::fmt::Debug for RecorderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl<E: SpanExporter> SpanExporter for Tee<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let resource = self
            .resource
            .as_ref()
            .map(ResourceAttributesWithSchema::from)
            .unwrap_or_default();
        let rs = opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
            batch.clone(),
            &resource,
        );
        self.recorder
            .0
            .spans
            .lock()
            .unwrap()
            .extend(flat::flatten(&rs));
        let result = self.inner.export(batch).await;
        *self.recorder.0.exports.lock().unwrap() += 1;
        if let Err(e) = &result {
            self.recorder
                .0
                .errors
                .lock()
                .unwrap()
                .push(format!("{e:?}"));
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = Some(resource.clone());
        self.inner.set_resource(resource);
    }
}

// ---------------------------------------------------------------- the scenario

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    GrpcGzip,
    HttpProtobuf,
}

/// Where the exporters send to.
#[derive(Clone)]
struct Endpoints {
    grpc: String,
    traces: String,
}

fn exporter(server: &Endpoints, transport: Transport) -> opentelemetry_otlp::SpanExporter {
    match transport {
        Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(server.grpc.clone())
            .with_timeout(Duration::from_secs(30))
            .build()
            .expect("build gRPC exporter"),
        Transport::GrpcGzip => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(server.grpc.clone())
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .with_timeout(Duration::from_secs(30))
            .build()
            .expect("build gRPC gzip exporter"),
        Transport::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(server.traces.clone())
            .with_timeout(Duration::from_secs(30))
            .build()
            .expect("build HTTP exporter"),
    }
}

fn provider(
    server: &Endpoints,
    transport: Transport,
    service: &str,
    rec: &Recorder,
) -> SdkTracerProvider {
    let resource = Resource::builder()
        .with_service_name(service.to_string())
        .with_attributes([
            KeyValue::new("deployment.environment", "e2e"),
            KeyValue::new("service.instance.id", format!("{service}-1")),
            KeyValue::new("host.cores", 2i64),
        ])
        .build();
    SdkTracerProvider::builder()
        .with_resource(resource)
        .with_simple_exporter(Tee {
            inner: exporter(server, transport),
            resource: None,
            recorder: RecorderHandle(rec.clone()),
        })
        .build()
}

fn scope(name: &str) -> InstrumentationScope {
    InstrumentationScope::builder(name.to_string())
        .with_version("1.2.3")
        .with_attributes([KeyValue::new("scope.owner", "e2e")])
        .build()
}

/// Attributes of every type the API has.
fn typed_attributes() -> Vec<KeyValue> {
    vec![
        KeyValue::new("http.route", "/checkout"),
        KeyValue::new("order.id", "ord-7731"),
        KeyValue::new("cart.express", true),
        KeyValue::new("cart.items", 3i64),
        KeyValue::new("cart.total", 42.5f64),
        KeyValue::new("big.int", i64::MAX),
        KeyValue::new("neg.int", -17i64),
        KeyValue::new(
            "cart.skus",
            Value::Array(Array::String(vec![
                StringValue::from("sku-1"),
                StringValue::from("sku-2"),
            ])),
        ),
        KeyValue::new("cart.flags", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("cart.qty", Value::Array(Array::I64(vec![1, 2, -3]))),
        KeyValue::new("cart.prices", Value::Array(Array::F64(vec![9.99, 0.5]))),
        KeyValue::new("unicode", "größe ✓ 日本"),
    ]
}

/// What the scenario produced: the trace id, the other trace's id and the recording.
struct Sent {
    trace_id: String,
    other_trace_id: String,
    base: SystemTime,
    recorder: Recorder,
}

const SERVICES: [&str; 3] = ["frontend", "checkout", "inventory"];

/// Frontend (server root, client call) -> checkout (server with error, producer) -> inventory
/// (consumer with links, internal child). Times are explicit so durations are exact.
fn run_scenario(server: &Endpoints, transport: Transport) -> Sent {
    let rec = Recorder::default();
    let (pa, pb_, pc) = (
        provider(server, transport, SERVICES[0], &rec),
        provider(server, transport, SERVICES[1], &rec),
        provider(server, transport, SERVICES[2], &rec),
    );
    let ta = pa.tracer_with_scope(scope("e2e.frontend"));
    let tb = pb_.tracer_with_scope(scope("e2e.checkout"));
    let tc = pc.tracer_with_scope(scope("e2e.inventory"));
    let propagator = TraceContextPropagator::new();

    // Everything happened a minute ago, at exact offsets from `base`.
    let base = SystemTime::now() - Duration::from_secs(60);
    let t = |ms: u64| base + Duration::from_millis(ms);

    // Another trace, for a cross-trace link.
    let mut other = ta
        .span_builder("nightly-reindex")
        .with_kind(SpanKind::Internal)
        .with_start_time(t(0) - Duration::from_secs(5))
        .start_with_context(&ta, &Context::new());
    let other_cx = other.span_context().clone();
    other.end_with_timestamp(t(0) - Duration::from_secs(4));

    // frontend
    let root = ta
        .span_builder("GET /checkout")
        .with_kind(SpanKind::Server)
        .with_start_time(t(0))
        .with_attributes(typed_attributes())
        .start_with_context(&ta, &Context::new());
    let root_span_cx = root.span_context().clone();
    let root_cx = Context::new().with_span(root);
    root_cx.span().add_event_with_timestamp(
        "cache.miss",
        t(5),
        vec![
            KeyValue::new("cache.key", "cart:42"),
            KeyValue::new("cache.hit", false),
            KeyValue::new("cache.tries", 2i64),
            KeyValue::new("cache.ratio", 0.25f64),
        ],
    );
    let call = ta
        .span_builder("POST checkout/pay")
        .with_kind(SpanKind::Client)
        .with_start_time(t(10))
        .with_attributes([KeyValue::new("peer.service", "checkout")])
        .start_with_context(&ta, &root_cx);
    let call_cx = root_cx.with_span(call);
    let mut carrier: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&call_cx, &mut carrier);
    assert!(
        carrier.contains_key("traceparent"),
        "no traceparent injected: {carrier:?}"
    );

    // checkout
    let b_parent = propagator.extract_with_context(&Context::new(), &carrier);
    let pay = tb
        .span_builder("POST /pay")
        .with_kind(SpanKind::Server)
        .with_start_time(t(20))
        .with_attributes([KeyValue::new("payment.method", "card")])
        .start_with_context(&tb, &b_parent);
    let pay_cx = b_parent.with_span(pay);
    pay_cx.span().add_event_with_timestamp(
        "exception",
        t(250),
        vec![
            KeyValue::new("exception.type", "CardDeclined"),
            KeyValue::new("exception.message", "card declined by issuer"),
        ],
    );
    pay_cx
        .span()
        .set_status(Status::error("card declined by issuer"));
    let publish = tb
        .span_builder("orders publish")
        .with_kind(SpanKind::Producer)
        .with_start_time(t(30))
        .with_attributes([KeyValue::new("messaging.destination.name", "orders")])
        .start_with_context(&tb, &pay_cx);
    let publish_cx = pay_cx.with_span(publish);
    let mut message_headers: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&publish_cx, &mut message_headers);

    // inventory
    let c_parent = propagator.extract_with_context(&Context::new(), &message_headers);
    let consume = tc
        .span_builder("orders process")
        .with_kind(SpanKind::Consumer)
        .with_start_time(t(50))
        .with_links(vec![
            Link::new(
                other_cx.clone(),
                vec![
                    KeyValue::new("link.reason", "reindex"),
                    KeyValue::new("link.weight", 7i64),
                ],
                0,
            ),
            Link::with_context(root_span_cx.clone()),
        ])
        .start_with_context(&tc, &c_parent);
    let consume_cx = c_parent.with_span(consume);
    let mut reserve = tc
        .span_builder("reserve stock")
        .with_kind(SpanKind::Internal)
        .with_start_time(t(60))
        .with_attributes([KeyValue::new("stock.reserved", true)])
        .start_with_context(&tc, &consume_cx);
    reserve.end_with_timestamp(t(100));
    consume_cx.span().set_status(Status::Ok);
    consume_cx.span().end_with_timestamp(t(150));
    publish_cx.span().end_with_timestamp(t(40));
    pay_cx.span().end_with_timestamp(t(280));
    call_cx.span().end_with_timestamp(t(290));
    root_cx.span().end_with_timestamp(t(300));

    for p in [&pa, &pb_, &pc] {
        p.force_flush().expect("force_flush");
    }
    for p in [pa, pb_, pc] {
        p.shutdown().expect("shutdown tracer provider");
    }

    Sent {
        trace_id: root_span_cx.trace_id().to_string(),
        other_trace_id: other_cx.trace_id().to_string(),
        base,
        recorder: rec,
    }
}

async fn round_trip(transport: Transport) {
    let server = Server::start(&[]);
    let endpoints = Endpoints {
        grpc: server.grpc_url(),
        traces: server.traces_url(),
    };
    // The SDK's simple processor blocks on each export: keep it off the async workers (the
    // blocking thread still has the runtime's context for tonic and reqwest).
    let sent = tokio::task::spawn_blocking(move || run_scenario(&endpoints, transport))
        .await
        .expect("scenario panicked");
    let errors = sent.recorder.errors.lock().unwrap().clone();
    let exports = *sent.recorder.exports.lock().unwrap();
    assert!(
        errors.is_empty(),
        "the SDK's {transport:?} exporter failed {} of {exports} exports: {errors:#?}\n--- server stderr ---\n{}",
        errors.len(),
        server.stderr_tail()
    );
    let n = sent.recorder.spans.lock().unwrap().len();
    assert_eq!(n, 7, "the SDK exported {n} spans, expected 7");
    let expect = Expect {
        services: SERVICES.map(String::from),
        scope_version: "1.2.3".into(),
        scope_owner: "e2e".into(),
        sdk_language: "rust".into(),
        environment: "e2e".into(),
        order_id: "ord-7731".into(),
        base_ns: sent
            .base
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        sent: sent
            .recorder
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id_hex() == sent.trace_id)
            .cloned()
            .collect(),
        trace_id: sent.trace_id,
        other_trace_id: sent.other_trace_id,
    };
    scenario::check_all(&server, &expect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_three_service_trace_round_trips() {
    round_trip(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_three_service_trace_round_trips() {
    round_trip(Transport::GrpcGzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_three_service_trace_round_trips() {
    round_trip(Transport::HttpProtobuf).await;
}
