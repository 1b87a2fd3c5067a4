//! Detection of the host cluster's Service CIDR(s) with only namespaced permissions.
//!
//! The virtual API server (k3s) must run with `--service-cidr` equal to the host's, because the
//! ClusterIPs of synced Services are the host's. Reading it directly needs cluster-scoped access
//! (ServiceCIDR objects, the `kubernetes` Service in `default`, or the API server's flags), and
//! the valid range in error messages is not to be relied on (v1.35 still prints it; newer
//! Kubernetes sources dropped it from `ErrNotInRange`). So we *probe*: a
//! dry-run create of a ClusterIP Service with a chosen `spec.clusterIP` succeeds exactly when
//! that IP lies in the host's service range ([`probe_inside`]); nothing is persisted.
//!
//! The search ([`PrefixSearch`], pure) starts from an *anchor* `a`, any address of the service
//! network `N = a/P` (a dry-run create without a ClusterIP returns one; on v1.35 it is the
//! network address of the range). For a prefix length `L`, let `S_L` be the half of the network
//! `a/L` that does not contain `a` (the part of `a/L` outside `a/(L+1)`), and `b_L` the address of
//! `S_L` next to the boundary between the two halves. Then `b_L` is inside `N` iff `L >= P`:
//! for `L >= P`, `a/L ⊆ N` and `b_L` is neither the network nor the last address of `N`
//! (both reserved); for `L < P`, `b_L` differs from `a` in a network bit of `N`. The predicate is
//! monotonic in `L`, so a binary search finds `P` in 5 probes for IPv4 (`/0../30`) and 6 for
//! IPv6 (`/64../126`).
//!
//! Dual-stack hosts: the anchor request uses `ipFamilyPolicy: PreferDualStack`, so one dry-run
//! returns an anchor per configured family, in the host's primary-first order; each family is
//! then searched separately and the result is `"<primary>,<secondary>"`, the syntax of k3s's
//! `--service-cidr`.
//!
//! Limitation: a host with several ServiceCIDR objects of one family (the
//! `MultiCIDRServiceAllocator` extension ranges) answers dry-run requests from one of them at
//! random, so the result is only well defined for the usual single range per family.
//!
//! [`detect_cached`] keeps the result in the `vnest.dev/service-cidr` annotation of the
//! vcluster's host Service, so restarts make one GET instead of ~6 requests; [`run_detect`] is
//! the `vnest detect-service-cidr` init container.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::Status;
use kube::{Api, Client, Config};

use crate::config::IN_CLUSTER_NAMESPACE_FILE;
use crate::engine::execute::FIELD_MANAGER;
pub use crate::ipnet::{CidrParseError, IpCidr};
use crate::ipnet::{from_bits, host_mask, to_bits, width};
use crate::markers::LABEL_PROBE_RUN;
use crate::naming::parse_dns_label;

/// The cache annotation (see [`detect_cached`]), also read here by the e2e tests; its home is
/// [`crate::markers`].
pub use crate::markers::ANNOTATION_SERVICE_CIDR;

/// The flags of `vnest detect-service-cidr` (declared with the rest of the command line), also
/// built here by the e2e tests.
pub use crate::config::DetectArgs;

/// `generateName` of the probe Services (all dry-run, except the rare fallback of [`detect`]).
pub const PROBE_NAME_PREFIX: &str = "vnest-cidr-probe-";

// ----------------------------------------------------------------------------------------------
// IP networks (pure)
// ----------------------------------------------------------------------------------------------

/// The host's service network(s): one per configured IP family, primary family first.
/// Displays (and parses) as k3s's `--service-cidr` value: `10.96.0.0/12` or
/// `10.96.0.0/12,fd00:10:96::/112`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceCidrs {
    primary: IpCidr,
    secondary: Option<IpCidr>,
}

impl ServiceCidrs {
    /// One network, or two of different IP families (primary first); `None` otherwise.
    pub fn new(cidrs: &[IpCidr]) -> Option<Self> {
        match *cidrs {
            [primary] => Some(Self {
                primary,
                secondary: None,
            }),
            [primary, secondary] if primary.is_ipv6() != secondary.is_ipv6() => Some(Self {
                primary,
                secondary: Some(secondary),
            }),
            _ => None,
        }
    }

    pub fn primary(&self) -> IpCidr {
        self.primary
    }

    pub fn secondary(&self) -> Option<IpCidr> {
        self.secondary
    }

    pub fn iter(&self) -> impl Iterator<Item = IpCidr> + '_ {
        std::iter::once(self.primary).chain(self.secondary)
    }
}

impl fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.primary)?;
        if let Some(secondary) = self.secondary {
            write!(f, ",{secondary}")?;
        }
        Ok(())
    }
}

