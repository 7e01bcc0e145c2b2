//! Namespaces (environments such as `dev`, `test`, `prod`): the first segment of an app id.
//! A namespace may carry a quota (cpus, mem, disk, instances, apps summed over its apps'
//! desired state), a node selector (its tasks run only on matching nodes), `dedicated` (the
//! matching nodes take no other namespace's tasks) and a policy (what its tasks may do on a
//! host: run as root, privileged containers, host PID/IPC, host paths).
//!
//! Pure: parsing, validation and arithmetic only. The server stores namespaces and calls
//! [`check_quota`] and [`check_policy`] before every write that changes desired state; the
//! scheduler enforces node selectors and dedicated nodes.

use crate::app::AppDefinition;
use crate::error::ValidationErrors;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;

/// The namespace of app ids with a single segment (`/web`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Most entries in `nodeSelector` and `policy.allowedHostPaths`.
pub const MAX_LIST_ENTRIES: usize = 100;
/// Longest namespace id.
pub const MAX_ID_LEN: usize = 253;
/// Longest selector key or value, or host path.
const MAX_STRING: usize = 1024;

/// The namespace an app id belongs to: its first segment (`/prod/web` -> `prod`,
/// `/prod/team/web` -> `prod`); an id with a single segment (`/web`) is in `default`.
pub fn namespace_of(app_id: &str) -> &str {
    let mut segs = app_id.split('/').filter(|s| !s.is_empty());
    match (segs.next(), segs.next()) {
        (Some(first), Some(_)) => first,
        _ => DEFAULT_NAMESPACE,
    }
}

/// Limits on a namespace's desired state; a missing limit is no limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Sum of `instances × cpus` (pinned apps count whole cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Sum of `instances × mem` (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<f64>,
    /// Sum of `instances × disk` (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<f64>,
    /// Sum of `instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<i64>,
    /// Number of apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<i64>,
}

impl Quota {
    pub fn is_empty(&self) -> bool {
        self == &Quota::default()
    }
}

/// What a namespace's tasks may do on their hosts. Everything is refused by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacePolicy {
    /// Tasks may run as root (`user: "root"`, a Docker `user=root` parameter, or no `user`
    /// when the server's default task user is root).
    #[serde(default)]
    pub allow_root: bool,
    /// Docker `privileged: true`, and the parameters that come close to it (`privileged`,
    /// `cap-add=ALL|SYS_ADMIN`, `device`, `security-opt` with `unconfined`).
    #[serde(default)]
    pub allow_privileged: bool,
    /// Docker parameter `pid=host`.
    #[serde(default)]
    pub allow_host_pid: bool,
    /// Docker parameter `ipc=host`.
    #[serde(default)]
    pub allow_host_ipc: bool,
    /// Host paths (volume `hostPath`, Docker `volume` parameters with an absolute source)
    /// must lie under one of these absolute prefixes (`/` allows every path).
    #[serde(default)]
    pub allowed_host_paths: Vec<String>,
}

impl NamespacePolicy {
    /// Everything allowed but host paths (`berth dev`'s single-user default allows root).
    pub fn allowing_root() -> Self {
        Self {
            allow_root: true,
            ..Self::default()
        }
    }
}

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub id: String,
    #[serde(default)]
    pub quota: Quota,
    /// Node attribute -> value (`hostname` is the node's hostname): the namespace's tasks
    /// run only on nodes carrying every pair.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The nodes matching `node_selector` take only this namespace's tasks.
    #[serde(default)]
    pub dedicated: bool,
    #[serde(default)]
    pub policy: NamespacePolicy,
    /// When it was last written (ISO-8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Namespace {
    /// The implied namespace of apps whose namespace has no object: no quota, no selector,
    /// the server's default policy.
    pub fn implied(id: &str, policy: NamespacePolicy) -> Self {
        Self {
            id: id.to_string(),
            quota: Quota::default(),
            node_selector: BTreeMap::new(),
            dedicated: false,
            policy,
            version: None,
        }
    }
}

/// The body of `PUT /api/v1/namespaces/{id}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    dedicated: Option<bool>,
    #[serde(default)]
    policy: Option<NamespacePolicy>,
}

