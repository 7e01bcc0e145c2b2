//! HTTP fuzzing of the real binary: `berth dev` (server and agent in one process) gets a few
//! thousand seeded random requests over every route of the server's API and of the agent's own
//! HTTP endpoint, sent on raw sockets so that nothing a client library would refuse to send is
//! out of reach: malformed JSON, numbers out of every range, `NaN`, duplicate keys, deep
//! nesting, huge arrays (within the body limit and over it), traversal, encoded slashes,
//! control characters and non-ASCII in ids and query strings, wrong methods and content types,
//! empty bodies, and random mutations of valid app definitions. One lane sends everything, in
//! order; a second, concurrent lane sends only requests that cannot change which apps exist
//! (reads, streams, logs, the agent protocol for made-up nodes, the agent's endpoint). Some
//! requests keep their connection alive and send a second one on it.
//!
//! Asserted throughout: no 5xx; every 4xx has a JSON body (the HTTP parser's own 400 for bytes
//! that are not HTTP at all excepted); no reset, early close or hang (a per-request timeout),
//! and a kept-alive connection serves its next request unless the reply said it closes;
//! the process stays up with RSS under a bound; nothing panicked (its log). At the end the
//! stored apps are exactly those whose creation was acknowledged (2xx) and not acknowledged as
//! deleted later: every request's effect on the set of apps is modelled from what was sent and
//! what came back (group requests, bulk updates and deployment rollbacks included), and they
//! are still exactly those after a `kill -9` and a restart on the same data dir.
//!
//! `BERTH_FUZZ_SEED` and `BERTH_FUZZ_REQUESTS` override the seed and the request count; the
//! seed is printed, with the count and a status histogram. `BERTH_FUZZ_PAUSE_ON_NO_REPLY=<s>`
//! pauses that long at a request that got no reply (a hang), with `berth dev` still running,
//! so that `gdb -p <pid> -batch -ex 'thread apply all bt'` shows where it is stuck.

mod common;

use common::{BERTH, free_port, kill9, node_list, processes, remove_task_cgroups};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEFAULT_SEED: u64 = 0xf022_b347;
const DEFAULT_REQUESTS: usize = 3000;
/// A reply (or, for streams, its head) must be complete within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The process's resident set must stay below this (KiB).
const RSS_LIMIT_KB: u64 = 500 * 1024;
/// The server's body limit (`ServerConfig::max_body_bytes`).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The process under test
// ---------------------------------------------------------------------------------------------

/// `berth dev` on a free port and a private directory; killed (with every process in its
/// directory) on drop.
struct Dev {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Dev {
    async fn start() -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("berth-it-fuzz-http-")
            .tempdir()
            .expect("tempdir");
        // The harness's convention: a later test process reaps what a killed one left.
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .expect("owner file");
        let port = free_port();
        let child = Dev::spawn(dir.path(), port);
        Dev { dir, port, child }
    }

    /// `berth dev` on `port` with its data in `dir` (the log appended to `dir/dev.log`).
    fn spawn(dir: &std::path::Path, port: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dev.log"))
            .expect("log file");
        let base = 20000 + (std::process::id() % 400) * 50;
        Command::new(BERTH)
            .arg("dev")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--node-id",
                "n1",
                "--hostname",
                "n1",
                "--address",
                "127.0.0.1",
            ])
            .args(["--cpus", "1", "--mem", "1024", "--disk", "10000"])
            .args(["--drivers", "exec,fake"])
            .arg("--ports")
            .arg(format!("{base}-{}", base + 49))
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning berth dev")
    }

    /// `kill -9`, then the same data dir again on a new port: what was acknowledged must have
    /// been persisted.
    fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port = free_port();
        self.child = Dev::spawn(self.dir.path(), self.port);
    }

    /// Waits until the server answers and node n1 is ready; returns the port of the agent's
    /// endpoint (from the URL it advertises).
    async fn wait_ready(&mut self) -> u16 {
        let port = self.port;
        let dev = self;
        // Up, and the agent registered: its URL is where the agent's endpoint listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(dev.alive(), "berth dev exited:\n{}", dev.log());
            assert!(
                Instant::now() < deadline,
                "berth dev did not come up:\n{}",
                dev.log()
            );
            let req = Req::new(Dest::Server, "setup", "GET", "/api/v1/nodes".into());
            if let Ok(resp) = send(port, &req).await
                && resp.status == 200
            {
                let url = node_list(&resp.json()).iter().find_map(|n| {
                    let ready = n["status"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("ready"));
                    let url = n["agentUrl"].as_str().or(n["info"]["agentUrl"].as_str());
                    url.filter(|_| ready).map(str::to_string)
                });
                if let Some(url) = url {
                    let p: u16 = url
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim_end_matches('/').parse().ok())
                        .unwrap_or_else(|| panic!("agent URL {url}"));
                    return p;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of the berth dev log ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = self.dir.path().to_string_lossy().to_string();
        let me = std::process::id() as i32;
        for _ in 0..3 {
            let left: Vec<i32> = processes()
                .into_iter()
                .filter(|p| p.pid != me)
                .filter(|p| {
                    p.cwd
                        .as_ref()
                        .is_some_and(|c| c.to_string_lossy().starts_with(&root))
                        || p.cmdline.iter().any(|a| a.starts_with(&root))
                })
                .map(|p| p.pid)
                .collect();
            if left.is_empty() {
                break;
            }
            left.into_iter().for_each(kill9);
            std::thread::sleep(Duration::from_millis(100));
        }
        remove_task_cgroups(self.dir.path());
    }
}

/// Samples `VmRSS` of a process every 50 ms on a thread of its own; keeps the maximum.
struct RssWatch {
    max_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let max_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kb.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kb) = vm_rss_kb(pid) {
                    m.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch {
            max_kb,
            stop,
            thread: Some(thread),
        }
    }

    fn max_kb(&self) -> u64 {
        self.max_kb.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Server,
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An HTTP request: the reply is read whole.
    Normal,
    /// A stream (`/v2/events`, followed logs): a 200's head is enough.
    Stream,
    /// Bytes that are not valid HTTP: the HTTP parser may answer a bare 400.
    Garbage,
}

#[derive(Debug, Clone)]
struct Req {
    dest: Dest,
    /// Route class, for the histogram.
    class: &'static str,
    kind: Kind,
    method: String,
    /// The request target exactly as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    chunked: bool,
    /// For [`Kind::Garbage`]: the whole request.
    raw: Option<Vec<u8>>,
    /// Without `Connection: close`: unless the reply says it closes, the same connection must
    /// then answer a `GET /ping`.
    keep_alive: bool,
}

impl Req {
    fn new(dest: Dest, class: &'static str, method: &str, target: String) -> Req {
        Req {
            dest,
            class,
            kind: Kind::Normal,
            method: method.to_string(),
            target,
            headers: vec![("Accept".into(), "application/json".into())],
            body: None,
            chunked: false,
            raw: None,
            keep_alive: false,
        }
    }

    fn json(mut self, body: Vec<u8>) -> Req {
        self.headers
            .push(("Content-Type".into(), "application/json".into()));
        self.body = Some(body);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !self.keep_alive {
            out.push_str("Connection: close\r\n");
        }
        let mut out = out.into_bytes();
        match &self.body {
            Some(b) if self.chunked => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in b.chunks(64 * 1024) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Some(b) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            None => out.extend_from_slice(b"\r\n"),
        }
        out
    }

    fn describe(&self) -> String {
        let body = match (&self.raw, &self.body) {
            (Some(r), _) => format!(" raw {:?}", preview(r)),
            (None, Some(b)) => format!(" body {:?}", preview(b)),
            (None, None) => String::new(),
        };
        format!(
            "{:?} {} {}{body}",
            self.dest,
            self.method,
            preview(self.target.as_bytes())
        )
    }
}

fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(300)]).to_string();
    if b.len() > 300 {
        format!("{s}... ({} bytes)", b.len())
    } else {
        s
    }
}

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct Reader {
    rd: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads more; `Ok(false)` at EOF.
    async fn more(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.rd.read(&mut chunk).await {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(format!("connection error while reading the reply: {e}")),
        }
    }

    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if !self.more().await? {
                return Err("connection closed inside a chunked body".into());
            }
        }
    }

    async fn exactly(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.more().await? {
                return Err(format!(
                    "connection closed after {} of {n} body bytes",
                    self.buf.len()
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }
}

async fn read_reply(r: &mut Reader, req: &Req) -> Result<Resp, String> {
    let head_end = loop {
        if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !r.more().await? {
            return Err(format!(
                "connection closed before a complete reply head ({} bytes: {:?})",
                r.buf.len(),
                preview(&r.buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&r.buf[..head_end]).to_string();
    r.buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if req.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if req.kind == Kind::Stream && status == 200 {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let line = r.line().await?;
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk size line {size:?}"))?;
            if n == 0 {
                while !r.line().await?.is_empty() {}
                break;
            }
            let data = r.exactly(n).await?;
            resp.body.extend_from_slice(&data);
            r.exactly(2).await?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        resp.body = r.exactly(n).await?;
    } else {
        while r.more().await? {}
        resp.body = std::mem::take(&mut r.buf);
    }
    Ok(resp)
}

async fn send(port: u16, req: &Req) -> Result<Resp, String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (rd, mut wr) = stream.into_split();
        let bytes = req.bytes();
        // Written on the side: the server may answer (413) before it has read everything.
        let writer = tokio::spawn(async move {
            let r = wr.write_all(&bytes).await;
            (r, wr)
        });
        let mut reader = Reader {
            rd,
            buf: Vec::new(),
        };
        let reply = read_reply(&mut reader, req).await;
        let keep = req.keep_alive
            && reply.as_ref().is_ok_and(|r| {
                !r.header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            });
        if !keep {
            writer.abort();
            return reply;
        }
        // The reply did not say the connection closes: it must serve the next request.
        let (written, mut wr) = writer.await.map_err(|e| format!("writer: {e}"))?;
        written
            .map_err(|e| format!("writing the request failed on a kept-alive connection: {e}"))?;
        let ping = Req::new(req.dest, "keep-alive", "GET", "/ping".into());
        wr.write_all(&ping.bytes())
            .await
            .map_err(|e| format!("the connection did not take a second request: {e}"))?;
        let second = read_reply(&mut reader, &ping)
            .await
            .map_err(|e| format!("no reply to a second request on the connection: {e}"))?;
        if second.status != 200 {
            return Err(format!(
                "a second request on the connection got {}: {:?}",
                second.status,
                preview(&second.body)
            ));
        }
        reply
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no reply within {REQUEST_TIMEOUT:?} (hang)")),
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Ids the app-set model tracks, valid ones in several spellings.
const APP_IDS: &[&str] = &[
    "/fuzz/a",
    "/fuzz/b",
    "/fuzz/c",
    "/fuzz/d",
    "/fuzz/e.f-g",
    "/fuzz/g1/a",
    "/fuzz/g1/b",
    "/fuzz/g2/x/y",
    "/fuzz/9",
    "fuzz/rel",
    "//fuzz//dbl//",
];

/// Ids no app may have (in a JSON body: literal).
const BAD_IDS: &[&str] = &[
    "/fuzz/../etc",
    "/fuzz/./a",
    "../fuzz/a",
    "/fuzz/..",
    "/fuzz/A",
    "/fuzz/a_b",
    "/fuzz/-a",
    "/fuzz/a-",
    "/fuzz/\u{fc}",
    "/fuzz/\u{1f600}",
    "/fuzz/a\u{0}",
    "/fuzz/a\nb",
    "/fuzz/a\r\nX-Injected: 1",
    "/fuzz/%2e%2e",
    "/fuzz/a%2Fb",
    "/",
    "",
    "/fuzz/restart",
    "/fuzz/tasks",
    "/fuzz/versions",
    "/fuzz/a b",
    "/fuzz/a\\b",
    "/fuzz/\u{202e}x",
    "/fuzz/\u{feff}",
];

/// Path segments as sent in a URL (percent-encoding intact).
/// Secret names for the secret routes: valid, nested, and hostile ones (as sent in a URL).
const SECRET_NAMES: &[&str] = &[
    "db",
    "team%2Fdb",
    "team/db",
    "a/b/c/d",
    "..",
    "%2e%2e/x",
    "%00",
    "a%0ab",
    "%ff%fe",
    "",
    "%C3%A9t%C3%A9",
];

const BAD_SEGMENTS: &[&str] = &[
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "..%2f..%2f",
    "..%2F..%2Fetc%2Fpasswd",
    "%2f",
    "fuzz%2fa",
    "fuzz%2Fg1%2Fa",
    "%00",
    "a%00b",
    "%0a",
    "%0d%0aX-Injected:%201",
    "%ff",
    "%ff%fe",
    "%c0%af",
    "%C3%BC",
    "%F0%9F%98%80",
    "%e2%80%ae",
    "%u002e",
    "%",
    "%2",
    "%zz",
    "a%20b",
    "~",
    "..;",
    "%252e%252e",
    ";a=b",
    "a.",
    "restart",
    "tasks",
    "versions",
    "delay",
];

const QUERY_KEYS: &[&str] = &[
    "embed",
    "force",
    "partialUpdate",
    "scale",
    "wipe",
    "label",
    "cmd",
    "id",
    "status",
    "event_type",
    "stream",
    "tail",
    "follow",
    "after",
    "wait",
    "host",
    "%00",
    "%ff",
    "",
];

const QUERY_VALUES: &[&str] = &[
    "",
    "true",
    "false",
    "1",
    "0",
    "True",
    "FALSE",
    "maybe",
    "%00",
    "%0a",
    "%0d%0a",
    "%ff",
    "%ff%fe",
    "..%2f..%2f",
    "../..",
    "app.tasks",
    "app.counts",
    "app.deployments",
    "app.readiness",
    "app.lastTaskFailure",
    "apps.tasks",
    "group.apps",
    "running",
    "staging",
    "deployment_info",
    "status_update_event",
    "event_stream_attached",
    "nope",
    "-1",
    "18446744073709551616",
    "99999999999999999999999",
    "1e400",
    "NaN",
    "%",
    "%zz",
    "a=b",
    "%26",
    "%C3%BC",
    "%F0%9F%98%80",
    "env==prod",
    "env!=prod",
    "!x",
    "a,b,,c",
    "stdout",
    "stderr",
    "both",
    "all",
    "3",
    "+1",
    "/fuzz",
    "fuzz",
    "sleep",
];

fn pick<'a, T: ?Sized>(rng: &mut SmallRng, items: &'a [&'a T]) -> &'a T {
    items[rng.random_range(0..items.len())]
}

fn query(rng: &mut SmallRng) -> String {
    match rng.random_range(0..12) {
        0..=3 => String::new(),
        4 => "?".into(),
        5 => "?&&=&".into(),
        6 => format!("?embed={}", "app.tasks,".repeat(rng.random_range(1..800))),
        _ => {
            let n = rng.random_range(1..5);
            let pairs: Vec<String> = (0..n)
                .map(|_| {
                    let k = pick(rng, QUERY_KEYS);
                    if rng.random_bool(0.1) {
                        k.to_string()
                    } else {
                        format!("{k}={}", pick(rng, QUERY_VALUES))
                    }
                })
                .collect();
            format!("?{}", pairs.join("&"))
        }
    }
}

/// `force=true` now and then (a locked app's change goes through only with it).
fn force_query(rng: &mut SmallRng) -> String {
    match rng.random_range(0..6) {
        0 | 1 => "?force=true".into(),
        2 => query(rng),
        _ => String::new(),
    }
}

/// An app id for a URL: mostly a tracked one, sometimes broken.
fn url_id(rng: &mut SmallRng) -> String {
    let id = pick(rng, APP_IDS).trim_start_matches('/').to_string();
    match rng.random_range(0..10) {
        0 => format!("{id}/{}", pick(rng, BAD_SEGMENTS)),
        1 => format!("{}/{id}", pick(rng, BAD_SEGMENTS)),
        2 => pick(rng, BAD_SEGMENTS).to_string(),
        3 => id.replace('/', "%2F"),
        4 => "a".repeat(rng.random_range(100..3000)),
        _ => id,
    }
}

/// A JSON value of any type, mostly small, sometimes a large or pathological one.
fn random_value(rng: &mut SmallRng, depth: usize) -> Value {
    match rng.random_range(0..24) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-3..4)),
        3 => json!(
            [
                0i64,
                -1,
                1,
                65535,
                65536,
                i32::MAX as i64,
                1 << 53,
                (1 << 53) + 1,
                i64::MAX,
                i64::MIN,
                1_000_000,
                1_000_001
            ][rng.random_range(0..12)]
        ),
        4 => json!(u64::MAX),
        5 => json!([0.5, -0.0, 1e308, -1e308, 5e-324, 0.001, 0.0009, 1.15][rng.random_range(0..8)]),
        6 => json!(rng.random::<f64>() * 10.0),
        7..=10 => json!(pick(rng, BAD_IDS)),
        11 => json!(pick(rng, QUERY_VALUES)),
        12 => json!(
            [
                "sleep 3600",
                "true",
                "UNIQUE",
                "hostname",
                "DOCKER",
                "MESOS",
                "HTTP",
                "TCP",
                "COMMAND",
                "tcp",
                "udp,tcp",
                "host",
                "container/bridge",
                "BRIDGE",
                "disabled",
                "YOUNGEST_FIRST",
                "2024-01-31T12:00:00.000Z",
                "busybox",
                "fake",
                "exec",
                "docker",
                "pinned",
                "spread",
                "auto",
                "10m",
                "unlimited"
            ][rng.random_range(0..26)]
        ),
        13 => json!("x".repeat(rng.random_range(1000..70_000))),
        14 if depth < 3 => {
            let n = rng.random_range(0..4);
            Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
        }
        15 if depth < 3 => {
            let n = rng.random_range(0..4);
            let mut m = Map::new();
            for _ in 0..n {
                let k = pick(
                    rng,
                    &[
                        "id",
                        "cmd",
                        "port",
                        "name",
                        "protocol",
                        "mode",
                        "key",
                        "value",
                        "image",
                        "type",
                        "hostPort",
                        "containerPort",
                        "path",
                        "",
                        "\u{0}",
                        "BERTH_DRIVER",
                    ],
                );
                m.insert(k.to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        16 => {
            // Deep, but within serde_json's recursion limit of 128.
            let mut v = json!(1);
            for _ in 0..rng.random_range(20..120) {
                v = json!([v]);
            }
            v
        }
        17 => Value::Array(vec![json!(0); rng.random_range(100..5000)]),
        18 => {
            let mut m = Map::new();
            for i in 0..rng.random_range(100..3000) {
                m.insert(format!("K{i}"), json!("v"));
            }
            Value::Object(m)
        }
        19 => json!([["hostname", "UNIQUE"]]),
        20 => json!([pick(rng, BAD_IDS), "LIKE", "(((((((((("]),
        21 => json!(["rack", "LIKE", "a{1000}{1000}{1000}"]),
        _ => json!(pick(rng, APP_IDS)),
    }
}

/// Replaces a random key (at any depth) with a random value, deletes it, or adds one.
fn mutate(v: &mut Value, rng: &mut SmallRng, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            if rng.random_bool(0.15) {
                let k = pick(
                    rng,
                    &[
                        "instances",
                        "cpus",
                        "mem",
                        "disk",
                        "gpus",
                        "ports",
                        "portDefinitions",
                        "container",
                        "healthChecks",
                        "constraints",
                        "dependencies",
                        "upgradeStrategy",
                        "unreachableStrategy",
                        "labels",
                        "env",
                        "args",
                        "fetch",
                        "uris",
                        "user",
                        "version",
                        "networks",
                        "secrets",
                        "requirePorts",
                        "backoffFactor",
                        "killSelection",
                        "residency",
                        "unknownField",
                    ],
                );
                map.insert(k.to_string(), random_value(rng, depth));
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = keys[rng.random_range(0..keys.len())].clone();
            let descend = depth < 3 && rng.random_bool(0.4);
            match map.get_mut(&k) {
                Some(child) if descend && (child.is_object() || child.is_array()) => {
                    mutate(child, rng, depth + 1)
                }
                _ if rng.random_bool(0.15) => {
                    map.remove(&k);
                }
                Some(child) => *child = random_value(rng, depth),
                None => {}
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            if depth < 3 && rng.random_bool(0.5) {
                mutate(&mut items[i], rng, depth + 1);
            } else {
                items[i] = random_value(rng, depth);
            }
        }
        other => *other = random_value(rng, depth),
    }
}

/// Edits of the JSON text that no `Value` can express.
fn mutate_text(text: &mut Vec<u8>, rng: &mut SmallRng) {
    const NUMBERS: &[&str] = &[
        "1e400",
        "-1e400",
        "1e-400",
        "18446744073709551616",
        "-9223372036854775809",
        "340282366920938463463374607431768211456",
        "NaN",
        "Infinity",
        "-Infinity",
        "0x10",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "-",
        "1_000",
    ];
    match rng.random_range(0..10) {
        0 | 1 => {
            // A number (or any value after a colon) becomes a bad number literal.
            let colons: Vec<usize> = text
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b':')
                .map(|(i, _)| i)
                .collect();
            if let Some(&i) = colons.get(rng.random_range(0..colons.len().max(1))) {
                let end = text[i + 1..]
                    .iter()
                    .position(|b| *b == b',' || *b == b'}' || *b == b']')
                    .map(|p| i + 1 + p)
                    .unwrap_or(text.len());
                let n = pick(rng, NUMBERS).as_bytes().to_vec();
                text.splice(i + 1..end, n);
            }
        }
        2 => {
            // A duplicate key right after the opening brace.
            if text.first() == Some(&b'{') {
                let dup = pick(
                    rng,
                    &[
                        "\"id\":\"/fuzz/dup\",",
                        "\"instances\":5,\"instances\":\"x\",",
                        "\"cmd\":null,",
                        "\"labels\":{\"a\":\"1\",\"a\":\"2\"},",
                    ],
                );
                text.splice(1..1, dup.bytes());
            }
        }
        3 => {
            let at = rng.random_range(0..=text.len());
            text.truncate(at);
        }
        4 => {
            if !text.is_empty() {
                let i = rng.random_range(0..text.len());
                text[i] = rng.random();
            }
        }
        5 => {
            let at = rng.random_range(0..=text.len());
            let junk = pick(
                rng,
                &[
                    "\u{0}", "\u{1}", "\n", "\u{7f}", "\u{feff}", "\u{fc}", ",", "}", "]", "\"",
                    "\\", "\\ud800", "/*", "//",
                ],
            );
            text.splice(at..at, junk.bytes());
        }
        6 => text.splice(0..0, "\u{feff}".bytes()).for_each(drop),
        7 => text.extend_from_slice(b" }}garbage"),
        8 => {
            let at = rng.random_range(0..=text.len());
            text.splice(at..at, [0xff, 0xfe, 0xc0, 0xaf]);
        }
        _ => {
            // An escape that is not UTF-16 anyone can decode.
            if let Some(i) = text.windows(2).position(|w| w == b":\"") {
                text.splice(i + 2..i + 2, "\\udc00\\ud800".bytes());
            }
        }
    }
}

/// A valid app definition of one of several shapes; its tasks run on the fake driver.
fn valid_app(rng: &mut SmallRng, id: &str) -> Value {
    let mut app = json!({
        "id": id,
        "cmd": "sleep 3600",
        "cpus": 0.01,
        "mem": 4,
        "instances": rng.random_range(0..3),
        "labels": {"BERTH_DRIVER": "fake"},
    });
    match rng.random_range(0..7) {
        0 => {
            app["portDefinitions"] = json!([{"port": 0, "name": "http"}, {"port": 0}]);
            app["healthChecks"] = json!([{"protocol": "TCP", "portIndex": 0}]);
        }
        1 => {
            app["constraints"] = json!([["hostname", "UNIQUE"], ["rack", "LIKE", "r[0-9]"]]);
            app["env"] = json!({"A": "b", "PORT_X": "1"});
        }
        2 => {
            app.as_object_mut().unwrap().remove("cmd");
            app["container"] = json!({
                "type": "DOCKER",
                "docker": {"image": "busybox", "parameters": [{"key": "label", "value": "a=b"}]},
                "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "web"}],
            });
            app["networks"] = json!([{"mode": "container/bridge"}]);
        }
        3 => {
            app["upgradeStrategy"] =
                json!({"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5});
            app["unreachableStrategy"] =
                json!({"inactiveAfterSeconds": 5, "expungeAfterSeconds": 10});
            app["killSelection"] = json!("OLDEST_FIRST");
        }
        4 => {
            app["dependencies"] = json!([pick(rng, APP_IDS)]);
            app["labels"]["BERTH_LOG_MAX_SIZE"] = json!("512k");
            app["labels"]["BERTH_PIDS_LIMIT"] = json!("100");
        }
        5 => {
            app["healthChecks"] = json!([{"protocol": "COMMAND", "command": {"value": "true"}}]);
            app["fetch"] = json!([{"uri": "file:///dev/null"}]);
        }
        _ => {}
    }
    app
}

/// A mutated app, or a valid one now and then, as JSON text.
fn app_body(rng: &mut SmallRng, id: &str) -> Vec<u8> {
    let mut app = valid_app(rng, id);
    let structural = rng.random_range(0..4);
    for _ in 0..structural {
        mutate(&mut app, rng, 0);
    }
    // Keep most tasks on the fake driver (the agent offers 1 CPU; exec tasks are processes).
    if rng.random_bool(0.9)
        && let Some(labels) = app.get_mut("labels").and_then(Value::as_object_mut)
        && !labels.get("BERTH_DRIVER").is_some_and(Value::is_string)
    {
        labels.insert("BERTH_DRIVER".into(), json!("fake"));
    }
    let mut text = app.to_string().into_bytes();
    if rng.random_bool(0.25) {
        mutate_text(&mut text, rng);
    }
    text
}

/// Bodies that are hostile on their own.
fn hostile_body(rng: &mut SmallRng) -> Vec<u8> {
    match rng.random_range(0..22) {
        0 => Vec::new(),
        1 => b"{".to_vec(),
        2 => b"null".to_vec(),
        3 => b"[]".to_vec(),
        4 => b"{}".to_vec(),
        5 => b"\"/fuzz/a\"".to_vec(),
        6 => b"{\"id\":\"/fuzz/n\",\"cmd\":\"x\",\"instances\":1e400}".to_vec(),
        7 => b"{\"id\":\"/fuzz/n\",\"cmd\":\"x\",\"instances\":18446744073709551616}".to_vec(),
        8 => b"{\"id\":\"/fuzz/n\",\"cmd\":\"x\",\"cpus\":NaN,\"mem\":Infinity}".to_vec(),
        9 => b"{\"id\":\"/fuzz/a\",\"id\":\"/fuzz/b\",\"cmd\":\"sleep 1\",\"cmd\":\"sleep 2\",\"labels\":{\"BERTH_DRIVER\":\"fake\"}}".to_vec(),
        10 => "[".repeat(10_000).into_bytes(),
        11 => "{\"a\":".repeat(10_000).into_bytes(),
        12 => {
            let mut s = "[".repeat(5000);
            s.push_str(&"]".repeat(5000));
            s.into_bytes()
        }
        13 => {
            // A huge array within the body limit.
            let n = (BODY_LIMIT - 16) / 2;
            let mut s = String::with_capacity(BODY_LIMIT);
            s.push('[');
            for i in 0..n {
                s.push_str(if i == 0 { "0" } else { ",0" });
            }
            s.push(']');
            s.into_bytes()
        }
        14 => {
            // An app whose args fill the body limit.
            let args: Vec<String> = (0..60_000).map(|i| format!("a{i}")).collect();
            json!({"id": "/fuzz/args", "args": args, "labels": {"BERTH_DRIVER": "fake"}})
                .to_string()
                .into_bytes()
        }
        15 => {
            // Over the limit.
            let mut s = b"[".to_vec();
            s.extend(std::iter::repeat_n(b'1', BODY_LIMIT + 10));
            s.push(b']');
            s
        }
        16 => {
            json!({"id": "/fuzz/big", "cmd": "x", "env": {"BIG": "x".repeat(BODY_LIMIT)}})
                .to_string()
                .into_bytes()
        }
        17 => vec![0xff, 0xfe, 0x00, 0x7b],
        18 => b"{\"id\":\"/fuzz/\xff\",\"cmd\":\"x\"}".to_vec(),
        19 => {
            let constraints: Vec<Value> = (0..20_000).map(|_| json!(["hostname", "UNIQUE"])).collect();
            json!({"id": "/fuzz/c", "cmd": "x", "constraints": constraints}).to_string().into_bytes()
        }
        20 => b"{\"id\":\"/fuzz/a\",\"cmd\":\"sleep 1\"}{\"id\":\"/fuzz/b\"}".to_vec(),
        _ => format!("{{\"id\":\"/fuzz/s\",\"cmd\":\"{}\"}}", "\\u0000".repeat(1000)).into_bytes(),
    }
}

/// A group body: apps and a subgroup, ids absolute or relative.
fn group_body(rng: &mut SmallRng, id: &str) -> Vec<u8> {
    let n = rng.random_range(0..3);
    let apps: Vec<Value> = (0..n)
        .map(|i| {
            let aid = if rng.random_bool(0.5) {
                format!("app{i}")
            } else {
                format!("{id}/abs{i}")
            };
            let mut a = valid_app(rng, &aid);
            if rng.random_bool(0.3) {
                mutate(&mut a, rng, 0);
            }
            a
        })
        .collect();
    let mut g = json!({"id": id, "apps": apps});
    if rng.random_bool(0.4) {
        g["groups"] = json!([{"id": "sub", "apps": [valid_app(rng, "inner")]}]);
    }
    if rng.random_bool(0.2) {
        mutate(&mut g, rng, 0);
    }
    let mut text = g.to_string().into_bytes();
    if rng.random_bool(0.1) {
        mutate_text(&mut text, rng);
    }
    text
}

const GROUP_IDS: &[&str] = &[
    "/fuzz/g1",
    "/fuzz/g2",
    "/fuzz/g3",
    "/fuzz/g3/deep",
    "/fuzz",
    "fuzz/g4",
];

fn node_info(rng: &mut SmallRng) -> Value {
    let mut info = json!({
        "id": pick(rng, &["fuzz-node-1", "fuzz-node-2", "fuzz-node-3"]),
        "hostname": "fuzz",
        "address": "127.0.0.1",
        "resources": {"cpus": 1, "mem": 100, "disk": 100},
        "portRanges": [{"begin": 40000, "end": 40010}],
        "attributes": {"rack": "r1"},
        "drivers": [],
        "agentUrl": "http://127.0.0.1:1",
    });
    match rng.random_range(0..8) {
        0 => info["resources"] = json!({"cpus": 65536, "mem": 1e300, "disk": 1e300}),
        1 => info["overcommit"] = json!({"cpu": 1e308, "mem": 1e308}),
        2 => info["reserved"] = json!({"cpus": -1, "mem": 1e308, "disk": "x"}),
        3 => {
            let ranges: Vec<Value> = (0..2000)
                .map(|i| json!({"begin": i * 30, "end": 65535}))
                .collect();
            info["portRanges"] = Value::Array(ranges);
        }
        4 => {
            let attrs: Map<String, Value> = (0..2000)
                .map(|i| (format!("a{i}"), json!("x".repeat(100))))
                .collect();
            info["attributes"] = Value::Object(attrs);
        }
        _ => {}
    }
    for _ in 0..rng.random_range(0..3) {
        mutate(&mut info, rng, 0);
    }
    // Never a node tasks can be placed on, nor one that points anywhere but loopback.
    if let Some(m) = info.as_object_mut() {
        m.insert("drivers".into(), json!([]));
        m.insert("agentUrl".into(), json!("http://127.0.0.1:1"));
        if m.get("id").and_then(Value::as_str) == Some("n1") {
            m.insert("id".into(), json!("fuzz-node-1"));
        }
    }
    info
}

// ---------------------------------------------------------------------------------------------
// The model: which apps must exist
// ---------------------------------------------------------------------------------------------

/// `/a//b/` -> `/a/b` (Marathon's normalisation, written again here on purpose).
fn norm(id: &str) -> String {
    let segs: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", segs.join("/"))
}

/// Marathon's id rule, written again here: lowercase letters, digits, `-` inside, `.` between.
fn valid_id(id: &str) -> bool {
    let segs: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
    !segs.is_empty()
        && segs.iter().all(|seg| {
            seg.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
            })
        })
}

fn within(id: &str, group: &str) -> bool {
    group == "/" || id == group || id.starts_with(&format!("{group}/"))
}

/// Percent-decoding as a URL path parameter gets it; `None` when the result is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (
                (b[i + 1] as char).to_digit(16),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// What a request did to the set of apps, as far as the model can tell.
#[derive(Default)]
struct Model {
    apps: BTreeSet<String>,
    /// Per live deployment (as far as we know): each app it touched, and whether that app
    /// existed before it (a rollback restores exactly that).
    deployments: BTreeMap<String, BTreeMap<String, bool>>,
    /// Every deployment id seen (for cancel requests).
    deployment_ids: Vec<String>,
    task_ids: BTreeSet<String>,
    /// Requests whose effect the model could not interpret although they succeeded.
    surprises: Vec<String>,
}

impl Model {
    fn deployment_of(resp: &Resp) -> Option<String> {
        resp.header("marathon-deployment-id")
            .map(str::to_string)
            .or_else(|| resp.json()["deploymentId"].as_str().map(str::to_string))
    }

    fn record_deployment(&mut self, resp: &Resp, touched: BTreeMap<String, bool>) {
        if let Some(d) = Model::deployment_of(resp) {
            self.deployment_ids.push(d.clone());
            self.deployments.insert(d, touched);
        }
    }

    /// Upserts: each id (already absolute) must be valid; all are stored afterwards.
    fn upsert(&mut self, what: &str, resp: &Resp, ids: Vec<String>) {
        let mut touched = BTreeMap::new();
        for id in ids {
            if !valid_id(&id) {
                self.surprises.push(format!(
                    "{what}: accepted an app with the invalid id {id:?}"
                ));
            }
            touched.insert(id.clone(), self.apps.contains(&id));
            self.apps.insert(id);
        }
        self.record_deployment(resp, touched);
    }

    fn remove_within(&mut self, resp: &Resp, group: &str) {
        let gone: Vec<String> = self
            .apps
            .iter()
            .filter(|a| within(a, group))
            .cloned()
            .collect();
        let mut touched = BTreeMap::new();
        for a in gone {
            self.apps.remove(&a);
            touched.insert(a, true);
        }
        self.record_deployment(resp, touched);
    }

    /// The apps of a group body, resolved as the server resolves them.
    fn group_apps(group: &str, body: &Value, out: &mut Vec<String>) {
        if let Some(apps) = body.get("apps").and_then(Value::as_array) {
            for a in apps {
                if let Some(id) = a.get("id").and_then(Value::as_str) {
                    out.push(if id.starts_with('/') {
                        norm(id)
                    } else {
                        norm(&format!("{group}/{id}"))
                    });
                }
            }
        }
        if let Some(groups) = body.get("groups").and_then(Value::as_array) {
            for g in groups {
                if let Some(id) = g.get("id").and_then(Value::as_str) {
                    let abs = if id.starts_with('/') {
                        norm(id)
                    } else {
                        norm(&format!("{group}/{id}"))
                    };
                    Model::group_apps(&abs, g, out);
                }
            }
        }
    }

    /// Applies a request that got a 2xx.
    fn apply(&mut self, req: &Req, resp: &Resp) {
        if req.dest != Dest::Server {
            return;
        }
        let what = req.describe();
        let path = req.target.split('?').next().unwrap_or("");
        let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let force = query.split('&').any(|p| {
            matches!(
                p,
                "force" | "force=" | "force=true" | "force=1" | "force=True"
            )
        });
        let body: Option<Value> = req
            .body
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok());
        let needs_body = matches!(req.method.as_str(), "POST" | "PUT" | "PATCH");
        let rest =
            |prefix: &str| -> Option<String> { path.strip_prefix(prefix).map(|r| r.to_string()) };
        let m = req.method.as_str();
        if needs_body
            && body.is_none()
            && (path.starts_with("/v2/apps") || path.starts_with("/v2/groups"))
            && !(m == "POST" && path.ends_with("/restart"))
        {
            self.surprises.push(format!(
                "{what}: {} for a body that is not JSON",
                resp.status
            ));
            return;
        }
        let body = body.unwrap_or(Value::Null);
        if path == "/v2/apps" && m == "POST" {
            match body.get("id").and_then(Value::as_str) {
                Some(id) => self.upsert(&what, resp, vec![norm(id)]),
                None => self
                    .surprises
                    .push(format!("{what}: created an app without an id")),
            }
        } else if path == "/v2/apps" && m == "PUT" {
            let ids = body
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get("id").and_then(Value::as_str).map(norm))
                        .collect()
                })
                .unwrap_or_default();
            self.upsert(&what, resp, ids);
        } else if let Some(r) = rest("/v2/apps/") {
            let Some(r) = decode(&r) else {
                self.surprises
                    .push(format!("{what}: accepted a path that is not UTF-8"));
                return;
            };
            let segs: Vec<&str> = r.split('/').filter(|s| !s.is_empty()).collect();
            let n = segs.len();
            let sub = (n >= 2 && ["restart", "tasks", "versions"].contains(&segs[n - 1]))
                || (n >= 3 && ["tasks", "versions"].contains(&segs[n - 2]));
            let id = norm(&r);
            match m {
                "PUT" | "PATCH" if !sub => {
                    // `{"version": v}` alone is a rollback to a stored version: the app exists.
                    self.upsert(&what, resp, vec![id]);
                }
                "DELETE" if !sub => {
                    if !self.apps.contains(&id) {
                        self.surprises
                            .push(format!("{what}: deleted {id}, which should not exist"));
                    }
                    self.apps.remove(&id);
                    self.record_deployment(resp, BTreeMap::from([(id, true)]));
                }
                "POST" if segs.last() == Some(&"restart") => {
                    let app = norm(&segs[..n - 1].join("/"));
                    self.record_deployment(resp, BTreeMap::from([(app, true)]));
                }
                _ => {}
            }
        } else if path == "/v2/groups" || path.starts_with("/v2/groups/") {
            let r = rest("/v2/groups/").unwrap_or_default();
            let Some(r) = decode(&r) else {
                self.surprises
                    .push(format!("{what}: accepted a path that is not UTF-8"));
                return;
            };
            let gid = norm(r.trim_end_matches("/versions"));
            match m {
                "POST" => {
                    let Some(id) = body.get("id").and_then(Value::as_str) else {
                        self.surprises
                            .push(format!("{what}: created a group without an id"));
                        return;
                    };
                    let id = if id.starts_with('/') {
                        norm(id)
                    } else {
                        norm(&format!("{gid}/{id}"))
                    };
                    let mut ids = Vec::new();
                    Model::group_apps(&id, &body, &mut ids);
                    self.upsert(&what, resp, ids);
                }
                "PUT" => {
                    if body.get("scaleBy").is_some() {
                        let touched = self
                            .apps
                            .iter()
                            .filter(|a| within(a, &gid))
                            .map(|a| (a.clone(), true))
                            .collect();
                        self.record_deployment(resp, touched);
                    } else if let Some(apps) = body.get("apps").and_then(Value::as_array) {
                        let ids = apps
                            .iter()
                            .filter_map(|a| a.get("id").and_then(Value::as_str))
                            .map(|id| {
                                if id.starts_with('/') {
                                    norm(id)
                                } else {
                                    norm(&format!("{gid}/{id}"))
                                }
                            })
                            .collect();
                        self.upsert(&what, resp, ids);
                    } else {
                        self.surprises
                            .push(format!("{what}: a group update without scaleBy or apps"));
                    }
                }
                "DELETE" => self.remove_within(resp, &gid),
                _ => {}
            }
        } else if let Some(id) = rest("/v2/deployments/") {
            if m != "DELETE" {
                return;
            }
            let Some(id) = decode(&id) else { return };
            let Some(touched) = self.deployments.remove(&id) else {
                // Not one of ours (or one whose apps only existed before): no app appears or
                // disappears.
                return;
            };
            if force {
                return;
            }
            let mut again = BTreeMap::new();
            for (app, existed) in touched {
                again.insert(app.clone(), self.apps.contains(&app));
                if existed {
                    self.apps.insert(app);
                } else {
                    self.apps.remove(&app);
                }
            }
            self.record_deployment(resp, again);
        }
    }

    /// Any deployment that was replaced (`force`) or finished is no longer cancellable; the
    /// server says which are live.
    fn prune_deployments(&mut self, live: &BTreeSet<String>) {
        self.deployments.retain(|d, _| live.contains(d));
    }

    /// Task ids found in a reply (for kill and log requests).
    fn harvest(&mut self, resp: &Resp) {
        let v = resp.json();
        let tasks = v["tasks"]
            .as_array()
            .cloned()
            .or_else(|| v["app"]["tasks"].as_array().cloned())
            .unwrap_or_default();
        for t in tasks {
            if let Some(id) = t["id"].as_str()
                && self.task_ids.len() < 200
            {
                self.task_ids.insert(id.to_string());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

struct Gen {
    rng: SmallRng,
    /// Only requests that cannot change which apps exist.
    read_only: bool,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "FOO", "get", "M-SEARCH",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=utf-16",
    "application/xml",
    "*/*",
    "",
];

impl Gen {
    fn some_task(&mut self, model: &Model) -> String {
        if !model.task_ids.is_empty() && self.rng.random_bool(0.7) {
            let v: Vec<&String> = model.task_ids.iter().collect();
            return v[self.rng.random_range(0..v.len())].clone();
        }
        match self.rng.random_range(0..4) {
            0 => "fuzz_a.instance-00000000-0000-0000-0000-000000000000._app.1".into(),
            1 => pick(&mut self.rng, BAD_SEGMENTS).to_string(),
            2 => "nope".into(),
            _ => "a".repeat(self.rng.random_range(200..4000)),
        }
    }

    fn some_deployment(&mut self, model: &Model) -> String {
        if !model.deployment_ids.is_empty() && self.rng.random_bool(0.7) {
            let n = model.deployment_ids.len();
            let from = n.saturating_sub(20);
            return model.deployment_ids[self.rng.random_range(from..n)].clone();
        }
        match self.rng.random_range(0..3) {
            0 => "00000000-0000-0000-0000-000000000000".into(),
            1 => pick(&mut self.rng, BAD_SEGMENTS).to_string(),
            _ => "nope".into(),
        }
    }

    fn next(&mut self, model: &Model) -> Req {
        let mut req = self.generate(model);
        req.keep_alive = req.kind == Kind::Normal && self.rng.random_bool(0.15);
        req
    }

    fn generate(&mut self, model: &Model) -> Req {
        let r = &mut self.rng;
        let class = if self.read_only {
            // Reads, nodes, events, logs, the agent protocol and endpoint, not HTTP.
            let safe: Vec<u32> = (33..=47).chain(64..=81).chain(98..=99).collect();
            safe[r.random_range(0..safe.len())]
        } else {
            r.random_range(0..100)
        };
        let s = Dest::Server;
        match class {
            // App writes with mutated definitions.
            0..=13 => {
                let id = pick(r, APP_IDS);
                let body = app_body(r, id);
                Req::new(
                    s,
                    "POST /v2/apps",
                    "POST",
                    format!("/v2/apps{}", force_query(r)),
                )
                .json(body)
            }
            14..=22 => {
                let id = url_id(r);
                let body_id = if r.random_bool(0.7) {
                    format!("/{id}")
                } else {
                    pick(r, APP_IDS).to_string()
                };
                let mut body = app_body(r, &body_id);
                if r.random_bool(0.3) {
                    // Partial updates: a few fields only.
                    body = json!({"instances": r.random_range(0..3), "cmd": "sleep 10"})
                        .to_string()
                        .into_bytes();
                }
                let m = if r.random_bool(0.75) { "PUT" } else { "PATCH" };
                let q = force_query(r);
                Req::new(s, "PUT/PATCH /v2/apps/{id}", m, format!("/v2/apps/{id}{q}")).json(body)
            }
            23..=26 => {
                let n = r.random_range(0..5);
                let items: Vec<String> = (0..n)
                    .map(|_| {
                        let id = pick(r, APP_IDS);
                        String::from_utf8_lossy(&app_body(r, id)).to_string()
                    })
                    .collect();
                let body = format!("[{}]", items.join(","));
                Req::new(
                    s,
                    "PUT /v2/apps",
                    "PUT",
                    format!("/v2/apps{}", force_query(r)),
                )
                .json(body.into_bytes())
            }
            27..=32 => {
                let id = url_id(r);
                Req::new(
                    s,
                    "DELETE /v2/apps/{id}",
                    "DELETE",
                    format!("/v2/apps/{id}{}", force_query(r)),
                )
            }
            // Reads.
            33..=44 => {
                let id = url_id(r);
                let t = match r.random_range(0..22) {
                    0 => "/v2/apps".to_string(),
                    1 => format!("/v2/apps/{id}"),
                    2 => format!("/v2/apps/{id}/tasks"),
                    3 => format!("/v2/apps/{id}/versions"),
                    4 => format!("/v2/apps/{id}/versions/{}", pick(r, BAD_SEGMENTS)),
                    5 => "/v2/tasks".into(),
                    6 => "/v2/groups".into(),
                    7 => format!("/v2/groups/{id}"),
                    8 => format!("/v2/groups/{id}/versions"),
                    9 => "/v2/deployments".into(),
                    10 => "/v2/queue".into(),
                    11 => "/v2/info".into(),
                    12 => "/v2/leader".into(),
                    13 => "/ping".into(),
                    14 => "/metrics".into(),
                    15 => "/api/v1/deployments".into(),
                    16 => "/api/v1/whoami".into(),
                    17 => "/api/v1/tokens".into(),
                    18 => "/api/v1/audit".into(),
                    19 => "/api/v1/secrets".into(),
                    20 => format!("/api/v1/secrets/{}", pick(r, SECRET_NAMES)),
                    _ => "/openapi.json".into(),
                };
                let mut req = Req::new(s, "GET reads", "GET", format!("{t}{}", query(r)));
                if r.random_bool(0.2) {
                    req.headers[0].1 = pick(
                        r,
                        &[
                            "text/plain",
                            "application/openmetrics-text",
                            "*/*",
                            "",
                            "text/event-stream",
                            "\u{1}",
                        ],
                    )
                    .replace('\u{1}', "x");
                }
                req
            }
            45..=47 => {
                let id = match r.random_range(0..3) {
                    0 => "n1".to_string(),
                    1 => "fuzz-node-1".to_string(),
                    _ => pick(r, BAD_SEGMENTS).to_string(),
                };
                let (m, t) = match r.random_range(0..6) {
                    0 => ("GET", "/api/v1/nodes".to_string()),
                    1 => ("GET", format!("/api/v1/nodes/{id}")),
                    2 => ("POST", format!("/api/v1/nodes/{id}/cordon")),
                    3 => ("POST", format!("/api/v1/nodes/{id}/uncordon")),
                    4 => ("POST", format!("/api/v1/nodes/{id}/drain")),
                    _ => (
                        "GET",
                        format!("/api/v1/deployments/{}", pick(r, BAD_SEGMENTS)),
                    ),
                };
                // Drain and cordon of the real node are undone right away by an uncordon
                // later on; the node stays usable most of the time.
                let m = if t.ends_with("/drain") && id == "n1" {
                    "GET"
                } else {
                    m
                };
                Req::new(s, "nodes", m, format!("{t}{}", query(r)))
            }
            // Groups.
            48..=54 => {
                let gid = pick(r, GROUP_IDS);
                let url_gid = gid.trim_start_matches('/');
                match r.random_range(0..6) {
                    0 | 1 => {
                        Req::new(s, "groups", "POST", "/v2/groups".into()).json(group_body(r, gid))
                    }
                    2 => {
                        let child = pick(r, &["child", "/fuzz/g5"]);
                        Req::new(s, "groups", "POST", format!("/v2/groups/{url_gid}"))
                            .json(group_body(r, child))
                    }
                    3 => {
                        let body = if r.random_bool(0.5) {
                            json!({"scaleBy": random_value(r, 2)})
                                .to_string()
                                .into_bytes()
                        } else {
                            group_body(r, gid)
                        };
                        Req::new(
                            s,
                            "groups",
                            "PUT",
                            format!("/v2/groups/{url_gid}{}", force_query(r)),
                        )
                        .json(body)
                    }
                    _ => {
                        let target = if r.random_bool(0.8) {
                            url_gid.to_string()
                        } else {
                            url_id(r)
                        };
                        Req::new(
                            s,
                            "groups",
                            "DELETE",
                            format!("/v2/groups/{target}{}", force_query(r)),
                        )
                    }
                }
            }
            // Tasks, restarts, deployments, the queue.
            55..=60 => {
                let id = url_id(r);
                let task = self.some_task(model);
                let r = &mut self.rng;
                match r.random_range(0..6) {
                    0 => Req::new(
                        s,
                        "tasks",
                        "DELETE",
                        format!("/v2/apps/{id}/tasks{}", query(r)),
                    ),
                    1 => Req::new(
                        s,
                        "tasks",
                        "DELETE",
                        format!("/v2/apps/{id}/tasks/{task}{}", query(r)),
                    ),
                    2 => {
                        let body = if r.random_bool(0.7) {
                            json!({"ids": [task, random_value(r, 2)]})
                                .to_string()
                                .into_bytes()
                        } else {
                            hostile_body(r)
                        };
                        Req::new(s, "tasks", "POST", format!("/v2/tasks/delete{}", query(r)))
                            .json(body)
                    }
                    3 => Req::new(
                        s,
                        "restart",
                        "POST",
                        format!("/v2/apps/{id}/restart{}", force_query(r)),
                    ),
                    4 => Req::new(s, "queue", "DELETE", format!("/v2/queue/{id}/delay")),
                    _ => Req::new(s, "tasks", "GET", format!("/v2/tasks{}", query(r))),
                }
            }
            61..=63 => {
                let d = self.some_deployment(model);
                let q = force_query(&mut self.rng);
                Req::new(
                    s,
                    "deployments",
                    "DELETE",
                    format!("/v2/deployments/{d}{q}"),
                )
            }
            // Events: the head of the stream.
            64..=65 => {
                let mut req = Req::new(s, "events", "GET", format!("/v2/events{}", query(r)));
                req.kind = Kind::Stream;
                req.headers[0].1 = "text/event-stream".into();
                req
            }
            // Server-side task logs.
            66..=68 => {
                let task = self.some_task(model);
                let q = query(&mut self.rng);
                let mut req = Req::new(s, "logs", "GET", format!("/api/v1/tasks/{task}/logs{q}"));
                req.kind = Kind::Stream;
                req
            }
            // The agent protocol.
            69..=73 => {
                let node = match r.random_range(0..5) {
                    0 => "fuzz-node-2".to_string(),
                    1 => pick(r, BAD_SEGMENTS).to_string(),
                    2 => "n1".to_string(),
                    _ => "fuzz-node-1".to_string(),
                };
                match r.random_range(0..5) {
                    0 | 1 => {
                        let body = if r.random_bool(0.8) {
                            node_info(r).to_string().into_bytes()
                        } else {
                            hostile_body(r)
                        };
                        Req::new(s, "agent protocol", "POST", "/api/v1/agent/register".into())
                            .json(body)
                    }
                    2 => {
                        let wait = pick(r, &["0", "", "x", "-1", "99999999999999999999", "1"]);
                        let after = pick(r, &["0", "1", "18446744073709551615", "-1", "x"]);
                        Req::new(
                            s,
                            "agent protocol",
                            "GET",
                            format!("/api/v1/agent/{node}/assignments?after={after}&wait={wait}"),
                        )
                    }
                    _ => {
                        // Reports only for the fuzz nodes: the real agent's tasks stay its own.
                        let node = if node == "n1" {
                            "fuzz-node-3".to_string()
                        } else {
                            node
                        };
                        let mut report = json!({
                            "statuses": [{"taskId": pick(r, &["fuzz_a.x", "nope", ""]), "state": "TASK_RUNNING"}],
                            "full": r.random_bool(0.5),
                            "conditions": [{"type": "DiskPressure", "status": false}],
                            "info": node_info(r),
                        });
                        mutate(&mut report, r, 1);
                        if let Some(info) = report.get_mut("info").and_then(Value::as_object_mut) {
                            info.insert("drivers".into(), json!([]));
                            info.insert("agentUrl".into(), json!("http://127.0.0.1:1"));
                        }
                        let body = if r.random_bool(0.85) {
                            report.to_string().into_bytes()
                        } else {
                            hostile_body(r)
                        };
                        Req::new(
                            s,
                            "agent protocol",
                            "POST",
                            format!("/api/v1/agent/{node}/status"),
                        )
                        .json(body)
                    }
                }
            }
            // The agent's own endpoint.
            74..=81 => {
                let task = self.some_task(model);
                let r = &mut self.rng;
                let mut req = match r.random_range(0..6) {
                    0 => Req::new(Dest::Agent, "agent http", "GET", "/ping".into()),
                    1 => Req::new(
                        Dest::Agent,
                        "agent http",
                        "GET",
                        format!("/metrics{}", query(r)),
                    ),
                    2 => Req::new(
                        Dest::Agent,
                        "agent http",
                        pick(r, METHODS),
                        format!(
                            "/{}{}",
                            pick(r, &["ping", "metrics", "v1/tasks", "v1", "", "x"]),
                            query(r)
                        ),
                    ),
                    _ => {
                        let mut q = query(r);
                        if r.random_bool(0.5) {
                            let stream =
                                pick(r, &["stdout", "stderr", "both", "%00", "", "STDOUT"]);
                            let tail =
                                pick(r, &["3", "0", "-1", "all", "18446744073709551616", "x", ""]);
                            q = format!("?stream={stream}&tail={tail}&stream=stdout");
                        }
                        let t = if r.random_bool(0.7) {
                            task
                        } else {
                            pick(r, BAD_SEGMENTS).to_string()
                        };
                        let mut req = Req::new(
                            Dest::Agent,
                            "agent http",
                            "GET",
                            format!("/v1/tasks/{t}/logs{q}"),
                        );
                        req.kind = Kind::Stream;
                        req
                    }
                };
                if r.random_bool(0.2) {
                    req = req.json(hostile_body(r));
                }
                req
            }
            // Wrong methods, content types and bodies anywhere.
            82..=93 => {
                let id = url_id(r);
                let task = pick(r, BAD_SEGMENTS);
                let t = match r.random_range(0..18) {
                    0 => "/v2/apps".to_string(),
                    1 => format!("/v2/apps/{id}"),
                    2 => format!("/v2/apps/{id}/restart"),
                    3 => "/v2/groups".into(),
                    4 => format!("/v2/groups/{id}"),
                    5 => "/v2/tasks/delete".into(),
                    6 => "/v2/deployments".into(),
                    7 => "/v2/info".into(),
                    8 => "/v2/leader".into(),
                    9 => "/api/v1/agent/register".into(),
                    10 => format!("/api/v1/tasks/{task}/logs"),
                    11 => format!("/{}", pick(r, BAD_SEGMENTS)),
                    12 => "/v2/queue".into(),
                    13 => "/api/v1/tokens".into(),
                    14 => format!("/api/v1/tokens/{}", pick(r, BAD_SEGMENTS)),
                    15 => format!("/api/v1/secrets/{}", pick(r, SECRET_NAMES)),
                    16 => "/api/v1/audit".into(),
                    _ => format!("/v2/{}/../apps", pick(r, BAD_SEGMENTS)),
                };
                let method = pick(r, METHODS);
                let mut req =
                    Req::new(s, "wrong methods/types", method, format!("{t}{}", query(r)));
                if r.random_bool(0.7) {
                    let body = if r.random_bool(0.5) {
                        hostile_body(r)
                    } else {
                        let id = pick(r, APP_IDS);
                        app_body(r, id)
                    };
                    let ct = pick(r, CONTENT_TYPES);
                    if !ct.is_empty() {
                        req.headers.push(("Content-Type".into(), ct.into()));
                    }
                    req.chunked = r.random_bool(0.2);
                    req.body = Some(body);
                }
                if t.ends_with("/logs") {
                    req.kind = Kind::Stream;
                }
                req
            }
            // Hostile bodies on the write routes.
            94..=97 => {
                let (m, t) = match r.random_range(0..5) {
                    0 => ("POST", "/v2/apps".to_string()),
                    1 => ("PUT", "/v2/apps".to_string()),
                    2 => ("PUT", format!("/v2/apps/{}", url_id(r))),
                    3 => ("POST", "/v2/groups".to_string()),
                    _ => ("PATCH", format!("/v2/apps/{}", url_id(r))),
                };
                let mut req = Req::new(s, "hostile bodies", m, format!("{t}{}", force_query(r)))
                    .json(hostile_body(r));
                req.chunked = r.random_bool(0.2);
                req
            }
            // Bytes that are not HTTP.
            _ => {
                let dest = if r.random_bool(0.7) { s } else { Dest::Agent };
                let raw: Vec<u8> = match r.random_range(0..10) {
                    0 => b"GET /v2/apps/\x00 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                    1 => "GET /v2/apps/\u{fc} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
                    2 => b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\nConnection: close\r\n\r\n".to_vec(),
                    3 => b"POST /v2/apps HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n".to_vec(),
                    4 => b"POST /v2/apps HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!".to_vec(),
                    5 => b"POST /v2/apps HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n".to_vec(),
                    6 => b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
                    7 => format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(70_000)).into_bytes(),
                    8 => format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "b".repeat(100_000)).into_bytes(),
                    _ => b"GET /ping HTTP/9.9\r\n\r\n".to_vec(),
                };
                let mut req = Req::new(dest, "not HTTP", "RAW", String::new());
                req.kind = Kind::Garbage;
                req.raw = Some(raw);
                req
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a reply must look like; `Err` says how it did not.
fn check(req: &Req, resp: &Resp) -> Result<(), String> {
    if resp.status >= 500 {
        return Err(format!("{} {}", resp.status, preview(&resp.body)));
    }
    let json_ct = resp
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json"));
    let whole = req.method != "HEAD" && !(req.kind == Kind::Stream && resp.status == 200);
    if (200..300).contains(&resp.status)
        && json_ct
        && whole
        && resp.status != 204
        && serde_json::from_slice::<Value>(&resp.body).is_err()
    {
        return Err(format!(
            "{} says JSON but its body is not: {:?}",
            resp.status,
            preview(&resp.body)
        ));
    }
    if (400..500).contains(&resp.status) && req.method != "HEAD" {
        let ct = resp.header("content-type").unwrap_or("");
        let garbage_400 = req.kind == Kind::Garbage && resp.body.is_empty();
        if !garbage_400 {
            if !ct.starts_with("application/json") {
                return Err(format!(
                    "{} with content-type {ct:?}: {:?}",
                    resp.status,
                    preview(&resp.body)
                ));
            }
            let v: Value = serde_json::from_slice(&resp.body).map_err(|e| {
                format!(
                    "{} with a body that is not JSON ({e}): {:?}",
                    resp.status,
                    preview(&resp.body)
                )
            })?;
            if !v["message"].is_string() {
                return Err(format!("{} without a message: {v}", resp.status));
            }
        }
    }
    Ok(())
}

async fn get_json(port: u16, path: &str) -> Value {
    let req = Req::new(Dest::Server, "final", "GET", path.into());
    let resp = send(port, &req)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status, 200, "GET {path}: {}", preview(&resp.body));
    resp.json()
}

/// Counts and failures of one lane.
#[derive(Default)]
struct Tally {
    sent: usize,
    histogram: BTreeMap<u16, usize>,
    by_class: BTreeMap<&'static str, BTreeMap<u16, usize>>,
    failures: Vec<String>,
    /// Requests in a row without a complete reply: at 3 the lane gives up (the process hangs
    /// or is gone, and every further request would wait out its timeout).
    no_reply_in_a_row: usize,
}

impl Tally {
    fn count(&mut self, class: &'static str, status: u16) {
        *self.histogram.entry(status).or_default() += 1;
        *self
            .by_class
            .entry(class)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        for (class, h) in other.by_class {
            for (status, n) in h {
                *self.histogram.entry(status).or_default() += n;
                *self
                    .by_class
                    .entry(class)
                    .or_default()
                    .entry(status)
                    .or_default() += n;
            }
        }
        self.failures.extend(
            other
                .failures
                .into_iter()
                .map(|f| format!("(read-only lane) {f}")),
        );
    }
}

/// Sends one generated request and checks the reply; `track`: the lane whose 2xx replies the
/// model applies.
async fn step(
    g: &mut Gen,
    model: &mut Model,
    t: &mut Tally,
    port: u16,
    agent_port: u16,
    track: bool,
) {
    let i = t.sent;
    if i.is_multiple_of(200) {
        // What the generator needs from the server now and then: live deployments (to know
        // what a cancel may roll back) and task ids (for kills and logs).
        if track {
            let live: BTreeSet<String> = get_json(port, "/v2/deployments")
                .await
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect();
            model.prune_deployments(&live);
        }
        let tasks = Req::new(Dest::Server, "setup", "GET", "/v2/tasks".into());
        if let Ok(r) = send(port, &tasks).await {
            model.task_ids.clear();
            model.harvest(&r);
        }
    }
    let req = g.next(model);
    let dest_port = match req.dest {
        Dest::Server => port,
        Dest::Agent => agent_port,
    };
    t.sent += 1;
    match send(dest_port, &req).await {
        Ok(resp) => {
            t.no_reply_in_a_row = 0;
            t.count(req.class, resp.status);
            if let Err(e) = check(&req, &resp) {
                t.failures.push(format!("#{i} {}: {e}", req.describe()));
            }
            if (200..300).contains(&resp.status) {
                if track {
                    model.apply(&req, &resp);
                }
                model.harvest(&resp);
            }
        }
        Err(e) => {
            t.count(req.class, 0);
            t.no_reply_in_a_row += 1;
            if let Some(secs) = std::env::var("BERTH_FUZZ_PAUSE_ON_NO_REPLY")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                eprintln!(
                    "fuzz_http: #{i} {}: {e}; pausing {secs} s (attach a debugger now)",
                    req.describe()
                );
                std::thread::sleep(Duration::from_secs(secs));
            }
            t.failures.push(format!("#{i} {}: {e}", req.describe()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fuzz_never_5xx_never_hangs_and_keeps_exactly_the_acknowledged_apps() {
    let seed: u64 = env_or("BERTH_FUZZ_SEED", DEFAULT_SEED);
    let total: usize = env_or("BERTH_FUZZ_REQUESTS", DEFAULT_REQUESTS);
    let started = Instant::now();
    let mut dev = Dev::start().await;
    let port = dev.port;

    let agent_port = dev.wait_ready().await;
    let rss = RssWatch::start(dev.pid());
    eprintln!("fuzz_http: berth dev is pid {}, seed {seed:#x}", dev.pid());

    let mut model = Model::default();
    // One app with an exec task: real logs for the agent's and the server's log routes.
    let anchor = json!({"id": "/fuzz/anchor", "cmd": "echo fuzz-anchor; sleep 3600", "cpus": 0.01, "mem": 8,
                        "labels": {"BERTH_DRIVER": "exec"}});
    let req = Req::new(Dest::Server, "setup", "POST", "/v2/apps".into())
        .json(anchor.to_string().into_bytes());
    let resp = send(port, &req).await.expect("creating the anchor app");
    assert_eq!(resp.status, 201, "{}", preview(&resp.body));
    model.apply(&req, &resp);

    // A second lane, concurrent with the first, sends only requests that cannot change which
    // apps exist (reads, streams, logs, the agent's endpoint, the agent protocol for the fuzz
    // nodes, bytes that are not HTTP), so the model of the first stays exact.
    let stop = Arc::new(AtomicBool::new(false));
    let side = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut g = Gen {
                rng: SmallRng::seed_from_u64(seed ^ 0x5eed),
                read_only: true,
            };
            let mut model = Model::default();
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) && t.failures.len() < 20 && t.no_reply_in_a_row < 3
            {
                step(&mut g, &mut model, &mut t, port, agent_port, false).await;
            }
            t
        })
    };
    let mut requests = Gen {
        rng: SmallRng::seed_from_u64(seed),
        read_only: false,
    };
    let mut tally = Tally::default();
    for i in 0..total {
        step(
            &mut requests,
            &mut model,
            &mut tally,
            port,
            agent_port,
            true,
        )
        .await;
        if !dev.alive() {
            tally.failures.push(format!("#{i}: berth dev exited"));
            break;
        }
        if tally.no_reply_in_a_row >= 3 {
            tally
                .failures
                .push("... stopped: 3 requests in a row got no reply".into());
            break;
        }
        if tally.failures.len() >= 40 {
            tally.failures.push("... stopped after 40 failures".into());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let side = side.await.expect("the read-only lane");
    let main_sent = tally.sent;
    tally.merge(side);
    let Tally {
        sent,
        histogram,
        by_class,
        failures,
        ..
    } = tally;

    // The stored apps are exactly the acknowledged ones.
    let mut stored = BTreeSet::new();
    if dev.alive() {
        let apps = get_json(port, "/v2/apps").await;
        stored = apps["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
    }
    let max_rss_kb = rss.max_kb();
    drop(rss);
    // Acknowledged means persisted: after a kill -9 the same apps come back.
    let mut after_restart = None;
    if dev.alive() {
        dev.crash_and_restart();
        dev.wait_ready().await;
        let apps = get_json(dev.port, "/v2/apps").await;
        after_restart = Some(
            apps["apps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["id"].as_str().map(str::to_string))
                .collect::<BTreeSet<String>>(),
        );
    }
    if let Some(after) = &after_restart {
        eprintln!(
            "fuzz_http: after kill -9 and a restart: {} apps stored",
            after.len()
        );
    }
    let log = dev.log();
    let panics: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panicked"))
        .take(5)
        .collect();

    eprintln!(
        "fuzz_http: seed {seed:#x}, {sent} requests ({main_sent} on the lane that changes apps, \
         {} concurrently on the read-only one) in {:.1}s, max RSS {} MiB, {} apps stored",
        sent - main_sent,
        started.elapsed().as_secs_f64(),
        max_rss_kb / 1024,
        stored.len()
    );
    eprintln!(
        "fuzz_http: status histogram (0 = no reply): {}",
        histogram
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (class, h) in &by_class {
        eprintln!(
            "fuzz_http:   {class:<22} {}",
            h.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let missing: Vec<&String> = model.apps.difference(&stored).collect();
    let extra: Vec<&String> = stored.difference(&model.apps).collect();
    let mut problems = failures;
    problems.extend(model.surprises.iter().cloned());
    if !missing.is_empty() || !extra.is_empty() {
        problems.push(format!(
            "stored apps differ from the acknowledged ones: missing {missing:?}, not acknowledged {extra:?}"
        ));
    }
    if let Some(after) = &after_restart
        && *after != model.apps
    {
        let missing: Vec<&String> = model.apps.difference(after).collect();
        let extra: Vec<&String> = after.difference(&model.apps).collect();
        problems.push(format!(
            "after kill -9 and a restart the apps differ: missing {missing:?}, not acknowledged {extra:?}"
        ));
    }
    if max_rss_kb >= RSS_LIMIT_KB {
        problems.push(format!(
            "RSS reached {} MiB (limit {} MiB)",
            max_rss_kb / 1024,
            RSS_LIMIT_KB / 1024
        ));
    }
    if !panics.is_empty() {
        problems.push(format!("the log shows panics: {panics:?}"));
    }
    assert!(
        problems.is_empty(),
        "seed {seed:#x} (BERTH_FUZZ_SEED): {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// What the fuzzer found, kept fixed: axum's own rejections (a path parameter that is not
/// UTF-8 once percent-decoded, a repeated query parameter, a method a route does not take)
/// were `text/plain` or empty 4xx replies; the logs of a fake-driver task were a 501; a reply
/// sent before a large body was read closed the connection without saying so; and a node that
/// registered with 1e308 CPUs hung the server (a scan of 2^32 cores under the state lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_findings_stay_fixed() {
    let mut dev = Dev::start().await;
    let port = dev.port;
    let agent = dev.wait_ready().await;
    let app = json!({"id": "/fuzz/fake", "cmd": "sleep 3600", "cpus": 0.01, "mem": 4,
                     "labels": {"BERTH_DRIVER": "fake"}});
    let req = Req::new(Dest::Server, "setup", "POST", "/v2/apps".into())
        .json(app.to_string().into_bytes());
    let resp = send(port, &req).await.expect("creating an app");
    assert_eq!(resp.status, 201, "{}", preview(&resp.body));
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let tasks = get_json(port, "/v2/apps/fuzz/fake/tasks").await;
        if let Some(id) = tasks["tasks"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no task for /fuzz/fake");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A node that claims more CPUs than any machine has (the scheduler keeps state per core).
    let huge_node = json!({"id": "fuzz-huge", "hostname": "h", "address": "127.0.0.1",
        "resources": {"cpus": 1e308, "mem": 1, "disk": 1}, "portRanges": [], "drivers": []})
    .to_string();
    // (where, method, target, body, status, part of the message)
    type Case<'a> = (Dest, &'a str, String, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        // The server: every route with a path parameter.
        (
            Dest::Server,
            "GET",
            "/v2/apps/%ff%fe".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "PUT",
            "/v2/apps/fuzz/%ff".into(),
            Some("{\"cmd\":\"x\"}"),
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "POST",
            "/v2/apps/%c0%af/restart".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "DELETE",
            "/v2/queue/%ff%fe/delay".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "GET",
            "/v2/groups/%ff".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "DELETE",
            "/v2/deployments/%ff".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "POST",
            "/api/v1/nodes/%ff%fe/uncordon".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "GET",
            "/api/v1/deployments/%ff%fe".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "GET",
            "/api/v1/tasks/%ff/logs".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "GET",
            "/api/v1/agent/%ff/assignments".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "DELETE",
            "/api/v1/tokens/%ff%fe".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "PUT",
            "/api/v1/secrets/team/%ff".into(),
            Some("{\"value\":\"x\"}"),
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "GET",
            "/api/v1/secrets/%ff".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Server,
            "POST",
            "/api/v1/agent/register".into(),
            Some(&huge_node),
            422,
            "Object is not valid",
        ),
        // Through the server to the agent, and at the agent itself.
        (
            Dest::Server,
            "GET",
            format!("/api/v1/tasks/{task}/logs"),
            None,
            404,
            "has no logs",
        ),
        (
            Dest::Agent,
            "GET",
            format!("/v1/tasks/{task}/logs"),
            None,
            404,
            "has no logs",
        ),
        (
            Dest::Agent,
            "GET",
            "/v1/tasks/%ff/logs".into(),
            None,
            400,
            "UTF-8",
        ),
        (
            Dest::Agent,
            "GET",
            format!("/v1/tasks/{task}/logs?stream=stdout&stream=stderr"),
            None,
            400,
            "duplicate",
        ),
        (
            Dest::Agent,
            "POST",
            "/ping".into(),
            None,
            405,
            "not allowed",
        ),
        (
            Dest::Agent,
            "get",
            "/metrics".into(),
            None,
            405,
            "not allowed",
        ),
        (
            Dest::Agent,
            "DELETE",
            format!("/v1/tasks/{task}/logs"),
            None,
            405,
            "not allowed",
        ),
    ];
    let mut failures = Vec::new();
    for (dest, method, target, body, want, message) in cases {
        let mut req = Req::new(dest, "regression", method, target.clone());
        if let Some(b) = body {
            req = req.json(b.as_bytes().to_vec());
        }
        let port = if dest == Dest::Server { port } else { agent };
        match send(port, &req).await {
            Ok(resp) => {
                let text = resp.json()["message"].as_str().unwrap_or("").to_string();
                if resp.status != want || check(&req, &resp).is_err() || !text.contains(message) {
                    failures.push(format!(
                        "{dest:?} {method} {target}: {} {:?} {:?} (want {want} with JSON {message:?})",
                        resp.status,
                        resp.header("content-type"),
                        preview(&resp.body)
                    ));
                }
            }
            Err(e) => failures.push(format!("{dest:?} {method} {target}: {e}")),
        }
    }

    // Keep-alive: a reply sent before the body was read says `Connection: close` (hyper drops
    // the connection after it); otherwise the same connection serves the next request (`send`
    // checks either way). A body that was read keeps the connection.
    let big = format!("{{\"cmd\":\"{}\"}}", "x".repeat(300_000));
    let app = json!({"id": "/fuzz/kept", "cmd": "sleep 3600", "labels": {"BERTH_DRIVER": "fake"}})
        .to_string();
    for (dest, method, target, body, want, close) in [
        (Dest::Server, "TRACE", "/v2/apps", &big, 405, true),
        (
            Dest::Server,
            "PATCH",
            "/v2/apps/fuzz/fake?force=maybe",
            &big,
            400,
            true,
        ),
        (Dest::Server, "POST", "/v2/nope", &big, 404, true),
        (Dest::Agent, "GET", "/ping", &big, 200, true),
        (Dest::Agent, "FOO", "/metrics", &big, 405, true),
        (Dest::Server, "PUT", "/v2/apps/fuzz/fake", &big, 422, false),
        (Dest::Server, "POST", "/v2/apps", &app, 201, false),
    ] {
        let mut req =
            Req::new(dest, "regression", method, target.to_string()).json(body.as_bytes().to_vec());
        req.keep_alive = true;
        let port = if dest == Dest::Server { port } else { agent };
        match send(port, &req).await {
            Ok(resp) => {
                let closes = resp
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                if resp.status != want || closes != close {
                    failures.push(format!(
                        "keep-alive {dest:?} {method} {target}: {} (want {want}), \
                         Connection: close {closes} (want {close}): {:?}",
                        resp.status,
                        preview(&resp.body)
                    ));
                }
            }
            Err(e) => failures.push(format!("keep-alive {dest:?} {method} {target}: {e}")),
        }
    }
    assert!(dev.alive());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
