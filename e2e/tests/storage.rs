//! Storage through vnest against the real control planes: the host has a default StorageClass
//! `local` (no provisioner, WaitForFirstConsumer) and a pool of 1Gi hostPath volumes
//! (`hack/up.sh`) that the host's own scheduler and PV binder bind, and a class `immediate`
//! whose volumes `hack/provisioner` makes.
//!
//! - a StatefulSet with a volumeClaimTemplate becomes Ready: virtual claims Bound to virtual
//!   volumes the syncer made, host claims Bound, host pods referencing the host claims; scaling
//!   3 → 1 → 3 keeps claims and bindings; one host write per claim (its create); a SIGKILL
//!   restart writes nothing on either side; `persistentVolumeClaimRetentionPolicy.whenScaled:
//!   Delete` removes the scaled-down replicas' claims on both sides;
//! - a resize propagates to the host claim's spec; deleting a virtual claim deletes the host
//!   copy and the virtual volume; a VolumeSnapshot data source names the host snapshot of the
//!   same name, a populator's object is refused with a Warning Event and nothing on the host; a host claim deleted out of band under a bound claim makes it
//!   Lost with a Warning (no new volume);
//! - a pod with a generic ephemeral volume runs on the host with a reference to the host copy
//!   of its claim (no `ephemeral` volume there), and the claim goes with the pod.
//! - a StatefulSet of the Immediate class `immediate` (hack/provisioner makes its host volumes)
//!   becomes Ready, keeps claims and bindings over 3 → 1 → 3, and `whenDeleted: Delete` removes
//!   its claims on both sides (and the host volumes) while `Retain` keeps them Bound;
//! - host StorageClasses appear in the virtual cluster under the tenant's names
//!   (`--storage-class-map fast=immediate`), follow host changes and deletes, and never touch a
//!   tenant's class; a claim of class `fast` gets `immediate` on the host;
//! - `--pv-sync=real` (a syncer of its own on the second virtual control plane): the virtual
//!   volume is the host volume's copy.
//!
//! Two vclusters' same-named claims: `two_vclusters.rs`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use vnest_e2e::{Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(120);

/// The tests of this binary run one at a time: one restarts the syncer and counts its host
/// writes, and they share the pool of host volumes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const KIND: &[(&str, &str)] = &[("kind", "persistentvolumeclaims")];

fn phase(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn volume_name(c: &PersistentVolumeClaim) -> String {
    c.spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default()
}

/// Makes the pool's Released volumes (of claims earlier tests deleted; reclaim policy Retain)
/// Available again, as a local static provisioner would.
async fn recycle_pool(w: &World) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(w.host.clone());
    for pv in pvs
        .list(&ListParams::default().labels("vnest.dev/test-pool=true"))
        .await?
    {
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released") {
            pvs.patch(
                &pv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"claimRef": null}})),
            )
            .await?;
        }
    }
    Ok(())
}

/// Waits until virtual claim `name` is Bound to a volume the syncer made for it, and its host
/// copy is Bound; returns (virtual claim, virtual volume, host claim).
async fn wait_bound(
    w: &World,
    ns: &str,
    name: &str,
) -> Result<(PersistentVolumeClaim, PersistentVolume, PersistentVolumeClaim)> {
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.virt.clone(), ns);
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    let vvolumes: Api<PersistentVolume> = Api::all(w.virt.clone());
    let hname = w.host_name(ns, name);
    wait_until(
        &format!("claim {ns}/{name} Bound on both sides"),
        WAIT,
        || async {
            let Some(v) = vclaims.get_opt(name).await? else {
                return Ok(None);
            };
            let Some(h) = hclaims.get_opt(&hname).await? else {
                return Ok(None);
            };
            if phase(&v) != "Bound" || phase(&h) != "Bound" {
                return Ok(None);
            }
            let Some(pv) = vvolumes.get_opt(&volume_name(&v)).await? else {
                return Ok(None);
            };
            Ok(Some((v, pv, h)))
        },
    )
    .await
}

/// Checks what a bound pair of the host's default class `local` shows the tenant.
fn check_binding(v: &PersistentVolumeClaim, pv: &PersistentVolume, h: &PersistentVolumeClaim) {
    check_binding_as(v, pv, h, "local");
}

