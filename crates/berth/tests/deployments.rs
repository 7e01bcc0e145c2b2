//! Issue #4: deployments, drain, node loss and back-off against the real `berth` binary (a
//! server and exec-driver agents as child processes). Every invariant is checked on recorded
//! facts: the `/v2/events` stream replayed event by event, `/v2/queue` samples, and the task
//! processes found in `/proc` by `MESOS_TASK_ID`.

mod common;
#[path = "deployments/harness.rs"]
mod harness;

use common::{EventStream, Proc, Sse, processes, wait_for, wait_until, without_forks};
use harness::Env;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- apps

/// An app serving `<sandbox>/www` with busybox httpd on $PORT0, HTTP-health-checked on
/// `check_path`. `prelude` runs first (e.g. `sleep 2` to be slow to become healthy).
fn web_app(id: &str, instances: u32, tag: &str, prelude: &str, check_path: &str) -> Value {
    json!({
        "id": id,
        "cmd": format!(
            "{prelude} mkdir -p www && echo {tag} > www/index.html && echo ok > www/health && exec busybox httpd -f -p $PORT0 -h www"
        ),
        "cpus": 0.1,
        "mem": 16,
        "instances": instances,
        "portDefinitions": [{"port": 0}],
        "taskKillGracePeriodSeconds": 1,
        "healthChecks": [{
            "protocol": "HTTP", "path": check_path, "portIndex": 0,
            "intervalSeconds": 1, "gracePeriodSeconds": 5, "timeoutSeconds": 1,
            "maxConsecutiveFailures": 3, "delaySeconds": 0
        }],
    })
}

fn strategy(min: f64, over: f64) -> Value {
    json!({"minimumHealthCapacity": min, "maximumOverCapacity": over})
}

/// `POST /v2/apps`; returns the deployment id.
async fn create(env: &Env, app: &Value) -> String {
    let r = env.api.post("/v2/apps", app).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    r.json["deployments"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployment id in {}", r.text))
        .to_string()
}

/// `PUT /v2/apps/{id}`; returns (version, deployment id).
async fn update(env: &Env, app: &Value) -> (String, String) {
    update_q(env, app, "").await
}

/// `PUT /v2/apps/{id}{query}`; returns (version, deployment id).
async fn update_q(env: &Env, app: &Value, query: &str) -> (String, String) {
    let id = app["id"].as_str().unwrap();
    let r = env.api.put(&format!("/v2/apps{id}{query}"), app).await;
    assert!(r.status == 200 || r.status == 201, "PUT {id}: {}", r.text);
    (
        r.json["version"].as_str().unwrap().to_string(),
        r.json["deploymentId"].as_str().unwrap().to_string(),
    )
}

fn is_success_of(id: &str) -> impl Fn(&Sse) -> bool + '_ {
    move |e: &Sse| e.event == "deployment_success" && e.data["id"] == id
}

fn task_alive(t: &Value) -> bool {
    t["healthCheckResults"]
        .as_array()
        .is_some_and(|h| !h.is_empty() && h.iter().all(|r| r["alive"] == true))
}

