use super::Strategy;
use super::*;
use berth_core::node::{NodeResources, PortRange};
use proptest::prelude::{
    ProptestConfig, Strategy as PropStrategy, prop_assert_eq, prop_oneof, proptest,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

fn node(id: &str, attrs: &[(&str, &str)], cpus: f64, mem: f64) -> SchedNode {
    SchedNode {
        id: id.to_string(),
        hostname: format!("{id}.example"),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        allocatable: NodeResources::new(cpus, mem, 1000.0),
        port_ranges: vec![PortRange {
            begin: 31000,
            end: 31009,
        }],
        drivers: vec!["exec".into(), "docker".into()],
        schedulable: true,
        cores: cpus as u32,
    }
}

fn con(parts: &[&str]) -> Constraint {
    Constraint::parse(&parts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn req(app: &str, cpus: f64, mem: f64) -> PlacementRequest {
    PlacementRequest::new(app, NodeResources::new(cpus, mem, 0.0))
}

fn with(mut r: PlacementRequest, cs: &[&[&str]]) -> PlacementRequest {
    r.constraints = cs.iter().map(|c| con(c)).collect();
    r
}

/// Three racks a, b, c with two nodes each: a1 a2 b1 b2 c1 c2.
fn racks(s: &mut Scheduler) {
    for r in ["a", "b", "c"] {
        for i in 1..=2 {
            s.upsert_node(node(&format!("{r}{i}"), &[("rack", r)], 8.0, 8000.0));
        }
    }
}

fn rack_of(p: &Placement) -> char {
    p.node_id.chars().next().unwrap()
}

fn place_n(s: &mut Scheduler, prefix: &str, n: usize, r: &PlacementRequest) -> Vec<Placement> {
    (0..n)
        .map(|i| s.place(&format!("{prefix}-{i}"), r).unwrap())
        .collect()
}

#[test]
fn unique_hostname_one_per_node_then_unplaced_with_reason() {
    let mut s = Scheduler::new(1);
    racks(&mut s);
    let r = with(req("/app", 0.1, 10.0), &[&["hostname", "UNIQUE"]]);
    let ps = place_n(&mut s, "t", 6, &r);
    let hosts: BTreeSet<_> = ps.iter().map(|p| p.host.clone()).collect();
    assert_eq!(hosts.len(), 6);
    let u = s.place("t-6", &r).unwrap_err();
    assert_eq!(u.nodes_total, 6);
    assert_eq!(u.reasons.get("constraint hostname:UNIQUE"), Some(&6));
    assert_eq!(
        u.summary(),
        "no node fits (6 nodes): 6 constraint hostname:UNIQUE"
    );
    // Another app is not affected.
    assert!(
        s.place(
            "other",
            &with(req("/other", 0.1, 10.0), &[&["hostname", "UNIQUE"]])
        )
        .is_ok()
    );
}

#[test]
fn unique_attribute_one_per_rack_and_missing_attribute_fails() {
    let mut s = Scheduler::new(2);
    racks(&mut s);
    s.upsert_node(node("norack", &[], 8.0, 8000.0));
    let r = with(req("/app", 0.1, 10.0), &[&["rack", "UNIQUE"]]);
    let ps = place_n(&mut s, "t", 3, &r);
    let rs: BTreeSet<_> = ps.iter().map(rack_of).collect();
    assert_eq!(rs.len(), 3);
    assert!(ps.iter().all(|p| p.node_id != "norack"));
    let u = s.place("t-3", &r).unwrap_err();
    assert_eq!(u.reasons.get("constraint rack:UNIQUE"), Some(&7));
}

#[test]
fn cluster_with_value_and_without() {
    let mut s = Scheduler::new(3);
    racks(&mut s);
    let r = with(req("/a", 0.1, 10.0), &[&["rack", "CLUSTER", "b"]]);
    for p in place_n(&mut s, "a", 5, &r) {
        assert_eq!(rack_of(&p), 'b');
    }
    // Without a value: the first task is free, the rest follow it.
    let r = with(req("/b", 0.1, 10.0), &[&["rack", "CLUSTER"]]);
    let ps = place_n(&mut s, "b", 6, &r);
    let first = rack_of(&ps[0]);
    assert!(ps.iter().all(|p| rack_of(p) == first));
    let u = s
        .place(
            "x",
            &with(req("/c", 0.1, 10.0), &[&["rack", "CLUSTER", "zz"]]),
        )
        .unwrap_err();
    assert_eq!(u.reasons.get("constraint rack:CLUSTER:zz"), Some(&6));
}

#[test]
fn group_by_spreads_evenly() {
    let mut s = Scheduler::new(4);
    racks(&mut s);
    let r = with(req("/app", 0.1, 10.0), &[&["rack", "GROUP_BY"]]);
    let ps = place_n(&mut s, "t", 9, &r);
    let mut per: BTreeMap<char, usize> = BTreeMap::new();
    for (i, p) in ps.iter().enumerate() {
        *per.entry(rack_of(p)).or_default() += 1;
        // After every placement the spread is within one.
        let max = per.values().max().copied().unwrap_or(0);
        let min = ['a', 'b', 'c']
            .iter()
            .map(|r| per.get(r).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        assert!(max - min <= 1, "after {i}: {per:?}");
    }
    assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
}

#[test]
fn group_by_with_full_rack_goes_to_least_loaded_feasible_rack() {
    let mut s = Scheduler::new(5);
    for r in ["a", "b", "c"] {
        s.upsert_node(node(&format!("{r}1"), &[("rack", r)], 8.0, 8000.0));
    }
    // Rack a can hold a single task of this size.
    s.upsert_node(node("a1", &[("rack", "a")], 1.0, 8000.0));
    let r = with(req("/app", 1.0, 10.0), &[&["rack", "GROUP_BY", "3"]]);
    let ps = place_n(&mut s, "t", 7, &r);
    let count = |c: char| ps.iter().filter(|p| rack_of(p) == c).count();
    assert_eq!(count('a'), 1);
    assert_eq!(count('b'), 3);
    assert_eq!(count('c'), 3);
}

#[test]
fn like_and_unlike_are_full_matches() {
    let mut s = Scheduler::new(6);
    s.upsert_node(node("n1", &[("rack", "r1")], 8.0, 8000.0));
    s.upsert_node(node("n10", &[("rack", "r10")], 8.0, 8000.0));
    s.upsert_node(node("none", &[], 8.0, 8000.0));
    let like = with(req("/a", 0.1, 10.0), &[&["rack", "LIKE", "r1"]]);
    for p in place_n(&mut s, "l", 5, &like) {
        assert_eq!(p.node_id, "n1");
    }
    let unlike = with(req("/b", 0.1, 10.0), &[&["rack", "UNLIKE", "r1"]]);
    let nodes: BTreeSet<_> = place_n(&mut s, "u", 20, &unlike)
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    // UNLIKE passes a node lacking the attribute; LIKE does not.
    assert!(!nodes.contains("n1"));
    let like_none = with(req("/c", 0.1, 10.0), &[&["rack", "LIKE", "r.*"]]);
    for p in place_n(&mut s, "ln", 10, &like_none) {
        assert_ne!(p.node_id, "none");
    }
    let u = s
        .place(
            "x",
            &with(req("/d", 0.1, 10.0), &[&["rack", "LIKE", "q.*"]]),
        )
        .unwrap_err();
    assert_eq!(u.reasons.get("constraint rack:LIKE:q.*"), Some(&3));
}

#[test]
fn unlike_can_reach_attributeless_node() {
    let mut s = Scheduler::new(7);
    s.upsert_node(node("n1", &[("rack", "r1")], 8.0, 8000.0));
    s.upsert_node(node("none", &[], 8.0, 8000.0));
    let p = s
        .place(
            "x",
            &with(req("/a", 0.1, 10.0), &[&["rack", "UNLIKE", "r1"]]),
        )
        .unwrap();
    assert_eq!(p.node_id, "none");
}

#[test]
fn max_per_and_is() {
    let mut s = Scheduler::new(8);
    racks(&mut s);
    let r = with(req("/app", 0.1, 10.0), &[&["rack", "MAX_PER", "2"]]);
    let ps = place_n(&mut s, "t", 6, &r);
    for rk in ['a', 'b', 'c'] {
        assert_eq!(ps.iter().filter(|p| rack_of(p) == rk).count(), 2);
    }
    let u = s.place("t-6", &r).unwrap_err();
    assert_eq!(u.reasons.get("constraint rack:MAX_PER:2"), Some(&6));

    let is = with(req("/is", 0.1, 10.0), &[&["rack", "IS", "c"]]);
    for p in place_n(&mut s, "i", 4, &is) {
        assert_eq!(rack_of(&p), 'c');
    }
}

#[test]
fn special_fields_hostname_region_zone() {
    let mut s = Scheduler::new(9);
    s.upsert_node(node(
        "n1",
        &[("region", "eu"), ("zone", "eu-1")],
        8.0,
        8000.0,
    ));
    s.upsert_node(node(
        "n2",
        &[("region", "us"), ("zone", "us-1")],
        8.0,
        8000.0,
    ));
    let p = s
        .place("a", &with(req("/a", 0.1, 1.0), &[&["@region", "IS", "us"]]))
        .unwrap();
    assert_eq!(p.node_id, "n2");
    let p = s
        .place(
            "b",
            &with(req("/b", 0.1, 1.0), &[&["@zone", "LIKE", "eu-.*"]]),
        )
        .unwrap();
    assert_eq!(p.node_id, "n1");
    let p = s
        .place(
            "c",
            &with(
                req("/c", 0.1, 1.0),
                &[&["@hostname", "CLUSTER", "n2.example"]],
            ),
        )
        .unwrap();
    assert_eq!(p.host, "n2.example");
    let p = s
        .place(
            "d",
            &with(req("/d", 0.1, 1.0), &[&["hostname", "LIKE", "n1\\..*"]]),
        )
        .unwrap();
    assert_eq!(p.node_id, "n1");
}

#[test]
fn dynamic_ports_never_double_allocated() {
    let mut s = Scheduler::new(10);
    s.upsert_node(node("n1", &[], 64.0, 64000.0));
    let mut r = req("/app", 0.1, 1.0);
    r.ports = vec![0, 0];
    let ps = place_n(&mut s, "t", 5, &r);
    let all: Vec<u16> = ps.iter().flat_map(|p| p.ports.clone()).collect();
    let set: BTreeSet<u16> = all.iter().copied().collect();
    assert_eq!(all.len(), 10);
    assert_eq!(set.len(), 10);
    assert!(set.iter().all(|p| (31000..=31009).contains(p)));
    let u = s.place("t-5", &r).unwrap_err();
    assert_eq!(u.reasons.get("no free ports"), Some(&1));
    // Freeing one task frees exactly its two ports.
    s.remove_task("t-2");
    let p = s.place("t-5", &r).unwrap();
    let mut got = p.ports.clone();
    got.sort_unstable();
    let mut freed = ps[2].ports.clone();
    freed.sort_unstable();
    assert_eq!(got, freed);
}

#[test]
fn exact_host_ports_conflict_and_must_be_in_range() {
    let mut s = Scheduler::new(11);
    s.upsert_node(node("n1", &[], 64.0, 64000.0));
    s.upsert_node(node("n2", &[], 64.0, 64000.0));
    let mut r = req("/app", 0.1, 1.0);
    r.ports = vec![31005, 0];
    let a = s.place("a", &r).unwrap();
    let b = s.place("b", &r).unwrap();
    assert_ne!(a.node_id, b.node_id);
    assert_eq!(a.ports[0], 31005);
    assert_ne!(a.ports[1], 31005);
    let u = s.place("c", &r).unwrap_err();
    assert_eq!(u.reasons.get("port 31005 not available"), Some(&2));
    // A dynamic port is never handed out if it is someone's exact port.
    let mut dynr = req("/dyn", 0.1, 1.0);
    dynr.ports = vec![0; 8];
    for p in place_n(&mut s, "d", 2, &dynr) {
        assert!(!p.ports.contains(&31005));
        let set: BTreeSet<_> = p.ports.iter().collect();
        assert_eq!(set.len(), 8);
    }
    let mut out = req("/out", 0.1, 1.0);
    out.ports = vec![80];
    let u = s.place("o", &out).unwrap_err();
    assert_eq!(u.reasons.get("port 80 not available"), Some(&2));
    let mut dup = req("/dup", 0.1, 1.0);
    dup.ports = vec![31001, 31001];
    let u = s.place("dup", &dup).unwrap_err();
    assert_eq!(u.reasons.get("duplicate host ports requested"), Some(&2));
    // An existing task's port (loaded at start-up) is respected.
    let mut s = Scheduler::new(11);
    s.upsert_node(node("n1", &[], 64.0, 64000.0));
    s.add_task(TaskFootprint {
        task_id: "old".into(),
        app_id: "/old".into(),
        node_id: "n1".into(),
        resources: NodeResources::new(0.1, 1.0, 0.0),
        ports: vec![31003],
        cpuset: vec![],
    });
    let mut r = req("/app", 0.1, 1.0);
    r.ports = vec![31003];
    assert!(s.place("x", &r).is_err());
    s.remove_task("old");
    assert!(s.place("x", &r).is_ok());
}

#[test]
fn pinned_cores_never_shared_and_excluded_from_shared_cpu() {
    let mut s = Scheduler::new(12);
    s.upsert_node(node("n1", &[], 4.0, 64000.0));
    let mut pin = req("/pin", 0.0, 1.0);
    pin.pinned_cores = 2;
    let a = s.place("a", &pin).unwrap();
    let b = s.place("b", &pin).unwrap();
    assert_eq!(a.cpuset.len(), 2);
    let all: BTreeSet<u32> = a.cpuset.iter().chain(&b.cpuset).copied().collect();
    assert_eq!(all, BTreeSet::from([0, 1, 2, 3]));
    // All cores pinned: no shared CPU is left either.
    let u = s.place("c", &pin).unwrap_err();
    assert_eq!(u.reasons.get("insufficient cpus"), Some(&1));
    let u = s.place("sh", &req("/sh", 0.1, 1.0)).unwrap_err();
    assert_eq!(u.reasons.get("insufficient cpus"), Some(&1));
    s.remove_task("a");
    assert_eq!(s.node_usage("n1").unwrap().pinned_cores, b.cpuset);
    // Shared tasks take 1.5 of the 2 free cpus; a 2-core pin no longer fits.
    s.place("sh", &req("/sh", 1.5, 1.0)).unwrap();
    assert!(s.place("c", &pin).is_err());
    pin.pinned_cores = 1;
    assert!(
        s.place("c", &pin).is_err(),
        "0.5 cpus free is not a whole core"
    );
    s.remove_task("sh");
    let c = s.place("c", &pin).unwrap();
    assert!(c.cpuset.iter().all(|x| !b.cpuset.contains(x)));
}

#[test]
fn cores_reason_when_cpu_overcommitted() {
    // Overcommitted cpus (8 allocatable on 2 physical cores): cores run out before cpus.
    let mut s = Scheduler::new(13);
    let mut n = node("n1", &[], 8.0, 64000.0);
    n.cores = 2;
    s.upsert_node(n);
    let mut pin = req("/pin", 0.0, 1.0);
    pin.pinned_cores = 2;
    s.place("a", &pin).unwrap();
    let u = s.place("b", &pin).unwrap_err();
    assert_eq!(u.reasons.get("not enough free cores to pin"), Some(&1));
    let usage = s.node_usage("n1").unwrap();
    assert_eq!(usage.cpus, 2.0);
}

#[test]
fn remove_task_frees_everything() {
    let mut s = Scheduler::new(14);
    s.upsert_node(node("n1", &[("rack", "a")], 4.0, 4000.0));
    let mut r = with(
        req("/app", 0.0, 1000.0),
        &[&["hostname", "UNIQUE"], &["rack", "MAX_PER", "1"]],
    );
    r.resources.disk = 100.0;
    r.ports = vec![0, 31001];
    r.pinned_cores = 4;
    let p = s.place("t", &r).unwrap();
    assert_eq!(p.cpuset, vec![0, 1, 2, 3]);
    let used = s.node_usage("n1").unwrap();
    assert_eq!(
        (used.cpus, used.mem, used.disk, used.tasks),
        (4.0, 1000.0, 100.0, 1)
    );
    assert!(s.place("t2", &r).is_err());
    s.remove_task("t");
    let u = s.node_usage("n1").unwrap();
    assert_eq!((u.cpus, u.mem, u.disk, u.tasks), (0.0, 0.0, 0.0, 0));
    assert!(u.pinned_cores.is_empty() && u.ports.is_empty());
    assert_eq!(s.place("t2", &r).unwrap().cpuset, vec![0, 1, 2, 3]);
    assert_eq!(s.task_count(), 1);
}

#[test]
fn unplaced_reasons_counted_per_node() {
    let mut s = Scheduler::new(15);
    let mut cordoned = node("cordoned", &[("rack", "a")], 8.0, 8000.0);
    cordoned.schedulable = false;
    s.upsert_node(cordoned);
    let mut nodocker = node("nodocker", &[("rack", "a")], 8.0, 8000.0);
    nodocker.drivers = vec!["exec".into()];
    s.upsert_node(nodocker);
    s.upsert_node(node("small1", &[("rack", "a")], 8.0, 100.0));
    s.upsert_node(node("small2", &[("rack", "a")], 8.0, 100.0));
    s.upsert_node(node("fewcpu", &[("rack", "a")], 0.5, 8000.0));
    s.upsert_node(node("otherrack", &[("rack", "b")], 8.0, 8000.0));
    let mut r = with(req("/app", 1.0, 500.0), &[&["rack", "IS", "a"]]);
    r.driver = "docker".into();
    let u = s.place("t", &r).unwrap_err();
    assert_eq!(u.nodes_total, 6);
    let want: BTreeMap<String, usize> = [
        ("node not schedulable", 1),
        ("driver docker not available", 1),
        ("insufficient mem", 2),
        ("insufficient cpus", 1),
        ("constraint rack:IS:a", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(u.reasons, want);
    assert_eq!(u.reasons.values().sum::<usize>(), u.nodes_total);
    assert_eq!(
        u.summary(),
        "no node fits (6 nodes): 2 insufficient mem, 1 constraint rack:IS:a, \
         1 driver docker not available, 1 insufficient cpus, 1 node not schedulable"
    );
    let empty = Scheduler::new(0).place("t", &r).unwrap_err();
    assert_eq!(empty.summary(), "no node fits (0 nodes)");
}

#[test]
fn driver_unknown_everywhere() {
    let mut s = Scheduler::new(16);
    racks(&mut s);
    let mut r = req("/app", 0.1, 1.0);
    r.driver = "qemu".into();
    let u = s.place("t", &r).unwrap_err();
    assert_eq!(u.reasons.get("driver qemu not available"), Some(&6));
    r.driver = "exec".into();
    assert!(s.place("t", &r).is_ok());
}

#[test]
fn deterministic_given_seed() {
    let run = |seed: u64| {
        let mut s = Scheduler::new(seed);
        for i in 0..50 {
            s.upsert_node(node(
                &format!("n{i}"),
                &[("rack", &format!("r{}", i % 5))],
                8.0,
                8000.0,
            ));
        }
        let mut r = with(req("/app", 0.5, 100.0), &[&["rack", "GROUP_BY"]]);
        r.ports = vec![0];
        let mut out = Vec::new();
        for i in 0..200 {
            let p = s.place(&format!("t{i}"), &r).unwrap();
            out.push((p.node_id, p.ports));
            if i % 7 == 0 {
                s.remove_task(&format!("t{}", i / 2));
            }
        }
        out
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn binpack_fills_fullest_node_and_spread_spreads() {
    let mut s = Scheduler::new(17);
    s.set_candidate_limit(CandidateLimit::Exhaustive);
    for i in 0..4 {
        s.upsert_node(node(&format!("n{i}"), &[], 8.0, 8000.0));
    }
    let r = req("/a", 1.0, 1000.0);
    let first = s.place("a0", &r).unwrap();
    for i in 1..8 {
        assert_eq!(
            s.place(&format!("a{i}"), &r).unwrap().node_id,
            first.node_id
        );
    }
    let mut sp = req("/b", 1.0, 1000.0);
    sp.strategy = Strategy::Spread;
    let nodes: BTreeSet<_> = (0..3)
        .map(|i| s.place(&format!("b{i}"), &sp).unwrap().node_id)
        .collect();
    assert_eq!(nodes.len(), 3);
    assert!(!nodes.contains(&first.node_id));
}

#[test]
fn upsert_keeps_tasks_and_follows_attribute_changes() {
    let mut s = Scheduler::new(18);
    s.upsert_node(node("n1", &[("rack", "a")], 8.0, 8000.0));
    s.upsert_node(node("n2", &[("rack", "b")], 8.0, 8000.0));
    let r = with(req("/app", 1.0, 100.0), &[&["rack", "UNIQUE"]]);
    let p = s.place("t1", &r).unwrap();
    let other = if p.node_id == "n1" { "n2" } else { "n1" };
    // Move the task's node into the other node's rack: no rack is free any more.
    let other_rack = if other == "n1" { "a" } else { "b" };
    s.upsert_node(node(&p.node_id, &[("rack", other_rack)], 8.0, 8000.0));
    assert_eq!(s.node_usage(&p.node_id).unwrap().tasks, 1);
    assert!(s.place("t2", &r).is_err());
    s.upsert_node(node(&p.node_id, &[("rack", "c")], 8.0, 8000.0));
    assert_eq!(s.place("t2", &r).unwrap().node_id, other);
    // remove_node forgets its tasks.
    s.remove_node(other);
    assert_eq!(s.task_count(), 1);
    assert!(s.node_usage(other).is_none());
    s.remove_task("t2"); // already gone: ignored
    s.upsert_node(node(other, &[("rack", "d")], 8.0, 8000.0));
    assert_eq!(s.node_usage(other).unwrap().tasks, 0);
    assert_eq!(s.node_count(), 2);
}

#[test]
fn tasks_for_unknown_nodes_attach_when_the_node_arrives() {
    let mut s = Scheduler::new(19);
    s.add_task(TaskFootprint {
        task_id: "t".into(),
        app_id: "/app".into(),
        node_id: "late".into(),
        resources: NodeResources::new(2.0, 100.0, 0.0),
        ports: vec![31000],
        cpuset: vec![],
    });
    s.upsert_node(node("late", &[("rack", "a")], 8.0, 8000.0));
    let u = s.node_usage("late").unwrap();
    assert_eq!((u.cpus, u.tasks), (2.0, 1));
    let r = with(req("/app", 1.0, 100.0), &[&["hostname", "UNIQUE"]]);
    assert!(s.place("t2", &r).is_err());
}

#[test]
fn place_many_stops_at_first_failure() {
    let mut s = Scheduler::new(20);
    racks(&mut s);
    let r = with(req("/app", 0.1, 10.0), &[&["rack", "UNIQUE"]]);
    let ids: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
    let (done, err) = s.place_many(&ids, &r);
    assert_eq!(done.len(), 3);
    assert!(err.unwrap().reasons.contains_key("constraint rack:UNIQUE"));
    assert_eq!(s.task_count(), 3);
}

#[test]
fn candidate_limit_is_bounded_by_default() {
    let s = Scheduler::new(0);
    assert_eq!(s.effective_limit(Strategy::BinPack, 10_000), 14);
    assert_eq!(s.effective_limit(Strategy::BinPack, 1), 2);
    assert_eq!(s.effective_limit(Strategy::Spread, 10_000), 100);
}

/// Recomputes per-node sums from the placements the test recorded.
fn check_invariants(nodes: &[SchedNode], placed: &HashMap<String, (Placement, PlacementRequest)>) {
    for n in nodes {
        let mine: Vec<_> = placed.values().filter(|(p, _)| p.node_id == n.id).collect();
        let cpu: f64 = mine
            .iter()
            .map(|(_, r)| {
                if r.pinned_cores > 0 {
                    f64::from(r.pinned_cores)
                } else {
                    r.resources.cpus
                }
            })
            .sum();
        let mem: f64 = mine.iter().map(|(_, r)| r.resources.mem).sum();
        let disk: f64 = mine.iter().map(|(_, r)| r.resources.disk).sum();
        assert!(cpu <= n.allocatable.cpus + 1e-6, "{} cpu {cpu}", n.id);
        assert!(mem <= n.allocatable.mem + 1e-6, "{} mem {mem}", n.id);
        assert!(disk <= n.allocatable.disk + 1e-6, "{} disk {disk}", n.id);
        let ports: Vec<u16> = mine.iter().flat_map(|(p, _)| p.ports.clone()).collect();
        let uniq: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(ports.len(), uniq.len(), "port reused on {}", n.id);
        let cores: Vec<u32> = mine.iter().flat_map(|(p, _)| p.cpuset.clone()).collect();
        let uniq: BTreeSet<u32> = cores.iter().copied().collect();
        assert_eq!(cores.len(), uniq.len(), "core shared on {}", n.id);
        assert!(cores.iter().all(|&c| c < n.cores));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Place {
        app: u8,
        cpus: f64,
        mem: f64,
        disk: f64,
        ports: u8,
        exact: Option<u16>,
        pin: u32,
    },
    Remove(usize),
}

fn op() -> impl PropStrategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0.0f64..3.0, 0.0f64..3000.0, 0.0f64..300.0, 0u8..3, proptest::option::of(31000u16..31012), 0u32..3)
            .prop_map(|(app, cpus, mem, disk, ports, exact, pin)| Op::Place { app, cpus, mem, disk, ports, exact, pin }),
        1 => (0usize..1000).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn no_node_ever_exceeds_allocatable(seed in 0u64..1000, ops in proptest::collection::vec(op(), 1..150)) {
        let nodes: Vec<SchedNode> = (0..5)
            .map(|i| {
                let mut n = node(&format!("n{i}"), &[("rack", ["a", "b"][i % 2])], 2.0 + i as f64 * 0.7, 4000.0 + 1000.0 * i as f64);
                n.allocatable.disk = 500.0;
                n.cores = 2 + i as u32 % 3;
                n
            })
            .collect();
        let mut s = Scheduler::new(seed);
        for n in &nodes {
            s.upsert_node(n.clone());
        }
        let mut placed: HashMap<String, (Placement, PlacementRequest)> = HashMap::new();
        let mut ids: Vec<String> = Vec::new();
        for (i, o) in ops.into_iter().enumerate() {
            match o {
                Op::Place { app, cpus, mem, disk, ports, exact, pin } => {
                    let mut r = PlacementRequest::new(format!("/app{app}"), NodeResources::new(cpus, mem, disk));
                    r.ports = vec![0; ports as usize];
                    r.ports.extend(exact);
                    r.pinned_cores = pin;
                    if app == 1 {
                        r.constraints = vec![con(&["rack", "GROUP_BY"])];
                    }
                    if app == 2 {
                        r.strategy = Strategy::Spread;
                        r.constraints = vec![con(&["hostname", "MAX_PER", "3"])];
                    }
                    let id = format!("t{i}");
                    if let Ok(p) = s.place(&id, &r) {
                        placed.insert(id.clone(), (p, r));
                        ids.push(id);
                    }
                }
                Op::Remove(k) => {
                    if !ids.is_empty() {
                        let id = ids.swap_remove(k % ids.len());
                        placed.remove(&id);
                        s.remove_task(&id);
                    }
                }
            }
            check_invariants(&nodes, &placed);
        }
        // The model agrees with the recorded placements.
        for n in &nodes {
            let u = s.node_usage(&n.id).unwrap();
            let count = placed.values().filter(|(p, _)| p.node_id == n.id).count();
            prop_assert_eq!(u.tasks, count);
        }
        for id in ids {
            s.remove_task(&id);
        }
        for n in &nodes {
            let u = s.node_usage(&n.id).unwrap();
            prop_assert_eq!((u.cpus, u.mem, u.disk, u.tasks), (0.0, 0.0, 0.0, 0));
        }
    }
}
