//! The control plane's state: an in-memory model of every app, task, node and deployment,
//! written through to the durable store.
//!
//! Mutations happen under one short, synchronous lock: validate, change memory, record the
//! store ops in a [`Changes`]. The ops are queued for the store *while the lock is held*, so
//! the store sees writes in the same order memory did; the caller then awaits the fsync before
//! acknowledging. Tasks become visible to agents only once their creation is durable, so a
//! server crash can never leave an agent running a task the server has forgotten.

use berth_core::app::AppDefinition;
use berth_core::deployment::Deployment;
use berth_core::event::Event;
use berth_core::namespace::{Namespace, Usage};
use berth_core::node::Node;
use berth_core::task::Task;
use berth_scheduler::{SchedNode, Scheduler, TaskFootprint};
use berth_store::{Op, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

pub const K_APPS: &str = "/berth/apps/";
pub const K_VERSIONS: &str = "/berth/versions/";
pub const K_TASKS: &str = "/berth/tasks/";
pub const K_NODES: &str = "/berth/nodes/";
pub const K_DEPLOYMENTS: &str = "/berth/deployments/";
pub const K_GROUPS: &str = "/berth/groups/";
pub const K_FAILURES: &str = "/berth/failures/";
pub const K_DELAYS: &str = "/berth/delays/";
/// Secrets, sealed (see [`crate::secrets`]): the store never holds a value in the clear.
pub const K_SECRETS: &str = "/berth/secrets/";
pub const K_NAMESPACES: &str = "/berth/namespaces/";
/// Chronos jobs ([`crate::jobs::JobRecord`]) by name.
pub const K_JOBS: &str = "/berth/jobs/";
/// Job runs: `{job}/{run id, 20 digits}`.
pub const K_JOBRUNS: &str = "/berth/jobruns/";

/// The layout of the records under `/berth/`: bumped when a change cannot be read by an
/// older server, which then refuses to start on the store instead of misreading it.
pub const K_FORMAT: &str = "/berth/meta/format";
pub const STORE_FORMAT: u64 = 1;

/// Writes the store format on first start; refuses a store written in a newer format.
pub async fn check_store_format(store: &dyn Store) -> Result<(), crate::StartError> {
    use berth_store::StoreExt;
    let err = |e: StoreError| crate::StartError::Store(e.to_string());
    match store.get(K_FORMAT).await.map_err(err)? {
        None => {
            let record =
                serde_json::json!({"format": STORE_FORMAT, "writtenBy": env!("CARGO_PKG_VERSION")});
            store
                .create(K_FORMAT, record.to_string())
                .await
                .map_err(err)?;
            Ok(())
        }
        Some(kv) => {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            match v["format"].as_u64() {
                Some(f) if f <= STORE_FORMAT => Ok(()),
                _ => Err(crate::StartError::Format(format!(
                    "the store holds Berth data in format {} (written by Berth {}), which \
                     this server (format {STORE_FORMAT}, Berth {}) cannot read: upgrade this \
                     server, or point it at another store",
                    v["format"],
                    v["writtenBy"].as_str().unwrap_or("?"),
                    env!("CARGO_PKG_VERSION")
                ))),
            }
        }
    }
}

/// A node's status reports in flight, and when its last one was answered (ms).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportsInFlight {
    pub handling: u32,
    pub answered_at: i64,
}

/// How many versions of an app are kept (Marathon's default `zk_max_versions` is 50).
pub const MAX_VERSIONS: usize = 50;

pub fn version_key(app_id: &str, version: &str) -> String {
    format!("{K_VERSIONS}{app_id}|{version}")
}

/// Launch back-off after failures (`backoffSeconds * backoffFactor^n`, capped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchDelay {
    pub failures: u32,
    /// Epoch ms before which no new task of the app is launched.
    pub until: i64,
    /// The app version the failures belong to: a new version resets the delay.
    pub version: String,
}

/// Why an app's instances could not all be placed, as of the last attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct UnplacedInfo {
    pub count: usize,
    pub since: i64,
    pub last_attempt: i64,
    pub nodes_total: usize,
    pub reasons: BTreeMap<String, usize>,
    pub summary: String,
}

