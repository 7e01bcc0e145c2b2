//! The controllers against a simulated cluster (no I/O).

use super::*;
use crate::ops::{self, AppUpdate, RequestCtx};
use berth_core::node::{Node, NodeInfo, NodeResources, PortRange};
use berth_core::task::HealthResult;
use serde_json::json;

fn node(id: &str) -> Node {
    Node {
        info: NodeInfo {
            id: id.into(),
            hostname: id.into(),
            address: "127.0.0.1".into(),
            resources: NodeResources::new(16.0, 16000.0, 1000.0),
            reserved: NodeResources::default(),
            overcommit: Default::default(),
            port_ranges: vec![PortRange {
                begin: 31000,
                end: 32000,
            }],
            attributes: Default::default(),
            drivers: vec!["exec".into(), "fake".into()],
            conditions: vec![],
            agent_version: String::new(),
            agent_url: None,
        },
        status: NodeStatus::Ready,
        cordoned: false,
        draining: false,
        registered_at: 0,
        last_heartbeat: i64::MAX / 2,
    }
}

pub(super) fn cluster(nodes: usize) -> Cluster {
    let mut st = Cluster::new(7);
    for i in 0..nodes {
        let n = node(&format!("n{i}"));
        st.nodes.insert(n.info.id.clone(), n);
        st.sync_sched_node(&format!("n{i}"));
    }
    st
}

/// One step of simulated agents: staged tasks start, killed tasks end, running tasks of
/// a config in `healthy_configs` pass their checks, others fail them.
fn agents_step(st: &mut Cluster, healthy_config: &dyn Fn(&str) -> bool) {
    let mut ch = Changes::default();
    let ids: Vec<String> = st.tasks.keys().cloned().collect();
    for id in ids {
        let Some(t) = st.tasks.get(&id).cloned() else {
            continue;
        };
        let node = t.node_id.clone();
        let state = if t.goal == TaskGoal::Killed {
            TaskState::Killed
        } else if t.state == TaskState::Staging {
            TaskState::Running
        } else {
            t.state
        };
        let health = (state == TaskState::Running).then(|| {
            let alive = healthy_config(&t.config_version);
            vec![HealthResult {
                alive,
                instance_id: id.clone(),
                last_failure: (!alive).then(|| "2026-01-01T00:00:00.000Z".to_string()),
                last_failure_cause: (!alive).then(|| "HTTP GET returned 500".to_string()),
                ..Default::default()
            }]
        });
        let s = ReportedStatus {
            task_id: id,
            state,
            message: None,
            exit_code: None,
            ip_addresses: vec![],
            health,
        };
        apply_statuses(st, &mut ch, &node, &[s], false, 0);
    }
    st.committed(&ch);
    // As the server does after a mutation: the apps whose tasks changed are looked at next.
    st.dirty_apps.extend(ch.apps.iter().cloned());
}

fn counts(st: &Cluster, app: &str) -> (usize, usize) {
    let app_def = st.apps.get(app).cloned();
    let alive = st.app_tasks(app).filter(|t| !t.state.is_terminal()).count();
    let healthy = st
        .app_tasks(app)
        .filter(|t| t.goal == TaskGoal::Running)
        .filter(|t| app_def.as_ref().is_some_and(|a| is_healthy_any(a, t)))
        .count();
    (alive, healthy)
}

/// Healthy regardless of version (the old version's checks are the same here).
fn is_healthy_any(_app: &AppDefinition, t: &Task) -> bool {
    t.state == TaskState::Running && t.is_healthy() == Some(true)
}

fn app_json(instances: i64, cmd: &str, min: f64, max: f64) -> serde_json::Value {
    json!({"id": "/web", "cmd": cmd, "instances": instances, "cpus": 0.1, "mem": 16,
           "upgradeStrategy": {"minimumHealthCapacity": min, "maximumOverCapacity": max},
           "healthChecks": [{"protocol": "TCP", "gracePeriodSeconds": 1}]})
}

/// `PUT /v2/apps/{id}` with a partial update, as the API does it.
fn update_app(st: &mut Cluster, ch: &mut Changes, id: &str, body: serde_json::Value, force: bool) {
    let serde_json::Value::Object(body) = body else {
        panic!("an update is a JSON object: {body}");
    };
    ops::put_app(
        st,
        ch,
        id,
        AppUpdate::Definition(body),
        true,
        force,
        &RequestCtx::default(),
    )
    .unwrap();
}

