//! Jaeger remote sampling: `GET /sampling?service=NAME` and `GET /api/sampling?service=NAME`,
//! what Jaeger SDKs and OpenTelemetry's `jaeger_remote` sampler poll (Jaeger's agent serves
//! the first on 5778, its collector the second on 14268).
//!
//! The strategies come from a Jaeger strategies file:
//!
//! ```json
//! {"service_strategies": [
//!    {"service": "foo", "type": "probabilistic", "param": 0.8,
//!     "operation_strategies": [{"operation": "op1", "type": "probabilistic", "param": 0.2}]},
//!    {"service": "bar", "type": "ratelimiting", "param": 5}],
//!  "default_strategy": {"type": "probabilistic", "param": 0.5, "operation_strategies": []}}
//! ```
//!
//! and are answered in the JSON of Jaeger's `SamplingStrategyResponse` (`strategyType`
//! `PROBABILISTIC` | `RATE_LIMITING`, `probabilisticSampling`, `rateLimitingSampling`,
//! `operationSampling`). As in Jaeger's static strategy provider: a service not in the file
//! gets the default strategy (probabilistic 0.001 without a file or `default_strategy`); the
//! default strategy's operation strategies are merged into every service's (the service's own
//! win), and a service without operation strategies of its own gets the default's, with its
//! own probability as `defaultSamplingProbability` when it is probabilistic; operation
//! strategies are probabilistic only, so a `ratelimiting` one is skipped with a warning.
//! Unlike Jaeger, an unknown type, a parameter out of range, an unknown key or a service given
//! twice is an error rather than a silent fallback.
//!
//! [`StrategyStore`] re-reads the file when its modification time (or size) changes, checked
//! at most once per [`CHECK_INTERVAL`] when a request comes. A broken new file keeps the last
//! good strategies and logs an error; a broken file at start is an error. [`Strategies`] is
//! the pure part: parse, validate, answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// The sampling probability Jaeger uses when no strategy says otherwise.
pub const DEFAULT_SAMPLING_PROBABILITY: f64 = 0.001;

/// How often, at most, [`StrategyStore`] looks at its file's modification time.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `strategyType` of a [`SamplingStrategyResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StrategyType {
    /// Sample a fixed share of traces (`probabilisticSampling`).
    #[serde(rename = "PROBABILISTIC")]
    Probabilistic,
    /// Sample at most a number of traces per second (`rateLimitingSampling`).
    #[serde(rename = "RATE_LIMITING")]
    RateLimiting,
}

/// `probabilisticSampling`: `{"samplingRate"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbabilisticSampling {
    /// The probability of sampling a trace, in 0..=1.
    pub sampling_rate: f64,
}

/// `rateLimitingSampling`: `{"maxTracesPerSecond"}` (an int32 in Jaeger's protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitingSampling {
    /// Traces sampled per second, at most.
    pub max_traces_per_second: i32,
}

/// One entry of `perOperationStrategies`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStrategy {
    /// The operation (span) name.
    pub operation: String,
    /// Its sampling probability.
    pub probabilistic_sampling: ProbabilisticSampling,
}

/// `operationSampling`: per-operation probabilities and the service's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationSampling {
    /// The probability for operations not listed.
    pub default_sampling_probability: f64,
    /// The lower bound rate for every operation (always 0 from a file, as in Jaeger).
    pub default_lower_bound_traces_per_second: f64,
    /// The listed operations.
    pub per_operation_strategies: Vec<OperationStrategy>,
    /// The upper bound rate for every operation (always 0 from a file, as in Jaeger).
    pub default_upper_bound_traces_per_second: f64,
}

/// What `/sampling` answers: Jaeger's `SamplingStrategyResponse` as its JSON encoder writes it
/// (absent parts left out, `strategyType` always present).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SamplingStrategyResponse {
    /// Which of the two samplings applies.
    pub strategy_type: StrategyType,
    /// Set for [`StrategyType::Probabilistic`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilistic_sampling: Option<ProbabilisticSampling>,
    /// Set for [`StrategyType::RateLimiting`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiting_sampling: Option<RateLimitingSampling>,
    /// Per-operation probabilities, when the file has any for this service or the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_sampling: Option<OperationSampling>,
}

impl SamplingStrategyResponse {
    /// Probabilistic sampling at `rate`, no per-operation strategies.
    pub fn probabilistic(rate: f64) -> Self {
        Self {
            strategy_type: StrategyType::Probabilistic,
            probabilistic_sampling: Some(ProbabilisticSampling {
                sampling_rate: rate,
            }),
            rate_limiting_sampling: None,
            operation_sampling: None,
        }
    }

