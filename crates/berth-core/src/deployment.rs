//! Deployments: every change to an app is a plan from an original state to a target state,
//! listed in `/v2/deployments` until observed state matches the target.

use crate::app::AppDefinition;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionKind {
    StartApplication,
    StopApplication,
    ScaleApplication,
    RestartApplication,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentAction {
    pub action: ActionKind,
    pub app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeploymentStep {
    pub actions: Vec<DeploymentAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub version: String,
    pub affected_apps: Vec<String>,
    pub steps: Vec<DeploymentStep>,
    /// 1-based, as in Marathon.
    pub current_step: usize,
    /// Each affected app before the change (`None`: it did not exist).
    pub original: BTreeMap<String, Option<AppDefinition>>,
    /// Each affected app after the change (`None`: it is being removed).
    pub target: BTreeMap<String, Option<AppDefinition>>,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Why the deployment is not progressing, when it is not (Berth's own API shows it).
    /// Derived from observed state on every controller pass, so never stored: rewriting a
    /// plan of thousands of apps whenever a reason changed made the store grow.
    #[serde(skip)]
    pub blocked: Option<String>,
    /// Set for the deployment started by cancelling another one.
    #[serde(default)]
    pub rollback_of: Option<String>,
    /// `plan` of this deployment's events, rendered on first use: it never changes (the
    /// current step is not part of it), and with thousands of apps it is megabytes.
    #[serde(skip)]
    pub rendered_plan: std::sync::OnceLock<std::sync::Arc<str>>,
    /// Apps of `target` not converged yet as of the controller's last look at each (memory
    /// only; `None` until a look at all of them): a pass looks again only at the apps that
    /// changed, so a deployment of thousands of apps is not re-checked whole per chunk.
    #[serde(skip)]
    pub unconverged: Option<std::collections::BTreeSet<String>>,
    /// Per app of `target`: why it holds the deployment up (what `blocked` joins).
    #[serde(skip)]
    pub blocked_by_app: BTreeMap<String, String>,
}

impl Deployment {
    pub fn new(
        version: String,
        steps: Vec<DeploymentStep>,
        original: BTreeMap<String, Option<AppDefinition>>,
        target: BTreeMap<String, Option<AppDefinition>>,
        created_at: i64,
    ) -> Self {
        let mut affected: Vec<String> = original.keys().chain(target.keys()).cloned().collect();
        affected.sort();
        affected.dedup();
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            version,
            affected_apps: affected,
            steps,
            current_step: 1,
            original,
            target,
            created_at,
            blocked: None,
            rollback_of: None,
            rendered_plan: Default::default(),
            unconverged: None,
            blocked_by_app: BTreeMap::new(),
        }
    }

    /// The steps in Marathon's JSON form.
    fn steps_json(&self) -> Value {
        json!(self
            .steps
            .iter()
            .map(|s| json!({"actions": s.actions.iter().map(|a| json!({"action": a.action, "app": a.app})).collect::<Vec<_>>()}))
            .collect::<Vec<_>>())
    }

    /// `/v2/deployments` item, exactly the keys marathon-python accepts.
    pub fn to_marathon(&self) -> Value {
        let current = self
            .steps
            .get(self.current_step.saturating_sub(1))
            .map(|s| {
                s.actions
                    .iter()
                    .map(|a| json!({"action": a.action, "app": a.app, "readinessCheckResults": []}))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        json!({
            "id": self.id,
            "version": self.version,
            "affectedApps": self.affected_apps,
            "affectedPods": [],
            "steps": self.steps_json(),
            "currentActions": current,
            "currentStep": self.current_step,
            "totalSteps": self.steps.len(),
        })
    }

    /// The `plan` object of deployment events, with `original` and `target` root groups, as
    /// JSON text (rendered once per deployment).
    pub fn plan_json(&self) -> std::sync::Arc<str> {
        self.rendered_plan
            .get_or_init(|| {
                let plan = PlanView {
                    id: &self.id,
                    version: &self.version,
                    steps: &self.steps,
                    original: GroupView {
                        apps: &self.original,
                        version: &self.version,
                    },
                    target: GroupView {
                        apps: &self.target,
                        version: &self.version,
                    },
                };
                // Our own types always encode (string keys only).
                std::sync::Arc::from(serde_json::to_string(&plan).unwrap_or_default())
            })
            .clone()
    }
}

/// Orders one change to many apps into steps, as Marathon does: an app comes in a later
/// step than the apps it depends on that change too; apps with no such dependency share the
/// first step. `changes` are `(action, app id, its dependencies)`. A cycle is an error naming
/// an app on it.
pub fn steps_by_dependencies(
    changes: Vec<(ActionKind, String, Vec<String>)>,
) -> Result<Vec<DeploymentStep>, String> {
    let index: std::collections::HashMap<&str, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, (_, id, _))| (id.as_str(), i))
        .collect();
    // Kahn's algorithm, one layer at a time: linear in apps plus dependencies.
    let mut waiting_on = vec![0usize; changes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); changes.len()];
    for (i, (_, _, deps)) in changes.iter().enumerate() {
        let mut seen = std::collections::HashSet::new();
        for d in deps {
            if let Some(&j) = index.get(d.as_str())
                && seen.insert(j)
            {
                waiting_on[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut layer: Vec<usize> = (0..changes.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut layer_of = vec![usize::MAX; changes.len()];
    let mut depth = 0;
    let mut placed = 0;
    while !layer.is_empty() {
        let mut next = Vec::new();
        for &i in &layer {
            layer_of[i] = depth;
            placed += 1;
            for &k in &dependents[i] {
                waiting_on[k] -= 1;
                if waiting_on[k] == 0 {
                    next.push(k);
                }
            }
        }
        layer = next;
        depth += 1;
    }
    if placed < changes.len() {
        let on_cycle = (0..changes.len())
            .find(|&i| layer_of[i] == usize::MAX)
            .map(|i| changes[i].1.clone())
            .unwrap_or_default();
        return Err(format!("the dependencies of {on_cycle} form a cycle"));
    }
    let mut steps = vec![DeploymentStep::default(); depth];
    for (i, (action, app, _)) in changes.into_iter().enumerate() {
        steps[layer_of[i]]
            .actions
            .push(DeploymentAction { action, app });
    }
    Ok(steps)
}

#[derive(Serialize)]
struct PlanView<'a> {
    id: &'a str,
    version: &'a str,
    steps: &'a [DeploymentStep],
    original: GroupView<'a>,
    target: GroupView<'a>,
}

/// A root group holding the apps of one side of a plan.
struct GroupView<'a> {
    apps: &'a BTreeMap<String, Option<AppDefinition>>,
    version: &'a str,
}

impl Serialize for GroupView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let apps: Vec<&AppDefinition> = self.apps.values().flatten().collect();
        let empty: [(); 0] = [];
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("id", "/")?;
        m.serialize_entry("apps", &apps)?;
        m.serialize_entry("groups", &empty)?;
        m.serialize_entry("dependencies", &empty)?;
        m.serialize_entry("version", self.version)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marathon_json_shape() {
        let mut target = BTreeMap::new();
        target.insert(
            "/a".to_string(),
            Some(AppDefinition {
                id: "/a".into(),
                ..Default::default()
            }),
        );
        let d = Deployment::new(
            "2024-01-01T00:00:00.000Z".into(),
            vec![DeploymentStep {
                actions: vec![DeploymentAction {
                    action: ActionKind::StartApplication,
                    app: "/a".into(),
                }],
            }],
            BTreeMap::from([("/a".to_string(), None)]),
            target,
            0,
        );
        let j = d.to_marathon();
        assert_eq!(j["affectedApps"], json!(["/a"]));
        assert_eq!(j["currentActions"][0]["action"], "StartApplication");
        assert_eq!(j["totalSteps"], 1);
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 8);
        let plan: Value = serde_json::from_str(&d.plan_json()).unwrap();
        assert_eq!(plan["target"]["apps"][0]["id"], "/a");
        assert_eq!(plan["steps"][0]["actions"][0]["action"], "StartApplication");
        assert_eq!(plan["original"]["apps"], json!([]));
    }

    #[test]
    fn independent_apps_share_one_step_and_dependents_follow() {
        let start = |id: &str, deps: &[&str]| {
            (
                ActionKind::StartApplication,
                id.to_string(),
                deps.iter().map(|d| d.to_string()).collect(),
            )
        };
        let steps = steps_by_dependencies(vec![
            start("/web", &["/db", "/cache"]),
            start("/db", &[]),
            start("/cache", &["/db", "/elsewhere"]),
            start("/batch", &[]),
        ])
        .unwrap();
        let ids: Vec<Vec<&str>> = steps
            .iter()
            .map(|s| s.actions.iter().map(|a| a.app.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            vec![vec!["/db", "/batch"], vec!["/cache"], vec!["/web"]]
        );
        let many: Vec<_> = (0..5000).map(|i| start(&format!("/a{i}"), &[])).collect();
        assert_eq!(steps_by_dependencies(many).unwrap().len(), 1);
        let cycle = steps_by_dependencies(vec![start("/a", &["/b"]), start("/b", &["/a"])]);
        assert!(cycle.unwrap_err().contains("cycle"));
        assert!(steps_by_dependencies(vec![]).unwrap().is_empty());
    }
}
