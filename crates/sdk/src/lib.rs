//! # sextant-sdk
//!
//! Instrument a Rust service in one call: OTLP export to Sextant (or any OTLP
//! backend), environment-aware sampling, W3C/B3/Jaeger propagation, a tower
//! HTTP layer for servers and clients, and JSON logs carrying trace ids.
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> Result<(), sextant_sdk::Error> {
//!     let _guard = sextant_sdk::Sdk::builder().service_name("checkout").with_logs(true).init()?;
//!     let app: axum::Router = axum::Router::new()
//!         .route("/", axum::routing::get(|| async { "hi" }))
//!         .layer(sextant_sdk::SextantLayer::new());
//!     # let _ = app;
//!     Ok(())
//! } // the guard flushes and shuts the tracer provider down here
//! ```
//!
//! ## Globals
//! A library never installs globals on its own. [`init`] / [`SdkBuilder::init`]
//! *do*, on purpose: they set the global tracer provider and text-map
//! propagator (and, with `.with_logs(true)`, the global `tracing`
//! subscriber). [`SdkBuilder::build`] makes the same provider and propagator
//! without installing anything.
//!
//! ## Environment
//! See [`config`]: `OTEL_SDK_DISABLED`, `OTEL_ENABLED`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`grpc` | `http/protobuf`), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_INSECURE`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_PROPAGATORS`,
//! `ENVIRONMENT`, `APP_VERSION`, `TRACING_SAMPLE_PERCENTAGE` and the
//! Kubernetes downward-API variables of [`resource`]. Code-level settings win
//! over the environment.
//!
//! ## Threads
//! Spans are batched and exported from the batch processor's thread; the gRPC
//! exporter's client runs on a Tokio runtime of its own (one thread,
//! `sextant-otlp`), never on the application's workers, so `init()` works with
//! or without Tokio and on any runtime flavour. A collector that is down never
//! blocks requests (a bounded queue; spans beyond it are dropped), and shutdown
//! is bounded by [`SdkBuilder::shutdown_timeout`].

#![warn(missing_docs)]

pub mod config;
pub mod http;
pub mod logs;
pub mod propagation;
pub mod resource;
pub mod sampling;

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanExporter, TracerProviderBuilder,
};

pub use crate::config::{Config, ConfigError, PropagatorKind, Protocol, SamplerKind};
pub use crate::http::{ClientLayer, ClientSpan, SextantLayer};
pub use crate::propagation::{
    correlation_id, extract_context, extract_from_map, inject_context, inject_into_map,
    B3Propagator, CorrelationId, JaegerPropagator,
};
pub use crate::sampling::{keep_attribute, keep_trace, Rule, SextantSampler};

/// Everything that can go wrong at init.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is bad (names the variable and the value).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OTLP exporter could not be built.
    #[error("could not build the OTLP exporter: {0}")]
    Exporter(String),
    /// `.with_logs(true)` but a global `tracing` subscriber is already set.
    #[error("a global tracing subscriber is already installed: {0}")]
    Subscriber(String),
    /// Flushing or shutting down failed (e.g. timed out).
    #[error("telemetry shutdown failed: {0}")]
    Shutdown(String),
}

/// `Sdk::builder()`: the entry point of code-level configuration.
#[derive(Debug, Clone, Copy)]
pub struct Sdk;

impl Sdk {
    /// A builder reading the process environment.
    pub fn builder() -> SdkBuilder {
        SdkBuilder::default()
    }
}

/// Initialise from the environment alone: builds the OTLP pipeline, sets the
/// global tracer provider and propagator, and returns the [`Guard`].
pub fn init() -> Result<Guard, Error> {
    Sdk::builder().init()
}

type ExporterHook = Box<dyn FnOnce(TracerProviderBuilder) -> TracerProviderBuilder + Send>;

/// Code-level configuration; every setting overrides its environment variable.
#[derive(Default)]
pub struct SdkBuilder {
    vars: Option<Vec<(String, String)>>,
    resource: resource::ResourceOverrides,
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    headers: Vec<(String, String)>,
    sample_ratio: Option<f64>,
    sampler: Option<SamplerKind>,
    rules: Vec<Rule>,
    propagators: Option<Vec<PropagatorKind>>,
    enabled: Option<bool>,
    logs: bool,
    exporter: Option<ExporterHook>,
    shutdown_timeout: Option<Duration>,
    batch_delay: Option<Duration>,
}

impl std::fmt::Debug for SdkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkBuilder")
            .field("resource", &self.resource)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("sample_ratio", &self.sample_ratio)
            .field("rules", &self.rules)
            .field("logs", &self.logs)
            .finish_non_exhaustive()
    }
}

