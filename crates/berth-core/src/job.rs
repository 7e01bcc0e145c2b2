//! Chronos job definitions (`/scheduler/iso8601`, `/scheduler/dependency`), as clients send
//! them and as Berth stores and returns them, with validation and the pure dependency-graph
//! rules in [`graph`]. Field names and defaults follow Chronos 3.x; the 2.x fields `epsilon` and
//! `async` are accepted and kept but mean nothing.
//!
//! Berth extensions: `cron` (a 5-field cron expression, an alternative to `schedule`) and
//! `runMode` (`per-run`: a fresh task per run; `warm`: a kept container the run is executed in).
//!
//! The pipeline is [`job_from_json`]: types ([`parse_job_value`]), then [`normalize_job`]
//! (Chronos' "0 or missing means the default" resources), then [`validate_job`] (every rule,
//! all errors collected, each with the path of its field).

pub mod graph;
pub mod run;
#[cfg(test)]
mod tests;

use crate::error::ValidationErrors;
use crate::schedule::{Schedule, ScheduleError};
use crate::validate::{MAX_LIST_ITEMS, MAX_LONG_STRING, MAX_MAP_ENTRIES, MAX_SHORT_STRING};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

/// Longest job name (bytes). Names appear in URLs and in task ids.
pub const MAX_JOB_NAME: usize = 255;
/// Most retries after a failed run.
pub const MAX_RETRIES: i64 = 100;
/// Most parents of one dependent job.
pub const MAX_PARENTS: usize = 1_000;

pub const DEFAULT_CPUS: f64 = 0.1;
pub const DEFAULT_MEM: f64 = 128.0;
pub const DEFAULT_DISK: f64 = 256.0;

fn d_true() -> bool {
    true
}
fn d_epsilon() -> String {
    "PT60S".into()
}
fn d_retries() -> i64 {
    2
}
fn d_cpus() -> f64 {
    DEFAULT_CPUS
}
fn d_mem() -> f64 {
    DEFAULT_MEM
}
fn d_disk() -> f64 {
    DEFAULT_DISK
}
fn d_docker() -> String {
    "DOCKER".into()
}
fn d_host() -> String {
    "HOST".into()
}
fn d_rw() -> String {
    "RW".into()
}

/// A Chronos job. Scheduled jobs have `schedule` (or Berth's `cron`); dependent jobs have
/// `parents` instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub arguments: Vec<String>,
    /// Run `command` through `sh -c`; false: `command` is the executable and `arguments` its
    /// arguments.
    #[serde(default = "d_true")]
    pub shell: bool,
    /// Chronos 2.x's launch tolerance; accepted and ignored, as Chronos 3.x does.
    #[serde(default = "d_epsilon")]
    pub epsilon: String,
    #[serde(default)]
    pub executor: String,
    #[serde(default)]
    pub executor_flags: String,
    /// Extra attempts after a failed run.
    #[serde(default = "d_retries")]
    pub retries: i64,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub owner_name: String,
    #[serde(default)]
    pub description: String,
    /// Chronos 2.x; accepted and ignored.
    #[serde(default, rename = "async")]
    pub async_: bool,
    #[serde(default)]
    pub success_count: u64,
    #[serde(default)]
    pub error_count: u64,
    /// ISO 8601 UTC time of the last success, or `""`.
    #[serde(default)]
    pub last_success: String,
    /// ISO 8601 UTC time of the last failure, or `""`.
    #[serde(default)]
    pub last_error: String,
    #[serde(default = "d_cpus")]
    pub cpus: f64,
    #[serde(default = "d_disk")]
    pub disk: f64,
    #[serde(default = "d_mem")]
    pub mem: f64,
    #[serde(default)]
    pub disabled: bool,
    /// A failed run still fires the dependents.
    #[serde(default)]
    pub soft_error: bool,
    #[serde(default)]
    pub data_processing_job_type: bool,
    #[serde(default)]
    pub errors_since_last_success: u64,
    /// Deprecated form of `fetch`: URIs downloaded into the sandbox.
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub fetch: Vec<Value>,
    #[serde(default)]
    pub environment_variables: Vec<EnvironmentVariable>,
    #[serde(default)]
    pub high_priority: bool,
    /// User the command runs as; `""`: the scheduler's default.
    #[serde(default)]
    pub run_as_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<JobContainer>,
    /// `[attribute, EQUALS|LIKE|UNLIKE, value]`.
    #[serde(default)]
    pub constraints: Vec<Vec<String>>,
    /// `R[n]/<start>/<period>`; empty for dependent and cron jobs.
    #[serde(default)]
    pub schedule: String,
    /// IANA zone for `schedule` (and `cron`); `""`: the schedule start's own offset (UTC for
    /// cron).
    #[serde(default)]
    pub schedule_time_zone: String,
    /// Jobs that must all succeed before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// Allow a run to start while another is still running.
    #[serde(default)]
    pub concurrent: bool,
    /// Seconds after which a run is killed and counted as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_time: Option<u64>,
    /// Berth: a 5-field cron expression instead of `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Berth: how runs are executed.
    #[serde(default)]
    pub run_mode: RunMode,
}

