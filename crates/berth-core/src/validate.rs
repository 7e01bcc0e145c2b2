//! Turning a client's JSON into a valid, normalised app definition, with Marathon's rules and
//! error messages. Every problem is reported with the path of the field it concerns.
//!
//! The pipeline is [`app_from_json`]: [`parse_app_value`] (types), then
//! [`normalize_app_with`] (deprecated forms folded into current ones, defaults that depend on
//! other fields), then [`validate_app`] (every rule, all errors collected).
//!
//! Normalisation never fails: when a deprecated field cannot be folded unambiguously (for
//! example `uris` next to a non-empty `fetch`), it is left in place and [`validate_app`]
//! reports it. Normalisation is idempotent.

use crate::app::{
    AppDefinition, Container, EnvValue, HealthCheck, Network, PortDefinition, PortMapping,
};
use crate::constraint::Constraint;
use crate::error::ValidationErrors;
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Limits: no client input may make later stages (scheduler, store, drivers) do unbounded work.
// The HTTP layer must still cap the body size: these run after the JSON is in memory.
// ---------------------------------------------------------------------------------------------

/// Most instances an app may ask for.
pub const MAX_INSTANCES: i64 = 1_000_000;
/// Most apps one request may create or change (`PUT /v2/apps`, a group): each is one
/// deployment, whose plan every deployment event carries.
pub const MAX_APPS_PER_REQUEST: usize = 10_000;
/// Most entries in health checks, port definitions, port mappings, volumes, constraints, fetch.
pub const MAX_LIST_ITEMS: usize = 100;
/// Most networks an app may join.
pub const MAX_NETWORKS: usize = 32;
/// Most entries in `env`, `labels`, `args`, `dependencies`, docker parameters.
pub const MAX_MAP_ENTRIES: usize = 1_000;
/// Longest `cmd`, argument, env value or label value (bytes).
pub const MAX_LONG_STRING: usize = 64 * 1024;
/// Longest id, name, key, path, uri, image (bytes).
pub const MAX_SHORT_STRING: usize = 1024;
/// Longest port or network name (Marathon's `Name` type).
pub const MAX_NAME: usize = 63;
/// Longest user-supplied value echoed back inside an error message.
const MAX_ECHO: usize = 64;

/// Label that marks a single-instance app (Marathon's `MARATHON_SINGLE_INSTANCE_APP`).
pub const LABEL_SINGLE_INSTANCE_APP: &str = "MARATHON_SINGLE_INSTANCE_APP";

const HEALTH_PROTOCOLS: [&str; 7] = [
    "HTTP",
    "HTTPS",
    "TCP",
    "COMMAND",
    "MESOS_HTTP",
    "MESOS_HTTPS",
    "MESOS_TCP",
];
const PORT_PROTOCOLS: [&str; 3] = ["tcp", "udp", "udp,tcp"];

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Converts a serde path (`healthChecks[0].protocol`) into Marathon's form
/// (`/healthChecks(0)/protocol`).
pub(crate) fn marathon_path(p: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("({index})")),
            serde_path_to_error::Segment::Map { key } => {
                out.push('/');
                out.push_str(&echo(key));
            }
            serde_path_to_error::Segment::Enum { variant } => {
                out.push('/');
                out.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => out.push_str("/?"),
        }
    }
    if out.is_empty() { "/".into() } else { out }
}

/// Rewrites serde's wording (`invalid type: string "x", expected i64`) into plain words
/// (`expected an integer, got string "x"`), keeping it short.
pub(crate) fn friendly_type_error(path: &str, msg: &str) -> String {
    if path.starts_with("/env/") && msg.contains("untagged enum") {
        return "expected a string, or an object {\"secret\": \"<key in secrets>\"}".into();
    }
    if path == "/unreachableStrategy" && msg.contains("untagged enum") {
        return "must be \"disabled\" or an object {inactiveAfterSeconds, expungeAfterSeconds} \
                with numeric values"
            .into();
    }
    let mut msg = msg.to_string();
    // serde_json appends " at line L column C" only for text input; values have no position.
    for (from, to) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u16", "expected an integer between 0 and 65535"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
    ] {
        msg = msg.replace(from, to);
    }
    if let Some(i) = msg.find("expected struct ") {
        msg.truncate(i);
        msg.push_str("expected an object");
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        // "string \"x\", expected an integer" -> "expected an integer, got string \"x\""
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return format!("expected {expected}, got {}", truncate(got, MAX_ECHO * 2));
        }
    }
    truncate(&msg, 4 * MAX_ECHO)
}

/// Deserialises an app, reporting a wrong type at the path where it occurred.
pub fn parse_app_value(v: Value) -> Result<AppDefinition, ValidationErrors> {
    if !v.is_object() {
        return Err(ValidationErrors::single("/", "expected a JSON object"));
    }
    serde_path_to_error::deserialize::<_, AppDefinition>(v).map_err(|e| {
        let path = marathon_path(e.path());
        let msg = friendly_type_error(&path, &e.inner().to_string());
        ValidationErrors::single(path, msg)
    })
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

/// Which keys the client actually sent. Some of Marathon's defaults depend on whether a key was
/// absent, which the typed [`AppDefinition`] (filled with serde defaults) cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Presence {
    /// `upgradeStrategy` was sent (and not null).
    pub upgrade_strategy: bool,
    /// `networks` was sent as a non-empty array (Marathon treats `[]` as absent).
    pub networks: bool,
    /// `unreachableStrategy` was sent (and not null).
    pub unreachable_strategy: bool,
}

impl Presence {
    /// Reads presence from the raw JSON body.
    pub fn of(v: &Value) -> Self {
        let sent = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
        Self {
            upgrade_strategy: sent("upgradeStrategy"),
            networks: v
                .get("networks")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            unreachable_strategy: sent("unreachableStrategy"),
        }
    }

    /// Best guess for an already-typed app: a field counts as sent when it differs from its
    /// serde default. Wrong only when a client explicitly sent exactly the default value.
    pub fn infer(app: &AppDefinition) -> Self {
        let defaults = AppDefinition::default();
        Self {
            upgrade_strategy: app.upgrade_strategy != defaults.upgrade_strategy,
            networks: !app.networks.is_empty() && app.networks != defaults.networks,
            unreachable_strategy: app.unreachable_strategy != defaults.unreachable_strategy,
        }
    }
}

