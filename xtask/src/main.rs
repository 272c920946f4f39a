//! `cargo xtask`: the project's automation, in Rust so that it runs wherever cargo does.
//!
//! * `cargo xtask ci`: formatting, clippy, the Python venv of the end-to-end tests, the debug
//!   build and the whole test suite, in that order, stopping at the first failure.
//! * `cargo xtask bench [NAME] [--duration S] [--streams N] [--warmup S] [--spans N]`: the benchmarks
//!   (`ingest`, `collector`, `sdk`, `store`); without a name, all of them.

mod bench;
mod bench_collector;
mod bench_query;
mod bench_sdk;
mod bench_store;
mod ci;
mod codegen;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  ci                         fmt check, clippy, Python venv, debug build, all tests
  codegen [--check]          generate the internal protos' code (--check: fail if the committed code differs)
  bench [NAME] [options]     benchmarks; without NAME, all of them (known: ingest, collector, sdk, store, query)
      --duration S           measured seconds per run (default 10)
      --streams N            concurrent export calls of the load generator (default 8)
      --warmup S             unmeasured warm-up seconds per run (default 2)
      --spans N              spans ingested by the store benchmark (default 10000000)
  help                       this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(&args[1..]),
        Some("codegen") => codegen::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        None | Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
