//! The OTLP/gRPC receiver: the standard `TraceService/Export`, gzip and zstd requests, a
//! maximum message size, and refusal before decoding while memory is over its limit.
//!
//! Requests are validated with a zero-copy scan ([`sextant_otlp_proto::wire`]) instead of being
//! decoded into structs: the bytes travel on as they came, and a stage that must change spans
//! decodes them then. So the service is written out here with its own codec, instead of the
//! generated `TraceServiceServer` with prost's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::{Buf, BufMut, Bytes};
use prost::Message;
use sextant_otlp_proto::proto::ExportTraceServiceResponse;
use sextant_otlp_proto::wire;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::metrics::CollectorMetrics;
use crate::processor::memory_limiter::MemoryLimiter;
use crate::receiver::{rejected_of, response_for};
use crate::{Consumer, TraceBatch};

/// The gRPC service name and the method path of OTLP traces.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A request that passed the scan: its bytes and what the scan recorded.
pub struct ValidatedRequest {
    pub bytes: Bytes,
    pub recorded: wire::Recorded,
}

/// Decodes requests by validating them; encodes responses with prost.
#[derive(Default, Clone, Copy)]
pub struct OtlpCodec;

impl Codec for OtlpCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = ValidatedRequest;
    type Encoder = ResponseEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

pub struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(&mut dst.writer().get_mut())
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = ValidatedRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        let mut recorder = wire::Recorder::new(&bytes);
        wire::scan_request(&bytes, &mut recorder)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let recorded = recorder.finish();
        Ok(Some(ValidatedRequest { bytes, recorded }))
    }
}

/// The export handler.
struct Export {
    /// The receiver's id, for its metrics (`otlp`, `otlp/edge`).
    name: Arc<str>,
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
}

impl Export {
    async fn export(
        &self,
        request: ValidatedRequest,
        client: Option<std::net::IpAddr>,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let spans = request.recorded.span_count();
        let _admission = match self.limiter.admit(request.bytes.len()) {
            Ok(a) => a,
            Err(e) => {
                self.metrics.refused(&self.name, "grpc", spans);
                return Err(e.to_grpc());
            }
        };
        let mut batch = TraceBatch::from_scanned(request.bytes, request.recorded);
        batch.client = client;
        match self.pipeline.consume(batch).await {
            Ok(outcome) => {
                let rejected = rejected_of(&outcome, spans);
                self.metrics.accepted(&self.name, "grpc", spans - rejected);
                self.metrics.refused(&self.name, "grpc", rejected);
                Ok(response_for(&outcome, spans))
            }
            Err(e) => {
                self.metrics.refused(&self.name, "grpc", spans);
                tracing::debug!(error = %e, spans, "grpc export refused");
                Err(e.to_grpc())
            }
        }
    }
}

struct ExportCall(Arc<Export>);

impl tonic::server::UnaryService<ValidatedRequest> for ExportCall {
    type Response = ExportTraceServiceResponse;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Self::Response>, Status>> + Send>>;

    fn call(&mut self, request: Request<ValidatedRequest>) -> Self::Future {
        let export = self.0.clone();
        let client = request.remote_addr().map(|a| a.ip());
        Box::pin(async move {
            export
                .export(request.into_inner(), client)
                .await
                .map(Response::new)
        })
    }
}

/// The `TraceService` as a tower service.
#[derive(Clone)]
pub struct TraceServer {
    export: Arc<Export>,
    max_message_bytes: usize,
}

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tower_service::Service<http::Request<B>> for TraceServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented(format!(
                    "{} is not a method of {SERVICE_NAME}",
                    req.uri().path()
                ))
                .into_http())
            });
        }
        let export = self.export.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let mut send = EnabledCompressionEncodings::default();
            send.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(OtlpCodec)
                .apply_compression_config(accept, send)
                .apply_max_message_size_config(Some(max), None);
            let mut response = grpc.unary(ExportCall(export), req).await;
            // tonic answers a message over the size limit with OUT_OF_RANGE, which OTLP
            // clients retry; resending the same message cannot help, so say
            // RESOURCE_EXHAUSTED without RetryInfo (not retryable), as OTLP asks.
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok());
            if status == Some("11") {
                response
                    .headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
    max_message_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with_tls(
        "otlp",
        listener,
        pipeline,
        limiter,
        metrics,
        max_message_bytes,
        None,
        shutdown,
    )
    .await
}

/// [`serve`], over TLS when `tls` is given (see [`crate::tls::server_config`], ALPN `h2`):
/// handshakes run concurrently, and a client that fails one (no certificate where
/// `client_ca_file` requires one, a CA it does not trust) is logged and dropped.
#[allow(clippy::too_many_arguments)] // the receiver's parts, each passed once by `service`
pub async fn serve_with_tls(
    name: &str,
    listener: tokio::net::TcpListener,
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
    max_message_bytes: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = TraceServer {
        export: Arc::new(Export {
            name: Arc::from(name),
            pipeline,
            limiter: limiter.clone(),
            metrics,
        }),
        max_message_bytes,
    };
    // Refuse before the body is read and decoded while the process is over its limit.
    let guarded = InterceptedService::new(service, move |req: Request<()>| {
        if limiter.is_over() {
            Err(limiter.refusal().to_grpc())
        } else {
            Ok(req)
        }
    });
    let router = tonic::transport::Server::builder().add_service(guarded);
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown,
                )
                .await
        }
        Some(config) => {
            let accepted = crate::tls::accept_tls(listener, config, "otlp-grpc");
            let incoming = futures::stream::unfold(accepted, |mut rx| async move {
                rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}
