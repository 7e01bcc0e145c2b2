//! Crashes: `kill -9` of the server right after it acknowledged an app and while tasks run,
//! and of the agent while tasks run. Acknowledged apps survive, and healthy tasks are never
//! restarted or duplicated (checked against the real processes, sampled all along).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Waits for `n` running tasks whose processes are exactly those tasks; returns task -> pid.
async fn running_with_processes(c: &Cluster, app: &str, n: usize) -> BTreeMap<String, i32> {
    wait_for(
        T,
        &format!("{n} running tasks of {app} with processes"),
        || async {
            let tasks = c.api.running_ids(app).await;
            let all = c.api.tasks(app).await.len();
            let pids = c.app_pids(app, "sleep");
            (tasks.len() == n && all == n && pids.keys().cloned().collect::<BTreeSet<_>>() == tasks)
                .then_some(pids)
        },
    )
    .await
}

/// What the server says about the app's tasks: id -> startedAt.
async fn started_at(c: &Cluster, app: &str) -> BTreeMap<String, String> {
    c.api
        .tasks(app)
        .await
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or("").to_string(),
                t["startedAt"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crashes_lose_nothing_and_restart_nothing() {
    const APP: &str = "/it/durable";
    let mut c = Cluster::start("durability-server").await;
    let sampler = ProcSampler::start(&c, APP, "sleep");

    // Acknowledged, then the server dies at once.
    let r = c.api.post("/v2/apps", &cmd_app(APP, "sleep 3600", 3)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    c.kill_server();
    c.start_server().await;
    let app = c.api.get(&format!("/v2/apps{APP}")).await;
    assert_eq!(
        app.status, 200,
        "the acknowledged app survives kill -9: {}",
        app.text
    );
    assert_eq!(app.json["app"]["instances"], 3);

    let pids = running_with_processes(&c, APP, 3).await;
    c.api.wait_no_deployments(T).await;
    let started = started_at(&c, APP).await;

    // Crash again while the tasks run: same tasks, same processes, nothing new.
    c.kill_server();
    for pid in pids.values() {
        assert!(pid_alive(*pid), "task process {pid} died with the server");
    }
    c.start_server().await;
    c.wait_agent_reported().await;
    // Give the controllers several passes to (wrongly) act on what they loaded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = running_with_processes(&c, APP, 3).await;
    assert_eq!(after, pids, "tasks and pids after the server restart");
    assert_eq!(started_at(&c, APP).await, started, "startedAt unchanged");
    assert!(
        c.api.deployments().await.is_empty(),
        "no deployment after restart"
    );

    let seen = sampler.seen();
    assert_eq!(
        sampler.pids().len(),
        3,
        "exactly 3 task processes ever ran: {seen:?}"
    );
    assert_eq!(
        sampler.task_ids().len(),
        3,
        "exactly 3 tasks ever ran: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crash_restarts_nothing() {
    const APP: &str = "/it/steady";
    let mut c = Cluster::start("durability-agent").await;
    let sampler = ProcSampler::start(&c, APP, "sleep");
    let r = c.api.post("/v2/apps", &cmd_app(APP, "sleep 3600", 3)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pids = running_with_processes(&c, APP, 3).await;
    c.api.wait_no_deployments(T).await;
    let started = started_at(&c, APP).await;

    c.kill_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pid in pids.values() {
        assert!(pid_alive(*pid), "task process {pid} died with the agent");
    }
    c.start_agent().await;
    c.wait_agent_reported().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = running_with_processes(&c, APP, 3).await;
    assert_eq!(after, pids, "tasks and pids after the agent restart");
    assert_eq!(started_at(&c, APP).await, started, "startedAt unchanged");
    let seen = sampler.seen();
    assert_eq!(sampler.pids().len(), 3, "no task restarted: {seen:?}");
    assert_eq!(sampler.task_ids().len(), 3, "no task duplicated: {seen:?}");

    // The re-attached agent still controls its tasks: deleting the app stops them.
    let r = c.api.delete(&format!("/v2/apps{APP}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(T, "the re-attached tasks to be stopped", || async {
        pids.values().all(|p| !pid_alive(*p))
    })
    .await;
}
