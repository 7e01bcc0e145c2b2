//! The Marathon v2 app definition, as clients send it and as Berth stores and returns it.
//! Field names and defaults follow Marathon; only keys marathon-python 0.13 accepts are emitted.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

fn d_cpus() -> f64 {
    1.0
}
fn d_mem() -> f64 {
    128.0
}
fn d_instances() -> i64 {
    1
}
fn d_backoff_seconds() -> f64 {
    1.0
}
fn d_backoff_factor() -> f64 {
    1.15
}
fn d_max_launch_delay() -> f64 {
    300.0
}
fn d_kill_selection() -> String {
    "YOUNGEST_FIRST".into()
}
fn d_one() -> f64 {
    1.0
}
fn d_tcp() -> String {
    "tcp".into()
}
fn d_docker() -> String {
    "DOCKER".into()
}
fn d_rw() -> String {
    "RW".into()
}
fn d_http() -> String {
    "HTTP".into()
}
fn d_grace() -> f64 {
    300.0
}
fn d_interval() -> f64 {
    60.0
}
fn d_timeout() -> f64 {
    20.0
}
fn d_max_failures() -> i64 {
    3
}
fn d_delay() -> f64 {
    15.0
}
fn d_host_networks() -> Vec<Network> {
    vec![Network {
        mode: "host".into(),
        name: None,
        labels: BTreeMap::new(),
    }]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppDefinition {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Values are strings, or `{"secret": "<key in secrets>"}` (Marathon's secret reference).
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    #[serde(default = "d_instances")]
    pub instances: i64,
    #[serde(default = "d_cpus")]
    pub cpus: f64,
    #[serde(default = "d_mem")]
    pub mem: f64,
    #[serde(default)]
    pub disk: f64,
    #[serde(default)]
    pub gpus: i64,
    #[serde(default)]
    pub executor: String,
    #[serde(default)]
    pub constraints: Vec<Vec<String>>,
    /// Deprecated input form of `fetch`; folded into `fetch` by normalisation.
    #[serde(default, skip_serializing)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub fetch: Vec<Value>,
    #[serde(default)]
    pub store_urls: Vec<String>,
    #[serde(default = "d_backoff_seconds")]
    pub backoff_seconds: f64,
    #[serde(default = "d_backoff_factor")]
    pub backoff_factor: f64,
    #[serde(default = "d_max_launch_delay")]
    pub max_launch_delay_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    #[serde(default)]
    pub readiness_checks: Vec<Value>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub upgrade_strategy: UpgradeStrategy,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_resource_roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency: Option<Value>,
    /// Secrets the app uses, by a key of its own: `{"db": {"source": "prod/db-password"}}`,
    /// `source` naming a secret in Berth's store.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_kill_grace_period_seconds: Option<f64>,
    #[serde(default)]
    pub unreachable_strategy: UnreachableStrategy,
    #[serde(default = "d_kill_selection")]
    pub kill_selection: String,
    #[serde(default)]
    pub require_ports: bool,
    /// Deprecated input form of `portDefinitions`; folded in by normalisation.
    #[serde(default, skip_serializing)]
    pub ports: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_definitions: Option<Vec<PortDefinition>>,
    #[serde(default = "d_host_networks")]
    pub networks: Vec<Network>,
    /// Read-only: set by the server on every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<VersionInfo>,
}

impl Default for AppDefinition {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({}))
            .unwrap_or_else(|e| panic!("an empty object always deserialises: {e}"))
    }
}

/// One `env` value: a string, or a reference to one of the app's `secrets`, resolved only
/// when a task is sent to its node. A string serialises exactly as before (a JSON string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret(EnvSecret),
}

/// `{"secret": "<key in the app's secrets>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSecret {
    pub secret: String,
}

impl EnvValue {
    /// The plain value; `None` for a secret reference.
    pub fn plain(&self) -> Option<&str> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Secret(_) => None,
        }
    }

    /// The key in `secrets` this value refers to, if it is a secret reference.
    pub fn secret_key(&self) -> Option<&str> {
        match self {
            Self::Plain(_) => None,
            Self::Secret(s) => Some(&s.secret),
        }
    }
}

impl From<&str> for EnvValue {
    fn from(s: &str) -> Self {
        Self::Plain(s.to_string())
    }
}

impl From<String> for EnvValue {
    fn from(s: String) -> Self {
        Self::Plain(s)
    }
}

