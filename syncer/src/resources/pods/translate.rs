//! Pure pod translation: virtual pod -> host pod at create, the patch that keeps the mutable
//! fields of an existing host pod in line, and status / node binding back to the virtual pod.
//!
//! Everything here is pure: no client, no clock, no randomness. The engine looks up what the
//! translation needs (the virtual namespace's labels, the [`TranslateCtx`]) and executes what
//! these functions decide.
//!
//! Summary of the create translation ([`host_pod`]):
//! - **Escape policy**: with [`HostAccessPolicy::Deny`], pods using hostNetwork, hostPID,
//!   hostIPC, hostPath volumes, privileged containers or hostPorts are refused, naming every
//!   offending field.
//! - **References** to ConfigMaps, Secrets and PVCs of the virtual namespace are renamed with
//!   [`naming::host_name`] (volumes, projections, env, envFrom, imagePullSecrets, the secret
//!   references of CSI / AzureFile / CephFS / RBD / iSCSI / FlexVolume / Cinder / ScaleIO /
//!   StorageOS volumes, the Glusterfs endpoints name).
//! - **ServiceAccount tokens**: every projected `serviceAccountToken` source becomes, with
//!   [`TokenStorage::Annotation`], a downward-API projection of the host pod's own annotation
//!   [`token_annotation`]; with [`TokenStorage::Secret`], a `secret` projection from the host
//!   Secret [`token_secret_name`] (key [`token_key`]). The engine fills either with tokens
//!   requested from the VIRTUAL API server ([`token_requests`]). The host pod runs as the
//!   workload ServiceAccount with no host token mounted.
//! - **Environment**: `KUBERNETES_*` variables pointing at the vcluster's API Service are
//!   prepended; `enableServiceLinks` is off on the host (host Services must not leak in; the
//!   service-link variables of VIRTUAL Services come in a later issue).
//! - **Downward API**: fieldRefs to the virtual identity are redirected to annotations holding
//!   the virtual values.
//! - **DNS**: cluster-first pods resolve through the vcluster's DNS server with the virtual
//!   search path.
//! - **Scheduling**: pod (anti-)affinity and topology spread selectors only ever match pods of
//!   the same vcluster (and the intended virtual namespaces); priority classes are not synced
//!   yet, so priority fields are cleared.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, ContainerStatus, DownwardAPIProjection, DownwardAPIVolumeFile,
    EnvFromSource, EnvVar, EphemeralContainer, HostAlias, KeyToPath, LocalObjectReference,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodCondition, PodDNSConfig,
    PodDNSConfigOption, PodSpec, PodStatus, SecretProjection, SecurityContext, Toleration,
    TopologySpreadConstraint, Volume, VolumeProjection, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use serde_json::{Map, Value, json};

use crate::engine::error::TranslateError;
use crate::engine::plan;
use crate::engine::{HostAccessPolicy, TokenStorage, TranslateCtx};
use crate::{markers, naming};

/// Annotation on the host pod: the virtual labels in the kubelet's downward-API format
/// (sorted lines `key="<escaped value>"` joined by '\n'), target of `metadata.labels` fieldRefs.
pub const ANNOTATION_VIRTUAL_LABELS: &str = "vnest.dev/labels";
/// Annotation: the virtual ServiceAccount name (target of `spec.serviceAccountName` fieldRefs).
pub const ANNOTATION_SERVICE_ACCOUNT: &str = "vnest.dev/service-account-name";
/// Annotation on the host pod: JSON array of the virtual pod's ownerReferences (when any).
pub const ANNOTATION_OWNER_REFERENCES: &str = "vnest.dev/owner-references";

/// Lifetime of a projected token when the source sets none (the kubelet's default, 1h + 7s).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// ServiceAccount of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Kind recorded in the host pod's markers.
const KIND: &str = "Pod";
/// Port of the vcluster's API Service (KUBERNETES_SERVICE_PORT of synced pods).
const KUBE_SERVICE_PORT: &str = "443";
/// Maximum length of a DNS label (hostname, object names).
const MAX_LABEL_LEN: usize = 63;
/// Length of [`naming::short_hash`] output.
const HASH_LEN: usize = 10;
/// Infix of [`token_secret_name`].
const TOKEN_SECRET_INFIX: &str = "-token-";
/// Readable part used when a pod name leaves nothing readable (never for valid pod names).
const FALLBACK_READABLE: &str = "vnest";
/// `ndots` option of synced pods' DNS config (the kubelet's value for cluster-first pods).
const DNS_NDOTS: &str = "5";

/// Inputs the pod translation needs besides TranslateCtx.
#[derive(Debug, Clone, Copy)]
pub struct PodInputs<'a> {
    pub ctx: &'a TranslateCtx,
    /// Labels of the pod's virtual Namespace (copied onto the host pod under
    /// markers::namespace_label_key(vcluster, key) so namespaceSelectors can be translated later).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The virtual Services of the pod's namespace (for the kubelet-style service-link
    /// variables when the pod has `enableServiceLinks`).
    pub services: &'a [k8s_openapi::api::core::v1::Service],
}

/// One projected ServiceAccount token the host pod needs (from the virtual pod's projected
/// volumes' serviceAccountToken sources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSpec {
    /// Key in the token Secret ([`token_secret_name`]): see [`token_key`].
    pub key: String,
    /// Audience of the source; `None` when unset (or empty): the API server's default audiences.
    pub audience: Option<String>,
    /// Requested lifetime: the source's `expirationSeconds`, else
    /// [`DEFAULT_TOKEN_EXPIRATION_SECONDS`] like the kubelet.
    pub expiration_seconds: i64,
}

/// ConfigMaps and Secrets (names in the pod's virtual namespace) the pod references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRefs {
    pub configmaps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Name of the host Secret holding the ServiceAccount token(s) of virtual pod
/// `namespace/pod_name` of vcluster `vcluster`.
///
/// Rule: `<readable>-token-<short_hash(&[vcluster, namespace, pod_name, "sa-token"])>` where
/// `<readable>` is the pod name lowercased with every character outside `[a-z0-9-]` mapped to
/// `-`, cut to 46 characters and trimmed of `-` (`vnest` when nothing is left). At most 63
/// characters, a DNS-1123 label. It never equals a [`naming::host_name`] of a tenant object
/// except by a hash collision: tenant names hash a 3-part tuple, this hashes 4 parts.
pub fn token_secret_name(vcluster: &str, namespace: &str, pod_name: &str) -> String {
    let budget = MAX_LABEL_LEN - TOKEN_SECRET_INFIX.len() - HASH_LEN;
    let sanitized: String = pod_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(budget)
        .collect();
    let trimmed = sanitized.trim_matches('-');
    let readable = if trimmed.is_empty() {
        FALLBACK_READABLE
    } else {
        trimmed
    };
    let hash = naming::short_hash(&[vcluster, namespace, pod_name, "sa-token"]);
    format!("{readable}{TOKEN_SECRET_INFIX}{hash}")
}

/// Key in the token Secret of the token for source number `source_index` (0-based, counted over
/// ALL sources of the projected volume) of the projected volume `volume`:
/// `<volume>.<source_index>`, e.g. `kube-api-access-x7k2p.0`. Volume names are DNS labels
/// (no `.`) and unique within a pod, so keys are unique and valid Secret keys.
pub fn token_key(volume: &str, source_index: usize) -> String {
    format!("{volume}.{source_index}")
}

/// Prefix of [`token_annotation`].
pub const TOKEN_ANNOTATION_PREFIX: &str = "vnest.dev/token-";

/// Host pod annotation holding the token of [`token_key`] `key` (with
/// [`TokenStorage::Annotation`]): `vnest.dev/token-<short_hash(key)>`, a valid annotation key
/// whatever the volume name's length.
pub fn token_annotation(key: &str) -> String {
    format!(
        "{TOKEN_ANNOTATION_PREFIX}{}",
        naming::short_hash(&[key, "sa-token"])
    )
}

/// Whether the host pod reads its tokens from its own annotations (it was created with
/// [`TokenStorage::Annotation`]); pods created with the other storage keep theirs for life.
pub fn uses_annotation_tokens(hpod: &Pod) -> bool {
    let field = format!("metadata.annotations['{TOKEN_ANNOTATION_PREFIX}");
    hpod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.downward_api.as_ref())
        .flat_map(|d| d.items.iter().flatten())
        .any(|i| {
            i.field_ref
                .as_ref()
                .is_some_and(|f| f.field_path.starts_with(&field))
        })
}

/// What the cache of HOST pods keeps (memory: a host pod is mostly fields nobody reads back).
/// Readers use the metadata, `status`, `spec.nodeName`, container names and images,
/// tolerations, scheduling gates, `activeDeadlineSeconds`, volumes and ephemeral container
/// names. Dropped: container env/command/args/probes/mounts/resources, affinity, DNS config,
/// host aliases, security contexts, and the VALUES of token annotations (their keys stay, so a
/// metadata diff never sees them missing; the server keeps the values).
pub fn trim_cached_host_pod(pod: &mut Pod) {
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        for (key, value) in annotations.iter_mut() {
            if key.starts_with(TOKEN_ANNOTATION_PREFIX)
                && key != crate::resources::pods::sync::ANNOTATION_TOKEN_REFRESH_AT
            {
                value.clear();
            }
        }
    }
    let Some(spec) = pod.spec.as_mut() else { return };
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.env = None;
        c.env_from = None;
        c.command = None;
        c.args = None;
        c.volume_mounts = None;
        c.volume_devices = None;
        c.liveness_probe = None;
        c.readiness_probe = None;
        c.startup_probe = None;
        c.lifecycle = None;
        c.resources = None;
        c.security_context = None;
        c.ports = None;
    }
    for c in spec.ephemeral_containers.iter_mut().flatten() {
        c.env = None;
        c.env_from = None;
        c.command = None;
        c.args = None;
        c.volume_mounts = None;
    }
    spec.affinity = None;
    spec.topology_spread_constraints = None;
    spec.dns_config = None;
    spec.host_aliases = None;
    spec.security_context = None;
}

/// The projected ServiceAccount tokens the host pod needs, in volume order then source order.
pub fn token_requests(vpod: &Pod) -> Vec<TokenRequestSpec> {
    let volumes = vpod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    volumes
        .iter()
        .flat_map(|volume| {
            let sources = volume
                .projected
                .as_ref()
                .and_then(|p| p.sources.as_deref())
                .unwrap_or_default();
            sources.iter().enumerate().filter_map(|(index, source)| {
                let token = source.service_account_token.as_ref()?;
                Some(TokenRequestSpec {
                    key: token_key(&volume.name, index),
                    audience: token.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: token
                        .expiration_seconds
                        .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
                })
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

/// ConfigMaps and Secrets (names in the pod's virtual namespace) the pod references: env
/// valueFrom configMapKeyRef/secretKeyRef, envFrom, configMap/secret volumes, projected
/// configMap/secret sources, imagePullSecrets (in containers, initContainers AND
/// ephemeralContainers), plus the secret references of CSI / AzureFile / CephFS / RBD / iSCSI /
/// FlexVolume / Cinder / ScaleIO / StorageOS volumes (which [`host_pod`] renames too, so they
/// must be synced as well).
pub fn references(vpod: &Pod) -> PodRefs {
    collect_references(vpod, false)
}

/// The ConfigMaps and Secrets the pod cannot start without: like [`references`], minus those
/// marked `optional: true` and imagePullSecrets (a missing pull secret only matters for
/// private images, and the kubelet reports it itself).
pub fn required_references(vpod: &Pod) -> PodRefs {
    collect_references(vpod, true)
}

fn collect_references(vpod: &Pod, required_only: bool) -> PodRefs {
    let mut refs = PodRefs::default();
    let Some(spec) = vpod.spec.as_ref() else {
        return refs;
    };
    let wanted = |optional: Option<bool>| !(required_only && optional == Some(true));
    for container in all_containers(spec) {
        let (env, env_from) = container.env();
        for var in env.into_iter().flatten() {
            let Some(from) = var.value_from.as_ref() else {
                continue;
            };
            if let Some(cm) = from.config_map_key_ref.as_ref().filter(|r| wanted(r.optional)) {
                refs.configmaps.insert(cm.name.clone());
            }
            if let Some(secret) = from.secret_key_ref.as_ref().filter(|r| wanted(r.optional)) {
                refs.secrets.insert(secret.name.clone());
            }
        }
        for source in env_from.into_iter().flatten() {
            if let Some(cm) = source.config_map_ref.as_ref().filter(|r| wanted(r.optional)) {
                refs.configmaps.insert(cm.name.clone());
            }
            if let Some(secret) = source.secret_ref.as_ref().filter(|r| wanted(r.optional)) {
                refs.secrets.insert(secret.name.clone());
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = volume.config_map.as_ref().filter(|r| wanted(r.optional)) {
            refs.configmaps.insert(cm.name.clone());
        }
        if let Some(name) = volume
            .secret
            .as_ref()
            .filter(|r| wanted(r.optional))
            .and_then(|s| s.secret_name.as_ref())
        {
            refs.secrets.insert(name.clone());
        }
        let sources = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_deref())
            .unwrap_or_default();
        for source in sources {
            if let Some(cm) = source.config_map.as_ref().filter(|r| wanted(r.optional)) {
                refs.configmaps.insert(cm.name.clone());
            }
            if let Some(secret) = source.secret.as_ref().filter(|r| wanted(r.optional)) {
                refs.secrets.insert(secret.name.clone());
            }
        }
        refs.secrets
            .extend(volume_secret_refs(volume).into_iter().map(str::to_owned));
    }
    if !required_only {
        for secret in spec.image_pull_secrets.iter().flatten() {
            refs.secrets.insert(secret.name.clone());
        }
    }
    refs
}

#[cfg(test)]
mod service_link_tests {
    use super::*;

    #[test]
    fn service_links_follow_the_kubelet_naming() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-db", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}
        }))
        .unwrap();
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hl", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}
        }))
        .unwrap();
        let env = with_service_links(kubernetes_env("10.96.0.1"), &[svc, headless]);
        let get = |k: &str| env.iter().find(|v| v.name == k).and_then(|v| v.value.clone());
        assert_eq!(get("MY_DB_SERVICE_HOST").as_deref(), Some("10.96.3.4"));
        assert_eq!(get("MY_DB_SERVICE_PORT").as_deref(), Some("5432"));
        assert_eq!(get("MY_DB_SERVICE_PORT_PG").as_deref(), Some("5432"));
        assert_eq!(get("MY_DB_PORT").as_deref(), Some("tcp://10.96.3.4:5432"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR").as_deref(), Some("10.96.3.4"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_PROTO").as_deref(), Some("tcp"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST").as_deref(), Some("10.96.0.1"));
        assert!(get("HL_SERVICE_HOST").is_none(), "headless Services get no links");
        let mut names: Vec<&str> = env.iter().map(|v| v.name.as_str()).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.dedup();
        assert_eq!(names.len(), env.len(), "no duplicates");
    }
}

#[cfg(test)]
mod required_refs_tests {
    use super::*;

    #[test]
    fn optional_references_and_pull_secrets_are_not_required() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "imagePullSecrets": [{"name": "pull"}],
                "containers": [{"name": "c", "image": "i", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "must", "key": "k"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "maybe", "key": "k", "optional": true}}}
                ]}],
                "volumes": [{"name": "v", "configMap": {"name": "opt-cm", "optional": true}},
                            {"name": "w", "configMap": {"name": "req-cm"}}]
            }
        }))
        .unwrap();
        let all = references(&pod);
        assert!(all.secrets.contains("pull") && all.secrets.contains("maybe"));
        let req = required_references(&pod);
        assert_eq!(req.secrets.iter().collect::<Vec<_>>(), ["must"]);
        assert_eq!(req.configmaps.iter().collect::<Vec<_>>(), ["req-cm"]);
    }
}