    /// Rate-limiting sampling at `per_second`, no per-operation strategies.
    pub fn rate_limiting(per_second: i32) -> Self {
        Self {
            strategy_type: StrategyType::RateLimiting,
            probabilistic_sampling: None,
            rate_limiting_sampling: Some(RateLimitingSampling {
                max_traces_per_second: per_second,
            }),
            operation_sampling: None,
        }
    }
}

/// A strategies document that cannot be used; the message names the entry and the key.
#[derive(Debug, thiserror::Error)]
pub enum StrategiesError {
    /// Not JSON, or not of the strategies file's shape.
    #[error("not a valid Jaeger strategies document: {0}")]
    Json(#[from] serde_json::Error),
    /// A value that is not allowed.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where: `service_strategies[1] (service "bar").param`, ...
        at: String,
        /// What is wrong.
        reason: String,
    },
}

/// A strategies file that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// The file could not be read.
    #[error("sampling strategies file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is not a valid strategies document.
    #[error("sampling strategies file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: StrategiesError,
    },
}

// The file's shape (Jaeger's `strategies`, `serviceStrategy`, `operationStrategy`). Jaeger's Go
// decoder accepts `null` for lists; so do these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    service_strategies: Option<Vec<FileService>>,
    #[serde(default)]
    default_strategy: Option<FileService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    #[serde(default)]
    service: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    param: f64,
    #[serde(default)]
    operation_strategies: Option<Vec<FileOperation>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOperation {
    operation: String,
    #[serde(rename = "type")]
    kind: String,
    param: f64,
}

/// The strategies of one file: the default and one per service.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategies {
    /// For services not listed.
    pub default: SamplingStrategyResponse,
    /// By service name.
    pub services: HashMap<String, SamplingStrategyResponse>,
}

impl Default for Strategies {
    /// Jaeger's default without a file: probabilistic [`DEFAULT_SAMPLING_PROBABILITY`].
    fn default() -> Self {
        Self {
            default: SamplingStrategyResponse::probabilistic(DEFAULT_SAMPLING_PROBABILITY),
            services: HashMap::new(),
        }
    }
}

/// One `type`/`param` pair checked and converted; `at` names it in errors.
fn parse_strategy(
    kind: &str,
    param: f64,
    at: &str,
) -> Result<SamplingStrategyResponse, StrategiesError> {
    let invalid = |reason: String| StrategiesError::Invalid {
        at: at.to_string(),
        reason,
    };
    match kind {
        "probabilistic" => {
            if !(0.0..=1.0).contains(&param) {
                return Err(invalid(format!(
                    "param: {param} is not a sampling probability (0 to 1)"
                )));
            }
            Ok(SamplingStrategyResponse::probabilistic(param))
        }
        "ratelimiting" => {
            if !param.is_finite() || param < 0.0 || param > f64::from(i32::MAX) {
                return Err(invalid(format!(
                    "param: {param} is not a number of traces per second (0 to {})",
                    i32::MAX
                )));
            }
            if param.fract() != 0.0 {
                return Err(invalid(format!(
                    "param: {param} is not a whole number of traces per second"
                )));
            }
            // In range and whole, checked above.
            Ok(SamplingStrategyResponse::rate_limiting(param as i32))
        }
        other => Err(invalid(format!(
            "type: unknown strategy type {other:?} (expected \"probabilistic\" or \"ratelimiting\")"
        ))),
    }
}

