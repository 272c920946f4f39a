//! The Tempo HTTP API: the endpoints Grafana's Tempo data source calls.
//!
//! * [`traces`]: trace by id, `/api/traces/{id}` and `/api/v2/traces/{id}`.
//! * [`search`]: `/api/search` (TraceQL `q`, or tags, durations and time range).
//! * [`tags`]: tag names and values, v1 and v2.

pub mod metrics_api;
pub mod search;
pub mod tags;
pub mod traces;

use std::sync::Arc;

use sextant_store::{StoreError, TraceReader};

use crate::error::QueryError;
use crate::QueryState;

/// Runs a (blocking) store call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(state: &QueryState, call: F) -> Result<T, QueryError>
where
    T: Send + 'static,
    F: FnOnce(&dyn TraceReader) -> Result<T, StoreError> + Send + 'static,
{
    let reader = Arc::clone(&state.reader);
    Ok(tokio::task::spawn_blocking(move || call(reader.as_ref())).await??)
}
