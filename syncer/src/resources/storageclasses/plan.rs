//! The pure plan of one virtual StorageClass name.

use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::translate;
use crate::engine::execute::{Action, Ownership, Target, Write};
use crate::engine::plan::{self, PatchKind, Plan};

/// Plural for metrics, logs and the queue.
pub const NAME: &str = "storageclasses";

fn target(name: &str) -> Target {
    Target::virtual_object::<StorageClass>("", name)
}

/// The plan for virtual class `name`, given the virtual class of that name (if any) and the host
/// class the tenant knows by that name (if any):
/// - a class the tenant made: nothing, ever;
/// - no host class: our copy deleted;
/// - no copy: created;
/// - a copy: deleted when an immutable field differs (the next pass creates it again), else
///   the mutable fields patched when they differ; nothing when in step.
pub fn plan_class(name: &str, virt: Option<&StorageClass>, host: Option<&StorageClass>) -> Plan {
    if virt.is_some_and(|v| !translate::is_ours(v)) {
        return Plan::noop();
    }
    match (virt, host) {
        (None, None) => Plan::noop(),
        (Some(v), None) => Plan::noop().then_maybe(Action::delete(
            target(name),
            v.meta(),
            None,
            "its host class is gone",
        )),
        (None, Some(h)) => Plan::one(Action::create(
            target(name),
            &translate::virtual_class(name, h),
            Ownership::ManagedBy,
            "a host class to show",
        )),
        (Some(v), Some(h)) => {
            let want = translate::virtual_class(name, h);
            if translate::immutable_fields(v) != translate::immutable_fields(&want) {
                return Plan::noop().then_maybe(Action::delete(
                    target(name),
                    v.meta(),
                    None,
                    "the host class changed a field that cannot be patched",
                ));
            }
            match plan::merge_diff(&translate::mutable_fields(v), &translate::mutable_fields(&want)) {
                None => Plan::noop(),
                Some(mut diff) => {
                    diff["metadata"]["uid"] = json!(v.uid());
                    diff["metadata"]["resourceVersion"] = json!(v.resource_version());
                    Plan::one(Action::new(
                        target(name),
                        Write::patch(PatchKind::Merge, diff),
                        "the host class changed",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn class(body: Value) -> StorageClass {
        serde_json::from_value(body).expect("a class")
    }

    fn host(extra: Value) -> StorageClass {
        let mut body = json!({"metadata": {"name": "premium", "uid": "h-1"}, "provisioner": "csi.example.com",
                              "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"});
        for (k, v) in extra.as_object().expect("an object") {
            body[k] = v.clone();
        }
        class(body)
    }

    /// Our copy of `h` as the API server returns it.
    fn copy_of(h: &StorageClass) -> StorageClass {
        let mut c = translate::virtual_class("fast", h);
        c.metadata.uid = Some("v-1".into());
        c.metadata.resource_version = Some("4".into());
        c
    }

    fn ops(p: &Plan) -> Vec<&'static str> {
        p.actions.iter().map(|a| a.write.op()).collect()
    }

    #[test]
    fn copies_follow_the_host_and_tenant_classes_are_never_touched() {
        let h = host(json!({}));
        let ours = copy_of(&h);
        let tenant = class(json!({"metadata": {"name": "fast", "uid": "t-1"}, "provisioner": "mine"}));
        let grown = host(json!({"allowVolumeExpansion": true}));
        let defaulted = host(json!({"metadata": {"name": "premium", "uid": "h-1",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}}));
        let reprovisioned = host(json!({"provisioner": "other.example.com"}));
        type Case<'a> = (
            &'a str,
            Option<&'a StorageClass>,
            Option<&'a StorageClass>,
            Vec<&'a str>,
        );
        let cases: [Case<'_>; 8] = [
            ("nothing on either side", None, None, vec![]),
            ("a host class: copied", None, Some(&h), vec!["create"]),
            ("in step: nothing", Some(&ours), Some(&h), vec![]),
            (
                "expansion allowed on the host: patched",
                Some(&ours),
                Some(&grown),
                vec!["patch"],
            ),
            (
                "made the default on the host: patched",
                Some(&ours),
                Some(&defaulted),
                vec!["patch"],
            ),
            (
                "new provisioner: deleted (made again next)",
                Some(&ours),
                Some(&reprovisioned),
                vec!["delete"],
            ),
            ("host class gone: deleted", Some(&ours), None, vec!["delete"]),
            ("the tenant's class of that name", Some(&tenant), Some(&h), vec![]),
        ];
        for (name, v, h, want) in cases {
            assert_eq!(ops(&plan_class("fast", v, h)), want, "{name}");
        }
        assert!(
            plan_class("fast", Some(&tenant), None).actions.is_empty(),
            "never deleted"
        );
    }

    #[test]
    fn a_patch_carries_only_the_change_and_a_precondition() {
        let h = host(json!({}));
        let ours = copy_of(&h);
        let defaulted = host(json!({"metadata": {"name": "premium", "uid": "h-1",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "allowVolumeExpansion": true}));
        let p = plan_class("fast", Some(&ours), Some(&defaulted));
        let Write::Patch { patch, .. } = &p.actions[0].write else {
            panic!("a patch")
        };
        assert_eq!(
            patch.body,
            json!({"allowVolumeExpansion": true,
                   "metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                                "uid": "v-1", "resourceVersion": "4"}})
        );
        // And back: the default annotation removed on the host is removed on the copy.
        let back = plan_class("fast", Some(&copy_of(&defaulted)), Some(&h));
        let Write::Patch { patch, .. } = &back.actions[0].write else {
            panic!("a patch")
        };
        assert_eq!(
            patch.body["metadata"]["annotations"],
            json!({"storageclass.kubernetes.io/is-default-class": null})
        );
    }
}
