//! The agent's main loop. The server is the source of truth: the agent long-polls its full
//! assignment list and converges its drivers to it (start what is missing, stop what is no
//! longer wanted), and reports every task state change. Reports are idempotent and a full
//! report goes out with every heartbeat, so a lost message is repaired by the next one.
//!
//! When the server is unreachable the agent changes nothing: a control-plane outage must not
//! take the fleet down.

use crate::driver::{Driver, DriverError, TaskSpec, TaskStatus};
use berth_core::app::DriverKind;
use berth_core::node::NodeInfo;
use berth_core::protocol::{
    Assignment, Assignments, RegisterResponse, ReportedStatus, StatusAck, StatusReport,
};
use berth_core::task::{TaskGoal, TaskState};
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
}

fn reported(s: &TaskStatus) -> ReportedStatus {
    ReportedStatus {
        task_id: s.task_id.clone(),
        state: s.state,
        message: s.message.clone(),
        exit_code: s.exit_code,
        ip_addresses: s.ip_addresses.clone(),
        health: None,
    }
}

impl Shared {
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
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            self.rotate_server();
            AgentError::Http {
                url: url.clone(),
                message: e.to_string(),
            }
        })?;
        let status = resp.status();
        if status.as_u16() == 404 {
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
        let body = serde_json::to_value(&self.config.node).map_err(|e| AgentError::Http {
            url: String::new(),
            message: e.to_string(),
        })?;
        let r: RegisterResponse = self
            .call(
                reqwest::Method::POST,
                "/api/v1/agent/register",
                Some(body),
                Duration::from_secs(10),
            )
            .await?;
        *self.heartbeat.lock() = Duration::from_millis(r.heartbeat_interval_ms.max(100));
        tracing::info!(node = %r.node_id, server = %self.server(), "registered");
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

    fn record(&self, s: TaskStatus) {
        let mut tasks = self.tasks.lock();
        if let Some(t) = tasks.get_mut(&s.task_id) {
            // Never let a late non-terminal update overwrite a terminal state.
            if t.status.state.is_terminal() && !s.state.is_terminal() {
                return;
            }
            t.status = s.clone();
        }
        drop(tasks);
        self.dirty.lock().insert(s.task_id.clone(), reported(&s));
        self.report_now.notify_one();
    }

    async fn send_report(&self, full: bool) -> Result<StatusAck, AgentError> {
        let statuses: Vec<ReportedStatus> = if full {
            self.tasks
                .lock()
                .values()
                .map(|t| reported(&t.status))
                .collect()
        } else {
            self.dirty.lock().values().cloned().collect()
        };
        let report = StatusReport {
            statuses: statuses.clone(),
            full,
            conditions: Some(self.config.node.conditions.clone()),
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
            app: a.app.clone(),
            ports: a.ports.clone(),
            host: a.host.clone(),
            node_id: node_id.to_string(),
            resources: a.resources,
            cpuset: a.cpuset.clone(),
        }
    }

    fn kill_grace(a: Option<&Assignment>) -> Duration {
        let secs = a
            .and_then(|a| a.app.task_kill_grace_period_seconds)
            .unwrap_or(3.0);
        Duration::from_secs_f64(secs.clamp(0.0, 600.0))
    }

    /// Converges drivers to the assignment list.
    fn reconcile(self: &Arc<Self>, list: &Assignments) {
        let wanted: HashMap<&str, &Assignment> = list
            .assignments
            .iter()
            .map(|a| (a.task_id.as_str(), a))
            .collect();
        let local: HashMap<String, LocalTask> = self.tasks.lock().clone();
        for a in &list.assignments {
            let known = local.get(&a.task_id);
            match a.goal {
                TaskGoal::Running => {
                    if known.is_none() && self.starting.lock().insert(a.task_id.clone()) {
                        let me = self.clone();
                        let a = a.clone();
                        tokio::spawn(async move { me.start_task(a).await });
                    }
                }
                TaskGoal::Killed => {
                    if let Some(t) = known
                        && !t.status.state.is_terminal()
                    {
                        self.spawn_kill(&a.task_id, t.driver, Self::kill_grace(Some(a)));
                    }
                }
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
            } else {
                tracing::warn!(task = %id, "task not assigned to this node by the server: stopping it");
                self.spawn_kill(&id, t.driver, Self::kill_grace(None));
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

    async fn start_task(self: Arc<Self>, a: Assignment) {
        let kind = a.app.driver();
        let spec = Self::spec_of(&a, &self.config.node.id);
        let result = match self.drivers.get(&kind).cloned() {
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
        mut statuses: mpsc::UnboundedReceiver<TaskStatus>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, AgentError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| AgentError::Http {
                url: String::new(),
                message: e.to_string(),
            })?;
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
        });
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
        let agent = Agent {
            shared: shared.clone(),
        };
        let handle = tokio::spawn(async move {
            // Driver status updates -> local state + pending report.
            let s1 = agent.shared.clone();
            let collector = tokio::spawn(async move {
                while let Some(st) = statuses.recv().await {
                    s1.record(st);
                }
            });
            agent.shared.register_until_ok().await;
            let reporter = tokio::spawn(report_loop(agent.shared.clone()));
            let poller = tokio::spawn(poll_loop(agent.shared.clone()));
            let _ = shutdown.changed().await;
            reporter.abort();
            poller.abort();
            collector.abort();
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
            Ok(list) => {
                delay = Duration::from_millis(200);
                s.reconcile(&list);
                // Always re-check soon even if the generation did not move: local state
                // (a finished start, a kill) may need another pass.
                if list.generation == generation {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                generation = list.generation;
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
