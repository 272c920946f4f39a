//! Synthetic OTLP data and raw gRPC clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use sextant_otlp_proto::proto::{
    any_value::Value, collector::trace_service_client::TraceServiceClient, span::SpanKind,
    AnyValue, ExportTraceServiceRequest, ExportTraceServiceResponse, InstrumentationScope,
    KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

/// The gRPC method of OTLP trace export.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Fast, non-cryptographic, unique-enough random numbers (splitmix64 over a global counter
/// seeded from the clock and the pid).
pub fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let _ = STATE.compare_exchange(
        0,
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32)
            | 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn random_trace_id() -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&random_u64().to_be_bytes());
    id.extend_from_slice(&random_u64().to_be_bytes());
    id
}

pub fn random_span_id() -> Vec<u8> {
    random_u64().to_be_bytes().to_vec()
}

/// Nanoseconds since the epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_string()))
}

/// One trace of `spans` spans (the first the root, the others its children) from `service`,
/// each span carrying `padding` bytes in a `payload` attribute.
pub fn trace_request(
    service: &str,
    trace_id: &[u8],
    spans: usize,
    padding: usize,
) -> ExportTraceServiceRequest {
    let start = now_nanos() - 60_000_000_000;
    let root_id = random_span_id();
    let pad = "x".repeat(padding);
    let spans = (0..spans)
        .map(|n| {
            let span_id = if n == 0 {
                root_id.clone()
            } else {
                random_span_id()
            };
            let mut attributes = vec![
                kv("seq", Value::IntValue(n as i64)),
                kv_str("http.method", "GET"),
            ];
            if padding > 0 {
                attributes.push(kv_str("payload", &pad));
            }
            Span {
                trace_id: trace_id.to_vec(),
                span_id,
                parent_span_id: if n == 0 { Vec::new() } else { root_id.clone() },
                name: if n == 0 {
                    "root".to_string()
                } else {
                    format!("child-{n}")
                },
                kind: if n == 0 {
                    SpanKind::Server as i32
                } else {
                    SpanKind::Internal as i32
                },
                start_time_unix_nano: start + n as u64 * 1_000,
                end_time_unix_nano: start + 1_000_000 + n as u64 * 1_000,
                attributes,
                status: Some(Status::default()),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sextant-e2e".to_string(),
                    version: "1".to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A request of several traces whose protobuf encoding is at least `target_bytes` long.
pub fn request_of_size(service: &str, target_bytes: usize) -> ExportTraceServiceRequest {
    use prost::Message as _;
    let per_span = 4096;
    let spans_needed = target_bytes / per_span + 1;
    let mut req = ExportTraceServiceRequest::default();
    let mut left = spans_needed;
    while left > 0 {
        let n = left.min(100);
        let t = trace_request(service, &random_trace_id(), n, per_span);
        req.resource_spans.extend(t.resource_spans);
        left -= n;
    }
    debug_assert!(req.encoded_len() >= target_bytes);
    req
}

/// A gRPC channel to `url` (`http://127.0.0.1:PORT`).
pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The typed OTLP trace client.
pub async fn trace_client(url: &str) -> TraceServiceClient<Channel> {
    TraceServiceClient::new(channel(url).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Exports a request, returning the response or the status.
pub async fn export(
    client: &mut TraceServiceClient<Channel>,
    req: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    client.export(req).await.map(|r| r.into_inner())
}

/// A codec that sends and receives raw bytes.
#[derive(Debug, Clone, Default)]
pub struct BytesCodec;

#[derive(Debug, Clone, Default)]
pub struct BytesCoder;

impl Encoder for BytesCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCoder;
    type Decoder = BytesCoder;

    fn encoder(&mut self) -> BytesCoder {
        BytesCoder
    }

    fn decoder(&mut self) -> BytesCoder {
        BytesCoder
    }
}

/// Sends raw bytes as the message of a TraceService/Export call.
pub async fn export_raw(url: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    export_raw_on(channel(url).await, body).await
}

/// [`export_raw`] on an existing channel.
pub async fn export_raw_on(channel: Channel, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
    grpc.unary(tonic::Request::new(body), path, BytesCodec)
        .await
        .map(|r| r.into_inner())
}
