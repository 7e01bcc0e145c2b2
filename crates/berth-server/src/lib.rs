//! Berth's control plane: the Marathon v2 API and Berth's own API over one in-memory model
//! of the cluster, written through to a durable store, with level-triggered controllers that
//! converge observed state (tasks reported by agents) to desired state (apps).

pub mod api;
pub mod controller;
pub mod error;
pub mod ops;
pub mod render;
pub mod state;

use berth_core::event::Event;
use berth_store::Store;
use parking_lot::Mutex;
use state::{Changes, Cluster, PersistRequest};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

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
        }
    }
}

/// Shared by every handler and controller.
pub struct Inner {
    pub state: Mutex<Cluster>,
    pub store: Arc<dyn Store>,
    persist: mpsc::UnboundedSender<PersistRequest>,
    pub events: broadcast::Sender<Arc<Event>>,
    /// Wakes the controller after a change.
    pub wake: Notify,
    pub config: ServerConfig,
    pub started_at: i64,
}

pub type Shared = Arc<Inner>;

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
            let mut st = self.state.lock();
            let r = f(&mut st, &mut ch)?;
            let rx = if ch.ops.is_empty() {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                let ops = std::mem::take(&mut ch.ops);
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
    fn finish(&self, ch: Changes) {
        let changed = !ch.new_tasks.is_empty()
            || !ch.nodes.is_empty()
            || !ch.events.is_empty()
            || !ch.ops.is_empty();
        if !ch.new_tasks.is_empty() || !ch.nodes.is_empty() {
            self.state.lock().committed(&ch.new_tasks, &ch.nodes);
        }
        for e in ch.events {
            let _ = self.events.send(Arc::new(e));
        }
        if changed {
            self.wake.notify_one();
        }
    }

    /// Memory may be ahead of the store after a failed write: rebuild it from the store.
    async fn reload_after_failure(&self) {
        match Cluster::load(self.store.as_ref(), self.config.seed).await {
            Ok(fresh) => {
                let mut st = self.state.lock();
                let gens = std::mem::take(&mut st.node_gens);
                *st = fresh;
                st.node_gens = gens;
                tracing::warn!("state reloaded from the store after a failed write");
            }
            Err(e) => tracing::error!(error = %e, "reloading state failed"),
        }
    }

    pub fn emit(&self, e: Event) {
        let _ = self.events.send(Arc::new(e));
    }
}

/// A running control plane.
pub struct Server {
    pub shared: Shared,
    pub addr: SocketAddr,
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
        let cluster = Cluster::load(store.as_ref(), config.seed)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(state::run_persister(store.clone(), prx));
        let (events, _) = broadcast::channel(16384);
        let shared = Arc::new(Inner {
            state: Mutex::new(cluster),
            store,
            persist: ptx,
            events,
            wake: Notify::new(),
            config,
            started_at: berth_core::time::now_millis(),
        });
        let app = api::router(shared.clone());
        tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        tokio::spawn(controller::run(shared.clone()));
        Ok(Server { shared, addr })
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load state from the store: {0}")]
    Store(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, String),
}
