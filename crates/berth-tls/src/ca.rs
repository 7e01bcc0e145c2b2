//! A small certificate authority kept in a directory: `NAME.crt` (the CA certificate, PEM,
//! for everyone who must trust it) and `NAME.key` (its private key, PEM, mode 0600). It
//! issues end-entity certificates for servers and clients, with a fresh key or for the
//! public key of a certificate request (whose own names and extensions are ignored: the CA
//! alone decides what a certificate says).

use crate::{TlsError, pem};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// How long a CA made here is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Certificates are valid from a little before they were made (clocks differ).
const BACKDATE: Duration = Duration::from_secs(3600);

/// What a certificate is for (its extended key usage: a server certificate cannot be used as
/// a client's, nor the other way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// What an issued certificate says.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The subject's common name.
    pub common_name: String,
    /// Subject alternative names: IP addresses, or DNS names (see [`is_dns_name`]).
    pub names: Vec<String>,
    pub usage: Usage,
    pub valid_for: Duration,
}

/// A CA that can issue certificates.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::invalid(what, e)
}

/// A random positive serial number (RFC 5280: unique per CA, at most 20 bytes).
fn serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    crate::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| TlsError::invalid("serial number", format!("{e:?}")))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn after(d: Duration) -> time::OffsetDateTime {
    now() + time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4))
}

/// Is `name` a DNS name a certificate may carry (letters, digits, `-` and `.` labels of 1 to
/// 63 characters, 253 at most; `*.` first allowed)?
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn san(name: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if !is_dns_name(name) {
        return Err(TlsError::invalid(
            format!("name '{name}'"),
            "neither an IP address nor a DNS name",
        ));
    }
    Ok(SanType::DnsName(
        name.to_string().try_into().map_err(rcgen_err("DNS name"))?,
    ))
}

impl Ca {
    /// A new CA (in memory) named `common_name`.
    pub fn generate(common_name: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Berth");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        params.not_before = now() - time::Duration::seconds(BACKDATE.as_secs() as i64);
        params.not_after = after(CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(rcgen_err("CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM); checks that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Ca, TlsError> {
        let der = pem::certs(cert_pem.as_bytes(), what)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::invalid(what, "no certificate"))?;
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err(what))?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(rcgen_err(what))?;
        let ca = Ca {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            issuer,
        };
        // The key signs what the certificate vouches for, or the pair is useless.
        let probe = ca.issue(&Leaf {
            common_name: "probe".into(),
            names: vec!["probe.invalid".into()],
            usage: Usage::Server,
            valid_for: Duration::from_secs(3600),
        })?;
        let chain = pem::certs(probe.0.as_bytes(), "probe")?;
        crate::verify_server_cert(
            &chain,
            std::slice::from_ref(&ca.cert_der),
            &["probe.invalid".into()],
            std::time::SystemTime::now(),
        )
        .map_err(|e| {
            TlsError::invalid(
                what,
                format!("the CA key does not belong to the CA certificate, or the certificate is not a usable CA ({e})"),
            )
        })?;
        Ok(ca)
    }

    /// The CA kept in `dir` as `NAME.crt` and `NAME.key`, created there (key mode 0600) when
    /// neither exists. Returns it and whether it was created now.
    pub fn load_or_create(
        dir: &Path,
        name: &str,
        common_name: &str,
    ) -> Result<(Ca, bool), TlsError> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| TlsError::io(p, e));
                warn_if_readable_by_others(&key_path);
                let ca = Ca::from_pem(
                    &read(&cert_path)?,
                    &read(&key_path)?,
                    &format!("{} and {}", cert_path.display(), key_path.display()),
                )?;
                Ok((ca, false))
            }
            (false, false) => {
                crate::ensure_dir(dir)?;
                let ca = Ca::generate(common_name)?;
                crate::write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                crate::write_file(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
                Ok((ca, true))
            }
            (has_cert, _) => {
                let (there, missing) = if has_cert {
                    (&cert_path, &key_path)
                } else {
                    (&key_path, &cert_path)
                };
                Err(TlsError::invalid(
                    there.display().to_string(),
                    format!(
                        "{} is missing: restore it, or remove both files to make a new CA (every certificate it issued then stops being trusted)",
                        missing.display()
                    ),
                ))
            }
        }
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    fn params(&self, leaf: &Leaf) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = leaf
            .names
            .iter()
            .map(|n| san(n))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match leaf.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        params.not_before = now() - time::Duration::seconds(BACKDATE.as_secs() as i64);
        params.not_after = after(leaf.valid_for);
        Ok(params)
    }

    /// A certificate with a new key: `(certificate PEM, key PEM)`.
    pub fn issue(&self, leaf: &Leaf) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("key"))?;
        let cert = self
            .params(leaf)?
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A certificate for the key of the certificate request `csr_pem` (whose signature
    /// proves its holder has the key); PEM.
    pub fn sign_request(&self, csr_pem: &str, leaf: &Leaf) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::invalid("certificate request", e))?;
        let cert = self
            .params(leaf)?
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rcgen_err("certificate"))?;
        Ok(cert.pem())
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "a CA key is readable by other users: chmod 600 it"
        );
    }
}

