//! Configuration read from the standard OpenTelemetry environment variables
//! (plus a few Sextant conventions), through [`figment::providers::Env`].
//!
//! Every value is validated: a bad value is a [`ConfigError`] naming the
//! variable and the value, never a silent default.

use std::collections::BTreeMap;
use std::time::Duration;

use figment::providers::Env;

/// Every environment variable the SDK reads.
pub const ENV_KEYS: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_ENABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_PROPAGATORS",
    "ENVIRONMENT",
    "APP_VERSION",
    "TRACING_SAMPLE_PERCENTAGE",
    // Kubernetes downward API (see `resource`).
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_NAMESPACE_NAME",
    "POD_NAMESPACE",
    "K8S_NODE_NAME",
    "K8S_CONTAINER_NAME",
    "K8S_DEPLOYMENT_NAME",
    "K8S_CLUSTER_NAME",
    "HOSTNAME",
];

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The variable holds a value outside its allowed set or range.
    #[error("invalid value {value:?} for {variable}: {reason}")]
    Invalid {
        /// The variable (or builder option) name.
        variable: String,
        /// The offending value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The value is a valid option that this SDK does not implement.
    #[error("unsupported value {value:?} for {variable}: {reason}")]
    Unsupported {
        /// The variable name.
        variable: String,
        /// The offending value.
        value: String,
        /// What is supported.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(variable: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            variable: variable.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The variable that held the bad value.
    pub fn variable(&self) -> &str {
        match self {
            ConfigError::Invalid { variable, .. } | ConfigError::Unsupported { variable, .. } => {
                variable
            }
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

/// Which root sampler to use (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio`
    TraceIdRatio,
    /// `parentbased_always_on`
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` (the default)
    ParentBasedTraceIdRatio,
}

impl SamplerKind {
    /// Whether the decision of a parent span is followed.
    pub fn parent_based(self) -> bool {
        matches!(
            self,
            SamplerKind::ParentBasedAlwaysOn
                | SamplerKind::ParentBasedAlwaysOff
                | SamplerKind::ParentBasedTraceIdRatio
        )
    }
}

/// One propagator name of `OTEL_PROPAGATORS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropagatorKind {
    /// W3C `traceparent` / `tracestate`.
    TraceContext,
    /// W3C `baggage`.
    Baggage,
    /// Zipkin B3 single header (`b3`).
    B3,
    /// Zipkin B3 multi headers (`X-B3-*`).
    B3Multi,
    /// Jaeger `uber-trace-id` (+ `uberctx-*` baggage).
    Jaeger,
}

/// The deployment environment, which picks the default sampling ratio.
pub fn default_ratio_for_environment(environment: &str) -> f64 {
    match environment.to_ascii_lowercase().as_str() {
        "production" | "prod" => 0.10,
        "staging" | "stage" => 0.50,
        // development, dev, local, test and anything unknown: keep everything.
        _ => 1.0,
    }
}

/// Configuration after reading and validating the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `false` when OTEL_SDK_DISABLED=true or OTEL_ENABLED=false.
    pub enabled: bool,
    /// OTEL_SERVICE_NAME (None: unset).
    pub service_name: Option<String>,
    /// APP_VERSION.
    pub service_version: Option<String>,
    /// ENVIRONMENT (default `development`).
    pub environment: String,
    /// OTEL_RESOURCE_ATTRIBUTES, decoded, in order.
    pub resource_attributes: Vec<(String, String)>,
    /// The traces endpoint to use (None: the exporter's default for the protocol).
    pub endpoint: Option<String>,
    /// Whether `endpoint` came from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is)
    /// rather than OTEL_EXPORTER_OTLP_ENDPOINT (a base to which `/v1/traces` is added for HTTP).
    pub endpoint_is_signal_specific: bool,
    /// OTEL_EXPORTER_OTLP_PROTOCOL (default grpc).
    pub protocol: Protocol,
    /// OTEL_EXPORTER_OTLP_HEADERS, decoded.
    pub headers: Vec<(String, String)>,
    /// OTEL_EXPORTER_OTLP_INSECURE.
    pub insecure: Option<bool>,
    /// OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds; default 3 s).
    pub export_timeout: Duration,
    /// OTEL_TRACES_SAMPLER.
    pub sampler: SamplerKind,
    /// The root sampling ratio (0..=1), resolved from OTEL_TRACES_SAMPLER_ARG,
    /// TRACING_SAMPLE_PERCENTAGE or the environment default.
    pub sample_ratio: f64,
    /// Whether the ratio came from a variable rather than the environment default.
    pub sample_ratio_explicit: bool,
    /// OTEL_PROPAGATORS (default tracecontext,baggage).
    pub propagators: Vec<PropagatorKind>,
    /// Kubernetes downward-API values, raw (see [`crate::resource`]).
    pub k8s: BTreeMap<String, String>,
    /// HOSTNAME, when set.
    pub hostname: Option<String>,
}

fn parse_bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::invalid(
            variable,
            value,
            "expected true or false",
        )),
    }
}

