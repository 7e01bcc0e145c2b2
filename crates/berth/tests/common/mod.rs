//! Harness for the integration tests that run the real `berth` binary: a server and an agent
//! as child processes on a free port and a private temporary directory, HTTP helpers, and
//! `/proc` inspection to map tasks to the real processes they run.
//!
//! Every [`Cluster`] is self-contained (own port, own data dirs, own agent port range), so tests
//! run in parallel. Dropping it kills the server, the agent and every process that lives in its
//! directory (shims and tasks), and prints the tails of the logs when the test failed.

#![allow(dead_code)]

use reqwest::Method;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The binary under test (one build shared by every test).
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Cluster directories are `<tmp>/berth-it-<test>-XXXX`, holding `owner.pid`: the test
/// process that made them.
const DIR_PREFIX: &str = "berth-it-";
const OWNER_FILE: &str = "owner.pid";

/// Once per test process: kills the processes left behind by test processes that died without
/// running their destructors (killed by a timeout, say), and removes their directories.
fn reap_stale_clusters() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(DIR_PREFIX) {
                continue;
            }
            let dir = e.path();
            let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            let Some(owner) = owner else { continue };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let root = dir.to_string_lossy().to_string();
            for p in processes() {
                let inside = p
                    .cwd
                    .as_ref()
                    .is_some_and(|c| c.to_string_lossy().starts_with(&root))
                    || p.cmdline.iter().any(|a| a.starts_with(&root));
                if inside {
                    kill9(p.pid);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough between parallel tests).
/// A token file's content.
pub fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A private range of 50 host ports for one agent, distinct between the clusters of one test
/// binary and (by the process id) very likely between test binaries.
fn agent_port_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let base = 20000 + ((std::process::id() * 7 + slot * 53) % 400) * 50;
    (base as u16, base as u16 + 49)
}

