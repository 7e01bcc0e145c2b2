//! Rendering templates (minijinja) over a snapshot of the catalog, and finding out which
//! catalog data a template reads, so exactly that is fetched and watched.

use minijinja::value::{Kwargs, Value as TValue};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// One piece of catalog data a template reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dep {
    /// `services()`: the service list.
    List,
    /// `service(name)`: one service with its instances.
    Service(String),
}

/// What the templates have been given of the catalog: a dependency's value (`None`: the
/// service does not exist).
pub type Snapshot = BTreeMap<Dep, Option<Value>>;

/// One template: its source file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// The result of a render: the output, and every dependency it read (those missing from
/// the snapshot rendered as empty, and must be fetched before rendering again).
#[derive(Debug)]
pub struct Rendered {
    pub output: String,
    pub deps: BTreeSet<Dep>,
}

/// An instance as templates see it: the API's, plus `port` (the first port) and `node`.
fn instance_value(i: &Value) -> Value {
    let mut v = i.clone();
    if let Some(m) = v.as_object_mut() {
        let first = i["ports"][0]["port"].clone();
        m.insert(
            "port".into(),
            if first.is_null() { json!(0) } else { first },
        );
        m.insert("node".into(), i["nodeId"].clone());
        m.insert("app".into(), i["appId"].clone());
    }
    v
}

fn instances(service: Option<&Value>, all: bool) -> Vec<Value> {
    service
        .and_then(|s| s["instances"].as_array())
        .map(|list| {
            list.iter()
                .filter(|i| all || i["healthy"] == json!(true))
                .map(instance_value)
                .collect()
        })
        .unwrap_or_default()
}

