//! The Chronos job API at `/scheduler/*` (Chronos 2.x) and `/v1/scheduler/*` (3.x, what
//! chronos-python uses): definitions, manual runs, kills, statistics and the dependency
//! graph, over [`crate::jobs`]. Runs are recorded, not yet executed.
//!
//! Errors have Chronos' shape, `{"message": "...", "status": "Bad Request"}`: 400 for
//! anything wrong in the request (bad JSON, wrong types, invalid jobs), 413 for a body over
//! the limit, 404 for an unknown job. Successes without a body are 204 with an empty body
//! (chronos-python raises on any other empty 2xx).
//!
//! Scopes: a job's namespace is its name up to the first `.` (`prod.etl` -> `prod`), else
//! `default`; an app-admin changes only jobs in its namespaces.

use super::{Params, json_body, ok, ok_text};
use crate::Shared;
use crate::auth::{Caller, Principal};
use crate::error::ApiError;
use crate::jobs::{self, Search, UpsertKind};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use berth_core::rbac::Permission;
use serde_json::{Value, json};

/// An error in Chronos' shape.
#[derive(Debug)]
pub struct ChronosError(pub ApiError);

impl From<ApiError> for ChronosError {
    fn from(e: ApiError) -> Self {
        ChronosError(e)
    }
}

impl IntoResponse for ChronosError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = match &e {
            // Chronos answers 400 for every invalid job.
            ApiError::Invalid(_) | ApiError::Refused { .. } | ApiError::InvalidJson(_) => {
                StatusCode::BAD_REQUEST
            }
            other => other.status(),
        };
        let body = json!({
            "message": e.to_string(),
            "status": status.canonical_reason().unwrap_or("Error"),
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot be reused.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

type CResult = Result<Response, ChronosError>;

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The `{name}` of the path; a name that is not a valid job name cannot exist: 404.
fn job_name(p: Result<Path<String>, PathRejection>) -> Result<String, ChronosError> {
    let Path(name) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !berth_core::job::is_valid_job_name(&name) {
        return Err(ApiError::NotFound(format!("Job '{}' does not exist", name)).into());
    }
    Ok(name)
}

/// 403 unless the caller may change jobs in `name`'s namespace.
fn may_change(who: &Principal, name: &str) -> Result<(), ChronosError> {
    Ok(who.check_on(Permission::AppWrite, &jobs::scope_id(name))?)
}

fn now() -> i64 {
    berth_core::time::now_millis()
}

/// `GET /scheduler/jobs`: every job.
pub async fn list(State(s): State<Shared>) -> CResult {
    let st = s.state.read();
    let all: Vec<&berth_core::job::Job> = st.jobs.values().map(|r| &r.job).collect();
    Ok(ok(json!(all)))
}

fn usize_param(p: &Params, key: &str, default: usize) -> Result<usize, ChronosError> {
    match p.get(key) {
        None | Some("") => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            ApiError::BadRequest(format!(
                "query parameter '{key}' must be a non-negative integer, got '{}'",
                berth_core::validate::echo(v)
            ))
            .into()
        }),
    }
}

/// `GET /scheduler/jobs/search?name=&command=&any=&limit=10&offset=0`.
pub async fn search(State(s): State<Shared>, uri: Uri) -> CResult {
    let p = Params::from_uri(&uri);
    let text = |k: &str| p.get(k).filter(|v| !v.is_empty()).map(str::to_string);
    let q = Search {
        name: text("name"),
        command: text("command"),
        any: text("any"),
        limit: usize_param(&p, "limit", 10)?,
        offset: usize_param(&p, "offset", 0)?,
    };
    let st = s.state.read();
    Ok(ok(json!(jobs::search(&st, &q))))
}

/// `GET /scheduler/jobs/summary`.
pub async fn summary(State(s): State<Shared>) -> CResult {
    let st = s.state.read();
    Ok(ok(jobs::summary_json(&st)))
}

/// `GET /scheduler/job/{name}`.
pub async fn get(State(s): State<Shared>, p: Result<Path<String>, PathRejection>) -> CResult {
    let name = job_name(p)?;
    let st = s.state.read();
    let rec = st
        .jobs
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("Job '{name}' does not exist")))?;
    Ok(ok(json!(rec.job)))
}

