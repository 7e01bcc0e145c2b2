//! The incremental cluster model: nodes with their used capacity, ports and pinned cores,
//! tasks, and per-app counts per node and per (field, value) for O(1) constraint checks.

use crate::fxhash::FxMap;
use crate::{NodeUsage, Placement, PlacementRequest, SchedNode, TaskFootprint};
use rand::Rng;
use rand::rngs::SmallRng;

/// Field id of the node's hostname (`hostname` / `@hostname`).
pub(crate) const HOSTNAME_FIELD: u32 = 0;
const MILLI: f64 = 1000.0;
/// Slack for float noise when converting to thousandths (0.1 * 1000 = 100.00000000000001).
const EPS: f64 = 1e-6;

/// A requested amount in thousandths, rounded up.
pub(crate) fn req_milli(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x * MILLI - EPS).ceil() as u64 // saturates for huge values: never fits
    }
}

/// A capacity in thousandths, rounded down.
pub(crate) fn cap_milli(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x * MILLI + EPS).floor() as u64
    }
}

fn from_milli(x: u64) -> f64 {
    x as f64 / MILLI
}

/// String <-> dense id, so the hot path compares and hashes integers.
#[derive(Default)]
pub(crate) struct Interner {
    map: FxMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.map.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.to_string());
        self.map.insert(s.to_string(), id);
        id
    }
    pub(crate) fn get(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }
    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s.as_str())
    }
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

pub(crate) struct NodeState {
    pub info: SchedNode,
    /// Index in `Cluster::order`.
    pub pos: usize,
    pub cap_cpu: u64,
    pub cap_mem: u64,
    pub cap_disk: u64,
    /// CPU of shared tasks.
    pub used_cpu: u64,
    /// CPU held by pinned tasks (whole cores).
    pub pinned_cpu: u64,
    pub used_mem: u64,
    pub used_disk: u64,
    pub drivers: Vec<u32>,
    /// Sorted, merged, inclusive.
    pub ranges: Vec<(u16, u16)>,
    pub range_total: u32,
    /// Sorted multiset of ports in use (a duplicate can only come from `add_task`).
    pub used_ports: Vec<u16>,
    /// Distinct used ports that lie inside `ranges`.
    pub ports_in_range_used: u32,
    /// Holders per core id.
    pub core_refs: Vec<u16>,
    /// Distinct held core ids below `info.cores`.
    pub cores_held: u32,
    /// (field, value), hostname first; few entries, so a linear scan beats hashing.
    pub attrs: Vec<(u32, u32)>,
    pub tasks: Vec<u32>,
}

impl NodeState {
    #[inline]
    pub(crate) fn value_of(&self, field: u32) -> Option<u32> {
        self.attrs.iter().find(|a| a.0 == field).map(|a| a.1)
    }
    #[inline]
    pub(crate) fn port_used(&self, p: u16) -> bool {
        self.used_ports.binary_search(&p).is_ok()
    }
    #[inline]
    pub(crate) fn port_in_range(&self, p: u16) -> bool {
        self.ranges.iter().any(|&(b, e)| b <= p && p <= e)
    }
    #[inline]
    pub(crate) fn free_range_ports(&self) -> u32 {
        self.range_total.saturating_sub(self.ports_in_range_used)
    }
    #[inline]
    pub(crate) fn free_cores(&self) -> u32 {
        self.info.cores.saturating_sub(self.cores_held)
    }
    #[inline]
    pub(crate) fn cpu_in_use(&self) -> u64 {
        self.used_cpu.saturating_add(self.pinned_cpu)
    }
}

/// Attributes kept inline in `NodeHot`; more spill to `NodeState::attrs`.
const INLINE_ATTRS: usize = 6;

