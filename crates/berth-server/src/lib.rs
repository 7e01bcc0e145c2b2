//! Berth's control plane: the Marathon v2 API and Berth's own API over one in-memory model
//! of the cluster, written through to a durable store, with level-triggered controllers that
//! converge observed state (tasks reported by agents) to desired state (apps).

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod controller;
pub mod dns;
pub mod error;
pub mod event_hub;
pub mod follower;
pub mod jobs;
mod keepalive;
pub mod ops;
pub mod render;
pub mod secrets;
pub mod state;
pub mod tenancy;
pub mod tls;

use berth_core::event::Event;
use berth_store::Store;
use parking_lot::{Mutex, RwLock};
use state::{Changes, Cluster, PersistRequest};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

pub use error::{ApiError, ApiResult};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `host:port` other parties should use to reach this server (leader address).
    pub advertise: String,
    /// A node that has not reported for this long is unreachable.
    pub node_timeout: Duration,
    /// How often controllers run even when nothing woke them (level-triggered safety net).
    pub reconcile_interval: Duration,
    /// Seed for the scheduler's randomness.
    pub seed: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Event stream subscribers and their queues.
    pub events: event_hub::EventLimits,
    /// Agent long-polls held open at once; one more is refused with 429.
    pub max_long_polls: usize,
    /// Authentication (on for `berth server`), and where its files and the audit log live.
    pub auth: auth::AuthConfig,
    /// HTTPS for the API and for calls to agents (`None`: plain HTTP); see [`tls`].
    pub tls: Option<Arc<tls::ServerTls>>,
    /// The secrets key (32 bytes, mode 0600), created when missing. `None`: a random key
    /// in memory, so secrets do not survive a restart (tests, simulations).
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// The default task user and the policy of namespaces without an object.
    pub tasks: tenancy::TaskDefaults,
    /// The leader's fence (several servers on etcd): every store write carries it.
    pub fence: Option<berth_store::Compare>,
    /// Leadership, when several servers share the store: `/v2/leader` and `DELETE
    /// /v2/leader` use it.
    pub leadership: Option<LeaderInfo>,
    /// The etcd cluster the state is in (`GET /api/v1/cluster` shows its members).
    pub etcd: Option<berth_store::EtcdStore>,
    /// DNS over the catalog (`None`: no DNS server).
    pub dns: Option<dns::DnsConfig>,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            advertise: listen.to_string(),
            node_timeout: Duration::from_secs(20),
            reconcile_interval: Duration::from_millis(500),
            seed: 0x5eed,
            max_body_bytes: 2 * 1024 * 1024,
            events: event_hub::EventLimits::default(),
            max_long_polls: 20_000,
            auth: auth::AuthConfig::default(),
            tls: None,
            secrets_key_file: None,
            tasks: tenancy::TaskDefaults::default(),
            fence: None,
            leadership: None,
            dns: None,
            etcd: None,
        }
    }
}

/// Shared by every handler and controller.
pub struct Inner {
    pub state: RwLock<Cluster>,
    pub store: Arc<dyn Store>,
    persist: mpsc::UnboundedSender<PersistRequest>,
    pub events: event_hub::EventHub,
    /// Wakes the controller after a change.
    pub wake: Notify,
    /// Wakes the job controller after a change to jobs or their runs.
    pub job_wake: Notify,
    pub config: ServerConfig,
    pub started_at: i64,
    /// The last rendering of a read-heavy listing, reused while the state is unchanged.
    pub render_cache: RenderCache,
    /// Renderings of single apps, reused while the app is unchanged.
    pub app_cache: AppCache,
    /// Agent long-polls waiting now.
    pub long_polls: std::sync::atomic::AtomicUsize,
    /// Tokens and node credentials.
    pub auth: auth::AuthState,
    /// Every write users sent.
    pub audit: audit::AuditLog,
    /// Seals and opens the secret store's values.
    pub secrets_key: secrets::SecretKey,
    /// Service indexes and the signal blocking queries wait on.
    pub catalog: catalog::Catalog,
}