/// Marathon's `FetchUri.isExtract`: only archives are extracted.
fn is_extractable(uri: &str) -> bool {
    const EXT: [&str; 7] = [
        ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz", ".zip",
    ];
    let lower = uri.to_ascii_lowercase();
    EXT.iter().any(|e| lower.ends_with(e))
}

fn has_persistent_volumes(app: &AppDefinition) -> bool {
    app.container
        .as_ref()
        .is_some_and(|c| c.volumes.iter().any(|v| v.persistent.is_some()))
}

fn is_host_networking(networks: &[Network]) -> bool {
    networks.is_empty() || networks.iter().all(|n| n.mode == "host")
}

fn default_host_networks() -> Vec<Network> {
    vec![Network {
        mode: "host".into(),
        name: None,
        labels: BTreeMap::new(),
    }]
}

fn normalize_protocol(p: &mut String) {
    if p == "tcp,udp" {
        *p = "udp,tcp".into();
    }
}

/// Networks for the deprecated `container.docker.network`, or `None` when it cannot be
/// translated (left in place for validation to report).
fn networks_from_docker(kind: &str, ip_address: Option<&Value>) -> Option<Vec<Network>> {
    let ip_labels: BTreeMap<String, String> = ip_address
        .and_then(|ip| ip.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let ip_name = ip_address
        .and_then(|ip| ip.get("networkName"))
        .and_then(Value::as_str)
        .map(str::to_string);
    match kind {
        "HOST" => Some(default_host_networks()),
        "BRIDGE" => Some(vec![Network {
            mode: "container/bridge".into(),
            name: None,
            labels: ip_labels,
        }]),
        "USER" => Some(vec![Network {
            mode: "container".into(),
            name: ip_name,
            labels: ip_labels,
        }]),
        _ => None,
    }
}

/// Folds deprecated forms into current ones and fills defaults that depend on other fields.
/// Without the raw JSON, presence of keys is inferred with [`Presence::infer`]; the server
/// should use [`app_from_json`], which reads it from the body.
pub fn normalize_app(app: &mut AppDefinition) {
    let presence = Presence::infer(app);
    normalize_app_with(app, presence);
}

/// [`normalize_app`] with exact knowledge of which keys the client sent.
pub fn normalize_app_with(app: &mut AppDefinition, presence: Presence) {
    app.id = crate::path::normalize(&app.id);
    // Marathon canonicalises dependencies relative to the root.
    for d in &mut app.dependencies {
        *d = crate::path::normalize(d);
    }

    // uris -> fetch (only when fetch is empty; otherwise validation reports the conflict).
    if !app.uris.is_empty() && app.fetch.is_empty() {
        app.fetch = std::mem::take(&mut app.uris)
            .into_iter()
            .map(|uri| {
                let extract = is_extractable(&uri);
                serde_json::json!({"uri": uri, "extract": extract, "executable": false, "cache": false})
            })
            .collect();
    }

    // container: docker.portMappings -> container.portMappings; docker.network -> networks.
    let mut networks_explicit = presence.networks;
    if let Some(c) = app.container.as_mut()
        && let Some(d) = c.docker.as_mut()
    {
        if let Some(pm) = d.port_mappings.take() {
            let canonical_given = c.port_mappings.as_ref().is_some_and(|m| !m.is_empty());
            if !canonical_given {
                c.port_mappings = Some(pm);
            } else if !pm.is_empty() {
                // Both given: keep the deprecated copy so validation can report it.
                d.port_mappings = Some(pm);
            }
        }
        if let Some(kind) = d.network.clone()
            && !presence.networks
            && let Some(nets) = networks_from_docker(&kind, app.ip_address.as_ref())
        {
            app.networks = nets;
            d.network = None;
            networks_explicit = true;
            if app
                .ip_address
                .as_ref()
                .is_some_and(ip_address_is_translatable)
            {
                app.ip_address = None;
            }
        }
    }
    // ipAddress (deprecated IP-per-container) -> a container network, when nothing else says.
    if !networks_explicit
        && app
            .ip_address
            .as_ref()
            .is_some_and(ip_address_is_translatable)
    {
        let ip = app.ip_address.take();
        let name = ip
            .as_ref()
            .and_then(|v| v.get("networkName"))
            .and_then(Value::as_str);
        let labels: BTreeMap<String, String> = ip
            .as_ref()
            .and_then(|v| v.get("labels"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        app.networks = vec![match name {
            Some("mesos-bridge") => Network {
                mode: "container/bridge".into(),
                name: None,
                labels,
            },
            other => Network {
                mode: "container".into(),
                name: other.map(str::to_string),
                labels,
            },
        }];
    }
    if app.networks.is_empty() {
        app.networks = default_host_networks();
    }
    let host = is_host_networking(&app.networks);

    // ports (deprecated) -> portDefinitions. Under container networking Marathon drops them.
    if let Some(ports) = app.ports.take() {
        match &app.port_definitions {
            _ if !host => {}
            None => {
                app.port_definitions = Some(
                    ports
                        .iter()
                        .map(|&port| PortDefinition {
                            port,
                            protocol: "tcp".into(),
                            name: None,
                            labels: BTreeMap::new(),
                        })
                        .collect(),
                );
            }
            Some(defs) if defs.iter().map(|d| d.port).eq(ports.iter().copied()) => {}
            Some(_) if ports.is_empty() => {}
            Some(_) => app.ports = Some(ports), // conflict: validation reports it
        }
    }
    let has_container_mappings = app
        .container
        .as_ref()
        .and_then(|c| c.port_mappings.as_ref())
        .is_some_and(|m| !m.is_empty());
    if host && app.port_definitions.is_none() && !has_container_mappings {
        app.port_definitions = Some(vec![PortDefinition {
            port: 0,
            protocol: "tcp".into(),
            name: None,
            labels: BTreeMap::new(),
        }]);
    }
    if !host {
        // Marathon: requirePorts only applies to host networking.
        app.require_ports = false;
        // Marathon: in bridge mode a missing hostPort means "any host port".
        if app.networks.iter().any(|n| n.mode == "container/bridge")
            && let Some(pm) = app
                .container
                .as_mut()
                .and_then(|c| c.port_mappings.as_mut())
        {
            for m in pm.iter_mut() {
                m.host_port.get_or_insert(0);
            }
        }
    }
    for d in app.port_definitions.iter_mut().flatten() {
        normalize_protocol(&mut d.protocol);
    }
    if let Some(c) = app.container.as_mut() {
        for m in c.port_mappings.iter_mut().flatten() {
            normalize_protocol(&mut m.protocol);
        }
    }

    // Health checks: default portIndex for port-based checks when the app has ports; default
    // HTTP path.
    let port_count = port_count(app);
    for hc in &mut app.health_checks {
        if hc.protocol != "COMMAND"
            && hc.port.is_none()
            && hc.port_index.is_none()
            && port_count > 0
        {
            hc.port_index = Some(0);
        }
        if is_http_check(&hc.protocol) && hc.path.is_none() {
            hc.path = Some("/".into());
        }
    }

    // Resident apps (persistent volumes): Marathon's defaults when the client sent none.
    if has_persistent_volumes(app) {
        if !presence.upgrade_strategy {
            app.upgrade_strategy.minimum_health_capacity = 0.5;
            app.upgrade_strategy.maximum_over_capacity = 0.0;
        }
        if !presence.unreachable_strategy {
            app.unreachable_strategy = crate::app::UnreachableStrategy::Disabled("disabled".into());
        }
    }
}

/// The deprecated `ipAddress` can become a network unless it carries discovery ports (which
/// Berth does not translate; validation reports them).
fn ip_address_is_translatable(ip: &Value) -> bool {
    ip.is_object()
        && ip
            .get("discovery")
            .and_then(|d| d.get("ports"))
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
}

fn is_http_check(protocol: &str) -> bool {
    matches!(protocol, "HTTP" | "HTTPS" | "MESOS_HTTP" | "MESOS_HTTPS")
}

/// Number of ports health checks may index: container port mappings when there are any,
/// else port definitions (Marathon's `portIndices`).
fn port_count(app: &AppDefinition) -> usize {
    match app
        .container
        .as_ref()
        .and_then(|c| c.port_mappings.as_ref())
    {
        Some(pm) if !pm.is_empty() => pm.len(),
        _ => app.port_definitions.as_ref().map_or(0, Vec::len),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A user-supplied value, shortened for inclusion in a message.
pub fn echo(s: &str) -> String {
    truncate(s, MAX_ECHO)
}

fn name_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
            .unwrap_or_else(|e| panic!("static regex is valid: {e}"))
    })
}

fn port_name_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
            .unwrap_or_else(|e| panic!("static regex is valid: {e}"))
    })
}

