//! Host Events about OUR host objects are copied into the virtual cluster, rewritten to the
//! virtual object (kind, namespace, name, uid, and host names in the message). Events about
//! anything else in the host namespace never leak. Virtual events are never copied down.
//!
//! Each copy carries [`ANNOTATION_HOST_EVENT`] (host event uid + fingerprint of what changes),
//! so after a restart one paginated metadata LIST tells which copies are already current: a
//! restart re-writes no event (it used to re-POST and re-PATCH every one).
//!
//! Host events are not cached: an [`EventInbox`] holds each one only until a worker handled it
//! (a host namespace keeps an hour of events: 18 000 at 10 000 pods, ~2.4 KB each even packed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::engine::Shared;
use crate::engine::error::SyncError;
use crate::engine::events::{HostNames, tenant_text};
use crate::engine::execute::{Action, Executor, Ownership, Target, Write};
use crate::engine::packed::Packed;
use crate::engine::plan::{PatchKind, Plan, RECHECK};
use crate::engine::queue::{FairQueue, Key};
use crate::engine::unbookmarked::Load;
use crate::engine::worker::{Outcome, Reconciler};
use crate::error::Cluster;
use crate::markers::ANNOTATION_HOST_EVENT;
use crate::{markers, naming};

/// How the inbox holds a host event.
pub type CachedEvent = Packed<Event>;

/// Host events waiting for a worker, by name. Fed by the uncached host event watch: an event
/// enters when it is added or changed (and is not about a kind we never copy, nor already
/// copied as it is), leaves when handled or deleted; a relist starts it over.
#[derive(Default)]
pub struct EventInbox {
    pending: Mutex<HashMap<String, Arc<CachedEvent>>>,
}

