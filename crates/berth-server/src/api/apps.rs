//! `/v2/apps`: create, list, get, update (PUT/PATCH, partial, bulk), delete, restart,
//! rollback, versions, and the app's tasks.

use super::{Params, ctx, json_body, ok};
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::ops::{self, AppUpdate};
use crate::render::{AppSnapshot, Embed, app_json, push_endpoints_text, task_json};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use berth_core::path;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// What the part of the path after `/v2/apps/` addresses.
enum Target {
    App(String),
    Restart(String),
    Tasks(String),
    Task(String, String),
    Versions(String),
    Version(String, String),
}

fn parse_target(rest: &str) -> Target {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    let id = |k: usize| path::normalize(&segs[..k].join("/"));
    if n >= 2 {
        match segs[n - 1] {
            "restart" => return Target::Restart(id(n - 1)),
            "tasks" => return Target::Tasks(id(n - 1)),
            "versions" => return Target::Versions(id(n - 1)),
            _ => {}
        }
    }
    if n >= 3 {
        match segs[n - 2] {
            "tasks" => return Target::Task(id(n - 2), segs[n - 1].to_string()),
            "versions" => return Target::Version(id(n - 2), segs[n - 1].to_string()),
            _ => {}
        }
    }
    Target::App(path::normalize(rest))
}

/// Label selector: comma-separated `k==v`, `k!=v`, `k` (exists), `!k` (absent).
fn label_matches(selector: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("==") {
                labels.get(k.trim()).map(|x| x == v.trim()).unwrap_or(false)
            } else if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).map(|x| x != v.trim()).unwrap_or(true)
            } else if let Some(k) = term.strip_prefix('!') {
                !labels.contains_key(k.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

pub async fn list(State(s): State<Shared>, uri: Uri) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let embed = Embed::from_params(&p.all("embed"), false);
    let cmd = p.get("cmd").map(str::to_string);
    let id = p.get("id").map(str::to_string);
    let label = p.get("label").map(str::to_string);
    // Embedded tasks carry health-check timestamps that change without a new revision:
    // only renderings without them are cached.
    let cache_key = (!embed.tasks).then(|| uri.query().unwrap_or("").to_string());
    let arrived_at = s.state.read().revision;
    if let Some(key) = &cache_key
        && let Some(body) = s.render_cache.get(arrived_at, key)
    {
        return Ok(json_bytes(body));
    }
    // One rendering at a time: when a change invalidates the cache, concurrent clients wait
    // for the first one's rendering instead of all rendering the same thing. A rendering
    // made after this request arrived shows everything the request could expect.
    let _gate = match cache_key {
        Some(_) => Some(s.render_cache.gate.lock().await),
        None => None,
    };
    if let Some(key) = &cache_key
        && let Some(body) = s.render_cache.get(arrived_at, key)
    {
        return Ok(json_bytes(body));
    }
    let (revision, snapshots) = {
        let st = s.state.read();
        let counts = crate::render::counts_by_app(&st);
        let mut deployments = crate::render::deployments_by_app(&st);
        let snapshots: Vec<AppSnapshot> = st
            .apps
            .values()
            .filter(|a| {
                cmd.as_deref()
                    .is_none_or(|c| a.cmd.as_deref().unwrap_or("").contains(c))
            })
            .filter(|a| id.as_deref().is_none_or(|i| a.id.contains(i)))
            .filter(|a| label.as_deref().is_none_or(|l| label_matches(l, &a.labels)))
            .map(|a| {
                let c = counts.get(a.id.as_str()).copied().unwrap_or_default();
                let d = deployments.remove(a.id.as_str()).unwrap_or_default();
                AppSnapshot::take(&st, a, embed, Some(c), Some(d))
            })
            .collect();
        (st.revision, snapshots)
    };
    // Encoding happens without the lock.
    let views: Vec<_> = snapshots.iter().map(AppSnapshot::view).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "apps": views }))
        .map(bytes::Bytes::from)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if let Some(key) = cache_key {
        s.render_cache.put(revision, key, body.clone());
    }
    Ok(json_bytes(body))
}

fn json_bytes(body: bytes::Bytes) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn created(app_id: &str, body: Value, deployment_id: &str) -> Response {
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/apps{app_id}")) {
        resp.headers_mut().insert("Location", v);
    }
    if let Ok(v) = HeaderValue::from_str(deployment_id) {
        resp.headers_mut().insert("Marathon-Deployment-Id", v);
    }
    resp
}

