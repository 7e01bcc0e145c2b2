//! Namespaces in the control plane: the stored objects, each namespace's usage (kept up to
//! date as apps change), admission of app changes against quotas and policies, and the
//! placement rules handed to the scheduler.
//!
//! Admission ([`admit`]) only reads the model, so every op calls it before it changes
//! anything (see [`crate::Inner::apply`]).

use crate::error::{ApiError, ApiResult};
use crate::state::{Changes, Cluster, K_NAMESPACES};
use berth_core::app::AppDefinition;
use berth_core::error::ValidationErrors;
use berth_core::namespace::{self, Namespace, NamespacePolicy, Usage, namespace_of};
use berth_scheduler::NamespacePlacement;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// What tasks get when neither the app nor its namespace says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefaults {
    /// The user exec tasks run as when the app names none (Marathon's `--mesos_user`).
    pub default_user: String,
    /// The policy of namespaces without an object, and of a namespace PUT without `policy`.
    pub default_policy: NamespacePolicy,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            default_user: "nobody".into(),
            default_policy: NamespacePolicy::default(),
        }
    }
}

impl Cluster {
    /// The policy that applies to the apps of namespace `ns`.
    pub fn namespace_policy(&self, ns: &str) -> &NamespacePolicy {
        self.namespaces
            .get(ns)
            .map(|n| &n.policy)
            .unwrap_or(&self.task_defaults.default_policy)
    }

    /// What the apps of namespace `ns` ask for now.
    pub fn namespace_usage(&self, ns: &str) -> Usage {
        self.ns_usage.get(ns).copied().unwrap_or_default()
    }

    /// Counts (or un-counts) an app in its namespace's usage.
    pub(crate) fn account_app(&mut self, app: &AppDefinition, add: bool) {
        let ns = namespace_of(&app.id);
        let u = Usage::of_app(app);
        let entry = self.ns_usage.entry(ns.to_string()).or_default();
        if add {
            entry.add(&u);
        } else {
            entry.sub(&u);
        }
        if entry.is_zero() {
            self.ns_usage.remove(ns);
        }
    }

    /// Hands the namespaces' node selectors and dedications to the scheduler.
    pub fn sync_sched_namespaces(&mut self) {
        let table = self
            .namespaces
            .values()
            .filter(|n| !n.node_selector.is_empty())
            .map(|n| NamespacePlacement {
                namespace: n.id.clone(),
                node_selector: n.node_selector.clone(),
                dedicated: n.dedicated,
            })
            .collect();
        self.scheduler.set_namespaces(table);
    }
}

/// One app a write would change: its id, its new definition (`None`: removed), and where its
/// errors are reported (`""` for a single app, `(i)` for the i-th of a bulk update).
pub struct Change<'a> {
    pub id: &'a str,
    pub new: Option<&'a AppDefinition>,
    pub at: String,
}

impl<'a> Change<'a> {
    pub fn new(id: &'a str, new: Option<&'a AppDefinition>) -> Self {
        Self {
            id,
            new,
            at: String::new(),
        }
    }
}

