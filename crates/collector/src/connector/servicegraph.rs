//! The `servicegraph` connector: request counts, failures and latencies between services,
//! from pairs of spans, as the reference connector (and Tempo's service graph) computes them.
//!
//! A CLIENT (or PRODUCER) span and the SERVER (or CONSUMER) span whose parent it is form one
//! edge, keyed by trace id and the client's span id. Whichever half comes first waits in a
//! store bounded by `store.max_items` for at most `store.ttl`; when the other half arrives the
//! edge is recorded. A client span with a database name attribute (`db.name`) is an edge on its
//! own (`connection_type="database"`, server = the database name). Edges that expire unpaired
//! are counted, and, as the reference does with its virtual-node feature (on by default),
//! recorded with a virtual peer: a server span without parent gets client `user`, a client span
//! without server gets the first of `virtual_node_peer_attributes` it has (else `unknown`),
//! with `connection_type="virtual_node"`.
//!
//! Series: `traces_service_graph_request_total`, `traces_service_graph_request_failed_total`,
//! `traces_service_graph_request_server_seconds` and `..._client_seconds` (histograms),
//! labels `client`, `server`, `connection_type`, `failed` and the dimensions (`client_<dim>`,
//! `server_<dim>`); a series not updated for `cache_loop` is removed. The store's own
//! counters: `otelcol_connector_servicegraph_total_edges`, `..._expired_edges`,
//! `..._dropped_spans`.
//!
//! The connector never decodes protobuf: encoded parts of a batch are read where they lie, by
//! replaying the receiver's scan (`wire::Recorded`) or scanning the bytes again
//! ([`ServiceGraph::record_batch`]); only decoded parts (OTLP/JSON) are read as structs.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{span::SpanKind, KeyValue, ResourceSpans};
use sextant_otlp_proto::wire::{self, KeyValueRef, SpanRef, ValueRef, Visitor, WireError};

use super::spanmetrics::{duration_nanos, escape, lookup, sanitize, Buckets, Labels};
use crate::error::PipelineError;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

/// `connectors: servicegraph[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Latency buckets (`[2ms, 1s]`; bare numbers are nanoseconds, as in Go).
    #[serde(with = "super::spanmetrics::duration_list")]
    pub latency_histogram_buckets: Vec<Duration>,
    /// Span (then resource) attributes added as `client_<name>` / `server_<name>` labels.
    pub dimensions: Vec<String>,
    pub store: StoreConfig,
    /// Series not updated for this long are removed.
    #[serde(with = "crate::config::duration")]
    pub cache_loop: Duration,
    /// How often unpaired edges are checked for expiry.
    #[serde(with = "crate::config::duration")]
    pub store_expiration_loop: Duration,
    /// Attributes naming the peer of an unpaired client span, first match wins.
    pub virtual_node_peer_attributes: Vec<String>,
    /// Adds the `virtual_node` label (`client`/`server`) to edges with a virtual node.
    pub virtual_node_extra_label: bool,
    /// Accepted for compatibility: metrics are served from the registry when scraped.
    #[serde(with = "crate::config::duration")]
    pub metrics_flush_interval: Duration,
    /// Deprecated in the reference for `database_name_attributes`; used when that is left at
    /// its default.
    pub database_name_attribute: String,
    /// Attributes naming the database of a client span, first match wins.
    pub database_name_attributes: Vec<String>,
    /// Accepted for compatibility (the scrape sets the timestamps).
    #[serde(with = "crate::config::duration")]
    pub metrics_timestamp_offset: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            latency_histogram_buckets: DEFAULT_BUCKETS_MS
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            dimensions: Vec::new(),
            store: StoreConfig::default(),
            cache_loop: Duration::from_secs(60),
            store_expiration_loop: Duration::from_secs(2),
            virtual_node_peer_attributes: vec![
                "peer.service".into(),
                "db.name".into(),
                "db.system".into(),
            ],
            virtual_node_extra_label: false,
            metrics_flush_interval: Duration::from_secs(60),
            database_name_attribute: "db.name".into(),
            database_name_attributes: vec!["db.name".into()],
            metrics_timestamp_offset: Duration::ZERO,
        }
    }
}

const DEFAULT_BUCKETS_MS: [u64; 16] = [
    2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10_000, 15_000,
];

/// `store`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// How long half an edge waits for the other half.
    #[serde(with = "crate::config::duration")]
    pub ttl: Duration,
    /// Most half edges waiting; spans beyond are dropped (counted).
    pub max_items: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(2),
            max_items: 1000,
        }
    }
}

const UNKNOWN: &str = "";
const MESSAGING: &str = "messaging_system";
const DATABASE: &str = "database";
const VIRTUAL_NODE: &str = "virtual_node";

/// Trace id ++ span id of the client side.
type Key = [u8; 24];

fn key(trace_id: &[u8], span_id: &[u8]) -> Key {
    let mut k = [0u8; 24];
    let t = trace_id.len().min(16);
    k[..t].copy_from_slice(&trace_id[..t]);
    let s = span_id.len().min(8);
    k[16..16 + s].copy_from_slice(&span_id[..s]);
    k
}

