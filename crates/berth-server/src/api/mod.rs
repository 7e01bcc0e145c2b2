//! HTTP: the Marathon v2 API, Berth's own `/api/v1`, and the agent protocol. Handlers only
//! parse requests and render responses; changes go through [`crate::ops`].

mod agent;
mod apps;
mod berth;
mod events;
mod groups;
mod logs;
mod system;
mod tasks;

use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::ops::RequestCtx;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/ping", get(system::ping))
        .route("/metrics", get(system::metrics))
        .route("/v2/info", get(system::info))
        .route("/v2/leader", get(system::leader).delete(system::abdicate))
        .route("/v2/queue", get(system::queue))
        .route("/v2/queue/{*rest}", delete(system::reset_delay))
        .route("/v2/events", get(events::stream))
        .route(
            "/v2/apps",
            get(apps::list).post(apps::create).put(apps::put_many),
        )
        .route(
            "/v2/apps/{*rest}",
            get(apps::get_sub)
                .put(apps::put_one)
                .patch(apps::patch_one)
                .delete(apps::delete_sub)
                .post(apps::post_sub),
        )
        .route("/v2/tasks", get(tasks::list))
        .route("/v2/tasks/delete", post(tasks::delete_many))
        .route("/v2/groups", get(groups::root).post(groups::create))
        .route(
            "/v2/groups/{*rest}",
            get(groups::get)
                .put(groups::put)
                .delete(groups::delete)
                .post(groups::create_under),
        )
        .route("/v2/deployments", get(system::deployments))
        .route("/v2/deployments/{id}", delete(system::cancel_deployment))
        .route("/api/v1/agent/register", post(agent::register))
        .route("/api/v1/agent/{node}/assignments", get(agent::assignments))
        .route("/api/v1/agent/{node}/status", post(agent::status))
        .route("/api/v1/nodes", get(berth::nodes))
        .route("/api/v1/nodes/{id}", get(berth::node))
        .route("/api/v1/nodes/{id}/cordon", post(berth::cordon))
        .route("/api/v1/nodes/{id}/uncordon", post(berth::uncordon))
        .route("/api/v1/nodes/{id}/drain", post(berth::drain))
        .route("/api/v1/tasks/{task_id}/logs", get(logs::task_logs))
        .route("/api/v1/deployments", get(berth::deployments))
        .route("/api/v1/deployments/{id}", get(berth::deployment))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": format!("no route for {}", uri.path())})),
    )
        .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({"message": format!("method {} is not allowed on {}", req.method(), req.uri().path())})),
    )
        .into_response()
}

/// Query parameters in order, repeated keys kept (`embed=a&embed=b`).
#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn from_uri(uri: &Uri) -> Params {
        let q = uri.query().unwrap_or("");
        Params(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(',').map(str::to_string))
            .collect()
    }

    /// Booleans as clients send them: `true`, `True`, `1`; a bad value is a 400.
    pub fn flag(&self, key: &str, default: bool) -> ApiResult<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ApiError::BadRequest(format!(
                    "query parameter '{key}' must be true or false, got '{v}'"
                ))),
            },
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a JSON body: too large is 413, not JSON is 400 "Invalid JSON".
pub async fn json_body(shared: &Shared, body: Body) -> ApiResult<Value> {
    let bytes: Bytes = axum::body::to_bytes(body, shared.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::PayloadTooLarge(format!(
                "request body exceeds the limit of {} bytes",
                shared.config.max_body_bytes
            ))
        })?;
    if bytes.is_empty() {
        return Err(ApiError::InvalidJson("the request body is empty".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

pub fn ctx(addr: &ConnectInfo<SocketAddr>, uri: &Uri) -> RequestCtx {
    RequestCtx {
        client_ip: addr.0.ip().to_string(),
        uri: uri.path().to_string(),
    }
}

/// 200 with a JSON body.
pub fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

/// True when the client asks for `text/plain` and not for JSON (Marathon's negotiation: JSON
/// unless plain text is what the client wants).
pub fn wants_plain_text(headers: &HeaderMap) -> bool {
    let accept = accept(headers);
    accept.contains("text/plain") && !accept.contains("application/json")
}

/// The request's `Accept` header ("" when absent or not text).
pub fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// 200 with a `text/plain` body.
pub fn ok_text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
