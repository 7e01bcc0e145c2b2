//! Durable store with etcd semantics.
//!
//! The [`Store`] trait mirrors the parts of etcd's KV/Watch API that Berth needs:
//! a store-wide revision bumped once per changing transaction, compare-and-swap
//! transactions with success/failure branches, prefix ranges read at a revision, and
//! prefix watches that resume from a revision without gaps or duplicates. The
//! embedded backend, [`RedbStore`], keeps everything in one redb file and batches
//! concurrent transactions into one fsync'd commit (group commit). [`EtcdStore`] gives the
//! same semantics on an etcd cluster, for several servers.
//!
//! ```
//! use berth_store::{Compare, Op, RedbStore, Store, StoreExt, Txn};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), berth_store::StoreError> {
//! # let dir = tempfile::tempdir().map_err(|e| berth_store::StoreError::Backend(e.to_string()))?;
//! let store = RedbStore::open(dir.path())?;
//! let (_, at) = store.range("apps/").await?;          // snapshot + its revision
//! let mut watch = store.watch("apps/", at).await?;    // everything after it
//! let rev = store.put("apps/web", "v1").await?;
//! // Compare-and-swap: only update if nobody changed it since `rev`.
//! let r = store
//!     .txn(Txn::new().when(Compare::mod_revision("apps/web", rev)).then(Op::put("apps/web", "v2")))
//!     .await?;
//! assert!(r.succeeded);
//! assert_eq!(watch.next().await.transpose()?.map(|e| e.revision()), Some(rev));
//! # Ok(())
//! # }
//! ```

mod codec;
pub mod election;
mod error;
mod etcd_store;
mod redb_store;
mod types;
mod watch;

pub use error::StoreError;
pub use etcd_store::{EtcdOptions, EtcdStore, MemberHealth, parse_etcd_url};
pub use redb_store::{RedbStore, StoreOptions, StoreStats};
pub use types::{Compare, EventKind, KeyValue, Op, Revision, Txn, TxnResponse, WatchEvent};
pub use watch::WatchStream;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A key-value store with etcd's semantics.
///
/// Dyn-compatible (`Arc<dyn Store>`), so an etcd backend can replace the embedded one
/// without touching callers. Convenience helpers live in [`StoreExt`].
pub trait Store: Send + Sync + 'static {
    /// Runs a transaction atomically. If every compare holds, `success` ops are
    /// applied, otherwise `failure` ops. All ops share one new revision; a txn that
    /// changes nothing does not consume a revision. `Ok` means the result is durable.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>>;

    /// Reads one key.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>>;

    /// Reads every key starting with `prefix`, sorted by key, plus the revision of the
    /// snapshot it was read at (use it as `after` in [`Store::watch`] to follow on
    /// without gaps).
    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>>;

    /// Streams every change to keys under `prefix` with revision `> after`, history
    /// first, then live, in revision order, without gaps or duplicates. Fails with
    /// [`StoreError::Compacted`] when that history is no longer kept.
    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream, StoreError>>;

    /// The latest committed revision.
    fn revision(&self) -> Revision;

    /// Size on disk and revisions, for monitoring; `None` if the backend cannot tell.
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        (**self).txn(txn)
    }
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        (**self).get(key)
    }
    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>> {
        (**self).range(prefix)
    }
    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        (**self).watch(prefix, after)
    }
    fn revision(&self) -> Revision {
        (**self).revision()
    }
    fn stats(&self) -> Option<StoreStats> {
        (**self).stats()
    }
}

/// Convenience helpers over any [`Store`], including `dyn Store`.
pub trait StoreExt: Store {
    /// Unconditional put; returns the revision it was written at.
    fn put(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let txn = Txn::new().then(Op::put(key, value));
        Box::pin(async move { Ok(self.txn(txn).await?.revision) })
    }

    /// Unconditional delete; returns the store revision afterwards (unchanged if the
    /// key did not exist).
    fn delete(&self, key: impl Into<String>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let txn = Txn::new().then(Op::delete(key));
        Box::pin(async move { Ok(self.txn(txn).await?.revision) })
    }

    /// Puts `value` only if `key` is absent. Returns whether it was created.
    fn create(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = key.into();
        let txn = Txn::new()
            .when(Compare::Absent(key.clone()))
            .then(Op::put(key, value));
        Box::pin(async move { Ok(self.txn(txn).await?.succeeded) })
    }

    /// Serializes `value` as JSON and puts it.
    fn put_json<T: Serialize + ?Sized>(
        &self,
        key: impl Into<String>,
        value: &T,
    ) -> BoxFuture<'_, Result<Revision, StoreError>> {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.put(key, bytes),
            Err(e) => Box::pin(futures::future::ready(Err(StoreError::Codec(
                e.to_string(),
            )))),
        }
    }

    /// Reads and deserializes a JSON value, with its `mod_revision` for a later CAS.
    fn get_json<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<(T, Revision)>, StoreError>> {
        let fut = self.get(key);
        Box::pin(async move {
            match fut.await? {
                None => Ok(None),
                Some(kv) => {
                    let v = serde_json::from_slice(&kv.value)
                        .map_err(|e| StoreError::Codec(format!("{}: {e}", kv.key)))?;
                    Ok(Some((v, kv.mod_revision)))
                }
            }
        })
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

#[cfg(test)]
mod conformance;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;
