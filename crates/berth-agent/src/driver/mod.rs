//! Drivers run tasks. Every driver (exec, fake, docker) implements [`Driver`]; the agent
//! runtime never knows which one it is talking to.

use berth_core::app::{AppDefinition, DriverKind, EnvValue};
use berth_core::node::NodeResources;
use berth_core::secret::SecretEnv;
use berth_core::task::TaskState;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

pub mod docker;
pub mod exec;
pub mod fake;

/// Everything a driver needs to start one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub app_id: String,
    /// App version the task runs.
    pub version: String,
    /// The app definition at that version (cmd, args, env, container, health checks, labels).
    pub app: AppDefinition,
    /// Host ports assigned by the scheduler, in port-definition order.
    pub ports: Vec<u16>,
    /// The node's hostname/address, exported as `HOST`.
    pub host: String,
    pub node_id: String,
    /// Resources reserved for the task (limits are derived from these).
    pub resources: NodeResources,
    /// Pinned CPU cores (empty: shared CPU).
    #[serde(default)]
    pub cpuset: Vec<u32>,
    /// The values of the app's secret env variables, as the server resolved them for this
    /// task. Never serialised (nothing of the agent's on disk holds them) nor shown by `Debug`.
    #[serde(skip)]
    pub secret_env: SecretEnv,
}

impl TaskSpec {
    /// Marathon's environment for a task: `PORT0..n`, `PORTS`, `PORT`, `HOST`,
    /// `MARATHON_APP_ID`, `MARATHON_APP_VERSION`, `MESOS_TASK_ID`, `MARATHON_APP_LABEL_*`,
    /// plus Berth's `BERTH_CPUS`/`BERTH_MEM_MB` so the app knows its limits.
    /// The app's own `env` is applied on top (it wins), as in Marathon; its secret
    /// references get their values from [`TaskSpec::secret_env`].
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            env.insert(format!("PORT{i}"), p.to_string());
        }
        if let Some(first) = self.ports.first() {
            env.insert("PORT".into(), first.to_string());
        }
        env.insert(
            "PORTS".into(),
            self.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        // By name: port definitions and (bridge, container networks) port mappings.
        for (name, port) in self.app.host_port_names().into_iter().zip(&self.ports) {
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                env.insert(
                    format!("PORT_{}", name.to_uppercase().replace('-', "_")),
                    port.to_string(),
                );
            }
        }
        env.insert("HOST".into(), self.host.clone());
        env.insert("MARATHON_APP_ID".into(), self.app_id.clone());
        env.insert("MARATHON_APP_VERSION".into(), self.version.clone());
        env.insert(
            "MARATHON_APP_RESOURCE_CPUS".into(),
            self.resources.cpus.to_string(),
        );
        env.insert(
            "MARATHON_APP_RESOURCE_MEM".into(),
            self.resources.mem.to_string(),
        );
        env.insert(
            "MARATHON_APP_RESOURCE_DISK".into(),
            self.resources.disk.to_string(),
        );
        env.insert("MESOS_TASK_ID".into(), self.task_id.clone());
        env.insert("MESOS_SANDBOX".into(), String::new());
        let mut label_names = Vec::new();
        for (k, v) in &self.app.labels {
            let name = k
                .to_uppercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>();
            env.insert(format!("MARATHON_APP_LABEL_{name}"), v.clone());
            label_names.push(name);
        }
        env.insert("MARATHON_APP_LABELS".into(), label_names.join(" "));
        env.insert("BERTH_CPUS".into(), self.resources.cpus.to_string());
        env.insert("BERTH_MEM_MB".into(), self.resources.mem.to_string());
        if !self.cpuset.is_empty() {
            env.insert(
                "BERTH_CPUSET".into(),
                self.cpuset
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        for (k, v) in &self.app.env {
            match v {
                EnvValue::Plain(v) => {
                    env.insert(k.clone(), v.clone());
                }
                EnvValue::Secret(_) => {
                    if let Some(value) = self.secret_env.get(k) {
                        env.insert(k.clone(), value.to_string());
                    }
                }
            }
        }
        env
    }
}

/// A state change observed by a driver, sent to the agent runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: TaskState,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Addresses the task is reachable at (container IPs for bridge networking).
    #[serde(default)]
    pub ip_addresses: Vec<String>,
}

