//! The store over the network: a [`TraceReader`] served over gRPC ([`service`], the
//! `sextant.store.v1.StoreReader` service of `sextant store`), read back through a client
//! ([`RemoteStore`]), and several readers answering as one ([`MultiReader`], what
//! `sextant query --store a,b` reads).
//!
//! Spans travel as encoded `TracesData` bytes. A scan's `prefilter` closure cannot travel: the
//! node applies the pushed-down terms (it sends every trace with a span carrying them all) and
//! the client applies the closure. The scan is a server stream that the node fills only as
//! fast as the client reads it (a bounded channel behind HTTP/2 flow control); the client
//! cancels it by dropping it once `visit` returns `false`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::{KeyValue, Resource, ResourceSpans, Span, TracesData};
use sextant_otlp_proto::store_api as pb;
use sextant_otlp_proto::store_api::store_reader_client::StoreReaderClient;
use sextant_otlp_proto::store_api::store_reader_server::{StoreReader, StoreReaderServer};
use sextant_otlp_proto::{SpanId, TraceId};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::query::{kind_name, status_name};
use crate::{
    Condition, LimitStats, MatchedSpan, Matcher, ScanStats, SearchQuery, SearchResult, SpanFilter,
    StoreError, StoreStats, TagScope, TagValue, Term, TimeWindow, TraceHit, TraceReader,
    TraceSummary, TraceVisit, ROOT_NOT_RECEIVED,
};

/// The largest message either side accepts (a whole trace, or a search's answer).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How many traces a scan's node reads ahead of what the client has taken.
const SCAN_READ_AHEAD: usize = 8;

/// Merges the parts of one trace read from several places: identical resources and scopes are
/// joined, and a span stored twice appears once.
pub fn merge_traces(parts: Vec<Vec<ResourceSpans>>) -> Vec<ResourceSpans> {
    crate::encode::merge(parts)
}

/// Whether a span (with its resource) carries every term: what a node applies for a scan.
pub fn span_carries(terms: &[Term], span: &Span, resource: Option<&Resource>) -> bool {
    terms.iter().all(|term| match term {
        Term::Name(n) => span.name == *n,
        Term::Status(s) => status_name(span) == s,
        Term::Kind(k) => kind_name(span.kind) == k,
        Term::Attr { key, value } => {
            let has = |attrs: &[KeyValue]| {
                attrs.iter().any(|kv| {
                    kv.key == *key && kv.value.as_ref().map(attr::render).as_deref() == Some(value)
                })
            };
            has(&span.attributes) || resource.is_some_and(|r| has(&r.attributes))
        }
    })
}

// ---------------------------------------------------------------- conversions

fn window_to_pb(w: &TimeWindow) -> pb::TimeWindow {
    pb::TimeWindow {
        start_ns: w.start_ns,
        end_ns: w.end_ns,
    }
}

fn window_from_pb(w: Option<pb::TimeWindow>) -> TimeWindow {
    w.map(|w| TimeWindow {
        start_ns: w.start_ns,
        end_ns: w.end_ns,
    })
    .unwrap_or_default()
}

fn scope_to_pb(s: Option<TagScope>) -> i32 {
    match s {
        None => pb::TagScope::Unspecified as i32,
        Some(TagScope::Resource) => pb::TagScope::Resource as i32,
        Some(TagScope::Span) => pb::TagScope::Span as i32,
    }
}

fn scope_from_pb(v: i32) -> Result<Option<TagScope>, String> {
    match pb::TagScope::try_from(v) {
        Ok(pb::TagScope::Unspecified) => Ok(None),
        Ok(pb::TagScope::Resource) => Ok(Some(TagScope::Resource)),
        Ok(pb::TagScope::Span) => Ok(Some(TagScope::Span)),
        Err(_) => Err(format!("unknown tag scope {v}")),
    }
}

fn term_to_pb(t: &Term) -> pb::Term {
    use pb::term::Term as T;
    let term = match t {
        Term::Name(n) => T::Name(n.clone()),
        Term::Status(s) => T::Status(s.clone()),
        Term::Kind(k) => T::Kind(k.clone()),
        Term::Attr { key, value } => T::Attr(pb::AttrTerm {
            key: key.clone(),
            value: value.clone(),
        }),
    };
    pb::Term { term: Some(term) }
}

fn term_from_pb(t: pb::Term) -> Result<Term, String> {
    use pb::term::Term as T;
    match t.term {
        Some(T::Name(n)) => Ok(Term::Name(n)),
        Some(T::Status(s)) => Ok(Term::Status(s)),
        Some(T::Kind(k)) => Ok(Term::Kind(k)),
        Some(T::Attr(a)) => Ok(Term::Attr {
            key: a.key,
            value: a.value,
        }),
        None => Err("a scan term is empty".into()),
    }
}

fn trace_id_from(bytes: &[u8]) -> Result<TraceId, String> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("a trace id has {} bytes, not 16", bytes.len()))?;
    Ok(TraceId(raw))
}

fn encode_trace(resource_spans: Vec<ResourceSpans>) -> Vec<u8> {
    TracesData { resource_spans }.encode_to_vec()
}

