//! A tenant's pod on the runner's node (hack/runner: the host node whose pods really run, with
//! podman), reached through the VIRTUAL API server with the tenant's kubeconfig: the syncer's
//! kubelet endpoint forwards to the host's pod subresources, and the host API server calls that
//! node's real kubelet API (hack/node-kubelet). So, unlike on kwok's nodes: `kubectl cp` into a
//! pod (stdin reaches its end, so `tar -x` finishes), exit codes of real commands, and node stats
//! with real numbers through the node proxy.
//!
//! Needs the container world (`make up` with podman: the default). A process-only world
//! (`VNEST_RUNTIME=processes`) has no runner node: these tests fail there, saying so, never
//! skip (as e2e/tests/runner.rs fails without podman).
//!
//! While a pod of this vcluster runs on the runner's node, the vcluster's node stats are
//! answered (200) from that node: e2e/tests/kubelet.rs's `node_stats_need_the_host_node_proxy`
//! expects the 400 of kwok's loopback nodes, so the two must not run at the same time (cargo
//! runs test binaries one after another, and every test here deletes its namespace).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use vnest_e2e::kubectl::Kubectl;
use vnest_e2e::{Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(90);

struct Fixture {
    world: World,
    ns: TestNs,
    k: Kubectl,
    pod: String,
    /// The virtual node the pod runs on (the runner's node, mirrored).
    node: String,
}

/// A namespace with one Running pod `tools` (container `main`: busybox sleeping) on the runner's
/// node: it tolerates the node's taint and selects it, as a tenant may.
async fn fixture(prefix: &str) -> Result<Fixture> {
    fixture_running(prefix, &["sleep", "3600"]).await
}

/// [`fixture`] with the container running `command`.
async fn fixture_running(prefix: &str, command: &[&str]) -> Result<Fixture> {
    let world = World::connect().await?;
    let env = &world.env;
    anyhow::ensure!(
        env.get("VNEST_RUNTIME")? == "containers",
        "this test needs the container world (`make up` with podman, the default): a \
         VNEST_RUNTIME=processes world has no runner node whose pods really run"
    );
    let image = env.get("TENANT_IMAGE")?.to_owned();
    let runner_node = env.get("RUNNER_NODE")?.to_owned();
    anyhow::ensure!(
        !image.is_empty() && !env.get("NODE_KUBELET_ADDR")?.is_empty(),
        "no tenant image or runner node kubelet in the e2e env: re-run `make up`"
    );
    let ns = TestNs::new(&world.virt, prefix).await?;
    let pods: Api<Pod> = Api::namespaced(world.virt.clone(), &ns.name);
    let pod = "tools".to_owned();
    let spec: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod},
        "spec": {
            "nodeSelector": {"vnest.dev/runner": "true"},
            "tolerations": [{"key": "vnest.dev/runner", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": command}]
        }
    }))?;
    pods.create(&PostParams::default(), &spec).await?;
    let k = Kubectl {
        bin: env.path("KUBECTL")?,
        kubeconfig: env.path("VIRTUAL_KUBECONFIG")?,
        ns: ns.name.clone(),
        wait: WAIT,
    };
    let node = wait_until("the virtual pod Running and Ready on a node", WAIT, || async {
        let p = pods.get(&pod).await?;
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        Ok((running && ready)
            .then(|| p.spec.and_then(|s| s.node_name))
            .flatten())
    })
    .await?;
    assert_eq!(node, runner_node, "the pod runs on the runner's node");
    Ok(Fixture {
        world,
        ns,
        k,
        pod,
        node,
    })
}

/// `sha256sum`'s hex digest of a local file.
async fn local_sha256(path: &Path) -> Result<String> {
    let out = tokio::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no digest from sha256sum"))
}

