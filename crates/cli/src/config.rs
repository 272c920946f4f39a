//! Configuration of the server commands: the OpenTelemetry Collector's own format (see
//! `sextant_collector::service::config`), loaded with figment, `${env:VAR:-default}` expanded.
//!
//! The all-in-one adds three component types of its own: the `store` exporter (the embedded
//! store), and the `tempo_query` and `jaeger_query` extensions (the query APIs over it).
//! Command-line flags override keys of the file where the component exists
//! (`--otlp-grpc-addr` sets `receivers.otlp.protocols.grpc.endpoint`, ...).

use std::path::{Path, PathBuf};

use figment::value::Value;
use serde::{Deserialize, Serialize};
use sextant_collector::service::config::{self as otel, ComponentId, Document, Override};
use sextant_collector::service::{Host, HostBuild};

/// What `sextant config default` prints and `sextant all-in-one` runs without `--config`.
pub const ALL_IN_ONE_DEFAULT: &str = include_str!("../config/all-in-one.yaml");
/// A starting point for `sextant collector` (`sextant config default --collector`).
pub const COLLECTOR_DEFAULT: &str = include_str!("../config/collector.yaml");

/// `exporters: store`: the embedded store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreExporterConfig {
    /// Where the store keeps its files.
    pub directory: PathBuf,
    /// sled's page cache.
    pub cache_mib: u64,
    /// zstd level of stored batches (-7..=22; negative levels are zstd's fast modes).
    pub compression_level: i32,
    /// Blocks older than this (by their newest span) are deleted (Tempo's `block_retention`).
    #[serde(with = "sextant_collector::config::duration")]
    pub block_retention: std::time::Duration,
    /// How blocks are cut and compacted, and where they are kept.
    pub blocks: BlocksSection,
    /// What one trace and one attribute value may hold.
    pub limits: LimitsSection,
}

impl Default for StoreExporterConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("./sextant-data"),
            cache_mib: 32,
            compression_level: -1,
            block_retention: sextant_store::BlocksConfig::default().retention,
            blocks: BlocksSection::default(),
            limits: LimitsSection::default(),
        }
    }
}

/// `exporters: store: limits:` (0 turns a limit off).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// The most bytes (of span protobuf) a trace may have in the write-ahead log; spans that
    /// would take it over are refused (Tempo's `max_bytes_per_trace`).
    pub max_bytes_per_trace: u64,
    /// The most spans a trace may have in the write-ahead log.
    pub max_spans_per_trace: u64,
    /// String attribute values longer than this (bytes) are truncated and marked
    /// (Tempo's `max_attribute_bytes`).
    pub max_attribute_value_length: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = sextant_store::Limits::default();
        Self {
            max_bytes_per_trace: d.max_bytes_per_trace,
            max_spans_per_trace: d.max_spans_per_trace,
            max_attribute_value_length: d.max_attribute_value_length,
        }
    }
}

impl LimitsSection {
    /// Refuses values the store cannot honour, naming the key.
    pub fn check(&self) -> Result<(), String> {
        // Live sizes are counted in 32 bits.
        let max = u64::from(u32::MAX);
        for (key, value) in [
            ("limits.max_bytes_per_trace", self.max_bytes_per_trace),
            ("limits.max_spans_per_trace", self.max_spans_per_trace),
            (
                "limits.max_attribute_value_length",
                self.max_attribute_value_length,
            ),
        ] {
            if value > max {
                return Err(format!(
                    "{key}: {value} is over {max} (0 turns the limit off)"
                ));
            }
        }
        Ok(())
    }
}

/// `exporters: store: blocks:`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BlocksSection {
    /// A trace idle this long is cut from the write-ahead log into a block.
    #[serde(with = "sextant_collector::config::duration")]
    pub max_trace_idle: std::time::Duration,
    /// The log is cut once its oldest write is this old...
    #[serde(with = "sextant_collector::config::duration")]
    pub max_block_duration: std::time::Duration,
    /// ... or once it holds this many spans.
    pub max_block_spans: u64,
    /// zstd level of block pages.
    pub compression_level: i32,
    /// Whether small blocks are merged in the background.
    pub compaction: bool,
    /// Blocks on S3-compatible object storage instead of `<directory>/blocks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<sextant_store::S3Config>,
}

