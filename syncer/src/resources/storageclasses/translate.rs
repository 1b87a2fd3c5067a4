//! Pure translation of StorageClasses: the virtual copy of a host class, and the fields that
//! decide whether a copy is patched or made again. No client, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::markers;

/// The annotations that make a class the default (GA and beta), copied with the class.
pub const DEFAULT_CLASS_ANNOTATIONS: &[&str] = &[
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// Whether virtual class `c` is a copy the syncer made.
pub fn is_ours(c: &StorageClass) -> bool {
    c.labels()
        .get(markers::LABEL_HOST_STORAGE_CLASS)
        .is_some_and(|v| v == markers::HOST_STORAGE_CLASS_VALUE)
}

/// The virtual copy of host class `host`, named `name` (the tenant's name of it).
pub fn virtual_class(name: &str, host: &StorageClass) -> StorageClass {
    let annotations: BTreeMap<String, String> = host
        .annotations()
        .iter()
        .filter(|(k, _)| DEFAULT_CLASS_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    StorageClass {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                markers::LABEL_HOST_STORAGE_CLASS.to_owned(),
                markers::HOST_STORAGE_CLASS_VALUE.to_owned(),
            )])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        provisioner: host.provisioner.clone(),
        parameters: host.parameters.clone(),
        reclaim_policy: host.reclaim_policy.clone(),
        volume_binding_mode: host.volume_binding_mode.clone(),
        allow_volume_expansion: host.allow_volume_expansion,
        mount_options: host.mount_options.clone(),
        allowed_topologies: host.allowed_topologies.clone(),
    }
}

/// The fields the API server never lets change on a class (its defaults filled in as the API
/// server fills them: reclaim policy `Delete`, binding mode `Immediate`).
pub fn immutable_fields(c: &StorageClass) -> Value {
    json!({
        "provisioner": c.provisioner,
        "parameters": c.parameters.clone().unwrap_or_default(),
        "reclaimPolicy": c.reclaim_policy.as_deref().unwrap_or("Delete"),
        "volumeBindingMode": c.volume_binding_mode.as_deref().unwrap_or("Immediate"),
    })
}

/// The fields of a copy kept in step by a patch: every key present (null when unset), so a
/// removal on the host shows as a difference.
pub fn mutable_fields(c: &StorageClass) -> Value {
    let annotations = c.annotations();
    let defaults: serde_json::Map<String, Value> = DEFAULT_CLASS_ANNOTATIONS
        .iter()
        .map(|k| {
            (
                (*k).to_owned(),
                annotations.get(*k).map_or(Value::Null, |v| json!(v)),
            )
        })
        .collect();
    json!({
        "metadata": {"annotations": defaults},
        "allowVolumeExpansion": c.allow_volume_expansion,
        "mountOptions": c.mount_options,
        "allowedTopologies": c.allowed_topologies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(body: Value) -> StorageClass {
        serde_json::from_value(body).expect("a class")
    }

    #[test]
    fn the_copy_has_what_a_tenant_needs_and_our_label() {
        let host = class(json!({
            "metadata": {"name": "premium", "uid": "h-1", "resourceVersion": "9",
                         "labels": {"team": "storage"},
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true", "owner": "ops"}},
            "provisioner": "csi.example.com", "parameters": {"tier": "gold"}, "reclaimPolicy": "Retain",
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true,
            "mountOptions": ["noatime"],
            "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}]
        }));
        let copy = serde_json::to_value(virtual_class("fast", &host)).expect("serializes");
        assert_eq!(
            copy,
            json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": "fast", "labels": {"vnest.dev/host-storageclass": "true"},
                             "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": "csi.example.com", "parameters": {"tier": "gold"}, "reclaimPolicy": "Retain",
                "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true,
                "mountOptions": ["noatime"],
                "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}]
            })
        );
        assert!(is_ours(&virtual_class("fast", &host)));
        assert!(!is_ours(&host));
    }

    #[test]
    fn defaults_compare_equal_to_what_the_api_server_fills_in() {
        let sparse = class(json!({"metadata": {"name": "a"}, "provisioner": "p"}));
        let filled = class(
            json!({"metadata": {"name": "a"}, "provisioner": "p", "parameters": {},
                                  "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
        );
        assert_eq!(immutable_fields(&sparse), immutable_fields(&filled));
        let other = class(json!({"metadata": {"name": "a"}, "provisioner": "p", "reclaimPolicy": "Retain"}));
        assert_ne!(immutable_fields(&sparse), immutable_fields(&other));
    }
}
