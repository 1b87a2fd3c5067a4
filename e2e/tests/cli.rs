//! The `vnest` CLI, black-box, against the local world: `create --no-connect` applies exactly
//! the rendered objects (server-side, field manager `vnest-cli`) and refuses a second create,
//! `list -A` shows it beside the world's vcluster, `delete` leaves no object behind, and
//! `connect` (a port-forward through the host API to the vcluster pod's port 6443, which kwok
//! forwards to the world's virtual API server) writes a kubeconfig that works.
//!
//! In this world a new vcluster's pod runs on a kwok node with nothing behind it, so only the
//! world's own vcluster answers as an API server.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Api, ResourceExt};
use serde_json::Value;
use vnest::cli::config::ConfigInputs;
use vnest::cli::render;
use vnest_e2e::{Env, Result, TestNs, World, wait_until};

async fn vnest(env: &Env, args: &[&str]) -> Result<Output> {
    let out = tokio::process::Command::new(env.path("VNEST_BIN")?)
        .args(args)
        .env("KUBECONFIG", env.path("HOST_KUBECONFIG")?)
        .output()
        .await?;
    Ok(out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A volume for claim `data-<name>-0` (the world has no storage provisioner).
async fn volume_for(w: &World, ns: &str, name: &str) -> Result<String> {
    let pv_name = format!("{ns}-data-{name}-0");
    let dir = w.env.path("STATE_DIR")?.join(&pv_name);
    std::fs::create_dir_all(&dir)?;
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pv_name},
        // Of the local world's default class (`hack/up.sh`), which the claim gets on create.
        "spec": {"storageClassName": "local", "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": dir},
                 "claimRef": {"namespace": ns, "name": format!("data-{name}-0")}}
    }))?;
    Api::<PersistentVolume>::all(w.host.clone())
        .create(&PostParams::default(), &pv)
        .await?;
    Ok(pv_name)
}

