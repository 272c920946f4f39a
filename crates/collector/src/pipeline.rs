//! Pipeline assembly: receivers -> memory limiter -> batch -> exporter, from config.

use std::future::Future;
use std::sync::Arc;

use crate::config::CollectorConfig;
use crate::metrics::CollectorMetrics;
use crate::processor::batch::BatchProcessor;
use crate::processor::memory_limiter::{MemoryLimiter, ReleaseMemory};
use crate::receiver;
use crate::Consumer;

/// An assembled pipeline, ready to serve receivers.
#[derive(Clone)]
pub struct Pipeline {
    head: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
    config: CollectorConfig,
}

impl Pipeline {
    /// Builds the processors in front of `exporter`. Must run inside a tokio runtime.
    /// `release` gives freed memory back to the OS when the memory limiter finds the process
    /// over its soft limit (see [`ReleaseMemory`]).
    pub fn build(
        config: CollectorConfig,
        exporter: Arc<dyn Consumer>,
        metrics: CollectorMetrics,
        release: Option<ReleaseMemory>,
    ) -> Self {
        let limiter = MemoryLimiter::with_release(&config.memory_limiter, metrics.clone(), release);
        let batch = BatchProcessor::new(config.batch.clone(), exporter, metrics.clone());
        Self {
            head: Arc::new(batch),
            limiter,
            metrics,
            config,
        }
    }

    /// The first stage, for in-process producers.
    pub fn head(&self) -> Arc<dyn Consumer> {
        self.head.clone()
    }

    /// Serves OTLP/gRPC until `shutdown`.
    pub async fn serve_grpc(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        receiver::grpc::serve(
            listener,
            self.head.clone(),
            self.limiter.clone(),
            self.metrics.clone(),
            self.config.grpc.max_recv_msg_size_mib * 1024 * 1024,
            shutdown,
        )
        .await
    }

    /// Serves OTLP/HTTP until `shutdown`.
    pub async fn serve_http(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = receiver::http::router(
            self.head.clone(),
            self.limiter.clone(),
            self.metrics.clone(),
            self.config.http.max_request_body_size,
        );
        receiver::http::serve(listener, router, shutdown).await
    }
}
