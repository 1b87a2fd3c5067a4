//! The pure plans of the claim kind: one virtual claim (its host copy, its virtual volume, its
//! binding and status), and one virtual volume (removed once its claim is gone).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::translate::{
    self, ANNOTATION_BIND_COMPLETED, ANNOTATION_BOUND_BY_CONTROLLER, ClassMap, HOST_OWNED_ANNOTATIONS,
};
use crate::engine::TranslateCtx;
use crate::engine::error::{SyncError, TranslateError};
use crate::engine::execute::{Action, Ownership, Target, Write};
use crate::engine::plan::{self, Lifecycle, Observed, Pair, PatchKind, Plan};

/// Kind name in markers and messages.
pub const KIND: &str = "PersistentVolumeClaim";
/// Plural for metrics, logs and the queue.
pub const NAME: &str = "persistentvolumeclaims";

/// What the caches show for one virtual claim.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub claim: Option<&'a PersistentVolumeClaim>,
    pub host: Option<&'a PersistentVolumeClaim>,
    /// The virtual volume named after the claim's uid ([`translate::volume_name`]), if any.
    pub volume: Option<&'a PersistentVolume>,
    pub host_name: &'a str,
    pub create_pending: bool,
    /// The host volume's reclaim policy, when known (see
    /// [`translate::provisioned_reclaim_policy`]); None: `Delete`.
    pub reclaim_policy: Option<&'a str>,
    /// `--pv-sync=real`: Some(the host volume the host claim is bound to, if cached yet);
    /// None in fake mode.
    pub host_volume: Option<Option<&'a PersistentVolume>>,
}

/// A claim's plan, and whether the tenant must be told that the host claim is gone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimPlan {
    pub plan: Plan,
    /// The host claim of a bound virtual claim was deleted out of band: its data is gone. The
    /// reconciler publishes a Warning once (the plan marks the claim `Lost` in the same step).
    pub host_lost: bool,
}

impl From<Plan> for ClaimPlan {
    fn from(plan: Plan) -> Self {
        Self {
            plan,
            host_lost: false,
        }
    }
}

/// The message of the Warning of a lost host claim.
pub const LOST_MESSAGE: &str = "the host volume claim was deleted: the data is gone; the claim stays Lost \
     (delete and recreate it to get a new, empty volume)";

/// Whether the syncer has bound virtual claim `v` (only the syncer binds virtual claims: the
/// virtual cluster runs without the PV binder).
pub fn was_bound(v: &PersistentVolumeClaim) -> bool {
    matches!(translate::phase(v), "Bound" | "Lost")
}

