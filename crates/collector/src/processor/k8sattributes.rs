//! The `k8sattributes` processor: adds Kubernetes metadata to resources, from what a pod knows.
//! Sextant does not call the Kubernetes API server: `auth_type` is accepted (`serviceAccount`,
//! the default, or `none`) and ignored; `kubeConfig` is refused.
//!
//! Two sources, neither of which ever overwrites an attribute the resource already has:
//! * `pod_list_file` (Sextant): a JSON or YAML list of pods `{name, namespace, uid, ip, node,
//!   deployment, start_time, labels, annotations, attributes}` (`attributes`: any other
//!   metadata key, e.g. `k8s.statefulset.name`), re-read when its modification time changes
//!   (checked at most once a second). A resource is matched to a pod by `pod_association`
//!   (default: the resource attribute `k8s.pod.ip`, then `k8s.pod.uid`; all sources of one
//!   association must name the same pod; the first association that finds a pod wins);
//!   `from: connection` reads the resource attribute `k8s.pod.ip`, which the receiver sets
//!   from the client address. The `extract.metadata` keys (default: k8s.namespace.name,
//!   k8s.pod.name, k8s.pod.uid, k8s.pod.start_time, k8s.deployment.name, k8s.node.name) the
//!   pod has are added, and `extract.labels`/`extract.annotations` with `from: pod` and `key`
//!   (as `tag_name`, default `k8s.pod.labels.<key>` / `k8s.pod.annotations.<key>`).
//!   `filter.node_from_env_var`, `filter.node` and `filter.namespace` restrict the list.
//!   The file may be JSON or YAML (a top-level list).
//! * `from_env: true` (default, Sextant): the collector pod's own downward-API variables
//!   (K8S_POD_NAME, K8S_NAMESPACE_NAME or K8S_NAMESPACE, K8S_NODE_NAME, K8S_POD_UID, K8S_POD_IP)
//!   and OTEL_RESOURCE_ATTRIBUTES (`k=v,k=v`, percent-decoded), read once in `build`, are
//!   added to resources that no pod of the list matched (a sidecar or node agent's view).
//!
//! `passthrough: true` only keeps `k8s.pod.ip` (as the reference): no pod list lookup.
//! `exclude.pods[].name` (regexes) drops pods from the list; `wait_for_metadata`,
//! `wait_for_metadata_timeout` and `extract.deployment_name_from_replicaset` are accepted and
//! ignored. Refused: `extract.labels`/`annotations` with `key_regex` or
//! `from: namespace|node`, `extract.otel_annotations: true`, `filter.fields`/`filter.labels`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use regex::{Regex, RegexSet};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{KeyValue, Resource, ResourceSpans};

use super::SpanProcessor;
use crate::metrics::CollectorMetrics;

/// `auth_type`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum AuthType {
    #[default]
    #[serde(rename = "serviceAccount")]
    ServiceAccount,
    #[serde(rename = "none")]
    None,
    #[serde(rename = "kubeConfig")]
    KubeConfig,
}

/// One `extract.labels` / `extract.annotations` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FieldExtract {
    pub tag_name: String,
    pub key: String,
    pub key_regex: String,
    pub from: String,
}

/// `extract`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Extract {
    pub metadata: Vec<String>,
    pub labels: Vec<FieldExtract>,
    pub annotations: Vec<FieldExtract>,
    /// Accepted; only `false` (the default) is supported.
    pub otel_annotations: bool,
    /// Accepted and ignored (the pod list names the deployment directly).
    pub deployment_name_from_replicaset: bool,
}

/// One `exclude.pods[]`: pods whose name matches the regex are not used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExcludePod {
    pub name: String,
}

/// `exclude`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Exclude {
    pub pods: Vec<ExcludePod>,
}

/// One `pod_association[].sources[]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AssociationSource {
    pub from: String,
    pub name: String,
}

/// One `pod_association[]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Association {
    pub sources: Vec<AssociationSource>,
}

/// `filter`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PodFilter {
    pub node_from_env_var: String,
    pub node: String,
    pub namespace: String,
}

