//! The `vnest` CLI, black-box, against the local world: `create --no-connect` applies exactly
//! the rendered objects (server-side, field manager `vnest-cli`) and refuses a second create,
//! `list -A` shows it beside the world's vcluster, `delete` leaves no object behind, and
//! `connect` (a port-forward through the host API to the vcluster pod's port named `https`,
//! answered by kwok) writes a kubeconfig that works.
//!
//! In process mode (`VNEST_RUNTIME=processes`) a new vcluster's pod runs on a kwok node with
//! nothing behind it, so only the world's own vcluster answers as an API server. In container
//! mode a created vcluster whose config places it on the runner's node really runs: its k3s and
//! syncer containers start from its spec, and [`a_created_vcluster_runs_a_deployment`] goes
//! create -> connect -> a Deployment -> list -> delete with it.

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
    nothing_left(&w, &ns.name).await?;
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
    // HA without its datastore Secret: refused before anything is made, saying how to make it.
    let ns = format!("vnest-e2e-nods-{:04x}", rand::random::<u16>());
    let out = vnest(&w.env, &["create", "x", "-n", &ns, "--overlay", "ha"]).await?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs Secret \"x-datastore\"")
            && err.contains("kubectl -n")
            && err.contains("create secret generic x-datastore"),
        "{err}"
    );
    let namespaces: Api<Namespace> = Api::all(w.host.clone());
    assert!(
        namespaces.get_opt(&ns).await?.is_none(),
        "a refused create made its namespace"
    );
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
/// virtual API server, then connects. No syncer runs for a new vcluster in process mode, so the
/// test writes the export Secret as the syncer would (the world's credentials, owned by the
/// StatefulSet); kwok forwards the pod's port 6443 to the world's virtual API server.
/// Process mode only: in container mode [`a_created_vcluster_runs_a_deployment`] covers it with
/// a real syncer.
#[tokio::test]
async fn create_waits_for_the_vcluster_and_connects() -> Result<()> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Secret;
    let w = World::connect().await?;
    if containers(&w)? {
        eprintln!("container mode: covered by a_created_vcluster_runs_a_deployment");
        return Ok(());
    }
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
    nothing_left(&w, &ns.name).await?;
    Api::<PersistentVolume>::all(w.host.clone())
        .delete(&pv, &DeleteParams::default())
        .await?;
    ns.delete().await?;
    Ok(())
}

/// Whether the world runs the vcluster pods' containers (`VNEST_RUNTIME=containers`).
fn containers(w: &World) -> Result<bool> {
    Ok(w.env.get("VNEST_RUNTIME").unwrap_or("processes") == "containers")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The podman containers the runner started for pods of namespace `ns` (running or not).
async fn runner_containers(w: &World, ns: &str) -> Result<Vec<String>> {
    let out = tokio::process::Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!(
            "label=dev.vnest.runner.node={}",
            w.env.get("RUNNER_NODE")?
        ))
        .arg("--filter")
        .arg(format!("label=dev.vnest.runner.pod-namespace={ns}"))
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "podman ps: {}", text(&out.stderr));
    Ok(text(&out.stdout).lines().map(str::to_owned).collect())
}

/// Waits until nothing is left in `ns` after `vnest delete` returned. Not at once: the host's
/// endpoints controller may still write an Endpoints of a just deleted Service from its stale
/// cache (seen once in ~10 runs), and removes it itself moments later.
async fn nothing_left(w: &World, ns: &str) -> Result<()> {
    wait_until(
        "nothing left in the namespace",
        Duration::from_secs(30),
        || async {
            let left = left_in(w, ns).await?;
            if left.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("left behind: {left:?}")
            }
        },
    )
    .await
}

/// What is left in `ns` besides what every namespace has.
async fn left_in(w: &World, ns: &str) -> Result<Vec<String>> {
    Ok(everything_in(w, ns)
        .await?
        .into_iter()
        .filter(|o| {
            !matches!(
                o.as_str(),
                "ConfigMap/kube-root-ca.crt" | "ServiceAccount/default"
            )
        })
        .filter(|o| !o.starts_with("Event/"))
        .collect())
}

