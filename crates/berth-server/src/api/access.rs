//! Tokens (`/api/v1/tokens`), the caller's identity (`/api/v1/whoami`) and the audit log
//! (`/api/v1/audit`).

use super::{Params, json_body, ok};
use crate::Shared;
use crate::auth::{Caller, Principal, TokenPurpose, TokenSpec};
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use berth_core::error::ValidationErrors;
use berth_core::rbac::{Role, Scopes};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateToken {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// `90s`, `30m`, `12h`, `30d`, or seconds.
    #[serde(default)]
    ttl: Option<serde_json::Value>,
    #[serde(default)]
    purpose: Option<String>,
}

/// Longest lifetime a token may be given: ten years.
const MAX_TTL_SECS: i64 = 10 * 365 * 86_400;

/// A duration like `30d`, `12h`, `15m`, `90s` or plain seconds.
pub fn parse_ttl(v: &serde_json::Value) -> Result<i64, String> {
    let secs = match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| "ttl must be a whole number of seconds".to_string())?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: i64 = num
                .parse()
                .map_err(|_| format!("ttl {s:?} must look like 90s, 30m, 12h or 30d"))?;
            let mul = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(format!("ttl {s:?} must look like 90s, 30m, 12h or 30d")),
            };
            n.checked_mul(mul)
                .ok_or_else(|| "ttl is too long".to_string())?
        }
        _ => return Err("ttl must be a string like 30d or a number of seconds".into()),
    };
    if secs <= 0 {
        return Err("ttl must be positive".into());
    }
    if secs > MAX_TTL_SECS {
        return Err(format!(
            "ttl must be at most {MAX_TTL_SECS} seconds (ten years)"
        ));
    }
    Ok(secs)
}

fn spec_from(req: CreateToken, who: &Principal) -> ApiResult<TokenSpec> {
    let mut errs = ValidationErrors::new();
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        errs.add(
            "/name",
            "name must be 1 to 100 characters without control characters",
        );
    }
    let purpose = match req.purpose.as_deref() {
        None | Some("user") => TokenPurpose::User,
        Some("node-join") => TokenPurpose::NodeJoin,
        Some(other) => {
            errs.add(
                "/purpose",
                format!("purpose must be user or node-join, got {other:?}"),
            );
            TokenPurpose::User
        }
    };
    let role = match (purpose, req.role.as_deref()) {
        (TokenPurpose::NodeJoin, None) => Role::Viewer,
        (TokenPurpose::NodeJoin, Some(_)) => {
            errs.add("/role", "a node-join token has no role");
            Role::Viewer
        }
        (TokenPurpose::User, None) => {
            errs.add(
                "/role",
                "role is required: cluster-admin, operator, app-admin or viewer",
            );
            Role::Viewer
        }
        (TokenPurpose::User, Some(r)) => Role::parse(r).unwrap_or_else(|| {
            errs.add(
                "/role",
                format!("role must be cluster-admin, operator, app-admin or viewer, got {r:?}"),
            );
            Role::Viewer
        }),
    };
    let scopes = Scopes(req.scopes);
    if let Err(e) = scopes.validate() {
        errs.add("/scopes", e);
    }
    if role.is_scoped() && scopes.0.is_empty() {
        errs.add(
            "/scopes",
            "an app-admin needs at least one scope: a namespace (prod) or an app id prefix (/team/web)",
        );
    } else if !role.is_scoped() && !scopes.0.is_empty() {
        errs.add("/scopes", format!("a {role} is not limited to scopes"));
    }
    let expires_at = match req.ttl.as_ref().map(parse_ttl) {
        None => None,
        Some(Ok(secs)) => Some(berth_core::time::now_millis() + secs * 1000),
        Some(Err(e)) => {
            errs.add("/ttl", e);
            None
        }
    };
    errs.into_result()?;
    Ok(TokenSpec {
        name,
        purpose,
        role,
        scopes,
        expires_at,
        created_by: who.name(),
    })
}

