//! The syncer, black-box, through both API servers: pods and what they mount, tokens, nodes,
//! events, deletion both ways, healing, foreign objects and refusals. Each test makes its own
//! virtual namespaces; host objects are found by the naming rule and our markers.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use vnest::markers;
use vnest_e2e::{HostPodPolicy, Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    obj(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": "nginx"}]}}}
    }))
}

fn pod(name: &str, spec: serde_json::Value) -> Result<Pod> {
    obj(json!({"metadata": {"name": name, "labels": {"app": name}}, "spec": spec}))
}

fn simple_pod(name: &str) -> Result<Pod> {
    pod(name, json!({"containers": [{"name": "main", "image": "nginx"}]}))
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn wait_running(api: &Api<Pod>, name: &str) -> Result<Pod> {
    wait_until(&format!("pod {name} Running"), WAIT, || async {
        Ok(api.get_opt(name).await?.filter(running))
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_until(&format!("{name} to be gone"), WAIT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

async fn warning_events(world: &World, ns: &str, name: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(world.virt.clone(), ns);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect())
}

async fn wait_warning(world: &World, ns: &str, name: &str, reason: &str) -> Result<Event> {
    wait_until(&format!("a Warning {reason} on {ns}/{name}"), WAIT, || async {
        Ok(warning_events(world, ns, name)
            .await?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason)))
    })
    .await
}

#[tokio::test]
async fn deployment_pods_run_with_host_ips_nodes_and_events() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-deploy").await?;
    Api::<Deployment>::namespaced(w.virt.clone(), &ns.name)
        .create(&PostParams::default(), &deployment("web", 3)?)
        .await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let pods = wait_until("3 Running virtual pods with IPs and nodes", WAIT, || async {
        let list = vpods.list(&ListParams::default().labels("app=web")).await?.items;
        let ok = list.len() == 3
            && list.iter().all(|p| {
                running(p)
                    && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
                    && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            });
        Ok(ok.then_some(list))
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(w.virt.clone(), &ns.name);
    wait_until("Deployment Available", WAIT, || async {
        let d = deployments.get("web").await?;
        let available = d
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Available" && c.status == "True"));
        Ok(available.then_some(()))
    })
    .await?;

    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let nodes: Api<Node> = Api::all(w.virt.clone());
    for vp in &pods {
        let hp = hpods.get(&w.host_name(&ns.name, &vp.name_any())).await?;
        // Same IP and node on both sides; our markers on the host pod.
        assert_eq!(
            hp.status.as_ref().and_then(|s| s.pod_ip.clone()),
            vp.status.as_ref().and_then(|s| s.pod_ip.clone())
        );
        let node = vp
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert_eq!(
            hp.spec.as_ref().and_then(|s| s.node_name.clone()),
            Some(node.clone())
        );
        assert_eq!(hp.labels().get(markers::LABEL_MANAGED_BY), Some(&w.vcluster));
        assert_eq!(hp.labels().get("app").map(String::as_str), Some("web"));
        assert_eq!(
            hp.annotations().get(markers::ANNOTATION_OBJECT_UID),
            vp.metadata.uid.as_ref()
        );
        let spec = hp.spec.clone().unwrap_or_default();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(format!("{}-workload", w.vcluster).as_str())
        );
        assert_eq!(spec.dns_policy.as_deref(), Some("None"));
        let searches = spec.dns_config.and_then(|d| d.searches).unwrap_or_default();
        assert_eq!(
            searches.first().cloned(),
            Some(format!("{}.svc.cluster.local", ns.name))
        );
        // The virtual node exists, fake, Ready.
        let n = nodes.get(&node).await?;
        assert!(n.labels().contains_key("vnest.dev/node"));
        // Its kubelet is the syncer's kubelet endpoint (in the local world on loopback, see
        // hack/up.sh; in a pod the vcluster Service), never the host kubelet.
        let kubelet = w.env.get("SYNCER_KUBELET_ADDR")?;
        let (kubelet_ip, kubelet_port) = kubelet
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("SYNCER_KUBELET_ADDR {kubelet} is not host:port"))?;
        let status = n.status.unwrap_or_default();
        let internal = status
            .addresses
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address);
        assert_eq!(internal.as_deref(), Some(kubelet_ip));
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port.to_string());
        assert_eq!(port.as_deref(), Some(kubelet_port));
    }
    // Only pods reached the host: no Deployment or ReplicaSet there.
    let host_rs: Api<ReplicaSet> = Api::namespaced(w.host.clone(), &w.host_ns);
    assert!(host_rs.list(&ListParams::default()).await?.items.is_empty());
    // The scheduler's "Scheduled" event reached the virtual pod, rewritten to it.
    let first = pods[0].name_any();
    let events: Api<Event> = Api::namespaced(w.virt.clone(), &ns.name);
    let scheduled = wait_until("a Scheduled event on the virtual pod", WAIT, || async {
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={first}")))
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Scheduled")))
    })
    .await?;
    assert_eq!(scheduled.involved_object.uid, pods[0].metadata.uid);
    let message = scheduled.message.unwrap_or_default();
    assert!(message.contains(&format!("{}/{first}", ns.name)), "{message}");
    assert!(
        !message.contains(&w.host_ns),
        "host names must not leak: {message}"
    );
    ns.delete().await
}

