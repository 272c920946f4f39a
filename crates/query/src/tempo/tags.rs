//! Tag names and values, as Grafana's query builder asks for them:
//! * `GET /api/search/tags?scope=` → `{"tagNames": [...]}`
//! * `GET /api/v2/search/tags?scope=&q=&start=&end=` →
//!   `{"scopes": [{"name": "resource", "tags": [...]}, ...]}`
//! * `GET /api/search/tag/{tag}/values` → `{"tagValues": ["a", "b"]}` (any scope)
//! * `GET /api/v2/search/tag/{scoped.tag}/values?q=&start=&end=&limit=` →
//!   `{"tagValues": [{"type": "string", "value": "a"}]}`
//!
//! Scopes are `resource`, `span`, `intrinsic`, `event`, `link`, `instrumentation` and `all`
//! (or none: every scope). The store indexes resource and span attributes; names and values of
//! event, link and instrumentation-scope attributes are found by scanning the newest
//! [`SCAN_TRACE_LIMIT`] traces of the window (`start`/`end`), and a scope with no name found is
//! left out of an `all` answer.
//!
//! `q` (v2 only) narrows the answer to the spans matching it, the way Tempo's autocomplete
//! filtering does: the query may be incomplete (`{ resource.service.name = "api" &&
//! span.http.method = `), and only its complete conditions are used (see
//! [`traceql::autocomplete_filter`]); when none can be used (`||`, several spansets, nothing
//! complete) the answer is unfiltered. A filtered answer scans the newest traces of the window
//! (`start`/`end`) with the conditions pushed down, reading at most [`SCAN_TRACE_LIMIT`] of the
//! traces that pass them. Intrinsic values found that way: `name`, `status`, `statusMessage`,
//! `kind` (also `span:`-prefixed) and `event:name`; unfiltered, `status` and `kind` list their
//! keywords and the other intrinsics nothing (the store keeps no index of them). `limit` caps
//! the number of values (default and most: the store's 1000 per key).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use sextant_otlp_proto::proto::any_value::Value as Pv;
use sextant_otlp_proto::proto::{
    AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, Span,
};
use sextant_otlp_proto::{SpanId, TraceId};
use sextant_store::{
    ScanStats, StoreError, TagScope, TagValue, TimeWindow, TraceReader, MAX_VALUES_PER_TAG,
};

use crate::error::QueryError;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::traceql::{self, FilterExpr, Scope as AttrScope, SpanKind, SpansetExpr, StatusCode};
use crate::QueryState;

/// At most this many traces (newest first) are read by a tag scan: the traces passing the
/// pushed-down conditions of `q`, or, without `q`, the traces searched for event, link and
/// instrumentation attributes.
pub const SCAN_TRACE_LIMIT: usize = 1000;

/// Tempo's intrinsic tag names, as its `/api/search/tags?scope=intrinsic` lists them.
pub const INTRINSICS: &[&str] = &[
    "duration",
    "event:name",
    "kind",
    "name",
    "rootName",
    "rootServiceName",
    "span:duration",
    "span:kind",
    "span:name",
    "span:status",
    "span:statusMessage",
    "status",
    "statusMessage",
    "trace:duration",
    "trace:rootName",
    "trace:rootService",
    "traceDuration",
];

/// Values of the `status` intrinsic.
const STATUS_VALUES: &[&str] = &["error", "ok", "unset"];
/// Values of the `kind` intrinsic.
const KIND_VALUES: &[&str] = &[
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];
/// Scopes the store does not index (their names are found by scanning), with what TraceQL
/// calls them.
const UNINDEXED_SCOPES: &[(&str, AttrScope)] = &[
    ("event", AttrScope::Event),
    ("link", AttrScope::Link),
    ("instrumentation", AttrScope::Instrumentation),
];

/// The `scope` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeParam {
    All,
    Attributes(TagScope),
    Intrinsic,
    Unindexed(&'static str),
}

fn scope_param(params: &Params) -> Result<ScopeParam, QueryError> {
    match params::get(params, "scope") {
        None | Some("all") => Ok(ScopeParam::All),
        Some("resource") => Ok(ScopeParam::Attributes(TagScope::Resource)),
        Some("span") => Ok(ScopeParam::Attributes(TagScope::Span)),
        Some("intrinsic") => Ok(ScopeParam::Intrinsic),
        Some(other) => UNINDEXED_SCOPES
            .iter()
            .find(|(s, _)| *s == other)
            .map(|(s, _)| ScopeParam::Unindexed(s))
            .ok_or_else(|| {
                QueryError::InvalidScope(format!(
                    "unknown scope {other:?}: expected resource, span, intrinsic, event, link, \
                     instrumentation or all"
                ))
            }),
    }
}