fn decode_trace(bytes: &[u8]) -> Result<Vec<ResourceSpans>, String> {
    TracesData::decode(bytes)
        .map(|d| d.resource_spans)
        .map_err(|e| format!("undecodable TracesData: {e}"))
}

fn search_to_pb(q: &SearchQuery) -> pb::SearchRequest {
    pb::SearchRequest {
        conditions: q
            .conditions
            .iter()
            .map(|c| pb::Condition {
                scope: scope_to_pb(c.scope),
                key: c.key.clone(),
                matcher: Some(match &c.matcher {
                    Matcher::Equals(v) => pb::condition::Matcher::Equals(v.clone()),
                    Matcher::Exists => pb::condition::Matcher::Exists(true),
                }),
            })
            .collect(),
        min_duration_ns: q.min_duration.map(duration_ns),
        max_duration_ns: q.max_duration.map(duration_ns),
        window: Some(window_to_pb(&q.window)),
        limit: q.limit as u64,
        spans_per_trace: q.spans_per_trace as u64,
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn search_from_pb(r: pb::SearchRequest) -> Result<SearchQuery, String> {
    let mut conditions = Vec::with_capacity(r.conditions.len());
    for c in r.conditions {
        let matcher = match c.matcher {
            Some(pb::condition::Matcher::Equals(v)) => Matcher::Equals(v),
            Some(pb::condition::Matcher::Exists(_)) => Matcher::Exists,
            None => return Err(format!("condition on {:?} has no matcher", c.key)),
        };
        conditions.push(Condition {
            scope: scope_from_pb(c.scope)?,
            key: c.key,
            matcher,
        });
    }
    Ok(SearchQuery {
        conditions,
        min_duration: r.min_duration_ns.map(Duration::from_nanos),
        max_duration: r.max_duration_ns.map(Duration::from_nanos),
        window: window_from_pb(r.window),
        limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
        spans_per_trace: usize::try_from(r.spans_per_trace).unwrap_or(usize::MAX),
    })
}

fn result_to_pb(r: SearchResult) -> pb::SearchResponse {
    pb::SearchResponse {
        traces: r
            .traces
            .into_iter()
            .map(|hit| pb::TraceHit {
                trace_id: hit.trace_id.as_bytes().to_vec(),
                summary: Some(pb::TraceSummary {
                    root_service: hit.summary.root_service,
                    root_name: hit.summary.root_name,
                    start_ns: hit.summary.start_ns,
                    duration_ns: hit.summary.duration_ns,
                    span_count: hit.summary.span_count as u64,
                }),
                matched_spans: hit
                    .matched_spans
                    .into_iter()
                    .map(|s| pb::MatchedSpan {
                        span_id: s.span_id.as_bytes().to_vec(),
                        name: s.name,
                        start_ns: s.start_ns,
                        duration_ns: s.duration_ns,
                        attributes: s.attributes.iter().map(|kv| kv.encode_to_vec()).collect(),
                    })
                    .collect(),
                matched: hit.matched as u64,
            })
            .collect(),
        inspected_traces: r.inspected_traces,
        inspected_bytes: r.inspected_bytes,
    }
}

fn result_from_pb(r: pb::SearchResponse) -> Result<SearchResult, String> {
    let mut traces = Vec::with_capacity(r.traces.len());
    for hit in r.traces {
        let summary = hit.summary.unwrap_or_default();
        let mut matched_spans = Vec::with_capacity(hit.matched_spans.len());
        for s in hit.matched_spans {
            let raw: [u8; 8] = s
                .span_id
                .as_slice()
                .try_into()
                .map_err(|_| format!("a span id has {} bytes, not 8", s.span_id.len()))?;
            let mut attributes = Vec::with_capacity(s.attributes.len());
            for a in &s.attributes {
                attributes.push(
                    KeyValue::decode(a.as_slice())
                        .map_err(|e| format!("undecodable attribute: {e}"))?,
                );
            }
            matched_spans.push(MatchedSpan {
                span_id: SpanId(raw),
                name: s.name,
                start_ns: s.start_ns,
                duration_ns: s.duration_ns,
                attributes,
            });
        }
        traces.push(TraceHit {
            trace_id: trace_id_from(&hit.trace_id)?,
            summary: TraceSummary {
                root_service: summary.root_service,
                root_name: summary.root_name,
                start_ns: summary.start_ns,
                duration_ns: summary.duration_ns,
                span_count: usize::try_from(summary.span_count).unwrap_or(usize::MAX),
            },
            matched_spans,
            matched: usize::try_from(hit.matched).unwrap_or(usize::MAX),
        });
    }
    Ok(SearchResult {
        traces,
        inspected_traces: r.inspected_traces,
        inspected_bytes: r.inspected_bytes,
    })
}

fn stats_to_pb(s: StoreStats, l: LimitStats) -> pb::StatsResponse {
    pb::StatsResponse {
        limits: Some(pb::LimitStats {
            discarded_trace_too_large: l.discarded_trace_too_large,
            discarded_trace_too_many_spans: l.discarded_trace_too_many_spans,
            truncated_attributes: l.truncated_attributes,
            tracked_traces: l.tracked_traces,
            rewritten_parts: l.rewritten_parts,
        }),
        spans_written: s.spans_written,
        writes: s.writes,
        flushes: s.flushes,
        bytes_on_disk: s.bytes_on_disk,
        blocks: s.blocks,
        block_bytes: s.block_bytes,
        wal_spans: s.wal_spans,
        blocks_cut: s.blocks_cut,
        compactions: s.compactions,
        blocks_expired: s.blocks_expired,
        blocks_quarantined: s.blocks_quarantined,
    }
}

fn limit_stats_from_pb(s: &pb::StatsResponse) -> LimitStats {
    let l = s.limits.unwrap_or_default();
    LimitStats {
        discarded_trace_too_large: l.discarded_trace_too_large,
        discarded_trace_too_many_spans: l.discarded_trace_too_many_spans,
        truncated_attributes: l.truncated_attributes,
        tracked_traces: l.tracked_traces,
        rewritten_parts: l.rewritten_parts,
    }
}

fn add_limit_stats(total: &mut LimitStats, l: &LimitStats) {
    total.discarded_trace_too_large += l.discarded_trace_too_large;
    total.discarded_trace_too_many_spans += l.discarded_trace_too_many_spans;
    total.truncated_attributes += l.truncated_attributes;
    total.tracked_traces += l.tracked_traces;
    total.rewritten_parts += l.rewritten_parts;
}

fn stats_from_pb(s: pb::StatsResponse) -> StoreStats {
    StoreStats {
        spans_written: s.spans_written,
        writes: s.writes,
        flushes: s.flushes,
        bytes_on_disk: s.bytes_on_disk,
        blocks: s.blocks,
        block_bytes: s.block_bytes,
        wal_spans: s.wal_spans,
        blocks_cut: s.blocks_cut,
        compactions: s.compactions,
        blocks_expired: s.blocks_expired,
        blocks_quarantined: s.blocks_quarantined,
    }
}

fn add_stats(total: &mut StoreStats, s: &StoreStats) {
    total.spans_written += s.spans_written;
    total.writes += s.writes;
    total.flushes += s.flushes;
    total.bytes_on_disk += s.bytes_on_disk;
    total.blocks += s.blocks;
    total.block_bytes += s.block_bytes;
    total.wal_spans += s.wal_spans;
    total.blocks_cut += s.blocks_cut;
    total.compactions += s.compactions;
    total.blocks_expired += s.blocks_expired;
    total.blocks_quarantined += s.blocks_quarantined;
}

/// A store error as a gRPC status: refused queries and data are INVALID_ARGUMENT, a missing
/// object NOT_FOUND, corrupt data DATA_LOSS, everything else (retryable) UNAVAILABLE.
pub fn to_status(e: &StoreError) -> Status {
    let code = match e {
        StoreError::InvalidQuery(_) | StoreError::InvalidData(_) => Code::InvalidArgument,
        StoreError::NotFound(_) => Code::NotFound,
        StoreError::Corrupt { .. } => Code::DataLoss,
        _ => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

/// A gRPC status from the node at `node` as a store error: INVALID_ARGUMENT is an invalid
/// query, NOT_FOUND a missing object; anything else is a retryable backend error naming the node.
pub fn from_status(node: &str, s: &Status) -> StoreError {
    match s.code() {
        Code::InvalidArgument => StoreError::InvalidQuery(s.message().to_string()),
        Code::NotFound => StoreError::NotFound(s.message().to_string()),
        code => StoreError::Backend(format!("store node {node}: {code:?}: {}", s.message())),
    }
}

// ---------------------------------------------------------------- the server

/// The `StoreReader` gRPC service over a reader (build it with [`service`]).
pub struct StoreReaderService {
    reader: Arc<dyn TraceReader>,
}

/// The `sextant.store.v1.StoreReader` service over `reader`. Reader calls block: each runs on a
/// blocking thread.
pub fn service(reader: Arc<dyn TraceReader>) -> StoreReaderServer<StoreReaderService> {
    StoreReaderServer::new(StoreReaderService { reader })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl StoreReaderService {
    /// Runs a blocking reader call on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn TraceReader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || f(reader.as_ref())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(call = what, error = %e, "store api call failed");
                Err(to_status(&e))
            }
            Err(e) => {
                tracing::error!(call = what, error = %e, "store api call stopped unexpectedly");
                Err(Status::internal(format!("{what} stopped unexpectedly")))
            }
        }
    }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StoreReader for StoreReaderService {
    async fn trace(
        &self,
        request: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        let r = request.into_inner();
        let id = trace_id_from(&r.trace_id).map_err(Status::invalid_argument)?;
        let window = window_from_pb(r.window);
        let found = self
            .blocking("trace", move |reader| reader.trace(id, window))
            .await?;
        Ok(Response::new(match found {
            Some(rs) => pb::TraceResponse {
                found: true,
                traces_data: encode_trace(rs),
            },
            None => pb::TraceResponse {
                found: false,
                traces_data: Vec::new(),
            },
        }))
    }

    type ScanStream = ScanStream;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let r = request.into_inner();
        let window = window_from_pb(r.window);
        let terms = r
            .terms
            .into_iter()
            .map(term_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let limit = match r.limit_hint {
            0 => u64::MAX,
            n => n,
        };
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<pb::ScanMessage, Status>>(SCAN_READ_AHEAD);
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let mut cancelled = false;
            let prefilter =
                |span: &Span, resource: Option<&Resource>| span_carries(&terms, span, resource);
            let mut visit = |id: TraceId, rs: &[ResourceSpans]| {
                let message = pb::ScanMessage {
                    message: Some(pb::scan_message::Message::Trace(pb::ScannedTrace {
                        trace_id: id.as_bytes().to_vec(),
                        traces_data: encode_trace(rs.to_vec()),
                    })),
                };
                // Waits while the client has not taken what was sent: flow control.
                if tx.blocking_send(Ok(message)).is_err() {
                    cancelled = true;
                    return false;
                }
                sent += 1;
                sent < limit
            };
            let result = reader.scan_terms(window, &terms, &prefilter, &mut visit);
            let last = match result {
                Ok(stats) => Ok(pb::ScanMessage {
                    message: Some(pb::scan_message::Message::Stats(pb::ScanStats {
                        inspected_traces: stats.inspected_traces,
                        inspected_spans: stats.inspected_spans,
                        inspected_bytes: stats.inspected_bytes,
                    })),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "store api scan failed");
                    Err(to_status(&e))
                }
            };
            if !cancelled {
                let _ = tx.blocking_send(last);
            }
            tracing::debug!(sent, cancelled, "store api scan done");
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let query = search_from_pb(request.into_inner()).map_err(Status::invalid_argument)?;
        let result = self
            .blocking("search", move |reader| reader.search(&query))
            .await?;
        Ok(Response::new(result_to_pb(result)))
    }

    async fn tag_names(
        &self,
        request: Request<pb::TagNamesRequest>,
    ) -> Result<Response<pb::TagNamesResponse>, Status> {
        let scope = scope_from_pb(request.into_inner().scope).map_err(Status::invalid_argument)?;
        let names = self
            .blocking("tag_names", move |reader| reader.tag_names(scope))
            .await?;
        Ok(Response::new(pb::TagNamesResponse {
            names: names
                .into_iter()
                .map(|(scope, name)| pb::TagName {
                    scope: scope_to_pb(Some(scope)),
                    name,
                })
                .collect(),
        }))
    }

    async fn tag_values(
        &self,
        request: Request<pb::TagValuesRequest>,
    ) -> Result<Response<pb::TagValuesResponse>, Status> {
        let r = request.into_inner();
        let scope = scope_from_pb(r.scope).map_err(Status::invalid_argument)?;
        let key = r.key;
        let values = self
            .blocking("tag_values", move |reader| reader.tag_values(scope, &key))
            .await?;
        Ok(Response::new(pb::TagValuesResponse {
            values: values
                .into_iter()
                .map(|v| pb::TagValue {
                    value: v.value,
                    type_name: v.type_name,
                })
                .collect(),
        }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let (stats, limits) = self
            .blocking("stats", |reader| Ok((reader.stats(), reader.limit_stats())))
            .await?;
        Ok(Response::new(stats_to_pb(stats, limits)))
    }
}

/// Serves [`service`] over `reader` on `listener` until `shutdown` resolves (then lets the
/// calls in flight finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    reader: Arc<dyn TraceReader>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StoreError> {
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service(reader))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| StoreError::Backend(format!("store api server: {e}")))
}

// ---------------------------------------------------------------- the client

/// How long a remote call may take before it fails (retryably).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A [`TraceReader`] over a `sextant store` node's gRPC API.
///
/// Its methods block the calling thread on the runtime whose handle it took at construction:
/// call them from blocking threads (`spawn_blocking`, as the query service does), never from
/// inside an async task (that would panic in `Handle::block_on`, or stall the runtime).
/// A node that is down or unreachable makes each call fail with a retryable
/// [`StoreError::Backend`]; the connection is made lazily, so a node may start later.
pub struct RemoteStore {
    url: String,
    client: StoreReaderClient<Channel>,
    handle: tokio::runtime::Handle,
}

impl RemoteStore {
    /// A client of the node at `url` (`http://host:port`, or `host:port`). Fails only when the
    /// URL is malformed; the node is not contacted until the first call. Must be called
    /// within a tokio runtime (whose handle runs the calls).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// [`Self::new`] with a per-call timeout.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::InvalidQuery(
                "RemoteStore::new must be called within a tokio runtime".into(),
            )
        })?;
        let url = normalize_url(url)?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| StoreError::InvalidQuery(format!("store url {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint.connect_lazy();
        let client = StoreReaderClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            url,
            client,
            handle,
        })
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn fail(&self, call: &'static str, s: &Status) -> StoreError {
        let e = from_status(&self.url, s);
        tracing::warn!(node = %self.url, call, code = ?s.code(), error = %e, "store node call failed");
        e
    }

    fn bad_answer(&self, call: &'static str, problem: String) -> StoreError {
        tracing::warn!(node = %self.url, call, %problem, "store node sent a bad answer");
        StoreError::Backend(format!("store node {}: {call}: {problem}", self.url))
    }
}