#[tokio::test]
async fn same_pod_name_in_two_namespaces_gets_two_host_pods() -> Result<()> {
    let w = World::connect().await?;
    let a = TestNs::new(&w.virt, "sync-a").await?;
    let b = TestNs::new(&w.virt, "sync-b").await?;
    for ns in [&a, &b] {
        Api::<Pod>::namespaced(w.virt.clone(), &ns.name)
            .create(&PostParams::default(), &simple_pod("app")?)
            .await?;
    }
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let (ha, hb) = (w.host_name(&a.name, "app"), w.host_name(&b.name, "app"));
    assert_ne!(ha, hb);
    for (ns, host) in [(&a, &ha), (&b, &hb)] {
        wait_running(&Api::namespaced(w.virt.clone(), &ns.name), "app").await?;
        let hp = hpods.get(host).await?;
        assert_eq!(
            hp.annotations().get(markers::ANNOTATION_OBJECT_NAMESPACE),
            Some(&ns.name)
        );
    }
    a.delete().await?;
    b.delete().await
}

#[tokio::test]
async fn configmaps_and_secrets_follow_their_pods() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-refs").await?;
    let cms: Api<ConfigMap> = Api::namespaced(w.virt.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(w.virt.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "cfg"}, "data": {"k": "v1"}}))?,
    )
    .await?;
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}))?,
        )
        .await?;
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "unused"}, "data": {"k": "v"}}))?,
    )
    .await?;
    let hcms: Api<ConfigMap> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hsecrets: Api<Secret> = Api::namespaced(w.host.clone(), &w.host_ns);
    let (hcfg, hcreds) = (w.host_name(&ns.name, "cfg"), w.host_name(&ns.name, "creds"));

    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    vpods
        .create(
            &PostParams::default(),
            &pod(
                "user",
                json!({
                    "containers": [{"name": "main", "image": "nginx",
                        "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
                        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
                    "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]
                }),
            )?,
        )
        .await?;
    wait_running(&vpods, "user").await?;
    let hcm = wait_until("the host ConfigMap", WAIT, || async {
        hcms.get_opt(&hcfg).await.map_err(Into::into)
    })
    .await?;
    assert_eq!(
        hcm.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v1")
    );
    let hs = wait_until("the host Secret", WAIT, || async {
        hsecrets.get_opt(&hcreds).await.map_err(Into::into)
    })
    .await?;
    assert_eq!(
        hs.data.unwrap_or_default().get("password").map(|b| b.0.clone()),
        Some(b"s3cret".to_vec())
    );
    // The host pod refers to the renamed copies.
    let hp = Api::<Pod>::namespaced(w.host.clone(), &w.host_ns)
        .get(&w.host_name(&ns.name, "user"))
        .await?;
    let spec = serde_json::to_string(&hp.spec)?;
    assert!(spec.contains(&hcfg) && spec.contains(&hcreds), "{spec}");
    // Not used: never copied.
    assert!(hcms.get_opt(&w.host_name(&ns.name, "unused")).await?.is_none());

    // Updates propagate, key removals too.
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2", "new": "x"}})),
    )
    .await?;
    wait_until("the host ConfigMap updated", WAIT, || async {
        let d = hcms.get(&hcfg).await?.data.unwrap_or_default();
        Ok((d.get("k").map(String::as_str) == Some("v2") && d.contains_key("new")).then_some(()))
    })
    .await?;
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"new": null}})),
    )
    .await?;
    wait_until("the removed key gone on the host", WAIT, || async {
        Ok((!hcms
            .get(&hcfg)
            .await?
            .data
            .unwrap_or_default()
            .contains_key("new"))
        .then_some(()))
    })
    .await?;

    // A rotated Secret reaches its host copy too.
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "rotated"}})),
        )
        .await?;
    wait_until("the host Secret updated", WAIT, || async {
        let d = hsecrets.get(&hcreds).await?.data.unwrap_or_default();
        Ok((d.get("password").map(|b| b.0.as_slice()) == Some(b"rotated".as_slice())).then_some(()))
    })
    .await?;

    // No user left: the host copies go.
    vpods.delete("user", &DeleteParams::default()).await?;
    wait_gone(&hcms, &hcfg).await?;
    wait_gone(&hsecrets, &hcreds).await?;
    ns.delete().await
}

