//! Authentication and authorization of every request.
//!
//! Credentials, in the `Authorization` header:
//! - `Bearer <token>`: a Berth token (`berth token create`), or a node's credential;
//! - `Basic base64(user:password)`: a user of `--http-credentials` (cluster-admin, Marathon's
//!   `--http_credentials`), or any user name with a Berth token as the password (so clients
//!   that only speak basic auth, marathon-python and the Jenkins plugin, can use scoped tokens);
//! - `token=<token>` (the DC/OS form some Marathon clients send).
//!
//! Tokens are random 256-bit secrets; the store keeps only their SHA-256. Nodes join with a
//! join token and receive a credential of their own, valid for their node id only.
//!
//! [`authorize`] is the middleware: it identifies the caller, checks the route's
//! [`Permission`] (see [`requirement`]), records writes in the audit log and hands the
//! [`Principal`] to the handlers, whose operations check app-admin scopes per app id.

use crate::Shared;
use crate::audit::AuditRecord;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_core::rbac::{Permission, Role, Scopes, constant_time_eq};
use berth_store::{Store, StoreExt};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Store keys of the auth records.
pub const K_TOKENS: &str = "/berth/auth/tokens/";
pub const K_NODE_CREDENTIALS: &str = "/berth/auth/nodes/";

/// Prefix of user and join tokens: `bt_<id>_<secret>`.
const TOKEN_PREFIX: &str = "bt_";
/// Prefix of node credentials: `bn_<secret>`.
const NODE_PREFIX: &str = "bn_";

/// Most tokens kept (each is a few hundred bytes in memory).
pub const MAX_TOKENS: usize = 10_000;

/// How the server authenticates.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Off only in `berth dev` on loopback: every caller is a cluster-admin.
    pub enabled: bool,
    /// `user:password` pairs of `--http-credentials`, all cluster-admins.
    pub basic_users: Vec<(String, String)>,
    /// Where the first start writes `admin.token` and `join.token`.
    pub data_dir: Option<PathBuf>,
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenPurpose {
    /// A user (person or CI) with a role.
    User,
    /// An agent joining: it may only register a node and so obtain that node's credential.
    NodeJoin,
}

/// A stored token: everything but its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub purpose: TokenPurpose,
    pub role: Role,
    #[serde(default)]
    pub scopes: Scopes,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub created_at: i64,
    #[serde(default)]
    pub expires_at: Option<i64>,
    pub created_by: String,
}

impl TokenRecord {
    /// The API's view: no hash.
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "purpose": self.purpose,
            "role": self.role,
            "scopes": self.scopes,
            "createdAt": berth_core::time::format_millis(self.created_at),
            "expiresAt": self.expires_at.map(berth_core::time::format_millis),
            "createdBy": self.created_by,
        })
    }
}

/// A node's credential as stored: the server presents the same secret when it calls the
/// node's agent, so it keeps it (the store is the server's own trust root anyway).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredential {
    pub node: String,
    pub secret: String,
    pub issued_at: i64,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Principal {
    /// Authentication is off (`berth dev` on loopback): allowed everything. Also what code
    /// outside any request (controllers, tests) acts as.
    #[default]
    Anonymous,
    /// A user: a token holder or a `--http-credentials` user.
    User {
        name: String,
        role: Role,
        scopes: Scopes,
        /// The token used, if any (basic users have none).
        token_id: Option<String>,
    },
    /// An agent holding the credential of this node.
    Node(String),
    /// An agent holding a join token (this token id).
    Joining(String),
}

impl Principal {
    /// The name recorded in the audit log.
    pub fn name(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous (auth off)".into(),
            Principal::User { name, .. } => name.clone(),
            Principal::Node(n) => format!("node:{n}"),
            Principal::Joining(id) => format!("join-token:{id}"),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Anonymous => Some(Role::ClusterAdmin),
            Principal::User { role, .. } => Some(*role),
            _ => None,
        }
    }

    /// Whether the caller may use `p` at all (scopes are checked per object).
    pub fn has(&self, p: Permission) -> bool {
        self.role().is_some_and(|r| r.grants(p))
    }

    /// Checks `p` on the app or group `id`: 403 naming the permission and the id otherwise.
    pub fn check_on(&self, p: Permission, id: &str) -> Result<(), ApiError> {
        match self {
            Principal::Anonymous => Ok(()),
            Principal::User { role, scopes, .. } => {
                if !role.grants(p) {
                    Err(forbidden(self, p, None))
                } else if role.is_scoped() && !scopes.covers(id) {
                    Err(forbidden(self, p, Some(id)))
                } else {
                    Ok(())
                }
            }
            _ => Err(forbidden(self, p, Some(id))),
        }
    }
}