/// A service (or the default) entry with its own operation strategies, before the merge.
fn parse_service(
    entry: &FileService,
    at: &str,
) -> Result<SamplingStrategyResponse, StrategiesError> {
    let mut resp = parse_strategy(&entry.kind, entry.param, at)?;
    let ops = entry.operation_strategies.as_deref().unwrap_or_default();
    if ops.is_empty() {
        return Ok(resp);
    }
    let default_probability = resp
        .probabilistic_sampling
        .map_or(DEFAULT_SAMPLING_PROBABILITY, |p| p.sampling_rate);
    let mut per_operation = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let op_at = format!(
            "{at}.operation_strategies[{i}] (operation {:?})",
            op.operation
        );
        if op.operation.is_empty() {
            return Err(StrategiesError::Invalid {
                at: op_at,
                reason: "operation: must not be empty".into(),
            });
        }
        if per_operation
            .iter()
            .any(|o: &OperationStrategy| o.operation == op.operation)
        {
            return Err(StrategiesError::Invalid {
                at: op_at,
                reason: "operation: given twice".into(),
            });
        }
        let parsed = parse_strategy(&op.kind, op.param, &op_at)?;
        let Some(probabilistic) = parsed.probabilistic_sampling else {
            // Jaeger's protocol has probabilistic operation strategies only; Jaeger skips others.
            tracing::warn!(
                at = %op_at,
                default_probability,
                "operation strategies can only be probabilistic; skipping this one"
            );
            continue;
        };
        per_operation.push(OperationStrategy {
            operation: op.operation.clone(),
            probabilistic_sampling: probabilistic,
        });
    }
    resp.operation_sampling = Some(OperationSampling {
        default_sampling_probability: default_probability,
        default_lower_bound_traces_per_second: 0.0,
        per_operation_strategies: per_operation,
        default_upper_bound_traces_per_second: 0.0,
    });
    Ok(resp)
}

impl Strategies {
    /// Parses and checks a strategies document (no I/O).
    pub fn parse(text: &str) -> Result<Self, StrategiesError> {
        let doc: Option<FileDoc> = serde_json::from_str(text)?;
        let Some(doc) = doc else {
            // `null`: no strategies, as Jaeger reads it.
            return Ok(Self::default());
        };
        let default = match &doc.default_strategy {
            Some(entry) => parse_service(entry, "default_strategy")?,
            None => Self::default().default,
        };
        let mut services = HashMap::new();
        for (i, entry) in doc.service_strategies.iter().flatten().enumerate() {
            let name = entry.service.as_deref().unwrap_or_default();
            let at = format!("service_strategies[{i}] (service {name:?})");
            if name.is_empty() {
                return Err(StrategiesError::Invalid {
                    at,
                    reason: "service: missing or empty".into(),
                });
            }
            if services.contains_key(name) {
                return Err(StrategiesError::Invalid {
                    at,
                    reason: "service: given twice".into(),
                });
            }
            let mut resp = parse_service(entry, &at)?;
            merge_default_operations(&mut resp, &default);
            services.insert(name.to_string(), resp);
        }
        Ok(Self { default, services })
    }

    /// The strategy for `service`: its own, else the default.
    pub fn strategy(&self, service: &str) -> &SamplingStrategyResponse {
        self.services.get(service).unwrap_or(&self.default)
    }
}

/// Jaeger's merge of the default strategy's operation strategies into a service's: a service
/// without its own takes the default's (with its own probability as the default probability
/// when it is probabilistic); one with its own gets the default's operations it does not list.
fn merge_default_operations(
    resp: &mut SamplingStrategyResponse,
    default: &SamplingStrategyResponse,
) {
    let Some(default_ops) = &default.operation_sampling else {
        return;
    };
    match &mut resp.operation_sampling {
        None => {
            let mut ops = default_ops.clone();
            if let Some(p) = resp.probabilistic_sampling {
                ops.default_sampling_probability = p.sampling_rate;
            }
            resp.operation_sampling = Some(ops);
        }
        Some(own) => {
            for op in &default_ops.per_operation_strategies {
                if !own
                    .per_operation_strategies
                    .iter()
                    .any(|o| o.operation == op.operation)
                {
                    own.per_operation_strategies.push(op.clone());
                }
            }
        }
    }
}

/// What identifies a version of the file: modification time and size.
type Stamp = (Option<SystemTime>, u64);

struct Watch {
    path: PathBuf,
    interval: Duration,
    state: Mutex<WatchState>,
}

struct WatchState {
    last_check: Instant,
    /// The version last read (good or not), so a broken file is reported once.
    stamp: Option<Stamp>,
    /// The last error reported, so it is not logged again at every check.
    last_error: Option<String>,
}

/// The strategies served, from a file re-read when it changes, or fixed.
pub struct StrategyStore {
    current: Mutex<Arc<Strategies>>,
    watch: Option<Watch>,
}

impl std::fmt::Debug for StrategyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyStore")
            .field("file", &self.watch.as_ref().map(|w| &w.path))
            .finish_non_exhaustive()
    }
}

impl Default for StrategyStore {
    /// No file: Jaeger's default strategy for every service.
    fn default() -> Self {
        Self::fixed(Strategies::default())
    }
}