/// `host:port` gets `http://`; anything else must be an `http(s)://host:port` URL.
fn normalize_url(url: &str) -> Result<String, StoreError> {
    let url = url.trim();
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let bad = |why: &str| StoreError::InvalidQuery(format!("store url {url:?}: {why}"));
    let rest = full
        .strip_prefix("http://")
        .or_else(|| full.strip_prefix("https://"))
        .ok_or_else(|| bad("the scheme must be http or https"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad("expected host:port"));
    }
    let uri: tonic::codegen::http::Uri = full.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad("expected host:port"));
    }
    Ok(full.trim_end_matches('/').to_string())
}

impl TraceReader for RemoteStore {
    fn trace(
        &self,
        id: TraceId,
        window: TimeWindow,
    ) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        let mut client = self.client.clone();
        let request = pb::TraceRequest {
            trace_id: id.as_bytes().to_vec(),
            window: Some(window_to_pb(&window)),
        };
        let r = self
            .handle
            .block_on(client.trace(request))
            .map_err(|s| self.fail("trace", &s))?
            .into_inner();
        if !r.found {
            return Ok(None);
        }
        decode_trace(&r.traces_data)
            .map(Some)
            .map_err(|p| self.bad_answer("trace", p))
    }

    fn scan_terms(
        &self,
        window: TimeWindow,
        terms: &[Term],
        prefilter: &SpanFilter<'_>,
        visit: &mut TraceVisit<'_>,
    ) -> Result<ScanStats, StoreError> {
        let mut client = self.client.clone();
        let request = pb::ScanRequest {
            window: Some(window_to_pb(&window)),
            terms: terms.iter().map(term_to_pb).collect(),
            limit_hint: 0,
        };
        self.handle.block_on(async {
            let mut stream = client
                .scan(request)
                .await
                .map_err(|s| self.fail("scan", &s))?
                .into_inner();
            let mut stats = ScanStats::default();
            loop {
                let message = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        return Err(self.bad_answer("scan", "the stream ended early".into()))
                    }
                    Err(s) => return Err(self.fail("scan", &s)),
                };
                match message.message {
                    Some(pb::scan_message::Message::Trace(t)) => {
                        let id =
                            trace_id_from(&t.trace_id).map_err(|p| self.bad_answer("scan", p))?;
                        let rs =
                            decode_trace(&t.traces_data).map_err(|p| self.bad_answer("scan", p))?;
                        let admitted = rs.iter().any(|r| {
                            r.scope_spans
                                .iter()
                                .flat_map(|ss| ss.spans.iter())
                                .any(|span| prefilter(span, r.resource.as_ref()))
                        });
                        if admitted && !visit(id, &rs) {
                            // Dropping the stream cancels the call on the node.
                            return Ok(stats);
                        }
                    }
                    Some(pb::scan_message::Message::Stats(s)) => {
                        stats.inspected_traces = s.inspected_traces;
                        stats.inspected_spans = s.inspected_spans;
                        stats.inspected_bytes = s.inspected_bytes;
                        return Ok(stats);
                    }
                    None => return Err(self.bad_answer("scan", "an empty message".into())),
                }
            }
        })
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchResult, StoreError> {
        let mut client = self.client.clone();
        let r = self
            .handle
            .block_on(client.search(search_to_pb(query)))
            .map_err(|s| self.fail("search", &s))?
            .into_inner();
        result_from_pb(r).map_err(|p| self.bad_answer("search", p))
    }

    fn tag_names(&self, scope: Option<TagScope>) -> Result<Vec<(TagScope, String)>, StoreError> {
        let mut client = self.client.clone();
        let r = self
            .handle
            .block_on(client.tag_names(pb::TagNamesRequest {
                scope: scope_to_pb(scope),
            }))
            .map_err(|s| self.fail("tag_names", &s))?
            .into_inner();
        let mut out = Vec::with_capacity(r.names.len());
        for n in r.names {
            match scope_from_pb(n.scope) {
                Ok(Some(scope)) => out.push((scope, n.name)),
                Ok(None) => {
                    return Err(self.bad_answer("tag_names", "a tag name without scope".into()))
                }
                Err(p) => return Err(self.bad_answer("tag_names", p)),
            }
        }
        Ok(out)
    }

    fn tag_values(&self, scope: Option<TagScope>, key: &str) -> Result<Vec<TagValue>, StoreError> {
        let mut client = self.client.clone();
        let r = self
            .handle
            .block_on(client.tag_values(pb::TagValuesRequest {
                scope: scope_to_pb(scope),
                key: key.to_string(),
            }))
            .map_err(|s| self.fail("tag_values", &s))?
            .into_inner();
        Ok(r.values
            .into_iter()
            .map(|v| TagValue {
                value: v.value,
                type_name: v.type_name,
            })
            .collect())
    }

    /// The node's figures; zeros (and a warning) when it cannot be reached.
    fn stats(&self) -> StoreStats {
        let mut client = self.client.clone();
        match self.handle.block_on(client.stats(pb::StatsRequest {})) {
            Ok(r) => stats_from_pb(r.into_inner()),
            Err(s) => {
                let _ = self.fail("stats", &s);
                StoreStats::default()
            }
        }
    }

    /// The node's limit counters; zeros (and a warning) when it cannot be reached.
    fn limit_stats(&self) -> LimitStats {
        let mut client = self.client.clone();
        match self.handle.block_on(client.stats(pb::StatsRequest {})) {
            Ok(r) => limit_stats_from_pb(&r.into_inner()),
            Err(s) => {
                let _ = self.fail("stats", &s);
                LimitStats::default()
            }
        }
    }
}