fn forbidden(who: &Principal, p: Permission, on: Option<&str>) -> ApiError {
    let role = who.role().map_or("no role".to_string(), |r| r.to_string());
    let scope = match who {
        Principal::User { scopes, .. } if !scopes.0.is_empty() => {
            format!(" (scopes: {})", scopes.0.join(", "))
        }
        _ => String::new(),
    };
    ApiError::Forbidden(match on {
        Some(id) => format!(
            "permission denied: {} ({role}{scope}) lacks '{p}' on '{id}'",
            who.name()
        ),
        None => format!("permission denied: {} ({role}) lacks '{p}'", who.name()),
    })
}

/// Tokens and node credentials in memory, written through to the store.
pub struct AuthState {
    pub config: AuthConfig,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    /// Node id -> its credential.
    nodes: RwLock<HashMap<String, NodeCredential>>,
    /// SHA-256 of a node secret -> node id.
    node_by_hash: RwLock<HashMap<String, String>>,
    /// Serializes writes so the store and memory agree.
    write: tokio::sync::Mutex<()>,
}

/// Why the auth state could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("store: {0}")]
    Store(#[from] berth_store::StoreError),
    #[error("writing {0}: {1}")]
    File(String, std::io::Error),
}

/// Hex SHA-256.
fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token as given to its holder, and its record.
pub struct NewToken {
    pub token: String,
    pub record: TokenRecord,
}

/// What a new token is for.
pub struct TokenSpec {
    pub name: String,
    pub purpose: TokenPurpose,
    pub role: Role,
    pub scopes: Scopes,
    pub expires_at: Option<i64>,
    pub created_by: String,
}

