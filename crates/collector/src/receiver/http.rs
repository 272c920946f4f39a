//! The OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, gzip, deflate or
//! zstd content encoding, a size limit that also holds after decompression, and errors as
//! `google.rpc.Status` in the request's own encoding.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use prost::Message;
use sextant_otlp_proto::{json, wire};

use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::processor::memory_limiter::MemoryLimiter;
use crate::receiver::{rejected_of, response_for};
use crate::{Consumer, TraceBatch};

#[derive(Clone)]
struct Receiver {
    /// The receiver's id, for its metrics (`otlp`, `otlp/edge`).
    name: Arc<str>,
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
    max_body: usize,
}

/// The body encodings we speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// The router of the receiver (`/v1/traces`; other methods 405, other paths 404).
pub fn router(
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
    max_body: usize,
) -> Router {
    router_at("otlp", "/v1/traces", pipeline, limiter, metrics, max_body)
}

/// The router with traces posted to `path` (the receiver's `traces_url_path`).
pub fn router_at(
    name: &str,
    path: &str,
    pipeline: Arc<dyn Consumer>,
    limiter: MemoryLimiter,
    metrics: CollectorMetrics,
    max_body: usize,
) -> Router {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let allowed = format!("method {{}} not allowed on {path}: use POST");
    let missing = format!("not found: OTLP/HTTP traces go to POST {path}");
    let state = Receiver {
        name: Arc::from(name),
        pipeline,
        limiter,
        metrics,
        max_body,
    };
    Router::new()
        .route(
            &path,
            post(export).fallback(move |method: axum::http::Method| async move {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "POST")],
                    allowed.replace("{}", method.as_str()),
                )
            }),
        )
        .fallback(move || async move { (StatusCode::NOT_FOUND, missing) })
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves OTLP/HTTP on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, router, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (see [`crate::tls::server_config`]; HTTP/1.1 and
/// HTTP/2 by ALPN): handshakes run concurrently, and a client that fails one is logged and
/// dropped.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(config) = tls else {
        return axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
    };
    let mut accepted = crate::tls::accept_tls(listener, config, "otlp-http");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            s = accepted.recv() => match s {
                Some(s) => s,
                None => break,
            },
        };
        let peer = stream.get_ref().0.peer_addr().ok();
        let router = match peer {
            Some(peer) => router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
            None => router.clone(),
        };
        let service = hyper_util::service::TowerToHyperService::new(router);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(receiver = "otlp-http", error = %e, "connection ended with an error");
            }
        });
    }
    drop(accepted);
    graceful.shutdown().await;
    Ok(())
}