/// Refuses a write that a namespace's policy does not allow, or that would take a namespace
/// past its quota; changes nothing. A change that only lowers (or keeps) the instances of
/// an unchanged configuration is never refused: scaling down works even above a lowered
/// quota or under a tightened policy.
pub fn admit(st: &Cluster, changes: &[Change<'_>]) -> ApiResult<()> {
    let mut errs = ValidationErrors::new();
    let mut totals: BTreeMap<&str, (Usage, Usage)> = BTreeMap::new();
    for c in changes {
        let ns = namespace_of(c.id);
        let old = st.apps.get(c.id);
        let entry = totals.entry(ns).or_insert_with(|| {
            let u = st.namespace_usage(ns);
            (u, u)
        });
        if let Some(o) = old {
            entry.1.sub(&Usage::of_app(o));
        }
        let Some(new) = c.new else { continue };
        entry.1.add(&Usage::of_app(new));
        let found = namespace::check_policy(
            new,
            ns,
            st.namespace_policy(ns),
            Some(&st.task_defaults.default_user),
        );
        // (The exemption is looked at only for a refusal: comparing configs clones both.)
        if !found.is_empty() {
            let only_down = old
                .is_some_and(|o| new.instances <= o.instances && crate::ops::same_config(o, new));
            if !only_down {
                // Name the app: a bulk update or a group holds many.
                let mut named = ValidationErrors::new();
                for f in found.0 {
                    for e in f.errors {
                        named.add(
                            format!("{}{}", c.at, f.path),
                            format!("app '{}': {e}", c.id),
                        );
                    }
                }
                errs.extend_prefixed("", named);
            }
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::refused(errs));
    }
    for (ns, (before, after)) in &totals {
        let Some(obj) = st.namespaces.get(*ns) else {
            continue;
        };
        for e in namespace::check_quota(ns, &obj.quota, before, after) {
            errs.add("/", e.to_string());
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::refused(errs))
    }
}

/// `PUT /api/v1/namespaces/{id}`: creates or replaces a namespace; returns whether it was
/// created. Lowering a quota below the usage is allowed (growth is refused from then on).
pub fn put_namespace(st: &mut Cluster, ch: &mut Changes, mut ns: Namespace) -> bool {
    let (_, version) = crate::ops::next_version();
    ns.version = Some(version);
    ch.put(format!("{K_NAMESPACES}{}", ns.id), &ns);
    let created = st.namespaces.insert(ns.id.clone(), ns).is_none();
    st.sync_sched_namespaces();
    created
}

/// `DELETE /api/v1/namespaces/{id}`: only a namespace without apps.
pub fn delete_namespace(st: &mut Cluster, ch: &mut Changes, id: &str) -> ApiResult<()> {
    if !st.namespaces.contains_key(id) {
        return Err(ApiError::NotFound(format!(
            "namespace '{id}' does not exist"
        )));
    }
    let apps = st.namespace_usage(id).apps;
    if apps > 0 {
        return Err(ApiError::Conflict {
            message: format!(
                "namespace '{id}' still has {apps} app{}: delete them first (its quota, node selector and policy apply to them)",
                if apps == 1 { "" } else { "s" }
            ),
            deployments: vec![],
        });
    }
    st.namespaces.remove(id);
    ch.delete(format!("{K_NAMESPACES}{id}"));
    st.sync_sched_namespaces();
    Ok(())
}

/// A namespace as the API shows it: its object (or the implied one), `defined`, `usage`.
/// `None` when it has neither an object nor apps.
pub fn namespace_json(st: &Cluster, id: &str) -> Option<Value> {
    let usage = st.namespace_usage(id);
    let (ns, defined) = match st.namespaces.get(id) {
        Some(n) => (n.clone(), true),
        None if usage.apps > 0 => (
            Namespace::implied(id, st.task_defaults.default_policy.clone()),
            false,
        ),
        None => return None,
    };
    let mut v = serde_json::to_value(&ns).unwrap_or_else(|_| json!({"id": id}));
    v["defined"] = json!(defined);
    v["usage"] = usage.to_json();
    Some(v)
}

/// Every namespace with an object or with apps, by id.
pub fn namespaces_json(st: &Cluster) -> Value {
    let ids: BTreeSet<&str> = st
        .namespaces
        .keys()
        .map(String::as_str)
        .chain(st.ns_usage.keys().map(String::as_str))
        .collect();
    let list: Vec<Value> = ids
        .into_iter()
        .filter_map(|id| namespace_json(st, id))
        .collect();
    json!({ "namespaces": list })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{self, RequestCtx};
    use berth_core::namespace::Quota;

    fn app(v: Value) -> AppDefinition {
        berth_core::validate::app_from_json(v).unwrap()
    }

    fn with_quota(st: &mut Cluster, id: &str, quota: Quota) {
        let mut ch = Changes::default();
        put_namespace(
            st,
            &mut ch,
            Namespace {
                quota,
                ..Namespace::implied(id, NamespacePolicy::default())
            },
        );
    }

    #[test]
    fn usage_follows_every_app_change() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        let a =
            app(json!({"id": "/p/a", "cmd": "sleep 1", "instances": 2, "cpus": 0.5, "mem": 10}));
        ops::create_app(&mut st, &mut ch, a, &ctx).unwrap();
        let b = json!([{"id": "/p/b", "cmd": "sleep 1", "instances": 3, "cpus": 0.1, "mem": 1}]);
        ops::put_apps(
            &mut st,
            &mut ch,
            b.as_array().unwrap().clone(),
            false,
            true,
            &ctx,
        )
        .unwrap();
        let u = st.namespace_usage("p");
        assert_eq!((u.cpus_milli, u.instances, u.apps), (1300, 5, 2));
        ops::delete_app(&mut st, &mut ch, "/p/a", true).unwrap();
        let u = st.namespace_usage("p");
        assert_eq!((u.cpus_milli, u.instances, u.apps), (300, 3, 1));
        ops::delete_app(&mut st, &mut ch, "/p/b", true).unwrap();
        assert!(st.ns_usage.is_empty());
    }

    #[test]
    fn a_write_past_a_quota_is_refused_before_anything_changes() {
        let mut st = Cluster::new(1);
        let ctx = RequestCtx::default();
        with_quota(
            &mut st,
            "p",
            Quota {
                cpus: Some(1.0),
                ..Quota::default()
            },
        );
        let mut ch = Changes::default();
        let a = app(json!({"id": "/p/a", "cmd": "sleep 1", "instances": 3, "cpus": 0.5}));
        let err = ops::create_app(&mut st, &mut ch, a, &ctx).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            err.body()["message"],
            "namespace 'p' quota 'cpus' exceeded: 1.5 requested, limit 1, over by 0.5"
        );
        assert!(st.apps.is_empty() && st.deployments.is_empty() && ch.ops.is_empty());
        // Other namespaces are not limited by it.
        let other = app(json!({"id": "/q/a", "cmd": "sleep 1", "instances": 3, "cpus": 0.5}));
        ops::create_app(&mut st, &mut ch, other, &ctx).unwrap();
        // At the limit, then a bulk update that passes it in sum.
        let a = app(json!({"id": "/p/a", "cmd": "sleep 1", "instances": 2, "cpus": 0.5}));
        ops::create_app(&mut st, &mut ch, a, &ctx).unwrap();
        let before = st.deployments.len();
        let mut ch = Changes::default();
        let bulk = vec![
            json!({"id": "/p/a", "instances": 1}),
            json!({"id": "/p/b", "cmd": "sleep 1", "instances": 2, "cpus": 0.5}),
        ];
        let err = ops::put_apps(&mut st, &mut ch, bulk, true, true, &ctx).unwrap_err();
        assert!(err.to_string().contains("1.5 requested"), "{err}");
        assert!(ch.ops.is_empty() && st.deployments.len() == before);
        assert_eq!(st.apps["/p/a"].instances, 2);
        // Scaling one down while growing another within the limit is fine.
        let bulk = vec![
            json!({"id": "/p/a", "instances": 1}),
            json!({"id": "/p/b", "cmd": "sleep 1", "instances": 1, "cpus": 0.5}),
        ];
        ops::put_apps(&mut st, &mut ch, bulk, true, true, &ctx).unwrap();
        // A group scale past it is refused too.
        let mut ch = Changes::default();
        let err = ops::scale_group(&mut st, &mut ch, "/p", 2.0, true, &ctx).unwrap_err();
        assert!(err.to_string().contains("quota 'cpus'"), "{err}");
        assert!(ch.ops.is_empty());
    }

    #[test]
    fn scaling_down_is_allowed_above_a_lowered_quota() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        let a = app(json!({"id": "/p/a", "cmd": "sleep 1", "instances": 10, "cpus": 1}));
        ops::create_app(&mut st, &mut ch, a, &ctx).unwrap();
        with_quota(
            &mut st,
            "p",
            Quota {
                instances: Some(2),
                ..Quota::default()
            },
        );
        let down = ops::AppUpdate::parse(json!({"instances": 5})).unwrap();
        ops::put_app(&mut st, &mut ch, "/p/a", down, true, true, &ctx).unwrap();
        let up = ops::AppUpdate::parse(json!({"instances": 6})).unwrap();
        let err = ops::put_app(&mut st, &mut ch, "/p/a", up, true, true, &ctx).unwrap_err();
        assert!(
            err.to_string()
                .contains("quota 'instances' exceeded: 6 requested, limit 2, over by 4"),
            "{err}"
        );
        let mut ch = Changes::default();
        let err = delete_namespace(&mut st, &mut ch, "p").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::CONFLICT);
        assert!(err.to_string().contains("still has 1 app"), "{err}");
        assert!(st.namespaces.contains_key("p") && ch.ops.is_empty());
    }

    #[test]
    fn policy_refusals_name_the_app_and_field() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        let root = app(json!({"id": "/p/a", "cmd": "id", "user": "root"}));
        let err = ops::create_app(&mut st, &mut ch, root.clone(), &ctx).unwrap_err();
        let body = err.body();
        assert_eq!(body["details"][0]["path"], "/user");
        assert!(
            body["message"].as_str().unwrap().contains("app '/p/a'"),
            "{body}"
        );
        assert!(st.apps.is_empty());
        // The namespace allows it: accepted.
        let mut ns = Namespace::implied("p", NamespacePolicy::allowing_root());
        put_namespace(&mut st, &mut ch, ns.clone());
        ops::create_app(&mut st, &mut ch, root, &ctx).unwrap();
        // Tightened later: a scale down still works, a scale up does not.
        ns.policy.allow_root = false;
        put_namespace(&mut st, &mut ch, ns);
        let down = ops::AppUpdate::parse(json!({"instances": 0})).unwrap();
        ops::put_app(&mut st, &mut ch, "/p/a", down, true, true, &ctx).unwrap();
        let up = ops::AppUpdate::parse(json!({"instances": 2})).unwrap();
        assert!(ops::put_app(&mut st, &mut ch, "/p/a", up, true, true, &ctx).is_err());
        // The default user counts when the app names none.
        st.task_defaults.default_user = "root".into();
        let plain = app(json!({"id": "/q/a", "cmd": "id"}));
        let err = ops::create_app(&mut st, &mut ch, plain.clone(), &ctx).unwrap_err();
        assert!(err.to_string().contains("default task user"), "{err}");
        st.task_defaults.default_policy.allow_root = true;
        ops::create_app(&mut st, &mut ch, plain, &ctx).unwrap();
        // In a bulk update the path says which app.
        let bulk = vec![
            json!({"id": "/q/b", "cmd": "id"}),
            json!({"id": "/p/c", "cmd": "id", "container": {"type": "DOCKER",
                   "docker": {"image": "busybox", "privileged": true}}}),
        ];
        let err = ops::put_apps(&mut st, &mut ch, bulk, false, true, &ctx).unwrap_err();
        let paths: Vec<Value> = err.body()["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].clone())
            .collect();
        assert_eq!(
            paths,
            [json!("(1)/user"), json!("(1)/container/docker/privileged")]
        );
    }

    #[test]
    fn a_rollback_past_the_quota_is_refused_and_keeps_the_deployment() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        let a = app(json!({"id": "/p/a", "cmd": "sleep 1", "instances": 2, "cpus": 1}));
        ops::create_app(&mut st, &mut ch, a, &ctx).unwrap();
        st.deployments.clear();
        with_quota(
            &mut st,
            "p",
            Quota {
                cpus: Some(3.0),
                ..Quota::default()
            },
        );
        let down = ops::AppUpdate::parse(json!({"instances": 1})).unwrap();
        let (_, d) = ops::put_app(&mut st, &mut ch, "/p/a", down, true, false, &ctx).unwrap();
        let b = app(json!({"id": "/p/b", "cmd": "sleep 1", "instances": 2, "cpus": 1}));
        ops::create_app(&mut st, &mut ch, b, &ctx).unwrap();
        let mut ch = Changes::default();
        let err =
            ops::cancel_deployment(&mut st, &mut ch, &d.deployment_id, false, &ctx).unwrap_err();
        assert!(
            err.to_string().contains("4 requested, limit 3, over by 1"),
            "{err}"
        );
        assert!(st.deployments.contains_key(&d.deployment_id) && ch.ops.is_empty());
        assert_eq!(st.apps["/p/a"].instances, 1);
        // Forgetting it (force) changes no desired state: allowed.
        ops::cancel_deployment(&mut st, &mut ch, &d.deployment_id, true, &ctx).unwrap();
    }

    #[test]
    fn listing_shows_defined_and_implied_namespaces_with_usage() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        with_quota(&mut st, "prod", Quota::default());
        let a = app(json!({"id": "/web", "cmd": "sleep 1", "instances": 2, "cpus": 0.25}));
        ops::create_app(&mut st, &mut ch, a, &ctx).unwrap();
        let v = namespaces_json(&st);
        let list = v["namespaces"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["id"], "default");
        assert_eq!(list[0]["defined"], false);
        assert_eq!(list[0]["usage"]["cpus"], json!(0.5));
        assert_eq!(list[1]["id"], "prod");
        assert_eq!(list[1]["defined"], true);
        assert_eq!(list[1]["usage"]["apps"], 0);
        assert!(namespace_json(&st, "nothing").is_none());
        delete_namespace(&mut st, &mut ch, "prod").unwrap();
        assert!(namespace_json(&st, "prod").is_none());
    }
}
