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

/// Serializes the test that restarts dockerd with every other Docker test, in this process
/// (cargo runs a file's tests as threads) and in others (another checkout's docker_e2e): every
/// test holds a shared `flock` on one file, the dockerd restart holds it exclusively.
struct DockerLock(#[allow(dead_code)] std::fs::File);

impl DockerLock {
    async fn acquire(exclusive: bool) -> DockerLock {
        let path = std::env::temp_dir().join("berth-docker-e2e.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let file = tokio::task::spawn_blocking(move || {
            let r = if exclusive {
                file.lock()
            } else {
                file.lock_shared()
            };
            r.map(|()| file)
        })
        .await
        .expect("lock task")
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        DockerLock(file)
    }
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
    /// Held until the containers are removed (fields drop after `Drop::drop`).
    _lock: DockerLock,
}

impl DockerCluster {
    async fn start(name: &str) -> DockerCluster {
        Self::start_locked(name, DockerLock::acquire(false).await).await
    }

    async fn start_locked(name: &str, lock: DockerLock) -> DockerCluster {
        let c = Cluster::start_server_only(name).await;
        let slot = (std::process::id() % 97) as u16 * 60 + (c.port % 7) * 8;
        let base = 40000 + slot;
        let mut d = DockerCluster {
            c,
            node: format!("de2e-{name}-{}", unique()),
            agent: None,
            ports: (base, base + 7),
            extra: Vec::new(),
            _lock: lock,
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
        // Prometheus' token for the agent's /metrics (the agent answers only its server else).
        let scrape = self.c.path().join("scrape.token");
        std::fs::write(&scrape, SCRAPE_TOKEN).expect("scrape token file");
        let child = Command::new(BERTH)
            .args(["agent", "--server", &self.c.url(), "--data-dir"])
            .arg(self.c.path().join("agent"))
            .arg("--join-token-file")
            .arg(self.c.join_token_file())
            .arg("--scrape-token-file")
            .arg(&scrape)
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

/// The agent URL the node advertises (`agentUrl` in `/api/v1/nodes`).
async fn agent_url(d: &DockerCluster) -> String {
    let r = d.api().get_ok("/api/v1/nodes").await;
    node_list(&r)
        .into_iter()
        .find(|n| n["id"] == d.node.as_str() || n["info"]["id"] == d.node.as_str())
        .and_then(|n| {
            n["agentUrl"]
                .as_str()
                .or_else(|| n["info"]["agentUrl"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("node {} advertises no agentUrl: {r}", d.node))
}

/// `berth task logs` of a running web task: the line it printed on stdout (and not the stderr
/// one), the stderr line with `--stderr`, `--tail 1`, and the same through the server's API.
async fn check_logs_of_running_task(d: &DockerCluster, task: &str) {
    let want = format!("hello from {task}");
    let r = d
        .api()
        .get(&format!("/api/v1/tasks/{task}/logs?stream=stdout"))
        .await;
    assert_eq!(r.status, 200, "GET logs of {task}: {}", r.text);
    assert!(r.text.contains(&want), "stdout of {task}: {:?}", r.text);
    assert!(
        !r.text.contains("warning on stderr"),
        "stdout: {:?}",
        r.text
    );
    let r = d
        .api()
        .get(&format!("/api/v1/tasks/{task}/logs?stream=stderr"))
        .await;
    assert_eq!(r.status, 200, "GET stderr of {task}: {}", r.text);
    assert!(r.text.contains("warning on stderr"), "stderr: {:?}", r.text);
    assert!(!r.text.contains(&want), "stderr: {:?}", r.text);
    let cli = |extra: &[&str]| {
        let out = Command::new(BERTH)
            .args(["--server", &d.c.url(), "task", "logs", task])
            .env("BERTH_TOKEN", d.c.admin_token())
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("running berth task logs");
        assert!(
            out.status.success(),
            "berth task logs {task} {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = cli(&["--tail", "1"]);
    assert_eq!(out.trim(), want, "berth task logs {task} --tail 1");
    let out = cli(&["--stderr"]);
    assert_eq!(
        out.trim(),
        "warning on stderr",
        "berth task logs {task} --stderr"
    );
    let out = cli(&["--tail", "0"]);
    assert_eq!(out.trim(), "", "berth task logs {task} --tail 0");
}

/// What the test's Prometheus presents to scrape the agent.
const SCRAPE_TOKEN: &str = "scrape-token-of-the-test";

/// The agent's `/metrics` has CPU, memory and the memory limit (`mem` MiB) of every task.
async fn check_metrics(d: &DockerCluster, app: &str, tasks: &BTreeMap<String, Value>, mem: u64) {
    let url = format!("{}/metrics", agent_url(d).await);
    let text = reqwest::Client::new()
        .get(&url)
        .bearer_auth(SCRAPE_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_default();
    for id in tasks.keys() {
        let labels = format!("{{app_id=\"{app}\",task_id=\"{id}\",node=\"{}\"}}", d.node);
        let value = |family: &str| -> f64 {
            let prefix = format!("{family}{labels} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {family}{labels} in {url}:\n{text}"))
        };
        let cpu = value("berth_task_cpu_seconds_total");
        let used = value("berth_task_memory_usage_bytes");
        let limit = value("berth_task_memory_limit_bytes");
        // Bridge networking: the container's own interfaces, which the health checks reach.
        let received = value("berth_task_network_receive_bytes_total");
        assert!(received > 0.0, "task {id}: {received} bytes received");
        eprintln!("metrics of {id}: cpu {cpu}s, memory {used} of {limit} bytes");
        assert!(
            cpu >= 0.0 && used > 0.0,
            "task {id}: cpu {cpu}, memory {used}"
        );
        assert_eq!(limit, (mem << 20) as f64, "task {id}: memory limit = mem");
    }
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
        // busybox httpd answers 404 for a directory without index.html: give it one. The two
        // lines are for the logs assertions.
        "cmd": "echo \"hello from $MESOS_TASK_ID\"; echo \"warning on stderr\" >&2; mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
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

    // Logs and metrics of docker tasks (through the server, and the agent's /metrics).
    let first = tasks.keys().next().cloned().unwrap_or_default();
    check_logs_of_running_task(&d, &first).await;
    check_metrics(&d, APP, &tasks, 32).await;

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

/// `logs?follow=true` of a docker task streams what it prints later and ends by itself when
/// the container exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_end_when_the_container_exits() {
    if !docker_available("followed_logs_end_when_the_container_exits") {
        return;
    }
    const APP: &str = "/de2e/chatty";
    let d = DockerCluster::start("docker-logs").await;
    let app = json!({
        "id": APP,
        "cmd": "echo first line; sleep 4; echo last line; exit 3",
        "cpus": 0.1, "mem": 16, "instances": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE}},
    });
    let r = d.api().post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    let tasks = running(&d, APP, 1).await;
    let task = tasks.keys().next().cloned().unwrap_or_default();
    let started = std::time::Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let token = d.c.admin_token();
    let token = token.as_str();
    let follow = |query: &'static str| {
        let http = http.clone();
        let url = d
            .api()
            .url(&format!("/api/v1/tasks/{task}/logs?follow=true{query}"));
        async move {
            http.get(&url)
                .bearer_auth(token)
                .send()
                .await
                .expect("GET logs?follow=true")
                .text()
                .await
                .expect("the followed logs end (not cut by the 60 s timeout)")
        }
    };
    // Both while the task sleeps between its two lines.
    let (all, tail1) = tokio::join!(follow(""), follow("&tail=1"));
    eprintln!(
        "followed logs of {task} ({:?}): {all:?}; with tail=1: {tail1:?}",
        started.elapsed()
    );
    assert_eq!(all, "first line\nlast line\n");
    assert_eq!(tail1, "first line\nlast line\n", "tail=1 then follow");
}

/// The pid of the running dockerd and its command line (to start it again the same way).
fn dockerd_process() -> Option<(i32, Vec<String>)> {
    let (ok, out) = match Command::new("pidof").arg("dockerd").output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        ),
        Err(_) => (false, String::new()),
    };
    let pid: i32 = if ok {
        out.split_whitespace().next()?.parse().ok()?
    } else {
        std::fs::read_to_string("/var/run/docker.pid")
            .ok()?
            .trim()
            .parse()
            .ok()?
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    (!args.is_empty()).then_some((pid, args))
}

/// Starts dockerd with `args` (its earlier command line), detached from this process, logging
/// to /var/log/berth-dockerd.log as scripts/test.sh does.
fn start_dockerd(args: &[String]) -> std::io::Result<u32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/log/berth-dockerd.log")?;
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: it must outlive this test process, like the original.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // Not waited for: dockerd keeps running after the test.
    Ok(cmd.spawn()?.id())
}

/// Starts dockerd again if a test stopped it and failed before starting it (other tests and
/// the next run need it).
struct DockerdBack(Vec<String>);

impl Drop for DockerdBack {
    fn drop(&mut self) {
        if dockerd_process().is_none() {
            eprintln!("dockerd is not running: starting it again ({:?})", self.0);
            if let Err(e) = start_dockerd(&self.0) {
                eprintln!("cannot start dockerd: {e}");
                return;
            }
            for _ in 0..60 {
                if docker_info_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn docker_info_ok() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// dockerd stopped (SIGTERM, no live-restore: its containers die with it) and started again
/// the way it ran before: the agent reports the dead containers, the server replaces them, and
/// the app ends with exactly `instances` running containers, none of them the old ones.
/// Holds the Docker test lock exclusively (no other Docker test runs meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_restart_is_reconciled() {
    if !docker_available("dockerd_restart_is_reconciled") {
        return;
    }
    // Restarting dockerd needs root.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        eprintln!("SKIPPED dockerd_restart_is_reconciled: restarting dockerd needs root");
        return;
    }
    const APP: &str = "/de2e/survivor";
    let lock = DockerLock::acquire(true).await;
    let d = DockerCluster::start_locked("docker-restart", lock).await;
    let mut es = EventStream::connect(d.api(), "").await;
    let app = json!({
        "id": APP,
        "cmd": "exec httpd -f -p 8080",
        "cpus": 0.1, "mem": 16, "instances": 2,
        "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE},
                      "portMappings": [{"containerPort": 8080, "hostPort": 0}]},
        "networks": [{"mode": "container/bridge"}],
    });
    let r = d.api().post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    let old = running(&d, APP, 2).await;
    let (pid, args) = dockerd_process().expect("the running dockerd's pid and command line");
    let _back = DockerdBack(args.clone());
    eprintln!("stopping dockerd (pid {pid}: {args:?})");
    let stopped = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(stopped.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    wait_until(T, "the old dockerd gone", || async {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    // Down for a moment: the agent must not give up on the engine.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new_pid = start_dockerd(&args).expect("starting dockerd again");
    eprintln!("started dockerd again (pid {new_pid})");
    wait_until(T, "docker info answers again", || async {
        docker_info_ok()
    })
    .await;

    // The old tasks are reported terminal and replaced; exactly 2 run, none of the old ones.
    for id in old.keys() {
        let id2 = id.clone();
        es.wait_for(T, &format!("a terminal status of {id}"), move |e| {
            e.event == "status_update_event"
                && e.data["taskId"] == id2.as_str()
                && matches!(
                    e.data["taskStatus"].as_str(),
                    Some("TASK_KILLED" | "TASK_FAILED" | "TASK_FINISHED" | "TASK_LOST")
                )
        })
        .await;
    }
    for e in es.seen.iter().filter(|e| {
        e.event == "status_update_event"
            && old.contains_key(e.data["taskId"].as_str().unwrap_or(""))
    }) {
        eprintln!(
            "old task {}: {} {}",
            e.data["taskId"], e.data["taskStatus"], e.data["message"]
        );
    }
    let new = wait_for(T, "2 new running tasks", || async {
        let ids = d.api().running_ids(APP).await;
        let all = d.api().tasks(APP).await.len();
        (ids.len() == 2 && all == 2 && ids.iter().all(|i| !old.contains_key(i))).then_some(ids)
    })
    .await;
    let fresh = running(&d, APP, 2).await;
    assert_eq!(fresh.keys().cloned().collect::<BTreeSet<_>>(), new);
    // Settle, then: no duplicates, no extra containers of this node running.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, ps) = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.node_id={}", d.node),
    ]);
    assert_eq!(
        ps.split_whitespace().count(),
        2,
        "running containers of the node: {ps}"
    );
    assert_eq!(d.api().tasks(APP).await.len(), 2);
}

/// Removes images (by reference) when dropped.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

/// A `docker-registry` (Debian's docker/distribution) on a loopback port, storing in a
/// temporary directory; stopped when dropped.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("running docker-registry: {e}"))?;
        let reg = Registry {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/v2/")).await
                && r.status().is_success()
            {
                return Ok(reg);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "docker-registry did not answer on 127.0.0.1:{port}"
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of `target` that holds every new connection for `delay` before
/// forwarding it: a slow registry. Returns its port; it lives as long as the test's runtime.
async fn slow_proxy(target: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

fn image_id(reference: &str) -> Option<String> {
    let (ok, out) = docker(&["image", "inspect", "-f", "{{.Id}}", reference]);
    ok.then_some(out)
}

/// An image only in the (slow) registry: the task stays TASK_STAGING while it is pulled and
/// runs once the image is there. Then `forcePullImage: true` pulls a newer image pushed under
/// the same tag although the old one is present: the new task runs the new image id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_keeps_task_staging_and_force_pull_gets_the_new_image() {
    if !docker_available("pull_keeps_task_staging_and_force_pull_gets_the_new_image") {
        return;
    }
    let required = std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let reg = match Registry::start().await {
        Ok(r) => r,
        Err(e) if !required => {
            eprintln!(
                "SKIPPED pull_keeps_task_staging_and_force_pull_gets_the_new_image: {e} (apt-get install docker-registry)"
            );
            return;
        }
        Err(e) => panic!("BERTH_REQUIRE_DOCKER=1 but the registry cannot run: {e}"),
    };
    let proxy = slow_proxy(reg.port, Duration::from_millis(1500)).await;
    let tag = format!("t{}", unique());
    let pushed = format!("127.0.0.1:{}/berth/busybox:{tag}", reg.port);
    // The same repository through the slow proxy: never present locally before the deploy.
    let pulled = format!("127.0.0.1:{proxy}/berth/busybox:{tag}");
    let _images = Images(vec![pushed.clone(), pulled.clone()]);
    let (ok, out) = docker(&["tag", IMAGE, &pushed]);
    assert!(ok, "docker tag: {out}");
    let (ok, out) = docker(&["push", &pushed]);
    assert!(ok, "docker push {pushed}: {out}");
    let (ok, out) = docker(&["rmi", &pushed]);
    assert!(ok, "docker rmi {pushed}: {out}");
    assert!(image_id(&pulled).is_none(), "{pulled} is already present");

    const APP: &str = "/de2e/pulled";
    let d = DockerCluster::start("docker-pull").await;
    let mut app = json!({
        "id": APP,
        "cmd": "exec sleep 3600",
        "cpus": 0.1, "mem": 16, "instances": 1,
        "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": pulled}},
    });
    let r = d.api().post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    // Watch the task: STAGING while the image is still absent, then RUNNING.
    let mut staging_while_absent = false;
    let mut states: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + T;
    loop {
        let tasks = d.api().tasks(APP).await;
        if let Some(t) = tasks.first() {
            let st = t["state"].as_str().unwrap_or("").to_string();
            if st == "TASK_STAGING" && image_id(&pulled).is_none() {
                staging_while_absent = true;
            }
            if states.last() != Some(&st) {
                states.push(st.clone());
            }
            if st == "TASK_RUNNING" {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pulled task is not running after {T:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("states seen during the pull: {states:?}");
    assert!(
        staging_while_absent,
        "the task was never seen TASK_STAGING while its image was being pulled: {states:?}"
    );
    let v1 = image_id(&pulled).expect("the image is present after the pull");
    let first = running(&d, APP, 1).await;

    // A new image under the same tag; the local one is older.
    let build = Command::new("docker")
        .args(["build", "-q", "-t", &pushed, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(
                    format!("FROM {IMAGE}\nLABEL berth.e2e.version=v2-{tag}\n").as_bytes(),
                )?;
            }
            c.wait_with_output()
        })
        .expect("docker build");
    assert!(
        build.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let v2 = image_id(&pushed).expect("the new image");
    assert_ne!(v1, v2);
    let (ok, out) = docker(&["push", &pushed]);
    assert!(ok, "docker push {pushed} (v2): {out}");
    assert_eq!(
        image_id(&pulled).as_deref(),
        Some(v1.as_str()),
        "local tag still v1"
    );

    app["container"]["docker"]["forcePullImage"] = json!(true);
    let r = d.api().put(&format!("/v2/apps{APP}"), &app).await;
    assert!(r.status < 300, "PUT /v2/apps{APP}: {} {}", r.status, r.text);
    let replaced = wait_for(T, "the force-pulled replacement running", || async {
        let tasks = running_now(&d, APP).await;
        (tasks.len() == 1 && !first.contains_key(&tasks[0])).then(|| tasks[0].clone())
    })
    .await;
    let (ok, image) = docker(&["inspect", "-f", "{{.Image}}", &container_of(&replaced)]);
    assert!(ok, "docker inspect {replaced}: {image}");
    assert_eq!(image, v2, "the force-pulled task runs the new image");
    assert_eq!(image_id(&pulled).as_deref(), Some(v2.as_str()));
}

/// Ids of the running tasks of `app` whose containers run.
async fn running_now(d: &DockerCluster, app: &str) -> Vec<String> {
    d.api()
        .running_ids(app)
        .await
        .into_iter()
        .filter(|id| inspect(&container_of(id)).is_some_and(|c| c.running))
        .collect()
}

/// Removes a Docker network when dropped.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

/// USER networking: Marathon 1.5+ `networks: [{mode: container, name}]` and Marathon 1.x
/// `docker.network: USER` + `ipAddress.networkName` both attach the container to the named
/// Docker network; a network that does not exist fails the task with a reason that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_networks_attach_containers_and_a_missing_one_fails_clearly() {
    if !docker_available("user_networks_attach_containers_and_a_missing_one_fails_clearly") {
        return;
    }
    let net = format!("berth-e2e-{}", unique());
    let (ok, out) = docker(&["network", "create", &net]);
    assert!(ok, "docker network create {net}: {out}");
    let _net = Network(net.clone());
    let d = DockerCluster::start("docker-net").await;
    let modern = json!({
        "id": "/de2e/net-modern", "cmd": "exec sleep 3600",
        "cpus": 0.1, "mem": 16, "instances": 1, "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE}},
        "networks": [{"mode": "container", "name": net}],
    });
    let legacy = json!({
        "id": "/de2e/net-legacy", "cmd": "exec sleep 3600",
        "cpus": 0.1, "mem": 16, "instances": 1, "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE, "network": "USER"}},
        "ipAddress": {"networkName": net},
    });
    let missing = format!("berth-missing-{}", unique());
    let broken = json!({
        "id": "/de2e/net-missing", "cmd": "exec sleep 3600",
        "cpus": 0.1, "mem": 16, "instances": 1, "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE}},
        "networks": [{"mode": "container", "name": missing}],
    });
    for app in [&modern, &legacy, &broken] {
        let r = d.api().post("/v2/apps", app).await;
        assert_eq!(r.status, 201, "POST /v2/apps {}: {}", app["id"], r.text);
    }
    for app in ["/de2e/net-modern", "/de2e/net-legacy"] {
        let tasks = running(&d, app, 1).await;
        let (id, t) = tasks.iter().next().expect("one task");
        let (ok, nets) = docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
            &container_of(id),
        ]);
        assert!(ok, "docker inspect {id}: {nets}");
        eprintln!("{app}: task {id} networks {nets}; task {t}");
        assert!(
            nets.split_whitespace()
                .any(|n| n.starts_with(&format!("{net}=")) && !n.ends_with('=')),
            "{app}: container of {id} is not on {net} with an address: {nets}"
        );
        assert_eq!(
            nets.split_whitespace().count(),
            1,
            "{app}: only {net}: {nets}"
        );
    }
    let failure = wait_for(
        T,
        "lastTaskFailure of the app on a missing network",
        || async {
            let a = d.api().get_ok("/v2/apps/de2e/net-missing").await;
            let f = a["app"]["lastTaskFailure"].clone();
            f.is_object().then_some(f)
        },
    )
    .await;
    eprintln!("missing network: lastTaskFailure {failure}");
    let msg = failure["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&missing) && msg.contains("not found"),
        "lastTaskFailure does not name the missing network {missing}: {failure}"
    );
    assert_eq!(failure["state"], "TASK_FAILED", "{failure}");
}

/// With lxcfs running on the node, `/proc/meminfo` in the container shows the app's `mem` as
/// MemTotal (and the other lxcfs files are mounted). Skipped, with the reason, without lxcfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lxcfs_shows_the_memory_limit_in_proc_meminfo() {
    if !docker_available("lxcfs_shows_the_memory_limit_in_proc_meminfo") {
        return;
    }
    let meminfo = "/var/lib/lxcfs/proc/meminfo";
    if std::fs::read_to_string(meminfo).is_err() {
        eprintln!(
            "SKIPPED lxcfs_shows_the_memory_limit_in_proc_meminfo: lxcfs is not running ({meminfo} is not readable; scripts/test.sh starts it)"
        );
        return;
    }
    const APP: &str = "/de2e/lxcfs";
    let d = DockerCluster::start("docker-lxcfs").await;
    let app = json!({
        "id": APP, "cmd": "exec sleep 3600",
        "cpus": 0.1, "mem": 48, "instances": 1, "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE}},
    });
    let r = d.api().post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    let tasks = running(&d, APP, 1).await;
    let id = tasks.keys().next().cloned().unwrap_or_default();
    let (ok, out) = docker(&["exec", &container_of(&id), "head", "-1", "/proc/meminfo"]);
    assert!(ok, "docker exec head /proc/meminfo: {out}");
    let kb: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        kb.get(..2),
        Some(&["MemTotal:", "49152"][..]),
        "container /proc/meminfo: {out}"
    );
    let (_, mounts) = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Destination}} {{end}}",
        &container_of(&id),
    ]);
    for f in [
        "meminfo",
        "cpuinfo",
        "stat",
        "uptime",
        "loadavg",
        "diskstats",
        "swaps",
    ] {
        assert!(
            mounts.split_whitespace().any(|m| m == format!("/proc/{f}")),
            "/proc/{f} not mounted from lxcfs: {mounts}"
        );
    }
}