/// Names of the Secrets referenced by the "plugin" volume sources (not secret volumes).
fn volume_secret_refs(volume: &Volume) -> Vec<&str> {
    fn local(r: Option<&LocalObjectReference>) -> Option<&str> {
        r.map(|r| r.name.as_str())
    }
    [
        local(
            volume
                .csi
                .as_ref()
                .and_then(|v| v.node_publish_secret_ref.as_ref()),
        ),
        volume.azure_file.as_ref().map(|v| v.secret_name.as_str()),
        local(volume.cephfs.as_ref().and_then(|v| v.secret_ref.as_ref())),
        local(volume.rbd.as_ref().and_then(|v| v.secret_ref.as_ref())),
        local(volume.iscsi.as_ref().and_then(|v| v.secret_ref.as_ref())),
        local(volume.flex_volume.as_ref().and_then(|v| v.secret_ref.as_ref())),
        local(volume.cinder.as_ref().and_then(|v| v.secret_ref.as_ref())),
        volume.scale_io.as_ref().map(|v| v.secret_ref.name.as_str()),
        local(volume.storageos.as_ref().and_then(|v| v.secret_ref.as_ref())),
    ]
    .into_iter()
    .flatten()
    .filter(|name| !name.is_empty())
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

/// The full host pod to CREATE for virtual pod `vpod`.
///
/// Metadata: name [`naming::host_name`], the host namespace, labels/annotations from
/// [`plan::desired_metadata`] (our markers, the virtual labels and annotations, the namespace
/// labels under [`markers::namespace_label_key`], and the [`ANNOTATION_VIRTUAL_LABELS`] /
/// [`ANNOTATION_SERVICE_ACCOUNT`] / [`ANNOTATION_OWNER_REFERENCES`] annotations),
/// ownerReferences `[ctx.owner]`; no uid, resourceVersion, generateName, finalizers,
/// managedFields or creationTimestamp. Status `None`.
///
/// Spec: see the module documentation and the rules on each helper. Notable choices:
/// - `ephemeralContainers` are NOT part of the create: the API server refuses a pod created with
///   them ("cannot be set on create"); they go through the `ephemeralcontainers` subresource
///   with [`ephemeral_containers_patch`] once the host pod exists.
/// - `subdomain` is removed (the host has no headless Service of that name; DNS for it comes
///   with the networking issue); `hostname` defaults to the virtual pod name.
/// - `priorityClassName`, `priority` and `preemptionPolicy` are cleared (no priority-class sync
///   yet; the host's Priority admission rejects a `preemptionPolicy` that differs from the one it
///   computes, so it must be left to the host).
/// - `enableServiceLinks` is off: host Services must not leak into tenant pods; the service-link
///   variables of the VIRTUAL Services come in a later issue.
///
/// Errors: [`TranslateError::Refused`] when the host-access policy denies the pod (naming every
/// offending field), or when the virtual pod lacks name, namespace, uid or spec.
pub fn host_pod(input: &PodInputs, vpod: &Pod) -> Result<Pod, TranslateError> {
    let ctx = input.ctx;
    let (namespace, name) = identity(vpod)?;
    let spec = vpod
        .spec
        .as_ref()
        .ok_or_else(|| TranslateError::Refused(format!("virtual pod {namespace}/{name} has no spec")))?;
    check_host_access(ctx.host_access, &host_access_offenders(spec))?;

    let (labels, annotations) = desired_meta(input, vpod, &ObjectMeta::default());
    let metadata = ObjectMeta {
        name: Some(naming::host_name(&ctx.vcluster, namespace, name)),
        namespace: Some(ctx.host_namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![ctx.owner.clone()]),
        ..ObjectMeta::default()
    };
    Ok(Pod {
        metadata,
        spec: Some(host_spec(ctx, namespace, name, spec, input.services)),
        status: None,
    })
}

/// `(namespace, name)` of the virtual pod; refuses pods without name, namespace or uid (the
/// host copy could not be marked as ours).
fn identity(vpod: &Pod) -> Result<(&str, &str), TranslateError> {
    let meta = &vpod.metadata;
    let missing = |field: &str| TranslateError::Refused(format!("virtual pod has no metadata.{field}"));
    let name = meta
        .name
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("name"))?;
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("namespace"))?;
    meta.uid
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("uid"))?;
    Ok((namespace, name))
}

/// The host spec of a virtual pod spec (see [`host_pod`]).
fn host_spec(
    ctx: &TranslateCtx,
    namespace: &str,
    pod_name: &str,
    vspec: &PodSpec,
    services: &[k8s_openapi::api::core::v1::Service],
) -> PodSpec {
    let names = Renamer {
        vcluster: &ctx.vcluster,
        namespace,
        token_storage: ctx.token_storage,
    };
    let kube_env = if vspec.enable_service_links == Some(false) {
        kubernetes_env(&ctx.kube_service_ip)
    } else {
        with_service_links(kubernetes_env(&ctx.kube_service_ip), services)
    };
    let mut spec = vspec.clone();

    for volume in spec.volumes.iter_mut().flatten() {
        translate_volume(&names, pod_name, volume);
    }
    for container in spec.containers.iter_mut() {
        translate_container(&names, &kube_env, container);
    }
    for container in spec.init_containers.iter_mut().flatten() {
        translate_container(&names, &kube_env, container);
    }
    // Refused on create by the API server: added later through the subresource.
    spec.ephemeral_containers = None;
    for secret in spec.image_pull_secrets.iter_mut().flatten() {
        names.rename(&mut secret.name);
    }

    // ServiceAccount: the host pod runs as the workload SA with no host token.
    spec.service_account_name = Some(ctx.workload_service_account.clone());
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);

    // Service links of host Services must not leak in (virtual ones: later issue).
    spec.enable_service_links = Some(false);

    translate_dns(ctx, namespace, &mut spec);

    if spec.hostname.as_deref().is_none_or(str::is_empty) {
        spec.hostname = Some(default_hostname(pod_name));
    }
    // No headless Service of that name on the host; DNS for it comes with networking.
    spec.subdomain = None;

    // No priority-class sync yet: let the host decide priority and preemption.
    spec.priority_class_name = None;
    spec.priority = None;
    spec.preemption_policy = None;

    if let Some(affinity) = spec.affinity.as_mut() {
        translate_affinity(&ctx.vcluster, namespace, affinity);
    }
    for constraint in spec.topology_spread_constraints.iter_mut().flatten() {
        translate_spread_constraint(&ctx.vcluster, namespace, constraint);
    }

    spec.host_aliases
        .get_or_insert_with(Vec::new)
        .push(kubernetes_host_alias(ctx));
    spec
}

/// Renames references to objects of one virtual namespace.
struct Renamer<'a> {
    vcluster: &'a str,
    namespace: &'a str,
    token_storage: TokenStorage,
}

impl Renamer<'_> {
    fn name(&self, name: &str) -> String {
        naming::host_name(self.vcluster, self.namespace, name)
    }

    fn rename(&self, name: &mut String) {
        *name = self.name(name);
    }

    fn rename_ref(&self, reference: Option<&mut LocalObjectReference>) {
        if let Some(reference) = reference.filter(|r| !r.name.is_empty()) {
            self.rename(&mut reference.name);
        }
    }
}

/// Renames the object references of one volume, replaces ServiceAccount token projections by
/// the token Secret, rewrites downward-API items and turns ephemeral volumes into claims of the
/// PVC the virtual ephemeral-volume controller creates (`<pod>-<volume>`).
fn translate_volume(names: &Renamer<'_>, pod_name: &str, volume: &mut Volume) {
    let vc = names.vcluster;
    if let Some(cm) = volume.config_map.as_mut() {
        names.rename(&mut cm.name);
    }
    if let Some(secret_name) = volume.secret.as_mut().and_then(|s| s.secret_name.as_mut()) {
        names.rename(secret_name);
    }
    if let Some(claim) = volume.persistent_volume_claim.as_mut() {
        names.rename(&mut claim.claim_name);
    }
    if let Some(downward) = volume.downward_api.as_mut() {
        for item in downward.items.iter_mut().flatten() {
            rewrite_field_ref(vc, item.field_ref.as_mut());
        }
    }
    if let Some(projected) = volume.projected.as_mut() {
        let token_secret = token_secret_name(vc, names.namespace, pod_name);
        for (index, source) in projected.sources.iter_mut().flatten().enumerate() {
            translate_projection(names, &token_secret, &volume.name, index, source);
        }
    }
    if volume.ephemeral.take().is_some() {
        volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: names.name(&format!("{pod_name}-{}", volume.name)),
            read_only: None,
        });
    }

    names.rename_ref(
        volume
            .csi
            .as_mut()
            .and_then(|v| v.node_publish_secret_ref.as_mut()),
    );
    if let Some(azure) = volume.azure_file.as_mut().filter(|v| !v.secret_name.is_empty()) {
        names.rename(&mut azure.secret_name);
    }
    names.rename_ref(volume.cephfs.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.rbd.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.iscsi.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.flex_volume.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.cinder.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.scale_io.as_mut().map(|v| &mut v.secret_ref));
    names.rename_ref(volume.storageos.as_mut().and_then(|v| v.secret_ref.as_mut()));
    if let Some(gluster) = volume.glusterfs.as_mut().filter(|v| !v.endpoints.is_empty()) {
        names.rename(&mut gluster.endpoints);
    }
}

/// One source of a projected volume.
fn translate_projection(
    names: &Renamer<'_>,
    token_secret: &str,
    volume_name: &str,
    index: usize,
    source: &mut VolumeProjection,
) {
    if let Some(token) = source.service_account_token.take() {
        let key = token_key(volume_name, index);
        match names.token_storage {
            TokenStorage::Annotation => {
                source.downward_api = Some(DownwardAPIProjection {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: token.path,
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: format!("metadata.annotations['{}']", token_annotation(&key)),
                        }),
                        mode: None,
                        resource_field_ref: None,
                    }]),
                });
            }
            TokenStorage::Secret => {
                source.secret = Some(SecretProjection {
                    name: token_secret.to_owned(),
                    items: Some(vec![KeyToPath {
                        key,
                        path: token.path,
                        mode: None,
                    }]),
                    optional: None,
                });
            }
        }
        return;
    }
    if let Some(cm) = source.config_map.as_mut() {
        names.rename(&mut cm.name);
    }
    if let Some(secret) = source.secret.as_mut() {
        names.rename(&mut secret.name);
    }
    if let Some(downward) = source.downward_api.as_mut() {
        for item in downward.items.iter_mut().flatten() {
            rewrite_field_ref(names.vcluster, item.field_ref.as_mut());
        }
    }
}

/// Container and EphemeralContainer: the parts the translation touches.
trait ContainerLike {
    fn name(&self) -> &str;
    fn env(&self) -> (Option<&Vec<EnvVar>>, Option<&Vec<EnvFromSource>>);
    fn env_mut(&mut self) -> (&mut Option<Vec<EnvVar>>, &mut Option<Vec<EnvFromSource>>);
    fn security_context(&self) -> Option<&SecurityContext>;
    fn ports(&self) -> &[ContainerPort];
}

