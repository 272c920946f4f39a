//! The three-service scenario that the SDK tests (Rust and Python) produce, and its checks.
//!
//! frontend: `GET /checkout` (server, root, attributes of every type, an event) ->
//! `POST checkout/pay` (client) -> checkout: `POST /pay` (server, error status, an event) ->
//! `orders publish` (producer) -> inventory: `orders process` (consumer, a link to another
//! trace and one to the root, status ok) -> `reserve stock` (internal). Times are explicit
//! offsets in ms from `base_ns`: root 0-300, client 10-290, pay 20-280, publish 30-40,
//! consume 50-150, reserve 60-100. Another trace (`nightly-reindex`) has one span.

use std::collections::BTreeSet;

use sextant_otlp_proto::proto as pb;

use crate::flat::{self, arr, assert_attr, b, f, i, s, FlatSpan};
use crate::{self as e2e, Server};

/// What the scenario's sender reports and the checks expect.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The three services, in call order.
    pub services: [String; 3],
    /// Version of every scope (scopes are named `e2e.<service>`).
    pub scope_version: String,
    /// Value of the `scope.owner` scope attribute.
    pub scope_owner: String,
    /// `telemetry.sdk.language` of the resource.
    pub sdk_language: String,
    /// `deployment.environment` of the resource.
    pub environment: String,
    /// The root's `order.id`.
    pub order_id: String,
    pub trace_id: String,
    pub other_trace_id: String,
    pub base_ns: u64,
    /// The spans of the trace as the SDK encoded them.
    pub sent: Vec<FlatSpan>,
}