/// The processor's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub auth_type: AuthType,
    pub passthrough: bool,
    pub extract: Extract,
    pub pod_association: Vec<Association>,
    pub filter: PodFilter,
    pub exclude: Option<Exclude>,
    /// Accepted and ignored: the pod list is read before the first span.
    pub wait_for_metadata: bool,
    #[serde(with = "crate::config::duration")]
    pub wait_for_metadata_timeout: std::time::Duration,
    pub pod_list_file: Option<PathBuf>,
    pub from_env: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auth_type: AuthType::ServiceAccount,
            passthrough: false,
            extract: Extract::default(),
            pod_association: Vec::new(),
            filter: PodFilter::default(),
            exclude: None,
            wait_for_metadata: false,
            wait_for_metadata_timeout: std::time::Duration::from_secs(10),
            pod_list_file: None,
            from_env: true,
        }
    }
}

/// One pod of `pod_list_file`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ip: String,
    pub node: String,
    pub deployment: String,
    pub start_time: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
}

const DEFAULT_METADATA: &[&str] = &[
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.pod.start_time",
    "k8s.deployment.name",
    "k8s.node.name",
];

/// The metadata keys of the reference; those without a field of [`Pod`] come from its
/// `attributes`.
const KNOWN_METADATA: &[&str] = &[
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.pod.hostname",
    "k8s.pod.uid",
    "k8s.pod.ip",
    "k8s.pod.start_time",
    "k8s.deployment.name",
    "k8s.deployment.uid",
    "k8s.replicaset.name",
    "k8s.replicaset.uid",
    "k8s.daemonset.name",
    "k8s.daemonset.uid",
    "k8s.statefulset.name",
    "k8s.statefulset.uid",
    "k8s.job.name",
    "k8s.job.uid",
    "k8s.cronjob.name",
    "k8s.node.name",
    "k8s.node.uid",
    "k8s.cluster.uid",
    "k8s.container.name",
    "container.id",
    "container.image.name",
    "container.image.tag",
    "container.image.repo_digests",
    "service.namespace",
    "service.name",
    "service.version",
    "service.instance.id",
];

