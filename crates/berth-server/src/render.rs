//! Marathon-shaped JSON for apps, tasks, the queue and groups. Only keys marathon-python
//! 0.13 accepts are emitted (it raises on unknown keys).

use crate::state::Cluster;
use berth_core::app::AppDefinition;
use berth_core::path;
use berth_core::task::{Task, TaskGoal, TaskState};
use berth_core::time::format_millis;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

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
    serde_json::to_value(TaskView::new(t, app)).unwrap_or_else(|_| json!({"id": t.id}))
}

/// One app's lines in Marathon's `text/plain` task list, the form load-balancer scripts
/// (haproxy-marathon-bridge and its kind) read. Per service port:
/// `app<TAB>servicePort<TAB>host:hostPort<TAB>...` over the running tasks, `app` being the id
/// without its leading `/` and with `_` for `/`; a port mapping without a host port (a USER
/// network) lists the tasks' `ip:containerPort` instead. An app without ports gets one line,
/// `app<TAB> <TAB>host host ...`.
pub fn push_endpoints_text(out: &mut String, app: &AppDefinition, tasks: &[&Task]) {
    use std::fmt::Write as _;
    let name = path::flat_name(&app.id);
    let running: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| visible_state(t) == TaskState::Running)
        .collect();
    let service_ports = app.service_ports();
    if service_ports.is_empty() {
        let _ = write!(out, "{name}\t \t");
        for t in &running {
            let _ = write!(out, "{} ", t.host);
        }
        out.push('\n');
        return;
    }
    let mappings = app
        .container
        .as_ref()
        .and_then(|c| c.port_mappings.as_deref());
    for (i, service_port) in service_ports.iter().enumerate() {
        let _ = write!(out, "{name}\t{service_port}\t");
        // A task's host ports exist only for the mappings that ask for one.
        let host_port_index = match mappings {
            Some(m) => match m.get(i) {
                Some(mapping) if mapping.host_port.is_none() => {
                    for t in &running {
                        if let Some(ip) = t.ip_addresses.first() {
                            let _ = write!(out, "{ip}:{}\t", mapping.container_port);
                        }
                    }
                    None
                }
                _ => Some(m[..i].iter().filter(|m| m.host_port.is_some()).count()),
            },
            None => Some(i),
        };
        if let Some(index) = host_port_index {
            for t in &running {
                let port = t.ports.get(index).copied().unwrap_or(0);
                let _ = write!(out, "{}:{port}\t", t.host);
            }
        }
        out.push('\n');
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAddressView<'a> {
    pub ip_address: &'a str,
    pub protocol: &'static str,
}

/// A task as Marathon shows it, serialised straight from the task.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView<'a> {
    pub app_id: &'a str,
    pub id: &'a str,
    pub host: &'a str,
    pub ports: &'a [u16],
    pub service_ports: Vec<i64>,
    pub slave_id: &'a str,
    pub staged_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub state: TaskState,
    pub version: &'a str,
    pub ip_addresses: Vec<IpAddressView<'a>>,
    pub health_check_results: &'a [berth_core::task::HealthResult],
    pub local_volumes: [(); 0],
}

