//! The manifests: every overlay builds with `kubectl kustomize` (the kubectl built from the
//! Kubernetes module, from the tool cache), the CLI's renderer (`vnest render`, no kubectl)
//! produces the same objects for every overlay and for the overlays it generates from configs,
//! and the two vclusters of the shared-namespace example never collide and follow their names.
//! Needs only the tool cache (`make tools`), no running world.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vnest::cli::config::ConfigInputs;
use vnest::cli::render;
use vnest_e2e::Result;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// kubectl v1.35 from the tool cache (`$KUBECTL` wins).
fn kubectl() -> Result<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return Ok(PathBuf::from(k));
    }
    let out = Command::new(repo().join("hack/build-tools.sh"))
        .arg("--print-dir")
        .output()?;
    let dir = String::from_utf8(out.stdout)?.trim().to_owned();
    let k = PathBuf::from(dir).join("kubectl");
    anyhow::ensure!(
        k.is_file(),
        "{} is missing: build the tools first (`make tools`)",
        k.display()
    );
    Ok(k)
}

fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let out = Command::new(kubectl()?).arg("kustomize").arg(dir).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(vnest::cli::kustomize::parse_documents(
        "kustomize output",
        &String::from_utf8(out.stdout)?,
    )?)
}

/// The objects as a set of canonical JSON texts.
fn as_set(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| serde_json::to_string(o).expect("JSON"))
        .collect()
}

fn assert_same(what: &str, kubectl: &[Value], ours: &[Value]) {
    let (a, b) = (as_set(kubectl), as_set(ours));
    let only_kubectl: Vec<_> = a.difference(&b).collect();
    let only_ours: Vec<_> = b.difference(&a).collect();
    assert!(
        only_kubectl.is_empty() && only_ours.is_empty() && kubectl.len() == ours.len(),
        "{what}: kubectl kustomize and vnest render differ\nonly kubectl: {only_kubectl:#?}\nonly vnest: {only_ours:#?}"
    );
}

fn overlays() -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("manifests/overlays"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn every_overlay_builds_and_renders_the_same_without_kubectl() -> Result<()> {
    let names = overlays()?;
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let dir = repo().join("manifests/overlays").join(&name);
        let theirs = kustomize(&dir)?;
        let ours = render::render_embedded(&format!("overlays/{name}"))?;
        assert_same(&name, &theirs, &ours);
    }
    let base = kustomize(&repo().join("manifests/base"))?;
    assert_same("base", &base, &render::render_embedded("base")?);
    Ok(())
}

/// A copy of manifests/ (returned: its root, removed by the caller) with the overlay
/// `vnest render --kustomization` prints for a config in `<root>/overlays/.vnest-cli`.
fn generated_overlay(config: &vnest::cli::config::VclusterConfig) -> Result<PathBuf> {
    let tmp = std::env::temp_dir().join(format!("vnest-manifests-{}-{}", std::process::id(), config.name));
    let _ = std::fs::remove_dir_all(&tmp);
    for (path, text) in render::embedded_files() {
        let p = tmp.join(&path);
        std::fs::create_dir_all(p.parent().expect("a parent"))?;
        std::fs::write(p, text)?;
    }
    let dir = tmp.join(render::OVERLAY_DIR);
    std::fs::create_dir_all(&dir)?;
    for (file, text) in render::overlay_files(config) {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(tmp)
}

#[test]
fn configs_render_as_kubectl_builds_their_overlay() -> Result<()> {
    for (name, overlays) in [
        ("plain", vec![]),
        ("iso", vec!["isolated"]),
        ("nodes", vec!["real-nodes"]),
        ("both-parts", vec!["isolated", "real-nodes"]),
        ("storage", vec!["host-storageclasses", "real-volumes"]),
        (
            "all-parts",
            vec!["isolated", "real-nodes", "host-storageclasses", "real-volumes"],
        ),
        ("datastore", vec!["external-datastore"]),
        ("ha", vec!["ha", "isolated"]),
    ] {
        let config = ConfigInputs {
            name: Some(name.to_owned()),
            namespace: Some("team-x".to_owned()),
            overlays: overlays.iter().map(|s| (*s).to_owned()).collect(),
            ..ConfigInputs::default()
        }
        .resolve()?;
        let root = generated_overlay(&config)?;
        let theirs = kustomize(&root.join(render::OVERLAY_DIR));
        let _ = std::fs::remove_dir_all(&root);
        let theirs = theirs?;
        assert_same(name, &theirs, &render::render(&config)?);
    }
    Ok(())
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Every string value in `v` with its JSON pointer.
fn strings(v: &Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => out.push((path, s.clone())),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, e)| strings(e, format!("{path}/{i}"), out)),
        Value::Object(m) => m.iter().for_each(|(k, e)| strings(e, format!("{path}/{k}"), out)),
        _ => {}
    }
}

