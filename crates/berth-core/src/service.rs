//! Service discovery's vocabulary: every app is a service, named from its id the way
//! Mesos-DNS names it (`/prod/web` -> `web-prod`), whose instances are the app's running
//! tasks, each healthy or not. The catalog, the Consul-compatible API, DNS and `berth template`
//! all read this one model. Pure: built from an app, its tasks and the nodes' addresses.

use crate::app::AppDefinition;
use crate::job::run::JOB_APP_PREFIX;
use crate::task::{Task, TaskGoal, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The app label that makes a label key a Consul tag: `{"canary": "tag"}` tags the service
/// `canary` (marathon-consul's convention).
pub const TAG_LABEL_VALUE: &str = "tag";

/// A DNS label is at most 63 bytes (RFC 1035).
const MAX_LABEL: usize = 63;

/// The service name of an app: its path segments in reverse order joined with `-`, dots
/// turned into `-` too, so the name is one DNS label (`/prod/web` -> `web-prod`,
/// `/web` -> `web`). Names longer than 63 bytes are cut there (without a trailing `-`).
/// `None` for job runs, which are not services.
pub fn service_name(app_id: &str) -> Option<String> {
    if app_id.starts_with(JOB_APP_PREFIX) {
        return None;
    }
    let segments: Vec<&str> = app_id.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return None;
    }
    let mut name: String = segments
        .iter()
        .rev()
        .map(|s| s.replace('.', "-").to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("-");
    if name.len() > MAX_LABEL {
        name.truncate(MAX_LABEL);
        while name.ends_with('-') {
            name.pop();
        }
    }
    Some(name)
}

/// Is `name` something [`service_name`] can produce (one DNS label of `[a-z0-9-]`)?
/// Anything else cannot be a service, so lookups of it answer "no such service" early.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One port of an instance: the host port it listens on, its name, and the app's service
/// port for it (what a load balancer listens on, as marathon-lb did).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
}

/// One running task of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// The task id.
    pub id: String,
    pub app_id: String,
    pub node_id: String,
    /// The node's hostname as the task reports it.
    pub host: String,
    /// The address clients connect to: the node's address (host and bridge networking map
    /// the task's ports onto it).
    pub address: String,
    pub ports: Vec<InstancePort>,
    pub labels: BTreeMap<String, String>,
    /// The app version the task runs.
    pub version: String,
    /// Running and passing every health check the app has (an app without checks: running).
    pub healthy: bool,
    /// The task's state (`TASK_RUNNING`, `TASK_UNREACHABLE`, ...).
    pub state: String,
    /// Why the instance is not healthy (empty when it is).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Instance {
    /// The instance of `task` of `app`, if the task is one: a task the server wants running
    /// that has started (running, or running but unreachable). Staging, killing and ended
    /// tasks are not instances.
    pub fn of(app: &AppDefinition, task: &Task, node_address: Option<&str>) -> Option<Instance> {
        if task.goal != TaskGoal::Running
            || !matches!(task.state, TaskState::Running | TaskState::Unreachable)
        {
            return None;
        }
        let (healthy, reason) = if task.state == TaskState::Unreachable {
            (false, "the node is unreachable".to_string())
        } else if app.health_checks.is_empty() {
            (true, String::new())
        } else if task.health.is_empty() {
            (false, "no health check has passed yet".to_string())
        } else if let Some(failing) = task.health.iter().find(|h| !h.alive) {
            (
                false,
                failing
                    .last_failure_cause
                    .clone()
                    .unwrap_or_else(|| "a health check fails".to_string()),
            )
        } else {
            (true, String::new())
        };
        let names = app.host_port_names();
        // The app's service ports (the task record does not carry them).
        let service_ports = app.service_ports();
        let ports = task
            .ports
            .iter()
            .enumerate()
            .map(|(i, &port)| InstancePort {
                port,
                name: names.get(i).copied().flatten().map(str::to_string),
                service_port: service_ports
                    .get(i)
                    .and_then(|p| u16::try_from(*p).ok())
                    .filter(|p| *p != 0),
            })
            .collect();
        Some(Instance {
            id: task.id.clone(),
            app_id: task.app_id.clone(),
            node_id: task.node_id.clone(),
            host: task.host.clone(),
            address: node_address
                .filter(|a| !a.is_empty())
                .unwrap_or(&task.host)
                .to_string(),
            ports,
            labels: app.labels.clone(),
            version: task.version.clone(),
            healthy,
            state: task.state.as_str().to_string(),
            reason,
        })
    }

    /// The first port (a Consul service has one), 0 for an instance without ports.
    pub fn first_port(&self) -> u16 {
        self.ports.first().map_or(0, |p| p.port)
    }
}

/// A service: its apps (usually one; apps whose ids map to the same name share it, as in
/// Mesos-DNS), their service ports and tags, and their instances, ordered by task id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub apps: Vec<String>,
    pub service_ports: Vec<u16>,
    pub tags: Vec<String>,
    pub instances: Vec<Instance>,
}

impl Service {
    pub fn healthy(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.healthy)
    }

    /// Adds `app`'s definition-level facts (tags, service ports); instances come separately.
    pub fn add_app(&mut self, app: &AppDefinition) {
        self.apps.push(app.id.clone());
        for t in tags_of(app) {
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
        for p in app.service_ports() {
            if let Ok(p) = u16::try_from(p)
                && p != 0
                && !self.service_ports.contains(&p)
            {
                self.service_ports.push(p);
            }
        }
    }

    /// Orders instances and tags so equal services compare (and hash) equal.
    pub fn sort(&mut self) {
        self.instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.tags.sort();
        self.apps.sort();
    }
}