fn error_response(format: Format, err: &PipelineError) -> Response {
    let status = err.rpc_status();
    let body = match format {
        Format::Protobuf => status.to_protobuf(),
        Format::Json => status.to_json().into_bytes(),
    };
    let mut resp = (err.http_status(), body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Some(delay) = err.retry_after() {
        let secs = delay.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

fn format_of(headers: &HeaderMap) -> Result<Format, PipelineError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        "" => Err(PipelineError::UnsupportedMedia(
            "missing Content-Type: use application/x-protobuf or application/json".into(),
        )),
        other => Err(PipelineError::UnsupportedMedia(format!(
            "unsupported Content-Type {other:?}: use application/x-protobuf or application/json"
        ))),
    }
}

async fn export(
    State(rx): State<Receiver>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let format = match format_of(&headers) {
        Ok(f) => f,
        // The body's format is unknown: answer in protobuf, the OTLP default.
        Err(e) => return error_response(Format::Protobuf, &e),
    };
    match handle(&rx, format, &headers, body, client).await {
        Ok(resp) => resp,
        Err(e) => error_response(format, &e),
    }
}

async fn handle(
    rx: &Receiver,
    format: Format,
    headers: &HeaderMap,
    body: Body,
    client: Option<std::net::IpAddr>,
) -> Result<Response, PipelineError> {
    if rx.limiter.is_over() {
        return Err(rx.limiter.refusal());
    }
    let too_large = || {
        PipelineError::TooLarge(format!(
            "request body exceeds the limit of {} bytes",
            rx.max_body
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > rx.max_body) {
        // Read the body away before answering, so that a client that writes the whole body
        // before reading sees the 413 rather than a reset connection.
        drain(body, rx.max_body).await;
        return Err(too_large());
    }
    let admission = rx.limiter.admit(declared.unwrap_or(0))?;
    let raw = read_body(body, rx.max_body).await?.ok_or_else(too_large)?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let bytes = decompress(&encoding, raw, rx.max_body)?;
    let batch = match format {
        // Validated, not decoded: the bytes travel on as they came.
        Format::Protobuf => {
            let mut recorder = wire::Recorder::new(&bytes);
            wire::scan_request(&bytes, &mut recorder).map_err(|e| {
                PipelineError::InvalidArgument(format!("invalid OTLP protobuf body: {e}"))
            })?;
            let recorded = recorder.finish();
            TraceBatch::from_scanned(bytes.clone(), recorded)
        }
        Format::Json => {
            let request = json::decode_request(&bytes).map_err(|e| {
                PipelineError::InvalidArgument(format!("invalid OTLP/JSON body: {e}"))
            })?;
            TraceBatch::from_decoded(request.resource_spans)
        }
    };
    let mut batch = batch;
    batch.client = client;
    let spans = batch.span_count;
    // Account for the decoded size now that it is known.
    drop(admission);
    let _admission = match rx.limiter.admit(bytes.len()) {
        Ok(a) => a,
        Err(e) => {
            rx.metrics.refused(&rx.name, "http", spans);
            return Err(e);
        }
    };
    let outcome = match rx.pipeline.consume(batch).await {
        Ok(o) => o,
        Err(e) => {
            rx.metrics.refused(&rx.name, "http", spans);
            return Err(e);
        }
    };
    let rejected = rejected_of(&outcome, spans);
    rx.metrics.accepted(&rx.name, "http", spans - rejected);
    rx.metrics.refused(&rx.name, "http", rejected);
    let response = response_for(&outcome, spans);
    let body = match format {
        Format::Protobuf => response.encode_to_vec(),
        Format::Json => json::encode_response(&response),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(resp)
}

/// How much of an oversize body is read (and thrown away) before the 413 is sent, as a
/// multiple of the limit; past it, or after [`DRAIN_TIME`], the connection is closed.
const DRAIN_FACTOR: usize = 4;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body; `None` when it is larger than `max` (the rest is then drained).
async fn read_body(mut body: Body, max: usize) -> Result<Option<Bytes>, PipelineError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            PipelineError::InvalidArgument(format!("could not read the request body: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                drain(body, max).await;
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

/// Reads and discards what is left of a body, up to [`DRAIN_FACTOR`] times `max` bytes and
/// [`DRAIN_TIME`].
async fn drain(mut body: Body, max: usize) {
    let budget = max.saturating_mul(DRAIN_FACTOR);
    let _ = tokio::time::timeout(DRAIN_TIME, async move {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += data.len();
                if read > budget {
                    break;
                }
            }
        }
    })
    .await;
}

/// Decompresses `raw`, refusing output larger than `max` (so a small bomb cannot grow).
fn decompress(encoding: &str, raw: Bytes, max: usize) -> Result<Bytes, PipelineError> {
    let reader: Box<dyn Read> = match encoding {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(std::io::Cursor::new(raw))),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(std::io::Cursor::new(raw))),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(std::io::Cursor::new(raw))
                .map_err(|e| PipelineError::InvalidArgument(format!("invalid zstd body: {e}")))?,
        ),
        other => {
            return Err(PipelineError::UnsupportedMedia(format!(
                "unsupported Content-Encoding {other:?}: use gzip, deflate, zstd or none"
            )))
        }
    };
    let mut out = Vec::new();
    let read = reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| PipelineError::InvalidArgument(format!("invalid {encoding} body: {e}")))?;
    if read > max {
        return Err(PipelineError::TooLarge(format!(
            "request body exceeds the limit of {max} bytes after {encoding} decompression"
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decompression_is_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1_000_000]).unwrap();
        let bomb = Bytes::from(enc.finish().unwrap());
        assert!(bomb.len() < 10_000);
        let e = decompress("gzip", bomb.clone(), 100_000).unwrap_err();
        assert!(matches!(e, PipelineError::TooLarge(_)), "{e}");
        assert_eq!(
            decompress("gzip", bomb, 2_000_000).unwrap().len(),
            1_000_000
        );
        assert!(matches!(
            decompress("br", Bytes::new(), 10),
            Err(PipelineError::UnsupportedMedia(_))
        ));
        assert!(matches!(
            decompress("gzip", Bytes::from_static(b"nope"), 10),
            Err(PipelineError::InvalidArgument(_))
        ));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            format_of(&h),
            Err(PipelineError::UnsupportedMedia(_))
        ));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(format_of(&h).unwrap(), Format::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        assert_eq!(format_of(&h).unwrap(), Format::Protobuf);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(format_of(&h)
            .unwrap_err()
            .to_string()
            .contains("text/plain"));
    }
}