/// Deterministic, poorly compressible bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn cp_into_and_out_of_a_pod_on_the_runner_node() -> Result<()> {
    let f = fixture("nk-cp").await?;
    let local = std::env::temp_dir().join(format!("vnest-nk-cp-{}", f.ns.name));
    tokio::fs::create_dir_all(&local).await?;

    // A 6 MiB file, local -> pod: `tar -x` in the pod ends only when stdin's end reaches it.
    let big = local.join("big.bin");
    tokio::fs::write(&big, noise(6 << 20, 0x5eed)).await?;
    let want = local_sha256(&big).await?;
    let started = std::time::Instant::now();
    f.k.ok(&[
        "cp",
        "-c",
        "main",
        &big.display().to_string(),
        &format!("{}:/tmp/big.bin", f.pod),
    ])
    .await?;
    let up = started.elapsed();
    let in_pod =
        f.k.ok(&["exec", &f.pod, "-c", "main", "--", "sha256sum", "/tmp/big.bin"])
            .await?;
    assert_eq!(in_pod.split_whitespace().next(), Some(want.as_str()), "{in_pod}");

    // pod -> local, the same bytes back.
    let back = local.join("big-back.bin");
    let started = std::time::Instant::now();
    f.k.ok(&[
        "cp",
        "-c",
        "main",
        &format!("{}:/tmp/big.bin", f.pod),
        &back.display().to_string(),
    ])
    .await?;
    let down = started.elapsed();
    assert_eq!(local_sha256(&back).await?, want);
    println!("kubectl cp of 6 MiB through vnest: up {up:?}, down {down:?}");

    // A directory with a nested one, both ways.
    let dir = local.join("tree");
    tokio::fs::create_dir_all(dir.join("sub")).await?;
    tokio::fs::write(dir.join("a.txt"), b"alpha\n").await?;
    tokio::fs::write(dir.join("sub/b.txt"), b"beta\n").await?;
    f.k.ok(&[
        "cp",
        "-c",
        "main",
        &dir.display().to_string(),
        &format!("{}:/tmp/tree", f.pod),
    ])
    .await?;
    let listed =
        f.k.ok(&[
            "exec",
            &f.pod,
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "cd /tmp/tree && find . -type f | sort && cat a.txt sub/b.txt",
        ])
        .await?;
    assert_eq!(listed, "./a.txt\n./sub/b.txt\nalpha\nbeta\n");
    f.k.ok(&[
        "exec",
        &f.pod,
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "echo gamma > /tmp/tree/sub/c.txt",
    ])
    .await?;
    let tree_back = local.join("tree-back");
    f.k.ok(&[
        "cp",
        "-c",
        "main",
        &format!("{}:/tmp/tree", f.pod),
        &tree_back.display().to_string(),
    ])
    .await?;
    assert_eq!(tokio::fs::read(tree_back.join("a.txt")).await?, b"alpha\n");
    assert_eq!(tokio::fs::read(tree_back.join("sub/b.txt")).await?, b"beta\n");
    assert_eq!(tokio::fs::read(tree_back.join("sub/c.txt")).await?, b"gamma\n");

    tokio::fs::remove_dir_all(&local).await?;
    f.ns.delete().await
}

#[tokio::test]
async fn exec_passes_the_end_of_stdin_and_exit_codes() -> Result<()> {
    let f = fixture("nk-exec").await?;
    let input = noise(256 << 10, 7);
    let out =
        f.k.with_stdin(&["exec", "-i", &f.pod, "-c", "main", "--", "cat"], &input)
            .await?;
    assert!(
        out.status.success(),
        "exec -i cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == input,
        "cat gave back {} of {} bytes",
        out.stdout.len(),
        input.len()
    );

    let out =
        f.k.with_stdin(
            &["exec", "-i", &f.pod, "-c", "main", "--", "wc", "-l"],
            b"one\ntwo\nthree\n",
        )
        .await?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");

    let out =
        f.k.run(&["exec", &f.pod, "-c", "main", "--", "sh", "-c", "echo bye; exit 3"])
            .await?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    let out = f.k.run(&["exec", &f.pod, "-c", "main", "--", "false"]).await?;
    assert_eq!(out.status.code(), Some(1));

    // A client that goes away mid-exec: the command's processes in the pod end with it.
    let in_pod = || async {
        let ps =
            f.k.ok(&["exec", &f.pod, "-c", "main", "--", "ps", "-o", "args"])
                .await?;
        anyhow::Ok(ps.lines().any(|l| l.trim() == "sleep 271"))
    };
    let mut child =
        f.k.command(&["exec", &f.pod, "-c", "main", "--", "sleep", "271"])
            .spawn()?;
    wait_until("the exec'd command running in the pod", WAIT, || async {
        Ok(in_pod().await?.then_some(()))
    })
    .await?;
    child.kill().await?;
    wait_until("the exec'd command gone after its client", WAIT, || async {
        Ok((!in_pod().await?).then_some(()))
    })
    .await?;
    f.ns.delete().await
}

