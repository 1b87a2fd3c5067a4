//! The whole reconcile for kinds that are plain copies on the host (ConfigMaps, Secrets, ...):
//! a kind declares its owned fields and when it is wanted; everything else — lifecycle,
//! markers, metadata merge, minimal patches, foreign-object protection — lives here once.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::SyncError;
use super::execute::{Action, Executor, Ownership, Target, Write};
use super::ownership::host_key;
use super::plan::{self, Lifecycle, Observed, Pair, PatchKind, Plan};
use super::queue::Key;

use super::registry::{Registry, Watch, wire_pair};
use super::worker::{Outcome, Reconciler};
use super::{Shared, TranslateCtx};
use crate::naming;

/// A kind copied virtual -> host as-is (plus markers).
pub trait CopiedKind: Send + Sync + 'static {
    type K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static;
    /// Kind name in markers and messages ("ConfigMap").
    const KIND: &'static str;
    /// Plural for metrics and logs ("configmaps").
    const NAME: &'static str;
    /// The fields (besides labels/annotations) the host copy takes from the virtual object, as
    /// JSON with every owned key present (so removals show up as differences).
    fn owned_fields(obj: &Self::K) -> Value;
    /// What the host copy's owned fields should be for virtual `v` (default: the same fields;
    /// kinds whose fields hold references translate them here).
    fn desired_fields(&self, _tc: &TranslateCtx, v: &Self::K) -> Value {
        Self::owned_fields(v)
    }
    /// The host object to create: `meta` (ours) plus the owned fields of `v`.
    fn host_object(&self, tc: &TranslateCtx, meta: ObjectMeta, v: &Self::K) -> Self::K;
    /// Whether the virtual object should exist on the host right now.
    fn wanted(&self, v: &Self::K) -> bool;
    /// Annotations the host side owns (never copied, never removed).
    fn excluded_annotations() -> &'static [&'static str] {
        &[]
    }
}

/// The watch of every virtual object of a copied kind.
pub fn virtual_watch<C: CopiedKind>() -> Watch<C::K> {
    Watch::virtual_all(C::NAME)
}

/// The watch of our host copies of a copied kind.
pub fn host_watch<C: CopiedKind>() -> Watch<C::K> {
    Watch::host_owned(C::NAME)
}

/// Registers a copied kind: both watches wake its queue (a relist of either side re-checks
/// both), and a [`Copier`] with `workers` reconciles in flight runs over it.
pub fn register<C: CopiedKind>(reg: &mut Registry, kind: C, workers: usize) {
    let (v, h) = (virtual_watch::<C>(), host_watch::<C>());
    let queue = reg.queue(C::NAME);
    let (virtual_store, host_store) = (reg.store(&v), reg.store(&h));
    wire_pair(reg, &v, &h, &queue, |o| host_key(C::KIND, o.meta()));
    let copier = Copier::new(kind, reg.shared().clone(), virtual_store, host_store);
    reg.workers(Arc::new(copier), workers);
}

