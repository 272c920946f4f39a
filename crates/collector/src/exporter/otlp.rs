//! The `otlp` exporter: OTLP/gRPC with tonic. The batch's protobuf bytes are sent as they are
//! (a `TracesData` is a valid `ExportTraceServiceRequest`: both are repeated field 1), through
//! a raw-bytes codec: no decode, no re-encode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::proto::ExportTraceServiceResponse;
use sextant_otlp_proto::rpc::RpcStatus;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::exporterhelper::{
    self, grpc_endpoint, Compression, QueueConfig, QueuedExporter, RetryConfig, SendError, Sender,
    TlsConfig, DEFAULT_TIMEOUT,
};
use crate::metrics::CollectorMetrics;
use crate::{BoxFuture, ExportOutcome, TraceBatch};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `keepalive` (configgrpc): accepted and applied to the HTTP/2 connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeepaliveConfig {
    #[serde(with = "crate::config::duration")]
    pub time: Duration,
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    pub permit_without_stream: bool,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            time: Duration::ZERO,
            timeout: Duration::ZERO,
            permit_without_stream: false,
        }
    }
}

/// `exporters: otlp[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `host:port` (TLS unless `tls.insecure`), `http://host:port` (plain) or
    /// `https://host:port` (TLS).
    pub endpoint: String,
    pub tls: TlsConfig,
    pub headers: BTreeMap<String, String>,
    pub compression: Compression,
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
    /// Accepted; tonic's channel balances over one resolved address.
    pub balancer_name: Option<String>,
    pub keepalive: Option<KeepaliveConfig>,
    /// Accepted, unused.
    pub read_buffer_size: Option<usize>,
    /// Accepted, unused.
    pub write_buffer_size: Option<usize>,
    /// Accepted: calls always wait for the connection (retries cover an outage).
    pub wait_for_ready: Option<bool>,
    /// Overrides the `:authority` of requests.
    pub authority: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            tls: TlsConfig::default(),
            headers: BTreeMap::new(),
            compression: Compression::Gzip,
            timeout: DEFAULT_TIMEOUT,
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
            balancer_name: None,
            keepalive: None,
            read_buffer_size: None,
            write_buffer_size: None,
            wait_for_ready: None,
            authority: None,
        }
    }
}

/// The exporter as the pipeline sees it.
pub type OtlpExporter = QueuedExporter<GrpcSender>;

/// Checks what serde cannot (endpoint, TLS files, headers, retry and queue settings).
pub fn check(config: &Config) -> Result<(), String> {
    let (url, tls) = grpc_endpoint(&config.endpoint, &config.tls)?;
    if tls {
        tls_connector(config, &url)?;
    }
    metadata(&config.headers)?;
    exporterhelper::check(&config.retry_on_failure, &config.sending_queue)
}

/// Builds `otlp[/name]`. `tree`: its persistent queue (`exporter/<name>` in the storage that
/// `sending_queue.storage` names), if any. Must run inside a tokio runtime.
pub fn build(
    name: &str,
    config: &Config,
    tree: Option<sled::Tree>,
    metrics: &CollectorMetrics,
) -> Result<Arc<OtlpExporter>, String> {
    let sender = GrpcSender::new(config)?;
    QueuedExporter::build(
        name,
        sender,
        config.timeout,
        &config.retry_on_failure,
        &config.sending_queue,
        tree,
        metrics,
    )
    .map(Arc::new)
}

fn metadata(headers: &BTreeMap<String, String>) -> Result<MetadataMap, String> {
    let mut map = MetadataMap::new();
    for (k, v) in headers {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("headers.{k}: not a valid header name: {e}"))?;
        let value = MetadataValue::try_from(v.as_str())
            .map_err(|e| format!("headers.{k}: not a valid header value: {e}"))?;
        map.insert(key, value);
    }
    Ok(map)
}

/// One attempt of an OTLP/gRPC export.
pub struct GrpcSender {
    grpc: tonic::client::Grpc<Channel>,
    headers: MetadataMap,
    timeout: Duration,
}

