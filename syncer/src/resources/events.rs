//! Host Events about OUR host objects are copied into the virtual cluster, rewritten to the
//! virtual object (kind, namespace, name, uid, and host names in the message). Events about
//! anything else in the host namespace never leak. Virtual events are never copied down.
//!
//! Each copy carries [`ANNOTATION_HOST_EVENT`] (host event uid + fingerprint of what changes),
//! so after a restart one paginated metadata LIST tells which copies are already current: a
//! restart re-writes no event (it used to re-POST and re-PATCH every one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::engine::Shared;
use crate::engine::packed::Packed;
use crate::engine::apply::FIELD_MANAGER;
use crate::engine::error::SyncError;
use crate::engine::queue::Key;
use crate::engine::worker::{Outcome, Reconciler};
use crate::error::Cluster;
use crate::{markers, naming};

/// How the cache holds a host event.
pub type CachedEvent = Packed<Event>;

/// The cached form of a host event.
pub fn cache_event(e: &Event) -> CachedEvent {
    Packed::pack(e.clone())
}

/// Annotation on a virtual copy: `<host event uid> <fingerprint hash>`.
pub const ANNOTATION_HOST_EVENT: &str = "vnest.dev/host-event";
/// Page size of the startup LIST of our virtual copies.
const SEED_PAGE: u32 = 500;

/// The virtual object a host event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualTarget {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub host_name: String,
}

/// The virtual copy of host event `e` about `t` (pure).
pub fn virtual_event(e: &Event, t: &VirtualTarget, host_namespace: &str) -> Event {
    let host_name = e.metadata.name.clone().unwrap_or_default();
    let suffix = host_name.rsplit_once('.').map_or(host_name.as_str(), |(_, s)| s);
    let rewrite = |s: &str| {
        s.replace(
            &format!("{host_namespace}/{}", t.host_name),
            &format!("{}/{}", t.namespace, t.name),
        )
        .replace(&t.host_name, &t.name)
    };
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{suffix}", t.name)),
            namespace: Some(t.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(t.kind.clone()),
            namespace: Some(t.namespace.clone()),
            name: Some(t.name.clone()),
            uid: Some(t.uid.clone()),
            field_path: e.involved_object.field_path.clone(),
            resource_version: None,
        },
        reason: e.reason.clone(),
        message: e.message.as_deref().map(rewrite),
        type_: e.type_.clone(),
        source: e.source.clone(),
        count: e.count,
        first_timestamp: e.first_timestamp.clone(),
        last_timestamp: e.last_timestamp.clone(),
        event_time: e.event_time.clone(),
        reporting_component: e.reporting_component.clone(),
        reporting_instance: e.reporting_instance.clone(),
        action: e.action.clone(),
        series: e.series.clone(),
        related: None,
    }
}

/// How long an event whose object is not (yet) in our cache is looked at again.
const CACHE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `e` is about a kind we sync in the host namespace and young enough that its object
/// may just not be in our cache yet.
fn may_be_ahead_of_cache(e: &Event, host_namespace: &str, now: Timestamp) -> bool {
    let io = &e.involved_object;
    let ours_kind = matches!(io.kind.as_deref(), Some("Pod" | "ConfigMap" | "Secret"));
    let here = io.namespace.as_deref() == Some(host_namespace);
    let created = e.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let young = created.is_some_and(|c| {
        std::time::Duration::try_from(now.duration_since(c)).is_ok_and(|age| age < CACHE_CATCH_UP)
    });
    ours_kind && here && young
}

/// What changes between two sightings of the same event, hashed.
fn fingerprint(e: &Event) -> String {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}",
        e.count,
        e.last_timestamp,
        e.message,
        e.series.as_ref().map(|s| s.count)
    );
    naming::short_hash(&[&text])
}