/// Checks what a bound pair shows the tenant, whose name of the class is `class`.
fn check_binding_as(
    v: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    h: &PersistentVolumeClaim,
    class: &str,
) {
    let uid = v.uid().unwrap_or_default();
    assert_eq!(volume_name(v), format!("pvc-{uid}"));
    assert_eq!(
        v.annotations()
            .get("pv.kubernetes.io/bind-completed")
            .map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        pv.labels().get("vnest.dev/volume").map(String::as_str),
        Some("true")
    );
    let spec = pv.spec.clone().unwrap_or_default();
    let claim_ref = spec.claim_ref.clone().unwrap_or_default();
    assert_eq!(claim_ref.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(claim_ref.name, v.metadata.name);
    assert_eq!(pv.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Bound"));
    assert_eq!(
        spec.capacity,
        h.status.as_ref().and_then(|s| s.capacity.clone()),
        "the virtual volume has the host claim's capacity"
    );
    assert_eq!(
        v.status.as_ref().and_then(|s| s.capacity.clone()),
        h.status.as_ref().and_then(|s| s.capacity.clone()),
        "the status is the host's"
    );
    assert_eq!(spec.storage_class_name.as_deref(), Some(class));
    assert_eq!(
        spec.csi.map(|c| c.driver).as_deref(),
        Some("host.vnest.dev"),
        "a stub source: nothing of the host"
    );
    let text = serde_json::to_string(pv).unwrap_or_default();
    let host_volume = volume_name(h);
    assert!(
        !host_volume.is_empty() && !text.contains(&host_volume),
        "the host volume's name never shows"
    );
}

fn statefulset(name: &str, replicas: i32) -> Result<StatefulSet> {
    statefulset_of(name, replicas, None)
}

/// A StatefulSet `name` whose claims name class `class` (None: the default class).
fn statefulset_of(name: &str, replicas: i32, class: Option<&str>) -> Result<StatefulSet> {
    let mut sts: Value = json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "db", "image": "postgres",
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}
            }]
        }
    });
    if let Some(class) = class {
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = json!(class);
    }
    Ok(serde_json::from_value(sts)?)
}

async fn wait_ready(sts: &Api<StatefulSet>, replicas: i32) -> Result<()> {
    wait_ready_named(sts, "db", replicas).await
}

