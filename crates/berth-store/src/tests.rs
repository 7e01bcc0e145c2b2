//! The embedded store's own behaviour (group commit, its change log, reopening). What every
//! backend shares is in `conformance.rs`, run on redb and etcd alike.

use super::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(dir.path()).unwrap()
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch timed out")
        .expect("watch ended")
        .expect("watch error")
}

#[tokio::test]
async fn multi_key_txn_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.put("a", "1").await.unwrap();
    let before = s.revision();
    // Second compare fails: none of the success ops may apply, and no revision is used.
    let r = s
        .txn(
            Txn::new()
                .when(Compare::exists("a"))
                .when(Compare::exists("missing"))
                .then(Op::put("a", "2"))
                .then(Op::put("b", "2"))
                .then(Op::delete("a")),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, before);
    assert_eq!(s.revision(), before);
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    assert!(s.get("b").await.unwrap().is_none());
    let commits = s.commit_count();

    // All succeed together, sharing one revision.
    let r = s
        .txn(
            Txn::new()
                .when(Compare::exists("a"))
                .when(Compare::absent("b"))
                .then(Op::put("b", "2"))
                .then(Op::put("c", "3"))
                .then(Op::delete("a")),
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, before + 1);
    assert!(s.get("a").await.unwrap().is_none());
    let b = s.get("b").await.unwrap().unwrap();
    let c = s.get("c").await.unwrap().unwrap();
    assert_eq!((b.mod_revision, c.mod_revision), (before + 1, before + 1));
    assert_eq!(s.commit_count(), commits + 1);

    // A txn that changes nothing (delete of a missing key) uses no revision and no fsync.
    let r = s.delete("nope").await.unwrap();
    assert_eq!(r, before + 1);
    assert_eq!(s.commit_count(), commits + 1);
}

#[tokio::test]
async fn compacted_history_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        retain_revisions: 5,
        ..StoreOptions::default()
    };
    let s = RedbStore::open_with(dir.path(), opts).unwrap();
    for i in 0..20 {
        s.put(format!("k/{i}"), "v").await.unwrap();
    }
    assert_eq!(s.compacted_revision(), 15);
    match s.watch("k/", 3).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (4, 16));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The oldest retained revision is still available.
    let mut w = s.watch("k/", 15).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 16);
    // Data itself is never compacted.
    assert_eq!(s.range("k/").await.unwrap().0.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_txns_share_few_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir));
    let mut tasks = Vec::new();
    for t in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut futs = Vec::new();
            for i in 0..20 {
                let key = format!("task/{t}/{i}");
                let s = &s;
                futs.push(async move {
                    s.txn(
                        Txn::new()
                            .when(Compare::absent(key.clone()))
                            .then(Op::put(key, "x")),
                    )
                    .await
                })
            }
            futures::future::join_all(futs).await
        }));
    }
    let mut revisions = BTreeSet::new();
    for t in tasks {
        for r in t.await.unwrap() {
            let r = r.unwrap();
            assert!(r.succeeded);
            assert!(
                revisions.insert(r.revision),
                "duplicate revision {}",
                r.revision
            );
        }
    }
    assert_eq!(revisions.len(), 1000);
    assert_eq!(s.revision(), 1000);
    let commits = s.commit_count();
    eprintln!("1000 txns in {commits} commits");
    assert!(
        commits <= 100,
        "group commit should batch: {commits} commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_recovers_from_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        broadcast_capacity: 1,
        max_batch: 4,
        ..StoreOptions::default()
    };
    let s = Arc::new(RedbStore::open_with(dir.path(), opts).unwrap());
    let mut w = s.watch("", 0).await.unwrap();
    // Many small batches while nobody reads the watch: its channel fills and the
    // broadcast (capacity 1) lags.
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    s.put(format!("w/{t}/{i}"), "v").await.unwrap();
                }
            })
        })
        .collect();
    for h in writers {
        h.await.unwrap();
    }
    assert_eq!(s.revision(), 800);
    for rev in 1..=800 {
        assert_eq!(next_event(&mut w).await.revision(), rev);
    }
    assert!(
        s.watch_lag_recoveries() > 0,
        "test must exercise the lag path"
    );
}

