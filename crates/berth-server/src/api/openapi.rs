//! `GET /openapi.json`: the OpenAPI 3 document of every route in [`super::ROUTES`] (the Marathon
//! v2 API, Berth's `/api/v1` and the agent protocol). A test holds the document and the router to
//! each other; the integration test `openapi_schemathesis` holds the document to the responses.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::super::ROUTES;
    use super::DOCUMENT;
    use serde_json::Value;
    use std::collections::BTreeSet;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// `(METHOD, path)` of every operation in the document.
    fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        let mut out = BTreeSet::new();
        for (path, item) in paths {
            for (key, _) in item.as_object().expect("path item") {
                if METHODS.contains(&key.as_str()) {
                    out.insert((key.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// `(METHOD, path)` of every route, a wildcard route's sub-resources spelled out.
    fn routed_operations() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for r in ROUTES {
            match r.path.split_once("{*") {
                Some((prefix, _)) => {
                    assert!(
                        !r.documented.is_empty(),
                        "{} {}: a wildcard route must list the paths it serves",
                        r.method,
                        r.path
                    );
                    for d in r.documented {
                        assert!(
                            d.starts_with(prefix) && d.len() > prefix.len(),
                            "{} {}: documented path {d} is not under {prefix}",
                            r.method,
                            r.path
                        );
                        out.insert((r.method.to_string(), d.to_string()));
                    }
                }
                None => {
                    assert!(
                        r.documented.is_empty(),
                        "{} {}: only wildcard routes list documented paths",
                        r.method,
                        r.path
                    );
                    out.insert((r.method.to_string(), r.path.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_operation_is_routed() {
        let doc = doc();
        let documented = documented_operations(&doc);
        let routed = routed_operations();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from openapi.json: {undocumented:?}; \
             operations in openapi.json that no route serves: {unrouted:?}"
        );
        let mut seen = BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} is routed twice",
                r.method,
                r.path
            );
        }
    }

    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.strip_prefix('#').expect("local $ref");
                doc.pointer(ptr)
                    .unwrap_or_else(|| panic!("$ref {r} resolves to nothing"))
            }
            None => v,
        }
    }

    #[test]
    fn path_parameters_match_the_templates() {
        let doc = doc();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let template: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect();
            let shared = item.get("parameters").and_then(Value::as_array);
            for (method, op) in item.as_object().expect("path item") {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let declared: BTreeSet<String> = shared
                    .into_iter()
                    .flatten()
                    .chain(
                        op.get("parameters")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten(),
                    )
                    .map(|p| resolve(&doc, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("parameter name").to_string())
                    .collect();
                assert_eq!(
                    declared, template,
                    "{method} {path}: path parameters declared vs in the template"
                );
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if m.contains_key("$ref") {
                        resolve(doc, v);
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        let doc = doc();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        walk(&doc, &doc);
    }
}
