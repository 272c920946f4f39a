//! The running collector: a checked [`Document`] turned into receivers, pipelines, exporters,
//! connectors and extensions, started in dependency order and stopped in reverse, so that
//! nothing a receiver acknowledged is dropped on the way out.
//!
//! Start order: storage extensions, exporters and connectors, each pipeline's processors
//! (last to first), receivers (which fan out to every pipeline that lists them), then the
//! servers (health check, own metrics, zpages, prometheus exporters). Stop order: receivers
//! drain (each in-flight request waits for its spans to be exported), processors flush,
//! tail samplers keep undecided traces in storage, exporters stop their queues, storage is
//! flushed.
//!
//! A pipeline's `memory_limiter` is applied where it is cheapest: at the receivers, before a
//! request's body is read (see [`crate::processor::memory_limiter`]).

pub mod config;
pub mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use figment::value::Value;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ComponentId, ConfigError, ConfigErrors, Document, Host, NoHost};
use config::{
    ConnectorConfig, ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig, Signal,
};

use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;
use crate::processor::batch::BatchProcessor;
use crate::processor::memory_limiter::{MemoryLimiter, ReleaseMemory};
use crate::processor::tail_sampling::{self, TailSampling};
use crate::processor::{self as proc, SpanProcessor, Transform};
use crate::storage::Storage;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// What a host builds itself: its custom exporter types.
pub trait HostBuild: Host + Send + Sync {
    fn build_exporter(&self, id: &ComponentId, value: &Value) -> Result<Arc<dyn Consumer>, String> {
        let _ = value;
        Err(format!(
            "exporter type {} is not provided by this host",
            id.ty
        ))
    }

    /// Whether the host serves `prometheus` exporter `id` itself (the all-in-one: on the query
    /// API's `/metrics`) rather than the service binding its endpoint; the registries it
    /// serves come from [`Service::hosted_registries`].
    fn serves_prometheus(&self, doc: &Document, id: &ComponentId) -> bool {
        let _ = (doc, id);
        false
    }
}

impl HostBuild for NoHost {}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{component}: {message}")]
    Build { component: String, message: String },
    #[error("{component}: cannot listen on {endpoint}: {error}")]
    Bind {
        component: String,
        endpoint: String,
        error: std::io::Error,
    },
    #[error("extension {component}: cannot open storage in {directory}: {error}")]
    Storage {
        component: String,
        directory: String,
        error: sled::Error,
    },
}

fn build_err(component: impl std::fmt::Display, message: impl Into<String>) -> StartError {
    StartError::Build {
        component: component.to_string(),
        message: message.into(),
    }
}

/// Options of the process around the collector.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Gives freed memory back to the OS before the memory limiter refuses (mimalloc's
    /// collect, from the binary).
    pub release_memory: Option<ReleaseMemory>,
    /// Print `<what> listening on <addr>` lines on stdout (the CLI and its tests read them).
    pub print_addresses: bool,
}

/// Sends each batch to every consumer; done when all are done.
struct FanOut {
    next: Vec<Arc<dyn Consumer>>,
}

impl Consumer for FanOut {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            match self.next.as_slice() {
                [one] => one.consume(batch).await,
                many => {
                    let spans = batch.span_count as u64;
                    let results =
                        futures::future::join_all(many.iter().map(|c| c.consume(batch.clone())))
                            .await;
                    // Every consumer got the same spans: one refused by several counts once.
                    let mut outcome = ExportOutcome::default();
                    for r in results {
                        outcome.merge_same(&r?);
                    }
                    outcome.rejected_spans = outcome.rejected_spans.min(spans);
                    Ok(outcome)
                }
            }
        })
    }
}

/// The pipelines' graph, for `/debug/pipelinez`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineInfo {
    pub id: String,
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

/// A running exporter's handle for health and shutdown.
pub(crate) struct ExporterHandle {
    pub id: ComponentId,
    pub consumer: Arc<dyn Consumer>,
    pub shutdown: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>,
    pub health: Option<telemetry::HealthFn>,
}

