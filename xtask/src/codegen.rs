//! `cargo xtask codegen [--check]`: generates the Rust code of Sextant's internal protos
//! (`crates/otlp-proto/proto/sextant/**.proto`) into `crates/otlp-proto/src/generated/`, with
//! protox (a protobuf compiler in Rust: no `protoc` needed) and tonic-prost-build.
//!
//! The generated files are committed; `--check` generates into a temporary directory and fails
//! when the committed files differ (CI runs it), so the code always matches its protos.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::workspace_root;

/// The protos to compile, relative to the proto root.
const PROTOS: &[&str] = &["sextant/store/v1/store.proto"];

fn proto_root() -> PathBuf {
    workspace_root().join("crates/otlp-proto/proto")
}

fn generated_dir() -> PathBuf {
    workspace_root().join("crates/otlp-proto/src/generated")
}

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        other => bail!("`cargo xtask codegen` takes only --check (got {other:?})"),
    };
    if check {
        let tmp = tempfile::Builder::new()
            .prefix("sextant-codegen-")
            .tempdir()
            .context("creating a temporary directory")?;
        generate(tmp.path())?;
        let differences = compare(tmp.path(), &generated_dir())?;
        if !differences.is_empty() {
            bail!(
                "the generated code in {} is out of date ({}); run `cargo xtask codegen` and commit the result",
                generated_dir().display(),
                differences.join(", ")
            );
        }
        println!("codegen: {} is up to date", generated_dir().display());
    } else {
        let out = generated_dir();
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        generate(&out)?;
        println!("codegen: wrote {}", out.display());
    }
    Ok(())
}

/// Compiles the protos and writes their Rust code into `out`.
fn generate(out: &Path) -> Result<()> {
    let root = proto_root();
    let fds = protox::compile(PROTOS, [&root])
        .map_err(|e| anyhow::anyhow!("compiling the protos under {}: {e}", root.display()))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .out_dir(out)
        .compile_fds(fds)
        .with_context(|| format!("generating Rust code into {}", out.display()))
}

/// The `.rs` files that differ between the two directories (missing on either side included).
fn compare(fresh: &Path, committed: &Path) -> Result<Vec<String>> {
    let names = |dir: &Path| -> Result<Vec<String>> {
        let mut names = Vec::new();
        if !dir.exists() {
            return Ok(names);
        }
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rs") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    };
    let mut all = names(fresh)?;
    all.extend(names(committed)?);
    all.sort();
    all.dedup();
    let mut differ = Vec::new();
    for name in all {
        let a = fs::read(fresh.join(&name)).ok();
        let b = fs::read(committed.join(&name)).ok();
        match (a, b) {
            (Some(a), Some(b)) if a == b => {}
            (None, Some(_)) => differ.push(format!("{name}: not generated any more")),
            (Some(_), None) => differ.push(format!("{name}: missing")),
            _ => differ.push(format!("{name}: differs")),
        }
    }
    Ok(differ)
}
