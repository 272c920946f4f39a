//! Bad input on every door: the answers OTLP and Tempo prescribe, bounded memory, and a server
//! that still works afterwards.

use std::io::Write as _;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use prost::Message as _;
use sextant_otlp_proto::rpc::RpcStatus;
use sextant_tests::otlp::{self, random_trace_id};
use sextant_tests::{self as e2e, Server};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
const MIB: usize = 1 << 20;

fn assert_rpc_status_protobuf(what: &str, resp: &e2e::Resp) -> RpcStatus {
    assert_eq!(
        resp.status,
        400,
        "{what}: answered {} {}",
        resp.status,
        resp.text()
    );
    assert!(
        resp.content_type().starts_with(PROTOBUF),
        "{what}: error body has content-type {:?}, expected {PROTOBUF}",
        resp.content_type()
    );
    let status = RpcStatus::decode(resp.body.as_slice()).unwrap_or_else(|e| {
        panic!(
            "{what}: body is not a google.rpc.Status: {e}: {:?}",
            resp.text()
        )
    });
    assert_eq!(
        status.code, 3,
        "{what}: google.rpc.Status code (INVALID_ARGUMENT): {status:?}"
    );
    assert!(
        !status.message.trim().is_empty(),
        "{what}: empty message: {status:?}"
    );
    status
}

fn assert_rpc_status_json(what: &str, resp: &e2e::Resp) -> String {
    assert_eq!(
        resp.status,
        400,
        "{what}: answered {} {}",
        resp.status,
        resp.text()
    );
    assert!(
        resp.content_type().starts_with(JSON),
        "{what}: error body has content-type {:?}, expected {JSON}",
        resp.content_type()
    );
    let value = resp.json();
    assert_eq!(
        value["code"], 3,
        "{what}: status code (INVALID_ARGUMENT): {value}"
    );
    let message = value["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {value}"))
        .to_string();
    assert!(!message.trim().is_empty(), "{what}: empty message: {value}");
    message
}

