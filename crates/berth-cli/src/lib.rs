//! Berth's command-line client: the `app`, `task`, `deployment`, `events`, `node` and
//! `service` subcommands of the `berth` binary, speaking Marathon's v2 API (and Berth's `/api/v1`).
//!
//! The binary flattens [`ClientOpts`] into its top-level parser, adds [`ClientCommand`]'s
//! variants to its subcommands and calls [`run`]. On error it prints [`CliError::report`]
//! to stderr and exits with [`CliError::exit_code`].

mod access;
mod app;
mod client;
pub mod config;
mod deployment;
mod error;
mod events;
mod job;
mod node;
mod progress;
mod service;
mod table;
mod task;
mod template;
mod view;
mod watch;

pub use access::{LoginArgs, TokenCmd, TokenSubcommand};
pub use app::{AppCmd, AppSubcommand, DeployArgs, DeployWaitArgs, WaitArgs};
pub use client::{Client, Reply, encode, normalize_id, query};
pub use deployment::{DeploymentCmd, DeploymentSubcommand};
pub use error::{CliError, ErrorDetail};
pub use events::{EventsArgs, SseEvent, SseParser};
pub use job::{JobCmd, JobSubcommand};
pub use node::{NodeCmd, NodeSubcommand};
pub use service::{ServiceCmd, ServiceSubcommand};
pub use table::{Table, truncate};
pub use task::{TaskCmd, TaskSubcommand};
pub use template::TemplateArgs;

use serde_json::Value;
use std::io::{IsTerminal, Write};

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create, update, scale, restart and delete apps.
    App(AppCmd),
    /// List and kill tasks.
    Task(TaskCmd),
    /// Chronos jobs: list, show, add, run, kill, delete, history, logs.
    Job(JobCmd),
    /// List, show and cancel deployments.
    Deployment(DeploymentCmd),
    /// Follow the server's event stream (until Ctrl-C).
    Events(EventsArgs),
    /// Inspect, cordon and drain the cluster's nodes.
    Node(NodeCmd),
    /// The service catalog: every app as a service with its healthy instances.
    Service(ServiceCmd),
    /// Render config files (nginx, HAProxy) from the catalog and reload on change.
    Template(TemplateArgs),
    /// Create, list and revoke API tokens (cluster-admin).
    Token(TokenCmd),
    /// Check a token against a server and keep both in the config file.
    Login(LoginArgs),
}

/// Options shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// Address of the Berth server.
    #[arg(
        long,
        env = "BERTH_ADDR",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Output format: aligned tables for people, the server's JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    pub output: OutputFormat,
    /// API token (BERTH_TOKEN; default: the one `berth login` kept).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate(s) (PEM) to verify an https:// server with, instead of the system's
    /// roots (e.g. `<server data dir>/tls/ca.crt` of `berth server --tls auto`).
    #[arg(long, env = "BERTH_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Runs one client command, printing to stdout (with live progress bars when stdout is a
/// terminal).
pub async fn run(opts: &ClientOpts, cmd: ClientCommand) -> Result<(), CliError> {
    let mut stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    run_inner(opts, cmd, &mut stdout, tty).await
}

/// Runs one client command, printing to `out` (tests capture the output this way); progress
/// is printed as plain lines. A closed output pipe (`berth events | head`) ends the command
/// quietly.
pub async fn run_with_output(
    opts: &ClientOpts,
    cmd: ClientCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    run_inner(opts, cmd, out, false).await
}

async fn run_inner(
    opts: &ClientOpts,
    cmd: ClientCommand,
    out: &mut (dyn Write + Send),
    tty: bool,
) -> Result<(), CliError> {
    let client =
        Client::with_options(&opts.server, opts.token.as_deref(), opts.ca_cert.as_deref())?;
    let mut ctx = Ctx {
        client,
        format: opts.output,
        tty,
        out,
    };
    let result = match cmd {
        ClientCommand::App(c) => app::run(&mut ctx, c.command).await,
        ClientCommand::Task(c) => task::run(&mut ctx, c.command).await,
        ClientCommand::Job(c) => job::run(&mut ctx, c.command).await,
        ClientCommand::Deployment(c) => deployment::run(&mut ctx, c.command).await,
        ClientCommand::Events(a) => events::run(&mut ctx, a).await,
        ClientCommand::Node(c) => node::run(&mut ctx, c.command).await,
        ClientCommand::Service(c) => service::run(&mut ctx, c.command).await,
        ClientCommand::Template(a) => template::run(&mut ctx, a).await,
        ClientCommand::Token(c) => access::run_token(&mut ctx, c.command).await,
        ClientCommand::Login(a) => access::login(&mut ctx, a).await,
    };
    match result {
        Err(CliError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        other => other,
    }
}

/// What every command handler gets: the client, the output format and where to print.
pub(crate) struct Ctx<'a> {
    pub client: Client,
    pub format: OutputFormat,
    /// `out` is a terminal: progress may redraw a bar in place.
    pub tty: bool,
    pub out: &'a mut (dyn Write + Send),
}