pub type Shared = Arc<Inner>;

/// Cached renderings of single apps (`GET /v2/apps/{id}`), each valid while the app's
/// [`Cluster::app_stamp`] is unchanged.
#[derive(Default)]
pub struct AppCache {
    slots: Mutex<HashMap<(String, String), (u64, bytes::Bytes)>>,
}

impl AppCache {
    /// Entries beyond this are dropped all at once (apps x distinct queries).
    const MAX_ENTRIES: usize = 10_000;

    pub fn get(&self, app_id: &str, query: &str, stamp: u64) -> Option<bytes::Bytes> {
        let slots = self.slots.lock();
        match slots.get(&(app_id.to_string(), query.to_string())) {
            Some((s, body)) if *s == stamp => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, app_id: String, query: String, stamp: u64, body: bytes::Bytes) {
        let mut slots = self.slots.lock();
        if slots.len() >= Self::MAX_ENTRIES {
            slots.clear();
        }
        slots.insert((app_id, query), (stamp, body));
    }
}

/// One cached response body, valid for one state revision and one query.
#[derive(Default)]
pub struct RenderCache {
    slot: Mutex<Option<(u64, String, bytes::Bytes)>>,
    /// Held while rendering, so a burst of requests after a change renders once.
    pub gate: tokio::sync::Mutex<()>,
}

impl RenderCache {
    /// The cached body for `key` if it was rendered at `revision` or later.
    pub fn get(&self, revision: u64, key: &str) -> Option<bytes::Bytes> {
        match &*self.slot.lock() {
            Some((r, k, body)) if *r >= revision && k == key => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, revision: u64, key: String, body: bytes::Bytes) {
        let mut slot = self.slot.lock();
        // Never replace a newer rendering with an older one.
        if slot.as_ref().is_none_or(|(r, _, _)| *r <= revision) {
            *slot = Some((revision, key, body));
        }
    }
}

impl Inner {
    /// Runs one mutation: `f` validates and changes the in-memory model under the lock and
    /// records what to persist. Returns once the change is durable (or failed to be).
    /// `f` must return `Err` only before it has changed anything.
    pub async fn apply<R>(
        &self,
        f: impl FnOnce(&mut Cluster, &mut Changes) -> ApiResult<R>,
    ) -> ApiResult<R> {
        let mut ch = Changes::default();
        let (result, rx) = {
            let mut st = self.state.write();
            let r = f(&mut st, &mut ch)?;
            note_changes(&mut st, &ch);
            let rx = if ch.ops.is_empty() {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                let ops = std::mem::take(&mut ch.ops);
                // `ops` is emptied: remember that there was something to persist.
                ch.persisted = true;
                if self.persist.send(PersistRequest { ops, done: tx }).is_err() {
                    return Err(ApiError::Unavailable("the store writer has stopped".into()));
                }
                Some(rx)
            };
            (r, rx)
        };
        if let Some(rx) = rx {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.reload_after_failure().await;
                    return Err(ApiError::Unavailable(e));
                }
                Err(_) => return Err(ApiError::Unavailable("the store writer has stopped".into())),
            }
        }
        self.finish(ch);
        Ok(result)
    }

    /// Post-commit effects: publish tasks to agents, emit events, wake controllers.
    fn finish(&self, mut ch: Changes) {
        let changed = !ch.new_tasks.is_empty()
            || !ch.nodes.is_empty()
            || !ch.events.is_empty()
            || ch.persisted;
        if !ch.new_tasks.is_empty() || !ch.nodes.is_empty() {
            self.state.write().committed(&ch);
        }
        for e in std::mem::take(&mut ch.events) {
            self.events.publish(e);
        }
        if changed {
            self.wake.notify_one();
            self.catalog.notify(self.state.read().revision);
        }
        if ch.jobs {
            self.job_wake.notify_one();
        }
    }