/// Keys a GET shows that a client may send back unchanged; they are ignored.
const READ_ONLY_KEYS: &[&str] = &["usage", "defined", "version"];

/// Checks a namespace id: one app-id segment (lowercase letters, digits, `-`, `.`).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("a namespace id has 1 to {MAX_ID_LEN} characters"));
    }
    if !crate::path::valid_segment(id) {
        return Err(format!(
            "'{}' is not a namespace id: one app-id segment (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
            crate::validate::echo(id)
        ));
    }
    Ok(())
}

/// Parses and validates the body of a namespace PUT for namespace `id`. A body without
/// `policy` gets `default_policy` (the server's, as for namespaces without an object).
pub fn namespace_from_json(
    id: &str,
    v: Value,
    default_policy: &NamespacePolicy,
) -> Result<Namespace, ValidationErrors> {
    let mut errs = ValidationErrors::new();
    if let Err(e) = check_id(id) {
        errs.add("/id", e);
        return Err(errs);
    }
    let Value::Object(mut map) = v else {
        return Err(ValidationErrors::single("/", "expected a JSON object"));
    };
    for k in READ_ONLY_KEYS {
        map.remove(*k);
    }
    let body: NamespaceBody =
        serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
            let path = crate::validate::marathon_path(e.path());
            let msg = crate::validate::friendly_type_error(&path, &e.inner().to_string());
            ValidationErrors::single(path, msg)
        })?;
    if let Some(body_id) = &body.id
        && body_id.trim_matches('/') != id
    {
        errs.add(
            "/id",
            format!(
                "the id in the body ('{}') does not match the id in the path ('{id}')",
                crate::validate::echo(body_id)
            ),
        );
    }
    let quota = body.quota.unwrap_or_default();
    for (name, value) in [
        ("cpus", quota.cpus),
        ("mem", quota.mem),
        ("disk", quota.disk),
    ] {
        if let Some(x) = value
            && (!x.is_finite() || !(0.0..=1e12).contains(&x))
        {
            errs.add(format!("/quota/{name}"), "must be a number from 0 to 1e12");
        }
    }
    for (name, value) in [("instances", quota.instances), ("apps", quota.apps)] {
        if let Some(n) = value
            && n < 0
        {
            errs.add(format!("/quota/{name}"), "must not be negative");
        }
    }
    let node_selector = body.node_selector.unwrap_or_default();
    if node_selector.len() > MAX_LIST_ENTRIES {
        errs.add(
            "/nodeSelector",
            format!("at most {MAX_LIST_ENTRIES} entries"),
        );
    }
    for (k, v) in &node_selector {
        let p = format!("/nodeSelector/{}", crate::validate::echo(k));
        if k.trim().is_empty() || k.len() > MAX_STRING {
            errs.add(
                &p,
                format!("an attribute name has 1 to {MAX_STRING} characters"),
            );
        }
        if v.is_empty() || v.len() > MAX_STRING {
            errs.add(&p, format!("a value has 1 to {MAX_STRING} characters"));
        }
    }
    let dedicated = body.dedicated.unwrap_or(false);
    if dedicated && node_selector.is_empty() {
        errs.add(
            "/dedicated",
            "a dedicated namespace needs a nodeSelector naming the nodes it owns",
        );
    }
    let mut policy = body.policy.unwrap_or_else(|| default_policy.clone());
    if policy.allowed_host_paths.len() > MAX_LIST_ENTRIES {
        errs.add(
            "/policy/allowedHostPaths",
            format!("at most {MAX_LIST_ENTRIES} entries"),
        );
    }
    for (i, p) in policy.allowed_host_paths.iter_mut().enumerate() {
        let at = format!("/policy/allowedHostPaths({i})");
        if p.len() > MAX_STRING {
            errs.add(at, format!("at most {MAX_STRING} characters"));
            continue;
        }
        match normalize_host_path(p) {
            Ok(norm) => *p = norm,
            Err(e) => errs.add(at, e),
        }
    }
    errs.into_result()?;
    Ok(Namespace {
        id: id.to_string(),
        quota,
        node_selector,
        dedicated,
        policy,
        version: None,
    })
}

