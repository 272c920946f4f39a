//! `sextant store inspect | verify | compact`: the store's admin commands. They open the store
//! of an all-in-one that is not running (sled locks its directory), from `--data-dir` or the
//! `exporters.store` section of an all-in-one config.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sextant_collector::service::config::Override;
use sextant_store::{BlockInfo, SledStore, StoreConfig, StoreError};

use crate::config::{self, AllInOneHost};

/// Background maintenance of a store opened by an admin command: so long that it never runs.
const NO_MAINTENANCE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `sextant store [flags]` (a store node) or `sextant store inspect|verify|compact`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: Option<StoreCommand>,
    #[command(flatten)]
    node: crate::store_node::StoreNodeArgs,
}

#[derive(clap::Subcommand, Debug)]
enum StoreCommand {
    /// Print the store's blocks and figures (changes nothing).
    Inspect(InspectArgs),
    /// Check every block whole; bad blocks are quarantined and the exit code is 1.
    Verify(Target),
    /// Cut the write-ahead log into blocks, merge blocks and enforce retention now.
    Compact(CompactArgs),
}

/// Which store: the all-in-one's, as its config and flags say.
#[derive(clap::Args, Debug)]
struct Target {
    /// Data directory (`exporters.store.directory`) [default: ./sextant-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// All-in-one config file whose `exporters.store` section describes the store
    /// [default: `sextant config default`]
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a summary and a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct CompactArgs {
    #[command(flatten)]
    target: Target,
    /// Merge every block that fits (any two of a level), not only what the background
    /// compactor would.
    #[arg(long)]
    all: bool,
}

/// Runs a `sextant store` command: without a subcommand, the store node.
pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let Some(command) = args.command else {
        return crate::store_node::run(args.node).await;
    };
    // Store calls block (and an S3 backend runs its own runtime): off the async threads.
    tokio::task::spawn_blocking(move || match command {
        StoreCommand::Inspect(a) => inspect(a),
        StoreCommand::Verify(t) => verify(t),
        StoreCommand::Compact(a) => compact(a),
    })
    .await
    .context("the store command stopped unexpectedly")?
}

// ---------------------------------------------------------------- opening

impl Target {
    /// The store's settings, from the config (or the default one) with `--data-dir` applied.
    fn store_config(&self) -> anyhow::Result<StoreConfig> {
        let host = AllInOneHost::default();
        let mut overrides = Vec::new();
        if let Some(dir) = &self.data_dir {
            overrides.push(Override::new(
                &["exporters", "store", "directory"],
                dir.display().to_string(),
            ));
        }
        let doc = config::load_all_in_one(self.config.as_deref(), &overrides, &host)?;
        let exporter = config::store_config(&doc)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the config has no `store` exporter, so no store to open",
                doc.source
            )
        })?;
        Ok(exporter.store_config())
    }
}

