//! Throughput of the embedded store under concurrent writers (group commit), plus
//! read latencies. Run: `cargo run --release -p berth-store --example store_bench`.

use berth_store::{Compare, Op, RedbStore, Store, StoreExt, Txn};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const RUN_FOR: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    println!(
        "berth-store bench: each writer loops CAS txns (compare mod_revision, put 256 B) for {RUN_FOR:?}"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10}",
        "writers", "txns", "txns/s", "commits", "txn/commit", "p50 ms", "p99 ms"
    );
    for writers in [1usize, 16, 256] {
        write_bench(writers).await?;
    }
    read_bench().await?;
    Ok(())
}

async fn write_bench(writers: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir_in(std::env::temp_dir())?;
    let store = Arc::new(RedbStore::open(dir.path())?);
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            // Each writer updates its own task record, like the scheduler would.
            let key = format!("tasks/{w}");
            let mut mod_rev = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let txn = Txn::new()
                    .when(Compare::mod_revision(key.clone(), mod_rev))
                    .then(Op::put(key.clone(), vec![(i % 251) as u8; 256]));
                let r = store.txn(txn).await?;
                if !r.succeeded {
                    return Err::<_, BoxError>(format!("unexpected CAS failure on {key}").into());
                }
                mod_rev = r.revision;
                latencies.push(t.elapsed());
                i += 1;
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let txns = latencies.len() as u64;
    let commits = store.commit_count();
    println!(
        "{:>8} {:>10} {:>10.0} {:>9} {:>10.1} {:>10.2} {:>10.2}",
        writers,
        txns,
        txns as f64 / elapsed.as_secs_f64(),
        commits,
        txns as f64 / commits.max(1) as f64,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

async fn read_bench() -> Result<(), BoxError> {
    let dir = tempfile::tempdir_in(std::env::temp_dir())?;
    let store = RedbStore::open(dir.path())?;
    let mut futs = Vec::new();
    for i in 0..10_000 {
        futs.push(store.put(format!("apps/{:05}/{i}", i % 1000), vec![7u8; 256]));
    }
    futures::future::try_join_all(futs).await?;

    let n = 20_000;
    let t = Instant::now();
    for i in 0..n {
        let key = format!("apps/{:05}/{}", i % 1000, i % 10_000);
        store.get(&key).await?;
    }
    let get_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;

    let t = Instant::now();
    let rounds = 200;
    let mut seen = 0;
    for i in 0..rounds {
        seen += store
            .range(&format!("apps/{:05}/", i % 1000))
            .await?
            .0
            .len();
    }
    let small_range_us = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;

    let t = Instant::now();
    let (all, _) = store.range("apps/").await?;
    let full_range_ms = t.elapsed().as_secs_f64() * 1e3;

    println!(
        "reads (10k keys): get {get_us:.1} µs inline; range of 10 keys {small_range_us:.0} µs (spawn_blocking, {seen} kvs); range of {} keys {full_range_ms:.1} ms",
        all.len()
    );
    Ok(())
}
