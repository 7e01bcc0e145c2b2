//! Nodes: hosts running `berth agent`, with their capacity, attributes and conditions.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeResources {
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
}

impl NodeResources {
    pub fn new(cpus: f64, mem: f64, disk: f64) -> Self {
        Self { cpus, mem, disk }
    }
}

/// An inclusive range of host ports the node offers to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub begin: u16,
    pub end: u16,
}

/// Multipliers applied to physical capacity before placement (seed 000's overcommit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Overcommit {
    pub cpu: f64,
    pub mem: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Self { cpu: 1.0, mem: 1.0 }
    }
}

/// A health signal of the node itself (dockerd reachable, disk, pids, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// What an agent says about itself when it registers (and on every heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Stable id, kept in the agent's data dir across restarts.
    pub id: String,
    pub hostname: String,
    /// Address tasks are reachable at (the task's `host`).
    pub address: String,
    pub resources: NodeResources,
    #[serde(default)]
    pub reserved: NodeResources,
    #[serde(default)]
    pub overcommit: Overcommit,
    pub port_ranges: Vec<PortRange>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Drivers this agent can run (`exec`, `fake`, `docker`).
    pub drivers: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<NodeCondition>,
    #[serde(default)]
    pub agent_version: String,
    /// Base URL of the agent's own HTTP endpoint (task logs, `/metrics`), e.g.
    /// `http://10.0.0.5:5051`; `None` for agents without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
}

impl NodeInfo {
    /// Capacity the scheduler may hand out: (physical - reserved) * overcommit.
    pub fn allocatable(&self) -> NodeResources {
        NodeResources {
            cpus: ((self.resources.cpus - self.reserved.cpus).max(0.0)) * self.overcommit.cpu,
            mem: ((self.resources.mem - self.reserved.mem).max(0.0)) * self.overcommit.mem,
            disk: (self.resources.disk - self.reserved.disk).max(0.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Ready,
    Unreachable,
}

/// The server's record of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub info: NodeInfo,
    pub status: NodeStatus,
    #[serde(default)]
    pub cordoned: bool,
    /// Every task is being moved off (implies cordoned).
    #[serde(default)]
    pub draining: bool,
    /// Epoch milliseconds.
    pub registered_at: i64,
    pub last_heartbeat: i64,
}

impl Node {
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// A node accepts new tasks when it is reachable, not cordoned and all conditions hold.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready
            && !self.cordoned
            && self.info.conditions.iter().all(|c| c.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_applies_reserved_then_overcommit() {
        let info = NodeInfo {
            id: "n".into(),
            hostname: "h".into(),
            address: "127.0.0.1".into(),
            resources: NodeResources::new(8.0, 16000.0, 100.0),
            reserved: NodeResources::new(1.0, 2000.0, 0.0),
            overcommit: Overcommit { cpu: 4.0, mem: 1.0 },
            port_ranges: vec![],
            attributes: Default::default(),
            drivers: vec![],
            conditions: vec![],
            agent_version: String::new(),
            agent_url: None,
        };
        let a = info.allocatable();
        assert_eq!(a.cpus, 28.0);
        assert_eq!(a.mem, 14000.0);
        assert_eq!(a.disk, 100.0);
    }
}