impl Ctx<'_> {
    pub fn json_mode(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Writes `text` as is (callers include the trailing newline).
    pub fn write(&mut self, text: &str) -> Result<(), CliError> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|e| CliError::io("writing output", e))
    }

    pub fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.write(&format!("{text}\n"))
    }

    /// Pretty-prints the server's JSON (`{}` when it sent no body).
    pub fn json(&mut self, v: &Value) -> Result<(), CliError> {
        let v = if v.is_null() {
            &Value::Object(Default::default())
        } else {
            v
        };
        let text = serde_json::to_string_pretty(v).map_err(|e| CliError::BadResponse {
            url: self.client.base_url().to_string(),
            reason: e.to_string(),
        })?;
        self.line(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["app", "list", "-o", "json", "--server", "http://h:1"]).unwrap();
        assert_eq!(cli.opts.output, OutputFormat::Json);
        assert_eq!(cli.opts.server, "http://h:1");
        let cli = parse(&["--output", "table", "node", "list"]).unwrap();
        assert_eq!(cli.opts.output, OutputFormat::Table);
        assert!(matches!(
            cli.cmd,
            ClientCommand::Node(NodeCmd {
                command: NodeSubcommand::List
            })
        ));
        assert!(parse(&["app", "list", "-o", "yaml"]).is_err());
    }

    #[test]
    fn app_subcommands_parse() {
        let cli = parse(&[
            "app",
            "deploy",
            "-f",
            "app.json",
            "--force",
            "--wait",
            "--timeout",
            "60",
        ])
        .unwrap();
        let ClientCommand::App(AppCmd {
            command: AppSubcommand::Deploy(d),
        }) = cli.cmd
        else {
            panic!("not deploy: {:?}", cli.cmd)
        };
        assert_eq!(d.file, "app.json");
        assert!(d.force);
        assert!(d.wait.wait && !d.wait.detach);
        assert_eq!(d.wait.timeout, 60);
        assert!(
            parse(&["app", "deploy", "-f", "a.json", "--wait", "--detach"]).is_err(),
            "--wait contradicts --detach"
        );

        let cli = parse(&["app", "deploy", "-f", "-"]).unwrap();
        let ClientCommand::App(AppCmd {
            command: AppSubcommand::Deploy(d),
        }) = cli.cmd
        else {
            panic!()
        };
        assert_eq!(d.file, "-");
        assert!(
            !d.force && !d.wait.wait && !d.wait.detach,
            "waits by default"
        );
        assert_eq!(d.wait.timeout, 600);
        let cli = parse(&["app", "deploy", "-f", "a.json", "--detach"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::App(AppCmd {
                command: AppSubcommand::Deploy(DeployArgs {
                    wait: DeployWaitArgs { detach: true, .. },
                    ..
                })
            })
        ));

        let cli = parse(&["app", "scale", "/web", "5", "--force"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::App(AppCmd { command: AppSubcommand::Scale { ref id, instances: 5, force: true, .. } }) if id == "/web"
        ));
        assert!(parse(&["app", "scale", "/web", "-1"]).is_err());
        assert!(parse(&["app", "scale", "/web"]).is_err());
        assert!(parse(&["app", "deploy"]).is_err(), "-f is required");
        assert!(parse(&["app", "show"]).is_err(), "id is required");
        let cli = parse(&["app", "delete", "web", "--force"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::App(AppCmd {
                command: AppSubcommand::Delete { force: true, .. }
            })
        ));
        let cli = parse(&["app", "restart", "web"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::App(AppCmd {
                command: AppSubcommand::Restart { force: false, .. }
            })
        ));
        assert!(parse(&["app", "ls"]).is_ok(), "alias");
    }

    #[test]
    fn task_deployment_event_node_subcommands_parse() {
        let cli = parse(&["task", "list", "--app", "/web"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::Task(TaskCmd { command: TaskSubcommand::List { app: Some(ref a) } }) if a == "/web"
        ));
        let cli = parse(&["task", "kill", "a.1", "b.2", "--scale", "--wipe"]).unwrap();
        let ClientCommand::Task(TaskCmd {
            command: TaskSubcommand::Kill { ids, scale, wipe },
        }) = cli.cmd
        else {
            panic!()
        };
        assert_eq!(ids, ["a.1", "b.2"]);
        assert!(scale && wipe);
        assert!(parse(&["task", "kill"]).is_err(), "needs at least one id");

        let cli = parse(&["deployment", "cancel", "abc", "--force"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::Deployment(DeploymentCmd {
                command: DeploymentSubcommand::Cancel { force: true, .. }
            })
        ));
        assert!(parse(&["deployment", "list"]).is_ok());
        assert!(matches!(
            parse(&["deployment", "show", "d1"]).unwrap().cmd,
            ClientCommand::Deployment(DeploymentCmd { command: DeploymentSubcommand::Show { ref id } }) if id == "d1"
        ));

        let cli = parse(&["events", "--type", "status_update_event", "--type", "a,b"]).unwrap();
        let ClientCommand::Events(e) = cli.cmd else {
            panic!()
        };
        assert_eq!(e.types, ["status_update_event", "a", "b"]);
        let cli = parse(&["node", "show", "n1"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::Node(NodeCmd { command: NodeSubcommand::Show { ref id } }) if id == "n1"
        ));
        for action in ["cordon", "uncordon"] {
            assert!(parse(&["node", action, "n1"]).is_ok());
            assert!(parse(&["node", action]).is_err());
        }
        let cli = parse(&["node", "drain", "n1", "--wait", "--timeout", "30"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::Node(NodeCmd { command: NodeSubcommand::Drain { ref id, wait: true, timeout: 30 } }) if id == "n1"
        ));
        assert!(matches!(
            parse(&["node", "drain", "n1"]).unwrap().cmd,
            ClientCommand::Node(NodeCmd {
                command: NodeSubcommand::Drain {
                    wait: false,
                    timeout: 600,
                    ..
                }
            })
        ));
        assert!(parse(&["bogus"]).is_err());
    }
}
