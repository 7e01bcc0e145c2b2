//! The etcd backend: the same [`Store`] semantics on an etcd v3 cluster, for several
//! `berth server`s sharing one state.
//!
//! etcd already has revisions, compare-and-swap transactions and prefix watches from a
//! revision, so most calls map one to one. What needs care:
//! - **Limits.** etcd refuses a transaction with more than `--max-txn-ops` (128) operations
//!   in a branch, or a request over `--max-request-bytes` (1.5 MiB). An unconditional
//!   transaction past either is written as several etcd transactions, in order (each
//!   durable before the next is sent). So is one whose compares only guard it (a leader's
//!   fence, on a key no op writes): each part carries the compares, and the first refused
//!   part ends it. Any other conditional one past them is refused with
//!   [`StoreError::Invalid`], since splitting it would not be atomic.
//! - **One key once.** etcd refuses a transaction that names a key twice (a put and a
//!   delete of it, or a put inside a deleted prefix). Ops are folded the way they would
//!   apply in order: a later put or delete of the same key replaces the earlier op; an op
//!   that cannot be folded starts the next etcd transaction.
//! - **Large ranges** are read in pages at one pinned revision, so the snapshot stays
//!   consistent and no response passes gRPC's message limit.
//! - **Compaction.** etcd keeps every revision until compacted; the store compacts on a
//!   timer, keeping the latest `retain_revisions` (as the embedded store's change log).

use crate::error::StoreError;
use crate::types::{Compare, EventKind, KeyValue, Op, Revision, Txn, TxnResponse, WatchEvent};
use crate::watch::WatchStream;
use crate::{Store, StoreStats};
use etcd_client as etcd;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How the etcd store connects and what it keeps.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `host:port` or `http://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Time to connect to a member.
    pub connect_timeout: Duration,
    /// Time for one request (a transaction, a page of a range).
    pub request_timeout: Duration,
    /// Most operations in one etcd transaction branch (etcd's `--max-txn-ops`, 128).
    pub max_txn_ops: usize,
    /// Most bytes of keys and values in one etcd request (under etcd's
    /// `--max-request-bytes`, 1.5 MiB, with room for the envelope).
    pub max_request_bytes: usize,
    /// Keys per page of a range read.
    pub range_page: i64,
    /// Revisions kept for resuming watches; older ones are compacted away.
    pub retain_revisions: u64,
    /// How often the store compacts (`None`: never; another party compacts).
    pub compact_interval: Option<Duration>,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_txn_ops: 128,
            max_request_bytes: 1_400_000,
            range_page: 1_000,
            retain_revisions: 10_000,
            compact_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// One etcd member as [`EtcdStore::members`] found it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberHealth {
    /// The member id, in hex as `etcdctl member list` shows it.
    pub id: String,
    pub name: String,
    pub client_urls: Vec<String>,
    /// It answered, with no alarm.
    pub healthy: bool,
    /// It leads etcd's raft (not Berth's leader).
    pub raft_leader: bool,
    pub db_size_bytes: u64,
    pub version: String,
    pub error: Option<String>,
}

/// [`Store`] on etcd. Cheap to clone (one gRPC channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd::Client,
    opts: Arc<EtcdOptions>,
    /// The highest revision any response has shown this client.
    revision: Arc<AtomicU64>,
    /// Highest revision this store compacted (0: none seen).
    compacted: Arc<AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.opts.endpoints)
            .finish_non_exhaustive()
    }
}

/// Failures that mean "no member answered this time", not "etcd refused".
fn retryable(e: &etcd::Error) -> bool {
    match e {
        etcd::Error::TransportError(_) | etcd::Error::IoError(_) => true,
        // gRPC's UNAVAILABLE (14): the channel could not reach a member.
        etcd::Error::GRpcStatus(s) => i32::from(s.code()) == 14,
        _ => false,
    }
}

fn etcd_error(e: etcd::Error) -> StoreError {
    match &e {
        etcd::Error::GRpcStatus(s) => {
            StoreError::Backend(format!("etcd: {} ({:?})", s.message(), s.code()))
        }
        _ => StoreError::Backend(format!("etcd: {e}")),
    }
}

/// Parses `etcd://h1:2379,h2:2379` (or `h1:2379,...`) into member endpoints.
pub fn parse_etcd_url(url: &str) -> Result<Vec<String>, StoreError> {
    let rest = url.strip_prefix("etcd://").unwrap_or(url);
    let endpoints: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("http://") || s.starts_with("https://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Err(StoreError::Invalid(format!(
            "{url:?} names no etcd member (expected etcd://host:port[,host:port...])"
        )));
    }
    for e in &endpoints {
        let hostport = e.split_once("://").map_or(e.as_str(), |(_, h)| h);
        let ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok || hostport.contains('/') {
            return Err(StoreError::Invalid(format!(
                "etcd member {hostport:?} is not host:port"
            )));
        }
    }
    Ok(endpoints)
}

