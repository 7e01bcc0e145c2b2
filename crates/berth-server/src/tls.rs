//! TLS for the API and for the server's calls to agents (docs/operations.md, "TLS").
//!
//! - `--tls auto`: on first start the server makes a CA, `<data-dir>/tls/ca.crt` and
//!   `ca.key` (0600), and a server certificate signed by it (`server.crt`, `server.key`) for
//!   the API's names ([`api_names`]); later starts reuse them, and re-issue the server
//!   certificate when it no longer covers those names or expires within 30 days. Agents and
//!   the CLI verify the API with `--ca-cert <data-dir>/tls/ca.crt`.
//! - `--tls-cert FILE --tls-key FILE`: the operator's certificate (chain) and key.
//!
//! With either, a second CA, `agents-ca.crt`/`agents-ca.key`, issues the certificates of the
//! agents' HTTP endpoints (for the CSR an agent sends when it registers) and the client
//! certificate the server presents when it calls an agent. It is a CA of its own so that a
//! certificate issued to a node can never pass for the API's: clients trust `ca.crt` (or the
//! operator's CA), never the agents CA. Agents learn the agents CA from the registration
//! answer, which reached them over the verified API connection.

use crate::Inner;
use crate::error::{ApiError, ApiResult};
use berth_core::node::NodeInfo;
use berth_core::protocol::{IssuedCertificate, RegisterTls};
use berth_tls::{Ca, Leaf, TlsError, TlsSlot, Usage};
use parking_lot::Mutex;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// `ca.crt` / `ca.key`: the CA of the API's certificate (`--tls auto`).
pub const API_CA: &str = "ca";
/// `agents-ca.crt` / `agents-ca.key`: the CA of agents' certificates and of the server's
/// client certificate.
pub const AGENTS_CA: &str = "agents-ca";

const DAY: Duration = Duration::from_secs(86_400);
/// The API certificate `--tls auto` makes.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86_400);
/// ... is made anew when it expires within this.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// An agent's certificate (renewed at every registration: each agent start, and monthly).
const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// The server's client certificate for calls to agents (in memory only; a new one daily).
const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// Largest certificate request accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// The server's TLS: the API's configuration, the agents CA and the client that calls agents.
pub struct ServerTls {
    api: Arc<TlsSlot>,
    agents_ca: Ca,
    agent_client: Mutex<(Instant, reqwest::Client)>,
    /// Where the API's certificate comes from, for the log.
    pub describe: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// `--tls auto`: the CA and server certificate in `tls_dir`, made when missing; the
    /// server certificate names `names` (see [`api_names`]).
    pub fn auto(tls_dir: &Path, names: &[String]) -> Result<ServerTls, TlsError> {
        let (ca, created) = Ca::load_or_create(tls_dir, API_CA, "Berth API CA")?;
        let ca_path = tls_dir.join(format!("{API_CA}.crt"));
        if created {
            tracing::info!(ca = %ca_path.display(), "created the API's CA: clients and agents verify the server with --ca-cert {}", ca_path.display());
        }
        let cert_path = tls_dir.join("server.crt");
        let key_path = tls_dir.join("server.key");
        let roots = [ca.certificate_der().clone()];
        let existing = match (
            berth_tls::pem::read_certs(&cert_path),
            berth_tls::pem::read_key(&key_path),
        ) {
            (Ok(chain), Ok(key)) => {
                match berth_tls::verify_server_cert(
                    &chain,
                    &roots,
                    names,
                    SystemTime::now() + RENEW_BEFORE,
                ) {
                    Ok(()) => Some((chain, key)),
                    Err(why) => {
                        tracing::info!(cert = %cert_path.display(), reason = %why, "issuing a new server certificate");
                        None
                    }
                }
            }
            _ => None,
        };
        let (chain, key) = match existing {
            Some(pair) => pair,
            None => {
                let (cert, key) = ca.issue(&Leaf {
                    common_name: "berth-server".into(),
                    names: names.to_vec(),
                    usage: Usage::Server,
                    valid_for: SERVER_CERT_VALIDITY,
                })?;
                berth_tls::write_file(&key_path, key.as_bytes(), 0o600)?;
                berth_tls::write_file(&cert_path, cert.as_bytes(), 0o644)?;
                tracing::info!(cert = %cert_path.display(), names = ?names, "server certificate issued by the API's CA");
                (
                    berth_tls::pem::certs(cert.as_bytes(), "server certificate")?,
                    berth_tls::pem::key(key.as_bytes(), "server key")?,
                )
            }
        };
        let config = berth_tls::server_config(chain, key, None)?;
        Self::with_api(
            tls_dir,
            config,
            format!(
                "auto: {} signed by {} (names {})",
                cert_path.display(),
                ca_path.display(),
                names.join(", ")
            ),
        )
    }