impl Pod {
    fn metadata(&self, key: &str) -> Option<&str> {
        let v = match key {
            "k8s.namespace.name" => self.namespace.as_str(),
            "k8s.pod.name" => self.name.as_str(),
            "k8s.pod.uid" => self.uid.as_str(),
            "k8s.pod.ip" => self.ip.as_str(),
            "k8s.pod.start_time" => self.start_time.as_str(),
            "k8s.deployment.name" => self.deployment.as_str(),
            "k8s.node.name" => self.node.as_str(),
            _ => return self.attributes.get(key).map(String::as_str),
        };
        (!v.is_empty()).then_some(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Ip,
    Uid,
    Name,
}

#[derive(Debug, Clone)]
struct SourceRule {
    /// The resource attribute that holds the identifier.
    attribute: String,
    kind: IdKind,
}

#[derive(Default)]
struct Index {
    pods: Vec<Arc<Pod>>,
    by_ip: FxHashMap<String, usize>,
    by_uid: FxHashMap<String, usize>,
    by_name: FxHashMap<String, usize>,
}

impl Index {
    fn new(pods: Vec<Pod>, node: &str, namespace: &str, exclude: Option<&RegexSet>) -> Index {
        let mut idx = Index::default();
        for p in pods {
            if (!node.is_empty() && p.node != node)
                || (!namespace.is_empty() && p.namespace != namespace)
                || exclude.is_some_and(|x| x.is_match(&p.name))
            {
                continue;
            }
            let i = idx.pods.len();
            if !p.ip.is_empty() {
                idx.by_ip.insert(p.ip.clone(), i);
            }
            if !p.uid.is_empty() {
                idx.by_uid.insert(p.uid.clone(), i);
            }
            if !p.name.is_empty() {
                idx.by_name.insert(p.name.clone(), i);
            }
            idx.pods.push(Arc::new(p));
        }
        idx
    }
}

/// A JSON or YAML list of pods (YAML read with figment, as the config: the list is put under
/// a `pods` key, since figment reads maps at the top).
fn parse_pods(text: &str) -> Result<Vec<Pod>, String> {
    if text.trim_start().starts_with('[') {
        if let Ok(p) = serde_json::from_str::<Vec<Pod>>(text) {
            return Ok(p);
        }
    }
    #[derive(Deserialize)]
    struct Wrapped {
        #[serde(default)]
        pods: Vec<Pod>,
    }
    use figment::providers::{Format, Yaml};
    let mut wrapped = String::with_capacity(text.len() + text.lines().count() * 2 + 8);
    wrapped.push_str("pods:\n");
    for line in text.lines() {
        wrapped.push_str("  ");
        wrapped.push_str(line);
        wrapped.push('\n');
    }
    figment::Figment::from(Yaml::string(&wrapped))
        .extract::<Wrapped>()
        .map(|w| w.pods)
        .map_err(|e| e.to_string())
}

struct PodList {
    path: PathBuf,
    node: String,
    namespace: String,
    exclude: Option<RegexSet>,
    state: Mutex<ListState>,
}

struct ListState {
    checked: Option<Instant>,
    mtime: Option<SystemTime>,
    index: Arc<Index>,
}

impl PodList {
    fn load(&self) -> Result<(SystemTime, Index), String> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let pods = parse_pods(&text).map_err(|e| {
            format!(
                "{}: not a list of pods {{name, namespace, uid, ip, ...}}: {e}",
                self.path.display()
            )
        })?;
        Ok((
            mtime,
            Index::new(pods, &self.node, &self.namespace, self.exclude.as_ref()),
        ))
    }

    /// The current index, re-read when the file's mtime changed (checked at most once a
    /// second). A file that cannot be read keeps the last good index.
    fn current(&self) -> Arc<Index> {
        let mut st = self.state.lock();
        let due = st.checked.is_none_or(|t| t.elapsed().as_secs() >= 1);
        if due {
            st.checked = Some(Instant::now());
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime.is_some() && mtime != st.mtime {
                match self.load() {
                    Ok((m, idx)) => {
                        tracing::info!(file = %self.path.display(), pods = idx.pods.len(), "pod list loaded");
                        st.mtime = Some(m);
                        st.index = Arc::new(idx);
                    }
                    Err(e) => tracing::warn!(error = %e, "pod list not reloaded"),
                }
            }
        }
        st.index.clone()
    }
}

struct K8sAttributes {
    passthrough: bool,
    /// `pod_association` has a `from: connection` source (or `passthrough`): resources
    /// without `k8s.pod.ip` get the client's address.
    from_connection: bool,
    associations: Vec<Vec<SourceRule>>,
    metadata: Vec<String>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    pods: Option<PodList>,
    env_attrs: Vec<KeyValue>,
}

fn has(attrs: &[KeyValue], key: &str) -> bool {
    attrs.iter().any(|kv| kv.key == key)
}

fn add(attrs: &mut Vec<KeyValue>, key: &str, value: &str) {
    if !has(attrs, key) {
        attrs.push(attr::kv_str(key, value));
    }
}

impl K8sAttributes {
    fn find<'i>(&self, idx: &'i Index, attrs: &[KeyValue]) -> Option<&'i Arc<Pod>> {
        'assoc: for rules in &self.associations {
            let mut found: Option<usize> = None;
            for r in rules {
                let Some(v) =
                    attr::get(attrs, &r.attribute).map(crate::processor::matching::as_str)
                else {
                    continue 'assoc;
                };
                let map = match r.kind {
                    IdKind::Ip => &idx.by_ip,
                    IdKind::Uid => &idx.by_uid,
                    IdKind::Name => &idx.by_name,
                };
                let Some(i) = map.get(v.as_ref()) else {
                    continue 'assoc;
                };
                if found.is_some_and(|f| f != *i) {
                    continue 'assoc;
                }
                found = Some(*i);
            }
            if let Some(i) = found {
                return idx.pods.get(i);
            }
        }
        None
    }

    fn enrich(&self, idx: Option<&Index>, resource: &mut Resource) {
        let attrs = &mut resource.attributes;
        let pod = match idx {
            Some(idx) if !self.passthrough => self.find(idx, attrs).cloned(),
            _ => None,
        };
        match pod {
            Some(pod) => {
                for key in &self.metadata {
                    if let Some(v) = pod.metadata(key) {
                        add(attrs, key, v);
                    }
                }
                for (tag, key) in &self.labels {
                    if let Some(v) = pod.labels.get(key) {
                        add(attrs, tag, v);
                    }
                }
                for (tag, key) in &self.annotations {
                    if let Some(v) = pod.annotations.get(key) {
                        add(attrs, tag, v);
                    }
                }
            }
            None => {
                for kv in &self.env_attrs {
                    if !has(attrs, &kv.key) {
                        attrs.push(kv.clone());
                    }
                }
            }
        }
    }
}

