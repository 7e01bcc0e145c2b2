//! Tasks: one running instance of an app on a node. The server owns `goal` (what should
//! happen); the agent reports `state` (what did happen).

use crate::node::NodeResources;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum TaskState {
    #[serde(rename = "TASK_STAGING")]
    Staging,
    #[serde(rename = "TASK_STARTING")]
    Starting,
    #[serde(rename = "TASK_RUNNING")]
    Running,
    #[serde(rename = "TASK_KILLING")]
    Killing,
    #[serde(rename = "TASK_FINISHED")]
    Finished,
    #[serde(rename = "TASK_FAILED")]
    Failed,
    #[serde(rename = "TASK_KILLED")]
    Killed,
    #[serde(rename = "TASK_LOST")]
    Lost,
    #[serde(rename = "TASK_ERROR")]
    Error,
    #[serde(rename = "TASK_UNREACHABLE")]
    Unreachable,
    #[serde(rename = "TASK_GONE")]
    Gone,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "TASK_STAGING",
            Self::Starting => "TASK_STARTING",
            Self::Running => "TASK_RUNNING",
            Self::Killing => "TASK_KILLING",
            Self::Finished => "TASK_FINISHED",
            Self::Failed => "TASK_FAILED",
            Self::Killed => "TASK_KILLED",
            Self::Lost => "TASK_LOST",
            Self::Error => "TASK_ERROR",
            Self::Unreachable => "TASK_UNREACHABLE",
            Self::Gone => "TASK_GONE",
        }
    }

    /// A terminal state never changes again; the task is removed from the live set.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished | Self::Failed | Self::Killed | Self::Lost | Self::Error | Self::Gone
        )
    }
}

/// What the server wants for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskGoal {
    #[default]
    Running,
    Killed,
}

/// One health check's latest result, in Marathon's `healthCheckResults` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthResult {
    pub alive: bool,
    pub consecutive_failures: u32,
    pub first_success: Option<String>,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub last_failure_cause: Option<String>,
    pub instance_id: String,
}

/// The stored task record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    pub app_id: String,
    /// App version this task was launched from.
    pub version: String,
    /// App config version (`versionInfo.lastConfigChangeAt`): decides whether it is outdated.
    pub config_version: String,
    pub node_id: String,
    pub host: String,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub service_ports: Vec<u16>,
    pub state: TaskState,
    #[serde(default)]
    pub goal: TaskGoal,
    /// Resources reserved on the node for this task.
    pub resources: NodeResources,
    pub driver: String,
    /// Epoch milliseconds.
    pub staged_at: i64,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub updated_at: i64,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub health: Vec<HealthResult>,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// Pinned CPU cores assigned by the scheduler (empty = shared CPU).
    #[serde(default)]
    pub cpuset: Vec<u32>,
}

impl Task {
    /// Marathon's task id form: the app path with `/` as `_`, a dot, then a UUID.
    pub fn new_id(app_id: &str) -> String {
        format!(
            "{}.{}",
            crate::path::flat_name(app_id),
            uuid::Uuid::new_v4()
        )
    }

    /// True while the task counts toward the app's instances.
    pub fn is_active(&self) -> bool {
        !self.state.is_terminal() && self.goal == TaskGoal::Running
    }

    /// True when every health check currently passes (and there is at least one result).
    pub fn is_healthy(&self) -> Option<bool> {
        if self.health.is_empty() {
            None
        } else {
            Some(self.health.iter().all(|h| h.alive))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_states() {
        let id = Task::new_id("/prod/web");
        assert!(id.starts_with("prod_web."));
        assert!(TaskState::Killed.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert_eq!(
            serde_json::to_string(&TaskState::Running).unwrap(),
            "\"TASK_RUNNING\""
        );
    }
}
