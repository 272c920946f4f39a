//! `sextant`: the one binary. Thin subcommands compose the crates: `all-in-one` runs collector,
//! store and query in one process; `collector` runs an OpenTelemetry Collector config; `trace` and `search` are clients of the query API;
//! `gen` and `null-server` are the benchmark's load generator and transport floor.

mod all_in_one;
mod client;
mod collector;
mod config;
mod gen;
mod null_server;
mod query_node;
mod store_admin;
mod store_exporter;
mod store_node;

use clap::{Parser, Subcommand};

/// mimalloc: the pipeline allocates many small strings and vectors per span, where it is
/// measurably cheaper than the system allocator (`cargo xtask bench ingest`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sextant",
    version,
    about = "Sextant: OTLP in, traces out. A tracing backend in one binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run collector, store and query in one process (the development default).
    AllInOne(all_in_one::AllInOneArgs),
    /// Run a collector from an OpenTelemetry Collector config (or `validate` one).
    Collector(collector::CollectorArgs),
    /// Print the default configs.
    Config(collector::ConfigArgs),
    /// Print one trace as a tree.
    Trace(client::TraceArgs),
    /// Search traces and print a table.
    Search(client::SearchArgs),
    /// Run a TraceQL metrics query and print each series' points.
    QueryRange(client::QueryRangeArgs),
    /// List the services that sent spans.
    Services(client::ServicesArgs),
    /// Print the service graph (who calls whom, how often) from the Jaeger API.
    Deps(client::DepsArgs),
    /// Run a store node (OTLP in, the store API out for `sextant query`), or inspect, verify
    /// or compact a store that is not running (`sextant store inspect|verify|compact`).
    Store(store_admin::StoreArgs),
    /// Run the Tempo and Jaeger query APIs over store nodes (`--store URL[,URL...]`).
    Query(query_node::QueryNodeArgs),
    /// Send generated OTLP load to a gRPC endpoint and report throughput and latency.
    Gen(gen::GenArgs),
    /// An OTLP/gRPC server that decodes and drops: the transport's floor for benchmarks.
    #[command(hide = true)]
    NullServer(null_server::NullServerArgs),
}

/// mimalloc's `mi_option_purge_delay` (libmimalloc-sys names its neighbours,
/// `mi_option_eager_commit_delay` = 14 and `mi_option_use_numa_nodes` = 16, but not it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS at once instead of after mimalloc's default 10 ms (which
/// its arenas multiply by 10): a flooded collector's peak RSS drops by about a third (187 ->
/// 118 MiB with tail sampling, `cargo xtask bench collector`) for a few percent of throughput.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides, where set.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores the value; mimalloc reads it when it next purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let logs = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(logs)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::AllInOne(args) => all_in_one::run(args).await,
            Command::Collector(args) => collector::run(args).await,
            Command::Config(args) => collector::config(args),
            Command::Trace(args) => client::trace(args).await,
            Command::Search(args) => client::search(args).await,
            Command::QueryRange(args) => client::query_range(args).await,
            Command::Services(args) => client::services(args).await,
            Command::Deps(args) => client::deps(args).await,
            Command::Store(args) => store_admin::run(args).await,
            Command::Query(args) => query_node::run(args).await,
            Command::Gen(args) => gen::run(args).await,
            Command::NullServer(args) => null_server::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