/// `/data//x/` -> `/data/x`; a relative path, or one with `..`, is an error.
pub fn normalize_host_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "'{}' is not an absolute path",
            crate::validate::echo(p)
        ));
    }
    let mut out = String::new();
    for seg in p.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if seg == ".." {
            return Err(format!(
                "'{}' must not contain '..'",
                crate::validate::echo(p)
            ));
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// True when absolute `path` lies at or under one of `allowed` (normalised prefixes),
/// component-wise (`/data` allows `/data/x`, not `/database`). A path with `..` never does.
pub fn host_path_allowed(path: &str, allowed: &[String]) -> bool {
    let Ok(path) = normalize_host_path(path) else {
        return false;
    };
    allowed.iter().any(|prefix| {
        let prefix = normalize_host_path(prefix).unwrap_or_default();
        prefix == "/"
            || path == prefix
            || path
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Thousandths, so sums over thousands of apps never drift.
const MILLI: f64 = 1000.0;

fn milli(x: f64) -> i128 {
    if x.is_finite() && x > 0.0 {
        (x * MILLI).round() as i128
    } else {
        0
    }
}

/// A namespace's desired resources: cpus, mem and disk in thousandths, instances, apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpus_milli: i128,
    pub mem_milli: i128,
    pub disk_milli: i128,
    pub instances: i128,
    pub apps: i128,
}

impl Usage {
    /// What one app asks for: `instances ×` its per-task resources (a pinned app holds whole
    /// cores: `ceil(cpus)`, at least 1), and one app.
    pub fn of_app(app: &AppDefinition) -> Usage {
        let n = i128::from(app.instances.max(0));
        let cpus = if app.pinned_cpus().unwrap_or(false) {
            app.cpus.ceil().max(1.0)
        } else {
            app.cpus
        };
        Usage {
            cpus_milli: n * milli(cpus),
            mem_milli: n * milli(app.mem),
            disk_milli: n * milli(app.disk),
            instances: n,
            apps: 1,
        }
    }

    pub fn add(&mut self, o: &Usage) {
        self.cpus_milli += o.cpus_milli;
        self.mem_milli += o.mem_milli;
        self.disk_milli += o.disk_milli;
        self.instances += o.instances;
        self.apps += o.apps;
    }

    pub fn sub(&mut self, o: &Usage) {
        self.cpus_milli -= o.cpus_milli;
        self.mem_milli -= o.mem_milli;
        self.disk_milli -= o.disk_milli;
        self.instances -= o.instances;
        self.apps -= o.apps;
    }

    pub fn is_zero(&self) -> bool {
        self == &Usage::default()
    }

    /// `{"cpus": 2.5, "mem": 1024, "disk": 0, "instances": 5, "apps": 2}`.
    pub fn to_json(&self) -> Value {
        json!({
            "cpus": self.cpus_milli as f64 / MILLI,
            "mem": self.mem_milli as f64 / MILLI,
            "disk": self.disk_milli as f64 / MILLI,
            "instances": self.instances as i64,
            "apps": self.apps as i64,
        })
    }
}

/// One quota a change would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub namespace: String,
    /// `cpus`, `mem`, `disk`, `instances` or `apps`.
    pub quota: &'static str,
    /// The namespace's total after the change, and the limit (thousandths for cpus, mem and
    /// disk; plain counts for instances and apps).
    pub requested: i128,
    pub limit: i128,
    milli: bool,
}

impl QuotaExceeded {
    fn num(&self, x: i128) -> String {
        if !self.milli {
            return x.to_string();
        }
        let sign = if x < 0 { "-" } else { "" };
        let x = x.unsigned_abs();
        let (whole, frac) = (x / 1000, x % 1000);
        if frac == 0 {
            format!("{sign}{whole}")
        } else {
            let f = format!("{frac:03}");
            format!("{sign}{whole}.{}", f.trim_end_matches('0'))
        }
    }
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "namespace '{}' quota '{}' exceeded: {} requested, limit {}, over by {}",
            self.namespace,
            self.quota,
            self.num(self.requested),
            self.num(self.limit),
            self.num(self.requested - self.limit),
        )
    }
}

