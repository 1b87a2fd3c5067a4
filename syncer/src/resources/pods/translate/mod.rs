//! Pure pod translation: virtual pod -> host pod at create, the patch that keeps the mutable
//! fields of an existing host pod in line, and status / node binding back to the virtual pod.
//!
//! Everything here is pure: no client, no clock, no randomness. The engine looks up what the
//! translation needs (the virtual namespace's labels, the [`TranslateCtx`]) and executes what
//! these functions decide.
//!
//! Summary of the create translation ([`host_pod`]):
//! - **Escape policy**: with [`HostAccessPolicy::Deny`](super::HostAccessPolicy::Deny), pods using hostNetwork, hostPID,
//!   hostIPC, hostPath volumes, privileged containers or hostPorts are refused, naming every
//!   offending field.
//! - **References** to ConfigMaps, Secrets and PVCs of the virtual namespace are renamed with
//!   [`naming::host_name`] (volumes, projections, env, envFrom, imagePullSecrets, the secret
//!   references of CSI / AzureFile / CephFS / RBD / iSCSI / FlexVolume / Cinder / ScaleIO /
//!   StorageOS volumes, the Glusterfs endpoints name).
//! - **ServiceAccount tokens**: every projected `serviceAccountToken` source becomes, with
//!   [`TokenStorage::Annotation`](super::TokenStorage::Annotation), a downward-API projection of the host pod's own annotation
//!   [`token_annotation`]; with [`TokenStorage::Secret`](super::TokenStorage::Secret), a `secret` projection from the host
//!   Secret [`naming::token_secret_name`] (key [`token_key`]). The engine fills either with tokens
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

mod cache;
mod dns;
mod env;
mod host_access;
mod metadata;
mod references;
mod scheduling;
mod status;
mod tokens;
mod updates;
mod volumes;

#[cfg(test)]
mod testutil;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings::PodSettings;
use crate::engine::TranslateCtx;
use crate::engine::error::TranslateError;
use crate::naming;

pub use cache::{Uncached, swap_uncached, trim_cached_host_pod};
pub use metadata::DEFAULT_SERVICE_ACCOUNT;
pub use references::{PodRefs, references, required_references};
pub use status::{binding_needed, host_conditions_patch, virtual_status};
pub use tokens::{
    DEFAULT_TOKEN_EXPIRATION_SECONDS, TokenRequestSpec, token_annotation, token_key, token_requests,
    uses_annotation_tokens,
};
pub use updates::{ephemeral_containers_patch, update_patch};

use dns::{default_hostname, kubernetes_host_alias, translate_dns};
use env::{kubernetes_env, translate_container, with_service_links};
use host_access::{check_host_access, host_access_offenders};
use metadata::desired_meta;
use scheduling::{translate_affinity, translate_spread_constraint};
use volumes::{Renamer, translate_volume};

/// Everything the pod translation reads: the context every kind shares, the pod settings, and
/// what the engine looked up for this pod.
#[derive(Debug, Clone, Copy)]
pub struct PodInputs<'a> {
    pub ctx: &'a TranslateCtx,
    /// The pod kind's settings (workload ServiceAccount, host access, token storage, domain).
    pub settings: &'a PodSettings,
    /// Labels of the pod's virtual Namespace (copied onto the host pod under
    /// markers::namespace_label_key(vcluster, key) so namespaceSelectors can be translated later).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The virtual Services of the pod's namespace (for the kubelet-style service-link
    /// variables when the pod has `enableServiceLinks`).
    pub services: &'a [k8s_openapi::api::core::v1::Service],
}

/// The full host pod to CREATE for virtual pod `vpod`.
///
/// Metadata: name [`naming::host_name`], the host namespace, labels/annotations from
/// [`plan::desired_metadata`] (our markers, the virtual labels and annotations, the namespace
/// labels under [`crate::markers::namespace_label_key`], and the [`crate::markers::ANNOTATION_VIRTUAL_LABELS`] /
/// [`crate::markers::ANNOTATION_SERVICE_ACCOUNT`] / [`crate::markers::ANNOTATION_OWNER_REFERENCES`] annotations),
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
    check_host_access(input.settings.host_access, &host_access_offenders(spec))?;

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
        spec: Some(host_spec(input, namespace, name, spec)),
        status: None,
    })
}

/// `(namespace, name)` of the virtual pod; refuses pods without name, namespace or uid (the
/// host copy could not be marked as ours).
pub(super) fn identity(vpod: &Pod) -> Result<(&str, &str), TranslateError> {
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
fn host_spec(input: &PodInputs, namespace: &str, pod_name: &str, vspec: &PodSpec) -> PodSpec {
    let (ctx, settings) = (input.ctx, input.settings);
    let names = Renamer {
        vcluster: &ctx.vcluster,
        namespace,
        token_storage: settings.token_storage,
    };
    let kube_env = if vspec.enable_service_links == Some(false) {
        kubernetes_env(&ctx.kube_service_ip)
    } else {
        with_service_links(kubernetes_env(&ctx.kube_service_ip), input.services)
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
    spec.service_account_name = Some(settings.workload_service_account.clone());
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);

    // Service links of host Services must not leak in (virtual ones: later issue).
    spec.enable_service_links = Some(false);

    translate_dns(input, namespace, &mut spec);

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
        .push(kubernetes_host_alias(input));
    spec
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::resources::pods::settings::HostAccessPolicy;
    use rstest::rstest;
    use serde_json::{Value, json};

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
}
