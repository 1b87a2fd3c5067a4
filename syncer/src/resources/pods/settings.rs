//! The pod kind's settings: its command-line flags ([`PodArgs`], flattened into the syncer's
//! flags) and the validated values the pod translation reads ([`PodSettings`]).

use crate::naming::parse_dns_label;

/// What may escape the namespace sandbox on the host (hostNetwork, hostPID, hostIPC,
/// hostPath volumes, privileged containers, hostPorts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostAccessPolicy {
    /// Refuse such pods with a Warning Event (default).
    Deny,
    /// Pass them to the host unchanged (host admission, e.g. Pod Security, still applies).
    Allow,
}

/// Where the host copy of a pod gets its virtual ServiceAccount tokens from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenStorage {
    /// In annotations of the host pod itself, projected by the downward API: no extra host
    /// object, so a pod costs one create and one delete (default; as vcluster does). Anyone who
    /// can read pods in the host namespace can read the (short-lived, virtual-only) tokens.
    Annotation,
    /// In a Secret per pod, owned by the host pod: readable only with Secret access on the
    /// host, at the price of one more host write per pod.
    Secret,
}

/// Flags of the pod kind.
#[derive(Debug, clap::Args)]
pub struct PodArgs {
    /// Host ServiceAccount synced pods run as (no token is mounted from it)
    /// [default: <name>-workload].
    #[arg(long, env = "VNEST_WORKLOAD_SERVICE_ACCOUNT", value_parser = parse_dns_label)]
    pub workload_service_account: Option<String>,

    /// Pods that would escape the namespace sandbox (hostNetwork, hostPID, hostIPC, hostPath,
    /// privileged, hostPort): `deny` refuses them with a Warning Event, `allow` passes them on.
    #[arg(long, env = "VNEST_HOST_ACCESS", value_enum, default_value = "deny")]
    pub host_access: HostAccessPolicy,

    /// Where synced pods get their virtual ServiceAccount tokens: `annotation` (on the host pod,
    /// no extra host object) or `secret` (a host Secret per pod; one more write per pod, but
    /// host users who may read pods and not Secrets cannot read the tokens).
    #[arg(
        long,
        env = "VNEST_POD_TOKEN_STORAGE",
        value_enum,
        default_value = "annotation"
    )]
    pub pod_token_storage: TokenStorage,
}

/// What the pod translation needs from the command line: plain data, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    /// Host ServiceAccount every synced pod runs as (no token mounted).
    pub workload_service_account: String,
    /// The virtual cluster's DNS domain (`--cluster-domain`, shared with the DNS server): the
    /// search path and `/etc/hosts` names of synced pods.
    pub cluster_domain: String,
    pub host_access: HostAccessPolicy,
    pub token_storage: TokenStorage,
}

impl PodArgs {
    /// The validated settings of vcluster `vcluster`, whose DNS domain is `cluster_domain`.
    pub fn into_settings(self, vcluster: &str, cluster_domain: &str) -> PodSettings {
        let Self {
            workload_service_account,
            host_access,
            pod_token_storage,
        } = self;
        PodSettings {
            workload_service_account: workload_service_account
                .unwrap_or_else(|| format!("{vcluster}-workload")),
            cluster_domain: cluster_domain.to_owned(),
            host_access,
            token_storage: pod_token_storage,
        }
    }
}

#[cfg(test)]
impl PodSettings {
    /// Settings for unit tests: the defaults of vcluster `vc`.
    pub fn test() -> Self {
        Self {
            workload_service_account: "vc-workload".into(),
            cluster_domain: "cluster.local".into(),
            host_access: HostAccessPolicy::Deny,
            token_storage: TokenStorage::Annotation,
        }
    }
}