#[tokio::test]
async fn reopen_keeps_data_revision_and_history() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir);
        s.put("a", "1").await.unwrap();
        s.put("b", "2").await.unwrap();
        s.delete("a").await.unwrap();
    }
    let s = open(&dir);
    assert_eq!(s.revision(), 3);
    assert!(s.get("a").await.unwrap().is_none());
    let mut w = s.watch("", 0).await.unwrap();
    let kinds: Vec<_> = [
        next_event(&mut w).await,
        next_event(&mut w).await,
        next_event(&mut w).await,
    ]
    .into_iter()
    .map(|e| (e.kind, e.revision(), e.kv.key))
    .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Put, 1, "a".to_owned()),
            (EventKind::Put, 2, "b".to_owned()),
            (EventKind::Delete, 3, "a".to_owned())
        ]
    );
    assert_eq!(s.put("c", "3").await.unwrap(), 4);
}

#[tokio::test]
async fn watch_ends_with_closed_when_store_drops() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut w = s.watch("", 0).await.unwrap();
    drop(s);
    let r = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert_eq!(r, Some(Err(StoreError::Closed)));
    assert_eq!(w.next().await, None);
    // File is released: reopening works immediately.
    open(&dir);
}

#[tokio::test]
async fn json_helpers_and_dyn_store() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct App {
        id: String,
        instances: u32,
    }
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Store> = Arc::new(open(&dir));
    let app = App {
        id: "/web".into(),
        instances: 3,
    };
    let rev = s.put_json("apps/web", &app).await.unwrap();
    let (back, mod_rev): (App, Revision) = s.get_json("apps/web").await.unwrap().unwrap();
    assert_eq!((back, mod_rev), (app, rev));
    assert!(s.get_json::<App>("apps/none").await.unwrap().is_none());
    s.put("apps/bad", "not json").await.unwrap();
    assert!(matches!(
        s.get_json::<App>("apps/bad").await,
        Err(StoreError::Codec(_))
    ));
    assert!(s.create("lock", "me").await.unwrap());
    assert!(!s.create("lock", "you").await.unwrap());
}

fn opts(retain_revisions: u64) -> StoreOptions {
    StoreOptions {
        retain_revisions,
        retain_age: None,
        ..StoreOptions::default()
    }
}

#[tokio::test]
async fn change_log_is_compacted_by_age() {
    let dir = tempfile::tempdir().unwrap();
    // Keeps every revision by count: only age compacts.
    let open = || {
        RedbStore::open_with(
            dir.path(),
            StoreOptions {
                retain_revisions: 1_000_000,
                // Long enough that ten fsync'd puts on a loaded machine stay young.
                retain_age: Some(Duration::from_secs(2)),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    };
    let s = open();
    for i in 0..10 {
        s.put(format!("k/{i}"), "v").await.unwrap();
    }
    assert_eq!(s.compacted_revision(), 0, "young entries are kept");
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    // Compaction runs with the next write.
    assert_eq!(s.put("k/x", "v").await.unwrap(), 11);
    assert_eq!(s.compacted_revision(), 10);
    let stats = s.stats().unwrap();
    assert_eq!((stats.revision, stats.compacted_revision), (11, 10));
    assert!(stats.size_bytes > 0);
    match s.watch("k/", 9).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (10, 11))
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let mut w = s.watch("k/", 10).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 11);
    // The age of what a reopened file holds is unknown: it counts from the open.
    drop(w);
    drop(s);
    let s = open();
    assert_eq!(s.compacted_revision(), 10, "compacted revision is durable");
    s.put("k/y", "v").await.unwrap();
    assert_eq!(s.compacted_revision(), 10);
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    s.put("k/z", "v").await.unwrap();
    assert_eq!(s.compacted_revision(), 12);
}

#[tokio::test]
async fn compaction_of_a_backlog_is_spread_over_commits() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RedbStore::open_with(dir.path(), opts(1_000)).unwrap();
        for i in 0..100 {
            s.put(format!("k/{i}"), "v").await.unwrap();
        }
        assert_eq!(s.compacted_revision(), 0);
    }
    // Lower limits on reopen: the 95-revision backlog goes 40 revisions per commit.
    let s = RedbStore::open_with(
        dir.path(),
        StoreOptions {
            compact_batch: 40,
            ..opts(5)
        },
    )
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        s.put("k/again", "v").await.unwrap();
        seen.push(s.compacted_revision());
    }
    assert_eq!(seen, [40, 80, 98, 99]);
    // Every revision after the compacted one is still there.
    let mut w = s.watch("k/", 99).await.unwrap();
    for rev in 100..=104 {
        assert_eq!(next_event(&mut w).await.revision(), rev);
    }
}

