//! Feasibility: a request compiled against the model (`Prepared`), the per-node check, and
//! the scan that feeds feasible nodes to scoring.

use crate::fxhash::FxMap;
use crate::model::{AppState, Cluster, HOSTNAME_FIELD, Interner, NodeHot, req_milli};
use crate::tenancy::{NamespacePlacement, Tenancy, TenancyReject};
use crate::{PlacementRequest, Unplaced, score};
use berth_core::{Constraint, ConstraintOp};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

/// A compiled LIKE/UNLIKE regex with its verdict memoised per interned value (values are
/// few - racks, zones, hostnames - so each is matched once, not once per placement).
pub(crate) struct RegexMemo {
    re: Regex,
    /// 0 unknown, 1 match, 2 no match. Atomic (relaxed) only so the scheduler is `Sync`.
    memo: Vec<AtomicU8>,
}

impl RegexMemo {
    #[inline]
    fn matches(&self, values: &Interner, v: u32) -> bool {
        match self.memo.get(v as usize).map(|c| c.load(Ordering::Relaxed)) {
            Some(1) => true,
            Some(2) => false,
            _ => {
                let m = self.re.is_match(values.name(v));
                if let Some(c) = self.memo.get(v as usize) {
                    c.store(if m { 1 } else { 2 }, Ordering::Relaxed);
                }
                m
            }
        }
    }
}

/// Compiled regexes by pattern; `None` marks an invalid pattern (fails every node).
#[derive(Default)]
pub(crate) struct RegexCache {
    map: FxMap<String, Option<RegexMemo>>,
}

/// Bound on cached patterns; app regexes are few, this only guards against unbounded growth.
const REGEX_CACHE_MAX: usize = 4096;

impl RegexCache {
    /// Compiles the request's patterns and sizes memos for every value interned so far
    /// (nothing is interned during a scan).
    pub(crate) fn prepare(&mut self, constraints: &[Constraint], values: usize) {
        if self.map.len() > REGEX_CACHE_MAX {
            self.map.clear();
        }
        for c in constraints {
            if !matches!(c.op, ConstraintOp::Like | ConstraintOp::Unlike) {
                continue;
            }
            let Some(pat) = &c.value else { continue };
            let entry = self.map.entry(pat.clone()).or_insert_with(|| {
                // Full match, as Marathon does.
                Regex::new(&format!("^(?:{pat})$"))
                    .ok()
                    .map(|re| RegexMemo {
                        re,
                        memo: Vec::new(),
                    })
            });
            if let Some(m) = entry
                && m.memo.len() < values
            {
                m.memo.resize_with(values, || AtomicU8::new(0));
            }
        }
    }

    fn get(&self, pat: &str) -> Option<&RegexMemo> {
        self.map.get(pat).and_then(|m| m.as_ref())
    }
}

pub(crate) enum Kind<'a> {
    /// Cannot be satisfied by any node (bad value, invalid regex).
    Never,
    Unique,
    /// IS, or CLUSTER with a value. None: no node has that value.
    Equals(Option<u32>),
    /// CLUSTER without a value: the value the app already uses (free for the first task).
    Same,
    Like(&'a RegexMemo),
    Unlike(&'a RegexMemo),
    MaxPer(u32),
    GroupBy,
}

pub(crate) struct Check<'a> {
    /// None: no node has ever had this field, so every node lacks it.
    field: Option<u32>,
    /// This app's counts per value of `field`.
    counts: Option<&'a FxMap<u32, u32>>,
    kind: Kind<'a>,
}

impl Check<'_> {
    #[inline]
    fn count(&self, v: u32) -> u32 {
        self.counts.and_then(|m| m.get(&v).copied()).unwrap_or(0)
    }
}

pub(crate) enum Driver {
    Any,
    Id(u32),
    /// No node offers it.
    Unknown,
}

/// Why a node was ruled out (cheap to produce; turned into text only when nothing fits).
#[derive(Clone, Copy)]
pub(crate) enum Reject {
    NotSchedulable,
    /// Namespace node selector or another namespace's dedicated node.
    Tenancy(TenancyReject),
    Driver,
    Cpus,
    Mem,
    Disk,
    DuplicatePorts,
    NoFreePorts,
    HostPort(usize),
    Cores,
    Constraint(usize),
}

