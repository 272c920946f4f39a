//! The `otlphttp` exporter: OTLP/HTTP (`POST <endpoint>/v1/traces`), protobuf or JSON, gzip,
//! zstd or no compression, with reqwest. Protobuf bodies are the batch's bytes as they are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::json;
use sextant_otlp_proto::proto::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use sextant_otlp_proto::rpc::RpcStatus;

use super::exporterhelper::{
    self, gzip, Compression, QueueConfig, QueuedExporter, RetryConfig, SendError, Sender,
    TlsConfig, DEFAULT_TIMEOUT,
};
use crate::metrics::CollectorMetrics;
use crate::{BoxFuture, ExportOutcome, TraceBatch};

/// `encoding`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Proto,
    Json,
}

/// `exporters: otlphttp[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The base URL: traces go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The full URL of traces; wins over `endpoint`.
    pub traces_endpoint: Option<String>,
    pub encoding: Encoding,
    pub compression: Compression,
    pub headers: BTreeMap<String, String>,
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    pub tls: TlsConfig,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
    /// Accepted, unused.
    pub read_buffer_size: Option<usize>,
    /// Accepted, unused.
    pub write_buffer_size: Option<usize>,
    /// Idle connections kept per host.
    pub max_idle_conns_per_host: Option<usize>,
    /// Accepted, unused (reqwest pools per host).
    pub max_idle_conns: Option<usize>,
    /// Accepted, unused.
    pub max_conns_per_host: Option<usize>,
    #[serde(default, with = "opt_duration")]
    pub idle_conn_timeout: Option<Duration>,
    /// No connection reuse.
    pub disable_keep_alives: bool,
    /// Accepted and unused: Sextant exports traces only.
    pub metrics_endpoint: Option<String>,
    /// Accepted and unused: Sextant exports traces only.
    pub logs_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            traces_endpoint: None,
            encoding: Encoding::Proto,
            compression: Compression::Gzip,
            headers: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            // The reference's otlphttp defaults to tls.insecure false, but an http:// URL is
            // plain text there too: the scheme decides.
            tls: TlsConfig::default(),
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
            read_buffer_size: None,
            write_buffer_size: None,
            max_idle_conns_per_host: None,
            max_idle_conns: None,
            max_conns_per_host: None,
            idle_conn_timeout: None,
            disable_keep_alives: false,
            metrics_endpoint: None,
            logs_endpoint: None,
        }
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::config::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            humantime::parse_duration(t.trim()).map_err(|e| {
                serde::de::Error::custom(format!("{t:?} is not a duration like 200ms or 5s: {e}"))
            })
        })
        .transpose()
    }
}

/// The URL traces are posted to: `traces_endpoint`, else `<endpoint>/v1/traces`. Its scheme
/// decides TLS (`https://`), as in the reference.
fn traces_url(config: &Config) -> Result<String, String> {
    match &config.traces_endpoint {
        Some(t) => require_scheme(t, "traces_endpoint").map(|()| t.clone()),
        None => {
            require_scheme(&config.endpoint, "endpoint")?;
            Ok(format!(
                "{}/v1/traces",
                config.endpoint.trim_end_matches('/')
            ))
        }
    }
}

fn require_scheme(given: &str, key: &str) -> Result<(), String> {
    if given.is_empty() {
        return Err(format!("{key}: must be set"));
    }
    let rest = given
        .strip_prefix("http://")
        .or_else(|| given.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("{key}: {given:?} must be a URL starting with http:// or https://")
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{key}: {given:?} has no host"));
    }
    reqwest::Url::parse(given)
        .map(|_| ())
        .map_err(|e| format!("{key}: {given:?} is not a valid URL: {e}"))
}

/// The rustls configuration when the URL is `https://` (loads the PEM files).
fn tls_of(config: &Config, url: &str) -> Result<Option<rustls::ClientConfig>, String> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    // HTTP/1.1 only: reqwest is built without HTTP/2.
    crate::tls::client_config(&config.tls, &[b"http/1.1"]).map(Some)
}

fn header_map(config: &Config) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in &config.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| format!("headers.{k}: not a valid header name: {e}"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| format!("headers.{k}: not a valid header value: {e}"))?;
        map.insert(name, value);
    }
    let ct = match config.encoding {
        Encoding::Proto => "application/x-protobuf",
        Encoding::Json => "application/json",
    };
    map.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    match config.compression {
        Compression::Gzip => {
            map.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Compression::Zstd => {
            map.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        }
        Compression::None => {}
    }
    Ok(map)
}

/// Checks what serde cannot (URLs, TLS files, headers, retry and queue settings).
pub fn check(config: &Config) -> Result<(), String> {
    let url = traces_url(config)?;
    tls_of(config, &url)?;
    header_map(config)?;
    exporterhelper::check(&config.retry_on_failure, &config.sending_queue)
}

