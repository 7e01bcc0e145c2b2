//! End-to-end tests of the Docker driver (issue #3): the real `berth server` and
//! `berth agent --drivers docker,exec` against the real dockerd and the test image
//! `berth-test/busybox:latest` (built by `scripts/test-image.sh`).
//!
//! Skipped, with a notice, when `docker info` fails; failed instead when
//! `BERTH_REQUIRE_DOCKER=1`. Every test uses its own node id, and removes every container
//! labelled with it (and the ghost it made) when it ends, passed or not.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const IMAGE: &str = "berth-test/busybox:latest";
/// Generous: the machine is small and shared; nothing here is a timed assertion.
const T: Duration = Duration::from_secs(120);

/// Whether the tests can run: dockerd answers and the test image exists (built on demand).
/// Panics instead of skipping when `BERTH_REQUIRE_DOCKER=1`.
fn docker_available(test: &str) -> bool {
    let required = std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let info = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(info, Ok(s) if s.success()) {
        if required {
            panic!("BERTH_REQUIRE_DOCKER=1 but `docker info` fails: {info:?}");
        }
        eprintln!("SKIPPED {test}: `docker info` fails (no Docker Engine here)");
        return false;
    }
    let has_image = |_: ()| {
        Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_image(()) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-image.sh");
        let _ = Command::new("bash").arg(script).status();
    }
    if !has_image(()) {
        if required {
            panic!("BERTH_REQUIRE_DOCKER=1 but the image {IMAGE} is missing");
        }
        eprintln!("SKIPPED {test}: image {IMAGE} missing (run scripts/test-image.sh)");
        return false;
    }
    true
}

/// `docker <args>`: (success, stdout trimmed).
fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// A short unique suffix (process id, counter, clock).
fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// What `docker inspect` says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ctr {
    id: String,
    started_at: String,
    restart_count: String,
    running: bool,
}

fn inspect(name: &str) -> Option<Ctr> {
    let (ok, out) = docker(&[
        "inspect",
        "-f",
        "{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Running}}",
        name,
    ]);
    if !ok {
        return None;
    }
    let f: Vec<&str> = out.split_whitespace().collect();
    (f.len() == 4).then(|| Ctr {
        id: f[0].to_string(),
        started_at: f[1].to_string(),
        restart_count: f[2].to_string(),
        running: f[3] == "true",
    })
}

fn container_of(task_id: &str) -> String {
    format!("berth-{task_id}")
}

/// A server (the shared harness) plus an agent of our own: the harness's agent runs only the
/// exec driver as node `n1`; these tests need `--drivers docker,exec`, a unique node id and
/// `--ghost-grace`.
struct DockerCluster {
    c: Cluster,
    node: String,
    agent: Option<Child>,
    ports: (u16, u16),
    /// Extra containers (by name) to remove on drop.
    extra: Vec<String>,
}

impl DockerCluster {
    async fn start(name: &str) -> DockerCluster {
        let c = Cluster::start_server_only(name).await;
        let slot = (std::process::id() % 97) as u16 * 60 + (c.port % 7) * 8;
        let base = 40000 + slot;
        let mut d = DockerCluster {
            c,
            node: format!("de2e-{name}-{}", unique()),
            agent: None,
            ports: (base, base + 7),
            extra: Vec::new(),
        };
        d.start_agent(30).await;
        d
    }

    fn api(&self) -> &Api {
        &self.c.api
    }