/// Grants the syncer's ServiceAccount the host's `nodes/proxy` get (what
/// manifests/components/node-stats grants) until dropped... explicitly: call `revoke`.
struct NodeStatsGrant {
    name: String,
    roles: Api<ClusterRole>,
    bindings: Api<ClusterRoleBinding>,
}

impl NodeStatsGrant {
    async fn grant(w: &World, ns: &str) -> Result<Self> {
        let name = format!("vnest-e2e-node-stats-{ns}");
        let roles: Api<ClusterRole> = Api::all(w.host.clone());
        let bindings: Api<ClusterRoleBinding> = Api::all(w.host.clone());
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}]
                }))?,
            )
            .await?;
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": w.vcluster, "namespace": w.host_ns}]
                }))?,
            )
            .await?;
        Ok(Self {
            name,
            roles,
            bindings,
        })
    }

    async fn revoke(self) -> Result<()> {
        self.bindings.delete(&self.name, &Default::default()).await?;
        self.roles.delete(&self.name, &Default::default()).await?;
        Ok(())
    }
}

/// The summary's entries of pods in namespace `ns` (virtual names) and all pod references.
fn summary_pods(summary: &Value) -> Vec<Value> {
    summary["pods"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn node_stats_of_the_runner_node_through_the_virtual_node_proxy() -> Result<()> {
    let f = fixture("nk-stats").await?;
    let w = &f.world;
    // Some real CPU time in the pod's container (an exec runs in its cgroup).
    f.k.ok(&[
        "exec",
        &f.pod,
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
    ])
    .await?;
    let grant = NodeStatsGrant::grant(w, &f.ns.name).await?;
    let proxy = |path: &str| format!("/api/v1/nodes/{}/proxy{path}", f.node);
    // Revoked also when an assertion panics (a grant left behind would turn the refusals that
    // e2e/tests/kubelet.rs expects into answers).
    let result = AssertUnwindSafe(async {
        // The syncer believes a host refusal for 20 s before it asks again.
        let summary: Value = wait_until("/stats/summary through the node proxy", WAIT, || async {
            let out = f.k.run(&["get", "--raw", &proxy("/stats/summary")]).await?;
            Ok(out
                .status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
                .flatten())
        })
        .await?;
        let pods = summary_pods(&summary);
        let ours: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                p["podRef"]["namespace"] == f.ns.name.as_str() && p["podRef"]["name"] == f.pod.as_str()
            })
            .collect();
        assert_eq!(ours.len(), 1, "the pod under its virtual name: {pods:#?}");
        let pod = ours[0];
        let cpu = pod["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0);
        let memory = pod["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
        assert!(
            cpu > 0 && memory > 0,
            "real numbers: cpu {cpu} ns, memory {memory} B: {pod}"
        );
        let main = pod["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "main"))
            .ok_or_else(|| anyhow::anyhow!("no container main: {pod}"))?;
        assert!(
            main["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0,
            "{main}"
        );
        println!("stats/summary of the tenant's pod: cpu {cpu} ns, working set {memory} B");
        // Only this vcluster's pods, under virtual names: never the vcluster pod itself (host
        // namespace), which runs on the same node.
        for p in &pods {
            let ns = p["podRef"]["namespace"].as_str().unwrap_or_default();
            let name = p["podRef"]["name"].as_str().unwrap_or_default();
            assert!(
                ns != w.host_ns && !name.starts_with(&format!("{}-", w.vcluster)),
                "a host-only pod leaked: {ns}/{name}"
            );
        }

        let metrics = f.k.ok(&["get", "--raw", &proxy("/metrics/resource")]).await?;
        let series = format!(
            "container_cpu_usage_seconds_total{{container=\"main\",namespace=\"{}\",pod=\"{}\"}}",
            f.ns.name, f.pod
        );
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .ok_or_else(|| anyhow::anyhow!("no {series} in:\n{metrics}"))?;
        let value: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no value in {line}"))?;
        assert!(value > 0.0, "{line}");
        let memory_series = format!(
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}}",
            f.ns.name, f.pod
        );
        assert!(
            metrics.lines().any(|l| l.starts_with(&memory_series)
                && l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    > 0.0),
            "no non-zero {memory_series} in:\n{metrics}"
        );
        assert!(
            !metrics.contains(&format!("namespace=\"{}\"", w.host_ns)),
            "a host-only pod leaked into /metrics/resource:\n{metrics}"
        );
        anyhow::Ok(())
    })
    .catch_unwind()
    .await;
    grant.revoke().await?;
    match result {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    f.ns.delete().await
}

/// A free TCP port of this machine (the runner's pods share its network).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test]
async fn logs_attach_tty_and_port_forward_of_a_pod_on_the_runner_node() -> Result<()> {
    let port = free_port()?;
    let script = format!(
        "echo started; mkdir -p /tmp/www; echo hello from the pod > /tmp/www/index.html; \
         (i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done) & \
         exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"
    );
    let f = fixture_running("nk-streams", &["sh", "-c", &script]).await?;

    // logs: whole, --tail, and -f (a line written after the follow began).
    let all = f.k.ok(&["logs", &f.pod, "-c", "main"]).await?;
    assert!(all.starts_with("started\n"), "{all}");
    wait_until("a second tick in the log", WAIT, || async {
        let n = f.k.ok(&["logs", &f.pod, "-c", "main", "--tail", "1"]).await?;
        Ok((n.lines().count() == 1 && n.starts_with("tick ") && n.trim() != "tick 1").then_some(()))
    })
    .await?;
    let last: u64 =
        f.k.ok(&["logs", &f.pod, "-c", "main", "--tail", "1"])
            .await?
            .trim()
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no tick in the last line"))?;
    let newer = |child: &mut tokio::process::Child| {
        let stdout = child.stdout.take();
        async move {
            let stdout = stdout.ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            let mut lines = BufReader::new(stdout).lines();
            tokio::time::timeout(WAIT, async {
                while let Some(line) = lines.next_line().await? {
                    let n = line.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
                    if n.is_some_and(|n| n > last + 1) {
                        return Ok(line);
                    }
                }
                anyhow::bail!("the stream ended without a new tick")
            })
            .await?
        }
    };
    for what in [["logs", "-f"], ["attach", ""]] {
        let mut args = vec![what[0], f.pod.as_str(), "-c", "main"];
        if !what[1].is_empty() {
            args.push(what[1]);
        }
        let mut child =
            f.k.command(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
        let line = newer(&mut child).await?;
        assert!(line.starts_with("tick "), "kubectl {args:?}: {line}");
        child.kill().await?;
    }

    // exec with a TTY: kubectl asks for one only when its stdin is a terminal (`script`).
    let out =
        f.k.in_terminal(&format!(
            "exec -it {} -c main -- sh -c 'tty; echo tty-ok; sleep 1'",
            f.pod
        ))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("/dev/pts/") && text.contains("tty-ok"),
        "{text}"
    );

    // port-forward to the pod's HTTP server.
    let mut child =
        f.k.command(&["port-forward", &format!("pod/{}", f.pod), &format!(":{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let local: u16 = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return Ok::<_, anyhow::Error>(rest.split_whitespace().next().unwrap_or_default().parse()?);
            }
        }
        anyhow::bail!("kubectl port-forward ended without forwarding")
    })
    .await??;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local)).await?;
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
    let mut body = String::new();
    tokio::time::timeout(WAIT, conn.read_to_string(&mut body)).await??;
    assert!(
        body.starts_with("HTTP/1.") && body.ends_with("hello from the pod\n"),
        "{body}"
    );
    child.kill().await?;
    f.ns.delete().await
}