fn stamp_of(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

fn read(path: &Path) -> Result<(Strategies, Stamp), SamplingError> {
    let read_err = |source| SamplingError::Read {
        path: path.to_path_buf(),
        source,
    };
    let stamp = stamp_of(path).map_err(read_err)?;
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let strategies = Strategies::parse(&text).map_err(|source| SamplingError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((strategies, stamp))
}

impl StrategyStore {
    /// Always these strategies.
    pub fn fixed(strategies: Strategies) -> Self {
        Self {
            current: Mutex::new(Arc::new(strategies)),
            watch: None,
        }
    }

    /// The strategies of the file at `path`, re-read when it changes (checked at most once per
    /// [`CHECK_INTERVAL`]). A file that cannot be read or used is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SamplingError> {
        Self::open_with_interval(path, CHECK_INTERVAL)
    }

    /// As [`StrategyStore::open`], checking the file at most once per `interval`.
    pub fn open_with_interval(
        path: impl Into<PathBuf>,
        interval: Duration,
    ) -> Result<Self, SamplingError> {
        let path = path.into();
        let (strategies, stamp) = read(&path)?;
        tracing::info!(
            file = %path.display(),
            services = strategies.services.len(),
            "loaded sampling strategies"
        );
        Ok(Self {
            current: Mutex::new(Arc::new(strategies)),
            watch: Some(Watch {
                path,
                interval,
                state: Mutex::new(WatchState {
                    last_check: Instant::now(),
                    stamp: Some(stamp),
                    last_error: None,
                }),
            }),
        })
    }

    /// The strategies served now (without looking at the file).
    pub fn current(&self) -> Arc<Strategies> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The strategy for `service`, after re-reading the file if it is due and changed.
    /// Touches the file system: call it on a blocking thread.
    pub fn strategy(&self, service: &str) -> SamplingStrategyResponse {
        self.check_file();
        self.current().strategy(service).clone()
    }

    /// Re-reads the file if the check is due and its modification time or size changed;
    /// returns whether new strategies were loaded. A file that cannot be read or used keeps
    /// the strategies served and is logged (once per version of the file).
    pub fn check_file(&self) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        let mut state = watch.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.last_check.elapsed() < watch.interval {
            return false;
        }
        state.last_check = Instant::now();
        let stamp = match stamp_of(&watch.path) {
            Ok(s) => s,
            Err(source) => {
                let e = SamplingError::Read {
                    path: watch.path.clone(),
                    source,
                };
                report(&mut state, &e);
                state.stamp = None;
                return false;
            }
        };
        if state.stamp == Some(stamp) {
            return false;
        }
        match read(&watch.path) {
            Ok((strategies, read_stamp)) => {
                tracing::info!(
                    file = %watch.path.display(),
                    services = strategies.services.len(),
                    "reloaded sampling strategies"
                );
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(strategies);
                state.stamp = Some(read_stamp);
                state.last_error = None;
                true
            }
            Err(e) => {
                report(&mut state, &e);
                state.stamp = Some(stamp);
                false
            }
        }
    }
}

fn report(state: &mut WatchState, e: &SamplingError) {
    let msg = e.to_string();
    if state.last_error.as_deref() != Some(msg.as_str()) {
        tracing::error!(error = %msg, "sampling strategies not reloaded; keeping the last good ones");
        state.last_error = Some(msg);
    }
}

/// A 400 as Jaeger answers it: a plain-text message.
fn bad_request(msg: &str) -> Response {
    tracing::debug!(error = %msg, "sampling request rejected");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.to_string(),
    )
        .into_response()
}