/// The usable conditions of `q` as a query, `None` when there are none (no filtering).
fn filter_param(params: &Params) -> Option<traceql::Query> {
    let filter = traceql::autocomplete_filter(params::get(params, "q")?)?;
    Some(traceql::Query {
        root: SpansetExpr::Filter(filter),
    })
}

/// Receives a span with its resource and instrumentation scope; returns whether to go on.
type SpanVisit<'v> =
    dyn FnMut(Option<&Resource>, Option<&InstrumentationScope>, &Span) -> bool + 'v;

/// Calls `each` with every span (with its resource and instrumentation scope) that `filter`
/// selects (every span when `None`) in the newest traces of `window`, until `each` returns
/// `false` or [`SCAN_TRACE_LIMIT`] traces were read.
fn scan_spans(
    reader: &dyn TraceReader,
    window: TimeWindow,
    filter: Option<&traceql::Query>,
    each: &mut SpanVisit<'_>,
) -> Result<ScanStats, StoreError> {
    let pushed: Option<&FilterExpr> = filter.and_then(traceql::Query::prefilter);
    let prefilter = |span: &Span, resource: Option<&Resource>| {
        pushed.is_none_or(|f| f.matches_span(span, resource))
    };
    let mut traces = 0usize;
    let mut visit = |id: TraceId, trace: &[ResourceSpans]| {
        traces += 1;
        let go_on = traces < SCAN_TRACE_LIMIT;
        let matched: Option<HashSet<SpanId>> = match filter {
            None => None,
            Some(query) => match traceql::evaluate(query, id, trace, usize::MAX) {
                None => return go_on,
                Some(hit) => Some(
                    hit.span_sets
                        .iter()
                        .flat_map(|set| &set.spans)
                        .map(|s| s.span_id)
                        .collect(),
                ),
            },
        };
        for rs in trace {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let selected = matched.as_ref().is_none_or(|m| {
                        m.contains(&SpanId::from_slice(&span.span_id).unwrap_or_default())
                    });
                    if selected && !each(rs.resource.as_ref(), ss.scope.as_ref(), span) {
                        return false;
                    }
                }
            }
        }
        go_on
    };
    reader.scan(window, &prefilter, &mut visit)
}

/// Attribute names by scope name (`resource`, `span`, `event`, `link`, `instrumentation`).
type Names = BTreeMap<&'static str, BTreeSet<String>>;

/// Attribute names of the spans a scan selects, in the scopes `want` names.
fn scan_names(
    reader: &dyn TraceReader,
    window: TimeWindow,
    filter: Option<&traceql::Query>,
    want: &[&'static str],
) -> Result<Names, StoreError> {
    let mut names = Names::new();
    let mut add = |scope: &'static str, attrs: &[KeyValue]| {
        if want.contains(&scope) && !attrs.is_empty() {
            let set = names.entry(scope).or_default();
            set.extend(attrs.iter().map(|kv| kv.key.clone()));
        }
    };
    let stats = scan_spans(reader, window, filter, &mut |resource, scope, span| {
        add(
            "resource",
            resource.map_or(&[], |r| r.attributes.as_slice()),
        );
        add("span", &span.attributes);
        for event in &span.events {
            add("event", &event.attributes);
        }
        for link in &span.links {
            add("link", &link.attributes);
        }
        add(
            "instrumentation",
            scope.map_or(&[], |s| s.attributes.as_slice()),
        );
        true
    })?;
    tracing::debug!(
        filtered = filter.is_some(),
        scopes = ?want,
        inspected_traces = stats.inspected_traces,
        "tag names scan"
    );
    Ok(names)
}

/// Tag names by scope name: from the store's index for resource and span (unless a filter
/// asks for a scan), scanned for the other scopes in `want`.
async fn names(
    state: &QueryState,
    window: TimeWindow,
    filter: Option<traceql::Query>,
    want: &'static [&'static str],
) -> Result<Names, QueryError> {
    if want.is_empty() {
        return Ok(Names::new());
    }
    if filter.is_some() {
        return blocking(state, move |reader| {
            scan_names(reader, window, filter.as_ref(), want)
        })
        .await;
    }
    let indexed: Vec<&'static str> = want
        .iter()
        .copied()
        .filter(|s| *s == "resource" || *s == "span")
        .collect();
    let scanned: Vec<&'static str> = want
        .iter()
        .copied()
        .filter(|s| *s != "resource" && *s != "span")
        .collect();
    let mut out = Names::new();
    if !indexed.is_empty() {
        let scope = match indexed.as_slice() {
            ["resource"] => Some(TagScope::Resource),
            ["span"] => Some(TagScope::Span),
            _ => None,
        };
        for (s, name) in blocking(state, move |reader| reader.tag_names(scope)).await? {
            if scope.is_none_or(|want| want == s) {
                out.entry(s.as_str()).or_default().insert(name);
            }
        }
    }
    if !scanned.is_empty() {
        let found = blocking(state, move |reader| {
            scan_names(reader, window, None, &scanned)
        })
        .await?;
        out.extend(found);
    }
    Ok(out)
}

