//! Records the compiler version for `/api/status/buildinfo` (Tempo's `goVersion` field).

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=SEXTANT_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    for var in [
        "SEXTANT_GIT_REVISION",
        "SEXTANT_GIT_BRANCH",
        "SEXTANT_BUILD_USER",
        "SEXTANT_BUILD_DATE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}