#[tokio::test]
async fn pods_get_a_short_lived_virtual_token_carried_by_the_host_pod() -> Result<()> {
    // Default --pod-token-storage=annotation (the Secret storage is tested with vcluster 2).
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-token").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    vpods.create(&PostParams::default(), &simple_pod("tok")?).await?;
    wait_running(&vpods, "tok").await?;
    let hp = Api::<Pod>::namespaced(w.host.clone(), &w.host_ns)
        .get(&w.host_name(&ns.name, "tok"))
        .await?;
    // The projected SA volume reads the token from the host pod's own annotation.
    let field_path = hp
        .spec
        .clone()
        .unwrap_or_default()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.projected)
        .flat_map(|p| p.sources.unwrap_or_default())
        .filter_map(|s| s.downward_api)
        .flat_map(|d| d.items.unwrap_or_default())
        .filter_map(|i| i.field_ref.map(|f| f.field_path))
        .find(|f| f.contains("vnest.dev/token-"))
        .ok_or_else(|| anyhow::anyhow!("no token projection in the host pod"))?;
    let key = field_path
        .trim_start_matches("metadata.annotations['")
        .trim_end_matches("']");
    let token = hp
        .annotations()
        .get(key)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("host pod has no annotation {key}"))?;
    assert!(
        hp.annotations()
            .contains_key(vnest::resources::pods::sync::ANNOTATION_TOKEN_REFRESH_AT)
    );
    // No second host object: no token Secret for this namespace.
    let hsecrets: Api<Secret> = Api::namespaced(w.host.clone(), &w.host_ns);
    let secrets = hsecrets
        .list(&ListParams::default().labels(&format!("{}={}", markers::LABEL_NAMESPACE, ns.name)))
        .await?;
    assert!(secrets.items.is_empty(), "no token Secret in annotation mode");
    // The token is the VIRTUAL ServiceAccount's, accepted by the virtual API server, bound to
    // the virtual pod.
    let review = vnest_e2e::review_token(&w.virt, &token).await?;
    assert_eq!(
        review["user"]["username"],
        format!("system:serviceaccount:{}:default", ns.name)
    );
    let pod_name = &review["user"]["extra"]["authentication.kubernetes.io/pod-name"];
    assert_eq!(pod_name, &json!(["tok"]), "{review}");
    // The host's own identities do not accept it (audience/issuer of the virtual cluster).
    let host_review = vnest_e2e::review_token_raw(&w.host, &token).await?;
    assert_ne!(host_review["authenticated"], true, "{host_review}");
    ns.delete().await
}

#[tokio::test]
async fn deletes_flow_both_ways_and_host_edits_are_healed() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-del").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    vpods.create(&PostParams::default(), &simple_pod("solo")?).await?;
    wait_running(&vpods, "solo").await?;
    let hname = w.host_name(&ns.name, "solo");

    // An out-of-band edit of a label we own on the host is reverted.
    hpods
        .patch(
            &hname,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "tampered"}}})),
        )
        .await?;
    wait_until("the host label healed", WAIT, || async {
        Ok((hpods.get(&hname).await?.labels().get("app").map(String::as_str) == Some("solo")).then_some(()))
    })
    .await?;
    // A label change on the virtual side reaches the host; a removal too.
    vpods
        .patch(
            "solo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
        )
        .await?;
    wait_until("the new label on the host", WAIT, || async {
        Ok((hpods.get(&hname).await?.labels().get("tier").map(String::as_str) == Some("gold")).then_some(()))
    })
    .await?;
    vpods
        .patch(
            "solo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": null}}})),
        )
        .await?;
    wait_until("the removed label gone on the host", WAIT, || async {
        Ok((!hpods.get(&hname).await?.labels().contains_key("tier")).then_some(()))
    })
    .await?;

    // Virtual delete -> host delete; the virtual pod does not hang in Terminating.
    vpods.delete("solo", &DeleteParams::default()).await?;
    wait_gone(&hpods, &hname).await?;
    wait_gone(&vpods, "solo").await?;

    // Host pod deleted out-of-band -> the virtual pod goes and its ReplicaSet replaces it.
    Api::<Deployment>::namespaced(w.virt.clone(), &ns.name)
        .create(&PostParams::default(), &deployment("rs", 1)?)
        .await?;
    let first = wait_until("a Running rs pod", WAIT, || async {
        let list = vpods.list(&ListParams::default().labels("app=rs")).await?.items;
        Ok(list.into_iter().find(running))
    })
    .await?;
    let hfirst = w.host_name(&ns.name, &first.name_any());
    hpods.delete(&hfirst, &DeleteParams::default()).await?;
    let replacement = wait_until("a replacement pod Running", WAIT, || async {
        let list = vpods.list(&ListParams::default().labels("app=rs")).await?.items;
        Ok(list
            .into_iter()
            .find(|p| p.name_any() != first.name_any() && running(p)))
    })
    .await?;
    wait_gone(&vpods, &first.name_any()).await?;
    assert!(
        hpods
            .get_opt(&w.host_name(&ns.name, &replacement.name_any()))
            .await?
            .is_some()
    );

    // Deleting the virtual namespace removes its host objects.
    let hrep = w.host_name(&ns.name, &replacement.name_any());
    ns.delete().await?;
    wait_gone(&hpods, &hrep).await
}