pub async fn create_token(
    State(s): State<Shared>,
    Caller(who): Caller,
    body: Body,
) -> ApiResult<Response> {
    let v = json_body(&s, body).await?;
    let req: CreateToken =
        serde_json::from_value(v).map_err(|e| ApiError::invalid("/", e.to_string()))?;
    let spec = spec_from(req, &who)?;
    if s.auth.token_count() >= crate::auth::MAX_TOKENS {
        return Err(ApiError::invalid(
            "/",
            format!(
                "at most {} tokens; revoke unused ones first",
                crate::auth::MAX_TOKENS
            ),
        ));
    }
    let t = s
        .auth
        .create_token(s.store.as_ref(), spec)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut body = t.record.public_json();
    body["token"] = json!(t.token);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

pub async fn list_tokens(State(s): State<Shared>) -> Response {
    let tokens: Vec<_> = s.auth.tokens().iter().map(|t| t.public_json()).collect();
    ok(json!({ "tokens": tokens }))
}

pub async fn revoke_token(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let found = s
        .auth
        .revoke(s.store.as_ref(), &id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !found {
        return Err(ApiError::NotFound(format!("token '{id}' does not exist")));
    }
    Ok(ok(json!({ "id": id, "revoked": true })))
}

pub async fn whoami(Caller(who): Caller) -> Response {
    let (role, scopes, token) = match &who {
        Principal::User {
            role,
            scopes,
            token_id,
            ..
        } => (Some(*role), scopes.clone(), token_id.clone()),
        Principal::Anonymous => (Some(Role::ClusterAdmin), Scopes::default(), None),
        _ => (None, Scopes::default(), None),
    };
    ok(json!({ "name": who.name(), "role": role, "scopes": scopes, "tokenId": token }))
}

pub async fn audit(State(s): State<Shared>, uri: Uri) -> ApiResult<Response> {
    let params = Params::from_uri(&uri);
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::audit::MAX_RECORDS).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "query parameter 'limit' must be 1 to {}, got '{v}'",
                    crate::audit::MAX_RECORDS
                ))
            })?,
    };
    let since = match params.get("since") {
        None => None,
        Some(v) => Some(
            berth_core::time::parse(v)
                .map(|t| t.as_millisecond())
                .or_else(|| v.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "query parameter 'since' must be an RFC 3339 time or milliseconds, got '{v}'"
                    ))
                })?,
        ),
    };
    let records: Vec<_> = s
        .audit
        .query(limit, since, params.get("who"))
        .iter()
        .map(|r| r.to_json())
        .collect();
    Ok(ok(json!({ "records": records })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_in_the_usual_units() {
        assert_eq!(parse_ttl(&json!("90s")), Ok(90));
        assert_eq!(parse_ttl(&json!("30m")), Ok(1800));
        assert_eq!(parse_ttl(&json!("12h")), Ok(43_200));
        assert_eq!(parse_ttl(&json!("30d")), Ok(2_592_000));
        assert_eq!(parse_ttl(&json!(60)), Ok(60));
        for bad in [
            json!("0s"),
            json!("-1"),
            json!("1y"),
            json!("d"),
            json!(1.5),
            json!("99999999999999999999d"),
        ] {
            assert!(parse_ttl(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn app_admins_need_scopes_and_others_take_none() {
        let who = Principal::Anonymous;
        let req = |role: &str, scopes: &[&str]| CreateToken {
            name: "x".into(),
            role: Some(role.into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl: None,
            purpose: None,
        };
        assert!(spec_from(req("app-admin", &[]), &who).is_err());
        assert!(spec_from(req("app-admin", &["prod"]), &who).is_ok());
        assert!(spec_from(req("viewer", &["prod"]), &who).is_err());
        assert!(spec_from(req("root", &[]), &who).is_err());
    }
}
