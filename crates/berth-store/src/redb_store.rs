//! Embedded backend on redb with group commit.
//!
//! One writer thread owns every write transaction. It drains all queued txn requests
//! (up to `max_batch`), applies them in order inside one redb write transaction (each
//! txn gets its own revision and sees the effects of the earlier ones), commits once
//! with `Durability::Immediate`, then answers each caller and broadcasts the events.
//! One fsync thus serves a whole burst of writers.
//!
//! The change log (`revision -> events`, read by watches that resume from a revision) is
//! compacted by the same writer, inside the same write transactions: it keeps at most
//! [`StoreOptions::retain_revisions`] revisions and nothing older than
//! [`StoreOptions::retain_age`], but never drops a revision a live watch has yet to read
//! unless that watch is more than [`StoreOptions::watch_retain_max`] revisions behind. At
//! most [`StoreOptions::compact_batch`] revisions are removed per commit. redb reuses the
//! freed pages, so under steady churn the file levels off instead of growing.

use crate::Store;
use crate::codec;
use crate::error::StoreError;
use crate::types::{Compare, EventKind, KeyValue, Op, Revision, Txn, TxnResponse, WatchEvent};
use crate::watch::{self, Committed, WatchStream};
use futures::future::BoxFuture;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("changelog");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
/// Every change-log entry at or below this revision has been deleted.
const META_COMPACTED: &str = "compacted";

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// File name inside the store directory.
    pub file_name: String,
    /// Most revisions the change log keeps for resuming watches (older ones are compacted
    /// away). Default 10,000.
    pub retain_revisions: u64,
    /// Change-log entries older than this are compacted away even when fewer than
    /// `retain_revisions` are kept; `None` keeps them regardless of age. Default 10 minutes.
    /// Ages are measured from commit time, to within `retain_age / 64` (at most 10 s); the
    /// entries found in the file at open count as written at open.
    pub retain_age: Option<Duration>,
    /// A live watch holds back compaction at the revision it has delivered, so it never
    /// loses history it has not read yet. But once it is more than this many revisions
    /// behind the current one, the log is compacted past it regardless, and the watch ends
    /// with [`StoreError::Compacted`] when it next needs the log (it must re-list).
    /// Never less than `retain_revisions`. Default 100,000.
    pub watch_retain_max: u64,
    /// Most change-log revisions deleted in one commit, so compacting a large backlog
    /// (e.g. after the limits were lowered) is spread over several commits. Keep it at
    /// least `max_batch` so compaction keeps up with writes. Default 10,000.
    pub compact_batch: u64,
    /// Most txns folded into one commit.
    pub max_batch: usize,
    /// Pending txn requests before callers wait (back-pressure).
    pub queue_depth: usize,
    /// Committed batches buffered per watcher before it must re-read the change log.
    pub broadcast_capacity: usize,
    /// redb's page cache, in bytes. Berth's server keeps its state in memory and reads the
    /// store only at start-up, so a small cache suffices (redb's default is 1 GiB, which
    /// fills with written pages and shows up as server RSS).
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            file_name: "berth.redb".to_owned(),
            retain_revisions: 10_000,
            retain_age: Some(Duration::from_secs(600)),
            watch_retain_max: 100_000,
            compact_batch: 10_000,
            max_batch: 1_000,
            queue_depth: 10_000,
            broadcast_capacity: 1_024,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// State shared by the handle, the writer thread and watch tasks.
pub(crate) struct Shared {
    pub(crate) db: Database,
    revision: AtomicU64,
    compacted: AtomicU64,
    commits: AtomicU64,
    /// Separate Arc so watch tasks can count without upgrading their Weak<Shared>.
    pub(crate) lag_recoveries: Arc<AtomicU64>,
    pub(crate) events: broadcast::Sender<Arc<Committed>>,
    /// Positions of the live watches, which hold back compaction.
    watchers: Mutex<Watchers>,
}

/// Live watches' positions: each cursor is the last revision its watch delivered.
#[derive(Default)]
pub(crate) struct Watchers {
    cursors: Vec<Weak<AtomicU64>>,
    /// Revision the writer is compacting through (at least the committed `compacted`): a
    /// watch registering after it must start at or after it.
    floor: Revision,
}