fn run_until_converged(
    st: &mut Cluster,
    steps: usize,
    healthy_config: &dyn Fn(&str) -> bool,
    mut check: impl FnMut(&Cluster),
) -> bool {
    for _ in 0..steps {
        let mut ch = Changes::default();
        reconcile(st, &mut ch, 0, Duration::from_secs(3600));
        st.committed(&ch);
        check(st);
        if st.deployments.is_empty() {
            return true;
        }
        agents_step(st, healthy_config);
        check(st);
    }
    false
}

#[test]
fn rolling_upgrade_respects_the_strategy_bounds() {
    let mut st = cluster(3);
    let mut ch = Changes::default();
    let app = berth_core::validate::app_from_json(app_json(4, "v1", 0.5, 0.25)).unwrap();
    ops::create_app(&mut st, &mut ch, app, &RequestCtx::default()).unwrap();
    assert!(
        run_until_converged(&mut st, 50, &|_| true, |_| {}),
        "initial deployment converges"
    );
    assert_eq!(counts(&st, "/web"), (4, 4));

    update_app(
        &mut st,
        &mut ch,
        "/web",
        app_json(4, "v2", 0.5, 0.25),
        false,
    );
    let (mut max_alive, mut min_healthy) = (0, usize::MAX);
    let converged = run_until_converged(&mut st, 100, &|_| true, |st| {
        let (alive, healthy) = counts(st, "/web");
        max_alive = max_alive.max(alive);
        min_healthy = min_healthy.min(healthy);
    });
    assert!(converged, "upgrade converges");
    assert!(
        max_alive <= 5,
        "never more than instances + floor(0.25*4) = 5 tasks alive, saw {max_alive}"
    );
    assert!(
        min_healthy >= 2,
        "never fewer than ceil(0.5*4) = 2 healthy, saw {min_healthy}"
    );
    let config = st.apps["/web"].config_version().to_string();
    assert_eq!(
        st.app_tasks("/web")
            .filter(|t| t.config_version == config)
            .count(),
        4
    );
}

#[test]
fn failing_new_version_keeps_old_instances_serving() {
    let mut st = cluster(3);
    let mut ch = Changes::default();
    let app = berth_core::validate::app_from_json(app_json(2, "v1", 1.0, 0.5)).unwrap();
    ops::create_app(&mut st, &mut ch, app, &RequestCtx::default()).unwrap();
    assert!(run_until_converged(&mut st, 50, &|_| true, |_| {}));
    let old_config = st.apps["/web"].config_version().to_string();
    update_app(&mut st, &mut ch, "/web", app_json(2, "v2", 1.0, 0.5), false);
    let old = old_config.clone();
    let converged = run_until_converged(&mut st, 40, &move |c| c == old, |st| {
        let old_healthy = st
            .app_tasks("/web")
            .filter(|t| t.config_version == old_config && t.goal == TaskGoal::Running)
            .count();
        assert_eq!(old_healthy, 2, "both old instances keep serving");
    });
    assert!(
        !converged,
        "a version that never gets healthy never completes"
    );
}

#[test]
fn drain_moves_tasks_without_dropping_below_minimum_health() {
    let mut st = cluster(3);
    let mut ch = Changes::default();
    let app = berth_core::validate::app_from_json(app_json(2, "v1", 1.0, 0.0)).unwrap();
    ops::create_app(&mut st, &mut ch, app, &RequestCtx::default()).unwrap();
    assert!(run_until_converged(&mut st, 50, &|_| true, |_| {}));
    let busy: Vec<String> = st.app_tasks("/web").map(|t| t.node_id.clone()).collect();
    for n in &busy {
        ops::node_action(&mut st, &mut ch, n, ops::NodeAction::Drain).unwrap();
    }
    let mut min_healthy = usize::MAX;
    for _ in 0..50 {
        let mut ch = Changes::default();
        reconcile(&mut st, &mut ch, 0, Duration::from_secs(3600));
        st.committed(&ch);
        min_healthy = min_healthy.min(counts(&st, "/web").1);
        agents_step(&mut st, &|_| true);
        min_healthy = min_healthy.min(counts(&st, "/web").1);
    }
    assert!(
        min_healthy >= 2,
        "never fewer than 2 healthy during the drain, saw {min_healthy}"
    );
    assert!(
        st.app_tasks("/web").all(|t| !busy.contains(&t.node_id)),
        "every task moved off the drained nodes"
    );
    assert_eq!(st.app_tasks("/web").count(), 2);
}

