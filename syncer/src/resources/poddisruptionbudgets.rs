//! PodDisruptionBudgets (policy/v1; on by default, `--sync-poddisruptionbudgets=false` turns
//! them off): copied to the host so that evictions of the host pods (a host node drain, an
//! autoscaler, a host upgrade) respect the tenant's budget.
//!
//! - `selector`: tenant label keys as on host pods, plus `vnest.dev/managed-by=<vcluster>` and
//!   `vnest.dev/namespace=<virtual ns>` ([`namespace_pod_selector`], the NetworkPolicy rule),
//!   so a tenant budget only ever counts and guards pods of its own vcluster and namespace. An
//!   empty selector (every pod of the namespace) becomes the markers alone; an absent selector
//!   (no pod) stays absent.
//! - `minAvailable`, `maxUnavailable`, `unhealthyPodEvictionPolicy`: copied.
//! - Status is not copied back: the virtual control plane's own disruption controller writes the
//!   virtual budget's status from the virtual pods (whose status comes from the host) and guards
//!   evictions through the virtual API server; the host's controller writes the host copy's.
//!   Host pods have no controller ownerReference, so on the host only an integer `minAvailable`
//!   counts them exactly; `maxUnavailable` and percentages need the pods' controllers there
//!   (the host reports `UnmanagedPods`).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::selectors::namespace_pod_selector;
use crate::engine::TranslateCtx;
use crate::engine::registry::Registry;
use crate::engine::standard::{self, CopiedKind};

/// Flags of the PodDisruptionBudget kind.
///
/// On by default: PodDisruptionBudgets are namespaced, so the vcluster's namespaced Role can
/// grant them, and a tenant who runs `kubectl create pdb` expects it to protect the pods
/// wherever they are evicted; without a host copy only evictions through the virtual API server
/// would respect it, and a host drain would not. The copy can never select pods outside the
/// tenant's vcluster and namespace. Like any namespace tenant allowed PDBs, a tenant can hold
/// up a host drain with a budget that allows no disruption; a host admin who does not want that
/// passes `--sync-poddisruptionbudgets=false` (and may drop the Role's rule).
#[derive(Debug, Clone, clap::Args)]
pub struct PodDisruptionBudgetArgs {
    /// Copy virtual PodDisruptionBudgets to the host (selectors confined to this vcluster and
    /// namespace); `--sync-poddisruptionbudgets=false` turns it off.
    #[arg(
        long,
        env = "VNEST_SYNC_PODDISRUPTIONBUDGETS",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub sync_poddisruptionbudgets: bool,
}

pub struct PodDisruptionBudgets;

/// The host spec for virtual budget `v` (pure).
pub fn host_spec(tc: &TranslateCtx, v: &PodDisruptionBudget) -> PodDisruptionBudgetSpec {
    let ns = v.namespace().unwrap_or_default();
    let spec = v.spec.clone().unwrap_or_default();
    PodDisruptionBudgetSpec {
        selector: spec
            .selector
            .as_ref()
            .map(|s| namespace_pod_selector(&tc.vcluster, &ns, Some(s))),
        min_available: spec.min_available,
        max_unavailable: spec.max_unavailable,
        unhealthy_pod_eviction_policy: spec.unhealthy_pod_eviction_policy,
    }
}

impl CopiedKind for PodDisruptionBudgets {
    type K = PodDisruptionBudget;
    const KIND: &'static str = "PodDisruptionBudget";
    const NAME: &'static str = "poddisruptionbudgets";

    fn owned_fields(obj: &PodDisruptionBudget) -> Value {
        json!({ "spec": obj.spec })
    }

    fn desired_fields(&self, tc: &TranslateCtx, v: &PodDisruptionBudget) -> Value {
        json!({ "spec": host_spec(tc, v) })
    }

    fn host_object(
        &self,
        tc: &TranslateCtx,
        meta: ObjectMeta,
        v: &PodDisruptionBudget,
    ) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: meta,
            spec: Some(host_spec(tc, v)),
            status: None,
        }
    }

    fn wanted(&self, _v: &PodDisruptionBudget) -> bool {
        true
    }
}

