//! The zone's authoritative DNS: names for every service the zone's sidecars can reach, in the
//! Kubernetes multi-cluster services convention.
//!
//! - `SVC.NS.svc.clusterset.local` A (or AAAA) → the service's VIP in this zone, which routes
//!   to the best zone (locality-aware);
//! - `SVC.NS.svc.ZONE.mesh.local` A → the zone-pinned VIP that only routes to `ZONE`;
//! - `_PORT._tcp.<either name>` SRV → `0 100 PORT <the A name>` for every named port;
//! - SOA and NS at the two apexes, `clusterset.local` and `mesh.local`.
//!
//! A name inside those domains that does not exist is NXDOMAIN, a name that exists with no
//! record of the asked type is NODATA (NOERROR, no answer), both with the apex SOA in the
//! authority section for negative caching. Every other domain is REFUSED: the server never
//! recurses (RA=0) and is never an open resolver.
//!
//! This module is pure: [`Table::build`] turns the zone's compiled outbound services (exactly
//! what the sidecars bind listeners on, so DNS and the data plane never disagree) into an
//! immutable lookup table, and [`answer`] / [`respond`] answer a message / a packet from it,
//! without sockets or clocks. [`server`] runs the UDP and TCP listeners and swaps the table
//! when the services change.

pub mod server;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use strait_proto as pb;

/// The multi-cluster services domain: the locality-aware VIP of every service.
pub const CLUSTERSET_DOMAIN: &str = "clusterset.local.";
/// The zone-pinned names: `SVC.NS.svc.ZONE.mesh.local`.
pub const MESH_DOMAIN: &str = "mesh.local.";
/// TTL of every answer unless configured otherwise: short, because a VIP is stable but a
/// service may appear or go away at any time.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// SRV weight of the one target each SRV name has (CoreDNS and Kubernetes use 100).
const SRV_WEIGHT: u16 = 100;
/// The EDNS UDP payload size we advertise and honour at most (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Without EDNS a UDP answer must fit in 512 bytes (RFC 1035).
const CLASSIC_UDP_PAYLOAD: usize = 512;

/// What the table is built with besides the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// TTL of every record, and the SOA minimum (negative-caching TTL).
    pub ttl: Duration,
    /// The address the server is reachable at, published as the glue of the apexes' NS
    /// record (`ns.dns.clusterset.local`); none when it listens on a wildcard address.
    pub ns_address: Option<IpAddr>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            ns_address: None,
        }
    }
}

/// An immutable view of every name the server answers for, built once per change of the
/// zone's services and shared by every query.
#[derive(Debug)]
pub struct Table {
    ttl: u32,
    apexes: Vec<Apex>,
    nodes: HashMap<Name, Node>,
    services: usize,
}

/// A domain the server is authoritative for.
#[derive(Debug)]
struct Apex {
    name: Name,
    soa: SOA,
    ns: Name,
}

/// The records of one name. A node without records is an empty non-terminal
/// (`demo.svc.clusterset.local`): it exists, so it is NODATA, not NXDOMAIN (RFC 8020).
#[derive(Debug, Default)]
struct Node {
    addresses: BTreeSet<IpAddr>,
    srv: Vec<SRV>,
    /// Index into [`Table::apexes`] when this name is an apex (SOA and NS live here).
    apex: Option<usize>,
}

// === impl Table ===

impl Table {
    /// Builds the table from the zone's compiled outbound services. `serial` becomes the SOA
    /// serial (the server increases it with every rebuild). Services without a valid VIP, or
    /// whose names are not DNS labels, are left out: no sidecar listens for them either.
    pub fn build(services: &[pb::OutboundService], settings: &DnsSettings, serial: u32) -> Self {
        let ttl = u32::try_from(settings.ttl.as_secs()).unwrap_or(u32::MAX);
        let mut table = Self {
            ttl,
            apexes: Vec::new(),
            nodes: HashMap::new(),
            services: 0,
        };
        for domain in [CLUSTERSET_DOMAIN, MESH_DOMAIN] {
            table.add_apex(domain, settings, serial);
        }
        for service in services {
            if table.add_service(service) {
                table.services += 1;
            }
        }
        table
    }

    /// How many services have names in the table.
    pub fn services(&self) -> usize {
        self.services
    }

    /// How many names exist (records and empty non-terminals).
    pub fn names(&self) -> usize {
        self.nodes.len()
    }

