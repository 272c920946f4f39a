//! Sextant's span storage engine.
//!
//! The store is reached through two interfaces, so that later engines (immutable blocks,
//! object storage) can stand behind them without touching the collector or the query service:
//! * [`SpanWriter`]: durable batch writes; a write resolves only once its spans survive a crash.
//! * [`TraceReader`]: trace by id, search, tag names and tag values.
//!
//! [`SledStore`] is the embedded default: a sled database with group commit (one fsync covers
//! every write that arrived meanwhile), per-trace entries keyed by trace id, a start-time index
//! and tag dictionaries. See `ARCHITECTURE.md` for the layout on disk.

mod block;
mod blocks;
mod blockstore;
mod encode;
mod error;
mod limits;
mod query;
pub mod remote;
mod sled_store;
mod types;

pub use block::{Term, MAX_TERM_VALUE};
pub use blocks::{BlockBackend, BlockInfo, BlockStats, BlocksConfig, CompactionReport};
pub use blockstore::{BlockStore, LocalBlockStore, ObjectInfo, S3BlockStore, S3Config};
pub use error::StoreError;
pub use limits::{truncate_long_values, LimitStats, Limits, TRUNCATED_ATTRIBUTES};
pub use query::{Condition, Matcher};
pub use sled_store::{dir_size, SledStore, StoreConfig, MAX_VALUES_PER_TAG};
pub use types::*;

use sextant_otlp_proto::proto::{Resource, ResourceSpans, Span};
use sextant_otlp_proto::{SpanBatch, TraceId};
use std::future::Future;
use std::pin::Pin;

/// A span-level predicate pushed down into a scan: a span (with its resource) that may match.
pub type SpanFilter<'f> = dyn Fn(&Span, Option<&Resource>) -> bool + 'f;

/// Receives each whole trace of a scan; returns whether to go on.
pub type TraceVisit<'v> = dyn FnMut(TraceId, &[ResourceSpans]) -> bool + 'v;

/// Called for each span of a span-by-span scan ([`TraceReader::scan_spans`]), with its trace id
/// and resource; returns `false` to stop.
pub type SpanVisit<'v> = dyn FnMut(&TraceId, &Span, Option<&Resource>) -> bool + 'v;

/// What a scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub inspected_traces: u64,
    pub inspected_spans: u64,
    pub inspected_bytes: u64,
}

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The write side of a store.
pub trait SpanWriter: Send + Sync {
    /// Writes a batch. Resolves once every accepted span is durable; spans that cannot be
    /// stored (an invalid trace id, a trace over a [`Limits`] size limit) are counted in the
    /// receipt, with a message naming the first, never silently dropped.
    fn write(&self, batch: SpanBatch) -> BoxFuture<'_, Result<WriteReceipt, StoreError>>;
}

/// The read side of a store. Calls block: async callers run them on a blocking thread.
pub trait TraceReader: Send + Sync {
    /// Every span of a trace, grouped by resource and scope, or `None` when no span is stored.
    fn trace(
        &self,
        id: TraceId,
        window: TimeWindow,
    ) -> Result<Option<Vec<ResourceSpans>>, StoreError>;

    /// Reads whole traces in `window`, newest first: every trace with at least one span for
    /// which `prefilter` holds is passed to `visit` once, until `visit` returns `false`. This is
    /// what query languages (TraceQL) build on; `prefilter` is their pushed-down predicate.
    fn scan(
        &self,
        window: TimeWindow,
        prefilter: &SpanFilter<'_>,
        visit: &mut TraceVisit<'_>,
    ) -> Result<ScanStats, StoreError> {
        self.scan_terms(window, &[], prefilter, visit)
    }

    /// [`Self::scan`], told what every matching span carries (`terms`, empty when nothing is
    /// known): a store may skip the data where no span carries them all. `prefilter` must
    /// imply the terms.
    fn scan_terms(
        &self,
        window: TimeWindow,
        terms: &[Term],
        prefilter: &SpanFilter<'_>,
        visit: &mut TraceVisit<'_>,
    ) -> Result<ScanStats, StoreError>;

    /// Every stored span of the traces in `window`, one at a time with its resource, in no
    /// particular order, until `visit` returns `false`: what a query that looks at each span on
    /// its own (TraceQL metrics of one span-local filter) needs, without assembling traces. A
    /// store may skip the data where no span carries all the `terms`, and may leave out of each
    /// span what `fields` does not ask for. A span received twice (a client retry) in two
    /// blocks not yet compacted is visited twice, as Tempo counts it.
    fn scan_spans(
        &self,
        window: TimeWindow,
        terms: &[Term],
        fields: SpanFields,
        visit: &mut SpanVisit<'_>,
    ) -> Result<ScanStats, StoreError> {
        let _ = fields;
        let mut whole = |id: TraceId, trace: &[ResourceSpans]| visit_spans(&id, trace, visit);
        self.scan_terms(window, terms, &|_, _| true, &mut whole)
    }

    /// Traces with at least one span matching every condition, newest first.
    fn search(&self, query: &SearchQuery) -> Result<SearchResult, StoreError>;

    /// Attribute names seen, by scope.
    fn tag_names(&self, scope: Option<TagScope>) -> Result<Vec<(TagScope, String)>, StoreError>;

    /// Values seen for an attribute (in one scope, or in any when `scope` is `None`).
    fn tag_values(&self, scope: Option<TagScope>, key: &str) -> Result<Vec<TagValue>, StoreError>;

    /// Figures for `/metrics` and benchmarks.
    fn stats(&self) -> StoreStats;

    /// What the store's write limits refused and truncated, for `/metrics` (a store without
    /// limits, or one reached over the network, reports zeros).
    fn limit_stats(&self) -> LimitStats {
        LimitStats::default()
    }
}

/// Passes every span of a trace to `visit`; whether to go on.
pub(crate) fn visit_spans(
    id: &TraceId,
    trace: &[ResourceSpans],
    visit: &mut SpanVisit<'_>,
) -> bool {
    for rs in trace {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                if !visit(id, span, rs.resource.as_ref()) {
                    return false;
                }
            }
        }
    }
    true
}
