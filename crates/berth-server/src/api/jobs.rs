//! Berth's job API (`/api/v1/jobs`): what Chronos never showed: each run's history (node,
//! task, attempts, exit code, timings) and its logs.

use super::ok;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{self, JobRun};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use berth_core::rbac::Permission;
use serde_json::{Value, json};

fn run_json(r: &JobRun) -> Value {
    let iso = |t: Option<i64>| t.map(jobs::iso_ms);
    json!({
        "id": r.id,
        "job": r.job,
        "status": r.status,
        "attempts": r.attempts,
        "queuedAt": iso(Some(r.queued_at)),
        "scheduledFor": iso(r.scheduled_for),
        "startedAt": iso(r.started_at),
        "runningAt": iso(r.running_at),
        "endedAt": iso(r.ended_at),
        "durationMs": r.duration_ms(),
        "node": r.node,
        "taskId": r.task_id,
        "exitCode": r.exit_code,
        "message": r.message,
        "arguments": r.arguments,
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("job '{name}' does not exist"))
}

fn job_name(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Path(name) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !berth_core::job::is_valid_job_name(&name) {
        return Err(not_found(&name));
    }
    Ok(name)
}

/// `GET /api/v1/jobs/{name}/runs`: the job's kept runs, newest first.
pub async fn runs(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = job_name(p)?;
    let st = s.state.read();
    if !st.jobs.contains_key(&name) {
        return Err(not_found(&name));
    }
    let runs: Vec<Value> = st
        .job_runs
        .get(&name)
        .into_iter()
        .flat_map(|r| r.values().rev())
        .map(run_json)
        .collect();
    Ok(ok(json!({ "job": name, "runs": runs })))
}

/// `GET /api/v1/jobs/{name}/runs/{id}/logs`: the run's (latest attempt's) output, from the
/// agent of the node it ran on; the same query as task logs (`stream`, `tail`, `follow`).
pub async fn run_logs(
    State(s): State<Shared>,
    crate::auth::Caller(who): crate::auth::Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
) -> Response {
    match run_logs_target(&s, &who, p) {
        Ok((base, node, task)) => super::logs::proxy_logs(&s, &base, &node, &task, &uri).await,
        Err(e) => e.into_response(),
    }
}

fn run_logs_target(
    s: &Shared,
    who: &crate::auth::Principal,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<(String, String, String)> {
    let Path((name, id)) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !berth_core::job::is_valid_job_name(&name) {
        return Err(not_found(&name));
    }
    who.check_on(Permission::ReadLogs, &jobs::scope_id(&name))?;
    let id: u64 = id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "run id '{}' is not a number",
            berth_core::validate::echo(&id)
        ))
    })?;
    let st = s.state.read();
    if !st.jobs.contains_key(&name) {
        return Err(not_found(&name));
    }
    let run = st
        .job_runs
        .get(&name)
        .and_then(|r| r.get(&id))
        .ok_or_else(|| ApiError::NotFound(format!("run {id} of job '{name}' does not exist")))?;
    let (Some(node), Some(task)) = (run.node.clone(), run.task_id.clone()) else {
        return Err(ApiError::NotFound(format!(
            "run {id} of job '{name}' has no logs: it has not started"
        )));
    };
    let base = super::logs::agent_base(&st, &node, &task)?;
    Ok((base, node, task))
}