    async fn start_agent(&mut self, ghost_grace: u64) {
        assert!(self.agent.is_none(), "agent already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.c.agent_log())
            .expect("agent log");
        let stderr = log.try_clone().expect("log fd");
        let child = Command::new(BERTH)
            .args(["agent", "--server", &self.c.url(), "--data-dir"])
            .arg(self.c.path().join("agent"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--address",
                "127.0.0.1",
                "--node-id",
                &self.node,
                "--hostname",
                &self.node,
                "--cpus",
                "8",
                "--mem",
                "8192",
                "--disk",
                "10000",
                "--drivers",
                "docker,exec",
                "--ghost-grace",
                &ghost_grace.to_string(),
                "--ports",
            ])
            .arg(format!("{}-{}", self.ports.0, self.ports.1))
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawning berth agent");
        self.agent = Some(child);
        self.wait_node_ready().await;
    }

    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill(); // SIGKILL
            let _ = a.wait();
        }
    }

    async fn wait_node_ready(&self) {
        let api = self.api().clone();
        let node = self.node.clone();
        wait_until(T, &format!("node {node} ready"), || {
            let api = api.clone();
            let node = node.clone();
            async move {
                let Ok(r) = api.try_raw(Method::GET, "/api/v1/nodes", None).await else {
                    return false;
                };
                node_list(&r.json).iter().any(|n| {
                    (n["id"] == node.as_str() || n["info"]["id"] == node.as_str())
                        && n["status"]
                            .as_str()
                            .unwrap_or("")
                            .eq_ignore_ascii_case("ready")
                })
            }
        })
        .await;
    }

    /// Removes every container of this node (by label) and the extra ones (by name).
    fn remove_containers(&self) {
        let (_, ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.node_id={}", self.node),
        ]);
        let mut args = vec!["rm", "-f"];
        args.extend(ids.split_whitespace());
        args.extend(self.extra.iter().map(String::as_str));
        if args.len() > 2 {
            let _ = docker(&args);
        }
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (_, ps) = docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("label=berth.node_id={}", self.node),
            ]);
            eprintln!("----- containers of {} -----\n{ps}", self.node);
        }
        self.kill_agent();
        self.remove_containers();
        // The server and the cluster directory go with `self.c`.
    }
}

/// Waits for `n` TASK_RUNNING tasks of `app` (and nothing else), each with a running
/// container; returns task id -> task JSON.
async fn running(d: &DockerCluster, app: &str, n: usize) -> BTreeMap<String, Value> {
    wait_for(T, &format!("{n} running tasks of {app}"), || async {
        let tasks = d.api().tasks(app).await;
        if tasks.len() != n || tasks.iter().any(|t| t["state"] != "TASK_RUNNING") {
            return None;
        }
        let all_up = tasks.iter().all(|t| {
            inspect(&container_of(t["id"].as_str().unwrap_or(""))).is_some_and(|c| c.running)
        });
        all_up.then(|| {
            tasks
                .into_iter()
                .map(|t| (t["id"].as_str().unwrap_or("").to_string(), t))
                .collect()
        })
    })
    .await
}

async fn tasks_healthy(d: &DockerCluster, app: &str) -> i64 {
    let r = d.api().get(&format!("/v2/apps{app}")).await;
    r.json["app"]["tasksHealthy"].as_i64().unwrap_or(-1)
}

async fn wait_healthy(d: &DockerCluster, app: &str, n: i64) {
    wait_until(T, &format!("tasksHealthy {n} for {app}"), || async {
        tasks_healthy(d, app).await == n
    })
    .await;
}

async fn http_status(port: u64) -> Option<u16> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    http.get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn containers(tasks: &BTreeMap<String, Value>) -> BTreeMap<String, Ctr> {
    tasks
        .keys()
        .map(|id| {
            let c = inspect(&container_of(id))
                .unwrap_or_else(|| panic!("no container {}", container_of(id)));
            (id.clone(), c)
        })
        .collect()
}

