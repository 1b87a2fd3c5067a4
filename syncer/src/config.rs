//! Command line: every flag is `--long` with a `VNEST_*` environment twin, parsed into typed
//! values once, then turned into a plain [`SyncerConfig`] by exhaustive destructuring (so a flag
//! that is parsed but never used breaks the build). All environment reads are declared here or
//! in the flag group of one kind (`PodArgs`, `NodeArgs`, `DnsArgs`, ...: declared beside the
//! kind, flattened into [`SyncerArgs`], validated into that kind's settings once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::dns::{DnsArgs, DnsSettings};
use crate::kubelet::{KubeletArgs, KubeletSettings};
use crate::leader::{ElectionArgs, ElectionConfigError, ElectionSettings};
use crate::naming::parse_dns_label;
use crate::resources::{KindArgs, KindSettings};

/// Where a pod's ServiceAccount namespace is mounted (used when no host namespace is given).
pub const IN_CLUSTER_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, Parser)]
#[command(
    name = "vnest",
    version,
    about = "vnest: virtual Kubernetes clusters in one host namespace"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the syncer between the virtual API server and the host namespace.
    Syncer(Box<SyncerArgs>),
    /// Find the host cluster's Service CIDR with namespaced permissions only, and print it.
    DetectServiceCidr(DetectArgs),
    /// Print the version.
    Version,
    /// Create a vcluster in a host namespace (server-side apply), wait for it, connect.
    Create(Box<crate::cli::CreateArgs>),
    /// Write a kubeconfig for a vcluster and forward its API server to this machine.
    Connect(Box<crate::cli::ConnectArgs>),
    /// List the vclusters of a namespace (or of all, -A).
    List(crate::cli::ListArgs),
    /// Delete a vcluster and wait until no host object of it remains.
    Delete(crate::cli::DeleteArgs),
    /// Print the host objects `create` would apply (no cluster needed).
    Render(Box<crate::cli::RenderArgs>),
    /// Print the JSON schema of the configuration (`-f` files, `--set` keys).
    Schema {
        /// Print the keys as a Markdown table instead.
        #[arg(long)]
        markdown: bool,
    },
}

/// Finds the host cluster's Service CIDR (namespaced permissions only) and prints it, e.g. for
/// an init container that hands it to k3s's `--service-cidr`.
#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// Kubeconfig for the host cluster. Defaults to the pod's ServiceAccount (in-cluster).
    #[arg(long, env = "VNEST_HOST_KUBECONFIG")]
    pub host_kubeconfig: Option<PathBuf>,

    /// Host namespace to probe in. Defaults to the pod's own namespace.
    #[arg(long, env = "VNEST_HOST_NAMESPACE", value_parser = parse_dns_label)]
    pub namespace: Option<String>,

    /// The vcluster's host Service, whose `vnest.dev/service-cidr` annotation caches the result.
    #[arg(
        long,
        env = "VNEST_SERVICE_NAME",
        default_value = "vnest",
        value_parser = parse_dns_label
    )]
    pub service_name: String,

    /// Also write the CIDR (and a newline) to this file, atomically, e.g. `/data/service-cidr`.
    #[arg(long, env = "VNEST_CIDR_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax); logs go to stderr.
    #[arg(long, env = "VNEST_LOG", default_value = "info")]
    pub log_filter: String,
}

impl DetectArgs {
    /// Plain logs to stderr (stdout carries only the result).
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            format: LogFormat::Plain,
            filter: self.log_filter.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The host object every synced object is owned by (ownerReference): deleting it makes the
/// host garbage collector delete everything this vcluster created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OwnerKind {
    #[value(name = "StatefulSet", alias = "statefulset")]
    StatefulSet,
    #[value(name = "Deployment", alias = "deployment")]
    Deployment,
    #[value(name = "Service", alias = "service")]
    Service,
}

impl OwnerKind {
    pub fn api_version(self) -> &'static str {
        match self {
            OwnerKind::StatefulSet | OwnerKind::Deployment => "apps/v1",
            OwnerKind::Service => "v1",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::Deployment => "Deployment",
            OwnerKind::Service => "Service",
        }
    }
}

