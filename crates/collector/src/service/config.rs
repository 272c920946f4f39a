//! The OpenTelemetry Collector's configuration format, as users already write it:
//! `receivers`, `processors`, `exporters`, `connectors`, `extensions` and `service` with its
//! `pipelines`, components named `type[/name]`, `${env:VAR}` / `${env:VAR:-default}` expanded
//! (`$$` is a literal `$`).
//!
//! Loading parses the YAML with figment, then checks every component's settings against its
//! type and every pipeline against the components: a document that loads is one that can be
//! started. Errors name the file, the key path and what is wrong.
//!
//! A host (the `sextant` binary) may add component types of its own (the all-in-one's
//! embedded store exporter and query extensions): it lists them in [`Host::custom_types`] and
//! checks their settings; this crate keeps them as raw values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{BatchConfig, MemoryLimiterConfig};
use crate::connector::{servicegraph, spanmetrics};
use crate::exporter::{debug, loadbalancing, otlp, otlphttp};
use crate::processor::{
    attributes, filter, k8sattributes, probabilistic_sampler, redaction, resource, tail_sampling,
};

/// A configuration problem, located.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {path}{sep}{message}", sep = if path.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// The file (or "default config", "command line").
    pub source_name: String,
    /// The key path, dotted (`processors.batch/1.timeout`).
    pub path: String,
    pub message: String,
}

/// One or more configuration problems; all are reported at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// A component id, `type` or `type/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId {
    pub ty: String,
    pub name: Option<String>,
}

impl ComponentId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ty, name) = match text.split_once('/') {
            Some((t, n)) => (t, Some(n)),
            None => (text, None),
        };
        let valid_type = !ty.is_empty()
            && ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_type {
            return Err(format!(
                "{text:?} is not a component id: expected `type` or `type/name`, the type made of letters, digits and `_`"
            ));
        }
        if name == Some("") {
            return Err(format!("{text:?} has an empty name after `/`"));
        }
        Ok(Self {
            ty: ty.to_string(),
            name: name.map(str::to_string),
        })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{n}", self.ty),
            None => f.write_str(&self.ty),
        }
    }
}

/// What kind of signal a pipeline carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        })
    }
}

/// `service.pipelines` key: `traces`, `traces/name`, ...
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PipelineId {
    pub signal: Signal,
    pub name: Option<String>,
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{n}", self.signal),
            None => write!(f, "{}", self.signal),
        }
    }
}

/// The OTLP receiver (`receivers: otlp`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    pub protocols: OtlpProtocols,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpProtocols {
    /// `grpc:` present (even empty) enables the gRPC server.
    #[serde(deserialize_with = "present")]
    pub grpc: Option<GrpcServerConfig>,
    #[serde(deserialize_with = "present")]
    pub http: Option<HttpServerConfig>,
}

/// `protocols.grpc` (the reference's configgrpc server keys that Sextant honours).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcServerConfig {
    pub endpoint: String,
    /// Largest request accepted, after decompression. Sextant's default is the 20 MiB OTLP
    /// recommends (the reference's is gRPC's 4 MiB).
    pub max_recv_msg_size_mib: usize,
    /// Accepted for compatibility (tonic sizes its buffers itself).
    pub read_buffer_size: Option<usize>,
    pub write_buffer_size: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
    pub include_metadata: Option<bool>,
    pub transport: Option<String>,
    pub keepalive: Option<serde_yaml_value::Any>,
    /// TLS (configtls server settings): `cert_file`, `key_file`, `client_ca_file`, ...
    pub tls: Option<crate::tls::TlsServerConfig>,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4317".into(),
            max_recv_msg_size_mib: 20,
            read_buffer_size: None,
            write_buffer_size: None,
            max_concurrent_streams: None,
            include_metadata: None,
            transport: None,
            keepalive: None,
            tls: None,
        }
    }
}

/// `protocols.http`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServerConfig {
    pub endpoint: String,
    /// Largest body accepted, after decompression (bytes).
    pub max_request_body_size: usize,
    /// Where traces are posted.
    pub traces_url_path: String,
    pub include_metadata: Option<bool>,
    /// TLS (configtls server settings): `cert_file`, `key_file`, `client_ca_file`, ...
    pub tls: Option<crate::tls::TlsServerConfig>,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4318".into(),
            max_request_body_size: 20 * 1024 * 1024,
            traces_url_path: "/v1/traces".into(),
            include_metadata: None,
            tls: None,
        }
    }
}

/// Values accepted and ignored (kept only to be printed back).
pub mod serde_yaml_value {
    use serde::{Deserialize, Serialize};

    /// Any YAML value.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct Any(pub figment::value::Value);
}

/// Deserializes a key that may be present with an empty value (`grpc:`) as `Some(default)`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    let v: Option<T> = Option::deserialize(d)?;
    Ok(Some(v.unwrap_or_default()))
}

