//! Who may do what: roles, the permissions they grant, and the app-id scopes an `app-admin`
//! is limited to. Pure: the server's middleware and operations ask these questions.
//!
//! | role            | grants                                                        |
//! |-----------------|---------------------------------------------------------------|
//! | `cluster-admin` | everything                                                    |
//! | `operator`      | read everything (logs too), node operations                   |
//! | `app-admin`     | read everything but logs; apps, groups, jobs, secrets and      |
//! |                 | logs inside its scopes                                        |
//! | `viewer`        | read cluster state (no logs, no tokens, no audit log)         |

use serde::{Deserialize, Serialize};
use std::fmt;

/// A user role. Nodes (agents) are not users: they are authenticated apart and may use only
/// the agent protocol, for their own node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ClusterAdmin,
    Operator,
    AppAdmin,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::ClusterAdmin,
        Role::Operator,
        Role::AppAdmin,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ClusterAdmin => "cluster-admin",
            Role::Operator => "operator",
            Role::AppAdmin => "app-admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role holds `p` at all (for `app-admin`, somewhere in its scopes: the
    /// operation then checks each app id with [`Scopes::covers`]).
    pub fn grants(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::ClusterAdmin => true,
            Role::Operator => matches!(p, Read | ReadLogs | ReadAudit | NodeWrite),
            Role::AppAdmin => matches!(p, Read | ReadLogs | AppWrite | SecretWrite),
            Role::Viewer => matches!(p, Read),
        }
    }

    /// Whether the role's permissions are limited to its scopes.
    pub fn is_scoped(self) -> bool {
        self == Role::AppAdmin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs. Every route maps to exactly one (see the server's route table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read apps, tasks, groups, deployments, nodes, queue, events, metrics.
    Read,
    /// Read task logs (scoped for `app-admin`).
    ReadLogs,
    /// Read the audit log.
    ReadAudit,
    /// Create, update, scale, restart, delete apps, groups and jobs; kill tasks; cancel
    /// deployments; reset launch delays (scoped for `app-admin`).
    AppWrite,
    /// Create, update, delete secrets (scoped by the secret name's first segment).
    SecretWrite,
    /// Cordon, uncordon, drain nodes.
    NodeWrite,
    /// Tokens, namespaces, quotas and policies, leadership.
    ClusterWrite,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::ReadLogs => "logs:read",
            Permission::ReadAudit => "audit:read",
            Permission::AppWrite => "apps:write",
            Permission::SecretWrite => "secrets:write",
            Permission::NodeWrite => "nodes:write",
            Permission::ClusterWrite => "cluster:write",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares two secrets without an early exit, so the time taken does not tell how much
/// matched (tokens, node credentials, passwords).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The namespace of an app id: its first segment (`/prod/web` -> `prod`); an id of one
/// segment (`/web`) is in namespace `default`.
pub fn namespace_of(id: &str) -> &str {
    let trimmed = id.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((first, _)) if !first.is_empty() => first,
        _ => "default",
    }
}

/// Where an `app-admin` may act: namespaces (`prod`) and app-id prefixes (`/team/web`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scopes(pub Vec<String>);

impl Scopes {
    /// A scope is a namespace name, or an absolute id prefix (starting with `/`), which
    /// covers that id and everything under it. `/` is not a scope: that is cluster-admin.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.len() > 100 {
            return Err("at most 100 scopes".into());
        }
        for s in &self.0 {
            if s.is_empty() || s.len() > 200 {
                return Err(format!("scope {s:?} must be 1 to 200 characters"));
            }
            let segments: Vec<&str> = if let Some(prefix) = s.strip_prefix('/') {
                prefix.split('/').collect()
            } else {
                vec![s.as_str()]
            };
            if !segments.iter().all(|seg| crate::path::valid_segment(seg)) {
                return Err(format!(
                    "scope {s:?} must be a namespace (a lowercase id segment) or an app id prefix like /team/web"
                ));
            }
        }
        Ok(())
    }

    /// Whether `id` (an app id or a group id) lies inside one of the scopes.
    pub fn covers(&self, id: &str) -> bool {
        let id = id.trim_end_matches('/');
        self.0.iter().any(|s| {
            if s.starts_with('/') {
                let s = s.trim_end_matches('/');
                id == s || id.strip_prefix(s).is_some_and(|r| r.starts_with('/'))
            } else if id.trim_start_matches('/').contains('/') {
                namespace_of(id) == s
            } else {
                // A one-segment id: the group `/prod` itself, or the app `/web` in `default`.
                id.trim_start_matches('/') == s || (s == "default" && !id.is_empty())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &[&str]) -> Scopes {
        Scopes(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn namespace_is_the_first_segment() {
        assert_eq!(namespace_of("/prod/web"), "prod");
        assert_eq!(namespace_of("prod/web/api"), "prod");
        assert_eq!(namespace_of("/web"), "default");
        assert_eq!(namespace_of("/"), "default");
    }

    #[test]
    fn namespace_scope_covers_its_apps_and_groups_only() {
        let s = scopes(&["prod"]);
        assert!(s.covers("/prod/web"));
        assert!(s.covers("/prod/a/b"));
        assert!(s.covers("/prod"));
        assert!(!s.covers("/production/web"));
        assert!(!s.covers("/dev/web"));
        assert!(!s.covers("/"));
        assert!(!s.covers("/web"));
    }

    #[test]
    fn default_namespace_covers_single_segment_apps() {
        let s = scopes(&["default"]);
        assert!(s.covers("/web"));
        assert!(!s.covers("/prod/web"));
        assert!(!s.covers("/"));
    }

    #[test]
    fn prefix_scope_covers_the_prefix_and_below() {
        let s = scopes(&["/team/web"]);
        assert!(s.covers("/team/web"));
        assert!(s.covers("/team/web/api"));
        assert!(!s.covers("/team/webx"));
        assert!(!s.covers("/team"));
        assert!(!s.covers("/team/db"));
    }

    #[test]
    fn scopes_are_validated() {
        assert!(scopes(&["prod", "/team/web"]).validate().is_ok());
        assert!(scopes(&["/"]).validate().is_err());
        assert!(scopes(&[""]).validate().is_err());
        assert!(scopes(&["Prod"]).validate().is_err());
        assert!(scopes(&["a b"]).validate().is_err());
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        use Permission::*;
        let all = [
            Read,
            ReadLogs,
            ReadAudit,
            AppWrite,
            SecretWrite,
            NodeWrite,
            ClusterWrite,
        ];
        assert!(all.iter().all(|p| Role::ClusterAdmin.grants(*p)));
        assert!(Role::Operator.grants(NodeWrite));
        assert!(!Role::Operator.grants(AppWrite));
        assert!(Role::AppAdmin.grants(AppWrite));
        assert!(!Role::AppAdmin.grants(NodeWrite));
        assert!(!Role::AppAdmin.grants(ClusterWrite));
        assert_eq!(
            all.iter().filter(|p| Role::Viewer.grants(**p)).count(),
            1,
            "a viewer only reads"
        );
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
