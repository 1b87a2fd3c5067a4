//! NetworkPolicies (optional, `--sync-networkpolicies`): copied to the host with every selector
//! translated so that a tenant policy can only ever select pods of the same vcluster.
//!
//! - `podSelector` (the policy's own pods and pod peers): tenant label keys as on host pods,
//!   plus `vnest.dev/managed-by=<vcluster>` and `vnest.dev/namespace=<virtual ns>`
//!   ([`namespace_pod_selector`], shared with PodDisruptionBudgets).
//! - `namespaceSelector` peers: all vcluster pods live in ONE host namespace, so a namespace
//!   selector becomes a pod selector on the per-namespace labels the syncer puts on every pod
//!   (`vnest.dev/ns-<hash>` = the virtual namespace's label) plus the vcluster marker.
//! - `ipBlock` peers and ports are copied.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::selectors::{namespace_pod_selector, translate_selector, vcluster_markers};
use crate::engine::TranslateCtx;
use crate::engine::standard::CopiedKind;
use crate::markers;

/// Flags of the NetworkPolicy kind.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkPolicyArgs {
    /// Copy virtual NetworkPolicies to the host (selectors confined to this vcluster).
    #[arg(long, env = "VNEST_SYNC_NETWORKPOLICIES")]
    pub sync_networkpolicies: bool,
}

pub struct NetworkPolicies;

/// One peer on the host: always a pod selector in the host namespace, never wider than this
/// vcluster's pods.
fn translate_peer(vc: &str, ns: &str, peer: &NetworkPolicyPeer) -> NetworkPolicyPeer {
    if peer.ip_block.is_some() {
        return NetworkPolicyPeer {
            ip_block: peer.ip_block.clone(),
            ..NetworkPolicyPeer::default()
        };
    }
    let selector = match (&peer.pod_selector, &peer.namespace_selector) {
        // Pods of the policy's own namespace.
        (pod, None) => namespace_pod_selector(vc, ns, pod.as_ref()),
        // Pods (all, or selected) of the selected namespaces.
        (pod, Some(nsel)) => {
            let pod_key = |k: &str| markers::host_label_key(vc, k);
            let mut s = translate_selector(pod.as_ref(), pod_key, &vcluster_markers(vc, None));
            let ns_part = translate_selector(
                Some(nsel),
                |k| markers::namespace_label_key(vc, k),
                &BTreeMap::new(),
            );
            s.match_labels
                .get_or_insert_with(BTreeMap::new)
                .extend(ns_part.match_labels.unwrap_or_default());
            if let Some(exprs) = ns_part.match_expressions {
                s.match_expressions.get_or_insert_with(Vec::new).extend(exprs);
            }
            s
        }
    };
    NetworkPolicyPeer {
        pod_selector: Some(selector),
        ..NetworkPolicyPeer::default()
    }
}

/// The host spec for virtual policy `v` (pure).
pub fn host_spec(tc: &TranslateCtx, v: &NetworkPolicy) -> NetworkPolicySpec {
    let ns = v.namespace().unwrap_or_default();
    let vc = tc.vcluster.as_str();
    let spec = v.spec.clone().unwrap_or_default();
    NetworkPolicySpec {
        pod_selector: Some(namespace_pod_selector(vc, &ns, spec.pod_selector.as_ref())),
        policy_types: spec.policy_types,
        ingress: spec.ingress.map(|rules| {
            rules
                .into_iter()
                .map(|mut r| {
                    r.from = r
                        .from
                        .map(|peers| peers.iter().map(|p| translate_peer(vc, &ns, p)).collect());
                    r
                })
                .collect()
        }),
        egress: spec.egress.map(|rules| {
            rules
                .into_iter()
                .map(|mut r| {
                    r.to =
                        r.to.map(|peers| peers.iter().map(|p| translate_peer(vc, &ns, p)).collect());
                    r
                })
                .collect()
        }),
    }
}

impl CopiedKind for NetworkPolicies {
    type K = NetworkPolicy;
    const KIND: &'static str = "NetworkPolicy";
    const NAME: &'static str = "networkpolicies";

    fn owned_fields(obj: &NetworkPolicy) -> Value {
        json!({ "spec": obj.spec })
    }

    fn desired_fields(&self, tc: &TranslateCtx, v: &NetworkPolicy) -> Value {
        json!({ "spec": host_spec(tc, v) })
    }

    fn host_object(&self, tc: &TranslateCtx, meta: ObjectMeta, v: &NetworkPolicy) -> NetworkPolicy {
        NetworkPolicy {
            metadata: meta,
            spec: Some(host_spec(tc, v)),
        }
    }

    fn wanted(&self, _v: &NetworkPolicy) -> bool {
        true
    }
}

/// Declares the NetworkPolicy kind (only with `--sync-networkpolicies`).
pub fn register(reg: &mut crate::engine::registry::Registry, workers: usize) {
    crate::engine::standard::register(reg, NetworkPolicies, workers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc() -> TranslateCtx {
        TranslateCtx::test()
    }

    #[test]
    fn every_selector_is_confined_to_the_vcluster() {
        let v: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"app": "web"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "a"}}},
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "mon"}}}
                ]}],
                "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]
            }
        }))
        .unwrap();
        let s = host_spec(&tc(), &v);
        let own = s.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(own.get(markers::LABEL_MANAGED_BY).map(String::as_str), Some("vc"));
        assert_eq!(
            own.get(markers::LABEL_NAMESPACE).map(String::as_str),
            Some("shop")
        );
        let from = s.ingress.unwrap()[0].from.clone().unwrap();
        for peer in &from {
            assert!(
                peer.namespace_selector.is_none(),
                "host peers never select other namespaces"
            );
            let l = peer.pod_selector.clone().unwrap().match_labels.unwrap();
            assert_eq!(l.get(markers::LABEL_MANAGED_BY).map(String::as_str), Some("vc"));
        }
        let same_ns = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(same_ns.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            same_ns.get(markers::LABEL_NAMESPACE).map(String::as_str),
            Some("shop")
        );
        let by_ns = from[1].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(
            by_ns
                .get(&markers::namespace_label_key("vc", "team"))
                .map(String::as_str),
            Some("a")
        );
        assert!(!by_ns.contains_key(markers::LABEL_NAMESPACE));
        let any_ns = from[2].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(any_ns.get("role").map(String::as_str), Some("mon"));
        let egress = s.egress.unwrap();
        assert_eq!(
            egress[0].to.clone().unwrap()[0].ip_block.clone().unwrap().cidr,
            "192.0.2.0/24"
        );
    }
}
