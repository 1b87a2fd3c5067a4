//! The StorageClass reconciler: keys are virtual class names (empty namespace); a host class
//! change wakes the tenant's name of it (and its own name, whose copy may have to go).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::plan::{self, NAME};
use crate::engine::error::SyncError;
use crate::engine::execute::Executor;
use crate::engine::queue::{FairQueue, Key};
use crate::engine::registry::{Registry, Watch};
use crate::engine::watch::Change;
use crate::engine::worker::{Outcome, Reconciler};
use crate::resources::pvcs::ClassMap;

/// The host's StorageClasses (cluster-wide: needs the optional ClusterRole). The claim kind
/// reads the same cache.
pub fn host_watch() -> Watch<StorageClass> {
    Watch::host_cluster(NAME)
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
/// virtual names.
pub fn register(reg: &mut Registry, classes: ClassMap, workers: usize) {
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
    let (q, map) = (queue, classes.clone());
    reg.on(&h, move |c| match c {
        Change::Applied(o) | Change::Deleted(o) => wake_for_host(&q, &map, o),
        Change::Relisted(store) => {
            for o in store.state() {
                wake_for_host(&q, &map, &o);
            }
        }
    });
    let sync = ClassSync {
        executor: Executor::new(reg.shared().clone()),
        classes,
        virtual_classes: reg.store(&v),
        host_classes: reg.store(&h),
    };
    reg.workers(Arc::new(sync), workers);
}
