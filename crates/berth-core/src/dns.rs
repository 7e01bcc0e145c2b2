//! DNS answers for the service catalog: the small, authoritative part of RFC 1035 (and
//! RFC 2782 SRV, RFC 6891 EDNS size) that a service registry needs, as Mesos-DNS and
//! Consul's DNS interface do. No I/O here: [`respond`] turns one query message into one
//! response message, looking services up through a function; the server owns the sockets.
//!
//! Names, in the zone `berth.` (configurable):
//! - `web-prod.berth.` A/AAAA: the addresses of the service's healthy instances;
//! - `_web-prod._tcp.berth.` SRV: one record per healthy instance, its first port, with the
//!   target `<instance>.web-prod.berth.` (and that target's A/AAAA as additional records);
//! - `_http._web-prod._tcp.berth.` SRV: the port named `http` of each healthy instance;
//! - `<instance>.web-prod.berth.` A/AAAA: one healthy instance (the task id, with every
//!   character outside `[a-z0-9-]` made `-`).
//!
//! Unknown names are NXDOMAIN, names that exist without records of the asked type are an
//! empty NOERROR (both with the zone's SOA, whose minimum is the TTL), and names outside the
//! zone are REFUSED: Berth never forwards a query.

use crate::service::{Instance, Service};
use std::net::IpAddr;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// A UDP answer's size limit without EDNS (RFC 1035).
pub const UDP_PLAIN_LIMIT: usize = 512;
/// The UDP payload size Berth announces and honours at most with EDNS.
pub const UDP_EDNS_LIMIT: u16 = 1232;

const HEADER_LEN: usize = 12;
const MAX_POINTER_HOPS: usize = 16;
const MAX_NAME_LEN: usize = 255;

/// The zone Berth answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase labels, e.g. `["berth"]`.
    labels: Vec<String>,
    pub ttl: u32,
}

impl Zone {
    /// `domain` like `berth` or `berth.example.com.`; an error says what is wrong with it.
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, String> {
        let trimmed = domain.trim().trim_end_matches('.');
        if trimmed.is_empty() {
            return Err("the DNS domain is empty (e.g. --dns-domain berth)".into());
        }
        let labels: Vec<String> = trimmed.split('.').map(str::to_ascii_lowercase).collect();
        for l in &labels {
            if l.is_empty()
                || l.len() > 63
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(format!(
                    "DNS domain {domain:?}: label {l:?} must be 1-63 letters, digits or '-'"
                ));
            }
        }
        Ok(Zone { labels, ttl })
    }

    /// `berth.`
    pub fn name(&self) -> String {
        format!("{}.", self.labels.join("."))
    }

    /// The labels of `name` below the zone (`web-prod.berth` -> `["web-prod"]`), or `None`
    /// when `name` is outside it.
    fn relative<'a>(&self, name: &'a [String]) -> Option<&'a [String]> {
        let n = self.labels.len();
        if name.len() < n {
            return None;
        }
        let (rel, suffix) = name.split_at(name.len() - n);
        suffix
            .iter()
            .zip(&self.labels)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
            .then_some(rel)
    }
}

/// The DNS label of an instance: its task id in lowercase, every character outside
/// `[a-z0-9-]` made `-`, at most 63 characters.
pub fn instance_label(task_id: &str) -> String {
    let mapped: String = task_id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    trimmed
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// A parsed query: what [`respond`] needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    id: u16,
    opcode: u8,
    recursion_desired: bool,
    /// The question's labels as sent (case kept, for the echo).
    labels: Vec<String>,
    qtype: u16,
    qclass: u16,
    /// The UDP payload size of the client's EDNS OPT record, if it sent one.
    edns_size: Option<u16>,
}