impl FromStr for ServiceCidrs {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cidrs = s.split(',').map(str::parse).collect::<Result<Vec<IpCidr>, _>>()?;
        Self::new(&cidrs).ok_or_else(|| CidrParseError {
            input: s.to_owned(),
            reason: "expected one network, or two of different IP families",
        })
    }
}

// ----------------------------------------------------------------------------------------------
// The prefix search (pure)
// ----------------------------------------------------------------------------------------------

/// Shortest IPv6 prefix searched: Kubernetes refuses IPv6 service ranges larger than /64, so a
/// result of /64 means "/64 or larger" (never the case on a valid cluster).
pub const MIN_PREFIX_V6: u8 = 64;

/// Binary search for the prefix length of the service network around an anchor address, one
/// probe at a time (so the I/O stays outside): ask [`PrefixSearch::next_probe`], test that IP,
/// [`PrefixSearch::record`] the answer, repeat; then [`PrefixSearch::result`].
///
/// Searches `/0../30` for IPv4 (5 probes) and `/64../126` for IPv6 (6 probes): the longest
/// candidate is width-2, the last length whose probe can avoid the reserved first and last
/// addresses.
#[derive(Debug, Clone)]
pub struct PrefixSearch {
    anchor: u128,
    v6: bool,
    /// The answer lies in `lo..=hi`; `hi == max + 1` stands for "no usable network".
    lo: u8,
    hi: u8,
    max: u8,
    probes: u32,
}

impl PrefixSearch {
    pub fn new(anchor: IpAddr) -> Self {
        let (bits, v6) = to_bits(anchor);
        let max = width(v6) - 2;
        Self {
            anchor: bits,
            v6,
            lo: if v6 { MIN_PREFIX_V6 } else { 0 },
            hi: max + 1,
            max,
            probes: 0,
        }
    }

    /// The next IP to test, or `None` when the search is over.
    pub fn next_probe(&self) -> Option<IpAddr> {
        (self.lo < self.hi).then(|| self.probe_for(self.mid()))
    }

    /// Records whether the IP from [`Self::next_probe`] is inside the service range.
    pub fn record(&mut self, inside: bool) {
        if self.lo >= self.hi {
            return;
        }
        let mid = self.mid();
        if inside {
            self.hi = mid;
        } else {
            self.lo = mid + 1;
        }
        self.probes += 1;
    }

    /// The service network once the search is over; `None` while probes remain or when every
    /// probe was outside (the anchor's network would be a /31 or smaller).
    pub fn result(&self) -> Option<IpCidr> {
        let (lo, hi) = (self.lo, self.hi);
        (lo == hi && lo <= self.max)
            .then(|| IpCidr::new(from_bits(self.anchor, self.v6), lo))
            .flatten()
    }

    pub fn probes(&self) -> u32 {
        self.probes
    }

    fn mid(&self) -> u8 {
        self.lo + (self.hi - self.lo) / 2
    }

    /// `b_L`: in `anchor/L`, outside `anchor/(L+1)`, next to the boundary between the halves.
    fn probe_for(&self, prefix: u8) -> IpAddr {
        let width = width(self.v6);
        let half = 1u128 << (width - prefix - 1);
        let net = self.anchor & !host_mask(prefix, width);
        let bits = if self.anchor & half != 0 {
            net + half - 1 // anchor in the upper half: last address of the lower half
        } else {
            net + half // anchor in the lower half: first address of the upper half
        };
        from_bits(bits, self.v6)
    }
}

/// Runs a [`PrefixSearch`] with a synchronous predicate (tests, simulations).
pub fn find_prefix(anchor: IpAddr, mut inside: impl FnMut(IpAddr) -> bool) -> Option<IpCidr> {
    let mut search = PrefixSearch::new(anchor);
    while let Some(ip) = search.next_probe() {
        search.record(inside(ip));
    }
    search.result()
}

// ----------------------------------------------------------------------------------------------
// Reading the API server's answers (pure)
// ----------------------------------------------------------------------------------------------

/// What a refused probe create says about the requested ClusterIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The IP is in a service range (e.g. "provided IP is already allocated" on a real create).
    Inside,
    /// The IP is outside every service range.
    Outside,
    /// The IP's family is not configured on the cluster (single-stack host).
    FamilyNotConfigured,
}

