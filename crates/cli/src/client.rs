//! Client commands against the query API: `sextant trace` (a tree) and `sextant search` (a table).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{ResourceSpans, Span};
use sextant_otlp_proto::TraceId;

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Trace id (hex; shorter ids are left-padded with zeros)
    id: String,
    /// Query API base URL
    #[arg(long, env = "SEXTANT_URL", default_value = "http://127.0.0.1:3200")]
    url: String,
    /// Print the trace as OTLP/JSON instead of a tree
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// A TraceQL query, e.g. '{ resource.service.name = "api" && status = error }'
    query: Option<String>,
    /// Query API base URL
    #[arg(long, env = "SEXTANT_URL", default_value = "http://127.0.0.1:3200")]
    url: String,
    /// Conditions in logfmt, all on one span: 'service.name=api http.status_code=500 name="GET /x"'
    #[arg(long, default_value = "")]
    tags: String,
    /// Spans at least this long (Go duration: 100ms, 1.5s)
    #[arg(long)]
    min_duration: Option<String>,
    /// Spans at most this long
    #[arg(long)]
    max_duration: Option<String>,
    /// At most this many traces
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Window start, unix seconds
    #[arg(long)]
    start: Option<u64>,
    /// Window end, unix seconds
    #[arg(long)]
    end: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct QueryRangeArgs {
    /// A TraceQL metrics query, e.g. '{ status = error } | rate() by (resource.service.name)'
    query: String,
    /// Query API base URL
    #[arg(long, env = "SEXTANT_URL", default_value = "http://127.0.0.1:3200")]
    url: String,
    /// How far back to look (a duration: 15m, 1h, 7d)
    #[arg(long, default_value = "1h")]
    since: String,
    /// The step between points (a duration: 15s, 1m; or seconds); default: the server's
    #[arg(long)]
    step: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ServicesArgs {
    /// Query API base URL
    #[arg(long, env = "SEXTANT_URL", default_value = "http://127.0.0.1:3200")]
    url: String,
}

#[derive(clap::Args, Debug)]
pub struct DepsArgs {
    /// Jaeger query API base URL
    #[arg(
        long,
        env = "SEXTANT_JAEGER_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    jaeger_url: String,
    /// How far back to look (a duration: 1h, 30m, 7d)
    #[arg(long, default_value = "24h")]
    lookback: String,
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

async fn get_json(url: &str, query: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
    let resp = http_client()?
        .get(url)
        .query(query)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.text().await.context("reading the response")?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let id = TraceId::parse_hex(&args.id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = format!("{}/api/traces/{id}", args.url.trim_end_matches('/'));
    let doc = get_json(&url, &[]).await?;
    let batches = doc
        .get("batches")
        .cloned()
        .unwrap_or(serde_json::Value::Array(vec![]));
    let wrapped = serde_json::json!({ "resourceSpans": batches });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&wrapped)?);
        return Ok(());
    }
    let data = sextant_otlp_proto::json::decode_traces_data(wrapped.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("the server's trace is not OTLP/JSON: {e}"))?;
    print!("{}", render_tree(id, &data.resource_spans));
    Ok(())
}

struct Node<'a> {
    span: &'a Span,
    service: &'a str,
}

/// One printed line: label, start offset, duration, bar.
type Line = (String, String, String, String);

struct Tree<'t, 'a> {
    nodes: &'t [Node<'a>],
    children: &'t HashMap<&'a [u8], Vec<usize>>,
    start: u64,
    total: u64,
}

