//! Several `berth server`s on a real 3-member etcd cluster (started by the test): one leads,
//! the others proxy to it; `kill -9` or `SIGSTOP` of the leader moves leadership within a
//! few seconds, fencing keeps the old leader from writing, deployments go on, and no running
//! task is restarted or duplicated.

mod common;

use berth_store::Store;
use berth_store::testkit::{EtcdProcess, free_port};
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// One `berth server` of the set; killed on drop.
struct HaServer {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl HaServer {
    fn start(c: &Cluster, name: &str, store: &str) -> HaServer {
        // The first server is the cluster's own (its port, `server/` data dir with the
        // tokens its first election writes), so the cluster's helpers find them.
        let first = name == "a";
        let mut s = HaServer {
            name: name.to_string(),
            port: if first { c.port } else { free_port() },
            data_dir: c.path().join(if first {
                "server".to_string()
            } else {
                format!("server-{name}")
            }),
            log: c.path().join(format!("server-{name}.log")),
            child: None,
            args: vec![
                "--store".into(),
                store.into(),
                "--leader-ttl".into(),
                "2".into(),
                // Every server must open the same secrets.
                "--secrets-key-file".into(),
                c.path().join("secrets.key").display().to_string(),
            ],
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(BERTH)
            .args(["server", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning berth server");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.name);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HaServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill_9();
    }
}

/// The leader as `server` reports it (`/v2/leader`), if it answers.
async fn leader_seen_by(api: &Api) -> Option<String> {
    let r = api
        .try_raw(reqwest::Method::GET, "/v2/leader", None)
        .await
        .ok()?;
    (r.status == 200).then(|| r.json["leader"].as_str().unwrap_or("").to_string())
}

/// Waits until every server in `servers` names the same leader among `candidates`.
async fn wait_leader(token: &str, servers: &[&HaServer], candidates: &[&HaServer]) -> String {
    let apis: Vec<Api> = servers
        .iter()
        .map(|s| Api::with_token(&s.url(), Some(token)))
        .collect();
    let names: Vec<String> = candidates.iter().map(|s| s.hostport()).collect();
    wait_for(T, "one leader that every server names", || {
        let apis = apis.clone();
        let names = names.clone();
        async move {
            let mut seen = Vec::new();
            for a in &apis {
                seen.push(leader_seen_by(a).await?);
            }
            let first = seen[0].clone();
            (seen.iter().all(|l| *l == first) && names.contains(&first)).then_some(first)
        }
    })
    .await
}

/// The first server's admin token, once its first election has written it.
async fn admin_token(first: &HaServer) -> String {
    let path = first.data_dir.join("admin.token");
    wait_until(T, "the first leader writes admin.token", || {
        let path = path.clone();
        async move { path.exists() }
    })
    .await;
    read_token(&path)
}

/// The agent of node `n1`, naming every server (the first is the cluster's own).
fn agent(c: &Cluster, servers: &[HaServer]) -> Child {
    let log = std::fs::File::create(c.agent_log()).expect("agent log");
    let mut cmd = c.agent_command("n1", "agent");
    for s in &servers[1..] {
        cmd.args(["--server", &s.url()]);
    }
    cmd.args([
        "--cpus",
        "8",
        "--mem",
        "8192",
        "--disk",
        "10000",
        "--drivers",
        "exec",
        "--ports",
    ])
    .arg(c.agent_ports())
    .stdout(log.try_clone().expect("log fd"))
    .stderr(log)
    .spawn()
    .expect("spawning berth agent")
}

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Running tasks of `app`: task id → version.
async fn running(api: &Api, app: &str) -> BTreeMap<String, String> {
    api.tasks(app)
        .await
        .iter()
        .filter(|t| t["state"] == "TASK_RUNNING")
        .map(|t| {
            (
                t["id"].as_str().unwrap_or("").to_string(),
                t["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn pids_of(c: &Cluster, app: &str) -> Vec<i32> {
    let mut p: Vec<i32> = without_forks(c.app_processes(app, "sleep"))
        .iter()
        .map(|p| p.pid)
        .collect();
    p.sort_unstable();
    p
}

/// A failover while a rolling upgrade runs: the upgrade completes under the new leader,
/// with exactly the planned tasks, and the tasks that were running are the same processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_mid_upgrade_moves_leadership_and_loses_nothing() {
    let Some(etcd) = EtcdProcess::start_cluster("ha-kill", 3).await else {
        return;
    };
    let c = Cluster::prepare("ha-kill", &[]);
    let flag = etcd.store_flag();
    let mut servers = vec![HaServer::start(&c, "a", &flag)];
    let token = admin_token(&servers[0]).await;
    servers.push(HaServer::start(&c, "b", &flag));
    servers.push(HaServer::start(&c, "c", &flag));
    let all: Vec<&HaServer> = servers.iter().collect();
    let leader = wait_leader(&token, &all, &all).await;
    assert_eq!(leader, servers[0].hostport(), "the first server leads");
    let _agent = Agent(agent(&c, &servers));
    // Through a follower: proxied to the leader.
    let via_b = Api::with_token(&servers[1].url(), Some(&token));
    wait_until(T, "node n1 ready (asked through a follower)", || async {
        let r = via_b.get("/api/v1/nodes/n1").await;
        r.status == 200
            && r.json["status"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("ready"))
    })
    .await;
    let mut app = cmd_app("/ha/web", "exec sleep 3600", 4);
    app["healthChecks"] = json!([{"protocol": "COMMAND", "command": {"value": "test -f ready"},
        "gracePeriodSeconds": 30, "intervalSeconds": 1, "maxConsecutiveFailures": 30}]);
    app["cmd"] = json!("touch ready; exec sleep 3600");
    let r = via_b.post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // And an app nobody touches: its tasks must come through the failover untouched.
    let r = via_b
        .post("/v2/apps", &cmd_app("/ha/steady", "exec sleep 3600", 2))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    via_b.wait_running("/ha/web", 4, T).await;
    via_b.wait_running("/ha/steady", 2, T).await;
    wait_until(T, "the first deployments end", || async {
        via_b.deployments().await.is_empty()
    })
    .await;

    // A rolling upgrade whose new tasks take 4 s to become healthy, one at a time.
    app["cmd"] = json!("sleep 4; touch ready; exec sleep 3600");
    app["env"] = json!({"GENERATION": "2"});
    app["upgradeStrategy"] = json!({"minimumHealthCapacity": 0.75, "maximumOverCapacity": 0});
    let r = via_b.put("/v2/apps/ha/web", &app).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new_version = r.json["version"].as_str().unwrap_or("").to_string();
    wait_until(T, "the upgrade has replaced a task", || async {
        running(&via_b, "/ha/web")
            .await
            .values()
            .any(|v| *v == new_version)
    })
    .await;
    let before = running(&via_b, "/ha/web").await;
    let steady_before = running(&via_b, "/ha/steady").await;
    let steady_pids_before = pids_of(&c, "/ha/steady");
    assert_eq!(steady_pids_before.len(), 2);

    // kill -9 the leader.
    let killed = Instant::now();
    servers[0].kill_9();
    let via_c = Api::with_token(&servers[2].url(), Some(&token));
    let probe = json!({"id": "/ha/probe", "cmd": "sleep 1", "instances": 0});
    wait_until(T, "a new leader accepts a write", || async {
        via_c.post("/v2/apps", &probe).await.status == 201
    })
    .await;
    let failover = killed.elapsed();
    println!("failover (kill -9 of the leader -> a write accepted): {failover:?}");
    assert!(failover < Duration::from_secs(15), "{failover:?}");
    let new_leader = wait_leader(
        &token,
        &[&servers[1], &servers[2]],
        &[&servers[1], &servers[2]],
    )
    .await;
    assert_ne!(new_leader, servers[0].hostport());

    // The upgrade completes: 4 tasks, all new, and every task that was running at the
    // failover and belongs to the new version is still the same task.
    wait_until(
        Duration::from_secs(120),
        "the upgrade completes under the new leader",
        || async { via_c.deployments().await.is_empty() },
    )
    .await;
    let after = running(&via_c, "/ha/web").await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(after.values().all(|v| *v == new_version), "{after:?}");
    for (id, v) in &before {
        if *v == new_version {
            assert!(
                after.contains_key(id),
                "task {id} (new version) was replaced: {after:?}"
            );
        }
    }
    let pids_after = pids_of(&c, "/ha/web");
    assert_eq!(pids_after.len(), 4, "one process per task: {pids_after:?}");
    // The untouched app: the same tasks, the same processes.
    assert_eq!(running(&via_c, "/ha/steady").await, steady_before);
    assert_eq!(
        pids_of(&c, "/ha/steady"),
        steady_pids_before,
        "no steady task restarted"
    );
    // The killed server comes back as a follower.
    servers[0].spawn();
    let all: Vec<&HaServer> = servers.iter().collect();
    assert_eq!(wait_leader(&token, &all, &all).await, new_leader);

    // The cluster API: who leads, and etcd's three members, all healthy, one raft leader.
    let cluster = via_c.get_ok("/api/v1/cluster").await;
    assert_eq!(cluster["store"], "etcd", "{cluster}");
    assert_eq!(cluster["leader"], new_leader.as_str(), "{cluster}");
    let members = cluster["etcd"]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(members.len(), 3, "{cluster}");
    assert!(members.iter().all(|m| m["healthy"] == true), "{cluster}");
    assert_eq!(
        members.iter().filter(|m| m["raftLeader"] == true).count(),
        1,
        "{cluster}"
    );

    // The CLI, given a dead server first, uses a live one.
    let out = Command::new(BERTH)
        .args(["--server"])
        .arg(format!(
            "http://127.0.0.1:{},{}",
            free_port(),
            servers[0].url()
        ))
        .args(["--token", &token, "-o", "json", "app", "list"])
        .output()
        .expect("berth app list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("/ha/steady"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // DELETE /v2/leader: the leader abdicates and another server takes over.
    let r = via_c
        .send(reqwest::Method::DELETE, "/v2/leader", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let next = wait_for(T, "another server leads after the abdication", || {
        let via_c = via_c.clone();
        let new_leader = new_leader.clone();
        async move {
            let l = leader_seen_by(&via_c).await?;
            (l != new_leader && !l.is_empty()).then_some(l)
        }
    })
    .await;
    let all: Vec<&HaServer> = servers.iter().collect();
    assert_eq!(wait_leader(&token, &all, &all).await, next);
    via_c.wait_running("/ha/steady", 2, T).await;
    assert_eq!(
        pids_of(&c, "/ha/steady"),
        steady_pids_before,
        "abdication restarted no task"
    );
}

/// A leader paused past its lease: a successor leads and writes; the old one, continued,
/// writes nothing (its fence fails), steps down and serves as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_steps_down() {
    let Some(etcd) = EtcdProcess::start_cluster("ha-pause", 3).await else {
        return;
    };
    let c = Cluster::prepare("ha-pause", &[]);
    let flag = etcd.store_flag();
    let mut servers = vec![HaServer::start(&c, "a", &flag)];
    let token = admin_token(&servers[0]).await;
    servers.push(HaServer::start(&c, "b", &flag));
    let all: Vec<&HaServer> = servers.iter().collect();
    assert_eq!(wait_leader(&token, &all, &all).await, servers[0].hostport());
    let via_a = Api::with_token(&servers[0].url(), Some(&token));
    let via_b = Api::with_token(&servers[1].url(), Some(&token));
    let r = via_a
        .post(
            "/v2/apps",
            &json!({"id": "/p/one", "cmd": "sleep 1", "instances": 0}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    servers[0].signal("-STOP");
    let b = servers[1].hostport();
    wait_until(T, "b leads while a is stopped", || async {
        leader_seen_by(&via_b).await.as_deref() == Some(b.as_str())
    })
    .await;
    let r = via_b
        .post(
            "/v2/apps",
            &json!({"id": "/p/two", "cmd": "sleep 1", "instances": 0}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let store = etcd.store().await;
    let (leader_kv, rev_at_continue) = {
        let kv = store
            .get(berth_store::election::LEADER_KEY)
            .await
            .unwrap()
            .expect("leader key");
        (kv, store.range("/berth/").await.unwrap().1)
    };

    servers[0].signal("-CONT");
    // a finds its lease gone and steps down; it then proxies to b.
    wait_until(T, "a steps down", || async {
        servers[0]
            .log_text()
            .contains("lost leadership: stepping down")
    })
    .await;
    wait_until(T, "a, now a follower, names b", || async {
        leader_seen_by(&via_a).await.as_deref() == Some(servers[1].hostport().as_str())
    })
    .await;
    // Nothing changed since a was continued: the leader key is still b's, and no app
    // record was written (a's controllers, had they written, would show here).
    let kv = store
        .get(berth_store::election::LEADER_KEY)
        .await
        .unwrap()
        .expect("leader key");
    assert_eq!(kv.mod_revision, leader_kv.mod_revision, "b still leads");
    let mut w = store.watch("/berth/apps/", rev_at_continue).await.unwrap();
    let late = tokio::time::timeout(Duration::from_millis(500), w.next()).await;
    assert!(
        late.is_err(),
        "no app record changed after a was continued: {late:?}"
    );
    let apps = via_a.get_ok("/v2/apps").await;
    let ids: Vec<&str> = apps["apps"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["/p/one", "/p/two"], "{apps}");
}

/// One etcd member down: everything works. Two down: writes fail with clear 503s, and
/// nothing is lost; members back: it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_members_fails_writes_clearly_and_resumes() {
    let Some(mut etcd) = EtcdProcess::start_cluster("ha-members", 3).await else {
        return;
    };
    let c = Cluster::prepare("ha-members", &[]);
    let flag = etcd.store_flag();
    let servers = [HaServer::start(&c, "a", &flag)];
    let token = admin_token(&servers[0]).await;
    let api = Api::with_token(&servers[0].url(), Some(&token));
    let all: Vec<&HaServer> = servers.iter().collect();
    wait_leader(&token, &all, &all).await;
    let app = |id: &str| json!({"id": id, "cmd": "sleep 1", "instances": 0});

    etcd.kill(2);
    let r = api.post("/v2/apps", &app("/m/one-down")).await;
    assert_eq!(r.status, 201, "one member down: {}", r.text);

    etcd.kill(1);
    // Without quorum the lease cannot be renewed: the leader steps down at once and
    // serves as a follower that cannot find a leader.
    wait_until(T, "the leader steps down", || async {
        servers[0]
            .log_text()
            .contains("lost leadership: stepping down")
    })
    .await;
    wait_until(T, "the server answers again", || async {
        matches!(api.try_raw(reqwest::Method::GET, "/ping", None).await, Ok(r) if r.status == 200)
    })
    .await;
    let started = Instant::now();
    let r = api.post("/v2/apps", &app("/m/two-down")).await;
    assert_eq!(r.status, 503, "two members down: {}", r.text);
    let message = r.json["message"].as_str().unwrap_or("").to_string();
    assert!(!message.is_empty(), "a message says why: {}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    etcd.restart(1).await;
    etcd.restart(2).await;
    // While the members rejoin, a write may also fail to answer in time: that is an attempt
    // that did not work yet, like a 503.
    wait_until(T, "writes work again", || async {
        let body = app("/m/back").to_string().into_bytes();
        matches!(
            api.try_raw(reqwest::Method::POST, "/v2/apps", Some(body)).await,
            Ok(r) if r.status == 201 || r.status == 409
        )
    })
    .await;
    let apps: Value = api.get_ok("/v2/apps").await;
    let ids: Vec<&str> = apps["apps"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ids.contains(&"/m/one-down") && ids.contains(&"/m/back"),
        "{apps}"
    );
    assert!(
        !ids.contains(&"/m/two-down"),
        "the refused write is not there: {apps}"
    );
}
