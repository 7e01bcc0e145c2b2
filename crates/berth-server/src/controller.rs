//! Level-triggered controllers. Each pass compares desired state (apps, deployments) with
//! observed state (tasks as agents report them, node heartbeats) and takes the next safe
//! steps. Nothing depends on remembering an event: a restart or a lost message only delays
//! the next pass.

use crate::Shared;
use crate::state::{
    Changes, Cluster, K_DELAYS, K_DEPLOYMENTS, K_FAILURES, K_NODES, LaunchDelay, UnplacedInfo,
};
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

/// Most tasks launched per app in one pass, so one huge app cannot starve the others.
const MAX_LAUNCH_PER_APP_PER_PASS: usize = 5000;

/// Every app is looked at this often even when nothing marked it (time-based conditions:
/// `inactiveAfterSeconds`, `expungeAfterSeconds`; and the level-triggered safety net).
const FULL_PASS_EVERY: u32 = 4;

/// A pass looks at apps until it has visited this many tasks, then releases the lock (and
/// continues in the next chunk), so API requests never wait behind a whole-cluster pass.
const TASKS_PER_CHUNK: usize = 2000;

/// How many launched tasks count as one visited task in a chunk's budget (so a chunk
/// launches at most about 20,000 tasks).
const LAUNCHES_PER_VISIT: usize = 10;