impl Watchers {
    /// Registers a watch that has delivered everything through `after`. The returned
    /// cursor must be advanced as the watch delivers; dropping it unregisters the watch.
    pub(crate) fn register(
        &mut self,
        after: Revision,
        compacted: Revision,
    ) -> Result<Arc<AtomicU64>, StoreError> {
        let oldest = self.floor.max(compacted);
        if after < oldest {
            return Err(StoreError::Compacted {
                requested: after + 1,
                oldest: oldest + 1,
            });
        }
        let cursor = Arc::new(AtomicU64::new(after));
        self.cursors.push(Arc::downgrade(&cursor));
        Ok(cursor)
    }

    /// The oldest position among live watches (forgetting the ended ones).
    fn oldest(&mut self) -> Option<Revision> {
        let mut oldest = None::<Revision>;
        self.cursors.retain(|c| match c.upgrade() {
            Some(c) => {
                let at = c.load(Ordering::Acquire);
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
                true
            }
            None => false,
        });
        oldest
    }
}

/// Size and revisions of a store, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes the store takes on disk (for redb, the length of its one file).
    pub size_bytes: u64,
    /// The latest committed revision.
    pub revision: Revision,
    /// Highest revision removed from the change log: watches can resume from
    /// `after >= compacted_revision`, i.e. the oldest retained revision is one more.
    pub compacted_revision: Revision,
}

struct Request {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnResponse, StoreError>>,
}

struct Inner {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has drained it; joining means
        // the file is closed (no watch holds it strongly) when the last handle drops,
        // so the same process can reopen it right away.
        self.requests = None;
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "berth-store writer thread panicked");
        }
    }
}

/// The embedded [`Store`]: one redb file, group-committed writes. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .field("revision", &self.revision())
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) `dir/berth.redb` with default options.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(StoreError::backend)?;
        let path = dir.join(&options.file_name);
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(StoreError::backend)?;
        let (revision, compacted) = init_tables(&db)?;
        let (events, _) = broadcast::channel(options.broadcast_capacity.max(1));
        let shared = Arc::new(Shared {
            db,
            revision: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            commits: AtomicU64::new(0),
            lag_recoveries: Arc::new(AtomicU64::new(0)),
            events,
            watchers: Mutex::new(Watchers {
                cursors: Vec::new(),
                floor: compacted,
            }),
        });
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let retain = options.retain_revisions.max(1);
        let retain_age = options.retain_age.filter(|a| !a.is_zero());
        let mut writer = Writer {
            shared: shared.clone(),
            revision,
            compacted,
            retain,
            retain_age,
            stamp_every: retain_age
                .map(|a| (a / 64).clamp(Duration::from_millis(1), Duration::from_secs(10)))
                .unwrap_or_default(),
            stamps: VecDeque::new(),
            watch_retain_max: options.watch_retain_max.max(retain),
            compact_batch: options.compact_batch.max(1),
            max_batch: options.max_batch.max(1),
        };
        // What the file holds already counts as written now (its age is not recorded).
        writer.stamp(Instant::now());
        let handle = std::thread::Builder::new()
            .name("berth-store-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::backend)?;
        tracing::debug!(path = %path.display(), revision, compacted, "opened berth store");
        Ok(RedbStore {
            inner: Arc::new(Inner {
                shared,
                requests: Some(tx),
                writer: Some(handle),
                path,
            }),
        })
    }

    /// Number of redb commits performed since open (each is one fsync).
    pub fn commit_count(&self) -> u64 {
        self.inner.shared.commits.load(Ordering::Acquire)
    }

    /// How often a watch fell behind the live broadcast and re-read the change log.
    pub fn watch_lag_recoveries(&self) -> u64 {
        self.inner.shared.lag_recoveries.load(Ordering::Relaxed)
    }

    /// Highest revision removed from the change log; watches must ask for `after >=` it.
    pub fn compacted_revision(&self) -> Revision {
        self.inner.shared.compacted.load(Ordering::Acquire)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Length of the database file in bytes (0 if it cannot be read).
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }
}

fn init_tables(db: &Database) -> Result<(Revision, Revision), StoreError> {
    let wtx = db.begin_write().map_err(StoreError::backend)?;
    let out = {
        wtx.open_table(KV).map_err(StoreError::backend)?;
        wtx.open_table(LOG).map_err(StoreError::backend)?;
        let meta = wtx.open_table(META).map_err(StoreError::backend)?;
        (
            meta_get(&meta, META_REVISION)?,
            meta_get(&meta, META_COMPACTED)?,
        )
    };
    wtx.commit().map_err(StoreError::backend)?;
    Ok(out)
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    Ok(meta
        .get(name)
        .map_err(StoreError::backend)?
        .map(|g| g.value())
        .unwrap_or(0))
}

