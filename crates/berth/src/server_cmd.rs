//! `berth server`.

use anyhow::{Context, Result};
use berth_server::tenancy::TaskDefaults;
use berth_server::{Server, ServerConfig};
use berth_store::{RedbStore, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the server keeps its files: the embedded store, tokens, TLS, the secrets
    /// key, the audit log.
    #[arg(long, default_value = "/var/lib/berth/server")]
    pub data_dir: PathBuf,
    /// Where the cluster's state lives: `embedded` (a redb file in --data-dir) or
    /// `etcd://host:port[,host:port...]` (an etcd v3 cluster).
    #[arg(long, env = "BERTH_STORE", default_value = "embedded", value_parser = parse_store)]
    pub store: StoreUrl,
    /// With etcd: seconds the leader's lease lives without renewal, i.e. how long a dead
    /// leader keeps leadership before another server takes over (etcd's minimum is 2 with
    /// its default 1 s election timeout).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub leader_ttl: u64,
    /// Seconds without a report after which a node is unreachable.
    #[arg(long, default_value_t = 20)]
    pub node_timeout: u64,
    /// host:port other parties use to reach this server (defaults to --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// HTTP basic-auth users, all cluster-admins (Marathon's `--http_credentials`):
    /// `user:password`, comma-separated. Tokens (`berth token create`) work besides.
    #[arg(
        long,
        env = "BERTH_HTTP_CREDENTIALS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub http_credentials: Vec<String>,
    #[command(flatten)]
    pub tls: crate::tls_cmd::TlsArgs,
    /// The key the secret store's values are encrypted with: 32 random bytes, mode 0600,
    /// created on first start when missing (default `<data-dir>/secrets.key`). Back it up:
    /// without it the stored secrets cannot be read.
    #[arg(long)]
    pub secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
}

/// DNS over the service catalog (docs/discovery.md, "DNS").
#[derive(clap::Args, Debug, Clone)]
pub struct DnsArgs {
    /// Serve DNS for the service catalog on this address, UDP and TCP (e.g.
    /// 127.0.0.1:8600); off when not given.
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// The zone DNS answers for: `web-prod.<domain>.`, `_web-prod._tcp.<domain>.`.
    #[arg(long, default_value = "berth")]
    pub dns_domain: String,
    /// TTL of DNS answers, in seconds (short, so clients follow health changes).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub dns_ttl: u32,
}

impl DnsArgs {
    pub fn config(&self) -> Result<Option<berth_server::dns::DnsConfig>> {
        let Some(listen) = self.dns_listen else {
            return Ok(None);
        };
        let zone = berth_core::dns::Zone::new(&self.dns_domain, self.dns_ttl)
            .map_err(|e| anyhow::anyhow!("--dns-domain: {e}"))?;
        Ok(Some(berth_server::dns::DnsConfig { listen, zone }))
    }
}

/// `--store`: the embedded store or an etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Embedded,
    Etcd(Vec<String>),
}

pub fn parse_store(s: &str) -> Result<StoreUrl, String> {
    if s == "embedded" {
        return Ok(StoreUrl::Embedded);
    }
    if s.starts_with("etcd://") {
        return berth_store::parse_etcd_url(s)
            .map(StoreUrl::Etcd)
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "{s:?}: expected `embedded` or etcd://host:port[,host:port...]"
    ))
}

/// Opens the embedded store (`--store embedded`).
pub async fn open_store(url: &StoreUrl, data_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    match url {
        StoreUrl::Embedded => {
            Ok(Arc::new(RedbStore::open(data_dir).with_context(|| {
                format!("opening the store in {}", data_dir.display())
            })?))
        }
        StoreUrl::Etcd(endpoints) => anyhow::bail!(
            "etcd ({}) is opened by the election (berth server --store etcd://...)",
            endpoints.join(",")
        ),
    }
}

/// `berth server`'s authentication: always on, with `--http-credentials` users.
pub fn auth_config(args: &ServerArgs) -> Result<berth_server::auth::AuthConfig> {
    Ok(berth_server::auth::AuthConfig {
        enabled: true,
        basic_users: parse_credentials(&args.http_credentials)?,
        data_dir: None,
    })
}

