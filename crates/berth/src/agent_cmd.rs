//! `berth agent`.

use anyhow::{Context, Result, bail};
use berth_agent::conditions::{ConditionsConfig, Thresholds};
use berth_agent::credentials::Credentials;
use berth_agent::driver::docker::{DockerConfig, DockerDriver};
use berth_agent::driver::exec::{ExecConfig, ExecDriver};
use berth_agent::driver::fake::{FakeConfig, FakeDriver};
use berth_agent::driver::{Driver, TaskStatus};
use berth_agent::runtime::{Agent, AgentConfig, AgentView};
use berth_core::node::{NodeInfo, NodeResources, Overcommit, PortRange};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Server URLs: the global `--server` (repeatable), filled in by `main`.
    #[arg(skip)]
    pub servers: Vec<String>,
    /// Where the agent keeps task sandboxes, logs and its node id.
    #[arg(long, default_value = "/var/lib/berth/agent")]
    pub data_dir: PathBuf,
    /// Address of the agent's HTTP endpoint (task logs, /metrics). Every agent on one host
    /// needs its own: the agent refuses to start when the port is taken.
    #[arg(long, default_value = "0.0.0.0:5051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// How an agent (or `berth sim`) joins a server that has authentication on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JoinArgs {
    /// The server's join token (`join.token` in the server's data dir).
    #[arg(long, env = "BERTH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
}

impl JoinArgs {
    pub fn token(&self) -> Result<Option<String>> {
        if let Some(t) = &self.join_token {
            return Ok(Some(t.trim().to_string()));
        }
        match &self.join_token_file {
            None => Ok(None),
            Some(f) => Ok(Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the join token from {}", f.display()))?
                    .trim()
                    .to_string(),
            )),
        }
    }
}

/// What this node offers; everything has a sensible default read from the host.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Node id (default: generated once and kept in the data dir).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Hostname reported to the server (default: this host's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Address tasks are reachable at (default: the hostname).
    #[arg(long)]
    pub address: Option<String>,
    /// Node attribute for constraints, e.g. `--attribute rack=r1` (repeatable).
    #[arg(long = "attribute", value_parser = parse_kv)]
    pub attributes: Vec<(String, String)>,
    /// CPUs offered (default: all).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory offered in MiB (default: all).
    #[arg(long)]
    pub mem: Option<f64>,
    /// Disk offered in MiB (default: free space of the data dir).
    #[arg(long)]
    pub disk: Option<f64>,
    #[command(flatten)]
    pub join: JoinArgs,
    /// A file holding the token Prometheus presents (`Authorization: Bearer`) to scrape the
    /// agent's `/metrics`; once joined, the agent's port answers only its server otherwise.
    #[arg(long)]
    pub scrape_token_file: Option<PathBuf>,
    /// Host port ranges for tasks, e.g. `31000-32000` (repeatable).
    #[arg(long = "ports", default_value = "31000-32000", value_parser = parse_range)]
    pub ports: Vec<PortRange>,
    /// Resources kept for the host itself, e.g. `cpus=1,mem=2048`.
    #[arg(long, default_value = "")]
    pub reserved: String,
    /// Overcommit ratios, e.g. `cpu=4,mem=1.0`.
    #[arg(long, default_value = "")]
    pub overcommit: String,
    /// Drivers to enable (comma-separated): exec, fake, docker. Default: exec,fake, plus
    /// docker when the Docker Engine answers.
    #[arg(long, value_delimiter = ',')]
    pub drivers: Vec<String>,
    /// Docker Engine address (socket path, unix://, tcp://); default $DOCKER_HOST or
    /// /var/run/docker.sock.
    #[arg(long)]
    pub docker_socket: Option<String>,
    /// Seconds a task the server does not know (a ghost) may run before the agent stops it.
    #[arg(long, default_value_t = 30)]
    pub ghost_grace: u64,
    /// URL the server reaches this agent's HTTP endpoint at (default:
    /// `http://<address>:<listen port>`).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Where the agent's HTTP endpoint listens (`berth agent --listen`; `berth dev` uses an
    /// ephemeral port); `None`: no endpoint.
    #[arg(skip)]
    pub http_listen: Option<SocketAddr>,
    /// The global `--ca-cert`: verifies https:// servers (filled in by `main`).
    #[arg(skip)]
    pub ca_cert: Option<PathBuf>,
    /// DiskPressure when the data dir's (or /var/lib/docker's) filesystem has less than this
    /// share free, in percent (0: off).
    #[arg(long, default_value_t = 10.0)]
    pub disk_pressure_percent: f64,
    /// DiskPressure when less than this many MiB are free (0: off).
    #[arg(long, default_value_t = 1024)]
    pub disk_pressure_free_mb: u64,
    /// PidPressure above this share of kernel.pid_max / threads-max in use, in percent.
    #[arg(long, default_value_t = 90.0)]
    pub pid_pressure_percent: f64,
    /// KeysPressure above this share of kernel.keys.root_maxkeys (or root_maxbytes) in use.
    #[arg(long, default_value_t = 90.0)]
    pub keys_pressure_percent: f64,
    /// MemoryPressure below this share of MemTotal available, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub memory_pressure_percent: f64,
    /// MemoryPressure when memory PSI `full avg10` exceeds this percentage (0: off).
    #[arg(long, default_value_t = 25.0)]
    pub memory_pressure_psi: f64,
    /// How often node conditions are recomputed, in seconds.
    #[arg(long, default_value_t = 10)]
    pub conditions_interval_secs: u64,
    /// Fake driver: delay before a task is RUNNING, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub fake_latency_ms: u64,
    /// Fake driver: share of tasks that fail at start (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fake_failure_rate: f64,
    /// Default limit on processes per task (exec: cgroup pids.max; docker: --pids-limit).
    #[arg(
        long = "pids-limit",
        visible_alias = "pids-max",
        default_value_t = 4096
    )]
    pub pids_max: u64,
    /// Rotate each task's stdout/stderr (exec: files in the task dir; docker: json-file) at
    /// this size: `10m`, `512k`, `1g` or bytes; `0`: never. App label BERTH_LOG_MAX_SIZE
    /// overrides it.
    #[arg(long, default_value = "10m", value_parser = parse_log_max_size)]
    pub log_max_size: u64,
    /// Files kept of each task log, the one being written included (1 to 100). App label
    /// BERTH_LOG_MAX_FILES overrides it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub log_max_files: u32,
    /// How long an exec task's directory (its sandbox and logs) is kept after the task ended
    /// and the server let it go, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub sandbox_gc_delay_secs: u64,
}