/// The Consul tags of an app: the keys of its labels whose value is `tag`.
pub fn tags_of(app: &AppDefinition) -> Vec<String> {
    app.labels
        .iter()
        .filter(|(_, v)| v.as_str() == TAG_LABEL_VALUE)
        .map(|(k, _)| k.clone())
        .collect()
}

/// One line of the service list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub name: String,
    pub apps: Vec<String>,
    pub service_ports: Vec<u16>,
    pub tags: Vec<String>,
    pub instances: usize,
    pub healthy: usize,
}

impl From<&Service> for ServiceSummary {
    fn from(s: &Service) -> Self {
        ServiceSummary {
            name: s.name.clone(),
            apps: s.apps.clone(),
            service_ports: s.service_ports.clone(),
            tags: s.tags.clone(),
            instances: s.instances.len(),
            healthy: s.healthy().count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::HealthResult;

    #[test]
    fn names_follow_mesos_dns() {
        assert_eq!(service_name("/prod/web").as_deref(), Some("web-prod"));
        assert_eq!(service_name("/web").as_deref(), Some("web"));
        assert_eq!(service_name("/a/b/c").as_deref(), Some("c-b-a"));
        assert_eq!(service_name("/prod/api.v2").as_deref(), Some("api-v2-prod"));
        assert_eq!(service_name("job:nightly"), None);
        assert_eq!(service_name("/"), None);
        let long = format!("/{}/{}", "a".repeat(40), "b".repeat(40));
        let name = service_name(&long).unwrap_or_default();
        assert!(name.len() <= 63 && !name.ends_with('-'), "{name}");
        assert!(valid_service_name("web-prod"));
        assert!(!valid_service_name("Web"));
        assert!(!valid_service_name("a.b"));
        assert!(!valid_service_name(""));
    }

    fn app(json: serde_json::Value) -> AppDefinition {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn task(state: TaskState, health: Vec<bool>) -> Task {
        Task {
            id: "prod_web.1".into(),
            app_id: "/prod/web".into(),
            version: "v1".into(),
            config_version: "v1".into(),
            node_id: "n1".into(),
            host: "host-1".into(),
            ports: vec![31000, 31001],
            service_ports: vec![10000, 10001],
            state,
            goal: TaskGoal::Running,
            resources: Default::default(),
            driver: "exec".into(),
            staged_at: 0,
            started_at: None,
            updated_at: 0,
            message: None,
            exit_code: None,
            health: health
                .into_iter()
                .map(|alive| HealthResult {
                    alive,
                    last_failure_cause: (!alive).then(|| "HTTP 500".to_string()),
                    ..Default::default()
                })
                .collect(),
            ip_addresses: vec![],
            cpuset: vec![],
        }
    }

    #[test]
    fn instances_carry_ports_names_and_health() {
        let a = app(serde_json::json!({
            "id": "/prod/web", "cmd": "x",
            "portDefinitions": [{"port": 10000, "name": "http"}, {"port": 10001}],
            "labels": {"canary": "tag", "team": "web"},
            "healthChecks": [{"protocol": "HTTP"}],
        }));
        let i = Instance::of(&a, &task(TaskState::Running, vec![true]), Some("10.0.0.1"));
        let i = i.unwrap_or_else(|| panic!("an instance"));
        assert!(i.healthy);
        assert_eq!(i.address, "10.0.0.1");
        assert_eq!(i.ports[0].name.as_deref(), Some("http"));
        assert_eq!(i.ports[0].service_port, Some(10000));
        assert_eq!(i.ports[1].name, None);
        assert_eq!(i.first_port(), 31000);

        let sick = Instance::of(&a, &task(TaskState::Running, vec![false]), None);
        let sick = sick.unwrap_or_else(|| panic!("an instance"));
        assert!(!sick.healthy);
        assert_eq!(sick.reason, "HTTP 500");
        assert_eq!(sick.address, "host-1", "no node address: the task's host");
        let unchecked = Instance::of(&a, &task(TaskState::Running, vec![]), None);
        assert!(unchecked.is_some_and(|i| !i.healthy));
        let unreachable = Instance::of(&a, &task(TaskState::Unreachable, vec![true]), None);
        assert!(unreachable.is_some_and(|i| !i.healthy));
        assert!(Instance::of(&a, &task(TaskState::Staging, vec![]), None).is_none());
        let mut killed = task(TaskState::Running, vec![true]);
        killed.goal = TaskGoal::Killed;
        assert!(Instance::of(&a, &killed, None).is_none());

        let no_checks = app(serde_json::json!({"id": "/prod/web", "cmd": "x"}));
        let plain = Instance::of(&no_checks, &task(TaskState::Running, vec![]), None);
        assert!(plain.is_some_and(|i| i.healthy));

        let mut s = Service {
            name: "web-prod".into(),
            ..Default::default()
        };
        s.add_app(&a);
        assert_eq!(s.tags, vec!["canary".to_string()]);
        assert_eq!(s.service_ports, vec![10000, 10001]);
    }
}