impl GrpcSender {
    /// Checks the config and creates the (lazily connecting) channel.
    pub fn new(config: &Config) -> Result<Self, String> {
        let (url, tls) = grpc_endpoint(&config.endpoint, &config.tls)?;
        // The channel always connects to an http:// URI: with TLS our connector does the
        // handshake, and the origin carries https:// into the requests' :scheme.
        let connect_uri = match url.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => url.clone(),
        };
        let mut endpoint = Endpoint::from_shared(connect_uri)
            .map_err(|e| {
                format!(
                    "endpoint: {:?} is not a valid address: {e}",
                    config.endpoint
                )
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(k) = &config.keepalive {
            if !k.time.is_zero() {
                endpoint = endpoint
                    .http2_keep_alive_interval(k.time)
                    .keep_alive_while_idle(k.permit_without_stream);
            }
            if !k.timeout.is_zero() {
                endpoint = endpoint.keep_alive_timeout(k.timeout);
            }
        }
        let scheme = if tls { "https" } else { "http" };
        let authority = match &config.authority {
            Some(a) => Some(a.clone()),
            None if tls => endpoint.uri().authority().map(|a| a.to_string()),
            None => None,
        };
        if let Some(a) = &authority {
            let origin: http::Uri = format!("{scheme}://{a}")
                .parse()
                .map_err(|e| format!("authority: {a:?} is not a valid authority: {e}"))?;
            endpoint = endpoint.origin(origin);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("the otlp exporter must be built inside a tokio runtime".into());
        }
        let channel = if tls {
            endpoint.connect_with_connector_lazy(tls_connector(config, &url)?)
        } else {
            endpoint.connect_lazy()
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        match config.compression {
            Compression::Gzip => grpc = grpc.send_compressed(CompressionEncoding::Gzip),
            Compression::Zstd => grpc = grpc.send_compressed(CompressionEncoding::Zstd),
            Compression::None => {}
        }
        grpc = grpc
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        let headers = metadata(&config.headers)?;
        Ok(Self {
            grpc,
            headers,
            timeout: config.timeout,
        })
    }
}

impl Sender for GrpcSender {
    fn send<'a>(
        &'a self,
        batch: &'a TraceBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, SendError>> {
        Box::pin(async move {
            let body = match (batch.encoded.len(), batch.decoded.is_empty()) {
                (1, true) => batch.encoded[0].clone(),
                _ => Bytes::from(batch.to_protobuf()),
            };
            let mut request = tonic::Request::new(body);
            *request.metadata_mut() = self.headers.clone();
            if !self.timeout.is_zero() {
                request.set_timeout(self.timeout);
            }
            let mut grpc = self.grpc.clone();
            grpc.ready()
                .await
                .map_err(|e| SendError::retryable(format!("cannot connect: {e}"), None))?;
            let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
            match grpc.unary(request, path, RawCodec).await {
                Ok(response) => Ok(outcome_of(response.get_ref())),
                // A status with a source was made here, from a failure of the connection
                // (e.g. the server closed it after refusing our certificate): retryable,
                // whatever its code.
                Err(status) => match std::error::Error::source(&status) {
                    Some(source) => {
                        let detail = chain(source);
                        let message = if detail.starts_with(status.message()) {
                            format!("{:?}: {detail}", status.code())
                        } else {
                            format!("{:?}: {}: {detail}", status.code(), status.message())
                        };
                        Err(SendError::retryable(message, None))
                    }
                    None => Err(error_of(&status)),
                },
            }
        })
    }
}

/// The TLS connector of `config` for `url` (`https://host:port`): loads the PEM files.
fn tls_connector(config: &Config, url: &str) -> Result<TlsConnector, String> {
    let uri: http::Uri = url.parse().map_err(|e| {
        format!(
            "endpoint: {:?} is not a valid address: {e}",
            config.endpoint
        )
    })?;
    let host = uri
        .host()
        .ok_or_else(|| format!("endpoint: {:?} has no host", config.endpoint))?;
    let name = crate::tls::server_name(&config.tls, host)?;
    let rustls = crate::tls::client_config(&config.tls, &[b"h2"])?;
    Ok(TlsConnector {
        config: Arc::new(rustls),
        name,
    })
}

/// Connects over TCP and completes the TLS handshake (ALPN h2) for the channel.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<TlsIo, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = self.name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = connector.connect(name, tcp).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("TLS handshake with {host}:{port}: {e}"))
            })?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// An error and its sources, joined with ": ".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