/// (a) 3 healthy httpd containers answering on their host ports; (b) an agent `kill -9` and
/// restart re-attaches the same containers; (c) a container removed by hand is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_app_survives_agent_crash_and_replaces_removed_container() {
    if !docker_available("web_app_survives_agent_crash_and_replaces_removed_container") {
        return;
    }
    const APP: &str = "/de2e/web";
    let mut d = DockerCluster::start("docker-web").await;
    let app = json!({
        "id": APP,
        // busybox httpd answers 404 for a directory without index.html: give it one.
        "cmd": "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
        "cpus": 0.1,
        "mem": 32,
        "instances": 3,
        "taskKillGracePeriodSeconds": 1,
        "container": {
            "type": "DOCKER",
            "docker": {"image": IMAGE},
            "portMappings": [{"containerPort": 8080, "hostPort": 0}],
        },
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [{
            "protocol": "HTTP", "path": "/", "portIndex": 0,
            "intervalSeconds": 1, "gracePeriodSeconds": 5, "timeoutSeconds": 2,
            "maxConsecutiveFailures": 3,
        }],
    });
    let r = d.api().post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);

    // (a)
    let tasks = running(&d, APP, 3).await;
    wait_healthy(&d, APP, 3).await;
    for (id, t) in &tasks {
        let port = t["ports"][0]
            .as_u64()
            .unwrap_or_else(|| panic!("task {id} has no host port: {t}"));
        assert!(
            (d.ports.0 as u64..=d.ports.1 as u64).contains(&port),
            "task {id}: host port {port} outside the agent's range {:?}",
            d.ports
        );
        let st = http_status(port).await;
        assert_eq!(st, Some(200), "GET http://127.0.0.1:{port}/ of task {id}");
    }
    let before = containers(&tasks);
    eprintln!("containers: {before:?}");

    // (b) kill -9 the agent; the containers keep running; the new agent re-attaches them.
    d.kill_agent();
    for (id, c) in containers(&tasks) {
        assert!(c.running, "container of {id} stopped with the agent");
    }
    d.start_agent(30).await;
    // Let the new agent report and a few health-check rounds pass.
    wait_healthy(&d, APP, 3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_tasks = running(&d, APP, 3).await;
    assert_eq!(
        after_tasks.keys().collect::<BTreeSet<_>>(),
        tasks.keys().collect::<BTreeSet<_>>(),
        "the same tasks after the agent restart"
    );
    let after = containers(&after_tasks);
    for (id, c) in &after {
        let b = &before[id];
        assert_eq!(
            c.id, b.id,
            "task {id}: a different container after the restart"
        );
        assert_eq!(
            c.started_at, b.started_at,
            "task {id}: its container was restarted"
        );
        assert_eq!(c.restart_count, "0", "task {id}: docker restarted it");
        assert!(c.running);
    }
    assert_eq!(d.api().tasks(APP).await.len(), 3, "still exactly 3 tasks");

    // (c) docker rm -f one container: replaced by a new task.
    let victim = tasks.keys().next().unwrap().clone();
    let (ok, out) = docker(&["rm", "-f", &container_of(&victim)]);
    assert!(ok, "docker rm -f {}: {out}", container_of(&victim));
    let replaced = wait_for(T, "the removed container's task replaced", || async {
        let now = d.api().running_ids(APP).await;
        let all = d.api().tasks(APP).await.len();
        (now.len() == 3 && all == 3 && !now.contains(&victim)).then_some(now)
    })
    .await;
    let new: Vec<_> = replaced
        .difference(&after_tasks.keys().cloned().collect())
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "exactly one new task: {replaced:?}");
    let fresh = running(&d, APP, 3).await;
    for id in fresh.keys() {
        assert!(inspect(&container_of(id)).is_some_and(|c| c.running));
    }
    wait_healthy(&d, APP, 3).await;
}

