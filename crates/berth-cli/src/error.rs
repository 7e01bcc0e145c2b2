//! The CLI's error type. `Display` is the text to show the user (without an `error: ` prefix;
//! [`CliError::report`] adds it).

use serde_json::Value;

/// One entry of a Marathon error body's `details` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    pub path: String,
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached at all (connection refused, DNS failure, ...).
    #[error("cannot reach Berth at {url}: is the server running?")]
    Unreachable { url: String },

    /// The TLS handshake failed: the server's certificate is not trusted (or the server
    /// refused ours). Never retried.
    #[error(
        "TLS with {url} failed: {problem}; if the server runs with its own CA (berth server --tls auto), pass its CA certificate with --ca-cert FILE or BERTH_CA_CERT (the server's <data-dir>/tls/ca.crt)"
    )]
    Tls { url: String, problem: String },

    /// The server answered 4xx/5xx; `message` and `details` come from its JSON body.
    #[error("{}", format_api_error(message, details, hint.as_deref()))]
    Api {
        status: u16,
        message: String,
        details: Vec<ErrorDetail>,
        /// Extra advice derived from the body (e.g. which deployments lock the app).
        hint: Option<String>,
    },

    /// Any other transport failure (timeout, broken connection mid-response, ...).
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The server answered 2xx but with something the CLI could not understand.
    #[error("unexpected response from {url}: {reason}")]
    BadResponse { url: String, reason: String },

    /// The user gave something unusable (bad app file, empty id, ...).
    #[error("{0}")]
    Input(String),

    /// Reading a file or stdin failed, or writing to stdout failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// `--wait` gave up.
    #[error("{0}")]
    Timeout(String),

    /// What the CLI waited for ended badly (a deployment was cancelled or rolled back).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The full text to print on stderr: `error: <message>` plus any detail lines.
    pub fn report(&self) -> String {
        format!("error: {self}")
    }

    /// Process exit code for this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Input(_) => 2,
            _ => 1,
        }
    }

    /// The HTTP status when the server rejected the request.
    pub fn status(&self) -> Option<u16> {
        match self {
            CliError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }

    /// Builds an [`CliError::Api`] from a failed response's status, reason and body text.
    /// Understands Marathon's `{"message", "details": [{"path", "errors"}]}` shape and the
    /// 409 "App is locked" body's `deployments: [{id}]`; falls back to the raw body text.
    pub fn from_response(status: u16, reason: &str, body: &str) -> Self {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let mut message = None;
        let mut details = Vec::new();
        let mut hint = None;
        if let Some(v) = &parsed {
            message = v.get("message").and_then(Value::as_str).map(str::to_string);
            if let Some(list) = v.get("details").and_then(Value::as_array) {
                details = list.iter().map(parse_detail).collect();
            }
            if let Some(deps) = v.get("deployments").and_then(Value::as_array) {
                let ids: Vec<&str> = deps
                    .iter()
                    .filter_map(|d| d.get("id").and_then(Value::as_str))
                    .collect();
                if !ids.is_empty() {
                    hint = Some(format!(
                        "locked by deployment(s) {}; cancel with `berth deployment cancel ID` or retry with --force",
                        ids.join(", ")
                    ));
                }
            }
        }
        let message = message.unwrap_or_else(|| {
            let text = body.trim();
            if text.is_empty() || parsed.is_some() {
                format!("HTTP {status} {reason}").trim_end().to_string()
            } else {
                text.chars().take(500).collect()
            }
        });
        CliError::Api {
            status,
            message,
            details,
            hint,
        }
    }
}

fn parse_detail(d: &Value) -> ErrorDetail {
    let path = d
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let errors = match d.get("errors") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other.to_string()],
    };
    ErrorDetail { path, errors }
}

fn format_api_error(message: &str, details: &[ErrorDetail], hint: Option<&str>) -> String {
    let mut out = message.to_string();
    for d in details {
        let path = if d.path.is_empty() {
            "/"
        } else {
            d.path.as_str()
        };
        out.push_str(&format!("\n  {path}: {}", d.errors.join("; ")));
    }
    if let Some(h) = hint {
        out.push_str(&format!("\n  {h}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marathon_validation_error_is_formatted_with_details() {
        let body = r#"{"message":"Object is not valid","details":[
            {"path":"/id","errors":["'Foo' must fully match the regular expression"]},
            {"path":"/cpus","errors":["must be >= 0.001","is required"]}]}"#;
        let e = CliError::from_response(422, "Unprocessable Entity", body);
        assert_eq!(e.status(), Some(422));
        assert_eq!(
            e.report(),
            "error: Object is not valid\n  /id: 'Foo' must fully match the regular expression\n  /cpus: must be >= 0.001; is required"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn locked_app_error_names_the_deployments() {
        let body = r#"{"message":"App is locked by one or more deployments. Override with the option '?force=true'","deployments":[{"id":"d-1"}]}"#;
        let e = CliError::from_response(409, "Conflict", body);
        let text = e.to_string();
        assert!(text.starts_with("App is locked by one or more deployments."));
        assert!(text.contains("locked by deployment(s) d-1;"), "{text}");
        assert!(text.contains("--force"));
    }

    #[test]
    fn non_json_and_empty_bodies_fall_back() {
        let e = CliError::from_response(502, "Bad Gateway", "upstream down\n");
        assert_eq!(e.to_string(), "upstream down");
        let e = CliError::from_response(404, "Not Found", "");
        assert_eq!(e.to_string(), "HTTP 404 Not Found");
        let e = CliError::from_response(500, "Internal Server Error", "{}");
        assert_eq!(e.to_string(), "HTTP 500 Internal Server Error");
    }

    #[test]
    fn unreachable_message() {
        let e = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
        };
        assert_eq!(
            e.report(),
            "error: cannot reach Berth at http://127.0.0.1:1: is the server running?"
        );
    }

    #[test]
    fn odd_detail_shapes_are_tolerated() {
        let body =
            r#"{"message":"Invalid JSON","details":[{"path":"","errors":"bad"},{"errors":[1]}]}"#;
        let e = CliError::from_response(400, "Bad Request", body);
        assert_eq!(e.to_string(), "Invalid JSON\n  /: bad\n  /: 1");
    }
}