/// The private key kept at `path` (PEM, mode 0600), made there when missing.
pub fn load_or_create_key(path: &Path) -> Result<KeyPair, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            KeyPair::from_pem(&pem).map_err(|e| TlsError::invalid(path.display().to_string(), e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().map_err(rcgen_err("key"))?;
            if let Some(dir) = path.parent() {
                crate::ensure_dir(dir)?;
            }
            crate::write_file(path, key.serialize_pem().as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(e) => Err(TlsError::io(path, e)),
    }
}

/// A certificate request (PEM) for `key`, naming `common_name`.
pub fn certificate_request(key: &KeyPair, common_name: &str) -> Result<String, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(rcgen_err("certificate request"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn leaf(names: &[&str], usage: Usage) -> Leaf {
        Leaf {
            common_name: "x".into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            usage,
            valid_for: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn issued_certificates_verify_for_their_names_only() {
        let ca = Ca::generate("test CA").unwrap();
        let (cert, _key) = ca
            .issue(&leaf(&["localhost", "127.0.0.1"], Usage::Server))
            .unwrap();
        let chain = pem::certs(cert.as_bytes(), "c").unwrap();
        let roots = [ca.certificate_der().clone()];
        let now = SystemTime::now();
        verify_ok(&chain, &roots, &["localhost", "127.0.0.1"], now);
        let e =
            crate::verify_server_cert(&chain, &roots, &["other.example".into()], now).unwrap_err();
        assert!(e.contains("other.example"), "{e}");
        // Expired in two days.
        let later = now + Duration::from_secs(2 * 86_400);
        assert!(crate::verify_server_cert(&chain, &roots, &["localhost".into()], later).is_err());
        // Another CA does not vouch for it.
        let other = Ca::generate("other").unwrap();
        assert!(
            crate::verify_server_cert(
                &chain,
                &[other.certificate_der().clone()],
                &["localhost".into()],
                now
            )
            .is_err()
        );
        // A client certificate is no server certificate.
        let (client, _) = ca.issue(&leaf(&["localhost"], Usage::Client)).unwrap();
        let chain = pem::certs(client.as_bytes(), "c").unwrap();
        assert!(crate::verify_server_cert(&chain, &roots, &["localhost".into()], now).is_err());
    }

    fn verify_ok(
        chain: &[CertificateDer<'static>],
        roots: &[CertificateDer<'static>],
        names: &[&str],
        at: SystemTime,
    ) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        crate::verify_server_cert(chain, roots, &names, at).unwrap();
    }

    #[test]
    fn signs_requests_for_the_requesters_key_with_the_cas_names() {
        let ca = Ca::generate("test CA").unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = certificate_request(&key, "node-1").unwrap();
        let cert = ca
            .sign_request(&csr, &leaf(&["10.1.2.3", "n1"], Usage::Server))
            .unwrap();
        let chain = pem::certs(cert.as_bytes(), "c").unwrap();
        verify_ok(
            &chain,
            &[ca.certificate_der().clone()],
            &["10.1.2.3", "n1"],
            SystemTime::now(),
        );
        // The certificate goes with the requester's key.
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        crate::server_config(chain, der, None).unwrap();
        // Garbage, and a request whose signature does not hold, are refused.
        assert!(
            ca.sign_request("nonsense", &leaf(&["n1"], Usage::Server))
                .is_err()
        );
        let tampered = {
            use rustls::pki_types::pem::PemObject;
            let der =
                rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                    .unwrap();
            let mut bytes = der.as_ref().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            pem::encode("CERTIFICATE REQUEST", &bytes)
        };
        assert!(
            ca.sign_request(&tampered, &leaf(&["n1"], Usage::Server))
                .is_err()
        );
        // A name no certificate can carry.
        let e = ca
            .sign_request(&csr, &leaf(&["a b"], Usage::Server))
            .unwrap_err();
        assert!(e.to_string().contains("'a b'"), "{e}");
    }

    #[test]
    fn kept_in_a_directory_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = Ca::load_or_create(dir.path(), "ca", "test CA").unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = Ca::load_or_create(dir.path(), "ca", "test CA").unwrap();
        assert!(!created);
        assert_eq!(again.certificate_pem(), ca.certificate_pem());
        // One of the two files missing: an error that says what to do, nothing overwritten.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let e = Ca::load_or_create(dir.path(), "ca", "test CA")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.key is missing"), "{e}");
        // A key from another CA.
        let other = Ca::generate("other").unwrap();
        std::fs::write(
            dir.path().join("ca.key"),
            other.issuer.key().serialize_pem(),
        )
        .unwrap();
        let e = Ca::load_or_create(dir.path(), "ca", "test CA")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn keys_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls/agent.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.serialize_pem(), b.serialize_pem());
        std::fs::write(&path, "junk").unwrap();
        assert!(load_or_create_key(&path).is_err());
    }

    #[test]
    fn dns_names() {
        for ok in ["localhost", "a.b-c.example", "*.example.com", "n1"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["", "a b", "-a", "a..b", "é.example", "a/b", &"x".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
