//! A multi-node harness for the deployment tests: one `berth server` (with its own flags) and
//! any number of `berth agent` processes (exec driver), each with its own node id, hostname,
//! port range, attributes and data dir. Dropping it kills the server, the agents and every
//! task process of its apps (found by `MARATHON_APP_ID` in `/proc/*/environ`).

use crate::common::{
    Api, BERTH, Proc, free_port, kill9, node_list, processes, wait_until, without_forks,
};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A private range of 40 host ports, below the ephemeral range and away from the ranges of
/// `common` (20000+), distinct between the agents of this test binary.
fn port_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let base = 10000 + ((std::process::id() * 11 + slot * 37) % 240) * 40;
    (base as u16, base as u16 + 39)
}

struct AgentProc {
    child: Option<Child>,
    ports: (u16, u16),
    attributes: Vec<(String, String)>,
}

pub struct Env {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub api: Api,
    node_timeout: Option<u64>,
    server: Option<Child>,
    agents: BTreeMap<String, AgentProc>,
    /// Every app of this env has an id starting with this.
    pub app_prefix: String,
}

fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening a log file")
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

impl Env {
    /// Starts the server (`--node-timeout` if given); no agents yet.
    pub async fn start(name: &str, node_timeout: Option<u64>) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-it-deploy-{name}-"))
            .tempdir()
            .expect("tempdir");
        // Same convention as `common`: stale dirs of dead test processes are reaped.
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .expect("owner file");
        let port = free_port();
        let mut env = Env {
            name: name.to_string(),
            dir,
            port,
            api: Api::new(&format!("http://127.0.0.1:{port}")),
            node_timeout,
            server: None,
            agents: BTreeMap::new(),
            app_prefix: format!("/dpl{}-{name}", std::process::id()),
        };
        env.start_server().await;
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An app id of this env.
    pub fn app_id(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.app_prefix)
    }

    fn server_log(&self) -> PathBuf {
        self.path().join("server.log")
    }

    fn agent_log(&self, id: &str) -> PathBuf {
        self.path().join(format!("agent-{id}.log"))
    }

    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "server already running");
        let log = log_file(&self.server_log());
        let mut cmd = Command::new(BERTH);
        cmd.args(["server", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.path().join("server"));
        if let Some(t) = self.node_timeout {
            cmd.args(["--node-timeout", &t.to_string()]);
        }
        let child = cmd
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning berth server");
        self.server = Some(child);
        let api = self.api.clone();
        wait_until(Duration::from_secs(20), "the server answers /ping", || {
            let api = api.clone();
            async move {
                matches!(api.try_raw(Method::GET, "/ping", None).await, Ok(r) if r.status == 200)
            }
        })
        .await;
        let token = crate::common::read_token(&self.path().join("server").join("admin.token"));
        self.api = Api::with_token(&self.api.base, Some(&token));
    }

    /// `kill -9` the server.
    pub fn kill_server(&mut self) {
        let mut c = self.server.take().expect("no server to kill");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Adds and starts agent `id` (hostname `host-<id>`); waits until the node is ready.
    pub async fn add_agent(&mut self, id: &str, attributes: &[(&str, &str)]) {
        assert!(!self.agents.contains_key(id), "agent {id} exists");
        self.agents.insert(
            id.to_string(),
            AgentProc {
                child: None,
                ports: port_range(),
                attributes: attributes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
        self.start_agent(id).await;
    }

    /// Starts (or restarts, same data dir) agent `id`; waits until the node is ready.
    pub async fn start_agent(&mut self, id: &str) {
        let url = self.api.base.clone();
        let data = self.path().join(format!("agent-{id}"));
        let join_file = self.path().join("server").join("join.token");
        let log = log_file(&self.agent_log(id));
        let a = self.agents.get_mut(id).expect("unknown agent");
        assert!(a.child.is_none(), "agent {id} already running");
        let mut cmd = Command::new(BERTH);
        cmd.args(["agent", "--server", &url, "--data-dir"])
            .arg(&data)
            .arg("--join-token-file")
            .arg(&join_file)
            .args(["--address", "127.0.0.1", "--node-id", id, "--hostname"])
            .arg(format!("host-{id}"))
            .args(["--cpus", "4", "--mem", "4096", "--disk", "10000"])
            .args(["--listen", "127.0.0.1:0", "--drivers", "exec", "--ports"])
            .arg(format!("{}-{}", a.ports.0, a.ports.1));
        for (k, v) in &a.attributes {
            cmd.arg("--attribute").arg(format!("{k}={v}"));
        }
        let child = cmd
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning berth agent");
        a.child = Some(child);
        self.wait_node_status(id, "ready", Duration::from_secs(20))
            .await;
    }

    pub fn agent_pid(&self, id: &str) -> u32 {
        self.agents[id]
            .child
            .as_ref()
            .expect("agent not running")
            .id()
    }

    /// SIGSTOP the agent: it is cut off (no heartbeats) but its tasks keep running.
    pub fn pause_agent(&self, id: &str) {
        signal(self.agent_pid(id), "-STOP");
    }

    pub fn resume_agent(&self, id: &str) {
        signal(self.agent_pid(id), "-CONT");
    }

    /// The node as `/api/v1/nodes` shows it.
    pub async fn node(&self, id: &str) -> Option<Value> {
        let r = self
            .api
            .try_raw(Method::GET, "/api/v1/nodes", None)
            .await
            .ok()?;
        node_list(&r.json).into_iter().find(|n| n["id"] == id)
    }

    pub async fn wait_node_status(&self, id: &str, status: &str, timeout: Duration) {
        wait_until(timeout, &format!("node {id} {status}"), || async {
            self.node(id).await.is_some_and(|n| {
                n["status"]
                    .as_str()
                    .unwrap_or("")
                    .eq_ignore_ascii_case(status)
            })
        })
        .await;
    }

    /// Live (non-zombie) processes of this env's app `app_id` running `program`.
    pub fn app_procs(&self, app_id: &str, program: &str) -> Vec<Proc> {
        processes()
            .into_iter()
            .filter(|p| p.program() == program && p.env_is("MARATHON_APP_ID", app_id))
            .collect()
    }

    /// task id -> pids of the app's `program` processes.
    pub fn task_pids(&self, app_id: &str, program: &str) -> BTreeMap<String, Vec<i32>> {
        let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for p in without_forks(self.app_procs(app_id, program)) {
            let id = p.env.get("MESOS_TASK_ID").cloned().unwrap_or_default();
            out.entry(id).or_default().push(p.pid);
        }
        out
    }

    fn dump_logs(&self) {
        let mut logs = vec![("server".to_string(), self.server_log())];
        for id in self.agents.keys() {
            logs.push((format!("agent {id}"), self.agent_log(id)));
        }
        for (what, path) in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "----- {} {what} log, last {} lines -----",
                self.name,
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }

    /// Everything this env started: its server, agents, shims (in its dir) and the task
    /// processes of its apps (by `MARATHON_APP_ID`).
    fn own_processes(&self) -> Vec<Proc> {
        let root = self.path().to_string_lossy().to_string();
        let me = std::process::id() as i32;
        processes()
            .into_iter()
            .filter(|p| p.pid != me)
            .filter(|p| {
                p.env
                    .get("MARATHON_APP_ID")
                    .is_some_and(|a| a.starts_with(&self.app_prefix))
                    || p.cwd
                        .as_ref()
                        .is_some_and(|c| c.to_string_lossy().starts_with(&root))
                    || p.cmdline.iter().any(|a| a.starts_with(&root))
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for a in self.agents.values_mut() {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = self.own_processes();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in left {
                kill9(p.pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        crate::common::remove_task_cgroups(self.path());
    }
}
