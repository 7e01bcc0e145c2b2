use crate::types::Revision;

/// Errors from any [`crate::Store`] backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The history a watch asked for has been compacted away.
    #[error("revision {requested} has been compacted; oldest retained revision is {oldest}")]
    Compacted {
        /// First revision the caller needed.
        requested: Revision,
        /// Oldest revision still in the change log (watch with `after = oldest - 1`).
        oldest: Revision,
    },
    /// The store was closed (or its writer stopped).
    #[error("store is closed")]
    Closed,
    /// The storage engine failed.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// Stored or supplied bytes could not be encoded/decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// The request itself is not acceptable (e.g. too large).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }
}