/// One of an app's `secrets`: `{"source": "<name in Berth's secret store>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SecretDef {
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(rename = "type", default = "d_docker")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerSpec {
    #[serde(default)]
    pub image: String,
    /// Deprecated (Marathon < 1.5); folded into `networks` by normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Deprecated (Marathon < 1.5); moved to `container.portMappings` by normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub parameters: Vec<DockerParameter>,
    #[serde(default)]
    pub force_pull_image: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerParameter {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default)]
    pub container_port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i64>,
    #[serde(default)]
    pub service_port: i64,
    #[serde(default = "d_tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default = "d_rw")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Value>,
    /// A file-based secret (Marathon's `{containerPath, secret}`): not supported, validation
    /// says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    #[serde(default)]
    pub port: i64,
    #[serde(default = "d_tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    #[serde(default)]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default = "d_http")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_index: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandCheck>,
    #[serde(default = "d_grace")]
    pub grace_period_seconds: f64,
    #[serde(default = "d_interval")]
    pub interval_seconds: f64,
    #[serde(default = "d_timeout")]
    pub timeout_seconds: f64,
    #[serde(default = "d_max_failures")]
    pub max_consecutive_failures: i64,
    #[serde(default = "d_delay")]
    pub delay_seconds: f64,
    #[serde(default)]
    pub ignore_http1xx: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandCheck {
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStrategy {
    #[serde(default = "d_one")]
    pub minimum_health_capacity: f64,
    #[serde(default = "d_one")]
    pub maximum_over_capacity: f64,
}

impl Default for UpgradeStrategy {
    fn default() -> Self {
        Self {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0,
        }
    }
}

/// `"disabled"` or `{inactiveAfterSeconds, expungeAfterSeconds}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UnreachableStrategy {
    Enabled(UnreachableEnabled),
    /// Only the string `"disabled"` is valid; validation rejects anything else.
    Disabled(String),
}

impl Default for UnreachableStrategy {
    fn default() -> Self {
        Self::Enabled(UnreachableEnabled::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UnreachableEnabled {
    #[serde(default)]
    pub inactive_after_seconds: f64,
    #[serde(default)]
    pub expunge_after_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub last_scaling_at: String,
    pub last_config_change_at: String,
}

/// Which driver runs an app's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Docker,
    Exec,
    Fake,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Exec => "exec",
            Self::Fake => "fake",
        }
    }
}

/// Label that forces a driver (`fake` for simulations); otherwise the driver follows the app.
pub const LABEL_DRIVER: &str = "BERTH_DRIVER";
/// App label: `true` adds a hard CPU quota (`cpus` worth of CPU time) to the CPU shares.
pub const LABEL_CPU_QUOTA: &str = "BERTH_CPU_QUOTA";
/// App label: per-task pids limit (a positive number, or `unlimited`).
pub const LABEL_PIDS_LIMIT: &str = "BERTH_PIDS_LIMIT";
/// App label: `auto` runs each task as a UID unique on its node.
pub const LABEL_UID: &str = "BERTH_UID";
/// App label: `spread` places tasks on the emptiest nodes instead of packing (`binpack`).
pub const LABEL_PLACEMENT: &str = "BERTH_PLACEMENT";
/// App label: `pinned` gives each task whole cores of its own (`shared`: the default).
pub const LABEL_CPU_MODE: &str = "BERTH_CPU_MODE";

/// App label of a job run: the name of the job it is a run of.
pub const LABEL_JOB_NAME: &str = "BERTH_JOB";
/// App label of a job run: `warm` runs it inside one long-lived container of its job on
/// the node (Docker driver) instead of a container of its own.
pub const LABEL_RUN_MODE: &str = "BERTH_RUN_MODE";

/// App label: rotate each of the task's log files at this size (`10m`, `512k`, `1g`, bytes),
/// instead of the agent's `--log-max-size`.
pub const LABEL_LOG_MAX_SIZE: &str = "BERTH_LOG_MAX_SIZE";
/// App label: how many files of each log to keep, the one written included, instead of the
/// agent's `--log-max-files`.
pub const LABEL_LOG_MAX_FILES: &str = "BERTH_LOG_MAX_FILES";

