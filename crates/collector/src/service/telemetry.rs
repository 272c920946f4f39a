//! The collector's own endpoints: Prometheus metrics (`service.telemetry.metrics`, 8888), the
//! `health_check` extension (13133), the `zpages` extension's `/debug/pipelinez` and
//! `/debug/servicez` (55679; also served beside the metrics), and the `prometheus` exporter
//! of metrics pipelines (what connectors compute).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::config::Document;
use super::PipelineInfo;

/// An exporter's health: `Err` with the last error while it cannot deliver.
pub type HealthFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the endpoints show.
pub struct State {
    pipelines: Vec<PipelineInfo>,
    extensions: Vec<String>,
    ready: AtomicBool,
    started: Instant,
    started_wall: SystemTime,
    exporters: Mutex<Vec<(String, HealthFn)>>,
}

impl State {
    pub(crate) fn new(pipelines: Vec<PipelineInfo>, doc: &Document) -> Self {
        Self {
            pipelines,
            extensions: doc
                .service_extensions
                .iter()
                .map(|e| e.to_string())
                .collect(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            exporters: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub(crate) fn set_exporter_health(&self, list: Vec<(String, HealthFn)>) {
        *self.exporters.lock() = list;
    }

    pub(crate) fn exporters_health(&self) -> Result<(), String> {
        let failing: Vec<String> = self
            .exporters
            .lock()
            .iter()
            .filter_map(|(id, f)| f().err().map(|e| format!("exporter {id}: {e}")))
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("; "))
        }
    }
}

pub(crate) fn spawn_server(
    listener: TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "telemetry server failed");
        }
    })
}

/// The registries in one exposition (one `# EOF`), with `extra` text before its end.
fn encode(registries: &[Arc<Registry>], extra: &str) -> Response {
    let mut body = String::new();
    for r in registries {
        let mut one = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut one, r) {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {e}"),
            )
                .into_response();
        }
        body.push_str(one.strip_suffix("# EOF\n").unwrap_or(&one));
    }
    body.push_str(extra);
    body.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `/metrics` (the collector's own, plus process RSS and CPU) and `/debug/pipelinez`.
pub(crate) fn metrics_router(registry: Arc<Registry>, state: Arc<State>) -> Router {
    let own = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                // Process figures, named as the reference's process metrics.
                async move { encode(&[registry], &process_metrics().unwrap_or_default()) }
            }),
        )
        .with_state(());
    own.merge(zpages_router(state))
}

/// `otelcol_process_memory_rss` and `otelcol_process_cpu_seconds` from /proc.
fn process_metrics() -> Option<String> {
    let rss = crate::processor::memory_limiter::process_rss()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the command.
    let cpu = (ticks(11)? + ticks(12)?) / clock_ticks();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP otelcol_process_memory_rss Total physical memory (resident set size) [bytes]."
    );
    let _ = writeln!(out, "# TYPE otelcol_process_memory_rss gauge");
    let _ = writeln!(out, "otelcol_process_memory_rss {rss}");
    let _ = writeln!(
        out,
        "# HELP otelcol_process_cpu_seconds Total CPU user and system time in seconds."
    );
    let _ = writeln!(out, "# TYPE otelcol_process_cpu_seconds counter");
    let _ = writeln!(out, "otelcol_process_cpu_seconds_total {cpu}");
    Some(out)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The `health_check` extension: 200 while the collector runs, 503 while it starts or stops.
pub(crate) fn health_router(path: &str, state: Arc<State>) -> Router {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Router::new().route(&path, get(health)).with_state(state)
}

async fn health(AxState(state): AxState<Arc<State>>) -> Response {
    let up_since = humantime::format_rfc3339_seconds(state.started_wall).to_string();
    let exporters: serde_json::Map<String, serde_json::Value> = state
        .exporters
        .lock()
        .iter()
        .map(|(id, f)| {
            (
                id.clone(),
                match f() {
                    Ok(()) => serde_json::Value::from("ok"),
                    Err(e) => serde_json::Value::from(e),
                },
            )
        })
        .collect();
    if state.ready.load(Ordering::Acquire) {
        let body = serde_json::json!({
            "status": "Server available",
            "upSince": up_since,
            "uptime": format!("{:.3}s", state.started.elapsed().as_secs_f64()),
            "exporters": exporters,
        });
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let body = serde_json::json!({
            "status": "Server not available",
            "upSince": "0001-01-01T00:00:00Z",
            "uptime": "",
        });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

#[derive(serde::Deserialize)]
struct Fmt {
    format: Option<String>,
}

/// `/debug/pipelinez` (HTML, or JSON with `?format=json`) and `/debug/servicez`.
pub(crate) fn zpages_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/debug/pipelinez", get(pipelinez))
        .route("/debug/servicez", get(servicez))
        .route("/debug/extensionz", get(extensionz))
        .with_state(state)
}

async fn pipelinez(AxState(state): AxState<Arc<State>>, Query(f): Query<Fmt>) -> Response {
    if f.format.as_deref() == Some("json") {
        return axum::Json(&state.pipelines).into_response();
    }
    let mut html = String::from(
        "<!doctype html><html><head><title>Pipelines</title></head><body><h1>Pipelines</h1>\
         <table border=\"1\"><tr><th>Pipeline</th><th>Receivers</th><th>Processors</th><th>Exporters</th></tr>",
    );
    for p in &state.pipelines {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.id),
            escape(&p.receivers.join(", ")),
            escape(&p.processors.join(" &rarr; ")).replace("&amp;rarr;", "&rarr;"),
            escape(&p.exporters.join(", ")),
        );
    }
    html.push_str("</table></body></html>");
    Html(html).into_response()
}

async fn servicez(AxState(state): AxState<Arc<State>>) -> Response {
    let mut html = String::from(
        "<!doctype html><html><head><title>Service</title></head><body><h1>Service</h1><ul>",
    );
    let _ = write!(
        html,
        "<li>Sextant collector {}</li><li>uptime {:.0}s</li><li>{} pipelines</li><li>extensions: {}</li>",
        env!("CARGO_PKG_VERSION"),
        state.started.elapsed().as_secs_f64(),
        state.pipelines.len(),
        escape(&state.extensions.join(", ")),
    );
    html.push_str("</ul><p><a href=\"/debug/pipelinez\">pipelines</a></p></body></html>");
    Html(html).into_response()
}

async fn extensionz(AxState(state): AxState<Arc<State>>) -> Response {
    axum::Json(&state.extensions).into_response()
}

/// The `prometheus` exporter: serves the connectors' registries.
pub(crate) fn prometheus_router(registries: Vec<Arc<Registry>>) -> Router {
    let registries = Arc::new(registries);
    Router::new().route(
        "/metrics",
        get(move || {
            let r = registries.clone();
            async move { encode(&r, "") }
        }),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