/// Classifies a refused probe create, or `None` when the refusal is about something else.
///
/// Messages seen (v1.35, reason `Invalid`, code 422, one cause on `spec.clusterIPs`):
/// - `Invalid value: ["4.4.4.4"]: failed to allocate IP 4.4.4.4: the provided IP (4.4.4.4) is
///   not in the valid range. The range of valid IPs is 10.96.0.0/12`
///   (newer releases: `provided IP 4.4.4.4 is not in the valid range`, no range);
/// - on `spec.clusterIPs[0]`: `Invalid value: ["fd00::1"]: IPv6 is not configured on this cluster`;
/// - on `spec.ipFamilies[0]`: `Invalid value: "IPv6": not configured on this cluster`.
pub fn classify_rejection(status: &Status) -> Option<Verdict> {
    let causes = status.details.iter().flat_map(|d| &d.causes);
    let mut texts: Vec<(&str, String)> = causes
        .map(|c| (c.field.as_str(), c.message.to_ascii_lowercase()))
        .collect();
    if texts.is_empty() {
        // No causes: the field path is the prefix of the message ("...: spec.clusterIPs: ...").
        let message = status.message.to_ascii_lowercase();
        let field = if message.contains("spec.clusterip") {
            "spec.clusterIPs"
        } else {
            ""
        };
        texts.push((field, message));
    }
    let about_ip = |field: &str| field.starts_with("spec.clusterIP") || field.starts_with("spec.ipFamilies");
    for (field, message) in &texts {
        if !about_ip(field) {
            continue;
        }
        if message.contains("already allocated") {
            return Some(Verdict::Inside);
        }
        if message.contains("not configured") {
            return Some(Verdict::FamilyNotConfigured);
        }
    }
    let range_words = [
        "not in the valid range",
        "not within",
        "out of range",
        "not in range",
    ];
    let outside = status.is_invalid()
        && texts.iter().any(|(field, message)| {
            field.starts_with("spec.clusterIP")
                && !message.contains("is full")
                && (range_words.iter().any(|w| message.contains(w))
                    || ((message.contains("range") || message.contains("cidr"))
                        && message.contains("failed to allocate")))
        });
    outside.then_some(Verdict::Outside)
}

// ----------------------------------------------------------------------------------------------
// Probes (I/O)
// ----------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    #[error("{action} in namespace {namespace}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "probing ClusterIP {ip}: the API server refused the dry-run Service for an unexpected \
         reason ({code} {reason}): {message}"
    )]
    UnexpectedRejection {
        ip: IpAddr,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("probing ClusterIP {ip}: its IP family is not configured on the host cluster")]
    FamilyNotConfigured { ip: IpAddr },
    #[error("the host API server assigned no ClusterIP to a probe Service (clusterIPs: {cluster_ips:?})")]
    NoAnchor { cluster_ips: Vec<String> },
    #[error("no service network around {anchor}: every probe was outside (would be /31 or smaller)")]
    NoRange { anchor: IpAddr },
    #[error("deleting probe Service {namespace}/{name} (delete it by hand): {source}")]
    Cleanup {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Result of a detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub cidrs: ServiceCidrs,
    /// Read from the cache annotation (no probes were made).
    pub from_cache: bool,
    /// ClusterIP probes made (dry-run creates with a chosen IP).
    pub probes: u32,
    /// Every request made to the Services API, probes included.
    pub requests: u32,
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cidrs.fmt(f)
    }
}

/// Tests whether `ip` is inside the host's service range: a dry-run create of a ClusterIP
/// Service with `spec.clusterIP = ip` (nothing is persisted; needs `create` on services).
pub async fn probe_inside(api: &Api<Service>, ip: IpAddr) -> Result<bool, CidrError> {
    let service = probe_service(Some(ip), None, "dry-run");
    match api.create(&post_params(true), &service).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) => match classify_rejection(&status) {
            Some(Verdict::Inside) => Ok(true),
            Some(Verdict::Outside) => Ok(false),
            Some(Verdict::FamilyNotConfigured) => Err(CidrError::FamilyNotConfigured { ip }),
            None => Err(CidrError::UnexpectedRejection {
                ip,
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }),
        },
        Err(source) => Err(CidrError::Api {
            action: "dry-run creating a probe Service",
            namespace: api_namespace(api),
            source,
        }),
    }
}

