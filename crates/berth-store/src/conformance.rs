//! The semantics every [`Store`] backend must share, run against the embedded store and a
//! real etcd (started by the test from Debian's `etcd-server`). Revisions are compared
//! relative to the store's own starting point: a fresh etcd starts at revision 1, redb at 0.

use super::*;
use crate::testkit::{EtcdProcess, free_port};
use std::time::Duration;

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch timed out")
        .expect("watch ended")
        .expect("watch error")
}

async fn cas_exactly_one_wins(s: &dyn Store) {
    let rev = s.put("job/leader", "none").await.unwrap();
    let contender = |name: &'static str| {
        Txn::new()
            .when(Compare::mod_revision("job/leader", rev))
            .then(Op::put("job/leader", name))
            .otherwise(Op::put(format!("lost/{name}"), "1"))
    };
    let (a, b) = tokio::join!(s.txn(contender("a")), s.txn(contender("b")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.succeeded ^ b.succeeded, "exactly one wins: {a:?} {b:?}");
    let (winner, loser) = if a.succeeded { ("a", "b") } else { ("b", "a") };
    assert_eq!(
        s.get("job/leader").await.unwrap().unwrap().value,
        winner.as_bytes()
    );
    assert!(s.get(&format!("lost/{loser}")).await.unwrap().is_some());
    assert!(s.get(&format!("lost/{winner}")).await.unwrap().is_none());
    assert_ne!(a.revision, b.revision);
    assert_eq!(s.revision(), rev + 2);
    // ModRevision 0 means "absent".
    let fresh = |v: &'static str| {
        Txn::new()
            .when(Compare::mod_revision("fresh", 0))
            .then(Op::put("fresh", v))
    };
    assert!(s.txn(fresh("x")).await.unwrap().succeeded);
    assert!(!s.txn(fresh("y")).await.unwrap().succeeded);
    assert!(s.create("made", "1").await.unwrap());
    assert!(!s.create("made", "2").await.unwrap());
}

async fn multi_key_txn_is_all_or_nothing(s: &dyn Store) {
    s.put("a", "1").await.unwrap();
    let before = s.revision();
    let r = s
        .txn(
            Txn::new()
                .when(Compare::exists("a"))
                .when(Compare::exists("missing"))
                .then(Op::put("a", "2"))
                .then(Op::put("b", "2")),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!((r.revision, s.revision()), (before, before));
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    assert!(s.get("b").await.unwrap().is_none());
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
    // Deleting a missing key changes nothing and uses no revision.
    assert_eq!(s.delete("nope").await.unwrap(), before + 1);
}

async fn prefix_ranges_and_revisions(s: &dyn Store) {
    let mut last = s.revision();
    for k in ["app/b", "app/a", "app/c/1", "apple", "zz", "ap"] {
        let r = s.put(k, k).await.unwrap();
        assert!(r > last, "revisions increase");
        last = r;
    }
    let (kvs, at) = s.range("app/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["app/a", "app/b", "app/c/1"]);
    assert_eq!(at, s.revision());
    assert_eq!(s.range("").await.unwrap().0.len(), 6);
    let first = s.get("app/a").await.unwrap().unwrap();
    let r = s.put("app/a", "v2").await.unwrap();
    let second = s.get("app/a").await.unwrap().unwrap();
    assert_eq!(second.create_revision, first.create_revision);
    assert_eq!(second.mod_revision, r);
    let r = s
        .txn(Txn::new().then(Op::delete_prefix("app/")))
        .await
        .unwrap();
    assert_eq!(r.revision, s.revision());
    assert!(s.range("app/").await.unwrap().0.is_empty());
    let (rest, _) = s.range("").await.unwrap();
    let keys: Vec<_> = rest.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["ap", "apple", "zz"]);
    let r = s.put("app/a", "v3").await.unwrap();
    assert_eq!(s.get("app/a").await.unwrap().unwrap().create_revision, r);
}

async fn watch_resumes_then_goes_live(s: &dyn Store) {
    let base = s.revision();
    for i in 1..=10u64 {
        assert_eq!(
            s.put(format!("k/{i:02}"), i.to_string()).await.unwrap(),
            base + i
        );
    }
    s.put("other/x", "not watched").await.unwrap();
    let mut w = s.watch("k/", base + 5).await.unwrap();
    for i in 6..=10 {
        let e = next_event(&mut w).await;
        assert_eq!((e.kind, e.revision()), (EventKind::Put, base + i));
        assert_eq!(e.kv.key, format!("k/{i:02}"));
    }
    s.put("k/live", "x").await.unwrap();
    s.delete("k/01").await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.kv.key.as_str()),
        (EventKind::Put, base + 12, "k/live")
    );
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.kv.key.as_str()),
        (EventKind::Delete, base + 13, "k/01")
    );
    assert!(e.kv.value.is_empty());
    assert_eq!(e.kv.create_revision, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), w.next())
            .await
            .is_err(),
        "nothing else is pending"
    );
    // From a range's revision: no gap.
    let (_, at) = s.range("k/").await.unwrap();
    s.put("k/after", "b").await.unwrap();
    let mut w = s.watch("k/", at).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.key, "k/after");
}

