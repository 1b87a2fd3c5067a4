//! Host pod metadata: our markers, the virtual labels and annotations, and the annotations that
//! downward-API fieldRefs to the virtual identity read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::PodInputs;
use crate::engine::plan;
use crate::markers::{ANNOTATION_OWNER_REFERENCES, ANNOTATION_SERVICE_ACCOUNT, ANNOTATION_VIRTUAL_LABELS};
use crate::{markers, naming};

/// ServiceAccount of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Kind recorded in the host pod's markers.
const KIND: &str = "Pod";

/// Desired host labels and annotations against the current host metadata `host_meta`
/// ([`plan::desired_metadata`] with the pod extras), with what only we write kept exact: stale
/// namespace-label labels (the namespace lost a label) and a stale owner-references annotation
/// (the virtual pod lost its owners) are dropped, although the generic merge keeps keys in our
/// domain.
pub(super) fn desired_meta(
    input: &PodInputs,
    vpod: &Pod,
    host_meta: &ObjectMeta,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let vcluster = &input.ctx.vcluster;
    let extra_labels: BTreeMap<String, String> = input
        .namespace_labels
        .iter()
        .map(|(key, value)| {
            (
                markers::namespace_label_key(vcluster, key),
                naming::safe_label_value(value),
            )
        })
        .collect();
    let extra_annotations = pod_annotations(vpod);
    let (mut labels, mut annotations) = plan::desired_metadata(
        vcluster,
        KIND,
        &vpod.metadata,
        host_meta,
        &extra_labels,
        &extra_annotations,
        &[],
    );
    labels
        .retain(|key, _| !key.starts_with(markers::LABEL_NS_LABEL_PREFIX) || extra_labels.contains_key(key));
    if !extra_annotations.contains_key(ANNOTATION_OWNER_REFERENCES) {
        annotations.remove(ANNOTATION_OWNER_REFERENCES);
    }
    (labels, annotations)
}

/// The pod-specific host annotations: virtual labels (downward-API format), virtual
/// ServiceAccount name, virtual ownerReferences (only when there are any).
fn pod_annotations(vpod: &Pod) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    let labels = vpod.metadata.labels.clone().unwrap_or_default();
    annotations.insert(ANNOTATION_VIRTUAL_LABELS.to_owned(), format_downward_map(&labels));
    let spec = vpod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.as_deref().or(s.service_account.as_deref()))
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    annotations.insert(ANNOTATION_SERVICE_ACCOUNT.to_owned(), service_account.to_owned());
    if let Some(owners) = vpod.metadata.owner_references.as_ref().filter(|o| !o.is_empty())
        && let Ok(json) = serde_json::to_string(owners)
    {
        annotations.insert(ANNOTATION_OWNER_REFERENCES.to_owned(), json);
    }
    annotations
}

