//! PodDisruptionBudgets (on by default): a tenant budget is copied to the host with its selector
//! confined to the vcluster and virtual namespace, so the HOST disruption controller guards the
//! tenant's host pods (an eviction there is refused) and never counts a same-labelled host pod
//! outside the vcluster; updates and deletes follow; a resync writes nothing.
//!
//! Its own test binary: it restarts the shared syncer, and cargo runs test binaries one at a time.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;
use vnest::markers;
use vnest_e2e::{Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(90);
const KIND: &[(&str, &str)] = &[("kind", "poddisruptionbudgets")];

fn pod(name: &str, app: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": "nginx"}]}
    }))?)
}

/// A host admin client that does not retry: an eviction refused by a budget answers 429, which
/// the default client retries (with backoff, for minutes) as if the server were overloaded.
async fn host_without_retries(w: &World) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(w.env.path("HOST_KUBECONFIG")?)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// The budget's status once its controller has seen its current generation.
fn settled(pdb: &PodDisruptionBudget) -> Option<(i32, i32)> {
    let s = pdb.status.as_ref()?;
    (s.observed_generation.is_some() && s.observed_generation == pdb.metadata.generation)
        .then_some((s.expected_pods, s.disruptions_allowed))
}

#[tokio::test]
async fn budgets_guard_the_tenants_host_pods_only() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "pdb").await?;
    let app = format!("guarded-{}", ns.name);
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    for name in ["a", "b"] {
        vpods.create(&PostParams::default(), &pod(name, &app)?).await?;
    }
    // A host pod outside the vcluster with the same label: a copied selector that were not
    // confined would count (and guard) it.
    let foreign = format!("foreign-{}", ns.name);
    hpods
        .create(&PostParams::default(), &pod(&foreign, &app)?)
        .await?;
    let ours = format!(
        "{}={},{}={}",
        markers::LABEL_MANAGED_BY,
        w.vcluster,
        markers::LABEL_NAMESPACE,
        ns.name
    );
    wait_until("both host pods of the tenant", WAIT, || async {
        let n = hpods
            .list(&ListParams::default().labels(&ours))
            .await?
            .items
            .len();
        Ok((n == 2).then_some(()))
    })
    .await?;

    let writes_before = w.metric("vnest_syncer_host_writes_total", KIND).await?;
    let vpdbs: Api<PodDisruptionBudget> = Api::namespaced(w.virt.clone(), &ns.name);
    vpdbs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web", "labels": {"team": "a"}},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": app}},
                         "unhealthyPodEvictionPolicy": "IfHealthyBudget"}
            }))?,
        )
        .await?;
    let hpdbs: Api<PodDisruptionBudget> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "web");
    let h = wait_until("the host budget", WAIT, || async {
        Ok(hpdbs.get_opt(&hname).await?)
    })
    .await?;
    let labels = h.labels();
    assert_eq!(labels.get(markers::LABEL_MANAGED_BY), Some(&w.vcluster));
    assert_eq!(labels.get(markers::LABEL_NAMESPACE), Some(&ns.name));
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    let annotations = h.annotations();
    assert_eq!(
        annotations
            .get(markers::ANNOTATION_OBJECT_NAME)
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(
        annotations
            .get(markers::ANNOTATION_OBJECT_KIND)
            .map(String::as_str),
        Some("PodDisruptionBudget")
    );
    let spec = h.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    assert_eq!(
        selector.match_labels.unwrap_or_default(),
        [
            ("app".to_owned(), app.clone()),
            (markers::LABEL_MANAGED_BY.to_owned(), w.vcluster.clone()),
            (markers::LABEL_NAMESPACE.to_owned(), ns.name.clone()),
        ]
        .into(),
        "the tenant's selector, confined to the vcluster and namespace"
    );
    assert_eq!(spec.min_available, Some(IntOrString::Int(2)));
    assert_eq!(
        spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("IfHealthyBudget")
    );

    // The host's disruption controller counts exactly the tenant's two pods, not the foreign one.
    let (expected, allowed) = wait_until("the host budget counting 2 pods", WAIT, || async {
        Ok(settled(&hpdbs.get(&hname).await?).filter(|(expected, _)| *expected == 2))
    })
    .await?;
    assert_eq!(
        (expected, allowed),
        (2, 0),
        "minAvailable 2 of 2 pods: no disruption allowed"
    );
    // So a host eviction of a tenant pod (a node drain) is refused...
    let synced = w.host_name(&ns.name, "a");
    let evictions: Api<Pod> = Api::namespaced(host_without_retries(&w).await?, &w.host_ns);
    match evictions.evict(&synced, &EvictParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 429 => {}
        other => anyhow::bail!("evicting {synced} must be refused by the budget (429), got {other:?}"),
    }
    // ...while the foreign pod with the same label is not guarded by it.
    evictions.evict(&foreign, &EvictParams::default()).await?;
    // The tenant sees the status its own control plane computes from the virtual pods.
    wait_until("the virtual budget counting 2 pods", WAIT, || async {
        Ok(settled(&vpdbs.get("web").await?).filter(|(expected, _)| *expected == 2))
    })
    .await?;

    // Update: one disruption allowed; the host copy and the host controller follow.
    vpdbs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
        )
        .await?;
    wait_until("the host budget updated", WAIT, || async {
        let h = hpdbs.get(&hname).await?;
        let min = h.spec.as_ref().and_then(|s| s.min_available.clone());
        Ok((min == Some(IntOrString::Int(1))).then_some(()))
    })
    .await?;
    // The executor counts a write right after the API server answers it.
    wait_until("create + patch counted", WAIT, || async {
        let n = w.metric("vnest_syncer_host_writes_total", KIND).await?;
        Ok((n >= writes_before + 2.0).then_some(n))
    })
    .await?;

    // Resync: a restarted syncer re-checks the budget and writes nothing (its counters start
    // at zero).
    let generation = hpdbs.get(&hname).await?.metadata.generation;
    w.syncer_script(&["restart"]).await?;
    wait_until("the restarted syncer caught up", WAIT, || async {
        let s = w.metric("vnest_syncer_initial_sync_seconds", &[]).await?;
        Ok((s > 0.0).then_some(()))
    })
    .await?;
    assert!(
        w.metric("vnest_syncer_reconciles_total", KIND).await? >= 1.0,
        "the budget was re-checked"
    );
    assert_eq!(
        w.metric("vnest_syncer_host_writes_total", KIND).await?,
        0.0,
        "a resync of an unchanged budget must not write to the host"
    );
    assert_eq!(hpdbs.get(&hname).await?.metadata.generation, generation);

    // Delete: the host copy goes.
    vpdbs.delete("web", &DeleteParams::default()).await?;
    wait_until("the host budget gone", WAIT, || async {
        Ok(hpdbs.get_opt(&hname).await?.is_none().then_some(()))
    })
    .await?;
    ns.delete().await
}