fn executor_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^(?://cmd|/?[^/]+(?:/[^/]+)*|)$")
            .unwrap_or_else(|e| panic!("static regex is valid: {e}"))
    })
}

/// Collects errors; small helpers keep the messages uniform (Marathon/accord wording).
struct Check {
    errs: ValidationErrors,
}

impl Check {
    fn add(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errs.add(path, msg);
    }

    fn finite(&mut self, path: &str, v: f64) -> bool {
        if v.is_finite() {
            true
        } else {
            self.add(path, format!("got {v}, expected a finite number"));
            false
        }
    }

    fn min_f(&mut self, path: &str, v: f64, min: f64) {
        if self.finite(path, v) && v < min {
            self.add(path, format!("got {v:?}, expected {min:?} or more"));
        }
    }

    fn gt_f(&mut self, path: &str, v: f64, min: f64) {
        if self.finite(path, v) && v <= min {
            self.add(path, format!("got {v:?}, expected more than {min:?}"));
        }
    }

    fn between_f(&mut self, path: &str, v: f64, min: f64, max: f64) {
        if self.finite(path, v) && !(min..=max).contains(&v) {
            self.add(
                path,
                format!("got {v:?}, expected between {min:?} and {max:?}"),
            );
        }
    }

    fn min_i(&mut self, path: &str, v: i64, min: i64) {
        if v < min {
            self.add(path, format!("got {v}, expected {min} or more"));
        }
    }

    fn between_i(&mut self, path: &str, v: i64, min: i64, max: i64) {
        if !(min..=max).contains(&v) {
            self.add(path, format!("got {v}, expected between {min} and {max}"));
        }
    }

    fn port(&mut self, path: &str, v: i64) {
        self.between_i(path, v, 0, 65535);
    }

    /// Returns false (and reports) when the list is too long to validate element by element.
    fn list_len(&mut self, path: &str, len: usize, max: usize) -> bool {
        if len > max {
            self.add(path, format!("got {len} elements, expected {max} or less"));
            false
        } else {
            true
        }
    }

    fn str_len(&mut self, path: &str, s: &str, max: usize) -> bool {
        if s.len() > max {
            self.add(
                path,
                format!("is {} bytes long, expected {max} or less", s.len()),
            );
            false
        } else {
            true
        }
    }

    fn one_of(&mut self, path: &str, v: &str, allowed: &[&str]) -> bool {
        if allowed.contains(&v) {
            true
        } else {
            self.add(
                path,
                format!("'{}' is not one of ({})", echo(v), allowed.join(", ")),
            );
            false
        }
    }

    fn no_nul(&mut self, path: &str, s: &str) {
        if s.contains('\0') {
            self.add(path, "must not contain NUL characters");
        }
    }

    /// A Marathon `Name` (network names): lowercase alphanumerics and '-', at most 63.
    fn name(&mut self, path: &str, s: &str, re: &Regex) {
        if s.len() > MAX_NAME || !re.is_match(s) {
            self.add(
                path,
                format!(
                    "'{}' must match '{}' and be at most {MAX_NAME} characters",
                    echo(s),
                    re.as_str()
                ),
            );
        }
    }