#[derive(Debug, Default)]
struct Edge {
    client: Option<String>,
    server: Option<String>,
    connection_type: &'static str,
    client_latency: f64,
    server_latency: f64,
    failed: bool,
    /// `client_<dim>` / `server_<dim>` labels (sanitized names).
    dims: Vec<(String, String)>,
    /// The first virtual-node peer attribute of the client span.
    peer: Option<String>,
    /// The server span had no parent (a root span).
    parentless: bool,
    virtual_node: &'static str,
    generation: u64,
}

/// Sets a dimension label, replacing its value when the same half arrives again.
fn set_dim(dims: &mut Vec<(String, String)>, label: &str, value: String) {
    match dims.iter_mut().find(|(l, _)| l == label) {
        Some((_, v)) => *v = value,
        None => dims.push((label.to_string(), value)),
    }
}

/// Longest wait honoured (keeps `Instant` arithmetic far from overflow).
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

impl Edge {
    fn is_complete(&self) -> bool {
        self.client.is_some() && self.server.is_some()
    }
}

struct SeriesHandles {
    total: Counter,
    failed: Option<Counter>,
    server: Histogram,
    client: Histogram,
    last_updated: Instant,
}

#[derive(Default)]
struct State {
    edges: FxHashMap<Key, Edge>,
    /// Keys in order of arrival (so of expiry), with the generation of the edge they named.
    order: VecDeque<(Key, u64, Instant)>,
    generation: u64,
    series: FxHashMap<Labels, SeriesHandles>,
    last_expiry: Option<Instant>,
    last_cache_clean: Option<Instant>,
}

/// The connector. Build it with [`build`].
pub struct ServiceGraph {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    ttl: Duration,
    max_items: usize,
    cache_loop: Duration,
    expiration_loop: Duration,
    /// (attribute, client label, server label).
    dims: Vec<(String, String, String)>,
    peer_attributes: Vec<String>,
    database_attributes: Vec<String>,
    extra_label: bool,
    total: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    server_seconds: Family<Labels, Histogram, Buckets>,
    client_seconds: Family<Labels, Histogram, Buckets>,
    total_edges: Counter,
    expired_edges: Counter,
    dropped_spans: Counter,
    state: Mutex<State>,
}

/// Builds the connector and registers its metrics in `registry`.
pub fn build(
    name: &str,
    config: &Config,
    registry: &mut Registry,
) -> Result<Arc<dyn Consumer>, String> {
    Ok(Arc::new(ServiceGraph::new(name, config, registry)?))
}

impl ServiceGraph {
    pub fn new(name: &str, config: &Config, registry: &mut Registry) -> Result<Self, String> {
        let buckets: Vec<f64> = config
            .latency_histogram_buckets
            .iter()
            .map(Duration::as_secs_f64)
            .collect();
        if let Some(i) = buckets.windows(2).position(|w| w[1] <= w[0]) {
            return Err(format!(
                "latency_histogram_buckets[{}]: buckets must be increasing",
                i + 1
            ));
        }
        let buckets = if buckets.is_empty() {
            Config::default()
                .latency_histogram_buckets
                .iter()
                .map(Duration::as_secs_f64)
                .collect()
        } else {
            buckets
        };
        if config.store.ttl.is_zero() {
            return Err("store.ttl: must be positive".into());
        }
        if config.store.max_items == 0 {
            return Err("store.max_items: must be positive".into());
        }
        if config.cache_loop.is_zero() {
            return Err("cache_loop: must be positive".into());
        }
        if config.store_expiration_loop.is_zero() {
            return Err("store_expiration_loop: must be positive".into());
        }
        let reserved = [
            "client",
            "server",
            "connection_type",
            "failed",
            "virtual_node",
        ];
        let mut dims = Vec::with_capacity(config.dimensions.len());
        for (i, d) in config.dimensions.iter().enumerate() {
            if d.is_empty() {
                return Err(format!("dimensions[{i}]: must not be empty"));
            }
            let (c, s) = (
                sanitize(&format!("client_{d}")),
                sanitize(&format!("server_{d}")),
            );
            if dims
                .iter()
                .any(|(_, oc, _): &(String, String, String)| *oc == c)
                || reserved.contains(&c.as_str())
            {
                return Err(format!("dimensions[{i}]: duplicate dimension {d:?}"));
            }
            dims.push((d.clone(), c, s));
        }
        let default = Config::default();
        let database_attributes = if config.database_name_attributes
            == default.database_name_attributes
            && config.database_name_attribute != default.database_name_attribute
        {
            vec![config.database_name_attribute.clone()]
        } else {
            config.database_name_attributes.clone()
        };

        let buckets: Arc<[f64]> = buckets.into();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            ttl: config.store.ttl.min(MAX_WAIT),
            max_items: config.store.max_items,
            cache_loop: config.cache_loop,
            expiration_loop: config.store_expiration_loop,
            dims,
            peer_attributes: config.virtual_node_peer_attributes.clone(),
            database_attributes,
            extra_label: config.virtual_node_extra_label,
            total: Family::default(),
            failed: Family::default(),
            server_seconds: Family::new_with_constructor(Buckets(buckets.clone())),
            client_seconds: Family::new_with_constructor(Buckets(buckets)),
            total_edges: Counter::default(),
            expired_edges: Counter::default(),
            dropped_spans: Counter::default(),
            state: Mutex::new(State::default()),
        });
        registry.register(
            "traces_service_graph_request",
            "Total count of requests between two nodes",
            inner.total.clone(),
        );
        registry.register(
            "traces_service_graph_request_failed",
            "Total count of failed requests between two nodes",
            inner.failed.clone(),
        );
        registry.register_with_unit(
            "traces_service_graph_request_server",
            "Time for a request between two nodes as seen from the server",
            Unit::Seconds,
            inner.server_seconds.clone(),
        );
        registry.register_with_unit(
            "traces_service_graph_request_client",
            "Time for a request between two nodes as seen from the client",
            Unit::Seconds,
            inner.client_seconds.clone(),
        );
        let otelcol = registry.sub_registry_with_prefix("otelcol");
        otelcol.register(
            "connector_servicegraph_total_edges",
            "Total number of unique edges",
            inner.total_edges.clone(),
        );
        otelcol.register(
            "connector_servicegraph_expired_edges",
            "Number of edges that expired before finding its matching span",
            inner.expired_edges.clone(),
        );
        otelcol.register(
            "connector_servicegraph_dropped_spans",
            "Number of spans dropped when trying to add edges (store full)",
            inner.dropped_spans.clone(),
        );
        spawn_loop(Arc::downgrade(&inner), config.store_expiration_loop);
        tracing::debug!(connector = %name, "servicegraph connector built");
        Ok(Self { inner })
    }

    /// Pairs up `spans` and updates the metrics.
    pub fn record(&self, spans: &[ResourceSpans]) {
        self.inner.record(spans, Instant::now());
    }

    /// Expires unpaired edges older than the ttl and removes stale series, as of `now`.
    pub fn expire(&self, now: Instant) {
        self.inner.maintain(&mut self.inner.state.lock(), now, true);
    }
}

