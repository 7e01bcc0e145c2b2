//! `berth`: the control plane, the node agent, a one-process dev cluster and the CLI, in
//! one binary.

mod agent_cmd;
mod dev_cmd;
mod ha_cmd;
mod server_cmd;
mod sim_cmd;
mod tls_cmd;

/// mimalloc: the control plane allocates many small, short-lived objects (JSON, task
/// records) from many threads; glibc's allocator spent a quarter of the server's CPU on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use berth_cli::{
    AppCmd, ClientCommand, ClientOpts, DeploymentCmd, EventsArgs, NodeCmd, OutputFormat, TaskCmd,
};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: a container platform for private clouds, in one binary."
)]
struct Cli {
    /// Berth server URL (BERTH_ADDR); an agent or sim may name several (repeat or comma-separate).
    #[arg(
        long = "server",
        env = "BERTH_ADDR",
        global = true,
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// CA certificate(s) (PEM) to verify an https:// server with, instead of the system's
    /// roots (BERTH_CA_CERT): for client commands, agents and sims.
    #[arg(long = "ca-cert", env = "BERTH_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format of client commands: aligned tables for people, JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: OutputFormat,
    /// API token of client commands (BERTH_TOKEN; default: the one `berth login` kept).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (REST API, store, scheduler, controllers).
    Server(server_cmd::ServerArgs),
    /// Run the node agent on this host.
    Agent(agent_cmd::AgentArgs),
    /// Run a server and an agent in one process: the quickest way to try Berth.
    Dev(dev_cmd::DevArgs),
    /// Simulate many nodes in one process (real agent protocol, fake driver), for load tests.
    Sim(sim_cmd::SimArgs),
    /// Create, update, scale, restart and delete apps.
    App(AppCmd),
    /// List and kill tasks.
    Task(TaskCmd),
    /// Chronos jobs: list, show, add, run, kill, delete, history, logs.
    Job(berth_cli::JobCmd),
    /// List and cancel deployments.
    Deployment(DeploymentCmd),
    /// Follow the event stream.
    Events(EventsArgs),
    /// Inspect nodes.
    Node(NodeCmd),
    /// The service catalog: services, their instances and health.
    Service(berth_cli::ServiceCmd),
    /// Render config files (nginx, HAProxy) from the catalog; check, swap and reload on change.
    Template(berth_cli::TemplateArgs),
    /// Create, list and revoke API tokens (cluster-admin).
    Token(berth_cli::TokenCmd),
    /// Check a token against the server and keep both in ~/.config/berth/config.json (0600).
    Login(berth_cli::LoginArgs),
    /// Internal: the per-task supervisor of the exec driver.
    #[command(name = "__shim", hide = true)]
    Shim { task_dir: std::path::PathBuf },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The shim must not start a multi-threaded runtime before it forks its task.
    if let Command::Shim { task_dir } = &cli.command {
        let code = berth_agent::shim::main(task_dir);
        return std::process::ExitCode::from(code.clamp(0, 255) as u8);
    }
    // Apps asking for Docker options the driver cannot apply are refused at the API (422).
    berth_core::validate::set_docker_parameter_check(berth_agent::driver::docker::check_parameters);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ClientExit>() {
            Some(ClientExit(code)) => std::process::ExitCode::from((*code).clamp(1, 255) as u8),
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// A client command failed: already reported, exit with this code (2 = bad input).
#[derive(Debug)]
struct ClientExit(i32);

impl std::fmt::Display for ClientExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for ClientExit {}

async fn client(opts: ClientOpts, cmd: ClientCommand) -> Result<()> {
    match berth_cli::run(&opts, cmd).await {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("{}", e.report());
            Err(ClientExit(e.exit_code()).into())
        }
    }
}

/// With several servers (`--server a,b,c`, all of one cluster: followers proxy to the
/// leader), the first whose port accepts a connection within a second; the first named
/// when none does (the command then says it is unreachable).
fn first_live(servers: &[String]) -> Option<String> {
    use std::net::ToSocketAddrs;
    if servers.len() <= 1 {
        return servers.first().cloned();
    }
    let reachable = |url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        let hostport = rest.split('/').next().unwrap_or(rest);
        let with_port = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:{}", if scheme == "https" { 443 } else { 80 })
        };
        with_port.to_socket_addrs().is_ok_and(|mut addrs| {
            addrs.any(|a| {
                std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok()
            })
        })
    };
    servers
        .iter()
        .find(|s| reachable(s))
        .or(servers.first())
        .cloned()
}

async fn run(cli: Cli) -> Result<()> {
    let kept = berth_cli::config::load();
    let opts = ClientOpts {
        server: first_live(&cli.servers)
            .or(kept.server.clone())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into()),
        output: cli.output,
        // `berth login` checks a new token: the kept one must not stand in for it.
        token: cli
            .token
            .clone()
            .or(if matches!(cli.command, Command::Login(_)) {
                None
            } else {
                kept.token
            }),
        ca_cert: cli.ca_cert.clone(),
    };
    let need_servers = |what: &str| -> Result<Vec<String>> {
        if cli.servers.is_empty() {
            anyhow::bail!("berth {what} needs --server URL (or BERTH_ADDR)");
        }
        Ok(cli.servers.clone())
    };
    match cli.command {
        Command::Server(args) => {
            init_logging();
            server_cmd::run(args).await
        }
        Command::Agent(mut args) => {
            args.servers = need_servers("agent")?;
            args.node.ca_cert = cli.ca_cert.clone();
            init_logging();
            agent_cmd::run(args).await
        }
        Command::Dev(args) => {
            init_logging();
            dev_cmd::run(args).await
        }
        Command::Sim(mut args) => {
            args.servers = need_servers("sim")?;
            args.ca_cert = cli.ca_cert.clone();
            sim_cmd::init_logging();
            sim_cmd::run(args).await
        }
        Command::App(cmd) => client(opts, ClientCommand::App(cmd)).await,
        Command::Task(cmd) => client(opts, ClientCommand::Task(cmd)).await,
        Command::Job(cmd) => client(opts, ClientCommand::Job(cmd)).await,
        Command::Deployment(cmd) => client(opts, ClientCommand::Deployment(cmd)).await,
        Command::Events(args) => client(opts, ClientCommand::Events(args)).await,
        Command::Node(cmd) => client(opts, ClientCommand::Node(cmd)).await,
        Command::Service(cmd) => client(opts, ClientCommand::Service(cmd)).await,
        Command::Template(args) => client(opts, ClientCommand::Template(args)).await,
        Command::Token(cmd) => client(opts, ClientCommand::Token(cmd)).await,
        Command::Login(args) => client(opts, ClientCommand::Login(args)).await,
        Command::Shim { .. } => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