/// Detects the host's service network(s) by probing from namespace `namespace` with dry-run
/// creates (needs `create` on services; the fallback [`real_service_anchors`] also `delete`).
/// Requests: 1 dry-run for the anchors, then 5 probes per IPv4 and 6 per IPv6 network.
pub async fn detect(client: Client, namespace: &str) -> Result<Detection, CidrError> {
    let api: Api<Service> = Api::namespaced(client, namespace);
    let (anchors, mut requests) = anchors(&api).await?;
    let mut cidrs = Vec::with_capacity(anchors.len());
    let mut probes = 0;
    for anchor in anchors {
        let mut search = PrefixSearch::new(anchor);
        while let Some(ip) = search.next_probe() {
            let inside = probe_inside(&api, ip).await?;
            tracing::debug!(%ip, inside, "service CIDR probe");
            search.record(inside);
        }
        probes += search.probes();
        let cidr = search.result().ok_or(CidrError::NoRange { anchor })?;
        tracing::info!(%anchor, %cidr, probes = search.probes(), "detected a host service network");
        cidrs.push(cidr);
    }
    requests += probes;
    // `anchors` gives one or two addresses of distinct families, so this always succeeds.
    let cidrs = ServiceCidrs::new(&cidrs).ok_or_else(|| CidrError::NoAnchor {
        cluster_ips: cidrs.iter().map(ToString::to_string).collect(),
    })?;
    Ok(Detection {
        cidrs,
        from_cache: false,
        probes,
        requests,
    })
}