macro_rules! impl_container_like {
    ($ty:ty) => {
        impl ContainerLike for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn env(&self) -> (Option<&Vec<EnvVar>>, Option<&Vec<EnvFromSource>>) {
                (self.env.as_ref(), self.env_from.as_ref())
            }
            fn env_mut(&mut self) -> (&mut Option<Vec<EnvVar>>, &mut Option<Vec<EnvFromSource>>) {
                (&mut self.env, &mut self.env_from)
            }
            fn security_context(&self) -> Option<&SecurityContext> {
                self.security_context.as_ref()
            }
            fn ports(&self) -> &[ContainerPort] {
                self.ports.as_deref().unwrap_or_default()
            }
        }
    };
}

impl_container_like!(Container);
impl_container_like!(EphemeralContainer);

/// Every container of a spec (containers, initContainers, ephemeralContainers).
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &dyn ContainerLike> {
    let regular = spec.containers.iter().map(|c| c as &dyn ContainerLike);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c as &dyn ContainerLike);
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c as &dyn ContainerLike);
    regular.chain(init).chain(ephemeral)
}

/// Env and envFrom of one container: references renamed, fieldRefs rewritten, the
/// `KUBERNETES_*` variables prepended.
fn translate_container(names: &Renamer<'_>, kube_env: &[EnvVar], container: &mut dyn ContainerLike) {
    let (env, env_from) = container.env_mut();
    for var in env.iter_mut().flatten() {
        let Some(from) = var.value_from.as_mut() else {
            continue;
        };
        if let Some(cm) = from.config_map_key_ref.as_mut() {
            names.rename(&mut cm.name);
        }
        if let Some(secret) = from.secret_key_ref.as_mut() {
            names.rename(&mut secret.name);
        }
        rewrite_field_ref(names.vcluster, from.field_ref.as_mut());
    }
    for source in env_from.iter_mut().flatten() {
        if let Some(cm) = source.config_map_ref.as_mut() {
            names.rename(&mut cm.name);
        }
        if let Some(secret) = source.secret_ref.as_mut() {
            names.rename(&mut secret.name);
        }
    }
    prepend_env(env, kube_env);
}

/// The variables the kubelet would set for the `default/kubernetes` Service, pointing at the
/// vcluster's API Service, sorted by name.
fn kubernetes_env(ip: &str) -> Vec<EnvVar> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let url = format!("tcp://{host}:{KUBE_SERVICE_PORT}");
    let mut vars: Vec<EnvVar> = [
        ("KUBERNETES_SERVICE_HOST", ip),
        ("KUBERNETES_SERVICE_PORT", KUBE_SERVICE_PORT),
        ("KUBERNETES_SERVICE_PORT_HTTPS", KUBE_SERVICE_PORT),
        ("KUBERNETES_PORT", url.as_str()),
        ("KUBERNETES_PORT_443_TCP", url.as_str()),
        ("KUBERNETES_PORT_443_TCP_ADDR", ip),
        ("KUBERNETES_PORT_443_TCP_PORT", KUBE_SERVICE_PORT),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    })
    .collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    vars
}

/// The kubelet's service-link variables for `services` (those with a real ClusterIP; the
/// virtual `kubernetes` Service is covered by the KUBERNETES_* variables), merged with `base`
/// and sorted by name; `base` wins on a name clash.
fn with_service_links(base: Vec<EnvVar>, services: &[k8s_openapi::api::core::v1::Service]) -> Vec<EnvVar> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
            continue;
        };
        let ip = match spec.cluster_ip.as_deref() {
            Some(ip) if !ip.is_empty() && ip != "None" => ip,
            _ => continue,
        };
        if name == "kubernetes" && svc.metadata.namespace.as_deref() == Some("default") {
            continue;
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(name);
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        vars.insert(format!("{prefix}_SERVICE_HOST"), ip.to_owned());
        vars.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                vars.insert(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                    p.port.to_string(),
                );
            }
            let key = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            let url = format!("{}://{host}:{}", proto.to_ascii_lowercase(), p.port);
            vars.insert(key.clone(), url);
            vars.insert(format!("{key}_PROTO"), proto.to_ascii_lowercase());
            vars.insert(format!("{key}_PORT"), p.port.to_string());
            vars.insert(format!("{key}_ADDR"), ip.to_owned());
        }
        let proto = first.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        vars.insert(
            format!("{prefix}_PORT"),
            format!("{proto}://{host}:{}", first.port),
        );
    }
    for v in &base {
        vars.remove(&v.name);
    }
    let mut all = base;
    all.extend(vars.into_iter().map(|(name, value)| EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }));
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// A Service or port name as an environment variable name: upper case, '-' -> '_'.
fn env_name(s: &str) -> String {
    s.to_ascii_uppercase().replace('-', "_")
}

/// Prepends the `generated` variables (already sorted) the container does not define itself,
/// so its own variables may reference them.
fn prepend_env(env: &mut Option<Vec<EnvVar>>, generated: &[EnvVar]) {
    let own = env.take().unwrap_or_default();
    let defined: BTreeSet<&str> = own.iter().map(|v| v.name.as_str()).collect();
    let mut merged: Vec<EnvVar> = generated
        .iter()
        .filter(|v| !defined.contains(v.name.as_str()))
        .cloned()
        .collect();
    merged.extend(own);
    *env = (!merged.is_empty()).then_some(merged);
}

/// Rewrites a downward-API fieldRef to the host pod's copy of the virtual value.
fn rewrite_field_ref(vcluster: &str, field_ref: Option<&mut ObjectFieldSelector>) {
    if let Some(field_ref) = field_ref {
        field_ref.field_path = host_field_path(vcluster, &field_ref.field_path);
    }
}

/// Host field path of the virtual field path `path`:
/// - `metadata.name` / `metadata.namespace` / `metadata.uid` -> our `object-*` annotations;
/// - `spec.serviceAccountName` -> [`ANNOTATION_SERVICE_ACCOUNT`];
/// - `metadata.labels` -> [`ANNOTATION_VIRTUAL_LABELS`];
/// - `metadata.labels['K']` -> `metadata.labels['<markers::host_label_key(vc, K)>']`;
/// - anything else unchanged.
fn host_field_path(vcluster: &str, path: &str) -> String {
    let annotation = |key: &str| format!("metadata.annotations['{key}']");
    match path {
        "metadata.name" => annotation(markers::ANNOTATION_OBJECT_NAME),
        "metadata.namespace" => annotation(markers::ANNOTATION_OBJECT_NAMESPACE),
        "metadata.uid" => annotation(markers::ANNOTATION_OBJECT_UID),
        "spec.serviceAccountName" => annotation(ANNOTATION_SERVICE_ACCOUNT),
        "metadata.labels" => annotation(ANNOTATION_VIRTUAL_LABELS),
        _ => match path
            .strip_prefix("metadata.labels['")
            .and_then(|rest| rest.strip_suffix("']"))
        {
            Some(key) => format!("metadata.labels['{}']", markers::host_label_key(vcluster, key)),
            None => path.to_owned(),
        },
    }
}

/// DNS: cluster-first pods (`ClusterFirst` or unset without hostNetwork, or
/// `ClusterFirstWithHostNet`) get policy `None` with the vcluster's nameserver and the virtual
/// search path (virtual dnsConfig nameservers and searches appended, deduplicated; options are
/// exactly `ndots: 5`). `Default`, `None` and `ClusterFirst` with hostNetwork are untouched.
fn translate_dns(ctx: &TranslateCtx, namespace: &str, spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let cluster_first = match spec.dns_policy.as_deref() {
        None | Some("ClusterFirst") => !host_network,
        Some("ClusterFirstWithHostNet") => true,
        Some(_) => false,
    };
    if !cluster_first {
        return;
    }
    let domain = &ctx.cluster_domain;
    let virtual_config = spec.dns_config.take().unwrap_or_default();
    let nameservers = dedup_chain(
        vec![ctx.dns_nameserver.clone()],
        virtual_config.nameservers.unwrap_or_default(),
    );
    let searches = dedup_chain(
        vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ],
        virtual_config.searches.unwrap_or_default(),
    );
    spec.dns_policy = Some("None".to_owned());
    spec.dns_config = Some(PodDNSConfig {
        nameservers: Some(nameservers),
        searches: Some(searches),
        options: Some(vec![PodDNSConfigOption {
            name: Some("ndots".to_owned()),
            value: Some(DNS_NDOTS.to_owned()),
        }]),
    });
}

