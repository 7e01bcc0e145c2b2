//! Level-triggered controllers. Each pass compares desired state (apps, deployments) with
//! observed state (tasks as agents report them, node heartbeats) and takes the next safe
//! steps. Nothing depends on remembering an event: a restart or a lost message only delays
//! the next pass.

use crate::Shared;
use crate::state::{Changes, Cluster, K_DELAYS, K_FAILURES, K_NODES, LaunchDelay, UnplacedInfo};
use berth_core::Constraint;
use berth_core::app::AppDefinition;
use berth_core::event::Event;
use berth_core::node::NodeStatus;
use berth_core::protocol::ReportedStatus;
use berth_core::task::{Task, TaskGoal, TaskState};
use berth_core::time::format_millis;
use berth_scheduler::{PlacementRequest, Strategy};
use serde_json::json;
use std::time::Duration;

mod deployments;
pub mod jobs;
use deployments::progress_deployments;

/// Most tasks launched per app in one pass, so one huge app cannot starve the others.
const MAX_LAUNCH_PER_APP_PER_PASS: usize = 5000;

/// Every app is looked at once per this many reconcile intervals even when nothing marked
/// it (time-based conditions: `inactiveAfterSeconds`, `expungeAfterSeconds`; and the
/// level-triggered safety net).
const FULL_PASS_EVERY: u32 = 4;

/// A pass looks at apps until it has visited this many tasks, then releases the lock (and
/// continues in the next chunk), so API requests never wait behind a whole-cluster pass.
const TASKS_PER_CHUNK: usize = 2000;

/// How many launched tasks count as one visited task in a chunk's budget (so a chunk
/// launches at most about 20,000 tasks).
const LAUNCHES_PER_VISIT: usize = 10;