// ---------------------------------------------------------------- several readers

/// Several readers answering as one (the store nodes behind one query service). Each call
/// asks every reader at once, on its own thread.
///
/// **Failure policy: no partial answers.** When any reader fails, the call fails with that
/// reader's error (a node that is down gives a retryable [`StoreError::Backend`], which the
/// query API turns into a retryable error), and the failure is logged with the reader's
/// index: an answer silently missing a node's spans would look complete. Only
/// [`TraceReader::stats`] sums what the reachable readers report.
pub struct MultiReader {
    readers: Vec<Arc<dyn TraceReader>>,
}

impl MultiReader {
    /// A reader over `readers` (at least one).
    pub fn new(readers: Vec<Arc<dyn TraceReader>>) -> Self {
        Self { readers }
    }

    /// How many readers it asks.
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Whether it has no reader (every answer is then empty).
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// Runs `f` on every reader concurrently; all answers, or the first error.
    fn all<T: Send>(
        &self,
        call: &'static str,
        f: impl Fn(&dyn TraceReader) -> Result<T, StoreError> + Sync,
    ) -> Result<Vec<T>, StoreError> {
        let results: Vec<Result<T, StoreError>> = if self.readers.len() == 1 {
            vec![f(self.readers[0].as_ref())]
        } else {
            std::thread::scope(|scope| {
                let f = &f;
                let handles: Vec<_> = self
                    .readers
                    .iter()
                    .map(|r| scope.spawn(move || f(r.as_ref())))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(StoreError::Backend(format!("a reader's {call} panicked")))
                        })
                    })
                    .collect()
            })
        };
        let mut out = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(reader = i, call, error = %e, "a store failed: no partial answer");
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// What a scanning thread hands to the caller's thread.
enum ScanItem {
    Trace(TraceId, Vec<ResourceSpans>),
    Done(Result<ScanStats, StoreError>),
}