impl AuthState {
    pub async fn load(config: AuthConfig, store: &dyn Store) -> Result<Self, AuthError> {
        let mut tokens = HashMap::new();
        for kv in store.range(K_TOKENS).await?.0 {
            match serde_json::from_slice::<TokenRecord>(&kv.value) {
                Ok(t) => {
                    tokens.insert(t.id.clone(), t);
                }
                Err(e) => tracing::error!(key = kv.key, error = %e, "skipping undecodable token"),
            }
        }
        let mut nodes = HashMap::new();
        let mut node_by_hash = HashMap::new();
        for kv in store.range(K_NODE_CREDENTIALS).await?.0 {
            match serde_json::from_slice::<NodeCredential>(&kv.value) {
                Ok(c) => {
                    node_by_hash.insert(sha256_hex(&c.secret), c.node.clone());
                    nodes.insert(c.node.clone(), c);
                }
                Err(e) => {
                    tracing::error!(key = kv.key, error = %e, "skipping undecodable node credential")
                }
            }
        }
        Ok(Self {
            config,
            tokens: RwLock::new(tokens),
            nodes: RwLock::new(nodes),
            node_by_hash: RwLock::new(node_by_hash),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// On a store without tokens (the first start): creates the admin and join tokens and
    /// writes them to `admin.token` and `join.token` (mode 0600) in the data dir.
    pub async fn bootstrap(&self, store: &dyn Store) -> Result<(), AuthError> {
        if !self.config.enabled || !self.tokens.read().is_empty() {
            return Ok(());
        }
        let Some(dir) = self.config.data_dir.clone() else {
            return Ok(());
        };
        for (file, purpose, name) in [
            ("admin.token", TokenPurpose::User, "admin"),
            ("join.token", TokenPurpose::NodeJoin, "join"),
        ] {
            let t = self
                .create_token(
                    store,
                    TokenSpec {
                        name: name.into(),
                        purpose,
                        role: if purpose == TokenPurpose::User {
                            Role::ClusterAdmin
                        } else {
                            Role::Viewer
                        },
                        scopes: Scopes::default(),
                        expires_at: None,
                        created_by: "berth server (first start)".into(),
                    },
                )
                .await?;
            let path = dir.join(file);
            write_secret_file(&path, &t.token)
                .map_err(|e| AuthError::File(path.display().to_string(), e))?;
            tracing::warn!(path = %path.display(), "first start: {name} token written (readable by its owner only)");
        }
        Ok(())
    }

    pub async fn create_token(
        &self,
        store: &dyn Store,
        spec: TokenSpec,
    ) -> Result<NewToken, AuthError> {
        let id = random_hex(6);
        let secret = random_hex(32);
        let record = TokenRecord {
            id: id.clone(),
            name: spec.name,
            purpose: spec.purpose,
            role: spec.role,
            scopes: spec.scopes,
            secret_sha256: sha256_hex(&secret),
            created_at: berth_core::time::now_millis(),
            expires_at: spec.expires_at,
            created_by: spec.created_by,
        };
        let _w = self.write.lock().await;
        store.put_json(format!("{K_TOKENS}{id}"), &record).await?;
        self.tokens.write().insert(id.clone(), record.clone());
        Ok(NewToken {
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            record,
        })
    }

    pub fn token_count(&self) -> usize {
        self.tokens.read().len()
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self.tokens.read().values().cloned().collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Revokes a token at once. `false` when there is no such token.
    pub async fn revoke(&self, store: &dyn Store, id: &str) -> Result<bool, AuthError> {
        let _w = self.write.lock().await;
        if !self.tokens.read().contains_key(id) {
            return Ok(false);
        }
        store.delete(format!("{K_TOKENS}{id}")).await?;
        self.tokens.write().remove(id);
        Ok(true)
    }

    /// Issues a new credential for `node` (replacing any older one) and returns its secret.
    pub async fn issue_node_credential(
        &self,
        store: &dyn Store,
        node: &str,
    ) -> Result<String, AuthError> {
        let secret = format!("{NODE_PREFIX}{}", random_hex(32));
        let cred = NodeCredential {
            node: node.to_string(),
            secret: secret.clone(),
            issued_at: berth_core::time::now_millis(),
        };
        let _w = self.write.lock().await;
        store
            .put_json(format!("{K_NODE_CREDENTIALS}{node}"), &cred)
            .await?;
        let old = self.nodes.write().insert(node.to_string(), cred);
        let mut by_hash = self.node_by_hash.write();
        if let Some(old) = old {
            by_hash.remove(&sha256_hex(&old.secret));
        }
        by_hash.insert(sha256_hex(&secret), node.to_string());
        Ok(secret)
    }

    pub fn has_node_credential(&self, node: &str) -> bool {
        self.nodes.read().contains_key(node)
    }

    /// The secret the server presents when it calls `node`'s agent.
    pub fn node_secret(&self, node: &str) -> Option<String> {
        self.nodes.read().get(node).map(|c| c.secret.clone())
    }

    /// Who sent these headers. `Ok(None)`: no credentials at all.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        if !self.config.enabled {
            return Ok(Some(Principal::Anonymous));
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            // Consul clients (consul-template, py-consul) send their token in a header of
            // their own; `?token=` is turned into it by [`authorize`].
            if let Some(token) = headers.get(CONSUL_TOKEN_HEADER) {
                let token = token
                    .to_str()
                    .map_err(|_| unauthorized("the X-Consul-Token header is not valid text"))?;
                return self.by_secret(token.trim()).map(Some);
            }
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not valid text"))?
            .trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            self.by_secret(rest).map(Some)
        } else if scheme.eq_ignore_ascii_case("basic") {
            self.by_basic(rest).map(Some)
        } else if let Some(t) = value.strip_prefix("token=") {
            self.by_secret(t.trim()).map(Some)
        } else {
            Err(unauthorized(
                "unsupported Authorization scheme (use Bearer <token> or Basic)",
            ))
        }
    }

    fn by_basic(&self, encoded: &str) -> Result<Principal, ApiError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| unauthorized("basic credentials are not valid base64"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| unauthorized("basic credentials are not valid UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| unauthorized("basic credentials must be user:password"))?;
        // Every configured user is compared, so timing does not tell which names exist.
        let mut matched = false;
        for (u, p) in &self.config.basic_users {
            let ok = constant_time_eq(u.as_bytes(), user.as_bytes())
                & constant_time_eq(p.as_bytes(), password.as_bytes());
            matched |= ok;
        }
        if matched {
            return Ok(Principal::User {
                name: user.to_string(),
                role: Role::ClusterAdmin,
                scopes: Scopes::default(),
                token_id: None,
            });
        }
        if password.starts_with(TOKEN_PREFIX) {
            return self.by_secret(password);
        }
        Err(unauthorized("wrong user name or password"))
    }

    fn by_secret(&self, secret: &str) -> Result<Principal, ApiError> {
        if secret.starts_with(NODE_PREFIX) {
            let hash = sha256_hex(secret);
            return match self.node_by_hash.read().get(&hash) {
                Some(node) => Ok(Principal::Node(node.clone())),
                None => Err(unauthorized("unknown or replaced node credential")),
            };
        }
        let Some((id, secret)) = secret
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.split_once('_'))
        else {
            return Err(unauthorized("malformed token"));
        };
        let tokens = self.tokens.read();
        let Some(t) = tokens.get(id) else {
            return Err(unauthorized("unknown or revoked token"));
        };
        if !constant_time_eq(sha256_hex(secret).as_bytes(), t.secret_sha256.as_bytes()) {
            return Err(unauthorized("unknown or revoked token"));
        }
        if t.expires_at
            .is_some_and(|e| e <= berth_core::time::now_millis())
        {
            return Err(unauthorized(format!("token '{}' has expired", t.id)));
        }
        Ok(match t.purpose {
            TokenPurpose::NodeJoin => Principal::Joining(t.id.clone()),
            TokenPurpose::User => Principal::User {
                name: format!("{} (token {})", t.name, t.id),
                role: t.role,
                scopes: t.scopes.clone(),
                token_id: Some(t.id.clone()),
            },
        })
    }
}

fn unauthorized(msg: impl Into<String>) -> ApiError {
    ApiError::Unauthorized(msg.into())
}

/// Writes `content` to `path`, readable and writable by its owner only.
pub fn write_secret_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The header Consul clients carry their ACL token in.
pub const CONSUL_TOKEN_HEADER: &str = "x-consul-token";

/// Consul's read API (`/v1/catalog`, `/v1/health`) also takes the token as `?token=`.
fn consul_query_token(path: &str, query: Option<&str>) -> Option<String> {
    if !(path.starts_with("/v1/catalog/") || path.starts_with("/v1/health/")) {
        return None;
    }
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone (`/ping`).
    Public,
    /// The agent protocol: a node credential (a join token for `register`).
    Agent,
    /// A user holding this permission.
    User(Permission),
}

/// The requirement of a route. Unknown paths need a reader (so they answer 401 to strangers
/// and 404 to users); unknown writes need a cluster-admin.
pub fn requirement(method: &Method, path: &str) -> Requirement {
    use Permission::*;
    if path == "/ping" {
        return Requirement::Public;
    }
    if path.starts_with("/api/v1/agent/") {
        return Requirement::Agent;
    }
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if matches!(*method, Method::GET | Method::HEAD) {
        return Requirement::User(
            if (path.starts_with("/api/v1/tasks/") || path.starts_with("/api/v1/jobs/"))
                && path.ends_with("/logs")
            {
                ReadLogs
            } else if under("/api/v1/audit") {
                ReadAudit
            } else if under("/api/v1/tokens") {
                ClusterWrite
            } else {
                Read
            },
        );
    }
    Requirement::User(
        if under("/v2/apps")
            || under("/v2/groups")
            || under("/v2/tasks")
            || under("/v2/queue")
            || under("/v2/deployments")
            || under("/api/v1/deployments")
            || under("/api/v1/jobs")
            || under("/scheduler")
            || under("/v1/scheduler")
        {
            AppWrite
        } else if under("/api/v1/nodes") {
            NodeWrite
        } else if under("/api/v1/secrets") {
            SecretWrite
        } else {
            ClusterWrite
        },
    )
}

/// The middleware: 401 without valid credentials (but on `/ping`), 403 without the route's
/// permission; the principal goes into the request's extensions; writes are audited.
pub async fn authorize(
    axum::extract::State(s): axum::extract::State<Shared>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let need = requirement(&method, &path);
    if let Some(token) = consul_query_token(&path, req.uri().query())
        && !req.headers().contains_key(CONSUL_TOKEN_HEADER)
        && let Ok(v) = axum::http::HeaderValue::from_str(&token)
    {
        req.headers_mut().insert(CONSUL_TOKEN_HEADER, v);
    }
    let audited = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        && matches!(need, Requirement::User(_));
    let (principal, decision) = match s.auth.identify(req.headers()) {
        Err(e) => (
            None,
            if need == Requirement::Public {
                Ok(())
            } else {
                Err(e)
            },
        ),
        Ok(p) => {
            let d = decide(p.as_ref(), need);
            (p, d)
        }
    };
    let response = match decision {
        Ok(()) => {
            if let Some(p) = &principal {
                req.extensions_mut().insert(p.clone());
            }
            next.run(req).await
        }
        Err(e) => {
            let mut resp = e.into_response();
            if resp.status() == axum::http::StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Basic realm=\"berth\""),
                );
            }
            resp
        }
    };
    if audited {
        s.audit.record(AuditRecord {
            at: berth_core::time::now_millis(),
            who: principal
                .as_ref()
                .map_or_else(|| "unauthenticated".to_string(), Principal::name),
            role: principal.as_ref().and_then(Principal::role),
            client,
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
        });
    }
    response
}

