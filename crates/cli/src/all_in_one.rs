//! `sextant all-in-one`: collector + store + query in one process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use sextant_collector::service::config::Override;
use sextant_collector::service::{Service, StartOptions};
use sextant_store::SledStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, AllInOneHost};

#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct AllInOneArgs {
    /// Config file in the OpenTelemetry Collector's format [default: `sextant config default`]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (`exporters.store.directory`) [default: ./sextant-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address (`receivers.otlp.protocols.grpc.endpoint`) [default: 127.0.0.1:4317]
    #[arg(long)]
    otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP listen address (`receivers.otlp.protocols.http.endpoint`) [default: 127.0.0.1:4318]
    #[arg(long)]
    otlp_http_addr: Option<String>,
    /// Tempo-compatible query API listen address (`extensions.tempo_query.endpoint`) [default: 127.0.0.1:3200]
    #[arg(long)]
    query_addr: Option<String>,
    /// Jaeger-compatible query API listen address (`extensions.jaeger_query.endpoint`) [default: 127.0.0.1:16686]
    #[arg(long)]
    jaeger_addr: Option<String>,
    /// Memory limiter: refuse data while the process RSS is above this minus the spike limit
    /// (`processors.memory_limiter.limit_mib`)
    #[arg(long)]
    memory_limit_mib: Option<u64>,
    /// Memory limiter headroom (`processors.memory_limiter.spike_limit_mib`) [default: 20% of the limit]
    #[arg(long)]
    memory_spike_mib: Option<u64>,
    /// Sets any key of the config: `--set exporters.store.block_retention=72h` (repeatable;
    /// applied after the other flags)
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

/// The `--set KEY=VALUE` flags as config overrides: `200000` a number, `true` a bool, the
/// rest strings (as environment values are).
pub(crate) fn set_overrides(set: &[(String, String)]) -> Vec<Override> {
    set.iter()
        .map(|(key, value)| {
            let path: Vec<&str> = key.split('.').collect();
            let value: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.as_str()));
            Override::new(&path, value)
        })
        .collect()
}

/// Parses one `--set KEY=VALUE` flag.
pub(crate) fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && k.split('.').all(|p| !p.is_empty()) => {
            Ok((k.trim().to_string(), v.to_string()))
        }
        _ => Err(format!(
            "{s:?} is not KEY=VALUE with a dotted key, like exporters.store.block_retention=72h"
        )),
    }
}

impl AllInOneArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut o = self.flag_overrides();
        o.extend(set_overrides(&self.set));
        o
    }

    fn flag_overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        if let Some(v) = &self.data_dir {
            o.push(Override::new(
                &["exporters", "store", "directory"],
                v.display().to_string(),
            ));
        }
        if let Some(v) = &self.otlp_grpc_addr {
            o.push(Override::new(
                &["receivers", "otlp", "protocols", "grpc", "endpoint"],
                v.as_str(),
            ));
        }
        if let Some(v) = &self.otlp_http_addr {
            o.push(Override::new(
                &["receivers", "otlp", "protocols", "http", "endpoint"],
                v.as_str(),
            ));
        }
        if let Some(v) = &self.query_addr {
            o.push(Override::new(
                &["extensions", "tempo_query", "endpoint"],
                v.as_str(),
            ));
        }
        if let Some(v) = &self.jaeger_addr {
            o.push(Override::new(
                &["extensions", "jaeger_query", "endpoint"],
                v.as_str(),
            ));
        }
        if let Some(v) = self.memory_limit_mib {
            o.push(Override::new(
                &["processors", "memory_limiter", "limit_mib"],
                v,
            ));
        }
        if let Some(v) = self.memory_spike_mib {
            o.push(Override::new(
                &["processors", "memory_limiter", "spike_limit_mib"],
                v,
            ));
        }
        o
    }
}

/// Binds a listener and prints `<what> listening on <addr>` (tests and scripts read it).
pub(crate) async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))?;
    let local = listener.local_addr()?;
    println!("{what} listening on {local}");
    tracing::info!(%local, "{what} listening");
    Ok(listener)
}

pub async fn run(args: AllInOneArgs) -> anyhow::Result<()> {
    let host = AllInOneHost::default();
    let doc = config::load_all_in_one(args.config.as_deref(), &args.overrides(), &host)?;
    let store = match config::store_config(&doc)? {
        Some(c) => Some(
            SledStore::open(c.store_config())
                .with_context(|| format!("cannot open the store in {}", c.directory.display()))?,
        ),
        None => None,
    };
    if let Some(s) = &store {
        let _ = host.store.set(Arc::new(s.clone()));
    }
    let queries = config::query_extensions(&doc)?;
    if store.is_none() && !queries.is_empty() {
        anyhow::bail!(
            "invalid configuration: {}: the query extensions ({}) need a `store` exporter",
            doc.source,
            queries
                .iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Strategies files are read before anything starts: a broken one stops the start.
    let mut sampling = Vec::with_capacity(queries.len());
    for (id, c) in &queries {
        let store = match &c.sampling_strategies_file {
            Some(file) => sextant_query::jaeger::sampling::StrategyStore::open(file)
                .with_context(|| format!("extensions.{id}.sampling_strategies_file"))?,
            None => sextant_query::jaeger::sampling::StrategyStore::default(),
        };
        sampling.push(Arc::new(store));
    }

    let service = Service::start(
        &doc,
        &host,
        Registry::default(),
        StartOptions {
            release_memory: Some(Arc::new(release_memory)),
            print_addresses: true,
        },
    )
    .await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut query_tasks = Vec::new();
    if let Some(store) = &store {
        let state = sextant_query::QueryState::new(
            Arc::new(store.clone()),
            service.registry(),
            env!("CARGO_PKG_VERSION"),
        )
        // The service graph (and span metrics) of prometheus exporters without an endpoint.
        .with_registries(service.hosted_registries());
        for ((id, c), strategies) in queries.iter().zip(sampling) {
            let endpoint = &c.endpoint;
            if id.ty == "tempo_query" {
                let listener = bind("query", endpoint).await?;
                let stop = stopped(stop_rx.clone());
                let state = state.clone();
                query_tasks.push(tokio::spawn(async move {
                    sextant_query::serve(listener, state, stop)
                        .await
                        .map_err(|e| e.to_string())
                }));
            } else {
                let listener = bind("jaeger", endpoint).await?;
                let router = sextant_query::jaeger::router_with_sampling(state.clone(), strategies);
                let stop = stopped(stop_rx.clone());
                query_tasks.push(tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stop)
                        .await
                        .map_err(|e| e.to_string())
                }));
            }
        }
    }
    println!("ready");
    tracing::info!(config = %doc.source, "sextant all-in-one ready");

    shutdown_signal().await;
    tracing::info!("shutting down: draining receivers");
    service.shutdown().await;
    let _ = stop_tx.send(true);
    for t in query_tasks {
        if let Ok(Err(e)) = t.await {
            tracing::error!(error = %e, "query server failed");
        }
    }
    if let Some(store) = store {
        store.close().context("flushing the store")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Returns memory that mimalloc holds but no longer uses to the OS.
pub fn release_memory() {
    // SAFETY: `mi_collect` may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
