//! `berth sim`: many simulated nodes in one process. Each is a real agent speaking the real
//! agent protocol (register, long-poll assignments, status reports) with the fake driver, so
//! the whole control plane is under load. All agents share one HTTP client; each costs one
//! tokio task plus a few maps.
//!
//! A simulated node offers the `exec`, `docker` and `fake` drivers (`--drivers`), all of them
//! the fake driver underneath: apps posted as they would be to a real cluster (no
//! `BERTH_DRIVER=fake` label, so they ask for `exec` or `docker`) are placed and "run" too.

use anyhow::{Context, Result, bail};
use berth_agent::driver::Driver;
use berth_agent::driver::fake::{FakeConfig, FakeDriver};
use berth_agent::runtime::{Agent, AgentConfig};
use berth_core::app::DriverKind;
use berth_core::node::{NodeInfo, NodeResources, Overcommit, PortRange};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Server URLs: the global `--server` (repeatable), filled in by `main`.
    #[arg(skip)]
    pub servers: Vec<String>,
    #[command(flatten)]
    pub join: crate::agent_cmd::JoinArgs,
    /// The global `--ca-cert`: verifies https:// servers (filled in by `main`).
    #[arg(skip)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Node attributes, comma-separated: `key=value` (same on every node) or
    /// `key=r1..r40` (cycles r1, r2, ..., r40 across nodes).
    #[arg(long, default_value = "")]
    pub attributes: String,
    /// CPUs each node offers.
    #[arg(long, default_value_t = 32.0)]
    pub cpus: f64,
    /// Memory each node offers, in MiB.
    #[arg(long, default_value_t = 128_000.0)]
    pub mem: f64,
    /// Disk each node offers, in MiB.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub disk: f64,
    /// Fake driver: delay before a task is RUNNING, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub fake_latency_ms: u64,
    /// Fake driver: share of tasks that fail at start (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fake_failure_rate: f64,
    /// Node ids are PREFIX-00001, PREFIX-00002, ...
    #[arg(long, default_value = "sim")]
    pub id_prefix: String,
    /// Agents started per second (registrations are staggered).
    #[arg(long, default_value_t = 1000)]
    pub register_rate: u64,
    /// How long an assignment long-poll may wait, in seconds.
    #[arg(long, default_value_t = 25)]
    pub poll_wait: u64,
    /// Drivers each node offers, comma-separated (`exec`, `docker`, `fake`); every one is
    /// simulated by the fake driver. `--drivers fake` takes only apps labelled
    /// `BERTH_DRIVER=fake`.
    #[arg(long, default_value = SimArgs::DEFAULT_DRIVERS)]
    pub drivers: String,
}

impl SimArgs {
    pub const DEFAULT_DRIVERS: &str = "exec,docker,fake";
}

/// `exec,docker,fake` -> the driver kinds, in order, without repeats.
fn parse_drivers(s: &str) -> Result<Vec<DriverKind>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = match part.to_ascii_lowercase().as_str() {
            "exec" => DriverKind::Exec,
            "docker" => DriverKind::Docker,
            "fake" => DriverKind::Fake,
            _ => bail!("unknown driver '{part}' (expected exec, docker or fake)"),
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    if out.is_empty() {
        bail!("no driver given (expected e.g. exec,docker,fake)");
    }
    Ok(out)
}

/// One attribute: a constant, or values cycled across nodes.
#[derive(Debug, Clone, PartialEq)]
enum AttrValues {
    Const(String),
    Cycle(Vec<String>),
}

/// `r1..r40` -> r1, ..., r40 (a common prefix and numeric bounds); anything else: constant.
fn parse_values(v: &str) -> Result<AttrValues> {
    let Some((a, b)) = v.split_once("..") else {
        return Ok(AttrValues::Const(v.to_string()));
    };
    let split = |s: &str| {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (p, n) = s.split_at(s.len() - digits);
        (p.to_string(), n.parse::<u64>().ok())
    };
    let (pa, na) = split(a);
    let (pb, nb) = split(b);
    match (na, nb) {
        (Some(na), Some(nb)) if pa == pb && na <= nb && nb - na < 1_000_000 => Ok(
            AttrValues::Cycle((na..=nb).map(|i| format!("{pa}{i}")).collect()),
        ),
        _ => bail!("bad attribute range '{v}' (expected e.g. r1..r40)"),
    }
}

fn parse_attributes(s: &str) -> Result<Vec<(String, AttrValues)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("expected key=value, got '{part}'"))?;
        if k.is_empty() {
            bail!("empty attribute name in '{part}'");
        }
        out.push((k.to_string(), parse_values(v)?));
    }
    Ok(out)
}

