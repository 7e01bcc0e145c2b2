//! `berth dev`: a server and an agent in one process, on an embedded store.

use crate::agent_cmd::{self, NodeArgs};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Keep state here (default: a temporary directory removed on exit, whose tasks are
    /// stopped on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub async fn run(mut args: DevArgs) -> Result<()> {
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("berth-dev-")
                .tempdir()
                .context("creating a temporary data dir")?,
        ),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no data dir")?;
    let server = crate::server_cmd::start(args.listen, &data_dir.join("server"), 20, None).await?;
    let url = format!("http://{}", server.addr);
    if args.node.address.is_none() {
        args.node.address = Some("127.0.0.1".into());
    }
    // The agent's HTTP endpoint (task logs, /metrics) on an ephemeral port.
    args.node
        .http_listen
        .get_or_insert(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (tx, rx) = watch::channel(false);
    let (handle, drivers) =
        agent_cmd::start(vec![url.clone()], &data_dir.join("agent"), &args.node, rx).await?;
    println!("Berth dev cluster running at {url}");
    println!(
        "  data dir: {}{}",
        data_dir.display(),
        if temp.is_some() { " (temporary)" } else { "" }
    );
    println!("  try: curl {url}/v2/apps   or   BERTH_ADDR={url} berth app list");
    crate::shutdown_signal().await;
    println!("stopping");
    let _ = tx.send(true);
    let _ = handle.await;
    if temp.is_some() {
        // Nobody could ever re-attach to these tasks: stop them.
        for d in &drivers {
            if let Ok(list) = d.list().await {
                for t in list.into_iter().filter(|t| !t.state.is_terminal()) {
                    let _ = d.kill(&t.task_id, Duration::from_secs(3)).await;
                }
            }
        }
    }
    Ok(())
}
