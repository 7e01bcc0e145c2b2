//! Certificates and private keys from PEM text and files.

use crate::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// Every certificate in `pem` (at least one); `what` names the source in errors.
pub fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::invalid(what, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::invalid(
            what,
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::invalid(
            what,
            "no private key in it (expected PEM: -----BEGIN PRIVATE KEY-----)",
        ),
        e => TlsError::invalid(what, format!("not valid PEM: {e}")),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::io(path, e))
}

/// Every certificate in the PEM file at `path`.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs(&read(path)?, &path.display().to_string())
}

/// The private key in the PEM file at `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key(&read(path)?, &path.display().to_string())
}

/// PEM text of one certificate.
pub fn cert_pem(der: &CertificateDer<'_>) -> String {
    encode("CERTIFICATE", der.as_ref())
}

pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= n {
                b64.push(TABLE[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_source_and_what_is_missing() {
        let e = certs(b"hello", "ca.crt").unwrap_err().to_string();
        assert!(e.starts_with("ca.crt: no certificate"), "{e}");
        let e = key(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "k",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no private key"), "{e}");
        let e = read_certs(Path::new("/nonexistent/ca.crt"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/ca.crt: "), "{e}");
    }

    #[test]
    fn encodes_what_it_parses() {
        for len in [1usize, 2, 3, 4, 100, 101, 102] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = cert_pem(&CertificateDer::from(der.clone()));
            let back = certs(pem.as_bytes(), "x").unwrap();
            assert_eq!(back[0].as_ref(), der.as_slice(), "length {len}");
        }
    }
}
