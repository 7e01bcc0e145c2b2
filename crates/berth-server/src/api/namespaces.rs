//! `/api/v1/namespaces`: namespaces (the first segment of app ids) with their quota, node
//! selector, dedication and policy, and what their apps use.

use super::{json_body, ok};
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::tenancy;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub async fn list(State(s): State<Shared>) -> ApiResult<Response> {
    let st = s.state.read();
    Ok(ok(tenancy::namespaces_json(&st)))
}

pub async fn get(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let st = s.state.read();
    tenancy::namespace_json(&st, &id)
        .map(ok)
        .ok_or_else(|| ApiError::NotFound(format!("namespace '{id}' does not exist")))
}

pub async fn put(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let v = json_body(&s, body).await?;
    let ns = berth_core::namespace::namespace_from_json(&id, v, &s.config.tasks.default_policy)?;
    let created = s
        .apply(|st, ch| Ok(tenancy::put_namespace(st, ch, ns)))
        .await?;
    let body = {
        let st = s.state.read();
        tenancy::namespace_json(&st, &id).unwrap_or_default()
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(body)).into_response())
}

pub async fn delete(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    s.apply(|st, ch| tenancy::delete_namespace(st, ch, &id))
        .await?;
    Ok(ok(serde_json::json!({"id": id, "deleted": true})))
}