    fn string_map(&mut self, path: &str, m: &BTreeMap<String, String>, what: &str) {
        if !self.list_len(path, m.len(), MAX_MAP_ENTRIES) {
            return;
        }
        for (k, v) in m {
            if k.is_empty() {
                self.add(path, format!("{what} names must not be empty"));
                continue;
            }
            let p = format!("{path}/{}", echo(k));
            if self.str_len(&p, k, MAX_SHORT_STRING) {
                self.no_nul(&p, k);
            }
            if self.str_len(&p, v, MAX_LONG_STRING) {
                self.no_nul(&p, v);
            }
        }
    }
}

/// Marathon's validation rules for an (already normalised) app. Every problem is collected.
/// Checks `container.docker.parameters` against what the Docker driver supports. Installed
/// once at start-up by the binary (the driver owns the list), so this crate stays free of
/// driver code; unset, parameters are not checked here.
pub type DockerParameterCheck = fn(&[crate::app::DockerParameter]) -> Result<(), String>;

static DOCKER_PARAMETER_CHECK: std::sync::OnceLock<DockerParameterCheck> =
    std::sync::OnceLock::new();

/// Installs the Docker parameter check (first call wins).
pub fn set_docker_parameter_check(check: DockerParameterCheck) {
    let _ = DOCKER_PARAMETER_CHECK.set(check);
}

pub fn validate_app(app: &AppDefinition) -> Result<(), ValidationErrors> {
    let mut c = Check {
        errs: ValidationErrors::new(),
    };
    check_identity(&mut c, app);
    check_command(&mut c, app);
    check_resources(&mut c, app);
    check_scheduling(&mut c, app);
    check_ports(&mut c, app);
    check_networks(&mut c, app);
    if let Some(container) = &app.container {
        check_container(&mut c, app, container);
        if let (Some(check), Some(docker)) = (DOCKER_PARAMETER_CHECK.get(), &container.docker)
            && let Err(e) = check(&docker.parameters)
        {
            c.errs.add("/container/docker/parameters", e);
        }
    }
    check_health_checks(&mut c, app);
    check_strategies(&mut c, app);
    check_artifacts(&mut c, app);
    check_deprecated_leftovers(&mut c, app);
    c.errs.into_result()
}

fn check_identity(c: &mut Check, app: &AppDefinition) {
    if !c.str_len("/id", &app.id, MAX_SHORT_STRING) {
        return;
    }
    match crate::path::check_id(&app.id) {
        Err(e) => c.add("/id", e),
        Ok(()) => {
            let norm = crate::path::normalize(&app.id);
            let last = norm.rsplit('/').next().unwrap_or("");
            if crate::path::RESERVED_LAST_SEGMENTS.contains(&last) {
                c.add(
                    "/id",
                    format!(
                        "'{last}' is reserved for a sub-resource and cannot be the last segment \
                         of an app id (reserved: {})",
                        crate::path::RESERVED_LAST_SEGMENTS.join(", ")
                    ),
                );
            }
        }
    }
    if c.list_len("/dependencies", app.dependencies.len(), MAX_MAP_ENTRIES) {
        for (i, d) in app.dependencies.iter().enumerate() {
            let p = format!("/dependencies({i})");
            if c.str_len(&p, d, MAX_SHORT_STRING)
                && let Err(e) = crate::path::check_id(d)
            {
                c.add(p, e);
            }
        }
    }
    c.string_map("/labels", &app.labels, "label");
    check_platform_labels(c, app);
    if let Some(u) = &app.user
        && c.str_len("/user", u, MAX_SHORT_STRING)
    {
        c.no_nul("/user", u);
    }
}

/// The `BERTH_*` labels Berth acts on: a bad value is an error now, not a failed launch later.
fn check_platform_labels(c: &mut Check, app: &AppDefinition) {
    use crate::app::{
        LABEL_CPU_MODE, LABEL_CPU_QUOTA, LABEL_DRIVER, LABEL_LOG_MAX_FILES, LABEL_LOG_MAX_SIZE,
        LABEL_PIDS_LIMIT, LABEL_PLACEMENT, LABEL_UID,
    };
    let results = [
        (LABEL_DRIVER, app.driver_label().map(|_| ())),
        (LABEL_PLACEMENT, app.spread().map(|_| ())),
        (LABEL_CPU_MODE, app.pinned_cpus().map(|_| ())),
        (LABEL_CPU_QUOTA, app.cpu_quota().map(|_| ())),
        (LABEL_PIDS_LIMIT, app.pids_limit().map(|_| ())),
        (LABEL_UID, app.auto_uid().map(|_| ())),
        (LABEL_LOG_MAX_SIZE, app.log_max_bytes().map(|_| ())),
        (LABEL_LOG_MAX_FILES, app.log_max_files().map(|_| ())),
    ];
    for (label, result) in results {
        if let Err(e) = result {
            c.add(format!("/labels/{label}"), e);
        }
    }
}

fn container_counts(app: &AppDefinition) -> bool {
    app.container
        .as_ref()
        .is_some_and(|ct| match ct.kind.as_str() {
            "DOCKER" | "MESOS" => ct.docker.is_some(),
            _ => false,
        })
}

fn check_command(c: &mut Check, app: &AppDefinition) {
    let cmd = app.cmd.is_some();
    let args = app.args.as_ref().is_some_and(|a| !a.is_empty());
    let container = container_counts(app);
    if cmd && args {
        c.add("/", "AppDefinition must not contain both 'cmd' and 'args'");
    } else if !(cmd || args || container) {
        c.add(
            "/",
            "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.",
        );
    }
    if let Some(cmd) = &app.cmd {
        if cmd.trim().is_empty() {
            c.add("/cmd", "must not be an empty string");
        } else if c.str_len("/cmd", cmd, MAX_LONG_STRING) {
            c.no_nul("/cmd", cmd);
        }
    }
    if let Some(a) = &app.args
        && c.list_len("/args", a.len(), MAX_MAP_ENTRIES)
    {
        for (i, s) in a.iter().enumerate() {
            let p = format!("/args({i})");
            if c.str_len(&p, s, MAX_LONG_STRING) {
                c.no_nul(&p, s);
            }
        }
        // Without a container image the args are the command vector: argv[0] must exist.
        if !container && a.first().is_some_and(|s| s.is_empty()) {
            c.add(
                "/args(0)",
                "the executable (first argument) must not be empty",
            );
        }
    }
    check_env(c, app);
    if !c.str_len("/executor", &app.executor, MAX_SHORT_STRING) {
        return;
    }
    if !executor_regex().is_match(&app.executor) {
        c.add(
            "/executor",
            "must fully match regular expression '^(//cmd)|(/?[^/]+(/[^/]+)*)|$'",
        );
    }
}

