//! The agent's side of authentication: it joins with the server's join token, receives a
//! credential for its node, keeps it (mode 0600) in its data dir, and presents it on every
//! call. Its own HTTP port then answers only callers presenting the same credential (the
//! server), and `/metrics` also to a scrape token (Prometheus).

use parking_lot::RwLock;
use std::path::PathBuf;

#[derive(Debug, Default)]
pub struct Credentials {
    /// `berth agent --join-token[-file]`: used only to register when there is no credential.
    join_token: Option<String>,
    /// The node's credential; `None` before joining, or when the server has auth off.
    credential: RwLock<Option<String>>,
    /// Where the credential is kept across restarts.
    file: Option<PathBuf>,
    /// `berth agent --scrape-token-file`: accepted on `/metrics` only.
    scrape_token: Option<String>,
}

impl Credentials {
    /// Reads a kept credential from `file`, if there is one.
    pub fn new(
        join_token: Option<String>,
        file: Option<PathBuf>,
        scrape_token: Option<String>,
    ) -> Self {
        let kept = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Self {
            join_token: join_token.filter(|t| !t.is_empty()),
            credential: RwLock::new(kept),
            file,
            scrape_token: scrape_token.filter(|t| !t.is_empty()),
        }
    }

    /// What to present to the server: the credential, else (to register) the join token.
    pub fn bearer(&self) -> Option<String> {
        self.credential
            .read()
            .clone()
            .or_else(|| self.join_token.clone())
    }

    pub fn has_credential(&self) -> bool {
        self.credential.read().is_some()
    }

    /// Whether a refused credential can be replaced by joining again.
    pub fn can_rejoin(&self) -> bool {
        self.join_token.is_some()
    }

    /// Forgets a credential the server no longer accepts (its data was reset, or the node
    /// was removed), so the next registration uses the join token.
    pub fn forget(&self) {
        *self.credential.write() = None;
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Keeps a credential the server issued.
    pub fn store(&self, credential: String) -> std::io::Result<()> {
        if let Some(f) = &self.file {
            write_private(f, &credential)?;
        }
        *self.credential.write() = Some(credential);
        Ok(())
    }

    /// Whether a request to the agent's HTTP port may proceed: with no credential yet (auth
    /// off on the server) everyone may; else the credential, or the scrape token on metrics.
    pub fn allows(&self, authorization: Option<&str>, metrics: bool) -> bool {
        let Some(cred) = self.credential.read().clone() else {
            return true;
        };
        let Some(presented) = authorization.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        }) else {
            return false;
        };
        eq(&presented, &cred)
            || (metrics
                && self
                    .scrape_token
                    .as_ref()
                    .is_some_and(|t| eq(&presented, t)))
    }
}

fn eq(a: &str, b: &str) -> bool {
    berth_core::rbac::constant_time_eq(a.as_bytes(), b.as_bytes())
}

fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_credential_survives_a_restart_and_gates_the_http_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.credential");
        let c = Credentials::new(
            Some("bt_join".into()),
            Some(file.clone()),
            Some("scrape".into()),
        );
        assert_eq!(c.bearer().as_deref(), Some("bt_join"));
        assert!(c.allows(None, false), "open until the node has joined");
        c.store("bn_secret".into()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Credentials::new(Some("bt_join".into()), Some(file), Some("scrape".into()));
        assert_eq!(again.bearer().as_deref(), Some("bn_secret"));
        assert!(again.allows(Some("Bearer bn_secret"), false));
        assert!(!again.allows(None, false));
        assert!(!again.allows(Some("Bearer bn_other"), false));
        assert!(!again.allows(Some("Bearer scrape"), false));
        assert!(again.allows(Some("Bearer scrape"), true));
        again.forget();
        assert_eq!(again.bearer().as_deref(), Some("bt_join"));
    }
}
