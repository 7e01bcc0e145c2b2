//! File size of the embedded store under steady churn: writers keep overwriting the same
//! keys, and every few seconds the bench prints the revision, the compacted revision and
//! the size of the redb file, which must level off once the change log is at its limits.
//!
//! ```text
//! cargo run --release -p berth-store --example churn_bench -- \
//!     [--secs 120] [--every 10] [--keys 5000] [--value-bytes 500] [--writers 64] \
//!     [--ops 1] [--retain 10000] [--age-secs 600] [--dir PATH]
//! ```
//!
//! `--ops` puts per txn (one revision each; Berth's server writes coalesced batches, so its
//! revisions are large). `--age-secs 0` disables the age limit; `--retain 100000 --age-secs 0` is the retention
//! Berth had before the change log was bounded by age.

use berth_store::{Op, RedbStore, Store, StoreOptions, Txn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    secs: u64,
    every: u64,
    keys: u64,
    value_bytes: usize,
    writers: u64,
    ops: u64,
    retain: u64,
    age_secs: u64,
    dir: Option<std::path::PathBuf>,
}

fn parse() -> Result<Args, BoxError> {
    let mut a = Args {
        secs: 120,
        every: 10,
        keys: 5_000,
        value_bytes: 500,
        writers: 64,
        ops: 1,
        retain: StoreOptions::default().retain_revisions,
        age_secs: StoreOptions::default()
            .retain_age
            .map_or(0, |d| d.as_secs()),
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--secs" => a.secs = value()?.parse()?,
            "--every" => a.every = value()?.parse()?,
            "--keys" => a.keys = value()?.parse()?,
            "--value-bytes" => a.value_bytes = value()?.parse()?,
            "--writers" => a.writers = value()?.parse()?,
            "--ops" => a.ops = value()?.parse()?,
            "--retain" => a.retain = value()?.parse()?,
            "--age-secs" => a.age_secs = value()?.parse()?,
            "--dir" => a.dir = Some(value()?.into()),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let args = parse()?;
    let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let options = StoreOptions {
        retain_revisions: args.retain,
        retain_age: (args.age_secs > 0).then(|| Duration::from_secs(args.age_secs)),
        ..StoreOptions::default()
    };
    println!(
        "churn: {} writers overwrite {} keys with {} B values, {} per txn, for {} s; retain {} revisions, age {}",
        args.writers,
        args.keys,
        args.value_bytes,
        args.ops,
        args.secs,
        options.retain_revisions,
        options
            .retain_age
            .map_or("unlimited".to_owned(), |d| format!("{} s", d.as_secs()))
    );
    let store = Arc::new(RedbStore::open_with(tmp.path(), options)?);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.secs);
    let next_key = Arc::new(AtomicU64::new(0));
    let puts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let store = store.clone();
        let next_key = next_key.clone();
        let puts = puts.clone();
        let (keys, value_bytes, ops) = (args.keys.max(1), args.value_bytes, args.ops.max(1));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let first = next_key.fetch_add(ops, Ordering::Relaxed);
                let mut txn = Txn::new();
                for i in first..first + ops {
                    let value = vec![b'a' + (i % 26) as u8; value_bytes];
                    txn = txn.then(Op::put(format!("churn/{:08}", i % keys), value));
                }
                store.txn(txn).await?;
                puts.fetch_add(ops, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    println!(
        "{:>6} {:>11} {:>11} {:>10} {:>9}",
        "secs", "revision", "compacted", "file MB", "puts/s"
    );
    let mut last = (0u64, start);
    let every = Duration::from_secs(args.every.max(1));
    let mut tick = start;
    while Instant::now() < deadline {
        tick += every;
        tokio::time::sleep_until(tick.min(deadline).into()).await;
        let stats = store.stats().unwrap_or_default();
        let now = Instant::now();
        let done = puts.load(Ordering::Relaxed);
        let rate = (done - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (done, now);
        println!(
            "{:>6.0} {:>11} {:>11} {:>10.1} {:>9.0}",
            now.duration_since(start).as_secs_f64(),
            stats.revision,
            stats.compacted_revision,
            stats.size_bytes as f64 / 1e6,
            rate
        );
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
