//! Services through vnest: the same ClusterIP on both sides (no recreate when the IP is free on
//! the host), node ports back, selectors confined to one virtual namespace, default/kubernetes
//! pointing at the vcluster, deletion both ways, and the recreate fallback on a real conflict.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use vnest_e2e::{Result, TestNs, World, endpoint_ips, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn service(name: &str, selector: &str, type_: &str) -> Result<Service> {
    obj(json!({"metadata": {"name": name},
               "spec": {"type": type_, "selector": {"app": selector}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
}

async fn host_copy(w: &World, ns: &str, name: &str) -> Result<Service> {
    let api: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let host_name = w.host_name(ns, name);
    wait_until(&format!("host copy of {ns}/{name}"), WAIT, || async {
        api.get_opt(&host_name).await.map_err(Into::into)
    })
    .await
}

fn ip(s: &Service) -> Option<String> {
    s.spec.as_ref().and_then(|s| s.cluster_ip.clone())
}

#[tokio::test]
async fn a_burst_of_services_keeps_the_same_cluster_ips_without_recreates() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "svc-burst").await?;
    let api: Api<Service> = Api::namespaced(w.virt.clone(), &ns.name);
    let n = 30;
    let mut created = Vec::new();
    for i in 0..n {
        created.push(
            api.create(
                &PostParams::default(),
                &service(&format!("s{i}"), "x", "ClusterIP")?,
            )
            .await?,
        );
    }
    for c in &created {
        let name = c.name_any();
        let h = host_copy(&w, &ns.name, &name).await?;
        let v = api.get(&name).await?;
        assert_eq!(
            ip(&h),
            ip(c),
            "{name}: the host did not get the virtual ClusterIP"
        );
        assert_eq!(v.uid(), c.uid(), "{name} was recreated");
    }
    ns.delete().await
}

#[tokio::test]
async fn node_ports_flow_back_and_deletes_go_both_ways() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "svc-np").await?;
    let api: Api<Service> = Api::namespaced(w.virt.clone(), &ns.name);
    api.create(&PostParams::default(), &service("np", "web", "NodePort")?)
        .await?;
    let h = host_copy(&w, &ns.name, "np").await?;
    let host_port = h
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port);
    assert!(host_port.is_some());
    wait_until("the virtual node port equal to the host's", WAIT, || async {
        let v = api.get("np").await?;
        let vp = v
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p[0].node_port);
        Ok((vp == host_port && ip(&v) == ip(&h)).then_some(()))
    })
    .await?;

    // Deleted out-of-band on the host: recreated, with the same ClusterIP.
    let hapi: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "np");
    hapi.delete(&hname, &DeleteParams::default()).await?;
    let again = wait_until("the host Service recreated", WAIT, || async {
        Ok(hapi.get_opt(&hname).await?.filter(|s| s.uid() != h.uid()))
    })
    .await?;
    assert_eq!(ip(&again), ip(&h));
    // Deleted on the virtual side: gone from the host.
    api.delete("np", &DeleteParams::default()).await?;
    wait_until("the host Service gone", WAIT, || async {
        Ok(hapi.get_opt(&hname).await?.is_none().then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn selectors_only_match_pods_of_their_own_virtual_namespace() -> Result<()> {
    let w = World::connect().await?;
    let a = TestNs::new(&w.virt, "svc-sel-a").await?;
    let b = TestNs::new(&w.virt, "svc-sel-b").await?;
    for ns in [&a, &b] {
        let pods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
        for i in 0..2 {
            pods.create(
                &PostParams::default(),
                &obj(
                    json!({"metadata": {"name": format!("web-{i}"), "labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
                )?,
            )
            .await?;
        }
        Api::<Service>::namespaced(w.virt.clone(), &ns.name)
            .create(&PostParams::default(), &service("web", "web", "ClusterIP")?)
            .await?;
    }
    let eps: Api<Endpoints> = Api::namespaced(w.host.clone(), &w.host_ns);
    for (ns, other) in [(&a, &b), (&b, &a)] {
        let pods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
        let own = wait_until("both pods with IPs", WAIT, || async {
            let ips: BTreeSet<String> = pods
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            Ok((ips.len() == 2).then_some(ips))
        })
        .await?;
        let hname = w.host_name(&ns.name, "web");
        let got = wait_until(
            "host endpoints with exactly the namespace's pods",
            WAIT,
            || async {
                let ips: BTreeSet<String> = endpoint_ips(eps.get_opt(&hname).await?);
                Ok((ips == own).then_some(ips))
            },
        )
        .await?;
        assert_eq!(
            got, own,
            "host endpoints of {} must not include {}'s pods",
            ns.name, other.name
        );
    }
    a.delete().await?;
    b.delete().await
}

#[tokio::test]
async fn default_kubernetes_points_at_the_vcluster_service() -> Result<()> {
    let w = World::connect().await?;
    let host_svc = Api::<Service>::namespaced(w.host.clone(), &w.host_ns)
        .get(&w.vcluster)
        .await?;
    let virt: Api<Service> = Api::namespaced(w.virt.clone(), "default");
    let vk = wait_until("default/kubernetes on the vcluster IP", WAIT, || async {
        let s = virt.get("kubernetes").await?;
        Ok((ip(&s) == ip(&host_svc)).then_some(s))
    })
    .await?;
    assert_eq!(vk.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(443));
    let host_eps = Api::<Endpoints>::namespaced(w.host.clone(), &w.host_ns)
        .get(&w.vcluster)
        .await?;
    let host_ips: BTreeSet<String> = endpoint_ips(Some(host_eps));
    let veps: Api<Endpoints> = Api::namespaced(w.virt.clone(), "default");
    wait_until(
        "virtual default/kubernetes endpoints = the vcluster pod",
        WAIT,
        || async {
            let ips: BTreeSet<String> = endpoint_ips(veps.get_opt("kubernetes").await?);
            Ok((!ips.is_empty() && ips == host_ips).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn a_cluster_ip_taken_on_the_host_falls_back_to_a_recreate() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "svc-conflict").await?;
    // A host Service (not ours) holds an IP; the tenant asks for the same IP.
    let hapi: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let blocker_name = format!("blocker-{}", ns.name);
    let blocker = hapi
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": blocker_name}, "spec": {"ports": [{"port": 1}]}}))?,
        )
        .await?;
    let taken = ip(&blocker).ok_or_else(|| anyhow::anyhow!("blocker has no IP"))?;
    let recreates_before = w.metric("vnest_syncer_service_recreates_total", &[]).await?;
    let api: Api<Service> = Api::namespaced(w.virt.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "wants"}, "spec": {"clusterIP": taken, "ports": [{"port": 80}]}}))?,
    )
    .await?;
    let h = host_copy(&w, &ns.name, "wants").await?;
    assert_ne!(ip(&h).as_deref(), Some(taken.as_str()));
    wait_until(
        "the virtual Service recreated with the host's IP",
        WAIT,
        || async {
            let v = api.get_opt("wants").await?;
            Ok(v.filter(|v| ip(v) == ip(&h)).map(|_| ()))
        },
    )
    .await?;
    assert!(w.metric("vnest_syncer_service_recreates_total", &[]).await? >= recreates_before + 1.0);
    hapi.delete(&blocker_name, &DeleteParams::default()).await?;
    ns.delete().await
}

#[tokio::test]
async fn manual_endpoints_of_selectorless_services_are_copied() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "svc-manual").await?;
    Api::<Service>::namespaced(w.virt.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "ext"}, "spec": {"ports": [{"name": "db", "port": 5432}]}}))?,
        )
        .await?;
    let veps: Api<Endpoints> = Api::namespaced(w.virt.clone(), &ns.name);
    veps.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "ext"},
                    "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"name": "db", "port": 5432}]}]}))?,
    )
    .await?;
    let heps: Api<Endpoints> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "ext");
    let ips = endpoint_ips::<Vec<String>>;
    wait_until("the host copy of the manual Endpoints", WAIT, || async {
        Ok((ips(heps.get_opt(&hname).await?) == ["192.0.2.10"]).then_some(()))
    })
    .await?;
    // Updates follow; deleting the Service removes both on the host.
    veps.patch(
        "ext",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"subsets": [{"addresses": [{"ip": "192.0.2.11"}], "ports": [{"name": "db", "port": 5432}]}]})),
    )
    .await?;
    wait_until("the host Endpoints updated", WAIT, || async {
        Ok((ips(heps.get_opt(&hname).await?) == ["192.0.2.11"]).then_some(()))
    })
    .await?;
    ns.delete().await
}