/// What the server's persister sends: one unconditional batch of many ops, some on the
/// same key, some under a prefix deleted in the same batch. The end state is the state of
/// applying them in order; ranges page through all of it.
async fn large_batches_apply_in_order(s: &dyn Store) {
    let value = "v".repeat(300);
    let mut ops: Vec<Op> = (0..1_000)
        .map(|i| Op::put(format!("big/{i:04}"), value.clone()))
        .collect();
    ops.push(Op::put("big/0001", "changed"));
    ops.push(Op::delete("big/0002"));
    ops.push(Op::put("gone/a", "1"));
    ops.push(Op::delete_prefix("gone/"));
    ops.push(Op::put("gone/b", "2"));
    let r = s
        .txn(Txn {
            compares: vec![],
            success: ops,
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, s.revision());
    let (kvs, _) = s.range("big/").await.unwrap();
    assert_eq!(kvs.len(), 999);
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert_eq!(s.get("big/0001").await.unwrap().unwrap().value, b"changed");
    assert!(s.get("big/0002").await.unwrap().is_none());
    let (gone, _) = s.range("gone/").await.unwrap();
    let keys: Vec<_> = gone.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["gone/b"]);
}

/// A batch of whole records without prefix deletes (the persister's usual batch): keys
/// written several times end with their last op, whatever the backend does with the parts.
async fn large_batches_of_records(s: &dyn Store) {
    let mut ops: Vec<Op> = (0..600)
        .map(|i| Op::put(format!("rec/{i:04}"), "first"))
        .collect();
    ops.extend(
        (0..600)
            .step_by(2)
            .map(|i| Op::put(format!("rec/{i:04}"), "second")),
    );
    ops.extend(
        (0..600)
            .step_by(3)
            .map(|i| Op::delete(format!("rec/{i:04}"))),
    );
    ops.push(Op::put("rec/0000", "last"));
    let r = s
        .txn(Txn {
            compares: vec![Compare::absent("fence/none")],
            success: ops,
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(r.succeeded);
    let (kvs, _) = s.range("rec/").await.unwrap();
    let got: std::collections::BTreeMap<String, Vec<u8>> =
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    for i in 0..600 {
        let key = format!("rec/{i:04}");
        let want: Option<&[u8]> = if i == 0 {
            Some(b"last")
        } else if i % 3 == 0 {
            None
        } else if i % 2 == 0 {
            Some(b"second")
        } else {
            Some(b"first")
        };
        assert_eq!(got.get(&key).map(Vec::as_slice), want, "{key}");
    }
}

async fn json_helpers(s: &dyn Store) {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct App {
        id: String,
        instances: u32,
    }
    let app = App {
        id: "/web".into(),
        instances: 3,
    };
    let rev = s.put_json("apps/web", &app).await.unwrap();
    let (back, at): (App, _) = s.get_json("apps/web").await.unwrap().unwrap();
    assert_eq!((back, at), (app, rev));
    assert!(s.get_json::<App>("apps/none").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_has_the_shared_semantics() {
    let dir = tempfile::tempdir().unwrap();
    // One store per group of checks: each expects an empty store.
    for check in 0..CHECKS {
        let sub = dir.path().join(check.to_string());
        let s = RedbStore::open(&sub).unwrap();
        run_one(&s, check).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_has_the_shared_semantics() {
    for check in 0..CHECKS {
        let Some(etcd) = EtcdProcess::start("etcd_has_the_shared_semantics").await else {
            return;
        };
        let s = etcd.store().await;
        run_one(&s, check).await;
    }
}

const CHECKS: usize = 7;

async fn run_one(s: &dyn Store, check: usize) {
    match check {
        0 => cas_exactly_one_wins(s).await,
        1 => multi_key_txn_is_all_or_nothing(s).await,
        2 => prefix_ranges_and_revisions(s).await,
        3 => watch_resumes_then_goes_live(s).await,
        4 => large_batches_apply_in_order(s).await,
        5 => large_batches_of_records(s).await,
        _ => json_helpers(s).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_ends_old_watches_and_keeps_data() {
    let Some(etcd) = EtcdProcess::start("etcd_compaction_ends_old_watches_and_keeps_data").await
    else {
        return;
    };
    let mut o = etcd.options();
    o.retain_revisions = 5;
    let s = EtcdStore::connect(o).await.unwrap();
    let base = s.revision();
    for i in 0..20 {
        s.put(format!("k/{i}"), "v").await.unwrap();
    }
    let target = s.compact_once().await.unwrap().expect("compacted");
    assert_eq!(target, base + 15);
    assert_eq!(s.stats().unwrap().compacted_revision, target);
    match s.watch("k/", base + 2).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (base + 3, target));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // From the oldest kept revision on, history is there.
    let mut w = s.watch("k/", target).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), target + 1);
    assert_eq!(s.range("k/").await.unwrap().0.len(), 20);
    // Nothing more to do until more is written.
    assert_eq!(s.compact_once().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_what_it_cannot_do_atomically() {
    let Some(etcd) = EtcdProcess::start("etcd_refuses_what_it_cannot_do_atomically").await else {
        return;
    };
    let s = etcd.store().await;
    let before = s.revision();
    // The compare looks at a key the ops write: splitting would change its meaning. (A
    // compare on a key no op writes only guards, and is repeated on every part.)
    let ops: Vec<Op> = (0..200).map(|i| Op::put(format!("c/{i}"), "v")).collect();
    let r = s
        .txn(Txn {
            compares: vec![Compare::absent("c/7")],
            success: ops,
            failure: vec![],
        })
        .await;
    assert!(
        matches!(r, Err(StoreError::Invalid(ref m)) if m.contains("atomically")),
        "{r:?}"
    );
    assert_eq!(s.revision(), before, "nothing was written");
    assert!(s.range("c/").await.unwrap().0.is_empty());
    let r = s.put("huge", vec![b'x'; 2 * 1024 * 1024]).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}

#[tokio::test]
async fn etcd_that_nobody_answers_is_a_clear_error() {
    let mut o = EtcdOptions::new(vec![format!("http://127.0.0.1:{}", free_port())]);
    o.connect_timeout = Duration::from_millis(300);
    o.request_timeout = Duration::from_millis(500);
    let e = EtcdStore::connect(o)
        .await
        .expect_err("nothing listens there");
    assert!(e.to_string().contains("etcd"), "{e}");
}