/// `PUT /scheduler/job/{name}?arguments=a b`: queue a run now (204).
pub async fn run(
    State(s): State<Shared>,
    Caller(who): Caller,
    uri: Uri,
    p: Result<Path<String>, PathRejection>,
) -> CResult {
    let name = job_name(p)?;
    may_change(&who, &name)?;
    let params = Params::from_uri(&uri);
    let arguments = params
        .get("arguments")
        .map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    if let Some(a) = &arguments
        && a.len() > berth_core::validate::MAX_MAP_ENTRIES
    {
        return Err(ApiError::BadRequest("too many arguments".into()).into());
    }
    s.apply(|st, ch| jobs::run_now(st, ch, &name, arguments, now()))
        .await?;
    Ok(no_content())
}

/// `DELETE /scheduler/job/{name}` (204): children inherit its parents, or its schedule.
pub async fn delete(
    State(s): State<Shared>,
    Caller(who): Caller,
    p: Result<Path<String>, PathRejection>,
) -> CResult {
    let name = job_name(p)?;
    may_change(&who, &name)?;
    s.apply(|st, ch| jobs::delete(st, ch, &name)).await?;
    Ok(no_content())
}

/// `PUT /scheduler/job/success/{name}`: count a success and fire the dependents; 200
/// `true` as text.
pub async fn success(
    State(s): State<Shared>,
    Caller(who): Caller,
    p: Result<Path<String>, PathRejection>,
) -> CResult {
    let name = job_name(p)?;
    may_change(&who, &name)?;
    s.apply(|st, ch| jobs::mark_success(st, ch, &name, now()))
        .await?;
    Ok(ok_text("true".into()))
}

async fn upsert(s: Shared, who: Principal, body: Body, kind: UpsertKind) -> CResult {
    let v = json_body(&s, body).await?;
    if let Some(name) = v.get("name").and_then(Value::as_str)
        && berth_core::job::is_valid_job_name(name)
    {
        may_change(&who, name)?;
    }
    s.apply(|st, ch| jobs::upsert(st, ch, v, kind, now()))
        .await?;
    Ok(no_content())
}

/// `POST|PUT /scheduler/iso8601`: create or replace a scheduled job (204).
pub async fn iso8601(State(s): State<Shared>, Caller(who): Caller, body: Body) -> CResult {
    upsert(s, who, body, UpsertKind::Scheduled).await
}

/// `POST|PUT /scheduler/dependency`: create or replace a dependent job (204).
pub async fn dependency(State(s): State<Shared>, Caller(who): Caller, body: Body) -> CResult {
    upsert(s, who, body, UpsertKind::Dependent).await
}

/// `DELETE /scheduler/task/kill/{name}`: kill the job's queued and running runs (204).
pub async fn kill(
    State(s): State<Shared>,
    Caller(who): Caller,
    p: Result<Path<String>, PathRejection>,
) -> CResult {
    let name = job_name(p)?;
    may_change(&who, &name)?;
    s.apply(|st, ch| jobs::kill(st, ch, &name, now())).await?;
    Ok(no_content())
}

/// `GET /scheduler/job/stat/{name}`.
pub async fn job_stat(State(s): State<Shared>, p: Result<Path<String>, PathRejection>) -> CResult {
    let name = job_name(p)?;
    let st = s.state.read();
    Ok(ok(jobs::job_stat_json(&st, &name)?))
}

/// `GET /scheduler/stats/{percentile}`.
pub async fn stats(State(s): State<Shared>, p: Result<Path<String>, PathRejection>) -> CResult {
    let Path(which) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let st = s.state.read();
    jobs::stats_json(&st, &which).map(ok).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown statistic '{}': use 99thPercentile, 98thPercentile, 95thPercentile, \
             75thPercentile, median or mean",
            berth_core::validate::echo(&which)
        ))
        .into()
    })
}

/// `GET /scheduler/graph/csv`.
pub async fn graph_csv(State(s): State<Shared>) -> CResult {
    let st = s.state.read();
    Ok(ok_text(jobs::graph_csv(&st)))
}

/// `GET /scheduler/graph/dot`.
pub async fn graph_dot(State(s): State<Shared>) -> CResult {
    let st = s.state.read();
    Ok(ok_text(jobs::graph_dot(&st)))
}

/// `GET /scheduler/leader`.
pub async fn leader(State(s): State<Shared>) -> CResult {
    Ok(ok(json!({"leader": s.config.advertise})))
}
