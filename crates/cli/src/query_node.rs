//! `sextant query --store URL[,URL...]`: the Tempo and Jaeger query APIs over one or more
//! store nodes (`sextant store`), read through their gRPC store API as one store
//! (`sextant_store::remote::MultiReader`: a trace split across nodes is merged; a node that
//! is down makes the calls that need it fail retryably, never a partial answer).

use std::sync::Arc;

use prometheus_client::registry::Registry;
use sextant_store::remote::{MultiReader, RemoteStore};
use sextant_store::TraceReader;
use tokio::sync::watch;

use crate::all_in_one::{bind, shutdown_signal};

/// `sextant query` flags.
#[derive(clap::Args, Debug)]
pub struct QueryNodeArgs {
    /// The store nodes' API URLs, comma-separated (`http://host:9095` or `host:9095`)
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    store: Vec<String>,
    /// Tempo-compatible query API listen address
    #[arg(long, default_value = "127.0.0.1:3200")]
    query_addr: String,
    /// Jaeger-compatible query API listen address
    #[arg(long, default_value = "127.0.0.1:16686")]
    jaeger_addr: String,
}

/// Runs the query node until SIGINT/SIGTERM. A malformed store URL stops the start; a node
/// that is down does not (it is only logged: it may come up later).
pub async fn run(args: QueryNodeArgs) -> anyhow::Result<()> {
    let mut readers: Vec<Arc<dyn TraceReader>> = Vec::with_capacity(args.store.len());
    let mut remotes = Vec::with_capacity(args.store.len());
    for url in args
        .store
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    {
        let remote =
            Arc::new(RemoteStore::new(url).map_err(|e| anyhow::anyhow!("--store {url:?}: {e}"))?);
        remotes.push(Arc::clone(&remote));
        readers.push(remote);
    }
    if readers.is_empty() {
        anyhow::bail!("--store: give at least one store node URL (e.g. http://127.0.0.1:9095)");
    }
    let nodes: Vec<String> = remotes.iter().map(|r| r.url().to_string()).collect();
    // Tell whether each node answers now; one that does not may come up later.
    for remote in remotes {
        let probed = tokio::task::spawn_blocking(move || {
            let url = remote.url().to_string();
            (url, remote.tag_names(None).map(|_| ()))
        })
        .await;
        match probed {
            Ok((url, Ok(()))) => tracing::info!(node = %url, "store node reachable"),
            Ok((url, Err(e))) => {
                tracing::warn!(node = %url, error = %e, "store node not reachable (yet); its calls fail until it is")
            }
            Err(e) => tracing::warn!(error = %e, "probing a store node stopped unexpectedly"),
        }
    }
    let reader: Arc<dyn TraceReader> = Arc::new(MultiReader::new(readers));
    let state = sextant_query::QueryState::new(
        reader,
        Arc::new(Registry::default()),
        env!("CARGO_PKG_VERSION"),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let query_listener = bind("query", &args.query_addr).await?;
    let jaeger_listener = bind("jaeger", &args.jaeger_addr).await?;
    let tempo = {
        let state = state.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            sextant_query::serve(query_listener, state, stop)
                .await
                .map_err(|e| e.to_string())
        })
    };
    let jaeger = {
        let router = sextant_query::jaeger::router(state);
        let stop = stopped(stop_rx);
        tokio::spawn(async move {
            axum::serve(jaeger_listener, router)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| e.to_string())
        })
    };
    println!("ready");
    tracing::info!(stores = %nodes.join(","), "sextant query ready");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in [tempo, jaeger] {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "query server failed"),
            Err(e) => tracing::error!(error = %e, "query server stopped unexpectedly"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}