fn spawn_loop(inner: Weak<Inner>, interval: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Without a runtime, edges expire as spans arrive.
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(interval.clamp(Duration::from_millis(10), MAX_WAIT));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            let mut state = inner.state.lock();
            inner.maintain(&mut state, Instant::now(), false);
        }
    });
}

impl Inner {
    fn record(&self, resource_spans: &[ResourceSpans], now: Instant) {
        let mut state = self.state.lock();
        self.maintain(&mut state, now, false);
        self.record_decoded(&mut state, resource_spans, now);
    }

    fn record_decoded(&self, state: &mut State, resource_spans: &[ResourceSpans], now: Instant) {
        for rs in resource_spans {
            let resource_attrs: &[KeyValue] = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            // As the reference: spans of a resource without service.name are skipped.
            let Some(service) = attr::get_str(resource_attrs, "service.name") else {
                continue;
            };
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let facts = SpanFacts {
                        trace_id: &span.trace_id,
                        span_id: &span.span_id,
                        parent_span_id: &span.parent_span_id,
                        kind: span.kind,
                        failed: span.status.as_ref().is_some_and(|s| s.code == 2),
                        nanos: duration_nanos(span),
                        attrs: span.attributes.as_slice(),
                    };
                    self.record_span(state, service, resource_attrs, &facts, now);
                }
            }
        }
    }

    /// Whether pairing looks at span attributes at all (else a scan may skip them).
    fn wants_attributes(&self) -> bool {
        !self.dims.is_empty()
            || !self.peer_attributes.is_empty()
            || !self.database_attributes.is_empty()
    }

    fn record_span<'s, A: Attrs<'s>>(
        &self,
        state: &mut State,
        service: &str,
        resource_attrs: A,
        span: &SpanFacts<'s, A>,
        now: Instant,
    ) {
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let (client_side, connection_type) = match kind {
            SpanKind::Producer => (true, MESSAGING),
            SpanKind::Client => (true, UNKNOWN),
            SpanKind::Consumer => (false, MESSAGING),
            SpanKind::Server => (false, UNKNOWN),
            _ => return,
        };
        let k = if client_side {
            key(span.trace_id, span.span_id)
        } else {
            key(span.trace_id, span.parent_span_id)
        };
        let failed = span.failed;
        let seconds = span.nanos as f64 / 1e9;
        // As the reference: resource attributes first, then the span's.
        let find = |a: &str| resource_attrs.text(a).or_else(|| span.attrs.text(a));
        let update = |e: &mut Edge| {
            e.connection_type = connection_type;
            e.failed |= failed;
            if client_side {
                e.client = Some(service.to_string());
                e.client_latency = seconds;
                for (a, label, _) in &self.dims {
                    if let Some(v) = find(a) {
                        set_dim(&mut e.dims, label, v.into_owned());
                    }
                }
                if let Some(peer) = self.peer_attributes.iter().find_map(|a| span.attrs.text(a)) {
                    e.peer = Some(peer.into_owned());
                }
                // A database request has one span only: do not wait for a server span.
                if let Some(db) = self.database_attributes.iter().find_map(|a| find(a)) {
                    e.connection_type = DATABASE;
                    e.server = Some(db.into_owned());
                    e.server_latency = seconds;
                }
            } else {
                e.server = Some(service.to_string());
                e.server_latency = seconds;
                e.parentless = span.parent_span_id.iter().all(|b| *b == 0);
                for (a, _, label) in &self.dims {
                    if let Some(v) = find(a) {
                        set_dim(&mut e.dims, label, v.into_owned());
                    }
                }
            }
        };
        if let Some(e) = state.edges.get_mut(&k) {
            update(e);
            if e.is_complete() {
                if let Some(e) = state.edges.remove(&k) {
                    self.complete(state, e, now);
                }
            }
            return;
        }
        let mut e = Edge::default();
        update(&mut e);
        if e.is_complete() {
            self.total_edges.inc();
            self.complete(state, e, now);
            return;
        }
        if state.edges.len() >= self.max_items {
            self.dropped_spans.inc();
            tracing::debug!(
                connector = %self.name,
                max_items = self.max_items,
                "servicegraph store full: span dropped"
            );
            return;
        }
        self.total_edges.inc();
        state.generation += 1;
        e.generation = state.generation;
        state.order.push_back((k, e.generation, now + self.ttl));
        state.edges.insert(k, e);
    }

    /// Records a complete edge.
    fn complete(&self, state: &mut State, e: Edge, now: Instant) {
        let (Some(client), Some(server)) = (e.client, e.server) else {
            return;
        };
        let mut labels: Labels = Vec::with_capacity(5 + e.dims.len());
        labels.push(("client".into(), escape(&client)));
        labels.push(("server".into(), escape(&server)));
        labels.push(("connection_type".into(), e.connection_type.into()));
        labels.push(("failed".into(), e.failed.to_string()));
        let mut dims = e.dims;
        // Client dimensions first, then server ones, each in configuration order.
        dims.sort_by_key(|(l, _)| !l.starts_with("client_"));
        labels.extend(dims.into_iter().map(|(l, v)| (l, escape(&v))));
        if self.extra_label {
            labels.push(("virtual_node".into(), e.virtual_node.into()));
        }
        let series = match state.series.entry(labels) {
            Entry::Occupied(mut o) => {
                if e.failed && o.get().failed.is_none() {
                    let failed = self.failed.get_or_create(o.key()).clone();
                    o.get_mut().failed = Some(failed);
                }
                o.into_mut()
            }
            Entry::Vacant(v) => {
                let labels = v.key();
                let handles = SeriesHandles {
                    total: self.total.get_or_create(labels).clone(),
                    failed: e.failed.then(|| self.failed.get_or_create(labels).clone()),
                    server: self.server_seconds.get_or_create(labels).clone(),
                    client: self.client_seconds.get_or_create(labels).clone(),
                    last_updated: now,
                };
                v.insert(handles)
            }
        };
        series.last_updated = now;
        series.total.inc();
        if e.failed {
            if let Some(f) = &series.failed {
                f.inc();
            }
        }
        series.server.observe(e.server_latency);
        series.client.observe(e.client_latency);
    }

    /// Expires edges and cleans series when their loops are due (or at once with `force`).
    fn maintain(&self, state: &mut State, now: Instant, force: bool) {
        let due = |last: Option<Instant>, every: Duration| {
            force || last.is_none_or(|t| now.saturating_duration_since(t) >= every)
        };
        if due(state.last_expiry, self.expiration_loop) {
            state.last_expiry = Some(now);
            self.expire(state, now);
        }
        if due(state.last_cache_clean, self.cache_loop) {
            state.last_cache_clean = Some(now);
            let before = state.series.len();
            let cache_loop = self.cache_loop;
            state.series.retain(|labels, s| {
                let keep = now.saturating_duration_since(s.last_updated) < cache_loop;
                if !keep {
                    self.total.remove(labels);
                    self.failed.remove(labels);
                    self.server_seconds.remove(labels);
                    self.client_seconds.remove(labels);
                }
                keep
            });
            let removed = before - state.series.len();
            if removed > 0 {
                tracing::debug!(connector = %self.name, removed, "servicegraph: stale series removed");
            }
        }
    }

    fn expire(&self, state: &mut State, now: Instant) {
        while let Some(&(k, generation, deadline)) = state.order.front() {
            if deadline > now {
                break;
            }
            state.order.pop_front();
            if state
                .edges
                .get(&k)
                .is_none_or(|e| e.generation != generation)
            {
                continue; // completed (or replaced) since
            }
            let Some(mut e) = state.edges.remove(&k) else {
                continue;
            };
            self.expired_edges.inc();
            tracing::debug!(
                connector = %self.name,
                client = e.client.as_deref().unwrap_or(""),
                server = e.server.as_deref().unwrap_or(""),
                "servicegraph: edge expired unpaired"
            );
            if self.peer_attributes.is_empty() {
                continue;
            }
            e.connection_type = VIRTUAL_NODE;
            if e.client.is_none() && e.parentless {
                e.client = Some("user".into());
                e.virtual_node = "client";
            }
            if e.server.is_none() {
                e.server = Some(e.peer.take().unwrap_or_else(|| "unknown".into()));
                e.virtual_node = "server";
            }
            self.complete(state, e, now);
        }
    }
}

