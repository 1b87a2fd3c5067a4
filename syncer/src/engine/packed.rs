//! A cached object kept as compressed JSON, beside the few metadata fields a store is keyed by.
//!
//! k8s-openapi structs are large inline: a `Pod` is 2.4 KB before any field is set, a
//! `Container` 2.1 KB and a `Volume` 3.2 KB, and every label is two heap strings in a B-tree.
//! Measured on the pods of a 3000-pod Deployment run: a virtual pod costs 14.9 KB as structs
//! and 3.1 KB as JSON, a (trimmed) host pod 17.0 KB as structs and 3.8 KB as JSON. The JSON of
//! two pods is mostly the same keys and values, so it is LZ4-compressed against a dictionary of
//! typical objects of the kind ([`Packable::dictionary`]): a few hundred bytes per pod.
//! Caches of kinds with many objects (pods) keep them packed; a reconcile unpacks the one it
//! handles (microseconds to decompress, tens to parse), [`Packed::full_metadata`] parses only
//! the metadata.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::SyncError;

/// A kind a cache may hold packed.
pub trait Packable: k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned {
    /// Typical objects of the kind as this crate serializes them: the LZ4 dictionary bodies
    /// are compressed against (empty: plain LZ4). Fixed for the life of the process.
    fn dictionary() -> &'static [u8];
}

impl Packable for Pod {
    /// A Deployment's virtual pod and its (cache-trimmed) host copy, both Running.
    fn dictionary() -> &'static [u8] {
        static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
        DICTIONARY.get_or_init(|| dictionary_of::<Pod>(include_str!("pack_dictionary/pod.json")))
    }
}

impl Packable for Event {
    /// Host events stay cached only until handled: plain LZ4.
    fn dictionary() -> &'static [u8] {
        &[]
    }
}

/// The samples (a JSON array of `K`) serialized the way [`Packed::pack`] serializes, one after
/// the other. Samples that do not parse as `K` give an empty dictionary (a worse ratio, never a
/// wrong object; a unit test keeps the shipped samples parsing).
fn dictionary_of<K: Serialize + DeserializeOwned>(samples: &str) -> Vec<u8> {
    let Ok(objects) = serde_json::from_str::<Vec<K>>(samples) else {
        return Vec::new();
    };
    objects
        .iter()
        .filter_map(|o| serde_json::to_vec(o).ok())
        .flatten()
        .collect()
}

/// `K` as compressed JSON, beside its name, namespace, uid and resourceVersion (all a store
/// and an object reference need).
pub struct Packed<K> {
    /// Only `name`, `namespace`, `uid` and `resourceVersion`: see [`Packed::full_metadata`].
    pub metadata: ObjectMeta,
    /// The JSON, LZ4 block-compressed against `K::dictionary()`, its length prepended.
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

impl<K: Packable> Packed<K> {
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
        let body = SCRATCH.with_borrow_mut(|scratch| scratch.pack(obj, K::dictionary()));
        Self {
            metadata,
            body,
            kind: PhantomData,
        }
    }

    /// The whole object back.
    pub fn unpack(&self) -> Result<K, serde_json::Error> {
        self.view()
    }

    /// The whole object back for a reconcile: a body that does not unpack is a
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
        self.view::<MetadataOnly>().map(|m| m.metadata)
    }

    /// The body parsed as `T`: a partial view whose fields are the JSON's (what `T` does not
    /// name is skipped, not built; a resync reads one field of 10k pods this way).
    pub fn view<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        SCRATCH.with_borrow_mut(|scratch| {
            let json = scratch.unpack(&self.body, K::dictionary())?;
            serde_json::from_slice(json)
        })
    }

    /// Bytes held for the body (compressed; for tests and sizing).
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