async fn wait_ready_named(sts: &Api<StatefulSet>, name: &str, replicas: i32) -> Result<()> {
    wait_until(
        &format!("StatefulSet {name} with {replicas} ready replicas"),
        WAIT,
        || async {
            let s = sts.get(name).await?;
            let st = s.status.unwrap_or_default();
            Ok((st.ready_replicas == Some(replicas) && st.replicas == replicas).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn statefulset_claims_bind_and_survive_scaling() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let w = World::connect().await?;
    recycle_pool(&w).await?;
    let ns = TestNs::new(&w.virt, "storage-sts").await?;
    let sts: Api<StatefulSet> = Api::namespaced(w.virt.clone(), &ns.name);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let writes_before = w.metric("vnest_syncer_host_writes_total", KIND).await?;
    let started = std::time::Instant::now();
    sts.create(&PostParams::default(), &statefulset("db", 3)?).await?;
    for i in 0..3 {
        wait_bound(&w, &ns.name, &format!("data-db-{i}")).await?;
    }
    let bound_after = started.elapsed();
    wait_ready(&sts, 3).await?;
    let ready_after = started.elapsed();

    let mut bindings = Vec::new();
    for i in 0..3 {
        let claim = format!("data-db-{i}");
        let (v, pv, h) = wait_bound(&w, &ns.name, &claim).await?;
        check_binding(&v, &pv, &h);
        let hpod = hpods.get(&w.host_name(&ns.name, &format!("db-{i}"))).await?;
        let claims: Vec<String> = hpod
            .spec
            .unwrap_or_default()
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
            .collect();
        assert_eq!(
            claims,
            [w.host_name(&ns.name, &claim)],
            "the host pod mounts the host claim"
        );
        bindings.push((v.uid(), volume_name(&v), volume_name(&h)));
    }
    let writes = w.metric("vnest_syncer_host_writes_total", KIND).await? - writes_before;
    println!(
        "through vnest: 3 claims Bound on both sides after {bound_after:?}, the StatefulSet Ready after {ready_after:?}; host writes for claims: {writes}"
    );
    assert_eq!(writes, 3.0, "one host write per claim: its create");

    // 3 -> 1 -> 3: the claims (retention: Retain) and their bindings stay.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_ready(&sts, 1).await?;
    wait_until("the host pods of db-1 and db-2 gone", WAIT, || async {
        let mut gone = true;
        for i in [1, 2] {
            gone &= hpods
                .get_opt(&w.host_name(&ns.name, &format!("db-{i}")))
                .await?
                .is_none();
        }
        Ok(gone.then_some(()))
    })
    .await?;
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    wait_ready(&sts, 3).await?;
    for (i, before) in bindings.iter().enumerate() {
        let (v, pv, h) = wait_bound(&w, &ns.name, &format!("data-db-{i}")).await?;
        check_binding(&v, &pv, &h);
        assert_eq!(
            &(v.uid(), volume_name(&v), volume_name(&h)),
            before,
            "claim {i} kept its binding"
        );
    }
    let writes = w.metric("vnest_syncer_host_writes_total", KIND).await? - writes_before;
    assert_eq!(writes, 3.0, "scaling writes no claim on the host");

    // A restart re-checks every claim and volume and writes nothing, on either side.
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.virt.clone(), &ns.name);
    let vvolumes: Api<PersistentVolume> = Api::all(w.virt.clone());
    let mut versions = Vec::new();
    for (i, (_, pv, _)) in bindings.iter().enumerate() {
        let claim = vclaims.get(&format!("data-db-{i}")).await?;
        let volume = vvolumes.get(pv).await?;
        versions.push((claim.resource_version(), volume.resource_version()));
    }
    let vclasses: Api<StorageClass> = Api::all(w.virt.clone());
    let class_versions = [
        vclasses.get("local").await?.resource_version(),
        vclasses.get("fast").await?.resource_version(),
    ];
    w.syncer_script(&["restart", "KILL"]).await?;
    wait_until("the restarted syncer caught up", WAIT, || async {
        let s = w.metric("vnest_syncer_initial_sync_seconds", &[]).await?;
        Ok((s > 0.0).then_some(()))
    })
    .await?;
    assert_eq!(
        w.metric("vnest_syncer_host_writes_total", KIND).await?,
        0.0,
        "a resync writes no claim on the host"
    );
    for (i, (_, pv, _)) in bindings.iter().enumerate() {
        let claim = vclaims.get(&format!("data-db-{i}")).await?;
        let volume = vvolumes.get(pv).await?;
        assert_eq!(
            (claim.resource_version(), volume.resource_version()),
            versions[i],
            "a resync writes neither claim {i} nor its volume in the virtual cluster"
        );
    }
    assert_eq!(
        [
            vclasses.get("local").await?.resource_version(),
            vclasses.get("fast").await?.resource_version(),
        ],
        class_versions,
        "a resync writes no copied StorageClass"
    );

    // persistentVolumeClaimRetentionPolicy: the virtual controller deletes the claims of
    // scaled-down replicas; their host copies and virtual volumes follow.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1,
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"}}})),
    )
    .await?;
    wait_ready(&sts, 1).await?;
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    for (i, (_, pv, _)) in bindings.iter().enumerate().skip(1) {
        let claim = format!("data-db-{i}");
        wait_gone(
            &vclaims,
            &claim,
            &format!("virtual claim {claim} deleted by the retention policy"),
        )
        .await?;
        wait_gone(
            &hclaims,
            &w.host_name(&ns.name, &claim),
            &format!("host claim of {claim} gone"),
        )
        .await?;
        wait_gone(&vvolumes, pv, &format!("virtual volume of {claim} gone")).await?;
    }
    assert_eq!(
        phase(&vclaims.get("data-db-0").await?),
        "Bound",
        "the claim of the remaining replica stays"
    );

    // The same StatefulSet directly on the host, for comparison (same run, same pool).
    let direct = format!("direct-{}", ns.name);
    let hsts: Api<StatefulSet> = Api::namespaced(w.host.clone(), &w.host_ns);
    let started = std::time::Instant::now();
    hsts.create(&PostParams::default(), &statefulset(&direct, 3)?)
        .await?;
    for i in 0..3 {
        let name = format!("data-{direct}-{i}");
        wait_until(&format!("host claim {name} Bound"), WAIT, || async {
            Ok(hclaims
                .get_opt(&name)
                .await?
                .filter(|c| phase(c) == "Bound")
                .map(|_| ()))
        })
        .await?;
    }
    println!(
        "directly on the host: 3 claims Bound after {:?} (through vnest: {bound_after:?})",
        started.elapsed()
    );
    hsts.delete(&direct, &DeleteParams::default()).await?;
    for i in 0..3 {
        hclaims
            .delete(&format!("data-{direct}-{i}"), &DeleteParams::default())
            .await?;
    }
    ns.delete().await?;
    Ok(())
}

fn claim(name: &str, class: Option<&str>, storage: &str) -> Result<PersistentVolumeClaim> {
    let mut c = json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}
    });
    if let Some(class) = class {
        c["spec"]["storageClassName"] = json!(class);
    }
    Ok(serde_json::from_value(c)?)
}

fn pod_with_claim(name: &str, claim: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "busybox",
                                 "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}
    }))?)
}