/// `user:password` pairs; a malformed one is an error naming it (without its password).
pub fn parse_credentials(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once(':') {
            Some((u, pw)) if !u.is_empty() && !pw.is_empty() => Ok((u.to_string(), pw.to_string())),
            _ => anyhow::bail!(
                "--http-credentials: each entry must be user:password (entry starting {:?})",
                p.chars().take(3).collect::<String>()
            ),
        })
        .collect()
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

// Each argument is one of the server's flags, as in `start_with_tls`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    node_timeout: u64,
    advertise: Option<String>,
    limits: &LimitArgs,
    auth: berth_server::auth::AuthConfig,
    tasks: &TaskDefaults,
    dns: Option<berth_server::dns::DnsConfig>,
) -> Result<Server> {
    start_with_tls(
        listen,
        data_dir,
        node_timeout,
        advertise,
        limits,
        auth,
        None,
        None,
        tasks,
        None,
        None,
        dns,
    )
    .await
}

/// [`start`], serving HTTPS with `tls`.
// Each argument is one of `berth server`'s flags; a config struct is the next step.
#[allow(clippy::too_many_arguments)]
pub async fn start_with_tls(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    node_timeout: u64,
    advertise: Option<String>,
    limits: &LimitArgs,
    mut auth: berth_server::auth::AuthConfig,
    tls: Option<Arc<berth_server::tls::ServerTls>>,
    secrets_key_file: Option<PathBuf>,
    tasks: &TaskDefaults,
    store: Option<Arc<dyn Store>>,
    leadership: Option<(
        berth_store::Compare,
        berth_server::LeaderInfo,
        berth_store::EtcdStore,
    )>,
    dns: Option<berth_server::dns::DnsConfig>,
) -> Result<Server> {
    prepare_data_dir(data_dir)?;
    auth.data_dir = Some(data_dir.to_path_buf());
    let store = match store {
        Some(s) => s,
        None => open_store(&StoreUrl::Embedded, data_dir).await?,
    };
    let mut config = config(listen, node_timeout, advertise, limits, tasks);
    if let Some((fence, info, etcd)) = leadership {
        config.etcd = Some(etcd);
        config.fence = Some(fence);
        config.leadership = Some(info);
    }
    config.auth = auth;
    config.tls = tls;
    config.dns = dns;
    config.secrets_key_file =
        Some(secrets_key_file.unwrap_or_else(|| data_dir.join("secrets.key")));
    let server = Server::start(config, store).await?;
    Ok(server)
}

/// Creates the data dir; it holds the admin and join tokens, so only its owner may look
/// inside.
pub fn prepare_data_dir(data_dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", data_dir.display()))
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let tls = args
        .tls
        .server_tls(&args.data_dir, args.listen, args.advertise.as_deref())?;
    match &tls {
        Some(t) => tracing::info!(certificate = %t.describe, "serving HTTPS"),
        None => tracing::warn!(
            "TLS is off: the API, and every token and credential sent to it, travel in \
             cleartext; production clusters should run with --tls auto or \
             --tls-cert/--tls-key (docs/operations.md, \"TLS\")"
        ),
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let StoreUrl::Etcd(endpoints) = args.store.clone() {
        return crate::ha_cmd::run(args, tls, endpoints).await;
    }
    let auth = auth_config(&args)?;
    let server = start_with_tls(
        args.listen,
        &args.data_dir,
        args.node_timeout,
        args.advertise,
        &args.limits,
        auth,
        tls,
        args.secrets_key_file,
        &args.tasks.defaults(),
        None,
        None,
        args.dns.config()?,
    )
    .await?;
    tracing::info!(addr = %server.addr, scheme, data_dir = %args.data_dir.display(), "berth server listening");
    tracing::info!(
        admin_token = %args.data_dir.join("admin.token").display(),
        join_token = %args.data_dir.join("join.token").display(),
        "authentication on: the first start wrote the admin token and the agents' join token here"
    );
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}
