//! Tag names and values, as Grafana's query builder asks for them:
//! * `GET /api/search/tags?scope=` → `{"tagNames": [...]}`
//! * `GET /api/v2/search/tags?scope=` → `{"scopes": [{"name": "resource", "tags": [...]}, ...]}`
//! * `GET /api/search/tag/{tag}/values` → `{"tagValues": ["a", "b"]}` (any scope)
//! * `GET /api/v2/search/tag/{scoped.tag}/values` → `{"tagValues": [{"type": "string", "value": "a"}]}`
//!
//! Scopes are `resource`, `span`, `intrinsic`, and `all` (or none: every scope). Tempo's
//! `event`, `link` and `instrumentation` scopes are accepted but the store does not index
//! their attributes, so they answer empty lists.
//!
//! Tempo also takes `q` (a TraceQL filter narrowing the names or values) and `start`/`end` on
//! these endpoints. They are ignored here for now: the answer is every name or value seen,
//! which is a superset of the filtered answer (filtering is a later issue).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use sextant_store::{TagScope, TagValue};

use crate::error::QueryError;
use crate::params::{self, Params};
use crate::tempo::blocking;
use crate::QueryState;

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
/// Scopes Tempo knows but the store does not index.
const UNINDEXED_SCOPES: &[&str] = &["event", "link", "instrumentation"];

/// The `scope` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Attributes(TagScope),
    Intrinsic,
    Unindexed(&'static str),
}

fn scope_param(params: &Params) -> Result<Scope, QueryError> {
    match params::get(params, "scope") {
        None | Some("all") => Ok(Scope::All),
        Some("resource") => Ok(Scope::Attributes(TagScope::Resource)),
        Some("span") => Ok(Scope::Attributes(TagScope::Span)),
        Some("intrinsic") => Ok(Scope::Intrinsic),
        Some(other) => UNINDEXED_SCOPES
            .iter()
            .find(|s| **s == other)
            .map(|s| Scope::Unindexed(s))
            .ok_or_else(|| {
                QueryError::InvalidScope(format!(
                    "unknown scope {other:?}: expected resource, span, intrinsic, event, link, \
                     instrumentation or all"
                ))
            }),
    }
}

/// Tag names by scope, sorted and unique.
async fn names(
    state: &QueryState,
    scope: Option<TagScope>,
) -> Result<BTreeMap<TagScope, BTreeSet<String>>, QueryError> {
    let names = blocking(state, move |reader| reader.tag_names(scope)).await?;
    let mut by_scope: BTreeMap<TagScope, BTreeSet<String>> = BTreeMap::new();
    for (s, name) in names {
        if scope.is_none_or(|want| want == s) {
            by_scope.entry(s).or_default().insert(name);
        }
    }
    Ok(by_scope)
}

