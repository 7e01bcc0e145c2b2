//! Secrets: the names of Berth's secret store, its limits, and the values the server hands
//! an agent for one task. Values never appear in a `Debug` rendering, so a log line that
//! prints an assignment or a task spec cannot leak them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Longest secret name (bytes).
pub const MAX_NAME_LEN: usize = 256;
/// Largest secret value (bytes).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most secrets the store holds.
pub const MAX_SECRETS: usize = 10_000;

/// A secret's name in the store (`prod/db-password`): 1 to [`MAX_NAME_LEN`] bytes of
/// segments separated by single `/` (none empty, none `.` or `..`), each of ASCII letters,
/// digits, `.`, `_` and `-`. The error says what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    const RULE: &str = "segments of letters, digits, '.', '_' and '-' separated by '/'";
    if name.is_empty() {
        return Err("a secret name must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a secret name is at most {MAX_NAME_LEN} bytes (this one has {})",
            name.len()
        ));
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(format!(
                "'{}' has an empty segment: a secret name is {RULE}, without a leading, \
                 trailing or doubled '/'",
                shown(name)
            ));
        }
        if seg == "." || seg == ".." {
            return Err(format!(
                "'{}': '.' and '..' are not allowed as segments",
                shown(name)
            ));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "'{}' has a character that is not allowed: a secret name is {RULE}",
                shown(name)
            ));
        }
    }
    Ok(())
}

/// A secret's value: at most [`MAX_VALUE_LEN`] bytes, no NUL (it becomes an environment
/// variable). The error never repeats the value.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "a secret value is at most {MAX_VALUE_LEN} bytes (this one has {})",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err("a secret value must not contain NUL characters".into());
    }
    Ok(())
}

/// A name as an error message shows it: printable ASCII only, shortened.
fn shown(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The values of one task's secret environment variables (variable name -> value), resolved
/// by the server when it sends the task to its node. Its `Debug` shows the names only.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretEnv(BTreeMap<String, String>);

impl SecretEnv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, var: String, value: String) {
        self.0.insert(var, value);
    }

    pub fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The variable names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every variable with its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl FromIterator<(String, String)> for SecretEnv {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_like_segments() {
        for ok in [
            "db",
            "prod/db-password",
            "a.b_c-d/E1",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/db",
            "db/",
            "a//b",
            "a/../b",
            ".",
            "a b",
            "a\u{0}b",
            "ä",
            "a%2fb",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_are_bounded_and_errors_never_repeat_them() {
        assert!(check_value("hunter2").is_ok());
        assert!(check_value(&"v".repeat(MAX_VALUE_LEN)).is_ok());
        let e = check_value(&"v".repeat(MAX_VALUE_LEN + 1)).unwrap_err();
        assert!(!e.contains("vvv"), "{e}");
        let e = check_value("hunter\0two").unwrap_err();
        assert!(!e.contains("hunter"), "{e}");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env: SecretEnv = [("DB_PASSWORD".to_string(), "hunter2".to_string())]
            .into_iter()
            .collect();
        let shown = format!("{env:?}");
        assert!(shown.contains("DB_PASSWORD"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // On the wire it is a plain object.
        assert_eq!(
            serde_json::to_value(&env).unwrap(),
            serde_json::json!({"DB_PASSWORD": "hunter2"})
        );
    }
}
