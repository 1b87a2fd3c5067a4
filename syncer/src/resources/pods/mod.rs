//! Pods: virtual -> host at create, mutable fields after, status and node binding back.

pub mod plan;
pub mod refs;
pub mod register;
pub mod settings;
pub mod sync;
pub mod tokens;
pub mod translate;

pub use settings::{HostAccessPolicy, PodArgs, PodSettings, TokenStorage};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::engine::lean::LeanMeta;
use crate::engine::packed::Packed;

pub use register::register;

/// How pod caches hold a pod (both sides): its metadata, and the rest as JSON.
pub type CachedPod = Packed<Pod>;

/// A pod as the pod watches deliver it: parsed without `managedFields` (see
/// [`crate::engine::lean`]); everything else is the `Pod`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedPod(pub Pod);

impl std::ops::Deref for WatchedPod {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.0
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// `apiVersion` and `kind` are skipped: the watch asked for pods.
        #[derive(Deserialize)]
        struct Lean {
            #[serde(default)]
            metadata: LeanMeta,
            spec: Option<PodSpec>,
            status: Option<PodStatus>,
        }
        let lean = Lean::deserialize(deserializer)?;
        Ok(WatchedPod(Pod {
            metadata: lean.metadata.into(),
            spec: lean.spec,
            status: lean.status,
        }))
    }
}

crate::engine::lean::resource_as!(WatchedPod, Pod);

impl k8s_openapi::Metadata for WatchedPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// The cached form of a virtual pod: all of it (a pod without a host copy yet is translated
/// from the cache).
pub fn cache_virtual_pod(pod: &mut WatchedPod) -> CachedPod {
    Packed::pack(&pod.0)
}

/// The cached form of a host pod: what [`translate::trim_cached_host_pod`] keeps. The rest is
/// taken out of `pod` while it is packed and put back after: `pod` is left as it came.
pub fn cache_host_pod(pod: &mut WatchedPod) -> CachedPod {
    let mut held = translate::Uncached::default();
    translate::swap_uncached(&mut pod.0, &mut held);
    let packed = Packed::pack(&pod.0);
    translate::swap_uncached(&mut pod.0, &mut held);
    packed
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    #[test]
    fn a_watched_pod_is_the_pod_without_managed_fields() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "team-a", "uid": "u-1", "labels": {"app": "web"},
                         "managedFields": [{"manager": "kwok", "operation": "Update", "apiVersion": "v1",
                                            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}]},
            "spec": {"containers": [{"name": "c", "image": "nginx"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        });
        let mut want: Pod = serde_json::from_value(json.clone()).unwrap();
        want.metadata.managed_fields = None;
        let watched: WatchedPod = serde_json::from_value(json).unwrap();
        assert_eq!(watched.0, want);
        assert_eq!(<WatchedPod as kube::Resource>::kind(&()), "Pod");
        assert_eq!(<WatchedPod as kube::Resource>::plural(&()), "pods");
    }
}
