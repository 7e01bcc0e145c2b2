//! Berth's agent protocol (HTTP + JSON). The server is the source of truth: an agent
//! long-polls its full assignment list and converges to it, and reports task states. Every
//! message is idempotent, so a disconnect at any point is repaired by the next exchange.
//!
//! - `POST /api/v1/agent/register` body [`NodeInfo`] -> [`RegisterResponse`]
//! - `GET  /api/v1/agent/{node}/assignments?after=G&wait=S` -> [`Assignments`]
//!   (returns at once when the node's generation differs from `G`, else after up to `S` s)
//! - `POST /api/v1/agent/{node}/status` body [`StatusReport`] -> [`StatusAck`]
//!   (also the heartbeat; 404 means "register again")

use crate::app::AppDefinition;
use crate::node::{NodeCondition, NodeInfo, NodeResources};
use crate::task::{HealthResult, TaskGoal, TaskState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub node_id: String,
    pub heartbeat_interval_ms: u64,
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
    /// The app definition at `version`.
    pub app: AppDefinition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignments {
    /// Changes whenever this node's assignment set changes.
    pub generation: u64,
    pub assignments: Vec<Assignment>,
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