fn node_info(
    args: &SimArgs,
    attrs: &[(String, AttrValues)],
    drivers: &[DriverKind],
    i: usize,
) -> NodeInfo {
    let id = format!("{}-{:05}", args.id_prefix, i + 1);
    let attributes: BTreeMap<String, String> = attrs
        .iter()
        .map(|(k, v)| {
            let v = match v {
                AttrValues::Const(c) => c.clone(),
                AttrValues::Cycle(vs) => vs[i % vs.len()].clone(),
            };
            (k.clone(), v)
        })
        .collect();
    NodeInfo {
        id: id.clone(),
        hostname: format!("{id}.sim"),
        address: format!("{id}.sim"),
        resources: NodeResources::new(args.cpus, args.mem, args.disk),
        reserved: NodeResources::new(0.0, 0.0, 0.0),
        overcommit: Overcommit { cpu: 1.0, mem: 1.0 },
        port_ranges: vec![PortRange {
            begin: 31000,
            end: 32000,
        }],
        attributes,
        drivers: drivers.iter().map(|d| d.as_str().to_string()).collect(),
        conditions: vec![],
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_url: None,
    }
}

/// Starts every simulated agent (staggered); returns their handles.
pub async fn start(
    args: &SimArgs,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    if !(0.0..=1.0).contains(&args.fake_failure_rate) {
        bail!("--fake-failure-rate must be between 0 and 1");
    }
    let attrs = parse_attributes(&args.attributes).context("--attributes")?;
    let kinds = parse_drivers(&args.drivers).context("--drivers")?;
    // One client for every agent: its pool holds the long-polls (one connection each) and
    // reuses idle connections for reports.
    let join_token = args.join.token()?;
    let http =
        Agent::http_client_trusting(args.ca_cert.as_deref()).context("building the HTTP client")?;
    let rate = args.register_rate.max(1);
    let began = Instant::now();
    let mut handles = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        // Stagger: agent i starts at i / rate seconds.
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(began.elapsed())
            && !wait.is_zero()
        {
            tokio::time::sleep(wait).await;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let drivers: Vec<Arc<dyn Driver>> = kinds
            .iter()
            .enumerate()
            .map(|(k, &kind)| {
                let fake = FakeConfig {
                    start_latency: Duration::from_millis(args.fake_latency_ms),
                    failure_rate: args.fake_failure_rate,
                    seed: (42 + i as u64) + ((k as u64) << 32),
                };
                Arc::new(FakeDriver::new(fake, tx.clone()).standing_in_for(kind)) as Arc<dyn Driver>
            })
            .collect();
        let config = AgentConfig {
            servers: args.servers.clone(),
            node: node_info(args, &attrs, &kinds, i),
            poll_wait: Duration::from_secs(args.poll_wait.max(1)),
            ghost_grace: Duration::from_secs(30),
            credentials: Arc::new(berth_agent::credentials::Credentials::new(
                join_token.clone(),
                None,
                None,
            )),
            // Simulated nodes serve no endpoint: no certificate to ask for.
            identity: None,
        };
        let h =
            Agent::start_with_client(config, http.clone(), drivers, rx, shutdown.clone()).await?;
        handles.push(h);
    }
    Ok(handles)
}

