//! The agent's main loop. The server is the source of truth: the agent long-polls its full
//! assignment list and converges its drivers to it (start what is missing, stop what is no
//! longer wanted), and reports every task state change. Reports are idempotent and a full
//! report goes out with every heartbeat, so a lost message is repaired by the next one.
//!
//! When the server is unreachable the agent changes nothing: a control-plane outage must not
//! take the fleet down.

use crate::driver::{Driver, DriverError, TaskSpec, TaskStatus};
use berth_core::app::DriverKind;
use berth_core::node::{NodeCondition, NodeInfo};
use berth_core::protocol::{
    Assignment, Assignments, RegisterResponse, ReportedStatus, StatusAck, StatusReport,
};
use berth_core::task::{HealthResult, TaskGoal, TaskState};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URLs of the servers (tried in turn).
    pub servers: Vec<String>,
    pub node: NodeInfo,
    /// How long a long-poll for assignments may wait.
    pub poll_wait: Duration,
    /// How long a task the server does not list (a ghost) may keep running before the agent
    /// stops it: long enough to ride out a server restore, short enough that ghosts do not
    /// pile up (seed 000: ghost containers after a daemon upgrade).
    pub ghost_grace: Duration,
    /// Join token and node credential (empty: the server has authentication off).
    pub credentials: Arc<crate::credentials::Credentials>,
    /// With HTTPS servers: the key and certificate of the agent's endpoint (a CSR goes with
    /// every registration; see [`crate::tls`]). `None`: no certificate is asked for.
    pub identity: Option<Arc<crate::tls::AgentIdentity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("HTTP error talking to {url}: {message}")]
    Http { url: String, message: String },
    #[error("the server does not know this node")]
    NotRegistered,
    #[error("server answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Tls(#[from] berth_tls::TlsError),
}

/// What the agent knows about one task.
#[derive(Debug, Clone)]
struct LocalTask {
    driver: DriverKind,
    status: TaskStatus,
}

struct Shared {
    config: AgentConfig,
    http: reqwest::Client,
    drivers: HashMap<DriverKind, Arc<dyn Driver>>,
    tasks: Mutex<HashMap<String, LocalTask>>,
    /// Tasks being started right now (not yet known to their driver).
    starting: Mutex<HashSet<String>>,
    /// Statuses not yet acknowledged by the server.
    dirty: Mutex<HashMap<String, ReportedStatus>>,
    report_now: Notify,
    server_idx: Mutex<usize>,
    heartbeat: Mutex<Duration>,
    /// The spec of every assigned task (for health checks).
    specs: Mutex<HashMap<String, TaskSpec>>,
    /// Latest health results per task, one entry per health check.
    health: Mutex<HashMap<String, Vec<HealthResult>>>,
    /// Running health-check loops per task.
    checkers: Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>,
    /// Why the agent itself killed a task (reported instead of the driver's message).
    kill_reasons: Mutex<HashMap<String, String>>,
    /// When each running task the server does not list was first seen.
    ghosts: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Shared with the agent's HTTP endpoint and conditions loop.
    view: AgentView,
}

impl Shared {
    fn reported(&self, s: &TaskStatus) -> ReportedStatus {
        let reason = if s.state.is_terminal() {
            self.kill_reasons.lock().get(&s.task_id).cloned()
        } else {
            None
        };
        ReportedStatus {
            task_id: s.task_id.clone(),
            state: s.state,
            message: reason.or_else(|| s.message.clone()),
            exit_code: s.exit_code,
            ip_addresses: s.ip_addresses.clone(),
            health: self.health.lock().get(&s.task_id).cloned(),
        }
    }

    /// Starts the health-check loops of a running task, once.
    fn ensure_checkers(self: &Arc<Self>, task_id: &str) {
        let Some(spec) = self.specs.lock().get(task_id).cloned() else {
            return;
        };
        if spec.app.health_checks.is_empty() {
            return;
        }
        let mut checkers = self.checkers.lock();
        if checkers.contains_key(task_id) {
            return;
        }
        let Some(driver) = self.drivers.get(&spec.app.driver()).cloned() else {
            return;
        };
        let n = spec.app.health_checks.len();
        self.health.lock().insert(
            task_id.to_string(),
            (0..n)
                .map(|_| HealthResult {
                    instance_id: task_id.to_string(),
                    ..Default::default()
                })
                .collect(),
        );
        let handles = (0..n)
            .map(|i| {
                let me = self.clone();
                let spec = spec.clone();
                let driver = driver.clone();
                tokio::spawn(async move { me.check_loop(spec, i, driver).await }).abort_handle()
            })
            .collect();
        checkers.insert(task_id.to_string(), handles);
    }

