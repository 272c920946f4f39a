//! The one error type of the pipeline, mapped to both gRPC and HTTP the way the reference
//! collector maps them (../shared/REFERENCE.md).

use std::time::Duration;

use http::StatusCode;
use prost::Message;
use sextant_otlp_proto::rpc::{code, ProtoAny, RpcStatus};

/// Why the pipeline did not take a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The process is over its memory limit: retry later.
    #[error("memory limit reached ({detail}): retry later")]
    MemoryLimited {
        detail: String,
        retry_after: Duration,
    },
    /// A downstream stage failed in a way that may pass (disk, network, shutdown): retry.
    #[error("{0}: retry later")]
    Unavailable(String),
    /// The data itself is bad: do not retry.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is larger than allowed: do not retry.
    #[error("{0}")]
    TooLarge(String),
    /// The request's content type or encoding is not one we speak.
    #[error("{0}")]
    UnsupportedMedia(String),
}

impl PipelineError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PipelineError::MemoryLimited { retry_after, .. } => Some(*retry_after),
            PipelineError::Unavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            PipelineError::MemoryLimited { .. } | PipelineError::Unavailable(_) => {
                tonic::Code::Unavailable
            }
            PipelineError::InvalidArgument(_) | PipelineError::UnsupportedMedia(_) => {
                tonic::Code::InvalidArgument
            }
            // Not retryable: OTLP says RESOURCE_EXHAUSTED is retried only with RetryInfo.
            PipelineError::TooLarge(_) => tonic::Code::ResourceExhausted,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            PipelineError::MemoryLimited { .. } | PipelineError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PipelineError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            PipelineError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            PipelineError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `google.rpc.Status` body, with a `RetryInfo` detail when a delay is known.
    pub fn rpc_status(&self) -> RpcStatus {
        let rpc_code = match self.grpc_code() {
            tonic::Code::Unavailable => code::UNAVAILABLE,
            tonic::Code::ResourceExhausted => code::RESOURCE_EXHAUSTED,
            _ => code::INVALID_ARGUMENT,
        };
        let mut status = RpcStatus::new(rpc_code, self.to_string());
        if let Some(delay) = self.retry_after() {
            status.details.push(retry_info(delay));
        }
        status
    }

    /// As a gRPC status (with `RetryInfo` in the details when a delay is known).
    pub fn to_grpc(&self) -> tonic::Status {
        let status = self.rpc_status();
        if status.details.is_empty() {
            tonic::Status::new(self.grpc_code(), status.message)
        } else {
            tonic::Status::with_details(
                self.grpc_code(),
                status.message.clone(),
                status.encode_to_vec().into(),
            )
        }
    }
}

/// `google.rpc.RetryInfo { retry_delay: google.protobuf.Duration }` packed in an `Any`.
fn retry_info(delay: Duration) -> ProtoAny {
    #[derive(Clone, PartialEq, prost::Message)]
    struct ProtoDuration {
        #[prost(int64, tag = "1")]
        seconds: i64,
        #[prost(int32, tag = "2")]
        nanos: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        retry_delay: Option<ProtoDuration>,
    }
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    ProtoAny {
        type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
        value: info.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_reference_mapping() {
        let mem = PipelineError::MemoryLimited {
            detail: "rss 90 MiB > soft limit 80 MiB".into(),
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(mem.grpc_code(), tonic::Code::Unavailable);
        assert_eq!(mem.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let st = mem.to_grpc();
        let decoded = RpcStatus::decode(st.details()).unwrap();
        assert_eq!(
            decoded.details[0].type_url,
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        assert_eq!(
            PipelineError::InvalidArgument("x".into()).http_status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            PipelineError::TooLarge("x".into()).http_status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
