//! `berth server`.

use anyhow::{Context, Result};
use berth_server::tenancy::TaskDefaults;
use berth_server::{Server, ServerConfig};
use berth_store::RedbStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded store keeps its data.
    #[arg(long, default_value = "/var/lib/berth/server")]
    pub data_dir: PathBuf,
    /// Seconds without a report after which a node is unreachable.
    #[arg(long, default_value_t = 20)]
    pub node_timeout: u64,
    /// host:port other parties use to reach this server (defaults to --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tasks: TaskArgs,
}

/// What tasks get when their app and namespace say nothing (docs/operations.md,
/// "Namespaces, quotas and task policies").
#[derive(clap::Args, Debug, Clone)]
pub struct TaskArgs {
    /// The user exec tasks run as when their app names none (Marathon's `--mesos_user`).
    /// An app whose effective user is root is refused unless its namespace's policy has
    /// `allowRoot`.
    #[arg(long, default_value = "nobody", value_parser = parse_user)]
    pub default_task_user: String,
}

impl TaskArgs {
    /// `berth server`'s defaults: this user, and a policy that allows nothing.
    pub fn defaults(&self) -> TaskDefaults {
        TaskDefaults {
            default_user: self.default_task_user.clone(),
            default_policy: Default::default(),
        }
    }
}

/// A user name: not empty, no whitespace, `:` or NUL.
pub fn parse_user(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 256
        || s.chars()
            .any(|c| c.is_whitespace() || c == ':' || c == '\0')
    {
        return Err(format!("{s:?} is not a user name"));
    }
    Ok(s.to_string())
}

/// What one client may make the server hold (docs/api.md, "Limits").
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest request body accepted, in bytes (413 past it).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Event stream (/v2/events) subscribers at once (429 past it).
    #[arg(long, default_value_t = 256)]
    pub max_event_subscribers: usize,
    /// Bytes of events queued for one subscriber before it is dropped as too slow.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub event_queue_bytes: usize,
    /// Agent long-polls held open at once (429 past it).
    #[arg(long, default_value_t = 20_000)]
    pub max_long_polls: usize,
}

pub fn config(
    listen: SocketAddr,
    node_timeout: u64,
    advertise: Option<String>,
    limits: &LimitArgs,
    tasks: &TaskDefaults,
) -> ServerConfig {
    let mut c = ServerConfig::new(listen);
    c.tasks = tasks.clone();
    c.node_timeout = Duration::from_secs(node_timeout.max(1));
    if let Some(a) = advertise {
        c.advertise = a;
    }
    c.max_body_bytes = limits.max_body_bytes.max(1024);
    c.events.max_subscribers = limits.max_event_subscribers;
    c.events.max_queued_bytes = limits.event_queue_bytes;
    c.max_long_polls = limits.max_long_polls;
    c
}

pub async fn start(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    node_timeout: u64,
    advertise: Option<String>,
    limits: &LimitArgs,
    tasks: &TaskDefaults,
) -> Result<Server> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let store = RedbStore::open(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let server = Server::start(
        config(listen, node_timeout, advertise, limits, tasks),
        Arc::new(store),
    )
    .await?;
    Ok(server)
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let server = start(
        args.listen,
        &args.data_dir,
        args.node_timeout,
        args.advertise,
        &args.limits,
        &args.tasks.defaults(),
    )
    .await?;
    tracing::info!(addr = %server.addr, data_dir = %args.data_dir.display(), "berth server listening");
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}