impl Tree<'_, '_> {
    fn walk(&self, i: usize, prefix: &str, last: bool, top: bool, lines: &mut Vec<Line>) {
        const WIDTH: u64 = 40;
        let n = &self.nodes[i];
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let error = n.span.status.as_ref().is_some_and(|s| s.code == 2);
        let label = format!(
            "{prefix}{branch}{} ({}){}",
            n.span.name,
            n.service,
            if error { " !error" } else { "" }
        );
        let offset = n.span.start_time_unix_nano.saturating_sub(self.start);
        let dur = n
            .span
            .end_time_unix_nano
            .saturating_sub(n.span.start_time_unix_nano);
        let from = (offset * WIDTH / self.total).min(WIDTH - 1);
        let len = ((dur * WIDTH).div_ceil(self.total)).clamp(1, WIDTH - from);
        let bar = format!(
            "{}{}{}",
            " ".repeat(from as usize),
            "█".repeat(len as usize),
            " ".repeat((WIDTH - from - len) as usize)
        );
        lines.push((label, format!("+{}", fmt_ns(offset)), fmt_ns(dur), bar));
        let child_prefix = if top {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        if let Some(kids) = self.children.get(n.span.span_id.as_slice()) {
            for (k, c) in kids.iter().enumerate() {
                self.walk(*c, &child_prefix, k + 1 == kids.len(), false, lines);
            }
        }
    }
}

/// Renders a trace as an indented tree: name (service), start offset, duration, a bar.
pub fn render_tree(id: TraceId, resource_spans: &[ResourceSpans]) -> String {
    let mut nodes: Vec<Node<'_>> = Vec::new();
    for rs in resource_spans {
        let service = attr::service_name(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                nodes.push(Node { span, service });
            }
        }
    }
    if nodes.is_empty() {
        return format!("trace {id}: no spans\n");
    }
    nodes.sort_by_key(|n| n.span.start_time_unix_nano);
    let start = nodes
        .iter()
        .map(|n| n.span.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = nodes
        .iter()
        .map(|n| n.span.end_time_unix_nano)
        .max()
        .unwrap_or(start);
    let total = end.saturating_sub(start).max(1);
    let ids: HashSet<&[u8]> = nodes.iter().map(|n| n.span.span_id.as_slice()).collect();
    let mut children: HashMap<&[u8], Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let parent = n.span.parent_span_id.as_slice();
        if parent.iter().all(|b| *b == 0) || !ids.contains(parent) {
            roots.push(i);
        } else {
            children.entry(parent).or_default().push(i);
        }
    }
    let services: HashSet<&str> = nodes.iter().map(|n| n.service).collect();
    let mut out = format!(
        "trace {id}  {} spans  {} services  {}\n",
        nodes.len(),
        services.len(),
        fmt_ns(total)
    );
    let tree = Tree {
        nodes: &nodes,
        children: &children,
        start,
        total,
    };
    let mut lines: Vec<Line> = Vec::new();
    for r in &roots {
        tree.walk(*r, "", true, true, &mut lines);
    }
    let w0 = lines
        .iter()
        .map(|l| l.0.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let w1 = lines.iter().map(|l| l.1.len()).max().unwrap_or(0).max(5);
    let w2 = lines.iter().map(|l| l.2.len()).max().unwrap_or(0).max(8);
    out.push_str(&format!(
        "{:<w0$}  {:>w1$}  {:>w2$}  |{}|\n",
        "SPAN",
        "START",
        "DURATION",
        " ".repeat(40)
    ));
    for (label, off, dur, bar) in lines {
        let pad = w0 - label.chars().count();
        out.push_str(&format!(
            "{label}{}  {off:>w1$}  {dur:>w2$}  |{bar}|\n",
            " ".repeat(pad)
        ));
    }
    out
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}µs", ns as f64 / 1e3)
    }
}

pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/search", args.url.trim_end_matches('/'));
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(q) = &args.query {
        query.push(("q", q.clone()));
    }
    if !args.tags.is_empty() {
        query.push(("tags", args.tags.clone()));
    }
    if let Some(v) = &args.min_duration {
        query.push(("minDuration", v.clone()));
    }
    if let Some(v) = &args.max_duration {
        query.push(("maxDuration", v.clone()));
    }
    if let Some(v) = args.start {
        query.push(("start", v.to_string()));
    }
    if let Some(v) = args.end {
        query.push(("end", v.to_string()));
    }
    let doc = get_json(&url, &query).await?;
    let traces = doc
        .get("traces")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    let mut rows = vec![[
        "TRACE ID".to_string(),
        "ROOT SERVICE".to_string(),
        "ROOT SPAN".to_string(),
        "START (UTC)".to_string(),
        "DURATION".to_string(),
        "MATCHED".to_string(),
    ]];
    for t in &traces {
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let start_ns: u64 = s("startTimeUnixNano").parse().unwrap_or(0);
        let start = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(start_ns))
            .to_string();
        let duration_ms = t.get("durationMs").and_then(|v| v.as_u64()).unwrap_or(0);
        let matched: u64 = t
            .get("spanSets")
            .and_then(|v| v.as_array())
            .map(|sets| {
                sets.iter()
                    .filter_map(|s| s.get("matched").and_then(|m| m.as_u64()))
                    .sum()
            })
            .unwrap_or(0);
        rows.push([
            s("traceID"),
            s("rootServiceName"),
            s("rootTraceName"),
            start,
            format!("{duration_ms}ms"),
            matched.to_string(),
        ]);
    }
    print!("{}", render_table(&rows));
    println!("{} trace(s)", traces.len());
    Ok(())
}

