//! `/v2/tasks`: list every task, kill many.

use super::{Params, ctx, json_body, ok, ok_text, wants_plain_text};
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::ops;
use crate::render::{push_endpoints_text, task_json, visible_state};
use crate::state::Cluster;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use berth_core::task::TaskState;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// `GET /v2/tasks`: JSON, or with `Accept: text/plain` Marathon's script-friendly list of
/// every app's running tasks (which ignores `status`, as Marathon's does).
pub async fn list(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let wanted: Vec<TaskState> = p
        .all("status")
        .iter()
        .map(|v| match v.to_ascii_lowercase().as_str() {
            "running" => Ok(TaskState::Running),
            "staging" => Ok(TaskState::Staging),
            other => Err(ApiError::BadRequest(format!(
                "status must be running or staging, got '{other}'"
            ))),
        })
        .collect::<Result<_, _>>()?;
    if wants_plain_text(&headers) {
        let st = s.state.read();
        let mut apps: Vec<_> = st.apps.values().collect();
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        let mut out = String::new();
        for app in apps {
            let tasks = sorted_app_tasks(&st, &app.id);
            push_endpoints_text(&mut out, app, &tasks);
        }
        return Ok(ok_text(out));
    }
    let st = s.state.read();
    let mut tasks: Vec<_> = st
        .tasks
        .values()
        // Job runs are Chronos' (`/api/v1/jobs/{name}/runs`), not Marathon's tasks.
        .filter(|t| berth_core::job::run::job_of_app_id(&t.app_id).is_none())
        .filter(|t| {
            wanted.is_empty()
                || wanted.iter().any(|w| match w {
                    TaskState::Staging => {
                        matches!(visible_state(t), TaskState::Staging | TaskState::Starting)
                    }
                    other => visible_state(t) == *other,
                })
        })
        .collect();
    tasks.sort_by(|a, b| {
        a.app_id
            .cmp(&b.app_id)
            .then(a.staged_at.cmp(&b.staged_at))
            .then(a.id.cmp(&b.id))
    });
    let out: Vec<Value> = tasks
        .into_iter()
        .map(|t| task_json(t, st.apps.get(&t.app_id).map(|a| a.as_ref())))
        .collect();
    Ok(ok(json!({"tasks": out})))
}

pub async fn delete_many(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    body: Body,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let scale = p.flag("scale", false)?;
    let force = p.flag("force", false)?;
    let _wipe = p.flag("wipe", false)?;
    let v = json_body(&s, body).await?;
    let Some(ids) = v.get("ids").and_then(Value::as_array) else {
        return Err(ApiError::invalid("/ids", "expected {\"ids\": [task ids]}"));
    };
    let mut task_ids = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        match id.as_str() {
            Some(s) => task_ids.push(s.to_string()),
            None => {
                return Err(ApiError::invalid(
                    &format!("/ids({i})"),
                    "task ids must be strings",
                ));
            }
        }
    }
    let c = ctx(&addr, &uri, &caller);
    let r = s
        .apply(|st, ch| ops::kill_tasks(st, ch, &task_ids, scale, force, &c))
        .await?;
    if let Some(d) = r.deployment {
        return Ok(ok(d.to_json()));
    }
    let st = s.state.read();
    Ok(ok(
        json!({"tasks": r.tasks.iter().map(|t| task_json(t, st.apps.get(&t.app_id).map(|a| a.as_ref()))).collect::<Vec<_>>()}),
    ))
}

/// An app's tasks, oldest first.
pub fn sorted_app_tasks<'a>(st: &'a Cluster, app_id: &str) -> Vec<&'a berth_core::task::Task> {
    let mut tasks: Vec<_> = st.app_tasks(app_id).collect();
    tasks.sort_by(|a, b| a.staged_at.cmp(&b.staged_at).then(a.id.cmp(&b.id)));
    tasks
}