/// The store ops and side effects produced by one mutation.
#[derive(Default)]
pub struct Changes {
    pub ops: Vec<Op>,
    pub events: Vec<Event>,
    /// Tasks created by this mutation: published to agents once durable.
    pub new_tasks: Vec<String>,
    /// Nodes whose assignment set changed.
    pub nodes: BTreeSet<String>,
    /// `(node, task)` pairs whose assignment changed (added, changed or removed): the
    /// node's agent receives just these in its next delta.
    pub assigned: Vec<(String, String)>,
    /// Apps whose tasks changed: the controller looks at them in its next pass.
    pub apps: BTreeSet<String>,
    /// Set once `ops` were handed to the persister.
    pub persisted: bool,
    /// Jobs or their runs changed: the job controller looks again.
    pub jobs: bool,
}

impl Changes {
    pub fn put<T: Serialize>(&mut self, key: String, value: &T) {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.ops.push(Op::Put { key, value: bytes }),
            // Serialising our own types cannot fail (no maps with non-string keys).
            Err(e) => tracing::error!(%key, error = %e, "failed to encode value"),
        }
    }

    pub fn delete(&mut self, key: String) {
        self.ops.push(Op::Delete { key });
    }

    pub fn event(&mut self, e: Event) {
        self.events.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.events.is_empty() && self.nodes.is_empty()
    }

    fn assignment_changed(&mut self, t: &Task) {
        self.nodes.insert(t.node_id.clone());
        self.assigned.push((t.node_id.clone(), t.id.clone()));
        self.apps.insert(t.app_id.clone());
    }
}

/// Tombstones kept per node for assignment deltas; an agent further behind gets a full list.
const MAX_TOMBSTONES: usize = 4096;

/// What a node's agent needs to receive deltas: its generation and the recent removals.
pub struct NodeFeed {
    pub generation: watch::Sender<u64>,
    /// `(generation, task id)` of tasks no longer assigned, oldest first.
    pub removed: std::collections::VecDeque<(u64, String)>,
    /// Deltas can be computed only for `after >= floor`.
    pub floor: u64,
}

impl NodeFeed {
    /// Generations start at the server's start time in µs: an agent's generation from an
    /// earlier server run is always below the floor, so it gets a full list, never a delta
    /// computed against someone else's history.
    fn new() -> Self {
        let base = (berth_core::time::now_millis().max(1) as u64).saturating_mul(1000);
        Self {
            generation: watch::channel(base).0,
            removed: Default::default(),
            floor: base,
        }
    }
}

/// A batch of ops for the persister, with the channel that reports its fsync.
pub struct PersistRequest {
    pub ops: Vec<Op>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Writes queued op batches in order, coalescing everything pending into one transaction
/// (and so one fsync): thousands of task updates a second cost a handful of commits.
/// Writes queued changes in coalesced batches. With a `fence` (the leader's guard, see
/// `berth_store::election`), every batch carries it, and a refused batch fails its requests:
/// a server that lost leadership writes nothing more.
pub async fn run_persister(
    store: Arc<dyn Store>,
    fence: Option<berth_store::Compare>,
    mut rx: mpsc::UnboundedReceiver<PersistRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let ops: Vec<Op> = batch
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.ops))
            .collect();
        let started = std::time::Instant::now();
        let n_ops = ops.len();
        let first_key = match ops.first() {
            Some(Op::Put { key, .. } | Op::Delete { key }) => key.clone(),
            Some(Op::DeletePrefix { prefix }) => prefix.clone(),
            None => String::new(),
        };
        let result = if ops.is_empty() {
            Ok(())
        } else {
            match store
                .txn(berth_store::Txn {
                    compares: fence.iter().cloned().collect(),
                    success: ops,
                    failure: vec![],
                })
                .await
            {
                Ok(r) if r.succeeded => Ok(()),
                Ok(_) => Err("this server is no longer the leader (its fence no longer \
                              holds): the write was refused"
                    .to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
        }
        tracing::debug!(
            requests = batch.len(),
            ops = n_ops,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            first_key,
            "store batch written"
        );
        for r in batch {
            let _ = r.done.send(result.clone());
        }
    }
}

/// Decodes a stored record; a record that no longer decodes is logged and skipped.
fn decode_as<T: serde::de::DeserializeOwned>(key: &str, v: Value) -> Result<T, ()> {
    serde_json::from_value(v)
        .map_err(|e| tracing::error!(key, error = %e, "skipping undecodable record"))
}

