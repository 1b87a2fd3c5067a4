//! The generic sync engine, written once and used by every kind.
//!
//! - [`queue`]: a fair work queue (round-robin across namespaces, dedup, backoff).
//! - [`watch`]: one watch per (cluster, kind) feeding a reflector store and the queues;
//!   [`packed`]: the compact form big caches (pods) keep; [`lean`]: parsing without
//!   `managedFields`; [`unbookmarked`]: our list-then-watch streams: whole LISTs from the watch
//!   cache split as they arrive ([`list_split`]), and the watch of a kind without a watch cache
//!   (host Events), which lists again rather than resume from a stale point.
//! - [`registry`]: what kinds declare (watches, triggers, reconcilers); one watch per (cluster,
//!   kind, selection); workers start once every cache has listed.
//! - [`plan`]: pure decisions: a [`plan::Plan`] of actions, the lifecycle rules every kind
//!   shares (foreign, orphan, stale uid, create pending), minimal patches.
//! - [`execute`]: the one executor of planned writes on both clusters (counts, remembers
//!   recent writes, maps answers to [`error::SyncError`]); [`recent`]: the memory of writes
//!   the caches may not show yet.
//! - [`worker`]: runs a reconciler over a queue with metrics, backoff and tenant Events.
//! - [`standard`]: the whole reconcile for kinds that are plain copies (ConfigMaps, Secrets).
//! - [`events`], [`error`]: what the tenant sees when something is refused.

pub mod error;
pub mod events;
pub mod execute;
pub mod lean;
pub mod list_split;
pub mod ownership;
pub mod packed;
pub mod plan;
pub mod progress;
pub mod queue;
pub mod recent;
pub mod registry;
pub mod standard;
pub mod streak;
pub mod unbookmarked;
pub mod watch;
pub mod worker;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use error::{SyncError, TranslateError};
use events::Events;

/// How soon a key is looked at again when a write is still on its way: a conflict, a stale
/// copy being deleted, a create the cache does not show yet, a Service someone recreated first.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What every reconciler shares: clients, the current translation context, metrics, events.
pub struct Shared {
    pub host: kube::Client,
    pub virt: kube::Client,
    pub host_namespace: String,
    /// Set once the vcluster's own host objects (owner, Service) are known; `None` before.
    pub translate: tokio::sync::watch::Receiver<Option<TranslateCtx>>,
    pub metrics: Metrics,
    pub events: Events,
    pub cancel: CancellationToken,
    pub workers: usize,
    /// Tracks the first catch-up after start (every watch listed, every queue drained).
    pub initial_sync: std::sync::Arc<progress::InitialSync>,
    /// Whether this replica leads (workers and kind tasks wait for it; the executor checks it
    /// before every write).
    pub leadership: crate::leader::Leadership,
}

impl Shared {
    /// The current translation context, or a "waiting" error that requeues the key.
    pub fn translate_ctx(&self) -> Result<TranslateCtx, SyncError> {
        self.translate.borrow().clone().ok_or_else(|| {
            SyncError::Translate(TranslateError::NotReady(
                "the vcluster's owner object and Service on the host".into(),
            ))
        })
    }
}

/// Plain data every translation needs: no clients, no clock. Holds only what every kind
/// uses and the facts found at run time (the anchor object, the Service IPs); the settings of
/// one kind live with that kind (e.g. `resources::pods::PodSettings`).
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateCtx {
    pub vcluster: String,
    pub host_namespace: String,
    /// ownerReference to the vcluster's anchor object, put on every host object.
    pub owner: OwnerReference,
    /// ClusterIP of the vcluster's host Service (KUBERNETES_SERVICE_HOST of synced pods).
    pub kube_service_ip: String,
    /// Nameserver written into synced pods' DNS config (and the IP of the virtual
    /// kube-system/kube-dns Service).
    pub dns_nameserver: String,
}

#[cfg(test)]
impl Shared {
    /// Shared state for unit tests: clients that point at a closed port (never called).
    #[allow(clippy::unwrap_used, reason = "a fixed valid URL")]
    pub fn test() -> Self {
        let client =
            || kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        Self {
            host: client(),
            virt: client(),
            host_namespace: "host".into(),
            translate: tokio::sync::watch::channel(Some(TranslateCtx::test())).1,
            metrics: crate::metrics::Metrics::new().unwrap(),
            events: Events::new(client()),
            cancel: CancellationToken::new(),
            workers: 4,
            initial_sync: progress::InitialSync::new(),
            leadership: crate::leader::Leadership::alone(),
        }
    }
}

#[cfg(test)]
impl TranslateCtx {
    /// A context for unit tests: vcluster `vc` in host namespace `host`.
    pub fn test() -> Self {
        Self {
            vcluster: "vc".into(),
            host_namespace: "host".into(),
            owner: OwnerReference {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: "vc".into(),
                uid: "owner-uid".into(),
                ..Default::default()
            },
            kube_service_ip: "10.96.0.10".into(),
            dns_nameserver: "10.96.0.11".into(),
        }
    }
}