pub async fn run(shared: Shared) {
    let interval = shared.config.reconcile_interval;
    // Measured by the clock, not by quiet ticks: a busy cluster wakes the loop more often
    // than `interval`, and counting only the sleeps that ran out once starved the full
    // pass (the safety net) for as long as the wakes kept coming.
    let full_pass_every = interval * FULL_PASS_EVERY;
    let mut last_full_pass = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        if last_full_pass.elapsed() >= full_pass_every {
            last_full_pass = tokio::time::Instant::now();
            let mut st = shared.state.write();
            let all: Vec<String> = st.apps.keys().cloned().collect();
            st.dirty_apps.extend(all);
            st.full_pass = true;
        }
        let node_timeout = shared.config.node_timeout;
        let mut first = true;
        loop {
            let result = shared
                .apply(|st, ch| {
                    let now = berth_core::time::now_millis();
                    if first {
                        begin_pass(st, ch, now, node_timeout);
                    }
                    Ok(reconcile_chunk(st, ch, now, TASKS_PER_CHUNK))
                })
                .await;
            first = false;
            match result {
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile pass failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
        // Let a burst of changes accumulate instead of reconciling after every single one.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One full pass over every app (tests, and anything that wants the whole picture now).
pub fn reconcile(st: &mut Cluster, ch: &mut Changes, now: i64, node_timeout: Duration) {
    let all: Vec<String> = st.apps.keys().cloned().collect();
    st.dirty_apps.extend(all);
    st.full_pass = true;
    begin_pass(st, ch, now, node_timeout);
    while reconcile_chunk(st, ch, now, usize::MAX) {}
}

/// Once per pass, before its chunks: nodes that missed their heartbeats, and the apps whose
/// launch delay ran out.
fn begin_pass(st: &mut Cluster, ch: &mut Changes, now: i64, node_timeout: Duration) {
    check_nodes(st, ch, now, node_timeout);
    // Launch delays that ran out since the last look: their apps may launch again.
    let expired: Vec<String> = st
        .delays
        .iter()
        .filter(|(_, d)| d.until > st.delays_checked_at && d.until <= now)
        .map(|(id, _)| id.clone())
        .collect();
    st.dirty_apps.extend(expired);
    st.delays_checked_at = now;
}

/// Looks at the apps marked dirty (by changes to them or their tasks, node changes, expired
/// launch delays), visiting at most about `task_budget` tasks. Returns whether apps are left.
pub fn reconcile_chunk(st: &mut Cluster, ch: &mut Changes, now: i64, task_budget: usize) -> bool {
    let mut visited = 0usize;
    let mut done: std::collections::HashSet<String> = Default::default();
    while visited < task_budget {
        let Some(id) = st.dirty_apps.pop_first() else {
            break;
        };
        visited += 1 + st.tasks_by_app.get(&id).map_or(0, |t| t.len());
        // Job runs' tasks are the job controller's (see `jobs`).
        if berth_core::job::run::job_of_app_id(&id).is_some() {
            continue;
        }
        if let Some(app) = st.apps.get(&id).cloned() {
            let launched_before = ch.new_tasks.len();
            reconcile_app(st, ch, &app, now);
            // Launches count too, lightly: they are what the store must write before the
            // next chunk (one chunk once launched a million tasks in a single transaction),
            // but many small chunks make agents poll more often.
            visited += (ch.new_tasks.len() - launched_before) / LAUNCHES_PER_VISIT;
        }
        expunge_unreachable(st, ch, &id, now);
        done.insert(id);
    }
    let more = !st.dirty_apps.is_empty();
    // Apps marked again by this chunk's own changes are looked at in the next pass.
    if !more {
        kill_orphans(st, ch);
    }
    let full = st.full_pass && !more;
    progress_deployments(st, ch, |app| done.contains(app), full);
    if full {
        st.full_pass = false;
    }
    more
}

/// Unreachable tasks are forgotten after their app's `expungeAfterSeconds`. If their node
/// comes back, its agent stops them because the server no longer lists them.
fn expunge_unreachable(st: &mut Cluster, ch: &mut Changes, app_id: &str, now: i64) {
    let after = st
        .apps
        .get(app_id)
        .and_then(|a| match &a.unreachable_strategy {
            berth_core::app::UnreachableStrategy::Enabled(e) => {
                Some((e.expunge_after_seconds * 1000.0) as i64)
            }
            berth_core::app::UnreachableStrategy::Disabled(_) => None,
        });
    let app_exists = st.apps.contains_key(app_id);
    let expired: Vec<String> = st
        .app_tasks(app_id)
        .filter(|t| t.state == TaskState::Unreachable)
        // Apps that are gone: nothing to wait for.
        .filter(|t| {
            after.is_none_or(|ms| now - t.updated_at >= ms) && (after.is_some() || !app_exists)
        })
        .map(|t| t.id.clone())
        .collect();
    for id in expired {
        if let Some(mut t) = st.remove_task(&id, ch) {
            t.state = TaskState::Gone;
            ch.event(status_event(
                &t,
                Some("expunged: unreachable for longer than expungeAfterSeconds"),
            ));
        }
    }
}

/// Marks nodes unreachable after missed heartbeats; their tasks become TASK_UNREACHABLE.
fn check_nodes(st: &mut Cluster, ch: &mut Changes, now: i64, timeout: Duration) {
    let late: Vec<String> = {
        let reports = st.reports.lock();
        st.nodes
            .values()
            .filter(|n| {
                let r = reports.get(&n.info.id).copied().unwrap_or_default();
                let last = n.last_heartbeat.max(r.answered_at);
                n.status == NodeStatus::Ready
                    && now - last > timeout.as_millis() as i64
                    && r.handling == 0
            })
            .map(|n| n.info.id.clone())
            .collect()
    };
    for id in late {
        if let Some(n) = st.nodes.get_mut(&id) {
            n.status = NodeStatus::Unreachable;
            tracing::warn!(node = %id, "node missed its heartbeats: unreachable");
            ch.put(format!("{K_NODES}{id}"), &*n);
        }
        st.sync_sched_node(&id);
        let tasks: Vec<String> = st
            .tasks_by_node
            .get(&id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for tid in tasks {
            let Some(t) = st.tasks.get_mut(&tid) else {
                continue;
            };
            if t.goal == TaskGoal::Killed {
                // It cannot be killed through its agent: forget it. If the node comes back,
                // the agent stops anything the server does not list.
                st.remove_task(&tid, ch);
                continue;
            }
            t.state = TaskState::Unreachable;
            t.updated_at = now;
            ch.event(status_event(t, Some("node unreachable")));
            st.save_task(&tid, ch);
        }
    }
}

/// Tasks of apps that no longer exist are killed.
fn kill_orphans(st: &mut Cluster, ch: &mut Changes) {
    // Every task is indexed by app: look only at the apps that are gone, not at every task.
    let orphans: Vec<String> = st
        .tasks_by_app
        .iter()
        .filter(|(app_id, _)| {
            !st.apps.contains_key(*app_id) && berth_core::job::run::job_of_app_id(app_id).is_none()
        })
        .flat_map(|(_, ids)| ids.iter())
        .filter_map(|id| st.tasks.get(id))
        .filter(|t| t.goal == TaskGoal::Running)
        .map(|t| t.id.clone())
        .collect();
    for id in orphans {
        if let Some(t) = st.tasks.get_mut(&id) {
            t.goal = TaskGoal::Killed;
        }
        st.save_task(&id, ch);
    }
}

fn is_healthy(app: &AppDefinition, t: &Task) -> bool {
    t.state == TaskState::Running && (app.health_checks.is_empty() || t.is_healthy() == Some(true))
}

/// How long an unreachable task still counts as an instance before it is replaced.
fn inactive_after_ms(app: &AppDefinition) -> Option<i64> {
    match &app.unreachable_strategy {
        berth_core::app::UnreachableStrategy::Enabled(e) => {
            Some((e.inactive_after_seconds * 1000.0) as i64)
        }
        berth_core::app::UnreachableStrategy::Disabled(_) => None,
    }
}

/// Converges one app: launch missing instances, replace outdated ones within the upgrade
/// strategy's bounds, kill the surplus.
fn reconcile_app(st: &mut Cluster, ch: &mut Changes, app: &AppDefinition, now: i64) {
    let config = app.config_version().to_string();
    let inactive_after = inactive_after_ms(app);
    let mut current: Vec<&Task> = Vec::new();
    let mut outdated: Vec<&Task> = Vec::new();
    let mut draining: Vec<&Task> = Vec::new();
    for t in st.app_tasks(&app.id) {
        if t.goal != TaskGoal::Running || t.state.is_terminal() {
            continue;
        }
        if t.state == TaskState::Unreachable {
            // Replaced once inactive; until then it still counts.
            if let Some(after) = inactive_after
                && now - t.updated_at >= after
            {
                continue;
            }
        }
        let on_draining_node = st.nodes.get(&t.node_id).is_some_and(|n| n.draining);
        if t.config_version != config {
            outdated.push(t);
        } else if on_draining_node {
            draining.push(t);
        } else {
            current.push(t);
        }
    }
    let target = app.instances.max(0) as usize;
    let strategy = app.upgrade_strategy;
    // A drain may always surge by the tasks it moves: each replacement must be healthy before
    // the task it replaces is killed, whatever maximumOverCapacity says.
    let max_total =
        target + (target as f64 * strategy.maximum_over_capacity).floor() as usize + draining.len();
    let min_healthy = (target as f64 * strategy.minimum_health_capacity).ceil() as usize;
    let upgrading = !outdated.is_empty();
    // Tasks on draining nodes are replaced exactly like outdated ones.
    outdated.extend(draining);

    let mut to_kill: Vec<String> = Vec::new();
    // Surplus of the current version.
    if current.len() > target {
        let mut c = current.clone();
        sort_for_kill(app, &mut c);
        to_kill.extend(c.iter().take(current.len() - target).map(|t| t.id.clone()));
    }
    let current_kept = current.len().min(target);

    // Outdated instances: unhealthy ones can always go; a healthy one only while the healthy
    // count stays above minimumHealthCapacity (new instances count once healthy), and only
    // when the new ones already cover the target or more than enough are healthy.
    let mut healthy_left = current
        .iter()
        .chain(outdated.iter())
        .filter(|t| is_healthy(app, t))
        .count();
    let mut outdated_sorted = outdated.clone();
    sort_for_kill(app, &mut outdated_sorted);
    let mut outdated_left = outdated.len();
    for t in &outdated_sorted {
        let healthy = is_healthy(app, t);
        if !healthy || healthy_left > min_healthy {
            to_kill.push(t.id.clone());
            outdated_left -= 1;
            if healthy {
                healthy_left -= 1;
            }
        }
    }
    // Room for new instances within maximumOverCapacity. Tasks being killed still run until
    // their agent stops them, so they count until they are gone.
    let still_alive = st
        .app_tasks(&app.id)
        .filter(|t| t.goal == TaskGoal::Killed && !t.state.is_terminal())
        .count();
    let live_after_kills = current.len() + outdated.len() + still_alive;
    let want_new = target.saturating_sub(current_kept);
    let room = max_total.saturating_sub(live_after_kills).min(want_new);
    // Deadlock guard for upgrades (minimumHealthCapacity 1, maximumOverCapacity 0): when
    // nothing is pending (no kill in flight, every new instance healthy) and still no room,
    // make progress like Marathon by replacing one instance at a time.
    if upgrading
        && still_alive == 0
        && current.iter().all(|t| is_healthy(app, t))
        && room == 0
        && want_new > 0
        && outdated_left > 0
        && to_kill.is_empty()
        && let Some(t) = outdated_sorted.first()
    {
        to_kill.push(t.id.clone());
    }

    for id in &to_kill {
        if let Some(t) = st.tasks.get_mut(id) {
            t.goal = TaskGoal::Killed;
        }
        st.save_task(id, ch);
    }
    if room > 0 {
        launch(st, ch, app, room.min(MAX_LAUNCH_PER_APP_PER_PASS), now);
    } else if want_new == 0 {
        st.unplaced.remove(&app.id);
    }
}

/// Orders tasks so the first ones are the best to kill: not yet running first, then by the
/// app's killSelection.
fn sort_for_kill(app: &AppDefinition, tasks: &mut [&Task]) {
    let oldest_first = app.kill_selection == "OLDEST_FIRST";
    tasks.sort_by(|a, b| {
        let ar = a.state == TaskState::Running;
        let br = b.state == TaskState::Running;
        ar.cmp(&br).then_with(|| {
            if oldest_first {
                a.staged_at.cmp(&b.staged_at)
            } else {
                b.staged_at.cmp(&a.staged_at)
            }
        })
    });
}

/// The scheduler request for one instance of an app.
pub fn placement_request(app: &AppDefinition) -> PlacementRequest {
    let constraints = app
        .constraints
        .iter()
        .filter_map(|c| Constraint::parse(c).ok())
        .collect();
    // Stored apps were validated; an unreadable label (an older version's app) means the default.
    let strategy = if app.spread().unwrap_or(false) {
        Strategy::Spread
    } else {
        Strategy::BinPack
    };
    let pinned_cores = if app.pinned_cpus().unwrap_or(false) {
        app.cpus.ceil().max(1.0) as u32
    } else {
        0
    };
    PlacementRequest {
        app_id: app.id.clone(),
        resources: berth_core::NodeResources::new(app.cpus, app.mem, app.disk),
        ports: app.requested_host_ports(),
        constraints,
        driver: app.driver().as_str().to_string(),
        strategy,
        pinned_cores,
        namespace: berth_core::namespace::namespace_of(&app.id).to_string(),
    }
}

fn launch(st: &mut Cluster, ch: &mut Changes, app: &AppDefinition, count: usize, now: i64) {
    let version = app.version.clone().unwrap_or_default();
    if let Some(d) = st.delays.get(&app.id)
        && d.version == version
        && d.until > now
    {
        return;
    }
    let req = placement_request(app);
    let ids: Vec<String> = (0..count).map(|_| Task::new_id(&app.id)).collect();
    let (placed, unplaced) = st.scheduler.place_many(&ids, &req);
    let placed_n = placed.len();
    for (id, p) in placed {
        let t = placed_task(st, id, app, &version, &req, p, now);
        ch.event(status_event(&t, None));
        st.insert_new_task(t, ch);
    }
    st.count("tasks_launched", placed_n as u64);
    match unplaced {
        Some(u) => {
            let since = st.unplaced.get(&app.id).map(|i| i.since).unwrap_or(now);
            st.unplaced.insert(
                app.id.clone(),
                UnplacedInfo {
                    count: count - placed_n,
                    since,
                    last_attempt: now,
                    nodes_total: u.nodes_total,
                    summary: u.summary(),
                    reasons: u.reasons,
                },
            );
        }
        None => {
            st.unplaced.remove(&app.id);
        }
    }
}

/// A new task of `app` at `version`, placed by the scheduler, about to be staged.
pub(crate) fn placed_task(
    st: &Cluster,
    id: String,
    app: &AppDefinition,
    version: &str,
    req: &PlacementRequest,
    p: berth_scheduler::Placement,
    now: i64,
) -> Task {
    let host = st
        .nodes
        .get(&p.node_id)
        .map(|n| n.info.address.clone())
        .unwrap_or(p.host.clone());
    // Host networking: the task is reachable at its node's address (as in Marathon).
    let ip_addresses = host
        .parse::<std::net::IpAddr>()
        .map(|ip| vec![ip.to_string()])
        .unwrap_or_default();
    Task {
        id,
        app_id: app.id.clone(),
        version: version.to_string(),
        config_version: app.config_version().to_string(),
        node_id: p.node_id,
        host,
        ports: p.ports,
        service_ports: vec![],
        state: TaskState::Staging,
        goal: TaskGoal::Running,
        resources: req.resources,
        driver: req.driver.clone(),
        staged_at: now,
        started_at: None,
        updated_at: now,
        message: None,
        exit_code: None,
        health: vec![],
        ip_addresses,
        cpuset: p.cpuset,
    }
}

/// A `status_update_event` for a task.
pub fn status_event(t: &Task, message: Option<&str>) -> Event {
    Event::new(
        "status_update_event",
        json!({
            "slaveId": t.node_id,
            "taskId": t.id,
            "taskStatus": crate::render::visible_state(t),
            "message": message.map(str::to_string).or_else(|| t.message.clone()).unwrap_or_default(),
            "appId": t.app_id,
            "host": t.host,
            "ipAddresses": t.ip_addresses.iter().map(|ip| json!({"ipAddress": ip, "protocol": "IPv4"})).collect::<Vec<_>>(),
            "ports": t.ports,
            "version": t.version,
        }),
    )
}

/// Applies what an agent reported. Returns the ids the server does not know on that node.
pub fn apply_statuses(
    st: &mut Cluster,
    ch: &mut Changes,
    node_id: &str,
    statuses: &[ReportedStatus],
    full: bool,
    now: i64,
) -> Vec<String> {
    let mut unknown = Vec::new();
    for s in statuses {
        let Some(t) = st.tasks.get_mut(&s.task_id) else {
            unknown.push(s.task_id.clone());
            continue;
        };
        if t.node_id != node_id {
            unknown.push(s.task_id.clone());
            continue;
        }
        let health = s.health.clone().unwrap_or_else(|| t.health.clone());
        let health_changed = t.is_healthy() != {
            if health.is_empty() {
                None
            } else {
                Some(health.iter().all(|h| h.alive))
            }
        };
        // A node coming back reports its tasks again: they stop being unreachable.
        let state_changed = t.state != s.state;
        // Drivers report addresses only when they know better (container IPs).
        let ips_changed = !s.ip_addresses.is_empty() && t.ip_addresses != s.ip_addresses;
        if !state_changed && !health_changed && !ips_changed {
            if t.health != health {
                t.health = health;
                // Timestamps inside health results changed: keep memory fresh, skip the write.
            }
            continue;
        }
        t.state = s.state;
        t.updated_at = now;
        if s.message.is_some() {
            t.message = s.message.clone();
        }
        if s.exit_code.is_some() {
            t.exit_code = s.exit_code;
        }
        if ips_changed {
            t.ip_addresses = s.ip_addresses.clone();
        }
        if health_changed {
            let alive = health.iter().all(|h| h.alive) && !health.is_empty();
            ch.event(Event::new(
                "health_status_changed_event",
                json!({"appId": t.app_id, "taskId": t.id, "instanceId": t.id, "version": t.version, "alive": alive}),
            ));
        }
        t.health = health;
        if s.state == TaskState::Running && t.started_at.is_none() {
            t.started_at = Some(now);
        }
        if state_changed {
            ch.event(status_event(t, s.message.as_deref()));
        }
        if s.state.is_terminal() {
            let t = t.clone();
            on_terminal(st, ch, &t, now);
            st.remove_task(&t.id, ch);
        } else {
            // A state change is not an assignment change: no agent re-poll.
            let id = t.id.clone();
            st.save_task_state(&id, ch);
        }
    }
    // Ghosts: running tasks the server does not know (e.g. left behind by a lost server state
    // or a daemon upgrade). The agent stops them after its grace period; announce each once.
    for s in statuses
        .iter()
        .filter(|s| !s.state.is_terminal() && unknown.contains(&s.task_id))
    {
        if st.ghosts_reported.len() > 100_000 {
            st.ghosts_reported.clear();
        }
        if st.ghosts_reported.insert(s.task_id.clone()) {
            tracing::warn!(node = node_id, task = %s.task_id, "agent runs a task the server does not know");
            ch.event(Event::new(
                "unknown_instance_terminated_event",
                json!({"instanceId": s.task_id, "runSpecId": "", "condition": "Unknown", "slaveId": node_id,
                       "message": "a task this server does not know is running on the node; the agent stops it after its grace period"}),
            ));
        }
    }
    if full {
        // A task the server placed here, that the agent had started, and that the agent no
        // longer has, is lost (e.g. the agent's data dir was wiped). One killed while still
        // staged, that the agent does not have, never started there: it is over, or its
        // app's deployment would wait for its end forever.
        let reported: std::collections::HashSet<&str> =
            statuses.iter().map(|s| s.task_id.as_str()).collect();
        let missing: Vec<(String, TaskState)> = st
            .tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter(|id| !reported.contains(id.as_str()))
            .filter_map(|id| st.tasks.get(id))
            .filter_map(|t| match t.state {
                TaskState::Starting | TaskState::Running | TaskState::Unreachable => {
                    Some((t.id.clone(), TaskState::Lost))
                }
                TaskState::Staging if t.goal == TaskGoal::Killed => {
                    Some((t.id.clone(), TaskState::Killed))
                }
                _ => None,
            })
            .collect();
        for (id, end) in missing {
            if let Some(mut t) = st.tasks.get(&id).cloned() {
                t.state = end;
                t.message = Some(if end == TaskState::Killed {
                    "killed before the agent started it".into()
                } else {
                    "the agent no longer has this task".into()
                });
                ch.event(status_event(&t, t.message.as_deref()));
                on_terminal(st, ch, &t, now);
                st.remove_task(&id, ch);
            }
        }
    }
    unknown
}

/// Bookkeeping when a task ends: failures are recorded and slow down relaunches.
fn on_terminal(st: &mut Cluster, ch: &mut Changes, t: &Task, now: i64) {
    if let Some(job) = berth_core::job::run::job_of_app_id(&t.app_id) {
        jobs::run_task_ended(st, ch, job, t, now);
        return;
    }
    let failed = matches!(
        t.state,
        TaskState::Failed | TaskState::Error | TaskState::Lost
    );
    if t.goal == TaskGoal::Killed {
        return;
    }
    st.count(
        if failed {
            "tasks_failed"
        } else {
            "tasks_finished"
        },
        1,
    );
    let record = json!({
        "appId": t.app_id,
        "host": t.host,
        "message": t.message.clone().unwrap_or_default(),
        "state": t.state,
        "taskId": t.id,
        "instanceId": t.id,
        "timestamp": format_millis(now),
        "version": t.version,
        "slaveId": t.node_id,
    });
    if t.state != TaskState::Finished {
        ch.put(format!("{K_FAILURES}{}", t.app_id), &record);
        st.last_failures.insert(t.app_id.clone(), record);
    }
    if !failed {
        return;
    }
    let Some(app) = st.apps.get(&t.app_id) else {
        return;
    };
    let version = app.version.clone().unwrap_or_default();
    let prev = st
        .delays
        .get(&t.app_id)
        .filter(|d| d.version == version)
        .map(|d| d.failures)
        .unwrap_or(0);
    let failures = prev + 1;
    let delay_s = (app.backoff_seconds
        * app
            .backoff_factor
            .powi(failures.saturating_sub(1).min(1000) as i32))
    .min(app.max_launch_delay_seconds)
    .max(0.0);
    let d = LaunchDelay {
        failures,
        until: now + (delay_s * 1000.0) as i64,
        version,
    };
    ch.put(format!("{K_DELAYS}{}", t.app_id), &d);
    st.delays.insert(t.app_id.clone(), d);
}

#[cfg(test)]
mod tests;
