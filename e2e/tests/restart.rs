//! The syncer dies (SIGKILL) in the middle of work and starts again: it re-derives everything
//! from the two API servers, converges with no duplicates, orphans or losses, and a resync of
//! an unchanged world makes ZERO host writes (counted by the syncer and by the host's audit log).
//!
//! Its own test binary: it kills the shared syncer, and cargo runs test binaries one at a time.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use vnest::markers;
use vnest_e2e::{Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(90);

/// Host writes (create/update/patch/delete) by the syncer's ServiceAccount in the audit log.
fn audited_host_writes(w: &World) -> Result<usize> {
    let log = std::fs::read_to_string(w.env.get("HOST_AUDIT_LOG")?)?;
    let user = format!("system:serviceaccount:{}:{}", w.host_ns, w.vcluster);
    Ok(log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == user.as_str())
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete")))
        // Access reviews are questions, not writes (tests ask them with the syncer's identity).
        .filter(|e| {
            !e["objectRef"]["resource"]
                .as_str()
                .is_some_and(|r| r.ends_with("accessreviews"))
        })
        .count())
}

async fn host_writes_metric(w: &World) -> Result<f64> {
    let mut total = 0.0;
    for verb in ["create", "update", "patch", "delete"] {
        total += w
            .metric(
                "vnest_syncer_api_requests_total",
                &[("cluster", "host"), ("verb", verb)],
            )
            .await?;
    }
    Ok(total)
}

/// Host pods of virtual namespace `ns`, by our namespace marker.
async fn host_pods_of(w: &World, ns: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let sel = format!(
        "{}={},{}={}",
        markers::LABEL_MANAGED_BY,
        w.vcluster,
        markers::LABEL_NAMESPACE,
        ns
    );
    Ok(api.list(&ListParams::default().labels(&sel)).await?.items)
}