/// Runs `berth dev` with `extra` arguments until it prints its `Docker driver:` line; returns
/// that line.
fn dev_docker_line(extra: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(BERTH)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning berth dev");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.trim_start().starts_with("Docker driver:") {
                line = l.trim().to_string();
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    line
}

/// `berth dev` says whether Docker apps can run: on, with the engine's address and API
/// version, when the socket answers; off, with the reason, when it does not.
#[test]
fn dev_says_whether_it_uses_docker() {
    let on = dev_docker_line(&[]);
    if docker_info_ok() {
        assert!(
            on.starts_with("Docker driver: on (unix:///var/run/docker.sock, API 1."),
            "{on:?}"
        );
    }
    let off = dev_docker_line(&["--docker-socket", "/nonexistent/docker.sock"]);
    assert!(off.starts_with("Docker driver: off ("), "{off:?}");
    assert!(
        off.contains("/nonexistent/docker.sock") && off.contains("wait in the queue"),
        "{off:?}"
    );
}

/// A `berth dev` on a temporary data dir stops its containers on exit and removes them (and
/// the ones that had already exited): nobody could ever re-attach to them, so anything left
/// would be a ghost no agent cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_dev_removes_its_containers_on_exit() {
    if !docker_available("temporary_dev_removes_its_containers_on_exit") {
        return;
    }
    let _lock = DockerLock::acquire(false).await;
    let node = format!("de2e-devexit-{}", unique());
    let port = free_port();
    let mut child = Command::new(BERTH)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--node-id", &node, "--cpus", "4", "--mem", "4096"])
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning berth dev");
    let label = format!("label=berth.node_id={node}");
    let containers = || {
        let (_, out) = docker(&["ps", "-aq", "--filter", &label]);
        out.lines().count()
    };
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    wait_until(T, "berth dev answers", || {
        let api = api.clone();
        async move { api.try_raw(Method::GET, "/ping", None).await.is_ok() }
    })
    .await;
    let app = |id: &str, cmd: &str, n: u64| {
        json!({"id": id, "cmd": cmd, "cpus": 0.01, "mem": 16, "instances": n,
               "container": {"type": "DOCKER", "docker": {"image": IMAGE}}})
    };
    // `sleep` as PID 1 ignores SIGTERM: each stop waits out the grace period.
    let r = api
        .post("/v2/apps", &app("/devexit/sleep", "exec sleep 3600", 3))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let r = api
        .post("/v2/apps", &app("/devexit/fail", "exit 3", 1))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    api.wait_running("/devexit/sleep", 3, T).await;
    wait_until(T, "the failing app to have failed", || {
        let api = api.clone();
        async move {
            let j = api.get_ok("/v2/apps/devexit/fail").await;
            j["app"]["lastTaskFailure"]["state"] == "TASK_FAILED"
        }
    })
    .await;
    assert!(containers() >= 3, "no containers of node {node}");

    let pid = child.id().to_string();
    assert!(run_ok("kill", &["-INT", &pid]), "kill -INT {pid}");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + T;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                _ if std::time::Instant::now() > deadline => {
                    let _ = child.kill();
                    return None;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await
    .expect("waiting for berth dev");
    let left = containers();
    if left > 0 {
        let (_, ids) = docker(&["ps", "-aq", "--filter", &label]);
        let ids: Vec<&str> = ids.lines().collect();
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        docker(&args);
    }
    assert!(
        exited.is_some_and(|s| s.success()),
        "berth dev did not exit cleanly: {exited:?}"
    );
    assert_eq!(left, 0, "containers of the temporary dev left behind");
}