fn outcome_of(response: &ExportTraceServiceResponse) -> ExportOutcome {
    match &response.partial_success {
        // A backend's partial success names no traces: the rejections stay unattributed.
        Some(p) if p.rejected_spans > 0 => ExportOutcome {
            rejected_spans: p.rejected_spans as u64,
            message: p.error_message.clone(),
            rejected_traces: Vec::new(),
        },
        _ => ExportOutcome::default(),
    }
}

/// Maps a gRPC status to retryable or permanent as OTLP says: UNAVAILABLE, CANCELLED,
/// DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS are retryable; RESOURCE_EXHAUSTED only
/// with `RetryInfo`; the rest is permanent.
pub fn error_of(status: &Status) -> SendError {
    let delay = retry_delay(status.details());
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => SendError::retryable(message, delay),
        Code::ResourceExhausted if delay.is_some() => SendError::retryable(message, delay),
        _ => SendError::permanent(message),
    }
}

/// The `RetryInfo.retry_delay` in the `google.rpc.Status` details, if any.
pub fn retry_delay(details: &[u8]) -> Option<Duration> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct ProtoDuration {
        #[prost(int64, tag = "1")]
        seconds: i64,
        #[prost(int32, tag = "2")]
        nanos: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        retry_delay: Option<ProtoDuration>,
    }
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    status
        .details
        .iter()
        .filter(|d| d.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|d| RetryInfo::decode(d.value.as_slice()).ok()?.retry_delay)
        .map(|d| {
            Duration::new(
                d.seconds.max(0) as u64,
                d.nanos.clamp(0, 999_999_999) as u32,
            )
        })
}

