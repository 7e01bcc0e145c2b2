//! DNS queries (`berth_core::dns::respond`): any datagram gets no answer or a well-formed
//! one: never a panic, a UDP answer within the UDP limit, and the query's id echoed.
#![no_main]

use berth_core::dns::{Transport, UDP_EDNS_LIMIT, Zone, respond};
use berth_core::service::{Instance, InstancePort, Service};
use libfuzzer_sys::fuzz_target;

fn service() -> Service {
    let instance = |k: u16, healthy| Instance {
        id: format!("prod_web.t{k}"),
        app_id: "/prod/web".into(),
        node_id: "n1".into(),
        host: "h1".into(),
        address: format!("10.0.0.{k}"),
        ports: vec![InstancePort { port: 31000 + k, name: Some("http".into()), service_port: None }],
        labels: Default::default(),
        version: "v1".into(),
        healthy,
        state: "TASK_RUNNING".into(),
        reason: String::new(),
    };
    Service {
        name: "web-prod".into(),
        apps: vec!["/prod/web".into()],
        instances: (1..60).map(|k| instance(k, k % 7 != 0)).collect(),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(zone) = Zone::new("berth", 5) else {
        return;
    };
    let svc = service();
    let lookup = |name: &str| (name == "web-prod").then(|| svc.clone());
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(reply) = respond(data, &zone, transport, &lookup) {
            assert!(reply.len() >= 12, "{reply:?}");
            assert_eq!(reply[..2], data[..2], "the id is echoed");
            assert_ne!(reply[2] & 0x80, 0, "a response");
            if transport == Transport::Udp {
                assert!(reply.len() <= UDP_EDNS_LIMIT as usize, "{}", reply.len());
            }
        }
    }
});
