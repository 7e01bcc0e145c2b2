//! The agent's own HTTP endpoint (`berth agent --listen`, default `0.0.0.0:5051`); its URL is
//! advertised to the server as `NodeInfo::agent_url`.
//!
//! - `GET /v1/tasks/{task_id}/logs?stream=stdout|stderr&tail=N&follow=true`: the task's output
//!   as `text/plain`, streamed; with `follow` the response stays open like `tail -f` and ends
//!   once the task is over and everything it wrote was sent. 404 for an unknown task, and for
//!   a task whose driver keeps no logs (the fake driver).
//! - `GET /metrics`: Prometheus text: per running task (labels `app_id`, `task_id`, `node`)
//!   CPU, memory, memory limit, network bytes, restarts and health, read from cgroups and
//!   `/proc` directly (see [`crate::stats`]); per node condition `berth_node_condition_ok`.
//! - `GET /ping`: `pong`.
//!
//! With HTTPS servers the endpoint serves TLS ([`serve_tls`]) with the certificate the server
//! issued to the node (see [`crate::tls`]), and answers 401 to every request but `/ping` and
//! `/metrics` from a client without a certificate from the agents CA, i.e. from anyone but
//! the server (`/metrics` takes the scrape token instead, as over plain HTTP).
//!
//! Every client error is a 4xx with a JSON body `{"message": ...}`: unknown routes (404), other
//! methods (405), and what axum's extractors refuse (400: a task id that is not UTF-8 once
//! percent-decoded, a repeated query parameter).

use crate::driver::{Driver, DriverError, LogStream};
use crate::runtime::{AgentView, TaskView};
use crate::stats::{self, HostPaths, TaskStats};
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_core::node::NodeCondition;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    view: AgentView,
    paths: Arc<HostPaths>,
}

/// The agent's HTTP routes.
pub fn router(view: AgentView, paths: HostPaths) -> Router {
    routes(view, paths).layer(axum::middleware::from_fn(close_if_body_unread))
}

/// The routes over TLS: only the server (a client certificate from the agents CA) may use
/// them, but for `/ping` and `/metrics` (which Prometheus reads with the scrape token, checked
/// by `only_the_server` as over plain HTTP).
pub fn tls_router(view: AgentView, paths: HostPaths) -> Router {
    routes(view, paths)
        .layer(axum::middleware::from_fn(require_client_certificate))
        .layer(axum::middleware::from_fn(close_if_body_unread))
}

/// What a client without a certificate may ask over TLS: `/ping` (liveness probes) and
/// `/metrics` (for the scrape token; the node credential is checked all the same).
fn allowed_without_client_certificate(req: &axum::extract::Request) -> bool {
    matches!(req.uri().path(), "/ping" | "/metrics")
}

async fn require_client_certificate(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let verified = req
        .extensions()
        .get::<berth_tls::TlsPeer>()
        .is_some_and(|p| p.client_certificate.is_some());
    if verified || allowed_without_client_certificate(&req) {
        return next.run(req).await;
    }
    error(
        StatusCode::UNAUTHORIZED,
        "this endpoint serves the Berth server only: present a client certificate issued by \
         the cluster's agents CA"
            .into(),
    )
}

fn routes(view: AgentView, paths: HostPaths) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/metrics", get(metrics))
        .route("/v1/tasks/{task_id}/logs", get(logs))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .with_state(AppState {
            view: view.clone(),
            paths: Arc::new(paths),
        })
        .layer(axum::middleware::from_fn_with_state(view, only_the_server))
}

/// Once the node has joined, only the server (presenting the node's credential) may read
/// logs and metrics; Prometheus may read `/metrics` with the scrape token. `/ping` is open.
async fn only_the_server(
    State(view): State<AgentView>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path == "/ping" {
        return next.run(req).await;
    }
    let metrics = path == "/metrics";
    let allowed = match view.credentials() {
        None => true,
        Some(c) => c.allows(
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            metrics,
        ),
    };
    if allowed {
        next.run(req).await
    } else {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "this agent answers only its server (and, on /metrics, the scrape token)".into(),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        resp
    }
}