/// A request compiled against the current model.
///
/// GROUP_BY: a node passes when the app's count on the node's value is <= a threshold. The
/// first scan uses the minimum count over all values carried by any node (values without
/// tasks count 0), which is cheap and exact whenever some least-loaded value still has a
/// feasible node. If nothing passes, the scan has visited every node and recorded the
/// minimum count over nodes that passed every other filter; a second scan uses that. So,
/// like Marathon (which picks the least-loaded value among the offers it gets), a task
/// goes to the least-loaded value among nodes that can take it, and a full rack makes the
/// spread uneven rather than leaving the task unplaced. GROUP_BY's optional value (the
/// expected number of distinct values) adds nothing here: every node is known, so unseen
/// values already count 0.
pub(crate) struct Prepared<'a> {
    pub app: Option<&'a AppState>,
    pub cpu: u64,
    pub mem: u64,
    pub disk: u64,
    pub pinned: u32,
    pub driver: Driver,
    pub dyn_ports: u32,
    pub exact_ports: Vec<u16>,
    pub dup_ports: bool,
    pub checks: Vec<Check<'a>>,
    /// Per check; u32::MAX for checks that are not GROUP_BY.
    pub group_thresholds: Vec<u32>,
    pub has_group_by: bool,
    pub tenancy: Tenancy<'a>,
    pub req: &'a PlacementRequest,
}