#[test]
fn upgrade_without_surge_room_still_completes() {
    let mut st = cluster(3);
    let mut ch = Changes::default();
    let app = berth_core::validate::app_from_json(app_json(3, "v1", 1.0, 0.0)).unwrap();
    ops::create_app(&mut st, &mut ch, app, &RequestCtx::default()).unwrap();
    assert!(run_until_converged(&mut st, 50, &|_| true, |_| {}));
    update_app(&mut st, &mut ch, "/web", app_json(3, "v2", 1.0, 0.0), false);
    let mut max_alive = 0;
    let converged = run_until_converged(&mut st, 100, &|_| true, |st| {
        max_alive = max_alive.max(counts(st, "/web").0)
    });
    assert!(converged, "replaces one instance at a time");
    assert!(
        max_alive <= 3,
        "maximumOverCapacity 0: never more than 3 alive, saw {max_alive}"
    );
}

#[test]
fn node_loss_replaces_after_inactive_and_the_surplus_goes_when_it_returns() {
    let mut st = cluster(2);
    let mut ch = Changes::default();
    let mut j = app_json(2, "v1", 0.5, 1.0);
    j["constraints"] = json!([["hostname", "UNIQUE"]]);
    j["unreachableStrategy"] = json!({"inactiveAfterSeconds": 5, "expungeAfterSeconds": 600});
    let app = berth_core::validate::app_from_json(j).unwrap();
    ops::create_app(&mut st, &mut ch, app, &RequestCtx::default()).unwrap();
    // A third node for the replacement.
    let n = node("n2");
    st.nodes.insert("n2".into(), n);
    st.sync_sched_node("n2");
    assert!(run_until_converged(&mut st, 50, &|_| true, |_| {}));
    let lost_node = st.app_tasks("/web").next().unwrap().node_id.clone();
    let lost_task = st
        .app_tasks("/web")
        .find(|t| t.node_id == lost_node)
        .unwrap()
        .id
        .clone();
    // The node stops reporting.
    let timeout = Duration::from_secs(10);
    for n in st.nodes.values_mut() {
        n.last_heartbeat = if n.info.id == lost_node { 0 } else { 100_000 };
    }
    let mut ch = Changes::default();
    reconcile(&mut st, &mut ch, 20_000, timeout);
    assert_eq!(st.tasks[&lost_task].state, TaskState::Unreachable);
    assert_eq!(st.nodes[&lost_node].status, NodeStatus::Unreachable);
    assert_eq!(
        st.app_tasks("/web").count(),
        2,
        "no replacement before inactiveAfterSeconds"
    );
    // After inactiveAfterSeconds, a replacement starts elsewhere.
    reconcile(&mut st, &mut ch, 26_000, timeout);
    st.committed(&ch);
    let replacement: Vec<_> = st
        .app_tasks("/web")
        .filter(|t| t.id != lost_task && t.node_id != lost_node)
        .collect();
    assert_eq!(replacement.len(), 2, "a replacement on a healthy node");
    // The node returns and reports its task running: exactly 2 instances remain.
    for n in st.nodes.values_mut() {
        n.last_heartbeat = 30_000;
    }
    if let Some(n) = st.nodes.get_mut(&lost_node) {
        n.status = NodeStatus::Ready;
    }
    let s = ReportedStatus {
        task_id: lost_task.clone(),
        state: TaskState::Running,
        message: None,
        exit_code: None,
        ip_addresses: vec![],
        health: Some(vec![HealthResult {
            alive: true,
            ..Default::default()
        }]),
    };
    apply_statuses(&mut st, &mut ch, &lost_node, &[s], false, 30_000);
    for _ in 0..5 {
        reconcile(&mut st, &mut ch, 30_000, timeout);
        agents_step(&mut st, &|_| true);
    }
    assert_eq!(
        st.app_tasks("/web")
            .filter(|t| !t.state.is_terminal())
            .count(),
        2,
        "surplus killed"
    );
}

