//! Updates of an existing host pod: the mutable fields we own, and ephemeral containers added
//! through the `ephemeralcontainers` subresource.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodSpec, Toleration};
use serde_json::{Map, Value, json};

use super::env::{kubernetes_env, translate_container};
use super::host_access::{check_host_access, container_offenders};
use super::metadata::desired_meta;
use super::volumes::Renamer;
use super::{PodInputs, identity};
use crate::engine::error::TranslateError;
use crate::engine::plan;

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
    check_host_access(input.settings.host_access, &offenders)?;

    let names = Renamer {
        vcluster: &ctx.vcluster,
        namespace,
        token_storage: input.settings.token_storage,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testutil::*;
    use super::*;
    use crate::markers::{self, ANNOTATION_OWNER_REFERENCES, ANNOTATION_VIRTUAL_LABELS};
    use crate::resources::pods::settings::HostAccessPolicy;

    #[test]
    fn ephemeral_containers_are_not_created_but_patched_in_translated() {
        let v = referencing_pod();
        assert_eq!(translate(&v).spec.unwrap().ephemeral_containers, None);

        let (ctx, settings) = (ctx(), settings_with(HostAccessPolicy::Deny));
        let labels = ns_labels();
        let input = PodInputs {
            ctx: &ctx,
            settings: &settings,
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
}