    fn stop_checkers(&self, task_id: &str) {
        if let Some(handles) = self.checkers.lock().remove(task_id) {
            for h in handles {
                h.abort();
            }
        }
    }

    /// One health check of one task, until the task ends or fails too often.
    async fn check_loop(self: Arc<Self>, spec: TaskSpec, index: usize, driver: Arc<dyn Driver>) {
        let Some(check) = spec.app.health_checks.get(index).cloned() else {
            return;
        };
        let started = tokio::time::Instant::now();
        let grace = Duration::from_secs_f64(check.grace_period_seconds.clamp(0.0, 86_400.0));
        let interval = Duration::from_secs_f64(check.interval_seconds.clamp(0.1, 86_400.0));
        let mut ever_succeeded = false;
        loop {
            let outcome =
                crate::health::run_check(&self.http, driver.as_ref(), &check, &spec).await;
            let now = berth_core::time::now();
            let mut kill_reason = None;
            {
                let mut health = self.health.lock();
                let Some(results) = health.get_mut(&spec.task_id) else {
                    return;
                };
                let Some(r) = results.get_mut(index) else {
                    return;
                };
                let was_alive = r.alive;
                match &outcome {
                    Ok(()) => {
                        ever_succeeded = true;
                        r.alive = true;
                        r.consecutive_failures = 0;
                        r.last_success = Some(now.clone());
                        r.first_success.get_or_insert(now);
                    }
                    // Failures during the grace period before the first success do not count.
                    Err(_) if !ever_succeeded && started.elapsed() < grace => {}
                    Err(cause) => {
                        r.alive = false;
                        r.consecutive_failures += 1;
                        r.last_failure = Some(now);
                        r.last_failure_cause = Some(cause.clone());
                        let max = check.max_consecutive_failures;
                        if max > 0 && i64::from(r.consecutive_failures) >= max {
                            kill_reason = Some(format!(
                                "killed after {} consecutive failed health checks (last: {cause})",
                                r.consecutive_failures
                            ));
                        }
                    }
                }
                if r.alive != was_alive || outcome.is_err() {
                    drop(health);
                    self.mark_dirty(&spec.task_id);
                }
            }
            if let Some(reason) = kill_reason {
                tracing::warn!(task = %spec.task_id, %reason, "unhealthy task");
                self.kill_reasons
                    .lock()
                    .insert(spec.task_id.clone(), reason);
                let grace = Self::kill_grace_of(&spec.app);
                if let Err(e) = driver.kill(&spec.task_id, grace).await {
                    tracing::warn!(task = %spec.task_id, error = %e, "killing unhealthy task failed");
                }
                return;
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Queues the task's current status (with health) for the next report.
    fn mark_dirty(&self, task_id: &str) {
        let status = self.tasks.lock().get(task_id).map(|t| t.status.clone());
        if let Some(s) = status {
            let r = self.reported(&s);
            self.dirty.lock().insert(task_id.to_string(), r);
            self.report_now.notify_one();
        }
    }

    fn server(&self) -> String {
        let i = *self.server_idx.lock();
        self.config
            .servers
            .get(i % self.config.servers.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    fn rotate_server(&self) {
        let mut i = self.server_idx.lock();
        *i = (*i + 1) % self.config.servers.len().max(1);
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let url = format!("{}{}", self.server().trim_end_matches('/'), path);
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(bearer) = self.config.credentials.bearer() {
            req = req.bearer_auth(bearer);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            self.rotate_server();
            AgentError::Http {
                url: url.clone(),
                // With the cause: "invalid peer certificate: UnknownIssuer", ...
                message: berth_tls::client::error_chain(&e),
            }
        })?;
        let status = resp.status();
        if status.as_u16() == 404 {
            return Err(AgentError::NotRegistered);
        }
        if status.as_u16() == 401
            && self.config.credentials.has_credential()
            && self.config.credentials.can_rejoin()
        {
            // The server no longer knows this credential: join again with the join token.
            tracing::warn!("the server refused this node's credential; joining again");
            self.config.credentials.forget();
            return Err(AgentError::NotRegistered);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(AgentError::Server {
                status: status.as_u16(),
                body,
            });
        }
        resp.json::<T>().await.map_err(|e| AgentError::Http {
            url,
            message: e.to_string(),
        })
    }

    async fn register(&self) -> Result<(), AgentError> {
        let mut body = serde_json::to_value(&self.config.node).map_err(|e| AgentError::Http {
            url: String::new(),
            message: e.to_string(),
        })?;
        if let (Some(identity), Some(obj)) = (&self.config.identity, body.as_object_mut()) {
            obj.insert("csr".into(), identity.csr().into());
        }
        let r: RegisterResponse = self
            .call(
                reqwest::Method::POST,
                "/api/v1/agent/register",
                Some(body),
                Duration::from_secs(10),
            )
            .await?;
        *self.heartbeat.lock() = Duration::from_millis(r.heartbeat_interval_ms.max(100));
        if let Some(credential) = r.credential {
            self.config
                .credentials
                .store(credential)
                .map_err(|e| AgentError::Http {
                    url: "/api/v1/agent/register".into(),
                    message: format!("keeping the node credential: {e}"),
                })?;
            tracing::info!(node = %r.node_id, "joined: node credential kept");
        }
        tracing::info!(node = %r.node_id, server = %self.server(), "registered");
        if let Some(identity) = &self.config.identity {
            match identity.install(&r.tls) {
                Ok(()) => tracing::info!(
                    "the server's certificate for this agent's endpoint is installed"
                ),
                Err(e) => tracing::error!(error = %e, "no certificate for this agent's endpoint"),
            }
        }
        Ok(())
    }

    /// Registers, retrying with back-off until it works (or forever).
    async fn register_until_ok(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.register().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn record(self: &Arc<Self>, s: TaskStatus) {
        let mut tasks = self.tasks.lock();
        if let Some(t) = tasks.get_mut(&s.task_id) {
            // Never let a late non-terminal update overwrite a terminal state.
            if t.status.state.is_terminal() && !s.state.is_terminal() {
                return;
            }
            t.status = s.clone();
        }
        drop(tasks);
        if s.state == TaskState::Running {
            self.ensure_checkers(&s.task_id);
        } else if s.state.is_terminal() {
            self.stop_checkers(&s.task_id);
        }
        let r = self.reported(&s);
        self.dirty.lock().insert(s.task_id.clone(), r);
        self.report_now.notify_one();
    }

    async fn send_report(&self, full: bool) -> Result<StatusAck, AgentError> {
        let statuses: Vec<ReportedStatus> = if full {
            let all: Vec<TaskStatus> = self
                .tasks
                .lock()
                .values()
                .map(|t| t.status.clone())
                .collect();
            all.iter().map(|t| self.reported(t)).collect()
        } else {
            self.dirty.lock().values().cloned().collect()
        };
        let report = StatusReport {
            statuses: statuses.clone(),
            full,
            conditions: Some(
                self.view
                    .conditions()
                    .unwrap_or_else(|| self.config.node.conditions.clone()),
            ),
            info: None,
        };
        let body = serde_json::to_value(&report).map_err(|e| AgentError::Http {
            url: String::new(),
            message: e.to_string(),
        })?;
        let path = format!("/api/v1/agent/{}/status", self.config.node.id);
        let ack: StatusAck = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(body),
                Duration::from_secs(15),
            )
            .await?;
        // Only what was sent is acknowledged; newer updates stay dirty.
        let mut dirty = self.dirty.lock();
        for s in statuses {
            if dirty.get(&s.task_id) == Some(&s) {
                dirty.remove(&s.task_id);
            }
        }
        Ok(ack)
    }

    fn spec_of(a: &Assignment, node_id: &str) -> TaskSpec {
        TaskSpec {
            task_id: a.task_id.clone(),
            app_id: a.app_id.clone(),
            version: a.version.clone(),
            app: (*a.app).clone(),
            ports: a.ports.clone(),
            host: a.host.clone(),
            node_id: node_id.to_string(),
            resources: a.resources,
            cpuset: a.cpuset.clone(),
            secret_env: a.secret_env.clone(),
        }
    }

    fn kill_grace(a: Option<&Assignment>) -> Duration {
        match a {
            Some(a) => Self::kill_grace_of(&a.app),
            None => Duration::from_secs(3),
        }
    }

    fn kill_grace_of(app: &berth_core::app::AppDefinition) -> Duration {
        let secs = app.task_kill_grace_period_seconds.unwrap_or(3.0);
        Duration::from_secs_f64(secs.clamp(0.0, 600.0))
    }

    /// Converges drivers to the assignment list.
    fn reconcile(self: &Arc<Self>, list: &Assignments) {
        let wanted: HashMap<&str, &Assignment> = list
            .assignments
            .iter()
            .map(|a| (a.task_id.as_str(), a))
            .collect();
        // Cores pinned on this node (tasks being killed still hold theirs): drivers keep
        // shared tasks off them. Told before anything new starts.
        let pinned: std::collections::BTreeSet<u32> = list
            .assignments
            .iter()
            .flat_map(|a| a.cpuset.iter().copied())
            .collect();
        let pinned: Vec<u32> = pinned.into_iter().collect();
        for d in self.drivers.values() {
            d.set_pinned_cores(&pinned);
        }
        let local: HashMap<String, LocalTask> = self.tasks.lock().clone();
        self.ghosts
            .lock()
            .retain(|id, _| !wanted.contains_key(id.as_str()) && local.contains_key(id));
        for a in &list.assignments {
            let known = local.get(&a.task_id);
            if !self.specs.lock().contains_key(&a.task_id) {
                self.specs
                    .lock()
                    .insert(a.task_id.clone(), Self::spec_of(a, &self.config.node.id));
            }
            if a.goal == TaskGoal::Running
                && known.is_some_and(|t| t.status.state == TaskState::Running)
            {
                // Covers tasks re-attached after an agent restart.
                self.ensure_checkers(&a.task_id);
            }
            match a.goal {
                TaskGoal::Running => {
                    if known.is_none() && self.starting.lock().insert(a.task_id.clone()) {
                        let me = self.clone();
                        let a = a.clone();
                        tokio::spawn(async move { me.start_task(a).await });
                    }
                }
                TaskGoal::Killed => match known {
                    Some(t) if !t.status.state.is_terminal() => {
                        self.spawn_kill(&a.task_id, t.driver, Self::kill_grace(Some(a)));
                    }
                    Some(_) => {}
                    // Killed before this agent ever saw it run (started and stopped between
                    // two polls): nothing to stop, but the server waits to hear it ended.
                    None if !self.starting.lock().contains(&a.task_id) => {
                        self.end_unstarted(a);
                    }
                    None => {}
                },
            }
        }
        for (id, t) in local {
            if wanted.contains_key(id.as_str()) {
                continue;
            }
            if t.status.state.is_terminal() {
                // The server has taken note of the end: drop our bookkeeping.
                if let Some(d) = self.drivers.get(&t.driver) {
                    d.forget(&id);
                }
                self.tasks.lock().remove(&id);
                self.dirty.lock().remove(&id);
                self.specs.lock().remove(&id);
                self.health.lock().remove(&id);
                self.kill_reasons.lock().remove(&id);
                self.stop_checkers(&id);
            } else {
                let newly_seen = {
                    let mut ghosts = self.ghosts.lock();
                    if ghosts.contains_key(&id) {
                        false
                    } else {
                        ghosts.insert(id.clone(), tokio::time::Instant::now());
                        true
                    }
                };
                if newly_seen {
                    tracing::warn!(
                        task = %id,
                        grace = ?self.config.ghost_grace,
                        "ghost: a task the server does not list is running here; stopping it after the grace period"
                    );
                    // A timer of its own: reconcile may not run again before the grace ends.
                    let me = self.clone();
                    let driver = t.driver;
                    tokio::spawn(async move {
                        tokio::time::sleep(me.config.ghost_grace).await;
                        // Still a ghost? (reconcile forgets tasks the server lists again)
                        if me.ghosts.lock().remove(&id).is_some() {
                            tracing::warn!(task = %id, "stopping ghost task");
                            me.kill_reasons
                                .lock()
                                .insert(id.clone(), "ghost: not known to the server".into());
                            me.spawn_kill(&id, driver, Self::kill_grace(None));
                        }
                    });
                }
            }
        }
    }

    fn spawn_kill(self: &Arc<Self>, task_id: &str, kind: DriverKind, grace: Duration) {
        let Some(driver) = self.drivers.get(&kind).cloned() else {
            return;
        };
        let id = task_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = driver.kill(&id, grace).await {
                tracing::warn!(task = %id, error = %e, "kill failed");
            }
        });
    }

    /// Reports a task that never started here as killed (kept until the server stops
    /// listing it, like any ended task).
    fn end_unstarted(self: &Arc<Self>, a: &Assignment) {
        let status = TaskStatus {
            task_id: a.task_id.clone(),
            state: TaskState::Killed,
            message: Some("killed before it started".into()),
            exit_code: None,
            ip_addresses: vec![],
        };
        self.tasks.lock().insert(
            a.task_id.clone(),
            LocalTask {
                driver: a.app.driver(),
                status: status.clone(),
            },
        );
        self.record(status);
    }

    async fn start_task(self: Arc<Self>, a: Assignment) {
        let kind = a.app.driver();
        let spec = Self::spec_of(&a, &self.config.node.id);
        let result = match self.drivers.get(&kind).cloned() {
            // Never start a task without the secrets its env refers to.
            Some(_) if a.secret_error.is_some() => Err(DriverError::InvalidSpec(
                a.secret_error.clone().unwrap_or_default(),
            )),
            Some(driver) => {
                self.tasks.lock().insert(
                    a.task_id.clone(),
                    LocalTask {
                        driver: kind,
                        status: TaskStatus {
                            task_id: a.task_id.clone(),
                            state: TaskState::Staging,
                            message: None,
                            exit_code: None,
                            ip_addresses: vec![],
                        },
                    },
                );
                driver.start(spec).await
            }
            None => Err(DriverError::Unavailable(format!(
                "driver {} is not available on this node",
                kind.as_str()
            ))),
        };
        if let Err(e) = result {
            tracing::warn!(task = %a.task_id, error = %e, "task failed to start");
            self.tasks
                .lock()
                .entry(a.task_id.clone())
                .or_insert(LocalTask {
                    driver: kind,
                    status: TaskStatus {
                        task_id: a.task_id.clone(),
                        state: TaskState::Failed,
                        message: None,
                        exit_code: None,
                        ip_addresses: vec![],
                    },
                });
            self.record(TaskStatus {
                task_id: a.task_id.clone(),
                state: TaskState::Failed,
                message: Some(format!("failed to start: {e}")),
                exit_code: None,
                ip_addresses: vec![],
            });
        }
        self.starting.lock().remove(&a.task_id);
    }
}

/// A running agent.
pub struct Agent {
    shared: Arc<Shared>,
}

impl Agent {
    /// Creates the agent and re-attaches to tasks from an earlier run (nothing is restarted).
    /// `statuses` is the receiving end of the sink every driver was built with.
    pub async fn start(
        config: AgentConfig,
        drivers: Vec<Arc<dyn Driver>>,
        statuses: mpsc::UnboundedReceiver<TaskStatus>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, AgentError> {
        let http = Self::http_client()?;
        Self::start_with_client(config, http, drivers, statuses, shutdown).await
    }

    /// The HTTP client an agent uses by default.
    pub fn http_client() -> Result<reqwest::Client, AgentError> {
        Self::http_client_trusting(None)
    }

    /// The HTTP client, verifying `https://` servers with the CA certificates in `ca_cert`
    /// (PEM) only (`None`: the system's roots).
    pub fn http_client_trusting(
        ca_cert: Option<&std::path::Path>,
    ) -> Result<reqwest::Client, AgentError> {
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(3));
        berth_tls::client::trust_file(builder, ca_cert)?
            .build()
            .map_err(|e| AgentError::Http {
                url: String::new(),
                message: e.to_string(),
            })
    }

    /// Like [`Agent::start`], with a caller-provided HTTP client: many simulated agents in
    /// one process share one client (and its connection pool). The agent runs as a single
    /// tokio task (status collector, reporter and poller are futures inside it).
    pub async fn start_with_client(
        config: AgentConfig,
        http: reqwest::Client,
        drivers: Vec<Arc<dyn Driver>>,
        statuses: mpsc::UnboundedReceiver<TaskStatus>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, AgentError> {
        let view = AgentView::default();
        Self::start_with_view(config, http, drivers, statuses, shutdown, view).await
    }

    /// Like [`Agent::start_with_client`], sharing the agent's state through `view` (for the
    /// agent's HTTP endpoint and its node-conditions loop).
    pub async fn start_with_view(
        config: AgentConfig,
        http: reqwest::Client,
        drivers: Vec<Arc<dyn Driver>>,
        mut statuses: mpsc::UnboundedReceiver<TaskStatus>,
        mut shutdown: watch::Receiver<bool>,
        view: AgentView,
    ) -> Result<tokio::task::JoinHandle<()>, AgentError> {
        let drivers: HashMap<DriverKind, Arc<dyn Driver>> =
            drivers.into_iter().map(|d| (d.kind(), d)).collect();
        let shared = Arc::new(Shared {
            config,
            http,
            drivers,
            tasks: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashMap::new()),
            report_now: Notify::new(),
            server_idx: Mutex::new(0),
            heartbeat: Mutex::new(Duration::from_secs(5)),
            specs: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            checkers: Mutex::new(HashMap::new()),
            kill_reasons: Mutex::new(HashMap::new()),
            ghosts: Mutex::new(HashMap::new()),
            view: view.clone(),
        });
        let _ = view.inner.shared.set(Arc::downgrade(&shared));
        for (kind, d) in &shared.drivers {
            let recovered = d.recover().await?;
            tracing::info!(
                driver = kind.as_str(),
                tasks = recovered.len(),
                "recovered tasks"
            );
            let mut tasks = shared.tasks.lock();
            for s in recovered {
                tasks.insert(
                    s.task_id.clone(),
                    LocalTask {
                        driver: *kind,
                        status: s,
                    },
                );
            }
        }
        let handle = tokio::spawn(async move {
            // Driver status updates -> local state + pending report.
            let collector = async {
                while let Some(st) = statuses.recv().await {
                    shared.record(st);
                }
                // Every driver is gone: keep serving the other loops.
                std::future::pending::<()>().await;
            };
            let protocol = async {
                shared.register_until_ok().await;
                tokio::join!(report_loop(shared.clone()), poll_loop(shared.clone()));
            };
            // Shutdown drops the loops (the same as aborting them).
            tokio::select! {
                _ = async { tokio::join!(collector, protocol) } => {}
                _ = shutdown.changed() => {}
            }
        });
        Ok(handle)
    }

    pub fn node_id(&self) -> &str {
        &self.shared.config.node.id
    }
}

async fn report_loop(s: Arc<Shared>) {
    let mut last_full = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let hb = *s.heartbeat.lock();
        let full = last_full.elapsed() >= hb;
        let has_dirty = !s.dirty.lock().is_empty();
        if full || has_dirty {
            match s.send_report(full).await {
                Ok(_) => {
                    if full {
                        last_full = tokio::time::Instant::now();
                    }
                    if s.config.identity.as_ref().is_some_and(|i| i.renewal_due())
                        && let Err(e) = s.register().await
                    {
                        tracing::warn!(error = %e, "renewing the endpoint's certificate failed; will retry");
                    }
                }
                Err(AgentError::NotRegistered) => s.register_until_ok().await,
                Err(e) => {
                    tracing::debug!(error = %e, "status report failed; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let wait = hb
            .saturating_sub(last_full.elapsed())
            .max(Duration::from_millis(20));
        tokio::select! {
            _ = s.report_now.notified() => {
                // Coalesce a burst of updates into one report.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn poll_loop(s: Arc<Shared>) {
    let mut generation = 0u64;
    // The node's whole assignment list, kept up to date from full lists and deltas.
    let mut current: HashMap<String, Assignment> = HashMap::new();
    let mut delay = Duration::from_millis(200);
    loop {
        let path = format!(
            "/api/v1/agent/{}/assignments?after={generation}&wait={}",
            s.config.node.id,
            s.config.poll_wait.as_secs()
        );
        let r: Result<Assignments, AgentError> = s
            .call(
                reqwest::Method::GET,
                &path,
                None,
                s.config.poll_wait + Duration::from_secs(10),
            )
            .await;
        match r {
            Ok(mut list) => {
                delay = Duration::from_millis(200);
                let missing = list.resolve_apps();
                if !missing.is_empty() {
                    // Cannot happen with a server of this version; ask for a full list.
                    tracing::warn!(tasks = ?missing, "assignments without their app definition; re-fetching");
                    generation = 0;
                    continue;
                }
                let moved = list.generation != generation;
                merge_assignments(&mut current, list.full, list.assignments, &list.removed);
                generation = list.generation;
                s.reconcile(&Assignments {
                    generation,
                    full: true,
                    assignments: current.values().cloned().collect(),
                    removed: vec![],
                    apps: vec![],
                    default_user: None,
                });
                // Always re-check soon even if the generation did not move: local state
                // (a finished start, a kill) may need another pass.
                if !moved {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(AgentError::NotRegistered) => {
                s.register_until_ok().await;
                generation = 0;
            }
            Err(e) => {
                tracing::debug!(error = %e, "assignment poll failed; keeping tasks as they are");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Applies a full list (replace) or a delta (upsert the changed, drop the removed).
fn merge_assignments(
    current: &mut HashMap<String, Assignment>,
    full: bool,
    assignments: Vec<Assignment>,
    removed: &[String],
) {
    if full {
        current.clear();
    }
    for id in removed {
        current.remove(id);
    }
    for a in assignments {
        current.insert(a.task_id.clone(), a);
    }
}

/// A live view of a running agent for its HTTP endpoint (logs, metrics) and its
/// node-conditions loop. Create one, pass a clone to [`Agent::start_with_view`], keep the other.
#[derive(Clone, Default)]
pub struct AgentView {
    inner: Arc<ViewInner>,
}

#[derive(Default)]
struct ViewInner {
    shared: std::sync::OnceLock<std::sync::Weak<Shared>>,
    /// Latest node conditions (`None`: the static ones of the node info).
    conditions: Mutex<Option<Vec<NodeCondition>>>,
}

/// One task as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    pub task_id: String,
    /// Empty until the server's assignment for the task was seen.
    pub app_id: String,
    pub driver: DriverKind,
    pub state: TaskState,
    /// `None` without health checks (or results); `Some(true)` when every check passes.
    pub healthy: Option<bool>,
}

impl AgentView {
    /// The conditions sent with every status report from now on.
    pub fn set_conditions(&self, conditions: Vec<NodeCondition>) {
        *self.inner.conditions.lock() = Some(conditions);
    }

    pub fn conditions(&self) -> Option<Vec<NodeCondition>> {
        self.inner.conditions.lock().clone()
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.inner.shared.get().and_then(std::sync::Weak::upgrade)
    }

    /// The agent's credentials, once it runs.
    pub fn credentials(&self) -> Option<Arc<crate::credentials::Credentials>> {
        self.shared().map(|s| s.config.credentials.clone())
    }

    /// The node id, once the agent runs.
    pub fn node_id(&self) -> Option<String> {
        self.shared().map(|s| s.config.node.id.clone())
    }

    /// Every task the agent knows, sorted by id.
    pub fn tasks(&self) -> Vec<TaskView> {
        let Some(s) = self.shared() else {
            return Vec::new();
        };
        let tasks: Vec<(String, LocalTask)> = s
            .tasks
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let specs = s.specs.lock();
        let health = s.health.lock();
        let mut out: Vec<TaskView> = tasks
            .into_iter()
            .map(|(id, t)| TaskView {
                app_id: specs
                    .get(&id)
                    .map(|sp| sp.app_id.clone())
                    .unwrap_or_default(),
                healthy: health
                    .get(&id)
                    .filter(|r| !r.is_empty())
                    .map(|r| r.iter().all(|h| h.alive)),
                driver: t.driver,
                state: t.status.state,
                task_id: id,
            })
            .collect();
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        out
    }

    /// The driver running a task the agent knows.
    pub fn driver_of(&self, task_id: &str) -> Option<Arc<dyn Driver>> {
        let s = self.shared()?;
        let kind = s.tasks.lock().get(task_id).map(|t| t.driver)?;
        s.drivers.get(&kind).cloned()
    }

    /// Every driver of the agent.
    pub fn drivers(&self) -> Vec<Arc<dyn Driver>> {
        self.shared()
            .map(|s| s.drivers.values().cloned().collect())
            .unwrap_or_default()
    }
}
