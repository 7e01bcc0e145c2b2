//! `berth token create|list|revoke` and `berth login`.

use crate::Ctx;
use crate::client::Client;
use crate::error::CliError;
use crate::table::Table;
use crate::view::{or_dash, s};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct TokenCmd {
    #[command(subcommand)]
    pub command: TokenSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenSubcommand {
    /// Create a token; its secret is printed once and never shown again.
    Create {
        /// What the token is for (shown in listings and the audit log).
        #[arg(long)]
        name: String,
        /// cluster-admin, operator, app-admin or viewer.
        #[arg(long, required_unless_present = "join")]
        role: Option<String>,
        /// app-admin only: a namespace (`prod`) or an app id prefix (`/team/web`); repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime, e.g. `90s`, `12h`, `30d` (default: until revoked).
        #[arg(long)]
        ttl: Option<String>,
        /// A join token for agents instead of a user token.
        #[arg(long, conflicts_with_all = ["role", "scopes"])]
        join: bool,
    },
    /// List tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token at once.
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The token to keep (default: read from stdin).
    #[arg(long = "with-token", value_name = "TOKEN")]
    pub with_token: Option<String>,
}

pub(crate) async fn run_token(ctx: &mut Ctx<'_>, cmd: TokenSubcommand) -> Result<(), CliError> {
    match cmd {
        TokenSubcommand::Create {
            name,
            role,
            scopes,
            ttl,
            join,
        } => {
            let mut body = json!({ "name": name });
            if join {
                body["purpose"] = json!("node-join");
            }
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let v = ctx.client.post("/api/v1/tokens", &body).await?;
            if ctx.json_mode() {
                return ctx.json(&v);
            }
            ctx.line(s(&v, "token"))?;
            // The secret goes to stdout alone (for `$(berth token create ...)`); the rest
            // to stderr.
            eprintln!(
                "token {} ({}{}) created; keep it now: it is not shown again",
                s(&v, "id"),
                if join { "node-join" } else { s(&v, "role") },
                match v["expiresAt"].as_str() {
                    Some(e) => format!(", expires {e}"),
                    None => String::new(),
                }
            );
            Ok(())
        }
        TokenSubcommand::List => {
            let v = ctx.client.get("/api/v1/tokens").await?;
            if ctx.json_mode() {
                return ctx.json(&v);
            }
            let mut t = Table::new(&[
                "ID", "NAME", "PURPOSE", "ROLE", "SCOPES", "CREATED", "EXPIRES", "BY",
            ]);
            for tok in v["tokens"].as_array().into_iter().flatten() {
                let scopes: Vec<&str> = tok["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                t.row(vec![
                    s(tok, "id").to_string(),
                    s(tok, "name").to_string(),
                    s(tok, "purpose").to_string(),
                    if s(tok, "purpose") == "node-join" {
                        "-".to_string()
                    } else {
                        s(tok, "role").to_string()
                    },
                    or_dash(scopes.join(",")),
                    s(tok, "createdAt").to_string(),
                    or_dash(s(tok, "expiresAt")),
                    s(tok, "createdBy").to_string(),
                ]);
            }
            ctx.write(&t.render())
        }
        TokenSubcommand::Revoke { id } => {
            let v = ctx
                .client
                .delete(&format!(
                    "/api/v1/tokens/{}",
                    crate::client::encode(&id, false)
                ))
                .await?;
            if ctx.json_mode() {
                return ctx.json(&v);
            }
            ctx.line(&format!("token {id} revoked"))
        }
    }
}

pub(crate) async fn login(ctx: &mut Ctx<'_>, args: LoginArgs) -> Result<(), CliError> {
    let token = match args.with_token {
        Some(t) => t,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CliError::io("reading the token from stdin", e))?;
            line
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(CliError::Input(
            "no token: pass --with-token TOKEN or pipe it on stdin".into(),
        ));
    }
    let server = ctx.client.base_url().to_string();
    let checked = Client::with_options(&server, Some(&token), ctx.client.ca_cert())?;
    let who = checked.get("/api/v1/whoami").await?;
    let path = crate::config::save(&crate::config::Config {
        server: Some(server.clone()),
        token: Some(token),
    })?;
    if ctx.json_mode() {
        return ctx.json(&who);
    }
    ctx.line(&format!(
        "logged in to {server} as {} ({}); token kept in {}",
        s(&who, "name"),
        or_dash(s(&who, "role")),
        path.display()
    ))
}
