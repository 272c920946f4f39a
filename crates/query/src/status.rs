//! Liveness and build information: `GET /ready`, `GET /api/echo`, `GET /api/status/buildinfo`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::QueryState;

/// The compiler that built this crate (set by `build.rs`); Tempo reports `goVersion` here.
const RUSTC_VERSION: &str = env!("SEXTANT_RUSTC_VERSION");

/// `GET /ready`: `ready` once the service answers.
pub(crate) async fn ready() -> &'static str {
    "ready"
}

/// `GET /api/echo`: `echo` (Grafana's data source test calls it).
pub(crate) async fn echo() -> &'static str {
    "echo"
}

/// `GET /api/status/buildinfo`, in Tempo's shape. Revision, branch, user and date come from
/// the `SEXTANT_GIT_REVISION`, `SEXTANT_GIT_BRANCH`, `SEXTANT_BUILD_USER` and
/// `SEXTANT_BUILD_DATE` environment variables at build time, and are empty when unset.
pub(crate) async fn buildinfo(State(state): State<QueryState>) -> Json<Value> {
    Json(json!({
        "version": state.version,
        "revision": option_env!("SEXTANT_GIT_REVISION").unwrap_or(""),
        "branch": option_env!("SEXTANT_GIT_BRANCH").unwrap_or(""),
        "buildUser": option_env!("SEXTANT_BUILD_USER").unwrap_or(""),
        "buildDate": option_env!("SEXTANT_BUILD_DATE").unwrap_or(""),
        "goVersion": RUSTC_VERSION,
    }))
}
