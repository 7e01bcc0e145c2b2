//! Placement throughput and quality benchmark.
//!
//! `cargo run --release -p berth-scheduler --example sched_bench`
//!
//! 1. 10,000 nodes in 40 racks (32 cpus, 128,000 mem), 1,000 apps x 100 tasks with a mix of
//!    constraints: placements/s and per-placement latency.
//! 2. Packing quality on a 1,000-node subset: the default bounded candidate set against
//!    exhaustive scoring (every feasible node).

use berth_core::Constraint;
use berth_core::node::{NodeResources, PortRange};
use berth_scheduler::{CandidateLimit, PlacementRequest, SchedNode, Scheduler, Strategy};
use std::collections::BTreeMap;
use std::time::Instant;

const RACKS: usize = 40;

fn nodes(n: usize) -> Vec<SchedNode> {
    (0..n)
        .map(|i| SchedNode {
            id: format!("node-{i:05}"),
            hostname: format!("host-{i:05}.dc1"),
            attributes: BTreeMap::from([("rack".to_string(), format!("rack-{:02}", i % RACKS))]),
            allocatable: NodeResources::new(32.0, 128_000.0, 1_000_000.0),
            port_ranges: vec![PortRange {
                begin: 31000,
                end: 32000,
            }],
            drivers: vec!["docker".into(), "exec".into()],
            schedulable: true,
            cores: 32,
        })
        .collect()
}

fn con(parts: &[&str]) -> Constraint {
    let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    match Constraint::parse(&parts) {
        Ok(c) => c,
        Err(e) => panic!("bad constraint {parts:?}: {e}"),
    }
}