impl Default for BlocksSection {
    fn default() -> Self {
        let d = sextant_store::BlocksConfig::default();
        Self {
            max_trace_idle: d.max_trace_idle,
            max_block_duration: d.max_block_duration,
            max_block_spans: d.max_block_spans,
            compression_level: d.compression_level,
            compaction: d.compaction,
            s3: None,
        }
    }
}

impl StoreExporterConfig {
    /// The store's settings.
    pub fn store_config(&self) -> sextant_store::StoreConfig {
        let mut c = sextant_store::StoreConfig::new(&self.directory);
        c.cache_capacity = self.cache_mib * 1024 * 1024;
        c.compression_level = self.compression_level;
        c.blocks.retention = self.block_retention;
        c.blocks.max_trace_idle = self.blocks.max_trace_idle;
        c.blocks.max_block_duration = self.blocks.max_block_duration;
        c.blocks.max_block_spans = self.blocks.max_block_spans.max(1);
        c.blocks.compression_level = self.blocks.compression_level;
        c.blocks.compaction = self.blocks.compaction;
        if let Some(s3) = &self.blocks.s3 {
            c.blocks.backend = sextant_store::BlockBackend::S3(s3.clone());
        }
        c.limits.max_bytes_per_trace = self.limits.max_bytes_per_trace;
        c.limits.max_spans_per_trace = self.limits.max_spans_per_trace;
        c.limits.max_attribute_value_length = self.limits.max_attribute_value_length;
        c
    }
}

/// `extensions: tempo_query` and `jaeger_query`: a query API on `endpoint`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryExtensionConfig {
    pub endpoint: String,
    /// `jaeger_query` only: the Jaeger strategies file (JSON) that remote sampling
    /// (`/sampling?service=`, `/api/sampling?service=`) serves, re-read when it changes.
    /// Without it every service gets Jaeger's default, probabilistic 0.001.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_strategies_file: Option<PathBuf>,
}

