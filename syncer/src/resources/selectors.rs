//! Tenant label selectors as host selectors (pure), shared by the kinds whose objects select
//! pods: NetworkPolicies and PodDisruptionBudgets.
//!
//! Every pod of a vcluster lives in ONE host namespace, so a host selector must carry the
//! confinement a namespace gave it on the virtual side: the tenant's keys as they appear on host
//! pods ([`markers::host_label_key`]: keys in our domain are hashed, so a tenant can never
//! match or override a marker), plus `vnest.dev/managed-by=<vcluster>` and, for selectors of one
//! virtual namespace, `vnest.dev/namespace=<ns>`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::{markers, naming};

/// Translates selector `sel` (absent: the empty selector) over tenant keys with `key`, and adds
/// the `extra` matchLabels (they win over a tenant entry of the same key).
pub fn translate_selector(
    sel: Option<&LabelSelector>,
    key: impl Fn(&str) -> String,
    extra: &BTreeMap<String, String>,
) -> LabelSelector {
    let sel = sel.cloned().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = sel
        .match_labels
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (key(&k), v))
        .collect();
    labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    let expressions: Vec<LabelSelectorRequirement> = sel
        .match_expressions
        .unwrap_or_default()
        .into_iter()
        .map(|e| LabelSelectorRequirement {
            key: key(&e.key),
            ..e
        })
        .collect();
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    }
}

/// The labels every host pod of vcluster `vcluster` carries, and of virtual namespace
/// `namespace` when given: `vnest.dev/managed-by` (and `vnest.dev/namespace`).
pub fn vcluster_markers(vcluster: &str, namespace: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([(
        markers::LABEL_MANAGED_BY.to_owned(),
        naming::safe_label_value(vcluster),
    )]);
    if let Some(ns) = namespace {
        m.insert(markers::LABEL_NAMESPACE.to_owned(), naming::safe_label_value(ns));
    }
    m
}

/// A pod selector of virtual namespace `namespace` as a host selector that only ever selects
/// host pods of vcluster `vcluster` and that namespace (absent `sel`: all of them).
pub fn namespace_pod_selector(vcluster: &str, namespace: &str, sel: Option<&LabelSelector>) -> LabelSelector {
    translate_selector(
        sel,
        |k| markers::host_label_key(vcluster, k),
        &vcluster_markers(vcluster, Some(namespace)),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).expect("a LabelSelector")
    }

    #[test]
    fn namespace_pod_selectors_are_confined_to_the_vcluster_and_namespace() {
        let forged = markers::host_label_key("vc", "vnest.dev/managed-by");
        let cases = [
            (
                "absent: every pod of the namespace",
                None,
                json!({"matchLabels": {"vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"}}),
            ),
            (
                "empty: every pod of the namespace",
                Some(json!({})),
                json!({"matchLabels": {"vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"}}),
            ),
            (
                "tenant labels kept, markers added",
                Some(json!({"matchLabels": {"app": "web"}})),
                json!({"matchLabels": {"app": "web", "vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"}}),
            ),
            (
                "expressions keep operator and values",
                Some(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]})),
                json!({"matchLabels": {"vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"},
                       "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}),
            ),
            (
                "a forged marker is a hashed tenant key, the real marker stays",
                Some(
                    json!({"matchLabels": {"vnest.dev/managed-by": "other", "vnest.dev/namespace": "kube-system"}}),
                ),
                json!({"matchLabels": {
                    forged.clone(): "other",
                    markers::host_label_key("vc", "vnest.dev/namespace"): "kube-system",
                    "vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"}}),
            ),
            (
                "a forged marker in an expression is hashed too",
                Some(json!({"matchExpressions": [{"key": "vnest.dev/managed-by", "operator": "Exists"}]})),
                json!({"matchLabels": {"vnest.dev/managed-by": "vc", "vnest.dev/namespace": "shop"},
                       "matchExpressions": [{"key": forged, "operator": "Exists"}]}),
            ),
        ];
        for (name, input, want) in cases {
            let input = input.map(sel);
            let got = namespace_pod_selector("vc", "shop", input.as_ref());
            assert_eq!(got, sel(want), "{name}");
        }
    }

    #[test]
    fn other_key_maps_and_markers() {
        let got = translate_selector(
            Some(&sel(json!({"matchLabels": {"team": "a"}}))),
            |k| format!("ns-{k}"),
            &vcluster_markers("vc", None),
        );
        assert_eq!(
            got,
            sel(json!({"matchLabels": {"ns-team": "a", "vnest.dev/managed-by": "vc"}}))
        );
        assert_eq!(
            translate_selector(None, str::to_owned, &BTreeMap::new()),
            sel(json!({"matchLabels": {}})),
            "no markers: an empty selector stays empty"
        );
    }
}
