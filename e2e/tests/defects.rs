//! Regression tests of issue 13, black-box through both API servers: readiness-gate
//! conditions, node ports of LoadBalancer Services, host-side metadata, host names in tenant
//! Events, reserved label keys. Each test makes its own virtual namespace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use vnest_e2e::{HostPodPolicy, Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn simple_pod(name: &str) -> Result<Pod> {
    obj(json!({"metadata": {"name": name, "labels": {"app": name}},
               "spec": {"containers": [{"name": "main", "image": "nginx"}]}}))
}

/// The messages of the events of virtual namespace `ns` about `name` with `reason`.
async fn event_messages(w: &World, ns: &str, name: &str, reason: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(w.virt.clone(), ns);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect())
}

/// 4. A host refusal and a copied host event name the virtual objects, never host ones.
#[tokio::test]
async fn tenant_events_never_name_host_objects() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "defects-events").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);

    // A copied host event: the test plays a host controller reporting on our host pod, naming
    // it, a translated claim of the same namespace and another vcluster's object.
    vpods
        .create(&PostParams::default(), &simple_pod("named")?)
        .await?;
    let hname = w.host_name(&ns.name, "named");
    let hp = wait_until("the host pod", WAIT, || async {
        Ok(hpods.get_opt(&hname).await?)
    })
    .await?;
    let claim = w.host_name(&ns.name, "data");
    let foreign = vnest::naming::host_name("some-other-vcluster", "db", "db-0");
    let hevents: Api<Event> = Api::namespaced(w.host.clone(), &w.host_ns);
    let host_event: Event = obj(json!({
        "metadata": {"name": format!("{hname}.e2e"), "namespace": w.host_ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": hname, "namespace": w.host_ns,
                           "uid": hp.metadata.uid},
        "reason": "E2eHostReport", "type": "Warning", "count": 1,
        "message": format!("pod {}/{hname} waits for persistentvolumeclaim \"{claim}\" held by {foreign}", w.host_ns),
        "source": {"component": "e2e"},
    }))?;
    hevents.create(&PostParams::default(), &host_event).await?;
    let copied = wait_until("the host event copied", WAIT, || async {
        Ok(event_messages(&w, &ns.name, "named", "E2eHostReport")
            .await?
            .pop())
    })
    .await?;
    assert_eq!(
        copied,
        format!(
            "pod {}/named waits for persistentvolumeclaim \"data\" held by <host object>",
            ns.name
        )
    );

    // A host refusal (a host admission policy quoting the host pod's name).
    // Not named vnest-…: the words of the message are checked against the host namespace.
    let label = format!("reject-{}", ns.name);
    let policy = HostPodPolicy::refuse_labelled(
        &w,
        &format!("e2e-reject-{}", ns.name),
        &label,
        "'pod ' + object.metadata.name + ' is not allowed here'",
    )
    .await?;
    let mut refused = simple_pod("refused")?;
    refused
        .metadata
        .labels
        .get_or_insert_default()
        .insert(label.clone(), "1".into());
    vpods.create(&PostParams::default(), &refused).await?;
    let hrefused = w.host_name(&ns.name, "refused");
    let warning = wait_until("a HostRejected Warning from the policy", WAIT, || async {
        Ok(event_messages(&w, &ns.name, "refused", "HostRejected")
            .await?
            .into_iter()
            .find(|m| m.contains("is not allowed here")))
    })
    .await;
    policy.delete().await?;
    let warning = warning?;
    assert!(warning.contains("pod refused is not allowed here"), "{warning}");
    assert!(!warning.contains(&hrefused), "{warning}");
    assert!(!warning.contains(&w.host_ns), "{warning}");
    ns.delete().await?;
    Ok(())
}

