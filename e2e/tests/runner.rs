//! hack/runner (vnest-runner, the test-only "kubelet" that runs one host node's pods with
//! podman) against the real host control plane of the local world: a pod with init container,
//! `$(VAR)` command/args, fieldRef env, emptyDir, configMap, the projected ServiceAccount token,
//! fsGroup + runAsUser 65532, a read-only root filesystem and HTTP/exec probes runs for real;
//! then a killed container restarts, a failing liveness probe restarts it, a restarted runner
//! adopts the containers (no duplicates, no status write), a missing image is reported, and a
//! deleted pod's containers and object go away.
//!
//! Needs podman + runc (apt-get install -y podman runc) and a static busybox
//! (apt-get install -y busybox-static) for the FROM-scratch test image; fails, never skips,
//! when they are missing. Its own test binary: it starts its own runner with its own node.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rand::Rng;
use serde_json::json;
use vnest_e2e::{Env, Result, TestNs, review_token, wait_until};

const IMAGE: &str = "localhost/runner-test:1";
const WAIT: Duration = Duration::from_secs(90);

fn podman() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("podman");
    c.args(["--runtime", "/usr/sbin/runc", "--cgroup-manager", "cgroupfs"]);
    c
}

async fn podman_out(args: &[&str]) -> Result<(bool, String)> {
    let out = podman().args(args).output().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot run podman ({e}): this test needs podman and runc (apt-get install -y podman runc)"
        )
    })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Builds the FROM-scratch busybox image unless it exists.
async fn ensure_image(work: &Path) -> Result<()> {
    if podman_out(&["image", "exists", IMAGE]).await?.0 {
        return Ok(());
    }
    let busybox = Path::new("/bin/busybox");
    let is_static = std::process::Command::new("file")
        .arg(busybox)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        .unwrap_or(false);
    anyhow::ensure!(
        is_static,
        "{} is missing or not static: apt-get install -y busybox-static",
        busybox.display()
    );
    let dir = work.join("image");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(busybox, dir.join("busybox"))?;
    std::fs::write(
        dir.join("Containerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\n",
    )?;
    let (ok, out) = podman_out(&["build", "-t", IMAGE, dir.to_str().unwrap_or(".")]).await?;
    anyhow::ensure!(ok, "podman build failed: {out}");
    Ok(())
}

/// The vnest-runner binary: $VNEST_RUNNER_BIN, or built with cargo next to this test binary.
fn runner_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VNEST_RUNNER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // No -p: the same feature set as the workspace build (no rebuild of shared dependencies).
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--bin", "vnest-runner"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()?;
    anyhow::ensure!(status.success(), "cargo build -p vnest-runner failed");
    // <target>/debug/deps/runner-<hash> -> <target>/debug/vnest-runner
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("vnest-runner"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target dir from {}", exe.display()))?;
    anyhow::ensure!(bin.exists(), "{} missing after cargo build", bin.display());
    Ok(bin)
}

/// Removes every container of the test's node when the test ends, also on failure (a killed
/// runner leaves its containers running, by design).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = std::process::Command::new("podman")
            .args([
                "--runtime",
                "/usr/sbin/runc",
                "--cgroup-manager",
                "cgroupfs",
                "ps",
                "-aq",
                "--filter",
            ])
            .arg(format!("label=dev.vnest.runner.node={}", self.0))
            .output();
        let ids: Vec<String> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = std::process::Command::new("podman")
                .args([
                    "--runtime",
                    "/usr/sbin/runc",
                    "--cgroup-manager",
                    "cgroupfs",
                    "rm",
                    "-f",
                    "-t",
                    "0",
                ])
                .args(&ids)
                .output();
        }
    }
}

