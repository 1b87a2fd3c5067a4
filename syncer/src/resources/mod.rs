//! One folder (or file) per synced kind, each with a pure translation and a small declaration;
//! [`start`] is the registry: it opens one watch per (cluster, kind), connects the watches to
//! the kinds' fair queues, and starts the workers once every cache has listed.

pub mod configmaps;
pub mod endpoints;
pub mod events;
pub mod networkpolicies;
pub mod nodes;
pub mod pods;
pub mod secrets;
pub mod services;

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::engine::Shared;
use crate::engine::apply::{self, RecentWrites};
use crate::engine::queue::{FairQueue, Key};
use crate::engine::standard::{self, CopiedKind, Copier};
use crate::engine::watch::{self, Change, Subscriber};
use crate::engine::worker::{self, Reconciler};
use crate::error::Cluster;
use crate::markers::{self, TOKEN_SECRET_KIND};
use nodes::{KubeletEndpoint, NodeMode, NodeSync, NodeUsage};
use pods::refs::{RefIndex, RefKind};
use pods::sync::PodSync;

/// Options of the kinds (from the command line).
#[derive(Debug, Clone)]
pub struct KindOptions {
    pub vcluster: String,
    pub pods: pods::PodSettings,
    pub configmaps: configmaps::ConfigMapArgs,
    pub secrets: secrets::SecretArgs,
    /// Node mode and kubelet endpoint (a `None` address: the vcluster Service IP).
    pub nodes: nodes::NodeArgs,
    pub virtual_version: String,
    /// The vcluster's host Service (its ClusterIP/endpoints back the virtual default/kubernetes).
    pub service_name: String,
    pub networkpolicies: networkpolicies::NetworkPolicyArgs,
    /// Whether watches stream their initial objects (`--initial-list`) on each cluster.
    pub host_streams: bool,
    pub virtual_streams: bool,
}

/// A watch config that streams its initial objects when `streams`, else LISTs them in pages.
fn loading(config: watcher::Config, streams: bool) -> watcher::Config {
    if streams { config.streaming_lists() } else { config }
}

type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

fn key_of<K: Resource>(obj: &K) -> Key {
    Key::new(
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// Each cached pod read as `T` (the whole pod, or a partial view), one at a time, beside its
/// cache entry; a body that does not read is logged and skipped.
fn viewed<T: DeserializeOwned>(
    pods: &[Arc<pods::CachedPod>],
) -> impl Iterator<Item = (&pods::CachedPod, T)> + '_ {
    pods.iter().filter_map(|p| match p.view::<T>() {
        Ok(view) => Some((p.as_ref(), view)),
        Err(error) => {
            tracing::error!(ns = ?p.metadata.namespace, name = ?p.metadata.name, %error, "cached pod does not unpack");
            None
        }
    })
}

/// The cached pods whole again, one at a time (a relist rebuilds the indexes from them).
fn unpacked(pods: &[Arc<pods::CachedPod>]) -> impl Iterator<Item = Pod> + '_ {
    viewed::<Pod>(pods).map(|(_, pod)| pod)
}

/// The virtual key a cached host pod belongs to (its markers are in the packed metadata).
fn cached_host_pod_key(p: &pods::CachedPod) -> Option<Key> {
    let meta = p.full_metadata().ok()?;
    standard::host_key("Pod", &meta)
}

/// Where cached host pods run (node, namespace, name), read from their bodies' `spec.nodeName`
/// alone (a relist of 10k host pods parses no whole pod).
fn host_placements(pods: &[Arc<pods::CachedPod>]) -> Vec<(String, String, String)> {
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

/// A store of `C` (the cached form of the watched `K`), its writer, and the subscribers to
/// attach before the watch starts.
struct Pending<K, C = K>
where
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    reader: Store<C>,
    writer: reflector::store::Writer<C>,
    subscribers: Vec<Subscriber<K, C>>,
    /// What the store keeps of each object (a clone, or a smaller form: memory).
    convert: fn(&K) -> C,
    /// True once the first list is in the store and every subscriber has handled it.
    listed: tokio::sync::watch::Sender<bool>,
}

