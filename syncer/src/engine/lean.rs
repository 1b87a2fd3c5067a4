//! Watched objects parsed without their `managedFields`.
//!
//! The syncer never reads `managedFields`, yet every watch event carries them, and k8s-openapi
//! builds each entry's `fieldsV1` as a `serde_json::Value` tree (a B-tree map per level) only
//! for the watch loop to drop it. Measured in a profile of a restart with 10k pods: building
//! and dropping those trees was ~9 % of the syncer's CPU. [`LeanMeta`] is `ObjectMeta` without
//! that field: serde skips its JSON without building anything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;

/// Every `ObjectMeta` field but `managedFields` (skipped while parsing).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanMeta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

/// Written out field by field (no `..`): a field k8s-openapi adds to `ObjectMeta` stops the
/// build here instead of being dropped silently.
impl From<LeanMeta> for ObjectMeta {
    fn from(m: LeanMeta) -> Self {
        ObjectMeta {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

/// Implements `k8s_openapi::Resource` for `$view` as the kind `$of`: a type that parses part of
/// that kind's objects (a watched pod without `managedFields`, an event copy's metadata) and is
/// listed and watched at its URLs.
macro_rules! resource_as {
    ($view:ty, $of:ty) => {
        impl k8s_openapi::Resource for $view {
            const API_VERSION: &'static str = <$of as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$of as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$of as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$of as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str = <$of as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$of as k8s_openapi::Resource>::Scope;
        }
    };
}
pub(crate) use resource_as;

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    /// Every field set, managedFields included.
    fn full_meta_json() -> serde_json::Value {
        serde_json::json!({
            "annotations": {"a": "1"},
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "deletionGracePeriodSeconds": 30,
            "deletionTimestamp": "2026-01-02T03:05:05Z",
            "finalizers": ["example.com/f"],
            "generateName": "web-",
            "generation": 2,
            "labels": {"app": "web"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                               "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}],
            "name": "web-1",
            "namespace": "team-a",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                 "uid": "u-rs", "controller": true}],
            "resourceVersion": "42",
            "selfLink": "/api/v1/namespaces/team-a/pods/web-1",
            "uid": "u-1"
        })
    }

    #[test]
    fn lean_metadata_is_object_meta_without_managed_fields() {
        let full: ObjectMeta = serde_json::from_value(full_meta_json()).unwrap();
        assert!(full.managed_fields.is_some(), "the sample sets every field");
        let lean: LeanMeta = serde_json::from_value(full_meta_json()).unwrap();
        let want = ObjectMeta {
            managed_fields: None,
            ..full
        };
        assert_eq!(ObjectMeta::from(lean), want);
    }
}