/// The quotas of `namespace` that going from `before` to `after` would pass. A dimension
/// that does not grow is never refused, even above its limit (after a quota was lowered,
/// scaling down must still work).
pub fn check_quota(
    namespace: &str,
    quota: &Quota,
    before: &Usage,
    after: &Usage,
) -> Vec<QuotaExceeded> {
    let dims: [(&'static str, Option<i128>, i128, i128, bool); 5] = [
        (
            "apps",
            quota.apps.map(i128::from),
            before.apps,
            after.apps,
            false,
        ),
        (
            "instances",
            quota.instances.map(i128::from),
            before.instances,
            after.instances,
            false,
        ),
        (
            "cpus",
            quota.cpus.map(milli),
            before.cpus_milli,
            after.cpus_milli,
            true,
        ),
        (
            "mem",
            quota.mem.map(milli),
            before.mem_milli,
            after.mem_milli,
            true,
        ),
        (
            "disk",
            quota.disk.map(milli),
            before.disk_milli,
            after.disk_milli,
            true,
        ),
    ];
    dims.into_iter()
        .filter_map(|(name, limit, b, a, is_milli)| {
            let limit = limit?;
            (a > limit && a > b).then(|| QuotaExceeded {
                namespace: namespace.to_string(),
                quota: name,
                requested: a,
                limit,
                milli: is_milli,
            })
        })
        .collect()
}

/// True for a user name (or Docker `user[:group]` value) that means root.
pub fn is_root(user: &str) -> bool {
    let name = user.trim().split(':').next().unwrap_or("").trim();
    name == "root" || name == "0"
}

/// The user an app's exec tasks run as: its `user`, else the server's default task user
/// (`None`: the agent's own user).
pub fn effective_user<'a>(
    app: &'a AppDefinition,
    default_user: Option<&'a str>,
) -> Option<&'a str> {
    app.user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .or(default_user.map(str::trim).filter(|u| !u.is_empty()))
}

fn parse_flag(v: &str) -> bool {
    matches!(v.trim(), "" | "true" | "1")
}

/// What `app` does that `policy` of `namespace` does not allow, by field path (empty when
/// nothing). `default_user` is the user tasks run as when the app names none.
pub fn check_policy(
    app: &AppDefinition,
    namespace: &str,
    policy: &NamespacePolicy,
    default_user: Option<&str>,
) -> ValidationErrors {
    let mut errs = ValidationErrors::new();
    let refuse = |what: String, field: &str| -> String {
        format!("{what} is not allowed in namespace '{namespace}' (its policy.{field} is false)")
    };
    if !policy.allow_root {
        let explicit = app.user.as_deref().map(str::trim).filter(|u| !u.is_empty());
        match (explicit, effective_user(app, default_user)) {
            (Some(u), _) if is_root(u) => {
                errs.add(
                    "/user",
                    refuse(
                        format!("running as '{}'", crate::validate::echo(u)),
                        "allowRoot",
                    ),
                );
            }
            (None, Some(u)) if is_root(u) => {
                errs.add(
                    "/user",
                    refuse(
                        format!(
                            "running as root (the app names no user and the server's default task user is '{}')",
                            crate::validate::echo(u)
                        ),
                        "allowRoot",
                    ),
                );
            }
            _ => {}
        }
    }
    let Some(container) = &app.container else {
        return errs;
    };
    for (i, v) in container.volumes.iter().enumerate() {
        let Some(host) = v.host_path.as_deref().map(str::trim) else {
            continue;
        };
        // A relative hostPath is a named (Docker) volume, not a host path.
        if host.starts_with('/') && !host_path_allowed(host, &policy.allowed_host_paths) {
            errs.add(
                format!("/container/volumes({i})/hostPath"),
                host_path_refusal(host, namespace, policy),
            );
        }
    }
    let Some(docker) = &container.docker else {
        return errs;
    };
    if docker.privileged && !policy.allow_privileged {
        errs.add(
            "/container/docker/privileged",
            refuse("a privileged container".into(), "allowPrivileged"),
        );
    }
    for (i, p) in docker.parameters.iter().enumerate() {
        let at = format!("/container/docker/parameters({i})");
        let key = p.key.trim().trim_start_matches('-');
        let value = p.value.trim();
        let shown = format!("docker parameter {key}={}", crate::validate::echo(value));
        match key {
            "privileged" if parse_flag(value) && !policy.allow_privileged => {
                errs.add(at, refuse(shown, "allowPrivileged"));
            }
            "cap-add"
                if !policy.allow_privileged
                    && ["ALL", "SYS_ADMIN", "CAP_SYS_ADMIN"]
                        .contains(&value.to_ascii_uppercase().as_str()) =>
            {
                errs.add(at, refuse(shown, "allowPrivileged"));
            }
            "device" if !policy.allow_privileged => {
                errs.add(at, refuse(shown, "allowPrivileged"));
            }
            "security-opt"
                if !policy.allow_privileged
                    && value.to_ascii_lowercase().contains("unconfined") =>
            {
                errs.add(at, refuse(shown, "allowPrivileged"));
            }
            "pid" if value == "host" && !policy.allow_host_pid => {
                errs.add(at, refuse(shown, "allowHostPid"));
            }
            "ipc" if value == "host" && !policy.allow_host_ipc => {
                errs.add(at, refuse(shown, "allowHostIpc"));
            }
            "user" if is_root(value) && !policy.allow_root => {
                errs.add(at, refuse(shown, "allowRoot"));
            }
            "volume" | "v" => {
                let source = value.split(':').next().unwrap_or("");
                if source.starts_with('/') && !host_path_allowed(source, &policy.allowed_host_paths)
                {
                    errs.add(at, host_path_refusal(source, namespace, policy));
                }
            }
            _ => {}
        }
    }
    errs
}

