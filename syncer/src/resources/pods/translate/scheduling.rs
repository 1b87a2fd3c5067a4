//! Scheduling selectors: pod (anti-)affinity and topology spread constraints only ever match
//! pods of the same vcluster (and the intended virtual namespaces).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::{markers, naming};

/// Pod (anti-)affinity terms, required and preferred; node affinity is untouched.
pub(super) fn translate_affinity(vcluster: &str, namespace: &str, affinity: &mut Affinity) {
    let terms = |required: Option<&mut Vec<PodAffinityTerm>>,
                 preferred: Option<&mut Vec<WeightedPodAffinityTerm>>| {
        for term in required.into_iter().flatten() {
            translate_affinity_term(vcluster, namespace, term);
        }
        for weighted in preferred.into_iter().flatten() {
            translate_affinity_term(vcluster, namespace, &mut weighted.pod_affinity_term);
        }
    };
    if let Some(pod_affinity) = affinity.pod_affinity.as_mut() {
        terms(
            pod_affinity
                .required_during_scheduling_ignored_during_execution
                .as_mut(),
            pod_affinity
                .preferred_during_scheduling_ignored_during_execution
                .as_mut(),
        );
    }
    if let Some(anti) = affinity.pod_anti_affinity.as_mut() {
        terms(
            anti.required_during_scheduling_ignored_during_execution.as_mut(),
            anti.preferred_during_scheduling_ignored_during_execution.as_mut(),
        );
    }
}

/// One pod (anti-)affinity term. The host term has no `namespaces` / `namespaceSelector` (all
/// pods of the vcluster live in the host namespace); the namespace scope moves into the label
/// selector instead:
/// - neither set ("the pod's own namespace"): `vnest.dev/namespace=<pod ns>`;
/// - `namespaces` set: `vnest.dev/namespace In [those]`, unless an EMPTY `namespaceSelector`
///   also selects all namespaces (then no namespace restriction). With both `namespaces` and a
///   non-empty `namespaceSelector` (a union a single selector cannot express) only `namespaces`
///   is used;
/// - only `namespaceSelector`: empty = all namespaces (no restriction); otherwise its terms on
///   the namespace labels the host pods carry ([`markers::namespace_label_key`]).
///
/// The label selector keys go through [`markers::host_label_key`], and
/// `vnest.dev/managed-by=<vc>` is always added; a nil selector (matches nothing) stays nil.
/// `matchLabelKeys` / `mismatchLabelKeys` are label keys of the pod itself: translated too.
fn translate_affinity_term(vcluster: &str, namespace: &str, term: &mut PodAffinityTerm) {
    let namespaces = term.namespaces.take().filter(|list| !list.is_empty());
    let namespace_selector = term.namespace_selector.take();
    translate_keys(vcluster, term.match_label_keys.as_mut());
    translate_keys(vcluster, term.mismatch_label_keys.as_mut());
    let Some(selector) = term.label_selector.as_mut() else {
        return;
    };
    *selector = host_selector(vcluster, selector);
    let all_namespaces = namespace_selector.as_ref().is_some_and(is_empty_selector);
    match (namespaces, namespace_selector) {
        _ if all_namespaces => {}
        (Some(list), _) => push_expression(
            selector,
            markers::LABEL_NAMESPACE,
            "In",
            list.iter().map(|ns| naming::safe_label_value(ns)).collect(),
        ),
        (None, Some(ns_selector)) => merge_namespace_selector(vcluster, selector, &ns_selector),
        (None, None) => insert_label(
            selector,
            markers::LABEL_NAMESPACE,
            &naming::safe_label_value(namespace),
        ),
    }
}

/// Topology spread: label selector translated, scoped to the pod's vcluster and virtual
/// namespace (a nil selector stays nil); `matchLabelKeys` translated.
pub(super) fn translate_spread_constraint(
    vcluster: &str,
    namespace: &str,
    constraint: &mut TopologySpreadConstraint,
) {
    translate_keys(vcluster, constraint.match_label_keys.as_mut());
    if let Some(selector) = constraint.label_selector.as_mut() {
        *selector = host_selector(vcluster, selector);
        insert_label(
            selector,
            markers::LABEL_NAMESPACE,
            &naming::safe_label_value(namespace),
        );
    }
}

/// Label keys of the pod itself, as they are on the host pod.
fn translate_keys(vcluster: &str, keys: Option<&mut Vec<String>>) {
    for key in keys.into_iter().flatten() {
        *key = markers::host_label_key(vcluster, key);
    }
}

/// A tenant pod label selector as a host selector: keys through [`markers::host_label_key`],
/// plus `vnest.dev/managed-by=<vc>`.
fn host_selector(vcluster: &str, selector: &LabelSelector) -> LabelSelector {
    let mut host = LabelSelector {
        match_labels: selector
            .match_labels
            .as_ref()
            .map(|labels| markers::to_host_labels(vcluster, labels)),
        match_expressions: selector.match_expressions.as_ref().map(|expressions| {
            expressions
                .iter()
                .map(|e| LabelSelectorRequirement {
                    key: markers::host_label_key(vcluster, &e.key),
                    ..e.clone()
                })
                .collect()
        }),
    };
    insert_label(
        &mut host,
        markers::LABEL_MANAGED_BY,
        &naming::safe_label_value(vcluster),
    );
    host
}