const ALL_ATTRIBUTE_SCOPES: &[&str] = &["resource", "span", "event", "link", "instrumentation"];

/// The scopes one `scope` parameter asks for, as `names` takes them.
fn wanted(scope: ScopeParam) -> &'static [&'static str] {
    match scope {
        ScopeParam::All => ALL_ATTRIBUTE_SCOPES,
        ScopeParam::Attributes(TagScope::Resource) => &["resource"],
        ScopeParam::Attributes(TagScope::Span) => &["span"],
        ScopeParam::Intrinsic => &[],
        ScopeParam::Unindexed(name) => UNINDEXED_SCOPES
            .iter()
            .position(|(s, _)| *s == name)
            .map_or(&[], |i| &ALL_ATTRIBUTE_SCOPES[2 + i..3 + i]),
    }
}

/// `GET /api/search/tags`.
pub(crate) async fn tag_names_v1(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) = query?;
    let scope = scope_param(&params)?;
    let window = params::time_window(&params)?;
    let tag_names: Vec<String> = match scope {
        ScopeParam::Intrinsic => INTRINSICS.iter().map(|s| s.to_string()).collect(),
        _ => names(&state, window, None, wanted(scope))
            .await?
            .into_values()
            .flatten()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    Ok(Json(json!({ "tagNames": tag_names })))
}

fn scope_json(name: &str, tags: impl IntoIterator<Item = String>) -> Value {
    json!({ "name": name, "tags": tags.into_iter().collect::<Vec<_>>() })
}

/// `GET /api/v2/search/tags`.
pub(crate) async fn tag_names_v2(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) = query?;
    let scope = scope_param(&params)?;
    let window = params::time_window(&params)?;
    let filter = filter_param(&params);
    let intrinsics = || scope_json("intrinsic", INTRINSICS.iter().map(|s| s.to_string()));
    let mut found = names(&state, window, filter, wanted(scope)).await?;
    let mut take = |name: &str| scope_json(name, found.remove(name).unwrap_or_default());
    let scopes = match scope {
        ScopeParam::All => {
            let mut scopes = vec![take("resource"), take("span")];
            // The scopes the store does not index appear when some name was found in them.
            for (name, _) in UNINDEXED_SCOPES {
                let tags = take(name);
                if tags["tags"].as_array().is_some_and(|t| !t.is_empty()) {
                    scopes.push(tags);
                }
            }
            scopes.push(intrinsics());
            scopes
        }
        ScopeParam::Attributes(s) => vec![take(s.as_str())],
        ScopeParam::Intrinsic => vec![intrinsics()],
        ScopeParam::Unindexed(name) => vec![take(name)],
    };
    Ok(Json(json!({ "scopes": scopes })))
}

/// `GET /api/search/tag/{tag}/values`: values of an attribute in any scope.
pub(crate) async fn tag_values_v1(
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, QueryError> {
    let Path(tag) = path?;
    let values = blocking(&state, move |reader| reader.tag_values(None, &tag)).await?;
    let values: BTreeSet<String> = values.into_iter().map(|v| v.value).collect();
    Ok(Json(json!({ "tagValues": values })))
}

/// What a v2 tag name (`resource.service.name`, `span.http.method`, `.foo`, `status`) means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScopedTag {
    /// An indexed attribute, in one scope or (`None`) any.
    Attribute(Option<TagScope>, String),
    /// An intrinsic field.
    Intrinsic(&'static str),
    /// An attribute in a scope the store does not index (event, link, instrumentation).
    Unindexed(AttrScope, String),
}

fn scoped_tag(tag: &str) -> Result<ScopedTag, QueryError> {
    if let Some(name) = INTRINSICS.iter().find(|i| **i == tag) {
        return Ok(ScopedTag::Intrinsic(name));
    }
    let attribute_name = |name: &str| {
        if name.is_empty() {
            Err(QueryError::InvalidScope(format!(
                "tag {tag:?} has a scope but no attribute name"
            )))
        } else {
            Ok(name.to_string())
        }
    };
    if let Some(name) = tag.strip_prefix("resource.") {
        return Ok(ScopedTag::Attribute(
            Some(TagScope::Resource),
            attribute_name(name)?,
        ));
    }
    if let Some(name) = tag.strip_prefix("span.") {
        return Ok(ScopedTag::Attribute(
            Some(TagScope::Span),
            attribute_name(name)?,
        ));
    }
    if let Some(name) = tag.strip_prefix('.') {
        return Ok(ScopedTag::Attribute(None, attribute_name(name)?));
    }
    for (scope, attr_scope) in UNINDEXED_SCOPES {
        if let Some(name) = tag.strip_prefix(scope).and_then(|t| t.strip_prefix('.')) {
            return Ok(ScopedTag::Unindexed(*attr_scope, attribute_name(name)?));
        }
    }
    Err(QueryError::InvalidScope(format!(
        "tag {tag:?} has no valid scope: write resource.<name>, span.<name>, .<name> (any scope) \
         or an intrinsic ({})",
        INTRINSICS.join(", ")
    )))
}

fn keywords(values: &[&str]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|v| (v.to_string(), "keyword".to_string()))
        .collect()
}