/// Resolves a constraint field to a field id: `hostname`/`@hostname` is the hostname,
/// `@region`/`@zone` the `region`/`zone` attributes, anything else an attribute.
pub(crate) fn field_id(c: &Cluster, field: &str) -> Option<u32> {
    match field {
        "hostname" | "@hostname" => Some(HOSTNAME_FIELD),
        "@region" => c.fields.get("region"),
        "@zone" => c.fields.get("zone"),
        f => c.fields.get(f),
    }
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(
        c: &'a Cluster,
        regexes: &'a RegexCache,
        namespaces: &'a [NamespacePlacement],
        req: &'a PlacementRequest,
    ) -> Self {
        let app = c.app_ids.get(&req.app_id).map(|&a| &c.apps[a as usize]);
        let mut checks = Vec::with_capacity(req.constraints.len());
        let mut group_thresholds = Vec::with_capacity(req.constraints.len());
        let mut has_group_by = false;
        for con in &req.constraints {
            let field = field_id(c, &con.field);
            let counts = match (app, field) {
                (Some(a), Some(f)) => a.fields.get(&f),
                _ => None,
            };
            let value = con.value.as_deref();
            let kind = match con.op {
                ConstraintOp::Unique => Kind::Unique,
                ConstraintOp::Is => Kind::Equals(value.and_then(|v| c.values.get(v))),
                ConstraintOp::Cluster => match value {
                    Some(v) => Kind::Equals(c.values.get(v)),
                    None => Kind::Same,
                },
                ConstraintOp::Like | ConstraintOp::Unlike => {
                    match value.and_then(|v| regexes.get(v)) {
                        Some(m) if con.op == ConstraintOp::Like => Kind::Like(m),
                        Some(m) => Kind::Unlike(m),
                        None => Kind::Never,
                    }
                }
                ConstraintOp::MaxPer => match value.and_then(|v| v.parse::<u32>().ok()) {
                    Some(n) => Kind::MaxPer(n),
                    None => Kind::Never,
                },
                ConstraintOp::GroupBy => Kind::GroupBy,
            };
            let mut threshold = u32::MAX;
            if matches!(kind, Kind::GroupBy) {
                has_group_by = true;
                threshold = 0;
                if let Some(f) = field {
                    let values_on_nodes = c.value_nodes.get(&f).map_or(0, |m| m.len());
                    // The app's counted values are a subset of the values on nodes; if it
                    // has fewer, some value has no task and the minimum is 0.
                    if let Some(m) = counts
                        && m.len() >= values_on_nodes
                    {
                        threshold = m.values().copied().min().unwrap_or(0);
                    }
                }
            }
            group_thresholds.push(threshold);
            checks.push(Check {
                field,
                counts,
                kind,
            });
        }
        let mut exact_ports: Vec<u16> = req.ports.iter().copied().filter(|&p| p != 0).collect();
        let n_exact = exact_ports.len();
        exact_ports.sort_unstable();
        exact_ports.dedup();
        let dup_ports = exact_ports.len() != n_exact;
        // Keep request order for reporting; dedup only served the duplicate check.
        let exact_ports: Vec<u16> = req.ports.iter().copied().filter(|&p| p != 0).collect();
        let pinned = req.pinned_cores > 0;
        Prepared {
            app,
            cpu: if pinned {
                u64::from(req.pinned_cores) * 1000
            } else {
                req_milli(req.resources.cpus)
            },
            mem: req_milli(req.resources.mem),
            disk: req_milli(req.resources.disk),
            pinned: req.pinned_cores,
            driver: if req.driver.is_empty() {
                Driver::Any
            } else {
                c.drivers
                    .get(&req.driver)
                    .map_or(Driver::Unknown, Driver::Id)
            },
            dyn_ports: req.ports.iter().filter(|&&p| p == 0).count() as u32,
            exact_ports,
            dup_ports,
            checks,
            group_thresholds,
            has_group_by,
            tenancy: Tenancy::new(c, namespaces, &req.namespace),
            req,
        }
    }

    /// Every filter but GROUP_BY, cheapest first. O(constraints + ports), never O(tasks).
    #[inline]
    fn check_base(&self, c: &Cluster, h: &NodeHot) -> Result<(), Reject> {
        if !h.schedulable {
            return Err(Reject::NotSchedulable);
        }
        if !self.tenancy.is_open() {
            self.tenancy.check(c, h).map_err(Reject::Tenancy)?;
        }
        match self.driver {
            Driver::Any => {}
            Driver::Id(d) if d < 64 && h.drivers & (1 << d) != 0 => {}
            Driver::Id(d)
                if d >= 64
                    && h.drivers_spill
                    && c.node(h.slot).is_some_and(|n| n.drivers.contains(&d)) => {}
            _ => return Err(Reject::Driver),
        }
        if h.cpu_used.saturating_add(self.cpu) > h.cap_cpu {
            return Err(Reject::Cpus);
        }
        if h.mem_used.saturating_add(self.mem) > h.cap_mem {
            return Err(Reject::Mem);
        }
        if h.disk_used.saturating_add(self.disk) > h.cap_disk {
            return Err(Reject::Disk);
        }
        if self.dup_ports {
            return Err(Reject::DuplicatePorts);
        }
        if !self.exact_ports.is_empty() {
            let Some(n) = c.node(h.slot) else {
                return Err(Reject::HostPort(0));
            };
            for (i, &p) in self.exact_ports.iter().enumerate() {
                if !n.port_in_range(p) || n.port_used(p) {
                    return Err(Reject::HostPort(i));
                }
            }
        }
        // Exact ports passed, so they are all free and inside the ranges.
        if self.dyn_ports > 0 && h.free_ports < self.dyn_ports + self.exact_ports.len() as u32 {
            return Err(Reject::NoFreePorts);
        }
        if self.pinned > h.free_cores {
            return Err(Reject::Cores);
        }
        for (i, ch) in self.checks.iter().enumerate() {
            if !self.passes(c, ch, h, u32::MAX) {
                return Err(Reject::Constraint(i));
            }
        }
        Ok(())
    }

    #[inline]
    fn value(c: &Cluster, ch: &Check<'_>, h: &NodeHot) -> Option<u32> {
        let f = ch.field?;
        h.value_of(f, || c.node(h.slot).and_then(|n| n.value_of(f)))
    }

    #[inline]
    fn passes(&self, c: &Cluster, ch: &Check<'_>, h: &NodeHot, threshold: u32) -> bool {
        let values: &Interner = &c.values;
        let val = Self::value(c, ch, h);
        if let Kind::Unlike(re) = ch.kind {
            return val.is_none_or(|v| !re.matches(values, v));
        }
        // A node lacking the field fails every other operator.
        let Some(v) = val else { return false };
        match ch.kind {
            Kind::Never => false,
            Kind::Unique => ch.count(v) == 0,
            Kind::Equals(want) => want == Some(v),
            Kind::Same => ch.counts.is_none_or(|m| m.is_empty() || m.contains_key(&v)),
            Kind::Like(re) => re.matches(values, v),
            Kind::Unlike(_) => true, // handled above
            // The base check passes u32::MAX: there GROUP_BY only requires the field.
            Kind::MaxPer(k) => ch.count(v) < k,
            Kind::GroupBy => ch.count(v) <= threshold,
        }
    }

    /// The app's count on the node's value for GROUP_BY check `i` (None: node lacks field).
    #[inline]
    fn group_count(&self, i: usize, c: &Cluster, h: &NodeHot) -> Option<u32> {
        let ch = &self.checks[i];
        Self::value(c, ch, h).map(|v| ch.count(v))
    }
}

/// Per-reason node counts of one scan.
pub(crate) struct Tally {
    fixed: [usize; 8],
    host_ports: Vec<usize>,
    constraints: Vec<usize>,
    /// Nodes not matching the namespace's selector.
    selector: usize,
    /// Per dedicated namespace of `Tenancy`: nodes it owns.
    dedicated: Vec<usize>,
}

impl Tally {
    pub(crate) fn new(p: &Prepared<'_>) -> Self {
        Self {
            fixed: [0; 8],
            host_ports: vec![0; p.exact_ports.len()],
            constraints: vec![0; p.checks.len()],
            selector: 0,
            dedicated: vec![0; p.tenancy.others_len()],
        }
    }

