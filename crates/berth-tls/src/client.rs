//! reqwest clients that trust exactly the CA they are given, and error texts that say what
//! went wrong with TLS (reqwest's own `Display` says only "error sending request").

use crate::{TlsError, pem};
use rustls::pki_types::CertificateDer;
use std::error::Error;
use std::path::Path;

/// `builder`, trusting only `roots` for `https://` URLs (not the system's roots): a server
/// whose certificate another CA issued is refused.
pub fn trust_only(
    builder: reqwest::ClientBuilder,
    roots: &[CertificateDer<'static>],
) -> Result<reqwest::ClientBuilder, TlsError> {
    let certs = roots
        .iter()
        .map(|c| reqwest::Certificate::from_der(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid("CA certificate", error_chain(&e)))?;
    Ok(builder.tls_certs_only(certs))
}

/// `builder`, trusting only the CA certificates in the PEM file `ca_file` (`None`: the
/// system's roots, as reqwest does by default).
pub fn trust_file(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, TlsError> {
    match ca_file {
        None => Ok(builder),
        Some(path) => {
            let roots = pem::read_certs(path)?;
            // Refuse what is not a CA certificate now rather than at the first request.
            crate::root_store(&roots, &path.display().to_string())?;
            trust_only(builder, &roots)
        }
    }
}

/// A client identity (certificate and key, PEM) to present to servers that ask for one.
pub fn identity(cert_pem: &str, key_pem: &str) -> Result<reqwest::Identity, TlsError> {
    reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes())
        .map_err(|e| TlsError::invalid("client certificate", error_chain(&e)))
}

/// `e` and its sources, joined by `: ` (a source whose text its parent already shows is
/// left out).
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The rustls error somewhere in `e`'s sources (tokio-rustls wraps it in an `io::Error`,
/// whose `source()` skips it), as text: `invalid peer certificate: UnknownIssuer`, ...
pub fn certificate_problem(e: &(dyn Error + 'static)) -> Option<String> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r.to_string());
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(found) = certificate_problem(inner)
    {
        return Some(found);
    }
    e.source().and_then(certificate_problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_sources_without_repeating_them() {
        let io = std::io::Error::other("inner problem");
        assert_eq!(error_chain(&io), "inner problem");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(error_chain(&Outer(io)), "outer: inner problem");
    }

    #[test]
    fn finds_rustls_errors_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            certificate_problem(&io).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(certificate_problem(&std::io::Error::other("x")), None);
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.crt");
        std::fs::write(&f, "not a certificate").unwrap();
        let e = trust_file(reqwest::Client::builder(), Some(&f)).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