pub struct Cluster {
    pub apps: BTreeMap<String, Arc<AppDefinition>>,
    pub versions: HashMap<String, BTreeMap<String, Arc<AppDefinition>>>,
    pub tasks: HashMap<String, Task>,
    pub tasks_by_app: HashMap<String, BTreeSet<String>>,
    pub tasks_by_node: HashMap<String, BTreeSet<String>>,
    pub nodes: BTreeMap<String, Node>,
    pub deployments: BTreeMap<String, Deployment>,
    /// Groups created explicitly (groups that only contain apps are implied by app ids).
    pub groups: BTreeSet<String>,
    pub last_failures: HashMap<String, Value>,
    pub delays: HashMap<String, LaunchDelay>,
    pub unplaced: HashMap<String, UnplacedInfo>,
    /// Tasks whose creation is not yet durable: hidden from agents.
    pub uncommitted: HashSet<String>,
    /// Per node: assignment generation and removals (see [`NodeFeed`]).
    pub feeds: HashMap<String, NodeFeed>,
    /// Per task: the node generation at which its assignment last changed.
    pub assign_gen: HashMap<String, u64>,
    /// Apps the controller must look at in its next pass.
    pub dirty_apps: BTreeSet<String>,
    /// Set when every app was marked dirty; cleared when that pass has ended.
    pub full_pass: bool,
    /// Launch delays that end after this time have not been looked at yet.
    pub delays_checked_at: i64,
    /// Bumped by every change that clients can see (the key of cached renderings).
    pub revision: u64,
    /// Bumped whenever an app is put or removed (the catalog's name map is rebuilt then).
    pub apps_generation: u64,
    /// Per app: the revision of the last change to it, its tasks or its last failure.
    pub app_revisions: HashMap<String, u64>,
    /// Bumped when every app's cached rendering must be redone (a reload from the store).
    pub all_apps_revision: u64,
    /// Per stored deployment: the apps it affects, as of its last write. Apps show the ids
    /// of their deployments, so a deployment's creation and end re-render only these.
    pub deployment_apps: HashMap<String, Vec<String>>,
    /// Tasks agents reported that the server does not know (ghosts), already announced.
    pub ghosts_reported: HashSet<String>,
    pub scheduler: Scheduler,
    /// Count of launches, kills, failures since start (for /metrics).
    pub counters: BTreeMap<&'static str, u64>,
    /// Service port -> the apps holding it (two apps may name the same port explicitly).
    pub service_ports: HashMap<i64, Vec<String>>,
    /// Every service port below this one is held: where the search for a free one starts.
    pub service_port_floor: i64,
    /// Per node: status reports being handled now, and when the last one was answered (not
    /// stored). A node waiting for the answer to its last report is alive, however slow the
    /// store is to make it durable. Its own lock, so reports do not take the state's twice.
    pub reports: Arc<parking_lot::Mutex<HashMap<String, ReportsInFlight>>>,
    /// The secret store, by name: sealed records only (values are opened per assignment).
    pub secrets: BTreeMap<String, crate::secrets::StoredSecret>,
    /// Namespaces with an object (quota, node selector, policy), by id.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Per namespace with apps: what its apps ask for (kept by `put_app`/`remove_app`).
    pub ns_usage: HashMap<String, Usage>,
    /// The default task user and policy (server configuration, not stored).
    pub task_defaults: crate::tenancy::TaskDefaults,
    /// Chronos jobs by name (see [`crate::jobs`]), stored under [`K_JOBS`].
    pub jobs: BTreeMap<String, crate::jobs::JobRecord>,
    /// Per job: its recent runs by id, stored under [`K_JOBRUNS`].
    pub job_runs: BTreeMap<String, BTreeMap<u64, crate::jobs::JobRun>>,
}

impl Cluster {
    pub fn new(seed: u64) -> Self {
        Self {
            apps: BTreeMap::new(),
            versions: HashMap::new(),
            tasks: HashMap::new(),
            tasks_by_app: HashMap::new(),
            tasks_by_node: HashMap::new(),
            nodes: BTreeMap::new(),
            deployments: BTreeMap::new(),
            groups: BTreeSet::new(),
            last_failures: HashMap::new(),
            delays: HashMap::new(),
            unplaced: HashMap::new(),
            uncommitted: HashSet::new(),
            feeds: HashMap::new(),
            assign_gen: HashMap::new(),
            dirty_apps: BTreeSet::new(),
            full_pass: false,
            delays_checked_at: 0,
            revision: 0,
            apps_generation: 0,
            app_revisions: HashMap::new(),
            all_apps_revision: 0,
            deployment_apps: HashMap::new(),
            ghosts_reported: HashSet::new(),
            scheduler: Scheduler::new(seed),
            counters: BTreeMap::new(),
            service_ports: HashMap::new(),
            service_port_floor: 0,
            reports: Default::default(),
            secrets: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            ns_usage: HashMap::new(),
            task_defaults: Default::default(),
            jobs: BTreeMap::new(),
            job_runs: BTreeMap::new(),
        }
    }