    /// Memory may be ahead of the store after a failed write: rebuild it from the store.
    async fn reload_after_failure(&self) {
        match Cluster::load(self.store.as_ref(), self.config.seed).await {
            Ok(fresh) => {
                let mut st = self.state.write();
                let feeds = std::mem::take(&mut st.feeds);
                let revision = st.revision;
                let defaults = st.task_defaults.clone();
                *st = fresh;
                st.task_defaults = defaults;
                st.feeds = feeds;
                st.revision = revision + 1;
                // Every app's cached rendering is stale now.
                st.all_apps_revision = st.revision;
                st.reset_feeds();
                drop(st);
                self.catalog.notify(revision + 1);
                tracing::warn!("state reloaded from the store after a failed write");
            }
            Err(e) => tracing::error!(error = %e, "reloading state failed"),
        }
    }

    pub fn emit(&self, e: Event) {
        self.events.publish(e);
    }
}

/// Marks what a mutation touched: apps for the controller's next pass, and a new revision
/// for cached renderings when anything visible changed.
fn note_changes(st: &mut Cluster, ch: &Changes) {
    if ch.ops.is_empty() && ch.events.is_empty() && ch.nodes.is_empty() {
        return;
    }
    st.revision += 1;
    let revision = st.revision;
    st.dirty_apps.extend(ch.apps.iter().cloned());
    for app in &ch.apps {
        st.app_revisions.insert(app.clone(), revision);
    }
    for op in &ch.ops {
        let key = match op {
            berth_store::Op::Put { key, .. } | berth_store::Op::Delete { key } => key,
            berth_store::Op::DeletePrefix { prefix } => prefix,
        };
        if let Some(app) = key
            .strip_prefix(state::K_APPS)
            .or_else(|| key.strip_prefix(state::K_DELAYS))
        {
            st.dirty_apps.insert(app.to_string());
            st.app_revisions.insert(app.to_string(), revision);
        } else if let Some(app) = key.strip_prefix(state::K_FAILURES) {
            st.app_revisions.insert(app.to_string(), revision);
        } else if let Some(id) = key.strip_prefix(state::K_DEPLOYMENTS) {
            // Only the apps the deployment affects (now, or when last written) show it.
            let mut apps = st.deployment_apps.remove(id).unwrap_or_default();
            if let Some(d) = st.deployments.get(id) {
                let now = d.affected_apps.clone();
                apps.extend(now.iter().cloned());
                st.deployment_apps.insert(id.to_string(), now);
            }
            for app in apps {
                st.app_revisions.insert(app, revision);
            }
        } else if let Some(node) = key.strip_prefix(state::K_NODES) {
            st.node_changed(node);
        } else if key.starts_with(state::K_NAMESPACES) {
            // A node selector or dedication changed: apps waiting for room try again.
            let waiting: Vec<String> = st.unplaced.keys().cloned().collect();
            st.dirty_apps.extend(waiting);
        } else if key.starts_with(state::K_TASKS)
            && matches!(op, berth_store::Op::Delete { .. })
            && !st.unplaced.is_empty()
        {
            // A task is gone and its resources are free: apps waiting for room try again.
            let waiting: Vec<String> = st.unplaced.keys().cloned().collect();
            st.dirty_apps.extend(waiting);
        }
    }
}

/// A running control plane.
pub struct Server {
    pub shared: Shared,
    pub addr: SocketAddr,
    /// Where DNS is served (UDP and TCP), when it is.
    pub dns_addr: Option<SocketAddr>,
}