/// `env` (strings or secret references) and `secrets`: every reference names a key of
/// `secrets`, and every secret has a `source` that is a valid name in Berth's secret store.
/// Whether that secret exists is the server's to check.
fn check_env(c: &mut Check, app: &AppDefinition) {
    if c.list_len("/env", app.env.len(), MAX_MAP_ENTRIES) {
        for (k, v) in &app.env {
            if k.is_empty() {
                c.add("/env", "environment variable names must not be empty");
                continue;
            }
            let p = format!("/env/{}", echo(k));
            if c.str_len(&p, k, MAX_SHORT_STRING) {
                c.no_nul(&p, k);
            }
            if k.contains('=') {
                c.add(&p, "environment variable names must not contain '='");
            }
            match v {
                EnvValue::Plain(v) => {
                    if c.str_len(&p, v, MAX_LONG_STRING) {
                        c.no_nul(&p, v);
                    }
                }
                EnvValue::Secret(r) => {
                    if !app.secrets.contains_key(&r.secret) {
                        c.add(
                            &p,
                            format!(
                                "refers to secret '{}', which is not in 'secrets' (it has: {})",
                                echo(&r.secret),
                                if app.secrets.is_empty() {
                                    "none".to_string()
                                } else {
                                    app.secrets
                                        .keys()
                                        .take(10)
                                        .map(|k| format!("'{}'", echo(k)))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                }
                            ),
                        );
                    }
                }
            }
        }
    }
    if !c.list_len("/secrets", app.secrets.len(), MAX_MAP_ENTRIES) {
        return;
    }
    for (k, def) in &app.secrets {
        if k.is_empty() {
            c.add("/secrets", "secret keys must not be empty");
            continue;
        }
        let p = format!("/secrets/{}", echo(k));
        if c.str_len(&p, k, MAX_SHORT_STRING) {
            c.no_nul(&p, k);
        }
        let sp = format!("{p}/source");
        if def.source.is_empty() {
            c.add(
                sp,
                "a secret needs a source: the name of a secret in Berth's store                  (PUT /api/v1/secrets/{name})",
            );
        } else if let Err(e) = crate::secret::check_name(&def.source) {
            c.add(sp, e);
        }
    }
}

fn check_resources(c: &mut Check, app: &AppDefinition) {
    c.min_f("/cpus", app.cpus, 0.001);
    c.min_f("/mem", app.mem, 0.0);
    c.min_f("/disk", app.disk, 0.0);
    c.min_i("/gpus", app.gpus, 0);
    c.min_i("/instances", app.instances, 0);
    if app.instances > MAX_INSTANCES {
        c.add(
            "/instances",
            format!("got {}, expected {MAX_INSTANCES} or less", app.instances),
        );
    }
    if app.gpus > 0 && app.container.as_ref().is_some_and(|ct| ct.kind == "DOCKER") {
        c.add(
            "/gpus",
            "GPU resources only work with the Mesos containerizer",
        );
    }
    if let Some(roles) = &app.accepted_resource_roles {
        if roles.is_empty() {
            c.add("/acceptedResourceRoles", "must not be empty");
        } else if c.list_len("/acceptedResourceRoles", roles.len(), MAX_LIST_ITEMS) {
            for (i, r) in roles.iter().enumerate() {
                let p = format!("/acceptedResourceRoles({i})");
                if r.is_empty() {
                    c.add(p, "must not be empty");
                } else {
                    c.str_len(&p, r, MAX_SHORT_STRING);
                }
            }
        }
    }
}

fn check_scheduling(c: &mut Check, app: &AppDefinition) {
    if c.list_len("/constraints", app.constraints.len(), MAX_LIST_ITEMS) {
        for (i, parts) in app.constraints.iter().enumerate() {
            let p = format!("/constraints({i})");
            if parts.iter().any(|s| s.len() > MAX_SHORT_STRING) || parts.len() > 3 {
                if parts.len() > 3 {
                    c.add(&p, "Each constraint must have either 2 or 3 fields");
                } else {
                    c.add(
                        &p,
                        format!("constraint fields must be at most {MAX_SHORT_STRING} bytes"),
                    );
                }
                continue;
            }
            if let Err(e) = Constraint::parse(parts) {
                c.errs.extend_prefixed(&p, e);
            }
        }
    }
    c.min_f("/backoffSeconds", app.backoff_seconds, 0.0);
    c.min_f("/backoffFactor", app.backoff_factor, 1.0);
    c.min_f("/maxLaunchDelaySeconds", app.max_launch_delay_seconds, 0.0);
    if let Some(g) = app.task_kill_grace_period_seconds {
        c.min_f("/taskKillGracePeriodSeconds", g, 0.0);
    }
    c.one_of(
        "/killSelection",
        &app.kill_selection,
        &["YOUNGEST_FIRST", "OLDEST_FIRST"],
    );
    if app
        .labels
        .get(LABEL_SINGLE_INSTANCE_APP)
        .is_some_and(|v| v == "true")
        && app.instances > 1
    {
        c.add(
            "/instances",
            "Single instance app may only have one instance",
        );
    }
}

fn check_port_definition(c: &mut Check, i: usize, d: &PortDefinition) {
    let p = format!("/portDefinitions({i})");
    c.port(&format!("{p}/port"), d.port);
    c.one_of(&format!("{p}/protocol"), &d.protocol, &PORT_PROTOCOLS);
    if let Some(n) = &d.name {
        c.name(&format!("{p}/name"), n, port_name_regex());
    }
    c.string_map(&format!("{p}/labels"), &d.labels, "label");
}