fn parse_log_max_size(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    berth_core::app::parse_log_size(s)
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got '{s}'"))?;
    if k.is_empty() {
        return Err(format!("empty key in '{s}'"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected BEGIN-END, got '{s}'"))?;
    let begin: u16 = a.trim().parse().map_err(|_| format!("bad port '{a}'"))?;
    let end: u16 = b.trim().parse().map_err(|_| format!("bad port '{b}'"))?;
    if begin > end || begin == 0 {
        return Err(format!("bad port range '{s}'"));
    }
    Ok(PortRange { begin, end })
}

/// `cpus=1,mem=2048,disk=0` style lists.
fn parse_pairs(s: &str) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("expected key=value, got '{part}'"))?;
        let v: f64 = v
            .parse()
            .with_context(|| format!("'{v}' is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            bail!("'{part}': value must be a non-negative number");
        }
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

pub fn node_info(args: &NodeArgs, data_dir: &Path) -> Result<NodeInfo> {
    let id = match &args.node_id {
        Some(id) => id.clone(),
        None => {
            berth_agent::node::load_or_create_node_id(data_dir).context("creating the node id")?
        }
    };
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(berth_agent::node::hostname);
    let reserved = parse_pairs(&args.reserved).context("--reserved")?;
    let overcommit = parse_pairs(&args.overcommit).context("--overcommit")?;
    for d in &args.drivers {
        if !["exec", "fake", "docker"].contains(&d.as_str()) {
            bail!("unknown driver '{d}' (available: exec, fake, docker)");
        }
    }
    Ok(NodeInfo {
        id,
        hostname: hostname.clone(),
        address: args.address.clone().unwrap_or(hostname),
        resources: NodeResources::new(
            args.cpus.unwrap_or_else(berth_agent::node::cpus),
            args.mem.unwrap_or_else(berth_agent::node::mem_mb),
            args.disk
                .unwrap_or_else(|| berth_agent::node::disk_mb(data_dir)),
        ),
        reserved: NodeResources::new(
            reserved.get("cpus").copied().unwrap_or(0.0),
            reserved.get("mem").copied().unwrap_or(0.0),
            reserved.get("disk").copied().unwrap_or(0.0),
        ),
        overcommit: Overcommit {
            cpu: overcommit.get("cpu").copied().unwrap_or(1.0),
            mem: overcommit.get("mem").copied().unwrap_or(1.0),
        },
        port_ranges: args.ports.clone(),
        attributes: args.attributes.iter().cloned().collect(),
        drivers: args.drivers.clone(),
        conditions: vec![],
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_url: None,
    })
}

/// Where every driver's status changes arrive.
type StatusReceiver = mpsc::UnboundedReceiver<TaskStatus>;

/// Whether this node runs Docker tasks, and why (for `berth dev`'s banner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerUse {
    /// The docker driver is on: the engine's address and versions.
    On(String),
    /// Off: the reason.
    Off(String),
}

/// The drivers this node runs, all reporting into one channel.
pub async fn drivers(
    args: &NodeArgs,
    data_dir: &Path,
    node_id: &str,
) -> Result<(Vec<Arc<dyn Driver>>, StatusReceiver, Option<String>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut out: Vec<Arc<dyn Driver>> = Vec::new();
    let mut docker = None;
    for d in &args.drivers {
        match d.as_str() {
            "exec" => {
                let exe = std::env::current_exe()
                    .context("locating the berth binary for the exec shim")?;
                let mut cfg = ExecConfig::new(data_dir.join("exec"), exe);
                cfg.pids_max = Some(args.pids_max);
                cfg.log_max_bytes = args.log_max_size;
                cfg.log_max_files = args.log_max_files;
                cfg.sandbox_gc_delay = Duration::from_secs(args.sandbox_gc_delay_secs);
                out.push(Arc::new(ExecDriver::new(cfg, tx.clone())));
            }
            "fake" => {
                let cfg = FakeConfig {
                    start_latency: Duration::from_millis(args.fake_latency_ms),
                    failure_rate: args.fake_failure_rate.clamp(0.0, 1.0),
                    seed: 42,
                };
                out.push(Arc::new(FakeDriver::new(cfg, tx.clone())));
            }
            "docker" => {
                let mut cfg = DockerConfig::new(data_dir.join("docker"));
                cfg.host = args.docker_socket.clone();
                cfg.node_id = Some(node_id.to_string());
                cfg.pids_limit = i64::try_from(args.pids_max).ok();
                cfg.log_max_bytes = args.log_max_size;
                cfg.log_max_files = args.log_max_files;
                let driver = DockerDriver::connect(cfg, tx.clone())
                    .await
                    .context("--drivers docker")?;
                docker = Some(driver.describe());
                out.push(Arc::new(driver));
            }
            other => bail!("unknown driver '{other}'"),
        }
    }
    Ok((out, rx, docker))
}

/// What an agent started with.
pub struct Started {
    pub handle: tokio::task::JoinHandle<()>,
    /// Its drivers (for a clean dev shutdown).
    pub drivers: Vec<Arc<dyn Driver>>,
    pub docker: DockerUse,
}

/// Starts an agent.
pub async fn start(
    servers: Vec<String>,
    data_dir: &Path,
    node: &NodeArgs,
    shutdown: watch::Receiver<bool>,
) -> Result<Started> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut node = node.clone();
    let mut docker_off = None;
    if node.drivers.is_empty() {
        node.drivers = vec!["exec".into(), "fake".into()];
        match DockerDriver::probe(node.docker_socket.as_deref(), Duration::from_secs(3)).await {
            Ok(version) => {
                tracing::info!(version, "Docker Engine answers: enabling the docker driver");
                node.drivers.push("docker".into());
            }
            Err(e) => {
                tracing::info!(reason = %e, "docker driver not enabled");
                docker_off = Some(e.to_string());
            }
        }
    } else if !node.drivers.iter().any(|d| d == "docker") {
        docker_off = Some(format!("not in --drivers {}", node.drivers.join(",")));
    }
    tracing::info!(drivers = ?node.drivers, "drivers");
    let node = &node;
    let mut info = node_info(node, data_dir)?;
    let (drivers, rx, docker_on) = drivers(node, data_dir, &info.id).await?;
    let docker = match docker_on {
        Some(d) => DockerUse::On(d),
        None => DockerUse::Off(docker_off.unwrap_or_else(|| "not enabled".into())),
    };
    let identity = crate::tls_cmd::agent_identity(&servers, data_dir, &info.id)?;
    let view = start_observability(node, data_dir, &mut info, &shutdown, identity.as_ref()).await?;
    let config = AgentConfig {
        servers,
        node: info,
        poll_wait: Duration::from_secs(25),
        ghost_grace: Duration::from_secs(node.ghost_grace),
        credentials: Arc::new(Credentials::new(
            node.join.token()?,
            Some(data_dir.join("node.credential")),
            match &node.scrape_token_file {
                None => None,
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the scrape token from {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
            },
        )),
        identity,
    };
    let http = Agent::http_client_trusting(node.ca_cert.as_deref()).context("--ca-cert")?;
    let handle = Agent::start_with_view(config, http, drivers.clone(), rx, shutdown, view).await?;
    Ok(Started {
        handle,
        drivers,
        docker,
    })
}

/// Starts the agent's HTTP endpoint (when `http_listen` is set; its URL goes into `info`;
/// over TLS with `identity`'s certificate when there is one) and the node-conditions loop;
/// both stop on `shutdown`. Returns the view to start the agent with.
async fn start_observability(
    node: &NodeArgs,
    data_dir: &Path,
    info: &mut NodeInfo,
    shutdown: &watch::Receiver<bool>,
    identity: Option<&Arc<berth_agent::tls::AgentIdentity>>,
) -> Result<AgentView> {
    let view = AgentView::default();
    if let Some(addr) = node.http_listen {
        let listener = berth_agent::http::bind(addr)
            .await
            .map_err(|e| listen_error(addr, e))?;
        let local = listener.local_addr()?;
        let scheme = if identity.is_some() { "https" } else { "http" };
        if let Some(u) = &node.advertise_url
            && !u.to_ascii_lowercase().starts_with(&format!("{scheme}://"))
        {
            bail!(
                "--advertise-url {u}: the endpoint serves {scheme} (it serves https exactly when \
                 the servers are https://)"
            );
        }
        let url = node
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}:{}", url_host(&info.address), local.port()));
        tracing::info!(listen = %local, url, "agent HTTP endpoint (task logs, /metrics)");
        info.agent_url = Some(url);
        let (view, mut stop) = (view.clone(), shutdown.clone());
        let tls = identity.map(|i| i.slot());
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.changed().await;
            };
            let paths = berth_agent::stats::HostPaths::default();
            let served = match tls {
                Some(tls) => berth_agent::http::serve_tls(listener, tls, view, paths, done).await,
                None => berth_agent::http::serve(listener, view, paths, done).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "agent HTTP endpoint failed");
            }
        });
    }
    let mut conditions = ConditionsConfig::new(
        data_dir,
        Thresholds {
            disk_free_percent: node.disk_pressure_percent,
            disk_free_bytes: node.disk_pressure_free_mb.saturating_mul(1024 * 1024),
            pids_percent: node.pid_pressure_percent,
            keys_percent: node.keys_pressure_percent,
            mem_available_percent: node.memory_pressure_percent,
            mem_psi_full_avg10: node.memory_pressure_psi,
        },
    );
    if node.drivers.iter().any(|d| d == "docker") {
        let host = node.docker_socket.clone();
        conditions.docker_ping = Some(Arc::new(move || {
            let host = host.clone();
            Box::pin(async move {
                DockerDriver::probe(host.as_deref(), Duration::from_secs(3))
                    .await
                    .map_err(|e| e.to_string())
            })
        }));
    }
    let interval = Duration::from_secs(node.conditions_interval_secs.max(1));
    let (publish, mut stop) = (view.clone(), shutdown.clone());
    tokio::spawn(async move {
        let publish = move |c| publish.set_conditions(c);
        tokio::select! {
            _ = berth_agent::conditions::run_loop(conditions, interval, publish) => {}
            _ = stop.changed() => {}
        }
    });
    Ok(view)
}