fn host_path_refusal(path: &str, namespace: &str, policy: &NamespacePolicy) -> String {
    let allowed = if policy.allowed_host_paths.is_empty() {
        "none are allowed".to_string()
    } else {
        format!("allowed: {}", policy.allowed_host_paths.join(", "))
    };
    format!(
        "host path '{}' is not allowed in namespace '{namespace}' (its policy.allowedHostPaths: {allowed})",
        crate::validate::echo(path)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(v: Value) -> AppDefinition {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_namespace_is_the_first_segment() {
        assert_eq!(namespace_of("/prod/web"), "prod");
        assert_eq!(namespace_of("/prod/team/web"), "prod");
        assert_eq!(namespace_of("prod/web"), "prod");
        assert_eq!(namespace_of("//prod//web/"), "prod");
        assert_eq!(namespace_of("/web"), DEFAULT_NAMESPACE);
        assert_eq!(namespace_of("/"), DEFAULT_NAMESPACE);
        assert_eq!(namespace_of(""), DEFAULT_NAMESPACE);
    }

    #[test]
    fn a_body_parses_with_defaults_and_ignores_read_only_keys() {
        let ns = namespace_from_json(
            "prod",
            json!({"id": "prod", "quota": {"cpus": 10, "apps": 3}, "nodeSelector": {"env": "prod"},
                   "dedicated": true, "usage": {"cpus": 1}, "defined": true}),
            &NamespacePolicy::allowing_root(),
        )
        .unwrap();
        assert_eq!(ns.quota.cpus, Some(10.0));
        assert_eq!(ns.quota.apps, Some(3));
        assert_eq!(ns.quota.mem, None);
        assert!(ns.dedicated);
        // No policy: the server's default.
        assert!(ns.policy.allow_root);
        let ns = namespace_from_json(
            "dev",
            json!({"policy": {}}),
            &NamespacePolicy::allowing_root(),
        )
        .unwrap();
        assert_eq!(ns.policy, NamespacePolicy::default());
        assert!(ns.quota.is_empty());
    }

    #[test]
    fn a_bad_body_names_every_field() {
        let err = namespace_from_json(
            "prod",
            json!({"id": "other", "quota": {"cpus": -1, "instances": -2}, "dedicated": true,
                   "policy": {"allowedHostPaths": ["data", "/a/../b"]}}),
            &NamespacePolicy::default(),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/id",
                "/quota/cpus",
                "/quota/instances",
                "/dedicated",
                "/policy/allowedHostPaths(0)",
                "/policy/allowedHostPaths(1)"
            ]
        );
        let err = namespace_from_json("prod", json!({"quotas": {}}), &NamespacePolicy::default())
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = namespace_from_json(
            "prod",
            json!({"quota": {"cpus": "x"}}),
            &NamespacePolicy::default(),
        )
        .unwrap_err();
        assert_eq!(err.0[0].path, "/quota/cpus");
        assert!(namespace_from_json("Prod", json!({}), &NamespacePolicy::default()).is_err());
        assert!(namespace_from_json("a/b", json!({}), &NamespacePolicy::default()).is_err());
        assert!(namespace_from_json("prod", json!([]), &NamespacePolicy::default()).is_err());
    }

    #[test]
    fn usage_sums_instances_times_resources() {
        let a = app(json!({"id": "/p/a", "instances": 3, "cpus": 0.1, "mem": 64, "disk": 10}));
        let u = Usage::of_app(&a);
        assert_eq!(u.cpus_milli, 300);
        assert_eq!(u.mem_milli, 192_000);
        assert_eq!(u.disk_milli, 30_000);
        assert_eq!(u.instances, 3);
        assert_eq!(u.apps, 1);
        let pinned = app(json!({"id": "/p/b", "instances": 2, "cpus": 1.5,
                                "labels": {"BERTH_CPU_MODE": "pinned"}}));
        assert_eq!(Usage::of_app(&pinned).cpus_milli, 4000);
        // Adding and removing many 0.1s never drifts.
        let mut total = Usage::default();
        for _ in 0..10_000 {
            total.add(&u);
        }
        for _ in 0..10_000 {
            total.sub(&u);
        }
        assert!(total.is_zero());
        assert_eq!(u.to_json()["cpus"], json!(0.3));
    }

    #[test]
    fn quota_refuses_growth_past_a_limit_and_names_it() {
        let q = Quota {
            cpus: Some(10.0),
            instances: Some(5),
            ..Quota::default()
        };
        let before = Usage::default();
        let after = Usage {
            cpus_milli: 12_500,
            instances: 5,
            ..Usage::default()
        };
        let errs = check_quota("prod", &q, &before, &after);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "namespace 'prod' quota 'cpus' exceeded: 12.5 requested, limit 10, over by 2.5"
        );
        let after = Usage {
            instances: 7,
            ..Usage::default()
        };
        assert_eq!(
            check_quota("prod", &q, &before, &after)[0].to_string(),
            "namespace 'prod' quota 'instances' exceeded: 7 requested, limit 5, over by 2"
        );
        // Exactly at the limit is fine; shrinking while above it is fine.
        let at = Usage {
            cpus_milli: 10_000,
            ..Usage::default()
        };
        assert!(check_quota("prod", &q, &before, &at).is_empty());
        let high = Usage {
            cpus_milli: 20_000,
            ..Usage::default()
        };
        let lower = Usage {
            cpus_milli: 15_000,
            ..Usage::default()
        };
        assert!(check_quota("prod", &q, &high, &lower).is_empty());
        assert_eq!(check_quota("prod", &q, &lower, &high).len(), 1);
        // No quota: anything goes.
        assert!(check_quota("prod", &Quota::default(), &before, &high).is_empty());
        let tiny = Quota {
            mem: Some(0.5),
            ..Quota::default()
        };
        let m = Usage {
            mem_milli: 1_250,
            ..Usage::default()
        };
        assert_eq!(
            check_quota("x", &tiny, &before, &m)[0].to_string(),
            "namespace 'x' quota 'mem' exceeded: 1.25 requested, limit 0.5, over by 0.75"
        );
    }

    #[test]
    fn host_paths_match_whole_components() {
        let allowed = vec!["/data".to_string(), "/var/log/".to_string()];
        assert!(host_path_allowed("/data", &allowed));
        assert!(host_path_allowed("/data/x/y", &allowed));
        assert!(host_path_allowed("//data//x", &allowed));
        assert!(host_path_allowed("/var/log/app", &allowed));
        assert!(!host_path_allowed("/database", &allowed));
        assert!(!host_path_allowed("/data/../etc", &allowed));
        assert!(!host_path_allowed("/etc", &allowed));
        assert!(!host_path_allowed("/data", &[]));
        assert!(host_path_allowed("/etc/shadow", &["/".to_string()]));
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        let deny = NamespacePolicy::default();
        let allow = NamespacePolicy::allowing_root();
        let explicit = app(json!({"id": "/p/a", "cmd": "id", "user": "root"}));
        let errs = check_policy(&explicit, "p", &deny, Some("nobody"));
        assert_eq!(errs.0[0].path, "/user");
        assert!(errs.0[0].errors[0].contains("namespace 'p'"), "{errs}");
        assert!(errs.0[0].errors[0].contains("allowRoot"), "{errs}");
        assert!(check_policy(&explicit, "p", &allow, Some("nobody")).is_empty());
        let uid0 = app(json!({"id": "/p/a", "cmd": "id", "user": "0"}));
        assert!(!check_policy(&uid0, "p", &deny, None).is_empty());
        // No user: the default decides.
        let none = app(json!({"id": "/p/a", "cmd": "id"}));
        assert!(check_policy(&none, "p", &deny, Some("nobody")).is_empty());
        let errs = check_policy(&none, "p", &deny, Some("root"));
        assert!(errs.0[0].errors[0].contains("default task user"), "{errs}");
        assert!(check_policy(&none, "p", &allow, Some("root")).is_empty());
        let someone = app(json!({"id": "/p/a", "cmd": "id", "user": "www-data"}));
        assert!(check_policy(&someone, "p", &deny, Some("root")).is_empty());
        assert_eq!(effective_user(&someone, Some("root")), Some("www-data"));
        assert_eq!(effective_user(&none, Some("nobody")), Some("nobody"));
        assert_eq!(effective_user(&none, None), None);
    }

    #[test]
    fn docker_escapes_are_refused_by_field() {
        let a = app(
            json!({"id": "/p/a", "user": "nobody", "container": {"type": "DOCKER",
            "docker": {"image": "busybox", "privileged": true, "parameters": [
                {"key": "pid", "value": "host"},
                {"key": "ipc", "value": "host"},
                {"key": "user", "value": "0:0"},
                {"key": "volume", "value": "/etc:/host-etc:ro"},
                {"key": "volume", "value": "named:/data"},
                {"key": "label", "value": "a=b"},
                {"key": "pid", "value": "container:x"},
                {"key": "cap-add", "value": "SYS_ADMIN"},
                {"key": "cap-add", "value": "NET_BIND_SERVICE"}
            ]},
            "volumes": [{"containerPath": "/x", "hostPath": "/var/run/docker.sock", "mode": "RW"},
                        {"containerPath": "/y", "hostPath": "/data/app", "mode": "RO"},
                        {"containerPath": "/z", "hostPath": "relative", "mode": "RO"}]}}),
        );
        let errs = check_policy(&a, "p", &NamespacePolicy::default(), Some("nobody"));
        let paths: Vec<&str> = errs.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/container/volumes(0)/hostPath",
                "/container/volumes(1)/hostPath",
                "/container/docker/privileged",
                "/container/docker/parameters(0)",
                "/container/docker/parameters(1)",
                "/container/docker/parameters(2)",
                "/container/docker/parameters(3)",
                "/container/docker/parameters(7)",
            ]
        );
        let open = NamespacePolicy {
            allow_root: true,
            allow_privileged: true,
            allow_host_pid: true,
            allow_host_ipc: true,
            allowed_host_paths: vec!["/data".into(), "/etc".into(), "/var/run".into()],
        };
        assert!(check_policy(&a, "p", &open, Some("nobody")).is_empty());
        let partly = NamespacePolicy {
            allowed_host_paths: vec!["/data".into()],
            ..open
        };
        let errs = check_policy(&a, "p", &partly, Some("nobody"));
        let paths: Vec<&str> = errs.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/container/volumes(0)/hostPath",
                "/container/docker/parameters(3)"
            ]
        );
        assert!(errs.0[0].errors[0].contains("allowed: /data"), "{errs}");
    }
}
