//! Prefix watches: history from the change log, then live events from the broadcast,
//! stitched together by revision so nothing is missed or repeated.

use crate::error::StoreError;
use crate::redb_store::{self, Shared};
use crate::types::{Revision, WatchEvent};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;

/// What the writer broadcasts after each commit: revisions `first..=last`, every event
/// in revision order (`kv.mod_revision` is each event's revision).
pub(crate) struct Committed {
    pub(crate) first: Revision,
    pub(crate) last: Revision,
    pub(crate) events: Vec<WatchEvent>,
}

/// Revisions read from the change log per read transaction while catching up.
const LOG_CHUNK: usize = 1_024;
/// Event batches buffered between the watch task and its consumer.
const STREAM_DEPTH: usize = 64;

/// A stream of watch events in revision order. Ends after yielding an error
/// (e.g. [`StoreError::Closed`], or [`StoreError::Compacted`] if it fell too far
/// behind); the caller then re-reads with [`crate::Store::range`] and watches again.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<Vec<WatchEvent>, StoreError>>,
    buf: VecDeque<WatchEvent>,
    task: Option<AbortHandle>,
    done: bool,
}

impl WatchStream {
    /// Wraps a channel of event batches, for backends that produce events themselves.
    pub fn new(rx: mpsc::Receiver<Result<Vec<WatchEvent>, StoreError>>) -> Self {
        Self {
            rx,
            buf: VecDeque::new(),
            task: None,
            done: false,
        }
    }

    /// Aborts `task` (the producer) when the stream is dropped.
    pub fn abort_on_drop(mut self, task: AbortHandle) -> Self {
        self.task = Some(task);
        self
    }

    /// Next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        futures::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchEvent, StoreError>>> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(events))) => self.buf.extend(events),
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchEvent, StoreError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("buffered", &self.buf.len())
            .field("done", &self.done)
            .finish()
    }
}

pub(crate) fn start(
    shared: &Arc<Shared>,
    prefix: String,
    after: Revision,
) -> Result<WatchStream, StoreError> {
    // Subscribe before reading history: anything committed after the history snapshot
    // is then guaranteed to arrive on the broadcast (duplicates are skipped by revision).
    let live = shared.events.subscribe();
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Backend("watch needs a tokio runtime".to_owned()))?;
    // Registered before reading history: from here on compaction waits for this watch
    // (unless it falls hopelessly behind, see `StoreOptions::watch_retain_max`).
    let cursor = shared.watchers().register(after, shared.compacted())?;
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    // Weak: an open watch must not keep the database file open after the store drops.
    let task = runtime.spawn(run(
        Arc::downgrade(shared),
        shared.lag_recoveries.clone(),
        live,
        prefix,
        Position {
            delivered: after,
            cursor,
        },
        tx,
    ));
    Ok(WatchStream::new(rx).abort_on_drop(task.abort_handle()))
}

type Sink = mpsc::Sender<Result<Vec<WatchEvent>, StoreError>>;

/// The last revision a watch delivered, mirrored into its cursor, which the writer reads
/// to hold back compaction. Dropping it (the watch task ends) unregisters the watch.
struct Position {
    delivered: Revision,
    cursor: Arc<AtomicU64>,
}

impl Position {
    fn set(&mut self, delivered: Revision) {
        self.delivered = delivered;
        self.cursor.store(delivered, Ordering::Release);
    }
}

async fn run(
    shared: Weak<Shared>,
    lag_recoveries: Arc<AtomicU64>,
    mut live: broadcast::Receiver<Arc<Committed>>,
    prefix: String,
    mut pos: Position,
    tx: Sink,
) {
    if catch_up(&shared, &prefix, &mut pos, &tx).await.is_err() {
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            msg = live.recv() => msg,
        };
        let result = match msg {
            Ok(batch) if batch.last <= pos.delivered => Ok(()),
            // A hole between what we delivered and this batch cannot happen without a
            // Lagged first, but the log is the source of truth if it ever does.
            Ok(batch) if batch.first > pos.delivered.saturating_add(1) => {
                catch_up(&shared, &prefix, &mut pos, &tx).await
            }
            Ok(batch) => {
                let events: Vec<WatchEvent> = batch
                    .events
                    .iter()
                    .filter(|e| e.kv.mod_revision > pos.delivered && e.kv.key.starts_with(&prefix))
                    .cloned()
                    .collect();
                pos.set(batch.last);
                send(&tx, events).await
            }
            // Too slow to keep up with the broadcast: re-read the gap from the log.
            Err(RecvError::Lagged(_)) => {
                lag_recoveries.fetch_add(1, Ordering::Relaxed);
                catch_up(&shared, &prefix, &mut pos, &tx).await
            }
            Err(RecvError::Closed) => {
                let _ = tx.send(Err(StoreError::Closed)).await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Delivers everything in the change log after `pos`, up to the current revision.
/// `Err` means the stream is finished (consumer gone, or an error was sent to it).
async fn catch_up(
    shared: &Weak<Shared>,
    prefix: &str,
    pos: &mut Position,
    tx: &Sink,
) -> Result<(), ()> {
    loop {
        let weak = shared.clone();
        let p = prefix.to_owned();
        let after = pos.delivered;
        let chunk = redb_store::blocking(move || {
            let shared = weak.upgrade().ok_or(StoreError::Closed)?;
            redb_store::read_log(&shared.db, &p, after, LOG_CHUNK)
        })
        .await;
        match chunk {
            Ok(chunk) => {
                pos.set(chunk.through);
                send(tx, chunk.events).await?;
                if chunk.caught_up {
                    return Ok(());
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Err(());
            }
        }
    }
}

async fn send(tx: &Sink, events: Vec<WatchEvent>) -> Result<(), ()> {
    if events.is_empty() {
        return Ok(());
    }
    tx.send(Ok(events)).await.map_err(|_| ())
}
