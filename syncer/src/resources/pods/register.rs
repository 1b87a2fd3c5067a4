//! What the pod kind declares to the engine: its two pod watches (packed caches), what wakes a
//! pod (its ConfigMaps and Secrets appearing, its namespace's labels, its token Secret), what a
//! pod wakes (the ConfigMaps/Secrets it uses, the Nodes it runs on), and its reconciler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::refs::{RefIndex, RefKind};
use super::sync::PodSync;
use super::{CachedPod, WatchedPod, cache_host_pod, cache_virtual_pod};
use crate::engine::execute::Executor;
use crate::engine::ownership;
use crate::engine::queue::{FairQueue, Key};
use crate::engine::registry::{Registry, Watch, enqueue_all, key_of};
use crate::engine::standard::{self, CopiedKind};
use crate::engine::watch::Change;
use crate::markers::{self, TOKEN_SECRET_KIND};
use crate::resources::configmaps::ConfigMaps;
use crate::resources::nodes::NodeUsage;
use crate::resources::secrets::Secrets;

/// Every virtual pod, cached packed.
pub fn virtual_pods() -> Watch<WatchedPod, CachedPod> {
    Watch::virtual_all("pods").cached_as(cache_virtual_pod)
}

/// Our host pods, cached packed and trimmed.
pub fn host_pods() -> Watch<WatchedPod, CachedPod> {
    Watch::host_owned("pods").cached_as(cache_host_pod)
}

/// Every virtual Namespace (their labels are copied onto pods).
fn virtual_namespaces() -> Watch<Namespace> {
    Watch::virtual_all("namespaces")
}

/// Declares the pod kind; `workers` reconciles in flight.
pub fn register(reg: &mut Registry, settings: super::PodSettings, workers: usize) {
    let pod_sync = Arc::new(PodSync {
        executor: Executor::new(reg.shared().clone()),
        settings,
        virtual_pods: reg.store(&virtual_pods()),
        host_pods: reg.store(&host_pods()),
        host_secrets: reg.store(&standard::host_watch::<Secrets>()),
        virtual_namespaces: reg.store(&virtual_namespaces()),
        virtual_configmaps: reg.store(&standard::virtual_watch::<ConfigMaps>()),
        virtual_secrets: reg.store(&standard::virtual_watch::<Secrets>()),
        virtual_services: reg.store(&crate::resources::shared::virtual_services()),
        first_seen: Mutex::new(HashMap::new()),
    });
    wake_on_references(reg);
    on_virtual_pods(reg, &pod_sync);
    on_host_pods(reg, &pod_sync);
    wake_on_token_secrets(reg);
    wake_on_namespace_labels(reg, &pod_sync);
    reg.workers(pod_sync, workers);
}

/// A ConfigMap/Secret that appears lets the pods waiting for it start.
fn wake_on_references(reg: &mut Registry) {
    let (q, index) = (reg.queue("pods"), reg.index::<RefIndex>());
    reg.on(&standard::virtual_watch::<ConfigMaps>(), move |c| {
        if let Change::Applied(o) = c {
            for k in index.users(
                RefKind::ConfigMap,
                &o.namespace().unwrap_or_default(),
                &o.name_any(),
            ) {
                q.add(k);
            }
        }
    });
    let (q, index) = (reg.queue("pods"), reg.index::<RefIndex>());
    reg.on(&standard::virtual_watch::<Secrets>(), move |c| {
        if let Change::Applied(o) = c {
            for k in index.users(RefKind::Secret, &o.namespace().unwrap_or_default(), &o.name_any()) {
                q.add(k);
            }
        }
    });
}

/// Virtual pods: the pod queue, what they mount (the ConfigMaps/Secrets queues), where they
/// run (the nodes queue).
fn on_virtual_pods(reg: &mut Registry, pod_sync: &Arc<PodSync>) {
    let (q, cm_q, secret_q, nq) = (
        reg.queue("pods"),
        reg.queue(ConfigMaps::NAME),
        reg.queue(Secrets::NAME),
        reg.queue("nodes"),
    );
    let (refs, usage) = (reg.index::<RefIndex>(), reg.index::<NodeUsage>());
    let (ps, hs) = (pod_sync.clone(), pod_sync.host_pods.clone());
    let relisted_before = std::sync::atomic::AtomicBool::new(false);
    let ref_queue = move |changed: Vec<(RefKind, Key)>| {
        for (kind, key) in changed {
            match kind {
                RefKind::ConfigMap => cm_q.add(key),
                RefKind::Secret => secret_q.add(key),
            }
        }
    };
    reg.on(&virtual_pods(), move |c| match c {
        Change::Applied(p) => {
            let key = key_of(p);
            if p.meta().creation_timestamp.is_some() && node_of(p).is_none() {
                ps.seen(&key);
            }
            q.add(key);
            ref_queue(refs.apply(p));
            queue_nodes(&nq, usage.set(false, p, node_of(p).as_deref()));
        }
        Change::Deleted(p) => {
            q.add(key_of(p));
            ref_queue(refs.delete(p));
            queue_nodes(&nq, usage.set(false, p, None));
        }
        Change::Relisted(store) => {
            let pods = store.state();
            enqueue_all(&q, store, |p| Some(key_of(p)));
            // Host pods whose virtual pod went away while this watch was behind. Not on the
            // first list: the host watch's own first list queues every host pod before any
            // worker starts (mapping a host pod to its key unpacks its metadata: 10 000 of
            // them cost ~0.15 CPU-s a restart).
            if relisted_before.swap(true, std::sync::atomic::Ordering::Relaxed) {
                enqueue_all(&q, &hs, cached_host_pod_key);
            }
            // One parse per pod feeds both indexes.
            let mut placed = Vec::new();
            ref_queue(refs.rebuild(unpacked(&pods).inspect(|p| {
                if let Some(node) = node_of(p) {
                    placed.push((node, p.namespace().unwrap_or_default(), p.name_any()));
                }
            })));
            queue_nodes(&nq, usage.rebuild(false, placed));
        }
    });
}

