//! The agent's identity when its servers speak HTTPS (docs/operations.md, "TLS"): a key
//! kept in `<data-dir>/tls/agent.key` (0600, made on first start), a certificate request
//! for it sent with every registration, and the certificate the server answers with
//! (`agent.crt`, with the agents CA in `agents-ca.crt`). The agent's HTTP endpoint serves
//! TLS with that certificate and takes only clients with a certificate from that CA (the
//! server) for everything but `/ping` (see [`crate::http::serve_tls`]).
//!
//! A restarted agent reuses its key, and serves with the certificate of its last run until
//! the registration brings a new one; the certificate is renewed at every registration and
//! at least every 30 days.

use berth_core::protocol::IssuedCertificate;
use berth_tls::{TlsError, TlsSlot, pem};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The certificate is renewed (by registering again) once it is this old.
const RENEW_AFTER: Duration = Duration::from_secs(30 * 86_400);

pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.crt";
pub const CA_FILE: &str = "agents-ca.crt";

/// The agent's key, its certificate request, and the TLS configuration of its endpoint.
pub struct AgentIdentity {
    dir: PathBuf,
    key_pem: String,
    csr: String,
    slot: Arc<TlsSlot>,
    /// When the server's certificate was installed by this run.
    installed: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl AgentIdentity {
    /// The identity kept in `<data_dir>/tls` for node `node_id` (its key made when missing);
    /// the certificate of an earlier run, if still usable with the key, is served at once.
    pub fn load(data_dir: &Path, node_id: &str) -> Result<Arc<AgentIdentity>, TlsError> {
        let dir = data_dir.join("tls");
        let key = berth_tls::ca::load_or_create_key(&dir.join(KEY_FILE))?;
        let csr = berth_tls::ca::certificate_request(&key, node_id)?;
        let me = AgentIdentity {
            key_pem: key.serialize_pem(),
            csr,
            slot: TlsSlot::new(None),
            installed: Mutex::new(None),
            dir,
        };
        let read = |f: &str| std::fs::read_to_string(me.dir.join(f));
        if let (Ok(cert), Ok(ca)) = (read(CERT_FILE), read(CA_FILE)) {
            match me.configure(&cert, &ca) {
                Ok(()) => tracing::info!(
                    cert = %me.dir.join(CERT_FILE).display(),
                    "serving with the certificate of the last run until the server issues a new one"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "the stored certificate is unusable; waiting for the server's")
                }
            }
        }
        Ok(Arc::new(me))
    }

    /// The PEM certificate request sent with every registration.
    pub fn csr(&self) -> &str {
        &self.csr
    }

    /// The endpoint's TLS configuration (empty until a certificate is known).
    pub fn slot(&self) -> Arc<TlsSlot> {
        self.slot.clone()
    }

    fn configure(&self, cert_pem: &str, ca_pem: &str) -> Result<(), TlsError> {
        let chain = pem::certs(cert_pem.as_bytes(), "the node's certificate")?;
        let roots = pem::certs(ca_pem.as_bytes(), "the agents CA certificate")?;
        let key = pem::key(self.key_pem.as_bytes(), KEY_FILE)?;
        let config = berth_tls::server_config(chain, key, Some(&roots))?;
        self.slot.set(config);
        Ok(())
    }

    /// Installs what the server issued at registration: serves with it and keeps it for the
    /// next start.
    pub fn install(&self, issued: &IssuedCertificate) -> Result<(), TlsError> {
        let (Some(cert), Some(ca)) = (&issued.certificate, &issued.ca_certificate) else {
            return Err(TlsError::Invalid {
                what: "registration".into(),
                message: "the server issued no certificate (does it run with --tls?): the \
                          server cannot reach this agent's endpoint (task logs, /metrics)"
                    .into(),
            });
        };
        self.configure(cert, ca)?;
        berth_tls::write_file(&self.dir.join(CERT_FILE), cert.as_bytes(), 0o644)?;
        berth_tls::write_file(&self.dir.join(CA_FILE), ca.as_bytes(), 0o644)?;
        *self.installed.lock() = Some(Instant::now());
        Ok(())
    }

    /// Whether the certificate is old enough to be renewed.
    pub fn renewal_due(&self) -> bool {
        self.installed
            .lock()
            .is_some_and(|t| t.elapsed() >= RENEW_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_tls::{Ca, Leaf, Usage};

    fn issue(ca: &Ca, csr: &str) -> IssuedCertificate {
        let cert = ca
            .sign_request(
                csr,
                &Leaf {
                    common_name: "n1".into(),
                    names: vec!["127.0.0.1".into()],
                    usage: Usage::Server,
                    valid_for: Duration::from_secs(3600),
                },
            )
            .unwrap();
        IssuedCertificate {
            certificate: Some(cert),
            ca_certificate: Some(ca.certificate_pem().to_string()),
        }
    }

    #[test]
    fn keeps_key_and_certificate_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("agents").unwrap();
        let id = AgentIdentity::load(dir.path(), "n1").unwrap();
        assert!(
            id.slot().get().is_none(),
            "no certificate before registering"
        );
        assert!(id.csr().starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        id.install(&issue(&ca, id.csr())).unwrap();
        assert!(id.slot().get().is_some());
        assert!(!id.renewal_due());
        let key = std::fs::read_to_string(dir.path().join("tls/agent.key")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls/agent.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Restart: same key, and the stored certificate is served before registering.
        let again = AgentIdentity::load(dir.path(), "n1").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tls/agent.key")).unwrap(),
            key
        );
        assert!(again.slot().get().is_some());
        // An answer without a certificate is an error that says why.
        let e = again.install(&IssuedCertificate::default()).unwrap_err();
        assert!(e.to_string().contains("--tls"), "{e}");
        // A certificate for another key is refused, and the current one kept.
        let other_key = berth_tls::ca::load_or_create_key(&dir.path().join("other.key")).unwrap();
        let other = berth_tls::ca::certificate_request(&other_key, "n1").unwrap();
        assert!(again.install(&issue(&ca, &other)).is_err());
        assert!(again.slot().get().is_some());
    }
}