/// Why the agent's HTTP endpoint cannot listen, with what to do about it: the default port
/// (5051) is taken as soon as a second agent runs on the same host.
fn listen_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        let next = SocketAddr::new(addr.ip(), addr.port().saturating_add(1).max(1024));
        let any = SocketAddr::new(addr.ip(), 0);
        anyhow::anyhow!(
            "agent HTTP endpoint: {addr} is already in use (another berth agent on this host?); \
             pass --listen with a free address, e.g. --listen {next} (or --listen {any} for any \
             free port; the server learns the URL when the agent registers)"
        )
    } else {
        anyhow::anyhow!("agent HTTP endpoint: cannot listen on {addr} (--listen): {e}")
    }
}

/// A host for a URL: IPv6 addresses go in brackets.
fn url_host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let (tx, rx) = watch::channel(false);
    let mut node = args.node.clone();
    node.http_listen = Some(args.listen);
    let Started { handle, .. } = start(args.servers.clone(), &args.data_dir, &node, rx).await?;
    tracing::info!(servers = ?args.servers, data_dir = %args.data_dir.display(), "berth agent running");
    crate::shutdown_signal().await;
    // Tasks keep running: a restarted agent re-attaches to them.
    let _ = tx.send(true);
    let _ = handle.await;
    Ok(())
}