/// A pipeline made by [`SdkBuilder::build`], not installed anywhere.
#[derive(Debug)]
pub struct Pipeline {
    /// The tracer provider (owns the exporter).
    pub provider: SdkTracerProvider,
    /// The propagator chosen by `OTEL_PROPAGATORS` / `.propagators()`.
    pub propagator: TextMapCompositePropagator,
    /// The configuration as resolved.
    pub config: Config,
}

impl SdkBuilder {
    /// Read these `(NAME, value)` pairs instead of the process environment.
    pub fn with_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.vars = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }
    /// `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.resource.service_name = Some(name.into());
        self
    }
    /// `service.version`.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.resource.service_version = Some(version.into());
        self
    }
    /// `deployment.environment.name`; also picks the default sampling ratio.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.resource.environment = Some(environment.into());
        self
    }
    /// An extra resource attribute.
    pub fn resource_attribute(mut self, kv: KeyValue) -> Self {
        self.resource.attributes.push(kv);
        self
    }
    /// The OTLP traces endpoint, e.g. `http://localhost:4317` (gRPC) or
    /// `http://localhost:4318/v1/traces` (HTTP; used as is).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }
    /// The OTLP transport.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }
    /// An extra export header (e.g. an API key).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// The root sampling ratio, 0.0..=1.0 (checked at build).
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = Some(ratio);
        self
    }
    /// The root sampler kind.
    pub fn sampler(mut self, kind: SamplerKind) -> Self {
        self.sampler = Some(kind);
        self
    }
    /// Always sample requests matching `rule` (`"POST /api/auth/login"`, `"/api/payments/*"`).
    pub fn always_sample(mut self, rule: &str) -> Self {
        self.rules.push(Rule::parse(rule));
        self
    }
    /// The propagators (overrides `OTEL_PROPAGATORS`).
    pub fn propagators(mut self, kinds: &[PropagatorKind]) -> Self {
        self.propagators = Some(kinds.to_vec());
        self
    }
    /// Force export on or off (overrides `OTEL_SDK_DISABLED` / `OTEL_ENABLED`).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }
    /// With `init()`: install a global `tracing` subscriber with the
    /// OpenTelemetry bridge and JSON logs on stdout (filter from `RUST_LOG`, default `info`).
    pub fn with_logs(mut self, logs: bool) -> Self {
        self.logs = logs;
        self
    }
    /// Export to this exporter, synchronously (tests: `InMemorySpanExporter`),
    /// instead of OTLP.
    pub fn with_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporter = Some(Box::new(move |b| b.with_simple_exporter(exporter)));
        self
    }
    /// How long the guard waits for the last export at shutdown (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }
    /// How often batches are sent (default 1 s; `OTEL_BSP_SCHEDULE_DELAY` also works).
    pub fn batch_delay(mut self, delay: Duration) -> Self {
        self.batch_delay = Some(delay);
        self
    }

    fn resolve_config(&mut self) -> Result<Config, Error> {
        let mut config = match self.vars.take() {
            Some(vars) => Config::from_vars(vars)?,
            None => Config::from_env()?,
        };
        if let Some(e) = &self.resource.environment {
            config.environment = e.clone();
            if !config.sample_ratio_explicit {
                config.sample_ratio = config::default_ratio_for_environment(e);
            }
        }
        if let Some(r) = self.sample_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(
                    ConfigError::invalid("sample_ratio", &r.to_string(), "expected 0..=1").into(),
                );
            }
            config.sample_ratio = r;
        }
        if let Some(k) = self.sampler {
            config.sampler = k;
        }
        if let Some(p) = &self.propagators {
            config.propagators = p.clone();
        }
        if let Some(e) = self.enabled {
            config.enabled = e;
        }
        if let Some(p) = self.protocol {
            config.protocol = p;
        }
        if let Some(e) = &self.endpoint {
            config.endpoint = Some(e.clone());
            config.endpoint_is_signal_specific = true;
        }
        config.headers.append(&mut self.headers);
        Ok(config)
    }

    /// Build the provider and propagator without installing any global.
    pub fn build(mut self) -> Result<Pipeline, Error> {
        let config = self.resolve_config()?;
        let resource = resource::build_resource(&config, &self.resource);
        let sampler = SextantSampler::new(config.sampler, config.sample_ratio, self.rules.clone());
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampler);
        if config.enabled {
            builder = match self.exporter.take() {
                Some(hook) => hook(builder),
                None => {
                    let exporter = build_otlp_exporter(&config)?;
                    let mut batch = BatchConfigBuilder::default();
                    if let Some(d) = self.batch_delay {
                        batch = batch.with_scheduled_delay(d);
                    }
                    builder.with_span_processor(
                        BatchSpanProcessor::builder(exporter)
                            .with_batch_config(batch.build())
                            .build(),
                    )
                }
            };
        }
        let propagator = propagation::build_propagator(&config.propagators);
        Ok(Pipeline {
            provider: builder.build(),
            propagator,
            config,
        })
    }

    /// Build, then install the global tracer provider and propagator (and the
    /// `tracing` subscriber with `.with_logs(true)`). Returns the guard that
    /// flushes and shuts down on drop. With export disabled nothing global
    /// is installed except the propagator (context still flows through).
    pub fn init(self) -> Result<Guard, Error> {
        let logs = self.logs;
        let timeout = self.shutdown_timeout.unwrap_or(Duration::from_secs(5));
        let Pipeline {
            provider,
            propagator,
            config,
        } = self.build()?;
        if logs {
            use tracing_subscriber::layer::SubscriberExt;
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let tracer = provider.tracer_with_scope(
                opentelemetry::InstrumentationScope::builder("sextant-sdk")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            );
            let subscriber = tracing_subscriber::registry()
                .with(filter)
                .with(logs::otel_layer(tracer))
                .with(tracing_subscriber::fmt::layer().event_format(logs::JsonFormat::new()));
            tracing::subscriber::set_global_default(subscriber)
                .map_err(|e| Error::Subscriber(e.to_string()))?;
        }
        opentelemetry::global::set_text_map_propagator(propagator);
        if config.enabled {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        Ok(Guard {
            provider: Some(provider),
            timeout,
        })
    }
}

