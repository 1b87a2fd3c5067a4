//! Readiness without polling: each cluster is proven reachable by a long-lived watch the syncer
//! needs anyway (host: its owner/anchor object; virtual: namespaces, metadata only). A watch
//! that lists and streams is healthy; an error from it marks the cluster unready until the watch
//! recovers. `/readyz` reads these flags and makes no API request of its own.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Owner;
use crate::error::Cluster;
use crate::metrics::Metrics;

/// Why a cluster is not ready, or `None` when it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub cluster: Cluster,
    pub problem: Option<String>,
}

/// Shared readiness of both clusters.
pub struct Readiness {
    host: Mutex<Option<String>>,
    virtual_: Mutex<Option<String>>,
    metrics: Metrics,
}

impl Readiness {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        let r = Arc::new(Self {
            host: Mutex::new(Some("connecting".into())),
            virtual_: Mutex::new(Some("connecting".into())),
            metrics,
        });
        r.publish(Cluster::Host, false);
        r.publish(Cluster::Virtual, false);
        r
    }

    fn slot(&self, cluster: Cluster) -> &Mutex<Option<String>> {
        match cluster {
            Cluster::Host => &self.host,
            Cluster::Virtual => &self.virtual_,
        }
    }

    fn publish(&self, cluster: Cluster, ready: bool) {
        self.metrics
            .cluster_ready
            .with_label_values(&[cluster.as_str()])
            .set(i64::from(ready));
    }

    /// Records a cluster's state: `None` means ready, `Some(reason)` means not ready.
    pub fn set(&self, cluster: Cluster, problem: Option<String>) {
        let ready = problem.is_none();
        let mut slot = self
            .slot(cluster)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *slot != problem {
            match &problem {
                None => tracing::info!(cluster = cluster.as_str(), "cluster reachable"),
                Some(reason) => tracing::warn!(cluster = cluster.as_str(), %reason, "cluster not ready"),
            }
            *slot = problem;
        }
        drop(slot);
        self.publish(cluster, ready);
    }

    pub fn states(&self) -> [ClusterState; 2] {
        [Cluster::Host, Cluster::Virtual].map(|cluster| ClusterState {
            cluster,
            problem: self
                .slot(cluster)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.states().iter().all(|s| s.problem.is_none())
    }
}

/// Follows a watch stream and turns its health into readiness of `cluster`. `check` sees the
/// objects after each complete (re)list and may veto readiness with a reason.
async fn follow<K, F>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    cluster: Cluster,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
    mut on_objects: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&[PartialObjectMeta<K>]) -> Option<String>,
{
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer = Vec::new();
    let mut current = Vec::new();
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Err(error)) => {
                readiness.set(cluster, Some(format!("watch failed: {error}")));
            }
            Some(Ok(Event::Init)) => buffer.clear(),
            Some(Ok(Event::InitApply(obj))) => buffer.push(obj),
            Some(Ok(Event::InitDone)) => {
                current = std::mem::take(&mut buffer);
                readiness.set(cluster, on_objects(&current));
            }
            Some(Ok(Event::Apply(obj))) => {
                current.retain(|o| o.name_any() != obj.name_any());
                current.push(obj);
                readiness.set(cluster, on_objects(&current));
            }
            Some(Ok(Event::Delete(obj))) => {
                current.retain(|o| o.name_any() != obj.name_any());
                readiness.set(cluster, on_objects(&current));
            }
        }
    }
}

/// Watches the host owner (anchor) object: the host is ready once the watch works AND the
/// anchor exists. Publishes the ownerReference every synced host object must carry.
pub async fn watch_host_anchor<K>(
    api: Api<PartialObjectMeta<K>>,
    owner: Owner,
    readiness: Arc<Readiness>,
    anchor: watch::Sender<Option<OwnerReference>>,
    cancel: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let fields = format!("metadata.name={}", owner.name);
    let config = crate::engine::watch::config().fields(&fields);
    follow(api, config, Cluster::Host, readiness, cancel, |objects| {
        let found = objects
            .iter()
            .find(|o| o.name_any() == owner.name)
            .and_then(|o| o.uid().map(|uid| owner_reference(&owner, uid)));
        let problem = match &found {
            Some(_) => None,
            None => Some(format!(
                "waiting for the owner {} {:?} in the host namespace",
                owner.kind.kind(),
                owner.name
            )),
        };
        anchor.send_if_modified(|current| {
            let changed = *current != found;
            current.clone_from(&found);
            changed
        });
        problem
    })
    .await;
}

/// Watches virtual namespaces (metadata only): the virtual cluster is ready once that works.
pub async fn watch_virtual<K>(
    api: Api<PartialObjectMeta<K>>,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    follow(
        api,
        crate::engine::watch::config(),
        Cluster::Virtual,
        readiness,
        cancel,
        |_| None,
    )
    .await;
}

/// The ownerReference to the anchor. Not a controller reference: host controllers (e.g. the
/// StatefulSet controller) must never adopt or release our objects through it.
pub fn owner_reference(owner: &Owner, uid: String) -> OwnerReference {
    OwnerReference {
        api_version: owner.kind.api_version().into(),
        kind: owner.kind.kind().into(),
        name: owner.name.clone(),
        uid,
        controller: Some(false),
        block_owner_deletion: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OwnerKind;

    #[test]
    fn readiness_needs_both_clusters() {
        let metrics = Metrics::new().expect("metrics");
        let r = Readiness::new(metrics.clone());
        assert!(!r.is_ready());
        r.set(Cluster::Host, None);
        assert!(!r.is_ready());
        r.set(Cluster::Virtual, None);
        assert!(r.is_ready());
        r.set(Cluster::Host, Some("watch failed".into()));
        assert!(!r.is_ready());
        let rendered = metrics.render().expect("render");
        assert!(
            rendered.contains("vnest_syncer_cluster_ready{cluster=\"host\"} 0"),
            "{rendered}"
        );
        assert!(
            rendered.contains("vnest_syncer_cluster_ready{cluster=\"virtual\"} 1"),
            "{rendered}"
        );
    }

    #[test]
    fn anchor_reference_is_not_a_controller() {
        let owner = Owner {
            kind: OwnerKind::StatefulSet,
            name: "demo".into(),
        };
        let r = owner_reference(&owner, "u-1".into());
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str()),
            ("apps/v1", "StatefulSet")
        );
        assert_eq!(r.controller, Some(false));
    }
}
