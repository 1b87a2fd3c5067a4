//! The virtual cluster's DNS records, computed on demand from a [`DnsSource`] (pure: no I/O, no
//! async, no clock).
//!
//! Implements the [Kubernetes DNS-Based Service Discovery specification][spec] (schema 1.1.0):
//!
//! | name (under `<zone>`)                      | records                                          |
//! |--------------------------------------------|--------------------------------------------------|
//! | `<zone>` (apex)                            | `SOA`                                            |
//! | `dns-version`                              | `TXT "1.1.0"`                                    |
//! | `<svc>.<ns>.svc`                           | `A`/`AAAA`: cluster IPs, or for a headless Service its ready endpoint IPs; `CNAME` for ExternalName |
//! | `<hostname>.<svc>.<ns>.svc`                | `A`/`AAAA` of the ready endpoint(s) with that hostname |
//! | `_<port>._<proto>.<svc>.<ns>.svc`          | `SRV` per named port (per ready endpoint when headless) |
//! | `<a-b-c-d>.<ns>.pod`                       | `A` (dashed IPv4; dashed IPv6 gives `AAAA`)      |
//! | `<d>.<c>.<b>.<a>.in-addr.arpa` / `ip6.arpa`| `PTR` to the Service / endpoint owning the IP ([`DnsSource::owners_of`]) |
//!
//! Everything else under `<zone>` is `NXDOMAIN`, except the empty non-terminals (`svc`, `pod`,
//! `<ns>.svc`, `<ns>.pod`, `_<proto>.<svc>.<ns>.svc`) which exist without records (NODATA).
//! Names outside `<zone>` (and reverse names of IPs nobody here owns) are [`Answer::Forward`].
//! Name matching is case-insensitive; answers carry the owner name exactly as asked.
//!
//! An endpoint without a `hostname` is named by its dashed IP (`10-0-0-7`, `fd00--7`), the
//! "system-assigned identifier" the spec asks for, so headless `SRV` targets always resolve.
//!
//! [spec]: https://github.com/kubernetes/dns/blob/master/docs/specification.md

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The schema version served in the `dns-version.<zone>` TXT record.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// What the catalog knows about one virtual Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// The Service's cluster IPs (one per family); empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.clusterIP: None`: the Service name resolves to its ready endpoints instead.
    pub headless: bool,
    /// `spec.type: ExternalName`: the Service name is a CNAME to this name.
    pub external_name: Option<String>,
    pub ports: Vec<PortEntry>,
}

/// One Service port. Only named ports get `SRV` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// May be empty (unnamed port).
    pub name: String,
    /// `"TCP"`, `"UDP"` or `"SCTP"` (compared case-insensitively).
    pub protocol: String,
    pub port: u16,
}

/// A ready endpoint of a Service (for the `A`/`AAAA` records of a headless Service and of
/// `<hostname>.<svc>.<ns>.svc.<zone>`). An endpoint with several IPs is several entries with
/// the same hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    /// The EndpointSlice endpoint's `hostname` (StatefulSet pods, or pods with
    /// `hostname`+`subdomain`).
    pub hostname: Option<String>,
}

/// Who owns an IP, for `PTR` answers (see [`DnsSource::owners_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpOwner {
    /// The IP is a cluster IP of this Service: `PTR <name>.<namespace>.svc.<zone>`.
    Service { namespace: String, name: String },
    /// The IP is a ready endpoint of this (headless) Service:
    /// `PTR <hostname or dashed IP>.<service>.<namespace>.svc.<zone>`.
    Endpoint {
        namespace: String,
        service: String,
        hostname: Option<String>,
    },
}

/// The data source (implemented by the syncer over its watch caches; by a map in tests).
///
/// Lookups get the names in lowercase (DNS is case-insensitive; Kubernetes names are lowercase).
pub trait DnsSource: Send + Sync {
    /// The Service `namespace/name`, if it exists.
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceEntry>;

    /// The ready endpoints of Service `namespace/service` (empty when none or unknown).
    fn ready_endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointEntry>;

    /// Services whose cluster IP is `ip`, and headless Services with a ready endpoint at `ip`
    /// (spec 2.3.3 / 2.4.3 `PTR` records). The default knows nobody: reverse queries are then
    /// forwarded upstream.
    fn owners_of(&self, ip: IpAddr) -> Vec<IpOwner> {
        let _ = ip;
        Vec::new()
    }
}