/// `first` followed by the entries of `then` not seen yet (first occurrence wins).
fn dedup_chain(first: Vec<String>, then: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    first
        .into_iter()
        .chain(then)
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// The container hostname of a pod that sets none: the virtual pod name (not the long host
/// name), cut to 63 characters, `.` -> `-`, trailing `-` trimmed.
fn default_hostname(pod_name: &str) -> String {
    let cut: String = pod_name
        .chars()
        .take(MAX_LABEL_LEN)
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    cut.trim_end_matches('-').to_owned()
}

/// `/etc/hosts` entry for the virtual API server's names (also for pods not using our DNS).
fn kubernetes_host_alias(ctx: &TranslateCtx) -> HostAlias {
    HostAlias {
        ip: ctx.kube_service_ip.clone(),
        hostnames: Some(vec![
            format!("kubernetes.default.svc.{}", ctx.cluster_domain),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes".to_owned(),
        ]),
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduling selectors
// ---------------------------------------------------------------------------------------------

/// Pod (anti-)affinity terms, required and preferred; node affinity is untouched.
fn translate_affinity(vcluster: &str, namespace: &str, affinity: &mut Affinity) {
    let terms = |required: Option<&mut Vec<PodAffinityTerm>>,
                 preferred: Option<&mut Vec<WeightedPodAffinityTerm>>| {
        for term in required.into_iter().flatten() {
            translate_affinity_term(vcluster, namespace, term);
        }
        for weighted in preferred.into_iter().flatten() {
            translate_affinity_term(vcluster, namespace, &mut weighted.pod_affinity_term);
        }
    };
    if let Some(pod_affinity) = affinity.pod_affinity.as_mut() {
        terms(
            pod_affinity
                .required_during_scheduling_ignored_during_execution
                .as_mut(),
            pod_affinity
                .preferred_during_scheduling_ignored_during_execution
                .as_mut(),
        );
    }
    if let Some(anti) = affinity.pod_anti_affinity.as_mut() {
        terms(
            anti.required_during_scheduling_ignored_during_execution.as_mut(),
            anti.preferred_during_scheduling_ignored_during_execution.as_mut(),
        );
    }
}

/// One pod (anti-)affinity term. The host term has no `namespaces` / `namespaceSelector` (all
/// pods of the vcluster live in the host namespace); the namespace scope moves into the label
/// selector instead:
/// - neither set ("the pod's own namespace"): `vnest.dev/namespace=<pod ns>`;
/// - `namespaces` set: `vnest.dev/namespace In [those]`, unless an EMPTY `namespaceSelector`
///   also selects all namespaces (then no namespace restriction). With both `namespaces` and a
///   non-empty `namespaceSelector` (a union a single selector cannot express) only `namespaces`
///   is used;
/// - only `namespaceSelector`: empty = all namespaces (no restriction); otherwise its terms on
///   the namespace labels the host pods carry ([`markers::namespace_label_key`]).
///
/// The label selector keys go through [`markers::host_label_key`], and
/// `vnest.dev/managed-by=<vc>` is always added; a nil selector (matches nothing) stays nil.
/// `matchLabelKeys` / `mismatchLabelKeys` are label keys of the pod itself: translated too.
fn translate_affinity_term(vcluster: &str, namespace: &str, term: &mut PodAffinityTerm) {
    let namespaces = term.namespaces.take().filter(|list| !list.is_empty());
    let namespace_selector = term.namespace_selector.take();
    translate_keys(vcluster, term.match_label_keys.as_mut());
    translate_keys(vcluster, term.mismatch_label_keys.as_mut());
    let Some(selector) = term.label_selector.as_mut() else {
        return;
    };
    *selector = host_selector(vcluster, selector);
    let all_namespaces = namespace_selector.as_ref().is_some_and(is_empty_selector);
    match (namespaces, namespace_selector) {
        _ if all_namespaces => {}
        (Some(list), _) => push_expression(
            selector,
            markers::LABEL_NAMESPACE,
            "In",
            list.iter().map(|ns| naming::safe_label_value(ns)).collect(),
        ),
        (None, Some(ns_selector)) => merge_namespace_selector(vcluster, selector, &ns_selector),
        (None, None) => insert_label(
            selector,
            markers::LABEL_NAMESPACE,
            &naming::safe_label_value(namespace),
        ),
    }
}

/// Topology spread: label selector translated, scoped to the pod's vcluster and virtual
/// namespace (a nil selector stays nil); `matchLabelKeys` translated.
fn translate_spread_constraint(vcluster: &str, namespace: &str, constraint: &mut TopologySpreadConstraint) {
    translate_keys(vcluster, constraint.match_label_keys.as_mut());
    if let Some(selector) = constraint.label_selector.as_mut() {
        *selector = host_selector(vcluster, selector);
        insert_label(
            selector,
            markers::LABEL_NAMESPACE,
            &naming::safe_label_value(namespace),
        );
    }
}

/// Label keys of the pod itself, as they are on the host pod.
fn translate_keys(vcluster: &str, keys: Option<&mut Vec<String>>) {
    for key in keys.into_iter().flatten() {
        *key = markers::host_label_key(vcluster, key);
    }
}

/// A tenant pod label selector as a host selector: keys through [`markers::host_label_key`],
/// plus `vnest.dev/managed-by=<vc>`.
fn host_selector(vcluster: &str, selector: &LabelSelector) -> LabelSelector {
    let mut host = LabelSelector {
        match_labels: selector
            .match_labels
            .as_ref()
            .map(|labels| markers::to_host_labels(vcluster, labels)),
        match_expressions: selector.match_expressions.as_ref().map(|expressions| {
            expressions
                .iter()
                .map(|e| LabelSelectorRequirement {
                    key: markers::host_label_key(vcluster, &e.key),
                    ..e.clone()
                })
                .collect()
        }),
    };
    insert_label(
        &mut host,
        markers::LABEL_MANAGED_BY,
        &naming::safe_label_value(vcluster),
    );
    host
}

/// Adds a virtual namespaceSelector, on the namespace labels host pods carry, to `selector`.
fn merge_namespace_selector(vcluster: &str, selector: &mut LabelSelector, ns_selector: &LabelSelector) {
    for (key, value) in ns_selector.match_labels.iter().flatten() {
        insert_label(
            selector,
            &markers::namespace_label_key(vcluster, key),
            &naming::safe_label_value(value),
        );
    }
    for expression in ns_selector.match_expressions.iter().flatten() {
        let values = expression
            .values
            .as_ref()
            .map(|values| values.iter().map(|v| naming::safe_label_value(v)).collect());
        selector
            .match_expressions
            .get_or_insert_with(Vec::new)
            .push(LabelSelectorRequirement {
                key: markers::namespace_label_key(vcluster, &expression.key),
                operator: expression.operator.clone(),
                values,
            });
    }
}

fn is_empty_selector(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn insert_label(selector: &mut LabelSelector, key: &str, value: &str) {
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

fn push_expression(selector: &mut LabelSelector, key: &str, operator: &str, values: Vec<String>) {
    selector
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: Some(values),
        });
}

// ---------------------------------------------------------------------------------------------
// Host-access policy
// ---------------------------------------------------------------------------------------------

/// Every field of `spec` that escapes the namespace sandbox on the host, as a field path
/// (containers named by name, ports by containerPort).
fn host_access_offenders(spec: &PodSpec) -> Vec<String> {
    let mut offenders = Vec::new();
    for (set, field) in [
        (spec.host_network, "spec.hostNetwork"),
        (spec.host_pid, "spec.hostPID"),
        (spec.host_ipc, "spec.hostIPC"),
    ] {
        if set == Some(true) {
            offenders.push(field.to_owned());
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            offenders.push(format!("spec.volumes[{}].hostPath", volume.name));
        }
    }
    let lists: [(&str, Vec<&dyn ContainerLike>); 3] = [
        (
            "containers",
            spec.containers.iter().map(|c| c as &dyn ContainerLike).collect(),
        ),
        (
            "initContainers",
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| c as &dyn ContainerLike)
                .collect(),
        ),
        (
            "ephemeralContainers",
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c as &dyn ContainerLike)
                .collect(),
        ),
    ];
    for (list, containers) in lists {
        for container in containers {
            offenders.extend(container_offenders(list, container));
        }
    }
    offenders
}

/// Offending fields of one container of list `list` (`containers`, `initContainers`, ...).
fn container_offenders(list: &str, container: &dyn ContainerLike) -> Vec<String> {
    let prefix = format!("spec.{list}[{}]", container.name());
    let mut offenders = Vec::new();
    if container.security_context().and_then(|sc| sc.privileged) == Some(true) {
        offenders.push(format!("{prefix}.securityContext.privileged"));
    }
    for port in container.ports() {
        if port.host_port.is_some_and(|p| p != 0) {
            offenders.push(format!("{prefix}.ports[{}].hostPort", port.container_port));
        }
    }
    offenders
}

fn check_host_access(policy: HostAccessPolicy, offenders: &[String]) -> Result<(), TranslateError> {
    if policy == HostAccessPolicy::Allow || offenders.is_empty() {
        return Ok(());
    }
    Err(TranslateError::Refused(format!(
        "refused by the vcluster's host-access policy (deny): {}; ask the platform team to run the \
         syncer with --host-access=allow",
        offenders.join(", ")
    )))
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

/// Desired host labels and annotations against the current host metadata `host_meta`
/// ([`plan::desired_metadata`] with the pod extras), with what only we write kept exact: stale
/// namespace-label labels (the namespace lost a label) and a stale owner-references annotation
/// (the virtual pod lost its owners) are dropped, although the generic merge keeps keys in our
/// domain.
fn desired_meta(
    input: &PodInputs,
    vpod: &Pod,
    host_meta: &ObjectMeta,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let vcluster = &input.ctx.vcluster;
    let extra_labels: BTreeMap<String, String> = input
        .namespace_labels
        .iter()
        .map(|(key, value)| {
            (
                markers::namespace_label_key(vcluster, key),
                naming::safe_label_value(value),
            )
        })
        .collect();
    let extra_annotations = pod_annotations(vpod);
    let (mut labels, mut annotations) = plan::desired_metadata(
        vcluster,
        KIND,
        &vpod.metadata,
        host_meta,
        &extra_labels,
        &extra_annotations,
        &[],
    );
    labels
        .retain(|key, _| !key.starts_with(markers::LABEL_NS_LABEL_PREFIX) || extra_labels.contains_key(key));
    if !extra_annotations.contains_key(ANNOTATION_OWNER_REFERENCES) {
        annotations.remove(ANNOTATION_OWNER_REFERENCES);
    }
    (labels, annotations)
}

/// The pod-specific host annotations: virtual labels (downward-API format), virtual
/// ServiceAccount name, virtual ownerReferences (only when there are any).
fn pod_annotations(vpod: &Pod) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    let labels = vpod.metadata.labels.clone().unwrap_or_default();
    annotations.insert(ANNOTATION_VIRTUAL_LABELS.to_owned(), format_downward_map(&labels));
    let spec = vpod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.as_deref().or(s.service_account.as_deref()))
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    annotations.insert(ANNOTATION_SERVICE_ACCOUNT.to_owned(), service_account.to_owned());
    if let Some(owners) = vpod.metadata.owner_references.as_ref().filter(|o| !o.is_empty())
        && let Ok(json) = serde_json::to_string(owners)
    {
        annotations.insert(ANNOTATION_OWNER_REFERENCES.to_owned(), json);
    }
    annotations
}