fn typed<T: for<'de> Deserialize<'de> + Default>(v: &Value) -> Result<T, String> {
    if matches!(v, Value::Empty(..)) {
        return Ok(T::default());
    }
    v.deserialize::<T>().map_err(|e| {
        e.into_iter()
            .map(|one| {
                let key = one.path.join(".");
                if key.is_empty() {
                    one.kind.to_string()
                } else {
                    format!("{key}: {}", one.kind)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The all-in-one's component types.
#[derive(Default)]
pub struct AllInOneHost {
    pub store: std::sync::OnceLock<std::sync::Arc<dyn sextant_store::SpanWriter>>,
}

impl Host for AllInOneHost {
    fn custom_types(&self) -> (&[&'static str], &[&'static str]) {
        (&["store"], &["tempo_query", "jaeger_query"])
    }

    fn check_custom(&self, kind: &str, id: &ComponentId, value: &Value) -> Result<(), String> {
        match (kind, id.ty.as_str()) {
            ("exporter", "store") => {
                let c: StoreExporterConfig = typed(value)?;
                if !(-7..=22).contains(&c.compression_level) {
                    return Err(format!(
                        "compression_level: {} is not in -7..=22 (negative levels are zstd fast modes)",
                        c.compression_level
                    ));
                }
                c.limits.check()
            }
            ("extension", ty) => {
                let c: QueryExtensionConfig = typed(value)?;
                if c.endpoint.is_empty() {
                    return Err("endpoint: missing (e.g. 127.0.0.1:3200)".into());
                }
                if let Some(file) = &c.sampling_strategies_file {
                    if ty != "jaeger_query" {
                        return Err(format!(
                            "sampling_strategies_file: not supported by {ty}; remote sampling is served by the jaeger_query extension"
                        ));
                    }
                    if file.as_os_str().is_empty() {
                        return Err("sampling_strategies_file: empty path".into());
                    }
                }
                Ok(())
            }
            _ => Err(format!("unknown {kind} type {}", id.ty)),
        }
    }
}

impl HostBuild for AllInOneHost {
    fn build_exporter(
        &self,
        id: &ComponentId,
        _value: &Value,
    ) -> Result<std::sync::Arc<dyn sextant_collector::Consumer>, String> {
        let writer = self
            .store
            .get()
            .ok_or_else(|| format!("exporter {id}: the store is not open"))?;
        Ok(std::sync::Arc::new(crate::store_exporter::StoreExporter {
            writer: writer.clone(),
        }))
    }

    /// A `prometheus` exporter without an `endpoint` key is served on the query API's
    /// `/metrics` (extensions.tempo_query); one with an endpoint listens there, as in
    /// `sextant collector`.
    fn serves_prometheus(&self, doc: &Document, id: &ComponentId) -> bool {
        let exporter = doc
            .raw
            .as_dict()
            .and_then(|d| d.get("exporters"))
            .and_then(Value::as_dict)
            .and_then(|d| d.get(&id.to_string()));
        match exporter {
            Some(v) => v.as_dict().is_none_or(|d| !d.contains_key("endpoint")),
            None => false,
        }
    }
}

/// Loads the all-in-one's config (the default one without `file`), then the flags.
pub fn load_all_in_one(
    file: Option<&Path>,
    overrides: &[Override],
    host: &AllInOneHost,
) -> anyhow::Result<Document> {
    let doc = match file {
        Some(path) => otel::load_file_with(path, host, overrides)?,
        None => otel::load_str(ALL_IN_ONE_DEFAULT, "default config", host, overrides)?,
    };
    sextant_collector::service::check_buildable(&doc)?;
    let stores = doc.exporters.keys().filter(|id| id.ty == "store").count();
    if stores > 1 {
        anyhow::bail!(
            "invalid configuration: {}: exporters: the all-in-one has one store; define one `store` exporter",
            doc.source
        );
    }
    Ok(doc)
}

/// The store exporter's settings, if the config has one.
pub fn store_config(doc: &Document) -> anyhow::Result<Option<StoreExporterConfig>> {
    for (id, e) in &doc.exporters {
        if id.ty == "store" {
            if let otel::ExporterConfig::Custom(v) = e {
                return typed(v)
                    .map(Some)
                    .map_err(|m| anyhow::anyhow!("exporters.{id}: {m}"));
            }
        }
    }
    Ok(None)
}

/// The query extensions the service runs, with their settings.
pub fn query_extensions(
    doc: &Document,
) -> anyhow::Result<Vec<(ComponentId, QueryExtensionConfig)>> {
    let mut out = Vec::new();
    for id in &doc.service_extensions {
        if let Some(otel::ExtensionConfig::Custom(v)) = doc.extensions.get(id) {
            let c: QueryExtensionConfig =
                typed(v).map_err(|m| anyhow::anyhow!("extensions.{id}: {m}"))?;
            out.push((id.clone(), c));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configs_load_and_flags_override_them() {
        let host = AllInOneHost::default();
        let doc = load_all_in_one(
            None,
            &[
                Override::new(&["exporters", "store", "directory"], "/tmp/x"),
                Override::new(
                    &["receivers", "otlp", "protocols", "grpc", "endpoint"],
                    "127.0.0.1:0",
                ),
                Override::new(&["processors", "memory_limiter", "limit_mib"], 300),
            ],
            &host,
        )
        .unwrap();
        assert_eq!(
            store_config(&doc).unwrap().unwrap().directory,
            PathBuf::from("/tmp/x")
        );
        let ext = query_extensions(&doc).unwrap();
        assert!(ext.iter().any(|(id, _)| id.ty == "tempo_query"), "{ext:?}");
        assert!(ext.iter().any(|(id, _)| id.ty == "jaeger_query"), "{ext:?}");
        assert!(
            ext.iter()
                .all(|(_, c)| c.sampling_strategies_file.is_none()),
            "{ext:?}"
        );
        let otel::ReceiverConfig::Otlp(r) = &doc.receivers[&ComponentId::parse("otlp").unwrap()];
        assert_eq!(r.protocols.grpc.as_ref().unwrap().endpoint, "127.0.0.1:0");
        match &doc.processors[&ComponentId::parse("memory_limiter").unwrap()] {
            otel::ProcessorConfig::MemoryLimiter(m) => assert_eq!(m.limit_mib, 300),
            other => panic!("{other:?}"),
        }
        let collector = otel::load_str(COLLECTOR_DEFAULT, "collector default", &otel::NoHost, &[]);
        assert!(collector.is_ok(), "{collector:?}");
    }

    #[test]
    fn store_settings_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            ALL_IN_ONE_DEFAULT.replace("compression_level: -1", "compression_level: 40"),
        )
        .unwrap();
        let e = load_all_in_one(Some(&file), &[], &AllInOneHost::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exporters.store.compression_level") && e.contains("40"),
            "{e}"
        );
        assert!(e.contains("c.yaml"), "{e}");
    }

    #[test]
    fn store_limits_are_read_overridden_and_checked() {
        let host = AllInOneHost::default();
        let doc = load_all_in_one(None, &[], &host).unwrap();
        let limits = store_config(&doc).unwrap().unwrap().limits;
        assert_eq!(limits, LimitsSection::default());
        assert_eq!(limits.max_bytes_per_trace, 5_000_000);
        assert_eq!(limits.max_attribute_value_length, 2048);

        let doc = load_all_in_one(
            None,
            &[Override::new(
                &["exporters", "store", "limits", "max_spans_per_trace"],
                10,
            )],
            &host,
        )
        .unwrap();
        let store = store_config(&doc).unwrap().unwrap().store_config();
        assert_eq!(store.limits.max_spans_per_trace, 10);
        assert_eq!(store.limits.max_bytes_per_trace, 5_000_000);

        for (value, key) in [
            ("max_spans_per_trace: -1", "max_spans_per_trace"),
            ("max_spans_per_trace: lots", "max_spans_per_trace"),
            ("max_spans_per_trace: 9999999999", "max_spans_per_trace"),
        ] {
            let e = load_with(("max_spans_per_trace: 0", value))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("exporters.store.limits.{key}")),
                "{value}: {e}"
            );
        }
        let e = load_with((
            "max_attribute_value_length: 2048",
            "max_attribute_value_length: 2048\n      max_value_length: 3",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_value_length"), "{e}");
    }

    fn load_with(replace: (&str, &str)) -> anyhow::Result<Document> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, ALL_IN_ONE_DEFAULT.replace(replace.0, replace.1)).unwrap();
        load_all_in_one(Some(&file), &[], &AllInOneHost::default())
    }

    #[test]
    fn sampling_strategies_file_is_for_jaeger_query_only() {
        let doc = load_with((
            "endpoint: 127.0.0.1:16686",
            "endpoint: 127.0.0.1:16686\n    sampling_strategies_file: /etc/sextant/strategies.json",
        ))
        .unwrap();
        let ext = query_extensions(&doc).unwrap();
        let (_, jaeger) = ext.iter().find(|(id, _)| id.ty == "jaeger_query").unwrap();
        assert_eq!(
            jaeger.sampling_strategies_file.as_deref(),
            Some(Path::new("/etc/sextant/strategies.json"))
        );

        let e = load_with((
            "endpoint: 127.0.0.1:3200",
            "endpoint: 127.0.0.1:3200\n    sampling_strategies_file: /etc/sextant/strategies.json",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tempo_query")
                && e.contains("sampling_strategies_file")
                && e.contains("jaeger_query"),
            "{e}"
        );
    }
}
