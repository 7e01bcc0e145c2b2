//! The OpenAPI document against the real server: schemathesis (PyPI) generates requests for
//! every operation of `GET /openapi.json` (a bounded number of examples each) and checks that
//! none is answered with a 5xx and that every status, content type and body is the one the
//! document declares.
//!
//! schemathesis comes from `BERTH_SCHEMATHESIS` (the `st` executable; default:
//! `.venv-schemathesis/bin/st` at the repo root, created by `scripts/test.sh` with
//! `python3 -m venv .venv-schemathesis && .venv-schemathesis/bin/pip install schemathesis==4.32.5`).
//! Without it the test is skipped with a notice, unless `BERTH_REQUIRE_DOCKER=1`,
//! `BERTH_REQUIRE_COMPAT=1` or `CI` is set, in which case it fails.
//!
//! The server runs without an agent, and every request it makes to a node's `agentUrl` (task
//! logs) goes to a proxy on a closed loopback port: whatever nodes schemathesis registers, no
//! traffic leaves the machine.
//!
//! `BERTH_SCHEMATHESIS_EXAMPLES` (default 20) and `BERTH_SCHEMATHESIS_SEED` (default a fixed
//! seed, so CI runs are repeatable; `random` for a new one each run) tune the run.

mod bounded;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The whole schemathesis run, at most.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const VERSION: &str = "4.32.5";
const DEFAULT_SEED: &str = "20261207";

/// Operations schemathesis leaves alone: the SSE stream never ends by itself.
const EXCLUDED_PATHS: &[&str] = &["/v2/events"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn required() -> bool {
    flag("BERTH_REQUIRE_DOCKER") || flag("BERTH_REQUIRE_COMPAT") || std::env::var_os("CI").is_some()
}

/// The `st` executable and its version, or why it is unusable.
fn schemathesis() -> Result<PathBuf, String> {
    let st = match std::env::var_os("BERTH_SCHEMATHESIS") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv-schemathesis/bin/st"),
    };
    if !st.exists() && st.components().count() > 1 {
        return Err(format!("{} does not exist", st.display()));
    }
    let probe = Command::new(&st)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", st.display()))?;
    let out = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    if !probe.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            st.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    if !out.ends_with(VERSION) {
        eprintln!("note: {out}, the suite is tuned for schemathesis {VERSION}");
    }
    Ok(st)
}

/// Runs `cmd` to completion or until `timeout`, returning (success, stdout + stderr).
fn run_bounded(cmd: Command, timeout: Duration) -> (Option<bool>, String) {
    let done = bounded::run_bounded(cmd, timeout);
    let mut text = done.stdout;
    if !done.stderr.trim().is_empty() {
        text.push_str("\n--- stderr ---\n");
        text.push_str(&done.stderr);
    }
    (done.status.map(|s| s.success()), text)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Minimal HTTP/1.1 GET: the status line, or `None` if unreachable.
fn http_status(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_string)
}

/// A `berth server` without an agent (apps schemathesis creates never run anywhere), on a
/// private data dir, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("berth-openapi-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let log = dir.path().join("server.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(BERTH)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("BERTH_LOG", "info")
            // Nodes schemathesis registers may advertise any `agentUrl`: every request the
            // server makes to one (task logs) goes to a closed loopback port instead.
            .env("ALL_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning berth server");
        let mut server = Server {
            child,
            port,
            log,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "berth server exited early ({status}):\n{}",
                    server.log_tail(60)
                );
            }
            if http_status(port, "/ping").is_some_and(|l| l.starts_with("HTTP/1.1 200")) {
                return server;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "berth server not answering /ping after 30 s:\n{}",
                    server.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn admin_token(&self) -> String {
        let path = self.dir.path().join("data").join("admin.token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- berth server log (tail) ---\n{}", self.log_tail(80));
        }
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let st = match schemathesis() {
        Ok(p) => p,
        Err(why) if required() => panic!(
            "the schemathesis test is required (BERTH_REQUIRE_DOCKER/BERTH_REQUIRE_COMPAT/CI) but \
             {why}; run: python3 -m venv .venv-schemathesis && \
             .venv-schemathesis/bin/pip install schemathesis=={VERSION}"
        ),
        Err(why) => {
            eprintln!(
                "SKIP openapi_schemathesis: {why}. To run it: python3 -m venv .venv-schemathesis \
                 && .venv-schemathesis/bin/pip install schemathesis=={VERSION} (or set \
                 BERTH_SCHEMATHESIS)"
            );
            return;
        }
    };
    let server = Server::start();
    let examples = std::env::var("BERTH_SCHEMATHESIS_EXAMPLES").unwrap_or("20".into());
    let seed = std::env::var("BERTH_SCHEMATHESIS_SEED").unwrap_or(DEFAULT_SEED.into());
    let work = server.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).expect("schemathesis dir");

    let mut cmd = Command::new(&st);
    cmd.current_dir(&work)
        .env("NO_COLOR", "1")
        .env("PYTHONUNBUFFERED", "1")
        .args(["run", &format!("{}/openapi.json", server.url())])
        // Authentication is on: every operation runs as the admin (401/403 are documented).
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.admin_token()),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        .args(["--max-examples", &examples])
        .args(["--request-timeout", "20"])
        .args(["--workers", "2"])
        .args(["--generation-database", "none"])
        .args(["--max-failures", "50"])
        .arg("--no-color");
    if seed != "random" {
        cmd.args(["--seed", &seed]);
    }
    for p in EXCLUDED_PATHS {
        cmd.args(["--exclude-path", p]);
    }
    let started = Instant::now();
    let (ok, output) = run_bounded(cmd, RUN_TIMEOUT);
    println!("{output}");
    println!("schemathesis ran for {:.0?}", started.elapsed());
    let Some(ok) = ok else {
        panic!("schemathesis did not finish within {RUN_TIMEOUT:?}");
    };
    assert!(
        ok,
        "schemathesis found server errors or responses that break openapi.json (output \
         above); server log:\n{}",
        server.log_tail(40)
    );
    assert!(
        http_status(server.port, "/ping").is_some_and(|l| l.starts_with("HTTP/1.1 200")),
        "the server must still answer after the run"
    );
}