/// The part of a node every scan reads, copied out of `NodeState` after each change and
/// stored in scan order, so a scan walks memory sequentially instead of chasing pointers.
#[derive(Clone)]
pub(crate) struct NodeHot {
    pub slot: u32,
    pub schedulable: bool,
    /// More than `INLINE_ATTRS` attributes: look the rest up in `NodeState`.
    pub attrs_spill: bool,
    /// A driver id >= 64 exists on the node: check `NodeState::drivers`.
    pub drivers_spill: bool,
    pub n_attrs: u8,
    pub free_ports: u32,
    pub free_cores: u32,
    /// Bit d set: driver id d (< 64) available.
    pub drivers: u64,
    pub cap_cpu: u64,
    pub cap_mem: u64,
    pub cap_disk: u64,
    /// Shared plus pinned.
    pub cpu_used: u64,
    pub mem_used: u64,
    pub disk_used: u64,
    pub attrs: [(u32, u32); INLINE_ATTRS],
}

impl NodeHot {
    fn of(slot: u32, n: &NodeState) -> Self {
        let mut attrs = [(u32::MAX, 0); INLINE_ATTRS];
        for (dst, src) in attrs.iter_mut().zip(&n.attrs) {
            *dst = *src;
        }
        let mut drivers = 0u64;
        let mut drivers_spill = false;
        for &d in &n.drivers {
            if d < 64 {
                drivers |= 1 << d;
            } else {
                drivers_spill = true;
            }
        }
        NodeHot {
            slot,
            schedulable: n.info.schedulable,
            attrs_spill: n.attrs.len() > INLINE_ATTRS,
            drivers_spill,
            n_attrs: n.attrs.len().min(INLINE_ATTRS) as u8,
            free_ports: n.free_range_ports(),
            free_cores: n.free_cores(),
            drivers,
            cap_cpu: n.cap_cpu,
            cap_mem: n.cap_mem,
            cap_disk: n.cap_disk,
            cpu_used: n.cpu_in_use(),
            mem_used: n.used_mem,
            disk_used: n.used_disk,
            attrs,
        }
    }

    /// The node's value for `field`; `cold` is consulted only for spilled attributes.
    #[inline]
    pub(crate) fn value_of(&self, field: u32, cold: impl FnOnce() -> Option<u32>) -> Option<u32> {
        for &(f, v) in &self.attrs[..self.n_attrs as usize] {
            if f == field {
                return Some(v);
            }
        }
        if self.attrs_spill { cold() } else { None }
    }
}

pub(crate) struct TaskRec {
    pub id: String,
    pub app: u32,
    /// None while the node is unknown (see `Cluster::pending`).
    pub node: Option<u32>,
    pub node_id: String,
    pub cpu: u64,
    pub mem: u64,
    pub disk: u64,
    pub ports: Vec<u16>,
    pub cpuset: Vec<u32>,
}

#[derive(Default)]
pub(crate) struct AppState {
    /// field -> value -> tasks of this app on nodes with that value (no zero entries).
    pub fields: FxMap<u32, FxMap<u32, u32>>,
    /// node slot -> tasks of this app on it (no zero entries).
    pub node_counts: FxMap<u32, u32>,
}

pub(crate) struct Cluster {
    pub fields: Interner,
    pub values: Interner,
    pub drivers: Interner,
    pub nodes: Vec<Option<NodeState>>,
    free_slots: Vec<u32>,
    pub node_ids: FxMap<String, u32>,
    /// Live node slots in a random permutation (each new node is inserted at a random
    /// position), so scanning from a random offset approximates Nomad's shuffle without
    /// shuffling per placement.
    pub order: Vec<NodeHot>,
    /// field -> value -> number of nodes carrying it (for GROUP_BY's minimum).
    pub value_nodes: FxMap<u32, FxMap<u32, u32>>,
    pub tasks: Vec<Option<TaskRec>>,
    free_tasks: Vec<u32>,
    pub task_ids: FxMap<String, u32>,
    /// Tasks whose node is not known yet, by node id.
    pending: FxMap<String, Vec<u32>>,
    pub apps: Vec<AppState>,
    pub app_ids: FxMap<String, u32>,
}

