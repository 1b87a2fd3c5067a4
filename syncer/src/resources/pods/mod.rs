//! Pods: virtual -> host at create, mutable fields after, status and node binding back.

pub mod refs;
pub mod sync;
pub mod translate;

use k8s_openapi::api::core::v1::Pod;

use crate::engine::packed::Packed;

/// How pod caches hold a pod (both sides): its metadata, and the rest as JSON.
pub type CachedPod = Packed<Pod>;

/// The cached form of a virtual pod: all of it (a pod without a host copy yet is translated
/// from the cache).
pub fn cache_virtual_pod(pod: &Pod) -> CachedPod {
    Packed::pack(pod)
}

/// The cached form of a host pod: what [`translate::trim_cached_host_pod`] keeps.
pub fn cache_host_pod(pod: &Pod) -> CachedPod {
    let mut pod = pod.clone();
    translate::trim_cached_host_pod(&mut pod);
    Packed::pack(&pod)
}
