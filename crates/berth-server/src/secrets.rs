//! Berth's secret store: named values, encrypted at rest, that apps reference from `env`
//! (`"env": {"DB_PASSWORD": {"secret": "db"}}, "secrets": {"db": {"source": "prod/db"}}`).
//!
//! - Each value is sealed with ChaCha20-Poly1305 under the server's secrets key, with a fresh
//!   random nonce per write and the secret's name as associated data (a ciphertext moved to
//!   another name does not open). The store (`/berth/secrets/<name>`) holds only the sealed
//!   form; memory holds the same, and values are opened only to answer an agent.
//! - The key is 32 random bytes in a file (`--secrets-key-file`, default
//!   `<data-dir>/secrets.key`), created with mode 0600 on first start. A key file of the wrong
//!   size, or readable by anyone but its owner, stops the server; so does a key that does not
//!   open the secrets already stored.
//! - No API response, event or log line carries a value: the API shows names and times, apps
//!   show their references, and only the agent protocol's assignments carry the values of the
//!   task being sent (see [`resolve_env`]).

use crate::error::{ApiError, ApiResult};
use crate::state::{Changes, Cluster, K_SECRETS};
use berth_core::app::AppDefinition;
use berth_core::error::ValidationErrors;
use berth_core::secret::{self, SecretEnv};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes in a key file.
pub const KEY_LEN: usize = 32;
/// Bytes in a nonce.
const NONCE_LEN: usize = 12;
/// The AEAD every stored secret names (so a later change of algorithm can tell them apart).
const ALG: &str = "chacha20poly1305";
/// Put before the name in the associated data.
const AAD_PREFIX: &[u8] = b"berth-secret-v1\0";

/// Why the key file cannot be used. The server does not start.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("secrets key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secrets key file {path} holds {len} bytes; it must hold exactly {KEY_LEN} random bytes \
         (restore the original file from a backup; a new key cannot open the stored secrets)"
    )]
    WrongSize { path: PathBuf, len: u64 },
    #[error(
        "secrets key file {path} has permissions {mode:04o}: it must be readable by its owner \
         only (chmod 600 {path})"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("secrets key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
}

/// Why a sealed value does not open: a different key, or a changed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("secret '{0}' does not decrypt with this key (wrong key, or the record was altered)")]
    Decrypt(String),
    #[error("secret '{0}' is stored in a form this server does not read ({1})")]
    Format(String, String),
}