/// `curl` against the runner node's kubelet API directly: (HTTP status, body); status 0 when no
/// HTTP answer came (e.g. the TLS handshake was refused).
async fn curl_node_kubelet(addr: &str, path: &str, ca: &Path, extra: &[&str]) -> Result<(u16, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(format!("https://{addr}{path}"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

/// The runner node's kubelet API runs commands in every pod of the node: only the host API
/// server's kubelet client certificate (and other `system:masters` of the host CA) gets in.
#[tokio::test]
async fn the_runner_nodes_kubelet_api_refuses_strangers() -> Result<()> {
    let w = World::connect().await?;
    anyhow::ensure!(
        w.env.get("VNEST_RUNTIME")? == "containers",
        "this test needs the container world (`make up` with podman, the default): a \
         VNEST_RUNTIME=processes world has no runner node"
    );
    let addr = w.env.get("NODE_KUBELET_ADDR")?;
    let pki = w.env.path("STATE_DIR")?.join("host/pki");
    let ca = pki.join("ca.crt");
    let cert = |name: &str| {
        vec![
            "--cert".to_owned(),
            pki.join(format!("{name}.crt")).display().to_string(),
            "--key".to_owned(),
            pki.join(format!("{name}.key")).display().to_string(),
        ]
    };

    // The host API server's kubelet client: in, and the node's pods are listed (the vcluster
    // pod runs there).
    let client = cert("apiserver-kubelet-client");
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let (code, body) = curl_node_kubelet(addr, "/pods", &ca, &client).await?;
    assert_eq!(code, 200, "{body}");
    let pod = format!("\"name\":\"{}-0\"", w.vcluster);
    assert!(body.contains(&pod), "{body}");

    // No certificate: 401.
    let (code, body) = curl_node_kubelet(addr, "/pods", &ca, &[]).await?;
    assert_eq!(code, 401, "{body}");

    // A certificate of another CA (the virtual API server's kubelet client): no answer at all.
    let tls = w.env.path("VIRTUAL_DATA_DIR")?.join("server/tls");
    let foreign = [
        "--cert".to_owned(),
        tls.join("client-kube-apiserver.crt").display().to_string(),
        "--key".to_owned(),
        tls.join("client-kube-apiserver.key").display().to_string(),
    ];
    let foreign: Vec<&str> = foreign.iter().map(String::as_str).collect();
    let (code, body) = curl_node_kubelet(addr, "/pods", &ca, &foreign).await?;
    assert_eq!(code, 0, "a foreign CA's certificate got an answer: {body}");

    // A certificate of the host CA for someone else (not system:masters): 403.
    let dir = std::env::temp_dir().join(format!("vnest-nk-auth-{}", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    let (key, csr, crt) = (dir.join("u.key"), dir.join("u.csr"), dir.join("u.crt"));
    let openssl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("openssl")
            .args(&args)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::Ok(())
    };
    let p = |p: &Path| p.display().to_string();
    openssl(vec![
        "ecparam".into(),
        "-name".into(),
        "prime256v1".into(),
        "-genkey".into(),
        "-noout".into(),
        "-out".into(),
        p(&key),
    ])
    .await?;
    openssl(vec![
        "req".into(),
        "-new".into(),
        "-key".into(),
        p(&key),
        "-subj".into(),
        "/O=system:authenticated/CN=intruder".into(),
        "-out".into(),
        p(&csr),
    ])
    .await?;
    openssl(vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        p(&csr),
        "-CA".into(),
        p(&ca),
        "-CAkey".into(),
        p(&pki.join("ca.key")),
        "-CAcreateserial".into(),
        "-CAserial".into(),
        p(&dir.join("ca.srl")),
        "-days".into(),
        "1".into(),
        "-out".into(),
        p(&crt),
    ])
    .await?;
    let (code, body) =
        curl_node_kubelet(addr, "/pods", &ca, &["--cert", &p(&crt), "--key", &p(&key)]).await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("intruder"), "{body}");
    tokio::fs::remove_dir_all(&dir).await?;
    Ok(())
}