/// What pairing needs of one span, decoded or borrowed from the wire.
struct SpanFacts<'s, A> {
    trace_id: &'s [u8],
    span_id: &'s [u8],
    parent_span_id: &'s [u8],
    kind: i32,
    /// Status code ERROR.
    failed: bool,
    nanos: u64,
    attrs: A,
}

/// The text of an attribute, from decoded attributes or from the wire.
trait Attrs<'s>: Copy {
    fn text(self, key: &str) -> Option<Cow<'s, str>>;
}

impl<'s> Attrs<'s> for &'s [KeyValue] {
    fn text(self, key: &str) -> Option<Cow<'s, str>> {
        lookup(key, &[self])
    }
}

impl<'s, 'a: 's> Attrs<'s> for &'s [KeyValueRef<'a>] {
    fn text(self, key: &str) -> Option<Cow<'s, str>> {
        let kv = self.iter().find(|kv| kv.key == key)?;
        // Rendered as `attr::render` renders the decoded value. The scan does not look into
        // arrays and maps: such a value counts as absent here.
        Some(match kv.value {
            ValueRef::Str(s) => Cow::Borrowed(s),
            ValueRef::Bool(b) => Cow::Owned(b.to_string()),
            ValueRef::Int(i) => Cow::Owned(i.to_string()),
            ValueRef::Double(d) => Cow::Owned(d.to_string()),
            ValueRef::Bytes(b) => Cow::Owned(b.iter().map(|x| format!("{x:02x}")).collect()),
            ValueRef::Composite | ValueRef::Empty => return None,
        })
    }
}