pub async fn run(shared: Shared) {
    let interval = shared.config.reconcile_interval;
    let mut ticks = 0u32;
    loop {
        let woken = tokio::select! {
            _ = shared.wake.notified() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        if !woken {
            ticks += 1;
            if ticks >= FULL_PASS_EVERY {
                ticks = 0;
                let mut st = shared.state.write();
                let all: Vec<String> = st.apps.keys().cloned().collect();
                st.dirty_apps.extend(all);
                st.full_pass = true;
            }
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
    progress_deployments(st, ch, |app| full || done.contains(app));
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
    let late: Vec<String> = st
        .nodes
        .values()
        .filter(|n| {
            n.status == NodeStatus::Ready && now - n.last_heartbeat > timeout.as_millis() as i64
        })
        .map(|n| n.info.id.clone())
        .collect();
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
        .filter(|(app_id, _)| !st.apps.contains_key(*app_id))
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
        let t = Task {
            id,
            app_id: app.id.clone(),
            version: version.clone(),
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
        };
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
        // longer has, is lost (e.g. the agent's data dir was wiped).
        let reported: std::collections::HashSet<&str> =
            statuses.iter().map(|s| s.task_id.as_str()).collect();
        let missing: Vec<String> = st
            .tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter(|id| !reported.contains(id.as_str()))
            .filter_map(|id| st.tasks.get(id))
            .filter(|t| {
                matches!(
                    t.state,
                    TaskState::Starting | TaskState::Running | TaskState::Unreachable
                )
            })
            .map(|t| t.id.clone())
            .collect();
        for id in missing {
            if let Some(mut t) = st.tasks.get(&id).cloned() {
                t.state = TaskState::Lost;
                t.message = Some("the agent no longer has this task".into());
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

/// Is this app in the state a deployment's target asks for?
fn converged(
    st: &Cluster,
    app_id: &str,
    target: Option<&AppDefinition>,
    deployment_version: &str,
) -> bool {
    let killing = st.app_tasks(app_id).any(|t| t.goal == TaskGoal::Killed);
    match target {
        None => {
            let superseded = st
                .apps
                .get(app_id)
                .map(|a| a.version.as_deref().unwrap_or("") > deployment_version);
            !killing && superseded.unwrap_or(true)
        }
        Some(def) => {
            let Some(current) = st.apps.get(app_id) else {
                return true;
            };
            if current.version != def.version {
                return true; // superseded by a newer (forced) change
            }
            if killing {
                return false;
            }
            let config = def.config_version();
            let mut n = 0usize;
            for t in st.app_tasks(app_id) {
                if t.config_version != config || !is_healthy(def, t) {
                    return false;
                }
                n += 1;
            }
            n == def.instances.max(0) as usize
        }
    }
}

/// Why a deployment is not finished yet, in words: instances that cannot be placed, or a
/// new version that fails its health checks or keeps failing.
fn blocked_reason(st: &Cluster, app_id: &str, target: Option<&AppDefinition>) -> Option<String> {
    let def = target?;
    let mut reasons = Vec::new();
    if let Some(u) = st.unplaced.get(app_id) {
        reasons.push(format!(
            "{app_id}: {} of {} instances unplaced: {}",
            u.count, def.instances, u.summary
        ));
    }
    let config = def.config_version();
    let failing_check = st
        .app_tasks(app_id)
        .filter(|t| t.config_version == config && t.goal == TaskGoal::Running)
        .flat_map(|t| t.health.iter())
        .filter(|h| !h.alive && h.last_failure.is_some())
        .max_by(|a, b| a.last_failure.cmp(&b.last_failure));
    if let Some(h) = failing_check {
        reasons.push(format!(
            "{app_id}: new version failing health checks: last failure {} at {}",
            h.last_failure_cause.as_deref().unwrap_or("unknown"),
            h.last_failure.as_deref().unwrap_or("?")
        ));
    } else if let Some(f) = st
        .last_failures
        .get(app_id)
        .filter(|f| f["version"].as_str() == def.version.as_deref())
    {
        reasons.push(format!(
            "{app_id}: new version tasks fail: {} ({} at {})",
            f["message"].as_str().unwrap_or(""),
            f["state"].as_str().unwrap_or(""),
            f["timestamp"].as_str().unwrap_or("")
        ));
    }
    if let Some(d) = st
        .delays
        .get(app_id)
        .filter(|d| Some(&d.version) == def.version.as_ref())
    {
        reasons.push(format!(
            "{app_id}: launches delayed by back-off after {} failures",
            d.failures
        ));
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

/// Moves forward the deployments that touch an app `looked_at` selects. Linear in the
/// deployment's apps: a plan is never cloned, and its `plan` JSON is rendered once.
fn progress_deployments(st: &mut Cluster, ch: &mut Changes, looked_at: impl Fn(&str) -> bool) {
    let ids: Vec<String> = st
        .deployments
        .values()
        .filter(|d| d.affected_apps.iter().any(|a| looked_at(a)))
        .map(|d| d.id.clone())
        .collect();
    for id in ids {
        let Some(d) = st.deployments.get(&id) else {
            continue;
        };
        // StartApplication steps complete as soon as the app exists.
        let mut step = d.current_step;
        while step < d.steps.len()
            && d.steps[step - 1]
                .actions
                .iter()
                .all(|a| a.action == berth_core::deployment::ActionKind::StartApplication)
        {
            ch.event(step_success(d, step));
            step += 1;
        }
        let done = d
            .target
            .iter()
            .all(|(app_id, target)| converged(st, app_id, target.as_ref(), &d.version));
        if done {
            if step >= 1 && step <= d.steps.len() {
                ch.event(step_success(d, step));
            }
            ch.event(Event::with_plan(
                "deployment_success",
                json!({"id": d.id}),
                &d.plan_json(),
            ));
            st.deployments.remove(&id);
            ch.delete(format!("{K_DEPLOYMENTS}{id}"));
            continue;
        }
        let reasons: Vec<String> = d
            .target
            .iter()
            .filter_map(|(app_id, target)| blocked_reason(st, app_id, target.as_ref()))
            .collect();
        let blocked = (!reasons.is_empty()).then(|| reasons.join("; "));
        let moved = step != d.current_step;
        if let Some(d) = st.deployments.get_mut(&id) {
            d.blocked = blocked;
            if moved {
                d.current_step = step;
                ch.put(format!("{K_DEPLOYMENTS}{id}"), &*d);
            }
        }
    }
}

/// `deployment_step_success` for the 1-based `step` of `d`.
fn step_success(d: &berth_core::deployment::Deployment, step: usize) -> Event {
    let actions = d
        .steps
        .get(step.saturating_sub(1))
        .map(|s| s.actions.as_slice())
        .unwrap_or_default();
    Event::with_plan(
        "deployment_step_success",
        json!({"currentStep": {"actions": actions}}),
        &d.plan_json(),
    )
}

#[cfg(test)]
mod tests {
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

    fn cluster(nodes: usize) -> Cluster {
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

        let body = match app_json(4, "v2", 0.5, 0.25) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        ops::put_app(
            &mut st,
            &mut ch,
            "/web",
            AppUpdate::Definition(body),
            true,
            false,
            &RequestCtx::default(),
        )
        .unwrap();
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
        let body = match app_json(2, "v2", 1.0, 0.5) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        ops::put_app(
            &mut st,
            &mut ch,
            "/web",
            AppUpdate::Definition(body),
            true,
            false,
            &RequestCtx::default(),
        )
        .unwrap();
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
        let body = match app_json(3, "v2", 1.0, 0.0) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        ops::put_app(
            &mut st,
            &mut ch,
            "/web",
            AppUpdate::Definition(body),
            true,
            false,
            &RequestCtx::default(),
        )
        .unwrap();
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
}