/// Every object in namespace `ns` of every namespaced kind the host serves and lets us list.
async fn everything_in(w: &World, ns: &str) -> Result<Vec<String>> {
    let discovery = Discovery::new(w.host.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced || !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(w.host.clone(), ns, &ar);
            for o in api.list(&ListParams::default()).await?.items {
                out.push(format!("{}/{}", ar.kind, o.name_any()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn create_list_delete_a_second_vcluster() -> Result<()> {
    let w = World::connect().await?;
    let ns = TestNs::new(&w.host, "cli").await?;
    let name = "second";
    let pv = volume_for(&w, &ns.name, name).await?;

    // create: exactly the rendered objects, server-side applied by vnest-cli.
    let out = vnest(
        &w.env,
        &[
            "create",
            name,
            "-n",
            &ns.name,
            "--no-connect",
            "--overlay",
            "isolated",
            "--timeout",
            "90s",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "create: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let config = ConfigInputs {
        name: Some(name.into()),
        namespace: Some(ns.name.clone()),
        overlays: vec!["isolated".into()],
        ..ConfigInputs::default()
    }
    .resolve()?;
    let rendered = render::render(&config)?;
    let discovery = Discovery::new(w.host.clone()).run().await?;
    let mut kinds: Vec<kube::core::ApiResource> = Vec::new();
    for o in &rendered {
        let gvk = kube::core::GroupVersionKind::gvk(
            o["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .split_once('/')
                .map_or("", |(g, _)| g),
            o["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
        );
        let (ar, _) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| anyhow::anyhow!("{gvk:?} not served"))?;
        let api: Api<DynamicObject> = Api::namespaced_with(w.host.clone(), &ns.name, &ar);
        let live = api
            .get(o["metadata"]["name"].as_str().unwrap_or_default())
            .await?;
        let managers: Vec<(String, String)> = live
            .managed_fields()
            .iter()
            .map(|m| {
                (
                    m.manager.clone().unwrap_or_default(),
                    m.operation.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            managers.contains(&("vnest-cli".to_owned(), "Apply".to_owned())),
            "{}: {managers:?}",
            live.name_any()
        );
        // The live object carries every label the rendered one has.
        for (k, v) in o["metadata"]["labels"].as_object().into_iter().flatten() {
            assert_eq!(
                live.labels().get(k).map(String::as_str),
                v.as_str(),
                "{}: label {k}",
                live.name_any()
            );
        }
        if !kinds.contains(&ar) {
            kinds.push(ar);
        }
    }
    // ...and nothing else carries the vcluster's label.
    let mut labelled = BTreeSet::new();
    for ar in &kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(w.host.clone(), &ns.name, ar);
        for o in api
            .list(&ListParams::default().labels(&format!("vnest.dev/vcluster={name}")))
            .await?
            .items
        {
            if o.owner_references().is_empty() {
                labelled.insert(format!("{}/{}", ar.kind, o.name_any()));
            }
        }
    }
    let expected: BTreeSet<String> = rendered
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(labelled, expected, "the applied objects are the rendered ones");

    // A second create of the same name is refused with one line.
    let out = vnest(&w.env, &["create", name, "-n", &ns.name, "--no-connect"]).await?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "error: vcluster \"{name}\" already exists in namespace \"{}\"",
            ns.name
        )
    );

    // list -A: both vclusters, with their columns.
    let out = vnest(&w.env, &["list", "-A"]).await?;
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "NAMESPACE",
            "READY",
            "K3S",
            "VERSION",
            "SYNCED",
            "PODS",
            "AGE"
        ],
        "{table}"
    );
    let row = |n: &str, namespace: &str| {
        lines
            .iter()
            .find(|l| l.first() == Some(&n) && l.get(1) == Some(&namespace))
            .cloned()
    };
    let ours = row(name, &ns.name).ok_or_else(|| anyhow::anyhow!("{name} missing: {table}"))?;
    assert_eq!(&ours[2..5], ["1/1", "v1.35.4-k3s1", "0"], "{table}");
    let world =
        row(&w.vcluster, &w.host_ns).ok_or_else(|| anyhow::anyhow!("world vcluster missing: {table}"))?;
    assert_eq!(&world[2..3], ["1/1"], "{table}");
    let synced = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(w.host.clone(), &w.host_ns)
        .list_metadata(&ListParams::default().labels(&vnest::markers::selector(&w.vcluster)))
        .await?
        .items
        .len();
    let shown: usize = world[4].parse()?;
    // Other tests create pods concurrently: the count is that of a moment close to ours.
    assert!(
        shown.abs_diff(synced) <= 20,
        "synced pods {shown} vs {synced}: {table}"
    );

    // delete: nothing of it is left in the namespace.
    let out = vnest(&w.env, &["delete", name, "-n", &ns.name, "--timeout", "120s"]).await?;
    assert!(
        out.status.success(),
        "delete: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let left: Vec<String> = everything_in(&w, &ns.name)
        .await?
        .into_iter()
        .filter(|o| {
            !matches!(
                o.as_str(),
                "ConfigMap/kube-root-ca.crt" | "ServiceAccount/default"
            )
        })
        .filter(|o| !o.starts_with("Event/"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let out = vnest(&w.env, &["delete", name, "-n", &ns.name]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found in namespace"),
        "{}",
        text(&out.stderr)
    );

    Api::<PersistentVolume>::all(w.host.clone())
        .delete(&pv, &DeleteParams::default())
        .await?;
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn user_errors_are_one_line_and_fail() -> Result<()> {
    let w = World::connect().await?;
    for (args, needle) in [
        (
            vec!["create", "x", "-n", "ns", "--set", "sync.podz=true"],
            "unknown key \"sync.podz\": allowed keys under \"sync\"",
        ),
        (
            vec!["create", "x", "-n", "ns", "--overlay", "nope"],
            "is not an overlay: allowed values",
        ),
        // (other tests may add vclusters to this namespace meanwhile)
        (
            vec!["connect", "nope", "-n", w.host_ns.as_str()],
            "not found in namespace",
        ),
    ] {
        let out = vnest(&w.env, &args).await?;
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if args[0] == "connect" {
            let listed = err.split("vclusters there: ").nth(1).unwrap_or_default();
            assert!(listed.trim().split(", ").any(|n| n == w.vcluster), "{err}");
        }
    }
    // No access to a namespace: the syncer's own identity may not list StatefulSets elsewhere.
    let out = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args(["list", "-n", "kube-system"])
        .env("KUBECONFIG", w.env.path("SYNCER_HOST_KUBECONFIG")?)
        .output()
        .await?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.starts_with("error: no access: cannot list"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    Ok(())
}

#[tokio::test]
async fn connect_forwards_to_the_virtual_api_server() -> Result<()> {
    let w = World::connect().await?;
    let out_path: PathBuf = w
        .env
        .path("STATE_DIR")?
        .join(format!("kubeconfig-connect-{}.yaml", std::process::id()));
    let mut child = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args(["connect", &w.vcluster, "-n", &w.host_ns, "--kubeconfig-out"])
        .arg(&out_path)
        .env("KUBECONFIG", w.env.path("HOST_KUBECONFIG")?)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let path = out_path.clone();
    wait_until("connect writes the kubeconfig", Duration::from_secs(60), || {
        let path = path.clone();
        async move { Ok(path.exists().then_some(())) }
    })
    .await?;
    let kc = kube::config::Kubeconfig::read_from(&out_path)?;
    let context = format!("vnest_{}_{}", w.vcluster, w.host_ns);
    assert_eq!(kc.current_context.as_deref(), Some(context.as_str()));
    let server = kc.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    assert!(
        server.starts_with("https://127.0.0.1:"),
        "a local port-forward: {server}"
    );
    let client = vnest_e2e::client_from(&out_path).await?;
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"kube-system".to_owned()), "{names:?}");
    let _ = child.kill().await;
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        s.read_to_string(&mut stdout).await?;
    }
    assert!(
        stdout.contains(&format!("export KUBECONFIG={}", out_path.display())),
        "{stdout}"
    );
    let _ = std::fs::remove_file(&out_path);
    Ok(())
}

#[tokio::test]
async fn the_binary_renders_what_kubectl_kustomize_builds() -> Result<()> {
    let w = World::connect().await?;
    let out = vnest(&w.env, &["render", "--embedded", "overlays/isolated"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ours = vnest::cli::kustomize::parse_documents("vnest render", &text(&out.stdout))?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let k = tokio::process::Command::new(w.env.path("KUBECTL")?)
        .arg("kustomize")
        .arg(repo.join("manifests/overlays/isolated"))
        .output()
        .await?;
    let theirs = vnest::cli::kustomize::parse_documents("kubectl", &text(&k.stdout))?;
    let set = |v: &[Value]| v.iter().map(|o| o.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(set(&ours), set(&theirs));
    Ok(())
}

/// `create` without `--no-connect`: applies, waits for the pod, the export Secret and the
/// virtual API server, then connects. No syncer runs for a new vcluster in this world, so the
/// test writes the export Secret as the syncer would (the world's credentials, owned by the
/// StatefulSet); kwok forwards the pod's port 6443 to the world's virtual API server.
#[tokio::test]
async fn create_waits_for_the_vcluster_and_connects() -> Result<()> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Secret;
    let w = World::connect().await?;
    let ns = TestNs::new(&w.host, "cli-connect").await?;
    let name = "third";
    let pv = volume_for(&w, &ns.name, name).await?;
    let out_path = w
        .env
        .path("STATE_DIR")?
        .join(format!("kubeconfig-{}.yaml", ns.name));
    let mut child = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args([
            "create",
            name,
            "-n",
            &ns.name,
            "--timeout",
            "90s",
            "--kubeconfig-out",
        ])
        .arg(&out_path)
        .env("KUBECONFIG", w.env.path("HOST_KUBECONFIG")?)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(w.host.clone(), &ns.name);
    let sts = wait_until(
        "create applies the StatefulSet",
        Duration::from_secs(60),
        || async { Ok(statefulsets.get_opt(name).await?) },
    )
    .await?;
    // The syncer's part: the export Secret, owned by the StatefulSet.
    let world_secrets = Api::<Secret>::namespaced(w.host.clone(), &w.host_ns);
    let world_secret = wait_until("the world's export Secret", Duration::from_secs(60), || async {
        Ok(world_secrets.get_opt(&format!("vc-{}", w.vcluster)).await?)
    })
    .await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("vc-{name}"),
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                          "uid": sts.uid().unwrap_or_default()}]},
        "data": world_secret.data,
    }))?;
    Api::<Secret>::namespaced(w.host.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let path = out_path.clone();
    wait_until(
        "create connects and writes the kubeconfig",
        Duration::from_secs(90),
        || {
            let path = path.clone();
            async move { Ok(path.exists().then_some(())) }
        },
    )
    .await?;
    let client = vnest_e2e::client_from(&out_path).await?;
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"kube-system".to_owned()), "{names:?}");
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&out_path);

    // delete: the export Secret goes with the StatefulSet, nothing is left.
    let out = vnest(&w.env, &["delete", name, "-n", &ns.name, "--timeout", "120s"]).await?;
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let left: Vec<String> = everything_in(&w, &ns.name)
        .await?
        .into_iter()
        .filter(|o| {
            !matches!(
                o.as_str(),
                "ConfigMap/kube-root-ca.crt" | "ServiceAccount/default"
            )
        })
        .filter(|o| !o.starts_with("Event/"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Api::<PersistentVolume>::all(w.host.clone())
        .delete(&pv, &DeleteParams::default())
        .await?;
    ns.delete().await?;
    Ok(())
}