#[test]
fn unreachable_tasks_are_expunged() {
    let mut st = cluster(1);
    let mut ch = Changes::default();
    let mut j = app_json(1, "v1", 0.0, 1.0);
    j["unreachableStrategy"] = json!({"inactiveAfterSeconds": 0, "expungeAfterSeconds": 60});
    ops::create_app(
        &mut st,
        &mut ch,
        berth_core::validate::app_from_json(j).unwrap(),
        &RequestCtx::default(),
    )
    .unwrap();
    assert!(run_until_converged(&mut st, 20, &|_| true, |_| {}));
    let id = st.app_tasks("/web").next().unwrap().id.clone();
    if let Some(n) = st.nodes.get_mut("n0") {
        n.last_heartbeat = 0;
    }
    reconcile(&mut st, &mut ch, 11_000, Duration::from_secs(10));
    assert_eq!(st.tasks[&id].state, TaskState::Unreachable);
    reconcile(&mut st, &mut ch, 11_000 + 59_000, Duration::from_secs(10));
    assert!(st.tasks.contains_key(&id));
    reconcile(&mut st, &mut ch, 11_000 + 61_000, Duration::from_secs(10));
    assert!(
        !st.tasks.contains_key(&id),
        "expunged after expungeAfterSeconds"
    );
}

#[test]
fn a_node_waiting_for_the_answer_to_its_report_is_not_unreachable() {
    let mut st = cluster(2);
    let mut ch = Changes::default();
    for n in st.nodes.values_mut() {
        n.last_heartbeat = 0;
    }
    // n0's last report is still being made durable (a slow store); n1 went quiet.
    st.reports.lock().insert(
        "n0".into(),
        crate::state::ReportsInFlight {
            handling: 1,
            answered_at: 0,
        },
    );
    reconcile(&mut st, &mut ch, 60_000, Duration::from_secs(10));
    assert_eq!(st.nodes["n0"].status, NodeStatus::Ready);
    assert_eq!(st.nodes["n1"].status, NodeStatus::Unreachable);
    // Answered at 55 s: alive until 65 s, then the usual timeout applies again.
    st.reports.lock().insert(
        "n0".into(),
        crate::state::ReportsInFlight {
            handling: 0,
            answered_at: 55_000,
        },
    );
    reconcile(&mut st, &mut ch, 60_000, Duration::from_secs(10));
    assert_eq!(st.nodes["n0"].status, NodeStatus::Ready);
    reconcile(&mut st, &mut ch, 66_000, Duration::from_secs(10));
    assert_eq!(st.nodes["n0"].status, NodeStatus::Unreachable);
}

#[test]
fn backoff_grows_and_resets() {
    let mut st = cluster(1);
    let mut ch = Changes::default();
    let mut j = app_json(1, "v1", 0.0, 1.0);
    j["backoffSeconds"] = json!(2);
    j["backoffFactor"] = json!(2.0);
    j["maxLaunchDelaySeconds"] = json!(10);
    ops::create_app(
        &mut st,
        &mut ch,
        berth_core::validate::app_from_json(j).unwrap(),
        &RequestCtx::default(),
    )
    .unwrap();
    let mut delays = Vec::new();
    let mut now = 1_000_000;
    for _ in 0..5 {
        // Wait out any delay, launch, then the task fails.
        now = st
            .delays
            .get("/web")
            .map(|d| d.until)
            .unwrap_or(now)
            .max(now);
        reconcile(&mut st, &mut ch, now, Duration::from_secs(3600));
        st.committed(&ch);
        let t = st
            .app_tasks("/web")
            .find(|t| t.goal == TaskGoal::Running)
            .unwrap()
            .clone();
        let fail = ReportedStatus {
            task_id: t.id.clone(),
            state: TaskState::Failed,
            message: Some("exited with code 1".into()),
            exit_code: Some(1),
            ip_addresses: vec![],
            health: None,
        };
        apply_statuses(&mut st, &mut ch, &t.node_id, &[fail], false, now);
        let d = st.delays.get("/web").unwrap();
        delays.push(d.until - now);
        // Nothing launches while the delay runs.
        reconcile(&mut st, &mut ch, now + 500, Duration::from_secs(3600));
        assert_eq!(
            st.app_tasks("/web").count(),
            0,
            "no launch during the back-off delay"
        );
    }
    assert_eq!(
        delays,
        vec![2000, 4000, 8000, 10000, 10000],
        "backoffSeconds * factor^n, capped"
    );
    assert_eq!(st.last_failures["/web"]["message"], "exited with code 1");
    // DELETE /v2/queue/{id}/delay resets it.
    ops::reset_delay(&mut st, &mut ch, "/web").unwrap();
    reconcile(&mut st, &mut ch, now + 500, Duration::from_secs(3600));
    assert_eq!(
        st.app_tasks("/web").count(),
        1,
        "relaunched at once after the reset"
    );
}

