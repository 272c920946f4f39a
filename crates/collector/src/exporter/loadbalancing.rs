//! The `loadbalancing` exporter: spans are routed by trace id (or service) over a consistent
//! hash ring of backends, so that all spans of a trace reach the same backend, and adding or
//! removing a backend moves only a fraction of the traces. Each backend is an `otlp` exporter
//! built from `protocol.otlp` (its own retry and queue; with storage, its own tree
//! `exporter/<name>/<endpoint>`). Backends come from a static list or DNS, re-resolved every
//! `interval`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize};
use sextant_otlp_proto::proto::{any_value, ResourceSpans, Span};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::exporterhelper::Exporter;
use super::otlp::{self, OtlpExporter};
use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::storage::Storage;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// Virtual nodes per backend on the ring.
const VIRTUAL_NODES: usize = 200;
/// The port of a backend given without one.
const DEFAULT_PORT: u16 = 4317;

/// `routing_key`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum RoutingKey {
    #[default]
    #[serde(rename = "traceID")]
    TraceId,
    #[serde(rename = "service")]
    Service,
}

/// `protocol`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Protocol {
    /// The settings of every backend's exporter (its `endpoint` is ignored).
    pub otlp: otlp::Config,
}

/// `resolver.static`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StaticResolver {
    /// `host[:port]` (port 4317 when missing).
    pub hostnames: Vec<String>,
}

/// `resolver.dns`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsResolver {
    pub hostname: String,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    #[serde(with = "crate::config::duration")]
    pub interval: Duration,
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
}

impl Default for DnsResolver {
    fn default() -> Self {
        Self {
            hostname: String::new(),
            port: DEFAULT_PORT,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

/// The reference writes the port as a string; accept a number too.
fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        N(u16),
        S(String),
    }
    match P::deserialize(d)? {
        P::N(n) => Ok(n),
        P::S(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a port number"))),
    }
}

/// `resolver`: exactly one of `static` and `dns`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Resolver {
    #[serde(rename = "static")]
    pub static_: Option<StaticResolver>,
    pub dns: Option<DnsResolver>,
    /// Refused in [`check`]: the k8s resolver is not implemented.
    pub k8s: Option<serde_json::Value>,
    /// Refused in [`check`]: not implemented.
    pub aws_cloud_map: Option<serde_json::Value>,
}

/// `exporters: loadbalancing[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub routing_key: RoutingKey,
    pub protocol: Protocol,
    pub resolver: Resolver,
}

