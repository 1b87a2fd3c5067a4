//! A nested vcluster: an inner vcluster whose host is the world's vcluster. The inner syncer's
//! host API is the outer VIRTUAL API server, its host namespace a namespace of the outer
//! virtual cluster, its identity a ServiceAccount there with the manifests' Role (namespaced,
//! nothing more). The inner control plane comes from `hack/extra-vcluster.sh` (one k3s server
//! over SQLite); this test runs the inner syncer as a process.
//!
//! A pod created in the inner cluster runs on the real host through both syncers, its status
//! comes back through both (the inner pod shows the host pod's IP) and so do its logs (inner
//! kubelet endpoint -> outer virtual `pods/log` -> outer kubelet endpoint -> host); deleting the
//! inner vcluster's owner object cleans both layers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{AuthInfo, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use vnest::markers;
use vnest::naming::host_name;
use vnest_e2e::extra_vcluster::ExtraVcluster;
use vnest_e2e::{Result, TestNs, World, client_from, http_get, kubectl, wait_until};

const WAIT: Duration = Duration::from_secs(120);
const INNER: &str = "inner";

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The Role of `manifests/base/rbac.yaml` (what the syncer may do in its host namespace).
fn base_role() -> Result<Role> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base/rbac.yaml");
    let text = std::fs::read_to_string(path)?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == "Role" {
            return Ok(serde_json::from_value(v)?);
        }
    }
    anyhow::bail!("no Role in manifests/base/rbac.yaml")
}

/// The inner syncer's host: in the outer virtual cluster, namespace `ns`, ServiceAccount
/// `inner` with the manifests' Role, and the inner vcluster's owner StatefulSet and Service.
async fn outer_objects(outer: &Client, ns: &str) -> Result<()> {
    let pp = PostParams::default();
    for sa in [INNER.to_owned(), format!("{INNER}-workload")] {
        Api::<ServiceAccount>::namespaced(outer.clone(), ns)
            .create(&pp, &obj(json!({"metadata": {"name": sa}}))?)
            .await?;
    }
    let mut role = base_role()?;
    role.metadata = obj(json!({"name": INNER}))?;
    Api::<Role>::namespaced(outer.clone(), ns)
        .create(&pp, &role)
        .await?;
    Api::<RoleBinding>::namespaced(outer.clone(), ns)
        .create(
            &pp,
            &obj(json!({"metadata": {"name": INNER},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": INNER},
                "subjects": [{"kind": "ServiceAccount", "name": INNER, "namespace": ns}]}))?,
        )
        .await?;
    Api::<StatefulSet>::namespaced(outer.clone(), ns)
        .create(
            &pp,
            &obj(json!({"metadata": {"name": INNER},
                "spec": {"replicas": 0, "serviceName": INNER,
                         "selector": {"matchLabels": {"vnest.dev/vcluster": INNER}},
                         "template": {"metadata": {"labels": {"vnest.dev/vcluster": INNER}},
                                      "spec": {"containers": [{"name": "k3s", "image": "rancher/k3s"}]}}}}))?,
        )
        .await?;
    Api::<Service>::namespaced(outer.clone(), ns)
        .create(
            &pp,
            &obj(json!({"metadata": {"name": INNER},
                "spec": {"selector": {"vnest.dev/vcluster": INNER},
                         "ports": [{"name": "https", "port": 443}, {"name": "kubelet", "port": 10250}]}}))?,
        )
        .await?;
    Ok(())
}

/// A kubeconfig for the outer virtual API server with `token` (the inner syncer's identity).
fn outer_kubeconfig(outer_admin: &Path, token: &str, ns: &str, out: &Path) -> Result<()> {
    let mut kc = Kubeconfig::read_from(outer_admin)?;
    for named in &mut kc.auth_infos {
        named.auth_info = Some(AuthInfo {
            token: Some(token.to_owned().into()),
            ..AuthInfo::default()
        });
    }
    for ctx in &mut kc.contexts {
        if let Some(c) = ctx.context.as_mut() {
            c.namespace = Some(ns.to_owned());
        }
    }
    std::fs::write(out, serde_yaml::to_string(&kc)?)?;
    Ok(())
}