fn check_ports(c: &mut Check, app: &AppDefinition) {
    let Some(defs) = &app.port_definitions else {
        return;
    };
    if !c.list_len("/portDefinitions", defs.len(), MAX_LIST_ITEMS) {
        return;
    }
    for (i, d) in defs.iter().enumerate() {
        check_port_definition(c, i, d);
    }
    let names: Vec<&str> = defs.iter().filter_map(|d| d.name.as_deref()).collect();
    if names.iter().collect::<BTreeSet<_>>().len() != names.len() {
        c.add("/portDefinitions", "Port names must be unique.");
    }
    let ports: Vec<i64> = defs.iter().map(|d| d.port).filter(|&p| p != 0).collect();
    if ports.iter().collect::<BTreeSet<_>>().len() != ports.len() {
        c.add("/portDefinitions", "Ports must be unique.");
    }
    if !defs.is_empty() && !is_host_networking(&app.networks) {
        c.add(
            "/portDefinitions",
            "portDefinitions are only allowed with host-networking",
        );
    }
}

fn check_networks(c: &mut Check, app: &AppDefinition) {
    let nets = &app.networks;
    if !c.list_len("/networks", nets.len(), MAX_NETWORKS) {
        return;
    }
    for (i, n) in nets.iter().enumerate() {
        let p = format!("/networks({i})");
        c.one_of(
            &format!("{p}/mode"),
            &n.mode,
            &["host", "container/bridge", "container"],
        );
        match (&n.name, n.mode.as_str()) {
            (None, "container") => c.add(
                format!("{p}/name"),
                "Network name must be specified when container network is selected.",
            ),
            (Some(name), "container") => c.name(&format!("{p}/name"), name, name_regex()),
            _ => {}
        }
        c.string_map(&format!("{p}/labels"), &n.labels, "label");
    }
    if nets
        .iter()
        .any(|n| n.mode == "host" && (n.name.is_some() || !n.labels.is_empty()))
    {
        c.add("/networks", "Host networks may not have names or labels");
    }
    if nets
        .iter()
        .any(|n| n.mode == "container/bridge" && n.name.is_some())
    {
        c.add("/networks", "Bridge networks may not have names");
    }
    let count = |m: &str| nets.iter().filter(|n| n.mode == m).count();
    let (h, b, ct) = (count("host"), count("container/bridge"), count("container"));
    let ok = (h <= 1 && b == 0 && ct == 0) || (h == 0 && b <= 1 && ct == 0) || (h == 0 && b == 0);
    if !ok {
        c.add(
            "/networks",
            "May specify a single host network, single bridge network, or else 1-to-n container networks",
        );
    }
    let named: Vec<&str> = nets.iter().filter_map(|n| n.name.as_deref()).collect();
    if named.iter().collect::<BTreeSet<_>>().len() != named.len() {
        c.add("/networks", "Duplicate networks are not allowed");
    }
    if ct > 1 && app.container.as_ref().is_some_and(|x| x.kind == "DOCKER") {
        c.add(
            "/networks",
            "may only specify a single container network when using the Docker container engine",
        );
    }
}

fn check_port_mapping(c: &mut Check, p: &str, m: &PortMapping) {
    c.port(&format!("{p}/containerPort"), m.container_port);
    if let Some(h) = m.host_port {
        c.port(&format!("{p}/hostPort"), h);
    }
    c.port(&format!("{p}/servicePort"), m.service_port);
    c.one_of(&format!("{p}/protocol"), &m.protocol, &PORT_PROTOCOLS);
    if let Some(n) = &m.name {
        c.name(&format!("{p}/name"), n, port_name_regex());
    }
    c.string_map(&format!("{p}/labels"), &m.labels, "label");
}