impl Server {
    /// Loads state from the store, binds the listener and starts controllers.
    pub async fn start(
        mut config: ServerConfig,
        store: Arc<dyn Store>,
    ) -> Result<Server, StartError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen.to_string(), e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen.to_string(), e.to_string()))?;
        if config.listen.port() == 0 {
            // The advertised address follows the real port when port 0 was asked for.
            config.advertise = addr.to_string();
        }
        let dns_sockets = match &config.dns {
            Some(d) => Some(
                dns::bind(d.listen)
                    .await
                    .map_err(|e| StartError::Bind(format!("{} (DNS)", d.listen), e.to_string()))?,
            ),
            None => None,
        };
        state::check_store_format(store.as_ref()).await?;
        let mut cluster = Cluster::load(store.as_ref(), config.seed)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let auth = auth::AuthState::load(config.auth.clone(), store.as_ref())
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        auth.bootstrap(store.as_ref())
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let audit = match &config.auth.data_dir {
            Some(dir) => audit::AuditLog::open(dir)
                .map_err(|e| StartError::Store(format!("opening the audit log: {e}")))?,
            None => audit::AuditLog::in_memory(),
        };
        if !config.auth.enabled {
            tracing::warn!("authentication is off: every caller may do everything");
        }
        let secrets_key = open_secrets_key(config.secrets_key_file.as_deref(), &cluster)?;
        cluster.task_defaults = config.tasks.clone();
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(state::run_persister(
            store.clone(),
            config.fence.clone(),
            prx,
        ));
        let events = event_hub::EventHub::new(config.events);
        let shared = Arc::new(Inner {
            state: RwLock::new(cluster),
            store,
            persist: ptx,
            events,
            wake: Notify::new(),
            job_wake: Notify::new(),
            config,
            started_at: berth_core::time::now_millis(),
            render_cache: RenderCache::default(),
            app_cache: AppCache::default(),
            long_polls: Default::default(),
            auth,
            audit,
            secrets_key,
            catalog: catalog::Catalog::new(),
        });
        let app = api::router(shared.clone())
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                auth::authorize,
            ))
            .layer(axum::middleware::map_response(error::json_client_errors))
            .layer(axum::middleware::from_fn(keepalive::close_if_body_unread));
        let tls = shared.config.tls.clone();
        tokio::spawn(async move {
            if let Some(tls) = tls {
                if let Err(e) = tls::serve(listener, app, tls).await {
                    tracing::error!(error = %e, "HTTPS server stopped");
                }
                return;
            }
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        tokio::spawn(controller::run(shared.clone()));
        tokio::spawn(controller::jobs::run(shared.clone()));
        let dns_addr = match (dns_sockets, &shared.config.dns) {
            (Some(sockets), Some(d)) => {
                let addr = sockets.addr;
                dns::spawn(shared.clone(), sockets, d.zone.clone());
                Some(addr)
            }
            _ => None,
        };
        Ok(Server {
            shared,
            addr,
            dns_addr,
        })
    }
}

/// The secrets key from its file (created when missing), checked against every stored
/// secret: a key that does not open them (the file was replaced) stops the server.
fn open_secrets_key(
    file: Option<&std::path::Path>,
    cluster: &Cluster,
) -> Result<secrets::SecretKey, StartError> {
    let key = match file {
        Some(path) => {
            let (key, created) = secrets::SecretKey::load_or_create(path)
                .map_err(|e| StartError::SecretsKey(e.to_string()))?;
            if created {
                tracing::info!(
                    path = %path.display(),
                    "created the secrets key (back it up: without it the stored secrets cannot be read)"
                );
            }
            key
        }
        None => secrets::SecretKey::generate(),
    };
    let unreadable: Vec<String> = cluster
        .secrets
        .values()
        .filter_map(|s| key.open(s).err())
        .map(|e| e.to_string())
        .take(3)
        .collect();
    if !unreadable.is_empty() {
        return Err(StartError::SecretsKey(format!(
            "the secrets key{} does not open the stored secrets: {} (was the key file replaced? \
             restore it from a backup)",
            file.map(|p| format!(" in {}", p.display()))
                .unwrap_or_default(),
            unreadable.join("; ")
        )));
    }
    Ok(key)
}

/// What a leading server knows of its election.
#[derive(Debug, Clone)]
pub struct LeaderInfo {
    /// The revision this server won at (its fence).
    pub fence_revision: u64,
    /// Asks the process to give leadership up (`DELETE /v2/leader`).
    pub abdicate: tokio::sync::mpsc::UnboundedSender<()>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    SecretsKey(String),
    #[error("cannot load state from the store: {0}")]
    Store(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, String),
    /// The store holds data this version cannot read (a newer Berth wrote it).
    #[error("{0}")]
    Format(String),
}