impl Cluster {
    pub(crate) fn new() -> Self {
        let mut fields = Interner::default();
        let host = fields.intern("hostname");
        debug_assert_eq!(host, HOSTNAME_FIELD);
        Self {
            fields,
            values: Interner::default(),
            drivers: Interner::default(),
            nodes: Vec::new(),
            free_slots: Vec::new(),
            node_ids: FxMap::default(),
            order: Vec::new(),
            value_nodes: FxMap::default(),
            tasks: Vec::new(),
            free_tasks: Vec::new(),
            task_ids: FxMap::default(),
            pending: FxMap::default(),
            apps: Vec::new(),
            app_ids: FxMap::default(),
        }
    }

    pub(crate) fn reserve(&mut self, nodes: usize, tasks: usize) {
        self.nodes.reserve(nodes.saturating_sub(self.nodes.len()));
        self.order.reserve(nodes.saturating_sub(self.order.len()));
        self.node_ids
            .reserve(nodes.saturating_sub(self.node_ids.len()));
        self.tasks.reserve(tasks.saturating_sub(self.tasks.len()));
        self.task_ids
            .reserve(tasks.saturating_sub(self.task_ids.len()));
    }

    #[inline]
    pub(crate) fn node(&self, slot: u32) -> Option<&NodeState> {
        self.nodes.get(slot as usize).and_then(|n| n.as_ref())
    }

    fn node_mut(&mut self, slot: u32) -> Option<&mut NodeState> {
        self.nodes.get_mut(slot as usize).and_then(|n| n.as_mut())
    }