/// `host[:port]` with the default port added when missing.
fn with_port(host: &str, port: u16) -> String {
    let h = host.trim();
    let has_port = match h.rsplit_once(':') {
        Some((before, p)) => {
            p.parse::<u16>().is_ok() && (!before.contains(':') || before.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        h.to_string()
    } else {
        format!("{h}:{port}")
    }
}

fn backend_config(config: &Config, endpoint: &str) -> otlp::Config {
    otlp::Config {
        endpoint: endpoint.to_string(),
        ..config.protocol.otlp.clone()
    }
}

/// Checks what serde cannot: one resolver, a usable `protocol.otlp`.
pub fn check(config: &Config) -> Result<(), String> {
    let r = &config.resolver;
    if r.k8s.is_some() {
        return Err("resolver.k8s: the k8s resolver is not supported: use static or dns".into());
    }
    if r.aws_cloud_map.is_some() {
        return Err(
            "resolver.aws_cloud_map: the aws_cloud_map resolver is not supported: use static or dns"
                .into(),
        );
    }
    let sample = match (&r.static_, &r.dns) {
        (Some(_), Some(_)) => {
            return Err("resolver: set only one of static and dns".into());
        }
        (None, None) => return Err("resolver: set one of static and dns".into()),
        (Some(s), None) => {
            if s.hostnames.is_empty() {
                return Err("resolver.static.hostnames: must list at least one backend".into());
            }
            for (i, h) in s.hostnames.iter().enumerate() {
                if h.trim().is_empty() || h.contains("://") {
                    return Err(format!(
                        "resolver.static.hostnames[{i}]: {h:?} is not a host[:port]"
                    ));
                }
            }
            with_port(&s.hostnames[0], DEFAULT_PORT)
        }
        (None, Some(d)) => {
            if d.hostname.trim().is_empty() {
                return Err("resolver.dns.hostname: must be set".into());
            }
            if d.interval.is_zero() {
                return Err("resolver.dns.interval: must be more than 0".into());
            }
            format!("{}:{}", d.hostname, d.port)
        }
    };
    otlp::check(&backend_config(config, &sample)).map_err(|e| format!("protocol.otlp.{e}"))
}

/// A 64-bit hash, stable across processes and versions (FNV-1a, then a mixing step).
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The consistent hash ring: `VIRTUAL_NODES` points per backend.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring over `endpoints` (indices into the slice).
    pub fn new(endpoints: &[String]) -> Self {
        let mut points = Vec::with_capacity(endpoints.len() * VIRTUAL_NODES);
        for (i, e) in endpoints.iter().enumerate() {
            for v in 0..VIRTUAL_NODES {
                let key = format!("{e}#{v}");
                points.push((hash64(key.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The backend of `key`.
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash64(key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        let (_, b) = self.points[if i == self.points.len() { 0 } else { i }];
        Some(b as usize)
    }
}

struct Backends {
    endpoints: Vec<String>,
    exporters: Vec<Arc<OtlpExporter>>,
    ring: Ring,
}

struct Inner {
    name: String,
    config: Config,
    storage: Option<Storage>,
    metrics: CollectorMetrics,
    backends: RwLock<Arc<Backends>>,
    stop: watch::Sender<bool>,
}

/// The exporter.
pub struct LoadBalancer {
    inner: Arc<Inner>,
    resolver: Mutex<Option<JoinHandle<()>>>,
}

/// Builds `loadbalancing[/name]`. `storage`: the extension that
/// `protocol.otlp.sending_queue.storage` names, if set. Must run inside a tokio runtime.
pub fn build(
    name: &str,
    config: &Config,
    storage: Option<Storage>,
    metrics: &CollectorMetrics,
) -> Result<Arc<LoadBalancer>, String> {
    check(config)?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "the loadbalancing exporter must be built inside a tokio runtime")?;
    if config.protocol.otlp.sending_queue.storage.is_some() && storage.is_none() {
        return Err("protocol.otlp.sending_queue.storage: no such storage extension".into());
    }
    let (stop, _) = watch::channel(false);
    let inner = Arc::new(Inner {
        name: name.to_string(),
        config: config.clone(),
        storage,
        metrics: metrics.clone(),
        backends: RwLock::new(Arc::new(Backends {
            endpoints: Vec::new(),
            exporters: Vec::new(),
            ring: Ring::default(),
        })),
        stop,
    });
    let mut resolver = None;
    if let Some(s) = &config.resolver.static_ {
        let mut endpoints: Vec<String> = s
            .hostnames
            .iter()
            .map(|h| with_port(h, DEFAULT_PORT))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        inner.set_backends(endpoints)?;
    } else if let Some(d) = config.resolver.dns.clone() {
        let inner2 = inner.clone();
        resolver = Some(handle.spawn(async move { inner2.run_dns(d).await }));
    }
    Ok(Arc::new(LoadBalancer {
        inner,
        resolver: Mutex::new(resolver),
    }))
}

/// Resolves `hostname:port` to sorted, distinct `ip:port` endpoints.
async fn resolve(d: &DnsResolver) -> Result<Vec<String>, String> {
    let lookup = tokio::net::lookup_host((d.hostname.as_str(), d.port));
    let addrs = tokio::time::timeout(d.timeout, lookup)
        .await
        .map_err(|_| format!("no answer within {:?}", d.timeout))?
        .map_err(|e| e.to_string())?;
    let mut endpoints: Vec<String> = addrs.map(|a| a.to_string()).collect();
    endpoints.sort();
    endpoints.dedup();
    Ok(endpoints)
}

impl Inner {
    /// Replaces the backends: keeps the exporters of endpoints that stay, builds new ones,
    /// stops those that went (a persistent queue keeps their entries on disk).
    fn set_backends(&self, endpoints: Vec<String>) -> Result<(), String> {
        let current = self.backends.read().clone();
        if current.endpoints == endpoints {
            return Ok(());
        }
        let mut existing: FxHashMap<&str, &Arc<OtlpExporter>> = current
            .endpoints
            .iter()
            .map(String::as_str)
            .zip(current.exporters.iter())
            .collect();
        let mut exporters = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            match existing.remove(e.as_str()) {
                Some(x) => exporters.push(x.clone()),
                None => {
                    let name = format!("{}/{e}", self.name);
                    let tree = match &self.storage {
                        Some(s) => Some(s.tree(&format!("exporter/{name}")).map_err(|err| {
                            format!("protocol.otlp.sending_queue.storage: cannot open the queue of {e}: {err}")
                        })?),
                        None => None,
                    };
                    let x =
                        otlp::build(&name, &backend_config(&self.config, e), tree, &self.metrics)
                            .map_err(|err| format!("protocol.otlp.{err}"))?;
                    exporters.push(x);
                }
            }
        }
        for (e, x) in existing {
            tracing::info!(exporter = %self.name, backend = e, "backend removed");
            let x = x.clone();
            tokio::spawn(async move { x.shutdown().await });
        }
        tracing::info!(exporter = %self.name, backends = ?endpoints, "backends updated");
        let ring = Ring::new(&endpoints);
        *self.backends.write() = Arc::new(Backends {
            endpoints,
            exporters,
            ring,
        });
        Ok(())
    }

    async fn run_dns(self: Arc<Self>, d: DnsResolver) {
        let mut stop = self.stop.subscribe();
        loop {
            match resolve(&d).await {
                Ok(endpoints) if !endpoints.is_empty() => {
                    if let Err(e) = self.set_backends(endpoints) {
                        tracing::error!(exporter = %self.name, error = %e, "cannot use the resolved backends");
                    }
                }
                Ok(_) => tracing::warn!(exporter = %self.name, hostname = %d.hostname,
                    "dns resolver: no addresses; keeping the previous backends"),
                Err(e) => tracing::warn!(exporter = %self.name, hostname = %d.hostname, error = %e,
                    "dns resolver failed; keeping the previous backends"),
            }
            tokio::select! {
                _ = tokio::time::sleep(d.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn service_of(rs: &ResourceSpans) -> &[u8] {
    rs.resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_bytes()),
            _ => None,
        })
        .unwrap_or(b"")
}

/// Splits spans by backend (`n` backends); parts keep their resource and scope.
fn split(
    resource_spans: Vec<ResourceSpans>,
    ring: &Ring,
    n: usize,
    key: RoutingKey,
) -> Vec<Vec<ResourceSpans>> {
    let mut parts: Vec<Vec<ResourceSpans>> = (0..n).map(|_| Vec::new()).collect();
    for mut rs in resource_spans {
        if key == RoutingKey::Service {
            let b = ring.lookup(service_of(&rs)).unwrap_or(0);
            parts[b].push(rs);
            continue;
        }
        let scopes = std::mem::take(&mut rs.scope_spans);
        let mut per: Vec<Vec<sextant_otlp_proto::proto::ScopeSpans>> =
            (0..n).map(|_| Vec::new()).collect();
        for mut ss in scopes {
            let spans = std::mem::take(&mut ss.spans);
            let mut buckets: Vec<Vec<Span>> = (0..n).map(|_| Vec::new()).collect();
            for span in spans {
                let b = ring.lookup(&span.trace_id).unwrap_or(0);
                buckets[b].push(span);
            }
            for (b, spans) in buckets.into_iter().enumerate() {
                if !spans.is_empty() {
                    let mut part = ss.clone();
                    part.spans = spans;
                    per[b].push(part);
                }
            }
        }
        for (b, scopes) in per.into_iter().enumerate() {
            if !scopes.is_empty() {
                let mut part = rs.clone();
                part.scope_spans = scopes;
                parts[b].push(part);
            }
        }
    }
    parts
}

impl LoadBalancer {
    /// The current backends' endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.backends.read().endpoints.clone()
    }

    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let task = self.resolver.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        let backends = self.inner.backends.read().clone();
        for x in &backends.exporters {
            x.shutdown().await;
        }
    }

    /// Unhealthy while no backend is known or any backend's last attempt failed.
    pub fn health(&self) -> Result<(), String> {
        let backends = self.inner.backends.read().clone();
        if backends.exporters.is_empty() {
            return Err(format!("exporter {}: no backends", self.inner.name));
        }
        let errors: Vec<String> = backends
            .exporters
            .iter()
            .filter_map(|x| x.health().err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Exporter for LoadBalancer {
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(LoadBalancer::shutdown(self))
    }

    fn health(&self) -> Result<(), String> {
        LoadBalancer::health(self)
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.inner.stop.send_replace(true);
    }
}

impl Consumer for LoadBalancer {
    fn consume(
        &self,
        mut batch: TraceBatch,
    ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(ExportOutcome::default());
            }
            let backends = self.inner.backends.read().clone();
            match backends.exporters.len() {
                0 => {
                    return Err(PipelineError::Unavailable(format!(
                        "exporter {}: no backends resolved yet",
                        self.inner.name
                    )))
                }
                1 => return backends.exporters[0].consume(batch).await,
                _ => {}
            }
            let decoded = std::mem::take(batch.decode().map_err(|e| {
                PipelineError::InvalidArgument(format!("cannot decode spans: {e}"))
            })?);
            let n = backends.exporters.len();
            let parts = split(decoded, &backends.ring, n, self.inner.config.routing_key);
            let sends = parts
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.is_empty())
                .map(|(b, p)| backends.exporters[b].consume(TraceBatch::from_decoded(p)));
            let results = futures::future::join_all(sends).await;
            let mut outcome = ExportOutcome::default();
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(o) => outcome.merge(&o),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(outcome),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::exporterhelper::RetryConfig;
    use crate::exporter::otlp::tests::{grpc_backend, Recorder};
    use sextant_otlp_proto::proto::{ScopeSpans, Span};

    fn trace_id(i: u32) -> Vec<u8> {
        let mut t = vec![0u8; 16];
        t[..4].copy_from_slice(&i.to_be_bytes());
        t[15] = 1;
        t
    }

    /// `traces` traces of `per` spans each, interleaved in one batch.
    fn mixed(first: u32, traces: u32, per: u32) -> TraceBatch {
        let mut spans = Vec::new();
        for s in 0..per {
            for t in first..first + traces {
                spans.push(Span {
                    trace_id: trace_id(t),
                    span_id: (u64::from(t) << 16 | u64::from(s) | 1 << 63)
                        .to_be_bytes()
                        .to_vec(),
                    name: "op".into(),
                    ..Default::default()
                });
            }
        }
        TraceBatch::from_decoded(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    fn config(hostnames: Vec<String>) -> Config {
        Config {
            resolver: Resolver {
                static_: Some(StaticResolver { hostnames }),
                ..Default::default()
            },
            protocol: Protocol {
                otlp: otlp::Config {
                    tls: crate::exporter::exporterhelper::TlsConfig {
                        insecure: true,
                        ..Default::default()
                    },
                    retry_on_failure: RetryConfig {
                        initial_interval: Duration::from_millis(10),
                        max_interval: Duration::from_millis(50),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_trace_goes_to_one_backend_and_both_get_some() {
        let (a, b) = (Recorder::new(), Recorder::new());
        let (addr_a, _sa) = grpc_backend(a.clone()).await;
        let (addr_b, _sb) = grpc_backend(b.clone()).await;
        let m = CollectorMetrics::unregistered();
        let lb = build(
            "loadbalancing",
            &config(vec![addr_a.to_string(), addr_b.to_string()]),
            None,
            &m,
        )
        .unwrap();
        for round in 0..4 {
            lb.consume(mixed(round * 25, 50, 3)).await.unwrap();
        }
        let at_a: std::collections::HashSet<Vec<u8>> =
            a.span_ids().into_iter().map(|(t, _)| t).collect();
        let at_b: std::collections::HashSet<Vec<u8>> =
            b.span_ids().into_iter().map(|(t, _)| t).collect();
        assert!(
            !at_a.is_empty() && !at_b.is_empty(),
            "{} {}",
            at_a.len(),
            at_b.len()
        );
        assert!(at_a.is_disjoint(&at_b), "a trace went to both backends");
        assert_eq!(at_a.len() + at_b.len(), 125);
        assert_eq!(a.span_count() + b.span_count(), 4 * 50 * 3);
        assert_eq!(lb.health(), Ok(()));
        lb.shutdown().await;
    }

    #[test]
    fn adding_a_backend_moves_only_its_share() {
        let three: Vec<String> = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]
            .map(String::from)
            .to_vec();
        let mut four = three.clone();
        four.push("10.0.0.4:4317".into());
        let (r3, r4) = (Ring::new(&three), Ring::new(&four));
        let mut moved = 0;
        let mut counts = [0usize; 4];
        let n = 20_000;
        for i in 0..n {
            let t = hash64(&(i as u64).to_le_bytes()).to_be_bytes().repeat(2);
            let (b3, b4) = (r3.lookup(&t).unwrap(), r4.lookup(&t).unwrap());
            counts[b4] += 1;
            if three.get(b3) != four.get(b4) {
                moved += 1;
                assert_eq!(b4, 3, "a trace moved between two old backends");
            }
        }
        let share = moved as f64 / n as f64;
        assert!((0.15..0.35).contains(&share), "moved {share}");
        assert!(counts.iter().all(|c| *c > n / 8), "{counts:?}");
    }

    #[test]
    fn service_routing_keeps_resources_whole() {
        let ring = Ring::new(&["a:1".to_string(), "b:1".to_string()]);
        let mut b = mixed(0, 10, 2);
        let rs = std::mem::take(b.decode().unwrap());
        let parts = split(rs, &ring, 2, RoutingKey::Service);
        assert_eq!(parts.iter().filter(|p| !p.is_empty()).count(), 1);
    }

    #[tokio::test]
    async fn dns_resolver_finds_localhost() {
        let d = DnsResolver {
            hostname: "localhost".into(),
            port: 4317,
            ..Default::default()
        };
        let eps = resolve(&d).await.unwrap();
        assert!(
            eps.iter()
                .any(|e| e == "127.0.0.1:4317" || e == "[::1]:4317"),
            "{eps:?}"
        );
        let (a, _) = (Recorder::new(), ());
        let (addr, _s) = grpc_backend(a.clone()).await;
        let mut cfg = config(vec![]);
        cfg.resolver = Resolver {
            dns: Some(DnsResolver {
                hostname: "127.0.0.1".into(),
                port: addr.port(),
                interval: Duration::from_millis(50),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = CollectorMetrics::unregistered();
        let lb = build("lb", &cfg, None, &m).unwrap();
        for _ in 0..100 {
            if !lb.endpoints().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lb.endpoints(), vec![addr.to_string()]);
        lb.consume(mixed(0, 3, 1)).await.unwrap();
        assert_eq!(a.span_count(), 3);
        lb.shutdown().await;
    }

    #[test]
    fn resolvers_are_checked() {
        let mut c = config(vec!["b1".into()]);
        assert_eq!(check(&c), Ok(()));
        assert_eq!(with_port("b1", 4317), "b1:4317");
        assert_eq!(with_port("b1:55690", 4317), "b1:55690");
        assert_eq!(with_port("[::1]:9", 4317), "[::1]:9");
        c.resolver.k8s = Some(serde_json::json!({"service": "x"}));
        assert!(check(&c).unwrap_err().starts_with("resolver.k8s"));
        let c = config(vec![]);
        assert!(check(&c)
            .unwrap_err()
            .starts_with("resolver.static.hostnames"));
        let parsed: Config = serde_json::from_str(
            r#"{"routing_key": "service", "resolver": {"dns": {"hostname": "h", "port": "4317"}},
                "protocol": {"otlp": {"tls": {"insecure": true}, "timeout": "1s"}}}"#,
        )
        .unwrap();
        assert_eq!(parsed.routing_key, RoutingKey::Service);
        assert_eq!(parsed.resolver.dns.unwrap().port, 4317);
        // TLS settings of the backends are checked (a CA file that does not exist).
        let mut bad_ca = config(vec!["b1".into()]);
        bad_ca.protocol.otlp.tls.insecure = false;
        bad_ca.protocol.otlp.tls.ca_file = Some("/nonexistent".into());
        let e = check(&bad_ca).unwrap_err();
        assert!(e.starts_with("protocol.otlp.tls.ca_file"), "{e}");
    }
}
