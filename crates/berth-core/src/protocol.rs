//! Berth's agent protocol (HTTP + JSON). The server is the source of truth: an agent
//! long-polls its full assignment list and converges to it, and reports task states. Every
//! message is idempotent, so a disconnect at any point is repaired by the next exchange.
//!
//! - `POST /api/v1/agent/register` body [`NodeInfo`] (plus [`RegisterTls`]'s `csr`) ->
//!   [`RegisterResponse`]
//! - `GET  /api/v1/agent/{node}/assignments?after=G&wait=S` -> [`Assignments`]
//!   (returns at once when the node's generation differs from `G`, else after up to `S` s;
//!   with `G` > 0 and recent enough, only what changed since `G`: see [`Assignments::full`])
//! - `POST /api/v1/agent/{node}/status` body [`StatusReport`] -> [`StatusAck`]
//!   (also the heartbeat; 404 means "register again")

use crate::app::AppDefinition;
use crate::node::{NodeCondition, NodeInfo, NodeResources};
use crate::secret::SecretEnv;
use crate::task::{HealthResult, TaskGoal, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub node_id: String,
    pub heartbeat_interval_ms: u64,
    /// A new credential for this node, issued to an agent that joined with the join token:
    /// it authenticates every later call of the agent protocol, and the server presents it
    /// when it calls the agent. Absent when authentication is off or the agent already
    /// presented its credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The node's certificate, when it asked for one and the server runs with TLS.
    #[serde(flatten)]
    pub tls: IssuedCertificate,
}

/// The TLS part of a registration request: sent in the same JSON object as the
/// [`NodeInfo`] fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterTls {
    /// A PEM certificate request for the key the agent keeps in its data dir: the server
    /// (with `--tls`) answers with a certificate for the agent's HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// What the server issued for a registration's `csr` (both `None` without TLS or CSR).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCertificate {
    /// PEM certificate (server usage) for the node's id and addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM certificate of the CA that issued it, and the server's client certificate: the
    /// agent accepts on its HTTP endpoint clients with a certificate from this CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// One task the node must run (goal `running`) or stop (goal `killed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub task_id: String,
    pub app_id: String,
    pub version: String,
    pub goal: TaskGoal,
    pub ports: Vec<u16>,
    pub host: String,
    pub resources: NodeResources,
    #[serde(default)]
    pub cpuset: Vec<u32>,
    /// The values of the app's secret environment variables (`env: {"X": {"secret": ..}}`),
    /// resolved from Berth's secret store for this task alone, and only while its goal is
    /// `running`. Never shown by `Debug`; the agent must not write them to disk.
    #[serde(default, skip_serializing_if = "SecretEnv::is_empty")]
    pub secret_env: SecretEnv,
    /// Why the server could not resolve the task's secrets (a secret was deleted): the agent
    /// fails the task with this message instead of starting it without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_error: Option<String>,
    /// The app definition at `version`. Not on the wire: each distinct definition travels
    /// once per response in [`Assignments::apps`]; [`Assignments::resolve_apps`] fills it in.
    #[serde(skip)]
    pub app: Arc<AppDefinition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignments {
    /// Changes whenever this node's assignment set changes.
    pub generation: u64,
    /// `true`: `assignments` is the node's whole list. `false`: a delta since the generation
    /// the agent asked `after`: `assignments` are the tasks added or changed, `removed` the
    /// ids no longer assigned. A node with thousands of tasks thus receives only what
    /// changed, not its whole list at every change.
    #[serde(default = "yes")]
    pub full: bool,
    pub assignments: Vec<Assignment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Each app definition the assignments refer to, once (by `id` and `version`).
    #[serde(default)]
    pub apps: Vec<Arc<AppDefinition>>,
    /// The user tasks run as when their app names none (`berth server
    /// --default-task-user`); [`Assignments::resolve_apps`] fills it into those apps. `None`
    /// (an older server): the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
}

fn yes() -> bool {
    true
}

