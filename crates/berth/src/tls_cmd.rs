//! TLS flags: `berth server --tls auto | --tls-cert/--tls-key`, and the agent's side (its
//! identity when its servers speak HTTPS). docs/operations.md, "TLS".

use anyhow::{Context, Result, bail};
use berth_server::tls::{ServerTls, api_names};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plain HTTP (for now the default: tokens travel in cleartext).
    Off,
    /// A CA and a server certificate made in <data-dir>/tls on first start, reused later.
    Auto,
}

/// `berth server`'s TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// `auto`: serve HTTPS with a CA and server certificate made in <data-dir>/tls (clients
    /// and agents verify it with --ca-cert <data-dir>/tls/ca.crt); `off`: plain HTTP. Default:
    /// off, or on with --tls-cert/--tls-key.
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// Serve HTTPS with this certificate (PEM; the chain, server certificate first).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Another name (DNS name or IP address) for the certificate `--tls auto` makes
    /// (repeatable); --advertise's host, the listen address, localhost and 127.0.0.1 are in.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
}

impl TlsArgs {
    /// The server's TLS, from the flags (`None`: plain HTTP).
    pub fn server_tls(
        &self,
        data_dir: &Path,
        listen: SocketAddr,
        advertise: Option<&str>,
    ) -> Result<Option<Arc<ServerTls>>> {
        let dir = data_dir.join("tls");
        let tls = match (self.tls, &self.tls_cert, &self.tls_key) {
            (Some(TlsMode::Auto), Some(_), _) => {
                bail!("--tls auto makes its own certificate: drop it, or drop --tls-cert/--tls-key")
            }
            (Some(TlsMode::Off), Some(_), _) => {
                bail!("--tls off contradicts --tls-cert/--tls-key")
            }
            (_, Some(cert), Some(key)) => {
                ServerTls::from_files(&dir, cert, key).context("--tls-cert/--tls-key")?
            }
            (Some(TlsMode::Auto), None, _) => {
                let advertise = advertise.map_or_else(|| listen.to_string(), str::to_string);
                let names = api_names(listen, &advertise, &self.tls_san)?;
                ServerTls::auto(&dir, &names).context("--tls auto")?
            }
            _ => {
                if !self.tls_san.is_empty() {
                    bail!("--tls-san needs --tls auto");
                }
                return Ok(None);
            }
        };
        Ok(Some(Arc::new(tls)))
    }
}

/// The agent's TLS identity: when every server URL is `https://`, its endpoint serves TLS
/// with a certificate the server issues (`None` for `http://` servers).
pub fn agent_identity(
    servers: &[String],
    data_dir: &Path,
    node_id: &str,
) -> Result<Option<Arc<berth_agent::tls::AgentIdentity>>> {
    let https = servers
        .iter()
        .filter(|s| s.trim().to_ascii_lowercase().starts_with("https://"))
        .count();
    if https == 0 {
        return Ok(None);
    }
    if https != servers.len() {
        bail!(
            "--server: all servers must use https://, or none (got {})",
            servers.join(", ")
        );
    }
    let identity =
        berth_agent::tls::AgentIdentity::load(data_dir, node_id).context("the agent's TLS key")?;
    Ok(Some(identity))
}