fn ids_of(tasks: &[Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- event model

const LIVE_STATES: [&str; 5] = [
    "TASK_STAGING",
    "TASK_STARTING",
    "TASK_RUNNING",
    "TASK_KILLING",
    "TASK_UNREACHABLE",
];

#[derive(Debug, Clone, Default)]
struct TaskRec {
    state: String,
    alive: bool,
    version: String,
}

/// Per-task state and health of one app, as the event stream tells it.
#[derive(Debug, Default)]
struct Model {
    tasks: BTreeMap<String, TaskRec>,
}

impl Model {
    /// Starts from what the API shows (when nothing is moving).
    fn from_tasks(tasks: &[Value]) -> Model {
        let mut m = Model::default();
        for t in tasks {
            m.tasks.insert(
                t["id"].as_str().unwrap().to_string(),
                TaskRec {
                    state: t["state"].as_str().unwrap_or("").to_string(),
                    alive: task_alive(t),
                    version: t["version"].as_str().unwrap_or("").to_string(),
                },
            );
        }
        m
    }

    /// Applies one event if it is about `app`; true if it changed the model.
    fn apply(&mut self, app: &str, e: &Sse) -> bool {
        if e.data["appId"] != app {
            return false;
        }
        let Some(id) = e.data["taskId"].as_str() else {
            return false;
        };
        match e.event.as_str() {
            "status_update_event" => {
                let r = self.tasks.entry(id.to_string()).or_default();
                r.state = e.data["taskStatus"].as_str().unwrap_or("").to_string();
                r.version = e.data["version"].as_str().unwrap_or("").to_string();
                true
            }
            "health_status_changed_event" => {
                let r = self.tasks.entry(id.to_string()).or_default();
                r.alive = e.data["alive"] == true;
                true
            }
            _ => false,
        }
    }

    fn live(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| LIVE_STATES.contains(&t.state.as_str()))
            .count()
    }

    fn healthy(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.state == "TASK_RUNNING" && t.alive)
            .count()
    }

    fn healthy_ids(&self) -> BTreeSet<String> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.state == "TASK_RUNNING" && t.alive)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn summary(&self) -> String {
        self.tasks
            .iter()
            .map(|(id, t)| {
                format!(
                    "{}={}{}",
                    id.rsplit('.').next().unwrap_or(id),
                    t.state,
                    if t.alive { "+" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Samples, every 20 ms on a thread, the (task id, pid) pairs of an app's `program`
/// processes: a task started twice shows up with two pids.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<(String, i32)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(app_id: &str, program: &str) -> Sampler {
        let (app_id, program) = (app_id.to_string(), program.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let mine: Vec<Proc> = processes()
                    .into_iter()
                    .filter(|p| p.program() == program && p.env_is("MARATHON_APP_ID", &app_id))
                    .collect();
                for p in without_forks(mine) {
                    let id = p.env.get("MESOS_TASK_ID").cloned().unwrap_or_default();
                    seen2.lock().unwrap().insert((id, p.pid));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn pids_of(&self, task: &str) -> Vec<i32> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == task)
            .map(|(_, p)| *p)
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- 1. rolling upgrade

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_stays_within_the_strategy_bounds() {
    let mut env = Env::start("roll", None).await;
    env.add_agent("a1", &[("rack", "r1")]).await;
    let app = env.app_id("web");
    let mut es = EventStream::connect(&env.api, "").await;

    let mut v1 = web_app(&app, 4, "v1", "", "/");
    v1["upgradeStrategy"] = strategy(0.5, 0.25);
    let d1 = create(&env, &v1).await;
    es.wait_for(T, "deployment of v1", is_success_of(&d1)).await;
    let mut m = Model::default();
    for e in &es.seen {
        m.apply(&app, e);
    }
    assert_eq!(m.healthy(), 4, "v1 deployed: {}", m.summary());
    let start = es.seen.len();

    let mut v2 = v1.clone();
    v2["cmd"] = json!(v1["cmd"].as_str().unwrap().replace("echo v1", "echo v2"));
    let (version, d2) = update(&env, &v2).await;
    es.wait_for(T, "deployment of v2", is_success_of(&d2)).await;

    let (mut min_healthy, mut max_live) = (usize::MAX, 0);
    for (i, e) in es.seen[start..].iter().enumerate() {
        if !m.apply(&app, e) {
            continue;
        }
        min_healthy = min_healthy.min(m.healthy());
        max_live = max_live.max(m.live());
        assert!(
            m.healthy() >= 2,
            "event {i} ({} {}): healthy {} < ceil(0.5 x 4): {}",
            e.event,
            e.data,
            m.healthy(),
            m.summary()
        );
        assert!(
            m.live() <= 5,
            "event {i} ({} {}): {} live tasks > 4 + floor(0.25 x 4): {}",
            e.event,
            e.data,
            m.live(),
            m.summary()
        );
    }
    eprintln!("rolling upgrade: min healthy {min_healthy}, max live {max_live}");
    let new_healthy: BTreeSet<String> = m
        .healthy_ids()
        .into_iter()
        .filter(|id| m.tasks[id].version == version)
        .collect();
    assert_eq!(new_healthy.len(), 4, "events at the end: {}", m.summary());
    assert_eq!(m.live(), 4, "events at the end: {}", m.summary());

    let tasks = env.api.tasks(&app).await;
    assert_eq!(tasks.len(), 4, "tasks: {tasks:?}");
    assert!(
        tasks
            .iter()
            .all(|t| t["version"] == version.as_str() && t["state"] == "TASK_RUNNING"),
        "{tasks:?}"
    );
    assert_eq!(ids_of(&tasks), new_healthy);
    assert!(env.api.deployments().await.is_empty());
}

// ---------------------------------------------------------------- 2. failing new version

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_new_version_blocks_and_rolls_back() {
    let mut env = Env::start("failing", None).await;
    env.add_agent("a1", &[("rack", "r1")]).await;
    let app = env.app_id("web");
    let mut es = EventStream::connect(&env.api, "").await;

    let mut v1 = web_app(&app, 2, "v1", "", "/health");
    v1["upgradeStrategy"] = strategy(1.0, 1.0);
    let d1 = create(&env, &v1).await;
    es.wait_for(T, "deployment of v1", is_success_of(&d1)).await;
    let old = env.api.wait_running(&app, 2, T).await;
    let old_ids = ids_of(&old);
    let old_version = old[0]["version"].as_str().unwrap().to_string();
    let old_pids = env.task_pids(&app, "busybox");
    assert_eq!(old_pids.keys().cloned().collect::<BTreeSet<_>>(), old_ids);

    // v2 serves no /health (404) and ignores SIGTERM, so killing it takes the kill grace.
    let mut v2 = v1.clone();
    v2["cmd"] = json!(format!(
        "trap '' TERM; {}",
        v1["cmd"]
            .as_str()
            .unwrap()
            .replace("echo v1", "echo v2")
            .replace("&& echo ok > www/health ", "")
    ));
    v2["healthChecks"][0]["gracePeriodSeconds"] = json!(1);
    v2["healthChecks"][0]["maxConsecutiveFailures"] = json!(0);
    v2["taskKillGracePeriodSeconds"] = json!(2);
    let (_, d2) = update(&env, &v2).await;

    let blocked = wait_for(T, "blocked mentions the failing health check", || async {
        let r = env.api.get(&format!("/api/v1/deployments/{d2}")).await;
        assert_eq!(r.status, 200, "the deployment must stay: {}", r.text);
        let b = r.json["blocked"].as_str().unwrap_or("").to_string();
        b.to_lowercase().contains("health check").then_some(b)
    })
    .await;
    eprintln!("blocked: {blocked}");
    assert!(
        blocked.contains("404"),
        "the cause is the HTTP 404: {blocked}"
    );
    // Two more check intervals: nothing changes for the old instances.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = env.api.get(&format!("/api/v1/deployments/{d2}")).await;
    assert_eq!(
        r.status, 200,
        "deployment {d2} must still exist: {}",
        r.text
    );
    let tasks = env.api.tasks(&app).await;
    let still: Vec<&Value> = tasks
        .iter()
        .filter(|t| old_ids.contains(t["id"].as_str().unwrap()))
        .collect();
    assert_eq!(still.len(), 2, "old instances must keep serving: {tasks:?}");
    for t in &still {
        assert_eq!(t["state"], "TASK_RUNNING", "{t}");
        assert!(task_alive(t), "old instance still healthy: {t}");
    }
    let new: Vec<&Value> = tasks
        .iter()
        .filter(|t| !old_ids.contains(t["id"].as_str().unwrap()))
        .collect();
    assert!(!new.is_empty(), "new instances were started: {tasks:?}");
    assert!(new.iter().all(|t| !task_alive(t)), "{new:?}");
    // The old processes are the same ones, and none was ever killed.
    assert_eq!(env.task_pids(&app, "busybox").len(), 2 + new.len());
    for (id, pids) in &old_pids {
        assert_eq!(env.task_pids(&app, "busybox").get(id), Some(pids));
    }
    es.drain_for(Duration::from_millis(100)).await;
    for e in &es.seen {
        if e.event == "status_update_event"
            && old_ids.contains(e.data["taskId"].as_str().unwrap_or(""))
        {
            assert!(
                LIVE_STATES.contains(&e.data["taskStatus"].as_str().unwrap_or("")),
                "an old instance ended: {}",
                e.data
            );
        }
    }

    // Cancel without force: a rollback deployment.
    let r = env.api.delete(&format!("/v2/deployments/{d2}")).await;
    assert_eq!(r.status, 200, "DELETE /v2/deployments/{d2}: {}", r.text);
    let rollback = r.json["deploymentId"]
        .as_str()
        .unwrap_or_else(|| panic!("no deploymentId: {}", r.text))
        .to_string();
    assert_ne!(rollback, d2);
    let r = env
        .api
        .get(&format!("/api/v1/deployments/{rollback}"))
        .await;
    assert_eq!(r.status, 200, "rollback deployment: {}", r.text);
    assert_eq!(r.json["rollbackOf"], d2.as_str(), "{}", r.text);
    es.wait_for(T, "the rollback to finish", is_success_of(&rollback))
        .await;
    assert!(
        es.seen
            .iter()
            .any(|e| e.event == "deployment_failed" && e.data["id"] == d2.as_str()),
        "the cancelled deployment is reported failed"
    );
    let tasks = env.api.wait_running(&app, 2, T).await;
    assert_eq!(ids_of(&tasks), old_ids, "the old instances remain");
    assert!(tasks.iter().all(task_alive), "{tasks:?}");
    let a = env.api.get_ok(&format!("/v2/apps{app}")).await;
    assert_eq!(a["app"]["cmd"], v1["cmd"], "the old config is back");
    assert_ne!(old_version, a["app"]["version"].as_str().unwrap_or(""));
    wait_until(Duration::from_secs(10), "v2 processes gone", || async {
        env.task_pids(&app, "busybox") == old_pids
    })
    .await;
    assert!(env.api.deployments().await.is_empty());
}

// ---------------------------------------------------------------- 3. back-off

/// Follows `/v2/queue`'s `delay.timeLeftSeconds` of one app; a new delay shows as a rise.
struct QueueWatch {
    app: String,
    last: f64,
}

impl QueueWatch {
    async fn time_left(&self, env: &Env) -> f64 {
        let q = env.api.get_ok("/v2/queue").await;
        q["queue"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["app"]["id"] == self.app.as_str())
            .and_then(|i| i["delay"]["timeLeftSeconds"].as_f64())
            .unwrap_or(0.0)
    }

    /// Waits for the next delay to start; returns its first `timeLeftSeconds` sample and
    /// when the rise was seen.
    async fn next_delay(&mut self, env: &Env) -> (f64, Instant) {
        let deadline = Instant::now() + T;
        loop {
            let v = self.time_left(env).await;
            let rose = v > self.last + 0.25;
            self.last = v;
            if rose {
                return (v, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "no new launch delay within {T:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn staged_ids(es: &EventStream, app: &str) -> BTreeSet<String> {
    es.seen
        .iter()
        .filter(|e| {
            e.event == "status_update_event"
                && e.data["appId"] == app
                && e.data["taskStatus"] == "TASK_STAGING"
        })
        .map(|e| e.data["taskId"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits for a task launch not in `known`; returns how long it took.
async fn next_launch(es: &mut EventStream, app: &str, known: &BTreeSet<String>) -> Duration {
    let t0 = Instant::now();
    let app2 = app.to_string();
    let known2 = known.clone();
    es.wait_for(Duration::from_secs(10), "a new launch", move |e| {
        e.event == "status_update_event"
            && e.data["appId"] == app2.as_str()
            && e.data["taskStatus"] == "TASK_STAGING"
            && !known2.contains(e.data["taskId"].as_str().unwrap_or(""))
    })
    .await;
    t0.elapsed()
}

fn approx(v: f64, expected: f64) -> bool {
    // Sampled a little after the failure (polling, report latency), never above.
    v <= expected + 0.05 && v > expected - 0.7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_grows_is_capped_and_resets() {
    let mut env = Env::start("backoff", None).await;
    env.add_agent("a1", &[("rack", "r1")]).await;
    let app = env.app_id("crash");
    let mut es = EventStream::connect(&env.api, "").await;
    let mut def = common::cmd_app(&app, "echo crashing; exit 1", 1);
    def["backoffSeconds"] = json!(1);
    def["backoffFactor"] = json!(2);
    def["maxLaunchDelaySeconds"] = json!(4);
    create(&env, &def).await;

    let mut q = QueueWatch {
        app: app.clone(),
        last: 0.0,
    };
    let mut delays = Vec::new();
    for _ in 0..4 {
        delays.push(q.next_delay(&env).await.0);
    }
    eprintln!("delays: {delays:?}");
    for (got, want) in delays.iter().zip([1.0, 2.0, 4.0, 4.0]) {
        assert!(
            approx(*got, want),
            "delays {delays:?}: expected 1, 2, 4, 4 (capped)"
        );
    }
    let a = env.api.get_ok(&format!("/v2/apps{app}")).await;
    let f = &a["app"]["lastTaskFailure"];
    assert_eq!(f["state"], "TASK_FAILED", "lastTaskFailure: {a}");
    assert_eq!(f["appId"], app.as_str());

    // DELETE /v2/queue/{id}/delay: the next launch happens at once, and the back-off
    // starts over.
    let left = q.time_left(&env).await;
    assert!(left > 2.5, "still in the capped delay: {left}");
    es.drain_for(Duration::from_millis(50)).await;
    let known = staged_ids(&es, &app);
    let r = env
        .api
        .send(Method::DELETE, &format!("/v2/queue{app}/delay"), None)
        .await;
    assert_eq!(r.status, 204, "DELETE delay: {}", r.text);
    q.last = 0.0;
    let took = next_launch(&mut es, &app, &known).await;
    assert!(
        took < Duration::from_millis(1500),
        "relaunch after the reset took {took:?} (delay left was {left}s)"
    );
    let (d, _) = q.next_delay(&env).await;
    assert!(approx(d, 1.0), "back-off starts over after the reset: {d}");
    let (d, _) = q.next_delay(&env).await;
    assert!(approx(d, 2.0), "then grows again: {d}");

    // A new version resets it too.
    es.drain_for(Duration::from_millis(50)).await;
    let known = staged_ids(&es, &app);
    def["cmd"] = json!("echo crashing v2; exit 1");
    // The crash-looping first deployment never finishes: the app is locked without force.
    let (version, _) = update_q(&env, &def, "?force=true").await;
    q.last = 0.0;
    let took = next_launch(&mut es, &app, &known).await;
    assert!(
        took < Duration::from_millis(1500),
        "the new version launched after {took:?}"
    );
    let (d, _) = q.next_delay(&env).await;
    assert!(
        approx(d, 1.0),
        "back-off starts over for a new version: {d}"
    );
    let a = env.api.get_ok(&format!("/v2/apps{app}")).await;
    assert_eq!(
        a["app"]["lastTaskFailure"]["version"],
        version.as_str(),
        "{a}"
    );
}

// ---------------------------------------------------------------- 4. node loss

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_replaces_and_the_surplus_goes_when_it_returns() {
    let mut env = Env::start("nodeloss", Some(3)).await;
    for (id, rack) in [("a1", "r1"), ("a2", "r2"), ("a3", "r3")] {
        env.add_agent(id, &[("rack", rack)]).await;
    }
    let app = env.app_id("svc");
    let mut def = common::cmd_app(&app, "exec sleep 100000", 2);
    def["constraints"] = json!([["hostname", "UNIQUE"]]);
    def["unreachableStrategy"] = json!({"inactiveAfterSeconds": 2, "expungeAfterSeconds": 3600});
    def["taskKillGracePeriodSeconds"] = json!(1);
    create(&env, &def).await;
    let tasks = env.api.wait_running(&app, 2, T).await;
    env.api.wait_no_deployments(T).await;
    let nodes: BTreeMap<String, String> = tasks
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["slaveId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let used: BTreeSet<&String> = nodes.values().collect();
    assert_eq!(used.len(), 2, "hostname:UNIQUE: {tasks:?}");
    let (lost_task, victim) = nodes
        .iter()
        .next()
        .map(|(t, n)| (t.clone(), n.clone()))
        .unwrap();
    let spare = ["a1", "a2", "a3"]
        .into_iter()
        .find(|n| !used.contains(&n.to_string()))
        .unwrap()
        .to_string();
    let pids = env.task_pids(&app, "sleep");
    let lost_pid = pids[&lost_task][0];

    // Cut the victim's agent off.
    env.pause_agent(&victim);
    let paused = Instant::now();
    env.wait_node_status(&victim, "unreachable", Duration::from_secs(15))
        .await;
    let unreachable_after = paused.elapsed();
    assert!(
        // Heartbeats come every node-timeout / 4 = 750 ms.
        unreachable_after >= Duration::from_millis(2100),
        "unreachable after {unreachable_after:?}, before --node-timeout 3 s minus a heartbeat"
    );
    let t = env
        .api
        .tasks(&app)
        .await
        .into_iter()
        .find(|t| t["id"] == lost_task.as_str())
        .expect("the lost task is still listed");
    assert_eq!(t["state"], "TASK_UNREACHABLE", "{t}");
    let marked = Instant::now();

    // A replacement starts on the spare node once inactiveAfterSeconds passed.
    let replacement = wait_for(T, "a replacement on the spare node", || async {
        env.api
            .running_tasks(&app)
            .await
            .into_iter()
            .find(|t| t["slaveId"] == spare.as_str())
            .map(|t| t["id"].as_str().unwrap().to_string())
    })
    .await;
    assert!(
        marked.elapsed() >= Duration::from_millis(1500),
        "replaced after {:?}, before inactiveAfterSeconds 2",
        marked.elapsed()
    );
    wait_until(T, "the replacement's process", || async {
        env.task_pids(&app, "sleep").contains_key(&replacement)
    })
    .await;
    // The cut-off agent stopped nothing: its task's process kept running all along.
    assert_eq!(
        env.task_pids(&app, "sleep").get(&lost_task),
        Some(&vec![lost_pid]),
        "the partitioned node's task process must keep running"
    );
    assert!(env.node(&victim).await.unwrap()["status"] == "unreachable");

    // Bring it back: the surplus is killed, exactly 2 instances remain.
    env.resume_agent(&victim);
    env.wait_node_status(&victim, "ready", T).await;
    let tasks = wait_for(T, "exactly 2 running instances", || async {
        let all = env.api.tasks(&app).await;
        (all.len() == 2 && all.iter().all(|t| t["state"] == "TASK_RUNNING")).then_some(all)
    })
    .await;
    let hosts: BTreeSet<&str> = tasks.iter().map(|t| t["host"].as_str().unwrap()).collect();
    let slaves: BTreeSet<&str> = tasks
        .iter()
        .map(|t| t["slaveId"].as_str().unwrap())
        .collect();
    assert_eq!(slaves.len(), 2, "still one per host: {tasks:?} ({hosts:?})");
    let ids = ids_of(&tasks);
    wait_until(
        Duration::from_secs(10),
        "the surplus process gone",
        || async {
            let p = env.task_pids(&app, "sleep");
            p.keys().cloned().collect::<BTreeSet<_>>() == ids && p.values().all(|v| v.len() == 1)
        },
    )
    .await;
    // Stays at exactly 2.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids_of(&env.api.tasks(&app).await), ids);
    assert!(env.api.deployments().await.is_empty());
}

// ---------------------------------------------------------------- 5. drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_tasks_without_losing_health() {
    let mut env = Env::start("drain", None).await;
    env.add_agent("a1", &[("rack", "r1")]).await;
    let app = env.app_id("web");
    let mut def = web_app(&app, 2, "v1", "", "/");
    def["upgradeStrategy"] = strategy(1.0, 0.0);
    let d = create(&env, &def).await;
    let mut es = EventStream::connect(&env.api, "").await;
    wait_until(T, "deployment done", || async {
        env.api
            .get(&format!("/api/v1/deployments/{d}"))
            .await
            .status
            == 404
    })
    .await;
    env.add_agent("a2", &[("rack", "r2")]).await;
    let before = env.api.wait_running(&app, 2, T).await;
    assert!(before.iter().all(|t| t["slaveId"] == "a1"), "{before:?}");
    assert!(before.iter().all(task_alive), "{before:?}");
    es.drain_for(Duration::from_millis(200)).await;
    let start = es.seen.len();
    let mut m = Model::from_tasks(&before);

    let r = env.api.post("/api/v1/nodes/a1/drain", &json!({})).await;
    assert_eq!(r.status, 200, "drain: {}", r.text);
    assert_eq!(r.json["draining"], true, "{}", r.text);

    let after = wait_for(T, "2 healthy tasks on a2, none on a1", || async {
        let all = env.api.tasks(&app).await;
        (all.len() == 2
            && all
                .iter()
                .all(|t| t["slaveId"] == "a2" && t["state"] == "TASK_RUNNING" && task_alive(t)))
        .then_some(all)
    })
    .await;
    es.drain_for(Duration::from_millis(300)).await;
    let mut min_healthy = usize::MAX;
    for (i, e) in es.seen[start..].iter().enumerate() {
        if !m.apply(&app, e) {
            continue;
        }
        min_healthy = min_healthy.min(m.healthy());
        assert!(
            m.healthy() >= 2,
            "event {i} ({} {}): healthy {} < 2 during the drain: {}",
            e.event,
            e.data,
            m.healthy(),
            m.summary()
        );
    }
    eprintln!("drain: min healthy {min_healthy}");
    assert_eq!(m.healthy_ids(), ids_of(&after), "events: {}", m.summary());
    assert_eq!(m.live(), 2, "events: {}", m.summary());
    let n = env.node("a1").await.unwrap();
    assert_eq!(n["tasks"], 0, "{n}");
    assert_eq!(n["draining"], true, "{n}");
    assert!(n["drainBlocked"].is_null(), "{n}");
    wait_until(
        Duration::from_secs(10),
        "no task process from a1",
        || async {
            env.task_pids(&app, "busybox")
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == ids_of(&after)
        },
    )
    .await;
}

// ---------------------------------------------------------------- 6. server crash

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crash_mid_upgrade_completes_without_duplicates() {
    let mut env = Env::start("crash", None).await;
    env.add_agent("a1", &[("rack", "r1")]).await;
    let app = env.app_id("web");
    let sampler = Sampler::start(&app, "busybox");
    let mut v1 = web_app(&app, 4, "v1", "", "/");
    v1["upgradeStrategy"] = strategy(0.5, 0.0);
    let d1 = create(&env, &v1).await;
    let mut es = EventStream::connect(&env.api, "").await;
    wait_until(T, "v1 deployed", || async {
        env.api
            .get(&format!("/api/v1/deployments/{d1}"))
            .await
            .status
            == 404
    })
    .await;

    // New version: 2 s before it serves, so the upgrade takes a few rounds of seconds.
    let mut v2 = web_app(&app, 4, "v2", "sleep 2;", "/");
    v2["upgradeStrategy"] = strategy(0.5, 0.0);
    let (version, d2) = update(&env, &v2).await;
    let v = version.clone();
    let app2 = app.clone();
    es.wait_for(T, "a v2 task running", move |e| {
        e.event == "status_update_event"
            && e.data["appId"] == app2.as_str()
            && e.data["version"] == v.as_str()
            && e.data["taskStatus"] == "TASK_RUNNING"
    })
    .await;
    let r = env.api.get(&format!("/api/v1/deployments/{d2}")).await;
    assert_eq!(
        r.status, 200,
        "the upgrade is still in progress: {}",
        r.text
    );
    drop(es);
    env.kill_server();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.start_server().await;
    env.wait_node_status("a1", "ready", T).await;

    env.api.wait_no_deployments(Duration::from_secs(45)).await;
    let tasks = env.api.wait_running(&app, 4, T).await;
    let ids: Vec<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), 4, "task ids listed twice: {ids:?}");
    assert!(
        tasks.iter().all(|t| t["version"] == version.as_str()),
        "all of the new version: {tasks:?}"
    );
    // Exactly one process per task, none left over (an orphan would be a ghost the agent only
    // stops after its 30 s grace).
    wait_until(
        Duration::from_secs(10),
        "exactly the 4 tasks' processes",
        || async {
            let p = env.task_pids(&app, "busybox");
            p.keys().cloned().collect::<BTreeSet<_>>() == unique && p.values().all(|v| v.len() == 1)
        },
    )
    .await;
    for id in &unique {
        assert_eq!(
            sampler.pids_of(id).len(),
            1,
            "task {id} was started more than once: {:?}",
            sampler.pids_of(id)
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = env.task_pids(&app, "busybox");
    assert_eq!(p.keys().cloned().collect::<BTreeSet<_>>(), unique, "{p:?}");
}
