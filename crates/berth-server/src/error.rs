//! API errors. Every error a client can cause is a 4xx with a JSON body in Marathon's shape:
//! `{"message": "...", "details": [{"path": "/x", "errors": ["..."]}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_core::error::ValidationErrors;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Invalid JSON: {0}")]
    InvalidJson(String),
    #[error("Object is not valid")]
    Invalid(ValidationErrors),
    /// Valid, but refused by a namespace's quota or policy: 422 with the first reason as the
    /// message and every reason by field in `details`.
    #[error("{message}")]
    Refused {
        message: String,
        details: ValidationErrors,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        deployments: Vec<String>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A limit on concurrent use (event streams, long polls) is reached: try again later.
    #[error("{0}")]
    TooManyRequests(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the permission.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed to persist: nothing was acknowledged.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn app_not_found(id: &str) -> Self {
        Self::NotFound(format!("App '{id}' does not exist"))
    }

    pub fn invalid(path: &str, msg: impl Into<String>) -> Self {
        Self::Invalid(ValidationErrors::single(path, msg))
    }

    /// A [`ApiError::Refused`] whose message is the first of `details`' reasons.
    pub fn refused(details: ValidationErrors) -> Self {
        let mut reasons = details.0.iter().flat_map(|f| f.errors.iter());
        let first = reasons.next().cloned().unwrap_or_default();
        let more = reasons.count();
        let message = match more {
            0 => first,
            1 => format!("{first} (and 1 more reason)"),
            n => format!("{first} (and {n} more reasons)"),
        };
        Self::Refused { message, details }
    }

    pub fn locked(deployments: Vec<String>) -> Self {
        let first = deployments.first().cloned().unwrap_or_default();
        Self::Conflict {
            message: format!(
                "App is locked by one or more deployments. Override with the option '?force=true'. \
                 View details at '/v2/deployments/{first}'."
            ),
            deployments,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) | Self::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn body(&self) -> Value {
        match self {
            Self::InvalidJson(msg) => json!({
                "message": "Invalid JSON",
                "details": [{"path": "/", "errors": [msg]}],
            }),
            Self::Invalid(errs) => json!({"message": "Object is not valid", "details": errs.0}),
            Self::Refused { message, details } => json!({"message": message, "details": details.0}),
            Self::Conflict {
                message,
                deployments,
            } => json!({
                "message": message,
                "deployments": deployments.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
            }),
            other => json!({"message": other.to_string()}),
        }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> Self {
        Self::Invalid(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, Self::PayloadTooLarge(_)) {
            // The rest of the body was not read: the connection cannot be reused, and the
            // client must know before it sends the next request on it.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Response middleware: a 4xx that is not JSON (axum's own extractor rejections are
/// `text/plain`, e.g. "Invalid URL: Invalid UTF-8 in \`rest\`" for `/v2/apps/%ff`) becomes
/// `{"message": <its text>}` with the same status and headers, like every other client error.
pub async fn json_client_errors(resp: Response) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !resp.status().is_client_error() || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("client error")
            .to_string()
    } else {
        text
    };
    let mut out = (parts.status, axum::Json(json!({ "message": message }))).into_response();
    for (k, v) in &parts.headers {
        if k != CONTENT_TYPE && k != CONTENT_LENGTH {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}
