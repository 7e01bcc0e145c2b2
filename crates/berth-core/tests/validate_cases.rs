//! App JSON -> parse, normalise, validate: one case per rule, the full valid Marathon app,
//! deprecated forms, and a never-panics property.

use berth_core::app::UnreachableStrategy;
use berth_core::validate::{app_from_json, normalize_app, validate_app};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Merges `patch` into a minimal valid app and returns the errors (panics if it was valid).
fn errs(patch: Value) -> Vec<(String, Vec<String>)> {
    let mut base = json!({"id": "/a", "cmd": "sleep 1"});
    merge(&mut base, patch);
    match app_from_json(base.clone()) {
        Ok(_) => panic!("expected errors for {base}"),
        Err(e) => e.0.into_iter().map(|f| (f.path, f.errors)).collect(),
    }
}

fn merge(base: &mut Value, patch: Value) {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        for (k, v) in p {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
}

/// Asserts an error at exactly `path` whose message contains `frag`.
fn assert_err(patch: Value, path: &str, frag: &str) {
    let e = errs(patch.clone());
    assert!(
        e.iter()
            .any(|(p, msgs)| p == path && msgs.iter().any(|m| m.contains(frag))),
        "patch {patch}: wanted {path}: ..{frag}.., got {e:?}"
    );
}

fn ok(v: Value) -> berth_core::AppDefinition {
    match app_from_json(v.clone()) {
        Ok(a) => a,
        Err(e) => panic!("expected {v} to be valid, got {e:?}"),
    }
}

#[test]
fn type_errors_keep_path() {
    assert_err(
        json!({"healthChecks": [{"portIndex": "x"}]}),
        "/healthChecks(0)/portIndex",
        "expected an integer",
    );
    assert_err(json!({"cpus": "lots"}), "/cpus", "expected a number");
    assert_err(
        json!({"unreachableStrategy": 5}),
        "/unreachableStrategy",
        "disabled",
    );
    assert_err(json!({"env": {"A": 1}}), "/env/A", "expected a string");
    assert!(app_from_json(json!([1])).is_err());
}

#[test]
fn id_rules() {
    assert_err(json!({"id": "/Upper"}), "/id", "must fully match");
    assert_err(json!({"id": "/a/tasks"}), "/id", "reserved");
    assert_err(json!({"id": "/"}), "/id", "must not be empty");
    assert_eq!(ok(json!({"id": "//x//y/", "cmd": "true"})).id, "/x/y");
}

#[test]
fn cmd_args_container() {
    assert_err(
        json!({"cmd": null}),
        "/",
        "must either contain one of 'cmd' or 'args'",
    );
    assert_err(
        json!({"args": ["a"]}),
        "/",
        "must not contain both 'cmd' and 'args'",
    );
    assert_err(json!({"cmd": " "}), "/cmd", "must not be an empty string");
    assert_err(
        json!({"cmd": null, "args": [""]}),
        "/args(0)",
        "must not be empty",
    );
    ok(json!({"id": "/a", "args": ["sleep", "1"]}));
    ok(json!({"id": "/a", "container": {"docker": {"image": "busybox"}}}));
    ok(json!({"id": "/a", "cmd": "x", "container": {"docker": {"image": "busybox"}}}));
}

#[test]
fn resources() {
    assert_err(
        json!({"cpus": 0.0}),
        "/cpus",
        "got 0.0, expected 0.001 or more",
    );
    assert_err(json!({"mem": -1}), "/mem", "expected 0.0 or more");
    assert_err(json!({"disk": -1}), "/disk", "or more");
    assert_err(json!({"gpus": -1}), "/gpus", "or more");
    assert_err(json!({"instances": -1}), "/instances", "expected 0 or more");
    assert_err(json!({"instances": 2_000_000}), "/instances", "or less");
}

#[test]
fn executor_constraints_env_labels() {
    assert_err(json!({"executor": "a//b"}), "/executor", "must fully match");
    assert_err(
        json!({"constraints": [["hostname", "UNIQUEE"]]}),
        "/constraints(0)",
        "operator must be one of",
    );
    assert_err(
        json!({"constraints": [["hostname"]]}),
        "/constraints(0)",
        "2 or 3 fields",
    );
    assert_err(json!({"env": {"": "x"}}), "/env", "must not be empty");
    assert_err(json!({"env": {"A=B": "x"}}), "/env/A=B", "'='");
    assert_err(json!({"labels": {"": "x"}}), "/labels", "must not be empty");
}

/// The `BERTH_*` labels Berth acts on are checked when the app is posted, not when a task
/// fails to launch; other labels are free-form.
#[test]
fn platform_labels() {
    use berth_core::app::{DriverKind, LogRotation, PidsLimit, parse_log_size};
    let bad = [
        ("BERTH_UID", "maybe", "expected `auto`"),
        ("BERTH_PIDS_LIMIT", "-5", "positive number or `unlimited`"),
        ("BERTH_PIDS_LIMIT", "0", "positive number"),
        ("BERTH_PIDS_LIMIT", "lots", "positive number"),
        (
            "BERTH_PIDS_LIMIT",
            "99999999999999999999",
            "positive number",
        ),
        ("BERTH_CPU_QUOTA", "yes", "`true` or `false`"),
        ("BERTH_DRIVER", "podman", "`docker` or `exec` or `fake`"),
        ("BERTH_PLACEMENT", "sprad", "`binpack` or `spread`"),
        ("BERTH_CPU_MODE", "pined", "`shared` or `pinned`"),
        ("BERTH_LOG_MAX_SIZE", "10x", "not a size"),
        ("BERTH_LOG_MAX_SIZE", "100", "too small"),
        ("BERTH_LOG_MAX_SIZE", "99999999999g", "not a size"),
        ("BERTH_LOG_MAX_FILES", "0", "from 1 to 100"),
        ("BERTH_LOG_MAX_FILES", "many", "from 1 to 100"),
    ];
    for (label, value, frag) in bad {
        assert_err(
            json!({"labels": {label: value}}),
            &format!("/labels/{label}"),
            frag,
        );
    }
    let app = |labels: Value| ok(json!({"id": "/a", "cmd": "sleep 1", "labels": labels}));
    let a = app(
        json!({"BERTH_UID": "auto", "BERTH_PIDS_LIMIT": "200", "BERTH_CPU_QUOTA": "TRUE",
                       "BERTH_DRIVER": "fake", "HAPROXY_GROUP": "anything"}),
    );
    assert_eq!(a.auto_uid(), Ok(true));
    assert_eq!(a.pids_limit(), Ok(PidsLimit::Max(200)));
    assert_eq!(a.cpu_quota(), Ok(true));
    assert_eq!(a.driver(), DriverKind::Fake);
    let a = app(json!({"BERTH_PLACEMENT": "spread", "BERTH_CPU_MODE": "pinned"}));
    assert_eq!((a.spread(), a.pinned_cpus()), (Ok(true), Ok(true)));
    let a = app(json!({"BERTH_PLACEMENT": "binpack", "BERTH_CPU_MODE": "shared"}));
    assert_eq!((a.spread(), a.pinned_cpus()), (Ok(false), Ok(false)));
    let a = app(json!({"BERTH_PIDS_LIMIT": "unlimited", "BERTH_CPU_QUOTA": "false"}));
    assert_eq!(a.pids_limit(), Ok(PidsLimit::Unlimited));
    assert_eq!(a.cpu_quota(), Ok(false));
    let a = app(json!({"BERTH_LOG_MAX_SIZE": "64k", "BERTH_LOG_MAX_FILES": "5"}));
    assert_eq!(
        a.log_rotation(),
        Ok(LogRotation {
            max_bytes: Some(64 << 10),
            max_files: Some(5)
        })
    );
    for (text, bytes) in [
        ("10m", 10u64 << 20),
        ("1G", 1 << 30),
        ("2048", 2048),
        ("3 MiB", 3 << 20),
    ] {
        assert_eq!(parse_log_size(text), Ok(bytes), "{text}");
    }
    let a = app(json!({"BERTH_PIDS_LIMIT": "-1"}));
    assert_eq!(a.pids_limit(), Ok(PidsLimit::Unlimited));
    let a = app(json!({}));
    assert_eq!(a.pids_limit(), Ok(PidsLimit::AgentDefault));
    assert_eq!(a.auto_uid(), Ok(false));
    assert_eq!(a.log_rotation(), Ok(LogRotation::default()));
    assert_eq!(a.driver(), DriverKind::Exec);
}

#[test]
fn port_definitions() {
    assert_err(
        json!({"portDefinitions": [{"port": 70000}]}),
        "/portDefinitions(0)/port",
        "between 0 and 65535",
    );
    assert_err(
        json!({"portDefinitions": [{"port": 1, "protocol": "sctp"}]}),
        "/portDefinitions(0)/protocol",
        "not one of",
    );
    assert_err(
        json!({"portDefinitions": [{"port": 1, "name": "Bad Name"}]}),
        "/portDefinitions(0)/name",
        "must match",
    );
    assert_err(
        json!({"portDefinitions": [{"port": 1, "name": "a"}, {"port": 2, "name": "a"}]}),
        "/portDefinitions",
        "Port names must be unique.",
    );
    assert_err(
        json!({"portDefinitions": [{"port": 8080}, {"port": 8080}]}),
        "/portDefinitions",
        "Ports must be unique.",
    );
    ok(json!({"id": "/a", "cmd": "x", "portDefinitions": [{"port": 0}, {"port": 0}]}));
    let a = ok(
        json!({"id": "/a", "cmd": "x", "portDefinitions": [{"port": 1, "protocol": "tcp,udp"}]}),
    );
    assert_eq!(a.port_definitions.unwrap()[0].protocol, "udp,tcp");
}

#[test]
fn container_rules() {
    assert_err(
        json!({"container": {"type": "RKT"}}),
        "/container/type",
        "not one of",
    );
    assert_err(
        json!({"container": {"type": "DOCKER"}}),
        "/container/docker",
        "must be defined",
    );
    assert_err(
        json!({"container": {"docker": {"image": ""}}}),
        "/container/docker/image",
        "must not be empty",
    );
    let bridge = json!([{"mode": "container/bridge"}]);
    assert_err(
        json!({"networks": bridge, "container": {"docker": {"image": "x"}, "portMappings": [{"containerPort": 70000}]}}),
        "/container/portMappings(0)/containerPort",
        "between",
    );
    assert_err(
        json!({"networks": bridge, "container": {"docker": {"image": "x"}, "portMappings": [{"hostPort": -1}]}}),
        "/container/portMappings(0)/hostPort",
        "between",
    );
    assert_err(
        json!({"networks": bridge, "container": {"docker": {"image": "x"}, "portMappings": [{"servicePort": 70000}]}}),
        "/container/portMappings(0)/servicePort",
        "between",
    );
    assert_err(
        json!({"networks": bridge, "container": {"docker": {"image": "x"}, "portMappings": [{"protocol": "icmp"}]}}),
        "/container/portMappings(0)/protocol",
        "not one of",
    );
    assert_err(
        json!({"container": {"docker": {"image": "x"}, "portMappings": [{"containerPort": 80}]}}),
        "/container/portMappings",
        "not allowed with host-networking",
    );
    let vol = |v: Value| json!({"container": {"docker": {"image": "x"}, "volumes": [v]}});
    assert_err(
        vol(json!({"containerPath": "", "hostPath": "/x"})),
        "/container/volumes(0)/containerPath",
        "must not be empty",
    );
    assert_err(
        vol(json!({"containerPath": "/d", "hostPath": "/x", "mode": "RX"})),
        "/container/volumes(0)/mode",
        "not one of",
    );
    assert_err(
        vol(json!({"containerPath": "/d", "hostPath": "rel"})),
        "/container/volumes(0)/hostPath",
        "absolute",
    );
    assert_err(
        vol(json!({"containerPath": "data", "persistent": {"size": 0}})),
        "/container/volumes(0)/persistent/size",
        "more than 0",
    );
}

#[test]
fn network_rules() {
    assert_err(
        json!({"networks": [{"mode": "bogus"}]}),
        "/networks(0)/mode",
        "not one of",
    );
    assert_err(
        json!({"networks": [{"mode": "container"}]}),
        "/networks(0)/name",
        "Network name must be specified",
    );
    assert_err(
        json!({"networks": [{"mode": "host"}, {"mode": "container/bridge"}]}),
        "/networks",
        "single host network",
    );
    assert_err(
        json!({"networks": [{"mode": "host", "name": "x"}]}),
        "/networks",
        "Host networks may not have names",
    );
    assert_err(
        json!({"networks": [{"mode": "container/bridge"}], "portDefinitions": [{"port": 1}]}),
        "/portDefinitions",
        "only allowed with host-networking",
    );
}

#[test]
fn health_check_rules() {
    let hc = |h: Value| json!({"healthChecks": [h]});
    assert_err(
        hc(json!({"protocol": "SMTP"})),
        "/healthChecks(0)/protocol",
        "not one of",
    );
    assert_err(
        hc(json!({"protocol": "COMMAND"})),
        "/healthChecks(0)/command",
        "requires 'command'",
    );
    assert_err(
        hc(json!({"protocol": "COMMAND", "command": {"value": ""}})),
        "/healthChecks(0)/command/value",
        "must not be empty",
    );
    assert_err(
        hc(json!({"path": "health"})),
        "/healthChecks(0)/path",
        "must start with '/'",
    );
    assert_err(
        hc(json!({"portIndex": 1})),
        "/healthChecks(0)/portIndex",
        "must address an element",
    );
    assert_err(
        hc(json!({"port": 80, "portIndex": 0})),
        "/healthChecks(0)",
        "both 'port' and 'portIndex'",
    );
    assert_err(
        hc(json!({"gracePeriodSeconds": -1})),
        "/healthChecks(0)/gracePeriodSeconds",
        "or more",
    );
    assert_err(
        hc(json!({"intervalSeconds": 0})),
        "/healthChecks(0)/intervalSeconds",
        "more than 0",
    );
    assert_err(
        hc(json!({"timeoutSeconds": 0})),
        "/healthChecks(0)/timeoutSeconds",
        "more than 0",
    );
    assert_err(
        hc(json!({"maxConsecutiveFailures": -1})),
        "/healthChecks(0)/maxConsecutiveFailures",
        "or more",
    );
    assert_err(
        hc(json!({"delaySeconds": -1})),
        "/healthChecks(0)/delaySeconds",
        "or more",
    );
    assert_err(
        json!({"portDefinitions": [], "healthChecks": [{"protocol": "TCP"}]}),
        "/healthChecks(0)",
        "must address an element",
    );
    assert_err(
        json!({"healthChecks": [{"protocol": "MESOS_TCP"}, {"protocol": "MESOS_HTTP"}]}),
        "/healthChecks",
        "at most one Mesos health check",
    );
}

#[test]
fn strategies_and_misc() {
    assert_err(
        json!({"upgradeStrategy": {"minimumHealthCapacity": 1.5}}),
        "/upgradeStrategy/minimumHealthCapacity",
        "between 0.0 and 1.0",
    );
    assert_err(
        json!({"upgradeStrategy": {"maximumOverCapacity": -0.1}}),
        "/upgradeStrategy/maximumOverCapacity",
        "between 0.0 and 1.0",
    );
    assert_err(json!({"backoffSeconds": -1}), "/backoffSeconds", "or more");
    assert_err(
        json!({"backoffFactor": 0.5}),
        "/backoffFactor",
        "expected 1.0 or more",
    );
    assert_err(
        json!({"maxLaunchDelaySeconds": -1}),
        "/maxLaunchDelaySeconds",
        "or more",
    );
    assert_err(
        json!({"unreachableStrategy": "off"}),
        "/unreachableStrategy",
        "disabled",
    );
    assert_err(
        json!({"unreachableStrategy": {"inactiveAfterSeconds": -1}}),
        "/unreachableStrategy/inactiveAfterSeconds",
        "or more",
    );
    assert_err(
        json!({"unreachableStrategy": {"inactiveAfterSeconds": 10, "expungeAfterSeconds": 5}}),
        "/unreachableStrategy/expungeAfterSeconds",
        "inactiveAfterSeconds",
    );
    assert_err(
        json!({"killSelection": "RANDOM"}),
        "/killSelection",
        "not one of",
    );
    assert_err(
        json!({"taskKillGracePeriodSeconds": -1}),
        "/taskKillGracePeriodSeconds",
        "or more",
    );
    assert_err(
        json!({"dependencies": ["/Bad"]}),
        "/dependencies(0)",
        "must fully match",
    );
    assert_err(
        json!({"fetch": [{"extract": true}]}),
        "/fetch(0)/uri",
        "non-empty string",
    );
    assert_err(json!({"fetch": ["x"]}), "/fetch(0)", "expected an object");
    assert_err(
        json!({"uris": ["http://a/b"], "fetch": [{"uri": "http://c"}]}),
        "/uris",
        "cannot specify both",
    );
    ok(json!({"id": "/a", "cmd": "x", "unreachableStrategy": "disabled"}));
}

#[test]
fn size_guards() {
    let many: Vec<Value> = (0..101).map(|_| json!({"protocol": "TCP"})).collect();
    assert_err(
        json!({"healthChecks": many}),
        "/healthChecks",
        "expected 100 or less",
    );
    let ports: Vec<Value> = (0..101).map(|_| json!({"port": 0})).collect();
    assert_err(
        json!({"portDefinitions": ports}),
        "/portDefinitions",
        "expected 100 or less",
    );
    assert_err(json!({"cmd": "x".repeat(70_000)}), "/cmd", "bytes long");
}

#[test]
fn all_errors_are_collected() {
    let e = errs(json!({"cpus": 0, "mem": -1, "instances": -1, "killSelection": "X"}));
    for p in ["/cpus", "/mem", "/instances", "/killSelection"] {
        assert!(e.iter().any(|(path, _)| path == p), "missing {p} in {e:?}");
    }
}

#[test]
fn full_marathon_docker_bridge_app() {
    let app = ok(json!({
        "id": "/prod/web",
        "instances": 3, "cpus": 0.5, "mem": 256,
        "container": {
            "type": "DOCKER",
            "docker": {
                "image": "nginx:1.25", "network": "BRIDGE", "forcePullImage": true,
                "portMappings": [
                    {"containerPort": 80, "hostPort": 0, "servicePort": 10000, "protocol": "tcp", "name": "http"},
                    {"containerPort": 443, "protocol": "tcp", "name": "https"}
                ],
                "parameters": [{"key": "log-driver", "value": "json-file"}]
            },
            "volumes": [{"containerPath": "/etc/nginx/conf.d", "hostPath": "/srv/nginx", "mode": "RO"}]
        },
        "healthChecks": [
            {"protocol": "HTTP", "portIndex": 0, "gracePeriodSeconds": 30, "intervalSeconds": 10, "timeoutSeconds": 5, "maxConsecutiveFailures": 3},
            {"protocol": "TCP"},
            {"protocol": "COMMAND", "command": {"value": "curl -f localhost"}}
        ],
        "constraints": [["hostname", "UNIQUE"], ["rack", "GROUP_BY", "2"]],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.2},
        "env": {"MODE": "prod"},
        "labels": {"HAPROXY_GROUP": "external"},
        "uris": ["https://example.com/conf.tgz"]
    }));
    let c = app.container.as_ref().unwrap();
    let d = c.docker.as_ref().unwrap();
    assert_eq!(d.network, None);
    assert_eq!(d.port_mappings, None);
    let pm = c.port_mappings.as_ref().unwrap();
    assert_eq!(pm.len(), 2);
    assert_eq!(
        pm[1].host_port,
        Some(0),
        "bridge: missing hostPort defaults to 0"
    );
    assert_eq!(app.networks.len(), 1);
    assert_eq!(app.networks[0].mode, "container/bridge");
    assert_eq!(
        app.port_definitions, None,
        "no default port definitions with bridge networking"
    );
    assert_eq!(app.health_checks[0].path.as_deref(), Some("/"));
    assert_eq!(app.health_checks[1].port_index, Some(0));
    assert_eq!(app.health_checks[2].port_index, None);
    assert_eq!(app.upgrade_strategy.maximum_over_capacity, 0.2);
    assert_eq!(
        app.fetch,
        vec![
            json!({"uri": "https://example.com/conf.tgz", "extract": true, "executable": false, "cache": false})
        ]
    );
    assert!(app.uris.is_empty());
    // Normalisation is idempotent and the result still validates.
    let mut again = app.clone();
    normalize_app(&mut again);
    assert_eq!(again, app);
    validate_app(&again).unwrap();
    // And it survives a round trip through its own JSON.
    assert_eq!(ok(serde_json::to_value(&app).unwrap()), app);
}

