//! Plain data types shared by every backend.

/// Store-wide revision: bumped once per transaction that changes something.
pub type Revision = u64;

/// A stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
}

/// A transaction guard, evaluated against committed state (plus earlier txns in the
/// same group commit, which are ordered before this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; `0` means "the key is absent".
    ModRevision { key: String, revision: Revision },
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Absent(String),
}

impl Compare {
    pub fn mod_revision(key: impl Into<String>, revision: Revision) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision,
        }
    }
    pub fn exists(key: impl Into<String>) -> Self {
        Compare::Exists(key.into())
    }
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::Absent(key.into())
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    DeletePrefix { prefix: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}

/// An etcd-style transaction: if all `compares` hold, apply `success`, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a compare (all must hold).
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    /// Adds an op applied when the compares hold.
    pub fn then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }
    /// Adds an op applied when a compare fails.
    pub fn otherwise(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }
}

/// Outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (so `success` ran rather than `failure`).
    pub succeeded: bool,
    /// The store revision right after this txn: its own revision if it changed
    /// something, otherwise the revision it was evaluated at.
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For `Delete`, `kv.value` is empty, `create_revision`
/// is 0 and `mod_revision` is the deletion revision (as in etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}