/// Issue 18's "done when", in container mode: `vnest create` of a second vcluster in its own
/// namespace, placed on the runner's node by its config (nodeSelector, tolerations, free ports
/// of this machine, loopback addresses), waits until its pod is Ready, its REAL syncer has
/// written the export Secret and its virtual API server answers, and connects; a Deployment of
/// 2 replicas runs through it (its pods Running on kwok nodes via the second syncer); `list -A`
/// shows both vclusters Ready; `delete` leaves no object, no container, and the volume Released.
#[tokio::test]
async fn a_created_vcluster_runs_a_deployment() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    let w = World::connect().await?;
    if !containers(&w)? {
        eprintln!(
            "process mode: a created vcluster has no containers here (see create_waits_for_the_vcluster_and_connects)"
        );
        return Ok(());
    }
    let ns = TestNs::new(&w.host, "cli-run").await?;
    let name = "second";
    let pv = volume_for(&w, &ns.name, name).await?;
    let state = w.env.path("STATE_DIR")?;
    let (api, admin, kubelet, dns) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let config_path = state.join(format!("vnest-{}.yaml", ns.name));
    // The syncer image of this world (tagged by its binary: podman's store is machine-wide).
    let image = w.env.get("VNEST_IMAGE")?;
    std::fs::write(
        &config_path,
        format!(
            r#"# Every pod of the runner's node shares this machine's network: loopback, free ports.
images: {{vnest: "{image}"}}
scheduling:
  nodeSelector: {{vnest.dev/runner: "true"}}
  tolerations:
  - {{key: vnest.dev/runner, operator: Exists, effect: NoSchedule}}
ports: {{api: {api}, admin: {admin}, kubelet: {kubelet}, dns: {dns}}}
k3s:
  extraArgs: [--bind-address=127.0.0.1]
syncer:
  env:
    VNEST_ADMIN_ADDR: "127.0.0.1:{admin}"
    VNEST_DNS_ADDR: "127.0.0.1:{dns}"
    VNEST_KUBELET_ADDRESS: "127.0.0.1"
    VNEST_KUBELET_PORT: "{kubelet}"
    VNEST_KUBELET_LISTEN_ADDR: "127.0.0.1:{kubelet}"
"#
        ),
    )?;
    let kubeconfig = state.join(format!("kubeconfig-{}.yaml", ns.name));
    let create_log = state.join(format!("create-{}.log", ns.name));

    // create: applies, waits for the pod, the Secret and the API server, connects, forwards.
    let started = std::time::Instant::now();
    let mut create = tokio::process::Command::new(w.env.path("VNEST_BIN")?)
        .args(["create", name, "-n", &ns.name, "--timeout", "240s", "-f"])
        .arg(&config_path)
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .env("KUBECONFIG", w.env.path("HOST_KUBECONFIG")?)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&create_log)?)
        .kill_on_drop(true)
        .spawn()?;
    let path = kubeconfig.clone();
    let waited = wait_until(
        "vnest create to connect (kubeconfig written)",
        Duration::from_secs(300),
        || {
            let exited = create.try_wait();
            let path = path.clone();
            let log = create_log.clone();
            async move {
                if let Some(status) = exited? {
                    anyhow::bail!(
                        "vnest create exited ({status}) before connecting: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                Ok(path.exists().then_some(()))
            }
        },
    )
    .await;
    if let Err(e) = waited {
        let _ = create.kill().await;
        anyhow::bail!(
            "{e:#}\n--- create's output:\n{}",
            std::fs::read_to_string(&create_log).unwrap_or_default()
        );
    }
    let create_to_ready = started.elapsed();
    println!(
        "TIMING vnest create -> pod Ready, export Secret, API server answers, connected: {:.1} s",
        create_to_ready.as_secs_f64()
    );

    // The pod runs on the runner's node; the export Secret was written by its own syncer.
    let pod = Api::<Pod>::namespaced(w.host.clone(), &ns.name)
        .get(&format!("{name}-0"))
        .await?;
    let spec = pod.spec.clone().unwrap_or_default();
    assert_eq!(spec.node_name.as_deref(), w.env.get("RUNNER_NODE").ok());
    assert_eq!(vnest::cli::ops::api_port_of(&pod), api);
    let secret = Api::<Secret>::namespaced(w.host.clone(), &ns.name)
        .get(&format!("vc-{name}"))
        .await?;
    let owners: Vec<(String, String)> = secret
        .owner_references()
        .iter()
        .map(|o| (o.kind.clone(), o.name.clone()))
        .collect();
    assert_eq!(owners, [("StatefulSet".to_owned(), name.to_owned())]);
    let running = runner_containers(&w, &ns.name).await?;
    assert!(running.len() >= 2, "the k3s and syncer containers: {running:?}");
    // Host logs of the pod come from its container's log file (kwok's Logs of the runner).
    let logs = Api::<Pod>::namespaced(w.host.clone(), &ns.name)
        .logs(
            &format!("{name}-0"),
            &kube::api::LogParams {
                container: Some("detect-service-cidr".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(logs.contains(&w.env.get("SERVICE_CIDR")?.to_owned()), "{logs}");

    // A Deployment through the new vcluster: both pods Running (on kwok nodes, synced by it).
    let virt = vnest_e2e::client_from(&kubeconfig).await?;
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    }))?;
    Api::<Deployment>::namespaced(virt.clone(), "default")
        .create(&PostParams::default(), &deploy)
        .await?;
    let vpods = Api::<Pod>::namespaced(virt.clone(), "default");
    let running_pods = wait_until(
        "2 virtual pods of the Deployment Running",
        Duration::from_secs(120),
        || async {
            let pods = vpods.list(&ListParams::default().labels("app=web")).await?.items;
            let running: Vec<String> = pods
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .map(ResourceExt::name_any)
                .collect();
            Ok((running.len() == 2).then_some(running))
        },
    )
    .await?;
    let synced = Api::<Pod>::namespaced(w.host.clone(), &ns.name)
        .list_metadata(&ListParams::default().labels(&vnest::markers::selector(name)))
        .await?
        .items
        .len();
    assert_eq!(synced, 2, "host pods of {running_pods:?}");

    // list -A: both vclusters Ready.
    let out = vnest(&w.env, &["list", "-A"]).await?;
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let ready = |n: &str, namespace: &str| {
        table.lines().any(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            c.first() == Some(&n) && c.get(1) == Some(&namespace) && c.get(2) == Some(&"1/1")
        })
    };
    assert!(ready(name, &ns.name), "{table}");
    assert!(ready(&w.vcluster, &w.host_ns), "{table}");

    // delete: no object, no container, the volume released.
    let _ = create.kill().await;
    let started = std::time::Instant::now();
    let out = vnest(&w.env, &["delete", name, "-n", &ns.name, "--timeout", "180s"]).await?;
    assert!(
        out.status.success(),
        "delete: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let pvs = Api::<PersistentVolume>::all(w.host.clone());
    wait_until(
        "nothing of the vcluster left (objects, containers, volume Released)",
        Duration::from_secs(120),
        || async {
            let left = left_in(&w, &ns.name).await?;
            let containers = runner_containers(&w, &ns.name).await?;
            let phase = pvs
                .get(&pv)
                .await?
                .status
                .and_then(|s| s.phase)
                .unwrap_or_default();
            if left.is_empty() && containers.is_empty() && phase == "Released" {
                Ok(Some(()))
            } else {
                anyhow::bail!("left: {left:?}, containers: {containers:?}, volume: {phase}")
            }
        },
    )
    .await?;
    let delete_to_nothing = started.elapsed();
    println!(
        "TIMING vnest delete -> no object, no container, volume Released: {:.1} s",
        delete_to_nothing.as_secs_f64()
    );

    pvs.delete(&pv, &DeleteParams::default()).await?;
    let _ = std::fs::remove_dir_all(state.join(&pv));
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&config_path);
    ns.delete().await?;
    Ok(())
}