    /// Makes `app` the current definition of its id, keeping the service port index true.
    /// Also keeps the namespace usage true.
    pub fn put_app(&mut self, app: Arc<AppDefinition>) {
        self.apps_generation += 1;
        self.account_app(&app, true);
        if let Some(old) = self.apps.insert(app.id.clone(), app.clone()) {
            self.release_service_ports(&old);
            self.account_app(&old, false);
        }
        for p in app.service_ports() {
            if p != 0 {
                self.service_ports
                    .entry(p)
                    .or_default()
                    .push(app.id.clone());
            }
        }
    }

    /// Forgets the app's current definition and frees its service ports.
    pub fn remove_app(&mut self, id: &str) -> Option<Arc<AppDefinition>> {
        let old = self.apps.remove(id)?;
        self.apps_generation += 1;
        self.release_service_ports(&old);
        self.account_app(&old, false);
        Some(old)
    }

    fn release_service_ports(&mut self, app: &AppDefinition) {
        for p in app.service_ports() {
            if let Some(holders) = self.service_ports.get_mut(&p) {
                holders.retain(|h| *h != app.id);
                if holders.is_empty() {
                    self.service_ports.remove(&p);
                    self.service_port_floor = self.service_port_floor.min(p);
                }
            }
        }
    }

    /// Is service port `p` held by an app other than `app_id`?
    pub fn service_port_held_by_other(&self, p: i64, app_id: &str) -> bool {
        self.service_ports
            .get(&p)
            .is_some_and(|h| h.iter().any(|a| a != app_id))
    }

