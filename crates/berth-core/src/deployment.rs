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
    #[serde(default)]
    pub blocked: Option<String>,
    /// Set for the deployment started by cancelling another one.
    #[serde(default)]
    pub rollback_of: Option<String>,
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

    /// The `plan` object of deployment events: with `original` and `target` root groups.
    pub fn plan_json(&self) -> Value {
        let group = |apps: &BTreeMap<String, Option<AppDefinition>>| {
            let list: Vec<&AppDefinition> = apps.values().flatten().collect();
            json!({"id": "/", "apps": list, "groups": [], "dependencies": [], "version": self.version})
        };
        json!({
            "id": self.id,
            "version": self.version,
            "steps": self.steps_json(),
            "original": group(&self.original),
            "target": group(&self.target),
        })
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
        let plan = d.plan_json();
        assert_eq!(plan["target"]["apps"][0]["id"], "/a");
        assert_eq!(plan["original"]["apps"], json!([]));
    }
}
