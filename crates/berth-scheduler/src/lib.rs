//! Pure placement engine: an incremental model of the cluster plus a Nomad / kube-scheduler
//! style pipeline (random start -> feasibility filters -> bounded scoring -> pick the best).
//!
//! No I/O, no clock; all randomness comes from a seeded RNG, so a given seed and sequence of
//! calls always yields the same placements. Feasibility of one node costs O(constraints):
//! the model keeps per-app task counts per node and per (attribute, value).
//!
//! Units: resources are kept internally in thousandths (milli-cpus, milli-MB) as integers, so
//! adding and removing tasks never drifts. Requests round up and capacities round down, so
//! the integer check being satisfied implies the `f64` one is.

mod filter;
mod fxhash;
mod model;
mod score;
mod tenancy;
#[cfg(test)]
mod tests;

use berth_core::Constraint;
use berth_core::node::{NodeResources, PortRange};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::BTreeMap;
use std::fmt;

use filter::{Prepared, RegexCache, Tally};
use model::Cluster;
pub use tenancy::NamespacePlacement;

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedNode {
    pub id: String,
    pub hostname: String,
    /// Node attributes (`rack`, `region`, `zone`, ...). An attribute literally named
    /// `hostname` is ignored: the `hostname` constraint field always means the hostname.
    pub attributes: BTreeMap<String, String>,
    /// Already (physical - reserved) * overcommit.
    pub allocatable: NodeResources,
    pub port_ranges: Vec<PortRange>,
    pub drivers: Vec<String>,
    /// False when cordoned, unreachable or failing conditions: no new tasks.
    pub schedulable: bool,
    /// Physical cores that can be pinned, ids `0..cores`.
    pub cores: u32,
}