/// Like [`detect`], but cached in the [`ANNOTATION_SERVICE_CIDR`] annotation of Service
/// `service_name` (the vcluster's host Service): read it when present and valid, otherwise
/// detect and merge-patch it there. A missing Service or a refused write only skips caching.
pub async fn detect_cached(
    client: Client,
    namespace: &str,
    service_name: &str,
) -> Result<Detection, CidrError> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let cache_service = match api.get_opt(service_name).await {
        Ok(Some(service)) => Some(service),
        Ok(None) => {
            tracing::warn!(
                service = service_name,
                "the Service does not exist; the result will not be cached"
            );
            None
        }
        Err(kube::Error::Api(status)) if status.is_forbidden() => {
            tracing::warn!(
                service = service_name,
                "not allowed to read the Service; the result will not be cached"
            );
            None
        }
        Err(source) => {
            return Err(CidrError::Api {
                action: "reading the cache Service",
                namespace: namespace.to_owned(),
                source,
            });
        }
    };
    let cached = cache_service
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(ANNOTATION_SERVICE_CIDR));
    if let Some(value) = cached {
        match value.parse::<ServiceCidrs>() {
            Ok(cidrs) => {
                tracing::info!(%cidrs, service = service_name, "host service CIDR from the cache annotation");
                return Ok(Detection {
                    cidrs,
                    from_cache: true,
                    probes: 0,
                    requests: 1,
                });
            }
            Err(e) => tracing::warn!(error = %e, "ignoring the invalid cache annotation; detecting again"),
        }
    }
    let mut detection = detect(client, namespace).await?;
    detection.requests += 1;
    if cache_service.is_none() {
        return Ok(detection);
    }
    let patch = serde_json::json!({
        "metadata": {"annotations": {ANNOTATION_SERVICE_CIDR: detection.cidrs.to_string()}}
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    detection.requests += 1;
    match api.patch(service_name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => tracing::info!(service = service_name, "cached the host service CIDR"),
        // The result is right either way; without the cache the next start probes again.
        Err(e) => tracing::warn!(service = service_name, error = %e, "could not cache the host service CIDR"),
    }
    Ok(detection)
}

/// One address inside each configured service network, primary family first, and the number
/// of requests made.
async fn anchors(api: &Api<Service>) -> Result<(Vec<IpAddr>, u32), CidrError> {
    // A dry-run create assigns ClusterIPs without persisting anything (v1.35 answers with the
    // network address of each range).
    let service = probe_service(None, Some("PreferDualStack"), "dry-run");
    let dry = api
        .create(&post_params(true), &service)
        .await
        .map_err(|source| CidrError::Api {
            action: "dry-run creating a probe Service",
            namespace: api_namespace(api),
            source,
        })?;
    let ips = cluster_ips(&dry);
    if let Some(anchors) = parse_anchors(&ips) {
        return Ok((anchors, 1));
    }
    tracing::info!(
        ?ips,
        "the dry-run Service got no ClusterIP; creating a real probe Service"
    );
    Ok((real_service_anchors(api).await?, 3))
}

/// The fallback of [`detect`] when a dry-run assigns no ClusterIP: creates a real ClusterIP
/// Service (`PreferDualStack`), reads its ClusterIPs (primary family first) and deletes it (UID
/// precondition), also when reading fails. Two requests; needs create and delete on services.
pub async fn real_service_anchors(api: &Api<Service>) -> Result<Vec<IpAddr>, CidrError> {
    let run = run_id();
    let service = probe_service(None, Some("PreferDualStack"), &run);
    let created = match api.create(&post_params(false), &service).await {
        Ok(created) => created,
        Err(source) => {
            if !matches!(source, kube::Error::Api(_)) {
                // The answer was lost: the Service may exist. Remove whatever this run created.
                sweep_run(api, &run).await;
            }
            return Err(CidrError::Api {
                action: "creating a probe Service",
                namespace: api_namespace(api),
                source,
            });
        }
    };
    let deleted = delete_exactly(api, &created).await;
    let ips = cluster_ips(&created);
    deleted.map_err(|source| CidrError::Cleanup {
        namespace: api_namespace(api),
        name: created.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    tracing::debug!(?ips, "ClusterIPs of a real probe Service");
    parse_anchors(&ips).ok_or(CidrError::NoAnchor { cluster_ips: ips })
}

/// Deletes `service` only if it is still the same object (UID precondition); gone is fine.
async fn delete_exactly(api: &Api<Service>, service: &Service) -> Result<(), kube::Error> {
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: service.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Best-effort removal of the probe Services labelled with this run's id.
async fn sweep_run(api: &Api<Service>, run: &str) {
    let namespace = api_namespace(api);
    let selector = format!("{LABEL_PROBE_RUN}={run}");
    let listed = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(
                %namespace, %selector, error = %e,
                "cannot list probe Services to clean up; delete them by hand"
            );
            return;
        }
    };
    for service in &listed.items {
        if let Err(e) = delete_exactly(api, service).await {
            tracing::warn!(
                %namespace, name = ?service.metadata.name, error = %e,
                "cannot delete a probe Service; delete it by hand"
            );
        }
    }
}

/// The Service used by every probe. `run` labels it (`dry-run` for dry-run creates).
fn probe_service(cluster_ip: Option<IpAddr>, family_policy: Option<&str>, run: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            generate_name: Some(PROBE_NAME_PREFIX.into()),
            labels: Some(BTreeMap::from([(LABEL_PROBE_RUN.to_owned(), run.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: cluster_ip.map(|ip| ip.to_string()),
            ip_family_policy: family_policy.map(str::to_owned),
            ports: Some(vec![ServicePort {
                name: Some("probe".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

fn cluster_ips(service: &Service) -> Vec<String> {
    let spec = service.spec.as_ref();
    let ips = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
    if ips.is_empty() {
        spec.and_then(|s| s.cluster_ip.clone()).into_iter().collect()
    } else {
        ips
    }
}

/// One address per family, in order, when every entry is an IP address (not `None` or empty).
fn parse_anchors(ips: &[String]) -> Option<Vec<IpAddr>> {
    let parsed: Vec<IpAddr> = ips.iter().map(|s| s.parse().ok()).collect::<Option<_>>()?;
    let distinct = match parsed.as_slice() {
        [_] => true,
        [a, b] => a.is_ipv6() != b.is_ipv6(),
        _ => false,
    };
    distinct.then_some(parsed)
}

fn api_namespace(api: &Api<Service>) -> String {
    api.namespace().unwrap_or_default().to_owned()
}

/// A label value unique enough per run (process id and clock); no randomness needed.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

// ----------------------------------------------------------------------------------------------
// CLI: `vnest detect-service-cidr`
// ----------------------------------------------------------------------------------------------

/// `vnest detect-service-cidr`: prints the host's service CIDR(s) to stdout, optionally writes
/// them to `--output`; progress goes to stderr (tracing).
pub async fn run_detect(args: DetectArgs) -> anyhow::Result<()> {
    let config = match &args.host_kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the host kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading the host kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context("loading the in-cluster config for the host cluster")?,
    };
    let mut config = config;
    crate::clients::set_user_agent(&mut config, "detect-service-cidr");
    let client = Client::try_from(config).context("building the host client")?;
    let namespace = match args.namespace {
        Some(namespace) => namespace,
        None => in_cluster_namespace()?,
    };
    tracing::info!(%namespace, service = %args.service_name, "detecting the host service CIDR");
    let detection = detect_cached(client, &namespace, &args.service_name).await?;
    tracing::info!(
        cidr = %detection.cidrs,
        from_cache = detection.from_cache,
        probes = detection.probes,
        requests = detection.requests,
        "host service CIDR"
    );
    if let Some(path) = &args.output {
        write_atomically(path, &format!("{}\n", detection.cidrs))
            .await
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", detection.cidrs);
    Ok(())
}

fn in_cluster_namespace() -> anyhow::Result<String> {
    let path = IN_CLUSTER_NAMESPACE_FILE;
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("no --namespace given and cannot read {path}"))?;
    parse_dns_label(raw.trim()).map_err(|reason| anyhow::anyhow!("{path}: {reason}"))
}

/// Writes `text` to a temporary file next to `path` and renames it over `path`, so a reader
/// never sees a partial file.
async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    /// A fake API server with service network `net`: the network and last addresses are
    /// reserved (Kubernetes allocates neither for IPv4, nor the network address for IPv6); the
    /// search must never need them, so probing them fails the test.
    fn simulate(net: IpCidr, anchor: IpAddr) -> (Option<IpCidr>, u32) {
        let mut probes = 0;
        let found = find_prefix(anchor, |p| {
            probes += 1;
            assert!(
                p != net.first() && p != net.last(),
                "probed reserved address {p} of {net}"
            );
            net.contains(p)
        });
        (found, probes)
    }

    #[rstest::rstest]
    #[case("10.96.0.0/12", "10.96.0.0")] // v1.35 dry-run answer: the network address
    #[case("10.96.0.0/12", "10.96.0.1")]
    #[case("10.96.0.0/12", "10.98.101.154")]
    #[case("10.96.0.0/12", "10.111.255.254")]
    #[case("10.43.0.0/16", "10.43.0.10")]
    #[case("10.43.0.0/16", "10.43.255.255")]
    #[case("172.20.0.0/24", "172.20.0.1")]
    #[case("172.20.0.0/24", "172.20.0.200")]
    #[case("192.168.0.0/30", "192.168.0.1")]
    #[case("192.168.0.0/30", "192.168.0.2")]
    #[case("100.64.0.0/10", "100.100.1.2")]
    #[case("10.0.0.0/8", "10.0.0.0")]
    #[case("128.0.0.0/1", "200.1.2.3")]
    #[case("0.0.0.0/0", "1.2.3.4")]
    fn finds_ipv4_networks_in_five_probes(#[case] net: &str, #[case] anchor: &str) {
        let net = cidr(net);
        let (found, probes) = simulate(net, ip(anchor));
        assert_eq!(found, Some(net));
        assert_eq!(probes, 5);
    }

    #[rstest::rstest]
    #[case("fd00::/108", "fd00::")]
    #[case("fd00::/108", "fd00::a")]
    #[case("fd00:10:96::/112", "fd00:10:96::ffff")]
    #[case("2001:db8:42::/112", "2001:db8:42::abcd")]
    #[case("fd00::/64", "fd00::1234:5678")]
    #[case("fd00::/126", "fd00::1")]
    fn finds_ipv6_networks_in_six_probes(#[case] net: &str, #[case] anchor: &str) {
        let net = cidr(net);
        let anchor = ip(anchor);
        let (found, probes) = simulate(net, anchor);
        assert_eq!(found, Some(net));
        assert_eq!(probes, 6);
    }

    #[test]
    fn networks_too_small_or_too_large_are_reported_as_such() {
        // /31 and /32 have no usable probe: no result.
        assert_eq!(simulate(cidr("10.0.0.0/31"), ip("10.0.0.0")).0, None);
        assert_eq!(simulate(cidr("10.0.0.7/32"), ip("10.0.0.7")).0, None);
        // IPv6 larger than /64 (refused by Kubernetes) reads as /64.
        assert_eq!(
            find_prefix(ip("fd00::1"), |p| cidr("fd00::/48").contains(p)),
            Some(cidr("fd00::/64"))
        );
    }

    #[test]
    fn probes_are_the_boundary_addresses_next_to_the_anchor_half() {
        // 10.96.0.0/12 from anchor 10.96.0.0 (lengths 0..=30, "none" = 31):
        // L=15: 10.96.0.0/15 minus 10.96.0.0/16 -> 10.97.0.0 inside  => P <= 15
        // L=7:  10.0.0.0/7 minus 10.0.0.0/8     -> 11.0.0.0 outside  => P >= 8
        // L=11: 10.96.0.0/11 minus 10.96.0.0/12 -> 10.112.0.0 outside => P >= 12
        // L=13: 10.96.0.0/13 minus 10.96.0.0/14 -> 10.100.0.0 inside  => P <= 13
        // L=12: 10.96.0.0/12 minus 10.96.0.0/13 -> 10.104.0.0 inside  => P = 12
        let net = cidr("10.96.0.0/12");
        let mut seen = Vec::new();
        let found = find_prefix(ip("10.96.0.0"), |p| {
            seen.push(p.to_string());
            net.contains(p)
        });
        assert_eq!(found, Some(net));
        assert_eq!(
            seen,
            ["10.97.0.0", "11.0.0.0", "10.112.0.0", "10.100.0.0", "10.104.0.0"]
        );
        // An anchor in the upper half probes the last address of the lower half.
        let mut seen = Vec::new();
        find_prefix(ip("10.111.255.254"), |p| {
            seen.push(p.to_string());
            net.contains(p)
        });
        assert_eq!(seen.first().map(String::as_str), Some("10.110.255.255"));
    }

    proptest! {
        #[test]
        fn any_ipv4_network_and_anchor(addr in any::<u32>(), prefix in 0u8..=30, host in any::<u32>()) {
            let net = IpCidr::new(IpAddr::V4(Ipv4Addr::from(addr)), prefix).unwrap();
            let (n, _) = to_bits(net.addr());
            let anchor = from_bits(n | (u128::from(host) & host_mask(prefix, 32)), false);
            let (found, probes) = simulate(net, anchor);
            prop_assert_eq!(found, Some(net));
            prop_assert_eq!(probes, 5);
        }

        #[test]
        fn any_ipv6_network_and_anchor(addr in any::<u128>(), prefix in 64u8..=126, host in any::<u128>()) {
            let net = IpCidr::new(IpAddr::V6(Ipv6Addr::from(addr)), prefix).unwrap();
            let (n, _) = to_bits(net.addr());
            let anchor = from_bits(n | (host & host_mask(prefix, 128)), true);
            let (found, probes) = simulate(net, anchor);
            prop_assert_eq!(found, Some(net));
            prop_assert_eq!(probes, 6);
        }
    }

    #[test]
    fn cidr_parsing_and_display() {
        assert_eq!(cidr("10.96.0.0/12").to_string(), "10.96.0.0/12");
        assert_eq!(cidr("fd00:10:96::/112").to_string(), "fd00:10:96::/112");
        assert!("10.96.0.1/12".parse::<IpCidr>().is_err());
        assert!("10.96.0.0/33".parse::<IpCidr>().is_err());
        assert!("10.96.0.0".parse::<IpCidr>().is_err());
        assert_eq!(IpCidr::new(ip("10.98.101.154"), 12), Some(cidr("10.96.0.0/12")));
        assert_eq!(cidr("10.96.0.0/12").last(), ip("10.111.255.255"));
        assert_eq!(cidr("0.0.0.0/0").last(), ip("255.255.255.255"));
        assert_eq!(cidr("::/0").last(), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));

        let dual: ServiceCidrs = "10.96.0.0/12,fd00::/108".parse().unwrap();
        assert_eq!(dual.to_string(), "10.96.0.0/12,fd00::/108");
        assert_eq!(dual.primary(), cidr("10.96.0.0/12"));
        assert!("10.96.0.0/12,10.0.0.0/8".parse::<ServiceCidrs>().is_err());
        assert!("".parse::<ServiceCidrs>().is_err());
    }

    fn status(json: serde_json::Value) -> Status {
        serde_json::from_value(json).unwrap()
    }

    /// Verbatim from kube-apiserver v1.35.4 (dry-run create, namespaced ServiceAccount).
    #[test]
    fn classifies_the_real_v1_35_answers() {
        let out_of_range = status(serde_json::json!({
            "kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"Service \"vnest-cidr-probe-hx66g\" is invalid: spec.clusterIPs: Invalid value: [\"4.4.4.4\"]: failed to allocate IP 4.4.4.4: the provided IP (4.4.4.4) is not in the valid range. The range of valid IPs is 10.96.0.0/12",
            "reason":"Invalid",
            "details":{"name":"vnest-cidr-probe-hx66g","kind":"Service","causes":[{"reason":"FieldValueInvalid","message":"Invalid value: [\"4.4.4.4\"]: failed to allocate IP 4.4.4.4: the provided IP (4.4.4.4) is not in the valid range. The range of valid IPs is 10.96.0.0/12","field":"spec.clusterIPs"}]},
            "code":422}));
        assert_eq!(classify_rejection(&out_of_range), Some(Verdict::Outside));

        let v6_ip = status(serde_json::json!({
            "kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"Service \"vnest-cidr-probe-797sk\" is invalid: spec.clusterIPs[0]: Invalid value: [\"fd00::1\"]: IPv6 is not configured on this cluster",
            "reason":"Invalid",
            "details":{"name":"vnest-cidr-probe-797sk","kind":"Service","causes":[{"reason":"FieldValueInvalid","message":"Invalid value: [\"fd00::1\"]: IPv6 is not configured on this cluster","field":"spec.clusterIPs[0]"}]},
            "code":422}));
        assert_eq!(classify_rejection(&v6_ip), Some(Verdict::FamilyNotConfigured));

        let v6_family = status(serde_json::json!({
            "kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"Service \"vnest-cidr-probe-vwbhn\" is invalid: spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster",
            "reason":"Invalid",
            "details":{"name":"vnest-cidr-probe-vwbhn","kind":"Service","causes":[{"reason":"FieldValueInvalid","message":"Invalid value: \"IPv6\": not configured on this cluster","field":"spec.ipFamilies[0]"}]},
            "code":422}));
        assert_eq!(classify_rejection(&v6_family), Some(Verdict::FamilyNotConfigured));
    }

    #[test]
    fn classifies_other_releases_and_refuses_unknown_answers() {
        let invalid = |field: &str, message: &str| {
            status(serde_json::json!({
                "status":"Failure","reason":"Invalid","code":422,"message": format!("Service \"x\" is invalid: {field}: {message}"),
                "details":{"causes":[{"reason":"FieldValueInvalid","field":field,"message":message}]}
            }))
        };
        // Newer releases no longer print the range.
        let newer = invalid(
            "spec.clusterIPs",
            "Invalid value: [\"4.4.4.4\"]: failed to allocate IP 4.4.4.4: provided IP 4.4.4.4 is not in the valid range",
        );
        assert_eq!(classify_rejection(&newer), Some(Verdict::Outside));
        let cidr_wording = invalid(
            "spec.clusterIP",
            "Invalid value: \"4.4.4.4\": failed to allocate IP 4.4.4.4: not within the service CIDR",
        );
        assert_eq!(classify_rejection(&cidr_wording), Some(Verdict::Outside));
        let allocated = invalid(
            "spec.clusterIPs",
            "Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: provided IP is already allocated",
        );
        assert_eq!(classify_rejection(&allocated), Some(Verdict::Inside));
        // Causes missing: the message alone.
        let bare = status(serde_json::json!({
            "status":"Failure","reason":"Invalid","code":422,
            "message":"Service \"x\" is invalid: spec.clusterIPs: Invalid value: [\"4.4.4.4\"]: failed to allocate IP 4.4.4.4: provided IP 4.4.4.4 is not in the valid range"
        }));
        assert_eq!(classify_rejection(&bare), Some(Verdict::Outside));

        // Anything else is not a verdict about the IP.
        let not_ready = invalid(
            "spec.clusterIPs",
            "Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: allocator not ready",
        );
        assert_eq!(classify_rejection(&not_ready), None);
        let full = invalid("spec.clusterIPs", "failed to allocate a serviceIP: range is full");
        assert_eq!(classify_rejection(&full), None);
        let ports = invalid(
            "spec.ports[0].port",
            "Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        assert_eq!(classify_rejection(&ports), None);
        let forbidden = status(serde_json::json!({
            "status":"Failure","reason":"Forbidden","code":403,
            "message":"services is forbidden: User \"x\" cannot create resource \"services\" in API group \"\" in the namespace \"y\""
        }));
        assert_eq!(classify_rejection(&forbidden), None);
        let webhook = status(serde_json::json!({
            "status":"Failure","reason":"","code":400,
            "message":"admission webhook \"policy.example.com\" does not support dry run"
        }));
        assert_eq!(classify_rejection(&webhook), None);
    }

    #[test]
    fn probe_services_are_minimal_and_labelled() {
        let svc = probe_service(Some(ip("10.96.0.5")), None, "dry-run");
        let json = serde_json::to_value(&svc).unwrap();
        assert_eq!(json["metadata"]["generateName"], PROBE_NAME_PREFIX);
        assert_eq!(json["metadata"]["labels"][LABEL_PROBE_RUN], "dry-run");
        assert_eq!(json["spec"]["clusterIP"], "10.96.0.5");
        assert_eq!(json["spec"]["type"], "ClusterIP");
        assert_eq!(json["spec"]["ports"][0]["port"], 80);
        assert!(json["spec"].get("selector").is_none());
    }

    #[test]
    fn anchors_take_one_address_per_family_in_order() {
        let ips = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_anchors(&ips(&["10.96.0.0"])), Some(vec![ip("10.96.0.0")]));
        assert_eq!(
            parse_anchors(&ips(&["fd00::", "10.96.0.0"])),
            Some(vec![ip("fd00::"), ip("10.96.0.0")])
        );
        assert_eq!(parse_anchors(&ips(&["None"])), None);
        assert_eq!(parse_anchors(&ips(&[""])), None);
        assert_eq!(parse_anchors(&ips(&[])), None);
        assert_eq!(parse_anchors(&ips(&["10.96.0.0", "None"])), None);
        assert_eq!(parse_anchors(&ips(&["10.96.0.0", "10.97.0.0"])), None);
    }

    #[tokio::test]
    async fn output_files_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("vnest-cidr-test-{}", run_id()));
        let path = dir.join("sub/service-cidr");
        write_atomically(&path, "10.96.0.0/12\n").await.unwrap();
        write_atomically(&path, "10.43.0.0/16\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "10.43.0.0/16\n");
        assert!(!dir.join("sub/service-cidr.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_ids_are_label_values() {
        let id = run_id();
        assert!(id.len() <= 63);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