/// A log size as Docker's `max-size` writes it: a number of bytes, or with a unit `k`, `m`
/// or `g` (powers of 1024; `kb`, `mib` and the like too). At least 1 KiB.
pub fn parse_log_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let multiplier: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size (like 10m, 512k or 1g)")),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is not a size (like 10m, 512k or 1g)"))?;
    if bytes < 1024 {
        return Err(format!("{text:?} is too small: at least 1k"));
    }
    Ok(bytes)
}

/// Per-app log rotation, from labels: what is not set follows the agent's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogRotation {
    pub max_bytes: Option<u64>,
    pub max_files: Option<u32>,
}

/// What label `BERTH_PIDS_LIMIT` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidsLimit {
    /// No label: the agent's default (`--pids-limit`).
    AgentDefault,
    Unlimited,
    Max(u64),
}

impl AppDefinition {
    /// A label's value, trimmed; `None` when it is missing or empty.
    fn label_value(&self, label: &str) -> Option<&str> {
        self.labels
            .get(label)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value of a label that takes one of `choices` (any case): `None` without the label
    /// (or with an empty one), else the choice it names, else an error listing them.
    fn label_choice(
        &self,
        label: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, String> {
        let Some(v) = self.label_value(label) else {
            return Ok(None);
        };
        match choices.iter().find(|c| c.eq_ignore_ascii_case(v)) {
            Some(c) => Ok(Some(c)),
            None => {
                let listed: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
                Err(format!(
                    "label {label}={v:?}: expected {}",
                    listed.join(" or ")
                ))
            }
        }
    }

    /// Label `BERTH_DRIVER`: the driver it forces, if any.
    pub fn driver_label(&self) -> Result<Option<DriverKind>, String> {
        Ok(
            match self.label_choice(LABEL_DRIVER, &["docker", "exec", "fake"])? {
                Some("docker") => Some(DriverKind::Docker),
                Some("exec") => Some(DriverKind::Exec),
                Some("fake") => Some(DriverKind::Fake),
                _ => None,
            },
        )
    }

    /// Label `BERTH_CPU_QUOTA`: whether tasks get a hard CPU quota on top of their shares.
    pub fn cpu_quota(&self) -> Result<bool, String> {
        Ok(self.label_choice(LABEL_CPU_QUOTA, &["true", "false"])? == Some("true"))
    }

    /// Label `BERTH_PIDS_LIMIT`: a positive number, `unlimited` (or `-1`, as Docker says it).
    pub fn pids_limit(&self) -> Result<PidsLimit, String> {
        match self.labels.get(LABEL_PIDS_LIMIT).map(|v| v.trim()) {
            None | Some("") => Ok(PidsLimit::AgentDefault),
            Some("unlimited") | Some("-1") => Ok(PidsLimit::Unlimited),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=i64::MAX as u64).contains(n))
                .map(PidsLimit::Max)
                .ok_or_else(|| {
                    format!(
                        "label {LABEL_PIDS_LIMIT}={v:?}: expected a positive number or `unlimited`"
                    )
                }),
        }
    }

    /// Label `BERTH_PLACEMENT`: whether tasks spread over nodes (`spread`) rather than
    /// pack onto the fullest that fit (`binpack`, the default).
    pub fn spread(&self) -> Result<bool, String> {
        Ok(self.label_choice(LABEL_PLACEMENT, &["binpack", "spread"])? == Some("spread"))
    }

    /// Label `BERTH_CPU_MODE`: whether each task gets whole cores of its own (`pinned`)
    /// rather than sharing the node's unpinned cores (`shared`, the default).
    pub fn pinned_cpus(&self) -> Result<bool, String> {
        Ok(self.label_choice(LABEL_CPU_MODE, &["shared", "pinned"])? == Some("pinned"))
    }

    /// Label `BERTH_LOG_MAX_SIZE`: the size at which each log file is rotated, if set.
    pub fn log_max_bytes(&self) -> Result<Option<u64>, String> {
        self.label_value(LABEL_LOG_MAX_SIZE)
            .map(|v| parse_log_size(v).map_err(|e| format!("label {LABEL_LOG_MAX_SIZE}: {e}")))
            .transpose()
    }

