//! Pure planning: from (virtual object, host object, desired host object) decide the ONE host
//! write to make, or none. A full resync therefore costs zero host writes: a write is planned
//! only when a field we own differs.
//!
//! Writes are expressed as the smallest patch (RFC 7386 merge patch, or a strategic merge patch
//! where a kind needs list merging by key) computed by [`merge_diff`] between the host object's
//! current owned fields and the desired ones; keys we own that disappeared become `null`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use super::TranslateCtx;
use super::error::SyncError;
use super::execute::{Action, Target};
use super::ownership;
use crate::markers;

pub use super::execute::{HostPatch, PatchKind};

/// What a reconcile decided: the writes to make, in order, and when to look at the key again.
/// An empty plan is the answer to every resync of an object already in step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// Nothing to write.
    pub fn noop() -> Self {
        Self::default()
    }
    /// Just one write.
    pub fn one(action: Action) -> Self {
        Self {
            actions: vec![action],
            requeue_after: None,
        }
    }
    /// Nothing to write yet; look again after `after`.
    pub fn wait(after: Duration) -> Self {
        Self::noop().then_requeue(after)
    }
    pub fn then(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }
    pub fn then_maybe(mut self, action: Option<Action>) -> Self {
        self.actions.extend(action);
        self
    }
    pub fn then_requeue(mut self, after: Duration) -> Self {
        self.requeue_after = Some(after);
        self
    }
    /// Every action not counted yet counted under `what` in the host-writes metric.
    pub fn counted_as(mut self, what: &'static str) -> Self {
        for a in &mut self.actions {
            if a.counted_as.is_empty() {
                a.counted_as = what;
            }
        }
        self
    }
    /// The ops of the actions, for table tests and logs ("create", "patch", ...).
    pub fn ops(&self) -> Vec<&'static str> {
        self.actions.iter().map(|a| a.write.op()).collect()
    }
}

pub use super::RECHECK;

/// What the lifecycle rules need to know about a pair of objects.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub virtual_meta: Option<&'a ObjectMeta>,
    pub host_meta: Option<&'a ObjectMeta>,
}

/// The lifecycle rules of a kind (every kind has them; only these knobs differ).
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// Kind name in markers ("Pod").
    pub kind: &'static str,
    /// Grace period of the delete of a host copy made from an older virtual object (pods: 0,
    /// nothing of the old pod may keep running under the new one's name).
    pub stale_grace: Option<i64>,
    /// Whether a foreign host object under our name is left alone quietly (e.g. Endpoints the
    /// host's own controller keeps for a Service with a selector) when we do not need the name.
    pub quiet_foreign_when_unwanted: bool,
}

/// What the engine observed before a kind plans: the pair from the caches, whether a host
/// create of the name is still pending, and whether the virtual object wants a host copy.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub pair: Pair<'a>,
    pub host_name: &'a str,
    pub create_pending: bool,
    pub wanted: bool,
}

/// The rules every kind shares, applied by the engine before a kind's own plan:
/// - a host object under our name that is not ours: [`SyncError::Foreign`] (never touched);
/// - host copy without a virtual object: delete it (the virtual object was deleted);
/// - host copy made from another virtual object of the same name (UID differs): delete it and
///   look again shortly (it will be recreated for the current object);
/// - virtual object without a host copy while our create of it is still on its way: wait.
///
/// Returns `Ok(None)` when the kind's own rules must decide (the virtual object exists and the
/// host copy, if any, is its own).
pub fn lifecycle<K: kube::Resource<DynamicType = ()>>(
    rules: Lifecycle,
    tc: &TranslateCtx,
    seen: Observed<'_>,
) -> Result<Option<Plan>, SyncError> {
    let Pair {
        virtual_meta: v,
        host_meta: h,
    } = seen.pair;
    let target = || Target::host::<K>(tc, seen.host_name);
    if let Some(h) = h
        && !ownership::is_ours(tc, rules.kind, h)
    {
        let needed = seen.wanted && v.is_some_and(|v| v.deletion_timestamp.is_none());
        if rules.quiet_foreign_when_unwanted && !needed {
            return Ok(Some(Plan::noop()));
        }
        return Err(SyncError::Foreign {
            kind: rules.kind,
            host_name: seen.host_name.to_owned(),
        });
    }
    Ok(match (v, h) {
        (None, None) => Some(Plan::noop()),
        (None, Some(h)) => {
            Some(Plan::noop().then_maybe(Action::delete(target(), h, None, "virtual object deleted")))
        }
        (Some(v), Some(h)) => {
            let source_uid = markers::source_of(h).map(|s| s.uid);
            (source_uid.as_deref() != v.uid.as_deref()).then(|| {
                Plan::noop()
                    .then_maybe(Action::delete(
                        target(),
                        h,
                        rules.stale_grace,
                        "host copy belongs to an older virtual object",
                    ))
                    .then_requeue(RECHECK)
            })
        }
        (Some(_), None) if seen.create_pending => Some(Plan::wait(RECHECK)),
        (Some(_), None) => None,
    })
}