/// Which output of a task to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    /// `stdout` / `stderr` (as in the `stream=` query parameter).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" | "out" | "1" => Some(LogStream::Stdout),
            "stderr" | "err" | "2" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// A task's log output as it is read: chunks of raw bytes (not split into lines).
pub type LogChunks = BoxStream<'static, Result<Bytes, DriverError>>;

/// Where drivers send status changes; the agent runtime owns the receiving end.
pub type StatusSink = mpsc::UnboundedSender<TaskStatus>;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("task {0} is not known to this driver")]
    UnknownTask(String),
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    #[error("driver unavailable: {0}")]
    Unavailable(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The driver does not offer this operation (e.g. logs).
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// Default log rotation of both drivers: 10 MiB, 3 files of each log (Docker's
/// `max-size=10m`, `max-file=3`).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;

/// One way of running tasks. Implementations must be cheap to share (`Arc<dyn Driver>`).
///
/// Contract:
/// - `start` returns once the task is launched; further changes (RUNNING, exit) are sent to
///   the [`StatusSink`] given at construction. Starting a task id that is already running is a
///   no-op returning `Ok` (the agent may retry after a restart).
/// - `kill` sends SIGTERM (or the driver's equivalent), waits up to `grace`, then SIGKILL; it
///   returns once the task is gone, and a terminal status (`TASK_KILLED`) is sent to the sink.
///   Killing an unknown or finished task is `Ok`.
/// - `recover` is called once at agent start: it re-attaches to tasks launched by an earlier
///   agent process (which may have been `kill -9`ed) WITHOUT restarting them, and returns the
///   current status of each. Tasks that exited while the agent was down are returned with their
///   terminal state and exit code.
/// - `list` returns the current status of every task the driver knows (running or exited and
///   not yet forgotten).
/// - `forget` drops the bookkeeping of a terminal task (its logs may stay on disk).
pub trait Driver: Send + Sync + 'static {
    fn kind(&self) -> DriverKind;
    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<(), DriverError>>;
    fn kill(&self, task_id: &str, grace: Duration) -> BoxFuture<'_, Result<(), DriverError>>;
    fn recover(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, DriverError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, DriverError>>;
    fn forget(&self, task_id: &str);

    /// `forget`, then waits until what the task left on the node (a container) is gone: for
    /// a shutdown after which nobody will come back for it. The default just forgets.
    fn remove(&self, task_id: &str) -> BoxFuture<'_, ()> {
        self.forget(task_id);
        Box::pin(async {})
    }

    /// Removes what the driver keeps on the node for tasks to come and no task uses now
    /// (the Docker driver's warm containers): for a shutdown after which nobody will come
    /// back. The default has nothing to remove.
    fn remove_leftovers(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// A task's output. `tail: Some(n)` starts with the last `n` lines (`None`: everything);
    /// `follow` keeps the stream open and yields output as it is written (like `tail -f`),
    /// ending once the task is terminal and everything it wrote was sent. Unknown task:
    /// [`DriverError::UnknownTask`]. The default says the driver cannot do it.
    fn logs(
        &self,
        task_id: &str,
        stream: LogStream,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxFuture<'_, Result<LogChunks, DriverError>> {
        let _ = (task_id, stream, tail, follow);
        let kind = self.kind();
        Box::pin(async move {
            Err(DriverError::Unsupported(format!(
                "the {} driver does not serve task logs",
                kind.as_str()
            )))
        })
    }

    /// The host pid of the task's main process (a container's init), while it runs. Used for
    /// metrics: its `/proc/<pid>/cgroup` leads to the task's cgroup and `/proc/<pid>/net/dev`
    /// to its network counters. The default knows no pids.
    fn pid(&self, task_id: &str) -> Option<i32> {
        let _ = task_id;
        None
    }

    /// Tells the driver which cores are pinned to tasks on this node (of any driver), so it
    /// can keep shared tasks off them. Called by the agent whenever its assignment list
    /// changes, before new tasks start. The default ignores it.
    fn set_pinned_cores(&self, cores: &[u32]) {
        let _ = cores;
    }

    /// Runs a COMMAND health check for a task: `Ok(())` when it exits 0, else the reason.
    /// The default runs `/bin/sh -c command` on the host with the task's environment; the
    /// exec driver runs it in the task's directory as the task's user, container drivers
    /// inside the container.
    fn check_command(
        &self,
        spec: &TaskSpec,
        command: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), String>> {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(command).envs(spec.environment());
        Box::pin(run_check_command(cmd, timeout))
    }
}

/// Runs a COMMAND health check's prepared `/bin/sh -c` (no stdio, killed when it times out):
/// `Ok(())` when it exits 0, else the reason.
pub(crate) async fn run_check_command(
    cmd: std::process::Command,
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match tokio::time::timeout(timeout, cmd.status()).await {
        Err(_) => Err(format!(
            "command timed out after {}s",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("command could not run: {e}")),
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(format!("command exited with {st}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::node::NodeResources;

    fn spec_of(app: serde_json::Value, ports: Vec<u16>) -> TaskSpec {
        let app = berth_core::validate::app_from_json(app).expect("valid app");
        TaskSpec {
            task_id: "web.1".into(),
            app_id: app.id.clone(),
            version: "v1".into(),
            app,
            ports,
            host: "n1".into(),
            node_id: "n1".into(),
            resources: NodeResources::new(0.5, 64.0, 0.0),
            cpuset: vec![],
            secret_env: SecretEnv::default(),
        }
    }

    #[test]
    fn secret_references_get_their_resolved_values_and_nothing_else() {
        let mut spec = spec_of(
            serde_json::json!({"id": "/web", "cmd": "x",
                "env": {"DB_PASSWORD": {"secret": "db"}, "OTHER": {"secret": "db"}, "MODE": "prod"},
                "secrets": {"db": {"source": "prod/db"}}}),
            vec![],
        );
        // Unresolved references are left out, never set to something else.
        let env = spec.environment();
        assert_eq!(env["MODE"], "prod");
        assert!(!env.contains_key("DB_PASSWORD") && !env.contains_key("OTHER"));
        spec.secret_env = [("DB_PASSWORD".to_string(), "hunter2".to_string())]
            .into_iter()
            .collect();
        let env = spec.environment();
        assert_eq!(env["DB_PASSWORD"], "hunter2");
        assert!(!env.contains_key("OTHER"));
        // Neither Debug nor the serialised spec carries the value.
        assert!(!format!("{spec:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&spec).unwrap().contains("hunter2"));
    }

    /// Marathon names host ports by their port definition or port mapping: `PORT_<NAME>`.
    #[test]
    fn ports_are_in_the_environment_by_index_and_by_name() {
        let host = spec_of(
            serde_json::json!({"id": "/web", "cmd": "x",
                "portDefinitions": [{"port": 0, "name": "http"}, {"port": 0}, {"port": 0, "name": "admin-api"}]}),
            vec![31000, 31001, 31002],
        );
        let env = host.environment();
        assert_eq!(env["PORT0"], "31000");
        assert_eq!(env["PORT"], "31000");
        assert_eq!(env["PORTS"], "31000,31001,31002");
        assert_eq!(env["PORT_HTTP"], "31000");
        assert_eq!(env["PORT_ADMIN_API"], "31002");
        // Bridge: every mapping has a host port (hostPort defaults to 0: any).
        let mappings = serde_json::json!([
            {"containerPort": 8080, "hostPort": 0, "name": "http"},
            {"containerPort": 9000, "name": "internal"},
            {"containerPort": 9090, "hostPort": 0, "name": "metrics"}]);
        let bridge = spec_of(
            serde_json::json!({"id": "/web", "cmd": "x", "networks": [{"mode": "container/bridge"}],
                "container": {"type": "DOCKER", "docker": {"image": "busybox"},
                  "portMappings": mappings}}),
            vec![31005, 31006, 31007],
        );
        let env = bridge.environment();
        assert_eq!(env["PORT0"], "31005");
        assert_eq!(env["PORT_HTTP"], "31005");
        assert_eq!(env["PORT_INTERNAL"], "31006");
        assert_eq!(env["PORT_METRICS"], "31007");
        // A USER network: only the mappings that ask for a host port get one, in order.
        let user = spec_of(
            serde_json::json!({"id": "/web", "cmd": "x", "networks": [{"mode": "container", "name": "dev"}],
                "container": {"type": "DOCKER", "docker": {"image": "busybox"},
                  "portMappings": mappings}}),
            vec![31008, 31009],
        );
        let env = user.environment();
        assert_eq!(env["PORT_HTTP"], "31008");
        assert_eq!(env["PORT_METRICS"], "31009");
        assert!(!env.contains_key("PORT_INTERNAL"), "{env:?}");
    }
}
