//! Crash safety with a real SIGKILL: a child process (this test binary re-run with
//! `BERTH_STORE_CRASH_DIR` set) writes keys and prints each acknowledged one; the
//! parent kills it mid-stream, reopens the store and checks every ack survived.

use berth_store::{EventKind, RedbStore, Store, StoreExt};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENV_DIR: &str = "BERTH_STORE_CRASH_DIR";
const ENV_ROUND: &str = "BERTH_STORE_CRASH_ROUND";
const WRITERS: usize = 8;

/// Child side: a no-op unless started by `kill_9_loses_no_acknowledged_write`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let round = std::env::var(ENV_ROUND).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = std::sync::Arc::new(RedbStore::open(std::path::Path::new(&dir)).unwrap());
        // Bounded so a child whose parent died cannot run forever.
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                let round = round.clone();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let key = format!("crash/{round}/{w}/{i:08}");
                        let rev = store.put(key.clone(), format!("v-{key}")).await.unwrap();
                        // println! takes the stdout lock per call, so lines never interleave.
                        println!("ACK {key} {rev}");
                        i += 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..3 {
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, dir.path())
            .env(ENV_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let parse = |line: &str, acked: &mut BTreeMap<String, u64>| {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (key, rev) = rest.split_once(' ').unwrap();
                acked.insert(key.to_owned(), rev.parse().unwrap());
                true
            } else {
                false
            }
        };
        let mut this_round = 0;
        // Kill after a varying number of acks so the kill lands at different points.
        let target = 200 + round * 173;
        for line in lines.by_ref() {
            if parse(&line.unwrap(), &mut acked) {
                this_round += 1;
                if this_round >= target {
                    break;
                }
            }
        }
        assert!(this_round >= target, "child exited early");
        child.0.kill().unwrap(); // SIGKILL on Unix
        // Lines already in the pipe were acknowledged too: they must survive as well.
        for line in lines {
            let Ok(line) = line else { break };
            parse(&line, &mut acked);
        }
        drop(child);
        verify(dir.path(), &acked);
    }
}

fn verify(dir: &std::path::Path, acked: &BTreeMap<String, u64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedbStore::open(dir).unwrap();
        let revision = store.revision();
        let max_acked = acked.values().copied().max().unwrap_or(0);
        assert!(
            revision >= max_acked,
            "revision {revision} < acked {max_acked}"
        );
        for (key, rev) in acked {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged key {key} lost"));
            assert_eq!(kv.mod_revision, *rev, "{key}");
            assert_eq!(kv.value, format!("v-{key}").into_bytes());
        }
        // Every put made a new key, so revision == number of keys, and the change log
        // holds exactly one Put per revision 1..=revision.
        let (all, at) = store.range("crash/").await.unwrap();
        assert_eq!(at, revision);
        assert_eq!(all.len() as u64, revision);
        let mut watch = store.watch("", 0).await.unwrap();
        for expected in 1..=revision {
            let e = watch.next().await.unwrap().unwrap();
            assert_eq!((e.kind, e.revision()), (EventKind::Put, expected));
        }
        eprintln!(
            "after kill -9: {} acked, revision {revision} ({} written but unacked)",
            acked.len(),
            revision as usize - acked.len()
        );
    });
}
