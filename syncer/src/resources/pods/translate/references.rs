//! The ConfigMaps and Secrets a pod references (synced along with it).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, Volume};

use super::env::all_containers;

/// ConfigMaps and Secrets (names in the pod's virtual namespace) the pod references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRefs {
    pub configmaps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use serde_json::json;

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
}
