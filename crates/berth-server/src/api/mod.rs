//! HTTP: the Marathon v2 API, Berth's own `/api/v1`, and the agent protocol. Handlers only
//! parse requests and render responses; changes go through [`crate::ops`].

mod access;
mod agent;
mod apps;
mod berth;
mod chronos;
mod consul;
mod events;
mod groups;
mod jobs;
mod logs;
mod namespaces;
mod openapi;
mod secrets;
mod services;
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
use axum::routing::{MethodFilter, on};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// One route of the router: its method, its axum path, and the OpenAPI paths it serves. A
/// `{*rest}` route lists each sub-resource its handler tells apart (`/v2/apps/{appId}/tasks`,
/// ...); any other route serves its own path (an empty list). `openapi.json` documents exactly
/// these operations, and a test holds the two to each other.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub documented: &'static [&'static str],
}

/// Declares [`ROUTES`] and the router built from the same list, so they cannot drift.
macro_rules! routes {
    ($( $method:ident $path:literal $([$($doc:literal),+ $(,)?])? => $handler:expr; )*) => {
        /// Every route of [`router`], in order.
        pub const ROUTES: &[Route] = &[$(Route {
            method: stringify!($method),
            path: $path,
            documented: &[$($($doc),+)?],
        }),*];

        fn add_routes(r: Router<Shared>) -> Router<Shared> {
            r$(.route($path, on(MethodFilter::$method, $handler)))*
        }
    };
}

