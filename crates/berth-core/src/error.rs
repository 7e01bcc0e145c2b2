//! Validation errors in Marathon's shape: `{"path": "/x", "errors": ["..."]}`.

use serde::{Deserialize, Serialize};

/// One invalid field and every reason it is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// JSON pointer-like path of the field, e.g. `/healthChecks(0)/protocol`.
    pub path: String,
    pub errors: Vec<String>,
}

/// All problems found in one object. Never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.summary())]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// A single error at `path`.
    pub fn single(path: impl Into<String>, msg: impl Into<String>) -> Self {
        let mut e = Self::new();
        e.add(path, msg);
        e
    }

    /// Records `msg` against `path`, merging with earlier errors on the same path.
    pub fn add(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        let path = path.into();
        let msg = msg.into();
        if let Some(existing) = self.0.iter_mut().find(|f| f.path == path) {
            existing.errors.push(msg);
        } else {
            self.0.push(FieldError {
                path,
                errors: vec![msg],
            });
        }
    }

    /// Adds every error of `other`, with `prefix` put before each path.
    pub fn extend_prefixed(&mut self, prefix: &str, other: ValidationErrors) {
        for f in other.0 {
            for e in f.errors {
                self.add(format!("{prefix}{}", f.path), e);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else `Err(self)`.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    fn summary(&self) -> String {
        self.0
            .iter()
            .map(|f| format!("{}: {}", f.path, f.errors.join("; ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
