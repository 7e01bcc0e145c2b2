//! Chronos jobs (#14, part 1): definitions, runs bookkeeping and statistics, as typed
//! operations over the in-memory model (no HTTP types; `api::chronos` renders them).
//!
//! A job is stored under [`K_JOBS`]`{name}` as a [`JobRecord`]: the Chronos definition plus
//! Berth's bookkeeping (which parents have succeeded since the job last ran, persisted, unlike
//! Chronos). Each run is stored under [`K_JOBRUNS`]`{name}/{id:020}`; at most
//! [`MAX_RUNS_PER_JOB`] are kept per job.
//!
//! Runs are only recorded here. The seam for the job controller that will execute them:
//! [`queued_runs`] lists what is waiting, [`mark_run_started`] and [`record_run_outcome`]
//! report what happened.

use crate::error::{ApiError, ApiResult};
use crate::state::{Changes, Cluster};
use berth_core::error::ValidationErrors;
use berth_core::job::graph::{JobGraph, reparent_on_delete};
use berth_core::job::{Job, Trigger, job_from_json};
use berth_core::schedule::Schedule;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub use crate::state::{K_JOBRUNS, K_JOBS};
/// Most jobs; one more is refused with 400.
pub const MAX_JOBS: usize = 10_000;
/// Runs kept per job (the oldest go first).
pub const MAX_RUNS_PER_JOB: usize = 100;

/// A job as Berth stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub job: Job,
    /// Per parent: when it last succeeded (epoch ms) since this job last ran. A parent
    /// missing here has not. Cleared when a run of this job is queued.
    #[serde(default)]
    pub parent_successes: BTreeMap<String, i64>,
    /// The id the next run gets.
    #[serde(default)]
    pub next_run_id: u64,
    /// Cron jobs: due times at or before this instant (epoch ms) have been handled. (An ISO
    /// schedule carries its own progress: its start is rewritten after each run.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_checked_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Success,
    Failure,
    Killed,
}

impl RunStatus {
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRun {
    pub id: u64,
    pub job: String,
    pub status: RunStatus,
    #[serde(default)]
    pub attempts: u32,
    /// Epoch ms.
    pub queued_at: i64,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    /// `?arguments=` of a manual run: replaces the job's arguments for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Vec<String>>,
    /// The due time (epoch ms) a scheduled run stands for; `None` for manual and dependent
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<i64>,
    /// When the run's process was seen running (epoch ms), as its agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<i64>,
}

impl JobRun {
    /// Run time in ms, for finished runs that started.
    pub fn duration_ms(&self) -> Option<i64> {
        Some((self.ended_at? - self.started_at?).max(0))
    }
}

/// Which endpoint a definition came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertKind {
    /// `/scheduler/iso8601`: a scheduled job.
    Scheduled,
    /// `/scheduler/dependency`: a job with parents.
    Dependent,
}

pub fn job_key(name: &str) -> String {
    format!("{K_JOBS}{name}")
}

pub fn run_key(name: &str, id: u64) -> String {
    format!("{K_JOBRUNS}{name}/{id:020}")
}

/// The namespace a job belongs to for scopes: the part of its name before the first `.`
/// (`prod.etl-daily` -> `prod`), else `default`.
pub fn job_namespace(name: &str) -> &str {
    match name.split_once('.') {
        Some((ns, _)) if !ns.is_empty() => ns,
        _ => berth_core::namespace::DEFAULT_NAMESPACE,
    }
}

/// The app-id-like path scopes are checked on: `/{namespace}/{name}`.
pub fn scope_id(name: &str) -> String {
    format!("/{}/{name}", job_namespace(name))
}

/// Takes a stored job or run record while loading state; `false` if `key` is not one.
pub fn load_record(c: &mut Cluster, key: &str, v: Value) -> bool {
    if let Some(name) = key.strip_prefix(K_JOBS) {
        match serde_json::from_value::<JobRecord>(v) {
            Ok(r) => {
                c.jobs.insert(name.to_string(), r);
            }
            Err(e) => tracing::error!(key, error = %e, "skipping undecodable job"),
        }
        true
    } else if key.starts_with(K_JOBRUNS) {
        match serde_json::from_value::<JobRun>(v) {
            Ok(r) => {
                c.job_runs.entry(r.job.clone()).or_default().insert(r.id, r);
            }
            Err(e) => tracing::error!(key, error = %e, "skipping undecodable job run"),
        }
        true
    } else {
        false
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("Job '{name}' does not exist"))
}

