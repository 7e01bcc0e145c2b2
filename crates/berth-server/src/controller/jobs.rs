//! The job controller (#14): one level-triggered reconciler for Chronos jobs. Each pass
//! compares what the jobs want (due schedules, queued runs, deadlines) with what the tasks
//! did, takes the next steps, and says when it must look again (like kube-runtime's
//! `Action::requeue`):
//!
//! 1. A schedule whose due time has come queues ONE run, however many due times passed
//!    since the last look (a server down for five periods runs the job once), and its
//!    progress (the rewritten ISO start, or the cron instant checked) is written in the same
//!    transaction as the run: after a crash either both happened or neither did.
//! 2. Queued runs are placed by the scheduler and become tasks (app id `job:<name>`). The
//!    task and the run's `running` mark are one write, and agents see a task only once it is
//!    durable: a run is never started twice, across restarts and failovers alike.
//! 3. A run past its `maxCompletionTime` is killed and counts as a failed attempt; a run
//!    whose node stayed unreachable for [`UNREACHABLE_GIVE_UP_MS`] too.
//! 4. When a run's task ends, the attempt's outcome is recorded; a failed attempt with
//!    retries left is queued again (`retries + 1` attempts in all).

use crate::Shared;
use crate::jobs::{self, RunOutcome, RunStatus};
use crate::state::{Changes, Cluster};
use berth_core::job::Trigger;
use berth_core::schedule::Schedule;
use berth_core::task::{Task, TaskState};
use jiff::Timestamp;
use std::time::Duration;

/// A run whose node has been unreachable this long is given up on (failed attempt).
pub const UNREACHABLE_GIVE_UP_MS: i64 = 5 * 60_000;

/// The longest the controller sleeps without being woken: the safety net of a level-
/// triggered loop (and the granularity of deadlines nobody announced).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Most runs launched in one pass (the rest go in the next, right after).
const MAX_LAUNCHES_PER_PASS: usize = 500;