/// Deterministic app mix: sizes, ports and one of five constraint shapes.
fn app(i: usize) -> PlacementRequest {
    const CPUS: [f64; 6] = [0.25, 0.5, 1.0, 1.0, 2.0, 4.0];
    const MEM: [f64; 7] = [256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 1024.0];
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let mut r = PlacementRequest::new(
        format!("/bench/app-{i:04}"),
        NodeResources::new(CPUS[h as usize % 6], MEM[(h >> 8) as usize % 7], 100.0),
    );
    r.driver = "docker".into();
    if (h >> 16).is_multiple_of(2) {
        r.ports = vec![0];
    }
    r.constraints = match i % 5 {
        0 => vec![],
        1 => vec![con(&["hostname", "UNIQUE"])],
        2 => vec![con(&["rack", "GROUP_BY"])],
        3 => vec![con(&["rack", "MAX_PER", "5"])],
        _ => vec![
            con(&["rack", "LIKE", "rack-(0[0-9]|1[0-9])"]),
            con(&["hostname", "MAX_PER", "2"]),
        ],
    };
    if i % 10 == 9 {
        r.strategy = Strategy::Spread;
    }
    r
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Util {
    nodes_used: usize,
    cpu_cluster: f64,
    mem_cluster: f64,
    cpu_used_nodes: f64,
}

fn utilisation(s: &Scheduler, ns: &[SchedNode]) -> Util {
    let (mut used, mut cpu, mut mem, mut cpu_on_used) = (0, 0.0, 0.0, 0.0);
    for n in ns {
        if let Some(u) = s.node_usage(&n.id) {
            cpu += u.cpus;
            mem += u.mem;
            if u.tasks > 0 {
                used += 1;
                cpu_on_used += u.cpus / n.allocatable.cpus;
            }
        }
    }
    let total_cpu: f64 = ns.iter().map(|n| n.allocatable.cpus).sum();
    let total_mem: f64 = ns.iter().map(|n| n.allocatable.mem).sum();
    Util {
        nodes_used: used,
        cpu_cluster: cpu / total_cpu,
        mem_cluster: mem / total_mem,
        cpu_used_nodes: if used > 0 {
            cpu_on_used / used as f64
        } else {
            0.0
        },
    }
}

fn throughput() {
    let ns = nodes(10_000);
    let mut s = Scheduler::new(7);
    s.reserve(10_000, 110_000);
    let t0 = Instant::now();
    for n in &ns {
        s.upsert_node(n.clone());
    }
    println!(
        "loaded {} nodes in {:.1} ms",
        ns.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut lat = Vec::with_capacity(100_000);
    let mut failed = 0usize;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let start = Instant::now();
    for a in 0..1000 {
        let r = app(a);
        for t in 0..100 {
            let id = format!("app-{a:04}.{t:03}");
            let t1 = Instant::now();
            let res = s.place(&id, &r);
            lat.push(t1.elapsed().as_secs_f64() * 1e6);
            if let Err(u) = res {
                failed += 1;
                *failures.entry(u.summary()).or_default() += 1;
            }
        }
    }
    let total = start.elapsed().as_secs_f64();
    let raw = lat.clone();
    lat.sort_by(f64::total_cmp);
    let u = utilisation(&s, &ns);
    println!(
        "placed {} tasks ({} unplaced) on 10,000 nodes in {:.3} s: {:.0} placements/s",
        lat.len() - failed,
        failed,
        total,
        lat.len() as f64 / total
    );
    println!(
        "latency per placement: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0)
    );
    println!(
        "utilisation: cluster cpu {:.1}%, mem {:.1}%; {} nodes in use (cpu {:.1}% on those)",
        u.cpu_cluster * 100.0,
        u.mem_cluster * 100.0,
        u.nodes_used,
        u.cpu_used_nodes * 100.0
    );
    if std::env::var("BENCH_DETAIL").is_ok() {
        let mut by: BTreeMap<usize, (f64, f64, usize)> = BTreeMap::new();
        for (i, &l) in raw.iter().enumerate() {
            let kind = (i / 100) % 5 + if (i / 100) % 10 == 9 { 10 } else { 0 };
            let e = by.entry(kind).or_default();
            e.0 += l;
            e.1 = e.1.max(l);
            e.2 += 1;
        }
        for (k, (sum, max, n)) in by {
            let name = match k {
                0 => "no constraint",
                1 => "hostname UNIQUE",
                2 => "rack GROUP_BY",
                3 => "rack MAX_PER 5",
                4 => "rack LIKE + hostname MAX_PER 2",
                _ => "same, Spread",
            };
            println!(
                "  {name:<31} mean {:.1} us, max {:.1} us",
                sum / n as f64,
                max
            );
        }
        let mut slow: Vec<(usize, f64)> = raw.iter().copied().enumerate().collect();
        slow.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("  slowest: {:?}", &slow[..20]);
    }
    for (k, v) in failures.iter().take(5) {
        println!("  unplaced x{v}: {k}");
    }
    // Failure path: nothing fits, so every node is visited and reasons are counted.
    let mut big = app(0);
    big.resources.mem = 200_000.0;
    let mut flat = Vec::with_capacity(1000);
    for i in 0..1000 {
        let t1 = Instant::now();
        let res = s.place(&format!("big-{i}"), &big);
        flat.push(t1.elapsed().as_secs_f64() * 1e6);
        if i == 0
            && let Err(u) = res
        {
            println!("unplaced example: {}", u.summary());
        }
    }
    flat.sort_by(f64::total_cmp);
    println!(
        "unplaceable request (full scan of 10,000 nodes): p50 {:.1} us, p99 {:.1} us",
        pct(&flat, 0.5),
        pct(&flat, 0.99)
    );
    // Churn: remove and re-place a slice of tasks (the steady-state path).
    let t2 = Instant::now();
    let mut n = 0;
    for a in (0..1000).step_by(10) {
        let r = app(a);
        for t in 0..100 {
            let id = format!("app-{a:04}.{t:03}");
            s.remove_task(&id);
            let _ = s.place(&id, &r);
            n += 1;
        }
    }
    let dt = t2.elapsed().as_secs_f64();
    println!(
        "churn: {n} remove+place pairs in {:.3} s ({:.0} pairs/s)",
        dt,
        n as f64 / dt
    );
}

/// Places the app mix on `n` nodes until 200 placements failed; reports how full it got.
fn fill(limit: CandidateLimit, n: usize, label: &str) {
    let ns = nodes(n);
    let mut s = Scheduler::new(11);
    s.set_candidate_limit(limit);
    for node in &ns {
        s.upsert_node(node.clone());
    }
    // Fixed load first: 100 apps x 100 tasks (~1/10 of the large run per node).
    let t0 = Instant::now();
    let mut placed = 0;
    for a in 0..100 {
        let r = app(a);
        for t in 0..100 {
            if s.place(&format!("a{a}.{t}"), &r).is_ok() {
                placed += 1;
            }
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    let u = utilisation(&s, &ns);
    println!(
        "  {label:<11} fixed load: {placed} placed, {} nodes in use, cpu {:.1}% on those, {:.0} placements/s",
        u.nodes_used,
        u.cpu_used_nodes * 100.0,
        placed as f64 / dt
    );
    // Then keep going until the cluster is full.
    let mut failed = 0;
    let mut a = 100;
    while failed < 200 {
        let r = app(a);
        for t in 0..100 {
            match s.place(&format!("a{a}.{t}"), &r) {
                Ok(_) => placed += 1,
                Err(_) => {
                    failed += 1;
                    break; // move on to the next app, as a deployment would stall
                }
            }
        }
        a += 1;
    }
    let u = utilisation(&s, &ns);
    println!(
        "  {label:<11} fill to full: {placed} placed, cluster cpu {:.1}%, mem {:.1}%",
        u.cpu_cluster * 100.0,
        u.mem_cluster * 100.0
    );
}

fn main() {
    throughput();
    if std::env::var("BENCH_SKIP_QUALITY").is_ok() {
        return;
    }
    println!("packing quality on 1,000 nodes (bounded = default candidate limit):");
    fill(CandidateLimit::Auto, 1000, "bounded");
    fill(CandidateLimit::Exhaustive, 1000, "exhaustive");
}