impl EventInbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CachedEvent>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one watch event; returns the name to queue, if any. `current` tells whether an
    /// event's copy is already up to date.
    pub fn on_watch_event(
        &self,
        event: &watcher::Event<Event>,
        current: impl Fn(&Event) -> bool,
    ) -> Option<String> {
        match event {
            watcher::Event::Init => {
                // Every event that still exists comes again before InitDone.
                self.lock().clear();
                None
            }
            watcher::Event::InitDone => None,
            watcher::Event::Delete(e) => {
                self.lock().remove(&e.name_any());
                None
            }
            watcher::Event::Apply(e) | watcher::Event::InitApply(e) => {
                let name = e.name_any();
                let about_a_copied_kind = matches!(
                    e.involved_object.kind.as_deref(),
                    Some("Pod" | "ConfigMap" | "Secret")
                );
                if !about_a_copied_kind || current(e) {
                    self.lock().remove(&name);
                    return None;
                }
                self.lock().insert(name.clone(), Arc::new(Packed::pack(e)));
                Some(name)
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<CachedEvent>> {
        self.lock().get(name).cloned()
    }

    /// Forgets `name` if it still is the version that was handled (a newer one stays: its key
    /// is queued again).
    pub fn handled(&self, name: &str, version: &Arc<CachedEvent>) {
        let mut pending = self.lock();
        if pending.get(name).is_some_and(|p| Arc::ptr_eq(p, version)) {
            pending.remove(name);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Notes a virtual copy's `<host event uid> <fingerprint>` stamp.
fn record_copy(found: &mut HashMap<String, String>, meta: &ObjectMeta) {
    if let Some((uid, print)) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HOST_EVENT))
        .and_then(|v| v.split_once(' '))
    {
        found.insert(uid.to_owned(), print.to_owned());
    }
}

/// A virtual copy as the read-back parses it: the metadata (without `managedFields`), nothing
/// else of the event (`PartialObjectMeta` would buffer the whole body for its flattened type
/// fields).
#[derive(Debug, Clone, serde::Deserialize)]
struct CopiedEvent {
    #[serde(default, deserialize_with = "lean_meta")]
    metadata: ObjectMeta,
}

fn lean_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    <crate::engine::lean::LeanMeta as serde::Deserialize>::deserialize(d).map(ObjectMeta::from)
}

crate::engine::lean::resource_as!(CopiedEvent, Event);

impl k8s_openapi::Metadata for CopiedEvent {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A failed read-back of the copies, classified like any virtual API error.
fn seed_error(error: watcher::Error) -> SyncError {
    let error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        watcher::Error::NoResourceVersion => {
            return SyncError::Translate(crate::engine::error::TranslateError::NotReady(
                "a resourceVersion in the read-back of copied events".into(),
            ));
        }
    };
    SyncError::from_kube(error, Cluster::Virtual, "watch", "Event", "copies of host events")
}

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
/// Host names in the message become virtual names or are redacted ([`tenant_text`]).
pub fn virtual_event(e: &Event, t: &VirtualTarget, vcluster: &str, host_namespace: &str) -> Event {
    let host_name = e.metadata.name.clone().unwrap_or_default();
    let suffix = host_name.rsplit_once('.').map_or(host_name.as_str(), |(_, s)| s);
    let rewrite = |s: &str| {
        tenant_text(
            s,
            &HostNames {
                vcluster,
                host_namespace,
                virtual_namespace: &t.namespace,
                known: vec![(&t.host_name, &t.name)],
            },
        )
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

/// `<host event uid> <fingerprint>`: the stamp a copy carries in [`ANNOTATION_HOST_EVENT`].
fn stamp(e: &Event) -> String {
    format!("{} {}", e.uid().unwrap_or_default(), fingerprint(e))
}

/// What is known of the virtual copy of a host event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// Copied as it is now (the stamp this process wrote or read back matches).
    Current,
    /// No current copy is known: POST one (the API server tells if the name is taken).
    NotKnown,
    /// A copy exists under the name (the POST was refused as a conflict): patch it.
    Exists,
}

/// The virtual object a host event is about, and what is known of its copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyOf<'a> {
    pub target: &'a VirtualTarget,
    pub vcluster: &'a str,
    pub copy: CopyState,
}

/// What an event reconcile observed.
#[derive(Debug, Clone, Copy)]
pub struct EventObserved<'a> {
    pub event: &'a Event,
    pub host_namespace: &'a str,
    /// `None`: the object the event is about is not in our caches (or not ours).
    pub target: Option<CopyOf<'a>>,
    pub now: Timestamp,
}

/// The pure plan for one host event:
/// - its object is not known: look again shortly while the event is young and about a kind
///   we sync (the event and its object arrive on different watches), else drop it;
/// - its copy is current: nothing;
/// - otherwise create the copy, or patch what changes (count, times, message, series) when
///   the copy exists.
pub fn plan_event(seen: &EventObserved<'_>) -> Plan {
    let e = seen.event;
    let Some(CopyOf {
        target,
        vcluster,
        copy,
    }) = seen.target
    else {
        return if may_be_ahead_of_cache(e, seen.host_namespace, seen.now) {
            Plan::wait(RECHECK)
        } else {
            Plan::noop()
        };
    };
    let mut desired = virtual_event(e, target, vcluster, seen.host_namespace);
    let stamp = stamp(e);
    desired.metadata.labels = Some(
        [(
            markers::LABEL_MANAGED_BY.to_owned(),
            naming::safe_label_value(vcluster),
        )]
        .into(),
    );
    desired.metadata.annotations = Some([(ANNOTATION_HOST_EVENT.to_owned(), stamp.clone())].into());
    let name = desired.metadata.name.clone().unwrap_or_default();
    let to = Target::virtual_object::<Event>(&target.namespace, &name);
    match copy {
        CopyState::Current => Plan::noop(),
        // Ownership is only consulted on the host: a copy that exists is a conflict, then patched.
        CopyState::NotKnown => Plan::one(Action::create(
            to,
            &desired,
            Ownership::ManagedBy,
            "host event about our object",
        )),
        CopyState::Exists => {
            let body = serde_json::json!({
                "metadata": {"annotations": {ANNOTATION_HOST_EVENT: stamp}},
                "count": desired.count, "lastTimestamp": desired.last_timestamp,
                "message": desired.message, "series": desired.series,
            });
            Plan::one(Action::new(
                to,
                Write::patch(PatchKind::Merge, body),
                "host event changed",
            ))
        }
    }
}

pub struct EventSync {
    pub executor: Executor,
    pub inbox: EventInbox,
    pub host_pods: Store<crate::resources::pods::CachedPod>,
    pub host_configmaps: Store<ConfigMap>,
    pub host_secrets: Store<Secret>,
    /// host event uid -> fingerprint last copied (skips re-writing unchanged events).
    pub copied: Mutex<HashMap<String, String>>,
    /// Set once `copied` has been filled from the virtual copies that exist (after a restart).
    pub seeded: tokio::sync::OnceCell<()>,
    /// How the copies are read back (`--initial-list`: whole LISTs, else streamed where the
    /// virtual API server streams, else pages).
    pub read_back: Load,
}

impl EventSync {
    fn shared(&self) -> &Shared {
        self.executor.shared()
    }

    /// Whether the virtual copy of `e` is known to be current (false until the copies were
    /// read back after a start).
    fn is_current(&self, e: &Event) -> bool {
        self.seeded.initialized() && self.copied_as(&e.uid().unwrap_or_default(), &fingerprint(e))
    }

    /// Whether host event `uid` was copied with fingerprint `print`.
    fn copied_as(&self, uid: &str, print: &str) -> bool {
        self.copied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uid)
            .is_some_and(|p| p == print)
    }

    /// The uncached host event watch's handler: events to copy go to the inbox and the queue.
    pub fn on_watch_event(&self, event: &watcher::Event<Event>, queue: &FairQueue) {
        if let Some(name) = self.inbox.on_watch_event(event, |e| self.is_current(e)) {
            queue.add(Key::new("", name));
        }
    }

    /// Fills `copied` from our existing virtual copies (metadata only), once. Started at
    /// startup beside the cache lists; a reconcile waits for it (and retries it on failure).
    pub async fn seed(&self, vcluster: &str) -> Result<(), SyncError> {
        self.seeded
            .get_or_try_init(|| async {
                let selector = markers::selector(vcluster);
                let started = std::time::Instant::now();
                // A whole LIST is split into items as it arrives and only their metadata is
                // parsed: the virtual API server keeps no watch cache for Events and reads them
                // from its datastore once either way (measured on the host API server with
                // 10 000 Events: 0.41-0.51 CPU-s for the LIST against 0.91-1.15 streamed).
                let found = match self.read_back {
                    Load::Whole => self.copies_listed(&selector, true).await?,
                    Load::Streamed => self.copies_listed(&selector, false).await?,
                    Load::Pages => self.copies_paged(&selector).await?,
                };
                tracing::info!(
                    copies = found.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "copied events read back"
                );
                self.copied
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(found);
                Ok::<(), SyncError>(())
            })
            .await
            .map(|_| ())
    }

    /// The copies' stamps in one request: a whole LIST (`whole`) or a streamed list
    /// (WatchList). Pages are dearer than they look: each continue of a selector-filtered list
    /// reads the store again (measured: 10k copies took 21 pages and 3.7 s on an idle box,
    /// one unpaged read 0.5-1 s).
    async fn copies_listed(&self, selector: &str, whole: bool) -> Result<HashMap<String, String>, SyncError> {
        let api: Api<CopiedEvent> = Api::all(self.shared().virt.clone());
        let config = crate::engine::watch::config_for::<Event>().labels(selector);
        let stream = if whole {
            crate::engine::unbookmarked::cached(api, config).boxed()
        } else {
            watcher::watcher(api, config.streaming_lists()).boxed()
        };
        futures::pin_mut!(stream);
        let mut found = HashMap::new();
        while let Some(event) = stream.next().await {
            match event.map_err(seed_error)? {
                watcher::Event::InitApply(m) => record_copy(&mut found, &m.metadata),
                watcher::Event::InitDone => return Ok(found),
                _ => {}
            }
        }
        Err(SyncError::Translate(
            crate::engine::error::TranslateError::NotReady(
                "the read-back of copied events (the stream ended early)".into(),
            ),
        ))
    }

    /// The copies' stamps, LIST page by page (API servers without streamed lists).
    async fn copies_paged(&self, selector: &str) -> Result<HashMap<String, String>, SyncError> {
        let api: Api<Event> = Api::all(self.shared().virt.clone());
        let mut lp = ListParams::default().labels(selector).limit(SEED_PAGE);
        let mut found = HashMap::new();
        loop {
            let page = api.list_metadata(&lp).await.map_err(|e| {
                SyncError::from_kube(e, Cluster::Virtual, "list", "Event", "copies of host events")
            })?;
            for m in &page.items {
                record_copy(&mut found, &m.metadata);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(found),
            }
        }
    }

    fn target(&self, e: &Event) -> Option<VirtualTarget> {
        let io = &e.involved_object;
        if io.namespace.as_deref() != Some(self.shared().host_namespace.as_str()) {
            return None;
        }
        let name = io.name.clone()?;
        let ns = &self.shared().host_namespace;
        let (kind, meta) = match io.kind.as_deref()? {
            "Pod" => (
                "Pod",
                self.host_pods
                    .get(&ObjectRef::new(&name).within(ns))
                    .and_then(|o| o.full_metadata().ok()),
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
        let Some(cached) = self.inbox.get(&key.name) else {
            return Ok(Outcome::done());
        };
        let e = cached.read()?;
        let outcome = self.copy(&e).await?;
        if outcome.requeue_after.is_none() {
            self.inbox.handled(&key.name, &cached);
        }
        Ok(outcome)
    }

    fn tenant_object(&self, _key: &Key) -> Option<ObjectReference> {
        None
    }
}

impl EventSync {
    /// Copies one host event (or tells why not yet).
    async fn copy(&self, e: &Event) -> Result<Outcome, SyncError> {
        let found = match self.target(e) {
            None => None,
            Some(target) => {
                let vcluster = self.shared().translate_ctx()?.vcluster;
                self.seed(&vcluster).await?;
                Some((target, vcluster))
            }
        };
        let uid = e.uid().unwrap_or_default();
        let print = fingerprint(e);
        let now = Timestamp::now();
        let plan = |copy| {
            plan_event(&EventObserved {
                event: e,
                host_namespace: &self.shared().host_namespace,
                target: found.as_ref().map(|(target, vcluster)| CopyOf {
                    target,
                    vcluster,
                    copy,
                }),
                now,
            })
        };
        let known = if self.copied_as(&uid, &print) {
            CopyState::Current
        } else {
            CopyState::NotKnown
        };
        let first = plan(known);
        match self.executor.run_all(&first.actions).await {
            Ok(()) => {}
            // The POST found the name taken: the copy exists; patch it.
            Err(SyncError::Conflict { .. }) => {
                self.executor.run_all(&plan(CopyState::Exists).actions).await?;
            }
            // The virtual namespace is going away: nothing to tell anyone.
            Err(SyncError::Rejected { code: 403 | 404, .. }) => return Ok(Outcome::done()),
            Err(error) => return Err(error),
        }
        if !first.actions.is_empty() {
            self.remember_copy(uid, print);
        }
        Ok(Outcome {
            requeue_after: first.requeue_after,
        })
    }

    /// Notes that host event `uid` is copied with fingerprint `print`.
    fn remember_copy(&self, uid: String, print: String) {
        let mut copied = self
            .copied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if copied.len() > 50_000 {
            copied.clear(); // bounded memory; worst case an event is re-patched once
        }
        copied.insert(uid, print);
    }
}

/// Declares the Event kind: host events of our objects are copied to the virtual objects.
/// Host events are not cached: an inbox holds each until handled. The copies already made are
/// read back first (while the caches list), so that a restart does not hand every host event
/// to a worker only to find it copied.
pub fn register(
    reg: &mut crate::engine::registry::Registry,
    vcluster: String,
    read_back: Load,
    workers: usize,
) {
    use crate::engine::registry::Watch;
    use crate::engine::standard;
    use crate::resources::{configmaps::ConfigMaps, pods, secrets::Secrets};
    let sync = Arc::new(EventSync {
        executor: Executor::new(reg.shared().clone()),
        inbox: EventInbox::default(),
        host_pods: reg.store(&pods::register::host_pods()),
        host_configmaps: reg.store(&standard::host_watch::<ConfigMaps>()),
        host_secrets: reg.store(&standard::host_watch::<Secrets>()),
        copied: Mutex::new(HashMap::new()),
        seeded: tokio::sync::OnceCell::new(),
        read_back,
    });
    let queue = reg.queue("events");
    let gauge = reg
        .shared()
        .metrics
        .store_objects
        .with_label_values(&[Cluster::Host.as_str(), "events"]);
    let seeding = sync.clone();
    let seeded = async move {
        let mut wait = std::time::Duration::from_millis(250);
        while let Err(error) = seeding.seed(&vcluster).await {
            tracing::warn!(%error, retry_in_s = wait.as_secs_f64(), "cannot read back the copied events yet");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(30));
        }
    };
    let handler = sync.clone();
    reg.stream(
        &Watch::<Event>::host_all_in_namespace("events"),
        seeded,
        move |event| {
            handler.on_watch_event(event, &queue);
            gauge.set(i64::try_from(handler.inbox.len()).unwrap_or(i64::MAX));
        },
    );
    reg.workers(sync, workers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_back_copy_keeps_its_stamp_and_drops_the_rest() {
        // A copy as a LIST item: no apiVersion/kind, managedFields, the event's own fields.
        let item = serde_json::json!({
            "metadata": {"name": "web-1.18a", "namespace": "team-a", "resourceVersion": "7",
                         "annotations": {ANNOTATION_HOST_EVENT: "uid-1 print-1"},
                         "managedFields": [{"manager": "vnest", "operation": "Update",
                                            "fieldsType": "FieldsV1", "fieldsV1": {"f:count": {}}}]},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "team-a"},
            "reason": "Scheduled", "message": "assigned", "count": 1
        });
        let copy: CopiedEvent = serde_json::from_value(item).unwrap();
        assert_eq!(copy.metadata.managed_fields, None);
        assert_eq!(copy.metadata.resource_version.as_deref(), Some("7"));
        let mut found = HashMap::new();
        record_copy(&mut found, &copy.metadata);
        assert_eq!(found.get("uid-1").map(String::as_str), Some("print-1"));
        assert_eq!(<CopiedEvent as kube::Resource>::plural(&()), "events");
    }

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

    fn host_event(name: &str, kind: &str, count: i32) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "host", "uid": format!("uid-{name}")},
            "involvedObject": {"kind": kind, "name": "x", "namespace": "host"},
            "reason": "Scheduled", "count": count
        }))
        .unwrap()
    }

    #[test]
    fn the_inbox_holds_an_event_only_until_it_is_handled() {
        let inbox = EventInbox::default();
        let never = |_: &Event| false;
        let e1 = host_event("e1", "Pod", 1);
        assert_eq!(
            inbox.on_watch_event(&watcher::Event::Apply(e1.clone()), never),
            Some("e1".to_owned())
        );
        let first = inbox.get("e1").unwrap();
        assert_eq!(first.unpack().unwrap(), e1);
        // A newer version arrives while the first is being handled: it stays.
        let e1b = host_event("e1", "Pod", 2);
        inbox.on_watch_event(&watcher::Event::Apply(e1b.clone()), never);
        inbox.handled("e1", &first);
        let second = inbox.get("e1").unwrap();
        assert_eq!(second.unpack().unwrap().count, Some(2));
        inbox.handled("e1", &second);
        assert!(inbox.is_empty(), "handled: nothing cached any more");
    }

    #[test]
    fn the_inbox_skips_what_is_never_copied_or_already_current() {
        let inbox = EventInbox::default();
        assert_eq!(
            inbox.on_watch_event(&watcher::Event::Apply(host_event("d", "Deployment", 1)), |_| {
                false
            }),
            None
        );
        assert_eq!(
            inbox.on_watch_event(&watcher::Event::InitApply(host_event("p", "Pod", 1)), |_| true),
            None,
            "already copied as it is (after a restart)"
        );
        assert!(inbox.is_empty());
    }

    #[test]
    fn a_relist_starts_the_inbox_over_and_a_delete_drops_the_event() {
        let inbox = EventInbox::default();
        let never = |_: &Event| false;
        inbox.on_watch_event(&watcher::Event::Apply(host_event("gone", "Pod", 1)), never);
        inbox.on_watch_event(&watcher::Event::Apply(host_event("kept", "Pod", 1)), never);
        inbox.on_watch_event(&watcher::Event::Apply(host_event("deleted", "Pod", 1)), never);
        inbox.on_watch_event(&watcher::Event::Delete(host_event("deleted", "Pod", 1)), never);
        assert!(inbox.get("deleted").is_none());
        inbox.on_watch_event(&watcher::Event::Init, never);
        inbox.on_watch_event(&watcher::Event::InitApply(host_event("kept", "Pod", 1)), never);
        inbox.on_watch_event(&watcher::Event::InitDone, never);
        assert!(inbox.get("gone").is_none(), "not listed again: deleted meanwhile");
        assert!(inbox.get("kept").is_some());
        assert_eq!(inbox.len(), 1);
    }

    /// Host event `name` about host pod "x", created at `created`.
    fn event_at(name: &str, kind: &str, count: i32, created: &str) -> Event {
        let mut e = host_event(name, kind, count);
        e.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created.parse().unwrap(),
        ));
        e
    }

    /// Virtual pod default/web-0, whose host copy is "x".
    fn web_0() -> VirtualTarget {
        VirtualTarget {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "v-uid".into(),
            host_name: "x".into(),
        }
    }

    /// The plan for `e` at 00:01:00 (`copy` None: its object is not in our caches).
    fn plan_at(e: &Event, copy: Option<CopyState>) -> Plan {
        let target = web_0();
        plan_event(&EventObserved {
            event: e,
            host_namespace: "host",
            target: copy.map(|copy| CopyOf {
                target: &target,
                vcluster: "vc",
                copy,
            }),
            now: "2026-01-01T00:01:00Z".parse().unwrap(),
        })
    }

    #[test]
    fn event_plans() {
        let young = "2026-01-01T00:00:50Z";
        let old = "2026-01-01T00:00:00Z";
        let cases = [
            (
                "object not in the caches yet, young event about a pod: look again",
                event_at("e1", "Pod", 1, young),
                None,
                vec![],
                Some(RECHECK),
            ),
            (
                "object not in the caches, old event: drop it",
                event_at("e1", "Pod", 1, old),
                None,
                vec![],
                None,
            ),
            (
                "a kind we do not sync: drop it",
                event_at("e1", "Deployment", 1, young),
                None,
                vec![],
                None,
            ),
            (
                "copied as it is: nothing",
                event_at("e1", "Pod", 1, old),
                Some(CopyState::Current),
                vec![],
                None,
            ),
            (
                "no current copy known: create one",
                event_at("e1", "Pod", 1, old),
                Some(CopyState::NotKnown),
                vec!["create"],
                None,
            ),
            (
                "the copy exists: patch it",
                event_at("e1", "Pod", 2, old),
                Some(CopyState::Exists),
                vec!["patch"],
                None,
            ),
        ];
        for (name, e, copy, ops, requeue) in cases {
            let plan = plan_at(&e, copy);
            assert_eq!((plan.ops(), plan.requeue_after), (ops, requeue), "{name}");
        }
    }

    #[test]
    fn a_copy_is_created_on_the_virtual_object_with_our_label_and_stamp() {
        let e = host_event("e1", "Pod", 1);
        let plan = plan_at(&e, Some(CopyState::NotKnown));
        let a = &plan.actions[0];
        assert_eq!(a.target, Target::virtual_object::<Event>("default", "web-0.e1"));
        let Write::Create { body, .. } = &a.write else {
            panic!("a create")
        };
        assert_eq!(body["kind"], "Event");
        assert_eq!(body["involvedObject"]["uid"], "v-uid");
        assert_eq!(body["metadata"]["labels"][markers::LABEL_MANAGED_BY], "vc");
        assert_eq!(
            body["metadata"]["annotations"][ANNOTATION_HOST_EVENT],
            format!("uid-e1 {}", fingerprint(&e))
        );
    }

    #[test]
    fn a_changed_event_patches_what_changes_and_a_new_stamp() {
        let before = host_event("e1", "Pod", 1);
        let after = host_event("e1", "Pod", 2);
        assert_ne!(
            fingerprint(&before),
            fingerprint(&after),
            "the count is fingerprinted"
        );
        assert_eq!(fingerprint(&after), fingerprint(&host_event("e1", "Pod", 2)));
        let plan = plan_at(&after, Some(CopyState::Exists));
        let Write::Patch {
            subresource: None,
            patch,
        } = &plan.actions[0].write
        else {
            panic!("a patch of the copy")
        };
        assert_eq!(patch.kind, PatchKind::Merge);
        assert_eq!(
            patch.body,
            serde_json::json!({
                "metadata": {"annotations": {ANNOTATION_HOST_EVENT: stamp(&after)}},
                "count": 2, "lastTimestamp": null, "message": null, "series": null,
            })
        );
        assert_eq!(
            plan.actions[0].target,
            Target::virtual_object::<Event>("default", "web-0.e1")
        );
    }

    #[test]
    fn rewrites_the_involved_object_and_the_message() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0-default-0123456789.18a3f", "namespace": "host-ns"},
            "involvedObject": {"kind": "Pod", "name": "web-0-default-0123456789", "namespace": "host-ns", "uid": "h-uid"},
            "reason": "Scheduled",
            "message": format!("Successfully assigned host-ns/web-0-default-0123456789 to node-1; persistentvolumeclaim \"{}\" not found; {} too", naming::host_name("vc", "default", "data-web-0"), naming::host_name("vc2", "x", "y")),
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
        let v = virtual_event(&e, &t, "vc", "host-ns");
        assert_eq!(v.metadata.name.as_deref(), Some("web-0.18a3f"));
        assert_eq!(v.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(v.involved_object.uid.as_deref(), Some("v-uid"));
        assert_eq!(v.involved_object.name.as_deref(), Some("web-0"));
        assert_eq!(
            v.message.as_deref(),
            Some(
                "Successfully assigned default/web-0 to node-1; persistentvolumeclaim \"data-web-0\" not found; <host object> too"
            )
        );
    }
}