/// The catalog's verdict for one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Answer records (authoritative). A `CNAME` (ExternalName Service) is returned alone; the
    /// server chases it.
    Records(Vec<Record>),
    /// The name does not exist in the cluster domain.
    NxDomain,
    /// The name exists but has no record of the asked type.
    NoData,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Parses a cluster domain (`cluster.local`, `cluster.local.`, any case) into the lowercase,
/// fully-qualified zone name. `None` for invalid names and for the root (which would swallow
/// every query).
pub fn zone_name(cluster_domain: &str) -> Option<Name> {
    let mut name = Name::from_ascii(cluster_domain.trim()).ok()?;
    if name.is_root() || name.iter().next().is_none() {
        return None;
    }
    name.set_fqdn(true);
    Some(name.to_lowercase())
}

/// The `SOA` record of the zone (`ns.dns.<zone>. hostmaster.<zone>.`, negative TTL = `ttl`),
/// served at the apex and in the authority section of negative answers.
pub fn soa_record(zone: &Name, ttl: u32) -> Option<Record> {
    let mname = child(zone, &["ns", "dns"])?;
    let rname = child(zone, &["hostmaster"])?;
    let soa = SOA::new(mname, rname, 1, 7200, 1800, 86400, ttl);
    Some(Record::from_rdata(zone.clone(), ttl, RData::SOA(soa)))
}

/// Answers one question about `name` from `src`, for the cluster domain `cluster_domain`.
/// An invalid `cluster_domain` makes everything [`Answer::Forward`].
pub fn answer(name: &Name, qtype: RecordType, cluster_domain: &str, src: &dyn DnsSource, ttl: u32) -> Answer {
    match zone_name(cluster_domain) {
        Some(zone) => answer_in_zone(name, qtype, &zone, src, ttl),
        None => Answer::Forward,
    }
}

