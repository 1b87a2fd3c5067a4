//! Two vclusters in ONE host namespace: the same virtual namespace and names in both never
//! collide, neither syncer touches the other's host objects, and deleting one vcluster's owner
//! object makes the host garbage collector remove everything that vcluster created — and
//! nothing of the other's. Same-named claims get a host claim and a host volume each.
//!
//! The second vcluster's virtual control plane comes from `hack/up.sh` (VIRTUAL2_KUBECONFIG);
//! this test creates its host owner objects and runs its syncer itself.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use serde_json::json;
use vnest::markers;
use vnest_e2e::{Result, TestNs, World, client_from, endpoint_ips, http_get, wait_until};

const WAIT: Duration = Duration::from_secs(90);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

async fn create_app(client: &Client, ns: &str) -> Result<()> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}}))?,
        )
        .await?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "app", "labels": {"app": "app"}},
                        "spec": {"containers": [{"name": "main", "image": "nginx"}],
                                 "volumes": [{"name": "c", "configMap": {"name": "cfg"}}]}}))?,
        )
        .await?;
    Ok(())
}

async fn managed_by(w: &World, vcluster: &str) -> Result<(Vec<Pod>, Vec<ConfigMap>, Vec<Secret>)> {
    let sel = format!("{}={vcluster}", markers::LABEL_MANAGED_BY);
    let lp = ListParams::default().labels(&sel);
    Ok((
        Api::<Pod>::namespaced(w.host.clone(), &w.host_ns)
            .list(&lp)
            .await?
            .items,
        Api::<ConfigMap>::namespaced(w.host.clone(), &w.host_ns)
            .list(&lp)
            .await?
            .items,
        Api::<Secret>::namespaced(w.host.clone(), &w.host_ns)
            .list(&lp)
            .await?
            .items,
    ))
}

