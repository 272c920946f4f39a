//! The one error type of the query API, and how it is answered over HTTP.
//!
//! Tempo answers errors with a `text/plain` body that says what is wrong; so do we. Client
//! mistakes are 4xx and name the parameter at fault; store failures are 5xx.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sextant_otlp_proto::IdError;
use sextant_store::StoreError;

use crate::duration::DurationError;
use crate::logfmt::LogfmtError;

/// Everything a query request can fail with. The `Display` text is the response body.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The trace id in the path is not a trace id (the text is [`IdError`]'s own).
    #[error("{0}")]
    InvalidTraceId(#[from] IdError),

    /// A query parameter has a value we cannot use.
    #[error("invalid {name} {value:?}: {problem}")]
    InvalidParam {
        /// The parameter's name, as the client wrote it (`start`, `limit`, ...).
        name: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },

    /// Two parameters contradict each other (`start` after `end`, ...).
    #[error("{0}")]
    InconsistentParams(String),

    /// `minDuration` or `maxDuration` is not a Go duration.
    #[error("invalid {name}: {source}")]
    InvalidDuration {
        /// `minDuration` or `maxDuration`.
        name: &'static str,
        /// What is wrong with the text.
        source: DurationError,
    },

    /// `tags` is not logfmt.
    #[error("invalid tags: {0}")]
    InvalidTags(#[from] LogfmtError),

    /// A tag scope we do not know (`scope=` or the prefix of a scoped tag name).
    #[error("{0}")]
    InvalidScope(String),

    /// The URL's query string or path could not be decoded.
    #[error("malformed request: {0}")]
    Malformed(String),

    /// The trace asked for is not stored (in the window asked for).
    #[error("trace not found")]
    TraceNotFound,

    /// No endpoint has this path.
    #[error("not found: no endpoint at {0}")]
    UnknownPath(String),

    /// The endpoint exists but not for this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path asked for.
        path: String,
    },

    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),

    /// The blocking task running a store call panicked or was cancelled.
    #[error("internal error: store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),

    /// Rendering a response failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    /// A parameter with a bad value.
    pub(crate) fn param(name: &'static str, value: &str, problem: impl Into<String>) -> Self {
        QueryError::InvalidParam {
            name,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::InvalidTraceId(_)
            | QueryError::InvalidParam { .. }
            | QueryError::InconsistentParams(_)
            | QueryError::InvalidDuration { .. }
            | QueryError::InvalidTags(_)
            | QueryError::InvalidScope(_)
            | QueryError::Malformed(_) => StatusCode::BAD_REQUEST,
            QueryError::TraceNotFound | QueryError::UnknownPath(_) => StatusCode::NOT_FOUND,
            QueryError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            QueryError::Store(StoreError::InvalidQuery(_)) => StatusCode::BAD_REQUEST,
            // A store shutting down, or a store node / object storage not answering: retry.
            QueryError::Store(StoreError::Closed | StoreError::Backend(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            QueryError::Store(_) | QueryError::Task(_) | QueryError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl From<QueryRejection> for QueryError {
    fn from(rejection: QueryRejection) -> Self {
        QueryError::Malformed(rejection.body_text())
    }
}

impl From<PathRejection> for QueryError {
    fn from(rejection: PathRejection) -> Self {
        QueryError::Malformed(rejection.body_text())
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.to_string();
        if status.is_server_error() {
            tracing::error!(%status, error = %body, "query failed");
        } else {
            tracing::debug!(%status, error = %body, "query rejected");
        }
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(QueryError::TraceNotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            QueryError::InvalidScope("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            QueryError::Store(StoreError::Closed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            QueryError::Store(StoreError::Backend("store node down".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            QueryError::Store(StoreError::InvalidQuery("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            QueryError::Store(StoreError::Corrupt {
                key: "k".into(),
                problem: "p".into()
            })
            .status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            QueryError::param("limit", "x", "not a number").to_string(),
            r#"invalid limit "x": not a number"#
        );
    }
}
