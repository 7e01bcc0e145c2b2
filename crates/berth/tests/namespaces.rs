//! Namespaces on the real binary: quotas refuse growth with a 422 that says which quota and
//! by how much, and nothing is stored (POST, PUT, PATCH, bulk PUT, groups, scaleBy); a
//! namespace bound to a dedicated node runs only there and nobody else's tasks land there;
//! policies refuse root, privileged containers, host PID/IPC and host paths until the
//! namespace allows them; exec tasks run as `--default-task-user` (`nobody`).

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Child;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// An app of `instances` × `cpus` that needs no host port.
fn app(id: &str, instances: u32, cpus: f64) -> Value {
    json!({"id": id, "cmd": "sleep 3600", "cpus": cpus, "mem": 16, "instances": instances,
           "portDefinitions": []})
}

async fn put_namespace(api: &Api, id: &str, body: Value) -> Reply {
    api.put(&format!("/api/v1/namespaces/{id}"), &body).await
}

async fn instances(api: &Api, id: &str) -> Option<i64> {
    let r = api.get(&format!("/v2/apps{id}")).await;
    (r.status == 200).then(|| r.json["app"]["instances"].as_i64().unwrap_or(-1))
}

fn assert_refused(r: &Reply, needle: &str) {
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.message().contains(needle),
        "expected {needle:?} in: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_growth_and_store_nothing() {
    let mut c = Cluster::start_server_only("ns-quota").await;
    let api = c.api.clone();

    let r = put_namespace(
        &api,
        "prod",
        json!({"quota": {"cpus": 10, "instances": 8, "apps": 3}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["defined"], true);
    assert_eq!(r.json["quota"]["cpus"], json!(10.0));
    let r = put_namespace(
        &api,
        "prod",
        json!({"quota": {"cpus": 10, "instances": 8, "apps": 3}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // POST past the cpus quota: 422 naming namespace, quota and excess; nothing stored.
    let r = api.post("/v2/apps", &app("/prod/a", 5, 2.5)).await;
    assert_refused(
        &r,
        "namespace 'prod' quota 'cpus' exceeded: 12.5 requested, limit 10, over by 2.5",
    );
    assert_eq!(instances(&api, "/prod/a").await, None);
    assert!(api.deployments().await.is_empty());
    // The same app elsewhere is not limited.
    let r = api.post("/v2/apps", &app("/dev/a", 5, 2.5)).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Up to the limit is fine.
    let r = api.post("/v2/apps", &app("/prod/a", 4, 2.5)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ns = api.get_ok("/api/v1/namespaces/prod").await;
    assert_eq!(
        ns["usage"],
        json!({"cpus": 10.0, "mem": 64.0, "disk": 0.0, "instances": 4, "apps": 1})
    );

    // PUT and PATCH scaling up: refused, unchanged.
    let r = api
        .put("/v2/apps/prod/a?force=true", &json!({"instances": 5}))
        .await;
    assert_refused(
        &r,
        "quota 'cpus' exceeded: 12.5 requested, limit 10, over by 2.5",
    );
    let r = api
        .send(
            Method::PATCH,
            "/v2/apps/prod/a?force=true",
            Some(&json!({"cpus": 3})),
        )
        .await;
    assert_refused(
        &r,
        "quota 'cpus' exceeded: 12 requested, limit 10, over by 2",
    );
    assert_eq!(instances(&api, "/prod/a").await, Some(4));

    // Bulk PUT: the sum counts; a bulk that fits is accepted.
    let r = api
        .put(
            "/v2/apps?force=true",
            &json!([{"id": "/prod/a", "instances": 2}, app("/prod/b", 3, 2.5)]),
        )
        .await;
    assert_refused(&r, "12.5 requested, limit 10, over by 2.5");
    assert_eq!(instances(&api, "/prod/a").await, Some(4));
    assert_eq!(instances(&api, "/prod/b").await, None);
    let r = api
        .put(
            "/v2/apps?force=true",
            &json!([{"id": "/prod/a", "instances": 2}, app("/prod/b", 2, 2.5)]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(instances(&api, "/prod/b").await, Some(2));

    // Groups: scaleBy and a new group are counted too.
    let r = api
        .put("/v2/groups/prod?force=true", &json!({"scaleBy": 1.5}))
        .await;
    assert_refused(&r, "namespace 'prod' quota 'cpus' exceeded: 15 requested");
    assert_eq!(instances(&api, "/prod/a").await, Some(2));
    let r = api
        .post(
            "/v2/groups",
            &json!({"id": "/prod/g", "apps": [app("x", 0, 0.1), app("y", 0, 0.1)]}),
        )
        .await;
    assert_refused(
        &r,
        "namespace 'prod' quota 'apps' exceeded: 4 requested, limit 3, over by 1",
    );
    assert_eq!(instances(&api, "/prod/g/x").await, None);
    let r = api
        .put(
            "/v2/groups/prod?force=true",
            &json!({"apps": [{"id": "c", "cmd": "sleep 1", "instances": 5, "cpus": 0.001, "mem": 1, "portDefinitions": []}]}),
        )
        .await;
    assert_refused(
        &r,
        "namespace 'prod' quota 'instances' exceeded: 9 requested, limit 8, over by 1",
    );

    // A lower quota is accepted; scaling down still works above it, scaling up does not.
    let r = put_namespace(&api, "prod", json!({"quota": {"cpus": 5}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["usage"]["cpus"], json!(10.0));
    let r = api
        .put("/v2/apps/prod/a?force=true", &json!({"instances": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .put("/v2/apps/prod/a?force=true", &json!({"instances": 2}))
        .await;
    assert_refused(
        &r,
        "quota 'cpus' exceeded: 10 requested, limit 5, over by 5",
    );

    // The namespace and its quota survive a restart.
    c.kill_server();
    c.start_server().await;
    let r = api
        .put("/v2/apps/prod/a?force=true", &json!({"instances": 2}))
        .await;
    assert_refused(
        &r,
        "quota 'cpus' exceeded: 10 requested, limit 5, over by 5",
    );
    let ns = api.get_ok("/api/v1/namespaces/prod").await;
    assert_eq!(ns["usage"]["apps"], 2);
    let list = api.get_ok("/api/v1/namespaces").await;
    let ids: Vec<&str> = list["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["dev", "prod"], "{list}");
    assert_eq!(list["namespaces"][0]["defined"], false);

    // A namespace with apps cannot be deleted; without them it can.
    let r = api.delete("/api/v1/namespaces/prod").await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("still has 2 apps"), "{}", r.text);
    for id in ["/prod/a", "/prod/b"] {
        let r = api.delete(&format!("/v2/apps{id}?force=true")).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = api.delete("/api/v1/namespaces/prod").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.get("/api/v1/namespaces/prod").await.status, 404);
    assert_eq!(api.delete("/api/v1/namespaces/prod").await.status, 404);
    // Without its quota the namespace takes anything.
    let r = api.post("/v2/apps", &app("/prod/a", 5, 2.5)).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Bad namespace bodies are 422s by field.
    let r = put_namespace(
        &api,
        "qa",
        json!({"quota": {"cpus": -1}, "dedicated": true}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        r.detail_paths(),
        ["/quota/cpus", "/dedicated"],
        "{}",
        r.text
    );
    let r = put_namespace(&api, "Bad_Id", json!({})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = put_namespace(&api, "qa", json!({"quotas": {}})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(api.get("/api/v1/namespaces/qa").await.status, 404);
}

/// A second agent (node `n2`, attribute `env=prod`) in the cluster's directory, so the
/// cluster's teardown reaps it and its tasks too.
struct ExtraAgent(Child);

impl ExtraAgent {
    fn start(c: &Cluster, node: &str, attribute: &str) -> ExtraAgent {
        let log = std::fs::File::create(c.path().join(format!("agent-{node}.log"))).expect("log");
        let err = log.try_clone().expect("log fd");
        let base = 45000 + (std::process::id() % 100) as u16 * 50;
        let child = c
            .agent_command(node, &format!("agent-{node}"))
            .args([
                "--cpus",
                "2",
                "--mem",
                "2048",
                "--disk",
                "1000",
                "--drivers",
                "exec",
                "--attribute",
                attribute,
                "--ports",
            ])
            .arg(format!("{base}-{}", base + 49))
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawning the second agent");
        ExtraAgent(child)
    }
}

impl Drop for ExtraAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn nodes_of(api: &Api, app_id: &str) -> Vec<String> {
    api.tasks(app_id)
        .await
        .iter()
        .filter_map(|t| t["slaveId"].as_str().map(str::to_string))
        .collect()
}

/// The queue entry's reasons for `app_id` (`reason` -> nodes declined).
async fn queue_reasons(api: &Api, app_id: &str) -> Vec<(String, u64)> {
    let q = api.get_ok("/v2/queue").await;
    q["queue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["app"]["id"] == app_id)
        .flat_map(|e| {
            e["processedOffersSummary"]["rejectSummaryLastOffers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|r| {
            (
                r["reason"].as_str().unwrap_or("").to_string(),
                r["declined"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The uid a process runs as (`/proc/<pid>/status`).
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_namespace_owns_its_nodes() {
    let c = Cluster::start("ns-dedicated").await;
    let api = c.api.clone();
    let _n2 = ExtraAgent::start(&c, "n2", "env=prod");
    wait_until(T, "node n2 ready", || async {
        let r = api.get("/api/v1/nodes/n2").await;
        r.status == 200
            && r.json["status"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("ready"))
    })
    .await;

    let r = put_namespace(
        &api,
        "prod",
        json!({"nodeSelector": {"env": "prod"}, "dedicated": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // prod's tasks run only on n2; the task writes into its sandbox as `nobody`.
    let mut web = app("/prod/web", 4, 0.1);
    web["cmd"] = json!("echo hello > greeting && exec sleep 3600");
    let r = api.post("/v2/apps", &web).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Others' tasks never land on n2 (spread, so n2 would be picked if it were allowed).
    let mut other = app("/dev/web", 6, 0.1);
    other["labels"] = json!({"BERTH_PLACEMENT": "spread"});
    assert_eq!(api.post("/v2/apps", &other).await.status, 201);
    let mut plain = app("/plain", 2, 0.1);
    plain["labels"] = json!({"BERTH_PLACEMENT": "spread"});
    assert_eq!(api.post("/v2/apps", &plain).await.status, 201);
    api.wait_running("/prod/web", 4, T).await;
    api.wait_running("/dev/web", 6, T).await;
    api.wait_running("/plain", 2, T).await;
    assert!(nodes_of(&api, "/prod/web").await.iter().all(|n| n == "n2"));
    assert!(nodes_of(&api, "/dev/web").await.iter().all(|n| n == "n1"));
    assert!(nodes_of(&api, "/plain").await.iter().all(|n| n == "n1"));

    // Exec tasks run as the default task user, nobody.
    let procs = c.app_processes("/prod/web", "sleep");
    assert_eq!(procs.len(), 4, "{procs:?}");
    let nobody = 65534;
    for p in procs
        .iter()
        .chain(c.app_processes("/dev/web", "sleep").iter())
    {
        assert_eq!(uid_of(p.pid), Some(nobody), "{p:?}");
    }

    // prod does not fit on n2 any more: it waits, and the queue says why the other node
    // does not count.
    let r = api.post("/v2/apps", &app("/prod/big", 1, 1.9)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    wait_until(T, "/prod/big queued with its reasons", || async {
        let reasons = queue_reasons(&api, "/prod/big").await;
        reasons.contains(&(
            "not matching namespace 'prod' nodeSelector env=prod".into(),
            1,
        )) && reasons.contains(&("insufficient cpus".into(), 1))
    })
    .await;
    // An app pinned to n2 by constraint, from another namespace, is told n2 is prod's.
    let mut pinned = app("/dev/on-n2", 1, 0.1);
    pinned["constraints"] = json!([["hostname", "CLUSTER", "n2"]]);
    assert_eq!(api.post("/v2/apps", &pinned).await.status, 201);
    wait_until(T, "/dev/on-n2 queued as dedicated", || async {
        queue_reasons(&api, "/dev/on-n2")
            .await
            .contains(&("dedicated to namespace 'prod'".into(), 1))
    })
    .await;
    assert!(api.tasks("/dev/on-n2").await.is_empty());

    // Releasing the node (not dedicated any more) lets the waiting app in.
    let r = put_namespace(&api, "prod", json!({"nodeSelector": {"env": "prod"}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.wait_running("/dev/on-n2", 1, T).await;
    assert_eq!(nodes_of(&api, "/dev/on-n2").await, ["n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_refuse_until_the_namespace_allows() {
    let c = Cluster::start_server_only("ns-policy").await;
    let api = &c.api;
    let docker = |id: &str, docker: Value, volumes: Value| {
        json!({"id": id, "instances": 0, "cpus": 0.1, "mem": 16,
               "container": {"type": "DOCKER", "docker": docker, "volumes": volumes}})
    };

    // Root.
    let root = json!({"id": "/team/root", "cmd": "id", "user": "root", "instances": 0});
    let r = api.post("/v2/apps", &root).await;
    assert_refused(&r, "namespace 'team'");
    assert!(r.message().contains("allowRoot"), "{}", r.text);
    assert_eq!(r.detail_paths(), ["/user"]);
    assert_eq!(api.get("/v2/apps/team/root").await.status, 404);
    // No user: the default (nobody) is fine.
    let plain = json!({"id": "/team/plain", "cmd": "id", "instances": 0});
    assert_eq!(api.post("/v2/apps", &plain).await.status, 201);

    // Privileged, host PID, host IPC, host paths.
    let privileged = docker(
        "/team/priv",
        json!({"image": "busybox", "privileged": true}),
        json!([]),
    );
    let r = api.post("/v2/apps", &privileged).await;
    assert_refused(&r, "allowPrivileged");
    assert_eq!(r.detail_paths(), ["/container/docker/privileged"]);
    let host_ns = docker(
        "/team/hostns",
        json!({"image": "busybox", "parameters": [{"key": "pid", "value": "host"}, {"key": "ipc", "value": "host"}]}),
        json!([]),
    );
    let r = api.post("/v2/apps", &host_ns).await;
    assert_refused(&r, "allowHostPid");
    assert_eq!(
        r.detail_paths(),
        [
            "/container/docker/parameters(0)",
            "/container/docker/parameters(1)"
        ]
    );
    let etc = docker(
        "/team/etc",
        json!({"image": "busybox"}),
        json!([{"containerPath": "/host", "hostPath": "/etc", "mode": "RO"}]),
    );
    let r = api.post("/v2/apps", &etc).await;
    assert_refused(&r, "host path '/etc' is not allowed in namespace 'team'");
    assert_eq!(r.detail_paths(), ["/container/volumes(0)/hostPath"]);
    // PUT (create through update) is refused the same way, and a bulk PUT names the index.
    let r = api.put("/v2/apps/team/etc", &etc).await;
    assert_refused(&r, "host path '/etc'");
    let r = api.put("/v2/apps", &json!([plain, privileged])).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.detail_paths(), ["(1)/container/docker/privileged"]);

    // The namespace allows them: accepted.
    let r = put_namespace(
        api,
        "team",
        json!({"policy": {"allowRoot": true, "allowPrivileged": true, "allowHostPid": true,
                          "allowHostIpc": true, "allowedHostPaths": ["/srv/team"]}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for a in [&root, &privileged, &host_ns] {
        let r = api.post("/v2/apps", a).await;
        assert_eq!(r.status, 201, "{}: {}", a["id"], r.text);
    }
    // /etc is still outside the list; /srv/team/data is inside.
    let r = api.post("/v2/apps", &etc).await;
    assert_refused(&r, "allowed: /srv/team");
    let srv = docker(
        "/team/srv",
        json!({"image": "busybox"}),
        json!([{"containerPath": "/data", "hostPath": "/srv/team/data", "mode": "RW"}]),
    );
    assert_eq!(api.post("/v2/apps", &srv).await.status, 201);
    let r = api
        .post(
            "/v2/apps",
            &docker(
                "/team/sneaky",
                json!({"image": "busybox"}),
                json!([{"containerPath": "/d", "hostPath": "/srv/team/../../etc", "mode": "RW"}]),
            ),
        )
        .await;
    assert_refused(&r, "is not allowed");

    // Other namespaces keep the default policy.
    let r = api
        .post(
            "/v2/apps",
            &json!({"id": "/other/root", "cmd": "id", "user": "root", "instances": 0}),
        )
        .await;
    assert_refused(&r, "namespace 'other'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_default_user_needs_allow_root() {
    let c = Cluster::start_server_with("ns-root-default", &["--default-task-user", "root"]).await;
    let api = &c.api;
    let plain = json!({"id": "/ops/plain", "cmd": "id", "instances": 0});
    let r = api.post("/v2/apps", &plain).await;
    assert_refused(&r, "default task user is 'root'");
    // An app naming another user is fine.
    let r = api
        .post(
            "/v2/apps",
            &json!({"id": "/ops/www", "cmd": "id", "user": "nobody", "instances": 0}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = put_namespace(api, "ops", json!({"policy": {"allowRoot": true}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(api.post("/v2/apps", &plain).await.status, 201);
}