    /// `--tls-cert/--tls-key`: the operator's certificate chain and key (PEM files); the
    /// agents CA is kept in `tls_dir`.
    pub fn from_files(tls_dir: &Path, cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let chain = berth_tls::pem::read_certs(cert)?;
        let key_der = berth_tls::pem::read_key(key)?;
        let config =
            berth_tls::server_config(chain, key_der, None).map_err(|e| TlsError::Invalid {
                what: format!(
                    "--tls-cert {} / --tls-key {}",
                    cert.display(),
                    key.display()
                ),
                message: e.to_string(),
            })?;
        Self::with_api(
            tls_dir,
            config,
            format!("{} (operator-provided)", cert.display()),
        )
    }

    fn with_api(
        tls_dir: &Path,
        config: Arc<berth_tls::rustls::ServerConfig>,
        describe: String,
    ) -> Result<ServerTls, TlsError> {
        let (agents_ca, _) = Ca::load_or_create(tls_dir, AGENTS_CA, "Berth agents CA")?;
        let client = build_agent_client(&agents_ca)?;
        Ok(ServerTls {
            api: TlsSlot::new(Some(config)),
            agents_ca,
            agent_client: Mutex::new((Instant::now(), client)),
            describe,
        })
    }

    /// The CA of agents' certificates, PEM.
    pub fn agents_ca_pem(&self) -> &str {
        self.agents_ca.certificate_pem()
    }

    /// The client for calls to agents: trusts only the agents CA, presents the server's
    /// client certificate (a new one every day).
    pub fn agent_client(&self) -> reqwest::Client {
        let mut slot = self.agent_client.lock();
        if slot.0.elapsed() >= DAY {
            match build_agent_client(&self.agents_ca) {
                Ok(c) => *slot = (Instant::now(), c),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the client certificate for agents failed; keeping the current one")
                }
            }
        }
        slot.1.clone()
    }
}

fn build_agent_client(ca: &Ca) -> Result<reqwest::Client, TlsError> {
    let (cert, key) = ca.issue(&Leaf {
        common_name: "berth-server".into(),
        names: vec![],
        usage: Usage::Client,
        valid_for: CLIENT_CERT_VALIDITY,
    })?;
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        // Followed logs stream for as long as the client listens: no overall timeout, but a
        // silent connection is probed.
        .tcp_keepalive(Duration::from_secs(30));
    berth_tls::client::trust_only(builder, std::slice::from_ref(ca.certificate_der()))?
        .identity(berth_tls::client::identity(&cert, &key)?)
        .build()
        .map_err(|e| TlsError::Invalid {
            what: "client for agents".into(),
            message: berth_tls::client::error_chain(&e),
        })
}

/// Serves the API over TLS (the same router and layers as plain HTTP).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<ServerTls>,
) -> std::io::Result<()> {
    berth_tls::serve::serve(listener, tls.api.clone(), app, std::future::pending()).await
}

/// The client for calls to agents when the server runs with TLS.
pub(crate) fn agent_client(s: &Inner) -> Option<reqwest::Client> {
    s.config.tls.as_ref().map(|t| t.agent_client())
}

/// The host of `host:port`, `[v6]:port`, a bare host or a URL.
fn host_of(addr: &str) -> Option<String> {
    let addr = addr.trim();
    if addr.contains("://") {
        let url = reqwest::Url::parse(addr).ok()?;
        return url
            .host_str()
            .map(|h| h.trim_matches(['[', ']']).to_string());
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(sa.ip().to_string());
    }
    if let Ok(ip) = addr.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    (!host.is_empty()).then(|| host.to_string())
}

fn usable(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok() || berth_tls::ca::is_dns_name(name)
}

/// The names the `--tls auto` server certificate is for: `--advertise`'s host, the listen
/// address (this host's name when listening on every address), `localhost`, `127.0.0.1`,
/// and `extra` (`--tls-san`, each of which must be an IP address or a DNS name).
pub fn api_names(
    listen: SocketAddr,
    advertise: &str,
    extra: &[String],
) -> Result<Vec<String>, TlsError> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if usable(&n) && !names.contains(&n) {
            names.push(n);
        }
    };
    if let Some(h) = host_of(advertise) {
        add(h);
    }
    if listen.ip().is_unspecified() {
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            add(h.trim().to_string());
        }
    } else {
        add(listen.ip().to_string());
    }
    add("localhost".into());
    add("127.0.0.1".into());
    for e in extra {
        if !usable(e) {
            return Err(TlsError::Invalid {
                what: format!("--tls-san {e}"),
                message: "neither an IP address nor a DNS name".into(),
            });
        }
        add(e.clone());
    }
    Ok(names)
}

