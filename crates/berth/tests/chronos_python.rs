//! Client compatibility: runs `tests/compat/chronos_python_test.py` (chronos-python 1.2.1,
//! PyPI `chronos-python`, unchanged) against a real `berth dev` cluster with basic auth.
//!
//! The Python comes from `BERTH_PYTHON` (default: `.venv-compat/bin/python` at the repo root,
//! created by `scripts/test.sh`, or with `python3 -m venv .venv-compat &&
//! .venv-compat/bin/pip install chronos-python==1.2.1`). Without it the test is skipped with a
//! notice, unless `BERTH_REQUIRE_COMPAT=1` or `CI` is set, in which case it fails.

mod bounded;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

const USER: &str = "chronos-user";
const PASSWORD: &str = "s3cr3t-pass";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn compat_required() -> bool {
    std::env::var("BERTH_REQUIRE_COMPAT").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::var_os("CI").is_some()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A `berth dev` child without `--data-dir`, so it stops its tasks when it gets SIGTERM. Its
/// temporary data dir lives under a private `TMPDIR`. Dropping the guard (also while a failed
/// test unwinds) sends SIGTERM, waits for the shutdown, and only then falls back to SIGKILL.
struct DevCluster {
    child: Child,
    url: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl DevCluster {
    fn start() -> DevCluster {
        let tmp = tempfile::Builder::new()
            .prefix("berth-compat-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let log = tmp.path().join("berth-dev.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(BERTH)
            .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
            // Authentication on: the client must send basic credentials (Marathon's
            // --http_credentials); chronos-python sends basic credentials after the 401.
            .args(["--http-credentials", &format!("{USER}:{PASSWORD}")])
            .env("TMPDIR", tmp.path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning berth dev");
        let mut dev = DevCluster {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _tmp: tmp,
        };
        dev.wait_ready(port);
        dev
    }

    fn wait_ready(&mut self, port: u16) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("berth dev exited early ({status}):\n{}", self.log_tail(60));
            }
            if http_get(port, "/ping").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "berth dev not answering /ping after 30 s:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("berth dev ignored SIGTERM for 60 s: killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- berth dev log (tail) ---\n{}", self.log_tail(80));
        }
    }
}

/// Minimal HTTP/1.1 GET (no client dependency): the raw response, or `None` if unreachable.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The venv Python with chronos-python 1.2.1, or why it is unusable.
fn compat_python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("BERTH_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv-compat/bin/python"),
    };
    if !python.exists() && python.components().count() > 1 {
        return Err(format!("{} does not exist", python.display()));
    }
    let probe = Command::new(&python)
        .args([
            "-c",
            "import chronos, importlib.metadata as m; print(m.version('chronos-python'))",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let version = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    if !probe.status.success() {
        return Err(format!(
            "{} has no `chronos-python` package: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    if version != "1.2.1" {
        return Err(format!(
            "{} has chronos-python {version}, expected 1.2.1",
            python.display()
        ));
    }
    Ok(python)
}

/// `N passed, M failed` from the script's output.
fn summary(output: &str) -> Option<(u32, u32)> {
    output.lines().rev().find_map(|l| {
        let (p, f) = l.trim().split_once(" passed, ")?;
        Some((p.parse().ok()?, f.strip_suffix(" failed")?.parse().ok()?))
    })
}

#[test]
fn chronos_python_client_against_berth_dev() {
    let python = match compat_python() {
        Ok(p) => p,
        Err(why) if compat_required() => panic!(
            "chronos-python compatibility test required (BERTH_REQUIRE_COMPAT/CI) but {why}; \
             run: python3 -m venv .venv-compat && .venv-compat/bin/pip install chronos-python==1.2.1"
        ),
        Err(why) => {
            eprintln!(
                "SKIP chronos_python: {why}. To run it: python3 -m venv .venv-compat && \
                 .venv-compat/bin/pip install chronos-python==1.2.1 (or set BERTH_PYTHON)"
            );
            return;
        }
    };
    let script = repo_root().join("tests/compat/chronos_python_test.py");
    assert!(script.exists(), "{} is missing", script.display());

    let dev = DevCluster::start();
    // Without credentials: refused with a Basic challenge (chronos-python's httplib2 sends
    // the credentials only after one).
    let port: u16 = dev
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let refused = http_get(port, "/v1/scheduler/jobs").unwrap_or_default();
    assert!(
        refused.starts_with("HTTP/1.1 401")
            && refused
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
        "GET /v1/scheduler/jobs without credentials: {refused}"
    );
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .env("BERTH_URL", &dev.url)
        .env("BERTH_USER", USER)
        .env("BERTH_PASSWORD", PASSWORD)
        .env("PYTHONUNBUFFERED", "1");
    let done = bounded::run_bounded(cmd, SCRIPT_TIMEOUT);
    let (status, stdout, stderr) = (done.status, done.stdout, done.stderr);
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        println!("--- stderr ---\n{stderr}");
    }
    let Some(status) = status else {
        panic!("the compat script did not finish within {SCRIPT_TIMEOUT:?}");
    };
    let (passed, failed) = summary(&stdout)
        .unwrap_or_else(|| panic!("no `N passed, M failed` line in the output ({status})"));
    assert!(
        status.success() && failed == 0 && passed > 0,
        "chronos-python compatibility: {passed} passed, {failed} failed ({status})"
    );
    drop(dev);
}