fn env(sts: &Value, list: &str, container: &str) -> BTreeMap<String, String> {
    sts.pointer(&format!("/spec/template/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == container)
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect()
}

/// Everything in the build of an overlay for vcluster `name` follows the name.
fn assert_follows(overlay: &str, name: &str, objs: &[Value]) {
    for o in objs {
        let what = format!(
            "{overlay}: {}/{}",
            str_at(o, "/kind"),
            str_at(o, "/metadata/name")
        );
        let obj_name = str_at(o, "/metadata/name");
        assert!(
            obj_name == name || obj_name.starts_with(&format!("{name}-")),
            "{what}: name"
        );
        assert_eq!(
            str_at(o, "/metadata/labels/vnest.dev~1vcluster"),
            name,
            "{what}: label"
        );
        // Nothing still says "vnest" where a name goes (label keys and the image are no names).
        let mut all = Vec::new();
        strings(o, String::new(), &mut all);
        for (path, s) in all {
            let leftover = s == "vnest" || (s.starts_with("vnest-") && !s.starts_with("vnest-name"));
            assert!(!leftover, "{what}: {path} = {s:?} does not follow the name");
        }
        match str_at(o, "/kind") {
            "StatefulSet" => {
                assert_eq!(
                    str_at(o, "/spec/serviceName"),
                    format!("{name}-headless"),
                    "{what}"
                );
                assert_eq!(
                    str_at(o, "/spec/template/spec/serviceAccountName"),
                    name,
                    "{what}"
                );
                for (ptr, label) in [
                    ("/spec/selector/matchLabels", "selector"),
                    ("/spec/template/metadata/labels", "pod label"),
                ] {
                    assert_eq!(
                        str_at(o, &format!("{ptr}/vnest.dev~1vcluster")),
                        name,
                        "{what}: {label}"
                    );
                }
                let syncer = env(o, "containers", "syncer");
                for k in ["VNEST_NAME", "VNEST_OWNER_NAME", "VNEST_SERVICE_NAME"] {
                    assert_eq!(
                        syncer.get(k).map(String::as_str),
                        Some(name),
                        "{what}: syncer {k}"
                    );
                }
                assert_eq!(
                    env(o, "containers", "k3s").get("VNEST_NAME").map(String::as_str),
                    Some(name)
                );
                assert_eq!(
                    env(o, "initContainers", "detect-service-cidr")
                        .get("VNEST_SERVICE_NAME")
                        .map(String::as_str),
                    Some(name)
                );
                // The certificate names (--tls-san) are built from VNEST_NAME in the pod.
                let command = o
                    .pointer("/spec/template/spec/containers/0/command")
                    .map(Value::to_string)
                    .unwrap_or_default();
                assert!(
                    command.contains("--tls-san=\\\"$VNEST_NAME\\\""),
                    "{what}: {command}"
                );
                assert_eq!(
                    o.pointer("/spec/persistentVolumeClaimRetentionPolicy"),
                    Some(&serde_json::json!({"whenDeleted": "Delete", "whenScaled": "Retain"}))
                );
            }
            "Service" => assert_eq!(str_at(o, "/spec/selector/vnest.dev~1vcluster"), name, "{what}"),
            "RoleBinding" | "ClusterRoleBinding" => {
                assert_eq!(str_at(o, "/subjects/0/name"), name, "{what}");
                assert!(
                    !str_at(o, "/subjects/0/namespace").is_empty(),
                    "{what}: subject namespace"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn two_vclusters_in_one_namespace_never_collide() -> Result<()> {
    let a = kustomize(&repo().join("manifests/overlays/shared-a"))?;
    let b = kustomize(&repo().join("manifests/overlays/shared-b"))?;
    assert_follows("shared-a", "alpha", &a);
    assert_follows("shared-b", "beta", &b);
    let key = |o: &Value| {
        format!(
            "{}/{}/{}",
            str_at(o, "/kind"),
            str_at(o, "/metadata/namespace"),
            str_at(o, "/metadata/name")
        )
    };
    let ka: BTreeSet<String> = a.iter().map(key).collect();
    let kb: BTreeSet<String> = b.iter().map(key).collect();
    assert_eq!(ka.len(), a.len(), "shared-a has duplicates");
    let shared: Vec<_> = ka.intersection(&kb).collect();
    assert!(
        shared.is_empty(),
        "objects of both vclusters share kind+name: {shared:?}"
    );
    assert!(
        a.iter().chain(&b).all(
            |o| str_at(o, "/metadata/namespace") == "shared" || str_at(o, "/kind").starts_with("Cluster")
        )
    );
    Ok(())
}

#[test]
fn the_isolated_overlay_follows_its_name_and_isolates() -> Result<()> {
    let objs = kustomize(&repo().join("manifests/overlays/isolated"))?;
    assert_follows("isolated", "team-a", &objs);
    let kinds: BTreeSet<&str> = objs.iter().map(|o| str_at(o, "/kind")).collect();
    for k in ["ResourceQuota", "LimitRange", "NetworkPolicy", "ConfigMap"] {
        assert!(kinds.contains(k), "{k} in {kinds:?}");
    }
    let sts = objs
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    assert_eq!(
        env(sts, "containers", "syncer")
            .get("VNEST_SYNC_NETWORKPOLICIES")
            .map(String::as_str),
        Some("true")
    );
    let args = sts
        .pointer("/spec/template/spec/containers/0/args")
        .map(Value::to_string)
        .unwrap_or_default();
    assert!(
        args.contains(
            "--kube-apiserver-arg=admission-control-config-file=/etc/vnest/pod-security/admission.yaml"
        ),
        "{args}"
    );
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("the admission config");
    assert!(str_at(cm, "/data/admission.yaml").contains("enforce: baseline"));
    let np = objs
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy");
    assert_eq!(
        str_at(np, "/spec/podSelector/matchLabels/vnest.dev~1managed-by"),
        "team-a"
    );
    Ok(())
}

/// The isolated overlay's AdmissionConfiguration is accepted by the real kube-apiserver (v1.35,
/// from the tool cache): it loads PodSecurity with it (and refuses a broken copy), so k3s's
/// embedded API server, started with it, enforces `baseline`.
#[test]
fn the_pod_security_admission_config_loads_in_a_real_api_server() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let objs = kustomize(&repo().join("manifests/overlays/isolated"))?;
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("the admission config");
    let good = str_at(cm, "/data/admission.yaml").to_owned();
    let dir = std::env::temp_dir().join(format!("vnest-admission-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("sa.key");
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl genrsa failed");
    let apiserver = kubectl()?.with_file_name("kube-apiserver");
    for (name, text, loads) in [
        ("good", good.clone(), true),
        (
            "bad",
            good.replace("enforce: baseline", "enforce: basline"),
            false,
        ),
    ] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, text)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(&apiserver)
            .args(["--etcd-servers=http://127.0.0.1:1", "--bind-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .args([
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://x",
            ])
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!("--admission-control-config-file={}", file.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let mut verdict = None;
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if line.contains("validating admission controller(s) successfully") {
                verdict = Some(line.contains("PodSecurity"));
                break;
            }
            if line.contains("command failed") {
                assert!(line.contains("PodSecurity"), "{name}: {line}");
                verdict = Some(false);
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(verdict, Some(loads), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The k3s container's shell line, run as the pod's shell would (with `/bin/k3s` replaced by
/// `echo`): a replica other than `-0` refuses to start on SQLite and names the overlays that
/// add a datastore; with a datastore endpoint every replica starts.
#[test]
fn a_second_replica_refuses_to_start_on_sqlite() -> Result<()> {
    let objs = kustomize(&repo().join("manifests/overlays/ha"))?;
    let sts = objs
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .ok_or_else(|| anyhow::anyhow!("no StatefulSet"))?;
    let k3s = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(k3s["name"], "k3s");
    let line = k3s["command"][2]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no shell line"))?
        .replace("exec /bin/k3s server", "exec echo k3s server");
    let run = |pod: &str, endpoint: &str| -> Result<std::process::Output> {
        Ok(std::process::Command::new("/bin/sh")
            .args(["-c", &line, "k3s", "--data-dir=/data"])
            .env("POD_NAME", pod)
            .env("K3S_DATASTORE_ENDPOINT", endpoint)
            .env("VNEST_NAME", "demo")
            .env("POD_NAMESPACE", "team-a")
            .output()?)
    };
    let first = run("demo-0", "")?;
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("k3s server"));
    let second = run("demo-1", "")?;
    assert!(
        !second.status.success(),
        "a second replica on SQLite must not start"
    );
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(
        why.contains("SQLite serves one replica") && why.contains("overlays/ha"),
        "{why}"
    );
    let sqlite = run("demo-2", "sqlite:///data/state.db")?;
    assert!(
        !sqlite.status.success(),
        "an explicit SQLite endpoint is SQLite too"
    );
    let shared = run("demo-2", "postgres://db:5432/vnest")?;
    assert!(shared.status.success(), "{shared:?}");
    Ok(())
}