/// Checks the read-back trace against the scenario, explicitly (independent of the recording).
pub fn check_explicitly(spans: &[FlatSpan], sent: &Expect) {
    assert_eq!(spans.len(), 6, "expected 6 spans, got {}", spans.len());
    let base_ns = sent.base_ns;
    let [fe, co, inv] = [&sent.services[0], &sent.services[1], &sent.services[2]];
    let ms = |n: u64| base_ns + n * 1_000_000;
    for sp in spans {
        assert_eq!(
            sp.trace_id_hex(),
            sent.trace_id,
            "span {} has another trace id",
            sp.span.name
        );
    }
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service()).collect();
    let expected: BTreeSet<&str> = sent.services.iter().map(|s| s.as_str()).collect();
    assert_eq!(services, expected, "services of the trace");

    let root = flat::find(spans, "GET /checkout");
    let call = flat::find(spans, "POST checkout/pay");
    let pay = flat::find(spans, "POST /pay");
    let publish = flat::find(spans, "orders publish");
    let consume = flat::find(spans, "orders process");
    let reserve = flat::find(spans, "reserve stock");

    // Services, scopes, resources.
    for (sp, svc) in [
        (root, fe),
        (call, fe),
        (pay, co),
        (publish, co),
        (consume, inv),
        (reserve, inv),
    ] {
        let svc = svc.as_str();
        assert_eq!(sp.service(), svc, "service of {}", sp.span.name);
        assert_eq!(
            sp.scope.name,
            format!("e2e.{svc}"),
            "scope of {}",
            sp.span.name
        );
        assert_eq!(
            sp.scope.version, sent.scope_version,
            "scope version of {}",
            sp.span.name
        );
        assert_attr(
            "scope",
            &sp.scope.attributes,
            "scope.owner",
            &s(&sent.scope_owner),
        );
        let what = format!("resource of {}", sp.span.name);
        assert_attr(
            &what,
            &sp.resource.attributes,
            "deployment.environment",
            &s(&sent.environment),
        );
        assert_attr(
            &what,
            &sp.resource.attributes,
            "service.instance.id",
            &s(&format!("{svc}-1")),
        );
        assert_attr(&what, &sp.resource.attributes, "host.cores", &i(2));
        assert_attr(
            &what,
            &sp.resource.attributes,
            "telemetry.sdk.language",
            &s(&sent.sdk_language),
        );
    }

    // Parentage across the three services.
    assert!(root.span.parent_span_id.is_empty(), "root has a parent");
    let parent = |sp: &FlatSpan| hex::encode(&sp.span.parent_span_id);
    assert_eq!(parent(call), root.span_id_hex(), "client's parent");
    assert_eq!(
        parent(pay),
        call.span_id_hex(),
        "checkout server's parent (propagated)"
    );
    assert_eq!(parent(publish), pay.span_id_hex(), "producer's parent");
    assert_eq!(
        parent(consume),
        publish.span_id_hex(),
        "consumer's parent (propagated)"
    );
    assert_eq!(
        parent(reserve),
        consume.span_id_hex(),
        "internal child's parent"
    );

    // Kinds.
    use pb::span::SpanKind as K;
    for (sp, kind) in [
        (root, K::Server),
        (call, K::Client),
        (pay, K::Server),
        (publish, K::Producer),
        (consume, K::Consumer),
        (reserve, K::Internal),
    ] {
        assert_eq!(sp.span.kind, kind as i32, "kind of {}", sp.span.name);
    }

    // Times.
    for (sp, start, end) in [
        (root, 0, 300),
        (call, 10, 290),
        (pay, 20, 280),
        (publish, 30, 40),
        (consume, 50, 150),
        (reserve, 60, 100),
    ] {
        assert_eq!(
            sp.span.start_time_unix_nano,
            ms(start),
            "start of {}",
            sp.span.name
        );
        assert_eq!(
            sp.span.end_time_unix_nano,
            ms(end),
            "end of {}",
            sp.span.name
        );
    }

    // Attributes of every type.
    let a = &root.span.attributes;
    assert_attr("root", a, "http.route", &s("/checkout"));
    assert_attr("root", a, "order.id", &s(&sent.order_id));
    assert_attr("root", a, "cart.express", &b(true));
    assert_attr("root", a, "cart.items", &i(3));
    assert_attr("root", a, "cart.total", &f(42.5));
    assert_attr("root", a, "big.int", &i(i64::MAX));
    assert_attr("root", a, "neg.int", &i(-17));
    assert_attr("root", a, "cart.skus", &arr(vec![s("sku-1"), s("sku-2")]));
    assert_attr("root", a, "cart.flags", &arr(vec![b(true), b(false)]));
    assert_attr("root", a, "cart.qty", &arr(vec![i(1), i(2), i(-3)]));
    assert_attr("root", a, "cart.prices", &arr(vec![f(9.99), f(0.5)]));
    assert_attr("root", a, "unicode", &s("größe ✓ 日本"));
    assert_attr(
        "reserve",
        &reserve.span.attributes,
        "stock.reserved",
        &b(true),
    );

    // Events.
    assert_eq!(
        root.span.events.len(),
        1,
        "root events: {:?}",
        root.span.events
    );
    let ev = &root.span.events[0];
    assert_eq!(ev.name, "cache.miss");
    assert_eq!(ev.time_unix_nano, ms(5));
    assert_attr("event", &ev.attributes, "cache.key", &s("cart:42"));
    assert_attr("event", &ev.attributes, "cache.hit", &b(false));
    assert_attr("event", &ev.attributes, "cache.tries", &i(2));
    assert_attr("event", &ev.attributes, "cache.ratio", &f(0.25));
    assert_eq!(
        pay.span.events.len(),
        1,
        "pay events: {:?}",
        pay.span.events
    );
    assert_eq!(pay.span.events[0].name, "exception");

    // Status.
    use pb::trace::status::StatusCode as C;
    let status = |sp: &FlatSpan| sp.span.status.clone().unwrap_or_default();
    assert_eq!(status(pay).code, C::Error as i32, "status of POST /pay");
    assert_eq!(status(pay).message, "card declined by issuer");
    assert_eq!(status(consume).code, C::Ok as i32, "status of the consumer");
    assert_eq!(status(root).code, C::Unset as i32, "status of the root");

    // Links.
    assert_eq!(
        consume.span.links.len(),
        2,
        "links: {:?}",
        consume.span.links
    );
    let l0 = &consume.span.links[0];
    assert_eq!(
        hex::encode(&l0.trace_id),
        sent.other_trace_id,
        "cross-trace link's trace"
    );
    assert_attr("link", &l0.attributes, "link.reason", &s("reindex"));
    assert_attr("link", &l0.attributes, "link.weight", &i(7));
    let l1 = &consume.span.links[1];
    assert_eq!(
        hex::encode(&l1.trace_id),
        sent.trace_id,
        "in-trace link's trace"
    );
    assert_eq!(
        hex::encode(&l1.span_id),
        root.span_id_hex(),
        "in-trace link's span"
    );
}