pub async fn run(shared: Shared) {
    loop {
        let result = shared
            .apply(|st, ch| Ok(reconcile(st, ch, berth_core::time::now_millis())))
            .await;
        let sleep = match result {
            Ok(Requeue::Now) => Duration::ZERO,
            Ok(Requeue::At(at)) => {
                let wait = at - berth_core::time::now_millis();
                Duration::from_millis(wait.clamp(0, MAX_SLEEP.as_millis() as i64) as u64)
            }
            Ok(Requeue::Idle) => MAX_SLEEP,
            Err(e) => {
                tracing::warn!(error = %e, "job controller pass failed; retrying");
                Duration::from_millis(500)
            }
        };
        if sleep.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = shared.job_wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// When the controller must look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Work is left (launches beyond this pass's budget).
    Now,
    /// At this instant (epoch ms): the next due time or deadline.
    At(i64),
    /// Nothing is due: only a change wakes it (or the safety net).
    Idle,
}

impl Requeue {
    fn at(&mut self, t: i64) {
        *self = match *self {
            Requeue::Now => Requeue::Now,
            Requeue::At(x) => Requeue::At(x.min(t)),
            Requeue::Idle => Requeue::At(t),
        };
    }
}

/// One pass over every job.
pub fn reconcile(st: &mut Cluster, ch: &mut Changes, now: i64) -> Requeue {
    let mut next = Requeue::Idle;
    fire_due_schedules(st, ch, now, &mut next);
    let more = launch_queued(st, ch, now);
    // After launching, so a run started now has its deadline counted; a failed attempt it
    // re-queues is launched by the next pass (its change wakes the controller).
    enforce_deadlines(st, ch, now, &mut next);
    if more {
        next = Requeue::Now;
    }
    next
}

fn parse_schedule(job: &berth_core::job::Job, now: Timestamp) -> Option<Schedule> {
    let parsed = match job.trigger()? {
        Trigger::Schedule => Schedule::parse_iso_at(&job.schedule, &job.schedule_time_zone, now),
        Trigger::Cron => Schedule::parse_cron(
            job.cron.as_deref().unwrap_or_default(),
            &job.schedule_time_zone,
        ),
        Trigger::Parents => return None,
    };
    parsed
        .map_err(|e| tracing::error!(job = %job.name, error = %e, "stored schedule does not parse"))
        .ok()
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Queues a run of every enabled scheduled job that is due, and advances its schedule.
fn fire_due_schedules(st: &mut Cluster, ch: &mut Changes, now: i64, next: &mut Requeue) {
    let now_ts = ts(now);
    let due_jobs: Vec<(String, Schedule, berth_core::schedule::Due)> = st
        .jobs
        .iter()
        .filter(|(_, r)| !r.job.disabled)
        .filter_map(|(name, r)| {
            let s = parse_schedule(&r.job, now_ts)?;
            // Due times after `from` are the ones not handled yet.
            let from = match s.start() {
                Some(start) => start.as_millisecond() - 1,
                None => r.cron_checked_at.unwrap_or(now),
            };
            match s.due_between(ts(from), now_ts) {
                Some(due) => Some((name.clone(), s, due)),
                None => {
                    if let Some(t) = s.next_after(ts(from.max(now))) {
                        next.at(t.as_millisecond());
                    }
                    None
                }
            }
        })
        .collect();
    for (name, schedule, due) in due_jobs {
        let busy = jobs::has_active_run(st, &name);
        let Some(rec) = st.jobs.get_mut(&name) else {
            continue;
        };
        if schedule.is_cron() {
            rec.cron_checked_at = Some(now);
        } else {
            let after = schedule.after_run(due.latest);
            rec.job.schedule = after.to_string();
            if after.is_exhausted() {
                // Chronos: a schedule with no repetitions left disables its job.
                rec.job.disabled = true;
            }
        }
        let concurrent = rec.job.concurrent;
        ch.put(jobs::job_key(&name), &*rec);
        ch.jobs = true;
        if due.count > 1 {
            tracing::info!(job = %name, missed = due.count, "missed due times collapse into one run");
        }
        if busy && !concurrent {
            tracing::info!(job = %name, "skipping a due run: the previous one is still active (concurrent=false)");
            st.count("job_runs_skipped", 1);
        } else {
            jobs::queue_run(st, ch, &name, None, Some(due.latest.as_millisecond()), now);
        }
        if let Some(s) = st
            .jobs
            .get(&name)
            .filter(|r| !r.job.disabled)
            .and_then(|r| parse_schedule(&r.job, now_ts))
            && let Some(t) = s.next_after(now_ts)
        {
            next.at(t.as_millisecond());
        }
    }
}

/// Kills runs past their `maxCompletionTime`; gives up on runs whose task is gone or whose
/// node stayed unreachable.
fn enforce_deadlines(st: &mut Cluster, ch: &mut Changes, now: i64, next: &mut Requeue) {
    let mut overdue: Vec<(String, u64, String, String)> = Vec::new();
    for (name, runs) in &st.job_runs {
        let max_ms = st
            .jobs
            .get(name)
            .and_then(|r| r.job.max_completion_time)
            .filter(|s| *s > 0)
            .map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
        for r in runs.values().filter(|r| r.status == RunStatus::Running) {
            let Some(task_id) = r.task_id.clone() else {
                continue;
            };
            let task = st.tasks.get(&task_id);
            let why = match (task, max_ms, r.started_at) {
                (None, _, _) => Some("its task no longer exists".to_string()),
                (Some(t), _, _)
                    if t.state == TaskState::Unreachable
                        && now - t.updated_at >= UNREACHABLE_GIVE_UP_MS =>
                {
                    Some(format!(
                        "its node {} was unreachable for {} s",
                        t.node_id,
                        UNREACHABLE_GIVE_UP_MS / 1000
                    ))
                }
                (Some(_), Some(max), Some(started)) if now - started >= max => Some(format!(
                    "killed: it ran longer than maxCompletionTime ({} s)",
                    max / 1000
                )),
                (Some(_), Some(max), Some(started)) => {
                    next.at(started.saturating_add(max));
                    None
                }
                _ => None,
            };
            if let Some(why) = why {
                overdue.push((name.clone(), r.id, task_id, why));
            }
        }
    }
    for (name, id, task_id, why) in overdue {
        jobs::kill_task(st, ch, &task_id);
        if st
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.state == TaskState::Unreachable)
        {
            // Its agent cannot be told: forget it (if the node returns, its agent stops
            // what the server no longer lists).
            st.remove_task(&task_id, ch);
        }
        attempt_failed(st, ch, &name, id, None, why, now);
    }
}

/// Launches queued runs (oldest first) as tasks. Returns whether some are left for the next
/// pass because of the per-pass budget.
fn launch_queued(st: &mut Cluster, ch: &mut Changes, now: i64) -> bool {
    let queued = jobs::queued_runs(st);
    let more = queued.len() > MAX_LAUNCHES_PER_PASS;
    for (name, id) in queued.into_iter().take(MAX_LAUNCHES_PER_PASS) {
        launch_run(st, ch, &name, id, now);
    }
    more
}

/// The version a run's task carries: the run, so the agent's definition is the run's.
pub fn run_version(id: u64) -> String {
    format!("run-{id}")
}

/// The definition the task of run `version` (`run-<id>`) of `job` executes, rebuilt from the
/// stored job (nothing about it needs storing on its own).
pub fn run_definition(
    st: &Cluster,
    job: &str,
    version: &str,
) -> Option<berth_core::app::AppDefinition> {
    let rec = st.jobs.get(job)?;
    let id: u64 = version.strip_prefix("run-")?.parse().ok()?;
    let arguments = st
        .job_runs
        .get(job)
        .and_then(|runs| runs.get(&id))
        .and_then(|r| r.arguments.as_deref());
    Some(rec.job.run_definition(version, arguments))
}

fn launch_run(st: &mut Cluster, ch: &mut Changes, name: &str, id: u64, now: i64) {
    let version = run_version(id);
    let Some(def) = run_definition(st, name, &version) else {
        return;
    };
    let mut req = super::placement_request(&def);
    req.namespace = jobs::job_namespace(name).to_string();
    let task_id = format!("{name}.run-{id}.{}", uuid::Uuid::new_v4().simple());
    let (placed, unplaced) = st
        .scheduler
        .place_many(std::slice::from_ref(&task_id), &req);
    match placed.into_iter().next() {
        Some((task_id, p)) => {
            let t = super::placed_task(st, task_id.clone(), &def, &version, &req, p, now);
            let node = t.node_id.clone();
            ch.event(super::status_event(&t, None));
            st.insert_new_task(t, ch);
            if let Err(e) = jobs::mark_run_started(st, ch, name, id, &node, &task_id, now) {
                tracing::error!(job = name, run = id, error = %e, "marking a launched run");
            }
            st.count("job_runs_launched", 1);
        }
        None => {
            let why = unplaced
                .map(|u| format!("waiting for room: {}", u.summary()))
                .unwrap_or_else(|| "waiting for room".into());
            if let Some(run) = st.job_runs.get_mut(name).and_then(|r| r.get_mut(&id))
                && run.message.as_deref() != Some(why.as_str())
            {
                run.message = Some(why);
                ch.put(jobs::run_key(name, id), &*run);
            }
        }
    }
}

/// A failed attempt of a running run: queued again while retries are left, else recorded.
fn attempt_failed(
    st: &mut Cluster,
    ch: &mut Changes,
    name: &str,
    id: u64,
    exit_code: Option<i32>,
    why: String,
    now: i64,
) {
    let retries = st
        .jobs
        .get(name)
        .map(|r| r.job.retries.max(0) as u64)
        .unwrap_or(0);
    let Some(run) = st.job_runs.get_mut(name).and_then(|r| r.get_mut(&id)) else {
        return;
    };
    if run.status != RunStatus::Running {
        return;
    }
    if u64::from(run.attempts) <= retries {
        run.status = RunStatus::Queued;
        run.exit_code = exit_code;
        run.message = Some(format!(
            "attempt {} of {} failed: {why}",
            run.attempts,
            retries + 1
        ));
        ch.put(jobs::run_key(name, id), &*run);
        ch.jobs = true;
        st.count("job_runs_retried", 1);
        return;
    }
    let outcome = RunOutcome {
        success: false,
        exit_code,
        message: Some(why),
        ended_at: now,
    };
    if let Err(e) = jobs::record_run_outcome(st, ch, name, id, outcome) {
        tracing::error!(job = name, run = id, error = %e, "recording a run's failure");
    }
}

/// A run's task ended (reported by its agent, or lost): records the attempt. A task whose
/// run already ended (killed, timed out) or moved on to another attempt changes nothing.
pub fn run_task_ended(st: &mut Cluster, ch: &mut Changes, job: &str, t: &Task, now: i64) {
    let Some(run) = st.job_runs.get_mut(job).and_then(|runs| {
        runs.values_mut()
            .find(|r| r.status == RunStatus::Running && r.task_id.as_deref() == Some(&t.id))
    }) else {
        return;
    };
    let id = run.id;
    if run.running_at.is_none() {
        run.running_at = t.started_at;
    }
    let success = t.state == TaskState::Finished && t.exit_code.unwrap_or(0) == 0;
    if success {
        let outcome = RunOutcome {
            success: true,
            exit_code: t.exit_code.or(Some(0)),
            message: None,
            ended_at: now,
        };
        if let Err(e) = jobs::record_run_outcome(st, ch, job, id, outcome) {
            tracing::error!(job, run = id, error = %e, "recording a run's success");
        }
        return;
    }
    let why = match (t.exit_code, &t.message) {
        (Some(code), Some(m)) if !m.is_empty() => {
            format!("{} with exit code {code}: {m}", t.state.as_str())
        }
        (Some(code), _) => format!("{} with exit code {code}", t.state.as_str()),
        (None, Some(m)) if !m.is_empty() => format!("{}: {m}", t.state.as_str()),
        (None, _) => t.state.as_str().to_string(),
    };
    attempt_failed(st, ch, job, id, t.exit_code, why, now);
}

#[cfg(test)]
mod tests;