/// Feeds spans shown by a wire scan (or its replay) to the pairing store.
struct WireSpans<'a, 'g> {
    inner: &'g Inner,
    state: &'g mut State,
    now: Instant,
    wants_attributes: bool,
    service: Option<&'a str>,
    resource: Vec<KeyValueRef<'a>>,
}

impl<'a> Visitor<'a> for WireSpans<'a, '_> {
    fn wants_attributes(&self) -> bool {
        self.wants_attributes
    }

    fn resource(&mut self, attributes: &[KeyValueRef<'a>]) {
        self.resource.clear();
        self.resource.extend_from_slice(attributes);
        // As the reference: spans of a resource without (string) service.name are skipped.
        self.service = attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value {
                ValueRef::Str(s) => Some(s),
                _ => None,
            });
    }

    fn span(&mut self, span: &SpanRef<'a>) {
        let Some(service) = self.service else {
            return;
        };
        let facts = SpanFacts {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            kind: span.kind,
            failed: span.status_code == 2,
            nanos: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano),
            attrs: span.attributes.as_slice(),
        };
        self.inner.record_span(
            self.state,
            service,
            self.resource.as_slice(),
            &facts,
            self.now,
        );
    }
}

impl ServiceGraph {
    /// Pairs up the spans of `batch` without decoding it: each encoded part is shown by
    /// replaying what the receiver's scan recorded (else by a scan of its bytes, which
    /// `SpanBatch::encoded` guarantees valid); decoded parts go through [`Self::record`]'s path.
    pub fn record_batch(&self, batch: &TraceBatch) -> Result<(), WireError> {
        self.record_batch_at(batch, Instant::now())
    }

    fn record_batch_at(&self, batch: &TraceBatch, now: Instant) -> Result<(), WireError> {
        let inner = &*self.inner;
        let mut state = inner.state.lock();
        inner.maintain(&mut state, now, false);
        let wants_attributes = inner.wants_attributes();
        for (i, bytes) in batch.encoded.iter().enumerate() {
            let mut visitor = WireSpans {
                inner,
                state: &mut state,
                now,
                wants_attributes,
                service: None,
                resource: Vec::new(),
            };
            if let Some(recorded) = batch.recorded(i) {
                match recorded.replay(bytes, &mut visitor) {
                    Ok(_) => continue,
                    Err(error) => {
                        // Replay refuses other bytes than were scanned before showing any
                        // span; a range error later would be a recorder bug (logged).
                        tracing::warn!(connector = %inner.name, part = i, %error, "servicegraph: recording not replayable, scanning the bytes");
                    }
                }
            }
            wire::scan_validated(bytes, &mut visitor)?;
        }
        inner.record_decoded(&mut state, &batch.decoded, now);
        Ok(())
    }
}

