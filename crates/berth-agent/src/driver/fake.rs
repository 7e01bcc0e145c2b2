//! The fake driver: runs nothing, only reports. Used to simulate thousands of nodes in one
//! process, so a task costs a map entry (plus one tokio timer while it is starting, when
//! `start_latency > 0`).

use super::{Driver, DriverError, StatusSink, TaskSpec, TaskStatus};
use berth_core::app::DriverKind;
use berth_core::task::TaskState;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeConfig {
    /// Delay between TASK_STARTING and TASK_RUNNING (or the simulated failure); zero: at once.
    pub start_latency: Duration,
    /// Probability (0..=1) that a start ends in TASK_FAILED instead of TASK_RUNNING.
    pub failure_rate: f64,
    /// Seed of the failure draws, for reproducible simulations.
    pub seed: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            start_latency: Duration::ZERO,
            failure_rate: 0.0,
            seed: 0,
        }
    }
}

/// Message of a simulated start failure.
pub const SIMULATED_FAILURE: &str = "simulated failure (fake driver)";

#[derive(Clone)]
pub struct FakeDriver {
    inner: Arc<Inner>,
    /// The driver it answers as: `fake`, or `exec`/`docker` when it stands in for them.
    kind: DriverKind,
}

struct Inner {
    config: FakeConfig,
    sink: StatusSink,
    state: Mutex<State>,
}

struct State {
    rng: SmallRng,
    tasks: HashMap<String, TaskStatus>,
}

impl FakeDriver {
    pub fn new(config: FakeConfig, sink: StatusSink) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                sink,
                state: Mutex::new(State {
                    rng: SmallRng::seed_from_u64(config.seed),
                    tasks: HashMap::new(),
                }),
            }),
            kind: DriverKind::Fake,
        }
    }

    /// The same simulation answering as driver `kind`: a simulated node offering `exec` or
    /// `docker` takes the apps that ask for them (apps without a `BERTH_DRIVER=fake` label)
    /// and runs nothing for them either.
    pub fn standing_in_for(mut self, kind: DriverKind) -> Self {
        self.kind = kind;
        self
    }

    /// Number of tasks the driver knows (running or not yet forgotten).
    pub fn len(&self) -> usize {
        self.inner.state.lock().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn status(id: &str, state: TaskState, message: Option<&str>, exit_code: Option<i32>) -> TaskStatus {
    TaskStatus {
        task_id: id.to_string(),
        state,
        message: message.map(str::to_string),
        exit_code,
        ip_addresses: Vec::new(),
    }
}

impl Inner {
    /// Moves a still-starting task to its drawn outcome.
    fn settle(&self, id: &str, fail: bool) {
        let update = {
            let mut st = self.state.lock();
            match st.tasks.get_mut(id) {
                Some(s) if s.state == TaskState::Starting => {
                    *s = if fail {
                        status(id, TaskState::Failed, Some(SIMULATED_FAILURE), Some(1))
                    } else {
                        status(id, TaskState::Running, None, None)
                    };
                    s.clone()
                }
                // Killed or forgotten meanwhile.
                _ => return,
            }
        };
        let _ = self.sink.send(update);
    }
}

impl Driver for FakeDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let id = spec.task_id;
            let fail = {
                let mut st = inner.state.lock();
                if st.tasks.contains_key(&id) {
                    return Ok(());
                }
                let rate = inner.config.failure_rate;
                let fail = rate > 0.0 && st.rng.random::<f64>() < rate;
                st.tasks
                    .insert(id.clone(), status(&id, TaskState::Starting, None, None));
                fail
            };
            let _ = inner
                .sink
                .send(status(&id, TaskState::Starting, None, None));
            let latency = inner.config.start_latency;
            if latency.is_zero() {
                inner.settle(&id, fail);
            } else {
                let weak: Weak<Inner> = Arc::downgrade(inner);
                tokio::spawn(async move {
                    tokio::time::sleep(latency).await;
                    if let Some(inner) = weak.upgrade() {
                        inner.settle(&id, fail);
                    }
                });
            }
            Ok(())
        })
    }

    fn kill(&self, task_id: &str, _grace: Duration) -> BoxFuture<'_, Result<(), DriverError>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let update = {
                let mut st = self.inner.state.lock();
                match st.tasks.get_mut(&task_id) {
                    Some(s) if !s.state.is_terminal() => {
                        *s = status(&task_id, TaskState::Killed, Some("killed"), None);
                        Some(s.clone())
                    }
                    _ => None,
                }
            };
            if let Some(update) = update {
                let _ = self.inner.sink.send(update);
            }
            Ok(())
        })
    }

    fn recover(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, DriverError>> {
        // Nothing survives the process: a restarted fake agent has no tasks.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, DriverError>> {
        Box::pin(async move {
            let mut out: Vec<TaskStatus> =
                self.inner.state.lock().tasks.values().cloned().collect();
            out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            Ok(out)
        })
    }

    fn forget(&self, task_id: &str) {
        self.inner.state.lock().tasks.remove(task_id);
    }
}