    #[inline]
    fn add(&mut self, r: Reject) {
        match r {
            Reject::NotSchedulable => self.fixed[0] += 1,
            Reject::Tenancy(TenancyReject::Selector) => self.selector += 1,
            Reject::Tenancy(TenancyReject::Dedicated(i)) => self.dedicated[i] += 1,
            Reject::Driver => self.fixed[1] += 1,
            Reject::Cpus => self.fixed[2] += 1,
            Reject::Mem => self.fixed[3] += 1,
            Reject::Disk => self.fixed[4] += 1,
            Reject::DuplicatePorts => self.fixed[5] += 1,
            Reject::NoFreePorts => self.fixed[6] += 1,
            Reject::HostPort(i) => self.host_ports[i] += 1,
            Reject::Cores => self.fixed[7] += 1,
            Reject::Constraint(i) => self.constraints[i] += 1,
        }
    }

    pub(crate) fn into_unplaced(self, p: &Prepared<'_>, c: &Cluster) -> Unplaced {
        let mut reasons = BTreeMap::new();
        let names = [
            "node not schedulable".to_string(),
            format!("driver {} not available", p.req.driver),
            "insufficient cpus".to_string(),
            "insufficient mem".to_string(),
            "insufficient disk".to_string(),
            "duplicate host ports requested".to_string(),
            "no free ports".to_string(),
            "not enough free cores to pin".to_string(),
        ];
        for (name, &n) in names.into_iter().zip(self.fixed.iter()) {
            if n > 0 {
                *reasons.entry(name).or_insert(0) += n;
            }
        }
        for (i, &n) in self.host_ports.iter().enumerate() {
            if n > 0 {
                *reasons
                    .entry(format!("port {} not available", p.exact_ports[i]))
                    .or_insert(0) += n;
            }
        }
        if self.selector > 0 {
            *reasons
                .entry(p.tenancy.reason(TenancyReject::Selector))
                .or_insert(0) += self.selector;
        }
        for (i, &n) in self.dedicated.iter().enumerate() {
            if n > 0 {
                *reasons
                    .entry(p.tenancy.reason(TenancyReject::Dedicated(i)))
                    .or_insert(0) += n;
            }
        }
        for (i, &n) in self.constraints.iter().enumerate() {
            if n > 0 {
                *reasons
                    .entry(format!("constraint {}", p.req.constraints[i]))
                    .or_insert(0) += n;
            }
        }
        Unplaced {
            nodes_total: c.order.len(),
            reasons,
        }
    }
}

pub(crate) struct ScanResult {
    pub best: Option<u32>,
    /// Set when no node was feasible but some failed only GROUP_BY: per check, the minimum
    /// count among nodes that passed every other filter (u32::MAX for other checks).
    pub group_fallback: Option<Vec<u32>>,
}

/// Visits nodes in `order` starting at `start`, keeps the best-scoring of the first `limit`
/// feasible ones. Visits every node only when fewer than `limit` are feasible.
pub(crate) fn scan(
    c: &Cluster,
    p: &Prepared<'_>,
    thresholds: &[u32],
    start: usize,
    limit: usize,
    tally: &mut Tally,
) -> ScanResult {
    let (tail, head) = c.order.split_at(start.min(c.order.len()));
    let mut best: Option<(f64, u32)> = None;
    let mut found = 0usize;
    let mut fallback: Option<Vec<u32>> = None;
    for h in head.iter().chain(tail.iter()) {
        if let Err(r) = p.check_base(c, h) {
            tally.add(r);
            continue;
        }
        if p.has_group_by {
            let mut failed = None;
            for (i, &t) in thresholds.iter().enumerate() {
                if t != u32::MAX && !p.passes(c, &p.checks[i], h, t) {
                    failed = Some(i);
                    break;
                }
            }
            if let Some(i) = failed {
                tally.add(Reject::Constraint(i));
                let mins = fallback.get_or_insert_with(|| vec![u32::MAX; thresholds.len()]);
                for (j, &t) in thresholds.iter().enumerate() {
                    if t != u32::MAX
                        && let Some(cnt) = p.group_count(j, c, h)
                    {
                        mins[j] = mins[j].min(cnt);
                    }
                }
                continue;
            }
        }
        let s = score::score(p, h);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, h.slot));
        }
        found += 1;
        if found >= limit {
            break;
        }
    }
    ScanResult {
        best: best.map(|b| b.1),
        group_fallback: if best.is_none() { fallback } else { None },
    }
}
