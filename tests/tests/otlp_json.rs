//! OTLP/JSON over HTTP: the spec's own example shape in, Tempo JSON out, and the output parses
//! back (with Sextant's decoder) into the same spans.

use std::io::Write as _;

use flate2::write::GzEncoder;
use sextant_otlp_proto::proto::{any_value::Value, span::SpanKind, trace::status::StatusCode};
use sextant_tests::flat::{self, arr, assert_attr, b, f, i, s};
use sextant_tests::{self as e2e, Server};

const TRACE_ID_UPPER: &str = "5B8EFFF798038103D269B633813FC60C";
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";

/// The example of opentelemetry-proto `examples/trace.json`, with events, links and a status
/// added, and a field no version of OTLP has (which must be ignored).
fn example() -> String {
    r#"{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          { "key": "service.name", "value": { "stringValue": "my.service" } }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              { "key": "my.scope.attribute", "value": { "stringValue": "some scope attribute" } }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "kind": 2,
              "attributes": [
                { "key": "string.attribute", "value": { "stringValue": "some string" } },
                { "key": "boolean.attribute", "value": { "boolValue": true } },
                { "key": "int.attribute", "value": { "intValue": "10" } },
                { "key": "double.attribute", "value": { "doubleValue": 637.704 } },
                {
                  "key": "array.attribute",
                  "value": {
                    "arrayValue": {
                      "values": [
                        { "stringValue": "many" },
                        { "stringValue": "values" }
                      ]
                    }
                  }
                },
                {
                  "key": "map.attribute",
                  "value": {
                    "kvlistValue": {
                      "values": [
                        { "key": "some.map.key", "value": { "stringValue": "some value" } }
                      ]
                    }
                  }
                }
              ],
              "events": [
                {
                  "timeUnixNano": "1544712660500000000",
                  "name": "checkpoint",
                  "attributes": [ { "key": "step", "value": { "intValue": "2" } } ]
                }
              ],
              "links": [
                {
                  "traceId": "0AF7651916CD43DD8448EB211C80319C",
                  "spanId": "B7AD6B7169203331",
                  "attributes": [ { "key": "why", "value": { "stringValue": "batch" } } ]
                }
              ],
              "status": { "code": 2, "message": "boom" },
              "someFutureField": { "ignored": [1, 2, 3] }
            }
          ]
        }
      ]
    }
  ]
}"#
    .to_string()
}

/// 64-bit numbers may also come as JSON numbers, and enums by name.
fn numbers_variant() -> String {
    r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-numbers"}}]},
      "scopeSpans":[{"scope":{"name":"n"},"spans":[{
        "traceId":"00000000000000000000000000abcdef","spanId":"0000000000000001",
        "name":"numbers","kind":"SPAN_KIND_CLIENT",
        "startTimeUnixNano":1544712660000000000,"endTimeUnixNano":1544712660250000000,
        "attributes":[{"key":"n","value":{"intValue":-42}}]}]}]}]}"#
        .to_string()
}

async fn post_json(server: &Server, body: Vec<u8>, gzip: bool) -> e2e::Resp {
    let mut headers = vec![("content-type", "application/json")];
    let body = if gzip {
        headers.push(("content-encoding", "gzip"));
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).unwrap();
        enc.finish().unwrap()
    } else {
        body
    };
    e2e::post(&server.traces_url(), &headers, body).await
}