fn mentions_any(text: &str, words: &[&str]) -> bool {
    let lower = text.to_lowercase();
    words.iter().any(|w| lower.contains(w))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// `n` zero bytes, gzip'd, without holding them all in memory.
fn gzip_zeros(n: usize) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; MIB];
    for _ in 0..n / MIB {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

fn valid_request() -> (String, Vec<u8>) {
    let tid = random_trace_id();
    let req = otlp::trace_request("after-bad-input", &tid, 3, 0);
    (hex::encode(tid), req.encode_to_vec())
}

async fn assert_still_serving(server: &mut Server) {
    assert!(
        server.is_running(),
        "the server died on bad input\n--- stderr ---\n{}",
        server.stderr_tail()
    );
    let ready = e2e::get(&format!("{}/ready", server.query_url())).await;
    assert_eq!(
        ready.status,
        200,
        "/ready after bad input: {}",
        ready.text()
    );
    let (tid, body) = valid_request();
    let resp = e2e::post(&server.traces_url(), &[("content-type", PROTOBUF)], body).await;
    assert_eq!(
        resp.status,
        200,
        "a valid request after bad input: {} {}",
        resp.status,
        resp.text()
    );
    e2e::wait_for_trace(server, &tid, 3).await;
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    let tid = random_trace_id();
    otlp::export(
        &mut client,
        otlp::trace_request("after-bad-input", &tid, 2, 0),
    )
    .await
    .expect("a valid gRPC export after bad input");
    e2e::wait_for_trace(server, &hex::encode(tid), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_gets_the_prescribed_answers() {
    let mut server = Server::start(&[]);
    let url = server.traces_url();

    // Garbage protobuf.
    let resp = e2e::post(
        &url,
        &[("content-type", PROTOBUF)],
        b"\xff\xff\xff\xff\x0fgarbage".to_vec(),
    )
    .await;
    let status = assert_rpc_status_protobuf("garbage protobuf", &resp);
    assert!(
        mentions_any(
            &status.message,
            &["decod", "protobuf", "invalid", "wire", "buffer"]
        ),
        "garbage protobuf: the message does not say what is wrong: {:?}",
        status.message
    );

    // A well-framed request whose nested ResourceSpans is garbage.
    let mut nested = vec![0x0a, 6];
    nested.extend_from_slice(b"\x12\x10abcd");
    let resp = e2e::post(&url, &[("content-type", PROTOBUF)], nested).await;
    let status = assert_rpc_status_protobuf("invalid nested message", &resp);
    assert!(
        mentions_any(
            &status.message,
            &["decod", "protobuf", "invalid", "buffer", "resource"]
        ),
        "invalid nested message: the message does not say what is wrong: {:?}",
        status.message
    );

    // Truncated JSON.
    let (_, valid) = valid_request();
    let valid_json = sextant_otlp_proto::json::encode_request(
        &sextant_otlp_proto::proto::ExportTraceServiceRequest::decode(valid.as_slice()).unwrap(),
    );
    let truncated = valid_json[..valid_json.len() / 2].to_vec();
    let resp = e2e::post(&url, &[("content-type", JSON)], truncated).await;
    let message = assert_rpc_status_json("truncated JSON", &resp);
    assert!(
        mentions_any(
            &message,
            &["json", "eof", "end of", "unexpected", "parse", "syntax"]
        ),
        "truncated JSON: the message does not say what is wrong: {message:?}"
    );

    // JSON with a bad trace id: the message names the field's path.
    let bad_id = String::from_utf8(valid_json.clone()).unwrap().replacen(
        "\"traceId\":\"",
        "\"traceId\":\"zz",
        1,
    );
    assert!(
        bad_id.contains("\"traceId\":\"zz"),
        "could not make a bad id: {bad_id}"
    );
    let resp = e2e::post(&url, &[("content-type", JSON)], bad_id.into_bytes()).await;
    let message = assert_rpc_status_json("bad traceId in JSON", &resp);
    assert!(
        message.contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"),
        "bad traceId: the message does not name the field path: {message:?}"
    );

    // JSON of the wrong shape.
    let resp = e2e::post(
        &url,
        &[("content-type", JSON)],
        br#"{"resourceSpans":{"not":"an array"}}"#.to_vec(),
    )
    .await;
    let message = assert_rpc_status_json("resourceSpans not an array", &resp);
    assert!(
        message.contains("resourceSpans"),
        "wrong shape: message {message:?}"
    );

    // Unknown content type.
    let resp = e2e::post(&url, &[("content-type", "text/plain")], b"hello".to_vec()).await;
    assert_eq!(
        resp.status,
        415,
        "text/plain answered {} {}",
        resp.status,
        resp.text()
    );
    let resp = e2e::post(&url, &[], valid.clone()).await;
    assert_eq!(
        resp.status,
        415,
        "no content type answered {} {}",
        resp.status,
        resp.text()
    );

    // Wrong method.
    for method in ["GET", "PUT", "DELETE"] {
        let resp = e2e::request(method, &url, &[], Vec::new()).await;
        assert_eq!(
            resp.status,
            405,
            "{method} /v1/traces answered {} {}",
            resp.status,
            resp.text()
        );
    }

    // An unknown content encoding is not silently taken as identity.
    let resp = e2e::post(
        &url,
        &[("content-type", PROTOBUF), ("content-encoding", "br-nope")],
        valid.clone(),
    )
    .await;
    assert!(
        resp.status == 415 || resp.status == 400,
        "unknown content-encoding answered {} {}",
        resp.status,
        resp.text()
    );
    // A body that says gzip but is not.
    let resp = e2e::post(
        &url,
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        valid.clone(),
    )
    .await;
    assert_eq!(
        resp.status,
        400,
        "bad gzip answered {} {}",
        resp.status,
        resp.text()
    );

    assert_still_serving(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_oversize_bodies_get_413_and_memory_stays_bounded() {
    let mut server = Server::start(&[]);
    let url = server.traces_url();
    let before = server.mem();

    // A valid request of 21 MiB (only its size can be wrong), with Content-Length and chunked,
    // sent by a client that reads the answer while it writes.
    let big = otlp::request_of_size("oversize", 21 * MIB).encode_to_vec();
    assert!(big.len() > 20 * MIB);
    for chunked in [false, true] {
        let addr = server.http_addr;
        let body = big.clone();
        let ex = tokio::task::spawn_blocking(move || {
            e2e::raw_http_post(
                addr,
                "/v1/traces",
                &[("Content-Type", PROTOBUF)],
                &body,
                chunked,
            )
        })
        .await
        .unwrap();
        assert_eq!(
            ex.status,
            Some(413),
            "a 21 MiB body (chunked: {chunked}) got no 413: {ex:?}"
        );
    }

    // Just under the limit is fine (compressed, so the limit is after decompression).
    let under = otlp::request_of_size("undersize", 19 * MIB).encode_to_vec();
    assert!(under.len() < 20 * MIB);
    let resp = e2e::post(
        &url,
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        gzip(&under),
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "a 19 MiB body answered {} {}",
        resp.status,
        tail(&resp)
    );

    // A gzip bomb: 600 KiB that inflate to 512 MiB.
    let bomb = gzip_zeros(512 * MIB);
    assert!(bomb.len() < 2 * MIB, "bomb is {} bytes", bomb.len());
    let hwm_before = server.mem().vm_hwm_kib;
    let started = Instant::now();
    let resp = e2e::post(
        &url,
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        bomb.clone(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        resp.status,
        413,
        "a gzip bomb answered {} {}",
        resp.status,
        tail(&resp)
    );
    assert!(
        took < Duration::from_secs(10),
        "the gzip bomb took {took:?} to refuse"
    );
    // The same as JSON.
    let resp = e2e::post(
        &url,
        &[("content-type", JSON), ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(
        resp.status,
        413,
        "a JSON gzip bomb answered {} {}",
        resp.status,
        tail(&resp)
    );

    let after = server.mem();
    let grew_mib = (after.vm_hwm_kib.saturating_sub(hwm_before)) as f64 / 1024.0;
    assert!(
        grew_mib < 100.0,
        "peak memory grew by {grew_mib:.0} MiB on 512 MiB gzip bombs (before {:.0} MiB, HWM {:.0} -> {:.0} MiB): the body is inflated past the limit",
        before.rss_mib(),
        hwm_before as f64 / 1024.0,
        after.hwm_mib()
    );

    assert_still_serving(&mut server).await;
}

/// An ordinary client (reqwest, as the Rust SDK's HTTP exporter uses) that writes the whole
/// body before it reads must see the 413 too, not a broken connection: the server has to read
/// (and discard) the rest of an oversize body before it closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_oversize_413_reaches_an_ordinary_client() {
    let mut server = Server::start(&[]);
    let big = otlp::request_of_size("oversize", 21 * MIB).encode_to_vec();
    let result = e2e::client()
        .post(server.traces_url())
        .header("content-type", PROTOBUF)
        .body(big)
        .send()
        .await;
    match result {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 413, "a 21 MiB body answered {}", resp.status()),
        Err(e) => panic!(
            "a 21 MiB body: the client saw no answer, only a broken connection ({}); the server closed it without reading the body",
            e2e::error_chain(&e)
        ),
    }
    assert_still_serving(&mut server).await;
}

fn tail(resp: &e2e::Resp) -> String {
    e2e::tail(&resp.text(), 500).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_garbage_gets_invalid_argument() {
    let mut server = Server::start(&[]);
    let url = server.grpc_url();

    let err = otlp::export_raw(&url, b"\xff\xff\xff\xff\x0fgarbage".to_vec())
        .await
        .expect_err("garbage was accepted over gRPC");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "garbage over gRPC: {err:?}"
    );
    assert!(
        !err.message().is_empty(),
        "garbage over gRPC: empty message: {err:?}"
    );

    let mut nested = vec![0x0a, 6];
    nested.extend_from_slice(b"\x12\x10abcd");
    let err = otlp::export_raw(&url, nested)
        .await
        .expect_err("an invalid nested message was accepted over gRPC");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "invalid nested message: {err:?}"
    );

    // A valid message through the raw codec is accepted: the codec is not what fails above.
    let (_, valid) = valid_request();
    let resp = otlp::export_raw(&url, valid)
        .await
        .expect("a valid raw gRPC export");
    sextant_otlp_proto::proto::ExportTraceServiceResponse::decode(resp.as_slice())
        .expect("ExportTraceServiceResponse");

    assert_still_serving(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trace_ids_get_400_naming_them() {
    let mut server = Server::start(&[]);
    let q = server.query_url();
    for (id, why) in [
        ("xyz", "not hex"),
        ("0123456789abcdef0123456789abcdef0", "33 hex digits"),
        ("12g4", "not hex"),
    ] {
        for path in ["api/traces", "api/v2/traces"] {
            let resp = e2e::get(&format!("{q}/{path}/{id}")).await;
            assert_eq!(
                resp.status,
                400,
                "/{path}/{id} ({why}) answered {} {}",
                resp.status,
                resp.text()
            );
            assert!(
                resp.text().contains(id),
                "/{path}/{id} ({why}): the answer does not name the id: {}",
                resp.text()
            );
        }
    }
    // Bad search parameters are refused, not ignored.
    for query in [
        "minDuration=fast",
        "limit=-1",
        "tags=%3D%3D%3D",
        "start=yesterday",
    ] {
        let resp = e2e::get(&format!("{q}/api/search?{query}")).await;
        assert_eq!(
            resp.status,
            400,
            "/api/search?{query} answered {} {}",
            resp.status,
            resp.text()
        );
    }
    // A TraceQL query that does not parse: 400 naming the column and what was expected.
    let resp = e2e::get(&format!("{q}/api/search?q=%7B%20.a%20%3D%20%7D")).await;
    assert_eq!(
        resp.status,
        400,
        "a bad q= answered {} {}",
        resp.status,
        resp.text()
    );
    assert!(
        resp.text().contains("column 8") && resp.text().contains("expected a value"),
        "a bad q=: the answer does not say where and what: {}",
        resp.text()
    );
    assert_still_serving(&mut server).await;
}

/// A gRPC message over the size limit (20 MiB by default) is refused with a code that OTLP
/// clients do not retry (RESOURCE_EXHAUSTED without RetryInfo, or INVALID_ARGUMENT): the same
/// message can never succeed. OUT_OF_RANGE, UNAVAILABLE and the like would be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversize_message_is_refused_as_not_retryable() {
    let mut server = Server::start(&[]);
    let big = otlp::request_of_size("oversize-grpc", 21 * MIB).encode_to_vec();
    let err = otlp::export_raw(&server.grpc_url(), big)
        .await
        .expect_err("a 21 MiB gRPC message was accepted");
    let retryable = matches!(
        err.code(),
        tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::OutOfRange
            | tonic::Code::DataLoss
    );
    assert!(
        !retryable
            && matches!(
                err.code(),
                tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
            ),
        "a 21 MiB gRPC message got {:?} ({}), which OTLP clients retry; expected RESOURCE_EXHAUSTED (no RetryInfo) or INVALID_ARGUMENT",
        err.code(),
        err.message()
    );
    assert_still_serving(&mut server).await;
}