    /// Label `BERTH_LOG_MAX_FILES`: how many files of each log to keep (1 to 100), if set.
    pub fn log_max_files(&self) -> Result<Option<u32>, String> {
        self.label_value(LABEL_LOG_MAX_FILES)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "label {LABEL_LOG_MAX_FILES}={v:?}: expected a number from 1 to 100"
                        )
                    })
            })
            .transpose()
    }

    /// Both log rotation labels.
    pub fn log_rotation(&self) -> Result<LogRotation, String> {
        Ok(LogRotation {
            max_bytes: self.log_max_bytes()?,
            max_files: self.log_max_files()?,
        })
    }

    /// The job's name when this is a job run in warm mode (labels `BERTH_RUN_MODE=warm`,
    /// any case, and a non-empty `BERTH_JOB`).
    pub fn warm_job(&self) -> Option<&str> {
        let warm = self
            .label_value(LABEL_RUN_MODE)
            .is_some_and(|m| m.eq_ignore_ascii_case("warm"));
        if warm {
            self.label_value(LABEL_JOB_NAME)
        } else {
            None
        }
    }

    /// Label `BERTH_UID`: whether each task runs as a UID unique on its node (`auto`).
    pub fn auto_uid(&self) -> Result<bool, String> {
        Ok(self.label_choice(LABEL_UID, &["auto"])?.is_some())
    }
}

impl AppDefinition {
    /// The app's secret environment variables: `(variable, store name)` for each env value
    /// that refers to one of its `secrets` (unresolvable references, which validation
    /// rejects, are left out).
    pub fn secret_env_sources(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .filter_map(|(var, v)| {
                let key = v.secret_key()?;
                let def = self.secrets.get(key)?;
                Some((var.as_str(), def.source.as_str()))
            })
            .collect()
    }

    /// Whether any env value refers to a secret.
    pub fn uses_secrets(&self) -> bool {
        self.env.values().any(|v| v.secret_key().is_some())
    }

    /// The driver this app needs: `container.docker` -> docker, else exec, unless the
    /// `BERTH_DRIVER` label names one explicitly.
    pub fn driver(&self) -> DriverKind {
        if let Ok(Some(kind)) = self.driver_label() {
            return kind;
        }
        match &self.container {
            Some(c) if c.kind == "DOCKER" && c.docker.is_some() => DriverKind::Docker,
            _ => DriverKind::Exec,
        }
    }

    /// Number of host ports each task needs: one per port definition (host networking) or
    /// per port mapping with a host port (bridge networking).
    pub fn host_port_count(&self) -> usize {
        self.requested_host_ports().len()
    }

    /// The host ports each task asks for: 0 means "any port from the node's range".
    pub fn requested_host_ports(&self) -> Vec<u16> {
        self.host_port_requests()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// The names of the host ports, in the order of [`Self::requested_host_ports`] (a task's
    /// `PORT_<NAME>` variables).
    pub fn host_port_names(&self) -> Vec<Option<&str>> {
        self.host_port_requests()
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }

    /// Each host port a task needs: the port asked for (0: any) and its name.
    fn host_port_requests(&self) -> Vec<(u16, Option<&str>)> {
        if let Some(mappings) = self
            .container
            .as_ref()
            .and_then(|c| c.port_mappings.as_ref())
            && self
                .networks
                .iter()
                .any(|n| n.mode == "container/bridge" || n.mode == "container")
        {
            return mappings
                .iter()
                .filter_map(|m| {
                    let port = m.host_port?;
                    Some((u16::try_from(port).unwrap_or(0), m.name.as_deref()))
                })
                .collect();
        }
        let defs = self.port_definitions.as_deref().unwrap_or(&[]);
        defs.iter()
            .map(|d| {
                let port = if self.require_ports {
                    u16::try_from(d.port).unwrap_or(0)
                } else {
                    0
                };
                (port, d.name.as_deref())
            })
            .collect()
    }

    /// The app's service ports: its port mappings' when it has a container with port
    /// mappings, its port definitions' otherwise (0: not assigned yet).
    pub fn service_ports(&self) -> Vec<i64> {
        if let Some(m) = self
            .container
            .as_ref()
            .and_then(|c| c.port_mappings.as_ref())
        {
            return m.iter().map(|m| m.service_port).collect();
        }
        self.port_definitions
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|d| d.port)
            .collect()
    }