struct Runner {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Runner {
    async fn start(env: &Env, bin: &Path, node: &str, work: &Path, n: u32) -> Result<Self> {
        let api_url = env.get("HOST_API_URL")?;
        let port = api_url.rsplit(':').next().unwrap_or_default();
        let log = work.join(format!("runner-{n}.log"));
        let child = tokio::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(env.path("HOST_KUBECONFIG")?)
            .args(["--node-name", node, "--api-port", port, "--max-backoff", "2s"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--log-dir")
            .arg(work.join("logs"))
            .env("RUST_LOG", "vnest_runner=debug,info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(work.join(format!("runner-{n}.stderr")))?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, log })
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow::anyhow!("runner already exited"))
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
    }

    /// SIGTERM (the runner leaves its containers running for the next one) and wait.
    async fn stop(mut self) -> Result<String> {
        let pid = self.pid()?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await??;
        Ok(std::fs::read_to_string(&self.log)?)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `port`: the pod shares the host network, so its HTTP port is a free one of this machine.
fn pod_manifest(ns: &str, node: &str, port: u16) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns, "labels": {"app": "runner-e2e"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "vnest.dev/runner", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 10,
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
            "initContainers": [{
                "name": "init", "image": IMAGE,
                "command": ["/bin/sh", "-c"],
                "args": ["echo init-ran-for-$(POD_NAME) > /work/init.txt"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]
            }],
            "containers": [{
                "name": "httpd", "image": IMAGE,
                "command": ["/bin/sh", "-c"],
                // $(VAR) of defined vars expands, $$ escapes, an undefined $(...) stays verbatim
                // (the shell then sees the single-quoted text literally).
                "args": ["echo \"$(POD_NAME) $(POD_NAMESPACE) $(NODE) $(APP)\" > /work/args.txt; \
                          echo '$$(POD_NAME) $(cat /data/service-cidr)' > /work/verbatim.txt; \
                          mkdir -p /work/www; echo ok > /work/www/index.html; touch /work/alive; echo persisted > /data/from-pod; \
                          httpd -f -p 127.0.0.1:$(PORT) -h /work/www & \
                          trap 'kill $!; exit 0' TERM; wait"],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "runner-config", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "runner-secret", "key": "password"}}},
                    {"name": "PORT", "value": port.to_string()}
                ],
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["cat", "/work/alive"]}, "periodSeconds": 1, "failureThreshold": 2},
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false},
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "config", "mountPath": "/etc/config"},
                    {"name": "secret", "mountPath": "/etc/secret"},
                    {"name": "data", "mountPath": "/data", "subPath": "sub"}
                ]
            }],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "runner-config"}},
                {"name": "secret", "secret": {"secretName": "runner-secret", "defaultMode": 0o400,
                                               "items": [{"key": "password", "path": "pw"}]}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
            ]
        }
    }))?)
}

async fn exec(cid: &str, script: &str) -> Result<String> {
    let (ok, out) = podman_out(&["exec", cid, "/bin/sh", "-c", script]).await?;
    anyhow::ensure!(ok, "podman exec {script:?} failed: {out}");
    Ok(out.trim().to_owned())
}

/// podman containers of a pod UID: (id, name, state), state as in `podman ps --format json`.
async fn containers_of(uid: &str) -> Result<Vec<(String, String, String)>> {
    let (ok, out) = podman_out(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=dev.vnest.runner.pod-uid={uid}"),
        "--format",
        "json",
    ])
    .await?;
    anyhow::ensure!(ok, "podman ps failed: {out}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(list
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (
                s("Id"),
                c["Names"][0].as_str().unwrap_or_default().to_owned(),
                s("State"),
            )
        })
        .collect())
}

fn container_status(p: &Pod, name: &str) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == name)
        .cloned()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready_with_restarts(pods: &Api<Pod>, restarts: i32) -> Result<Pod> {
    wait_until(
        &format!("pod Ready with restartCount {restarts}"),
        WAIT,
        || async {
            let p = pods.get("web").await?;
            let ok = is_ready(&p)
                && container_status(&p, "httpd").is_some_and(|s| s.restart_count == restarts && s.ready);
            Ok(ok.then_some(p))
        },
    )
    .await
}

