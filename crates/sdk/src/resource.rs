//! The [`Resource`] describing the process.
//!
//! | attribute | source |
//! | --- | --- |
//! | `service.name` | builder `.service_name()`, else `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `unknown_service:<exe>` |
//! | `service.version` | builder `.service_version()`, else `APP_VERSION` |
//! | `deployment.environment.name` | builder `.environment()`, else `ENVIRONMENT` (default `development`) |
//! | `host.name` | `HOSTNAME`, else `/proc/sys/kernel/hostname`, else `/etc/hostname` |
//! | `process.pid`, `process.runtime.name` (`rustc`), `process.executable.name` | the process |
//! | `telemetry.sdk.name`, `.language`, `.version` | the OpenTelemetry SDK |
//! | `k8s.pod.name` | `K8S_POD_NAME` |
//! | `k8s.pod.uid` | `K8S_POD_UID` |
//! | `k8s.namespace.name` | `K8S_NAMESPACE_NAME`, else `POD_NAMESPACE` |
//! | `k8s.node.name` | `K8S_NODE_NAME` |
//! | `k8s.container.name` | `K8S_CONTAINER_NAME` |
//! | `k8s.deployment.name` | `K8S_DEPLOYMENT_NAME` |
//! | `k8s.cluster.name` | `K8S_CLUSTER_NAME` |
//!
//! Set the Kubernetes ones with the downward API, e.g.
//! `env: [{name: K8S_POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]`
//! (`metadata.namespace`, `metadata.uid`, `spec.nodeName` for the others).
//!
//! Entries of `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, percent-decoded) are
//! applied after the detected ones and before the code-level ones.

use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::{Resource, TelemetryResourceDetector};

use crate::config::Config;

/// Downward-API variable → resource attribute key.
pub const K8S_VARIABLES: &[(&str, &str)] = &[
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("POD_NAMESPACE", "k8s.namespace.name"),
    ("K8S_NODE_NAME", "k8s.node.name"),
    ("K8S_CONTAINER_NAME", "k8s.container.name"),
    ("K8S_DEPLOYMENT_NAME", "k8s.deployment.name"),
    ("K8S_CLUSTER_NAME", "k8s.cluster.name"),
];

/// Code-level overrides for the resource.
#[derive(Debug, Clone, Default)]
pub struct ResourceOverrides {
    pub(crate) service_name: Option<String>,
    pub(crate) service_version: Option<String>,
    pub(crate) environment: Option<String>,
    pub(crate) attributes: Vec<KeyValue>,
}

