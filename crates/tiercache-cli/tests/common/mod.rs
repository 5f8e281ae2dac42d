//! Helpers that run the real `tiercache` binary.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tiercache");

/// How long a server may take to start or stop before the test fails.
const BOUND: Duration = Duration::from_secs(20);

/// Returns a `tiercache` command that ignores the caller's `TIERCACHE_*` variables.
pub fn tiercache() -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "TIERCACHE_CONFIG",
        "TIERCACHE_LISTEN",
        "TIERCACHE_REDIS_URL",
        "TIERCACHE_REDIS_PASSWORD",
        "TIERCACHE_ADDR",
        "TIERCACHE_ADMIN_LISTEN",
        "TIERCACHE_TOKEN",
        "TIERCACHE_AUTH_TOKENS",
        "TIERCACHE_TLS_CA",
        "TIERCACHE_TLS_CERT",
        "TIERCACHE_TLS_KEY",
        "TIERCACHE_TLS_SERVER_NAME",
        "TIERCACHE_TLS_CERT_FILE",
        "TIERCACHE_TLS_KEY_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

/// Runs `tiercache args…` to completion.
pub fn run(args: &[&str]) -> Output {
    tiercache().args(args).output().expect("run tiercache")
}

/// Runs `tiercache args…` with `input` on stdin.
pub fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = tiercache()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tiercache");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Parses stdout as one JSON value (the `--json` output), showing it when it is not JSON.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it differs.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A `tiercache serve` child on `127.0.0.1:0`; killed on drop if still running.
///
/// The port is read from the JSON "listening" log line, so there is no race for a free port.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `tiercache serve` with `extra` arguments and waits (bounded) until it listens.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// [`ServerProcess::start`] with environment variables `env` set for the server.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = tiercache()
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            // Tests run at once; the default admin port 127.0.0.1:9464 would clash.
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tiercache serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        // Keep draining stderr for the life of the child so it never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(BOUND) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not log \"listening\" within {BOUND:?}; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            addr: format!("http://{addr}"),
            log,
            reader: Some(reader),
        }
    }

    /// Returns the log lines so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// Sends `SIG<name>` with `kill`.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{name} {pid} failed");
    }

    /// Waits (bounded) for the process to exit, then for its log to be read to the end.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {BOUND:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipe closed with the process, so the reader ends promptly.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns the address of a JSON `listening` log line.
fn listening_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some(fields.get("addr")?.as_str()?.to_string())
}
