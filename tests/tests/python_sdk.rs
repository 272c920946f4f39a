//! The official OpenTelemetry Python SDK against the real server, with its gRPC exporter and
//! its HTTP/protobuf exporter: a trace across three services (three TracerProviders with their
//! own resources, context carried by inject/extract), read back and searched.

use std::process::Command;
use std::time::Duration;

use prost::Message as _;
use sextant_otlp_proto::proto::ExportTraceServiceRequest;
use sextant_tests::flat;
use sextant_tests::scenario::{self, Expect};
use sextant_tests::{python, Server};

async fn round_trip(protocol: &str) {
    let server = Server::start(&[]);
    let endpoint = match protocol {
        "grpc" => server.grpc_url(),
        "http" => server.traces_url(),
        _ => unreachable!(),
    };
    let script = python::scripts_dir().join("three_services.py");
    let protocol_owned = protocol.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let python = python::python();
        sextant_tests::run_with_timeout(
            Command::new(python)
                .arg(&script)
                .arg(&protocol_owned)
                .arg(&endpoint)
                .env("OTEL_SDK_DISABLED", "false")
                .env_remove("OTEL_RESOURCE_ATTRIBUTES")
                .env_remove("OTEL_SERVICE_NAME"),
            Duration::from_secs(180),
        )
    })
    .await
    .expect("python runner panicked");
    assert!(
        out.status.success(),
        "the Python SDK script ({protocol}) failed:\n{}\n--- server stderr ---\n{}",
        out.describe(),
        server.stderr_tail()
    );
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from the script:\n{}", out.describe()));
    let report: serde_json::Value = serde_json::from_str(line).expect("script's JSON line");
    let trace_id = report["trace_id"].as_str().unwrap().to_string();
    let mut sent = Vec::new();
    for hex_req in report["sent"].as_array().unwrap() {
        let bytes = hex::decode(hex_req.as_str().unwrap()).unwrap();
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        sent.extend(flat::flatten(&req.resource_spans));
    }
    assert_eq!(
        sent.len(),
        7,
        "the Python SDK sent {} spans, expected 7",
        sent.len()
    );
    let expect = Expect {
        services: ["py-frontend", "py-checkout", "py-inventory"].map(String::from),
        scope_version: "3.1.4".into(),
        scope_owner: "e2e-py".into(),
        sdk_language: "python".into(),
        environment: "e2e-py".into(),
        order_id: "ord-py-1".into(),
        base_ns: report["base_ns"].as_u64().unwrap(),
        sent: sent
            .into_iter()
            .filter(|s| s.trace_id_hex() == trace_id)
            .collect(),
        other_trace_id: report["other_trace_id"].as_str().unwrap().to_string(),
        trace_id,
    };
    scenario::check_all(&server, &expect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_three_service_trace_round_trips() {
    round_trip("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_three_service_trace_round_trips() {
    round_trip("http").await;
}