fn host_name(config: &Config) -> Option<String> {
    if let Some(h) = &config.hostname {
        return Some(h.clone());
    }
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn executable_name() -> Option<String> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Build the resource from the configuration and the code-level overrides.
pub fn build_resource(config: &Config, overrides: &ResourceOverrides) -> Resource {
    // Ordered so that later entries win.
    let mut attrs: Vec<(String, opentelemetry::Value)> = Vec::new();
    let mut put = |k: &str, v: opentelemetry::Value| {
        attrs.retain(|(key, _)| key != k);
        attrs.push((k.to_string(), v));
    };

    let exe = executable_name();
    put(
        "service.name",
        format!("unknown_service:{}", exe.as_deref().unwrap_or("rust")).into(),
    );
    if let Some(exe) = &exe {
        put("process.executable.name", exe.clone().into());
    }
    put("process.pid", (std::process::id() as i64).into());
    put("process.runtime.name", "rustc".into());
    if let Some(h) = host_name(config) {
        put("host.name", h.into());
    }
    for (var, key) in K8S_VARIABLES {
        if let Some(v) = config.k8s.get(*var) {
            // K8S_NAMESPACE_NAME wins over POD_NAMESPACE.
            if *var == "POD_NAMESPACE" && config.k8s.contains_key("K8S_NAMESPACE_NAME") {
                continue;
            }
            put(key, v.clone().into());
        }
    }
    put(
        "deployment.environment.name",
        config.environment.clone().into(),
    );
    if let Some(v) = &config.service_version {
        put("service.version", v.clone().into());
    }
    for (k, v) in &config.resource_attributes {
        put(k, v.clone().into());
    }
    if let Some(n) = &config.service_name {
        put("service.name", n.clone().into());
    }

    // Code-level settings win.
    if let Some(e) = &overrides.environment {
        put("deployment.environment.name", e.clone().into());
    }
    if let Some(v) = &overrides.service_version {
        put("service.version", v.clone().into());
    }
    for kv in &overrides.attributes {
        put(kv.key.as_str(), kv.value.clone());
    }
    if let Some(n) = &overrides.service_name {
        put("service.name", n.clone().into());
    }

    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::{Key, Value};

    fn get(r: &Resource, k: &'static str) -> Option<String> {
        r.get(&Key::from_static_str(k)).map(|v| v.to_string())
    }

    #[test]
    fn resource_from_environment() {
        let config = Config::from_vars([
            ("OTEL_SERVICE_NAME", "checkout"),
            ("APP_VERSION", "1.10"),
            ("ENVIRONMENT", "staging"),
            ("HOSTNAME", "web-7f9c"),
            ("K8S_POD_NAME", "web-7f9c-abcde"),
            ("POD_NAMESPACE", "shop"),
            ("K8S_NODE_NAME", "node-3"),
            ("K8S_POD_UID", "0b7c-11"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "team=payments,note=a%2Cb%3Dc%20d,service.namespace=shop",
            ),
        ])
        .unwrap();
        let r = build_resource(&config, &ResourceOverrides::default());
        assert_eq!(get(&r, "service.name").as_deref(), Some("checkout"));
        assert_eq!(get(&r, "service.version").as_deref(), Some("1.10"));
        assert_eq!(
            get(&r, "deployment.environment.name").as_deref(),
            Some("staging")
        );
        assert_eq!(get(&r, "host.name").as_deref(), Some("web-7f9c"));
        assert_eq!(get(&r, "k8s.pod.name").as_deref(), Some("web-7f9c-abcde"));
        assert_eq!(get(&r, "k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(get(&r, "k8s.node.name").as_deref(), Some("node-3"));
        assert_eq!(get(&r, "k8s.pod.uid").as_deref(), Some("0b7c-11"));
        assert_eq!(get(&r, "team").as_deref(), Some("payments"));
        assert_eq!(get(&r, "note").as_deref(), Some("a,b=c d"));
        assert_eq!(get(&r, "service.namespace").as_deref(), Some("shop"));
        assert_eq!(get(&r, "process.runtime.name").as_deref(), Some("rustc"));
        assert_eq!(
            r.get(&Key::from_static_str("process.pid")),
            Some(Value::I64(std::process::id() as i64))
        );
        assert_eq!(get(&r, "telemetry.sdk.language").as_deref(), Some("rust"));
        assert!(get(&r, "telemetry.sdk.version").is_some());
        assert_eq!(
            get(&r, "telemetry.sdk.name").as_deref(),
            Some("opentelemetry")
        );
    }

    #[test]
    fn code_overrides_win_and_default_name() {
        let config = Config::from_vars([
            ("OTEL_SERVICE_NAME", "from-env"),
            ("K8S_NAMESPACE_NAME", "a"),
            ("POD_NAMESPACE", "b"),
        ])
        .unwrap();
        let o = ResourceOverrides {
            service_name: Some("from-code".into()),
            service_version: Some("2.0.0".into()),
            environment: Some("production".into()),
            attributes: vec![KeyValue::new("region", "eu")],
        };
        let r = build_resource(&config, &o);
        assert_eq!(get(&r, "service.name").as_deref(), Some("from-code"));
        assert_eq!(get(&r, "service.version").as_deref(), Some("2.0.0"));
        assert_eq!(
            get(&r, "deployment.environment.name").as_deref(),
            Some("production")
        );
        assert_eq!(get(&r, "region").as_deref(), Some("eu"));
        assert_eq!(get(&r, "k8s.namespace.name").as_deref(), Some("a"));

        let r = build_resource(
            &Config::from_vars(Vec::<(String, String)>::new()).unwrap(),
            &ResourceOverrides::default(),
        );
        assert!(get(&r, "service.name")
            .unwrap()
            .starts_with("unknown_service:"));
    }

    #[test]
    fn service_name_from_resource_attributes() {
        let config =
            Config::from_vars([("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing")]).unwrap();
        let r = build_resource(&config, &ResourceOverrides::default());
        assert_eq!(get(&r, "service.name").as_deref(), Some("billing"));
    }
}
