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

use crate::markers;

/// How a patch body is interpreted by the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386 JSON merge patch.
    Merge,
    /// Kubernetes strategic merge patch (lists merged by their patch merge key).
    Strategic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostPatch {
    pub kind: PatchKind,
    pub body: Value,
}

/// The host write a reconcile decided on.
#[derive(Debug, Clone, PartialEq)]
pub enum HostAction<K> {
    Noop,
    /// Create (POST, never apply: an object that exists under our name and is not ours must
    /// make the create fail, not be taken over).
    Create(Box<K>),
    /// Patch the existing host object (which is ours).
    Patch(HostPatch),
    /// Delete the host object, with a UID precondition so a newer object of the same name is
    /// never hit.
    Delete {
        uid: String,
        grace_seconds: Option<i64>,
        reason: &'static str,
    },
}

impl<K> HostAction<K> {
    /// Bounded name for metrics and logs.
    pub fn op(&self) -> &'static str {
        match self {
            HostAction::Noop => "noop",
            HostAction::Create(_) => "create",
            HostAction::Patch(_) => "patch",
            HostAction::Delete { .. } => "delete",
        }
    }
}

/// A plan and when to look at the key again (e.g. after a stale copy was deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<K> {
    pub host: HostAction<K>,
    pub requeue_after: Option<Duration>,
}

impl<K> Plan<K> {
    pub fn noop() -> Self {
        Self {
            host: HostAction::Noop,
            requeue_after: None,
        }
    }
    pub fn host(host: HostAction<K>) -> Self {
        Self {
            host,
            requeue_after: None,
        }
    }
    pub fn then_requeue(mut self, after: Duration) -> Self {
        self.requeue_after = Some(after);
        self
    }
}

/// What the generic lifecycle rules need to know about a pair of objects.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub virtual_meta: Option<&'a ObjectMeta>,
    pub host_meta: Option<&'a ObjectMeta>,
}

/// Lifecycle steps every kind shares, before any kind-specific translation:
/// - host copy without a virtual object: delete it (the virtual object was deleted);
/// - host copy made from another virtual object of the same name (UID differs): delete it and
///   look again shortly (it will be recreated for the current object).
///
/// Returns `None` when the kind's own rules must decide (virtual object exists and the host
/// copy, if any, belongs to it).
pub fn lifecycle<K>(pair: Pair<'_>) -> Option<Plan<K>> {
    match (pair.virtual_meta, pair.host_meta) {
        (None, None) => Some(Plan::noop()),
        (None, Some(h)) => Some(delete_host(h, "virtual object deleted")),
        (Some(v), Some(h)) => {
            let source_uid = markers::source_of(h).map(|s| s.uid);
            if source_uid.as_deref() != v.uid.as_deref() {
                Some(
                    delete_host(h, "host copy belongs to an older virtual object")
                        .then_requeue(Duration::from_secs(1)),
                )
            } else {
                None
            }
        }
        (Some(_), None) => None,
    }
}

/// A delete of the host object with its UID as precondition (no-op plan while it is already
/// terminating: deleting again would only cost a request).
pub fn delete_host<K>(h: &ObjectMeta, reason: &'static str) -> Plan<K> {
    match (&h.uid, &h.deletion_timestamp) {
        (_, Some(_)) | (None, _) => Plan::noop(),
        (Some(uid), None) => Plan::host(HostAction::Delete {
            uid: uid.clone(),
            grace_seconds: None,
            reason,
        }),
    }
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
    let v_labels = virtual_meta.labels.as_ref().unwrap_or(&empty);
    let v_annotations = virtual_meta.annotations.as_ref().unwrap_or(&empty);
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

/// Merge patch for labels/annotations only: `None` when the host already has them.
pub fn metadata_patch(
    host_meta: &ObjectMeta,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<Value> {
    let empty = BTreeMap::new();
    let from = serde_json::json!({
        "labels": host_meta.labels.as_ref().unwrap_or(&empty),
        "annotations": host_meta.annotations.as_ref().unwrap_or(&empty),
    });
    let to = serde_json::json!({"labels": labels, "annotations": annotations});
    merge_diff(&from, &to)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn host_of(source_uid: &str, uid: &str) -> ObjectMeta {
        let mut h = meta("host-name", uid);
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

    #[test]
    fn lifecycle_rules() {
        let v = meta("cm", "v-1");
        let ours = host_of("v-1", "h-1");
        let stale = host_of("v-0", "h-0");
        let none: Option<Plan<()>> = lifecycle(Pair {
            virtual_meta: Some(&v),
            host_meta: Some(&ours),
        });
        assert!(none.is_none(), "kind decides when both exist and match");

        let orphan: Plan<()> = lifecycle(Pair {
            virtual_meta: None,
            host_meta: Some(&ours),
        })
        .expect("decided");
        assert_eq!(
            orphan.host,
            HostAction::Delete {
                uid: "h-1".into(),
                grace_seconds: None,
                reason: "virtual object deleted"
            }
        );

        let replaced: Plan<()> = lifecycle(Pair {
            virtual_meta: Some(&v),
            host_meta: Some(&stale),
        })
        .expect("decided");
        assert!(matches!(replaced.host, HostAction::Delete { ref uid, .. } if uid == "h-0"));
        assert_eq!(replaced.requeue_after, Some(Duration::from_secs(1)));

        let mut terminating = ours.clone();
        terminating.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        let again: Plan<()> = lifecycle(Pair {
            virtual_meta: None,
            host_meta: Some(&terminating),
        })
        .expect("decided");
        assert_eq!(again.host, HostAction::Noop, "no second delete while terminating");
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