/// The kubelet's downward-API rendering of a map: sorted lines `key="<Go-quoted value>"` joined
/// by `\n` (no trailing newline).
fn format_downward_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` quoted like Go's `%q` (strconv.Quote) for the characters label values can hold and the
/// usual escapes.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Updates
// ---------------------------------------------------------------------------------------------

/// The strategic-merge patch for an EXISTING host pod, or `None` when nothing we own differs
/// (a resync produces `None`).
///
/// Owned fields:
/// - labels/annotations ([`plan::desired_metadata`] with the pod extras, diffed with
///   [`plan::metadata_patch`]; removed keys become `null`);
/// - container and initContainer images, matched by name (entries `{"name", "image"}`);
/// - `activeDeadlineSeconds` (only when the virtual pod sets it: the API cannot unset it);
/// - tolerations: host pods may only gain tolerations, so when a virtual toleration is missing
///   on the host the full union (host list + missing virtual ones) is sent (the list has no
///   merge key and is replaced whole);
/// - schedulingGates: gates can only be removed; a gate on the host that the virtual pod no
///   longer has becomes `{"name": g, "$patch": "delete"}`. (Gates added by host admission
///   webhooks cannot be told apart from removed virtual gates and are removed too.)
///
/// `metadata.resourceVersion` (the host's) is included only when the patch is non-empty, so the
/// write fails with a conflict instead of overwriting a newer host pod.
pub fn update_patch(input: &PodInputs, vpod: &Pod, hpod: &Pod) -> Option<Value> {
    let (labels, annotations) = desired_meta(input, vpod, &hpod.metadata);
    let meta_patch = plan::metadata_patch(&hpod.metadata, &labels, &annotations);
    let spec_patch = match (vpod.spec.as_ref(), hpod.spec.as_ref()) {
        (Some(vspec), Some(hspec)) => spec_patch(vspec, hspec),
        _ => Map::new(),
    };
    if meta_patch.is_none() && spec_patch.is_empty() {
        return None;
    }
    let mut metadata = match meta_patch {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    if let Some(rv) = hpod.metadata.resource_version.as_ref() {
        metadata.insert("resourceVersion".to_owned(), Value::String(rv.clone()));
    }
    let mut patch = Map::new();
    if !metadata.is_empty() {
        patch.insert("metadata".to_owned(), Value::Object(metadata));
    }
    if !spec_patch.is_empty() {
        patch.insert("spec".to_owned(), Value::Object(spec_patch));
    }
    Some(Value::Object(patch))
}

/// The spec part of [`update_patch`] (empty when nothing differs).
fn spec_patch(vspec: &PodSpec, hspec: &PodSpec) -> Map<String, Value> {
    let mut patch = Map::new();
    if let Some(entries) = image_entries(&vspec.containers, &hspec.containers) {
        patch.insert("containers".to_owned(), entries);
    }
    if let Some(entries) = image_entries(
        vspec.init_containers.as_deref().unwrap_or_default(),
        hspec.init_containers.as_deref().unwrap_or_default(),
    ) {
        patch.insert("initContainers".to_owned(), entries);
    }
    if let Some(deadline) = vspec.active_deadline_seconds
        && hspec.active_deadline_seconds != Some(deadline)
    {
        patch.insert("activeDeadlineSeconds".to_owned(), json!(deadline));
    }
    if let Some(union) = tolerations_union(
        vspec.tolerations.as_deref().unwrap_or_default(),
        hspec.tolerations.as_deref().unwrap_or_default(),
    ) && let Ok(value) = serde_json::to_value(union)
    {
        patch.insert("tolerations".to_owned(), value);
    }
    let virtual_gates: BTreeSet<&str> = vspec
        .scheduling_gates
        .iter()
        .flatten()
        .map(|g| g.name.as_str())
        .collect();
    let removed: Vec<Value> = hspec
        .scheduling_gates
        .iter()
        .flatten()
        .filter(|g| !virtual_gates.contains(g.name.as_str()))
        .map(|g| json!({"name": g.name, "$patch": "delete"}))
        .collect();
    if !removed.is_empty() {
        patch.insert("schedulingGates".to_owned(), Value::Array(removed));
    }
    patch
}

/// Strategic entries `{"name", "image"}` for the containers whose virtual image differs from
/// the host's (containers missing on either side are skipped: they cannot be added).
fn image_entries(virtual_: &[Container], host: &[Container]) -> Option<Value> {
    let host_images: BTreeMap<&str, Option<&str>> = host
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_deref()))
        .collect();
    let entries: Vec<Value> = virtual_
        .iter()
        .filter_map(|c| {
            let image = c.image.as_deref()?;
            let host_image = host_images.get(c.name.as_str())?;
            (*host_image != Some(image)).then(|| json!({"name": c.name, "image": image}))
        })
        .collect();
    (!entries.is_empty()).then_some(Value::Array(entries))
}

/// Host tolerations followed by the virtual ones missing on the host; `None` when none is
/// missing.
fn tolerations_union(virtual_: &[Toleration], host: &[Toleration]) -> Option<Vec<Toleration>> {
    let mut union = host.to_vec();
    for toleration in virtual_ {
        if !union.contains(toleration) {
            union.push(toleration.clone());
        }
    }
    (union.len() != host.len()).then_some(union)
}

/// Strategic-merge patch for the host pod's `ephemeralcontainers` subresource adding the
/// virtual pod's ephemeral containers the host pod lacks (matched by name; ephemeral containers
/// can be neither changed nor removed), translated like [`host_pod`]'s containers (references
/// renamed, fieldRefs rewritten, `KUBERNETES_*` env). `None` when none is missing. Includes the
/// host `metadata.resourceVersion` when known.
///
/// Errors: [`TranslateError::Refused`] when the host-access policy denies one of the new
/// containers (privileged, hostPort).
pub fn ephemeral_containers_patch(
    input: &PodInputs,
    vpod: &Pod,
    hpod: &Pod,
) -> Result<Option<Value>, TranslateError> {
    let ctx = input.ctx;
    let (namespace, _) = identity(vpod)?;
    let on_host: BTreeSet<&str> = hpod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let missing: Vec<&EphemeralContainer> = vpod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| !on_host.contains(c.name.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    let offenders: Vec<String> = missing
        .iter()
        .flat_map(|c| container_offenders("ephemeralContainers", *c))
        .collect();
    check_host_access(ctx.host_access, &offenders)?;

    let names = Renamer {
        vcluster: &ctx.vcluster,
        namespace,
        token_storage: ctx.token_storage,
    };
    let kube_env = kubernetes_env(&ctx.kube_service_ip);
    let translated: Vec<EphemeralContainer> = missing
        .into_iter()
        .map(|c| {
            let mut c = c.clone();
            translate_container(&names, &kube_env, &mut c);
            c
        })
        .collect();
    let containers = serde_json::to_value(translated)
        .map_err(|e| TranslateError::Refused(format!("cannot serialize ephemeral containers: {e}")))?;
    let mut patch = json!({"spec": {"ephemeralContainers": containers}});
    if let Some(rv) = hpod.metadata.resource_version.as_ref() {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    Ok(Some(patch))
}

// ---------------------------------------------------------------------------------------------
// Host -> virtual
// ---------------------------------------------------------------------------------------------

/// The status to write to the virtual pod from the host pod, or `None` when the virtual status
/// already equals it (compared as JSON) or the host pod has no status yet.
///
/// Copied from the host: phase, conditions, hostIP(s), podIP(s), startTime, message, reason,
/// nominatedNodeName, and the container / initContainer / ephemeralContainer statuses of the
/// container names that exist in the virtual spec (host-injected containers are dropped).
/// Conditions: every host condition, then the virtual conditions of types the host pod does not
/// have (readiness-gate conditions set by virtual controllers survive). Everything else
/// (notably `qosClass`, immutable on the virtual side, and `observedGeneration`, which counts
/// virtual generations) keeps its virtual value. Empty strings and lists are normalised to
/// absent, as the API server stores them, so a resync compares equal.
pub fn virtual_status(vpod: &Pod, hpod: &Pod) -> Option<PodStatus> {
    let host = hpod.status.as_ref()?;
    let current = vpod.status.clone().unwrap_or_default();
    let vspec = vpod.spec.as_ref();
    let regular: BTreeSet<&str> = vspec
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let init: BTreeSet<&str> = vspec
        .and_then(|s| s.init_containers.as_ref())
        .map(|list| list.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let ephemeral: BTreeSet<&str> = vspec
        .and_then(|s| s.ephemeral_containers.as_ref())
        .map(|list| list.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let filter = |statuses: &Option<Vec<ContainerStatus>>, names: &BTreeSet<&str>| {
        non_empty_vec(
            statuses
                .iter()
                .flatten()
                .filter(|s| names.contains(s.name.as_str()))
                .cloned()
                .collect(),
        )
    };

    let mut status = current.clone();
    status.phase = non_empty_string(&host.phase);
    status.conditions = merge_conditions(host.conditions.as_deref(), current.conditions.as_deref());
    status.host_ip = non_empty_string(&host.host_ip);
    status.host_ips = host.host_ips.clone().and_then(non_empty_vec);
    status.pod_ip = non_empty_string(&host.pod_ip);
    status.pod_ips = host.pod_ips.clone().and_then(non_empty_vec);
    status.start_time = host.start_time.clone();
    status.container_statuses = filter(&host.container_statuses, &regular);
    status.init_container_statuses = filter(&host.init_container_statuses, &init);
    status.ephemeral_container_statuses = filter(&host.ephemeral_container_statuses, &ephemeral);
    status.message = non_empty_string(&host.message);
    status.reason = non_empty_string(&host.reason);
    status.nominated_node_name = non_empty_string(&host.nominated_node_name);

    let same = serde_json::to_value(&status).ok() == serde_json::to_value(&current).ok();
    (!same).then_some(status)
}

/// Host conditions, then the virtual ones of types the host does not have.
fn merge_conditions(
    host: Option<&[PodCondition]>,
    virtual_: Option<&[PodCondition]>,
) -> Option<Vec<PodCondition>> {
    let host = host.unwrap_or_default();
    let host_types: BTreeSet<&str> = host.iter().map(|c| c.type_.as_str()).collect();
    let merged: Vec<PodCondition> = host
        .iter()
        .chain(
            virtual_
                .unwrap_or_default()
                .iter()
                .filter(|c| !host_types.contains(c.type_.as_str())),
        )
        .cloned()
        .collect();
    non_empty_vec(merged)
}

fn non_empty_vec<T>(list: Vec<T>) -> Option<Vec<T>> {
    (!list.is_empty()).then_some(list)
}

fn non_empty_string(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

/// Whether the host pod runs on a node the virtual pod is not bound to yet: `Some(node)` when
/// the host `spec.nodeName` is set and the virtual one is not.
pub fn binding_needed(vpod: &Pod, hpod: &Pod) -> Option<String> {
    let host_node = hpod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())?;
    let virtual_bound = vpod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    (!virtual_bound).then_some(host_node)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use rstest::rstest;

    const VC: &str = "demo";
    const NS: &str = "team-a";
    const HOST_NS: &str = "vc-demo";
    const KUBE_IP: &str = "10.96.0.10";
    const DNS_IP: &str = "10.96.0.53";
    const WORKLOAD_SA: &str = "vc-workload-demo";

    fn ctx_with(host_access: HostAccessPolicy) -> TranslateCtx {
        TranslateCtx {
            vcluster: VC.to_owned(),
            host_namespace: HOST_NS.to_owned(),
            owner: OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Service".to_owned(),
                name: "demo".to_owned(),
                uid: "anchor-uid".to_owned(),
                controller: None,
                block_owner_deletion: None,
            },
            workload_service_account: WORKLOAD_SA.to_owned(),
            kube_service_ip: KUBE_IP.to_owned(),
            dns_nameserver: DNS_IP.to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            host_access,
            token_storage: TokenStorage::Secret,
        }
    }

    fn ns_labels() -> BTreeMap<String, String> {
        [("kubernetes.io/metadata.name", NS), ("team", "a/b")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Host name of a tenant object of the test namespace.
    fn hn(name: &str) -> String {
        naming::host_name(VC, NS, name)
    }

    /// Merges `patch` into `base` (objects key by key, anything else replaced).
    fn merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(b), Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    /// Virtual pod `NS/web-0` with one container `app`, overlaid with `overlay`.
    fn vpod_with(overlay: Value) -> Pod {
        let mut base = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-0",
                "namespace": NS,
                "uid": "uid-1",
                "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {"note": "x"},
            },
            "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
        });
        merge(&mut base, overlay);
        serde_json::from_value(base).unwrap()
    }

    fn vpod_spec(spec: Value) -> Pod {
        vpod_with(json!({ "spec": spec }))
    }

    fn vpod(ns: &str, name: &str) -> Pod {
        vpod_with(json!({"metadata": {"namespace": ns, "name": name}}))
    }

    fn try_translate(vpod: &Pod, policy: HostAccessPolicy) -> Result<Pod, TranslateError> {
        let ctx = ctx_with(policy);
        let labels = ns_labels();
        host_pod(
            &PodInputs {
                ctx: &ctx,
                namespace_labels: &labels,
                services: &[],
            },
            vpod,
        )
    }

    fn translate(vpod: &Pod) -> Pod {
        try_translate(vpod, HostAccessPolicy::Deny).unwrap()
    }

    /// The host spec as JSON (convenient to index).
    fn hspec(vpod: &Pod) -> Value {
        serde_json::to_value(translate(vpod).spec.unwrap()).unwrap()
    }

    fn patch_for(vpod: &Pod, hpod: &Pod) -> Option<Value> {
        patch_for_labels(vpod, hpod, &ns_labels())
    }

    fn patch_for_labels(vpod: &Pod, hpod: &Pod, labels: &BTreeMap<String, String>) -> Option<Value> {
        let ctx = ctx_with(HostAccessPolicy::Deny);
        update_patch(
            &PodInputs {
                ctx: &ctx,
                namespace_labels: labels,
                services: &[],
            },
            vpod,
            hpod,
        )
    }

    /// `hpod` as the host API server would return it: server-set fields, defaults and
    /// additions by host controllers.
    fn as_stored(mut hpod: Pod) -> Pod {
        let mut value = serde_json::to_value(&hpod).unwrap();
        merge(
            &mut value,
            json!({
                "metadata": {
                    "uid": "host-uid",
                    "resourceVersion": "42",
                    "creationTimestamp": "2024-01-01T00:00:00Z",
                    "labels": {"istio.io/rev": "1"},
                    "annotations": {"host.example/injected": "yes"},
                },
                "status": {"phase": "Running", "qosClass": "BestEffort"},
            }),
        );
        hpod = serde_json::from_value(value).unwrap();
        let spec = hpod.spec.as_mut().unwrap();
        spec.node_name = Some("node-1".to_owned());
        spec.tolerations.get_or_insert_with(Vec::new).push(Toleration {
            key: Some("node.kubernetes.io/not-ready".to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: Some(300),
            value: None,
        });
        hpod
    }

    // ---- metadata ----

    #[test]
    fn host_pod_metadata() {
        let mut v = vpod_with(json!({"metadata": {
            "labels": {"vnest.dev/forged": "x", "tier": "front"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid", "controller": true}],
            "generateName": "web-",
            "finalizers": ["example.com/f"],
        }}));
        v.metadata.creation_timestamp = None;
        let h = translate(&v);
        let meta = &h.metadata;
        assert_eq!(meta.name.as_deref(), Some(hn("web-0").as_str()));
        assert_eq!(meta.namespace.as_deref(), Some(HOST_NS));
        assert_eq!(
            meta.owner_references,
            Some(vec![ctx_with(HostAccessPolicy::Deny).owner])
        );
        assert_eq!(meta.uid, None);
        assert_eq!(meta.resource_version, None);
        assert_eq!(meta.generate_name, None);
        assert_eq!(meta.finalizers, None);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.creation_timestamp, None);
        assert_eq!(h.status, None);

        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[markers::LABEL_MANAGED_BY], VC);
        assert_eq!(labels[markers::LABEL_NAMESPACE], NS);
        assert_eq!(labels[&markers::host_label_key(VC, "vnest.dev/forged")], "x");
        assert!(!labels.contains_key("vnest.dev/forged"));
        assert_eq!(
            labels[&markers::namespace_label_key(VC, "kubernetes.io/metadata.name")],
            NS
        );
        assert_eq!(
            labels[&markers::namespace_label_key(VC, "team")],
            naming::safe_label_value("a/b")
        );

        let annotations = meta.annotations.clone().unwrap();
        assert_eq!(annotations["note"], "x");
        assert_eq!(annotations[markers::ANNOTATION_OBJECT_NAME], "web-0");
        assert_eq!(annotations[markers::ANNOTATION_OBJECT_NAMESPACE], NS);
        assert_eq!(annotations[markers::ANNOTATION_OBJECT_UID], "uid-1");
        assert_eq!(
            annotations[ANNOTATION_VIRTUAL_LABELS],
            "app=\"web\"\ntier=\"front\"\nvnest.dev/forged=\"x\""
        );
        assert_eq!(annotations[ANNOTATION_SERVICE_ACCOUNT], "default");
        let owners: Value = serde_json::from_str(&annotations[ANNOTATION_OWNER_REFERENCES]).unwrap();
        assert_eq!(owners[0]["name"], "web-abc");
        assert_eq!(owners[0]["controller"], true);

        // The host copy is recognised as ours.
        assert!(markers::is_managed(meta, VC, "Pod", HOST_NS, |s| {
            naming::host_name(VC, s.namespace.as_deref().unwrap_or_default(), &s.name)
        }));
    }

    #[test]
    fn host_pod_annotations_without_owners_and_with_service_account() {
        let h = translate(&vpod_spec(json!({"serviceAccountName": "builder"})));
        let annotations = h.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(ANNOTATION_OWNER_REFERENCES));
        assert_eq!(annotations[ANNOTATION_SERVICE_ACCOUNT], "builder");
    }

    #[rstest]
    #[case::plain("web", "\"web\"")]
    #[case::empty("", "\"\"")]
    #[case::quote_and_backslash("a\"b\\c", "\"a\\\"b\\\\c\"")]
    #[case::newline_tab("a\nb\tc", "\"a\\nb\\tc\"")]
    #[case::control("a\u{1}", "\"a\\x01\"")]
    #[case::unicode("é", "\"é\"")]
    fn go_quote_examples(#[case] input: &str, #[case] want: &str) {
        assert_eq!(go_quote(input), want);
    }

    #[rstest]
    #[case::no_name(json!({"metadata": {"name": null}}), "metadata.name")]
    #[case::no_namespace(json!({"metadata": {"namespace": null}}), "metadata.namespace")]
    #[case::no_uid(json!({"metadata": {"uid": null}}), "metadata.uid")]
    #[case::no_spec(json!({"spec": null}), "no spec")]
    fn host_pod_refuses_incomplete_pods(#[case] overlay: Value, #[case] needle: &str) {
        let err = try_translate(&vpod_with(overlay), HostAccessPolicy::Allow).unwrap_err();
        assert!(
            matches!(&err, TranslateError::Refused(m) if m.contains(needle)),
            "{err:?}"
        );
    }

    // ---- rule 2: references renamed ----

    /// A pod referencing objects in every supported position.
    fn referencing_pod() -> Pod {
        let env = json!([
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "a"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "b"}}},
        ]);
        let env_from = json!([
            {"configMapRef": {"name": "cm-from"}},
            {"secretRef": {"name": "sec-from"}, "prefix": "S_"},
        ]);
        vpod_spec(json!({
            "containers": [{"name": "app", "image": "nginx:1", "env": env, "envFrom": env_from}],
            "initContainers": [{"name": "init", "image": "busybox",
                "env": [{"name": "I", "valueFrom": {"secretKeyRef": {"name": "sec-init", "key": "i"}}}],
                "envFrom": [{"configMapRef": {"name": "cm-init"}}]}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox",
                "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "cm-eph", "key": "e"}}}],
                "envFrom": [{"secretRef": {"name": "sec-eph"}}]}],
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "cm", "configMap": {"name": "cm-vol"}},
                {"name": "sec", "secret": {"secretName": "sec-vol"}},
                {"name": "pvc", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "proj", "projected": {"sources": [
                    {"configMap": {"name": "cm-proj"}},
                    {"secret": {"name": "sec-proj"}},
                ]}},
                {"name": "csi", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "sec-csi"}}},
                {"name": "azure", "azureFile": {"secretName": "sec-azure", "shareName": "s"}},
                {"name": "ceph", "cephfs": {"monitors": ["m"], "secretRef": {"name": "sec-ceph"}}},
                {"name": "rbd", "rbd": {"monitors": ["m"], "image": "i", "secretRef": {"name": "sec-rbd"}}},
                {"name": "iscsi", "iscsi": {"targetPortal": "p", "iqn": "q", "lun": 0, "secretRef": {"name": "sec-iscsi"}}},
                {"name": "flex", "flexVolume": {"driver": "d", "secretRef": {"name": "sec-flex"}}},
                {"name": "cinder", "cinder": {"volumeID": "v", "secretRef": {"name": "sec-cinder"}}},
                {"name": "scaleio", "scaleIO": {"gateway": "g", "system": "s", "secretRef": {"name": "sec-scaleio"}}},
                {"name": "sos", "storageos": {"secretRef": {"name": "sec-sos"}}},
                {"name": "gluster", "glusterfs": {"endpoints": "gluster-ep", "path": "p"}},
            ],
        }))
    }

    #[test]
    fn every_reference_is_renamed() {
        let spec = hspec(&referencing_pod());
        let c = &spec["containers"][0];
        // Generated env comes first (8 vars), then the container's own.
        assert_eq!(c["env"][8]["valueFrom"]["configMapKeyRef"]["name"], hn("cm-env"));
        assert_eq!(c["env"][9]["valueFrom"]["secretKeyRef"]["name"], hn("sec-env"));
        assert_eq!(c["env"][9]["valueFrom"]["secretKeyRef"]["key"], "b");
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], hn("cm-from"));
        assert_eq!(c["envFrom"][1]["secretRef"]["name"], hn("sec-from"));
        assert_eq!(c["envFrom"][1]["prefix"], "S_");
        let init = &spec["initContainers"][0];
        assert_eq!(
            init["env"][8]["valueFrom"]["secretKeyRef"]["name"],
            hn("sec-init")
        );
        assert_eq!(init["envFrom"][0]["configMapRef"]["name"], hn("cm-init"));
        assert_eq!(spec["imagePullSecrets"][0]["name"], hn("pull"));

        let v = &spec["volumes"];
        assert_eq!(v[0]["configMap"]["name"], hn("cm-vol"));
        assert_eq!(v[1]["secret"]["secretName"], hn("sec-vol"));
        assert_eq!(v[2]["persistentVolumeClaim"]["claimName"], hn("data"));
        assert_eq!(
            v[3]["projected"]["sources"][0]["configMap"]["name"],
            hn("cm-proj")
        );
        assert_eq!(v[3]["projected"]["sources"][1]["secret"]["name"], hn("sec-proj"));
        assert_eq!(v[4]["csi"]["nodePublishSecretRef"]["name"], hn("sec-csi"));
        assert_eq!(v[5]["azureFile"]["secretName"], hn("sec-azure"));
        assert_eq!(v[6]["cephfs"]["secretRef"]["name"], hn("sec-ceph"));
        assert_eq!(v[7]["rbd"]["secretRef"]["name"], hn("sec-rbd"));
        assert_eq!(v[8]["iscsi"]["secretRef"]["name"], hn("sec-iscsi"));
        assert_eq!(v[9]["flexVolume"]["secretRef"]["name"], hn("sec-flex"));
        assert_eq!(v[10]["cinder"]["secretRef"]["name"], hn("sec-cinder"));
        assert_eq!(v[11]["scaleIO"]["secretRef"]["name"], hn("sec-scaleio"));
        assert_eq!(v[12]["storageos"]["secretRef"]["name"], hn("sec-sos"));
        assert_eq!(v[13]["glusterfs"]["endpoints"], hn("gluster-ep"));
    }

    #[test]
    fn ephemeral_containers_are_not_created_but_patched_in_translated() {
        let v = referencing_pod();
        assert_eq!(translate(&v).spec.unwrap().ephemeral_containers, None);

        let ctx = ctx_with(HostAccessPolicy::Deny);
        let labels = ns_labels();
        let input = PodInputs {
            ctx: &ctx,
            namespace_labels: &labels,
            services: &[],
        };
        let h = as_stored(translate(&v));
        let patch = ephemeral_containers_patch(&input, &v, &h).unwrap().unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let debug = &patch["spec"]["ephemeralContainers"][0];
        assert_eq!(debug["name"], "debug");
        assert_eq!(debug["env"][0]["name"], "KUBERNETES_PORT");
        assert_eq!(
            debug["env"][8]["valueFrom"]["configMapKeyRef"]["name"],
            hn("cm-eph")
        );
        assert_eq!(debug["envFrom"][0]["secretRef"]["name"], hn("sec-eph"));

        // Once on the host, nothing is missing.
        let mut added = h.clone();
        added.spec.as_mut().unwrap().ephemeral_containers = v.spec.clone().unwrap().ephemeral_containers;
        assert_eq!(ephemeral_containers_patch(&input, &v, &added).unwrap(), None);

        // A privileged debug container is refused under deny.
        let privileged = vpod_spec(json!({"ephemeralContainers": [
            {"name": "debug", "image": "busybox", "securityContext": {"privileged": true}}
        ]}));
        let err = ephemeral_containers_patch(&input, &privileged, &h).unwrap_err();
        assert!(
            matches!(&err, TranslateError::Refused(m) if m.contains("spec.ephemeralContainers[debug].securityContext.privileged")),
            "{err:?}"
        );
    }

    #[test]
    fn references_cover_every_position() {
        let refs = references(&referencing_pod());
        let set = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            refs.configmaps,
            set(&["cm-env", "cm-from", "cm-init", "cm-eph", "cm-vol", "cm-proj"])
        );
        assert_eq!(
            refs.secrets,
            set(&[
                "sec-env",
                "sec-from",
                "sec-init",
                "sec-eph",
                "pull",
                "sec-vol",
                "sec-proj",
                "sec-csi",
                "sec-azure",
                "sec-ceph",
                "sec-rbd",
                "sec-iscsi",
                "sec-flex",
                "sec-cinder",
                "sec-scaleio",
                "sec-sos",
            ])
        );
        assert_eq!(references(&vpod_with(json!({"spec": null}))), PodRefs::default());
    }

    // ---- rule 3 and token requests ----

    fn sa_volume(name: &str, token: Value) -> Value {
        json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": token},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}})
    }

    fn sa_pod() -> Pod {
        vpod_spec(json!({
            "serviceAccountName": "builder",
            "serviceAccount": "builder",
            "automountServiceAccountToken": true,
            "volumes": [
                sa_volume("kube-api-access-x7k2p", json!({"expirationSeconds": 3607, "path": "token"})),
                {"name": "empty", "emptyDir": {}},
                {"name": "vault", "projected": {"sources": [
                    {"secret": {"name": "other"}},
                    {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault-token"}},
                    {"serviceAccountToken": {"path": "plain", "audience": ""}},
                ]}},
            ],
        }))
    }

    #[test]
    fn service_account_token_sources_become_annotations_of_the_host_pod() {
        let mut ctx = ctx_with(HostAccessPolicy::Deny);
        ctx.token_storage = TokenStorage::Annotation;
        let labels = ns_labels();
        let inputs = PodInputs {
            ctx: &ctx,
            namespace_labels: &labels,
            services: &[],
        };
        let host = host_pod(&inputs, &sa_pod()).unwrap();
        let spec = serde_json::to_value(host.spec.as_ref().unwrap()).unwrap();
        let sources = &spec["volumes"][0]["projected"]["sources"];
        let key = token_annotation("kube-api-access-x7k2p.0");
        assert_eq!(
            sources[0],
            json!({"downwardAPI": {"items": [{"path": "token",
                "fieldRef": {"apiVersion": "v1", "fieldPath": format!("metadata.annotations['{key}']")}}]}})
        );
        assert!(sources[0].get("secret").is_none());
        let vault = &spec["volumes"][2]["projected"]["sources"];
        assert_eq!(
            vault[1]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            format!("metadata.annotations['{}']", token_annotation("vault.1"))
        );
        assert_ne!(token_annotation("vault.1"), token_annotation("vault.2"));
        assert!(uses_annotation_tokens(&host));
        assert!(!uses_annotation_tokens(&translate(&sa_pod())));
        // A valid annotation key (name part <= 63) whatever the volume name's length.
        let long = token_annotation(&format!("{}.12", "v".repeat(63)));
        assert!(long.len() - "vnest.dev/".len() <= 63, "{long}");
    }

    #[test]
    fn a_trimmed_cached_host_pod_needs_no_patch_and_keeps_what_readers_use() {
        let v = sa_pod();
        let mut h = as_stored(translate(&v));
        h.metadata.annotations.get_or_insert_with(BTreeMap::new).extend([
            (
                token_annotation("kube-api-access-x7k2p.0"),
                "eyJ-secret".to_owned(),
            ),
            (
                crate::resources::pods::sync::ANNOTATION_TOKEN_REFRESH_AT.to_owned(),
                "2026-01-01T00:00:00Z".to_owned(),
            ),
        ]);
        assert_eq!(patch_for(&v, &h), None);
        let mut trimmed = h.clone();
        trim_cached_host_pod(&mut trimmed);
        assert_eq!(
            patch_for(&v, &trimmed),
            None,
            "no patch from the trimmed view either"
        );
        let a = trimmed.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            a[&token_annotation("kube-api-access-x7k2p.0")],
            "",
            "token value dropped"
        );
        assert_eq!(
            a[crate::resources::pods::sync::ANNOTATION_TOKEN_REFRESH_AT],
            "2026-01-01T00:00:00Z"
        );
        let spec = trimmed.spec.as_ref().unwrap();
        assert!(
            spec.containers
                .iter()
                .all(|c| c.env.is_none() && c.image.is_some())
        );
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.volumes, h.spec.as_ref().unwrap().volumes);
        assert_eq!(trimmed.status, h.status);
        assert!(serde_json::to_vec(&trimmed).unwrap().len() < serde_json::to_vec(&h).unwrap().len());
    }

    #[test]
    fn service_account_token_sources_become_the_token_secret() {
        let spec = hspec(&sa_pod());
        let secret = token_secret_name(VC, NS, "web-0");
        let sources = &spec["volumes"][0]["projected"]["sources"];
        assert_eq!(
            sources[0],
            json!({"secret": {"name": secret, "items": [{"key": "kube-api-access-x7k2p.0", "path": "token"}]}})
        );
        assert_eq!(sources[1]["configMap"]["name"], hn("kube-root-ca.crt"));
        assert_eq!(sources[1]["configMap"]["items"][0]["key"], "ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/object-namespace']"
        );
        assert_eq!(spec["volumes"][0]["projected"]["defaultMode"], 420);
        let vault = &spec["volumes"][2]["projected"]["sources"];
        assert_eq!(vault[0]["secret"]["name"], hn("other"));
        assert_eq!(
            vault[1]["secret"]["items"][0],
            json!({"key": "vault.1", "path": "vault-token"})
        );
        assert_eq!(
            vault[2]["secret"]["items"][0],
            json!({"key": "vault.2", "path": "plain"})
        );
        assert!(vault[1].get("serviceAccountToken").is_none());

        assert_eq!(spec["serviceAccountName"], WORKLOAD_SA);
        assert!(spec.get("serviceAccount").is_none());
        assert_eq!(spec["automountServiceAccountToken"], false);
        let annotations = translate(&sa_pod()).metadata.annotations.unwrap();
        assert_eq!(annotations[ANNOTATION_SERVICE_ACCOUNT], "builder");
    }

    #[test]
    fn token_requests_list_every_token_source() {
        let requests = token_requests(&sa_pod());
        assert_eq!(
            requests,
            vec![
                TokenRequestSpec {
                    key: "kube-api-access-x7k2p.0".to_owned(),
                    audience: None,
                    expiration_seconds: 3607,
                },
                TokenRequestSpec {
                    key: "vault.1".to_owned(),
                    audience: Some("vault".to_owned()),
                    expiration_seconds: 600,
                },
                TokenRequestSpec {
                    key: "vault.2".to_owned(),
                    audience: None,
                    expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
                },
            ]
        );
        let keys: BTreeSet<&str> = requests.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), requests.len(), "keys are unique");
        assert!(token_requests(&vpod("ns", "plain")).is_empty());
    }

    #[test]
    fn two_kube_api_access_volumes_get_distinct_keys() {
        let v = vpod_spec(json!({"volumes": [
            sa_volume("a", json!({"path": "token"})),
            sa_volume("b", json!({"path": "token"})),
        ]}));
        let keys: Vec<String> = token_requests(&v).into_iter().map(|r| r.key).collect();
        assert_eq!(keys, vec!["a.0", "b.0"]);
        let spec = hspec(&v);
        assert_eq!(
            spec["volumes"][1]["projected"]["sources"][0]["secret"]["items"][0]["key"],
            "b.0"
        );
    }

    #[rstest]
    #[case::simple("ns", "web-0")]
    #[case::dotted("ns", "web.v1.example.com")]
    #[case::long("ns", &"a".repeat(253))]
    #[case::long_dotted("kube-system", &format!("{}.{}", "b".repeat(45), "c".repeat(100)))]
    #[case::uppercase_junk("ns", "--WEB--")]
    fn token_secret_name_is_a_short_distinct_label(#[case] ns: &str, #[case] pod: &str) {
        let name = token_secret_name(VC, ns, pod);
        assert!(name.len() <= 63, "{name}");
        assert!(naming::is_dns1123_label(&name), "{name}");
        assert_ne!(name, naming::host_name(VC, ns, pod));
        assert_ne!(name, token_secret_name("other", ns, pod));
        assert_ne!(name, token_secret_name(VC, "other-ns", pod));
        assert_eq!(name, token_secret_name(VC, ns, pod));
        assert!(name.contains("-token-"));
    }

    #[test]
    fn token_secret_name_cannot_be_forged_by_a_tenant_name() {
        // A tenant Secret whose readable host name looks the same hashes a different tuple.
        let ours = token_secret_name(VC, "token", "web");
        let tenant = naming::host_name(VC, "token", "web");
        assert!(ours.starts_with("web-token-") && tenant.starts_with("web-token-"));
        assert_ne!(ours, tenant);
        assert_eq!(
            ours,
            format!(
                "web-token-{}",
                naming::short_hash(&[VC, "token", "web", "sa-token"])
            )
        );
    }

    // ---- rule 4: env ----

    #[test]
    fn kubernetes_env_is_prepended_sorted_and_skipped_when_defined() {
        let v = vpod_spec(json!({
            "containers": [
                {"name": "app", "image": "nginx:1", "env": [
                    {"name": "USER_VAR", "value": "$(KUBERNETES_SERVICE_HOST)"},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
                ]},
                {"name": "bare", "image": "nginx:1"},
            ],
            "initContainers": [{"name": "init", "image": "busybox"}],
        }));
        let spec = hspec(&v);
        let names = |c: &Value| -> Vec<String> {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let generated = [
            "KUBERNETES_PORT",
            "KUBERNETES_PORT_443_TCP",
            "KUBERNETES_PORT_443_TCP_ADDR",
            "KUBERNETES_PORT_443_TCP_PORT",
            "KUBERNETES_PORT_443_TCP_PROTO",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "KUBERNETES_SERVICE_PORT_HTTPS",
        ];
        let mut sorted = generated.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, generated);

        let app = names(&spec["containers"][0]);
        let mut want: Vec<String> = generated
            .iter()
            .filter(|n| **n != "KUBERNETES_SERVICE_PORT")
            .map(|n| (*n).to_owned())
            .collect();
        want.extend(["USER_VAR".to_owned(), "KUBERNETES_SERVICE_PORT".to_owned()]);
        assert_eq!(app, want);
        assert_eq!(spec["containers"][0]["env"][8]["value"], "6443");
        assert_eq!(names(&spec["containers"][1]), generated);
        assert_eq!(names(&spec["initContainers"][0]), generated);

        let env: BTreeMap<String, String> = spec["containers"][1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], KUBE_IP);
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], format!("tcp://{KUBE_IP}:443"));
        assert_eq!(env["KUBERNETES_PORT_443_TCP"], format!("tcp://{KUBE_IP}:443"));
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], KUBE_IP);
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PORT"], "443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PROTO"], "tcp");
        assert_eq!(spec["enableServiceLinks"], false);
    }

    #[test]
    fn kubernetes_env_brackets_ipv6() {
        let env = kubernetes_env("fd00::1");
        let port = env.iter().find(|e| e.name == "KUBERNETES_PORT").unwrap();
        assert_eq!(port.value.as_deref(), Some("tcp://[fd00::1]:443"));
    }

    // ---- rule 5: fieldRefs ----

    #[rstest]
    #[case::name("metadata.name", "metadata.annotations['vnest.dev/object-name']")]
    #[case::namespace("metadata.namespace", "metadata.annotations['vnest.dev/object-namespace']")]
    #[case::uid("metadata.uid", "metadata.annotations['vnest.dev/object-uid']")]
    #[case::service_account(
        "spec.serviceAccountName",
        "metadata.annotations['vnest.dev/service-account-name']"
    )]
    #[case::all_labels("metadata.labels", "metadata.annotations['vnest.dev/labels']")]
    #[case::one_label("metadata.labels['app']", "metadata.labels['app']")]
    #[case::domain_label("metadata.labels['example.com/tier']", "metadata.labels['example.com/tier']")]
    #[case::annotation("metadata.annotations['note']", "metadata.annotations['note']")]
    #[case::node_name("spec.nodeName", "spec.nodeName")]
    #[case::pod_ip("status.podIP", "status.podIP")]
    fn field_paths(#[case] path: &str, #[case] want: &str) {
        assert_eq!(host_field_path(VC, path), want);
    }

    #[test]
    fn reserved_label_field_path_uses_the_hashed_key() {
        assert_eq!(
            host_field_path(VC, "metadata.labels['vnest.dev/x']"),
            format!(
                "metadata.labels['{}']",
                markers::host_label_key(VC, "vnest.dev/x")
            )
        );
    }

    #[test]
    fn field_refs_are_rewritten_in_env_and_downward_volumes() {
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        let v = vpod_spec(json!({
            "containers": [{"name": "app", "image": "nginx:1", "env": [
                {"name": "POD", "valueFrom": field("metadata.name")},
                {"name": "IP", "valueFrom": field("status.podIP")},
            ]}],
            "volumes": [{"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            ]}}],
        }));
        let spec = hspec(&v);
        let env = &spec["containers"][0]["env"];
        assert_eq!(
            env[8]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/object-name']"
        );
        assert_eq!(env[9]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
        let items = &spec["volumes"][0]["downwardAPI"]["items"];
        assert_eq!(
            items[0]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/labels']"
        );
        assert_eq!(
            items[1]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/object-uid']"
        );
    }

    // ---- rule 6: DNS ----

    #[rstest]
    #[case::cluster_first(Some("ClusterFirst"), false, true)]
    #[case::unset(None, false, true)]
    #[case::with_host_net(Some("ClusterFirstWithHostNet"), true, true)]
    #[case::with_host_net_flag_off(Some("ClusterFirstWithHostNet"), false, true)]
    #[case::default(Some("Default"), false, false)]
    #[case::none(Some("None"), false, false)]
    #[case::cluster_first_host_network(Some("ClusterFirst"), true, false)]
    #[case::unset_host_network(None, true, false)]
    fn dns_policies(#[case] policy: Option<&str>, #[case] host_network: bool, #[case] translated: bool) {
        let v = vpod_spec(json!({"dnsPolicy": policy, "hostNetwork": host_network}));
        let h = try_translate(&v, HostAccessPolicy::Allow).unwrap().spec.unwrap();
        if translated {
            assert_eq!(h.dns_policy.as_deref(), Some("None"));
            let config = serde_json::to_value(h.dns_config.unwrap()).unwrap();
            assert_eq!(
                config,
                json!({
                    "nameservers": [DNS_IP],
                    "searches": [format!("{NS}.svc.cluster.local"), "svc.cluster.local", "cluster.local"],
                    "options": [{"name": "ndots", "value": "5"}],
                })
            );
        } else {
            assert_eq!(h.dns_policy.as_deref(), policy);
            assert_eq!(h.dns_config, None);
        }
    }

    #[test]
    fn dns_config_appends_virtual_entries_deduplicated() {
        let v = vpod_spec(json!({"dnsConfig": {
            "nameservers": ["1.1.1.1", DNS_IP],
            "searches": ["svc.cluster.local", "example.com"],
            "options": [{"name": "edns0"}],
        }}));
        let spec = hspec(&v);
        assert_eq!(spec["dnsConfig"]["nameservers"], json!([DNS_IP, "1.1.1.1"]));
        assert_eq!(
            spec["dnsConfig"]["searches"],
            json!([
                format!("{NS}.svc.cluster.local"),
                "svc.cluster.local",
                "cluster.local",
                "example.com"
            ])
        );
        assert_eq!(
            spec["dnsConfig"]["options"],
            json!([{"name": "ndots", "value": "5"}])
        );

        // Untouched policies keep their virtual dnsConfig.
        let v = vpod_spec(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"]}}));
        assert_eq!(hspec(&v)["dnsConfig"], json!({"nameservers": ["1.1.1.1"]}));
    }

    // ---- rules 7, 8, 11 ----

    #[rstest]
    #[case::dotted("web.v1.example", None, "web-v1-example")]
    #[case::plain("web-0", None, "web-0")]
    #[case::empty_is_unset("web-0", Some(""), "web-0")]
    #[case::explicit("web-0", Some("custom"), "custom")]
    #[case::long_cut_then_trimmed(&format!("{}.b", "a".repeat(62)), None, &"a".repeat(62))]
    #[case::long(&"a".repeat(100), None, &"a".repeat(63))]
    fn hostname_defaults_to_the_virtual_name(
        #[case] name: &str,
        #[case] hostname: Option<&str>,
        #[case] want: &str,
    ) {
        let v = vpod_with(
            json!({"metadata": {"name": name}, "spec": {"hostname": hostname, "subdomain": "web"}}),
        );
        let spec = translate(&v).spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(want));
        assert_eq!(spec.subdomain, None);
    }

    #[test]
    fn scheduling_fields_copied_priority_cleared() {
        let v = vpod_spec(json!({
            "nodeName": "node-1",
            "nodeSelector": {"disk": "ssd"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "schedulerName": "custom",
            "runtimeClassName": "gvisor",
            "schedulingGates": [{"name": "wait"}],
            "priorityClassName": "high",
            "priority": 1000,
            "preemptionPolicy": "Never",
            "activeDeadlineSeconds": 60,
            "restartPolicy": "Never",
        }));
        let vspec = serde_json::to_value(v.spec.clone().unwrap()).unwrap();
        let spec = hspec(&v);
        for key in [
            "nodeName",
            "nodeSelector",
            "affinity",
            "tolerations",
            "schedulerName",
            "runtimeClassName",
            "schedulingGates",
            "activeDeadlineSeconds",
            "restartPolicy",
        ] {
            assert_eq!(spec[key], vspec[key], "{key}");
        }
        for key in ["priorityClassName", "priority", "preemptionPolicy"] {
            assert!(spec.get(key).is_none(), "{key}");
        }
        assert_eq!(spec["containers"][0]["image"], "nginx:1");
        assert_eq!(
            spec["hostAliases"],
            json!([{"ip": KUBE_IP, "hostnames": [
                "kubernetes.default.svc.cluster.local", "kubernetes.default.svc", "kubernetes.default", "kubernetes"
            ]}])
        );
    }

    #[test]
    fn ephemeral_volumes_become_claims() {
        let v = vpod_spec(
            json!({"volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}]}),
        );
        let volume = &hspec(&v)["volumes"][0];
        assert_eq!(
            volume,
            &json!({"name": "scratch", "persistentVolumeClaim": {"claimName": hn("web-0-scratch")}})
        );
    }

    // ---- rule 9: selectors ----

    fn affinity_pod(term: Value) -> Pod {
        vpod_spec(json!({"affinity": {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term.clone()]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term}]},
        }}))
    }

    fn host_terms(term: Value) -> (Value, Value) {
        let spec = hspec(&affinity_pod(term));
        let affinity = &spec["affinity"];
        (
            affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0].clone(),
            affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"].clone(),
        )
    }

    #[test]
    fn affinity_term_in_own_namespace() {
        let reserved = markers::host_label_key(VC, "vnest.dev/role");
        let (required, preferred) = host_terms(json!({
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {
                "matchLabels": {"app": "web", "vnest.dev/role": "db"},
                "matchExpressions": [{"key": "vnest.dev/role", "operator": "Exists"}],
            },
            "matchLabelKeys": ["pod-template-hash", "vnest.dev/role"],
        }));
        let want = json!({
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {
                "matchLabels": {"app": "web", reserved.clone(): "db", "vnest.dev/managed-by": VC, "vnest.dev/namespace": NS},
                "matchExpressions": [{"key": reserved.clone(), "operator": "Exists"}],
            },
            "matchLabelKeys": ["pod-template-hash", reserved],
        });
        assert_eq!(required, want);
        assert_eq!(preferred, want);
    }

    #[test]
    fn affinity_term_with_namespaces() {
        let (term, _) = host_terms(json!({
            "topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "db"}},
            "namespaces": ["data", "cache"],
        }));
        assert_eq!(
            term,
            json!({
                "topologyKey": "zone",
                "labelSelector": {
                    "matchLabels": {"app": "db", "vnest.dev/managed-by": VC},
                    "matchExpressions": [{"key": "vnest.dev/namespace", "operator": "In", "values": ["data", "cache"]}],
                },
            })
        );
    }

    #[test]
    fn affinity_term_with_namespace_selector() {
        let (term, _) = host_terms(json!({
            "topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "db"}},
            "namespaceSelector": {
                "matchLabels": {"team": "a"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}],
            },
        }));
        assert_eq!(
            term,
            json!({
                "topologyKey": "zone",
                "labelSelector": {
                    "matchLabels": {
                        "app": "db",
                        "vnest.dev/managed-by": VC,
                        markers::namespace_label_key(VC, "team"): "a",
                    },
                    "matchExpressions": [
                        {"key": markers::namespace_label_key(VC, "env"), "operator": "In", "values": ["prod"]},
                    ],
                },
            })
        );
    }

    #[rstest]
    #[case::empty_selector_alone(json!({"namespaceSelector": {}}))]
    #[case::empty_selector_with_namespaces(json!({"namespaceSelector": {}, "namespaces": ["x"]}))]
    fn affinity_term_across_all_namespaces(#[case] scope: Value) {
        let mut term = json!({"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}});
        merge(&mut term, scope);
        let (host, _) = host_terms(term);
        assert_eq!(
            host,
            json!({"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db", "vnest.dev/managed-by": VC}}})
        );
    }

    #[test]
    fn affinity_term_without_selector_matches_nothing_still() {
        let (term, _) = host_terms(json!({"topologyKey": "zone", "namespaces": ["x"]}));
        assert_eq!(term, json!({"topologyKey": "zone"}));
    }

    #[test]
    fn topology_spread_constraints_are_scoped() {
        let v = vpod_spec(json!({"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"]},
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"},
        ]}));
        let spec = hspec(&v);
        assert_eq!(
            spec["topologySpreadConstraints"][0]["labelSelector"],
            json!({"matchLabels": {"app": "web", "vnest.dev/managed-by": VC, "vnest.dev/namespace": NS}})
        );
        assert_eq!(
            spec["topologySpreadConstraints"][0]["matchLabelKeys"],
            json!(["pod-template-hash"])
        );
        assert!(
            spec["topologySpreadConstraints"][1]
                .get("labelSelector")
                .is_none()
        );
    }

    // ---- rule 1: host access ----

    fn escaping_pod() -> Pod {
        vpod_spec(json!({
            "hostNetwork": true,
            "hostPID": true,
            "hostIPC": true,
            "volumes": [{"name": "data", "hostPath": {"path": "/var/data"}}, {"name": "ok", "emptyDir": {}}],
            "containers": [
                {"name": "app", "image": "nginx:1", "securityContext": {"privileged": true},
                 "ports": [{"containerPort": 80}, {"containerPort": 8080, "hostPort": 8080}]},
                {"name": "calm", "image": "nginx:1", "securityContext": {"privileged": false}},
            ],
            "initContainers": [{"name": "init", "image": "busybox", "securityContext": {"privileged": true}}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox", "securityContext": {"privileged": true}}],
        }))
    }

    #[test]
    fn deny_lists_every_offender() {
        let err = try_translate(&escaping_pod(), HostAccessPolicy::Deny).unwrap_err();
        assert_eq!(
            err,
            TranslateError::Refused(
                "refused by the vcluster's host-access policy (deny): spec.hostNetwork, spec.hostPID, \
                 spec.hostIPC, spec.volumes[data].hostPath, spec.containers[app].securityContext.privileged, \
                 spec.containers[app].ports[8080].hostPort, spec.initContainers[init].securityContext.privileged, \
                 spec.ephemeralContainers[debug].securityContext.privileged; ask the platform team to run \
                 the syncer with --host-access=allow"
                    .to_owned()
            )
        );
    }

    #[rstest]
    #[case::host_network(json!({"hostNetwork": true}), "spec.hostNetwork")]
    #[case::host_path(json!({"volumes": [{"name": "v", "hostPath": {"path": "/"}}]}), "spec.volumes[v].hostPath")]
    #[case::host_port(
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 53, "hostPort": 53}]}]}),
        "spec.containers[c].ports[53].hostPort"
    )]
    fn deny_refuses_each_escape(#[case] spec: Value, #[case] field: &str) {
        let err = try_translate(&vpod_spec(spec), HostAccessPolicy::Deny).unwrap_err();
        assert!(
            matches!(&err, TranslateError::Refused(m) if m.contains(field)),
            "{err:?}"
        );
    }

    #[test]
    fn allow_copies_escapes_unchanged_and_deny_passes_clean_pods() {
        let h = try_translate(&escaping_pod(), HostAccessPolicy::Allow).unwrap();
        let spec = serde_json::to_value(h.spec.unwrap()).unwrap();
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["hostIPC"], true);
        assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/var/data");
        assert_eq!(spec["containers"][0]["securityContext"]["privileged"], true);
        assert_eq!(spec["containers"][0]["ports"][1]["hostPort"], 8080);
        assert!(try_translate(&vpod("ns", "clean"), HostAccessPolicy::Deny).is_ok());
    }

    // ---- update_patch ----

    fn full_pod() -> Pod {
        vpod_with(json!({
            "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}]},
            "spec": {
                "containers": [{"name": "app", "image": "nginx:1"}, {"name": "side", "image": "envoy:1"}],
                "initContainers": [{"name": "init", "image": "busybox:1"}],
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "schedulingGates": [{"name": "a"}, {"name": "b"}],
                "activeDeadlineSeconds": 600,
                "volumes": [sa_volume("kube-api-access-1", json!({"path": "token"}))],
            },
        }))
    }

    #[test]
    fn resync_of_the_created_pod_is_a_noop() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        assert_eq!(patch_for(&v, &h), None);
        assert_eq!(
            patch_for(&vpod("ns", "x"), &as_stored(translate(&vpod("ns", "x")))),
            None
        );
    }

    #[test]
    fn image_change_is_a_strategic_entry_with_resource_version() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        let mut changed = v.clone();
        let spec = changed.spec.as_mut().unwrap();
        spec.containers[1].image = Some("envoy:2".to_owned());
        spec.init_containers.as_mut().unwrap()[0].image = Some("busybox:2".to_owned());
        assert_eq!(
            patch_for(&changed, &h),
            Some(json!({
                "metadata": {"resourceVersion": "42"},
                "spec": {
                    "containers": [{"name": "side", "image": "envoy:2"}],
                    "initContainers": [{"name": "init", "image": "busybox:2"}],
                },
            }))
        );
    }

    #[test]
    fn label_removed_becomes_null_and_labels_annotation_follows() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        let mut changed = v.clone();
        changed.metadata.labels = Some(BTreeMap::from([("tier".to_owned(), "front".to_owned())]));
        let patch = patch_for(&changed, &h).unwrap();
        assert_eq!(patch["metadata"]["labels"]["app"], Value::Null);
        assert_eq!(patch["metadata"]["labels"]["tier"], "front");
        assert!(
            patch["metadata"]["labels"].get("istio.io/rev").is_none(),
            "host label kept"
        );
        assert_eq!(
            patch["metadata"]["annotations"][ANNOTATION_VIRTUAL_LABELS],
            "tier=\"front\""
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert!(patch.get("spec").is_none());
    }

    #[test]
    fn owner_references_and_namespace_labels_removed() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        let mut orphan = v.clone();
        orphan.metadata.owner_references = None;
        let patch = patch_for(&orphan, &h).unwrap();
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({ANNOTATION_OWNER_REFERENCES: null})
        );

        let mut fewer = ns_labels();
        fewer.remove("team");
        let patch = patch_for_labels(&v, &h, &fewer).unwrap();
        assert_eq!(
            patch["metadata"],
            json!({"labels": {markers::namespace_label_key(VC, "team"): null}, "resourceVersion": "42"})
        );
    }

    #[test]
    fn toleration_added_sends_the_union() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        let mut changed = v.clone();
        changed
            .spec
            .as_mut()
            .unwrap()
            .tolerations
            .as_mut()
            .unwrap()
            .push(Toleration {
                key: Some("spot".to_owned()),
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            });
        let patch = patch_for(&changed, &h).unwrap();
        assert_eq!(
            patch["spec"],
            json!({"tolerations": [
                {"key": "gpu", "operator": "Exists"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "spot", "operator": "Exists"},
            ]})
        );
        // A virtual removal cannot be propagated: nothing to do.
        let mut fewer = v.clone();
        fewer.spec.as_mut().unwrap().tolerations = None;
        assert_eq!(patch_for(&fewer, &h), None);
    }

    #[test]
    fn gate_removed_is_a_delete_directive() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        let mut changed = v.clone();
        changed.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: "b".to_owned(),
            }]);
        assert_eq!(
            patch_for(&changed, &h).unwrap()["spec"],
            json!({"schedulingGates": [{"name": "a", "$patch": "delete"}]})
        );
        changed.spec.as_mut().unwrap().scheduling_gates = None;
        assert_eq!(
            patch_for(&changed, &h).unwrap()["spec"],
            json!({"schedulingGates": [{"name": "a", "$patch": "delete"}, {"name": "b", "$patch": "delete"}]})
        );
    }

    #[test]
    fn active_deadline_follows_the_virtual_value() {
        let v = full_pod();
        let h = as_stored(translate(&v));
        let mut changed = v.clone();
        changed.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
        assert_eq!(
            patch_for(&changed, &h).unwrap()["spec"],
            json!({"activeDeadlineSeconds": 30})
        );
        changed.spec.as_mut().unwrap().active_deadline_seconds = None;
        assert_eq!(patch_for(&changed, &h), None, "cannot be unset");
    }

    #[test]
    fn resource_version_only_in_non_empty_patches() {
        let v = full_pod();
        let mut h = as_stored(translate(&v));
        assert_eq!(patch_for(&v, &h), None);
        h.metadata.resource_version = None;
        let mut changed = v.clone();
        changed.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".to_owned());
        let patch = patch_for(&changed, &h).unwrap();
        assert!(patch.get("metadata").is_none(), "{patch}");
    }

    // ---- status ----

    fn status_pods() -> (Pod, Pod) {
        let v = vpod_with(json!({
            "spec": {
                "containers": [{"name": "app", "image": "nginx:1"}],
                "initContainers": [{"name": "init", "image": "busybox"}],
            },
            "status": {"phase": "Pending", "qosClass": "Burstable",
                "conditions": [{"type": "example.com/gate", "status": "True"}]},
        }));
        let mut h = as_stored(translate(&v));
        let container = |name: &str| {
            json!({"name": name, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                   "state": {"running": {"startedAt": "2024-01-01T00:00:05Z"}}})
        };
        h.status = Some(
            serde_json::from_value(json!({
                "phase": "Running",
                "qosClass": "BestEffort",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "hostIP": "192.168.0.5",
                "hostIPs": [{"ip": "192.168.0.5"}],
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}],
                "startTime": "2024-01-01T00:00:01Z",
                "nominatedNodeName": "",
                "observedGeneration": 5,
                "containerStatuses": [container("app"), container("istio-proxy")],
                "initContainerStatuses": [container("init"), container("istio-init")],
                "ephemeralContainerStatuses": [container("debug")],
            }))
            .unwrap(),
        );
        (v, h)
    }

    #[test]
    fn virtual_status_copies_filters_and_keeps_qos() {
        let (v, h) = status_pods();
        let status = serde_json::to_value(virtual_status(&v, &h).unwrap()).unwrap();
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["qosClass"], "Burstable");
        assert_eq!(status["hostIP"], "192.168.0.5");
        assert_eq!(status["hostIPs"], json!([{"ip": "192.168.0.5"}]));
        assert_eq!(status["podIP"], "10.244.1.7");
        assert_eq!(status["podIPs"], json!([{"ip": "10.244.1.7"}]));
        assert_eq!(status["startTime"], "2024-01-01T00:00:01Z");
        assert!(status.get("nominatedNodeName").is_none());
        assert!(
            status.get("observedGeneration").is_none(),
            "host generation is not ours"
        );
        let names = |key: &str| -> Vec<String> {
            status[key]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|c| c["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(names("containerStatuses"), vec!["app"]);
        assert_eq!(names("initContainerStatuses"), vec!["init"]);
        assert!(status.get("ephemeralContainerStatuses").is_none());
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["Ready", "PodScheduled", "example.com/gate"]);
    }

    #[test]
    fn virtual_status_is_none_when_equal_or_host_has_none() {
        let (mut v, mut h) = status_pods();
        v.status = virtual_status(&v, &h);
        assert!(v.status.is_some());
        // Round-trip through JSON like the API server would.
        let v: Pod = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
        assert_eq!(virtual_status(&v, &h), None);
        h.status = None;
        assert_eq!(virtual_status(&v, &h), None);
    }

    #[test]
    fn virtual_status_follows_host_changes() {
        let (mut v, mut h) = status_pods();
        v.status = virtual_status(&v, &h);
        h.status.as_mut().unwrap().phase = Some("Succeeded".to_owned());
        let status = virtual_status(&v, &h).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(status.qos_class.as_deref(), Some("Burstable"));
    }

    #[rstest]
    #[case::host_bound_virtual_not(Some("node-1"), None, Some("node-1"))]
    #[case::virtual_empty_string(Some("node-1"), Some(""), Some("node-1"))]
    #[case::both_bound(Some("node-1"), Some("node-1"), None)]
    #[case::both_bound_differently(Some("node-1"), Some("node-2"), None)]
    #[case::host_unbound(None, None, None)]
    #[case::host_empty(Some(""), None, None)]
    fn binding_needed_cases(
        #[case] host: Option<&str>,
        #[case] virtual_: Option<&str>,
        #[case] want: Option<&str>,
    ) {
        let v = vpod_spec(json!({"nodeName": virtual_}));
        let h = vpod_spec(json!({"nodeName": host}));
        assert_eq!(binding_needed(&v, &h).as_deref(), want);
    }
}
