//! The registry of synced kinds: what every kind needs from the engine, declared once.
//!
//! A kind's `register(&mut Registry, ..)` declares
//! - the watches it reads ([`Watch`]): the registry opens **one watch per (cluster, kind,
//!   selection)** and hands every declaration of the same watch the same cache, so a second
//!   watch of a kind cannot be opened by accident;
//! - what each change means to it ([`Registry::on`]): which keys of which queue to look at
//!   (its own, or another kind's: a ConfigMap wakes the pods that use it);
//! - its reconciler ([`Registry::workers`]) and any long-lived task of its own.
//!
//! [`Registry::start`] then opens every watch and starts the workers only once **every** cache's
//! first list has reached all its subscribers: a reconcile on a half-filled cache could delete
//! host objects whose virtual twin is simply not loaded yet, and workers started between a
//! store's list and its subscribers reconciled keys twice.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::Shared;
use super::queue::{FairQueue, Key};
use super::watch::{self, Change, Subscriber};
use super::worker::{self, Reconciler};
use crate::error::Cluster;

/// The long-lived tasks of the process; each ends with its name and result.
pub type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// A wait for one cache's first list.
type Ready = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The key of an object in its own cluster (namespace, name).
pub fn key_of<K: Resource>(obj: &K) -> Key {
    Key::new(
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// Enqueues `map` of every object in `store` (after a relist, of this side or the other).
pub fn enqueue_all<K: Resource<DynamicType = ()> + Clone>(
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

/// Wires a kind whose virtual objects have host copies: a change on either side queues the
/// virtual key (host objects map back through `host_key`), and a relist of either side
/// re-checks every key of both.
pub fn wire_pair<K>(
    reg: &mut Registry,
    virtual_watch: &Watch<K>,
    host_watch: &Watch<K>,
    queue: &FairQueue,
    host_key: fn(&K) -> Option<Key>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (q, hs) = (queue.clone(), reg.store(host_watch));
    reg.on(virtual_watch, move |c| match c {
        Change::Applied(o) | Change::Deleted(o) => q.add(key_of(o)),
        Change::Relisted(store) => {
            enqueue_all(&q, store, |o| Some(key_of(o)));
            enqueue_all(&q, &hs, host_key);
        }
    });
    let (q, vs) = (queue.clone(), reg.store(virtual_watch));
    reg.on(host_watch, move |c| match c {
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

/// Which objects of a kind a watch sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Selection {
    /// Every object of the kind (all namespaces) on that cluster.
    All,
    /// The host namespace's objects that carry this vcluster's managed-by label: our copies.
    Owned,
    /// Every object of the kind in the host namespace (host Events about our copies).
    Namespace,
    /// One object of the host namespace, by name.
    Named(String),
}

/// Identity of a watch: a second declaration with the same identity gets the same cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WatchId {
    cluster: Cluster,
    kind: TypeId,
    selection: Selection,
}

/// A watch a kind reads: cluster, kind `K`, which objects, and what the cache keeps of each
/// (`C`: the object itself, or a smaller form such as a packed pod).
pub struct Watch<K, C = K> {
    cluster: Cluster,
    selection: Selection,
    /// Metric and log label (the kind's plural, unless two selections of a kind need two).
    name: &'static str,
    api: fn(&Shared) -> Api<K>,
    /// The cached form of an object; it may take parts out of the object while it works, and
    /// leaves it as it came (subscribers see it next).
    convert: fn(&mut K) -> C,
}

impl<K, C> Clone for Watch<K, C> {
    fn clone(&self) -> Self {
        Self {
            cluster: self.cluster,
            selection: self.selection.clone(),
            name: self.name,
            api: self.api,
            convert: self.convert,
        }
    }
}

impl<K> Watch<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Every object of kind `K` in the virtual cluster.
    pub fn virtual_all(name: &'static str) -> Self {
        Self {
            cluster: Cluster::Virtual,
            selection: Selection::All,
            name,
            api: |s| Api::all(s.virt.clone()),
            convert: |k| k.clone(),
        }
    }

    /// Every object of kind `K` on the host, cluster-wide (needs a ClusterRole: optional
    /// components only, e.g. host Nodes in real-node mode).
    pub fn host_cluster(name: &'static str) -> Self {
        Self {
            cluster: Cluster::Host,
            selection: Selection::All,
            name,
            api: |s| Api::all(s.host.clone()),
            convert: |k| k.clone(),
        }
    }
}

impl<K> Watch<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + 'static,
{
    /// This vcluster's copies of kind `K` in the host namespace (label-selected).
    pub fn host_owned(name: &'static str) -> Self {
        Self {
            cluster: Cluster::Host,
            selection: Selection::Owned,
            name,
            api: |s| Api::namespaced(s.host.clone(), &s.host_namespace),
            convert: |k| k.clone(),
        }
    }

    /// Every object of kind `K` in the host namespace, ours or not (host Events, which the
    /// host's controllers write about our copies without our labels).
    pub fn host_all_in_namespace(name: &'static str) -> Self {
        Self {
            cluster: Cluster::Host,
            selection: Selection::Namespace,
            name,
            api: |s| Api::namespaced(s.host.clone(), &s.host_namespace),
            convert: |k| k.clone(),
        }
    }

    /// The one object `object` of kind `K` in the host namespace (e.g. the vcluster's own
    /// Service's Endpoints), watched by a field selector.
    pub fn host_named(name: &'static str, object: impl Into<String>) -> Self {
        Self {
            cluster: Cluster::Host,
            selection: Selection::Named(object.into()),
            name,
            api: |s| Api::namespaced(s.host.clone(), &s.host_namespace),
            convert: |k| k.clone(),
        }
    }
}

impl<K, C> Watch<K, C> {
    /// The same watch with its cache keeping `convert` of each object instead.
    pub fn cached_as<C2>(self, convert: fn(&mut K) -> C2) -> Watch<K, C2> {
        Watch {
            cluster: self.cluster,
            selection: self.selection,
            name: self.name,
            api: self.api,
            convert,
        }
    }

    pub fn cluster(&self) -> Cluster {
        self.cluster
    }

    fn id(&self) -> WatchId
    where
        K: 'static,
    {
        WatchId {
            cluster: self.cluster,
            kind: TypeId::of::<K>(),
            selection: self.selection.clone(),
        }
    }
}

/// Process-wide options of every watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Label selector of our copies on the host (`managed-by=<vcluster>`).
    pub owned_selector: String,
    /// Whether watches load by whole LISTs (`--initial-list`): from the watch cache where the
    /// kind has one, else from the datastore (host Events).
    pub whole_lists: bool,
    /// Whether watches stream their initial objects (`--initial-list`) on each cluster.
    pub host_streams: bool,
    pub virtual_streams: bool,
}

impl WatchOptions {
    /// How every watch lists first: whole LISTs (`--initial-list` auto or list), or as the
    /// watch config says (streamed).
    fn load(&self) -> watch::Load {
        if self.whole_lists {
            watch::Load::Whole
        } else {
            watch::Load::Kube
        }
    }

    /// How a watch of `selection` on `cluster` lists and watches.
    fn config<K: Resource<DynamicType = ()>>(
        &self,
        cluster: Cluster,
        selection: &Selection,
    ) -> watcher::Config {
        let base = watch::config_for::<K>();
        let config = match selection {
            Selection::Owned => base.labels(&self.owned_selector),
            Selection::Named(object) => base.fields(&format!("metadata.name={object}")),
            Selection::All | Selection::Namespace => base,
        };
        let streams = match cluster {
            Cluster::Host => self.host_streams,
            Cluster::Virtual => self.virtual_streams,
        };
        if streams { config.streaming_lists() } else { config }
    }
}

/// A watch task among the supervised tasks (its panic is the task's failure).
fn supervise(tasks: &mut Tasks, name: &'static str, handle: tokio::task::JoinHandle<()>) {
    tasks.spawn(async move {
        let r = handle.await;
        (name, r.map_err(|e| anyhow::anyhow!("watch task panicked: {e}")))
    });
}

/// A declared watch not started yet: its store, subscribers and readiness.
struct Pending<K, C>
where
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    watch: Watch<K, C>,
    reader: Store<C>,
    writer: reflector::store::Writer<C>,
    subscribers: Vec<Subscriber<K, C>>,
    /// True once the first list is in the store and every subscriber has handled it.
    listed: tokio::sync::watch::Sender<bool>,
}

/// What the registry does with any pending watch, whatever its types.
trait Start: Send {
    /// True once the first list is in the store and every subscriber has handled it.
    fn listed_flag(&self) -> tokio::sync::watch::Sender<bool>;
    fn start(self: Box<Self>, shared: &Shared, options: &WatchOptions, tasks: &mut Tasks);
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<K, C> Start for Pending<K, C>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// Set once the first list is in the store *and* every subscriber has queued its keys.
    fn listed_flag(&self) -> tokio::sync::watch::Sender<bool> {
        self.listed.clone()
    }

    fn start(mut self: Box<Self>, shared: &Shared, options: &WatchOptions, tasks: &mut Tasks) {
        // Last: subscribers run in order, so this one sees the list after all the others.
        let listed = self.listed.clone();
        self.subscribers.push(Arc::new(move |c| {
            if let Change::Relisted(_) = c {
                listed.send_replace(true);
            }
        }));
        let Pending {
            watch,
            reader,
            writer,
            subscribers,
            ..
        } = *self;
        let config = options.config::<K>(watch.cluster, &watch.selection);
        let load = options.load();
        let name = watch.name;
        let handle = watch::spawn(
            (watch.api)(shared),
            (reader, writer),
            (config, load),
            watch.cluster,
            name,
            subscribers,
            watch.convert,
            shared.metrics.clone(),
            shared.initial_sync.clone(),
            shared.cancel.clone(),
        );
        supervise(tasks, name, handle);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// A kind's workers: the future that runs them, made once the caches they wait for listed.
type RunWorkers = Box<dyn FnOnce(&Shared) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// One kind's workers and what they wait for.
struct WorkerSet {
    run: RunWorkers,
    /// An optional kind's workers wait for the caches it declared itself (besides the
    /// required ones): a cache that never lists (e.g. its permission is missing from the Role)
    /// stops that kind only.
    optional: Option<Vec<WatchId>>,
}
/// Opens a watch without a cache.
type StartStream = Box<dyn FnOnce(&mut Tasks) + Send>;
/// A long-lived task of a kind, started with the watches.
type KindTask = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Why the declared kinds cannot run (a mistake in a `register`, found at startup).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("queue {0:?} gets keys but no kind runs workers on it")]
    QueueWithoutWorkers(&'static str),
    #[error("two kinds run workers on queue {0:?}")]
    QueueWithTwoWorkerSets(&'static str),
}

/// The kinds' watches, queues, shared indexes, workers and tasks, declared before any starts.
pub struct Registry {
    shared: Arc<Shared>,
    options: WatchOptions,
    watches: HashMap<WatchId, Box<dyn Start>>,
    /// Declaration order, so watches open in a stable order.
    order: Vec<WatchId>,
    queues: BTreeMap<&'static str, FairQueue>,
    with_workers: BTreeMap<&'static str, WorkerSet>,
    /// The kind being declared (see [`Registry::begin_kind`]): the watches it declared so far,
    /// and whether it is optional.
    declaring: Vec<WatchId>,
    declaring_optional: bool,
    /// Watches some required kind declared: every worker waits for them.
    required: std::collections::HashSet<WatchId>,
    indexes: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    tasks: Vec<(&'static str, KindTask)>,
    /// Watches without a cache (host events), started with the others.
    streams: Vec<(WatchId, StartStream)>,
    /// Registration mistakes, reported by [`Registry::start`] before anything starts.
    mistakes: Vec<RegistryError>,
}

impl Registry {
    pub fn new(shared: Arc<Shared>, options: WatchOptions) -> Self {
        Self {
            shared,
            options,
            watches: HashMap::new(),
            order: Vec::new(),
            queues: BTreeMap::new(),
            with_workers: BTreeMap::new(),
            declaring: Vec::new(),
            declaring_optional: false,
            required: std::collections::HashSet::new(),
            indexes: HashMap::new(),
            tasks: Vec::new(),
            streams: Vec::new(),
            mistakes: Vec::new(),
        }
    }

    /// The declarations that follow are one kind's. An `optional` kind (its host permission
    /// may be missing, e.g. a Role not updated yet) does not hold the other kinds back: the
    /// caches only it declares are not part of the barrier every worker waits for, and its own
    /// workers wait for them besides. A watch a required kind declares is required.
    pub fn begin_kind(&mut self, optional: bool) {
        self.declaring.clear();
        self.declaring_optional = optional;
    }

    fn declared(&mut self, id: &WatchId) {
        if !self.declaring.contains(id) {
            self.declaring.push(id.clone());
        }
        if !self.declaring_optional {
            self.required.insert(id.clone());
        }
    }

    /// What every reconciler shares (clients, metrics, the translation context).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The default number of reconciles in flight per kind (`--workers`).
    pub fn default_workers(&self) -> usize {
        self.shared.workers
    }

    fn pending<K, C>(&mut self, watch: &Watch<K, C>) -> &mut Pending<K, C>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let id = watch.id();
        self.declared(&id);
        assert!(
            !self.streams.iter().any(|(s, _)| *s == id),
            "watch {:?} of {} is declared both cached and uncached",
            id.selection,
            watch.name
        );
        let entry = self.watches.entry(id.clone()).or_insert_with(|| {
            self.order.push(id);
            let (reader, writer) = reflector::store();
            Box::new(Pending {
                watch: watch.clone(),
                reader,
                writer,
                subscribers: Vec::new(),
                listed: tokio::sync::watch::Sender::new(false),
            })
        });
        entry
            .as_any()
            .downcast_mut::<Pending<K, C>>()
            .expect("every declaration of one watch caches the same form (a registration bug otherwise)")
    }

    /// The cache of `watch` (declared now if it is new).
    pub fn store<K, C>(&mut self, watch: &Watch<K, C>) -> Store<C>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.pending(watch).reader.clone()
    }

    /// Calls `f` with every change `watch` delivers (after the store holds it).
    pub fn on<K, C>(&mut self, watch: &Watch<K, C>, f: impl Fn(Change<'_, K, C>) + Send + Sync + 'static)
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.pending(watch).subscribers.push(Arc::new(f));
    }

    /// The queue of the kind `name` (the same queue for every caller). It counts for the
    /// initial sync from now, before its workers run.
    pub fn queue(&mut self, name: &'static str) -> FairQueue {
        let shared = &self.shared;
        self.queues
            .entry(name)
            .or_insert_with(|| {
                let q = FairQueue::new();
                shared.initial_sync.track(&q);
                q
            })
            .clone()
    }

    /// A shared index of type `T` (the same one for every caller), for state that one kind's
    /// watches build and another kind's reconciler reads (which pods use which ConfigMaps).
    pub fn index<T: Default + Send + Sync + 'static>(&mut self) -> Arc<T> {
        let any = self
            .indexes
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("indexes are keyed by their own type"))
    }

    /// Runs `reconciler` over its queue (named after it) with at most `n` reconciles in
    /// flight, once every cache has listed.
    pub fn workers<R: Reconciler>(&mut self, reconciler: Arc<R>, n: usize) {
        let name = reconciler.name();
        let queue = self.queue(name);
        let run: RunWorkers = Box::new(move |shared: &Shared| {
            Box::pin(worker::run(
                reconciler,
                queue,
                n,
                shared.events.clone(),
                shared.metrics.clone(),
                shared.cancel.clone(),
            ))
        });
        let optional = self.declaring_optional.then(|| self.declaring.clone());
        if self
            .with_workers
            .insert(name, WorkerSet { run, optional })
            .is_some()
        {
            self.mistakes.push(RegistryError::QueueWithTwoWorkerSets(name));
        }
    }

    /// A long-lived task of a kind, started with the watches; it runs until shutdown.
    pub fn task(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.push((name, Box::pin(task)));
    }

    /// A watch that keeps no cache (objects needed only until handled): `on_event` sees every
    /// event, the (re)lists' objects included. It opens once `gate` is done and this replica
    /// leads, and counts for the initial sync, but workers do not wait for it.
    pub fn stream<K>(
        &mut self,
        watch: &Watch<K>,
        gate: impl Future<Output = ()> + Send + 'static,
        on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
    ) where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let id = watch.id();
        assert!(
            !self.watches.contains_key(&id) && !self.streams.iter().any(|(s, _)| *s == id),
            "watch of {} declared twice",
            watch.name
        );
        let (watch, shared, options) = (watch.clone(), self.shared.clone(), self.options.clone());
        let leadership = shared.leadership.clone();
        let gate = async move {
            gate.await;
            leadership.leading().await;
        };
        let start = move |tasks: &mut Tasks| {
            let config = options.config::<K>(watch.cluster, &watch.selection);
            let name = watch.name;
            let handle = watch::spawn_uncached(
                (watch.api)(&shared),
                (config, options.load()),
                watch.cluster,
                name,
                gate,
                on_event,
                shared.metrics.clone(),
                shared.initial_sync.clone(),
                shared.cancel.clone(),
            );
            supervise(tasks, name, handle);
        };
        self.streams.push((id, Box::new(start)));
    }

    /// Opens every declared watch, starts the kinds' tasks, and starts the workers once every
    /// cache has listed. Fails (before anything starts) when a queue gets keys but has no
    /// workers, which would keep the initial sync from ever completing.
    pub fn start(mut self, tasks: &mut Tasks) -> Result<(), RegistryError> {
        if let Some(mistake) = self.mistakes.pop() {
            return Err(mistake);
        }
        if let Some(name) = self.queues.keys().find(|q| !self.with_workers.contains_key(*q)) {
            return Err(RegistryError::QueueWithoutWorkers(name));
        }
        let listed: HashMap<WatchId, tokio::sync::watch::Sender<bool>> = self
            .watches
            .iter()
            .map(|(id, w)| (id.clone(), w.listed_flag()))
            .collect();
        let wait_for = |ids: &mut dyn Iterator<Item = &WatchId>| -> Vec<Ready> {
            ids.filter_map(|id| listed.get(id))
                .map(|flag| {
                    let mut rx = flag.subscribe();
                    Box::pin(async move {
                        let _ = rx.wait_for(|listed| *listed).await;
                    }) as Ready
                })
                .collect()
        };
        let readiness = wait_for(&mut self.required.iter());
        let mut worker_sets = Vec::new();
        for (name, set) in std::mem::take(&mut self.with_workers) {
            let own = set.optional.as_ref().map(|ids| wait_for(&mut ids.iter()));
            worker_sets.push((name, set.run, own));
        }
        for id in std::mem::take(&mut self.order) {
            if let Some(w) = self.watches.remove(&id) {
                w.start(&self.shared, &self.options, tasks);
            }
        }
        for (_, start) in self.streams {
            start(tasks);
        }
        // Kinds' tasks write: they start on the leader only (at once without election).
        for (name, task) in self.tasks {
            let leadership = self.shared.leadership.clone();
            tasks.spawn(async move {
                leadership.leading().await;
                (name, task.await)
            });
        }
        let shared = self.shared;
        tasks.spawn(async move {
            futures::future::join_all(readiness).await;
            if !shared.leadership.leads() {
                tracing::info!("all caches listed; standing by (another replica leads)");
                shared.leadership.leading().await;
            }
            tracing::info!("all caches listed; starting workers");
            let mut workers = JoinSet::new();
            for (name, run, own) in worker_sets {
                let run = run(&shared);
                match own {
                    None => {
                        workers.spawn(run);
                    }
                    Some(own) => {
                        // An optional kind whose cache cannot list (its watch logs why)
                        // waits here alone.
                        workers.spawn(async move {
                            futures::future::join_all(own).await;
                            tracing::info!(
                                kind = name,
                                "caches of an optional kind listed; starting its workers"
                            );
                            run.await;
                        });
                    }
                }
            }
            while workers.join_next().await.is_some() {}
            ("workers", Ok(()))
        });
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::engine::error::SyncError;
    use crate::engine::worker::Outcome;

    fn registry() -> Registry {
        Registry::new(
            Arc::new(Shared::test()),
            WatchOptions {
                owned_selector: "vnest.dev/managed-by=vc".into(),
                whole_lists: false,
                host_streams: false,
                virtual_streams: false,
            },
        )
    }

    struct Nop(&'static str);
    impl Reconciler for Nop {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn reconcile(&self, _key: &Key) -> Result<Outcome, SyncError> {
            Ok(Outcome::done())
        }
        fn tenant_object(&self, _key: &Key) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
            None
        }
    }

    #[tokio::test]
    async fn one_watch_per_cluster_kind_and_selection() {
        let mut reg = registry();
        reg.store(&Watch::<ConfigMap>::virtual_all("configmaps"));
        reg.on(&Watch::<ConfigMap>::virtual_all("configmaps"), |_| {});
        reg.store(&Watch::<ConfigMap>::host_owned("configmaps"));
        reg.store(&Watch::<Pod>::virtual_all("pods"));
        reg.store(&Watch::<Pod>::host_owned("pods"));
        reg.store(&Watch::<Pod>::host_owned("pods"));
        assert_eq!(
            reg.watches.len(),
            4,
            "a second declaration reuses the first watch"
        );
        assert_eq!(reg.order.len(), 4);
    }

    #[tokio::test]
    async fn a_second_declaration_shares_the_store_and_its_subscribers() {
        let mut reg = registry();
        let w = Watch::<ConfigMap>::virtual_all("configmaps");
        let (a, b) = (reg.store(&w), reg.store(&w));
        reg.on(&w, |_| {});
        reg.on(&w, |_| {});
        let pending = reg.pending(&w);
        assert_eq!(pending.subscribers.len(), 2);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("x".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        pending.writer.apply_watcher_event(&watcher::Event::Apply(cm));
        assert_eq!(
            (a.state().len(), b.state().len()),
            (1, 1),
            "both readers see one store"
        );
    }

    #[tokio::test]
    async fn only_an_optional_kinds_own_caches_stay_out_of_the_barrier() {
        let mut reg = registry();
        reg.begin_kind(false);
        reg.store(&Watch::<Pod>::virtual_all("pods"));
        reg.workers(Arc::new(Nop("pods")), 1);
        reg.begin_kind(true);
        let (own, shared) = (
            Watch::<ConfigMap>::host_owned("configmaps"),
            Watch::<Pod>::virtual_all("pods"),
        );
        reg.store(&own);
        reg.store(&shared);
        reg.workers(Arc::new(Nop("configmaps")), 1);
        assert_eq!(reg.required.len(), 1, "only the required kind's watch");
        assert!(reg.required.contains(&shared.id()));
        let optional = reg.with_workers["configmaps"].optional.clone().expect("optional");
        assert_eq!(optional, [own.id(), shared.id()], "it waits for all it declared");
        assert!(reg.with_workers["pods"].optional.is_none());
        // A watch an optional kind declared first becomes required once a required kind does.
        reg.begin_kind(false);
        reg.store(&own);
        assert!(reg.required.contains(&own.id()));
    }

    #[tokio::test]
    async fn indexes_and_queues_are_shared_by_type_and_name() {
        let mut reg = registry();
        let (a, b) = (reg.index::<Mutex<Vec<u8>>>(), reg.index::<Mutex<Vec<u8>>>());
        assert!(Arc::ptr_eq(&a, &b));
        reg.queue("pods").add(Key::new("ns", "a"));
        assert_eq!(reg.queue("pods").len(), 1, "the same queue");
    }

    #[tokio::test]
    async fn a_queue_nobody_works_on_is_refused_at_start() {
        let mut reg = registry();
        reg.queue("pods");
        reg.workers(Arc::new(Nop("configmaps")), 1);
        let mut tasks = Tasks::new();
        assert!(matches!(
            reg.start(&mut tasks),
            Err(RegistryError::QueueWithoutWorkers("pods"))
        ));
        assert!(tasks.is_empty(), "nothing started");
    }

    #[tokio::test]
    async fn two_worker_sets_on_one_queue_are_refused_at_start() {
        let mut reg = registry();
        reg.workers(Arc::new(Nop("pods")), 1);
        reg.workers(Arc::new(Nop("pods")), 1);
        let mut tasks = Tasks::new();
        assert!(matches!(
            reg.start(&mut tasks),
            Err(RegistryError::QueueWithTwoWorkerSets("pods"))
        ));
    }

    #[tokio::test]
    #[should_panic(expected = "declared twice")]
    async fn a_stream_cannot_double_a_cached_watch() {
        let mut reg = registry();
        let w = Watch::<ConfigMap>::virtual_all("configmaps");
        reg.store(&w);
        reg.stream(&w, std::future::ready(()), |_| {});
    }

    use std::sync::Mutex;
}
