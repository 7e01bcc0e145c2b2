//! A server that does not lead (several servers on etcd): it answers `/ping` and
//! `/v2/leader` itself and proxies every other request to the leader, as Marathon's
//! standby masters do (they proxy, they do not redirect, so clients and agents may talk to
//! any server). Bodies stream both ways, so agents' long polls and `/v2/events` pass through.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_store::EtcdStore;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the leader publishes under the leader key.
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The server's identity (its advertised address and process start).
    pub id: String,
    /// `host:port` as Marathon's `/v2/leader` shows it.
    pub leader: String,
    /// Base URL requests are proxied to.
    pub url: String,
}

impl LeaderRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        serde_json::from_slice(raw).ok()
    }
}

/// The client requests are proxied with: no overall timeout (long polls and event streams
/// last), a short one to connect.
pub fn proxy_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .build()
}

struct Follower {
    store: EtcdStore,
    /// This server's id: a record naming it is a leftover of this server's previous run.
    me: String,
    client: reqwest::Client,
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

async fn leader_record(f: &Follower) -> Result<LeaderRecord, Response> {
    // etcd without quorum does not answer: say so soon rather than at its own timeout.
    let raw = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        berth_store::election::current_leader(&f.store),
    )
    .await
    .map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store (etcd) did not say who leads within 3 s: is a majority of its \
             members up?"
                .into(),
        )
    })?
    .map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store cannot tell the leader: {e}"),
        )
    })?;
    let Some(raw) = raw else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader is elected yet; try again in a few seconds".into(),
        ));
    };
    let record: LeaderRecord = serde_json::from_slice(&raw).map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the leader record is unreadable: {e}"),
        )
    })?;
    if record.id == f.me {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the leader record is this server's previous run; a new leader is elected once \
             its lease expires"
                .into(),
        ));
    }
    Ok(record)
}

async fn ping() -> &'static str {
    "pong"
}

async fn leader(State(f): State<Arc<Follower>>) -> Response {
    match leader_record(&f).await {
        Ok(r) => axum::Json(serde_json::json!({ "leader": r.leader })).into_response(),
        Err(e) => e,
    }
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

async fn proxy(State(f): State<Arc<Follower>>, req: Request) -> Response {
    let record = match leader_record(&f).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let client_ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("{}{path}", record.url.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    if let Some(ip) = client_ip
        && let Ok(v) = HeaderValue::from_str(&ip)
    {
        headers.append(HeaderName::from_static("x-forwarded-for"), v);
    }
    let upstream = f
        .client
        .request(parts.method, &url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match upstream {
        Ok(r) => {
            let mut out = Response::builder().status(r.status());
            if let Some(h) = out.headers_mut() {
                copy_headers(r.headers(), h);
            }
            out.body(Body::from_stream(r.bytes_stream()))
                .unwrap_or_else(|e| {
                    error(
                        StatusCode::BAD_GATEWAY,
                        format!("proxying to the leader: {e}"),
                    )
                })
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the leader {} did not answer: {}",
                record.leader,
                berth_tls::client::error_chain(&e)
            ),
        ),
    }
}

/// The follower's router.
pub fn router(store: EtcdStore, me: String, client: reqwest::Client) -> Router {
    let f = Arc::new(Follower { store, me, client });
    Router::new()
        .route("/ping", axum::routing::get(ping))
        // GET answers from the store; DELETE (abdicate) goes to the leader.
        .route("/v2/leader", axum::routing::get(leader).fallback(proxy))
        .fallback(proxy)
        .with_state(f)
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut().insert(
                    HeaderName::from_static("x-berth-role"),
                    HeaderValue::from_static("follower"),
                );
                if r.headers().get(header::CONTENT_TYPE).is_none()
                    && r.status() == StatusCode::SERVICE_UNAVAILABLE
                {
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                r
            },
        ))
}

/// Serves `router` on `listener` (HTTPS with `tls`) until the returned handle is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<crate::tls::ServerTls>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(tls) = tls {
            if let Err(e) = crate::tls::serve(listener, router, tls).await {
                tracing::error!(error = %e, "follower HTTPS server stopped");
            }
            return;
        }
        let svc = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, svc).await {
            tracing::error!(error = %e, "follower HTTP server stopped");
        }
    })
}
