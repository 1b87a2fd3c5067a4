//! The claim reconciler: reads the caches, asks the pure [`plan`](super::plan) and sends the
//! actions through the [`Executor`]. Two kinds of keys share its queue: a virtual claim
//! (`namespace/name`) and a virtual volume (empty namespace, the volume's name).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::PvSync;
use super::plan::{self, LOST_MESSAGE, NAME, Seen};
use super::translate::{self, ClassMap};
use crate::engine::error::SyncError;
use crate::engine::execute::Executor;
use crate::engine::ownership;
use crate::engine::queue::Key;
use crate::engine::registry::{Registry, Watch, wire_pair};
use crate::engine::watch::Change;
use crate::engine::worker::{Outcome, Reconciler};
use crate::naming;
use crate::resources::storageclasses::HostClassCache;

pub struct ClaimSync {
    pub executor: Executor,
    pub classes: ClassMap,
    /// The host's StorageClasses, when the StorageClass kind watches them
    /// (`--sync-storageclasses`): they tell the reclaim policy of provisioned host volumes.
    pub host_classes: Option<Arc<HostClassCache>>,
    /// The host's PersistentVolumes (`--pv-sync=real` only).
    pub host_volumes: Option<Store<PersistentVolume>>,
    pub virtual_claims: Store<PersistentVolumeClaim>,
    pub host_claims: Store<PersistentVolumeClaim>,
    pub virtual_volumes: Store<PersistentVolume>,
}

impl ClaimSync {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.virtual_claims.get(&ObjectRef::new(name).within(namespace))
    }

    async fn reconcile_volume(&self, name: &str) -> Result<Outcome, SyncError> {
        let Some(pv) = self.virtual_volumes.get(&ObjectRef::new(name)) else {
            return Ok(Outcome::done());
        };
        let claim = translate::claim_of(&pv).and_then(|(ns, n, _)| self.claim(&ns, &n));
        let plan = plan::plan_volume(&pv, claim.as_deref());
        match self.executor.run_all(&plan.actions).await {
            // Gone already (its finalizers were removed by an earlier pass the cache lags).
            Err(SyncError::Rejected { code: 404, .. }) | Ok(()) => Ok(Outcome::done()),
            Err(e) => Err(e),
        }
    }
}

impl Reconciler for ClaimSync {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        if key.namespace.is_empty() {
            return self.reconcile_volume(&key.name).await;
        }
        let tc = self.executor.shared().translate_ctx()?;
        let host_name = naming::host_name(&tc.vcluster, &key.namespace, &key.name);
        let v = self.claim(&key.namespace, &key.name);
        let h = self
            .host_claims
            .get(&ObjectRef::new(&host_name).within(&tc.host_namespace));
        if h.is_some() {
            self.executor.observed(&host_name);
        }
        let volume = v.as_ref().and_then(|v| v.uid()).and_then(|uid| {
            self.virtual_volumes
                .get(&ObjectRef::new(&translate::volume_name(&uid)))
        });
        let host_volume = self.host_volumes.as_ref().map(|store| {
            let name = h.as_ref()?.spec.as_ref()?.volume_name.clone()?;
            store.get(&ObjectRef::new(&name))
        });
        let reclaim = h.as_deref().and_then(|h| {
            let class = h.spec.as_ref()?.storage_class_name.as_deref()?;
            let class = self.host_classes.as_ref()?.get(class);
            translate::provisioned_reclaim_policy(h, class.as_deref())
        });
        let seen = Seen {
            claim: v.as_deref(),
            host: h.as_deref(),
            volume: volume.as_deref(),
            host_name: &host_name,
            create_pending: self.executor.create_pending(&host_name),
            reclaim_policy: reclaim.as_deref(),
            host_volume: host_volume.as_ref().map(Option::as_deref),
        };
        let cp = plan::plan_claim(&tc, &self.classes, seen)?;
        self.executor.run_all(&cp.plan.actions).await?;
        if cp.host_lost
            && let Some(v) = &v
        {
            tracing::warn!(v.ns = %key.namespace, v.name = %key.name, "the host claim of a bound claim was deleted out of band");
            self.executor
                .shared()
                .events
                .publish(
                    &v.object_ref(&()),
                    EventType::Warning,
                    "HostVolumeLost",
                    "Sync",
                    LOST_MESSAGE,
                )
                .await;
        }
        Ok(Outcome {
            requeue_after: cp.plan.requeue_after,
        })
    }

    fn tenant_object(&self, key: &Key) -> Option<ObjectReference> {
        if key.namespace.is_empty() {
            return None;
        }
        self.claim(&key.namespace, &key.name).map(|v| v.object_ref(&()))
    }
}

