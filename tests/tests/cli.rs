//! The client commands against a real server: `sextant trace` prints a tree, `sextant search`
//! a table, and bad input gives a non-zero exit with a clear message.

use std::process::Command;
use std::time::Duration;

use sextant_otlp_proto::proto::{
    span::SpanKind, trace::status::StatusCode, ExportTraceServiceRequest, InstrumentationScope,
    Resource, ResourceSpans, ScopeSpans, Span, Status,
};
use sextant_tests::otlp::{self, kv_str, now_nanos, random_span_id};
use sextant_tests::{self as e2e, RunOutput, Server};

const MS: u64 = 1_000_000;

/// A trace id with no leading zero nibble (so no printing may shorten it).
fn trace_id() -> Vec<u8> {
    loop {
        let id = otlp::random_trace_id();
        if id[0] >= 0x10 {
            return id;
        }
    }
}

struct Sent {
    trace_id: String,
}

/// frontend `GET /checkout` (0-300 ms) -> frontend `call checkout` (10-290) -> checkout
/// `POST /pay` (20-280, error) -> inventory `reserve stock` (30-130); and frontend `render`
/// (295-299), a second child of the root.
async fn send_trace(server: &Server) -> Sent {
    let tid = trace_id();
    let base = now_nanos() - 60_000 * MS;
    let ids: Vec<Vec<u8>> = (0..5).map(|_| random_span_id()).collect();
    let span =
        |i: usize, parent: Option<usize>, name: &str, kind: SpanKind, start: u64, end: u64| Span {
            trace_id: tid.clone(),
            span_id: ids[i].clone(),
            parent_span_id: parent.map(|p| ids[p].clone()).unwrap_or_default(),
            name: name.to_string(),
            kind: kind as i32,
            start_time_unix_nano: base + start * MS,
            end_time_unix_nano: base + end * MS,
            ..Default::default()
        };
    let mut pay = span(2, Some(1), "POST /pay", SpanKind::Server, 20, 280);
    pay.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "card declined".into(),
    });
    let rs = |service: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv_str("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "cli-e2e".into(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            rs(
                "frontend",
                vec![
                    span(0, None, "GET /checkout", SpanKind::Server, 0, 300),
                    span(1, Some(0), "call checkout", SpanKind::Client, 10, 290),
                    span(4, Some(0), "render", SpanKind::Internal, 295, 299),
                ],
            ),
            rs("checkout", vec![pay]),
            rs(
                "inventory",
                vec![span(
                    3,
                    Some(2),
                    "reserve stock",
                    SpanKind::Internal,
                    30,
                    130,
                )],
            ),
        ],
    };
    let mut client = otlp::trace_client(&server.grpc_url()).await;
    otlp::export(&mut client, req).await.expect("export");
    let trace_id = hex::encode(&tid);
    e2e::wait_for_trace(server, &trace_id, 5).await;
    Sent { trace_id }
}