async fn wait_warning(w: &World, ns: &str, name: &str, reason: &str) -> Result<Event> {
    let events: Api<Event> = Api::namespaced(w.virt.clone(), ns);
    wait_until(&format!("a Warning {reason} on {ns}/{name}"), WAIT, || async {
        Ok(events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await?
            .items
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason)))
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_until(what, WAIT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

#[tokio::test]
async fn claims_resize_delete_refuse_and_get_lost() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let w = World::connect().await?;
    recycle_pool(&w).await?;
    let ns = TestNs::new(&w.virt, "storage-claims").await?;
    let n = ns.name.as_str();
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.virt.clone(), n);
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), n);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let vvolumes: Api<PersistentVolume> = Api::all(w.virt.clone());
    // The virtual cluster's own admission allows a resize only for a class that allows it.
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "local"},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true
    }))?;
    match Api::<StorageClass>::all(w.virt.clone())
        .create(&PostParams::default(), &class)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }

    // Bound through a pod (WaitForFirstConsumer), then resized.
    vclaims
        .create(&PostParams::default(), &claim("grow", Some("local"), "500Mi")?)
        .await?;
    vpods
        .create(&PostParams::default(), &pod_with_claim("grower", "grow")?)
        .await?;
    let (v, pv, h) = wait_bound(&w, n, "grow").await?;
    check_binding(&v, &pv, &h);
    vclaims
        .patch(
            "grow",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}})),
        )
        .await?;
    let hname = w.host_name(n, "grow");
    wait_until("the host claim's request grown to 1Gi", WAIT, || async {
        let h = hclaims.get(&hname).await?;
        let storage = h
            .spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        Ok((storage.map(|q| q.0).as_deref() == Some("1Gi")).then_some(()))
    })
    .await?;

    // Deleting the virtual claim (after its pod) deletes the host copy and the virtual volume.
    vpods.delete("grower", &DeleteParams::default()).await?;
    wait_gone(&hpods, &w.host_name(n, "grower"), "the host pod grower gone").await?;
    vclaims.delete("grow", &DeleteParams::default()).await?;
    wait_gone(&hclaims, &hname, "the host claim of grow gone").await?;
    wait_gone(&vvolumes, &pv.name_any(), "the virtual volume of grow gone").await?;

    // A VolumeSnapshot as data source: the host claim names the host snapshot of the same
    // name (vnest does not copy snapshots: it must exist there under that name).
    let mut snap = claim("from-snapshot", None, "100Mi")?;
    snap.spec.get_or_insert_default().data_source = Some(serde_json::from_value(
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "nightly"}),
    )?);
    vclaims.create(&PostParams::default(), &snap).await?;
    let hsnap = w.host_name(n, "from-snapshot");
    let h = wait_until("the host claim of from-snapshot", WAIT, || async {
        hclaims.get_opt(&hsnap).await.map_err(Into::into)
    })
    .await?;
    let spec = h.spec.unwrap_or_default();
    let want = w.host_name(n, "nightly");
    assert_eq!(
        spec.data_source.map(|d| (d.api_group, d.kind, d.name)),
        Some((
            Some("snapshot.storage.k8s.io".into()),
            "VolumeSnapshot".into(),
            want.clone()
        ))
    );
    assert_eq!(spec.data_source_ref.map(|d| d.name), Some(want));
    vclaims.delete("from-snapshot", &DeleteParams::default()).await?;
    wait_gone(&hclaims, &hsnap, "the host claim of from-snapshot gone").await?;

    // A populator's object as data source: refused, nothing on the host.
    let mut populated = claim("from-populator", None, "100Mi")?;
    populated.spec.get_or_insert_default().data_source_ref = Some(serde_json::from_value(
        json!({"apiGroup": "populators.example.com", "kind": "Sample", "name": "seed"}),
    )?);
    vclaims.create(&PostParams::default(), &populated).await?;
    let event = wait_warning(&w, n, "from-populator", "SyncRefused").await?;
    assert!(
        event
            .message
            .unwrap_or_default()
            .contains("populators.example.com/Sample"),
        "the Warning names what is not supported"
    );
    assert!(
        hclaims
            .get_opt(&w.host_name(n, "from-populator"))
            .await?
            .is_none(),
        "nothing on the host"
    );

    // A bound claim whose host claim is deleted out of band: Lost, a Warning, no new claim.
    vclaims
        .create(&PostParams::default(), &claim("fragile", None, "100Mi")?)
        .await?;
    vpods
        .create(&PostParams::default(), &pod_with_claim("user", "fragile")?)
        .await?;
    let (v, _, _) = wait_bound(&w, n, "fragile").await?;
    vpods.delete("user", &DeleteParams::default()).await?;
    wait_gone(&hpods, &w.host_name(n, "user"), "the host pod user gone").await?;
    let fragile = w.host_name(n, "fragile");
    hclaims.delete(&fragile, &DeleteParams::default()).await?;
    wait_until("the virtual claim Lost", WAIT, || async {
        Ok(vclaims
            .get_opt("fragile")
            .await?
            .filter(|c| phase(c) == "Lost" && c.uid() == v.uid())
            .map(|_| ()))
    })
    .await?;
    let event = wait_warning(&w, n, "fragile", "HostVolumeLost").await?;
    assert!(event.message.unwrap_or_default().contains("the data is gone"));
    assert!(
        hclaims.get_opt(&fragile).await?.is_none(),
        "never a silent new volume"
    );
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn generic_ephemeral_volumes_run_and_go_with_their_pod() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let w = World::connect().await?;
    recycle_pool(&w).await?;
    let ns = TestNs::new(&w.virt, "storage-eph").await?;
    let n = ns.name.as_str();
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), n);
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "eph"},
        "spec": {"containers": [{"name": "main", "image": "busybox",
                                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                 "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}}}}]}
    }))?;
    vpods.create(&PostParams::default(), &pod).await?;
    wait_until("the virtual pod eph Running", WAIT, || async {
        let p = vpods.get("eph").await?;
        Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
    })
    .await?;
    let (v, pv, h) = wait_bound(&w, n, "eph-scratch").await?;
    check_binding(&v, &pv, &h);
    let hpod = hpods.get(&w.host_name(n, "eph")).await?;
    let volume = hpod
        .spec
        .unwrap_or_default()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "scratch")
        .ok_or_else(|| anyhow::anyhow!("the host pod has no volume scratch"))?;
    assert!(
        volume.ephemeral.is_none(),
        "the host's ephemeral-volume controller has nothing to act on"
    );
    assert_eq!(
        volume.persistent_volume_claim.map(|c| c.claim_name),
        Some(w.host_name(n, "eph-scratch"))
    );

    vpods.delete("eph", &DeleteParams::default()).await?;
    wait_gone(
        &hclaims,
        &w.host_name(n, "eph-scratch"),
        "the host claim of eph-scratch gone",
    )
    .await?;
    ns.delete().await?;
    Ok(())
}