/// The kubelet's downward-API rendering of a map: sorted lines `key="<Go-quoted value>"` joined
/// by `\n` (no trailing newline).
fn format_downward_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` quoted like Go's `%q` (strconv.Quote) for the characters label values can hold and the
/// usual escapes.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Rewrites a downward-API fieldRef to the host pod's copy of the virtual value.
pub(super) fn rewrite_field_ref(vcluster: &str, field_ref: Option<&mut ObjectFieldSelector>) {
    if let Some(field_ref) = field_ref {
        field_ref.field_path = host_field_path(vcluster, &field_ref.field_path);
    }
}

/// Host field path of the virtual field path `path`:
/// - `metadata.name` / `metadata.namespace` / `metadata.uid` -> our `object-*` annotations;
/// - `spec.serviceAccountName` -> [`ANNOTATION_SERVICE_ACCOUNT`];
/// - `metadata.labels` -> [`ANNOTATION_VIRTUAL_LABELS`];
/// - `metadata.labels['K']` -> `metadata.labels['<markers::host_label_key(vc, K)>']`;
/// - anything else unchanged.
fn host_field_path(vcluster: &str, path: &str) -> String {
    let annotation = |key: &str| format!("metadata.annotations['{key}']");
    match path {
        "metadata.name" => annotation(markers::ANNOTATION_OBJECT_NAME),
        "metadata.namespace" => annotation(markers::ANNOTATION_OBJECT_NAMESPACE),
        "metadata.uid" => annotation(markers::ANNOTATION_OBJECT_UID),
        "spec.serviceAccountName" => annotation(ANNOTATION_SERVICE_ACCOUNT),
        "metadata.labels" => annotation(ANNOTATION_VIRTUAL_LABELS),
        _ => match path
            .strip_prefix("metadata.labels['")
            .and_then(|rest| rest.strip_suffix("']"))
        {
            Some(key) => format!("metadata.labels['{}']", markers::host_label_key(vcluster, key)),
            None => path.to_owned(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use rstest::rstest;
    use serde_json::{Value, json};

    #[test]
    fn host_pod_metadata() {
        let mut v = vpod_with(json!({"metadata": {
            "labels": {"vnest.dev/forged": "x", "tier": "front"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid", "controller": true}],
            "generateName": "web-",
            "finalizers": ["example.com/f"],
        }}));
        v.metadata.creation_timestamp = None;
        let h = translate(&v);
        let meta = &h.metadata;
        assert_eq!(meta.name.as_deref(), Some(hn("web-0").as_str()));
        assert_eq!(meta.namespace.as_deref(), Some(HOST_NS));
        assert_eq!(meta.owner_references, Some(vec![ctx().owner]));
        assert_eq!(meta.uid, None);
        assert_eq!(meta.resource_version, None);
        assert_eq!(meta.generate_name, None);
        assert_eq!(meta.finalizers, None);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.creation_timestamp, None);
        assert_eq!(h.status, None);

        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[markers::LABEL_MANAGED_BY], VC);
        assert_eq!(labels[markers::LABEL_NAMESPACE], NS);
        assert_eq!(labels[&markers::host_label_key(VC, "vnest.dev/forged")], "x");
        assert!(!labels.contains_key("vnest.dev/forged"));
        assert_eq!(
            labels[&markers::namespace_label_key(VC, "kubernetes.io/metadata.name")],
            NS
        );
        assert_eq!(
            labels[&markers::namespace_label_key(VC, "team")],
            naming::safe_label_value("a/b")
        );

        let annotations = meta.annotations.clone().unwrap();
        assert_eq!(annotations["note"], "x");
        assert_eq!(annotations[markers::ANNOTATION_OBJECT_NAME], "web-0");
        assert_eq!(annotations[markers::ANNOTATION_OBJECT_NAMESPACE], NS);
        assert_eq!(annotations[markers::ANNOTATION_OBJECT_UID], "uid-1");
        assert_eq!(
            annotations[ANNOTATION_VIRTUAL_LABELS],
            "app=\"web\"\ntier=\"front\"\nvnest.dev/forged=\"x\""
        );
        assert_eq!(annotations[ANNOTATION_SERVICE_ACCOUNT], "default");
        let owners: Value = serde_json::from_str(&annotations[ANNOTATION_OWNER_REFERENCES]).unwrap();
        assert_eq!(owners[0]["name"], "web-abc");
        assert_eq!(owners[0]["controller"], true);

        // The host copy is recognised as ours.
        assert!(markers::is_managed(meta, VC, "Pod", HOST_NS, |s| {
            naming::host_name(VC, s.namespace.as_deref().unwrap_or_default(), &s.name)
        }));
    }

    #[test]
    fn host_pod_annotations_without_owners_and_with_service_account() {
        let h = translate(&vpod_spec(json!({"serviceAccountName": "builder"})));
        let annotations = h.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(ANNOTATION_OWNER_REFERENCES));
        assert_eq!(annotations[ANNOTATION_SERVICE_ACCOUNT], "builder");
    }

    #[rstest]
    #[case::plain("web", "\"web\"")]
    #[case::empty("", "\"\"")]
    #[case::quote_and_backslash("a\"b\\c", "\"a\\\"b\\\\c\"")]
    #[case::newline_tab("a\nb\tc", "\"a\\nb\\tc\"")]
    #[case::control("a\u{1}", "\"a\\x01\"")]
    #[case::unicode("é", "\"é\"")]
    fn go_quote_examples(#[case] input: &str, #[case] want: &str) {
        assert_eq!(go_quote(input), want);
    }

    #[rstest]
    #[case::name("metadata.name", "metadata.annotations['vnest.dev/object-name']")]
    #[case::namespace("metadata.namespace", "metadata.annotations['vnest.dev/object-namespace']")]
    #[case::uid("metadata.uid", "metadata.annotations['vnest.dev/object-uid']")]
    #[case::service_account(
        "spec.serviceAccountName",
        "metadata.annotations['vnest.dev/service-account-name']"
    )]
    #[case::all_labels("metadata.labels", "metadata.annotations['vnest.dev/labels']")]
    #[case::one_label("metadata.labels['app']", "metadata.labels['app']")]
    #[case::domain_label("metadata.labels['example.com/tier']", "metadata.labels['example.com/tier']")]
    #[case::annotation("metadata.annotations['note']", "metadata.annotations['note']")]
    #[case::node_name("spec.nodeName", "spec.nodeName")]
    #[case::pod_ip("status.podIP", "status.podIP")]
    fn field_paths(#[case] path: &str, #[case] want: &str) {
        assert_eq!(host_field_path(VC, path), want);
    }

    #[test]
    fn reserved_label_field_path_uses_the_hashed_key() {
        assert_eq!(
            host_field_path(VC, "metadata.labels['vnest.dev/x']"),
            format!(
                "metadata.labels['{}']",
                markers::host_label_key(VC, "vnest.dev/x")
            )
        );
    }

    #[test]
    fn field_refs_are_rewritten_in_env_and_downward_volumes() {
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        let v = vpod_spec(json!({
            "containers": [{"name": "app", "image": "nginx:1", "env": [
                {"name": "POD", "valueFrom": field("metadata.name")},
                {"name": "IP", "valueFrom": field("status.podIP")},
            ]}],
            "volumes": [{"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            ]}}],
        }));
        let spec = hspec(&v);
        let env = &spec["containers"][0]["env"];
        assert_eq!(
            env[8]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/object-name']"
        );
        assert_eq!(env[9]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
        let items = &spec["volumes"][0]["downwardAPI"]["items"];
        assert_eq!(
            items[0]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/labels']"
        );
        assert_eq!(
            items[1]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/object-uid']"
        );
    }
}