#[derive(Debug)]
enum Malformed {
    /// Too short to carry a header: nothing to answer.
    NoHeader,
    /// A response, not a query: never answered (no loops between servers).
    NotAQuery,
    /// A header, but the rest cannot be read: FORMERR to this id.
    Format(u16, u8),
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Reads the name at `at`, following compression pointers; returns its labels and the
/// offset just past it (past the first pointer when there is one).
fn read_name(msg: &[u8], mut at: usize) -> Option<(Vec<String>, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    let mut hops = 0;
    let mut len = 0usize;
    loop {
        let b = *msg.get(at)?;
        match b & 0xC0 {
            0x00 if b == 0 => {
                return Some((labels, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let l = b as usize;
                let label = msg.get(at + 1..at + 1 + l)?;
                len += l + 1;
                if len > MAX_NAME_LEN {
                    return None;
                }
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + l;
            }
            0xC0 => {
                let target = (u16_at(msg, at)? & 0x3FFF) as usize;
                hops += 1;
                // A pointer must point back, and not forever.
                if hops > MAX_POINTER_HOPS || target >= at {
                    return None;
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return None,
        }
    }
}

fn parse(msg: &[u8]) -> Result<Query, Malformed> {
    if msg.len() < HEADER_LEN {
        return Err(Malformed::NoHeader);
    }
    let id = u16_at(msg, 0).unwrap_or(0);
    let flags = u16_at(msg, 2).unwrap_or(0);
    if flags & 0x8000 != 0 {
        return Err(Malformed::NotAQuery);
    }
    let opcode = ((flags >> 11) & 0x0F) as u8;
    let qdcount = u16_at(msg, 4).unwrap_or(0);
    let ancount = u16_at(msg, 6).unwrap_or(0);
    let nscount = u16_at(msg, 8).unwrap_or(0);
    let arcount = u16_at(msg, 10).unwrap_or(0);
    if opcode != 0 {
        return Err(Malformed::Format(id, RCODE_NOTIMP));
    }
    if qdcount != 1 {
        return Err(Malformed::Format(id, RCODE_FORMERR));
    }
    let formerr = || Malformed::Format(id, RCODE_FORMERR);
    let (labels, at) = read_name(msg, HEADER_LEN).ok_or_else(formerr)?;
    let qtype = u16_at(msg, at).ok_or_else(formerr)?;
    let qclass = u16_at(msg, at + 2).ok_or_else(formerr)?;
    // Skip answer and authority records (a query has none, but may), then look for OPT.
    let mut at = at + 4;
    let mut edns_size = None;
    for i in 0..(ancount as usize + nscount as usize + arcount as usize) {
        let (_, after) = read_name(msg, at).ok_or_else(formerr)?;
        let rtype = u16_at(msg, after).ok_or_else(formerr)?;
        let rclass = u16_at(msg, after + 2).ok_or_else(formerr)?;
        let rdlen = u16_at(msg, after + 8).ok_or_else(formerr)? as usize;
        if i >= ancount as usize + nscount as usize && rtype == TYPE_OPT {
            edns_size = Some(rclass);
        }
        at = after + 10 + rdlen;
        if at > msg.len() {
            return Err(formerr());
        }
    }
    Ok(Query {
        id,
        opcode,
        recursion_desired: flags & 0x0100 != 0,
        labels,
        qtype,
        qclass,
        edns_size,
    })
}

/// A resource record to write: owner name (`None`: the question's name, compressed),
/// type, TTL and its data.
struct Record {
    owner: Option<Vec<String>>,
    rtype: u16,
    ttl: u32,
    data: Vec<u8>,
}

fn encode_name(out: &mut Vec<u8>, labels: &[String]) {
    for l in labels {
        let bytes = l.as_bytes();
        let len = bytes.len().min(63);
        out.push(len as u8);
        out.extend_from_slice(&bytes[..len]);
    }
    out.push(0);
}

fn name_of(parts: &[&str], zone: &Zone) -> Vec<String> {
    parts
        .iter()
        .map(|s| s.to_string())
        .chain(zone.labels.iter().cloned())
        .collect()
}

/// What a query resolves to.
#[derive(Default)]
struct Resolution {
    rcode: u8,
    authoritative: bool,
    answers: Vec<Record>,
    additional: Vec<Record>,
    /// Negative answers (NXDOMAIN, NODATA) carry the zone's SOA.
    soa: bool,
}

fn address_record(owner: Option<Vec<String>>, ip: IpAddr, ttl: u32) -> Record {
    match ip {
        IpAddr::V4(v4) => Record {
            owner,
            rtype: TYPE_A,
            ttl,
            data: v4.octets().to_vec(),
        },
        IpAddr::V6(v6) => Record {
            owner,
            rtype: TYPE_AAAA,
            ttl,
            data: v6.octets().to_vec(),
        },
    }
}

fn wants(qtype: u16, ip: &IpAddr) -> bool {
    match qtype {
        TYPE_ANY => true,
        TYPE_A => ip.is_ipv4(),
        TYPE_AAAA => ip.is_ipv6(),
        _ => false,
    }
}

fn instance_ip(i: &Instance) -> Option<IpAddr> {
    i.address.parse().ok()
}

fn srv_records(service: &Service, port_name: Option<&str>, zone: &Zone, r: &mut Resolution) {
    for i in service.healthy() {
        let port = match port_name {
            None => i.ports.first().map(|p| p.port),
            Some(name) => i
                .ports
                .iter()
                .find(|p| {
                    p.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .map(|p| p.port),
        };
        let Some(port) = port.filter(|p| *p != 0) else {
            continue;
        };
        let label = instance_label(&i.id);
        let target = name_of(&[&label, &service.name], zone);
        let mut data = Vec::with_capacity(6 + 64);
        data.extend_from_slice(&0u16.to_be_bytes()); // priority
        data.extend_from_slice(&1u16.to_be_bytes()); // weight: all equal
        data.extend_from_slice(&port.to_be_bytes());
        encode_name(&mut data, &target);
        r.answers.push(Record {
            owner: None,
            rtype: TYPE_SRV,
            ttl: zone.ttl,
            data,
        });
        if let Some(ip) = instance_ip(i) {
            r.additional
                .push(address_record(Some(target), ip, zone.ttl));
        }
    }
}

fn resolve(q: &Query, zone: &Zone, lookup: &dyn Fn(&str) -> Option<Service>) -> Resolution {
    let mut r = Resolution::default();
    let Some(rel) = zone.relative(&q.labels) else {
        r.rcode = RCODE_REFUSED;
        return r;
    };
    r.authoritative = true;
    if q.qclass != CLASS_IN && q.qclass != TYPE_ANY {
        r.rcode = RCODE_REFUSED;
        return r;
    }
    let rel: Vec<String> = rel.iter().map(|l| l.to_ascii_lowercase()).collect();
    let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
    let nxdomain = |mut r: Resolution| {
        r.rcode = RCODE_NXDOMAIN;
        r.answers.clear();
        r.soa = true;
        r
    };
    match rel.as_slice() {
        [] => {
            if matches!(q.qtype, TYPE_SOA | TYPE_ANY) {
                r.answers.push(Record {
                    owner: None,
                    rtype: TYPE_SOA,
                    ttl: zone.ttl,
                    data: soa_data(zone),
                });
            }
        }
        [svc] => {
            let Some(service) = lookup(svc) else {
                return nxdomain(r);
            };
            let mut seen = Vec::new();
            for ip in service.healthy().filter_map(instance_ip) {
                if wants(q.qtype, &ip) && !seen.contains(&ip) {
                    seen.push(ip);
                    r.answers.push(address_record(None, ip, zone.ttl));
                }
            }
        }
        [inst, svc] if !inst.starts_with('_') => {
            let Some(service) = lookup(svc) else {
                return nxdomain(r);
            };
            let Some(i) = service.healthy().find(|i| instance_label(&i.id) == *inst) else {
                return nxdomain(r);
            };
            if let Some(ip) = instance_ip(i).filter(|ip| wants(q.qtype, ip)) {
                r.answers.push(address_record(None, ip, zone.ttl));
            }
        }
        [svc, "_tcp"] => {
            let Some(service) = svc.strip_prefix('_').and_then(lookup) else {
                return nxdomain(r);
            };
            if matches!(q.qtype, TYPE_SRV | TYPE_ANY) {
                srv_records(&service, None, zone, &mut r);
            }
        }
        [port, svc, "_tcp"] => {
            let (Some(port), Some(service)) = (
                port.strip_prefix('_'),
                svc.strip_prefix('_').and_then(lookup),
            ) else {
                return nxdomain(r);
            };
            let named = service.instances.iter().any(|i| {
                i.ports.iter().any(|p| {
                    p.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(port))
                })
            });
            if !named {
                return nxdomain(r);
            }
            if matches!(q.qtype, TYPE_SRV | TYPE_ANY) {
                srv_records(&service, Some(port), zone, &mut r);
            }
        }
        _ => return nxdomain(r),
    }
    if r.answers.is_empty() {
        r.soa = true;
    }
    r
}

fn soa_data(zone: &Zone) -> Vec<u8> {
    let mut d = Vec::new();
    encode_name(&mut d, &name_of(&["ns"], zone));
    encode_name(&mut d, &name_of(&["hostmaster"], zone));
    // Serial: the catalog is live, there is no zone transfer to version.
    for v in [1u32, 60, 10, 86_400, zone.ttl] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d
}

fn write_record(out: &mut Vec<u8>, rec: &Record) {
    match &rec.owner {
        // The question's name, at offset 12.
        None => out.extend_from_slice(&[0xC0, HEADER_LEN as u8]),
        Some(labels) => encode_name(out, labels),
    }
    out.extend_from_slice(&rec.rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&rec.ttl.to_be_bytes());
    out.extend_from_slice(&(rec.data.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&rec.data);
}

struct Header {
    id: u16,
    opcode: u8,
    authoritative: bool,
    truncated: bool,
    recursion_desired: bool,
    rcode: u8,
    counts: [u16; 4],
}

fn write_header(out: &mut Vec<u8>, h: &Header) {
    let mut flags: u16 = 0x8000 | ((h.opcode as u16 & 0x0F) << 11) | (h.rcode as u16 & 0x0F);
    if h.authoritative {
        flags |= 0x0400;
    }
    if h.truncated {
        flags |= 0x0200;
    }
    if h.recursion_desired {
        flags |= 0x0100;
    }
    out.extend_from_slice(&h.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in h.counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

fn opt_record(out: &mut Vec<u8>) {
    out.push(0); // root
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&UDP_EDNS_LIMIT.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Transport of a query: UDP answers are limited in size (and truncated with TC set so the
/// client retries over TCP); TCP answers are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The response to the query message `msg`, or `None` when there is nothing to answer (not
/// a DNS query, or a response).
pub fn respond(
    msg: &[u8],
    zone: &Zone,
    transport: Transport,
    lookup: &dyn Fn(&str) -> Option<Service>,
) -> Option<Vec<u8>> {
    let q = match parse(msg) {
        Ok(q) => q,
        Err(Malformed::NoHeader | Malformed::NotAQuery) => return None,
        Err(Malformed::Format(id, rcode)) => {
            let mut out = Vec::with_capacity(HEADER_LEN);
            write_header(
                &mut out,
                &Header {
                    id,
                    opcode: 0,
                    authoritative: false,
                    truncated: false,
                    recursion_desired: false,
                    rcode,
                    counts: [0; 4],
                },
            );
            return Some(out);
        }
    };
    let r = resolve(&q, zone, lookup);
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => q
            .edns_size
            .map(|s| s.clamp(UDP_PLAIN_LIMIT as u16, UDP_EDNS_LIMIT) as usize)
            .unwrap_or(UDP_PLAIN_LIMIT),
    };
    let full = build(&q, zone, &r, false);
    if full.len() <= limit {
        return Some(full);
    }
    Some(build(&q, zone, &r, true))
}

fn build(q: &Query, zone: &Zone, r: &Resolution, truncated: bool) -> Vec<u8> {
    let edns = q.edns_size.is_some();
    let (answers, additional, soa): (&[Record], &[Record], bool) = if truncated {
        (&[], &[], false)
    } else {
        (&r.answers, &r.additional, r.soa)
    };
    let mut out = Vec::with_capacity(512);
    write_header(
        &mut out,
        &Header {
            id: q.id,
            opcode: q.opcode,
            authoritative: r.authoritative,
            truncated,
            recursion_desired: q.recursion_desired,
            rcode: r.rcode,
            counts: [
                1,
                answers.len() as u16,
                u16::from(soa && r.authoritative),
                additional.len() as u16 + u16::from(edns),
            ],
        },
    );
    encode_name(&mut out, &q.labels);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    for rec in answers {
        write_record(&mut out, rec);
    }
    if soa && r.authoritative {
        write_record(
            &mut out,
            &Record {
                owner: Some(zone.labels.clone()),
                rtype: TYPE_SOA,
                ttl: zone.ttl,
                data: soa_data(zone),
            },
        );
    }
    for rec in additional {
        write_record(&mut out, rec);
    }
    if edns {
        opt_record(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::InstancePort;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut m = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        let labels: Vec<String> = name
            .trim_end_matches('.')
            .split('.')
            .map(String::from)
            .collect();
        encode_name(&mut m, &labels);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            m.push(0);
            m.extend_from_slice(&TYPE_OPT.to_be_bytes());
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        m
    }

    fn instance(id: &str, address: &str, healthy: bool, ports: &[(u16, Option<&str>)]) -> Instance {
        Instance {
            id: id.into(),
            app_id: "/prod/web".into(),
            node_id: "n1".into(),
            host: "h1".into(),
            address: address.into(),
            ports: ports
                .iter()
                .map(|(p, n)| InstancePort {
                    port: *p,
                    name: n.map(String::from),
                    service_port: None,
                })
                .collect(),
            labels: Default::default(),
            version: "v1".into(),
            healthy,
            state: "TASK_RUNNING".into(),
            reason: String::new(),
        }
    }

    fn web(n: usize) -> Service {
        let mut instances = vec![instance(
            "prod_web.sick",
            "10.0.0.99",
            false,
            &[(9999, Some("http"))],
        )];
        for k in 0..n {
            instances.push(instance(
                &format!("prod_web.t{k}"),
                &format!("10.0.{}.{}", k / 250, k % 250 + 1),
                true,
                &[
                    (31000 + k as u16, Some("http")),
                    (32000 + k as u16, Some("admin")),
                ],
            ));
        }
        Service {
            name: "web-prod".into(),
            apps: vec!["/prod/web".into()],
            instances,
            ..Default::default()
        }
    }

    struct Reply {
        rcode: u8,
        flags: u16,
        counts: [u16; 4],
        msg: Vec<u8>,
    }

    fn ask(name: &str, qtype: u16, transport: Transport, edns: Option<u16>, n: usize) -> Reply {
        let zone = Zone::new("berth", 5).expect("zone");
        let svc = web(n);
        let lookup = move |name: &str| (name == "web-prod").then(|| svc.clone());
        let msg = respond(&query(name, qtype, edns), &zone, transport, &lookup).expect("a reply");
        let flags = u16_at(&msg, 2).expect("flags");
        Reply {
            rcode: (flags & 0x0F) as u8,
            flags,
            counts: [4, 6, 8, 10].map(|at| u16_at(&msg, at).expect("count")),
            msg,
        }
    }

    /// Answer records' (type, data) in order.
    fn answers(r: &Reply) -> Vec<(u16, Vec<u8>)> {
        let (_, mut at) = read_name(&r.msg, HEADER_LEN).expect("question");
        at += 4;
        (0..r.counts[1])
            .map(|_| {
                let (_, after) = read_name(&r.msg, at).expect("owner");
                let rtype = u16_at(&r.msg, after).expect("type");
                let len = u16_at(&r.msg, after + 8).expect("len") as usize;
                let data = r.msg[after + 10..after + 10 + len].to_vec();
                at = after + 10 + len;
                (rtype, data)
            })
            .collect()
    }

    #[test]
    fn a_records_are_the_healthy_instances_only() {
        let r = ask("web-prod.berth.", TYPE_A, Transport::Udp, None, 3);
        assert_eq!(r.rcode, RCODE_NOERROR);
        assert_ne!(r.flags & 0x0400, 0, "authoritative");
        let ips: Vec<Vec<u8>> = answers(&r)
            .into_iter()
            .map(|(t, d)| {
                assert_eq!(t, TYPE_A);
                d
            })
            .collect();
        assert_eq!(
            ips,
            vec![vec![10, 0, 0, 1], vec![10, 0, 0, 2], vec![10, 0, 0, 3]]
        );
        // Case does not matter.
        let r = ask("WEB-Prod.Berth.", TYPE_A, Transport::Udp, None, 3);
        assert_eq!(r.counts[1], 3);
        // No IPv6 addresses: an empty NOERROR with the SOA.
        let r = ask("web-prod.berth.", TYPE_AAAA, Transport::Udp, None, 3);
        assert_eq!((r.rcode, r.counts[1], r.counts[2]), (RCODE_NOERROR, 0, 1));
    }

    #[test]
    fn srv_records_carry_ports_and_instance_targets() {
        let r = ask("_web-prod._tcp.berth.", TYPE_SRV, Transport::Udp, None, 2);
        assert_eq!(r.rcode, RCODE_NOERROR);
        let srv = answers(&r);
        assert_eq!(srv.len(), 2);
        let ports: Vec<u16> = srv
            .iter()
            .map(|(_, d)| u16::from_be_bytes([d[4], d[5]]))
            .collect();
        assert_eq!(ports, vec![31000, 31001]);
        let (target, _) = read_name(&srv[0].1, 6).expect("target");
        assert_eq!(target.join("."), "prod-web-t0.web-prod.berth");
        assert_eq!(r.counts[3], 2, "the targets' A records come along");
        let r = ask(
            "_admin._web-prod._tcp.berth.",
            TYPE_SRV,
            Transport::Udp,
            None,
            2,
        );
        let ports: Vec<u16> = answers(&r)
            .iter()
            .map(|(_, d)| u16::from_be_bytes([d[4], d[5]]))
            .collect();
        assert_eq!(ports, vec![32000, 32001]);
        let r = ask(
            "_nope._web-prod._tcp.berth.",
            TYPE_SRV,
            Transport::Udp,
            None,
            2,
        );
        assert_eq!(r.rcode, RCODE_NXDOMAIN);
        // The instance name resolves while it is healthy; the sick one does not.
        let r = ask(
            "prod-web-t1.web-prod.berth.",
            TYPE_A,
            Transport::Udp,
            None,
            2,
        );
        assert_eq!(answers(&r), vec![(TYPE_A, vec![10, 0, 0, 2])]);
        let r = ask(
            "prod-web-sick.web-prod.berth.",
            TYPE_A,
            Transport::Udp,
            None,
            2,
        );
        assert_eq!(r.rcode, RCODE_NXDOMAIN);
    }

    #[test]
    fn unknown_names_are_nxdomain_and_other_zones_refused() {
        let r = ask("nope.berth.", TYPE_A, Transport::Udp, None, 1);
        assert_eq!((r.rcode, r.counts[1], r.counts[2]), (RCODE_NXDOMAIN, 0, 1));
        let r = ask("_nope._tcp.berth.", TYPE_SRV, Transport::Udp, None, 1);
        assert_eq!(r.rcode, RCODE_NXDOMAIN);
        let r = ask("a.b.c.berth.", TYPE_A, Transport::Udp, None, 1);
        assert_eq!(r.rcode, RCODE_NXDOMAIN);
        let r = ask("example.com.", TYPE_A, Transport::Udp, None, 1);
        assert_eq!(
            (r.rcode, r.flags & 0x0400, r.counts[1]),
            (RCODE_REFUSED, 0, 0)
        );
        let r = ask("berth.", TYPE_SOA, Transport::Udp, None, 1);
        assert_eq!(answers(&r)[0].0, TYPE_SOA);
    }

    #[test]
    fn big_udp_answers_are_truncated_and_tcp_ones_are_not() {
        let r = ask("web-prod.berth.", TYPE_A, Transport::Udp, None, 100);
        assert_ne!(r.flags & 0x0200, 0, "TC");
        assert_eq!(r.counts[1], 0);
        assert!(r.msg.len() <= UDP_PLAIN_LIMIT);
        let r = ask("web-prod.berth.", TYPE_A, Transport::Tcp, None, 100);
        assert_eq!((r.flags & 0x0200, r.counts[1]), (0, 100));
        // EDNS raises the UDP limit: 60 A records (~1 kB) fit in 1232 bytes.
        let r = ask("web-prod.berth.", TYPE_A, Transport::Udp, Some(4096), 60);
        assert_eq!((r.flags & 0x0200, r.counts[1], r.counts[3]), (0, 60, 1));
    }

    #[test]
    fn malformed_messages_get_formerr_or_nothing() {
        let zone = Zone::new("berth", 5).expect("zone");
        let none = |_: &str| None;
        assert!(respond(&[1, 2, 3], &zone, Transport::Udp, &none).is_none());
        let mut response = query("web-prod.berth.", TYPE_A, None);
        response[2] |= 0x80;
        assert!(respond(&response, &zone, Transport::Udp, &none).is_none());
        let mut cut = query("web-prod.berth.", TYPE_A, None);
        cut.truncate(20);
        let r = respond(&cut, &zone, Transport::Udp, &none).expect("formerr");
        assert_eq!(r[3] & 0x0F, RCODE_FORMERR);
        // A pointer loop.
        let mut looped = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        let r = respond(&looped, &zone, Transport::Udp, &none).expect("formerr");
        assert_eq!(r[3] & 0x0F, RCODE_FORMERR);
        looped[2] = 0x28; // opcode 5 (UPDATE)
        let r = respond(&looped, &zone, Transport::Udp, &none).expect("notimp");
        assert_eq!(r[3] & 0x0F, RCODE_NOTIMP);
    }

    #[test]
    fn zones_and_labels() {
        assert!(Zone::new("", 5).is_err());
        assert!(Zone::new("bad_label", 5).is_err());
        assert_eq!(
            Zone::new("Berth.Example.", 5).expect("zone").name(),
            "berth.example."
        );
        assert_eq!(
            instance_label("prod_web.48050b5e-BA51"),
            "prod-web-48050b5e-ba51"
        );
        assert_eq!(instance_label(&"x".repeat(80)).len(), 63);
    }
}