fn check_container(c: &mut Check, app: &AppDefinition, ct: &Container) {
    let kind_ok = c.one_of("/container/type", &ct.kind, &["DOCKER", "MESOS"]);
    match &ct.docker {
        None if kind_ok && ct.kind == "DOCKER" => {
            c.add(
                "/container/docker",
                "must be defined for a DOCKER container",
            );
        }
        None => {}
        Some(d) => {
            if d.image.trim().is_empty() {
                c.add("/container/docker/image", "must not be empty");
            } else if c.str_len("/container/docker/image", &d.image, MAX_SHORT_STRING)
                && d.image
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                c.add("/container/docker/image", "must not contain whitespace");
            }
            if let Some(net) = &d.network {
                // Left here by normalisation only when it could not be translated.
                let p = "/container/docker/network";
                if c.one_of(p, net, &["BRIDGE", "HOST", "USER", "NONE"]) {
                    if net == "NONE" {
                        c.add(p, "unsupported docker network type NONE");
                    } else {
                        c.add(
                            p,
                            "cannot mix deprecated and canonical network APIs \
                             (container.docker.network and networks)",
                        );
                    }
                }
            }
            if c.list_len(
                "/container/docker/parameters",
                d.parameters.len(),
                MAX_MAP_ENTRIES,
            ) {
                for (i, prm) in d.parameters.iter().enumerate() {
                    let p = format!("/container/docker/parameters({i})");
                    if prm.key.is_empty() {
                        c.add(format!("{p}/key"), "must not be empty");
                    }
                    c.str_len(&format!("{p}/key"), &prm.key, MAX_SHORT_STRING);
                    c.str_len(&format!("{p}/value"), &prm.value, MAX_LONG_STRING);
                }
            }
            if ct.kind == "MESOS" && (!d.parameters.is_empty() || d.port_mappings.is_some()) {
                c.add(
                    "/container/docker",
                    "parameters and portMappings are only supported by the DOCKER container type",
                );
            }
        }
    }
    if let Some(pm) = &ct.port_mappings
        && c.list_len("/container/portMappings", pm.len(), MAX_LIST_ITEMS)
    {
        for (i, m) in pm.iter().enumerate() {
            check_port_mapping(c, &format!("/container/portMappings({i})"), m);
        }
        let names: Vec<&str> = pm.iter().filter_map(|m| m.name.as_deref()).collect();
        if names.iter().collect::<BTreeSet<_>>().len() != names.len() {
            c.add("/container/portMappings", "Port names must be unique.");
        }
        let hosts: Vec<(i64, &str)> = pm
            .iter()
            .filter_map(|m| {
                m.host_port
                    .filter(|&h| h != 0)
                    .map(|h| (h, m.protocol.as_str()))
            })
            .collect();
        if hosts.iter().collect::<BTreeSet<_>>().len() != hosts.len() {
            c.add("/container/portMappings", "Host ports must be unique.");
        }
        if !pm.is_empty() && is_host_networking(&app.networks) {
            c.add(
                "/container/portMappings",
                "portMappings are not allowed with host-networking; use a 'container/bridge' \
                     or 'container' network",
            );
        }
    }
    if !c.list_len("/container/volumes", ct.volumes.len(), MAX_LIST_ITEMS) {
        return;
    }
    for (i, v) in ct.volumes.iter().enumerate() {
        let p = format!("/container/volumes({i})");
        let cp = format!("{p}/containerPath");
        if v.container_path.is_empty() {
            c.add(&cp, "must not be empty");
        } else if c.str_len(&cp, &v.container_path, MAX_SHORT_STRING) {
            c.no_nul(&cp, &v.container_path);
        }
        c.one_of(&format!("{p}/mode"), &v.mode, &["RO", "RW"]);
        if let Some(hp) = &v.host_path {
            let hpp = format!("{p}/hostPath");
            if hp.is_empty() {
                c.add(&hpp, "must not be empty");
            } else if c.str_len(&hpp, hp, MAX_SHORT_STRING) {
                if !hp.starts_with('/') {
                    c.add(&hpp, format!("'{}' must be an absolute path", echo(hp)));
                }
                c.no_nul(&hpp, hp);
            }
        }
        if let Some(persistent) = &v.persistent {
            if v.container_path.contains('/') {
                c.add(&cp, "value must not contain \"/\"");
            }
            if matches!(v.container_path.as_str(), "." | "..") {
                c.add(&cp, "must not be '.' or '..'");
            }
            if v.mode != "RW" {
                c.add(
                    format!("{p}/mode"),
                    format!("got {}, expected RW", echo(&v.mode)),
                );
            }
            match persistent.get("size").and_then(Value::as_f64) {
                Some(s) if s > 0.0 && s.is_finite() => {}
                Some(s) => c.add(
                    format!("{p}/persistent/size"),
                    format!("got {s}, expected more than 0"),
                ),
                None => c.add(
                    format!("{p}/persistent/size"),
                    "must be a number greater than 0",
                ),
            }
            if !persistent.is_object() {
                c.add(format!("{p}/persistent"), "expected an object");
            }
        }
        if v.secret.is_some() {
            c.add(
                format!("{p}/secret"),
                "file-based secrets are not supported; pass the secret in an environment \
                 variable instead: \"env\": {\"NAME\": {\"secret\": \"<key in secrets>\"}}",
            );
        } else if v.host_path.is_none() && v.persistent.is_none() && v.external.is_none() {
            c.add(
                &p,
                "volume must have one of 'hostPath', 'persistent' or 'external'",
            );
        }
    }
}

fn check_health_check(c: &mut Check, i: usize, hc: &HealthCheck, ports: usize) {
    let p = format!("/healthChecks({i})");
    if !c.one_of(&format!("{p}/protocol"), &hc.protocol, &HEALTH_PROTOCOLS) {
        return;
    }
    if hc.protocol == "COMMAND" {
        match &hc.command {
            Some(cmd) if !cmd.value.trim().is_empty() => {
                c.str_len(&format!("{p}/command/value"), &cmd.value, MAX_LONG_STRING);
            }
            Some(_) => c.add(format!("{p}/command/value"), "must not be empty"),
            None => c.add(
                format!("{p}/command"),
                "a COMMAND health check requires 'command'",
            ),
        }
    } else {
        if hc.command.is_some() {
            c.add(
                format!("{p}/command"),
                "'command' is only allowed with protocol COMMAND",
            );
        }
        if hc.port.is_some() && hc.port_index.is_some() {
            c.add(&p, "must not specify both 'port' and 'portIndex'");
        }
        if let Some(port) = hc.port {
            c.port(&format!("{p}/port"), port);
        }
        let valid_index = match hc.port_index {
            Some(idx) => usize::try_from(idx).is_ok_and(|idx| idx < ports),
            None => hc.port.is_some(),
        };
        if !valid_index {
            let at = if hc.port_index.is_some() {
                format!("{p}/portIndex")
            } else {
                p.clone()
            };
            c.add(
                at,
                format!(
                    "Health check port indices must address an element of the ports array or \
                     container port mappings (the app has {ports} port(s))."
                ),
            );
        }
    }
    if is_http_check(&hc.protocol)
        && let Some(path) = &hc.path
    {
        let pp = format!("{p}/path");
        if !path.starts_with('/') {
            c.add(&pp, format!("'{}' must start with '/'", echo(path)));
        }
        c.str_len(&pp, path, MAX_SHORT_STRING);
    }
    c.min_f(
        &format!("{p}/gracePeriodSeconds"),
        hc.grace_period_seconds,
        0.0,
    );
    c.gt_f(&format!("{p}/intervalSeconds"), hc.interval_seconds, 0.0);
    c.gt_f(&format!("{p}/timeoutSeconds"), hc.timeout_seconds, 0.0);
    c.min_i(
        &format!("{p}/maxConsecutiveFailures"),
        hc.max_consecutive_failures,
        0,
    );
    c.min_f(&format!("{p}/delaySeconds"), hc.delay_seconds, 0.0);
}

fn check_health_checks(c: &mut Check, app: &AppDefinition) {
    if !c.list_len("/healthChecks", app.health_checks.len(), MAX_LIST_ITEMS) {
        return;
    }
    let ports = port_count(app);
    for (i, hc) in app.health_checks.iter().enumerate() {
        check_health_check(c, i, hc, ports);
    }
    let mesos = app
        .health_checks
        .iter()
        .filter(|h| {
            matches!(
                h.protocol.as_str(),
                "MESOS_HTTP" | "MESOS_HTTPS" | "MESOS_TCP"
            )
        })
        .count();
    if mesos > 1 {
        c.add(
            "/healthChecks",
            "AppDefinition can contain at most one Mesos health check",
        );
    }
    if app.readiness_checks.len() > 1 {
        c.add(
            "/readinessChecks",
            format!(
                "got {} elements, expected 1 or less",
                app.readiness_checks.len()
            ),
        );
    }
    for (i, r) in app.readiness_checks.iter().enumerate().take(MAX_LIST_ITEMS) {
        if !r.is_object() {
            c.add(format!("/readinessChecks({i})"), "expected an object");
        }
    }
}