pub struct EventSync {
    pub shared: Arc<Shared>,
    /// Packed: a host namespace may hold tens of thousands of events (one hour's worth).
    pub host_events: Store<CachedEvent>,
    pub host_pods: Store<crate::resources::pods::CachedPod>,
    pub host_configmaps: Store<ConfigMap>,
    pub host_secrets: Store<Secret>,
    /// host event uid -> fingerprint last copied (skips re-writing unchanged events).
    pub copied: Mutex<HashMap<String, String>>,
    /// Set once `copied` has been filled from the virtual copies that exist (after a restart).
    pub seeded: tokio::sync::OnceCell<()>,
}

impl EventSync {
    /// Fills `copied` from our existing virtual copies (metadata only, paginated), once. Started
    /// at startup beside the cache lists; a reconcile waits for it (and retries it on failure).
    pub async fn seed(&self, vcluster: &str) -> Result<(), SyncError> {
        self.seeded
            .get_or_try_init(|| async {
                let api: Api<Event> = Api::all(self.shared.virt.clone());
                let mut lp = ListParams::default()
                    .labels(&markers::selector(vcluster))
                    .limit(SEED_PAGE);
                let mut found = HashMap::new();
                loop {
                    let page = api.list_metadata(&lp).await.map_err(|e| {
                        SyncError::from_kube(e, Cluster::Virtual, "list", "Event", "copies of host events")
                    })?;
                    for m in &page.items {
                        if let Some((uid, print)) = m
                            .annotations()
                            .get(ANNOTATION_HOST_EVENT)
                            .and_then(|v| v.split_once(' '))
                        {
                            found.insert(uid.to_owned(), print.to_owned());
                        }
                    }
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => lp = lp.continue_token(&token),
                        None => break,
                    }
                }
                tracing::debug!(copies = found.len(), "event copies found");
                self.copied
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(found);
                Ok::<(), SyncError>(())
            })
            .await
            .map(|_| ())
    }

    fn target(&self, e: &Event) -> Option<VirtualTarget> {
        let io = &e.involved_object;
        if io.namespace.as_deref() != Some(self.shared.host_namespace.as_str()) {
            return None;
        }
        let name = io.name.clone()?;
        let ns = &self.shared.host_namespace;
        let (kind, meta) = match io.kind.as_deref()? {
            "Pod" => (
                "Pod",
                self.host_pods
                    .get(&ObjectRef::new(&name).within(ns))
                    .map(|o| o.metadata.clone()),
            ),
            "ConfigMap" => (
                "ConfigMap",
                self.host_configmaps
                    .get(&ObjectRef::new(&name).within(ns))
                    .map(|o| o.metadata.clone()),
            ),
            "Secret" => (
                "Secret",
                self.host_secrets
                    .get(&ObjectRef::new(&name).within(ns))
                    .map(|o| o.metadata.clone()),
            ),
            _ => return None,
        };
        let meta = meta?;
        // Only our copies of tenant objects (not e.g. token Secrets).
        let recorded_kind = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(markers::ANNOTATION_OBJECT_KIND));
        if recorded_kind.is_some_and(|k| k != kind) {
            return None;
        }
        if io.uid.is_some() && io.uid != meta.uid {
            return None; // about an older object of that name
        }
        let source = markers::source_of(&meta)?;
        Some(VirtualTarget {
            kind: kind.into(),
            namespace: source.namespace?,
            name: source.name,
            uid: source.uid,
            host_name: name,
        })
    }
}