thread_local! {
    /// The buffers of this thread's packs and unpacks.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Buffers reused by every pack and unpack of a thread: the JSON and the compressed bytes of a
/// pod are kilobytes, and allocating them (growing the JSON buffer, LZ4's worst-case output,
/// its shrink, the copy into the `Arc`) for each watch event and each reconcile made glibc
/// sort its free lists again and again (`malloc_consolidate` runs on every allocation above
/// 1 KiB; measured: a third of the syncer's CPU in a burst was the allocator).
#[derive(Default)]
struct Scratch {
    json: Vec<u8>,
    compressed: Vec<u8>,
}

impl Scratch {
    /// Buffers grown past this (a huge object) are given back after use.
    const KEEP_BYTES: usize = 256 * 1024;

    /// `obj` as JSON, LZ4-compressed against `dictionary`, its length prepended (the layout of
    /// `lz4_flex::block::compress_prepend_size_with_dict`).
    fn pack<K: Serialize>(&mut self, obj: &K, dictionary: &[u8]) -> Arc<[u8]> {
        self.json.clear();
        // Serializing a k8s-openapi struct cannot fail (no maps with non-string keys, no I/O);
        // an empty body would unpack as an error, never as a wrong object.
        if serde_json::to_writer(&mut self.json, obj).is_err() {
            self.json.clear();
        }
        let Ok(size) = u32::try_from(self.json.len()) else {
            return Arc::from(&[][..]);
        };
        let bound = 4 + lz4_flex::block::get_maximum_output_size(self.json.len());
        self.compressed.clear();
        self.compressed.resize(bound, 0);
        self.compressed[..4].copy_from_slice(&size.to_le_bytes());
        let out = &mut self.compressed[4..];
        // As `compress_prepend_size_with_dict` does: a dictionary of 3 bytes or less is none.
        let compressed = if dictionary.len() <= 3 {
            lz4_flex::block::compress_into(&self.json, out)
        } else {
            lz4_flex::block::compress_into_with_dict(&self.json, out, dictionary)
        };
        let body = match compressed {
            Ok(n) => Arc::from(&self.compressed[..4 + n]),
            // Cannot happen with a buffer of the worst-case size; an empty body unpacks as an
            // error.
            Err(_) => Arc::from(&[][..]),
        };
        self.shrink();
        body
    }

    /// The JSON of a body [`Scratch::pack`] made, borrowed from this scratch.
    fn unpack(&mut self, body: &[u8], dictionary: &[u8]) -> Result<&[u8], serde_json::Error> {
        let invalid = <serde_json::Error as serde::de::Error>::custom;
        let (size, compressed) = lz4_flex::block::uncompressed_size(body).map_err(invalid)?;
        self.shrink();
        self.json.clear();
        self.json.resize(size, 0);
        let n = lz4_flex::block::decompress_into_with_dict(compressed, &mut self.json, dictionary)
            .map_err(invalid)?;
        Ok(&self.json[..n])
    }

    fn shrink(&mut self) {
        for buffer in [&mut self.json, &mut self.compressed] {
            if buffer.capacity() > Self::KEEP_BYTES {
                *buffer = Vec::new();
            }
        }
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

    /// A Deployment pod that is not the dictionary's: other names, uids, IPs, times, image.
    fn other_deployment_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-6c9b7f8d4-q2w9z", "generateName": "api-6c9b7f8d4-",
                         "namespace": "shop", "uid": "0d5e9a43-7b1c-4f2e-9a8d-3c6b5e4f2a1d",
                         "resourceVersion": "918273", "creationTimestamp": "2026-03-04T05:06:07Z",
                         "labels": {"app.kubernetes.io/name": "api", "pod-template-hash": "6c9b7f8d4"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "api-6c9b7f8d4", "uid": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d",
                             "controller": true, "blockOwnerDeletion": true}]},
            "spec": {
                "containers": [{"name": "api", "image": "registry.example/shop/api:1.4.2",
                                "imagePullPolicy": "IfNotPresent", "resources": {},
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                                "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                                  "name": "kube-api-access-7tq2m", "readOnly": true}]}],
                "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "nodeName": "worker-3",
                "restartPolicy": "Always", "schedulerName": "default-scheduler",
                "serviceAccount": "default", "serviceAccountName": "default",
                "terminationGracePeriodSeconds": 30, "securityContext": {},
                "tolerations": [
                    {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                    {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}],
                "volumes": [{"name": "kube-api-access-7tq2m", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}},
                    {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}]}}]
            },
            "status": {"phase": "Running", "podIP": "10.42.7.19", "podIPs": [{"ip": "10.42.7.19"}],
                       "hostIP": "192.168.10.3", "hostIPs": [{"ip": "192.168.10.3"}],
                       "qosClass": "BestEffort", "startTime": "2026-03-04T05:06:08Z",
                       "conditions": [
                           {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-03-04T05:06:08Z"},
                           {"type": "Ready", "status": "True", "lastTransitionTime": "2026-03-04T05:06:11Z"},
                           {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-03-04T05:06:11Z"},
                           {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-03-04T05:06:07Z"}],
                       "containerStatuses": [{"name": "api", "image": "registry.example/shop/api:1.4.2",
                                              "imageID": "registry.example/shop/api@sha256:9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0",
                                              "containerID": "containerd://1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809",
                                              "ready": true, "restartCount": 0, "started": true, "lastState": {},
                                              "state": {"running": {"startedAt": "2026-03-04T05:06:10Z"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn the_shipped_pod_samples_parse_into_a_dictionary() {
        let dictionary = Pod::dictionary();
        assert!(dictionary.len() > 4000, "{} bytes", dictionary.len());
        assert!(dictionary.len() < 64 * 1024, "LZ4 looks back 64 KiB at most");
    }

    #[test]
    fn a_packed_pod_holds_a_fraction_of_its_json_and_unpacks_whole() {
        let pod = other_deployment_pod();
        let json = serde_json::to_vec(&pod).unwrap().len();
        let packed = Packed::pack(&pod);
        assert!(
            packed.body_len() * 3 < json,
            "{} bytes packed of {json} bytes of JSON",
            packed.body_len()
        );
        assert_eq!(packed.unpack().unwrap(), pod);
        assert_eq!(packed.full_metadata().unwrap(), pod.metadata);
        // The structs alone would be Pod + Container + Volume + statuses, over 8 KB.
        assert!(
            std::mem::size_of::<Pod>() + std::mem::size_of::<k8s_openapi::api::core::v1::Volume>() > 5000
        );
    }

    #[test]
    fn the_reused_buffers_pack_as_lz4_flex_does_and_unpack_any_size() {
        let pod = other_deployment_pod();
        let json = serde_json::to_vec(&pod).unwrap();
        let want = lz4_flex::block::compress_prepend_size_with_dict(&json, Pod::dictionary());
        let mut scratch = Scratch::default();
        assert_eq!(&*scratch.pack(&pod, Pod::dictionary()), &want[..]);
        assert_eq!(
            &*scratch.pack(&pod, &[]),
            &lz4_flex::block::compress_prepend_size(&json)[..]
        );
        // A huge object after a small one and a small one after it: the buffers are not kept
        // at the huge size, and nothing of a longer JSON leaks into a shorter one.
        let mut huge = pod.clone();
        huge.metadata.annotations = Some([("big".to_owned(), "x".repeat(Scratch::KEEP_BYTES * 2))].into());
        let huge_body = scratch.pack(&huge, Pod::dictionary());
        assert!(scratch.json.capacity() <= Scratch::KEEP_BYTES);
        let small_body = scratch.pack(&running_pod(), Pod::dictionary());
        let unpacked: Pod =
            serde_json::from_slice(scratch.unpack(&huge_body, Pod::dictionary()).unwrap()).unwrap();
        assert_eq!(unpacked, huge);
        let unpacked: Pod =
            serde_json::from_slice(scratch.unpack(&small_body, Pod::dictionary()).unwrap()).unwrap();
        assert_eq!(unpacked, running_pod());
        assert!(
            scratch.unpack(&[1, 0], Pod::dictionary()).is_err(),
            "no size prefix"
        );
    }

    #[test]
    fn kinds_without_a_dictionary_pack_too() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1.17f", "namespace": "team-a", "uid": "e-1"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "team-a"},
            "reason": "Pulled", "message": "Container image \"nginx\" already present on machine",
            "type": "Normal", "count": 1
        }))
        .unwrap();
        let packed = Packed::pack(&event);
        assert_eq!(packed.unpack().unwrap(), event);
        assert_eq!(packed.metadata.uid.as_deref(), Some("e-1"));
    }

    #[test]
    fn a_damaged_body_is_a_cache_error_not_a_wrong_object() {
        let mut packed = Packed::pack(&other_deployment_pod());
        let mut bytes = packed.body.to_vec();
        bytes.truncate(bytes.len() / 2);
        packed.body = bytes.into();
        match packed.read() {
            Err(SyncError::Cache { kind, name, .. }) => {
                assert_eq!((kind, name.as_str()), ("Pod", "api-6c9b7f8d4-q2w9z"));
            }
            other => panic!("expected a cache error, got {other:?}"),
        }
    }
}
