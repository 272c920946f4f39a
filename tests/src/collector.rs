//! `sextant collector --config FILE` as a child process: the config is written to a temporary
//! directory, every `<what> listening on <addr>` line is collected, `ready` awaited.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{sextant_bin, signal, spawn_line_reader, tail, wait_timeout, Captured, READY_TIMEOUT};

/// A running collector.
pub struct Collector {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Extra environment variables of the child process (kept across restarts).
    env: Vec<(String, String)>,
    /// `otlp-grpc`, `otlp-http`, `health-check`, `metrics`, ... -> address.
    pub addrs: BTreeMap<String, SocketAddr>,
}

impl Collector {
    /// Writes `config` (where `{dir}` stands for a temporary directory that lives as long as
    /// the collector) and starts `sextant collector` on it.
    pub fn start(config: &str) -> Collector {
        Self::start_with_env(config, &[])
    }

    /// [`Collector::start`] with extra environment variables for the child process (e.g. the
    /// Kubernetes downward-API variables).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Collector {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("collector.yaml");
        std::fs::write(&path, text).expect("write config");
        let mut c = Collector {
            child: None,
            dir,
            config: path,
            stdout: Captured::default(),
            stderr: Captured::default(),
            readers: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addrs: BTreeMap::new(),
        };
        c.spawn();
        c
    }

    /// The temporary directory (`{dir}` in the config).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn addr(&self, what: &str) -> SocketAddr {
        *self.addrs.get(what).unwrap_or_else(|| {
            panic!(
                "collector has no `{what} listening on` line; it printed {:?}",
                self.addrs
            )
        })
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr("otlp-grpc"))
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr("otlp-http"))
    }

    /// Everything the collector wrote to stderr since its last start.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr.text(), 20_000).to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("collector not running").id()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(sextant_bin());
        cmd.arg("collector")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.stdout = Captured::default();
        self.stderr = Captured::default();
        let (tx, rx) = mpsc::channel();
        self.readers.push(spawn_line_reader(
            child.stdout.take().unwrap(),
            self.stdout.clone(),
            Some(tx),
        ));
        self.readers.push(spawn_line_reader(
            child.stderr.take().unwrap(),
            self.stderr.clone(),
            None,
        ));
        self.child = Some(child);
        self.addrs.clear();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let line = line.trim();
                    if line == "ready" {
                        return;
                    }
                    if let Some((what, addr)) = line.split_once(" listening on ") {
                        if let Ok(a) = addr.trim().parse() {
                            self.addrs.insert(what.to_string(), a);
                        }
                    }
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "collector did not print `ready`\n--- config ---\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        std::fs::read_to_string(&self.config).unwrap_or_default(),
                        tail(&self.stdout.text(), 5_000),
                        self.stderr_tail()
                    );
                }
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }

    /// SIGTERM; waits up to 30 s.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("collector not running");
        signal(child.id(), libc::SIGTERM);
        let status = wait_timeout(&mut child, Duration::from_secs(30));
        self.join_readers();
        match status {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "collector did not exit within 30 s of SIGTERM\n--- stderr ---\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// Starts again on the same config (ports written as 0 change).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            assert!(
                status.success(),
                "collector exited with {status}\n{}",
                self.stderr_tail()
            );
        }
        self.spawn();
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }
}

/// A port that was free a moment ago, for a server that must come up later at a known place.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
