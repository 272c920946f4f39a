//! `cargo run -p sextant-sdk --example worker` (port 8082; WORKER_ADDR).
//!
//! A tiny in-process job queue: `POST /jobs` accepts `{"task", "args", "headers"}`
//! and answers 202; a consumer task takes jobs from the queue and continues
//! the producer's trace from `headers`.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{global, KeyValue};
use serde_json::Value;
use sextant_sdk::SextantLayer;
use tokio::sync::mpsc;

struct Job {
    task: String,
    args: Value,
    headers: HashMap<String, String>,
}

async fn accept(State(queue): State<mpsc::Sender<Job>>, Json(body): Json<Value>) -> StatusCode {
    let headers = body["headers"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let job = Job {
        task: body["task"].as_str().unwrap_or("unknown").to_string(),
        args: body["args"].clone(),
        headers,
    };
    match queue.try_send(job) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[tracing::instrument(skip(args))]
async fn send_receipt(args: &Value) -> Result<(), String> {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await; // "the mail server"
    tracing::info!(order_id = %args["order_id"], "receipt sent");
    Ok(())
}

async fn consume(mut queue: mpsc::Receiver<Job>) {
    let tracer = global::tracer("worker");
    while let Some(job) = queue.recv().await {
        // Continue the trace the producer put in the job headers.
        let parent = sextant_sdk::extract_from_map(&job.headers);
        let span = tracer
            .span_builder(format!("{} process", job.task))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "sextant-example-queue"),
                KeyValue::new("messaging.operation.type", "process"),
            ])
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        let result = match job.task.as_str() {
            "send_receipt" => send_receipt(&job.args).with_context(cx.clone()).await,
            other => Err(format!("unknown task {other}")),
        };
        if let Err(e) = result {
            cx.span().set_status(Status::error(e));
        }
        cx.span().end();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _guard = sextant_sdk::Sdk::builder()
        .service_name("worker")
        .with_logs(true)
        .init()?;

    let (tx, rx) = mpsc::channel(1024);
    let consumer = tokio::spawn(consume(rx));
    let router = Router::new()
        .route("/jobs", post(accept))
        .with_state(tx)
        .layer(SextantLayer::new());
    let addr = std::env::var("WORKER_ADDR").unwrap_or_else(|_| "127.0.0.1:8082".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "worker listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // The router (and its queue sender) is gone: the consumer drains and stops.
    let _ = consumer.await;
    Ok(())
}