impl<K> Pending<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        Self::caching(K::clone)
    }
}

impl<K, C> Pending<K, C>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn caching(convert: fn(&K) -> C) -> Self {
        let (reader, writer) = reflector::store();
        Self {
            reader,
            writer,
            subscribers: Vec::new(),
            convert,
            listed: tokio::sync::watch::Sender::new(false),
        }
    }
    /// Done once the first list is in the store *and* every subscriber has queued its keys.
    /// Workers wait for this rather than for the store alone: a store is ready before its
    /// subscribers run, and workers started in between reconciled keys that the subscribers
    /// then queued again (a restart reconciled every pod twice).
    fn listed(&self) -> Ready {
        let mut rx = self.listed.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|listed| *listed).await;
        })
    }
    fn on(&mut self, f: impl Fn(Change<'_, K, C>) + Send + Sync + 'static) {
        self.subscribers.push(Arc::new(f));
    }
    fn start(
        mut self,
        api: Api<K>,
        config: watcher::Config,
        cluster: Cluster,
        name: &'static str,
        shared: &Shared,
        tasks: &mut Tasks,
    ) where
        K::DynamicType: Hash + Eq,
    {
        // Last: subscribers run in order, so this one sees the list after all the others.
        let listed = self.listed.clone();
        self.on(move |c| {
            if let Change::Relisted(_) = c {
                listed.send_replace(true);
            }
        });
        let handle = watch::spawn(
            api,
            (self.reader, self.writer),
            config,
            cluster,
            name,
            self.subscribers,
            self.convert,
            shared.metrics.clone(),
            shared.initial_sync.clone(),
            shared.cancel.clone(),
        );
        tasks.spawn(async move {
            let r = handle.await;
            (name, r.map_err(|e| anyhow::anyhow!("watch task panicked: {e}")))
        });
    }
}

/// Enqueues the virtual key of every object in `store` (used after a relist of the other side).
fn enqueue_all<K: Resource<DynamicType = ()> + Clone>(
    queue: &FairQueue,
    store: &Store<K>,
    map: impl Fn(&K) -> Option<Key>,
) {
    for obj in store.state() {
        if let Some(k) = map(&obj) {
            queue.add(k);
        }
    }
}

/// Wires one copied kind (ConfigMaps, Secrets) both ways.
fn wire_copied<C: CopiedKind>(
    virtual_side: &mut Pending<C::K>,
    host_side: &mut Pending<C::K>,
    queue: &FairQueue,
) {
    let host_key = |o: &C::K| standard::host_key(C::KIND, o.meta());
    let (q, hs) = (queue.clone(), host_side.reader.clone());
    virtual_side.on(move |c| match c {
        Change::Applied(o) | Change::Deleted(o) => q.add(key_of(o)),
        Change::Relisted(store) => {
            enqueue_all(&q, store, |o| Some(key_of(o)));
            enqueue_all(&q, &hs, host_key);
        }
    });
    let (q, vs) = (queue.clone(), virtual_side.reader.clone());
    host_side.on(move |c| match c {
        Change::Applied(o) | Change::Deleted(o) => {
            if let Some(k) = host_key(o) {
                q.add(k);
            }
        }
        Change::Relisted(store) => {
            enqueue_all(&q, store, host_key);
            enqueue_all(&q, &vs, |o| Some(key_of(o)));
        }
    });
}

/// The caches the DNS server answers from.
pub struct DnsStores {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
}