#[tokio::test]
async fn a_vcluster_inside_a_vcluster_runs_pods_on_the_host_through_both() -> Result<()> {
    let w = World::connect().await?;
    let inner_cp = ExtraVcluster::up(&w.env, "nested", 1, "sqlite").await?;
    let inner_admin = inner_cp.env.path("VC_KUBECONFIG_1")?;
    let inner = client_from(&inner_admin).await?;

    // The inner vcluster's home: a namespace of the outer virtual cluster.
    let home = TestNs::new(&w.virt, "nested").await?;
    outer_objects(&w.virt, &home.name).await?;
    let kubectl_bin = w.env.path("KUBECTL")?;
    let virtual_kubeconfig = w.env.path("VIRTUAL_KUBECONFIG")?;
    let out = kubectl(
        &kubectl_bin,
        &virtual_kubeconfig,
        &["-n", &home.name, "create", "token", INNER, "--duration", "2h"],
    )
    .await?;
    anyhow::ensure!(
        out.status.success(),
        "token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_kubeconfig: PathBuf = inner_cp.dir.join("outer.kubeconfig");
    outer_kubeconfig(
        &virtual_kubeconfig,
        String::from_utf8_lossy(&out.stdout).trim(),
        &home.name,
        &host_kubeconfig,
    )?;

    // The inner syncer: host = the outer virtual API server, as that namespace's ServiceAccount.
    let (admin, kubelet) = (free_port()?, free_port()?);
    let log = std::fs::File::create(PathBuf::from(inner_cp.env.get("VC_LOG_DIR")?).join("syncer-inner.log"))?;
    let mut syncer = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args(["syncer", "--name", INNER, "--host-namespace", &home.name])
        .arg("--host-kubeconfig")
        .arg(&host_kubeconfig)
        .arg("--data-dir")
        .arg(inner_cp.env.path("VC_DATA_DIR_1")?)
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
            "--dns-addr",
            "127.0.0.1:0",
        ])
        .args(["--kubelet-listen-addr", &format!("127.0.0.1:{kubelet}")])
        .args([
            "--kubelet-address",
            "127.0.0.1",
            "--kubelet-port",
            &kubelet.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    wait_until(
        "the inner syncer ready (both its clusters reachable)",
        WAIT,
        || async { Ok(matches!(http_get(&ready).await, Ok((200, _))).then_some(())) },
    )
    .await?;

    // A tenant of the inner vcluster.
    let ns = "app";
    Api::<Namespace>::all(inner.clone())
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": ns}}))?)
        .await?;
    let sa: Api<ServiceAccount> = Api::namespaced(inner.clone(), ns);
    wait_until("ServiceAccount default in the inner cluster", WAIT, || async {
        Ok(sa.get_opt("default").await?.map(|_| ()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(inner.clone(), ns);
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "web", "labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "main", "image": "nginx"}]}}))?,
    )
    .await?;
    let running = wait_until("the inner pod Running (through both syncers)", WAIT, || async {
        Ok(pods
            .get_opt("web")
            .await?
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
    })
    .await?;

    // Two translations: inner -> outer virtual, outer virtual -> host.
    let middle = host_name(INNER, ns, "web");
    let bottom = w.host_name(&home.name, &middle);
    let middle_pod = Api::<Pod>::namespaced(w.virt.clone(), &home.name)
        .get(&middle)
        .await?;
    let host_pod = Api::<Pod>::namespaced(w.host.clone(), &w.host_ns)
        .get(&bottom)
        .await?;
    assert_eq!(
        middle_pod
            .labels()
            .get(markers::LABEL_MANAGED_BY)
            .map(String::as_str),
        Some(INNER),
        "the outer virtual pod is the inner syncer's"
    );
    assert_eq!(
        host_pod
            .labels()
            .get(markers::LABEL_MANAGED_BY)
            .map(String::as_str),
        Some(w.vcluster.as_str()),
        "the host pod is the outer syncer's"
    );
    let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
    assert!(ip(&host_pod).is_some(), "the host pod has an IP");
    assert_eq!(
        ip(&running),
        ip(&host_pod),
        "the inner pod shows the host pod's IP"
    );
    assert_eq!(ip(&middle_pod), ip(&host_pod));

    // Logs through both kubelet endpoints: what the host's fake kubelet serves for any pod.
    let inner_logs = wait_until("kubectl logs through both layers", WAIT, || async {
        let out = kubectl(
            &kubectl_bin,
            &inner_admin,
            &["-n", ns, "logs", "web", "-c", "main"],
        )
        .await?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })
    .await?;
    let host_logs = kubectl(
        &kubectl_bin,
        &w.env.path("HOST_KUBECONFIG")?,
        &["-n", &w.host_ns, "logs", &bottom, "-c", "main"],
    )
    .await?;
    assert!(
        host_logs.status.success(),
        "{}",
        String::from_utf8_lossy(&host_logs.stderr)
    );
    assert!(!inner_logs.is_empty(), "no log lines came back");
    assert_eq!(
        inner_logs,
        String::from_utf8_lossy(&host_logs.stdout),
        "the same log on both ends"
    );

    // Deleting the inner vcluster (its owner object in the outer cluster) cleans both layers.
    Api::<StatefulSet>::namespaced(w.virt.clone(), &home.name)
        .delete(INNER, &DeleteParams::foreground())
        .await?;
    syncer.kill().await?;
    let outer_pods: Api<Pod> = Api::namespaced(w.virt.clone(), &home.name);
    let host_pods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    wait_until("the outer virtual and host pods gone", WAIT, || async {
        let outer_left = outer_pods.list(&ListParams::default()).await?.items.len();
        let host_left = host_pods.get_opt(&bottom).await?.is_some();
        Ok((outer_left == 0 && !host_left).then_some(()))
    })
    .await?;
    home.delete().await?;
    drop(inner_cp);
    Ok(())
}