pub async fn create(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    body: Body,
) -> ApiResult<Response> {
    let v = json_body(&s, body).await?;
    let app = berth_core::validate::app_from_json(v)?;
    let c = ctx(&addr, &uri, &caller);
    let (app, r) = s.apply(|st, ch| ops::create_app(st, ch, app, &c)).await?;
    let body = {
        let st = s.state.read();
        let mut j = app_json(&st, &app, Embed::default());
        j["deployments"] = json!([{"id": r.deployment_id}]);
        j["tasks"] = json!([]);
        j
    };
    Ok(created(&app.id, body, &r.deployment_id))
}

fn deployment_response(status: StatusCode, r: &ops::DeploymentRef) -> Response {
    let mut resp = (status, axum::Json(r.to_json())).into_response();
    if let Ok(v) = HeaderValue::from_str(&r.deployment_id) {
        resp.headers_mut().insert("Marathon-Deployment-Id", v);
    }
    resp
}

pub async fn put_many(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    body: Body,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let force = p.flag("force", false)?;
    let partial = p.flag("partialUpdate", true)?;
    let v = json_body(&s, body).await?;
    let Value::Array(items) = v else {
        return Err(ApiError::invalid("/", "expected a JSON array of apps"));
    };
    let c = ctx(&addr, &uri, &caller);
    let r = s
        .apply(|st, ch| ops::put_apps(st, ch, items, partial, force, &c))
        .await?;
    Ok(deployment_response(StatusCode::OK, &r))
}

async fn update(
    s: Shared,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    rest: String,
    body: Body,
    patch: bool,
) -> ApiResult<Response> {
    let Target::App(id) = parse_target(&rest) else {
        return Err(ApiError::NotFound(format!(
            "no such resource: {}",
            uri.path()
        )));
    };
    let p = Params::from_uri(&uri);
    let force = p.flag("force", false)?;
    let partial = patch || p.flag("partialUpdate", true)?;
    let v = json_body(&s, body).await?;
    let update = AppUpdate::parse(v)?;
    if patch && !s.state.read().apps.contains_key(&id) {
        return Err(ApiError::app_not_found(&id));
    }
    if let Err(e) = path::check_id(&id) {
        return Err(ApiError::invalid("/id", e));
    }
    let c = ctx(&addr, &uri, &caller);
    let (was_created, r) = s
        .apply(|st, ch| ops::put_app(st, ch, &id, update, partial, force, &c))
        .await?;
    Ok(deployment_response(
        if was_created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &r,
    ))
}

pub async fn put_one(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    update(s, addr, caller, uri, rest, body, false).await
}

pub async fn patch_one(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    update(s, addr, caller, uri, rest, body, true).await
}

pub async fn get_sub(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    if let Target::App(id) = parse_target(&rest) {
        let embed = Embed::from_params(&p.all("embed"), true);
        let query = uri.query().unwrap_or("").to_string();
        let (snapshot, stamp) = {
            let st = s.state.read();
            let app = st
                .apps
                .get(&id)
                .ok_or_else(|| ApiError::app_not_found(&id))?;
            // Health-check results carry timestamps that change without a new revision:
            // apps with health checks are always rendered afresh.
            let stamp = app.health_checks.is_empty().then(|| st.app_stamp(&id));
            if let Some(stamp) = stamp
                && let Some(body) = s.app_cache.get(&id, &query, stamp)
            {
                return Ok(json_bytes(body));
            }
            (AppSnapshot::take(&st, app, embed, None, None), stamp)
        };
        // Encoding happens without the lock.
        let body: bytes::Bytes = serde_json::to_vec(&serde_json::json!({ "app": snapshot.view() }))
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .into();
        if let Some(stamp) = stamp {
            s.app_cache.put(id, query, stamp, body.clone());
        }
        return Ok(json_bytes(body));
    }
    let st = s.state.read();
    match parse_target(&rest) {
        Target::App(_) => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            uri.path()
        ))),
        Target::Tasks(id) => {
            let app = st
                .apps
                .get(&id)
                .ok_or_else(|| ApiError::app_not_found(&id))?;
            let tasks = super::tasks::sorted_app_tasks(&st, &id);
            if super::wants_plain_text(&headers) {
                let mut out = String::new();
                push_endpoints_text(&mut out, app, &tasks);
                return Ok(super::ok_text(out));
            }
            Ok(ok(
                json!({"tasks": tasks.into_iter().map(|t| task_json(t, Some(app))).collect::<Vec<_>>()}),
            ))
        }
        Target::Versions(id) => {
            if !st.apps.contains_key(&id) {
                return Err(ApiError::app_not_found(&id));
            }
            let mut versions: Vec<&String> = st
                .versions
                .get(&id)
                .map(|v| v.keys().collect())
                .unwrap_or_default();
            versions.reverse();
            Ok(ok(json!({"versions": versions})))
        }
        Target::Version(id, v) => {
            let def = st
                .versions
                .get(&id)
                .and_then(|m| m.get(&v))
                .ok_or_else(|| {
                    ApiError::NotFound(format!("App '{id}' does not exist in version {v}"))
                })?;
            Ok(ok(serde_json::to_value(def.as_ref()).unwrap_or(Value::Null)))
        }
        Target::Restart(_) | Target::Task(..) => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            uri.path()
        ))),
    }
}