/// A task that already exists (loaded at start-up, or launched elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFootprint {
    pub task_id: String,
    pub app_id: String,
    pub node_id: String,
    /// For a pinned task (non-empty `cpuset`) `resources.cpus` is ignored: it holds exactly
    /// `cpuset.len()` whole cpus.
    pub resources: NodeResources,
    pub ports: Vec<u16>,
    pub cpuset: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Fill nodes up (Nomad's bin-pack score); leaves whole nodes free for big tasks.
    #[default]
    BinPack,
    /// Fewest tasks of this app on the node first, then the emptiest node.
    Spread,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRequest {
    pub app_id: String,
    /// For a pinned request (`pinned_cores > 0`) `resources.cpus` is ignored: the task holds
    /// exactly `pinned_cores` whole cpus.
    pub resources: NodeResources,
    /// One entry per port: 0 = any free port from the node's ranges, else that exact host
    /// port, which must lie in the node's ranges (as with Marathon's `requirePorts`, where a
    /// host port must be part of the offer).
    pub ports: Vec<u16>,
    pub constraints: Vec<Constraint>,
    /// Empty = any driver.
    pub driver: String,
    pub strategy: Strategy,
    /// 0 = shared CPU.
    pub pinned_cores: u32,
    /// The namespace of the app (see [`Scheduler::set_namespaces`]); empty: none, so no
    /// node selector, and never on another namespace's dedicated nodes.
    pub namespace: String,
}

impl PlacementRequest {
    /// A request with no ports, constraints or driver requirement, bin-packed, shared CPU.
    pub fn new(app_id: impl Into<String>, resources: NodeResources) -> Self {
        Self {
            app_id: app_id.into(),
            resources,
            ports: Vec::new(),
            constraints: Vec::new(),
            driver: String::new(),
            strategy: Strategy::BinPack,
            pinned_cores: 0,
            namespace: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node_id: String,
    /// The node's hostname.
    pub host: String,
    /// In request order.
    pub ports: Vec<u16>,
    /// Pinned core ids, ascending; empty for shared CPU.
    pub cpuset: Vec<u32>,
}

/// Why a request could not be placed: for each reason, how many nodes it ruled out. Each
/// node is counted once, under the first filter it failed (filter order: schedulable,
/// namespace (node selector, dedicated nodes), driver, cpus, mem, disk, ports, pinned cores,
/// constraints in request order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unplaced {
    pub nodes_total: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl Unplaced {
    /// `no node fits (10 nodes): 7 insufficient mem, 3 constraint rack:GROUP_BY`, biggest
    /// reason first.
    pub fn summary(&self) -> String {
        let mut rs: Vec<(&String, &usize)> = self.reasons.iter().collect();
        rs.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let plural = if self.nodes_total == 1 { "" } else { "s" };
        let mut s = format!("no node fits ({} node{plural})", self.nodes_total);
        for (i, (reason, n)) in rs.iter().enumerate() {
            s.push_str(if i == 0 { ": " } else { ", " });
            s.push_str(&format!("{n} {reason}"));
        }
        s
    }
}

impl fmt::Display for Unplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl std::error::Error for Unplaced {}

/// What is in use on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUsage {
    /// Shared plus pinned cpus.
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub tasks: usize,
    /// Pinned core ids held, ascending.
    pub pinned_cores: Vec<u32>,
    /// Host ports in use, ascending.
    pub ports: Vec<u16>,
}

/// How many feasible nodes are scored before picking the best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CandidateLimit {
    /// BinPack: max(2, ceil(log2 n)) like Nomad; Spread: max(that, 100), since spreading
    /// needs a wider view to find the emptiest nodes.
    #[default]
    Auto,
    /// Exactly this many (at least 1).
    Max(usize),
    /// Score every feasible node (slow; for comparison and small clusters).
    Exhaustive,
}

pub struct Scheduler {
    cluster: Cluster,
    rng: SmallRng,
    regexes: RegexCache,
    limit: CandidateLimit,
    namespaces: Vec<NamespacePlacement>,
}

impl Scheduler {
    pub fn new(seed: u64) -> Self {
        Self {
            cluster: Cluster::new(),
            rng: SmallRng::seed_from_u64(seed),
            regexes: RegexCache::default(),
            limit: CandidateLimit::Auto,
            namespaces: Vec::new(),
        }
    }

    /// Pre-sizes the model for about this many nodes and tasks, so that growing past a
    /// power of two does not rehash (a multi-millisecond pause at ~10^5 tasks) mid-burst.
    pub fn reserve(&mut self, nodes: usize, tasks: usize) {
        self.cluster.reserve(nodes, tasks);
    }

    pub fn set_candidate_limit(&mut self, limit: CandidateLimit) {
        self.limit = limit;
    }

    pub fn candidate_limit(&self) -> CandidateLimit {
        self.limit
    }

    /// Replaces the namespace placement rules (node selectors, dedicated nodes). Tasks
    /// already placed stay where they are; the rules apply to the next placements.
    pub fn set_namespaces(&mut self, namespaces: Vec<NamespacePlacement>) {
        self.namespaces = namespaces;
    }

    pub fn namespaces(&self) -> &[NamespacePlacement] {
        &self.namespaces
    }

    /// Adds or replaces a node; tasks already on it stay (its attributes may change, and the
    /// constraint counts follow).
    pub fn upsert_node(&mut self, node: SchedNode) {
        self.cluster.upsert_node(node, &mut self.rng);
    }

    /// Removes a node and forgets its tasks.
    pub fn remove_node(&mut self, node_id: &str) {
        self.cluster.remove_node(node_id);
    }

    /// Records an existing task. A task on a node not known yet is kept aside and counted
    /// once the node is upserted (start-up may load tasks before nodes re-register). A known
    /// task id is replaced.
    pub fn add_task(&mut self, t: TaskFootprint) {
        self.cluster.add_task(t);
    }

    /// Frees the task's resources, ports, cores and constraint counts. Unknown ids are ignored.
    pub fn remove_task(&mut self, task_id: &str) {
        self.cluster.remove_task(task_id);
    }

    pub fn node_count(&self) -> usize {
        self.cluster.order.len()
    }

    pub fn task_count(&self) -> usize {
        self.cluster.task_ids.len()
    }

    pub fn node_usage(&self, node_id: &str) -> Option<NodeUsage> {
        self.cluster.usage(node_id)
    }

    /// Places one task. On success the task is recorded at once ("assumed"), so the next
    /// call sees its resources as taken. Placing a task id that is already known first
    /// removes the old record (the task is being moved).
    pub fn place(&mut self, task_id: &str, req: &PlacementRequest) -> Result<Placement, Unplaced> {
        if self.cluster.task_ids.contains_key(task_id) {
            self.cluster.remove_task(task_id);
        }
        let n = self.cluster.order.len();
        if n == 0 {
            return Err(Unplaced::default());
        }
        self.regexes
            .prepare(&req.constraints, self.cluster.values.len());
        let start = rand::Rng::random_range(&mut self.rng, 0..n);
        let limit = self.effective_limit(req.strategy, n);
        let slot = {
            let p = Prepared::new(&self.cluster, &self.regexes, &self.namespaces, req);
            self.decide(&p, start, limit)?
        };
        Ok(self.cluster.commit(slot, task_id, req, &mut self.rng))
    }

    /// Places tasks one after the other; stops at the first failure.
    pub fn place_many(
        &mut self,
        task_ids: &[String],
        req: &PlacementRequest,
    ) -> (Vec<(String, Placement)>, Option<Unplaced>) {
        let mut done = Vec::with_capacity(task_ids.len());
        for id in task_ids {
            match self.place(id, req) {
                Ok(p) => done.push((id.clone(), p)),
                Err(u) => return (done, Some(u)),
            }
        }
        (done, None)
    }

    fn effective_limit(&self, strategy: Strategy, n: usize) -> usize {
        let log = (usize::BITS - (n.max(1) - 1).leading_zeros()) as usize; // ceil(log2 n)
        let auto = log.max(2);
        match (self.limit, strategy) {
            (CandidateLimit::Auto, Strategy::BinPack) => auto,
            (CandidateLimit::Auto, Strategy::Spread) => auto.max(100),
            (CandidateLimit::Max(k), _) => k.max(1),
            (CandidateLimit::Exhaustive, _) => usize::MAX,
        }
    }

    /// Runs the pipeline; at most two scans (see `Prepared` on GROUP_BY).
    fn decide(&self, p: &Prepared<'_>, start: usize, limit: usize) -> Result<u32, Unplaced> {
        let mut tally = Tally::new(p);
        let first = filter::scan(
            &self.cluster,
            p,
            &p.group_thresholds,
            start,
            limit,
            &mut tally,
        );
        if let Some(slot) = first.best {
            return Ok(slot);
        }
        if let Some(fallback) = first.group_fallback {
            // Every node that failed only on GROUP_BY was on a value above the global
            // minimum; retry with the minimum among those otherwise-feasible nodes.
            let mut tally2 = Tally::new(p);
            let second = filter::scan(&self.cluster, p, &fallback, start, limit, &mut tally2);
            if let Some(slot) = second.best {
                return Ok(slot);
            }
            tally = tally2;
        }
        Err(tally.into_unplaced(p, &self.cluster))
    }
}