impl<'a> TaskView<'a> {
    pub fn new(t: &'a Task, app: Option<&AppDefinition>) -> Self {
        TaskView {
            app_id: &t.app_id,
            id: &t.id,
            host: &t.host,
            ports: &t.ports,
            service_ports: app.map(|a| a.service_ports()).unwrap_or_default(),
            slave_id: &t.node_id,
            staged_at: format_millis(t.staged_at),
            started_at: t.started_at.map(format_millis),
            state: visible_state(t),
            version: &t.version,
            ip_addresses: t
                .ip_addresses
                .iter()
                .map(|ip| IpAddressView {
                    ip_address: ip,
                    protocol: "IPv4",
                })
                .collect(),
            health_check_results: &t.health,
            local_volumes: [],
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub staged: usize,
    pub running: usize,
    pub healthy: usize,
    pub unhealthy: usize,
}

impl Counts {
    fn add(&mut self, t: &Task) {
        if t.goal == TaskGoal::Killed {
            return;
        }
        match t.state {
            TaskState::Staging | TaskState::Starting => self.staged += 1,
            TaskState::Running => {
                self.running += 1;
                match t.is_healthy() {
                    Some(true) => self.healthy += 1,
                    Some(false) => self.unhealthy += 1,
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// Health counts mean something only for apps with health checks.
    fn for_app(mut self, app: &AppDefinition) -> Self {
        if app.health_checks.is_empty() {
            self.healthy = 0;
            self.unhealthy = 0;
        }
        self
    }
}

pub fn counts(st: &Cluster, app: &AppDefinition) -> Counts {
    let mut c = Counts::default();
    for t in st.app_tasks(&app.id) {
        c.add(t);
    }
    c.for_app(app)
}

/// Task counts of every app, in one sweep over the tasks (cheaper than one lookup per task).
pub fn counts_by_app(st: &Cluster) -> std::collections::HashMap<&str, Counts> {
    let mut all: std::collections::HashMap<&str, Counts> =
        std::collections::HashMap::with_capacity(st.apps.len());
    for t in st.tasks.values() {
        all.entry(t.app_id.as_str()).or_default().add(t);
    }
    all
}

/// Ids of the active deployments of every app.
pub fn deployments_by_app(st: &Cluster) -> std::collections::HashMap<&str, Vec<String>> {
    let mut all: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for d in st.deployments.values() {
        for a in &d.affected_apps {
            all.entry(a.as_str()).or_default().push(d.id.clone());
        }
    }
    all
}

/// Everything needed to render one app, copied out of the cluster under the lock (reference
/// counts and small values), so the JSON is built after the lock is released.
pub struct AppSnapshot {
    pub app: Arc<AppDefinition>,
    pub counts: Counts,
    pub deployments: Vec<String>,
    /// Sorted by staging time, when embedded.
    pub tasks: Option<Vec<Task>>,
    pub last_task_failure: Option<Value>,
}

impl AppSnapshot {
    /// One app (for many apps, pass what [`counts_by_app`] and [`deployments_by_app`] found).
    pub fn take(
        st: &Cluster,
        app: &Arc<AppDefinition>,
        embed: Embed,
        counts: Option<Counts>,
        deployments: Option<Vec<String>>,
    ) -> Self {
        let tasks = embed.tasks.then(|| {
            let mut tasks: Vec<Task> = st.app_tasks(&app.id).cloned().collect();
            tasks.sort_by(|a, b| a.staged_at.cmp(&b.staged_at).then(a.id.cmp(&b.id)));
            tasks
        });
        AppSnapshot {
            counts: counts.unwrap_or_else(|| self::counts(st, app)).for_app(app),
            deployments: deployments.unwrap_or_else(|| st.deployments_of(&app.id)),
            tasks,
            last_task_failure: if embed.last_task_failure {
                st.last_failures.get(&app.id).cloned()
            } else {
                None
            },
            app: app.clone(),
        }
    }

    /// The app as Marathon shows it: its definition plus counts, deployments and the embeds.
    pub fn view(&self) -> AppView<'_> {
        AppView {
            app: &self.app,
            tasks_staged: self.counts.staged,
            tasks_running: self.counts.running,
            tasks_healthy: self.counts.healthy,
            tasks_unhealthy: self.counts.unhealthy,
            deployments: self.deployments.iter().map(|id| IdRef { id }).collect(),
            tasks: self.tasks.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| TaskView::new(t, Some(&self.app)))
                    .collect()
            }),
            last_task_failure: self.last_task_failure.as_ref(),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or_else(|_| json!({"id": self.app.id}))
    }
}

#[derive(Serialize)]
pub struct IdRef<'a> {
    pub id: &'a str,
}

/// An app's JSON, serialised straight from its definition (no intermediate `Value`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppView<'a> {
    #[serde(flatten)]
    pub app: &'a AppDefinition,
    pub tasks_staged: usize,
    pub tasks_running: usize,
    pub tasks_healthy: usize,
    pub tasks_unhealthy: usize,
    pub deployments: Vec<IdRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskView<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_task_failure: Option<&'a Value>,
}

pub fn app_json(st: &Cluster, app: &Arc<AppDefinition>, embed: Embed) -> Value {
    AppSnapshot::take(st, app, embed, None, None).to_json()
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

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::validate::parse_app_value;

    fn task(app_id: &str, host: &str, ports: &[u16], ip: Option<&str>, state: &str) -> Task {
        serde_json::from_value(json!({
            "id": format!("{}.{host}", app_id.trim_start_matches('/')),
            "appId": app_id, "version": "v", "configVersion": "v",
            "nodeId": host, "host": host, "ports": ports, "state": state,
            "resources": {"cpus": 0.1, "mem": 32.0, "disk": 0.0},
            "driver": "docker", "stagedAt": 0,
            "ipAddresses": ip.into_iter().collect::<Vec<_>>(),
        }))
        .expect("task json")
    }

    fn text(app: Value, tasks: &[Task]) -> String {
        let app = parse_app_value(app).expect("valid app");
        let mut out = String::new();
        push_endpoints_text(&mut out, &app, &tasks.iter().collect::<Vec<_>>());
        out
    }

    #[test]
    fn endpoints_text_lists_running_tasks_per_service_port() {
        let app = json!({"id": "/shop/web", "cmd": "x", "portDefinitions": [
            {"port": 10000}, {"port": 10001}]});
        let tasks = [
            task("/shop/web", "a", &[31000, 31001], None, "TASK_RUNNING"),
            task("/shop/web", "b", &[31002, 31003], None, "TASK_RUNNING"),
            task("/shop/web", "c", &[31004, 31005], None, "TASK_STAGING"),
        ];
        assert_eq!(
            text(app, &tasks),
            "shop_web\t10000\ta:31000\tb:31002\t\nshop_web\t10001\ta:31001\tb:31003\t\n"
        );
    }

    #[test]
    fn endpoints_text_without_ports_lists_hosts() {
        let app = json!({"id": "/worker", "cmd": "x", "portDefinitions": []});
        let tasks = [task("/worker", "a", &[], None, "TASK_RUNNING")];
        assert_eq!(text(app, &tasks), "worker\t \ta \n");
    }

    #[test]
    fn endpoints_text_user_network_mappings_without_host_port_list_container_addresses() {
        let app = json!({"id": "/db", "networks": [{"mode": "container", "name": "backend"}],
            "container": {"type": "DOCKER", "docker": {"image": "busybox"}, "portMappings": [
                {"containerPort": 5432, "servicePort": 10100},
                {"containerPort": 8080, "hostPort": 0, "servicePort": 10101}]}});
        let tasks = [task(
            "/db",
            "a",
            &[31500],
            Some("172.18.0.5"),
            "TASK_RUNNING",
        )];
        assert_eq!(
            text(app, &tasks),
            "db\t10100\t172.18.0.5:5432\t\ndb\t10101\ta:31500\t\n"
        );
    }
}