/// A pod deleted and created again under the same name (what a StatefulSet does) runs as
/// itself: a host pod of its own uid, and its own status, never its predecessor's. The status
/// copy is pinned to the pod's uid, which relies on the API server refusing a uid change in a
/// status patch with a 422 whose cause is `metadata.uid`: checked here against the real one.
#[tokio::test]
async fn a_pod_recreated_under_the_same_name_runs_as_itself() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-same-name").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "web-0");

    vpods
        .create(&PostParams::default(), &simple_pod("web-0")?)
        .await?;
    let first = wait_running(&vpods, "web-0").await?;
    let stale = vpods
        .patch_status(
            "web-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"uid": "not-this-pod"}, "status": {"message": "x"}})),
        )
        .await;
    match stale {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            let fields: Vec<&str> = s
                .details
                .iter()
                .flat_map(|d| d.causes.iter().map(|c| c.field.as_str()))
                .collect();
            assert!(fields.contains(&"metadata.uid"), "{s:?}");
        }
        other => panic!("a status patch with another uid must be refused, got {other:?}"),
    }

    vpods.delete("web-0", &DeleteParams::default()).await?;
    wait_gone(&vpods, "web-0").await?;
    vpods
        .create(&PostParams::default(), &simple_pod("web-0")?)
        .await?;
    let second = wait_running(&vpods, "web-0").await?;
    assert_ne!(first.uid(), second.uid());
    let hp = wait_until("the host pod of the new uid", WAIT, || async {
        Ok(hpods
            .get_opt(&hname)
            .await?
            .filter(|h| h.annotations().get(markers::ANNOTATION_OBJECT_UID) == second.uid().as_ref()))
    })
    .await?;
    assert_eq!(
        second.status.as_ref().and_then(|s| s.pod_ip.clone()),
        hp.status.as_ref().and_then(|s| s.pod_ip.clone()),
        "the new pod shows its own host pod's IP"
    );
    assert_eq!(second.status.as_ref().and_then(|s| s.message.clone()), None);
    Ok(())
}

#[tokio::test]
async fn a_foreign_host_object_with_our_name_is_left_alone() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-foreign").await?;
    let hname = w.host_name(&ns.name, "taken");
    let hcms: Api<ConfigMap> = Api::namespaced(w.host.clone(), &w.host_ns);
    hcms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": hname}, "data": {"owner": "host"}}))?,
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(w.virt.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "taken"}, "data": {"owner": "tenant"}}))?,
    )
    .await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    vpods
        .create(
            &PostParams::default(),
            &pod(
                "mounts",
                json!({"containers": [{"name": "main", "image": "nginx"}],
                                    "volumes": [{"name": "c", "configMap": {"name": "taken"}}]}),
            )?,
        )
        .await?;
    let warning = wait_warning(&w, &ns.name, "taken", "HostNameTaken").await?;
    assert!(
        warning
            .message
            .unwrap_or_default()
            .contains("not managed by this vcluster")
    );
    let host = hcms.get(&hname).await?;
    assert_eq!(
        host.data
            .clone()
            .unwrap_or_default()
            .get("owner")
            .map(String::as_str),
        Some("host")
    );
    assert!(!host.labels().contains_key(markers::LABEL_MANAGED_BY));
    hcms.delete(&hname, &DeleteParams::default()).await?;
    ns.delete().await
}