/// Reads the trace back through every form of the Tempo API and searches for it.
pub async fn check_all(server: &Server, sent: &Expect) {
    let expected = sent.sent.clone();
    assert_eq!(expected.len(), 6);

    // v1 JSON.
    let (value, data) = e2e::wait_for_trace(server, &sent.trace_id, 6).await;
    let problems = e2e::check_otlp_json_conventions(&value);
    assert!(
        problems.is_empty(),
        "/api/traces JSON breaks OTLP/JSON rules:\n{}",
        problems.join("\n")
    );
    let got = flat::flatten(&data.resource_spans);
    flat::assert_same("/api/traces (JSON)", &expected, &got);
    check_explicitly(&got, sent);

    // Upper-case ids are the same trace.
    let upper = e2e::get_json(&format!(
        "{}/api/traces/{}",
        server.query_url(),
        sent.trace_id.to_uppercase()
    ))
    .await;
    assert_eq!(
        e2e::count_spans(&e2e::decode_batches(&upper)),
        6,
        "the trace by its upper-case id"
    );

    // v2 JSON.
    let v2 = e2e::get_json(&format!(
        "{}/api/v2/traces/{}",
        server.query_url(),
        sent.trace_id
    ))
    .await;
    let problems = e2e::check_otlp_json_conventions(&v2);
    assert!(
        problems.is_empty(),
        "/api/v2/traces JSON breaks OTLP/JSON rules:\n{}",
        problems.join("\n")
    );
    let got = flat::flatten(&e2e::decode_v2(&v2).resource_spans);
    flat::assert_same("/api/v2/traces (JSON)", &expected, &got);

    // Protobuf.
    let proto = e2e::get_trace_protobuf(server, &sent.trace_id).await;
    let got = flat::flatten(&proto.resource_spans);
    flat::assert_same("/api/traces (protobuf)", &expected, &got);
    check_explicitly(&got, sent);

    // The other trace is its own.
    let (_, other) = e2e::wait_for_trace(server, &sent.other_trace_id, 1).await;
    assert_eq!(e2e::count_spans(&other), 1, "the linked trace");

    // Absent trace: 404.
    let absent = e2e::get(&format!(
        "{}/api/traces/{}",
        server.query_url(),
        "0123456789abcdef0123456789abcdef"
    ))
    .await;
    assert_eq!(absent.status, 404, "absent trace: {}", absent.text());

    check_search(server, sent).await;
    check_jaeger(server, sent).await;
    check_tags(server, sent).await;
}

fn strings(value: &serde_json::Value, key: &str) -> BTreeSet<String> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("no `{key}` array in {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("`{key}` holds a non-string {v}"))
                .to_string()
        })
        .collect()
}