/// The syncer's host requests on claims so far, watches (long-lived, re-opened now and then)
/// aside.
async fn host_claim_requests(w: &World) -> Result<f64> {
    let mut sum = 0.0;
    for verb in ["create", "patch", "update", "delete", "get", "list"] {
        sum += w
            .metric(
                "vnest_syncer_api_requests_total",
                &[
                    ("cluster", "host"),
                    ("resource", "persistentvolumeclaims"),
                    ("verb", verb),
                ],
            )
            .await?;
    }
    Ok(sum)
}

/// Waits until host claim `name` (made directly on the host) is Bound.
async fn wait_host_bound(hclaims: &Api<PersistentVolumeClaim>, name: &str) -> Result<PersistentVolumeClaim> {
    wait_until(&format!("host claim {name} Bound"), WAIT, || async {
        Ok(hclaims.get_opt(name).await?.filter(|c| phase(c) == "Bound"))
    })
    .await
}

#[tokio::test]
async fn immediate_class_statefulsets_bind_scale_and_follow_their_retention_policy() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let w = World::connect().await?;
    let ns = TestNs::new(&w.virt, "storage-imm").await?;
    let n = ns.name.as_str();
    let sts: Api<StatefulSet> = Api::namespaced(w.virt.clone(), n);
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.virt.clone(), n);
    let vvolumes: Api<PersistentVolume> = Api::all(w.virt.clone());
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hvolumes: Api<PersistentVolume> = Api::all(w.host.clone());
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);

    // 3 replicas whose claims the host's provisioner binds at once (binding mode Immediate).
    let writes_before = w.metric("vnest_syncer_host_writes_total", KIND).await?;
    let requests_before = host_claim_requests(&w).await?;
    let started = std::time::Instant::now();
    sts.create(
        &PostParams::default(),
        &statefulset_of("db", 3, Some("immediate"))?,
    )
    .await?;
    for i in 0..3 {
        wait_bound(&w, n, &format!("data-db-{i}")).await?;
    }
    let bound_after = started.elapsed();
    wait_ready(&sts, 3).await?;
    let mut bindings = Vec::new();
    for i in 0..3 {
        let (v, pv, h) = wait_bound(&w, n, &format!("data-db-{i}")).await?;
        check_binding_as(&v, &pv, &h, "immediate");
        assert_eq!(
            pv.spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref()),
            Some("Delete"),
            "the host class's reclaim policy"
        );
        let hpv = hvolumes.get(&volume_name(&h)).await?;
        assert!(
            hpv.spec.and_then(|s| s.host_path).is_some(),
            "a hostPath volume the test provisioner made"
        );
        bindings.push((v.uid(), volume_name(&v), volume_name(&h)));
    }
    let writes = w.metric("vnest_syncer_host_writes_total", KIND).await? - writes_before;
    println!(
        "immediate class through vnest: 3 claims Bound on both sides after {bound_after:?}; host writes for claims: {writes}"
    );
    assert_eq!(writes, 3.0, "one host write per claim: its create");

    // 3 -> 1 -> 3 keeps the claims and their bindings.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_ready(&sts, 1).await?;
    for i in [1, 2] {
        wait_gone(
            &hpods,
            &w.host_name(n, &format!("db-{i}")),
            "the host pod of a scaled-down replica gone",
        )
        .await?;
    }
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    wait_ready(&sts, 3).await?;
    for (i, before) in bindings.iter().enumerate() {
        let (v, _, h) = wait_bound(&w, n, &format!("data-db-{i}")).await?;
        assert_eq!(
            &(v.uid(), volume_name(&v), volume_name(&h)),
            before,
            "claim {i} kept its binding"
        );
    }

    // whenDeleted: Delete: deleting the StatefulSet deletes its claims (the virtual
    // controllers), their host copies, the virtual volumes, and the provisioner's host volumes.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"persistentVolumeClaimRetentionPolicy":
            {"whenDeleted": "Delete", "whenScaled": "Retain"}}})),
    )
    .await?;
    wait_until(
        "the retention policy in the StatefulSet's status",
        WAIT,
        || async {
            let s = sts.get("db").await?;
            let observed = s.status.and_then(|st| st.observed_generation);
            Ok((observed >= s.metadata.generation).then_some(()))
        },
    )
    .await?;
    sts.delete("db", &DeleteParams::default()).await?;
    for (i, (_, pv, hpv)) in bindings.iter().enumerate() {
        let claim = format!("data-db-{i}");
        wait_gone(
            &vclaims,
            &claim,
            &format!("virtual claim {claim} deleted with the StatefulSet"),
        )
        .await?;
        wait_gone(
            &hclaims,
            &w.host_name(n, &claim),
            &format!("host claim of {claim} gone"),
        )
        .await?;
        wait_gone(&vvolumes, pv, &format!("virtual volume of {claim} gone")).await?;
        wait_gone(
            &hvolumes,
            hpv,
            &format!("host volume of {claim} deleted (reclaim Delete)"),
        )
        .await?;
    }
    let requests = host_claim_requests(&w).await? - requests_before;
    println!(
        "host requests on persistentvolumeclaims (watches aside) for 3 claims' whole lifecycle (create, scale 3-1-3, delete): {requests}"
    );

    // whenDeleted: Retain: the claims stay Bound on both sides.
    let mut keep = statefulset_of("keep", 2, Some("immediate"))?;
    keep.spec
        .get_or_insert_default()
        .persistent_volume_claim_retention_policy = Some(serde_json::from_value(
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    )?);
    sts.create(&PostParams::default(), &keep).await?;
    wait_ready_named(&sts, "keep", 2).await?;
    let mut kept = Vec::new();
    for i in 0..2 {
        let (v, _, h) = wait_bound(&w, n, &format!("data-keep-{i}")).await?;
        kept.push((v.uid(), volume_name(&v), volume_name(&h)));
    }
    sts.delete("keep", &DeleteParams::default()).await?;
    wait_gone(&sts, "keep", "StatefulSet keep gone").await?;
    for i in 0..2 {
        wait_gone(
            &hpods,
            &w.host_name(n, &format!("keep-{i}")),
            "the host pods of keep gone",
        )
        .await?;
    }
    for (i, before) in kept.iter().enumerate() {
        let (v, _, h) = wait_bound(&w, n, &format!("data-keep-{i}")).await?;
        assert_eq!(
            &(v.uid(), volume_name(&v), volume_name(&h)),
            before,
            "claim {i} of keep retained with its binding"
        );
    }
    // Gone before the next test (which counts host writes across a restart).
    for i in 0..2 {
        let claim = format!("data-keep-{i}");
        vclaims.delete(&claim, &DeleteParams::default()).await?;
        wait_gone(
            &hclaims,
            &w.host_name(n, &claim),
            "a retained claim's host copy gone",
        )
        .await?;
    }

    // The same StatefulSet directly on the host, for comparison (same run, same class).
    let direct = format!("direct-{n}");
    let hsts: Api<StatefulSet> = Api::namespaced(w.host.clone(), &w.host_ns);
    let started = std::time::Instant::now();
    hsts.create(
        &PostParams::default(),
        &statefulset_of(&direct, 3, Some("immediate"))?,
    )
    .await?;
    for i in 0..3 {
        wait_host_bound(&hclaims, &format!("data-{direct}-{i}")).await?;
    }
    println!(
        "immediate class directly on the host: 3 claims Bound after {:?} (through vnest: {bound_after:?})",
        started.elapsed()
    );
    hsts.delete(&direct, &DeleteParams::default()).await?;
    for i in 0..3 {
        hclaims
            .delete(&format!("data-{direct}-{i}"), &DeleteParams::default())
            .await?;
    }
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn host_storage_classes_are_copied_and_mapped() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let w = World::connect().await?;
    let vclasses: Api<StorageClass> = Api::all(w.virt.clone());
    let hclasses: Api<StorageClass> = Api::all(w.host.clone());
    let ours =
        |c: &StorageClass| c.labels().get("vnest.dev/host-storageclass").map(String::as_str) == Some("true");

    // The world's classes: `local` (the default) under its own name, `immediate` as `fast`.
    let local = wait_until("the copy of host class local", WAIT, || async {
        Ok(vclasses.get_opt("local").await?.filter(|c| ours(c)))
    })
    .await?;
    assert_eq!(
        local
            .annotations()
            .get("storageclass.kubernetes.io/is-default-class")
            .map(String::as_str),
        Some("true"),
        "the host's default is the tenant's default"
    );
    let fast = wait_until("the copy of host class immediate, as fast", WAIT, || async {
        Ok(vclasses.get_opt("fast").await?.filter(|c| ours(c)))
    })
    .await?;
    assert_eq!(fast.provisioner, "vnest.dev/hostpath");
    assert_eq!(fast.volume_binding_mode.as_deref(), Some("Immediate"));
    assert!(
        vclasses.get_opt("immediate").await?.is_none(),
        "a mapped host class shows under the tenant's name only"
    );

    // A new host class appears, follows the host's changes, and goes with it.
    let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
    let name = format!("e2e-class-{suffix:06x}");
    hclasses
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name}, "provisioner": "example.com/e2e",
                                           "parameters": {"tier": "gold"}}),
            )?,
        )
        .await?;
    let copy = wait_until("the new host class copied", WAIT, || async {
        Ok(vclasses.get_opt(&name).await?.filter(|c| ours(c)))
    })
    .await?;
    assert_eq!(
        copy.parameters
            .as_ref()
            .and_then(|p| p.get("tier"))
            .map(String::as_str),
        Some("gold")
    );
    hclasses
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"allowVolumeExpansion": true})),
        )
        .await?;
    wait_until("the host change copied", WAIT, || async {
        Ok(vclasses
            .get_opt(&name)
            .await?
            .filter(|c| c.allow_volume_expansion == Some(true))
            .map(|_| ()))
    })
    .await?;
    hclasses.delete(&name, &DeleteParams::default()).await?;
    wait_gone(&vclasses, &name, "the copy of a deleted host class gone").await?;

    // A tenant's own class is never touched, even when the host has a class of its name.
    let tenant = format!("e2e-tenant-{suffix:06x}");
    vclasses
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": tenant}, "provisioner": "tenant.example.com"}),
            )?,
        )
        .await?;
    hclasses
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": tenant}, "provisioner": "example.com/e2e"}))?,
        )
        .await?;
    let other = format!("e2e-marker-{suffix:06x}");
    hclasses
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": other}, "provisioner": "example.com/e2e"}))?,
        )
        .await?;
    // Classes are synced in order of events: once a later host class is copied, the earlier
    // one was seen too.
    wait_until("a later host class copied", WAIT, || async {
        Ok(vclasses.get_opt(&other).await?.map(|_| ()))
    })
    .await?;
    let kept = vclasses.get(&tenant).await?;
    assert_eq!(
        kept.provisioner, "tenant.example.com",
        "the tenant's class untouched"
    );
    assert!(!ours(&kept));
    hclasses.delete(&tenant, &DeleteParams::default()).await?;
    hclasses.delete(&other, &DeleteParams::default()).await?;
    wait_gone(&vclasses, &other, "the copy of a deleted host class gone").await?;
    assert!(
        vclasses.get_opt(&tenant).await?.is_some(),
        "the tenant's class stays"
    );
    vclasses.delete(&tenant, &DeleteParams::default()).await?;

    // A claim naming the tenant's name `fast` gets the host class `immediate`; its volume shows `fast`.
    let ns = TestNs::new(&w.virt, "storage-class").await?;
    let n = ns.name.as_str();
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.virt.clone(), n);
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    vclaims
        .create(&PostParams::default(), &claim("mapped", Some("fast"), "100Mi")?)
        .await?;
    let (v, pv, h) = wait_bound(&w, n, "mapped").await?;
    check_binding_as(&v, &pv, &h, "fast");
    assert_eq!(
        h.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some("immediate"),
        "the host claim names the host class"
    );
    vclaims.delete("mapped", &DeleteParams::default()).await?;
    wait_gone(
        &hclaims,
        &w.host_name(n, "mapped"),
        "the host claim of mapped gone",
    )
    .await?;

    // The reclaim policy of a provisioned host volume is its class's: Retain shows as Retain.
    let retain = format!("e2e-retain-{suffix:06x}");
    hclasses
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": retain}, "provisioner": "vnest.dev/hostpath",
                                           "reclaimPolicy": "Retain", "volumeBindingMode": "Immediate"}),
            )?,
        )
        .await?;
    vclaims
        .create(&PostParams::default(), &claim("kept", Some(&retain), "100Mi")?)
        .await?;
    let (v, pv, h) = wait_bound(&w, n, "kept").await?;
    check_binding_as(&v, &pv, &h, &retain);
    assert_eq!(
        pv.spec
            .and_then(|s| s.persistent_volume_reclaim_policy)
            .as_deref(),
        Some("Retain"),
        "the host volume's reclaim policy, known from its class"
    );
    vclaims.delete("kept", &DeleteParams::default()).await?;
    wait_gone(&hclaims, &w.host_name(n, "kept"), "the host claim of kept gone").await?;
    // Retained on the host (Released): removed here by the platform, as it would be.
    let hvolumes: Api<PersistentVolume> = Api::all(w.host.clone());
    hvolumes
        .delete(&volume_name(&h), &DeleteParams::default())
        .await?;
    hclasses.delete(&retain, &DeleteParams::default()).await?;
    ns.delete().await?;
    Ok(())
}