/// 2. A LoadBalancer Service with `externalTrafficPolicy: Local` gets the same node ports and
/// health-check node port on both sides, without a refusal or a recreate.
#[tokio::test]
async fn local_load_balancer_services_have_equal_node_ports_on_both_sides() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "defects-lb").await?;
    let vsvcs: Api<Service> = Api::namespaced(w.virt.clone(), &ns.name);
    let hsvcs: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let created = vsvcs
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "lb"},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "lb"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                   {"name": "dns", "port": 53, "protocol": "UDP"}]}
            }))?,
        )
        .await?;
    let ports = |s: &Service| {
        let spec = s.spec.clone().unwrap_or_default();
        let node_ports: Vec<Option<i32>> = spec.ports.iter().flatten().map(|p| p.node_port).collect();
        (node_ports, spec.health_check_node_port)
    };
    let virtual_ports = ports(&created);
    assert!(
        virtual_ports.1.is_some(),
        "the virtual API server allocates a health-check port"
    );
    let hname = w.host_name(&ns.name, "lb");
    let host = wait_until("the host copy", WAIT, || async {
        Ok(hsvcs.get_opt(&hname).await?)
    })
    .await?;
    assert_eq!(
        ports(&host),
        virtual_ports,
        "the host copy asked for the virtual ports"
    );
    // The syncer has acted on it (the host copy carries the virtual uid) and the virtual
    // Service is still the same object with the same ports: no recreate, no refusal.
    let current = vsvcs.get("lb").await?;
    assert_eq!(current.metadata.uid, created.metadata.uid);
    assert_eq!(ports(&current), virtual_ports);
    let events: Api<Event> = Api::namespaced(w.virt.clone(), &ns.name);
    let warnings: Vec<String> = events
        .list(&ListParams::default().fields("involvedObject.name=lb"))
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.message)
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    ns.delete().await?;
    Ok(())
}

