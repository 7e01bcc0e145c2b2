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
    /// stopped, and their containers removed, on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub limits: crate::server_cmd::LimitArgs,
    /// HTTP basic-auth users (`user:password`, comma-separated): turns authentication on,
    /// even on loopback.
    #[arg(
        long,
        env = "BERTH_HTTP_CREDENTIALS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub http_credentials: Vec<String>,
    /// The user exec tasks run as when their app names none (default: the user running
    /// `berth dev`). Root is allowed in every namespace without a policy of its own.
    #[arg(long, value_parser = crate::server_cmd::parse_user)]
    pub default_task_user: Option<String>,
    #[command(flatten)]
    pub dns: crate::server_cmd::DnsArgs,
}

/// `berth dev` is a single-user loopback tool: tasks run as its user, root included.
fn dev_task_defaults(user: Option<String>) -> berth_server::tenancy::TaskDefaults {
    berth_server::tenancy::TaskDefaults {
        default_user: user
            .or_else(berth_agent::shim::current_user_name)
            .unwrap_or_else(|| "nobody".into()),
        default_policy: berth_core::namespace::NamespacePolicy::allowing_root(),
    }
}

pub async fn run(mut args: DevArgs) -> Result<()> {
    let temp = match &args.data_dir {
        Some(_) => None,
        None => {
            let dir = tempfile::Builder::new()
                .prefix("berth-dev-")
                .tempdir()
                .context("creating a temporary data dir")?;
            // Traversable (not listable) by others: tasks of apps with a `user` reach their
            // sandboxes inside it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .context("making the temporary data dir traversable")?;
            Some(dir)
        }
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no data dir")?;
    // Open on loopback (a single-user tool); anywhere else it authenticates like a server.
    let basic_users = crate::server_cmd::parse_credentials(&args.http_credentials)?;
    let auth_on = !args.listen.ip().is_loopback() || !basic_users.is_empty();
    let server = crate::server_cmd::start(
        args.listen,
        &data_dir.join("server"),
        20,
        None,
        &args.limits,
        berth_server::auth::AuthConfig {
            enabled: auth_on,
            basic_users,
            data_dir: None,
        },
        &dev_task_defaults(args.default_task_user.clone()),
        args.dns.config()?,
    )
    .await?;
    if auth_on && args.node.join.join_token.is_none() && args.node.join.join_token_file.is_none() {
        args.node.join.join_token_file = Some(data_dir.join("server").join("join.token"));
    }
    let url = format!("http://{}", server.addr);
    if args.node.address.is_none() {
        args.node.address = Some("127.0.0.1".into());
    }
    // The agent's HTTP endpoint (task logs, /metrics) on an ephemeral port.
    args.node
        .http_listen
        .get_or_insert(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (tx, rx) = watch::channel(false);
    let agent_cmd::Started {
        handle,
        drivers,
        docker,
    } = agent_cmd::start(vec![url.clone()], &data_dir.join("agent"), &args.node, rx).await?;
    println!("Berth dev cluster running at {url}");
    println!(
        "  data dir: {}{}",
        data_dir.display(),
        if temp.is_some() { " (temporary)" } else { "" }
    );
    println!("  {}", docker_line(&docker));
    if let Some(dns) = server.dns_addr {
        println!(
            "  DNS: {dns} (UDP and TCP), zone {}",
            berth_core::dns::Zone::new(&args.dns.dns_domain, args.dns.dns_ttl)
                .map(|z| z.name())
                .unwrap_or_default()
        );
    }
    if auth_on {
        println!(
            "  authentication on: admin token in {}",
            data_dir.join("server").join("admin.token").display()
        );
    }
    println!("  try: curl {url}/v2/apps   or   BERTH_ADDR={url} berth app list");
    crate::shutdown_signal().await;
    println!("stopping");
    let _ = tx.send(true);
    let _ = handle.await;
    if temp.is_some() {
        // Nobody could ever re-attach to these tasks: stop them, and remove what they leave
        // (exited containers no agent would ever clean up).
        // All at once: each kill may wait out its grace period.
        let mut ends = Vec::new();
        for d in &drivers {
            for t in d.list().await.unwrap_or_default() {
                ends.push(async move {
                    if !t.state.is_terminal() {
                        let _ = d.kill(&t.task_id, Duration::from_secs(3)).await;
                    }
                    d.remove(&t.task_id).await;
                });
            }
        }
        futures::future::join_all(ends).await;
        // What drivers keep for tasks to come (the Docker driver's warm containers).
        for d in &drivers {
            d.remove_leftovers().await;
        }
    }
    Ok(())
}

/// The banner line that says whether Docker apps can run here.
fn docker_line(docker: &agent_cmd::DockerUse) -> String {
    match docker {
        agent_cmd::DockerUse::On(engine) => format!("Docker driver: on ({engine})"),
        agent_cmd::DockerUse::Off(why) => format!(
            "Docker driver: off ({why}); apps with a `container.docker` section wait in the queue (no node offers the docker driver)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_line_says_on_or_why_off() {
        let on = docker_line(&agent_cmd::DockerUse::On(
            "unix:///var/run/docker.sock, API 1.41, Engine 20.10.24".into(),
        ));
        assert_eq!(
            on,
            "Docker driver: on (unix:///var/run/docker.sock, API 1.41, Engine 20.10.24)"
        );
        let off = docker_line(&agent_cmd::DockerUse::Off("no answer".into()));
        assert!(off.starts_with("Docker driver: off (no answer)"), "{off}");
        assert!(off.contains("wait in the queue"), "{off}");
    }
}