/// Declares the claim kind: virtual and host claims (a change on either side wakes the
/// claim), and the virtual volumes (a change wakes the volume and its claim; a deleted claim
/// wakes its volume). With `host_classes` the StorageClass kind's cache of host classes is
/// read too (not waited for: see [`HostClassCache`]); with `--pv-sync=real` the host
/// PersistentVolumes are watched (a change wakes the claim whose host copy its claimRef
/// names).
pub fn register(reg: &mut Registry, classes: ClassMap, host_classes: bool, pv_sync: PvSync, workers: usize) {
    let v = Watch::<PersistentVolumeClaim>::virtual_all(NAME);
    let h = Watch::<PersistentVolumeClaim>::host_owned(NAME);
    let volumes = Watch::<PersistentVolume>::virtual_all("persistentvolumes");
    let queue = reg.queue(NAME);
    wire_pair(reg, &v, &h, &queue, |o| ownership::host_key(plan::KIND, o.meta()));
    let q = queue.clone();
    reg.on(&v, move |c| {
        if let Change::Deleted(o) = c
            && let Some(uid) = o.uid()
        {
            q.add(Key::new("", translate::volume_name(&uid)));
        }
    });
    let q = queue.clone();
    let wake = move |q: &crate::engine::queue::FairQueue, pv: &PersistentVolume| {
        if translate::is_our_volume(pv) {
            q.add(Key::new("", pv.name_any()));
            if let Some((ns, name, _)) = translate::claim_of(pv) {
                q.add(Key::new(ns, name));
            }
        }
    };
    reg.on(&volumes, move |c| match c {
        Change::Applied(o) | Change::Deleted(o) => wake(&q, o),
        Change::Relisted(store) => {
            for pv in store.state() {
                wake(&q, &pv);
            }
        }
    });
    let host_classes = host_classes.then(|| reg.index::<HostClassCache>());
    let host_volumes = (pv_sync == PvSync::Real).then(|| {
        let hv = Watch::<PersistentVolume>::host_cluster("persistentvolumes");
        let (q, claims) = (queue.clone(), reg.store(&h));
        let host_ns = reg.shared().host_namespace.clone();
        let wake = move |pv: &PersistentVolume| {
            let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
                return;
            };
            if r.namespace.as_deref() != Some(host_ns.as_str()) {
                return;
            }
            let Some(name) = r.name.as_deref() else { return };
            if let Some(c) = claims.get(&ObjectRef::new(name).within(&host_ns))
                && let Some(k) = ownership::host_key(plan::KIND, c.meta())
            {
                q.add(k);
            }
        };
        reg.on(&hv, move |c| match c {
            Change::Applied(o) | Change::Deleted(o) => wake(o),
            Change::Relisted(store) => {
                for pv in store.state() {
                    wake(&pv);
                }
            }
        });
        reg.store(&hv)
    });
    let sync = ClaimSync {
        executor: Executor::new(reg.shared().clone()),
        classes,
        host_classes,
        host_volumes,
        virtual_claims: reg.store(&v),
        host_claims: reg.store(&h),
        virtual_volumes: reg.store(&volumes),
    };
    reg.workers(Arc::new(sync), workers);
}
