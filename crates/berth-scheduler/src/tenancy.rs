//! Namespace placement rules: a namespace's tasks run only on nodes matching its node
//! selector, and the nodes matching a *dedicated* namespace's selector take no other
//! namespace's tasks (seed 002's prod isolation).
//!
//! The rules are a small table ([`NamespacePlacement`], set with
//! [`crate::Scheduler::set_namespaces`]); a request names its namespace. Per placement the
//! table is compiled against the model's interned attributes ([`Tenancy`]), so a node check is
//! a few integer comparisons per selector pair, and costs nothing when no namespace has a
//! selector.

use crate::filter::field_id;
use crate::model::{Cluster, NodeHot};
use std::collections::BTreeMap;

/// The placement rules of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespacePlacement {
    pub namespace: String,
    /// Attribute -> value (`hostname` is the node's hostname); empty: any node.
    pub node_selector: BTreeMap<String, String>,
    /// The nodes matching `node_selector` take only this namespace's tasks.
    pub dedicated: bool,
}

impl NamespacePlacement {
    /// `env=prod,zone=a`.
    pub fn selector_text(&self) -> String {
        self.node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A selector against the model: `(field id, value id)` pairs; `None` when some pair names a
/// field or value no node has ever carried (so no node matches).
type Compiled = Option<Vec<(u32, u32)>>;

fn compile(c: &Cluster, selector: &BTreeMap<String, String>) -> Compiled {
    selector
        .iter()
        .map(|(k, v)| Some((field_id(c, k)?, c.values.get(v)?)))
        .collect()
}

/// Why tenancy rules a node out.
#[derive(Clone, Copy)]
pub(crate) enum TenancyReject {
    /// The node does not match the request's namespace's selector.
    Selector,
    /// The node belongs to dedicated namespace `i` of [`Tenancy::others`].
    Dedicated(usize),
}

/// The table compiled for one request.
pub(crate) struct Tenancy<'a> {
    /// The request's namespace's selector: `None` when it has none.
    own: Option<(Compiled, &'a NamespacePlacement)>,
    /// Other namespaces that are dedicated and whose selector some node may match.
    others: Vec<(Vec<(u32, u32)>, &'a NamespacePlacement)>,
}

impl<'a> Tenancy<'a> {
    pub(crate) fn new(c: &Cluster, table: &'a [NamespacePlacement], namespace: &str) -> Self {
        let mut own = None;
        let mut others = Vec::new();
        for ns in table {
            if ns.namespace == namespace {
                if !ns.node_selector.is_empty() {
                    own = Some((compile(c, &ns.node_selector), ns));
                }
            } else if ns.dedicated
                && !ns.node_selector.is_empty()
                && let Some(sel) = compile(c, &ns.node_selector)
            {
                others.push((sel, ns));
            }
        }
        Tenancy { own, others }
    }

    /// Nothing to check.
    pub(crate) fn is_open(&self) -> bool {
        self.own.is_none() && self.others.is_empty()
    }

    fn matches(c: &Cluster, h: &NodeHot, sel: &[(u32, u32)]) -> bool {
        sel.iter()
            .all(|&(f, v)| h.value_of(f, || c.node(h.slot).and_then(|n| n.value_of(f))) == Some(v))
    }

    #[inline]
    pub(crate) fn check(&self, c: &Cluster, h: &NodeHot) -> Result<(), TenancyReject> {
        if let Some((own, _)) = &self.own {
            match own {
                Some(sel) if Self::matches(c, h, sel) => {}
                _ => return Err(TenancyReject::Selector),
            }
        }
        for (i, (sel, _)) in self.others.iter().enumerate() {
            if Self::matches(c, h, sel) {
                return Err(TenancyReject::Dedicated(i));
            }
        }
        Ok(())
    }

    /// How many dedicated namespaces a rejection can name.
    pub(crate) fn others_len(&self) -> usize {
        self.others.len()
    }

    /// The reason text of a rejection.
    pub(crate) fn reason(&self, r: TenancyReject) -> String {
        match r {
            TenancyReject::Selector => match &self.own {
                Some((_, ns)) => format!(
                    "not matching namespace '{}' nodeSelector {}",
                    ns.namespace,
                    ns.selector_text()
                ),
                None => "not matching the namespace's nodeSelector".into(),
            },
            TenancyReject::Dedicated(i) => match self.others.get(i) {
                Some((_, ns)) => format!("dedicated to namespace '{}'", ns.namespace),
                None => "dedicated to another namespace".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PlacementRequest, SchedNode, Scheduler};
    use berth_core::node::{NodeResources, PortRange};

    fn node(id: &str, attrs: &[(&str, &str)], cpus: f64) -> SchedNode {
        SchedNode {
            id: id.to_string(),
            hostname: id.to_string(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allocatable: NodeResources::new(cpus, 8000.0, 1000.0),
            port_ranges: vec![PortRange {
                begin: 31000,
                end: 31009,
            }],
            drivers: vec!["exec".into()],
            schedulable: true,
            cores: cpus as u32,
        }
    }

    fn ns(name: &str, sel: &[(&str, &str)], dedicated: bool) -> NamespacePlacement {
        NamespacePlacement {
            namespace: name.into(),
            node_selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dedicated,
        }
    }

    fn req(app: &str, namespace: &str, cpus: f64) -> PlacementRequest {
        let mut r = PlacementRequest::new(app, NodeResources::new(cpus, 1.0, 0.0));
        r.namespace = namespace.into();
        r
    }

    /// p1, p2 (env=prod), d1 (env=dev), x1 (no env).
    fn cluster() -> Scheduler {
        let mut s = Scheduler::new(7);
        s.upsert_node(node("p1", &[("env", "prod")], 2.0));
        s.upsert_node(node("p2", &[("env", "prod"), ("rack", "r2")], 2.0));
        s.upsert_node(node("d1", &[("env", "dev")], 8.0));
        s.upsert_node(node("x1", &[], 8.0));
        s
    }

    #[test]
    fn a_namespace_with_a_selector_runs_only_on_matching_nodes() {
        let mut s = cluster();
        s.set_namespaces(vec![ns("prod", &[("env", "prod")], false)]);
        let r = req("/prod/web", "prod", 1.0);
        for i in 0..4 {
            let p = s.place(&format!("t{i}"), &r).unwrap();
            assert!(p.node_id.starts_with('p'), "{p:?}");
        }
        // Both prod nodes are full: the reasons say which nodes the selector ruled out.
        let u = s.place("t5", &r).unwrap_err();
        assert_eq!(
            u.reasons["not matching namespace 'prod' nodeSelector env=prod"],
            2
        );
        assert_eq!(u.reasons["insufficient cpus"], 2);
        // Not dedicated: other namespaces may use the prod nodes too.
        s.remove_task("t0");
        let mut on_prod = false;
        for i in 0..20 {
            let p = s
                .place(&format!("o{i}"), &req("/dev/x", "dev", 0.05))
                .unwrap();
            on_prod |= p.node_id.starts_with('p');
        }
        assert!(on_prod);
    }

    #[test]
    fn dedicated_nodes_take_no_other_namespace() {
        let mut s = cluster();
        s.set_namespaces(vec![ns("prod", &[("env", "prod")], true)]);
        for (i, namespace) in ["dev", "default", "", "test"]
            .iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let p = s
                .place(&format!("o{i}"), &req("/x/y", namespace, 0.1))
                .unwrap();
            assert!(!p.node_id.starts_with('p'), "{namespace}: {p:?}");
        }
        // The dedicated namespace has no selector restriction beyond its own.
        let p = s.place("prod-1", &req("/prod/web", "prod", 1.0)).unwrap();
        assert!(p.node_id.starts_with('p'));
        // When only dedicated nodes have room, others stay unplaced and are told why.
        // (No node has 9 cpus: d1 and x1 are too small, p1 and p2 are not theirs.)
        let u = s.place("big", &req("/dev/big", "dev", 9.0)).unwrap_err();
        assert_eq!(u.reasons["dedicated to namespace 'prod'"], 2, "{u}");
        assert_eq!(u.reasons["insufficient cpus"], 2, "{u}");
        assert!(u.summary().contains("dedicated to namespace 'prod'"));
    }

    #[test]
    fn selectors_on_unknown_values_hostnames_and_several_pairs() {
        let mut s = cluster();
        s.set_namespaces(vec![
            ns("ghost", &[("env", "nowhere")], true),
            ns("one", &[("hostname", "d1")], false),
            ns("r2", &[("env", "prod"), ("rack", "r2")], false),
        ]);
        let u = s.place("g", &req("/ghost/a", "ghost", 0.1)).unwrap_err();
        assert_eq!(
            u.reasons["not matching namespace 'ghost' nodeSelector env=nowhere"],
            4
        );
        for i in 0..5 {
            assert_eq!(
                s.place(&format!("h{i}"), &req("/one/a", "one", 0.1))
                    .unwrap()
                    .node_id,
                "d1"
            );
            assert_eq!(
                s.place(&format!("r{i}"), &req("/r2/a", "r2", 0.1))
                    .unwrap()
                    .node_id,
                "p2"
            );
        }
        // A dedicated selector no node matches excludes nothing.
        for i in 0..10 {
            s.place(&format!("o{i}"), &req("/dev/a", "dev", 0.1))
                .unwrap();
        }
    }

    #[test]
    fn attribute_and_rule_changes_apply_to_the_next_placement() {
        let mut s = cluster();
        s.set_namespaces(vec![ns("prod", &[("env", "prod")], true)]);
        // x1 becomes a prod node: dev tasks now fit only on d1.
        s.upsert_node(node("x1", &[("env", "prod")], 8.0));
        for i in 0..10 {
            assert_eq!(
                s.place(&format!("a{i}"), &req("/dev/a", "dev", 0.1))
                    .unwrap()
                    .node_id,
                "d1"
            );
        }
        s.set_namespaces(vec![]);
        let placed: std::collections::BTreeSet<String> = (0..40)
            .map(|i| {
                s.place(&format!("b{i}"), &req("/dev/b", "dev", 0.01))
                    .unwrap()
                    .node_id
            })
            .collect();
        assert!(placed.len() > 1, "{placed:?}");
        assert_eq!(s.namespaces().len(), 0);
    }

    /// Many random clusters and rule tables: every placement obeys the rules, and a refusal
    /// happens only when no node obeys them and has room.
    #[test]
    fn random_placements_always_obey_the_rules() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
        let envs = ["a", "b", "c"];
        for round in 0..50 {
            let mut s = Scheduler::new(round);
            let mut attrs = BTreeMap::new();
            for i in 0..12 {
                let id = format!("n{i}");
                let env = envs[rng.random_range(0..3)];
                s.upsert_node(node(&id, &[("env", env)], 4.0));
                attrs.insert(id, env);
            }
            let table: Vec<NamespacePlacement> = envs
                .iter()
                .map(|e| ns(e, &[("env", e)], rng.random_bool(0.5)))
                .collect();
            s.set_namespaces(table.clone());
            let dedicated: Vec<&str> = table
                .iter()
                .filter(|n| n.dedicated)
                .map(|n| n.namespace.as_str())
                .collect();
            for t in 0..60 {
                let namespace = ["a", "b", "c", "free"][rng.random_range(0..4)];
                match s.place(&format!("t{t}"), &req("/x/y", namespace, 1.0)) {
                    Ok(p) => {
                        let env = attrs[&p.node_id];
                        if namespace == "free" {
                            assert!(!dedicated.contains(&env), "{p:?}");
                        } else {
                            assert_eq!(env, namespace, "{p:?}");
                        }
                    }
                    Err(u) => {
                        let total: usize = u.reasons.values().sum();
                        assert_eq!(total, 12, "{u}");
                    }
                }
            }
        }
    }
}
