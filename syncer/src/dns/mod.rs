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
