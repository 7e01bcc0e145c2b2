//! `berth server`.

use anyhow::{Context, Result};
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
}

pub fn config(listen: SocketAddr, node_timeout: u64, advertise: Option<String>) -> ServerConfig {
    let mut c = ServerConfig::new(listen);
    c.node_timeout = Duration::from_secs(node_timeout.max(1));
    if let Some(a) = advertise {
        c.advertise = a;
    }
    c
}

pub async fn start(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    node_timeout: u64,
    advertise: Option<String>,
) -> Result<Server> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let store = RedbStore::open(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let server = Server::start(config(listen, node_timeout, advertise), Arc::new(store)).await?;
    Ok(server)
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let server = start(
        args.listen,
        &args.data_dir,
        args.node_timeout,
        args.advertise,
    )
    .await?;
    tracing::info!(addr = %server.addr, data_dir = %args.data_dir.display(), "berth server listening");
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}