fn bad(e: &ValidationErrors) -> ApiError {
    let parts: Vec<String> =
        e.0.iter()
            .map(|f| format!("{}: {}", f.path, f.errors.join(", ")))
            .collect();
    ApiError::BadRequest(format!("Invalid job: {}", parts.join("; ")))
}

/// ISO 8601 UTC with milliseconds, as Chronos shows `lastSuccess`/`lastError`.
pub fn iso_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Creates or replaces a job from a client's JSON. Counters and dependency progress of an
/// existing job are kept; a client cannot set them.
pub fn upsert(
    st: &mut Cluster,
    ch: &mut Changes,
    v: Value,
    kind: UpsertKind,
    now_ms: i64,
) -> ApiResult<String> {
    let mut job = job_from_json(v).map_err(|e| bad(&e))?;
    match (kind, job.trigger()) {
        (UpsertKind::Scheduled, Some(Trigger::Parents)) => {
            return Err(ApiError::BadRequest(
                "a job with parents goes to /scheduler/dependency".into(),
            ));
        }
        (UpsertKind::Dependent, Some(t)) if t != Trigger::Parents => {
            return Err(ApiError::BadRequest(
                "a dependent job needs a non-empty 'parents' (scheduled jobs go to \
                 /scheduler/iso8601)"
                    .into(),
            ));
        }
        _ => {}
    }
    if job.trigger() == Some(Trigger::Schedule) {
        let now = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let s =
            Schedule::parse_iso_at(&job.schedule, &job.schedule_time_zone, now).map_err(|e| {
                ApiError::BadRequest(format!("Cannot parse schedule '{}': {e}", job.schedule))
            })?;
        // Canonical form: an empty start becomes the instant of this upsert, once.
        job.schedule = s.to_string();
    }
    let graph = JobGraph::from_jobs(st.jobs.values().map(|r| &r.job));
    graph
        .check_upsert(&job.name, &job.parents)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let name = job.name.clone();
    let record = match st.jobs.get(&name) {
        Some(old) => {
            let o = &old.job;
            job.success_count = o.success_count;
            job.error_count = o.error_count;
            job.last_success = o.last_success.clone();
            job.last_error = o.last_error.clone();
            job.errors_since_last_success = o.errors_since_last_success;
            let mut progress = old.parent_successes.clone();
            progress.retain(|p, _| job.parents.contains(p));
            // A new cron expression starts counting now, not from the old one's progress.
            let cron_checked_at = match (&job.cron, &o.cron) {
                (Some(new), Some(was)) if new == was => old.cron_checked_at.or(Some(now_ms)),
                (Some(_), _) => Some(now_ms),
                (None, _) => None,
            };
            JobRecord {
                job,
                parent_successes: progress,
                next_run_id: old.next_run_id,
                cron_checked_at,
            }
        }
        None => {
            if st.jobs.len() >= MAX_JOBS {
                return Err(ApiError::BadRequest(format!(
                    "too many jobs: at most {MAX_JOBS} may exist; delete some first"
                )));
            }
            job.success_count = 0;
            job.error_count = 0;
            job.last_success.clear();
            job.last_error.clear();
            job.errors_since_last_success = 0;
            let cron_checked_at = job.cron.as_ref().map(|_| now_ms);
            JobRecord {
                job,
                parent_successes: BTreeMap::new(),
                next_run_id: 1,
                cron_checked_at,
            }
        }
    };
    ch.put(job_key(&name), &record);
    ch.jobs = true;
    st.jobs.insert(name.clone(), record);
    Ok(name)
}

/// Deletes a job and its runs; its children inherit its parents, or its schedule.
pub fn delete(st: &mut Cluster, ch: &mut Changes, name: &str) -> ApiResult<()> {
    if !st.jobs.contains_key(name) {
        return Err(not_found(name));
    }
    let all: Vec<Job> = st.jobs.values().map(|r| r.job.clone()).collect();
    for child in reparent_on_delete(&all, name) {
        if let Some(rec) = st.jobs.get_mut(&child.name) {
            rec.parent_successes
                .retain(|p, _| child.parents.contains(p));
            rec.job = child;
            ch.put(job_key(&rec.job.name), &*rec);
        }
    }
    kill_run_tasks(st, ch, name);
    st.jobs.remove(name);
    st.job_runs.remove(name);
    ch.delete(job_key(name));
    ch.ops.push(berth_store::Op::DeletePrefix {
        prefix: format!("{K_JOBRUNS}{name}/"),
    });
    Ok(())
}

