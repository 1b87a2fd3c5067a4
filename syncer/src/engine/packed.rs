//! A cached object kept as its JSON bytes, beside the few metadata fields a store is keyed by.
//!
//! k8s-openapi structs are large inline: a `Pod` is 2.4 KB before any field is set, a
//! `Container` 2.1 KB and a `Volume` 3.2 KB, and every label is two heap strings in a B-tree.
//! Measured on the pods of a 3000-pod Deployment run: a virtual pod costs 14.9 KB as structs
//! and 3.1 KB packed, a (trimmed) host pod 17.0 KB as structs and 3.8 KB packed. Caches of kinds
//! with many objects (pods) keep them packed; a reconcile parses back the one it handles (tens
//! of microseconds), [`Packed::full_metadata`] reads only the metadata.

use std::marker::PhantomData;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::SyncError;

/// `K` as JSON, beside its name, namespace, uid and resourceVersion (all a store and an
/// object reference need).
pub struct Packed<K> {
    /// Only `name`, `namespace`, `uid` and `resourceVersion`: see [`Packed::full_metadata`].
    pub metadata: ObjectMeta,
    body: Arc<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            body: self.body.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("metadata", &self.metadata)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl<K> Packed<K>
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned,
{
    /// Packs `obj`.
    pub fn pack(obj: &K) -> Self {
        let m = obj.metadata();
        let metadata = ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            ..ObjectMeta::default()
        };
        // Serializing a k8s-openapi struct to a Vec cannot fail (no maps with non-string keys,
        // no I/O); an empty body would unpack as an error, never as a wrong object.
        let body = serde_json::to_vec(obj).unwrap_or_default();
        Self {
            metadata,
            body: body.into(),
            kind: PhantomData,
        }
    }

    /// The whole object back.
    pub fn unpack(&self) -> Result<K, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The whole object back for a reconcile: a body that does not parse is a
    /// [`SyncError::Cache`] (retried like any failure).
    pub fn read(&self) -> Result<K, SyncError>
    where
        K: k8s_openapi::Resource,
    {
        self.unpack().map_err(|e| SyncError::Cache {
            kind: K::KIND,
            name: self.metadata.name.clone().unwrap_or_default(),
            message: e.to_string(),
        })
    }

    /// The whole metadata (labels, annotations, owners…) without parsing the rest.
    pub fn full_metadata(&self) -> Result<ObjectMeta, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct MetadataOnly {
            #[serde(default)]
            metadata: ObjectMeta,
        }
        serde_json::from_slice::<MetadataOnly>(&self.body).map(|m| m.metadata)
    }

    /// Bytes of JSON held (for tests and sizing).
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for Packed<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Resource> k8s_openapi::Metadata for Packed<K> {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::Resource;

    fn running_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "team-a", "uid": "u-1",
                         "resourceVersion": "42", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "c", "image": "nginx",
                                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}}]}],
                "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
                "nodeName": "n1",
                "tolerations": [{"key": "k", "operator": "Exists"}]
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "c", "image": "nginx", "imageID": "", "ready": true,
                                              "restartCount": 0, "started": true,
                                              "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn unpack_gives_back_the_same_object() {
        let pod = running_pod();
        let packed = Packed::pack(&pod);
        assert_eq!(packed.unpack().unwrap(), pod);
        assert_eq!(packed.clone().unpack().unwrap(), pod);
        assert_eq!(packed.full_metadata().unwrap(), pod.metadata);
    }

    #[test]
    fn the_metadata_kept_as_a_struct_is_what_keys_and_references_need() {
        let packed = Packed::pack(&running_pod());
        assert_eq!(packed.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(packed.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(packed.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(packed.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(packed.metadata.labels, None, "labels live in the body only");
    }

    #[test]
    fn it_is_the_same_kind_for_stores_and_object_refs() {
        assert_eq!(Packed::<Pod>::kind(&()), "Pod");
        assert_eq!(Packed::<Pod>::plural(&()), "pods");
        let r = Packed::pack(&running_pod()).object_ref(&());
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.name.as_deref(), Some("web-1"));
        assert_eq!(r.namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn a_packed_pod_holds_its_json_not_its_structs() {
        let packed = Packed::pack(&running_pod());
        // The JSON of this whole pod is about 1 KB; the structs alone would be Pod + Container
        // + Volume + statuses, over 8 KB.
        assert!(packed.body_len() < 1300, "{} bytes", packed.body_len());
        assert!(
            std::mem::size_of::<Pod>() + std::mem::size_of::<k8s_openapi::api::core::v1::Volume>() > 5000
        );
    }
}