impl EtcdStore {
    /// Connects and reads the current revision: fails when no member answers (the
    /// client's `connect` alone succeeds on a dead endpoint).
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        let store = Self::connect_unchecked(opts).await?;
        let mut kv = store.client.kv_client();
        let probe = tokio::time::timeout(store.opts.request_timeout, kv.get("\0berth-probe", None))
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "etcd: no member of {:?} answered within {:?}",
                    store.opts.endpoints, store.opts.request_timeout
                ))
            })?
            .map_err(etcd_error)?;
        store.saw_header(probe.header());
        Ok(store)
    }

    /// Connects without asking anything: for a server that must keep running while etcd
    /// is away (calls fail until it is back).
    pub async fn connect_unchecked(opts: EtcdOptions) -> Result<Self, StoreError> {
        let connect = etcd::ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = etcd::Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(etcd_error)?;
        let store = Self {
            client,
            opts: Arc::new(opts),
            revision: Arc::new(AtomicU64::new(0)),
            compacted: Arc::new(AtomicU64::new(0)),
        };
        if let Some(every) = store.opts.compact_interval {
            let weak = Arc::downgrade(&store.revision);
            let s = store.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if weak.strong_count() <= 1 {
                        return; // only this task's clone is left
                    }
                    if let Err(e) = s.compact_once().await {
                        tracing::warn!(error = %e, "etcd compaction failed");
                    }
                }
            });
        }
        Ok(store)
    }

    /// The etcd cluster's members, each asked for its status directly (1 s each, all at
    /// once): which answer, which leads etcd's raft, their database sizes.
    pub async fn members(&self) -> Result<Vec<MemberHealth>, StoreError> {
        let mut cc = self.client.cluster_client();
        let list = cc.member_list().await.map_err(etcd_error)?;
        let asks = list.members().iter().map(|m| {
            let name = m.name().to_string();
            let id = m.id();
            let urls = m.client_urls().to_vec();
            async move {
                let mut health = MemberHealth {
                    id: format!("{id:x}"),
                    name,
                    client_urls: urls.clone(),
                    healthy: false,
                    raft_leader: false,
                    db_size_bytes: 0,
                    version: String::new(),
                    error: None,
                };
                let options = etcd::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(Duration::from_secs(1));
                let status = async {
                    let mut c = etcd::Client::connect(&urls, Some(options)).await?;
                    c.status().await
                };
                match tokio::time::timeout(Duration::from_secs(2), status).await {
                    Ok(Ok(st)) => {
                        health.healthy = st.errors().is_empty();
                        health.raft_leader = st.leader() == id;
                        health.db_size_bytes = st.db_size().max(0) as u64;
                        health.version = st.version().to_string();
                        if !st.errors().is_empty() {
                            health.error = Some(st.errors().join("; "));
                        }
                    }
                    Ok(Err(e)) => health.error = Some(e.to_string()),
                    Err(_) => health.error = Some("no answer within 2 s".into()),
                }
                health
            }
        });
        Ok(futures::future::join_all(asks).await)
    }

    /// The client, for leader election and member status.
    pub fn client(&self) -> etcd::Client {
        self.client.clone()
    }

    fn saw_header(&self, header: Option<&etcd::ResponseHeader>) {
        if let Some(h) = header {
            self.saw_revision(h.revision());
        }
    }

    fn saw_revision(&self, rev: i64) {
        if let Ok(r) = u64::try_from(rev) {
            self.revision.fetch_max(r, Ordering::Relaxed);
        }
    }

    /// Compacts revisions older than the latest `retain_revisions`.
    pub async fn compact_once(&self) -> Result<Option<Revision>, StoreError> {
        let current = self.current_revision().await?;
        let target = current.saturating_sub(self.opts.retain_revisions);
        if target <= self.compacted.load(Ordering::Relaxed) || target == 0 {
            return Ok(None);
        }
        let mut kv = self.client.kv_client();
        match kv.compact(to_i64(target)?, None).await {
            Ok(_) => {}
            // Another server compacted further already.
            Err(etcd::Error::GRpcStatus(s)) if s.message().contains("compacted") => {}
            Err(e) => return Err(etcd_error(e)),
        }
        self.compacted.fetch_max(target, Ordering::Relaxed);
        Ok(Some(target))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        let r = kv.get("\0berth-probe", None).await.map_err(etcd_error)?;
        self.saw_header(r.header());
        Ok(self.revision.load(Ordering::Relaxed))
    }

    /// Runs `call` again while it fails for want of a member (the one the channel used went
    /// away: etcd's client moves to another), for up to the request timeout. Only for calls
    /// that may apply twice with the same effect: reads, and writes of whole records.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, etcd::Error>
    where
        F: FnMut(etcd::KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd::Error>>,
    {
        let deadline = std::time::Instant::now() + self.opts.request_timeout;
        loop {
            match call(self.client.kv_client()).await {
                Err(e) if retryable(&e) && std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "etcd call failed for want of a member; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn run_txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let guards_only = txn.failure.is_empty() && compares_untouched(&txn.compares, &txn.success);
        // A batch of whole records (the persister's): only the last op on each key counts,
        // so its parts name disjoint keys and may go to etcd side by side.
        let (success_ops, disjoint) = if guards_only {
            last_op_per_key(txn.success)
        } else {
            (txn.success, false)
        };
        let success = fold_ops(success_ops, &self.opts)?;
        let failure = fold_ops(txn.failure, &self.opts)?;
        let compares: Vec<etcd::Compare> = txn
            .compares
            .iter()
            .map(to_compare)
            .collect::<Result<_, _>>()?;
        if compares.len() > self.opts.max_txn_ops {
            return Err(StoreError::Invalid(format!(
                "a transaction of {} compares is past etcd's limit of {}",
                compares.len(),
                self.opts.max_txn_ops
            )));
        }
        let mut kv = self.client.kv_client();
        if success.len() > 1 && disjoint {
            return self.run_parts_side_by_side(success, compares).await;
        }
        if success.len() > 1 && guards_only {
            // Past the limits, and the compares only guard (a leader's fence): chunk after
            // chunk, in order, each guarded; the first refused chunk ends it.
            let mut revision = self.revision.load(Ordering::Relaxed);
            for chunk in success {
                let t = etcd::Txn::new().when(compares.clone()).and_then(chunk);
                let r = self
                    .retrying(|mut kv| {
                        let t = t.clone();
                        async move { kv.txn(t).await }
                    })
                    .await
                    .map_err(etcd_error)?;
                self.saw_header(r.header());
                revision = r.header().map_or(revision, |h| h.revision().max(0) as u64);
                if !r.succeeded() {
                    return Ok(TxnResponse {
                        succeeded: false,
                        revision,
                    });
                }
            }
            return Ok(TxnResponse {
                succeeded: true,
                revision,
            });
        }
        if success.len() > 1 || failure.len() > 1 {
            return Err(StoreError::Invalid(format!(
                "a conditional transaction past etcd's limits ({} operations or {} bytes \
                 in a branch, or a key named twice in ways that do not fold) cannot be \
                 split atomically",
                self.opts.max_txn_ops, self.opts.max_request_bytes
            )));
        }
        let mut t = etcd::Txn::new().when(compares);
        if let Some(ops) = success.into_iter().next() {
            t = t.and_then(ops);
        }
        if let Some(ops) = failure.into_iter().next() {
            t = t.or_else(ops);
        }
        let r = if guards_only {
            // Whole records under a guard at most: applying twice changes nothing more.
            self.retrying(|mut kv| {
                let t = t.clone();
                async move { kv.txn(t).await }
            })
            .await
        } else {
            kv.txn(t).await
        }
        .map_err(etcd_error)?;
        self.saw_header(r.header());
        Ok(TxnResponse {
            succeeded: r.succeeded(),
            revision: r.header().map_or(0, |h| h.revision().max(0) as u64),
        })
    }

    /// The parts of a batch whose keys are disjoint, [`PARTS_IN_FLIGHT`] at a time (etcd
    /// commits concurrent proposals together), each with the guard compares.
    async fn run_parts_side_by_side(
        &self,
        parts: Vec<Vec<etcd::TxnOp>>,
        compares: Vec<etcd::Compare>,
    ) -> Result<TxnResponse, StoreError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let answers: Vec<etcd::TxnResponse> = stream::iter(parts.into_iter().map(|part| {
            let t = etcd::Txn::new().when(compares.clone()).and_then(part);
            async move {
                self.retrying(|mut kv| {
                    let t = t.clone();
                    async move { kv.txn(t).await }
                })
                .await
            }
        }))
        .buffer_unordered(PARTS_IN_FLIGHT)
        .try_collect()
        .await
        .map_err(etcd_error)?;
        let mut revision = self.revision.load(Ordering::Relaxed);
        for r in &answers {
            self.saw_header(r.header());
            revision = revision.max(r.header().map_or(0, |h| h.revision().max(0) as u64));
        }
        Ok(TxnResponse {
            succeeded: answers.iter().all(|r| r.succeeded()),
            revision,
        })
    }

    async fn run_range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        // A page pinned to a revision compacted meanwhile fails: read it all again.
        for _ in 0..5 {
            match self.range_once(prefix).await {
                Err(StoreError::Compacted { .. }) => continue,
                other => return other,
            }
        }
        Err(StoreError::Backend(format!(
            "etcd: reading {prefix:?} kept meeting compactions"
        )))
    }

    async fn range_once(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let (mut from, end) = key_range(prefix);
        let mut at: i64 = 0;
        let mut out = Vec::new();
        loop {
            let mut o = etcd::GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.opts.range_page);
            if at > 0 {
                o = o.with_revision(at);
            }
            let page = self
                .retrying(|mut kv| {
                    let (from, o) = (from.clone(), o.clone());
                    async move { kv.get(from, Some(o)).await }
                })
                .await;
            let r = match page {
                Ok(r) => r,
                Err(etcd::Error::GRpcStatus(s)) if s.message().contains("compacted") => {
                    return Err(StoreError::Compacted {
                        requested: at.max(0) as u64,
                        oldest: 0,
                    });
                }
                Err(e) => return Err(etcd_error(e)),
            };
            if at == 0 {
                at = r.header().map_or(0, |h| h.revision());
                self.saw_revision(at);
            }
            for x in r.kvs() {
                out.push(to_kv(x)?);
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok((out, at.max(0) as u64))
    }

    async fn start_watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let start = to_i64(after.saturating_add(1))?;
        // etcd first confirms a watch whose history is gone, and cancels it in a later
        // message; a read at that revision tells at once, so the caller gets the error
        // from `watch` itself, as from the embedded store.
        let mut kv = self.client.kv_client();
        let at_start = etcd::GetOptions::new()
            .with_revision(start)
            .with_count_only();
        let compacted = matches!(
            kv.get("\0berth-probe", Some(at_start)).await,
            Err(etcd::Error::GRpcStatus(ref s)) if s.message().contains("compacted")
        );
        let (from, end) = key_range(prefix);
        let options = etcd::WatchOptions::new()
            .with_range(end)
            .with_start_revision(start);
        let mut wc = self.client.watch_client();
        let mut stream = wc.watch(from, Some(options)).await.map_err(etcd_error)?;
        let (tx, rx) = mpsc::channel(64);
        let mut pending = Vec::new();
        loop {
            let message = tokio::time::timeout(self.opts.request_timeout, stream.message())
                .await
                .map_err(|_| StoreError::Backend("etcd: no answer to a watch".into()))?;
            match message.map_err(etcd_error)? {
                None => return Err(StoreError::Closed),
                Some(r) if r.compact_revision() > 0 || r.canceled() => {
                    return Err(compacted_or_canceled(&r, after));
                }
                // Wait for the cancellation that says how far etcd compacted.
                Some(r) if compacted && r.events().is_empty() => continue,
                Some(r) => {
                    pending.push(r);
                    break;
                }
            }
        }
        let revision = self.revision.clone();
        let task = tokio::spawn(async move {
            // Kept alive with the task: dropping the client half cancels the watch.
            let _wc = wc;
            let mut next = pending.pop();
            loop {
                let r = match next.take() {
                    Some(r) => r,
                    None => match stream.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let _ = tx.send(Err(StoreError::Closed)).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(etcd_error(e))).await;
                            return;
                        }
                    },
                };
                if r.compact_revision() > 0 || r.canceled() {
                    let _ = tx.send(Err(compacted_or_canceled(&r, after))).await;
                    return;
                }
                let mut batch = Vec::with_capacity(r.events().len());
                for ev in r.events() {
                    match to_event(ev) {
                        Ok(e) => {
                            revision.fetch_max(e.revision(), Ordering::Relaxed);
                            batch.push(e);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
                    return; // the consumer is gone
                }
            }
        });
        Ok(WatchStream::new(rx).abort_on_drop(task.abort_handle()))
    }
}