#[tokio::test]
async fn killed_mid_work_then_restarted_converges_and_resync_writes_nothing() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "restart").await?;
    Api::<ConfigMap>::namespaced(w.virt.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}}))?,
        )
        .await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "burst"},
        "spec": {"replicas": 20, "selector": {"matchLabels": {"app": "burst"}},
                 "template": {"metadata": {"labels": {"app": "burst"}},
                              "spec": {"containers": [{"name": "main", "image": "nginx",
                                         "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}}}
    }))?;
    Api::<Deployment>::namespaced(w.virt.clone(), &ns.name)
        .create(&PostParams::default(), &deploy)
        .await?;
    // Kill it while it is creating (as soon as the first host pods appear).
    wait_until("the first host pods", WAIT, || async {
        Ok((!host_pods_of(&w, &ns.name).await?.is_empty()).then_some(()))
    })
    .await?;
    w.syncer_script(&["stop", "KILL"]).await?;
    w.syncer_script(&["start"]).await?;

    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    wait_until("20 Running virtual pods", WAIT, || async {
        let list = vpods
            .list(&ListParams::default().labels("app=burst"))
            .await?
            .items;
        let running = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((list.len() == 20 && running == 20).then_some(()))
    })
    .await?;
    // Exactly one host pod per virtual pod, each the copy of a live virtual pod: no duplicates,
    // no orphans, nothing lost.
    let virtual_uids: BTreeSet<String> = vpods
        .list(&ListParams::default().labels("app=burst"))
        .await?
        .items
        .iter()
        .filter_map(|p| p.uid())
        .collect();
    let host = wait_until("host pods to match virtual pods", WAIT, || async {
        let host = host_pods_of(&w, &ns.name).await?;
        let live: Vec<&Pod> = host
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        Ok((live.len() == 20).then_some(host))
    })
    .await?;
    let host_uids: BTreeSet<String> = host
        .iter()
        .filter_map(|p| p.annotations().get(markers::ANNOTATION_OBJECT_UID).cloned())
        .collect();
    assert_eq!(host_uids, virtual_uids);
    // Each host pod carries its token (default annotation storage): none was requested twice
    // into a second object.
    let with_tokens = host
        .iter()
        .filter(|p| p.annotations().keys().any(|k| k.starts_with("vnest.dev/token-")))
        .count();
    assert_eq!(with_tokens, 20, "every host pod carries its token");

    // Now an unchanged world. Earlier tests' namespaces may still be draining (their host pods
    // being deleted is real work, not resync): wait until nothing is terminating.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.virt.clone());
    wait_until("no virtual namespace terminating", WAIT, || async {
        let list = namespaces.list(&ListParams::default()).await?.items;
        Ok(list
            .iter()
            .all(|n| n.metadata.deletion_timestamp.is_none())
            .then_some(()))
    })
    .await?;
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    wait_until("no host pod of ours terminating", WAIT, || async {
        let sel = format!("{}={}", markers::LABEL_MANAGED_BY, w.vcluster);
        let list = hpods.list(&ListParams::default().labels(&sel)).await?.items;
        Ok(list
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_none())
            .then_some(()))
    })
    .await?;
    // Host events about our pods are copied too, by their own watch and queue (an event that
    // comes before its pod is in the cache is looked at again shortly): an event not copied yet
    // is work left, not a resync, so the world is unchanged only once each has its copy.
    wait_until("every host event about our pods copied", WAIT, || async {
        let pods: BTreeSet<String> = host_pods_of(&w, &ns.name)
            .await?
            .iter()
            .map(|p| p.name_any())
            .collect();
        let host_events: BTreeSet<String> = Api::<Event>::namespaced(w.host.clone(), &w.host_ns)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|e| e.involved_object.name.as_ref().is_some_and(|n| pods.contains(n)))
            .filter_map(|e| e.uid())
            .collect();
        let copied: BTreeSet<String> = Api::<Event>::namespaced(w.virt.clone(), &ns.name)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|e| e.annotations().get(markers::ANNOTATION_HOST_EVENT).cloned())
            .filter_map(|stamp| stamp.split_once(' ').map(|(uid, _)| uid.to_owned()))
            .collect();
        Ok(host_events.is_subset(&copied).then_some(()))
    })
    .await?;
    // Restart and let it resync everything.
    w.syncer_script(&["restart", "KILL"]).await?;
    let audited_before = audited_host_writes(&w)?;
    // The syncer's own "caught up" signal: every watch listed, every queue drained once.
    let resync_s = wait_until("the restarted syncer caught up", WAIT, || async {
        let s = w.metric("vnest_syncer_initial_sync_seconds", &[]).await?;
        Ok((s > 0.0).then_some(s))
    })
    .await?;
    let reconciled = w
        .metric("vnest_syncer_reconciles_total", &[("kind", "pods")])
        .await?;
    let pods = Api::<Pod>::all(w.virt.clone())
        .list(&ListParams::default())
        .await?
        .items
        .len() as f64;
    assert!(
        reconciled >= pods,
        "every one of the {pods} pods re-checked before caught up: {reconciled}"
    );
    // Once each, give or take a pod: workers start only after every cache's first list was
    // handed to its subscribers (they used to start in between and every pod went twice).
    assert!(
        reconciled <= pods * 1.2,
        "{reconciled} pod reconciles for {pods} pods: a resync reconciles each pod once"
    );
    assert!(resync_s < WAIT.as_secs_f64());
    assert_eq!(
        host_writes_metric(&w).await?,
        0.0,
        "a resync must not write to the host"
    );
    // The host audit log is written synchronously (--audit-log-mode blocking).
    assert_eq!(
        audited_host_writes(&w)?,
        audited_before,
        "the host saw writes from the syncer during a resync"
    );
    // Host events already copied are recognised from the copies' annotation, not re-written.
    let mut event_writes = 0.0;
    for verb in ["create", "patch"] {
        event_writes += w
            .metric(
                "vnest_syncer_api_requests_total",
                &[("cluster", "virtual"), ("resource", "events"), ("verb", verb)],
            )
            .await?;
    }
    assert_eq!(event_writes, 0.0, "a resync must not re-copy events");
    ns.delete().await
}
