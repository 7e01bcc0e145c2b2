//! Berth's TLS, shared by the server, the agent and the CLI (rustls with the aws-lc-rs
//! provider, the same stack reqwest uses; no OpenSSL):
//!
//! - [`pem`]: certificates and keys from PEM files, with errors that name the file;
//! - [`ca`]: a small certificate authority kept in a directory (`NAME.crt`, `NAME.key` mode
//!   0600) that issues server and client certificates, and signs certificate requests;
//! - [`serve`]: HTTPS for an axum [`Router`](axum::Router) (an accept loop over tokio-rustls
//!   and hyper), with `ConnectInfo<SocketAddr>` and the client's certificate in every request;
//! - [`client`]: reqwest clients that trust exactly one CA, and error texts that say what
//!   went wrong in a handshake.

pub mod ca;
pub mod client;
pub mod pem;
pub mod serve;

pub use ca::{Ca, Leaf, Usage};
pub use serve::{TlsPeer, TlsSlot};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use rustls;
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS file or configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl TlsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TlsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        TlsError::Invalid {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// The crypto provider of every Berth TLS configuration (aws-lc-rs, as reqwest's).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A root store holding exactly `certs`; a certificate that is not one is an error.
pub fn root_store(
    certs: &[CertificateDer<'static>],
    what: &str,
) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| TlsError::invalid(what, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// A server configuration presenting `chain` (end-entity first) with `key`. With
/// `client_roots`, clients may present a certificate, which must then be issued by one of
/// them (a client without one still connects: see [`TlsPeer`] to tell them apart).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<&[CertificateDer<'static>]>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let p = provider();
    if chain.is_empty() {
        return Err(TlsError::invalid("certificate", "no certificate"));
    }
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &p)
        .map_err(|e| TlsError::invalid("certificate and key", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::invalid("TLS configuration", e))?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let store = root_store(roots, "client CA")?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), p)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::invalid("client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Always the same certificate.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Checks that `chain` is a server certificate issued by one of `roots`, valid for every one
/// of `names` (DNS names or IP addresses) at `at`. Returns what is wrong.
pub fn verify_server_cert(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    names: &[String],
    at: std::time::SystemTime,
) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let store = root_store(roots, "CA").map_err(|e| e.to_string())?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|e| e.to_string())?;
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("no certificate".into());
    };
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    for name in names {
        let server_name = rustls::pki_types::ServerName::try_from(name.as_str())
            .map_err(|e| format!("'{name}': {e}"))?;
        verifier
            .verify_server_cert(
                leaf,
                rest,
                &server_name,
                &[],
                rustls::pki_types::UnixTime::since_unix_epoch(since),
            )
            .map_err(|e| format!("for '{name}': {e}"))?;
    }
    Ok(())
}

/// Writes `data` to `path` through a temporary file and a rename (a crash leaves the old file
/// or the new one, never half of one), created with `mode`.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| TlsError::io(&tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| TlsError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TlsError::io(path, e))
}

/// Creates `dir` (and its parents) if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))
}
