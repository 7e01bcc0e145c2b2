//! Leader election on an etcd lease, with fencing.
//!
//! A candidate holds leadership while a key it created under its own lease exists: it
//! campaigns with a transaction that creates the key only when absent, and keeps the lease
//! alive every third of its TTL. The key's revision is the leader's **fence**: every write of
//! the leader carries `Compare::mod_revision(key, fence)`, so once its lease has expired and a
//! successor has created the key again, nothing the old leader sends can apply, even when it
//! was paused and does not know yet. A failed keep-alive, or a keep-alive not answered within
//! the TTL, ends leadership at once ([`Leadership::lost`]).

use crate::error::StoreError;
use crate::etcd_store::EtcdStore;
use crate::types::{Compare, Revision};
use etcd_client as etcd;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where the leader's record lives: `{"id", "url"}` of the server that leads.
pub const LEADER_KEY: &str = "/berth/leader";

/// The leadership a candidate won; dropping it stops the keep-alive (etcd then expires the
/// lease after its TTL), [`Leadership::resign`] ends it at once.
pub struct Leadership {
    store: EtcdStore,
    lease: i64,
    fence: Revision,
    lost: watch::Receiver<Option<String>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Leadership {
    /// The revision at which this leader created the leader key.
    pub fn fence_revision(&self) -> Revision {
        self.fence
    }

    /// The guard every write of this leader carries.
    pub fn fence(&self) -> Compare {
        Compare::mod_revision(LEADER_KEY, self.fence)
    }

    /// Resolves with the reason once leadership is lost (lease expired or revoked, or
    /// keep-alive failing); at once if it already is.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the keep-alive stopped".into();
            }
        }
    }

    /// Whether leadership is still held, as far as this process knows.
    pub fn is_held(&self) -> bool {
        self.lost.borrow().is_none()
    }

    /// Ends leadership now: revokes the lease, which deletes the leader key, so another
    /// candidate wins without waiting for the TTL.
    pub async fn resign(self) -> Result<(), StoreError> {
        self.keeper.abort();
        let mut lc = self.store.client().lease_client();
        lc.revoke(self.lease)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(format!("etcd: revoking the lease: {e}")))
    }
}

fn backend(what: &str, e: etcd::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {what}: {e}"))
}

/// The current leader's record, if any.
pub async fn current_leader(store: &EtcdStore) -> Result<Option<Vec<u8>>, StoreError> {
    use crate::Store;
    Ok(store.get(LEADER_KEY).await?.map(|kv| kv.value))
}

/// The current leader's record and the lease it holds leadership under.
pub async fn current_leader_lease(store: &EtcdStore) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
    let mut kv = store.client().kv_client();
    let r = kv
        .get(LEADER_KEY, None)
        .await
        .map_err(|e| backend("reading the leader", e))?;
    Ok(r.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease())))
}