#[tokio::test]
async fn two_vclusters_share_a_host_namespace_and_delete_cleanly() -> Result<()> {
    let w = World::connect().await?;
    let kubeconfig2 = w.env.get("VIRTUAL2_KUBECONFIG")?;
    anyhow::ensure!(
        !kubeconfig2.is_empty(),
        "no second virtual control plane: start the world without SECOND_VCLUSTER=0"
    );
    let virt2 = client_from(std::path::Path::new(kubeconfig2)).await?;
    let vc2 = format!("vc2-{:04x}", rand::rng().random_range(0..0xffffu32));

    // The second vcluster's host objects, as its manifests would make them.
    let statefulsets: Api<StatefulSet> = Api::namespaced(w.host.clone(), &w.host_ns);
    statefulsets
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": vc2},
                "spec": {"replicas": 0, "serviceName": vc2,
                         "selector": {"matchLabels": {"vnest.dev/vcluster": vc2}},
                         "template": {"metadata": {"labels": {"vnest.dev/vcluster": vc2}},
                                      "spec": {"containers": [{"name": "k3s", "image": "rancher/k3s"}]}}}
            }))?,
        )
        .await?;
    let services: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    services
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": vc2},
                        "spec": {"selector": {"vnest.dev/vcluster": vc2}, "ports": [{"name": "https", "port": 443}]}}))?,
        )
        .await?;
    // vcluster 2 runs with --node-sync=real: grant its ServiceAccount read on nodes, as the
    // optional manifests/components/real-nodes component does.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(w.host.clone());
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(w.host.clone());
    let rbac_name = format!("vnest-e2e-node-reader-{vc2}");
    roles
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": rbac_name},
                        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]}))?,
        )
        .await?;
    bindings
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": rbac_name},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rbac_name},
                        "subjects": [{"kind": "ServiceAccount", "name": w.vcluster, "namespace": w.host_ns}]}))?,
        )
        .await?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(format!("{}/syncer-{vc2}.log", w.env.get("LOG_DIR")?))?;
    let mut syncer2 = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args([
            "syncer",
            "--name",
            &vc2,
            "--owner-name",
            &vc2,
            "--service-name",
            &vc2,
        ])
        .args([
            "--host-namespace",
            &w.host_ns,
            "--workload-service-account",
            &format!("{}-workload", w.vcluster),
        ])
        .args([
            "--host-kubeconfig",
            w.env.get("SYNCER_HOST_KUBECONFIG")?,
            "--virtual-kubeconfig",
            kubeconfig2,
        ])
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
            "--dns-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--data-dir",
            &std::path::Path::new(kubeconfig2)
                .ancestors()
                .nth(3)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            "--kubelet-listen-addr",
            "127.0.0.1:0",
        ])
        .args(["--node-sync", "real", "--pod-token-storage", "secret"])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until("the second syncer ready", WAIT, || async {
        Ok(matches!(http_get(&ready).await, Ok((200, _))).then_some(()))
    })
    .await?;

    // The same namespace, pod and ConfigMap names in both vclusters.
    let ns1 = TestNs::new(&w.virt, "shared").await?;
    let ns2: k8s_openapi::api::core::v1::Namespace = obj(json!({"metadata": {"name": ns1.name}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(virt2.clone())
        .create(&PostParams::default(), &ns2)
        .await?;
    let sa2: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(virt2.clone(), &ns1.name);
    wait_until("ServiceAccount default in vcluster 2", WAIT, || async {
        Ok(sa2.get_opt("default").await?.map(|_| ()))
    })
    .await?;
    create_app(&w.virt, &ns1.name).await?;
    create_app(&virt2, &ns1.name).await?;
    for client in [&w.virt, &virt2] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns1.name);
        wait_until("pod app Running in both vclusters", WAIT, || async {
            let p = pods.get("app").await?;
            Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        })
        .await?;
    }
    let name1 = w.host_name(&ns1.name, "app");
    let name2 = vnest::naming::host_name(&vc2, &ns1.name, "app");
    assert_ne!(name1, name2, "two vclusters must never share a host name");
    // Each vcluster keeps its own kubeconfig export; the rest are vcluster 2's copies.
    let export2 = format!("vc-{vc2}");
    wait_until("vcluster 2's kubeconfig export", WAIT, || async {
        let (_, _, s) = managed_by(&w, &vc2).await?;
        Ok(s.iter().any(|s| s.name_any() == export2).then_some(()))
    })
    .await?;
    let (pods2, cms2, mut secrets2) = managed_by(&w, &vc2).await?;
    secrets2.retain(|s| s.name_any() != export2);
    assert_eq!(pods2.len(), 1, "exactly one host pod of vcluster 2");
    assert_eq!(pods2[0].name_any(), name2);
    assert_eq!(cms2.len(), 2, "cfg and kube-root-ca.crt of vcluster 2");
    assert_eq!(secrets2.len(), 1, "the token Secret of vcluster 2's pod");
    // --pod-token-storage=secret: the token lives in a Secret owned by the host pod, never in
    // the pod's annotations, and is vcluster 2's own.
    assert_eq!(
        secrets2[0].owner_references().first().map(|o| o.uid.clone()),
        pods2[0].metadata.uid
    );
    assert!(
        pods2[0].annotations().values().all(|v| !v.starts_with("eyJ")),
        "a token leaked into the annotations of the host pod"
    );
    let token2 = secrets2[0]
        .data
        .clone()
        .unwrap_or_default()
        .into_values()
        .next()
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or_else(|| anyhow::anyhow!("empty token Secret"))?;
    let review = vnest_e2e::review_token(&virt2, &token2).await?;
    assert_eq!(
        review["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["app"])
    );
    assert_ne!(
        vnest_e2e::review_token_raw(&w.virt, &token2).await?["authenticated"],
        true,
        "vcluster 1 must not accept vcluster 2's token"
    );
    // Each side's virtual pod carries its own host pod's IP.
    let hp1 = Api::<Pod>::namespaced(w.host.clone(), &w.host_ns)
        .get(&name1)
        .await?;
    let vp2 = Api::<Pod>::namespaced(virt2.clone(), &ns1.name)
        .get("app")
        .await?;
    assert_ne!(hp1.status.and_then(|s| s.pod_ip), None);
    assert_eq!(
        vp2.status.and_then(|s| s.pod_ip),
        pods2[0].status.clone().and_then(|s| s.pod_ip)
    );

    // Real node mode: vcluster 2's node carries the host node's labels; addresses still point
    // at the vcluster's kubelet endpoint.
    let node_name = pods2[0]
        .spec
        .clone()
        .and_then(|s| s.node_name)
        .unwrap_or_default();
    let nodes2: Api<k8s_openapi::api::core::v1::Node> = Api::all(virt2.clone());
    let real = wait_until("vcluster 2's real virtual node", WAIT, || async {
        Ok(nodes2.get_opt(&node_name).await?)
    })
    .await?;
    assert_eq!(
        real.labels().get("vnest.dev/node").map(String::as_str),
        Some("real")
    );
    assert_eq!(
        real.labels().get("type").map(String::as_str),
        Some("kwok"),
        "host node labels copied"
    );
    let addresses = real.status.and_then(|s| s.addresses).unwrap_or_default();
    assert!(
        addresses.iter().all(|a| a.address != "127.0.0.1"),
        "addresses point at the vcluster's kubelet endpoint, never at the host kubelet: {addresses:?}"
    );

    // The same Service (namespace, name, selector) in both vclusters: each host copy selects
    // only its own vcluster's pod.
    let svc: Service = obj(json!({"metadata": {"name": "app"},
                                  "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}))?;
    for client in [&w.virt, &virt2] {
        Api::<Service>::namespaced(client.clone(), &ns1.name)
            .create(&PostParams::default(), &svc)
            .await?;
    }
    let eps: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hp2_ip = pods2[0].status.clone().and_then(|s| s.pod_ip).unwrap_or_default();
    let hp1_ip = Api::<Pod>::namespaced(w.host.clone(), &w.host_ns)
        .get(&name1)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default();
    for (vc, own_ip) in [(w.vcluster.as_str(), &hp1_ip), (vc2.as_str(), &hp2_ip)] {
        let hname = vnest::naming::host_name(vc, &ns1.name, "app");
        wait_until(
            "host endpoints with only the vcluster's own pod",
            WAIT,
            || async {
                let ips: Vec<String> = endpoint_ips(eps.get_opt(&hname).await?);
                Ok((ips == [own_ip.clone()]).then_some(()))
            },
        )
        .await?;
    }

    // The same claim (namespace, name) used by a pod in both vclusters: two host claims, each
    // bound to its own host volume, each virtual claim bound.
    let claim: PersistentVolumeClaim = obj(json!({"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}}))?;
    let user: Pod = obj(json!({"metadata": {"name": "db"},
        "spec": {"containers": [{"name": "main", "image": "postgres"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}))?;
    for client in [&w.virt, &virt2] {
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns1.name)
            .create(&PostParams::default(), &claim)
            .await?;
        Api::<Pod>::namespaced(client.clone(), &ns1.name)
            .create(&PostParams::default(), &user)
            .await?;
    }
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    let mut host_volumes = Vec::new();
    for vc in [w.vcluster.as_str(), vc2.as_str()] {
        let hname = vnest::naming::host_name(vc, &ns1.name, "data");
        let h = wait_until("each vcluster's host claim Bound", WAIT, || async {
            Ok(hclaims
                .get_opt(&hname)
                .await?
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")))
        })
        .await?;
        assert_eq!(
            h.labels().get(markers::LABEL_MANAGED_BY).map(String::as_str),
            Some(vc)
        );
        host_volumes.push(h.spec.and_then(|s| s.volume_name).unwrap_or_default());
    }
    assert_ne!(
        host_volumes[0], host_volumes[1],
        "each claim has its own host volume"
    );
    for client in [&w.virt, &virt2] {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns1.name);
        wait_until("the virtual claim Bound in both vclusters", WAIT, || async {
            Ok(claims
                .get_opt("data")
                .await?
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .map(|_| ()))
        })
        .await?;
    }

    // Deleting vcluster 2 (its owner object) removes all it made, and nothing of vcluster 1.
    statefulsets.delete(&vc2, &DeleteParams::background()).await?;
    let claim2 = vnest::naming::host_name(&vc2, &ns1.name, "data");
    wait_until("vcluster 2's host objects garbage-collected", WAIT, || async {
        let (p, c, s) = managed_by(&w, &vc2).await?;
        let claim_gone = hclaims.get_opt(&claim2).await?.is_none();
        Ok((p.is_empty() && c.is_empty() && s.is_empty() && claim_gone).then_some(()))
    })
    .await?;
    assert!(
        hclaims.get_opt(&w.host_name(&ns1.name, "data")).await?.is_some(),
        "vcluster 1's claim must survive"
    );
    let (pods1, cms1, _) = managed_by(&w, &w.vcluster).await?;
    assert!(
        pods1.iter().any(|p| p.name_any() == name1),
        "vcluster 1's pod must survive"
    );
    assert!(cms1.iter().any(|c| c.name_any() == w.host_name(&ns1.name, "cfg")));

    let _ = syncer2.kill().await;
    bindings.delete(&rbac_name, &DeleteParams::default()).await?;
    roles.delete(&rbac_name, &DeleteParams::default()).await?;
    services.delete(&vc2, &DeleteParams::default()).await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(virt2)
        .delete(&ns1.name, &DeleteParams::default())
        .await?;
    ns1.delete().await
}