/// Adds a virtual namespaceSelector, on the namespace labels host pods carry, to `selector`.
fn merge_namespace_selector(vcluster: &str, selector: &mut LabelSelector, ns_selector: &LabelSelector) {
    for (key, value) in ns_selector.match_labels.iter().flatten() {
        insert_label(
            selector,
            &markers::namespace_label_key(vcluster, key),
            &naming::safe_label_value(value),
        );
    }
    for expression in ns_selector.match_expressions.iter().flatten() {
        let values = expression
            .values
            .as_ref()
            .map(|values| values.iter().map(|v| naming::safe_label_value(v)).collect());
        selector
            .match_expressions
            .get_or_insert_with(Vec::new)
            .push(LabelSelectorRequirement {
                key: markers::namespace_label_key(vcluster, &expression.key),
                operator: expression.operator.clone(),
                values,
            });
    }
}

fn is_empty_selector(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn insert_label(selector: &mut LabelSelector, key: &str, value: &str) {
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

fn push_expression(selector: &mut LabelSelector, key: &str, operator: &str, values: Vec<String>) {
    selector
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: Some(values),
        });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::super::testutil::*;
    use crate::markers;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn affinity_pod(term: Value) -> Pod {
        vpod_spec(json!({"affinity": {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term.clone()]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term}]},
        }}))
    }

    fn host_terms(term: Value) -> (Value, Value) {
        let spec = hspec(&affinity_pod(term));
        let affinity = &spec["affinity"];
        (
            affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0].clone(),
            affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"].clone(),
        )
    }

    #[test]
    fn affinity_term_in_own_namespace() {
        let reserved = markers::host_label_key(VC, "vnest.dev/role");
        let (required, preferred) = host_terms(json!({
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {
                "matchLabels": {"app": "web", "vnest.dev/role": "db"},
                "matchExpressions": [{"key": "vnest.dev/role", "operator": "Exists"}],
            },
            "matchLabelKeys": ["pod-template-hash", "vnest.dev/role"],
        }));
        let want = json!({
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {
                "matchLabels": {"app": "web", reserved.clone(): "db", "vnest.dev/managed-by": VC, "vnest.dev/namespace": NS},
                "matchExpressions": [{"key": reserved.clone(), "operator": "Exists"}],
            },
            "matchLabelKeys": ["pod-template-hash", reserved],
        });
        assert_eq!(required, want);
        assert_eq!(preferred, want);
    }

    #[test]
    fn affinity_term_with_namespaces() {
        let (term, _) = host_terms(json!({
            "topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "db"}},
            "namespaces": ["data", "cache"],
        }));
        assert_eq!(
            term,
            json!({
                "topologyKey": "zone",
                "labelSelector": {
                    "matchLabels": {"app": "db", "vnest.dev/managed-by": VC},
                    "matchExpressions": [{"key": "vnest.dev/namespace", "operator": "In", "values": ["data", "cache"]}],
                },
            })
        );
    }

    #[test]
    fn affinity_term_with_namespace_selector() {
        let (term, _) = host_terms(json!({
            "topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "db"}},
            "namespaceSelector": {
                "matchLabels": {"team": "a"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}],
            },
        }));
        assert_eq!(
            term,
            json!({
                "topologyKey": "zone",
                "labelSelector": {
                    "matchLabels": {
                        "app": "db",
                        "vnest.dev/managed-by": VC,
                        markers::namespace_label_key(VC, "team"): "a",
                    },
                    "matchExpressions": [
                        {"key": markers::namespace_label_key(VC, "env"), "operator": "In", "values": ["prod"]},
                    ],
                },
            })
        );
    }

    #[rstest]
    #[case::empty_selector_alone(json!({"namespaceSelector": {}}))]
    #[case::empty_selector_with_namespaces(json!({"namespaceSelector": {}, "namespaces": ["x"]}))]
    fn affinity_term_across_all_namespaces(#[case] scope: Value) {
        let mut term = json!({"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}});
        merge(&mut term, scope);
        let (host, _) = host_terms(term);
        assert_eq!(
            host,
            json!({"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db", "vnest.dev/managed-by": VC}}})
        );
    }

    #[test]
    fn affinity_term_without_selector_matches_nothing_still() {
        let (term, _) = host_terms(json!({"topologyKey": "zone", "namespaces": ["x"]}));
        assert_eq!(term, json!({"topologyKey": "zone"}));
    }

    #[test]
    fn topology_spread_constraints_are_scoped() {
        let v = vpod_spec(json!({"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"]},
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"},
        ]}));
        let spec = hspec(&v);
        assert_eq!(
            spec["topologySpreadConstraints"][0]["labelSelector"],
            json!({"matchLabels": {"app": "web", "vnest.dev/managed-by": VC, "vnest.dev/namespace": NS}})
        );
        assert_eq!(
            spec["topologySpreadConstraints"][0]["matchLabelKeys"],
            json!(["pod-template-hash"])
        );
        assert!(
            spec["topologySpreadConstraints"][1]
                .get("labelSelector")
                .is_none()
        );
    }
}