    /// The lowest port in `[min, max)` held by no app but `app_id` and not in `taken`;
    /// `max` when the range is full. Amortised constant time: ports below the floor are
    /// known to be held.
    pub fn free_service_port(
        &mut self,
        min: i64,
        max: i64,
        app_id: &str,
        taken: &BTreeSet<i64>,
    ) -> i64 {
        let mut p = self.service_port_floor.max(min);
        let mut all_held_so_far = true;
        while p < max && (self.service_port_held_by_other(p, app_id) || taken.contains(&p)) {
            if all_held_so_far && !self.service_ports.contains_key(&p) {
                // Free for this app only (its own, or taken in this call): not held.
                all_held_so_far = false;
            }
            if all_held_so_far {
                self.service_port_floor = p + 1;
            }
            p += 1;
        }
        p
    }

    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_default() += n;
    }

    /// Loads everything from the store (at start-up, or after a failed write).
    pub async fn load(store: &dyn Store, seed: u64) -> Result<Self, StoreError> {
        let mut c = Self::new(seed);
        let (kvs, _rev) = store.range("/berth/").await?;
        let mut tasks = Vec::new();
        for kv in kvs {
            let key = kv.key.as_str();
            let decode = |what: &str| -> Option<Value> {
                match serde_json::from_slice::<Value>(&kv.value) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::error!(key, what, error = %e, "skipping undecodable record");
                        None
                    }
                }
            };
            let Some(v) = decode("record") else { continue };
            if key.starts_with(K_JOBS) || key.starts_with(K_JOBRUNS) {
                crate::jobs::load_record(&mut c, key, v);
            } else if key.starts_with(K_APPS) {
                if let Ok(app) = decode_as(key, v) {
                    c.put_app(Arc::new(app));
                }
            } else if let Some(rest) = key.strip_prefix(K_VERSIONS) {
                if let (Some((id, ver)), Ok(app)) = (rest.rsplit_once('|'), decode_as(key, v)) {
                    c.versions
                        .entry(id.to_string())
                        .or_default()
                        .insert(ver.to_string(), Arc::new(app));
                }
            } else if key.starts_with(K_TASKS) {
                if let Ok(t) = decode_as(key, v) {
                    tasks.push(t);
                }
            } else if let Some(id) = key.strip_prefix(K_NODES) {
                if let Ok(n) = decode_as(key, v) {
                    c.nodes.insert(id.to_string(), n);
                }
            } else if let Some(id) = key.strip_prefix(K_DEPLOYMENTS) {
                if let Ok(d) = decode_as::<Deployment>(key, v) {
                    c.deployment_apps
                        .insert(id.to_string(), d.affected_apps.clone());
                    c.deployments.insert(id.to_string(), d);
                }
            } else if key.starts_with(K_NAMESPACES) {
                if let Ok(n) = decode_as::<Namespace>(key, v) {
                    c.namespaces.insert(n.id.clone(), n);
                }
            } else if let Some(id) = key.strip_prefix(K_GROUPS) {
                c.groups.insert(id.to_string());
            } else if let Some(id) = key.strip_prefix(K_FAILURES) {
                c.last_failures.insert(id.to_string(), v);
            } else if let Some(id) = key.strip_prefix(K_DELAYS) {
                if let Ok(d) = decode_as(key, v) {
                    c.delays.insert(id.to_string(), d);
                }
            } else if let Some(name) = key.strip_prefix(K_SECRETS)
                && let Ok(s) = decode_as(key, v)
            {
                c.secrets.insert(name.to_string(), s);
            }
        }
        // Heartbeats are not persisted: every node gets a full timeout to report after a
        // server restart before it is declared unreachable.
        let now = berth_core::time::now_millis();
        for n in c.nodes.values_mut() {
            n.last_heartbeat = now;
        }
        let node_ids: Vec<String> = c.nodes.keys().cloned().collect();
        for id in node_ids {
            c.sync_sched_node(&id);
        }
        for t in tasks {
            c.index_task(t);
        }
        c.sync_sched_namespaces();
        Ok(c)
    }

    /// Pushes a node's current facts into the scheduler.
    pub fn sync_sched_node(&mut self, node_id: &str) {
        let Some(n) = self.nodes.get(node_id) else {
            self.scheduler.remove_node(node_id);
            return;
        };
        let cores = n.info.resources.cpus.floor().max(0.0) as u32;
        self.scheduler.upsert_node(SchedNode {
            id: n.info.id.clone(),
            hostname: n.info.hostname.clone(),
            attributes: n.info.attributes.clone(),
            allocatable: n.info.allocatable(),
            port_ranges: n.info.port_ranges.clone(),
            drivers: n.info.drivers.clone(),
            schedulable: n.schedulable(),
            cores,
        });
    }

    fn index_task(&mut self, t: Task) {
        self.tasks_by_app
            .entry(t.app_id.clone())
            .or_default()
            .insert(t.id.clone());
        self.tasks_by_node
            .entry(t.node_id.clone())
            .or_default()
            .insert(t.id.clone());
        self.scheduler.add_task(TaskFootprint {
            task_id: t.id.clone(),
            app_id: t.app_id.clone(),
            node_id: t.node_id.clone(),
            resources: t.resources,
            ports: t.ports.clone(),
            cpuset: t.cpuset.clone(),
        });
        self.tasks.insert(t.id.clone(), t);
    }

    /// Adds a new task (already placed by the scheduler) and records its creation.
    pub fn insert_new_task(&mut self, t: Task, ch: &mut Changes) {
        ch.put(format!("{K_TASKS}{}", t.id), &t);
        ch.new_tasks.push(t.id.clone());
        ch.assignment_changed(&t);
        self.uncommitted.insert(t.id.clone());
        self.tasks_by_app
            .entry(t.app_id.clone())
            .or_default()
            .insert(t.id.clone());
        self.tasks_by_node
            .entry(t.node_id.clone())
            .or_default()
            .insert(t.id.clone());
        self.tasks.insert(t.id.clone(), t);
    }

    /// Persists a changed task (goal or state).
    pub fn save_task(&self, task_id: &str, ch: &mut Changes) {
        if let Some(t) = self.tasks.get(task_id) {
            ch.put(format!("{K_TASKS}{task_id}"), t);
            ch.assignment_changed(t);
        }
    }

    /// Persists a task whose observed state changed but whose assignment (goal, placement)
    /// did not: the node's agents need not re-fetch their assignments.
    pub fn save_task_state(&self, task_id: &str, ch: &mut Changes) {
        if let Some(t) = self.tasks.get(task_id) {
            ch.put(format!("{K_TASKS}{task_id}"), t);
            ch.apps.insert(t.app_id.clone());
        }
    }

    /// Removes a task for good (terminal, or expunged), freeing its resources.
    pub fn remove_task(&mut self, task_id: &str, ch: &mut Changes) -> Option<Task> {
        let t = self.tasks.remove(task_id)?;
        if let Some(set) = self.tasks_by_app.get_mut(&t.app_id) {
            set.remove(task_id);
            if set.is_empty() {
                self.tasks_by_app.remove(&t.app_id);
            }
        }
        if let Some(set) = self.tasks_by_node.get_mut(&t.node_id) {
            set.remove(task_id);
        }
        self.uncommitted.remove(task_id);
        self.scheduler.remove_task(task_id);
        ch.delete(format!("{K_TASKS}{task_id}"));
        ch.assignment_changed(&t);
        Some(t)
    }

    pub fn app_tasks(&self, app_id: &str) -> impl Iterator<Item = &Task> {
        self.tasks_by_app
            .get(app_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.tasks.get(id))
    }

    /// Ids of the active deployments that affect an app.
    pub fn deployments_of(&self, app_id: &str) -> Vec<String> {
        self.deployments
            .values()
            .filter(|d| d.affected_apps.iter().any(|a| a == app_id))
            .map(|d| d.id.clone())
            .collect()
    }

    /// Records a new app version (and drops the oldest beyond [`MAX_VERSIONS`]).
    pub fn store_version(&mut self, app: &Arc<AppDefinition>, ch: &mut Changes) {
        let Some(version) = app.version.clone() else {
            return;
        };
        ch.put(version_key(&app.id, &version), app.as_ref());
        let versions = self.versions.entry(app.id.clone()).or_default();
        versions.insert(version, app.clone());
        while versions.len() > MAX_VERSIONS {
            let Some(oldest) = versions.keys().next().cloned() else {
                break;
            };
            versions.remove(&oldest);
            ch.delete(version_key(&app.id, &oldest));
        }
    }

    /// The definition a task was launched from (falls back to the current one).
    pub fn app_at(&self, app_id: &str, version: &str) -> Option<Arc<AppDefinition>> {
        if let Some(job) = berth_core::job::run::job_of_app_id(app_id) {
            return crate::controller::jobs::run_definition(self, job, version).map(Arc::new);
        }
        self.versions
            .get(app_id)
            .and_then(|v| v.get(version))
            .cloned()
            .or_else(|| self.apps.get(app_id).cloned())
    }

    /// A node's facts or status changed: its apps and every app waiting for room get
    /// another look.
    pub fn node_changed(&mut self, node_id: &str) {
        let apps: Vec<String> = self
            .tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
            .map(|t| t.app_id.clone())
            .collect();
        self.dirty_apps.extend(apps);
        self.dirty_apps.extend(self.unplaced.keys().cloned());
    }

    /// Changes whenever anything shown in the app's rendering may have changed (its
    /// definition, tasks, last failure, deployments); see [`crate::AppCache`].
    pub fn app_stamp(&self, app_id: &str) -> u64 {
        self.app_revisions
            .get(app_id)
            .copied()
            .unwrap_or(0)
            .max(self.all_apps_revision)
    }

    /// The feed of a node, created on first use.
    pub fn feed(&mut self, node_id: &str) -> &mut NodeFeed {
        self.feeds
            .entry(node_id.to_string())
            .or_insert_with(NodeFeed::new)
    }

    /// The generation channel of a node, created on first use.
    pub fn node_gen(&mut self, node_id: &str) -> watch::Sender<u64> {
        self.feed(node_id).generation.clone()
    }

    /// After a mutation is durable: expose its new tasks, record what changed per node for
    /// the deltas, and wake the affected agents.
    pub fn committed(&mut self, ch: &Changes) {
        for id in &ch.new_tasks {
            self.uncommitted.remove(id);
        }
        for n in &ch.nodes {
            self.feed(n).generation.send_modify(|g| *g += 1);
        }
        for (node, task) in &ch.assigned {
            let still_here = self.tasks.get(task).is_some_and(|t| &t.node_id == node);
            let feed = self.feed(node);
            let g = *feed.generation.borrow();
            if still_here {
                self.assign_gen.insert(task.clone(), g);
            } else {
                feed.removed.push_back((g, task.clone()));
                while feed.removed.len() > MAX_TOMBSTONES {
                    if let Some((old, _)) = feed.removed.pop_front() {
                        feed.floor = feed.floor.max(old);
                    }
                }
                if !self.tasks.contains_key(task) {
                    self.assign_gen.remove(task);
                }
            }
        }
    }

    /// After the in-memory model was rebuilt: every agent must fetch its whole list again.
    pub fn reset_feeds(&mut self) {
        for feed in self.feeds.values_mut() {
            feed.generation.send_modify(|g| *g += 1);
            feed.floor = *feed.generation.borrow();
            feed.removed.clear();
        }
    }
}
