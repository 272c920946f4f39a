//! `sextant store`: a store node. The all-in-one's pipeline (OTLP receivers -> memory_limiter
//! -> batch -> the `store` exporter, from the same config format and defaults) without the
//! Tempo/Jaeger query APIs, plus the store's own gRPC API (`sextant.store.v1.StoreReader`) that
//! `sextant query --store URL` reads.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use sextant_collector::service::config::Override;
use sextant_collector::service::{Service, StartOptions};
use sextant_store::SledStore;
use tokio::sync::watch;

use crate::all_in_one::{bind, parse_set, release_memory, set_overrides, shutdown_signal};
use crate::config::{self, AllInOneHost};

/// Where the store API listens unless told otherwise.
pub const DEFAULT_STORE_API_ADDR: &str = "127.0.0.1:9095";

/// `sextant store [flags]`: runs a store node.
#[derive(clap::Args, Debug)]
pub struct StoreNodeArgs {
    /// Config file in the OpenTelemetry Collector's format, as the all-in-one's (its query
    /// extensions are not served) [default: `sextant config default`]
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
    /// Listen address of the store API that `sextant query --store` reads
    #[arg(long, default_value = DEFAULT_STORE_API_ADDR)]
    store_api_addr: String,
    /// Sets any key of the config: `--set exporters.store.block_retention=72h` (repeatable;
    /// applied after the other flags)
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

impl StoreNodeArgs {
    fn overrides(&self) -> Vec<Override> {
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
        o.extend(set_overrides(&self.set));
        o
    }
}

/// Runs the node until SIGINT/SIGTERM: receivers drain first, then the store API stops, then
/// the store is flushed and closed.
pub async fn run(args: StoreNodeArgs) -> anyhow::Result<()> {
    let host = AllInOneHost::default();
    let doc = config::load_all_in_one(args.config.as_deref(), &args.overrides(), &host)?;
    let Some(c) = config::store_config(&doc)? else {
        anyhow::bail!(
            "invalid configuration: {}: sextant store needs a `store` exporter in a pipeline",
            doc.source
        );
    };
    let store = SledStore::open(c.store_config())
        .with_context(|| format!("cannot open the store in {}", c.directory.display()))?;
    let _ = host.store.set(Arc::new(store.clone()));
    let ignored: Vec<String> = config::query_extensions(&doc)?
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    if !ignored.is_empty() {
        tracing::info!(
            extensions = %ignored.join(", "),
            "the query extensions are not served by a store node; run `sextant query --store` for them"
        );
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

    let listener = bind("store api", &args.store_api_addr).await?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let reader: Arc<dyn sextant_store::TraceReader> = Arc::new(store.clone());
    let api = tokio::spawn(async move {
        sextant_store::remote::serve(listener, reader, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    println!("ready");
    tracing::info!(config = %doc.source, store_api = %args.store_api_addr, "sextant store ready");

    shutdown_signal().await;
    tracing::info!("shutting down: draining receivers");
    service.shutdown().await;
    let _ = stop_tx.send(true);
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "store api server failed"),
        Err(e) => tracing::error!(error = %e, "store api server stopped unexpectedly"),
    }
    store.close().context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}