#[derive(Debug, Args)]
pub struct SyncerArgs {
    /// Name of this vcluster (a DNS label). Marks every host object it creates.
    #[arg(long, env = "VNEST_NAME", value_parser = parse_dns_label)]
    pub name: String,

    /// Host namespace the vcluster lives in. Defaults to the pod's own namespace.
    #[arg(long, env = "VNEST_HOST_NAMESPACE", value_parser = parse_dns_label)]
    pub host_namespace: Option<String>,

    /// Kubeconfig for the host cluster. Defaults to the pod's ServiceAccount (in-cluster).
    #[arg(long, env = "VNEST_HOST_KUBECONFIG")]
    pub host_kubeconfig: Option<PathBuf>,

    /// k3s data directory shared with the k3s container (PKI under server/tls, kubeconfigs
    /// under server/cred).
    #[arg(long, env = "VNEST_DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,

    /// Kubeconfig for the virtual API server [default: <data-dir>/server/cred/admin.kubeconfig].
    #[arg(long, env = "VNEST_VIRTUAL_KUBECONFIG")]
    pub virtual_kubeconfig: Option<PathBuf>,

    /// Kind of the host object that owns everything the syncer creates.
    #[arg(long, env = "VNEST_OWNER_KIND", value_enum, default_value = "StatefulSet")]
    pub owner_kind: OwnerKind,

    /// Name of that owner object [default: the vcluster name].
    #[arg(long, env = "VNEST_OWNER_NAME", value_parser = parse_dns_label)]
    pub owner_name: Option<String>,

    /// Address of the /livez, /readyz and /metrics server.
    #[arg(long, env = "VNEST_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "VNEST_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `info,vnest=debug`.
    #[arg(long, env = "VNEST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Sustained requests per second to the host API server (client-side limit).
    #[arg(long, env = "VNEST_HOST_QPS", default_value = "100", value_parser = parse_positive_f64)]
    pub host_qps: f64,

    /// Requests allowed in a burst above --host-qps.
    #[arg(long, env = "VNEST_HOST_BURST", default_value = "200", value_parser = clap::value_parser!(u32).range(1..))]
    pub host_burst: u32,

    /// Sustained requests per second to the virtual API server.
    #[arg(long, env = "VNEST_VIRTUAL_QPS", default_value = "1000", value_parser = parse_positive_f64)]
    pub virtual_qps: f64,

    /// Requests allowed in a burst above --virtual-qps.
    #[arg(long, env = "VNEST_VIRTUAL_BURST", default_value = "2000", value_parser = clap::value_parser!(u32).range(1..))]
    pub virtual_burst: u32,

    /// Requests sent to the host API server and not answered yet, at most (0: no limit; the
    /// host side is paced by --host-qps; the ceiling of --host-adaptive-in-flight). The
    /// requests that wait for a seat or a --host-qps token are served round-robin by virtual
    /// namespace, so one namespace's burst cannot hold the others' requests behind its own.
    #[arg(long, env = "VNEST_HOST_MAX_IN_FLIGHT", default_value = "0", value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub host_max_in_flight: u32,

    /// Keep the requests in flight to the host API server to what it answers at near its quiet
    /// latency: fewer (down to 4) while its answers slow down (a busy datastore), more again
    /// while they are quick, up to --host-max-in-flight. The requests held back wait in the
    /// fair queue, where a small namespace's request passes a burst's.
    #[arg(long, env = "VNEST_HOST_ADAPTIVE_IN_FLIGHT", default_value = "true", action = clap::ArgAction::Set)]
    pub host_adaptive_in_flight: bool,

    /// Fewest requests --host-adaptive-in-flight keeps in flight to the host API server however
    /// slow its answers get. Fewer keeps a tenant's burst from filling the host's queue ahead of
    /// another tenant's request; more lets a burst through faster on a host that is slow for
    /// reasons of its own (a busy CPU) rather than because of the syncer's requests. Default 4;
    /// refused with --host-adaptive-in-flight=false (there is no floor to set).
    #[arg(long, env = "VNEST_HOST_MIN_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub host_min_in_flight: Option<u32>,

    /// Requests sent to the virtual API server and not answered yet, at most (0: no limit);
    /// shared between virtual namespaces like --host-max-in-flight.
    #[arg(long, env = "VNEST_VIRTUAL_MAX_IN_FLIGHT", default_value = "32", value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub virtual_max_in_flight: u32,

