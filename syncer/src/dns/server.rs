//! The DNS server: UDP and TCP on one address, answering the cluster domain from the
//! [`catalog`] (authoritative) and forwarding every other name to upstream resolvers
//! (hickory-resolver, with its cache). Recursion is advertised as available.
//!
//! Negative answers for the cluster domain carry its `SOA` (negative TTL = the record TTL), so
//! clients' search-path misses (`example.com.default.svc.cluster.local.`) are cached. A `CNAME`
//! (ExternalName Service) is chased in the catalog and then upstream, as stub resolvers expect
//! from a recursive server.
//!
//! Note: hickory-server logs one `info` line per request under the `hickory_server` target; run
//! with a filter such as `info,hickory_server=warn` to keep queries out of the logs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as ResolveError, NetError, NoRecords};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::debug;

use super::catalog::{self, Answer, DnsSource};

/// Record TTL (seconds) when none is configured; also the negative-caching TTL.
pub const DEFAULT_TTL: u32 = 30;

/// A TCP connection idle this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Longest CNAME chain followed (ExternalName -> ExternalName -> ... -> upstream).
const MAX_CNAME_CHAIN: usize = 8;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// Where and how to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP listen address; port 0 picks one free port for both.
    pub listen: SocketAddr,
    /// The virtual cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Resolvers for names outside the cluster domain; empty = the nameservers of this
    /// process's `/etc/resolv.conf` (the syncer pod's own upstream).
    pub upstreams: Vec<SocketAddr>,
    /// TTL of the records we answer (and of negative answers).
    pub ttl: u32,
}

impl DnsConfig {
    /// `listen` + `cluster_domain`, upstreams from `/etc/resolv.conf`, [`DEFAULT_TTL`].
    pub fn new(listen: SocketAddr, cluster_domain: impl Into<String>) -> Self {
        Self {
            listen,
            cluster_domain: cluster_domain.into(),
            upstreams: Vec::new(),
            ttl: DEFAULT_TTL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid cluster domain {0:?} for the DNS server")]
    InvalidDomain(String),
    #[error("binding the DNS {protocol} socket on {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the upstream DNS servers from /etc/resolv.conf: {source}")]
    SystemConfig {
        #[source]
        source: NetError,
    },
    #[error("building the upstream DNS resolver: {source}")]
    Resolver {
        #[source]
        source: NetError,
    },
    #[error("the DNS server on {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: NetError,
    },
}

/// Binds the UDP and TCP sockets now (errors say which address), and returns the bound address
/// (same for both) and a future that serves until `shutdown` completes (then stops gracefully
/// and returns `Ok`). The future errs only if a listener dies on its own.
pub async fn bind(
    config: DnsConfig,
    source: Arc<dyn DnsSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<(), DnsError>> + Send), DnsError> {
    let Some(zone) = catalog::zone_name(&config.cluster_domain) else {
        return Err(DnsError::InvalidDomain(config.cluster_domain));
    };
    let upstream = upstream_resolver(&config.upstreams)?;
    let (udp, tcp, addr) = bind_sockets(config.listen).await?;
    let handler = Handler {
        soa: catalog::soa_record(&zone, config.ttl),
        zone,
        ttl: config.ttl,
        source,
        upstream,
    };

    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let serve = async move {
        let result = tokio::select! {
            result = server.block_until_done() => result,
            () = shutdown => server.shutdown_gracefully().await,
        };
        result.map_err(|source| DnsError::Serve { addr, source })
    };
    Ok((addr, serve))
}

/// UDP then TCP on the same port (for port 0: the port UDP got, retrying if TCP's is taken).
async fn bind_sockets(listen: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let attempts = if listen.port() == 0 {
        EPHEMERAL_BIND_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen).await.map_err(|source| DnsError::Bind {
            protocol: "UDP",
            addr: listen,
            source,
        })?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            protocol: "UDP",
            addr: listen,
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, addr)),
            Err(source) if source.kind() == io::ErrorKind::AddrInUse && attempt < attempts => {
                debug!(%addr, "DNS port taken for TCP, trying another");
            }
            Err(source) => {
                return Err(DnsError::Bind {
                    protocol: "TCP",
                    addr,
                    source,
                });
            }
        }
    }
}

/// The forwarding resolver: explicit upstreams, or `/etc/resolv.conf`'s nameservers and
/// options. Never consults `/etc/hosts` and ignores search domains (questions are absolute).
fn upstream_resolver(upstreams: &[SocketAddr]) -> Result<TokioResolver, DnsError> {
    let (name_servers, mut options) = if upstreams.is_empty() {
        let (config, options) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|source| DnsError::SystemConfig { source })?;
        (config.name_servers().to_vec(), options)
    } else {
        let servers = upstreams
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        (servers, ResolverOpts::default())
    };
    options.use_hosts_file = ResolveHosts::Never;
    options.preserve_intermediates = true;
    let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|source| DnsError::Resolver { source })
}