/// (d) A COMMAND health check that starts failing: the task is killed after
/// `maxConsecutiveFailures` and replaced, and the failure says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_kills_and_replaces_the_container() {
    if !docker_available("failing_health_check_kills_and_replaces_the_container") {
        return;
    }
    const APP: &str = "/de2e/sick";
    let d = DockerCluster::start("docker-sick").await;
    let mut es = EventStream::connect(d.api(), "").await;
    let app = json!({
        "id": APP,
        "cmd": "exec sleep 3600",
        "cpus": 0.1,
        "mem": 16,
        "instances": 1,
        "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE}},
        "healthChecks": [{
            "protocol": "COMMAND", "command": {"value": "test ! -f /tmp/sick"},
            "intervalSeconds": 1, "gracePeriodSeconds": 5, "timeoutSeconds": 5,
            "maxConsecutiveFailures": 3,
        }],
    });
    let r = d.api().post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    let tasks = running(&d, APP, 1).await;
    wait_healthy(&d, APP, 1).await;
    let sick = tasks.keys().next().unwrap().clone();
    let (ok, out) = docker(&["exec", &container_of(&sick), "touch", "/tmp/sick"]);
    assert!(ok, "docker exec touch: {out}");

    let sick2 = sick.clone();
    es.wait_for(T, "the sick task's terminal status", move |e| {
        e.event == "status_update_event"
            && e.data["taskId"] == sick2.as_str()
            && matches!(
                e.data["taskStatus"].as_str(),
                Some("TASK_KILLED" | "TASK_FAILED" | "TASK_FINISHED" | "TASK_LOST")
            )
    })
    .await;
    let terminal = es
        .seen
        .iter()
        .rev()
        .find(|e| e.event == "status_update_event" && e.data["taskId"] == sick.as_str())
        .unwrap()
        .data
        .clone();
    eprintln!("terminal status of the sick task: {terminal}");
    let replacement = wait_for(T, "a replacement task", || async {
        let ids = d.api().running_ids(APP).await;
        (ids.len() == 1 && !ids.contains(&sick)).then_some(ids)
    })
    .await;
    eprintln!("replacement: {replacement:?}");
    wait_healthy(&d, APP, 1).await;
    assert!(
        !inspect(&container_of(&sick)).is_some_and(|c| c.running),
        "the sick container still runs"
    );
    let a = d.api().get_ok(&format!("/v2/apps{APP}")).await;
    let failure = &a["app"]["lastTaskFailure"];
    eprintln!("lastTaskFailure: {failure}");
    let why = format!(
        "{} {}",
        terminal["message"].as_str().unwrap_or(""),
        failure["message"].as_str().unwrap_or("")
    )
    .to_lowercase();
    assert!(
        why.contains("health"),
        "neither the status update ({terminal}) nor lastTaskFailure ({failure}) says the task failed its health check"
    );
    assert_eq!(
        failure["taskId"],
        sick.as_str(),
        "lastTaskFailure is the health-killed task: {failure}"
    );
}

/// (e) A container labelled for this node that the server does not know (a ghost) is found
/// when the agent recovers, announced with `unknown_instance_terminated_event`, and stopped
/// after `--ghost-grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghost_container_is_announced_and_stopped() {
    if !docker_available("ghost_container_is_announced_and_stopped") {
        return;
    }
    let mut d = DockerCluster::start("docker-ghost").await;
    let u = unique();
    let name = format!("berth-ghost-{u}");
    let task = format!("ghost-{u}");
    d.extra.push(name.clone());
    let (ok, out) = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("berth.task_id={task}"),
        "--label",
        "berth.app_id=/ghost",
        "--label",
        "berth.version=v",
        "--label",
        &format!("berth.node_id={}", d.node),
        IMAGE,
        "sleep",
        "3600",
    ]);
    assert!(ok, "docker run the ghost: {out}");
    let mut es = EventStream::connect(d.api(), "").await;
    d.kill_agent();
    d.start_agent(2).await;
    let task2 = task.clone();
    es.wait_for(
        T,
        "unknown_instance_terminated_event for the ghost",
        move |e| {
            e.event == "unknown_instance_terminated_event" && e.data["instanceId"] == task2.as_str()
        },
    )
    .await;
    let ev = es
        .seen
        .iter()
        .find(|e| e.event == "unknown_instance_terminated_event")
        .unwrap();
    eprintln!("ghost event: {}", ev.data);
    let announced = std::time::Instant::now();
    assert_eq!(ev.data["slaveId"], d.node.as_str(), "{}", ev.data);
    // Generous on purpose (no timed assertions on a shared machine); the elapsed time is
    // printed. Today it is ~poll_wait (25 s), not ~grace: the agent only re-checks ghosts when
    // an assignment long-poll returns (berth-agent runtime.rs `reconcile`).
    wait_until(T, "the ghost container stopped", || async {
        !inspect(&name).is_some_and(|c| c.running)
    })
    .await;
    eprintln!(
        "ghost container stopped {:?} after the event (--ghost-grace 2): {:?}",
        announced.elapsed(),
        inspect(&name)
    );
    // The server never adopted it.
    let apps = d.api().get_ok("/v2/apps").await;
    assert_eq!(apps["apps"].as_array().map(Vec::len), Some(0), "{apps}");
}