impl SpanProcessor for K8sAttributes {
    fn process(&self, spans: &mut Vec<ResourceSpans>) {
        let idx = self.pods.as_ref().map(PodList::current);
        for rs in spans.iter_mut() {
            let resource = rs.resource.get_or_insert_with(Resource::default);
            self.enrich(idx.as_deref(), resource);
        }
    }

    fn process_from(&self, spans: &mut Vec<ResourceSpans>, client: Option<std::net::IpAddr>) {
        if let (true, Some(ip)) = (self.from_connection, client) {
            let ip = ip.to_canonical().to_string();
            for rs in spans.iter_mut() {
                let resource = rs.resource.get_or_insert_with(Resource::default);
                add(&mut resource.attributes, "k8s.pod.ip", &ip);
            }
        }
        self.process(spans);
    }
}

/// Decodes `%XX` escapes (invalid escapes are kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `k=v,k=v`, keys and values percent-decoded; malformed pairs
/// are skipped.
fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = percent_decode(k.trim());
            (!k.is_empty()).then(|| (k, percent_decode(v.trim())))
        })
        .collect()
}

fn env_attributes(env: &dyn Fn(&str) -> Option<String>) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = Vec::new();
    let mut push = |k: &str, v: String| {
        if !v.is_empty() && !has(&out, k) {
            out.push(attr::kv_str(k, &v));
        }
    };
    for (var, key) in [
        ("K8S_POD_NAME", "k8s.pod.name"),
        ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
        ("K8S_NAMESPACE", "k8s.namespace.name"),
        ("K8S_NODE_NAME", "k8s.node.name"),
        ("K8S_POD_UID", "k8s.pod.uid"),
        ("K8S_POD_IP", "k8s.pod.ip"),
    ] {
        if let Some(v) = env(var) {
            push(key, v);
        }
    }
    if let Some(s) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_resource_attributes(&s) {
            push(&k, v);
        }
    }
    out
}

fn field_extracts(
    path: &str,
    list: &[FieldExtract],
    prefix: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !f.key_regex.is_empty() {
            return Err(format!(
                "{p}.key_regex: not supported by Sextant; name each key with key"
            ));
        }
        if !f.from.is_empty() && f.from != "pod" {
            return Err(format!(
                "{p}.from: {:?} is not supported (Sextant knows only the pod's own labels and \
                 annotations, from the pod list file): use from: pod",
                f.from
            ));
        }
        if f.key.is_empty() {
            return Err(format!("{p}.key: required"));
        }
        let tag = if f.tag_name.is_empty() {
            format!("{prefix}{}", f.key)
        } else {
            f.tag_name.clone()
        };
        out.push((tag, f.key.clone()));
    }
    Ok(out)
}

/// Builds the processor (reads the environment once, here).
pub fn build(
    name: &str,
    config: &Config,
    metrics: &CollectorMetrics,
) -> Result<Arc<dyn SpanProcessor>, String> {
    build_with_env(name, config, metrics, &|k| std::env::var(k).ok())
}