/// Metadata of a host object to create from virtual `v`.
pub fn create_meta(tc: &TranslateCtx, kind: &str, v: &ObjectMeta, host_name: String) -> ObjectMeta {
    let (labels, annotations) = plan::desired_metadata(
        &tc.vcluster,
        kind,
        v,
        &ObjectMeta::default(),
        &BTreeMap::new(),
        &BTreeMap::new(),
        &[],
    );
    ObjectMeta {
        name: Some(host_name),
        namespace: Some(tc.host_namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![tc.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The pure plan for a copied kind: `v` and `h` as the caches show them under `host_name`.
pub fn plan_copy<C: CopiedKind>(
    kind: &C,
    tc: &TranslateCtx,
    (v, h): (Option<&C::K>, Option<&C::K>),
    host_name: &str,
    create_pending: bool,
) -> Result<Plan, SyncError> {
    let wanted = v.is_some_and(|v| kind.wanted(v));
    let rules = Lifecycle {
        kind: C::KIND,
        stale_grace: None,
        quiet_foreign_when_unwanted: true,
    };
    let seen = Observed {
        pair: Pair {
            virtual_meta: v.map(|o| o.meta()),
            host_meta: h.map(|o| o.meta()),
        },
        host_name,
        create_pending,
        wanted,
    };
    if let Some(p) = plan::lifecycle::<C::K>(rules, tc, seen)? {
        return Ok(p.counted_as(C::NAME));
    }
    let Some(v) = v else { return Ok(Plan::noop()) };
    let target = || Target::host::<C::K>(tc, host_name);
    if v.meta().deletion_timestamp.is_some() || !wanted {
        return Ok(Plan::noop().then_maybe(
            h.and_then(|h| Action::delete(target(), h.meta(), None, "no longer used on the virtual side"))
                .map(|a| a.counted_as(C::NAME)),
        ));
    }
    let Some(h) = h else {
        let meta = create_meta(tc, C::KIND, v.meta(), host_name.to_owned());
        let object = kind.host_object(tc, meta, v);
        return Ok(Plan::one(
            Action::create(
                target(),
                &object,
                Ownership::CopyOf(C::KIND),
                "virtual object needs a host copy",
            )
            .counted_as(C::NAME),
        ));
    };
    let (labels, annotations) = plan::desired_metadata(
        &tc.vcluster,
        C::KIND,
        v.meta(),
        h.meta(),
        &BTreeMap::new(),
        &BTreeMap::new(),
        C::excluded_annotations(),
    );
    let meta_patch = plan::metadata_patch(h.meta(), &labels, &annotations);
    let fields_patch = plan::merge_diff(&C::owned_fields(h), &kind.desired_fields(tc, v));
    if meta_patch.is_none() && fields_patch.is_none() {
        return Ok(Plan::noop());
    }
    let mut body = fields_patch.unwrap_or_else(|| Value::Object(Default::default()));
    let mut meta = meta_patch.unwrap_or_else(|| Value::Object(Default::default()));
    meta["resourceVersion"] = Value::from(h.resource_version().unwrap_or_default());
    body["metadata"] = meta;
    Ok(Plan::one(
        Action::new(
            target(),
            Write::patch(PatchKind::Merge, body),
            "virtual object changed",
        )
        .counted_as(C::NAME),
    ))
}

/// Runs a copied kind: the reconciler over both stores.
pub struct Copier<C: CopiedKind> {
    pub kind: C,
    pub virtual_store: Store<C::K>,
    pub host_store: Store<C::K>,
    pub executor: Executor,
}

impl<C: CopiedKind> Copier<C> {
    /// A copier of `kind` over its two stores; host writes go to the host namespace.
    pub fn new(kind: C, shared: Arc<Shared>, virtual_store: Store<C::K>, host_store: Store<C::K>) -> Self {
        Self {
            kind,
            virtual_store,
            host_store,
            executor: Executor::new(shared),
        }
    }
}

impl<C: CopiedKind> Reconciler for Copier<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let tc = self.executor.shared().translate_ctx()?;
        let host_name = naming::host_name(&tc.vcluster, &key.namespace, &key.name);
        let v = self
            .virtual_store
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let h = self
            .host_store
            .get(&ObjectRef::new(&host_name).within(&tc.host_namespace));
        if h.is_some() {
            self.executor.observed(&host_name);
        }
        let pending = self.executor.create_pending(&host_name);
        let plan = plan_copy(&self.kind, &tc, (v.as_deref(), h.as_deref()), &host_name, pending)?;
        let started = Instant::now();
        self.executor.run_all(&plan.actions).await?;
        if plan
            .actions
            .iter()
            .any(|a| matches!(a.write, Write::Create { .. }))
        {
            self.executor
                .shared()
                .metrics
                .sync_lag
                .with_label_values(&[C::NAME])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(Outcome {
            requeue_after: plan.requeue_after,
        })
    }

    fn tenant_object(&self, key: &Key) -> Option<ObjectReference> {
        self.virtual_store
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|v| v.object_ref(&()))
    }
}