fn assert_export_ok(resp: &e2e::Resp) {
    assert_eq!(
        resp.status,
        200,
        "POST /v1/traces (JSON) answered {}: {}",
        resp.status,
        resp.text()
    );
    assert!(
        resp.content_type().starts_with("application/json"),
        "a JSON request's answer has content-type {:?}",
        resp.content_type()
    );
    let value = resp.json();
    assert!(
        value.is_object(),
        "ExportTraceServiceResponse is not an object: {value}"
    );
    sextant_otlp_proto::json::decode_response(&resp.body)
        .unwrap_or_else(|e| panic!("answer is not an ExportTraceServiceResponse: {e}: {value}"));
    if let Some(ps) = value.get("partialSuccess") {
        let rejected = ps
            .get("rejectedSpans")
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(
            rejected.is_empty() || rejected == "\"0\"" || rejected == "0",
            "spans were rejected: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_example_round_trips() {
    let server = Server::start(&[]);
    let resp = post_json(&server, example().into_bytes(), false).await;
    assert_export_ok(&resp);

    // Upper-case id in, found by either case.
    let (value, data) = e2e::wait_for_trace(&server, TRACE_ID, 1).await;
    let (_, data_upper) = e2e::wait_for_trace(&server, TRACE_ID_UPPER, 1).await;
    assert_eq!(
        data, data_upper,
        "the same trace by upper- and lower-case id"
    );

    // Our JSON follows OTLP/JSON: lowercase hex ids, 64-bit integers as strings, int enums.
    let problems = e2e::check_otlp_json_conventions(&value);
    assert!(
        problems.is_empty(),
        "output breaks OTLP/JSON rules:\n{}\n{value}",
        problems.join("\n")
    );
    let text = value.to_string();
    assert!(
        text.contains(TRACE_ID),
        "lowercase trace id not in the output: {text}"
    );
    assert!(
        !text.contains(TRACE_ID_UPPER),
        "upper-case trace id echoed: {text}"
    );
    let span_json = &value["batches"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span_json["traceId"], TRACE_ID, "{span_json}");
    assert_eq!(span_json["spanId"], "eee19b7ec3c1b174", "{span_json}");
    assert_eq!(span_json["parentSpanId"], "eee19b7ec3c1b173", "{span_json}");
    assert_eq!(
        span_json["startTimeUnixNano"], "1544712660000000000",
        "{span_json}"
    );
    assert_eq!(
        span_json["endTimeUnixNano"], "1544712661000000000",
        "{span_json}"
    );
    assert_eq!(span_json["kind"], 2, "{span_json}");
    assert_eq!(span_json["status"]["code"], 2, "{span_json}");
    assert_eq!(
        span_json["links"][0]["traceId"], "0af7651916cd43dd8448eb211c80319c",
        "{span_json}"
    );
    let int_attr = span_json["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == "int.attribute")
        .unwrap_or_else(|| panic!("no int.attribute: {span_json}"));
    assert_eq!(
        int_attr["value"]["intValue"], "10",
        "intValue must be a string: {int_attr}"
    );
    assert!(
        !text.contains("someFutureField"),
        "an unknown input field leaked into the output: {text}"
    );

    // It parses back into exactly the spans sent.
    let sent =
        sextant_otlp_proto::json::decode_request(example().as_bytes()).expect("example decodes");
    let sent = flat::flatten(&sent.resource_spans);
    let got = flat::flatten(&data.resource_spans);
    flat::assert_same("JSON in, /api/traces out", &sent, &got);

    // And it is the span the example describes (checked without our decoder's help on input).
    assert_eq!(got.len(), 1);
    let sp = &got[0];
    assert_eq!(sp.service(), "my.service");
    assert_eq!(sp.scope.name, "my.library");
    assert_eq!(sp.scope.version, "1.0.0");
    assert_attr(
        "scope",
        &sp.scope.attributes,
        "my.scope.attribute",
        &s("some scope attribute"),
    );
    assert_eq!(hex::encode(&sp.span.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&sp.span.span_id), "eee19b7ec3c1b174");
    assert_eq!(hex::encode(&sp.span.parent_span_id), "eee19b7ec3c1b173");
    assert_eq!(sp.span.name, "I'm a server span");
    assert_eq!(sp.span.kind, SpanKind::Server as i32);
    assert_eq!(sp.span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(sp.span.end_time_unix_nano, 1_544_712_661_000_000_000);
    let a = &sp.span.attributes;
    assert_attr("span", a, "string.attribute", &s("some string"));
    assert_attr("span", a, "boolean.attribute", &b(true));
    assert_attr("span", a, "int.attribute", &i(10));
    assert_attr("span", a, "double.attribute", &f(637.704));
    assert_attr(
        "span",
        a,
        "array.attribute",
        &arr(vec![s("many"), s("values")]),
    );
    match sextant_otlp_proto::attr::get(a, "map.attribute").and_then(|v| v.value.as_ref()) {
        Some(Value::KvlistValue(list)) => {
            assert_attr("map", &list.values, "some.map.key", &s("some value"))
        }
        other => panic!("map.attribute is {other:?}"),
    }
    assert_eq!(sp.span.events.len(), 1);
    assert_eq!(sp.span.events[0].name, "checkpoint");
    assert_eq!(sp.span.events[0].time_unix_nano, 1_544_712_660_500_000_000);
    assert_attr("event", &sp.span.events[0].attributes, "step", &i(2));
    assert_eq!(sp.span.links.len(), 1);
    assert_eq!(
        hex::encode(&sp.span.links[0].trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(hex::encode(&sp.span.links[0].span_id), "b7ad6b7169203331");
    assert_attr("link", &sp.span.links[0].attributes, "why", &s("batch"));
    let status = sp.span.status.clone().unwrap_or_default();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "boom");

    // v2 says the same.
    let v2 = e2e::get_json(&format!("{}/api/v2/traces/{TRACE_ID}", server.query_url())).await;
    let problems = e2e::check_otlp_json_conventions(&v2);
    assert!(
        problems.is_empty(),
        "v2 output breaks OTLP/JSON rules:\n{}",
        problems.join("\n")
    );
    flat::assert_same(
        "JSON in, /api/v2/traces out",
        &sent,
        &flat::flatten(&e2e::decode_v2(&v2).resource_spans),
    );

    // And protobuf.
    let proto = e2e::get_trace_protobuf(&server, TRACE_ID).await;
    flat::assert_same(
        "JSON in, protobuf out",
        &sent,
        &flat::flatten(&proto.resource_spans),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_numbers_enum_names_and_gzip_are_accepted() {
    let server = Server::start(&[]);
    let resp = post_json(&server, numbers_variant().into_bytes(), true).await;
    assert_export_ok(&resp);
    let (value, data) = e2e::wait_for_trace(&server, "abcdef", 1).await;
    let problems = e2e::check_otlp_json_conventions(&value);
    assert!(
        problems.is_empty(),
        "output breaks OTLP/JSON rules:\n{}",
        problems.join("\n")
    );
    let got = flat::flatten(&data.resource_spans);
    assert_eq!(got.len(), 1);
    let sp = &got[0];
    assert_eq!(
        hex::encode(&sp.span.trace_id),
        "00000000000000000000000000abcdef"
    );
    assert_eq!(sp.span.kind, SpanKind::Client as i32);
    assert_eq!(sp.span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(sp.span.end_time_unix_nano, 1_544_712_660_250_000_000);
    assert_attr("span", &sp.span.attributes, "n", &i(-42));
    let span_json = &value["batches"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(
        span_json["startTimeUnixNano"], "1544712660000000000",
        "{span_json}"
    );
    assert_eq!(
        span_json["traceId"], "00000000000000000000000000abcdef",
        "{span_json}"
    );

    // The same body as protobuf, gzip'd, is accepted too and answered in protobuf.
    let req = sextant_otlp_proto::json::decode_request(example().as_bytes()).unwrap();
    let bytes = prost::Message::encode_to_vec(&req);
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&bytes).unwrap();
    let resp = e2e::post(
        &server.traces_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        enc.finish().unwrap(),
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "gzip protobuf answered {}: {}",
        resp.status,
        resp.text()
    );
    assert!(
        resp.content_type().starts_with("application/x-protobuf"),
        "a protobuf request's answer has content-type {:?}",
        resp.content_type()
    );
    let _: sextant_otlp_proto::proto::ExportTraceServiceResponse =
        prost::Message::decode(resp.body.as_slice()).expect("protobuf ExportTraceServiceResponse");
    e2e::wait_for_trace(&server, TRACE_ID, 1).await;
}