/// Renders `source` with the catalog in `snapshot`. Errors (syntax, an undefined variable,
/// a wrong argument) say where: `nginx.conf.j2 line 3: ...`.
pub fn render(source: &Source, snapshot: &Snapshot) -> Result<Rendered, String> {
    let deps = Arc::new(Mutex::new(BTreeSet::new()));
    let snapshot = Arc::new(snapshot.clone());
    let mut env = Environment::new();
    // A typo (`{{ i.adress }}`) is an error, not an empty string in a load balancer config.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    {
        let (deps, snapshot) = (deps.clone(), snapshot.clone());
        env.add_function(
            "service",
            move |name: String, kwargs: Kwargs| -> Result<TValue, minijinja::Error> {
                let all: Option<bool> = kwargs.get("all")?;
                kwargs.assert_all_used()?;
                let dep = Dep::Service(name);
                let found = snapshot.get(&dep).cloned().flatten();
                if let Ok(mut d) = deps.lock() {
                    d.insert(dep);
                }
                Ok(TValue::from_serialize(instances(
                    found.as_ref(),
                    all.unwrap_or(false),
                )))
            },
        );
    }
    {
        let (deps, snapshot) = (deps.clone(), snapshot.clone());
        env.add_function("services", move || -> Result<TValue, minijinja::Error> {
            if let Ok(mut d) = deps.lock() {
                d.insert(Dep::List);
            }
            let list = snapshot.get(&Dep::List).cloned().flatten();
            Ok(TValue::from_serialize(list.unwrap_or_else(|| json!([]))))
        });
    }
    let describe = |e: minijinja::Error| {
        let line = e.line().map(|l| format!(" line {l}")).unwrap_or_default();
        let mut msg = format!("{}{line}: {}", source.name, e.kind());
        if let Some(detail) = e.detail() {
            msg.push_str(&format!(": {detail}"));
        }
        msg
    };
    let template = env
        .template_from_named_str(&source.name, &source.text)
        .map_err(describe)?;
    let output = template.render(minijinja::context! {}).map_err(describe)?;
    let deps = deps.lock().map(|d| d.clone()).unwrap_or_default();
    Ok(Rendered { output, deps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Value {
        json!({"name": "web-prod", "instances": [
            {"id": "t1", "appId": "/prod/web", "nodeId": "n1", "address": "10.0.0.1", "healthy": true,
             "version": "v1", "labels": {"w": "3"}, "ports": [{"port": 31001, "name": "http", "servicePort": 10000}]},
            {"id": "t2", "appId": "/prod/web", "nodeId": "n2", "address": "10.0.0.2", "healthy": false,
             "version": "v1", "labels": {}, "ports": [{"port": 31002, "name": "http"}]},
        ]})
    }

    fn src(text: &str) -> Source {
        Source {
            name: "test.j2".into(),
            text: text.into(),
        }
    }

    #[test]
    fn service_lists_healthy_instances_unless_all() {
        let mut snap = Snapshot::new();
        snap.insert(Dep::Service("web-prod".into()), Some(web()));
        let r = render(
            &src("{% for i in service('web-prod') %}server {{ i.address }}:{{ i.port }};\n{% endfor %}"),
            &snap,
        )
        .expect("render");
        assert_eq!(r.output, "server 10.0.0.1:31001;\n");
        assert_eq!(r.deps, BTreeSet::from([Dep::Service("web-prod".into())]));
        let r = render(
            &src("{% for i in service('web-prod', all=true) %}{{ i.id }}={{ i.healthy }} {% endfor %}"),
            &snap,
        )
        .expect("render");
        assert_eq!(
            r.output, "t1=True t2=False ",
            "Jinja prints booleans as Python does"
        );
        let r = render(&src("{{ service('web-prod')[0].ports[0].servicePort }} {{ service('web-prod')[0].labels.w }}"), &snap)
            .expect("render");
        assert_eq!(r.output, "10000 3");
    }

    #[test]
    fn unknown_or_unfetched_services_are_empty_and_reported_as_deps() {
        let r = render(
            &src("[{% for i in service('api-prod') %}x{% endfor %}][{{ services() | length }}]"),
            &Snapshot::new(),
        )
        .expect("render");
        assert_eq!(r.output, "[][0]");
        assert_eq!(
            r.deps,
            BTreeSet::from([Dep::List, Dep::Service("api-prod".into())])
        );
    }

    #[test]
    fn errors_name_the_template_and_line() {
        let mut snap = Snapshot::new();
        snap.insert(Dep::Service("web-prod".into()), Some(web()));
        let e = render(
            &src("ok\n{% for i in service('web-prod') %}{{ i.adress }}{% endfor %}"),
            &snap,
        )
        .expect_err("a typo is an error");
        assert!(e.starts_with("test.j2 line 2"), "{e}");
        let e = render(&src("{% for %}"), &snap).expect_err("syntax");
        assert!(e.contains("test.j2 line 1"), "{e}");
        let e = render(&src("{{ service('web-prod', bogus=1) }}"), &snap).expect_err("bad kwarg");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn the_shipped_examples_render() {
        let mut snap = Snapshot::new();
        snap.insert(Dep::Service("web-prod".into()), Some(web()));
        snap.insert(
            Dep::List,
            Some(json!([{"name": "web-prod", "servicePorts": [10000]}, {"name": "batch", "servicePorts": []}])),
        );
        let nginx = Source {
            name: "nginx.conf.j2".into(),
            text: include_str!("../../../../examples/templates/nginx.conf.j2").into(),
        };
        let out = render(&nginx, &snap).expect("nginx example").output;
        assert!(
            out.contains("upstream web-prod {\n  server 10.0.0.1:31001;\n}"),
            "{out}"
        );
        assert!(out.contains("listen 10000;"), "{out}");
        assert!(!out.contains("batch"), "{out}");
        let haproxy = Source {
            name: "haproxy.cfg.j2".into(),
            text: include_str!("../../../../examples/templates/haproxy.cfg.j2").into(),
        };
        let out = render(&haproxy, &snap).expect("haproxy example").output;
        assert!(out.contains("bind *:10000"), "{out}");
        assert!(out.contains("server t1 10.0.0.1:31001 check"), "{out}");
    }
}