/// The `health_check` extension.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub endpoint: String,
    pub path: String,
    /// Accepted for compatibility (deprecated in the reference; exporters' health is always
    /// part of the answer here).
    pub check_collector_pipeline: Option<serde_yaml_value::Any>,
    pub response_body: Option<serde_yaml_value::Any>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:13133".into(),
            path: "/".into(),
            check_collector_pipeline: None,
            response_body: None,
        }
    }
}

/// The `zpages` extension: serves `/debug/pipelinez` (and `/debug/servicez`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ZPagesConfig {
    pub endpoint: String,
}

impl Default for ZPagesConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:55679".into(),
        }
    }
}

/// The `prometheus` exporter of a metrics pipeline: serves what the pipeline's connectors
/// compute.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusExporterConfig {
    pub endpoint: String,
    /// Accepted for compatibility; names are already those of the reference.
    pub namespace: Option<String>,
    pub send_timestamps: Option<bool>,
    pub metric_expiration: Option<serde_yaml_value::Any>,
    pub resource_to_telemetry_conversion: Option<serde_yaml_value::Any>,
    pub enable_open_metrics: Option<bool>,
}

impl Default for PrometheusExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:8889".into(),
            namespace: None,
            send_timestamps: None,
            metric_expiration: None,
            resource_to_telemetry_conversion: None,
            enable_open_metrics: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverConfig {
    Otlp(OtlpReceiverConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProcessorConfig {
    Batch(BatchConfig),
    MemoryLimiter(MemoryLimiterConfig),
    Attributes(Box<attributes::Config>),
    Resource(Box<resource::Config>),
    Redaction(Box<redaction::Config>),
    Filter(Box<filter::Config>),
    K8sAttributes(Box<k8sattributes::Config>),
    ProbabilisticSampler(Box<probabilistic_sampler::Config>),
    TailSampling(Box<tail_sampling::Config>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExporterConfig {
    Otlp(Box<otlp::Config>),
    OtlpHttp(Box<otlphttp::Config>),
    Debug(Box<debug::Config>),
    LoadBalancing(Box<loadbalancing::Config>),
    Prometheus(PrometheusExporterConfig),
    /// A type the host provides (checked by the host).
    Custom(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConnectorConfig {
    SpanMetrics(Box<spanmetrics::Config>),
    ServiceGraph(Box<servicegraph::Config>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExtensionConfig {
    HealthCheck(HealthCheckConfig),
    FileStorage(crate::storage::Config),
    ZPages(ZPagesConfig),
    Custom(Value),
}

/// `service.pipelines.<id>`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

/// `service.telemetry`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub metrics: MetricsTelemetry,
    pub logs: LogsTelemetry,
    pub resource: Option<BTreeMap<String, Option<String>>>,
    pub traces: Option<serde_yaml_value::Any>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsTelemetry {
    /// `none` turns the metrics server off; other levels serve everything.
    pub level: String,
    /// The older form, `host:port`.
    pub address: Option<String>,
    /// The current form: `[{pull: {exporter: {prometheus: {host, port}}}}]`.
    pub readers: Vec<MetricReader>,
}

impl Default for MetricsTelemetry {
    fn default() -> Self {
        Self {
            level: "normal".into(),
            address: None,
            readers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricReader {
    pub pull: PullReader,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullReader {
    pub exporter: PullExporter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullExporter {
    pub prometheus: PrometheusPull,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusPull {
    pub host: String,
    pub port: u16,
    pub without_scope_info: Option<bool>,
    pub without_type_suffix: Option<bool>,
    pub without_units: Option<bool>,
}

impl Default for PrometheusPull {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 8888,
            without_scope_info: None,
            without_type_suffix: None,
            without_units: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsTelemetry {
    pub level: String,
    pub encoding: String,
    pub development: Option<bool>,
    pub output_paths: Option<Vec<String>>,
    pub error_output_paths: Option<Vec<String>>,
}

impl Default for LogsTelemetry {
    fn default() -> Self {
        Self {
            level: "info".into(),
            encoding: "console".into(),
            development: None,
            output_paths: None,
            error_output_paths: None,
        }
    }
}

impl TelemetryConfig {
    /// Where the collector's own metrics are served (`None`: not served).
    pub fn metrics_address(&self) -> Option<String> {
        if self.metrics.level == "none" {
            return None;
        }
        if let Some(r) = self.metrics.readers.first() {
            let p = &r.pull.exporter.prometheus;
            return Some(format!("{}:{}", p.host, p.port));
        }
        Some(
            self.metrics
                .address
                .clone()
                .unwrap_or_else(|| "localhost:8888".into()),
        )
    }
}

/// A pipeline, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub id: PipelineId,
    pub receivers: Vec<ComponentId>,
    pub processors: Vec<ComponentId>,
    pub exporters: Vec<ComponentId>,
}

/// A loaded, checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from (for messages).
    pub source: String,
    pub receivers: BTreeMap<ComponentId, ReceiverConfig>,
    pub processors: BTreeMap<ComponentId, ProcessorConfig>,
    pub exporters: BTreeMap<ComponentId, ExporterConfig>,
    pub connectors: BTreeMap<ComponentId, ConnectorConfig>,
    pub extensions: BTreeMap<ComponentId, ExtensionConfig>,
    /// `service.extensions`, in order.
    pub service_extensions: Vec<ComponentId>,
    pub pipelines: Vec<Pipeline>,
    pub telemetry: TelemetryConfig,
    /// The expanded document as figment read it (for `sextant config print`).
    pub raw: Value,
}

/// What a host adds: component types of its own, checked by it.
pub trait Host {
    /// Exporter and extension types the host builds (e.g. `store`, `tempo_query`).
    fn custom_types(&self) -> (&[&'static str], &[&'static str]) {
        (&[], &[])
    }
    /// Checks a custom component's settings; `Err` text starts with the key path relative to
    /// the component.
    fn check_custom(&self, _kind: &str, _id: &ComponentId, _value: &Value) -> Result<(), String> {
        Ok(())
    }
}

/// A host without custom types (`sextant collector`).
pub struct NoHost;
impl Host for NoHost {}

pub const RECEIVER_TYPES: &[&str] = &["otlp"];
pub const PROCESSOR_TYPES: &[&str] = &[
    "memory_limiter",
    "batch",
    "attributes",
    "resource",
    "redaction",
    "filter",
    "k8sattributes",
    "probabilistic_sampler",
    "tail_sampling",
];
pub const EXPORTER_TYPES: &[&str] = &["otlp", "otlphttp", "debug", "loadbalancing", "prometheus"];
pub const CONNECTOR_TYPES: &[&str] = &["spanmetrics", "servicegraph"];
pub const EXTENSION_TYPES: &[&str] = &["health_check", "file_storage", "zpages"];

/// Expands `${env:VAR}`, `${env:VAR:-default}`, `${VAR}` and `$$` in `text`, line by line,
/// leaving comments alone. `env` looks variables up (unset: empty, as the reference does).
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let (body, comment) = split_comment(line);
        let mut rest = body;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(a) = after.strip_prefix('$') {
                out.push('$');
                rest = a;
            } else if let Some(a) = after.strip_prefix('{') {
                let Some(end) = a.find('}') else {
                    return Err(format!("line {}: `${{` without a closing `}}`", lineno + 1));
                };
                let inner = &a[..end];
                let (provider, spec) = match inner.split_once(':') {
                    Some((p, s)) if p.chars().all(|c| c.is_ascii_alphanumeric()) => (p, s),
                    _ => ("env", inner),
                };
                if provider != "env" {
                    return Err(format!(
                        "line {}: `${{{inner}}}`: config provider {provider:?} is not supported (only env)",
                        lineno + 1
                    ));
                }
                let (name, default) = match spec.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (spec, None),
                };
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(format!(
                        "line {}: `${{{inner}}}`: {name:?} is not an environment variable name",
                        lineno + 1
                    ));
                }
                match (env(name), default) {
                    (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                    (_, Some(d)) => out.push_str(d),
                    (None, None) => {
                        tracing::warn!(
                            variable = name,
                            line = lineno + 1,
                            "environment variable is not set; expanding to empty"
                        );
                    }
                    (Some(_), None) => {}
                }
                rest = &a[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    Ok(out)
}

/// Splits a YAML line into its content and its comment (`#` at the start or after a space,
/// outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let (mut single, mut double) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return (&line[..i], &line[i..]);
            }
            _ => {}
        }
    }
    (line, "")
}

/// A key set on top of the file (the command line's overrides), as a dotted path.
#[derive(Debug, Clone)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
}

impl Override {
    pub fn new(path: &[&str], value: impl Into<Value>) -> Self {
        Self {
            path: path.iter().map(|s| s.to_string()).collect(),
            value: value.into(),
        }
    }
}

/// Loads a config file.
pub fn load_file(path: &Path, host: &dyn Host) -> Result<Document, ConfigErrors> {
    load_file_with(path, host, &[])
}

/// Loads a config file, then sets `overrides` (which apply only where their parent exists).
pub fn load_file_with(
    path: &Path,
    host: &dyn Host,
    overrides: &[Override],
) -> Result<Document, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            source_name: source.clone(),
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(&text, &source, host, overrides)
}

/// Loads a config from text; `source` names it in messages.
pub fn load_str(
    text: &str,
    source: &str,
    host: &dyn Host,
    overrides: &[Override],
) -> Result<Document, ConfigErrors> {
    let err = |path: &str, message: String| {
        ConfigErrors(vec![ConfigError {
            source_name: source.to_string(),
            path: path.to_string(),
            message,
        }])
    };
    let expanded = expand_env(text, &|name| std::env::var(name).ok()).map_err(|m| err("", m))?;
    let figment = Figment::from(Yaml::string(&expanded));
    let mut root: Dict = figment
        .extract()
        .map_err(|e| err("", figment_message(&e)))?;
    for o in overrides {
        apply_override(&mut root, &o.path, o.value.clone());
    }
    Checker {
        source: source.to_string(),
        host,
        errors: Vec::new(),
        broken: Default::default(),
    }
    .check(root)
}

fn apply_override(root: &mut Dict, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut dict = root;
    for p in parents {
        match dict.get_mut(p) {
            Some(Value::Dict(_, d)) => dict = d,
            Some(v @ Value::Empty(..)) => {
                *v = Value::from(Dict::new());
                let Value::Dict(_, d) = v else { return };
                dict = d;
            }
            _ => return,
        }
    }
    dict.insert(last.clone(), value);
}

fn figment_message(e: &figment::Error) -> String {
    let mut parts = Vec::new();
    for one in e.clone() {
        let key = one.path.join(".");
        if key.is_empty() {
            parts.push(one.kind.to_string());
        } else {
            parts.push(format!("{key}: {}", one.kind));
        }
    }
    parts.join("; ")
}

/// Deserializes a component's value (an empty value means "all defaults").
fn typed<T: DeserializeOwned + Default>(value: &Value) -> Result<T, String> {
    if matches!(value, Value::Empty(..)) {
        return Ok(T::default());
    }
    value.deserialize::<T>().map_err(|e| figment_message(&e))
}

struct Checker<'a> {
    source: String,
    host: &'a dyn Host,
    errors: Vec<ConfigError>,
    /// Components that are defined but whose settings are wrong (already reported): a
    /// pipeline naming one is not told again that it is undefined.
    broken: std::collections::BTreeSet<ComponentId>,
}

/// Splits "key: message" as produced by `typed` into the path and the message.
fn split_path(msg: &str) -> (&str, &str) {
    match msg.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p, m),
        _ => ("", msg),
    }
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            source_name: self.source.clone(),
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records a component error: `msg` may start with a relative key path.
    fn component_error(&mut self, base: &str, msg: &str) {
        let (rel, m) = split_path(msg);
        let path = if rel.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{rel}")
        };
        self.error(path, m);
    }

    fn section(&mut self, root: &mut Dict, key: &str) -> Vec<(String, ComponentId, Value)> {
        let mut out = Vec::new();
        match root.remove(key) {
            None | Some(Value::Empty(..)) => {}
            Some(Value::Dict(_, d)) => {
                for (k, v) in d {
                    match ComponentId::parse(&k) {
                        Ok(id) => out.push((format!("{key}.{k}"), id, v)),
                        Err(m) => self.error(format!("{key}.{k}"), m),
                    }
                }
            }
            Some(other) => self.error(
                key,
                format!("expected a map of components, found {}", describe(&other)),
            ),
        }
        out
    }

    fn unknown_type(&mut self, path: &str, kind: &str, ty: &str, known: &[&str]) {
        let mut known: Vec<&str> = known.to_vec();
        known.sort_unstable();
        self.error(
            path,
            format!(
                "unknown {kind} type {ty:?} (Sextant has: {})",
                known.join(", ")
            ),
        );
    }

    fn check(mut self, mut root: Dict) -> Result<Document, ConfigErrors> {
        let raw = Value::from(root.clone());
        let (custom_exporters, custom_extensions) = self.host.custom_types();
        let mut doc = Document {
            source: self.source.clone(),
            receivers: BTreeMap::new(),
            processors: BTreeMap::new(),
            exporters: BTreeMap::new(),
            connectors: BTreeMap::new(),
            extensions: BTreeMap::new(),
            service_extensions: Vec::new(),
            pipelines: Vec::new(),
            telemetry: TelemetryConfig::default(),
            raw,
        };

        for (path, id, v) in self.section(&mut root, "receivers") {
            let r = match id.ty.as_str() {
                "otlp" => typed::<OtlpReceiverConfig>(&v).map(ReceiverConfig::Otlp),
                other => {
                    self.unknown_type(&path, "receiver", other, RECEIVER_TYPES);
                    self.broken.insert(id.clone());
                    continue;
                }
            };
            match r {
                Ok(ReceiverConfig::Otlp(c))
                    if c.protocols.grpc.is_none() && c.protocols.http.is_none() =>
                {
                    self.error(
                        format!("{path}.protocols"),
                        "enable at least one of grpc and http",
                    );
                }
                Ok(c) => {
                    doc.receivers.insert(id, c);
                }
                Err(m) => {
                    self.component_error(&path, &m);
                    self.broken.insert(id);
                }
            }
        }

        for (path, id, v) in self.section(&mut root, "processors") {
            let r = match id.ty.as_str() {
                "batch" => typed::<BatchConfig>(&v).map(ProcessorConfig::Batch),
                "memory_limiter" => {
                    typed::<MemoryLimiterConfig>(&v).map(ProcessorConfig::MemoryLimiter)
                }
                "attributes" => typed(&v).map(|c| ProcessorConfig::Attributes(Box::new(c))),
                "resource" => typed(&v).map(|c| ProcessorConfig::Resource(Box::new(c))),
                "redaction" => typed(&v).map(|c| ProcessorConfig::Redaction(Box::new(c))),
                "filter" => typed(&v).map(|c| ProcessorConfig::Filter(Box::new(c))),
                "k8sattributes" => typed(&v).map(|c| ProcessorConfig::K8sAttributes(Box::new(c))),
                "probabilistic_sampler" => {
                    typed(&v).map(|c| ProcessorConfig::ProbabilisticSampler(Box::new(c)))
                }
                "tail_sampling" => typed(&v).map(|c| ProcessorConfig::TailSampling(Box::new(c))),
                other => {
                    self.unknown_type(&path, "processor", other, PROCESSOR_TYPES);
                    self.broken.insert(id.clone());
                    continue;
                }
            };
            match r.and_then(|c| check_processor(&c).map(|()| c)) {
                Ok(c) => {
                    doc.processors.insert(id, c);
                }
                Err(m) => {
                    self.component_error(&path, &m);
                    self.broken.insert(id);
                }
            }
        }

        for (path, id, v) in self.section(&mut root, "exporters") {
            let r = match id.ty.as_str() {
                "otlp" => typed(&v).map(|c| ExporterConfig::Otlp(Box::new(c))),
                "otlphttp" | "otlp_http" => {
                    typed(&v).map(|c| ExporterConfig::OtlpHttp(Box::new(c)))
                }
                "debug" => typed(&v).map(|c| ExporterConfig::Debug(Box::new(c))),
                "loadbalancing" => typed(&v).map(|c| ExporterConfig::LoadBalancing(Box::new(c))),
                "prometheus" => typed(&v).map(ExporterConfig::Prometheus),
                t if custom_exporters.contains(&t) => self
                    .host
                    .check_custom("exporter", &id, &v)
                    .map(|()| ExporterConfig::Custom(v)),
                other => {
                    let mut known = EXPORTER_TYPES.to_vec();
                    known.extend_from_slice(custom_exporters);
                    self.unknown_type(&path, "exporter", other, &known);
                    self.broken.insert(id.clone());
                    continue;
                }
            };
            match r {
                Ok(c) => {
                    doc.exporters.insert(id, c);
                }
                Err(m) => {
                    self.component_error(&path, &m);
                    self.broken.insert(id);
                }
            }
        }

        for (path, id, v) in self.section(&mut root, "connectors") {
            let r = match id.ty.as_str() {
                "spanmetrics" => typed(&v).map(|c| ConnectorConfig::SpanMetrics(Box::new(c))),
                "servicegraph" => typed(&v).map(|c| ConnectorConfig::ServiceGraph(Box::new(c))),
                other => {
                    self.unknown_type(&path, "connector", other, CONNECTOR_TYPES);
                    self.broken.insert(id.clone());
                    continue;
                }
            };
            match r {
                Ok(c) => {
                    doc.connectors.insert(id, c);
                }
                Err(m) => {
                    self.component_error(&path, &m);
                    self.broken.insert(id);
                }
            }
        }

        for (path, id, v) in self.section(&mut root, "extensions") {
            let r = match id.ty.as_str() {
                "health_check" => typed(&v).map(ExtensionConfig::HealthCheck),
                "file_storage" => typed(&v).map(ExtensionConfig::FileStorage),
                "zpages" => typed(&v).map(ExtensionConfig::ZPages),
                t if custom_extensions.contains(&t) => self
                    .host
                    .check_custom("extension", &id, &v)
                    .map(|()| ExtensionConfig::Custom(v)),
                other => {
                    let mut known = EXTENSION_TYPES.to_vec();
                    known.extend_from_slice(custom_extensions);
                    self.unknown_type(&path, "extension", other, &known);
                    self.broken.insert(id.clone());
                    continue;
                }
            };
            match r {
                Ok(c) => {
                    doc.extensions.insert(id, c);
                }
                Err(m) => {
                    self.component_error(&path, &m);
                    self.broken.insert(id);
                }
            }
        }

        self.check_service(&mut root, &mut doc);
        for key in root.keys() {
            self.error(
                key.as_str(),
                "unknown top-level key (expected receivers, processors, exporters, connectors, extensions, service)",
            );
        }
        if self.errors.is_empty() {
            Ok(doc)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    fn check_service(&mut self, root: &mut Dict, doc: &mut Document) {
        let service = match root.remove("service") {
            Some(Value::Dict(_, d)) => d,
            None | Some(Value::Empty(..)) => {
                self.error("service", "missing: a config needs service.pipelines");
                return;
            }
            Some(other) => {
                self.error(
                    "service",
                    format!("expected a map, found {}", describe(&other)),
                );
                return;
            }
        };
        for (key, value) in service {
            match key.as_str() {
                "extensions" => match typed::<Vec<String>>(&value) {
                    Ok(list) => {
                        for (i, e) in list.iter().enumerate() {
                            let path = format!("service.extensions[{i}]");
                            match ComponentId::parse(e) {
                                Ok(id) if doc.extensions.contains_key(&id) => {
                                    doc.service_extensions.push(id)
                                }
                                Ok(id) => self.error(
                                    path,
                                    format!("extension {id} is not defined under `extensions`"),
                                ),
                                Err(m) => self.error(path, m),
                            }
                        }
                    }
                    Err(m) => self.component_error("service.extensions", &m),
                },
                "telemetry" => match typed::<TelemetryConfig>(&value) {
                    Ok(t) => doc.telemetry = t,
                    Err(m) => self.component_error("service.telemetry", &m),
                },
                "pipelines" => match value {
                    Value::Dict(_, pipes) => {
                        for (pid, pv) in pipes {
                            self.check_pipeline(&pid, &pv, doc);
                        }
                    }
                    other => self.error(
                        "service.pipelines",
                        format!("expected a map of pipelines, found {}", describe(&other)),
                    ),
                },
                other => self.error(
                    format!("service.{other}"),
                    "unknown key (expected extensions, pipelines, telemetry)",
                ),
            }
        }
        if doc.pipelines.is_empty() && self.errors.is_empty() {
            self.error(
                "service.pipelines",
                "no pipelines: define at least one traces pipeline",
            );
        }
        // Connectors must be used as an exporter and as a receiver.
        for id in doc.connectors.keys() {
            let as_exporter = doc.pipelines.iter().any(|p| p.exporters.contains(id));
            let as_receiver = doc.pipelines.iter().any(|p| p.receivers.contains(id));
            if as_exporter != as_receiver {
                self.error(
                    format!("connectors.{id}"),
                    format!(
                        "connector {id} is used as {} but not as {}: a connector links the end of one pipeline to the start of another",
                        if as_exporter { "an exporter" } else { "a receiver" },
                        if as_exporter { "a receiver" } else { "an exporter" }
                    ),
                );
            }
        }
    }

    fn check_pipeline(&mut self, pid: &str, value: &Value, doc: &mut Document) {
        let base = format!("service.pipelines.{pid}");
        let (signal, name) = match pid.split_once('/') {
            Some((s, n)) => (s, Some(n.to_string())),
            None => (pid, None),
        };
        let signal = match signal {
            "traces" => Signal::Traces,
            "metrics" => Signal::Metrics,
            "logs" => {
                self.error(base, "logs pipelines are not supported: Sextant handles traces (and metrics from connectors)");
                return;
            }
            other => {
                self.error(base, format!("unknown signal {other:?}: a pipeline id is traces[/name] or metrics[/name]"));
                return;
            }
        };
        let p: PipelineConfig = match typed(value) {
            Ok(p) => p,
            Err(m) => {
                self.component_error(&base, &m);
                return;
            }
        };
        let mut resolve = |list: &[String], key: &str| -> Vec<ComponentId> {
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let path = format!("{base}.{key}[{i}]");
                match ComponentId::parse(s) {
                    Ok(id) => {
                        let defined = match key {
                            "receivers" => {
                                doc.receivers.contains_key(&id) || doc.connectors.contains_key(&id)
                            }
                            "processors" => doc.processors.contains_key(&id),
                            _ => {
                                doc.exporters.contains_key(&id) || doc.connectors.contains_key(&id)
                            }
                        };
                        if !defined && self.broken.contains(&id) {
                            // Its own error was reported where it is defined.
                        } else if !defined {
                            let section = match key {
                                "receivers" => "receivers (or connectors)",
                                "processors" => "processors",
                                _ => "exporters (or connectors)",
                            };
                            self.error(path, format!("{id} is not defined under {section}"));
                        } else if out.contains(&id) {
                            self.error(path, format!("{id} is listed twice"));
                        } else {
                            out.push(id);
                        }
                    }
                    Err(m) => self.error(path, m),
                }
            }
            out
        };
        let receivers = resolve(&p.receivers, "receivers");
        let processors = resolve(&p.processors, "processors");
        let exporters = resolve(&p.exporters, "exporters");
        if p.receivers.is_empty() {
            self.error(
                format!("{base}.receivers"),
                "a pipeline needs at least one receiver",
            );
        }
        if p.exporters.is_empty() {
            self.error(
                format!("{base}.exporters"),
                "a pipeline needs at least one exporter",
            );
        }
        match signal {
            Signal::Traces => {
                for (i, id) in exporters.iter().enumerate() {
                    if matches!(doc.exporters.get(id), Some(ExporterConfig::Prometheus(_))) {
                        self.error(
                            format!("{base}.exporters[{i}]"),
                            "the prometheus exporter takes metrics: use it in a metrics pipeline fed by a connector",
                        );
                    }
                }
                for (i, id) in receivers.iter().enumerate() {
                    if doc.connectors.contains_key(id) {
                        self.error(
                            format!("{base}.receivers[{i}]"),
                            format!(
                                "connector {id} makes metrics: it can only feed a metrics pipeline"
                            ),
                        );
                    }
                }
                for (i, id) in processors.iter().enumerate() {
                    if i > 0
                        && matches!(
                            doc.processors.get(id),
                            Some(ProcessorConfig::MemoryLimiter(_))
                        )
                    {
                        self.error(
                            format!("{base}.processors[{i}]"),
                            "memory_limiter must be the first processor of a pipeline",
                        );
                    }
                }
            }
            Signal::Metrics => {
                for (i, id) in receivers.iter().enumerate() {
                    if !doc.connectors.contains_key(id) {
                        self.error(
                            format!("{base}.receivers[{i}]"),
                            format!("{id}: metrics pipelines take only connectors (spanmetrics, servicegraph) as receivers"),
                        );
                    }
                }
                if !processors.is_empty() {
                    self.error(
                        format!("{base}.processors"),
                        "metrics pipelines take no processors in Sextant",
                    );
                }
                for (i, id) in exporters.iter().enumerate() {
                    if !matches!(doc.exporters.get(id), Some(ExporterConfig::Prometheus(_))) {
                        self.error(
                            format!("{base}.exporters[{i}]"),
                            format!("{id}: metrics pipelines export only to prometheus"),
                        );
                    }
                }
            }
            Signal::Logs => {}
        }
        doc.pipelines.push(Pipeline {
            id: PipelineId { signal, name },
            receivers,
            processors,
            exporters,
        });
    }
}

/// Checks what serde cannot: built-in processors' ranges.
fn check_processor(c: &ProcessorConfig) -> Result<(), String> {
    match c {
        ProcessorConfig::Batch(b) => {
            if b.send_batch_max_size != 0 && b.send_batch_max_size < b.send_batch_size {
                return Err(format!(
                    "send_batch_max_size: {} must be 0 or at least send_batch_size ({})",
                    b.send_batch_max_size, b.send_batch_size
                ));
            }
            Ok(())
        }
        ProcessorConfig::MemoryLimiter(m) => {
            if m.limit_mib == 0 && m.limit_percentage.is_none() {
                return Err(
                    "limit_mib: set limit_mib (or limit_percentage): the memory limiter needs a limit"
                        .into(),
                );
            }
            if let (Some(s), true) = (m.spike_limit_mib, m.limit_mib > 0) {
                if s >= m.limit_mib {
                    return Err(format!(
                        "spike_limit_mib: {s} must be below limit_mib ({})",
                        m.limit_mib
                    ));
                }
            }
            if m.check_interval.is_zero() {
                return Err("check_interval: must be more than 0".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a map",
        Value::Array(..) => "a list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("4317".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn env_expansion_follows_the_reference() {
        let e = |t: &str| expand_env(t, &env);
        assert_eq!(e("a: ${env:PORT}\n").unwrap(), "a: 4317\n");
        assert_eq!(e("a: ${PORT}").unwrap(), "a: 4317");
        assert_eq!(e("a: ${env:NOPE:-x:y}").unwrap(), "a: x:y");
        assert_eq!(e("a: ${env:EMPTY:-d}").unwrap(), "a: d");
        assert_eq!(e("a: ${env:NOPE}").unwrap(), "a: ");
        assert_eq!(e("a: $$HOME $5").unwrap(), "a: $HOME $5");
        assert_eq!(
            e("a: 1 # ${file:x} is a comment").unwrap(),
            "a: 1 # ${file:x} is a comment"
        );
        assert_eq!(e("a: '#${env:PORT}'").unwrap(), "a: '#4317'");
        assert!(e("a: ${file:/x}")
            .unwrap_err()
            .contains("provider \"file\""));
        assert!(e("a: ${env:PORT").unwrap_err().contains("line 1"));
        assert!(e("a: ${env:1X}").is_err());
    }

    #[test]
    fn component_ids_parse() {
        let id = ComponentId::parse("otlp/backend-1").unwrap();
        assert_eq!(
            (id.ty.as_str(), id.name.as_deref()),
            ("otlp", Some("backend-1"))
        );
        assert_eq!(id.to_string(), "otlp/backend-1");
        assert!(ComponentId::parse("").is_err());
        assert!(ComponentId::parse("otlp/").is_err());
        assert!(ComponentId::parse("ot lp").is_err());
    }

    const DOC: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
  otlp/2:
    protocols:
      http:
        endpoint: 0.0.0.0:4318
processors:
  batch:
  batch/big:
    send_batch_size: 10000
    timeout: 10s
  memory_limiter:
    check_interval: 1s
    limit_mib: 512
exporters:
  debug:
    verbosity: detailed
extensions:
  health_check:
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp, otlp/2]
      processors: [memory_limiter, batch]
      exporters: [debug]
    traces/2:
      receivers: [otlp]
      processors: [batch/big]
      exporters: [debug]
  telemetry:
    metrics:
      address: 0.0.0.0:9999
"#;

    #[test]
    fn a_reference_style_document_loads() {
        let doc = load_str(DOC, "test.yaml", &NoHost, &[]).unwrap();
        assert_eq!(doc.receivers.len(), 2);
        let ReceiverConfig::Otlp(r) = &doc.receivers[&ComponentId::parse("otlp").unwrap()];
        assert_eq!(
            r.protocols.grpc.as_ref().unwrap().endpoint,
            "localhost:4317"
        );
        assert!(r.protocols.http.is_none());
        match &doc.processors[&ComponentId::parse("batch/big").unwrap()] {
            ProcessorConfig::Batch(b) => {
                assert_eq!(b.send_batch_size, 10000);
                assert_eq!(b.timeout, std::time::Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(doc.pipelines.len(), 2);
        assert_eq!(doc.pipelines[1].id.to_string(), "traces/2");
        assert_eq!(
            doc.telemetry.metrics_address().as_deref(),
            Some("0.0.0.0:9999")
        );
        assert_eq!(doc.service_extensions.len(), 1);
    }

    fn errors(text: &str) -> String {
        load_str(text, "bad.yaml", &NoHost, &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let e = errors(&DOC.replace("timeout: 10s", "timeout: ten"));
        assert!(
            e.contains("bad.yaml: processors.batch/big.timeout") && e.contains("ten"),
            "{e}"
        );
        assert!(
            !e.contains("not defined"),
            "a component with bad settings is not also undefined: {e}"
        );
        let e = errors(&DOC.replace("  batch:\n", "  batchy:\n"));
        assert!(
            e.contains("processors.batchy") && e.contains("unknown processor type"),
            "{e}"
        );
        assert!(e.contains("service.pipelines.traces.processors[1]"), "{e}");
        let e = errors(&DOC.replace(
            "exporters: [debug]\n    traces/2",
            "exporters: [otlp]\n    traces/2",
        ));
        assert!(
            e.contains("service.pipelines.traces.exporters[0]: otlp is not defined"),
            "{e}"
        );
        let e = errors(&DOC.replace(
            "verbosity: detailed",
            "verbosity: detailed\n    colour: red",
        ));
        assert!(e.contains("exporters.debug") && e.contains("colour"), "{e}");
        let e = errors(&DOC.replace("limit_mib: 512", "limit_mib: 512\n    spike_limit_mib: 600"));
        assert!(
            e.contains("processors.memory_limiter.spike_limit_mib"),
            "{e}"
        );
        let e = errors(&DOC.replace(
            "processors: [memory_limiter, batch]",
            "processors: [batch, memory_limiter]",
        ));
        assert!(e.contains("memory_limiter must be the first"), "{e}");
        let e = errors(&DOC.replace("traces/2:", "logs:"));
        assert!(
            e.contains("service.pipelines.logs") && e.contains("not supported"),
            "{e}"
        );
        let e = errors(&DOC.replace("extensions: [health_check]", "extensions: [zpages]"));
        assert!(e.contains("service.extensions[0]"), "{e}");
        let e = errors(&format!("{DOC}\nextra: 1\n"));
        assert!(e.contains("extra: unknown top-level key"), "{e}");
        let e = errors("receivers: [\n");
        assert!(e.starts_with("invalid configuration: bad.yaml"), "{e}");
    }

    #[test]
    fn overrides_apply_where_the_component_exists() {
        let doc = load_str(
            DOC,
            "t",
            &NoHost,
            &[
                Override::new(
                    &["receivers", "otlp", "protocols", "grpc", "endpoint"],
                    "127.0.0.1:0",
                ),
                Override::new(&["receivers", "nope", "protocols", "grpc", "endpoint"], "x"),
            ],
        )
        .unwrap();
        let ReceiverConfig::Otlp(r) = &doc.receivers[&ComponentId::parse("otlp").unwrap()];
        assert_eq!(r.protocols.grpc.as_ref().unwrap().endpoint, "127.0.0.1:0");
        assert_eq!(doc.receivers.len(), 2);
    }
}
