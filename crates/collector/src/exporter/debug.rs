//! The `debug` exporter: logs what passes through `tracing` (info level, target
//! `sextant::debug_exporter`). `basic`: counts; `normal`: one line per span; `detailed`: every
//! field and attribute. Sampling as the reference's: in each second the first
//! `sampling_initial` batches are logged, then every `sampling_thereafter`-th.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sextant_otlp_proto::json;
use sextant_otlp_proto::proto::ResourceSpans;
use sextant_otlp_proto::{SpanId, TraceId};

use crate::error::PipelineError;
use crate::{BoxFuture, Consumer, ExportOutcome, TraceBatch};

const TARGET: &str = "sextant::debug_exporter";

/// `verbosity`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    #[default]
    Basic,
    Normal,
    Detailed,
}

/// `exporters: debug[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub verbosity: Verbosity,
    pub sampling_initial: u64,
    pub sampling_thereafter: u64,
    /// Accepted: we always log through `tracing`.
    pub use_internal_logger: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            verbosity: Verbosity::Basic,
            sampling_initial: 2,
            sampling_thereafter: 1,
            use_internal_logger: true,
        }
    }
}

/// The exporter.
pub struct DebugExporter {
    name: String,
    config: Config,
    /// Start of the current one-second window and batches seen in it.
    window: Mutex<(Instant, u64)>,
}

/// Builds `debug[/name]`.
pub fn build(name: &str, config: &Config) -> Result<Arc<DebugExporter>, String> {
    Ok(Arc::new(DebugExporter {
        name: name.to_string(),
        config: config.clone(),
        window: Mutex::new((Instant::now(), 0)),
    }))
}

impl DebugExporter {
    /// Whether this batch is logged (the reference's sampler: per second, the first
    /// `sampling_initial`, then every `sampling_thereafter`-th; 0 thereafter: none).
    fn sampled(&self) -> bool {
        let mut w = self.window.lock();
        let now = Instant::now();
        if now.duration_since(w.0).as_secs() >= 1 {
            *w = (now, 0);
        }
        let n = w.1;
        w.1 += 1;
        if n < self.config.sampling_initial {
            return true;
        }
        let every = self.config.sampling_thereafter;
        every > 0 && (n - self.config.sampling_initial + 1).is_multiple_of(every)
    }

    /// Logs the batch; returns the number of lines written (for tests).
    fn log(&self, batch: &mut TraceBatch) -> usize {
        if !self.sampled() {
            return 0;
        }
        let spans = batch.span_count;
        if self.config.verbosity == Verbosity::Basic {
            tracing::info!(target: TARGET, exporter = %self.name, spans, "traces");
            return 1;
        }
        let resource_spans: &[ResourceSpans] = match batch.decode() {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(target: TARGET, exporter = %self.name, spans, error = %e,
                    "traces (cannot decode them)");
                return 1;
            }
        };
        tracing::info!(target: TARGET, exporter = %self.name, spans,
            resource_spans = resource_spans.len(), "traces");
        let mut lines = 1;
        for rs in resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(|v| json::any_value_json(v).to_string())
                .unwrap_or_default();
            let resource_attrs = self.config.verbosity == Verbosity::Detailed;
            if resource_attrs {
                let attrs = rs
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                tracing::info!(target: TARGET, exporter = %self.name, schema_url = %rs.schema_url,
                    resource = %attrs, "resource");
                lines += 1;
            }
            for ss in &rs.scope_spans {
                let (scope, version) = ss
                    .scope
                    .as_ref()
                    .map(|s| (s.name.as_str(), s.version.as_str()))
                    .unwrap_or_default();
                for s in &ss.spans {
                    let trace_id = TraceId::from_slice(&s.trace_id)
                        .map(|t| t.to_hex())
                        .unwrap_or_else(|_| format!("{:02x?}", s.trace_id));
                    let span_id = SpanId::from_slice(&s.span_id)
                        .map(|t| t.to_hex())
                        .unwrap_or_else(|_| format!("{:02x?}", s.span_id));
                    match self.config.verbosity {
                        Verbosity::Normal => {
                            let dur = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
                            tracing::info!(target: TARGET, exporter = %self.name,
                                service = %service, trace_id = %trace_id, span_id = %span_id,
                                name = %s.name, kind = s.kind, duration_ns = dur,
                                status = s.status.as_ref().map_or(0, |st| st.code),
                                attributes = s.attributes.len(), "span");
                        }
                        _ => {
                            tracing::info!(target: TARGET, exporter = %self.name,
                                service = %service, scope = %scope, scope_version = %version,
                                trace_id = %trace_id, span_id = %span_id,
                                span = %json::span_json(s), "span");
                        }
                    }
                    lines += 1;
                }
            }
        }
        lines
    }
}

fn attributes(attrs: &[sextant_otlp_proto::proto::KeyValue]) -> String {
    let mut out = String::from("{");
    for (i, kv) in attrs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&kv.key);
        out.push('=');
        if let Some(v) = &kv.value {
            out.push_str(&json::any_value_json(v).to_string());
        }
    }
    out.push('}');
    out
}

impl Consumer for DebugExporter {
    fn consume(
        &self,
        mut batch: TraceBatch,
    ) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            self.log(&mut batch);
            Ok(ExportOutcome::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::exporterhelper::tests::spans;

    #[test]
    fn sampling_follows_the_reference() {
        let e = build(
            "debug",
            &Config {
                sampling_initial: 2,
                sampling_thereafter: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let logged: Vec<bool> = (0..8).map(|_| e.sampled()).collect();
        assert_eq!(logged, [true, true, false, false, true, false, false, true]);
        let all = build("debug", &Config::default()).unwrap();
        assert!((0..10).all(|_| all.sampled()));
    }

    #[tokio::test]
    async fn verbosity_decides_the_lines() {
        for (verbosity, lines) in [
            (Verbosity::Basic, 1),
            (Verbosity::Normal, 1 + 3),
            (Verbosity::Detailed, 1 + 1 + 3),
        ] {
            let e = build(
                "debug",
                &Config {
                    verbosity,
                    sampling_initial: 100,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut b = spans(1, 0, 3);
            assert_eq!(e.log(&mut b), lines, "{verbosity:?}");
            e.consume(spans(1, 0, 3)).await.unwrap();
        }
        let parsed: Config =
            serde_json::from_str(r#"{"verbosity": "detailed", "sampling_initial": 5}"#).unwrap();
        assert_eq!(parsed.verbosity, Verbosity::Detailed);
        assert_eq!(parsed.sampling_thereafter, 1);
        assert!(serde_json::from_str::<Config>(r#"{"loglevel": "debug"}"#).is_err());
    }
}