/// Asks the agents to stop the tasks of `name`'s running runs.
fn kill_run_tasks(st: &mut Cluster, ch: &mut Changes, name: &str) {
    let tasks: Vec<String> = st
        .job_runs
        .get(name)
        .into_iter()
        .flat_map(|runs| runs.values())
        .filter(|r| r.status == RunStatus::Running)
        .filter_map(|r| r.task_id.clone())
        .collect();
    for id in tasks {
        kill_task(st, ch, &id);
    }
}

/// Sets a task's goal to killed (its agent stops it; its end then changes nothing more).
pub fn kill_task(st: &mut Cluster, ch: &mut Changes, task_id: &str) {
    if let Some(t) = st.tasks.get_mut(task_id)
        && t.goal != berth_core::task::TaskGoal::Killed
    {
        t.goal = berth_core::task::TaskGoal::Killed;
        st.save_task(task_id, ch);
    }
}

pub fn has_active_run(st: &Cluster, name: &str) -> bool {
    st.job_runs
        .get(name)
        .is_some_and(|runs| runs.values().any(|r| r.status.is_active()))
}

/// Queues a run of `name` (a manual run, or one its parents triggered). With
/// `concurrent=false` and a run already queued or running, none is added: `Ok(None)`.
pub fn run_now(
    st: &mut Cluster,
    ch: &mut Changes,
    name: &str,
    arguments: Option<Vec<String>>,
    now_ms: i64,
) -> ApiResult<Option<u64>> {
    let Some(rec) = st.jobs.get(name) else {
        return Err(not_found(name));
    };
    if !rec.job.concurrent && has_active_run(st, name) {
        return Ok(None);
    }
    Ok(Some(queue_run(st, ch, name, arguments, None, now_ms)))
}

/// Records a new queued run (the job exists) and trims the history.
pub fn queue_run(
    st: &mut Cluster,
    ch: &mut Changes,
    name: &str,
    arguments: Option<Vec<String>>,
    scheduled_for: Option<i64>,
    now_ms: i64,
) -> u64 {
    let Some(rec) = st.jobs.get_mut(name) else {
        return 0;
    };
    let id = rec.next_run_id.max(1);
    rec.next_run_id = id + 1;
    rec.parent_successes.clear();
    ch.put(job_key(name), &*rec);
    let run = JobRun {
        id,
        job: name.to_string(),
        status: RunStatus::Queued,
        attempts: 0,
        queued_at: now_ms,
        started_at: None,
        ended_at: None,
        node: None,
        task_id: None,
        exit_code: None,
        message: None,
        arguments,
        scheduled_for,
        running_at: None,
    };
    ch.put(run_key(name, id), &run);
    ch.jobs = true;
    let runs = st.job_runs.entry(name.to_string()).or_default();
    runs.insert(id, run);
    while runs.len() > MAX_RUNS_PER_JOB {
        // Prefer dropping the oldest finished run; an active one goes only if all are.
        let victim = runs
            .values()
            .find(|r| !r.status.is_active())
            .or_else(|| runs.values().next())
            .map(|r| r.id);
        let Some(old) = victim else { break };
        runs.remove(&old);
        ch.delete(run_key(name, old));
    }
    id
}

/// Marks every queued or running run of `name` killed; returns how many.
pub fn kill(st: &mut Cluster, ch: &mut Changes, name: &str, now_ms: i64) -> ApiResult<usize> {
    if !st.jobs.contains_key(name) {
        return Err(not_found(name));
    }
    kill_run_tasks(st, ch, name);
    let mut n = 0;
    for run in st
        .job_runs
        .get_mut(name)
        .into_iter()
        .flatten()
        .map(|(_, r)| r)
    {
        if run.status.is_active() {
            run.status = RunStatus::Killed;
            run.ended_at = Some(now_ms);
            run.message = Some("killed by request".into());
            ch.put(run_key(name, run.id), &*run);
            n += 1;
        }
    }
    Ok(n)
}

/// `PUT /scheduler/job/success/{name}`: counts a success of `name` and records it as each
/// child's parent progress; children whose parents have all succeeded get a queued run.
pub fn mark_success(st: &mut Cluster, ch: &mut Changes, name: &str, now_ms: i64) -> ApiResult<()> {
    let Some(rec) = st.jobs.get_mut(name) else {
        return Err(not_found(name));
    };
    rec.job.success_count += 1;
    rec.job.errors_since_last_success = 0;
    rec.job.last_success = iso_ms(now_ms);
    ch.put(job_key(name), &*rec);
    fire_children(st, ch, name, now_ms);
    Ok(())
}