/// Metadata of the host claim to create from virtual `v` (markers, owner; the binder's
/// annotations never copied).
fn create_meta(tc: &TranslateCtx, v: &ObjectMeta, host_name: &str) -> ObjectMeta {
    let (labels, annotations) = plan::desired_metadata(
        &tc.vcluster,
        KIND,
        v,
        &ObjectMeta::default(),
        &BTreeMap::new(),
        &BTreeMap::new(),
        HOST_OWNED_ANNOTATIONS,
    );
    ObjectMeta {
        name: Some(host_name.to_owned()),
        namespace: Some(tc.host_namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![tc.owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn virtual_claim(v: &PersistentVolumeClaim) -> Target {
    Target::virtual_object::<PersistentVolumeClaim>(&v.namespace().unwrap_or_default(), &v.name_any())
}

fn virtual_volume(name: &str) -> Target {
    Target::virtual_object::<PersistentVolume>("", name)
}

/// The plan for one virtual claim:
/// - lifecycle (foreign host object, orphan, stale uid, create pending) as for every kind;
/// - the virtual claim going: its host copy is deleted (UID precondition);
/// - no host copy: created (refused with nothing created for what [`translate::host_spec`]
///   refuses), unless the virtual claim was already bound: then the data is gone, the claim
///   becomes `Lost` and the tenant is told ([`ClaimPlan::host_lost`]), never a silent new volume;
/// - host copy: labels/annotations and a storage increase patched (the rest of a claim's spec
///   is immutable); once the host claim is Bound, a virtual volume is made for it and the
///   virtual claim bound to it; the host status copied (only what differs).
pub fn plan_claim(tc: &TranslateCtx, classes: &ClassMap, seen: Seen<'_>) -> Result<ClaimPlan, SyncError> {
    let rules = Lifecycle {
        kind: KIND,
        stale_grace: None,
        quiet_foreign_when_unwanted: false,
    };
    let observed = Observed {
        pair: Pair {
            virtual_meta: seen.claim.map(|o| o.meta()),
            host_meta: seen.host.map(|o| o.meta()),
        },
        host_name: seen.host_name,
        create_pending: seen.create_pending,
        wanted: true,
    };
    if let Some(p) = plan::lifecycle::<PersistentVolumeClaim>(rules, tc, observed)? {
        return Ok(p.counted_as(NAME).into());
    }
    let Some(v) = seen.claim else {
        return Ok(ClaimPlan::default());
    };
    let host_target = || Target::host::<PersistentVolumeClaim>(tc, seen.host_name);
    if v.meta().deletion_timestamp.is_some() {
        let delete = seen
            .host
            .and_then(|h| Action::delete(host_target(), h.meta(), None, "virtual claim deleted"));
        return Ok(Plan::noop().then_maybe(delete).counted_as(NAME).into());
    }
    let Some(h) = seen.host else {
        if was_bound(v) {
            if translate::phase(v) == "Lost" {
                return Ok(ClaimPlan::default());
            }
            let body = json!({"metadata": {"uid": v.uid()}, "status": {"phase": "Lost"}});
            return Ok(ClaimPlan {
                plan: Plan::one(Action::new(
                    virtual_claim(v),
                    Write::status(body),
                    "the host claim of a bound claim is gone",
                )),
                host_lost: true,
            });
        }
        let spec = translate::host_spec(&tc.vcluster, classes, v)?;
        let object = PersistentVolumeClaim {
            metadata: create_meta(tc, v.meta(), seen.host_name),
            spec: Some(spec),
            status: None,
        };
        return Ok(Plan::one(
            Action::create(
                host_target(),
                &object,
                Ownership::CopyOf(KIND),
                "virtual claim needs a host claim",
            )
            .counted_as(NAME),
        )
        .into());
    };

    let mut out = Plan::noop();
    // The host claim: metadata, and a resize.
    let (labels, annotations) = plan::desired_metadata(
        &tc.vcluster,
        KIND,
        v.meta(),
        h.meta(),
        &BTreeMap::new(),
        &BTreeMap::new(),
        HOST_OWNED_ANNOTATIONS,
    );
    let meta_patch = plan::metadata_patch(h.meta(), &labels, &annotations);
    let resize = translate::resize_patch(v, h);
    if meta_patch.is_some() || resize.is_some() {
        let mut body = resize.unwrap_or_else(|| json!({}));
        let mut meta = meta_patch.unwrap_or_else(|| json!({}));
        meta["resourceVersion"] = Value::from(h.resource_version().unwrap_or_default());
        body["metadata"] = meta;
        out = out.then(
            Action::new(
                host_target(),
                Write::patch(PatchKind::Merge, body),
                "virtual claim changed",
            )
            .counted_as(NAME),
        );
    }

    // The virtual volume and the binding, once the host claim is bound.
    if translate::phase(h) == "Bound" {
        let uid = v.uid().unwrap_or_default();
        let pv_name = translate::volume_name(&uid);
        let desired = match seen.host_volume {
            None => translate::virtual_volume(v, h, classes, seen.reclaim_policy),
            Some(hpv) => hpv.and_then(|hpv| translate::real_volume(v, h, hpv, classes)),
        };
        // Real mode, the host volume not cached yet: its watch event wakes the claim again;
        // until then neither a binding nor a Bound status.
        let bind = seen.volume.is_some() || desired.is_some();
        if !bind {
            return Ok(out.into());
        }
        match (seen.volume, desired) {
            (Some(pv), _) if !translate::is_our_volume(pv) => {
                return Err(TranslateError::Refused(format!(
                    "a PersistentVolume {pv_name} that vnest did not make exists in the virtual \
                     cluster; delete it so that the claim can be bound"
                ))
                .into());
            }
            (None, Some(pv)) => {
                out = out
                    .then(Action::create(
                        virtual_volume(&pv_name),
                        &pv,
                        Ownership::ManagedBy,
                        "the host claim is bound",
                    ))
                    .then(Action::new(
                        virtual_volume(&pv_name),
                        Write::status(json!({"status": {"phase": "Bound"}})),
                        "the host claim is bound",
                    ));
            }
            (Some(pv), Some(want)) => {
                if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
                    out = out.then(Action::new(
                        virtual_volume(&pv_name),
                        Write::status(json!({"metadata": {"uid": pv.uid()}, "status": {"phase": "Bound"}})),
                        "the host claim is bound",
                    ));
                }
                if let Some(mut diff) =
                    plan::merge_diff(&translate::volume_fields(pv), &translate::volume_fields(&want))
                {
                    diff["metadata"] = json!({"uid": pv.uid()});
                    out = out.then(Action::new(
                        virtual_volume(&pv_name),
                        Write::patch(PatchKind::Merge, diff),
                        "the host volume changed",
                    ));
                }
            }
            (_, None) => {}
        }
        let spec_name = v
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or("");
        let annotations = v.annotations();
        let mut bind_patch = json!({});
        if spec_name.is_empty() {
            bind_patch["spec"] = json!({"volumeName": pv_name});
        }
        for key in [ANNOTATION_BIND_COMPLETED, ANNOTATION_BOUND_BY_CONTROLLER] {
            if !annotations.contains_key(key) {
                bind_patch["metadata"]["annotations"][key] = json!("yes");
            }
        }
        if bind_patch.as_object().is_some_and(|o| !o.is_empty()) {
            let mut bind = bind_patch;
            bind["metadata"]["uid"] = json!(uid);
            out = out.then(Action::new(
                virtual_claim(v),
                Write::patch(PatchKind::Merge, bind),
                "bind the claim to its volume",
            ));
        }
    }

    // The status, from the host claim.
    if let Some(mut diff) = plan::merge_diff(
        &translate::status_fields(v.status.as_ref()),
        &translate::status_fields(h.status.as_ref()),
    ) {
        let body = json!({"metadata": {"uid": v.uid()}, "status": diff.take()});
        out = out.then(Action::new(
            virtual_claim(v),
            Write::status(body),
            "host claim status changed",
        ));
    }
    Ok(out.into())
}

/// The plan for one virtual volume: nothing while it is ours and its claim (same uid) exists;
/// otherwise deleted, and its finalizers (the virtual pv-protection controller's, which keeps a
/// Bound volume) removed so that it goes.
pub fn plan_volume(pv: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> Plan {
    if !translate::is_our_volume(pv) {
        return Plan::noop();
    }
    let claimed = translate::claim_of(pv)
        .zip(claim)
        .is_some_and(|((_, _, uid), c)| uid.is_some() && uid == c.uid());
    if claimed {
        return Plan::noop();
    }
    let target = || virtual_volume(&pv.name_any());
    let mut out = Plan::noop().then_maybe(Action::delete(target(), pv.meta(), None, "its claim is gone"));
    if !pv.finalizers().is_empty() {
        out = out.then(Action::new(
            target(),
            Write::patch(
                PatchKind::Merge,
                json!({"metadata": {"uid": pv.uid(), "finalizers": null}}),
            ),
            "its claim is gone",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::error::Cluster;
    use crate::markers;
    use crate::naming;

    fn tc() -> TranslateCtx {
        TranslateCtx::test()
    }

    fn host_name() -> String {
        naming::host_name("vc", "shop", "data")
    }

    fn claim(status: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "shop", "uid": "u-1", "resourceVersion": "3",
                         "labels": {"app": "db"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": status,
        }))
        .expect("a claim")
    }

    /// The host copy as our create makes it, with the host's binder and status on it.
    fn host_copy(v: &PersistentVolumeClaim, status: Value) -> PersistentVolumeClaim {
        let plan = plan_claim(&tc(), &ClassMap::default(), seen(Some(v), None, None)).expect("a plan");
        let Write::Create { body, .. } = &plan.plan.actions[0].write else {
            panic!("a create")
        };
        let mut h: PersistentVolumeClaim = serde_json::from_value(body.clone()).expect("a claim");
        h.metadata.uid = Some("h-1".into());
        h.metadata.resource_version = Some("7".into());
        h.annotations_mut()
            .insert(ANNOTATION_BIND_COMPLETED.into(), "yes".into());
        h.annotations_mut()
            .insert("volume.kubernetes.io/selected-node".into(), "kwok-node-1".into());
        let spec = h.spec.get_or_insert_default();
        spec.volume_name = Some("host-pool-3".into());
        spec.storage_class_name = Some("local".into());
        h.status = serde_json::from_value(status).expect("a status");
        h
    }

    fn seen<'a>(
        v: Option<&'a PersistentVolumeClaim>,
        h: Option<&'a PersistentVolumeClaim>,
        pv: Option<&'a PersistentVolume>,
    ) -> Seen<'a> {
        // (The host name outlives the test through a leak: tests only.)
        let name: &'static str = Box::leak(host_name().into_boxed_str());
        Seen {
            claim: v,
            host: h,
            volume: pv,
            host_name: name,
            create_pending: false,
            reclaim_policy: None,
            host_volume: None,
        }
    }

    fn plan(
        v: Option<&PersistentVolumeClaim>,
        h: Option<&PersistentVolumeClaim>,
        pv: Option<&PersistentVolume>,
    ) -> ClaimPlan {
        plan_claim(&tc(), &ClassMap::default(), seen(v, h, pv)).expect("a plan")
    }

    /// (cluster, kind, op) of each action.
    fn steps(p: &ClaimPlan) -> Vec<(Cluster, &'static str, &'static str, Option<&'static str>)> {
        p.plan
            .actions
            .iter()
            .map(|a| {
                let sub = match &a.write {
                    Write::Patch { subresource, .. } => *subresource,
                    _ => None,
                };
                (a.target.cluster, a.target.kind, a.write.op(), sub)
            })
            .collect()
    }

    fn bound_status() -> Value {
        json!({"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}})
    }

    /// The virtual claim after the syncer bound it, and its volume.
    fn bound_pair() -> (PersistentVolumeClaim, PersistentVolumeClaim, PersistentVolume) {
        let v0 = claim(json!({"phase": "Pending"}));
        let h = host_copy(&v0, bound_status());
        let mut v = claim(bound_status());
        v.spec.get_or_insert_default().volume_name = Some("pvc-u-1".into());
        v.annotations_mut()
            .insert(ANNOTATION_BIND_COMPLETED.into(), "yes".into());
        v.annotations_mut()
            .insert(ANNOTATION_BOUND_BY_CONTROLLER.into(), "yes".into());
        let mut pv = translate::virtual_volume(&v, &h, &ClassMap::default(), None).expect("a volume");
        pv.metadata.uid = Some("pv-uid".into());
        pv.status = Some(serde_json::from_value(json!({"phase": "Bound"})).expect("a status"));
        (v, h, pv)
    }

    #[test]
    fn create_carries_markers_owner_and_no_binder_annotations() {
        let mut v = claim(json!({}));
        v.annotations_mut()
            .insert(ANNOTATION_BIND_COMPLETED.into(), "yes".into());
        v.annotations_mut().insert("team".into(), "a".into());
        let p = plan(Some(&v), None, None);
        assert_eq!(
            steps(&p),
            [(Cluster::Host, "PersistentVolumeClaim", "create", None)]
        );
        assert_eq!(p.plan.actions[0].counted_as, NAME);
        let Write::Create { body, .. } = &p.plan.actions[0].write else {
            panic!("a create")
        };
        assert_eq!(body["metadata"]["name"], host_name().as_str());
        assert_eq!(body["metadata"]["namespace"], "host");
        assert_eq!(body["metadata"]["labels"][markers::LABEL_MANAGED_BY], "vc");
        assert_eq!(body["metadata"]["labels"]["app"], "db");
        assert_eq!(body["metadata"]["annotations"]["team"], "a");
        assert!(
            body["metadata"]["annotations"]
                .get(ANNOTATION_BIND_COMPLETED)
                .is_none()
        );
        assert_eq!(
            body["metadata"]["annotations"][markers::ANNOTATION_OBJECT_KIND],
            KIND
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "owner-uid");
        assert_eq!(body["spec"]["resources"]["requests"]["storage"], "1Gi");
        assert!(body.get("status").is_none());
    }

    #[test]
    fn an_unsupported_source_creates_nothing_and_tells_the_tenant() {
        let mut v = claim(json!({}));
        v.spec.get_or_insert_default().data_source = Some(
            serde_json::from_value(json!({"apiGroup": "example.com", "kind": "Sample", "name": "s"}))
                .expect("a reference"),
        );
        let err = plan_claim(&tc(), &ClassMap::default(), seen(Some(&v), None, None)).expect_err("refused");
        assert_eq!(err.category(), "refused");
        assert!(err.tenant_visible(), "a Warning Event on the virtual claim");
    }

    #[test]
    fn mapped_classes_go_to_the_host_and_come_back_as_the_tenant_named_them() {
        let classes: ClassMap = "fast=premium,std=local".parse().expect("a map");
        let mut v = claim(json!({"phase": "Pending"}));
        v.spec.get_or_insert_default().storage_class_name = Some("fast".into());
        let p = plan_claim(&tc(), &classes, seen(Some(&v), None, None)).expect("a plan");
        let Write::Create { body, .. } = &p.plan.actions[0].write else {
            panic!("a create")
        };
        assert_eq!(body["spec"]["storageClassName"], "premium");
        let mut h: PersistentVolumeClaim = serde_json::from_value(body.clone()).expect("a claim");
        h.metadata.uid = Some("h-1".into());
        h.metadata.resource_version = Some("7".into());
        h.status = serde_json::from_value(bound_status()).expect("a status");
        let mut s = seen(Some(&v), Some(&h), None);
        s.reclaim_policy = Some("Retain");
        let p = plan_claim(&tc(), &classes, s).expect("a plan");
        let Write::Create { body, .. } = &p.plan.actions[0].write else {
            panic!("a volume create")
        };
        assert_eq!(body["kind"], "PersistentVolume");
        assert_eq!(body["spec"]["storageClassName"], "fast", "the tenant's name");
        assert_eq!(
            body["spec"]["persistentVolumeReclaimPolicy"], "Retain",
            "the host volume's"
        );
        // No class named: the host's default class, by the tenant's name of it.
        let v = claim(json!({"phase": "Pending"}));
        let mut h = host_copy(&v, bound_status());
        h.spec.get_or_insert_default().storage_class_name = Some("local".into());
        let p = plan_claim(&tc(), &classes, seen(Some(&v), Some(&h), None)).expect("a plan");
        let Write::Create { body, .. } = &p.plan.actions[0].write else {
            panic!("a volume create")
        };
        assert_eq!(body["spec"]["storageClassName"], "std");
        assert_eq!(
            body["spec"]["persistentVolumeReclaimPolicy"], "Delete",
            "unknown: Delete"
        );
    }

    #[test]
    fn real_volumes_copy_the_host_volume_once_it_is_cached() {
        let v = claim(json!({"phase": "Pending"}));
        let h = host_copy(&v, bound_status());
        let mut s = seen(Some(&v), Some(&h), None);
        s.host_volume = Some(None);
        assert_eq!(
            steps(&plan_claim(&tc(), &ClassMap::default(), s).expect("a plan")),
            [],
            "neither a volume, a binding nor a Bound status before the host volume is known"
        );
        let hpv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "host-pool-3", "uid": "hpv-1",
                         "annotations": {"pv.kubernetes.io/provisioned-by": "vnest.dev/hostpath"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/srv/pv-3"},
                     "claimRef": {"namespace": "host", "name": host_name(), "uid": "h-1"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}
        }))
        .expect("a volume");
        let mut s = seen(Some(&v), Some(&h), None);
        s.host_volume = Some(Some(&hpv));
        let p = plan_claim(&tc(), &ClassMap::default(), s).expect("a plan");
        assert_eq!(
            steps(&p),
            [
                (Cluster::Virtual, "PersistentVolume", "create", None),
                (Cluster::Virtual, "PersistentVolume", "patch", Some("status")),
                (Cluster::Virtual, "PersistentVolumeClaim", "patch", None),
                (Cluster::Virtual, "PersistentVolumeClaim", "patch", Some("status")),
            ]
        );
        let Write::Create { body, .. } = &p.plan.actions[0].write else {
            panic!("a create")
        };
        assert_eq!(body["metadata"]["name"], "pvc-u-1");
        assert_eq!(body["metadata"]["labels"][markers::LABEL_VIRTUAL_VOLUME], "true");
        assert_eq!(
            body["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
            "vnest.dev/hostpath"
        );
        assert_eq!(
            body["spec"]["hostPath"],
            json!({"path": "/srv/pv-3"}),
            "the host's source"
        );
        assert_eq!(
            body["spec"]["persistentVolumeReclaimPolicy"], "Retain",
            "the host's policy"
        );
        assert_eq!(
            body["spec"]["nodeAffinity"],
            hpv.spec
                .as_ref()
                .map(|s| serde_json::to_value(&s.node_affinity).expect("json"))
                .unwrap_or_default()
        );
        assert_eq!(
            body["spec"]["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data", "uid": "u-1"})
        );
    }

    #[test]
    fn a_known_reclaim_policy_reaches_an_existing_volume() {
        let (v, h, pv) = bound_pair();
        let mut s = seen(Some(&v), Some(&h), Some(&pv));
        s.reclaim_policy = Some("Retain");
        let p = plan_claim(&tc(), &ClassMap::default(), s).expect("a plan");
        assert_eq!(steps(&p), [(Cluster::Virtual, "PersistentVolume", "patch", None)]);
        let Write::Patch { patch, .. } = &p.plan.actions[0].write else {
            panic!("a patch")
        };
        assert_eq!(
            patch.body["spec"],
            json!({"persistentVolumeReclaimPolicy": "Retain"})
        );
    }

    #[test]
    fn pending_host_claim_status_is_copied_and_nothing_bound() {
        let v = claim(json!({}));
        let h = host_copy(&v, json!({"phase": "Pending"}));
        let p = plan(Some(&v), Some(&h), None);
        assert_eq!(
            steps(&p),
            [(Cluster::Virtual, "PersistentVolumeClaim", "patch", Some("status"))]
        );
        let Write::Patch { patch, .. } = &p.plan.actions[0].write else {
            panic!("a patch")
        };
        assert_eq!(
            patch.body,
            json!({"metadata": {"uid": "u-1"}, "status": {"phase": "Pending"}})
        );
        // Once copied: nothing (host-only annotations and spec fields are not ours to compare).
        let v = claim(json!({"phase": "Pending"}));
        assert_eq!(plan(Some(&v), Some(&h), None), ClaimPlan::default());
    }

    #[test]
    fn a_bound_host_claim_makes_a_volume_and_binds_the_virtual_claim() {
        let v = claim(json!({"phase": "Pending"}));
        let h = host_copy(&v, bound_status());
        let p = plan(Some(&v), Some(&h), None);
        assert_eq!(
            steps(&p),
            [
                (Cluster::Virtual, "PersistentVolume", "create", None),
                (Cluster::Virtual, "PersistentVolume", "patch", Some("status")),
                (Cluster::Virtual, "PersistentVolumeClaim", "patch", None),
                (Cluster::Virtual, "PersistentVolumeClaim", "patch", Some("status")),
            ]
        );
        let body = |i: usize| match &p.plan.actions[i].write {
            Write::Patch { patch, .. } => patch.body.clone(),
            Write::Create { body, .. } => body.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(body(0)["metadata"]["name"], "pvc-u-1");
        assert_eq!(body(1), json!({"status": {"phase": "Bound"}}));
        assert_eq!(
            body(2),
            json!({"spec": {"volumeName": "pvc-u-1"},
                   "metadata": {"uid": "u-1", "annotations": {ANNOTATION_BIND_COMPLETED: "yes", ANNOTATION_BOUND_BY_CONTROLLER: "yes"}}})
        );
        assert_eq!(
            body(3),
            json!({"metadata": {"uid": "u-1"}, "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}})
        );
        assert!(
            p.plan
                .actions
                .iter()
                .all(|a| a.target.cluster == Cluster::Virtual),
            "no host write"
        );
    }

    #[test]
    fn resync_of_a_bound_claim_writes_nothing() {
        let (v, h, pv) = bound_pair();
        assert_eq!(plan(Some(&v), Some(&h), Some(&pv)), ClaimPlan::default());
    }

    /// Sets a claim's requested storage.
    fn request_storage(claim: &mut PersistentVolumeClaim, size: &str) {
        claim
            .spec
            .as_mut()
            .and_then(|s| s.resources.as_mut())
            .and_then(|r| r.requests.as_mut())
            .expect("requests")
            .insert(
                "storage".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
            );
    }

    #[test]
    fn a_resize_grows_the_host_request_and_the_new_capacity_flows_back() {
        let (mut v, h, pv) = bound_pair();
        request_storage(&mut v, "2Gi");
        let p = plan(Some(&v), Some(&h), Some(&pv));
        assert_eq!(
            steps(&p),
            [(Cluster::Host, "PersistentVolumeClaim", "patch", None)]
        );
        let Write::Patch { patch, .. } = &p.plan.actions[0].write else {
            panic!("a patch")
        };
        assert_eq!(
            patch.body,
            json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}, "metadata": {"resourceVersion": "7"}})
        );
        // The host grows its capacity: the volume and the status follow.
        let mut h2 = h.clone();
        h2.status = Some(
            serde_json::from_value(
                json!({"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "2Gi"}}),
            )
            .expect("a status"),
        );
        request_storage(&mut h2, "2Gi");
        let p = plan(Some(&v), Some(&h2), Some(&pv));
        assert_eq!(
            steps(&p),
            [
                (Cluster::Virtual, "PersistentVolume", "patch", None),
                (Cluster::Virtual, "PersistentVolumeClaim", "patch", Some("status")),
            ]
        );
    }

    #[test]
    fn host_claim_deleted_out_of_band() {
        // Not bound yet: made again.
        let v = claim(json!({"phase": "Pending"}));
        let p = plan(Some(&v), None, None);
        assert_eq!(
            steps(&p),
            [(Cluster::Host, "PersistentVolumeClaim", "create", None)]
        );
        assert!(!p.host_lost);
        // Bound: never a silent new volume; Lost, and the tenant told once.
        let (v, _, pv) = bound_pair();
        let p = plan(Some(&v), None, Some(&pv));
        assert!(p.host_lost);
        assert_eq!(
            steps(&p),
            [(Cluster::Virtual, "PersistentVolumeClaim", "patch", Some("status"))]
        );
        let mut lost = v.clone();
        lost.status.get_or_insert_default().phase = Some("Lost".into());
        assert_eq!(plan(Some(&lost), None, Some(&pv)), ClaimPlan::default());
    }

    #[test]
    fn deletes_follow_the_virtual_claim() {
        let (v, h, _) = bound_pair();
        let p = plan(None, Some(&h), None);
        assert_eq!(
            steps(&p),
            [(Cluster::Host, "PersistentVolumeClaim", "delete", None)]
        );
        assert_eq!(
            p.plan.actions[0].write,
            Write::Delete {
                uid: "h-1".into(),
                grace_seconds: None
            }
        );
        let mut going = v.clone();
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let p = plan(Some(&going), Some(&h), None);
        assert_eq!(
            steps(&p),
            [(Cluster::Host, "PersistentVolumeClaim", "delete", None)]
        );
        assert!(!p.host_lost);
        assert_eq!(
            plan(Some(&going), None, None),
            ClaimPlan::default(),
            "no Lost for a claim going away"
        );
        // A host claim of an older virtual claim of the same name: replaced.
        let mut newer = v.clone();
        newer.metadata.uid = Some("u-2".into());
        let p = plan(Some(&newer), Some(&h), None);
        assert_eq!(
            steps(&p),
            [(Cluster::Host, "PersistentVolumeClaim", "delete", None)]
        );
    }

    #[test]
    fn volumes_go_with_their_claims() {
        let (v, _, pv) = bound_pair();
        assert_eq!(plan_volume(&pv, Some(&v)), Plan::noop(), "claimed");
        assert_eq!(plan_volume(&pv, None).ops(), ["delete"], "claim gone");
        let mut newer = v.clone();
        newer.metadata.uid = Some("u-2".into());
        assert_eq!(
            plan_volume(&pv, Some(&newer)).ops(),
            ["delete"],
            "claim recreated"
        );
        let mut protected = pv.clone();
        protected.metadata.finalizers = Some(vec!["kubernetes.io/pv-protection".into()]);
        assert_eq!(plan_volume(&protected, None).ops(), ["delete", "patch"]);
        protected.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(plan_volume(&protected, None).ops(), ["patch"], "already going");
        let mut tenants = pv.clone();
        tenants.metadata.labels = None;
        assert_eq!(plan_volume(&tenants, None), Plan::noop(), "not ours");
    }
}