/// The condition `type_` of `p`: (status, reason).
fn condition(p: &Pod, type_: &str) -> Option<(String, Option<String>)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// 1. A readiness-gate condition the tenant sets in the virtual cluster reaches the host pod
/// and stays on the virtual pod; the pod is Ready on both sides.
#[tokio::test]
async fn readiness_gate_conditions_flow_to_the_host_and_stay() -> Result<()> {
    const GATE: &str = "example.com/feature-ready";
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "defects-gates").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    vpods
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "gated"},
                        "spec": {"readinessGates": [{"conditionType": GATE}],
                                 "containers": [{"name": "main", "image": "nginx"}]}}))?,
        )
        .await?;
    let hname = w.host_name(&ns.name, "gated");
    wait_until("the virtual pod Running", WAIT, || async {
        let p = vpods.get("gated").await?;
        Ok((p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(()))
    })
    .await?;
    // The tenant's controller sets the gate (as a controller does: a status patch).
    let gate = json!({"status": {"conditions": [{"type": GATE, "status": "True", "reason": "TenantController",
                                                  "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    vpods
        .patch_status(
            "gated",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&gate),
        )
        .await?;
    let want = Some(("True".to_owned(), Some("TenantController".to_owned())));
    wait_until("the gate condition on the host pod", WAIT, || async {
        let p = hpods.get(&hname).await?;
        Ok((condition(&p, GATE) == want).then_some(()))
    })
    .await?;
    // The syncer has seen the host pod with it (its status flowed back at least once more):
    // the virtual pod keeps the tenant's value and is Ready.
    let ready = wait_until("the virtual pod Ready with the tenant's gate", WAIT, || async {
        let p = vpods.get("gated").await?;
        let ok =
            condition(&p, "Ready").map(|c| c.0) == Some("True".to_owned()) && condition(&p, GATE) == want;
        Ok(ok.then_some(p))
    })
    .await?;
    let h = hpods.get(&hname).await?;
    assert_eq!(condition(&h, "Ready").map(|c| c.0).as_deref(), Some("True"));
    // A later change by the tenant flows down too (and is not reset on the virtual side).
    let unset = json!({"status": {"conditions": [{"type": GATE, "status": "False", "reason": "TenantUnset",
                                                   "lastTransitionTime": "2026-01-01T00:01:00Z"}]}});
    vpods
        .patch_status(
            "gated",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&unset),
        )
        .await?;
    let want = Some(("False".to_owned(), Some("TenantUnset".to_owned())));
    wait_until("the unset gate on the host pod", WAIT, || async {
        let p = hpods.get(&hname).await?;
        Ok((condition(&p, GATE) == want).then_some(()))
    })
    .await?;
    assert_eq!(condition(&vpods.get("gated").await?, GATE), want);
    drop(ready);
    ns.delete().await?;
    Ok(())
}

/// 3. Labels and annotations a host controller adds to a synced Pod or Service reach the
/// virtual object, leave it when the host removes them, and never beat a tenant key.
#[tokio::test]
async fn host_added_metadata_is_mirrored_back() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "defects-meta").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let vsvcs: Api<Service> = Api::namespaced(w.virt.clone(), &ns.name);
    let hsvcs: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let mut p = simple_pod("meta")?;
    p.metadata
        .labels
        .get_or_insert_default()
        .insert("owner".into(), "tenant".into());
    vpods.create(&PostParams::default(), &p).await?;
    vsvcs
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "meta"}, "spec": {"selector": {"app": "meta"}, "ports": [{"port": 80}]}}))?,
        )
        .await?;
    let hpod = w.host_name(&ns.name, "meta");
    wait_until("the host pod", WAIT, || async { Ok(hpods.get_opt(&hpod).await?) }).await?;
    wait_until("the host Service", WAIT, || async {
        Ok(hsvcs.get_opt(&hpod).await?)
    })
    .await?;
    // The test as a host controller: a label, an annotation, and a key the tenant also has.
    let add = json!({"metadata": {"labels": {"host.example.com/zone": "z1", "owner": "host"},
                                  "annotations": {"host.example.com/scanned": "yes"}}});
    let pp = PatchParams::default();
    hpods.patch(&hpod, &pp, &Patch::Merge(&add)).await?;
    hsvcs.patch(&hpod, &pp, &Patch::Merge(&add)).await?;
    let label = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, k: &str| {
        m.labels.as_ref().and_then(|l| l.get(k)).cloned()
    };
    let annotation = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, k: &str| {
        m.annotations.as_ref().and_then(|l| l.get(k)).cloned()
    };
    wait_until(
        "host-added metadata on the virtual pod and Service",
        WAIT,
        || async {
            let p = vpods.get("meta").await?.metadata;
            let s = vsvcs.get("meta").await?.metadata;
            let ok = [&p, &s].iter().all(|m| {
                label(m, "host.example.com/zone").as_deref() == Some("z1")
                    && annotation(m, "host.example.com/scanned").as_deref() == Some("yes")
            });
            Ok(ok.then_some(()))
        },
    )
    .await?;
    let p = vpods.get("meta").await?.metadata;
    assert_eq!(
        label(&p, "owner").as_deref(),
        Some("tenant"),
        "the tenant's key wins"
    );
    assert!(
        p.labels
            .iter()
            .flatten()
            .all(|(k, _)| !k.starts_with("vnest.dev/")),
        "no markers on the virtual pod: {:?}",
        p.labels
    );
    // A key both sides set is the tenant's: its value is copied down over the host's.
    wait_until("the tenant's owner label on the host pod", WAIT, || async {
        let h = hpods.get(&hpod).await?.metadata;
        Ok((label(&h, "owner").as_deref() == Some("tenant")).then_some(()))
    })
    .await?;
    // The host removes its keys: they go on the virtual side too; the tenant's stay.
    let remove = json!({"metadata": {"labels": {"host.example.com/zone": null},
                                     "annotations": {"host.example.com/scanned": null}}});
    hpods.patch(&hpod, &pp, &Patch::Merge(&remove)).await?;
    hsvcs.patch(&hpod, &pp, &Patch::Merge(&remove)).await?;
    wait_until(
        "host-removed metadata gone from the virtual objects",
        WAIT,
        || async {
            let p = vpods.get("meta").await?.metadata;
            let s = vsvcs.get("meta").await?.metadata;
            let ok = [&p, &s].iter().all(|m| {
                label(m, "host.example.com/zone").is_none()
                    && annotation(m, "host.example.com/scanned").is_none()
            });
            Ok(ok.then_some(()))
        },
    )
    .await?;
    assert_eq!(
        label(&vpods.get("meta").await?.metadata, "owner").as_deref(),
        Some("tenant")
    );
    ns.delete().await?;
    Ok(())
}