/// Logs warnings only by default: thousands of agents would flood the terminal at `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(args: SimArgs) -> Result<()> {
    let (tx, rx) = watch::channel(false);
    let t0 = Instant::now();
    let started = tokio::select! {
        r = start(&args, rx) => r?,
        _ = crate::shutdown_signal() => return Ok(()),
    };
    tracing::warn!(
        nodes = started.len(),
        secs = t0.elapsed().as_secs_f64(),
        "berth sim: all simulated agents started"
    );
    crate::shutdown_signal().await;
    let _ = tx.send(true);
    for h in started {
        let _ = h.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_ranges_cycle() {
        let a = parse_attributes("rack=r1..r3, zone=z").unwrap();
        assert_eq!(
            a[0].1,
            AttrValues::Cycle(vec!["r1".into(), "r2".into(), "r3".into()])
        );
        assert_eq!(a[1].1, AttrValues::Const("z".into()));
        let args = SimArgs {
            servers: vec!["http://x".into()],
            join: Default::default(),
            ca_cert: None,
            nodes: 4,
            attributes: String::new(),
            cpus: 1.0,
            mem: 1.0,
            disk: 1.0,
            fake_latency_ms: 0,
            fake_failure_rate: 0.0,
            id_prefix: "n".into(),
            register_rate: 1,
            poll_wait: 1,
            drivers: "fake".into(),
        };
        let n = node_info(&args, &a, &[DriverKind::Fake], 3);
        assert_eq!(n.id, "n-00004");
        assert_eq!(n.attributes["rack"], "r1");
        assert_eq!(n.attributes["zone"], "z");
        assert!(parse_attributes("rack=a1..b2").is_err());
        assert!(parse_attributes("novalue").is_err());
    }

    fn sim_args(nodes: usize, drivers: &str) -> SimArgs {
        SimArgs {
            servers: vec!["http://x".into()],
            join: Default::default(),
            ca_cert: None,
            nodes,
            attributes: String::new(),
            cpus: 32.0,
            mem: 128_000.0,
            disk: 1_000_000.0,
            fake_latency_ms: 0,
            fake_failure_rate: 0.0,
            id_prefix: "sim".into(),
            register_rate: 1000,
            poll_wait: 25,
            drivers: drivers.into(),
        }
    }

    /// The simulated nodes as the server's scheduler sees them (see `sync_sched_node`).
    fn scheduler_of(args: &SimArgs) -> berth_scheduler::Scheduler {
        let kinds = parse_drivers(&args.drivers).unwrap();
        let mut s = berth_scheduler::Scheduler::new(7);
        for i in 0..args.nodes {
            let n = node_info(args, &[], &kinds, i);
            s.upsert_node(berth_scheduler::SchedNode {
                id: n.id.clone(),
                hostname: n.hostname.clone(),
                attributes: n.attributes.clone(),
                allocatable: n.allocatable(),
                port_ranges: n.port_ranges.clone(),
                drivers: n.drivers.clone(),
                schedulable: true,
                cores: n.resources.cpus as u32,
            });
        }
        s
    }

    /// An app as a new user posts it: no BERTH_DRIVER label, so it asks for `exec`.
    fn user_app(id: &str) -> berth_core::AppDefinition {
        berth_core::validate::app_from_json(serde_json::json!({
            "id": id,
            "cmd": "sleep 3600",
            "cpus": 0.01,
            "mem": 8,
            "instances": 100,
            "constraints": [["hostname", "MAX_PER", "5"]],
        }))
        .unwrap()
    }

    /// Issue #11: sim nodes offered only `fake`, so an app without the label never placed.
    #[test]
    fn apps_without_a_driver_label_place_on_simulated_nodes() {
        let args = sim_args(25, SimArgs::DEFAULT_DRIVERS);
        let mut s = scheduler_of(&args);
        for (n, app) in [user_app("/u/a"), user_app("/u/b")].iter().enumerate() {
            let req = berth_server::controller::placement_request(app);
            assert_eq!(req.driver, "exec");
            let ids: Vec<String> = (0..100).map(|i| format!("{n}-{i}")).collect();
            let (placed, unplaced) = s.place_many(&ids, &req);
            assert_eq!(unplaced, None);
            assert_eq!(placed.len(), 100);
            // MAX_PER 5 on hostname: every node has a hostname of its own, so 100 tasks
            // spread over at least 20 of them, never more than 5 on one.
            let mut per_host = BTreeMap::<String, usize>::new();
            for (_, p) in &placed {
                *per_host.entry(p.host.clone()).or_default() += 1;
            }
            assert!(per_host.len() >= 20, "{per_host:?}");
            assert!(per_host.values().all(|&c| c <= 5), "{per_host:?}");
        }
        // A docker app is taken too.
        let mut docker = user_app("/u/d");
        docker.container = serde_json::from_value(serde_json::json!({
            "type": "DOCKER", "docker": {"image": "busybox"}
        }))
        .unwrap();
        let req = berth_server::controller::placement_request(&docker);
        assert_eq!(req.driver, "docker");
        assert!(s.place("d-0", &req).is_ok());

        // Only `fake`: the app waits, and the queue says why.
        let mut only_fake = scheduler_of(&sim_args(25, "fake"));
        let req = berth_server::controller::placement_request(&user_app("/u/a"));
        let u = only_fake.place("x", &req).unwrap_err();
        assert_eq!(u.reasons["driver exec not available"], 25);
    }

    #[test]
    fn drivers_flag() {
        assert_eq!(
            parse_drivers(SimArgs::DEFAULT_DRIVERS).unwrap(),
            [DriverKind::Exec, DriverKind::Docker, DriverKind::Fake]
        );
        assert_eq!(parse_drivers("Fake, fake").unwrap(), [DriverKind::Fake]);
        assert!(parse_drivers("").is_err());
        assert!(parse_drivers("exec,podman").is_err());
        let args = sim_args(3, "fake,exec");
        let kinds = parse_drivers(&args.drivers).unwrap();
        let hosts: std::collections::BTreeSet<String> = (0..3)
            .map(|i| node_info(&args, &[], &kinds, i).hostname)
            .collect();
        assert_eq!(hosts.len(), 3, "every simulated node has its own hostname");
        assert_eq!(node_info(&args, &[], &kinds, 0).drivers, ["fake", "exec"]);
    }
}
