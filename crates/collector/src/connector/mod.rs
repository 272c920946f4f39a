//! Connectors: the end of a traces pipeline that turns spans into metrics (spanmetrics,
//! servicegraph), served in Prometheus format.

pub mod servicegraph;
pub mod spanmetrics;

use sextant_otlp_proto::proto::ResourceSpans;

use crate::error::PipelineError;
use crate::{BoxFuture, ExportOutcome, TraceBatch};

/// What a connector does with a batch: look at its spans (decoded once) and answer at once;
/// a connector is a terminal of its traces pipeline.
pub(crate) fn consume_with(
    mut batch: TraceBatch,
    record: impl FnOnce(&[ResourceSpans]),
) -> BoxFuture<'static, Result<ExportOutcome, PipelineError>> {
    let result = crate::processor::decoded(&mut batch).map(|spans| {
        record(spans);
        ExportOutcome::default()
    });
    Box::pin(async move { result })
}
