//! The OTLP/gRPC receiver: the standard `TraceService/Export`, gzip and zstd requests,
//! a maximum message size, and refusal before decoding while memory is over its limit.

use std::future::Future;
use std::sync::Arc;

use prost::Message;
use sextant_otlp_proto::proto::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, TraceService, TraceServiceServer,
};
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::metrics::CollectorMetrics;
use crate::processor::memory_limiter::MemoryLimiter;
use crate::receiver::response_for;
use crate::{Consumer, TraceBatch};

/// The gRPC service.
pub struct GrpcReceiver {
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let batch = TraceBatch::new(request.resource_spans);
        let spans = batch.span_count;
        let wire = batch
            .resource_spans
            .iter()
            .map(|rs| rs.encoded_len())
            .sum::<usize>();
        let _admission = match self.limiter.admit(wire) {
            Ok(a) => a,
            Err(e) => {
                self.metrics.refused("otlp", "grpc", spans);
                return Err(e.to_grpc());
            }
        };
        match self.pipeline.consume(batch).await {
            Ok(outcome) => {
                self.metrics
                    .accepted("otlp", "grpc", spans - outcome.rejected_spans as usize);
                self.metrics
                    .refused("otlp", "grpc", outcome.rejected_spans as usize);
                Ok(Response::new(response_for(&outcome)))
            }
            Err(e) => {
                self.metrics.refused("otlp", "grpc", spans);
                tracing::debug!(error = %e, spans, "grpc export refused");
                Err(e.to_grpc())
            }
        }
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
    let receiver = GrpcReceiver {
        pipeline,
        limiter: limiter.clone(),
        metrics,
    };
    let service = TraceServiceServer::new(receiver)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes);
    // Refuse before the body is read and decoded while the process is over its limit.
    let guarded = InterceptedService::new(service, move |req: Request<()>| {
        if limiter.is_over() {
            Err(limiter.refusal().to_grpc())
        } else {
            Ok(req)
        }
    });
    tonic::transport::Server::builder()
        .add_service(guarded)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}
