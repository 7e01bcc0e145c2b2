//! Health checks run by the agent, next to the task (Marathon ran them from the scheduler,
//! which mass-killed healthy tasks when it was overloaded). HTTP/HTTPS/TCP probe the task's
//! port on its host; COMMAND runs through the task's driver.

use crate::driver::{Driver, TaskSpec};
use berth_core::app::HealthCheck;
use std::time::Duration;

/// Which port a check probes: `port` if given, else `ports[portIndex]` (default index 0).
pub fn check_port(check: &HealthCheck, spec: &TaskSpec) -> Result<u16, String> {
    if let Some(p) = check.port {
        return u16::try_from(p).map_err(|_| format!("port {p} is out of range"));
    }
    let idx = check.port_index.unwrap_or(0);
    usize::try_from(idx)
        .ok()
        .and_then(|i| spec.ports.get(i).copied())
        .ok_or_else(|| {
            format!(
                "portIndex {idx} has no port (task has {} ports)",
                spec.ports.len()
            )
        })
}

/// Runs one check once. `Ok(())` is healthy; `Err` carries the cause Marathon shows as
/// `lastFailureCause`.
pub async fn run_check(
    http: &reqwest::Client,
    driver: &dyn Driver,
    check: &HealthCheck,
    spec: &TaskSpec,
) -> Result<(), String> {
    let timeout = Duration::from_secs_f64(check.timeout_seconds.clamp(0.001, 3600.0));
    let proto = check.protocol.trim_start_matches("MESOS_");
    match proto {
        "HTTP" | "HTTPS" => {
            let port = check_port(check, spec)?;
            let scheme = if proto == "HTTPS" { "https" } else { "http" };
            let path = check.path.as_deref().unwrap_or("/");
            let url = format!("{scheme}://{}:{port}{path}", spec.host);
            match http.get(&url).timeout(timeout).send().await {
                Err(e) if e.is_timeout() => Err(format!(
                    "HTTP GET {url}: timed out after {}s",
                    timeout.as_secs_f64()
                )),
                Err(e) => Err(format!("HTTP GET {url}: {e}")),
                Ok(r) => {
                    let code = r.status().as_u16();
                    if (200..400).contains(&code)
                        || (check.ignore_http1xx && (100..200).contains(&code))
                    {
                        Ok(())
                    } else {
                        Err(format!("HTTP GET {url} returned {code}"))
                    }
                }
            }
        }
        "TCP" => {
            let port = check_port(check, spec)?;
            let addr = format!("{}:{port}", spec.host);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Err(_) => Err(format!("TCP connect {addr}: timed out")),
                Ok(Err(e)) => Err(format!("TCP connect {addr}: {e}")),
                Ok(Ok(_)) => Ok(()),
            }
        }
        "COMMAND" => {
            let Some(cmd) = check.command.as_ref() else {
                return Err("COMMAND check without a command".into());
            };
            driver.check_command(spec, &cmd.value, timeout).await
        }
        other => Err(format!("unsupported health check protocol {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake::{FakeConfig, FakeDriver};
    use berth_core::app::{AppDefinition, CommandCheck};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn spec(ports: Vec<u16>) -> TaskSpec {
        TaskSpec {
            task_id: "t.1".into(),
            app_id: "/a".into(),
            version: "v".into(),
            app: AppDefinition::default(),
            ports,
            host: "127.0.0.1".into(),
            node_id: "n".into(),
            resources: Default::default(),
            cpuset: vec![],
            secret_env: Default::default(),
        }
    }

    fn check(protocol: &str) -> HealthCheck {
        serde_json::from_value(serde_json::json!({"protocol": protocol, "timeoutSeconds": 2}))
            .unwrap()
    }

    /// A one-shot HTTP server answering every request with `status`.
    async fn http_server(status: u16) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_tcp_and_command_checks() {
        let http = reqwest::Client::new();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = FakeDriver::new(FakeConfig::default(), tx);
        let ok = http_server(200).await;
        let bad = http_server(500).await;
        assert!(
            run_check(&http, &driver, &check("HTTP"), &spec(vec![ok]))
                .await
                .is_ok()
        );
        let err = run_check(&http, &driver, &check("HTTP"), &spec(vec![bad]))
            .await
            .unwrap_err();
        assert!(err.contains("returned 500"), "{err}");
        assert!(
            run_check(&http, &driver, &check("TCP"), &spec(vec![ok]))
                .await
                .is_ok()
        );
        // A port nobody listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(
            run_check(&http, &driver, &check("TCP"), &spec(vec![closed]))
                .await
                .is_err()
        );
        let err = run_check(&http, &driver, &check("HTTP"), &spec(vec![]))
            .await
            .unwrap_err();
        assert!(err.contains("portIndex 0 has no port"), "{err}");
        let mut c = check("COMMAND");
        c.command = Some(CommandCheck {
            value: "test \"$MESOS_TASK_ID\" = t.1".into(),
        });
        assert!(run_check(&http, &driver, &c, &spec(vec![])).await.is_ok());
        c.command = Some(CommandCheck {
            value: "exit 3".into(),
        });
        assert!(
            run_check(&http, &driver, &c, &spec(vec![]))
                .await
                .unwrap_err()
                .contains("exit")
        );
    }
}