/// `--pv-sync=real`, on the world's second virtual control plane (VIRTUAL2_KUBECONFIG) with a
/// syncer of its own, as `two_vclusters.rs` runs one: the virtual volume is the host volume's
/// copy (its hostPath, its reclaim policy), bound to the virtual claim.
#[tokio::test]
async fn real_volumes_copy_the_host_volume() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let w = World::connect().await?;
    let kubeconfig2 = w.env.get("VIRTUAL2_KUBECONFIG")?;
    anyhow::ensure!(
        !kubeconfig2.is_empty(),
        "no second virtual control plane: start the world without SECOND_VCLUSTER=0"
    );
    let virt2 = vnest_e2e::client_from(std::path::Path::new(kubeconfig2)).await?;
    let vc = format!("vc3-{:04x}", rand::random::<u32>() & 0xffff);

    // The vcluster's host owner objects, as its manifests would make them, and the read access
    // to host PersistentVolumes that components/real-volumes grants.
    let owners: Api<StatefulSet> = Api::namespaced(w.host.clone(), &w.host_ns);
    owners
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": vc},
                "spec": {"replicas": 0, "serviceName": vc,
                         "selector": {"matchLabels": {"vnest.dev/vcluster": vc}},
                         "template": {"metadata": {"labels": {"vnest.dev/vcluster": vc}},
                                      "spec": {"containers": [{"name": "k3s", "image": "rancher/k3s"}]}}}
            }))?,
        )
        .await?;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": vc},
                "spec": {"selector": {"vnest.dev/vcluster": vc}, "ports": [{"name": "https", "port": 443}]}}))?,
        )
        .await?;
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(w.host.clone());
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(w.host.clone());
    let rbac = format!("vnest-e2e-volume-reader-{vc}");
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": rbac},
                "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list", "watch"]}]}))?,
        )
        .await?;
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": rbac},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rbac},
                "subjects": [{"kind": "ServiceAccount", "name": w.vcluster, "namespace": w.host_ns}]}))?,
        )
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(format!("{}/syncer-{vc}.log", w.env.get("LOG_DIR")?))?;
    let data_dir = std::path::Path::new(kubeconfig2)
        .ancestors()
        .nth(3)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut syncer = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args([
            "syncer",
            "--name",
            &vc,
            "--owner-name",
            &vc,
            "--service-name",
            &vc,
        ])
        .args(["--host-namespace", &w.host_ns])
        .args(["--workload-service-account", &format!("{}-workload", w.vcluster)])
        .args(["--host-kubeconfig", w.env.get("SYNCER_HOST_KUBECONFIG")?])
        .args(["--virtual-kubeconfig", kubeconfig2])
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
            "--dns-addr",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", &data_dir, "--kubelet-listen-addr", "127.0.0.1:0"])
        .args(["--pv-sync", "real", "--pod-token-storage", "secret"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until("the real-volume syncer ready", WAIT, || async {
        Ok(matches!(vnest_e2e::http_get(&ready).await, Ok((200, _))).then_some(()))
    })
    .await?;

    let ns = TestNs::new(&virt2, "storage-real").await?;
    let n = ns.name.clone();
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(virt2.clone(), &n);
    let vvolumes: Api<PersistentVolume> = Api::all(virt2.clone());
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hvolumes: Api<PersistentVolume> = Api::all(w.host.clone());
    vclaims
        .create(
            &PostParams::default(),
            &claim("real", Some("immediate"), "100Mi")?,
        )
        .await?;
    let hname = vnest::naming::host_name(&vc, &n, "real");
    let (v, pv) = wait_until("the claim Bound to a copy of the host volume", WAIT, || async {
        let Some(v) = vclaims.get_opt("real").await?.filter(|c| phase(c) == "Bound") else {
            return Ok(None);
        };
        Ok(vvolumes.get_opt(&volume_name(&v)).await?.map(|pv| (v, pv)))
    })
    .await?;
    let h = hclaims.get(&hname).await?;
    let hpv = hvolumes.get(&volume_name(&h)).await?;
    let (spec, hspec) = (
        pv.spec.clone().unwrap_or_default(),
        hpv.spec.clone().unwrap_or_default(),
    );
    assert_eq!(volume_name(&v), format!("pvc-{}", v.uid().unwrap_or_default()));
    assert_eq!(
        spec.host_path.as_ref().map(|p| &p.path),
        hspec.host_path.as_ref().map(|p| &p.path),
        "the host volume's source"
    );
    assert!(spec.csi.is_none(), "no stub");
    assert_eq!(
        spec.persistent_volume_reclaim_policy,
        hspec.persistent_volume_reclaim_policy
    );
    assert_eq!(spec.capacity, hspec.capacity);
    assert_eq!(spec.storage_class_name.as_deref(), Some("immediate"));
    assert_eq!(
        spec.claim_ref.and_then(|r| r.uid),
        v.uid(),
        "bound to the virtual claim"
    );
    assert_eq!(
        pv.labels().get("vnest.dev/volume").map(String::as_str),
        Some("true")
    );

    vclaims.delete("real", &DeleteParams::default()).await?;
    wait_gone(&hclaims, &hname, "the host claim gone").await?;
    wait_gone(&vvolumes, &pv.name_any(), "the virtual volume gone").await?;

    owners.delete(&vc, &DeleteParams::background()).await?;
    let _ = syncer.kill().await;
    bindings.delete(&rbac, &DeleteParams::default()).await?;
    roles.delete(&rbac, &DeleteParams::default()).await?;
    services.delete(&vc, &DeleteParams::default()).await?;
    ns.delete().await?;
    Ok(())
}