fn build_with_env(
    name: &str,
    config: &Config,
    _metrics: &CollectorMetrics,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn SpanProcessor>, String> {
    if config.auth_type == AuthType::KubeConfig {
        return Err(
            "auth_type: kubeConfig is not supported: Sextant does not call the Kubernetes \
                    API server (use serviceAccount or none, with pod_list_file and from_env)"
                .into(),
        );
    }
    let metadata: Vec<String> = if config.extract.metadata.is_empty() {
        DEFAULT_METADATA.iter().map(|s| s.to_string()).collect()
    } else {
        for (i, m) in config.extract.metadata.iter().enumerate() {
            if !KNOWN_METADATA.contains(&m.as_str()) {
                return Err(format!(
                    "extract.metadata[{i}]: {m:?} is not a metadata key (e.g. k8s.pod.name, \
                     k8s.pod.uid, k8s.namespace.name, k8s.node.name, k8s.deployment.name)"
                ));
            }
        }
        config.extract.metadata.clone()
    };
    let labels = field_extracts("extract.labels", &config.extract.labels, "k8s.pod.labels.")?;
    let annotations = field_extracts(
        "extract.annotations",
        &config.extract.annotations,
        "k8s.pod.annotations.",
    )?;
    let mut associations = Vec::new();
    for (i, a) in config.pod_association.iter().enumerate() {
        if a.sources.is_empty() {
            return Err(format!(
                "pod_association[{i}].sources: at least one source is required"
            ));
        }
        let mut rules = Vec::new();
        for (j, s) in a.sources.iter().enumerate() {
            let p = format!("pod_association[{i}].sources[{j}]");
            let rule = match s.from.as_str() {
                "connection" => SourceRule {
                    attribute: "k8s.pod.ip".into(),
                    kind: IdKind::Ip,
                },
                "resource_attribute" => {
                    let kind = match s.name.as_str() {
                        "k8s.pod.ip" | "ip" | "host.ip" | "net.host.ip" => IdKind::Ip,
                        "k8s.pod.uid" => IdKind::Uid,
                        "k8s.pod.name" => IdKind::Name,
                        "" => {
                            return Err(format!("{p}.name: required with from: resource_attribute"))
                        }
                        other => {
                            return Err(format!(
                                "{p}.name: {other:?} is not supported (k8s.pod.ip, k8s.pod.uid, \
                                 k8s.pod.name, host.ip)"
                            ))
                        }
                    };
                    SourceRule {
                        attribute: s.name.clone(),
                        kind,
                    }
                }
                other => {
                    return Err(format!(
                        "{p}.from: {other:?} is not resource_attribute or connection"
                    ))
                }
            };
            rules.push(rule);
        }
        associations.push(rules);
    }
    if associations.is_empty() {
        associations = vec![
            vec![SourceRule {
                attribute: "k8s.pod.ip".into(),
                kind: IdKind::Ip,
            }],
            vec![SourceRule {
                attribute: "k8s.pod.uid".into(),
                kind: IdKind::Uid,
            }],
        ];
    }
    let mut node = config.filter.node.clone();
    if !config.filter.node_from_env_var.is_empty() {
        match env(&config.filter.node_from_env_var) {
            Some(n) if !n.is_empty() => node = n,
            _ => {
                return Err(format!(
                    "filter.node_from_env_var: the variable {} is not set",
                    config.filter.node_from_env_var
                ))
            }
        }
    }
    if config.extract.otel_annotations {
        return Err(
            "extract.otel_annotations: not supported by Sextant (use extract.annotations \
                    with the pod list file)"
                .into(),
        );
    }
    let exclude = match &config.exclude {
        Some(x) if !x.pods.is_empty() => {
            for (i, p) in x.pods.iter().enumerate() {
                Regex::new(&p.name).map_err(|e| {
                    format!(
                        "exclude.pods[{i}].name: {:?} is not a valid regex: {e}",
                        p.name
                    )
                })?;
            }
            Some(
                RegexSet::new(x.pods.iter().map(|p| p.name.as_str()))
                    .map_err(|e| format!("exclude.pods: {e}"))?,
            )
        }
        _ => None,
    };
    let pods = match &config.pod_list_file {
        None => None,
        Some(path) => {
            let list = PodList {
                path: path.clone(),
                node,
                namespace: config.filter.namespace.clone(),
                exclude,
                state: Mutex::new(ListState {
                    checked: None,
                    mtime: None,
                    index: Arc::new(Index::default()),
                }),
            };
            // A file that is missing or invalid at start is a configuration error.
            let (mtime, idx) = list.load().map_err(|e| format!("pod_list_file: {e}"))?;
            {
                let mut st = list.state.lock();
                st.mtime = Some(mtime);
                st.checked = Some(Instant::now());
                st.index = Arc::new(idx);
            }
            Some(list)
        }
    };
    let env_attrs = if config.from_env {
        env_attributes(env)
    } else {
        Vec::new()
    };
    tracing::debug!(
        processor = name,
        env_attributes = env_attrs.len(),
        "k8sattributes built"
    );
    let from_connection = config.passthrough
        || config
            .pod_association
            .iter()
            .any(|a| a.sources.iter().any(|s| s.from == "connection"));
    Ok(Arc::new(K8sAttributes {
        passthrough: config.passthrough,
        from_connection,
        associations,
        metadata,
        labels,
        annotations,
        pods,
        env_attrs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::matching::tests::{batch, span};
    use sextant_otlp_proto::attr::get_str;

    const PODS: &str = r#"[
        {"name":"api-7d9f","namespace":"shop","uid":"u-1","ip":"10.0.0.5","node":"n1",
         "deployment":"api","labels":{"app":"api","team":"core"},
         "attributes":{"k8s.replicaset.name":"api-7d"}},
        {"name":"web-1","namespace":"shop","uid":"u-2","ip":"10.0.0.6","node":"n2"},
        {"name":"jaeger-agent-1","namespace":"obs","uid":"u-3","ip":"10.0.0.7","node":"n2"}
    ]"#;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn with_ip(ip: &str) -> Vec<ResourceSpans> {
        let mut b = batch("api", vec![span("s", vec![])]);
        b[0].resource
            .as_mut()
            .unwrap()
            .attributes
            .push(attr::kv_str("k8s.pod.ip", ip));
        b
    }

    #[test]
    fn the_client_address_is_the_pod_ip_with_from_connection() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pods.json");
        std::fs::write(&file, PODS).unwrap();
        let config = |assoc: serde_json::Value| -> Config {
            serde_json::from_value(serde_json::json!({
                "pod_list_file": file,
                "from_env": false,
                "pod_association": assoc,
            }))
            .unwrap()
        };
        let metrics = CollectorMetrics::unregistered();
        let ip: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let p = build_with_env(
            "k8sattributes",
            &config(serde_json::json!([{"sources": [{"from": "connection"}]}])),
            &metrics,
            &env_of(&[]),
        )
        .unwrap();
        let mut b = batch("api", vec![span("s", vec![])]);
        p.process_from(&mut b, Some(ip));
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.ip"), Some("10.0.0.5"));
        assert_eq!(get_str(r, "k8s.pod.name"), Some("api-7d9f"));
        // An IPv4 client seen over IPv6 is the same pod.
        let mut b = batch("api", vec![span("s", vec![])]);
        p.process_from(&mut b, Some("::ffff:10.0.0.5".parse().unwrap()));
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.name"), Some("api-7d9f"));
        // The resource's own k8s.pod.ip wins over the connection's.
        let mut b = with_ip("10.9.9.9");
        p.process_from(&mut b, Some(ip));
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.ip"), Some("10.9.9.9"));
        assert_eq!(get_str(r, "k8s.pod.name"), None);
        // Without a connection source the client address is not used.
        let p = build_with_env(
            "k8sattributes",
            &config(serde_json::json!([{"sources": [{"from": "resource_attribute", "name": "k8s.pod.ip"}]}])),
            &metrics,
            &env_of(&[]),
        )
        .unwrap();
        let mut b = batch("api", vec![span("s", vec![])]);
        p.process_from(&mut b, Some(ip));
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.ip"), None);
    }

    #[test]
    fn enriches_from_pod_list_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pods.json");
        std::fs::write(&file, PODS).unwrap();
        let c: Config = serde_json::from_value(serde_json::json!({
            "auth_type": "serviceAccount",
            "pod_list_file": file,
            "extract": {"metadata": ["k8s.pod.name","k8s.namespace.name","k8s.deployment.name",
                                      "k8s.replicaset.name","k8s.node.name"],
                        "labels": [{"key":"app"},{"tag_name":"team","key":"team","from":"pod"}]},
            "pod_association": [{"sources": [{"from":"connection"}]}]
        }))
        .unwrap();
        let p = build_with_env(
            "k8sattributes",
            &c,
            &CollectorMetrics::unregistered(),
            &env_of(&[("K8S_POD_NAME", "collector-0")]),
        )
        .unwrap();
        let mut b = with_ip("10.0.0.5");
        b[0].resource
            .as_mut()
            .unwrap()
            .attributes
            .push(attr::kv_str("k8s.namespace.name", "already"));
        p.process(&mut b);
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.name"), Some("api-7d9f"));
        assert_eq!(
            get_str(r, "k8s.namespace.name"),
            Some("already"),
            "never overwritten"
        );
        assert_eq!(get_str(r, "k8s.deployment.name"), Some("api"));
        assert_eq!(get_str(r, "k8s.replicaset.name"), Some("api-7d"));
        assert_eq!(get_str(r, "k8s.node.name"), Some("n1"));
        assert_eq!(get_str(r, "k8s.pod.labels.app"), Some("api"));
        assert_eq!(get_str(r, "team"), Some("core"));

        // An unknown IP gets the collector's own values instead.
        let mut b = with_ip("10.9.9.9");
        p.process(&mut b);
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.name"), Some("collector-0"));

        // The file changes: after the next check, the new pod is known.
        std::fs::write(
            &file,
            r#"[{"name":"new-pod","namespace":"shop","ip":"10.9.9.9"}]"#,
        )
        .unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(later).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let mut b = with_ip("10.9.9.9");
        p.process(&mut b);
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.name"), Some("new-pod"));
    }

    #[test]
    fn pod_list_in_yaml() {
        let pods = parse_pods(
            "- name: api-0\n  namespace: shop\n  ip: 10.1.1.1\n  labels:\n    app: api\n- name: b\n",
        )
        .unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].ip, "10.1.1.1");
        assert_eq!(pods[0].labels.get("app").map(String::as_str), Some("api"));
        assert_eq!(parse_pods("[{\"name\":\"x\"}]").unwrap()[0].name, "x");
        assert!(parse_pods("- name: [unclosed\n").is_err());
        assert!(parse_pods("{\"name\": 1}").is_err());
    }

    #[test]
    fn from_env_adds_downward_api_and_resource_attributes() {
        let c = Config::default();
        let p = build_with_env(
            "k8sattributes",
            &c,
            &CollectorMetrics::unregistered(),
            &env_of(&[
                ("K8S_POD_NAME", "api-0"),
                ("K8S_NAMESPACE", "shop"),
                ("K8S_NODE_NAME", "n1"),
                ("K8S_POD_UID", "uid-9"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "team=pay%20ments, service.name=nope,bad,k8s.pod.name=x",
                ),
            ]),
        )
        .unwrap();
        let mut b = batch("api", vec![span("s", vec![])]);
        p.process(&mut b);
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(get_str(r, "k8s.pod.name"), Some("api-0"));
        assert_eq!(get_str(r, "k8s.namespace.name"), Some("shop"));
        assert_eq!(get_str(r, "k8s.node.name"), Some("n1"));
        assert_eq!(get_str(r, "k8s.pod.uid"), Some("uid-9"));
        assert_eq!(get_str(r, "team"), Some("pay ments"));
        assert_eq!(get_str(r, "service.name"), Some("api"), "never overwritten");

        let off = Config {
            from_env: false,
            ..Config::default()
        };
        let p = build_with_env(
            "k",
            &off,
            &CollectorMetrics::unregistered(),
            &env_of(&[("K8S_POD_NAME", "x")]),
        )
        .unwrap();
        let mut b = batch("api", vec![span("s", vec![])]);
        p.process(&mut b);
        assert_eq!(b[0].resource.as_ref().unwrap().attributes.len(), 1);
    }

    #[test]
    fn filter_by_node_from_env_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pods.yaml");
        let yaml = "- {name: api-7d9f, namespace: shop, ip: 10.0.0.5, node: n1}\n\
                    - {name: web-1, namespace: shop, uid: u-2, ip: 10.0.0.6, node: n2}\n\
                    - {name: jaeger-agent-1, namespace: obs, ip: 10.0.0.7, node: n2}\n";
        std::fs::write(&file, yaml).unwrap();
        let c: Config = serde_json::from_value(serde_json::json!({
            "pod_list_file": file, "from_env": false,
            "filter": {"node_from_env_var": "MY_NODE"},
            "exclude": {"pods": [{"name": "^jaeger-"}]},
            "wait_for_metadata": true, "wait_for_metadata_timeout": "5s"
        }))
        .unwrap();
        let m = CollectorMetrics::unregistered();
        let p = build_with_env("k", &c, &m, &env_of(&[("MY_NODE", "n2")])).unwrap();
        let mut b = with_ip("10.0.0.5");
        b.extend(with_ip("10.0.0.6"));
        b.extend(with_ip("10.0.0.7"));
        p.process(&mut b);
        assert_eq!(
            get_str(&b[2].resource.as_ref().unwrap().attributes, "k8s.pod.name"),
            None,
            "excluded by name"
        );
        assert_eq!(
            get_str(&b[0].resource.as_ref().unwrap().attributes, "k8s.pod.name"),
            None
        );
        assert_eq!(
            get_str(&b[1].resource.as_ref().unwrap().attributes, "k8s.pod.name"),
            Some("web-1")
        );
        assert!(build_with_env("k", &c, &m, &env_of(&[]))
            .err()
            .unwrap()
            .starts_with("filter.node_from_env_var"));

        let err = |v: serde_json::Value| {
            let c: Config = serde_json::from_value(v).unwrap();
            build_with_env("k", &c, &m, &env_of(&[])).err().unwrap()
        };
        assert!(err(serde_json::json!({"auth_type":"kubeConfig"})).starts_with("auth_type:"));
        assert!(
            err(serde_json::json!({"extract":{"metadata":["k8s.pod.nmae"]}}))
                .starts_with("extract.metadata[0]")
        );
        assert!(
            err(serde_json::json!({"extract":{"labels":[{"key_regex":"(.*)"}]}}))
                .starts_with("extract.labels[0].key_regex")
        );
        assert!(err(
            serde_json::json!({"extract":{"annotations":[{"key":"a","from":"namespace"}]}})
        )
        .starts_with("extract.annotations[0].from"));
        assert!(
            err(serde_json::json!({"pod_association":[{"sources":[{"from":"header"}]}]}))
                .starts_with("pod_association[0].sources[0].from")
        );
        assert!(
            err(serde_json::json!({"pod_list_file": dir.path().join("missing.json")}))
                .starts_with("pod_list_file:")
        );
        assert!(serde_json::from_str::<Config>(r#"{"auth_type":"token"}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"exclude":{"nodes":[]}}"#).is_err());
        assert!(err(serde_json::json!({"exclude":{"pods":[{"name":"("}]}}))
            .starts_with("exclude.pods[0].name"));
        assert_eq!(percent_decode("a%2Cb%zz%"), "a,b%zz%");
    }
    #[test]
    fn reference_yaml_example() {
        let c: Config = crate::processor::matching::tests::yaml(
            r#"
auth_type: "serviceAccount"
passthrough: false
filter:
  node_from_env_var: KUBE_NODE_NAME
extract:
  metadata:
    - k8s.pod.name
    - k8s.pod.uid
    - k8s.deployment.name
    - k8s.namespace.name
    - k8s.node.name
    - k8s.pod.start_time
  labels:
    - tag_name: app.label.component
      key: app.kubernetes.io/component
      from: pod
pod_association:
  - sources:
      - from: resource_attribute
        name: k8s.pod.ip
  - sources:
      - from: resource_attribute
        name: k8s.pod.uid
  - sources:
      - from: connection
"#,
        )
        .unwrap();
        let m = CollectorMetrics::unregistered();
        let p = build_with_env(
            "k8sattributes",
            &c,
            &m,
            &env_of(&[("KUBE_NODE_NAME", "n1")]),
        );
        assert!(p.is_ok());
        assert_eq!(c.extract.labels[0].tag_name, "app.label.component");
        assert_eq!(c.pod_association.len(), 3);
    }
}