#[tokio::test]
async fn refused_and_rejected_pods_get_a_warning_and_nothing_half_done() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-bad").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);

    // 1. Refused by the syncer's host-access policy.
    vpods
        .create(
            &PostParams::default(),
            &pod(
                "hostnet",
                json!({"hostNetwork": true, "containers": [{"name": "main", "image": "nginx"}]}),
            )?,
        )
        .await?;
    let refused = wait_warning(&w, &ns.name, "hostnet", "SyncRefused").await?;
    assert!(refused.message.unwrap_or_default().contains("spec.hostNetwork"));
    assert!(hpods.get_opt(&w.host_name(&ns.name, "hostnet")).await?.is_none());

    // 2. Rejected by the host API server (a host admission policy the tenant cannot see).
    let policy = HostPodPolicy::refuse_labelled(
        &w,
        &format!("vnest-e2e-reject-{}", ns.name),
        "reject-me",
        "'pods labelled reject-me are not allowed here'",
    )
    .await?;
    let mut rejected: Pod = simple_pod("rejected")?;
    rejected.labels_mut().insert("reject-me".into(), "yes".into());
    vpods.create(&PostParams::default(), &rejected).await?;
    let warning = wait_warning(&w, &ns.name, "rejected", "HostRejected").await?;
    assert!(warning.message.unwrap_or_default().contains("not allowed here"));
    assert!(hpods.get_opt(&w.host_name(&ns.name, "rejected")).await?.is_none());
    // Nothing half-done: no token Secret left behind for the refused pod.
    let hsecrets: Api<Secret> = Api::namespaced(w.host.clone(), &w.host_ns);
    let leftovers = hsecrets
        .list(&ListParams::default().labels(&format!("{}={}", markers::LABEL_NAMESPACE, ns.name)))
        .await?;
    assert!(
        leftovers.items.is_empty(),
        "{:?}",
        leftovers.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    );
    policy.delete().await?;

    // 3. Names at the length limits work: 63-char namespace, 253-char pod name.
    let long_ns = TestNs::new(&w.virt, &"n".repeat(56)).await?;
    let long_name = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    let lpods: Api<Pod> = Api::namespaced(w.virt.clone(), &long_ns.name);
    let unlabelled: Pod = obj(json!({"metadata": {"name": long_name},
                                     "spec": {"containers": [{"name": "main", "image": "nginx"}]}}))?;
    lpods.create(&PostParams::default(), &unlabelled).await?;
    wait_running(&lpods, &long_name).await?;
    let hname = w.host_name(&long_ns.name, &long_name);
    assert!(hname.len() <= 63);
    let hp = hpods.get(&hname).await?;
    assert_eq!(
        hp.spec.and_then(|s| s.hostname).map(|h| h.len() <= 63),
        Some(true)
    );
    long_ns.delete().await?;
    ns.delete().await
}

#[tokio::test]
async fn a_pod_waits_for_a_missing_secret_and_host_deletions_are_healed() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "sync-missing").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    vpods
        .create(
            &PostParams::default(),
            &pod("needs", json!({"containers": [{"name": "main", "image": "nginx",
                "envFrom": [{"secretRef": {"name": "later"}}, {"configMapRef": {"name": "optional-cm", "optional": true}}]}]}))?,
        )
        .await?;
    let warning = wait_warning(&w, &ns.name, "needs", "MissingReference").await?;
    let message = warning.message.unwrap_or_default();
    assert!(message.contains("Secret \"later\""), "{message}");
    assert!(
        !message.contains("optional-cm"),
        "optional references must not block: {message}"
    );
    assert!(
        hpods.get_opt(&w.host_name(&ns.name, "needs")).await?.is_none(),
        "nothing half-done"
    );
    // It appears: the pod starts without anyone touching it.
    Api::<Secret>::namespaced(w.virt.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "later"}, "stringData": {"K": "v"}}))?,
        )
        .await?;
    wait_running(&vpods, "needs").await?;

    // Deleted out-of-band on the host: the Secret it uses is recreated.
    let hsecrets: Api<Secret> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "later");
    let before = hsecrets.get(&hname).await?;
    hsecrets.delete(&hname, &DeleteParams::default()).await?;
    let after = wait_until("the host Secret recreated", WAIT, || async {
        Ok(hsecrets
            .get_opt(&hname)
            .await?
            .filter(|s| s.uid() != before.uid()))
    })
    .await?;
    assert_eq!(after.data, before.data);
    ns.delete().await
}
