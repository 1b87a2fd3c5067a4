//! NetworkPolicies (optional, `--sync-networkpolicies`): copied to the host with every selector
//! translated so that a tenant policy can only ever select pods of the same vcluster.
//!
//! - `podSelector` (the policy's own pods and pod peers): tenant label keys as on host pods,
//!   plus `vnest.dev/managed-by=<vcluster>` and `vnest.dev/namespace=<virtual ns>`
//!   ([`namespace_pod_selector`], shared with PodDisruptionBudgets).
//! - `namespaceSelector` peers: all vcluster pods live in ONE host namespace, so a namespace
//!   selector becomes a pod selector on the per-namespace labels the syncer puts on every pod
//!   (`vnest.dev/ns-<hash>` = the virtual namespace's label) plus the vcluster marker.
//! - `ipBlock` peers and ports are copied, minus the `--networkpolicy-deny-cidrs` networks
//!   (the `isolated` component denies the private ranges): a peer inside one is dropped, a peer
//!   containing one gets it as an `except`. Policies only ever add what is allowed, so without
//!   this a tenant policy would reopen what the host's own policy closes.
//! - With deny networks, a rule with no peers ("everyone") becomes "this vcluster's pods and
//!   addresses outside the deny networks"; a rule whose peers were all dropped is dropped (an
//!   empty peer list would mean everyone).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::selectors::{namespace_pod_selector, translate_selector, vcluster_markers};
use crate::engine::TranslateCtx;
use crate::engine::standard::CopiedKind;
use crate::ipnet::IpCidr;
use crate::markers;

/// Flags of the NetworkPolicy kind.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkPolicyArgs {
    /// Copy virtual NetworkPolicies to the host (selectors confined to this vcluster).
    #[arg(long, env = "VNEST_SYNC_NETWORKPOLICIES")]
    pub sync_networkpolicies: bool,

    /// Networks a tenant policy may never open (comma-separated CIDRs): removed from its
    /// `ipBlock` peers, and "everyone" becomes this vcluster's pods plus addresses outside them.
    /// The `isolated` component sets the private ranges its host policy closes.
    #[arg(long, env = "VNEST_NETWORKPOLICY_DENY_CIDRS", value_delimiter = ',')]
    pub networkpolicy_deny_cidrs: Vec<IpCidr>,
}

pub struct NetworkPolicies {
    deny: Vec<IpCidr>,
}

/// `block` minus the `deny` networks: `None` when it lies inside one of them, else with every
/// deny network it contains added to its `except` list (pure).
fn clip_ip_block(block: &IPBlock, deny: &[IpCidr]) -> Option<IPBlock> {
    let Ok(cidr) = block.cidr.parse::<IpCidr>() else {
        // Not a network address: the host refuses it with a clear message, copied as an Event.
        return Some(block.clone());
    };
    if deny.iter().any(|d| d.covers(&cidr)) {
        return None;
    }
    let mut except = block.except.clone().unwrap_or_default();
    for d in deny.iter().filter(|d| cidr.covers(d)) {
        let d = d.to_string();
        if !except.contains(&d) {
            except.push(d);
        }
    }
    Some(IPBlock {
        cidr: block.cidr.clone(),
        except: (!except.is_empty()).then_some(except),
    })
}

/// "Everyone" for a tenant under deny networks: this vcluster's pods, and every address outside
/// the deny networks of each family that has one.
fn everyone_allowed(vc: &str, deny: &[IpCidr]) -> Vec<NetworkPolicyPeer> {
    let mut peers = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(vcluster_markers(vc, None)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }];
    for (all, v6) in [("0.0.0.0/0", false), ("::/0", true)] {
        if deny.iter().any(|d| d.is_ipv6() == v6) {
            let block = IPBlock {
                cidr: all.into(),
                except: None,
            };
            peers.extend(clip_ip_block(&block, deny).map(|b| NetworkPolicyPeer {
                ip_block: Some(b),
                ..NetworkPolicyPeer::default()
            }));
        }
    }
    peers
}

/// The host peers of one rule: `None` drops the rule (its peers were all denied).
fn translate_peers(
    vc: &str,
    ns: &str,
    peers: Option<Vec<NetworkPolicyPeer>>,
    deny: &[IpCidr],
) -> Option<Option<Vec<NetworkPolicyPeer>>> {
    if peers.as_ref().is_none_or(Vec::is_empty) {
        // "Everyone": kept as written unless deny networks narrow it.
        return Some(if deny.is_empty() {
            peers
        } else {
            Some(everyone_allowed(vc, deny))
        });
    }
    let peers = peers.unwrap_or_default();
    let host: Vec<NetworkPolicyPeer> = peers
        .iter()
        .filter_map(|p| match &p.ip_block {
            Some(block) => clip_ip_block(block, deny).map(|b| NetworkPolicyPeer {
                ip_block: Some(b),
                ..NetworkPolicyPeer::default()
            }),
            None => Some(translate_peer(vc, ns, p)),
        })
        .collect();
    (!host.is_empty()).then_some(Some(host))
}

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