#[test]
fn deprecated_forms_normalise() {
    let a = ok(json!({"id": "a", "cmd": "x", "ports": [0, 8080], "uris": ["http://h/run.sh"]}));
    let defs = a.port_definitions.unwrap();
    assert_eq!(
        defs.iter().map(|d| d.port).collect::<Vec<_>>(),
        vec![0, 8080]
    );
    assert!(defs.iter().all(|d| d.protocol == "tcp"));
    assert_eq!(
        a.fetch[0]["extract"],
        json!(false),
        "Marathon extracts archives only"
    );
    assert_eq!(a.fetch[0]["uri"], json!("http://h/run.sh"));

    let a = ok(json!({"id": "/a", "cmd": "x"}));
    assert_eq!(
        a.port_definitions.unwrap()[0].port,
        0,
        "host networking gets one default port"
    );
    assert_eq!(a.networks[0].mode, "host");

    let a = ok(json!({"id": "/a", "container": {"docker": {"image": "x", "network": "HOST"}}}));
    assert_eq!(a.networks[0].mode, "host");
    let a = ok(
        json!({"id": "/a", "container": {"docker": {"image": "x", "network": "USER"}}, "ipAddress": {"networkName": "dcos"}}),
    );
    assert_eq!(
        (a.networks[0].mode.as_str(), a.networks[0].name.as_deref()),
        ("container", Some("dcos"))
    );
    assert_eq!(a.ip_address, None);
    assert_err(
        json!({"container": {"docker": {"image": "x", "network": "USER"}}}),
        "/networks(0)/name",
        "must be specified",
    );
    assert_err(
        json!({"container": {"docker": {"image": "x", "network": "NONE"}}}),
        "/container/docker/network",
        "unsupported",
    );
    assert_err(
        json!({"networks": [{"mode": "host"}], "container": {"docker": {"image": "x", "network": "BRIDGE"}}}),
        "/container/docker/network",
        "cannot mix",
    );
    assert_err(
        json!({"ports": [1], "portDefinitions": [{"port": 2}]}),
        "/ports",
        "cannot specify both",
    );

    // Persistent volumes: resident defaults unless the client sent its own.
    let resident = json!({"id": "/db", "cmd": "x", "container": {"type": "MESOS", "volumes": [{"containerPath": "data", "mode": "RW", "persistent": {"size": 100}}]}});
    let a = ok(resident.clone());
    assert_eq!(
        (
            a.upgrade_strategy.minimum_health_capacity,
            a.upgrade_strategy.maximum_over_capacity
        ),
        (0.5, 0.0)
    );
    assert_eq!(
        a.unreachable_strategy,
        UnreachableStrategy::Disabled("disabled".into())
    );
    let mut explicit = resident;
    merge(
        &mut explicit,
        json!({"upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1}}),
    );
    let e = app_from_json(explicit).unwrap_err();
    assert!(
        e.0.iter()
            .any(|f| f.path == "/upgradeStrategy/maximumOverCapacity"),
        "{e:?}"
    );
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "/",
            "x",
            "HTTP",
            "BRIDGE",
            "USER",
            "NONE",
            "disabled",
            "tcp,udp",
            "container",
            "host",
            "UNIQUE",
            "/a/b"
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

const KEYS: &[&str] = &[
    "id",
    "cmd",
    "args",
    "container",
    "docker",
    "type",
    "image",
    "network",
    "portMappings",
    "volumes",
    "containerPath",
    "hostPath",
    "persistent",
    "size",
    "mode",
    "networks",
    "name",
    "portDefinitions",
    "port",
    "ports",
    "protocol",
    "healthChecks",
    "portIndex",
    "command",
    "value",
    "path",
    "cpus",
    "mem",
    "instances",
    "constraints",
    "upgradeStrategy",
    "unreachableStrategy",
    "inactiveAfterSeconds",
    "expungeAfterSeconds",
    "fetch",
    "uri",
    "uris",
    "env",
    "labels",
    "ipAddress",
    "networkName",
    "dependencies",
    "hostPort",
    "containerPort",
    "servicePort",
    "killSelection",
    "requirePorts",
];

fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn app_from_json_never_panics(v in arb_json(), top in prop::collection::vec((prop::sample::select(KEYS), arb_json()), 0..8)) {
        let _ = app_from_json(v);
        let obj = Value::Object(top.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        if let Ok(app) = app_from_json(obj) {
            // Whatever is accepted is stable under normalisation and re-validation.
            let mut again = app.clone();
            normalize_app(&mut again);
            prop_assert!(validate_app(&again).is_ok());
        }
    }
}

#[test]
fn secrets_and_secret_env() {
    let app = ok(json!({"id": "/a", "cmd": "true",
        "env": {"DB_PASSWORD": {"secret": "db"}, "MODE": "prod"},
        "secrets": {"db": {"source": "prod/db-password"}}}));
    assert_eq!(
        app.secret_env_sources(),
        vec![("DB_PASSWORD", "prod/db-password")]
    );
    // A reference must name a key of `secrets`.
    assert_err(
        json!({"env": {"DB_PASSWORD": {"secret": "nope"}}, "secrets": {"db": {"source": "x"}}}),
        "/env/DB_PASSWORD",
        "refers to secret 'nope', which is not in 'secrets' (it has: 'db')",
    );
    assert_err(
        json!({"env": {"DB_PASSWORD": {"secret": "db"}}}),
        "/env/DB_PASSWORD",
        "(it has: none)",
    );
    // Every secret needs a source, and a source is a store name.
    assert_err(
        json!({"secrets": {"db": {}}}),
        "/secrets/db/source",
        "a secret needs a source",
    );
    assert_err(
        json!({"secrets": {"db": {"source": "/abs//x"}}}),
        "/secrets/db/source",
        "empty segment",
    );
    assert_err(
        json!({"secrets": {"db": "prod/db"}}),
        "/secrets/db",
        "expected an object",
    );
    // Env values are strings or {"secret": ..}: nothing else.
    assert_err(
        json!({"env": {"A": {"secret": 5}}}),
        "/env/A",
        "{\"secret\"",
    );
    assert_err(
        json!({"env": {"A": {"value": "x"}}}),
        "/env/A",
        "expected a string",
    );
    // File-based secrets are refused, saying what to do instead.
    assert_err(
        json!({"container": {"type": "DOCKER", "docker": {"image": "busybox"},
            "volumes": [{"containerPath": "/etc/pw", "secret": "db"}]},
            "secrets": {"db": {"source": "x"}}}),
        "/container/volumes(0)/secret",
        "file-based secrets are not supported",
    );
}
