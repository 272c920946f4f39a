//! OTLP receivers: gRPC (4317) and HTTP (4318).

pub mod grpc;
pub mod http;

use sextant_otlp_proto::proto::{ExportTracePartialSuccess, ExportTraceServiceResponse};

use crate::ExportOutcome;

/// The OTLP response for an outcome: a partial success when spans were refused for good.
pub fn response_for(outcome: &ExportOutcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (outcome.rejected_spans > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: outcome.rejected_spans as i64,
            error_message: outcome.message.clone(),
        }),
    }
}
