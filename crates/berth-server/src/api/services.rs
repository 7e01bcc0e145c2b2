//! Berth's catalog API (`/api/v1/services`): every app as a service with its healthy and
//! unhealthy instances, served with blocking queries (`?index=N&wait=30s`) and the result's
//! index in `X-Berth-Index` and the body.

use super::Params;
use crate::Shared;
use crate::catalog::{self, Blocking};
use crate::error::{ApiError, ApiResult};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use berth_core::service::ServiceSummary;
use serde_json::json;

pub const INDEX_HEADER: &str = "x-berth-index";

fn with_index(mut resp: Response, index: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert(INDEX_HEADER, v);
    }
    resp
}

fn blocking(uri: &Uri) -> ApiResult<Blocking> {
    let q = Params::from_uri(uri);
    Blocking::parse(q.get("index"), q.get("wait"))
}

/// `GET /api/v1/services`: one line per service.
pub async fn list(State(s): State<Shared>, uri: Uri) -> ApiResult<Response> {
    let b = blocking(&uri)?;
    let (index, services) = catalog::answer(&s, "berth/services", b, |st, names| {
        catalog::services(st, names)
            .iter()
            .map(ServiceSummary::from)
            .collect::<Vec<_>>()
    })
    .await?;
    let body = json!({"index": index, "services": services});
    Ok(with_index(axum::Json(body).into_response(), index))
}

/// `GET /api/v1/services/{name}`: the service and every instance, healthy or not.
pub async fn get(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Response> {
    let Path(name) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let b = blocking(&uri)?;
    let query = format!("berth/service/{name}");
    let (index, service) = catalog::answer(&s, &query, b, |st, names| {
        catalog::service(st, names, &name)
    })
    .await?;
    let resp = match service {
        Some(service) => axum::Json(json!({"index": index, "service": service})).into_response(),
        None => ApiError::NotFound(format!(
            "no service named '{name}': a service is named from its app's id, path segments \
             reversed and joined with '-' (app /prod/web is service web-prod)"
        ))
        .into_response(),
    };
    Ok(with_index(resp, index))
}