/// The tag endpoints Grafana's query builder uses know the trace's names and values.
pub async fn check_tags(server: &Server, sent: &Expect) {
    let q = server.query_url();
    let echo = e2e::get(&format!("{q}/api/echo")).await;
    assert_eq!(
        (echo.status, echo.text().trim()),
        (200, "echo"),
        "/api/echo"
    );

    let names = strings(
        &e2e::get_json(&format!("{q}/api/search/tags")).await,
        "tagNames",
    );
    for tag in [
        "service.name",
        "order.id",
        "cart.items",
        "deployment.environment",
    ] {
        assert!(
            names.contains(tag),
            "/api/search/tags lacks {tag:?}: {names:?}"
        );
    }
    let span_names = strings(
        &e2e::get_json(&format!("{q}/api/search/tags?scope=span")).await,
        "tagNames",
    );
    assert!(
        span_names.contains("order.id"),
        "span-scoped tags lack order.id: {span_names:?}"
    );
    assert!(
        !span_names.contains("deployment.environment"),
        "span-scoped tags list a resource attribute: {span_names:?}"
    );

    let v2 = e2e::get_json(&format!("{q}/api/v2/search/tags")).await;
    let scopes = v2["scopes"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v2/search/tags has no scopes: {v2}"));
    let scope = |name: &str| -> BTreeSet<String> {
        let s = scopes
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("/api/v2/search/tags has no {name:?} scope: {v2}"));
        strings(s, "tags")
    };
    assert!(
        scope("resource").contains("service.name"),
        "v2 resource tags: {v2}"
    );
    assert!(
        scope("resource").contains("deployment.environment"),
        "v2 resource tags: {v2}"
    );
    assert!(scope("span").contains("order.id"), "v2 span tags: {v2}");

    let values = strings(
        &e2e::get_json(&format!("{q}/api/search/tag/service.name/values")).await,
        "tagValues",
    );
    for svc in &sent.services {
        assert!(
            values.contains(svc),
            "service.name values lack {svc:?}: {values:?}"
        );
    }
    let values = strings(
        &e2e::get_json(&format!("{q}/api/search/tag/order.id/values")).await,
        "tagValues",
    );
    assert!(
        values.contains(&sent.order_id),
        "order.id values lack {:?}: {values:?}",
        sent.order_id
    );

    let v2 = e2e::get_json(&format!(
        "{q}/api/v2/search/tag/resource.service.name/values"
    ))
    .await;
    let typed = v2["tagValues"]
        .as_array()
        .unwrap_or_else(|| panic!("no tagValues: {v2}"));
    for svc in &sent.services {
        assert!(
            typed
                .iter()
                .any(|v| v["type"] == "string" && v["value"] == svc.as_str()),
            "v2 resource.service.name values lack {{type: string, value: {svc}}}: {v2}"
        );
    }
    let v2 = e2e::get_json(&format!("{q}/api/v2/search/tag/span.cart.items/values")).await;
    let typed = v2["tagValues"]
        .as_array()
        .unwrap_or_else(|| panic!("no tagValues: {v2}"));
    assert!(
        typed
            .iter()
            .any(|v| v["type"] == "int" && v["value"] == "3"),
        "v2 span.cart.items values lack {{type: int, value: \"3\"}}: {v2}"
    );
}