    /// The version of the configuration (ignoring scaling): tasks launched from an older
    /// config version are replaced by a deployment.
    pub fn config_version(&self) -> &str {
        self.version_info
            .as_ref()
            .map(|v| v.last_config_change_at.as_str())
            .or(self.version.as_deref())
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_marathon() {
        let app: AppDefinition = serde_json::from_str(r#"{"id":"/a","cmd":"sleep 1"}"#).unwrap();
        assert_eq!(app.cpus, 1.0);
        assert_eq!(app.mem, 128.0);
        assert_eq!(app.instances, 1);
        assert_eq!(app.backoff_factor, 1.15);
        assert_eq!(app.upgrade_strategy, UpgradeStrategy::default());
        assert_eq!(app.kill_selection, "YOUNGEST_FIRST");
        assert_eq!(app.networks[0].mode, "host");
        assert_eq!(app.driver(), DriverKind::Exec);
    }

    #[test]
    fn warm_job_needs_both_labels() {
        let app = |labels: &str| -> AppDefinition {
            serde_json::from_str(&format!(r#"{{"id":"/a","labels":{labels}}}"#)).unwrap()
        };
        let warm = app(r#"{"BERTH_JOB":"nightly","BERTH_RUN_MODE":"Warm"}"#);
        assert_eq!(warm.warm_job(), Some("nightly"));
        assert_eq!(app(r#"{"BERTH_JOB":"nightly"}"#).warm_job(), None);
        assert_eq!(
            app(r#"{"BERTH_JOB":"nightly","BERTH_RUN_MODE":"per-run"}"#).warm_job(),
            None
        );
        assert_eq!(app(r#"{"BERTH_RUN_MODE":"warm"}"#).warm_job(), None);
    }

    #[test]
    fn unreachable_strategy_forms() {
        let app: AppDefinition =
            serde_json::from_str(r#"{"id":"/a","unreachableStrategy":"disabled"}"#).unwrap();
        assert_eq!(
            app.unreachable_strategy,
            UnreachableStrategy::Disabled("disabled".into())
        );
        let app: AppDefinition = serde_json::from_str(
            r#"{"id":"/a","unreachableStrategy":{"inactiveAfterSeconds":5,"expungeAfterSeconds":10}}"#,
        )
        .unwrap();
        assert!(
            matches!(app.unreachable_strategy, UnreachableStrategy::Enabled(e) if e.inactive_after_seconds == 5.0)
        );
    }

    #[test]
    fn env_is_a_string_or_a_secret_reference_and_strings_serialise_as_before() {
        let text = r#"{"id":"/a","env":{"DB_PASSWORD":{"secret":"db"},"MODE":"prod"},"secrets":{"db":{"source":"prod/db-password"}}}"#;
        let app: AppDefinition = serde_json::from_str(text).unwrap();
        assert_eq!(app.env["MODE"], EnvValue::Plain("prod".into()));
        assert_eq!(app.env["DB_PASSWORD"].secret_key(), Some("db"));
        assert_eq!(app.secrets["db"].source, "prod/db-password");
        assert_eq!(
            app.secret_env_sources(),
            vec![("DB_PASSWORD", "prod/db-password")]
        );
        assert!(app.uses_secrets());
        let v = serde_json::to_value(&app).unwrap();
        assert_eq!(
            v["env"],
            serde_json::json!({"DB_PASSWORD": {"secret": "db"}, "MODE": "prod"})
        );
        assert_eq!(
            v["secrets"],
            serde_json::json!({"db": {"source": "prod/db-password"}})
        );
        // A plain env map is byte-identical to the old `BTreeMap<String, String>` encoding.
        let plain: AppDefinition =
            serde_json::from_str(r#"{"id":"/a","env":{"A":"1","B":"x y"}}"#).unwrap();
        let old: BTreeMap<String, String> =
            BTreeMap::from([("A".into(), "1".into()), ("B".into(), "x y".into())]);
        assert_eq!(
            serde_json::to_string(&plain.env).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
        assert!(!plain.uses_secrets());
        // Anything else is not an env value.
        for bad in [
            r#"{"A":1}"#,
            r#"{"A":{"secret":1}}"#,
            r#"{"A":{"secret":"s","x":1}}"#,
        ] {
            assert!(
                serde_json::from_str::<BTreeMap<String, EnvValue>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn driver_follows_container_and_label() {
        let mut app: AppDefinition = serde_json::from_str(
            r#"{"id":"/a","container":{"type":"DOCKER","docker":{"image":"busybox"}}}"#,
        )
        .unwrap();
        assert_eq!(app.driver(), DriverKind::Docker);
        app.labels.insert(LABEL_DRIVER.into(), "fake".into());
        assert_eq!(app.driver(), DriverKind::Fake);
    }
}
