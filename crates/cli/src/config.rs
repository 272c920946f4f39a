//! The all-in-one's settings, layered: defaults < YAML file (`--config`) < `SEXTANT_*`
//! environment variables (nested keys with `__`, e.g.
//! `SEXTANT_COLLECTOR__MEMORY_LIMITER__LIMIT_MIB=512`) < command-line flags.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use sextant_collector::CollectorConfig;

/// Top-level keys, so that other `SEXTANT_*` variables (the test harness's, say) are not read
/// as settings.
const KEYS: &[&str] = &[
    "data_dir",
    "otlp_grpc_addr",
    "otlp_http_addr",
    "query_addr",
    "store",
    "collector",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AllInOneConfig {
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
    pub otlp_grpc_addr: String,
    pub otlp_http_addr: String,
    /// The Tempo-compatible query API.
    pub query_addr: String,
    /// The Jaeger-compatible query API (what the Jaeger UI and Grafana's Jaeger data source call).
    pub jaeger_addr: String,
    pub store: StoreSettings,
    pub collector: CollectorConfig,
}

impl Default for AllInOneConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sextant-data"),
            otlp_grpc_addr: "127.0.0.1:4317".into(),
            otlp_http_addr: "127.0.0.1:4318".into(),
            query_addr: "127.0.0.1:3200".into(),
            jaeger_addr: "127.0.0.1:16686".into(),
            store: StoreSettings::default(),
            collector: CollectorConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// sled's page cache.
    pub cache_mib: u64,
    /// zstd level of stored batches (-7..=22; negative levels are zstd's fast modes).
    pub compression_level: i32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            cache_mib: 32,
            compression_level: -1,
        }
    }
}

/// Loads the layers. `overrides` holds only what the command line set.
pub fn load(file: Option<&Path>, overrides: Figment) -> anyhow::Result<AllInOneConfig> {
    let mut fig = Figment::from(Serialized::defaults(AllInOneConfig::default()));
    if let Some(path) = file {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        fig = fig.merge(Yaml::file(path));
    }
    fig = fig
        .merge(Env::prefixed("SEXTANT_").split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            let top = k.split(['.', '_']).next().unwrap_or("");
            KEYS.iter()
                .any(|known| known.split('_').next() == Some(top) && k.starts_with(known))
        }))
        .merge(overrides);
    let config: AllInOneConfig = fig.extract().map_err(|e| {
        let mut msg = String::new();
        for err in e {
            let source = err
                .metadata
                .as_ref()
                .map(|m| {
                    m.source
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| m.name.to_string())
                })
                .unwrap_or_default();
            let key = err.path.join(".");
            msg.push_str(&format!(
                "\n  {source}: {}{}",
                if key.is_empty() {
                    String::new()
                } else {
                    format!("{key}: ")
                },
                err.kind
            ));
        }
        anyhow::anyhow!("invalid configuration:{msg}")
    })?;
    validate(&config)?;
    Ok(config)
}

fn validate(c: &AllInOneConfig) -> anyhow::Result<()> {
    for (name, addr) in [
        ("otlp_grpc_addr", &c.otlp_grpc_addr),
        ("otlp_http_addr", &c.otlp_http_addr),
        ("query_addr", &c.query_addr),
        ("jaeger_addr", &c.jaeger_addr),
    ] {
        addr.parse::<std::net::SocketAddr>().with_context(|| {
            format!("invalid configuration: {name}: {addr:?} is not an address like 127.0.0.1:4317")
        })?;
    }
    if !(-7..=22).contains(&c.store.compression_level) {
        anyhow::bail!(
            "invalid configuration: store.compression_level: {} is not in -7..=22 (negative levels are zstd fast modes)",
            c.store.compression_level
        );
    }
    if c.collector.batch.send_batch_max_size != 0
        && c.collector.batch.send_batch_max_size < c.collector.batch.send_batch_size
    {
        anyhow::bail!(
            "invalid configuration: collector.batch.send_batch_max_size ({}) must be 0 or at least send_batch_size ({})",
            c.collector.batch.send_batch_max_size,
            c.collector.batch.send_batch_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_apply_in_order_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "data_dir: /from/file\nquery_addr: 127.0.0.1:9999\ncollector:\n  batch:\n    timeout: 1s\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SEXTANT_QUERY_ADDR", "127.0.0.1:7777");
            jail.set_env("SEXTANT_BIN", "/not/a/setting");
            jail.set_env("SEXTANT_COLLECTOR__MEMORY_LIMITER__LIMIT_MIB", "512");
            let flags = Figment::from(Serialized::default("otlp_grpc_addr", "127.0.0.1:1234"));
            let c = load(Some(&file), flags).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("/from/file"));
            assert_eq!(c.query_addr, "127.0.0.1:7777");
            assert_eq!(c.otlp_grpc_addr, "127.0.0.1:1234");
            assert_eq!(c.collector.batch.timeout, std::time::Duration::from_secs(1));
            assert_eq!(c.collector.memory_limiter.limit_mib, 512);
            Ok(())
        });
        std::fs::write(&file, "collector:\n  batch:\n    timeout: soon\n").unwrap();
        let e = load(Some(&file), Figment::new()).unwrap_err().to_string();
        assert!(
            e.contains("collector.batch.timeout") && e.contains("soon"),
            "{e}"
        );
        std::fs::write(&file, "colector: {}\n").unwrap();
        let e = load(Some(&file), Figment::new()).unwrap_err().to_string();
        assert!(e.contains("colector"), "{e}");
        std::fs::write(&file, "query_addr: nowhere\n").unwrap();
        let e = load(Some(&file), Figment::new()).unwrap_err().to_string();
        assert!(e.contains("query_addr"), "{e}");
    }
}
