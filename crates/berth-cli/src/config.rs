//! The client's config file: the server and token `berth login` checked, at
//! `$BERTH_CONFIG`, else `$XDG_CONFIG_HOME/berth/config.json`, else
//! `~/.config/berth/config.json`; written with mode 0600 (it holds a secret).

use crate::error::CliError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where the config file is (`None`: no home to put it in).
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth").join("config.json"))
}

/// The config, or the default when there is none (or it cannot be read).
pub fn load() -> Config {
    path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save(config: &Config) -> Result<PathBuf, CliError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = path().ok_or_else(|| {
        CliError::Input("no place for the config file: set BERTH_CONFIG or HOME".into())
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::io("creating the config dir", e))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| CliError::io("writing the config file", e))?;
    let body = serde_json::to_vec_pretty(config).unwrap_or_default();
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::io("writing the config file", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| CliError::io("writing the config file", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| CliError::io("writing the config file", e))?;
    Ok(path)
}