/// Records `parent`'s success in each child; queues the children that are now ready.
fn fire_children(st: &mut Cluster, ch: &mut Changes, parent: &str, now_ms: i64) {
    let graph = JobGraph::from_jobs(st.jobs.values().map(|r| &r.job));
    let children: Vec<String> = graph
        .children(parent)
        .into_iter()
        .map(str::to_string)
        .collect();
    for c in children {
        let Some(rec) = st.jobs.get_mut(&c) else {
            continue;
        };
        rec.parent_successes.insert(parent.to_string(), now_ms);
        ch.put(job_key(&c), &*rec);
        queue_if_ready(st, ch, &c, now_ms);
    }
}

/// Queues a run of the dependent job `name` if every parent has succeeded since it last
/// ran, it is enabled, and (with `concurrent=false`) no run of it is active. A child that
/// was busy when its last parent succeeded is queued when that run ends.
fn queue_if_ready(st: &mut Cluster, ch: &mut Changes, name: &str, now_ms: i64) {
    let Some(rec) = st.jobs.get(name) else {
        return;
    };
    let ready = !rec.job.parents.is_empty()
        && rec
            .job
            .parents
            .iter()
            .all(|p| rec.parent_successes.contains_key(p));
    if ready && !rec.job.disabled && (rec.job.concurrent || !has_active_run(st, name)) {
        queue_run(st, ch, name, None, None, now_ms);
    }
}

/// The job controller's seam: every queued run, oldest first, as `(job, run id)`.
pub fn queued_runs(st: &Cluster) -> Vec<(String, u64)> {
    let mut out: Vec<(i64, String, u64)> = st
        .job_runs
        .values()
        .flat_map(|runs| runs.values())
        .filter(|r| r.status == RunStatus::Queued)
        .map(|r| (r.queued_at, r.job.clone(), r.id))
        .collect();
    out.sort();
    out.into_iter().map(|(_, j, id)| (j, id)).collect()
}

/// The job controller's seam: a queued run was launched as `task_id` on `node`.
pub fn mark_run_started(
    st: &mut Cluster,
    ch: &mut Changes,
    name: &str,
    id: u64,
    node: &str,
    task_id: &str,
    now_ms: i64,
) -> ApiResult<()> {
    let run = st
        .job_runs
        .get_mut(name)
        .and_then(|r| r.get_mut(&id))
        .ok_or_else(|| ApiError::NotFound(format!("run {id} of job '{name}' does not exist")))?;
    if run.status != RunStatus::Queued {
        return Err(ApiError::BadRequest(format!(
            "run {id} of job '{name}' is {:?}, not queued",
            run.status
        )));
    }
    run.status = RunStatus::Running;
    run.attempts += 1;
    run.started_at = Some(now_ms);
    run.node = Some(node.to_string());
    run.task_id = Some(task_id.to_string());
    ch.put(run_key(name, id), &*run);
    Ok(())
}

/// How a run ended, as the job controller reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub success: bool,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub ended_at: i64,
}

/// The job controller's seam: records a run's end and updates the job's counters; a
/// success (or, with `softError`, a failure) fires the dependents. A run that already ended
/// (killed, or reported before) is left as it is.
pub fn record_run_outcome(
    st: &mut Cluster,
    ch: &mut Changes,
    name: &str,
    id: u64,
    outcome: RunOutcome,
) -> ApiResult<()> {
    let run = st
        .job_runs
        .get_mut(name)
        .and_then(|r| r.get_mut(&id))
        .ok_or_else(|| ApiError::NotFound(format!("run {id} of job '{name}' does not exist")))?;
    if !run.status.is_active() {
        // Already ended (killed, or reported twice): the first word stands.
        return Ok(());
    }
    run.status = if outcome.success {
        RunStatus::Success
    } else {
        RunStatus::Failure
    };
    run.exit_code = outcome.exit_code;
    run.message = outcome.message;
    run.ended_at = Some(outcome.ended_at);
    ch.put(run_key(name, id), &*run);
    ch.jobs = true;
    st.count(
        if outcome.success {
            "job_runs_succeeded"
        } else {
            "job_runs_failed"
        },
        1,
    );
    let Some(rec) = st.jobs.get_mut(name) else {
        return Ok(());
    };
    let fires = outcome.success || rec.job.soft_error;
    if outcome.success {
        rec.job.success_count += 1;
        rec.job.errors_since_last_success = 0;
        rec.job.last_success = iso_ms(outcome.ended_at);
    } else {
        rec.job.error_count += 1;
        rec.job.errors_since_last_success += 1;
        rec.job.last_error = iso_ms(outcome.ended_at);
    }
    ch.put(job_key(name), &*rec);
    if fires {
        fire_children(st, ch, name, outcome.ended_at);
    }
    queue_if_ready(st, ch, name, outcome.ended_at);
    Ok(())
}

