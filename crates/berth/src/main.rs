//! `berth`: the control plane, the node agent, a one-process dev cluster and the CLI, in
//! one binary.

mod agent_cmd;
mod dev_cmd;
mod server_cmd;
mod sim_cmd;

use anyhow::Result;
use berth_cli::{AppCmd, ClientCommand, ClientOpts, DeploymentCmd, EventsArgs, NodeCmd, TaskCmd};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: a container platform for private clouds, in one binary."
)]
struct Cli {
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
    App {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        cmd: AppCmd,
    },
    /// List and kill tasks.
    Task {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        cmd: TaskCmd,
    },
    /// List and cancel deployments.
    Deployment {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        cmd: DeploymentCmd,
    },
    /// Follow the event stream.
    Events {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: EventsArgs,
    },
    /// Inspect nodes.
    Node {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        cmd: NodeCmd,
    },
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
    match rt.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn client(opts: ClientOpts, cmd: ClientCommand) -> Result<()> {
    berth_cli::run(&opts, cmd)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Server(args) => {
            init_logging();
            server_cmd::run(args).await
        }
        Command::Agent(args) => {
            init_logging();
            agent_cmd::run(args).await
        }
        Command::Dev(args) => {
            init_logging();
            dev_cmd::run(args).await
        }
        Command::Sim(args) => {
            sim_cmd::init_logging();
            sim_cmd::run(args).await
        }
        Command::App { opts, cmd } => client(opts, ClientCommand::App(cmd)).await,
        Command::Task { opts, cmd } => client(opts, ClientCommand::Task(cmd)).await,
        Command::Deployment { opts, cmd } => client(opts, ClientCommand::Deployment(cmd)).await,
        Command::Events { opts, args } => client(opts, ClientCommand::Events(args)).await,
        Command::Node { opts, cmd } => client(opts, ClientCommand::Node(cmd)).await,
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
