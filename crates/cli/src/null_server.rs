//! `sextant null-server`: an OTLP/gRPC trace receiver that decodes every request and drops it.
//!
//! It measures the floor of ingestion: the gRPC transport plus prost's decoding into the owned
//! OTLP types, with nothing stored. `cargo xtask bench ingest` compares the all-in-one server
//! against it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use sextant_otlp_proto::proto::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, TraceService, TraceServiceServer,
};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Receives OTLP/gRPC traces, decodes them and drops them (a benchmark baseline).
#[derive(clap::Args, Debug)]
pub struct NullServerArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub addr: SocketAddr,
    /// Also receive OTLP/HTTP protobuf (`POST /v1/traces`) on this address (the bound address
    /// is printed as `null-server http listening on ADDR`).
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
}

#[derive(Default)]
struct Counters {
    spans: AtomicU64,
    requests: AtomicU64,
}

struct NullTraceService {
    counters: Arc<Counters>,
}

#[tonic::async_trait]
impl TraceService for NullTraceService {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let spans = sextant_otlp_proto::span_count(&request.resource_spans) as u64;
        drop(request);
        self.counters.spans.fetch_add(spans, Ordering::Relaxed);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

pub async fn run(args: NullServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr().context("no local address")?;
    println!("null-server listening on {local}");

    let counters = Arc::new(Counters::default());
    if let Some(addr) = args.http_addr {
        let http = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        println!(
            "null-server http listening on {}",
            http.local_addr().context("no local address")?
        );
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
            .with_state(counters.clone());
        tokio::spawn(async move { axum::serve(http, app).await });
    }
    let service = TraceServiceServer::new(NullTraceService {
        counters: counters.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd);

    // One service, no router: the generated server answers UNIMPLEMENTED for other paths.
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            service,
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await
        .context("the null server failed")?;

    println!(
        "null-server received {} spans in {} requests",
        counters.spans.load(Ordering::Relaxed),
        counters.requests.load(Ordering::Relaxed)
    );
    Ok(())
}

/// `POST /v1/traces` with a protobuf body: decoded, counted, dropped.
async fn http_export(
    axum::extract::State(counters): axum::extract::State<Arc<Counters>>,
    body: axum::body::Bytes,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    Vec<u8>,
) {
    use prost::Message as _;
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let spans = sextant_otlp_proto::span_count(&request.resource_spans) as u64;
            counters.spans.fetch_add(spans, Ordering::Relaxed);
            counters.requests.fetch_add(1, Ordering::Relaxed);
            (
                axum::http::StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => (
            axum::http::StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            format!("bad ExportTraceServiceRequest: {e}").into_bytes(),
        ),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => eprintln!("null-server: SIGINT, shutting down"),
                    _ = term.recv() => eprintln!("null-server: SIGTERM, shutting down"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("null-server: SIGINT, shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("null-server: interrupted, shutting down");
    }
}
