//! DNS served by the syncer itself (no CoreDNS pod in the virtual cluster).
//!
//! - [`catalog`]: pure rules: one question + a [`DnsSource`] (the syncer's watch caches) ->
//!   records / NXDOMAIN / NODATA / "forward", per the Kubernetes DNS specification.
//! - [`server`]: UDP+TCP listener (hickory-server) answering the cluster domain
//!   authoritatively from the catalog and forwarding every other name to the upstream
//!   resolvers (by default those of the syncer pod's own `/etc/resolv.conf`).
//!
//! ```ignore
//! let config = DnsConfig::new("0.0.0.0:1053".parse()?, "cluster.local");
//! let (addr, serve) = dns::bind(config, source, shutdown.cancelled_owned()).await?;
//! tokio::spawn(serve);
//! ```

pub mod catalog;
pub mod server;
pub mod source;
#[cfg(test)]
pub(crate) mod testing;

pub use catalog::{Answer, DnsSource, EndpointEntry, IpOwner, PortEntry, ServiceEntry, answer};
pub use server::{DEFAULT_TTL, DnsConfig, DnsError, bind};

use std::net::{IpAddr, SocketAddr};

use crate::naming::parse_dns_label;

/// Flags of the DNS server and of the DNS setup of synced pods.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// Nameserver synced pods use [default: the vcluster Service's ClusterIP, where the syncer
    /// answers DNS].
    #[arg(long, env = "VNEST_DNS_NAMESERVER")]
    pub dns_nameserver: Option<IpAddr>,

    /// The virtual cluster's DNS domain.
    #[arg(long, env = "VNEST_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Where the syncer answers DNS for the virtual cluster (UDP and TCP).
    #[arg(long, env = "VNEST_DNS_ADDR", default_value = "0.0.0.0:1053")]
    pub dns_addr: SocketAddr,

    /// Resolvers for names outside the cluster domain, comma-separated host:port
    /// [default: the nameservers of the pod's /etc/resolv.conf].
    #[arg(long, env = "VNEST_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,

    /// Host Service in front of the syncer's DNS port: its ClusterIP is the nameserver of synced
    /// pods and of the virtual kube-system/kube-dns Service [default: <service-name>-dns].
    #[arg(long, env = "VNEST_DNS_SERVICE_NAME", value_parser = parse_dns_label)]
    pub dns_service_name: Option<String>,
}

/// The validated DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Nameserver of synced pods; `None`: the DNS Service's ClusterIP, else the vcluster
    /// Service's.
    pub nameserver: Option<IpAddr>,
    /// The virtual cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// UDP and TCP listen address of the DNS server.
    pub listen: SocketAddr,
    /// Resolvers for names outside the cluster domain; empty = those of `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
    /// The host Service in front of the DNS port.
    pub service_name: String,
}

impl DnsArgs {
    /// The validated settings; `service_name` is the vcluster's host Service (`--service-name`).
    pub fn into_settings(self, service_name: &str) -> DnsSettings {
        let Self {
            dns_nameserver,
            cluster_domain,
            dns_addr,
            dns_upstream,
            dns_service_name,
        } = self;
        DnsSettings {
            nameserver: dns_nameserver,
            cluster_domain,
            listen: dns_addr,
            upstreams: dns_upstream,
            service_name: dns_service_name.unwrap_or_else(|| format!("{service_name}-dns")),
        }
    }
}