#[test]
fn a_deployment_of_many_apps_completes_looking_only_at_what_changed() {
    let mut st = cluster(4);
    let mut ch = Changes::default();
    let apps: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"id": format!("/many/a{i}"), "cmd": "sleep 1", "instances": 2, "cpus": 0.01, "mem": 4}))
        .collect();
    ops::put_apps(&mut st, &mut ch, apps, false, false, &RequestCtx::default()).unwrap();
    st.dirty_apps.extend(st.apps.keys().cloned());
    let id = st.deployments.keys().next().unwrap().clone();
    let mut looks = 0;
    while st.deployments.contains_key(&id) {
        looks += 1;
        assert!(looks < 50, "the deployment never completed");
        let mut ch = Changes::default();
        // Chunks only, never a full pass: progress must come from the apps that changed.
        while reconcile_chunk(&mut st, &mut ch, 0, 500) {}
        st.committed(&ch);
        st.dirty_apps.extend(ch.apps.iter().cloned());
        if let Some(d) = st.deployments.get(&id) {
            let pending = d.unconverged.as_ref().map_or(0, |u| u.len());
            assert!(pending <= 1000, "{pending}");
        }
        agents_step(&mut st, &|_| true);
    }
    let running = st
        .tasks
        .values()
        .filter(|t| t.state == TaskState::Running)
        .count();
    assert_eq!(running, 2000);
}

/// The full pass (the safety net for anything no change marked) runs on the clock even
/// while wakes keep coming faster than the reconcile interval: counting only the sleeps that
/// ran out once starved it for as long as a busy cluster kept waking the loop.
#[tokio::test]
async fn full_pass_runs_while_wakes_keep_coming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(berth_store::RedbStore::open(dir.path()).expect("store"));
    let mut config = crate::ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.reconcile_interval = Duration::from_millis(20);
    let server = crate::Server::start(config, store).await.expect("server");
    let shared = server.shared.clone();
    // An app no change marked dirty (as if its mark were lost): only a full pass sees it,
    // and with no nodes it records the app as unplaced.
    let app = berth_core::validate::app_from_json(
        json!({"id": "/unmarked", "cmd": "sleep 1", "instances": 1, "cpus": 0.1, "mem": 16}),
    )
    .expect("app");
    shared.state.write().apps.insert(app.id.clone(), app.into());
    let waker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                shared.wake.notify_one();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = false;
    while tokio::time::Instant::now() < deadline {
        if shared.state.read().unplaced.contains_key("/unmarked") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waker.abort();
    assert!(
        seen,
        "no full pass looked at the unmarked app in 5 s of constant wakes"
    );
}

/// A task scaled away while still staged, that its agent never started (it polled before
/// the launch and after the kill), ends with the agent's next full report: its app's
/// deployment once waited for that task's end forever.
#[test]
fn a_task_killed_before_its_agent_started_it_ends_on_a_full_report() {
    let mut st = cluster(1);
    let mut ch = Changes::default();
    let app = berth_core::validate::app_from_json(
        json!({"id": "/brief", "cmd": "sleep 60", "instances": 1, "cpus": 0.1, "mem": 16}),
    )
    .unwrap();
    ops::create_app(&mut st, &mut ch, app, &RequestCtx::default()).unwrap();
    reconcile(&mut st, &mut ch, 0, Duration::from_secs(60));
    st.committed(&ch);
    let staged: Vec<String> = st.app_tasks("/brief").map(|t| t.id.clone()).collect();
    assert_eq!(staged.len(), 1);
    assert_eq!(st.tasks[&staged[0]].state, TaskState::Staging);

    let mut ch = Changes::default();
    // Forced, as the first deployment still waits for the staged task.
    update_app(&mut st, &mut ch, "/brief", json!({"instances": 0}), true);
    reconcile(&mut st, &mut ch, 0, Duration::from_secs(60));
    st.committed(&ch);
    assert_eq!(st.tasks[&staged[0]].goal, TaskGoal::Killed);
    assert_eq!(st.deployments.len(), 1, "the scale-down waits for the kill");

    // A partial report says nothing of it: it stays.
    let mut ch = Changes::default();
    apply_statuses(&mut st, &mut ch, "n0", &[], false, 0);
    assert!(st.tasks.contains_key(&staged[0]));
    // The agent's full report does not have it: it never ran there.
    apply_statuses(&mut st, &mut ch, "n0", &[], true, 0);
    assert!(!st.tasks.contains_key(&staged[0]));
    reconcile(&mut st, &mut ch, 0, Duration::from_secs(60));
    assert!(st.deployments.is_empty(), "{:?}", st.deployments.keys());
}
