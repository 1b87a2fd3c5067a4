//! An in-memory [`DnsSource`] for tests (and a reference for what the syncer's implementation
//! over its watch caches must return).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::catalog::{DnsSource, EndpointEntry, IpOwner, PortEntry, ServiceEntry};

#[derive(Debug, Default, Clone)]
pub(crate) struct MapSource {
    services: BTreeMap<(String, String), ServiceEntry>,
    endpoints: BTreeMap<(String, String), Vec<EndpointEntry>>,
}

fn ports(ports: &[(&str, &str, u16)]) -> Vec<PortEntry> {
    ports
        .iter()
        .map(|(name, protocol, port)| PortEntry {
            name: (*name).to_owned(),
            protocol: (*protocol).to_owned(),
            port: *port,
        })
        .collect()
}

impl MapSource {
    pub(crate) fn cluster_ip(name: &str, ns: &str, ips: &[&str], p: &[(&str, &str, u16)]) -> ServiceEntry {
        ServiceEntry {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            cluster_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            headless: false,
            external_name: None,
            ports: ports(p),
        }
    }

    pub(crate) fn headless(name: &str, ns: &str, p: &[(&str, &str, u16)]) -> ServiceEntry {
        ServiceEntry {
            headless: true,
            ..Self::cluster_ip(name, ns, &[], p)
        }
    }

    pub(crate) fn external(name: &str, ns: &str, target: &str, p: &[(&str, &str, u16)]) -> ServiceEntry {
        ServiceEntry {
            external_name: Some(target.to_owned()),
            ..Self::cluster_ip(name, ns, &[], p)
        }
    }

    pub(crate) fn add_service(&mut self, service: ServiceEntry) {
        self.services
            .insert((service.namespace.clone(), service.name.clone()), service);
    }

    pub(crate) fn add_endpoint(&mut self, ns: &str, service: &str, ip: &str, hostname: Option<&str>) {
        self.endpoints
            .entry((ns.to_owned(), service.to_owned()))
            .or_default()
            .push(EndpointEntry {
                ip: ip.parse().unwrap(),
                hostname: hostname.map(str::to_owned),
            });
    }

    /// The services used across the DNS tests.
    pub(crate) fn fixture() -> Self {
        let mut src = Self::default();
        src.add_service(Self::cluster_ip(
            "kubernetes",
            "default",
            &["10.96.0.1"],
            &[("https", "TCP", 443)],
        ));
        src.add_service(Self::cluster_ip(
            "web",
            "default",
            &["10.96.0.10"],
            &[("http", "TCP", 80), ("dns", "UDP", 53)],
        ));
        src.add_service(Self::cluster_ip(
            "dual",
            "default",
            &["10.96.0.20", "fd00:96::20"],
            &[("http", "TCP", 80)],
        ));
        src.add_service(Self::cluster_ip(
            "plain",
            "default",
            &["10.96.0.30"],
            &[("", "TCP", 8080)],
        ));
        src.add_service(Self::cluster_ip(
            "pending",
            "default",
            &[],
            &[("http", "TCP", 80)],
        ));
        src.add_service(Self::external(
            "ext",
            "default",
            "www.example.com",
            &[("https", "TCP", 443)],
        ));
        src.add_service(Self::external("badext", "default", "bad..name", &[]));
        src.add_service(Self::headless("db", "data", &[("pg", "TCP", 5432)]));
        src.add_endpoint("data", "db", "10.244.1.5", Some("db-0"));
        src.add_endpoint("data", "db", "fd00:244::5", Some("db-0"));
        src.add_endpoint("data", "db", "10.244.2.6", Some("db-1"));
        src.add_endpoint("data", "db", "10.244.3.7", None);
        src.add_service(Self::headless("empty", "data", &[("pg", "TCP", 5432)]));
        src
    }
}

impl DnsSource for MapSource {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceEntry> {
        self.services
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn ready_endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointEntry> {
        self.endpoints
            .get(&(namespace.to_owned(), service.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn owners_of(&self, ip: IpAddr) -> Vec<IpOwner> {
        let mut owners = Vec::new();
        for service in self.services.values() {
            if service.cluster_ips.contains(&ip) {
                owners.push(IpOwner::Service {
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                });
            }
            if service.headless {
                for endpoint in self.ready_endpoints(&service.namespace, &service.name) {
                    if endpoint.ip == ip {
                        owners.push(IpOwner::Endpoint {
                            namespace: service.namespace.clone(),
                            service: service.name.clone(),
                            hostname: endpoint.hostname,
                        });
                    }
                }
            }
        }
        owners
    }
}