pub async fn query_range(args: QueryRangeArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/metrics/query_range", args.url.trim_end_matches('/'));
    let mut query = vec![("q", args.query.clone()), ("since", args.since.clone())];
    if let Some(step) = &args.step {
        query.push(("step", step.clone()));
    }
    let doc = get_json(&url, &query).await?;
    print!("{}", render_series(&doc));
    Ok(())
}

/// Renders a `query_range` answer: per series its labels, then `time  value` rows.
pub fn render_series(doc: &serde_json::Value) -> String {
    let series = doc
        .get("series")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    if series.is_empty() {
        return "no series in this window\n".to_string();
    }
    let mut out = String::new();
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let labels = match s.get("promLabels").and_then(|p| p.as_str()) {
            Some(p) => p.to_string(),
            None => {
                let pairs: Vec<String> = s
                    .get("labels")
                    .and_then(|l| l.as_array())
                    .map(|ls| {
                        ls.iter()
                            .map(|l| {
                                let key = l.get("key").and_then(|k| k.as_str()).unwrap_or("?");
                                let value = l
                                    .get("value")
                                    .and_then(|v| v.as_object())
                                    .and_then(|o| o.values().next())
                                    .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
                                    .unwrap_or_default();
                                format!("{key}={value:?}")
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                format!("{{{}}}", pairs.join(", "))
            }
        };
        out.push_str(&labels);
        out.push('\n');
        let samples = s
            .get("samples")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for p in &samples {
            let ms = match p.get("timestampMs") {
                Some(serde_json::Value::String(t)) => t.parse::<u64>().unwrap_or(0),
                Some(v) => v.as_u64().unwrap_or(0),
                None => 0,
            };
            let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
            // Protobuf JSON leaves a zero value out, and writes NaN and infinities as strings.
            let value = match p.get("value") {
                None => 0.0,
                Some(serde_json::Value::String(v)) => v.parse::<f64>().unwrap_or(f64::NAN),
                Some(v) => v.as_f64().unwrap_or(f64::NAN),
            };
            out.push_str(&format!("  {time}  {value}\n"));
        }
    }
    out
}

/// Renders rows as aligned columns; the first row is the header.
pub fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - c.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_otlp_proto::proto::{Resource, ScopeSpans};

    fn span(id: u8, parent: u8, name: &str, start: u64, end: u64) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: name.into(),
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        }
    }

    #[test]
    fn tree_nests_children_under_parents() {
        let rs = |svc: &str, spans| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr::kv_str("service.name", svc)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        };
        let data = vec![
            rs("web", vec![span(1, 0, "page", 0, 100_000_000)]),
            rs(
                "api",
                vec![
                    span(2, 1, "GET /users", 10_000_000, 60_000_000),
                    span(4, 1, "GET /cart", 70_000_000, 90_000_000),
                ],
            ),
            rs("db", vec![span(3, 2, "SELECT", 20_000_000, 30_000_000)]),
        ];
        let text = render_tree(TraceId([1; 16]), &data);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("4 spans  3 services  100.00ms"), "{text}");
        assert!(lines[2].starts_with("page (web)"), "{text}");
        assert!(lines[3].starts_with("├─ GET /users (api)"), "{text}");
        assert!(lines[4].starts_with("│  └─ SELECT (db)"), "{text}");
        assert!(lines[5].starts_with("└─ GET /cart (api)"), "{text}");
        assert!(
            lines[4].contains("+20.00ms") && lines[4].contains("10.00ms"),
            "{text}"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            ["A".to_string(), "LONG HEADER".to_string()],
            ["value".to_string(), "x".to_string()],
        ];
        assert_eq!(render_table(&rows), "A      LONG HEADER\nvalue  x\n");
    }
}