/// An attribute value as the tag-value answers write it (the store's indexed types).
fn typed(value: &AnyValue) -> Option<(String, &'static str)> {
    Some(match value.value.as_ref()? {
        Pv::StringValue(s) => (s.clone(), "string"),
        Pv::IntValue(i) => (i.to_string(), "int"),
        Pv::DoubleValue(d) => (format!("{d}"), "float"),
        Pv::BoolValue(b) => (b.to_string(), "bool"),
        _ => return None,
    })
}

/// Whether a scan can find values of this intrinsic on spans.
fn scannable(intrinsic: &str) -> bool {
    matches!(
        intrinsic,
        "name"
            | "span:name"
            | "status"
            | "span:status"
            | "kind"
            | "span:kind"
            | "statusMessage"
            | "span:statusMessage"
            | "event:name"
    )
}

/// Passes the values `tag` has on one span to `out`.
fn span_values(
    tag: &ScopedTag,
    resource: Option<&Resource>,
    scope: Option<&InstrumentationScope>,
    span: &Span,
    out: &mut dyn FnMut(String, &'static str),
) {
    let mut from = |attrs: &[KeyValue], key: &str| {
        if let Some((value, type_name)) = sextant_otlp_proto::attr::get(attrs, key).and_then(typed)
        {
            out(value, type_name);
        }
    };
    let resource_attrs = resource.map_or(&[][..], |r| r.attributes.as_slice());
    match tag {
        ScopedTag::Attribute(Some(TagScope::Resource), key) => from(resource_attrs, key),
        ScopedTag::Attribute(Some(TagScope::Span), key) => from(&span.attributes, key),
        ScopedTag::Attribute(None, key) => {
            from(&span.attributes, key);
            from(resource_attrs, key);
        }
        ScopedTag::Unindexed(AttrScope::Event, key) => {
            for event in &span.events {
                from(&event.attributes, key);
            }
        }
        ScopedTag::Unindexed(AttrScope::Link, key) => {
            for link in &span.links {
                from(&link.attributes, key);
            }
        }
        ScopedTag::Unindexed(AttrScope::Instrumentation, key) => {
            from(scope.map_or(&[][..], |s| s.attributes.as_slice()), key)
        }
        ScopedTag::Unindexed(..) => {}
        ScopedTag::Intrinsic("name" | "span:name") => out(span.name.clone(), "string"),
        ScopedTag::Intrinsic("status" | "span:status") => {
            let code = span.status.as_ref().map_or(0, |s| s.code);
            out(StatusCode::from_otlp(code).as_str().to_string(), "keyword")
        }
        ScopedTag::Intrinsic("kind" | "span:kind") => out(
            SpanKind::from_otlp(span.kind).as_str().to_string(),
            "keyword",
        ),
        ScopedTag::Intrinsic("statusMessage" | "span:statusMessage") => {
            if let Some(status) = span.status.as_ref().filter(|s| !s.message.is_empty()) {
                out(status.message.clone(), "string");
            }
        }
        ScopedTag::Intrinsic("event:name") => {
            for event in &span.events {
                out(event.name.clone(), "string");
            }
        }
        ScopedTag::Intrinsic(_) => {}
    }
}

/// The distinct values of `tag` on the spans a scan selects (at most `limit`).
fn scan_values(
    reader: &dyn TraceReader,
    window: TimeWindow,
    filter: Option<&traceql::Query>,
    tag: &ScopedTag,
    limit: usize,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut found: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let stats = scan_spans(reader, window, filter, &mut |resource, scope, span| {
        span_values(tag, resource, scope, span, &mut |value, type_name| {
            if found.len() < limit {
                found.insert((value, type_name));
            }
        });
        found.len() < limit
    })?;
    tracing::debug!(
        tag = ?tag,
        filtered = filter.is_some(),
        inspected_traces = stats.inspected_traces,
        values = found.len(),
        "tag values scan"
    );
    Ok(found
        .into_iter()
        .map(|(value, type_name)| (value, type_name.to_string()))
        .collect())
}

/// `GET /api/v2/search/tag/{scoped.tag}/values`: typed values.
pub(crate) async fn tag_values_v2(
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Path(tag) = path?;
    let Query(params) = query?;
    let tag = scoped_tag(&tag)?;
    let window = params::time_window(&params)?;
    let limit = params::count(&params, "limit", MAX_VALUES_PER_TAG)?;
    let filter = filter_param(&params);
    let mut values: Vec<(String, String)> = match (&tag, &filter) {
        (ScopedTag::Intrinsic(i), _) if !scannable(i) => Vec::new(),
        (ScopedTag::Intrinsic("status" | "span:status"), None) => keywords(STATUS_VALUES),
        (ScopedTag::Intrinsic("kind" | "span:kind"), None) => keywords(KIND_VALUES),
        // Unfiltered, the other intrinsics have no value list (the store keeps no index of
        // span names or status messages), so Grafana lets the user type one.
        (ScopedTag::Intrinsic(_), None) => Vec::new(),
        (ScopedTag::Attribute(scope, name), None) => {
            let (scope, name) = (*scope, name.clone());
            let values = blocking(&state, move |reader| reader.tag_values(scope, &name)).await?;
            let unique: BTreeSet<(String, String)> = values
                .into_iter()
                .map(|TagValue { type_name, value }| (value, type_name))
                .collect();
            unique.into_iter().collect()
        }
        _ => {
            blocking(&state, move |reader| {
                scan_values(reader, window, filter.as_ref(), &tag, limit)
            })
            .await?
        }
    };
    values.truncate(limit);
    let values: Vec<Value> = values
        .into_iter()
        .map(|(value, type_name)| json!({ "type": type_name, "value": value }))
        .collect();
    Ok(Json(json!({ "tagValues": values })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let p = |v: &str| -> Params { [("scope".to_string(), v.to_string())].into() };
        assert_eq!(scope_param(&Params::new()).unwrap(), ScopeParam::All);
        assert_eq!(scope_param(&p("")).unwrap(), ScopeParam::All);
        assert_eq!(scope_param(&p("all")).unwrap(), ScopeParam::All);
        assert_eq!(
            scope_param(&p("resource")).unwrap(),
            ScopeParam::Attributes(TagScope::Resource)
        );
        assert_eq!(
            scope_param(&p("span")).unwrap(),
            ScopeParam::Attributes(TagScope::Span)
        );
        assert_eq!(scope_param(&p("intrinsic")).unwrap(), ScopeParam::Intrinsic);
        assert_eq!(
            scope_param(&p("event")).unwrap(),
            ScopeParam::Unindexed("event")
        );
        let e = scope_param(&p("spam")).unwrap_err();
        assert!(e.to_string().starts_with("unknown scope \"spam\""), "{e}");
    }

    #[test]
    fn scoped_tags() {
        assert_eq!(
            scoped_tag("resource.service.name").unwrap(),
            ScopedTag::Attribute(Some(TagScope::Resource), "service.name".into())
        );
        assert_eq!(
            scoped_tag("span.http.method").unwrap(),
            ScopedTag::Attribute(Some(TagScope::Span), "http.method".into())
        );
        assert_eq!(
            scoped_tag(".foo").unwrap(),
            ScopedTag::Attribute(None, "foo".into())
        );
        assert_eq!(
            scoped_tag("status").unwrap(),
            ScopedTag::Intrinsic("status")
        );
        assert_eq!(
            scoped_tag("span:kind").unwrap(),
            ScopedTag::Intrinsic("span:kind")
        );
        assert_eq!(
            scoped_tag("event.x").unwrap(),
            ScopedTag::Unindexed(AttrScope::Event, "x".into())
        );
        assert!(scoped_tag("link.").is_err());
        assert!(scoped_tag("span.").is_err());
        assert!(scoped_tag(".").is_err());
        let e = scoped_tag("foo.bar").unwrap_err().to_string();
        assert!(e.starts_with("tag \"foo.bar\" has no valid scope"), "{e}");
        assert!(scoped_tag("eventx.y").is_err());
    }
}