impl Reconciler for EventSync {
    fn name(&self) -> &'static str {
        "events"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let Some(cached) = self
            .host_events
            .get(&ObjectRef::new(&key.name).within(&self.shared.host_namespace))
        else {
            return Ok(Outcome::done());
        };
        let e = cached.unpack().map_err(|e| SyncError::Cache {
            kind: "Event",
            name: key.name.clone(),
            message: e.to_string(),
        })?;
        let Some(target) = self.target(&e) else {
            // The event and its object arrive on different watches: a young event about a kind
            // we sync may simply be ahead of our cache. Look again for a short while.
            return Ok(
                if may_be_ahead_of_cache(&e, &self.shared.host_namespace, Timestamp::now()) {
                    Outcome::requeue(std::time::Duration::from_secs(1))
                } else {
                    Outcome::done()
                },
            );
        };
        let vcluster = self.shared.translate_ctx()?.vcluster;
        self.seed(&vcluster).await?;
        let uid = e.uid().unwrap_or_default();
        let print = fingerprint(&e);
        {
            let copied = self
                .copied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if copied.get(&uid) == Some(&print) {
                return Ok(Outcome::done());
            }
        }
        let mut desired = virtual_event(&e, &target, &self.shared.host_namespace);
        let stamp = format!("{uid} {print}");
        desired.metadata.labels = Some(
            [(
                markers::LABEL_MANAGED_BY.to_owned(),
                naming::safe_label_value(&vcluster),
            )]
            .into(),
        );
        desired.metadata.annotations = Some([(ANNOTATION_HOST_EVENT.to_owned(), stamp.clone())].into());
        let name = desired.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.shared.virt.clone(), &target.namespace);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&pp, &desired).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let body = serde_json::json!({
                    "metadata": {"annotations": {ANNOTATION_HOST_EVENT: stamp}},
                    "count": desired.count, "lastTimestamp": desired.last_timestamp,
                    "message": desired.message, "series": desired.series,
                });
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                api.patch(&name, &pp, &Patch::Merge(&body))
                    .await
                    .map_err(|e| SyncError::from_kube(e, Cluster::Virtual, "patch", "Event", &name))?;
            }
            // The virtual namespace is going away: nothing to tell anyone.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => return Ok(Outcome::done()),
            Err(e) => {
                return Err(SyncError::from_kube(
                    e,
                    Cluster::Virtual,
                    "create",
                    "Event",
                    &name,
                ));
            }
        }
        let mut copied = self
            .copied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if copied.len() > 50_000 {
            copied.clear(); // bounded memory; worst case an event is re-patched once
        }
        copied.insert(uid, print);
        Ok(Outcome::done())
    }

    fn tenant_object(&self, _key: &Key) -> Option<ObjectReference> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_events_about_our_kinds_are_retried() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let ev = |kind: &str, ns: &str, created: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e", "namespace": ns, "creationTimestamp": created},
                "involvedObject": {"kind": kind, "name": "x", "namespace": ns}
            }))
            .unwrap()
        };
        assert!(may_be_ahead_of_cache(
            &ev("Pod", "host", "2026-01-01T00:00:50Z"),
            "host",
            now
        ));
        assert!(
            !may_be_ahead_of_cache(&ev("Pod", "host", "2026-01-01T00:00:00Z"), "host", now),
            "too old"
        );
        assert!(!may_be_ahead_of_cache(
            &ev("Deployment", "host", "2026-01-01T00:00:50Z"),
            "host",
            now
        ));
        assert!(!may_be_ahead_of_cache(
            &ev("Pod", "other", "2026-01-01T00:00:50Z"),
            "host",
            now
        ));
    }

    #[test]
    fn rewrites_the_involved_object_and_the_message() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0-default-0123456789.18a3f", "namespace": "host-ns"},
            "involvedObject": {"kind": "Pod", "name": "web-0-default-0123456789", "namespace": "host-ns", "uid": "h-uid"},
            "reason": "Scheduled",
            "message": "Successfully assigned host-ns/web-0-default-0123456789 to node-1",
            "type": "Normal", "count": 1
        }))
        .expect("event");
        let t = VirtualTarget {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "v-uid".into(),
            host_name: "web-0-default-0123456789".into(),
        };
        let v = virtual_event(&e, &t, "host-ns");
        assert_eq!(v.metadata.name.as_deref(), Some("web-0.18a3f"));
        assert_eq!(v.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(v.involved_object.uid.as_deref(), Some("v-uid"));
        assert_eq!(v.involved_object.name.as_deref(), Some("web-0"));
        assert_eq!(
            v.message.as_deref(),
            Some("Successfully assigned default/web-0 to node-1")
        );
    }
}
