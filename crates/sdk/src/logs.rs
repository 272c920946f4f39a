//! The `tracing` bridge (`#[tracing::instrument]` spans become OpenTelemetry
//! spans, through `tracing-opentelemetry`) and a JSON log line format carrying
//! `trace_id` / `span_id` in the lowercase hex the Sextant store shows.
//!
//! A line looks like:
//! `{"timestamp":"2026-01-01T10:00:00.123456Z","level":"INFO","target":"backend","message":"order stored","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","span":"store_order","order_id":7}`

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// JSON event format for `tracing_subscriber::fmt`, one object per line.
#[derive(Debug, Clone, Default)]
pub struct JsonFormat {
    _private: (),
}

impl JsonFormat {
    /// The format.
    pub fn new() -> Self {
        Self::default()
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

/// The current trace and span ids (lowercase hex), when a valid span is active.
/// With the tracing bridge installed this includes entered `tracing` spans.
pub fn current_ids() -> Option<(String, String)> {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            (
                format!("{:032x}", sc.trace_id()),
                format!("{:016x}", sc.span_id()),
            )
        })
    })
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Written by hand to keep a stable, readable key order.
        let mut obj: Vec<(String, Value)> = Vec::new();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        obj.push(("timestamp".into(), Value::from(ts)));
        let meta = event.metadata();
        obj.push(("level".into(), Value::from(meta.level().as_str())));
        obj.push(("target".into(), Value::from(meta.target())));
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        if let Some(m) = fields.remove("message") {
            obj.push(("message".into(), m));
        }
        if let Some((trace_id, span_id)) = current_ids() {
            obj.push(("trace_id".into(), Value::from(trace_id)));
            obj.push(("span_id".into(), Value::from(span_id)));
        }
        if let Some(span) = ctx.lookup_current() {
            obj.push(("span".into(), Value::from(span.name())));
        }
        for (k, v) in fields {
            if !obj.iter().any(|(key, _)| *key == k) {
                obj.push((k, v));
            }
        }
        let mut line = String::from("{");
        for (i, (k, v)) in obj.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(k).map_err(|_| fmt::Error)?);
            line.push(':');
            line.push_str(&serde_json::to_string(v).map_err(|_| fmt::Error)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// A `tracing_subscriber` layer turning `tracing` spans into OpenTelemetry
/// spans with `tracer`, for those composing their own subscriber.
pub fn otel_layer<S, T>(tracer: T) -> tracing_opentelemetry::OpenTelemetryLayer<S, T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::OpenTelemetryLayer::new(tracer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tracing::instrument(fields(order_id = 7))]
    fn store_order(n: u32) {
        tracing::info!(items = n, "order stored");
    }

    #[test]
    fn instrument_spans_become_otel_spans_and_logs_carry_ids() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonFormat::new())
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("handle_request");
            let _g = outer.enter();
            store_order(3);
            tracing::warn!("outside");
        });
        let spans = exporter.get_finished_spans().unwrap();
        let inner = spans
            .iter()
            .find(|s| s.name == "store_order")
            .expect("store_order span");
        let outer = spans
            .iter()
            .find(|s| s.name == "handle_request")
            .expect("outer span");
        assert_eq!(inner.parent_span_id, outer.span_context.span_id());
        assert_eq!(inner.span_context.trace_id(), outer.span_context.trace_id());

        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        assert_eq!(lines[0]["message"], "order stored");
        assert_eq!(lines[0]["items"], 3);
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(
            lines[0]["trace_id"],
            format!("{:032x}", inner.span_context.trace_id())
        );
        assert_eq!(
            lines[0]["span_id"],
            format!("{:016x}", inner.span_context.span_id())
        );
        assert_eq!(
            lines[1]["span_id"],
            format!("{:016x}", outer.span_context.span_id())
        );
        let tid = lines[1]["trace_id"].as_str().unwrap();
        assert_eq!(tid.len(), 32);
        assert!(tid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