fn running_id(p: &Pod) -> Result<String> {
    let cs = container_status(p, "httpd").ok_or_else(|| anyhow::anyhow!("no status for httpd"))?;
    cs.container_id
        .as_deref()
        .and_then(|c| c.strip_prefix("podman://"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no podman container ID in {cs:?}"))
}

#[tokio::test]
async fn runner_runs_pods_with_podman() -> Result<()> {
    let env = Env::load()?;
    let host: Client = env.host_admin().await?;
    let (ok, out) = podman_out(&["--version"]).await?;
    anyhow::ensure!(ok, "podman does not work: {out}");

    let suffix: u32 = rand::rng().random_range(0..0xff_ffff);
    let node = format!("vnest-runner-e2e-{suffix:06x}");
    let work = env.path("STATE_DIR")?.join(format!("runner-e2e-{suffix:06x}"));
    std::fs::create_dir_all(&work)?;
    ensure_image(&work).await?;
    let bin = runner_bin()?;

    let _cleanup = Cleanup(node.clone());
    let runner = Runner::start(&env, &bin, &node, &work, 1).await?;
    let nodes: Api<Node> = Api::all(host.clone());
    wait_until("runner node Ready", WAIT, || async {
        let ready = nodes.get_opt(&node).await?.is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        Ok(ready.then_some(()))
    })
    .await?;
    let n = nodes.get(&node).await?;
    let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "vnest.dev/runner" && t.effect == "NoSchedule"),
        "taint: {taints:?}"
    );

    let ns = TestNs::new(&host, "runner").await?;
    let cms: Api<ConfigMap> = Api::namespaced(host.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "runner-config"}, "data": {"greeting": "hello-from-configmap"}
        }))?,
    )
    .await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(host.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "runner-secret"}, "stringData": {"password": "s3cret"}}),
            )?,
        )
        .await?;
    // A claim bound to a hostPath volume, as hack/up.sh gives the vcluster's StatefulSet.
    let pv_dir = work.join("pv");
    std::fs::create_dir_all(&pv_dir)?;
    let pv_name = format!("{}-data", ns.name);
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(host.clone());
    pvs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": pv_name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": pv_dir},
                     "claimRef": {"namespace": ns.name, "name": "data"}}
        }))?,
    )
    .await?;
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(host.clone(), &ns.name);
    pvcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))?,
    )
    .await?;
    // The scheduler holds a pod back while its claim is unbound: wait, so the timing below is
    // the runner's and not the PV controller's.
    wait_until("claim Bound", WAIT, || async {
        let pvc = pvcs.get("data").await?;
        Ok((pvc.status.and_then(|s| s.phase).as_deref() == Some("Bound")).then_some(()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(host.clone(), &ns.name);

    // --- start to Ready ----------------------------------------------------------------------
    let created = Instant::now();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    pods.create(&PostParams::default(), &pod_manifest(&ns.name, &node, http_port)?)
        .await?;
    wait_until("pod scheduled", WAIT, || async {
        let p = pods.get("web").await?;
        Ok(p.spec.and_then(|s| s.node_name).map(|_| ()))
    })
    .await?;
    let scheduled = created.elapsed();
    let p = ready_with_restarts(&pods, 0).await?;
    let start_to_ready = created.elapsed();
    let st = p.status.clone().unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.as_str())
    );
    let init = st.init_container_statuses.clone().unwrap_or_default();
    assert!(
        init.first()
            .and_then(|s| s.state.as_ref()?.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0),
        "init container: {init:?}"
    );
    for c in ["Initialized", "ContainersReady", "Ready", "PodScheduled"] {
        assert!(
            st.conditions
                .iter()
                .flatten()
                .any(|x| x.type_ == c && x.status == "True" && x.last_transition_time.is_some()),
            "condition {c}: {:?}",
            st.conditions
        );
    }
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let cid = running_id(&p)?;

    // --- what the container sees --------------------------------------------------------------
    assert_eq!(exec(&cid, "id -u; id -G").await?, "65532\n65532");
    assert_eq!(
        exec(&cid, "cat /work/args.txt").await?,
        format!("web {} {node} runner-e2e", ns.name)
    );
    assert_eq!(
        exec(&cid, "cat /work/verbatim.txt").await?,
        "$(POD_NAME) $(cat /data/service-cidr)"
    );
    assert_eq!(exec(&cid, "cat /work/init.txt").await?, "init-ran-for-web");
    assert_eq!(
        exec(&cid, "echo $GREETING; cat /etc/config/greeting").await?,
        "hello-from-configmap\nhello-from-configmap"
    );
    let port = env
        .get("HOST_API_URL")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        exec(
            &cid,
            "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT:$KUBERNETES_SERVICE_PORT_HTTPS"
        )
        .await?,
        format!("127.0.0.1:{port}:{port}")
    );
    // emptyDir: group fsGroup, group-writable, setgid
    assert_eq!(exec(&cid, "stat -c '%g %A' /work").await?, "65532 drwxrwsrwx");
    assert!(
        exec(&cid, "touch /rootfs 2>&1 || echo refused")
            .await?
            .contains("refused"),
        "root filesystem is writable"
    );
    // secret: env + file (defaultMode 0400 plus group read for fsGroup, as the kubelet)
    assert_eq!(
        exec(
            &cid,
            "echo $PASSWORD; cat /etc/secret/pw; echo; stat -c '%a %g' /etc/secret/pw"
        )
        .await?,
        "s3cret\ns3cret\n440 65532"
    );
    assert!(
        exec(&cid, "touch /etc/secret/x 2>&1 || echo refused")
            .await?
            .contains("refused"),
        "secret volume is writable"
    );
    // PVC (hostPath PV) with subPath: written in the pod, on the host, group fsGroup
    let on_host = pv_dir.join("sub/from-pod");
    assert_eq!(std::fs::read_to_string(&on_host)?.trim(), "persisted");
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(pv_dir.join("sub"))?),
        65532
    );
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(
        exec(
            &cid,
            &format!("stat -c '%n %a %g' {sa_dir}/token {sa_dir}/ca.crt {sa_dir}/namespace")
        )
        .await?,
        format!("{sa_dir}/token 644 65532\n{sa_dir}/ca.crt 644 65532\n{sa_dir}/namespace 644 65532")
    );
    assert_eq!(exec(&cid, &format!("cat {sa_dir}/namespace")).await?, ns.name);
    let token = exec(&cid, &format!("cat {sa_dir}/token")).await?;
    let review = review_token(&host, &token).await?;
    assert_eq!(
        review["user"]["username"],
        format!("system:serviceaccount:{}:default", ns.name)
    );
    assert_eq!(
        review["user"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "web"
    );
    assert_eq!(
        review["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0],
        uid.as_str()
    );
    let log_file = work.join("logs").join(format!("{}_web_httpd.log", ns.name));
    assert!(log_file.exists(), "{} missing", log_file.display());

    // --- a changed ConfigMap reaches the mounted file (env stays as at start, as in Kubernetes)
    cms.patch(
        "runner-config",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"greeting": "updated"}})),
    )
    .await?;
    wait_until("the updated configMap file", WAIT, || async {
        Ok((exec(&cid, "cat /etc/config/greeting").await? == "updated").then_some(()))
    })
    .await?;
    assert_eq!(exec(&cid, "echo $GREETING").await?, "hello-from-configmap");

    // --- a killed container restarts ----------------------------------------------------------
    let (ok, out) = podman_out(&["kill", "-s", "KILL", &cid]).await?;
    anyhow::ensure!(ok, "podman kill: {out}");
    let p = ready_with_restarts(&pods, 1).await?;
    let last = container_status(&p, "httpd").and_then(|s| s.last_state?.terminated);
    assert_eq!(last.map(|t| t.exit_code), Some(137));

    // --- a failing liveness probe restarts it -------------------------------------------------
    exec(&running_id(&p)?, "rm /work/alive").await?;
    let p = ready_with_restarts(&pods, 2).await?;
    let cid = running_id(&p)?;

    // --- the runner restarts: adopts, no duplicates, no status write ----------------------------
    let rss_kib = runner.rss_kib()?;
    runner.stop().await?;
    let before = pods.get("web").await?;
    let rv_before = before.metadata.resource_version.clone();
    let runner = Runner::start(&env, &bin, &node, &work, 2).await?;
    wait_until("the new runner adopting the pod", WAIT, || async {
        Ok(runner
            .log_text()
            .contains("adopting existing containers")
            .then_some(()))
    })
    .await?;
    // Give its probes a few periods: a no-op write would show up as a new resourceVersion.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = pods.get("web").await?;
    assert_eq!(
        after.metadata.resource_version, rv_before,
        "the restarted runner wrote the pod"
    );
    assert!(is_ready(&after));
    assert_eq!(running_id(&after)?, cid);
    let running: Vec<_> = containers_of(&uid)
        .await?
        .into_iter()
        .filter(|c| c.2 == "running")
        .collect();
    assert_eq!(running.len(), 1, "running containers of the pod: {running:?}");

    // --- a missing image: ErrImageNeverPull + Event -------------------------------------------
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "no-image"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                 "tolerations": [{"key": "vnest.dev/runner", "operator": "Exists", "effect": "NoSchedule"}],
                 "containers": [{"name": "c", "image": "localhost/vnest-no-such-image:0"}]}
    }))?;
    pods.create(&PostParams::default(), &bad).await?;
    wait_until("ErrImageNeverPull", WAIT, || async {
        let p = pods.get("no-image").await?;
        let w = container_status(&p, "c").and_then(|s| s.state?.waiting);
        Ok(w.filter(|w| w.reason.as_deref() == Some("ErrImageNeverPull") && w.message.is_some()))
    })
    .await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(host.clone(), &ns.name);
    wait_until("ErrImageNeverPull event", WAIT, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("ErrImageNeverPull")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("no-image")
            })
            .then_some(()))
    })
    .await?;

    // --- delete: SIGTERM, containers removed, object gone ---------------------------------------
    pods.delete("web", &DeleteParams::default()).await?;
    pods.delete("no-image", &DeleteParams::default()).await?;
    wait_until("pods deleted", WAIT, || async {
        Ok((pods.get_opt("web").await?.is_none() && pods.get_opt("no-image").await?.is_none()).then_some(()))
    })
    .await?;
    assert_eq!(containers_of(&uid).await?, vec![], "containers left behind");
    assert!(
        !work.join("state/pods").join(&uid).exists(),
        "pod directory left behind"
    );
    let log = runner.stop().await?;
    assert!(log.contains("pod torn down"), "runner log: {log}");

    println!(
        "runner e2e: pod create to Ready {:.2} s (scheduled after {:.2} s); runner RSS {:.1} MiB with one pod ({})",
        start_to_ready.as_secs_f64(),
        scheduled.as_secs_f64(),
        rss_kib as f64 / 1024.0,
        bin.display()
    );
    nodes.delete(&node, &DeleteParams::default()).await?;
    pvs.delete(&pv_name, &DeleteParams::default()).await?;
    ns.delete().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
