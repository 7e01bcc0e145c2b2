//! The dependency graph between jobs: a dependent job (with `parents`) runs once every parent
//! has succeeded since the child last ran. Pure rules only; the scheduler persists the per-edge
//! state (Chronos kept it in memory and lost it on failover).

use super::Job;
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why a job cannot be created or changed with the parents it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("parent '{0}' does not exist")]
    UnknownParent(String),
    /// Each job in `path` depends on the next; the first and last are the same job.
    #[error("dependency cycle: {}", CyclePath(.path))]
    Cycle { path: Vec<String> },
}

struct CyclePath<'a>(&'a [String]);

impl fmt::Display for CyclePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" -> "))
    }
}

/// Each job's parents, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobGraph {
    parents: BTreeMap<String, Vec<String>>,
}

impl JobGraph {
    pub fn from_jobs<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Self {
        JobGraph {
            parents: jobs
                .into_iter()
                .map(|j| (j.name.clone(), j.parents.clone()))
                .collect(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.parents.contains_key(name)
    }

    /// The jobs naming `name` as a parent, in name order.
    pub fn children(&self, name: &str) -> Vec<&str> {
        self.parents
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| p == name))
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// Checks creating or replacing job `name` with `parents`: every parent exists (or is
    /// `name` itself, which is then a cycle) and no cycle forms. The cycle is reported from
    /// `name`, e.g. `c -> a -> b -> c`. O(jobs + edges).
    pub fn check_upsert(&self, name: &str, parents: &[String]) -> Result<(), GraphError> {
        for p in parents {
            if p != name && !self.contains(p) {
                return Err(GraphError::UnknownParent(p.clone()));
            }
        }
        // Walk up from each new parent; reaching `name` closes a cycle. `name`'s old parents
        // are never followed: the walk stops at `name`.
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = Vec::new();
        for p in parents {
            if seen.insert(p) {
                came_from.insert(p, name);
                stack.push(p);
            }
        }
        while let Some(job) = stack.pop() {
            if job == name {
                // Rebuild name -> ... -> job(=name) from the links back.
                let mut rev = vec![name.to_string()];
                let mut cur = came_from.get(job).copied().unwrap_or(name);
                while cur != name {
                    rev.push(cur.to_string());
                    cur = came_from.get(cur).copied().unwrap_or(name);
                }
                rev.push(name.to_string());
                rev.reverse();
                return Err(GraphError::Cycle { path: rev });
            }
            for gp in self.parents.get(job).into_iter().flatten() {
                if seen.insert(gp) {
                    came_from.insert(gp, job);
                    stack.push(gp);
                }
            }
        }
        Ok(())
    }
}

/// The children of `deleted` as they must be stored once it is deleted (Chronos: "children
/// inherit its parents, or its schedule"):
///
/// * `deleted` by name is replaced in each child's parents by `deleted`'s own parents (no
///   duplicates, order kept);
/// * a child left with no parents takes `deleted`'s trigger: its `schedule`, `cron` and
///   `scheduleTimeZone`;
/// * if `deleted` had no trigger either (an invalid job), the child keeps no parents and is
///   disabled, so it never runs until someone gives it a trigger.
///
/// The rewiring cannot form a cycle: it only shortens paths that already existed. Returns the
/// changed children in name order; jobs that are not children are not returned.
pub fn reparent_on_delete(jobs: &[Job], deleted: &str) -> Vec<Job> {
    let Some(gone) = jobs.iter().find(|j| j.name == deleted) else {
        return vec![];
    };
    let mut out: Vec<Job> = jobs
        .iter()
        .filter(|j| j.name != deleted && j.parents.iter().any(|p| p == deleted))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    for child in &mut out {
        let mut parents: Vec<String> = Vec::with_capacity(child.parents.len());
        for p in std::mem::take(&mut child.parents) {
            let replacement = if p == deleted {
                gone.parents.clone()
            } else {
                vec![p]
            };
            for r in replacement {
                if r != child.name && !parents.contains(&r) {
                    parents.push(r);
                }
            }
        }
        child.parents = parents;
        if child.parents.is_empty() {
            child.schedule = gone.schedule.clone();
            child.cron = gone.cron.clone();
            child.schedule_time_zone = gone.schedule_time_zone.clone();
            if child.trigger().is_none() {
                child.disabled = true;
            }
        }
    }
    out
}

/// One parent's state as seen by a dependent job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentState<'a> {
    pub name: &'a str,
    /// When this parent last succeeded (or, with `softError`, last finished); `None`: never.
    pub last_success: Option<Timestamp>,
}

/// The parents that have not succeeded since the child's last run started (`None`: the child
/// never ran, so each parent needs one success). A success at the very instant the child
/// started counts as before it: that run was its trigger.
pub fn pending_parents<'a>(
    child_last_run_start: Option<Timestamp>,
    parents: &[ParentState<'a>],
) -> Vec<&'a str> {
    parents
        .iter()
        .filter(|p| match (p.last_success, child_last_run_start) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(s), Some(run)) => s <= run,
        })
        .map(|p| p.name)
        .collect()
}

/// Whether a dependent job is due: it has parents and all of them succeeded since its last run.
pub fn is_ready(child_last_run_start: Option<Timestamp>, parents: &[ParentState<'_>]) -> bool {
    !parents.is_empty() && pending_parents(child_last_run_start, parents).is_empty()
}