routes! {
    GET "/ping" => system::ping;
    GET "/metrics" => system::metrics;
    GET "/openapi.json" => openapi::document;
    GET "/v2/info" => system::info;
    GET "/v2/leader" => system::leader;
    DELETE "/v2/leader" => system::abdicate;
    GET "/api/v1/cluster" => system::cluster;
    GET "/v2/queue" => system::queue;
    DELETE "/v2/queue/{*rest}" ["/v2/queue/{appId}/delay"] => system::reset_delay;
    GET "/v2/events" => events::stream;
    GET "/v2/apps" => apps::list;
    POST "/v2/apps" => apps::create;
    PUT "/v2/apps" => apps::put_many;
    GET "/v2/apps/{*rest}" [
        "/v2/apps/{appId}",
        "/v2/apps/{appId}/tasks",
        "/v2/apps/{appId}/versions",
        "/v2/apps/{appId}/versions/{version}",
    ] => apps::get_sub;
    PUT "/v2/apps/{*rest}" ["/v2/apps/{appId}"] => apps::put_one;
    PATCH "/v2/apps/{*rest}" ["/v2/apps/{appId}"] => apps::patch_one;
    DELETE "/v2/apps/{*rest}" [
        "/v2/apps/{appId}",
        "/v2/apps/{appId}/tasks",
        "/v2/apps/{appId}/tasks/{taskId}",
    ] => apps::delete_sub;
    POST "/v2/apps/{*rest}" ["/v2/apps/{appId}/restart"] => apps::post_sub;
    GET "/v2/tasks" => tasks::list;
    POST "/v2/tasks/delete" => tasks::delete_many;
    GET "/v2/groups" => groups::root;
    POST "/v2/groups" => groups::create;
    GET "/v2/groups/{*rest}" ["/v2/groups/{groupId}", "/v2/groups/{groupId}/versions"] => groups::get;
    PUT "/v2/groups/{*rest}" ["/v2/groups/{groupId}"] => groups::put;
    DELETE "/v2/groups/{*rest}" ["/v2/groups/{groupId}"] => groups::delete;
    POST "/v2/groups/{*rest}" ["/v2/groups/{groupId}"] => groups::create_under;
    GET "/v2/deployments" => system::deployments;
    DELETE "/v2/deployments/{id}" => system::cancel_deployment;
    POST "/api/v1/agent/register" => agent::register;
    GET "/api/v1/agent/{node}/assignments" => agent::assignments;
    POST "/api/v1/agent/{node}/status" => agent::status;
    GET "/api/v1/nodes" => berth::nodes;
    GET "/api/v1/nodes/{id}" => berth::node;
    POST "/api/v1/nodes/{id}/cordon" => berth::cordon;
    POST "/api/v1/nodes/{id}/uncordon" => berth::uncordon;
    POST "/api/v1/nodes/{id}/drain" => berth::drain;
    GET "/api/v1/tasks/{task_id}/logs" => logs::task_logs;
    GET "/api/v1/jobs/{name}/runs" => jobs::runs;
    GET "/api/v1/jobs/{name}/runs/{id}/logs" => jobs::run_logs;
    GET "/api/v1/deployments" => berth::deployments;
    GET "/api/v1/deployments/{id}" => berth::deployment;
    POST "/api/v1/tokens" => access::create_token;
    GET "/api/v1/tokens" => access::list_tokens;
    DELETE "/api/v1/tokens/{id}" => access::revoke_token;
    GET "/api/v1/whoami" => access::whoami;
    GET "/api/v1/audit" => access::audit;
    GET "/api/v1/secrets" => secrets::list;
    GET "/api/v1/secrets/{*name}" ["/api/v1/secrets/{name}"] => secrets::get;
    PUT "/api/v1/secrets/{*name}" ["/api/v1/secrets/{name}"] => secrets::put;
    DELETE "/api/v1/secrets/{*name}" ["/api/v1/secrets/{name}"] => secrets::delete;
    GET "/api/v1/services" => services::list;
    GET "/api/v1/services/{name}" => services::get;
    GET "/v1/catalog/services" => consul::services;
    GET "/v1/catalog/service/{name}" => consul::catalog_service;
    GET "/v1/health/service/{name}" => consul::health_service;
    GET "/api/v1/namespaces" => namespaces::list;
    GET "/api/v1/namespaces/{id}" => namespaces::get;
    PUT "/api/v1/namespaces/{id}" => namespaces::put;
    DELETE "/api/v1/namespaces/{id}" => namespaces::delete;
    GET "/scheduler/jobs" => chronos::list;
    GET "/scheduler/jobs/search" => chronos::search;
    GET "/scheduler/jobs/summary" => chronos::summary;
    GET "/scheduler/job/{name}" => chronos::get;
    PUT "/scheduler/job/{name}" => chronos::run;
    DELETE "/scheduler/job/{name}" => chronos::delete;
    PUT "/scheduler/job/success/{name}" => chronos::success;
    GET "/scheduler/job/stat/{name}" => chronos::job_stat;
    POST "/scheduler/iso8601" => chronos::iso8601;
    PUT "/scheduler/iso8601" => chronos::iso8601;
    POST "/scheduler/dependency" => chronos::dependency;
    PUT "/scheduler/dependency" => chronos::dependency;
    DELETE "/scheduler/task/kill/{name}" => chronos::kill;
    GET "/scheduler/stats/{percentile}" => chronos::stats;
    GET "/scheduler/graph/csv" => chronos::graph_csv;
    GET "/scheduler/graph/dot" => chronos::graph_dot;
    GET "/scheduler/leader" => chronos::leader;
    GET "/v1/scheduler/jobs" => chronos::list;
    GET "/v1/scheduler/jobs/search" => chronos::search;
    GET "/v1/scheduler/jobs/summary" => chronos::summary;
    GET "/v1/scheduler/job/{name}" => chronos::get;
    PUT "/v1/scheduler/job/{name}" => chronos::run;
    DELETE "/v1/scheduler/job/{name}" => chronos::delete;
    PUT "/v1/scheduler/job/success/{name}" => chronos::success;
    GET "/v1/scheduler/job/stat/{name}" => chronos::job_stat;
    POST "/v1/scheduler/iso8601" => chronos::iso8601;
    PUT "/v1/scheduler/iso8601" => chronos::iso8601;
    POST "/v1/scheduler/dependency" => chronos::dependency;
    PUT "/v1/scheduler/dependency" => chronos::dependency;
    DELETE "/v1/scheduler/task/kill/{name}" => chronos::kill;
    GET "/v1/scheduler/stats/{percentile}" => chronos::stats;
    GET "/v1/scheduler/graph/csv" => chronos::graph_csv;
    GET "/v1/scheduler/graph/dot" => chronos::graph_dot;
    GET "/v1/scheduler/leader" => chronos::leader;
}

pub fn router(shared: Shared) -> Router {
    add_routes(Router::new())
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

pub fn ctx(addr: &ConnectInfo<SocketAddr>, uri: &Uri, caller: &crate::auth::Caller) -> RequestCtx {
    RequestCtx {
        client_ip: addr.0.ip().to_string(),
        uri: uri.path().to_string(),
        principal: caller.0.clone(),
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