/// Opens the store with its background work parked, so that only the command changes it.
fn open(target: &Target) -> anyhow::Result<(SledStore, PathBuf)> {
    let mut config = target.store_config()?;
    config.blocks.maintenance_interval = NO_MAINTENANCE;
    config.blocks.compaction = false;
    let dir = config.path.clone();
    if !dir.is_dir() {
        anyhow::bail!(
            "no store in {}: the directory does not exist (give the all-in-one's --data-dir or --config)",
            dir.display()
        );
    }
    tracing::debug!(path = %dir.display(), "opening the store");
    let store = SledStore::open(config).map_err(|e| {
        if is_locked(&e) {
            anyhow::anyhow!(
                "the store in {} is in use by another process (a running `sextant all-in-one`?): \
                 stop it first, the store's admin commands need the store to themselves ({e})",
                dir.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot open the store in {}", dir.display()))
        }
    })?;
    Ok((store, dir))
}

/// Whether opening failed because another process holds sled's lock on the directory.
fn is_locked(e: &StoreError) -> bool {
    match e {
        StoreError::Sled(inner) => {
            let text = inner.to_string();
            text.contains("could not acquire lock") || text.contains("WouldBlock")
        }
        StoreError::Io(io) => io.kind() == std::io::ErrorKind::WouldBlock,
        _ => false,
    }
}

fn close(store: &SledStore) -> anyhow::Result<()> {
    store.close().context("flushing and closing the store")
}

// ---------------------------------------------------------------- inspect

/// What `inspect --json` prints.
#[derive(Debug, Serialize)]
struct Inspection {
    directory: String,
    backend: String,
    summary: Summary,
    /// Newest first.
    blocks: Vec<BlockRow>,
}

#[derive(Debug, Serialize)]
struct Summary {
    blocks: u64,
    block_spans: u64,
    wal_spans: u64,
    total_spans: u64,
    block_bytes: u64,
    raw_bytes: u64,
    /// Raw bytes over stored bytes (0 without blocks).
    compression_ratio: f64,
    /// Stored bytes per span in blocks (0 without blocks).
    bytes_per_span: f64,
    oldest_span: Option<String>,
    newest_span: Option<String>,
    oldest_span_ns: Option<u64>,
    newest_span_ns: Option<u64>,
    quarantined: u64,
}

#[derive(Debug, Serialize)]
struct BlockRow {
    id: String,
    level: u32,
    spans: u64,
    traces: u64,
    pages: usize,
    size: u64,
    raw_bytes: u64,
    ratio: f64,
    start: String,
    end: String,
    start_ns: u64,
    end_ns: u64,
    created: String,
    /// Seconds since the block was made.
    age_seconds: u64,
}

fn ratio(raw: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        raw as f64 / stored as f64
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// UTC, RFC 3339 to the second.
fn rfc3339(ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(ns / 1_000_000_000);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `532 B`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `45s`, `12m 3s`, `2h 5m`, `3d 4h`: the two largest units.
fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn row(b: &BlockInfo, now: u64) -> BlockRow {
    BlockRow {
        id: b.id.clone(),
        level: b.level,
        spans: b.span_count,
        traces: b.trace_count,
        pages: b.page_count,
        size: b.size,
        raw_bytes: b.raw_bytes,
        ratio: ratio(b.raw_bytes, b.size),
        start: rfc3339(b.start_ns),
        end: rfc3339(b.end_ns),
        start_ns: b.start_ns,
        end_ns: b.end_ns,
        created: rfc3339(b.created_ns),
        age_seconds: now.saturating_sub(b.created_ns) / 1_000_000_000,
    }
}

fn inspection(store: &SledStore, directory: String) -> Inspection {
    let blocks = store.blocks();
    let stats = store.block_stats();
    let wal_spans = store.wal_spans();
    let now = now_ns();
    let block_spans: u64 = blocks.iter().map(|b| b.span_count).sum();
    let block_bytes: u64 = blocks.iter().map(|b| b.size).sum();
    let raw_bytes: u64 = blocks.iter().map(|b| b.raw_bytes).sum();
    let oldest = blocks.iter().map(|b| b.start_ns).min();
    let newest = blocks.iter().map(|b| b.end_ns).max();
    Inspection {
        directory,
        backend: store.block_backend(),
        summary: Summary {
            blocks: blocks.len() as u64,
            block_spans,
            wal_spans,
            total_spans: block_spans + wal_spans,
            block_bytes,
            raw_bytes,
            compression_ratio: ratio(raw_bytes, block_bytes),
            bytes_per_span: if block_spans == 0 {
                0.0
            } else {
                block_bytes as f64 / block_spans as f64
            },
            oldest_span: oldest.map(rfc3339),
            newest_span: newest.map(rfc3339),
            oldest_span_ns: oldest,
            newest_span_ns: newest,
            quarantined: stats.quarantined,
        },
        blocks: blocks.iter().map(|b| row(b, now)).collect(),
    }
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let (store, dir) = open(&args.target)?;
    let report = inspection(&store, dir.display().to_string());
    close(&store)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        println!("{text}");
    } else {
        print_inspection(&report);
    }
    Ok(())
}

fn print_inspection(r: &Inspection) {
    let s = &r.summary;
    println!("store:        {}", r.directory);
    println!("blocks in:    {}", r.backend);
    println!("blocks:       {}", s.blocks);
    println!(
        "spans:        {} in blocks, {} in the write-ahead log ({} in all)",
        s.block_spans, s.wal_spans, s.total_spans
    );
    println!(
        "size:         {} on disk, {} raw, ratio {:.2}, {:.1} bytes per span",
        human_bytes(s.block_bytes),
        human_bytes(s.raw_bytes),
        s.compression_ratio,
        s.bytes_per_span
    );
    match (&s.oldest_span, &s.newest_span) {
        (Some(o), Some(n)) => println!("spans from:   {o} to {n}"),
        _ => println!("spans from:   - (no blocks)"),
    }
    if s.quarantined > 0 {
        println!(
            "quarantined:  {} block(s) failed their checks when the store opened",
            s.quarantined
        );
    }
    if r.blocks.is_empty() {
        return;
    }
    println!();
    let id_width = r
        .blocks
        .iter()
        .map(|b| b.id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    println!(
        "{:<id_width$}  {:>5}  {:>9}  {:>8}  {:>5}  {:>10}  {:>6}  {:<20}  {:<20}  {:>8}",
        "ID", "LEVEL", "SPANS", "TRACES", "PAGES", "SIZE", "RATIO", "START", "END", "AGE"
    );
    for b in &r.blocks {
        println!(
            "{:<id_width$}  {:>5}  {:>9}  {:>8}  {:>5}  {:>10}  {:>6.2}  {:<20}  {:<20}  {:>8}",
            b.id,
            b.level,
            b.spans,
            b.traces,
            b.pages,
            human_bytes(b.size),
            b.ratio,
            b.start,
            b.end,
            human_age(b.age_seconds)
        );
    }
}

// ---------------------------------------------------------------- verify

/// A bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} verifying [{bar:40}] {pos}/{len} blocks {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A spinner on stderr, hidden when stderr is not a terminal.
fn spinner() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn verify(target: Target) -> anyhow::Result<()> {
    let (store, _) = open(&target)?;
    let at_open = store.block_stats().quarantined;
    let blocks = store.blocks();
    let bar = progress_bar(blocks.len() as u64);
    let (mut checked, mut spans) = (0u64, 0u64);
    let result = store.verify(&mut |info, outcome| {
        checked += 1;
        spans += info.span_count;
        bar.inc(1);
        if let Err(e) = outcome {
            bar.suspend(|| {
                tracing::warn!(block = %info.id, problem = %e, "block failed verification");
                println!("BAD {}: {e} (quarantined)", info.id);
            });
        }
    });
    bar.finish_and_clear();
    let backend = store.block_backend();
    close(&store)?;
    let bad = result.context("verifying the blocks")?;
    println!(
        "verified {checked} block(s) holding {spans} span(s) in {backend}: {} good, {bad} bad",
        checked.saturating_sub(bad as u64)
    );
    if at_open > 0 {
        println!(
            "{at_open} block(s) failed their checks when the store opened (see the log above) and were quarantined"
        );
    }
    let total_bad = bad as u64 + at_open;
    if total_bad > 0 {
        anyhow::bail!(
            "{total_bad} bad block(s): moved to quarantine/ in {backend}, no longer served"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- compact

fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let (store, _) = open(&args.target)?;
    let spin = spinner();
    let result = compact_open(&store, args.all, &spin);
    spin.finish_and_clear();
    let closed = close(&store);
    let lines = result?;
    closed?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// The three steps of `compact`; returns what to print.
fn compact_open(store: &SledStore, all: bool, spin: &ProgressBar) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let before = store.block_stats();
    let wal = store.wal_spans();
    spin.set_message(format!(
        "cutting {wal} span(s) of the write-ahead log into blocks"
    ));
    store
        .flush_blocks()
        .context("cutting the write-ahead log into blocks")?;
    let cut = store.block_stats();
    lines.push(format!(
        "write-ahead log: {} span(s) cut into {} block(s)",
        wal.saturating_sub(store.wal_spans()),
        cut.cuts.saturating_sub(before.cuts)
    ));
    tracing::info!(
        spans = wal,
        blocks = cut.cuts.saturating_sub(before.cuts),
        "write-ahead log cut"
    );

    spin.set_message(format!(
        "compacting {} block(s){}",
        cut.blocks,
        if all { " (all)" } else { "" }
    ));
    let report = store.compact(all).context("compacting the blocks")?;
    if report.inputs == 0 {
        lines.push(format!(
            "compaction: nothing to merge ({} block(s){})",
            cut.blocks,
            if all {
                ""
            } else {
                "; --all merges any two of a level"
            }
        ));
    } else {
        lines.push(format!(
            "compaction: {} block(s) -> {} block(s), {} -> {} span(s), {} duplicate(s) removed, {} -> {}",
            report.inputs,
            report.outputs,
            report.spans_in,
            report.spans_out,
            report.duplicates_removed,
            human_bytes(report.bytes_in),
            human_bytes(report.bytes_out)
        ));
    }

    spin.set_message("enforcing retention");
    let expired = store
        .enforce_retention(now_ns())
        .context("enforcing retention")?;
    lines.push(format!("retention: {expired} block(s) expired"));

    let after = store.block_stats();
    lines.push(format!(
        "now: {} block(s), {} span(s) in blocks, {} in the write-ahead log, {} (was {} in {} block(s))",
        after.blocks,
        after.block_spans,
        store.wal_spans(),
        human_bytes(after.block_bytes),
        human_bytes(before.block_bytes),
        before.blocks
    ));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_bytes(532), "532 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
        assert_eq!(human_age(45), "45s");
        assert_eq!(human_age(12 * 60 + 3), "12m 3s");
        assert_eq!(human_age(2 * 3600 + 5 * 60), "2h 5m");
        assert_eq!(human_age(3 * 86_400 + 4 * 3600), "3d 4h");
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20Z");
    }
}
