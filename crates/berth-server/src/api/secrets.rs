//! `/api/v1/secrets`: Berth's secret store (see [`crate::secrets`]). Values go in, never out:
//! every answer shows names, times and the apps that use a secret.

use super::{json_body, ok};
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::secrets;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `GET /api/v1/secrets`: `{"secrets": [{name, createdAt, updatedAt, usedBy}, ...]}`.
pub async fn list(State(s): State<Shared>) -> Response {
    let st = s.state.read();
    // One pass over the apps, not one per secret.
    let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for app in st.apps.values() {
        let mut sources: Vec<&str> = app.secrets.values().map(|d| d.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        for source in sources {
            users.entry(source).or_default().push(app.id.clone());
        }
    }
    let list: Vec<Value> = st
        .secrets
        .values()
        .map(|x| x.metadata(users.remove(x.name.as_str()).unwrap_or_default()))
        .collect();
    ok(json!({ "secrets": list }))
}

/// `GET /api/v1/secrets/{name}`: the secret's metadata.
/// 403 unless the caller may change the secret `name` (an app-admin: inside its scopes).
fn may_write(who: &crate::auth::Principal, name: &str) -> ApiResult<()> {
    who.check_on(
        berth_core::rbac::Permission::SecretWrite,
        &format!("/{}", name.trim_start_matches('/')),
    )
}

pub async fn get(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Response> {
    secrets::check_name(&name)?;
    let st = s.state.read();
    let x = st
        .secrets
        .get(&name)
        .ok_or_else(|| secrets::not_found(&name))?;
    Ok(ok(x.metadata(secrets::used_by(&st, &name))))
}

/// `PUT /api/v1/secrets/{name}` with `{"value": "..."}`: 201 when created, 200 when replaced.
/// Tasks already running keep the value they started with; tasks started from now on get
/// the new one.
pub async fn put(
    State(s): State<Shared>,
    crate::auth::Caller(who): crate::auth::Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    secrets::check_name(&name)?;
    may_write(&who, &name)?;
    let v = json_body(&s, body).await?;
    let value = parse_body(v)?;
    let key = s.secrets_key.clone();
    let (created, stored) = s
        .apply(|st, ch| secrets::put_secret(st, ch, &key, &name, &value))
        .await?;
    let meta = stored.metadata(secrets::used_by(&s.state.read(), &name));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(secret = %name, created, "secret stored");
    Ok((status, axum::Json(meta)).into_response())
}

/// `DELETE /api/v1/secrets/{name}`: 409 naming the apps while any uses it.
pub async fn delete(
    State(s): State<Shared>,
    crate::auth::Caller(who): crate::auth::Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    may_write(&who, &name)?;
    let stored = s
        .apply(|st, ch| secrets::delete_secret(st, ch, &name))
        .await?;
    tracing::info!(secret = %name, "secret deleted");
    Ok(ok(stored.metadata(vec![])))
}

/// The body of a PUT: exactly `{"value": "<string>"}`. Errors never echo the value.
fn parse_body(v: Value) -> ApiResult<String> {
    let Value::Object(mut m) = v else {
        return Err(ApiError::invalid(
            "/",
            "expected a JSON object {\"value\": \"...\"}",
        ));
    };
    let mut errs = berth_core::error::ValidationErrors::new();
    for k in m.keys().filter(|k| *k != "value") {
        errs.add(
            format!("/{}", k.chars().take(64).collect::<String>()),
            "unknown field: a secret has only a 'value'",
        );
    }
    let value = match m.remove("value") {
        Some(Value::String(v)) => Some(v),
        Some(_) => {
            errs.add("/value", "expected a string");
            None
        }
        None => {
            errs.add("/value", "a secret needs a value");
            None
        }
    };
    errs.into_result()?;
    value.ok_or_else(|| ApiError::invalid("/value", "a secret needs a value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_exactly_a_string_value() {
        assert_eq!(parse_body(json!({"value": "x"})).unwrap(), "x");
        for (bad, path) in [
            (json!("x"), "/"),
            (json!({}), "/value"),
            (json!({"value": 5}), "/value"),
            (json!({"value": "x", "extra": 1}), "/extra"),
        ] {
            let e = parse_body(bad.clone()).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert_eq!(e.body()["details"][0]["path"], path, "{bad}");
        }
    }
}