    fn build_node(&mut self, info: SchedNode, pos: usize) -> NodeState {
        let mut attrs = vec![(HOSTNAME_FIELD, self.values.intern(&info.hostname))];
        for (k, v) in &info.attributes {
            if k == "hostname" {
                continue; // the field always means the hostname
            }
            attrs.push((self.fields.intern(k), self.values.intern(v)));
        }
        let drivers = info
            .drivers
            .iter()
            .map(|d| self.drivers.intern(d))
            .collect();
        let mut ranges: Vec<(u16, u16)> = info
            .port_ranges
            .iter()
            .filter(|r| r.begin <= r.end)
            .map(|r| (r.begin, r.end))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (b, e) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(b) <= u32::from(last.1) + 1 => last.1 = last.1.max(e),
                _ => merged.push((b, e)),
            }
        }
        let range_total = merged
            .iter()
            .map(|&(b, e)| u32::from(e) - u32::from(b) + 1)
            .sum();
        NodeState {
            pos,
            cap_cpu: cap_milli(info.allocatable.cpus),
            cap_mem: cap_milli(info.allocatable.mem),
            cap_disk: cap_milli(info.allocatable.disk),
            used_cpu: 0,
            pinned_cpu: 0,
            used_mem: 0,
            used_disk: 0,
            drivers,
            ranges: merged,
            range_total,
            used_ports: Vec::new(),
            ports_in_range_used: 0,
            core_refs: vec![0; info.cores as usize],
            cores_held: 0,
            attrs,
            tasks: Vec::new(),
            info,
        }
    }

    fn index_values(&mut self, slot: u32, add: bool) {
        let Some(node) = self.node(slot) else { return };
        let attrs = node.attrs.clone();
        for (f, v) in attrs {
            let per = self.value_nodes.entry(f).or_default();
            if add {
                *per.entry(v).or_insert(0) += 1;
            } else if let Some(c) = per.get_mut(&v) {
                *c -= 1;
                if *c == 0 {
                    per.remove(&v);
                }
            }
        }
    }

    pub(crate) fn upsert_node(&mut self, info: SchedNode, rng: &mut SmallRng) {
        let id = info.id.clone();
        if let Some(&slot) = self.node_ids.get(&id) {
            // Rebuild the node from scratch and re-attach its tasks, so attribute, port-range
            // and core changes are reflected in every count.
            let tasks = self.node(slot).map(|n| n.tasks.clone()).unwrap_or_default();
            for &t in &tasks {
                self.detach(t);
            }
            self.index_values(slot, false);
            let pos = self.node(slot).map_or(0, |n| n.pos);
            let node = self.build_node(info, pos);
            self.nodes[slot as usize] = Some(node);
            self.index_values(slot, true);
            for t in tasks {
                self.attach(t, slot);
            }
            self.refresh(slot);
            return;
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.nodes.push(None);
                (self.nodes.len() - 1) as u32
            }
        };
        // Insert at a random position of `order` (the displaced node moves to the end).
        let len = self.order.len();
        let j = rng.random_range(0..=len);
        let node = self.build_node(info, j);
        let hot = NodeHot::of(slot, &node);
        self.nodes[slot as usize] = Some(node);
        self.order.push(hot);
        if j != len {
            self.order.swap(j, len);
            let moved = self.order[len].slot;
            if let Some(m) = self.node_mut(moved) {
                m.pos = len;
            }
        }
        self.node_ids.insert(id.clone(), slot);
        self.index_values(slot, true);
        for t in self.pending.remove(&id).unwrap_or_default() {
            self.attach(t, slot);
        }
    }

    pub(crate) fn remove_node(&mut self, node_id: &str) {
        if let Some(list) = self.pending.remove(node_id) {
            for t in list {
                self.forget_task(t);
            }
        }
        let Some(slot) = self.node_ids.remove(node_id) else {
            return;
        };
        let tasks = self.node(slot).map(|n| n.tasks.clone()).unwrap_or_default();
        for t in tasks {
            self.detach(t);
            self.forget_task(t);
        }
        self.index_values(slot, false);
        if let Some(pos) = self.node(slot).map(|n| n.pos) {
            self.order.swap_remove(pos);
            if let Some(moved) = self.order.get(pos).map(|h| h.slot)
                && let Some(m) = self.node_mut(moved)
            {
                m.pos = pos;
            }
        }
        self.nodes[slot as usize] = None;
        self.free_slots.push(slot);
    }

    fn app_index(&mut self, app_id: &str) -> u32 {
        if let Some(&a) = self.app_ids.get(app_id) {
            return a;
        }
        let a = self.apps.len() as u32;
        self.apps.push(AppState::default());
        self.app_ids.insert(app_id.to_string(), a);
        a
    }

    fn new_task(&mut self, rec: TaskRec) -> u32 {
        let id = rec.id.clone();
        let idx = match self.free_tasks.pop() {
            Some(i) => {
                self.tasks[i as usize] = Some(rec);
                i
            }
            None => {
                self.tasks.push(Some(rec));
                (self.tasks.len() - 1) as u32
            }
        };
        self.task_ids.insert(id, idx);
        idx
    }

    fn forget_task(&mut self, idx: u32) {
        if let Some(rec) = self.tasks.get_mut(idx as usize).and_then(|t| t.take()) {
            self.task_ids.remove(&rec.id);
            self.free_tasks.push(idx);
        }
    }

    pub(crate) fn add_task(&mut self, t: TaskFootprint) {
        if self.task_ids.contains_key(&t.task_id) {
            self.remove_task(&t.task_id);
        }
        let app = self.app_index(&t.app_id);
        let pinned = !t.cpuset.is_empty();
        let rec = TaskRec {
            id: t.task_id,
            app,
            node: None,
            node_id: t.node_id,
            cpu: if pinned {
                0
            } else {
                req_milli(t.resources.cpus)
            },
            mem: req_milli(t.resources.mem),
            disk: req_milli(t.resources.disk),
            ports: t.ports,
            cpuset: t.cpuset,
        };
        let node_id = rec.node_id.clone();
        let idx = self.new_task(rec);
        match self.node_ids.get(&node_id) {
            Some(&slot) => self.attach(idx, slot),
            None => self.pending.entry(node_id).or_default().push(idx),
        }
    }

    pub(crate) fn remove_task(&mut self, task_id: &str) {
        let Some(&idx) = self.task_ids.get(task_id) else {
            return;
        };
        let Some(rec) = self.tasks.get(idx as usize).and_then(|t| t.as_ref()) else {
            return;
        };
        if rec.node.is_some() {
            self.detach(idx);
        } else if let Some(list) = self.pending.get_mut(&rec.node_id) {
            list.retain(|&t| t != idx);
            if list.is_empty() {
                let key = rec.node_id.clone();
                self.pending.remove(&key);
            }
        }
        self.forget_task(idx);
    }

    /// Counts task `idx` on node `slot`: resources, ports, cores, app counts.
    fn attach(&mut self, idx: u32, slot: u32) {
        let Some(rec) = self.tasks.get_mut(idx as usize).and_then(|t| t.as_mut()) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(slot as usize).and_then(|n| n.as_mut()) else {
            return;
        };
        rec.node = Some(slot);
        node.used_cpu = node.used_cpu.saturating_add(rec.cpu);
        node.pinned_cpu = node
            .pinned_cpu
            .saturating_add(rec.cpuset.len() as u64 * 1000);
        node.used_mem = node.used_mem.saturating_add(rec.mem);
        node.used_disk = node.used_disk.saturating_add(rec.disk);
        for &p in &rec.ports {
            let at = node.used_ports.partition_point(|&x| x < p);
            let fresh = node.used_ports.get(at) != Some(&p);
            node.used_ports.insert(at, p);
            if fresh && node.port_in_range(p) {
                node.ports_in_range_used += 1;
            }
        }
        for &c in &rec.cpuset {
            let c = c as usize;
            if c >= node.core_refs.len() {
                node.core_refs.resize(c + 1, 0);
            }
            if node.core_refs[c] == 0 && c < node.info.cores as usize {
                node.cores_held += 1;
            }
            node.core_refs[c] = node.core_refs[c].saturating_add(1);
        }
        node.tasks.push(idx);
        let app = &mut self.apps[rec.app as usize];
        *app.node_counts.entry(slot).or_insert(0) += 1;
        for &(f, v) in &node.attrs {
            *app.fields.entry(f).or_default().entry(v).or_insert(0) += 1;
        }
        self.refresh(slot);
    }

    /// Re-copies the node's hot part into `order`.
    fn refresh(&mut self, slot: u32) {
        if let Some(node) = self.nodes.get(slot as usize).and_then(|n| n.as_ref())
            && let Some(h) = self.order.get_mut(node.pos)
            && h.slot == slot
        {
            *h = NodeHot::of(slot, node);
        }
    }

    /// Exact inverse of `attach`; leaves the task record in place (unattached).
    fn detach(&mut self, idx: u32) {
        let Some(rec) = self.tasks.get_mut(idx as usize).and_then(|t| t.as_mut()) else {
            return;
        };
        let Some(slot) = rec.node.take() else { return };
        let Some(node) = self.nodes.get_mut(slot as usize).and_then(|n| n.as_mut()) else {
            return;
        };
        node.used_cpu = node.used_cpu.saturating_sub(rec.cpu);
        node.pinned_cpu = node
            .pinned_cpu
            .saturating_sub(rec.cpuset.len() as u64 * 1000);
        node.used_mem = node.used_mem.saturating_sub(rec.mem);
        node.used_disk = node.used_disk.saturating_sub(rec.disk);
        for &p in &rec.ports {
            if let Ok(at) = node.used_ports.binary_search(&p) {
                node.used_ports.remove(at);
                if !node.port_used(p) && node.port_in_range(p) {
                    node.ports_in_range_used = node.ports_in_range_used.saturating_sub(1);
                }
            }
        }
        for &c in &rec.cpuset {
            if let Some(r) = node.core_refs.get_mut(c as usize) {
                *r = r.saturating_sub(1);
                if *r == 0 && c < node.info.cores {
                    node.cores_held = node.cores_held.saturating_sub(1);
                }
            }
        }
        if let Some(i) = node.tasks.iter().position(|&t| t == idx) {
            node.tasks.swap_remove(i);
        }
        let app = &mut self.apps[rec.app as usize];
        if let Some(c) = app.node_counts.get_mut(&slot) {
            *c -= 1;
            if *c == 0 {
                app.node_counts.remove(&slot);
            }
        }
        for &(f, v) in &node.attrs {
            if let Some(per) = app.fields.get_mut(&f) {
                if let Some(c) = per.get_mut(&v) {
                    *c -= 1;
                    if *c == 0 {
                        per.remove(&v);
                    }
                }
                if per.is_empty() {
                    app.fields.remove(&f);
                }
            }
        }
        self.refresh(slot);
    }

    /// Records a decided placement on `slot`: picks ports and cores, then attaches.
    pub(crate) fn commit(
        &mut self,
        slot: u32,
        task_id: &str,
        req: &PlacementRequest,
        rng: &mut SmallRng,
    ) -> Placement {
        let app = self.app_index(&req.app_id);
        let (ports, cpuset, node_id, host) = match self.node(slot) {
            Some(node) => (
                pick_ports(node, &req.ports, rng),
                pick_cores(node, req.pinned_cores),
                node.info.id.clone(),
                node.info.hostname.clone(),
            ),
            None => (Vec::new(), Vec::new(), String::new(), String::new()),
        };
        let pinned = req.pinned_cores > 0;
        let rec = TaskRec {
            id: task_id.to_string(),
            app,
            node: None,
            node_id: node_id.clone(),
            cpu: if pinned {
                0
            } else {
                req_milli(req.resources.cpus)
            },
            mem: req_milli(req.resources.mem),
            disk: req_milli(req.resources.disk),
            ports: ports.clone(),
            cpuset: cpuset.clone(),
        };
        let idx = self.new_task(rec);
        self.attach(idx, slot);
        Placement {
            node_id,
            host,
            ports,
            cpuset,
        }
    }

    pub(crate) fn usage(&self, node_id: &str) -> Option<NodeUsage> {
        let node = self.node(*self.node_ids.get(node_id)?)?;
        let mut ports = node.used_ports.clone();
        ports.dedup();
        Some(NodeUsage {
            cpus: from_milli(node.cpu_in_use()),
            mem: from_milli(node.used_mem),
            disk: from_milli(node.used_disk),
            tasks: node.tasks.len(),
            pinned_cores: (0..node.core_refs.len() as u32)
                .filter(|&c| node.core_refs[c as usize] > 0)
                .collect(),
            ports,
        })
    }
}

