//! HTTPS for an axum router: `axum::serve` takes only plain TCP listeners, so this is its
//! accept loop over tokio-rustls and hyper (HTTP/1.1). Every request carries, as axum's
//! `ConnectInfo<SocketAddr>` does, the peer's address, and a [`TlsPeer`] saying which client
//! certificate (verified in the handshake) the connection presented.
//!
//! A plain-HTTP request sent to the TLS port is answered with a plain-HTTP 400 whose JSON body
//! says to use `https://`, and the connection is closed: the client learns what is wrong
//! instead of reading a handshake failure.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest a client may take from connecting to finishing its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS facts of a request's connection (a request extension).
#[derive(Debug, Clone, Default)]
pub struct TlsPeer {
    /// The client's certificate, verified against the configuration's client CA; `None`
    /// when the client presented none.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// The configuration new connections are accepted with; it may be replaced at any time
/// (an agent installs its certificate once the server issued it). While it is empty,
/// connections are closed at once.
#[derive(Debug, Default)]
pub struct TlsSlot(RwLock<Option<Arc<rustls::ServerConfig>>>);

impl TlsSlot {
    pub fn new(config: Option<Arc<rustls::ServerConfig>>) -> Arc<TlsSlot> {
        Arc::new(TlsSlot(RwLock::new(config)))
    }

    pub fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
    }

    pub fn get(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves; then stops accepting
/// and waits for open connections to finish their requests.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Arc<TlsSlot>,
    router: Router,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // As axum's loop: a connection that failed while being accepted is that
                // connection's problem; anything else (out of file descriptors) backs off.
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        let Some(config) = tls.get() else {
            // No certificate yet: nothing to talk TLS with.
            continue;
        };
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(stream) = handshake(tcp, peer, config).await else {
                return;
            };
            let info = TlsPeer {
                client_certificate: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .cloned(),
            };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.extensions_mut().insert(info.clone());
                    tower::ServiceExt::oneshot(router.clone(), req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let work = async move {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1) => {}
            _ => return None,
        }
        // A TLS connection starts with a handshake record (0x16); an HTTP request with a
        // method in capitals.
        if first[0].is_ascii_uppercase() {
            tracing::debug!(%peer, "plain HTTP request on the HTTPS port");
            refuse_plain_http(tcp).await;
            return None;
        }
        match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
            Ok(s) => Some(s),
            Err(e) => {
                // Not louder: anyone who reaches the port could fill the log. The client's
                // side says what went wrong.
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .ok()
        .flatten()
}

/// Reads the request head (so closing does not reset the connection before the client read
/// the answer) and answers 400 in plain HTTP.
async fn refuse_plain_http(mut tcp: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = r#"{"message":"this port serves HTTPS only: use an https:// URL"}"#;
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, Leaf, Usage, client, pem};
    use axum::routing::get;

    fn leaf(usage: Usage) -> Leaf {
        Leaf {
            common_name: "t".into(),
            names: vec!["127.0.0.1".into(), "localhost".into()],
            usage,
            valid_for: Duration::from_secs(3600),
        }
    }

    async fn who(
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        axum::Extension(tls): axum::Extension<TlsPeer>,
    ) -> String {
        format!("{} {}", peer.ip(), tls.client_certificate.is_some())
    }

    /// A server with a certificate from `ca` that takes client certificates from `ca`.
    async fn start(ca: &Ca) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (cert, key) = ca.issue(&leaf(Usage::Server)).unwrap();
        let config = crate::server_config(
            pem::certs(cert.as_bytes(), "c").unwrap(),
            pem::key(key.as_bytes(), "k").unwrap(),
            Some(&[ca.certificate_der().clone()]),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/who", get(who));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            TlsSlot::new(Some(config)),
            router,
            async move {
                let _ = rx.await;
            },
        ));
        (addr, tx)
    }

    fn trusting(ca: &Ca) -> reqwest::ClientBuilder {
        client::trust_only(reqwest::Client::builder(), &[ca.certificate_der().clone()]).unwrap()
    }

    #[tokio::test]
    async fn serves_https_with_peer_facts_and_refuses_what_it_must() {
        let ca = Ca::generate("test").unwrap();
        let (addr, _stop) = start(&ca).await;
        let url = format!("https://127.0.0.1:{}/who", addr.port());

        // Trusting the CA, without a client certificate.
        let c = trusting(&ca).build().unwrap();
        let text = c.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(text, "127.0.0.1 false");

        // With a client certificate from the CA.
        let (cert, key) = ca.issue(&leaf(Usage::Client)).unwrap();
        let c = trusting(&ca)
            .identity(client::identity(&cert, &key).unwrap())
            .build()
            .unwrap();
        let text = c.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(text, "127.0.0.1 true");

        // A client that trusts another CA: a certificate error, said as such.
        let other = Ca::generate("other").unwrap();
        let e = trusting(&other)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap_err();
        let problem = client::certificate_problem(&e)
            .unwrap_or_else(|| panic!("a certificate problem in {e:?}"));
        assert!(problem.contains("UnknownIssuer"), "{problem}");

        // A client certificate from another CA: the server refuses the handshake.
        let (cert, key) = other.issue(&leaf(Usage::Client)).unwrap();
        let c = trusting(&ca)
            .identity(client::identity(&cert, &key).unwrap())
            .build()
            .unwrap();
        let e = c.get(&url).send().await.unwrap_err();
        assert!(
            client::error_chain(&e).to_lowercase().contains("alert"),
            "{}",
            client::error_chain(&e)
        );

        // A server certificate used as a client's: refused too (its usage is serverAuth).
        let (cert, key) = ca.issue(&leaf(Usage::Server)).unwrap();
        let c = trusting(&ca)
            .identity(client::identity(&cert, &key).unwrap())
            .build()
            .unwrap();
        assert!(c.get(&url).send().await.is_err());

        // Plain HTTP on the TLS port: a 400 that says to use https.
        let r = reqwest::get(format!("http://127.0.0.1:{}/who", addr.port()))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert!(r.text().await.unwrap().contains("https://"));
    }

    #[tokio::test]
    async fn an_empty_slot_closes_connections_until_filled() {
        let ca = Ca::generate("test").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slot = TlsSlot::new(None);
        let router = Router::new().route("/who", get(who));
        tokio::spawn(serve(
            listener,
            slot.clone(),
            router,
            std::future::pending(),
        ));
        let url = format!("https://127.0.0.1:{}/who", addr.port());
        let c = trusting(&ca).build().unwrap();
        assert!(c.get(&url).send().await.is_err());
        let (cert, key) = ca.issue(&leaf(Usage::Server)).unwrap();
        slot.set(
            crate::server_config(
                pem::certs(cert.as_bytes(), "c").unwrap(),
                pem::key(key.as_bytes(), "k").unwrap(),
                None,
            )
            .unwrap(),
        );
        let c = trusting(&ca).build().unwrap();
        assert_eq!(c.get(&url).send().await.unwrap().status().as_u16(), 200);
    }
}