/// The host spec for virtual policy `v` under the `deny` networks (pure).
pub fn host_spec(tc: &TranslateCtx, deny: &[IpCidr], v: &NetworkPolicy) -> NetworkPolicySpec {
    let ns = v.namespace().unwrap_or_default();
    let vc = tc.vcluster.as_str();
    let spec = v.spec.clone().unwrap_or_default();
    NetworkPolicySpec {
        pod_selector: Some(namespace_pod_selector(vc, &ns, spec.pod_selector.as_ref())),
        policy_types: spec.policy_types,
        ingress: spec.ingress.map(|rules| {
            rules
                .into_iter()
                .filter_map(|mut r| {
                    r.from = translate_peers(vc, &ns, r.from.take(), deny)?;
                    Some(r)
                })
                .collect()
        }),
        egress: spec.egress.map(|rules| {
            rules
                .into_iter()
                .filter_map(|mut r| {
                    r.to = translate_peers(vc, &ns, r.to.take(), deny)?;
                    Some(r)
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
        json!({ "spec": host_spec(tc, &self.deny, v) })
    }

    fn host_object(&self, tc: &TranslateCtx, meta: ObjectMeta, v: &NetworkPolicy) -> NetworkPolicy {
        NetworkPolicy {
            metadata: meta,
            spec: Some(host_spec(tc, &self.deny, v)),
        }
    }

    fn wanted(&self, _v: &NetworkPolicy) -> bool {
        true
    }
}

/// Declares the NetworkPolicy kind (only with `--sync-networkpolicies`).
pub fn register(reg: &mut crate::engine::registry::Registry, args: &NetworkPolicyArgs, workers: usize) {
    let kind = NetworkPolicies {
        deny: args.networkpolicy_deny_cidrs.clone(),
    };
    crate::engine::standard::register(reg, kind, workers);
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
        let s = host_spec(&tc(), &[], &v);
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

    fn private() -> Vec<IpCidr> {
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect()
    }

    fn egress_to(to: Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": to}, {"to": [{"podSelector": {}}]}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_tenant_cannot_open_a_denied_network() {
        // Inside a denied network: the peer goes, and with it the rule (never an empty list).
        let s = host_spec(
            &tc(),
            &private(),
            &egress_to(json!([{"ipBlock": {"cidr": "10.1.0.0/16"}}])),
        );
        let egress = s.egress.unwrap();
        assert_eq!(egress.len(), 1, "only the pod rule is left: {egress:?}");
        assert!(egress[0].to.as_ref().unwrap()[0].pod_selector.is_some());
        // Containing denied networks: they become exceptions, the tenant's own ones kept.
        let s = host_spec(
            &tc(),
            &private(),
            &egress_to(json!([{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["203.0.113.0/24"]}}])),
        );
        let block = s.egress.unwrap()[0].to.clone().unwrap()[0]
            .ip_block
            .clone()
            .unwrap();
        assert_eq!(
            block.except.unwrap(),
            ["203.0.113.0/24", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        );
        // Disjoint: unchanged.
        let s = host_spec(
            &tc(),
            &private(),
            &egress_to(json!([{"ipBlock": {"cidr": "198.51.100.0/24"}}])),
        );
        let block = s.egress.unwrap()[0].to.clone().unwrap()[0]
            .ip_block
            .clone()
            .unwrap();
        assert_eq!((block.cidr.as_str(), block.except), ("198.51.100.0/24", None));
    }

    #[test]
    fn everyone_means_this_vclusters_pods_and_the_outside_under_deny_networks() {
        let s = host_spec(&tc(), &private(), &egress_to(json!([])));
        let peers = s.egress.unwrap()[0].to.clone().unwrap();
        let pods = peers[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(
            pods.get(markers::LABEL_MANAGED_BY).map(String::as_str),
            Some("vc")
        );
        assert!(
            !pods.contains_key(markers::LABEL_NAMESPACE),
            "every namespace of the vcluster"
        );
        let block = peers[1].ip_block.clone().unwrap();
        assert_eq!(block.cidr, "0.0.0.0/0");
        assert_eq!(block.except.unwrap().len(), 3);
        assert_eq!(peers.len(), 2, "no IPv6 peer without an IPv6 deny network");
        // Without deny networks "everyone" stays as the tenant wrote it.
        let s = host_spec(&tc(), &[], &egress_to(json!([])));
        assert_eq!(s.egress.unwrap()[0].to, Some(vec![]));
    }
}