/// The OTLP exporter of opentelemetry-otlp, with, for gRPC, the Tokio runtime its client runs
/// on: one thread (`sextant-otlp`) of its own, so that export I/O never runs on the
/// application's workers, an application without Tokio (or on a current-thread runtime that
/// is busy shutting down) still exports, and the runtime lives exactly as long as the exporter.
#[derive(Debug)]
struct OtlpExporter {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SpanExporter for OtlpExporter {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.export(batch).await
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        // Never block here: the last owner may be dropped inside an async context.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn build_otlp_exporter(config: &Config) -> Result<OtlpExporter, Error> {
    let endpoint = config.endpoint.clone();
    if let Some(e) = &endpoint {
        if e.starts_with("https://") {
            return Err(ConfigError::Unsupported {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                value: e.clone(),
                reason: "TLS is not compiled into sextant-sdk; use http:// (e.g. a local collector or sidecar)".into(),
            }
            .into());
        }
    }
    match config.protocol {
        Protocol::Grpc => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(1)
                .thread_name("sextant-otlp")
                .enable_all()
                .build()
                .map_err(|e| Error::Exporter(format!("cannot start the export runtime: {e}")))?;
            let mut headers = ::http::HeaderMap::new();
            for (k, v) in &config.headers {
                let name = ::http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    ConfigError::invalid("OTEL_EXPORTER_OTLP_HEADERS", k, "not a valid header name")
                })?;
                let value = ::http::HeaderValue::from_str(v).map_err(|_| {
                    ConfigError::invalid(
                        "OTEL_EXPORTER_OTLP_HEADERS",
                        v,
                        "not a valid header value",
                    )
                })?;
                headers.append(name, value);
            }
            // The gRPC channel's background task is spawned on the runtime entered here.
            let inner = {
                let _enter = runtime.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.unwrap_or_else(|| "http://localhost:4317".into()))
                    .with_timeout(config.export_timeout)
                    .with_metadata(
                        opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                            headers,
                        ),
                    )
                    .build()
                    .map_err(|e| Error::Exporter(e.to_string()))?
            };
            Ok(OtlpExporter {
                inner,
                runtime: Some(runtime),
            })
        }
        Protocol::HttpProtobuf => {
            let url = match endpoint {
                Some(e) if config.endpoint_is_signal_specific => e,
                Some(e) => format!("{}/v1/traces", e.trim_end_matches('/')),
                None => "http://localhost:4318/v1/traces".into(),
            };
            // The batch processor exports from its own thread, without a Tokio
            // runtime: use the blocking client, built off any runtime thread.
            let timeout = config.export_timeout;
            let client = std::thread::spawn(move || {
                reqwest_otlp::blocking::Client::builder()
                    .timeout(timeout)
                    .build()
            })
            .join()
            .map_err(|_| Error::Exporter("HTTP client thread panicked".into()))?
            .map_err(|e| Error::Exporter(e.to_string()))?;
            let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
            let inner = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(url)
                .with_timeout(config.export_timeout)
                .with_headers(headers)
                .build()
                .map_err(|e| Error::Exporter(e.to_string()))?;
            Ok(OtlpExporter {
                inner,
                runtime: None,
            })
        }
    }
}