/// The exporter as the pipeline sees it.
pub type OtlpHttpExporter = QueuedExporter<HttpSender>;

/// Builds `otlphttp[/name]`. `tree`: its persistent queue, if `sending_queue.storage` is set.
pub fn build(
    name: &str,
    config: &Config,
    tree: Option<sled::Tree>,
    metrics: &CollectorMetrics,
) -> Result<Arc<OtlpHttpExporter>, String> {
    let sender = HttpSender::new(config)?;
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

/// One attempt of an OTLP/HTTP export.
pub struct HttpSender {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    encoding: Encoding,
    compression: Compression,
}

impl HttpSender {
    pub fn new(config: &Config) -> Result<Self, String> {
        check(config)?;
        let url = traces_url(config)?;
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls_of(config, &url)? {
            builder = builder.use_preconfigured_tls(tls);
        }
        if !config.timeout.is_zero() {
            builder = builder.timeout(config.timeout);
        }
        if let Some(n) = config.max_idle_conns_per_host {
            builder = builder.pool_max_idle_per_host(n);
        }
        if config.disable_keep_alives {
            builder = builder.pool_max_idle_per_host(0);
        }
        if let Some(t) = config.idle_conn_timeout {
            builder = builder.pool_idle_timeout(t);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url,
            headers: header_map(config)?,
            encoding: config.encoding,
            compression: config.compression,
        })
    }

    fn body(&self, batch: &TraceBatch) -> Result<Vec<u8>, SendError> {
        let raw = match self.encoding {
            Encoding::Proto => batch.to_protobuf(),
            Encoding::Json => {
                let req = ExportTraceServiceRequest::decode(batch.to_protobuf().as_slice())
                    .map_err(|e| SendError::permanent(format!("cannot decode the batch: {e}")))?;
                json::encode_request(&req)
            }
        };
        match self.compression {
            Compression::None => Ok(raw),
            Compression::Gzip => gzip(&raw)
                .map_err(|e| SendError::permanent(format!("cannot gzip the request: {e}"))),
            Compression::Zstd => zstd::bulk::compress(&raw, 3)
                .map_err(|e| SendError::permanent(format!("cannot zstd the request: {e}"))),
        }
    }
}

/// An error and its sources (reqwest's own text leaves out why a connection failed).
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