/// The names an agent's certificate is for: its address, hostname and the host of its
/// endpoint's URL (those a certificate can carry).
fn agent_names(info: &NodeInfo) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let candidates = [
        host_of(&info.address),
        Some(info.hostname.clone()),
        info.agent_url.as_deref().and_then(host_of),
    ];
    for n in candidates.into_iter().flatten() {
        if usable(&n) && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The certificate for a registering agent (`POST /api/v1/agent/register`): when the server
/// runs with TLS and the body has a `csr`, a certificate for the node's id and addresses
/// signed by the agents CA. Errors are the request's (422 at `/csr` or `/address`), found
/// before anything is registered.
pub(crate) fn register_certificates(
    s: &Inner,
    body: &serde_json::Value,
    info: &NodeInfo,
) -> ApiResult<IssuedCertificate> {
    let req =
        RegisterTls::deserialize(body).map_err(|e| ApiError::invalid("/csr", e.to_string()))?;
    let (Some(tls), Some(csr)) = (&s.config.tls, req.csr) else {
        return Ok(IssuedCertificate::default());
    };
    if csr.len() > MAX_CSR_BYTES {
        return Err(ApiError::invalid(
            "/csr",
            format!("a certificate request is at most {MAX_CSR_BYTES} bytes"),
        ));
    }
    let names = agent_names(info);
    if names.is_empty() {
        return Err(ApiError::invalid(
            "/address",
            format!(
                "'{}' is neither an IP address nor a DNS name: no certificate can name this node",
                info.address
            ),
        ));
    }
    let certificate = tls
        .agents_ca
        .sign_request(
            &csr,
            &Leaf {
                common_name: info.id.clone(),
                names: names.clone(),
                usage: Usage::Server,
                valid_for: AGENT_CERT_VALIDITY,
            },
        )
        .map_err(|e| ApiError::invalid("/csr", e.to_string()))?;
    tracing::info!(node = %info.id, names = ?names, "issued the node's certificate");
    Ok(IssuedCertificate {
        certificate: Some(certificate),
        ca_certificate: Some(tls.agents_ca_pem().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("10.0.0.1:8080").as_deref(), Some("10.0.0.1"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(host_of("ctl.example:8080").as_deref(), Some("ctl.example"));
        assert_eq!(host_of("ctl.example").as_deref(), Some("ctl.example"));
        assert_eq!(host_of("::1").as_deref(), Some("::1"));
        assert_eq!(
            host_of("https://10.1.1.1:5051").as_deref(),
            Some("10.1.1.1")
        );
        assert_eq!(
            host_of("https://[fd00::5]:5051").as_deref(),
            Some("fd00::5")
        );
        assert_eq!(
            host_of("http://n1.example:5051/x").as_deref(),
            Some("n1.example")
        );
    }

    #[test]
    fn api_names_cover_advertise_listen_and_loopback() {
        let listen: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let names = api_names(listen, "ctl.example:8080", &["lb.example".into()]).unwrap();
        assert_eq!(
            names,
            [
                "ctl.example",
                "10.0.0.5",
                "localhost",
                "127.0.0.1",
                "lb.example"
            ]
        );
        let names = api_names("127.0.0.1:0".parse().unwrap(), "127.0.0.1:4000", &[]).unwrap();
        assert_eq!(names, ["127.0.0.1", "localhost"]);
        let e = api_names(listen, "x:1", &["not a name".into()]).unwrap_err();
        assert!(e.to_string().contains("--tls-san not a name"), "{e}");
    }

    #[test]
    fn auto_makes_then_reuses_then_renews_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        ServerTls::auto(dir.path(), &names).unwrap();
        let cert = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        for f in ["ca.key", "server.key", "agents-ca.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        ServerTls::auto(dir.path(), &names).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("server.crt")).unwrap(),
            cert
        );
        let more = vec!["localhost".to_string(), "ctl.example".to_string()];
        ServerTls::auto(dir.path(), &more).unwrap();
        let renewed = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        assert_ne!(renewed, cert);
        let ca = berth_tls::pem::read_certs(&dir.path().join("ca.crt")).unwrap();
        let chain = berth_tls::pem::certs(renewed.as_bytes(), "c").unwrap();
        berth_tls::verify_server_cert(&chain, &ca, &more, SystemTime::now()).unwrap();
    }

    #[test]
    fn operator_files_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("op").unwrap();
        let leaf = Leaf {
            common_name: "api".into(),
            names: vec!["localhost".into()],
            usage: Usage::Server,
            valid_for: DAY,
        };
        let (cert, key) = ca.issue(&leaf).unwrap();
        let (_, other_key) = ca.issue(&leaf).unwrap();
        let c = dir.path().join("api.crt");
        let k = dir.path().join("api.key");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        ServerTls::from_files(&dir.path().join("tls"), &c, &k).unwrap();
        std::fs::write(&k, &other_key).unwrap();
        let e = ServerTls::from_files(&dir.path().join("tls"), &c, &k).unwrap_err();
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        let e = ServerTls::from_files(&dir.path().join("tls"), &k, &k).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }

    #[test]
    fn agent_names_skip_what_a_certificate_cannot_carry() {
        let mut info = berth_core::node::NodeInfo {
            id: "n1".into(),
            hostname: "n1".into(),
            address: "10.0.0.9".into(),
            resources: berth_core::node::NodeResources::new(1.0, 1.0, 1.0),
            reserved: Default::default(),
            overcommit: Default::default(),
            port_ranges: vec![],
            attributes: Default::default(),
            drivers: vec![],
            conditions: vec![],
            agent_version: String::new(),
            agent_url: Some("https://agent.example:5051".into()),
        };
        assert_eq!(agent_names(&info), ["10.0.0.9", "n1", "agent.example"]);
        info.hostname = "host name".into();
        info.address = "n1.example".into();
        info.agent_url = None;
        assert_eq!(agent_names(&info), ["n1.example"]);
    }
}