impl TraceReader for MultiReader {
    fn trace(
        &self,
        id: TraceId,
        window: TimeWindow,
    ) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        let parts: Vec<Vec<ResourceSpans>> = self
            .all("trace", |r| r.trace(id, window))?
            .into_iter()
            .flatten()
            .collect();
        Ok(match parts.len() {
            0 => None,
            1 => parts.into_iter().next(),
            _ => Some(merge_traces(parts)),
        })
    }

    /// Every reader scans at once on its own thread (with the terms as their prefilter); the
    /// caller's thread applies `prefilter`, skips traces already seen, and visits each trace
    /// whole: with more than one reader, a trace found is read by id from every reader and
    /// merged, so a trace whose spans are split across nodes is visited complete, once.
    fn scan_terms(
        &self,
        window: TimeWindow,
        terms: &[Term],
        prefilter: &SpanFilter<'_>,
        visit: &mut TraceVisit<'_>,
    ) -> Result<ScanStats, StoreError> {
        if self.readers.len() == 1 {
            return self.readers[0].scan_terms(window, terms, prefilter, visit);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<ScanItem>(SCAN_READ_AHEAD);
        std::thread::scope(|scope| {
            for reader in &self.readers {
                let tx = tx.clone();
                scope.spawn(move || {
                    let terms_filter = |span: &Span, resource: Option<&Resource>| {
                        span_carries(terms, span, resource)
                    };
                    let mut forward = |id: TraceId, rs: &[ResourceSpans]| {
                        tx.send(ScanItem::Trace(id, rs.to_vec())).is_ok()
                    };
                    let result = reader.scan_terms(window, terms, &terms_filter, &mut forward);
                    let _ = tx.send(ScanItem::Done(result));
                });
            }
            drop(tx);
            let mut seen: HashSet<TraceId> = HashSet::new();
            let mut total = ScanStats::default();
            let mut outcome: Result<(), StoreError> = Ok(());
            // On return, `rx` is dropped and the scanning threads stop at their next send.
            for item in rx.iter() {
                match item {
                    ScanItem::Trace(id, rs) => {
                        if seen.contains(&id) {
                            continue;
                        }
                        let admitted = rs.iter().any(|r| {
                            r.scope_spans
                                .iter()
                                .flat_map(|ss| ss.spans.iter())
                                .any(|span| prefilter(span, r.resource.as_ref()))
                        });
                        seen.insert(id);
                        if !admitted {
                            continue;
                        }
                        let whole = match self.trace(id, window) {
                            Ok(Some(whole)) => whole,
                            Ok(None) => rs,
                            Err(e) => {
                                outcome = Err(e);
                                break;
                            }
                        };
                        if !visit(id, &whole) {
                            break;
                        }
                    }
                    ScanItem::Done(Ok(s)) => {
                        total.inspected_traces += s.inspected_traces;
                        total.inspected_spans += s.inspected_spans;
                        total.inspected_bytes += s.inspected_bytes;
                    }
                    ScanItem::Done(Err(e)) => {
                        tracing::warn!(error = %e, "a store's scan failed: no partial answer");
                        outcome = Err(e);
                        break;
                    }
                }
            }
            drop(rx);
            outcome.map(|()| total)
        })
    }

    /// Every reader's hits, a trace found by several merged into one hit, newest first, cut
    /// to the limit.
    fn search(&self, query: &SearchQuery) -> Result<SearchResult, StoreError> {
        let results = self.all("search", |r| r.search(query))?;
        let mut out = SearchResult::default();
        let mut hits: Vec<TraceHit> = Vec::new();
        for r in results {
            out.inspected_traces += r.inspected_traces;
            out.inspected_bytes += r.inspected_bytes;
            for hit in r.traces {
                match hits.iter_mut().find(|h| h.trace_id == hit.trace_id) {
                    Some(h) => merge_hit(h, hit, query.spans_per_trace),
                    None => hits.push(hit),
                }
            }
        }
        hits.sort_by(|a, b| {
            b.summary
                .start_ns
                .cmp(&a.summary.start_ns)
                .then_with(|| a.trace_id.as_bytes().cmp(b.trace_id.as_bytes()))
        });
        hits.truncate(query.limit);
        out.traces = hits;
        Ok(out)
    }

    fn tag_names(&self, scope: Option<TagScope>) -> Result<Vec<(TagScope, String)>, StoreError> {
        let mut names: Vec<(TagScope, String)> = self
            .all("tag_names", |r| r.tag_names(scope))?
            .into_iter()
            .flatten()
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn tag_values(&self, scope: Option<TagScope>, key: &str) -> Result<Vec<TagValue>, StoreError> {
        let mut values: Vec<TagValue> = self
            .all("tag_values", |r| r.tag_values(scope, key))?
            .into_iter()
            .flatten()
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }

    /// The sum of every reader's figures (an unreachable node counts zero).
    fn stats(&self) -> StoreStats {
        let mut total = StoreStats::default();
        if let Ok(all) = self.all("stats", |r| Ok(r.stats())) {
            for s in &all {
                add_stats(&mut total, s);
            }
        }
        total
    }

    /// The sum of every reader's limit counters (an unreachable node counts zero).
    fn limit_stats(&self) -> LimitStats {
        let mut total = LimitStats::default();
        if let Ok(all) = self.all("limit_stats", |r| Ok(r.limit_stats())) {
            for l in &all {
                add_limit_stats(&mut total, l);
            }
        }
        total
    }
}

/// Joins two hits of one trace found on different nodes.
fn merge_hit(into: &mut TraceHit, other: TraceHit, spans_per_trace: usize) {
    let a = &into.summary;
    let b = &other.summary;
    let start = a.start_ns.min(b.start_ns);
    let end = (a.start_ns + a.duration_ns).max(b.start_ns + b.duration_ns);
    let root_known = |s: &TraceSummary| s.root_name != ROOT_NOT_RECEIVED;
    let (root_service, root_name) = if root_known(a) || !root_known(b) {
        (a.root_service.clone(), a.root_name.clone())
    } else {
        (b.root_service.clone(), b.root_name.clone())
    };
    into.summary = TraceSummary {
        root_service,
        root_name,
        start_ns: start,
        duration_ns: end - start,
        span_count: a.span_count + b.span_count,
    };
    into.matched += other.matched;
    for s in other.matched_spans {
        if !into.matched_spans.iter().any(|m| m.span_id == s.span_id) {
            into.matched_spans.push(s);
        }
    }
    into.matched_spans.truncate(spans_per_trace);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SledStore, SpanWriter, StoreConfig};
    use sextant_otlp_proto::proto::{ScopeSpans, Status as SpanStatus};
    use sextant_otlp_proto::SpanBatch;

    fn trace(service: &str, id: u8, names: &[&str]) -> ResourceSpans {
        // Recent (older spans may be out of retention): a minute ago, a second per trace.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| duration_ns(d) - 60_000_000_000)
            .unwrap_or_default()
            + u64::from(id) * 1_000_000_000;
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr::kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| Span {
                        trace_id: vec![id; 16],
                        span_id: vec![id, i as u8 + 1, 0, 0, 0, 0, 0, 1],
                        name: name.to_string(),
                        kind: 2,
                        start_time_unix_nano: now + i as u64,
                        end_time_unix_nano: now + 1_000_000,
                        status: Some(SpanStatus::default()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path) -> SledStore {
        let mut config = StoreConfig::new(dir);
        // The background cut is not under test here.
        config.blocks.maintenance_interval = Duration::from_secs(3600);
        SledStore::open(config).unwrap()
    }

    /// A store with traces 1..=3 (1 and 2 of `api`, 3 of `web`) served on a loopback port.
    fn served(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> (SledStore, String) {
        let store = open(dir);
        let batch = vec![
            trace("api", 1, &["GET /a", "db"]),
            trace("api", 2, &["GET /b"]),
            trace("web", 3, &["render"]),
        ];
        rt.block_on(store.write(SpanBatch::from_decoded(batch)))
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reader: Arc<dyn TraceReader> = Arc::new(store.clone());
        rt.spawn(serve(listener, reader, std::future::pending()));
        (store, url)
    }

    #[test]
    fn a_remote_store_answers_as_the_local_one() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, url) = served(&rt, dir.path());
        let remote = {
            let _guard = rt.enter();
            RemoteStore::new(&url).unwrap()
        };
        // Called from a plain thread, as from `spawn_blocking`.
        let all = TimeWindow::all();
        let got = remote.trace(TraceId([1; 16]), all).unwrap().unwrap();
        assert_eq!(sextant_otlp_proto::span_count(&got), 2);
        assert!(remote.trace(TraceId([9; 16]), all).unwrap().is_none());

        // Terms are applied by the node, the closure by the client.
        let mut seen = Vec::new();
        let terms = [Term::Attr {
            key: "service.name".into(),
            value: "api".into(),
        }];
        let only_b = |s: &Span, _: Option<&Resource>| s.name == "GET /b";
        remote
            .scan_terms(all, &terms, &only_b, &mut |id, _| {
                seen.push(id);
                true
            })
            .unwrap();
        assert_eq!(seen, vec![TraceId([2; 16])]);
        // A visit that stops cancels the stream.
        let mut n = 0;
        remote
            .scan(all, &|_, _| true, &mut |_, _| {
                n += 1;
                false
            })
            .unwrap();
        assert_eq!(n, 1);

        let q = SearchQuery {
            conditions: vec![Condition::equals("service.name", "api")],
            ..Default::default()
        };
        assert_eq!(remote.search(&q).unwrap(), store.search(&q).unwrap());
        assert_eq!(
            remote.tag_names(None).unwrap(),
            store.tag_names(None).unwrap()
        );
        assert_eq!(
            remote
                .tag_values(Some(TagScope::Resource), "service.name")
                .unwrap(),
            store
                .tag_values(Some(TagScope::Resource), "service.name")
                .unwrap()
        );
        assert_eq!(remote.stats().spans_written, 4);
        // The node's limit counters cross the wire (sextant query --store shows them).
        assert_eq!(remote.limit_stats(), store.limit_stats());
        assert!(remote.limit_stats().tracked_traces > 0);
        drop(remote);
        rt.shutdown_background();
    }

    #[test]
    fn a_multi_reader_merges_and_fails_whole_when_a_node_is_down() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (_store, url) = served(&rt, dir.path());
        let other = tempfile::tempdir().unwrap();
        let local = open(other.path());
        rt.block_on(local.write(SpanBatch::from_decoded(vec![trace("api", 1, &["late"])])))
            .unwrap();
        let remote: Arc<dyn TraceReader> = {
            let _guard = rt.enter();
            Arc::new(RemoteStore::new(&url).unwrap())
        };
        let multi = MultiReader::new(vec![remote.clone(), Arc::new(local)]);
        let whole = multi
            .trace(TraceId([1; 16]), TimeWindow::all())
            .unwrap()
            .unwrap();
        assert_eq!(
            sextant_otlp_proto::span_count(&whole),
            3,
            "merged across readers"
        );
        let mut visited = Vec::new();
        multi
            .scan(TimeWindow::all(), &|_, _| true, &mut |id, rs| {
                visited.push((id, sextant_otlp_proto::span_count(rs)));
                true
            })
            .unwrap();
        visited.sort();
        assert_eq!(
            visited,
            vec![
                (TraceId([1; 16]), 3),
                (TraceId([2; 16]), 1),
                (TraceId([3; 16]), 1)
            ]
        );
        let hits = multi.search(&SearchQuery::default()).unwrap();
        assert_eq!(hits.traces.len(), 3);
        assert_eq!(hits.traces[0].trace_id, TraceId([3; 16]), "newest first");
        let one = hits
            .traces
            .iter()
            .find(|h| h.trace_id == TraceId([1; 16]))
            .unwrap();
        assert_eq!(one.summary.span_count, 3);
        // Limit counters add up over the nodes.
        let (a, b) = (remote.limit_stats(), multi.limit_stats());
        assert!(a.tracked_traces > 0 && b.tracked_traces > a.tracked_traces);

        // A node that is down: a retryable error, quickly.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let down: Arc<dyn TraceReader> = {
            let _guard = rt.enter();
            Arc::new(RemoteStore::new(&dead).unwrap())
        };
        let multi = MultiReader::new(vec![remote, down]);
        let started = std::time::Instant::now();
        let e = multi
            .trace(TraceId([1; 16]), TimeWindow::all())
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains(&dead), "{e}");
        let e = multi
            .scan(TimeWindow::all(), &|_, _| true, &mut |_, _| true)
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(multi);
        rt.shutdown_background();
    }

    #[test]
    fn store_urls_are_checked() {
        assert_eq!(
            normalize_url("127.0.0.1:9095").unwrap(),
            "http://127.0.0.1:9095"
        );
        assert_eq!(
            normalize_url("http://store-a:9095/").unwrap(),
            "http://store-a:9095"
        );
        for bad in [
            "",
            "ftp://x:1",
            "http://",
            "x",
            "http://x:1/path",
            "::::",
            "http://x:notaport",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn statuses_round_trip_to_store_errors() {
        let s = to_status(&StoreError::InvalidQuery("bad".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(matches!(from_status("n", &s), StoreError::InvalidQuery(_)));
        let s = to_status(&StoreError::Closed);
        assert_eq!(s.code(), Code::Unavailable);
        let e = from_status("n", &s);
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("store node n"), "{e}");
    }
}