/// Duration percentiles of a job's successful runs, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    pub p75: f64,
    pub p95: f64,
    pub p98: f64,
    pub p99: f64,
    pub median: f64,
    pub mean: f64,
    pub count: usize,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn histogram(st: &Cluster, name: &str) -> Histogram {
    let mut d: Vec<f64> = st
        .job_runs
        .get(name)
        .into_iter()
        .flat_map(|r| r.values())
        .filter(|r| r.status == RunStatus::Success)
        .filter_map(|r| r.duration_ms().map(|x| x as f64))
        .collect();
    d.sort_by(f64::total_cmp);
    if d.is_empty() {
        return Histogram::default();
    }
    Histogram {
        p75: percentile(&d, 0.75),
        p95: percentile(&d, 0.95),
        p98: percentile(&d, 0.98),
        p99: percentile(&d, 0.99),
        median: percentile(&d, 0.5),
        mean: d.iter().sum::<f64>() / d.len() as f64,
        count: d.len(),
    }
}

/// Per-job series for `/metrics` (Prometheus text): finished runs by outcome (Chronos'
/// counters, kept across restarts), active runs, and the durations of the kept successful
/// runs as a summary. Job names are `[A-Za-z0-9_.-]`, so they need no label escaping.
pub fn prometheus(st: &Cluster) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP berth_job_runs_total Finished runs of each job, by outcome.\n# TYPE berth_job_runs_total counter"
    );
    for (n, r) in &st.jobs {
        let _ = writeln!(
            out,
            "berth_job_runs_total{{job=\"{n}\",outcome=\"success\"}} {}\nberth_job_runs_total{{job=\"{n}\",outcome=\"failure\"}} {}",
            r.job.success_count, r.job.error_count
        );
    }
    let _ = writeln!(
        out,
        "# HELP berth_job_runs_active Queued or running runs of each job.\n# TYPE berth_job_runs_active gauge"
    );
    for n in st.jobs.keys() {
        let active = st.job_runs.get(n).map_or(0, |runs| {
            runs.values().filter(|r| r.status.is_active()).count()
        });
        let _ = writeln!(out, "berth_job_runs_active{{job=\"{n}\"}} {active}");
    }
    let _ = writeln!(
        out,
        "# HELP berth_job_run_duration_seconds Durations of the kept successful runs of each job.\n# TYPE berth_job_run_duration_seconds summary"
    );
    for n in st.jobs.keys() {
        let h = histogram(st, n);
        for (q, v) in [("0.5", h.median), ("0.95", h.p95), ("0.99", h.p99)] {
            let _ = writeln!(
                out,
                "berth_job_run_duration_seconds{{job=\"{n}\",quantile=\"{q}\"}} {}",
                v / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "berth_job_run_duration_seconds_sum{{job=\"{n}\"}} {}\nberth_job_run_duration_seconds_count{{job=\"{n}\"}} {}",
            h.mean * h.count as f64 / 1000.0,
            h.count
        );
    }
    out
}

/// `GET /scheduler/job/stat/{name}`.
pub fn job_stat_json(st: &Cluster, name: &str) -> ApiResult<Value> {
    if !st.jobs.contains_key(name) {
        return Err(not_found(name));
    }
    let h = histogram(st, name);
    let history: Vec<Value> = st
        .job_runs
        .get(name)
        .into_iter()
        .flat_map(|r| r.values())
        .filter(|r| !r.status.is_active())
        .map(|r| {
            json!({
                "taskId": r.task_id.clone().unwrap_or_default(),
                "jobName": r.job,
                "slaveId": r.node.clone().unwrap_or_default(),
                "startTime": r.started_at.map(iso_ms).unwrap_or_default(),
                "endTime": r.ended_at.map(iso_ms).unwrap_or_default(),
                "duration": r.duration_ms().unwrap_or(0),
                "status": r.status,
            })
        })
        .collect();
    Ok(json!({
        "histogram": {
            "75thPercentile": h.p75,
            "95thPercentile": h.p95,
            "98thPercentile": h.p98,
            "99thPercentile": h.p99,
            "median": h.median,
            "mean": h.mean,
            "count": h.count,
        },
        "taskStatHistory": history,
    }))
}