/// A started collector.
pub struct Service {
    receivers_stop: watch::Sender<bool>,
    receiver_tasks: Vec<(String, JoinHandle<Result<(), String>>)>,
    servers_stop: watch::Sender<bool>,
    server_tasks: Vec<JoinHandle<()>>,
    tail_samplers: Vec<Arc<TailSampling>>,
    exporters: Vec<ExporterHandle>,
    storages: Vec<(ComponentId, Storage)>,
    heads: Vec<Arc<dyn Consumer>>,
    state: Arc<telemetry::State>,
    registry: Arc<Registry>,
    hosted_registries: Vec<Arc<Registry>>,
    /// Where each server listens, e.g. `("otlp-grpc", 127.0.0.1:4317)`.
    pub addresses: Vec<(String, SocketAddr)>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Total memory available to the process, in MiB (cgroup limit, else the machine's).
fn total_memory_mib() -> u64 {
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(b) = s.trim().parse::<u64>() {
            return b / (1024 * 1024);
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/meminfo") {
        for line in s.lines() {
            if let Some(rest) = line.strip_prefix("MemTotal:") {
                if let Some(kb) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    return kb / 1024;
                }
            }
        }
    }
    0
}

/// Resolves `host:port` (`localhost` -> 127.0.0.1) for binding.
fn bind_addr(endpoint: &str) -> String {
    let e = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    match e.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None if e.starts_with(':') => format!("0.0.0.0{e}"),
        None => e.to_string(),
    }
}

async fn bind(component: &str, endpoint: &str) -> Result<TcpListener, StartError> {
    let addr = bind_addr(endpoint);
    TcpListener::bind(&addr)
        .await
        .map_err(|error| StartError::Bind {
            component: component.to_string(),
            endpoint: endpoint.to_string(),
            error,
        })
}

