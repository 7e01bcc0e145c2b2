//! Marathon-shaped JSON for apps, tasks, the queue and groups. Only keys marathon-python
//! 0.13 accepts are emitted (it raises on unknown keys).

use crate::ops::service_ports_of;
use crate::state::Cluster;
use berth_core::app::AppDefinition;
use berth_core::path;
use berth_core::task::{Task, TaskGoal, TaskState};
use berth_core::time::format_millis;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Which optional parts to embed in an app (`embed=app.tasks` etc.).
#[derive(Debug, Clone, Copy, Default)]
pub struct Embed {
    pub tasks: bool,
    pub last_task_failure: bool,
}

impl Embed {
    pub fn from_params(values: &[String], default_tasks: bool) -> Embed {
        let mut e = Embed {
            tasks: default_tasks,
            last_task_failure: default_tasks,
        };
        for v in values {
            match v.trim_start_matches("apps.").trim_start_matches("app.") {
                "tasks" => e.tasks = true,
                "lastTaskFailure" | "failures" => e.last_task_failure = true,
                _ => {}
            }
        }
        e
    }
}

/// The state clients see: a task the server is killing shows as `TASK_KILLING`.
pub fn visible_state(t: &Task) -> TaskState {
    if t.goal == TaskGoal::Killed && !t.state.is_terminal() {
        TaskState::Killing
    } else {
        t.state
    }
}

pub fn task_json(t: &Task, app: Option<&AppDefinition>) -> Value {
    let service_ports: Vec<i64> = app.map(service_ports_of).unwrap_or_default();
    let mut v = json!({
        "appId": t.app_id,
        "id": t.id,
        "host": t.host,
        "ports": t.ports,
        "servicePorts": service_ports,
        "slaveId": t.node_id,
        "stagedAt": format_millis(t.staged_at),
        "state": visible_state(t),
        "version": t.version,
        "ipAddresses": t.ip_addresses.iter().map(|ip| json!({"ipAddress": ip, "protocol": "IPv4"})).collect::<Vec<_>>(),
        "healthCheckResults": t.health,
        "localVolumes": [],
    });
    if let Some(s) = t.started_at {
        v["startedAt"] = json!(format_millis(s));
    }
    v
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub staged: usize,
    pub running: usize,
    pub healthy: usize,
    pub unhealthy: usize,
}

pub fn counts(st: &Cluster, app: &AppDefinition) -> Counts {
    let mut c = Counts::default();
    let has_checks = !app.health_checks.is_empty();
    for t in st.app_tasks(&app.id) {
        if t.goal == TaskGoal::Killed {
            continue;
        }
        match t.state {
            TaskState::Staging | TaskState::Starting => c.staged += 1,
            TaskState::Running => {
                c.running += 1;
                if has_checks {
                    match t.is_healthy() {
                        Some(true) => c.healthy += 1,
                        Some(false) => c.unhealthy += 1,
                        None => {}
                    }
                }
            }
            _ => {}
        }
    }
    c
}

pub fn app_json(st: &Cluster, app: &AppDefinition, embed: Embed) -> Value {
    let mut v = serde_json::to_value(app).unwrap_or_else(|_| json!({"id": app.id}));
    let c = counts(st, app);
    v["tasksStaged"] = json!(c.staged);
    v["tasksRunning"] = json!(c.running);
    v["tasksHealthy"] = json!(c.healthy);
    v["tasksUnhealthy"] = json!(c.unhealthy);
    v["deployments"] = json!(
        st.deployments_of(&app.id)
            .into_iter()
            .map(|id| json!({"id": id}))
            .collect::<Vec<_>>()
    );
    if embed.tasks {
        let mut tasks: Vec<&Task> = st.app_tasks(&app.id).collect();
        tasks.sort_by(|a, b| a.staged_at.cmp(&b.staged_at).then(a.id.cmp(&b.id)));
        v["tasks"] = json!(
            tasks
                .into_iter()
                .map(|t| task_json(t, Some(app)))
                .collect::<Vec<_>>()
        );
    }
    if embed.last_task_failure
        && let Some(f) = st.last_failures.get(&app.id)
    {
        v["lastTaskFailure"] = f.clone();
    }
    v
}

/// The group tree rooted at `id`, built from app ids and explicit groups.
pub fn group_json(st: &Cluster, id: &str, embed: Embed) -> Value {
    let mut children: BTreeSet<String> = BTreeSet::new();
    let child_of = |candidate: &str| -> Option<String> {
        if candidate == id || !path::is_within(candidate, id) {
            return None;
        }
        let rest = if id == "/" {
            &candidate[1..]
        } else {
            &candidate[id.len() + 1..]
        };
        let first = rest.split('/').next()?;
        Some(if id == "/" {
            format!("/{first}")
        } else {
            format!("{id}/{first}")
        })
    };
    for g in &st.groups {
        if let Some(c) = child_of(g) {
            children.insert(c);
        }
    }
    let mut apps = Vec::new();
    for (app_id, app) in &st.apps {
        if path::parent(app_id) == id {
            apps.push(app_json(st, app, embed));
        } else if let Some(c) = child_of(&path::parent(app_id)) {
            children.insert(c);
        }
    }
    let groups: Vec<Value> = children.iter().map(|c| group_json(st, c, embed)).collect();
    let version = st
        .apps
        .values()
        .filter(|a| path::is_within(&a.id, id))
        .filter_map(|a| a.version.clone())
        .max()
        .unwrap_or_else(|| format_millis(0));
    json!({"id": id, "apps": apps, "groups": groups, "dependencies": [], "pods": [], "version": version})
}