/// Parts of one batch sent to etcd at once.
const PARTS_IN_FLIGHT: usize = 8;

/// Keeps the last op on each key, in first-seen order; `false` (and the ops as they were)
/// when one deletes a prefix, since then the order between ops matters.
fn last_op_per_key(ops: Vec<Op>) -> (Vec<Op>, bool) {
    if ops.iter().any(|o| matches!(o, Op::DeletePrefix { .. })) {
        return (ops, false);
    }
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let key = match &op {
            Op::Put { key, .. } | Op::Delete { key } => key.clone(),
            Op::DeletePrefix { prefix } => prefix.clone(),
        };
        match at.get(&key) {
            Some(&i) => out[i] = op,
            None => {
                at.insert(key, out.len());
                out.push(op);
            }
        }
    }
    (out, true)
}

/// Whether no op touches a key the compares look at: then the compares only guard the
/// ops (as a leader's fence does), and repeating them on every chunk keeps their meaning.
fn compares_untouched(compares: &[Compare], ops: &[Op]) -> bool {
    compares.iter().all(|c| {
        let key = match c {
            Compare::ModRevision { key, .. } | Compare::Exists(key) | Compare::Absent(key) => key,
        };
        let probe = Op::delete(key.clone());
        !ops.iter().any(|op| overlaps(op, &probe))
    })
}