/// Percent-decode (`%XX`) a W3C-baggage-style value.
pub(crate) fn percent_decode(variable: &str, raw: &str) -> Result<String, ConfigError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConfigError::invalid(variable, raw, "bad percent-encoding"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConfigError::invalid(variable, raw, "percent-decoded value is not UTF-8"))
}

/// Parse a `k=v,k2=v2` list (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS),
/// percent-decoding keys and values. An entry without `=` or with an empty key is an error.
pub fn parse_key_value_list(
    variable: &str,
    value: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = entry.split_once('=') else {
            return Err(ConfigError::invalid(
                variable,
                value,
                format!("entry {entry:?} is not key=value"),
            ));
        };
        let bad = |_| {
            ConfigError::invalid(
                variable,
                value,
                format!("entry {entry:?}: bad percent-encoding"),
            )
        };
        let k = percent_decode(variable, k.trim()).map_err(bad)?;
        let v = percent_decode(variable, v.trim()).map_err(bad)?;
        if k.is_empty() {
            return Err(ConfigError::invalid(
                variable,
                value,
                format!("entry {entry:?} has an empty key"),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn parse_ratio(variable: &str, value: &str, scale: f64) -> Result<f64, ConfigError> {
    let n: f64 = value.trim().parse().map_err(|_| {
        ConfigError::invalid(variable, value, format!("expected a number in 0..={scale}"))
    })?;
    if !(0.0..=scale).contains(&n) || n.is_nan() {
        return Err(ConfigError::invalid(
            variable,
            value,
            format!("expected a number in 0..={scale}"),
        ));
    }
    Ok(n / scale)
}

fn parse_endpoint(variable: &str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    match v.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => Ok(v.to_string()),
        _ => Err(ConfigError::invalid(
            variable,
            value,
            "expected an absolute URL such as http://localhost:4317",
        )),
    }
}

impl Config {
    /// Read the process environment through `figment::providers::Env`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = Env::raw().lowercase(false).only(ENV_KEYS);
        Self::from_vars(
            env.iter()
                .map(|(k, v)| (k.as_str().to_ascii_uppercase(), v)),
        )
    }

    /// Build from explicit `(NAME, value)` pairs (tests use this to avoid the process environment).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let get = |k: &str| vars.get(k).map(String::as_str);

        let mut enabled = true;
        if let Some(v) = get("OTEL_SDK_DISABLED") {
            enabled &= !parse_bool("OTEL_SDK_DISABLED", v)?;
        }
        if let Some(v) = get("OTEL_ENABLED") {
            enabled &= parse_bool("OTEL_ENABLED", v)?;
        }

        let environment = get("ENVIRONMENT")
            .unwrap_or("development")
            .trim()
            .to_string();

        let resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(v) => parse_key_value_list("OTEL_RESOURCE_ATTRIBUTES", v)?,
            None => Vec::new(),
        };
        let headers = match get("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(v) => parse_key_value_list("OTEL_EXPORTER_OTLP_HEADERS", v)?,
            None => Vec::new(),
        };

        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").map(str::trim) {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(v @ "http/json") => {
                return Err(ConfigError::Unsupported {
                    variable: "OTEL_EXPORTER_OTLP_PROTOCOL".into(),
                    value: v.into(),
                    reason: "use grpc or http/protobuf".into(),
                })
            }
            Some(v) => {
                return Err(ConfigError::invalid(
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    v,
                    "expected grpc or http/protobuf",
                ))
            }
        };

        let (endpoint, endpoint_is_signal_specific) =
            match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(v) => (
                    Some(parse_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v)?),
                    true,
                ),
                None => match get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(v) => (
                        Some(parse_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", v)?),
                        false,
                    ),
                    None => (None, false),
                },
            };

        let insecure = get("OTEL_EXPORTER_OTLP_INSECURE")
            .map(|v| parse_bool("OTEL_EXPORTER_OTLP_INSECURE", v))
            .transpose()?;

        let export_timeout = match get("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some(v) => Duration::from_millis(v.trim().parse().map_err(|_| {
                ConfigError::invalid("OTEL_EXPORTER_OTLP_TIMEOUT", v, "expected milliseconds")
            })?),
            None => Duration::from_secs(3),
        };

        let sampler = match get("OTEL_TRACES_SAMPLER").map(str::trim) {
            None | Some("parentbased_traceidratio") => SamplerKind::ParentBasedTraceIdRatio,
            Some("always_on") => SamplerKind::AlwaysOn,
            Some("always_off") => SamplerKind::AlwaysOff,
            Some("traceidratio") => SamplerKind::TraceIdRatio,
            Some("parentbased_always_on") => SamplerKind::ParentBasedAlwaysOn,
            Some("parentbased_always_off") => SamplerKind::ParentBasedAlwaysOff,
            Some(v @ ("jaeger_remote" | "parentbased_jaeger_remote" | "xray")) => {
                return Err(ConfigError::Unsupported {
                    variable: "OTEL_TRACES_SAMPLER".into(),
                    value: v.into(),
                    reason: "supported: always_on, always_off, traceidratio, parentbased_*".into(),
                })
            }
            Some(v) => {
                return Err(ConfigError::invalid(
                    "OTEL_TRACES_SAMPLER",
                    v,
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ))
            }
        };

        // Precedence: OTEL_TRACES_SAMPLER_ARG > TRACING_SAMPLE_PERCENTAGE > environment default.
        let mut sample_ratio = default_ratio_for_environment(&environment);
        if let Some(v) = get("TRACING_SAMPLE_PERCENTAGE") {
            sample_ratio = parse_ratio("TRACING_SAMPLE_PERCENTAGE", v, 100.0)?;
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
            sample_ratio = parse_ratio("OTEL_TRACES_SAMPLER_ARG", v, 1.0)?;
        }

        let propagators = match get("OTEL_PROPAGATORS") {
            None => vec![PropagatorKind::TraceContext, PropagatorKind::Baggage],
            Some(v) => parse_propagators(v)?,
        };

        let k8s = vars
            .iter()
            .filter(|(k, _)| k.starts_with("K8S_") || k.as_str() == "POD_NAMESPACE")
            .map(|(k, v)| (k.clone(), v.trim().to_string()))
            .collect();

        Ok(Config {
            enabled,
            service_name: get("OTEL_SERVICE_NAME").map(|s| s.trim().to_string()),
            service_version: get("APP_VERSION").map(|s| s.trim().to_string()),
            environment,
            resource_attributes,
            endpoint,
            endpoint_is_signal_specific,
            protocol,
            headers,
            insecure,
            export_timeout,
            sampler,
            sample_ratio,
            sample_ratio_explicit: get("TRACING_SAMPLE_PERCENTAGE").is_some()
                || get("OTEL_TRACES_SAMPLER_ARG").is_some(),
            propagators,
            k8s,
            hostname: get("HOSTNAME").map(|s| s.trim().to_string()),
        })
    }
}