async fn sextant(args: Vec<String>, env: Vec<(String, String)>) -> RunOutput {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(e2e::sextant_bin());
        cmd.args(&args)
            .env_remove("SEXTANT_URL")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        e2e::run_with_timeout(&mut cmd, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Columns before the first letter or digit: the depth of a tree line.
fn indent(line: &str) -> usize {
    line.chars().take_while(|c| !c.is_alphanumeric()).count()
}

fn line_with<'a>(out: &'a RunOutput, needle: &str) -> &'a str {
    let lines: Vec<&str> = out.stdout.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line with {needle:?} in:\n{}",
        out.stdout
    );
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_prints_an_indented_tree() {
    let server = Server::start(&[]);
    let sent = send_trace(&server).await;
    let out = sextant(
        args(&["trace", &sent.trace_id, "--url", &server.query_url()]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "sextant trace failed:\n{}",
        out.describe()
    );
    for needle in [
        "frontend",
        "checkout",
        "inventory",
        "GET /checkout",
        "call checkout",
        "POST /pay",
        "reserve stock",
        "render",
    ] {
        assert!(
            out.stdout.contains(needle),
            "the tree lacks {needle:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains(&sent.trace_id),
        "the tree does not name the trace id:\n{}",
        out.stdout
    );
    let depth = |name: &str| indent(line_with(&out, name));
    let (root, call, pay, reserve, render) = (
        depth("GET /checkout"),
        depth("call checkout"),
        depth("POST /pay"),
        depth("reserve stock"),
        depth("render"),
    );
    assert!(
        root < call && call < pay && pay < reserve,
        "children are not indented under their parents (root {root}, client {call}, server {pay}, internal {reserve}):\n{}",
        out.stdout
    );
    assert_eq!(
        render, call,
        "siblings are not at the same depth:\n{}",
        out.stdout
    );
    // Children come after their parents, in start order.
    let pos = |name: &str| out.stdout.find(name).unwrap();
    assert!(
        pos("GET /checkout") < pos("call checkout")
            && pos("call checkout") < pos("POST /pay")
            && pos("POST /pay") < pos("reserve stock")
            && pos("reserve stock") < pos("render"),
        "the tree is not in parent-then-start order:\n{}",
        out.stdout
    );
    // The root's duration and each span's service are on its line.
    let root_line = line_with(&out, "GET /checkout");
    assert!(
        root_line.contains("300"),
        "the root's line lacks its 300 ms duration: {root_line:?}"
    );
    assert!(
        line_with(&out, "reserve stock").contains("inventory"),
        "service of reserve stock"
    );
    assert!(
        line_with(&out, "POST /pay").contains("checkout"),
        "service of POST /pay"
    );

    // SEXTANT_URL works as --url.
    let env_out = sextant(
        args(&["trace", &sent.trace_id]),
        vec![("SEXTANT_URL".into(), server.query_url())],
    )
    .await;
    assert!(
        env_out.status.success(),
        "sextant trace with SEXTANT_URL failed:\n{}",
        env_out.describe()
    );
    assert_eq!(env_out.stdout, out.stdout, "SEXTANT_URL gives another tree");

    // --json prints OTLP/JSON of the same spans.
    let json_out = sextant(
        args(&[
            "trace",
            &sent.trace_id,
            "--url",
            &server.query_url(),
            "--json",
        ]),
        vec![],
    )
    .await;
    assert!(
        json_out.status.success(),
        "sextant trace --json failed:\n{}",
        json_out.describe()
    );
    let data = sextant_otlp_proto::json::decode_traces_data(json_out.stdout.as_bytes())
        .unwrap_or_else(|e| {
            panic!(
                "--json output is not OTLP/JSON TracesData: {e}\n{}",
                json_out.stdout
            )
        });
    assert_eq!(e2e::count_spans(&data), 5, "--json spans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_prints_a_table_with_the_trace() {
    let server = Server::start(&[]);
    let sent = send_trace(&server).await;
    let other = send_trace(&server).await;
    let url = server.query_url();

    let out = sextant(
        args(&["search", "--url", &url, "--tags", "service.name=checkout"]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "sextant search failed:\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&sent.trace_id),
        "the table lacks {}:\n{}",
        sent.trace_id,
        out.stdout
    );
    assert!(
        out.stdout.contains(&other.trace_id),
        "the table lacks {}:\n{}",
        other.trace_id,
        out.stdout
    );
    let row = line_with(&out, &sent.trace_id);
    assert!(
        row.contains("frontend"),
        "the row lacks the root service: {row:?}"
    );
    assert!(
        row.contains("GET /checkout"),
        "the row lacks the root span name: {row:?}"
    );
    assert!(
        out.stdout.lines().count() >= 3,
        "no header line?\n{}",
        out.stdout
    );

    // A TraceQL query as the positional argument.
    let out = sextant(
        args(&[
            "search",
            "--url",
            &url,
            "{ resource.service.name = \"checkout\" } > { resource.service.name = \"inventory\" }",
        ]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "sextant search '<TraceQL>' failed:\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&sent.trace_id) && out.stdout.contains(&other.trace_id),
        "the TraceQL table lacks the traces:\n{}",
        out.stdout
    );
    let out = sextant(args(&["search", "--url", &url, "{ .a = }"]), vec![]).await;
    assert!(
        !out.status.success() && out.stderr.contains("column 8"),
        "a bad TraceQL query should fail naming the column:\n{}",
        out.describe()
    );

    let out = sextant(
        args(&[
            "search",
            "--url",
            &url,
            "--tags",
            "service.name=inventory",
            "--min-duration",
            "100ms",
        ]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "search --min-duration failed:\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&sent.trace_id),
        "--min-duration 100ms lacks the trace:\n{}",
        out.stdout
    );

    let out = sextant(
        args(&["search", "--url", &url, "--min-duration", "1s"]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "search --min-duration 1s failed:\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains(&sent.trace_id) && !out.stdout.contains(&other.trace_id),
        "--min-duration 1s lists traces of at most 300 ms:\n{}",
        out.stdout
    );

    let out = sextant(args(&["search", "--url", &url, "--limit", "1"]), vec![]).await;
    assert!(
        out.status.success(),
        "search --limit 1 failed:\n{}",
        out.describe()
    );
    let listed = [&sent.trace_id, &other.trace_id]
        .iter()
        .filter(|id| out.stdout.contains(id.as_str()))
        .count();
    assert_eq!(
        listed, 1,
        "--limit 1 listed {listed} traces:\n{}",
        out.stdout
    );

    let out = sextant(
        args(&["search", "--url", &url, "--tags", "service.name=nobody"]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "an empty search failed:\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains(&sent.trace_id),
        "service.name=nobody lists the trace:\n{}",
        out.stdout
    );

    // Bad input to search: non-zero exit, the server's reason shown.
    let out = sextant(
        args(&["search", "--url", &url, "--min-duration", "soon"]),
        vec![],
    )
    .await;
    assert!(
        !out.status.success(),
        "search --min-duration soon succeeded:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("soon"),
        "the message does not name the bad duration:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the client panicked:\n{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_deps_print_the_service_graph() {
    let server = Server::start(&[]);
    send_trace(&server).await;
    send_trace(&server).await;
    let out = sextant(args(&["services", "--url", &server.query_url()]), vec![]).await;
    assert!(
        out.status.success(),
        "sextant services failed:\n{}",
        out.describe()
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec!["checkout", "frontend", "inventory"],
        "{}",
        out.describe()
    );

    let out = sextant(
        args(&["deps", "--jaeger-url", &server.jaeger_url()]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "sextant deps failed:\n{}",
        out.describe()
    );
    // frontend -> checkout -> inventory, twice each.
    let text = &out.stdout;
    assert!(
        text.contains("frontend\n  └─▶ checkout   2 call(s)"),
        "{text}"
    );
    assert!(
        text.contains("checkout\n  └─▶ inventory  2 call(s)"),
        "{text}"
    );

    let out = sextant(
        args(&[
            "deps",
            "--jaeger-url",
            &server.jaeger_url(),
            "--lookback",
            "soon",
        ]),
        vec![],
    )
    .await;
    assert!(
        !out.status.success() && out.stderr.contains("--lookback"),
        "a bad --lookback should fail naming it:\n{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_unreachable_servers_fail_clearly() {
    let server = Server::start(&[]);
    let url = server.query_url();

    let out = sextant(args(&["trace", "xyz", "--url", &url]), vec![]).await;
    assert!(
        !out.status.success(),
        "sextant trace xyz succeeded:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("xyz") && out.stderr.to_lowercase().contains("id"),
        "the message does not say the id xyz is bad:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the client panicked:\n{}",
        out.describe()
    );

    let too_long = "0123456789abcdef0123456789abcdef00";
    let out = sextant(args(&["trace", too_long, "--url", &url]), vec![]).await;
    assert!(
        !out.status.success(),
        "a 34-digit id succeeded:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(too_long),
        "the message does not name the id:\n{}",
        out.describe()
    );

    let absent = "0123456789abcdef0123456789abcdef";
    let out = sextant(args(&["trace", absent, "--url", &url]), vec![]).await;
    assert!(
        !out.status.success(),
        "an absent trace succeeded:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.to_lowercase().contains("not found") || out.stderr.contains("404"),
        "the message does not say the trace was not found:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the client panicked:\n{}",
        out.describe()
    );

    // Nothing listens on the port of a server that has gone.
    let mut gone = Server::start(&[]);
    let gone_url = gone.query_url();
    gone.kill9();
    let out = sextant(args(&["trace", absent, "--url", &gone_url]), vec![]).await;
    assert!(
        !out.status.success(),
        "trace against a dead server succeeded:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "no message against a dead server:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the client panicked:\n{}",
        out.describe()
    );
    let out = sextant(args(&["search", "--url", &gone_url]), vec![]).await;
    assert!(
        !out.status.success(),
        "search against a dead server succeeded:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the client panicked:\n{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_range_prints_one_block_per_series() {
    let server = Server::start(&[]);
    send_trace(&server).await;
    send_trace(&server).await;
    let url = server.query_url();

    let out = sextant(
        args(&[
            "query-range",
            "--url",
            &url,
            "--since",
            "10m",
            "--step",
            "1m",
            "{ } | count_over_time() by (resource.service.name)",
        ]),
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "sextant query-range failed:\n{}",
        out.describe()
    );
    // Blocks: a labels line, then `  time  value` rows; the values of a block sum to the
    // service's spans (two traces: frontend 3 + 3, checkout 1 + 1, inventory 1 + 1).
    let mut sums = std::collections::BTreeMap::new();
    for block in out.stdout.split("\n\n") {
        let mut lines = block.lines();
        let Some(labels) = lines.next() else { continue };
        let total: f64 = lines
            .map(|l| {
                let value = l
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_else(|| panic!("row without a value: {l:?} in\n{}", out.stdout));
                value
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("{l:?}: {e}"))
            })
            .sum();
        sums.insert(labels.to_string(), total);
    }
    let want: std::collections::BTreeMap<String, f64> = [
        (r#"{resource.service.name="checkout"}"#.to_string(), 2.0),
        (r#"{resource.service.name="frontend"}"#.to_string(), 6.0),
        (r#"{resource.service.name="inventory"}"#.to_string(), 2.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(sums, want, "{}", out.stdout);

    // A bad query: non-zero exit, the server's reason shown.
    let out = sextant(args(&["query-range", "--url", &url, "{ } | rate("]), vec![]).await;
    assert!(
        !out.status.success(),
        "a bad query succeeded:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("invalid q") && out.stderr.contains("400"),
        "{}",
        out.describe()
    );
}