/// Starts every synced kind (its tasks join `tasks`). Returns the caches DNS answers from.
pub fn start(shared: Arc<Shared>, opts: KindOptions, tasks: &mut Tasks) -> DnsStores {
    let host_ns = shared.host_namespace.clone();
    let selector = markers::selector(&opts.vcluster);
    let (host_streams, virtual_streams) = (opts.host_streams, opts.virtual_streams);
    let host_cfg = || loading(watcher::Config::default().labels(&selector), host_streams);
    let host_all = || loading(watcher::Config::default(), host_streams);
    let virt_all = || loading(watcher::Config::default(), virtual_streams);
    let virt = shared.virt.clone();
    let host = shared.host.clone();

    let refs = Arc::new(RefIndex::default());
    let usage = Arc::new(NodeUsage::default());
    let (pod_q, cm_q, secret_q, node_q, event_q) = (
        FairQueue::new(),
        FairQueue::new(),
        FairQueue::new(),
        FairQueue::new(),
        FairQueue::new(),
    );

    let mut v_pods = Pending::caching(pods::cache_virtual_pod);
    let mut h_pods = Pending::caching(pods::cache_host_pod);
    let mut v_cms = Pending::<ConfigMap>::new();
    let mut h_cms = Pending::<ConfigMap>::new();
    let mut v_secrets = Pending::<Secret>::new();
    let mut h_secrets = Pending::<Secret>::new();
    let mut v_namespaces = Pending::<Namespace>::new();
    let mut v_nodes = Pending::<Node>::new();
    let mut v_services = Pending::<Service>::new();
    let mut h_services = Pending::<Service>::new();
    let mut h_vc_endpoints = Pending::<Endpoints>::new();
    let mut v_eps = Pending::<Endpoints>::new();
    let mut h_eps = Pending::<Endpoints>::new();
    let svc_q = FairQueue::new();
    let ep_q = FairQueue::new();
    // Every queue counts for the initial sync from the start, before its workers run.
    for q in [&pod_q, &cm_q, &secret_q, &node_q, &event_q, &svc_q, &ep_q] {
        shared.initial_sync.track(q);
    }
    wire_copied::<endpoints::EndpointsKind>(&mut v_eps, &mut h_eps, &ep_q);
    {
        // A Service gaining or losing its selector changes whether its Endpoints are copied.
        let q = ep_q.clone();
        v_services.on(move |c| {
            if let Change::Applied(o) | Change::Deleted(o) = c {
                q.add(key_of(o));
            }
        });
    }
    {
        let (q, hs) = (svc_q.clone(), h_services.reader.clone());
        v_services.on(move |c| match c {
            Change::Applied(o) | Change::Deleted(o) => q.add(key_of(o)),
            Change::Relisted(store) => {
                enqueue_all(&q, store, |o| Some(key_of(o)));
                enqueue_all(&q, &hs, |o| standard::host_key("Service", o.meta()));
            }
        });
        let (q, vs) = (svc_q.clone(), v_services.reader.clone());
        h_services.on(move |c| match c {
            Change::Applied(o) | Change::Deleted(o) => {
                if let Some(k) = standard::host_key("Service", o.meta()) {
                    q.add(k);
                }
            }
            Change::Relisted(store) => {
                enqueue_all(&q, store, |o| standard::host_key("Service", o.meta()));
                enqueue_all(&q, &vs, |o| Some(key_of(o)));
            }
        });
        let kube_key = || Key::new("default", "kubernetes");
        let q = svc_q.clone();
        h_vc_endpoints.on(move |_| q.add(kube_key()));
        let q = svc_q.clone();
        v_eps.on(move |c| {
            let ours = match c {
                Change::Applied(o) | Change::Deleted(o) => {
                    o.namespace().as_deref() == Some("default") && o.name_any() == "kubernetes"
                }
                Change::Relisted(_) => true,
            };
            if ours {
                q.add(kube_key());
            }
        });
    }

    wire_copied::<configmaps::ConfigMaps>(&mut v_cms, &mut h_cms, &cm_q);
    wire_copied::<secrets::Secrets>(&mut v_secrets, &mut h_secrets, &secret_q);
    // A ConfigMap/Secret that appears lets the pods waiting for it start.
    {
        let (q, index) = (pod_q.clone(), refs.clone());
        v_cms.on(move |c| {
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
        let (q, index) = (pod_q.clone(), refs.clone());
        v_secrets.on(move |c| {
            if let Change::Applied(o) = c {
                for k in index.users(RefKind::Secret, &o.namespace().unwrap_or_default(), &o.name_any()) {
                    q.add(k);
                }
            }
        });
    }

    let pod_sync = Arc::new(PodSync {
        shared: shared.clone(),
        settings: opts.pods.clone(),
        virtual_pods: v_pods.reader.clone(),
        host_pods: h_pods.reader.clone(),
        host_secrets: h_secrets.reader.clone(),
        virtual_namespaces: v_namespaces.reader.clone(),
        virtual_configmaps: v_cms.reader.clone(),
        virtual_secrets: v_secrets.reader.clone(),
        virtual_services: v_services.reader.clone(),
        first_seen: Mutex::new(HashMap::new()),
        recent: Default::default(),
        recent_virtual_deletes: RecentWrites::remembering_for(apply::DELETE_EXPECT_FOR),
        recent_host_deletes: RecentWrites::remembering_for(apply::DELETE_EXPECT_FOR),
    });

    // Virtual pods: the pod queue, what they mount, where they run.
    {
        let (q, cq, sq, nq, refs, usage, ps, hs) = (
            pod_q.clone(),
            cm_q.clone(),
            secret_q.clone(),
            node_q.clone(),
            refs.clone(),
            usage.clone(),
            pod_sync.clone(),
            h_pods.reader.clone(),
        );
        let ref_queue = move |changed: Vec<(RefKind, Key)>| {
            for (kind, key) in changed {
                match kind {
                    RefKind::ConfigMap => cq.add(key),
                    RefKind::Secret => sq.add(key),
                }
            }
        };
        v_pods.on(move |c| match c {
            Change::Applied(p) => {
                let key = key_of(p);
                if p.meta().creation_timestamp.is_some() && node_of(p).is_none() {
                    ps.seen(&key);
                }
                q.add(key);
                ref_queue(refs.apply(p));
                for n in usage.set(false, p, node_of(p).as_deref()) {
                    nq.add(Key::new("", n));
                }
            }
            Change::Deleted(p) => {
                q.add(key_of(p));
                ref_queue(refs.delete(p));
                for n in usage.set(false, p, None) {
                    nq.add(Key::new("", n));
                }
            }
            Change::Relisted(store) => {
                let pods = store.state();
                enqueue_all(&q, store, |p| Some(key_of(p)));
                enqueue_all(&q, &hs, cached_host_pod_key);
                // One parse per pod feeds both indexes.
                let mut placed = Vec::new();
                ref_queue(refs.rebuild(unpacked(&pods).inspect(|p| {
                    if let Some(node) = node_of(p) {
                        placed.push((node, p.namespace().unwrap_or_default(), p.name_any()));
                    }
                })));
                for n in usage.rebuild(false, placed) {
                    nq.add(Key::new("", n));
                }
            }
        });
    }
    // Host pods: back to the virtual key; where they run.
    {
        let (q, nq, usage, vs) = (
            pod_q.clone(),
            node_q.clone(),
            usage.clone(),
            v_pods.reader.clone(),
        );
        h_pods.on(move |c| match c {
            Change::Applied(p) => {
                if let Some(k) = standard::host_key("Pod", p.meta()) {
                    q.add(k);
                }
                for n in usage.set(true, p, node_of(p).as_deref()) {
                    nq.add(Key::new("", n));
                }
            }
            Change::Deleted(p) => {
                if let Some(k) = standard::host_key("Pod", p.meta()) {
                    q.add(k);
                }
                for n in usage.set(true, p, None) {
                    nq.add(Key::new("", n));
                }
            }
            Change::Relisted(store) => {
                enqueue_all(&q, store, cached_host_pod_key);
                enqueue_all(&q, &vs, |p| Some(key_of(p)));
                for n in usage.rebuild(true, host_placements(&store.state())) {
                    nq.add(Key::new("", n));
                }
            }
        });
    }
    // Token Secrets belong to their pod.
    {
        let q = pod_q.clone();
        h_secrets.on(move |c| match c {
            Change::Applied(s) | Change::Deleted(s) => {
                if let Some(k) = standard::host_key(TOKEN_SECRET_KIND, s.meta())
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
    // Namespace labels are copied onto pods: a label change re-checks the namespace's pods.
    {
        let (q, vs) = (pod_q.clone(), v_pods.reader.clone());
        v_namespaces.on(move |c| {
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
    {
        let q = node_q.clone();
        v_nodes.on(move |c| match c {
            Change::Applied(n) | Change::Deleted(n) => q.add(Key::new("", n.name_any())),
            Change::Relisted(store) => enqueue_all(&q, store, |n| Some(Key::new("", n.name_any()))),
        });
    }
    let mut host_nodes_store = None;
    let mut host_nodes_ready = None;
    if opts.nodes.node_sync == NodeMode::Real {
        let mut h_nodes = Pending::<Node>::new();
        let q = node_q.clone();
        h_nodes.on(move |c| match c {
            Change::Applied(n) => q.add(Key::new("", n.name_any())),
            Change::Deleted(_) => {}
            Change::Relisted(store) => enqueue_all(&q, store, |n| Some(Key::new("", n.name_any()))),
        });
        host_nodes_store = Some(h_nodes.reader.clone());
        host_nodes_ready = Some(h_nodes.listed());
        h_nodes.start(
            Api::all(host.clone()),
            host_all(),
            Cluster::Host,
            "nodes",
            &shared,
            tasks,
        );
    }

    let cm_copier = Arc::new(Copier::new(
        configmaps::ConfigMaps {
            refs: refs.clone(),
            sync_all: opts.configmaps.sync_all_configmaps,
        },
        shared.clone(),
        v_cms.reader.clone(),
        h_cms.reader.clone(),
    ));
    let secret_copier = Arc::new(Copier::new(
        secrets::Secrets {
            refs: refs.clone(),
            sync_all: opts.secrets.sync_all_secrets,
        },
        shared.clone(),
        v_secrets.reader.clone(),
        h_secrets.reader.clone(),
    ));
    let node_sync = Arc::new(NodeSync {
        shared: shared.clone(),
        usage: usage.clone(),
        virtual_nodes: v_nodes.reader.clone(),
        host_nodes: host_nodes_store.clone(),
        kubelet: KubeletEndpoint {
            address: opts.nodes.kubelet_address.clone().unwrap_or_default(),
            port: i32::from(opts.nodes.kubelet_port),
        },
        version: opts.virtual_version.clone(),
    });
    let event_sync = Arc::new(events::EventSync {
        shared: shared.clone(),
        inbox: events::EventInbox::default(),
        host_pods: h_pods.reader.clone(),
        host_configmaps: h_cms.reader.clone(),
        host_secrets: h_secrets.reader.clone(),
        copied: Mutex::new(HashMap::new()),
        seeded: tokio::sync::OnceCell::new(),
        seed_streams: opts.virtual_streams,
    });

    let ep_copier = Arc::new(Copier::new(
        endpoints::EndpointsKind {
            virtual_services: v_services.reader.clone(),
        },
        shared.clone(),
        v_eps.reader.clone(),
        h_eps.reader.clone(),
    ));
    let service_sync = Arc::new(services::sync::ServiceSync {
        shared: shared.clone(),
        virtual_services: v_services.reader.clone(),
        host_services: h_services.reader.clone(),
        host_endpoints: h_vc_endpoints.reader.clone(),
        virtual_endpoints: v_eps.reader.clone(),
        service_name: opts.service_name.clone(),
        recent: Default::default(),
        ip_refused_since: Default::default(),
    });

    let dns_stores = DnsStores {
        services: v_services.reader.clone(),
        endpoints: v_eps.reader.clone(),
    };
    // Every cache must have listed before any worker decides anything: a reconcile on a
    // half-filled cache could delete host objects whose virtual twin is simply not loaded yet.
    let readiness: Vec<Ready> = vec![
        v_pods.listed(),
        h_pods.listed(),
        v_cms.listed(),
        h_cms.listed(),
        v_secrets.listed(),
        h_secrets.listed(),
        v_namespaces.listed(),
        v_nodes.listed(),
        v_services.listed(),
        h_services.listed(),
        h_vc_endpoints.listed(),
        v_eps.listed(),
        h_eps.listed(),
    ];

    v_pods.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "pods",
        &shared,
        tasks,
    );
    h_pods.start(
        Api::namespaced(host.clone(), &host_ns),
        host_cfg(),
        Cluster::Host,
        "pods",
        &shared,
        tasks,
    );
    v_cms.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "configmaps",
        &shared,
        tasks,
    );
    h_cms.start(
        Api::namespaced(host.clone(), &host_ns),
        host_cfg(),
        Cluster::Host,
        "configmaps",
        &shared,
        tasks,
    );
    v_secrets.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "secrets",
        &shared,
        tasks,
    );
    h_secrets.start(
        Api::namespaced(host.clone(), &host_ns),
        host_cfg(),
        Cluster::Host,
        "secrets",
        &shared,
        tasks,
    );
    v_namespaces.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "namespaces",
        &shared,
        tasks,
    );
    v_nodes.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "nodes",
        &shared,
        tasks,
    );
    {
        // Host events: no cache, an inbox of those not handled yet (see `events`).
        let (sync, q) = (event_sync.clone(), event_q.clone());
        let gauge = shared
            .metrics
            .store_objects
            .with_label_values(&[Cluster::Host.as_str(), "events"]);
        // The copies already made are read back first (while the caches list), so that a
        // restart does not hand every host event to a worker only to find it copied.
        let (seeding, vc) = (event_sync.clone(), opts.vcluster.clone());
        let seeded = async move {
            let mut wait = std::time::Duration::from_millis(250);
            while let Err(error) = seeding.seed(&vc).await {
                tracing::warn!(%error, retry_in_s = wait.as_secs_f64(), "cannot read back the copied events yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        };
        let handle = watch::spawn_uncached(
            Api::namespaced(host.clone(), &host_ns),
            host_all(),
            Cluster::Host,
            "events",
            seeded,
            move |event| {
                sync.on_watch_event(event, &q);
                gauge.set(i64::try_from(sync.inbox.len()).unwrap_or(i64::MAX));
            },
            shared.metrics.clone(),
            shared.initial_sync.clone(),
            shared.cancel.clone(),
        );
        tasks.spawn(async move {
            let r = handle.await;
            (
                "events",
                r.map_err(|e| anyhow::anyhow!("watch task panicked: {e}")),
            )
        });
    }
    v_services.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "services",
        &shared,
        tasks,
    );
    h_services.start(
        Api::namespaced(host.clone(), &host_ns),
        host_cfg(),
        Cluster::Host,
        "services",
        &shared,
        tasks,
    );
    let vc_fields = format!("metadata.name={}", opts.service_name);
    h_vc_endpoints.start(
        Api::namespaced(host.clone(), &host_ns),
        loading(watcher::Config::default().fields(&vc_fields), host_streams),
        Cluster::Host,
        // Its own metric label: the watch of copied Endpoints below is "endpoints".
        "vcluster-endpoints",
        &shared,
        tasks,
    );
    v_eps.start(
        Api::all(virt.clone()),
        virt_all(),
        Cluster::Virtual,
        "endpoints",
        &shared,
        tasks,
    );
    h_eps.start(
        Api::namespaced(host.clone(), &host_ns),
        host_cfg(),
        Cluster::Host,
        "endpoints",
        &shared,
        tasks,
    );

    // The special Services follow the translation context (vcluster and DNS Service IPs).
    {
        let (q, mut ctx) = (svc_q.clone(), shared.translate.clone());
        tasks.spawn(async move {
            loop {
                q.add(Key::new("default", "kubernetes"));
                q.add(Key::new("kube-system", "kube-dns"));
                if ctx.changed().await.is_err() {
                    return ("special services", Ok(()));
                }
            }
        });
    }
    // NetworkPolicies only when enabled (no watch, no cache otherwise).
    let mut extra_ready = Vec::new();
    if opts.networkpolicies.sync_networkpolicies {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let mut v_np = Pending::<NetworkPolicy>::new();
        let mut h_np = Pending::<NetworkPolicy>::new();
        let np_q = FairQueue::new();
        shared.initial_sync.track(&np_q);
        wire_copied::<networkpolicies::NetworkPolicies>(&mut v_np, &mut h_np, &np_q);
        let copier = Arc::new(Copier::new(
            networkpolicies::NetworkPolicies,
            shared.clone(),
            v_np.reader.clone(),
            h_np.reader.clone(),
        ));
        extra_ready.push(v_np.listed());
        extra_ready.push(h_np.listed());
        v_np.start(
            Api::all(virt.clone()),
            virt_all(),
            Cluster::Virtual,
            "networkpolicies",
            &shared,
            tasks,
        );
        h_np.start(
            Api::namespaced(host.clone(), &host_ns),
            host_cfg(),
            Cluster::Host,
            "networkpolicies",
            &shared,
            tasks,
        );
        let s = shared.clone();
        tasks.spawn(async move {
            futures::future::join_all(extra_ready).await;
            let mut set = JoinSet::new();
            spawn_workers(&mut set, copier, np_q, 2, &s);
            while set.join_next().await.is_some() {}
            ("networkpolicy workers", Ok(()))
        });
    }
    let shared2 = shared.clone();
    tasks.spawn(async move {
        futures::future::join_all(readiness).await;
        if let Some(r) = host_nodes_ready {
            r.await;
        }
        tracing::info!("all caches listed; starting workers");
        let w = shared2.workers;
        let mut workers = JoinSet::new();
        spawn_workers(&mut workers, pod_sync, pod_q, w, &shared2);
        spawn_workers(&mut workers, cm_copier, cm_q, w.div_ceil(2), &shared2);
        spawn_workers(&mut workers, secret_copier, secret_q, w.div_ceil(2), &shared2);
        spawn_workers(&mut workers, node_sync, node_q, 2, &shared2);
        // A restart re-checks every cached host event (cheap, but thousands at 10k pods).
        spawn_workers(&mut workers, event_sync, event_q, w.div_ceil(4), &shared2);
        spawn_workers(&mut workers, service_sync, svc_q, w.div_ceil(2), &shared2);
        spawn_workers(&mut workers, ep_copier, ep_q, 2, &shared2);
        while workers.join_next().await.is_some() {}
        ("workers", Ok(()))
    });
    dns_stores
}

/// A wait for one cache's first list (see [`Pending::listed`]).
type Ready = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn spawn_workers<R: Reconciler>(set: &mut JoinSet<()>, r: Arc<R>, q: FairQueue, n: usize, shared: &Shared) {
    let (events, metrics, cancel) = (
        shared.events.clone(),
        shared.metrics.clone(),
        shared.cancel.clone(),
    );
    set.spawn(worker::run(r, q, n, events, metrics, cancel));
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
            Arc::new(pods::cache_host_pod(&pods::WatchedPod(pod)))
        };
        let placed = host_placements(&[host_pod("web-0-x", Some("n1")), host_pod("pending-x", None)]);
        assert_eq!(
            placed,
            [("n1".to_owned(), "team-a".to_owned(), "web-0-x".to_owned())]
        );
    }
}