/// The query string of a sampling request, as the handler extracts it.
pub(crate) type SamplingQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// `GET /sampling?service=NAME` (and `/api/sampling`): the strategy for `service`, which
/// must be given once and not be empty.
pub(crate) async fn sampling(store: Arc<StrategyStore>, query: SamplingQuery) -> Response {
    let pairs = match query {
        Ok(Query(pairs)) => pairs,
        Err(e) => return bad_request(&format!("invalid query string: {e}")),
    };
    let mut services = pairs.iter().filter(|(k, _)| k == "service").map(|(_, v)| v);
    let service = match (services.next(), services.next()) {
        (Some(s), None) => s.trim().to_string(),
        (None, _) => return bad_request("parameter 'service' is required (?service=NAME)"),
        (Some(_), Some(_)) => return bad_request("parameter 'service' must be given once"),
    };
    if service.is_empty() {
        return bad_request("parameter 'service' must not be empty");
    }
    match tokio::task::spawn_blocking(move || store.strategy(&service)).await {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "sampling strategy lookup failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "sampling strategy lookup failed",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn to_json(r: &SamplingStrategyResponse) -> Value {
        serde_json::to_value(r).unwrap()
    }

    const FILE: &str = r#"{
      "service_strategies": [
        {"service": "foo", "type": "probabilistic", "param": 0.8,
         "operation_strategies": [
           {"operation": "op1", "type": "probabilistic", "param": 0.2},
           {"operation": "op2", "type": "probabilistic", "param": 0.4}]},
        {"service": "bar", "type": "ratelimiting", "param": 5},
        {"service": "baz", "type": "probabilistic", "param": 0.3}
      ],
      "default_strategy": {"type": "probabilistic", "param": 0.5,
        "operation_strategies": [
          {"operation": "op2", "type": "probabilistic", "param": 0.9},
          {"operation": "/health", "type": "probabilistic", "param": 0.0}]}
    }"#;

    #[test]
    fn no_file_is_jaegers_default() {
        let s = Strategies::default();
        assert_eq!(
            to_json(s.strategy("anything")),
            json!({"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 0.001}})
        );
        assert_eq!(Strategies::parse("null").unwrap(), s);
        assert_eq!(Strategies::parse("{}").unwrap(), s);
    }

    #[test]
    fn simple_file_without_operations() {
        let s = Strategies::parse(
            r#"{"default_strategy": {"type": "probabilistic", "param": 0.5},
                "service_strategies": [{"service": "foo", "type": "probabilistic", "param": 0.8},
                                       {"service": "bar", "type": "ratelimiting", "param": 5}]}"#,
        )
        .unwrap();
        assert_eq!(
            to_json(s.strategy("foo")),
            json!({"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 0.8}})
        );
        assert_eq!(
            to_json(s.strategy("bar")),
            json!({"strategyType": "RATE_LIMITING", "rateLimitingSampling": {"maxTracesPerSecond": 5}})
        );
        assert_eq!(
            to_json(s.strategy("unknown")),
            json!({"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 0.5}})
        );
    }

    #[test]
    fn default_operation_strategies_are_merged() {
        let s = Strategies::parse(FILE).unwrap();
        // Own operations first and winning (op2 stays 0.4), then the default's others.
        assert_eq!(
            to_json(s.strategy("foo")),
            json!({
                "strategyType": "PROBABILISTIC",
                "probabilisticSampling": {"samplingRate": 0.8},
                "operationSampling": {
                    "defaultSamplingProbability": 0.8,
                    "defaultLowerBoundTracesPerSecond": 0.0,
                    "perOperationStrategies": [
                        {"operation": "op1", "probabilisticSampling": {"samplingRate": 0.2}},
                        {"operation": "op2", "probabilisticSampling": {"samplingRate": 0.4}},
                        {"operation": "/health", "probabilisticSampling": {"samplingRate": 0.0}}
                    ],
                    "defaultUpperBoundTracesPerSecond": 0.0
                }
            })
        );
        // Without operations of its own: the default's, with its own probability.
        let baz = s.strategy("baz").operation_sampling.as_ref().unwrap();
        assert_eq!(baz.default_sampling_probability, 0.3);
        assert_eq!(baz.per_operation_strategies.len(), 2);
        // Rate limiting: the default's operations and the default's probability.
        let bar = s.strategy("bar");
        assert_eq!(bar.strategy_type, StrategyType::RateLimiting);
        let ops = bar.operation_sampling.as_ref().unwrap();
        assert_eq!(ops.default_sampling_probability, 0.5);
        assert_eq!(ops.per_operation_strategies[0].operation, "op2");
        // An unknown service gets the default strategy itself.
        let other = s.strategy("unknown");
        assert_eq!(other.probabilistic_sampling.unwrap().sampling_rate, 0.5);
        assert_eq!(
            other
                .operation_sampling
                .as_ref()
                .unwrap()
                .per_operation_strategies
                .len(),
            2
        );
    }

    #[test]
    fn ratelimiting_service_with_own_operations_defaults_to_0_001() {
        let s = Strategies::parse(
            r#"{"service_strategies": [{"service": "r", "type": "ratelimiting", "param": 3,
                "operation_strategies": [
                  {"operation": "a", "type": "probabilistic", "param": 0.25},
                  {"operation": "b", "type": "ratelimiting", "param": 2}]}]}"#,
        )
        .unwrap();
        let ops = s.strategy("r").operation_sampling.as_ref().unwrap();
        assert_eq!(
            ops.default_sampling_probability,
            DEFAULT_SAMPLING_PROBABILITY
        );
        // The rate-limiting operation strategy is skipped, as Jaeger does.
        assert_eq!(ops.per_operation_strategies.len(), 1);
        assert_eq!(ops.per_operation_strategies[0].operation, "a");
    }

    fn error_of(text: &str) -> String {
        Strategies::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_documents_are_named() {
        let e = error_of("{");
        assert!(e.contains("not a valid Jaeger strategies document"), "{e}");
        let e = error_of(r#"{"service_strategy": []}"#);
        assert!(e.contains("unknown field `service_strategy`"), "{e}");
        let e = error_of(r#"{"service_strategies": [{"service": "a", "type": "probabilistic"}]}"#);
        assert!(e.contains("missing field `param`"), "{e}");
        let e = error_of(
            r#"{"service_strategies": [{"service": "a", "type": "probabilistic", "param": 0.1},
                {"service": "b", "type": "const", "param": 1}]}"#,
        );
        assert!(
            e.contains(r#"service_strategies[1] (service "b")"#) && e.contains(r#""const""#),
            "{e}"
        );
        let e = error_of(
            r#"{"service_strategies": [{"service": "a", "type": "probabilistic", "param": 1.5}]}"#,
        );
        assert!(
            e.contains("param: 1.5 is not a sampling probability"),
            "{e}"
        );
        let e = error_of(
            r#"{"service_strategies": [{"service": "a", "type": "ratelimiting", "param": -1}]}"#,
        );
        assert!(e.contains("param: -1"), "{e}");
        let e = error_of(
            r#"{"service_strategies": [{"service": "a", "type": "ratelimiting", "param": 2.5}]}"#,
        );
        assert!(e.contains("whole number"), "{e}");
        let e = error_of(r#"{"service_strategies": [{"type": "ratelimiting", "param": 2}]}"#);
        assert!(e.contains("service: missing or empty"), "{e}");
        let e = error_of(
            r#"{"service_strategies": [{"service": "a", "type": "ratelimiting", "param": 2},
                {"service": "a", "type": "ratelimiting", "param": 3}]}"#,
        );
        assert!(e.contains("given twice"), "{e}");
        let e = error_of(
            r#"{"default_strategy": {"type": "probabilistic", "param": 0.5,
                "operation_strategies": [{"operation": "x", "type": "probabilistic", "param": 7}]}}"#,
        );
        assert!(
            e.contains(r#"default_strategy.operation_strategies[0] (operation "x")"#),
            "{e}"
        );
    }

    #[test]
    fn a_file_is_reloaded_when_it_changes_and_a_broken_one_is_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strategies.json");
        let write = |text: &str, secs: u64| {
            std::fs::write(&path, text).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        };
        write(
            r#"{"default_strategy": {"type": "probabilistic", "param": 0.5}}"#,
            1_000,
        );
        let store = StrategyStore::open_with_interval(&path, Duration::ZERO).unwrap();
        let rate = |s: &StrategyStore| {
            s.strategy("x")
                .probabilistic_sampling
                .map(|p| p.sampling_rate)
        };
        assert_eq!(rate(&store), Some(0.5));
        assert!(!store.check_file(), "unchanged file");

        write(
            r#"{"default_strategy": {"type": "probabilistic", "param": 0.25}}"#,
            2_000,
        );
        assert!(store.check_file());
        assert_eq!(rate(&store), Some(0.25));

        write("{ not json", 3_000);
        assert!(!store.check_file());
        assert_eq!(rate(&store), Some(0.25), "the last good strategies stay");

        std::fs::remove_file(&path).unwrap();
        assert!(!store.check_file());
        assert_eq!(rate(&store), Some(0.25));

        write(
            r#"{"default_strategy": {"type": "ratelimiting", "param": 7}}"#,
            4_000,
        );
        assert!(store.check_file());
        assert_eq!(rate(&store), None);

        // Not checked again before the interval.
        let slow = StrategyStore::open_with_interval(&path, Duration::from_secs(3600)).unwrap();
        write(
            r#"{"default_strategy": {"type": "probabilistic", "param": 0.1}}"#,
            5_000,
        );
        assert!(!slow.check_file());
    }

    #[test]
    fn a_bad_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let e = StrategyStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("s.json"), "{e}");
        std::fs::write(
            &path,
            r#"{"default_strategy": {"type": "nope", "param": 1}}"#,
        )
        .unwrap();
        let e = StrategyStore::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("s.json") && e.contains("default_strategy") && e.contains("nope"),
            "{e}"
        );
    }
}
