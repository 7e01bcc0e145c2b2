//! Pinned cores (`BERTH_CPU_MODE=pinned`) end to end with the exec driver: a real server and
//! agent offering 2 CPUs. Two pinned apps get different cores (what the scheduler assigned is
//! what the kernel enforces: the task's `Cpus_allowed_list` and `BERTH_CPUSET`), and a third
//! pinned app stays in the launch queue saying why.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn pinned_app(id: &str) -> Value {
    json!({
        "id": id,
        // What the task itself sees: its allowed CPUs and the cores Berth says it has.
        "cmd": "grep Cpus_allowed_list /proc/self/status; echo \"cpuset=$BERTH_CPUSET\"; exec sleep 3600",
        "instances": 1, "cpus": 1, "mem": 16,
        "labels": {"BERTH_CPU_MODE": "pinned"},
    })
}

/// The host's cpuset cgroup is usable (the exec driver pins through it).
fn cpuset_usable() -> bool {
    [
        "/sys/fs/cgroup/cpuset/cpuset.cpus",
        "/sys/fs/cgroup/cpuset.cpus.effective",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}

fn cpus_allowed(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[tokio::test]
async fn pinned_apps_get_distinct_cores_and_the_third_waits() {
    if !cpuset_usable() {
        let why = "no cpuset cgroup controller on this host";
        if std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("{why} (BERTH_REQUIRE_DOCKER=1: cgroups are required)");
        }
        eprintln!("SKIPPED pinned_apps_get_distinct_cores_and_the_third_waits: {why}");
        return;
    }
    let mut c = Cluster::start_server_only("pinned").await;
    c.start_agent_with_cpus("2").await;
    let api = c.api.clone();

    let mut cores = BTreeSet::new();
    for id in ["/pin/a", "/pin/b"] {
        let r = api.post("/v2/apps", &pinned_app(id)).await;
        assert_eq!(r.status, 201, "{id}: {}", r.text);
        let tasks = api.wait_running(id, 1, T).await;
        let cpuset: Vec<u64> = tasks[0]["cpuset"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        // The task API may not expose the cores; the process says what it got in any case.
        let pids = c.app_pids(id, "sleep");
        assert_eq!(pids.len(), 1, "{id}: one real process: {pids:?}");
        let pid = *pids.values().next().unwrap();
        let allowed = cpus_allowed(pid);
        let core: u32 = allowed
            .parse()
            .unwrap_or_else(|_| panic!("{id}: pinned to one core, got {allowed:?}"));
        assert!(core < 2, "{id}: core {core} of a 2-cpu node");
        if !cpuset.is_empty() {
            assert_eq!(cpuset, vec![u64::from(core)], "{id}: API cpuset vs kernel");
        }
        let task_id = tasks[0]["id"].as_str().unwrap().to_string();
        let out = std::fs::read_to_string(
            c.path()
                .join("agent/exec/tasks")
                .join(&task_id)
                .join("stdout"),
        )
        .unwrap_or_default();
        assert!(
            out.contains(&format!("Cpus_allowed_list:\t{core}"))
                && out.contains(&format!("cpuset={core}")),
            "{id}: the app saw other cores than it runs on: {out:?}"
        );
        assert!(cores.insert(core), "{id}: core {core} given twice");
    }
    assert_eq!(cores, BTreeSet::from([0, 1]));

    // No core left: the third pinned app waits in the queue with a reason.
    let r = api.post("/v2/apps", &pinned_app("/pin/c")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let item = wait_for(T, "/pin/c in the queue with a reason", || async {
        let q = api.get_ok("/v2/queue").await;
        q["queue"]
            .as_array()?
            .iter()
            .find(|i| i["app"]["id"] == "/pin/c")
            .filter(|i| i["processedOffersSummary"]["reason"].is_string())
            .cloned()
    })
    .await;
    let reason = item["processedOffersSummary"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // On a node offering exactly its cores as CPUs the CPU check rejects it first
    // ("insufficient cpus"); with CPU overcommit it is "not enough free cores to pin".
    assert!(
        reason.contains("cpus") || reason.contains("core"),
        "queue reason: {reason} ({item})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(api.running_tasks("/pin/c").await.is_empty());

    // Freeing a core lets it start, on the freed core.
    let r = api.delete("/v2/apps/pin/a").await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.wait_running("/pin/c", 1, T).await;
    let pids = c.app_pids("/pin/c", "sleep");
    let pid = *pids.values().next().unwrap();
    let b_pid = *c.app_pids("/pin/b", "sleep").values().next().unwrap();
    assert_ne!(
        cpus_allowed(pid),
        cpus_allowed(b_pid),
        "/pin/c shares /pin/b's core"
    );
}