    /// Longest time a SIGTERM waits for in-flight work before the process exits anyway.
    #[arg(long, env = "VNEST_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Tokio worker threads. One by default: the syncer mostly waits on the two API servers,
    /// and a second thread bought nothing but contention with them for the pod's cores
    /// (measured on 2 cores, 1000-pod bursts in alternated pairs: 1 thread p50 97 / 150 ms,
    /// p99 1 168 / 1 494 ms, 8.2 / 8.0 ms CPU per pod; 2 threads 780 / 3 017, 3 277 / 4 490 ms,
    /// 9.2 / 10.9 ms).
    #[arg(long, env = "VNEST_WORKER_THREADS", default_value = "1", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,

    /// Concurrent reconciles per kind (pods; ConfigMaps and Secrets get half each). A reconcile
    /// mostly waits on the two API servers, so this bounds requests in flight, not CPU; the host
    /// side is paced by --host-qps either way.
    #[arg(long, env = "VNEST_WORKERS", default_value = "256", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,

    /// The vcluster's host Service (its ClusterIP is the virtual `kubernetes` Service IP)
    /// [default: the vcluster name].
    #[arg(long, env = "VNEST_SERVICE_NAME", value_parser = parse_dns_label)]
    pub service_name: Option<String>,

    /// How watches load their caches (at start and after a watch expires): `list` (one whole
    /// LIST, from the API server's watch cache where the kind has one, read item by item, then a
    /// watch; after a LIST that broke off, LIST pages), `stream` (one watch with the initial
    /// objects streamed, `sendInitialEvents`, Kubernetes ≥ 1.34), or `auto` (`list`, streamed
    /// instead of pages after a LIST that broke off when the server is ≥ 1.34).
    #[arg(long, env = "VNEST_INITIAL_LIST", value_enum, default_value = "auto")]
    pub initial_list: InitialList,

    #[command(flatten)]
    pub kinds: KindArgs,

    #[command(flatten)]
    pub dns: DnsArgs,

    #[command(flatten)]
    pub kubelet: KubeletArgs,

    #[command(flatten)]
    pub election: ElectionArgs,
}

/// Options every synced kind shares.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub workers: usize,
    pub service_name: String,
    pub initial_list: InitialList,
}

/// How watches load their caches (`--initial-list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    Auto,
    Stream,
    List,
}

/// The first minor version whose API server streams initial lists by default (the `WatchList`
/// feature gate is on by default from 1.34).
pub const STREAMING_LISTS_FROM_MINOR: u32 = 34;

impl InitialList {
    /// Whether kinds with a watch cache load by one whole LIST from it (not streamed): the API
    /// server encodes one list instead of one watch event per object (measured with 10 000
    /// host pods: 1.8-3.2 CPU-s of the host API server against 3.2-3.8 streamed).
    pub fn whole_lists(self) -> bool {
        self != InitialList::Stream
    }

    /// Whether to stream, given the server's `/version` minor (e.g. "35" or "35+").
    pub fn streams(self, server_minor: &str) -> bool {
        match self {
            InitialList::Stream => true,
            InitialList::List => false,
            InitialList::Auto => {
                // Watches take whole lists ([`Self::whole_lists`]): this is how one lists
                // after its whole LIST broke off.
                let digits: String = server_minor.chars().take_while(char::is_ascii_digit).collect();
                digits
                    .parse::<u32>()
                    .is_ok_and(|m| m >= STREAMING_LISTS_FROM_MINOR)
            }
        }
    }
}

/// Log settings, needed before anything else starts.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// A client-side request budget: `qps` sustained, `burst` at once, at most `max_in_flight`
/// unanswered (0: no limit); shared fairly between virtual namespaces (crate::fair_share).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub qps: f64,
    pub burst: u32,
    pub max_in_flight: usize,
    /// `Some(min)`: the requests in flight follow the server's latency, between `min` and
    /// `max_in_flight` (crate::seat_limit); None: only `max_in_flight` limits them.
    pub adaptive: Option<usize>,
}

/// Where a cluster's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAccess {
    Kubeconfig(PathBuf),
    InCluster,
}