fn compacted_or_canceled(r: &etcd::WatchResponse, after: Revision) -> StoreError {
    if r.compact_revision() > 0 {
        StoreError::Compacted {
            requested: after.saturating_add(1),
            oldest: r.compact_revision().max(0) as u64,
        }
    } else {
        StoreError::Backend(format!("etcd cancelled the watch: {}", r.cancel_reason()))
    }
}

fn to_i64(r: Revision) -> Result<i64, StoreError> {
    i64::try_from(r).map_err(|_| StoreError::Invalid(format!("revision {r} is out of range")))
}

/// The first key after every key starting with `prefix` (etcd's range end); `\0` (every
/// key) for the empty prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The etcd key range of a prefix: `[prefix, prefix_end)`; every key for `""` (etcd
/// refuses an empty key).
fn key_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
    }
}

fn to_kv(x: &etcd::KeyValue) -> Result<KeyValue, StoreError> {
    let key = std::str::from_utf8(x.key())
        .map_err(|_| StoreError::Codec(format!("etcd key {:?} is not UTF-8", x.key())))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: x.value().to_vec(),
        create_revision: x.create_revision().max(0) as u64,
        mod_revision: x.mod_revision().max(0) as u64,
    })
}

fn to_event(ev: &etcd::Event) -> Result<WatchEvent, StoreError> {
    let kv = ev
        .kv()
        .ok_or_else(|| StoreError::Codec("etcd watch event without a key".into()))?;
    let mut kv = to_kv(kv)?;
    let kind = match ev.event_type() {
        etcd::EventType::Put => EventKind::Put,
        etcd::EventType::Delete => {
            kv.value.clear();
            kv.create_revision = 0;
            EventKind::Delete
        }
    };
    Ok(WatchEvent { kind, kv })
}