/// Exact ports as asked; each 0 gets a free port from the node's ranges, scanning upward
/// from a random offset (wrapping) so that apps do not all pile onto the lowest ports.
/// Feasibility was checked before, so enough free ports exist.
fn pick_ports(node: &NodeState, wanted: &[u16], rng: &mut SmallRng) -> Vec<u16> {
    let dynamic = wanted.iter().filter(|&&p| p == 0).count();
    if dynamic == 0 || node.range_total == 0 {
        return wanted.to_vec();
    }
    let total = node.range_total;
    let mut cursor = rng.random_range(0..total);
    let mut out = Vec::with_capacity(wanted.len());
    let mut chosen: Vec<u16> = Vec::with_capacity(dynamic);
    for &w in wanted {
        if w != 0 {
            out.push(w);
            continue;
        }
        let mut got = 0;
        for _ in 0..total {
            let p = nth_port(&node.ranges, cursor);
            cursor = (cursor + 1) % total;
            if !node.port_used(p) && !wanted.contains(&p) && !chosen.contains(&p) {
                got = p;
                break;
            }
        }
        chosen.push(got);
        out.push(got);
    }
    out
}

fn nth_port(ranges: &[(u16, u16)], mut i: u32) -> u16 {
    for &(b, e) in ranges {
        let len = u32::from(e) - u32::from(b) + 1;
        if i < len {
            return (u32::from(b) + i) as u16;
        }
        i -= len;
    }
    0
}

/// Lowest free core ids.
fn pick_cores(node: &NodeState, n: u32) -> Vec<u32> {
    (0..node.info.cores)
        .filter(|&c| node.core_refs.get(c as usize).is_none_or(|&r| r == 0))
        .take(n as usize)
        .collect()
}