/// The key secrets are sealed with. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey(Arc<ChaCha20Poly1305>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        Self(Arc::new(ChaCha20Poly1305::new(Key::from_slice(bytes))))
    }

    /// A fresh random key, kept in memory only (servers without a key file: tests, `sim`).
    pub fn generate() -> Self {
        Self::from_bytes(&random_bytes())
    }

    /// Reads the key file, or creates it (32 random bytes, mode 0600) when it is missing.
    /// Returns the key and whether the file was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyFileError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                let bytes = random_bytes();
                f.write_all(&bytes).map_err(io)?;
                f.sync_all().map_err(io)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // The new name must survive a crash too.
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io)?;
                }
                return Ok((Self::from_bytes(&bytes), true));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(KeyFileError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() != KEY_LEN as u64 {
            return Err(KeyFileError::WrongSize {
                path: path.to_path_buf(),
                len: meta.len(),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let bytes: [u8; KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyFileError::WrongSize {
                    path: path.to_path_buf(),
                    len: bytes.len() as u64,
                })?;
        Ok((Self::from_bytes(&bytes), false))
    }

    /// Seals `value` for the secret `name` (a fresh random nonce each time).
    pub fn seal(&self, name: &str, value: &str, created_at: i64, now: i64) -> StoredSecret {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let aad = aad(name);
        // Encryption fails only for messages beyond 256 GiB; values are at most 64 KiB.
        let ciphertext = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        StoredSecret {
            name: name.to_string(),
            created_at,
            updated_at: now,
            alg: ALG.into(),
            nonce: hex(&nonce),
            ciphertext: hex(&ciphertext),
        }
    }

    /// The value of a stored secret.
    pub fn open(&self, s: &StoredSecret) -> Result<String, OpenError> {
        let format = |why: &str| OpenError::Format(s.name.clone(), why.to_string());
        if s.alg != ALG {
            return Err(format(&format!("algorithm {:?}", s.alg)));
        }
        let nonce = unhex(&s.nonce).filter(|n| n.len() == NONCE_LEN);
        let (Some(nonce), Some(ciphertext)) = (nonce, unhex(&s.ciphertext)) else {
            return Err(format("nonce or ciphertext is not hex of the right size"));
        };
        let aad = aad(&s.name);
        let plain = self
            .0
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Decrypt(s.name.clone()))?;
        String::from_utf8(plain).map_err(|_| format("the value is not UTF-8"))
    }
}

fn aad(name: &str) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Random bytes from the thread's CSPRNG (ChaCha, seeded from the OS).
fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A secret as the store keeps it (`/berth/secrets/<name>`): sealed, never the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSecret {
    pub name: String,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub alg: String,
    /// Hex.
    pub nonce: String,
    /// Hex: the sealed value and its tag.
    pub ciphertext: String,
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl StoredSecret {
    /// What the API shows: the name, the times, the apps that use it. Never the value.
    pub fn metadata(&self, used_by: Vec<String>) -> Value {
        json!({
            "name": self.name,
            "createdAt": berth_core::time::format_millis(self.created_at),
            "updatedAt": berth_core::time::format_millis(self.updated_at),
            "usedBy": used_by,
        })
    }
}

/// The apps (current definitions) whose `secrets` name `name` as a source.
pub fn used_by(st: &Cluster, name: &str) -> Vec<String> {
    st.apps
        .values()
        .filter(|a| a.secrets.values().any(|d| d.source == name))
        .map(|a| a.id.clone())
        .collect()
}

/// Every `secrets.<key>.source` of `app` must exist in the store.
pub fn check_sources(st: &Cluster, app: &AppDefinition) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::new();
    for (key, def) in &app.secrets {
        if !def.source.is_empty() && !st.secrets.contains_key(&def.source) {
            errs.add(
                format!("/secrets/{key}/source"),
                format!(
                    "secret '{}' does not exist (create it with PUT /api/v1/secrets/{})",
                    def.source, def.source
                ),
            );
        }
    }
    errs.into_result()
}

/// The values of `app`'s secret environment variables, opened for one task being sent to its
/// node; the error names what could not be resolved (never a value).
pub fn resolve_env(
    st: &Cluster,
    key: &SecretKey,
    app: &AppDefinition,
) -> Result<SecretEnv, String> {
    let mut env = SecretEnv::new();
    for (var, source) in app.secret_env_sources() {
        let Some(stored) = st.secrets.get(source) else {
            return Err(format!(
                "secret '{source}' (env {var}) does not exist in Berth's secret store"
            ));
        };
        let value = key.open(stored).map_err(|e| e.to_string())?;
        env.insert(var.to_string(), value);
    }
    Ok(env)
}

/// `PUT /api/v1/secrets/{name}`: creates or replaces a secret. Returns whether it was
/// created, and its record.
pub fn put_secret(
    st: &mut Cluster,
    ch: &mut Changes,
    key: &SecretKey,
    name: &str,
    value: &str,
) -> ApiResult<(bool, StoredSecret)> {
    check_name(name)?;
    secret::check_value(value).map_err(|e| ApiError::invalid("/value", e))?;
    let existing = st.secrets.get(name).map(|s| s.created_at);
    if existing.is_none() && st.secrets.len() >= secret::MAX_SECRETS {
        return Err(ApiError::invalid(
            "/",
            format!(
                "the store holds {} secrets, the most it may; delete some first",
                st.secrets.len()
            ),
        ));
    }
    let now = berth_core::time::now_millis();
    let stored = key.seal(name, value, existing.unwrap_or(now), now);
    ch.put(format!("{K_SECRETS}{name}"), &stored);
    st.secrets.insert(name.to_string(), stored.clone());
    Ok((existing.is_none(), stored))
}

/// `DELETE /api/v1/secrets/{name}`: refused (409) while an app uses it.
pub fn delete_secret(st: &mut Cluster, ch: &mut Changes, name: &str) -> ApiResult<StoredSecret> {
    check_name(name)?;
    if !st.secrets.contains_key(name) {
        return Err(not_found(name));
    }
    let users = used_by(st, name);
    if !users.is_empty() {
        return Err(ApiError::Conflict {
            message: format!(
                "secret '{name}' is used by {} {}: remove it from their 'secrets' first",
                if users.len() == 1 { "app" } else { "apps" },
                users.join(", ")
            ),
            deployments: vec![],
        });
    }
    let stored = st.secrets.remove(name).ok_or_else(|| not_found(name))?;
    ch.delete(format!("{K_SECRETS}{name}"));
    Ok(stored)
}

/// A name in a path: 422 at `/name` when it breaks the rules.
pub fn check_name(name: &str) -> ApiResult<()> {
    secret::check_name(name).map_err(|e| ApiError::invalid("/name", e))
}

pub fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("secret '{name}' does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const VALUE: &str = "s3cr3t-Value-\u{e9}";

    #[test]
    fn a_sealed_value_opens_with_its_key_and_name_only() {
        let key = SecretKey::generate();
        let s = key.seal("prod/db", VALUE, 1, 2);
        assert_eq!(key.open(&s).unwrap(), VALUE);
        // Nothing of the value is in the record.
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(!json.contains(&hex(VALUE.as_bytes())), "{json}");
        assert!(!format!("{s:?}").contains(&s.ciphertext));
        // A fresh nonce per write: sealing again gives another ciphertext.
        let again = key.seal("prod/db", VALUE, 1, 2);
        assert_ne!(again.nonce, s.nonce);
        assert_ne!(again.ciphertext, s.ciphertext);
        assert_eq!(key.open(&again).unwrap(), VALUE);
    }

    #[test]
    fn a_wrong_key_or_a_changed_record_does_not_open() {
        let key = SecretKey::generate();
        let s = key.seal("prod/db", VALUE, 1, 2);
        let other = SecretKey::generate();
        assert_eq!(other.open(&s), Err(OpenError::Decrypt("prod/db".into())));
        // One flipped bit of the ciphertext, the tag or the nonce.
        for field in [0, 1] {
            let mut t = s.clone();
            let target = if field == 0 {
                &mut t.ciphertext
            } else {
                &mut t.nonce
            };
            let mut bytes = unhex(target).unwrap();
            bytes[0] ^= 1;
            *target = hex(&bytes);
            assert!(
                matches!(key.open(&t), Err(OpenError::Decrypt(_))),
                "{field}"
            );
        }
        let mut t = s.clone();
        let mut bytes = unhex(&t.ciphertext).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        t.ciphertext = hex(&bytes);
        assert!(matches!(key.open(&t), Err(OpenError::Decrypt(_))));
        // The name is bound: the same ciphertext under another name does not open.
        let mut moved = s.clone();
        moved.name = "prod/other".into();
        assert_eq!(
            key.open(&moved),
            Err(OpenError::Decrypt("prod/other".into()))
        );
        // Garbage is a format error, not a panic.
        let mut junk = s.clone();
        junk.nonce = "zz".into();
        assert!(matches!(key.open(&junk), Err(OpenError::Format(..))));
        let mut junk = s;
        junk.alg = "rot13".into();
        assert!(matches!(key.open(&junk), Err(OpenError::Format(..))));
    }

    #[test]
    fn the_key_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let (key, created) = SecretKey::load_or_create(&path).unwrap();
        assert!(created);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let s = key.seal("a", VALUE, 1, 1);
        let (again, created) = SecretKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.open(&s).unwrap(), VALUE);
        assert!(!format!("{again:?}").contains(&hex(&std::fs::read(&path).unwrap())));
    }

    #[test]
    fn a_key_file_too_open_or_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        SecretKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(e, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        SecretKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let e = SecretKey::load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::WrongSize { len: 5, .. }), "{e}");
        let e = SecretKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, KeyFileError::NotAFile { .. }), "{e}");
        let e = SecretKey::load_or_create(&dir.path().join("no/such/dir/key")).unwrap_err();
        assert!(matches!(e, KeyFileError::Io { .. }), "{e}");
    }

    fn app(v: Value) -> AppDefinition {
        berth_core::validate::app_from_json(v).unwrap()
    }

    #[test]
    fn apps_must_name_existing_secrets_and_used_secrets_cannot_be_deleted() {
        use crate::ops::{AppUpdate, RequestCtx, create_app, put_app};
        let key = SecretKey::generate();
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        let def = json!({"id": "/web", "cmd": "true", "instances": 0,
            "env": {"DB_PASSWORD": {"secret": "db"}, "MODE": "prod"},
            "secrets": {"db": {"source": "prod/db-password"}}});
        // The source does not exist: 422 at /secrets/db/source, nothing changes.
        let e = create_app(&mut st, &mut ch, app(def.clone()), &ctx).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.body()["details"][0]["path"], "/secrets/db/source");
        assert!(
            e.body()
                .to_string()
                .contains("secret 'prod/db-password' does not exist"),
            "{}",
            e.body()
        );
        assert!(st.apps.is_empty() && ch.ops.is_empty());
        let (created, _) = put_secret(&mut st, &mut ch, &key, "prod/db-password", VALUE).unwrap();
        assert!(created);
        create_app(&mut st, &mut ch, app(def.clone()), &ctx).unwrap();
        // Neither the app nor what the store writes holds the value.
        let written: Vec<u8> = ch
            .ops
            .iter()
            .flat_map(|op| match op {
                berth_store::Op::Put { value, .. } => value.clone(),
                _ => vec![],
            })
            .collect();
        assert!(!String::from_utf8_lossy(&written).contains("s3cr3t"));
        assert!(
            !serde_json::to_string(st.apps["/web"].as_ref())
                .unwrap()
                .contains("s3cr3t")
        );
        // The value is resolved for a task, by env var.
        let env = resolve_env(&st, &key, &st.apps["/web"]).unwrap();
        assert_eq!(env.get("DB_PASSWORD"), Some(VALUE));
        assert_eq!(env.len(), 1);
        // Replacing the value keeps its creation time.
        let before = st.secrets["prod/db-password"].clone();
        let (created, after) =
            put_secret(&mut st, &mut ch, &key, "prod/db-password", "v2").unwrap();
        assert!(!created);
        assert_eq!(after.created_at, before.created_at);
        assert_eq!(
            resolve_env(&st, &key, &st.apps["/web"])
                .unwrap()
                .get("DB_PASSWORD"),
            Some("v2")
        );
        // In use: 409 naming the app.
        let e = delete_secret(&mut st, &mut ch, "prod/db-password").unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::CONFLICT);
        assert!(e.to_string().contains("/web"), "{e}");
        assert_eq!(used_by(&st, "prod/db-password"), vec!["/web".to_string()]);
        // An update that names a missing secret is refused too.
        let mut bad = def.clone();
        bad["secrets"]["db"]["source"] = json!("prod/missing");
        let Value::Object(body) = bad else {
            unreachable!()
        };
        let e = put_app(
            &mut st,
            &mut ch,
            "/web",
            AppUpdate::Definition(body),
            false,
            true,
            &ctx,
        )
        .unwrap_err();
        assert_eq!(e.body()["details"][0]["path"], "/secrets/db/source");
        // Once no app uses it, it can go; a task of an old version then fails to resolve.
        let old = st.apps["/web"].clone();
        let plain = json!({"id": "/web", "cmd": "true", "instances": 0});
        let Value::Object(body) = plain else {
            unreachable!()
        };
        put_app(
            &mut st,
            &mut ch,
            "/web",
            AppUpdate::Definition(body),
            false,
            true,
            &ctx,
        )
        .unwrap();
        delete_secret(&mut st, &mut ch, "prod/db-password").unwrap();
        assert!(st.secrets.is_empty());
        let e = resolve_env(&st, &key, &old).unwrap_err();
        assert!(e.contains("'prod/db-password'") && !e.contains("v2"), "{e}");
        assert_eq!(
            delete_secret(&mut st, &mut ch, "prod/db-password")
                .unwrap_err()
                .status(),
            axum::http::StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn names_values_and_count_are_limited() {
        let key = SecretKey::generate();
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let e = put_secret(&mut st, &mut ch, &key, "a//b", "x").unwrap_err();
        assert_eq!(e.body()["details"][0]["path"], "/name");
        let big = "v".repeat(secret::MAX_VALUE_LEN + 1);
        let e = put_secret(&mut st, &mut ch, &key, "a", &big).unwrap_err();
        assert_eq!(e.body()["details"][0]["path"], "/value");
        assert!(!e.body().to_string().contains("vvvv"));
        for i in 0..secret::MAX_SECRETS {
            st.secrets.insert(format!("s{i}"), key.seal("x", "x", 0, 0));
        }
        let e = put_secret(&mut st, &mut ch, &key, "one-more", "x").unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        // Replacing one is still allowed.
        put_secret(&mut st, &mut ch, &key, "s1", "y").unwrap();
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("gg"), None);
        assert_eq!(unhex("é1"), None);
    }
}