pub async fn services(args: ServicesArgs) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/search/tag/service.name/values",
        args.url.trim_end_matches('/')
    );
    let doc = get_json(&url, &[]).await?;
    let mut names: Vec<String> = doc
        .get("tagValues")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in &names {
        println!("{n}");
    }
    eprintln!("{} service(s)", names.len());
    Ok(())
}

pub async fn deps(args: DepsArgs) -> anyhow::Result<()> {
    let lookback = humantime::parse_duration(&args.lookback).map_err(|e| {
        anyhow::anyhow!(
            "--lookback {:?} is not a duration like 1h or 30m: {e}",
            args.lookback
        )
    })?;
    let url = format!("{}/api/dependencies", args.jaeger_url.trim_end_matches('/'));
    let end_ms = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let doc = get_json(
        &url,
        &[
            ("endTs", end_ms.to_string()),
            ("lookback", lookback.as_millis().to_string()),
        ],
    )
    .await?;
    let edges = doc
        .get("data")
        .and_then(|d| d.as_array())
        .cloned()
        .unwrap_or_default();
    print!("{}", render_deps(&edges));
    Ok(())
}

/// Renders `[{parent, child, callCount}]` as a text graph: each caller, then what it calls.
pub fn render_deps(edges: &[serde_json::Value]) -> String {
    let mut by_parent: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for e in edges {
        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let calls = e.get("callCount").and_then(|v| v.as_u64()).unwrap_or(0);
        by_parent
            .entry(s("parent"))
            .or_default()
            .push((s("child"), calls));
    }
    if by_parent.is_empty() {
        return "no calls between services in this window\n".to_string();
    }
    let width = by_parent
        .values()
        .flatten()
        .map(|(c, _)| c.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (parent, mut children) in by_parent {
        children.sort();
        out.push_str(&format!("{parent}\n"));
        for (i, (child, calls)) in children.iter().enumerate() {
            let branch = if i + 1 == children.len() {
                "└─▶"
            } else {
                "├─▶"
            };
            let pad = " ".repeat(width - child.chars().count());
            out.push_str(&format!("  {branch} {child}{pad}  {calls} call(s)\n"));
        }
    }
    out
}

#[cfg(test)]
mod deps_tests {
    use super::*;

    #[test]
    fn series_render_as_blocks() {
        let doc = serde_json::json!({"series": [
            {"labels": [{"key": "resource.service.name", "value": {"stringValue": "api"}}],
             "samples": [{"timestampMs": "1700000040000", "value": 0.5},
                         {"timestampMs": "1700000100000"}]},
            {"labels": [{"key": "p", "value": {"doubleValue": 0.9}}],
             "samples": [{"timestampMs": "1700000040000", "value": 1.25}]}
        ]});
        assert_eq!(
            render_series(&doc),
            "{resource.service.name=\"api\"}\n  2023-11-14T22:14:00Z  0.5\n  \
             2023-11-14T22:15:00Z  0\n\n{p=\"0.9\"}\n  2023-11-14T22:14:00Z  1.25\n"
        );
        assert_eq!(
            render_series(&serde_json::json!({"series": []})),
            "no series in this window\n"
        );
    }

    #[test]
    fn deps_render_as_a_tree_per_caller() {
        let edges = vec![
            serde_json::json!({"parent": "frontend", "child": "api", "callCount": 2}),
            serde_json::json!({"parent": "api", "child": "db", "callCount": 1}),
            serde_json::json!({"parent": "frontend", "child": "auth", "callCount": 5}),
        ];
        assert_eq!(
            render_deps(&edges),
            "api\n  └─▶ db    1 call(s)\nfrontend\n  ├─▶ api   2 call(s)\n  └─▶ auth  5 call(s)\n"
        );
        assert_eq!(
            render_deps(&[]),
            "no calls between services in this window\n"
        );
    }
}