/// Polls `cond` every 50 ms until it is true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`wait_until`] but returns the value `f` produced once it is `Some`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP reply: status, headers and the body (parsed as JSON when it is JSON, else `Null`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }

    /// `message` of an error body.
    pub fn message(&self) -> String {
        self.json["message"].as_str().unwrap_or("").to_string()
    }

    /// `details[*].path` of a validation error body.
    pub fn detail_paths(&self) -> Vec<String> {
        self.json["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|x| x["path"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// HTTP JSON client bound to one server.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// The bearer token every request carries, if any.
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api::with_token(base, None)
    }

    /// A client sending `Authorization: Bearer <token>` with every request.
    pub fn with_token(base: &str, token: Option<&str>) -> Api {
        Api::with_token_and_ca(base, token, None)
    }

    /// A client that verifies `https://` servers with the CA certificate(s) in `ca` only.
    pub fn with_ca(base: &str, ca: &Path) -> Api {
        Api::with_token_and_ca(base, None, Some(ca))
    }

    /// [`Api::with_token`], verifying `https://` servers with the CA certificate(s) in `ca`
    /// only (`None`: the system's roots).
    pub fn with_token_and_ca(base: &str, token: Option<&str>, ca: Option<&Path>) -> Api {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("token header"),
            );
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .default_headers(headers);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
            builder = builder.tls_certs_only(
                reqwest::Certificate::from_pem_bundle(&pem).expect("CA certificates"),
            );
        }
        Api {
            base: base.trim_end_matches('/').to_string(),
            http: builder.build().expect("reqwest client"),
            token: token.map(str::to_string),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends raw bytes (`None`: no body) and returns the reply; transport errors are `Err`.
    pub async fn try_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            text,
            json,
        })
    }

    pub async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
        let m = method.clone();
        self.try_raw(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{m} {path}: {e}"))
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.raw(method, path, body.map(|b| b.to_string().into_bytes()))
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// GET that must succeed with 200; returns the JSON.
    pub async fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.json
    }

    /// `GET /v2/apps/{id}/tasks` (empty when the app is gone).
    pub async fn tasks(&self, app_id: &str) -> Vec<Value> {
        let r = self.get(&format!("/v2/apps{app_id}/tasks")).await;
        if r.status != 200 {
            return vec![];
        }
        r.json["tasks"].as_array().cloned().unwrap_or_default()
    }

    /// The app's tasks that are TASK_RUNNING.
    pub async fn running_tasks(&self, app_id: &str) -> Vec<Value> {
        self.tasks(app_id)
            .await
            .into_iter()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .collect()
    }

    /// Ids of the app's running tasks.
    pub async fn running_ids(&self, app_id: &str) -> BTreeSet<String> {
        self.running_tasks(app_id)
            .await
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until the app has exactly `n` tasks, all TASK_RUNNING; returns them.
    pub async fn wait_running(&self, app_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(
            timeout,
            &format!("{n} running tasks of {app_id}"),
            || async {
                let all = self.tasks(app_id).await;
                let running = all.iter().filter(|t| t["state"] == "TASK_RUNNING").count();
                (all.len() == n && running == n).then_some(all)
            },
        )
        .await
    }

    /// `GET /v2/deployments` as a list.
    pub async fn deployments(&self) -> Vec<Value> {
        self.get_ok("/v2/deployments")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until no deployment is left; on a timeout the failure shows what is still
    /// deployed and what the queue says is waiting (why it does not finish).
    pub async fn wait_no_deployments(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let left = self.deployments().await;
            if left.is_empty() {
                return;
            }
            if start.elapsed() > timeout {
                let queue = self.get("/v2/queue").await;
                let show = |v: &Value| {
                    let s = v.to_string();
                    s.chars().take(4000).collect::<String>()
                };
                panic!(
                    "timed out after {timeout:?} waiting for: no deployments; {} left: {}\nqueue: {}",
                    left.len(),
                    show(&Value::Array(left)),
                    show(&queue.json)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The apps list as returned by `GET /v2/apps` (for before/after comparisons).
    pub async fn apps(&self) -> Value {
        self.get_ok("/v2/apps").await
    }
}

/// How [`Cluster::start_with_tls`]'s server gets its certificate.
pub enum Tls {
    /// `--tls auto`: its own CA in `<data-dir>/tls`.
    Auto,
    /// `--tls-cert/--tls-key`, verified with `ca`.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

/// A `berth server` plus a `berth agent` (node `n1`, exec driver) as child processes.
pub struct Cluster {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub api: Api,
    server: Option<Child>,
    agent: Option<Child>,
    ports: (u16, u16),
    /// Extra `berth server` flags (limits).
    pub server_args: Vec<String>,
    /// With TLS: the CA certificate the API is verified with (the agent gets it as
    /// `--ca-cert`); see [`Cluster::start_with_tls`].
    pub tls_ca: Option<PathBuf>,
}

impl Cluster {
    /// Starts a server and an agent, and waits until the node is ready.
    pub async fn start(name: &str) -> Cluster {
        let mut c = Cluster::start_server_only(name).await;
        c.start_agent().await;
        c
    }

    /// Starts a server only (no node: tasks cannot be placed).
    pub async fn start_server_only(name: &str) -> Cluster {
        Cluster::start_server_with(name, &[]).await
    }

    /// Starts a server only, with extra `berth server` flags.
    pub async fn start_server_with(name: &str, args: &[&str]) -> Cluster {
        let mut c = Cluster::prepare(name, args);
        c.start_server().await;
        c
    }

    /// A cluster's directory and port, nothing started.
    pub fn prepare(name: &str, args: &[&str]) -> Cluster {
        reap_stale_clusters();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{name}-"))
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .expect("writing the owner file");
        let port = free_port();
        Cluster {
            name: name.to_string(),
            dir,
            port,
            api: Api::new(&format!("http://127.0.0.1:{port}")),
            server: None,
            agent: None,
            ports: agent_port_range(),
            server_args: args.iter().map(|a| a.to_string()).collect(),
            tls_ca: None,
        }
    }

    /// Starts a server serving HTTPS as `tls` says (and, with `with_agent`, an agent that
    /// verifies it), the API client verifying the server with the CA.
    pub async fn start_with_tls(name: &str, tls: Tls, with_agent: bool) -> Cluster {
        let mut c = Cluster::prepare(name, &[]);
        let (args, ca) = match tls {
            Tls::Auto => (
                vec!["--tls".to_string(), "auto".to_string()],
                c.path().join("server/tls/ca.crt"),
            ),
            Tls::Files { cert, key, ca } => (
                vec![
                    "--tls-cert".to_string(),
                    cert.display().to_string(),
                    "--tls-key".to_string(),
                    key.display().to_string(),
                ],
                ca,
            ),
        };
        c.server_args.extend(args);
        c.api.base = format!("https://127.0.0.1:{}", c.port);
        c.tls_ca = Some(ca);
        c.start_server().await;
        if with_agent {
            c.start_agent().await;
        }
        c
    }

    pub fn url(&self) -> String {
        self.api.base.clone()
    }

    /// The host ports this cluster's agent offers (`--ports`).
    pub fn agent_ports(&self) -> String {
        format!("{}-{}", self.ports.0, self.ports.1)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The admin token the server's first start wrote.
    pub fn admin_token(&self) -> String {
        read_token(&self.path().join("server").join("admin.token"))
    }

    /// The join token agents present.
    pub fn join_token_file(&self) -> PathBuf {
        self.path().join("server").join("join.token")
    }

    /// A client without credentials (every route but /ping answers 401).
    pub fn anonymous(&self) -> Api {
        Api::with_token_and_ca(&self.api.base, None, self.tls_ca.as_deref())
    }

    pub fn server_log(&self) -> PathBuf {
        self.path().join("server.log")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.path().join("agent.log")
    }

    fn log_file(path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("opening a log file")
    }

    /// Starts (or restarts) the server on the same port and data dir; waits for `/ping`.
    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "server already running");
        let log = Cluster::log_file(&self.server_log());
        let stderr = log.try_clone().expect("log fd");
        let child = Command::new(BERTH)
            .args(["server", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.path().join("server"))
            .args(&self.server_args)
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawning berth server");
        self.server = Some(child);
        if let Some(ca) = self.tls_ca.clone() {
            // `--tls auto` makes its CA on first start.
            wait_until(
                Duration::from_secs(20),
                "the server's CA certificate",
                || {
                    let ca = ca.clone();
                    async move { ca.exists() }
                },
            )
            .await;
            self.api = Api::with_ca(&self.api.base, &ca);
        }
        let api = self.api.clone();
        wait_until(Duration::from_secs(20), "the server answers /ping", || {
            let api = api.clone();
            async move {
                matches!(api.try_raw(Method::GET, "/ping", None).await, Ok(r) if r.status == 200)
            }
        })
        .await;
        // Every later request is the admin's (authentication is on for `berth server`).
        // On etcd the server answers /ping as a follower before it is elected; the token
        // is written, and /v2/info answers, once it leads.
        let token_file = self.path().join("server").join("admin.token");
        wait_until(Duration::from_secs(20), "the server's admin.token", || {
            let f = token_file.clone();
            async move { f.exists() }
        })
        .await;
        self.api = Api::with_token_and_ca(
            &self.api.base,
            Some(&self.admin_token()),
            self.tls_ca.as_deref(),
        );
        let api = self.api.clone();
        wait_until(Duration::from_secs(20), "the server leads (/v2/info)", || {
            let api = api.clone();
            async move {
                matches!(api.try_raw(Method::GET, "/v2/info", None).await, Ok(r) if r.status == 200)
            }
        })
        .await;
    }

    /// `berth agent` for node `node` (id and hostname) joining this cluster: its server, the
    /// join token, the CA when TLS is on, `<dir>/<data_dir>`, an endpoint on any free
    /// loopback port. Callers add resources, drivers, ports and where its output goes.
    /// `berth` as a client of this cluster (its address and admin token; never the config
    /// file of whoever runs the tests); add the subcommand and its arguments.
    pub fn client_command(&self) -> Command {
        let mut cmd = Command::new(BERTH);
        cmd.env("BERTH_ADDR", self.url())
            .env("BERTH_TOKEN", self.admin_token())
            .env("BERTH_CONFIG", self.path().join("cli-config.json"))
            .env_remove("BERTH_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn agent_command(&self, node: &str, data_dir: &str) -> Command {
        let mut cmd = Command::new(BERTH);
        cmd.args(["agent", "--server", &self.url(), "--data-dir"])
            .arg(self.path().join(data_dir))
            .arg("--join-token-file")
            .arg(self.join_token_file())
            .args(
                self.tls_ca
                    .iter()
                    .flat_map(|ca| [Path::new("--ca-cert"), ca]),
            )
            .args([
                // The agent's own HTTP endpoint (logs, metrics): any free port.
                "--listen",
                "127.0.0.1:0",
                "--address",
                "127.0.0.1",
                "--node-id",
                node,
                "--hostname",
                node,
            ])
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts (or restarts) the agent; waits until node `n1` is ready on the server.
    pub async fn start_agent(&mut self) {
        self.start_agent_with_cpus("8").await;
    }

    /// [`Cluster::start_agent`] offering `cpus` CPUs (pinned cores are `0..cpus`).
    pub async fn start_agent_with_cpus(&mut self, cpus: &str) {
        assert!(self.agent.is_none(), "agent already running");
        let log = Cluster::log_file(&self.agent_log());
        let stderr = log.try_clone().expect("log fd");
        let child = self
            .agent_command("n1", "agent")
            .args([
                "--cpus",
                cpus,
                "--mem",
                "8192",
                "--disk",
                "10000",
                "--drivers",
                "exec",
                "--ports",
            ])
            .arg(format!("{}-{}", self.ports.0, self.ports.1))
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawning berth agent");
        self.agent = Some(child);
        self.wait_node_ready().await;
    }

    /// Waits until `/api/v1/nodes` lists `n1` as ready.
    pub async fn wait_node_ready(&self) {
        let api = self.api.clone();
        wait_until(Duration::from_secs(20), "node n1 ready", || {
            let api = api.clone();
            async move {
                let Ok(r) = api.try_raw(Method::GET, "/api/v1/nodes", None).await else {
                    return false;
                };
                node_list(&r.json).iter().any(|n| {
                    (n["id"] == "n1" || n["info"]["id"] == "n1")
                        && n["status"]
                            .as_str()
                            .unwrap_or("")
                            .eq_ignore_ascii_case("ready")
                })
            }
        })
        .await;
    }

    fn kill_child(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// `kill -9` the server (tasks and agent keep running).
    pub fn kill_server(&mut self) {
        assert!(self.server.is_some(), "no server to kill");
        Cluster::kill_child(&mut self.server);
    }

    /// `kill -9` the agent (its tasks keep running under their shims).
    pub fn kill_agent(&mut self) {
        assert!(self.agent.is_some(), "no agent to kill");
        Cluster::kill_child(&mut self.agent);
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Whether the server process is still alive (not exited).
    pub fn server_alive(&mut self) -> bool {
        match self.server.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Processes that belong to this cluster (cwd or command line inside its directory).
    pub fn own_processes(&self) -> Vec<Proc> {
        let root = self.path().to_string_lossy().to_string();
        processes()
            .into_iter()
            .filter(|p| {
                p.cwd
                    .as_ref()
                    .is_some_and(|c| c.to_string_lossy().starts_with(&root))
                    || p.cmdline.iter().any(|a| a.starts_with(&root))
            })
            .collect()
    }

    /// This cluster's task processes running `program` (argv[0]'s base name) for `app_id`.
    pub fn app_processes(&self, app_id: &str, program: &str) -> Vec<Proc> {
        self.own_processes()
            .into_iter()
            .filter(|p| p.program() == program && p.env_is("MARATHON_APP_ID", app_id))
            .collect()
    }

    /// task id -> pid of the app's `program` processes (panics if a task has two).
    pub fn app_pids(&self, app_id: &str, program: &str) -> BTreeMap<String, i32> {
        let mut out = BTreeMap::new();
        for p in self.app_processes(app_id, program) {
            let id = p.env.get("MESOS_TASK_ID").cloned().unwrap_or_default();
            if let Some(prev) = out.insert(id.clone(), p.pid) {
                panic!(
                    "task {id} has two {program} processes: {prev} and {}",
                    p.pid
                );
            }
        }
        out
    }

    /// Prints the last lines of both logs (on failure).
    pub fn dump_logs(&self) {
        for (what, path) in [("server", self.server_log()), ("agent", self.agent_log())] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {} {what} log ({}), last {} lines -----",
                self.name,
                path.display(),
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }

    /// Kills every process of this cluster: tasks first (so their shims clean up), then the
    /// shims and anything left.
    pub fn kill_own_processes(&self) {
        let me = std::process::id() as i32;
        for p in self.own_processes() {
            if p.pid != me && !p.cmdline.iter().any(|a| a == "__shim") {
                kill9(p.pid);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline && !self.own_processes().is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..3 {
            let left = self.own_processes();
            if left.is_empty() {
                break;
            }
            for p in left {
                if p.pid != me {
                    kill9(p.pid);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        Cluster::kill_child(&mut self.agent);
        Cluster::kill_child(&mut self.server);
        self.kill_own_processes();
        remove_task_cgroups(self.path());
    }
}

/// Removes the task cgroups (as listed in each exec task's `spec.json`) of every agent data dir
/// under `root`. Teardown SIGKILLs shims, which would otherwise remove them when their task
/// ends; call it once the processes are gone (a cgroup with processes is left alone).
pub fn remove_task_cgroups(root: &Path) {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "spec.json")
                && dir
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == "tasks")
            {
                out.push(p);
            } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, depth - 1, out);
            }
        }
    }
    let mut specs = Vec::new();
    walk(root, 5, &mut specs);
    for spec in specs {
        let Ok(text) = std::fs::read_to_string(&spec) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let dirs = v["cgroup"].as_str().into_iter().chain(
            v["cgroups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
        for d in dirs {
            for _ in 0..20 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(25))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// `/api/v1/nodes` may be a bare array or `{"nodes": [...]}`.
pub fn node_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => other["nodes"].as_array().cloned().unwrap_or_default(),
    }
}

/// `kill -9 <pid>` (the `kill` program: the workspace forbids `unsafe`).
pub fn kill9(pid: i32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub cmdline: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// `/proc/<pid>/stat` state letter (`Z` for zombies).
    pub state: char,
    /// The parent's pid (0 when `stat` could not be read).
    pub ppid: i32,
}

impl Proc {
    /// Base name of argv[0].
    pub fn program(&self) -> String {
        self.cmdline
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default()
    }

    pub fn env_is(&self, key: &str, value: &str) -> bool {
        self.env.get(key).is_some_and(|v| v == value)
    }
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Reads one process; `None` if it vanished, is a zombie or is not readable.
pub fn read_proc(pid: i32) -> Option<Proc> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    // After the `(comm)` field: state, then ppid.
    let mut after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
        .into_iter()
        .flatten();
    let state = after_comm
        .next()
        .and_then(|s| s.chars().next())
        .unwrap_or('?');
    let ppid = after_comm.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if state == 'Z' || state == 'X' {
        return None;
    }
    let cmdline = split_nul(&std::fs::read(base.join("cmdline")).ok()?);
    let env = split_nul(&std::fs::read(base.join("environ")).unwrap_or_default())
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let cwd = std::fs::read_link(base.join("cwd")).ok();
    Some(Proc {
        pid,
        cmdline,
        env,
        cwd,
        state,
        ppid,
    })
}

/// Drops the processes whose parent is in `procs` with the same `MESOS_TASK_ID`: a forking
/// server's per-connection children (busybox httpd forks one per health check) are not a
/// second start of the task.
pub fn without_forks(procs: Vec<Proc>) -> Vec<Proc> {
    let task = |p: &Proc| p.env.get("MESOS_TASK_ID").cloned();
    let parents: std::collections::HashMap<i32, Option<String>> =
        procs.iter().map(|p| (p.pid, task(p))).collect();
    procs
        .into_iter()
        .filter(|p| parents.get(&p.ppid).is_none_or(|t| *t != task(p)))
        .collect()
}

/// Every live (non-zombie) process we can read.
pub fn processes() -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(read_proc)
        .collect()
}

/// Processes running `program` whose environment has `MESOS_TASK_ID=<task_id>`.
pub fn task_processes(task_id: &str, program: &str) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.program() == program && p.env_is("MESOS_TASK_ID", task_id))
        .collect()
}

pub fn pid_alive(pid: i32) -> bool {
    read_proc(pid).is_some()
}

/// A cmd-only app running `cmd`.
pub fn cmd_app(id: &str, cmd: &str, instances: u32) -> Value {
    serde_json::json!({
        "id": id,
        "cmd": cmd,
        "cpus": 0.1,
        "mem": 16,
        "instances": instances,
    })
}

/// A parsed server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: Value,
}

/// Incremental parser of `event:`/`data:` framing (frames end with a blank line).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Sse> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        self.buf = self.buf.replace("\r\n", "\n");
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let frame: String = self.buf.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data: Vec<&str> = Vec::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if event.is_empty() && data.is_empty() {
                continue; // comment / keep-alive
            }
            let text = data.join("\n");
            let data = serde_json::from_str(&text).unwrap_or(Value::String(text));
            out.push(Sse { event, data });
        }
        out
    }
}

/// A subscription to `/v2/events`: events arrive in a channel as they are parsed.
pub struct EventStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Sse>,
    task: tokio::task::JoinHandle<()>,
    pub seen: Vec<Sse>,
}

impl EventStream {
    /// Connects (`query` like `?event_type=x`, or empty) and returns once the response headers
    /// arrived (the server has subscribed by then).
    pub async fn connect(api: &Api, query: &str) -> EventStream {
        use futures::StreamExt;
        let mut req = reqwest::Client::new()
            .get(api.url(&format!("/v2/events{query}")))
            .header("Accept", "text/event-stream");
        if let Some(t) = &api.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("connecting to /v2/events");
        assert_eq!(resp.status().as_u16(), 200, "GET /v2/events{query}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut parser = SseParser::default();
            let mut body = resp.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                for ev in parser.push(&chunk) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        EventStream {
            rx,
            task,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `pred` (all events received meanwhile are kept in `seen`).
    pub async fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Sse) -> bool) {
        if self.seen.iter().any(&pred) {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    let hit = pred(&ev);
                    self.seen.push(ev);
                    if hit {
                        return;
                    }
                }
                Ok(None) => panic!("event stream ended while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {timeout:?}; seen: {:?}",
                    self.seen.iter().map(|e| &e.event).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects whatever arrives within `d`.
    pub async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push(ev);
        }
    }

    pub fn types(&self) -> Vec<String> {
        self.seen.iter().map(|e| e.event.clone()).collect()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records, every 20 ms on a thread of its own, which (task id, pid) pairs of an app's
/// `program` processes exist in a cluster's directory: a task started twice shows up as
/// two pairs.
pub struct ProcSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<BTreeSet<(String, i32)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProcSampler {
    pub fn start(cluster: &Cluster, app_id: &str, program: &str) -> ProcSampler {
        let root = cluster.path().to_string_lossy().to_string();
        let app_id = app_id.to_string();
        let program = program.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                for p in processes() {
                    let ours = p
                        .cwd
                        .as_ref()
                        .is_some_and(|c| c.to_string_lossy().starts_with(&root));
                    if ours && p.program() == program && p.env_is("MARATHON_APP_ID", &app_id) {
                        let id = p.env.get("MESOS_TASK_ID").cloned().unwrap_or_default();
                        seen2.lock().unwrap().insert((id, p.pid));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ProcSampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Every (task id, pid) seen so far.
    pub fn seen(&self) -> BTreeSet<(String, i32)> {
        self.seen.lock().unwrap().clone()
    }

    pub fn pids(&self) -> BTreeSet<i32> {
        self.seen().into_iter().map(|(_, p)| p).collect()
    }

    pub fn task_ids(&self) -> BTreeSet<String> {
        self.seen().into_iter().map(|(t, _)| t).collect()
    }
}

impl Drop for ProcSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Cluster {
    /// `lastHeartbeat` of node n1 as the server shows it.
    pub async fn last_heartbeat(&self) -> Option<String> {
        let r = self
            .api
            .try_raw(Method::GET, "/api/v1/nodes/n1", None)
            .await
            .ok()?;
        (r.status == 200)
            .then(|| r.json["lastHeartbeat"].as_str().map(str::to_string))
            .flatten()
    }

    /// Waits until the agent has reported to the server again (the heartbeat moved on from
    /// what the server showed when this was called) and the node is ready.
    pub async fn wait_agent_reported(&self) {
        let before = self.last_heartbeat().await;
        wait_until(
            Duration::from_secs(25),
            "the agent to report again",
            || async {
                let now = self.last_heartbeat().await;
                now.is_some() && now != before
            },
        )
        .await;
        self.wait_node_ready().await;
    }
}