pub async fn post_sub(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let Target::Restart(id) = parse_target(&rest) else {
        return Err(ApiError::NotFound(format!(
            "no such resource: POST {}",
            uri.path()
        )));
    };
    let force = Params::from_uri(&uri).flag("force", false)?;
    let c = ctx(&addr, &uri, &caller);
    let r = s
        .apply(|st, ch| ops::restart_app(st, ch, &id, force, &c))
        .await?;
    Ok(deployment_response(StatusCode::OK, &r))
}

pub async fn delete_sub(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let force = p.flag("force", false)?;
    let scale = p.flag("scale", false)?;
    let _wipe = p.flag("wipe", false)?;
    let c = ctx(&addr, &uri, &caller);
    match parse_target(&rest) {
        Target::App(id) => {
            c.may_change(&id)?;
            let r = s
                .apply(|st, ch| ops::delete_app(st, ch, &id, force))
                .await?;
            Ok(deployment_response(StatusCode::OK, &r))
        }
        Target::Task(app_id, task_id) => {
            let r = s
                .apply(|st, ch| {
                    if !st.apps.contains_key(&app_id) {
                        return Err(ApiError::app_not_found(&app_id));
                    }
                    match st.tasks.get(&task_id) {
                        Some(t) if t.app_id == app_id => {}
                        _ => {
                            return Err(ApiError::NotFound(format!(
                                "Task '{task_id}' does not exist"
                            )));
                        }
                    }
                    ops::kill_tasks(st, ch, std::slice::from_ref(&task_id), scale, force, &c)
                })
                .await?;
            if let Some(d) = r.deployment {
                return Ok(deployment_response(StatusCode::OK, &d));
            }
            let st = s.state.read();
            let app = st.apps.get(&app_id);
            let task = r
                .tasks
                .first()
                .map(|t| task_json(t, app.map(|a| a.as_ref())))
                .unwrap_or(Value::Null);
            Ok(ok(json!({"task": task})))
        }
        Target::Tasks(app_id) => {
            let host = p.get("host").map(str::to_string);
            let r = s
                .apply(|st, ch| {
                    if !st.apps.contains_key(&app_id) {
                        return Err(ApiError::app_not_found(&app_id));
                    }
                    let ids: Vec<String> = st
                        .app_tasks(&app_id)
                        .filter(|t| host.as_deref().is_none_or(|h| t.host == h))
                        .map(|t| t.id.clone())
                        .collect();
                    ops::kill_tasks(st, ch, &ids, scale, force, &c)
                })
                .await?;
            if let Some(d) = r.deployment {
                return Ok(deployment_response(StatusCode::OK, &d));
            }
            let st = s.state.read();
            let app = st.apps.get(&app_id);
            Ok(ok(
                json!({"tasks": r.tasks.iter().map(|t| task_json(t, app.map(|a| a.as_ref()))).collect::<Vec<_>>()}),
            ))
        }
        Target::Restart(_) | Target::Versions(_) | Target::Version(..) => Err(ApiError::NotFound(
            format!("no such resource: DELETE {}", uri.path()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_the_end() {
        assert!(matches!(parse_target("a/b"), Target::App(id) if id == "/a/b"));
        assert!(matches!(parse_target("/a/restart"), Target::Restart(id) if id == "/a"));
        assert!(matches!(parse_target("a/tasks"), Target::Tasks(id) if id == "/a"));
        assert!(
            matches!(parse_target("a/b/tasks/a_b.1"), Target::Task(id, t) if id == "/a/b" && t == "a_b.1")
        );
        assert!(
            matches!(parse_target("a/versions/v1"), Target::Version(id, v) if id == "/a" && v == "v1")
        );
    }

    #[test]
    fn label_selectors() {
        let labels = std::collections::BTreeMap::from([("env".to_string(), "prod".to_string())]);
        assert!(label_matches("env==prod", &labels));
        assert!(!label_matches("env==dev", &labels));
        assert!(label_matches("env!=dev", &labels));
        assert!(label_matches("env", &labels));
        assert!(label_matches("!team", &labels));
        assert!(!label_matches("env,team", &labels));
    }
}