/// `Retry-After`: seconds (an HTTP date is not parsed: the backoff applies then).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The message of an error body (a `google.rpc.Status`, protobuf or JSON), else its text.
fn error_message(body: &[u8], json_body: bool) -> String {
    if !json_body {
        if let Ok(st) = RpcStatus::decode(body) {
            if !st.message.is_empty() {
                return st.message;
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut t: String = text.chars().take(300).collect();
    if t.is_empty() {
        t.push_str("(no body)");
    }
    t
}

impl Sender for HttpSender {
    fn send<'a>(
        &'a self,
        batch: &'a TraceBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, SendError>> {
        Box::pin(async move {
            let body = self.body(batch)?;
            let response = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    SendError::retryable(format!("POST {}: {}", self.url, chain(&e)), None)
                })?;
            let status = response.status();
            let delay = retry_after(response.headers());
            let json_body = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let bytes = response
                .bytes()
                .await
                .map_err(|e| SendError::retryable(format!("reading the response: {e}"), None))?;
            if status.is_success() {
                let parsed = if json_body {
                    json::decode_response(&bytes).ok()
                } else {
                    ExportTraceServiceResponse::decode(bytes.as_ref()).ok()
                };
                return Ok(match parsed.and_then(|r| r.partial_success) {
                    // The backend names no traces: the rejections stay unattributed.
                    Some(p) if p.rejected_spans > 0 => ExportOutcome {
                        rejected_spans: p.rejected_spans as u64,
                        message: p.error_message,
                        rejected_traces: Vec::new(),
                    },
                    _ => ExportOutcome::default(),
                });
            }
            let message = format!("HTTP {status}: {}", error_message(&bytes, json_body));
            match status.as_u16() {
                429 | 502 | 503 | 504 => Err(SendError::retryable(message, delay)),
                _ => Err(SendError::permanent(message)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PipelineError;
    use crate::exporter::exporterhelper::tests::spans;
    use crate::exporter::otlp::tests::Recorder;
    use crate::processor::memory_limiter::MemoryLimiter;
    use crate::Consumer;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn http_backend(
        sink: Arc<dyn Consumer>,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = CollectorMetrics::unregistered();
        let limiter = MemoryLimiter::new(&Default::default(), metrics.clone());
        let router = crate::receiver::http::router(sink, limiter, metrics, 20 << 20);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::receiver::http::serve(listener, router, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// A server answering the first `fail` requests with `status` (and Retry-After: 1), then
    /// 200 with an empty protobuf response.
    async fn scripted(status: u16, fail: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use axum::response::IntoResponse;
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move || {
                let c = c.clone();
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    if n < fail {
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            [("retry-after", "1")],
                            RpcStatus::new(14, "scripted failure").to_protobuf(),
                        )
                            .into_response()
                    } else {
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, calls)
    }

    fn fast(endpoint: String) -> Config {
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
    async fn delivers_proto_and_json_with_each_compression() {
        let sink = Recorder::new();
        let (addr, _stop) = http_backend(sink.clone()).await;
        let m = CollectorMetrics::unregistered();
        let mut expected = 0;
        for encoding in [Encoding::Proto, Encoding::Json] {
            for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
                let cfg = Config {
                    encoding,
                    compression,
                    ..fast(format!("http://{addr}"))
                };
                let e = build("otlphttp", &cfg, None, &m).unwrap();
                e.consume(spans(3, expected as u64, 4)).await.unwrap();
                expected += 4;
            }
        }
        assert_eq!(sink.span_count(), expected);
        let ids = sink.span_ids();
        assert!(ids.iter().all(|(t, _)| t == &vec![3u8; 16]));
        // traces_endpoint is used as is.
        let cfg = Config {
            traces_endpoint: Some(format!("http://{addr}/v1/traces")),
            ..fast("http://unused.invalid".into())
        };
        build("otlphttp/2", &cfg, None, &m)
            .unwrap()
            .consume(spans(3, 100, 1))
            .await
            .unwrap();
        assert_eq!(sink.span_count(), expected + 1);
    }

    #[tokio::test]
    async fn retries_503_after_retry_after() {
        let (addr, calls) = scripted(503, 1).await;
        let m = CollectorMetrics::unregistered();
        let e = build("h", &fast(format!("http://{addr}")), None, &m).unwrap();
        let t = std::time::Instant::now();
        e.consume(spans(1, 0, 2)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Retry-After: 1 beat the 10ms backoff.
        assert!(
            t.elapsed() >= Duration::from_millis(950),
            "{:?}",
            t.elapsed()
        );
        let (addr, calls) = scripted(429, 2).await;
        let e = build("h2", &fast(format!("http://{addr}")), None, &m).unwrap();
        e.consume(spans(1, 0, 2)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_400_is_not_retried() {
        let (addr, calls) = scripted(400, 100).await;
        let m = CollectorMetrics::unregistered();
        let e = build("h", &fast(format!("http://{addr}")), None, &m).unwrap();
        let err = e.consume(spans(1, 0, 2)).await.unwrap_err();
        assert!(
            matches!(&err, PipelineError::InvalidArgument(m) if m.contains("scripted failure")),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            m.exporter_send_failed_spans
                .get_or_create(&m.exporter("h"))
                .get(),
            2
        );
    }

    #[tokio::test]
    async fn persistent_queue_delivers_after_restart_when_the_backend_comes_up() {
        let dir = tempfile::tempdir().unwrap();
        // Reserve a port, then leave it closed: the backend is down.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let cfg = Config {
            sending_queue: QueueConfig {
                storage: Some("file_storage".into()),
                ..Default::default()
            },
            ..fast(format!("http://{addr}"))
        };
        let m = CollectorMetrics::unregistered();
        {
            let storage = crate::storage::Storage::open(dir.path()).unwrap();
            let e = build(
                "otlphttp",
                &cfg,
                Some(storage.tree("exporter/otlphttp").unwrap()),
                &m,
            )
            .unwrap();
            for i in 0..20 {
                e.consume(spans(7, i * 5, 5)).await.unwrap();
            }
            e.shutdown().await;
        }
        let storage = crate::storage::Storage::open(dir.path()).unwrap();
        let e = build(
            "otlphttp",
            &cfg,
            Some(storage.tree("exporter/otlphttp").unwrap()),
            &m,
        )
        .unwrap();
        assert_eq!(e.queue_len(), 20);
        let sink = Recorder::new();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let metrics = CollectorMetrics::unregistered();
        let limiter = MemoryLimiter::new(&Default::default(), metrics.clone());
        let router = crate::receiver::http::router(sink.clone(), limiter, metrics, 20 << 20);
        tokio::spawn(crate::receiver::http::serve(
            listener,
            router,
            futures::future::pending(),
        ));
        for _ in 0..500 {
            if e.queue_len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut ids: Vec<u64> = sink.span_ids().into_iter().map(|(_, s)| s).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        let duplicates = before - ids.len();
        assert_eq!(
            ids,
            (1..=100).collect::<Vec<u64>>(),
            "{duplicates} duplicates"
        );
        e.shutdown().await;
    }

    #[test]
    fn urls_and_keys() {
        let cfg = fast("http://h:4318/".into());
        assert_eq!(traces_url(&cfg).unwrap(), "http://h:4318/v1/traces");
        let cfg = fast("https://h:4318".into());
        assert_eq!(check(&cfg), Ok(()));
        assert_eq!(traces_url(&cfg).unwrap(), "https://h:4318/v1/traces");
        assert!(check(&fast("h:4318".into()))
            .unwrap_err()
            .starts_with("endpoint"));
        assert!(check(&fast("".into())).unwrap_err().starts_with("endpoint"));
        // TLS files are read (only) for https:// URLs.
        let tls = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let bad = Config {
            tls: tls.clone(),
            ..fast("https://h:4318".into())
        };
        let err = check(&bad).unwrap_err();
        assert!(
            err.starts_with("tls.ca_file: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        let plain = Config {
            tls,
            ..fast("http://h:4318".into())
        };
        assert_eq!(check(&plain), Ok(()));
        let parsed: Config = serde_json::from_str(
            r#"{"endpoint": "http://h:4318", "encoding": "json", "compression": "zstd",
                "timeout": "2s", "retry_on_failure": {"max_elapsed_time": "1m"}}"#,
        )
        .unwrap();
        assert_eq!(parsed.encoding, Encoding::Json);
        assert_eq!(parsed.timeout, Duration::from_secs(2));
        assert!(serde_json::from_str::<Config>(r#"{"endpoint": "x", "bogus": 1}"#).is_err());
        let none: Config = serde_json::from_str(r#"{"compression": ""}"#).unwrap();
        assert_eq!(none.compression, Compression::None);
    }

    /// An OTLP/HTTP receiver over TLS on 127.0.0.1:0.
    async fn https_backend(
        sink: Arc<dyn Consumer>,
        tls: &crate::tls::TlsServerConfig,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = CollectorMetrics::unregistered();
        let limiter = MemoryLimiter::new(&Default::default(), metrics.clone());
        let router = crate::receiver::http::router(sink, limiter, metrics, 20 << 20);
        let config = crate::tls::server_config(tls, &[b"h2", b"http/1.1"]).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::receiver::http::serve_with_tls(
            listener,
            router,
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
        HttpSender::new(&cfg).unwrap().send(&spans(6, 0, 2)).await
    }

    #[tokio::test]
    async fn delivers_over_https_and_refuses_an_untrusted_server() {
        let pki = crate::tls::tests::TestPki::new();
        let sink = Recorder::new();
        let (addr, stop) = https_backend(sink.clone(), &pki.server(false)).await;
        let port = addr.port();
        let m = CollectorMetrics::unregistered();
        let cfg = Config {
            tls: pki.client("ca.pem", false),
            ..fast(format!("https://localhost:{port}"))
        };
        let e = build("otlphttp/tls", &cfg, None, &m).unwrap();
        e.consume(spans(6, 0, 3)).await.unwrap();
        assert_eq!(sink.span_count(), 3);
        attempt(
            format!("https://127.0.0.1:{port}"),
            pki.client("ca.pem", false),
        )
        .await
        .unwrap();
        assert_eq!(sink.span_count(), 5);
        let err = attempt(
            format!("https://localhost:{port}"),
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
        let wrong_name = TlsConfig {
            server_name_override: Some("elsewhere.example".into()),
            ..pki.client("ca.pem", false)
        };
        assert!(attempt(format!("https://localhost:{port}"), wrong_name)
            .await
            .is_err());
        let right_name = TlsConfig {
            server_name_override: Some("localhost".into()),
            ..pki.client("ca.pem", false)
        };
        attempt(format!("https://127.0.0.1:{port}"), right_name)
            .await
            .unwrap();
        let skip = TlsConfig {
            insecure_skip_verify: true,
            ..Default::default()
        };
        attempt(format!("https://localhost:{port}"), skip)
            .await
            .unwrap();
        assert_eq!(sink.span_count(), 9);
        // Plain HTTP to the TLS server is not answered as OTLP.
        assert!(
            attempt(format!("http://localhost:{port}"), TlsConfig::default())
                .await
                .is_err()
        );
        assert_eq!(sink.span_count(), 9);
        // The server stops on its shutdown signal.
        drop(stop);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(attempt(
            format!("https://localhost:{port}"),
            pki.client("ca.pem", false)
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn https_mtls_requires_a_client_certificate() {
        let pki = crate::tls::tests::TestPki::new();
        let sink = Recorder::new();
        let (addr, _stop) = https_backend(sink.clone(), &pki.server(true)).await;
        let url = format!("https://localhost:{}", addr.port());
        let err = attempt(url.clone(), pki.client("ca.pem", false))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.message.to_lowercase().contains("certificate"),
            "{}",
            err.message
        );
        assert_eq!(sink.span_count(), 0);
        attempt(url, pki.client("ca.pem", true)).await.unwrap();
        assert_eq!(sink.span_count(), 2);
    }
}