/// Declares the PodDisruptionBudget kind (unless `--sync-poddisruptionbudgets=false`).
pub fn register(reg: &mut Registry, workers: usize) {
    standard::register(reg, PodDisruptionBudgets, workers);
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::engine::execute::Write;
    use crate::engine::plan::{HostPatch, PatchKind};
    use crate::markers;
    use crate::naming;

    fn tc() -> TranslateCtx {
        TranslateCtx::test()
    }

    fn pdb(spec: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "v-uid", "labels": {"team": "a"}},
            "spec": spec,
            "status": {"currentHealthy": 2, "desiredHealthy": 2, "disruptionsAllowed": 0, "expectedPods": 2}
        }))
        .expect("a PodDisruptionBudget")
    }

    fn host_name() -> String {
        naming::host_name("vc", "shop", "web")
    }

    /// The host copy as our create makes it, as the host API server would show it back.
    fn host_copy(v: &PodDisruptionBudget) -> PodDisruptionBudget {
        let meta = standard::create_meta(&tc(), PodDisruptionBudgets::KIND, &v.metadata, host_name());
        let mut h = PodDisruptionBudgets.host_object(&tc(), meta, v);
        h.metadata.uid = Some("h-uid".into());
        h.metadata.resource_version = Some("7".into());
        h
    }

    fn plan(v: Option<&PodDisruptionBudget>, h: Option<&PodDisruptionBudget>) -> crate::engine::plan::Plan {
        standard::plan_copy(&PodDisruptionBudgets, &tc(), (v, h), &host_name(), false).expect("a plan")
    }

    #[test]
    fn spec_is_copied_with_the_selector_confined() {
        let confined = json!({"vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"});
        let forged = markers::host_label_key("vc", "vnest.dev/managed-by");
        let cases = [
            (
                "integer minAvailable, labels",
                json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
                json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web", "vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"}}}),
            ),
            (
                "percentage maxUnavailable and eviction policy, expressions",
                json!({"maxUnavailable": "25%", "unhealthyPodEvictionPolicy": "AlwaysAllow",
                       "selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}}),
                json!({"maxUnavailable": "25%", "unhealthyPodEvictionPolicy": "AlwaysAllow",
                       "selector": {"matchLabels": confined.clone(),
                                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}}),
            ),
            (
                "empty selector: every pod of the namespace, of this vcluster only",
                json!({"minAvailable": "50%", "selector": {}}),
                json!({"minAvailable": "50%", "selector": {"matchLabels": confined}}),
            ),
            (
                "absent selector: no pod, on the host too",
                json!({"minAvailable": 1}),
                json!({"minAvailable": 1}),
            ),
            (
                "a forged marker stays a tenant key",
                json!({"minAvailable": 1, "selector": {"matchLabels": {"vnest.dev/managed-by": "other"}}}),
                json!({"minAvailable": 1, "selector": {"matchLabels": {forged: "other", "vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"}}}),
            ),
        ];
        for (name, spec, want) in cases {
            let got = serde_json::to_value(host_spec(&tc(), &pdb(spec))).expect("serializes");
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn create_carries_markers_and_no_status() {
        let v = pdb(json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}));
        let p = plan(Some(&v), None);
        assert_eq!(p.ops(), ["create"]);
        let Write::Create { body, .. } = &p.actions[0].write else {
            panic!("a create")
        };
        assert_eq!(body["apiVersion"], "policy/v1");
        assert_eq!(body["metadata"]["name"], host_name().as_str());
        assert_eq!(body["metadata"]["namespace"], "host");
        assert_eq!(body["metadata"]["labels"][markers::LABEL_MANAGED_BY], "vc");
        assert_eq!(body["metadata"]["labels"]["team"], "a");
        assert_eq!(
            body["metadata"]["annotations"][markers::ANNOTATION_OBJECT_UID],
            "v-uid"
        );
        assert_eq!(
            body["metadata"]["annotations"][markers::ANNOTATION_OBJECT_KIND],
            "PodDisruptionBudget"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "owner-uid");
        assert!(body.get("status").is_none(), "the host controller owns status");
        assert_eq!(p.actions[0].counted_as, "poddisruptionbudgets");
    }

    #[test]
    fn resync_of_an_unchanged_budget_writes_nothing() {
        for spec in [
            json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
            json!({"maxUnavailable": "10%", "unhealthyPodEvictionPolicy": "IfHealthyBudget", "selector": {}}),
            json!({"minAvailable": 0}),
        ] {
            let v = pdb(spec.clone());
            let mut h = host_copy(&v);
            // Status on either side differs (each side's disruption controller writes its own),
            // and host-side labels survive: neither is a change of ours.
            h.status = Some(
                serde_json::from_value(json!({"currentHealthy": 5, "desiredHealthy": 1,
                "disruptionsAllowed": 4, "expectedPods": 5, "observedGeneration": 3}))
                .expect("a status"),
            );
            h.metadata
                .labels
                .get_or_insert_default()
                .insert("host-team".into(), "ops".into());
            assert_eq!(plan(Some(&v), Some(&h)).ops(), Vec::<&str>::new(), "{spec}");
        }
    }

    #[test]
    fn owned_fields_changes_are_minimal_merge_patches() {
        let old = pdb(
            json!({"minAvailable": 2, "maxUnavailable": null, "selector": {"matchLabels": {"app": "web"}}}),
        );
        let h = host_copy(&old);
        let cases = [
            (
                "minAvailable changed",
                json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
                json!({"spec": {"minAvailable": 1}}),
            ),
            (
                "minAvailable replaced by maxUnavailable",
                json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
                json!({"spec": {"minAvailable": null, "maxUnavailable": 1}}),
            ),
            (
                "selector changed: markers kept",
                json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "api"}}}),
                json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}}),
            ),
            (
                "eviction policy set",
                json!({"minAvailable": 2, "unhealthyPodEvictionPolicy": "AlwaysAllow", "selector": {"matchLabels": {"app": "web"}}}),
                json!({"spec": {"unhealthyPodEvictionPolicy": "AlwaysAllow"}}),
            ),
        ];
        for (name, spec, want) in cases {
            let p = plan(Some(&pdb(spec)), Some(&h));
            assert_eq!(p.ops(), ["patch"], "{name}");
            let Write::Patch {
                subresource: None,
                patch:
                    HostPatch {
                        kind: PatchKind::Merge,
                        body,
                    },
            } = &p.actions[0].write
            else {
                panic!("{name}: a merge patch of the object")
            };
            let mut want = want;
            want["metadata"] = json!({"resourceVersion": "7"});
            assert_eq!(body, &want, "{name}");
        }
    }

    #[test]
    fn deletes_follow_the_virtual_side() {
        let v = pdb(json!({"minAvailable": 1, "selector": {}}));
        let h = host_copy(&v);
        assert_eq!(plan(None, Some(&h)).ops(), ["delete"], "virtual budget deleted");
        let mut going = v.clone();
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            plan(Some(&going), Some(&h)).ops(),
            ["delete"],
            "virtual budget going"
        );
        let mut foreign = h.clone();
        foreign.metadata.labels = None;
        assert!(
            standard::plan_copy(
                &PodDisruptionBudgets,
                &tc(),
                (Some(&v), Some(&foreign)),
                &host_name(),
                false
            )
            .is_err(),
            "a host budget under our name that is not ours is never touched"
        );
    }

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        pdb: PodDisruptionBudgetArgs,
    }

    #[test]
    fn on_by_default_and_the_flag_turns_it_off() {
        // (Assumes VNEST_SYNC_PODDISRUPTIONBUDGETS is not set in the test environment.)
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("vnest").chain(args.iter().copied()))
                .map(|f| f.pdb.sync_poddisruptionbudgets)
        };
        assert_eq!(parse(&[]).ok(), Some(true));
        assert_eq!(parse(&["--sync-poddisruptionbudgets"]).ok(), Some(true));
        assert_eq!(parse(&["--sync-poddisruptionbudgets=false"]).ok(), Some(false));
        assert_eq!(parse(&["--sync-poddisruptionbudgets=true"]).ok(), Some(true));
        assert_eq!(parse(&["--sync-poddisruptionbudgets=off"]).ok(), Some(false));
        assert!(parse(&["--sync-poddisruptionbudgets=maybe"]).is_err());
    }
}