/// The owner (anchor) object of every host object we create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
}

/// The validated syncer configuration.
#[derive(Debug, Clone)]
pub struct SyncerConfig {
    pub name: String,
    pub host_namespace: String,
    pub host: ClusterAccess,
    pub virtual_kubeconfig: PathBuf,
    pub data_dir: PathBuf,
    pub owner: Owner,
    pub admin_addr: SocketAddr,
    pub log: LogConfig,
    pub host_rate: RateLimit,
    pub virtual_rate: RateLimit,
    pub shutdown_timeout: Duration,
    pub worker_threads: usize,
    pub sync: SyncOptions,
    /// Every kind's settings.
    pub kinds: KindSettings,
    pub dns: DnsSettings,
    pub kubelet: KubeletSettings,
    /// Leader election between replicas; `None` when off (this replica leads alone).
    pub election: Option<ElectionSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--host-min-in-flight={min} sets the floor of the adaptive host limit, which \
         --host-adaptive-in-flight=false turns off: drop one of the two (a fixed limit is \
         --host-max-in-flight)"
    )]
    MinInFlightWithoutAdaptive { min: u32 },
    #[error(
        "no host namespace: pass --host-namespace (or VNEST_HOST_NAMESPACE), or run in a pod where {path} exists ({source})"
    )]
    NoHostNamespace {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the namespace in {path} is not a valid DNS label: {reason}")]
    BadNamespaceFile { path: &'static str, reason: String },
    #[error(transparent)]
    Election(#[from] ElectionConfigError),
}

impl SyncerArgs {
    /// Turns parsed flags into the plain config, reading the in-cluster namespace file if needed.
    pub fn into_config(self) -> Result<SyncerConfig, ConfigError> {
        let Self {
            name,
            host_namespace,
            host_kubeconfig,
            data_dir,
            virtual_kubeconfig,
            owner_kind,
            owner_name,
            admin_addr,
            log_format,
            log_filter,
            host_qps,
            host_burst,
            virtual_qps,
            virtual_burst,
            host_max_in_flight,
            host_adaptive_in_flight,
            host_min_in_flight,
            virtual_max_in_flight,
            shutdown_timeout,
            worker_threads,
            workers,
            service_name,
            initial_list,
            kinds,
            dns,
            kubelet,
            election,
        } = self;
        if let (false, Some(min)) = (host_adaptive_in_flight, host_min_in_flight) {
            return Err(ConfigError::MinInFlightWithoutAdaptive { min });
        }
        let host_namespace = match host_namespace {
            Some(ns) => ns,
            None => read_in_cluster_namespace()?,
        };
        let virtual_kubeconfig =
            virtual_kubeconfig.unwrap_or_else(|| data_dir.join("server/cred/admin.kubeconfig"));
        let service_name = service_name.unwrap_or_else(|| name.clone());
        let dns = dns.into_settings(&service_name);
        let kinds = kinds.into_settings(&name, &dns.cluster_domain);
        let kubelet = kubelet.into_settings(
            &data_dir,
            kinds.nodes.kubelet_port,
            kinds.nodes.kubelet_address.clone(),
        );
        let election = election.into_settings(&name)?;
        let sync = SyncOptions {
            workers: usize::from(workers),
            service_name,
            initial_list,
        };
        Ok(SyncerConfig {
            sync,
            kinds,
            dns,
            kubelet,
            election,
            owner: Owner {
                kind: owner_kind,
                name: owner_name.unwrap_or_else(|| name.clone()),
            },
            name,
            host_namespace,
            host: host_kubeconfig.map_or(ClusterAccess::InCluster, ClusterAccess::Kubeconfig),
            virtual_kubeconfig,
            data_dir,
            admin_addr,
            log: LogConfig {
                format: log_format,
                filter: log_filter,
            },
            host_rate: RateLimit {
                qps: host_qps,
                burst: host_burst,
                max_in_flight: host_max_in_flight as usize,
                adaptive: host_adaptive_in_flight
                    .then(|| host_min_in_flight.map_or(crate::seat_limit::ADAPTIVE_MIN, |min| min as usize)),
            },
            virtual_rate: RateLimit {
                qps: virtual_qps,
                burst: virtual_burst,
                max_in_flight: virtual_max_in_flight as usize,
                adaptive: None,
            },
            shutdown_timeout,
            worker_threads: usize::from(worker_threads),
        })
    }
}

fn read_in_cluster_namespace() -> Result<String, ConfigError> {
    let raw = std::fs::read_to_string(IN_CLUSTER_NAMESPACE_FILE).map_err(|source| {
        ConfigError::NoHostNamespace {
            path: IN_CLUSTER_NAMESPACE_FILE,
            source,
        }
    })?;
    parse_dns_label(raw.trim()).map_err(|reason| ConfigError::BadNamespaceFile {
        path: IN_CLUSTER_NAMESPACE_FILE,
        reason,
    })
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match f64::from_str(s) {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number (e.g. 40 or 2.5)")),
    }
}

pub use crate::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<SyncerArgs, clap::Error> {
        let mut full = vec!["vnest", "syncer"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|cli| match cli.command {
            Command::Syncer(a) => *a,
            _ => panic!("parsed the wrong subcommand"),
        })
    }

    #[test]
    fn initial_lists_stream_from_1_34_in_auto_mode() {
        assert!(InitialList::Auto.streams("35"));
        assert!(InitialList::Auto.streams("34+"), "GKE/EKS style minors");
        assert!(!InitialList::Auto.streams("33"));
        assert!(
            !InitialList::Auto.streams(""),
            "unknown: LIST, which every server serves"
        );
        assert!(InitialList::Stream.streams("27"));
        assert!(!InitialList::List.streams("35"));
        assert!(InitialList::Auto.whole_lists() && InitialList::List.whole_lists());
        assert!(!InitialList::Stream.whole_lists());
        let a = parse(&[
            "--name",
            "demo",
            "--host-namespace",
            "ns",
            "--initial-list",
            "list",
        ])
        .unwrap();
        assert_eq!(a.initial_list, InitialList::List);
    }

    #[test]
    fn a_minimum_in_flight_is_the_adaptive_floor_and_refused_without_it() {
        let base = ["--name", "demo", "--host-namespace", "ns"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args).unwrap().into_config()
        };
        assert_eq!(with(&[]).unwrap().host_rate.adaptive, Some(4));
        let cfg = with(&["--host-min-in-flight", "12"]).unwrap();
        assert_eq!(cfg.host_rate.adaptive, Some(12));
        assert_eq!(
            with(&["--host-adaptive-in-flight", "false"])
                .unwrap()
                .host_rate
                .adaptive,
            None
        );
        let err = with(&["--host-adaptive-in-flight", "false", "--host-min-in-flight", "12"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--host-min-in-flight=12") && err.contains("drop one of the two"),
            "{err}"
        );
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every flag of `vnest syncer` as it was before the kinds declared their own flag groups,
    /// plus the flags added since (`--sync-poddisruptionbudgets`, `--sync-persistentvolumeclaims`,
    /// `--storage-class-map`, `--pv-sync`, `--sync-storageclasses`, `--export-*`):
    /// (long name, env twin, default; "" = none). Names, env twins and defaults are the
    /// interface of every deployment, so they must not change by accident.
    const SYNCER_FLAGS: &[(&str, &str, &str)] = &[
        ("name", "VNEST_NAME", ""),
        ("host-namespace", "VNEST_HOST_NAMESPACE", ""),
        ("host-kubeconfig", "VNEST_HOST_KUBECONFIG", ""),
        ("data-dir", "VNEST_DATA_DIR", "/data"),
        ("virtual-kubeconfig", "VNEST_VIRTUAL_KUBECONFIG", ""),
        ("owner-kind", "VNEST_OWNER_KIND", "StatefulSet"),
        ("owner-name", "VNEST_OWNER_NAME", ""),
        ("admin-addr", "VNEST_ADMIN_ADDR", "0.0.0.0:8080"),
        ("log-format", "VNEST_LOG_FORMAT", "plain"),
        ("log-filter", "VNEST_LOG", "info"),
        ("host-qps", "VNEST_HOST_QPS", "100"),
        ("host-burst", "VNEST_HOST_BURST", "200"),
        ("virtual-qps", "VNEST_VIRTUAL_QPS", "1000"),
        ("virtual-burst", "VNEST_VIRTUAL_BURST", "2000"),
        ("host-max-in-flight", "VNEST_HOST_MAX_IN_FLIGHT", "0"),
        ("host-adaptive-in-flight", "VNEST_HOST_ADAPTIVE_IN_FLIGHT", "true"),
        // 4 when not given (a clap default would hide whether it was given: see below).
        ("host-min-in-flight", "VNEST_HOST_MIN_IN_FLIGHT", ""),
        ("virtual-max-in-flight", "VNEST_VIRTUAL_MAX_IN_FLIGHT", "32"),
        ("shutdown-timeout", "VNEST_SHUTDOWN_TIMEOUT", "5s"),
        ("worker-threads", "VNEST_WORKER_THREADS", "1"),
        ("workers", "VNEST_WORKERS", "256"),
        ("service-name", "VNEST_SERVICE_NAME", ""),
        ("workload-service-account", "VNEST_WORKLOAD_SERVICE_ACCOUNT", ""),
        ("dns-nameserver", "VNEST_DNS_NAMESERVER", ""),
        ("cluster-domain", "VNEST_CLUSTER_DOMAIN", "cluster.local"),
        ("host-access", "VNEST_HOST_ACCESS", "deny"),
        ("pod-token-storage", "VNEST_POD_TOKEN_STORAGE", "annotation"),
        ("initial-list", "VNEST_INITIAL_LIST", "auto"),
        ("sync-all-configmaps", "VNEST_SYNC_ALL_CONFIGMAPS", ""),
        ("sync-all-secrets", "VNEST_SYNC_ALL_SECRETS", ""),
        ("node-sync", "VNEST_NODE_SYNC", "fake"),
        ("kubelet-port", "VNEST_KUBELET_PORT", "10250"),
        ("kubelet-address", "VNEST_KUBELET_ADDRESS", ""),
        ("sync-networkpolicies", "VNEST_SYNC_NETWORKPOLICIES", ""),
        ("networkpolicy-deny-cidrs", "VNEST_NETWORKPOLICY_DENY_CIDRS", ""),
        (
            "sync-poddisruptionbudgets",
            "VNEST_SYNC_PODDISRUPTIONBUDGETS",
            "true",
        ),
        (
            "sync-persistentvolumeclaims",
            "VNEST_SYNC_PERSISTENTVOLUMECLAIMS",
            "true",
        ),
        ("storage-class-map", "VNEST_STORAGE_CLASS_MAP", ""),
        ("pv-sync", "VNEST_PV_SYNC", "fake"),
        ("sync-storageclasses", "VNEST_SYNC_STORAGECLASSES", "false"),
        ("export-kubeconfig", "VNEST_EXPORT_KUBECONFIG", "true"),
        ("export-secret-name", "VNEST_EXPORT_SECRET_NAME", ""),
        ("export-server", "VNEST_EXPORT_SERVER", ""),
        ("export-context", "VNEST_EXPORT_CONTEXT", ""),
        ("dns-addr", "VNEST_DNS_ADDR", "0.0.0.0:1053"),
        ("dns-upstream", "VNEST_DNS_UPSTREAM", ""),
        ("dns-service-name", "VNEST_DNS_SERVICE_NAME", ""),
        ("kubelet-listen-addr", "VNEST_KUBELET_LISTEN_ADDR", ""),
        ("kubelet-serving-ca-cert", "VNEST_KUBELET_SERVING_CA_CERT", ""),
        ("kubelet-serving-ca-key", "VNEST_KUBELET_SERVING_CA_KEY", ""),
        ("kubelet-client-ca", "VNEST_KUBELET_CLIENT_CA", ""),
        ("kubelet-tls-san", "VNEST_KUBELET_TLS_SAN", ""),
        ("leader-elect", "VNEST_LEADER_ELECT", ""),
        ("leader-elect-lease-name", "VNEST_LEADER_ELECT_LEASE_NAME", ""),
        ("leader-elect-identity", "VNEST_LEADER_ELECT_IDENTITY", ""),
        (
            "leader-elect-lease-duration",
            "VNEST_LEADER_ELECT_LEASE_DURATION",
            "15s",
        ),
        (
            "leader-elect-renew-grace",
            "VNEST_LEADER_ELECT_RENEW_GRACE",
            "10s",
        ),
    ];

    #[test]
    fn syncer_flags_env_twins_and_defaults_are_unchanged() {
        let mut cli = Cli::command();
        cli.build();
        let syncer = cli.find_subcommand_mut("syncer").expect("the syncer subcommand");
        let help = syncer.render_long_help().to_string();
        let mut seen: Vec<&str> = Vec::new();
        for arg in syncer.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            seen.push(long);
            let (_, env, default) = SYNCER_FLAGS
                .iter()
                .find(|(l, _, _)| *l == long)
                .unwrap_or_else(|| panic!("new flag --{long}: add it to SYNCER_FLAGS"));
            let got_env = arg
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            assert_eq!(got_env, *env, "--{long}");
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            let got_default = if arg.get_num_args().is_some_and(|n| n.takes_values()) {
                defaults.join(",")
            } else {
                String::new()
            };
            assert_eq!(got_default, *default, "--{long}");
        }
        for (long, _, _) in SYNCER_FLAGS {
            assert!(seen.contains(long), "--{long} is gone");
            assert!(
                help.contains(&format!("--{long}")),
                "--{long} is not in `vnest syncer --help`"
            );
        }
    }

    #[test]
    fn defaults_derive_from_name_and_data_dir() {
        let cfg = parse(&["--name", "demo", "--host-namespace", "team-a"])
            .expect("valid args")
            .into_config()
            .expect("valid config");
        assert_eq!(cfg.owner.name, "demo");
        assert_eq!(cfg.owner.kind, OwnerKind::StatefulSet);
        assert_eq!(cfg.host, ClusterAccess::InCluster);
        assert_eq!(
            cfg.virtual_kubeconfig,
            PathBuf::from("/data/server/cred/admin.kubeconfig")
        );
        assert_eq!(
            cfg.host_rate,
            RateLimit {
                qps: 100.0,
                burst: 200,
                max_in_flight: 0,
                adaptive: Some(4),
            }
        );
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(cfg.kinds.pods.workload_service_account, "demo-workload");
        assert_eq!(cfg.sync.service_name, "demo");
        assert!(cfg.kinds.poddisruptionbudgets.sync_poddisruptionbudgets);
        assert_eq!(
            cfg.kinds.pods.host_access,
            crate::resources::pods::HostAccessPolicy::Deny
        );
    }

    #[test]
    fn rejects_bad_values_with_a_hint() {
        for (args, needle) in [
            (vec!["--name", "Demo"], "not a DNS label"),
            (vec!["--name", "demo", "--host-qps", "0"], "positive number"),
            (
                vec!["--name", "demo", "--shutdown-timeout", "5"],
                "500ms, 5s or 2m",
            ),
            (vec!["--name", "demo", "--owner-kind", "Pod"], "invalid value"),
        ] {
            let err = parse(&args).expect_err("must be rejected").to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1h").is_err());
    }

    fn parse_detect(args: &[&str]) -> Result<DetectArgs, clap::Error> {
        let argv = ["vnest", "detect-service-cidr"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::DetectServiceCidr(args) => args,
            _ => panic!("parsed the wrong subcommand"),
        })
    }

    #[test]
    fn detect_args_defaults_and_flags() {
        // (Assumes the VNEST_* twins of these flags are not set in the test environment.)
        let args = parse_detect(&[]).unwrap();
        assert_eq!(args.service_name, "vnest");
        assert_eq!(args.log_filter, "info");
        assert_eq!(
            (args.namespace, args.output, args.host_kubeconfig),
            (None, None, None)
        );
        let args = parse_detect(&[
            "--host-kubeconfig",
            "/k",
            "--namespace",
            "ns-1",
            "--service-name",
            "vc",
            "--output",
            "/data/service-cidr",
        ])
        .unwrap();
        assert_eq!(args.host_kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(args.namespace.as_deref(), Some("ns-1"));
        assert_eq!(args.service_name, "vc");
        assert_eq!(args.output, Some(PathBuf::from("/data/service-cidr")));
        assert!(parse_detect(&["--namespace", "Not_A_Label"]).is_err());
    }
}