    fn add_apex(&mut self, domain: &str, settings: &DnsSettings, serial: u32) {
        let (Ok(name), Ok(ns), Ok(hostmaster)) = (
            Name::from_ascii(domain),
            Name::from_ascii(format!("ns.dns.{domain}")),
            Name::from_ascii(format!("hostmaster.{domain}")),
        ) else {
            return;
        };
        let soa = SOA::new(
            ns.clone(),
            hostmaster,
            serial,
            // Refresh, retry, expire: for secondaries, which this server has none of.
            7200,
            1800,
            86_400,
            self.ttl,
        );
        let index = self.apexes.len();
        self.apexes.push(Apex {
            name: name.clone(),
            soa,
            ns: ns.clone(),
        });
        self.insert(&name).apex = Some(index);
        let glue = self.insert(&ns);
        glue.addresses.extend(settings.ns_address);
    }

    /// Adds a service's names; false when it has none (no VIP, or names that are not labels).
    fn add_service(&mut self, service: &pb::OutboundService) -> bool {
        let Some(sref) = &service.service else {
            return false;
        };
        if !is_label(&sref.name) || !is_label(&sref.namespace) {
            return false;
        }
        let Ok(vip) = service.vip.parse::<IpAddr>() else {
            return false;
        };
        let base = format!("{}.{}.svc", sref.name, sref.namespace);
        let mut added = self.add_name(&format!("{base}.{CLUSTERSET_DOMAIN}"), vip, service);
        for (zone, zone_vip) in &service.zone_vips {
            let Ok(zone_vip) = zone_vip.parse::<IpAddr>() else {
                continue;
            };
            if is_label(zone) {
                added |= self.add_name(&format!("{base}.{zone}.{MESH_DOMAIN}"), zone_vip, service);
            }
        }
        added
    }

    /// `name` A/AAAA `vip`, and an SRV name per named port.
    fn add_name(&mut self, name: &str, vip: IpAddr, service: &pb::OutboundService) -> bool {
        let Ok(target) = Name::from_ascii(name) else {
            return false;
        };
        self.insert(&target).addresses.insert(vip);
        for port in &service.ports {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            if number == 0 || !is_label(&port.name) {
                continue;
            }
            // Every protocol a sidecar proxies (TCP, HTTP/1, HTTP/2, gRPC) runs over TCP.
            let Ok(srv_name) = Name::from_ascii(format!("_{}._tcp.{name}", port.name)) else {
                continue;
            };
            let srv = SRV::new(0, SRV_WEIGHT, number, target.clone());
            let node = self.insert(&srv_name);
            if !node.srv.contains(&srv) {
                node.srv.push(srv);
            }
        }
        true
    }

    /// The node of `name`, created with every ancestor up to its apex as empty non-terminals.
    fn insert(&mut self, name: &Name) -> &mut Node {
        let name = name.to_lowercase();
        let mut ancestor = name.base_name();
        while self.apex_of(&ancestor).is_some() && !self.nodes.contains_key(&ancestor) {
            self.nodes.insert(ancestor.clone(), Node::default());
            ancestor = ancestor.base_name();
        }
        self.nodes.entry(name).or_default()
    }

    /// The apex whose domain holds `name`, if any.
    fn apex_of(&self, name: &Name) -> Option<&Apex> {
        self.apexes.iter().find(|apex| apex.name.zone_of(name))
    }

    fn soa_record(&self, apex: &Apex) -> Record {
        Record::from_rdata(apex.name.clone(), self.ttl, RData::SOA(apex.soa.clone()))
    }
}

/// A DNS label as services, namespaces, zones and port names use them: 1–63 of letters,
/// digits and `-`, not starting or ending with `-`.
/// Letters of either case, unlike [`strait_proto::names::is_dns_label`]: DNS names in queries
/// are case-insensitive.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= strait_proto::names::MAX_DNS_LABEL
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

// === answering ===