impl Service {
    /// Builds and starts everything `doc` describes. Must run inside a tokio runtime.
    /// `registry` receives the collector's own metrics (served on `service.telemetry`).
    pub async fn start(
        doc: &Document,
        host: &dyn HostBuild,
        mut registry: Registry,
        options: StartOptions,
    ) -> Result<Service, StartError> {
        let metrics = CollectorMetrics::register(&mut registry);
        let mut addresses = Vec::new();
        let mut note = |what: String, addr: SocketAddr, print: bool| {
            if print {
                println!("{what} listening on {addr}");
            }
            tracing::info!(component = %what, %addr, "listening");
            addresses.push((what, addr));
        };

        // Storage extensions first: exporters and tail sampling keep their data there.
        let mut storages: Vec<(ComponentId, Storage)> = Vec::new();
        for (id, ext) in &doc.extensions {
            if let ExtensionConfig::FileStorage(c) = ext {
                if let Err(error) = std::fs::create_dir_all(&c.directory) {
                    return Err(StartError::Bind {
                        component: format!("extension {id}"),
                        endpoint: c.directory.display().to_string(),
                        error,
                    });
                }
                let s = Storage::open(&c.directory).map_err(|error| StartError::Storage {
                    component: id.to_string(),
                    directory: c.directory.display().to_string(),
                    error,
                })?;
                storages.push((id.clone(), s));
            }
        }
        let storage_for = |owner: &str,
                           storage: Option<&str>,
                           tree: &str|
         -> Result<Option<sled::Tree>, StartError> {
            let Some(sid) = storage else { return Ok(None) };
            let sid = ComponentId::parse(sid).map_err(|m| build_err(owner, m))?;
            let Some((_, s)) = storages.iter().find(|(i, _)| *i == sid) else {
                return Err(build_err(
                    owner,
                    format!(
                        "storage {sid} is not a file_storage extension defined under `extensions`"
                    ),
                ));
            };
            s.tree(tree)
                .map(Some)
                .map_err(|e| build_err(owner, format!("storage {sid}: {e}")))
        };

        // Exporters, once each, shared by the pipelines that list them.
        let used_exporters: std::collections::BTreeSet<&ComponentId> = doc
            .pipelines
            .iter()
            .filter(|p| p.id.signal == Signal::Traces)
            .flat_map(|p| p.exporters.iter())
            .filter(|id| doc.exporters.contains_key(*id))
            .collect();
        let mut exporters: Vec<ExporterHandle> = Vec::new();
        for id in used_exporters {
            let name = id.to_string();
            let owner = format!("exporter {name}");
            let handle = match &doc.exporters[id] {
                ExporterConfig::Custom(v) => ExporterHandle {
                    id: id.clone(),
                    consumer: host
                        .build_exporter(id, v)
                        .map_err(|m| build_err(&owner, m))?,
                    shutdown: None,
                    health: None,
                },
                ExporterConfig::Otlp(c) => {
                    let tree = storage_for(
                        &owner,
                        c.sending_queue.storage.as_deref(),
                        &format!("exporter/{name}"),
                    )?;
                    let e = crate::exporter::otlp::build(&name, c, tree, &metrics)
                        .map_err(|m| build_err(&owner, m))?;
                    exporter_handle(id, e)
                }
                ExporterConfig::OtlpHttp(c) => {
                    let tree = storage_for(
                        &owner,
                        c.sending_queue.storage.as_deref(),
                        &format!("exporter/{name}"),
                    )?;
                    let e = crate::exporter::otlphttp::build(&name, c, tree, &metrics)
                        .map_err(|m| build_err(&owner, m))?;
                    exporter_handle(id, e)
                }
                ExporterConfig::LoadBalancing(c) => {
                    let storage = match c.protocol.otlp.sending_queue.storage.as_deref() {
                        Some(sid) => {
                            let sid = ComponentId::parse(sid).map_err(|m| build_err(&owner, m))?;
                            Some(
                                storages
                                    .iter()
                                    .find(|(i, _)| *i == sid)
                                    .map(|(_, s)| s.clone())
                                    .ok_or_else(|| build_err(&owner, format!("storage {sid} is not a file_storage extension defined under `extensions`")))?,
                            )
                        }
                        None => None,
                    };
                    let e = crate::exporter::loadbalancing::build(&name, c, storage, &metrics)
                        .map_err(|m| build_err(&owner, m))?;
                    exporter_handle(id, e)
                }
                ExporterConfig::Debug(c) => ExporterHandle {
                    id: id.clone(),
                    consumer: crate::exporter::debug::build(&name, c)
                        .map_err(|m| build_err(&owner, m))?,
                    shutdown: None,
                    health: None,
                },
                ExporterConfig::Prometheus(_) => continue,
            };
            exporters.push(handle);
        }

        // Connectors: each with its own registry, served by the prometheus exporters of the
        // metrics pipelines it feeds.
        let mut connectors: BTreeMap<ComponentId, (Arc<dyn Consumer>, Arc<Registry>)> =
            BTreeMap::new();
        for (id, c) in &doc.connectors {
            let name = id.to_string();
            let mut reg = Registry::default();
            let consumer = match c {
                ConnectorConfig::SpanMetrics(c) => {
                    crate::connector::spanmetrics::build(&name, c, &mut reg)
                }
                ConnectorConfig::ServiceGraph(c) => {
                    crate::connector::servicegraph::build(&name, c, &mut reg)
                }
            }
            .map_err(|m| build_err(format!("connector {name}"), m))?;
            connectors.insert(id.clone(), (consumer, Arc::new(reg)));
        }

        // Pipelines, each processor built anew per pipeline (as the reference does).
        let mut tail_samplers = Vec::new();
        let mut heads: BTreeMap<String, Arc<dyn Consumer>> = BTreeMap::new();
        let mut limiters: BTreeMap<String, MemoryLimiter> = BTreeMap::new();
        let mut infos = Vec::new();
        let total_mib = total_memory_mib();
        for p in doc
            .pipelines
            .iter()
            .filter(|p| p.id.signal == Signal::Traces)
        {
            let pid = p.id.to_string();
            let mut outs: Vec<Arc<dyn Consumer>> = Vec::new();
            for e in &p.exporters {
                if let Some(h) = exporters.iter().find(|h| h.id == *e) {
                    outs.push(h.consumer.clone());
                } else if let Some((c, _)) = connectors.get(e) {
                    outs.push(c.clone());
                }
            }
            let mut next: Arc<dyn Consumer> = if outs.len() == 1 {
                outs.remove(0)
            } else {
                Arc::new(FanOut { next: outs })
            };
            for pid_proc in p.processors.iter().rev() {
                let name = pid_proc.to_string();
                let owner = format!("pipeline {pid}: processor {name}");
                next = match &doc.processors[pid_proc] {
                    ProcessorConfig::MemoryLimiter(c) => {
                        let limiter = MemoryLimiter::with_release(
                            &c.resolved(total_mib),
                            metrics.clone(),
                            options.release_memory.clone(),
                        );
                        limiters.insert(pid.clone(), limiter);
                        next
                    }
                    ProcessorConfig::Batch(c) => {
                        Arc::new(BatchProcessor::new(c.clone(), next, metrics.clone()))
                    }
                    ProcessorConfig::TailSampling(c) => {
                        let tree = storage_for(
                            &owner,
                            c.storage.as_deref(),
                            &format!("processor/{name}/{pid}"),
                        )?;
                        let ts = Arc::new(
                            tail_sampling::build(&name, c, next, tree, &metrics)
                                .map_err(|m| build_err(&owner, m))?,
                        );
                        tail_samplers.push(ts.clone());
                        ts
                    }
                    other => {
                        let sp = span_processor(&name, other, &metrics)
                            .map_err(|m| build_err(&owner, m))?;
                        Arc::new(Transform::new(sp, next))
                    }
                };
            }
            heads.insert(pid.clone(), next);
            infos.push(PipelineInfo {
                id: pid,
                receivers: p.receivers.iter().map(|r| r.to_string()).collect(),
                processors: p.processors.iter().map(|r| r.to_string()).collect(),
                exporters: p.exporters.iter().map(|r| r.to_string()).collect(),
            });
        }
        for p in doc
            .pipelines
            .iter()
            .filter(|p| p.id.signal == Signal::Metrics)
        {
            infos.push(PipelineInfo {
                id: p.id.to_string(),
                receivers: p.receivers.iter().map(|r| r.to_string()).collect(),
                processors: Vec::new(),
                exporters: p.exporters.iter().map(|r| r.to_string()).collect(),
            });
        }

        let state = Arc::new(telemetry::State::new(infos, doc));
        let (receivers_stop, receivers_rx) = watch::channel(false);
        let (servers_stop, servers_rx) = watch::channel(false);

        // Receivers: each feeds every traces pipeline that lists it.
        let mut receiver_tasks = Vec::new();
        for (id, rc) in &doc.receivers {
            let pipes: Vec<&config::Pipeline> = doc
                .pipelines
                .iter()
                .filter(|p| p.id.signal == Signal::Traces && p.receivers.contains(id))
                .collect();
            if pipes.is_empty() {
                continue;
            }
            let targets: Vec<Arc<dyn Consumer>> = pipes
                .iter()
                .map(|p| heads[&p.id.to_string()].clone())
                .collect();
            let head: Arc<dyn Consumer> = if targets.len() == 1 {
                targets[0].clone()
            } else {
                Arc::new(FanOut { next: targets })
            };
            let limiter = pipes
                .iter()
                .find_map(|p| limiters.get(&p.id.to_string()).cloned())
                .unwrap_or_else(|| MemoryLimiter::new(&Default::default(), metrics.clone()));
            let ReceiverConfig::Otlp(c) = rc;
            let label = |proto: &str| {
                if id.name.is_none() {
                    format!("otlp-{proto}")
                } else {
                    format!("{id}-{proto}")
                }
            };
            if let Some(g) = &c.protocols.grpc {
                let tls = g
                    .tls
                    .as_ref()
                    .map(|t| crate::tls::server_config(t, &[b"h2"]))
                    .transpose()
                    .map_err(|m| {
                        build_err(format!("receiver {id}"), format!("protocols.grpc.{m}"))
                    })?;
                let listener = bind(&format!("receiver {id} (grpc)"), &g.endpoint).await?;
                if let Ok(a) = listener.local_addr() {
                    note(label("grpc"), a, options.print_addresses);
                }
                let (head, limiter, metrics) = (head.clone(), limiter.clone(), metrics.clone());
                let name = id.to_string();
                let max = g.max_recv_msg_size_mib * 1024 * 1024;
                let stop = stopped(receivers_rx.clone());
                receiver_tasks.push((
                    label("grpc"),
                    tokio::spawn(async move {
                        crate::receiver::grpc::serve_with_tls(
                            &name, listener, head, limiter, metrics, max, tls, stop,
                        )
                        .await
                        .map_err(|e| e.to_string())
                    }),
                ));
            }
            if let Some(h) = &c.protocols.http {
                let tls = h
                    .tls
                    .as_ref()
                    .map(|t| crate::tls::server_config(t, &[b"h2", b"http/1.1"]))
                    .transpose()
                    .map_err(|m| {
                        build_err(format!("receiver {id}"), format!("protocols.http.{m}"))
                    })?;
                let listener = bind(&format!("receiver {id} (http)"), &h.endpoint).await?;
                if let Ok(a) = listener.local_addr() {
                    note(label("http"), a, options.print_addresses);
                }
                let router = crate::receiver::http::router_at(
                    &id.to_string(),
                    &h.traces_url_path,
                    head.clone(),
                    limiter.clone(),
                    metrics.clone(),
                    h.max_request_body_size,
                );
                let stop = stopped(receivers_rx.clone());
                receiver_tasks.push((
                    label("http"),
                    tokio::spawn(async move {
                        crate::receiver::http::serve_with_tls(listener, router, tls, stop)
                            .await
                            .map_err(|e| e.to_string())
                    }),
                ));
            }
        }

        // Servers: own metrics, health check, zpages, prometheus exporters.
        let registry = Arc::new(registry);
        let mut server_tasks = Vec::new();
        if let Some(addr) = doc.telemetry.metrics_address() {
            let listener = bind("service.telemetry.metrics", &addr).await?;
            if let Ok(a) = listener.local_addr() {
                note("metrics".into(), a, options.print_addresses);
            }
            let router = telemetry::metrics_router(registry.clone(), state.clone());
            server_tasks.push(telemetry::spawn_server(
                listener,
                router,
                stopped(servers_rx.clone()),
            ));
        }
        for (id, ext) in &doc.extensions {
            if !doc.service_extensions.contains(id) {
                continue;
            }
            match ext {
                ExtensionConfig::HealthCheck(c) => {
                    let listener = bind(&format!("extension {id}"), &c.endpoint).await?;
                    if let Ok(a) = listener.local_addr() {
                        note("health-check".into(), a, options.print_addresses);
                    }
                    let router = telemetry::health_router(&c.path, state.clone());
                    server_tasks.push(telemetry::spawn_server(
                        listener,
                        router,
                        stopped(servers_rx.clone()),
                    ));
                }
                ExtensionConfig::ZPages(c) => {
                    let listener = bind(&format!("extension {id}"), &c.endpoint).await?;
                    if let Ok(a) = listener.local_addr() {
                        note("zpages".into(), a, options.print_addresses);
                    }
                    let router = telemetry::zpages_router(state.clone());
                    server_tasks.push(telemetry::spawn_server(
                        listener,
                        router,
                        stopped(servers_rx.clone()),
                    ));
                }
                ExtensionConfig::FileStorage(_) | ExtensionConfig::Custom(_) => {}
            }
        }
        let mut hosted_registries: Vec<Arc<Registry>> = Vec::new();
        for (id, e) in &doc.exporters {
            let ExporterConfig::Prometheus(c) = e else {
                continue;
            };
            let regs: Vec<Arc<Registry>> = doc
                .pipelines
                .iter()
                .filter(|p| p.exporters.contains(id))
                .flat_map(|p| p.receivers.iter())
                .filter_map(|r| connectors.get(r).map(|(_, reg)| reg.clone()))
                .collect();
            if regs.is_empty() {
                continue;
            }
            if host.serves_prometheus(doc, id) {
                tracing::info!(exporter = %id, registries = regs.len(), "prometheus exporter served by the host");
                for r in regs {
                    if !hosted_registries.iter().any(|h| Arc::ptr_eq(h, &r)) {
                        hosted_registries.push(r);
                    }
                }
                continue;
            }
            let listener = bind(&format!("exporter {id}"), &c.endpoint).await?;
            if let Ok(a) = listener.local_addr() {
                note(format!("{id}"), a, options.print_addresses);
            }
            let router = telemetry::prometheus_router(regs);
            server_tasks.push(telemetry::spawn_server(
                listener,
                router,
                stopped(servers_rx.clone()),
            ));
        }
        state.set_exporter_health(
            exporters
                .iter()
                .filter_map(|h| h.health.clone().map(|f| (h.id.to_string(), f)))
                .collect(),
        );
        state.set_ready(true);
        Ok(Service {
            receivers_stop,
            receiver_tasks,
            servers_stop,
            server_tasks,
            tail_samplers,
            exporters,
            storages,
            heads: heads.into_values().collect(),
            state,
            registry,
            hosted_registries,
            addresses,
        })
    }

