//! Consul's read API over the catalog, so consul-template and Consul client libraries work
//! against Berth unchanged: `/v1/catalog/services`, `/v1/catalog/service/{name}` and
//! `/v1/health/service/{name}` (`passing`, `tag`), with Consul's blocking queries and headers.
//! Every answer carries `X-Consul-Index` (>= 1, moving only when that result changes).

use super::Params;
use crate::Shared;
use crate::catalog::{self, Blocking};
use crate::error::{ApiError, ApiResult};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use berth_core::service::{Instance, Service};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The datacenter every answer names (Berth has one).
const DATACENTER: &str = "berth";

fn consul_response(body: Value, index: u64) -> Response {
    let mut resp = axum::Json(body).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-consul-index", index.to_string()),
        ("x-consul-knownleader", "true".to_string()),
        ("x-consul-lastcontact", "0".to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    resp
}

fn params(uri: &Uri) -> ApiResult<(Params, Blocking)> {
    let q = Params::from_uri(uri);
    let b = Blocking::parse(q.get("index"), q.get("wait"))?;
    Ok((q, b))
}

fn service_name(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Path(name) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(name)
}

/// The instances of `name` that carry every tag in `tags` (and pass, with `passing`).
fn filtered(
    st: &crate::state::Cluster,
    names: &catalog::NameMap,
    name: &str,
    tags: &[String],
    passing: bool,
) -> Option<Service> {
    let mut s = catalog::service(st, names, name)?;
    if !tags.iter().all(|t| s.tags.contains(t)) {
        s.instances.clear();
    }
    if passing {
        s.instances.retain(|i| i.healthy);
    }
    Some(s)
}

/// Labels (keys Consul accepts) plus the app, version and named ports.
fn meta(i: &Instance) -> Map<String, Value> {
    let mut m: Map<String, Value> = i
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    m.insert("berth_app".into(), json!(i.app_id));
    m.insert("berth_version".into(), json!(i.version));
    for p in &i.ports {
        if let Some(name) = &p.name {
            m.insert(format!("port_{name}"), json!(p.port.to_string()));
        }
    }
    m
}

fn tagged_addresses(address: &str) -> Value {
    json!({"lan": address, "wan": address})
}

fn catalog_entry(s: &Service, i: &Instance, index: u64) -> Value {
    json!({
        "ID": i.node_id,
        "Node": i.host,
        "Address": i.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": tagged_addresses(&i.address),
        "NodeMeta": {},
        "ServiceKind": "",
        "ServiceID": i.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": i.address,
        "ServicePort": i.first_port(),
        "ServiceMeta": meta(i),
        "ServiceWeights": {"Passing": 1, "Warning": 1},
        "ServiceEnableTagOverride": false,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

fn health_entry(s: &Service, i: &Instance, index: u64) -> Value {
    let status = if i.healthy { "passing" } else { "critical" };
    let output = if i.healthy {
        format!("{} is running and passes its checks", i.id)
    } else {
        i.reason.clone()
    };
    json!({
        "Node": {
            "ID": i.node_id,
            "Node": i.host,
            "Address": i.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": tagged_addresses(&i.address),
            "Meta": {},
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Service": {
            "ID": i.id,
            "Service": s.name,
            "Tags": s.tags,
            "Address": i.address,
            "Port": i.first_port(),
            "Meta": meta(i),
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": false,
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Checks": [{
            "Node": i.host,
            "CheckID": format!("service:{}", i.id),
            "Name": format!("Service '{}' check", s.name),
            "Status": status,
            "Notes": "",
            "Output": output,
            "ServiceID": i.id,
            "ServiceName": s.name,
            "ServiceTags": s.tags,
            "Type": "berth",
            "CreateIndex": index,
            "ModifyIndex": index,
        }],
    })
}

/// `GET /v1/catalog/services`: `{"name": [tags]}`.
pub async fn services(State(s): State<Shared>, uri: Uri) -> ApiResult<Response> {
    let (_, b) = params(&uri)?;
    let (index, tags) = catalog::answer(&s, "consul/services", b, |st, names| {
        names
            .iter()
            .map(|(name, apps)| {
                let mut tags: Vec<String> = apps
                    .iter()
                    .filter_map(|a| st.apps.get(a))
                    .flat_map(|a| berth_core::service::tags_of(a))
                    .collect();
                tags.sort();
                tags.dedup();
                (name.clone(), tags)
            })
            .collect::<BTreeMap<String, Vec<String>>>()
    })
    .await?;
    Ok(consul_response(json!(tags), index))
}

/// One service's instances as Consul entries (`entry` shapes one), for the tag filter and,
/// with `passing`, healthy ones only.
async fn service_entries(
    s: Shared,
    p: Result<Path<String>, PathRejection>,
    uri: Uri,
    kind: &str,
    passing_allowed: bool,
    entry: fn(&Service, &Instance, u64) -> Value,
) -> ApiResult<Response> {
    let name = service_name(p)?;
    let (q, b) = params(&uri)?;
    let tags = q.all("tag");
    let passing = passing_allowed && q.flag("passing", false)?;
    let query = format!("consul/{kind}/{name}?{passing}&{}", tags.join(","));
    let (index, service) = catalog::answer(&s, &query, b, |st, names| {
        filtered(st, names, &name, &tags, passing)
    })
    .await?;
    let entries: Vec<Value> = service
        .iter()
        .flat_map(|s| s.instances.iter().map(|i| entry(s, i, index)))
        .collect();
    Ok(consul_response(Value::Array(entries), index))
}

/// `GET /v1/catalog/service/{name}`: every instance, healthy or not (`tag` filters).
pub async fn catalog_service(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Response> {
    service_entries(s, p, uri, "catalog", false, catalog_entry).await
}

/// `GET /v1/health/service/{name}`: instances with their checks (`passing`: healthy only;
/// `tag` filters).
pub async fn health_service(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Response> {
    service_entries(s, p, uri, "health", true, health_entry).await
}
