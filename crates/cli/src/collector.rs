//! `sextant collector`: receivers, processors and exporters only, from an OpenTelemetry
//! Collector config; `sextant collector validate` checks a config without starting it;
//! `sextant config default` prints the default configs.

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use sextant_collector::service::config::{self as otel, NoHost};
use sextant_collector::service::{check_buildable, Service, StartOptions};

use crate::all_in_one::{release_memory, shutdown_signal};
use crate::config::{AllInOneHost, ALL_IN_ONE_DEFAULT, COLLECTOR_DEFAULT};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CollectorArgs {
    #[command(subcommand)]
    action: Option<CollectorAction>,
    /// Config file in the OpenTelemetry Collector's format
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum CollectorAction {
    /// Check a config (every component's keys and values, every pipeline) without starting
    Validate {
        /// Config file in the OpenTelemetry Collector's format
        #[arg(long)]
        config: PathBuf,
        /// Also accept the all-in-one's own types (store, tempo_query, jaeger_query)
        #[arg(long)]
        all_in_one: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(clap::Subcommand, Debug)]
enum ConfigAction {
    /// Print the default config (the all-in-one's; `--collector` for a collector's)
    Default {
        #[arg(long)]
        collector: bool,
    },
}

pub fn config(args: ConfigArgs) -> anyhow::Result<()> {
    match args.action {
        ConfigAction::Default { collector } => {
            print!(
                "{}",
                if collector {
                    COLLECTOR_DEFAULT
                } else {
                    ALL_IN_ONE_DEFAULT
                }
            );
            Ok(())
        }
    }
}

pub async fn run(args: CollectorArgs) -> anyhow::Result<()> {
    if let Some(CollectorAction::Validate { config, all_in_one }) = args.action {
        let doc = if all_in_one {
            otel::load_file(&config, &AllInOneHost::default())?
        } else {
            otel::load_file(&config, &NoHost)?
        };
        check_buildable(&doc)?;
        let traces = doc.pipelines.len();
        println!(
            "{}: valid ({} pipeline{}, {} receivers, {} processors, {} exporters, {} connectors, {} extensions)",
            config.display(),
            traces,
            if traces == 1 { "" } else { "s" },
            doc.receivers.len(),
            doc.processors.len(),
            doc.exporters.len(),
            doc.connectors.len(),
            doc.extensions.len()
        );
        return Ok(());
    }
    let Some(path) = args.config else {
        anyhow::bail!(
            "sextant collector needs --config FILE (start from `sextant config default --collector`)"
        );
    };
    let doc = otel::load_file(&path, &NoHost)?;
    check_buildable(&doc)?;
    let service = Service::start(
        &doc,
        &NoHost,
        Registry::default(),
        StartOptions {
            release_memory: Some(Arc::new(release_memory)),
            print_addresses: true,
        },
    )
    .await?;
    println!("ready");
    tracing::info!(config = %path.display(), pipelines = doc.pipelines.len(), "sextant collector ready");
    shutdown_signal().await;
    tracing::info!("shutting down: draining receivers");
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