    /// The registries of the connectors feeding the `prometheus` exporters the host serves
    /// itself ([`HostBuild::serves_prometheus`]), each once.
    pub fn hosted_registries(&self) -> Vec<Arc<Registry>> {
        self.hosted_registries.clone()
    }

    /// The registry holding the collector's own metrics (to serve elsewhere too).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The address a server listens on, by its label (`otlp-grpc`, `health-check`, ...).
    pub fn address(&self, label: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, a)| *a)
    }

    /// Health of the exporters that report it (`Err` names the failing ones).
    pub fn health(&self) -> Result<(), String> {
        self.state.exporters_health()
    }

    /// Stops in order, losing nothing acknowledged: receivers drain, processors flush, tail
    /// samplers and queues keep what they hold in storage, storage is flushed.
    pub async fn shutdown(self) {
        self.state.set_ready(false);
        let _ = self.receivers_stop.send(true);
        for (label, task) in self.receiver_tasks {
            match task.await {
                Ok(Err(e)) => tracing::error!(receiver = %label, error = %e, "receiver failed"),
                Err(e) => tracing::error!(receiver = %label, error = %e, "receiver task failed"),
                Ok(Ok(())) => {}
            }
        }
        drop(self.heads);
        for ts in &self.tail_samplers {
            ts.shutdown().await;
        }
        for h in self.exporters {
            if let Some(f) = h.shutdown {
                f().await;
            }
        }
        for (id, s) in &self.storages {
            if let Err(e) = s.flush().await {
                tracing::error!(extension = %id, error = %e, "cannot flush storage");
            }
        }
        let _ = self.servers_stop.send(true);
        for t in self.server_tasks {
            let _ = t.await;
        }
    }
}

