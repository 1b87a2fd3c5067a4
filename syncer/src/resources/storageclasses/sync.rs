//! The StorageClass reconciler: keys are virtual class names (empty namespace); a host class
//! change wakes the tenant's name of it (and its own name, whose copy may have to go).

use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::plan::{self, NAME};
use crate::engine::error::SyncError;
use crate::engine::execute::Executor;
use crate::engine::queue::{FairQueue, Key};
use crate::engine::registry::{Registry, Watch, enqueue_all, key_of};
use crate::engine::watch::Change;
use crate::engine::worker::{Outcome, Reconciler};
use crate::resources::pvcs::ClassMap;

/// The host's StorageClasses (cluster-wide: needs the optional ClusterRole). The claim kind
/// reads the same cache ([`HostClassCache`]).
fn host_watch() -> Watch<StorageClass> {
    Watch::host_cluster(NAME)
}

/// The host StorageClasses' cache for the claim kind (the reclaim policy of provisioned host
/// volumes), set by this kind. An index rather than a declared watch: the claim kind's
/// workers must not wait for a cache that a missing ClusterRole keeps from ever listing.
#[derive(Default)]
pub struct HostClassCache(OnceLock<Store<StorageClass>>);

impl HostClassCache {
    /// Host class `name`, if this kind runs and has it cached.
    pub fn get(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.0.get()?.get(&ObjectRef::new(name))
    }
}

pub struct ClassSync {
    pub executor: Executor,
    pub classes: ClassMap,
    pub virtual_classes: Store<StorageClass>,
    pub host_classes: Store<StorageClass>,
}

impl Reconciler for ClassSync {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let name = key.name.as_str();
        let virt = self.virtual_classes.get(&ObjectRef::new(name));
        let host_name = self.classes.to_host(name);
        let host = self
            .host_classes
            .get(&ObjectRef::new(host_name))
            .filter(|h| self.classes.to_virtual(&h.name_any()) == Some(name));
        let p = plan::plan_class(name, virt.as_deref(), host.as_deref());
        self.executor.run_all(&p.actions).await?;
        Ok(Outcome {
            requeue_after: p.requeue_after,
        })
    }

    fn tenant_object(&self, _key: &Key) -> Option<ObjectReference> {
        None
    }
}

/// The virtual names a host class change may concern: the tenant's name of it and its own.
fn wake_for_host(q: &FairQueue, classes: &ClassMap, host: &StorageClass) {
    let name = host.name_any();
    if let Some(v) = classes.to_virtual(&name) {
        q.add(Key::new("", v));
    }
    q.add(Key::new("", name));
}

/// Declares the StorageClass kind: the host classes and the virtual ones, one queue of
/// virtual names. The host classes' cache goes to [`HostClassCache`]; with `wake_claims` (the
/// claim kind runs) a host class change also wakes every virtual claim, whose volume's reclaim
/// policy may follow from it.
pub fn register(reg: &mut Registry, classes: ClassMap, wake_claims: bool, workers: usize) {
    let v = Watch::<StorageClass>::virtual_all(NAME);
    let h = host_watch();
    let queue = reg.queue(NAME);
    let q = queue.clone();
    reg.on(&v, move |c| match c {
        Change::Applied(o) | Change::Deleted(o) => q.add(Key::new("", o.name_any())),
        Change::Relisted(store) => {
            for o in store.state() {
                q.add(Key::new("", o.name_any()));
            }
        }
    });
    let claims = wake_claims.then(|| {
        let name = crate::resources::pvcs::plan::NAME;
        let store = reg.store(&Watch::<PersistentVolumeClaim>::virtual_all(name));
        (reg.queue(name), store)
    });
    let (q, map) = (queue, classes.clone());
    reg.on(&h, move |c| {
        match c {
            Change::Applied(o) | Change::Deleted(o) => wake_for_host(&q, &map, o),
            Change::Relisted(store) => {
                for o in store.state() {
                    wake_for_host(&q, &map, &o);
                }
            }
        }
        if let Some((cq, claims)) = &claims {
            enqueue_all(cq, claims, |o| Some(key_of(o)));
        }
    });
    let host_classes = reg.store(&h);
    // Set once: the table of kinds registers this kind once.
    let _ = reg.index::<HostClassCache>().0.set(host_classes.clone());
    let sync = ClassSync {
        executor: Executor::new(reg.shared().clone()),
        classes,
        virtual_classes: reg.store(&v),
        host_classes,
    };
    reg.workers(Arc::new(sync), workers);
}