/// `GET /api/search/tags`.
pub(crate) async fn tag_names_v1(
    State(state): State<QueryState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) = query?;
    let tag_names: Vec<String> = match scope_param(&params)? {
        Scope::All => names(&state, None)
            .await?
            .into_values()
            .flatten()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        Scope::Attributes(scope) => names(&state, Some(scope))
            .await?
            .into_values()
            .flatten()
            .collect(),
        Scope::Intrinsic => INTRINSICS.iter().map(|s| s.to_string()).collect(),
        Scope::Unindexed(_) => Vec::new(),
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
    let intrinsics = || INTRINSICS.iter().map(|s| s.to_string());
    let scopes = match scope_param(&params)? {
        Scope::All => {
            let mut by_scope = names(&state, None).await?;
            vec![
                scope_json(
                    "resource",
                    by_scope.remove(&TagScope::Resource).unwrap_or_default(),
                ),
                scope_json("span", by_scope.remove(&TagScope::Span).unwrap_or_default()),
                scope_json("intrinsic", intrinsics()),
            ]
        }
        Scope::Attributes(scope) => {
            let mut by_scope = names(&state, Some(scope)).await?;
            vec![scope_json(
                scope.as_str(),
                by_scope.remove(&scope).unwrap_or_default(),
            )]
        }
        Scope::Intrinsic => vec![scope_json("intrinsic", intrinsics())],
        Scope::Unindexed(name) => vec![scope_json(name, Vec::new())],
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
    /// An attribute, in one scope or (`None`) any.
    Attribute(Option<TagScope>, String),
    /// An intrinsic field.
    Intrinsic(&'static str),
    /// An attribute in a scope the store does not index.
    Unindexed,
}

fn scoped_tag(tag: &str) -> Result<ScopedTag, QueryError> {
    if let Some(name) = INTRINSICS.iter().find(|i| **i == tag) {
        return Ok(ScopedTag::Intrinsic(name));
    }
    let attribute = |scope: Option<TagScope>, name: &str| {
        if name.is_empty() {
            Err(QueryError::InvalidScope(format!(
                "tag {tag:?} has a scope but no attribute name"
            )))
        } else {
            Ok(ScopedTag::Attribute(scope, name.to_string()))
        }
    };
    if let Some(name) = tag.strip_prefix("resource.") {
        return attribute(Some(TagScope::Resource), name);
    }
    if let Some(name) = tag.strip_prefix("span.") {
        return attribute(Some(TagScope::Span), name);
    }
    if let Some(name) = tag.strip_prefix('.') {
        return attribute(None, name);
    }
    for scope in UNINDEXED_SCOPES {
        if let Some(name) = tag.strip_prefix(scope).and_then(|t| t.strip_prefix('.')) {
            attribute(None, name)?;
            return Ok(ScopedTag::Unindexed);
        }
    }
    Err(QueryError::InvalidScope(format!(
        "tag {tag:?} has no valid scope: write resource.<name>, span.<name>, .<name> (any scope) \
         or an intrinsic ({})",
        INTRINSICS.join(", ")
    )))
}

fn keywords(values: &[&str]) -> Vec<Value> {
    values
        .iter()
        .map(|v| json!({ "type": "keyword", "value": v }))
        .collect()
}

/// `GET /api/v2/search/tag/{scoped.tag}/values`: typed values.
pub(crate) async fn tag_values_v2(
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, QueryError> {
    let Path(tag) = path?;
    let values = match scoped_tag(&tag)? {
        ScopedTag::Intrinsic("status" | "span:status") => keywords(STATUS_VALUES),
        ScopedTag::Intrinsic("kind" | "span:kind") => keywords(KIND_VALUES),
        // The store keeps no index of span names, status messages, root names or durations,
        // so the other intrinsics have no value list (Grafana then lets the user type one).
        ScopedTag::Intrinsic(_) | ScopedTag::Unindexed => Vec::new(),
        ScopedTag::Attribute(scope, name) => {
            let values = blocking(&state, move |reader| reader.tag_values(scope, &name)).await?;
            let unique: BTreeSet<(String, String)> = values
                .into_iter()
                .map(|TagValue { type_name, value }| (value, type_name))
                .collect();
            unique
                .into_iter()
                .map(|(value, type_name)| json!({ "type": type_name, "value": value }))
                .collect()
        }
    };
    Ok(Json(json!({ "tagValues": values })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let p = |v: &str| -> Params { [("scope".to_string(), v.to_string())].into() };
        assert_eq!(scope_param(&Params::new()).unwrap(), Scope::All);
        assert_eq!(scope_param(&p("")).unwrap(), Scope::All);
        assert_eq!(scope_param(&p("all")).unwrap(), Scope::All);
        assert_eq!(
            scope_param(&p("resource")).unwrap(),
            Scope::Attributes(TagScope::Resource)
        );
        assert_eq!(
            scope_param(&p("span")).unwrap(),
            Scope::Attributes(TagScope::Span)
        );
        assert_eq!(scope_param(&p("intrinsic")).unwrap(), Scope::Intrinsic);
        assert_eq!(scope_param(&p("event")).unwrap(), Scope::Unindexed("event"));
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
        assert_eq!(scoped_tag("event.x").unwrap(), ScopedTag::Unindexed);
        assert!(scoped_tag("span.").is_err());
        assert!(scoped_tag(".").is_err());
        let e = scoped_tag("foo.bar").unwrap_err().to_string();
        assert!(e.starts_with("tag \"foo.bar\" has no valid scope"), "{e}");
        assert!(scoped_tag("eventx.y").is_err());
    }
}