/// RFC 7386 diff: the merge patch that turns `from` into `to`. Keys of `from` missing in `to`
/// become `null`; arrays and scalars are replaced whole. Returns `None` when equal.
pub fn merge_diff(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = Map::new();
            for (k, vb) in b {
                match a.get(k) {
                    Some(va) => {
                        if let Some(d) = merge_diff(va, vb) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), vb.clone());
                    }
                }
            }
            for k in a.keys() {
                if !b.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        (a, b) if a == b => None,
        (_, b) => Some(b.clone()),
    }
}

/// The desired host labels and annotations for an existing host object: virtual values win for
/// the keys they set, host-side additions survive, keys deleted on the virtual side go (tracked
/// with the managed-key lists of [`markers`]), and our markers and `extra` annotations are set.
pub fn desired_metadata(
    vcluster: &str,
    kind: &str,
    virtual_meta: &ObjectMeta,
    host_meta: &ObjectMeta,
    extra_labels: &BTreeMap<String, String>,
    extra_annotations: &BTreeMap<String, String>,
    excluded_annotations: &[&str],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let empty = BTreeMap::new();
    // What was mirrored from the host is the host's: never copied down (see `mirror_back`).
    let host_labels =
        markers::host_origin(virtual_meta.annotations.as_ref(), markers::ANNOTATION_HOST_LABELS);
    let host_annotations = markers::host_origin(
        virtual_meta.annotations.as_ref(),
        markers::ANNOTATION_HOST_ANNOTATIONS,
    );
    let v_labels =
        &markers::without_host_origin(virtual_meta.labels.as_ref().unwrap_or(&empty), &host_labels);
    let v_annotations = &markers::without_host_origin(
        virtual_meta.annotations.as_ref().unwrap_or(&empty),
        &host_annotations,
    );
    let h_labels = host_meta.labels.as_ref().unwrap_or(&empty);
    let h_annotations = host_meta.annotations.as_ref().unwrap_or(&empty);

    let annotations = markers::merge_annotations(v_annotations, h_annotations, excluded_annotations);
    let merged = markers::merge_labels(vcluster, v_labels, h_labels, &annotations, &[]);
    let mut meta = ObjectMeta {
        labels: Some(merged.labels),
        annotations: Some(merged.annotations),
        ..ObjectMeta::default()
    };
    if let Some(source) = source_from_virtual(virtual_meta) {
        markers::mark(&mut meta, vcluster, kind, &source);
    }
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    labels.extend(extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    annotations.extend(extra_annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    (labels, annotations)
}

/// The markers' view of a virtual object.
pub fn source_from_virtual(meta: &ObjectMeta) -> Option<markers::Source> {
    Some(markers::Source {
        namespace: meta.namespace.clone(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
    })
}

/// Merge patch of the VIRTUAL object's labels/annotations that mirrors what host controllers
/// added to its host copy ([`markers::mirror_back`], tracked in
/// [`markers::ANNOTATION_HOST_LABELS`] / [`markers::ANNOTATION_HOST_ANNOTATIONS`]): `None`
/// when there is nothing to mirror. Carries the virtual resourceVersion (a tenant write in
/// between makes it a conflict, then it is planned again).
pub fn virtual_metadata_patch(virtual_meta: &ObjectMeta, host_meta: &ObjectMeta) -> Option<Value> {
    let empty = BTreeMap::new();
    let v_labels = virtual_meta.labels.as_ref().unwrap_or(&empty);
    let v_annotations = virtual_meta.annotations.as_ref().unwrap_or(&empty);
    let h_labels = host_meta.labels.as_ref().unwrap_or(&empty);
    let h_annotations = host_meta.annotations.as_ref().unwrap_or(&empty);
    let added_labels = markers::host_added(h_labels, h_annotations.get(markers::ANNOTATION_MANAGED_LABELS));
    let added_annotations = markers::host_added(
        h_annotations,
        h_annotations.get(markers::ANNOTATION_MANAGED_ANNOTATIONS),
    );
    let (labels, label_record) = markers::mirror_back(
        v_labels,
        &markers::host_origin(Some(v_annotations), markers::ANNOTATION_HOST_LABELS),
        &added_labels,
    );
    let (mut annotations, annotation_record) = markers::mirror_back(
        v_annotations,
        &markers::host_origin(Some(v_annotations), markers::ANNOTATION_HOST_ANNOTATIONS),
        &added_annotations,
    );
    let record =
        |r: &BTreeMap<String, String>| (!r.is_empty()).then(|| serde_json::to_string(r).unwrap_or_default());
    for (key, r) in [
        (markers::ANNOTATION_HOST_LABELS, &label_record),
        (markers::ANNOTATION_HOST_ANNOTATIONS, &annotation_record),
    ] {
        match record(r) {
            Some(v) => annotations.insert(key.to_owned(), v),
            None => annotations.remove(key),
        };
    }
    if &labels == v_labels && &annotations == v_annotations {
        return None; // nothing mirrored and nothing to mirror: no JSON built
    }
    let from = serde_json::json!({"labels": v_labels, "annotations": v_annotations});
    let to = serde_json::json!({"labels": labels, "annotations": annotations});
    let mut diff = merge_diff(&from, &to)?;
    diff["resourceVersion"] = Value::from(virtual_meta.resource_version.clone().unwrap_or_default());
    Some(serde_json::json!({"metadata": diff}))
}

/// Merge patch for labels/annotations only: `None` when the host already has them.
pub fn metadata_patch(
    host_meta: &ObjectMeta,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<Value> {
    let empty = BTreeMap::new();
    let (h_labels, h_annotations) = (
        host_meta.labels.as_ref().unwrap_or(&empty),
        host_meta.annotations.as_ref().unwrap_or(&empty),
    );
    if h_labels == labels && h_annotations == annotations {
        // The common case (every reconcile of a pod in step): no JSON is built to find it out.
        return None;
    }
    let from = serde_json::json!({"labels": h_labels, "annotations": h_annotations});
    let to = serde_json::json!({"labels": labels, "annotations": annotations});
    merge_diff(&from, &to)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use crate::engine::execute::Write;
    use serde_json::json;

    #[test]
    fn merge_diff_adds_changes_and_nulls_removed_keys() {
        let from = json!({"data": {"a": "1", "b": "2"}, "list": [1, 2], "same": {"x": 1}});
        let to = json!({"data": {"a": "1", "b": "3", "c": "4"}, "list": [1], "same": {"x": 1}});
        assert_eq!(
            merge_diff(&from, &to),
            Some(json!({"data": {"b": "3", "c": "4"}, "list": [1]}))
        );
        let from = json!({"data": {"a": "1", "gone": "x"}});
        let to = json!({"data": {"a": "1"}});
        assert_eq!(merge_diff(&from, &to), Some(json!({"data": {"gone": null}})));
        assert_eq!(merge_diff(&to, &to), None);
    }

    fn meta(name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        }
    }

    /// Our host copy of virtual ConfigMap ns/cm made from virtual uid `source_uid`.
    fn host_of(source_uid: &str, uid: &str) -> ObjectMeta {
        let tc = TranslateCtx::test();
        let mut h = meta(&crate::naming::host_name("vc", "ns", "cm"), uid);
        h.namespace = Some(tc.host_namespace.clone());
        markers::mark(
            &mut h,
            "vc",
            "ConfigMap",
            &markers::Source {
                namespace: Some("ns".into()),
                name: "cm".into(),
                uid: source_uid.into(),
            },
        );
        h
    }

    const RULES: Lifecycle = Lifecycle {
        kind: "ConfigMap",
        stale_grace: Some(0),
        quiet_foreign_when_unwanted: true,
    };

    /// The lifecycle decision for a pair (`Err` = the error's category).
    fn decide(
        v: Option<&ObjectMeta>,
        h: Option<&ObjectMeta>,
        create_pending: bool,
        wanted: bool,
    ) -> Result<Option<Plan>, &'static str> {
        let tc = TranslateCtx::test();
        let host_name = crate::naming::host_name("vc", "ns", "cm");
        lifecycle::<k8s_openapi::api::core::v1::ConfigMap>(
            RULES,
            &tc,
            Observed {
                pair: Pair {
                    virtual_meta: v,
                    host_meta: h,
                },
                host_name: &host_name,
                create_pending,
                wanted,
            },
        )
        .map_err(|e| e.category())
    }

    #[test]
    fn lifecycle_rules() {
        let v = meta("cm", "v-1");
        let ours = host_of("v-1", "h-1");
        let stale = host_of("v-0", "h-0");
        let mut foreign = ours.clone();
        foreign.labels = None;
        let mut terminating = ours.clone();
        terminating.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));

        assert_eq!(
            decide(Some(&v), Some(&ours), false, true),
            Ok(None),
            "the kind decides"
        );
        assert_eq!(decide(Some(&v), None, false, true), Ok(None), "the kind creates");
        assert_eq!(decide(None, None, false, false), Ok(Some(Plan::noop())));

        let orphan = decide(None, Some(&ours), false, false).unwrap().unwrap();
        assert_eq!(orphan.ops(), ["delete"]);
        assert_eq!(
            orphan.actions[0].write,
            Write::Delete {
                uid: "h-1".into(),
                grace_seconds: None
            }
        );
        assert_eq!(orphan.requeue_after, None);

        let replaced = decide(Some(&v), Some(&stale), false, true).unwrap().unwrap();
        assert_eq!(
            replaced.actions[0].write,
            Write::Delete {
                uid: "h-0".into(),
                grace_seconds: Some(0)
            },
            "the kind's grace for stale copies"
        );
        assert_eq!(replaced.requeue_after, Some(RECHECK));

        assert_eq!(
            decide(None, Some(&terminating), false, false),
            Ok(Some(Plan::noop())),
            "no second delete while terminating"
        );
        assert_eq!(
            decide(Some(&v), None, true, true),
            Ok(Some(Plan::wait(RECHECK))),
            "our create is on its way"
        );
        assert_eq!(decide(Some(&v), Some(&foreign), false, true), Err("foreign"));
        assert_eq!(
            decide(Some(&v), Some(&foreign), false, false),
            Ok(Some(Plan::noop())),
            "a foreign object whose name we do not need is left alone quietly"
        );
    }

    #[test]
    fn metadata_merge_keeps_host_additions_and_drops_virtual_deletions() {
        let mut v = meta("cm", "v-1");
        v.labels = Some([("app".to_string(), "web".to_string())].into());
        v.annotations = Some([("note".to_string(), "hi".to_string())].into());
        let mut h = host_of("v-1", "h-1");
        let (labels, annotations) =
            desired_metadata("vc", "ConfigMap", &v, &h, &BTreeMap::new(), &BTreeMap::new(), &[]);
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(markers::LABEL_MANAGED_BY).map(String::as_str),
            Some("vc")
        );
        assert_eq!(annotations.get("note").map(String::as_str), Some("hi"));

        // Apply it, then: the host gains a label from a host controller, the tenant drops "app".
        h.labels = Some(labels.clone());
        h.annotations = Some(annotations.clone());
        assert_eq!(
            metadata_patch(&h, &labels, &annotations),
            None,
            "resync is a no-op"
        );
        h.labels
            .as_mut()
            .expect("labels")
            .insert("host-added".into(), "1".into());
        v.labels = Some(BTreeMap::new());
        let (labels, annotations) =
            desired_metadata("vc", "ConfigMap", &v, &h, &BTreeMap::new(), &BTreeMap::new(), &[]);
        assert!(!labels.contains_key("app"));
        assert_eq!(labels.get("host-added").map(String::as_str), Some("1"));
        let patch = metadata_patch(&h, &labels, &annotations).expect("changed");
        assert_eq!(patch["labels"]["app"], Value::Null);
    }
}