fn span_processor(
    name: &str,
    c: &ProcessorConfig,
    metrics: &CollectorMetrics,
) -> Result<Arc<dyn SpanProcessor>, String> {
    match c {
        ProcessorConfig::Attributes(c) => proc::attributes::build(name, c, metrics),
        ProcessorConfig::Resource(c) => proc::resource::build(name, c, metrics),
        ProcessorConfig::Redaction(c) => proc::redaction::build(name, c, metrics),
        ProcessorConfig::Filter(c) => proc::filter::build(name, c, metrics),
        ProcessorConfig::K8sAttributes(c) => proc::k8sattributes::build(name, c, metrics),
        ProcessorConfig::ProbabilisticSampler(c) => {
            proc::probabilistic_sampler::build(name, c, metrics)
        }
        ProcessorConfig::Batch(_)
        | ProcessorConfig::MemoryLimiter(_)
        | ProcessorConfig::TailSampling(_) => Err("not a span processor".into()),
    }
}

/// Checks that every component of `doc` can be built (regexes compile, ranges hold), without
/// starting anything: what `sextant collector validate` runs after loading.
pub fn check_buildable(doc: &Document) -> Result<(), ConfigErrors> {
    let metrics = CollectorMetrics::unregistered();
    let mut errors = Vec::new();
    for (id, c) in &doc.processors {
        let r = match c {
            ProcessorConfig::Batch(_) | ProcessorConfig::MemoryLimiter(_) => Ok(()),
            ProcessorConfig::TailSampling(c) => tail_sampling::check(c),
            other => span_processor(&id.to_string(), other, &metrics).map(|_| ()),
        };
        if let Err(m) = r {
            errors.push(located(doc, &format!("processors.{id}"), &m));
        }
    }
    for (id, ReceiverConfig::Otlp(c)) in &doc.receivers {
        let protocols = [
            (
                "grpc",
                c.protocols.grpc.as_ref().and_then(|g| g.tls.as_ref()),
            ),
            (
                "http",
                c.protocols.http.as_ref().and_then(|h| h.tls.as_ref()),
            ),
        ];
        for (proto, tls) in protocols {
            if let Some(t) = tls {
                if let Err(m) = crate::tls::server_config(t, &[]) {
                    errors.push(located(
                        doc,
                        &format!("receivers.{id}.protocols.{proto}"),
                        &m,
                    ));
                }
            }
        }
    }
    for (id, c) in &doc.connectors {
        let mut reg = Registry::default();
        let r = match c {
            ConnectorConfig::SpanMetrics(c) => {
                crate::connector::spanmetrics::build(&id.to_string(), c, &mut reg).map(|_| ())
            }
            ConnectorConfig::ServiceGraph(c) => {
                crate::connector::servicegraph::build(&id.to_string(), c, &mut reg).map(|_| ())
            }
        };
        if let Err(m) = r {
            errors.push(located(doc, &format!("connectors.{id}"), &m));
        }
    }
    for (id, c) in &doc.exporters {
        let r = match c {
            ExporterConfig::Otlp(c) => crate::exporter::otlp::check(c),
            ExporterConfig::OtlpHttp(c) => crate::exporter::otlphttp::check(c),
            ExporterConfig::LoadBalancing(c) => crate::exporter::loadbalancing::check(c),
            _ => Ok(()),
        };
        if let Err(m) = r {
            errors.push(located(doc, &format!("exporters.{id}"), &m));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

fn located(doc: &Document, base: &str, msg: &str) -> ConfigError {
    let (rel, m) = match msg.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p, m),
        _ => ("", msg),
    };
    ConfigError {
        source_name: doc.source.clone(),
        path: if rel.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{rel}")
        },
        message: m.to_string(),
    }
}

