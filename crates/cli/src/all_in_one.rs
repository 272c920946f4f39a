//! `sextant all-in-one`: collector + store + query in one process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use figment::providers::Serialized;
use figment::Figment;
use prometheus_client::registry::Registry;
use sextant_collector::{CollectorMetrics, Pipeline};
use sextant_store::{SledStore, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config;
use crate::store_exporter::StoreExporter;

#[derive(clap::Args, Debug)]
pub struct AllInOneArgs {
    /// YAML settings file (see `AllInOneConfig`); flags and SEXTANT_* variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./sextant-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317]
    #[arg(long)]
    otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318]
    #[arg(long)]
    otlp_http_addr: Option<String>,
    /// Tempo-compatible query API listen address [default: 127.0.0.1:3200]
    #[arg(long)]
    query_addr: Option<String>,
    /// Jaeger-compatible query API listen address [default: 127.0.0.1:16686]
    #[arg(long)]
    jaeger_addr: Option<String>,
    /// Memory limiter: refuse data while the process RSS is above this minus the spike limit
    #[arg(long)]
    memory_limit_mib: Option<u64>,
    /// Memory limiter headroom [default: 20% of the limit]
    #[arg(long)]
    memory_spike_mib: Option<u64>,
}

impl AllInOneArgs {
    fn overrides(&self) -> Figment {
        let mut f = Figment::new();
        if let Some(v) = &self.data_dir {
            f = f.merge(Serialized::default("data_dir", v));
        }
        if let Some(v) = &self.otlp_grpc_addr {
            f = f.merge(Serialized::default("otlp_grpc_addr", v));
        }
        if let Some(v) = &self.otlp_http_addr {
            f = f.merge(Serialized::default("otlp_http_addr", v));
        }
        if let Some(v) = &self.query_addr {
            f = f.merge(Serialized::default("query_addr", v));
        }
        if let Some(v) = &self.jaeger_addr {
            f = f.merge(Serialized::default("jaeger_addr", v));
        }
        if let Some(v) = self.memory_limit_mib {
            f = f.merge(Serialized::default("collector.memory_limiter.limit_mib", v));
        }
        if let Some(v) = self.memory_spike_mib {
            f = f.merge(Serialized::default(
                "collector.memory_limiter.spike_limit_mib",
                v,
            ));
        }
        f
    }
}

async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))?;
    let local = listener.local_addr()?;
    println!("{what} listening on {local}");
    tracing::info!(%local, "{what} listening");
    Ok(listener)
}

pub async fn run(args: AllInOneArgs) -> anyhow::Result<()> {
    let cfg = config::load(args.config.as_deref(), args.overrides())?;
    let store = SledStore::open(StoreConfig {
        path: cfg.data_dir.clone(),
        cache_capacity: cfg.store.cache_mib * 1024 * 1024,
        compression_level: cfg.store.compression_level,
    })
    .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;

    let mut registry = Registry::default();
    let metrics = CollectorMetrics::register(&mut registry);
    let pipeline = Pipeline::build(
        cfg.collector.clone(),
        Arc::new(StoreExporter {
            writer: Arc::new(store.clone()),
        }),
        metrics,
        Some(Arc::new(release_memory)),
    );

    let grpc = bind("otlp-grpc", &cfg.otlp_grpc_addr).await?;
    let http = bind("otlp-http", &cfg.otlp_http_addr).await?;
    let query = bind("query", &cfg.query_addr).await?;
    let jaeger = bind("jaeger", &cfg.jaeger_addr).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Receivers stop first; their in-flight requests wait for their spans to be durable.
    let receivers_stop = watch::channel(false);
    let grpc_task = {
        let p = pipeline.clone();
        let rx = receivers_stop.1.clone();
        tokio::spawn(async move { p.serve_grpc(grpc, stopped(rx)).await })
    };
    let http_task = {
        let p = pipeline.clone();
        let rx = receivers_stop.1.clone();
        tokio::spawn(async move { p.serve_http(http, stopped(rx)).await })
    };
    let state = sextant_query::QueryState::new(
        Arc::new(store.clone()),
        Arc::new(registry),
        env!("CARGO_PKG_VERSION"),
    );
    let jaeger_task = {
        let router = sextant_query::jaeger::router(state.clone());
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            axum::serve(jaeger, router)
                .with_graceful_shutdown(stop)
                .await
        })
    };
    let query_task = tokio::spawn(sextant_query::serve(query, state, stopped(stop_rx.clone())));
    println!("ready");
    tracing::info!(data_dir = %cfg.data_dir.display(), "sextant all-in-one ready");

    shutdown_signal().await;
    tracing::info!("shutting down: draining receivers");
    let _ = receivers_stop.0.send(true);
    if let Ok(Err(e)) = grpc_task.await {
        tracing::error!(error = %e, "otlp-grpc server failed");
    }
    if let Ok(Err(e)) = http_task.await {
        tracing::error!(error = %e, "otlp-http server failed");
    }
    drop(pipeline);
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = query_task.await {
        tracing::error!(error = %e, "query server failed");
    }
    if let Ok(Err(e)) = jaeger_task.await {
        tracing::error!(error = %e, "jaeger query server failed");
    }
    store.close().context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// Returns memory that mimalloc holds but no longer uses to the OS.
fn release_memory() {
    // SAFETY: `mi_collect` may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

async fn shutdown_signal() {
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
