//! The syncer's [`DnsSource`]: answers from the virtual Service and Endpoints watch caches
//! (no API request per query).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::runtime::reflector::{ObjectRef, Store};

use super::catalog::{DnsSource, EndpointEntry, IpOwner, PortEntry, ServiceEntry};

pub struct StoreSource {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
}

fn entry(s: &Service) -> Option<ServiceEntry> {
    let spec = s.spec.as_ref()?;
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .fold(Vec::new(), |mut v, ip| {
            if !v.contains(&ip) {
                v.push(ip);
            }
            v
        });
    Some(ServiceEntry {
        namespace: s.metadata.namespace.clone()?,
        name: s.metadata.name.clone()?,
        cluster_ips: if headless { Vec::new() } else { cluster_ips },
        headless,
        external_name: (spec.type_.as_deref() == Some("ExternalName"))
            .then(|| spec.external_name.clone())
            .flatten(),
        ports: spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortEntry {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port: u16::try_from(p.port).ok()?,
                })
            })
            .collect(),
    })
}

impl DnsSource for StoreSource {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceEntry> {
        self.services
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|s| entry(&s))
    }

    fn ready_endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointEntry> {
        self.endpoints
            .get(&ObjectRef::new(service).within(namespace))
            .map(|e| {
                e.subsets
                    .iter()
                    .flatten()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter_map(|a| {
                        Some(EndpointEntry {
                            ip: a.ip.parse().ok()?,
                            hostname: a.hostname.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn owners_of(&self, ip: IpAddr) -> Vec<IpOwner> {
        let text = ip.to_string();
        let mut owners: Vec<IpOwner> = self
            .services
            .state()
            .iter()
            .filter(|s| s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) == Some(text.as_str()))
            .filter_map(|s| {
                Some(IpOwner::Service {
                    namespace: s.metadata.namespace.clone()?,
                    name: s.metadata.name.clone()?,
                })
            })
            .collect();
        if owners.is_empty() {
            for e in self.endpoints.state() {
                let (Some(ns), Some(name)) = (e.metadata.namespace.clone(), e.metadata.name.clone()) else {
                    continue;
                };
                let headless = self
                    .services
                    .get(&ObjectRef::new(&name).within(&ns))
                    .is_some_and(|s| s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) == Some("None"));
                if !headless {
                    continue;
                }
                for a in e
                    .subsets
                    .iter()
                    .flatten()
                    .flat_map(|s| s.addresses.iter().flatten())
                {
                    if a.ip == text {
                        owners.push(IpOwner::Endpoint {
                            namespace: ns.clone(),
                            service: name.clone(),
                            hostname: a.hostname.clone(),
                        });
                    }
                }
            }
        }
        owners
    }
}