/// Ends another server's leadership by revoking its lease, for a follower that knows the
/// leader is gone (its port refuses connections) sooner than the lease would expire.
/// Fencing keeps this safe even if the follower is wrong: a deposed leader that lives
/// writes nothing more and steps down.
pub async fn depose(store: &EtcdStore, lease: i64) -> Result<(), StoreError> {
    let mut lc = store.client().lease_client();
    match lc.revoke(lease).await {
        Ok(_) => Ok(()),
        // Already gone: someone else deposed it, or it expired.
        Err(etcd::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
        Err(e) => Err(backend("revoking the leader's lease", e)),
    }
}

/// Campaigns until this candidate leads, then returns its leadership. `record` is what
/// others read as the leader (the server's id and URL). Waits while another leads,
/// watching for the key's deletion; `ttl` is the lease's, in whole seconds (at least 1).
pub async fn campaign(
    store: &EtcdStore,
    record: Vec<u8>,
    ttl: Duration,
) -> Result<Leadership, StoreError> {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let client = store.client();
    loop {
        let mut lc = client.lease_client();
        let lease = lc
            .grant(ttl_secs, None)
            .await
            .map_err(|e| backend("granting a lease", e))?
            .id();
        let put = etcd::TxnOp::put(
            LEADER_KEY,
            record.clone(),
            Some(etcd::PutOptions::new().with_lease(lease)),
        );
        let txn = etcd::Txn::new()
            .when(vec![etcd::Compare::version(
                LEADER_KEY,
                etcd::CompareOp::Equal,
                0,
            )])
            .and_then(vec![put])
            .or_else(vec![etcd::TxnOp::get(LEADER_KEY, None)]);
        let mut kv = client.kv_client();
        let r = kv.txn(txn).await.map_err(|e| backend("campaigning", e))?;
        let revision = r.header().map_or(0, |h| h.revision()).max(0) as u64;
        if r.succeeded() {
            let (tx, rx) = watch::channel(None);
            let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, tx));
            return Ok(Leadership {
                store: store.clone(),
                lease,
                fence: revision,
                lost: rx,
                keeper,
            });
        }
        // Someone leads: give the lease back and wait for the key to go.
        let _ = lc.revoke(lease).await;
        wait_for_vacancy(&client, revision, ttl).await?;
    }
}

/// Returns once the leader key is deleted after `seen` (or after a while, to look again).
async fn wait_for_vacancy(
    client: &etcd::Client,
    seen: Revision,
    ttl: Duration,
) -> Result<(), StoreError> {
    let mut wc = client.watch_client();
    let options = etcd::WatchOptions::new().with_start_revision(seen as i64 + 1);
    let mut stream = wc
        .watch(LEADER_KEY, Some(options))
        .await
        .map_err(|e| backend("watching the leader", e))?;
    let deadline = tokio::time::sleep(ttl * 2);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(()),
            m = stream.message() => match m {
                Ok(Some(r)) => {
                    if r.canceled()
                        || r.events().iter().any(|e| e.event_type() == etcd::EventType::Delete)
                    {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(backend("watching the leader", e)),
            }
        }
    }
}