/// `GET /scheduler/stats/{percentile}`: every job's value in seconds; `None` for an unknown
/// percentile name.
pub fn stats_json(st: &Cluster, which: &str) -> Option<Value> {
    let pick: fn(&Histogram) -> f64 = match which {
        "99thPercentile" => |h| h.p99,
        "98thPercentile" => |h| h.p98,
        "95thPercentile" => |h| h.p95,
        "75thPercentile" => |h| h.p75,
        "median" => |h| h.median,
        "mean" => |h| h.mean,
        _ => return None,
    };
    Some(Value::Array(
        st.jobs
            .keys()
            .map(|n| json!({"jobNameLabel": n, "time": pick(&histogram(st, n)) / 1000.0}))
            .collect(),
    ))
}

/// `success`, `failure` or `fresh` (never finished).
pub fn last_status(job: &Job) -> &'static str {
    match (job.last_success.is_empty(), job.last_error.is_empty()) {
        (true, true) => "fresh",
        (false, true) => "success",
        (true, false) => "failure",
        // Same format, so the strings order as the times do.
        (false, false) if job.last_success >= job.last_error => "success",
        (false, false) => "failure",
    }
}

/// `idle`, `queued` or `running`.
pub fn run_state(st: &Cluster, name: &str) -> &'static str {
    let runs = st.job_runs.get(name);
    let any = |s: RunStatus| runs.is_some_and(|r| r.values().any(|x| x.status == s));
    if any(RunStatus::Running) {
        "running"
    } else if any(RunStatus::Queued) {
        "queued"
    } else {
        "idle"
    }
}

pub fn summary_json(st: &Cluster) -> Value {
    let jobs: Vec<Value> = st
        .jobs
        .iter()
        .map(|(n, r)| {
            json!({
                "name": n,
                "status": last_status(&r.job),
                "state": run_state(st, n),
                "schedule": r.job.schedule,
                "parents": r.job.parents,
                "disabled": r.job.disabled,
            })
        })
        .collect();
    json!({ "jobs": jobs })
}

pub fn graph_csv(st: &Cluster) -> String {
    let mut out = String::new();
    for (n, r) in &st.jobs {
        out.push_str(&format!(
            "node,{n},{},{}\n",
            last_status(&r.job),
            run_state(st, n)
        ));
    }
    for (n, r) in &st.jobs {
        for p in &r.job.parents {
            out.push_str(&format!("link,{p},{n}\n"));
        }
    }
    out
}

pub fn graph_dot(st: &Cluster) -> String {
    let mut out = String::from("digraph G {\n");
    for (n, r) in &st.jobs {
        let color = match last_status(&r.job) {
            "success" => "green",
            "failure" => "red",
            _ => "gray",
        };
        out.push_str(&format!("  \"{n}\" [color={color}];\n"));
    }
    for (n, r) in &st.jobs {
        for p in &r.job.parents {
            out.push_str(&format!("  \"{p}\" -> \"{n}\";\n"));
        }
    }
    out.push_str("}\n");
    out
}

/// What `GET /scheduler/jobs/search` filters on.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub name: Option<String>,
    pub command: Option<String>,
    pub any: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// Case-insensitive substring search, in name order.
pub fn search<'a>(st: &'a Cluster, q: &Search) -> Vec<&'a Job> {
    let has = |hay: &str, needle: &Option<String>| {
        needle
            .as_ref()
            .is_none_or(|n| hay.to_lowercase().contains(&n.to_lowercase()))
    };
    st.jobs
        .values()
        .map(|r| &r.job)
        .filter(|j| has(&j.name, &q.name) && has(&j.command, &q.command))
        .filter(|j| {
            q.any.as_ref().is_none_or(|a| {
                let a = Some(a.clone());
                has(&j.name, &a)
                    || has(&j.command, &a)
                    || has(&j.description, &a)
                    || has(&j.owner, &a)
            })
        })
        .skip(q.offset)
        .take(q.limit)
        .collect()
}

#[cfg(test)]
mod tests;