/// 5. Kubernetes' own label keys on tenant pods (a StatefulSet's `statefulset.kubernetes.io/
/// pod-name`, the recommended `app.kubernetes.io/name`) are renamed on the host, so a host
/// object that is not vnest's cannot select tenant pods by them; the tenant's own Service with
/// such a selector still selects its pod (its host copy's selector is renamed the same way).
#[tokio::test]
async fn kubernetes_label_keys_cannot_be_selected_from_the_host() -> Result<()> {
    use k8s_openapi::api::core::v1::Endpoints;
    use std::collections::BTreeSet;
    use vnest_e2e::endpoint_ips;
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "defects-keys").await?;
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hsvcs: Api<Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let heps: Api<Endpoints> = Api::namespaced(w.host.clone(), &w.host_ns);
    // A unique value, so the host Service below could only ever match this test's pod.
    let pod_name = format!("web-{}", &ns.name[ns.name.len() - 6..]);
    vpods
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": pod_name,
                                     "labels": {"statefulset.kubernetes.io/pod-name": pod_name,
                                                "app.kubernetes.io/name": "web"}},
                        "spec": {"containers": [{"name": "main", "image": "nginx"}]}}))?,
        )
        .await?;
    Api::<Service>::namespaced(w.virt.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "per-pod"},
                        "spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod_name},
                                 "ports": [{"name": "http", "port": 80}]}}))?,
        )
        .await?;
    // A host Service that is not vnest's, selecting on the same key and value.
    let foreign = format!("foreign-{pod_name}");
    hsvcs
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": foreign},
                        "spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod_name},
                                 "ports": [{"name": "http", "port": 80}]}}))?,
        )
        .await?;
    let hname = w.host_name(&ns.name, &pod_name);
    let ip = wait_until("the host pod running with an IP", WAIT, || async {
        Ok(hpods
            .get_opt(&hname)
            .await?
            .and_then(|p| p.status.and_then(|s| s.pod_ip)))
    })
    .await?;
    let hp = hpods.get(&hname).await?;
    let labels = hp.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key("statefulset.kubernetes.io/pod-name")
            && !labels.contains_key("app.kubernetes.io/name"),
        "Kubernetes keys renamed on the host pod: {labels:?}"
    );
    // The tenant's own Service selects its pod on the host (positive control: the host's
    // endpoints controller has seen the pod once this holds) ...
    let per_pod = w.host_name(&ns.name, "per-pod");
    wait_until("the tenant Service's host endpoints", WAIT, || async {
        let ips: BTreeSet<String> = endpoint_ips(heps.get_opt(&per_pod).await?);
        Ok(ips.contains(&ip).then_some(()))
    })
    .await?;
    // ... and the same controller gave the foreign Service nothing.
    let foreign_ips: BTreeSet<String> = endpoint_ips(heps.get_opt(&foreign).await?);
    assert!(
        !foreign_ips.contains(&ip),
        "a host Service that is not vnest's selected a tenant pod: {foreign_ips:?}"
    );
    hsvcs.delete(&foreign, &DeleteParams::default()).await?;
    ns.delete().await?;
    Ok(())
}
