//! NetworkPolicies (the local world runs the syncer with --sync-networkpolicies): copied with
//! every selector confined to this vcluster; updates and deletes follow.

use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vnest::markers;
use vnest_e2e::{Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn policies_are_copied_confined_to_the_vcluster() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "netpol").await?;
    let api: Api<NetworkPolicy> = Api::namespaced(w.virt.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "allow-web"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                           {"namespaceSelector": {}}]}]}
        }))?,
    )
    .await?;
    let hapi: Api<NetworkPolicy> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "allow-web");
    let h = wait_until("the host policy", WAIT, || async {
        Ok(hapi.get_opt(&hname).await?)
    })
    .await?;
    let spec = h.spec.clone().unwrap_or_default();
    let own = spec.pod_selector.and_then(|s| s.match_labels).unwrap_or_default();
    assert_eq!(own.get("app").map(String::as_str), Some("db"));
    assert_eq!(own.get(markers::LABEL_NAMESPACE), Some(&ns.name));
    assert_eq!(own.get(markers::LABEL_MANAGED_BY), Some(&w.vcluster));
    for peer in spec.ingress.unwrap_or_default()[0]
        .from
        .clone()
        .unwrap_or_default()
    {
        assert!(
            peer.namespace_selector.is_none(),
            "a host peer must never select other namespaces"
        );
        let l = peer.pod_selector.and_then(|s| s.match_labels).unwrap_or_default();
        assert_eq!(
            l.get(markers::LABEL_MANAGED_BY),
            Some(&w.vcluster),
            "every peer stays inside the vcluster"
        );
    }
    // Update: the policy now selects other pods; the host copy follows.
    api.patch(
        "allow-web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"podSelector": {"matchLabels": {"app": "cache"}}}})),
    )
    .await?;
    wait_until("the host policy updated", WAIT, || async {
        let s = hapi.get(&hname).await?.spec.unwrap_or_default();
        let l = s.pod_selector.and_then(|s| s.match_labels).unwrap_or_default();
        Ok((l.get("app").map(String::as_str) == Some("cache")).then_some(()))
    })
    .await?;
    // A resync of an unchanged policy writes nothing.
    let before = w
        .metric("vnest_syncer_host_writes_total", &[("kind", "networkpolicies")])
        .await?;
    let reconciled = w
        .metric("vnest_syncer_reconciles_total", &[("kind", "networkpolicies")])
        .await?;
    api.patch(
        "allow-web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
    )
    .await?;
    wait_until("the annotation on the host", WAIT, || async {
        Ok(hapi
            .get(&hname)
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("touch")
            .then_some(()))
    })
    .await?;
    // The worker counts the reconcile after it returns, a moment after its host write shows.
    wait_until("the policy reconcile counted", WAIT, || async {
        Ok((w
            .metric("vnest_syncer_reconciles_total", &[("kind", "networkpolicies")])
            .await?
            > reconciled)
            .then_some(()))
    })
    .await?;
    assert_eq!(
        w.metric("vnest_syncer_host_writes_total", &[("kind", "networkpolicies")])
            .await?,
        before + 1.0,
        "exactly one write for one change (no patch loop on defaulted fields)"
    );
    api.delete("allow-web", &DeleteParams::default()).await?;
    wait_until("the host policy gone", WAIT, || async {
        Ok(hapi.get_opt(&hname).await?.is_none().then_some(()))
    })
    .await?;
    ns.delete().await
}

/// The local world runs the syncer with the private ranges as `--networkpolicy-deny-cidrs` (as
/// the isolated component does): no tenant policy can open them again.
#[tokio::test]
async fn a_tenant_policy_cannot_reopen_denied_networks() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "netpol-deny").await?;
    let api: Api<NetworkPolicy> = Api::namespaced(w.virt.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "wide-open"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}]},
                                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]},
                                {}]}
        }))?,
    )
    .await?;
    let hapi: Api<NetworkPolicy> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "wide-open");
    let h = wait_until("the host policy", WAIT, || async {
        Ok(hapi.get_opt(&hname).await?)
    })
    .await?;
    let egress = h.spec.unwrap_or_default().egress.unwrap_or_default();
    assert_eq!(egress.len(), 2, "the rule inside 10.0.0.0/8 is gone: {egress:?}");
    let everything = egress[0].to.clone().unwrap_or_default()[0]
        .ip_block
        .clone()
        .expect("an ipBlock peer");
    assert_eq!(everything.cidr, "0.0.0.0/0");
    let except = everything.except.unwrap_or_default();
    assert!(
        except.iter().any(|c| c == "10.0.0.0/8") && except.iter().any(|c| c == "192.168.0.0/16"),
        "{except:?}"
    );
    let everyone = egress[1].to.clone().unwrap_or_default();
    assert!(!everyone.is_empty(), "'everyone' is never copied as everyone");
    let pods = everyone[0]
        .pod_selector
        .clone()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert_eq!(pods.get(markers::LABEL_MANAGED_BY), Some(&w.vcluster));
    assert!(everyone[1..].iter().all(|p| p.ip_block.as_ref().is_some_and(|b| {
        b.except
            .as_ref()
            .is_some_and(|e| e.iter().any(|c| c == "10.0.0.0/8"))
    })));
    ns.delete().await
}
