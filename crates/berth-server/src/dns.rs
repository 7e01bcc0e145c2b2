//! The DNS server over the live catalog (UDP and TCP on one address): every answer is
//! computed from the state at the moment of the query, so it follows health at once; the
//! records themselves are in [`berth_core::dns`].

use crate::{Inner, catalog};
use berth_core::dns::{Transport, Zone, respond};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// `--dns-listen`, `--dns-domain`, `--dns-ttl`.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    pub zone: Zone,
}

/// TCP connections served at once; one more waits for a free slot.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection idle this long (or slow to send its query) is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The bound sockets, before serving (so a port in use stops the server at start).
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
    pub addr: SocketAddr,
}

pub async fn bind(listen: SocketAddr) -> std::io::Result<DnsSockets> {
    let udp = UdpSocket::bind(listen).await?;
    let addr = udp.local_addr()?;
    // TCP on the same port as UDP, also when port 0 was asked for.
    let tcp = TcpListener::bind(addr).await?;
    Ok(DnsSockets { udp, tcp, addr })
}

fn answer(inner: &Inner, zone: &Zone, msg: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let lookup = |name: &str| catalog::lookup(inner, name);
    respond(msg, zone, transport, &lookup)
}

/// Serves queries until the process ends.
pub fn spawn(inner: Arc<Inner>, sockets: DnsSockets, zone: Zone) {
    let DnsSockets { udp, tcp, addr } = sockets;
    tracing::info!(%addr, zone = %zone.name(), ttl = zone.ttl, "DNS listening (UDP and TCP)");
    let udp_inner = inner.clone();
    let udp_zone = zone.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; keep serving.
                    tracing::debug!(error = %e, "DNS UDP receive");
                    continue;
                }
            };
            let Some(reply) = buf
                .get(..n)
                .and_then(|msg| answer(&udp_inner, &udp_zone, msg, Transport::Udp))
            else {
                continue;
            };
            if let Err(e) = udp.send_to(&reply, peer).await {
                tracing::debug!(error = %e, %peer, "DNS UDP send");
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let inner = inner.clone();
            let zone = zone.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_tcp(&inner, &zone, stream).await;
            });
        }
    });
}

/// Length-prefixed queries on one connection (RFC 7766), until EOF, an error or idleness.
async fn serve_tcp(inner: &Inner, zone: &Zone, mut stream: TcpStream) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = answer(inner, zone, &msg, Transport::Tcp) else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
