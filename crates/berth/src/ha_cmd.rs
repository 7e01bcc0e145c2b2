//! `berth server --store etcd://...`: one of several servers. It serves as a follower
//! (proxying to the leader) while it campaigns; once elected it loads the state from etcd and
//! runs the scheduler and controllers, every write fenced by its leadership. When leadership
//! is lost (lease expired, keep-alive failing, `DELETE /v2/leader`) it steps down at once by
//! starting over as a follower: the process re-executes itself, so no state of its time as
//! leader survives into its time as follower.

use crate::server_cmd::{ServerArgs, auth_config, prepare_data_dir, start_with_tls};
use anyhow::{Context, Result};
use berth_server::follower::{self, LeaderRecord};
use berth_server::tls::ServerTls;
use berth_store::{EtcdOptions, EtcdStore, election};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(
    args: ServerArgs,
    tls: Option<Arc<ServerTls>>,
    endpoints: Vec<String>,
) -> Result<()> {
    prepare_data_dir(&args.data_dir)?;
    let options = EtcdOptions::new(endpoints.clone());
    let store = if std::env::var_os(STEPPED_DOWN).is_some() {
        // Back after stepping down, maybe because etcd lost quorum: keep serving (503s
        // until etcd answers) and campaigning, rather than exit.
        EtcdStore::connect_unchecked(options).await
    } else {
        // A first start refuses an etcd it cannot reach or data it cannot read.
        let store = EtcdStore::connect(options).await;
        if let Ok(s) = &store {
            berth_server::state::check_store_format(s).await?;
        }
        store
    }
    .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    // Unique per run: a record naming this id is this run's own.
    let me = format!(
        "{advertise}/{}/{}",
        std::process::id(),
        berth_core::time::now_millis()
    );
    let record = LeaderRecord {
        id: me.clone(),
        leader: advertise.clone(),
        url: format!("{scheme}://{advertise}"),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let proxy_client = follower::proxy_client().context("building the proxy client")?;
    let following = follower::serve(
        listener,
        follower::router(store.clone(), me, proxy_client),
        tls.clone(),
    );
    tracing::info!(
        addr = %args.listen,
        endpoints = ?endpoints,
        "berth server following: requests go to the leader; campaigning for leadership"
    );
    let ttl = Duration::from_secs(args.leader_ttl);
    let watchdog = tokio::spawn(watch_leader_port(store.clone(), record.id.clone()));
    let record = record.encode();
    let campaign = async {
        loop {
            match election::campaign(&store, record.clone(), ttl).await {
                Ok(won) => return won,
                // etcd without quorum, or unreachable for a while: keep following, retry.
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    let leadership = tokio::select! {
        won = campaign => won,
        _ = crate::shutdown_signal() => {
            tracing::info!("shutting down");
            return Ok(());
        }
    };
    watchdog.abort();
    following.abort();
    let _ = following.await;
    tracing::info!(
        fence = leadership.fence_revision(),
        "elected leader: loading the state from etcd"
    );
    let (abdicate, mut abdicated) = tokio::sync::mpsc::unbounded_channel();
    let info = berth_server::LeaderInfo {
        fence_revision: leadership.fence_revision(),
        abdicate,
    };
    let server = start_with_tls(
        args.listen,
        &args.data_dir,
        args.node_timeout,
        Some(advertise),
        &args.limits,
        auth_config(&args)?,
        tls,
        args.secrets_key_file.clone(),
        &args.tasks.defaults(),
        Some(Arc::new(store.clone())),
        Some((leadership.fence(), info, store)),
        args.dns.config()?,
    )
    .await?;
    tracing::info!(addr = %server.addr, scheme, "berth server listening as the leader");
    tokio::select! {
        why = leadership.lost() => {
            tracing::error!(reason = %why, "lost leadership: stepping down");
            step_down()
        }
        _ = abdicated.recv() => {
            tracing::warn!("abdicating (DELETE /v2/leader): stepping down");
            if let Err(e) = leadership.resign().await {
                tracing::warn!(error = %e, "resigning failed; the lease expires on its own");
            }
            step_down()
        }
        _ = crate::shutdown_signal() => {
            tracing::info!("shutting down: resigning leadership");
            let _ = leadership.resign().await;
            Ok(())
        }
    }
}

/// How long the leader's port must refuse connections before a follower deposes it.
const REFUSED_FOR: Duration = Duration::from_millis(1_000);

/// While following: probes the leader's address every 200 ms. A process that died (kill -9,
/// a crash) leaves a port that refuses connections at once, long before its lease expires;
/// after [`REFUSED_FOR`] of refusals the follower revokes the leader's lease, so the election
/// takes that long instead of the TTL. Only refusals count: a leader that is paused, slow
/// or cut off (timeouts) keeps its lease until it expires, and fencing covers a mistake.
async fn watch_leader_port(store: EtcdStore, me: String) {
    let mut refused_since: Option<(i64, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(Some((raw, lease))) = election::current_leader_lease(&store).await else {
            refused_since = None;
            continue;
        };
        let Some(record) = LeaderRecord::decode(&raw) else {
            continue;
        };
        if record.id == me || lease == 0 {
            continue;
        }
        let refused = match tokio::net::lookup_host(record.leader.as_str()).await {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => matches!(
                    tokio::time::timeout(
                        Duration::from_millis(300),
                        tokio::net::TcpStream::connect(addr)
                    )
                    .await,
                    Ok(Err(ref e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
                ),
                None => false,
            },
            Err(_) => false,
        };
        if !refused {
            refused_since = None;
            continue;
        }
        let since = match refused_since {
            Some((l, t)) if l == lease => t,
            _ => {
                refused_since = Some((lease, std::time::Instant::now()));
                continue;
            }
        };
        if since.elapsed() >= REFUSED_FOR {
            tracing::warn!(
                leader = %record.leader,
                "the leader's port has refused connections for 1 s: deposing it (revoking its lease)"
            );
            if let Err(e) = election::depose(&store, lease).await {
                tracing::warn!(error = %e, "deposing the leader failed");
            }
            refused_since = None;
        }
    }
}

/// Set in the environment of a server that re-executed itself to step down.
const STEPPED_DOWN: &str = "BERTH_STEPPED_DOWN";

/// Starts over as a follower: re-executes this process's own command line.
fn step_down() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this executable")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(STEPPED_DOWN, "1")
        .exec();
    Err(anyhow::anyhow!("re-executing to step down: {err}"))
}
