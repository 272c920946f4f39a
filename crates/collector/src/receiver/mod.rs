//! OTLP receivers: gRPC (4317) and HTTP (4318).

pub mod grpc;
pub mod http;

use sextant_otlp_proto::proto::{ExportTracePartialSuccess, ExportTraceServiceResponse};

use crate::ExportOutcome;

/// The OTLP response for the outcome of a request of `spans` spans: a partial success when
/// spans were refused for good (never more than the request held).
pub fn response_for(outcome: &ExportOutcome, spans: usize) -> ExportTraceServiceResponse {
    let rejected = rejected_of(outcome, spans);
    ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: outcome.message.clone(),
        }),
    }
}

/// The spans of a request of `spans` spans that its outcome says were refused.
pub fn rejected_of(outcome: &ExportOutcome, spans: usize) -> usize {
    usize::try_from(outcome.rejected_spans)
        .unwrap_or(usize::MAX)
        .min(spans)
}