fn exporter_handle<E>(id: &ComponentId, e: Arc<E>) -> ExporterHandle
where
    E: crate::exporter::exporterhelper::Exporter + Consumer,
{
    let for_shutdown = e.clone();
    let for_health = e.clone();
    ExporterHandle {
        id: id.clone(),
        consumer: e,
        shutdown: Some(Box::new(move || {
            Box::pin(async move { for_shutdown.shutdown().await })
        })),
        health: Some(Arc::new(move || for_health.health())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectedTrace;
    use sextant_otlp_proto::proto::{ResourceSpans, ScopeSpans, Span};
    use sextant_otlp_proto::TraceId;

    /// Answers every batch with the same outcome.
    struct Answer(ExportOutcome);

    impl Consumer for Answer {
        fn consume(
            &self,
            _batch: TraceBatch,
        ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
    }

    fn tid(n: u8) -> TraceId {
        TraceId::from_slice(&[n; 16]).unwrap()
    }

    fn refused(traces: &[(u8, u64)], unattributed: u64) -> Arc<dyn Consumer> {
        let rejected_traces: Vec<RejectedTrace> = traces
            .iter()
            .map(|&(t, spans)| RejectedTrace {
                trace_id: tid(t),
                spans,
                reason: format!("trace {t} refused"),
            })
            .collect();
        Arc::new(Answer(ExportOutcome {
            rejected_spans: rejected_traces.iter().map(|t| t.spans).sum::<u64>() + unattributed,
            message: "refused".into(),
            rejected_traces,
        }))
    }

    fn batch(spans: usize) -> TraceBatch {
        TraceBatch::from_decoded(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|_| Span {
                        trace_id: vec![1; 16],
                        span_id: vec![1; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    fn named(o: &ExportOutcome) -> Vec<(TraceId, u64)> {
        o.rejected_traces
            .iter()
            .map(|t| (t.trace_id, t.spans))
            .collect()
    }

    #[tokio::test]
    async fn a_trace_refused_by_two_pipelines_counts_once() {
        // Two pipelines whose stores both refuse trace 1's 5 spans of the same 6.
        let fan = FanOut {
            next: vec![refused(&[(1, 5)], 0), refused(&[(1, 5)], 0)],
        };
        let o = fan.consume(batch(6)).await.unwrap();
        assert_eq!(o.rejected_spans, 5, "{o:?}");
        assert_eq!(named(&o), vec![(tid(1), 5)]);
        assert_eq!(o.rejected_traces[0].reason, "trace 1 refused");

        // Different traces add up; unattributed refusals count as the most of one pipeline.
        let fan = FanOut {
            next: vec![refused(&[(1, 2)], 1), refused(&[(2, 3)], 2)],
        };
        let o = fan.consume(batch(10)).await.unwrap();
        assert_eq!(o.rejected_spans, 7, "{o:?}");
        assert_eq!(named(&o), vec![(tid(1), 2), (tid(2), 3)]);

        // Never more than the batch held.
        let fan = FanOut {
            next: vec![refused(&[(1, 3)], 0), refused(&[], 3)],
        };
        let o = fan.consume(batch(4)).await.unwrap();
        assert_eq!(o.rejected_spans, 4, "{o:?}");
    }
}