/// Searches that must and must not find the trace.
pub async fn check_search(server: &Server, sent: &Expect) {
    let id = &sent.trace_id;
    let has = |ids: &[String]| ids.iter().any(|t| e2e::same_trace_id(t, id));
    let tags = |t: &str| format!("tags={}", e2e::urlencode(t));

    for (query, why) in [
        (
            tags(&format!("service.name={}", sent.services[0])),
            "root service",
        ),
        (
            tags(&format!("service.name={}", sent.services[2])),
            "a non-root service",
        ),
        (
            tags(&format!("order.id={}", sent.order_id)),
            "a string span attribute",
        ),
        (tags("cart.items=3"), "an int span attribute"),
        (tags("name=\"orders process\""), "a span name"),
        (tags("status=error"), "status=error"),
        (
            tags(&format!("deployment.environment={}", sent.environment)),
            "a resource attribute",
        ),
        (
            tags(&format!(
                "service.name={} payment.method=card",
                sent.services[1]
            )),
            "two tags on one span",
        ),
        (
            "minDuration=250ms".to_string(),
            "minDuration below the root's 300ms",
        ),
        (
            "minDuration=299ms&maxDuration=301ms".to_string(),
            "min and max around 300ms",
        ),
        (
            format!(
                "{}&minDuration=100ms",
                tags(&format!("service.name={}", sent.services[0]))
            ),
            "tag and minDuration",
        ),
    ] {
        let (ids, value) = e2e::search(server, &query).await;
        assert!(
            has(&ids),
            "search by {why} ({query}) does not find {id}: {value}"
        );
    }

    for (query, why) in [
        ("minDuration=1s".to_string(), "minDuration above every span"),
        (tags("service.name=nonexistent"), "an unknown service"),
        (tags("order.id=ord-0000"), "a wrong attribute value"),
        (
            tags(&format!(
                "service.name={} payment.method=card",
                sent.services[0]
            )),
            "tags of two different spans",
        ),
        (
            "maxDuration=5ms".to_string(),
            "maxDuration below every span of the trace",
        ),
    ] {
        let (ids, value) = e2e::search(server, &query).await;
        assert!(
            !has(&ids),
            "search by {why} ({query}) wrongly finds {id}: {value}"
        );
    }

    // The hit's summary.
    let (_, value) =
        e2e::search(server, &tags(&format!("service.name={}", sent.services[0]))).await;
    let hit = value["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| e2e::same_trace_id(t["traceID"].as_str().unwrap_or(""), id))
        .unwrap_or_else(|| panic!("no hit for {id}: {value}"))
        .clone();
    assert_eq!(
        hit["rootServiceName"],
        sent.services[0].as_str(),
        "rootServiceName: {hit}"
    );
    assert_eq!(
        hit["rootTraceName"], "GET /checkout",
        "rootTraceName: {hit}"
    );
    let base_ns = sent.base_ns;
    assert_eq!(
        hit["startTimeUnixNano"],
        serde_json::Value::String(base_ns.to_string()),
        "startTimeUnixNano (a string of the root's start): {hit}"
    );
    assert_eq!(hit["durationMs"].as_u64(), Some(300), "durationMs: {hit}");
    assert!(
        hit["spanSets"].is_array() || hit["spanSet"].is_object(),
        "no spanSets: {hit}"
    );

    // `limit` is honoured: two traces in the store (the scenario and the linked one).
    let (ids, value) = e2e::search(server, "limit=1").await;
    assert_eq!(ids.len(), 1, "limit=1 gave {}: {value}", ids.len());

    // TraceQL finds the trace too (real SDK data through the whole path), and a query that
    // matches nothing finds nothing.
    let q = |t: &str| format!("q={}", e2e::urlencode(t));
    for (query, why) in [
        (
            q(&format!(
                "{{ resource.service.name = \"{}\" }} >> {{ status = error }}",
                sent.services[0]
            )),
            "an error below the root service (TraceQL)",
        ),
        (
            q("{ span.cart.items = 3 && kind = server }"),
            "an int attribute and a kind (TraceQL)",
        ),
    ] {
        let (ids, value) = e2e::search(server, &query).await;
        assert!(has(&ids), "{why}: {query} did not find {id}: {value}");
    }
    let (ids, value) = e2e::search(server, &q("{ span.cart.items = 4 }")).await;
    assert!(!has(&ids), "{{ span.cart.items = 4 }} found {id}: {value}");
}

/// The Jaeger query API on its own port finds the same trace: services, search by service,
/// trace by id with one process per service and the parent links as CHILD_OF references.
pub async fn check_jaeger(server: &Server, sent: &Expect) {
    let j = server.jaeger_url();
    let services = e2e::get_json(&format!("{j}/api/services")).await;
    for s in &sent.services {
        assert!(
            services["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == s.as_str())),
            "/api/services lacks {s}: {services}"
        );
    }
    let found = e2e::get_json(&format!(
        "{j}/api/traces?service={}&limit=20",
        sent.services[0]
    ))
    .await;
    let ids: Vec<&str> = found["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|t| t["traceID"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ids.iter().any(|t| e2e::same_trace_id(t, &sent.trace_id)),
        "Jaeger search by service {} lacks {}: {found}",
        sent.services[0],
        sent.trace_id
    );
    let trace = e2e::get_json(&format!("{j}/api/traces/{}", sent.trace_id)).await;
    let t = &trace["data"][0];
    let spans = t["spans"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(spans, 6, "Jaeger trace by id: {trace}");
    let processes = t["processes"].as_object().map(|p| p.len()).unwrap_or(0);
    assert_eq!(processes, 3, "one process per service: {trace}");
    let child_of = t["spans"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|span| {
                    span["references"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["refType"] == "CHILD_OF"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        child_of, 5,
        "every span but the root has a CHILD_OF reference: {trace}"
    );
}