/// Host pods: back to the virtual key; where they run.
fn on_host_pods(reg: &mut Registry, pod_sync: &Arc<PodSync>) {
    let (q, nq, usage) = (reg.queue("pods"), reg.queue("nodes"), reg.index::<NodeUsage>());
    let vs = pod_sync.virtual_pods.clone();
    reg.on(&host_pods(), move |c| match c {
        Change::Applied(p) => {
            if let Some(k) = ownership::host_key("Pod", p.meta()) {
                q.add(k);
            }
            queue_nodes(&nq, usage.set(true, p, node_of(p).as_deref()));
        }
        Change::Deleted(p) => {
            if let Some(k) = ownership::host_key("Pod", p.meta()) {
                q.add(k);
            }
            queue_nodes(&nq, usage.set(true, p, None));
        }
        Change::Relisted(store) => {
            enqueue_all(&q, store, cached_host_pod_key);
            enqueue_all(&q, &vs, |p| Some(key_of(p)));
            queue_nodes(&nq, usage.rebuild(true, host_placements(&store.state())));
        }
    });
}

/// Token Secrets belong to their pod.
fn wake_on_token_secrets(reg: &mut Registry) {
    let q = reg.queue("pods");
    reg.on(&standard::host_watch::<Secrets>(), move |c| match c {
        Change::Applied(s) | Change::Deleted(s) => {
            if let Some(k) = ownership::host_key(TOKEN_SECRET_KIND, s.meta())
                && s.annotations()
                    .get(markers::ANNOTATION_OBJECT_KIND)
                    .map(String::as_str)
                    == Some(TOKEN_SECRET_KIND)
            {
                q.add(k);
            }
        }
        Change::Relisted(_) => {}
    });
}

/// Namespace labels are copied onto pods: a label change re-checks the namespace's pods.
fn wake_on_namespace_labels(reg: &mut Registry, pod_sync: &Arc<PodSync>) {
    let (q, vs) = (reg.queue("pods"), pod_sync.virtual_pods.clone());
    reg.on(&virtual_namespaces(), move |c| {
        if let Change::Applied(ns) = c {
            let name = ns.name_any();
            for p in vs
                .state()
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(name.as_str()))
            {
                q.add(key_of(p.as_ref()));
            }
        }
    });
}

fn queue_nodes(queue: &FairQueue, nodes: Vec<String>) {
    for n in nodes {
        queue.add(Key::new("", n));
    }
}

/// Each cached pod read as `T` (the whole pod, or a partial view), one at a time, beside its
/// cache entry; a body that does not read is logged and skipped.
fn viewed<T: DeserializeOwned>(pods: &[Arc<CachedPod>]) -> impl Iterator<Item = (&CachedPod, T)> + '_ {
    pods.iter().filter_map(|p| match p.view::<T>() {
        Ok(view) => Some((p.as_ref(), view)),
        Err(error) => {
            tracing::error!(ns = ?p.metadata.namespace, name = ?p.metadata.name, %error, "cached pod does not unpack");
            None
        }
    })
}

/// The cached pods whole again, one at a time (a relist rebuilds the indexes from them).
fn unpacked(pods: &[Arc<CachedPod>]) -> impl Iterator<Item = Pod> + '_ {
    viewed::<Pod>(pods).map(|(_, pod)| pod)
}

/// The virtual key a cached host pod belongs to (its markers are in the packed metadata).
fn cached_host_pod_key(p: &CachedPod) -> Option<Key> {
    let meta = p.full_metadata().ok()?;
    ownership::host_key("Pod", &meta)
}

/// Where cached host pods run (node, namespace, name), read from their bodies' `spec.nodeName`
/// alone (a relist of 10k host pods parses no whole pod).
fn host_placements(pods: &[Arc<CachedPod>]) -> Vec<(String, String, String)> {
    #[derive(serde::Deserialize)]
    struct Placed {
        spec: Option<PlacedSpec>,
    }
    #[derive(serde::Deserialize)]
    struct PlacedSpec {
        #[serde(rename = "nodeName")]
        node_name: Option<String>,
    }
    viewed::<Placed>(pods)
        .filter_map(|(p, view)| {
            let node = view.spec?.node_name?;
            Some((
                node,
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    #[test]
    fn host_placements_read_the_node_of_each_scheduled_pod() {
        let host_pod = |name: &str, node: Option<&str>| {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"containers": [{"name": "c", "image": "nginx"}], "nodeName": node},
                "status": {"phase": "Running"}
            }))
            .unwrap();
            Arc::new(cache_host_pod(&mut WatchedPod(pod)))
        };
        let placed = host_placements(&[host_pod("web-0-x", Some("n1")), host_pod("pending-x", None)]);
        assert_eq!(
            placed,
            [("n1".to_owned(), "team-a".to_owned(), "web-0-x".to_owned())]
        );
    }
}