/// `Connection: close` on the reply to a request whose body was not read to its end (a body
/// sent to a route that takes none): hyper closes such a connection after the reply, which
/// must say so, or a keep-alive client's next request on it fails. (The server has the same
/// layer, `berth_server`'s `keepalive`.)
async fn close_if_body_unread(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use std::sync::atomic::{AtomicBool, Ordering};
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let flag = read.clone();
    let (parts, body) = req.into_parts();
    // Polled only once the body's own stream has ended.
    let end = futures::stream::poll_fn(move |_| {
        flag.store(true, Ordering::Release);
        std::task::Poll::Ready(None)
    });
    let body = Body::from_stream(body.into_data_stream().chain(end));
    let mut resp = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !read.load(Ordering::Acquire) {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Binds the listener (so the caller learns the port of `127.0.0.1:0` before advertising it).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: AgentView,
    paths: HostPaths,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(view, paths))
        .with_graceful_shutdown(shutdown)
        .await
}

/// [`serve`] over TLS, with the configuration in `tls` (the node's certificate, once known)
/// and [`tls_router`]'s rule.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<berth_tls::TlsSlot>,
    view: AgentView,
    paths: HostPaths,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    berth_tls::serve::serve(listener, tls, tls_router(view, paths), shutdown).await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct LogQuery {
    stream: Option<String>,
    tail: Option<String>,
    follow: Option<String>,
}

/// Parsed `logs` query: stream, tail (`None`: all), follow.
fn parse_log_query(q: &LogQuery) -> Result<(LogStream, Option<usize>, bool), String> {
    let stream = match q.stream.as_deref() {
        None | Some("") => LogStream::Stdout,
        Some(s) => LogStream::parse(s)
            .ok_or_else(|| format!("stream must be stdout or stderr, got '{s}'"))?,
    };
    let tail = match q.tail.as_deref() {
        None | Some("") | Some("all") => None,
        Some(t) => Some(
            t.parse::<usize>()
                .map_err(|_| format!("tail must be a number of lines, got '{t}'"))?,
        ),
    };
    let follow = match q.follow.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => return Err(format!("follow must be true or false, got '{other}'")),
    };
    Ok((stream, tail, follow))
}

async fn logs(
    State(st): State<AppState>,
    task_id: Result<Path<String>, PathRejection>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    // axum's own rejections are plain text: every error here is JSON.
    let (task_id, q) = match (task_id, q) {
        (Ok(Path(t)), Ok(Query(q))) => (t, q),
        (Err(e), _) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (stream, tail, follow) = match parse_log_query(&q) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // The task's own driver; a task the agent already forgot may still have logs on disk.
    let candidates: Vec<Arc<dyn Driver>> = match st.view.driver_of(&task_id) {
        Some(d) => vec![d],
        None => st.view.drivers(),
    };
    let mut unsupported = None;
    for d in candidates {
        match d.logs(&task_id, stream, tail, follow).await {
            Ok(chunks) => {
                let body = Body::from_stream(
                    chunks.map(|c| c.map_err(|e| std::io::Error::other(e.to_string()))),
                );
                return (
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    body,
                )
                    .into_response();
            }
            Err(DriverError::UnknownTask(_)) => {}
            Err(DriverError::Unsupported(m)) => unsupported = Some(m),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the logs of task {task_id}: {e}"),
                );
            }
        }
    }
    match unsupported {
        // Not a server failure: this task simply has no logs to serve.
        Some(m) => error(
            StatusCode::NOT_FOUND,
            format!("task {task_id} has no logs: {m}"),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            format!("task {task_id} is not known to this agent"),
        ),
    }
}

/// One task's numbers for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskSample {
    pub app_id: String,
    pub task_id: String,
    pub stats: TaskStats,
    pub restarts: u64,
    pub healthy: Option<bool>,
}