impl Store for RedbStore {
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(async move {
            let queue = self.inner.requests.as_ref().ok_or(StoreError::Closed)?;
            let (reply, answer) = oneshot::channel();
            queue
                .send(Request { txn, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            // Once queued the txn runs even if this future is dropped (as with etcd).
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        // Inline, not spawn_blocking: a point read is a B-tree lookup in redb's page
        // cache (a few µs; see examples/store_bench.rs), cheaper than the hand-off.
        let result = read_get(&self.inner.shared.db, key);
        Box::pin(futures::future::ready(result))
    }

    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>> {
        let shared = self.inner.shared.clone();
        let prefix = prefix.to_owned();
        // A prefix scan is unbounded in size, so keep it off the async workers.
        Box::pin(blocking(move || read_range(&shared.db, &prefix)))
    }

    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move { watch::start(&self.inner.shared, prefix, after) })
    }

    fn revision(&self) -> Revision {
        self.inner.shared.revision.load(Ordering::Acquire)
    }

    fn stats(&self) -> Option<StoreStats> {
        // Two separate loads may straddle a commit: keep the pair consistent.
        let revision = self.revision();
        Some(StoreStats {
            size_bytes: self.file_size(),
            revision,
            compacted_revision: self.compacted_revision().min(revision),
        })
    }
}

impl Shared {
    pub(crate) fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    pub(crate) fn watchers(&self) -> MutexGuard<'_, Watchers> {
        // The guarded data stays consistent even if a holder panicked.
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` on tokio's blocking pool when inside a runtime, inline otherwise.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?,
        Err(_) => f(),
    }
}

fn read_get(db: &Database, key: &str) -> Result<Option<KeyValue>, StoreError> {
    let rtx = db.begin_read().map_err(StoreError::backend)?;
    let kv = rtx.open_table(KV).map_err(StoreError::backend)?;
    match kv.get(key).map_err(StoreError::backend)? {
        Some(v) => Ok(Some(codec::decode_kv(key, v.value())?)),
        None => Ok(None),
    }
}

fn read_range(db: &Database, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
    let rtx = db.begin_read().map_err(StoreError::backend)?;
    let meta = rtx.open_table(META).map_err(StoreError::backend)?;
    let revision = meta_get(&meta, META_REVISION)?;
    let kv = rtx.open_table(KV).map_err(StoreError::backend)?;
    let mut out = Vec::new();
    for item in kv.range(prefix..).map_err(StoreError::backend)? {
        let (k, v) = item.map_err(StoreError::backend)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push(codec::decode_kv(key, v.value())?);
    }
    Ok((out, revision))
}

/// Reads the change log after `after`, at most `max_revisions` revisions.
pub(crate) struct LogChunk {
    pub(crate) events: Vec<WatchEvent>,
    /// Every revision up to this one has been covered.
    pub(crate) through: Revision,
    /// `through` reached the snapshot's current revision.
    pub(crate) caught_up: bool,
}

pub(crate) fn read_log(
    db: &Database,
    prefix: &str,
    after: Revision,
    max_revisions: usize,
) -> Result<LogChunk, StoreError> {
    let rtx = db.begin_read().map_err(StoreError::backend)?;
    let meta = rtx.open_table(META).map_err(StoreError::backend)?;
    let current = meta_get(&meta, META_REVISION)?;
    let compacted = meta_get(&meta, META_COMPACTED)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after + 1,
            oldest: compacted + 1,
        });
    }
    let log = rtx.open_table(LOG).map_err(StoreError::backend)?;
    let mut events = Vec::new();
    let mut through = after;
    let mut seen = 0usize;
    for item in log
        .range(after.saturating_add(1)..)
        .map_err(StoreError::backend)?
    {
        let (k, v) = item.map_err(StoreError::backend)?;
        through = k.value();
        codec::decode_events(through, v.value(), prefix, &mut events)?;
        seen += 1;
        if seen >= max_revisions && through < current {
            return Ok(LogChunk {
                events,
                through,
                caught_up: false,
            });
        }
    }
    Ok(LogChunk {
        events,
        through: through.max(current),
        caught_up: true,
    })
}

struct Writer {
    shared: Arc<Shared>,
    /// Last committed revision (the writer is the only one that changes it).
    revision: Revision,
    compacted: Revision,
    retain: u64,
    retain_age: Option<Duration>,
    /// How long one stamp covers (see `stamps`).
    stamp_every: Duration,
    /// Commit times of the retained revisions, oldest first, coarsened: every revision
    /// `<= through` of a stamp was committed at or before its `at`. Empty without an age
    /// limit.
    stamps: VecDeque<Stamp>,
    watch_retain_max: u64,
    compact_batch: u64,
    max_batch: usize,
}

struct Stamp {
    /// When this stamp started covering commits.
    opened: Instant,
    /// Time of the last commit it covers.
    at: Instant,
    through: Revision,
}

/// Result of applying a batch inside one write transaction.
struct Applied {
    responses: Vec<TxnResponse>,
    events: Vec<WatchEvent>,
    revision: Revision,
    compacted: Revision,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            // Whatever queued up during the previous fsync joins this commit.
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.process(std::mem::take(&mut batch));
        }
        tracing::debug!("berth-store writer stopped");
    }

    fn process(&mut self, batch: Vec<Request>) {
        let txns: Vec<&Txn> = batch.iter().map(|r| &r.txn).collect();
        match self.apply(&txns) {
            Ok(applied) => self.publish(batch, applied),
            Err(e) if batch.len() > 1 => {
                // Nothing of the batch was committed. Retry each txn alone so one bad
                // request (or a transient failure) does not fail its neighbours.
                tracing::warn!(error = %e, size = batch.len(), "batch commit failed; retrying txns one by one");
                for req in batch {
                    self.process(vec![req]);
                }
            }
            Err(e) => {
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn publish(&mut self, batch: Vec<Request>, applied: Applied) {
        let first = self.revision + 1;
        if applied.revision != self.revision {
            self.revision = applied.revision;
            self.compacted = applied.compacted;
            self.shared.commits.fetch_add(1, Ordering::AcqRel);
            self.stamp(Instant::now());
            self.shared
                .compacted
                .store(applied.compacted, Ordering::Release);
            self.shared
                .revision
                .store(applied.revision, Ordering::Release);
            // No receivers is fine: watches re-read the log anyway.
            let _ = self.shared.events.send(Arc::new(Committed {
                first,
                last: applied.revision,
                events: applied.events,
            }));
        }
        for (req, resp) in batch.into_iter().zip(applied.responses) {
            let _ = req.reply.send(Ok(resp));
        }
    }

    /// Records that everything through `self.revision` was committed by `now`, and
    /// forgets stamps that compaction has passed or that a newer old-enough one replaces.
    fn stamp(&mut self, now: Instant) {
        let Some(age) = self.retain_age else {
            return;
        };
        match self.stamps.back_mut() {
            Some(s) if now.duration_since(s.opened) < self.stamp_every => {
                s.at = now;
                s.through = self.revision;
            }
            _ => self.stamps.push_back(Stamp {
                opened: now,
                at: now,
                through: self.revision,
            }),
        }
        while self
            .stamps
            .front()
            .is_some_and(|s| s.through <= self.compacted)
        {
            self.stamps.pop_front();
        }
        // Only the newest stamp past the age limit matters (while a watch holds it back).
        while self
            .stamps
            .get(1)
            .is_some_and(|s| now.duration_since(s.at) >= age)
        {
            self.stamps.pop_front();
        }
    }

    /// The revision to compact the change log through in a commit that ends at
    /// `revision`; `<= self.compacted` means nothing to do.
    fn compact_target(&self, revision: Revision, now: Instant) -> Revision {
        let mut target = revision.saturating_sub(self.retain);
        if let Some(age) = self.retain_age {
            for s in &self.stamps {
                if now.duration_since(s.at) < age {
                    break;
                }
                target = target.max(s.through);
            }
        }
        // The writer's own view: compacted + 1 is the oldest entry left.
        target = target.min(self.compacted.saturating_add(self.compact_batch));
        if target <= self.compacted {
            return self.compacted;
        }
        let mut watchers = self.shared.watchers();
        if let Some(oldest) = watchers.oldest() {
            // Hold back for live watches, unless they are hopelessly behind.
            let hard = revision.saturating_sub(self.watch_retain_max);
            target = target.min(oldest.max(hard));
        }
        if target > watchers.floor {
            // Under the lock: a watch registering from now on sees the new floor.
            watchers.floor = target;
        }
        target
    }

    fn apply(&self, txns: &[&Txn]) -> Result<Applied, StoreError> {
        let mut wtx = self.shared.db.begin_write().map_err(StoreError::backend)?;
        wtx.set_durability(Durability::Immediate)
            .map_err(StoreError::backend)?;
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let mut responses = Vec::with_capacity(txns.len());
        let mut events = Vec::new();
        {
            let mut kv = wtx.open_table(KV).map_err(StoreError::backend)?;
            let mut log = wtx.open_table(LOG).map_err(StoreError::backend)?;
            for txn in txns {
                let mut succeeded = true;
                for c in &txn.compares {
                    if !compare(&kv, c)? {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                let next = revision + 1;
                let start = events.len();
                for op in ops {
                    apply_op(&mut kv, op, next, &mut events)?;
                }
                // etcd: a txn that changes nothing does not consume a revision.
                if events.len() > start {
                    revision = next;
                    let entry = codec::encode_events(&events[start..])?;
                    log.insert(revision, entry.as_slice())
                        .map_err(StoreError::backend)?;
                }
                responses.push(TxnResponse {
                    succeeded,
                    revision,
                });
            }
            if revision != self.revision {
                let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
                meta.insert(META_REVISION, revision)
                    .map_err(StoreError::backend)?;
                let cutoff = self.compact_target(revision, Instant::now());
                if cutoff > compacted {
                    log.retain_in((compacted + 1)..=cutoff, |_, _| false)
                        .map_err(StoreError::backend)?;
                    meta.insert(META_COMPACTED, cutoff)
                        .map_err(StoreError::backend)?;
                    compacted = cutoff;
                }
            }
        }
        if revision == self.revision {
            // Read-only batch (all compares failed into empty branches, deletes of
            // missing keys...): nothing to make durable, skip the fsync.
            wtx.abort().map_err(StoreError::backend)?;
        } else {
            wtx.commit().map_err(StoreError::backend)?;
        }
        Ok(Applied {
            responses,
            events,
            revision,
            compacted,
        })
    }
}

type KvTable<'t> = Table<'t, &'static str, &'static [u8]>;

fn compare(kv: &KvTable<'_>, c: &Compare) -> Result<bool, StoreError> {
    let key = match c {
        Compare::ModRevision { key, .. } | Compare::Exists(key) | Compare::Absent(key) => key,
    };
    let mod_rev = match kv.get(key.as_str()).map_err(StoreError::backend)? {
        Some(v) => Some(codec::decode_kv_revs(key, v.value())?.1),
        None => None,
    };
    Ok(match c {
        Compare::ModRevision { revision, .. } => mod_rev.unwrap_or(0) == *revision,
        Compare::Exists(_) => mod_rev.is_some(),
        Compare::Absent(_) => mod_rev.is_none(),
    })
}

fn apply_op(
    kv: &mut KvTable<'_>,
    op: &Op,
    revision: Revision,
    events: &mut Vec<WatchEvent>,
) -> Result<(), StoreError> {
    match op {
        Op::Put { key, value } => {
            let create = match kv.get(key.as_str()).map_err(StoreError::backend)? {
                Some(v) => codec::decode_kv_revs(key, v.value())?.0,
                None => revision,
            };
            let encoded = codec::encode_kv(value, create, revision);
            kv.insert(key.as_str(), encoded.as_slice())
                .map_err(StoreError::backend)?;
            events.push(WatchEvent {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: create,
                    mod_revision: revision,
                },
            });
        }
        Op::Delete { key } => {
            let removed = kv
                .remove(key.as_str())
                .map_err(StoreError::backend)?
                .is_some();
            if removed {
                events.push(deleted(key.clone(), revision));
            }
        }
        Op::DeletePrefix { prefix } => {
            let mut keys = Vec::new();
            for item in kv.range(prefix.as_str()..).map_err(StoreError::backend)? {
                let (k, _) = item.map_err(StoreError::backend)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                keys.push(key.to_owned());
            }
            for key in keys {
                kv.remove(key.as_str()).map_err(StoreError::backend)?;
                events.push(deleted(key, revision));
            }
        }
    }
    Ok(())
}

fn deleted(key: String, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
        },
    }
}