impl Default for Job {
    /// The same as deserialising `{}` (a test keeps the two in step).
    fn default() -> Self {
        Job {
            name: String::new(),
            command: String::new(),
            arguments: vec![],
            shell: true,
            epsilon: d_epsilon(),
            executor: String::new(),
            executor_flags: String::new(),
            retries: d_retries(),
            owner: String::new(),
            owner_name: String::new(),
            description: String::new(),
            async_: false,
            success_count: 0,
            error_count: 0,
            last_success: String::new(),
            last_error: String::new(),
            cpus: DEFAULT_CPUS,
            disk: DEFAULT_DISK,
            mem: DEFAULT_MEM,
            disabled: false,
            soft_error: false,
            data_processing_job_type: false,
            errors_since_last_success: 0,
            uris: vec![],
            fetch: vec![],
            environment_variables: vec![],
            high_priority: false,
            run_as_user: String::new(),
            container: None,
            constraints: vec![],
            schedule: String::new(),
            schedule_time_zone: String::new(),
            parents: vec![],
            concurrent: false,
            max_completion_time: None,
            cron: None,
            run_mode: RunMode::PerRun,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentVariable {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobContainer {
    /// `DOCKER` or `MESOS`.
    #[serde(default = "d_docker", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub image: String,
    /// `BRIDGE`, `HOST` or `USER`.
    #[serde(default = "d_host")]
    pub network: String,
    #[serde(default)]
    pub volumes: Vec<JobVolume>,
    #[serde(default)]
    pub parameters: Vec<DockerParameter>,
    #[serde(default)]
    pub force_pull_image: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobVolume {
    #[serde(default)]
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `RW` or `RO`.
    #[serde(default = "d_rw")]
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerParameter {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Berth: how a job's runs are executed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    /// Each run is a fresh task (Chronos' behaviour).
    #[default]
    PerRun,
    /// Runs execute inside a kept, already started container.
    Warm,
}

/// What triggers a job's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Cron,
    Parents,
}

impl Job {
    /// What the job runs on; `None` when it has none or several (which validation refuses).
    pub fn trigger(&self) -> Option<Trigger> {
        match (
            self.has_schedule(),
            self.has_cron(),
            !self.parents.is_empty(),
        ) {
            (true, false, false) => Some(Trigger::Schedule),
            (false, true, false) => Some(Trigger::Cron),
            (false, false, true) => Some(Trigger::Parents),
            _ => None,
        }
    }

    fn has_schedule(&self) -> bool {
        !self.schedule.is_empty()
    }

    fn has_cron(&self) -> bool {
        self.cron.as_deref().is_some_and(|c| !c.is_empty())
    }

    /// The parsed `schedule` or `cron`; `None` for a dependent job. An empty schedule start
    /// becomes "now": store [`Schedule::to_string`] back into `schedule` once.
    pub fn parsed_schedule(&self) -> Option<Result<Schedule, ScheduleError>> {
        match self.trigger()? {
            Trigger::Schedule => Some(Schedule::parse_iso(
                &self.schedule,
                &self.schedule_time_zone,
            )),
            Trigger::Cron => Some(Schedule::parse_cron(
                self.cron.as_deref().unwrap_or_default(),
                &self.schedule_time_zone,
            )),
            Trigger::Parents => None,
        }
    }
}

/// Whether `name` is a valid job name: 1 to [`MAX_JOB_NAME`] bytes of ASCII letters, digits,
/// `_`, `.` and `-` (Chronos' `[\w.-]+` with Java's ASCII `\w`), and not `.` or `..`, which
/// would be path segments in `/scheduler/job/{name}`.
pub fn is_valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_JOB_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is required".into())
    } else if name.len() > MAX_JOB_NAME {
        Some(format!("must be at most {MAX_JOB_NAME} bytes"))
    } else if !is_valid_job_name(name) {
        Some(format!(
            "'{}' may only contain letters, digits, '_', '.' and '-' (and not be '.' or '..')",
            crate::validate::echo(name)
        ))
    } else {
        None
    }
}

/// Deserialises a job, reporting a wrong type at the path where it occurred.
pub fn parse_job_value(v: Value) -> Result<Job, ValidationErrors> {
    if !v.is_object() {
        return Err(ValidationErrors::single("/", "expected a JSON object"));
    }
    serde_path_to_error::deserialize::<_, Job>(v).map_err(|e| {
        let path = crate::validate::marathon_path(e.path());
        let msg = crate::validate::friendly_type_error(&path, &e.inner().to_string());
        ValidationErrors::single(path, msg)
    })
}

/// Chronos' defaults that depend on the value: `cpus`, `mem` and `disk` of 0 mean the default.
/// Idempotent; never fails.
pub fn normalize_job(job: &mut Job) {
    for (v, d) in [
        (&mut job.cpus, DEFAULT_CPUS),
        (&mut job.mem, DEFAULT_MEM),
        (&mut job.disk, DEFAULT_DISK),
    ] {
        if *v == 0.0 {
            *v = d;
        }
    }
}

/// Every rule a job must satisfy on its own; [`graph::JobGraph::check_upsert`] checks those
/// involving other jobs (parents exist, no cycle).
pub fn validate_job(job: &Job) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::new();
    if let Some(p) = name_problem(&job.name) {
        errs.add("/name", p);
    }
    validate_trigger(job, &mut errs);
    for (path, v) in [("/cpus", job.cpus), ("/mem", job.mem), ("/disk", job.disk)] {
        if !v.is_finite() || v < 0.0 {
            errs.add(path, "must be a finite number, 0 or more");
        }
    }
    if !(0..=MAX_RETRIES).contains(&job.retries) {
        errs.add("/retries", format!("must be between 0 and {MAX_RETRIES}"));
    }
    if job.command.len() > MAX_LONG_STRING {
        errs.add(
            "/command",
            format!("must be at most {MAX_LONG_STRING} bytes"),
        );
    }
    if job.command.is_empty() && job.container.is_none() {
        errs.add(
            "/command",
            "is required unless a container image provides one",
        );
    }
    if job.arguments.len() > MAX_MAP_ENTRIES {
        errs.add(
            "/arguments",
            format!("must have at most {MAX_MAP_ENTRIES} entries"),
        );
    }
    for (i, a) in job.arguments.iter().enumerate() {
        if a.len() > MAX_LONG_STRING {
            errs.add(
                format!("/arguments({i})"),
                format!("must be at most {MAX_LONG_STRING} bytes"),
            );
        }
    }
    for (path, v) in [
        ("/owner", &job.owner),
        ("/ownerName", &job.owner_name),
        ("/runAsUser", &job.run_as_user),
        ("/executor", &job.executor),
    ] {
        if v.len() > MAX_SHORT_STRING {
            errs.add(path, format!("must be at most {MAX_SHORT_STRING} bytes"));
        }
    }
    if job.description.len() > MAX_LONG_STRING {
        errs.add(
            "/description",
            format!("must be at most {MAX_LONG_STRING} bytes"),
        );
    }
    validate_lists(job, &mut errs);
    if let Some(c) = &job.container {
        validate_container(c, &mut errs);
    }
    errs.into_result()
}

fn validate_trigger(job: &Job, errs: &mut ValidationErrors) {
    let (schedule, cron, parents) = (job.has_schedule(), job.has_cron(), !job.parents.is_empty());
    match (schedule, cron, parents) {
        (false, false, false) => errs.add(
            "/schedule",
            "a job needs a schedule, a cron expression or parents",
        ),
        (true, true, _) => errs.add("/cron", "give either schedule or cron, not both"),
        (true, false, true) | (false, true, true) => errs.add(
            "/parents",
            "a job with parents runs after them; it cannot also have a schedule or cron",
        ),
        _ => {}
    }
    let tz = job.schedule_time_zone.as_str();
    let mut parse_error = |path: &str, e: ScheduleError| {
        if e.is_time_zone() {
            errs.add("/scheduleTimeZone", e.to_string());
        } else {
            errs.add(path, e.to_string());
        }
    };
    if schedule {
        // The start only matters for validity when it is not empty, so any "now" will do.
        if let Err(e) = Schedule::parse_iso_at(&job.schedule, tz, jiff::Timestamp::UNIX_EPOCH) {
            parse_error("/schedule", e);
        }
    }
    if let Some(Err(e)) = job
        .cron
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| Schedule::parse_cron(c, tz))
    {
        parse_error("/cron", e);
    }
    if job.parents.len() > MAX_PARENTS {
        errs.add(
            "/parents",
            format!("must have at most {MAX_PARENTS} entries"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, p) in job.parents.iter().enumerate() {
        let path = format!("/parents({i})");
        if let Some(problem) = name_problem(p) {
            errs.add(path, format!("parent name {problem}"));
        } else if *p == job.name {
            errs.add(path, "a job cannot be its own parent");
        } else if !seen.insert(p) {
            errs.add(path, format!("'{p}' is listed twice"));
        }
    }
}

fn validate_lists(job: &Job, errs: &mut ValidationErrors) {
    for (path, len) in [
        ("/uris", job.uris.len()),
        ("/fetch", job.fetch.len()),
        ("/constraints", job.constraints.len()),
    ] {
        if len > MAX_LIST_ITEMS {
            errs.add(path, format!("must have at most {MAX_LIST_ITEMS} entries"));
        }
    }
    for (i, u) in job.uris.iter().enumerate() {
        if u.is_empty() || u.len() > MAX_SHORT_STRING {
            errs.add(
                format!("/uris({i})"),
                format!("must be 1 to {MAX_SHORT_STRING} bytes"),
            );
        }
    }
    if job.environment_variables.len() > MAX_MAP_ENTRIES {
        errs.add(
            "/environmentVariables",
            format!("must have at most {MAX_MAP_ENTRIES} entries"),
        );
    }
    for (i, e) in job.environment_variables.iter().enumerate() {
        if e.name.is_empty() || e.name.len() > MAX_SHORT_STRING || e.name.contains(['=', '\0']) {
            errs.add(
                format!("/environmentVariables({i})/name"),
                "must be a non-empty name without '=' or NUL",
            );
        }
        if e.value.len() > MAX_LONG_STRING {
            errs.add(
                format!("/environmentVariables({i})/value"),
                format!("must be at most {MAX_LONG_STRING} bytes"),
            );
        }
    }
    for (i, c) in job.constraints.iter().enumerate() {
        let path = format!("/constraints({i})");
        let [_, op, value] = c.as_slice() else {
            errs.add(path, "must be [attribute, operator, value]");
            continue;
        };
        match op.as_str() {
            "EQUALS" => {}
            "LIKE" | "UNLIKE" => {
                if regex::Regex::new(&format!("^(?:{value})$")).is_err() {
                    errs.add(
                        path,
                        format!(
                            "'{}' is not a valid regular expression",
                            crate::validate::echo(value)
                        ),
                    );
                }
            }
            _ => errs.add(
                path,
                format!(
                    "operator '{}' must be EQUALS, LIKE or UNLIKE",
                    crate::validate::echo(op)
                ),
            ),
        }
    }
}

fn validate_container(c: &JobContainer, errs: &mut ValidationErrors) {
    if !matches!(c.kind.as_str(), "DOCKER" | "MESOS") {
        errs.add("/container/type", "must be DOCKER or MESOS");
    }
    if c.image.is_empty() {
        errs.add("/container/image", "is required");
    } else if c.image.len() > MAX_SHORT_STRING {
        errs.add(
            "/container/image",
            format!("must be at most {MAX_SHORT_STRING} bytes"),
        );
    }
    if !matches!(c.network.as_str(), "BRIDGE" | "HOST" | "USER") {
        errs.add("/container/network", "must be BRIDGE, HOST or USER");
    }
    if c.volumes.len() > MAX_LIST_ITEMS {
        errs.add(
            "/container/volumes",
            format!("must have at most {MAX_LIST_ITEMS} entries"),
        );
    }
    for (i, v) in c.volumes.iter().enumerate() {
        if v.container_path.is_empty() {
            errs.add(
                format!("/container/volumes({i})/containerPath"),
                "is required",
            );
        }
        if !matches!(v.mode.as_str(), "RW" | "RO") {
            errs.add(format!("/container/volumes({i})/mode"), "must be RW or RO");
        }
    }
    if c.parameters.len() > MAX_MAP_ENTRIES {
        errs.add(
            "/container/parameters",
            format!("must have at most {MAX_MAP_ENTRIES} entries"),
        );
    }
    for (i, p) in c.parameters.iter().enumerate() {
        if p.key.is_empty() {
            errs.add(format!("/container/parameters({i})/key"), "is required");
        }
    }
}

/// Parse, normalise and validate a client's job JSON.
pub fn job_from_json(v: Value) -> Result<Job, ValidationErrors> {
    let mut job = parse_job_value(v)?;
    normalize_job(&mut job);
    validate_job(&job)?;
    Ok(job)
}
