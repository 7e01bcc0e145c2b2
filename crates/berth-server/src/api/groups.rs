//! `/v2/groups`: the tree of apps by id, created and removed as a unit, and `scaleBy`.

use super::{Params, ctx, json_body, ok};
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::ops;
use crate::render::{Embed, group_json};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use berth_core::path;
use serde_json::Value;
use std::net::SocketAddr;

fn group_id(rest: &str) -> String {
    let trimmed = rest.trim_end_matches("/versions");
    path::normalize(trimmed)
}

pub async fn root(State(s): State<Shared>, uri: Uri) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let embed = Embed::from_params(&p.all("embed"), false);
    let st = s.state.read();
    Ok(ok(group_json(&st, "/", embed)))
}

pub async fn get(
    State(s): State<Shared>,
    uri: Uri,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let embed = Embed::from_params(&p.all("embed"), false);
    let id = group_id(&rest);
    let st = s.state.read();
    if !ops::group_exists(&st, &id) {
        return Err(ApiError::NotFound(format!("Group '{id}' does not exist")));
    }
    if rest.trim_end_matches('/').ends_with("/versions") || rest == "versions" {
        let j = group_json(&st, &id, embed);
        return Ok(ok(serde_json::json!([j["version"]])));
    }
    Ok(ok(group_json(&st, &id, embed)))
}

async fn create_with(
    s: Shared,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    parent: &str,
    body: Body,
) -> ApiResult<Response> {
    let mut v = json_body(&s, body).await?;
    if let Some(id) = v.get("id").and_then(Value::as_str)
        && !id.starts_with('/')
    {
        v["id"] = Value::String(path::normalize(&format!("{parent}/{id}")));
    }
    let c = ctx(&addr, &uri, &caller);
    let r = s.apply(|st, ch| ops::create_group(st, ch, v, &c)).await?;
    Ok((StatusCode::CREATED, axum::Json(r.to_json())).into_response())
}

pub async fn create(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    body: Body,
) -> ApiResult<Response> {
    create_with(s, addr, caller, uri, "/", body).await
}

pub async fn create_under(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let parent = group_id(&rest);
    create_with(s, addr, caller, uri, &parent, body).await
}

pub async fn put(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let force = p.flag("force", false)?;
    let id = group_id(&rest);
    let v = json_body(&s, body).await?;
    let c = ctx(&addr, &uri, &caller);
    if let Some(f) = v.get("scaleBy") {
        let Some(factor) = f.as_f64() else {
            return Err(ApiError::invalid("/scaleBy", "scaleBy must be a number"));
        };
        let r = s
            .apply(|st, ch| ops::scale_group(st, ch, &id, factor, force, &c))
            .await?;
        return Ok(ok(r.to_json()));
    }
    if let Some(apps) = v.get("apps").and_then(Value::as_array) {
        // Upsert every app of the group, relative ids resolved against it.
        let mut items = Vec::new();
        for a in apps {
            let mut a = a.clone();
            if let Some(aid) = a.get("id").and_then(Value::as_str)
                && !aid.starts_with('/')
            {
                a["id"] = Value::String(path::normalize(&format!("{id}/{aid}")));
            }
            items.push(a);
        }
        let r = s
            .apply(|st, ch| ops::put_apps(st, ch, items, false, force, &c))
            .await?;
        return Ok(ok(r.to_json()));
    }
    Err(ApiError::invalid(
        "/",
        "a group update needs 'scaleBy' or 'apps'",
    ))
}

pub async fn delete(
    State(s): State<Shared>,
    crate::auth::Caller(who): crate::auth::Caller,
    uri: Uri,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let force = Params::from_uri(&uri).flag("force", false)?;
    let id = group_id(&rest);
    who.check_on(berth_core::rbac::Permission::AppWrite, &id)?;
    let r = s
        .apply(|st, ch| ops::delete_group(st, ch, &id, force))
        .await?;
    Ok(ok(r.to_json()))
}