/// A watch that does not read: its channel fills after a few dozen revisions and the
/// broadcast (capacity 1) lags, so resuming it needs the change log from there on.
async fn stalled_watch(s: &RedbStore, writes: u64) -> WatchStream {
    let w = s.watch("k/", 0).await.unwrap();
    for i in 1..=writes {
        s.put(format!("k/{i}"), "v").await.unwrap();
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_watch_holds_back_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open_with(
        dir.path(),
        StoreOptions {
            broadcast_capacity: 1,
            ..opts(5)
        },
    )
    .unwrap();
    let mut w = stalled_watch(&s, 600).await;
    let held = s.compacted_revision();
    assert!(held < 500, "compaction must wait for the watch, got {held}");
    // Without the hold the log would keep 5 revisions and this would end in Compacted.
    for rev in 1..=600 {
        assert_eq!(next_event(&mut w).await.revision(), rev);
    }
    assert!(
        s.watch_lag_recoveries() > 0,
        "the watch must have re-read the log"
    );
    // Caught up: the log shrinks to the limit again.
    s.put("k/next", "v").await.unwrap();
    assert_eq!(s.compacted_revision(), 596);
    assert_eq!(next_event(&mut w).await.revision(), 601);
    // An ended watch holds nothing back.
    drop(w);
    for _ in 0..100 {
        s.put("k/more", "v").await.unwrap();
    }
    assert_eq!(s.compacted_revision(), 696);
    let mut w = s.watch("k/", 696).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 697);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopelessly_behind_watch_gets_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open_with(
        dir.path(),
        StoreOptions {
            broadcast_capacity: 1,
            watch_retain_max: 50,
            ..opts(5)
        },
    )
    .unwrap();
    let mut w = stalled_watch(&s, 600).await;
    assert_eq!(s.compacted_revision(), 550);
    // What it had buffered arrives in order, then the gap is reported.
    let mut expect = 1;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch timed out")
            .expect("watch ended without an error");
        match r {
            Ok(e) => {
                assert_eq!(e.revision(), expect);
                expect += 1;
            }
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (expect, 551));
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(expect < 550);
    assert_eq!(w.next().await, None);
}

/// Sizes of the store file after each round of `rounds` overwriting `keys` keys with
/// 500-byte values (one put per txn, many writers so commits group).
async fn churn_sizes(options: StoreOptions, keys: u64, rounds: usize) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(RedbStore::open_with(dir.path(), options).unwrap());
    let mut sizes = Vec::new();
    for round in 0..rounds {
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    for k in (w..keys).step_by(32) {
                        let value = vec![b'a' + ((k as usize + round) % 26) as u8; 500];
                        s.put(format!("churn/{k:06}"), value).await.unwrap();
                    }
                })
            })
            .collect();
        for h in writers {
            h.await.unwrap();
        }
        sizes.push(s.stats().unwrap().size_bytes);
    }
    assert_eq!(s.revision(), keys * rounds as u64);
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_size_levels_off_under_churn() {
    const KEYS: u64 = 2_000;
    const ROUNDS: usize = 8;
    let bounded = churn_sizes(opts(KEYS), KEYS, ROUNDS).await;
    // The same churn with the retention the store had before (100,000 revisions, no age
    // limit): the log, hence the file, keeps growing for 50 rounds.
    let unbounded = churn_sizes(opts(100_000), KEYS, ROUNDS).await;
    eprintln!("file sizes per round: bounded {bounded:?}, old retention {unbounded:?}");
    let half = ROUNDS / 2 - 1;
    let last = ROUNDS - 1;
    assert!(
        bounded[last] as f64 <= bounded[half] as f64 * 1.25,
        "file keeps growing under churn: {bounded:?}"
    );
    assert!(
        unbounded[last] as f64 >= unbounded[half] as f64 * 1.5,
        "the old retention should have grown the file (is the test churning enough?): {unbounded:?}"
    );
    assert!(bounded[last] * 2 < unbounded[last]);
}