/// Runs a command: whether it succeeded.
fn run_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Containers of `node` created since `since` (a `date +%s.%N` instant), from docker events.
fn containers_created_since(node: &str, since: &str) -> usize {
    let until = format!(
        "{:.3}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    );
    let (ok, out) = docker(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &format!("label=berth.node_id={node}"),
    ]);
    assert!(ok, "docker events: {out}");
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

fn unix_now() -> String {
    format!(
        "{:.3}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    )
}

/// Runs job `name` `n` times, one after the other; returns its runs (newest first).
async fn run_job_times(api: &Api, name: &str, n: u64) -> Vec<Value> {
    let ended =
        |j: &Value| j["successCount"].as_u64().unwrap_or(0) + j["errorCount"].as_u64().unwrap_or(0);
    let before = ended(&api.get_ok(&format!("/scheduler/job/{name}")).await);
    for k in 1..=n {
        let r = api.put(&format!("/scheduler/job/{name}"), &json!({})).await;
        assert_eq!(r.status, 204, "run {k} of {name}: {}", r.text);
        wait_until(T, &format!("run {k} of {name} ends"), || {
            let api = api.clone();
            let name = name.to_string();
            async move {
                let j = api.get_ok(&format!("/scheduler/job/{name}")).await;
                ended(&j) >= before + k
            }
        })
        .await;
    }
    let v = api.get_ok(&format!("/api/v1/jobs/{name}/runs")).await;
    v["runs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_job_runs_share_one_container_and_per_run_jobs_get_one_each() {
    if !docker_available("warm_job_runs_share_one_container_and_per_run_jobs_get_one_each") {
        return;
    }
    let d = DockerCluster::start("warmjobs").await;
    let api = d.api().clone();
    let later = berth_core::time::format_millis(berth_core::time::now_millis() + 3_600_000);
    for (name, mode) in [("warm20", "warm"), ("cold20", "per-run")] {
        let r = api
            .post(
                "/scheduler/iso8601",
                &json!({"name": name, "command": "echo run $MESOS_TASK_ID", "runMode": mode,
                        "retries": 0, "cpus": 0.1, "mem": 32,
                        "container": {"type": "DOCKER", "image": IMAGE},
                        "schedule": format!("R/{later}/PT1H")}),
            )
            .await;
        assert_eq!(r.status, 204, "{name}: {}", r.text);
    }
    let since = unix_now();
    let warm = run_job_times(&api, "warm20", 20).await;
    let warm_created = containers_created_since(&d.node, &since);
    assert_eq!(warm.len(), 20);
    assert!(
        warm.iter()
            .all(|r| r["status"] == "success" && r["exitCode"] == 0),
        "{warm:#?}"
    );
    assert_eq!(warm_created, 1, "20 warm runs, one container");
    // Each run's output is its own, through the same logs API.
    for r in warm.iter().take(3) {
        let logs = api
            .get(&format!("/api/v1/jobs/warm20/runs/{}/logs", r["id"]))
            .await;
        assert_eq!(logs.status, 200, "{}", logs.text);
        assert_eq!(
            logs.text.trim(),
            format!("run {}", r["taskId"].as_str().unwrap())
        );
    }
    let since = unix_now();
    let cold = run_job_times(&api, "cold20", 20).await;
    assert!(cold.iter().all(|r| r["status"] == "success"), "{cold:#?}");
    assert_eq!(
        containers_created_since(&d.node, &since),
        20,
        "one container per run"
    );
    // A finished per-run run's container is removed; its output is kept for `berth job logs`.
    let old = &cold[10];
    let container = format!("berth-{}", old["taskId"].as_str().unwrap());
    wait_until(T, "the finished run's container is removed", || {
        let container = container.clone();
        async move { inspect(&container).is_none() }
    })
    .await;
    let logs = api
        .get(&format!("/api/v1/jobs/cold20/runs/{}/logs", old["id"]))
        .await;
    assert_eq!(logs.status, 200, "{}", logs.text);
    assert_eq!(
        logs.text.trim(),
        format!("run {}", old["taskId"].as_str().unwrap())
    );
    // A failing warm run reports its exit code; the container stays and is reused.
    let r = api
        .post(
            "/scheduler/iso8601",
            &json!({"name": "warm20", "command": "exit 3", "runMode": "warm", "retries": 0,
                    "cpus": 0.1, "mem": 32, "container": {"type": "DOCKER", "image": IMAGE},
                    "schedule": format!("R/{later}/PT1H")}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let since = unix_now();
    let runs = run_job_times(&api, "warm20", 1).await;
    assert_eq!(runs[0]["status"], "failure", "{}", runs[0]);
    assert_eq!(runs[0]["exitCode"], 3, "{}", runs[0]);
    assert_eq!(
        containers_created_since(&d.node, &since),
        0,
        "the warm container is reused"
    );
}
