//! `cargo run -p sextant-sdk --example frontend` (port 8080; FRONTEND_ADDR, BACKEND_URL).
//!
//! `curl localhost:8080/checkout` → backend `POST /api/orders` → worker job.
//! Run `sextant all-in-one` first; the trace id is in the response.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use opentelemetry::trace::TraceContextExt;
use sextant_sdk::{ClientSpan, SextantLayer};

#[derive(Clone)]
struct App {
    client: reqwest::Client,
    backend: String,
}

#[tracing::instrument(skip(app))]
async fn place_order(app: &App, item: &str) -> Result<String, reqwest::Error> {
    let url = format!("{}/api/orders", app.backend);
    // A client span under the current context; its headers carry the trace.
    let span = ClientSpan::start(&http::Method::POST, &url);
    let resp = app
        .client
        .post(&url)
        .headers(span.headers())
        .json(&serde_json::json!({ "item": item, "quantity": 1 }))
        .send()
        .await;
    match resp {
        Ok(resp) => {
            span.end(resp.status().as_u16());
            resp.text().await
        }
        Err(e) => {
            span.end_with_error(&e);
            Err(e)
        }
    }
}

async fn checkout(State(app): State<App>) -> String {
    let trace_id = opentelemetry::Context::current()
        .span()
        .span_context()
        .trace_id();
    tracing::info!("checkout started");
    match place_order(&app, "book").await {
        Ok(order) => format!("trace {trace_id:032x}: order {order}\n"),
        Err(e) => format!("trace {trace_id:032x}: backend failed: {e}\n"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _guard = sextant_sdk::Sdk::builder()
        .service_name("frontend")
        .with_logs(true)
        .init()?;

    let app = App {
        client: reqwest::Client::new(),
        backend: std::env::var("BACKEND_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into()),
    };
    let router = Router::new()
        .route("/checkout", get(checkout))
        .with_state(app)
        .layer(SextantLayer::new());
    let addr = std::env::var("FRONTEND_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "frontend listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(()) // `_guard` flushes the last spans here
}
