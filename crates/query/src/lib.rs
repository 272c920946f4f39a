//! Sextant's query service: the Tempo HTTP API over a [`TraceReader`].
//!
//! Grafana's Tempo data source can point at it unchanged. Endpoints:
//!
//! | Path | Module |
//! |---|---|
//! | `GET /ready`, `GET /api/echo`, `GET /api/status/buildinfo` | [`status`] |
//! | `GET /metrics` | [`metrics`] |
//! | `GET /api/traces/{id}`, `GET /api/v2/traces/{id}` | [`tempo::traces`] |
//! | `GET /api/search` | [`tempo::search`] |
//! | `GET /api/metrics/query_range`, `GET /api/metrics/query` (TraceQL metrics) | [`tempo::metrics_api`] |
//! | `GET /api/search/tags`, `GET /api/v2/search/tags`, `GET /api/search/tag/{tag}/values`, `GET /api/v2/search/tag/{tag}/values` | [`tempo::tags`] |
//!
//! Errors are answered as `text/plain` bodies naming what is wrong ([`QueryError`]). Store
//! calls block, so they run on tokio's blocking pool.
//!
//! ```no_run
//! # async fn run(reader: std::sync::Arc<dyn sextant_store::TraceReader>) -> std::io::Result<()> {
//! use std::sync::Arc;
//! let registry = Arc::new(prometheus_client::registry::Registry::default());
//! let state = sextant_query::QueryState::new(reader, registry, "0.1.0");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3200").await?;
//! sextant_query::serve(listener, state, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

#![warn(missing_docs)]

pub mod duration;
pub mod error;
pub mod jaeger;
pub mod logfmt;
pub mod metrics;
mod params;
pub mod status;
pub mod tempo;
pub mod traceql;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, MethodRouter};
use axum::Router;
use prometheus_client::registry::Registry;
use sextant_store::TraceReader;

pub use error::QueryError;

use metrics::{QueryMetrics, Tracked};

/// What every handler needs: the store, the metrics registries and the version to report.
///
/// Build it with [`QueryState::new`], which also sets up the query service's own metrics.
#[derive(Clone)]
pub struct QueryState {
    /// The store, read side.
    pub reader: Arc<dyn TraceReader>,
    /// The process-wide registry (other services' metrics), exposed on `/metrics`.
    pub registry: Arc<Registry>,
    /// The version reported by `/api/status/buildinfo`.
    pub version: String,
    /// More registries exposed on `/metrics` after `registry` (the all-in-one: its
    /// connectors' service graph and span metrics).
    pub extra_registries: Vec<Arc<Registry>>,
    /// This service's own registry (request metrics, store figures).
    metrics: Arc<QueryMetrics>,
}

impl fmt::Debug for QueryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryState")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl QueryState {
    /// A state over `reader`. `registry` is the shared registry exposed on `/metrics` next to
    /// this service's own metrics (request counts and latencies per endpoint, and the store's
    /// figures read at every scrape: `sextant_store_spans_written_total`,
    /// `sextant_store_writes_total`, `sextant_store_flushes_total`,
    /// `sextant_store_bytes_on_disk`).
    pub fn new(
        reader: Arc<dyn TraceReader>,
        registry: Arc<Registry>,
        version: impl Into<String>,
    ) -> Self {
        let metrics = Arc::new(QueryMetrics::new(Arc::clone(&reader)));
        Self {
            reader,
            registry,
            version: version.into(),
            extra_registries: Vec::new(),
            metrics,
        }
    }

    /// Also exposes `registries` on `/metrics`, after the shared one.
    pub fn with_registries(mut self, registries: Vec<Arc<Registry>>) -> Self {
        self.extra_registries.extend(registries);
        self
    }
}

/// Counts a route's requests under `endpoint`.
fn tracked(
    state: &QueryState,
    endpoint: &'static str,
    route: MethodRouter<QueryState>,
) -> MethodRouter<QueryState> {
    let tracked = Tracked {
        metrics: Arc::clone(&state.metrics),
        endpoint,
    };
    route.layer(from_fn_with_state(tracked, metrics::track))
}

async fn unknown_path(State(state): State<QueryState>, uri: Uri) -> QueryError {
    state.metrics.record("unknown", 404, 0.0);
    QueryError::UnknownPath(uri.path().to_string())
}

async fn method_not_allowed(method: Method, uri: Uri) -> QueryError {
    QueryError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// The Tempo HTTP API.
pub fn router(state: QueryState) -> Router {
    use tempo::{search, tags, traces};
    let s = &state;
    Router::new()
        .route("/ready", tracked(s, "ready", get(status::ready)))
        .route("/api/echo", tracked(s, "echo", get(status::echo)))
        .route(
            "/api/status/buildinfo",
            tracked(s, "buildinfo", get(status::buildinfo)),
        )
        .route("/metrics", tracked(s, "metrics", get(metrics::metrics)))
        .route(
            "/api/traces/{id}",
            tracked(s, "trace_by_id", get(traces::trace_v1)),
        )
        .route(
            "/api/v2/traces/{id}",
            tracked(s, "trace_by_id_v2", get(traces::trace_v2)),
        )
        .route("/api/search", tracked(s, "search", get(search::search)))
        .route(
            "/api/metrics/query_range",
            tracked(
                s,
                "metrics_query_range",
                get(tempo::metrics_api::query_range),
            ),
        )
        .route(
            "/api/metrics/query",
            tracked(s, "metrics_query", get(tempo::metrics_api::query_instant)),
        )
        .route(
            "/api/search/tags",
            tracked(s, "search_tags", get(tags::tag_names_v1)),
        )
        .route(
            "/api/v2/search/tags",
            tracked(s, "search_tags_v2", get(tags::tag_names_v2)),
        )
        .route(
            "/api/search/tag/{tag}/values",
            tracked(s, "search_tag_values", get(tags::tag_values_v1)),
        )
        .route(
            "/api/v2/search/tag/{tag}/values",
            tracked(s, "search_tag_values_v2", get(tags::tag_values_v2)),
        )
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then lets requests in flight finish.
///
/// # Errors
///
/// An I/O error if serving fails (accept errors on single connections are retried by axum).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: QueryState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "query API listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