/// Parse an `OTEL_PROPAGATORS` value. `none` yields an empty list.
pub fn parse_propagators(value: &str) -> Result<Vec<PropagatorKind>, ConfigError> {
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "tracecontext" => PropagatorKind::TraceContext,
            "baggage" => PropagatorKind::Baggage,
            "b3" => PropagatorKind::B3,
            "b3multi" => PropagatorKind::B3Multi,
            "jaeger" => PropagatorKind::Jaeger,
            "none" => continue,
            "xray" | "ottrace" => {
                return Err(ConfigError::Unsupported {
                    variable: "OTEL_PROPAGATORS".into(),
                    value: value.into(),
                    reason: format!("{name} is not implemented"),
                })
            }
            _ => {
                return Err(ConfigError::invalid(
                    "OTEL_PROPAGATORS",
                    value,
                    format!(
                        "unknown propagator {name:?} (expected tracecontext, baggage, b3, b3multi, jaeger, none)"
                    ),
                ))
            }
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert!(c.enabled);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.environment, "development");
        assert_eq!(c.sample_ratio, 1.0);
        assert_eq!(c.sampler, SamplerKind::ParentBasedTraceIdRatio);
        assert_eq!(
            c.propagators,
            vec![PropagatorKind::TraceContext, PropagatorKind::Baggage]
        );
        assert_eq!(c.endpoint, None);
    }

    #[test]
    fn environment_defaults_and_overrides() {
        assert_eq!(
            cfg(&[("ENVIRONMENT", "production")]).unwrap().sample_ratio,
            0.1
        );
        assert_eq!(
            cfg(&[("ENVIRONMENT", "staging")]).unwrap().sample_ratio,
            0.5
        );
        let c = cfg(&[
            ("ENVIRONMENT", "production"),
            ("TRACING_SAMPLE_PERCENTAGE", "25"),
        ])
        .unwrap();
        assert_eq!(c.sample_ratio, 0.25);
        let c = cfg(&[
            ("ENVIRONMENT", "production"),
            ("TRACING_SAMPLE_PERCENTAGE", "25"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.75"),
        ])
        .unwrap();
        assert_eq!(c.sample_ratio, 0.75);
    }

    #[test]
    fn bad_values_name_variable_and_value() {
        let cases: &[(&str, &str)] = &[
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_ENABLED", "yep!"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "2"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=1,broken"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz"),
            ("OTEL_RESOURCE_ATTRIBUTES", "=v"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ("TRACING_SAMPLE_PERCENTAGE", "101"),
            ("TRACING_SAMPLE_PERCENTAGE", "-1"),
            ("OTEL_PROPAGATORS", "tracecontext,w3c"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3s"),
        ];
        for (var, value) in cases {
            let err = cfg(&[(var, value)]).expect_err(&format!("{var}={value} must fail"));
            assert_eq!(err.variable(), *var);
            let msg = err.to_string();
            assert!(msg.contains(var), "{msg}");
            assert!(msg.contains(value), "{msg}");
        }
    }

    #[test]
    fn disabled_flags() {
        assert!(!cfg(&[("OTEL_SDK_DISABLED", "true")]).unwrap().enabled);
        assert!(!cfg(&[("OTEL_ENABLED", "false")]).unwrap().enabled);
        assert!(cfg(&[("OTEL_ENABLED", "TRUE")]).unwrap().enabled);
    }

    #[test]
    fn endpoints_protocol_headers() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=abc%3D%3D,tenant=t1",
            ),
        ])
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4318"));
        assert!(!c.endpoint_is_signal_specific);
        assert_eq!(
            c.headers,
            vec![
                ("x-api-key".to_string(), "abc==".to_string()),
                ("tenant".to_string(), "t1".to_string())
            ]
        );
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:4318/v1/traces",
            ),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://other:4318/v1/traces"));
        assert!(c.endpoint_is_signal_specific);
    }

    #[test]
    fn propagators_list() {
        assert_eq!(
            parse_propagators("b3multi, jaeger,b3,baggage").unwrap(),
            vec![
                PropagatorKind::B3Multi,
                PropagatorKind::Jaeger,
                PropagatorKind::B3,
                PropagatorKind::Baggage
            ]
        );
        assert!(parse_propagators("none").unwrap().is_empty());
    }
}