/// The hickory [`RequestHandler`]: catalog first, upstream for the rest.
struct Handler {
    zone: Name,
    soa: Option<Record>,
    ttl: u32,
    source: Arc<dyn DnsSource>,
    upstream: TokioResolver,
}

/// The sections and flags of one response.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Reply {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }
}

impl Handler {
    /// Negative authoritative answer (NXDOMAIN or NODATA) with the zone's SOA.
    fn negative(&self, code: ResponseCode) -> Reply {
        Reply {
            code,
            authoritative: true,
            answers: Vec::new(),
            authorities: self.soa.iter().cloned().collect(),
        }
    }

    async fn resolve(&self, name: &Name, qtype: RecordType) -> Reply {
        match catalog::answer_in_zone(name, qtype, &self.zone, self.source.as_ref(), self.ttl) {
            Answer::Records(answers) => {
                let mut reply = Reply {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers,
                    authorities: Vec::new(),
                };
                self.chase_cname(&mut reply, qtype).await;
                reply
            }
            Answer::NxDomain => self.negative(ResponseCode::NXDomain),
            Answer::NoData => self.negative(ResponseCode::NoError),
            Answer::Forward => self.forward(name, qtype).await,
        }
    }

    /// Follows a trailing CNAME: inside the zone through the catalog, outside through the
    /// upstream (which follows the rest of the chain itself).
    async fn chase_cname(&self, reply: &mut Reply, qtype: RecordType) {
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
            return;
        }
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(target) = reply.answers.last().and_then(|r| match &r.data {
                RData::CNAME(cname) => Some(cname.0.clone()),
                _ => None,
            }) else {
                return;
            };
            if reply.answers.iter().any(|r| r.name == target) {
                return; // a loop
            }
            match catalog::answer_in_zone(&target, qtype, &self.zone, self.source.as_ref(), self.ttl) {
                Answer::Records(more) => reply.answers.extend(more),
                Answer::NxDomain => {
                    reply.code = ResponseCode::NXDomain;
                    reply.authorities = self.soa.iter().cloned().collect();
                    return;
                }
                Answer::NoData => {
                    reply.authorities = self.soa.iter().cloned().collect();
                    return;
                }
                Answer::Forward => {
                    let upstream = self.forward(&target, qtype).await;
                    reply.answers.extend(upstream.answers);
                    reply.authorities = upstream.authorities;
                    reply.code = upstream.code;
                    return;
                }
            }
        }
    }

    async fn forward(&self, name: &Name, qtype: RecordType) -> Reply {
        match self.upstream.lookup(name.clone(), qtype).await {
            Ok(lookup) => Reply {
                code: ResponseCode::NoError,
                authoritative: false,
                answers: lookup.answers().to_vec(),
                authorities: Vec::new(),
            },
            Err(NetError::Dns(ResolveError::NoRecordsFound(NoRecords {
                response_code, soa, ..
            }))) => Reply {
                code: response_code,
                authoritative: false,
                answers: Vec::new(),
                authorities: soa.map(|soa| soa.into_record_of_rdata()).into_iter().collect(),
            },
            Err(error) => {
                debug!(%name, %qtype, %error, "forwarding a DNS query upstream failed");
                Reply::error(ResponseCode::ServFail)
            }
        }
    }

    async fn respond<R: ResponseHandler>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let reply = if request.edns.as_ref().is_some_and(|asked| asked.version() > 0) {
            Reply::error(ResponseCode::BADVERS)
        } else if request.metadata.message_type != MessageType::Query {
            Reply::error(ResponseCode::FormErr)
        } else if request.metadata.op_code != OpCode::Query {
            Reply::error(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                Err(_) => Reply::error(ResponseCode::FormErr),
                Ok(info) => {
                    let query = info.query.original();
                    let qtype = query.query_type();
                    if query.query_class() != DNSClass::IN
                        || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
                    {
                        Reply::error(ResponseCode::Refused)
                    } else {
                        self.resolve(query.name(), qtype).await
                    }
                }
            }
        };

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        metadata.authoritative = reply.authoritative;
        metadata.response_code = reply.code;
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "sending a DNS response failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The `#[async_trait]` signature of [`RequestHandler::handle_request`], written out (this crate
/// does not depend on `async-trait`).
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.respond(request, response_handle))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::LowerName;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;
    use crate::dns::testing::MapSource;

    /// Generous bound so a broken server fails the test instead of hanging it (not a timing check).
    const IO_TIMEOUT: Duration = Duration::from_secs(20);

    #[derive(Debug, Clone, Copy)]
    enum Transport {
        Udp,
        Tcp,
    }

    /// A plain hickory authoritative server for `test.` standing in for the upstream resolver:
    /// `example.test. A 192.0.2.7`, everything else NXDOMAIN.
    async fn start_upstream() -> (SocketAddr, oneshot::Sender<()>) {
        let origin = Name::from_ascii("test.").unwrap();
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("hostmaster.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1));
        let example = Record::from_rdata(
            Name::from_ascii("example.test.").unwrap(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        );
        assert!(zone.upsert_mut(example, 1));
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(origin), vec![Arc::new(zone)]);

        let (udp, tcp, addr) = bind_sockets("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = stopped.await;
            server.shutdown_gracefully().await.unwrap();
        });
        (addr, stop)
    }

    async fn exchange(server: SocketAddr, transport: Transport, request: &Message) -> Message {
        let bytes = request.to_vec().unwrap();
        let response = match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.send_to(&bytes, server).await.unwrap();
                let mut buf = vec![0u8; 65535];
                let (len, from) = tokio::time::timeout(IO_TIMEOUT, socket.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(from, server);
                buf.truncate(len);
                buf
            }
            Transport::Tcp => {
                let mut stream = TcpStream::connect(server).await.unwrap();
                let len = u16::try_from(bytes.len()).unwrap();
                stream.write_all(&len.to_be_bytes()).await.unwrap();
                stream.write_all(&bytes).await.unwrap();
                let mut len = [0u8; 2];
                tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut len))
                    .await
                    .unwrap()
                    .unwrap();
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                buf
            }
        };
        let response = Message::from_vec(&response).unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert!(response.metadata.recursion_available, "RA must be set");
        response
    }

    async fn ask(server: SocketAddr, transport: Transport, name: &str, qtype: RecordType) -> Message {
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        exchange(server, transport, &request).await
    }

    fn ips(response: &Message) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect();
        ips.sort();
        ips
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn has_soa(response: &Message) -> bool {
        response
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    }

    /// Our server (cluster.local from the fixture, plus an ExternalName pointing upstream) in
    /// front of the test upstream.
    async fn start() -> (
        SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), DnsError>>,
        oneshot::Sender<()>,
    ) {
        let (upstream, stop_upstream) = start_upstream().await;
        let mut source = MapSource::fixture();
        source.add_service(MapSource::external("up", "default", "example.test", &[]));
        source.add_service(MapSource::external(
            "inner",
            "default",
            "web.default.svc.cluster.local.",
            &[],
        ));
        let config = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cluster_domain: "cluster.local".to_owned(),
            upstreams: vec![upstream],
            ttl: 30,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, serve) = bind(config, Arc::new(source), async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(addr.port(), 0);
        (addr, stop, tokio::spawn(serve), stop_upstream)
    }

    #[tokio::test]
    async fn serves_the_cluster_domain_and_forwards_the_rest_over_udp_and_tcp() {
        let (addr, stop, serving, stop_upstream) = start().await;

        for transport in [Transport::Udp, Transport::Tcp] {
            // ClusterIP Service A.
            let r = ask(addr, transport, "web.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{transport:?}");
            assert!(r.metadata.authoritative, "{transport:?}");
            assert_eq!(ips(&r), [ip("10.96.0.10")], "{transport:?}");
            assert_eq!(r.answers[0].ttl, 30);

            // Headless Service: every ready endpoint.
            let r = ask(addr, transport, "db.data.svc.cluster.local.", RecordType::A).await;
            assert_eq!(
                ips(&r),
                [ip("10.244.1.5"), ip("10.244.2.6"), ip("10.244.3.7")],
                "{transport:?}"
            );

            // SRV for a named port of a headless Service: one per endpoint.
            let r = ask(
                addr,
                transport,
                "_pg._tcp.db.data.svc.cluster.local.",
                RecordType::SRV,
            )
            .await;
            let mut targets: Vec<String> = r
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(format!("{} {}", srv.port, srv.target)),
                    _ => None,
                })
                .collect();
            targets.sort();
            assert_eq!(
                targets,
                [
                    "5432 10-244-3-7.db.data.svc.cluster.local.",
                    "5432 db-0.db.data.svc.cluster.local.",
                    "5432 db-1.db.data.svc.cluster.local.",
                ],
                "{transport:?}"
            );

            // NXDOMAIN, authoritative, with the SOA for negative caching.
            let r = ask(addr, transport, "nope.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{transport:?}");
            assert!(
                r.metadata.authoritative && r.answers.is_empty() && has_soa(&r),
                "{transport:?}: {r:?}"
            );

            // NODATA: AAAA of an IPv4-only Service.
            let r = ask(
                addr,
                transport,
                "web.default.svc.cluster.local.",
                RecordType::AAAA,
            )
            .await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{transport:?}");
            assert!(r.answers.is_empty() && has_soa(&r), "{transport:?}: {r:?}");

            // Forwarded to the upstream.
            let r = ask(addr, transport, "example.test.", RecordType::A).await;
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NoError,
                "{transport:?}: {r:?}"
            );
            assert!(!r.metadata.authoritative, "{transport:?}");
            assert_eq!(ips(&r), [ip("192.0.2.7")], "{transport:?}");

            // The upstream's NXDOMAIN is passed on.
            let r = ask(addr, transport, "missing.test.", RecordType::A).await;
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NXDomain,
                "{transport:?}: {r:?}"
            );

            // ExternalName: the CNAME, chased upstream.
            let r = ask(addr, transport, "up.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NoError,
                "{transport:?}: {r:?}"
            );
            assert_eq!(r.answers[0].record_type(), RecordType::CNAME, "{transport:?}");
            assert_eq!(ips(&r), [ip("192.0.2.7")], "{transport:?}");

            // ExternalName into the cluster domain: chased through the catalog.
            let r = ask(addr, transport, "inner.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(r.answers.len(), 2, "{transport:?}: {r:?}");
            assert_eq!(ips(&r), [ip("10.96.0.10")], "{transport:?}");
        }

        stop.send(()).unwrap();
        tokio::time::timeout(IO_TIMEOUT, serving)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = stop_upstream.send(());
    }

    #[tokio::test]
    async fn echoes_the_question_case_and_edns() {
        let (addr, stop, _serving, stop_upstream) = start().await;
        let mut request = Message::query();
        request.add_query(Query::query(
            Name::from_ascii("WEB.Default.svc.CLUSTER.local.").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.set_edns(edns);
        let r = exchange(addr, Transport::Udp, &request).await;
        assert_eq!(ips(&r), [ip("10.96.0.10")]);
        assert!(
            r.answers[0]
                .name
                .eq_case(&Name::from_ascii("WEB.Default.svc.CLUSTER.local.").unwrap())
        );
        assert!(
            r.queries[0]
                .name()
                .eq_case(&Name::from_ascii("WEB.Default.svc.CLUSTER.local.").unwrap())
        );
        assert!(r.edns.is_some(), "EDNS request gets an EDNS response");

        // Not IN class / zone transfers / other opcodes.
        let mut request = Message::query();
        let mut query = Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        );
        query.set_query_class(DNSClass::CH);
        request.add_query(query);
        assert_eq!(
            exchange(addr, Transport::Tcp, &request)
                .await
                .metadata
                .response_code,
            ResponseCode::Refused
        );
        let r = ask(addr, Transport::Tcp, "cluster.local.", RecordType::AXFR).await;
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        let mut request = Message::new(7, MessageType::Query, OpCode::Status);
        request.add_query(Query::query(
            Name::from_ascii("cluster.local.").unwrap(),
            RecordType::SOA,
        ));
        assert_eq!(
            exchange(addr, Transport::Udp, &request)
                .await
                .metadata
                .response_code,
            ResponseCode::NotImp
        );

        stop.send(()).unwrap();
        let _ = stop_upstream.send(());
    }

    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn bind_and_serve_futures_are_send() {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = DnsConfig {
            upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            ..DnsConfig::new("127.0.0.1:0".parse().unwrap(), "cluster.local")
        };
        let binding = bind(config, Arc::new(MapSource::fixture()), async move {
            let _ = stopped.await;
        });
        assert_send(&binding);
        let (_addr, serve) = binding.await.unwrap();
        assert_send(&serve);
        stop.send(()).unwrap();
        tokio::time::timeout(IO_TIMEOUT, serve).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let source: Arc<dyn DnsSource> = Arc::new(MapSource::fixture());
        let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let config = DnsConfig {
            upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            ..DnsConfig::new(addr, "cluster.local")
        };
        let Err(error) = bind(config, source.clone(), std::future::pending()).await else {
            panic!("binding a taken port must fail");
        };
        assert!(
            matches!(error, DnsError::Bind { protocol: "UDP", .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(&addr.to_string()), "{error}");

        let config = DnsConfig::new("127.0.0.1:0".parse().unwrap(), ".");
        let Err(error) = bind(config, source, std::future::pending()).await else {
            panic!("the root is not a cluster domain");
        };
        assert!(matches!(error, DnsError::InvalidDomain(_)), "{error:?}");
    }
}