/// [`answer`] with the zone already parsed by [`zone_name`].
pub fn answer_in_zone(name: &Name, qtype: RecordType, zone: &Name, src: &dyn DnsSource, ttl: u32) -> Answer {
    let q = Question {
        owner: name,
        qtype,
        zone,
        src,
        ttl,
    };
    if !zone.zone_of(name) {
        return q.reverse();
    }
    let total = name.iter().count();
    let in_zone = zone.iter().count();
    let labels: Vec<String> = name
        .iter()
        .take(total.saturating_sub(in_zone))
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    match labels.as_slice() {
        [] => q.apex(),
        ["dns-version"] => q.dns_version(),
        ["svc" | "pod"] | [_, "svc" | "pod"] => Answer::NoData,
        [svc, ns, "svc"] => q.service(ns, svc),
        [proto, svc, ns, "svc"] if proto.starts_with('_') => q.proto_node(ns, svc, proto),
        [host, svc, ns, "svc"] => q.endpoint(ns, svc, host),
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            q.srv(ns, svc, port, proto)
        }
        [ip, _ns, "pod"] => match parse_dashed_ip(ip) {
            Some(ip) => q.addresses(&[ip]),
            None => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

/// The label naming an endpoint: its hostname, else its dashed IP.
pub fn endpoint_label(endpoint: &EndpointEntry) -> String {
    match endpoint.hostname.as_deref().map(str::trim) {
        Some(hostname) if !hostname.is_empty() => hostname.to_ascii_lowercase(),
        _ => dashed_ip(endpoint.ip),
    }
}

/// `10.0.0.7` -> `10-0-0-7`; `fd00::7` -> `fd00--7`.
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// Inverse of [`dashed_ip`] (IPv4 must have exactly four decimal parts).
fn parse_dashed_ip(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return label.replace('-', ".").parse::<Ipv4Addr>().ok().map(IpAddr::V4);
    }
    label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// `labels` (most specific first) prepended to `zone`.
fn child(zone: &Name, labels: &[&str]) -> Option<Name> {
    Name::from_labels(labels.iter().map(|l| l.as_bytes()))
        .ok()?
        .append_domain(zone)
        .ok()
}

/// A name from Kubernetes data (`spec.externalName`), fully qualified.
fn absolute(name: &str) -> Option<Name> {
    let mut name = Name::from_ascii(name.trim()).ok()?;
    name.iter().next()?; // not the root
    name.set_fqdn(true);
    Some(name)
}

fn wants(qtype: RecordType, rtype: RecordType) -> bool {
    qtype == rtype || qtype == RecordType::ANY
}

/// One question being answered.
struct Question<'a> {
    owner: &'a Name,
    qtype: RecordType,
    zone: &'a Name,
    src: &'a dyn DnsSource,
    ttl: u32,
}

impl Question<'_> {
    fn record(&self, data: RData) -> Record {
        Record::from_rdata(self.owner.clone(), self.ttl, data)
    }

    fn records(&self, records: Vec<Record>) -> Answer {
        if records.is_empty() {
            Answer::NoData
        } else {
            Answer::Records(records)
        }
    }

    fn apex(&self) -> Answer {
        if !wants(self.qtype, RecordType::SOA) {
            return Answer::NoData;
        }
        match soa_record(self.zone, self.ttl) {
            Some(mut soa) => {
                soa.name = self.owner.clone();
                Answer::Records(vec![soa])
            }
            None => Answer::NoData,
        }
    }

    fn dns_version(&self) -> Answer {
        if !wants(self.qtype, RecordType::TXT) {
            return Answer::NoData;
        }
        Answer::Records(vec![
            self.record(RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()]))),
        ])
    }

    /// `A`/`AAAA` (by family) for `ips`; NODATA when none of the asked family.
    fn addresses(&self, ips: &[IpAddr]) -> Answer {
        let mut seen = Vec::with_capacity(ips.len());
        for ip in ips {
            if !seen.contains(ip) {
                seen.push(*ip);
            }
        }
        let records = seen
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) if wants(self.qtype, RecordType::A) => Some(RData::A(A(v4))),
                IpAddr::V6(v6) if wants(self.qtype, RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                _ => None,
            })
            .map(|data| self.record(data))
            .collect();
        self.records(records)
    }

    /// `<svc>.<ns>.svc.<zone>`.
    fn service(&self, ns: &str, svc: &str) -> Answer {
        let Some(service) = self.src.service(ns, svc) else {
            return Answer::NxDomain;
        };
        if let Some(external) = &service.external_name {
            // A CNAME owns its name for every type (RFC 1034 3.6.2).
            return match absolute(external) {
                Some(target) => Answer::Records(vec![self.record(RData::CNAME(CNAME(target)))]),
                None => Answer::NoData,
            };
        }
        if service.headless {
            let ips: Vec<IpAddr> = self.src.ready_endpoints(ns, svc).iter().map(|e| e.ip).collect();
            if ips.is_empty() {
                // Spec 2.4.1: no ready endpoints -> NXDOMAIN.
                return Answer::NxDomain;
            }
            return self.addresses(&ips);
        }
        self.addresses(&service.cluster_ips)
    }

    /// `<hostname>.<svc>.<ns>.svc.<zone>`.
    fn endpoint(&self, ns: &str, svc: &str, host: &str) -> Answer {
        let Some(service) = self.src.service(ns, svc) else {
            return Answer::NxDomain;
        };
        if service.external_name.is_some() {
            return Answer::NxDomain;
        }
        let ips: Vec<IpAddr> = self
            .src
            .ready_endpoints(ns, svc)
            .iter()
            .filter(|e| endpoint_label(e) == host)
            .map(|e| e.ip)
            .collect();
        if ips.is_empty() {
            return Answer::NxDomain;
        }
        self.addresses(&ips)
    }

    /// `_<proto>.<svc>.<ns>.svc.<zone>`: exists (without records) when a named port uses it.
    fn proto_node(&self, ns: &str, svc: &str, proto: &str) -> Answer {
        let proto = proto.trim_start_matches('_');
        match self.src.service(ns, svc) {
            Some(service)
                if service
                    .ports
                    .iter()
                    .any(|p| !p.name.is_empty() && p.protocol.eq_ignore_ascii_case(proto)) =>
            {
                Answer::NoData
            }
            _ => Answer::NxDomain,
        }
    }

    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>`.
    fn srv(&self, ns: &str, svc: &str, port: &str, proto: &str) -> Answer {
        let Some(service) = self.src.service(ns, svc) else {
            return Answer::NxDomain;
        };
        let (port, proto) = (port.trim_start_matches('_'), proto.trim_start_matches('_'));
        let numbers: Vec<u16> = service
            .ports
            .iter()
            .filter(|p| {
                !p.name.is_empty()
                    && p.name.eq_ignore_ascii_case(port)
                    && p.protocol.eq_ignore_ascii_case(proto)
            })
            .map(|p| p.port)
            .collect();
        if numbers.is_empty() {
            return Answer::NxDomain;
        }
        let targets: Vec<Name> = if let Some(external) = &service.external_name {
            absolute(external).into_iter().collect()
        } else if service.headless {
            let mut labels: Vec<String> = Vec::new();
            for endpoint in self.src.ready_endpoints(ns, svc) {
                let label = endpoint_label(&endpoint);
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
            labels
                .iter()
                .filter_map(|l| child(self.zone, &[l, svc, ns, "svc"]))
                .collect()
        } else {
            child(self.zone, &[svc, ns, "svc"]).into_iter().collect()
        };
        if targets.is_empty() {
            return Answer::NxDomain;
        }
        if !wants(self.qtype, RecordType::SRV) {
            return Answer::NoData;
        }
        let count = numbers.len() * targets.len();
        let weight = u16::try_from(100 / count).unwrap_or(1).max(1);
        let records = numbers
            .iter()
            .flat_map(|number| {
                targets
                    .iter()
                    .map(move |target| SRV::new(0, weight, *number, target.clone()))
            })
            .map(|srv| self.record(RData::SRV(srv)))
            .collect();
        self.records(records)
    }

    /// `<reversed ip>.in-addr.arpa.` / `ip6.arpa.` of an IP we know; everything else is forwarded.
    fn reverse(&self) -> Answer {
        let Ok(net) = self.owner.parse_arpa_name() else {
            return Answer::Forward;
        };
        let ip = net.addr();
        let full = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if net.prefix_len() != full {
            return Answer::Forward;
        }
        let owners = self.src.owners_of(ip);
        if owners.is_empty() {
            return Answer::Forward;
        }
        if !wants(self.qtype, RecordType::PTR) {
            return Answer::NoData;
        }
        let mut targets: Vec<Name> = Vec::new();
        for owner in owners {
            let target = match owner {
                IpOwner::Service { namespace, name } => child(
                    self.zone,
                    &[&name.to_ascii_lowercase(), &namespace.to_ascii_lowercase(), "svc"],
                ),
                IpOwner::Endpoint {
                    namespace,
                    service,
                    hostname,
                } => {
                    let label = endpoint_label(&EndpointEntry { ip, hostname });
                    child(
                        self.zone,
                        &[
                            &label,
                            &service.to_ascii_lowercase(),
                            &namespace.to_ascii_lowercase(),
                            "svc",
                        ],
                    )
                }
            };
            if let Some(target) = target
                && !targets.contains(&target)
            {
                targets.push(target);
            }
        }
        let records = targets
            .into_iter()
            .map(|t| self.record(RData::PTR(PTR(t))))
            .collect();
        self.records(records)
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::dns::testing::MapSource;

    const ZONE: &str = "cluster.local";
    const TTL: u32 = 30;

    fn ask(qname: &str, qtype: RecordType) -> Answer {
        answer(&name(qname), qtype, ZONE, &MapSource::fixture(), TTL)
    }

    /// Case-preserving (`Name::from_str` would IDNA-lowercase).
    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// `10.0.0.1` -> `1.0.0.10.in-addr.arpa.` (and the nibble form for IPv6).
    fn arpa(ip: &str) -> String {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(v6) => {
                let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
                let mut out: String = hex.chars().rev().map(|c| format!("{c}.")).collect();
                out.push_str("ip6.arpa.");
                out
            }
        }
    }

    /// The answer's records as `"<owner> <type> <rdata>"` strings, sorted.
    fn rendered(answer: Answer) -> Vec<String> {
        let Answer::Records(records) = answer else {
            panic!("expected records, got {answer:?}");
        };
        for record in &records {
            assert_eq!(record.ttl, TTL);
        }
        let mut out: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect();
        out.sort();
        out
    }

    #[rstest]
    #[case::cluster_ip_a("web.default.svc.cluster.local.", RecordType::A, &["web.default.svc.cluster.local. A 10.96.0.10"])]
    #[case::kubernetes("kubernetes.default.svc.cluster.local.", RecordType::A, &["kubernetes.default.svc.cluster.local. A 10.96.0.1"])]
    #[case::dual_stack_a("dual.default.svc.cluster.local.", RecordType::A, &["dual.default.svc.cluster.local. A 10.96.0.20"])]
    #[case::dual_stack_aaaa("dual.default.svc.cluster.local.", RecordType::AAAA, &["dual.default.svc.cluster.local. AAAA fd00:96::20"])]
    #[case::any("dual.default.svc.cluster.local.", RecordType::ANY, &["dual.default.svc.cluster.local. A 10.96.0.20", "dual.default.svc.cluster.local. AAAA fd00:96::20"])]
    #[case::headless_a("db.data.svc.cluster.local.", RecordType::A, &["db.data.svc.cluster.local. A 10.244.1.5", "db.data.svc.cluster.local. A 10.244.2.6", "db.data.svc.cluster.local. A 10.244.3.7"])]
    #[case::headless_aaaa("db.data.svc.cluster.local.", RecordType::AAAA, &["db.data.svc.cluster.local. AAAA fd00:244::5"])]
    #[case::statefulset_pod("db-0.db.data.svc.cluster.local.", RecordType::A, &["db-0.db.data.svc.cluster.local. A 10.244.1.5"])]
    #[case::statefulset_pod_v6("db-0.db.data.svc.cluster.local.", RecordType::AAAA, &["db-0.db.data.svc.cluster.local. AAAA fd00:244::5"])]
    #[case::hostless_endpoint("10-244-3-7.db.data.svc.cluster.local.", RecordType::A, &["10-244-3-7.db.data.svc.cluster.local. A 10.244.3.7"])]
    #[case::external_name_a("ext.default.svc.cluster.local.", RecordType::A, &["ext.default.svc.cluster.local. CNAME www.example.com."])]
    #[case::external_name_cname("ext.default.svc.cluster.local.", RecordType::CNAME, &["ext.default.svc.cluster.local. CNAME www.example.com."])]
    #[case::external_name_txt("ext.default.svc.cluster.local.", RecordType::TXT, &["ext.default.svc.cluster.local. CNAME www.example.com."])]
    #[case::pod_v4("10-244-1-5.default.pod.cluster.local.", RecordType::A, &["10-244-1-5.default.pod.cluster.local. A 10.244.1.5"])]
    #[case::pod_v6("fd00-244--5.default.pod.cluster.local.", RecordType::AAAA, &["fd00-244--5.default.pod.cluster.local. AAAA fd00:244::5"])]
    #[case::dns_version("dns-version.cluster.local.", RecordType::TXT, &["dns-version.cluster.local. TXT 1.1.0"])]
    #[case::apex_soa("cluster.local.", RecordType::SOA, &["cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30"])]
    fn records(#[case] qname: &str, #[case] qtype: RecordType, #[case] expected: &[&str]) {
        assert_eq!(rendered(ask(qname, qtype)), expected);
    }

    #[rstest]
    #[case::cluster_ip("_http._tcp.web.default.svc.cluster.local.", &["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."])]
    #[case::udp_port("_dns._udp.web.default.svc.cluster.local.", &["_dns._udp.web.default.svc.cluster.local. SRV 0 100 53 web.default.svc.cluster.local."])]
    #[case::headless_per_endpoint("_pg._tcp.db.data.svc.cluster.local.", &[
        "_pg._tcp.db.data.svc.cluster.local. SRV 0 33 5432 10-244-3-7.db.data.svc.cluster.local.",
        "_pg._tcp.db.data.svc.cluster.local. SRV 0 33 5432 db-0.db.data.svc.cluster.local.",
        "_pg._tcp.db.data.svc.cluster.local. SRV 0 33 5432 db-1.db.data.svc.cluster.local.",
    ])]
    #[case::external_name("_https._tcp.ext.default.svc.cluster.local.", &["_https._tcp.ext.default.svc.cluster.local. SRV 0 100 443 www.example.com."])]
    #[case::kubernetes("_https._tcp.kubernetes.default.svc.cluster.local.", &["_https._tcp.kubernetes.default.svc.cluster.local. SRV 0 100 443 kubernetes.default.svc.cluster.local."])]
    fn srv(#[case] qname: &str, #[case] expected: &[&str]) {
        assert_eq!(rendered(ask(qname, RecordType::SRV)), expected);
    }

    #[rstest]
    #[case::unknown_service("nope.default.svc.cluster.local.", RecordType::A)]
    #[case::unknown_namespace("web.nope.svc.cluster.local.", RecordType::A)]
    #[case::headless_without_ready_endpoints("empty.data.svc.cluster.local.", RecordType::A)]
    #[case::unknown_hostname("db-9.db.data.svc.cluster.local.", RecordType::A)]
    #[case::hostname_of_external_name("x.ext.default.svc.cluster.local.", RecordType::A)]
    #[case::unnamed_port_has_no_srv("_._tcp.plain.default.svc.cluster.local.", RecordType::SRV)]
    #[case::unknown_port("_nope._tcp.web.default.svc.cluster.local.", RecordType::SRV)]
    #[case::wrong_protocol("_http._udp.web.default.svc.cluster.local.", RecordType::SRV)]
    #[case::srv_of_unknown_service("_http._tcp.nope.default.svc.cluster.local.", RecordType::SRV)]
    #[case::srv_headless_no_endpoints("_pg._tcp.empty.data.svc.cluster.local.", RecordType::SRV)]
    #[case::unknown_proto_node("_udp.db.data.svc.cluster.local.", RecordType::A)]
    #[case::search_path_noise("example.com.default.svc.cluster.local.", RecordType::A)]
    #[case::search_path_noise_2("web.default.svc.cluster.local.cluster.local.", RecordType::A)]
    #[case::one_label("foo.cluster.local.", RecordType::A)]
    #[case::two_labels("foo.bar.cluster.local.", RecordType::A)]
    #[case::bad_pod_ip("10-244-1.default.pod.cluster.local.", RecordType::A)]
    #[case::bad_pod_ip_octet("10-244-1-300.default.pod.cluster.local.", RecordType::A)]
    #[case::too_deep("a.b.c.d.e.f.svc.cluster.local.", RecordType::A)]
    fn nxdomain(#[case] qname: &str, #[case] qtype: RecordType) {
        assert_eq!(ask(qname, qtype), Answer::NxDomain);
    }

    #[rstest]
    #[case::apex_a("cluster.local.", RecordType::A)]
    #[case::svc_node("svc.cluster.local.", RecordType::A)]
    #[case::pod_node("pod.cluster.local.", RecordType::A)]
    #[case::namespace_node("default.svc.cluster.local.", RecordType::A)]
    #[case::namespace_node_any_ns("whatever.svc.cluster.local.", RecordType::AAAA)]
    #[case::namespace_pod_node("default.pod.cluster.local.", RecordType::A)]
    #[case::aaaa_of_ipv4_only_service("web.default.svc.cluster.local.", RecordType::AAAA)]
    #[case::txt_of_service("web.default.svc.cluster.local.", RecordType::TXT)]
    #[case::srv_at_service_name("web.default.svc.cluster.local.", RecordType::SRV)]
    #[case::mx_of_service("web.default.svc.cluster.local.", RecordType::MX)]
    #[case::aaaa_of_ipv4_headless_pod("db-1.db.data.svc.cluster.local.", RecordType::AAAA)]
    #[case::a_of_srv_name("_http._tcp.web.default.svc.cluster.local.", RecordType::A)]
    #[case::proto_node("_tcp.web.default.svc.cluster.local.", RecordType::SRV)]
    #[case::aaaa_of_v4_pod("10-244-1-5.default.pod.cluster.local.", RecordType::AAAA)]
    #[case::dns_version_a("dns-version.cluster.local.", RecordType::A)]
    #[case::service_without_cluster_ip("pending.default.svc.cluster.local.", RecordType::A)]
    #[case::external_name_invalid("badext.default.svc.cluster.local.", RecordType::A)]
    fn nodata(#[case] qname: &str, #[case] qtype: RecordType) {
        assert_eq!(ask(qname, qtype), Answer::NoData);
    }

    #[rstest]
    #[case::other_domain("example.com.")]
    #[case::root(".")]
    #[case::parent_of_zone("local.")]
    #[case::suffix_lookalike("web.default.svc.mycluster.local.")]
    #[case::unknown_reverse_ip("9.9.9.9.in-addr.arpa.")]
    #[case::partial_reverse_name("96.10.in-addr.arpa.")]
    #[case::host_cluster_domain("kube-dns.kube-system.svc.host.local.")]
    fn forwarded(#[case] qname: &str) {
        assert_eq!(ask(qname, RecordType::A), Answer::Forward);
        assert_eq!(ask(qname, RecordType::PTR), Answer::Forward);
    }

    #[rstest]
    #[case::service_ip("10.96.0.10", "web.default.svc.cluster.local.")]
    #[case::endpoint_with_hostname("10.244.1.5", "db-0.db.data.svc.cluster.local.")]
    #[case::endpoint_without_hostname("10.244.3.7", "10-244-3-7.db.data.svc.cluster.local.")]
    #[case::service_ipv6("fd00:96::20", "dual.default.svc.cluster.local.")]
    #[case::endpoint_ipv6("fd00:244::5", "db-0.db.data.svc.cluster.local.")]
    fn ptr(#[case] ip: &str, #[case] target: &str) {
        let qname = arpa(ip);
        assert_eq!(
            rendered(ask(&qname, RecordType::PTR)),
            [format!("{qname} PTR {target}")]
        );
        assert_eq!(ask(&qname, RecordType::A), Answer::NoData);
    }

    #[test]
    fn names_match_case_insensitively_and_answers_echo_the_question() {
        let records = rendered(ask("WeB.DeFault.SVC.Cluster.LOCAL.", RecordType::A));
        assert_eq!(records, ["WeB.DeFault.SVC.Cluster.LOCAL. A 10.96.0.10"]);
        let records = rendered(ask("_HTTP._TCP.web.default.svc.cluster.local.", RecordType::SRV));
        assert_eq!(
            records,
            ["_HTTP._TCP.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."]
        );
        let records = rendered(ask("DB-0.db.data.svc.cluster.local.", RecordType::A));
        assert_eq!(records, ["DB-0.db.data.svc.cluster.local. A 10.244.1.5"]);
        // The configured domain is case-insensitive too, with or without the trailing dot.
        let src = MapSource::fixture();
        for domain in ["Cluster.Local", "cluster.local.", " cluster.local "] {
            let got = answer(
                &name("web.default.svc.cluster.local."),
                RecordType::A,
                domain,
                &src,
                TTL,
            );
            assert!(
                matches!(got, Answer::Records(ref r) if r.len() == 1),
                "{domain}: {got:?}"
            );
        }
    }

    #[test]
    fn custom_multi_label_domain() {
        let src = MapSource::fixture();
        let got = answer(
            &name("web.default.svc.vc1.example.internal."),
            RecordType::A,
            "vc1.example.internal",
            &src,
            5,
        );
        assert!(
            matches!(got, Answer::Records(ref r) if r.len() == 1 && r[0].ttl == 5),
            "{got:?}"
        );
        let got = answer(
            &name("web.default.svc.cluster.local."),
            RecordType::A,
            "vc1.example.internal",
            &src,
            5,
        );
        assert_eq!(got, Answer::Forward);
    }

    #[rstest]
    #[case::empty("")]
    #[case::root(".")]
    #[case::bad_label("bad..domain")]
    fn invalid_domain_forwards_everything(#[case] domain: &str) {
        assert_eq!(zone_name(domain), None);
        let got = answer(
            &name("web.default.svc.cluster.local."),
            RecordType::A,
            domain,
            &MapSource::fixture(),
            TTL,
        );
        assert_eq!(got, Answer::Forward);
    }

    #[rstest]
    #[case::v4("10.244.1.5", "10-244-1-5")]
    #[case::v6("fd00:244::5", "fd00-244--5")]
    #[case::v6_loopback("::1", "--1")]
    fn dashed_ip_round_trips(#[case] ip: &str, #[case] dashed: &str) {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(dashed_ip(ip), dashed);
        assert_eq!(parse_dashed_ip(dashed), Some(ip));
    }

    #[test]
    fn srv_weights_stay_positive_with_many_endpoints() {
        let mut src = MapSource::default();
        src.add_service(MapSource::headless("many", "data", &[("peer", "TCP", 7000)]));
        for i in 0..150u8 {
            src.add_endpoint("data", "many", &format!("10.1.0.{i}"), Some(&format!("m-{i}")));
        }
        let Answer::Records(records) = answer(
            &name("_peer._tcp.many.data.svc.cluster.local."),
            RecordType::SRV,
            ZONE,
            &src,
            TTL,
        ) else {
            panic!("expected SRV records");
        };
        assert_eq!(records.len(), 150);
        assert!(
            records
                .iter()
                .all(|r| matches!(&r.data, RData::SRV(s) if s.weight == 1))
        );
    }

    #[test]
    fn soa_record_uses_the_ttl_as_negative_ttl() {
        let zone = zone_name("cluster.local").unwrap();
        let soa = soa_record(&zone, 7).unwrap();
        assert_eq!(soa.name, zone);
        let RData::SOA(data) = &soa.data else {
            panic!("not an SOA")
        };
        assert_eq!(data.minimum, 7);
        assert_eq!(data.mname, name("ns.dns.cluster.local."));
    }
}