/// Run a blocking wait; on a multi-threaded Tokio runtime, let the runtime
/// move other tasks (the gRPC channel's among them) off this thread meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Flushes and shuts the tracer provider down when dropped (bounded by the
/// shutdown timeout). Keep it alive for the life of `main`.
#[derive(Debug)]
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    timeout: Duration,
}

impl Guard {
    /// The provider (also the global one after `init()`).
    pub fn provider(&self) -> &SdkTracerProvider {
        self.provider
            .as_ref()
            .expect("provider present until shutdown")
    }

    /// Export what is buffered now.
    pub fn flush(&self) -> Result<(), Error> {
        let p = self.provider().clone();
        blocking(move || p.force_flush()).map_err(|e| Error::Shutdown(e.to_string()))
    }

    /// Flush and shut down now, reporting failures (dropping does the same silently).
    pub fn shutdown(mut self) -> Result<(), Error> {
        match self.provider.take() {
            Some(p) => {
                let timeout = self.timeout;
                blocking(move || p.shutdown_with_timeout(timeout))
                    .map_err(|e| Error::Shutdown(e.to_string()))
            }
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let timeout = self.timeout;
            let _ = blocking(move || p.shutdown_with_timeout(timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::Tracer;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    #[test]
    fn build_reports_bad_env() {
        let err = Sdk::builder()
            .with_vars([("OTEL_TRACES_SAMPLER_ARG", "2")])
            .build()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("OTEL_TRACES_SAMPLER_ARG") && msg.contains("\"2\""),
            "{msg}"
        );
        let err = Sdk::builder()
            .with_vars(Vec::<(String, String)>::new())
            .sample_ratio(1.5)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("sample_ratio"));
        let err = Sdk::builder()
            .with_vars([("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4317")])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn builds_without_a_runtime() {
        // gRPC brings its own runtime thread; HTTP uses a blocking client.
        for vars in [
            vec![],
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        ] {
            let p = Sdk::builder().with_vars(vars).build().unwrap();
            p.provider
                .shutdown_with_timeout(Duration::from_secs(2))
                .ok();
        }
    }

    #[test]
    fn build_without_globals_exports_with_resource() {
        let exporter = InMemorySpanExporter::default();
        let p = Sdk::builder()
            .with_vars([("ENVIRONMENT", "production"), ("APP_VERSION", "3.1")])
            .service_name("svc")
            .sample_ratio(1.0)
            .with_exporter(exporter.clone())
            .build()
            .unwrap();
        assert_eq!(p.config.environment, "production");
        p.provider.tracer("t").in_span("work", |_| {});
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let res = p.provider.shutdown();
        assert!(res.is_ok());
    }

    #[test]
    fn code_environment_sets_default_ratio() {
        let p = Sdk::builder()
            .with_vars(Vec::<(String, String)>::new())
            .environment("production")
            .with_exporter(InMemorySpanExporter::default())
            .build()
            .unwrap();
        assert_eq!(p.config.sample_ratio, 0.1);
        let p = Sdk::builder()
            .with_vars([("TRACING_SAMPLE_PERCENTAGE", "30")])
            .environment("production")
            .with_exporter(InMemorySpanExporter::default())
            .build()
            .unwrap();
        assert_eq!(p.config.sample_ratio, 0.3);
    }

    #[tokio::test]
    async fn route_rules_through_the_layer() {
        use tower::{Layer as _, ServiceExt as _};
        let exporter = InMemorySpanExporter::default();
        let p = Sdk::builder()
            .with_vars([("ENVIRONMENT", "production")])
            .sample_ratio(0.0)
            .always_sample("POST /api/auth/login")
            .always_sample("/api/payments/*")
            .with_exporter(exporter.clone())
            .build()
            .unwrap();
        let svc = SextantLayer::new()
            .with_tracer(p.provider.tracer("t"))
            .layer(tower::service_fn(|_req: ::http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(::http::Response::new(()))
            }));
        for (method, path) in [
            ("POST", "/api/auth/login"),
            ("GET", "/api/auth/login"),
            ("GET", "/api/users"),
            ("PUT", "/api/payments/9/capture"),
        ] {
            let req = ::http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let names: Vec<String> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(
            names,
            ["POST /api/auth/login", "PUT /api/payments/9/capture"]
        );
    }

    #[test]
    fn disabled_exports_nothing() {
        let exporter = InMemorySpanExporter::default();
        let p = Sdk::builder()
            .with_vars([("OTEL_SDK_DISABLED", "true")])
            .with_exporter(exporter.clone())
            .build()
            .unwrap();
        assert!(!p.config.enabled);
        p.provider.tracer("t").in_span("work", |_| {});
        assert!(exporter.get_finished_spans().unwrap().is_empty());
    }
}