impl Assignments {
    /// Points every assignment at its app definition from [`Assignments::apps`] (with the
    /// default user filled into apps without a `user`). Returns
    /// the ids of assignments whose definition is missing (they keep an empty one).
    pub fn resolve_apps(&mut self) -> Vec<String> {
        if let Some(user) = self
            .default_user
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            for app in &mut self.apps {
                if app.user.as_deref().is_none_or(|u| u.trim().is_empty()) {
                    Arc::make_mut(app).user = Some(user.to_string());
                }
            }
        }
        let by_version: HashMap<(&str, &str), &Arc<AppDefinition>> = self
            .apps
            .iter()
            .map(|a| ((a.id.as_str(), a.version.as_deref().unwrap_or("")), a))
            .collect();
        let mut missing = Vec::new();
        for a in &mut self.assignments {
            match by_version.get(&(a.app_id.as_str(), a.version.as_str())) {
                Some(def) => a.app = Arc::clone(def),
                None => missing.push(a.task_id.clone()),
            }
        }
        missing
    }
}

/// A task's state as the agent observed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedStatus {
    pub task_id: String,
    pub state: TaskState,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// Latest health check results, when the app has health checks.
    #[serde(default)]
    pub health: Option<Vec<HealthResult>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub statuses: Vec<ReportedStatus>,
    /// True when `statuses` lists every task the agent has: the server may then declare
    /// assigned tasks missing from it lost.
    #[serde(default)]
    pub full: bool,
    #[serde(default)]
    pub conditions: Option<Vec<NodeCondition>>,
    /// Updated node facts (resources, attributes), when they changed.
    #[serde(default)]
    pub info: Option<NodeInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatusAck {
    /// Reported task ids the server does not know (the agent treats them as ghosts).
    #[serde(default)]
    pub unknown: Vec<String>,
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn register_response_carries_a_certificate_only_when_issued() {
        let plain = RegisterResponse {
            node_id: "n1".into(),
            heartbeat_interval_ms: 500,
            credential: None,
            tls: IssuedCertificate::default(),
        };
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"nodeId": "n1", "heartbeatIntervalMs": 500})
        );
        // An older server's answer (no TLS fields) still parses.
        let back: RegisterResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, plain);
        let v = serde_json::json!({"nodeId": "n1", "heartbeatIntervalMs": 500,
            "certificate": "C", "caCertificate": "A"});
        let r: RegisterResponse = serde_json::from_value(v).unwrap();
        assert_eq!(r.tls.certificate.as_deref(), Some("C"));
        assert_eq!(r.tls.ca_certificate.as_deref(), Some("A"));
        let req: RegisterTls =
            serde_json::from_value(serde_json::json!({"id": "n1", "csr": "R"})).unwrap();
        assert_eq!(req.csr.as_deref(), Some("R"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_user_fills_apps_without_one() {
        let json = serde_json::json!({
            "generation": 3,
            "assignments": [
                {"taskId": "t1", "appId": "/a", "version": "v1", "goal": "running", "ports": [],
                 "host": "h", "resources": {"cpus": 1.0, "mem": 1.0, "disk": 0.0}},
                {"taskId": "t2", "appId": "/b", "version": "v1", "goal": "running", "ports": [],
                 "host": "h", "resources": {"cpus": 1.0, "mem": 1.0, "disk": 0.0}}
            ],
            "apps": [{"id": "/a", "version": "v1"}, {"id": "/b", "version": "v1", "user": "www"}],
            "defaultUser": "nobody"
        });
        let mut list: Assignments = serde_json::from_value(json.clone()).unwrap();
        assert!(list.resolve_apps().is_empty());
        assert_eq!(list.assignments[0].app.user.as_deref(), Some("nobody"));
        assert_eq!(list.assignments[1].app.user.as_deref(), Some("www"));
        // An older server sends none: the app keeps no user (the agent's own).
        let mut old = json;
        old.as_object_mut().unwrap().remove("defaultUser");
        let mut list: Assignments = serde_json::from_value(old).unwrap();
        list.resolve_apps();
        assert_eq!(list.assignments[0].app.user, None);
    }
}