/// Whether `who` (`None`: no credentials) may use a route that needs `need`.
fn decide(who: Option<&Principal>, need: Requirement) -> Result<(), ApiError> {
    match (who, need) {
        (_, Requirement::Public) => Ok(()),
        (None, _) => Err(unauthorized(
            "authentication required: send Authorization: Bearer <token> (berth token create), \
             or basic credentials",
        )),
        (Some(p), Requirement::Agent) => match p {
            Principal::Anonymous | Principal::Node(_) | Principal::Joining(_) => Ok(()),
            Principal::User { .. } => Err(ApiError::Forbidden(format!(
                "permission denied: {} is a user; the agent protocol takes a node credential \
                 (agents join with the join token)",
                p.name()
            ))),
        },
        (Some(p), Requirement::User(perm)) if p.has(perm) => Ok(()),
        (Some(p), Requirement::User(perm)) => Err(forbidden(p, perm, None)),
    }
}

/// The caller, for handlers: the middleware's principal; without the middleware (unit tests
/// of the router) nobody is checked.
pub struct Caller(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<Principal>()
                .cloned()
                .unwrap_or(Principal::Anonymous),
        ))
    }
}

pub type SharedAuth = Arc<AuthState>;

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::RedbStore;

    fn header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    async fn state() -> (AuthState, RedbStore) {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = RedbStore::open(&dir).unwrap();
        let config = AuthConfig {
            enabled: true,
            basic_users: vec![("ops".into(), "s3cret".into())],
            data_dir: None,
        };
        (AuthState::load(config, &store).await.unwrap(), store)
    }

    fn spec(role: Role, scopes: &[&str], expires_at: Option<i64>) -> TokenSpec {
        TokenSpec {
            name: "ci".into(),
            purpose: TokenPurpose::User,
            role,
            scopes: Scopes(scopes.iter().map(|s| s.to_string()).collect()),
            expires_at,
            created_by: "test".into(),
        }
    }

    #[tokio::test]
    async fn tokens_authenticate_until_revoked_and_survive_a_reload() {
        let (auth, store) = state().await;
        let t = auth
            .create_token(&store, spec(Role::AppAdmin, &["prod"], None))
            .await
            .unwrap();
        let p = auth
            .identify(&header(&format!("Bearer {}", t.token)))
            .unwrap()
            .unwrap();
        assert_eq!(p.role(), Some(Role::AppAdmin));
        assert!(p.check_on(Permission::AppWrite, "/prod/web").is_ok());
        let denied = p.check_on(Permission::AppWrite, "/dev/web").unwrap_err();
        assert!(denied.to_string().contains("apps:write"), "{denied}");
        // The store keeps only the hash.
        let raw = store.range(K_TOKENS).await.unwrap().0;
        let secret = t.token.rsplit('_').next().unwrap();
        assert!(!String::from_utf8_lossy(&raw[0].value).contains(secret));
        let reloaded = AuthState::load(auth.config.clone(), &store).await.unwrap();
        assert!(
            reloaded
                .identify(&header(&format!("Bearer {}", t.token)))
                .is_ok()
        );
        assert!(auth.revoke(&store, &t.record.id).await.unwrap());
        assert!(
            auth.identify(&header(&format!("Bearer {}", t.token)))
                .is_err()
        );
        // A wrong secret for a real id is refused.
        let forged = format!("Bearer bt_{}_{}", t.record.id, "0".repeat(64));
        assert!(auth.identify(&header(&forged)).is_err());
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let (auth, store) = state().await;
        let t = auth
            .create_token(&store, spec(Role::Viewer, &[], Some(1)))
            .await
            .unwrap();
        let e = auth
            .identify(&header(&format!("Bearer {}", t.token)))
            .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[tokio::test]
    async fn basic_auth_takes_configured_users_and_tokens_as_passwords() {
        let (auth, store) = state().await;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let p = auth
            .identify(&header(&format!("Basic {}", b64("ops:s3cret"))))
            .unwrap()
            .unwrap();
        assert_eq!(p.role(), Some(Role::ClusterAdmin));
        assert!(
            auth.identify(&header(&format!("Basic {}", b64("ops:wrong"))))
                .is_err()
        );
        let t = auth
            .create_token(&store, spec(Role::Viewer, &[], None))
            .await
            .unwrap();
        let p = auth
            .identify(&header(&format!(
                "Basic {}",
                b64(&format!("x:{}", t.token))
            )))
            .unwrap()
            .unwrap();
        assert_eq!(p.role(), Some(Role::Viewer));
        let p = auth
            .identify(&header(&format!("token={}", t.token)))
            .unwrap()
            .unwrap();
        assert_eq!(p.role(), Some(Role::Viewer));
        assert!(auth.identify(&header("Negotiate abc")).is_err());
        assert!(auth.identify(&HeaderMap::new()).unwrap().is_none());
    }

    #[tokio::test]
    async fn node_credentials_name_their_node_and_replacing_one_retires_the_old() {
        let (auth, store) = state().await;
        let first = auth.issue_node_credential(&store, "n1").await.unwrap();
        let p = auth
            .identify(&header(&format!("Bearer {first}")))
            .unwrap()
            .unwrap();
        assert_eq!(p, Principal::Node("n1".into()));
        assert!(!p.has(Permission::Read), "a node is not a user");
        let second = auth.issue_node_credential(&store, "n1").await.unwrap();
        assert!(auth.identify(&header(&format!("Bearer {first}"))).is_err());
        assert!(auth.identify(&header(&format!("Bearer {second}"))).is_ok());
        assert_eq!(auth.node_secret("n1"), Some(second));
    }

    #[test]
    fn routes_need_what_their_kind_of_change_needs() {
        use Permission::*;
        let r = |m: Method, p: &str| requirement(&m, p);
        assert_eq!(r(Method::GET, "/ping"), Requirement::Public);
        assert_eq!(
            r(Method::POST, "/api/v1/agent/register"),
            Requirement::Agent
        );
        assert_eq!(r(Method::GET, "/v2/apps"), Requirement::User(Read));
        assert_eq!(r(Method::POST, "/v2/apps"), Requirement::User(AppWrite));
        assert_eq!(
            r(Method::DELETE, "/v2/groups/prod"),
            Requirement::User(AppWrite)
        );
        assert_eq!(
            r(Method::POST, "/api/v1/nodes/n1/drain"),
            Requirement::User(NodeWrite)
        );
        assert_eq!(
            r(Method::GET, "/api/v1/tasks/t1/logs"),
            Requirement::User(ReadLogs)
        );
        assert_eq!(
            r(Method::GET, "/api/v1/tokens"),
            Requirement::User(ClusterWrite)
        );
        assert_eq!(
            r(Method::DELETE, "/v2/leader"),
            Requirement::User(ClusterWrite)
        );
        assert_eq!(
            r(Method::POST, "/something/new"),
            Requirement::User(ClusterWrite)
        );
    }
}
