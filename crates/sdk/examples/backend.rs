//! `cargo run -p sextant-sdk --example backend` (port 8081; BACKEND_ADDR, WORKER_URL).
//!
//! `POST /api/orders` stores an order (a `#[tracing::instrument]` span) and
//! enqueues a `send_receipt` job on the worker, with the trace context in the
//! job's `headers` map, the way Celery carries it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{global, Context, KeyValue};
use serde_json::{json, Value};
use sextant_sdk::{ClientSpan, SextantLayer};

#[derive(Clone)]
struct App {
    client: reqwest::Client,
    worker: String,
    next_id: Arc<AtomicU64>,
}

#[tracing::instrument(skip(app))]
async fn store_order(app: &App, item: &str) -> u64 {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await; // "the database"
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    tracing::info!(order_id = id, "order stored");
    id
}

/// Publish a job: a producer span whose context travels in the job headers.
async fn enqueue_receipt(app: &App, order_id: u64) {
    let tracer = global::tracer("backend");
    let producer = tracer
        .span_builder("send_receipt publish")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "sextant-example-queue"),
            KeyValue::new("messaging.destination.name", "receipts"),
        ])
        .start(&tracer);
    let cx = Context::current_with_span(producer);

    let mut headers = HashMap::new();
    sextant_sdk::inject_into_map(&cx, &mut headers);
    let job =
        json!({ "task": "send_receipt", "args": { "order_id": order_id }, "headers": headers });

    let url = format!("{}/jobs", app.worker);
    let span = ClientSpan::start_with_parent(&cx, &http::Method::POST, &url);
    match app
        .client
        .post(&url)
        .headers(span.headers())
        .json(&job)
        .send()
        .await
    {
        Ok(resp) => span.end(resp.status().as_u16()),
        Err(e) => {
            tracing::warn!(error = %e, "worker unreachable");
            span.end_with_error(&e)
        }
    }
    cx.span().end();
}

async fn create_order(State(app): State<App>, Json(body): Json<Value>) -> Json<Value> {
    let item = body["item"].as_str().unwrap_or("unknown").to_string();
    let id = store_order(&app, &item).await;
    enqueue_receipt(&app, id).await;
    Json(json!({ "order_id": id, "item": item }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _guard = sextant_sdk::Sdk::builder()
        .service_name("backend")
        .always_sample("POST /api/orders")
        .with_logs(true)
        .init()?;

    let app = App {
        client: reqwest::Client::new(),
        worker: std::env::var("WORKER_URL").unwrap_or_else(|_| "http://127.0.0.1:8082".into()),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let router = Router::new()
        .route("/api/orders", post(create_order))
        .with_state(app)
        .layer(SextantLayer::new());
    let addr = std::env::var("BACKEND_ADDR").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "backend listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