impl Consumer for ServiceGraph {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        // Never decodes protobuf: the spans are read where they lie.
        let result = self
            .record_batch(&batch)
            .map(|()| ExportOutcome::default())
            .map_err(|e| {
                tracing::warn!(connector = %self.inner.name, error = %e, "servicegraph: batch not readable");
                PipelineError::InvalidArgument(format!("connector {}: {e}", self.inner.name))
            });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::super::spanmetrics::tests::{backend, failed, frontend, resource, span, text};
    use super::*;

    fn parse(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    fn graph(json: &str) -> (ServiceGraph, Registry) {
        let mut registry = Registry::default();
        let g = ServiceGraph::new("servicegraph", &parse(json), &mut registry).unwrap();
        (g, registry)
    }

    const FE_BE: &str = r#"client="frontend",server="backend",connection_type="",failed="false""#;
    const BE_DB: &str =
        r#"client="backend",server="orders",connection_type="database",failed="false""#;

    fn assert_three_service_graph(t: &str) {
        assert!(
            t.contains(&format!("traces_service_graph_request_total{{{FE_BE}}} 1")),
            "{t}"
        );
        assert!(
            t.contains(&format!("traces_service_graph_request_total{{{BE_DB}}} 1")),
            "{t}"
        );
        // Server side 15ms, client side 20ms.
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_server_seconds_sum{{{FE_BE}}} 0.015"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_client_seconds_sum{{{FE_BE}}} 0.02"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_client_seconds_bucket{{le=\"0.01\",{FE_BE}}} 0"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_client_seconds_bucket{{le=\"0.05\",{FE_BE}}} 1"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_server_seconds_sum{{{BE_DB}}} 0.005"
            )),
            "{t}"
        );
        assert!(
            !t.contains("traces_service_graph_request_failed_total{"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn three_service_trace_in_one_batch() {
        let (g, registry) = graph("{}");
        let g: Arc<dyn Consumer> = Arc::new(g);
        g.consume(TraceBatch::from_decoded(vec![frontend(), backend()]))
            .await
            .unwrap();
        let t = text(&registry);
        assert_three_service_graph(&t);
        // The frontend's root span waits for its (virtual) client.
        assert!(!t.contains(r#"client="user""#), "{t}");
        assert!(
            t.contains("otelcol_connector_servicegraph_total_edges_total 3"),
            "{t}"
        );
    }

    /// The exposition's lines in order (series of a family come in hash order).
    fn sorted(t: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = t.lines().collect();
        lines.sort_unstable();
        lines
    }

    fn scanned(spans: Vec<ResourceSpans>) -> TraceBatch {
        use prost::Message;
        let bytes = sextant_otlp_proto::proto::ExportTraceServiceRequest {
            resource_spans: spans,
        }
        .encode_to_vec();
        let mut rec = wire::Recorder::new(&bytes);
        wire::scan_request(&bytes, &mut rec).unwrap();
        let rec = rec.finish();
        TraceBatch::from_scanned(bytes.into(), rec)
    }

    fn encoded(spans: Vec<ResourceSpans>) -> TraceBatch {
        use prost::Message;
        let bytes = sextant_otlp_proto::proto::ExportTraceServiceRequest {
            resource_spans: spans,
        }
        .encode_to_vec();
        let n = wire::scan_request(&bytes, &mut wire::CountSpans).unwrap();
        TraceBatch::from_encoded(bytes.into(), n)
    }

    #[tokio::test]
    async fn wire_paths_give_the_same_exposition_as_decoding() {
        const CONFIG: &str =
            r#"{"dimensions": ["http.method", "k8s.namespace.name"], "store": {"ttl": "1m"}}"#;
        let (decoded, decoded_reg) = graph(CONFIG);
        decoded.record(&[frontend(), backend()]);
        let want = text(&decoded_reg);
        assert!(want.contains(r#"traces_service_graph_request_total{client="frontend",server="backend",connection_type="",failed="false",client_k8s_namespace_name="shop",server_k8s_namespace_name="shop"} 1"#), "{want}");
        assert!(
            want.contains(r#"client="backend",server="orders",connection_type="database""#),
            "{want}"
        );
        // Replaying the receiver's recording, and scanning bytes that have none.
        for batch in [
            scanned(vec![frontend(), backend()]),
            encoded(vec![frontend(), backend()]),
        ] {
            assert!(batch.decoded.is_empty());
            let (g, registry) = graph(CONFIG);
            let g: Arc<dyn Consumer> = Arc::new(g);
            g.consume(batch).await.unwrap();
            assert_eq!(sorted(&text(&registry)), sorted(&want));
        }
        // Attribute values that are not strings render as decoding renders them.
        let typed = || {
            resource(
                "frontend",
                vec![span(
                    30,
                    Some(1),
                    "call",
                    SpanKind::Client,
                    2,
                    vec![
                        attr::kv_int("http.method", -7),
                        attr::kv_str("db.name", "users"),
                    ],
                )],
            )
        };
        let (d, d_reg) = graph(CONFIG);
        d.record(&[typed()]);
        let (w, w_reg) = graph(CONFIG);
        w.record_batch(&scanned(vec![typed()])).unwrap();
        let t = text(&w_reg);
        assert!(t.contains(r#"client_http_method="-7""#), "{t}");
        assert_eq!(sorted(&t), sorted(&text(&d_reg)));
    }

    #[test]
    fn a_batch_mixing_encoded_and_decoded_parts() {
        let (g, registry) = graph("{}");
        // The frontend's spans as bytes (one part recorded, one not), the backend's decoded.
        let mut fe = frontend();
        let second = fe.scope_spans[0].spans.split_off(1);
        let mut fe2 = fe.clone();
        fe2.scope_spans[0].spans = second;
        let mut batch = scanned(vec![fe]);
        batch.append(encoded(vec![fe2]));
        batch.append(TraceBatch::from_decoded(vec![backend()]));
        assert_eq!((batch.encoded.len(), batch.decoded.len()), (2, 1));
        g.record_batch(&batch).unwrap();
        let t = text(&registry);
        assert_three_service_graph(&t);
        assert!(
            t.contains("otelcol_connector_servicegraph_total_edges_total 3"),
            "{t}"
        );
        // A recording replayed over other bytes falls back to scanning them.
        let (g, registry) = graph("{}");
        let mut batch = scanned(vec![frontend(), backend()]);
        batch.recorded = scanned(vec![backend()]).recorded;
        g.record_batch(&batch).unwrap();
        assert_three_service_graph(&text(&registry));
    }

    #[test]
    fn server_before_client_in_different_batches() {
        let (g, registry) = graph("{}");
        g.record(&[backend()]);
        let t = text(&registry);
        assert!(!t.contains(r#"client="frontend""#), "{t}");
        assert!(
            t.contains(&format!("traces_service_graph_request_total{{{BE_DB}}} 1")),
            "{t}"
        );
        g.record(&[frontend()]);
        assert_three_service_graph(&text(&registry));
    }

    #[test]
    fn either_side_failing_counts_as_failed() {
        let (g, registry) = graph("{}");
        let mut be = backend();
        let s = be.scope_spans[0].spans.remove(0);
        be.scope_spans[0].spans.insert(0, failed(s));
        g.record(&[frontend(), be]);
        let t = text(&registry);
        let labels = r#"client="frontend",server="backend",connection_type="",failed="true""#;
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_failed_total{{{labels}}} 1"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!("traces_service_graph_request_total{{{labels}}} 1")),
            "{t}"
        );
        assert!(
            !t.contains(&format!(
                "traces_service_graph_request_failed_total{{{BE_DB}}}"
            )),
            "{t}"
        );

        // A failing client side.
        let (g, registry) = graph("{}");
        let mut fe = frontend();
        let s = fe.scope_spans[0].spans.remove(1);
        fe.scope_spans[0].spans.push(failed(s));
        g.record(&[fe, backend()]);
        let t = text(&registry);
        assert!(
            t.contains(&format!(
                "traces_service_graph_request_failed_total{{{labels}}} 1"
            )),
            "{t}"
        );
    }

    #[test]
    fn unpaired_edges_expire_into_virtual_nodes() {
        use SpanKind::*;
        let (g, registry) = graph(r#"{"store": {"ttl": "1s", "max_items": 100}}"#);
        let start = Instant::now();
        let payments = resource(
            "frontend",
            vec![span(
                9,
                Some(1),
                "charge",
                Client,
                3,
                vec![attr::kv_str("peer.service", "payments")],
            )],
        );
        let lonely = resource(
            "frontend",
            vec![span(8, Some(1), "ping", Client, 3, vec![])],
        );
        g.inner.record(&[frontend(), payments, lonely], start);
        g.expire(start + Duration::from_millis(500));
        let t = text(&registry);
        assert!(!t.contains(r#"connection_type="virtual_node""#), "{t}");
        g.expire(start + Duration::from_millis(1001));
        let t = text(&registry);
        assert!(t.contains(r#"traces_service_graph_request_total{client="user",server="frontend",connection_type="virtual_node",failed="false"} 1"#), "{t}");
        assert!(t.contains(r#"traces_service_graph_request_total{client="frontend",server="payments",connection_type="virtual_node",failed="false"} 1"#), "{t}");
        assert!(t.contains(r#"traces_service_graph_request_total{client="frontend",server="unknown",connection_type="virtual_node",failed="false"} 2"#), "{t}");
        // The frontend -> backend client span also expired: its server never came.
        assert!(
            t.contains("otelcol_connector_servicegraph_expired_edges_total 4"),
            "{t}"
        );
        assert!(g.inner.state.lock().edges.is_empty());

        // Without peer attributes, expired edges are only counted.
        let (g, registry) = graph(r#"{"virtual_node_peer_attributes": []}"#);
        g.inner.record(&[frontend()], start);
        g.expire(start + Duration::from_secs(3));
        let t = text(&registry);
        assert!(!t.contains("traces_service_graph_request_total{"), "{t}");
        assert!(
            t.contains("otelcol_connector_servicegraph_expired_edges_total 2"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn the_expiration_loop_runs_by_itself() {
        let (g, registry) = graph(r#"{"store": {"ttl": "50ms"}, "store_expiration_loop": "20ms"}"#);
        g.record(&[frontend()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = text(&registry);
        assert!(t.contains(r#"traces_service_graph_request_total{client="user",server="frontend",connection_type="virtual_node",failed="false"} 1"#), "{t}");
        assert!(g.inner.state.lock().edges.is_empty());
    }

    #[test]
    fn store_is_bounded_and_stale_series_go() {
        use SpanKind::*;
        let (g, registry) = graph(r#"{"store": {"max_items": 2}, "cache_loop": "1m"}"#);
        let start = Instant::now();
        let spans = (10..15)
            .map(|i| span(i, Some(1), "call", Client, 1, vec![]))
            .collect();
        g.inner.record(&[resource("frontend", spans)], start);
        let t = text(&registry);
        assert!(
            t.contains("otelcol_connector_servicegraph_dropped_spans_total 3"),
            "{t}"
        );
        assert_eq!(g.inner.state.lock().edges.len(), 2);
        // A database edge needs no room in the store.
        g.inner.record(&[backend()], start);
        assert!(
            text(&registry).contains(&format!("traces_service_graph_request_total{{{BE_DB}}} 1"))
        );
        g.expire(start + Duration::from_secs(61));
        let t = text(&registry);
        assert!(!t.contains(BE_DB), "{t}");
        // What is left: the two stored client spans, expired into one virtual-node series.
        assert_eq!(g.inner.state.lock().series.len(), 1, "{t}");
        assert!(t.contains(r#"traces_service_graph_request_total{client="frontend",server="unknown",connection_type="virtual_node",failed="false"} 2"#), "{t}");
    }

    #[test]
    fn messaging_and_dimensions() {
        use SpanKind::*;
        let (g, registry) = graph(r#"{"dimensions": ["http.method", "k8s.namespace.name"]}"#);
        let producer = resource(
            "orders",
            vec![span(
                20,
                None,
                "publish",
                Producer,
                2,
                vec![attr::kv_str("http.method", "POST")],
            )],
        );
        let consumer = resource(
            "billing",
            vec![span(21, Some(20), "process", Consumer, 4, vec![])],
        );
        // A client retry sends the producer span twice: labels stay unique.
        g.record(std::slice::from_ref(&producer));
        g.record(&[producer, consumer]);
        let t = text(&registry);
        assert!(t.contains(r#"traces_service_graph_request_total{client="orders",server="billing",connection_type="messaging_system",failed="false",client_http_method="POST",client_k8s_namespace_name="shop",server_k8s_namespace_name="shop"} 1"#), "{t}");
    }

    #[test]
    fn config_keys_and_refusals() {
        // The reference README's example.
        let c = parse(
            r#"{"latency_histogram_buckets": [1,2,3,4,5], "dimensions": ["dimension-1", "dimension-2"],
                "store": {"ttl": "1s", "max_items": 10}}"#,
        );
        assert_eq!(c.latency_histogram_buckets[4], Duration::from_nanos(5));
        assert_eq!(c.store.ttl, Duration::from_secs(1));
        assert_eq!(c.cache_loop, Duration::from_secs(60));
        assert!(build("servicegraph", &c, &mut Registry::default()).is_ok());
        let c = parse(
            r#"{"latency_histogram_buckets": ["100ms", "250ms", "1s"], "cache_loop": "2m",
                "store_expiration_loop": "10s", "virtual_node_peer_attributes": ["db.name", "rpc.service"],
                "metrics_flush_interval": "5s", "database_name_attribute": "db.namespace"}"#,
        );
        let g = ServiceGraph::new("servicegraph", &c, &mut Registry::default()).unwrap();
        assert_eq!(
            g.inner.database_attributes,
            vec!["db.namespace".to_string()]
        );

        let err = |json: &str| match build("servicegraph", &parse(json), &mut Registry::default()) {
            Err(e) => e,
            Ok(_) => panic!("{json} was accepted"),
        };
        assert!(err(r#"{"latency_histogram_buckets": ["1s", "1ms"]}"#)
            .starts_with("latency_histogram_buckets[1]: "));
        assert!(err(r#"{"store": {"max_items": 0}}"#).starts_with("store.max_items: "));
        assert!(err(r#"{"dimensions": ["a", "a"]}"#).starts_with("dimensions[1]: duplicate"));
        assert!(serde_json::from_str::<Config>(r#"{"store": {"size": 1}}"#).is_err());
        assert!(
            serde_json::from_str::<Config>(r#"{"exponential_histogram_max_size": 160}"#).is_err()
        );
    }
}