/// The answer to one request message. Never fails: every problem the message has becomes
/// an rcode (FORMERR for a malformed question, NOTIMP for an opcode other than QUERY,
/// REFUSED for a name outside our domains or a class other than IN).
pub fn answer(table: &Table, request: &Message) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.recursion_available = false;
    if request.edns.is_some() {
        response.set_edns(our_edns());
    }
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());

    let name = query.name();
    let qtype = query.query_type();
    let apex = match table.apex_of(name) {
        Some(apex) if query.query_class() == DNSClass::IN => apex,
        // Not ours, or not the Internet class: we never resolve for anyone.
        _ => {
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        }
    };
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        // No zone transfers: the data is the federation's, not a zone file's.
        response.metadata.response_code = ResponseCode::Refused;
        return response;
    }
    response.metadata.authoritative = true;
    let Some(node) = table.nodes.get(name) else {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(table.soa_record(apex));
        return response;
    };

    let ttl = table.ttl;
    // Owner names as asked: a resolver matches the answer against its question.
    let owner = name.clone();
    let any = qtype == RecordType::ANY;
    for address in &node.addresses {
        let rdata = match address {
            IpAddr::V4(v4) if any || qtype == RecordType::A => RData::A(A(*v4)),
            IpAddr::V6(v6) if any || qtype == RecordType::AAAA => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(owner.clone(), ttl, rdata));
    }
    if any || qtype == RecordType::SRV {
        for srv in &node.srv {
            response.add_answer(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(srv.clone()),
            ));
            add_addresses(table, &mut response, &srv.target);
        }
    }
    if let Some(index) = node.apex
        && let Some(apex) = table.apexes.get(index)
    {
        if any || qtype == RecordType::SOA {
            response.add_answer(table.soa_record(apex).with_owner(owner.clone()));
        }
        if any || qtype == RecordType::NS {
            let ns = RData::NS(NS(apex.ns.clone()));
            response.add_answer(Record::from_rdata(owner.clone(), ttl, ns));
            add_addresses(table, &mut response, &apex.ns);
        }
    }
    if response.answers.is_empty() {
        // NODATA: the name exists, the type does not.
        response.add_authority(table.soa_record(apex));
    }
    response
}

/// The addresses of `target` (an SRV target, an NS name) in the additional section, so a
/// client needs no second query.
fn add_addresses(table: &Table, response: &mut Message, target: &Name) {
    let Some(node) = table.nodes.get(target) else {
        return;
    };
    for address in &node.addresses {
        let rdata = match address {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        let record = Record::from_rdata(target.clone(), table.ttl, rdata);
        if !response.additionals.contains(&record) {
            response.add_additional(record);
        }
    }
}

fn our_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP_PAYLOAD);
    edns
}

trait WithOwner {
    fn with_owner(self, owner: Name) -> Self;
}

impl WithOwner for Record {
    fn with_owner(mut self, owner: Name) -> Self {
        self.name = owner;
        self
    }
}

/// Which transport a packet came over: it bounds the size of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What [`respond`] did with a packet, for the reply and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The bytes to send back; `None` drops the packet (no readable header, or a response
    /// rather than a query: answering those would let anyone bounce traffic off us).
    pub bytes: Option<Vec<u8>>,
    /// The question's type when there was a readable question.
    pub query_type: Option<RecordType>,
    /// The rcode sent, when something was sent.
    pub rcode: Option<ResponseCode>,
}

impl Reply {
    fn dropped() -> Self {
        Self {
            bytes: None,
            query_type: None,
            rcode: None,
        }
    }
}

/// Parses a packet, answers it from `table` and encodes the reply: the whole request path,
/// which never panics on any input. FORMERR where a header is readable but the rest is not;
/// dropped when not even the header is. A UDP reply too large for the client is truncated
/// (TC=1) so that it retries over TCP.
pub fn respond(table: &Table, packet: &[u8], transport: Transport) -> Reply {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return Reply::dropped();
    };
    if header.metadata.message_type == MessageType::Response {
        return Reply::dropped();
    }
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(_) => {
            let mut response =
                Message::new(header.metadata.id, MessageType::Response, OpCode::Query);
            response.metadata = Metadata::response_from_request(&header.metadata);
            response.metadata.response_code = ResponseCode::FormErr;
            return encode(response, None, CLASSIC_UDP_PAYLOAD, transport);
        }
    };
    let limit = match &request.edns {
        Some(edns) => usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        None => CLASSIC_UDP_PAYLOAD,
    };
    let query_type = request.queries.first().map(|q| q.query_type());
    encode(answer(table, &request), query_type, limit, transport)
}

fn encode(
    response: Message,
    query_type: Option<RecordType>,
    udp_limit: usize,
    transport: Transport,
) -> Reply {
    let encoded = match response.to_vec() {
        Ok(bytes) if transport == Transport::Tcp || bytes.len() <= udp_limit => Ok(bytes),
        Ok(_) => response.truncate().to_vec(),
        Err(err) => Err(err),
    };
    let (bytes, rcode) = match encoded {
        Ok(bytes) => (Some(bytes), Some(response.metadata.response_code)),
        Err(err) => {
            tracing::warn!(%err, "a DNS response could not be encoded");
            let mut failed =
                Message::new(response.metadata.id, MessageType::Response, OpCode::Query);
            failed.metadata = response.metadata;
            failed.metadata.response_code = ResponseCode::ServFail;
            failed.add_queries(response.queries.iter().cloned());
            let bytes = failed.to_vec().ok();
            let rcode = bytes.as_ref().map(|_| ResponseCode::ServFail);
            (bytes, rcode)
        }
    };
    Reply {
        bytes,
        query_type,
        rcode,
    }
}

#[cfg(test)]
mod tests;