/// Sends bytes as they are; decodes the response with prost.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the export response: {e}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::PipelineError;
    use crate::exporter::exporterhelper::tests::spans;
    use crate::processor::memory_limiter::MemoryLimiter;
    use crate::storage::Storage;
    use crate::Consumer;
    use parking_lot::Mutex;
    use sextant_otlp_proto::proto::ResourceSpans;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend: records the spans it gets; fails the first `fail` batches with `error`.
    pub(crate) struct Recorder {
        pub spans: Mutex<Vec<ResourceSpans>>,
        pub calls: AtomicUsize,
        pub fail: usize,
        pub error: Option<PipelineError>,
    }

    impl Recorder {
        pub(crate) fn new() -> Arc<Self> {
            Self::failing(0, None)
        }

        pub(crate) fn failing(fail: usize, error: Option<PipelineError>) -> Arc<Self> {
            Arc::new(Self {
                spans: Mutex::new(Vec::new()),
                calls: AtomicUsize::new(0),
                fail,
                error,
            })
        }

        pub(crate) fn span_count(&self) -> usize {
            sextant_otlp_proto::span_count(&self.spans.lock())
        }

        /// Span ids (first 8 bytes as u64) of all spans received.
        pub(crate) fn span_ids(&self) -> Vec<(Vec<u8>, u64)> {
            let mut out = Vec::new();
            for rs in self.spans.lock().iter() {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&s.span_id[..8]);
                        out.push((s.trace_id.clone(), u64::from_be_bytes(b)));
                    }
                }
            }
            out
        }
    }

    impl Consumer for Recorder {
        fn consume(
            &self,
            mut batch: TraceBatch,
        ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if n < self.fail {
                    if let Some(e) = &self.error {
                        return Err(e.clone());
                    }
                }
                let decoded = batch
                    .decode()
                    .map_err(|e| PipelineError::InvalidArgument(e.to_string()))?;
                self.spans.lock().extend(decoded.drain(..));
                Ok(ExportOutcome::default())
            })
        }
    }

    /// Starts an OTLP/gRPC receiver on 127.0.0.1:0 feeding `sink`; returns its address and a
    /// handle that stops it when dropped.
    pub(crate) async fn grpc_backend(
        sink: Arc<dyn Consumer>,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        grpc_backend_on(listener, sink)
    }

    pub(crate) fn grpc_backend_on(
        listener: tokio::net::TcpListener,
        sink: Arc<dyn Consumer>,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let addr = listener.local_addr().unwrap();
        let metrics = CollectorMetrics::unregistered();
        let limiter = MemoryLimiter::new(&Default::default(), metrics.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::receiver::grpc::serve(
            listener,
            sink,
            limiter,
            metrics,
            20 << 20,
            async move {
                let _ = rx.await;
            },
        ));
        (addr, tx)
    }

    pub(crate) fn fast(endpoint: String) -> Config {
        Config {
            endpoint,
            retry_on_failure: RetryConfig {
                initial_interval: Duration::from_millis(10),
                max_interval: Duration::from_millis(50),
                max_elapsed_time: Duration::from_secs(10),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn delivers_over_grpc_with_gzip_and_zstd() {
        let sink = Recorder::new();
        let (addr, _stop) = grpc_backend(sink.clone()).await;
        let m = CollectorMetrics::unregistered();
        for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let cfg = Config {
                compression,
                ..fast(format!("http://{addr}"))
            };
            let e = build("otlp/test", &cfg, None, &m).unwrap();
            e.consume(spans(1, 0, 3)).await.unwrap();
            // An encoded batch goes out as its bytes.
            let enc = TraceBatch::from_encoded(Bytes::from(spans(2, 10, 2).to_protobuf()), 2);
            e.consume(enc).await.unwrap();
        }
        assert_eq!(sink.span_count(), 15);
        assert_eq!(
            m.exporter_sent_spans
                .get_or_create(&m.exporter("otlp/test"))
                .get(),
            15
        );
    }

    #[tokio::test]
    async fn retries_after_unavailable_and_refuses_invalid_argument() {
        let sink = Recorder::failing(2, Some(PipelineError::Unavailable("busy".into())));
        let (addr, _stop) = grpc_backend(sink.clone()).await;
        let m = CollectorMetrics::unregistered();
        let e = build("otlp", &fast(format!("http://{addr}")), None, &m).unwrap();
        let t = std::time::Instant::now();
        e.consume(spans(1, 0, 2)).await.unwrap();
        assert_eq!(sink.calls.load(Ordering::SeqCst), 3);
        // The receiver's RetryInfo (1s) beat the 10ms backoff, twice.
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(sink.span_count(), 2);

        let bad = Recorder::failing(100, Some(PipelineError::InvalidArgument("bad".into())));
        let (addr, _stop2) = grpc_backend(bad.clone()).await;
        let e = build("otlp/bad", &fast(format!("http://{addr}")), None, &m).unwrap();
        let err = e.consume(spans(1, 0, 2)).await.unwrap_err();
        assert!(matches!(err, PipelineError::InvalidArgument(_)), "{err:?}");
        assert_eq!(bad.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn persistent_queue_loses_nothing_across_an_outage_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener); // the backend is down
        let cfg = Config {
            sending_queue: QueueConfig {
                storage: Some("file_storage".into()),
                num_consumers: 4,
                ..Default::default()
            },
            ..fast(format!("http://{addr}"))
        };
        let m = CollectorMetrics::unregistered();
        {
            let storage = Storage::open(dir.path()).unwrap();
            let e = build(
                "otlp",
                &cfg,
                Some(storage.tree("exporter/otlp").unwrap()),
                &m,
            )
            .unwrap();
            for i in 0..30 {
                e.consume(spans(5, i * 4, 4)).await.unwrap();
            }
            assert_eq!(e.queue_len(), 30);
            e.shutdown().await;
        }
        let storage = Storage::open(dir.path()).unwrap();
        let e = build(
            "otlp",
            &cfg,
            Some(storage.tree("exporter/otlp").unwrap()),
            &m,
        )
        .unwrap();
        let sink = Recorder::new();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (_, _stop) = grpc_backend_on(listener, sink.clone());
        for _ in 0..500 {
            if e.queue_len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut ids: Vec<u64> = sink.span_ids().into_iter().map(|(_, s)| s).collect();
        ids.sort_unstable();
        let received = ids.len();
        ids.dedup();
        assert_eq!(
            ids,
            (1..=120).collect::<Vec<u64>>(),
            "{} duplicates",
            received - 120
        );
        assert_eq!(storage.tree("exporter/otlp").unwrap().len(), 0);
        e.shutdown().await;
    }

    /// A backend that refuses one span of each batch for good (a partial success).
    struct RejectOne;

    impl Consumer for RejectOne {
        fn consume(
            &self,
            _batch: TraceBatch,
        ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
            Box::pin(async {
                Ok(ExportOutcome {
                    rejected_spans: 1,
                    message: "invalid trace id".into(),
                    ..Default::default()
                })
            })
        }
    }

    #[tokio::test]
    async fn partial_success_is_counted_as_failed_and_not_retried() {
        let (addr, _stop) = grpc_backend(Arc::new(RejectOne)).await;
        let m = CollectorMetrics::unregistered();
        let e = build("otlp/p", &fast(format!("http://{addr}")), None, &m).unwrap();
        let outcome = e.consume(spans(1, 0, 4)).await.unwrap();
        assert_eq!(outcome.rejected_spans, 1);
        assert_eq!(outcome.message, "invalid trace id");
        let labels = m.exporter("otlp/p");
        assert_eq!(m.exporter_send_failed_spans.get_or_create(&labels).get(), 1);
        assert_eq!(m.exporter_sent_spans.get_or_create(&labels).get(), 3);
    }

    #[test]
    fn grpc_codes_map_as_otlp_says() {
        let with_info = PipelineError::MemoryLimited {
            detail: "x".into(),
            retry_after: Duration::from_secs(3),
        }
        .to_grpc();
        let e = error_of(&with_info);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert!(!error_of(&Status::resource_exhausted("x")).is_retryable());
        let exhausted = Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            with_info.details().to_vec().into(),
        );
        assert!(error_of(&exhausted).is_retryable());
        assert!(error_of(&Status::deadline_exceeded("x")).is_retryable());
        assert!(!error_of(&Status::invalid_argument("x")).is_retryable());
        assert!(!error_of(&Status::unauthenticated("x")).is_retryable());
    }

    #[tokio::test]
    async fn config_keys_and_tls_files() {
        // A bare host:port is TLS (system roots) unless insecure.
        let cfg = Config {
            endpoint: "backend:4317".into(),
            ..Default::default()
        };
        assert!(GrpcSender::new(&cfg).is_ok());
        assert_eq!(check(&cfg), Ok(()));
        let missing = Config {
            tls: TlsConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
            ..cfg.clone()
        };
        let err = check(&missing).unwrap_err();
        assert!(
            err.starts_with("tls.ca_file: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        // Plain text: the TLS files are not read.
        let insecure = Config {
            tls: TlsConfig {
                insecure: true,
                ..missing.tls.clone()
            },
            ..missing.clone()
        };
        assert_eq!(check(&insecure), Ok(()));
        assert_eq!(Config::default().compression, Compression::Gzip);
        assert_eq!(Config::default().timeout, Duration::from_secs(5));
    }

    /// An OTLP/gRPC receiver over TLS on 127.0.0.1:0.
    async fn grpc_tls_backend(
        sink: Arc<dyn Consumer>,
        tls: &crate::tls::TlsServerConfig,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = CollectorMetrics::unregistered();
        let limiter = MemoryLimiter::new(&Default::default(), metrics.clone());
        let config = crate::tls::server_config(tls, &[b"h2"]).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::receiver::grpc::serve_with_tls(
            "otlp",
            listener,
            sink,
            limiter,
            metrics,
            20 << 20,
            Some(config),
            async move {
                let _ = rx.await;
            },
        ));
        (addr, tx)
    }

    /// One attempt, without retries.
    async fn attempt(endpoint: String, tls: TlsConfig) -> Result<ExportOutcome, SendError> {
        let cfg = Config {
            tls,
            ..fast(endpoint)
        };
        GrpcSender::new(&cfg).unwrap().send(&spans(4, 0, 2)).await
    }

    #[tokio::test]
    async fn delivers_over_tls_and_refuses_an_untrusted_server() {
        let pki = crate::tls::tests::TestPki::new();
        let sink = Recorder::new();
        let (addr, _stop) = grpc_tls_backend(sink.clone(), &pki.server(false)).await;
        let port = addr.port();
        // Schemeless: TLS, as the reference does unless insecure.
        let m = CollectorMetrics::unregistered();
        let cfg = Config {
            tls: pki.client("ca.pem", false),
            ..fast(format!("localhost:{port}"))
        };
        let e = build("otlp/tls", &cfg, None, &m).unwrap();
        e.consume(spans(4, 0, 3)).await.unwrap();
        assert_eq!(sink.span_count(), 3);
        // https:// and an IP address (the certificate names 127.0.0.1 too).
        attempt(
            format!("https://127.0.0.1:{port}"),
            pki.client("ca.pem", false),
        )
        .await
        .unwrap();
        assert_eq!(sink.span_count(), 5);
        // A CA that did not sign the server's certificate.
        let err = attempt(
            format!("localhost:{port}"),
            pki.client("other-ca.pem", false),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.message.to_lowercase().contains("certificate"),
            "{}",
            err.message
        );
        // The server's certificate does not name the override.
        let wrong_name = TlsConfig {
            server_name_override: Some("elsewhere.example".into()),
            ..pki.client("ca.pem", false)
        };
        let err = attempt(format!("localhost:{port}"), wrong_name)
            .await
            .unwrap_err();
        assert!(err.message.contains("certificate"), "{}", err.message);
        let right_name = TlsConfig {
            server_name_override: Some("localhost".into()),
            ..pki.client("ca.pem", false)
        };
        attempt(format!("127.0.0.1:{port}"), right_name)
            .await
            .unwrap();
        // insecure_skip_verify: no CA needed.
        let skip = TlsConfig {
            insecure_skip_verify: true,
            ..Default::default()
        };
        attempt(format!("localhost:{port}"), skip).await.unwrap();
        assert_eq!(sink.span_count(), 9);
        // Plain HTTP/2 to a TLS server fails.
        let insecure = TlsConfig {
            insecure: true,
            ..Default::default()
        };
        assert!(attempt(format!("localhost:{port}"), insecure)
            .await
            .is_err());
        assert_eq!(sink.span_count(), 9);
    }

    #[tokio::test]
    async fn mtls_requires_a_client_certificate() {
        let pki = crate::tls::tests::TestPki::new();
        let sink = Recorder::new();
        let (addr, _stop) = grpc_tls_backend(sink.clone(), &pki.server(true)).await;
        let endpoint = format!("localhost:{}", addr.port());
        let err = attempt(endpoint.clone(), pki.client("ca.pem", false))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.message.to_lowercase().contains("certificate"),
            "{}",
            err.message
        );
        assert_eq!(sink.span_count(), 0);
        attempt(endpoint, pki.client("ca.pem", true)).await.unwrap();
        assert_eq!(sink.span_count(), 2);
    }

    #[tokio::test]
    async fn insecure_true_keeps_plain_http2() {
        let sink = Recorder::new();
        let (addr, _stop) = grpc_backend(sink.clone()).await;
        let insecure = TlsConfig {
            insecure: true,
            ..Default::default()
        };
        attempt(format!("127.0.0.1:{}", addr.port()), insecure)
            .await
            .unwrap();
        assert_eq!(sink.span_count(), 2);
        // Without insecure, a bare host:port is TLS, which a plain server does not speak.
        let pki = crate::tls::tests::TestPki::new();
        let err = attempt(
            format!("127.0.0.1:{}", addr.port()),
            pki.client("ca.pem", false),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(sink.span_count(), 2);
    }
}
