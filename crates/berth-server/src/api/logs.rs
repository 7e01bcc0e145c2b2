//! `GET /api/v1/tasks/{task_id}/logs?stream=stdout|stderr&tail=N&follow=true`: a task's output,
//! streamed from the agent of the task's node (its advertised `agentUrl`). 404 for an unknown
//! task or one whose node serves no logs (no `agentUrl`), 502 when the node's agent cannot be
//! reached; the agent's own errors are passed on.

use super::Params;
use crate::Shared;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            // Followed logs stream for as long as the client listens: no overall timeout, but a
            // silent connection is probed.
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    })
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// The query passed on to the agent: only the parameters it knows.
fn agent_query(uri: &Uri) -> String {
    let params = Params::from_uri(uri);
    let pairs: Vec<String> = ["stream", "tail", "follow"]
        .iter()
        .filter_map(|k| {
            params.get(k).map(|v| {
                let v: String = v
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{k}={v}")
            })
        })
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

pub async fn task_logs(
    State(s): State<Shared>,
    crate::auth::Caller(who): crate::auth::Caller,
    Path(task_id): Path<String>,
    uri: Uri,
) -> Response {
    let target = {
        let st = s.state.read();
        match st.tasks.get(&task_id) {
            None => Err(error(
                StatusCode::NOT_FOUND,
                format!("Task '{task_id}' does not exist"),
            )),
            Some(t)
                if who
                    .check_on(berth_core::rbac::Permission::ReadLogs, &t.app_id)
                    .is_err() =>
            {
                Err(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "permission denied: {} lacks 'logs:read' on '{}'",
                        who.name(),
                        t.app_id
                    ),
                ))
            }
            // Not a failure of the server nor of an agent when there is no agent to ask.
            Some(t) => agent_base(&st, &t.node_id, &task_id)
                .map(|b| (b, t.node_id.clone()))
                .map_err(IntoResponse::into_response),
        }
    };
    match target {
        Ok((base, node)) => proxy_logs(&s, &base, &node, &task_id, &uri).await,
        Err(resp) => resp,
    }
}

/// The agent URL of `node` to read a task's logs from, or the 404 saying why there is none.
pub(crate) fn agent_base(
    st: &crate::state::Cluster,
    node: &str,
    task_id: &str,
) -> Result<String, crate::error::ApiError> {
    use crate::error::ApiError;
    match st.nodes.get(node) {
        None => Err(ApiError::NotFound(format!(
            "task '{task_id}' has no logs: its node '{node}' is not known"
        ))),
        Some(n) => n.info.agent_url.clone().ok_or_else(|| {
            ApiError::NotFound(format!(
                "task '{task_id}' has no logs: the agent of node '{node}' serves none \
                 (it advertises no agent URL)"
            ))
        }),
    }
}

/// Streams `task_id`'s logs from the agent at `base` (node `node`), passing on the query.
pub(crate) async fn proxy_logs(
    s: &Shared,
    base: &str,
    node: &str,
    task_id: &str,
    uri: &Uri,
) -> Response {
    let url = format!(
        "{}/v1/tasks/{task_id}/logs{}",
        base.trim_end_matches('/'),
        agent_query(uri)
    );
    // With TLS, the server presents its client certificate and trusts only the agents CA.
    let client = crate::tls::agent_client(s).unwrap_or_else(|| client().clone());
    let mut request = client.get(&url);
    if let Some(secret) = s.auth.node_secret(node) {
        request = request.bearer_auth(secret);
    }
    let resp = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "cannot reach the agent of node '{node}' at {base}: {}",
                    berth_tls::client::error_chain(&e)
                ),
            );
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain; charset=utf-8")
        .to_string();
    let body = Body::from_stream(
        resp.bytes_stream()
            .map(|c| c.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    (
        status,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_on_known_parameters_only() {
        let uri: Uri = "/api/v1/tasks/a.1/logs?tail=3&follow=true&x=1&stream=stderr"
            .parse()
            .unwrap();
        assert_eq!(agent_query(&uri), "?stream=stderr&tail=3&follow=true");
        let uri: Uri = "/api/v1/tasks/a.1/logs".parse().unwrap();
        assert_eq!(agent_query(&uri), "");
        let uri: Uri = "/x?tail=a%20b".parse().unwrap();
        assert_eq!(agent_query(&uri), "?tail=a%20b");
    }
}
