//! A small HTTP client for Berth's Marathon-compatible API: every call returns the response
//! body as JSON, or a [`CliError`] carrying what the server said.

use crate::error::CliError;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Timeout for ordinary (non-streaming) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The `--ca-cert` it verifies an https:// server with.
    ca_cert: Option<std::path::PathBuf>,
}

/// A successful response: status plus body (JSON; `Null` when empty; a JSON string when the
/// body was not JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// `base` is the server address, e.g. `http://127.0.0.1:8080` (a trailing `/` is ignored).
    pub fn new(base: &str) -> Result<Self, CliError> {
        Self::with_token(base, None)
    }

    /// A client that sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(base: &str, token: Option<&str>) -> Result<Self, CliError> {
        Self::with_options(base, token, None)
    }

    /// [`Client::with_token`], verifying an `https://` server with the CA certificates in the
    /// PEM file `ca_cert` only (`None`: the system's roots).
    pub fn with_options(
        base: &str,
        token: Option<&str>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self, CliError> {
        let base = base.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| CliError::Input(format!("invalid server address '{base}': {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CliError::Input(format!(
                "invalid server address '{base}': scheme must be http or https"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    CliError::Input("the token holds characters a header cannot".into())
                })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")));
        let http = berth_tls::client::trust_file(builder, ca_cert)
            .map_err(|e| CliError::Input(format!("--ca-cert: {e}")))?
            .build()
            .map_err(|e| CliError::Http {
                url: base.clone(),
                source: e,
            })?;
        Ok(Self {
            base,
            http,
            ca_cert: ca_cert.map(std::path::Path::to_path_buf),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The CA file this client verifies the server with (`--ca-cert`).
    pub fn ca_cert(&self) -> Option<&std::path::Path> {
        self.ca_cert.as_deref()
    }

    /// The absolute URL for `path_and_query` (which must start with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        Ok(self.send(Method::GET, path, None).await?.body)
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        Ok(self.send(Method::PUT, path, Some(body)).await?.body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        Ok(self.send(Method::POST, path, Some(body)).await?.body)
    }

    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        Ok(self.send(Method::DELETE, path, None).await?.body)
    }

    /// Any method, keeping the status (e.g. to tell 201 Created from 200 OK).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CliError> {
        let url = self.url(path);
        let mut req = self
            .http
            .request(method, &url)
            .header("Accept", "application/json")
            .timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        if !status.is_success() {
            return Err(CliError::from_response(
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &text,
            ));
        }
        Ok(Reply {
            status: status.as_u16(),
            body: parse_body(&text),
        })
    }

    /// Opens a streaming GET (used for `/v2/events`); errors are mapped like [`Client::send`].
    pub async fn stream(&self, path: &str, accept: &str) -> Result<reqwest::Response, CliError> {
        let url = self.url(path);
        let resp = self
            .http
            .get(&url)
            .header("Accept", accept)
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(CliError::from_response(
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &text,
            ));
        }
        Ok(resp)
    }

    pub(crate) fn transport_error(&self, url: &str, e: reqwest::Error) -> CliError {
        if let Some(problem) = berth_tls::client::certificate_problem(&e) {
            return CliError::Tls {
                url: self.base.clone(),
                problem,
            };
        }
        if e.is_connect() {
            CliError::Unreachable {
                url: self.base.clone(),
            }
        } else {
            CliError::Http {
                url: url.to_string(),
                source: e,
            }
        }
    }
}

fn parse_body(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Is this a "created" status (PUT that created the app)?
pub(crate) fn is_created(status: u16) -> bool {
    status == StatusCode::CREATED.as_u16()
}

/// Normalises a user-supplied id for pasting into a path: exactly one leading `/`, no
/// trailing `/`, surrounding whitespace dropped; characters that would break the URL are
/// percent-encoded. The rest is kept as given. Empty ids are rejected.
pub fn normalize_id(id: &str) -> Result<String, CliError> {
    let trimmed = id.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Err(CliError::Input(format!(
            "invalid id '{id}': it must not be empty"
        )));
    }
    Ok(format!("/{}", encode(trimmed, true)))
}

/// Percent-encodes everything except RFC 3986 unreserved characters (and `/` when
/// `keep_slash`).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Builds `?k=v&k2=v2` (empty when there are no pairs).
pub fn query(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false)))
        .collect();
    format!("?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_get_one_leading_slash() {
        assert_eq!(normalize_id("web").unwrap(), "/web");
        assert_eq!(normalize_id("/web").unwrap(), "/web");
        assert_eq!(normalize_id("//prod/web/").unwrap(), "/prod/web");
        assert_eq!(normalize_id(" prod/web ").unwrap(), "/prod/web");
        assert_eq!(
            normalize_id("prod_web.1234-abcd").unwrap(),
            "/prod_web.1234-abcd"
        );
        assert_eq!(normalize_id("a b?c").unwrap(), "/a%20b%3Fc");
        assert!(matches!(normalize_id("/"), Err(CliError::Input(_))));
        assert!(matches!(normalize_id(""), Err(CliError::Input(_))));
    }

    #[test]
    fn query_strings() {
        assert_eq!(query(&[]), "");
        assert_eq!(
            query(&[("force", "true".into()), ("event_type", "a b".into())]),
            "?force=true&event_type=a%20b"
        );
    }

    #[test]
    fn base_url_is_validated_and_trimmed() {
        let c = Client::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
        assert_eq!(c.url("/v2/apps"), "http://127.0.0.1:8080/v2/apps");
        assert!(matches!(Client::new("not a url"), Err(CliError::Input(_))));
        assert!(matches!(Client::new("ftp://x"), Err(CliError::Input(_))));
    }

    #[test]
    fn bodies_parse_leniently() {
        assert_eq!(parse_body(""), Value::Null);
        assert_eq!(parse_body("pong"), Value::String("pong".into()));
        assert_eq!(parse_body("{\"a\":1}")["a"], 1);
    }

    #[tokio::test]
    async fn connection_refused_is_reported_as_unreachable() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = c.get("/v2/apps").await.unwrap_err();
        assert_eq!(
            err.report(),
            format!("error: cannot reach Berth at http://127.0.0.1:{port}: is the server running?")
        );
    }
}