fn to_compare(c: &Compare) -> Result<etcd::Compare, StoreError> {
    Ok(match c {
        // A missing key's mod_revision compares as 0 in etcd, as here.
        Compare::ModRevision { key, revision } => {
            etcd::Compare::mod_revision(key.as_str(), etcd::CompareOp::Equal, to_i64(*revision)?)
        }
        Compare::Exists(key) => {
            etcd::Compare::create_revision(key.as_str(), etcd::CompareOp::Greater, 0)
        }
        Compare::Absent(key) => etcd::Compare::version(key.as_str(), etcd::CompareOp::Equal, 0),
    })
}

fn op_bytes(op: &Op) -> usize {
    16 + match op {
        Op::Put { key, value } => key.len() + value.len(),
        Op::Delete { key } => key.len(),
        Op::DeletePrefix { prefix } => 2 * prefix.len() + 1,
    }
}

/// The key or key range an op touches: `(start, end)`, end exclusive (`None`: one key).
fn op_range(op: &Op) -> (&[u8], Option<Vec<u8>>) {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => (key.as_bytes(), None),
        Op::DeletePrefix { prefix } => (prefix.as_bytes(), Some(prefix_end(prefix.as_bytes()))),
    }
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end == [0u8] || key < end)
}

fn overlaps(a: &Op, b: &Op) -> bool {
    match (op_range(a), op_range(b)) {
        ((x, None), (y, None)) => x == y,
        ((k, None), (s, Some(e))) | ((s, Some(e)), (k, None)) => in_range(k, s, &e),
        ((s1, Some(e1)), (s2, Some(e2))) => {
            let e1_after_s2 = e1.as_slice() == [0u8] || s2 < e1.as_slice();
            let e2_after_s1 = e2.as_slice() == [0u8] || s1 < e2.as_slice();
            e1_after_s2 && e2_after_s1
        }
    }
}