/// Renews the lease every third of its TTL. A member going away breaks the keep-alive
/// stream: it is opened again (etcd's client reaches another member) for as long as the
/// lease can still be alive. Leadership is lost when etcd says the lease is gone, or when
/// no renewal was answered for a whole TTL (a paused process finds that at once).
async fn keep_alive(
    client: etcd::Client,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<Option<String>>,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut renewed = Instant::now();
    let mut last_error = String::new();
    let mut channel: Option<(etcd::LeaseKeeper, etcd::LeaseKeepAliveStream)> = None;
    loop {
        if renewed.elapsed() >= ttl {
            let why = if last_error.is_empty() {
                format!("no lease renewal for {:?} (the TTL)", renewed.elapsed())
            } else {
                format!(
                    "no lease renewal for {:?} (the TTL); last error: {last_error}",
                    renewed.elapsed()
                )
            };
            let _ = lost.send(Some(why));
            return;
        }
        let sent_at = Instant::now();
        let answer = tokio::time::timeout(every, async {
            if channel.is_none() {
                channel = Some(client.lease_client().keep_alive(lease).await?);
            }
            let Some((keeper, stream)) = channel.as_mut() else {
                return Ok(None);
            };
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                // A renewal counts from when it was asked for.
                renewed = sent_at;
                last_error.clear();
            }
            Ok(Ok(Some(_))) => {
                let _ = lost.send(Some("the lease expired or was revoked".into()));
                return;
            }
            Ok(Ok(None)) => {
                last_error = "the keep-alive stream ended".into();
                channel = None;
            }
            Ok(Err(e)) => {
                last_error = e.to_string();
                channel = None;
            }
            Err(_) => {
                last_error = "a renewal was not answered in time".into();
                channel = None;
            }
        }
        let wait = if last_error.is_empty() {
            every.saturating_sub(sent_at.elapsed())
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::EtcdProcess;
    use crate::{Op, Store, Txn};

    fn fenced_put(fence: Compare, key: &str) -> Txn {
        Txn::new().when(fence).then(Op::put(key, "x"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_at_a_time_and_a_fence_that_stops_the_old_one() {
        let Some(etcd) = EtcdProcess::start("one_leader_at_a_time").await else {
            return;
        };
        let store = etcd.store().await;
        let ttl = Duration::from_secs(2);
        let a = campaign(&store, b"a".to_vec(), ttl).await.unwrap();
        assert_eq!(
            current_leader(&store).await.unwrap().as_deref(),
            Some(&b"a"[..])
        );
        assert!(
            store
                .txn(fenced_put(a.fence(), "w/a1"))
                .await
                .unwrap()
                .succeeded
        );

        // b waits while a leads.
        let s2 = store.clone();
        let b = tokio::spawn(async move { campaign(&s2, b"b".to_vec(), ttl).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!b.is_finished(), "b must not lead while a renews its lease");
        assert!(a.is_held());

        // a resigns: b leads at once, and a's fence no longer holds.
        let old_fence = a.fence();
        let resigned = std::time::Instant::now();
        a.resign().await.unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), b)
            .await
            .expect("b wins soon after a resigns")
            .unwrap()
            .unwrap();
        assert!(
            resigned.elapsed() < Duration::from_secs(2),
            "{:?}",
            resigned.elapsed()
        );
        assert_eq!(
            current_leader(&store).await.unwrap().as_deref(),
            Some(&b"b"[..])
        );
        let before = store.revision();
        assert!(
            !store
                .txn(fenced_put(old_fence.clone(), "w/a2"))
                .await
                .unwrap()
                .succeeded
        );
        assert!(store.get("w/a2").await.unwrap().is_none());
        assert_eq!(store.revision(), before, "a refused write uses no revision");
        assert!(
            store
                .txn(fenced_put(b.fence(), "w/b1"))
                .await
                .unwrap()
                .succeeded
        );
        // A batch past etcd's limits, guarded by the old fence: nothing of it applies.
        let ops: Vec<Op> = (0..300)
            .map(|i| Op::put(format!("w/big/{i}"), "v"))
            .collect();
        let r = store
            .txn(Txn {
                compares: vec![old_fence],
                success: ops.clone(),
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(!r.succeeded);
        assert!(store.range("w/big/").await.unwrap().0.is_empty());
        let r = store
            .txn(Txn {
                compares: vec![b.fence()],
                success: ops,
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(r.succeeded);
        assert_eq!(store.range("w/big/").await.unwrap().0.len(), 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_that_stops_renewing_is_replaced_after_its_ttl() {
        let Some(etcd) = EtcdProcess::start("a_leader_that_stops_renewing").await else {
            return;
        };
        let store = etcd.store().await;
        let ttl = Duration::from_secs(2);
        let a = campaign(&store, b"a".to_vec(), ttl).await.unwrap();
        let old_fence = a.fence();
        // As if the process died: no more renewals (the lease is not revoked).
        drop(a);
        let died = std::time::Instant::now();
        let b = tokio::time::timeout(
            Duration::from_secs(10),
            campaign(&store, b"b".to_vec(), ttl),
        )
        .await
        .expect("b leads within the TTL and a little")
        .unwrap();
        let took = died.elapsed();
        assert!(
            took >= Duration::from_millis(1500),
            "not before the lease expired: {took:?}"
        );
        assert!(took < Duration::from_secs(6), "{took:?}");
        assert!(
            !store
                .txn(fenced_put(old_fence, "w/late"))
                .await
                .unwrap()
                .succeeded
        );
        assert!(b.is_held());

        // Revoking b's lease behind its back (an operator, or etcd losing it): b learns.
        let mut lc = store.client().lease_client();
        lc.revoke(b.lease).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(5), b.lost())
            .await
            .expect("b notices within a renewal or two");
        assert!(
            why.contains("expired") || why.contains("revoked") || why.contains("failed"),
            "{why}"
        );
        assert!(!b.is_held());
    }
}