fn check_strategies(c: &mut Check, app: &AppDefinition) {
    let us = &app.upgrade_strategy;
    c.between_f(
        "/upgradeStrategy/minimumHealthCapacity",
        us.minimum_health_capacity,
        0.0,
        1.0,
    );
    c.between_f(
        "/upgradeStrategy/maximumOverCapacity",
        us.maximum_over_capacity,
        0.0,
        1.0,
    );
    let resident = has_persistent_volumes(app);
    if resident && us.maximum_over_capacity != 0.0 && us.maximum_over_capacity.is_finite() {
        c.add(
            "/upgradeStrategy/maximumOverCapacity",
            format!(
                "got {:?}, expected 0.0 (apps with persistent volumes cannot over-provision)",
                us.maximum_over_capacity
            ),
        );
    }
    if app
        .labels
        .get(LABEL_SINGLE_INSTANCE_APP)
        .is_some_and(|v| v == "true")
    {
        if us.minimum_health_capacity != 0.0 {
            c.add(
                "/upgradeStrategy/minimumHealthCapacity",
                format!(
                    "got {:?}, expected 0.0 (single instance app)",
                    us.minimum_health_capacity
                ),
            );
        }
        if us.maximum_over_capacity != 0.0 {
            c.add(
                "/upgradeStrategy/maximumOverCapacity",
                format!(
                    "got {:?}, expected 0.0 (single instance app)",
                    us.maximum_over_capacity
                ),
            );
        }
    }
    match &app.unreachable_strategy {
        crate::app::UnreachableStrategy::Disabled(s) => {
            if s != "disabled" {
                c.add(
                    "/unreachableStrategy",
                    format!(
                        "'{}' is not valid: must be \"disabled\" or an object with \
                         inactiveAfterSeconds and expungeAfterSeconds",
                        echo(s)
                    ),
                );
            }
        }
        crate::app::UnreachableStrategy::Enabled(e) => {
            c.min_f(
                "/unreachableStrategy/inactiveAfterSeconds",
                e.inactive_after_seconds,
                0.0,
            );
            c.min_f(
                "/unreachableStrategy/expungeAfterSeconds",
                e.expunge_after_seconds,
                0.0,
            );
            if e.expunge_after_seconds < e.inactive_after_seconds {
                c.add(
                    "/unreachableStrategy/expungeAfterSeconds",
                    format!(
                        "got {:?}, expected {:?} or more (must not be less than \
                         inactiveAfterSeconds)",
                        e.expunge_after_seconds, e.inactive_after_seconds
                    ),
                );
            }
            if resident {
                c.add(
                    "/unreachableStrategy",
                    "unreachableStrategy must be disabled for resident tasks",
                );
            }
        }
    }
}

fn check_artifacts(c: &mut Check, app: &AppDefinition) {
    if c.list_len("/fetch", app.fetch.len(), MAX_LIST_ITEMS) {
        for (i, f) in app.fetch.iter().enumerate() {
            let p = format!("/fetch({i})");
            let Some(obj) = f.as_object() else {
                c.add(&p, "expected an object with a string 'uri'");
                continue;
            };
            match obj.get("uri").and_then(Value::as_str) {
                Some(u) if !u.is_empty() => {
                    if c.str_len(&format!("{p}/uri"), u, MAX_SHORT_STRING) {
                        c.no_nul(&format!("{p}/uri"), u);
                    }
                }
                _ => c.add(format!("{p}/uri"), "must be a non-empty string"),
            }
            for key in ["extract", "executable", "cache"] {
                if obj
                    .get(key)
                    .is_some_and(|v| !v.is_boolean() && !v.is_null())
                {
                    c.add(format!("{p}/{key}"), "expected true or false");
                }
            }
            if let Some(d) = obj.get("destPath") {
                match d.as_str() {
                    Some(s) => {
                        c.str_len(&format!("{p}/destPath"), s, MAX_SHORT_STRING);
                    }
                    None if d.is_null() => {}
                    None => c.add(format!("{p}/destPath"), "expected a string"),
                }
            }
        }
    }
    if c.list_len("/storeUrls", app.store_urls.len(), MAX_LIST_ITEMS) {
        for (i, u) in app.store_urls.iter().enumerate() {
            let p = format!("/storeUrls({i})");
            if u.is_empty() {
                c.add(p, "must not be empty");
            } else {
                c.str_len(&p, u, MAX_SHORT_STRING);
            }
        }
    }
}

/// Deprecated fields that normalisation could not fold because they conflict with the
/// canonical ones.
fn check_deprecated_leftovers(c: &mut Check, app: &AppDefinition) {
    if !app.uris.is_empty() {
        c.add("/uris", "cannot specify both uris and fetch fields");
    }
    if app.ports.as_ref().is_some_and(|p| !p.is_empty()) {
        c.add("/ports", "cannot specify both ports and port definitions");
    }
    if let Some(d) = app.container.as_ref().and_then(|ct| ct.docker.as_ref())
        && d.port_mappings.as_ref().is_some_and(|p| !p.is_empty())
    {
        c.add(
            "/container/docker/portMappings",
            "cannot specify both portMappings and docker.portMappings",
        );
    }
    if let Some(ip) = &app.ip_address
        && !ip.is_null()
    {
        c.add(
            "/ipAddress",
            "ipAddress is deprecated and cannot be combined with networks or \
                 discovery ports; use networks and container.portMappings",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

/// Parse, normalise and validate in one go: what every write endpoint does with a body.
/// Presence of keys is read from the raw JSON before deserialising.
pub fn app_from_json(v: Value) -> Result<AppDefinition, ValidationErrors> {
    let presence = Presence::of(&v);
    let mut app = parse_app_value(v)?;
    normalize_app_with(&mut app, presence);
    validate_app(&app)?;
    Ok(app)
}