fn to_txn_op(op: Op) -> etcd::TxnOp {
    match op {
        Op::Put { key, value } => etcd::TxnOp::put(key, value, None),
        Op::Delete { key } => etcd::TxnOp::delete(key, None),
        Op::DeletePrefix { prefix } => {
            let (from, end) = key_range(&prefix);
            etcd::TxnOp::delete(from, Some(etcd::DeleteOptions::new().with_range(end)))
        }
    }
}

/// Splits `ops` into etcd transactions that each hold at most `max_txn_ops` ops and
/// `max_request_bytes`, naming each key at most once, so that applying them in order ends
/// in the state applying `ops` in order would. An empty list gives no transaction.
fn fold_ops(ops: Vec<Op>, opts: &EtcdOptions) -> Result<Vec<Vec<etcd::TxnOp>>, StoreError> {
    let mut chunks: Vec<Vec<Op>> = Vec::new();
    let mut chunk: Vec<Op> = Vec::new();
    let mut bytes = 0usize;
    // Index of the op on a key in the current chunk, for single-key ops.
    let mut by_key: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut has_prefix_delete = false;
    for op in ops {
        let size = op_bytes(&op);
        if size > opts.max_request_bytes {
            return Err(StoreError::Invalid(format!(
                "one operation of {size} bytes is past etcd's request limit of {} bytes",
                opts.max_request_bytes
            )));
        }
        let single_key = match &op {
            Op::Put { key, .. } | Op::Delete { key } => Some(key.clone()),
            Op::DeletePrefix { .. } => None,
        };
        // A later put or delete of a key replaces the earlier op on it (same end state).
        if let Some(k) = &single_key
            && !has_prefix_delete
            && let Some(&i) = by_key.get(k)
        {
            bytes = bytes - op_bytes(&chunk[i]) + size;
            chunk[i] = op;
            continue;
        }
        let conflict =
            (has_prefix_delete || single_key.is_none()) && chunk.iter().any(|o| overlaps(o, &op));
        if conflict || chunk.len() >= opts.max_txn_ops || bytes + size > opts.max_request_bytes {
            chunks.push(std::mem::take(&mut chunk));
            by_key.clear();
            has_prefix_delete = false;
            bytes = 0;
        }
        match single_key {
            Some(k) => {
                by_key.insert(k, chunk.len());
            }
            None => has_prefix_delete = true,
        }
        bytes += size;
        chunk.push(op);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    Ok(chunks
        .into_iter()
        .map(|c| c.into_iter().map(to_txn_op).collect())
        .collect())
}

impl Store for EtcdStore {
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(self.run_txn(txn))
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        let key = key.to_string();
        Box::pin(async move {
            let r = self
                .retrying(|mut kv| {
                    let key = key.clone();
                    async move { kv.get(key, None).await }
                })
                .await
                .map_err(etcd_error)?;
            self.saw_header(r.header());
            r.kvs().first().map(to_kv).transpose()
        })
    }

    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.run_range(&prefix).await })
    }

    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.start_watch(&prefix, after).await })
    }

    fn revision(&self) -> Revision {
        self.revision.load(Ordering::Relaxed)
    }

    fn stats(&self) -> Option<StoreStats> {
        Some(StoreStats {
            // etcd's file is on its members; `etcdctl endpoint status` shows it.
            size_bytes: 0,
            revision: self.revision.load(Ordering::Relaxed),
            compacted_revision: self.compacted.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;

    fn opts(max_ops: usize, max_bytes: usize) -> EtcdOptions {
        EtcdOptions {
            max_txn_ops: max_ops,
            max_request_bytes: max_bytes,
            ..EtcdOptions::new(vec![])
        }
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn ops_fold_per_key_and_split_at_the_limits() {
        let ops = vec![
            Op::put("a", "1"),
            Op::put("b", "1"),
            Op::put("a", "2"),
            Op::delete("b"),
            Op::put("c", "1"),
        ];
        let chunks = fold_ops(ops.clone(), &opts(128, 1 << 20)).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), 3, "a and b folded");
        let chunks = fold_ops(ops, &opts(2, 1 << 20)).unwrap();
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        // A put under a prefix deleted in the same chunk starts the next one.
        let ops = vec![
            Op::put("p/x", "1"),
            Op::delete_prefix("p/"),
            Op::put("p/y", "1"),
            Op::put("q", "1"),
        ];
        let chunks = fold_ops(ops, &opts(128, 1 << 20)).unwrap();
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 2]);
        // Bytes: each op ~16 + its key and value.
        let big = "v".repeat(100);
        let ops: Vec<Op> = (0..10)
            .map(|i| Op::put(format!("k{i}"), big.clone()))
            .collect();
        let chunks = fold_ops(ops, &opts(128, 500)).unwrap();
        assert!(chunks.len() >= 3, "{}", chunks.len());
        let too_big = fold_ops(vec![Op::put("k", "v".repeat(600))], &opts(128, 500));
        assert!(matches!(too_big, Err(StoreError::Invalid(_))));
    }

    #[test]
    fn etcd_urls() {
        assert_eq!(
            parse_etcd_url("etcd://h1:2379,h2:2379").unwrap(),
            ["http://h1:2379", "http://h2:2379"]
        );
        assert!(parse_etcd_url("etcd://").is_err());
        assert!(parse_etcd_url("etcd://h1").is_err());
        assert!(parse_etcd_url("etcd://h1:99999").is_err());
    }
}