async fn metrics(State(st): State<AppState>) -> Response {
    let node = st.view.node_id().unwrap_or_default();
    let running: Vec<(TaskView, Option<i32>)> = st
        .view
        .tasks()
        .into_iter()
        .filter(|t| !t.state.is_terminal())
        .map(|t| {
            let pid = st
                .view
                .driver_of(&t.task_id)
                .and_then(|d| d.pid(&t.task_id));
            (t, pid)
        })
        .collect();
    let paths = st.paths.clone();
    let samples = tokio::task::spawn_blocking(move || {
        running
            .into_iter()
            .filter_map(|(t, pid)| {
                let stats = stats::task_stats(&paths, pid?)?;
                Some(TaskSample {
                    app_id: t.app_id,
                    task_id: t.task_id,
                    stats,
                    // Replacements are new tasks (new ids): a task itself never restarts.
                    restarts: 0,
                    healthy: t.healthy,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let conditions = st.view.conditions().unwrap_or_default();
    let text = render_metrics(&node, &samples, &conditions);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the samples and node conditions.
pub fn render_metrics(node: &str, samples: &[TaskSample], conditions: &[NodeCondition]) -> String {
    type Getter = fn(&TaskSample) -> Option<f64>;
    let families: [(&str, &str, &str, Getter); 7] = [
        (
            "berth_task_cpu_seconds_total",
            "counter",
            "CPU time used by the task (user + system), in seconds.",
            |s| s.stats.cpu_seconds,
        ),
        (
            "berth_task_memory_usage_bytes",
            "gauge",
            "Memory used by the task's cgroup (RSS of its main process without one).",
            |s| s.stats.memory_usage_bytes.map(|v| v as f64),
        ),
        (
            "berth_task_memory_limit_bytes",
            "gauge",
            "Memory limit of the task's cgroup (absent when unlimited).",
            |s| s.stats.memory_limit_bytes.map(|v| v as f64),
        ),
        (
            "berth_task_network_receive_bytes_total",
            "counter",
            "Bytes received in the task's network namespace (the host's for host networking).",
            |s| s.stats.network_receive_bytes.map(|v| v as f64),
        ),
        (
            "berth_task_network_transmit_bytes_total",
            "counter",
            "Bytes sent from the task's network namespace (the host's for host networking).",
            |s| s.stats.network_transmit_bytes.map(|v| v as f64),
        ),
        (
            "berth_task_restarts_total",
            "counter",
            "Times the task was restarted in place.",
            |s| Some(s.restarts as f64),
        ),
        (
            "berth_task_healthy",
            "gauge",
            "1 when every health check of the task passes, 0 otherwise (absent without checks).",
            |s| s.healthy.map(|h| if h { 1.0 } else { 0.0 }),
        ),
    ];
    let node = esc(node);
    let mut out = String::new();
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in samples {
            if let Some(v) = get(s) {
                let _ = writeln!(
                    out,
                    "{name}{{app_id=\"{}\",task_id=\"{}\",node=\"{node}\"}} {v}",
                    esc(&s.app_id),
                    esc(&s.task_id),
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP berth_node_condition_ok 1 when the node condition holds, 0 when it fails."
    );
    let _ = writeln!(out, "# TYPE berth_node_condition_ok gauge");
    for c in conditions {
        let _ = writeln!(
            out,
            "berth_node_condition_ok{{node=\"{node}\",condition=\"{}\"}} {}",
            esc(&c.kind),
            u8::from(c.ok)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over TLS only the server's client certificate opens the routes (but `/ping` and
    /// `/metrics`).
    #[tokio::test]
    async fn tls_endpoint_takes_only_the_servers_certificate() {
        use berth_tls::{Ca, Leaf, Usage, client, pem};
        let ca = Ca::generate("agents").unwrap();
        let leaf = |usage| Leaf {
            common_name: "n1".into(),
            names: vec!["127.0.0.1".into()],
            usage,
            valid_for: std::time::Duration::from_secs(3600),
        };
        let (cert, key) = ca.issue(&leaf(Usage::Server)).unwrap();
        let roots = [ca.certificate_der().clone()];
        let config = berth_tls::server_config(
            pem::certs(cert.as_bytes(), "c").unwrap(),
            pem::key(key.as_bytes(), "k").unwrap(),
            Some(&roots),
        )
        .unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve_tls(
            listener,
            berth_tls::TlsSlot::new(Some(config)),
            AgentView::default(),
            HostPaths::default(),
            std::future::pending(),
        ));
        let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
        let anonymous = client::trust_only(reqwest::Client::builder(), &roots)
            .unwrap()
            .build()
            .unwrap();
        let r = anonymous.get(url("/ping")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        // `/metrics` is left to the credential check (the scrape token); with no agent
        // running here there is no credential, so it is open.
        let r = anonymous.get(url("/metrics")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        for path in ["/v1/tasks/a.1/logs", "/nope"] {
            let r = anonymous.get(url(path)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "{path}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("client certificate"),
                "{body}"
            );
        }
        let (cert, key) = ca.issue(&leaf(Usage::Client)).unwrap();
        let server = client::trust_only(reqwest::Client::builder(), &roots)
            .unwrap()
            .identity(client::identity(&cert, &key).unwrap())
            .build()
            .unwrap();
        let r = server.get(url("/v1/tasks/a.1/logs")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        // Another node's (server-usage) certificate is no client certificate.
        let (cert, key) = ca.issue(&leaf(Usage::Server)).unwrap();
        let node = client::trust_only(reqwest::Client::builder(), &roots)
            .unwrap()
            .identity(client::identity(&cert, &key).unwrap())
            .build()
            .unwrap();
        assert!(node.get(url("/v1/tasks/a.1/logs")).send().await.is_err());
    }

    #[test]
    fn log_queries() {
        let q = |stream: Option<&str>, tail: Option<&str>, follow: Option<&str>| LogQuery {
            stream: stream.map(Into::into),
            tail: tail.map(Into::into),
            follow: follow.map(Into::into),
        };
        assert_eq!(
            parse_log_query(&q(None, None, None)),
            Ok((LogStream::Stdout, None, false))
        );
        assert_eq!(
            parse_log_query(&q(Some("stderr"), Some("3"), Some("true"))),
            Ok((LogStream::Stderr, Some(3), true))
        );
        assert_eq!(
            parse_log_query(&q(None, Some("all"), Some("1"))),
            Ok((LogStream::Stdout, None, true))
        );
        assert!(parse_log_query(&q(Some("both"), None, None)).is_err());
        assert!(parse_log_query(&q(None, Some("-1"), None)).is_err());
        assert!(parse_log_query(&q(None, None, Some("maybe"))).is_err());
    }

    #[test]
    fn renders_prometheus_text() {
        let samples = vec![
            TaskSample {
                app_id: "/prod/web".into(),
                task_id: "prod_web.1".into(),
                stats: TaskStats {
                    cpu_seconds: Some(1.5),
                    memory_usage_bytes: Some(1024),
                    memory_limit_bytes: Some(4096),
                    network_receive_bytes: Some(10),
                    network_transmit_bytes: Some(20),
                    source: Some(stats::Source::CgroupV2),
                },
                restarts: 0,
                healthy: Some(true),
            },
            TaskSample {
                app_id: "/a\"b".into(),
                task_id: "a.2".into(),
                stats: TaskStats {
                    cpu_seconds: Some(0.25),
                    ..Default::default()
                },
                restarts: 0,
                healthy: None,
            },
        ];
        let conditions = vec![NodeCondition {
            kind: "DiskPressure".into(),
            ok: false,
            message: "low".into(),
        }];
        let text = render_metrics("n1", &samples, &conditions);
        let l = r#"{app_id="/prod/web",task_id="prod_web.1",node="n1"}"#;
        for line in [
            "# TYPE berth_task_cpu_seconds_total counter".to_string(),
            format!("berth_task_cpu_seconds_total{l} 1.5"),
            format!("berth_task_memory_usage_bytes{l} 1024"),
            format!("berth_task_memory_limit_bytes{l} 4096"),
            format!("berth_task_network_receive_bytes_total{l} 10"),
            format!("berth_task_network_transmit_bytes_total{l} 20"),
            format!("berth_task_restarts_total{l} 0"),
            format!("berth_task_healthy{l} 1"),
            r#"berth_task_cpu_seconds_total{app_id="/a\"b",task_id="a.2",node="n1"} 0.25"#
                .to_string(),
            r#"berth_node_condition_ok{node="n1",condition="DiskPressure"} 0"#.to_string(),
        ] {
            assert!(
                text.lines().any(|x| x == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains(r#"berth_task_memory_limit_bytes{app_id="/a"#));
        assert!(!text.contains(r#"berth_task_healthy{app_id="/a"#));
    }
}
